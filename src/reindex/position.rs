//! A job's identity: the arguments that fix what it reads and where it writes, written out in
//! one canonical line, and the job name derived from them (unless `--job` names it). A run with
//! the same arguments resumes the job from its durable position (`reindex_positions`); a
//! `--job` reused with other arguments is refused, since its stored ranges and counts belong to
//! those.

use chrono::{DateTime, SecondsFormat, Utc};
use sha2::{Digest, Sha256};

/// What fixes a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobArgs<'a> {
    pub topics: &'a [String],
    pub since: DateTime<Utc>,
    pub until: Option<DateTime<Utc>>,
    pub to_index: Option<&'a str>,
    pub to_table: Option<&'a str>,
    pub from: super::Origin,
}

impl JobArgs<'_> {
    /// One line, the same for the same arguments in any order of `--topic`.
    pub fn canonical(&self) -> String {
        let mut topics = self.topics.to_vec();
        topics.sort();
        topics.dedup();
        let time = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
        format!(
            "topics={} since={} until={} to-index={} to-table={}{}",
            topics.join(","),
            time(self.since),
            self.until.map_or("-".into(), time),
            self.to_index.unwrap_or("-"),
            self.to_table.unwrap_or("-"),
            // Absent for Kafka, so jobs created before --from existed keep their names.
            match self.from {
                super::Origin::Kafka => "",
                super::Origin::Postgres => " from=postgres",
            },
        )
    }

    /// `reindex-` and the first 12 hex digits of the canonical line's SHA-256.
    pub fn job_name(&self) -> String {
        let digest = Sha256::digest(self.canonical().as_bytes());
        let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
        format!("reindex-{hex}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn the_same_arguments_name_the_same_job() {
        let (a, b) = (
            vec!["x".to_string(), "y".to_string()],
            vec!["y".to_string(), "x".to_string()],
        );
        let args = |topics| JobArgs {
            topics,
            since: t("2026-12-01T10:00:00Z"),
            until: Some(t("2026-12-01T11:00:00+00:00")),
            to_index: Some("rebuilt"),
            to_table: None,
            from: super::super::Origin::Kafka,
        };
        assert_eq!(args(&a).job_name(), args(&b).job_name());
        assert_eq!(
            args(&a).canonical(),
            "topics=x,y since=2026-12-01T10:00:00.000Z until=2026-12-01T11:00:00.000Z \
             to-index=rebuilt to-table=-"
        );
        let mut other = args(&a);
        other.to_table = Some("t");
        assert_ne!(other.job_name(), args(&a).job_name());
        assert!(args(&a).job_name().starts_with("reindex-"));
        assert_eq!(args(&a).job_name().len(), "reindex-".len() + 12);
    }
}
