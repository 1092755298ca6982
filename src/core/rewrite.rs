//! Writes the head the backend receives: freshly serialized, never the client's raw bytes.
//!
//! ```text
//! GET {target, prefix stripped} HTTP/1.1
//! {client headers in order, minus hop-by-hop, minus every header named in Connection,
//!  minus X-Real-IP, X-Forwarded-Proto and X-Forwarded-For,
//!  minus names with `_` that read as one of those with `-`, or all of them when
//!  `underscores_in_headers = false`}
//! Upgrade: websocket
//! Connection: upgrade
//! X-Real-IP: {client ip}
//! X-Forwarded-For: [{client's values}, ]{client ip}      (append; replace drops the client's)
//! X-Forwarded-Proto: http                               (https behind a TLS listener)
//! ```
//! Headers named in `Connection` are removed *before* the proxy adds its own, so
//! `Connection: Upgrade, X-Forwarded-For, X-Real-IP` cannot delete or forge them.

use crate::config::ForwardedFor;
use crate::core::head::RequestHead;
use crate::core::validate::{tokens, Body};
use std::io::Write as _;
use std::net::IpAddr;

/// Headers that describe one hop and never travel further (RFC 9110 §7.6.1), plus `Proxy-*`
/// (Proxy-Connection, Proxy-Authorization). `Upgrade` and `Connection` are written fresh.
pub fn is_hop_by_hop(name: &str) -> bool {
    const HOP: [&str; 6] = [
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ];
    HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
        || name
            .get(..6)
            .is_some_and(|p| p.eq_ignore_ascii_case("proxy-"))
}

fn named_in_connection(req: &RequestHead<'_, '_>, name: &str) -> bool {
    // Host routes the request; letting the client delete it would only break its own request.
    if name.eq_ignore_ascii_case("host") {
        return false;
    }
    req.headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .any(|h| tokens(h.value).any(|t| t.eq_ignore_ascii_case(name.as_bytes())))
}

/// True for a client header that is forwarded unchanged.
///
/// A name with `_` is judged by its `-` spelling as well: CGI/WSGI-style backends read
/// `X_Real_IP` as `X-Real-IP` and `Transfer_Encoding` as `Transfer-Encoding`, so a lookalike of a
/// header the proxy strips or writes would forge it. Such lookalikes never pass; other names with
/// `_` pass unless `underscores` is off (then every one is dropped, as nginx does by default).
pub fn passes_through(req: &RequestHead<'_, '_>, name: &str, underscores: bool) -> bool {
    passes(req, name, underscores, false)
}

/// [`passes_through`] for a plain request, whose Content-Length is written fresh.
pub fn passes_through_plain(req: &RequestHead<'_, '_>, name: &str, underscores: bool) -> bool {
    passes(req, name, underscores, true)
}

fn passes(req: &RequestHead<'_, '_>, name: &str, underscores: bool, plain: bool) -> bool {
    if !name.contains('_') {
        return !stripped(req, name, plain);
    }
    underscores && !stripped(req, name, plain) && !stripped(req, &name.replace('_', "-"), plain)
}

/// True for a name the proxy removes: hop-by-hop, its own forwarding headers (written fresh),
/// or named in Connection; for a plain request also Content-Length, which is written fresh from
/// the validated value.
fn stripped(req: &RequestHead<'_, '_>, name: &str, plain: bool) -> bool {
    is_hop_by_hop(name)
        || name.eq_ignore_ascii_case("x-real-ip")
        || name.eq_ignore_ascii_case("x-forwarded-proto")
        || name.eq_ignore_ascii_case("x-forwarded-for")
        || (plain && name.eq_ignore_ascii_case("content-length"))
        || named_in_connection(req, name)
}

/// What the proxy says about the client in the headers it adds at the end of a backend head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forwarding {
    pub client_ip: IpAddr,
    pub forwarded_for: ForwardedFor,
    /// Forward client header names containing `_` (`underscores_in_headers`).
    pub underscores: bool,
    /// The client came over TLS: `X-Forwarded-Proto: https`.
    pub https: bool,
}

