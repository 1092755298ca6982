//! wsplice: a WebSocket reverse proxy for Linux that holds many connections on little memory.
//!
//! ```text
//!   config/ ──▶ driver::Server (threads)              ──▶ one worker per thread, or
//!               driver::supervisor (processes, memfd) ──▶ one worker per process
//!                 each worker: driver::epoll::Worker::run
//!                   ├─ driver::worker::Worker (any driver): slab of connections, timer wheel,
//!                   │  pipe pool, limits, counters, access log, reload and drain
//!                   ├─ driver::epoll: mio Poll (edge-triggered), its own SO_REUSEPORT
//!                   │  listeners; executes I/O operations
//!                   └─ counters published once per loop (driver::shared: in memory the
//!                      supervisor sums, with exact cross-process limits)
//!
//!   core/ (sans-IO, decides)            driver/ (executes)                  sys/ (only unsafe)
//!   conn::Conn ─ upgrade ─▶ relay ─▶ end   worker::Worker ── Driver::exec ──▶ sock, pipe, limits
//!      │    ▲ └▶ http (plain requests)      (and its idle backend pool)
//!      │    └──────┘ keep-alive: next head
//!      └─ linger (refusals, answers)
//! ```
//!
//! ## One connection, accept to close
//! 1. `driver::epoll` sees its listener readable and calls `sys::sock::accept_nonblocking`;
//!    `worker::Worker::accepted` takes a `max_connections` slot (or not: then the connection is
//!    `full`) and creates [`core::conn::Conn::accept`] in the slab. A client of a TLS listener
//!    also gets a [`transport::tls::TlsSession`], kept beside the slab: its reads and writes go
//!    through the session (handshake included), and its tunnel copies instead of splicing.
//! 2. From then on the worker (`driver::worker::drive`) only calls [`core::conn::Conn::handle`]
//!    with an [`core::conn::Event`] (readiness from epoll, a timer from the wheel, resume,
//!    drain) and then [`core::conn::Conn::pump`] until it returns `Wait`, `Yield` or `End`. The
//!    pump runs the connection's own operation loop: each `Io` operation (read, write, splice
//!    in/out, shutdown) goes to the worker's [`core::conn::Executor`], which hands it to the
//!    driver (`Driver::exec_plain` for plain sockets: a syscall now, or an io_uring submission
//!    whose completion comes back through `complete_io`); a read that brought bytes is followed
//!    by their write at once ([`core::relay::Relay::follow_up`]). Every other [`core::conn::Step`] returns to the worker,
//!    which carries it out and reports back: `Admit` (per-IP limiter, `complete_admit`), `Arm`
//!    (timer wheel), `Connect` and `CheckConnect` (`complete_connect`), `CloseBackend`, `Note`
//!    (counters), `End`. A connection with a TLS session goes an operation at a time instead
//!    ([`core::conn::Conn::poll`], then `complete_io`), each through its session.
//! 3. The upgrade stage (`core::conn::upgrade`) wraps [`core::handshake::Handshake`]: it asks to
//!    read the client head, validates it (`core::head`, `core::validate`), routes it
//!    (`core::route`), asks for a backend connect, writes the rewritten head
//!    (`core::rewrite`), reads and checks the 101, and retries the next backend on failure.
//!    A plain (non-upgrade) request becomes the HTTP stage (`core::conn::http`): it asks for a
//!    pooled backend connection or a new one (`Checkout`), streams the request and its answer
//!    through `core::http` framing, gives the connection back (`Release`) or closes it, then
//!    hands the client connection back to the upgrade stage for its next head.
//! 4. A refusal or a non-101 answer becomes the linger stage: our answer, FIN, discard until
//!    the client closes or 2 s pass. A 101 becomes the relay stage ([`core::relay::Relay`]):
//!    per direction, read into the worker's scratch and write, or (bulk bursts) splice into a
//!    pipe borrowed from the pool and out again; backpressure, half-close, idle and half-close
//!    timeouts and the close reason are decided there.
//! 5. `End` says what to give back: the worker drops both sockets, releases the slot and the
//!    per-IP count, counts the close reason and writes the access log line.
//!
//! ## Binary upgrade (`SIGUSR2`)
//! [`driver::upgrade`]: the running process starts the binary now at its path with the same
//! arguments and an inherited `SOCK_SEQPACKET` socket; passes the listening sockets (the new
//! process serves on the same accept queues, then confirms); then each worker hands every
//! established relay over between two operations, with `SCM_RIGHTS`: both sockets plus
//! [`core::conn::Handed`] (the relay's [`core::relay::RelayState`]: pending bytes, half-close,
//! timer ages; the per-IP count; access log facts). The new worker rebuilds it with
//! [`core::conn::Conn::taken_over`]. Handshakes finish in the old process first; the old process
//! exits when it holds nothing. A new binary that fails leaves the old one as it was. With
//! worker processes the two supervisors pass the listeners, and each old worker process sends
//! its tunnels straight to a new worker over a socket pair the new supervisor made for it
//! (`driver::supervisor`'s `upgrade` module).
//!
//! The driver never asks a connection what state it is in: it feeds events and executes
//! operations. An idle relay holds its two sockets and one small slab entry: no buffer, no pipe.
//! The core never touches a socket or reads a clock, so whole connections are unit tests with
//! scripted results and a fake clock. All raw syscalls live in [`sys`].
//!
//! ```
//! use std::time::Instant;
//! use wsplice::config::{ForwardedFor, Route, Timeouts};
//! use wsplice::core::route::RouteTable;
//! use wsplice::core::handshake::{Action, Handshake, Settings};
//!
//! let routes = RouteTable::new(&[Route {
//!     prefix: "/notice".into(),
//!     host: None,
//!     backends: vec!["127.0.0.1:50001".parse().unwrap()],
//!     strip_prefix: true,
//!     forwarded_for: ForwardedFor::Append,
//!     send_proxy: None,
//!     options: Default::default(),
//! }]);
//! let s = Settings::new(routes, Timeouts::default());
//! let now = Instant::now();
//! let mut hs = Handshake::new("203.0.113.9".parse().unwrap(), now, &s);
//! let head = b"GET /notice/a HTTP/1.1\r\nHost: push.example\r\nUpgrade: websocket\r\n\
//!              Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
//!              Sec-WebSocket-Version: 13\r\n\r\n";
//! assert_eq!(
//!     hs.handle_client_data(&s, now, head),
//!     Action::Connect("127.0.0.1:50001".parse().unwrap())
//! );
//! assert_eq!(hs.handle_connected(&s, now), Action::SendHead);
//! let rewritten = String::from_utf8_lossy(hs.backend_output());
//! assert!(rewritten.starts_with("GET /a HTTP/1.1\r\nHost: push.example\r\n"));
//! assert!(rewritten.contains("X-Forwarded-For: 203.0.113.9\r\n"));
//! ```
#![deny(unsafe_code)]

pub mod config;
pub mod core;
pub mod driver;
#[cfg(feature = "import")]
pub mod import;
#[allow(unsafe_code)]
pub mod sys;
pub mod transport;
