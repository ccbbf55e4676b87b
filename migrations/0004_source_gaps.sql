-- Offsets of a partition that hold no record the daemon could read, and why: 'retention'
-- (deleted from Kafka before they were read: lost outside the daemon) or 'no_record'
-- (transaction markers, aborted or compacted records: nothing to lose). Written in the same
-- transaction as the batch that moves the watermark over them, so below a partition's watermark
-- every offset is a row, a dead letter or inside one of these ranges [from_offset, to_offset).
CREATE TABLE source_gaps (
    topic           text        NOT NULL,
    kafka_partition integer     NOT NULL,
    from_offset     bigint      NOT NULL,
    to_offset       bigint      NOT NULL,
    cause           text        NOT NULL,
    found_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, kafka_partition, from_offset),
    CHECK (to_offset > from_offset)
);
