//! Sockets: connecting to the proxy, reading until the peer closes, checking silence, pushing
//! bytes through a tunnel, and opening one by hand. Async at the top, blocking twins below.

use std::io;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::{assert_status, check_refusal, read_head, upgrade_request, Proxy, RawBackend, STEP};

/// Connects to the proxy with TCP_NODELAY.
pub async fn connect(proxy: &Proxy) -> TcpStream {
    let s = match tokio::time::timeout(STEP, TcpStream::connect(proxy.addr())).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => panic!("connect to proxy: {e}"),
        Err(_) => panic!("connect to proxy timed out"),
    };
    let _ = s.set_nodelay(true);
    s
}

/// Connects to the proxy and writes `request` (an upgrade head, maybe with more bytes after it).
pub async fn send(proxy: &Proxy, request: &[u8]) -> TcpStream {
    let mut s = connect(proxy).await;
    s.write_all(request)
        .await
        .expect("client writes its request");
    s
}

/// Sends `request` on a fresh connection and returns the whole answer (the proxy must close).
pub async fn send_and_read_all(proxy: &Proxy, request: &[u8]) -> (Vec<u8>, End) {
    let mut s = send(proxy, request).await;
    read_to_end(&mut s, STEP).await
}

/// Sends `bytes` on a fresh connection and reads the whole answer, which must be the proxy's
/// own refusal with status `want` ([`check_refusal`]) followed by the close, within [`STEP`].
pub async fn try_refusal(proxy: &Proxy, bytes: &[u8], want: u16) -> Result<Vec<u8>, String> {
    let mut s = connect(proxy).await;
    // The proxy may answer and close before reading everything: ignore write errors.
    let _ = s.write_all(bytes).await;
    let (resp, _end) = try_read_to_end(&mut s, STEP).await?;
    check_refusal(&resp, want)?;
    Ok(resp)
}

/// Sends an upgrade for `path` and reads the answer head, which must be a 101.
pub async fn open_tunnel(proxy: &Proxy, path: &str) -> TcpStream {
    let mut client = send(proxy, &upgrade_request(path, &[])).await;
    let (resp, _) = read_head(&mut client).await;
    assert_status(&resp, 101, "the client's upgrade");
    client
}

/// How a read-until-end finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Eof,
    Reset,
}

/// Reads until EOF or reset, for at most `limit`; fails the test on timeout, printing what came.
pub async fn read_to_end(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, End) {
    match try_read_to_end(stream, limit).await {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    }
}

/// Reads until EOF or reset, for at most `limit`; the error says what arrived meanwhile.
pub async fn try_read_to_end(
    stream: &mut TcpStream,
    limit: Duration,
) -> Result<(Vec<u8>, End), String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => {
                return Err(format!(
                    "connection still open after {limit:?}; received {} bytes: {:?}",
                    buf.len(),
                    String::from_utf8_lossy(&buf[..buf.len().min(512)])
                ))
            }
            Ok(Ok(0)) => return Ok((buf, End::Eof)),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionReset => {
                return Ok((buf, End::Reset))
            }
            Ok(Err(e)) => return Err(format!("read error {e} after {} bytes", buf.len())),
        }
    }
}

/// Reads until the peer closes (within [`STEP`]) and asserts that nothing came meanwhile:
/// `what` names the bytes that must not exist, such as "backend bytes after its 403".
pub async fn assert_closed_without_bytes(stream: &mut TcpStream, what: &str) {
    let (got, _) = read_to_end(stream, STEP).await;
    assert!(
        got.is_empty(),
        "{what}: {} bytes arrived: {:?}",
        got.len(),
        String::from_utf8_lossy(&got[..got.len().min(512)])
    );
}

/// Reads exactly `n` bytes within [`STEP`].
pub async fn read_exact_n(stream: &mut TcpStream, n: usize, what: &str) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    match tokio::time::timeout(STEP, stream.read_exact(&mut buf)).await {
        Ok(Ok(_)) => buf,
        Ok(Err(e)) => panic!("{what}: reading {n} bytes: {e}"),
        Err(_) => panic!("{what}: {n} bytes did not arrive within {STEP:?}"),
    }
}

