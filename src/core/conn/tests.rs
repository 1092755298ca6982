//! Whole connections as scripts: accept to end, every step the worker would carry out.

use super::*;
use crate::config::RelayMode;
use crate::config::Timeouts as Configured;
use crate::core::relay::tests::{FakePipes, Loan};
use crate::core::relay::{RelayStats, Src};
use crate::core::route::{test_route, RouteTable};

const HEAD: &[u8] = b"GET /notice/a HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
const OK101: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

fn settings(backends: &[&str]) -> Arc<Settings> {
    Arc::new(Settings::new(
        RouteTable::new(&[test_route("/notice", backends)]),
        Configured::default(),
    ))
}

struct Rig {
    conn: Conn<u32>,
    base: Instant,
    t: Time,
    loan: Loan,
    /// Play a completion driver (io_uring) instead of an edge-triggered readiness one.
    completion: bool,
}

fn accept(full: bool, backends: &[&str]) -> Rig {
    let base = Instant::now();
    let clock = Clock::new(base);
    let t = Time {
        now: base,
        tick: clock.tick(base),
        clock,
    };
    let a = Accept {
        redirect: None,
        peer: "203.0.113.9:4000".parse().expect("addr"),
        local: "127.0.0.1:80".parse().expect("addr"),
        expect_proxy: false,
        full,
        log: true,
        splice_ok: true,
        tls: false,
    };
    Rig {
        conn: Conn::accept(a, &t, settings(backends)),
        base,
        t,
        loan: Loan::new(4, vec![0u8; 4096], RelayStats::default()),
        completion: false,
    }
}

impl Rig {
    /// The connection and what its worker would lend it.
    fn parts(&mut self) -> (&mut Conn<u32>, Ctx<'_, FakePipes>, &Time) {
        let cx = self.loan.ctx(RelayMode::Auto, 65536, self.completion);
        (&mut self.conn, cx, &self.t)
    }

    fn poll(&mut self) -> Step {
        let (conn, mut cx, t) = self.parts();
        conn.poll(&mut cx, t)
    }

    fn complete(&mut self, op: IoOp, res: io::Result<usize>) {
        let (conn, mut cx, t) = self.parts();
        conn.complete_io(op, res, &mut cx, t);
    }

    /// Expects a read of `side`.
    fn expect_read(&mut self, side: Side) -> IoOp {
        let op = self.expect_io();
        match op {
            IoOp::Read { side: s, .. } if s == side => op,
            other => panic!("expected a read of {side:?}, got {other:?}"),
        }
    }

    /// Expects a write of the held bytes ([`Conn::out_bytes`]) to `side`.
    fn expect_held_write(&mut self, side: Side) -> IoOp {
        let op = self.expect_io();
        let want = IoOp::Write {
            side,
            src: Src::Held,
        };
        assert_eq!(op, want);
        op
    }

    /// Polls past timer arming; returns the first other step.
    fn next(&mut self) -> Step {
        loop {
            match self.poll() {
                Step::Arm(_) => {}
                s => return s,
            }
        }
    }

    /// Completes `op` as if the socket returned `bytes` (a read) or took `n` bytes (a write).
    fn io(&mut self, op: IoOp, bytes: &[u8]) {
        let n = match op {
            IoOp::Read { .. } => {
                self.loan.scratch[..bytes.len()].copy_from_slice(bytes);
                bytes.len()
            }
            _ => bytes.len(),
        };
        self.complete(op, Ok(n));
    }

    fn expect_io(&mut self) -> IoOp {
        match self.next() {
            Step::Io(op) => op,
            other => panic!("expected I/O, got {other:?}"),
        }
    }

    fn after(&mut self, d: Duration) {
        self.t.now = self.base + d;
        self.t.tick = self.t.clock.tick(self.t.now);
    }

    fn fire_timer(&mut self) {
        let due = self.conn.armed().expect("armed");
        self.conn.handle(Event::Timer(due), &self.t);
    }
}

fn ready(side: Side, readable: bool, writable: bool) -> Event {
    Event::Ready {
        side,
        readable,
        writable,
        hup: false,
        gone: false,
    }
}

