//! Why a handshake failed, which side failed, and the one place that maps failures to HTTP answers.

/// A handshake failure, as answered to the client.
///
/// The variant says which side failed (`Client*` = downstream sent something we refuse,
/// `Backend*` = upstream misbehaved) so logs and metrics can tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reject {
    /// 400: the client's head is malformed or not a valid WebSocket upgrade.
    BadRequest(BadRequest),
    /// 404: no route for this host and path.
    NoRoute,
    /// 405: CONNECT.
    Connect,
    /// 403: the request's `Origin` is not in the route's `origins`.
    Forbidden,
    /// 408: the whole head did not arrive within `timeouts.handshake`, or a forwarded request's
    /// body stalled for the route's `response_timeout`.
    HandshakeTimeout,
    /// 411: a chunked request body for a uwsgi backend (uwsgi needs the length up front).
    LengthRequired,
    /// 414: the request target is longer than half of `max_head_bytes`.
    UriTooLong,
    /// 426: a plain HTTP request on a route with `http = false` (WebSocket only).
    NotUpgrade,
    /// 431: the head exceeds `max_head_bytes` or has more than `max_headers` headers.
    HeadTooLarge,
    /// 502: every backend refused or reset the connection, or answered with a broken head.
    BackendFailed(BackendFailure),
    /// 429: this client IP already has `max_connections_per_ip` connections.
    TooManyFromIp,
    /// 503: the proxy is out of descriptors or at `max_connections`.
    Overloaded,
    /// 504: the backend connect (or its answer) timed out.
    BackendTimeout,
}

/// The precise reason for a 400, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BadRequest {
    /// A LF not preceded by CR, or a CR not followed by LF.
    BareLineEnding,
    /// A byte that is not allowed in the request target (`#`, space, control, > 0x7E).
    TargetByte,
    /// The target is not in origin form (absolute-form, `*`, authority-form).
    TargetForm,
    /// httparse refused the head (token, header name or version syntax).
    Syntax,
    /// Not `HTTP/1.1`.
    Version,
    /// An upgrade with a method other than GET.
    Method,
    /// No Host, several Host headers, or a malformed one.
    Host,
    /// Content-Length repeated, not a number, or non-zero on an upgrade.
    ContentLength,
    /// Any Transfer-Encoding on an upgrade.
    TransferEncoding,
    /// A control byte or a byte > 0x7E in a framing header (Host, Upgrade, Connection, CL).
    FramingByte,
    /// `Upgrade` is present but not exactly `websocket`, or repeated.
    UpgradeToken,
    /// Sec-WebSocket-Key missing, repeated or not 16 base64-decoded bytes.
    WebSocketKey,
    /// Sec-WebSocket-Version missing, repeated or not a number.
    WebSocketVersion,
    /// A PROXY protocol header that is missing, malformed, or from a peer not in
    /// `proxy_protocol.trusted`.
    ProxyHeader,
    /// Plain HTTP sent to a TLS listener: answered in plain text, with a body saying so (as
    /// nginx does), instead of a TLS alert the client cannot read.
    PlainHttpOnTls,
    /// A forwarded request's chunked body is malformed (size line, chunk end or trailers).
    Body,
}

/// Why a backend attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendFailure {
    /// Connect refused (nothing listens).
    Refused,
    /// Reset or other socket error during connect or handshake.
    Reset,
    /// The backend's answer head is larger than `max_head_bytes`.
    HeadTooLarge,
    /// The backend's answer head does not parse, or a `101` without the WebSocket headers.
    BadAnswer,
    /// The backend closed before its head was complete.
    ClosedEarly,
    /// The route has no backend address to try: its backend names resolve to nothing (yet).
    NoBackends,
}

impl Reject {
    /// One failure of each kind (the payload of `BadRequest` and `BackendFailed` stands for all
    /// of its values), in the order metrics list them.
    pub const ALL: [Reject; 13] = [
        Reject::BadRequest(BadRequest::Syntax),
        Reject::Forbidden,
        Reject::NoRoute,
        Reject::Connect,
        Reject::HandshakeTimeout,
        Reject::LengthRequired,
        Reject::UriTooLong,
        Reject::NotUpgrade,
        Reject::TooManyFromIp,
        Reject::HeadTooLarge,
        Reject::BackendFailed(BackendFailure::Refused),
        Reject::Overloaded,
        Reject::BackendTimeout,
    ];

    /// The status of each of [`Reject::ALL`], in that order: every status a handshake failure
    /// is answered with, and the `status` label values of `wsplice_handshake_rejects_total`.
    pub const STATUSES: [u16; Reject::ALL.len()] = {
        let mut out = [0; Reject::ALL.len()];
        let mut i = 0;
        while i < out.len() {
            out[i] = Reject::ALL[i].status();
            let mut j = 0;
            while j < i {
                // One metric label per kind: two kinds sharing a status would be counted as one.
                assert!(out[j] != out[i], "two kinds of Reject share a status");
                j += 1;
            }
            i += 1;
        }
        out
    };

