//! Request smuggling against forwarded (plain HTTP) requests: body framing attacks, each row
//! checked for the answers the client gets, exactly the bytes the backend received, and a
//! proxy that still serves.
//!
//! ```text
//!   raw client ──▶ wsplice ──▶ Origin (keep-alive HTTP/1.1; records every byte per connection)
//! ```
//!
//! CL.TE and TE.CL (both framings at once), TE.TE (a Transfer-Encoding two parsers could read
//! differently), Content-Length spellings, chunk-size lines (extensions, overflow, signs, bare
//! CR/LF), chunk ends, trailers, a body longer than its Content-Length, and a request hidden
//! in a body. The proxy's rule: one framing, read one way; whatever is doubtful is a 400
//! before any byte of the request reaches the backend; a body that turns out broken midway
//! ends the backend connection (the backend sees a cut-off body, never a second request).

#[allow(unused_macros)]
#[macro_use]
mod support;
#[path = "support/http.rs"]
mod http;

use std::time::{Duration, Instant};

use http::*;
use support::*;

/// The proxy's own lines at the end of every forwarded head from 127.0.0.1.
const PROXY_LINES: &str =
    "X-Real-IP: 127.0.0.1\r\nX-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\n\r\n";

/// The head the backend gets: `line`, Host, `fields` (as the proxy writes them), the proxy's
/// lines; then `body` (as framed on the wire).
fn fwd(line: &str, fields: &[&str], body: &[u8]) -> Vec<u8> {
    message(line, fields, PROXY_LINES, body)
}

/// `POST / HTTP/1.1`, Host, `fields`, blank line: a head for body rows.
fn post(fields: &[&str]) -> Vec<u8> {
    post_with(fields, b"")
}

/// [`post`] with `bytes` after the head, in the same write.
fn post_with(fields: &[&str], bytes: &[u8]) -> Vec<u8> {
    message("POST / HTTP/1.1", fields, "\r\n", bytes)
}

/// `line`, Host, `fields`, `end` (the lines that end the head), then `body`.
fn message(line: &str, fields: &[&str], end: &str, body: &[u8]) -> Vec<u8> {
    let mut s = format!("{line}\r\nHost: localhost\r\n");
    for f in fields {
        s.push_str(f);
        s.push_str("\r\n");
    }
    s.push_str(end);
    let mut v = s.into_bytes();
    v.extend_from_slice(body);
    v
}

struct Row {
    name: String,
    /// Sent first.
    head: Vec<u8>,
    /// Sent once the backend has the head (when it is to get it), so that what reaches the
    /// backend before a body error does not depend on how reads fall.
    body: Vec<u8>,
    /// The statuses the client gets, in order.
    answers: Vec<u16>,
    /// Exactly what the backend receives.
    backend: Vec<u8>,
    /// The proxy closes the client connection after the last answer.
    closes: bool,
}

fn row(
    name: impl Into<String>,
    head: Vec<u8>,
    body: &[u8],
    answers: &[u16],
    backend: Vec<u8>,
) -> Row {
    let closes = answers.last().is_some_and(|&s| s >= 400);
    Row {
        name: name.into(),
        head,
        body: body.to_vec(),
        answers: answers.to_vec(),
        backend,
        closes,
    }
}

/// Refused at the head: 400, the backend gets nothing.
fn refused(name: impl Into<String>, fields: &[&str], body: &[u8]) -> Row {
    row(name, post_with(fields, body), b"", &[400], Vec::new())
}

