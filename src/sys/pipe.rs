//! Pipes for splice(2), and the per-worker pool that lends them out.
//!
//! A pipe is borrowed only while bytes are in flight and goes back to the pool only when empty
//! (HAProxy's `src/pipe.c` does the same): an idle tunnel holds no pipe at all.

use crate::core::relay::KERNEL_PIPE;
use nix::fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags};
use std::cmp::Ordering;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// A non-blocking pipe: bytes go in at `w`, come out at `r`.
#[derive(Debug)]
pub struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
    /// What it is (a byte: the pipe sits in an idle-free slab entry while bytes are in flight).
    kind: Kind,
}

/// A pipe's size as the pool sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Kind {
    /// The kernel's 64 KiB: asked for, or F_SETPIPE_SZ refused.
    Kernel,
    /// Larger than the kernel's: it counts against the pool's large pipes.
    Large,
    /// Smaller than the kernel's, as configured.
    Small,
}

impl Pipe {
    /// A new pipe of (at least) `size` bytes. The size is best effort: if F_SETPIPE_SZ is refused
    /// (fs.pipe-max-size, or fs.pipe-user-pages-soft reached) the pipe keeps the kernel default.
    pub fn new(size: usize) -> io::Result<Pipe> {
        let (r, w) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        let mut granted = KERNEL_PIPE;
        if size != KERNEL_PIPE {
            if let Ok(n) = fcntl(
                &w,
                FcntlArg::F_SETPIPE_SZ(size.min(i32::MAX as usize) as i32),
            ) {
                granted = n as usize;
            }
        }
        let kind = match granted {
            n if n > KERNEL_PIPE => Kind::Large,
            n if n < KERNEL_PIPE => Kind::Small,
            _ => Kind::Kernel,
        };
        Ok(Pipe { r, w, kind })
    }

    /// What the kernel says the pipe holds (F_GETPIPE_SZ).
    pub fn capacity(&self) -> io::Result<usize> {
        Ok(fcntl(&self.w, FcntlArg::F_GETPIPE_SZ)? as usize)
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
    /// Of the pipes lent or pooled, those larger than the kernel's 64 KiB.
    pub large: usize,
    /// Pipes ever created.
    pub created: u64,
    /// Times a pipe was wanted but none could be had (cap reached or creation failed).
    pub unavailable: u64,
}

/// Idle pipes a pool keeps at most: each costs two fds and a kernel buffer.
const RESERVE: usize = 64;

/// A capped pool of empty pipes, owned by one worker thread.
///
/// Pipes are made `size` bytes while fewer than `large_cap` such pipes (larger than the
/// kernel's 64 KiB) are lent or pooled, and of the kernel's size past that
/// ([`crate::core::relay::large_pipes`]: the kernel's per-user pipe pages). A tunnel is lent a
/// pooled large pipe first, then a new one while the cap allows, then a kernel-sized one.
#[derive(Debug)]
pub struct PipePool {
    /// Empty pipes of `size`.
    free: Vec<Pipe>,
    /// Empty pipes of the kernel's size, made past `large_cap` (only while `size` is larger).
    spare: Vec<Pipe>,
    size: usize,
    cap: usize,
    large_cap: usize,
    stats: PoolStats,
}

impl PipePool {
    /// A pool that lends at most `cap` pipes at once, of `size` bytes while at most `large_cap`
    /// of them are larger than the kernel's.
    pub fn new(cap: usize, size: usize, large_cap: usize) -> PipePool {
        PipePool {
            free: Vec::new(),
            spare: Vec::new(),
            size,
            cap,
            large_cap,
            stats: PoolStats::default(),
        }
    }

    /// Applies a reloaded configuration: pipes already lent keep their size.
    pub fn set_limits(&mut self, cap: usize, size: usize, large_cap: usize) {
        self.cap = cap;
        self.large_cap = large_cap;
        if size != self.size {
            self.size = size;
            self.release_idle();
        }
    }

    /// Closes the pooled (idle, empty) pipes: two fds and a kernel buffer each.
    pub fn release_idle(&mut self) {
        let large = self.free.iter().filter(|p| p.kind == Kind::Large).count();
        self.stats.large = self.stats.large.saturating_sub(large);
        self.free = Vec::new();
        self.spare = Vec::new();
        self.stats.pooled = 0;
    }

    /// Bytes one pipe holds (as configured; one made past the large cap holds 64 KiB, and a
    /// splice into it simply moves less).
    pub fn pipe_size(&self) -> usize {
        self.size
    }

    /// Lends an empty pipe, creating one if under the cap. `None`: use the copy path.
    #[inline]
    pub fn take(&mut self) -> Option<Pipe> {
        if let Some(p) = self.free.pop() {
            return Some(self.lend(p));
        }
        if self.stats.in_use >= self.cap {
            self.stats.unavailable += 1;
            return None;
        }
        let size = if self.size <= KERNEL_PIPE || self.stats.large < self.large_cap {
            self.size
        } else if let Some(p) = self.spare.pop() {
            return Some(self.lend(p));
        } else {
            KERNEL_PIPE
        };
        match Pipe::new(size) {
            Ok(p) => {
                self.stats.created += 1;
                self.stats.large += usize::from(p.kind == Kind::Large);
                Some(self.lend(p))
            }
            Err(_) => {
                self.stats.unavailable += 1;
                None
            }
        }
    }

