//! `file` (docs/reference.md): copy, move, write, append, delete and mkdir, confined
//! to `file.roots`.
//!
//! Confinement is done by the kernel at open time, not by checking a path
//! and then using it: every path is opened relative to its root's
//! descriptor with `openat2(…, RESOLVE_BENEATH)`, which refuses `..` and
//! symlinks that lead out of the root, including a symlink swapped in after
//! any check could have run. The last component is then operated on with the
//! `*at` calls relative to its folder's descriptor. On a kernel without
//! `openat2` (before Linux 5.6) the fallback canonicalizes the folder and
//! checks it lies inside the root, which leaves a small race that the
//! kernel path does not have.
//!
//! Only regular files and folders are handled: files are opened with
//! `O_NONBLOCK` and their type checked on the open descriptor, so a FIFO or
//! a device in a root is refused at once instead of holding a thread for
//! good. A regular file with more than one hard link is not modified unless
//! `file.allow_hard_links` says so: the other link may lie outside the roots.
//!
//! `write` (and the destination of `copy`) is atomic: a temporary file in
//! the same folder, fsync, rename, fsync of the folder. `copy` streams in
//! chunks of `COPY_CHUNK` (1 MiB), skipping holes, so a huge (or sparse) source
//! costs constant memory. Retries are
//! idempotent: a `move` whose source is gone and whose destination exists
//! succeeds, `delete` of a missing file succeeds, and a `write` or `copy`
//! without `overwrite` that finds the very same content already in place
//! succeeds.

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};

use base64::Engine as _;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, ResolveFlags, SeekFrom, Stat, CWD};
use rustix::io::Errno;
use serde::Deserialize;

