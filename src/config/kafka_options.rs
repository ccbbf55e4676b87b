//! Pass-through librdkafka properties (`--kafka-option KEY=VALUE`, `LP_KAFKA_OPTION_<KEY>`),
//! minus the ones the daemon owns: its delivery guarantees rest on them.

use super::{ConfigError, invalid};

/// One pass-through property.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaOption {
    pub key: String,
    pub value: String,
}

impl KafkaOption {
    /// Whether the value may be a credential (then `check-config` masks it).
    pub fn is_secret(&self) -> bool {
        ["password", "secret", "token", "jaas", ".pem", "credentials"]
            .iter()
            .any(|s| self.key.contains(s))
    }
}

const ENV_PREFIX: &str = "LP_KAFKA_OPTION_";
const FIELD: &str = "LP_KAFKA_OPTION_* (--kafka-option)";

/// Properties the daemon sets itself, and why an operator may not.
const OWNED: &[(&str, &str)] = &[
    ("bootstrap.servers", "set LP_KAFKA_BROKERS"),
    ("metadata.broker.list", "set LP_KAFKA_BROKERS"),
    ("group.id", "set LP_GROUP_ID"),
    (
        "group.instance.id",
        "the daemon replaces stuck consumers, which static membership would fence",
    ),
    (
        "enable.auto.commit",
        "offsets are committed only for records both stores hold",
    ),
    (
        "enable.auto.offset.store",
        "offsets are stored only for records both stores hold",
    ),
    (
        "auto.commit.interval.ms",
        "offsets are committed only for records both stores hold",
    ),
    (
        "auto.offset.reset",
        "a partition starts from PostgreSQL's watermark",
    ),
    (
        "enable.partition.eof",
        "the consumer loop does not expect end-of-partition events",
    ),
    (
        "partition.assignment.strategy",
        "the revoke drain relies on cooperative-sticky",
    ),
    (
        "group.protocol",
        "the revoke drain relies on the classic cooperative-sticky protocol",
    ),
    ("session.timeout.ms", "set LP_SESSION_TIMEOUT_MS"),
    (
        "heartbeat.interval.ms",
        "derived from LP_SESSION_TIMEOUT_MS (a third, at most 500 ms)",
    ),
    ("max.poll.interval.ms", "set LP_MAX_POLL_INTERVAL_MS"),
    (
        "queued.max.messages.kbytes",
        "set LP_KAFKA_QUEUE_KBYTES (part of the memory bound)",
    ),
    (
        "fetch.max.bytes",
        "set LP_KAFKA_FETCH_MAX_BYTES (part of the memory bound)",
    ),
    (
        "receive.message.max.bytes",
        "set LP_KAFKA_FETCH_MAX_BYTES (part of the memory bound)",
    ),
    (
        "statistics.interval.ms",
        "the stuck-consumer watch reads these statistics",
    ),
    ("isolation.level", "the daemon reads committed records only"),
    (
        "topic.metadata.refresh.interval.ms",
        "set LP_TOPIC_REFRESH_MS",
    ),
    (
        "topic.blacklist",
        "internal topics are kept out of LP_TOPICS patterns by the daemon; list the topics \
         to read in LP_TOPICS",
    ),
    ("security.protocol", "set LP_KAFKA_SECURITY_PROTOCOL"),
    ("sasl.mechanism", "set LP_KAFKA_SASL_MECHANISM"),
    ("sasl.mechanisms", "set LP_KAFKA_SASL_MECHANISM"),
    ("sasl.username", "set LP_KAFKA_SASL_USERNAME"),
    (
        "sasl.password",
        "set LP_KAFKA_SASL_PASSWORD or LP_KAFKA_SASL_PASSWORD_FILE",
    ),
    ("ssl.ca.location", "set LP_KAFKA_SSL_CA_FILE"),
    ("ssl.certificate.location", "set LP_KAFKA_SSL_CERT_FILE"),
    ("ssl.key.location", "set LP_KAFKA_SSL_KEY_FILE"),
    (
        "ssl.key.password",
        "set LP_KAFKA_SSL_KEY_PASSWORD or LP_KAFKA_SSL_KEY_PASSWORD_FILE",
    ),
    (
        "ssl.endpoint.identification.algorithm",
        "set LP_KAFKA_SSL_VERIFY_HOSTNAME",
    ),
];

