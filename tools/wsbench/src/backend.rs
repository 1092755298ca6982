//! `backend`: the WebSocket server behind the proxy under test.
//!
//! Every accepted connection (any path) echoes text and binary messages back unchanged; a
//! connection whose first request is not an upgrade is served plain HTTP/1.1 with keep-alive
//! instead (`GET /bytes/N`, see `http.rs`).
//! A line-based TCP control port triggers notification pushes:
//!
//! ```text
//! broadcast SIZE [ID]\n  ->  ok N\n   N = clients the message was queued to
//! count\n                ->  ok N\n   N = connected WebSocket clients
//! ```
//!
//! A broadcast message is binary, SIZE bytes (at least 16): bytes 0..8 are the trigger time
//! in nanoseconds since the UNIX epoch (little endian), 8..16 the ID, the rest filler derived
//! from the ID (see `common::fill`), so receivers can check it byte for byte.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Bytes, Message};

#[derive(Default)]
struct Counters {
    connected: AtomicU64,
    accepted: AtomicU64,
    handshake_failed: AtomicU64,
    lagged: AtomicU64,
    /// Connections that carried plain HTTP requests instead of an upgrade.
    http: AtomicU64,
}

pub async fn run(listen: Vec<SocketAddr>, control: Option<SocketAddr>) -> Result<(), String> {
    let (tx, _) = broadcast::channel::<Bytes>(64);
    let counters = Arc::new(Counters::default());
    let mut bound = Vec::new();
    for addr in &listen {
        let l = TcpListener::bind(addr).await.map_err(|e| format!("listen {addr}: {e}"))?;
        bound.push(l.local_addr().map_err(|e| e.to_string())?);
        tokio::spawn(accept_loop(l, tx.clone(), counters.clone()));
    }
    let mut ctl_addr = None;
    if let Some(addr) = control {
        let l = TcpListener::bind(addr).await.map_err(|e| format!("control {addr}: {e}"))?;
        ctl_addr = Some(l.local_addr().map_err(|e| e.to_string())?);
        tokio::spawn(control_loop(l, tx.clone(), counters.clone()));
    }
    // One line for scripts waiting on readiness, like wsplice's `ready`.
    println!(
        "{}",
        json!({"mode": "backend", "ready": true, "listen": bound.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
               "control": ctl_addr.map(|a| a.to_string())})
    );
    eprintln!("backend: ready on {bound:?}, control {ctl_addr:?}");
    wait_for_signal().await;
    eprintln!(
        "backend: exiting; accepted {} (plain HTTP {}) handshake_failed {} lagged {}",
        counters.accepted.load(Ordering::Relaxed),
        counters.http.load(Ordering::Relaxed),
        counters.handshake_failed.load(Ordering::Relaxed),
        counters.lagged.load(Ordering::Relaxed)
    );
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

async fn accept_loop(l: TcpListener, tx: broadcast::Sender<Bytes>, counters: Arc<Counters>) {
    loop {
        match l.accept().await {
            Ok((s, _)) => {
                counters.accepted.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(serve(s, tx.subscribe(), counters.clone()));
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                eprintln!("backend: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve(s: TcpStream, mut rx: broadcast::Receiver<Bytes>, counters: Arc<Counters>) {
    let _ = s.set_nodelay(true);
    let config = WebSocketConfig::default()
        .read_buffer_size(32 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(64 << 20));
    let mut ws = if crate::http::peek_is_upgrade(&s).await {
        match tokio_tungstenite::accept_async_with_config(s, Some(config)).await {
            Ok(ws) => ws,
            Err(_) => {
                counters.handshake_failed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    } else {
        counters.http.fetch_add(1, Ordering::Relaxed);
        // Plain requests; an upgrade after them (a reused pooled connection) is answered here.
        let Some(up) = crate::http::serve(s).await else { return };
        let mut stream = up.stream;
        let answer = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
            derive_accept_key(up.key.as_bytes())
        );
        if stream.write_all(answer.as_bytes()).await.is_err() {
            counters.handshake_failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        tokio_tungstenite::WebSocketStream::from_partially_read(stream, up.read_ahead, Role::Server, Some(config)).await
    };
    counters.connected.fetch_add(1, Ordering::Relaxed);
    loop {
        tokio::select! {
            m = ws.next() => match m {
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                    if ws.send(m).await.is_err() {
                        break;
                    }
                }
                // Pings are answered and Close is echoed by tungstenite itself; the stream
                // ends once the closing handshake is done.
                Some(Ok(_)) => {}
                None | Some(Err(_)) => break,
            },
            b = rx.recv() => match b {
                Ok(bytes) => {
                    if ws.send(Message::Binary(bytes)).await.is_err() {
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    counters.lagged.fetch_add(n, Ordering::Relaxed);
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
        }
    }
    counters.connected.fetch_sub(1, Ordering::Relaxed);
}

async fn control_loop(l: TcpListener, tx: broadcast::Sender<Bytes>, counters: Arc<Counters>) {
    loop {
        let Ok((s, _)) = l.accept().await else { continue };
        let (tx, counters) = (tx.clone(), counters.clone());
        tokio::spawn(async move {
            let (r, mut w) = s.into_split();
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let reply = handle_control(&line, &tx, &counters);
                if w.write_all(reply.as_bytes()).await.is_err() {
                    break;
                }
            }
        });
    }
}

fn handle_control(line: &str, tx: &broadcast::Sender<Bytes>, counters: &Counters) -> String {
    let mut words = line.split_whitespace();
    match words.next() {
        Some("broadcast") => {
            let size: usize = match words.next().and_then(|w| w.parse().ok()) {
                Some(s) if (16..=16 << 20).contains(&s) => s,
                _ => return "err size must be 16..16777216\n".into(),
            };
            let id: u64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
            let mut buf = vec![0u8; size];
            crate::common::fill(&mut buf[16..], id);
            buf[8..16].copy_from_slice(&id.to_le_bytes());
            buf[0..8].copy_from_slice(&crate::common::unix_nanos().to_le_bytes());
            let n = tx.send(Bytes::from(buf)).unwrap_or(0);
            format!("ok {n}\n")
        }
        Some("count") => format!("ok {}\n", counters.connected.load(Ordering::Relaxed)),
        _ => "err unknown command (broadcast SIZE [ID] | count)\n".into(),
    }
}
