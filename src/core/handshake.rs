//! The per-connection handshake state machine, from the first client byte to the tunnel.
//!
//! ```text
//!  ReadHead ──head ok──▶ Connecting ──connected──▶ SendHead ──written──▶ ReadAnswer ──101──▶ Upgraded
//!     │                    │  ▲ refused/timeout:        │                   │ other status
//!     │ bad/timeout        │  └─ next backend           │ reset             ▼
//!     ▼                    ▼ all tried                  ▼               ForwardAnswer ──▶ Forward
//!   Reject(4xx)          Reject(502/503/504)          Reject(502)
//! ```
//! Inputs are `handle_*` calls carrying bytes and `now`; each returns the [`Action`] the driver
//! must carry out. The session never touches a socket or a clock, so whole handshakes are unit
//! tests with byte scripts and a fake clock (see the tests below).

use crate::config::{ForwardedFor, ProxyVersion, Timeouts};
use crate::core::head::{
    find_head_end, has_bare_line_ending, overflow_reject, parse_request, precheck,
};
use crate::core::proxy_proto::{self, ProxyParse};
use crate::core::rewrite::write_backend_head;
use crate::core::route::{rewritten_target, RouteTable};
use crate::core::status::BadRequest;
use crate::core::status::{BackendFailure, Reject};
use crate::core::validate::{validate_answer, validate_request, Answer, Body};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

/// Body bytes of a non-101 answer relayed at most (beyond the head); the rest is cut off.
pub const MAX_FORWARD_BODY: usize = 64 * 1024;

/// What the handshake needs from the configuration.
#[derive(Debug)]
pub struct Settings {
    pub routes: RouteTable,
    pub timeouts: Timeouts,
    pub max_head_bytes: usize,
    pub max_headers: usize,
    /// Clients whose X-Forwarded-For is appended to; empty: the route decides for everyone.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Peers allowed to send a PROXY protocol header on listeners that expect one.
    pub proxy_trusted: Vec<ipnet::IpNet>,
    /// Forward header names containing `_` (lookalikes of stripped headers never pass).
    pub underscores_in_headers: bool,
}

impl Settings {
    /// Settings with the given routes and timeouts and default limits (for tests and benches).
    pub fn new(routes: RouteTable, timeouts: Timeouts) -> Settings {
        Settings {
            routes,
            timeouts,
            max_head_bytes: 16 * 1024,
            max_headers: 100,
            trusted_proxies: Vec::new(),
            proxy_trusted: Vec::new(),
            underscores_in_headers: true,
        }
    }

    /// True when `peer` may send a PROXY protocol header (on a listener that expects one).
    pub fn proxy_trusts(&self, peer: IpAddr) -> bool {
        in_nets(&self.proxy_trusted, peer)
    }
}

fn in_nets(nets: &[ipnet::IpNet], ip: IpAddr) -> bool {
    // An IPv4 client on a dual-stack socket shows up as ::ffff:a.b.c.d.
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    nets.iter().any(|n| n.contains(&ip))
}

/// Why a backend connect attempt failed, as the driver saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    Refused,
    Reset,
    Timeout,
    /// The proxy could not get a descriptor (EMFILE/ENFILE): no point trying another backend.
    NoDescriptors,
}

/// What the driver must do next.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing now; wait for more input or the deadline.
    Wait,
    /// Close any backend socket, then start a non-blocking connect to this address.
    Connect(SocketAddr),
    /// Write [`Handshake::backend_output`] to the backend; report progress with
    /// [`Handshake::handle_backend_written`].
    SendHead,
    /// Write the reject's canned answer to the client, then close both sockets.
    Reject(Reject),
    /// Write [`Handshake::client_output`] (the backend's non-101 answer) to the client, then
    /// close both sockets.
    Answer,
    /// The backend accepted: write [`Handshake::client_output`] to the client and
    /// [`Handshake::backend_output`] to the backend, then relay.
    Relay,
    /// Close both sockets without an answer (the client left before sending a head).
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A listener behind a load balancer: the PROXY protocol header comes first.
    ReadProxy,
    ReadHead,
    Connecting,
    SendHead,
    ReadAnswer,
    /// Relaying a non-101 answer: `remaining` body bytes (None: until close; chunked: until the
    /// last chunk is seen).
    ForwardAnswer {
        body: Body,
        head_len: usize,
    },
    /// The backend switched protocols: the relay takes over.
    Upgraded,
    Done,
}

