//! The toy backends of `wsplice demo`, so the proxy can be tried without any other software:
//! a page server, a notice pusher and an echo server on 127.0.0.1, plain blocking threads. A
//! module of the binary (declared in `main.rs`), not of the library: only the demo needs
//! tungstenite.
//!
//! ```text
//! browser ─▶ wsplice 127.0.0.1:8080 ─┬─ / ───────▶ page backend: the demo page (HTTP/1.1)
//!                                    ├─ /notice ─▶ notice backend: every second,
//!                                    │              {"notice":N,"time":"<unix secs>"}
//!                                    └─ /msg ────▶ echo backend: text and binary sent back
//! ```
//!
//! The WebSocket backends answer a requested subprotocol with the first one the client named
//! (a browser asking for `chat, superchat`, as in RFC 6455's example, fails the connection if
//! none comes back).
//!
//! One thread per connection (a demo, not a benchmark peer: `tools/wsbench` is that). Every
//! connection thread ends when its client leaves; the two accept threads live as long as the
//! process.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tungstenite::{Message, WebSocket};

/// Time between two notices on one connection.
pub const NOTICE_INTERVAL: Duration = Duration::from_secs(1);
/// A client must finish its upgrade request within this time.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A client that stops reading for this long is dropped rather than holding its thread forever.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts the notice backend and the echo backend on ephemeral 127.0.0.1 ports and returns
/// their addresses `(notice, echo)`.
///
/// Both accept any request path (wsplice strips the route prefix, so `/notice/x` arrives as `/x`).
pub fn start_demo_backends() -> io::Result<(SocketAddr, SocketAddr)> {
    start(Arc::default())
}

/// `live` counts connection threads of both backends (tests check that they end).
fn start(live: Arc<AtomicUsize>) -> io::Result<(SocketAddr, SocketAddr)> {
    let notice = TcpListener::bind("127.0.0.1:0")?;
    let echo = TcpListener::bind("127.0.0.1:0")?;
    let addrs = (notice.local_addr()?, echo.local_addr()?);
    spawn_acceptor("demo-notice", notice, serve_notice, live.clone())?;
    spawn_acceptor("demo-echo", echo, serve_echo, live)?;
    Ok(addrs)
}

/// The page `wsplice demo` serves at `/`.
pub const PAGE: &str = include_str!("demo_page.html");

/// Starts the page backend on an ephemeral 127.0.0.1 port: HTTP/1.1 with keep-alive, the demo
/// page for `GET` or `HEAD` of `/` or `/index.html` (with any query), 404 otherwise.
pub fn start_demo_page() -> io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    accept_each("demo-page", listener, |stream| {
        move || {
            // Errors only mean the client left or misbehaved.
            let _ = serve_page(stream);
        }
    })?;
    Ok(addr)
}

/// Answers requests on one connection until the client closes or asks to.
fn serve_page(mut stream: TcpStream) -> io::Result<()> {
    use std::io::{Read, Write};
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            if buf.len() > 16 * 1024 {
                return Ok(());
            }
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let mut words = head.split_whitespace();
        let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        let lower = head.to_ascii_lowercase();
        let close = lower.contains("\r\nconnection: close");
        // The page reads its query (`?send=`, `?ws=`) itself.
        let path = target.split('?').next().unwrap_or("");
        let page = matches!(path, "/" | "/index.html") && matches!(method, "GET" | "HEAD");
        let (status, body) = if page {
            ("200 OK", PAGE)
        } else {
            ("404 Not Found", "Not found: the demo page is at /\n")
        };
        let kind = if page { "text/html" } else { "text/plain" };
        let mut out = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {kind}; charset=utf-8\r\nContent-Length: {}\r\nCache-Control: no-store\r\n{}\r\n",
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        )
        .into_bytes();
        if method != "HEAD" {
            out.extend_from_slice(body.as_bytes());
        }
        stream.write_all(&out)?;
        if close {
            return Ok(());
        }
    }
}

