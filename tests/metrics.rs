//! `/metrics` exports what the proxy counts: the tunnels a drain closed, every close reason and
//! every reject status, and the access-log lines dropped when the log writer falls behind.
//!
//! The drain test runs the proxy in-process (`driver::Server` plus the admin listener, as
//! `main.rs` wires them) so the admin listener outlives the workers and shows their final
//! counters; a stopping binary exits the moment its workers do.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use support::blocking::{echo_101_backend, echoing_tunnel, eventually};
use support::{raise_test_fd_limit, route, ProxyBuilder, Relay};
use wsplice::config::Config;
use wsplice::core::relay::CloseReason;
use wsplice::core::status::Reject;
use wsplice::driver::{admin, stats, Server};

/// A blocking tunnel backend: answers any upgrade with a 101, then echoes until EOF.
fn echo_backend() -> SocketAddr {
    echo_101_backend()
}

/// The proxy in-process, with its admin listener, as `main.rs` starts them.
struct InProcess {
    server: Server,
    addr: SocketAddr,
    admin: SocketAddr,
}

fn start_in_process(relay: &str, backend: SocketAddr) -> InProcess {
    start_in_process_with(relay, backend, "")
}

/// [`start_in_process`] with more TOML (sections after the route).
fn start_in_process_with(relay: &str, backend: SocketAddr, extra: &str) -> InProcess {
    raise_test_fd_limit();
    let toml = format!(
        "listen = [\"127.0.0.1:0\"]\nworkers = 2\nrelay = \"{relay}\"\n\n[[route]]\nprefix = \"/\"\nbackends = [\"{backend}\"]\n{extra}"
    );
    let cfg = Config::from_toml_str(&toml, "metrics-test.toml").expect("config");
    let server = Server::start(&cfg).expect("start the proxy");
    let addr = server.local_addrs()[0];
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let admin = admin::start(any, server.stats_reader(), server.started()).expect("admin");
    InProcess {
        server,
        addr,
        admin,
    }
}

/// The body of an admin GET.
fn scrape(admin: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(admin).expect("admin connect");
    write!(s, "GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n").expect("admin request");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("admin answer");
    match resp.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200 ") => body.to_string(),
        _ => panic!("admin {path} answered {resp:?}"),
    }
}

/// One sample's value (`name` includes its labels), from Prometheus text.
fn sample(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in\n{text}"))
}

fn closed(reason: CloseReason) -> String {
    format!(
        "wsplice_tunnels_closed_total{{reason=\"{}\"}}",
        reason.as_str()
    )
}

/// Opens a tunnel through the proxy and checks that it echoes.
fn tunnel(proxy: SocketAddr) -> TcpStream {
    echoing_tunnel(proxy, "/t", Duration::from_secs(5))
}

/// Reads until EOF or a reset: the proxy closed its side.
fn assert_closed_by_proxy(s: &mut TcpStream) {
    let mut b = [0u8; 64];
    loop {
        match s.read(&mut b) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return,
            Err(e) => panic!("the proxy did not close the tunnel: {e}"),
        }
    }
}

#[test]
fn drain_counts_the_tunnels_it_closed() {
    for relay in ["copy", "splice", "auto"] {
        let backend = echo_backend();
        let InProcess {
            mut server,
            addr,
            admin,
        } = start_in_process(relay, backend);
        let mut open: Vec<TcpStream> = (0..4).map(|_| tunnel(addr)).collect();

        // One tunnel finishes before the stop: it is `done`, not drained.
        let mut finished = open.pop().expect("a tunnel");
        finished.shutdown(Shutdown::Write).expect("fin");
        assert_closed_by_proxy(&mut finished);
        eventually(
            "the finished tunnel to be counted",
            Duration::from_secs(5),
            || sample(&scrape(admin, "/metrics"), &closed(CloseReason::Done)) == 1,
        );

        // What SIGTERM does in main.rs: drain, then wait for the workers.
        let t0 = Instant::now();
        server.drain(t0 + Duration::from_millis(300));
        let (joined, stopped) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            server.join();
            let _ = joined.send(());
        });
        stopped
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("{relay}: the workers did not stop after the drain time"));
        for s in &mut open {
            assert_closed_by_proxy(s);
        }

        let m = scrape(admin, "/metrics");
        assert_eq!(sample(&m, &closed(CloseReason::Drain)), 3, "{relay}:\n{m}");
        assert_eq!(sample(&m, &closed(CloseReason::Done)), 1, "{relay}:\n{m}");
        assert_eq!(sample(&m, "wsplice_tunnels_total"), 4, "{relay}:\n{m}");
        assert_eq!(sample(&m, "wsplice_connections_active"), 0, "{relay}:\n{m}");
    }
}

/// `all` holds each of the `n` variants of its type exactly once, as `number` tells them apart.
fn assert_each_once<T: Copy + std::fmt::Debug>(all: &[T], n: usize, number: impl Fn(T) -> usize) {
    let mut numbers: Vec<usize> = all.iter().map(|&v| number(v)).collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (0..n).collect::<Vec<_>>(), "{all:?}");
}

