//! Gateway boxes: a small footprint and a memory budget.
//!
//! - `limits.max_memory`: past the budget new clients get 503 (counted apart from
//!   max_connections), established tunnels keep echoing byte-exact with every buffer full, the
//!   proxy's memory (RSS plus the kernel memory of its sockets, read off `ss -tm`) stays within
//!   the budget, and once the load leaves it accepts again. Its sockets' buffers are fixed, the
//!   send buffer no smaller than the receive buffer (read off `ss -tm` too).
//! - Start-up: one worker, only the threads that are switched on; `workers` follows the CPUs
//!   this process may use (its affinity mask, here narrowed by `taskset`).
//!
//! Blocking std sockets; every read has a timeout.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod support;
use support::blocking::{echo_101_backend, eventually, open_tunnel, roundtrip, try_read_head};
use support::{
    emulated, pattern, route, status, upgrade_request, wsplice_argv, Proxy, ProxyBuilder, Relay,
    STEP,
};

/// The budget of the memory test: room for a few dozen tunnels with Linux's default buffers
/// (under an emulator the process starts at the emulator's ~13 MiB: more room for that).
fn budget() -> u64 {
    if emulated() {
        32 << 20
    } else {
        16 << 20
    }
}
/// How far over the budget the measured memory may be: the kernel lets a socket's receive
/// queue pass its buffer by one packet, and RSS counts pages the allocator has not returned.
const MARGIN: u64 = 1 << 20;
/// Bytes written into each stalled tunnel at most.
const STALL_BYTES: usize = 2 << 20;

/// The number in the start-up line "memory: limits.max_memory = ... allows N tunnels".
fn tunnels_allowed(p: &Proxy) -> u64 {
    let line = p
        .startup()
        .iter()
        .find(|l| l.starts_with("memory: "))
        .unwrap_or_else(|| panic!("no memory line in {:?}", p.startup()));
    line.split(" allows ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unparsable {line:?}"))
}

/// Sends an upgrade and returns the answer's status.
fn upgrade_status(proxy: SocketAddr) -> (TcpStream, Option<u16>) {
    let mut s = TcpStream::connect(proxy).expect("connect");
    s.set_read_timeout(Some(STEP)).expect("timeout");
    s.write_all(&upgrade_request("/ws", &[]))
        .expect("send head");
    let code = try_read_head(&mut s).ok().and_then(|h| status(&h));
    (s, code)
}

/// The `skmem` fields (`r`, `rb`, `t`, `tb`, `f`, `w`, ...) of every socket `ss` lists for
/// `filter`, one list of (name, value) per socket.
fn skmem(filter: &str) -> Vec<Vec<(String, u64)>> {
    let out = Command::new("ss")
        .args(["-tmnH", "state", "established", filter])
        .output()
        .expect("run ss (iproute2)");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("skmem:(")
        .skip(1)
        .map(|mem| {
            let fields = mem.split(')').next().unwrap_or_default();
            fields
                .split(',')
                .map(|f| {
                    let (name, value) =
                        f.split_at(f.find(|c: char| c.is_ascii_digit()).unwrap_or(0));
                    (name.to_owned(), value.parse().unwrap_or(0))
                })
                .collect()
        })
        .collect()
}

/// `rmem_alloc + fwd_alloc + wmem_queued` of every socket `ss` lists for `filter`, plus the
/// kernel's fixed cost of each socket; and how many sockets there were.
fn kernel_bytes(filter: &str) -> (u64, usize) {
    let sockets = skmem(filter);
    let queued: u64 = sockets
        .iter()
        .flatten()
        .filter(|(name, _)| matches!(name.as_str(), "r" | "f" | "w"))
        .map(|(_, v)| v)
        .sum();
    (queued + 4096 * sockets.len() as u64, sockets.len())
}

/// `rb` and `tb` (the receive and send buffer sizes) of every socket `ss` lists for `filter`.
fn buffer_sizes(filter: &str) -> Vec<(u64, u64)> {
    let field = |socket: &[(String, u64)], name: &str| -> u64 {
        socket
            .iter()
            .find_map(|(n, v)| (n == name).then_some(*v))
            .expect("skmem has rb and tb")
    };
    skmem(filter)
        .iter()
        .map(|s| (field(s, "rb"), field(s, "tb")))
        .collect()
}

