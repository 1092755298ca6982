//! PROXY protocol in (from a trusted load balancer) and out (to backends), and
//! `trusted_proxies`, checked on the real bytes that cross the wire.

#[macro_use]
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;
use support::blocking::{echo, send, serve_each, try_read_head};
use support::{
    header_all, response_101, route, status, upgrade_request, Driver, Proxy, ProxyBuilder, STEP,
};

/// What a backend received before the tunnel: the raw PROXY header (if any) and the HTTP head.
struct Seen {
    proxy: Vec<u8>,
    head: String,
}

/// A backend that reads an optional PROXY header (v1 line or v2 binary), then the head, records
/// both, answers 101 and echoes.
fn backend(expect_proxy: Option<u8>) -> (SocketAddr, mpsc::Receiver<Seen>) {
    let (tx, rx) = mpsc::channel();
    let addr = serve_each(move |mut s| {
        s.set_read_timeout(Some(STEP)).expect("timeout");
        let mut proxy = Vec::new();
        match expect_proxy {
            Some(1) => {
                let mut b = [0u8; 1];
                while !proxy.ends_with(b"\r\n") {
                    if s.read(&mut b).unwrap_or(0) == 0 {
                        return;
                    }
                    proxy.push(b[0]);
                }
            }
            Some(2) => {
                let mut fixed = [0u8; 16];
                if s.read_exact(&mut fixed).is_err() {
                    return;
                }
                let len = u16::from_be_bytes([fixed[14], fixed[15]]) as usize;
                let mut rest = vec![0u8; len];
                if s.read_exact(&mut rest).is_err() {
                    return;
                }
                proxy.extend_from_slice(&fixed);
                proxy.extend_from_slice(&rest);
            }
            _ => {}
        }
        let Ok(head) = try_read_head(&mut s) else {
            return;
        };
        let _ = tx.send(Seen {
            proxy,
            head: String::from_utf8_lossy(&head).into_owned(),
        });
        if s.write_all(&response_101(&head)).is_ok() {
            echo(&mut s);
        }
    });
    (addr, rx)
}

fn header(head: &str, name: &str) -> Vec<String> {
    header_all(head.as_bytes(), name)
}

/// Sends `prefix` + an upgrade head (+ `extra` header lines) and returns the status code.
fn exchange(proxy: SocketAddr, prefix: &[u8], extra: &[&str]) -> (TcpStream, u16) {
    let mut req = prefix.to_vec();
    req.extend_from_slice(&upgrade_request("/ws", extra));
    let mut s = send(proxy, &req);
    let head = try_read_head(&mut s).expect("answer");
    let code = status(&head).expect("a status line");
    (s, code)
}

/// One worker and one route, `/ws` to `backend`.
fn proxy(backend: SocketAddr, d: Driver) -> ProxyBuilder {
    ProxyBuilder::default()
        .driver(d)
        .workers(1)
        .route(route("/ws", &[backend]))
}

/// PROXY headers required on the listener, from peers in `trusted` only.
fn proxy_in(b: ProxyBuilder, trusted: &str) -> ProxyBuilder {
    b.set("proxy_protocol", "listen", "[\"127.0.0.1:0\"]").set(
        "proxy_protocol",
        "trusted",
        &format!("[\"{trusted}\"]"),
    )
}

/// A proxy that expects PROXY headers from `trusted`, in front of a backend that reports what
/// it saw.
fn behind_balancer(d: Driver, trusted: &str) -> (Proxy, mpsc::Receiver<Seen>) {
    let (b, seen) = backend(None);
    (proxy_in(proxy(b, d), trusted).blocking_start(), seen)
}

drivers!(
    v1_from_a_trusted_balancer_names_the_client,
    super::v1_from_a_trusted_balancer_names_the_client
);
fn v1_from_a_trusted_balancer_names_the_client(d: Driver) {
    let (p, seen) = behind_balancer(d, "127.0.0.1/32");
    let (mut s, code) = exchange(
        p.addr(),
        b"PROXY TCP4 203.0.113.7 127.0.0.1 56324 443\r\n",
        &[],
    );
    assert_eq!(code, 101);
    let seen = seen.recv_timeout(STEP).expect("backend saw the head");
    assert_eq!(header(&seen.head, "X-Real-IP"), ["203.0.113.7"]);
    assert_eq!(header(&seen.head, "X-Forwarded-For"), ["203.0.113.7"]);
    assert!(
        !seen.head.contains("PROXY"),
        "the PROXY header is not forwarded: {}",
        seen.head
    );
    s.write_all(b"ping").expect("tunnel");
    let mut b4 = [0u8; 4];
    s.read_exact(&mut b4).expect("echo");
}

