//! The relay as a script: operations out, results in, no sockets.

use super::*;
use crate::core::relay::timing::Timeouts;

/// A pool of numbered pipes.
#[derive(Default)]
pub(crate) struct FakePipes {
    pub cap: usize,
    pub lent: usize,
    pub next: u32,
    pub discarded: usize,
}

impl Pipes for FakePipes {
    type Pipe = u32;
    fn take(&mut self) -> Option<u32> {
        if self.lent >= self.cap {
            return None;
        }
        self.lent += 1;
        self.next += 1;
        Some(self.next)
    }
    fn give(&mut self, _: u32) {
        self.lent -= 1;
    }
    fn discard(&mut self, _: u32) {
        self.lent -= 1;
        self.discarded += 1;
    }
    fn pipe_size(&self) -> usize {
        65536
    }
}

/// What a worker lends a connection with each call: its scratch buffer, pipe pool and
/// counters, and where driver buffers given back go.
pub(crate) struct Loan {
    pub pipes: FakePipes,
    pub stats: RelayStats,
    pub scratch: Vec<u8>,
    pub returned: Vec<BufId>,
}

impl Loan {
    /// `pipes` pipes, and a scratch buffer of `scratch`.
    pub(crate) fn new(pipes: usize, scratch: Vec<u8>, stats: RelayStats) -> Loan {
        Loan {
            pipes: FakePipes {
                cap: pipes,
                ..Default::default()
            },
            stats,
            scratch,
            returned: Vec::new(),
        }
    }

    /// The context the worker passes.
    pub(crate) fn ctx(
        &mut self,
        mode: RelayMode,
        threshold: usize,
        completion: bool,
    ) -> Ctx<'_, FakePipes> {
        Ctx {
            scratch: &self.scratch,
            lent: None,
            lent_at: 0,
            lent_room: 0,
            returned: &mut self.returned,
            pipes: &mut self.pipes,
            stats: &mut self.stats,
            mode,
            threshold,
            completion,
            standing: false,
        }
    }
}

struct Rig {
    relay: Relay<u32>,
    loan: Loan,
    mode: RelayMode,
    /// Play an io_uring driver: reads land in driver buffers, which the relay keeps.
    completion: bool,
    /// The driver buffer the next completed read lands in (completion mode).
    next_buf: BufId,
}

/// A relay of no early bytes and default timeouts; `splice`: its transports can splice.
fn new_relay(splice: bool, stats: &mut RelayStats) -> Relay<u32> {
    Relay::new(
        Vec::new(),
        Vec::new(),
        splice,
        Timeouts::new(Default::default(), Default::default()),
        1,
        stats,
    )
}

fn rig(mode: RelayMode, pipes: usize) -> Rig {
    let mut stats = RelayStats::default();
    let relay = new_relay(true, &mut stats);
    Rig {
        relay,
        loan: Loan::new(pipes, vec![7u8; 1024], stats),
        mode,
        completion: false,
        next_buf: 0,
    }
}

fn would_block() -> io::Result<usize> {
    Err(io::ErrorKind::WouldBlock.into())
}

impl Rig {
    /// The relay and what its worker would lend it.
    fn parts(&mut self) -> (&mut Relay<u32>, Ctx<'_, FakePipes>) {
        let cx = self.loan.ctx(self.mode, 4096, self.completion);
        (&mut self.relay, cx)
    }

    fn poll(&mut self) -> Next {
        let (relay, mut cx) = self.parts();
        let room = cx.scratch.len();
        relay.poll_op(&mut cx, 5, room)
    }

    fn complete(&mut self, op: IoOp, res: io::Result<usize>) -> Result<(Way, u64), CloseReason> {
        let completion = self.completion;
        let buf = self.next_buf;
        let (relay, mut cx) = self.parts();
        if completion && matches!(op, IoOp::Read { .. }) {
            cx.lent = Some(buf);
        }
        let scratch = cx.scratch;
        let r = relay.complete(op, res, &mut cx, scratch, 5);
        if cx.lent.is_some() {
            cx.returned.push(buf); // not kept: the worker gives it back
        }
        r
    }

    /// Expects `want` next and completes it with `res`.
    fn step(&mut self, want: IoOp, res: io::Result<usize>) {
        assert_eq!(self.poll(), Next::Op(want));
        self.complete(want, res).expect("relay still open");
    }

