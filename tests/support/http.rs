//! Helpers for the plain-HTTP tests: routes with any keys, an HTTP/1.1 origin backend that
//! records exactly what it received, and a client connection that reads answers one by one.
//!
//! Included by the HTTP test files with `#[path = "support/http.rs"] mod http;` next to
//! `mod support;`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{ProxyBuilder, RawBackend, STEP};

// ---------------------------------------------------------------------------------------------
// Routes with any keys
// ---------------------------------------------------------------------------------------------

/// One route written as an inline TOML table, so that any `[[route]]` key can be set.
#[derive(Debug, Clone)]
pub struct R {
    prefix: String,
    backends: Vec<SocketAddr>,
    keys: Vec<String>,
}

/// A route for `prefix` over `backends`.
pub fn r(prefix: &str, backends: &[SocketAddr]) -> R {
    R {
        prefix: prefix.to_owned(),
        backends: backends.to_vec(),
        keys: Vec::new(),
    }
}

impl R {
    /// `key = value`, the value as TOML (quote strings yourself).
    pub fn key(mut self, key: &str, value: &str) -> R {
        self.keys.push(format!("{key} = {value}"));
        self
    }
}

/// Sets the proxy's routes: a top-level `route = [ {...}, ... ]` (do not add `.route(...)` as
/// well: TOML allows one or the other).
pub fn with_routes(b: ProxyBuilder, routes: &[R]) -> ProxyBuilder {
    let tables: Vec<String> = routes
        .iter()
        .map(|r| {
            let backends: Vec<String> = r.backends.iter().map(|b| format!("\"{b}\"")).collect();
            let mut t = format!(
                "prefix = \"{}\", backends = [{}]",
                r.prefix,
                backends.join(", ")
            );
            for k in &r.keys {
                t.push_str(", ");
                t.push_str(k);
            }
            format!("{{ {t} }}")
        })
        .collect();
    b.top("route", &format!("[{}]", tables.join(", ")))
}

// ---------------------------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------------------------

/// A parsed request or answer.
#[derive(Debug, Clone, Default)]
pub struct Msg {
    /// The request line or status line.
    pub line: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
    /// The raw bytes of head and body as they arrived.
    pub raw: Vec<u8>,
    /// Trailer fields of a chunked body.
    pub trailers: Vec<(String, String)>,
}

impl Msg {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn method(&self) -> &str {
        self.line.split(' ').next().unwrap_or("")
    }

    pub fn target(&self) -> &str {
        self.line.split(' ').nth(1).unwrap_or("")
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Where an origin's connection records every byte it reads: (all connections, this one).
type Tap = (Arc<Mutex<Vec<Vec<u8>>>>, usize);

/// A socket with the bytes read past the last message.
pub struct Peer {
    pub s: TcpStream,
    pub buf: Vec<u8>,
    /// The peer closed its side.
    pub eof: bool,
    /// An origin's connection: waits as long as it takes, records what it reads.
    tap: Option<Tap>,
}

/// How a message's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(usize),
    Chunked,
    Close,
}

impl Peer {
    pub fn new(s: TcpStream) -> Peer {
        let _ = s.set_nodelay(true);
        Peer {
            s,
            buf: Vec::new(),
            eof: false,
            tap: None,
        }
    }

    pub async fn connect(addr: SocketAddr) -> Peer {
        Peer::new(TcpStream::connect(addr).await.expect("connect"))
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.expect("send");
    }

    /// One read into the buffer, within `wait` when given: how many bytes came (0 at EOF or
    /// error), or None when nothing came in time.
    async fn read_some(&mut self, wait: Option<Duration>) -> Option<usize> {
        let mut b = vec![0u8; 65536];
        let read = self.s.read(&mut b);
        let res = match wait {
            Some(wait) => tokio::time::timeout(wait, read).await.ok()?,
            None => read.await,
        };
        match res {
            Ok(0) | Err(_) => {
                self.eof = true;
                Some(0)
            }
            Ok(n) => {
                self.buf.extend_from_slice(&b[..n]);
                Some(n)
            }
        }
    }

