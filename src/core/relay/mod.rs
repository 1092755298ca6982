//! The relay: bytes both ways once the upgrade is done, as operations a driver executes.
//!
//! The relay decides everything about moving bytes: splice or copy, backpressure, half-close and
//! why the relay ended. It never touches a socket: it asks for one operation at a time
//! ([`Relay::poll_op`]) and is told how it went ([`Relay::complete`]). An epoll driver executes
//! an operation at once with a non-blocking syscall; a completion driver submits it and reports
//! later. Either way the same decisions are taken here.
//!
//! Per direction at most one thing is pending: a pipe holding bytes, an overflow buffer holding
//! what the peer could not take, or a driver's buffer a completion driver read into. While
//! something is pending the source is not read, so a slow reader stops the writer at the
//! kernel's socket buffers: memory per direction is bounded by one pipe or one buffer. And per
//! direction at most one operation is in flight, so the two directions of a relay may each wait
//! in a completion driver at once.
//!
//! ```text
//!   readable ─(auto, bulk lately)─▶ Queued ─▶ how many bytes wait decides:
//!           ├─▶ Read (copy) ──▶ Write scratch ──short──▶ overflow buffer ─▶ Write ─▶ …
//!           │       └─(completion driver)─▶ Write from its buffer ─▶ … ─▶ buffer given back
//!           └─▶ SpliceIn (bulk) ─▶ pipe holds n ─▶ SpliceOut ─▶ pipe back to the pool
//!   EOF ─▶ Shutdown(dst) ─▶ direction finished;  both finished ─▶ End(Done)
//!   (on plain sockets the second direction's FIN is left to the close that follows)
//! ```
//!
//! `relay = "auto"` decides per burst (everything a source has between two readiness waits)
//! from what is queued, not from how the writer happened to write: splicing pays for itself
//! when many bytes move per call, copying when few do. A direction that is copying but has had
//! a burst of the threshold lately asks the socket how many bytes wait ([`IoOp::Queued`], one
//! cheap ioctl per burst) and splices the burst when they reach the threshold; a direction of
//! smaller messages never asks (no extra syscall) and copies. A direction whose last burst
//! reached the threshold splices the next one without asking (the answer would mostly confirm
//! it; a small burst spliced once costs less than an ioctl before every burst of a bulk flow),
//! and copies again after a burst that stayed under it. Within a burst, copying switches to
//! splicing once the burst's bytes reach the threshold (a source filling faster than it
//! drains). Large frames written in small pieces thus splice when the
//! pieces pile up, and copy when each arrives alone (then each call moves one small piece, and
//! copying it is cheaper): the arrival, not the frame, sets the cost.

mod ctx;
pub mod handover;
mod lent;
mod op;
pub mod timing;

pub use ctx::{Ctx, Pipes, RelayStats};
pub use handover::{DirState, Held, HeldBytes, RelayState};
pub use lent::RECV_LIMIT;
pub use op::{BufId, IoOp, Side, Src, Way};
pub use timing::{Check, CloseReason, Timeouts, Times};

use crate::config::RelayMode;
use crate::core::timer::Tick;
use std::io;

/// `auto`'s splice threshold under a readiness driver (epoll): there splicing a burst costs
/// about what copying it does up to 16-32 KiB, and 25-45 % less from 32 KiB on
/// (bench-results/2026-11-29-shapes-7, 2026-11-30-shapes-mid).
pub const THRESHOLD_READINESS: usize = 32 * 1024;
/// `auto`'s splice threshold under a completion driver (io_uring): there copying is dearer
/// (each receive fills a provided buffer and each send is its own ring operation; a frame
/// over one buffer's size goes out in two sends), while a splice is the same two syscalls as
/// under epoll. Splicing costs 5 % less than copying at 4 KiB bursts, 22 % at 8 KiB and 43 %
/// at 16 KiB; copying wins only under 4 KiB (2 KiB: 7 %) (bench-results/2026-11-30-shapes-uring).
pub const THRESHOLD_COMPLETION: usize = 4 * 1024;