/// One client connection before its tunnel exists.
#[derive(Debug)]
pub struct Handshake {
    state: State,
    /// The client: the TCP peer, or the address a trusted PROXY header gave.
    client: SocketAddr,
    /// The TCP peer (the load balancer when a PROXY header is expected).
    peer: SocketAddr,
    /// Where the client connected to (sent on in PROXY headers).
    local: SocketAddr,
    /// Client head while reading it; the backend's answer after that.
    buf: Vec<u8>,
    searched: usize,
    /// The rewritten head for the backend, then (once Upgraded) the client's pipelined bytes.
    out: Vec<u8>,
    written: usize,
    /// Client bytes that arrived after its head, forwarded only after a valid 101.
    held: Vec<u8>,
    route: usize,
    /// True once a route matched the head.
    routed: bool,
    first_backend: usize,
    tried: usize,
    last_failure: Option<ConnectFailure>,
    /// The backend of the current (or last) attempt.
    backend: Option<SocketAddr>,
    /// A backend attempt that just failed, until [`Handshake::take_failed`] reports it.
    failed: Option<SocketAddr>,
    deadline: Instant,
    started: Instant,
}

impl Handshake {
    /// A new connection from `client_ip`, accepted at `now` (no PROXY header expected).
    pub fn new(client_ip: IpAddr, now: Instant, s: &Settings) -> Handshake {
        let peer = SocketAddr::new(client_ip, 0);
        Handshake::accept(peer, peer, false, now, s)
    }

    /// A new connection from `peer` to `local`, accepted at `now`; `expect_proxy`: the listener
    /// requires a PROXY protocol header before the HTTP head.
    pub fn accept(
        peer: SocketAddr,
        local: SocketAddr,
        expect_proxy: bool,
        now: Instant,
        s: &Settings,
    ) -> Handshake {
        Handshake {
            state: if expect_proxy {
                State::ReadProxy
            } else {
                State::ReadHead
            },
            client: peer,
            peer,
            local,
            buf: Vec::new(),
            searched: 0,
            out: Vec::new(),
            written: 0,
            held: Vec::new(),
            route: 0,
            routed: false,
            first_backend: 0,
            tried: 0,
            last_failure: None,
            backend: None,
            failed: None,
            deadline: now + s.timeouts.handshake,
            started: now,
        }
    }

    /// The client's address (from a trusted PROXY header when one was expected).
    pub fn client(&self) -> SocketAddr {
        self.client
    }

    /// True while the PROXY protocol header has yet to arrive: [`Handshake::client`] is still
    /// the load balancer's address.
    pub fn awaits_proxy_header(&self) -> bool {
        self.state == State::ReadProxy
    }

    /// True when a PROXY header named a source address (not a LOCAL/UNKNOWN health check).
    pub fn client_from_proxy_header(&self) -> bool {
        self.state != State::ReadProxy && self.client != self.peer
    }

    /// Ends the handshake with `r`'s canned answer, for a refusal the driver decides on (the
    /// per-IP limit once a PROXY header named the client). Call it instead of applying the last
    /// action: if that was a `Connect`, no backend socket exists yet.
    pub fn refuse(&mut self, r: Reject) -> Action {
        self.fail(r)
    }

    /// When [`Handshake::handle_timeout`] must be called.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// When the connection was accepted.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The backend of the current or last connect attempt.
    pub fn backend(&self) -> Option<SocketAddr> {
        self.backend
    }

    /// The backend whose attempt failed since the last call (for per-backend failure counts).
    pub fn take_failed(&mut self) -> Option<SocketAddr> {
        self.failed.take()
    }

    /// The status of a forwarded (non-101) backend answer.
    pub fn answer_status(&self) -> Option<u16> {
        let mut h = [httparse::EMPTY_HEADER; 0];
        let mut r = httparse::Response::new(&mut h);
        let _ = r.parse(&self.buf);
        r.code
    }

    /// True while a backend connect is in progress.
    pub fn is_connecting(&self) -> bool {
        self.state == State::Connecting
    }

    /// True while the rewritten head is being written to the backend.
    pub fn is_sending(&self) -> bool {
        self.state == State::SendHead
    }

    /// The route chosen, once the head was accepted.
    pub fn route(&self) -> Option<usize> {
        self.routed.then_some(self.route)
    }

