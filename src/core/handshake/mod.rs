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

use crate::config::{BackendProtocol, ForwardedFor, ProxyVersion};
use crate::core::balance::Pick;
use crate::core::head::{
    find_head_end, has_bare_line_ending, overflow_reject, parse_request, precheck, RequestHead,
};
use crate::core::http::uwsgi;
use crate::core::proxy_proto::{self, ProxyParse};
use crate::core::rewrite::{write_backend_head, write_request_head, Forwarding};
use crate::core::route::{rewritten_target, RouteEntry};
use crate::core::status::BadRequest;
use crate::core::status::{BackendFailure, Reject};
use crate::core::validate::{classify_request, validate_answer, Answer, Body, Request};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

/// Body bytes of a non-101 answer relayed at most (beyond the head); the rest is cut off.
pub const MAX_FORWARD_BODY: usize = 64 * 1024;

pub use crate::core::settings::{in_nets, Settings};

mod backend;

/// Why a backend connect attempt failed, as the driver saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    Refused,
    Reset,
    Timeout,
    /// The proxy could not get a descriptor (EMFILE/ENFILE): no point trying another backend.
    NoDescriptors,
    /// The TLS handshake with a TLS backend failed before any byte of the request went out.
    Tls,
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
    /// A plain request: take it with [`Handshake::take_plain`] and forward it.
    Http,
}

/// A plain (non-upgrade) request, accepted and rewritten, for the HTTP exchange to forward.
#[derive(Debug)]
pub struct PlainRequest {
    /// What the backend gets first: the rewritten head, or the uwsgi packet (without any
    /// PROXY header: that is written per backend connection).
    pub head: Vec<u8>,
    pub body: Body,
    /// `HEAD`: the answer has no body whatever its head says.
    pub head_method: bool,
    /// The method may be repeated on another connection (RFC 9110 §9.2.2).
    pub idempotent: bool,
    /// The client's `Connection` names `close` (or it speaks HTTP/1.0): the connection ends
    /// after this answer.
    pub close: bool,
    /// An HTTP/1.0 client: no interim answers, no chunked answer.
    pub http10: bool,
    pub route: usize,
    /// The backend to try first, and what a sticky cookie said.
    pub pick: Pick,
    /// Client bytes read after the head: the body's start, perhaps the next request.
    pub held: Vec<u8>,
}