    #[inline]
    fn lend(&mut self, p: Pipe) -> Pipe {
        self.stats.in_use += 1;
        self.stats.pooled = self.free.len() + self.spare.len();
        p
    }

    /// Takes back a pipe the caller has fully drained. Pipes beyond what the pool keeps are
    /// closed, so a burst does not pin descriptors forever, and so are pipes of a kind no
    /// longer configured.
    #[inline]
    pub fn give(&mut self, p: Pipe) {
        self.stats.in_use = self.stats.in_use.saturating_sub(1);
        if self.free.len() + self.spare.len() < RESERVE.min(self.cap) {
            // Pooled if of the kind now configured (a large pipe of an earlier large size too);
            // after a reload across the kernel's size, the other kind is closed.
            match (p.kind, self.size.cmp(&KERNEL_PIPE)) {
                (Kind::Large, Ordering::Greater) => self.free.push(p),
                (Kind::Kernel, Ordering::Greater) => self.spare.push(p),
                (Kind::Kernel, Ordering::Equal) => self.free.push(p),
                (Kind::Small, Ordering::Less) => self.free.push(p),
                _ => self.close(p),
            }
        } else if p.kind == Kind::Large && self.size > KERNEL_PIPE && !self.spare.is_empty() {
            // The reserve is full: a large pipe stays in place of a kernel-sized one, so that
            // after a burst the pool keeps the pipes bulk tunnels want.
            self.spare.pop();
            self.free.push(p);
        } else {
            self.close(p);
        }
        self.stats.pooled = self.free.len() + self.spare.len();
    }

    /// Closes a pipe that may still hold bytes (its connection died).
    pub fn discard(&mut self, p: Pipe) {
        self.stats.in_use = self.stats.in_use.saturating_sub(1);
        self.close(p);
    }

    fn close(&mut self, p: Pipe) {
        self.stats.large = self
            .stats
            .large
            .saturating_sub(usize::from(p.kind == Kind::Large));
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

        let mut pool = PipePool::new(1, 65536, usize::MAX);
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
                large: 0,
                created: 1,
                unavailable: 1
            }
        );
        drop(a);
        let p = pool.take().expect("reused");
        assert_eq!(p.fill(&b, 65536).expect("eof"), 0);
    }

    #[test]
    fn pipes_are_large_up_to_the_cap_then_the_kernels_size() {
        let large = 256 << 10;
        let mut pool = PipePool::new(10, large, 2);
        let a = pool.take().expect("a pipe");
        let b = pool.take().expect("a pipe");
        let c = pool.take().expect("a pipe");
        let sizes = |ps: &[&Pipe]| -> Vec<usize> {
            ps.iter()
                .map(|p| p.capacity().expect("F_GETPIPE_SZ"))
                .collect()
        };
        assert_eq!(sizes(&[&a, &b, &c]), [large, large, KERNEL_PIPE]);
        assert_eq!(pool.stats().large, 2);
        assert_eq!(
            pool.pipe_size(),
            large,
            "the relay asks for up to the configured size"
        );

        // A large pipe comes back and is lent before the kernel-sized one.
        pool.give(a);
        pool.give(c);
        assert_eq!((pool.stats().pooled, pool.stats().large), (2, 2));
        let a = pool.take().expect("pooled");
        assert_eq!(a.capacity().expect("size"), large);
        // The cap is reached (a and b are lent): the pooled kernel-sized pipe, not a new one.
        let c = pool.take().expect("pooled");
        assert_eq!(c.capacity().expect("size"), KERNEL_PIPE);
        assert_eq!(pool.stats().created, 3);

        // A large pipe closed (its tunnel died) frees its place under the cap.
        pool.discard(b);
        assert_eq!(pool.stats().large, 1);
        let d = pool.take().expect("new");
        assert_eq!(d.capacity().expect("size"), large);
        assert_eq!((pool.stats().large, pool.stats().in_use), (2, 3));

        // With the reserve full of kernel-sized pipes, a large one returned replaces one of them.
        let mut small = PipePool::new(100, large, 1);
        let big = small.take().expect("large");
        let kernel: Vec<Pipe> = (0..RESERVE)
            .map(|_| small.take().expect("64 KiB"))
            .collect();
        for p in kernel {
            small.give(p);
        }
        assert_eq!((small.stats().pooled, small.stats().large), (RESERVE, 1));
        small.give(big);
        assert_eq!((small.stats().pooled, small.stats().large), (RESERVE, 1));
        let again = small.take().expect("pooled");
        assert_eq!(
            again.capacity().expect("size"),
            large,
            "the large one was kept"
        );

        // A reload to the kernel's size: large pipes lent now are closed when they come back.
        pool.set_limits(10, KERNEL_PIPE, usize::MAX);
        pool.give(a);
        pool.give(d);
        pool.give(c);
        assert_eq!((pool.stats().large, pool.stats().pooled), (0, 1));
        let c = pool.take().expect("pooled");
        assert_eq!(c.capacity().expect("size"), KERNEL_PIPE);
    }
}