    /// How many bytes the driver may read from the client now. 0: do not read (the kernel buffers
    /// whatever comes next; that is our backpressure during the handshake).
    pub fn client_read_limit(&self, s: &Settings) -> usize {
        match self.state {
            State::ReadProxy => proxy_proto::V2_MAX_LEN + s.max_head_bytes,
            State::ReadHead => s.max_head_bytes.saturating_sub(self.buf.len()).max(1),
            // Head complete: what the client sends next waits in the kernel until the tunnel.
            State::Connecting
            | State::SendHead
            | State::ReadAnswer
            | State::ForwardAnswer { .. }
            | State::Upgraded
            | State::Done => 0,
        }
    }

    /// How many bytes the driver may read from the backend now.
    pub fn backend_read_limit(&self, s: &Settings) -> usize {
        match self.state {
            State::ReadAnswer => s.max_head_bytes.saturating_sub(self.buf.len()).max(1),
            State::ForwardAnswer { .. } => (s.max_head_bytes + MAX_FORWARD_BODY)
                .saturating_sub(self.buf.len())
                .max(1),
            // No backend yet, or its head is not sent; after the 101 the relay reads.
            State::ReadProxy
            | State::ReadHead
            | State::Connecting
            | State::SendHead
            | State::Upgraded
            | State::Done => 0,
        }
    }

    /// Bytes for the backend: the rewritten head (SendHead), or the held client bytes (Upgraded).
    pub fn backend_output(&self) -> &[u8] {
        &self.out[self.written.min(self.out.len())..]
    }

    /// Bytes for the client: the backend's answer (Answer), or its 101 and what followed (Upgraded).
    pub fn client_output(&self) -> &[u8] {
        &self.buf
    }

    /// Hands the buffers over for the tunnel: (to the client, to the backend).
    pub fn into_tunnel_bytes(self) -> (Vec<u8>, Vec<u8>) {
        (self.buf, self.out)
    }

    /// Bytes arrived from the client.
    pub fn handle_client_data(&mut self, s: &Settings, now: Instant, data: &[u8]) -> Action {
        if self.state == State::ReadProxy {
            return self.on_proxy_data(s, now, data);
        }
        if self.state != State::ReadHead {
            // The driver reads only in ReadHead; anything else is a driver bug we tolerate by
            // holding the bytes (bounded like the head).
            // Once the head is sent, `out` is what the backend gets after the 101.
            let hold = if self.state == State::ReadAnswer {
                &mut self.out
            } else {
                &mut self.held
            };
            if hold.len() + data.len() > s.max_head_bytes {
                return self.fail(Reject::HeadTooLarge);
            }
            hold.extend_from_slice(data);
            return Action::Wait;
        }
        let from = self.buf.len();
        self.buf.extend_from_slice(data);
        match find_head_end(&self.buf, from.max(self.searched)) {
            Some(end) => {
                let extra = self.buf.split_off(end);
                self.held = extra;
                self.on_head(s, now)
            }
            None => {
                self.searched = self.buf.len();
                if self.buf.len() >= s.max_head_bytes {
                    // The buffer is full and still no blank line.
                    if let Err(r) = precheck_partial(&self.buf) {
                        return self.fail(r);
                    }
                    return self.fail(overflow_reject(&self.buf));
                }
                // Refuse obviously broken framing early rather than waiting for the timeout.
                match precheck_partial(&self.buf) {
                    Err(r) => self.fail(r),
                    Ok(()) => Action::Wait,
                }
            }
        }
    }

    fn on_proxy_data(&mut self, s: &Settings, now: Instant, data: &[u8]) -> Action {
        let bad = Reject::BadRequest(BadRequest::ProxyHeader);
        if !in_nets(&s.proxy_trusted, self.peer.ip()) {
            // Only a trusted load balancer may tell us who the client is.
            return self.fail(bad);
        }
        self.buf.extend_from_slice(data);
        match proxy_proto::parse(&self.buf) {
            Ok(ProxyParse::Incomplete) => Action::Wait,
            Err(_) => self.fail(bad),
            Ok(ProxyParse::Done {
                header_len,
                source,
                dest,
            }) => {
                // LOCAL / UNKNOWN (health checks): the connection's own addresses stand.
                if let Some(src) = source {
                    self.client = src;
                }
                if let Some(d) = dest {
                    self.local = d;
                }
                let rest = self.buf.split_off(header_len);
                self.buf.clear();
                self.state = State::ReadHead;
                if rest.is_empty() {
                    Action::Wait
                } else {
                    self.handle_client_data(s, now, &rest)
                }
            }
        }
    }

