//! Requests the proxy must refuse: one table, each row checked for its status code, the shape of
//! the answer, a closed socket, a backend that received nothing, and a proxy that still works.

#[macro_use]
mod support;
#[path = "support/http.rs"]
mod http;

use support::*;
use tokio::io::AsyncWriteExt;

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

    let with_ctl = |name: &str, value: &[u8]| {
        let mut line = name.as_bytes().to_vec();
        line.extend_from_slice(b": ");
        line.extend_from_slice(value);
        line
    };
    let ctl_upgrade = {
        let v = req_with(&[("Upgrade:", None)], &[]);
        let mut v = v[..v.len() - 2].to_vec();
        v.extend(with_ctl("Upgrade", b"web\x01socket"));
        v.extend_from_slice(b"\r\n\r\n");
        v
    };
    let ctl_connection = {
        let v = req_with(&[("Connection:", None)], &[]);
        let mut v = v[..v.len() - 2].to_vec();
        v.extend(with_ctl("Connection", b"Up\x02grade"));
        v.extend_from_slice(b"\r\n\r\n");
        v
    };
    let ctl_host = {
        let v = req_with(&[("Host:", None)], &[]);
        let mut v = v[..v.len() - 2].to_vec();
        v.extend(with_ctl("Host", b"local\x03host"));
        v.extend_from_slice(b"\r\n\r\n");
        v
    };

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
        row(
            "CONNECT",
            req_with(&[("GET ", Some("CONNECT localhost:80 HTTP/1.1"))], &[]),
            405,
        ),
        row(
            "POST with upgrade headers",
            req_with(&[("GET ", Some("POST /rec/x HTTP/1.1"))], &[]),
            400,
        ),
        row(
            "PUT with upgrade headers",
            req_with(&[("GET ", Some("PUT /rec/x HTTP/1.1"))], &[]),
            400,
        ),
        row(
            "HTTP/1.0",
            req_with(&[("GET ", Some("GET /rec/x HTTP/1.0"))], &[]),
            400,
        ),
        row(
            "duplicate Content-Length",
            req_with(&[], &["Content-Length: 0", "Content-Length: 0"]),
            400,
        ),
        row(
            "malformed Content-Length",
            req_with(&[], &["Content-Length: abc"]),
            400,
        ),
        row(
            "negative Content-Length",
            req_with(&[], &["Content-Length: -1"]),
            400,
        ),
        row(
            "list Content-Length",
            req_with(&[], &["Content-Length: 0, 0"]),
            400,
        ),
        row(
            "Transfer-Encoding: chunked",
            req_with(&[], &["Transfer-Encoding: chunked"]),
            400,
        ),
        row(
            "Transfer-Encoding: identity",
            req_with(&[], &["Transfer-Encoding: identity"]),
            400,
        ),
        row("missing Host", req_with(&[("Host:", None)], &[]), 400),
        row("repeated Host", req_with(&[], &["Host: localhost"]), 400),
        row("control byte in Upgrade", ctl_upgrade, 400),
        row("control byte in Connection", ctl_connection, 400),
        row("control byte in Host", ctl_host, 400),
        row(
            "control byte in Content-Length",
            with_header_line(b"Content-Length: 0\x01"),
            400,
        ),
        // Upgrade negotiation.
        row(
            "no Upgrade header",
            req_with(
                &[
                    ("Upgrade:", None),
                    ("Connection:", Some("Connection: keep-alive")),
                ],
                &[],
            ),
            426,
        ),
        row(
            "no Upgrade header, Connection: upgrade",
            req_with(&[("Upgrade:", None)], &[]),
            426,
        ),
        row(
            "no upgrade token in Connection",
            req_with(&[("Connection:", Some("Connection: keep-alive"))], &[]),
            426,
        ),
        row(
            "no Connection header",
            req_with(&[("Connection:", None)], &[]),
            426,
        ),
        row(
            "Upgrade: h2c",
            req_with(&[("Upgrade:", Some("Upgrade: h2c"))], &[]),
            400,
        ),
        row(
            "missing Sec-WebSocket-Key",
            req_with(&[("Sec-WebSocket-Key:", None)], &[]),
            400,
        ),
        row(
            "short Sec-WebSocket-Key",
            req_with(
                &[(
                    "Sec-WebSocket-Key:",
                    Some("Sec-WebSocket-Key: dGhlIHNhbXBsZQ=="),
                )],
                &[],
            ),
            400,
        ),
        row(
            "non-base64 Sec-WebSocket-Key",
            req_with(
                &[(
                    "Sec-WebSocket-Key:",
                    Some("Sec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!=="),
                )],
                &[],
            ),
            400,
        ),
        row(
            "missing Sec-WebSocket-Version",
            req_with(&[("Sec-WebSocket-Version:", None)], &[]),
            400,
        ),
        // Routing.
        row(
            "no route",
            req_with(&[("GET ", Some("GET /nothing HTTP/1.1"))], &[]),
            404,
        ),
        row(
            "prefix is not a path segment",
            req_with(&[("GET ", Some("GET /record HTTP/1.1"))], &[]),
            404,
        ),
        // Size limits (max_head_bytes 16384, max_headers 100).
        row("10 KiB target", with_target(long_target.as_bytes()), 414),
        row("20 KiB header", req_with(&[], &[big_header.as_str()]), 431),
        row("101 extra headers", req_with(&[], &many_headers), 431),
        // Backends.
        row(
            "refused backend",
            req_with(&[("GET ", Some("GET /refused HTTP/1.1"))], &[]),
            502,
        ),
        row(
            "connect timeout",
            req_with(&[("GET ", Some("GET /blackhole HTTP/1.1"))], &[]),
            504,
        ),
    ]
}

