//! Where each setting's value came from, for `check-config` and the start-up log: clap knows
//! default, environment and flag; the config file's values reach clap as environment
//! variables, so the names the file set are told apart here.

use std::collections::{BTreeMap, BTreeSet};

use clap::parser::ValueSource;
use clap::{ArgMatches, Args};

use super::super::Settings;

/// The source of one setting's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The option's default value.
    Default,
    /// Not set; the value shown is computed from other settings.
    Derived,
    /// An `LP_*` environment variable.
    Environment,
    /// A line of the `--config` / `LP_CONFIG` file.
    ConfigFile,
    /// A command-line flag.
    Flag,
    /// Read from the file its `..._FILE` setting names.
    SecretFile,
    /// Not set, and nothing takes its place.
    Unset,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Default => "default",
            Source::Derived => "derived",
            Source::Environment => "environment",
            Source::ConfigFile => "config file",
            Source::Flag => "flag",
            Source::SecretFile => "_FILE",
            Source::Unset => "unset",
        }
    }
}

/// JSON names the source as the lines do.
impl serde::Serialize for Source {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// The source of every setting, by its variable's name (`LP_WORKERS`).
#[derive(Clone, Debug, Default)]
pub struct Sources {
    by_name: BTreeMap<String, Source>,
    /// Variables the config file set (those already in the environment it does not touch).
    config_file: BTreeSet<String>,
}

impl Sources {
    /// The sources clap recorded while parsing `matches` (the matches of a command whose
    /// arguments are [`Settings`]'), with `config_file` the variables the config file set.
    pub fn from_matches(matches: &ArgMatches, config_file: &[String]) -> Sources {
        let config_file: BTreeSet<String> = config_file.iter().cloned().collect();
        let mut by_name = BTreeMap::new();
        let command = Settings::augment_args(clap::Command::new("settings"));
        for arg in command.get_arguments() {
            let Some(env) = arg.get_env().and_then(|e| e.to_str()) else {
                continue;
            };
            let source = match matches.value_source(arg.get_id().as_str()) {
                Some(ValueSource::CommandLine) => Source::Flag,
                Some(ValueSource::EnvVariable) if config_file.contains(env) => Source::ConfigFile,
                Some(ValueSource::EnvVariable) => Source::Environment,
                Some(ValueSource::DefaultValue) => Source::Default,
                _ => Source::Unset,
            };
            by_name.insert(env.to_string(), source);
        }
        Sources {
            by_name,
            config_file,
        }
    }

    /// The recorded source of `name`; without a record (settings built without parsing),
    /// `Default` when a value is present and `Unset` otherwise.
    pub(super) fn of(&self, name: &str, has_value: bool) -> Source {
        match self.by_name.get(name) {
            Some(s) => *s,
            None if has_value => Source::Default,
            None => Source::Unset,
        }
    }

    /// A pass-through Kafka property's source: its flag, else its variable, from the
    /// environment or the config file.
    pub(super) fn of_kafka_option(&self, name: &str, from_flag: bool) -> Source {
        match (from_flag, self.config_file.contains(name)) {
            (true, _) => Source::Flag,
            (false, true) => Source::ConfigFile,
            (false, false) => Source::Environment,
        }
    }
}