use crate::config::FileConfig;
use crate::kinds::kind::{parse_payload, Context, JobError, Kind};

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Op {
    Copy,
    Move,
    Write,
    Append,
    Delete,
    Mkdir,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Encoding {
    #[default]
    Utf8,
    Base64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    op: Op,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    encoding: Encoding,
    #[serde(default)]
    overwrite: bool,
}

/// How much of a file `copy` (and a content comparison) holds in memory at
/// once.
const COPY_CHUNK: usize = 1 << 20;

/// The `file` kind.
pub struct FileKind {
    roots: Vec<PathBuf>,
    allow_hard_links: bool,
}

/// A path split into the root it lies in and its place beneath it.
struct Located {
    raw: String,
    root: PathBuf,
    rel: PathBuf,
}

impl FileKind {
    /// The kind as `[file]` configures it; relative roots are taken against
    /// the daemon's working folder at start-up.
    pub fn new(config: &FileConfig) -> FileKind {
        let roots: Vec<PathBuf> = config
            .roots
            .iter()
            .map(|r| std::path::absolute(r).unwrap_or_else(|_| r.clone()))
            .collect();
        for root in &roots {
            // The operator named it; a fresh checkout's `files/` should just
            // work. A root that cannot be created fails its jobs by name.
            let _ = std::fs::create_dir_all(root);
        }
        FileKind {
            roots,
            allow_hard_links: config.allow_hard_links,
        }
    }

    /// Finds the root `raw` lies in. Relative paths go against the first
    /// root; an absolute path must start with one of the roots.
    fn locate(&self, field: &str, raw: Option<&str>) -> Result<Located, JobError> {
        let raw = raw.filter(|r| !r.is_empty()).ok_or_else(|| {
            JobError::permanent(format!("payload: field {field} is required for this op"))
        })?;
        if raw.contains('\0') {
            return Err(JobError::permanent(format!(
                "payload field {field}: contains a NUL byte, which no path can hold"
            )));
        }
        let path = Path::new(raw);
        let (root, rel) = if path.is_absolute() {
            self.roots
                .iter()
                .find_map(|root| path.strip_prefix(root).ok().map(|rel| (root, rel)))
                .ok_or_else(|| {
                    JobError::permanent(format!(
                        "payload field {field}: {raw} is outside every file.roots entry"
                    ))
                })?
        } else {
            let root = self
                .roots
                .first()
                .ok_or_else(|| JobError::permanent("file.roots is empty"))?;
            (root, path)
        };
        if rel.as_os_str().is_empty() {
            return Err(JobError::permanent(format!(
                "payload field {field}: {raw} names a root itself, not something inside it"
            )));
        }
        let located = Located {
            raw: raw.to_string(),
            root: root.clone(),
            rel: rel.to_path_buf(),
        };
        // Say "escapes" for a path that climbs out by its text alone, even
        // where a missing folder would stop the kernel's walk first.
        let mut depth = 0i32;
        for component in located.rel.components() {
            match component {
                Component::ParentDir => depth -= 1,
                Component::Normal(_) => depth += 1,
                _ => {}
            }
            if depth < 0 {
                return Err(located.escape());
            }
        }
        Ok(located)
    }
}

/// The confinement other kinds borrow: email attachments, `checksum` and
/// `compress` touch files only through these.
impl FileKind {
    /// Reads a whole file confined to the roots; `field` names the payload
    /// field in errors.
    pub fn read(&self, field: &str, raw: &str) -> Result<Vec<u8>, JobError> {
        let mut data = Vec::new();
        self.open_read(field, raw)?
            .read_to_end(&mut data)
            .map_err(|e| io("read", raw, e))?;
        Ok(data)
    }

    /// Opens a file confined to the roots for reading.
    pub fn open_read(&self, field: &str, raw: &str) -> Result<std::fs::File, JobError> {
        let located = self.locate(field, Some(raw))?;
        Ok(located.open_regular(OFlags::RDONLY, "read")?.0)
    }

    /// Refuses to change `stat`'s file when another hard link shares it,
    /// unless `file.allow_hard_links`.
    fn check_links(&self, target: &Located, stat: &Stat, what: &str) -> Result<(), JobError> {
        if self.allow_hard_links || stat.st_nlink <= 1 {
            return Ok(());
        }
        Err(JobError::permanent(format!(
            "cannot {what} {}: it has {} hard links and another may lie outside the file roots (set file.allow_hard_links = true to allow)",
            target.raw, stat.st_nlink
        )))
    }

    /// What stands at `name` in `dir` (not following a symlink), checked as
    /// a file a `write` or `copy` may replace: a regular file (without other
    /// hard links when it is to be `overwrite`n) or a symlink. None when
    /// nothing is there.
    fn existing(
        &self,
        target: &Located,
        dir: BorrowedFd<'_>,
        name: &std::ffi::OsStr,
        overwrite: bool,
    ) -> Result<Option<Stat>, JobError> {
        let stat = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(Errno::NOENT) => return Ok(None),
            Err(e) => return Err(target.error("look at", e)),
        };
        match FileType::from_raw_mode(stat.st_mode) {
            FileType::RegularFile => {
                if overwrite {
                    self.check_links(target, &stat, "replace")?;
                }
                Ok(Some(stat))
            }
            // A symlink is replaced, never followed.
            FileType::Symlink => Ok(Some(stat)),
            other => Err(target.not_regular("replace", other)),
        }
    }

    /// Streams a new file into place at `raw`, confined to the roots and
    /// atomic like `write`, replacing what is there so that a retry after a
    /// crash redoes the work instead of failing on its own output. `fill`
    /// writes the content; its error is transient and named with `what`,
    /// unless it wraps a [`JobError`] (`io::Error::other(job_error)`), which
    /// is returned as it is.
    pub fn replace_with<T>(
        &self,
        ctx: &Context<'_>,
        field: &str,
        raw: &str,
        what: &str,
        fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<T>,
    ) -> Result<T, JobError> {
        let target = self.locate(field, Some(raw))?;
        let dir = target.parent()?;
        let name = target.name()?;
        let tmp = attempt_temporary(dir.as_fd(), ctx, name);
        replace_atomically_with(dir.as_fd(), name, &tmp, true, fill).map_err(|e| match e {
            // `fill` stopped for a reason of the job's own (its deadline).
            ReplaceError::Write(e) if e.get_ref().is_some_and(|i| i.is::<JobError>()) => e
                .into_inner()
                .and_then(|i| i.downcast::<JobError>().ok())
                .map_or(JobError::TimedOut, |e| *e),
            ReplaceError::Write(e) => io(what, &target.raw, e),
            ReplaceError::At(what, errno) => target.error(what, errno),
        })
    }
}

/// The temporary name beside `name` for an attempt: hidden, and distinct
/// per job and attempt so two attempts never share one.
fn temporary_name(name: &std::ffi::OsStr, id: i64, attempt: i64) -> String {
    format!(".{}.jobd-{id}-{attempt}.tmp", name.to_string_lossy())
}