    /// Drains both sources at the start (both report WouldBlock); then `then` has bytes.
    fn settle(&mut self, then: Side) {
        self.step(read(Side::Client), would_block());
        self.step(read(Side::Backend), would_block());
        assert_eq!(self.poll(), Next::Wait);
        self.relay.handle_ready(then, true, false, false);
    }
}

/// The side bytes from `side` are written to.
fn other(side: Side) -> Side {
    match side {
        Side::Client => Side::Backend,
        Side::Backend => Side::Client,
    }
}

fn read(side: Side) -> IoOp {
    IoOp::Read { side, max: 1024 }
}

impl Rig {
    /// A copy round: `n` bytes read from `from`, and the other side takes `took` of them.
    fn copy(&mut self, from: Side, n: usize, took: usize) {
        self.step(read(from), Ok(n));
        let write = IoOp::Write {
            side: other(from),
            src: Src::Scratch(n),
        };
        self.step(write, Ok(took));
    }
}

#[test]
fn small_message_is_copied_through_scratch_and_the_direction_waits_again() {
    let mut r = rig(RelayMode::Auto, 4);
    r.settle(Side::Client);
    r.copy(Side::Client, 10, 10);
    // A short read drained the socket: no read until the next edge.
    assert_eq!(r.poll(), Next::Wait);
    assert_eq!((r.loan.stats.bytes_up, r.loan.stats.bytes_copied), (10, 10));
    assert_eq!(r.loan.stats.overflow_in_use, 0);
}

#[test]
fn the_follow_up_of_a_read_is_the_write_poll_op_would_give_and_is_in_flight() {
    for (mode, from) in [
        (RelayMode::Copy, Side::Client),
        (RelayMode::Auto, Side::Backend),
        (RelayMode::Splice, Side::Client), // without a free pipe, splice mode copies
    ] {
        // Two relays in the same state: one is polled, the other asked for its follow-up.
        let (mut polled, mut followed) = (rig(mode, 0), rig(mode, 0));
        for r in [&mut polled, &mut followed] {
            r.settle(from);
            r.step(read(from), Ok(10));
        }
        let way = read(from).way();
        let want = polled.poll();
        assert_eq!(followed.relay.follow_up(way).map(Next::Op), Some(want));
        // In flight: neither relay gives the direction another operation until it completes.
        assert_eq!(followed.poll(), Next::Wait);
        let Next::Op(write) = want else {
            panic!("a write follows a read of 10 bytes, got {want:?}")
        };
        followed.complete(write, Ok(10)).expect("open");
        assert_eq!(followed.poll(), Next::Wait);
        // Nothing follows a write, a read that found nothing, or a direction with nothing held.
        assert_eq!(followed.relay.follow_up(way), None);
    }
}

#[test]
fn a_short_write_keeps_the_rest_and_stops_reading_until_the_peer_is_writable() {
    let mut r = rig(RelayMode::Copy, 0);
    r.settle(Side::Backend);
    r.copy(Side::Backend, 1024, 100);
    assert_eq!(r.loan.stats.overflow_in_use, 1);
    // The source still has bytes (a full read), but nothing more is read while bytes wait.
    assert_eq!(r.poll(), Next::Wait);
    r.relay.handle_ready(Side::Client, false, true, false);
    let op = IoOp::Write {
        side: Side::Client,
        src: Src::Held,
    };
    assert_eq!(r.poll(), Next::Op(op));
    assert_eq!(r.relay.held(Side::Client).len(), 924);
    r.complete(op, Ok(924)).expect("open");
    assert_eq!(r.loan.stats.overflow_in_use, 0);
    // Now the source is read again.
    assert_eq!(r.poll(), Next::Op(read(Side::Backend)));
}