#[test]
fn every_close_reason_and_reject_status_is_exported() {
    let backend = echo_backend();
    let p = start_in_process("auto", backend);
    // One tunnel, so that the per-backend families have a sample too.
    let t = tunnel(p.addr);
    let m = scrape(p.admin, "/metrics");
    drop(t);

    // Every variant has a number by a match without wildcard: a new reason does not compile
    // here until it is numbered, and the test then fails until `CloseReason::ALL` (which the
    // export iterates) has it.
    use CloseReason::*;
    let numbered = |r: CloseReason| match r {
        Done => 0,
        IdleTimeout => 1,
        HalfCloseTimeout => 2,
        ClientReset => 3,
        BackendReset => 4,
        Drain => 5,
    };
    assert_each_once(&CloseReason::ALL, 6, numbered);
    for r in CloseReason::ALL {
        assert_eq!(sample(&m, &closed(r)), 0, "{r:?}");
    }
    // The same for the kinds of handshake failure and the statuses they are answered with.
    let numbered = |r: Reject| match r {
        Reject::BadRequest(_) => 0,
        Reject::Forbidden => 1,
        Reject::NoRoute => 2,
        Reject::Connect => 3,
        Reject::HandshakeTimeout => 4,
        Reject::LengthRequired => 5,
        Reject::UriTooLong => 6,
        Reject::NotUpgrade => 7,
        Reject::HeadTooLarge => 8,
        Reject::BackendFailed(_) => 9,
        Reject::TooManyFromIp => 10,
        Reject::Overloaded => 11,
        Reject::BackendTimeout => 12,
    };
    assert_each_once(&Reject::ALL, 13, numbered);
    for r in Reject::ALL {
        let name = format!(
            "wsplice_handshake_rejects_total{{status=\"{}\"}}",
            r.status()
        );
        assert_eq!(sample(&m, &name), 0, "{r:?}");
    }

    // Every family is introduced once, with help and type, and has samples.
    for f in stats::families() {
        let help = format!("# HELP {} ", f.name);
        let kind = format!("# TYPE {} {}\n", f.name, f.kind.as_str());
        assert_eq!(m.matches(&help).count(), 1, "{}:\n{m}", f.name);
        assert_eq!(m.matches(&kind).count(), 1, "{}:\n{m}", f.name);
        assert!(
            m.lines()
                .any(|l| l.starts_with(f.name) && !l.starts_with('#')),
            "no sample of {}:\n{m}",
            f.name
        );
    }
    assert_eq!(sample(&m, "wsplice_access_log_dropped_lines_total"), 0);
    let status = scrape(p.admin, "/status");
    for key in ["connections", "tunnels_total", "open_fds", "uptime_seconds"] {
        assert!(status.contains(&format!("\"{key}\":")), "{status}");
    }
}

/// A worker that only moves bytes publishes its counters at most every few milliseconds; one
/// that then goes quiet must still wake to publish them, with no further event to wake it.
#[test]
fn bytes_moved_just_before_the_loop_goes_quiet_are_published() {
    // No relay timeouts, and the handshake's 10 s away: the timer wheel does not wake the loop
    // while the test looks (its wait skips to the slot that holds the stale handshake entry).
    let no_timers = "\n[timeouts]\nidle = \"0s\"\nhalf_close = \"0s\"\nhandshake = \"10s\"\nconnect = \"10s\"\n";
    let p = start_in_process_with("copy", echo_backend(), no_timers);
    let mut t = tunnel(p.addr);
    let up = "wsplice_bytes_total{direction=\"client_to_backend\"}";
    let down = "wsplice_bytes_total{direction=\"backend_to_client\"}";
    let moved = |m: &str| (sample(m, up), sample(m, down));
    // The echo that checked the tunnel, once published.
    let mut base = (0, 0);
    eventually(
        "the check's echo to be published",
        Duration::from_secs(5),
        || {
            base = moved(&scrape(p.admin, "/metrics"));
            base.0 > 0 && base.0 == base.1
        },
    );
    // Many small echoes back to back: the loop wakes far more often than it publishes, so the
    // last of them are moved by wakes that do not publish.
    let rounds = 2000;
    for _ in 0..rounds {
        t.write_all(&[7u8; 10]).expect("write");
        let mut back = [0u8; 10];
        t.read_exact(&mut back).expect("echo");
    }
    // Nothing moves any more: the numbers must still arrive.
    let want = (base.0 + 10 * rounds, base.1 + 10 * rounds);
    eventually(
        "the last bytes to be published",
        Duration::from_secs(3),
        || moved(&scrape(p.admin, "/metrics")) == want,
    );
}

#[test]
fn readme_names_every_metric() {
    let readme = include_str!("../README.md");
    for f in stats::families() {
        let (bare, labelled) = (format!("`{}`", f.name), format!("`{}{{", f.name));
        assert!(
            readme.contains(&bare) || readme.contains(&labelled),
            "README.md does not mention `{}`",
            f.name
        );
    }
}

