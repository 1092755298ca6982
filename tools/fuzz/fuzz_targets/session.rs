//! Arbitrary event sequences driving `wsplice::core::handshake::Handshake`, the way the epoll
//! driver does: client and backend bytes wait in "kernel buffers" and are handed over only up
//! to the session's read limits; writes report at most what `backend_output()` offered.
//!
//! Invariants:
//! * no panic;
//! * `Connect` only after a complete head that the core accepts, and to a backend of its
//!   route, each backend at most once;
//! * `Tunnel` only after a backend answer that `validate_answer` accepts as `Switch`; then the
//!   client gets exactly the backend's bytes and the backend exactly the client's bytes that
//!   followed the head (never the head again);
//! * `Forward` only for a non-101 answer, relaying a prefix of what the backend sent;
//! * a `Reject` before the first `Connect` is a 4xx, after it a 5xx;
//! * after `Reject`, `Close`, `Forward` or `Tunnel`, every further call answers `Wait`.
#![no_main]

#[path = "common.rs"]
mod common;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, Instant};
use wsplice::core::validate::{validate_answer, validate_request, Answer};
use wsplice::core::head::{find_head_end, parse_request, precheck};
use wsplice::core::handshake::{Action, ConnectFailure, Handshake};

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Canned client heads, so the deep states are reachable without a corpus.
fn client_head(i: u8) -> Vec<u8> {
    let path = [
        "/notice/a?x=1",
        "/r/b",
        "/",
        "/notice",
        "/nothing/../notice",
    ][i as usize % 5];
    let extra = match (i / 5) % 4 {
        0 => "",
        1 => "Connection: X-Forwarded-For, X-Secret\r\nX-Secret: s\r\nX-Forwarded-For: 1.2.3.4\r\n",
        2 => "Content-Length: 0\r\n",
        _ => "Transfer-Encoding: chunked\r\n",
    };
    // The upper half also pipelines the client's first bytes behind the head.
    let pipelined = if i >= 128 {
        "GET /again HTTP/1.1\r\n\r\n"
    } else {
        ""
    };
    format!(
        "GET {path} HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n{pipelined}"
    )
    .into_bytes()
}