/// Appends the backend's head for a plain request to `out`: the client's method, the rewritten
/// target, the client's end-to-end headers, the body framing written fresh
/// (`Content-Length: n` or `Transfer-Encoding: chunked`), `Connection: close` unless the
/// backend connection may be reused, and the proxy's forwarding headers.
///
/// ```text
/// {METHOD} {target, prefix stripped} HTTP/1.1                   (HTTP/1.0 for a 1.0 client)
/// {client headers in order, minus those the upgrade head drops, minus Content-Length}
/// Content-Length: {n}            | Transfer-Encoding: chunked     (when there is a body)
/// Connection: close                                               (when not reusable)
/// X-Real-IP / X-Forwarded-For / X-Forwarded-Proto                 (as for an upgrade)
/// ```
pub fn write_request_head(
    out: &mut Vec<u8>,
    req: &RequestHead<'_, '_>,
    path: &str,
    query: &str,
    body: Body,
    reuse: bool,
    fwd: &Forwarding,
) {
    out.extend_from_slice(req.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(query.as_bytes());
    // An HTTP/1.0 client's request goes on as HTTP/1.0 (nginx's `proxy_http_version 1.0`):
    // the backend then answers without chunked framing, which such a client cannot read.
    out.extend_from_slice(if req.version == 0 {
        b" HTTP/1.0\r\n"
    } else {
        b" HTTP/1.1\r\n"
    });
    for h in req.headers {
        if passes(req, h.name, fwd.underscores, true) {
            out.extend_from_slice(h.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
    }
    match body {
        Body::Length(n) => {
            let _ = write!(out, "Content-Length: {n}\r\n");
        }
        Body::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        Body::None | Body::UntilClose => {}
    }
    if !reuse {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    write_forwarded(out, req, fwd);
}

fn write_forwarded(out: &mut Vec<u8>, req: &RequestHead<'_, '_>, fwd: &Forwarding) {
    let Forwarding {
        client_ip,
        forwarded_for,
        https,
        ..
    } = *fwd;
    let proto = if https { "https" } else { "http" };
    let _ = write!(out, "X-Real-IP: {client_ip}\r\nX-Forwarded-For: ");
    if forwarded_for == ForwardedFor::Append && !named_in_connection(req, "x-forwarded-for") {
        // Several X-Forwarded-For lines are one comma-separated list (RFC 9110 §5.3).
        for h in req.headers {
            let v = h.value.trim_ascii();
            if h.name.eq_ignore_ascii_case("x-forwarded-for") && !v.is_empty() {
                out.extend_from_slice(v);
                out.extend_from_slice(b", ");
            }
        }
    }
    let _ = write!(out, "{client_ip}\r\nX-Forwarded-Proto: {proto}\r\n\r\n");
}

/// Appends the backend's request head to `out`.
pub fn write_backend_head(
    out: &mut Vec<u8>,
    req: &RequestHead<'_, '_>,
    path: &str,
    query: &str,
    fwd: &Forwarding,
) {
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(query.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for h in req.headers {
        if passes_through(req, h.name, fwd.underscores) {
            out.extend_from_slice(h.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"Upgrade: websocket\r\nConnection: upgrade\r\n");
    write_forwarded(out, req, fwd);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::head::parse_request;

    /// With the default `underscores_in_headers = true`.
    fn rewrite(head: &str, ff: ForwardedFor) -> String {
        rewrite_with(head, ff, true)
    }

    fn rewrite_with(head: &str, ff: ForwardedFor, underscores: bool) -> String {
        let mut h = [httparse::EMPTY_HEADER; 32];
        let req = parse_request(head.as_bytes(), &mut h).expect("parses");
        let mut out = Vec::new();
        write_backend_head(
            &mut out,
            &req,
            "/a",
            "?x=1",
            &Forwarding {
                client_ip: "10.0.0.7".parse().expect("ip"),
                forwarded_for: ff,
                underscores,
                https: false,
            },
        );
        String::from_utf8(out).expect("ascii")
    }

    #[test]
    fn strips_hop_by_hop_and_adds_proxy_headers() {
        let got = rewrite(
            "GET /notice/a?x=1 HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade, X-Secret\r\nKeep-Alive: 5\r\nProxy-Connection: x\r\nProxy-Authorization: y\r\nTE: trailers\r\nTrailer: z\r\nX-Secret: s\r\nOrigin: http://o\r\nSec-WebSocket-Key: k\r\nSec-WebSocket-Protocol: chat\r\nX-Real-IP: 6.6.6.6\r\nX-Forwarded-Proto: https\r\n\r\n",
            ForwardedFor::Append,
        );
        assert_eq!(
            got,
            "GET /a?x=1 HTTP/1.1\r\nHost: h\r\nOrigin: http://o\r\nSec-WebSocket-Key: k\r\nSec-WebSocket-Protocol: chat\r\nUpgrade: websocket\r\nConnection: upgrade\r\nX-Real-IP: 10.0.0.7\r\nX-Forwarded-For: 10.0.0.7\r\nX-Forwarded-Proto: http\r\n\r\n"
        );
    }

    #[test]
    fn forwarded_for_append_and_replace() {
        let head = "GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2, 3.3.3.3\r\n\r\n";
        assert!(rewrite(head, ForwardedFor::Append)
            .contains("\r\nX-Forwarded-For: 1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.7\r\n"));
        let replaced = rewrite(head, ForwardedFor::Replace);
        assert!(replaced.contains("\r\nX-Forwarded-For: 10.0.0.7\r\n"));
        assert_eq!(replaced.matches("X-Forwarded-For").count(), 1);
    }

    #[test]
    fn connection_cannot_delete_proxy_headers_or_host() {
        let got = rewrite(
            "GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, X-Forwarded-For, X-Real-IP, Host\r\nX-Forwarded-For: 1.2.3.4\r\nX-Real-IP: 6.6.6.6\r\n\r\n",
            ForwardedFor::Append,
        );
        assert!(got.contains("\r\nHost: h\r\n"));
        assert!(got.contains("\r\nX-Real-IP: 10.0.0.7\r\n"));
        assert!(got.contains("\r\nX-Forwarded-For: 10.0.0.7\r\n"), "{got}");
        assert!(!got.contains("1.2.3.4") && !got.contains("6.6.6.6"));
    }

    #[test]
    fn underscore_lookalikes_never_pass_and_other_underscore_names_follow_the_setting() {
        let head = "GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, X-Secret\r\nX_Real_IP: 6.6.6.6\r\nx_forwarded_for: 6.6.6.6\r\nX_Forwarded_Proto: https\r\nTransfer_Encoding: chunked\r\nProxy_Authorization: p\r\nKeep_Alive: 1\r\nX_Secret: s\r\nMy_App: 1\r\nMy-App: 2\r\nContent_Length: 5\r\n\r\n";
        let kept = rewrite_with(head, ForwardedFor::Append, true);
        for gone in [
            "X_Real_IP",
            "x_forwarded_for",
            "X_Forwarded_Proto",
            "Transfer_Encoding",
            "Proxy_Authorization",
            "Keep_Alive",
            "X_Secret",
            "6.6.6.6",
        ] {
            assert!(!kept.contains(gone), "{gone} survived: {kept}");
        }
        assert!(
            kept.contains("\r\nMy_App: 1\r\nMy-App: 2\r\nContent_Length: 5\r\n"),
            "{kept}"
        );
        assert!(kept.contains("\r\nX-Real-IP: 10.0.0.7\r\n"), "{kept}");
        assert!(kept.contains("\r\nX-Forwarded-For: 10.0.0.7\r\n"), "{kept}");

        let dropped = rewrite_with(head, ForwardedFor::Append, false);
        assert!(!dropped.contains('_'), "{dropped}");
        assert!(dropped.contains("\r\nMy-App: 2\r\n"), "{dropped}");
    }
}
