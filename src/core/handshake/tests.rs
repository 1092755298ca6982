use super::*;
use crate::config::Timeouts;
use crate::core::route::{test_route, RouteTable};
use crate::core::status::BadRequest;
use std::time::Duration;

const HEAD: &str = "GET /notice/a?x=1 HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
const OK101: &str = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

fn settings(backends: &[&str]) -> Settings {
    Settings {
        max_head_bytes: 4096,
        max_headers: 32,
        routes: RouteTable::new(&[test_route("/notice", backends)]),
        // The defaults: handshake 10 s, connect 5 s.
        ..Settings::new(RouteTable::default(), Timeouts::default())
    }
}

/// One step of a byte script and what the session must answer.
enum Step<'a> {
    Client(&'a [u8], Action),
    ClientEof(Action),
    Connected(Action),
    ConnectFailed(ConnectFailure, Action),
    Written(usize, Action),
    Backend(&'a [u8], Action),
    BackendEof(Action),
    /// Advance the fake clock, then deliver a timeout.
    After(Duration, Action),
}

fn run(s: &Settings, script: &[Step<'_>]) -> Handshake {
    let mut now = Instant::now();
    let mut hs = Handshake::new("10.0.0.7".parse().expect("ip"), now, s);
    for (i, step) in script.iter().enumerate() {
        let (got, want) = match step {
            Step::Client(b, want) => (hs.handle_client_data(s, now, b), want),
            Step::ClientEof(want) => (hs.handle_client_eof(), want),
            Step::Connected(want) => (hs.handle_connected(s, now), want),
            Step::ConnectFailed(f, want) => (hs.handle_connect_failed(s, now, *f), want),
            Step::Written(n, want) => (hs.handle_backend_written(*n), want),
            Step::Backend(b, want) => (hs.handle_backend_data(s, b), want),
            Step::BackendEof(want) => (hs.handle_backend_eof(), want),
            Step::After(d, want) => {
                now += *d;
                (hs.handle_timeout(s, now), want)
            }
        };
        assert_eq!(&got, want, "step {i}");
    }
    hs
}

fn addr(a: &str) -> Action {
    Action::Connect(a.parse().expect("addr"))
}

#[test]
fn whole_handshake_in_small_chunks() {
    let s = settings(&["127.0.0.1:1"]);
    let mut steps: Vec<Step<'_>> = Vec::new();
    let head = HEAD.as_bytes();
    for chunk in head[..head.len() - 1].chunks(7) {
        steps.push(Step::Client(chunk, Action::Wait));
    }
    steps.push(Step::Client(&head[head.len() - 1..], addr("127.0.0.1:1")));
    steps.push(Step::Connected(Action::SendHead));
    let hs = run(&s, &steps);
    let sent = String::from_utf8(hs.backend_output().to_vec()).expect("ascii");
    assert!(
        sent.starts_with("GET /a?x=1 HTTP/1.1\r\nHost: h\r\n"),
        "{sent}"
    );
    assert!(sent.contains("X-Forwarded-For: 10.0.0.7\r\n"));
}

#[test]
fn pipelined_frame_is_held_until_101_and_backend_extra_goes_to_client() {
    let s = settings(&["127.0.0.1:1"]);
    let mut first = HEAD.as_bytes().to_vec();
    first.extend_from_slice(b"\x81\x85FRAME");
    let mut answer = OK101.as_bytes().to_vec();
    answer.extend_from_slice(b"\x81\x02hi");
    let mut hs = run(
        &s,
        &[
            Step::Client(&first, addr("127.0.0.1:1")),
            Step::Connected(Action::SendHead),
        ],
    );
    let n = hs.backend_output().len();
    assert!(
        !hs.backend_output().ends_with(b"FRAME"),
        "held bytes must wait for the 101"
    );
    assert_eq!(hs.handle_backend_written(n - 3), Action::SendHead);
    assert_eq!(hs.handle_backend_written(3), Action::Wait);
    assert_eq!(hs.handle_backend_data(&s, &answer[..20]), Action::Wait);
    assert_eq!(hs.handle_backend_data(&s, &answer[20..]), Action::Relay);
    let (to_client, to_backend) = hs.into_tunnel_bytes();
    assert_eq!(to_client, answer);
    assert_eq!(to_backend, b"\x81\x85FRAME");
}

#[test]
fn rejects_answer_and_never_connect() {
    use ConnectFailure as F;
    let s = settings(&["127.0.0.1:1", "127.0.0.1:2"]);
    let cases: Vec<(Vec<Step<'_>>, Action)> = vec![
        (
            vec![Step::Client(b"GET / HTTP/1.1\nHost: x\r\n", Action::Wait)],
            Action::Wait,
        ),
        (
            vec![Step::After(
                Duration::from_secs(10),
                Action::Reject(Reject::HandshakeTimeout),
            )],
            Action::Wait,
        ),
        (
            vec![Step::Client(
                b"GET /notice HTTP/1.1\r\nHost: h\r\n\r\n",
                Action::Http,
            )],
            Action::Wait,
        ),
        (
            vec![Step::Client(
                HEAD.replace("/notice/a", "/other")
                    .as_bytes()
                    .to_vec()
                    .leak(),
                Action::Reject(Reject::NoRoute),
            )],
            Action::Wait,
        ),
        (vec![Step::ClientEof(Action::Close)], Action::Wait),
        (
            vec![Step::Client(
                &[b'a'; 4096],
                Action::Reject(Reject::UriTooLong),
            )],
            Action::Wait,
        ),
    ];
    // A bare LF as the last byte so far is refused at once, not at the handshake timeout.
    let mut hs = Handshake::new("10.0.0.7".parse().expect("ip"), Instant::now(), &s);
    assert_eq!(
        hs.handle_client_data(&s, Instant::now(), b"GET / HTTP/1.1\r\nHost: x\r\n\n"),
        Action::Reject(Reject::BadRequest(BadRequest::BareLineEnding))
    );
    let mut hs = Handshake::new("10.0.0.7".parse().expect("ip"), Instant::now(), &s);
    assert_eq!(
        hs.handle_client_data(&s, Instant::now(), b"GET / HTTP/1.1\r"),
        Action::Wait,
        "a trailing CR may still get its LF"
    );
    // The first row: a bare LF is refused as soon as it is seen, before the head completes.
    let mut hs = Handshake::new("10.0.0.7".parse().expect("ip"), Instant::now(), &s);
    assert_eq!(
        hs.handle_client_data(&s, Instant::now(), b"GET / HTTP/1.1\nHost: x\r\n"),
        Action::Reject(Reject::BadRequest(BadRequest::BareLineEnding))
    );
    for (steps, _) in cases.into_iter().skip(1) {
        run(&s, &steps);
    }
    // The plain request above took a turn of the round robin.
    let s = settings(&["127.0.0.1:1", "127.0.0.1:2"]);
    // Fail-over: refused, then timeout => 504 after both were tried once.
    run(
        &s,
        &[
            Step::Client(HEAD.as_bytes(), addr("127.0.0.1:1")),
            Step::ConnectFailed(F::Refused, addr("127.0.0.1:2")),
            Step::After(
                Duration::from_secs(5),
                Action::Reject(Reject::BackendTimeout),
            ),
        ],
    );
    // Round robin: the next connection starts at the second backend.
    run(
        &s,
        &[
            Step::Client(HEAD.as_bytes(), addr("127.0.0.1:2")),
            Step::ConnectFailed(F::Reset, addr("127.0.0.1:1")),
            Step::ConnectFailed(
                F::Refused,
                Action::Reject(Reject::BackendFailed(BackendFailure::Refused)),
            ),
        ],
    );
    run(
        &s,
        &[
            Step::Client(HEAD.as_bytes(), addr("127.0.0.1:1")),
            Step::ConnectFailed(F::NoDescriptors, Action::Reject(Reject::Overloaded)),
        ],
    );
}

#[test]
fn backend_answers() {
    let s = settings(&["127.0.0.1:1"]);
    let start = [
        Step::Client(HEAD.as_bytes(), addr("127.0.0.1:1")),
        Step::Connected(Action::SendHead),
    ];
    let n = {
        let hs = run(&s, &start);
        hs.backend_output().len()
    };
    let with = |rest: Vec<Step<'static>>| {
        let mut v: Vec<Step<'static>> = vec![
            Step::Client(HEAD.as_bytes(), addr("127.0.0.1:1")),
            Step::Connected(Action::SendHead),
            Step::Written(n, Action::Wait),
        ];
        v.extend(rest);
        v
    };
    let bad = Action::Reject(Reject::BackendFailed(BackendFailure::BadAnswer));
    run(
        &s,
        &with(vec![Step::Backend(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
            bad,
        )]),
    );
    run(
        &s,
        &with(vec![
            Step::Backend(b"HTTP/1.1 101 Sw", Action::Wait),
            Step::BackendEof(Action::Reject(Reject::BackendFailed(
                BackendFailure::ClosedEarly,
            ))),
        ]),
    );
    run(
        &s,
        &with(vec![Step::After(
            Duration::from_secs(10),
            Action::Reject(Reject::BackendTimeout),
        )]),
    );
    let hs = run(
        &s,
        &with(vec![
            Step::Backend(
                b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\n\r\nno",
                Action::Wait,
            ),
            Step::Backend(b"pe and more", Action::Answer),
        ]),
    );
    assert_eq!(
        hs.client_output(),
        b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\n\r\nnope"
    );
    let hs = run(
        &s,
        &with(vec![
            Step::Backend(b"HTTP/1.1 500 Oops\r\n\r\nbody", Action::Wait),
            Step::BackendEof(Action::Answer),
        ]),
    );
    assert_eq!(hs.client_output(), b"HTTP/1.1 500 Oops\r\n\r\nbody");
    let big = vec![b'x'; 5000];
    run(
        &s,
        &with(vec![
            Step::Backend(b"HTTP/1.1 101 ", Action::Wait),
            Step::Backend(
                big.leak(),
                Action::Reject(Reject::BackendFailed(BackendFailure::HeadTooLarge)),
            ),
        ]),
    );
}

