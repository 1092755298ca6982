//! The supervisor's line to each worker process: a `SOCK_SEQPACKET` socket pair (message
//! boundaries kept) that also carries descriptors (`SCM_RIGHTS`): listeners, the shared memory,
//! a configuration text. The same kind of pair carries a binary upgrade's listeners and
//! tunnels to the new process ([`crate::driver::upgrade`]), whose end is inherited across exec.

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Descriptors one message may carry (the kernel's SCM_MAX_FD is 253).
pub const MAX_FDS: usize = 250;
/// Largest message (the text part).
pub const MAX_MESSAGE: usize = 64 * 1024;

/// A connected pair, both ends close-on-exec (one end is handed to the child as its stdin,
/// which clears the flag on that copy only).
pub fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?)
}

/// Sends one message with `fds` attached. Never raises SIGPIPE: a dead peer is an error.
pub fn send(sock: impl AsFd, msg: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if msg.len() > MAX_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "control message too large",
        ));
    }
    send_large(sock, msg, fds)
}

/// [`send`] without the size limit of control messages: up to what the socket's send buffer
/// holds (see [`set_send_buffer`]; `EMSGSIZE` beyond).
pub fn send_large(sock: impl AsFd, msg: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if msg.is_empty() || fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "message empty or too many descriptors",
        ));
    }
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &cmsg };
    sendmsg::<()>(
        sock.as_fd().as_raw_fd(),
        &[IoSlice::new(msg)],
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    Ok(())
}

/// Asks for a send buffer of `bytes` (the kernel caps it at `net.core.wmem_max`, doubled); a
/// `SOCK_SEQPACKET` message may be about that large. Returns what the kernel granted.
pub fn set_send_buffer(sock: impl AsFd, bytes: usize) -> io::Result<usize> {
    let s = socket2::SockRef::from(&sock);
    s.set_send_buffer_size(bytes)?;
    s.send_buffer_size()
}

/// Lets a child process started after this call inherit `sock` (clears close-on-exec on this
/// descriptor; the parent closes its copy once the child runs).
pub fn inheritable(sock: &OwnedFd) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    fcntl(sock, FcntlArg::F_SETFD(FdFlag::empty()))?;
    Ok(())
}

/// Takes ownership of descriptor `raw`, inherited from the parent process that named it (a
/// binary upgrade's socket), after checking that it is a `SOCK_SEQPACKET` socket; marks it
/// close-on-exec again. Call once, at start, before any other thread opens descriptors.
pub fn adopt_inherited(raw: RawFd) -> io::Result<OwnedFd> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    if raw < 3 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("descriptor {raw} is a standard stream, not an upgrade socket"),
        ));
    }
    // Borrowed first: a number that names nothing, or something else, is refused untouched.
    // SAFETY: `raw` is only read through (F_GETFD) while this borrow lives; the parent left it
    // open for us, and F_GETFD fails cleanly (EBADF) if it is not open.
    let borrowed = unsafe { BorrowedFd::borrow_raw(raw) };
    fcntl(borrowed, FcntlArg::F_GETFD)?;
    let kind = nix::sys::socket::getsockopt(&borrowed, nix::sys::socket::sockopt::SockType)?;
    if kind != SockType::SeqPacket {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("descriptor {raw} is not the upgrade socket (not a SOCK_SEQPACKET socket)"),
        ));
    }
    // SAFETY: `raw` is open (checked above) and is the upgrade socket our parent passed across
    // exec for this process alone; nothing else in the process holds or closes that number, so
    // the new `OwnedFd` is its only owner.
    let owned = unsafe { OwnedFd::from_raw_fd(raw) };
    fcntl(&owned, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(owned)
}

/// Receives one message into `buf` (resized to it) and the descriptors that came with it.
/// `Ok(false)`: the peer is gone. A read timeout set with [`set_timeout`] shows as `WouldBlock`.
pub fn recv(sock: impl AsFd, buf: &mut Vec<u8>, fds: &mut Vec<OwnedFd>) -> io::Result<bool> {
    recv_up_to(sock, buf, fds, MAX_MESSAGE)
}

/// [`recv`] of a message of up to `max` bytes (a longer one is cut: size `max` to what the
/// sender sends, see [`send_large`]).
pub fn recv_up_to(
    sock: impl AsFd,
    buf: &mut Vec<u8>,
    fds: &mut Vec<OwnedFd>,
    max: usize,
) -> io::Result<bool> {
    buf.resize(max, 0);
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (n, got) = {
        let mut iov = [IoSliceMut::new(buf)];
        let msg = recvmsg::<()>(
            sock.as_fd().as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let mut got = Vec::new();
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                got.extend(raw);
            }
        }
        (msg.bytes, got)
    };
    for raw in got {
        // SAFETY: the kernel has just installed `raw` in our descriptor table for this message
        // (SCM_RIGHTS); nothing else in the process knows the number, so this is its only owner.
        fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
    }
    buf.truncate(n);
    Ok(n > 0)
}

/// Sets (or clears) the read timeout of one end.
pub fn set_timeout(sock: impl AsFd, timeout: Option<Duration>) -> io::Result<()> {
    socket2::SockRef::from(&sock).set_read_timeout(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn messages_keep_their_bounds_and_carry_descriptors() {
        let (a, b) = pair().expect("pair");
        let (r, w) = nix::unistd::pipe().expect("pipe");
        send(&a, b"first", &[w.as_fd()]).expect("send");
        send(&a, b"second", &[]).expect("send");
        drop(w);
        let (mut buf, mut fds) = (Vec::new(), Vec::new());
        assert!(recv(&b, &mut buf, &mut fds).expect("recv"));
        assert_eq!(buf, b"first");
        assert_eq!(fds.len(), 1);
        let mut passed = std::fs::File::from(fds.pop().expect("fd"));
        passed.write_all(b"through").expect("write");
        drop(passed);
        let mut got = String::new();
        std::fs::File::from(r)
            .read_to_string(&mut got)
            .expect("read");
        assert_eq!(got, "through");
        assert!(recv(&b, &mut buf, &mut fds).expect("recv"));
        assert_eq!(buf, b"second");
        assert!(fds.is_empty());
        set_timeout(&b, Some(Duration::from_millis(10))).expect("timeout");
        let e = recv(&b, &mut buf, &mut fds).expect_err("nothing sent");
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        drop(a);
        assert!(!recv(&b, &mut buf, &mut fds).expect("eof"));
    }
}