#[test]
fn auto_mode_splices_once_a_burst_reaches_the_threshold_until_a_small_burst() {
    let mut r = rig(RelayMode::Auto, 4);
    r.settle(Side::Client);
    // Full reads: a burst of 4 KiB reaches the 4 KiB threshold.
    for _ in 0..4 {
        r.copy(Side::Client, 1024, 1024);
    }
    let splice_in = IoOp::SpliceIn {
        side: Side::Client,
        max: 65536,
    };
    r.step(splice_in, Ok(30000));
    assert_eq!(r.loan.pipes.lent, 1);
    let out = IoOp::SpliceOut {
        side: Side::Backend,
        len: 30000,
    };
    r.step(out, Ok(30000));
    assert_eq!(r.loan.pipes.lent, 0, "an emptied pipe goes back at once");
    r.step(splice_in, would_block());
    assert_eq!(r.poll(), Next::Wait);
    // That burst was large: the next one is spliced without asking what waits (50 bytes), and,
    // being small, turns the direction back to copying: the next asks, and 50 bytes are copied.
    small_bursts_after_a_large_one(&mut r, Side::Client, 50);
    // And a burst that finds the threshold queued is spliced from its first byte.
    r.relay.handle_ready(Side::Client, true, false, false);
    r.step(queued(Side::Client), Ok(5000));
    r.step(splice_in, Ok(5000));
    assert_eq!(r.loan.stats.bytes_spliced, 35050);
    assert_eq!(r.loan.stats.bytes_copied, 4096 + 50);
}

fn queued(side: Side) -> IoOp {
    IoOp::Queued { side }
}

/// A burst of `n` bytes from `side` spliced without asking what waits (the direction's last
/// burst reached the threshold): in, out, and the source drained.
fn spliced(r: &mut Rig, side: Side, n: usize) {
    let splice_in = IoOp::SpliceIn { side, max: 65536 };
    r.step(splice_in, Ok(n));
    r.step(
        IoOp::SpliceOut {
            side: other(side),
            len: n,
        },
        Ok(n),
    );
    r.step(splice_in, would_block());
    assert_eq!(r.poll(), Next::Wait);
}

/// Right after a large burst: a burst of `n` bytes from `side` is spliced unasked and, being
/// small, turns the direction back to copying, so the next (`n` bytes again) asks what waits
/// and is copied.
fn small_bursts_after_a_large_one(r: &mut Rig, side: Side, n: usize) {
    r.relay.handle_ready(side, true, false, false);
    spliced(r, side, n);
    r.relay.handle_ready(side, true, false, false);
    r.step(queued(side), Ok(n));
    r.copy(side, n, n);
    assert_eq!(r.poll(), Next::Wait);
}

/// One large burst from `side` (copied, then spliced once it reached the threshold): the
/// direction splices its next burst without asking what is queued.
fn large_burst(r: &mut Rig, side: Side) {
    r.settle(side);
    for _ in 0..4 {
        r.copy(side, 1024, 1024);
    }
    r.step(IoOp::SpliceIn { side, max: 65536 }, would_block());
}

#[test]
fn auto_mode_asks_what_is_queued_only_while_it_copies() {
    let mut r = rig(RelayMode::Auto, 4);
    large_burst(&mut r, Side::Backend);
    // The burst after a large one is spliced without asking.
    r.relay.handle_ready(Side::Backend, true, false, false);
    spliced(&mut r, Side::Backend, 8192);
    // A writer that sends a header and then a large body: each header follows a large burst
    // and is spliced unasked; being small, it turns the direction back to copying, so the
    // body's burst asks, finds the threshold queued, and is spliced from its first byte.
    for _ in 0..3 {
        r.relay.handle_ready(Side::Backend, true, false, false);
        spliced(&mut r, Side::Backend, 10);
        r.relay.handle_ready(Side::Backend, true, false, false);
        r.step(queued(Side::Backend), Ok(8192));
        spliced(&mut r, Side::Backend, 8192);
    }
    assert_eq!(r.loan.stats.bytes_spliced, 4 * 8192 + 3 * 10);
    assert_eq!(r.loan.stats.bytes_copied, 4096);
    // After a small burst, one that finds little queued is copied.
    small_bursts_after_a_large_one(&mut r, Side::Backend, 10);
    assert_eq!(r.loan.stats.bytes_copied, 4096 + 10);
    // The other direction never had a large burst: it never asks.
    r.relay.handle_ready(Side::Client, true, false, false);
    r.copy(Side::Client, 10, 10);
}

