//! The driver choice and what only the io_uring driver has: `driver`/`--driver`, the refusal
//! or fallback where io_uring is forbidden (a seccomp filter in the child makes
//! `io_uring_setup` fail with EPERM, as a container's profile does), its metrics, and receives
//! that wait for a free provided buffer.
//!
//! Every other suite already runs under both drivers (`e2e!` and `drivers!` in tests/support).

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

#[macro_use]
mod support;
use support::blocking::RawBackend;
use support::blocking::{echo_101_backend, eventually, open_tunnel, roundtrip, until_stalled};
use support::{route, wait_for_exit, Driver, ProxyBuilder, STEP};

/// `wsplice ARGS` with piped output; `forbid_uring` installs a seccomp filter in the child
/// first that fails `io_uring_setup` with EPERM.
fn spawn(args: &[&str], forbid_uring: bool) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wsplice"));
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if forbid_uring {
        forbid::io_uring(&mut cmd);
    }
    cmd.spawn().expect("spawn wsplice")
}

/// wsplice with `--driver {driver}` where io_uring is forbidden; None (skipped, said so) where
/// this architecture has no seccomp filter to forbid it.
fn spawn_forbidden(driver: &str) -> Option<Child> {
    if !forbid::SUPPORTED {
        eprintln!("no seccomp filter for this architecture: skipped");
        return None;
    }
    Some(spawn(&with_driver(driver), true))
}

/// Stdout lines until `ready` (or the end of output), at most [`STEP`].
fn lines_until_ready(child: &mut Child) -> Vec<String> {
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            let ready = line == "ready";
            if tx.send(line).is_err() || ready {
                return;
            }
        }
    });
    let deadline = Instant::now() + STEP;
    let mut lines = Vec::new();
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        let ready = line == "ready";
        lines.push(line);
        if ready {
            break;
        }
    }
    lines
}

fn stderr_of(mut child: Child) -> String {
    let _ = child.kill();
    let _ = child.wait();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    err
}

const CLI: [&str; 6] = [
    "--listen",
    "127.0.0.1:0",
    "--route",
    "/x=127.0.0.1:9",
    "--workers",
    "1",
];

fn with_driver(driver: &str) -> Vec<&str> {
    let mut a = CLI.to_vec();
    a.extend(["--driver", driver]);
    a
}

#[test]
fn the_driver_flag_picks_the_driver_and_the_start_up_report_names_it() {
    let mut child = spawn(&with_driver("uring"), false);
    let lines = lines_until_ready(&mut child);
    let err = stderr_of(child);
    assert_eq!(lines.last().map(String::as_str), Some("ready"), "{err}");
    let driver = lines
        .iter()
        .find(|l| l.starts_with("driver "))
        .unwrap_or_else(|| panic!("no driver line in {lines:?}"));
    assert!(
        driver.starts_with("driver uring (") && driver.contains("64 buffers of 16 KiB"),
        "{driver}"
    );

    let mut child = spawn(&with_driver("epoll"), false);
    let lines = lines_until_ready(&mut child);
    drop(stderr_of(child));
    assert!(lines.iter().any(|l| l == "driver epoll"), "{lines:?}");
}

#[test]
fn explicit_uring_refuses_to_start_where_io_uring_is_forbidden() {
    let Some(mut child) = spawn_forbidden("uring") else {
        return;
    };
    let status = wait_for_exit(&mut child, STEP).expect("wsplice must exit");
    let err = stderr_of(child);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("driver = \"uring\" cannot run here: io_uring_setup")
            && err.contains("Operation not permitted")
            && err.contains("--driver epoll"),
        "the refusal says why and what to do: {err}"
    );
}

