//! What the search store's answers mean: each bulk item's status and error type classed as
//! stored, retried, a record's own fault (a dead letter) or its destination's (parked), and a
//! whole request's status. The table in docs/ARCHITECTURE.md lists every class with its case
//! in the unit test below.

use crate::sink::SinkError;

/// What to do with one Elasticsearch bulk item given its HTTP status and error type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemAction {
    Done,
    /// The store cannot take it now, for a reason not about this document (busy, blocked,
    /// read-only, missing privileges or index): retried, holding the partition.
    Retry,
    /// The document itself is refused (mapping conflict, unparseable value, an immense term):
    /// a dead letter.
    Reject,
    /// Its destination, one index, cannot take it now (write-blocked or closed by lifecycle,
    /// not creatable at the shard limit or without auto-creation, over its field limit), while
    /// others may: parked if the store is seen taking other documents (see `elastic::bulk`),
    /// retried like `Retry` otherwise.
    Park,
}

/// Error types that say the document itself cannot be indexed. Every other refusal, such as
/// `cluster_block_exception` (a read-only or flood-stage index, 403 or 429),
/// `security_exception`, `index_not_found_exception` or `invalid_index_name_exception`, is
/// about the store or its configuration.
const DOCUMENT_FAULTS: [&str; 6] = [
    // Elasticsearch 8+ (`document_parsing_exception` replaced `mapper_parsing_exception` for
    // values that do not parse; OpenSearch keeps the latter).
    "mapper_parsing_exception",
    // A data stream's failure store took the document instead (see `elastic::bulk`).
    "failure_store_used",
    "document_parsing_exception",
    "strict_dynamic_mapping_exception",
    "x_content_parse_exception",
    "parse_exception",
];

/// `illegal_argument_exception` is the document's fault only when it is about its fields
/// (a mapping conflict, too many fields); it also reports store faults such as an alias with
/// no write index or a missing ingest pipeline.
const DOCUMENT_ARGUMENT_FAULTS: [&str; 4] = [
    "mapper [",
    "failed to parse",
    "cannot be changed from type",
    // Lucene's bound on one indexed term (32766 bytes of UTF-8), hit by a value of a keyword
    // field without `ignore_above`: "Document contains at least one immense term in
    // field=...". The same document is refused every time, on every node.
    "immense term",
];

/// Classification of a bulk item. A 409 from `create` means the document already exists: done.
pub fn classify_item(status: u16, error_type: Option<&str>, reason: &str) -> ItemAction {
    let document_fault = match error_type {
        Some("illegal_argument_exception") => {
            DOCUMENT_ARGUMENT_FAULTS.iter().any(|m| reason.contains(m))
        }
        Some(t) => DOCUMENT_FAULTS.contains(&t),
        None => false,
    };
    match status {
        200..=299 | 409 => ItemAction::Done,
        400 if document_fault => ItemAction::Reject,
        _ if destination_fault(error_type, reason) => ItemAction::Park,
        _ => ItemAction::Retry,
    }
}

/// A refusal that names one index and is about that index only. A block is written
/// `index [name] blocked by: [FORBIDDEN/8/index write (api)];` (a cluster-wide block has no
/// `index [`); block 12, `read_only_allow_delete`, is what the disk flood stage puts on every
/// index of a full node: the whole store's trouble, never parked.
fn destination_fault(error_type: Option<&str>, reason: &str) -> bool {
    match error_type {
        Some("cluster_block_exception") => reason.contains("index [") && !reason.contains("/12/"),
        Some("index_closed_exception") => true,
        // The index does not exist and may not be created: auto-creation off for its name.
        Some("index_not_found_exception") => true,
        // `cluster.max_shards_per_node` reached: no new index can be created.
        Some("validation_exception") => reason.contains("maximum shards open"),
        // The index's mapping is full; a document with fewer fields than the limit would fit in
        // an index of its own, so the limit is the destination's (see `bulk::pass`).
        Some("illegal_argument_exception") => field_limit(reason).is_some(),
        _ => false,
    }
}

