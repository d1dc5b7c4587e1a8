//! Secrets (the SMTP password, the dashboard token): read from an
//! environment variable or a file named in the config, never from the
//! config file itself, and kept in [`Secret`], which never prints its value.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use crate::config::error::KeyError;

/// A secret value: shows as `(redacted)` in every debug and display form.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("(redacted)")
    }
}

/// Reads a secret from the environment variable `var` or the file `file`
/// (at most one may be set).
pub(crate) fn read_secret(
    section: &str,
    name: &str,
    var: &str,
    file: &Path,
    env: &HashMap<String, String>,
) -> Result<Option<Secret>, KeyError> {
    let env_key = format!("{section}.{name}_env");
    let file_key = format!("{section}.{name}_file");
    match (var.is_empty(), file.as_os_str().is_empty()) {
        (true, true) => Ok(None),
        (false, false) => Err(KeyError::new(
            env_key,
            format!("and {file_key} are both set; choose one"),
        )),
        (false, true) => match env.get(var) {
            Some(value) if !value.is_empty() => Ok(Some(Secret(value.clone()))),
            _ => Err(KeyError::new(
                env_key,
                format!("names the environment variable {var}, which is not set"),
            )),
        },
        // A secret is a line; a MiB is already far more.
        (true, false) => match crate::os::bounded::read_to_string(file, 1 << 20) {
            // A trailing newline is how editors save a one-line file.
            Ok(value) if !value.trim_end_matches(['\r', '\n']).is_empty() => Ok(Some(Secret(
                value.trim_end_matches(['\r', '\n']).to_string(),
            ))),
            Ok(_) => Err(KeyError::new(
                file_key,
                format!("names {}, which is empty", file.display()),
            )),
            Err(e) => Err(KeyError::new(
                file_key,
                format!("names {}, which cannot be read: {e}", file.display()),
            )),
        },
    }
}
