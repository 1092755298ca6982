//! Request-head framing, strict pre-checks and parsing.
//!
//! httparse is a fine tokenizer but deliberately lenient in places a proxy must not be: it accepts
//! bare LF line endings, `#` and obs-text in the target, any method and target form. [`precheck`]
//! rejects those on the raw bytes first; [`parse_request`] then parses with httparse and validates
//! the result as a WebSocket upgrade ([`crate::core::handshake`]).

use crate::core::status::{BadRequest, Reject};

/// Where the head ends in `buf`: the index just past the blank line, if the head is complete.
///
/// Only `\r\n\r\n` ends a head; a bare `\n\n` does not (and is refused by [`precheck`] once the
/// head is complete or the buffer is full).
pub fn find_head_end(buf: &[u8], searched_from: usize) -> Option<usize> {
    // Restart 3 bytes back so a terminator split across reads is found.
    let start = searched_from.saturating_sub(3);
    buf[start..]
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| start + p + 4)
}

/// How a buffer that filled up without a complete head is answered: 414 while the request line
/// is still incomplete, 431 otherwise.
pub fn overflow_reject(buf: &[u8]) -> Reject {
    if buf.contains(&b'\n') {
        Reject::HeadTooLarge
    } else {
        Reject::UriTooLong
    }
}

/// True if a LF is not preceded by CR, or a CR is not followed by LF.
pub fn has_bare_line_ending(head: &[u8]) -> bool {
    let mut prev = 0u8;
    for (i, &b) in head.iter().enumerate() {
        match b {
            b'\n' if prev != b'\r' => return true,
            b'\r' if head.get(i + 1) != Some(&b'\n') => return true,
            _ => {}
        }
        prev = b;
    }
    false
}

/// Checks the raw head (`head` ends with `\r\n\r\n`) for what httparse lets through but a proxy
/// must refuse.
///
/// * every LF is preceded by CR and every CR is followed by LF;
/// * NUL appears nowhere;
/// * the request target is 0x21..=0x7E without `#`, at most `max_target` bytes long (else 414).
pub fn precheck(head: &[u8], max_target: usize) -> Result<(), Reject> {
    let bad = Reject::BadRequest;
    if has_bare_line_ending(head) {
        return Err(bad(BadRequest::BareLineEnding));
    }
    if head.contains(&0) {
        return Err(bad(BadRequest::Syntax));
    }
    let line_end = head.iter().position(|&b| b == b'\r').unwrap_or(head.len());
    let line = &head[..line_end];
    let mut parts = line.splitn(3, |&b| b == b' ');
    let (_method, target) = match (parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(_v)) => (m, t),
        _ => return Err(bad(BadRequest::Syntax)),
    };
    if target.len() > max_target {
        return Err(Reject::UriTooLong);
    }
    if target
        .iter()
        .any(|&b| !(0x21..=0x7e).contains(&b) || b == b'#')
    {
        return Err(bad(BadRequest::TargetByte));
    }
    Ok(())
}

/// A parsed request head, borrowing from the caller's buffer.
#[derive(Debug)]
pub struct RequestHead<'b, 'h> {
    pub method: &'b str,
    pub target: &'b str,
    /// 1 for HTTP/1.1, 0 for HTTP/1.0.
    pub version: u8,
    pub headers: &'h [httparse::Header<'b>],
}

/// Parses a complete head (already [`precheck`]ed) into `headers`.
///
/// `headers.len()` is the `max_headers` limit: more headers answer 431.
pub fn parse_request<'b, 'h>(
    head: &'b [u8],
    headers: &'h mut [httparse::Header<'b>],
) -> Result<RequestHead<'b, 'h>, Reject> {
    let mut req = httparse::Request::new(headers);
    let status = req.parse(head).map_err(|e| match e {
        httparse::Error::TooManyHeaders => Reject::HeadTooLarge,
        httparse::Error::Version => Reject::BadRequest(BadRequest::Version),
        _ => Reject::BadRequest(BadRequest::Syntax),
    })?;
    if status.is_partial() {
        // The caller only hands complete heads; a partial parse means the framing disagreed.
        return Err(Reject::BadRequest(BadRequest::Syntax));
    }
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(Reject::BadRequest(BadRequest::Syntax));
    };
    Ok(RequestHead {
        method,
        target,
        version,
        headers: req.headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_end_is_found_across_reads() {
        let buf = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nrest";
        assert_eq!(find_head_end(buf, 0), Some(buf.len() - 4));
        // Pretend the first read ended in the middle of the terminator.
        assert_eq!(find_head_end(buf, 26), Some(buf.len() - 4));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\n\n", 0), None);
    }

    #[test]
    fn precheck_table() {
        let bad = |r| Err(Reject::BadRequest(r));
        // Each outcome with the heads that must get it.
        type Case = (Result<(), Reject>, &'static [&'static [u8]]);
        let cases: &[Case] = &[
            (Ok(()), &[b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"]),
            (
                bad(BadRequest::BareLineEnding),
                &[
                    b"GET / HTTP/1.1\nHost: a\r\n\r\n",
                    b"GET / HTTP/1.1\r\nHost: a\n\r\n",
                    b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n",
                ],
            ),
            (
                bad(BadRequest::TargetByte),
                &[
                    b"GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n",
                    b"GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n",
                    b"GET /\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n",
                    b"GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n",
                ],
            ),
            (
                bad(BadRequest::Syntax),
                &[
                    b"GET / HTTP/1.1\r\nHost: a\x00\r\n\r\n",
                    b"GET /\r\nHost: a\r\n\r\n",
                ],
            ),
            (
                Err(Reject::UriTooLong),
                &[b"GET /0123456789 HTTP/1.1\r\nHost: a\r\n\r\n"],
            ),
        ];
        for (want, inputs) in cases {
            for input in *inputs {
                assert_eq!(
                    &precheck(input, 10),
                    want,
                    "{:?}",
                    String::from_utf8_lossy(input)
                );
            }
        }
    }

    #[test]
    fn overflow_tells_414_from_431() {
        assert_eq!(overflow_reject(b"GET /aaaaaaaa"), Reject::UriTooLong);
        assert_eq!(
            overflow_reject(b"GET / HTTP/1.1\r\nX: aaaa"),
            Reject::HeadTooLarge
        );
    }

    #[test]
    fn parse_limits_headers() {
        let head = b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
        let mut two = [httparse::EMPTY_HEADER; 2];
        assert_eq!(
            parse_request(head, &mut two).err(),
            Some(Reject::HeadTooLarge)
        );
        let mut three = [httparse::EMPTY_HEADER; 3];
        let req = parse_request(head, &mut three).expect("parses");
        assert_eq!((req.method, req.target, req.version), ("GET", "/", 1));
        assert_eq!(req.headers.len(), 3);
    }

    #[test]
    fn parse_refuses_obs_fold_and_space_before_colon() {
        for head in [
            &b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
        ] {
            let mut h = [httparse::EMPTY_HEADER; 8];
            assert!(
                parse_request(head, &mut h).is_err(),
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
    }
}
