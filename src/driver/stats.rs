//! Per-worker counters, each metric declared once.
//!
//! The `metrics!` list below is the only place a worker metric is named: each entry is a field of
//! [`Counters`] with its Prometheus family (name, type, labels) and its help text (the entry's
//! doc comment). From it come the storage ([`Counters`]), the flat block other threads read
//! ([`Published`]), the summing ([`sum`]), the text of `/metrics` ([`render`]) and the keys of
//! `/status` ([`status_fields`]). A labelled family takes its label values from its enum's own
//! list ([`Reject::STATUSES`], [`CloseReason::ALL`], [`tls::RESULTS`]), so a new reason is
//! exported by being listed there.
//!
//! ```text
//! /// Help text.
//! field = (counter "wsplice_x_total");                    one u64
//! field = (gauge "wsplice_x" json "x");                   also in /status, as "x"
//! field = (counter "wsplice_x_total" by label in LIST);   [u64; LIST.len()], labelled LIST[i]
//! field = (histogram "wsplice_x_seconds" BOUNDS);         a Histogram over BOUNDS (seconds)
//! field: Type = { sub = (...); ... };                     a struct someone else fills
//! ```
//!
//! The owning thread counts in plain integers and publishes them once per loop iteration with
//! relaxed stores; readers sum the workers on demand. Nothing shared is touched per relayed byte.

mod expand;
pub mod json;

use crate::core::relay::{CloseReason, RelayStats};
use crate::core::status::Reject;
use crate::sys::pipe::PoolStats;
use crate::sys::shm::Cells;
use crate::transport::tls::{self, TlsEvent};
use expand::{
    flatten, metric_kind, metric_label, metric_slots, metric_type, metric_visit, metrics,
    unflatten, Label, LabelPair, Slot, Text, Visit,
};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The drivers a worker may run, as `wsplice_workers_by_driver{driver=...}` labels them.
pub const DRIVERS: [&str; 2] = ["epoll", "uring"];

/// Upper bounds of the handshake latency buckets, seconds (Prometheus `le`).
pub const HANDSHAKE_BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