/// How many earlier attempts' temporary files an attempt looks for.
const EARLIER_TEMPORARIES: i64 = 64;

/// This attempt's temporary name in `dir`, once the temporary files of
/// the job's earlier attempts are gone: an attempt killed at its deadline
/// or cancelled (a CPU job's whole worker) leaves its partial file, and
/// each retry left one more (a 300 MB compress timing out 20 times).
fn attempt_temporary(dir: BorrowedFd<'_>, ctx: &Context<'_>, name: &std::ffi::OsStr) -> String {
    let first = ctx.attempt.saturating_sub(EARLIER_TEMPORARIES).max(1);
    for attempt in first..ctx.attempt {
        let _ = rustix::fs::unlinkat(dir, temporary_name(name, ctx.id, attempt), AtFlags::empty());
    }
    temporary_name(name, ctx.id, ctx.attempt)
}

impl Located {
    fn root_fd(&self) -> Result<OwnedFd, JobError> {
        rustix::fs::open(
            &self.root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| {
            JobError::permanent(format!(
                "file root {} cannot be opened: {e}",
                self.root.display()
            ))
        })
    }

    /// The last component, which must be a plain name.
    fn name(&self) -> Result<&std::ffi::OsStr, JobError> {
        match self.rel.components().next_back() {
            Some(Component::Normal(name)) => Ok(name),
            _ => Err(self.escape()),
        }
    }

    fn escape(&self) -> JobError {
        JobError::permanent(format!(
            "{} escapes the file root {} (.., an absolute path elsewhere or a symlink out); nothing was touched",
            self.raw,
            self.root.display()
        ))
    }

    /// Opens the folder holding the last component, beneath the root.
    fn parent(&self) -> Result<OwnedFd, JobError> {
        self.parent_or_errno()?
            .map_err(|e| self.error("open the folder of", e))
    }

    /// The folder holding the path, or why it could not be opened (a root
    /// that cannot be opened is an error of its own).
    fn parent_or_errno(&self) -> Result<Result<OwnedFd, Errno>, JobError> {
        let root = self.root_fd()?;
        let parent = self.rel.parent().filter(|p| !p.as_os_str().is_empty());
        let parent = parent.unwrap_or(Path::new("."));
        Ok(open_beneath(
            root.as_fd(),
            &self.root,
            parent,
            OFlags::RDONLY | OFlags::DIRECTORY,
        ))
    }

    /// Opens the path as a regular file: `O_NONBLOCK` so that a FIFO or a
    /// device does not block the open, then its type checked on the
    /// descriptor (no race with a swap). `what` words the refusal.
    fn open_regular(&self, flags: OFlags, what: &str) -> Result<(std::fs::File, Stat), JobError> {
        let root = self.root_fd()?;
        let fd = open_beneath(
            root.as_fd(),
            &self.root,
            &self.rel,
            flags | OFlags::NONBLOCK,
        )
        .map_err(|e| match e {
            // A FIFO without a reader refuses a non-blocking writer.
            Errno::NXIO => self.not_regular(what, FileType::Fifo),
            e => self.error(what, e),
        })?;
        let stat = rustix::fs::fstat(&fd).map_err(|e| self.error(what, e))?;
        match FileType::from_raw_mode(stat.st_mode) {
            FileType::RegularFile => Ok((std::fs::File::from(fd), stat)),
            other => Err(self.not_regular(what, other)),
        }
    }

    fn not_regular(&self, what: &str, found: FileType) -> JobError {
        let found = match found {
            FileType::Directory => "a folder",
            FileType::Fifo => "a FIFO",
            FileType::Socket => "a socket",
            FileType::CharacterDevice => "a character device",
            FileType::BlockDevice => "a block device",
            FileType::Symlink => "a symlink",
            _ => "not a regular file",
        };
        JobError::permanent(format!(
            "cannot {what} {}: it is {found}; only regular files and folders are handled",
            self.raw
        ))
    }

    /// Turns an errno into the job's error: escapes, missing folders and
    /// errors no retry can cure ([`lasting`]) are permanent, the rest (full
    /// disk, I/O) transient.
    fn error(&self, what: &str, e: Errno) -> JobError {
        match e {
            Errno::XDEV | Errno::LOOP => self.escape(),
            Errno::NOENT => JobError::permanent(format!(
                "cannot {what} {}: no such file or folder",
                self.raw
            )),
            e if lasting(e) => JobError::permanent(format!("cannot {what} {}: {e}", self.raw)),
            _ => JobError::transient(format!("cannot {what} {}: {e}", self.raw)),
        }
    }
}