/// The threshold `auto` uses when the configuration names none: the driver's own.
pub fn default_threshold(completion: bool) -> usize {
    if completion {
        THRESHOLD_COMPLETION
    } else {
        THRESHOLD_READINESS
    }
}

/// The kernel's pipe size (16 pages): what a pipe holds when F_SETPIPE_SZ is not asked for, or
/// is refused.
pub const KERNEL_PIPE: usize = 64 * 1024;
/// The default `[splice] pipe_size`: a bulk tunnel moves four times as much per splice pair.
/// One pinned worker spends 11 % less CPU per GB than with 64 KiB pipes, two workers 31 % less,
/// and whole or back-to-back messages from 64 KiB cost 20-30 % less, no traffic shape more
/// (bench-results/2026-11-30-pipe-size-w1, -w2). 1 MiB was cheaper still per GB but moved 11 %
/// fewer bytes per second.
pub const BULK_PIPE: usize = 256 * 1024;

/// `[splice] pipe_size` when the configuration names none. Under `limits.max_memory` the
/// kernel's 64 KiB: each tunnel is charged the chunk a pipe can hold, and a larger one would
/// shrink how many tunnels the budget admits.
pub fn default_pipe_size(memory_budget: bool) -> usize {
    if memory_budget {
        KERNEL_PIPE
    } else {
        BULK_PIPE
    }
}

/// How many pipes larger than the kernel's one worker may keep (lent or pooled) at once; past
/// them it makes pipes of the kernel's size. The kernel counts every pipe's pages against its
/// user (`fs.pipe-user-pages-soft`, `soft_pages`; 0 means no limit): past that, an unprivileged
/// user's new pipes get two pages and F_SETPIPE_SZ is refused (checked as `nobody` on Linux
/// 6.18: 256 pipes of 256 KiB, then 8 KiB ones). Large pipes may take a quarter of it, shared
/// between the `workers` (threads or processes of the same user); the kernel-sized pipes and
/// other programs keep the rest. With Linux's default that is 64 pipes of 256 KiB and 768 of
/// 64 KiB before pipes shrink, against 1,024 of 64 KiB with no large ones: fewer full pipes at
/// once for an unprivileged user with that many tunnels in flight (tools/sysctl.conf raises it).
pub fn large_pipes(soft_pages: u64, pipe_size: usize, workers: usize) -> usize {
    if pipe_size <= KERNEL_PIPE || soft_pages == 0 {
        return usize::MAX;
    }
    let quarter = soft_pages.saturating_mul(4096) / 4;
    (quarter / pipe_size as u64 / workers.max(1) as u64) as usize
}

/// The source may have bytes (edge-triggered: remembered until a read says otherwise).
const READABLE: u8 = 1;
/// The source sent FIN (a read returned 0).
const EOF: u8 = 2;
/// We sent FIN to the destination.
const SHUT: u8 = 4;
/// Auto mode: splice this burst. Set from the queued byte count when the direction asked,
/// else from the last burst; set within a burst once its bytes reach the threshold. Decided per
/// burst (everything read between two readiness waits), not per read: the short tail read of a
/// bulk burst must not flip a bulk flow back to copying.
const BULK: u8 = 8;
/// The source's FIN or error was reported (EPOLLRDHUP): read until 0, never trust a short read.
const HUP: u8 = 16;
/// The destination would block: wait for its writable event before writing again.
const FULL: u8 = 32;
/// The transports allow splicing this direction (both are plain sockets).
const SPLICE_OK: u8 = 64;
/// An operation of this direction is in flight: nothing more until it completes.
const INFLIGHT: u8 = 128;

/// `Dir::recv`: a standing receive ([`IoOp::Recv`]) is armed on the source.
const RECV_ARMED: u8 = 1;
/// `Dir::seen`'s flag: this burst's queued count was asked for.
const ASKED: u8 = 0x80;
/// `Dir::seen`'s flag, of the up direction only: the relay is settling for a hand-over
/// ([`Relay::settle`]). (A byte of its own would grow an idle relay's slab entry by eight.)
const SETTLING: u8 = 0x40;
/// `Dir::recv`: it was asked to stop; its last arrival has not come yet.
const RECV_STOPPING: u8 = 2;

