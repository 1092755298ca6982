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
mod client;

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

#[cfg(test)]
mod tests;