/// Decrements the live count when a connection thread ends, however it ends.
struct Live(Arc<AtomicUsize>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn spawn_acceptor(
    name: &'static str,
    listener: TcpListener,
    serve: fn(WebSocket<TcpStream>) -> tungstenite::Result<()>,
    live: Arc<AtomicUsize>,
) -> io::Result<()> {
    accept_each(name, listener, move |stream| {
        live.fetch_add(1, Ordering::Relaxed);
        let guard = Live(live.clone());
        move || {
            let _guard = guard;
            // Errors only mean the client left or misbehaved: nothing to report.
            let _ = handshake(stream).map(serve);
        }
    })
}

/// Accepts on `listener` in a thread named `name`; each connection is handed to `conn` there,
/// and what it returns runs in a thread of its own (`{name}-conn`).
fn accept_each<F, G>(name: &'static str, listener: TcpListener, conn: F) -> io::Result<()>
where
    F: Fn(TcpStream) -> G + Send + 'static,
    G: FnOnce() + Send + 'static,
{
    thread::Builder::new()
        .name(name.into())
        .spawn(move || loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    let job = conn(stream);
                    let spawned = thread::Builder::new()
                        .name(format!("{name}-conn"))
                        .spawn(job);
                    if let Err(e) = spawned {
                        eprintln!("wsplice: {name}: cannot start a connection thread: {e}");
                    }
                }
                Err(e) => {
                    eprintln!("wsplice: {name}: accept failed: {e}");
                    // EMFILE and friends persist for a while; do not spin on them.
                    thread::sleep(Duration::from_millis(100));
                }
            }
        })?;
    Ok(())
}

/// Picks the first subprotocol the client asked for, if it asked.
#[allow(clippy::result_large_err)] // tungstenite's callback signature
fn first_subprotocol(
    req: &tungstenite::handshake::server::Request,
    mut resp: tungstenite::handshake::server::Response,
) -> Result<tungstenite::handshake::server::Response, tungstenite::handshake::server::ErrorResponse>
{
    let first = req
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find(|p| !p.is_empty())
        .and_then(|p| tungstenite::http::HeaderValue::from_str(p).ok());
    if let Some(p) = first {
        resp.headers_mut().insert("sec-websocket-protocol", p);
    }
    Ok(resp)
}

fn handshake(stream: TcpStream) -> tungstenite::Result<WebSocket<TcpStream>> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    // A timed-out read surfaces as `HandshakeError::Interrupted`: treated like any failure.
    let ws = tungstenite::accept_hdr(stream, first_subprotocol).map_err(|e| match e {
        tungstenite::HandshakeError::Failure(e) => e,
        tungstenite::HandshakeError::Interrupted(_) => {
            tungstenite::Error::Io(io::ErrorKind::TimedOut.into())
        }
    })?;
    ws.get_ref().set_read_timeout(None)?;
    Ok(ws)
}

/// Pushes a notice every [`NOTICE_INTERVAL`], starting at once. Reads in between (with a read
/// timeout up to the next notice) so that a close frame, a FIN or a reset ends the thread without
/// waiting for a write to fail; pings are answered by tungstenite.
fn serve_notice(mut ws: WebSocket<TcpStream>) -> tungstenite::Result<()> {
    let mut n: u64 = 0;
    let mut next = Instant::now();
    loop {
        let now = Instant::now();
        if now >= next {
            n += 1;
            ws.send(Message::text(notice_json(n, SystemTime::now())))?;
            next += NOTICE_INTERVAL;
            // After a stall (a slow client), resume the rhythm instead of bursting to catch up.
            if next <= now {
                next = now + NOTICE_INTERVAL;
            }
            continue;
        }
        // At least 1 ms: a zero read timeout is refused by the OS.
        let wait = (next - now).max(Duration::from_millis(1));
        ws.get_ref().set_read_timeout(Some(wait))?;
        match ws.read() {
            // What the client sends is ignored; control frames are handled inside `read`.
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            // ConnectionClosed after a close handshake, or a reset / protocol error.
            Err(e) => return Err(e),
        }
    }
}

fn notice_json(n: u64, at: SystemTime) -> String {
    let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    format!("{{\"notice\":{n},\"time\":\"{secs}\"}}")
}

