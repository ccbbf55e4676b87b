//! log-processor: moves log records from Kafka into PostgreSQL and Elasticsearch, losing and
//! duplicating nothing whatever kills it. See docs/ARCHITECTURE.md for the design.

pub mod admin;
pub mod allocator;
pub mod app;
pub mod audit;
pub mod batcher;
pub mod config;
pub mod consumer;
pub mod dead_letter;
pub mod decode;
pub mod failpoint;
pub mod gaps;
pub mod group_watch;
pub mod http;
pub mod identity;
pub mod lifecycle;
pub mod loadgen;
pub mod mapping;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod parking;
pub mod pipeline;
pub mod redact;
pub mod reindex;
pub mod shutdown;
pub mod sink;
pub mod stores;
pub mod topics;
pub mod watermark;
pub mod worker;
