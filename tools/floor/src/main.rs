//! floor: the least a TCP relay can do, as the floor wsplice's CPU per message is measured
//! against (tools/floor-ratio). One thread, edge-triggered epoll, `read` into one 64 KiB buffer
//! and `write` out of it; nothing else: no HTTP (the client's upgrade goes to the backend and its
//! 101 comes back as bytes), no timers, no counters, no splice. Only what correctness needs:
//! a short write keeps the rest and stops reading that direction until the socket is writable,
//! FIN is forwarded, and a pair is closed when both directions ended or one socket failed.
//!
//!     floor --listen 127.0.0.1:47300 --backend 127.0.0.1:47301 [--threads N]
//!
//! `--sockmap`: the kernel relays (a BPF sockhash and an `sk_skb` verdict program; see
//! sockmap.rs): the thread only accepts, connects, inserts each pair, and handles FIN.
//!
//! `--threads N`: N such loops, each with its own SO_REUSEPORT listener (as tools/compare's
//! `--workers 2` runs the proxies); one by default.
//!
//! Backend connects are blocking (loopback, once per connection): what is measured is the
//! relaying, per message, not the handshake.

mod sockmap;

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};

const LISTENER: u64 = u64::MAX;

struct Pair {
    fd: [RawFd; 2],
    /// Bytes for `fd[i]` that it did not take yet.
    pending: [Vec<u8>; 2],
    /// Direction from `fd[i]` ended (read returned 0 and FIN was sent on).
    done: [bool; 2],
}

fn check(rc: libc::c_int, what: &str) -> io::Result<libc::c_int> {
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(rc)
}

fn arg(name: &str) -> SocketAddr {
    let args: Vec<String> = std::env::args().collect();
    let v = args
        .iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .unwrap_or_else(|| panic!("usage: floor --listen ADDR --backend ADDR (missing {name})"));
    v.parse().unwrap_or_else(|e| panic!("{name} {v}: {e}"))
}

/// An IPv4 listener with SO_REUSEPORT, so that each thread has its own.
fn listener(at: SocketAddr) -> io::Result<TcpListener> {
    let SocketAddr::V4(v4) = at else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "floor listens on IPv4 only",
        ));
    };
    // SAFETY: socket/setsockopt/bind/listen on a descriptor created here, with a sockaddr_in and
    // an int that live on the stack for each call; the descriptor is owned by the TcpListener.
    unsafe {
        let fd = check(
            libc::socket(
                libc::AF_INET,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            ),
            "socket",
        )?;
        let l = TcpListener::from_raw_fd(fd);
        let one: libc::c_int = 1;
        for opt in [libc::SO_REUSEADDR, libc::SO_REUSEPORT] {
            let p = (&one as *const libc::c_int).cast();
            check(
                libc::setsockopt(fd, libc::SOL_SOCKET, opt, p, 4),
                "setsockopt",
            )?;
        }
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(v4.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        check(
            libc::bind(fd, (&sa as *const libc::sockaddr_in).cast(), len),
            "bind",
        )?;
        check(libc::listen(fd, 1024), "listen")?;
        Ok(l)
    }
}

fn main() -> io::Result<()> {
    let listen = arg("--listen");
    let backend = arg("--backend");
    let args: Vec<String> = std::env::args().collect();
    let threads: usize = match args.iter().position(|a| a == "--threads") {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("--threads N")),
        None => 1,
    };
    let peers: Option<&'static sockmap::Peers> = if args.iter().any(|a| a == "--sockmap") {
        Some(Box::leak(Box::new(sockmap::Peers::new(1 << 18)?)))
    } else {
        None
    };
    let mut ls = Vec::new();
    for _ in 0..threads.max(1) {
        ls.push(listener(listen)?);
    }
    println!(
        "floor: listening on {listen} ({} threads), relaying to {backend}{}",
        ls.len(),
        if peers.is_some() {
            " through a sockmap"
        } else {
            ""
        }
    );
    let last = ls.pop().expect("one listener");
    for l in ls {
        std::thread::spawn(move || run(l, backend, peers).expect("floor thread"));
    }
    run(last, backend, peers)
}

