//! Plain HTTP/1.1: the backend's answer to GET requests (beside its WebSocket echo) and the
//! `http` client mode, keep-alive GETs in a closed loop with every body checked.
//!
//! ```text
//! GET /bytes/N  ->  200, Content-Length: N, body = fill(N bytes, seed N)  (N <= 64 MiB)
//! anything else ->  404
//! ```
//!
//! The backend tells an upgrade from a plain request by peeking at the head (nothing is
//! consumed), so tungstenite still reads the whole upgrade request itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant as TInstant;

use crate::clients::{cpu_delta, Common, Outcome};
use crate::common::*;

/// Largest body `/bytes/N` serves.
const MAX_BODY: usize = 64 << 20;
/// Largest request or response head read.
const MAX_HEAD: usize = 16 * 1024;

/// The body of `/bytes/N`, built once per size.
fn body(n: usize) -> Arc<Vec<u8>> {
    static CACHE: OnceLock<Mutex<HashMap<usize, Arc<Vec<u8>>>>> = OnceLock::new();
    let mut cache = CACHE.get_or_init(Default::default).lock().unwrap();
    cache
        .entry(n)
        .or_insert_with(|| {
            let mut b = vec![0u8; n];
            fill(&mut b, n as u64);
            Arc::new(b)
        })
        .clone()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Waits, without consuming anything, until the request head is complete; true when it asks
/// for a WebSocket upgrade. A client that closes before a full head is not an upgrade.
pub async fn peek_is_upgrade(s: &TcpStream) -> bool {
    let mut buf = vec![0u8; MAX_HEAD];
    let deadline = TInstant::now() + Duration::from_secs(10);
    loop {
        let n = match s.peek(&mut buf).await {
            Ok(n) if n > 0 => n,
            _ => return false,
        };
        if let Some(end) = find(&buf[..n], b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            return head.lines().any(|l| {
                l.split_once(':')
                    .is_some_and(|(k, v)| k.trim() == "upgrade" && v.trim() == "websocket")
            });
        }
        if n == buf.len() || TInstant::now() > deadline {
            return false;
        }
        // A partial head (rare on loopback): peek again shortly.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// An upgrade request met on a connection that carried plain requests before (a proxy
/// reusing a pooled backend connection, as nginx with `keepalive` does): the connection, the
/// bytes read past the request head, and the request's `Sec-WebSocket-Key`.
pub struct Upgrade {
    pub stream: TcpStream,
    pub read_ahead: Vec<u8>,
    pub key: String,
}

/// Serves plain requests on one connection until the client closes or asks to, or until it
/// sends an upgrade request, which is handed back to the WebSocket side.
pub async fn serve(s: TcpStream) -> Option<Upgrade> {
    let (r, mut w) = s.into_split();
    let mut r = BufReader::with_capacity(16 * 1024, r);
    let mut line = String::new();
    loop {
        // Request line and headers.
        line.clear();
        match r.read_line(&mut line).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        let mut words = line.split_whitespace();
        let (method, target, version) = (
            words.next().unwrap_or("").to_owned(),
            words.next().unwrap_or("").to_owned(),
            words.next().unwrap_or("").to_owned(),
        );
        let mut close = version != "HTTP/1.1";
        let mut length = 0usize;
        let (mut upgrade, mut key) = (false, None);
        let mut head_len = line.len();
        loop {
            line.clear();
            match r.read_line(&mut line).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => head_len += n,
            }
            if head_len > MAX_HEAD {
                return None;
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.trim().eq_ignore_ascii_case("sec-websocket-key") {
                    key = Some(v.trim().to_owned());
                }
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
                match k.as_str() {
                    "upgrade" if v == "websocket" => upgrade = true,
                    "connection" if v.split(',').any(|t| t.trim() == "close") => close = true,
                    "connection" if v.split(',').any(|t| t.trim() == "keep-alive") => close = false,
                    "content-length" => length = v.parse().unwrap_or(0),
                    // Only GETs are served: a chunked request body is not expected.
                    "transfer-encoding" => close = true,
                    _ => {}
                }
            }
        }
        if let (true, Some(key)) = (upgrade, key) {
            let read_ahead = r.buffer().to_vec();
            let stream = r.into_inner().reunite(w).ok()?;
            return Some(Upgrade { stream, read_ahead, key });
        }
        // A request body (none is expected) is read and dropped.
        if length > 0 && tokio::io::copy(&mut (&mut r).take(length as u64), &mut tokio::io::sink()).await.is_err() {
            return None;
        }
        let size = target.strip_prefix("/bytes/").and_then(|n| n.parse::<usize>().ok());
        let conn = if close { "Connection: close\r\n" } else { "" };
        let ok = match size {
            Some(n) if n <= MAX_BODY && (method == "GET" || method == "HEAD") => {
                let b = body(n);
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {n}\r\n{conn}\r\n"
                );
                let mut ok = w.write_all(head.as_bytes()).await.is_ok();
                if ok && method == "GET" {
                    ok = w.write_all(&b).await.is_ok();
                }
                ok
            }
            _ => {
                let msg = b"not found: GET /bytes/N\n";
                let head = format!(
                    "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{conn}\r\n",
                    msg.len()
                );
                w.write_all(head.as_bytes()).await.is_ok() && w.write_all(msg).await.is_ok()
            }
        };
        if !ok || close {
            let _ = w.shutdown().await;
            return None;
        }
    }
}

// ---------------------------------------------------------------------------------------
// the client mode

/// What one response looked like.
struct Answer {
    status: u16,
    length: usize,
    close: bool,
}

/// Reads one response head: status, Content-Length (required: the peers all pass the
/// backend's through) and whether the server closes after it.
async fn read_head(r: &mut BufReader<TcpStream>, line: &mut String) -> Result<Answer, String> {
    line.clear();
    match r.read_line(line).await {
        Ok(0) => return Err("http: closed before the response".into()),
        Err(e) => return Err(io_reason("http read", &e)),
        Ok(_) => {}
    }
    let mut words = line.split_whitespace();
    let version = words.next().unwrap_or("").to_owned();
    let status: u16 = words
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("http: bad status line {:?}", line.trim_end()))?;
    let mut a = Answer { status, length: usize::MAX, close: version != "HTTP/1.1" };
    let mut head_len = line.len();
    loop {
        line.clear();
        match r.read_line(line).await {
            Ok(0) => return Err("http: closed in the response head".into()),
            Err(e) => return Err(io_reason("http read", &e)),
            Ok(n) => head_len += n,
        }
        if head_len > MAX_HEAD {
            return Err("http: response head too long".into());
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
            match k.as_str() {
                "content-length" => {
                    a.length = v.parse().map_err(|_| format!("http: bad Content-Length {v:?}"))?
                }
                "transfer-encoding" => return Err(format!("http: unexpected Transfer-Encoding {v}")),
                "connection" if v.split(',').any(|t| t.trim() == "close") => a.close = true,
                _ => {}
            }
        }
    }
    if a.length == usize::MAX {
        return Err("http: response without Content-Length".into());
    }
    Ok(a)
}

