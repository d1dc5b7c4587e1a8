//! `compress` (docs/reference.md, a CPU kind): gzip or zstd a file inside
//! `file.roots` into another, streaming, with the output put in place
//! atomically like `file` `write` → `{"bytes_in": N, "bytes_out": N}`.
//!
//! The output replaces whatever is at `to` (like `gzip -f`): a retry after a
//! crash that already renamed the output into place then redoes the work
//! rather than failing on its own earlier result.

use std::io::{Read, Write};
use std::sync::Arc;

use serde::Deserialize;

use crate::kinds::checksum::CHUNK;
use crate::kinds::file::FileKind;
use crate::kinds::kind::{parse_payload, Context, JobError, Kind};

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Format {
    Gzip,
    Zstd,
}

impl Format {
    /// The levels the format takes and its default (gzip's and zstd's own).
    fn levels(self) -> (std::ops::RangeInclusive<i32>, i32) {
        match self {
            Format::Gzip => (0..=9, 6),
            Format::Zstd => (
                zstd::compression_level_range(),
                zstd::DEFAULT_COMPRESSION_LEVEL,
            ),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    from: String,
    to: String,
    format: Format,
    #[serde(default)]
    level: Option<i32>,
}

/// The `compress` kind.
pub struct Compress {
    files: Arc<FileKind>,
}

impl Compress {
    /// Confined to the roots of `files`.
    pub fn new(files: Arc<FileKind>) -> Compress {
        Compress { files }
    }
}

/// Counts the bytes written through it.
struct Counting<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Copies `input` into `encoder` a chunk at a time, stopping at the deadline.
fn pump(
    ctx: &Context<'_>,
    input: &mut impl Read,
    encoder: &mut impl Write,
) -> std::io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut bytes = 0u64;
    loop {
        ctx.check().map_err(std::io::Error::other)?;
        let n = match input.read(&mut buf) {
            Ok(0) => return Ok(bytes),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        encoder.write_all(&buf[..n])?;
        bytes += n as u64;
    }
}

impl Kind for Compress {
    fn name(&self) -> &'static str {
        "compress"
    }

    fn run(&self, ctx: &Context<'_>, payload: &str) -> Result<Option<String>, JobError> {
        let args: Payload = parse_payload(payload)?;
        let (levels, default) = args.format.levels();
        let level = args.level.unwrap_or(default);
        if !levels.contains(&level) {
            return Err(JobError::permanent(format!(
                "payload field level: {level} is not a {:?} level (expected {} to {})",
                args.format,
                levels.start(),
                levels.end()
            )));
        }
        let mut input = self.files.open_read("from", &args.from)?;
        let what = format!("compress {} into", args.from);
        let (bytes_in, bytes_out) =
            self.files
                .replace_with(ctx, "to", &args.to, &what, |file| {
                    let mut out = Counting {
                        inner: std::io::BufWriter::with_capacity(CHUNK, file),
                        bytes: 0,
                    };
                    let bytes_in = match args.format {
                        Format::Gzip => {
                            let level = flate2::Compression::new(level as u32);
                            let mut encoder = flate2::write::GzEncoder::new(&mut out, level);
                            let n = pump(ctx, &mut input, &mut encoder)?;
                            encoder.finish()?;
                            n
                        }
                        Format::Zstd => {
                            let mut encoder = zstd::Encoder::new(&mut out, level)?;
                            let n = pump(ctx, &mut input, &mut encoder)?;
                            encoder.finish()?;
                            n
                        }
                    };
                    out.flush()?;
                    Ok((bytes_in, out.bytes))
                })?;
        let result = serde_json::json!({ "bytes_in": bytes_in, "bytes_out": bytes_out });
        Ok(Some(result.to_string()))
    }
}

/// Checks a payload without running the job: the fields and their types
/// (for `[cron.*]` entries at start-up).
pub(crate) fn check(payload: &str) -> Result<(), JobError> {
    parse_payload::<Payload>(payload).map(drop)
}