metrics! {
    /// Client connections open now: handshaking, relaying or lingering.
    connections = (gauge "wsplice_connections_active" json "connections");
    /// Client connections accepted.
    accepted = (counter "wsplice_connections_accepted_total" json "accepted_total");
    /// Accepts postponed for want of a file descriptor; the clients wait in the backlog. Raise
    /// the open-file limit (LimitNOFILE) or lower limits.max_connections.
    accept_emfile = (counter "wsplice_accept_emfile_total");
    /// Backend connects that failed for want of a file descriptor (answered 503). Raise the
    /// open-file limit (LimitNOFILE) or lower limits.max_connections.
    connect_emfile = (counter "wsplice_connect_emfile_total");
    /// Clients answered 503 at accept because limits.max_connections were open.
    rejected_full = (counter "wsplice_rejected_full_total");
    /// Clients answered 503 at accept because their worker's share of limits.max_memory was
    /// reserved (established tunnels keep flowing). Raise max_memory, or lower the socket
    /// buffer sysctls (net.ipv4.tcp_rmem/tcp_wmem) to fit more tunnels in it.
    rejected_memory = (counter "wsplice_rejected_memory_total");
    /// Bytes reserved of limits.max_memory by open connections and lent pipes (0 without a
    /// budget).
    memory_reserved = (gauge "wsplice_memory_reserved_bytes" json "memory_reserved_bytes");
    /// Tunnels established (the backend answered 101).
    tunnels = (counter "wsplice_tunnels_total" json "tunnels_total");
    /// Backend answers other than 101 passed on to the client.
    forwarded = (counter "wsplice_answers_forwarded_total");
    /// Handshakes refused, by the HTTP status the client was answered.
    rejects = (counter "wsplice_handshake_rejects_total" by status in Reject::STATUSES);
    /// Tunnels closed, by reason; drain: still open when timeouts.drain ran out at a stop.
    closes = (counter "wsplice_tunnels_closed_total" by reason in CloseReason::ALL);
    /// Time from accept to the 101 sent to the client.
    handshake = (histogram "wsplice_handshake_seconds" HANDSHAKE_BUCKETS);
    /// The relay's counters, copied in once per loop iteration.
    relay: RelayStats = {
        /// Tunnel bytes relayed, by direction.
        bytes_up = (counter "wsplice_bytes_total" {direction = "client_to_backend"});
        /// Tunnel bytes relayed, by direction.
        bytes_down = (counter "wsplice_bytes_total" {direction = "backend_to_client"});
        /// Tunnel bytes moved by splice(2) through a pipe, never copied into the proxy.
        bytes_spliced = (counter "wsplice_bytes_spliced_total" json "bytes_spliced");
        /// Tunnel bytes copied through the worker's buffer.
        bytes_copied = (counter "wsplice_bytes_copied_total" json "bytes_copied");
        /// Tunnel directions holding bytes the destination could not take yet.
        overflow_in_use = (gauge "wsplice_overflow_buffers_in_use");
        /// Reads that wanted a splice pipe and were copied because none was free (see
        /// splice.max_pipes).
        copy_fallbacks = (counter "wsplice_copy_fallbacks_total");
    };
    /// The splice pipe pool's counters, copied in once per loop iteration.
    pipes: PoolStats = {
        /// Splice pipes lent to tunnels now.
        in_use = (gauge "wsplice_pipes_in_use" json "pipes_in_use");
        /// Empty splice pipes waiting in the pool.
        pooled = (gauge "wsplice_pipes_pooled");
        /// Of the pipes lent or pooled, those larger than the kernel's 64 KiB (at most each
        /// worker's share of a quarter of fs.pipe-user-pages-soft; past it pipes are 64 KiB).
        large = (gauge "wsplice_pipes_large");
        /// Splice pipes ever created.
        created = (counter "wsplice_pipes_created_total");
        /// Times a splice pipe was wanted but none could be had (splice.max_pipes or
        /// limits.max_memory reached, or pipe creation failed).
        unavailable = (counter "wsplice_pipes_unavailable_total");
    };
    /// Access-log lines dropped because the log writer fell behind (a slow disk, or a pipe
    /// nobody reads at access_log.path).
    access_log_dropped = (counter "wsplice_access_log_dropped_lines_total");
    /// TLS handshakes by result: ok (full), resumed (a session ticket), or why it failed
    /// (plain_http, not_tls, incompatible, unknown_sni, bad_message, incomplete: closed or timed
    /// out first).
    tls_handshakes = (counter "wsplice_tls_handshakes_total" by result in tls::RESULTS);
    /// TLS sessions established, by protocol version.
    tls_versions = (counter "wsplice_tls_versions_total" by version in tls::VERSIONS);
    /// TLS sessions established, by cipher suite.
    tls_ciphers = (counter "wsplice_tls_ciphers_total" by cipher in tls::CIPHERS);
    /// Requests a redirect listener ([tls] redirect_listen) answered with a redirect to https.
    redirects = (counter "wsplice_redirects_total");
    /// TLS handshakes with backends (routes with `backend_tls`), by result: ok, resumed, or
    /// why it failed (untrusted: the certificate does not chain to backend_ca or the system
    /// roots; name_mismatch: not valid for backend_server_name; expired; incompatible;
    /// bad_message; incomplete: closed or timed out first). Each failure is answered 502.
    backend_tls_handshakes = (counter "wsplice_backend_tls_handshakes_total" by result in tls::BACKEND_RESULTS);
    /// Forwarded (plain HTTP) requests, by the class of the status the client got (the
    /// backend's or ours); "none": the client left before any answer.
    requests = (counter "wsplice_http_requests_total" by class in STATUS_CLASSES);
    /// Forwarded requests sent on an idle pooled backend connection instead of a new one.
    pool_reused = (counter "wsplice_backend_pool_reused_total");
    /// Idle backend connections kept in the pools now (see backend_pool.max_idle).
    pool_idle = (gauge "wsplice_backend_pool_idle");
    /// Forwarded requests sent again on a new connection because a pooled one failed before
    /// any answer byte (the backend closed it as we picked it up).
    retries = (counter "wsplice_http_retries_total");
    /// Tunnels this process handed to a new binary at an upgrade (SIGUSR2).
    upgrade_handed = (counter "wsplice_upgrade_tunnels_handed_total");
    /// Tunnels this process took over from the process it upgraded from.
    upgrade_adopted = (counter "wsplice_upgrade_tunnels_adopted_total");
    /// Worker threads, by the driver that runs them (the `driver` key).
    drivers = (gauge "wsplice_workers_by_driver" by driver in DRIVERS);
    /// The io_uring driver's counters, copied in once per loop iteration (zero under epoll).
    uring: UringStats = {
        /// io_uring submissions the kernel took (operations started).
        submitted = (counter "wsplice_uring_submissions_total");
        /// io_uring completions reaped (operations finished, accepts and receives included).
        completed = (counter "wsplice_uring_completions_total");
        /// io_uring loop iterations, one waiting io_uring_enter each: submissions and
        /// completions divided by this are the batch sizes.
        loops = (counter "wsplice_uring_loops_total");
        /// Receives that found every provided buffer taken; they wait until one comes back.
        /// Frequent: raise uring.buffer_memory.
        buffers_exhausted = (counter "wsplice_uring_buffers_exhausted_total");
    };
}

