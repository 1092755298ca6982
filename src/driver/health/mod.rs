//! Backend health: the one thread that checks backends and ejects them, and the operator's
//! drain, both writing the health table every worker reads ([`crate::core::health`]).
//!
//! ```text
//!   wsplice-health thread (the proxy's process; with worker processes, the supervisor's)
//!     every interval, per backend of a route with [route.health] kind: a check, on a helper
//!       thread per check (a slow backend delays no other check, and never a worker)
//!     every 100 ms: the failure counts the workers wrote -> ejections; ejections that ran out
//!   admin listener: drain / undrain -> the same board, under its lock
//!   board -> state words in the health table (process memory, or the shared mapping)
//! ```
//! A state change is logged on stderr with its reason and counted in `/metrics`.

mod probe;

use crate::config::{Config, Health as HealthConfig};
use crate::core::health::{self, HealthWords, Reason, Tracker, DOWN, DRAINED, EJECTED};
use crate::core::route::RouteTable;
use crate::driver::access_log::LogSink;
use crate::driver::stats;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How often the failure counts of passive ejection are read.
const PASSIVE_TICK: Duration = Duration::from_millis(100);

/// A handle on the board and its checking thread (cheap to clone).
#[derive(Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

struct Inner {
    board: Mutex<Board>,
    words: Arc<dyn HealthWords>,
    /// A new configuration, or `None`: stop.
    control: Mutex<Sender<Option<Config>>>,
    /// The checking thread's end of `control` until it starts: only a configuration with
    /// `[route.health]` needs the thread (drain alone is applied by the admin listener).
    idle: Mutex<Option<Receiver<Option<Config>>>>,
}

struct Board {
    routes: Vec<RouteState>,
    /// The access log, which also gets each state change.
    log: Option<LogSink>,
    /// Slots the current layout uses (cleared when a reload shrinks it).
    used: usize,
}

struct RouteState {
    label: String,
    host: Option<String>,
    health: Option<HealthConfig>,
    backends: Vec<Backend>,
    /// The share limit kept an ejection back (logged once until it no longer does).
    held: bool,
}

struct Backend {
    addr: SocketAddr,
    weight: u32,
    slot: Option<usize>,
    t: Tracker,
    next_check: Instant,
    /// State changes by [`Reason::ALL`].
    changes: [u64; 6],
    ejections: u64,
    /// The last change's reason and detail, for `/backends`.
    last: String,
}

impl Health {
    /// Starts the checking thread for `cfg`'s routes, writing into `words`.
    pub fn start(cfg: &Config, words: Arc<dyn HealthWords>) -> std::io::Result<Health> {
        let (tx, rx) = channel();
        let inner = Arc::new(Inner {
            board: Mutex::new(Board {
                routes: Vec::new(),
                log: None,
                used: 0,
            }),
            words,
            control: Mutex::new(tx),
            idle: Mutex::new(Some(rx)),
        });
        inner.lock().reload(cfg, &inner.words, Instant::now());
        let h = Health { inner };
        h.spawn_if_needed(cfg)?;
        Ok(h)
    }

    /// Starts the checking thread once a route has `[route.health]`.
    fn spawn_if_needed(&self, cfg: &Config) -> std::io::Result<()> {
        if !cfg.routes.iter().any(|r| r.options.health.is_some()) {
            return Ok(());
        }
        let mut idle = self.inner.idle.lock().unwrap_or_else(|p| p.into_inner());
        let Some(rx) = idle.take() else {
            return Ok(());
        };
        let run = self.inner.clone();
        let started = std::thread::Builder::new()
            .name("wsplice-health".into())
            .spawn(move || run.run(&rx));
        started.map(|_| ())
    }

    /// Writes state changes to the access log too (`None`: stderr only).
    pub fn set_log(&self, log: Option<LogSink>) {
        self.inner.lock().log = log;
    }

    /// Reopens the access log this thread writes (SIGUSR1), when it has its own.
    pub fn reopen_log(&self) {
        if let Some(l) = &self.inner.lock().log {
            l.reopen();
        }
    }

    /// The table the workers' route tables read.
    pub fn words(&self) -> Arc<dyn HealthWords> {
        self.inner.words.clone()
    }

    /// Takes a new configuration: backends kept (same route, same address) keep their state.
    pub fn reload(&self, cfg: &Config) {
        let running = self.inner.idle.lock().map_or(true, |idle| idle.is_none());
        if running {
            if let Ok(tx) = self.inner.control.lock() {
                let _ = tx.send(Some(cfg.clone()));
            }
            return;
        }
        self.inner
            .lock()
            .reload(cfg, &self.inner.words, Instant::now());
        if let Err(e) = self.spawn_if_needed(cfg) {
            eprintln!("wsplice: reload: cannot start the health-check thread: {e}; backends are not checked");
        }
    }

