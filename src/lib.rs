//! wsplice: a WebSocket reverse proxy for Linux that holds many connections on little memory.
//!
//! ```text
//!   config.rs ──▶ driver::Server (threads)              ──▶ one worker per thread, or
//!                 driver::supervisor (processes, memfd) ──▶ one worker per process
//!                   each worker (driver::epoll::Worker):
//!                     ├─ its own SO_REUSEPORT listener per address
//!                     ├─ mio Poll (edge-triggered), slab of connections
//!                     ├─ timer wheel (core::timer), pipe pool (sys::pipe)
//!                     └─ per-worker counters, published once per loop (driver::shared: in
//!                        memory the supervisor sums, with exact cross-process limits)
//!
//!   one connection:
//!     bytes ──▶ core::session::Handshake (sans-IO: head checks, route, rewrite, 101 check)
//!           ◀── Action (Connect, SendHead, Reject, Forward, Tunnel)   ── the driver does the I/O
//!     then driver::relay::Tunnel: splice(2) through a borrowed pipe, or copy through the
//!     worker's scratch buffer; an idle tunnel holds two sockets and a 104-byte slab entry
//! ```
//!
//! Data flows one way: the driver feeds bytes and `now` into the [`core`], which decides; the
//! driver carries the decision out. The core never touches a socket or reads a clock, so whole
//! handshakes are unit tests with byte scripts and a fake clock. All raw syscalls live in
//! [`sys`].
//!
//! ```
//! use std::time::Instant;
//! use wsplice::config::{ForwardedFor, Route, Timeouts};
//! use wsplice::core::route::RouteTable;
//! use wsplice::core::session::{Action, Handshake, Settings};
//!
//! let routes = RouteTable::new(&[Route {
//!     prefix: "/notice".into(),
//!     host: None,
//!     backends: vec!["127.0.0.1:50001".parse().unwrap()],
//!     strip_prefix: true,
//!     forwarded_for: ForwardedFor::Append,
//!     send_proxy: None,
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
pub mod config;
pub mod core;
pub mod demo;
pub mod driver;
pub mod sys;