/// Counters of an io_uring worker's ring, for its metrics (zero under epoll, and in builds
/// without the `uring` feature).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UringStats {
    pub submitted: u64,
    pub completed: u64,
    /// Loop iterations (each one `io_uring_enter` that waits).
    pub loops: u64,
    /// Receives that found every provided buffer taken (ENOBUFS): they wait for one.
    pub buffers_exhausted: u64,
}

/// The `class` label values of `wsplice_http_requests_total`.
pub const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

/// The index in [`STATUS_CLASSES`] of `status` (0 or out of range: "none").
pub fn status_class(status: u16) -> usize {
    match status {
        100..=599 => usize::from(status / 100 - 1),
        _ => STATUS_CLASSES.len() - 1,
    }
}

/// How Prometheus reads a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    /// The word on the `# TYPE` line.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A metric family: what `# HELP` and `# TYPE` say about its samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Family {
    pub kind: Kind,
    /// The full name, `wsplice_...`.
    pub name: &'static str,
    pub help: &'static str,
    /// The key under which `/status` shows it, if it does.
    pub json: Option<&'static str>,
}

impl Family {
    const fn new(kind: Kind, name: &'static str, help: &'static str) -> Family {
        Family {
            kind,
            name,
            help,
            json: None,
        }
    }

    const fn json(mut self, key: &'static str) -> Family {
        self.json = Some(key);
        self
    }
}

/// Descriptors open in the process now; scraped, not counted by workers.
pub const OPEN_FDS: Family = Family::new(
    Kind::Gauge,
    "wsplice_open_fds",
    "Descriptors open in the process now (sockets, pipes, listeners).",
)
.json("open_fds");
/// The soft open-file limit; scraped, not counted by workers.
pub const FD_LIMIT: Family = Family::new(
    Kind::Gauge,
    "wsplice_fd_limit",
    "The soft open-file limit (RLIMIT_NOFILE) the process runs with.",
);
/// Seconds since start; scraped, not counted by workers.
pub const UPTIME: Family = Family::new(
    Kind::Gauge,
    "wsplice_uptime_seconds",
    "Seconds since the proxy started.",
)
.json("uptime_seconds");
/// Workers running now (threads, or processes under the supervisor); scraped.
pub const WORKERS: Family = Family::new(Kind::Gauge, "wsplice_workers", "Workers running now.");
/// Worker processes replaced after they died; counted by the supervisor.
pub const WORKER_RESTARTS: Family = Family::new(
    Kind::Counter,
    "wsplice_worker_restarts_total",
    "Worker processes that died (a crash, kill -9) and were started again; their connections were lost.",
);
/// Connections per worker, labelled `worker`.
pub const WORKER_CONNECTIONS: Family = Family::new(
    Kind::Gauge,
    "wsplice_worker_connections",
    "Client connections each worker holds now.",
);
/// Descriptors of each worker's process, labelled `worker`.
pub const WORKER_OPEN_FDS: Family = Family::new(
    Kind::Gauge,
    "wsplice_worker_open_fds",
    "Descriptors open in each worker's process now (worker processes: each has its own table and limit; worker threads share the one process's).",
);
/// Per-backend families, published by workers as [`BackendCounts`].
pub const BACKEND_FAMILIES: [Family; 3] = [
    Family::new(
        Kind::Gauge,
        "wsplice_backend_active",
        "Tunnels open to this backend now.",
    ),
    Family::new(
        Kind::Counter,
        "wsplice_backend_tunnels_total",
        "Tunnels ever opened to this backend.",
    ),
    Family::new(
        Kind::Counter,
        "wsplice_backend_failures_total",
        "Connects or handshakes to this backend that failed (refused, reset, timeout, bad answer).",
    ),
];

