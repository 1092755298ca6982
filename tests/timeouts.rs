//! Handshake, connect, idle and half-close timeouts, with short settings.

#[macro_use]
mod support;

use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A proxy with `timeouts` set and one route `/t` to a manual raw backend.
async fn proxy_with(relay: Relay, timeouts: &[(&'static str, &str)]) -> (Proxy, RawBackend) {
    let backend = RawBackend::start().await;
    let mut b = Proxy::builder(relay).route(route("/t", &[backend.addr]));
    for (k, v) in timeouts {
        b = b.timeout(k, v);
    }
    (b.start().await, backend)
}

/// Closed from the far side within [`STEP`]; returns how long that took.
async fn both_closed(client: &mut TcpStream, server: &mut TcpStream) -> (Duration, Duration) {
    tokio::join!(
        wait_closed(client, "client side"),
        wait_closed(server, "backend side")
    )
}

/// Writes `tick` on `from` every `every` until `total` has passed; `to` must receive each one.
async fn trickle(from: &mut TcpStream, to: &mut TcpStream, every: Duration, total: Duration) {
    let start = Instant::now();
    while start.elapsed() < total {
        pump(from, to, b"tick", "trickle").await;
        tokio::time::sleep(every).await;
    }
}

e2e_tls_backend!(idle_timeout_closes_both_sides, |relay| async move {
    let (proxy, backend) = proxy_with(relay, &[("idle", "500ms")]).await;
    let (mut client, mut server) = raw_tunnel(&proxy, &backend, "/t").await;
    pump(&mut client, &mut server, b"one", "client -> backend").await;
    let (c, s) = both_closed(&mut client, &mut server).await;
    assert!(
        c >= Duration::from_millis(300),
        "client side closed after only {c:?} of silence"
    );
    assert!(
        s >= Duration::from_millis(300),
        "backend side closed after only {s:?} of silence"
    );
});

/// One side (the client when `client_talks`) sends every 200 ms for 1.5 s, three idle timeouts:
/// the tunnel lives on, carries the other side's bytes, and then closes on the idle timeout.
async fn idle_timeout_reset_by_traffic(relay: Relay, client_talks: bool) {
    let (proxy, backend) = proxy_with(relay, &[("idle", "500ms")]).await;
    let (mut client, mut server) = raw_tunnel(&proxy, &backend, "/t").await;
    let ((talker, t), (listener, l)) = if client_talks {
        ((&mut client, "client"), (&mut server, "backend"))
    } else {
        ((&mut server, "backend"), (&mut client, "client"))
    };
    trickle(
        talker,
        listener,
        Duration::from_millis(200),
        Duration::from_millis(1500),
    )
    .await;
    pump(
        listener,
        talker,
        b"still here",
        &format!("{l} -> {t} after 1.5 s"),
    )
    .await;
    both_closed(&mut client, &mut server).await;
}

e2e_tls!(idle_timeout_reset_by_client_traffic, |relay| {
    idle_timeout_reset_by_traffic(relay, true)
});

e2e!(idle_timeout_reset_by_backend_traffic, |relay| {
    idle_timeout_reset_by_traffic(relay, false)
});

/// A timeout that must not end a quiet tunnel: the setting, how long the tunnel stays silent,
/// and what the client side is.
type Quiet = ((&'static str, &'static str), u64, &'static str);

/// A tunnel on a proxy with one timeout set stays open and silent for a while, then carries
/// bytes both ways.
async fn stays_open(relay: Relay, (timeout, quiet_ms, what): Quiet) {
    let (proxy, backend) = proxy_with(relay, &[timeout]).await;
    let (mut client, mut server) = raw_tunnel(&proxy, &backend, "/t").await;
    assert_silent(&mut client, Duration::from_millis(quiet_ms), what).await;
    pump_both_ways(&mut client, &mut server, b"alive", b"alive").await;
}

const IDLE_ZERO: Quiet = (("idle", "0"), 800, "client side of an idle tunnel");
e2e!(idle_zero_means_never, |relay| stays_open(relay, IDLE_ZERO));

/// After `fin_side` shuts down its write half, the other side keeps sending every 100 ms; the
/// proxy must end the whole connection about `half_close` later.
async fn half_close_expires(relay: Relay, client_fin: bool) {
    let (proxy, backend) = proxy_with(relay, &[("half_close", "500ms")]).await;
    let (client, server) = raw_tunnel(&proxy, &backend, "/t").await;
    let (mut fin, mut talker) = if client_fin {
        (client, server)
    } else {
        (server, client)
    };
    fin.shutdown().await.expect("shutdown(Write)");
    let (rest, _) = read_to_end(&mut talker, STEP).await;
    assert!(rest.is_empty(), "unexpected bytes before the FIN");
    let fin_at = Instant::now();

    let writer = tokio::spawn(async move {
        // Ends when the proxy has closed this socket (EPIPE / reset).
        let start = Instant::now();
        while start.elapsed() < STEP {
            if talker.write_all(b"tick").await.is_err() {
                return Some(start.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    });
    let mut got = 0;
    let mut chunk = [0u8; 1024];
    loop {
        match tokio::time::timeout(STEP, fin.read(&mut chunk)).await {
            Err(_) => panic!("half-closed connection still open {STEP:?} after the FIN"),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got += n,
        }
    }
    let closed_after = fin_at.elapsed();
    assert!(
        got > 0,
        "the open direction carried nothing before the timeout"
    );
    assert!(
        closed_after >= Duration::from_millis(300),
        "closed {closed_after:?} after the FIN"
    );
    let writer_end = writer.await.expect("writer task");
    assert!(writer_end.is_some(), "the talking side was never closed");
}

e2e_tls_backend!(half_close_timeout_client_fin, |relay| async move {
    half_close_expires(relay, true).await
});

e2e_tls_backend!(half_close_timeout_backend_fin, |relay| async move {
    half_close_expires(relay, false).await
});

e2e!(half_close_zero_means_never, |relay| async move {
    let (proxy, backend) = proxy_with(relay, &[("half_close", "0")]).await;
    let (mut client, mut server) = raw_tunnel(&proxy, &backend, "/t").await;
    client.shutdown().await.expect("client shutdown(Write)");
    let (rest, _) = read_to_end(&mut server, STEP).await;
    assert!(rest.is_empty());
    tokio::time::sleep(Duration::from_millis(800)).await;
    pump(
        &mut server,
        &mut client,
        b"late",
        "backend -> half-closed client after 800 ms",
    )
    .await;
});

e2e!(handshake_timeout_counts_whole_head, |relay| async move {
    // A byte every 50 ms never lets the head complete within 500 ms: 408, not a reset timer.
    let (proxy, backend) = proxy_with(relay, &[("handshake", "500ms")]).await;
    let mut client = connect(&proxy).await;
    let request = upgrade_request("/t", &[]);
    let start = Instant::now();
    let mut answer = Vec::new();
    for &b in &request {
        if client.write_all(&[b]).await.is_err() {
            break;
        }
        let mut chunk = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(50), client.read(&mut chunk)).await {
            Err(_) => {}
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                answer.extend_from_slice(&chunk[..n]);
                break;
            }
        }
        assert!(start.elapsed() < STEP, "no answer while trickling the head");
    }
    let (more, _) = read_to_end(&mut client, STEP).await;
    answer.extend_from_slice(&more);
    let took = start.elapsed();
    assert_status(
        &answer,
        408,
        "a head trickled for longer than the handshake timeout",
    );
    assert!(
        took >= Duration::from_millis(400),
        "408 after only {took:?}"
    );
    assert_eq!(
        backend.accepted(),
        0,
        "backend contacted before the head was complete"
    );
});

const HANDSHAKE: Quiet = (("handshake", "500ms"), 900, "client side of a fresh tunnel");
e2e!(handshake_timeout_not_applied_to_tunnel, |relay| {
    stays_open(relay, HANDSHAKE)
});

e2e!(connect_timeout_is_504, |relay| async move {
    let blackhole = Blackhole::start().await;
    let proxy = Proxy::builder(relay)
        .timeout("connect", "300ms")
        .route(route("/", &[blackhole.addr]))
        .start()
        .await;
    let start = Instant::now();
    let (resp, _) = send_and_read_all(&proxy, &upgrade_request("/x", &[])).await;
    let took = start.elapsed();
    assert_status(&resp, 504, "a backend whose connect times out");
    assert!(
        took >= Duration::from_millis(250),
        "504 after only {took:?}"
    );
});

/// The `ss -tnoH` line of the established TCP socket whose `dir` port (`sport` or `dport`) is
/// `port`, as this machine's kernel reports it (with its timers: `timer:(keepalive,...)`).
fn ss_line(dir: &str, port: u16) -> String {
    let out = std::process::Command::new("ss")
        .args([
            "-tnoH",
            "state",
            "established",
            dir,
            "=",
            &format!(":{port}"),
        ])
        .output()
        .expect("run ss (iproute2)");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Whether the established socket whose `dir` port is `port` has keepalive on: `ss` shows a
/// socket's keepalive timer when no other timer (a retransmission after a write) is pending,
/// so it is sampled until the socket shows either the keepalive timer or no timer at all.
fn keepalive_on(dir: &str, port: u16) -> bool {
    let deadline = Instant::now() + STEP;
    loop {
        let line = ss_line(dir, port);
        if line.contains("timer:(keepalive,") {
            return true;
        }
        if !line.is_empty() && !line.contains("timer:(") {
            return false;
        }
        assert!(
            Instant::now() < deadline,
            "ss never showed the {dir} :{port} socket settled: {line:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// [`keepalive_on`] for the proxy's two sockets of the tunnel between `client` and `server`:
/// its client socket is the one whose peer port is our client's, its backend socket the one
/// whose own port is the backend's peer port.
fn keepalive_of(client: &TcpStream, server: &TcpStream) -> (bool, bool) {
    let client_port = client.local_addr().expect("client addr").port();
    let backend_side = server.peer_addr().expect("proxy's backend socket").port();
    tokio::task::block_in_place(|| {
        (
            keepalive_on("dport", client_port),
            keepalive_on("sport", backend_side),
        )
    })
}

// `[keepalive]` reaches both sockets of a tunnel: the client's, which inherits it from the
// listener (the proxy sets it there once rather than on every accepted socket), and the
// backend's; a reload that switches keepalive off applies to the tunnels that open after it.
e2e_drivers!(
    keepalive_reaches_both_sockets_and_follows_a_reload,
    |relay| async move {
        let backend = RawBackend::start().await;
        let builder = |idle: &str| {
            Proxy::builder(relay)
                .route(route("/t", &[backend.addr]))
                .set("keepalive", "idle", idle)
                .set("keepalive", "interval", "\"3s\"")
                .set("keepalive", "count", "4")
        };
        let proxy = builder("\"7s\"").start().await;
        let (mut client, mut server) = raw_tunnel(&proxy, &backend, "/t").await;
        pump(&mut client, &mut server, b"one", "client -> backend").await;
        let (on_client, on_backend) = keepalive_of(&client, &server);
        assert!(on_client, "no keepalive on the proxy's client socket");
        assert!(on_backend, "no keepalive on the proxy's backend socket");

        // Keepalive off by reload: a new tunnel's sockets carry none; the old tunnel flows on.
        proxy.write_config(&builder("\"0\"").toml());
        proxy.signal(nix::sys::signal::Signal::SIGHUP);
        let line = tokio::task::block_in_place(|| {
            proxy.expect_line(&["reloaded", "reload failed"], Duration::from_secs(5))
        });
        assert_eq!(line, "reloaded");
        let (mut client2, mut server2) = raw_tunnel(&proxy, &backend, "/t").await;
        pump(&mut client2, &mut server2, b"two", "client -> backend").await;
        let (on_client, on_backend) = keepalive_of(&client2, &server2);
        assert!(
            !on_client,
            "keepalive still on a client socket accepted after it was switched off"
        );
        assert!(
            !on_backend,
            "keepalive still on a backend socket opened after it was switched off"
        );
        pump(&mut server, &mut client, b"still", "backend -> client").await;
    }
);