/// Checks the answer: `HTTP/1.1 NNN Reason`, `Connection: close`, CRLF framing.
fn check_answer(resp: &[u8], want: u16) -> Result<(), String> {
    let text = String::from_utf8_lossy(resp);
    if status(resp) != Some(want) {
        return Err(format!("expected {want}, got {text:?}"));
    }
    let line = first_line(resp);
    let reason = line.splitn(3, ' ').nth(2).unwrap_or("");
    if reason.trim().is_empty() {
        return Err(format!("status line without a reason: {line:?}"));
    }
    let Some(end) = resp.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Err(format!("answer head not terminated: {text:?}"));
    };
    let head = &resp[..end + 4];
    if head
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || head[i - 1] != b'\r'))
    {
        return Err(format!("bare LF in the answer: {text:?}"));
    }
    match header(head, "connection") {
        Some(c) if c.eq_ignore_ascii_case("close") => Ok(()),
        _ => Err(format!(
            "no `Connection: close` in {:?}",
            String::from_utf8_lossy(head)
        )),
    }
}

/// Sends `bytes` on a fresh connection and checks the answer and the close.
async fn try_row(proxy: &Proxy, bytes: &[u8], want: u16) -> Result<(), String> {
    let mut s = connect(proxy).await;
    // The proxy may answer and close before reading everything: ignore write errors.
    let _ = s.write_all(bytes).await;
    let (resp, _end) = try_read_to_end(&mut s, STEP).await?;
    check_answer(&resp, want)
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
        if let Err(e) = try_row(&proxy, &bytes, want).await {
            failures.push(format!("{name}: {e}"));
        }
        let counts = recording.counts();
        if counts != (0, 0) {
            failures.push(format!(
                "{name}: backend received (connections, bytes) = {counts:?}"
            ));
        }
        // The proxy still serves a normal WebSocket after each rejection.
        let mut ws = ws_connect(&proxy, "/echo").await;
        ws_echo_once(&mut ws, name).await;
    }
    assert!(
        failures.is_empty(),
        "{} of {total} rows failed:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
});

e2e!(max_headers_boundary_accepted, |relay| async move {
    // 6 standard headers + 94 fillers = exactly 100: accepted.
    let backend = RawBackend::start().await;
    let proxy = Proxy::builder(relay)
        .limit("max_headers", 100)
        .route(route("/rec", &[backend.addr]))
        .start()
        .await;
    let fillers: Vec<String> = (0..94).map(|i| format!("X-Filler-{i}: v")).collect();
    let fillers: Vec<&str> = fillers.iter().map(String::as_str).collect();
    let mut client = connect(&proxy).await;
    client
        .write_all(&req_with(&[], &fillers))
        .await
        .expect("write request");
    let (_server, head) = backend.accept_101().await;
    assert_eq!(header_all(&head, "X-Filler-93"), ["v"]);
    let (resp, _) = read_head(&mut client).await;
    assert_eq!(
        status(&resp),
        Some(101),
        "{:?}",
        String::from_utf8_lossy(&resp)
    );
});