/// Per-backend health (`[route.health]`, drain), from the checking thread's board.
pub const BACKEND_UP: Family = Family::new(
    Kind::Gauge,
    "wsplice_backend_up",
    "1 while this backend of this route takes new connections; 0 while it is down (active checks), ejected (passive) or drained.",
);
/// State changes of a backend, by reason.
pub const BACKEND_STATE_CHANGES: Family = Family::new(
    Kind::Counter,
    "wsplice_backend_state_changes_total",
    "Changes of a backend's state, by reason: check_failed, check_passed, ejected, ejection_over, drained, undrained.",
);
/// Passive ejections of a backend.
pub const BACKEND_EJECTIONS: Family = Family::new(
    Kind::Counter,
    "wsplice_backend_ejections_total",
    "Times a backend was ejected after [route.health] eject_after failed connects or answers in a row.",
);

/// Forwarded requests per route and status class, published by workers as [`RouteSnapshot`].
pub const ROUTE_FAMILY: Family = Family::new(
    Kind::Counter,
    "wsplice_route_requests_total",
    "Forwarded (plain HTTP) requests per route (host/prefix) and class of the status answered.",
);

/// Every family `/metrics` shows, in order: the workers' list, then the process, per-backend
/// and per-route families.
pub fn families() -> Vec<Family> {
    struct Names(Vec<Family>);
    impl Visit for Names {
        fn sample(&mut self, f: &Family, _: Option<LabelPair<'_>>, _: &mut impl Slot) {
            if self.0.last().map(|l| l.name) != Some(f.name) {
                self.0.push(*f);
            }
        }
        fn histogram<const N: usize>(&mut self, f: &Family, _: &[f64], _: &mut Histogram<N>) {
            self.0.push(*f);
        }
    }
    let mut n = Names(Vec::new());
    visit(&mut Counters::default(), &mut n);
    n.0.extend([OPEN_FDS, FD_LIMIT, UPTIME, WORKERS, WORKER_RESTARTS]);
    n.0.extend([WORKER_CONNECTIONS, WORKER_OPEN_FDS]);
    n.0.extend(BACKEND_FAMILIES);
    n.0.push(ROUTE_FAMILY);
    n.0.extend([BACKEND_UP, BACKEND_STATE_CHANGES, BACKEND_EJECTIONS]);
    n.0
}

/// Latency counts per bucket (not cumulative; the last is +Inf) and their sum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Histogram<const N: usize> {
    pub counts: [u64; N],
    /// Sum of the observations, microseconds.
    pub sum_us: u64,
}

impl<const N: usize> Default for Histogram<N> {
    fn default() -> Self {
        Histogram {
            counts: [0; N],
            sum_us: 0,
        }
    }
}

impl<const N: usize> Histogram<N> {
    /// Counts `d` in the first bucket whose bound holds it; `bounds` are the `N - 1` finite
    /// bounds, seconds, ascending.
    pub fn observe(&mut self, bounds: &[f64], d: Duration) {
        debug_assert_eq!(bounds.len() + 1, N);
        let secs = d.as_secs_f64();
        let i = bounds.iter().position(|&le| secs <= le).unwrap_or(N - 1);
        self.counts[i] += 1;
        self.sum_us += d.as_micros() as u64;
    }