/// Reads per direction per round before yielding to other connections.
const BUDGET: u8 = 32;

/// Bytes that could not be written yet.
#[derive(Debug, Default)]
enum Pending<P> {
    #[default]
    None,
    /// A borrowed pipe holding this many bytes (0 while a `SpliceIn` fills it).
    Pipe(P, u32),
    /// Copied bytes the peer did not take: `(data, written so far)`.
    Buf(Box<(Vec<u8>, usize)>),
    /// The last `Read` put this many bytes in the worker's scratch: write them next.
    Scratch(u32),
    /// Bytes in a driver's buffer (a `Read` or a `Recv` put them there), written from it.
    Lent(lent::Seg),
    /// Bytes in a driver's buffer being written, and a standing receive's later arrivals,
    /// copied (their buffers went back at once): boxed, as only a destination slower than its
    /// source has any.
    LentThen(Box<(lent::Seg, Vec<u8>)>),
}

/// One direction of a relay.
#[derive(Debug)]
pub struct Dir<P> {
    pending: Pending<P>,
    flags: u8,
    /// Reads left in this round.
    budget: u8,
    /// Auto mode: the bit length of the largest burst lately (a burst of n bytes counts as
    /// `n.ilog2() + 1`; each burst after it lowers the memory by one bit, i.e. halves it).
    /// Whether the next burst is worth asking [`IoOp::Queued`] about.
    /// Bit 7 ([`ASKED`]): the current burst's queued count was asked for; bit 6
    /// ([`SETTLING`]): see there (one byte for all, so that an idle relay's slab entry stays as
    /// it was).
    seen: u8,
    /// Bytes read in the current burst: about what was waiting when it started.
    burst: u32,
    /// The standing receive on the source: 0 (none), [`RECV_ARMED`] or [`RECV_STOPPING`].
    recv: u8,
}

/// How far a direction got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pumped {
    Op(IoOp),
    /// Waiting for readiness (source empty or destination full).
    Blocked,
    /// The round's budget ran out while the source still had bytes: resume soon.
    MoreLater,
    /// FIN forwarded and nothing in flight: this direction is over.
    Finished,
}

/// Which socket failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fail {
    Src,
    Dst,
}

impl<P> Dir<P> {
    /// A direction that starts with `initial` bytes to deliver (may be empty).
    fn new(initial: Vec<u8>, splice_ok: bool, stats: &mut RelayStats) -> Dir<P> {
        let pending = if initial.is_empty() {
            Pending::None
        } else {
            stats.overflow_in_use += 1;
            Pending::Buf(Box::new((initial, 0)))
        };
        Dir {
            pending,
            flags: READABLE | if splice_ok { SPLICE_OK } else { 0 },
            budget: BUDGET,
            seen: 0,
            burst: 0,
            recv: 0,
        }
    }

    /// FIN forwarded, nothing pending or in flight: [`Pumped::Finished`].
    fn finished(&self) -> bool {
        self.flags & (EOF | SHUT | INFLIGHT) == EOF | SHUT
            && self.recv == 0
            && matches!(self.pending, Pending::None)
    }

    fn release(&mut self, cx: &mut Ctx<'_, impl Pipes<Pipe = P>>) {
        match std::mem::take(&mut self.pending) {
            Pending::None | Pending::Scratch(_) => {}
            Pending::Pipe(p, _) => cx.pipes.discard(p),
            Pending::Buf(_) => cx.stats.overflow_in_use -= 1,
            Pending::Lent(seg) => seg.give_back(cx.returned),
            Pending::LentThen(b) => b.0.give_back(cx.returned),
        }
    }

