//! Per-worker counters. The owning thread counts in plain integers and publishes them once per
//! loop iteration with relaxed stores; readers sum the workers on demand. Nothing shared is
//! touched per relayed byte.

use crate::core::status::Reject;
use crate::core::tunnel::CloseReason;
use crate::driver::relay::RelayStats;
use crate::sys::pipe::PoolStats;
use std::sync::atomic::{AtomicU64, Ordering};

/// One worker's counters, owned by its thread.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    pub connections: u64,
    pub accepted: u64,
    pub accept_emfile: u64,
    pub connect_emfile: u64,
    pub rejected_full: u64,
    pub tunnels: u64,
    pub forwarded: u64,
    /// Rejects by status: 400, 404, 405, 408, 414, 426, 429, 431, 502, 503, 504.
    pub rejects: [u64; 11],
    /// Tunnel closes by reason: done, idle, half-close, client reset, backend reset, drain.
    pub closes: [u64; 6],
    pub relay: RelayStats,
    pub pipes: PoolStats,
}

const STATUSES: [u16; 11] = [400, 404, 405, 408, 414, 426, 429, 431, 502, 503, 504];

impl Counters {
    pub fn count_reject(&mut self, r: Reject) {
        if let Some(i) = STATUSES.iter().position(|&s| s == r.status()) {
            self.rejects[i] += 1;
        }
    }

    pub fn count_close(&mut self, r: CloseReason) {
        let i = match r {
            CloseReason::Done => 0,
            CloseReason::IdleTimeout => 1,
            CloseReason::HalfCloseTimeout => 2,
            CloseReason::ClientReset => 3,
            CloseReason::BackendReset => 4,
            CloseReason::Drain => 5,
        };
        self.closes[i] += 1;
    }
}

/// Field order of the published array.
const FIELDS: usize = 7 + 11 + 6 + 6 + 4;

/// A worker's counters as other threads can read them.
#[derive(Debug)]
pub struct Published {
    v: [AtomicU64; FIELDS],
}

impl Default for Published {
    fn default() -> Self {
        Published {
            v: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

fn flatten(c: &Counters) -> [u64; FIELDS] {
    let mut out = [0u64; FIELDS];
    let head = [
        c.connections,
        c.accepted,
        c.accept_emfile,
        c.connect_emfile,
        c.rejected_full,
        c.tunnels,
        c.forwarded,
    ];
    out[..7].copy_from_slice(&head);
    out[7..18].copy_from_slice(&c.rejects);
    out[18..24].copy_from_slice(&c.closes);
    out[24..30].copy_from_slice(&[
        c.relay.bytes_up,
        c.relay.bytes_down,
        c.relay.bytes_spliced,
        c.relay.bytes_copied,
        c.relay.overflow_in_use,
        c.relay.copy_fallbacks,
    ]);
    out[30..34].copy_from_slice(&[
        c.pipes.in_use as u64,
        c.pipes.pooled as u64,
        c.pipes.created,
        c.pipes.unavailable,
    ]);
    out
}

fn unflatten(v: &[u64; FIELDS]) -> Counters {
    let mut c = Counters {
        connections: v[0],
        accepted: v[1],
        accept_emfile: v[2],
        connect_emfile: v[3],
        rejected_full: v[4],
        tunnels: v[5],
        forwarded: v[6],
        ..Counters::default()
    };
    c.rejects.copy_from_slice(&v[7..18]);
    c.closes.copy_from_slice(&v[18..24]);
    c.relay = RelayStats {
        bytes_up: v[24],
        bytes_down: v[25],
        bytes_spliced: v[26],
        bytes_copied: v[27],
        overflow_in_use: v[28],
        copy_fallbacks: v[29],
    };
    c.pipes = PoolStats {
        in_use: v[30] as usize,
        pooled: v[31] as usize,
        created: v[32],
        unavailable: v[33],
    };
    c
}

impl Published {
    pub fn store(&self, c: &Counters) {
        for (slot, val) in self.v.iter().zip(flatten(c)) {
            slot.store(val, Ordering::Relaxed);
        }
    }

    pub fn load(&self) -> Counters {
        let mut v = [0u64; FIELDS];
        for (out, slot) in v.iter_mut().zip(&self.v) {
            *out = slot.load(Ordering::Relaxed);
        }
        unflatten(&v)
    }
}

/// Sums workers' counters.
pub fn sum(all: impl IntoIterator<Item = Counters>) -> Counters {
    let mut t = [0u64; FIELDS];
    for c in all {
        for (a, b) in t.iter_mut().zip(flatten(&c)) {
            *a += b;
        }
    }
    unflatten(&t)
}

/// Prometheus-style `name value` lines, for the `--stats` dump and tests.
pub fn render(c: &Counters) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let mut line = |k: &str, v: u64| {
        let _ = writeln!(s, "wsplice_{k} {v}");
    };
    line("connections_active", c.connections);
    line("connections_accepted_total", c.accepted);
    line("accept_emfile_total", c.accept_emfile);
    line("connect_emfile_total", c.connect_emfile);
    line("rejected_full_total", c.rejected_full);
    line("tunnels_total", c.tunnels);
    line("answers_forwarded_total", c.forwarded);
    for (st, n) in STATUSES.iter().zip(c.rejects) {
        line(&format!("handshake_rejects_total{{status=\"{st}\"}}"), n);
    }
    for (r, n) in [
        "done",
        "idle_timeout",
        "half_close_timeout",
        "client_reset",
        "backend_reset",
    ]
    .iter()
    .zip(c.closes)
    {
        line(&format!("tunnels_closed_total{{reason=\"{r}\"}}"), n);
    }
    line(
        "bytes_total{direction=\"client_to_backend\"}",
        c.relay.bytes_up,
    );
    line(
        "bytes_total{direction=\"backend_to_client\"}",
        c.relay.bytes_down,
    );
    line("bytes_spliced_total", c.relay.bytes_spliced);
    line("bytes_copied_total", c.relay.bytes_copied);
    line("overflow_buffers_in_use", c.relay.overflow_in_use);
    line("copy_fallbacks_total", c.relay.copy_fallbacks);
    line("pipes_in_use", c.pipes.in_use as u64);
    line("pipes_pooled", c.pipes.pooled as u64);
    line("pipes_created_total", c.pipes.created);
    line("pipes_unavailable_total", c.pipes.unavailable);
    s
}
