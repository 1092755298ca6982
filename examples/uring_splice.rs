//! `IORING_OP_SPLICE` or splice(2) from the loop? Moves bytes from one TCP socket through a
//! pipe into another, 64 KiB at a time, both ways of doing it, and prints the process's CPU
//! (every thread: the loop, the writer and reader threads, and the kernel's io-wq workers that
//! run ring splices) per GB and the wall time.
//!
//! ```text
//! cargo run --release --example uring_splice -- [MiB, default 1024] [rounds, default 3]
//! ```
//!
//! The loop waits for readability with poll(2) before each splice in both variants (as the
//! driver waits for an edge), so the difference is the splice itself: a direct non-blocking
//! call, or a ring submission that the kernel hands to an io-wq thread.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::resource::{getrusage, UsageWho};
use wsplice::sys::pipe::Pipe;
use wsplice::sys::uring::{Completion, Ring};

const CHUNK: usize = 64 * 1024;

fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let a = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
    let (b, _) = l.accept().expect("accept");
    (a, b)
}

fn cpu() -> Duration {
    let u = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
    let t =
        |tv: nix::sys::time::TimeVal| Duration::new(tv.tv_sec() as u64, tv.tv_usec() as u32 * 1000);
    t(u.user_time()) + t(u.system_time())
}

fn wait(fd: &TcpStream, flags: PollFlags) {
    let mut fds = [PollFd::new(fd.as_fd(), flags)];
    let _ = poll(&mut fds, PollTimeout::NONE);
}

/// Moves `total` bytes; `ring`: with ring splices, else with splice(2). Returns (CPU, wall).
fn run(total: u64, ring: Option<&mut Ring>) -> (Duration, Duration) {
    let (mut src, b) = pair();
    let (c, mut dst) = pair();
    b.set_nonblocking(true).expect("nonblocking");
    c.set_nonblocking(true).expect("nonblocking");
    let pipe = Pipe::new(CHUNK).expect("pipe");
    let writer = std::thread::spawn(move || {
        let chunk = vec![7u8; CHUNK];
        let mut sent = 0;
        while sent < total {
            src.write_all(&chunk).expect("write");
            sent += CHUNK as u64;
        }
    });
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; CHUNK];
        let mut got = 0;
        while got < total {
            let n = dst.read(&mut buf).expect("read");
            assert!(n > 0, "early end");
            got += n as u64;
        }
    });
    let (cpu0, t0) = (cpu(), Instant::now());
    let mut moved = 0u64;
    let mut done: Vec<Completion> = Vec::new();
    let mut ring = ring;
    while moved < total {
        wait(&b, PollFlags::POLLIN);
        let n = match ring.as_deref_mut() {
            None => match pipe.fill(&b, CHUNK) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => panic!("splice in: {e}"),
            },
            Some(r) => {
                r.splice(b.as_fd(), pipe.writer(), CHUNK as u32, 1);
                one(r, &mut done)
            }
        };
        let mut left = n;
        while left > 0 {
            let m = match ring.as_deref_mut() {
                None => match pipe.drain(&c, left) {
                    Ok(m) => m,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        wait(&c, PollFlags::POLLOUT);
                        continue;
                    }
                    Err(e) => panic!("splice out: {e}"),
                },
                Some(r) => {
                    r.splice(pipe.reader(), c.as_fd(), left as u32, 2);
                    one(r, &mut done)
                }
            };
            left -= m;
        }
        moved += n as u64;
    }
    let wall = t0.elapsed();
    writer.join().expect("writer");
    reader.join().expect("reader");
    (cpu() - cpu0, wall)
}

/// Submits and waits for the one splice in flight; its byte count (EAGAIN counts as 0).
fn one(r: &mut Ring, done: &mut Vec<Completion>) -> usize {
    done.clear();
    while done.is_empty() {
        r.submit_and_wait(None).expect("submit");
        r.reap(done);
    }
    match done[0].result() {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => 0,
        Err(e) => panic!("ring splice: {e}"),
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mib: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1024);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let total = mib << 20;
    let gb = total as f64 / 1e9;
    let mut ring = Ring::new(64).expect("io_uring");
    println!("{mib} MiB through one pipe, 64 KiB splices, {rounds} rounds each, interleaved");
    println!("{:<22} {:>14} {:>10}", "how", "CPU s per GB", "wall s");
    for _ in 0..rounds {
        let (c, w) = run(total, None);
        println!(
            "{:<22} {:>14.3} {:>10.2}",
            "splice(2) from loop",
            c.as_secs_f64() / gb,
            w.as_secs_f64()
        );
        let (c, w) = run(total, Some(&mut ring));
        println!(
            "{:<22} {:>14.3} {:>10.2}",
            "IORING_OP_SPLICE",
            c.as_secs_f64() / gb,
            w.as_secs_f64()
        );
    }
}
