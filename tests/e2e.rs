//! End-to-end tunnel and rewrite scenarios, each run under every relay mode (copy, splice, auto).

#[macro_use]
mod support;

use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

const SIZES: [usize; 6] = [0, 125, 126, 64 << 10, 1 << 20, 16 << 20];

/// A proxy with one route, `prefix`, to an [`EchoBackend`].
async fn echo_proxy(relay: Relay, prefix: &str) -> (Proxy, EchoBackend) {
    let backend = EchoBackend::start().await;
    let proxy = Proxy::builder(relay)
        .route(route(prefix, &[backend.addr]))
        .start()
        .await;
    (proxy, backend)
}

// ---------------------------------------------------------------------------------------------
// Tunnel through tokio-tungstenite on both sides
// ---------------------------------------------------------------------------------------------

e2e_tls_backend!(echo_text, |relay| async move {
    let (proxy, _backend) = echo_proxy(relay, "/echo").await;
    let mut ws = ws_connect(&proxy, "/echo").await;
    for size in SIZES {
        let text: String = pattern(size, 3)
            .iter()
            .map(|b| char::from(b'a' + b % 26))
            .collect();
        ws.send(Message::text(text.clone()))
            .await
            .expect("send text");
        match ws_recv(&mut ws).await {
            Message::Text(t) => assert!(
                t.as_str() == text,
                "text of {size} bytes came back different"
            ),
            other => panic!("text of {size} bytes: got {other:?}"),
        }
    }
});

e2e_tls_backend!(echo_binary, |relay| async move {
    let (proxy, _backend) = echo_proxy(relay, "/echo").await;
    let mut ws = ws_connect(&proxy, "/echo").await;
    for size in SIZES {
        let data = pattern(size, 9);
        ws.send(Message::binary(data.clone()))
            .await
            .expect("send binary");
        match ws_recv(&mut ws).await {
            Message::Binary(b) => assert!(
                b[..] == data[..],
                "binary of {size} bytes came back different"
            ),
            other => panic!("binary of {size} bytes: got {other:?}"),
        }
    }
});

e2e_tls_backend!(thousand_messages_in_order, |relay| async move {
    let (proxy, _backend) = echo_proxy(relay, "/echo").await;
    let (mut tx, mut rx) = ws_connect(&proxy, "/echo").await.split();
    let sender = tokio::spawn(async move {
        for i in 0..1000 {
            tx.send(Message::text(format!("message {i}")))
                .await
                .expect("send");
        }
        tx
    });
    for i in 0..1000 {
        match tokio::time::timeout(STEP, rx.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => assert_eq!(t.as_str(), format!("message {i}")),
            other => panic!("message {i}: got {other:?}"),
        }
    }
    let _tx = sender.await.expect("sender task");
});

e2e_tls_backend!(ping_pong_both_ways, |relay| async move {
    let (proxy, backend) = echo_proxy(relay, "/echo").await;
    let mut ws = ws_connect(&proxy, "/echo").await;
    ws.send(Message::Ping(b"from-client".to_vec().into()))
        .await
        .expect("send ping");
    match tokio::time::timeout(STEP, ws.next()).await {
        Ok(Some(Ok(Message::Pong(p)))) => assert_eq!(&p[..], b"from-client"),
        other => panic!("expected the pong, got {other:?}"),
    }
    // The backend pings; the client's library answers on its next read.
    ws.send(Message::text("__ping__ from-backend"))
        .await
        .expect("ask for a ping");
    ws_echo_once(&mut ws, "after ping").await;
    eventually("backend received the pong", STEP, || {
        backend.log().pongs.iter().any(|p| p == b"from-backend")
    })
    .await;
});

