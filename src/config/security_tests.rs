use super::super::tests::parse;

fn pem_file(name: &str) -> String {
    let path = std::env::temp_dir().join(format!("lp-sec-{}-{name}", std::process::id()));
    std::fs::write(
        &path,
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    path.display().to_string()
}

fn error(args: &[&str]) -> String {
    parse(args).validate().unwrap_err().to_string()
}

#[test]
fn sasl_ssl_with_scram_gives_librdkafka_properties() {
    let ca = pem_file("ca");
    let s = parse(&[
        "--kafka-security-protocol",
        "sasl_ssl",
        "--kafka-sasl-mechanism",
        "scram-sha-512",
        "--kafka-sasl-username",
        "u",
        "--kafka-sasl-password",
        "pw",
        "--kafka-ssl-ca-file",
        &ca,
    ]);
    s.validate().unwrap();
    let props = s.security.kafka_properties().unwrap();
    let get = |k: &str| props.iter().find(|(p, _)| p == k).map(|(_, v)| v.as_str());
    assert_eq!(get("security.protocol"), Some("SASL_SSL"));
    assert_eq!(get("sasl.mechanism"), Some("SCRAM-SHA-512"));
    assert_eq!(get("sasl.password"), Some("pw"));
    assert_eq!(get("ssl.ca.location"), Some(ca.as_str()));
    assert_eq!(get("ssl.endpoint.identification.algorithm"), Some("https"));
}

#[test]
fn unsupported_mechanism_and_missing_files_name_the_field() {
    let e = error(&[
        "--kafka-security-protocol",
        "SASL_SSL",
        "--kafka-sasl-mechanism",
        "GSSAPI",
    ]);
    assert!(
        e.contains("LP_KAFKA_SASL_MECHANISM") && e.contains("not supported"),
        "{e}"
    );
    let e = error(&[
        "--kafka-security-protocol",
        "SSL",
        "--kafka-ssl-ca-file",
        "/nonexistent/ca",
    ]);
    assert!(
        e.contains("LP_KAFKA_SSL_CA_FILE") && e.contains("cannot read"),
        "{e}"
    );
    let e = error(&["--kafka-ssl-ca-file", &pem_file("ca2")]);
    assert!(
        e.contains("LP_KAFKA_SSL_CA_FILE") && e.contains("PLAINTEXT"),
        "{e}"
    );
    let e = error(&["--kafka-security-protocol", "SASL_PLAINTEXT"]);
    assert!(
        e.contains("LP_KAFKA_SASL_MECHANISM") && e.contains("required"),
        "{e}"
    );
    let e = error(&["--pg-sslrootcert", "/nonexistent/root.crt"]);
    assert!(e.contains("LP_PG_SSLROOTCERT"), "{e}");
    let e = error(&["--es-ca-file", &pem_file("ca3")]);
    assert!(e.contains("LP_ES_CA_FILE") && e.contains("https"), "{e}");
    let not_pem = std::env::temp_dir().join(format!("lp-sec-{}-notpem", std::process::id()));
    std::fs::write(&not_pem, "hello").unwrap();
    let e = error(&["--pg-sslcert", &not_pem.display().to_string()]);
    assert!(
        e.contains("LP_PG_SSLCERT") && e.contains("not a PEM file"),
        "{e}"
    );
}

/// Every secret option set at once: neither `check-config`'s lines nor its JSON (nor the
/// start-up log, which prints the same view) show any of them.
#[test]
fn secrets_never_reach_check_config_output() {
    let mut s = parse(&[
        "--kafka-security-protocol",
        "SASL_SSL",
        "--kafka-sasl-mechanism",
        "PLAIN",
        "--kafka-sasl-username",
        "u",
        "--kafka-sasl-password",
        "kafka-pw-xyz",
        "--kafka-ssl-key-password",
        "keypass-xyz",
        "--kafka-option",
        "sasl.oauthbearer.client.secret=oauth-xyz",
        "--elasticsearch-url",
        "https://es-user:es-url-pw-xyz@127.0.0.1:9200",
        "--es-api-key",
        "apikey-xyz",
        "--database-url",
        "postgres://u:pg-pw-xyz@h/db?sslmode=verify-full&sslpassword=sslpw-xyz",
        "--redact-hash",
        "email",
        "--redact-key",
        "redact-key-xyz",
        "--dead-letter-key",
        &"ab".repeat(32),
    ]);
    s.validate().unwrap();
    let view = |s: &crate::config::Settings| {
        let v = crate::config::View::new(s, &crate::config::Sources::default());
        format!("{v}\n{}\n{}", v.to_json(), v.to_json_line())
    };
    // Basic auth instead of the API key (the two are exclusive).
    let basic = parse(&[
        "--elasticsearch-url",
        "https://127.0.0.1:9200",
        "--es-username",
        "basic-user",
        "--es-password",
        "es-pw-xyz",
    ]);
    basic.validate().unwrap();
    let shown = view(&s) + &view(&basic);
    let secrets = [
        "kafka-pw-xyz",
        "keypass-xyz",
        "oauth-xyz",
        "es-url-pw-xyz",
        "apikey-xyz",
        "es-pw-xyz",
        "pg-pw-xyz",
        "sslpw-xyz",
        "redact-key-xyz",
        &"ab".repeat(32),
    ];
    for secret in secrets {
        assert!(!shown.contains(secret), "{secret} shown:\n{shown}");
    }
    for masked in [
        "LP_KAFKA_SASL_PASSWORD=****  (",
        "LP_KAFKA_SSL_KEY_PASSWORD=****  (",
        "LP_KAFKA_OPTION_SASL_OAUTHBEARER_CLIENT_SECRET=****  (",
        "LP_ES_API_KEY=****  (",
        "LP_ES_PASSWORD=****  (",
        "LP_REDACT_KEY=****  (",
        "LP_DEAD_LETTER_KEY=****  (",
        "LP_DATABASE_URL=postgres://u:****@h/db?sslmode=verify-full&sslpassword=****  (",
        "LP_ELASTICSEARCH_URL=https://es-user:****@127.0.0.1:9200  (",
    ] {
        assert!(shown.contains(masked), "{masked} missing:\n{shown}");
    }
    assert!(shown.contains("postgresql: sslmode=verify-full"), "{shown}");
    assert!(shown.contains("auth=api-key ****"), "{shown}");
    s.security.es_insecure_skip_verify = true;
    assert!(view(&s).contains("DISABLED"));
}

#[test]
fn secret_files_are_read_and_checked() {
    let dir = std::env::temp_dir();
    let pw = dir.join(format!("lp-sec-{}-pw", std::process::id()));
    std::fs::write(&pw, "from-file\n").unwrap();
    let mut s = parse(&["--kafka-sasl-password-file", &pw.display().to_string()]);
    s.load_secret_files().unwrap();
    assert_eq!(
        s.security.kafka_sasl_password.as_ref().map(|p| p.expose()),
        Some("from-file")
    );
    let mut s = parse(&["--es-api-key-file", "/nonexistent/key"]);
    let e = s.load_secret_files().unwrap_err().to_string();
    assert!(
        e.contains("LP_ES_API_KEY_FILE") && e.contains("/nonexistent/key"),
        "{e}"
    );
    let empty = dir.join(format!("lp-sec-{}-empty", std::process::id()));
    std::fs::write(&empty, "\n").unwrap();
    let mut s = parse(&["--es-password-file", &empty.display().to_string()]);
    assert!(
        s.load_secret_files()
            .unwrap_err()
            .to_string()
            .contains("empty")
    );
}

#[test]
fn pg_settings_override_the_url() {
    let s = parse(&[
        "--database-url",
        "postgres://u@h/db?sslmode=disable",
        "--pg-sslmode",
        "verify-full",
        "--pg-sslrootcert",
        "/etc/ssl/my ca.pem",
    ]);
    assert_eq!(
        s.pg_url_with_tls(),
        "postgres://u@h/db?sslmode=disable&sslmode=verify-full&sslrootcert=/etc/ssl/my%20ca.pem"
    );
    assert_eq!(
        parse(&["--database-url", "postgres://u@h/db"]).pg_url_with_tls(),
        "postgres://u@h/db"
    );
}