/// The middle value of a `net.ipv4.tcp_[rw]mem` sysctl.
fn initial_size(sysctl: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/sys/net/ipv4/{sysctl}"))
        .expect("read the sysctl")
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("three numbers")
}

fn memory_budget(relay: Relay) {
    let backend = echo_101_backend();
    let budget = budget();
    let p = ProxyBuilder::default()
        .relay(relay)
        .workers(1)
        .top("worker_model", "\"threads\"")
        .admin()
        .set("limits", "max_memory", &budget.to_string())
        .route(route("/", &[backend]))
        .blocking_start();
    let allowed = tunnels_allowed(&p);
    assert!(allowed >= 2, "the budget allows only {allowed} tunnels");

    // Up to the budget: every tunnel opens; one more is refused with 503, and counted as such.
    let mut open: Vec<TcpStream> = (0..allowed).map(|_| open_tunnel(p.addr(), "/ws")).collect();
    for s in &mut open {
        roundtrip(s, b"within the budget");
    }
    // Every one of the proxy's sockets has its buffers fixed: the receive buffer at the kernel's
    // initial size, the send buffer no smaller (a 16 KiB send buffer fed from a 128 KiB receive
    // buffer moved a loopback bulk tunnel 2 MiB/s).
    let rcv = initial_size("tcp_rmem");
    let snd = initial_size("tcp_wmem").max(rcv);
    for filter in [
        format!("( sport = :{} )", p.addr().port()),
        format!("( dport = :{} )", backend.port()),
    ] {
        let sizes = buffer_sizes(&filter);
        assert_eq!(
            sizes.len() as u64,
            allowed,
            "the proxy's sockets for {filter}"
        );
        for (rb, tb) in sizes {
            assert_eq!(
                (rb, tb),
                (rcv, snd),
                "fixed buffers of a socket for {filter}"
            );
        }
    }
    for _ in 0..3 {
        let (_, code) = upgrade_status(p.addr());
        assert_eq!(code, Some(503), "beyond max_memory");
    }
    // The 503 may reach the client before the worker publishes its counters.
    eventually("three memory refusals counted", STEP, || {
        p.metric("wsplice_rejected_memory_total") == 3
    });
    assert_eq!(p.metric("wsplice_rejected_full_total"), 0);

    // Every buffer of every tunnel full: the client writes and does not read.
    let mut written = Vec::new();
    for (i, s) in open.iter_mut().enumerate() {
        s.set_nonblocking(true).expect("nonblocking");
        let data = pattern(STALL_BYTES, i as u8);
        let mut n = 0;
        let deadline = Instant::now() + STEP;
        while n < data.len() && Instant::now() < deadline {
            match s.write(&data[n..]) {
                Ok(k) => n += k,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5));
                    // Stalled for good once two tries in a row move nothing.
                    match s.write(&data[n..]) {
                        Ok(k) => n += k,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) => panic!("tunnel {i}: {e}"),
                    }
                }
                Err(e) => panic!("tunnel {i}: {e}"),
            }
        }
        written.push(n);
    }
    std::thread::sleep(Duration::from_millis(300));
    if !emulated() {
        let port = p.addr().port();
        let (kernel, sockets) = kernel_bytes(&format!(
            "( sport = :{port} or dport = :{} )",
            backend.port()
        ));
        assert_eq!(sockets as u64, 2 * allowed, "the proxy's sockets, by ss");
        let rss = p.rss_bytes();
        eprintln!(
            "{} tunnels stalled: RSS {rss} B + kernel {kernel} B = {} B of a {budget} B budget",
            allowed,
            rss + kernel
        );
        assert!(
            rss + kernel <= budget + MARGIN,
            "RSS {rss} B + socket memory {kernel} B exceed max_memory {budget} B by more than {MARGIN} B"
        );
    }
    // Stalled tunnels hold their pipes and overflow buffers: the reservation still fits.
    let reserved = p.metric("wsplice_memory_reserved_bytes");
    assert!(reserved > 0 && reserved <= budget, "reserved {reserved} B");
    eprintln!(
        "relay {}: max_memory {budget} B admitted {allowed} tunnels; {reserved} B reserved, {} pipes refused",
        relay.as_str(),
        p.metric("wsplice_pipes_unavailable_total")
    );
    // Still refusing while full, and the established ones still flow, byte-exact.
    let (_, code) = upgrade_status(p.addr());
    assert_eq!(code, Some(503));
    for (i, s) in open.iter_mut().enumerate() {
        s.set_nonblocking(false).expect("blocking");
        let want = pattern(STALL_BYTES, i as u8);
        let mut got = vec![0u8; written[i]];
        s.read_exact(&mut got).expect("stalled bytes come back");
        assert!(got == want[..written[i]], "tunnel {i} echoed other bytes");
        roundtrip(s, b"after the stall");
    }

    // The load leaves: everything given back, new clients served again.
    drop(open);
    eventually("the budget to be given back", STEP, || {
        p.metric("wsplice_memory_reserved_bytes") == 0
    });
    let mut again = open_tunnel(p.addr(), "/ws");
    roundtrip(&mut again, b"accepting again");
}

