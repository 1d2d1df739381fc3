//! [`ConfigError`]: what an operator reads when the configuration cannot run, naming the key,
//! the file or variable that set it, and the reason, one line per problem.

use std::path::PathBuf;

/// Why the configuration was refused; `main` prints it and exits with status 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--config PATH` names no regular file.
    #[error("invalid configuration: file {} given with --config: {reason}", path.display())]
    File {
        /// The path as given on the command line.
        path: PathBuf,
        /// `no such file` or `not a regular file`.
        reason: &'static str,
    },
    /// Values that do not parse or do not pass a check (at least one).
    #[error("{}", lines(.0))]
    Keys(Vec<KeyError>),
}

impl From<KeyError> for ConfigError {
    fn from(e: KeyError) -> Self {
        ConfigError::Keys(vec![e])
    }
}

/// One refused value.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: key `{key}` ({origin}): {reason}")]
pub struct KeyError {
    /// Dotted key path (`nats.subjects[0]`).
    pub key: String,
    /// Where its value came from: `from TOML file /etc/sse-bridge/bridge.toml`, `from
    /// `SSE_BRIDGE_` environment variable(s) …`, `from defaults`.
    pub origin: String,
    /// Why it was refused.
    pub reason: String,
}

/// One line per error, in the order found.
fn lines(errors: &[KeyError]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
}
