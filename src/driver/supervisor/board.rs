//! What the admin listener reads of the worker processes (see [`super`]).

use crate::driver::shared::Shared;
use crate::driver::stats::{self, BackendCounts, BackendKey, Counters, Published};
use crate::driver::WorkerInfo;
use crate::sys::ipc;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long the admin listener waits for a worker to mirror its backend counts.
const MIRROR_WAIT: Duration = Duration::from_millis(200);

/// What the admin listener reads: the workers' shared counters, plus what dead workers had
/// counted (so totals never go backwards when a worker is replaced).
pub struct Board {
    shared: Arc<Shared>,
    published: Vec<Published>,
    retired: Mutex<(Counters, Vec<(BackendKey, BackendCounts)>)>,
    /// What dead workers had counted per route (by route id).
    retired_routes: Mutex<Vec<(u32, [u64; 6])>>,
    workers: Mutex<Vec<BoardWorker>>,
}

#[derive(Default, Clone)]
struct BoardWorker {
    pid: u32,
    restarts: u64,
    ctl: Option<Arc<OwnedFd>>,
}

impl Board {
    pub(super) fn new(shared: Arc<Shared>, workers: usize) -> Board {
        Board {
            published: (0..workers).map(|id| shared.published(id)).collect(),
            shared,
            retired: Mutex::new((Counters::default(), Vec::new())),
            retired_routes: Mutex::new(Vec::new()),
            workers: Mutex::new(vec![BoardWorker::default(); workers]),
        }
    }

    /// Every worker's counters plus the retired ones.
    pub fn read(&self) -> Counters {
        let retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        stats::sum(
            self.published
                .iter()
                .map(Published::load)
                .chain(std::iter::once(retired.0)),
        )
    }

    /// Every worker's per-backend counts, fresh: each live worker is asked to mirror them and
    /// answers within [`MIRROR_WAIT`] (a worker that does not keeps its last mirror).
    pub fn backends(&self) -> Vec<Vec<(BackendKey, BackendCounts)>> {
        let ctls: Vec<Option<Arc<OwnedFd>>> = self
            .workers
            .lock()
            .map(|w| w.iter().map(|b| b.ctl.clone()).collect())
            .unwrap_or_default();
        let mut tickets = Vec::new();
        for (id, ctl) in ctls.iter().enumerate() {
            if let Some(ctl) = ctl {
                let ticket = self.shared.request_backends(id);
                if ipc::send(&**ctl, b"mirror", &[]).is_ok() {
                    tickets.push((id, ticket));
                }
            }
        }
        let deadline = Instant::now() + MIRROR_WAIT;
        while Instant::now() < deadline
            && !tickets
                .iter()
                .all(|&(id, t)| self.shared.backends_answered(id, t))
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        let retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        (0..self.published.len())
            .map(|id| self.shared.backends(id))
            .chain(std::iter::once(retired.1.clone()))
            .collect()
    }

    /// Every worker's forwarded-request counts per route label, from the shared map (each
    /// worker stores them as it counts), and what replaced workers had counted.
    pub fn routes(&self) -> Vec<Vec<(String, [u64; 6])>> {
        let named = |rows: Vec<(u32, [u64; 6])>| {
            rows.into_iter()
                .map(|(id, c)| (crate::driver::status::route_name(id), c))
                .collect::<Vec<_>>()
        };
        let retired = self
            .retired_routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        (0..self.published.len())
            .map(|id| named(self.shared.routes(id)))
            .chain(std::iter::once(named(retired)))
            .collect()
    }

    pub fn workers(&self) -> Vec<WorkerInfo> {
        let w = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        w.iter()
            .enumerate()
            .map(|(id, b)| WorkerInfo {
                id,
                pid: b.pid,
                connections: self.published[id].load().connections,
                restarts: b.restarts,
            })
            .collect()
    }

    pub(super) fn set_worker(&self, id: usize, pid: u32, ctl: Option<Arc<OwnedFd>>) {
        let mut w = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        w[id].pid = pid;
        w[id].ctl = ctl;
    }

    /// Folds dead worker `id`'s counters into the retired totals (gauges dropped: what it held
    /// is gone) and empties its blocks for the replacement.
    pub(super) fn retire(&self, id: usize) {
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        let mut c = self.published[id].load();
        c.connections = 0;
        c.relay.overflow_in_use = 0;
        c.pipes.in_use = 0;
        c.pipes.pooled = 0;
        c.pipes.large = 0;
        retired.0 = stats::sum([retired.0, c]);
        self.published[id].store(&Counters::default());
        for (key, b) in self.shared.backends(id) {
            match retired.1.iter_mut().find(|(k, _)| *k == key) {
                Some((_, t)) => {
                    t.tunnels += b.tunnels;
                    t.failures += b.failures;
                }
                None => retired.1.push((key, BackendCounts { active: 0, ..b })),
            }
        }
        self.shared.clear_backends(id);
        let mut routes = self
            .retired_routes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for (route, c) in self.shared.routes(id) {
            match routes.iter_mut().find(|(r, _)| *r == route) {
                Some((_, t)) => t.iter_mut().zip(c).for_each(|(a, b)| *a += b),
                None => routes.push((route, c)),
            }
        }
        self.shared.clear_routes(id);
        drop(routes);
        let mut w = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        w[id].restarts += 1;
    }
}