    fn on_head(&mut self, s: &Settings, now: Instant) -> Action {
        match self.accept_head(s) {
            Ok(out) => {
                self.out = out;
                self.buf = Vec::new();
                self.state = State::Connecting;
                let r = s.routes.get(self.route);
                self.first_backend = r.first_backend();
                self.tried = 0;
                self.connect_next(s, now)
            }
            Err(r) => self.fail(r),
        }
    }

    fn accept_head(&mut self, s: &Settings) -> Result<Vec<u8>, Reject> {
        precheck(&self.buf, s.max_head_bytes / 2)?;
        let mut headers = vec![httparse::EMPTY_HEADER; s.max_headers];
        let req = parse_request(&self.buf, &mut headers)?;
        let up = validate_request(&req)?;
        let m = s.routes.lookup(up.host, up.path).ok_or(Reject::NoRoute)?;
        self.route = m.route;
        self.routed = true;
        let route = s.routes.get(m.route);
        if route.backends.is_empty() {
            return Err(Reject::NoRoute);
        }
        let (path, query) = rewritten_target(up.path, m.strip, up.query);
        let mut out = Vec::with_capacity(self.buf.len() + 128);
        match route.send_proxy {
            Some(ProxyVersion::V1) => proxy_proto::encode_v1(&mut out, self.client, self.local),
            Some(ProxyVersion::V2) => proxy_proto::encode_v2(&mut out, self.client, self.local),
            None => {}
        }
        // A client outside `trusted_proxies` cannot extend the chain: its X-Forwarded-For is
        // replaced, so it cannot pass off a forged address as an earlier hop.
        let forwarded_for =
            if s.trusted_proxies.is_empty() || in_nets(&s.trusted_proxies, self.client.ip()) {
                route.forwarded_for
            } else {
                ForwardedFor::Replace
            };
        write_backend_head(
            &mut out,
            &req,
            path,
            query,
            self.client.ip(),
            forwarded_for,
            s.underscores_in_headers,
        );
        Ok(out)
    }

    fn connect_next(&mut self, s: &Settings, now: Instant) -> Action {
        let r = s.routes.get(self.route);
        if self.tried >= r.backends.len() {
            return self.fail(match self.last_failure {
                Some(ConnectFailure::Timeout) => Reject::BackendTimeout,
                Some(ConnectFailure::NoDescriptors) => Reject::Overloaded,
                Some(ConnectFailure::Reset) => Reject::BackendFailed(BackendFailure::Reset),
                _ => Reject::BackendFailed(BackendFailure::Refused),
            });
        }
        let addr = r.backends[(self.first_backend + self.tried) % r.backends.len()];
        self.tried += 1;
        self.backend = Some(addr);
        self.state = State::Connecting;
        self.deadline = now + s.timeouts.connect;
        Action::Connect(addr)
    }

    /// The client closed before the handshake finished.
    pub fn handle_client_eof(&mut self) -> Action {
        match self.state {
            // Nothing was sent anywhere yet: just close.
            State::ReadProxy
            | State::ReadHead
            | State::Connecting
            | State::SendHead
            | State::ReadAnswer => {
                self.state = State::Done;
                Action::Close
            }
            // The answer is relayed regardless; the client may have half-closed only.
            State::ForwardAnswer { .. } => Action::Wait,
            State::Upgraded | State::Done => Action::Wait,
        }
    }

    /// The backend connect completed.
    pub fn handle_connected(&mut self, s: &Settings, now: Instant) -> Action {
        match self.state {
            State::Connecting => {
                self.state = State::SendHead;
                self.written = 0;
                // The answer must come within the handshake timeout of the connect.
                self.deadline = now + s.timeouts.handshake;
                Action::SendHead
            }
            // A late completion of an attempt we already gave up on (timeout) or a driver event
            // after the session ended: nothing to do.
            State::ReadProxy
            | State::ReadHead
            | State::SendHead
            | State::ReadAnswer
            | State::ForwardAnswer { .. }
            | State::Upgraded
            | State::Done => Action::Wait,
        }
    }

    /// The backend connect failed; try the next backend or answer.
    pub fn handle_connect_failed(
        &mut self,
        s: &Settings,
        now: Instant,
        why: ConnectFailure,
    ) -> Action {
        match self.state {
            State::Connecting => {
                self.last_failure = Some(why);
                self.failed = self.backend;
                if why == ConnectFailure::NoDescriptors {
                    return self.fail(Reject::Overloaded);
                }
                self.connect_next(s, now)
            }
            // After the connect, a socket error is a reset of an established backend.
            State::SendHead | State::ReadAnswer => {
                self.fail(Reject::BackendFailed(BackendFailure::Reset))
            }
            State::ForwardAnswer { .. } => {
                self.state = State::Done;
                Action::Answer
            }
            // No backend socket exists before the head; after the tunnel the driver owns it.
            State::ReadProxy | State::ReadHead | State::Upgraded | State::Done => Action::Wait,
        }
    }

