//! Async tunnel helpers shared by the operations and worker-process tests: a backend that
//! names itself, opening a tunnel through the proxy, and a tunnel's checked echo traffic.
#![allow(dead_code)]

use super::{upgrade_head, ACCEPT};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// A raw tunnel backend: answers the upgrade with a 101 that names the backend
/// (`X-Backend: NAME`), then echoes bytes.
pub async fn backend(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if s.read(&mut b).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(b[0]);
                }
                let answer = format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {ACCEPT}\r\nX-Backend: {name}\r\n\r\n");
                if s.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Opens a tunnel through the proxy; returns the stream and the answering backend's name, or
/// the status code when it was not a 101.
pub async fn open(proxy: SocketAddr, path: &str) -> Result<(TcpStream, String), u16> {
    open_from(proxy, path, None).await
}

/// [`open`] from a given local address (such as 127.0.0.2, for per-IP limits).
pub async fn open_from(
    proxy: SocketAddr,
    path: &str,
    source: Option<IpAddr>,
) -> Result<(TcpStream, String), u16> {
    let sock = TcpSocket::new_v4().map_err(|_| 0u16)?;
    if let Some(ip) = source {
        sock.bind(SocketAddr::new(ip, 0)).map_err(|_| 0u16)?;
    }
    let mut s = sock.connect(proxy).await.map_err(|_| 0u16)?;
    s.write_all(upgrade_head(path).as_bytes())
        .await
        .map_err(|_| 0u16)?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).await.unwrap_or(0) == 0 {
            return Err(0);
        }
        head.push(b[0]);
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let code: u16 = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    if code != 101 {
        return Err(code);
    }
    let name = text
        .lines()
        .find_map(|l| l.strip_prefix("X-Backend: "))
        .unwrap_or("?")
        .to_string();
    Ok((s, name))
}

/// One tunnel's life: send numbered 32-byte records until told to stop, check every echo.
pub async fn traffic(
    mut s: TcpStream,
    stop: Arc<AtomicBool>,
    bytes: Arc<AtomicU64>,
) -> Result<u64, String> {
    let mut n = 0u64;
    let mut buf = [0u8; 32];
    while !stop.load(Ordering::Relaxed) {
        let rec = format!("{n:031}\n");
        s.write_all(rec.as_bytes())
            .await
            .map_err(|e| format!("write #{n}: {e}"))?;
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
            .await
            .map_err(|_| format!("echo #{n} timed out"))?
            .map_err(|e| format!("echo #{n}: {e}"))?;
        if buf != rec.as_bytes() {
            return Err(format!("echo #{n} differs"));
        }
        bytes.fetch_add(32, Ordering::Relaxed);
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A clean close: our FIN, then the backend's.
    s.shutdown().await.map_err(|e| format!("shutdown: {e}"))?;
    let rest = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .map_err(|_| "no FIN after ours".to_string())?
        .map_err(|e| format!("after FIN: {e}"))?;
    if rest != 0 {
        return Err(format!("{rest} unexpected bytes after FIN"));
    }
    Ok(n)
}