e2e_tls_backend!(close_code_from_client, |relay| async move {
    let (proxy, backend) = echo_proxy(relay, "/echo").await;
    let mut ws = ws_connect(&proxy, "/echo").await;
    ws_echo_once(&mut ws, "hello").await;
    let frame = CloseFrame {
        code: CloseCode::from(4001),
        reason: "bye".into(),
    };
    ws.close(Some(frame)).await.expect("send close");
    // The backend's close reply comes back through the proxy, then the stream ends.
    loop {
        match tokio::time::timeout(STEP, ws.next()).await {
            Err(_) => panic!("no close reply within {STEP:?}"),
            Ok(None) | Ok(Some(Err(_))) => break,
            Ok(Some(Ok(Message::Close(f)))) => {
                assert_eq!(
                    f.map(|f| u16::from(f.code)),
                    Some(4001),
                    "backend's close reply echoes the code"
                );
            }
            Ok(Some(Ok(other))) => panic!("unexpected {other:?} while closing"),
        }
    }
    eventually("backend saw close 4001 \"bye\"", STEP, || {
        backend
            .log()
            .closes
            .contains(&Some((4001, "bye".to_owned())))
    })
    .await;
});

e2e_tls_backend!(close_code_from_backend, |relay| async move {
    let (proxy, _backend) = echo_proxy(relay, "/echo").await;
    let mut ws = ws_connect(&proxy, "/echo").await;
    ws.send(Message::text("__close__ 4002 backend-bye"))
        .await
        .expect("ask for close");
    match ws_recv(&mut ws).await {
        Message::Close(Some(f)) => {
            assert_eq!(u16::from(f.code), 4002);
            assert_eq!(f.reason.as_str(), "backend-bye");
        }
        other => panic!("expected close 4002, got {other:?}"),
    }
    // Our library replies to the close; afterwards the stream ends.
    match tokio::time::timeout(STEP, ws.next()).await {
        Ok(None) | Ok(Some(Err(_))) => {}
        other => panic!("expected the end of the stream, got {other:?}"),
    }
});

// ---------------------------------------------------------------------------------------------
// Raw tunnels: half-close, resets, bulk bytes
// ---------------------------------------------------------------------------------------------

e2e_tls_backend!(bulk_bytes_both_ways_at_once, |relay| async move {
    let (proxy, backend) = raw_proxy(relay, "/raw").await;
    let (client, server) = raw_tunnel(&proxy, &backend, "/raw").await;
    let up = pattern(8 << 20, 1);
    let down = pattern(8 << 20, 2);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let (a, b, c, d) = tokio::join!(
        cw.write_all(&up),
        sw.write_all(&down),
        async {
            let mut buf = vec![0u8; up.len()];
            sr.read_exact(&mut buf).await.map(|_| buf)
        },
        async {
            let mut buf = vec![0u8; down.len()];
            cr.read_exact(&mut buf).await.map(|_| buf)
        },
    );
    a.expect("client writes 8 MiB");
    b.expect("backend writes 8 MiB");
    assert!(
        c.expect("backend reads 8 MiB") == up,
        "client -> backend bytes differ"
    );
    assert!(
        d.expect("client reads 8 MiB") == down,
        "backend -> client bytes differ"
    );
});

/// One side (the client when `client_fin`, else the backend) sends, then shuts down its write
/// half; the other direction still runs, with more than one pipe's worth, and when the other
/// side closes the FIN side sees a clean FIN.
async fn half_close(relay: Relay, client_fin: bool) {
    let (proxy, backend) = raw_proxy(relay, "/raw").await;
    let (client, server) = raw_tunnel(&proxy, &backend, "/raw").await;
    let ((mut fin, f), (mut open, o), seed) = if client_fin {
        ((client, "client"), (server, "backend"), 5)
    } else {
        ((server, "backend"), (client, "client"), 6)
    };
    pump(&mut fin, &mut open, b"before", &format!("{f} -> {o}")).await;
    fin.shutdown().await.expect("shutdown(Write)");
    let (rest, _) = read_to_end(&mut open, STEP).await;
    assert!(
        rest.is_empty(),
        "{o} got {} bytes after the {f}'s FIN",
        rest.len()
    );
    let late = pattern(1 << 20, seed);
    pump(
        &mut open,
        &mut fin,
        &late,
        &format!("{o} -> half-closed {f}"),
    )
    .await;
    drop(open);
    let (tail, end) = read_to_end(&mut fin, STEP).await;
    assert!(tail.is_empty(), "{f} got {} extra bytes", tail.len());
    assert_eq!(end, End::Eof, "{o} closed cleanly, the {f} should see FIN");
}