#[test]
fn auto_falls_back_to_epoll_with_one_line_saying_why() {
    let Some(mut child) = spawn_forbidden("auto") else {
        return;
    };
    let lines = lines_until_ready(&mut child);
    let err = stderr_of(child);
    assert!(lines.iter().any(|l| l == "driver epoll"), "{lines:?} {err}");
    assert_eq!(lines.last().map(String::as_str), Some("ready"));
    let why: Vec<&str> = err.lines().filter(|l| l.contains("driver auto")).collect();
    assert_eq!(why.len(), 1, "{err}");
    assert!(
        why[0].contains("io_uring is unavailable") && why[0].contains("using epoll"),
        "{err}"
    );
    // Where io_uring works, auto takes it.
    let mut child = spawn(&with_driver("auto"), false);
    let lines = lines_until_ready(&mut child);
    drop(stderr_of(child));
    assert!(
        lines.iter().any(|l| l.starts_with("driver uring (")),
        "{lines:?}"
    );
}

drivers!(
    workers_are_counted_by_driver_and_the_ring_reports_its_batches,
    super::workers_are_counted_by_driver_and_the_ring_reports_its_batches
);
fn workers_are_counted_by_driver_and_the_ring_reports_its_batches(d: Driver) {
    let p = ProxyBuilder::default()
        .driver(d)
        .admin()
        .set("uring", "multishot", "true")
        .route(route("/", &[echo_101_backend()]))
        .blocking_start();
    let mut s = open_tunnel(p.addr(), "/ws");
    for i in 0..20u8 {
        roundtrip(&mut s, &[i; 64]);
    }

    let workers = |name: &str| p.metric(&format!("wsplice_workers_by_driver{{driver=\"{name}\"}}"));
    let ring = || {
        (
            p.metric("wsplice_uring_submissions_total"),
            p.metric("wsplice_uring_completions_total"),
            p.metric("wsplice_uring_loops_total"),
        )
    };
    // A loop that only moves bytes publishes its counters within 10 ms, not at once.
    if d == Driver::Uring {
        eventually("the ring's counters to be published", STEP, || {
            ring().1 >= 80
        });
    }
    let (submitted, completed, loops) = ring();
    match d {
        Driver::Epoll => {
            assert_eq!((workers("epoll"), workers("uring")), (2, 0));
            assert_eq!((submitted, completed, loops), (0, 0, 0));
        }
        Driver::Uring => {
            assert_eq!((workers("epoll"), workers("uring")), (0, 2));
            // 20 echoes: an arrival and a send each way per message completed, but the
            // receives are multishot: one submission per socket, so each message costs its
            // two sends and the submissions stay well under the completions.
            assert!(completed >= 80, "{submitted} {completed}");
            assert!(
                (40..80).contains(&submitted) && submitted < completed,
                "{submitted} submissions, {completed} completions"
            );
            // Each loop is one waiting io_uring_enter; timer wake-ups count too, so loops may
            // exceed completions on a busy machine, but some loops did the work.
            assert!(loops > 0, "{loops} loops");
        }
    }
    // Larger messages through the standing receives arrive whole and in order.
    let big: Vec<u8> = (0..(256u32 << 10)).map(|i| (i % 251) as u8).collect();
    roundtrip(&mut s, &big);
    roundtrip(&mut s, b"after");
}

