//! The shape matrix: message sizes × write shapes through a proxy, and the proxy's CPU per GB and
//! per message for every cell.
//!
//! The arrival shape is what decides whether a relay should splice or copy, so the client writes
//! raw WebSocket frames itself (tungstenite would choose its own writes) and the backend echoes
//! raw bytes with the chunking it read them in (so the way back has the same shape as the way
//! out, as far as the proxy's own writes preserve it):
//!
//! ```text
//!  shapes client ──frames, written whole / in 1-4 KiB pieces / back to back──▶ proxy
//!        ▲                                                                      │
//!        └──────────────────── same bytes ◀── raw echo (in this process) ◀──────┘
//! ```
//!
//! Writers (per connection, TCP_NODELAY so that every write is its own segment):
//! - `whole`: one write per message, one message in flight (closed loop);
//! - `split`: each message written in pieces of 1-4 KiB (uniformly random), one in flight;
//! - `stream`: one write per message, back to back, up to 64 messages (at most ~1 MiB, at
//!   least 2) in flight.
//!
//! Client frames carry the mask bit with an all-zero key (legal, and the payload is then sent
//! as is); the echo carries the same bytes back, so the reader accepts masked frames. Every
//! echoed payload is compared with what was sent (sequence number in its first 8 bytes).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant as TInstant;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::common::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Writer {
    Whole,
    Split,
    Stream,
}

impl Writer {
    pub fn parse(s: &str) -> Result<Writer, String> {
        match s {
            "whole" => Ok(Writer::Whole),
            "split" => Ok(Writer::Split),
            "stream" => Ok(Writer::Stream),
            _ => Err(format!("unknown writer {s:?}: whole, split or stream")),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Writer::Whole => "whole",
            Writer::Split => "split",
            Writer::Stream => "stream",
        }
    }

    /// Messages in flight per connection.
    fn window(self, size: usize) -> usize {
        match self {
            Writer::Whole | Writer::Split => 1,
            Writer::Stream => ((1usize << 20) / size.max(1)).clamp(2, 64),
        }
    }
}

/// A proxy under test: a name for the report (e.g. its relay mode), where to connect, and the
/// process (tree) whose CPU is measured.
pub struct Proxy {
    pub name: String,
    pub target: Target,
    pub pid: Option<u32>,
}

impl Proxy {
    /// `NAME=ws://IP:PORT/path@PID` (the `@PID` is optional).
    pub fn parse(spec: &str) -> Result<Proxy, String> {
        let (name, rest) = spec.split_once('=').ok_or_else(|| format!("{spec:?}: want NAME=URL[@PID]"))?;
        let (url, pid) = match rest.rsplit_once('@') {
            Some((u, p)) => (u, Some(p.parse::<u32>().map_err(|e| format!("{spec:?}: pid: {e}"))?)),
            None => (rest, None),
        };
        Ok(Proxy { name: name.to_string(), target: Target::parse(url)?, pid })
    }
}

pub struct Matrix {
    /// Each cell runs against every proxy in turn, `repeats` times: the machine's load
    /// changes from minute to minute, so the proxies compared share each cell's minute.
    pub proxies: Vec<Proxy>,
    pub repeats: usize,
    pub sources: Arc<Sources>,
    pub backend: Option<std::net::SocketAddr>,
    pub conns: usize,
    pub sizes: Vec<usize>,
    pub writers: Vec<Writer>,
    pub duration: f64,
}

