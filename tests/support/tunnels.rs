//! Long-lived tunnels for operations tests (reload, drain, worker processes): backends that
//! name themselves, a tunnel opener that reports which backend answered, and a traffic loop
//! that checks every echo until told to stop.

use super::{header, status, try_read_head, upgrade_request, Behavior, RawBackend};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A raw tunnel backend: answers the upgrade with a 101 that names the backend
/// (`X-Backend: NAME`), then echoes bytes.
pub async fn backend(name: &'static str) -> RawBackend {
    RawBackend::start_with(Behavior::Accept101EchoNamed(name)).await
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
    s.write_all(&upgrade_request(path, &[]))
        .await
        .map_err(|_| 0u16)?;
    let (head, _) = try_read_head(&mut s, 1 << 20).await.map_err(|_| 0u16)?;
    let code = status(&head).unwrap_or(0);
    if code != 101 {
        return Err(code);
    }
    let name = header(&head, "X-Backend").unwrap_or_else(|| "?".to_owned());
    Ok((s, name))
}

/// Tunnels each running [`traffic`] until [`Busy::stop`].
pub struct Busy {
    stop: Arc<AtomicBool>,
    bytes: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Result<u64, String>>>,
}

impl Busy {
    pub fn new() -> Busy {
        Busy {
            stop: Arc::new(AtomicBool::new(false)),
            bytes: Arc::new(AtomicU64::new(0)),
            tasks: Vec::new(),
        }
    }

    /// Starts [`traffic`] on the tunnel `s`.
    pub fn add(&mut self, s: TcpStream) {
        let task = traffic(s, self.stop.clone(), self.bytes.clone());
        self.tasks.push(tokio::spawn(task));
    }

    /// Stops the traffic and waits for every tunnel's clean close; a tunnel that failed fails
    /// the test as `tunnel {i} {what}: {error}`. Returns the records echoed and the bytes.
    pub async fn stop(self, what: &str) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let mut records = 0;
        for (i, t) in self.tasks.into_iter().enumerate() {
            match t.await.expect("tunnel task") {
                Ok(n) => records += n,
                Err(e) => panic!("tunnel {i} {what}: {e}"),
            }
        }
        (records, self.bytes.load(Ordering::Relaxed))
    }
}

/// After a SIGTERM: new connections to `addr` are refused within a second (the listener is
/// closed).
pub async fn assert_listener_closes(addr: SocketAddr, what: &str) {
    for _ in 0..50 {
        if TcpStream::connect(addr).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what} still accepts after SIGTERM");
}

/// The tunnels left open across a SIGTERM with a 2 s drain time (`sigterm`: when it was sent)
/// are closed by the proxy when the drain time ends, not before.
pub async fn assert_closed_at_drain_end(lingering: Vec<TcpStream>, sigterm: std::time::Instant) {
    for mut s in lingering {
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
            .await
            .expect("the proxy closes what is left after timeouts.drain")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
    assert!(
        sigterm.elapsed() >= Duration::from_millis(1900),
        "closed before the drain time"
    );
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