    /// `n` bytes of [`Handshake::backend_output`] were written.
    pub fn handle_backend_written(&mut self, n: usize) -> Action {
        match self.state {
            State::SendHead => {
                self.written += n;
                if self.written >= self.out.len() {
                    self.state = State::ReadAnswer;
                    self.out = std::mem::take(&mut self.held);
                    self.written = 0;
                    self.buf.clear();
                    self.searched = 0;
                    Action::Wait
                } else {
                    Action::SendHead
                }
            }
            // Only the head is written through the session; later writes are the relay's.
            State::ReadProxy
            | State::ReadHead
            | State::Connecting
            | State::ReadAnswer
            | State::ForwardAnswer { .. }
            | State::Upgraded
            | State::Done => Action::Wait,
        }
    }

    /// Bytes arrived from the backend.
    pub fn handle_backend_data(&mut self, s: &Settings, data: &[u8]) -> Action {
        match self.state {
            State::ReadAnswer => {
                let from = self.buf.len();
                self.buf.extend_from_slice(data);
                let Some(end) = find_head_end(&self.buf, from.max(self.searched)) else {
                    self.searched = self.buf.len();
                    if self.buf.len() >= s.max_head_bytes {
                        return self.fail(Reject::BackendFailed(BackendFailure::HeadTooLarge));
                    }
                    return Action::Wait;
                };
                let mut headers = vec![httparse::EMPTY_HEADER; s.max_headers];
                match validate_answer(&self.buf[..end], &mut headers) {
                    Ok(Answer::Switch) => {
                        self.state = State::Upgraded;
                        Action::Relay
                    }
                    Ok(Answer::Other { body, .. }) => {
                        self.state = State::ForwardAnswer {
                            body,
                            head_len: end,
                        };
                        self.check_forward_done(s)
                    }
                    Err(r) => self.fail(r),
                }
            }
            State::ForwardAnswer { .. } => {
                self.buf.extend_from_slice(data);
                self.check_forward_done(s)
            }
            // The driver reads the backend only when `backend_read_limit` allows it.
            State::ReadProxy
            | State::ReadHead
            | State::Connecting
            | State::SendHead
            | State::Upgraded
            | State::Done => Action::Wait,
        }
    }

    fn check_forward_done(&mut self, s: &Settings) -> Action {
        let State::ForwardAnswer { body, head_len } = self.state else {
            return Action::Wait;
        };
        let have = self.buf.len() - head_len;
        let done = match body {
            Body::None => {
                self.buf.truncate(head_len);
                true
            }
            Body::Length(n) => {
                if have as u64 >= n {
                    self.buf.truncate(head_len + n as usize);
                    true
                } else {
                    false
                }
            }
            Body::Chunked => self.buf[head_len..].ends_with(b"0\r\n\r\n"),
            Body::UntilClose => false,
        };
        if done || self.buf.len() >= s.max_head_bytes + MAX_FORWARD_BODY {
            self.buf.truncate(s.max_head_bytes + MAX_FORWARD_BODY);
            self.state = State::Done;
            Action::Answer
        } else {
            Action::Wait
        }
    }

    /// The backend closed its side.
    pub fn handle_backend_eof(&mut self) -> Action {
        match self.state {
            State::SendHead | State::ReadAnswer => {
                self.fail(Reject::BackendFailed(BackendFailure::ClosedEarly))
            }
            State::ForwardAnswer { .. } => {
                self.state = State::Done;
                Action::Answer
            }
            // No backend bytes are read in these states.
            State::ReadProxy
            | State::ReadHead
            | State::Connecting
            | State::Upgraded
            | State::Done => Action::Wait,
        }
    }

    /// The deadline may have passed.
    pub fn handle_timeout(&mut self, s: &Settings, now: Instant) -> Action {
        if now < self.deadline {
            return Action::Wait;
        }
        match self.state {
            // The whole head, PROXY header included, must arrive within `timeouts.handshake`.
            State::ReadProxy | State::ReadHead => self.fail(Reject::HandshakeTimeout),
            State::Connecting => {
                self.last_failure = Some(ConnectFailure::Timeout);
                self.failed = self.backend;
                self.connect_next(s, now)
            }
            State::SendHead | State::ReadAnswer => self.fail(Reject::BackendTimeout),
            State::ForwardAnswer { .. } => {
                self.state = State::Done;
                Action::Answer
            }
            State::Upgraded | State::Done => Action::Wait,
        }
    }

