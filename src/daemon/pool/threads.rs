//! The IO thread pool: exactly `pool.threads` OS threads taking [`Task`]s
//! from one crossbeam channel and sending [`Finished`] attempts back.
//!
//! The dispatcher hands out no more tasks than its slots (a thread each,
//! plus what short jobs finish within the prefetch wait), so the channel's
//! backlog stays a few milliseconds of work. Resizing
//! spawns threads or sends retire messages that an idle thread takes; a
//! running job is never interrupted. A thread whose job overran its deadline
//! is given up on by the dispatcher, which asks for a replacement here so the
//! pool keeps its size; the stuck thread exits when its job finally returns.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use crate::daemon::executor::{self, Task};
use crate::job::Completion;

/// An attempt that ended on a pool thread.
#[derive(Debug)]
pub struct Finished {
    /// What to write.
    pub completion: Completion,
    /// The job's queue, for per-queue accounting.
    pub queue: String,
    /// The job's kind, for the log line.
    pub kind: String,
    /// How long the attempt ran on its thread (zero when it never ran).
    pub elapsed: std::time::Duration,
}

/// The stack of each pool thread. Set deliberately small so that a pool of
/// a thousand threads for slow HTTP calls costs megabytes, not gigabytes of
/// reserved address space; kinds keep deep work (parsing, TLS) well within
/// it, and serde_json's recursion limit bounds payload nesting.
pub const THREAD_STACK: usize = 256 * 1024;

enum Message {
    Run(Box<Task>),
    Retire,
}

/// A fixed-size, resizable pool of threads.
pub struct ThreadPool {
    tasks: Sender<Message>,
    queue: Receiver<Message>,
    done: Sender<Finished>,
    /// The threads the pool should have (running jobs or idle).
    size: usize,
    /// Threads alive now, including ones stuck in an abandoned job.
    alive: Arc<AtomicUsize>,
    spawned: usize,
}

impl ThreadPool {
    /// Starts `size` threads that report to `done`.
    pub fn new(size: usize, done: Sender<Finished>) -> std::io::Result<ThreadPool> {
        let (tasks, queue) = crossbeam_channel::unbounded();
        let mut pool = ThreadPool {
            tasks,
            queue,
            done,
            size: 0,
            alive: Arc::new(AtomicUsize::new(0)),
            spawned: 0,
        };
        pool.resize(size)?;
        Ok(pool)
    }

    /// The configured number of threads.
    pub fn size(&self) -> usize {
        self.size
    }

    /// OS threads alive now (more than `size` while abandoned jobs linger).
    pub fn alive(&self) -> usize {
        self.alive.load(Ordering::Relaxed)
    }

    /// Hands a task to an idle thread.
    pub fn submit(&self, task: Task) {
        // The pool owns the receiver too, so the channel cannot be closed.
        let _ = self.tasks.send(Message::Run(Box::new(task)));
    }

    /// Grows or shrinks the pool. Shrinking retires idle threads as they
    /// become idle; no running job is disturbed.
    pub fn resize(&mut self, size: usize) -> std::io::Result<()> {
        while self.size < size {
            self.spawn()?;
            self.size += 1;
        }
        while self.size > size {
            let _ = self.tasks.send(Message::Retire);
            self.size -= 1;
        }
        Ok(())
    }

    /// Starts a thread in place of one stuck in an abandoned job.
    pub fn replace_stuck(&mut self) -> std::io::Result<()> {
        self.spawn()
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let queue = self.queue.clone();
        let done = self.done.clone();
        let alive = Arc::clone(&self.alive);
        self.spawned += 1;
        alive.fetch_add(1, Ordering::Relaxed);
        let spawned = std::thread::Builder::new()
            .name(format!("jobd-io-{}", self.spawned))
            .stack_size(THREAD_STACK)
            .spawn(move || {
                work(&queue, &done);
                alive.fetch_sub(1, Ordering::Relaxed);
            });
        if spawned.is_err() {
            self.alive.fetch_sub(1, Ordering::Relaxed);
        }
        spawned.map(drop)
    }
}

fn work(queue: &Receiver<Message>, done: &Sender<Finished>) {
    while let Ok(Message::Run(task)) = queue.recv() {
        if task.control.is_abandoned() {
            // Given up before it started (shutdown): the dispatcher already
            // put it back; the thread stays for the next task.
            continue;
        }
        let began = std::time::Instant::now();
        let completion = executor::execute(&task);
        let elapsed = began.elapsed();
        if !task.control.finish() {
            // The dispatcher gave up on this job and started a replacement
            // thread; this one leaves so the pool keeps its size.
            return;
        }
        let finished = Finished {
            completion,
            queue: task.job.queue,
            kind: task.job.kind,
            elapsed,
        };
        if done.send(finished).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn task(id: i64) -> Task {
        let noop = Arc::new(crate::kinds::Noop);
        crate::daemon::executor::test_task(id, noop, r#"{"sleep_ms":20}"#, 1, 3)
    }

    #[test]
    fn shrinking_retires_threads_without_dropping_queued_tasks() {
        let (done_tx, done) = crossbeam_channel::unbounded();
        let mut pool = ThreadPool::new(4, done_tx).unwrap();
        for id in 0..4 {
            pool.submit(task(id));
        }
        pool.resize(1).unwrap();
        for id in 4..6 {
            pool.submit(task(id));
        }
        let mut ids: Vec<i64> = (0..6)
            .map(|_| {
                done.recv_timeout(Duration::from_secs(10))
                    .expect("every task finishes")
                    .completion
                    .id
            })
            .collect();
        ids.sort_unstable();
        assert_eq!(ids, vec![0, 1, 2, 3, 4, 5]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while pool.alive() != 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(pool.alive(), 1);
        assert_eq!(pool.size(), 1);
    }

    #[test]
    fn a_task_abandoned_before_it_started_is_skipped() {
        let (done_tx, done) = crossbeam_channel::unbounded();
        let pool = ThreadPool::new(1, done_tx).unwrap();
        let t = task(1);
        assert!(t.control.abandon());
        pool.submit(t);
        pool.submit(task(2));
        let first = done.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(first.completion.id, 2);
        assert!(done.try_recv().is_err());
    }
}
