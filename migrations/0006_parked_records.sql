-- Records one destination index would not take while the search store took others (an index
-- write-blocked or closed by lifecycle, one that cannot be created at the shard limit), kept
-- here, in the batch's own transaction, so the partition's watermark can pass them. The
-- daemon retries them in the background (src/parking.rs) and moves each, once its index takes
-- the document, into log_records in one transaction that also deletes it here. A parked record
-- is neither lost nor a dead letter; `log-processor parked` lists, drops or re-routes them.
CREATE TABLE parked_records (
    topic            text        NOT NULL,
    kafka_partition  integer     NOT NULL,
    kafka_offset     bigint      NOT NULL,
    -- The index (or data stream) the document goes to; `parked reroute` changes it.
    destination      text        NOT NULL,
    reason           text        NOT NULL,
    -- The row log_records will hold, as decoded (and redacted) from the record. `fields` is
    -- the exact text both stores receive, not jsonb, so the document is the one it would
    -- have been.
    ts               timestamptz NOT NULL,
    level            text,
    service          text,
    message          text,
    fields           text        NOT NULL,
    kafka_key        bytea,
    kafka_ts         timestamptz,
    -- The bytes as dead_letters would keep them (redacted or sealed when configured).
    payload          bytea,
    payload_encoding text        NOT NULL,
    redaction        text,
    parked_at        timestamptz NOT NULL DEFAULT now(),
    attempts         integer     NOT NULL DEFAULT 0,
    tried_at         timestamptz,
    PRIMARY KEY (topic, kafka_partition, kafka_offset)
);
CREATE INDEX parked_records_destination ON parked_records (destination);