e2e_tls_backend!(half_close_client_first, |relay| half_close(relay, true));

e2e_tls_backend!(half_close_backend_first, |relay| half_close(relay, false));

/// After a few bytes from one side (the client when `client_resets`), that side resets: the
/// proxy closes the other.
async fn reset_closes_the_other_side(relay: Relay, client_resets: bool) {
    let (proxy, backend) = raw_proxy(relay, "/raw").await;
    let (client, server) = raw_tunnel(&proxy, &backend, "/raw").await;
    let ((mut reset, r), (mut other, o)) = if client_resets {
        ((client, "client"), (server, "backend"))
    } else {
        ((server, "backend"), (client, "client"))
    };
    pump(&mut reset, &mut other, b"ping", &format!("{r} -> {o}")).await;
    reset.set_zero_linger().expect("SO_LINGER 0");
    drop(reset);
    wait_closed(&mut other, &format!("{o} after the {r}'s reset")).await;
}

e2e_tls!(client_reset_closes_backend, |relay| {
    reset_closes_the_other_side(relay, true)
});

e2e_tls!(backend_reset_closes_client, |relay| {
    reset_closes_the_other_side(relay, false)
});

// ---------------------------------------------------------------------------------------------
// What the backend sees
// ---------------------------------------------------------------------------------------------

/// Sends `request` through the proxy, answers 101 at `backend`, returns the head the backend got.
async fn backend_view(proxy: &Proxy, backend: &RawBackend, request: &[u8]) -> Vec<u8> {
    let mut client = send(proxy, request).await;
    let (server, head) = backend.accept_101().await;
    let (resp, _) = read_head(&mut client).await;
    drop(server);
    assert_status(&resp, 101, "client");
    assert_crlf_only(&head);
    head
}

/// For each (sent, expected): the client's upgrade to `sent` reaches the backend as
/// `GET expected HTTP/1.1`.
async fn assert_targets(proxy: &Proxy, backend: &RawBackend, targets: &[(&str, &str)]) {
    for &(sent, expected) in targets {
        let head = backend_view(proxy, backend, &upgrade_request(sent, &[])).await;
        assert_eq!(
            first_line(&head),
            format!("GET {expected} HTTP/1.1"),
            "client asked for {sent}"
        );
    }
}

e2e_tls!(rewrite_strips_prefix, |relay| async move {
    let (proxy, backend) = raw_proxy(relay, "/notice").await;
    let targets = [
        ("/notice/a?x=1", "/a?x=1"),
        ("/notice", "/"),
        ("/notice?x=1", "/?x=1"),
        ("/notice/", "/"),
        ("/notice/a/b/", "/a/b/"),
    ];
    assert_targets(&proxy, &backend, &targets).await;
});

e2e_tls!(rewrite_root_prefix_keeps_path, |relay| async move {
    let (proxy, backend) = raw_proxy(relay, "/").await;
    let targets = [("/", "/"), ("/x", "/x"), ("/x/y?z=1", "/x/y?z=1")];
    assert_targets(&proxy, &backend, &targets).await;
});

e2e_tls!(rewrite_without_strip_keeps_path, |relay| async move {
    let backend = RawBackend::start().await;
    let proxy = Proxy::builder(relay)
        .route(route("/notice", &[backend.addr]).strip_prefix(false))
        .start()
        .await;
    let targets = [
        ("/notice/a?x=1", "/notice/a?x=1"),
        ("/notice", "/notice"),
        ("/notice?x=1", "/notice?x=1"),
    ];
    assert_targets(&proxy, &backend, &targets).await;
});

