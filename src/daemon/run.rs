//! `jobd run`: opens the database, registers this daemon, rescues the jobs
//! of same-host daemons that died, starts the pickup watcher, the
//! maintenance thread and the dispatcher (with its thread pool), and on a
//! stop request drains, deregisters and says goodbye in the log.
//!
//! Everything the daemon needs from the outside comes in as values — the
//! configuration, a way to reload it, the kinds, the channel that carries
//! stop and reload requests — so a test can run a daemon in-process and stop
//! it without signals.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Receiver;

use crate::config::Config;
use crate::daemon::dispatcher::{Dispatcher, DispatcherSetup, Reload, Summary};
use crate::daemon::maintenance::{self, Maintenance};
use crate::daemon::state::DaemonState;
use crate::error::{Error, Result};
use crate::event;
use crate::job::now_ms;
use crate::kinds::Registry;
use crate::metrics::Metrics;
use crate::os::notify::{status_line, Notifier};
use crate::os::procfs;
use crate::os::signals::Request;
use crate::store::sqlite::guard::FileGuard;
use crate::store::{OpenMode, RescueScope, Store, WorkerInfo};

/// What the daemon takes from the process it runs in.
pub struct FromProcess {
    /// Stop and reload requests (signals in `jobd run`; a test sends its own).
    pub requests: Receiver<Request>,
    /// How to re-read the configuration on a reload request.
    pub reload: Reload,
    /// The `jobd` binary the CPU workers are started from.
    pub worker_program: PathBuf,
    /// systemd notifications (or none).
    pub notifier: Notifier,
}

/// Runs the daemon until a stop request is honoured, on the backend the
/// configuration names: SQLite (`database.path`, commits seen by watching
/// the `-wal` file) or PostgreSQL (`database.url`, commits heard by
/// `LISTEN`).
pub fn run(config: Config, registry: Registry, process: FromProcess) -> Result<Summary> {
    let store = crate::store::open(&config.database, OpenMode::Create)?;
    run_on(config, registry, process, store)
}