/// The limit named by `Limit of total fields [N] has been exceeded`.
pub fn field_limit(reason: &str) -> Option<usize> {
    let rest = reason.split_once("Limit of total fields [")?.1;
    rest.split_once(']')?.0.parse().ok()
}

/// Classification of a whole request's status (template, bulk): success or try again.
pub fn request_ok(status: u16) -> bool {
    (200..=299).contains(&status)
}

/// The answer to a set-up request (a template, a policy): done, worth retrying (load or
/// outage), or a refusal start-up cannot get past, with `message` saying what was refused.
pub(super) fn setup_answer(status: u16, message: String) -> Result<(), SinkError> {
    match status {
        _ if request_ok(status) => Ok(()),
        429 | 500..=599 => Err(SinkError::Transient {
            store: super::STORE,
            message,
        }),
        _ => Err(SinkError::Permanent {
            store: super::STORE,
            message,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_document_fault_rejects_an_item() {
        use ItemAction::*;
        let cases = [
            (201, None, Done),
            (200, None, Done),
            (409, Some("version_conflict_engine_exception"), Done),
            (400, Some("mapper_parsing_exception"), Reject),
            (400, Some("document_parsing_exception"), Reject),
            (400, Some("strict_dynamic_mapping_exception"), Reject),
            (400, Some("failure_store_used"), Reject),
            // The store's or the configuration's fault: held and retried.
            (403, Some("cluster_block_exception"), Retry),
            (429, Some("cluster_block_exception"), Retry),
            (403, Some("security_exception"), Retry),
            (400, Some("invalid_index_name_exception"), Retry),
            (400, Some("validation_exception"), Retry),
            // One destination's: parked when the store takes other documents.
            (404, Some("index_not_found_exception"), Park),
            (400, Some("index_closed_exception"), Park),
            (400, None, Retry),
            (413, None, Retry),
            (429, Some("es_rejected_execution_exception"), Retry),
            (503, Some("unavailable_shards_exception"), Retry),
            (500, None, Retry),
        ];
        for (status, ty, expect) in cases {
            assert_eq!(classify_item(status, ty, ""), expect, "{status} {ty:?}");
        }
        let block = Some("cluster_block_exception");
        for (status, reason, expect) in [
            (
                403,
                "index [logs-2026.11.01] blocked by: [FORBIDDEN/8/index write (api)];",
                Park,
            ),
            (
                403,
                "index [logs-2026.11.01] blocked by: [FORBIDDEN/5/index read-only (api)];",
                Park,
            ),
            (
                429,
                "index [logs] blocked by: [TOO_MANY_REQUESTS/12/disk usage exceeded flood-stage \
                 watermark, index has read-only-allow-delete block];",
                Retry,
            ),
            (
                403,
                "blocked by: [FORBIDDEN/6/cluster read-only (api)];",
                Retry,
            ),
        ] {
            assert_eq!(classify_item(status, block, reason), expect, "{reason}");
        }
        let shards = "Validation Failed: 1: this action would add [2] total shards, but this \
                      cluster currently has [1000]/[1000] maximum shards open;";
        assert_eq!(
            classify_item(400, Some("validation_exception"), shards),
            Park
        );
        assert_eq!(
            field_limit(
                "Limit of total fields [2000] has been exceeded while adding new fields [3]"
            ),
            Some(2000)
        );
        let arg = Some("illegal_argument_exception");
        for (reason, expect) in [
            ("Limit of total fields [2000] has been exceeded", Park),
            (
                "mapper [n] cannot be changed from type [long] to [text]",
                Reject,
            ),
            (
                "Document contains at least one immense term in field=\"level\" (whose UTF8 \
                 encoding is longer than the max length 32766), all of which were skipped.",
                Reject,
            ),
            ("no write index is defined for alias [logs]", Retry),
            ("pipeline with id [p] does not exist", Retry),
        ] {
            assert_eq!(classify_item(400, arg, reason), expect, "{reason}");
        }
    }
}
