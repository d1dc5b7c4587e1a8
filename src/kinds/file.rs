//! `file` (SPEC §2): copy, move, write, append, delete and mkdir, confined
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
//! `write` (and the destination of `copy`) is atomic: a temporary file in
//! the same folder, fsync, rename, fsync of the folder. Retries are
//! idempotent: a `move` whose source is gone and whose destination exists
//! succeeds, `delete` of a missing file succeeds, and a `write` or `copy`
//! without `overwrite` that finds the very same content already in place
//! succeeds.

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use base64::Engine as _;
use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags, ResolveFlags, CWD};
use rustix::io::Errno;
use serde::Deserialize;

use super::{parse_payload, Context, JobError, Kind};
use crate::config::FileConfig;

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

/// The `file` kind.
pub struct FileKind {
    roots: Vec<PathBuf>,
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
        FileKind { roots }
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
        Ok(std::fs::File::from(located.open(OFlags::RDONLY)?))
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
        let tmp = temporary_name(ctx, name);
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
fn temporary_name(ctx: &Context<'_>, name: &std::ffi::OsStr) -> String {
    format!(
        ".{}.jobd-{}-{}.tmp",
        name.to_string_lossy(),
        ctx.id,
        ctx.attempt
    )
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
        let root = self.root_fd()?;
        let parent = self.rel.parent().filter(|p| !p.as_os_str().is_empty());
        let parent = parent.unwrap_or(Path::new("."));
        open_beneath(
            root.as_fd(),
            &self.root,
            parent,
            OFlags::RDONLY | OFlags::DIRECTORY,
        )
        .map_err(|e| self.error("open the folder of", e))
    }

    /// Opens the path itself beneath the root.
    fn open(&self, flags: OFlags) -> Result<OwnedFd, JobError> {
        let root = self.root_fd()?;
        open_beneath(root.as_fd(), &self.root, &self.rel, flags).map_err(|e| self.error("open", e))
    }

    /// Turns an errno into the job's error: escapes and missing folders are
    /// permanent, the rest (full disk, I/O) transient.
    fn error(&self, what: &str, e: Errno) -> JobError {
        match e {
            Errno::XDEV | Errno::LOOP => self.escape(),
            Errno::NOENT => JobError::permanent(format!(
                "cannot {what} {}: no such file or folder",
                self.raw
            )),
            Errno::ACCESS | Errno::PERM | Errno::ISDIR | Errno::NOTDIR | Errno::EXIST => {
                JobError::permanent(format!("cannot {what} {}: {e}", self.raw))
            }
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

fn io(what: &str, raw: &str, e: std::io::Error) -> JobError {
    JobError::transient(format!("cannot {what} {raw}: {e}"))
}

/// Whether the file `name` in `dir` holds exactly `content`.
fn same_content(dir: BorrowedFd<'_>, name: &std::ffi::OsStr, content: &[u8]) -> bool {
    let Ok(fd) = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return false;
    };
    let mut file = std::fs::File::from(fd);
    let mut existing = Vec::new();
    file.read_to_end(&mut existing).is_ok() && existing == content
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
    ctx: &Context<'_>,
    target: &Located,
    content: &[u8],
    overwrite: bool,
) -> Result<u64, JobError> {
    let dir = target.parent()?;
    let name = target.name()?;
    let exists = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW).is_ok();
    if exists && !overwrite {
        if same_content(dir.as_fd(), name, content) {
            return Ok(content.len() as u64);
        }
        return Err(JobError::permanent(format!(
            "{} already exists (set overwrite to replace it)",
            target.raw
        )));
    }
    let tmp = temporary_name(ctx, name);
    replace_atomically(dir.as_fd(), name, &tmp, content, overwrite).map_err(|e| match e {
        ReplaceError::Write(e) => io("write", &target.raw, e),
        ReplaceError::At(what, errno) => target.error(what, errno),
    })?;
    Ok(content.len() as u64)
}

impl Kind for FileKind {
    fn name(&self) -> &'static str {
        "file"
    }

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
                let bytes = write_atomic(ctx, &target, &content(&args)?, args.overwrite)?;
                serde_json::json!({ "bytes": bytes })
            }
            Op::Append => {
                let target = self.locate("path", args.path.as_deref())?;
                let data = content(&args)?;
                let fd = target.open(OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE)?;
                let mut file = std::fs::File::from(fd);
                file.write_all(&data)
                    .and_then(|()| file.sync_all())
                    .map_err(|e| io("append to", &target.raw, e))?;
                serde_json::json!({ "bytes": data.len() })
            }
            Op::Copy => {
                let from = self.locate("from", args.from.as_deref())?;
                let to = self.locate("to", args.to.as_deref())?;
                let mut source = std::fs::File::from(from.open(OFlags::RDONLY)?);
                let mut data = Vec::new();
                source
                    .read_to_end(&mut data)
                    .map_err(|e| io("read", &from.raw, e))?;
                ctx.check()?;
                let bytes = write_atomic(ctx, &to, &data, args.overwrite)?;
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
                let dir = target.parent()?;
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