#[test]
fn upgrade_to_relay_step_by_step() {
    let mut r = accept(false, &["127.0.0.1:9001"]);
    let ip: IpAddr = "203.0.113.9".parse().expect("ip");
    assert!(matches!(r.next(), Step::Admit(a) if a == ip));
    r.conn.complete_admit(Admission::Counted, &r.t);
    let read = r.expect_read(Side::Client);
    r.io(read, HEAD);
    let backend: SocketAddr = "127.0.0.1:9001".parse().expect("addr");
    assert!(matches!(r.next(), Step::Connect(a) if a == backend));
    r.conn.complete_connect(Connecting::Started, false, &r.t);
    assert!(
        matches!(r.next(), Step::Wait),
        "nothing to do until the connect completes"
    );
    r.conn.handle(ready(Side::Backend, false, true), &r.t);
    assert!(matches!(r.next(), Step::CheckConnect));
    r.conn.complete_connect(Connecting::Connected, false, &r.t);
    let write = r.expect_held_write(Side::Backend);
    let head = r.conn.out_bytes().to_vec();
    assert!(head.starts_with(b"GET /a HTTP/1.1\r\n"));
    r.io(write, &head);
    // The answer's edge: a readiness driver reads only then.
    assert!(
        matches!(r.next(), Step::Wait),
        "no read before the backend's edge"
    );
    r.conn.handle(ready(Side::Backend, true, false), &r.t);
    let read = r.expect_read(Side::Backend);
    r.io(read, OK101);
    match r.next() {
        Step::Note(Note::RelayOpened { backend: b, .. }) => assert_eq!(b, Some(backend)),
        other => panic!("expected the relay to open, got {other:?}"),
    }
    r.conn.set_backend_id(3);
    // Both sockets were drained by short reads and no edge came since: the relay writes the
    // 101 to the client and then waits for an edge instead of reading (no EAGAIN reads).
    let w = r.expect_held_write(Side::Client);
    assert_eq!(r.conn.lent(w).0, OK101);
    r.io(w, OK101);
    assert!(matches!(r.next(), Step::Wait), "no read before an edge");
    r.conn.handle(ready(Side::Backend, true, false), &r.t);
    r.expect_read(Side::Backend);
    // Drain: the relay ends with its reason, its slot, its IP and its backend id.
    r.conn.handle(Event::Drain, &r.t);
    match r.next() {
        Step::End(e) => {
            assert_eq!(e.reason, EndReason::Relay(CloseReason::Drain));
            assert_eq!(
                (e.holds_slot, e.counted_ip, e.backend_id),
                (true, Some(ip), 3)
            );
            assert_eq!(e.log.expect("log").status, 101);
        }
        other => panic!("expected the end, got {other:?}"),
    }
    assert!(matches!(r.conn, Conn::Ended));
}

/// Plays a linger to its end: answer, FIN, discard, the client closes.
fn linger_to_end(r: &mut Rig, answer: &[u8]) -> End {
    let w = r.expect_io();
    assert_eq!(r.conn.out_bytes(), answer);
    r.io(w, answer);
    assert_eq!(r.expect_io(), IoOp::Shutdown { side: Side::Client });
    r.io(IoOp::Shutdown { side: Side::Client }, b"");
    let read = r.expect_io();
    r.io(read, b"ignored");
    let read = r.expect_io();
    r.io(read, b"");
    match r.next() {
        Step::End(e) => e,
        other => panic!("expected the end, got {other:?}"),
    }
}

#[test]
fn a_full_proxy_answers_503_through_a_linger_and_holds_no_slot() {
    let mut r = accept(true, &["127.0.0.1:9001"]);
    assert!(matches!(r.next(), Step::Note(Note::Full)));
    assert!(matches!(
        r.next(),
        Step::Note(Note::Rejected(Reject::Overloaded))
    ));
    let e = linger_to_end(&mut r, Reject::Overloaded.response());
    assert_eq!(e.reason, EndReason::Rejected);
    assert!(!e.holds_slot);
    assert!(e.log.is_none(), "no head was read: no access log line");
}

#[test]
fn a_client_over_its_per_ip_limit_gets_429_and_no_backend_is_tried() {
    let mut r = accept(false, &["127.0.0.1:9001"]);
    assert!(matches!(r.next(), Step::Admit(_)));
    r.conn.complete_admit(Admission::Refused, &r.t);
    assert!(matches!(
        r.next(),
        Step::Note(Note::Rejected(Reject::TooManyFromIp))
    ));
    // Its max_connections slot goes back before the linger, not after it.
    assert!(matches!(r.next(), Step::Note(Note::SlotReleased)));
    let e = linger_to_end(&mut r, Reject::TooManyFromIp.response());
    assert!(!e.holds_slot && e.counted_ip.is_none());
}