    /// Reads more; false at EOF or error. A tapped peer waits as long as it takes and records
    /// what it reads; others fail the test when nothing comes within `wait`.
    async fn fill(&mut self, wait: Duration) -> bool {
        let limit = if self.tap.is_some() { None } else { Some(wait) };
        match self.read_some(limit).await {
            Some(0) => false,
            Some(n) => {
                if let Some((all, i)) = &self.tap {
                    let new = &self.buf[self.buf.len() - n..];
                    all.lock().expect("raw")[*i].extend_from_slice(new);
                }
                true
            }
            None => panic!(
                "nothing arrived within {wait:?}; have {:?}",
                String::from_utf8_lossy(&self.buf)
            ),
        }
    }

    /// The next `n` bytes (fails the test after [`STEP`] without them).
    pub async fn exactly(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(self.fill(STEP).await, "closed with {:?}", self.buf);
        }
        self.buf.drain(..n).collect()
    }

    /// Waits up to `wait` for bytes; true if some arrived (or are already buffered).
    pub async fn has_bytes_within(&mut self, wait: Duration) -> bool {
        if !self.buf.is_empty() {
            return true;
        }
        self.read_some(Some(wait)).await.is_some_and(|n| n > 0)
    }

    /// Reads a head (request or answer). None at a clean EOF before any byte.
    pub async fn head(&mut self) -> Option<Msg> {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let raw: Vec<u8> = self.buf.drain(..end + 4).collect();
                let text = String::from_utf8_lossy(&raw).into_owned();
                let mut lines = text.split("\r\n");
                let line = lines.next().unwrap_or("").to_owned();
                let headers = lines
                    .filter(|l| !l.is_empty())
                    .filter_map(|l| l.split_once(':'))
                    .map(|(n, v)| (n.to_owned(), v.trim().to_owned()))
                    .collect();
                let status = if line.starts_with("HTTP/") {
                    line.split(' ')
                        .nth(1)
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0)
                } else {
                    0
                };
                return Some(Msg {
                    line,
                    status,
                    headers,
                    raw,
                    ..Msg::default()
                });
            }
            if !self.fill(STEP).await {
                assert!(
                    self.buf.is_empty(),
                    "closed in the middle of a head: {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
                return None;
            }
        }
    }

    /// Reads a body framed as `f` into `m`.
    pub async fn body(&mut self, m: &mut Msg, f: Framing) {
        if let Err(e) = self.try_body(m, f).await {
            panic!("{e}");
        }
    }

    /// Reads a body framed as `f` into `m`, or says why it could not.
    pub async fn try_body(&mut self, m: &mut Msg, f: Framing) -> Result<(), String> {
        match f {
            Framing::None => {}
            Framing::Length(n) => {
                while self.buf.len() < n {
                    if !self.fill(STEP).await {
                        return Err(format!("closed with {} of {n} body bytes", self.buf.len()));
                    }
                }
                m.body = self.buf.drain(..n).collect();
                m.raw.extend_from_slice(&m.body);
            }
            Framing::Close => {
                while self.fill(STEP).await {}
                m.body = std::mem::take(&mut self.buf);
                m.raw.extend_from_slice(&m.body);
            }
            Framing::Chunked => loop {
                let line = self.line().await?;
                m.raw.extend_from_slice(&line);
                let text = String::from_utf8_lossy(&line);
                let size_text = text.trim_end().split(';').next().unwrap_or("");
                let size = usize::from_str_radix(size_text, 16)
                    .map_err(|_| format!("bad chunk size line {text:?}"))?;
                if size == 0 {
                    loop {
                        let t = self.line().await?;
                        m.raw.extend_from_slice(&t);
                        if t == b"\r\n" {
                            return Ok(());
                        }
                        let t = String::from_utf8_lossy(&t).into_owned();
                        if let Some((n, v)) = t.split_once(':') {
                            m.trailers.push((n.to_owned(), v.trim().to_owned()));
                        }
                    }
                }
                while self.buf.len() < size + 2 {
                    if !self.fill(STEP).await {
                        return Err("closed inside a chunk".into());
                    }
                }
                let chunk: Vec<u8> = self.buf.drain(..size + 2).collect();
                if &chunk[size..] != b"\r\n" {
                    return Err("chunk not followed by CRLF".into());
                }
                m.body.extend_from_slice(&chunk[..size]);
                m.raw.extend_from_slice(&chunk);
            },
        }
        Ok(())
    }

    async fn line(&mut self) -> Result<Vec<u8>, String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                return Ok(self.buf.drain(..i + 2).collect());
            }
            if !self.fill(STEP).await {
                return Err("closed inside a chunk line".into());
            }
        }
    }

    /// Reads one answer to a request with method `method` (interim answers included: they
    /// come back as their own `Msg` with no body).
    pub async fn answer(&mut self, method: &str) -> Msg {
        let mut m = self.head().await.expect("an answer, not a close");
        let f = answer_framing(&m, method);
        self.body(&mut m, f).await;
        m
    }

    /// Reads answers until a final one; returns (interim answers, final answer).
    pub async fn final_answer(&mut self, method: &str) -> (Vec<Msg>, Msg) {
        let mut interim = Vec::new();
        loop {
            let m = self.answer(method).await;
            if m.status >= 200 {
                return (interim, m);
            }
            interim.push(m);
        }
    }

    /// True once the peer closed (reads until EOF, at most `wait`).
    pub async fn closed_within(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        let mut b = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.s.read(&mut b)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(n)) => self.buf.extend_from_slice(&b[..n]),
                Err(_) => return false,
            }
        }
    }
}