fn run(
    l: TcpListener,
    backend: SocketAddr,
    peers: Option<&'static sockmap::Peers>,
) -> io::Result<()> {
    // SAFETY (all libc calls below): plain syscalls on descriptors this process owns, with
    // buffers and event structs that live on the stack or in `Pair` for the call's duration.
    let ep = check(
        unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) },
        "epoll_create1",
    )?;
    add(ep, l.as_raw_fd(), libc::EPOLLIN as u32, LISTENER)?;
    let mut pairs: Vec<Option<Pair>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    loop {
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, -1) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(io::Error::last_os_error());
        }
        for ev in &events[..n as usize] {
            let token = ev.u64;
            if token == LISTENER {
                while let Ok((c, _)) = l.accept() {
                    let Ok(b) = TcpStream::connect(backend) else {
                        continue;
                    };
                    for s in [&c, &b] {
                        let _ = s.set_nodelay(true);
                        let _ = s.set_nonblocking(true);
                    }
                    let i = free.pop().unwrap_or_else(|| {
                        pairs.push(None);
                        pairs.len() - 1
                    });
                    let fd = [c.into_raw_fd(), b.into_raw_fd()];
                    let mut flags =
                        (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLET | libc::EPOLLRDHUP) as u32;
                    if let Some(peers) = peers {
                        peers.insert(fd[0], fd[1])?;
                        // The kernel moves the data and still wakes readers for each skb it
                        // redirected (the socket's data_ready); only FIN and errors wake this
                        // thread (epoll filters wake-ups by their event bits).
                        flags = (libc::EPOLLRDHUP | libc::EPOLLET) as u32;
                    }
                    add(ep, fd[0], flags, (i * 2) as u64)?;
                    add(ep, fd[1], flags, (i * 2 + 1) as u64)?;
                    let mut p = Pair {
                        fd,
                        pending: [Vec::new(), Vec::new()],
                        done: [false; 2],
                    };
                    if peers.is_some() {
                        // What arrived before the pair was inserted (the client's upgrade
                        // request) waits in the receive queue, which the verdict only reads
                        // when more arrives: move it here. A WebSocket client sends nothing
                        // more before its 101, so nothing can overtake it.
                        pump(&mut p, 0, &mut buf, false);
                        pump(&mut p, 1, &mut buf, false);
                    }
                    pairs[i] = Some(p);
                }
                continue;
            }
            let i = (token / 2) as usize;
            let Some(p) = pairs[i].as_mut() else { continue };
            let side = (token % 2) as usize;
            // Readable `side`: relay from it. Writable `side`: the other direction goes on if it
            // was stopped by this socket being full (otherwise there is nothing to do for it).
            let hup = ev.events & (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0;
            let readable = hup || ev.events & libc::EPOLLIN as u32 != 0;
            let writable = ev.events & libc::EPOLLOUT as u32 != 0 && !p.pending[side].is_empty();
            let ok = (!readable || pump(p, side, &mut buf, hup))
                && (!writable || pump(p, 1 - side, &mut buf, false));
            if !ok || (p.done[0] && p.done[1]) {
                for fd in p.fd {
                    unsafe { libc::close(fd) };
                }
                pairs[i] = None;
                free.push(i);
            }
        }
    }
}

fn add(ep: RawFd, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: token };
    check(
        unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) },
        "epoll_ctl",
    )?;
    Ok(())
}

/// Writes all of `data` to `fd`; returns how much was written (short: the socket is full).
fn write_some(fd: RawFd, data: &[u8]) -> Result<usize, ()> {
    let mut at = 0;
    while at < data.len() {
        let n = unsafe { libc::write(fd, data[at..].as_ptr().cast(), data.len() - at) };
        if n < 0 {
            return match io::Error::last_os_error().kind() {
                io::ErrorKind::WouldBlock => Ok(at),
                io::ErrorKind::Interrupted => continue,
                _ => Err(()),
            };
        }
        at += n as usize;
    }
    Ok(at)
}

/// Moves bytes from `p.fd[from]` to the other socket until the source is drained or the
/// destination full. False when a socket failed. `hup`: FIN came with this edge, so a short
/// read does not mean drained (read on to 0).
fn pump(p: &mut Pair, from: usize, buf: &mut [u8], hup: bool) -> bool {
    let to = 1 - from;
    if p.done[from] {
        return true;
    }
    if !p.pending[to].is_empty() {
        let Ok(w) = write_some(p.fd[to], &p.pending[to]) else {
            return false;
        };
        p.pending[to].drain(..w);
        if !p.pending[to].is_empty() {
            return true;
        }
    }
    loop {
        let n = unsafe { libc::read(p.fd[from], buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return match io::Error::last_os_error().kind() {
                io::ErrorKind::WouldBlock => true,
                io::ErrorKind::Interrupted => continue,
                _ => false,
            };
        }
        if n == 0 {
            unsafe { libc::shutdown(p.fd[to], libc::SHUT_WR) };
            p.done[from] = true;
            return true;
        }
        let n = n as usize;
        let Ok(w) = write_some(p.fd[to], &buf[..n]) else {
            return false;
        };
        if w < n {
            p.pending[to].extend_from_slice(&buf[w..n]);
            return true;
        }
        if n < buf.len() && !hup {
            // A short read drained the socket; the next bytes come with a new edge.
            return true;
        }
    }
}