/// The daemon on `store`, the dispatcher's connection; maintenance opens
/// its own once the schema is current.
// Long: the start-up and shutdown sequence in the order it must happen (each step needs the one before), read top to bottom.
fn run_on(
    config: Config,
    registry: Registry,
    process: FromProcess,
    mut store: Box<dyn Store + Send>,
) -> Result<Summary> {
    let FromProcess {
        requests,
        reload,
        worker_program,
        notifier,
    } = process;
    let began = Instant::now();
    let database = store.name();
    let (before, after) = store.migrate()?;
    if before != after {
        event!(
            Info,
            "db.migrated",
            from = before,
            to = after,
            database = database.as_str()
        );
    }

    crate::daemon::dispatcher::ensure_key_index(store.as_mut(), &config)?;
    registry.identify(&store.database_id()?);
    raise_open_file_limit();
    // The metrics listener first: a taken port stops start-up before this
    // daemon registers or takes back anyone's jobs.
    let mut listener = None;
    let metrics = match config.metrics.listen {
        Some(_) => Some(Arc::new(Metrics::new(registry.names())?)),
        None => None,
    };
    let state = Arc::new(DaemonState {
        notifier,
        ..DaemonState::default()
    });
    // Healthy from the start; the dispatcher keeps it so once it runs.
    state
        .last_turn
        .store(now_ms().max(0) as u64, std::sync::atomic::Ordering::Relaxed);
    if let (Some(addr), Some(metrics)) = (config.metrics.listen, metrics.clone()) {
        listener = Some(crate::web::serve(
            addr,
            config.clone(),
            metrics,
            Arc::clone(&state),
        )?);
    }

    let host = procfs::host_name();
    let pid = i64::from(std::process::id());
    let started_at = now_ms();
    let worker: Arc<str> = Arc::from(format!("{host}:{pid}:{started_at}"));
    let queues = config.daemon.queues.join(",");
    let registration = WorkerInfo {
        id: worker.to_string(),
        host: host.clone(),
        pid,
        version: env!("CARGO_PKG_VERSION").to_string(),
        started_at,
        heartbeat_at: started_at,
        queues: queues.clone(),
        running: 0,
        handlers: Vec::new(),
    };
    store.register_worker(&registration)?;
    // After the first write, so that the log and its index exist.
    let guard = match store.file() {
        Some(file) => Some(FileGuard::open(file, config.database.busy_timeout)?),
        None => None,
    };
    let max_attempts = config.retry.max_attempts;
    let rescued =
        maintenance::rescue_dead_neighbours(store.as_mut(), &host, &worker, max_attempts)?;
    maintenance::log_rescued(&rescued);
    let expired = store.rescue(RescueScope::ExpiredLeases, now_ms(), max_attempts)?;
    maintenance::log_rescued(&expired);

    let wake = store.watch_commits(config.daemon.named_queues());
    let (stop_maintenance, maintenance_stop) = crossbeam_channel::bounded::<()>(1);
    let maintenance = Maintenance {
        store: crate::store::open(&config.database, OpenMode::Existing)?,
        config: config.clone(),
        worker: Arc::clone(&worker),
        registration,
        streaks: Default::default(),
        state: Arc::clone(&state),
        stop: maintenance_stop,
    };
    let (stop_guard, guard_stop) = crossbeam_channel::bounded::<()>(1);
    let guard = match guard {
        Some(guard) => Some(
            std::thread::Builder::new()
                .name("jobd-file-guard".into())
                .spawn(move || maintenance::guard_file(guard, guard_stop))
                .map_err(|source| Error::Io {
                    what: "cannot start the database file's watch".into(),
                    source,
                })?,
        ),
        None => None,
    };
    let maintenance = std::thread::Builder::new()
        .name("jobd-maintenance".into())
        .spawn(move || maintenance.run())
        .map_err(|source| Error::Io {
            what: "cannot start the maintenance thread".into(),
            source,
        })?;

    let threads = config.pool.threads;
    let pids = Arc::clone(&state.cpu_pids);
    let ours = Arc::clone(&state);
    let now = now_ms();
    let backlog = crate::store::active_backlog(store.as_mut(), config.daemon.named_queues(), now)
        .unwrap_or_default();
    store.serve_dispatcher()?;
    let mut dispatcher = Dispatcher::new(DispatcherSetup {
        store,
        config,
        worker: Arc::clone(&worker),
        registry,
        requests,
        wake,
        reload,
        state,
        metrics: metrics.clone(),
        worker_program,
    })
    .map_err(|source| Error::Io {
        what: "cannot start the pools".into(),
        source,
    })?;
    event!(
        Info,
        "daemon.started",
        version = env!("CARGO_PKG_VERSION"),
        database = database.as_str(),
        worker = &*worker,
        threads = threads,
        cpu_workers = pids.list().len(),
        queues = queues.as_str(),
        rescued = rescued.len() + expired.len()
    );
    // The database is open and both pools run.
    ours.notifier
        .ready(&status_line(0, backlog.ready, backlog.lag_ms(now)));
    let summary = dispatcher.run();

    // Before any connection closes: the last close deletes the log.
    drop(stop_guard);
    if let Some(guard) = guard {
        let _ = guard.join();
    }

    drop(stop_maintenance);
    let _ = maintenance.join();
    if let Some(listener) = listener {
        listener.stop();
    }
    let mut store = dispatcher.into_store();
    if let Err(e) = store.deregister_worker(&worker) {
        crate::store::log_trouble(
            "deregister",
            &e,
            "the row is forgotten once its heartbeat is old",
        );
    }
    event!(
        Info,
        "daemon.stopped",
        requeued = summary.requeued,
        unwritten = summary.unwritten,
        claimed = summary.claimed,
        writes = summary.writes,
        uptime_s = began.elapsed().as_secs()
    );
    crate::logging::flush();
    Ok(summary)
}

/// Raises the soft limit on open files to the hard one, as systemd expects
/// of a service (its default soft limit, 1024, is kept low only for old
/// programs using `select`): connections, pools and workers all take
/// descriptors. Logged; a failure leaves the limit as it was.
fn raise_open_file_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_some() && limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => event!(
                Debug,
                "daemon.open_files",
                from = limit.current.unwrap_or(0),
                to = limit
                    .maximum
                    .map_or("unlimited".to_string(), |m| m.to_string())
                    .as_str()
            ),
            Err(e) => event!(Warn, "daemon.open_files", error:% = e),
        }
    }
}
