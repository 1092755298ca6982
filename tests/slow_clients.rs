//! Clients that are slow on purpose: a slowloris dribbling its head, a flood of half-open
//! connections, and many tunnels whose clients never read. Each must cost the proxy a bounded
//! amount (time, descriptors, memory), give every descriptor back, and leave it serving others.
//!
//! Blocking std sockets and threads, as in tests/limits.rs; every read has a timeout so nothing
//! can hang. The whole file runs in well under 20 s (about 6 s). The last test is the regression
//! test of a bug tools/soak found (a leftover epoll event on a reused slab key).

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

#[macro_use]
mod support;
use support::blocking::{
    eventually, open_tunnel, roundtrip, send, serve_each, try_read_head, until_stalled,
};
use support::{response_101, route, upgrade_request, Driver, Proxy, ProxyBuilder, Relay, STEP};

/// What the backend saw, across all its connections.
#[derive(Default)]
struct Seen {
    accepted: AtomicUsize,
    bytes_in: AtomicU64,
    written: AtomicU64,
    /// Streams written to the end (a stalled reader should keep this at 0).
    finished: AtomicUsize,
}

#[derive(Clone, Copy)]
enum Mode {
    /// Answer 101, then echo bytes.
    Echo,
    /// Answer 101, then write this many bytes without reading.
    Stream(u64),
}

/// A raw tunnel backend, one thread per connection, counting what it sees.
fn backend(mode: Mode) -> (SocketAddr, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let counts = seen.clone();
    let addr = serve_each(move |s| {
        counts.accepted.fetch_add(1, Ordering::SeqCst);
        serve(s, mode, &counts);
    });
    (addr, seen)
}

fn serve(mut s: TcpStream, mode: Mode, seen: &Seen) {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).unwrap_or(0) == 0 {
            return;
        }
        seen.bytes_in.fetch_add(1, Ordering::SeqCst);
        head.push(b[0]);
    }
    if s.write_all(&response_101(&head)).is_err() {
        return;
    }
    match mode {
        Mode::Echo => {
            let mut buf = [0u8; 4096];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        seen.bytes_in.fetch_add(n as u64, Ordering::SeqCst);
                        if s.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        }
        Mode::Stream(total) => {
            let chunk: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 251) as u8).collect();
            let mut left = total;
            while left > 0 {
                let n = (chunk.len() as u64).min(left) as usize;
                match s.write(&chunk[..n]) {
                    Ok(0) | Err(_) => return,
                    Ok(w) => {
                        left -= w as u64;
                        seen.written.fetch_add(w as u64, Ordering::SeqCst);
                    }
                }
            }
            seen.finished.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Two workers under `d`, an admin listener, one route to `backend`.
fn proxy_to(backend: SocketAddr, d: Driver) -> ProxyBuilder {
    ProxyBuilder::default()
        .driver(d)
        .admin()
        .route(route("/", &[backend]))
}

/// The proxy's descriptors, not counting the empty pipes its pools keep for reuse (two each).
fn fds_without_pooled_pipes(p: &Proxy) -> usize {
    // Scrape first: the admin connection is closed by the time the answer has been read.
    let pooled = p.metric("wsplice_pipes_pooled") as usize;
    p.fd_count().saturating_sub(2 * pooled)
}

/// Reads until EOF or an error (a reset counts as closed); the bytes read, or `None` if the
/// socket was still open at `deadline`.
fn read_until_closed(s: &mut TcpStream, deadline: Instant) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        s.set_read_timeout(Some(left)).expect("timeout");
        match s.read(&mut buf) {
            Ok(0) => return Some(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return None
            }
            Err(_) => return Some(got),
        }
    }
}