type ConnRet = (hdrhistogram::Histogram<u64>, u64, u64, u64);

/// One connection's closed loop: a request, its whole response checked, the next request.
/// A response with `Connection: close` (or a closed connection between requests) opens a
/// new connection; that counts as a reconnect, and it is not an error.
async fn conn_loop(c: Arc<Common>, path: Arc<String>, expect: Arc<Vec<u8>>, t0: TInstant, end: TInstant, errors: Tally) -> ConnRet {
    let mut h = new_hist();
    let (mut done, mut bytes, mut reconnects) = (0u64, 0u64, 0u64);
    let host = c.target.addr.to_string();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: wsbench\r\n\r\n");
    let mut body = vec![0u8; expect.len()];
    let mut line = String::new();
    let mut conn: Option<BufReader<TcpStream>> = None;
    tokio::time::sleep_until(t0).await;
    // Until the end, or the first failure (counted; the connection's results so far stand).
    let run = async {
        while TInstant::now() < end {
            if conn.is_none() {
                let s = tokio::time::timeout_at(end + Duration::from_secs(5), tcp_connect(&c.target, &c.sources))
                    .await
                    .map_err(|_| "http: connect timeout".to_string())??;
                conn = Some(BufReader::with_capacity(64 * 1024, s));
            }
            let Some(r) = conn.as_mut() else { break };
            let start = Instant::now();
            let exchange = async {
                r.get_mut().write_all(request.as_bytes()).await.map_err(|e| io_reason("http write", &e))?;
                let a = read_head(r, &mut line).await?;
                if a.status != 200 {
                    return Err(format!("http: status {}", a.status));
                }
                if a.length != expect.len() {
                    return Err(format!("http: Content-Length {} instead of {}", a.length, expect.len()));
                }
                r.read_exact(&mut body).await.map_err(|e| io_reason("http body", &e))?;
                if body[..] != expect[..] {
                    return Err("http: body differs".to_string());
                }
                Ok::<bool, String>(a.close)
            };
            let close = tokio::time::timeout_at(end + Duration::from_secs(10), exchange)
                .await
                .map_err(|_| "http: response timeout".to_string())??;
            done += 1;
            bytes += expect.len() as u64;
            let _ = h.record(start.elapsed().as_nanos() as u64);
            if close {
                conn = None;
                reconnects += 1;
            }
        }
        Ok::<(), String>(())
    };
    if let Err(e) = run.await {
        errors.add(e);
    }
    (h, done, bytes, reconnects)
}