/// What an accepted head turns into.
enum Accepted {
    /// The upgrade head for the backend.
    Upgrade(Vec<u8>),
    Plain(Box<PlainRequest>),
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
    /// A plain request was accepted: the HTTP exchange takes over.
    Forward,
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
    /// The client's PROXY header and head, while reading them.
    head: Vec<u8>,
    /// How far `head` or `answer` was searched for the blank line.
    searched: usize,
    /// The rewritten head for the backend, while sending it.
    to_backend: Vec<u8>,
    written: usize,
    /// The backend's answer: its 101 (and what followed), or the non-101 answer relayed.
    answer: Vec<u8>,
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
    /// The index in its route of the current attempt's backend, and of the failed one's
    /// (for passive ejection).
    current: usize,
    failed_index: usize,
    deadline: Instant,
    started: Instant,
    /// Waiting for the first byte of a keep-alive connection's next request: the deadline is
    /// `timeouts.client_idle`, and it passing closes the connection without an answer.
    idle: bool,
    plain: Option<Box<PlainRequest>>,
    /// The client came over TLS: `X-Forwarded-Proto: https`.
    https: bool,
    /// The client came to a redirect listener: every head is answered with a redirect to
    /// https on this port ([`crate::core::redirect`]).
    redirect: Option<u16>,
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
            head: Vec::new(),
            searched: 0,
            to_backend: Vec::new(),
            written: 0,
            answer: Vec::new(),
            held: Vec::new(),
            route: 0,
            routed: false,
            first_backend: 0,
            tried: 0,
            last_failure: None,
            backend: None,
            failed: None,
            current: 0,
            failed_index: 0,
            deadline: now + s.timeouts.handshake,
            started: now,
            idle: false,
            plain: None,
            https: false,
            redirect: None,
        }
    }

    /// The client came to a redirect listener: its head is answered with a redirect to https
    /// on `port`.
    pub fn set_redirect(&mut self, port: u16) {
        self.redirect = Some(port);
    }

    /// True for a redirect listener's client.
    pub fn is_redirect(&self) -> bool {
        self.redirect.is_some()
    }

    /// The client connected over TLS: the backend is told `X-Forwarded-Proto: https`.
    pub fn set_https(&mut self) {
        self.https = true;
    }

    /// The next request on a keep-alive connection from `client` (the address a PROXY header
    /// gave, if any) over `peer` to `local`, after the last answer went out at `now`.
    pub fn next_request(
        client: SocketAddr,
        peer: SocketAddr,
        local: SocketAddr,
        now: Instant,
        s: &Settings,
    ) -> Handshake {
        let mut hs = Handshake::accept(peer, local, false, now, s);
        hs.client = client;
        hs.idle = true;
        hs.deadline = now + s.timeouts.client_idle;
        hs
    }

    /// The TCP peer (the load balancer when a PROXY header was expected).
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The address the client connected to (or the one a PROXY header named).
    pub fn local(&self) -> SocketAddr {
        self.local
    }

    /// True while a keep-alive connection waits for the first byte of its next request.
    pub fn is_idle(&self) -> bool {
        self.idle
    }

    /// The plain request of the last [`Action::Http`].
    pub fn take_plain(&mut self) -> Option<Box<PlainRequest>> {
        self.plain.take()
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

    /// The index in its route of the backend of the current or last connect attempt.
    pub fn backend_index(&self, s: &Settings) -> Option<usize> {
        let n = s.routes.get(self.route).backends.len();
        (self.routed && self.backend.is_some() && n > 0).then_some(self.current)
    }

    /// The backend whose attempt failed since the last call (for per-backend failure counts).
    pub fn take_failed(&mut self) -> Option<SocketAddr> {
        self.failed.take()
    }

    /// The status of a forwarded (non-101) backend answer.
    pub fn answer_status(&self) -> Option<u16> {
        let mut h = [httparse::EMPTY_HEADER; 0];
        let mut r = httparse::Response::new(&mut h);
        let _ = r.parse(&self.answer);
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
            State::ReadHead => s.max_head_bytes.saturating_sub(self.head.len()).max(1),
            // Head complete: what the client sends next waits in the kernel until the tunnel.
            State::Connecting
            | State::SendHead
            | State::ReadAnswer
            | State::ForwardAnswer { .. }
            | State::Upgraded
            | State::Forward
            | State::Done => 0,
        }
    }

    /// Bytes for the backend while the rewritten head is sent (SendHead).
    pub fn backend_output(&self) -> &[u8] {
        &self.to_backend[self.written.min(self.to_backend.len())..]
    }

    /// Bytes for the client: the backend's answer (Answer), or its 101 and what followed (Upgraded).
    pub fn client_output(&self) -> &[u8] {
        &self.answer
    }

    /// Hands the buffers over for the tunnel: (to the client, to the backend).
    pub fn into_tunnel_bytes(self) -> (Vec<u8>, Vec<u8>) {
        (self.answer, self.held)
    }

    /// Bytes arrived from the client.
    pub fn handle_client_data(&mut self, s: &Settings, now: Instant, data: &[u8]) -> Action {
        if self.state == State::ReadProxy {
            return self.on_proxy_data(s, now, data);
        }
        if self.state != State::ReadHead {
            // The driver reads only in ReadHead; anything else is a driver bug we tolerate by
            // holding the bytes (bounded like the head) for the backend, after the 101.
            if self.held.len() + data.len() > s.max_head_bytes {
                return self.fail(Reject::HeadTooLarge);
            }
            self.held.extend_from_slice(data);
            return Action::Wait;
        }
        if self.idle {
            // The next request began: it has the handshake timeout, like a first one.
            self.idle = false;
            self.deadline = now + s.timeouts.handshake;
        }
        let from = self.head.len();
        self.head.extend_from_slice(data);
        match find_head_end(&self.head, from.max(self.searched)) {
            Some(end) => {
                let extra = self.head.split_off(end);
                self.held = extra;
                self.on_head(s, now)
            }
            None => {
                self.searched = self.head.len();
                if self.head.len() >= s.max_head_bytes {
                    // The buffer is full and still no blank line.
                    if let Err(r) = precheck_partial(&self.head) {
                        return self.fail(r);
                    }
                    return self.fail(overflow_reject(&self.head));
                }
                // Refuse obviously broken framing early rather than waiting for the timeout.
                match precheck_partial(&self.head) {
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
        self.head.extend_from_slice(data);
        match proxy_proto::parse(&self.head) {
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
                let rest = self.head.split_off(header_len);
                self.head.clear();
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
        if let Some(port) = self.redirect {
            return match crate::core::redirect::answer(&self.head, s, port) {
                Ok((_, out)) => {
                    self.answer = out;
                    self.head = Vec::new();
                    self.state = State::Done;
                    Action::Answer
                }
                Err(r) => self.fail(r),
            };
        }
        match self.accept_head(s) {
            Ok(Accepted::Upgrade(out)) => {
                self.to_backend = out;
                self.head = Vec::new();
                self.state = State::Connecting;
                self.tried = 0;
                self.connect_next(s, now)
            }
            Ok(Accepted::Plain(mut p)) => {
                p.held = std::mem::take(&mut self.held);
                self.plain = Some(p);
                self.head = Vec::new();
                self.state = State::Forward;
                Action::Http
            }
            Err(r) => self.fail(r),
        }
    }

    fn accept_head(&mut self, s: &Settings) -> Result<Accepted, Reject> {
        precheck(&self.head, s.max_head_bytes / 2)?;
        let mut headers = vec![httparse::EMPTY_HEADER; s.max_headers];
        let req = parse_request(&self.head, &mut headers)?;
        let kind = classify_request(&req)?;
        let (host, path, query) = match kind {
            Request::Upgrade(u) => (u.host, u.path, u.query),
            Request::Plain(p) => (p.host, p.path, p.query),
        };
        let m = s.routes.lookup(host, path).ok_or(Reject::NoRoute)?;
        self.route = m.route;
        self.routed = true;
        let route = s.routes.get(m.route);
        if route.backends.is_empty() {
            // Its names resolved to nothing (yet): the route exists, its backends do not.
            return Err(Reject::BackendFailed(BackendFailure::NoBackends));
        }
        check_origin(route, &req)?;
        let uwsgi = route.options.protocol == BackendProtocol::Uwsgi;
        let (path, query) = rewritten_target(path, m.strip, query);
        let fwd = Forwarding {
            client_ip: self.client.ip(),
            forwarded_for: self.forwarded_for(s, route.forwarded_for),
            underscores: s.underscores_in_headers,
            https: self.https,
        };
        let plain = match kind {
            Request::Plain(p) => p,
            // uWSGI's own WebSocket support needs its handshake in the app, not a 101 from
            // a backend we tunnel to.
            Request::Upgrade(_) if uwsgi => {
                return Err(Reject::BadRequest(BadRequest::UpgradeToken))
            }
            Request::Upgrade(_) => {
                self.first_backend = route.pick(&req, query, self.client.ip()).first;
                return Ok(Accepted::Upgrade(
                    self.upgrade_head(route, &req, path, query, fwd),
                ));
            }
        };
        if !route.options.http {
            return Err(Reject::NotUpgrade);
        }
        let mut head = Vec::with_capacity(self.head.len() + 128);
        if uwsgi {
            if plain.body == Body::Chunked {
                return Err(Reject::LengthRequired);
            }
            let stripped = &plain.path[..m.strip.min(plain.path.len())];
            let at = uwsgi::Origin {
                client: self.client,
                local: self.local,
                server_name: plain.host,
                script_name: stripped,
            };
            uwsgi::write_packet(
                &mut head,
                &req,
                path,
                query,
                plain.body,
                at,
                fwd.underscores,
            )
            .map_err(|_| Reject::HeadTooLarge)?;
        } else {
            // A 1.0 exchange ends with its answer on both sides.
            let reuse = s.backend_reuse && route.send_proxy.is_none() && !plain.http10;
            write_request_head(&mut head, &req, path, query, plain.body, reuse, &fwd);
        }
        let pick = route.pick(&req, query, self.client.ip());
        Ok(Accepted::Plain(Box::new(PlainRequest {
            head,
            body: plain.body,
            head_method: req.method == "HEAD",
            idempotent: crate::core::http::idempotent(req.method),
            http10: plain.http10,
            close: plain.http10
                || req.headers.iter().any(|h| {
                    h.name.eq_ignore_ascii_case("connection")
                        && crate::core::validate::tokens(h.value)
                            .any(|t| t.eq_ignore_ascii_case(b"close"))
                }),
            route: m.route,
            pick,
            held: Vec::new(),
        })))
    }

    /// How X-Forwarded-For is written for this client: a client outside `trusted_proxies`
    /// cannot extend the chain, so its X-Forwarded-For is replaced and it cannot pass off a
    /// forged address as an earlier hop.
    fn forwarded_for(&self, s: &Settings, route: ForwardedFor) -> ForwardedFor {
        if s.trusted_proxies.is_empty() || in_nets(&s.trusted_proxies, self.client.ip()) {
            route
        } else {
            ForwardedFor::Replace
        }
    }

    fn upgrade_head(
        &self,
        route: &RouteEntry,
        req: &RequestHead<'_, '_>,
        path: &str,
        query: &str,
        fwd: Forwarding,
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.head.len() + 128);
        match route.send_proxy {
            Some(ProxyVersion::V1) => proxy_proto::encode_v1(&mut out, self.client, self.local),
            Some(ProxyVersion::V2) => proxy_proto::encode_v2(&mut out, self.client, self.local),
            None => {}
        }
        write_backend_head(&mut out, req, path, query, &fwd);
        out
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
            State::Upgraded | State::Forward | State::Done => Action::Wait,
        }
    }

    /// The deadline may have passed.
    pub fn handle_timeout(&mut self, s: &Settings, now: Instant) -> Action {
        if now < self.deadline {
            return Action::Wait;
        }
        match self.state {
            // A keep-alive connection that sent nothing more is closed without an answer.
            State::ReadHead if self.idle && self.head.is_empty() => {
                self.state = State::Done;
                Action::Close
            }
            // The whole head, PROXY header included, must arrive within `timeouts.handshake`.
            State::ReadProxy | State::ReadHead => self.fail(Reject::HandshakeTimeout),
            State::Connecting => {
                self.last_failure = Some(ConnectFailure::Timeout);
                self.mark_failed();
                self.connect_next(s, now)
            }
            State::SendHead | State::ReadAnswer => self.fail(Reject::BackendTimeout),
            State::ForwardAnswer { .. } => {
                self.state = State::Done;
                Action::Answer
            }
            State::Upgraded | State::Forward | State::Done => Action::Wait,
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
            self.mark_failed();
        }
        self.state = State::Done;
        Action::Reject(r)
    }
}

/// A route with `origins` takes requests without `Origin` (not from a browser page, or
/// same-origin) and from the origins listed, compared case-insensitively.
fn check_origin(route: &RouteEntry, req: &RequestHead<'_, '_>) -> Result<(), Reject> {
    let allowed = &route.options.origins;
    if allowed.is_empty() {
        return Ok(());
    }
    let mut origins = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("origin"));
    match (origins.next(), origins.next()) {
        (None, _) => Ok(()),
        (Some(o), None) => {
            let v = o.value.trim_ascii();
            if allowed.iter().any(|a| a.as_bytes().eq_ignore_ascii_case(v)) {
                Ok(())
            } else {
                Err(Reject::Forbidden)
            }
        }
        // Two origins: which one would the backend believe?
        (Some(_), Some(_)) => Err(Reject::Forbidden),
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
mod tests;