    /// The next operation of this direction, or why there is none. Inlined into
    /// [`Relay::poll_op`], once per direction: a call's register saves cost as much as its work.
    #[inline(always)]
    fn next(
        &mut self,
        way: Way,
        cx: &mut Ctx<'_, impl Pipes<Pipe = P>>,
        room: usize,
        other: &Dir<P>,
    ) -> Pumped {
        // Backpressure on a standing receive: arrivals are held while the destination is slow;
        // at the bound, the source stops until they are written (then it is armed again).
        if self.recv == RECV_ARMED && self.must_stop_recv() {
            self.recv = RECV_STOPPING;
            return Pumped::Op(IoOp::StopRecv { side: way.src() });
        }
        if self.flags & INFLIGHT != 0 {
            return Pumped::Blocked;
        }
        let next = self.pick(way, cx, room);
        if let Pumped::Op(op) = next {
            if let IoOp::Shutdown { .. } = op {
                // The last FIN of a plain relay: both sockets are closed right after, and the
                // close sends it (one `shutdown` per relay saved). A TLS session's close_notify
                // goes out with its shutdown, so TLS keeps it.
                if self.flags & SPLICE_OK != 0 && other.finished() {
                    return Pumped::Finished;
                }
            }
            if !op.standing() {
                self.flags |= INFLIGHT;
            }
        }
        next
    }

    /// `room`: how many bytes a `Read` may bring (the size of the buffer it reads into).
    #[inline(always)]
    fn pick(&mut self, way: Way, cx: &mut Ctx<'_, impl Pipes<Pipe = P>>, room: usize) -> Pumped {
        let (src, dst) = (way.src(), way.dst());
        match &self.pending {
            Pending::Scratch(n) => {
                return Pumped::Op(IoOp::Write {
                    side: dst,
                    src: Src::Scratch(*n as usize),
                })
            }
            Pending::Pipe(_, len) if self.flags & FULL == 0 => {
                return Pumped::Op(IoOp::SpliceOut {
                    side: dst,
                    len: *len as usize,
                })
            }
            Pending::Buf(_) if self.flags & FULL == 0 => {
                return Pumped::Op(IoOp::Write {
                    side: dst,
                    src: Src::Held,
                })
            }
            Pending::Lent(_) | Pending::LentThen(_) if self.flags & FULL == 0 => {
                if let Some(seg) = self.front() {
                    return Pumped::Op(IoOp::Write {
                        side: dst,
                        src: seg.src(),
                    });
                }
            }
            Pending::Pipe(..) | Pending::Buf(_) | Pending::Lent(_) | Pending::LentThen(_) => {
                return Pumped::Blocked
            }
            Pending::None => {}
        }
        if self.flags & EOF != 0 {
            if self.flags & SHUT == 0 {
                self.flags |= SHUT;
                return Pumped::Op(IoOp::Shutdown { side: dst });
            }
            return Pumped::Finished;
        }
        if self.flags & READABLE == 0 {
            return Pumped::Blocked;
        }
        let splice = self.flags & SPLICE_OK != 0
            && match cx.mode {
                RelayMode::Splice => true,
                RelayMode::Copy => false,
                RelayMode::Auto => self.flags & BULK != 0,
            };
        if self.recv != 0 {
            // Arrivals keep coming; a splice waits until the standing receive is over.
            if splice && self.recv == RECV_ARMED {
                self.recv = RECV_STOPPING;
                return Pumped::Op(IoOp::StopRecv { side: src });
            }
            return Pumped::Blocked;
        }
        if self.budget == 0 {
            return Pumped::MoreLater;
        }
        if cx.mode == RelayMode::Auto && self.worth_asking(cx.threshold) {
            self.seen |= ASKED;
            return Pumped::Op(IoOp::Queued { side: src });
        }
        self.budget -= 1;
        if splice {
            if let Some(p) = cx.pipes.take() {
                self.pending = Pending::Pipe(p, 0);
                return Pumped::Op(IoOp::SpliceIn {
                    side: src,
                    max: cx.pipes.pipe_size(),
                });
            }
            cx.stats.copy_fallbacks += 1;
        }
        if cx.standing {
            self.recv = RECV_ARMED;
            return Pumped::Op(IoOp::Recv {
                side: src,
                more: true,
            });
        }
        Pumped::Op(IoOp::Read {
            side: src,
            max: room,
        })
    }