fn table() -> Vec<Row> {
    let mut t = Vec::new();
    let smuggled = b"0\r\n\r\nGET /admin HTTP/1.1\r\nHost: localhost\r\n\r\n";

    // CL.TE and TE.CL: two framings, whichever order.
    t.push(refused(
        "CL.TE",
        &["Content-Length: 6", "Transfer-Encoding: chunked"],
        b"0\r\n\r\nG",
    ));
    t.push(refused(
        "TE.CL",
        &["Transfer-Encoding: chunked", "Content-Length: 3"],
        b"8\r\nSMUGGLED\r\n0\r\n\r\n",
    ));
    t.push(refused(
        "CL 0 + TE",
        &["Content-Length: 0", "Transfer-Encoding: chunked"],
        smuggled,
    ));

    // TE.TE: a Transfer-Encoding one parser reads as chunked and another does not.
    for te in [
        "Transfer-Encoding: xchunked",
        "Transfer-Encoding: chunked, identity",
        "Transfer-Encoding: identity, chunked",
        "Transfer-Encoding: gzip, chunked",
        "Transfer-Encoding: chunked, chunked",
        "Transfer-Encoding: \"chunked\"",
        "Transfer-Encoding: chunk",
        "Transfer-Encoding: chunked;q=1",
        "Transfer-Encoding: identity",
        "Transfer-Encoding: ",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity",
        "Transfer-Encoding: chunked\r\nTransfer-encoding: x",
        "Transfer-Encoding : chunked",
        "Transfer-Encoding\t: chunked",
        "Transfer-Encoding:\x0bchunked",
        "Transfer-Encoding: chunked\x0c",
        "Transfer-Encoding: ch\u{fc}nked",
        "X: y\r\n Transfer-Encoding: chunked",
        "Transfer-Encoding: chunked\r\n x",
    ] {
        t.push(refused(format!("TE.TE {te:?}"), &[te], smuggled));
    }
    // Spellings that are chunked and nothing else: accepted, written canonically.
    let chunked_body = b"5\r\nhello\r\n0\r\n\r\n";
    for te in [
        "Transfer-Encoding: Chunked",
        "transfer-encoding:chunked",
        "TRANSFER-ENCODING: \tCHUNKED\t",
    ] {
        t.push(row(
            format!("valid TE {te:?}"),
            post_with(&[te], chunked_body),
            b"",
            &[200],
            fwd(
                "POST / HTTP/1.1",
                &["Transfer-Encoding: chunked"],
                chunked_body,
            ),
        ));
    }
    // A lookalike name is no framing: the request has no body, and what was meant as its body
    // is read as the next request and refused.
    t.push(row(
        "Transfer_Encoding lookalike",
        post_with(&["Transfer_Encoding: chunked"], chunked_body),
        b"",
        &[200, 400],
        fwd("POST / HTTP/1.1", &[], b""),
    ));
    t.push(row(
        "Content_Length lookalike",
        post_with(&["Content_Length: 5"], b"hello\r\n\r\n"),
        b"",
        &[200, 400],
        fwd("POST / HTTP/1.1", &[], b""),
    ));

    // Content-Length spellings.
    for cl in [
        "Content-Length: +5",
        "Content-Length: -5",
        "Content-Length: 0x5",
        "Content-Length: 5.0",
        "Content-Length: 5e0",
        "Content-Length: 5, 5",
        "Content-Length: 5 5",
        "Content-Length: 99999999999999999999",
        "Content-Length: ",
        "Content-Length: 5\r\nContent-Length: 5",
        "Content-Length: 5\r\nContent-Length: 6",
        "Content-Length: 5\r\ncontent-length: 5",
        "Content-Length : 5",
        "Content-Length:\x0b5",
    ] {
        t.push(refused(format!("CL {cl:?}"), &[cl], b"hello"));
    }
    for cl in [
        "Content-Length:5",
        "Content-Length:  5  ",
        "Content-Length: 005",
    ] {
        t.push(row(
            format!("valid CL {cl:?}"),
            post_with(&[cl], b"hello"),
            b"",
            &[200],
            fwd("POST / HTTP/1.1", &["Content-Length: 5"], b"hello"),
        ));
    }

    // Chunk-size lines and chunk ends: the head reaches the backend first, then the body
    // breaks. The broken piece arrives in one read, so nothing of it is passed on: the
    // backend gets the head and a closed connection.
    let te = "Transfer-Encoding: chunked";
    let broken: &[(&str, &[u8])] = &[
        ("empty size line", b"\r\n"),
        ("negative size", b"-1\r\nx\r\n0\r\n\r\n"),
        ("size with 0x", b"0x5\r\nhello\r\n0\r\n\r\n"),
        ("size with +", b"+5\r\nhello\r\n0\r\n\r\n"),
        ("leading space", b" 5\r\nhello\r\n0\r\n\r\n"),
        ("trailing space, no extension", b"5 \r\nhello\r\n0\r\n\r\n"),
        (
            "17 hex digits (overflow)",
            b"10000000000000000\r\nx\r\n0\r\n\r\n",
        ),
        ("bare LF after the size", b"5\nhello\r\n0\r\n\r\n"),
        ("bare CR after the size", b"5\rhello\r\n0\r\n\r\n"),
        ("LF inside an extension", b"5;a\nb\r\nhello\r\n0\r\n\r\n"),
        (
            "control byte in an extension",
            b"5;\x01\r\nhello\r\n0\r\n\r\n",
        ),
        ("non-ASCII in an extension", b"5;\xff\r\nhello\r\n0\r\n\r\n"),
        ("data longer than its size", b"3\r\nhello\r\n0\r\n\r\n"),
        ("data shorter than its size", b"6\r\nhello\r\n0\r\n\r\n"),
        ("bare LF after the data", b"5\r\nhello\n0\r\n\r\n"),
        (
            "bad second chunk",
            b"5\r\nhello\r\nzz\r\nworld\r\n0\r\n\r\n",
        ),
        ("bare LF in a trailer", b"0\r\nX: 1\n\r\n"),
        ("space before a trailer's colon", b"0\r\nX : 1\r\n\r\n"),
        ("last chunk ends with LF only", b"0\r\n\n"),
    ];
    for &(name, body) in broken {
        t.push(row(
            format!("chunked: {name}"),
            post(&[te]),
            body,
            &[400],
            fwd("POST / HTTP/1.1", &[te], b""),
        ));
    }
    // Valid oddities: extensions dropped, leading zeros and case normalized, framing trailers
    // dropped, others kept.
    let valid: &[(&str, &[u8], &[u8])] = &[
        (
            "extensions",
            b"5;ext=1;q=\"a b\"\r\nhello\r\n0;last\r\n\r\n",
            b"5\r\nhello\r\n0\r\n\r\n",
        ),
        ("BWS before ';'", b"5 \t;x\r\nhello\r\n0\r\n\r\n", b"5\r\nhello\r\n0\r\n\r\n"),
        ("leading zeros, upper case", b"000A\r\n0123456789\r\n0000\r\n\r\n", b"a\r\n0123456789\r\n0\r\n\r\n"),
        (
            "trailers",
            b"5\r\nhello\r\n0\r\nX-Sum: 1\r\nContent-Length: 5\r\nTransfer-Encoding: x\r\nHost: evil\r\n\r\n",
            b"5\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n",
        ),
    ];
    for &(name, body, canonical) in valid {
        t.push(row(
            format!("chunked: {name}"),
            post_with(&[te], body),
            b"",
            &[200],
            fwd("POST / HTTP/1.1", &[te], canonical),
        ));
    }

    // A body longer than its Content-Length: the rest is the next request, checked like any.
    let head = post_with(
        &["Content-Length: 5"],
        b"helloGET /second HTTP/1.1\r\nHost: localhost\r\n\r\n",
    );
    let mut both = fwd("POST / HTTP/1.1", &["Content-Length: 5"], b"hello");
    both.extend_from_slice(&fwd("GET /second HTTP/1.1", &[], b""));
    t.push(row(
        "body longer than CL: a second request",
        head,
        b"",
        &[200, 200],
        both,
    ));
    t.push(row(
        "body longer than CL: a malformed rest",
        post_with(
            &["Content-Length: 5"],
            b"helloGET /x HTTP/1.1\nHost: localhost\r\n\r\n",
        ),
        b"",
        &[200, 400],
        fwd("POST / HTTP/1.1", &["Content-Length: 5"], b"hello"),
    ));
    let head = post_with(
        &[te],
        b"0\r\n\r\nGET /second HTTP/1.1\r\nHost: localhost\r\n\r\n",
    );
    let mut both = fwd("POST / HTTP/1.1", &[te], b"0\r\n\r\n");
    both.extend_from_slice(&fwd("GET /second HTTP/1.1", &[], b""));
    t.push(row(
        "after the last chunk: a second request",
        head,
        b"",
        &[200, 200],
        both,
    ));

    // A request hidden in a body stays body.
    let hidden = b"GET /admin HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let cl = format!("Content-Length: {}", hidden.len());
    t.push(row(
        "request hidden in a CL body",
        post_with(&[&cl], hidden),
        b"",
        &[200],
        fwd("POST / HTTP/1.1", &[&cl], hidden),
    ));
    let mut chunked = format!("{:x}\r\n", hidden.len()).into_bytes();
    chunked.extend_from_slice(hidden);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    t.push(row(
        "request hidden in a chunk",
        post_with(&[te], &chunked),
        b"",
        &[200],
        fwd("POST / HTTP/1.1", &[te], &chunked),
    ));
    t
}

