//! io_uring: one ring per worker thread, its ring of provided buffers, and the operations
//! wsplice submits. This is the only place that hands the kernel addresses; the driver above it
//! ([`crate::driver::uring`]) is safe code that speaks in file descriptors, tokens and buffer
//! ids.
//!
//! Memory the kernel may touch after a call returns is never freed while it might: the
//! provided buffers are allocated once per worker and never given back (the kernel may still
//! write into them while a closed ring's requests are torn down, which it does asynchronously),
//! and bytes or addresses an operation needs live in the ring's own table until its completion
//! is reaped (or are leaked with the ring if it is dropped with operations in flight).
//!
//! ```text
//!   Ring::recv ─▶ kernel picks a free buffer of the BufRing when bytes come ─▶ CQE (buffer id)
//!   BufRing::bytes(id) ─▶ the relay sends from it (Ring::send_buf) ─▶ BufRing::give_back(id)
//!   BufRing::flush ─▶ the buffer is the kernel's again
//! ```

mod buf_ring;

pub use buf_ring::BufRing;
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use slab::Slab;
use std::alloc::{alloc_zeroed, Layout};
use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

/// Bits of a completion's user data that belong to the caller's token; the low
/// [`AUX_BITS`] are the ring's (an owned-memory slot or a buffer id).
pub const TOKEN_BITS: u32 = 44;
const AUX_BITS: u32 = 20;
const AUX_MASK: u64 = (1 << AUX_BITS) - 1;
/// The aux field names a slot of [`Ring::owned`].
const AUX_OWNED: u64 = 1 << (AUX_BITS - 1);
/// User data of operations whose completions nobody reads (cancel, close).
pub const TOKEN_IGNORED: u64 = (1 << TOKEN_BITS) - 1;

/// How the ring was set up, best first; the worker reports it at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    /// `SINGLE_ISSUER | DEFER_TASKRUN` (6.1): completions are processed only when the worker
    /// asks for them, on its own thread, without interrupting it.
    DeferTaskrun,
    /// `COOP_TASKRUN` (5.19): task work waits for the next kernel entry instead of an IPI.
    CoopTaskrun,
    /// Neither.
    Plain,
}

impl Setup {
    pub fn as_str(self) -> &'static str {
        match self {
            Setup::DeferTaskrun => "single_issuer+defer_taskrun",
            Setup::CoopTaskrun => "coop_taskrun",
            Setup::Plain => "plain",
        }
    }
}

/// A completion, with the ring's bookkeeping done.
#[derive(Debug)]
pub struct Completion {
    pub token: u64,
    /// For [`Ring::send_buf`]: the buffer id sent from.
    pub aux: u32,
    pub res: i32,
    pub flags: u32,
}

impl Completion {
    /// The provided buffer the kernel filled, if any.
    pub fn buffer(&self) -> Option<u16> {
        cqueue::buffer_select(self.flags)
    }

    /// The kernel keeps filling that buffer (incremental consumption).
    pub fn buffer_more(&self) -> bool {
        cqueue::buffer_more(self.flags)
    }

    /// A multishot request stays armed.
    pub fn more(&self) -> bool {
        cqueue::more(self.flags)
    }

    /// The result as `io::Result`.
    pub fn result(&self) -> io::Result<usize> {
        if self.res < 0 {
            Err(io::Error::from_raw_os_error(-self.res))
        } else {
            Ok(self.res as usize)
        }
    }
}

/// Ring counters (per worker).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RingStats {
    /// Submission queue entries the kernel consumed.
    pub submitted: u64,
    /// Completion queue entries reaped.
    pub completed: u64,
    /// `io_uring_enter` calls that waited for completions (one per loop iteration).
    pub waits: u64,
}