/// Canned backend answers.
fn backend_answer(i: u8) -> Vec<u8> {
    let ok = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
    match i % 9 {
        0 => ok.to_owned(),
        // The 101 and the backend's first WebSocket frame in one read.
        1 => format!("{ok}\u{1}\u{2}hi"),
        2 => ok.replace("Upgrade: websocket\r\n", ""),
        3 => "HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\n\r\nnope".to_owned(),
        4 => {
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".to_owned()
        }
        5 => "HTTP/1.1 500 Oops\r\n\r\nuntil close".to_owned(),
        6 => format!("HTTP/1.1 100 Continue\r\n\r\n{ok}"),
        7 => "HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n".to_owned(),
        _ => ok.replace("HTTP/1.1", "HTTP/1.0"),
    }
    .into_bytes()
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Failure {
    Refused,
    Reset,
    Timeout,
    NoDescriptors,
}

#[derive(Arbitrary, Debug)]
enum Event {
    /// Client bytes arrive in the kernel buffer; the driver then reads what the session allows.
    Client(Vec<u8>),
    ClientHead(u8),
    /// The driver reads again (the session's limit may have changed).
    ClientReadable,
    ClientEof,
    Connected,
    ConnectFailed(Failure),
    /// The kernel accepted up to this many bytes of `backend_output()`.
    Written(u16),
    Backend(Vec<u8>),
    BackendAnswer(u8),
    BackendReadable,
    BackendEof,
    /// The clock moves on this many milliseconds, then the timer fires.
    Timeout(u16),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    ReadHead,
    Connecting,
    Sending,
    Answer,
    Done,
}

struct Model {
    phase: Phase,
    /// Every client byte handed to the session, and where its head ended.
    client_seen: Vec<u8>,
    head_end: Option<usize>,
    /// Backend bytes handed to the session while it read the answer.
    answer: Vec<u8>,
    connects: Vec<std::net::SocketAddr>,
    route: Option<usize>,
    client_kernel: Vec<u8>,
    backend_kernel: Vec<u8>,
    client_eof: bool,
    backend_eof: bool,
}

fn check(hs: &Handshake, m: &mut Model, a: Action) {
    let s = common::settings();
    if m.phase == Phase::Done {
        assert_eq!(a, Action::Wait, "an action after the session ended");
        return;
    }
    match a {
        Action::Wait => {}
        Action::Connect(addr) => {
            // A complete head that the core accepts, routed to this backend.
            let end = find_head_end(&m.client_seen, 0).expect("Connect before a complete head");
            let head = &m.client_seen[..end];
            precheck(head, s.max_head_bytes / 2).expect("Connect after a refused head");
            let mut f = vec![httparse::EMPTY_HEADER; s.max_headers];
            let req = parse_request(head, &mut f).expect("Connect after an unparsable head");
            let up = validate_request(&req).expect("Connect after an invalid upgrade");
            let route = s
                .routes
                .lookup(up.host, up.path)
                .expect("Connect without a route");
            assert_eq!(hs.route(), Some(route.route));
            let backends = &s.routes.get(route.route).backends;
            assert!(
                backends.contains(&addr),
                "Connect to {addr}, not a backend of the route"
            );
            assert!(!m.connects.contains(&addr), "{addr} tried twice");
            m.connects.push(addr);
            m.head_end = Some(end);
            m.route = Some(route.route);
            m.phase = Phase::Connecting;
            m.backend_kernel.clear();
            m.backend_eof = false;
        }
        Action::SendHead => {
            assert!(hs.is_sending());
            let out = hs.backend_output();
            if m.phase == Phase::Connecting {
                common::assert_crlf_framing(out, "head for the backend");
                m.phase = Phase::Sending;
            }
            assert_eq!(m.phase, Phase::Sending);
            assert!(!out.is_empty());
        }
        Action::Reject(r) => {
            if m.connects.is_empty() {
                assert!(r.status() < 500, "{r:?} before any backend was tried");
            } else {
                assert!(r.status() >= 500, "{r:?} after a backend was tried");
            }
            m.phase = Phase::Done;
        }
        Action::Close => {
            assert!(matches!(
                m.phase,
                Phase::ReadHead | Phase::Connecting | Phase::Sending | Phase::Answer
            ));
            m.phase = Phase::Done;
        }
        Action::Answer => {
            assert_eq!(m.phase, Phase::Answer, "Forward without an answer");
            let end = find_head_end(&m.answer, 0).expect("Forward without an answer head");
            let mut f = vec![httparse::EMPTY_HEADER; s.max_headers];
            match validate_answer(&m.answer[..end], &mut f) {
                Ok(Answer::Other { .. }) => {}
                other => panic!("Forward for {other:?}"),
            }
            let out = hs.client_output();
            assert!(
                out.len() >= end && m.answer.starts_with(out),
                "Forward relays other bytes"
            );
            m.phase = Phase::Done;
        }
        Action::Http => {
            // A plain request was accepted: the HTTP stage takes the connection from here.
            let end = find_head_end(&m.client_seen, 0).expect("Http before a complete head");
            let head = &m.client_seen[..end];
            precheck(head, s.max_head_bytes / 2).expect("Http after a refused head");
            assert!(hs.route().is_some(), "Http without a route");
            m.phase = Phase::Done;
        }
        Action::Relay => {
            assert_eq!(m.phase, Phase::Answer, "Tunnel without an answer");
            let end = find_head_end(&m.answer, 0).expect("Tunnel without an answer head");
            let mut f = vec![httparse::EMPTY_HEADER; s.max_headers];
            assert_eq!(
                validate_answer(&m.answer[..end], &mut f),
                Ok(Answer::Switch),
                "Tunnel for {:?}",
                String::from_utf8_lossy(&m.answer)
            );
            assert_eq!(
                hs.client_output(),
                &m.answer[..],
                "the client gets the 101 and what followed"
            );
            let head_end = m.head_end.expect("head");
            assert_eq!(
                hs.backend_output(),
                &m.client_seen[head_end..],
                "the backend gets exactly the client's bytes after its head"
            );
            m.phase = Phase::Done;
        }
    }
}

fn feed_client(hs: &mut Handshake, m: &mut Model, now: Instant) {
    let s = common::settings();
    let limit = hs.client_read_limit(s);
    if limit > 0 && !m.client_kernel.is_empty() {
        let n = limit.min(m.client_kernel.len());
        let chunk: Vec<u8> = m.client_kernel.drain(..n).collect();
        m.client_seen.extend_from_slice(&chunk);
        let a = hs.handle_client_data(s, now, &chunk);
        check(hs, m, a);
    } else if limit > 0 && m.client_eof {
        m.client_eof = false;
        let a = hs.handle_client_eof();
        check(hs, m, a);
    }
}

fn feed_backend(hs: &mut Handshake, m: &mut Model) {
    let s = common::settings();
    let limit = hs.backend_read_limit(s);
    if limit > 0 && !m.backend_kernel.is_empty() {
        let n = limit.min(m.backend_kernel.len());
        let chunk: Vec<u8> = m.backend_kernel.drain(..n).collect();
        if m.phase == Phase::Answer {
            m.answer.extend_from_slice(&chunk);
        }
        let a = hs.handle_backend_data(s, &chunk);
        check(hs, m, a);
    } else if limit > 0 && m.backend_eof {
        m.backend_eof = false;
        let a = hs.handle_backend_eof();
        check(hs, m, a);
    }
}

fuzz_target!(|events: Vec<Event>| {
    let s = common::settings();
    let mut now = Instant::now();
    let mut hs = Handshake::new("10.0.0.7".parse().unwrap(), now, s);
    let mut m = Model {
        phase: Phase::ReadHead,
        client_seen: Vec::new(),
        head_end: None,
        answer: Vec::new(),
        connects: Vec::new(),
        route: None,
        client_kernel: Vec::new(),
        backend_kernel: Vec::new(),
        client_eof: false,
        backend_eof: false,
    };
    for e in events.into_iter().take(256) {
        match e {
            Event::Client(b) => {
                m.client_kernel.extend_from_slice(&b);
                feed_client(&mut hs, &mut m, now);
            }
            Event::ClientHead(i) => {
                m.client_kernel.extend_from_slice(&client_head(i));
                feed_client(&mut hs, &mut m, now);
            }
            Event::ClientReadable => feed_client(&mut hs, &mut m, now),
            Event::ClientEof => {
                // The driver sees EOF when it reads in ReadHead; in the other handshake states
                // it learns of it from the socket's error/hup events.
                if hs.client_read_limit(s) > 0 {
                    m.client_eof = true;
                    feed_client(&mut hs, &mut m, now);
                } else {
                    let a = hs.handle_client_eof();
                    check(&hs, &mut m, a);
                }
            }
            Event::Connected => {
                // The driver reports completion only for a connect it started.
                if hs.is_connecting() {
                    let a = hs.handle_connected(s, now);
                    check(&hs, &mut m, a);
                }
            }
            Event::ConnectFailed(f) => {
                // No backend socket exists before the head is accepted.
                if m.phase != Phase::ReadHead {
                    let why = match f {
                        Failure::Refused => ConnectFailure::Refused,
                        Failure::Reset => ConnectFailure::Reset,
                        Failure::Timeout => ConnectFailure::Timeout,
                        Failure::NoDescriptors => ConnectFailure::NoDescriptors,
                    };
                    let a = hs.handle_connect_failed(s, now, why);
                    check(&hs, &mut m, a);
                }
            }
            Event::Written(n) => {
                if hs.is_sending() {
                    let n = (n as usize).min(hs.backend_output().len());
                    let a = hs.handle_backend_written(n);
                    if a == Action::Wait && m.phase == Phase::Sending {
                        assert!(!hs.is_sending(), "Wait while still sending");
                        m.phase = Phase::Answer;
                        m.answer.clear();
                    }
                    check(&hs, &mut m, a);
                }
            }
            Event::Backend(b) => {
                if matches!(m.phase, Phase::Sending | Phase::Answer) {
                    m.backend_kernel.extend_from_slice(&b);
                }
                feed_backend(&mut hs, &mut m);
            }
            Event::BackendAnswer(i) => {
                if matches!(m.phase, Phase::Sending | Phase::Answer) {
                    m.backend_kernel.extend_from_slice(&backend_answer(i));
                }
                feed_backend(&mut hs, &mut m);
            }
            Event::BackendReadable => feed_backend(&mut hs, &mut m),
            Event::BackendEof => {
                if m.phase == Phase::Done {
                    let a = hs.handle_backend_eof();
                    check(&hs, &mut m, a);
                } else if matches!(m.phase, Phase::Sending | Phase::Answer) {
                    m.backend_eof = true;
                    if m.phase == Phase::Sending {
                        // A FIN while the head is still being written.
                        m.backend_eof = false;
                        let a = hs.handle_backend_eof();
                        check(&hs, &mut m, a);
                    } else {
                        feed_backend(&mut hs, &mut m);
                    }
                }
            }
            Event::Timeout(ms) => {
                now += Duration::from_millis(ms as u64 * 16);
                let early = now < hs.deadline();
                let a = hs.handle_timeout(s, now);
                if early {
                    assert_eq!(a, Action::Wait, "timer fired before the deadline");
                }
                check(&hs, &mut m, a);
            }
        }
    }
});
