//! The WebSocket echo backend: a real server handshake (tungstenite checks the upgrade and
//! answers with `Sec-WebSocket-Accept`), then every text or binary message is sent back as is.
//!
//! It runs as a child process of the soak tool (`soak backend`), so its sockets do not count
//! against the client process's open-file limit. It prints `listen ADDR`, serves until its
//! stdin closes, then prints one JSON line of counters and exits.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use crate::net;

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    messages: AtomicU64,
    bytes: AtomicU64,
    /// Ended by the client's Close (as opposed to a reset or EOF without one).
    closed_clean: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Counters {
    fn error(&self, reason: String) {
        *self.errors.lock().expect("lock").entry(reason).or_default() += 1;
    }
}

pub async fn run(listen: SocketAddr) -> Result<(), String> {
    net::raise_nofile();
    let l = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("backend bind {listen}: {e}"))?;
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    println!("listen {addr}");
    let counters = Arc::new(Counters::default());
    let c = counters.clone();
    tokio::spawn(async move {
        loop {
            match l.accept().await {
                Ok((s, _)) => {
                    c.accepted.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(serve(s, c.clone()));
                }
                Err(e) => {
                    c.error(net::io_reason("accept", &e));
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
        }
    });
    // The parent closes our stdin when it is done (or dies).
    let mut stdin = tokio::io::stdin();
    let mut sink = [0u8; 64];
    while stdin.read(&mut sink).await.map(|n| n > 0).unwrap_or(false) {}
    let errors = counters.errors.lock().expect("lock").clone();
    println!(
        "{}",
        json!({
            "accepted": counters.accepted.load(Ordering::Relaxed),
            "messages": counters.messages.load(Ordering::Relaxed),
            "bytes": counters.bytes.load(Ordering::Relaxed),
            "closed_clean": counters.closed_clean.load(Ordering::Relaxed),
            "errors": errors,
        })
    );
    Ok(())
}

async fn serve(s: TcpStream, c: Arc<Counters>) {
    let _ = s.set_nodelay(true);
    let mut ws = match tokio_tungstenite::accept_async_with_config(s, Some(net::ws_config())).await
    {
        Ok(ws) => ws,
        Err(e) => return c.error(net::ws_reason("handshake", &e)),
    };
    while let Some(m) = ws.next().await {
        let m = match m {
            Ok(m) => m,
            Err(e) => return c.error(net::ws_reason("read", &e)),
        };
        match m {
            Message::Text(_) | Message::Binary(_) => {
                c.messages.fetch_add(1, Ordering::Relaxed);
                c.bytes.fetch_add(m.len() as u64, Ordering::Relaxed);
                if let Err(e) = ws.send(m).await {
                    return c.error(net::ws_reason("write", &e));
                }
            }
            // tungstenite queues the Close reply; the next poll flushes it and ends the stream.
            Message::Close(_) => {
                c.closed_clean.fetch_add(1, Ordering::Relaxed);
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }
}