/// What an operation in flight needs to find at its address.
enum Owned {
    Bytes(#[allow(dead_code)] Vec<u8>),
    Addr(#[allow(dead_code)] Box<socket2::SockAddr>),
}

/// One worker's ring.
pub struct Ring {
    ring: IoUring,
    owned: Slab<Owned>,
    setup: Setup,
    stats: RingStats,
}

/// Opcodes the driver uses: if the kernel lacks one, the driver cannot run.
const NEEDED: [(u8, &str); 6] = [
    (opcode::Recv::CODE, "recv"),
    (opcode::Send::CODE, "send"),
    (opcode::Connect::CODE, "connect"),
    (opcode::Close::CODE, "close"),
    (opcode::PollAdd::CODE, "poll_add"),
    (opcode::AsyncCancel::CODE, "async_cancel"),
];

impl Ring {
    /// A ring of `entries` submission slots (four times as many completion slots), with the
    /// best setup the kernel takes. Must be called on the thread that will use it
    /// (`SINGLE_ISSUER`).
    pub fn new(entries: u32) -> io::Result<Ring> {
        let cq = entries.saturating_mul(4);
        let mut last = None;
        for setup in [Setup::DeferTaskrun, Setup::CoopTaskrun, Setup::Plain] {
            let mut b = IoUring::builder();
            b.setup_cqsize(cq).setup_submit_all();
            match setup {
                Setup::DeferTaskrun => {
                    b.setup_single_issuer().setup_defer_taskrun();
                }
                Setup::CoopTaskrun => {
                    b.setup_coop_taskrun();
                }
                Setup::Plain => {}
            }
            match b.build(entries) {
                Ok(ring) => {
                    let r = Ring {
                        ring,
                        owned: Slab::new(),
                        setup,
                        stats: RingStats::default(),
                    };
                    r.check()?;
                    return Ok(r);
                }
                // EINVAL: an unknown flag (an older kernel); try the next setup. Anything
                // else (EPERM, ENOSYS, ENOMEM) will not get better.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no ring setup worked")))
    }

    /// Checks that the kernel has every opcode and feature the driver uses.
    fn check(&self) -> io::Result<()> {
        let mut probe = io_uring::Probe::new();
        self.ring.submitter().register_probe(&mut probe)?;
        let missing: Vec<&str> = NEEDED
            .iter()
            .filter(|(code, _)| !probe.is_supported(*code))
            .map(|(_, name)| *name)
            .collect();
        if !missing.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("the kernel's io_uring lacks {}", missing.join(", ")),
            ));
        }
        let p = self.ring.params();
        if !p.is_feature_ext_arg() || !p.is_feature_nodrop() || !p.is_feature_fast_poll() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the kernel's io_uring lacks EXT_ARG, NODROP or FAST_POLL (Linux 5.11 or later)",
            ));
        }
        Ok(())
    }

    pub fn setup(&self) -> Setup {
        self.setup
    }

    pub fn stats(&self) -> RingStats {
        self.stats
    }

    /// Queues `e`, its completion to be reported for `token` (with `aux`: what it owns).
    fn push(&mut self, e: squeue::Entry, token: u64, aux: u64) {
        let e = e.user_data(Ring::user_data(token, aux));
        // SAFETY: every entry is built by the methods below, whose pointers stay valid until
        // the completion is reaped: 'static provided buffers, or memory in `self.owned`.
        let pushed = unsafe { self.ring.submission().push(&e) };
        if pushed.is_err() {
            // The queue is full: hand it to the kernel to make room.
            if let Err(err) = self.submit() {
                eprintln!("wsplice: io_uring submit failed with a full queue: {err}");
            }
            // SAFETY: as above.
            let again = unsafe { self.ring.submission().push(&e) };
            if again.is_err() {
                eprintln!("wsplice: io_uring submission queue still full; an operation is lost");
            }
        }
    }

    fn own(&mut self, o: Owned) -> u64 {
        let slot = self.owned.insert(o) as u64;
        debug_assert!(slot < AUX_OWNED, "too many operations with owned memory");
        AUX_OWNED | slot
    }

    fn user_data(token: u64, aux: u64) -> u64 {
        debug_assert!(token <= TOKEN_IGNORED && aux <= AUX_MASK);
        (token << AUX_BITS) | aux
    }

    /// Receives up to `len` bytes into a buffer the kernel picks from `group` when they come.
    pub fn recv(&mut self, fd: BorrowedFd<'_>, len: u32, group: u16, token: u64) {
        let e = opcode::Recv::new(types::Fd(fd.as_raw_fd()), std::ptr::null_mut(), len)
            .buf_group(group)
            .build()
            .flags(squeue::Flags::BUFFER_SELECT);
        self.push(e, token, 0);
    }

    /// Receives from `fd` until cancelled, an error, FIN, no free buffer or `total` bytes
    /// (multishot, Linux 6.0; the byte limit Linux 6.17, see [`can_cap_multishot`]): one
    /// completion per arrival, each in a buffer the kernel picks from `group`, with
    /// `IORING_CQE_F_MORE` while it stays armed. Without a limit (`total` 0) a socket with much
    /// waiting takes many buffers in one go (the kernel retries up to 32 times per run); with
    /// one, the arrival that reaches it is the last (it may pass it by up to one buffer).
    pub fn recv_multi(&mut self, fd: BorrowedFd<'_>, group: u16, total: u32, token: u64) {
        let e = opcode::RecvMulti::new(types::Fd(fd.as_raw_fd()), group).build();
        self.push(with_optlen(e, total), token, 0);
    }

    /// Cancels the operation submitted with `token` (and no owned memory: a receive).
    pub fn cancel(&mut self, token: u64) {
        let e = opcode::AsyncCancel::new(Ring::user_data(token, 0))
            .build()
            .flags(squeue::Flags::SKIP_SUCCESS);
        self.push(e, TOKEN_IGNORED, 0);
    }

    /// Sends `len` bytes at `from` of buffer `id` (the caller got it from a receive). False when
    /// the buffer is not the caller's or the range is outside it: nothing is submitted.
    pub fn send_buf(
        &mut self,
        bufs: &BufRing,
        fd: BorrowedFd<'_>,
        id: u16,
        from: u32,
        len: u32,
        token: u64,
    ) -> bool {
        let Some(ptr) = bufs.begin_send(id, from, len) else {
            return false;
        };
        let e = opcode::Send::new(types::Fd(fd.as_raw_fd()), ptr, len)
            .flags(libc::MSG_NOSIGNAL)
            .build();
        self.push(e, token, id as u64);
        true
    }

    /// Sends a copy of `bytes` (the ring keeps it until the send completes).
    pub fn send_copy(&mut self, fd: BorrowedFd<'_>, bytes: &[u8], token: u64) {
        let copy = bytes.to_vec();
        let (ptr, len) = (copy.as_ptr(), copy.len().min(u32::MAX as usize) as u32);
        // Moving the Vec into the table does not move its heap bytes.
        let aux = self.own(Owned::Bytes(copy));
        let e = opcode::Send::new(types::Fd(fd.as_raw_fd()), ptr, len)
            .flags(libc::MSG_NOSIGNAL)
            .build();
        self.push(e, token, aux);
    }

    /// Connects `fd` to `addr`.
    pub fn connect(&mut self, fd: BorrowedFd<'_>, addr: SocketAddr, token: u64) {
        let addr = Box::new(socket2::SockAddr::from(addr));
        let (ptr, len) = (addr.as_ptr().cast::<libc::sockaddr>(), addr.len());
        let aux = self.own(Owned::Addr(addr));
        let e = opcode::Connect::new(types::Fd(fd.as_raw_fd()), ptr, len).build();
        self.push(e, token, aux);
    }

    /// One completion when `fd` has any of `mask` (`POLLIN`, `POLLOUT`; errors and hang-ups
    /// always count).
    pub fn poll(&mut self, fd: BorrowedFd<'_>, mask: u32, token: u64) {
        let e = opcode::PollAdd::new(types::Fd(fd.as_raw_fd()), mask).build();
        self.push(e, token, 0);
    }

    /// A completion each time `fd` gets any of `mask`, until cancelled (multishot poll).
    pub fn poll_multi(&mut self, fd: BorrowedFd<'_>, mask: u32, token: u64) {
        let e = opcode::PollAdd::new(types::Fd(fd.as_raw_fd()), mask)
            .multi(true)
            .build();
        self.push(e, token, 0);
    }

    /// Moves up to `len` bytes from `from` to `to` (one of them a pipe) with
    /// `IORING_OP_SPLICE`. The driver does not use it (the kernel runs it on an io-wq thread);
    /// `examples/uring_splice.rs` measures it against splice(2).
    pub fn splice(&mut self, from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: u32, token: u64) {
        let e = opcode::Splice::new(
            types::Fd(from.as_raw_fd()),
            -1,
            types::Fd(to.as_raw_fd()),
            -1,
            len,
        )
        .flags(libc::SPLICE_F_MOVE)
        .build();
        self.push(e, token, 0);
    }

    /// Cancels every operation in flight on `fd`; then closes it. Both are submitted with the
    /// next batch, after what was queued before them, so the descriptor number cannot be
    /// reused by an accept before its queued operations were issued.
    pub fn cancel_and_close(&mut self, fd: OwnedFd) {
        let raw = fd.into_raw_fd();
        let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(raw)).all())
            .build()
            .flags(squeue::Flags::SKIP_SUCCESS);
        self.push(cancel, TOKEN_IGNORED, 0);
        let close = opcode::Close::new(types::Fd(raw))
            .build()
            .flags(squeue::Flags::SKIP_SUCCESS);
        self.push(close, TOKEN_IGNORED, 0);
    }

    /// Cancels every operation in flight on `fd`, which stays open.
    pub fn cancel_fd(&mut self, fd: BorrowedFd<'_>) {
        let cancel =
            opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(fd.as_raw_fd())).all())
                .build()
                .flags(squeue::Flags::SKIP_SUCCESS);
        self.push(cancel, TOKEN_IGNORED, 0);
    }

    /// Hands the queued entries to the kernel without waiting.
    pub fn submit(&mut self) -> io::Result<usize> {
        let n = self.ring.submit()?;
        self.stats.submitted += n as u64;
        Ok(n)
    }

    /// Submits what is queued and waits for at least one completion, at most `timeout`
    /// (`None`: until one comes).
    pub fn submit_and_wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.stats.waits += 1;
        let res = match timeout {
            None => self.ring.submit_and_wait(1),
            Some(t) => {
                let ts = types::Timespec::from(t);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
        };
        match res {
            Ok(n) => {
                self.stats.submitted += n as u64;
                Ok(())
            }
            // Timed out, or a signal: the caller's loop goes on either way. (A timeout still
            // submitted the queue; EBUSY asks us to reap completions first.)
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Moves the completions into `out`, freeing what their operations owned.
    pub fn reap(&mut self, out: &mut Vec<Completion>) {
        for cqe in self.ring.completion() {
            let ud = cqe.user_data();
            let aux = ud & AUX_MASK;
            let token = ud >> AUX_BITS;
            let mut aux_out = 0;
            if aux & AUX_OWNED != 0 {
                let slot = (aux & !AUX_OWNED) as usize;
                self.owned.try_remove(slot);
            } else {
                aux_out = aux as u32;
            }
            self.stats.completed += 1;
            if token == TOKEN_IGNORED {
                continue;
            }
            out.push(Completion {
                token,
                aux: aux_out,
                res: cqe.result(),
                flags: cqe.flags(),
            });
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // The kernel tears a closed ring's requests down asynchronously: bytes a send still
        // points to must outlive it.
        std::mem::forget(std::mem::take(&mut self.owned));
    }
}

/// Byte offset of the SQE's `optlen` (a `u32` in a union with `file_index`, see
/// include/uapi/linux/io_uring.h), which a multishot `IORING_OP_RECV` reads as the total byte
/// limit (`mshot_total_len`, Linux 6.17). The io-uring crate has no setter for it on `RecvMulti`.
const SQE_OPTLEN: usize = 44;
const _: () = assert!(std::mem::size_of::<squeue::Entry>() == 64);

/// `e` with its `optlen` field set to `v`.
fn with_optlen(mut e: squeue::Entry, v: u32) -> squeue::Entry {
    let p = std::ptr::addr_of_mut!(e).cast::<u8>();
    // SAFETY: `squeue::Entry` is `#[repr(C)]` around the kernel's 64-byte `io_uring_sqe` (size
    // asserted above; the crate's bindgen tests pin its layout), so bytes 44..48 are its
    // `optlen`/`file_index` u32: plain data inside `e`, written unaligned.
    unsafe { p.add(SQE_OPTLEN).cast::<u32>().write_unaligned(v) };
    e
}

/// Whether this kernel limits a multishot receive's total bytes (Linux 6.17): a limited
/// receive is armed on a socket pair and cancelled; a kernel without the limit refuses it at
/// once (EINVAL: it took the field for a file index). Asked once per process.
pub fn can_cap_multishot() -> bool {
    static CAN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CAN.get_or_init(|| {
        Ring::new(8)
            .and_then(|mut r| r.capped_recv_works())
            .unwrap_or(false)
    })
}

impl Ring {
    /// See [`can_cap_multishot`]; run on a ring with nothing else in flight.
    fn capped_recv_works(&mut self) -> io::Result<bool> {
        const PROBE: u64 = TOKEN_IGNORED - 1;
        let (_a, b) = std::os::unix::net::UnixStream::pair()?;
        // Group 0 need not exist: a receive picks its buffer only when bytes come.
        self.recv_multi(b.as_fd(), 0, 1, PROBE);
        self.cancel(PROBE);
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        let mut out = Vec::new();
        while std::time::Instant::now() < deadline {
            self.submit_and_wait(Some(Duration::from_millis(50)))?;
            self.reap(&mut out);
            if let Some(c) = out.iter().find(|c| c.token == PROBE) {
                return Ok(c.res != -libc::EINVAL);
            }
        }
        Ok(false)
    }
}

/// Whether this process may use io_uring here, and how: a throwaway ring with a buffer ring,
/// as each worker will build. The error says why not (old kernel, `kernel.io_uring_disabled`,
/// a seccomp profile).
pub fn probe() -> io::Result<Setup> {
    let ring = Ring::new(8).map_err(|e| {
        let hint = match e.raw_os_error() {
            Some(libc::ENOSYS) => " (no io_uring in this kernel, or a seccomp profile hides it)",
            Some(libc::EPERM) => {
                " (kernel.io_uring_disabled forbids it, or a seccomp profile refuses it)"
            }
            _ => "",
        };
        io::Error::new(e.kind(), format!("io_uring_setup: {e}{hint}"))
    })?;
    // Buffer rings (Linux 5.19); this probe leaks one page and a one-byte buffer.
    BufRing::new(&ring, 0, 1, 1).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("io_uring buffer rings (Linux 5.19) are unavailable: {e}"),
        )
    })?;
    Ok(ring.setup())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let a = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (b, _) = l.accept().expect("accept");
        a.set_nonblocking(true).expect("nb");
        b.set_nonblocking(true).expect("nb");
        (a, b)
    }

    /// A small ring and a buffer ring of two 64-byte buffers (group 1); `None`, said on stderr,
    /// where io_uring is unavailable.
    fn ring_with_buffers() -> Option<(Ring, BufRing)> {
        let Ok(ring) = Ring::new(8) else {
            eprintln!("io_uring unavailable here: skipped");
            return None;
        };
        let bufs = BufRing::new(&ring, 1, 2, 64).expect("buffer ring");
        Some((ring, bufs))
    }

    fn wait(ring: &mut Ring) -> Vec<Completion> {
        let mut out = Vec::new();
        while out.is_empty() {
            ring.submit_and_wait(Some(Duration::from_secs(5)))
                .expect("wait");
            ring.reap(&mut out);
        }
        out
    }

    /// A receive on a non-blocking socket waits for bytes (io_uring polls for it) and takes a
    /// provided buffer only then; the send goes straight from that buffer.
    #[test]
    fn receive_into_a_provided_buffer_and_send_from_it() {
        let Some((mut ring, bufs)) = ring_with_buffers() else {
            return;
        };
        let (mut a, b) = pair();
        let (c, mut d) = pair();
        ring.recv(b.as_fd(), 64, bufs.group(), 7);
        ring.submit().expect("submit");
        let mut early = Vec::new();
        ring.reap(&mut early);
        assert!(early.is_empty(), "the receive waits for bytes: {early:?}");
        assert_eq!(bufs.in_use(), 0, "a waiting receive holds no buffer");
        a.write_all(b"hello ring").expect("write");
        let done = wait(&mut ring);
        assert_eq!(done.len(), 1);
        assert_eq!((done[0].token, done[0].res), (7, 10));
        let id = done[0].buffer().expect("a provided buffer");
        let at = bufs
            .arrived(id, 10, done[0].buffer_more())
            .expect("the kernel's buffer");
        assert_eq!(at, 0);
        assert_eq!(bufs.bytes(id, 0, 10), Some(&b"hello ring"[..]));
        assert_eq!(bufs.bytes(id, 0, 11), None, "only what arrived");
        assert!(ring.send_buf(&bufs, c.as_fd(), id, 6, 4, 8));
        bufs.give_back(id);
        bufs.flush();
        assert_eq!(bufs.in_use(), 1, "not back while the send is in flight");
        let sent = wait(&mut ring);
        assert_eq!((sent[0].token, sent[0].res, sent[0].aux), (8, 4, id as u32));
        bufs.end_send(id);
        bufs.flush();
        assert_eq!(bufs.in_use(), 0);
        let mut got = [0u8; 4];
        d.set_nonblocking(false).expect("blocking");
        d.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"ring");
    }

    /// One multishot receive reports every arrival; with incremental consumption (6.12) the
    /// arrivals share one buffer, one after the other; a cancel ends it (without `MORE`).
    #[test]
    fn one_multishot_receive_reports_every_arrival() {
        let Some((mut ring, bufs)) = ring_with_buffers() else {
            return;
        };
        let (mut a, b) = pair();
        ring.recv_multi(b.as_fd(), bufs.group(), 0, 7);
        let mut got = Vec::new();
        let mut places = Vec::new();
        for msg in [&b"one"[..], b"two", b"three"] {
            a.write_all(msg).expect("write");
            let done = wait(&mut ring);
            assert_eq!(done.len(), 1, "{done:?}");
            let c = &done[0];
            assert!(c.more(), "the receive stays armed: {c:?}");
            let id = c.buffer().expect("a provided buffer");
            let n = c.res as u32;
            let at = bufs.arrived(id, n, c.buffer_more()).expect("the kernel's");
            got.extend_from_slice(bufs.bytes(id, at, n as usize).expect("held"));
            places.push((id, at));
            bufs.give_back(id);
            bufs.flush();
        }
        assert_eq!(got, b"onetwothree");
        assert_eq!(
            ring.stats().submitted,
            1,
            "one submission for three arrivals"
        );
        eprintln!("incremental buffer consumption: {}", bufs.incremental());
        if bufs.incremental() {
            assert_eq!(
                places[1],
                (places[0].0, 3),
                "the second continues the first's buffer"
            );
            assert_eq!(places[2], (places[0].0, 6));
        }
        ring.cancel(7);
        let done = wait(&mut ring);
        assert_eq!((done[0].token, done[0].res), (7, -libc::ECANCELED));
        assert!(!done[0].more());
    }

    /// A multishot receive limited to 8 bytes stays armed below the limit and ends with the
    /// arrival that reaches it (no `MORE`): the kernel hands over no more until it is armed
    /// again. Where the kernel has no limit (before 6.17) the probe says so.
    #[test]
    fn a_limited_multishot_receive_ends_at_its_limit() {
        let Ok(mut ring) = Ring::new(8) else {
            eprintln!("io_uring unavailable here: skipped");
            return;
        };
        let can = can_cap_multishot();
        eprintln!("multishot byte limit: {can}");
        if !can {
            return;
        }
        let bufs = BufRing::new(&ring, 1, 4, 64).expect("buffer ring");
        let (mut a, b) = pair();
        ring.recv_multi(b.as_fd(), bufs.group(), 8, 7);
        let mut got = 0;
        for msg in [&b"abc"[..], b"defghij"] {
            a.write_all(msg).expect("write");
            let done = wait(&mut ring);
            assert_eq!(done.len(), 1, "{done:?}");
            let c = &done[0];
            assert_eq!(c.res, msg.len() as i32);
            got += c.res;
            let id = c.buffer().expect("a provided buffer");
            bufs.arrived(id, c.res as u32, c.buffer_more())
                .expect("the kernel's");
            bufs.give_back(id);
            bufs.flush();
            assert_eq!(c.more(), got < 8, "armed below the limit only: {c:?}");
        }
        // Bytes that come now stay in the socket until a receive is armed again.
        a.write_all(b"later").expect("write");
        ring.recv_multi(b.as_fd(), bufs.group(), 8, 9);
        let done = wait(&mut ring);
        assert_eq!((done[0].token, done[0].res), (9, 5), "{done:?}");
        assert!(done[0].more());
    }
}
