//! Forwarded requests against backends that lie and clients that misbehave, over real
//! sockets: each case checks what the client gets, what the backend got, and that the backend
//! connection is not reused when it must not be.
//!
//! ```text
//!   raw client (Peer) ──▶ wsplice ──▶ RawBackend (each answer scripted by the test)
//! ```

#[allow(unused_macros)]
#[macro_use]
mod support;
#[path = "support/http.rs"]
mod http;

use std::time::{Duration, Instant};

use http::*;
use support::*;

/// A proxy with one route to a new raw backend, `keys` set on the route.
async fn raw(relay: Relay, keys: &[(&str, &str)]) -> (Proxy, RawBackend) {
    proxy_to_raw(Proxy::builder(relay), keys).await
}

/// A request on a new client connection; the backend's side of it, head read.
async fn exchange(p: &Proxy, backend: &RawBackend, req: &[u8]) -> (Peer, Peer, Msg) {
    let (c, mut b) = send_to_new(p, backend, req).await;
    let head = b.head().await.expect("request head at the backend");
    (c, b, head)
}

/// `GET /` through a proxy to a new raw backend: the proxy, the backend, the client's end and
/// the backend's end (its head read).
async fn a_get(relay: Relay) -> (Proxy, RawBackend, Peer, Peer) {
    let (p, backend) = raw(relay, &[]).await;
    let (c, b, _) = exchange(&p, &backend, &get("/", &[])).await;
    (p, backend, c, b)
}

/// The next request of the proxy goes to a new backend connection, not `old`.
async fn next_request_uses_a_new_connection(p: &Proxy, backend: &RawBackend, old: &mut Peer) {
    let (mut c, mut b, head) = exchange(p, backend, &get("/next", &[])).await;
    assert_eq!(head.target(), "/next");
    b.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        .await;
    assert_eq!(c.answer("GET").await.text(), "ok");
    assert!(
        old.closed_within(STEP).await,
        "the lying connection was not closed"
    );
}

e2e_drivers!(
    content_length_shorter_than_the_body_sent,
    |relay| async move {
        let (p, backend, mut c, mut b) = a_get(relay).await;
        // Says 5, sends 11: the extra bytes must neither reach the client as a next answer nor
        // stay in a pooled connection.
        b.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1")
            .await;
        let a = c.answer("GET").await;
        assert_eq!(a.text(), "hello");
        assert!(
            !c.has_bytes_within(Duration::from_millis(200)).await,
            "{:?}",
            c.buf
        );
        next_request_uses_a_new_connection(&p, &backend, &mut b).await;
    }
);