#[test]
fn auto_mode_stops_asking_once_a_direction_has_had_only_small_bursts_for_a_while() {
    let mut r = rig(RelayMode::Auto, 4);
    large_burst(&mut r, Side::Client);
    r.relay.handle_ready(Side::Client, true, false, false);
    spliced(&mut r, Side::Client, 30000);
    // Small bursts from now on. The first follows a large one and is spliced unasked; each
    // halves what the direction remembers, and after a few it no longer asks (a flow of small
    // messages pays no ioctl), and copies.
    r.relay.handle_ready(Side::Client, true, false, false);
    spliced(&mut r, Side::Client, 64);
    let mut asked = 0;
    loop {
        r.relay.handle_ready(Side::Client, true, false, false);
        let next = r.poll();
        if next == Next::Op(read(Side::Client)) {
            r.complete(read(Side::Client), Ok(64)).expect("open");
            break;
        }
        assert_eq!(next, Next::Op(queued(Side::Client)), "after {asked} asks");
        r.complete(queued(Side::Client), Ok(64)).expect("open");
        r.copy(Side::Client, 64, 64);
        asked += 1;
        assert!(asked < 8, "still asking after {asked} small bursts");
    }
    // 4,096 + 30,000 bytes in one burst is 16 bits; each small burst takes one off, and below
    // 13 bits (4 KiB, the threshold) the direction no longer asks: the unasked one, then 2.
    assert_eq!(asked, 2);
    assert_eq!(r.loan.stats.bytes_spliced, 30000 + 64);
}

#[test]
fn auto_mode_keeps_the_last_verdict_when_nothing_is_queued_or_the_ioctl_fails() {
    let mut r = rig(RelayMode::Auto, 4);
    large_burst(&mut r, Side::Client);
    // A large burst, then a small one: the direction copies, and asks before each burst.
    r.relay.handle_ready(Side::Client, true, false, false);
    spliced(&mut r, Side::Client, 30000);
    r.relay.handle_ready(Side::Client, true, false, false);
    spliced(&mut r, Side::Client, 64);
    // Its verdict (copy) stands when the answer says nothing...
    r.relay.handle_ready(Side::Client, true, false, false);
    r.step(queued(Side::Client), Ok(0));
    r.copy(Side::Client, 64, 64);
    assert_eq!(r.poll(), Next::Wait);
    // ... and when the ioctl fails.
    r.relay.handle_ready(Side::Client, true, false, false);
    r.step(queued(Side::Client), Err(io::Error::other("EBADF")));
    assert_eq!(r.poll(), Next::Op(read(Side::Client)));
}

#[test]
fn copy_and_splice_modes_never_ask_what_is_queued() {
    for mode in [RelayMode::Copy, RelayMode::Splice] {
        let mut r = rig(mode, 4);
        let mut reads = 0;
        for _ in 0..3 {
            r.relay.handle_ready(Side::Client, true, false, false);
            r.relay.handle_ready(Side::Backend, true, false, false);
            // Each source: one large read, then empty; every write takes all.
            loop {
                match r.poll() {
                    Next::Op(op @ IoOp::Queued { .. }) => panic!("{mode:?} asked: {op:?}"),
                    Next::Op(op) if op.reads() => {
                        reads += 1;
                        let res = if reads % 2 == 1 {
                            Ok(1024)
                        } else {
                            would_block()
                        };
                        r.complete(op, res).expect("open");
                    }
                    Next::Op(op) => {
                        r.complete(op, Ok(1024)).expect("open");
                    }
                    Next::Wait | Next::Yield | Next::Closed(_) => break,
                }
            }
        }
        assert_eq!(reads, 12, "{mode:?}");
    }
}

#[test]
fn without_a_free_pipe_splice_mode_copies_and_counts_the_fallback() {
    let mut r = rig(RelayMode::Splice, 0);
    assert_eq!(r.poll(), Next::Op(read(Side::Client)));
    assert_eq!(r.loan.stats.copy_fallbacks, 1);
}

#[test]
fn a_transport_that_cannot_splice_is_always_copied() {
    let mut stats = RelayStats::default();
    let mut relay = new_relay(false, &mut stats);
    let mut loan = Loan::new(4, vec![0u8; 1024], stats);
    let mut cx = loan.ctx(RelayMode::Splice, 1, false);
    let room = cx.scratch.len();
    assert_eq!(
        relay.poll_op(&mut cx, 1, room),
        Next::Op(read(Side::Client))
    );
    assert_eq!(cx.stats.copy_fallbacks, 0);
}