    /// Observations in all buckets.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

impl Counters {
    /// Records one accept-to-101 time.
    pub fn observe_handshake(&mut self, d: Duration) {
        self.handshake.observe(&HANDSHAKE_BUCKETS, d);
    }

    /// Counts a refused handshake under its status.
    pub fn count_reject(&mut self, r: Reject) {
        let i = Reject::STATUSES.iter().position(|&s| s == r.status());
        debug_assert!(i.is_some(), "{r:?}: its kind is missing from Reject::ALL");
        if let Some(i) = i {
            self.rejects[i] += 1;
        }
    }

    /// Counts how a TLS handshake with a backend ended.
    pub fn count_backend_tls(&mut self, e: TlsEvent) {
        self.backend_tls_handshakes[e.backend_result()] += 1;
    }

    /// Counts how a TLS handshake ended.
    pub fn count_tls(&mut self, e: TlsEvent) {
        self.tls_handshakes[e.result()] += 1;
        if let TlsEvent::Established {
            version, cipher, ..
        } = e
        {
            self.tls_versions[version] += 1;
            if let Some(c) = cipher {
                self.tls_ciphers[c] += 1;
            }
        }
    }

    /// Counts a forwarded request under the class of its status (0: no answer).
    pub fn count_request(&mut self, status: u16) {
        self.requests[status_class(status)] += 1;
    }

    /// Counts a closed tunnel under its reason.
    pub fn count_close(&mut self, r: CloseReason) {
        let i = CloseReason::ALL.iter().position(|&a| a == r);
        debug_assert!(i.is_some(), "{r:?} is missing from CloseReason::ALL");
        if let Some(i) = i {
            self.closes[i] += 1;
        }
    }

    /// The count of one close reason.
    pub fn closed(&self, r: CloseReason) -> u64 {
        CloseReason::ALL
            .iter()
            .position(|&a| a == r)
            .map_or(0, |i| self.closes[i])
    }
}

/// Words one [`Published`] block takes (to lay blocks out in shared memory).
pub const PUBLISHED_WORDS: usize = FIELDS;

/// A worker's counters as other threads (or, in shared memory, other processes) read them: one
/// relaxed `AtomicU64` per sample, in list order.
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

impl Published {
    /// Publishes `c` (the owning worker, once per loop iteration).
    pub fn store(&self, c: &Counters) {
        for (slot, val) in self.v.iter().zip(flatten(c)) {
            slot.store(val, Ordering::Relaxed);
        }
    }

