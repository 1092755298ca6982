//! What the proxy does with the backend's answer to the upgrade, and how it picks backends.

#[macro_use]
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

async fn one_backend(relay: Relay) -> (Proxy, RawBackend) {
    raw_proxy(relay, "/b").await
}

/// Client sends an upgrade to `/b`; returns (client, backend stream, request head the backend got).
async fn upgrade_to(proxy: &Proxy, backend: &RawBackend) -> (TcpStream, TcpStream, Vec<u8>) {
    let client = send(proxy, &upgrade_request("/b", &[])).await;
    let (server, head, _) = backend.next_head().await;
    (client, server, head)
}

/// Client sends an upgrade; the backend reads it and writes `answer` in one write.
/// Returns (client, backend stream, request head the backend got).
async fn answer_with(
    proxy: &Proxy,
    backend: &RawBackend,
    answer: &[u8],
) -> (TcpStream, TcpStream, Vec<u8>) {
    let client = send(proxy, &upgrade_request("/b", &[])).await;
    let (mut server, head) = backend.next_head_alone().await;
    server
        .write_all(answer)
        .await
        .expect("backend writes its answer");
    (client, server, head)
}

e2e!(non_101_relayed_byte_exact_then_closed, |relay| async move {
    let (proxy, backend) = one_backend(relay).await;
    let answer = b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nX-Reason: not you\r\n\
        Content-Length: 5\r\n\r\nnope\n";
    let (mut client, mut server, _) = answer_with(&proxy, &backend, answer).await;
    server
        .shutdown()
        .await
        .expect("backend FIN after the answer");
    let got = read_exact_n(&mut client, answer.len(), "client reads the 403").await;
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(answer)
    );
    // Anything the client sends now must not reach the backend: there is no tunnel.
    let _ = client.write_all(&client_frame(0x1, b"sneaky")).await;
    assert_closed_without_bytes(&mut client, "client bytes after the 403").await;
    assert_closed_without_bytes(&mut server, "backend bytes after its 403").await;
});

e2e!(
    non_101_closed_without_waiting_for_backend_eof,
    |relay| async move {
        // The backend keeps its socket open: the proxy must still end the exchange itself.
        let (proxy, backend) = one_backend(relay).await;
        let answer = b"HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\nContent-Length: 0\r\n\r\n";
        let (mut client, mut server, _) = answer_with(&proxy, &backend, answer).await;
        let (got, _) = read_to_end(&mut client, STEP).await;
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(answer)
        );
        assert_closed_without_bytes(&mut server, "backend bytes after its 426").await;
    }
);

