//! The error a command ends with, and its exit status (docs/reference.md): 1 for a
//! failure, 2 for bad usage. Each layer keeps its own typed error; this one
//! only gathers them at the edge, where `main` prints one sentence.

use crate::config::ConfigError;
use crate::logging::LogError;
use crate::metrics::MetricsError;
use crate::store::StoreError;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is missing, unreadable or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The database refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The log file cannot be opened.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The metrics listener cannot start.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// An argument is wrong (exit status 2).
    #[error("{0}")]
    Usage(String),
    /// The command ran but could not do what was asked.
    #[error("{0}")]
    Failed(String),
    /// Reading an input file or writing the output failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being read or written.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => 2,
            _ => 1,
        }
    }

    /// True when the output went to a closed pipe (`jobd list | head`):
    /// not worth a message.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

/// The result type of commands.
pub type Result<T, E = Error> = std::result::Result<T, E>;