#[test]
fn access_log_lines_dropped_under_pressure_are_counted() {
    use nix::fcntl::{fcntl, FcntlArg};
    use std::os::unix::fs::OpenOptionsExt;

    // The log is a FIFO the test holds open but does not read: the writer thread blocks once
    // the pipe is full, the queue of batches fills behind it, and then batches are dropped.
    let fifo = std::env::temp_dir().join(format!("wsplice-dropped-{}.fifo", std::process::id()));
    let _ = std::fs::remove_file(&fifo);
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .expect("open the FIFO's read end");
    // A one-page pipe fills after a few dozen lines (only to be quick; the default works too).
    let _ = fcntl(&reader, FcntlArg::F_SETPIPE_SZ(4096));

    let nowhere: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let proxy = ProxyBuilder::default()
        .workers(1)
        .admin()
        .set("access_log", "path", &format!("\"{}\"", fifo.display()))
        .route(route("/ws", &[nowhere]).http(false))
        .blocking_start();
    let dropped = || proxy.metric("wsplice_access_log_dropped_lines_total");

    // One access-log line each: a plain request on a WebSocket-only route, answered 426 and
    // closed.
    let mut sent = 0u64;
    let deadline = Instant::now() + Duration::from_secs(20);
    while dropped() == 0 {
        assert!(
            Instant::now() < deadline,
            "no line dropped after {sent} connections"
        );
        for _ in 0..200 {
            let mut s = TcpStream::connect(proxy.addr()).expect("connect");
            s.write_all(b"GET /ws HTTP/1.1\r\nHost: t\r\n\r\n")
                .expect("request");
            let mut answer = Vec::new();
            let _ = s.read_to_end(&mut answer);
            assert!(
                answer.starts_with(b"HTTP/1.1 426 "),
                "{:?}",
                String::from_utf8_lossy(&answer)
            );
            sent += 1;
        }
    }
    eventually("connections to end", Duration::from_secs(5), || {
        proxy.metric("wsplice_connections_active") == 0
    });
    let lost = dropped();
    assert!(lost > 0 && lost < sent, "{lost} of {sent} lines dropped");

    // Every line that was not counted as dropped arrives once the log is read.
    let mut lines = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    let deadline = Instant::now() + Duration::from_secs(10);
    while lines < sent - lost {
        assert!(
            Instant::now() < deadline,
            "only {lines} of {} lines arrived ({lost} dropped of {sent})",
            sent - lost
        );
        match reader.read(&mut buf) {
            Ok(n) => lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("reading the FIFO: {e}"),
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    match reader.read(&mut buf) {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("more lines than sent minus dropped: {other:?}"),
    }
    assert_eq!(lines, sent - lost);
    assert_eq!(dropped(), lost, "lines dropped after the last connection");
    drop(proxy);
    let _ = std::fs::remove_file(&fifo);
}

/// SIGTERM with tunnels open: the real binary stops accepting, ends what is still open when
/// `timeouts.drain` runs out, says how many in its `stopped` line (the drain close reason's
/// count), and logs each of those tunnels with reason `drain`; a tunnel that finished in time
/// is logged `done`.
#[test]
fn sigterm_drain_reports_the_tunnels_it_closed() {
    for relay in [Relay::Copy, Relay::Splice, Relay::Auto] {
        let backend = echo_backend();
        let log = std::env::temp_dir().join(format!(
            "wsplice-sigterm-drain-{}-{}.log",
            std::process::id(),
            relay.as_str()
        ));
        let _ = std::fs::remove_file(&log);
        let mut proxy = ProxyBuilder::default()
            .relay(relay)
            .workers(2)
            .timeout("drain", "400ms")
            .set("access_log", "path", &format!("\"{}\"", log.display()))
            .set("access_log", "format", "\"json\"")
            .route(route("/", &[backend]))
            .blocking_start();
        let mut open: Vec<TcpStream> = (0..3).map(|_| tunnel(proxy.addr())).collect();
        let mut finished = tunnel(proxy.addr());
        finished.shutdown(Shutdown::Write).expect("fin");
        assert_closed_by_proxy(&mut finished);
        proxy.signal(nix::sys::signal::Signal::SIGTERM);
        // The count of the drain close reason, as the binary saw it when it stopped.
        proxy.expect_line(
            &["stopped (the drain closed 3 tunnels)"],
            Duration::from_secs(10),
        );
        proxy.wait_exit(Duration::from_secs(10));
        for s in &mut open {
            assert_closed_by_proxy(s);
        }
        let text = std::fs::read_to_string(&log).expect("access log");
        let reasons: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split("\"reason\":\"").nth(1)?.split('"').next())
            .collect();
        assert_eq!(
            reasons.iter().filter(|r| **r == "drain").count(),
            3,
            "{text}"
        );
        assert_eq!(
            reasons.iter().filter(|r| **r == "done").count(),
            1,
            "{text}"
        );
        let _ = std::fs::remove_file(&log);
    }
}