/// One provided buffer for the whole worker: a tunnel whose client does not read keeps it (its
/// send waits), so another tunnel's receive finds none. It waits, is counted, and goes on once
/// the buffer comes back; nothing is lost or reordered.
#[test]
fn a_receive_that_finds_no_buffer_waits_for_one() {
    let streamer = RawBackend::start();
    let accepted = streamer.accept_101();
    let written = Arc::new(AtomicU64::new(0));
    let w = written.clone();
    const TOTAL: u64 = 8 << 20;
    let pattern = |i: u64| (i % 251) as u8;
    let backend = thread::spawn(move || {
        let (mut s, _) = accepted.recv().expect("the streaming tunnel");
        s.set_read_timeout(None).expect("blocking");
        let mut pos = 0u64;
        while pos < TOTAL {
            let chunk: Vec<u8> = (pos..pos + 65536).map(pattern).collect();
            if s.write_all(&chunk).is_err() {
                return;
            }
            pos += 65536;
            w.store(pos, Ordering::Relaxed);
        }
        let _ = s.read(&mut [0u8; 1]);
    });
    let p = ProxyBuilder::default()
        .driver(Driver::Uring)
        .relay(support::Relay::Copy.uring())
        .workers(1)
        .admin()
        .set("uring", "buffer_size", "\"4KiB\"")
        .set("uring", "buffer_memory", "\"4KiB\"")
        .route(route("/stream", &[streamer.addr]))
        .route(route("/echo", &[echo_101_backend()]))
        .blocking_start();
    // The echo tunnel first: its head needs the buffer too.
    let mut echo = open_tunnel(p.addr(), "/echo");
    roundtrip(&mut echo, b"before");
    let mut stream = open_tunnel(p.addr(), "/stream");
    until_stalled(Duration::from_secs(10), || written.load(Ordering::Relaxed))
        .expect("the backend's writes never stalled");
    echo.write_all(b"waits for a buffer").expect("write");
    eventually("a receive to find no buffer", STEP, || {
        p.metric("wsplice_uring_buffers_exhausted_total") > 0
    });
    // Read the whole stream: the buffer comes back, and the waiting receive goes on.
    stream.set_read_timeout(Some(STEP)).expect("timeout");
    let mut got = vec![0u8; 1 << 16];
    let mut pos = 0u64;
    while pos < TOTAL {
        let n = stream.read(&mut got).expect("stream read");
        assert!(n > 0, "the stream ended at {pos}");
        for (i, &b) in got[..n].iter().enumerate() {
            assert_eq!(b, pattern(pos + i as u64), "byte {}", pos + i as u64);
        }
        pos += n as u64;
    }
    let mut back = [0u8; 18];
    echo.set_read_timeout(Some(STEP)).expect("timeout");
    echo.read_exact(&mut back).expect("the echo after the wait");
    assert_eq!(&back, b"waits for a buffer");
    drop(stream);
    let _ = backend.join();
}

/// A seccomp filter that makes `io_uring_setup` fail with EPERM, as Docker's default profile
/// does, installed in the child between fork and exec.
mod forbid {
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    #[cfg(target_arch = "x86_64")]
    const ARCH: u32 = 0xc000_003e; // AUDIT_ARCH_X86_64
    #[cfg(target_arch = "aarch64")]
    const ARCH: u32 = 0xc000_00b7; // AUDIT_ARCH_AARCH64
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    const ARCH: u32 = 0;
    pub const SUPPORTED: bool = ARCH != 0;

    const fn stmt(code: u32, k: u32) -> libc::sock_filter {
        libc::sock_filter {
            code: code as u16,
            jt: 0,
            jf: 0,
            k,
        }
    }

    const fn jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
        libc::sock_filter {
            code: code as u16,
            jt,
            jf,
            k,
        }
    }

    pub fn io_uring(cmd: &mut Command) {
        // struct seccomp_data: nr at offset 0, arch at offset 4.
        let filter = [
            stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 4),
            jump(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, ARCH, 1, 0),
            stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
            stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0),
            jump(
                libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
                libc::SYS_io_uring_setup as u32,
                0,
                1,
            ),
            stmt(
                libc::BPF_RET | libc::BPF_K,
                libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
            ),
            stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
        ];
        // SAFETY: the closure runs in the forked child before exec and only makes two prctl
        // syscalls (async-signal-safe) on data it owns; `prog` points into `filter`, which the
        // closure owns for its whole run.
        unsafe {
            cmd.pre_exec(move || {
                let prog = libc::sock_fprog {
                    len: filter.len() as u16,
                    filter: filter.as_ptr() as *mut libc::sock_filter,
                };
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                    || libc::prctl(
                        libc::PR_SET_SECCOMP,
                        libc::SECCOMP_MODE_FILTER,
                        &prog as *const libc::sock_fprog,
                    ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}