/// Runs every cell in turn; one JSON value with a `cells` array.
pub async fn run(m: Matrix) -> (Value, bool) {
    if let Some(addr) = m.backend {
        match TcpListener::bind(addr).await {
            Ok(l) => {
                tokio::spawn(echo_backend(l));
            }
            Err(e) => return (json!({"mode": "shapes", "ok": false, "errors": {io_reason("backend bind", &e): 1}}), false),
        }
    }
    let mut cells = Vec::new();
    let mut ok = true;
    for &size in &m.sizes {
        for &w in &m.writers {
            for rep in 1..=m.repeats {
                for p in &m.proxies {
                    let mut c = cell(&m, p, size, w).await;
                    c["proxy"] = json!(p.name);
                    c["repeat"] = json!(rep);
                    eprintln!("shapes: {c}");
                    ok &= c["errors"].as_object().map(|o| o.is_empty()).unwrap_or(false);
                    cells.push(c);
                }
            }
        }
    }
    let proxies: Vec<Value> = m.proxies.iter().map(|p| json!({"name": p.name, "target": p.target.url, "pid": p.pid})).collect();
    let params = json!({"proxies": proxies, "repeats": m.repeats, "conns": m.conns, "duration_s": m.duration,
                        "sizes": m.sizes, "writers": m.writers.iter().map(|w| w.name()).collect::<Vec<_>>()});
    (json!({"mode": "shapes", "params": params, "cells": cells, "ok": ok}), ok)
}

/// Machine-wide CPU seconds processes used (user + nice + system, all CPUs) from /proc/stat.
/// Interrupt time (loopback traffic) is charged to no process, so it stays out of both sides
/// of the foreign-CPU subtraction, as in tools/compare.
fn sys_busy_s() -> f64 {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = s.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    if f.len() < 3 {
        return 0.0;
    }
    // SAFETY: sysconf has no memory effects.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (f[0] + f[1] + f[2]) as f64 / tck
}

fn loadavg() -> Value {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let v: Vec<f64> = s.split_whitespace().take(3).filter_map(|x| x.parse().ok()).collect();
    json!(v)
}

/// CPU time (ns) a process and its descendants have run, all threads, from
/// /proc/PID/task/TID/schedstat: nanoseconds, where /proc/PID/stat counts 10 ms ticks.
fn tree_cpu_ns(pid: u32) -> u64 {
    let mut pids = vec![pid];
    let mut i = 0;
    while i < pids.len() {
        let p = pids[i];
        if let Ok(rd) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for t in rd.flatten() {
                let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
                pids.extend(kids.split_whitespace().filter_map(|k| k.parse::<u32>().ok()));
            }
        }
        i += 1;
    }
    let mut ns = 0;
    for p in pids {
        let Ok(rd) = std::fs::read_dir(format!("/proc/{p}/task")) else { continue };
        for t in rd.flatten() {
            let s = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
            ns += s.split_whitespace().next().and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    ns
}

async fn cell(m: &Matrix, proxy: &Proxy, size: usize, w: Writer) -> Value {
    let errors = Tally::default();
    let deadline = TInstant::now() + Duration::from_secs_f64(m.duration + 60.0);
    let mut streams = Vec::new();
    for i in 0..m.conns {
        match tokio::time::timeout_at(deadline, open(&proxy.target, &m.sources)).await {
            Ok(Ok(s)) => streams.push(s),
            Ok(Err(e)) => errors.add(e),
            Err(_) => errors.add(format!("connect {i}: timeout")),
        }
    }
    let load_before = loadavg();
    let proxy0 = proxy.pid.map(tree_cpu_ns);
    let (self0, busy0) = (self_cpu_s(), sys_busy_s());
    let start = Instant::now();
    let end = TInstant::now() + Duration::from_secs_f64(m.duration);
    let msgs = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (i, s) in streams.into_iter().enumerate() {
        let (errors, msgs) = (errors.clone(), msgs.clone());
        tasks.push(tokio::spawn(conn(s, i as u64, size, w, end, deadline, msgs, errors)));
    }
    for t in tasks {
        let _ = t.await;
    }
    let wall = start.elapsed().as_secs_f64();
    let proxy1 = proxy.pid.map(tree_cpu_ns);
    let (self1, busy1) = (self_cpu_s(), sys_busy_s());
    let proxy_cpu = match (proxy0, proxy1) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / 1e9),
        _ => None,
    };
    let n = msgs.load(Ordering::Relaxed);
    // Frame bytes the proxy moved: each echoed message crossed it twice (up and down).
    let frame = size + header_len(size);
    let relayed = 2 * n * frame as u64;
    let ours = self1 - self0 + proxy_cpu.unwrap_or(0.0);
    let ncpu = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
    let foreign_pct = ((busy1 - busy0 - ours).max(0.0)) / (wall * ncpu) * 100.0;
    json!({
        "size": size, "writer": w.name(), "window": w.window(size), "conns": m.conns,
        "wall_s": wall, "messages": n, "relayed_bytes": relayed,
        "msgs_per_s": n as f64 / wall,
        "proxy_cpu_s": proxy_cpu,
        "proxy_cpu_s_per_gb": proxy_cpu.map(|c| if relayed > 0 { c / (relayed as f64 / 1e9) } else { f64::NAN }),
        "proxy_cpu_us_per_msg": proxy_cpu.map(|c| if n > 0 { c / n as f64 * 1e6 } else { f64::NAN }),
        "self_cpu_s": self1 - self0,
        "foreign_cpu_pct": foreign_pct,
        "loadavg_before": load_before, "loadavg_after": loadavg(),
        "errors": errors.to_json(),
    })
}