/// `openat2(dirfd, path, RESOLVE_BENEATH)`, or on an old kernel a
/// canonicalize-and-check of the folder followed by an open that does not
/// follow a final symlink.
fn open_beneath(
    dirfd: BorrowedFd<'_>,
    root: &Path,
    path: &Path,
    flags: OFlags,
) -> Result<OwnedFd, Errno> {
    let flags = flags | OFlags::CLOEXEC;
    // openat2 insists on a zero mode unless it creates.
    let mode = if flags.contains(OFlags::CREATE) {
        Mode::from_raw_mode(0o644)
    } else {
        Mode::empty()
    };
    match rustix::fs::openat2(
        dirfd,
        path,
        flags,
        mode,
        ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
    ) {
        Err(Errno::NOSYS) => {}
        other => return other,
    }
    let full = root.join(path);
    let canonical_root = root.canonicalize().map_err(|_| Errno::NOENT)?;
    let folder = full.parent().unwrap_or(&full);
    let canonical = folder.canonicalize().map_err(|_| Errno::NOENT)?;
    if !canonical.starts_with(&canonical_root) {
        return Err(Errno::XDEV);
    }
    let last = if flags.contains(OFlags::DIRECTORY) && folder == full {
        canonical
    } else {
        canonical.join(full.file_name().ok_or(Errno::XDEV)?)
    };
    rustix::fs::openat(CWD, &last, flags | OFlags::NOFOLLOW, mode)
}

fn decode(content: &str, encoding: Encoding) -> Result<Vec<u8>, JobError> {
    match encoding {
        Encoding::Utf8 => Ok(content.as_bytes().to_vec()),
        Encoding::Base64 => base64::engine::general_purpose::STANDARD
            .decode(content.trim())
            .map_err(|e| {
                JobError::permanent(format!("payload field content: not valid base64: {e}"))
            }),
    }
}

/// Whether an errno says something about the path or the file system that
/// a retry cannot change: a name too long, a component that is not a
/// folder, a read-only file system, no permission.
fn lasting(e: Errno) -> bool {
    matches!(
        e,
        Errno::NAMETOOLONG
            | Errno::INVAL
            | Errno::LOOP
            | Errno::NOTDIR
            | Errno::ISDIR
            | Errno::ROFS
            | Errno::EXIST
            | Errno::ACCESS
            | Errno::PERM
            | Errno::NXIO
            | Errno::FBIG
            | Errno::TXTBSY
    )
}

/// An error of a read or write on an open file, classified like [`lasting`]
/// errnos; a [`JobError`] wrapped by a fill (the deadline, a cancel) comes
/// back as it is.
fn io(what: &str, raw: &str, e: std::io::Error) -> JobError {
    if e.get_ref().is_some_and(|inner| inner.is::<JobError>()) {
        return e
            .into_inner()
            .and_then(|inner| inner.downcast::<JobError>().ok())
            .map_or(JobError::TimedOut, |e| *e);
    }
    let message = format!("cannot {what} {raw}: {e}");
    match e.raw_os_error().map(Errno::from_raw_os_error) {
        Some(errno) if lasting(errno) => JobError::permanent(message),
        _ => JobError::transient(message),
    }
}

/// Opens the regular file `name` in `dir` for reading, without following a
/// symlink or blocking on a FIFO; None for anything else.
fn open_existing(dir: BorrowedFd<'_>, name: &std::ffi::OsStr) -> Option<std::fs::File> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let stat = rustix::fs::fstat(&fd).ok()?;
    (FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile)
        .then(|| std::fs::File::from(fd))
}

/// Whether the file `name` in `dir` holds exactly `content`.
fn same_content(dir: BorrowedFd<'_>, name: &std::ffi::OsStr, content: &[u8]) -> bool {
    let Some(mut file) = open_existing(dir, name) else {
        return false;
    };
    let mut existing = Vec::new();
    (&mut file)
        .take(content.len() as u64 + 1)
        .read_to_end(&mut existing)
        .is_ok()
        && existing == content
}

