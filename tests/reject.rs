//! Requests the proxy must refuse: one table, each row checked for its status code, the shape of
//! the answer, a closed socket, a backend that received nothing, and a proxy that still works.

#[macro_use]
mod support;
#[path = "support/http.rs"]
mod http;

use support::*;

/// One rejected input.
struct Row {
    name: &'static str,
    bytes: Vec<u8>,
    status: u16,
}

fn row(name: &'static str, bytes: impl Into<Vec<u8>>, status: u16) -> Row {
    Row {
        name,
        bytes: bytes.into(),
        status,
    }
}

/// A valid upgrade request to `/rec/x` with `line` substituted for the line starting `prefix`
/// (or appended when no line starts with it), then `extra` lines appended.
fn req_with(replace: &[(&str, Option<&str>)], extra: &[&str]) -> Vec<u8> {
    let mut lines = vec![
        "GET /rec/x HTTP/1.1".to_owned(),
        "Host: localhost".to_owned(),
        "Upgrade: websocket".to_owned(),
        "Connection: Upgrade".to_owned(),
        format!("Sec-WebSocket-Key: {KEY}"),
        "Sec-WebSocket-Version: 13".to_owned(),
    ];
    for (prefix, with) in replace {
        let at = lines.iter().position(|l| l.starts_with(prefix));
        match (at, with) {
            (Some(i), Some(w)) => lines[i] = (*w).to_owned(),
            (Some(i), None) => {
                lines.remove(i);
            }
            (None, Some(w)) => lines.push((*w).to_owned()),
            (None, None) => panic!("row builder: no line starts with {prefix:?}"),
        }
    }
    lines.extend(extra.iter().map(|l| (*l).to_owned()));
    let mut s = lines.join("\r\n");
    s.push_str("\r\n\r\n");
    s.into_bytes()
}

fn with_target(target: &[u8]) -> Vec<u8> {
    let mut v = b"GET ".to_vec();
    v.extend_from_slice(target);
    let rest = req_with(&[], &[]);
    let after_target = rest
        .windows(9)
        .position(|w| w == b" HTTP/1.1")
        .expect("request line");
    v.extend_from_slice(&rest[after_target..]);
    v
}

fn with_header_line(line: &[u8]) -> Vec<u8> {
    let mut v = req_with(&[], &[]);
    v.truncate(v.len() - 2);
    v.extend_from_slice(line);
    v.extend_from_slice(b"\r\n\r\n");
    v
}

fn rows() -> Vec<Row> {
    let valid = req_with(&[], &[]);
    let bare_lf: Vec<u8> = String::from_utf8(valid.clone())
        .expect("ascii")
        .replace("\r\n", "\n")
        .into_bytes();
    let one_bare_lf = String::from_utf8(valid.clone())
        .expect("ascii")
        .replacen("Host: localhost\r\n", "Host: localhost\n", 1)
        .into_bytes();
    let many_headers: Vec<String> = (0..101).map(|i| format!("X-Filler-{i}: v")).collect();
    let many_headers: Vec<&str> = many_headers.iter().map(String::as_str).collect();
    let big_header = format!("X-Big: {}", "b".repeat(20 << 10));
    let long_target = format!("/rec/{}", "t".repeat(10 << 10));
    // The valid request without its `name` line, then `name: value` as raw bytes.
    let with_ctl = |name: &str, value: &[u8]| {
        let v = req_with(&[(&format!("{name}:"), None)], &[]);
        let mut v = v[..v.len() - 2].to_vec();
        v.extend_from_slice(name.as_bytes());
        v.extend_from_slice(b": ");
        v.extend_from_slice(value);
        v.extend_from_slice(b"\r\n\r\n");
        v
    };

    // The valid request with another request line, or with more header lines.
    let line = |name, line, status| row(name, req_with(&[("GET ", Some(line))], &[]), status);
    let extra = |name, lines: &[&str]| row(name, req_with(&[], lines), 400);
    // Lines of the valid request replaced (`Some`) or removed (`None`).
    let change =
        |name, replace: &[(&str, Option<&str>)], status| row(name, req_with(replace, &[]), status);

    vec![
        // Framing.
        row("bare LF line endings", bare_lf, 400),
        row("one bare LF line ending", one_bare_lf, 400),
        // Regression: a bare LF as the last byte sent used to wait for the handshake timeout
        // (408) instead of being refused at once; this row's 5 s step limit catches that.
        row(
            "head ended by a bare LF blank line",
            {
                let mut v = valid.clone();
                v.truncate(v.len() - 2);
                v.push(b'\n');
                v
            },
            400,
        ),
        row("`#` in the target", with_target(b"/rec/x#frag"), 400),
        row(
            "byte 0xC3 in the target",
            with_target(b"/rec/\xC3\xA9"),
            400,
        ),
        row("byte 0x7F in the target", with_target(b"/rec/\x7F"), 400),
        row(
            "absolute-form target",
            with_target(b"http://localhost/rec/x"),
            400,
        ),
        line("CONNECT", "CONNECT localhost:80 HTTP/1.1", 405),
        line("POST with upgrade headers", "POST /rec/x HTTP/1.1", 400),
        line("PUT with upgrade headers", "PUT /rec/x HTTP/1.1", 400),
        line("HTTP/1.0", "GET /rec/x HTTP/1.0", 400),
        extra(
            "duplicate Content-Length",
            &["Content-Length: 0", "Content-Length: 0"],
        ),
        extra("malformed Content-Length", &["Content-Length: abc"]),
        extra("negative Content-Length", &["Content-Length: -1"]),
        extra("list Content-Length", &["Content-Length: 0, 0"]),
        extra(
            "Transfer-Encoding: chunked",
            &["Transfer-Encoding: chunked"],
        ),
        extra(
            "Transfer-Encoding: identity",
            &["Transfer-Encoding: identity"],
        ),
        change("missing Host", &[("Host:", None)], 400),
        extra("repeated Host", &["Host: localhost"]),
        row(
            "control byte in Upgrade",
            with_ctl("Upgrade", b"web\x01socket"),
            400,
        ),
        row(
            "control byte in Connection",
            with_ctl("Connection", b"Up\x02grade"),
            400,
        ),
        row(
            "control byte in Host",
            with_ctl("Host", b"local\x03host"),
            400,
        ),
        row(
            "control byte in Content-Length",
            with_header_line(b"Content-Length: 0\x01"),
            400,
        ),
        // Upgrade negotiation.
        change(
            "no Upgrade header",
            &[
                ("Upgrade:", None),
                ("Connection:", Some("Connection: keep-alive")),
            ],
            426,
        ),
        change(
            "no Upgrade header, Connection: upgrade",
            &[("Upgrade:", None)],
            426,
        ),
        change(
            "no upgrade token in Connection",
            &[("Connection:", Some("Connection: keep-alive"))],
            426,
        ),
        change("no Connection header", &[("Connection:", None)], 426),
        change("Upgrade: h2c", &[("Upgrade:", Some("Upgrade: h2c"))], 400),
        change(
            "missing Sec-WebSocket-Key",
            &[("Sec-WebSocket-Key:", None)],
            400,
        ),
        change(
            "short Sec-WebSocket-Key",
            &[(
                "Sec-WebSocket-Key:",
                Some("Sec-WebSocket-Key: dGhlIHNhbXBsZQ=="),
            )],
            400,
        ),
        change(
            "non-base64 Sec-WebSocket-Key",
            &[(
                "Sec-WebSocket-Key:",
                Some("Sec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!=="),
            )],
            400,
        ),
        change(
            "missing Sec-WebSocket-Version",
            &[("Sec-WebSocket-Version:", None)],
            400,
        ),
        // Routing.
        line("no route", "GET /nothing HTTP/1.1", 404),
        line("prefix is not a path segment", "GET /record HTTP/1.1", 404),
        // Size limits (max_head_bytes 16384, max_headers 100).
        row("10 KiB target", with_target(long_target.as_bytes()), 414),
        row("20 KiB header", req_with(&[], &[big_header.as_str()]), 431),
        row("101 extra headers", req_with(&[], &many_headers), 431),
        // Backends.
        line("refused backend", "GET /refused HTTP/1.1", 502),
        line("connect timeout", "GET /blackhole HTTP/1.1", 504),
    ]
}

