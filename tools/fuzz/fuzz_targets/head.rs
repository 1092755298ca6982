//! Arbitrary bytes as a client request head, through the same steps as
//! `Handshake::accept_head`: precheck, parse, validate, route, rewrite.
//!
//! Invariants: no panic; an accepted head is rewritten into one complete HTTP/1.1 `GET` with
//! CRLF line ends only, exactly one Host, `Upgrade: websocket`, `Connection: upgrade`,
//! X-Real-IP, X-Forwarded-For and X-Forwarded-Proto, no Transfer-Encoding, no non-zero
//! Content-Length, no hop-by-hop field, and no field the client named in `Connection`.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use std::net::IpAddr;
use wsplice::core::validate::validate_request;
use wsplice::core::head::{find_head_end, overflow_reject, parse_request, precheck};
use wsplice::core::rewrite::{write_backend_head, Forwarding};
use wsplice::core::route::rewritten_target;

/// Written by the proxy itself, after removing the client's copies.
const PROXY_FIELDS: [&[u8]; 5] = [
    b"upgrade",
    b"connection",
    b"x-real-ip",
    b"x-forwarded-for",
    b"x-forwarded-proto",
];

fuzz_target!(|data: &[u8]| {
    let s = common::settings();
    // Framing as the session does it: only CRLF CRLF ends a head, and a full buffer is 414/431.
    let Some(end) = find_head_end(data, 0) else {
        if data.len() >= s.max_head_bytes {
            let _ = overflow_reject(&data[..s.max_head_bytes]);
        }
        return;
    };
    if end > s.max_head_bytes {
        let _ = overflow_reject(&data[..s.max_head_bytes]);
        return;
    }
    let head = &data[..end];
    if precheck(head, s.max_head_bytes / 2).is_err() {
        return;
    }
    let mut fields = vec![httparse::EMPTY_HEADER; s.max_headers];
    let Ok(req) = parse_request(head, &mut fields) else {
        return;
    };
    let Ok(up) = validate_request(&req) else {
        return;
    };
    let Some(m) = s.routes.lookup(up.host, up.path) else {
        return;
    };
    let route = s.routes.get(m.route);
    let (path, query) = rewritten_target(up.path, m.strip, up.query);
    let ip: IpAddr = if data.len().is_multiple_of(2) {
        "10.0.0.7".parse().unwrap()
    } else {
        "2001:db8::7".parse().unwrap()
    };
    // Both settings of `underscores_in_headers`, chosen by the input.
    let underscores = data.len() % 3 == 0;
    let mut out = Vec::new();
    let f = Forwarding {
        client_ip: ip,
        forwarded_for: route.forwarded_for,
        underscores,
        https: data.len() % 5 == 0,
    };
    write_backend_head(&mut out, &req, path, query, &f);

    common::assert_crlf_framing(&out, "rewritten head");
    let text = String::from_utf8_lossy(&out).into_owned();
    let mut parsed = vec![httparse::EMPTY_HEADER; s.max_headers + 8];
    let mut r = httparse::Request::new(&mut parsed);
    match r.parse(&out) {
        Ok(httparse::Status::Complete(n)) => assert_eq!(n, out.len(), "{text:?}"),
        other => panic!("rewritten head does not parse ({other:?}): {text:?}"),
    }
    assert_eq!(r.method, Some("GET"), "{text:?}");
    assert_eq!(r.version, Some(1), "{text:?}");
    let target = r.path.expect("path");
    assert!(target.starts_with('/'), "{text:?}");
    assert_eq!(target, format!("{path}{query}"), "{text:?}");
    let first_line_end = out.windows(2).position(|w| w == b"\r\n").unwrap();
    assert_eq!(
        &out[..first_line_end],
        format!("GET {target} HTTP/1.1").as_bytes(),
        "{text:?}"
    );

    let all = |name: &[u8]| -> Vec<&[u8]> {
        r.headers
            .iter()
            .filter(|h| h.name.as_bytes().eq_ignore_ascii_case(name))
            .map(|h| h.value)
            .collect()
    };
    let one = |name: &[u8]| -> &[u8] {
        let v = all(name);
        assert_eq!(
            v.len(),
            1,
            "{} {} times in {text:?}",
            String::from_utf8_lossy(name),
            v.len()
        );
        v[0]
    };
    one(b"host");
    assert!(
        one(b"upgrade").eq_ignore_ascii_case(b"websocket"),
        "{text:?}"
    );
    assert!(
        one(b"connection").eq_ignore_ascii_case(b"upgrade"),
        "{text:?}"
    );
    assert_eq!(one(b"x-real-ip"), ip.to_string().as_bytes(), "{text:?}");
    let xff = one(b"x-forwarded-for");
    assert!(
        xff.ends_with(ip.to_string().as_bytes()),
        "X-Forwarded-For must end with the client address: {text:?}"
    );
    assert_eq!(one(b"x-forwarded-proto"), b"http", "{text:?}");
    assert!(all(b"transfer-encoding").is_empty(), "{text:?}");
    for cl in all(b"content-length") {
        assert!(
            cl.iter().all(|&b| b == b'0'),
            "non-zero Content-Length: {text:?}"
        );
    }
    for hop in [&b"keep-alive"[..], b"te", b"trailer"] {
        assert!(all(hop).is_empty(), "hop-by-hop field survived: {text:?}");
    }
    for h in r.headers.iter() {
        let n = h.name.as_bytes();
        assert!(
            !(n.len() >= 6 && n[..6].eq_ignore_ascii_case(b"proxy-")),
            "Proxy-* field survived: {text:?}"
        );
        assert!(
            underscores || !n.contains(&b'_'),
            "a name with '_' survived with underscores_in_headers off: {text:?}"
        );
        // A lookalike (`X_Real_IP`) of a field the proxy strips or writes never survives.
        if n.contains(&b'_') {
            let dashed: Vec<u8> = n
                .iter()
                .map(|&b| if b == b'_' { b'-' } else { b.to_ascii_lowercase() })
                .collect();
            assert!(
                !(PROXY_FIELDS.contains(&dashed.as_slice())
                    || [&b"transfer-encoding"[..], b"keep-alive", b"te", b"trailer"]
                        .contains(&dashed.as_slice())
                    || dashed.starts_with(b"proxy-")),
                "a lookalike of a stripped field survived: {text:?}"
            );
        }
    }
    // Fields the client named in any Connection field are gone (Host and the proxy's own
    // fields excepted: they are written fresh).
    for c in req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
    {
        for t in common::tokens(c.value) {
            if t == b"host" || PROXY_FIELDS.contains(&t.as_slice()) {
                continue;
            }
            assert!(
                all(&t).is_empty(),
                "{} named in Connection but forwarded: {text:?}",
                String::from_utf8_lossy(&t)
            );
        }
    }
    // The client's other fields travel in order, unchanged.
    let client_kept: Vec<(&str, &[u8])> = req
        .headers
        .iter()
        .filter(|h| wsplice::core::rewrite::passes_through(&req, h.name, underscores))
        .map(|h| (h.name, h.value))
        .collect();
    let forwarded: Vec<(&str, &[u8])> = r.headers[..client_kept.len()]
        .iter()
        .map(|h| (h.name, h.value))
        .collect();
    assert_eq!(client_kept, forwarded, "{text:?}");
});