#[test]
fn each_failed_backend_is_reported_once_then_the_client_gets_504() {
    let mut r = accept(false, &["127.0.0.1:9001", "127.0.0.1:9002"]);
    assert!(matches!(r.next(), Step::Admit(_)));
    r.conn.complete_admit(Admission::Unlimited, &r.t);
    let read = r.expect_io();
    r.io(read, HEAD);
    let Step::Connect(first) = r.next() else {
        panic!("expected a connect")
    };
    r.conn
        .complete_connect(Connecting::Failed(ConnectFailure::Refused), false, &r.t);
    assert!(matches!(r.next(), Step::Note(Note::BackendFailed(a, _)) if a == first));
    let Step::Connect(second) = r.next() else {
        panic!("expected the next backend")
    };
    assert_ne!(first, second);
    r.conn.complete_connect(Connecting::Started, false, &r.t);
    assert!(matches!(r.next(), Step::Wait));
    // The connect timeout (5 s by default) passes.
    r.after(Duration::from_secs(6));
    r.fire_timer();
    assert!(matches!(r.next(), Step::Note(Note::BackendFailed(a, _)) if a == second));
    assert!(matches!(
        r.next(),
        Step::Note(Note::Rejected(Reject::BackendTimeout))
    ));
    assert!(matches!(r.next(), Step::CloseBackend));
    let e = linger_to_end(&mut r, Reject::BackendTimeout.response());
    assert_eq!(e.reason, EndReason::Rejected);
    assert_eq!(e.log.expect("log").status, 504);
}

#[test]
fn a_stale_timer_does_nothing_and_the_drain_ends_an_upgrade() {
    let mut r = accept(false, &["127.0.0.1:9001"]);
    assert!(matches!(r.next(), Step::Admit(_)));
    r.conn.complete_admit(Admission::Unlimited, &r.t);
    let read = r.expect_io();
    r.io(read, &HEAD[..10]);
    // The short read drained the socket: the rest of the head comes with the next edge.
    assert!(matches!(r.next(), Step::Wait), "no read before the edge");
    r.conn.handle(ready(Side::Client, true, false), &r.t);
    let due = r.conn.armed().expect("armed");
    r.conn.handle(Event::Timer(due.wrapping_sub(1)), &r.t);
    r.expect_read(Side::Client);
    r.conn.handle(Event::Drain, &r.t);
    match r.next() {
        Step::End(e) => {
            assert_eq!(e.reason, EndReason::Drained);
            assert_eq!(e.reason.as_str(), "drain");
        }
        other => panic!("expected the end, got {other:?}"),
    }
}

// ---- the HTTP stage --------------------------------------------------------------------------

const GET: &[u8] = b"GET /notice/x HTTP/1.1\r\nHost: h\r\n\r\n";
const OK2: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// Accepts a client that sends `head` on a one-backend route; returns the rig at the
/// backend connection request.
fn plain(head: &[u8]) -> (Rig, SocketAddr) {
    let mut r = accept(false, &["127.0.0.1:9001"]);
    assert!(matches!(r.next(), Step::Admit(_)));
    r.conn.complete_admit(Admission::Unlimited, &r.t);
    let read = r.expect_io();
    r.io(read, head);
    (r, "127.0.0.1:9001".parse().expect("addr"))
}

/// Writes the head the exchange asks to write; returns it.
fn backend_gets_head(r: &mut Rig) -> Vec<u8> {
    let w = r.expect_held_write(Side::Backend);
    let head = r.conn.out_bytes().to_vec();
    r.io(w, &head);
    head
}

/// `req` on a pooled (reused) backend connection, up to the head the backend got: the rig, the
/// backend and that head.
fn on_a_pooled_connection(req: &[u8]) -> (Rig, SocketAddr, Vec<u8>) {
    let (mut r, backend) = plain(req);
    assert!(matches!(r.next(), Step::Checkout(a) if a == backend));
    r.conn.complete_connect(Connecting::Reused, false, &r.t);
    let head = backend_gets_head(&mut r);
    (r, backend, head)
}

fn expect_request_note(r: &mut Rig, status: u16, reused: bool, retried: bool) {
    match r.next() {
        Step::Note(Note::Request {
            status: s,
            reused: u,
            retried: t,
            ..
        }) => assert_eq!((s, u, t), (status, reused, retried)),
        other => panic!("expected the request note, got {other:?}"),
    }
    match r.next() {
        Step::Log(l, _) => assert_eq!(l.status, status),
        other => panic!("expected the access log line, got {other:?}"),
    }
}