    /// The result of this direction's last operation. `scratch`: the buffer a `Read` read into
    /// and a `Write { src: Scratch }` wrote from. Returns the bytes read from the source.
    /// Inlined into its one caller, [`Relay::complete`].
    #[inline(always)]
    fn complete(
        &mut self,
        op: IoOp,
        res: io::Result<usize>,
        cx: &mut Ctx<'_, impl Pipes<Pipe = P>>,
        scratch: &[u8],
    ) -> Result<u64, Fail> {
        if !op.standing() {
            self.flags &= !INFLIGHT;
        }
        let interrupted = |e: &io::Error| e.kind() == io::ErrorKind::Interrupted;
        let would_block = |e: &io::Error| e.kind() == io::ErrorKind::WouldBlock;
        // A short write fills the socket (an edge follows) unless the driver waits for room.
        let full_after_short = if cx.completion { 0 } else { FULL };
        match op {
            IoOp::Read { .. } => match res {
                Ok(0) => self.flags |= EOF,
                Ok(n) => {
                    self.burst = self.burst.saturating_add(n as u32);
                    cx.stats.bytes_copied += n as u64;
                    if self.burst as usize >= cx.threshold {
                        // Splice the rest of this burst already.
                        self.flags |= BULK;
                    }
                    // A short read drained the socket: Linux reports new data with a new edge.
                    // Not after EPOLLRDHUP, whose edge may already be spent: then read to 0.
                    // A completion driver's next read simply waits for the next bytes.
                    if n < scratch.len() && self.flags & HUP == 0 {
                        if !cx.completion {
                            self.flags &= !READABLE;
                        }
                        self.end_burst(cx.threshold);
                    }
                    let got = match cx.lent.take() {
                        Some(id) => Pending::Lent(lent::Seg::new(id, cx.lent_at, n)),
                        None => Pending::Scratch(n as u32),
                    };
                    // A read is asked for only with nothing pending: the drop call is kept off
                    // the way of every message.
                    match std::mem::replace(&mut self.pending, got) {
                        Pending::None => {}
                        was => drop(was),
                    }
                    return Ok(n as u64);
                }
                Err(e) if would_block(&e) => {
                    self.flags &= !READABLE;
                    self.end_burst(cx.threshold);
                }
                Err(e) if interrupted(&e) => {}
                Err(_) => return Err(Fail::Src),
            },
            IoOp::SpliceIn { .. } => {
                let Pending::Pipe(p, _) = std::mem::take(&mut self.pending) else {
                    return Ok(0); // the direction was released meanwhile
                };
                match res {
                    Ok(0) => {
                        cx.pipes.give(p);
                        self.flags |= EOF;
                    }
                    Ok(n) => {
                        self.burst = self.burst.saturating_add(n as u32);
                        cx.stats.bytes_spliced += n as u64;
                        self.pending = Pending::Pipe(p, n as u32);
                        return Ok(n as u64);
                    }
                    Err(e) if would_block(&e) => {
                        cx.pipes.give(p);
                        self.flags &= !READABLE;
                        self.end_burst(cx.threshold);
                    }
                    Err(e) if interrupted(&e) => cx.pipes.give(p),
                    Err(_) => {
                        cx.pipes.give(p);
                        return Err(Fail::Src);
                    }
                }
            }
            IoOp::Write {
                src: Src::Scratch(_),
                ..
            } => {
                let Pending::Scratch(n) = self.pending else {
                    return Ok(0); // the direction was released meanwhile
                };
                let n = n as usize;
                let (written, full) = match res {
                    Ok(m) => (m.min(n), full_after_short),
                    Err(e) if would_block(&e) || interrupted(&e) => (0, FULL),
                    Err(_) => return Err(Fail::Dst),
                };
                match std::mem::take(&mut self.pending) {
                    Pending::Scratch(_) => {} // owns nothing: no drop call per message
                    was => drop(was),
                }
                if written < n {
                    cx.stats.overflow_in_use += 1;
                    self.flags |= full;
                    let rest = scratch[written..n.min(scratch.len())].to_vec();
                    self.pending = Pending::Buf(Box::new((rest, 0)));
                }
            }
            IoOp::Write {
                src: Src::Buf { .. },
                ..
            } => match res {
                Ok(m) => {
                    if !self.sent_from_front(m, cx.returned, cx.stats) {
                        self.flags |= full_after_short;
                    }
                }
                Err(e) if would_block(&e) => self.flags |= FULL,
                Err(e) if interrupted(&e) => {}
                Err(_) => return Err(Fail::Dst),
            },
            IoOp::Write { src: Src::Held, .. } => match res {
                Ok(m) => {
                    if let Pending::Buf(b) = &mut self.pending {
                        b.1 += m;
                        if b.1 >= b.0.len() {
                            self.pending = Pending::None;
                            cx.stats.overflow_in_use -= 1;
                        } else {
                            self.flags |= full_after_short;
                        }
                    }
                }
                Err(e) if would_block(&e) => self.flags |= FULL,
                Err(e) if interrupted(&e) => {}
                Err(_) => return Err(Fail::Dst),
            },
            IoOp::SpliceOut { .. } => match res {
                Ok(m) => {
                    if let Pending::Pipe(_, len) = &mut self.pending {
                        *len = len.saturating_sub(m as u32);
                        if *len == 0 {
                            if let Pending::Pipe(p, _) = std::mem::take(&mut self.pending) {
                                cx.pipes.give(p);
                            }
                        } else {
                            // A short write means the socket buffer is full; EPOLLOUT follows.
                            self.flags |= FULL;
                        }
                    }
                }
                Err(e) if would_block(&e) => self.flags |= FULL,
                Err(e) if interrupted(&e) => {}
                Err(_) => return Err(Fail::Dst),
            },
            // The peer may already be gone; its own read side will report that.
            IoOp::Shutdown { .. } => {}
            IoOp::Recv { more, .. } => return self.arrived(more, res, cx, scratch),
            // Done at once; the receive's last arrival says when it is over.
            IoOp::StopRecv { .. } => {}
            IoOp::Queued { .. } => match res {
                Ok(q) if q >= cx.threshold => self.flags |= BULK,
                Ok(q) if q > 0 => self.flags &= !BULK,
                // Nothing waits yet (a completion driver asks before bytes come) or the ioctl
                // failed: the last burst's verdict stands.
                Ok(_) | Err(_) => {}
            },
        }
        Ok(0)
    }

