//! The sans-IO core: bytes and `now` in, decisions out. No sockets, no clock reads, no libc.
//!
//! * [`head`]: request-head framing, strict pre-checks, httparse parse.
//! * [`handshake`]: WebSocket upgrade validation; backend answer validation.
//! * [`rewrite`]: the head the backend receives.
//! * [`route`]: (host, path) -> route -> backend.
//! * [`session`]: the per-connection handshake state machine.
//! * [`tunnel`]: the relay's timers and half-close bookkeeping.
//! * [`timer`]: the per-worker timer wheel.
//! * [`status`]: failures and the HTTP answers they map to.
pub mod handshake;
pub mod head;
pub mod proxy_proto;
pub mod rewrite;
pub mod route;
pub mod session;
pub mod status;
pub mod timer;
pub mod tunnel;
