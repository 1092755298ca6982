//! WebSocket upgrade validation (RFC 6455 §4.2.1) and backend answer validation (§4.1).

use crate::core::head::RequestHead;
use crate::core::status::{BackendFailure, BadRequest, Reject};
use base64::Engine as _;

/// What the rest of the handshake needs from a validated upgrade request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upgrade<'b> {
    /// Host without port, as sent (compare case-insensitively).
    pub host: &'b str,
    /// Path part of the target (before `?`), starts with `/`.
    pub path: &'b str,
    /// Query including the leading `?`, or empty.
    pub query: &'b str,
}

/// Iterates the comma-separated tokens of a header value, trimmed, skipping empty elements.
pub fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

fn framing_bytes_ok(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || (0x20..=0x7e).contains(&b))
}

fn valid_host(value: &[u8]) -> Option<&str> {
    let s = std::str::from_utf8(value).ok()?;
    if s.is_empty() {
        return None;
    }
    let (name, port) = if let Some(rest) = s.strip_prefix('[') {
        // IPv6 literal: [addr] or [addr]:port
        let close = rest.find(']')?;
        let after = &rest[close + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return None,
        };
        if !rest[..close]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return None;
        }
        (&s[..close + 2], port)
    } else {
        match s.rsplit_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (s, None),
        }
    };
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        if p.parse::<u32>().ok()? > 65535 {
            return None;
        }
    }
    if name.is_empty()
        || (!name.starts_with('[')
            && !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')))
    {
        return None;
    }
    Some(name)
}

/// A plain (non-upgrade) request the proxy may forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plain<'b> {
    /// Host without port, as sent (compare case-insensitively).
    pub host: &'b str,
    /// Path part of the target (before `?`), starts with `/`.
    pub path: &'b str,
    /// Query including the leading `?`, or empty.
    pub query: &'b str,
    /// How the request body is delimited: [`Body::None`], [`Body::Length`] or
    /// [`Body::Chunked`] (never until close: a request cannot end by closing).
    pub body: Body,
    /// An HTTP/1.0 client: forwarded as HTTP/1.0 (its backend answers without chunked
    /// framing, as such a client needs), and its connection closes after the answer.
    pub http10: bool,
}

/// A request head as the proxy takes it: an upgrade to tunnel, or a plain request to forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'b> {
    Upgrade(Upgrade<'b>),
    Plain(Plain<'b>),
}

/// Validates a parsed request as a WebSocket upgrade a proxy may forward; a plain request is
/// [`Reject::NotUpgrade`].
pub fn validate_request<'b>(req: &RequestHead<'b, '_>) -> Result<Upgrade<'b>, Reject> {
    match classify_request(req)? {
        Request::Upgrade(u) => Ok(u),
        Request::Plain(_) => Err(Reject::NotUpgrade),
    }
}

/// A request header that counts only when it comes once: how often it came, and its last value.
#[derive(Default)]
struct Seen<'b> {
    count: usize,
    last: Option<&'b [u8]>,
}

impl<'b> Seen<'b> {
    fn add(&mut self, value: &'b [u8]) {
        self.count += 1;
        self.last = Some(value);
    }

    /// The value, if the header came exactly once.
    fn once(&self) -> Option<&'b [u8]> {
        self.last.filter(|_| self.count == 1)
    }
}

