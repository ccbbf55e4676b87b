-- Log records, keyed by their Kafka coordinates so a replay can never insert a row twice.
CREATE TABLE log_records (
    topic           text        NOT NULL,
    kafka_partition integer     NOT NULL,
    kafka_offset    bigint      NOT NULL,
    ts              timestamptz NOT NULL,
    level           text,
    service         text,
    message         text,
    fields          jsonb       NOT NULL,
    kafka_key       bytea,
    kafka_ts        timestamptz,
    ingested_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, kafka_partition, kafka_offset)
);
CREATE INDEX log_records_ts ON log_records (ts);

-- Records that cannot be stored as log entries, with their raw bytes and why.
CREATE TABLE dead_letters (
    topic           text        NOT NULL,
    kafka_partition integer     NOT NULL,
    kafka_offset    bigint      NOT NULL,
    kafka_key       bytea,
    payload         bytea,
    kafka_ts        timestamptz,
    stage           text        NOT NULL,
    reason          text        NOT NULL,
    failed_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, kafka_partition, kafka_offset)
);

-- The next offset to read per partition, written in the same transaction as the rows:
-- the single commit point of a batch. Kafka's committed offset trails it.
CREATE TABLE consumer_offsets (
    group_id        text        NOT NULL,
    topic           text        NOT NULL,
    kafka_partition integer     NOT NULL,
    next_offset     bigint      NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, kafka_partition)
);