drivers!(
    slowloris_head_gets_408_at_the_handshake_timeout,
    super::slowloris_head_gets_408_at_the_handshake_timeout
);
fn slowloris_head_gets_408_at_the_handshake_timeout(d: Driver) {
    let (b, seen) = backend(Mode::Echo);
    let p = proxy_to(b, d).timeout("handshake", "1s").blocking_start();
    let mut s = TcpStream::connect(p.addr()).expect("connect");
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let mut w = s.try_clone().expect("clone");
        let stop = stop.clone();
        thread::spawn(move || {
            // A valid head, one byte every 200 ms: complete only after ~30 s.
            for byte in upgrade_request("/ws", &[]) {
                if stop.load(Ordering::SeqCst) || w.write_all(&[byte]).is_err() {
                    return;
                }
                thread::sleep(Duration::from_millis(200));
            }
        })
    };
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let head = try_read_head(&mut s);
    let answered = t0.elapsed();
    stop.store(true, Ordering::SeqCst);
    let head = head.expect("an answer within 3 s");
    assert!(
        head.starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    assert!(
        answered >= Duration::from_millis(900),
        "answered after {answered:?}, before the 1 s handshake timeout"
    );
    assert!(
        read_until_closed(&mut s, t0 + Duration::from_secs(3)).is_some(),
        "still open 3 s after the first byte"
    );
    eprintln!(
        "slowloris: 408 after {answered:?}, closed after {:?}",
        t0.elapsed()
    );
    writer.join().expect("writer");
    assert_eq!(
        seen.accepted.load(Ordering::SeqCst),
        0,
        "the backend was contacted"
    );
    assert_eq!(seen.bytes_in.load(Ordering::SeqCst), 0);
    // Counters are published once per loop iteration: the FIN may reach the client first.
    eventually("the 408 to be counted", STEP, || {
        p.metric("wsplice_handshake_rejects_total{status=\"408\"}") == 1
    });

    let mut t = open_tunnel(p.addr(), "/ws");
    roundtrip(&mut t, b"still serving after a slowloris");
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 1);
}

drivers!(
    half_open_flood_is_closed_and_every_fd_comes_back,
    super::half_open_flood_is_closed_and_every_fd_comes_back
);
fn half_open_flood_is_closed_and_every_fd_comes_back(d: Driver) {
    const FLOOD: usize = 500;
    let (b, _) = backend(Mode::Echo);
    let p = proxy_to(b, d).timeout("handshake", "1s").blocking_start();
    let mut before = open_tunnel(p.addr(), "/ws");
    roundtrip(&mut before, b"before the flood");
    let baseline = fds_without_pooled_pipes(&p);

    let head = upgrade_request("/ws", &[]);
    let half = &head[..head.len() / 2];
    let t0 = Instant::now();
    let mut flood: Vec<TcpStream> = (0..FLOOD)
        .map(|i| {
            let mut s = TcpStream::connect(p.addr()).expect("flood connect");
            if i % 2 == 1 {
                s.write_all(half).expect("half a head");
            }
            s
        })
        .collect();
    let opened = t0.elapsed();

    // During the flood (all of it held by the proxy): tunnels old and new still work.
    let mut during = open_tunnel(p.addr(), "/ws");
    roundtrip(&mut during, b"during the flood");
    roundtrip(&mut before, b"old tunnel during the flood");
    let held = p.fd_count();
    assert!(
        t0.elapsed() < Duration::from_millis(900),
        "the flood took {:?} to open; the check above was not during it",
        t0.elapsed()
    );
    // The silent half waits in the kernel (TCP_DEFER_ACCEPT) until its deferral runs out; the
    // half that sent bytes is accepted at once.
    assert!(
        held >= baseline + (FLOOD / 2) * 4 / 5,
        "the proxy held only {held} fds (baseline {baseline}) during a flood of {FLOOD}, {} of them speaking",
        FLOOD / 2
    );

    // The silent half: accepted after the 1 s deferral, then the 1 s head timeout.
    let deadline = t0 + opened + Duration::from_secs(8);
    let mut answers_408 = 0;
    for (i, s) in flood.iter_mut().enumerate() {
        let got = read_until_closed(s, deadline)
            .unwrap_or_else(|| panic!("flood socket {i} still open after 8 s"));
        if i == 0 {
            let first = t0.elapsed();
            assert!(
                first >= Duration::from_millis(900),
                "the first flood socket closed after {first:?}, before the handshake timeout"
            );
        }
        if got.is_empty() {
            continue;
        }
        assert!(
            got.starts_with(b"HTTP/1.1 408"),
            "flood socket {i}: {}",
            String::from_utf8_lossy(&got)
        );
        answers_408 += 1;
    }
    eprintln!(
        "flood of {FLOOD}: opened in {opened:?}, all closed after {:?}, {answers_408} answered 408, {held} fds held at the peak (baseline {baseline})",
        t0.elapsed()
    );
    drop(flood);
    drop(during);
    eventually("the proxy's fds back to baseline", STEP, || {
        fds_without_pooled_pipes(&p) == baseline
    });
    roundtrip(&mut before, b"old tunnel after the flood");
    let mut after = open_tunnel(p.addr(), "/ws");
    roundtrip(&mut after, b"new tunnel after the flood");
}

