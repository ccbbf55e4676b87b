//! `topic_identities`: which incarnation of a topic each stored name holds (see
//! `crate::identity`).

use super::PgSink;
use super::refusal::classify;
use crate::identity::{Binding, TopicIdentity};
use crate::sink::SinkError;

impl PgSink {
    /// The bindings that concern these names: as a Kafka topic's name or as a stored name.
    pub async fn bindings(&self, names: &[String]) -> Result<Vec<Binding>, SinkError> {
        let rows: Vec<(String, String, String, String)> = sqlx::query_as(
            "SELECT cluster_id, topic_id, topic, stored_as FROM topic_identities \
             WHERE topic = ANY($1::text[]) OR stored_as = ANY($1::text[])",
        )
        .bind(names)
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        Ok(rows
            .into_iter()
            .map(|(cluster_id, topic_id, topic, stored_as)| Binding {
                identity: TopicIdentity {
                    cluster_id,
                    topic_id,
                },
                topic,
                stored_as,
            })
            .collect())
    }

    /// [`Self::bindings`], or none when the table does not exist yet (a schema the daemon has
    /// not migrated: nothing recorded): for read-only callers that create nothing.
    pub async fn recorded_bindings(&self, names: &[String]) -> Result<Vec<Binding>, SinkError> {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass('topic_identities') IS NOT NULL")
            .fetch_one(&self.pool)
            .await
            .map_err(classify)?;
        match exists {
            true => self.bindings(names).await,
            false => Ok(Vec::new()),
        }
    }

    /// Records a binding. Returns the binding PostgreSQL holds for the identity afterwards:
    /// this one, or the one another replica or an operator wrote first. A name taken by
    /// another identity is an error (the unique constraint on `stored_as`).
    pub async fn bind(&self, b: &Binding) -> Result<Binding, SinkError> {
        sqlx::query(
            "INSERT INTO topic_identities (cluster_id, topic_id, topic, stored_as) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (cluster_id, topic_id) DO NOTHING",
        )
        .bind(&b.identity.cluster_id)
        .bind(&b.identity.topic_id)
        .bind(&b.topic)
        .bind(&b.stored_as)
        .execute(&self.pool)
        .await
        .map_err(classify)?;
        let (topic, stored_as): (String, String) = sqlx::query_as(
            "SELECT topic, stored_as FROM topic_identities WHERE cluster_id = $1 AND topic_id = $2",
        )
        .bind(&b.identity.cluster_id)
        .bind(&b.identity.topic_id)
        .fetch_one(&self.pool)
        .await
        .map_err(classify)?;
        Ok(Binding {
            identity: b.identity.clone(),
            topic,
            stored_as,
        })
    }
}

impl PgSink {
    /// True when rows, dead letters, gaps or a watermark are stored under `name`: a name that
    /// holds records of no bound identity must not be given to one.
    pub async fn holds_records_under(&self, name: &str) -> Result<bool, SinkError> {
        let rows: String = (self.mapping.table_names())
            .map(|t| format!("EXISTS (SELECT 1 FROM {t} WHERE topic = $1) OR "))
            .collect();
        let q = format!(
            "SELECT {rows}EXISTS (SELECT 1 FROM dead_letters WHERE topic = $1) \
                 OR EXISTS (SELECT 1 FROM source_gaps WHERE topic = $1) \
                 OR EXISTS (SELECT 1 FROM consumer_offsets WHERE topic = $1)"
        );
        sqlx::query_scalar(sqlx::AssertSqlSafe(q))
            .bind(name)
            .fetch_one(&self.pool)
            .await
            .map_err(classify)
    }
}

impl PgSink {
    /// Every name records are stored under, for matching `LP_TOPICS` patterns in commands that
    /// read PostgreSQL only: each batch stores its partition's watermark, so every name with
    /// rows, dead letters or gaps has one (small tables: a row per group and partition, a row
    /// per identity), and bound names are added.
    pub async fn stored_topic_names(&self) -> Result<Vec<String>, SinkError> {
        sqlx::query_scalar(
            "SELECT topic FROM consumer_offsets UNION SELECT topic FROM topic_identities \
             UNION SELECT stored_as FROM topic_identities ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(classify)
    }
}