    /// Auto mode, at the start of a burst of a spliceable direction that is copying: ask how
    /// many bytes wait, unless the direction has had no burst of the threshold lately (a flow of
    /// smaller messages then pays no extra syscall, and copies: asking before every 16 KiB
    /// message cost ~7 % per message in bench-results/2026-11-29-shapes/). A direction whose
    /// last burst reached the threshold (`BULK`) splices without asking: the answer would
    /// mostly confirm it, and asking before every burst of a bulk flow cost ~4 % at 32 KiB
    /// messages (bench-results/2026-11-29-shapes-7/).
    #[inline]
    fn worth_asking(&self, threshold: usize) -> bool {
        self.burst == 0
            && self.flags & BULK == 0
            && self.seen & ASKED == 0
            && self.flags & SPLICE_OK != 0
            && self.seen & !SETTLING > 0
            && (1usize << ((self.seen & !SETTLING) - 1)) >= threshold
    }

    /// The source is drained: a small burst means small messages, which copy more cheaply than
    /// they splice (bench-results/: tools/splice-threshold, tools/shapes). The next burst
    /// starts with this one's verdict unless it asks what is queued.
    fn end_burst(&mut self, threshold: usize) {
        if (self.burst as usize) < threshold {
            self.flags &= !BULK;
        } else {
            self.flags |= BULK;
        }
        let bits = (u32::BITS - self.burst.leading_zeros()) as u8;
        // Clears ASKED too; SETTLING stays.
        let settling = self.seen & SETTLING;
        self.seen = settling | bits.max((self.seen & !(ASKED | SETTLING)).saturating_sub(1));
        self.burst = 0;
    }
}