    /// The last published counters (any thread). Samples are read one by one: a reader may see
    /// one of them a loop iteration ahead of another.
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

/// The samples of `c` in Prometheus text format, each family under its `# HELP` and `# TYPE`.
pub fn render(c: &Counters) -> String {
    let mut t = Text::default();
    let mut c = *c;
    visit(&mut c, &mut t);
    t.out
}

/// Appends single-sample families (such as [`OPEN_FDS`], [`FD_LIMIT`], [`UPTIME`]) to the
/// text `out`.
pub fn render_samples(out: &mut String, samples: &[(Family, u64)]) {
    let mut t = Text {
        out: std::mem::take(out),
        last: "",
    };
    for (f, v) in samples {
        t.line(f, "", None, v);
    }
    *out = t.out;
}

/// Appends a family with one sample per worker (`worker="id"`) to the text `out`.
pub fn render_by_worker(out: &mut String, f: Family, per_worker: &[(usize, u64)]) {
    let mut t = Text {
        out: std::mem::take(out),
        last: "",
    };
    for (id, v) in per_worker {
        t.line(&f, "", Some(("worker", &id.to_string())), v);
    }
    *out = t.out;
}

/// Appends family `f` with one sample per entry, labelled `label="value"` (a value may carry
/// further pairs: `a\",b=\"c`).
pub fn render_labelled(out: &mut String, f: Family, label: &str, samples: &[(String, u64)]) {
    let mut t = Text {
        out: std::mem::take(out),
        last: "",
    };
    for (v, n) in samples {
        t.line(&f, "", Some((label, v)), n);
    }
    *out = t.out;
}

/// The `/status` keys of the list (`json "key"` entries) with their values, in list order.
pub fn status_fields(c: &Counters) -> Vec<(&'static str, u64)> {
    struct Json(Vec<(&'static str, u64)>);
    impl Visit for Json {
        fn sample(&mut self, f: &Family, _: Option<LabelPair<'_>>, slot: &mut impl Slot) {
            if let Some(k) = f.json {
                self.0.push((k, slot.get()));
            }
        }
        fn histogram<const N: usize>(&mut self, _: &Family, _: &[f64], _: &mut Histogram<N>) {}
    }
    let mut j = Json(Vec::new());
    let mut c = *c;
    visit(&mut c, &mut j);
    j.0
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

/// A backend as one route uses it: (the route's [`crate::core::route::RouteEntry::id`], 0 for
/// none; the backend's address).
pub type BackendKey = (u32, std::net::SocketAddr);

/// One worker's per-backend counts as the admin listener reads them.
pub type BackendSnapshot = std::sync::Arc<std::sync::Mutex<Vec<(BackendKey, BackendCounts)>>>;

/// What `/metrics` last showed of each backend. Workers drop the row of a backend that left
/// their routes when its last tunnel there closes, each at its own time; a counter summed
/// over them would then go down while another worker still has tunnels to it. Shown counters
/// are the larger of the sum and what was shown; a backend no worker has a row for is not
/// shown and forgotten (if it comes back, its counters start again, as after a restart).
#[derive(Clone, Default)]
pub struct BackendTotals(
    std::sync::Arc<std::sync::Mutex<Vec<(std::net::SocketAddr, BackendCounts)>>>,
);

/// Renders the [`BACKEND_FAMILIES`], summing workers' maps (and the routes sharing a backend),
/// counters never below what `shown` last showed; each family's samples together.
pub fn render_backends(all: &[Vec<(BackendKey, BackendCounts)>], shown: &BackendTotals) -> String {
    let mut sum: Vec<(std::net::SocketAddr, BackendCounts)> = Vec::new();
    for w in all {
        for &((_, addr), c) in w {
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
    if let Ok(mut last) = shown.0.lock() {
        for (a, c) in &mut sum {
            if let Ok(i) = last.binary_search_by_key(a, |(b, _)| *b) {
                c.tunnels = c.tunnels.max(last[i].1.tunnels);
                c.failures = c.failures.max(last[i].1.failures);
            }
        }
        last.clone_from(&sum);
    }
    let mut t = Text::default();
    let fields: [fn(&BackendCounts) -> u64; 3] = [|c| c.active, |c| c.tunnels, |c| c.failures];
    for (f, get) in BACKEND_FAMILIES.iter().zip(fields) {
        for (a, c) in &sum {
            t.line(f, "", Some(("backend", &a.to_string())), get(c));
        }
    }
    t.out
}

/// One worker's request counts per route: (route label, counts by [`STATUS_CLASSES`]).
pub type RouteSnapshot = std::sync::Arc<std::sync::Mutex<Vec<(String, [u64; 6])>>>;

/// Renders [`ROUTE_FAMILY`], summing workers' lists by route.
pub fn render_routes(all: &[Vec<(String, [u64; 6])>]) -> String {
    let mut sum: Vec<(String, [u64; 6])> = Vec::new();
    for w in all {
        for (label, c) in w {
            match sum.iter_mut().find(|(l, _)| l == label) {
                Some((_, t)) => t.iter_mut().zip(c).for_each(|(a, b)| *a += b),
                None => sum.push((label.clone(), *c)),
            }
        }
    }
    sum.sort();
    let mut t = Text::default();
    for (label, c) in &sum {
        // A prefix may hold `"` or `\`: the label value escapes them.
        let route = label.replace('\\', "\\\\").replace('"', "\\\"");
        for (class, n) in STATUS_CLASSES.iter().zip(c) {
            let pair = format!("{route}\",class=\"{class}");
            t.line(&ROUTE_FAMILY, "", Some(("route", &pair)), n);
        }
    }
    t.out
}

#[cfg(test)]
mod tests;
