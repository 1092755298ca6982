//! How many connections the open-file limit allows, and which worker model (threads or
//! processes) a configuration gets.

use super::*;

/// Descriptors kept aside for listeners, stdio, epoll and the odd log file.
const FD_RESERVE: u64 = 64;

/// What the open-file limit allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Concurrent proxied connections (client + backend socket each) for the whole process.
    pub max_connections: usize,
    /// Pooled splice pipes for the whole process (two fds each).
    pub max_pipes: usize,
}

/// Splits the open-file limit `nofile` between connections and pipes, honouring explicit config.
///
/// A proxied connection costs 2 fds, a lent pipe 2 more. Pipes are held only while bytes are in
/// flight, so by default one pipe is budgeted per 16 connections (the copy path serves when the
/// pool is exhausted): with 20,000 fds that is 9,381 connections and 586 pipes.
pub fn capacity(cfg: &Config, nofile: u64) -> Capacity {
    let workers = cfg.workers.unwrap_or(1).max(1) as u64;
    let budget = nofile.saturating_sub(FD_RESERVE + cfg.all_listen().count() as u64 * workers);
    let max_connections = match cfg.limits.max_connections {
        Some(n) => n,
        None => ((budget * 16) / 34).max(1) as usize,
    };
    let max_pipes = match cfg.relay.max_pipes {
        Some(n) => n,
        None => {
            let left = budget.saturating_sub(2 * max_connections as u64) / 2;
            left.min(max_connections as u64 / 4).max(workers.min(left)) as usize
        }
    };
    Capacity {
        max_connections,
        max_pipes,
    }
}

/// The open-file budget of one process running `workers` workers, with no explicit
/// `max_connections`: what the descriptors alone allow.
fn fd_capacity(cfg: &Config, workers: usize, nofile: u64) -> Capacity {
    let mut c = cfg.clone();
    c.workers = Some(workers);
    c.limits.max_connections = None;
    capacity(&c, nofile)
}

/// What each worker process and all of them together can hold (processes model): every process
/// has its own open-file limit `nofile` and one socket per listen address.
///
/// `max_connections` (if set) stays a limit for the whole proxy; `splice.max_pipes` (if set) is
/// split across the workers, as with threads.
pub fn process_capacity(cfg: &Config, nofile: u64) -> (Capacity, Capacity) {
    let workers = cfg.workers.unwrap_or(1).max(1);
    let fds = fd_capacity(cfg, 1, nofile);
    let mut one = cfg.clone();
    one.workers = Some(1);
    one.limits.max_connections = Some(
        cfg.limits
            .max_connections
            .map_or(fds.max_connections, |n| n.min(fds.max_connections)),
    );
    one.relay.max_pipes = cfg.relay.max_pipes.map(|n| n.div_ceil(workers));
    let per_worker = capacity(&one, nofile);
    let total = Capacity {
        max_connections: cfg
            .limits
            .max_connections
            .unwrap_or(per_worker.max_connections * workers),
        max_pipes: per_worker.max_pipes * workers,
    };
    (per_worker, total)
}

/// Which worker model runs, and the sentence start-up prints about why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelChoice {
    /// [`WorkerModel::Threads`] or [`WorkerModel::Processes`], never `Auto`.
    pub model: WorkerModel,
    pub reason: String,
}

/// Resolves `worker_model = "auto"` from the numbers: worker processes whenever they hold more
/// tunnels than threads in one process would, i.e. when more than one worker runs and the
/// open-file limit (not `max_connections`) is what caps one process. An explicit choice stands.
pub fn choose_model(cfg: &Config, nofile: u64) -> ModelChoice {
    let workers = cfg.workers.unwrap_or(1).max(1);
    let choice = |model, reason: String| ModelChoice { model, reason };
    match cfg.worker_model {
        WorkerModel::Threads | WorkerModel::Processes => {
            return choice(
                cfg.worker_model,
                format!("worker_model = \"{}\"", cfg.worker_model.as_str()),
            )
        }
        WorkerModel::Auto => {}
    }
    if workers == 1 {
        return choice(
            WorkerModel::Threads,
            "worker_model = \"auto\": one worker gains no descriptors from a process of its own"
                .into(),
        );
    }
    let one = fd_capacity(cfg, workers, nofile).max_connections;
    if let Some(max) = cfg.limits.max_connections {
        if max <= one {
            return choice(
                WorkerModel::Threads,
                format!(
                    "worker_model = \"auto\": max_connections = {max} fits one process's open-file limit of {nofile} ({one} tunnels)"
                ),
            );
        }
    }
    let (per, total) = process_capacity(cfg, nofile);
    choice(
        WorkerModel::Processes,
        format!(
            "worker_model = \"auto\": an open-file limit of {nofile} per process holds {one} tunnels in one process, {} in {workers} processes of {} each",
            total.max_connections, per.max_connections
        ),
    )
}