/// Validates a parsed request head: a WebSocket upgrade, or a plain HTTP/1.1 request.
///
/// Order matters only for which answer a request with several faults gets: 405 for CONNECT first,
/// then framing (400), then "is this an upgrade at all", then the upgrade's own fields or the
/// plain request's body framing (400).
///
/// A request is an upgrade when it has an `Upgrade` header and `Connection` names `upgrade`;
/// only `websocket` is accepted then. Anything else is plain, and must frame its body without
/// doubt: one `Content-Length` of digits, or one `Transfer-Encoding: chunked` alone (no other
/// coding, no `Content-Length` beside it); HTTP/1.1, or HTTP/1.0 (whose Host may be missing and
/// whose body cannot be chunked).
pub fn classify_request<'b>(req: &RequestHead<'b, '_>) -> Result<Request<'b>, Reject> {
    use BadRequest as B;
    let bad = Reject::BadRequest;
    if req.method == "CONNECT" {
        return Err(Reject::Connect);
    }
    if !req.target.starts_with('/') {
        return Err(bad(B::TargetForm));
    }
    let mut host = Seen::default();
    let mut content_length = None;
    let mut transfer_encoding = Seen::default();
    let mut upgrade = Seen::default();
    let mut connection_upgrade = false;
    let mut key = Seen::default();
    let mut version = Seen::default();
    for h in req.headers {
        let name = h.name;
        let v = h.value;
        let framing = name.eq_ignore_ascii_case("host")
            || name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("upgrade")
            || name.eq_ignore_ascii_case("connection");
        if framing && !framing_bytes_ok(v) {
            return Err(bad(B::FramingByte));
        }
        if name.eq_ignore_ascii_case("host") {
            host.add(v);
        } else if name.eq_ignore_ascii_case("content-length") {
            if content_length.is_some() {
                return Err(bad(B::ContentLength));
            }
            let t = v.trim_ascii();
            if t.is_empty() || t.len() > 19 || !t.iter().all(u8::is_ascii_digit) {
                return Err(bad(B::ContentLength));
            }
            content_length = Some(t);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding.add(v);
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade.add(v);
        } else if name.eq_ignore_ascii_case("connection") {
            if tokens(v).any(|t| t.eq_ignore_ascii_case(b"upgrade")) {
                connection_upgrade = true;
            }
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            key.add(v);
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            version.add(v);
        }
    }
    let plain = upgrade.count == 0 || !connection_upgrade;
    // HTTP/1.0 predates Host: a plain 1.0 request may come without one (it then takes the
    // routes that name no host).
    let hostless = plain && req.version == 0 && host.count == 0;
    if host.count != 1 && !hostless {
        return Err(bad(B::Host));
    }
    let host = match host.once() {
        None if hostless => "",
        h => h.and_then(valid_host).ok_or(bad(B::Host))?,
    };
    let (path, query) = match req.target.find('?') {
        Some(i) => req.target.split_at(i),
        None => (req.target, ""),
    };
    // 19 digits always fit a u64.
    let length =
        content_length.map(|cl| cl.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')));
    if plain {
        // RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 request is a framing fault (a 1.0
        // hop in between would not have understood it).
        if req.version == 0 && transfer_encoding.count > 0 {
            return Err(bad(B::TransferEncoding));
        }
        let body = match (transfer_encoding.count, length) {
            (0, None | Some(0)) => Body::None,
            (0, Some(n)) => Body::Length(n),
            // Exactly one coding, chunked, alone: a backend that reads another coding (or the
            // Content-Length beside it) would see another end of the body than we do.
            (1, None)
                if transfer_encoding
                    .once()
                    .is_some_and(|te| te.trim_ascii().eq_ignore_ascii_case(b"chunked")) =>
            {
                Body::Chunked
            }
            _ => return Err(bad(B::TransferEncoding)),
        };
        return Ok(Request::Plain(Plain {
            host,
            path,
            query,
            body,
            http10: req.version == 0,
        }));
    }
    if transfer_encoding.count > 0 {
        return Err(bad(B::TransferEncoding));
    }
    // A body on an upgrade would be read by the backend as body and by us as tunnel bytes.
    if length.is_some_and(|n| n != 0) {
        return Err(bad(B::ContentLength));
    }
    let is_websocket = upgrade
        .once()
        .is_some_and(|u| u.trim_ascii().eq_ignore_ascii_case(b"websocket"));
    if !is_websocket {
        return Err(bad(B::UpgradeToken));
    }
    if req.method != "GET" {
        return Err(bad(B::Method));
    }
    if req.version != 1 {
        return Err(bad(B::Version));
    }
    let key_ok = key.once().is_some_and(|k| {
        base64::engine::general_purpose::STANDARD
            .decode(k.trim_ascii())
            .is_ok_and(|d| d.len() == 16)
    });
    if !key_ok {
        return Err(bad(B::WebSocketKey));
    }
    let version_ok = version.once().is_some_and(|v| {
        let v = v.trim_ascii();
        !v.is_empty() && v.len() <= 3 && v.iter().all(u8::is_ascii_digit)
    });
    if !version_ok {
        return Err(bad(B::WebSocketVersion));
    }
    Ok(Request::Upgrade(Upgrade { host, path, query }))
}

/// What the backend answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// A valid `101 Switching Protocols` for WebSocket: enter the tunnel.
    Switch,
    /// Any other final status: relay it to the client, then close. `body` says how much of what
    /// follows the head belongs to the answer.
    Other { status: u16, body: Body },
}

