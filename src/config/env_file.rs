//! The `LP_CONFIG` file: `KEY=VALUE` lines, as `.env` files and systemd's EnvironmentFile are
//! written.

use std::path::Path;

use super::{ConfigError, invalid};

/// Reads `KEY=VALUE` lines from a config file with `dotenvy`: blank lines and `#` comments
/// skipped, `export` allowed, values in single quotes taken literally, in double quotes with
/// `\\`, `\"`, `\n` escapes and `${VAR}` substitution, as `.env` files and systemd's
/// EnvironmentFile are written. An error names the line but never shows it: it may hold a secret.
pub fn read_env_file(path: &Path) -> Result<Vec<(String, String)>, ConfigError> {
    let field = "LP_CONFIG (--config)";
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(field, format!("cannot read {}: {e}", path.display())))?;
    let iter = dotenvy::from_read_iter(text.as_bytes());
    iter.map(|item| {
        item.map_err(|e| match e {
            dotenvy::Error::LineParse(line, at) => {
                let n = text
                    .find(line.as_str())
                    .map_or(0, |i| text[..i].lines().count() + 1);
                let key = line
                    .split_once('=')
                    .map(|(k, _)| format!(" (setting {})", k.trim()))
                    .unwrap_or_default();
                invalid(
                    field,
                    format!(
                        "{}:{n}: cannot parse this line at character {at}{key}: expected KEY=VALUE, \
                         with quotes closed",
                        path.display()
                    ),
                )
            }
            other => invalid(field, format!("{}: {other}", path.display())),
        })
    })
    .collect()
}

/// Applies `--config FILE` / `LP_CONFIG` before clap reads the environment: each variable the
/// environment does not set already is set from the file. Returns the names it set, so
/// `check-config` can say which values came from the file.
///
/// # Safety
/// Sets environment variables: call before any other thread exists (first thing in `main`).
pub unsafe fn apply_config_file() -> Result<Vec<String>, ConfigError> {
    let args: Vec<String> = std::env::args().collect();
    let from_args = args
        .iter()
        .position(|a| a == "--config")
        .and_then(|i| args.get(i + 1))
        .cloned()
        .or_else(|| {
            args.iter()
                .find_map(|a| a.strip_prefix("--config=").map(String::from))
        });
    let Some(path) = from_args.or_else(|| std::env::var("LP_CONFIG").ok()) else {
        return Ok(Vec::new());
    };
    let mut set = Vec::new();
    for (k, v) in read_env_file(path.as_ref())? {
        if std::env::var_os(&k).is_none() {
            // SAFETY: the caller guarantees no other thread exists.
            unsafe { std::env::set_var(&k, v) };
            set.push(k);
        }
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_file_lines() {
        let dir = std::env::temp_dir().join(format!("lp-env-{}", std::process::id()));
        std::fs::write(&dir, "# c\nLP_WORKERS=3\n\nLP_TOPICS=\"a,b\"\n").unwrap();
        let pairs = read_env_file(&dir).unwrap();
        assert_eq!(
            pairs,
            vec![
                ("LP_WORKERS".into(), "3".into()),
                ("LP_TOPICS".into(), "a,b".into())
            ]
        );
        std::fs::write(&dir, "LP_A=1\noops\n").unwrap();
        let e = read_env_file(&dir).unwrap_err().to_string();
        assert!(e.contains(":2: cannot parse"), "{e}");
        std::fs::remove_file(&dir).ok();
    }

    #[test]
    fn env_file_quoting_and_escapes() {
        let path = std::env::temp_dir().join(format!("lp-env-q-{}", std::process::id()));
        let text = concat!(
            "export LP_A='single $quoted # not a comment'\n",
            "LP_B=\"double \\\"escaped\\\" line\\nbreak\"\n",
            "LP_C=plain # a comment\n",
            "LP_D=\"p@ss=word#1\"\n",
            "LP_E=\"${LP_D}/x\"\n",
            "LP_F=\n",
        );
        std::fs::write(&path, text).unwrap();
        let pairs = read_env_file(&path).unwrap();
        let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("LP_A"), Some("single $quoted # not a comment"));
        assert_eq!(get("LP_B"), Some("double \"escaped\" line\nbreak"));
        assert_eq!(get("LP_C"), Some("plain"));
        assert_eq!(get("LP_D"), Some("p@ss=word#1"));
        assert_eq!(get("LP_E"), Some("p@ss=word#1/x"));
        assert_eq!(get("LP_F"), Some(""));

        // An unclosed quote names the line and the setting, never the value.
        std::fs::write(
            &path,
            "LP_A=1\nLP_DATABASE_URL=\"postgres://u:hunter2@h/db\n",
        )
        .unwrap();
        let e = read_env_file(&path).unwrap_err().to_string();
        assert!(
            e.contains("LP_DATABASE_URL") && !e.contains("hunter2"),
            "{e}"
        );
        std::fs::remove_file(&path).ok();
    }
}