e2e_tls!(prefix_matches_whole_segments, |relay| async move {
    let (proxy, notice) = raw_proxy(relay, "/notice").await;
    let (resp, _) = send_and_read_all(&proxy, &upgrade_request("/noticeboard", &[])).await;
    assert_status(&resp, 404, "/noticeboard");
    assert_eq!(
        notice.accepted(),
        0,
        "/noticeboard reached the /notice backend"
    );

    // With a catch-all route as well, /noticeboard goes there, untouched.
    let other = RawBackend::start().await;
    let proxy = Proxy::builder(relay)
        .route(route("/notice", &[notice.addr]))
        .route(route("/", &[other.addr]))
        .start()
        .await;
    let head = backend_view(&proxy, &other, &upgrade_request("/noticeboard?q=1", &[])).await;
    assert_eq!(first_line(&head), "GET /noticeboard?q=1 HTTP/1.1");
    assert_eq!(
        notice.accepted(),
        0,
        "/noticeboard reached the /notice backend"
    );
});

/// Asserts the header appears exactly once with `value` (value compared case-insensitively when
/// `ci`).
fn assert_once(head: &[u8], name: &str, value: &str, ci: bool) {
    let all = header_all(head, name);
    assert_eq!(
        all.len(),
        1,
        "{name} should appear once, got {all:?} in\n{}",
        String::from_utf8_lossy(head)
    );
    let ok = if ci {
        all[0].eq_ignore_ascii_case(value)
    } else {
        all[0] == value
    };
    assert!(ok, "{name}: expected {value:?}, got {:?}", all[0]);
}

/// Asserts none of the headers `names` is in `head`.
fn assert_absent(head: &[u8], names: &[&str]) {
    for name in names {
        let all = header_all(head, name);
        assert!(
            all.is_empty(),
            "{name} should be gone, got {all:?} in\n{}",
            String::from_utf8_lossy(head)
        );
    }
}