/// True when the kernel lists the proxy's side of the connection from `client` to `proxy` as
/// SYN_RECV: a request not yet accepted. `ss` (iproute2) filters in the kernel; reading all of
/// /proc/net/tcp takes seconds on a machine with many sockets.
fn server_side_syn_recv(proxy: SocketAddr, client: SocketAddr) -> bool {
    let filter = format!(
        "( sport = :{} and dport = :{} )",
        proxy.port(),
        client.port()
    );
    let out = std::process::Command::new("ss")
        .args(["-Htn", "state", "syn-recv", &filter])
        .output()
        .expect("run ss (iproute2)");
    !String::from_utf8_lossy(&out.stdout).trim().is_empty()
}

drivers!(
    a_silent_client_waits_in_the_kernel_and_still_gets_the_head_timeout,
    super::a_silent_client_waits_in_the_kernel_and_still_gets_the_head_timeout
);
/// TCP_DEFER_ACCEPT on the listeners: a WebSocket client always speaks first, so a connection
/// that has sent nothing stays a request in the kernel (SYN_RECV on the proxy's side), costing no
/// accept, while a client that sends its head is served at once. When the deferral runs out the
/// silent connection is accepted and the head timeout closes it as before.
fn a_silent_client_waits_in_the_kernel_and_still_gets_the_head_timeout(d: Driver) {
    let (b, seen) = backend(Mode::Echo);
    let p = proxy_to(b, d).timeout("handshake", "1s").blocking_start();
    let t0 = Instant::now();
    let mut silent = TcpStream::connect(p.addr()).expect("connect");
    let pending = server_side_syn_recv(p.addr(), silent.local_addr().expect("local addr"));
    let looked = t0.elapsed();
    // The deferral is 1 s: a look later than that says nothing (a stalled test thread).
    assert!(
        pending || looked < Duration::from_millis(900),
        "inconclusive: ss ran {looked:?} after connect"
    );
    assert!(
        pending,
        "the proxy's side of a connection that sent nothing is not SYN_RECV {looked:?} after connect (no TCP_DEFER_ACCEPT?)"
    );

    // A client that speaks is served while the silent one waits.
    let mut talker = open_tunnel(p.addr(), "/ws");
    roundtrip(&mut talker, b"served while another client is silent");

    // The silent client is closed (without an answer: it sent no head) no earlier than the
    // head timeout, and well within the deferral plus that timeout plus slack.
    let got = read_until_closed(&mut silent, t0 + Duration::from_secs(15))
        .expect("the silent client still open 15 s after it connected");
    let closed = t0.elapsed();
    assert!(
        got.is_empty() || got.starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert!(
        closed >= Duration::from_millis(900),
        "the silent client was closed after {closed:?}, before the 1 s head timeout"
    );
    eprintln!(
        "defer-accept: proxy side SYN_RECV {looked:?} after connect; silent client closed after {closed:?}"
    );
    assert_eq!(
        seen.accepted.load(Ordering::SeqCst),
        1,
        "the backend saw a connection for the silent client"
    );
    eventually("both clients counted as accepted", STEP, || {
        p.metric("wsplice_connections_accepted_total") == 2
    });
    roundtrip(&mut talker, b"still serving");
    let mut after = open_tunnel(p.addr(), "/ws");
    roundtrip(&mut after, b"a new tunnel after the silent client");
}

/// 50 tunnels whose clients never read while the backend streams 64 MiB into each: the backend
/// stalls, the proxy's RSS grows < 16 MiB (per direction it holds at most one pipe, kernel
/// memory, or one 64 KiB buffer), and closing the clients gives back every descriptor.
fn fifty_clients_that_never_read(relay: Relay) {
    const CLIENTS: usize = 50;
    const EACH: u64 = 64 << 20;
    let (b, seen) = backend(Mode::Stream(EACH));
    let p = proxy_to(b, relay.driver).relay(relay).blocking_start();
    // Warm the admin thread and the allocator once, so the baseline is not the cold start.
    let warm = open_tunnel(p.addr(), "/ws");
    warm.shutdown(Shutdown::Write).expect("shutdown");
    drop(warm);
    eventually("the warm-up tunnel to close", STEP, || {
        p.metric("wsplice_connections_active") == 0
    });
    let fds_before = fds_without_pooled_pipes(&p);
    let rss_before = p.rss_bytes();
    let written_before = seen.written.load(Ordering::SeqCst);

    let clients: Vec<TcpStream> = (0..CLIENTS).map(|_| open_tunnel(p.addr(), "/ws")).collect();
    // Never read: wait until the backend's writes make no progress for 500 ms.
    let stalled = until_stalled(Duration::from_secs(10), || {
        seen.written.load(Ordering::SeqCst) - written_before
    })
    .expect("the backend's writes never stalled");
    assert_eq!(
        seen.finished.load(Ordering::SeqCst),
        0,
        "a stream of {EACH} bytes reached a client that never reads"
    );
    let rss_stalled = p.rss_bytes();
    let growth = rss_stalled.saturating_sub(rss_before);
    eprintln!(
        "{}: {CLIENTS} stalled readers: backend stalled after {} MiB in all ({} KiB per tunnel); proxy RSS {} KiB -> {} KiB (+{} KiB)",
        relay.as_str(),
        stalled >> 20,
        (stalled / CLIENTS as u64) >> 10,
        rss_before >> 10,
        rss_stalled >> 10,
        growth >> 10
    );
    assert!(
        growth < 16 << 20,
        "proxy RSS grew by {growth} bytes with {CLIENTS} stalled readers"
    );
    assert_eq!(p.metric("wsplice_connections_active"), CLIENTS as u64);

    // Unread data makes each close a reset; the proxy must drop both sides of every tunnel.
    drop(clients);
    let deadline = Instant::now() + STEP;
    loop {
        let active = p.metric("wsplice_connections_active");
        let fds = fds_without_pooled_pipes(&p);
        if active == 0 && fds == fds_before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "5 s after the clients left: {active} connections active, {fds} fds (baseline {fds_before}, {} in all, {} pipes pooled)",
            p.fd_count(),
            p.metric("wsplice_pipes_pooled")
        );
        thread::sleep(Duration::from_millis(50));
    }
}