e2e_drivers!(
    content_length_longer_than_the_body_sent,
    |relay| async move {
        let (_p, _backend, mut c, b) = a_get(relay).await;
        let mut b = b;
        b.send(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort")
            .await;
        drop(b);
        let head = c.head().await.expect("answer head");
        assert_eq!(head.header("content-length"), Some("50"));
        // The client gets what there was, then a close: it sees the body cut short.
        assert!(c.closed_within(STEP).await);
        assert_eq!(c.buf, b"short");
    }
);

e2e_drivers!(
    broken_chunked_answer_cuts_the_client_off,
    |relay| async move {
        let (p, backend) = raw(relay, &[]).await;
        for garbage in [
            &b"zz\r\nhello\r\n"[..],
            b"5\r\nhelloXX",
            b"5\nhello\r\n",
            b"-1\r\n",
        ] {
            let (mut c, mut b, _) = exchange(&p, &backend, &get("/", &[])).await;
            b.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
                .await;
            let head = c.head().await.expect("answer head");
            assert_eq!(head.status, 200);
            b.send(garbage).await;
            assert!(c.closed_within(STEP).await, "{garbage:?}: still open");
            let got = String::from_utf8_lossy(&c.buf).into_owned();
            assert!(got.starts_with("3\r\nabc\r\n"), "{got:?}");
            assert!(
                !got.contains("0\r\n\r\n"),
                "a broken answer must not look complete: {got:?}"
            );
            assert!(
                b.closed_within(STEP).await,
                "the backend connection stays closed"
            );
        }
    }
);

e2e_drivers!(
    switching_protocols_to_a_plain_request_is_a_502,
    |relay| async move {
        let (_p, _backend, mut c, mut b) = a_get(relay).await;
        b.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x05hello")
        .await;
        let a = c.answer("GET").await;
        assert_eq!(a.status, 502, "{:?}", a.text());
        assert_eq!(a.header("connection"), Some("close"));
        assert!(c.closed_within(STEP).await);
        assert!(b.closed_within(STEP).await);
    }
);

e2e_drivers!(
    early_answer_before_the_body_closes_after_it,
    |relay| async move {
        let (p, backend) = raw(relay, &[]).await;
        let mut req =
            b"POST /up HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n\r\n".to_vec();
        req.extend_from_slice(&[b'a'; 1000]);
        let (mut c, mut b, _) = exchange(&p, &backend, &req).await;
        // The backend refuses the upload before reading it.
        b.send(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 3\r\n\r\nbig")
            .await;
        let a = c.answer("POST").await;
        assert_eq!((a.status, a.text().as_str()), (413, "big"));
        assert_eq!(
            a.header("connection"),
            Some("close"),
            "the body never ended: no keep-alive"
        );
        assert!(c.closed_within(STEP).await);
        assert!(
            b.closed_within(STEP).await,
            "a half-sent request's connection is not pooled"
        );
    }
);

e2e_drivers!(
    backend_that_closes_before_answering_is_a_502_and_one_that_stalls_a_504,
    |relay| async move {
        let (p, backend) = raw(relay, &[("response_timeout", "\"500ms\"")]).await;
        let (mut c, b, _) = exchange(&p, &backend, &request("POST", "/", &[], b"x")).await;
        drop(b);
        let a = c.answer("POST").await;
        assert_eq!(a.status, 502);
        assert!(a.text().contains("backend"), "readable: {:?}", a.text());

        let started = Instant::now();
        let (mut c, _b, _) = exchange(&p, &backend, &get("/slow", &[])).await;
        let a = c.answer("GET").await;
        assert_eq!(a.status, 504);
        assert!(
            a.text().starts_with("504 Gateway Timeout: "),
            "{:?}",
            a.text()
        );
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(450) && took < Duration::from_secs(3),
            "504 after {took:?}"
        );
    }
);

e2e_drivers!(refused_backend_is_a_readable_502, |relay| async move {
    let refused = RefusedPort::new();
    let p = with_routes(Proxy::builder(relay), &[r("/", &[refused.addr])])
        .start()
        .await;
    let mut c = Peer::connect(p.addr()).await;
    c.send(&get("/", &[])).await;
    let a = c.answer("GET").await;
    assert_eq!(a.status, 502);
    assert_eq!(a.header("content-type"), Some("text/plain; charset=utf-8"));
    assert!(a.text().starts_with("502 Bad Gateway: "), "{:?}", a.text());
});

e2e_drivers!(
    slow_body_gets_408_and_idle_keep_alive_is_closed_quietly,
    |relay| async move {
        let (p, backend) = proxy_to_raw(
            Proxy::builder(relay).timeout("client_idle", "400ms"),
            &[("response_timeout", "\"400ms\"")],
        )
        .await;
        // A body that stops coming: the backend has all we got; the client is at fault.
        let (mut c, mut b, mut head) = exchange(
            &p,
            &backend,
            &request("POST", "/", &["Content-Length: 10"], b""),
        )
        .await;
        c.send(b"12345").await;
        b.body(&mut head, Framing::Length(5)).await;
        let a = c.answer("POST").await;
        assert_eq!(a.status, 408);
        assert!(
            b.closed_within(STEP).await,
            "the cut-off request's connection is closed"
        );
        // A keep-alive client that sends nothing more is closed after client_idle, silently.
        let (mut c, mut b, _) = exchange(&p, &backend, &get("/", &[])).await;
        b.send(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .await;
        assert_eq!(c.answer("GET").await.status, 200);
        let idle = Instant::now();
        assert!(c.closed_within(STEP).await);
        assert!(
            c.buf.is_empty(),
            "no answer to an idle connection: {:?}",
            c.buf
        );
        assert!(
            idle.elapsed() >= Duration::from_millis(300),
            "{:?}",
            idle.elapsed()
        );
    }
);

e2e_drivers!(
    client_gone_mid_body_never_returns_the_backend_connection_to_the_pool,
    |relay| async move {
        let (p, backend) = raw(relay, &[]).await;
        let (c, mut b, mut head) = exchange(
            &p,
            &backend,
            &request("PUT", "/", &["Content-Length: 1000"], b""),
        )
        .await;
        let mut c = c;
        c.send(&[b'x'; 400]).await;
        b.body(&mut head, Framing::Length(400)).await;
        drop(c);
        assert!(
            b.closed_within(STEP).await,
            "the backend connection must close"
        );
        let (mut fresh, mut b2, head) = exchange(&p, &backend, &get("/after", &[])).await;
        assert_eq!(head.target(), "/after");
        b2.send(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .await;
        assert_eq!(fresh.answer("GET").await.status, 200);
        assert_eq!(backend.accepted(), 2);
    }
);

e2e_drivers!(
    chunked_request_breaking_midway_reaches_the_backend_cut_off,
    |relay| async move {
        let (p, backend) = raw(relay, &[]).await;
        let (mut c, mut b, _) = exchange(
        &p,
        &backend,
        b"POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    )
    .await;
        // The good chunk is passed on as it comes.
        assert_eq!(b.exactly(10).await, b"5\r\nhello\r\n");
        c.send(b"5\r\nworld\r\nGET /smuggled HTTP/1.1\r\n").await;
        let a = c.answer("POST").await;
        assert_eq!(a.status, 400);
        assert!(
            b.closed_within(STEP).await,
            "the backend's body never ends; its connection closes"
        );
        assert!(
            !String::from_utf8_lossy(&b.buf).contains("smuggled"),
            "{:?}",
            String::from_utf8_lossy(&b.buf)
        );
    }
);

e2e_drivers!(websocket_only_route_answers_426, |relay| async move {
    let (p, backend) = raw(relay, &[("http", "false")]).await;
    let mut c = Peer::connect(p.addr()).await;
    c.send(&get("/", &[])).await;
    let a = c.answer("GET").await;
    assert_eq!(a.status, 426);
    assert!(c.closed_within(STEP).await);
    assert_eq!(backend.accepted(), 0);
});
