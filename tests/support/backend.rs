//! The backends the proxy talks to, all on 127.0.0.1:0: a real WebSocket echo server, raw TCP
//! backends the test drives by hand or that answer by rule, one that only records, a port that
//! refuses and one whose connects time out. Blocking twins for std-thread tests at the bottom.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use super::{
    assert_silent, read_head, response_101, response_101_with, route, try_read_head, ws_config,
    Proxy, ProxyBuilder, Relay, STEP,
};

/// A listener on 127.0.0.1:0 and its address; `what` names it in failures.
async fn listen(what: &str) -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind {what}: {e}"));
    let addr = listener.local_addr().expect("local addr");
    (listener, addr)
}

/// Accepts on 127.0.0.1:0 and spawns the task `serve` makes for every connection (`serve` itself
/// runs in the accept loop, in accept order).
pub async fn serve_each<F, Fut>(what: &str, serve: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (listener, addr) = listen(what).await;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream));
        }
    });
    addr
}

/// What the echo backend's handshake callback saw.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub method: String,
    /// Path and query, as received.
    pub target: String,
    /// In the order `http::HeaderMap` yields them (names lower-cased).
    pub headers: Vec<(String, String)>,
}

/// Everything the echo backend observed.
#[derive(Debug, Clone, Default)]
pub struct EchoLog {
    pub connections: usize,
    pub requests: Vec<SeenRequest>,
    /// Close frames received from the client side: (code, reason).
    pub closes: Vec<Option<(u16, String)>>,
    pub pongs: Vec<Vec<u8>>,
}

/// A tokio-tungstenite echo server. Text commands: `__close__ CODE REASON` makes it close with
/// that code; `__ping__ PAYLOAD` makes it send a ping. Everything else is echoed.
pub struct EchoBackend {
    pub addr: SocketAddr,
    log: Arc<Mutex<EchoLog>>,
}

impl EchoBackend {
    pub async fn start() -> EchoBackend {
        let log = Arc::new(Mutex::new(EchoLog::default()));
        let shared = log.clone();
        let addr = serve_each("echo backend", move |stream| {
            shared.lock().expect("echo log").connections += 1;
            echo_session(stream, shared.clone())
        })
        .await;
        EchoBackend { addr, log }
    }

    pub fn log(&self) -> EchoLog {
        self.log.lock().expect("echo log").clone()
    }
}

// The callback's error type is tungstenite's, not ours to shrink.
#[allow(clippy::result_large_err)]
async fn echo_session(stream: TcpStream, log: Arc<Mutex<EchoLog>>) {
    let _ = stream.set_nodelay(true);
    let seen = log.clone();
    let callback =
        move |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
              resp: tokio_tungstenite::tungstenite::handshake::server::Response| {
            let headers = req
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let target = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default();
            seen.lock().expect("echo log").requests.push(SeenRequest {
                method: req.method().as_str().to_owned(),
                target,
                headers,
            });
            Ok(resp)
        };
    let Ok(mut ws) =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(ws_config())).await
    else {
        return;
    };
    while let Some(msg) = ws.next().await {
        let Ok(msg) = msg else { break };
        match msg {
            Message::Text(t) if t.starts_with("__close__ ") => {
                let mut parts = t["__close__ ".len()..].splitn(2, ' ');
                let code: u16 = parts.next().and_then(|c| c.parse().ok()).unwrap_or(1000);
                let reason = parts.next().unwrap_or("").to_owned();
                let frame = CloseFrame {
                    code: CloseCode::from(code),
                    reason: reason.into(),
                };
                if ws.close(Some(frame)).await.is_err() {
                    break;
                }
            }
            Message::Text(t) if t.starts_with("__ping__ ") => {
                let payload = t["__ping__ ".len()..].as_bytes().to_vec();
                if ws.send(Message::Ping(payload.into())).await.is_err() {
                    break;
                }
            }
            m @ (Message::Text(_) | Message::Binary(_)) => {
                if ws.send(m).await.is_err() {
                    break;
                }
            }
            Message::Pong(p) => log.lock().expect("echo log").pongs.push(p.to_vec()),
            Message::Close(f) => {
                log.lock()
                    .expect("echo log")
                    .closes
                    .push(f.map(|f| (u16::from(f.code), f.reason.to_string())));
            }
            Message::Ping(_) | Message::Frame(_) => {}
        }
    }
}

/// What a [`RawBackend`] does with each accepted connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behavior {
    /// Hand the connection to the test ([`RawBackend::next_conn`]).
    Manual,
    /// Reset it at once (SO_LINGER 0, close) without reading.
    Reset,
    /// Read the head, answer a valid 101, then echo raw bytes (a plain request: 200 and close).
    Accept101Echo,
    /// [`Behavior::Accept101Echo`], the 101 naming the backend: `X-Backend: NAME`.
    Accept101EchoNamed(&'static str),
}

