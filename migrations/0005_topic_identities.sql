-- Which incarnation of a Kafka topic the rows under a name came from (see src/identity.rs): the
-- cluster's id and the topic's id (KIP-516). The first identity seen under a topic's name is
-- stored under that name; another incarnation (the topic deleted and recreated, or a topic of
-- the same name on another cluster) is held until `log-processor topics adopt` binds it to a
-- name of its own, so two incarnations never share rows, offsets or documents.
CREATE TABLE topic_identities (
    cluster_id      text        NOT NULL,
    topic_id        text        NOT NULL,
    topic           text        NOT NULL,
    stored_as       text        NOT NULL UNIQUE,
    bound_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (cluster_id, topic_id)
);