#[test]
fn plain_get_on_a_pooled_connection_then_the_next_head_is_read() {
    let (mut r, backend, head) = on_a_pooled_connection(GET);
    assert!(
        head.starts_with(b"GET /x HTTP/1.1\r\nHost: h\r\n"),
        "{head:?}"
    );
    assert!(!head.windows(6).any(|w| w == b"close\r"), "a reusable head");
    r.conn.handle(ready(Side::Backend, true, false), &r.t);
    let read = r.expect_io();
    assert!(matches!(
        read,
        IoOp::Read {
            side: Side::Backend,
            ..
        }
    ));
    r.io(read, OK2);
    let w = r.expect_held_write(Side::Client);
    assert_eq!(r.conn.out_bytes(), OK2);
    r.io(w, OK2);
    expect_request_note(&mut r, 200, true, false);
    assert!(matches!(r.next(), Step::Release(a) if a == backend));
    // Keep-alive: the upgrade stage reads the next head.
    let read = r.expect_io();
    assert!(matches!(
        read,
        IoOp::Read {
            side: Side::Client,
            ..
        }
    ));
    assert!(matches!(r.conn, Conn::Upgrade(_)));
}

#[test]
fn a_reused_connection_closing_unanswered_is_retried_on_a_new_one() {
    let (mut r, backend, _) = on_a_pooled_connection(GET);
    r.conn.handle(ready(Side::Backend, true, false), &r.t);
    let read = r.expect_io();
    r.io(read, b"");
    assert!(
        matches!(r.next(), Step::Connect(a) if a == backend),
        "a fresh connect"
    );
    r.conn.complete_connect(Connecting::Started, false, &r.t);
    r.conn.handle(ready(Side::Backend, false, true), &r.t);
    assert!(matches!(r.next(), Step::CheckConnect));
    r.conn.complete_connect(Connecting::Connected, false, &r.t);
    backend_gets_head(&mut r);
    r.conn.handle(ready(Side::Backend, true, false), &r.t);
    let read = r.expect_io();
    r.io(read, OK2);
    let w = r.expect_io();
    r.io(w, OK2);
    expect_request_note(&mut r, 200, false, true);
}

#[test]
fn a_post_is_not_retried_once_its_body_went_out() {
    let (mut r, backend, _) = on_a_pooled_connection(
        b"POST /notice/x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc",
    );
    let w = r.expect_io();
    assert_eq!(r.conn.out_bytes(), b"abc");
    r.io(w, b"abc");
    r.conn.handle(ready(Side::Backend, true, false), &r.t);
    let read = r.expect_io();
    r.io(read, b"");
    assert!(matches!(r.next(), Step::Note(Note::BackendFailed(a, _)) if a == backend));
    expect_request_note(&mut r, 502, true, false);
    assert!(matches!(r.next(), Step::CloseBackend));
    let w = r.expect_io();
    assert!(r
        .conn
        .out_bytes()
        .starts_with(b"HTTP/1.1 502 Bad Gateway\r\n"));
    let _ = w;
}

#[test]
fn a_broken_chunked_body_is_a_400_before_any_connect() {
    let (mut r, _) = plain(b"POST /notice/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n");
    expect_request_note(&mut r, 400, false, false);
    assert!(matches!(r.next(), Step::CloseBackend));
    let _ = r.expect_io();
    let out = String::from_utf8_lossy(r.conn.out_bytes()).into_owned();
    assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
    assert!(
        out.ends_with("400 Bad Request: the request is malformed.\n"),
        "{out}"
    );
}

#[test]
fn a_silent_backend_gets_504_after_the_response_timeout() {
    let (mut r, backend, _) = on_a_pooled_connection(GET);
    r.conn.handle(ready(Side::Backend, true, false), &r.t);
    let read = r.expect_io();
    r.complete(read, Err(io::ErrorKind::WouldBlock.into()));
    assert!(matches!(r.next(), Step::Wait));
    // Not yet: the default response timeout is 60 s.
    r.after(Duration::from_secs(30));
    r.fire_timer();
    assert!(matches!(r.next(), Step::Wait));
    r.after(Duration::from_secs(61));
    r.fire_timer();
    assert!(matches!(r.next(), Step::Note(Note::BackendFailed(a, _)) if a == backend));
    expect_request_note(&mut r, 504, true, false);
}