fn header_len(size: usize) -> usize {
    2 + 4 + if size < 126 { 0 } else if size < 65536 { 2 } else { 8 }
}

/// A binary frame, masked with the all-zero key, around `payload`.
fn frame(payload: &[u8]) -> Vec<u8> {
    let n = payload.len();
    let mut f = Vec::with_capacity(n + 14);
    f.push(0x82);
    if n < 126 {
        f.push(0x80 | n as u8);
    } else if n < 65536 {
        f.push(0x80 | 126);
        f.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&(n as u64).to_be_bytes());
    }
    f.extend_from_slice(&[0, 0, 0, 0]);
    f.extend_from_slice(payload);
    f
}

/// TCP connect and the upgrade, by hand: the stream is ours to write in any shape afterwards.
async fn open(target: &Target, sources: &Sources) -> Result<TcpStream, String> {
    let mut s = tcp_connect(target, sources).await?;
    let path = target.url.splitn(4, '/').nth(3).unwrap_or("");
    let req = format!(
        "GET /{path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        target.addr
    );
    s.write_all(req.as_bytes()).await.map_err(|e| io_reason("handshake write", &e))?;
    let head = read_head(&mut s).await.map_err(|e| format!("handshake: {e}"))?;
    if !head.starts_with("HTTP/1.1 101") {
        return Err(format!("handshake: {}", head.lines().next().unwrap_or("").trim()));
    }
    let want = derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ==");
    if !head.lines().any(|l| l.to_ascii_lowercase().starts_with("sec-websocket-accept:") && l.contains(&want)) {
        return Err("handshake: bad Sec-WebSocket-Accept".into());
    }
    Ok(s)
}

/// Reads byte by byte up to the blank line (nothing past the head is consumed).
async fn read_head(s: &mut TcpStream) -> Result<String, String> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 {
            return Err("head over 16 KiB".into());
        }
        match s.read(&mut b).await {
            Ok(0) => return Err("closed before the head ended".into()),
            Ok(_) => head.push(b[0]),
            Err(e) => return Err(io_reason("read head", &e)),
        }
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

