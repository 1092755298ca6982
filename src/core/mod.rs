//! The sans-IO core: bytes, events and `now` in, decisions out. No sockets, no clock reads, no
//! libc.
//!
//! * [`conn`]: one connection's life, accept to close: upgrade, relay, lingering close.
//! * [`handshake`]: the upgrade handshake state machine (client head to backend 101).
//! * [`validate`]: WebSocket upgrade validation; backend answer validation.
//! * [`head`]: request-head framing, strict pre-checks, httparse parse.
//! * [`rewrite`]: the head the backend receives.
//! * [`route`]: (host, path) -> route.
//! * [`balance`]: route -> the backend tried first (round robin, least_conn, hash, cookie).
//! * [`http`]: framing of forwarded requests and answers (bodies, chunked, answer heads, uwsgi).
//! * [`relay`]: moving bytes both ways as operations: splice or copy, backpressure, half-close.
//! * [`proxy_proto`]: PROXY protocol v1/v2, in and out.
//! * [`pressure`]: when the kernel's TCP memory pressure is worth a warning.
//! * [`timer`]: the per-worker timer wheel and coarse clock.
//! * [`settings`]: the rules connections are accepted under.
//! * [`status`]: failures and the HTTP answers they map to.
pub mod balance;
pub mod conn;
pub mod handshake;
pub mod head;
pub mod health;
pub mod http;
pub mod pressure;
pub mod proxy_proto;
pub mod redirect;
pub mod relay;
pub mod rewrite;
pub mod route;
pub mod settings;
pub mod status;
pub mod timer;
pub mod validate;