drivers!(
    v2_with_ipv6_from_a_trusted_balancer_names_the_client,
    super::v2_with_ipv6_from_a_trusted_balancer_names_the_client
);
fn v2_with_ipv6_from_a_trusted_balancer_names_the_client(d: Driver) {
    let (p, seen) = behind_balancer(d, "127.0.0.1/32");
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v2.extend_from_slice(&[0x21, 0x21, 0, 36]); // v2 PROXY, AF_INET6 STREAM, 36 bytes
    v2.extend_from_slice(
        &"2001:db8::7"
            .parse::<std::net::Ipv6Addr>()
            .expect("v6")
            .octets(),
    );
    v2.extend_from_slice(
        &"2001:db8::1"
            .parse::<std::net::Ipv6Addr>()
            .expect("v6")
            .octets(),
    );
    v2.extend_from_slice(&40000u16.to_be_bytes());
    v2.extend_from_slice(&443u16.to_be_bytes());
    let (_s, code) = exchange(p.addr(), &v2, &[]);
    assert_eq!(code, 101);
    let seen = seen.recv_timeout(STEP).expect("backend saw the head");
    assert_eq!(header(&seen.head, "X-Real-IP"), ["2001:db8::7"]);
}

drivers!(
    proxy_header_refused_from_untrusted_peers_and_required_on_its_listener,
    super::proxy_header_refused_from_untrusted_peers_and_required_on_its_listener
);
fn proxy_header_refused_from_untrusted_peers_and_required_on_its_listener(d: Driver) {
    let (b, seen) = backend(None);
    let p = proxy_in(proxy(b, d), "10.0.0.0/8").blocking_start();
    let (_s, code) = exchange(
        p.addr(),
        b"PROXY TCP4 203.0.113.7 127.0.0.1 56324 443\r\n",
        &[],
    );
    assert_eq!(
        code, 400,
        "a PROXY header from outside proxy_protocol.trusted"
    );
    let p2 = proxy_in(proxy(b, d), "127.0.0.1/32").blocking_start();
    let (_s, code) = exchange(p2.addr(), b"", &[]);
    assert_eq!(code, 400, "no PROXY header on a listener that requires one");
    let (_s, code) = exchange(
        p2.addr(),
        b"PROXY TCP4 203.0.113.7 127.0.0.1 99999 443\r\n",
        &[],
    );
    assert_eq!(code, 400, "a malformed PROXY header");
    assert!(
        seen.recv_timeout(Duration::from_millis(300)).is_err(),
        "the backend got a connection"
    );
    // And a good one still works on the same proxy.
    let (_s, code) = exchange(
        p2.addr(),
        b"PROXY TCP4 198.51.100.2 127.0.0.1 1234 443\r\n",
        &[],
    );
    assert_eq!(code, 101);
}

/// An upgrade through a proxy whose route sends a PROXY header of `version` (1 or 2) to the
/// backend: what the backend saw, and the client's and the proxy's ports the header must name.
fn send_proxy(version: u8, d: Driver) -> (Seen, u16, u16) {
    let (b, seen) = backend(Some(version));
    let setting = if version == 1 { "v1" } else { "v2" };
    let p = ProxyBuilder::default()
        .driver(d)
        .workers(1)
        .route(route("/ws", &[b]).send_proxy(setting))
        .blocking_start();
    let (s, code) = exchange(p.addr(), b"", &[]);
    assert_eq!(code, 101);
    let seen = seen.recv_timeout(STEP).expect("backend saw the head");
    let client = s.local_addr().expect("client addr");
    (seen, client.port(), p.addr().port())
}

drivers!(
    send_proxy_v1_to_the_backend,
    super::send_proxy_v1_to_the_backend
);
fn send_proxy_v1_to_the_backend(d: Driver) {
    let (seen, client, proxy) = send_proxy(1, d);
    let want = format!("PROXY TCP4 127.0.0.1 127.0.0.1 {client} {proxy}\r\n");
    assert_eq!(String::from_utf8_lossy(&seen.proxy), want);
    assert!(seen.head.starts_with("GET / HTTP/1.1\r\n"), "{}", seen.head);
}

drivers!(
    send_proxy_v2_to_the_backend,
    super::send_proxy_v2_to_the_backend
);
fn send_proxy_v2_to_the_backend(d: Driver) {
    let (seen, client, proxy) = send_proxy(2, d);
    let mut want = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    want.extend_from_slice(&[0x21, 0x11, 0, 12, 127, 0, 0, 1, 127, 0, 0, 1]);
    want.extend_from_slice(&client.to_be_bytes());
    want.extend_from_slice(&proxy.to_be_bytes());
    assert_eq!(seen.proxy, want);
}