/// Whether the file `name` in `dir` holds exactly what `source` holds,
/// compared a chunk at a time.
fn same_file(dir: BorrowedFd<'_>, name: &std::ffi::OsStr, source: &std::fs::File) -> bool {
    let Some(existing) = open_existing(dir, name) else {
        return false;
    };
    let (Ok(a), Ok(b)) = (source.metadata(), existing.metadata()) else {
        return false;
    };
    if a.len() != b.len() {
        return false;
    }
    let (mut left, mut right) = (vec![0; COPY_CHUNK], vec![0; COPY_CHUNK]);
    let mut offset = 0;
    while offset < a.len() {
        let n = COPY_CHUNK.min((a.len() - offset) as usize);
        let read = source
            .read_exact_at(&mut left[..n], offset)
            .and_then(|()| existing.read_exact_at(&mut right[..n], offset));
        if read.is_err() || left[..n] != right[..n] {
            return false;
        }
        offset += n as u64;
    }
    true
}

/// Copies `len` bytes of `source` into `dest` a chunk at a time, writing
/// only the parts that hold data (`SEEK_DATA`/`SEEK_HOLE`) so holes stay
/// holes, and looking at the deadline and the cancel flag between chunks.
fn copy_stream(
    ctx: &Context<'_>,
    source: &std::fs::File,
    len: u64,
    dest: &mut std::fs::File,
) -> std::io::Result<u64> {
    let mut buffer = vec![0; COPY_CHUNK];
    let mut offset = 0;
    while offset < len {
        let data = match rustix::fs::seek(source, SeekFrom::Data(offset)) {
            Ok(data) => data,
            // No data past `offset`: the rest is a hole.
            Err(Errno::NXIO) => break,
            // A file system that cannot tell: all of it is data.
            Err(Errno::INVAL | Errno::OPNOTSUPP) => offset,
            Err(e) => return Err(e.into()),
        };
        let hole = match rustix::fs::seek(source, SeekFrom::Hole(data)) {
            Ok(hole) => hole.min(len),
            Err(_) => len,
        };
        let mut at = data;
        while at < hole {
            ctx.check().map_err(std::io::Error::other)?;
            let n = COPY_CHUNK.min((hole - at) as usize);
            let read = source.read_at(&mut buffer[..n], at)?;
            if read == 0 {
                // The source shrank while it was copied.
                break;
            }
            dest.write_all_at(&buffer[..read], at)?;
            at += read as u64;
        }
        offset = hole.max(offset + 1);
    }
    dest.set_len(len)?;
    Ok(len)
}

