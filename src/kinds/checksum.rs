//! `checksum` (docs/reference.md, a CPU kind): a streaming sha256 or blake3 digest of
//! a file inside `file.roots` → `{"digest": "hex", "bytes": N}`.
//!
//! It runs in a CPU worker process, which the daemon kills at the deadline;
//! the kind also stops by itself between chunks once the deadline passed.

use std::io::Read;
use std::sync::Arc;

use serde::Deserialize;
use sha2::Digest as _;

use crate::kinds::file::FileKind;
use crate::kinds::kind::{parse_payload, Context, JobError, Kind};

/// How much of the file is hashed between looks at the deadline: large
/// enough that the read and the hash dominate, small enough to stop within
/// a millisecond or so of the deadline.
pub const CHUNK: usize = 1 << 20;

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Algorithm {
    #[default]
    Sha256,
    Blake3,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    path: String,
    #[serde(default)]
    algorithm: Algorithm,
}

enum Hasher {
    Sha256(Box<sha2::Sha256>),
    Blake3(Box<blake3::Hasher>),
}

impl Hasher {
    fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Blake3(h) => {
                h.update(data);
            }
        }
    }

    fn hex(self) -> String {
        match self {
            Hasher::Sha256(h) => format!("{:x}", h.finalize()),
            Hasher::Blake3(h) => h.finalize().to_hex().to_string(),
        }
    }
}

/// The `checksum` kind.
pub struct Checksum {
    files: Arc<FileKind>,
}

impl Checksum {
    /// Confined to the roots of `files`.
    pub fn new(files: Arc<FileKind>) -> Checksum {
        Checksum { files }
    }
}

impl Kind for Checksum {
    fn name(&self) -> &'static str {
        "checksum"
    }

    fn run(&self, ctx: &Context<'_>, payload: &str) -> Result<Option<String>, JobError> {
        let args: Payload = parse_payload(payload)?;
        let mut file = self.files.open_read("path", &args.path)?;
        let mut hasher = match args.algorithm {
            Algorithm::Sha256 => Hasher::Sha256(Box::default()),
            Algorithm::Blake3 => Hasher::Blake3(Box::default()),
        };
        let mut buf = vec![0u8; CHUNK];
        let mut bytes = 0u64;
        loop {
            ctx.check()?;
            let n = match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(JobError::transient(format!(
                        "cannot read {}: {e}",
                        args.path
                    )))
                }
            };
            hasher.update(&buf[..n]);
            bytes += n as u64;
        }
        let result = serde_json::json!({ "digest": hasher.hex(), "bytes": bytes });
        Ok(Some(result.to_string()))
    }
}

/// Checks a payload without running the job: the fields and their types
/// (for `[cron.*]` entries at start-up).
pub(crate) fn check(payload: &str) -> Result<(), JobError> {
    parse_payload::<Payload>(payload).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    fn run(kind: &Checksum, payload: &str) -> Result<serde_json::Value, JobError> {
        let cancel = AtomicBool::new(false);
        let ctx = Context::for_test(&cancel, Duration::from_secs(60));
        kind.run(&ctx, payload)
            .map(|r| serde_json::from_str(&r.unwrap()).unwrap())
    }

    #[test]
    fn digests_match_the_published_test_vectors() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("abc"), b"abc").unwrap();
        let files = FileKind::new(&crate::config::FileConfig {
            roots: vec![root.path().to_path_buf()],
            ..Default::default()
        });
        let kind = Checksum::new(Arc::new(files));
        let sha = run(&kind, r#"{"path":"abc"}"#).unwrap();
        assert_eq!(
            sha["digest"],
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(sha["bytes"], 3);
        let b3 = run(&kind, r#"{"path":"abc","algorithm":"blake3"}"#).unwrap();
        assert_eq!(
            b3["digest"],
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
        let bad = run(&kind, r#"{"path":"abc","algorithm":"md5"}"#).unwrap_err();
        assert!(
            bad.to_string()
                .contains("payload field algorithm: unknown variant `md5`"),
            "{bad}"
        );
        let missing = run(&kind, r#"{"path":"nope"}"#).unwrap_err();
        assert!(matches!(missing, JobError::Permanent { .. }), "{missing}");
        let escape = run(&kind, r#"{"path":"../etc/passwd"}"#).unwrap_err();
        assert!(
            escape.to_string().contains("escapes the file root"),
            "{escape}"
        );
    }
}