    fn fail(&mut self, r: Reject) -> Action {
        // The attempt in progress failed, unless a retry path already reported it.
        let attempt_open = matches!(
            self.state,
            State::Connecting | State::SendHead | State::ReadAnswer
        );
        if attempt_open
            && self.failed.is_none()
            && matches!(r, Reject::BackendFailed(_) | Reject::BackendTimeout)
        {
            self.failed = self.backend;
        }
        self.state = State::Done;
        Action::Reject(r)
    }
}

/// Checks of an incomplete head that can already fail: bare line endings and NUL before the
/// last byte (the last byte may be a CR whose LF has not arrived).
fn precheck_partial(buf: &[u8]) -> Result<(), Reject> {
    // A CR as the very last byte may still get its LF in the next read.
    let settled = buf.strip_suffix(b"\r").unwrap_or(buf);
    if has_bare_line_ending(settled) || settled.contains(&0) {
        return Err(Reject::BadRequest(BadRequest::BareLineEnding));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ForwardedFor, Route};
    use crate::core::status::BadRequest;
    use std::time::Duration;

    const HEAD: &str = "GET /notice/a?x=1 HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    const OK101: &str = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

    fn settings(backends: &[&str]) -> Settings {
        Settings {
            max_head_bytes: 4096,
            max_headers: 32,
            routes: RouteTable::new(&[Route {
                prefix: "/notice".into(),
                host: None,
                backends: backends.iter().map(|b| b.parse().expect("addr")).collect(),
                strip_prefix: true,
                forwarded_for: ForwardedFor::Append,
                send_proxy: None,
            }]),
            // The defaults: handshake 10 s, connect 5 s.
            ..Settings::new(RouteTable::default(), Timeouts::default())
        }
    }

    /// One step of a byte script and what the session must answer.
    enum Step<'a> {
        Client(&'a [u8], Action),
        ClientEof(Action),
        Connected(Action),
        ConnectFailed(ConnectFailure, Action),
        Written(usize, Action),
        Backend(&'a [u8], Action),
        BackendEof(Action),
        /// Advance the fake clock, then deliver a timeout.
        After(Duration, Action),
    }

    fn run(s: &Settings, script: &[Step<'_>]) -> Handshake {
        let mut now = Instant::now();
        let mut hs = Handshake::new("10.0.0.7".parse().expect("ip"), now, s);
        for (i, step) in script.iter().enumerate() {
            let (got, want) = match step {
                Step::Client(b, want) => (hs.handle_client_data(s, now, b), want),
                Step::ClientEof(want) => (hs.handle_client_eof(), want),
                Step::Connected(want) => (hs.handle_connected(s, now), want),
                Step::ConnectFailed(f, want) => (hs.handle_connect_failed(s, now, *f), want),
                Step::Written(n, want) => (hs.handle_backend_written(*n), want),
                Step::Backend(b, want) => (hs.handle_backend_data(s, b), want),
                Step::BackendEof(want) => (hs.handle_backend_eof(), want),
                Step::After(d, want) => {
                    now += *d;
                    (hs.handle_timeout(s, now), want)
                }
            };
            assert_eq!(&got, want, "step {i}");
        }
        hs
    }

    fn addr(a: &str) -> Action {
        Action::Connect(a.parse().expect("addr"))
    }

    #[test]
    fn whole_handshake_in_small_chunks() {
        let s = settings(&["127.0.0.1:1"]);
        let mut steps: Vec<Step<'_>> = Vec::new();
        let head = HEAD.as_bytes();
        for chunk in head[..head.len() - 1].chunks(7) {
            steps.push(Step::Client(chunk, Action::Wait));
        }
        steps.push(Step::Client(&head[head.len() - 1..], addr("127.0.0.1:1")));
        steps.push(Step::Connected(Action::SendHead));
        let hs = run(&s, &steps);
        let sent = String::from_utf8(hs.backend_output().to_vec()).expect("ascii");
        assert!(
            sent.starts_with("GET /a?x=1 HTTP/1.1\r\nHost: h\r\n"),
            "{sent}"
        );
        assert!(sent.contains("X-Forwarded-For: 10.0.0.7\r\n"));
    }

    #[test]
    fn pipelined_frame_is_held_until_101_and_backend_extra_goes_to_client() {
        let s = settings(&["127.0.0.1:1"]);
        let mut first = HEAD.as_bytes().to_vec();
        first.extend_from_slice(b"\x81\x85FRAME");
        let mut answer = OK101.as_bytes().to_vec();
        answer.extend_from_slice(b"\x81\x02hi");
        let mut hs = run(
            &s,
            &[
                Step::Client(&first, addr("127.0.0.1:1")),
                Step::Connected(Action::SendHead),
            ],
        );
        let n = hs.backend_output().len();
        assert!(
            !hs.backend_output().ends_with(b"FRAME"),
            "held bytes must wait for the 101"
        );
        assert_eq!(hs.handle_backend_written(n - 3), Action::SendHead);
        assert_eq!(hs.handle_backend_written(3), Action::Wait);
        assert_eq!(hs.handle_backend_data(&s, &answer[..20]), Action::Wait);
        assert_eq!(hs.handle_backend_data(&s, &answer[20..]), Action::Relay);
        let (to_client, to_backend) = hs.into_tunnel_bytes();
        assert_eq!(to_client, answer);
        assert_eq!(to_backend, b"\x81\x85FRAME");
    }

    #[test]
    fn rejects_answer_and_never_connect() {
        use ConnectFailure as F;
        let s = settings(&["127.0.0.1:1", "127.0.0.1:2"]);
        let cases: Vec<(Vec<Step<'_>>, Action)> = vec![
            (
                vec![Step::Client(b"GET / HTTP/1.1\nHost: x\r\n", Action::Wait)],
                Action::Wait,
            ),
            (
                vec![Step::After(
                    Duration::from_secs(10),
                    Action::Reject(Reject::HandshakeTimeout),
                )],
                Action::Wait,
            ),
            (
                vec![Step::Client(
                    b"GET /notice HTTP/1.1\r\nHost: h\r\n\r\n",
                    Action::Reject(Reject::NotUpgrade),
                )],
                Action::Wait,
            ),
            (
                vec![Step::Client(
                    HEAD.replace("/notice/a", "/other")
                        .as_bytes()
                        .to_vec()
                        .leak(),
                    Action::Reject(Reject::NoRoute),
                )],
                Action::Wait,
            ),
            (vec![Step::ClientEof(Action::Close)], Action::Wait),
            (
                vec![Step::Client(
                    &[b'a'; 4096],
                    Action::Reject(Reject::UriTooLong),
                )],
                Action::Wait,
            ),
        ];
        // A bare LF as the last byte so far is refused at once, not at the handshake timeout.
        let mut hs = Handshake::new("10.0.0.7".parse().expect("ip"), Instant::now(), &s);
        assert_eq!(
            hs.handle_client_data(&s, Instant::now(), b"GET / HTTP/1.1\r\nHost: x\r\n\n"),
            Action::Reject(Reject::BadRequest(BadRequest::BareLineEnding))
        );
        let mut hs = Handshake::new("10.0.0.7".parse().expect("ip"), Instant::now(), &s);
        assert_eq!(
            hs.handle_client_data(&s, Instant::now(), b"GET / HTTP/1.1\r"),
            Action::Wait,
            "a trailing CR may still get its LF"
        );
        // The first row: a bare LF is refused as soon as it is seen, before the head completes.
        let mut hs = Handshake::new("10.0.0.7".parse().expect("ip"), Instant::now(), &s);
        assert_eq!(
            hs.handle_client_data(&s, Instant::now(), b"GET / HTTP/1.1\nHost: x\r\n"),
            Action::Reject(Reject::BadRequest(BadRequest::BareLineEnding))
        );
        for (steps, _) in cases.into_iter().skip(1) {
            run(&s, &steps);
        }
        // Fail-over: refused, then timeout => 504 after both were tried once.
        run(
            &s,
            &[
                Step::Client(HEAD.as_bytes(), addr("127.0.0.1:1")),
                Step::ConnectFailed(F::Refused, addr("127.0.0.1:2")),
                Step::After(
                    Duration::from_secs(5),
                    Action::Reject(Reject::BackendTimeout),
                ),
            ],
        );
        // Round robin: the next connection starts at the second backend.
        run(
            &s,
            &[
                Step::Client(HEAD.as_bytes(), addr("127.0.0.1:2")),
                Step::ConnectFailed(F::Reset, addr("127.0.0.1:1")),
                Step::ConnectFailed(
                    F::Refused,
                    Action::Reject(Reject::BackendFailed(BackendFailure::Refused)),
                ),
            ],
        );
        run(
            &s,
            &[
                Step::Client(HEAD.as_bytes(), addr("127.0.0.1:1")),
                Step::ConnectFailed(F::NoDescriptors, Action::Reject(Reject::Overloaded)),
            ],
        );
    }

    #[test]
    fn backend_answers() {
        let s = settings(&["127.0.0.1:1"]);
        let start = [
            Step::Client(HEAD.as_bytes(), addr("127.0.0.1:1")),
            Step::Connected(Action::SendHead),
        ];
        let n = {
            let hs = run(&s, &start);
            hs.backend_output().len()
        };
        let with = |rest: Vec<Step<'static>>| {
            let mut v: Vec<Step<'static>> = vec![
                Step::Client(HEAD.as_bytes(), addr("127.0.0.1:1")),
                Step::Connected(Action::SendHead),
                Step::Written(n, Action::Wait),
            ];
            v.extend(rest);
            v
        };
        let bad = Action::Reject(Reject::BackendFailed(BackendFailure::BadAnswer));
        run(
            &s,
            &with(vec![Step::Backend(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
                bad,
            )]),
        );
        run(
            &s,
            &with(vec![
                Step::Backend(b"HTTP/1.1 101 Sw", Action::Wait),
                Step::BackendEof(Action::Reject(Reject::BackendFailed(
                    BackendFailure::ClosedEarly,
                ))),
            ]),
        );
        run(
            &s,
            &with(vec![Step::After(
                Duration::from_secs(10),
                Action::Reject(Reject::BackendTimeout),
            )]),
        );
        let hs = run(
            &s,
            &with(vec![
                Step::Backend(
                    b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\n\r\nno",
                    Action::Wait,
                ),
                Step::Backend(b"pe and more", Action::Answer),
            ]),
        );
        assert_eq!(
            hs.client_output(),
            b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\n\r\nnope"
        );
        let hs = run(
            &s,
            &with(vec![
                Step::Backend(b"HTTP/1.1 500 Oops\r\n\r\nbody", Action::Wait),
                Step::BackendEof(Action::Answer),
            ]),
        );
        assert_eq!(hs.client_output(), b"HTTP/1.1 500 Oops\r\n\r\nbody");
        let big = vec![b'x'; 5000];
        run(
            &s,
            &with(vec![
                Step::Backend(b"HTTP/1.1 101 ", Action::Wait),
                Step::Backend(
                    big.leak(),
                    Action::Reject(Reject::BackendFailed(BackendFailure::HeadTooLarge)),
                ),
            ]),
        );
    }

    #[test]
    fn proxy_header_names_the_client_and_a_refusal_replaces_the_connect() {
        let mut s = settings(&["127.0.0.1:1"]);
        s.proxy_trusted = vec!["127.0.0.0/8".parse().expect("net")];
        assert!(s.proxy_trusts("127.0.0.9".parse().expect("ip")));
        assert!(!s.proxy_trusts("10.0.0.1".parse().expect("ip")));
        let lb: SocketAddr = "127.0.0.9:4000".parse().expect("addr");
        let now = Instant::now();

        // PROXY header and head in one read: the driver sees Connect and may refuse instead.
        let mut hs = Handshake::accept(lb, lb, true, now, &s);
        assert!(hs.awaits_proxy_header() && !hs.client_from_proxy_header());
        let mut bytes = b"PROXY TCP4 203.0.113.7 127.0.0.1 56324 443\r\n".to_vec();
        bytes.extend_from_slice(HEAD.as_bytes());
        assert_eq!(hs.handle_client_data(&s, now, &bytes), addr("127.0.0.1:1"));
        assert!(!hs.awaits_proxy_header() && hs.client_from_proxy_header());
        assert_eq!(hs.client(), "203.0.113.7:56324".parse().expect("addr"));
        assert_eq!(
            hs.refuse(Reject::TooManyFromIp),
            Action::Reject(Reject::TooManyFromIp)
        );
        // Done: nothing more is read from the client.
        assert_eq!(hs.client_read_limit(&s), 0);

        // A LOCAL header (health check) names no client: the balancer's address stands.
        let mut hs = Handshake::accept(lb, lb, true, now, &s);
        let local = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00";
        assert_eq!(hs.handle_client_data(&s, now, local), Action::Wait);
        assert!(!hs.awaits_proxy_header() && !hs.client_from_proxy_header());
        assert_eq!(hs.client(), lb);
    }
}
