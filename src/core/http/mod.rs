//! HTTP/1.1 message framing for forwarded (non-upgrade) requests, sans-IO and resumable.
//!
//! ```text
//!   client head ── core::head, core::validate::classify_request ──▶ Plain { body framing }
//!                  core::rewrite::write_request_head ──▶ the backend's head
//!   request body ── body::BodyReader (Content-Length | chunked + trailers) ──▶ backend
//!   answer head  ── response::rewrite_response (1xx relayed, 101 refused) ──▶ client
//!   answer body  ── body::BodyReader (Content-Length | chunked | until close | none) ──▶ client
//! ```
//!
//! Nothing here buffers a body: each piece that arrives is checked and passed on (chunked
//! framing is written afresh). The exchange that drives this is [`crate::core::conn`]'s HTTP
//! stage; [`uwsgi`] encodes the request head for `protocol = "uwsgi"` backends.

pub mod body;
pub mod response;
pub mod uwsgi;

pub use body::{BodyReader, FramingError};
pub use response::{rewrite_response, BadAnswer, Extra, Response};

/// Methods a request may be retried with on another connection (RFC 9110 §9.2.2).
pub fn idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    )
}