#[test]
fn a_backend_edge_that_came_with_the_connect_is_not_lost() {
    let mut r = accept(false, &["127.0.0.1:9001"]);
    assert!(matches!(r.next(), Step::Admit(_)));
    r.conn.complete_admit(Admission::Counted, &r.t);
    let read = r.expect_read(Side::Client);
    r.io(read, HEAD);
    assert!(matches!(r.next(), Step::Connect(_)));
    r.conn.complete_connect(Connecting::Started, false, &r.t);
    // The backend accepted and closed (or spoke) before the loop woke: one edge says both.
    r.conn.handle(ready(Side::Backend, true, true), &r.t);
    assert!(matches!(r.next(), Step::CheckConnect));
    r.conn.complete_connect(Connecting::Connected, false, &r.t);
    let write = r.expect_io();
    let head = r.conn.out_bytes().to_vec();
    r.io(write, &head);
    // No further edge will come for what is already there: it is read now.
    r.expect_read(Side::Backend);
}

/// Plays accept → head → connect → 101 (each read a short one) and returns the first step of
/// the relay after its `RelayOpened` note. `fin`: the client's FIN came on the head's edge.
fn relay_after_short_reads(completion: bool, fin: bool) -> (Rig, Step) {
    let mut r = accept(false, &["127.0.0.1:9001"]);
    r.completion = completion;
    assert!(matches!(r.next(), Step::Admit(_)));
    r.conn.complete_admit(Admission::Counted, &r.t);
    if fin {
        r.conn.handle(
            Event::Ready {
                side: Side::Client,
                readable: true,
                writable: true,
                hup: true,
                gone: false,
            },
            &r.t,
        );
    }
    let read = r.expect_read(Side::Client);
    r.io(read, HEAD);
    assert!(matches!(r.next(), Step::Connect(_)));
    r.conn
        .complete_connect(Connecting::Connected, completion, &r.t);
    let write = r.expect_held_write(Side::Backend);
    let head = r.conn.out_bytes().to_vec();
    r.io(write, &head);
    if !completion {
        r.conn.handle(ready(Side::Backend, true, false), &r.t);
    }
    let read = r.expect_read(Side::Backend);
    r.io(read, OK101);
    assert!(matches!(r.next(), Step::Note(Note::RelayOpened { .. })));
    let step = r.next();
    (r, step)
}

/// A FIN on the client's edge may be the last edge of that socket: the relay reads the client
/// on to the 0 although the head's read was short, or the FIN would never be seen.
#[test]
fn after_a_fin_edge_the_relay_reads_the_client_despite_a_short_read() {
    let (mut r, step) = relay_after_short_reads(false, true);
    assert!(
        matches!(
            step,
            Step::Io(IoOp::Read {
                side: Side::Client,
                ..
            })
        ),
        "got {step:?}"
    );
    let read = match step {
        Step::Io(op) => op,
        _ => unreachable!(),
    };
    r.complete(read, Ok(0));
    // The FIN goes on to the backend (after the 101 to the client).
    let mut ops = Vec::new();
    for _ in 0..3 {
        match r.next() {
            Step::Io(op) => {
                ops.push(op);
                let bytes = r.conn.lent(op).0.to_vec();
                r.io(op, &bytes);
            }
            _ => break,
        }
    }
    assert!(
        ops.contains(&IoOp::Shutdown {
            side: Side::Backend
        }),
        "{ops:?}"
    );
}

/// A completion driver's read waits for bytes: the relay asks for both at once, whatever the
/// upgrade's reads returned.
#[test]
fn a_completion_driver_relay_starts_reading_at_once() {
    let (mut r, step) = relay_after_short_reads(true, false);
    let mut ops = Vec::new();
    let mut step = step;
    while let Step::Io(op) = step {
        ops.push(op);
        if let IoOp::Write { .. } = op {
            let bytes = r.conn.lent(op).0.to_vec();
            r.io(op, &bytes); // the 101 went out; reads stay in flight
        }
        step = r.next();
    }
    for side in [Side::Client, Side::Backend] {
        let reads = |o: &IoOp| match *o {
            IoOp::Read { side: s, .. } | IoOp::Recv { side: s, .. } => s == side,
            _ => false,
        };
        assert!(ops.iter().any(reads), "no read of {side:?} in {ops:?}");
    }
}