    /// Ends the checking thread (the proxy is stopping).
    pub fn stop(&self) {
        if let Ok(tx) = self.inner.control.lock() {
            let _ = tx.send(None);
        }
    }

    /// Drains (`on`) or undrains `backend` in the route labelled `route` (every route that
    /// lists it when `None`). Returns (route, changed) per route touched, or why none was.
    pub fn drain(
        &self,
        route: Option<&str>,
        backend: SocketAddr,
        on: bool,
    ) -> Result<Vec<(String, bool)>, String> {
        let mut b = self.inner.lock();
        let log = b.log.clone();
        let mut out = Vec::new();
        for r in &mut b.routes {
            if route.is_some_and(|want| want != r.label) {
                continue;
            }
            for k in r.backends.iter_mut().filter(|k| k.addr == backend) {
                let Some(slot) = k.slot else {
                    return Err(format!(
                        "backend {backend} of route {} is past the {} backends the health table holds (restart to grow it)",
                        r.label,
                        self.inner.words.slots()
                    ));
                };
                let changed = k.t.drain(on);
                if let Some(reason) = changed {
                    k.change(&r.label, reason, "through the admin listener", log.as_ref());
                }
                publish(&self.inner.words, slot, k.t.state);
                out.push((r.label.clone(), changed.is_some()));
            }
        }
        if out.is_empty() {
            return Err(match route {
                Some(l) if !b.routes.iter().any(|r| r.label == l) => {
                    let labels: Vec<&str> = b.routes.iter().map(|r| r.label.as_str()).collect();
                    format!("no route {l:?} (routes: {})", labels.join(", "))
                }
                Some(l) => format!("route {l:?} has no backend {backend}"),
                None => format!("no route has backend {backend}"),
            });
        }
        Ok(out)
    }

    /// Every route's backends and their state, as JSON (`GET /backends`).
    pub fn json(&self) -> String {
        let b = self.inner.lock();
        let routes: Vec<String> = b
            .routes
            .iter()
            .map(|r| {
                let backends: Vec<String> = r
                    .backends
                    .iter()
                    .map(|k| {
                        format!(
                            "{{\"backend\":\"{}\",\"weight\":{},\"state\":\"{}\",\"down\":{},\"ejected\":{},\"drained\":{},\"ejections\":{},\"last_change\":{}}}",
                            k.addr,
                            k.weight,
                            state_name(k.t.state),
                            k.t.state & DOWN != 0,
                            k.t.state & EJECTED != 0,
                            k.t.state & DRAINED != 0,
                            k.ejections,
                            stats::json::string(&k.last),
                        )
                    })
                    .collect();
                format!(
                    "{{\"route\":{},\"checks\":{},\"backends\":[{}]}}",
                    stats::json::string(&r.label),
                    r.health
                        .as_ref()
                        .and_then(|h| h.check.as_ref())
                        .map_or("null".to_owned(), |c| stats::json::string(c.kind.as_str())),
                    backends.join(",")
                )
            })
            .collect();
        format!("{{\"routes\":[{}]}}\n", routes.join(","))
    }