#[test]
fn proxy_header_names_the_client_and_a_refusal_replaces_the_connect() {
    let mut s = settings(&["127.0.0.1:1"]);
    s.proxy_trusted = vec!["127.0.0.0/8".parse().expect("net")];
    assert!(s.proxy_trusts("127.0.0.9".parse().expect("ip")));
    assert!(!s.proxy_trusts("10.0.0.1".parse().expect("ip")));
    let lb: SocketAddr = "127.0.0.9:4000".parse().expect("addr");
    let now = Instant::now();

    // PROXY header and head in one read: the driver sees Connect and may refuse instead.
    let mut hs = Handshake::accept(lb, lb, true, now, &s);
    assert!(hs.awaits_proxy_header() && !hs.client_from_proxy_header());
    let mut bytes = b"PROXY TCP4 203.0.113.7 127.0.0.1 56324 443\r\n".to_vec();
    bytes.extend_from_slice(HEAD.as_bytes());
    assert_eq!(hs.handle_client_data(&s, now, &bytes), addr("127.0.0.1:1"));
    assert!(!hs.awaits_proxy_header() && hs.client_from_proxy_header());
    assert_eq!(hs.client(), "203.0.113.7:56324".parse().expect("addr"));
    assert_eq!(
        hs.refuse(Reject::TooManyFromIp),
        Action::Reject(Reject::TooManyFromIp)
    );
    // Done: nothing more is read from the client.
    assert_eq!(hs.client_read_limit(&s), 0);

    // A LOCAL header (health check) names no client: the balancer's address stands.
    let mut hs = Handshake::accept(lb, lb, true, now, &s);
    let local = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00";
    assert_eq!(hs.handle_client_data(&s, now, local), Action::Wait);
    assert!(!hs.awaits_proxy_header() && !hs.client_from_proxy_header());
    assert_eq!(hs.client(), lb);
}

