//! Pipes for splice(2), and the per-worker pool that lends them out.
//!
//! A pipe is borrowed only while bytes are in flight and goes back to the pool only when empty
//! (HAProxy's `src/pipe.c` does the same): an idle tunnel holds no pipe at all.

use nix::fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// A non-blocking pipe: bytes go in at `w`, come out at `r`.
#[derive(Debug)]
pub struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
}

impl Pipe {
    /// A new pipe of (at least) `size` bytes. The size is best effort: if F_SETPIPE_SZ is refused
    /// (fs.pipe-max-size, or fs.pipe-user-pages-soft reached) the pipe keeps the kernel default.
    pub fn new(size: usize) -> io::Result<Pipe> {
        let (r, w) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        if size != 65536 {
            let _ = fcntl(
                &w,
                FcntlArg::F_SETPIPE_SZ(size.min(i32::MAX as usize) as i32),
            );
        }
        Ok(Pipe { r, w })
    }

    /// Moves up to `len` bytes from socket `from` into the pipe. `Ok(0)` is end of stream;
    /// `WouldBlock` means the socket is empty (the caller only fills empty pipes, so a full pipe
    /// cannot be the cause).
    pub fn fill(&self, from: impl AsFd, len: usize) -> io::Result<usize> {
        let flags = SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE;
        Ok(splice(from, None, &self.w, None, len, flags)?)
    }

    /// The pipe's read end (bytes come out here).
    pub fn reader(&self) -> BorrowedFd<'_> {
        self.r.as_fd()
    }

    /// The pipe's write end (bytes go in here).
    pub fn writer(&self) -> BorrowedFd<'_> {
        self.w.as_fd()
    }

    /// Reads the `len` bytes the pipe holds out into memory (a tunnel handed to another process
    /// takes them along). Fewer come back only if the pipe held fewer.
    pub fn read_out(&self, len: usize) -> io::Result<Vec<u8>> {
        let mut out = vec![0u8; len];
        let mut got = 0;
        while got < len {
            match nix::unistd::read(&self.r, &mut out[got..]) {
                Ok(0) | Err(nix::errno::Errno::EAGAIN) => break,
                Ok(n) => got += n,
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        out.truncate(got);
        Ok(out)
    }

    /// Moves up to `len` bytes from the pipe into socket `to`. `WouldBlock`: the socket is full.
    pub fn drain(&self, to: impl AsFd, len: usize) -> io::Result<usize> {
        let flags = SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE;
        Ok(splice(&self.r, None, to, None, len, flags)?)
    }
}

/// Pipe pool counters (per worker).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Pipes lent out now.
    pub in_use: usize,
    /// Empty pipes waiting in the pool.
    pub pooled: usize,
    /// Pipes ever created.
    pub created: u64,
    /// Times a pipe was wanted but none could be had (cap reached or creation failed).
    pub unavailable: u64,
}

/// A capped pool of empty pipes, owned by one worker thread.
#[derive(Debug)]
pub struct PipePool {
    free: Vec<Pipe>,
    size: usize,
    cap: usize,
    stats: PoolStats,
}

impl PipePool {
    /// A pool that lends at most `cap` pipes of `size` bytes at once.
    pub fn new(cap: usize, size: usize) -> PipePool {
        PipePool {
            free: Vec::new(),
            size,
            cap,
            stats: PoolStats::default(),
        }
    }

    /// Applies a reloaded configuration: pipes already lent keep their size.
    pub fn set_limits(&mut self, cap: usize, size: usize) {
        self.cap = cap;
        if size != self.size {
            self.size = size;
            self.free.clear();
            self.stats.pooled = 0;
        }
    }

    /// Closes the pooled (idle, empty) pipes: two fds and a kernel buffer each.
    pub fn release_idle(&mut self) {
        self.free.clear();
        self.free.shrink_to_fit();
        self.stats.pooled = 0;
    }

    /// Bytes one pipe holds (as configured).
    pub fn pipe_size(&self) -> usize {
        self.size
    }

    /// Lends an empty pipe, creating one if under the cap. `None`: use the copy path.
    #[inline]
    pub fn take(&mut self) -> Option<Pipe> {
        if let Some(p) = self.free.pop() {
            self.stats.in_use += 1;
            self.stats.pooled = self.free.len();
            return Some(p);
        }
        if self.stats.in_use >= self.cap {
            self.stats.unavailable += 1;
            return None;
        }
        match Pipe::new(self.size) {
            Ok(p) => {
                self.stats.in_use += 1;
                self.stats.created += 1;
                Some(p)
            }
            Err(_) => {
                self.stats.unavailable += 1;
                None
            }
        }
    }

    /// Takes back a pipe the caller has fully drained. Pipes beyond what the pool keeps are
    /// closed, so a burst does not pin descriptors forever.
    #[inline]
    pub fn give(&mut self, p: Pipe) {
        self.stats.in_use = self.stats.in_use.saturating_sub(1);
        // Keep at most a small reserve of idle pipes: each costs two fds and a kernel buffer.
        if self.free.len() < 64.min(self.cap) {
            self.free.push(p);
        }
        self.stats.pooled = self.free.len();
    }

    /// Closes a pipe that may still hold bytes (its connection died).
    pub fn discard(&mut self, p: Pipe) {
        self.stats.in_use = self.stats.in_use.saturating_sub(1);
        drop(p);
    }

    /// Counts a pipe the caller would not lend (a memory budget had no room for it).
    pub fn refused(&mut self) {
        self.stats.unavailable += 1;
    }

    pub fn stats(&self) -> PoolStats {
        self.stats
    }
}

/// The relay borrows pipes through this: it decides when, the pool owns the descriptors.
impl crate::core::relay::Pipes for PipePool {
    type Pipe = Pipe;

    fn take(&mut self) -> Option<Pipe> {
        PipePool::take(self)
    }

    fn give(&mut self, p: Pipe) {
        PipePool::give(self, p)
    }

    fn discard(&mut self, p: Pipe) {
        PipePool::discard(self, p)
    }

    fn pipe_size(&self) -> usize {
        PipePool::pipe_size(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn splices_socket_to_socket_through_a_pooled_pipe() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut a = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (b, _) = l.accept().expect("accept");
        let c_l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let c = TcpStream::connect(c_l.local_addr().expect("addr")).expect("connect");
        let (mut d, _) = c_l.accept().expect("accept");
        b.set_nonblocking(true).expect("nb");
        c.set_nonblocking(true).expect("nb");

        let mut pool = PipePool::new(1, 65536);
        let p = pool.take().expect("a pipe");
        assert!(pool.take().is_none(), "cap of one");
        assert_eq!(
            p.fill(&b, 65536).map_err(|e| e.kind()).err(),
            Some(io::ErrorKind::WouldBlock)
        );
        a.write_all(b"hello splice").expect("write");
        let mut n = 0;
        while n == 0 {
            n = match p.fill(&b, 65536) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(e) => panic!("{e}"),
            };
        }
        assert_eq!(p.drain(&c, n).expect("drain"), n);
        let mut got = [0u8; 12];
        d.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"hello splice");
        pool.give(p);
        assert_eq!(
            pool.stats(),
            PoolStats {
                in_use: 0,
                pooled: 1,
                created: 1,
                unavailable: 1
            }
        );
        drop(a);
        let p = pool.take().expect("reused");
        assert_eq!(p.fill(&b, 65536).expect("eof"), 0);
    }
}
