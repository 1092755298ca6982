//! A backend's answer to a forwarded request: its head checked as strictly as a client's, its
//! body framing decided, and the head the client gets written fresh.

use crate::core::head::has_bare_line_ending;
use crate::core::rewrite::is_hop_by_hop;
use crate::core::validate::{tokens, Body};
use std::io::Write as _;

/// A backend's answer head, as the exchange needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// How the body that follows is delimited.
    pub body: Body,
    /// `1xx` other than 101: the final answer is still to come.
    pub interim: bool,
    /// The backend may take another request on this connection afterwards (HTTP/1.1, no
    /// `Connection: close`, a body that does not end by closing).
    pub reusable: bool,
}

/// What the client's copy of the head says beyond the backend's fields.
#[derive(Debug, Clone, Copy, Default)]
pub struct Extra<'a> {
    /// Tell the client this connection closes after the answer.
    pub close: bool,
    /// A `Set-Cookie` value to add (sticky balancing).
    pub set_cookie: Option<&'a str>,
    /// Write a body that runs until the backend closes as chunked (the client connection
    /// can then stay open after it); otherwise the client is told the connection closes.
    pub rechunk: bool,
}

/// Why an answer head is refused (the client gets a 502).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadAnswer;

/// Checks a complete answer head (ending with `\r\n\r\n`) to a request with method `HEAD` or
/// not, and appends the client's copy to `out`. Interim answers (`1xx`) are copied without
/// `extra`.
///
/// Refused: bare CR or LF, NUL, a status line other than `HTTP/1.1` or `HTTP/1.0` with a
/// status from 100 to 599, `101` (this was no upgrade), more than `max_headers` fields, a
/// repeated or malformed `Content-Length`, a `Transfer-Encoding` other than exactly `chunked`,
/// or both. Without either, the body runs until the backend closes.
pub fn rewrite_response(
    head: &[u8],
    head_request: bool,
    max_headers: usize,
    extra: Extra<'_>,
    out: &mut Vec<u8>,
) -> Result<Response, BadAnswer> {
    let http10 = head.starts_with(b"HTTP/1.0 ");
    if !(head.starts_with(b"HTTP/1.1 ") || http10)
        || has_bare_line_ending(head)
        || head.contains(&0)
    {
        return Err(BadAnswer);
    }
    let mut headers = vec![httparse::EMPTY_HEADER; max_headers];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(head) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        _ => return Err(BadAnswer),
    }
    let status = resp.code.ok_or(BadAnswer)?;
    if !(100..=599).contains(&status) || status == 101 {
        return Err(BadAnswer);
    }
    let interim = status < 200;
    let fields: &[httparse::Header<'_>] = resp.headers;
    let mut length = None;
    let mut chunked = false;
    let mut close = http10;
    for f in fields {
        if f.name.eq_ignore_ascii_case("content-length") {
            let t = f.value.trim_ascii();
            if length.is_some() || t.is_empty() || t.len() > 19 || !t.iter().all(u8::is_ascii_digit)
            {
                return Err(BadAnswer);
            }
            length = Some(t.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')));
        } else if f.name.eq_ignore_ascii_case("transfer-encoding") {
            if chunked || http10 || !f.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(BadAnswer);
            }
            chunked = true;
        } else if f.name.eq_ignore_ascii_case("connection")
            && tokens(f.value).any(|t| t.eq_ignore_ascii_case(b"close"))
        {
            close = true;
        }
    }
    if chunked && length.is_some() {
        return Err(BadAnswer);
    }
    let bodiless = interim || head_request || status == 204 || status == 304;
    let body = match (bodiless, chunked, length) {
        (true, ..) | (false, false, Some(0)) => Body::None,
        (false, true, _) => Body::Chunked,
        (false, false, Some(n)) => Body::Length(n),
        (false, false, None) => Body::UntilClose,
    };
    let reusable = !close && body != Body::UntilClose;

    let _ = write!(out, "HTTP/1.1 {status} {}\r\n", resp.reason.unwrap_or(""));
    let named = |name: &str| {
        fields
            .iter()
            .filter(|f| f.name.eq_ignore_ascii_case("connection"))
            .any(|f| tokens(f.value).any(|t| t.eq_ignore_ascii_case(name.as_bytes())))
    };
    for f in fields {
        let keep = !is_hop_by_hop(f.name)
            && !f.name.eq_ignore_ascii_case("content-length")
            && !named(f.name);
        if keep {
            out.extend_from_slice(f.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(f.value);
            out.extend_from_slice(b"\r\n");
        }
    }
    if !interim {
        let rechunk = extra.rechunk && body == Body::UntilClose;
        match (body, length) {
            (Body::Chunked, _) => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
            (Body::UntilClose, _) if rechunk => {
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
            }
            // A HEAD or 304 answer keeps the length of the body it stands for.
            (_, Some(n)) => {
                let _ = write!(out, "Content-Length: {n}\r\n");
            }
            _ => {}
        }
        if let Some(c) = extra.set_cookie {
            let _ = write!(out, "Set-Cookie: {c}\r\n");
        }
        if extra.close || (body == Body::UntilClose && !rechunk) {
            out.extend_from_slice(b"Connection: close\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
    Ok(Response {
        status,
        body,
        interim,
        reusable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rw(
        head: &str,
        head_request: bool,
        extra: Extra<'_>,
    ) -> Result<(Response, String), BadAnswer> {
        let mut out = Vec::new();
        let r = rewrite_response(head.as_bytes(), head_request, 16, extra, &mut out)?;
        Ok((r, String::from_utf8(out).expect("ascii")))
    }

    #[test]
    fn framing_of_answers() {
        let cases: &[(&str, bool, Body, bool)] = &[
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                false,
                Body::Length(5),
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                false,
                Body::None,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false,
                Body::Chunked,
                true,
            ),
            ("HTTP/1.1 200 OK\r\n\r\n", false, Body::UntilClose, false),
            (
                "HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n",
                false,
                Body::Length(5),
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\n",
                false,
                Body::Length(5),
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                true,
                Body::None,
                true,
            ),
            ("HTTP/1.1 204 No Content\r\n\r\n", false, Body::None, true),
            (
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                false,
                Body::None,
                true,
            ),
            ("HTTP/1.1 100 Continue\r\n\r\n", false, Body::None, true),
            (
                "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n",
                false,
                Body::None,
                true,
            ),
        ];
        for &(head, is_head, body, reusable) in cases {
            let (r, _) = rw(head, is_head, Extra::default()).expect(head);
            assert_eq!((r.body, r.reusable), (body, reusable), "{head}");
            assert_eq!(r.interim, r.status < 200, "{head}");
        }
    }

    #[test]
    fn lying_answers_are_refused() {
        for head in [
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
            "HTTP/1.1 200 OK\nContent-Length: 5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n",
            "HTTP/2 200 OK\r\n\r\n",
            "HTTP/1.1 600 Odd\r\n\r\n",
            "HTTP/1.1 099 Odd\r\n\r\n",
            "\r\nHTTP/1.1 200 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX : y\r\n\r\n",
        ] {
            assert_eq!(
                rw(head, false, Extra::default()).err(),
                Some(BadAnswer),
                "{head:?}"
            );
        }
    }

    #[test]
    fn client_copy_is_written_fresh() {
        let head = "HTTP/1.0 200 Fine\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\nX-Hop: 1\r\nContent-Length:  3 \r\nSet-Cookie: a=b\r\nUpgrade: h2c\r\n\r\n";
        let (_, out) = rw(
            head,
            false,
            Extra {
                close: true,
                set_cookie: Some("s=1; Path=/"),
                rechunk: false,
            },
        )
        .expect("valid");
        assert_eq!(
            out,
            "HTTP/1.1 200 Fine\r\nSet-Cookie: a=b\r\nContent-Length: 3\r\nSet-Cookie: s=1; Path=/\r\nConnection: close\r\n\r\n"
        );
        let (_, out) = rw(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\nTrailer: X-Sum\r\n\r\n",
            false,
            Extra::default(),
        )
        .expect("valid");
        assert_eq!(out, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        let (_, out) = rw("HTTP/1.1 200 OK\r\n\r\n", false, Extra::default()).expect("valid");
        assert_eq!(out, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
        let rechunk = Extra {
            rechunk: true,
            ..Extra::default()
        };
        let (r, out) = rw("HTTP/1.0 200 OK\r\nX: 1\r\n\r\n", false, rechunk).expect("valid");
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nX: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        assert_eq!((r.body, r.reusable), (Body::UntilClose, false));
        let (_, out) = rw(
            "HTTP/1.1 100 Continue\r\nConnection: close\r\n\r\n",
            false,
            Extra {
                close: true,
                set_cookie: Some("s=1"),
                rechunk: true,
            },
        )
        .expect("valid");
        assert_eq!(out, "HTTP/1.1 100 Continue\r\n\r\n");
    }
}
