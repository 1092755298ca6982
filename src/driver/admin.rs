//! The admin listener: `GET /` (the status page), `GET /status` (the JSON it polls),
//! `GET /metrics` (Prometheus text), `GET /healthz`, `GET /backends` (JSON: each route's
//! backends and their state), and for deploys `POST /backends/drain?backend=ADDR[&route=LABEL]`
//! and `POST /backends/undrain?...`: a drained backend gets no new connection, its open tunnels
//! stay. `route` is the route's label (its prefix, or `host/prefix`), percent-encoded; without
//! it, every route listing the backend.
//!
//! One blocking thread, one request per connection, far from the hot path: it only reads the
//! counters the workers publish (with worker processes: in shared memory, summed here, together
//! with the counts of workers that died and were replaced).

use crate::driver::stats::{self, json, Counters};
use crate::driver::{status, StatsReader, WorkerModel};
use crate::sys::limits;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The admin socket a binary upgrade passed, (configured address, socket), until [`start`]
/// takes it.
static PASSED: std::sync::Mutex<Option<(SocketAddr, TcpListener)>> = std::sync::Mutex::new(None);
/// A copy of the admin socket [`start`] serves on, for the next binary upgrade.
static KEPT: std::sync::Mutex<Option<(SocketAddr, TcpListener)>> = std::sync::Mutex::new(None);

/// The admin socket a binary upgrade passed, for [`start`] to serve on.
pub fn inherit(configured: SocketAddr, l: TcpListener) {
    if let Ok(mut s) = PASSED.lock() {
        *s = Some((configured, l));
    }
}

/// A copy of the admin socket, (configured address, socket), for a binary upgrade.
pub fn socket_for_upgrade() -> Option<(SocketAddr, TcpListener)> {
    let s = KEPT.lock().ok()?;
    let (a, l) = s.as_ref()?;
    Some((*a, l.try_clone().ok()?))
}

/// Binds `addr` (or takes the socket a binary upgrade passed for it) and serves admin
/// requests on a background thread.
pub fn start(addr: SocketAddr, stats: StatsReader, started: Instant) -> io::Result<SocketAddr> {
    let passed = PASSED
        .lock()
        .ok()
        .and_then(|mut s| s.take_if(|(a, _)| *a == addr).map(|(_, l)| l));
    let l = match passed {
        Some(l) => {
            l.set_nonblocking(false)?;
            l
        }
        None => TcpListener::bind(addr).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot listen on admin address {addr}: {e} (change `admin`)"),
            )
        })?,
    };
    if let (Ok(mut s), Ok(copy)) = (KEPT.lock(), l.try_clone()) {
        *s = Some((addr, copy));
    }
    let bound = l.local_addr()?;
    std::thread::Builder::new()
        .name("wsplice-admin".into())
        .spawn(move || {
            let busy = Arc::new(AtomicUsize::new(0));
            for s in l.incoming().flatten() {
                // A browser opens a spare connection it may never send on: each connection
                // gets its own short-lived thread, so one idle socket does not hold up the
                // page's polls (at most MAX_BUSY at once; beyond that, served in turn).
                if busy.fetch_add(1, Ordering::AcqRel) >= MAX_BUSY {
                    let _ = serve(s, &stats, started);
                    busy.fetch_sub(1, Ordering::AcqRel);
                    continue;
                }
                let (stats, busy2) = (stats.clone(), busy.clone());
                let spawned = std::thread::Builder::new()
                    .name("wsplice-admin-req".into())
                    .spawn(move || {
                        let _ = serve(s, &stats, started);
                        busy2.fetch_sub(1, Ordering::AcqRel);
                    });
                if spawned.is_err() {
                    busy.fetch_sub(1, Ordering::AcqRel);
                }
            }
        })?;
    Ok(bound)
}

/// Admin connections served at once; more wait their turn.
const MAX_BUSY: usize = 8;

fn serve(s: TcpStream, stats: &StatsReader, started: Instant) -> io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut r = BufReader::new(&s);
    let mut line = String::new();
    r.read_line(&mut line)?;
    // Skip the rest of the head, and any body (unread bytes at close would reset the answer).
    let mut h = String::new();
    let mut body = 0u64;
    while r.read_line(&mut h)? > 2 {
        if let Some((k, v)) = h.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                body = v.trim().parse().unwrap_or(0).min(1 << 16);
            }
        }
        h.clear();
    }
    io::copy(&mut (&mut r).take(body), &mut io::sink())?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    // A query string (a cache-buster, say) does not change what a path answers.
    let path = target.split('?').next().unwrap_or("");
    if (method, path) == ("GET", "/") {
        return answer(&s, "200 OK", "text/html; charset=utf-8", status::PAGE);
    }
    let c = stats.read();
    let (code, ctype, body) = match (method, path) {
        ("GET", "/metrics") => {
            let mut m = metrics(&c, stats, started);
            m.push_str(&stats.backends());
            m.push_str(&stats.routes());
            if let Some(h) = stats.health() {
                m.push_str(&h.metrics());
            }
            ("200 OK", "text/plain; version=0.0.4", m)
        }
        ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".to_string()),
        ("GET", "/backends") => match stats.health() {
            Some(h) => ("200 OK", "application/json", h.json()),
            None => no_health(),
        },
        ("POST", "/backends/drain" | "/backends/undrain") => drain(stats, target),
        ("GET", "/status") => (
            "200 OK",
            "application/json",
            status::document(&c, stats, &process(stats, started), &fds(stats).1),
        ),
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "try / (the status page), /status, /metrics, /healthz or /backends\n".into(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET, or POST /backends/drain and /backends/undrain\n".into(),
        ),
    };
    answer(&s, code, ctype, &body)
}