/// How an answer to `method` delimits its body.
pub fn answer_framing(m: &Msg, method: &str) -> Framing {
    if method == "HEAD" || m.status < 200 || m.status == 204 || m.status == 304 {
        return Framing::None;
    }
    framing(m, Framing::Close)
}

/// How a request delimits its body.
pub fn request_framing(m: &Msg) -> Framing {
    framing(m, Framing::None)
}

/// Chunked, else by length, else `otherwise`.
fn framing(m: &Msg, otherwise: Framing) -> Framing {
    if m.header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        return Framing::Chunked;
    }
    match m.header("content-length") {
        Some(n) => Framing::Length(n.parse().expect("content-length")),
        None => otherwise,
    }
}

// ---------------------------------------------------------------------------------------------
// An origin backend
// ---------------------------------------------------------------------------------------------

/// What the origin answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub framing: Framing,
    /// Close the connection after this answer.
    pub close: bool,
}

impl Reply {
    /// `200` with `body` and a Content-Length.
    pub fn ok(body: impl Into<Vec<u8>>) -> Reply {
        let body = body.into();
        Reply {
            status: 200,
            headers: Vec::new(),
            framing: Framing::Length(body.len()),
            body,
            close: false,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn chunked(mut self) -> Reply {
        self.framing = Framing::Chunked;
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {} X\r\n", self.status).into_bytes();
        for (n, v) in &self.headers {
            out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
        }
        match self.framing {
            Framing::Length(n) => {
                out.extend_from_slice(format!("Content-Length: {n}\r\n").as_bytes())
            }
            Framing::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
            Framing::None | Framing::Close => {}
        }
        if self.close || self.framing == Framing::Close {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        match self.framing {
            Framing::Chunked => {
                for c in self.body.chunks(1000) {
                    out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                    out.extend_from_slice(c);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n\r\n");
            }
            _ => out.extend_from_slice(&self.body),
        }
        out
    }
}

type Handler = Arc<dyn Fn(&Msg) -> Reply + Send + Sync>;

/// An HTTP/1.1 backend with keep-alive: reads each request (de-chunking bodies), records it
/// and the raw bytes of its connection, and answers what the handler says.
pub struct Origin {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    /// Per connection: the requests read on it.
    requests: Arc<Mutex<Vec<Vec<Msg>>>>,
    /// Per connection: every byte received.
    raw: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Origin {
    /// Answers `200` with `METHOD TARGET` and the body length as its body.
    pub async fn start() -> Origin {
        Origin::with(|m| Reply::ok(format!("{} {} {}", m.method(), m.target(), m.body.len()))).await
    }

    pub async fn with(handler: impl Fn(&Msg) -> Reply + Send + Sync + 'static) -> Origin {
        let handler: Handler = Arc::new(handler);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let raw = Arc::new(Mutex::new(Vec::new()));
        let (a, q, w) = (accepted.clone(), requests.clone(), raw.clone());
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let i = a.fetch_add(1, Ordering::SeqCst);
                q.lock().expect("requests").push(Vec::new());
                w.lock().expect("raw").push(Vec::new());
                let (q, w, h) = (q.clone(), w.clone(), handler.clone());
                tokio::spawn(async move {
                    let mut p = Peer::new(s);
                    p.tap = Some((w, i));
                    loop {
                        let Some(mut m) = read_request(&mut p).await else {
                            break;
                        };
                        let reply = h(&m);
                        m.raw.clear();
                        q.lock().expect("requests")[i].push(m);
                        if p.s.write_all(&reply.bytes()).await.is_err() || reply.close {
                            break;
                        }
                        if reply.framing == Framing::Close {
                            break;
                        }
                    }
                });
            }
        });
        Origin {
            addr,
            accepted,
            requests,
            raw,
        }
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Every request read, in order of connections.
    pub fn requests(&self) -> Vec<Msg> {
        self.requests.lock().expect("requests").concat()
    }

    /// Requests per connection.
    pub fn per_conn(&self) -> Vec<Vec<Msg>> {
        self.requests.lock().expect("requests").clone()
    }

    /// Everything each connection received.
    pub fn raw(&self) -> Vec<Vec<u8>> {
        self.raw.lock().expect("raw").clone()
    }
}

/// Reads a request with its body; None when the connection ends or the request is broken.
async fn read_request(p: &mut Peer) -> Option<Msg> {
    while !p.buf.windows(4).any(|w| w == b"\r\n\r\n") {
        if !p.fill(STEP).await {
            return None;
        }
    }
    let mut m = p.head().await?;
    let f = request_framing(&m);
    p.try_body(&mut m, f).await.ok()?;
    Some(m)
}

/// `GET {path}` with `Host: localhost` and `extra` header lines.
pub fn get(path: &str, extra: &[&str]) -> Vec<u8> {
    request("GET", path, extra, b"")
}

/// `POST {path}` with `body` as `application/octet-stream`.
pub fn post_octets(path: &str, body: &[u8]) -> Vec<u8> {
    request(
        "POST",
        path,
        &["Content-Type: application/octet-stream"],
        body,
    )
}

/// `{method} {path}` with `Host: localhost`, `extra` lines, and `body` with its
/// Content-Length when not empty.
pub fn request(method: &str, path: &str, extra: &[&str], body: &[u8]) -> Vec<u8> {
    let mut s = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
    for l in extra {
        s.push_str(l);
        s.push_str("\r\n");
    }
    if !body.is_empty() {
        s.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    s.push_str("\r\n");
    let mut v = s.into_bytes();
    v.extend_from_slice(body);
    v
}

/// The proxy from `b` with one route, `/`, to a new raw backend, `keys` set on the route.
pub async fn proxy_to_raw(
    b: ProxyBuilder,
    keys: &[(&str, &str)],
) -> (crate::support::Proxy, RawBackend) {
    let backend = RawBackend::start().await;
    let mut route = r("/", &[backend.addr]);
    for (k, v) in keys {
        route = route.key(k, v);
    }
    let p = with_routes(b, &[route]).start().await;
    (p, backend)
}

/// `req` on a new client connection of `p`; the backend's side of it, the connection the
/// proxy opened to `backend` for it (nothing read yet).
pub async fn send_to_new(
    p: &crate::support::Proxy,
    backend: &RawBackend,
    req: &[u8],
) -> (Peer, Peer) {
    let mut c = Peer::connect(p.addr()).await;
    c.send(req).await;
    let b = Peer::new(backend.next_conn().await);
    (c, b)
}

/// wsplice (relay = "auto") with `routes`, started.
pub async fn start_routes(routes: &[R]) -> crate::support::Proxy {
    let auto = crate::support::Proxy::builder(crate::support::Relay::Auto);
    with_routes(auto, routes).start().await
}