#[test]
fn fin_each_way_is_forwarded_then_the_relay_is_done() {
    for plain in [true, false] {
        fin_each_way(plain);
    }
}

/// The client's FIN goes on with a shutdown, the relay waits half-closed, then the backend's
/// FIN: on plain sockets the close that follows carries it (no second shutdown); a TLS
/// session (`plain` false: the transports cannot splice) shuts down to send its close_notify.
fn fin_each_way(plain: bool) {
    let mut r = rig(RelayMode::Copy, 0);
    r.relay = new_relay(plain, &mut r.loan.stats);
    r.step(read(Side::Client), Ok(0));
    r.step(
        IoOp::Shutdown {
            side: Side::Backend,
        },
        Ok(0),
    );
    r.step(read(Side::Backend), would_block());
    // Half-closed: the relay waits for the backend and stamps the half-close.
    assert_eq!(r.poll(), Next::Wait);
    assert_eq!(r.relay.times.half_closed_at, 5);
    r.relay.handle_ready(Side::Backend, true, false, true);
    r.step(read(Side::Backend), Ok(0));
    if !plain {
        r.step(IoOp::Shutdown { side: Side::Client }, Ok(0));
    }
    assert_eq!(r.poll(), Next::Closed(CloseReason::Done), "plain: {plain}");
}

#[test]
fn a_failing_socket_names_its_side() {
    let reset = || Err(io::Error::from(io::ErrorKind::ConnectionReset));
    let mut r = rig(RelayMode::Copy, 0);
    let op = read(Side::Client);
    assert_eq!(r.poll(), Next::Op(op));
    assert_eq!(r.complete(op, reset()), Err(CloseReason::ClientReset));

    let mut r = rig(RelayMode::Copy, 0);
    r.step(read(Side::Client), Ok(3));
    let w = IoOp::Write {
        side: Side::Backend,
        src: Src::Scratch(3),
    };
    assert_eq!(r.poll(), Next::Op(w));
    assert_eq!(r.complete(w, reset()), Err(CloseReason::BackendReset));
}

#[test]
fn a_busy_source_yields_after_its_budget() {
    let mut r = rig(RelayMode::Copy, 0);
    for _ in 0..BUDGET {
        r.copy(Side::Client, 1024, 1024);
    }
    r.step(read(Side::Backend), would_block());
    assert_eq!(r.poll(), Next::Yield);
    r.relay.resume();
    assert_eq!(r.poll(), Next::Op(read(Side::Client)));
}

#[test]
fn a_pipe_holding_bytes_at_the_end_is_discarded_not_reused() {
    let mut r = rig(RelayMode::Splice, 2);
    let op = IoOp::SpliceIn {
        side: Side::Client,
        max: 65536,
    };
    r.step(op, Ok(500));
    let out = IoOp::SpliceOut {
        side: Side::Backend,
        len: 500,
    };
    r.step(out, would_block());
    let (relay, mut cx) = r.parts();
    relay.release(&mut cx);
    assert_eq!((r.loan.pipes.lent, r.loan.pipes.discarded), (0, 1));
}

#[test]
fn large_pipes_take_a_quarter_of_the_users_pipe_pages_shared_by_the_workers() {
    // Linux's default fs.pipe-user-pages-soft: 16,384 pages, 64 MiB; a quarter is 16 MiB.
    assert_eq!(large_pipes(16384, 256 << 10, 1), 64);
    assert_eq!(large_pipes(16384, 256 << 10, 2), 32);
    assert_eq!(large_pipes(16384, 1 << 20, 4), 4);
    assert_eq!(
        large_pipes(16384, 1 << 20, 32),
        0,
        "then every pipe is the kernel's size"
    );
    // Pipes of the kernel's size or smaller, or no per-user limit: no cap of this kind.
    assert_eq!(large_pipes(16384, KERNEL_PIPE, 2), usize::MAX);
    assert_eq!(large_pipes(16384, 16 << 10, 2), usize::MAX);
    assert_eq!(large_pipes(0, 256 << 10, 2), usize::MAX);
}

#[test]
fn pipes_are_bulk_sized_unless_a_memory_budget_charges_them() {
    assert_eq!(default_pipe_size(false), 256 << 10);
    assert_eq!(default_pipe_size(true), KERNEL_PIPE);
}

mod completion;