#[test]
fn plain_requests_are_handed_over_or_refused_426_on_websocket_only_routes() {
    let mut s = settings(&["127.0.0.1:1"]);
    let plain = b"POST /notice/x?q=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nConnection: keep-alive, X-Drop\r\nX-Drop: 1\r\n\r\nabcGET";
    let mut hs = Handshake::new("10.0.0.7".parse().expect("ip"), Instant::now(), &s);
    assert_eq!(
        hs.handle_client_data(&s, Instant::now(), plain),
        Action::Http
    );
    let p = hs.take_plain().expect("plain request");
    assert_eq!(p.body, Body::Length(3));
    assert_eq!(p.held, b"abcGET");
    assert!(!p.head_method && !p.idempotent && !p.close);
    assert_eq!(
        String::from_utf8_lossy(&p.head),
        "POST /x?q=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nX-Real-IP: 10.0.0.7\r\nX-Forwarded-For: 10.0.0.7\r\nX-Forwarded-Proto: http\r\n\r\n"
    );
    let mut route = test_route("/notice", &["127.0.0.1:1"]);
    route.options.http = false;
    s.routes = RouteTable::new(&[route]);
    let mut hs = Handshake::new("10.0.0.7".parse().expect("ip"), Instant::now(), &s);
    assert_eq!(
        hs.handle_client_data(&s, Instant::now(), plain),
        Action::Reject(Reject::NotUpgrade)
    );
    // An upgrade still passes there.
    let mut hs = Handshake::new("10.0.0.7".parse().expect("ip"), Instant::now(), &s);
    assert_eq!(
        hs.handle_client_data(&s, Instant::now(), HEAD.as_bytes()),
        addr("127.0.0.1:1")
    );
}