/// `c` keep-alive connections, each GETting the target's path (`/bytes/N`) in a closed loop
/// for `duration_s`; every body is compared with what the backend serves for that N.
pub async fn http(c: Common, conns_n: usize, duration_s: f64) -> Outcome {
    let errors = Tally::default();
    let mut params = json!({"target": c.target.url, "sources": c.sources.len(), "c": conns_n,
                            "duration_s": duration_s, "loop": "closed, keep-alive"});
    let path = c
        .target
        .url
        .strip_prefix("http://")
        .and_then(|r| r.find('/').map(|i| r[i..].to_owned()))
        .unwrap_or_else(|| "/".to_owned());
    let Some(size) = path.strip_prefix("/bytes/").and_then(|n| n.parse::<usize>().ok()).filter(|&n| n <= MAX_BODY) else {
        errors.add("http: the target's path must be /bytes/N (N <= 64 MiB)");
        return (params, json!({}), errors);
    };
    params["size"] = json!(size);
    let expect = body(size);
    let before = c.pid.map(proc_tree);
    let t0 = TInstant::now() + Duration::from_millis(50);
    let end = t0 + Duration::from_secs_f64(duration_s);
    let (c, path) = (Arc::new(c), Arc::new(path));
    let tasks: Vec<_> = (0..conns_n)
        .map(|_| tokio::spawn(conn_loop(c.clone(), path.clone(), expect.clone(), t0, end, errors.clone())))
        .collect();
    let mut hist = new_hist();
    let (mut requests, mut bytes, mut reconnects) = (0u64, 0u64, 0u64);
    for t in tasks {
        if let Ok((h, n, b, rc)) = t.await {
            let _ = hist.add(&h);
            requests += n;
            bytes += b;
            reconnects += rc;
        }
    }
    let elapsed = (TInstant::now() - t0).as_secs_f64().max(1e-9);
    let after = c.pid.map(proc_tree);
    let cpu = cpu_delta(&before, &after);
    let results = json!({
        "requests": requests,
        "requests_per_s": requests as f64 / elapsed.min(duration_s).max(1e-9),
        "mib_per_s": bytes as f64 / (1 << 20) as f64 / elapsed.min(duration_s).max(1e-9),
        "reconnects": reconnects,
        "latency": hist_us(&hist),
        "proc_before": before,
        "proc_after": after,
        "proxy_cpu_s": cpu,
        "proxy_cpu_us_per_request": cpu.as_f64().filter(|_| requests > 0).map(|s| s * 1e6 / requests as f64),
    });
    (params, results, errors)
}