/// Why [`replace_atomically`] failed.
pub(crate) enum ReplaceError {
    /// Writing or syncing the temporary file.
    Write(std::io::Error),
    /// A call on the folder, with what it was doing.
    At(&'static str, Errno),
}

/// Puts `content` in place as `name` in `dir` atomically: the temporary file
/// `tmp` beside it, fsync, rename (refusing to replace an existing file
/// unless `overwrite`), fsync of the folder. The temporary file is removed
/// when a step fails.
pub(crate) fn replace_atomically(
    dir: BorrowedFd<'_>,
    name: &std::ffi::OsStr,
    tmp: &str,
    content: &[u8],
    overwrite: bool,
) -> Result<(), ReplaceError> {
    replace_atomically_with(dir, name, tmp, overwrite, |file| file.write_all(content))
}

/// [`replace_atomically`] with the content streamed in by `fill`, which
/// writes into the temporary file and returns what it wants to report.
pub(crate) fn replace_atomically_with<T>(
    dir: BorrowedFd<'_>,
    name: &std::ffi::OsStr,
    tmp: &str,
    overwrite: bool,
    fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<T>,
) -> Result<T, ReplaceError> {
    let fd = rustix::fs::openat(
        dir,
        tmp,
        OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )
    .map_err(|e| ReplaceError::At("create a temporary file beside", e))?;
    let mut file = std::fs::File::from(fd);
    let value = match fill(&mut file).and_then(|value| file.sync_all().map(|()| value)) {
        Ok(value) => value,
        Err(e) => {
            let _ = rustix::fs::unlinkat(dir, tmp, AtFlags::empty());
            return Err(ReplaceError::Write(e));
        }
    };
    let flags = if overwrite {
        RenameFlags::empty()
    } else {
        RenameFlags::NOREPLACE
    };
    if let Err(e) = rustix::fs::renameat_with(dir, tmp, dir, name, flags) {
        let _ = rustix::fs::unlinkat(dir, tmp, AtFlags::empty());
        return Err(ReplaceError::At("rename into place", e));
    }
    rustix::fs::fsync(dir).map_err(|e| ReplaceError::At("sync the folder of", e))?;
    Ok(value)
}

/// Writes `content` to `target` atomically: a temporary file beside it,
/// fsync, rename (refusing to replace unless `overwrite`), fsync the folder.
fn write_atomic(
    files: &FileKind,
    ctx: &Context<'_>,
    target: &Located,
    content: &[u8],
    overwrite: bool,
) -> Result<u64, JobError> {
    let dir = target.parent()?;
    let name = target.name()?;
    let exists = files
        .existing(target, dir.as_fd(), name, overwrite)?
        .is_some();
    if exists && !overwrite {
        if same_content(dir.as_fd(), name, content) {
            return Ok(content.len() as u64);
        }
        return Err(JobError::permanent(format!(
            "{} already exists (set overwrite to replace it)",
            target.raw
        )));
    }
    let tmp = attempt_temporary(dir.as_fd(), ctx, name);
    replace_atomically(dir.as_fd(), name, &tmp, content, overwrite).map_err(|e| match e {
        ReplaceError::Write(e) => io("write", &target.raw, e),
        ReplaceError::At(what, errno) => target.error(what, errno),
    })?;
    Ok(content.len() as u64)
}

impl FileKind {
    /// Streams `source` (`len` bytes) to `to` atomically, like
    /// [`write_atomic`] without holding the content.
    fn copy(
        &self,
        ctx: &Context<'_>,
        source: &std::fs::File,
        len: u64,
        to: &Located,
        overwrite: bool,
    ) -> Result<u64, JobError> {
        let dir = to.parent()?;
        let name = to.name()?;
        let exists = self.existing(to, dir.as_fd(), name, overwrite)?.is_some();
        if exists && !overwrite {
            if same_file(dir.as_fd(), name, source) {
                return Ok(len);
            }
            return Err(JobError::permanent(format!(
                "{} already exists (set overwrite to replace it)",
                to.raw
            )));
        }
        let tmp = attempt_temporary(dir.as_fd(), ctx, name);
        replace_atomically_with(dir.as_fd(), name, &tmp, overwrite, |file| {
            copy_stream(ctx, source, len, file)
        })
        .map_err(|e| match e {
            ReplaceError::Write(e) => io("copy to", &to.raw, e),
            ReplaceError::At(what, errno) => to.error(what, errno),
        })
    }
}

impl Kind for FileKind {
    fn name(&self) -> &'static str {
        "file"
    }