e2e!(incomplete_101_is_502, |relay| async move {
    let (proxy, backend) = one_backend(relay).await;
    let good = |head: &[u8]| String::from_utf8(response_101(head)).expect("ascii");
    type Variant = (&'static str, fn(String) -> String);
    let variants: [Variant; 4] = [
        ("no Upgrade", |r| r.replace("Upgrade: websocket\r\n", "")),
        ("no Connection", |r| {
            r.replace("Connection: Upgrade\r\n", "")
        }),
        ("no Sec-WebSocket-Accept", |r| {
            let start = r.find("Sec-WebSocket-Accept").expect("accept line");
            let end = start + r[start..].find("\r\n").expect("eol") + 2;
            format!("{}{}", &r[..start], &r[end..])
        }),
        ("Upgrade: h2c", |r| {
            r.replace("Upgrade: websocket", "Upgrade: h2c")
        }),
    ];
    for (name, spoil) in variants {
        let (mut client, mut server, head) = upgrade_to(&proxy, &backend).await;
        server
            .write_all(spoil(good(&head)).as_bytes())
            .await
            .expect("backend answers");
        let (resp, _) = read_to_end(&mut client, STEP).await;
        assert_status(&resp, 502, name);
        let _ = client.write_all(&client_frame(0x1, b"sneaky")).await;
        let what = format!("{name}: backend bytes after its bad 101");
        assert_closed_without_bytes(&mut server, &what).await;
    }
});

e2e!(oversized_response_head_is_502, |relay| async move {
    let (proxy, backend) =
        raw_proxy_with(Proxy::builder(relay).limit("max_head_bytes", 16384), "/b").await;
    let (mut client, mut server, head) = upgrade_to(&proxy, &backend).await;
    let mut answer = String::from_utf8(response_101(&head)).expect("ascii");
    answer.truncate(answer.len() - 2);
    for i in 0..40 {
        answer.push_str(&format!("X-Pad-{i}: {}\r\n", "p".repeat(500)));
    }
    answer.push_str("\r\n");
    // The proxy may close while we still write: ignore errors.
    let _ = server.write_all(answer.as_bytes()).await;
    let (resp, _) = read_to_end(&mut client, STEP).await;
    assert_status(&resp, 502, "a 101 larger than max_head_bytes");
});

e2e!(backend_closes_mid_head_is_502, |relay| async move {
    let (proxy, backend) = one_backend(relay).await;
    let (mut client, server, _) = answer_with(
        &proxy,
        &backend,
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n",
    )
    .await;
    drop(server);
    let (resp, _) = read_to_end(&mut client, STEP).await;
    assert_status(&resp, 502, "a backend that closed mid-head");
});

e2e!(backend_reset_before_answer_is_502, |relay| async move {
    let (proxy, backend) = one_backend(relay).await;
    let (mut client, server, _) = upgrade_to(&proxy, &backend).await;
    server.set_zero_linger().expect("SO_LINGER 0");
    drop(server);
    let (resp, _) = read_to_end(&mut client, STEP).await;
    assert_status(&resp, 502, "a backend that reset before answering");
});

e2e!(pipelined_first_frame_held_until_101, |relay| async move {
    let (proxy, backend) = one_backend(relay).await;
    let frame = client_frame(0x1, b"early bird");
    let mut first_write = upgrade_request("/b", &[]);
    first_write.extend_from_slice(&frame);
    let mut client = send(&proxy, &first_write).await;

    let (mut server, head) = backend.next_head_alone().await;
    answer_101_after_silence(&mut server, &head, Duration::from_millis(150)).await;
    let got = read_exact_n(&mut server, frame.len(), "backend reads the held frame").await;
    assert_eq!(got, frame, "held frame differs");

    let (resp, rest) = read_head(&mut client).await;
    assert_status(&resp, 101, "client");
    assert!(rest.is_empty());
    let reply = server_frame(0x1, b"welcome");
    server
        .write_all(&reply)
        .await
        .expect("backend writes a frame");
    assert_eq!(
        read_exact_n(&mut client, reply.len(), "client reads the reply").await,
        reply
    );
});

e2e!(
    backend_101_and_first_frame_in_one_write,
    |relay| async move {
        let (proxy, backend) = one_backend(relay).await;
        let (mut client, mut server, head) = upgrade_to(&proxy, &backend).await;
        let frame = server_frame(0x2, &pattern(300, 4));
        let mut answer = response_101(&head);
        answer.extend_from_slice(&frame);
        server
            .write_all(&answer)
            .await
            .expect("backend writes 101 + frame at once");
        let got = read_exact_n(&mut client, answer.len(), "client reads 101 + frame").await;
        assert_eq!(
            got, answer,
            "the 101 and the frame should reach the client unchanged"
        );
        // And the tunnel is up the other way.
        let up = client_frame(0x1, b"thanks");
        client.write_all(&up).await.expect("client writes");
        assert_eq!(
            read_exact_n(&mut server, up.len(), "backend reads").await,
            up
        );
    }
);

e2e!(backend_101_through_tungstenite_client, |relay| async move {
    // Same as above, seen by a real WebSocket client: the first message is not lost.
    let (proxy, backend) = one_backend(relay).await;
    let task = tokio::spawn(async move {
        let (mut server, head, _) = backend.next_head().await;
        let mut answer = response_101(&head);
        answer.extend_from_slice(&server_frame(0x1, b"first"));
        server
            .write_all(&answer)
            .await
            .expect("backend writes 101 + frame");
        server
    });
    let mut ws = ws_connect(&proxy, "/b").await;
    match ws_recv(&mut ws).await {
        tokio_tungstenite::tungstenite::Message::Text(t) => assert_eq!(t.as_str(), "first"),
        other => panic!("expected the first frame, got {other:?}"),
    }
    let _server = task.await.expect("backend task");
});

// ---------------------------------------------------------------------------------------------
// Backend choice
// ---------------------------------------------------------------------------------------------

/// Four upgrades to `path` through a proxy with route `/` over `backends`, each opening a tunnel
/// to an echoing backend.
async fn four_tunnels(relay: Relay, backends: &[SocketAddr], path: &str) {
    let proxy = Proxy::builder(relay)
        .route(route("/", backends))
        .start()
        .await;
    for _ in 0..4 {
        let mut client = open_tunnel(&proxy, path).await;
        let frame = client_frame(0x1, b"rr");
        client.write_all(&frame).await.expect("client writes");
        assert_eq!(read_exact_n(&mut client, frame.len(), "echo").await, frame);
    }
}

e2e_tls_backend!(round_robin, |relay| async move {
    let a = RawBackend::start_with(Behavior::Accept101Echo).await;
    let b = RawBackend::start_with(Behavior::Accept101Echo).await;
    // Two workers (the default): the cursor is per route, shared by the workers, so the split
    // stays even although SO_REUSEPORT spreads the clients over the workers.
    four_tunnels(relay, &[a.addr, b.addr], "/rr").await;
    assert_eq!(
        (a.accepted(), b.accepted()),
        (2, 2),
        "4 connections over 2 backends"
    );
});

e2e_tls_backend!(refused_backend_skipped, |relay| async move {
    let refused = RefusedPort::new();
    let good = RawBackend::start_with(Behavior::Accept101Echo).await;
    four_tunnels(relay, &[refused.addr, good.addr], "/x").await;
    assert_eq!(good.accepted(), 4);
});

/// An upgrade on a route whose every backend fails (`what`: how) is answered 502.
async fn every_backend_failing_is_502(relay: Relay, backends: &[SocketAddr], what: &str) {
    let proxy = Proxy::builder(relay)
        .route(route("/", backends))
        .start()
        .await;
    let (resp, _) = send_and_read_all(&proxy, &upgrade_request("/x", &[])).await;
    assert_status(&resp, 502, what);
}

e2e!(every_backend_refused_is_502, |relay| async move {
    let (r1, r2) = (RefusedPort::new(), RefusedPort::new());
    every_backend_failing_is_502(relay, &[r1.addr, r2.addr], "every backend refused").await;
});

e2e!(
    every_backend_resetting_is_502_each_tried_at_most_once,
    |relay| async move {
        let r1 = RawBackend::start_with(Behavior::Reset).await;
        let r2 = RawBackend::start_with(Behavior::Reset).await;
        every_backend_failing_is_502(relay, &[r1.addr, r2.addr], "every backend reset").await;
        let (n1, n2) = (r1.accepted(), r2.accepted());
        assert!(
            n1 <= 1 && n2 <= 1 && n1 + n2 >= 1,
            "connections per backend: {n1}, {n2}"
        );
    }
);

// ---------------------------------------------------------------------------------------------
// Partial and bulky answers, early goodbyes
// ---------------------------------------------------------------------------------------------

e2e!(backend_101_in_pieces, |relay| async move {
    let (proxy, backend) = one_backend(relay).await;
    let (mut client, mut server, head) = upgrade_to(&proxy, &backend).await;
    let answer = response_101(&head);
    for piece in answer.chunks(7) {
        server
            .write_all(piece)
            .await
            .expect("backend writes a piece");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (resp, rest) = read_head(&mut client).await;
    assert_eq!(resp, answer, "the 101 should arrive unchanged");
    assert!(rest.is_empty());
    let (up, down) = (client_frame(0x1, b"up"), server_frame(0x1, b"down"));
    pump_both_ways(&mut client, &mut server, &up, &down).await;
});

e2e!(pipelined_bulk_held_until_101, |relay| async move {
    // More pipelined bytes than any head buffer: all held (or left in the kernel) until the 101.
    let (proxy, backend) = one_backend(relay).await;
    let frame = client_frame(0x2, &pattern(256 << 10, 8));
    let mut first_write = upgrade_request("/b", &[]);
    first_write.extend_from_slice(&frame);
    let client = connect(&proxy).await;
    let (mut client_r, client_w) = client.into_split();
    let writer = write_in_background(client_w, first_write, "client writes head + 256 KiB");
    let (mut server, head) = backend.next_head_alone().await;
    answer_101_after_silence(&mut server, &head, Duration::from_millis(150)).await;
    let got = read_exact_n(&mut server, frame.len(), "backend reads the held bytes").await;
    assert!(got == frame, "held bytes differ");
    let (resp, _) = read_head(&mut client_r).await;
    assert_status(&resp, 101, "client");
    let _client_w = writer.await.expect("writer task");
});

e2e!(backend_101_with_bulk_data, |relay| async move {
    let (proxy, backend) = one_backend(relay).await;
    let (mut client, server, head) = upgrade_to(&proxy, &backend).await;
    let mut answer = response_101(&head);
    answer.extend_from_slice(&server_frame(0x2, &pattern(1 << 20, 3)));
    let expected = answer.clone();
    let writer = write_in_background(server, answer, "backend writes 101 + 1 MiB");
    let got = read_exact_n(&mut client, expected.len(), "client reads 101 + 1 MiB").await;
    assert!(got == expected, "101 + 1 MiB arrived different");
    let _server = writer.await.expect("writer task");
});

e2e!(client_reset_before_101_closes_backend, |relay| async move {
    let (proxy, backend) = one_backend(relay).await;
    let (client, mut server, _) = upgrade_to(&proxy, &backend).await;
    // A reset, not a FIN: a FIN could be a half-close by a client still waiting for the 101.
    client.set_zero_linger().expect("SO_LINGER 0");
    drop(client);
    wait_closed(&mut server, "backend after the client reset before the 101").await;
    // And the proxy still works.
    let (mut client, mut server, head) = upgrade_to(&proxy, &backend).await;
    server
        .write_all(&response_101(&head))
        .await
        .expect("backend writes 101");
    let (resp, _) = read_head(&mut client).await;
    assert_status(&resp, 101, "the next client");
});
