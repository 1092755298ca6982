//! Plain HTTP/1.1 forwarding beside the tunnels, over real sockets: bodies by length and
//! chunked both ways, bodiless answers, 100-continue, streaming answers, keep-alive and
//! pipelining, an upgrade after plain requests, the backend pool and its retry, timeouts.
//!
//! ```text
//!   raw client (Peer) ──▶ wsplice ──▶ Origin (records every byte) / RawBackend (scripted)
//! ```

#[macro_use]
mod support;
#[path = "support/http.rs"]
mod http;

use std::time::{Duration, Instant};

use http::*;
use support::*;
use tokio::io::AsyncReadExt;

async fn proxy(relay: Relay, routes: &[R]) -> Proxy {
    with_routes(Proxy::builder(relay), routes).start().await
}

e2e_drivers!(get_and_post_by_length_and_chunked, |relay| async move {
    let origin = Origin::with(|m| {
        let r = Reply::ok(format!("{} {} {}", m.method(), m.target(), m.body.len()));
        if m.target().contains("chunked") {
            r.chunked()
        } else {
            r
        }
    })
    .await;
    let p = proxy(relay, &[r("/app", &[origin.addr])]).await;
    let mut c = Peer::connect(p.addr()).await;

    c.send(&get(
        "/app/a?x=1",
        &[
            "Connection: keep-alive, X-Hop",
            "X-Hop: secret",
            "Keep-Alive: 5",
            "TE: trailers",
            "X-Forwarded-For: 1.2.3.4",
            "X-Real-IP: 6.6.6.6",
            "User-Agent: t",
        ],
    ))
    .await;
    let a = c.answer("GET").await;
    assert_eq!((a.status, a.text().as_str()), (200, "GET /a?x=1 0"));
    assert_eq!(a.header("connection"), None, "keep-alive is the default");

    let body = pattern(1 << 20, 7);
    c.send(&post_octets("/app/upload", &body)).await;
    let a = c.answer("POST").await;
    assert_eq!(a.text(), format!("POST /upload {}", body.len()));

    let mut chunked =
        b"PUT /app/chunked HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    chunked.extend_from_slice(
        b"5;name=val\r\nhello\r\n06\r\n world\r\n0\r\nX-Checksum: 42\r\nContent-Length: 99\r\n\r\n",
    );
    c.send(&chunked).await;
    let a = c.answer("PUT").await;
    assert_eq!(a.header("transfer-encoding"), Some("chunked"));
    assert_eq!(a.text(), "PUT /chunked 11");

    let seen = origin.requests();
    assert_eq!(seen.len(), 3);
    let g = &seen[0];
    assert_eq!(g.line, "GET /a?x=1 HTTP/1.1");
    for gone in ["x-hop", "keep-alive", "te", "connection"] {
        assert_eq!(g.header(gone), None, "{gone} reached the backend: {g:?}");
    }
    assert_eq!(g.header("x-forwarded-for"), Some("1.2.3.4, 127.0.0.1"));
    assert_eq!(g.header("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(g.header("x-forwarded-proto"), Some("http"));
    assert_eq!(g.header("user-agent"), Some("t"));
    assert_eq!(seen[1].body, body, "the 1 MiB body arrived intact");
    assert_eq!(seen[1].header("content-length"), Some("1048576"));
    let put = &seen[2];
    assert_eq!(put.body, b"hello world");
    assert_eq!(put.all("transfer-encoding"), ["chunked"]);
    // Size lines written fresh (no extension, no leading zero); trailers kept except
    // framing fields.
    let raw = String::from_utf8_lossy(&origin.raw()[0]).into_owned();
    assert!(
        raw.ends_with("\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: 42\r\n\r\n"),
        "{raw:?}"
    );
    assert_eq!(
        origin.accepted(),
        1,
        "one backend connection served all three"
    );
});

// Answers far larger than one read (io_uring reads and writes those from the loop, 64 KiB at a
// time, instead of through its 16 KiB ring buffers): every byte arrives in order, by length and
// chunked, toward a client that lets the proxy's writes block before it reads, and the
// connection serves a small request after them.
e2e_drivers!(large_answers_to_a_late_reader, |relay| async move {
    const BY_LENGTH: usize = (8 << 20) + 5;
    const CHUNKED: usize = (2 << 20) + 3;
    let origin = Origin::with(|m| match m.target() {
        "/length" => Reply::ok(pattern(BY_LENGTH, 11)),
        "/chunked" => Reply::ok(pattern(CHUNKED, 12)).chunked(),
        _ => Reply::ok("small"),
    })
    .await;
    let p = proxy(relay, &[r("/", &[origin.addr])]).await;
    let mut c = Peer::connect(p.addr()).await;
    for (path, len, seed) in [("/length", BY_LENGTH, 11), ("/chunked", CHUNKED, 12)] {
        c.send(&get(path, &[])).await;
        // Read nothing for a while: the proxy's socket toward this client fills and its
        // writes block (8 MiB is more than its send buffer, 4 MiB at most by default, and the
        // client's receive buffer hold).
        tokio::time::sleep(Duration::from_millis(300)).await;
        let a = c.answer("GET").await;
        assert_eq!(a.status, 200, "{path}");
        assert_eq!(a.body.len(), len, "{path}: body length");
        assert!(a.body == pattern(len, seed), "{path}: the body differs");
    }
    c.send(&get("/small", &[])).await;
    assert_eq!(c.answer("GET").await.text(), "small");
    assert!(
        c.buf.is_empty(),
        "bytes beyond the answers: {:?}",
        c.buf.len()
    );
    assert_eq!(
        origin.accepted(),
        1,
        "one backend connection served all three"
    );
});

e2e_drivers!(
    bodiless_answers_and_keep_alive_after_them,
    |relay| async move {
        let origin = Origin::with(|m| match m.target() {
            "/none" => Reply {
                status: 204,
                ..Reply::ok("")
            },
            "/same" => Reply {
                status: 304,
                framing: Framing::None,
                ..Reply::ok("")
            }
            .header("ETag", "\"x\""),
            _ => Reply::ok("0123456789"),
        })
        .await;
        let p = proxy(relay, &[r("/", &[origin.addr])]).await;
        let mut c = Peer::connect(p.addr()).await;
        c.send(&request("HEAD", "/page", &[], b"")).await;
        let a = c.answer("HEAD").await;
        assert_eq!((a.status, a.header("content-length")), (200, Some("10")));
        c.send(&get("/none", &[])).await;
        let a = c.answer("GET").await;
        assert_eq!(a.status, 204);
        c.send(&get("/same", &["If-None-Match: \"x\""])).await;
        let a = c.answer("GET").await;
        assert_eq!((a.status, a.header("etag")), (304, Some("\"x\"")));
        c.send(&get("/page", &[])).await;
        let a = c.answer("GET").await;
        assert_eq!(a.text(), "0123456789");
        assert!(c.buf.is_empty(), "bytes beyond the answers: {:?}", c.buf);
    }
);

e2e_drivers!(
    expect_100_continue_and_early_hints_are_relayed,
    |relay| async move {
        let (p, backend) = proxy_to_raw(Proxy::builder(relay), &[]).await;
        let post = b"POST /up HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n";
        let (mut c, mut b) = send_to_new(&p, &backend, post).await;
        let head = b.head().await.expect("head");
        assert_eq!(head.header("expect"), Some("100-continue"));
        // No body yet: the client waits for the 100.
        assert!(!b.has_bytes_within(Duration::from_millis(200)).await);
        b.send(b"HTTP/1.1 100 Continue\r\n\r\n").await;
        let interim = c.answer("POST").await;
        assert_eq!(interim.status, 100);
        c.send(b"data").await;
        let mut m = head;
        b.body(&mut m, Framing::Length(4)).await;
        assert_eq!(m.body, b"data");
        b.send(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
        .await;
        let (interim, a) = c.final_answer("POST").await;
        assert_eq!(interim.len(), 1);
        assert_eq!(interim[0].header("link"), Some("</s.css>; rel=preload"));
        assert_eq!((a.status, a.text().as_str()), (201, "ok"));
    }
);

e2e_drivers!(
    event_streams_pass_each_event_as_it_comes,
    |relay| async move {
        let (p, backend) = proxy_to_raw(Proxy::builder(relay), &[]).await;
        for chunked in [true, false] {
            let (mut c, mut b) = send_to_new(
                &p,
                &backend,
                &get("/events", &["Accept: text/event-stream"]),
            )
            .await;
            b.head().await.expect("head");
            let framing = if chunked {
                "Transfer-Encoding: chunked\r\n"
            } else {
                ""
            };
            b.send(
                format!("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n{framing}\r\n")
                    .as_bytes(),
            )
            .await;
            let a = c.head().await.expect("answer head");
            assert_eq!(a.status, 200);
            for i in 0..3 {
                let event = format!("data: {i}\n\n");
                let wire = if chunked {
                    format!("{:x}\r\n{event}\r\n", event.len())
                } else {
                    event.clone()
                };
                b.send(wire.as_bytes()).await;
                // Each event arrives before the next is even written: nothing is held back.
                let deadline = Instant::now() + Duration::from_secs(2);
                while !String::from_utf8_lossy(&c.buf).contains(&event) {
                    assert!(
                        Instant::now() < deadline,
                        "event {i} held back: {:?}",
                        c.buf
                    );
                    assert!(
                        c.has_bytes_within(Duration::from_millis(50)).await || !c.buf.is_empty()
                    );
                    if !String::from_utf8_lossy(&c.buf).contains(&event) {
                        let mut more = [0u8; 1024];
                        if let Ok(Ok(n)) =
                            tokio::time::timeout(Duration::from_millis(100), c.s.read(&mut more))
                                .await
                        {
                            c.buf.extend_from_slice(&more[..n]);
                        }
                    }
                }
                c.buf.clear();
            }
            if !chunked {
                // An answer that ends when the backend closes goes on chunked: the client's
                // connection stays open after it.
                assert_eq!(a.header("transfer-encoding"), Some("chunked"));
                assert_eq!(a.header("connection"), None);
                drop(b);
                assert_eq!(
                    c.exactly(5).await,
                    b"0\r\n\r\n",
                    "the last chunk at the close"
                );
                c.send(&get("/after", &[])).await;
                let mut b = Peer::new(backend.next_conn().await);
                assert_eq!(b.head().await.expect("head").target(), "/after");
                b.send(b"HTTP/1.1 204 No Content\r\n\r\n").await;
                assert_eq!(c.answer("GET").await.status, 204);
            }
        }
    }
);

e2e_drivers!(pipelined_requests_are_served_in_turn, |relay| async move {
    let (p, backend) = proxy_to_raw(Proxy::builder(relay), &[]).await;
    let mut c = Peer::connect(p.addr()).await;
    let mut all = get("/1", &[]);
    all.extend_from_slice(&request("POST", "/2", &[], b"two"));
    all.extend_from_slice(&get("/3", &[]));
    c.send(&all).await;
    let mut b = Peer::new(backend.next_conn().await);
    for (i, body) in [(1, ""), (2, "two"), (3, "")] {
        let mut m = b.head().await.expect("head");
        assert_eq!(m.target(), format!("/{i}"));
        let f = request_framing(&m);
        b.body(&mut m, f).await;
        assert_eq!(m.text(), body);
        // The next request waits for this answer.
        assert!(
            !b.has_bytes_within(Duration::from_millis(150)).await,
            "request {} sent before answer {i}: {:?}",
            i + 1,
            String::from_utf8_lossy(&b.buf)
        );
        b.send(format!("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n{i}").as_bytes())
            .await;
        let a = c.answer("GET").await;
        assert_eq!(a.text(), i.to_string());
    }
    assert_eq!(
        backend.accepted(),
        1,
        "one pooled backend connection for all three"
    );
});

e2e!(upgrade_after_plain_requests, |relay| async move {
    let origin = Origin::start().await;
    let echo = EchoBackend::start().await;
    let proxy = with_routes(
        Proxy::builder(relay),
        &[r("/ws", &[echo.addr]), r("/", &[origin.addr])],
    )
    .start()
    .await;
    let mut c = Peer::connect(proxy.addr()).await;
    for i in 0..2 {
        c.send(&get(&format!("/page{i}"), &[])).await;
        let a = c.answer("GET").await;
        assert_eq!(a.text(), format!("GET /page{i} 0"));
    }
    c.send(&upgrade_request("/ws/chat", &[])).await;
    let a = c.head().await.expect("101");
    assert_eq!(a.status, 101);
    let payload = b"hello over the same connection";
    c.send(&client_frame(0x1, payload)).await;
    let mut frame = std::mem::take(&mut c.buf);
    while frame.len() < 2 + payload.len() {
        let mut b = [0u8; 256];
        let n = tokio::time::timeout(STEP, c.s.read(&mut b))
            .await
            .expect("echo in time")
            .expect("read");
        assert!(n > 0, "closed instead of echoing");
        frame.extend_from_slice(&b[..n]);
    }
    assert_eq!(frame, server_frame(0x1, payload));
    assert_eq!(origin.accepted(), 1);
    assert_eq!(echo.log().connections, 1);
});

e2e_drivers!(
    pooled_connection_closed_by_the_backend_is_retried_for_idempotent_requests_only,
    |relay| async move {
        let (p, backend) =
            proxy_to_raw(Proxy::builder(relay).top("admin", "\"127.0.0.1:0\""), &[]).await;
        // First request: answered, the connection goes to the pool.
        let (mut c, mut b1) = send_to_new(&p, &backend, &get("/a", &[])).await;
        b1.head().await.expect("head");
        b1.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na")
            .await;
        assert_eq!(c.answer("GET").await.text(), "a");
        // Second request goes out on the pooled connection; the backend closes it instead of
        // answering (it timed the connection out just then). A GET is sent again on a new one.
        c.send(&get("/b", &[])).await;
        let head = b1
            .head()
            .await
            .expect("second request on the pooled connection");
        assert_eq!(head.target(), "/b");
        drop(b1);
        let mut b2 = Peer::new(backend.next_conn().await);
        assert_eq!(b2.head().await.expect("retried").target(), "/b");
        b2.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb")
            .await;
        assert_eq!(c.answer("GET").await.text(), "b");
        // A POST with a body on the pooled connection is not sent twice: 502.
        c.send(&request("POST", "/c", &[], b"once")).await;
        let mut m = b2.head().await.expect("POST on the pooled connection");
        b2.body(&mut m, Framing::Length(4)).await;
        drop(b2);
        let a = c.answer("POST").await;
        assert_eq!(a.status, 502, "{:?}", a.text());
        assert!(a.text().starts_with("502 Bad Gateway: "), "{:?}", a.text());
        assert!(
            tokio::time::timeout(Duration::from_millis(300), backend.next_conn())
                .await
                .is_err(),
            "the POST was sent again"
        );
        assert_eq!(backend.accepted(), 2);
    }
);

/// The request for `path` the client `c` sent reaches backend connection `b` (`on`: which one
/// it must be), whose answer (the path as its body) reaches the client.
async fn serve(c: &mut Peer, b: &mut Peer, path: &str, on: &str) {
    let m = b.head().await.expect(on);
    assert_eq!(m.target(), path);
    let answer = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{path}",
        path.len()
    );
    b.send(answer.as_bytes()).await;
    assert_eq!(c.answer("GET").await.text(), path);
}

/// A keep-alive client's backend connection waits with it between its requests (parked, still
/// watched). The backend closing it meanwhile is noticed before the next request, which goes
/// out on a new connection rather than as a retry; another client takes a connection the first
/// one holds. (Parking keeps the connection watched by epoll: this test runs under epoll.)
#[test]
fn a_clients_backend_connection_waits_with_it_between_its_requests() {
    run_auto(|_| async move {
        let (p, backend) = proxy_to_raw(
            // One worker: the two clients share its pool.
            Proxy::builder(Relay::Auto)
                .workers(1)
                .top("admin", "\"127.0.0.1:0\""),
            &[],
        )
        .await;
        let (mut c, mut b1) = send_to_new(&p, &backend, &get("/a", &[])).await;
        for path in ["/a", "/b", "/c"] {
            if path != "/a" {
                c.send(&get(path, &[])).await;
            }
            serve(&mut c, &mut b1, path, "on the first backend connection").await;
        }
        // The backend times the connection out while the client is idle.
        drop(b1);
        c.send(&get("/d", &[])).await;
        let mut b2 = Peer::new(backend.next_conn().await);
        serve(&mut c, &mut b2, "/d", "on a new connection").await;
        // A second client's request takes the connection the first client holds.
        let mut c2 = Peer::connect(p.addr()).await;
        c2.send(&get("/e", &[])).await;
        serve(&mut c2, &mut b2, "/e", "on the held connection").await;
        // And the first client's next one finds it again, with the second client.
        c.send(&get("/f", &[])).await;
        serve(&mut c, &mut b2, "/f", "still the one connection").await;
        assert_eq!(backend.accepted(), 2);
        tokio::task::block_in_place(|| {
            support::blocking::eventually("the counters", STEP, || {
                p.metric("wsplice_backend_pool_reused_total") == 4
            });
            assert_eq!(
                p.metric("wsplice_http_retries_total"),
                0,
                "no request sent twice"
            );
        });
    });
}

// HTTP/1.0 clients (ApacheBench, `curl -0`, old monitoring probes): served as nginx serves
// them. The request goes on as HTTP/1.0 with `Connection: close`, a Host-less one takes the
// route that names no host, the answer reaches the client without chunked framing or interim
// answers, and the connection closes after it.
e2e_drivers!(
    http_1_0_clients_are_served_and_closed_after_the_answer,
    |relay| async move {
        let origin = Origin::with(|m| Reply::ok(format!("{} {}", m.method(), m.target()))).await;
        let raw = RawBackend::start().await;
        let p = proxy(relay, &[r("/app", &[origin.addr]), r("/raw", &[raw.addr])]).await;

        // A GET without Host.
        let mut c = Peer::connect(p.addr()).await;
        c.send(b"GET /app/a?x=1 HTTP/1.0\r\n\r\n").await;
        let a = c.answer("GET").await;
        assert_eq!((a.status, a.text().as_str()), (200, "GET /a?x=1"));
        assert_eq!(a.header("transfer-encoding"), None);
        assert!(
            c.closed_within(STEP).await,
            "an HTTP/1.0 connection closes after its answer"
        );
        let seen = origin.requests();
        let m = seen.last().expect("the origin got the request");
        assert!(m.line.ends_with(" HTTP/1.0"), "{:?}", m.line);
        assert_eq!(m.header("connection"), Some("close"));

        // A POST by length.
        let mut c = Peer::connect(p.addr()).await;
        c.send(b"POST /app/up HTTP/1.0\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello")
            .await;
        assert_eq!(c.answer("POST").await.text(), "POST /up");
        assert!(c.closed_within(STEP).await);

        // A backend answering until it closes: the 1.0 client reads to the close, not chunks.
        let (mut c, mut b) = send_to_new(&p, &raw, b"GET /raw/a HTTP/1.0\r\n\r\n").await;
        b.head().await.expect("the backend got the head");
        b.send(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nstreamed")
            .await;
        drop(b);
        let (interim, a) = c.final_answer("GET").await;
        assert!(
            interim.is_empty(),
            "no interim answer for HTTP/1.0: {interim:?}"
        );
        assert_eq!((a.status, a.text().as_str()), (200, "streamed"));
        assert_eq!(a.header("transfer-encoding"), None);

        // A backend that answers a 1.0 request chunked: the client could not read it, 502.
        let (mut c, mut b) = send_to_new(&p, &raw, b"GET /raw/b HTTP/1.0\r\n\r\n").await;
        b.head().await.expect("the backend got the head");
        b.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
            .await;
        let a = c.answer("GET").await;
        assert_eq!(a.status, 502, "{:?}", a.text());

        // Chunked framing from a 1.0 client is a framing fault: 400, nothing forwarded.
        let before = origin.accepted();
        let mut c = Peer::connect(p.addr()).await;
        c.send(
            b"POST /app/x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        )
        .await;
        assert_eq!(c.answer("POST").await.status, 400);
        assert_eq!(origin.accepted(), before, "the origin got a connection");

        // And the proxy still serves HTTP/1.1.
        let mut c = Peer::connect(p.addr()).await;
        c.send(&get("/app/after", &[])).await;
        assert_eq!(c.answer("GET").await.text(), "GET /after");
    }
);