/// What a relay wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Execute this, then call [`Relay::complete`].
    Op(IoOp),
    /// Nothing until a readiness event (or the timer).
    Wait,
    /// The round's budget ran out: resume after other connections had their turn.
    Yield,
    /// The relay is over.
    Closed(CloseReason),
}

/// An established relay: the whole per-connection state once the upgrade is done.
#[derive(Debug)]
pub struct Relay<P> {
    /// client -> backend
    up: Dir<P>,
    /// backend -> client
    down: Dir<P>,
    pub times: Times,
    /// Idle and half-close timeouts as configured when the relay opened: a reload does not
    /// change the rules for established relays.
    pub timeouts: Timeouts,
}

impl<P> Relay<P> {
    /// A relay starting with bytes to deliver each way (the backend's 101 and what followed it;
    /// the client's bytes sent after its head). `splice_ok`: both transports are plain sockets.
    pub fn new(
        to_client: Vec<u8>,
        to_backend: Vec<u8>,
        splice_ok: bool,
        timeouts: Timeouts,
        now: Tick,
        stats: &mut RelayStats,
    ) -> Relay<P> {
        Relay {
            up: Dir::new(to_backend, splice_ok, stats),
            down: Dir::new(to_client, splice_ok, stats),
            times: Times::new(now),
            timeouts,
        }
    }

    /// The upgrade's last reads drained the client's (`client`) or the backend's (`backend`)
    /// socket and no edge came since: the direction from it waits for the next edge instead
    /// of starting with a read that would find nothing.
    pub fn start_drained(&mut self, client: bool, backend: bool) {
        if client {
            self.up.flags &= !READABLE;
        }
        if backend {
            self.down.flags &= !READABLE;
        }
    }

    fn dir(&mut self, w: Way) -> &mut Dir<P> {
        match w {
            Way::Up => &mut self.up,
            Way::Down => &mut self.down,
        }
    }

    /// A readiness event on `side`: `readable` (with `hup` when FIN or an error came too) and
    /// `writable`. Starts a new round: each direction gets its budget back.
    pub fn handle_ready(&mut self, side: Side, readable: bool, writable: bool, hup: bool) {
        let (src_of, dst_of) = match side {
            Side::Client => (Way::Up, Way::Down),
            Side::Backend => (Way::Down, Way::Up),
        };
        let d = self.dir(src_of);
        if readable {
            d.flags |= READABLE;
            if hup {
                d.flags |= HUP;
            }
        }
        if writable {
            self.dir(dst_of).flags &= !FULL;
        }
        self.resume();
    }

    /// A new round without an event (after [`Next::Yield`]).
    pub fn resume(&mut self) {
        self.up.budget = BUDGET;
        self.down.budget = BUDGET;
    }

    /// The next operation, or why there is none. Call until it is not [`Next::Op`]. `room`:
    /// the size of the buffer a `Read` reads into (`cx.scratch`, or the executor's).
    #[inline]
    pub fn poll_op(
        &mut self,
        cx: &mut Ctx<'_, impl Pipes<Pipe = P>>,
        now: Tick,
        room: usize,
    ) -> Next {
        if self.up.seen & SETTLING != 0 {
            // Handed over once what is in flight has completed (cancelled, or done).
            return Next::Wait;
        }
        let up = self.up.next(Way::Up, cx, room, &self.down);
        if let Pumped::Op(op) = up {
            return Next::Op(op);
        }
        let down = self.down.next(Way::Down, cx, room, &self.up);
        if let Pumped::Op(op) = down {
            return Next::Op(op);
        }
        match (up, down) {
            (Pumped::Finished, Pumped::Finished) => Next::Closed(CloseReason::Done),
            (a, b) => {
                if a == Pumped::Finished || b == Pumped::Finished {
                    self.times.half_close(now);
                }
                if a == Pumped::MoreLater || b == Pumped::MoreLater {
                    Next::Yield
                } else {
                    Next::Wait
                }
            }
        }
    }