e2e_tls_backend!(rewrite_headers, |relay| async move {
    let (proxy, backend) = raw_proxy(relay, "/notice").await;
    let request = b"GET /notice/a?x=1 HTTP/1.1\r\n\
        Host: chat.example.com:8080\r\n\
        Upgrade: websocket\r\n\
        Connection: keep-alive, Upgrade, X-Secret\r\n\
        Keep-Alive: timeout=5\r\n\
        Proxy-Connection: keep-alive\r\n\
        Proxy-Authorization: Basic dXNlcjpwYXNz\r\n\
        TE: trailers\r\n\
        Trailer: X-Checksum\r\n\
        X-Secret: hidden\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\
        Sec-WebSocket-Protocol: chat, superchat\r\n\
        Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
        Origin: http://chat.example.com\r\n\
        X-Custom: a value,  with spaces\r\n\
        Cookie: id=42\r\n\
        X-Forwarded-For: 10.0.0.1\r\n\
        \r\n";
    let head = backend_view(&proxy, &backend, request).await;
    assert_eq!(first_line(&head), "GET /a?x=1 HTTP/1.1");
    assert_absent(
        &head,
        &[
            "Keep-Alive",
            "Proxy-Connection",
            "Proxy-Authorization",
            "TE",
            "Trailer",
            "Transfer-Encoding",
            "X-Secret",
        ],
    );
    assert_once(&head, "Connection", "upgrade", true);
    assert_once(&head, "Upgrade", "websocket", true);
    for (name, value) in [
        ("X-Real-IP", "127.0.0.1"),
        ("X-Forwarded-For", "10.0.0.1, 127.0.0.1"),
        ("X-Forwarded-Proto", proto(relay)),
        ("Host", "chat.example.com:8080"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Protocol", "chat, superchat"),
        (
            "Sec-WebSocket-Extensions",
            "permessage-deflate; client_max_window_bits",
        ),
        ("Origin", "http://chat.example.com"),
        ("X-Custom", "a value,  with spaces"),
        ("Cookie", "id=42"),
    ] {
        assert_once(&head, name, value, false);
    }
});

e2e_tls!(
    rewrite_client_named_forwarding_headers_dropped,
    |relay| async move {
        let (proxy, backend) = raw_proxy(relay, "/notice").await;
        let request = upgrade_request(
            "/notice",
            &["X-Forwarded-For: 1.2.3.4", "X-Real-IP: 6.6.6.6"],
        );
        // Swap in a Connection header naming the forwarding headers.
        let request = String::from_utf8(request).expect("ascii").replace(
            "Connection: Upgrade\r\n",
            "Connection: Upgrade, X-Forwarded-For, X-Real-IP\r\n",
        );
        let head = backend_view(&proxy, &backend, request.as_bytes()).await;
        assert_once(&head, "X-Real-IP", "127.0.0.1", false);
        assert_once(&head, "X-Forwarded-For", "127.0.0.1", false);
        assert_once(&head, "X-Forwarded-Proto", proto(relay), false);
        assert_once(&head, "Connection", "upgrade", true);
    }
);

e2e_tls!(rewrite_client_proxy_headers_replaced, |relay| async move {
    let (proxy, backend) = raw_proxy(relay, "/notice").await;
    let request = upgrade_request(
        "/notice",
        &[
            "X-Real-IP: 6.6.6.6",
            "X-Forwarded-Proto: https",
            "X-Forwarded-For: 1.2.3.4",
        ],
    );
    let head = backend_view(&proxy, &backend, &request).await;
    assert_once(&head, "X-Real-IP", "127.0.0.1", false);
    assert_once(&head, "X-Forwarded-Proto", proto(relay), false);
    assert_once(&head, "X-Forwarded-For", "1.2.3.4, 127.0.0.1", false);
    assert_once(&head, "Upgrade", "websocket", true);
});

// A name with `_` that reads as a header the proxy strips or writes never passes: a
// CGI/WSGI-style backend reads `X_Real_IP` as `X-Real-IP`, so it would forge the client's address
// past the proxy's own header. Other names with `_` pass unless `underscores_in_headers = false`.
e2e_tls!(underscore_header_names, |relay| async move {
    let sent = [
        "X_Real_IP: 6.6.6.6",
        "X_Forwarded_For: 6.6.6.6",
        "Transfer_Encoding: chunked",
        "My_App: 1",
        "My-App: 2",
    ];
    let (proxy, backend) = raw_proxy(relay, "/notice").await;
    let head = backend_view(&proxy, &backend, &upgrade_request("/notice", &sent)).await;
    // Names that read as one the proxy strips or writes.
    let forged = ["X_Real_IP", "X_Forwarded_For", "Transfer_Encoding"];
    assert_absent(&head, &forged);
    assert!(
        !String::from_utf8_lossy(&head).contains("6.6.6.6"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    assert_once(&head, "My_App", "1", false);
    assert_once(&head, "My-App", "2", false);
    assert_once(&head, "X-Real-IP", "127.0.0.1", false);
    assert_once(&head, "X-Forwarded-For", "127.0.0.1", false);

    let (proxy, backend) = raw_proxy_with(
        Proxy::builder(relay).top("underscores_in_headers", "false"),
        "/notice",
    )
    .await;
    let head = backend_view(&proxy, &backend, &upgrade_request("/notice", &sent)).await;
    assert_absent(&head, &[&forged[..], &["My_App"][..]].concat());
    assert_once(&head, "My-App", "2", false);
    assert_once(&head, "X-Real-IP", "127.0.0.1", false);
});

e2e_tls!(forwarded_for_append_and_replace, |relay| async move {
    let append = RawBackend::start().await;
    let replace = RawBackend::start().await;
    let proxy = Proxy::builder(relay)
        .route(route("/append", &[append.addr]).forwarded_for("append"))
        .route(route("/replace", &[replace.addr]).forwarded_for("replace"))
        .start()
        .await;
    let (none, xff): (&[&str], &[&str]) = (&[], &["X-Forwarded-For: 9.9.9.9"]);
    // (backend, path, the client's header, what the backend must get)
    for (backend, path, sent, want) in [
        (&append, "/append", none, "127.0.0.1"),
        (&append, "/append", xff, "9.9.9.9, 127.0.0.1"),
        (&replace, "/replace", xff, "127.0.0.1"),
        (&replace, "/replace", none, "127.0.0.1"),
    ] {
        let head = backend_view(&proxy, backend, &upgrade_request(path, sent)).await;
        assert_once(&head, "X-Forwarded-For", want, false);
    }
});

e2e_tls!(upgrade_token_variants_accepted, |relay| async move {
    let (proxy, backend) = raw_proxy(relay, "/notice").await;
    for (upgrade, connection) in [
        ("websocket", "keep-alive, Upgrade"),
        ("WebSocket", "Upgrade"),
        ("WEBSOCKET", "upgrade"),
        ("websocket", "Upgrade,keep-alive"),
    ] {
        let request = format!(
            "GET /notice HTTP/1.1\r\nHost: localhost\r\nUpgrade: {upgrade}\r\nConnection: {connection}\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        let head = backend_view(&proxy, &backend, request.as_bytes()).await;
        assert_once(&head, "Upgrade", "websocket", true);
        assert_once(&head, "Connection", "upgrade", true);
    }
});

e2e_tls!(route_by_host, |relay| async move {
    let example = RawBackend::start().await;
    let proxy = Proxy::builder(relay)
        .route(route("/", &[example.addr]).host("example.com"))
        .start()
        .await;
    let for_host = |host: &str| {
        String::from_utf8(upgrade_request("/h", &[]))
            .expect("ascii")
            .replace("Host: localhost", &format!("Host: {host}"))
            .into_bytes()
    };
    let head = backend_view(&proxy, &example, &for_host("example.com")).await;
    assert_once(&head, "Host", "example.com", false);
    let head = backend_view(&proxy, &example, &for_host("EXAMPLE.com:8080")).await;
    assert_once(&head, "Host", "EXAMPLE.com:8080", false);
    let (resp, _) = send_and_read_all(&proxy, &for_host("other.example")).await;
    assert_status(&resp, 404, "Host: other.example");
    assert_eq!(
        example.accepted(),
        2,
        "other.example must not reach the example.com backend"
    );
});

e2e_tls!(echo_backend_sees_rewritten_request, |relay| async move {
    let (proxy, backend) = echo_proxy(relay, "/notice").await;
    let mut ws = ws_connect(&proxy, "/notice/room?id=7").await;
    ws_echo_once(&mut ws, "hi").await;
    let log = backend.log();
    assert_eq!(log.connections, 1);
    let req = &log.requests[0];
    assert_eq!(req.method, "GET");
    assert_eq!(req.target, "/room?id=7");
    let get = |name: &str| -> Vec<&str> {
        req.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(get("x-real-ip"), ["127.0.0.1"]);
    assert_eq!(get("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(get("x-forwarded-proto"), [proto(relay)]);
    assert_eq!(get("host"), [proxy.host().as_str()]);
});

// ---------------------------------------------------------------------------------------------
// Resumable head parsing, many tunnels at once
// ---------------------------------------------------------------------------------------------

e2e_tls!(head_in_pieces, |relay| async move {
    let (proxy, backend) = raw_proxy(relay, "/notice").await;
    let request = upgrade_request("/notice/p", &["X-Custom: 1"]);
    let mut client = connect(&proxy).await;
    // Cut inside the request line, inside a header name, between CR and LF, before the last CRLF.
    let cr_lf = 1 + request.windows(2).position(|w| w == b"\r\n").expect("CRLF");
    let cuts = [5, cr_lf, 30, request.len() - 3, request.len() - 1];
    let mut from = 0;
    for to in cuts.into_iter().chain([request.len()]) {
        client
            .write_all(&request[from..to])
            .await
            .expect("client writes a piece");
        from = to;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (server, head) = backend.accept_101().await;
    assert_eq!(first_line(&head), "GET /p HTTP/1.1");
    assert_once(&head, "X-Custom", "1", false);
    let (resp, _) = read_head(&mut client).await;
    assert_status(&resp, 101, "client");
    drop(server);
});

e2e_tls!(many_concurrent_tunnels, |relay| async move {
    let (proxy, _backend) = echo_proxy(relay, "/echo").await;
    let proxy = std::sync::Arc::new(proxy);
    let mut tasks = Vec::new();
    for i in 0..200 {
        let proxy = proxy.clone();
        tasks.push(tokio::spawn(async move {
            let mut ws = ws_connect(&proxy, "/echo").await;
            for j in 0..10 {
                ws_echo_once(&mut ws, &format!("conn {i} msg {j}")).await;
            }
            ws.close(None).await.expect("close");
        }));
    }
    for t in tasks {
        t.await.expect("tunnel task");
    }
});
