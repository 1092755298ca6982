//! The admin listener: `GET /metrics` (Prometheus text), `GET /healthz`, `GET /status` (JSON).
//!
//! One blocking thread, one request per connection, far from the hot path: it only reads the
//! counters the workers publish (with worker processes: in shared memory, summed here, together
//! with the counts of workers that died and were replaced).

use crate::driver::stats::{self, Counters};
use crate::driver::{StatsReader, WorkerModel};
use crate::sys::limits;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// Binds `addr` and serves admin requests on a background thread.
pub fn start(addr: SocketAddr, stats: StatsReader, started: Instant) -> io::Result<SocketAddr> {
    let l = TcpListener::bind(addr).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen on admin address {addr}: {e} (change `admin`)"),
        )
    })?;
    let bound = l.local_addr()?;
    std::thread::Builder::new()
        .name("wsplice-admin".into())
        .spawn(move || {
            for s in l.incoming().flatten() {
                let _ = serve(s, &stats, started);
            }
        })?;
    Ok(bound)
}

fn serve(s: TcpStream, stats: &StatsReader, started: Instant) -> io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut r = BufReader::new(&s);
    let mut line = String::new();
    r.read_line(&mut line)?;
    // Skip the rest of the head; nothing in it matters here.
    let mut h = String::new();
    while r.read_line(&mut h)? > 2 {
        h.clear();
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let c = stats.read();
    let (status, ctype, body) = match (method, path) {
        ("GET", "/metrics") => {
            let mut m = metrics(&c, stats, started);
            m.push_str(&stats.backends());
            m.push_str(&stats.routes());
            ("200 OK", "text/plain; version=0.0.4", m)
        }
        ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".to_string()),
        ("GET", "/status") => (
            "200 OK",
            "application/json",
            status_json(&c, stats, started),
        ),
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "try /metrics, /healthz or /status\n".into(),
        ),
        _ => ("405 Method Not Allowed", "text/plain", "GET only\n".into()),
    };
    let mut w = &s;
    write!(
        w,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
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

/// The `/status` keys the metric list marks, then the process's, the model and the workers.
fn status_json(c: &Counters, stats: &StatsReader, started: Instant) -> String {
    let mut fields = stats::status_fields(c);
    fields.extend(
        process(stats, started)
            .iter()
            .filter_map(|(f, v)| Some((f.json?, *v))),
    );
    let mut body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
    body.push(format!("\"worker_model\":\"{}\"", stats.model().as_str()));
    let workers: Vec<String> = stats
        .workers()
        .iter()
        .map(|w| {
            format!(
                "{{\"id\":{},\"pid\":{},\"connections\":{},\"restarts\":{}}}",
                w.id, w.pid, w.connections, w.restarts
            )
        })
        .collect();
    body.push(format!("\"workers\":[{}]", workers.join(",")));
    format!("{{{}}}\n", body.join(","))
}