    // Long: one arm per file operation, each confined the same way.
    fn run(&self, ctx: &Context<'_>, payload: &str) -> Result<Option<String>, JobError> {
        let args: Payload = parse_payload(payload)?;
        let content = |args: &Payload| -> Result<Vec<u8>, JobError> {
            let text = args.content.as_deref().ok_or_else(|| {
                JobError::permanent("payload: field content is required for this op")
            })?;
            decode(text, args.encoding)
        };
        let result = match args.op {
            Op::Write => {
                let target = self.locate("path", args.path.as_deref())?;
                let bytes = write_atomic(self, ctx, &target, &content(&args)?, args.overwrite)?;
                serde_json::json!({ "bytes": bytes })
            }
            Op::Append => {
                let target = self.locate("path", args.path.as_deref())?;
                let data = content(&args)?;
                let (mut file, stat) = target.open_regular(
                    OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE,
                    "append to",
                )?;
                self.check_links(&target, &stat, "append to")?;
                file.write_all(&data)
                    .and_then(|()| file.sync_all())
                    .map_err(|e| io("append to", &target.raw, e))?;
                serde_json::json!({ "bytes": data.len() })
            }
            Op::Copy => {
                let from = self.locate("from", args.from.as_deref())?;
                let to = self.locate("to", args.to.as_deref())?;
                let (source, stat) = from.open_regular(OFlags::RDONLY, "read")?;
                let bytes = self.copy(ctx, &source, stat.st_size as u64, &to, args.overwrite)?;
                serde_json::json!({ "bytes": bytes })
            }
            Op::Move => {
                let from = self.locate("from", args.from.as_deref())?;
                let to = self.locate("to", args.to.as_deref())?;
                let (from_dir, to_dir) = (from.parent()?, to.parent()?);
                let (from_name, to_name) = (from.name()?, to.name()?);
                let flags = if args.overwrite {
                    RenameFlags::empty()
                } else {
                    RenameFlags::NOREPLACE
                };
                match rustix::fs::renameat_with(&from_dir, from_name, &to_dir, to_name, flags) {
                    Ok(()) => {}
                    // A retry after a move that happened: the source is gone
                    // and the destination is there.
                    Err(Errno::NOENT)
                        if rustix::fs::statat(&to_dir, to_name, AtFlags::SYMLINK_NOFOLLOW)
                            .is_ok() => {}
                    Err(Errno::EXIST) => {
                        return Err(JobError::permanent(format!(
                            "{} already exists (set overwrite to replace it)",
                            to.raw
                        )))
                    }
                    Err(Errno::XDEV) => {
                        return Err(JobError::permanent(format!(
                            "cannot move {} to {}: they are on different file systems",
                            from.raw, to.raw
                        )))
                    }
                    Err(e) => return Err(from.error("move", e)),
                }
                rustix::fs::fsync(&to_dir).map_err(|e| to.error("sync the folder of", e))?;
                let bytes = rustix::fs::statat(&to_dir, to_name, AtFlags::SYMLINK_NOFOLLOW)
                    .map(|s| s.st_size as u64)
                    .unwrap_or(0);
                serde_json::json!({ "bytes": bytes })
            }
            Op::Delete => {
                let target = self.locate("path", args.path.as_deref())?;
                // A path whose folder is not there is not there either:
                // nothing to delete, as for a missing file (the README's
                // cleanup example went dead every 5 minutes on a fresh root).
                let dir = match target.parent_or_errno()? {
                    Ok(dir) => dir,
                    Err(Errno::NOENT) => {
                        return Ok(Some(serde_json::json!({ "deleted": false }).to_string()))
                    }
                    Err(e) => return Err(target.error("open the folder of", e)),
                };
                let name = target.name()?;
                let deleted = match rustix::fs::unlinkat(&dir, name, AtFlags::empty()) {
                    Ok(()) => true,
                    Err(Errno::NOENT) => false,
                    Err(Errno::ISDIR) => {
                        rustix::fs::unlinkat(&dir, name, AtFlags::REMOVEDIR)
                            .map_err(|e| target.error("delete the folder", e))?;
                        true
                    }
                    Err(e) => return Err(target.error("delete", e)),
                };
                serde_json::json!({ "deleted": deleted })
            }
            Op::Mkdir => {
                let target = self.locate("path", args.path.as_deref())?;
                let root = target.root_fd()?;
                let mut dir = root
                    .try_clone()
                    .map_err(|e| io("open the root of", &target.raw, e))?;
                let mut prefix = PathBuf::new();
                for component in target.rel.components() {
                    let name = match component {
                        Component::Normal(name) => name,
                        Component::CurDir => continue,
                        _ => return Err(target.escape()),
                    };
                    match rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(target.error("create", e)),
                    }
                    prefix.push(name);
                    // Re-open from the root: a component that is a symlink
                    // leading out is refused here.
                    dir = open_beneath(
                        root.as_fd(),
                        &target.root,
                        &prefix,
                        OFlags::RDONLY | OFlags::DIRECTORY,
                    )
                    .map_err(|e| target.error("create", e))?;
                }
                serde_json::json!({ "created": target.raw })
            }
        };
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

    #[test]
    fn a_symlink_leading_out_is_refused_by_the_kernel_at_open_time() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret"), "s").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        std::fs::create_dir(root.join("inner")).unwrap();
        std::os::unix::fs::symlink("../inner", root.join("inner").join("up")).unwrap();
        let fd =
            rustix::fs::open(&root, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let open = |p: &str| open_beneath(fd.as_fd(), &root, Path::new(p), OFlags::RDONLY);
        assert_eq!(open("link/secret").unwrap_err(), Errno::XDEV);
        assert_eq!(open("../outside/secret").unwrap_err(), Errno::XDEV);
        assert_eq!(
            open(outside.join("secret").to_str().unwrap()).unwrap_err(),
            Errno::XDEV
        );
        // A symlink that stays inside the root is followed.
        assert!(open("inner/up").is_ok());
    }
}