/// Sends every text and binary message back as it came.
fn serve_echo(mut ws: WebSocket<TcpStream>) -> tungstenite::Result<()> {
    loop {
        match ws.read()? {
            msg @ (Message::Text(_) | Message::Binary(_)) => ws.send(msg)?,
            // Ping/pong/close are answered inside `read`; the close ends the loop on the next read.
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect(addr: SocketAddr, path: &str) -> WebSocket<TcpStream> {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let (ws, resp) =
            tungstenite::client(format!("ws://{addr}{path}"), stream).expect("handshake");
        assert_eq!(resp.status(), 101);
        ws
    }

    fn text(ws: &mut WebSocket<TcpStream>) -> String {
        match ws.read().expect("read") {
            Message::Text(t) => t.as_str().to_owned(),
            other => panic!("expected text, got {other:?}"),
        }
    }

    #[test]
    fn notice_backend_pushes_every_second() {
        let (notice, _) = start_demo_backends().expect("start");
        let mut ws = connect(notice, "/");
        let started = Instant::now();
        let first = text(&mut ws);
        let second = text(&mut ws);
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(2500),
            "two notices took {took:?}"
        );
        assert!(
            took >= Duration::from_millis(900),
            "notices too fast: {took:?}"
        );
        assert!(first.starts_with("{\"notice\":1,\"time\":\""), "{first}");
        assert!(second.starts_with("{\"notice\":2,\"time\":\""), "{second}");
        assert!(second.ends_with("\"}"), "{second}");
        // A clean close is answered and ends the stream.
        ws.close(None).expect("close");
        loop {
            match ws.read() {
                Ok(_) => {}
                Err(tungstenite::Error::ConnectionClosed) => break,
                Err(e) => panic!("after close: {e}"),
            }
        }
    }

    #[test]
    fn echo_backend_echoes_text_and_binary() {
        let (_, echo) = start_demo_backends().expect("start");
        let mut ws = connect(echo, "/chat?x=1");
        ws.send(Message::text("hello")).expect("send");
        assert_eq!(text(&mut ws), "hello");
        let bin = vec![0u8, 1, 2, 255];
        ws.send(Message::binary(bin.clone())).expect("send");
        match ws.read().expect("read") {
            Message::Binary(b) => assert_eq!(&b[..], &bin[..]),
            other => panic!("expected binary, got {other:?}"),
        }
        // A second client is served at the same time.
        let mut other = connect(echo, "/");
        other.send(Message::text("two")).expect("send");
        assert_eq!(text(&mut other), "two");
        ws.send(Message::text("still here")).expect("send");
        assert_eq!(text(&mut ws), "still here");
    }

    fn wait_for_zero(live: &AtomicUsize) {
        let deadline = Instant::now() + Duration::from_secs(3);
        while live.load(Ordering::Relaxed) != 0 {
            assert!(Instant::now() < deadline, "{live:?} threads still running");
            thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn threads_end_when_clients_leave() {
        let live = Arc::new(AtomicUsize::new(0));
        let (notice, echo) = start(live.clone()).expect("start");
        // Vanishing without a close frame: the notice thread sees EOF on its next read.
        let mut a = connect(notice, "/");
        text(&mut a);
        let mut b = connect(echo, "/");
        b.send(Message::text("x")).expect("send");
        text(&mut b);
        // A clean close handshake.
        let mut c = connect(echo, "/");
        // A client that never sends its upgrade request: its thread waits in the handshake and
        // ends when the client disconnects.
        let d = TcpStream::connect(notice).expect("connect");
        assert_eq!(wait_until(&live, 4), 4);
        drop(a);
        drop(b);
        c.close(None).expect("close");
        while c.read().is_ok() {}
        drop(c);
        drop(d);
        wait_for_zero(&live);
    }

    fn wait_until(live: &AtomicUsize, n: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(3);
        while live.load(Ordering::Relaxed) < n && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        live.load(Ordering::Relaxed)
    }

    #[test]
    fn backends_answer_the_first_subprotocol_asked_for() {
        let (_, echo) = start_demo_backends().expect("start");
        for (asked, want) in [(Some("chat, superchat"), Some("chat")), (None, None)] {
            let stream = TcpStream::connect(echo).expect("connect");
            let mut req = tungstenite::client::IntoClientRequest::into_client_request(format!(
                "ws://{echo}/"
            ))
            .expect("request");
            if let Some(a) = asked {
                req.headers_mut().insert(
                    "sec-websocket-protocol",
                    tungstenite::http::HeaderValue::from_static(a),
                );
            }
            let (_ws, resp) = tungstenite::client(req, stream).expect("handshake");
            let got = resp
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok());
            assert_eq!(got, want);
        }
    }

    #[test]
    fn page_backend_serves_the_page_with_keep_alive() {
        use std::io::{Read, Write};
        let addr = start_demo_page().expect("start");
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /?send=hi HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .expect("write");
        let mut all = String::new();
        s.read_to_string(&mut all).expect("read");
        assert!(all.starts_with("HTTP/1.1 200 OK\r\n"), "{all}");
        assert_eq!(
            all.matches("HTTP/1.1 200 OK\r\n").count(),
            2,
            "with a query too"
        );
        assert!(all.contains(&format!("Content-Length: {}\r\n", PAGE.len())));
        assert!(all.contains("new WebSocket(url(\"/notice\")"));
        assert!(all.contains("HTTP/1.1 404 Not Found\r\n"));
        assert!(all.ends_with("the demo page is at /\n"));
    }

    #[test]
    fn notice_json_shape() {
        let at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(notice_json(7, at), r#"{"notice":7,"time":"1700000000"}"#);
    }
}
