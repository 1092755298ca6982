//! Socket creation and tuning (socket2); the two calls socket2 has no wrapper for
//! (TCP_DEFER_ACCEPT, and SIOCINQ: the bytes waiting to be read).

use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::time::Duration;

/// A non-blocking SO_REUSEPORT listener: one per worker on the same address, so the kernel
/// spreads new connections across workers without a shared accept queue. `tuning`'s options
/// are set before it listens ([`tune_listener`]), so that no client it accepts misses them.
pub fn reuseport_listener(
    addr: SocketAddr,
    backlog: i32,
    tuning: &Tuning,
) -> io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // Best effort: a worker whose listener lacks them tunes each accepted socket instead.
    let _ = tune_listener(&s, tuning);
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(backlog)?;
    // Best effort: without it a silent client only costs an accept earlier.
    let _ = defer_accept(&s, DEFER_ACCEPT_SECS);
    Ok(s.into())
}

/// How long the kernel keeps a connection that has not sent a byte out of the accept queue.
/// Linux counts it in SYN-ACK retransmissions (1 s: one), after which the connection is accepted
/// anyway and the head timeout takes over.
pub const DEFER_ACCEPT_SECS: i32 = 1;

/// TCP_DEFER_ACCEPT: every client of ours speaks first (a request head, or a TLS ClientHello),
/// so the kernel completes the accept only once the first bytes arrived: a connection that
/// never sends costs no accept, no slab entry and no timer until the deferral runs out, and
/// the first read after accept finds the head already there.
pub fn defer_accept(l: &impl AsFd, secs: i32) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = l.as_fd();
    // SAFETY: `fd` is a valid socket borrowed for the call; the option value is a c_int on our
    // stack whose size we pass.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            &secs as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The listener's TCP_DEFER_ACCEPT, in seconds (the kernel reports it rounded to its