drivers!(fifty_clients_that_never_read_stall_the_backend_auto, |d| {
    fifty_clients_that_never_read(Relay::Auto.on(d))
});
drivers!(fifty_clients_that_never_read_stall_the_backend_copy, |d| {
    fifty_clients_that_never_read(Relay::Copy.on(d))
});

drivers!(
    a_reset_tunnel_leftover_event_does_not_close_a_new_handshake,
    super::a_reset_tunnel_leftover_event_does_not_close_a_new_handshake
);

/// Regression test for a proxy bug (not a slow client): events are dispatched by `token = key * 2 +
/// side` and accepts happen in the middle of an event batch, so a connection closed earlier in
/// the batch can hand its slab key to a new connection, which then receives the old socket's
/// leftover event. A leftover EPOLLERR/EPOLLHUP from a client that reset makes the new
/// connection, mid-handshake, look reset: both its sockets are closed without an answer.
/// Fixed by keeping a closed connection's key reserved until the end of the event batch
/// (`Conn::Dead` in src/driver/epoll.rs).
fn a_reset_tunnel_leftover_event_does_not_close_a_new_handshake(d: Driver) {
    const THREADS: usize = 8;
    let (b, _) = backend(Mode::Echo);
    let p = proxy_to(b, d).blocking_start();
    let proxy = p.addr();
    let until = Instant::now() + Duration::from_secs(5);
    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            thread::spawn(move || {
                let (mut ok, mut silent) = (0u64, 0u64);
                while Instant::now() < until {
                    let mut s = send(proxy, &upgrade_request("/ws", &[]));
                    match try_read_head(&mut s) {
                        Ok(h) if h.starts_with(b"HTTP/1.1 101") => ok += 1,
                        Ok(h) => panic!("{}", String::from_utf8_lossy(&h)),
                        Err(_) => {
                            silent += 1;
                            continue;
                        }
                    }
                    // Bytes in flight both ways, then a RST: the proxy sees the backend's echo
                    // and the client's reset in one batch.
                    let _ = s.write_all(&[0u8; 2048]);
                    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                    drop(s);
                }
                (ok, silent)
            })
        })
        .collect();
    let (mut ok, mut silent) = (0, 0);
    for w in workers {
        let (o, s) = w.join().expect("worker");
        ok += o;
        silent += s;
    }
    eprintln!("{ok} upgrades answered 101, {silent} closed without an answer");
    assert_eq!(
        silent,
        0,
        "{silent} of {} upgrades were closed without an answer",
        ok + silent
    );
}
