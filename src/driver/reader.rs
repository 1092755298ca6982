//! What the admin listener reads of the workers: their published counters, from any thread
//! (or, with worker processes, from shared memory).

use super::{health, stats, supervisor};
use crate::config::WorkerModel;
use std::sync::{Arc, Mutex};

/// One worker as the admin listener reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerInfo {
    pub id: usize,
    /// The process it runs in (with threads, the proxy's own).
    pub pid: u32,
    /// Connections it holds now (handshakes included).
    pub connections: u64,
    /// Times its process was replaced after dying.
    pub restarts: u64,
}

/// A copy of each worker thread's published list (empty where a worker panicked holding it).
fn copies<T: Clone>(lists: &[Arc<Mutex<Vec<T>>>]) -> Vec<Vec<T>> {
    lists
        .iter()
        .map(|l| l.lock().map(|v| v.clone()).unwrap_or_default())
        .collect()
}

/// Reads the workers' published counters from any thread (or, with worker processes, from
/// shared memory).
#[derive(Clone)]
pub struct StatsReader(
    pub(super) Source,
    pub(super) Option<health::Health>,
    pub(super) stats::BackendTotals,
);

#[derive(Clone)]
pub(super) enum Source {
    Threads {
        published: Vec<Arc<stats::Published>>,
        backends: Vec<stats::BackendSnapshot>,
        routes: Vec<stats::RouteSnapshot>,
    },
    Processes(Arc<supervisor::Board>),
}

impl StatsReader {
    /// Backend health and drain, when the proxy checks (the admin listener's `/backends`).
    pub fn health(&self) -> Option<&health::Health> {
        self.1.as_ref()
    }

    pub fn read(&self) -> stats::Counters {
        match &self.0 {
            Source::Threads { published, .. } => stats::sum(published.iter().map(|p| p.load())),
            Source::Processes(board) => board.read(),
        }
    }

    /// Per-backend lines in Prometheus text format (published by each worker when they change).
    pub fn backends(&self) -> String {
        stats::render_backends(&self.backend_rows(), &self.2)
    }

    /// Each worker's per-backend counts, by route and backend (with worker processes, the
    /// last list holds what replaced workers had counted).
    pub fn backend_rows(&self) -> Vec<Vec<(stats::BackendKey, stats::BackendCounts)>> {
        match &self.0 {
            Source::Threads { backends, .. } => copies(backends),
            Source::Processes(board) => board.backends(),
        }
    }

    /// Each worker's forwarded-request counts per route label (with worker processes, the
    /// last list holds what replaced workers had counted).
    pub fn route_rows(&self) -> Vec<Vec<(String, [u64; 6])>> {
        match &self.0 {
            Source::Threads { routes, .. } => copies(routes),
            Source::Processes(board) => board.routes(),
        }
    }

    /// `threads` or `processes`.
    pub fn model(&self) -> WorkerModel {
        match &self.0 {
            Source::Threads { .. } => WorkerModel::Threads,
            Source::Processes(_) => WorkerModel::Processes,
        }
    }

    /// Every worker, in id order.
    pub fn workers(&self) -> Vec<WorkerInfo> {
        match &self.0 {
            Source::Threads { published, .. } => published
                .iter()
                .enumerate()
                .map(|(id, p)| WorkerInfo {
                    id,
                    pid: std::process::id(),
                    connections: p.load().connections,
                    restarts: 0,
                })
                .collect(),
            Source::Processes(board) => board.workers(),
        }
    }

    /// Per-route request lines in Prometheus text format.
    pub fn routes(&self) -> String {
        stats::render_routes(&self.route_rows())
    }
}