/// retransmission schedule); 0 when off.
pub fn deferred_accept_secs(l: &impl AsFd) -> io::Result<i32> {
    use std::os::fd::AsRawFd;
    let mut v: i32 = 0;
    let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
    // SAFETY: `l` is a valid socket borrowed for the call; `v` and `len` are ours and `len`
    // holds `v`'s size.
    let rc = unsafe {
        libc::getsockopt(
            l.as_fd().as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            &mut v as *mut i32 as *mut libc::c_void,
            &mut len,
        )
    };
    if rc == 0 {
        Ok(v)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Socket options applied to both sides of a tunnel: keepalive, Nagle, unsent bytes, buffers.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    /// None: keepalive off.
    pub keepalive: Option<(Duration, Duration, u32)>,
    /// Fixed (receive, send) buffer sizes in bytes as the kernel counts them (`sk_rcvbuf`,
    /// `sk_sndbuf`), under a memory budget; None: the kernel autotunes them.
    pub buffers: Option<(u64, u64)>,
    /// TCP_NOTSENT_LOWAT: unsent bytes a send queue may hold (`limits.max_unsent`); None: the
    /// kernel's default (no limit).
    pub notsent_lowat: Option<u32>,
}

/// TCP_NODELAY (frames are small and latency matters), keepalive, TCP_NOTSENT_LOWAT and fixed
/// buffer sizes.
pub fn tune(fd: impl AsFd, t: &Tuning) -> io::Result<()> {
    set_options(&SockRef::from(&fd), t)?;
    tune_buffers(fd, t)
}

/// [`tune`]'s TCP_NODELAY, keepalive and TCP_NOTSENT_LOWAT, set on a listener for the sockets
/// it accepts: Linux copies them into each accepted socket
/// (`tests::accepted_sockets_inherit_the_listeners_options` shows it on this kernel). Keepalive
/// and the unsent limit are switched off explicitly when `t` has none, as an earlier setting
/// would otherwise be inherited. Buffer sizes are not set here: once set they cannot be given
/// back to the kernel's autotuning, so they stay per socket ([`tune_buffers`]).
pub fn tune_listener(l: &impl AsFd, t: &Tuning) -> io::Result<()> {
    let s = SockRef::from(l);
    if t.keepalive.is_none() {
        s.set_keepalive(false)?;
    }
    if t.notsent_lowat.is_none() {
        // 0 is the kernel's default (net.ipv4.tcp_notsent_lowat), for a reload that removes it.
        s.set_tcp_notsent_lowat(0)?;
    }
    set_options(&s, t)
}

/// [`tune`]'s fixed buffer sizes, if any.
pub fn tune_buffers(fd: impl AsFd, t: &Tuning) -> io::Result<()> {
    if let Some((rcv, snd)) = t.buffers {
        let s = SockRef::from(&fd);
        // The kernel doubles what SO_RCVBUF/SO_SNDBUF ask for (room for its own overhead).
        s.set_recv_buffer_size((rcv / 2) as usize)?;
        s.set_send_buffer_size((snd / 2) as usize)?;
    }
    Ok(())
}

fn set_options(s: &SockRef<'_>, t: &Tuning) -> io::Result<()> {
    s.set_tcp_nodelay(true)?;
    if let Some((idle, interval, count)) = t.keepalive {
        let ka = TcpKeepalive::new()
            .with_time(idle)
            .with_interval(interval)
            .with_retries(count);
        s.set_tcp_keepalive(&ka)?;
    }
    if let Some(lowat) = t.notsent_lowat {
        s.set_tcp_notsent_lowat(lowat)?;
    }
    Ok(())
}

/// How many bytes wait in the socket's receive queue (SIOCINQ, alias FIONREAD), without reading
/// them: what the relay's `auto` mode decides splice or copy on.
pub fn queued(fd: impl AsFd) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: `fd` is a valid descriptor borrowed for the call; FIONREAD writes one c_int to
    // the pointer, which points at `n` on our stack.
    let rc = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::FIONREAD as _, &mut n) };
    if rc == 0 {
        Ok(n.max(0) as usize)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Half-closes the write side: our FIN toward the peer.
pub fn shutdown_write(fd: impl AsFd) -> io::Result<()> {
    SockRef::from(&fd).shutdown(std::net::Shutdown::Write)
}

/// Accepts one client as a non-blocking, close-on-exec socket in one syscall (accept4).
pub fn accept_nonblocking(
    l: &std::net::TcpListener,
) -> io::Result<(std::net::TcpStream, SocketAddr)> {
    let (s, addr) = SockRef::from(l).accept4(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)?;
    let addr = addr
        .as_socket()
        .ok_or_else(|| io::Error::other("accepted a socket that is not TCP/IP"))?;
    Ok((s.into(), addr))
}

/// A non-blocking, close-on-exec TCP socket for connecting to `addr` (an io_uring connect).
pub fn stream_socket(addr: SocketAddr) -> io::Result<std::net::TcpStream> {
    let s = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    Ok(s.into())
}

/// Starts a non-blocking connect to `addr`; completion is reported as writability.
pub fn connect_nonblocking(addr: SocketAddr) -> io::Result<std::net::TcpStream> {
    let s = Socket::from(stream_socket(addr)?);
    match s.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(s.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    /// What `Worker::tune_listeners` relies on: a socket accepted from a tuned listener has
    /// the listener's TCP_NODELAY and keepalive settings (real loopback sockets, this kernel).
    #[test]
    fn accepted_sockets_inherit_the_listeners_options() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let on = Tuning {
            keepalive: Some((Duration::from_secs(7), Duration::from_secs(3), 4)),
            buffers: None,
            notsent_lowat: Some(96 << 10),
        };
        tune_listener(&l, &on).expect("tune the listener");
        let addr = l.local_addr().expect("addr");
        let _client = TcpStream::connect(addr).expect("connect");
        let (accepted, _) = l.accept().expect("accept");
        let s = SockRef::from(&accepted);
        assert!(
            s.tcp_nodelay().expect("nodelay"),
            "TCP_NODELAY not inherited"
        );
        assert!(
            s.keepalive().expect("keepalive"),
            "SO_KEEPALIVE not inherited"
        );
        assert_eq!(
            s.tcp_keepalive_time().expect("idle"),
            Duration::from_secs(7)
        );
        assert_eq!(
            s.tcp_keepalive_interval().expect("intvl"),
            Duration::from_secs(3)
        );
        assert_eq!(s.tcp_keepalive_retries().expect("cnt"), 4);
        assert_eq!(
            s.tcp_notsent_lowat().expect("lowat"),
            96 << 10,
            "TCP_NOTSENT_LOWAT not inherited"
        );

        // A reload that switches keepalive and the unsent limit off: later clients must not
        // inherit the old ones.
        let off = Tuning {
            keepalive: None,
            buffers: None,
            notsent_lowat: None,
        };
        tune_listener(&l, &off).expect("tune the listener again");
        let _client = TcpStream::connect(addr).expect("connect");
        let (accepted, _) = l.accept().expect("accept");
        let s = SockRef::from(&accepted);
        assert!(
            !s.keepalive().expect("keepalive"),
            "keepalive still inherited"
        );
        assert_eq!(
            s.tcp_notsent_lowat().expect("lowat"),
            0,
            "the unsent limit still inherited (0 is the kernel's default)"
        );
        assert!(s.tcp_nodelay().expect("nodelay"));
    }
}
