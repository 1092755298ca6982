//! Per-worker counters. The owning thread counts in plain integers and publishes them once per
//! loop iteration with relaxed stores; readers sum the workers on demand. Nothing shared is
//! touched per relayed byte.

use crate::core::status::Reject;
use crate::core::tunnel::CloseReason;
use crate::driver::relay::RelayStats;
use crate::sys::pipe::PoolStats;
use crate::sys::shm::Cells;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

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
    /// Accept-to-101 time: counts per bucket of [`HANDSHAKE_BUCKETS`] (not cumulative; the last
    /// is +Inf).
    pub handshake_buckets: [u64; 14],
    /// Sum of accept-to-101 times, microseconds.
    pub handshake_sum_us: u64,
}

/// Upper bounds of the handshake latency buckets, seconds (Prometheus `le`).
pub const HANDSHAKE_BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

impl Counters {
    /// Records one accept-to-101 time.
    pub fn observe_handshake(&mut self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        let i = HANDSHAKE_BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(HANDSHAKE_BUCKETS.len());
        self.handshake_buckets[i] += 1;
        self.handshake_sum_us += d.as_micros() as u64;
    }
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
const FIELDS: usize = 7 + 11 + 6 + 6 + 4 + 15;

/// Words one [`Published`] block takes (to lay blocks out in shared memory).
pub const PUBLISHED_WORDS: usize = FIELDS;

/// A worker's counters as other threads (or, in shared memory, other processes) can read them.
#[derive(Debug)]
pub struct Published {
    v: Cells,
}

impl Default for Published {
    fn default() -> Self {
        Published {
            v: Cells::heap(FIELDS),
        }
    }
}

impl Published {
    /// A block in memory shared with other processes; `None` unless it has
    /// [`PUBLISHED_WORDS`] words.
    pub fn in_cells(v: Cells) -> Option<Published> {
        (v.len() == FIELDS).then_some(Published { v })
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
    out[34..48].copy_from_slice(&c.handshake_buckets);
    out[48] = c.handshake_sum_us;
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
    c.handshake_buckets.copy_from_slice(&v[34..48]);
    c.handshake_sum_us = v[48];
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
        for (out, slot) in v.iter_mut().zip(self.v.iter()) {
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
    let mut cumulative = 0;
    for (le, n) in HANDSHAKE_BUCKETS.iter().zip(c.handshake_buckets) {
        cumulative += n;
        line(
            &format!("handshake_seconds_bucket{{le=\"{le}\"}}"),
            cumulative,
        );
    }
    cumulative += c.handshake_buckets[13];
    line("handshake_seconds_bucket{le=\"+Inf\"}", cumulative);
    line("handshake_seconds_count", cumulative);
    let _ = writeln!(
        s,
        "wsplice_handshake_seconds_sum {:.6}",
        c.handshake_sum_us as f64 / 1e6
    );
    s
}

/// Per-backend counts, published by each worker every few hundred milliseconds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BackendCounts {
    /// Tunnels open to this backend now.
    pub active: u64,
    /// Tunnels ever opened to it.
    pub tunnels: u64,
    /// Connect attempts or handshakes that failed (refused, reset, timeout, bad answer).
    pub failures: u64,
}

/// One worker's per-backend counts as the admin listener reads them.
pub type BackendSnapshot =
    std::sync::Arc<std::sync::Mutex<Vec<(std::net::SocketAddr, BackendCounts)>>>;

/// Renders per-backend lines, summing workers' maps.
pub fn render_backends(all: &[Vec<(std::net::SocketAddr, BackendCounts)>]) -> String {
    let mut sum: Vec<(std::net::SocketAddr, BackendCounts)> = Vec::new();
    for w in all {
        for &(addr, c) in w {
            match sum.iter_mut().find(|(a, _)| *a == addr) {
                Some((_, t)) => {
                    t.active += c.active;
                    t.tunnels += c.tunnels;
                    t.failures += c.failures;
                }
                None => sum.push((addr, c)),
            }
        }
    }
    sum.sort_by_key(|(a, _)| *a);
    let mut s = String::new();
    for (a, c) in sum {
        let _ = writeln!(s, "wsplice_backend_active{{backend=\"{a}\"}} {}", c.active);
        let _ = writeln!(
            s,
            "wsplice_backend_tunnels_total{{backend=\"{a}\"}} {}",
            c.tunnels
        );
        let _ = writeln!(
            s,
            "wsplice_backend_failures_total{{backend=\"{a}\"}} {}",
            c.failures
        );
    }
    s
}
