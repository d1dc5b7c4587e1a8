//! The config layer's error for one key: what the checks after parsing
//! return, before loading names where the key was set.

/// A value that parsed but is not possible, from the checks after parsing
/// ([`crate::config::Config::validate`], the secrets, the layers' [`crate::config::SectionCheck`]s): the
/// dotted key and what is wrong with it. Loading turns it into
/// [`crate::config::ConfigError::Invalid`], which also names where the key was set.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{key} {detail}")]
pub struct KeyError {
    /// The full dotted key (`queues.mail.rate`).
    pub key: String,
    /// What is wrong, as the rest of a sentence after the key.
    pub detail: String,
}

impl KeyError {
    /// `key` is at fault: `detail`.
    pub fn new(key: impl Into<String>, detail: impl Into<String>) -> KeyError {
        KeyError {
            key: key.into(),
            detail: detail.into(),
        }
    }
}