/// The options from the flags, then from the environment (a key given as a flag wins).
pub(super) fn collect(
    flags: &[String],
    env: impl Iterator<Item = (String, String)>,
) -> Result<Vec<KafkaOption>, ConfigError> {
    let mut options = Vec::new();
    for flag in flags {
        let Some((k, v)) = flag.split_once('=') else {
            return Err(invalid(
                FIELD,
                format!("expected KEY=VALUE, got {:?}", mask_flag(flag)),
            ));
        };
        push(&mut options, k.trim().to_string(), v.to_string())?;
    }
    let mut from_env: Vec<(String, String)> = env
        .filter_map(|(k, v)| {
            let name = k.strip_prefix(ENV_PREFIX)?;
            Some((name.to_ascii_lowercase().replace('_', "."), v))
        })
        .collect();
    from_env.sort();
    for (k, v) in from_env {
        if !options.iter().any(|o: &KafkaOption| o.key == k) {
            push(&mut options, k, v)?;
        }
    }
    Ok(options)
}

fn push(options: &mut Vec<KafkaOption>, key: String, value: String) -> Result<(), ConfigError> {
    if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '.') {
        return Err(invalid(
            FIELD,
            format!("{key:?} is not a librdkafka property name"),
        ));
    }
    if let Some((_, why)) = OWNED.iter().find(|(k, _)| *k == key) {
        return Err(invalid(
            FIELD,
            format!("{key} is set by the daemon and cannot be overridden: {why}"),
        ));
    }
    options.retain(|o| o.key != key);
    options.push(KafkaOption { key, value });
    Ok(())
}

/// A malformed flag is echoed only up to where a value could start.
fn mask_flag(flag: &str) -> String {
    flag.chars().take(40).collect::<String>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn flags_and_environment_are_merged_flags_first() {
        let got = collect(
            &["socket.keepalive.enable=true".into()],
            env(&[
                ("LP_KAFKA_OPTION_SOCKET_KEEPALIVE_ENABLE", "false"),
                ("LP_KAFKA_OPTION_CLIENT_RACK", "eu-1a"),
                ("LP_OTHER", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(
            got,
            vec![
                KafkaOption {
                    key: "socket.keepalive.enable".into(),
                    value: "true".into()
                },
                KafkaOption {
                    key: "client.rack".into(),
                    value: "eu-1a".into()
                },
            ]
        );
    }

    #[test]
    fn owned_properties_are_refused_by_name() {
        for key in [
            "group.id",
            "enable.auto.commit",
            "enable.auto.offset.store",
            "bootstrap.servers",
        ] {
            let e = collect(&[format!("{key}=x")], env(&[]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key) && e.contains("cannot be overridden"), "{e}");
        }
        let e = collect(&[], env(&[("LP_KAFKA_OPTION_ENABLE_AUTO_COMMIT", "true")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("enable.auto.commit"), "{e}");
    }

    #[test]
    fn malformed_flags_are_refused() {
        assert!(collect(&["novalue".into()], env(&[])).is_err());
        assert!(collect(&["bad key=1".into()], env(&[])).is_err());
    }

    #[test]
    fn credentials_are_recognised_for_masking() {
        let o = |k: &str| KafkaOption {
            key: k.into(),
            value: "v".into(),
        };
        assert!(o("sasl.oauthbearer.client.secret").is_secret());
        assert!(o("ssl.keystore.password").is_secret());
        assert!(!o("client.rack").is_secret());
    }
}