fn answer(s: &TcpStream, code: &str, ctype: &str, body: &str) -> io::Result<()> {
    let mut w = s;
    write!(
        w,
        "HTTP/1.1 {code}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn no_health() -> (&'static str, &'static str, String) {
    (
        "404 Not Found",
        "application/json",
        "{\"error\":\"this proxy keeps no backend state\"}\n".into(),
    )
}

/// `POST /backends/drain?...` or `/backends/undrain?...`: JSON saying what changed.
fn drain(stats: &StatsReader, target: &str) -> (&'static str, &'static str, String) {
    let Some(h) = stats.health() else {
        return no_health();
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let on = match path {
        "/backends/drain" => true,
        "/backends/undrain" => false,
        _ => return bad("POST /backends/drain or /backends/undrain".into()),
    };
    let mut route = None;
    let mut backend = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match (k, percent_decode(v)) {
            ("route", Some(v)) => route = Some(v),
            ("backend", Some(v)) => backend = Some(v),
            (_, None) => return bad(format!("{k}: bad percent-encoding")),
            _ => return bad(format!("unknown parameter {k:?}: use backend= and route=")),
        }
    }
    let Some(backend) = backend else {
        return bad("missing backend=IP:PORT".into());
    };
    let Ok(addr) = backend.parse::<SocketAddr>() else {
        return bad(format!("backend {backend:?} is not an IP:PORT address"));
    };
    match h.drain(route.as_deref(), addr, on) {
        Ok(done) => {
            let routes: Vec<String> = done
                .iter()
                .map(|(label, changed)| {
                    format!(
                        "{{\"route\":{},\"changed\":{changed}}}",
                        json::string(label)
                    )
                })
                .collect();
            let state = if on { "drained" } else { "undrained" };
            (
                "200 OK",
                "application/json",
                format!(
                    "{{\"backend\":\"{addr}\",\"state\":\"{state}\",\"routes\":[{}]}}\n",
                    routes.join(",")
                ),
            )
        }
        Err(e) => (
            "404 Not Found",
            "application/json",
            format!("{{\"error\":{}}}\n", json::string(&e)),
        ),
    }
}

fn bad(msg: String) -> (&'static str, &'static str, String) {
    (
        "400 Bad Request",
        "application/json",
        format!("{{\"error\":{}}}\n", json::string(&msg)),
    )
}

/// `%XX` decoded (and `+` as a space); `None` for a bad escape or bytes that are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Open descriptors of every process of the proxy (this one, and each worker process) and the
/// open-file limit each has: with worker processes, per worker, since each has its own table.
fn fds(stats: &StatsReader) -> (usize, Vec<(usize, usize)>) {
    let own = limits::open_fd_count().unwrap_or(0);
    if stats.model() == WorkerModel::Threads {
        // One process, one table: every worker's process holds them all.
        let per = stats.workers().iter().map(|w| (w.id, own)).collect();
        return (own, per);
    }
    let per: Vec<(usize, usize)> = stats
        .workers()
        .iter()
        .map(|w| (w.id, limits::fd_count_of(w.pid).unwrap_or(0)))
        .collect();
    (own + per.iter().map(|(_, n)| n).sum::<usize>(), per)
}

fn metrics(c: &Counters, stats: &StatsReader, started: Instant) -> String {
    let mut s = stats::render(c);
    let workers = stats.workers();
    let mut samples = process(stats, started).to_vec();
    samples.push((stats::WORKERS, workers.len() as u64));
    samples.push((
        stats::WORKER_RESTARTS,
        workers.iter().map(|w| w.restarts).sum(),
    ));
    stats::render_samples(&mut s, &samples);
    let per_worker: Vec<(usize, u64)> = workers.iter().map(|w| (w.id, w.connections)).collect();
    stats::render_by_worker(&mut s, stats::WORKER_CONNECTIONS, &per_worker);
    let fds: Vec<(usize, u64)> = fds(stats).1.iter().map(|&(id, n)| (id, n as u64)).collect();
    stats::render_by_worker(&mut s, stats::WORKER_OPEN_FDS, &fds);
    s
}

/// The samples of the whole proxy (every process), read now.
fn process(stats: &StatsReader, started: Instant) -> [(stats::Family, u64); 3] {
    let (soft, _) = limits::nofile_limit().unwrap_or((0, 0));
    [
        (stats::OPEN_FDS, fds(stats).0 as u64),
        (stats::FD_LIMIT, soft),
        (stats::UPTIME, started.elapsed().as_secs()),
    ]
}