/// Asserts nothing arrives on `stream` for `wait` (the connection stays open and silent).
pub async fn assert_silent(stream: &mut TcpStream, wait: Duration, what: &str) {
    let mut b = [0u8; 1024];
    match tokio::time::timeout(wait, stream.read(&mut b)).await {
        Err(_) => {}
        Ok(Ok(0)) => panic!("{what}: connection closed"),
        Ok(Ok(n)) => panic!(
            "{what}: unexpected {n} bytes {:?}",
            String::from_utf8_lossy(&b[..n])
        ),
        Ok(Err(e)) => panic!("{what}: {e}"),
    }
}

/// Waits up to [`STEP`] for the peer to close (EOF or reset), discarding data; returns how long it took.
pub async fn wait_closed(stream: &mut TcpStream, what: &str) -> Duration {
    let start = Instant::now();
    let mut chunk = [0u8; 16384];
    loop {
        match tokio::time::timeout(STEP, stream.read(&mut chunk)).await {
            Err(_) => panic!("{what}: still open after {STEP:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return start.elapsed(),
            Ok(Ok(_)) => {}
        }
    }
}

/// Polls `cond` every 10 ms for up to `within`.
pub async fn eventually(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Writes `data` to `s` on a task of its own, so that the test can read meanwhile (a large
/// write would block on a peer that is not read); the task gives the stream back.
pub fn write_in_background<W>(mut s: W, data: Vec<u8>, what: &'static str) -> JoinHandle<W>
where
    W: AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        s.write_all(&data).await.expect(what);
        s
    })
}

/// The tunnel carries `up` from the client to the backend, then `down` back.
pub async fn pump_both_ways(
    client: &mut TcpStream,
    server: &mut TcpStream,
    up: &[u8],
    down: &[u8],
) {
    pump(client, server, up, "client -> backend").await;
    pump(server, client, down, "backend -> client").await;
}

/// Writes `data` on `from` while reading the same number of bytes on `to`; asserts equality.
pub async fn pump(from: &mut TcpStream, to: &mut TcpStream, data: &[u8], what: &str) {
    let (got, wrote) = tokio::join!(
        async {
            let mut buf = vec![0u8; data.len()];
            tokio::time::timeout(STEP, to.read_exact(&mut buf))
                .await
                .map(|r| r.map(|_| buf))
        },
        async { tokio::time::timeout(STEP, from.write_all(data)).await }
    );
    match wrote {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("{what}: write: {e}"),
        Err(_) => panic!(
            "{what}: write of {} bytes did not finish within {STEP:?}",
            data.len()
        ),
    }
    match got {
        Ok(Ok(buf)) => assert!(
            buf == data,
            "{what}: {} bytes arrived but differ",
            data.len()
        ),
        Ok(Err(e)) => panic!("{what}: read: {e}"),
        Err(_) => panic!(
            "{what}: {} bytes did not arrive within {STEP:?}",
            data.len()
        ),
    }
}

/// Deterministic bytes that make reordering or loss visible.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 31 + (i >> 8) * 7) as u8).wrapping_add(seed))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Raw tunnels
// ---------------------------------------------------------------------------------------------

/// Opens `path` through the proxy to a manual [`RawBackend`] with a hand-made handshake;
/// returns the (client, backend) ends of the tunnel.
pub async fn raw_tunnel(proxy: &Proxy, backend: &RawBackend, path: &str) -> (TcpStream, TcpStream) {
    let mut client = send(proxy, &upgrade_request(path, &[])).await;
    let (server, _) = backend.accept_101().await;
    let (resp, rest) = read_head(&mut client).await;
    assert_status(&resp, 101, "the client's upgrade");
    assert!(
        rest.is_empty(),
        "client got {} unexpected bytes after the 101",
        rest.len()
    );
    (client, server)
}

/// Blocking twins on std sockets; each socket they make reads with a [`STEP`] timeout.
pub mod blocking {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::time::{Duration, Instant};

    use super::super::blocking::try_read_head;
    use super::super::{status, upgrade_request, STEP};

    /// Connects to `proxy`; reads time out after [`STEP`].
    pub fn connect(proxy: SocketAddr) -> TcpStream {
        let s = TcpStream::connect(proxy).expect("connect to proxy");
        s.set_read_timeout(Some(STEP)).expect("read timeout");
        s
    }

    /// Connects to `proxy` and writes `request`.
    pub fn send(proxy: SocketAddr, request: &[u8]) -> TcpStream {
        let mut s = connect(proxy);
        s.write_all(request).expect("client writes its request");
        s
    }

    /// Sends an upgrade for `path` and reads the answer, which must be a 101.
    pub fn open_tunnel(proxy: SocketAddr, path: &str) -> TcpStream {
        let mut s = send(proxy, &upgrade_request(path, &[]));
        let head = try_read_head(&mut s).expect("an answer to the upgrade");
        assert_eq!(
            status(&head),
            Some(101),
            "{}",
            String::from_utf8_lossy(&head)
        );
        s
    }

    /// A tunnel on `path` to an echoing backend, checked with one echo; its reads time out
    /// after `wait`.
    pub fn echoing_tunnel(proxy: SocketAddr, path: &str, wait: Duration) -> TcpStream {
        let mut s = TcpStream::connect(proxy).expect("connect to the proxy");
        s.set_read_timeout(Some(wait)).expect("timeout");
        s.write_all(&upgrade_request(path, &[])).expect("upgrade");
        let head = try_read_head(&mut s).expect("the proxy answers");
        assert!(
            head.starts_with(b"HTTP/1.1 101 "),
            "{path}: {:?}",
            String::from_utf8_lossy(&head)
        );
        roundtrip(&mut s, b"ping");
        s
    }

    /// Writes `msg` into a tunnel to an echoing backend and expects it back.
    pub fn roundtrip(s: &mut TcpStream, msg: &[u8]) {
        s.write_all(msg).expect("tunnel write");
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got).expect("tunnel echo");
        assert_eq!(got, msg);
    }

    /// Polls `progress` every 500 ms until it stops moving (two equal readings in a row) and
    /// returns where it stopped; `None` if it was still moving after `within`.
    pub fn until_stalled(within: Duration, progress: impl Fn() -> u64) -> Option<u64> {
        let deadline = Instant::now() + within;
        let mut last = None;
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(500));
            let now = progress();
            if last == Some(now) {
                return Some(now);
            }
            last = Some(now);
        }
        None
    }

    /// Polls `cond` every 20 ms for up to `within`.
    pub fn eventually(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + within;
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Connects to `addr`, writes `request` and reads the answer until the peer closes; each
    /// read may wait `read_timeout` (then what came so far is the answer).
    pub fn exchange(addr: SocketAddr, request: &[u8], read_timeout: Duration) -> Vec<u8> {
        let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        s.set_read_timeout(Some(read_timeout))
            .expect("read timeout");
        s.write_all(request)
            .unwrap_or_else(|e| panic!("write a request to {addr}: {e}"));
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        answer
    }

    /// Sends `req` on a keep-alive connection and reads one answer with a Content-Length body:
    /// (status, body).
    pub fn fetch(s: &mut TcpStream, req: &[u8]) -> (u16, String) {
        s.write_all(req).expect("request");
        let mut buf = Vec::new();
        let mut b = [0u8; 4096];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    let status = head[9..12].parse().expect("status");
                    let body = &buf[end + 4..end + 4 + len];
                    return (status, String::from_utf8_lossy(body).into_owned());
                }
            }
            let n = s.read(&mut b).expect("read");
            assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&buf));
            buf.extend_from_slice(&b[..n]);
        }
    }
}