#[allow(clippy::too_many_arguments)]
async fn conn(s: TcpStream, id: u64, size: usize, w: Writer, end: TInstant, deadline: TInstant, msgs: Arc<AtomicU64>, errors: Tally) {
    let mut template = vec![0u8; size.max(8)];
    fill(&mut template, 0x5_0000 + id);
    template.truncate(size);
    let template = Arc::new(template);
    let (rd, mut wr) = s.into_split();
    let window = Arc::new(Semaphore::new(w.window(size)));
    let writer = {
        let (template, window, errors) = (template.clone(), window.clone(), errors.clone());
        async move {
            let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (id + 1);
            let mut seq = 0u64;
            while TInstant::now() < end {
                let Ok(Ok(p)) = tokio::time::timeout_at(end, window.acquire()).await else { break };
                p.forget();
                let f = frame(&stamp(&template, seq));
                let res = if w == Writer::Split {
                    let mut at = 0;
                    let mut r = Ok(());
                    while at < f.len() && r.is_ok() {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        let piece = 1024 + (rng % 3073) as usize;
                        let to = (at + piece).min(f.len());
                        r = wr.write_all(&f[at..to]).await;
                        at = to;
                    }
                    r
                } else {
                    wr.write_all(&f).await
                };
                if let Err(e) = res {
                    errors.add(io_reason("shapes write", &e));
                    break;
                }
                seq += 1;
            }
            let _ = wr.shutdown().await;
            seq
        }
    };
    let reader = {
        let (template, window, errors) = (template.clone(), window.clone(), errors.clone());
        async move {
            let mut rd = BufReader::with_capacity(256 * 1024, rd);
            let mut buf = vec![0u8; size];
            let mut seq = 0u64;
            loop {
                // The writer ends with FIN; the echo's FIN after the last frame ends the reader.
                let b0 = match rd.read_u8().await {
                    Ok(b) => b,
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                    Err(e) => {
                        errors.add(io_reason("shapes read", &e));
                        break;
                    }
                };
                let rest = async {
                    let b1 = rd.read_u8().await?;
                    let len = match b1 & 0x7f {
                        126 => rd.read_u16().await? as usize,
                        127 => rd.read_u64().await? as usize,
                        n => n as usize,
                    };
                    if b1 & 0x80 != 0 {
                        let mut k = [0u8; 4];
                        rd.read_exact(&mut k).await?;
                    }
                    if len == size {
                        rd.read_exact(&mut buf).await?;
                    }
                    Ok::<_, std::io::Error>(len)
                };
                let len = match rest.await {
                    Ok(l) => l,
                    Err(e) => {
                        errors.add(io_reason("shapes read", &e));
                        break;
                    }
                };
                if b0 != 0x82 || len != size {
                    errors.add(format!("shapes: unexpected frame (first byte {b0:#x}, length {len})"));
                    break;
                }
                if buf != stamp(&template, seq) {
                    errors.add("shapes: echoed payload differs");
                    break;
                }
                seq += 1;
                msgs.fetch_add(1, Ordering::Relaxed);
                window.add_permits(1);
            }
            seq
        }
    };
    match tokio::time::timeout_at(deadline, async { tokio::join!(writer, reader) }).await {
        Ok((n_sent, n_back)) if n_sent != n_back => errors.add(format!("shapes: {} of {n_sent} messages not echoed", n_sent - n_back)),
        Ok(_) => {}
        Err(_) => errors.add("shapes: echo not back by the deadline"),
    }
}

fn stamp(template: &[u8], seq: u64) -> Vec<u8> {
    let mut b = template.to_vec();
    let n = b.len().min(8);
    b[..n].copy_from_slice(&seq.to_le_bytes()[..n]);
    b
}

/// The raw echo backend: answers the upgrade, then writes back every read as it came.
async fn echo_backend(l: TcpListener) {
    loop {
        let Ok((mut s, _)) = l.accept().await else { continue };
        tokio::spawn(async move {
            let _ = s.set_nodelay(true);
            let Ok(head) = read_head(&mut s).await else { return };
            let key = head
                .lines()
                .find_map(|l| l.split_once(':').filter(|(k, _)| k.trim().eq_ignore_ascii_case("sec-websocket-key")))
                .map(|(_, v)| v.trim().to_string());
            let Some(key) = key else {
                let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n").await;
                return;
            };
            let resp = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                derive_accept_key(key.as_bytes())
            );
            if s.write_all(resp.as_bytes()).await.is_err() {
                return;
            }
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = s.shutdown().await;
        });
    }
}