    /// The HTTP status code for this failure.
    pub const fn status(self) -> u16 {
        match self {
            Reject::BadRequest(_) => 400,
            Reject::Forbidden => 403,
            Reject::NoRoute => 404,
            Reject::Connect => 405,
            Reject::HandshakeTimeout => 408,
            Reject::LengthRequired => 411,
            Reject::UriTooLong => 414,
            Reject::NotUpgrade => 426,
            Reject::HeadTooLarge => 431,
            Reject::TooManyFromIp => 429,
            Reject::BackendFailed(_) => 502,
            Reject::Overloaded => 503,
            Reject::BackendTimeout => 504,
        }
    }

    /// The complete answer written to the client before closing.
    pub fn response(self) -> &'static [u8] {
        match self {
            Reject::BadRequest(BadRequest::PlainHttpOnTls) => {
                b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: 52\r\n\r\nThe plain HTTP request was sent to a TLS (wss) port\n"
            }
            Reject::BadRequest(_) => {
                b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
            }
            Reject::Forbidden => b"HTTP/1.1 403 Forbidden\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            Reject::NoRoute => b"HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            Reject::Connect => {
                b"HTTP/1.1 405 Method Not Allowed\r\nAllow: GET\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
            }
            Reject::HandshakeTimeout => {
                b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
            }
            Reject::LengthRequired => {
                b"HTTP/1.1 411 Length Required\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
            }
            Reject::UriTooLong => {
                b"HTTP/1.1 414 URI Too Long\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
            }
            Reject::NotUpgrade => {
                b"HTTP/1.1 426 Upgrade Required\r\nUpgrade: websocket\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
            }
            Reject::HeadTooLarge => {
                b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
            }
            Reject::TooManyFromIp => {
                b"HTTP/1.1 429 Too Many Requests\r\nConnection: close\r\nContent-Length: 0\r\nRetry-After: 1\r\n\r\n"
            }
            Reject::BackendFailed(_) => {
                b"HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
            }
            Reject::Overloaded => {
                b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\nRetry-After: 1\r\n\r\n"
            }
            Reject::BackendTimeout => {
                b"HTTP/1.1 504 Gateway Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
            }
        }
    }
}

impl Reject {
    /// The answer to a forwarded (plain HTTP) request: [`Reject::response`] with a one-line
    /// text body a person in a browser can read.
    pub fn page(self) -> Vec<u8> {
        let why = match self {
            Reject::BadRequest(_) => "the request is malformed.",
            Reject::Forbidden => "requests from this origin are not allowed here.",
            Reject::NoRoute => "no route matches this host and path.",
            Reject::Connect => "CONNECT is not served.",
            Reject::HandshakeTimeout => "the request did not arrive in time.",
            Reject::LengthRequired => "this backend needs a Content-Length.",
            Reject::UriTooLong => "the request target is too long.",
            Reject::NotUpgrade => "this address serves WebSocket upgrades only.",
            Reject::HeadTooLarge => "the request head is too large.",
            Reject::TooManyFromIp => "too many connections from this address.",
            Reject::BackendFailed(_) => "the backend failed or sent a broken answer.",
            Reject::Overloaded => "the proxy is overloaded; try again shortly.",
            Reject::BackendTimeout => "the backend did not answer in time.",
        };
        let head = self.response();
        let line_end = head.windows(2).position(|w| w == b"\r\n").unwrap_or(0);
        let status = String::from_utf8_lossy(&head[9..line_end]);
        let body = format!("{status}: {why}\n");
        let mut out = head[..line_end + 2].to_vec();
        // The canned head ends with `Content-Length: 0`; the page has its own.
        for line in head[line_end + 2..].split(|&b| b == b'\n') {
            if line.starts_with(b"Content-Length") || line.is_empty() || line == b"\r" {
                continue;
            }
            out.extend_from_slice(line);
            out.push(b'\n');
        }
        out.extend_from_slice(
            format!(
                "Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_response_starts_with_its_status_and_ends_the_head() {
        for r in Reject::ALL {
            let text = std::str::from_utf8(r.response()).expect("ascii");
            assert!(
                text.starts_with(&format!("HTTP/1.1 {} ", r.status())),
                "{text}"
            );
            assert!(text.ends_with("\r\n\r\n"));
            let mut headers = [httparse::EMPTY_HEADER; 8];
            let mut resp = httparse::Response::new(&mut headers);
            assert!(resp.parse(r.response()).expect("parses").is_complete());
            assert_eq!(resp.code, Some(r.status()));
            let page = r.page();
            let mut headers = [httparse::EMPTY_HEADER; 8];
            let mut resp = httparse::Response::new(&mut headers);
            let n = match resp.parse(&page) {
                Ok(httparse::Status::Complete(n)) => n,
                other => panic!("{other:?}: {}", String::from_utf8_lossy(&page)),
            };
            assert_eq!(resp.code, Some(r.status()));
            let cl = resp.headers.iter().find(|h| h.name == "Content-Length");
            let body = &page[n..];
            assert_eq!(cl.map(|h| h.value), Some(body.len().to_string().as_bytes()));
            assert!(body.starts_with(format!("{} ", r.status()).as_bytes()));
        }
    }
}