/// How a non-101 answer's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// No body (1xx, 204, 304, or `Content-Length: 0`).
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked: ends with the zero-size chunk.
    Chunked,
    /// Until the backend closes.
    UntilClose,
}

/// Validates a complete backend answer head (ending with `\r\n\r\n`).
///
/// `headers` bounds the header count; more is a broken answer.
pub fn validate_answer<'b>(
    head: &'b [u8],
    headers: &mut [httparse::Header<'b>],
) -> Result<Answer, Reject> {
    let broken = Reject::BackendFailed(BackendFailure::BadAnswer);
    // httparse skips leading empty lines and accepts bare LF; the client gets these bytes as
    // they are, so hold the backend to the same strict framing as clients.
    if !head.starts_with(b"HTTP/1.1 ") || crate::core::head::has_bare_line_ending(head) {
        return Err(broken);
    }
    let mut resp = httparse::Response::new(headers);
    match resp.parse(head) {
        Ok(s) if s.is_complete() => {}
        _ => return Err(broken),
    }
    if resp.version != Some(1) {
        return Err(broken);
    }
    let status = resp.code.ok_or(broken)?;
    let all: &[httparse::Header<'_>] = resp.headers;
    let find = |name: &'static str| {
        all.iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
    };
    if status == 101 {
        let upgrade_ok = {
            let mut u = find("upgrade");
            matches!((u.next(), u.next()), (Some(h), None) if h.value.trim_ascii().eq_ignore_ascii_case(b"websocket"))
        };
        let connection_ok =
            find("connection").any(|h| tokens(h.value).any(|t| t.eq_ignore_ascii_case(b"upgrade")));
        let accept_ok = {
            let mut a = find("sec-websocket-accept");
            matches!((a.next(), a.next()), (Some(h), None) if !h.value.trim_ascii().is_empty())
        };
        return if upgrade_ok && connection_ok && accept_ok {
            Ok(Answer::Switch)
        } else {
            Err(broken)
        };
    }
    if status < 200 {
        // 100 Continue and other interim answers make no sense to an upgrade request.
        return Err(broken);
    }
    let mut body = if status == 204 || status == 304 {
        Body::None
    } else {
        Body::UntilClose
    };
    if body != Body::None {
        if find("transfer-encoding").next().is_some() {
            body = Body::Chunked;
        } else {
            let mut cl = find("content-length");
            match (cl.next(), cl.next()) {
                (Some(h), None) => {
                    let n = std::str::from_utf8(h.value.trim_ascii())
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok())
                        .ok_or(broken)?;
                    body = if n == 0 { Body::None } else { Body::Length(n) };
                }
                (Some(_), Some(_)) => return Err(broken),
                _ => {}
            }
        }
    }
    Ok(Answer::Other { status, body })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::head::parse_request;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn check(head: &str) -> Result<(String, String, String), Reject> {
        let mut h = [httparse::EMPTY_HEADER; 32];
        let req = parse_request(head.as_bytes(), &mut h)?;
        validate_request(&req)
            .map(|u| (u.host.to_string(), u.path.to_string(), u.query.to_string()))
    }

    fn upgrade_with(extra: &str) -> String {
        format!(
            "GET /chat?x=1 HTTP/1.1\r\nHost: example.com:8080\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    }

    fn plain(head: &str) -> Result<(String, Body, bool), Reject> {
        let mut h = [httparse::EMPTY_HEADER; 32];
        let req = parse_request(head.as_bytes(), &mut h)?;
        match classify_request(&req)? {
            Request::Plain(p) => Ok((p.host.to_string(), p.body, p.http10)),
            Request::Upgrade(_) => panic!("an upgrade: {head:?}"),
        }
    }

    #[test]
    fn http_1_0_plain_requests() {
        use BadRequest as B;
        let bad = |b| Err(Reject::BadRequest(b));
        // No Host: HTTP/1.0 predates it.
        assert_eq!(
            plain("GET /a HTTP/1.0\r\n\r\n"),
            Ok((String::new(), Body::None, true))
        );
        assert_eq!(
            plain("POST /a HTTP/1.0\r\nHost: h\r\nContent-Length: 3\r\n\r\n"),
            Ok(("h".into(), Body::Length(3), true))
        );
        assert_eq!(
            plain("GET /a HTTP/1.1\r\nHost: h\r\n\r\n"),
            Ok(("h".into(), Body::None, false))
        );
        // Still refused: chunked framing from a 1.0 client, two Hosts, a 1.1 request without
        // Host, and a 1.0 upgrade.
        assert_eq!(
            plain("POST /a HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            bad(B::TransferEncoding)
        );
        assert_eq!(
            plain("GET /a HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n"),
            bad(B::Host)
        );
        assert_eq!(plain("GET /a HTTP/1.1\r\n\r\n"), bad(B::Host));
        assert_eq!(
            check(&upgrade_with("").replace("HTTP/1.1", "HTTP/1.0")),
            Err(Reject::BadRequest(B::Version))
        );
    }

    #[test]
    fn valid_upgrades() {
        let want = Ok(("example.com".into(), "/chat".into(), "?x=1".into()));
        assert_eq!(check(&upgrade_with("")), want);
        assert_eq!(check(&upgrade_with("Content-Length: 0\r\n")), want);
        let keepalive =
            upgrade_with("").replace("Connection: Upgrade", "Connection: keep-alive, Upgrade");
        assert_eq!(check(&keepalive), want);
        let case = upgrade_with("").replace("Upgrade: websocket", "Upgrade: WebSocket");
        assert_eq!(check(&case), want);
        let v6 = upgrade_with("").replace("example.com:8080", "[::1]:80");
        assert_eq!(check(&v6).map(|t| t.0), Ok("[::1]".into()));
    }

    #[test]
    fn rejected_upgrades() {
        use BadRequest as B;
        let bad = |b| Err(Reject::BadRequest(b));
        let base = upgrade_with("");
        let cases: Vec<(String, Result<(), Reject>)> = vec![
            (base.replace("GET", "CONNECT"), Err(Reject::Connect)),
            (base.replace("GET", "POST"), bad(B::Method)),
            (
                base.replace("/chat?x=1", "http://example.com/chat"),
                bad(B::TargetForm),
            ),
            (base.replace("/chat?x=1", "*"), bad(B::TargetForm)),
            (base.replace("HTTP/1.1", "HTTP/1.0"), bad(B::Version)),
            (base.replace("Host: example.com:8080\r\n", ""), bad(B::Host)),
            (upgrade_with("Host: other\r\n"), bad(B::Host)),
            (
                base.replace("example.com:8080", "example.com:99999"),
                bad(B::Host),
            ),
            (
                base.replace("example.com:8080", "exa mple.com"),
                bad(B::Host),
            ),
            (base.replace("example.com:8080", "a:"), bad(B::Host)),
            (upgrade_with("Content-Length: 5\r\n"), bad(B::ContentLength)),
            (
                upgrade_with("Content-Length: 0\r\nContent-Length: 0\r\n"),
                bad(B::ContentLength),
            ),
            (
                upgrade_with("Content-Length: -0\r\n"),
                bad(B::ContentLength),
            ),
            (
                upgrade_with("Content-Length: 0x0\r\n"),
                bad(B::ContentLength),
            ),
            (
                upgrade_with("Transfer-Encoding: chunked\r\n"),
                bad(B::TransferEncoding),
            ),
            (
                upgrade_with("Transfer-Encoding: identity\r\n"),
                bad(B::TransferEncoding),
            ),
            (
                base.replace("Upgrade: websocket\r\n", ""),
                Err(Reject::NotUpgrade),
            ),
            (
                base.replace("Connection: Upgrade", "Connection: keep-alive"),
                Err(Reject::NotUpgrade),
            ),
            (
                base.replace("Upgrade: websocket", "Upgrade: h2c"),
                bad(B::UpgradeToken),
            ),
            (
                base.replace("Upgrade: websocket", "Upgrade: websocket, h2c"),
                bad(B::UpgradeToken),
            ),
            (upgrade_with("Upgrade: websocket\r\n"), bad(B::UpgradeToken)),
            (
                base.replace("Upgrade: websocket", "Upgrade: web\u{e9}socket"),
                bad(B::FramingByte),
            ),
            (
                base.replace("Connection: Upgrade", "Connection: Upgrade\u{e9}"),
                bad(B::FramingByte),
            ),
            (base.replace(KEY, "c2hvcnQ="), bad(B::WebSocketKey)),
            (base.replace(KEY, "not base64!!"), bad(B::WebSocketKey)),
            (
                base.replace(&format!("Sec-WebSocket-Key: {KEY}\r\n"), ""),
                bad(B::WebSocketKey),
            ),
            (
                upgrade_with(&format!("Sec-WebSocket-Key: {KEY}\r\n")),
                bad(B::WebSocketKey),
            ),
            (
                base.replace("Sec-WebSocket-Version: 13\r\n", ""),
                bad(B::WebSocketVersion),
            ),
            (
                base.replace("Version: 13", "Version: thirteen"),
                bad(B::WebSocketVersion),
            ),
            (
                upgrade_with("Sec-WebSocket-Version: 13\r\n"),
                bad(B::WebSocketVersion),
            ),
        ];
        for (head, want) in cases {
            assert_eq!(check(&head).map(|_| ()), want, "{head:?}");
        }
    }

    fn answer(head: &str) -> Result<Answer, Reject> {
        let mut h = [httparse::EMPTY_HEADER; 32];
        validate_answer(head.as_bytes(), &mut h)
    }

    #[test]
    fn backend_answers() {
        let broken = Err(Reject::BackendFailed(BackendFailure::BadAnswer));
        let ok101 = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        assert_eq!(answer(ok101), Ok(Answer::Switch));
        assert_eq!(answer(&ok101.replace("Upgrade: websocket\r\n", "")), broken);
        assert_eq!(
            answer(&ok101.replace("Connection: Upgrade\r\n", "")),
            broken
        );
        assert_eq!(
            answer(&ok101.replace("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n", "")),
            broken
        );
        assert_eq!(answer(&ok101.replace("websocket", "h2c")), broken);
        assert_eq!(answer(&ok101.replace("HTTP/1.1", "HTTP/1.0")), broken);
        assert_eq!(answer("HTTP/1.1 100 Continue\r\n\r\n"), broken);
        assert_eq!(answer("garbage\r\n\r\n"), broken);
        assert_eq!(
            answer(&format!("\r\n{ok101}")),
            broken,
            "leading empty line"
        );
        assert_eq!(
            answer(&ok101.replace("Connection: Upgrade\r\n", "Connection: Upgrade\n")),
            broken
        );
        let other = |status, body| Ok(Answer::Other { status, body });
        for (head, want) in [
            (
                "HTTP/1.1 403 Forbidden\r\nContent-Length: 5\r\n\r\n",
                other(403, Body::Length(5)),
            ),
            (
                "HTTP/1.1 426 Upgrade Required\r\nUpgrade: websocket\r\nContent-Length: 0\r\n\r\n",
                other(426, Body::None),
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                other(200, Body::Chunked),
            ),
            ("HTTP/1.1 200 OK\r\n\r\n", other(200, Body::UntilClose)),
            (
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                other(304, Body::None),
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
                broken,
            ),
            ("HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", broken),
        ] {
            assert_eq!(answer(head), want, "{head:?}");
        }
    }
}