#[test]
fn memory_budget_refuses_new_clients_and_keeps_tunnels_splice() {
    memory_budget(Relay::Splice);
}

#[test]
fn memory_budget_refuses_new_clients_and_keeps_tunnels_auto() {
    memory_budget(Relay::Auto);
}

/// Thread names of process `pid` (under an emulator, its own threads left out and the main
/// thread, which carries the emulator's name, named `main`).
fn threads(pid: u32) -> Vec<String> {
    let all = all_threads(pid);
    if !emulated() {
        return all;
    }
    let mut ours: Vec<String> = all
        .into_iter()
        .filter(|n| n.starts_with("wsplice"))
        .collect();
    ours.push("main".into());
    ours
}

fn all_threads(pid: u32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("task dir")
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|n| n.trim().to_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn starts_small_with_only_the_threads_switched_on() {
    let backend = echo_101_backend();
    let one = |b: ProxyBuilder| {
        b.workers(1)
            .top("worker_model", "\"threads\"")
            .route(route("/", &[backend]))
            .blocking_start()
    };
    let plain = one(ProxyBuilder::default());
    let names = threads(plain.pid());
    assert_eq!(names.len(), 2, "main and one worker only: {names:?}");
    // The footprint is bounded for the static gateway build (tools/test-emulated runs this
    // file against it natively); this build's debug binary is reported only.
    let rss = plain.rss_bytes();
    eprintln!("RSS at start with one worker: {rss} B");
    let static_build = std::env::var("WSPLICE_TEST_BIN").is_ok_and(|b| !b.is_empty());
    if static_build && !emulated() {
        // Issue 16 asks for <= 2 MiB. Most of the RSS is the binary's own pages (the kernel
        // maps its text in 64 KiB windows around each page touched), so it follows the binary.
        // With std rebuilt for the gateway build (-Zbuild-std, 1.90 MB) and the worker's
        // scratch buffer and timer slots allocated at their first use, started from a config
        // file as here: 1,916-1,920 KiB (bench-results/2026-11-29-embedded-3; 2,080 KiB
        // before). The bound sits ~64 KiB above that so that growth is noticed.
        assert!(rss <= 1984 << 10, "RSS at start {rss} B > 1,984 KiB");
    }
    let mut open = open_tunnel(plain.addr(), "/ws");
    roundtrip(&mut open, b"one worker serves");

    let log = support::TempFile::new("log", "");
    let full = one(ProxyBuilder::default().admin().set(
        "access_log",
        "path",
        &format!("\"{}\"", log.path().display()),
    ));
    // A thread names itself once it runs: "ready" can come first (seen under qemu, where only
    // threads named wsplice* are counted), so wait for the four, then check there are no more.
    eventually("main, worker, admin and logger threads", STEP, || {
        threads(full.pid()).len() >= 4
    });
    let names = threads(full.pid());
    assert_eq!(names.len(), 4, "main, worker, admin, logger: {names:?}");
}

#[test]
fn workers_default_to_the_cpus_of_the_affinity_mask() {
    if Command::new("taskset").arg("-V").output().is_err() {
        panic!("taskset (util-linux) is needed to narrow the affinity mask");
    }
    let backend = echo_101_backend();
    let mut child = Command::new("taskset")
        .args(["-c", "0"])
        .args(wsplice_argv())
        .args(["--listen", "127.0.0.1:0", "--route"])
        .arg(format!("/={backend}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn taskset wsplice");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let done = line == "ready";
            if tx.send(line).is_err() || done {
                return;
            }
        }
    });
    let mut lines = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(10)) {
        let done = line == "ready";
        lines.push(line);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(lines.last().map(String::as_str), Some("ready"), "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("listen ") && l.ends_with(" workers=1")),
        "{lines:?}"
    );
    let cpus = lines
        .iter()
        .find(|l| l.starts_with("cpus: "))
        .unwrap_or_else(|| panic!("no cpus line: {lines:?}"));
    assert!(
        cpus.starts_with("cpus: 1 (affinity: 1 CPUs;")
            && cpus.ends_with("workers = 1 (one per CPU)"),
        "{cpus}"
    );
}

