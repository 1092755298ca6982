//! Arbitrary bytes as a backend's answer head -> `handshake::validate_answer`.
//!
//! Invariants: no panic; `Ok(Answer::Switch)` only for a head that parses as `HTTP/1.1 101`
//! with exactly one `Upgrade: websocket`, an `upgrade` token in Connection, and exactly one
//! non-empty Sec-WebSocket-Accept. A non-101 answer's body framing agrees with its fields.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use wsplice::core::validate::{validate_answer, Answer, Body};
use wsplice::core::head::find_head_end;

fn check(head: &[u8]) {
    let max_headers = common::settings().max_headers;
    let mut fields = vec![httparse::EMPTY_HEADER; max_headers];
    let got = validate_answer(head, &mut fields);
    let text = String::from_utf8_lossy(head);

    let mut parsed = vec![httparse::EMPTY_HEADER; max_headers];
    let mut r = httparse::Response::new(&mut parsed);
    let complete = matches!(r.parse(head), Ok(httparse::Status::Complete(_)));
    let all = |name: &str| -> Vec<&[u8]> {
        r.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
            .collect()
    };
    match got {
        Ok(Answer::Switch) => {
            assert!(complete, "Switch for a head that does not parse: {text:?}");
            assert_eq!(r.version, Some(1), "{text:?}");
            assert_eq!(r.code, Some(101), "{text:?}");
            // Not asserted: that the head starts with `HTTP/1.1 101`. httparse skips leading
            // empty lines and takes bare LF line ends in responses, so `\r\nHTTP/1.1 101 ...`
            // is a Switch (regressions/answer/leading-crlf-bare-lf) and relayed as is.
            let up = all("upgrade");
            assert!(
                up.len() == 1 && up[0].trim_ascii().eq_ignore_ascii_case(b"websocket"),
                "Upgrade: {text:?}"
            );
            assert!(
                all("connection")
                    .iter()
                    .any(|v| common::tokens(v).iter().any(|t| t == b"upgrade")),
                "Connection: {text:?}"
            );
            let acc = all("sec-websocket-accept");
            assert!(
                acc.len() == 1 && !acc[0].trim_ascii().is_empty(),
                "Sec-WebSocket-Accept: {text:?}"
            );
        }
        Ok(Answer::Other { status, body }) => {
            assert!(complete, "answer for a head that does not parse: {text:?}");
            assert_eq!(r.code, Some(status), "{text:?}");
            assert!(status >= 200, "interim status accepted as final: {text:?}");
            let cl = all("content-length");
            match body {
                Body::None => assert!(
                    status == 204
                        || status == 304
                        || (cl.len() == 1 && all("transfer-encoding").is_empty()),
                    "{text:?}"
                ),
                Body::Length(n) => {
                    assert!(n > 0, "{text:?}");
                    assert!(all("transfer-encoding").is_empty(), "{text:?}");
                    assert_eq!(cl.len(), 1, "{text:?}");
                }
                Body::Chunked => assert!(!all("transfer-encoding").is_empty(), "{text:?}"),
                Body::UntilClose => {
                    assert!(
                        cl.is_empty() && all("transfer-encoding").is_empty(),
                        "{text:?}"
                    )
                }
            }
        }
        Err(r) => assert_eq!(r.status(), 502, "{text:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    // As the session hands it over (up to and including the first CRLF CRLF), and raw.
    if let Some(end) = find_head_end(data, 0) {
        check(&data[..end]);
    }
    check(data);
});
