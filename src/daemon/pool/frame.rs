//! The pipe protocol between the daemon and a CPU worker process: frames of
//! a 4-byte big-endian length and that many bytes of JSON, one message each.
//!
//! The daemon writes [`ToWorker`] on the worker's stdin; the worker answers
//! with [`FromWorker`] on its stdout. JSON keeps the frames readable in an
//! `strace` and lets the job's payload and result pass through as the text
//! they already are.

use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::{ExecConfig, FileConfig};
use crate::kinds::JobError;

/// The largest frame either side accepts. Far above any payload
/// (`limits.max_payload_bytes`) or result a job sends, and low enough that a
/// corrupt length cannot make the reader allocate gigabytes.
pub const MAX_FRAME: usize = 64 << 20;

/// What a worker needs to know once, before its first job.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Setup {
    /// `[file]`: the roots that confine `checksum` and `compress`.
    pub file: FileConfig,
    /// `[exec]`: the handlers folder.
    pub exec: ExecConfig,
    /// `cpu.memory_limit`, applied to the worker as `RLIMIT_AS` (0: none).
    pub memory_limit: u64,
    /// The niceness the worker (and its handlers) run at.
    pub nice: i32,
}

/// One attempt for a worker to run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Order {
    /// The job's id.
    pub id: i64,
    /// The attempt number.
    pub attempt: i64,
    /// The job's queue.
    pub queue: String,
    /// The job's kind.
    pub kind: String,
    /// The job's payload, as stored.
    pub payload: String,
    /// The attempt's time limit in milliseconds.
    pub timeout_ms: u64,
    /// What the job's flow hands it ([`crate::job::Claimed::inputs`]).
    pub inputs: Option<String>,
}

/// Daemon → worker.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ToWorker {
    /// The first frame a worker reads.
    Setup(Setup),
    /// Run this attempt and answer with [`FromWorker::Done`].
    Run(Order),
}

/// Worker → daemon.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum FromWorker {
    /// Set up and waiting for work.
    Ready,
    /// The attempt started a process group (an `exec` handler), which a
    /// kill must reach too.
    Spawned {
        /// The group's id (the handler's pid).
        pgid: i32,
    },
    /// A message from the attempt's handler (progress, a log line).
    Report(crate::kinds::Report),
    /// The warm handler processes the worker keeps now, sent before each
    /// answer (`jobd handlers`).
    Warm(Vec<crate::job::HandlerProcess>),
    /// The attempt's answer.
    Done(Result<Option<String>, JobError>),
}

/// Writes one frame and flushes it.
pub fn write<T: Serialize>(out: &mut impl Write, message: &T) -> io::Result<()> {
    let frame = encode(message)?;
    send(out, &frame)
}

/// One frame, ready to send: Err if the message is over [`MAX_FRAME`]
/// (which the other side would refuse), before anything is sent.
pub fn encode<T: Serialize>(message: &T) -> io::Result<Vec<u8>> {
    let body = serde_json::to_vec(message).map_err(io::Error::other)?;
    if body.len() > MAX_FRAME {
        return Err(io::Error::other(format!(
            "a frame of {} bytes is over the {MAX_FRAME}-byte limit",
            body.len()
        )));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// Sends a frame made by [`encode`] and flushes it.
pub fn send(out: &mut impl Write, frame: &[u8]) -> io::Result<()> {
    out.write_all(frame)?;
    out.flush()
}

/// Reads one frame; `Ok(None)` at a clean end of the stream (the other side
/// closed it between frames).
pub fn read<T: DeserializeOwned>(input: &mut impl Read) -> io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match input.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame announced {len} bytes, over the {MAX_FRAME}-byte limit"),
        ));
    }
    let mut body = vec![0u8; len];
    input.read_exact(&mut body)?;
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_a_closed_stream_reads_as_none() {
        let mut buf = Vec::new();
        write(&mut buf, &FromWorker::Spawned { pgid: 42 }).unwrap();
        write(
            &mut buf,
            &FromWorker::Done(Err(JobError::transient("exit 75"))),
        )
        .unwrap();
        let mut input = &buf[..];
        assert!(matches!(
            read::<FromWorker>(&mut input).unwrap(),
            Some(FromWorker::Spawned { pgid: 42 })
        ));
        match read::<FromWorker>(&mut input).unwrap() {
            Some(FromWorker::Done(Err(e))) => assert_eq!(e, JobError::transient("exit 75")),
            other => panic!("{other:?}"),
        }
        assert!(read::<FromWorker>(&mut input).unwrap().is_none());
    }

    #[test]
    fn a_cut_or_oversized_frame_is_an_error() {
        let mut buf = Vec::new();
        write(&mut buf, &FromWorker::Ready).unwrap();
        let cut = &buf[..buf.len() - 1];
        assert!(read::<FromWorker>(&mut &cut[..]).is_err());
        let huge = (MAX_FRAME as u32 + 1).to_be_bytes();
        assert!(read::<FromWorker>(&mut &huge[..]).is_err());
    }
}