/// Checks the answer: [`check_refusal`], and a reason phrase after the status code.
fn check_reason(resp: &[u8]) -> Result<(), String> {
    let line = first_line(resp);
    let reason = line.splitn(3, ' ').nth(2).unwrap_or("");
    if reason.trim().is_empty() {
        return Err(format!("status line without a reason: {line:?}"));
    }
    Ok(())
}

e2e!(rejects, |relay| async move {
    let recording = RecordingBackend::start().await;
    let echo = EchoBackend::start().await;
    let refused = RefusedPort::new();
    let blackhole = Blackhole::start().await;
    // WebSocket-only routes: the rows that are not upgrades at all are refused with 426 there
    // (a default route forwards them; tests/http.rs and tests/smuggling.rs cover that).
    let ws_only = |prefix, addr| http::r(prefix, &[addr]).key("http", "false");
    let proxy = http::with_routes(
        Proxy::builder(relay)
            .timeout("handshake", "500ms")
            .timeout("connect", "300ms")
            .limit("max_head_bytes", 16384)
            .limit("max_headers", 100),
        &[
            ws_only("/rec", recording.addr),
            ws_only("/echo", echo.addr),
            ws_only("/refused", refused.addr),
            ws_only("/blackhole", blackhole.addr),
        ],
    )
    .start()
    .await;

    let mut rows = rows();
    // Half a head, then silence: 408 after the 500 ms handshake timeout.
    rows.push(row(
        "handshake timeout",
        b"GET /rec/x HTTP/1.1\r\nHost: localhost\r\nUpg".to_vec(),
        408,
    ));
    let total = rows.len();
    let mut failures = Vec::new();
    for Row {
        name,
        bytes,
        status: want,
    } in rows
    {
        let answer = try_refusal(&proxy, &bytes, want).await;
        if let Err(e) = answer.and_then(|resp| check_reason(&resp)) {
            failures.push(format!("{name}: {e}"));
        }
        let counts = recording.counts();
        if counts != (0, 0) {
            failures.push(format!(
                "{name}: backend received (connections, bytes) = {counts:?}"
            ));
        }
        // The proxy still serves a normal WebSocket after each rejection.
        assert_still_serving(&proxy, "/echo", name).await;
    }
    assert_rows_passed(&failures, total);
});

e2e!(max_headers_boundary_accepted, |relay| async move {
    // 6 standard headers + 94 fillers = exactly 100: accepted.
    let (proxy, backend) =
        raw_proxy_with(Proxy::builder(relay).limit("max_headers", 100), "/rec").await;
    let fillers: Vec<String> = (0..94).map(|i| format!("X-Filler-{i}: v")).collect();
    let fillers: Vec<&str> = fillers.iter().map(String::as_str).collect();
    let mut client = send(&proxy, &req_with(&[], &fillers)).await;
    let (_server, head) = backend.accept_101().await;
    assert_eq!(header_all(&head, "X-Filler-93"), ["v"]);
    let (resp, _) = read_head(&mut client).await;
    assert_status(&resp, 101, "exactly max_headers headers");
});