/// A raw TCP backend on 127.0.0.1:0 that counts connections.
pub struct RawBackend {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    conns: tokio::sync::Mutex<mpsc::UnboundedReceiver<TcpStream>>,
    heads: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl RawBackend {
    pub async fn start() -> RawBackend {
        RawBackend::start_with(Behavior::Manual).await
    }

    pub async fn start_with(behavior: Behavior) -> RawBackend {
        let (listener, addr) = listen("raw backend").await;
        let accepted = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::unbounded_channel();
        let (count, seen) = (accepted.clone(), heads.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let _ = stream.set_nodelay(true);
                match behavior {
                    Behavior::Manual => {
                        let _ = tx.send(stream);
                    }
                    Behavior::Reset => {
                        let _ = stream.set_zero_linger();
                        drop(stream);
                    }
                    Behavior::Accept101Echo | Behavior::Accept101EchoNamed(_) => {
                        let seen = seen.clone();
                        tokio::spawn(async move {
                            let mut stream = stream;
                            let Ok((head, rest)) = try_read_head(&mut stream, 1 << 20).await else {
                                return;
                            };
                            seen.lock().expect("heads").push(head.clone());
                            let upgrade = super::header(&head, "upgrade").is_some();
                            let answer = match behavior {
                                // A forwarded plain request: one answer, then this connection
                                // ends (say so, or the proxy would send its next request here).
                                _ if !upgrade => {
                                    let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
                                    let _ = stream.write_all(plain).await;
                                    return;
                                }
                                Behavior::Accept101EchoNamed(name) => {
                                    response_101_with(&head, &[&format!("X-Backend: {name}")])
                                }
                                _ => response_101(&head),
                            };
                            if stream.write_all(&answer).await.is_err() {
                                return;
                            }
                            if !rest.is_empty() && stream.write_all(&rest).await.is_err() {
                                return;
                            }
                            let (mut r, mut w) = stream.into_split();
                            let _ = tokio::io::copy(&mut r, &mut w).await;
                        });
                    }
                }
            }
        });
        RawBackend {
            addr,
            accepted,
            conns: tokio::sync::Mutex::new(rx),
            heads,
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Request heads read by an [`Behavior::Accept101Echo`] or `Accept101EchoNamed` backend.
    pub fn heads(&self) -> Vec<Vec<u8>> {
        self.heads.lock().expect("heads").clone()
    }

    /// The next accepted connection ([`Behavior::Manual`] only); fails the test after [`STEP`].
    pub async fn next_conn(&self) -> TcpStream {
        let mut rx = self.conns.lock().await;
        match tokio::time::timeout(STEP, rx.recv()).await {
            Ok(Some(s)) => s,
            Ok(None) => panic!("raw backend accept loop ended"),
            Err(_) => panic!(
                "backend {} got no connection from the proxy within {STEP:?}",
                self.addr
            ),
        }
    }

    /// Accepts the next connection and reads its request head. Returns (stream, head, bytes read
    /// after the head).
    pub async fn next_head(&self) -> (TcpStream, Vec<u8>, Vec<u8>) {
        let mut s = self.next_conn().await;
        let (head, rest) = read_head(&mut s).await;
        (s, head, rest)
    }

    /// [`RawBackend::next_head`], asserting that no client byte came with the head: what the
    /// client sends after its head waits in the proxy until the backend has answered 101.
    pub async fn next_head_alone(&self) -> (TcpStream, Vec<u8>) {
        let (s, head, rest) = self.next_head().await;
        assert!(
            rest.is_empty(),
            "{} client bytes reached the backend with the head, before any 101",
            rest.len()
        );
        (s, head)
    }

    /// Accepts the next connection, reads its head and answers a valid 101.
    /// Returns (stream, head); fails if bytes followed the head before the 101.
    pub async fn accept_101(&self) -> (TcpStream, Vec<u8>) {
        let (mut s, head, rest) = self.next_head().await;
        assert!(
            rest.is_empty(),
            "backend got {} bytes after the head before answering 101",
            rest.len()
        );
        s.write_all(&response_101(&head))
            .await
            .expect("backend writes 101");
        (s, head)
    }
}

/// A proxy with one route, `prefix`, to a manual [`RawBackend`].
pub async fn raw_proxy(relay: Relay, prefix: &str) -> (Proxy, RawBackend) {
    raw_proxy_with(Proxy::builder(relay), prefix).await
}

/// [`raw_proxy`] with the settings of `b`.
pub async fn raw_proxy_with(b: ProxyBuilder, prefix: &str) -> (Proxy, RawBackend) {
    let backend = RawBackend::start().await;
    let proxy = b.route(route(prefix, &[backend.addr])).start().await;
    (proxy, backend)
}

/// The proxy holds what the client sent after its head: asserts that `server` (the backend's
/// side, head read) hears nothing for `quiet`, then answers the head with a 101.
pub async fn answer_101_after_silence(server: &mut TcpStream, head: &[u8], quiet: Duration) {
    assert_silent(server, quiet, "backend before its 101").await;
    server
        .write_all(&response_101(head))
        .await
        .expect("backend writes 101");
}

/// Keeps every byte each connection sends; never answers. For "the backend received nothing".
pub struct RecordingBackend {
    pub addr: SocketAddr,
    conns: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl RecordingBackend {
    pub async fn start() -> RecordingBackend {
        let conns = Arc::new(Mutex::new(Vec::new()));
        let shared = conns.clone();
        let addr = serve_each("recording backend", move |mut stream| {
            let i = {
                let mut c = shared.lock().expect("recorder");
                c.push(Vec::new());
                c.len() - 1
            };
            let shared = shared.clone();
            async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    shared.lock().expect("recorder")[i].extend_from_slice(&buf[..n]);
                }
            }
        })
        .await;
        RecordingBackend { addr, conns }
    }