/// Sends `prefix` + an upgrade with `extra` lines to `proxy`, expects a 101, and returns the
/// head the backend got.
fn forwarded(proxy: &Proxy, seen: &mpsc::Receiver<Seen>, prefix: &[u8], extra: &[&str]) -> String {
    let (_s, code) = exchange(proxy.addr(), prefix, extra);
    assert_eq!(code, 101);
    seen.recv_timeout(STEP).expect("head").head
}

drivers!(
    trusted_proxies_decide_append_or_replace,
    super::trusted_proxies_decide_append_or_replace
);
fn trusted_proxies_decide_append_or_replace(d: Driver) {
    let (b, seen) = backend(None);
    let forged = ["X-Forwarded-For: 1.2.3.4"];
    let outside = proxy(b, d)
        .top("trusted_proxies", "[\"10.0.0.0/8\"]")
        .blocking_start();
    let head = forwarded(&outside, &seen, b"", &forged);
    assert_eq!(
        header(&head, "X-Forwarded-For"),
        ["127.0.0.1"],
        "a forged chain is replaced"
    );

    let inside = proxy(b, d)
        .top("trusted_proxies", "[\"127.0.0.0/8\"]")
        .blocking_start();
    let head = forwarded(&inside, &seen, b"", &forged);
    assert_eq!(header(&head, "X-Forwarded-For"), ["1.2.3.4, 127.0.0.1"]);

    // Behind a PROXY-speaking balancer the client it names is what trust is decided on.
    let lb = proxy_in(proxy(b, d), "127.0.0.1/32")
        .top("trusted_proxies", "[\"10.0.0.0/8\"]")
        .blocking_start();
    let head = forwarded(
        &lb,
        &seen,
        b"PROXY TCP4 10.1.2.3 127.0.0.1 5000 443\r\n",
        &forged,
    );
    assert_eq!(header(&head, "X-Forwarded-For"), ["1.2.3.4, 10.1.2.3"]);
    assert_eq!(header(&head, "X-Real-IP"), ["10.1.2.3"]);
}

drivers!(
    per_ip_limit_counts_the_client_a_proxy_header_names,
    super::per_ip_limit_counts_the_client_a_proxy_header_names
);

/// Behind a balancer every connection comes from the balancer's address, so the per-IP limit
/// counts the client each PROXY header names; LOCAL headers (the balancer's health checks) are
/// not counted at all.
fn per_ip_limit_counts_the_client_a_proxy_header_names(d: Driver) {
    let (b, seen) = backend(None);
    let p = proxy_in(proxy(b, d), "127.0.0.1/32")
        .limit("max_connections_per_ip", 2)
        .blocking_start();
    let v1 = |ip: &str| format!("PROXY TCP4 {ip} 127.0.0.1 56324 443\r\n").into_bytes();
    let (first, c1) = exchange(p.addr(), &v1("203.0.113.7"), &[]);
    let (_second, c2) = exchange(p.addr(), &v1("203.0.113.7"), &[]);
    assert_eq!((c1, c2), (101, 101));
    let (_, c3) = exchange(p.addr(), &v1("203.0.113.7"), &[]);
    assert_eq!(
        c3, 429,
        "a third connection from one client behind the balancer"
    );
    // Other clients through the same balancer have budgets of their own: counted under the
    // balancer's address, these would all be refused.
    let mut others = Vec::new();
    for ip in ["203.0.113.8", "203.0.113.8", "198.51.100.1"] {
        let (s, code) = exchange(p.addr(), &v1(ip), &[]);
        assert_eq!(code, 101, "client {ip}");
        others.push(s);
    }
    // Health checks: v2 LOCAL carries no client, and three at once all pass.
    let local = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00".to_vec();
    let checks: Vec<_> = (0..3).map(|_| exchange(p.addr(), &local, &[])).collect();
    assert!(checks.iter().all(|(_, c)| *c == 101));
    // 2 + 3 + 3 heads reached the backend, the refused one did not.
    for i in 0..8 {
        seen.recv_timeout(STEP)
            .unwrap_or_else(|_| panic!("head {i} never reached the backend"));
    }
    assert!(
        seen.recv_timeout(Duration::from_millis(300)).is_err(),
        "the refused connection reached the backend"
    );
    // A closed tunnel frees its client's slot.
    drop(first);
    let deadline = std::time::Instant::now() + STEP;
    loop {
        let (_, code) = exchange(p.addr(), &v1("203.0.113.7"), &[]);
        if code == 101 {
            break;
        }
        assert_eq!(code, 429);
        assert!(
            std::time::Instant::now() < deadline,
            "the closed connection was never forgotten"
        );
        thread::sleep(Duration::from_millis(20));
    }
}