/// What each backend connection received so far, by length.
fn lengths(origin: &Origin) -> Vec<usize> {
    origin.raw().iter().map(Vec::len).collect()
}

/// The bytes the backend received since `before`, connection by connection.
fn since(origin: &Origin, before: &[usize]) -> Vec<u8> {
    origin
        .raw()
        .iter()
        .enumerate()
        .flat_map(|(i, r)| r[before.get(i).copied().unwrap_or(0)..].to_vec())
        .collect()
}

async fn run_row(proxy: &Proxy, origin: &Origin, r: &Row) -> Result<(), String> {
    let before = lengths(origin);
    let mut c = Peer::connect(proxy.addr()).await;
    c.send(&r.head).await;
    if !r.body.is_empty() {
        // Wait until the backend has the head (rows whose head is refused have no body part).
        let head_bytes = fwd("POST / HTTP/1.1", &["Transfer-Encoding: chunked"], b"").len();
        let deadline = Instant::now() + STEP;
        while since(origin, &before).len() < head_bytes {
            if Instant::now() > deadline {
                return Err("the head never reached the backend".into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        c.send(&r.body).await;
    }
    let mut got = Vec::new();
    for _ in &r.answers {
        match tokio::time::timeout(STEP, c.head()).await {
            Ok(Some(mut m)) => {
                let f = answer_framing(&m, "POST");
                c.body(&mut m, f).await;
                got.push(m.status);
            }
            Ok(None) => break,
            Err(_) => return Err(format!("no answer after {got:?}")),
        }
    }
    if got != r.answers {
        return Err(format!("answers {got:?}, expected {:?}", r.answers));
    }
    if r.closes && !c.closed_within(STEP).await {
        return Err("connection still open after the refusal".into());
    }
    // What reached the backend: wait for stragglers, then compare exactly.
    let deadline =
        Instant::now() + Duration::from_millis(if r.backend.is_empty() { 100 } else { 2000 });
    loop {
        let got = since(origin, &before);
        if got == r.backend || Instant::now() > deadline {
            tokio::time::sleep(Duration::from_millis(30)).await;
            let got = since(origin, &before);
            if got != r.backend {
                return Err(format!(
                    "backend received {:?}\n      expected {:?}",
                    String::from_utf8_lossy(&got),
                    String::from_utf8_lossy(&r.backend)
                ));
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

drivers!(forwarded_request_smuggling, |driver| {
    let rt = support::runtime(2);
    rt.block_on(async {
        let origin = Origin::start().await;
        let proxy = with_routes(
            Proxy::builder(Relay::Auto.on(driver)),
            &[r("/", &[origin.addr])],
        )
        .start()
        .await;
        let rows = table();
        let mut failures = Vec::new();
        for (i, r) in rows.iter().enumerate() {
            if let Err(e) = run_row(&proxy, &origin, r).await {
                failures.push(format!("{}: {e}", r.name));
            }
            if i % 10 == 9 || i + 1 == rows.len() {
                // The proxy still serves.
                let mut c = Peer::connect(proxy.addr()).await;
                c.send(&get("/alive", &[])).await;
                let a = c.answer("GET").await;
                assert_eq!(a.text(), "GET /alive 0", "after row {i}");
            }
        }
        println!("{} forwarded-request smuggling rows", rows.len());
        assert_rows_passed(&failures, rows.len());
    });
});