#[test]
fn keep_alive_wait_closes_silently_then_a_started_head_gets_the_handshake_timeout() {
    let s = settings(&["127.0.0.1:1"]);
    let c: SocketAddr = "10.0.0.7:5000".parse().expect("addr");
    let now = Instant::now();
    let mut hs = Handshake::next_request(c, c, c, now, &s);
    assert!(hs.is_idle());
    assert_eq!(hs.deadline(), now + s.timeouts.client_idle);
    assert_eq!(
        hs.handle_timeout(&s, now + s.timeouts.client_idle),
        Action::Close
    );
    let mut hs = Handshake::next_request(c, c, c, now, &s);
    assert_eq!(hs.handle_client_data(&s, now, b"GET /no"), Action::Wait);
    assert_eq!(hs.deadline(), now + s.timeouts.handshake);
    assert_eq!(
        hs.handle_timeout(&s, now + s.timeouts.handshake),
        Action::Reject(Reject::HandshakeTimeout)
    );
}

#[test]
fn unavailable_backends_are_not_connected_to_and_failures_are_counted() {
    use crate::core::health::{failure_word, state_word, HealthWords, LocalHealth, DOWN, DRAINED};
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    let words = Arc::new(LocalHealth::new(8));
    let hw: &dyn HealthWords = words.as_ref();
    let mut route = test_route("/notice", &["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]);
    route.options.health = Some(crate::config::Health::default());
    let mut s = settings(&[]);
    s.routes = RouteTable::new(&[route]).with_health(words.clone());
    state_word(hw, 0)
        .expect("slot")
        .store(DRAINED, Ordering::Relaxed);
    // Round robin starts at the first available one, fails over past the drained one, and
    // counts the refused connects for passive ejection; a good answer clears the count.
    for _ in 0..4 {
        let mut hs = Handshake::new("10.0.0.7".parse().expect("ip"), Instant::now(), &s);
        let first = hs.handle_client_data(&s, Instant::now(), HEAD.as_bytes());
        assert_ne!(first, addr("127.0.0.1:1"));
        let second = hs.handle_connect_failed(&s, Instant::now(), ConnectFailure::Refused);
        assert_ne!(second, addr("127.0.0.1:1"));
        assert_ne!(second, first);
        assert!(hs.take_failed_noted(&s).is_some());
        assert_eq!(hs.handle_connected(&s, Instant::now()), Action::SendHead);
    }
    let fails = |i: usize| failure_word(hw, i).expect("slot").load(Ordering::Relaxed);
    assert_eq!((fails(0), fails(1) + fails(2)), (0, 4));
    // Every backend down or drained: a 502 without a connect.
    state_word(hw, 1)
        .expect("slot")
        .store(DOWN, Ordering::Relaxed);
    state_word(hw, 2)
        .expect("slot")
        .store(DOWN, Ordering::Relaxed);
    let mut hs = Handshake::new("10.0.0.7".parse().expect("ip"), Instant::now(), &s);
    assert_eq!(
        hs.handle_client_data(&s, Instant::now(), HEAD.as_bytes()),
        Action::Reject(Reject::BackendFailed(BackendFailure::Refused))
    );
    assert_eq!(hs.take_failed(), None);
}

#[test]
fn tls_handshake_failure_tries_the_next_backend_then_502() {
    use ConnectFailure as F;
    let s = settings(&["127.0.0.1:1", "127.0.0.1:2"]);
    let bad = Action::Reject(Reject::BackendFailed(BackendFailure::Reset));
    // The TLS handshake runs in the head's first write: nothing of the head went out.
    run(
        &s,
        &[
            Step::Client(HEAD.as_bytes(), addr("127.0.0.1:1")),
            Step::Connected(Action::SendHead),
            Step::ConnectFailed(F::Tls, addr("127.0.0.1:2")),
            Step::Connected(Action::SendHead),
            Step::ConnectFailed(F::Tls, bad),
        ],
    );
    // Once some of the head went out, a failure is a reset of that backend, not retried.
    let s = settings(&["127.0.0.1:1", "127.0.0.1:2"]);
    run(
        &s,
        &[
            Step::Client(HEAD.as_bytes(), addr("127.0.0.1:1")),
            Step::Connected(Action::SendHead),
            Step::Written(3, Action::SendHead),
            Step::ConnectFailed(F::Tls, bad),
        ],
    );
}
