//! Reading a file an operator names (the config, a secret, a CA file) with
//! a cap on its size, refusing what is not a regular file: `/dev/zero`
//! grew until the allocation failed, and a FIFO without a writer hung the
//! command for good.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The whole of `path`, a regular file of at most `limit` bytes. The error
/// says what is wrong ("it is not a regular file", "it is larger than …",
/// or the system's reason).
pub fn read(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    // Non-blocking, so that opening a FIFO does not wait for a writer.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if meta.is_dir() {
        return Err(std::io::Error::other("it is a folder, not a file"));
    }
    if !meta.is_file() {
        return Err(std::io::Error::other(
            "it is not a regular file (a device, a FIFO or a socket)",
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len().min(limit) as usize);
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(std::io::Error::other(format!(
            "it is larger than {limit} bytes"
        )));
    }
    Ok(bytes)
}

/// [`read`] as UTF-8 text.
pub fn read_to_string(path: &Path, limit: u64) -> std::io::Result<String> {
    String::from_utf8(read(path, limit)?)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "it is not UTF-8 text"))
}