    /// The health families of `/metrics`.
    pub fn metrics(&self) -> String {
        let b = self.inner.lock();
        let mut up = Vec::new();
        let mut changes = Vec::new();
        let mut ejections = Vec::new();
        for r in &b.routes {
            let route = escape(&r.label);
            for k in &r.backends {
                let pair = format!("{route}\",backend=\"{}", k.addr);
                up.push((pair.clone(), u64::from(k.t.is_up())));
                ejections.push((pair.clone(), k.ejections));
                for (reason, n) in Reason::ALL.iter().zip(k.changes) {
                    changes.push((format!("{pair}\",reason=\"{}", reason.as_str()), n));
                }
            }
        }
        let mut out = String::new();
        stats::render_labelled(&mut out, stats::BACKEND_UP, "route", &up);
        stats::render_labelled(&mut out, stats::BACKEND_STATE_CHANGES, "route", &changes);
        stats::render_labelled(&mut out, stats::BACKEND_EJECTIONS, "route", &ejections);
        out
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Board> {
        // A panic while holding the lock leaves plain data behind: keep using it.
        self.board.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn run(&self, rx: &Receiver<Option<Config>>) {
        loop {
            let now = Instant::now();
            let due = self.lock().due(now);
            if !due.is_empty() {
                let results: Vec<(usize, usize, Result<(), String>)> =
                    std::thread::scope(|scope| {
                        let running: Vec<_> = due
                            .iter()
                            .map(|d| {
                                let check =
                                    move || probe::check(d.addr, &d.check, &d.host, d.timeout);
                                // Out of threads: this one checks, the others wait their turn.
                                let h = std::thread::Builder::new()
                                    .name("wsplice-check".into())
                                    .spawn_scoped(scope, check)
                                    .map_err(|_| check());
                                (d.route, d.backend, h)
                            })
                            .collect();
                        running
                            .into_iter()
                            .map(|(r, k, h)| {
                                let res = match h {
                                    Ok(h) => h
                                        .join()
                                        .unwrap_or_else(|_| Err("the check panicked".into())),
                                    Err(done) => done,
                                };
                                (r, k, res)
                            })
                            .collect()
                    });
                self.lock().checked(&results, &self.words);
            }
            let wait = self.lock().passive(Instant::now(), &self.words);
            let got = match wait {
                Some(w) => rx.recv_timeout(w),
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match got {
                Ok(Some(cfg)) => self.lock().reload(&cfg, &self.words, Instant::now()),
                Err(RecvTimeoutError::Timeout) => {}
                Ok(None) | Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }
}

/// A check to run now.
struct Due {
    route: usize,
    backend: usize,
    addr: SocketAddr,
    check: crate::config::HealthCheck,
    host: String,
    timeout: Duration,
}

impl Board {
    fn reload(&mut self, cfg: &Config, words: &Arc<dyn HealthWords>, now: Instant) {
        let table = RouteTable::new(&cfg.routes).with_health(words.clone());
        let mut old = std::mem::take(&mut self.routes);
        let mut used = 0;
        for r in table.iter() {
            let mut previous = old.iter_mut().find(|o| o.label == r.label);
            let backends = r
                .backends
                .iter()
                .enumerate()
                .map(|(i, &addr)| {
                    let slot = r.health_slot(i);
                    used = used.max(slot.map_or(0, |s| s + 1));
                    let kept = previous
                        .as_ref()
                        .and_then(|p| p.backends.iter().position(|k| k.addr == addr));
                    let mut k = match (kept, previous.as_deref_mut()) {
                        (Some(j), Some(p)) => p.backends.swap_remove(j),
                        _ => Backend {
                            addr,
                            weight: 1,
                            slot: None,
                            t: Tracker::new(),
                            next_check: now,
                            changes: [0; 6],
                            ejections: 0,
                            last: String::new(),
                        },
                    };
                    k.slot = slot;
                    k.weight = r.weight(i);
                    k.next_check = k.next_check.min(now + interval(r.options.health.as_ref()));
                    // Checks or ejection turned off: what they decided no longer holds.
                    let h = r.options.health.as_ref();
                    if h.and_then(|h| h.check.as_ref()).is_none() {
                        k.t.state &= !DOWN;
                    }
                    if !h.is_some_and(|h| h.eject_after > 0) {
                        k.t.state &= !EJECTED;
                        k.t.ejected_until = None;
                    }
                    k
                })
                .collect();
            self.routes.push(RouteState {
                label: r.label.clone(),
                host: r.host.clone(),
                health: r.options.health.clone(),
                backends,
                held: false,
            });
        }
        let homeless: Vec<String> = self
            .routes
            .iter()
            .flat_map(|r| {
                r.backends
                    .iter()
                    .filter(|k| k.slot.is_none())
                    .map(move |k| format!("{} of route {}", k.addr, r.label))
            })
            .collect();
        if !homeless.is_empty() {
            eprintln!(
                "wsplice: warning: the health table holds {} backends (restart to grow it): {} are never checked, ejected or drained",
                words.slots(),
                homeless.join(", ")
            );
        }
        for slot in 0..self.used.max(used) {
            publish(words, slot, 0);
            if let Some(f) = health::failure_word(words.as_ref(), slot) {
                f.store(0, Ordering::Relaxed);
            }
        }
        self.used = used;
        for r in &self.routes {
            for k in &r.backends {
                if let Some(slot) = k.slot {
                    publish(words, slot, k.t.state);
                }
            }
        }
    }

    /// The checks due at `now`; their next is set one interval on.
    fn due(&mut self, now: Instant) -> Vec<Due> {
        let mut out = Vec::new();
        for (ri, r) in self.routes.iter_mut().enumerate() {
            let Some(h) = &r.health else { continue };
            let Some(check) = &h.check else { continue };
            for (bi, k) in r.backends.iter_mut().enumerate() {
                if k.slot.is_none() || k.next_check > now {
                    continue;
                }
                k.next_check = now + h.interval;
                let host = check
                    .host
                    .clone()
                    .or_else(|| r.host.clone())
                    .unwrap_or_else(|| k.addr.to_string());
                out.push(Due {
                    route: ri,
                    backend: bi,
                    addr: k.addr,
                    check: check.clone(),
                    host,
                    timeout: h.timeout,
                });
            }
        }
        out
    }

    fn checked(
        &mut self,
        results: &[(usize, usize, Result<(), String>)],
        words: &Arc<dyn HealthWords>,
    ) {
        for (ri, bi, res) in results {
            let Some(r) = self.routes.get_mut(*ri) else {
                continue;
            };
            let Some(h) = &r.health else { continue };
            let Some(k) = r.backends.get_mut(*bi) else {
                continue;
            };
            let kind = h.check.as_ref().map_or("", |c| c.kind.as_str());
            let Some(reason) = k.t.probe(res.is_ok(), h) else {
                continue;
            };
            let detail = match (reason, res) {
                (_, Err(e)) => format!("{kind} check: {e}; {} in a row", h.fall),
                _ => format!("{kind} check passed {} times in a row", h.rise),
            };
            k.change(&r.label, reason, &detail, self.log.as_ref());
            if let Some(slot) = k.slot {
                publish(words, slot, k.t.state);
            }
        }
    }

    /// Ends ejections that ran out and ejects backends the workers saw fail; how long to wait
    /// before the next look (`None`: nothing to watch but the next reload).
    fn passive(&mut self, now: Instant, words: &Arc<dyn HealthWords>) -> Option<Duration> {
        let mut wait: Option<Duration> = None;
        let mut sooner = |d: Duration| wait = Some(wait.map_or(d, |w| w.min(d)));
        let log = self.log.clone();
        for r in &mut self.routes {
            let Some(h) = &r.health else { continue };
            if let Some(next) = r.backends.iter().map(|k| k.next_check).min() {
                if h.check.is_some() {
                    sooner(next.saturating_duration_since(now));
                }
            }
            if h.eject_after == 0 {
                continue;
            }
            sooner(PASSIVE_TICK);
            for k in &mut r.backends {
                if let Some(reason) = k.t.tick(now) {
                    k.change(&r.label, reason, "its ejection time ran out", log.as_ref());
                    if let Some(slot) = k.slot {
                        publish(words, slot, k.t.state);
                    }
                }
            }
            let max = health::max_ejected(r.backends.len(), h.max_ejected_percent);
            let mut ejected = r
                .backends
                .iter()
                .filter(|k| k.t.state & EJECTED != 0)
                .count();
            let mut held = false;
            let total = r.backends.len();
            for k in &mut r.backends {
                let Some(slot) = k.slot else { continue };
                let Some(f) = health::failure_word(words.as_ref(), slot) else {
                    continue;
                };
                let n = f.load(Ordering::Relaxed);
                if k.t.failures(n, h, ejected < max, now) {
                    let time = k.t.ejected_until.map_or(Duration::ZERO, |u| u - now);
                    f.store(0, Ordering::Relaxed);
                    ejected += 1;
                    k.ejections += 1;
                    let detail = format!("{n} failed connects or answers in a row; for {time:?}");
                    k.change(&r.label, Reason::Ejected, &detail, log.as_ref());
                    publish(words, slot, k.t.state);
                } else if n >= u64::from(h.eject_after) && k.t.state & EJECTED == 0 {
                    held = true;
                    if !r.held {
                        eprintln!(
                            "wsplice: backend {} of route {} failed {n} times in a row but stays in: {ejected} of {} backends are ejected, the most max_ejected_percent = {} allows",
                            k.addr,
                            r.label,
                            total,
                            h.max_ejected_percent
                        );
                    }
                }
            }
            r.held = held;
        }
        wait
    }
}

impl Backend {
    /// Counts and logs a state change.
    fn change(&mut self, route: &str, reason: Reason, detail: &str, log: Option<&LogSink>) {
        if let Some(i) = Reason::ALL.iter().position(|&r| r == reason) {
            self.changes[i] += 1;
        }
        self.last = format!("{}: {detail}", reason.as_str());
        let state = state_name(self.t.state);
        eprintln!(
            "wsplice: backend {} of route {route} is {state}: {} ({detail})",
            self.addr,
            reason.as_str()
        );
        if let Some(log) = log {
            log.backend_event(route, self.addr, state, reason.as_str(), detail);
        }
    }
}

fn interval(h: Option<&HealthConfig>) -> Duration {
    h.map_or(Duration::from_secs(2), |h| h.interval)
}

fn publish(words: &Arc<dyn HealthWords>, slot: usize, state: u64) {
    if let Some(w) = health::state_word(words.as_ref(), slot) {
        w.store(state, Ordering::Relaxed);
    }
}

/// `up`, or the strongest reason it is not.
fn state_name(state: u64) -> &'static str {
    if state & DRAINED != 0 {
        "drained"
    } else if state & DOWN != 0 {
        "down"
    } else if state & EJECTED != 0 {
        "ejected"
    } else {
        "up"
    }
}

/// A Prometheus label value: `\` and `"` escaped.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}