    /// (connections accepted, bytes received) so far.
    pub fn counts(&self) -> (usize, usize) {
        let c = self.conns.lock().expect("recorder");
        (c.len(), c.iter().map(Vec::len).sum())
    }

    /// What each connection received so far, shortened for a failure message.
    pub fn describe(&self) -> String {
        let c = self.conns.lock().expect("recorder");
        c.iter()
            .map(|b| format!("{:?}", String::from_utf8_lossy(&b[..b.len().min(200)])))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// A port that refuses connections: bound (so nobody else gets it) but never listening.
pub struct RefusedPort {
    pub addr: SocketAddr,
    _socket: socket2::Socket,
}

impl RefusedPort {
    pub fn new() -> RefusedPort {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        socket.bind(&any.into()).expect("bind refused port");
        let addr = socket
            .local_addr()
            .expect("local addr")
            .as_socket()
            .expect("inet addr");
        RefusedPort {
            addr,
            _socket: socket,
        }
    }
}

/// A listener whose accept queue is full, so Linux drops further SYNs and connects time out.
pub struct Blackhole {
    pub addr: SocketAddr,
    _listener: socket2::Socket,
    _fillers: Vec<TcpStream>,
}

impl Blackhole {
    /// Fills the queue and checks that a 300 ms connect attempt really times out.
    pub async fn start() -> Blackhole {
        use socket2::{Domain, Socket, Type};
        let listener = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        listener.bind(&any.into()).expect("bind blackhole");
        listener.listen(0).expect("listen(0)");
        let addr = listener
            .local_addr()
            .expect("local addr")
            .as_socket()
            .expect("inet addr");
        let mut fillers = Vec::new();
        for _ in 0..16 {
            match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
                Ok(Ok(s)) => fillers.push(s),
                Ok(Err(e)) => panic!("blackhole: connect failed instead of hanging: {e}"),
                Err(_) => {
                    return Blackhole {
                        addr,
                        _listener: listener,
                        _fillers: fillers,
                    }
                }
            }
        }
        panic!(
            "blackhole: accept queue never filled after {} connections",
            fillers.len()
        );
    }
}

/// Blocking twins: backends served by std threads, one per connection.
pub mod blocking {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::{mpsc, Arc};
    use std::thread;

    use super::super::blocking::try_read_head;
    use super::super::{response_101, STEP};

    /// Accepts on 127.0.0.1:0 and runs `serve` on a thread of its own for every connection.
    pub fn serve_each<F>(serve: F) -> SocketAddr
    where
        F: Fn(TcpStream) + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
        let addr = listener.local_addr().expect("backend addr");
        let serve = Arc::new(serve);
        thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(s) = s else { return };
                let serve = serve.clone();
                thread::spawn(move || serve(s));
            }
        });
        addr
    }

    /// Sends every byte back until the peer leaves (EOF or an error).
    pub fn echo(s: &mut TcpStream) {
        let mut buf = [0u8; 16 << 10];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// A backend that answers every upgrade with a valid 101 and then echoes bytes: the twin of
    /// an async [`super::RawBackend`] started with [`super::Behavior::Accept101Echo`].
    pub fn echo_101_backend() -> SocketAddr {
        serve_each(|mut s| {
            let Ok(head) = try_read_head(&mut s) else {
                return;
            };
            if s.write_all(&response_101(&head)).is_ok() {
                echo(&mut s);
            }
        })
    }

    /// A listener whose connections the test takes one at a time.
    pub struct RawBackend {
        pub addr: SocketAddr,
        listener: TcpListener,
    }

    impl RawBackend {
        pub fn start() -> RawBackend {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind raw backend");
            let addr = listener.local_addr().expect("raw backend addr");
            RawBackend { addr, listener }
        }

        /// On a thread of its own (the test meanwhile drives the client): accepts the next
        /// connection, reads its head (within [`STEP`]), answers a valid 101 and hands over
        /// (stream, head). The stream keeps the [`STEP`] read timeout.
        pub fn accept_101(&self) -> mpsc::Receiver<(TcpStream, Vec<u8>)> {
            let listener = self.listener.try_clone().expect("clone listener");
            let (tx, rx) = mpsc::channel();
            thread::spawn(move || {
                let (mut s, _) = listener.accept().expect("backend accept");
                s.set_read_timeout(Some(STEP)).expect("read timeout");
                let head = try_read_head(&mut s).expect("backend reads the head");
                s.write_all(&response_101(&head))
                    .expect("backend writes 101");
                let _ = tx.send((s, head));
            });
            rx
        }
    }
}