    /// The result of an operation [`Relay::poll_op`] gave (each direction has at most one in
    /// flight): the direction and the bytes it read from its source, or why the relay is over.
    /// `scratch`: the buffer the operation read into or wrote from (`cx.scratch`, or the
    /// executor's).
    #[inline(always)]
    pub fn complete(
        &mut self,
        op: IoOp,
        res: io::Result<usize>,
        cx: &mut Ctx<'_, impl Pipes<Pipe = P>>,
        scratch: &[u8],
        now: Tick,
    ) -> Result<(Way, u64), CloseReason> {
        let way = op.way();
        let d = self.dir(way);
        let expected = if op.standing() {
            d.recv != 0
        } else {
            d.flags & INFLIGHT != 0
        };
        if !expected {
            return Ok((way, 0)); // no operation of this direction was in flight
        }
        match d.complete(op, res, cx, scratch) {
            Ok(0) => Ok((way, 0)),
            Ok(n) => {
                match way {
                    Way::Up => cx.stats.bytes_up += n,
                    Way::Down => cx.stats.bytes_down += n,
                }
                self.times.touch(now);
                Ok((way, n))
            }
            // The client's socket failed (reading up or writing down), or the backend's.
            Err(f) => Err(match (way, f) {
                (Way::Up, Fail::Src) | (Way::Down, Fail::Dst) => CloseReason::ClientReset,
                (Way::Up, Fail::Dst) | (Way::Down, Fail::Src) => CloseReason::BackendReset,
            }),
        }
    }

    /// The operation that must follow a completion of direction `way` at once, when it is
    /// already known: a `Read` that put bytes in the scratch buffer is followed by their
    /// `Write` (what [`Relay::poll_op`] would give next for that direction, taken without
    /// asking both directions again). The operation is in flight as if `poll_op` had given it.
    #[inline]
    pub fn follow_up(&mut self, way: Way) -> Option<IoOp> {
        let d = self.dir(way);
        let Pending::Scratch(n) = d.pending else {
            return None;
        };
        d.flags |= INFLIGHT;
        Some(IoOp::Write {
            side: way.dst(),
            src: Src::Scratch(n as usize),
        })
    }

    /// What `op` (which [`Relay::poll_op`] returned) uses: the bytes of a `Write { src: Held }`
    /// and the pipe of a splice, of the direction it serves.
    #[inline]
    pub fn lent(&self, op: IoOp) -> (&[u8], Option<&P>) {
        let d = match op.way() {
            Way::Up => &self.up,
            Way::Down => &self.down,
        };
        match &d.pending {
            Pending::Buf(b) => (&b.0[b.1.min(b.0.len())..], None),
            Pending::Pipe(p, _) => (&[], Some(p)),
            _ => (&[], None),
        }
    }

    /// The overflow bytes a `Write { src: Held }` to `side` sends.
    pub fn held(&self, side: Side) -> &[u8] {
        self.lent(IoOp::Write {
            side,
            src: Src::Held,
        })
        .0
    }

    /// The size of the client-to-backend overflow buffer, written part included (tests).
    #[cfg(test)]
    pub(crate) fn up_held_capacity(&self) -> usize {
        match &self.up.pending {
            Pending::Buf(b) => b.0.len(),
            _ => 0,
        }
    }

    /// When the relay must be checked for an idle or half-close timeout.
    pub fn deadline(&self) -> Option<Tick> {
        self.times.deadline(self.timeouts)
    }

    /// Gives back pipes and buffers when the relay ends.
    pub fn release(&mut self, cx: &mut Ctx<'_, impl Pipes<Pipe = P>>) {
        self.up.release(cx);
        self.down.release(cx);
    }
}

#[cfg(test)]
pub(crate) mod tests;