/// A gateway build (tools/build-static: no `demo`, no `uring`, no `import`) says what it lacks instead of
/// failing obscurely, and `driver = "auto"` still serves on epoll. Runs against the static
/// binary tools/test-emulated marks with WSPLICE_TEST_GATEWAY=1 (natively and emulated); a
/// default build has both features and skips it.
#[test]
fn a_gateway_build_names_what_it_leaves_out() {
    if std::env::var("WSPLICE_TEST_GATEWAY").as_deref() != Ok("1") {
        eprintln!("skipped: not a gateway build (tools/test-emulated sets WSPLICE_TEST_GATEWAY=1)");
        return;
    }
    let out = exits_within(support::wsplice_command().args(["demo", "--listen", "127.0.0.1:0"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "demo ran: {err}");
    assert!(
        err.contains("built without `wsplice demo` (cargo feature `demo`"),
        "{err}"
    );
    let conf = support::TempFile::new("conf", "events {}\nhttp {}\n");
    let out = exits_within(
        support::wsplice_command()
            .args(["import", "nginx"])
            .arg(conf.path()),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "import ran: {err}");
    assert!(out.stdout.is_empty(), "import printed TOML: {err}");
    assert!(
        err.contains("built without `wsplice import` (cargo feature `import`")
            && err.contains("run `wsplice import nginx "),
        "{err}"
    );

    let backend = echo_101_backend();
    let route_arg = format!("/={backend}");
    let out = exits_within(
        support::wsplice_command()
            .args(["--listen", "127.0.0.1:0", "--route", &route_arg])
            .args([
                "--workers",
                "1",
                "--worker-model",
                "threads",
                "--driver",
                "uring",
            ])
            .stdout(Stdio::null()),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "driver uring started: {err}");
    assert!(
        err.contains("driver = \"uring\" cannot run here: this binary is built without the io_uring driver (cargo feature `uring`"),
        "{err}"
    );

    // auto: epoll, and it serves.
    let p = ProxyBuilder::default()
        .workers(1)
        .top("worker_model", "\"threads\"")
        .top("driver", "\"auto\"")
        .route(route("/", &[backend]))
        .blocking_start();
    assert!(
        p.startup().iter().any(|l| l == "driver epoll"),
        "{:?}",
        p.startup()
    );
    let mut open = open_tunnel(p.addr(), "/ws");
    roundtrip(&mut open, b"epoll serves a gateway build");
}

/// Runs `cmd` to its end, which must come within a deadline (a build that has what it should
/// refuse would keep serving): its stderr and status.
fn exits_within(cmd: &mut Command) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wsplice");
    let deadline = Instant::now() + STEP;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("wsplice kept running: the binary has what a gateway build leaves out");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("collect output")
}
