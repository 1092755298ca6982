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

fn rig(mode: RelayMode, pipes: usize) -> Rig {
    let mut stats = RelayStats::default();
    let relay = Relay::new(
        Vec::new(),
        Vec::new(),
        true,
        Timeouts::new(Default::default(), Default::default()),
        1,
        &mut stats,
    );
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

    /// Drains both sources at the start: both report WouldBlock.
    fn settle(&mut self) {
        self.step(read(Side::Client), would_block());
        self.step(read(Side::Backend), would_block());
        assert_eq!(self.poll(), Next::Wait);
    }
}

fn read(side: Side) -> IoOp {
    IoOp::Read { side, max: 1024 }
}

impl Rig {
    /// A copy round: `n` bytes read from `from`, and the other side takes `took` of them.
    fn copy(&mut self, from: Side, n: usize, took: usize) {
        let to = match from {
            Side::Client => Side::Backend,
            Side::Backend => Side::Client,
        };
        self.step(read(from), Ok(n));
        let write = IoOp::Write {
            side: to,
            src: Src::Scratch(n),
        };
        self.step(write, Ok(took));
    }
}

#[test]
fn small_message_is_copied_through_scratch_and_the_direction_waits_again() {
    let mut r = rig(RelayMode::Auto, 4);
    r.settle();
    r.relay.handle_ready(Side::Client, true, false, false);
    r.copy(Side::Client, 10, 10);
    // A short read drained the socket: no read until the next edge.
    assert_eq!(r.poll(), Next::Wait);
    assert_eq!((r.loan.stats.bytes_up, r.loan.stats.bytes_copied), (10, 10));
    assert_eq!(r.loan.stats.overflow_in_use, 0);
}

#[test]
fn a_short_write_keeps_the_rest_and_stops_reading_until_the_peer_is_writable() {
    let mut r = rig(RelayMode::Copy, 0);
    r.settle();
    r.relay.handle_ready(Side::Backend, true, false, false);
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
    assert_eq!(r.relay.held().len(), 924);
    r.complete(op, Ok(924)).expect("open");
    assert_eq!(r.loan.stats.overflow_in_use, 0);
    // Now the source is read again.
    assert_eq!(r.poll(), Next::Op(read(Side::Backend)));
}

#[test]
fn auto_mode_splices_once_a_burst_reaches_the_threshold_and_copies_small_bursts() {
    let mut r = rig(RelayMode::Auto, 4);
    r.settle();
    r.relay.handle_ready(Side::Client, true, false, false);
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
    // That burst was large: the next one asks what waits, and 50 bytes are copied.
    r.relay.handle_ready(Side::Client, true, false, false);
    r.step(queued(Side::Client), Ok(50));
    r.copy(Side::Client, 50, 50);
    assert_eq!(r.poll(), Next::Wait);
    // And a burst that finds the threshold queued is spliced from its first byte.
    r.relay.handle_ready(Side::Client, true, false, false);
    r.step(queued(Side::Client), Ok(5000));
    r.step(splice_in, Ok(5000));
    assert_eq!(r.loan.stats.bytes_spliced, 35000);
    assert_eq!(r.loan.stats.bytes_copied, 4096 + 50);
}

fn queued(side: Side) -> IoOp {
    IoOp::Queued { side }
}

#[test]
fn auto_mode_decides_each_burst_on_what_is_queued_not_on_the_burst_before() {
    let mut r = rig(RelayMode::Auto, 4);
    r.settle();
    // One large burst (copied, then spliced once it reached the threshold) makes the direction
    // one that asks.
    r.relay.handle_ready(Side::Backend, true, false, false);
    for _ in 0..4 {
        r.copy(Side::Backend, 1024, 1024);
    }
    let splice_in = IoOp::SpliceIn {
        side: Side::Backend,
        max: 65536,
    };
    r.step(splice_in, would_block());
    // Bursts of alternating size, as a writer that sends a header and then a large body: each
    // is decided on its own queue, never on the one before.
    for round in 0..3 {
        r.relay.handle_ready(Side::Backend, true, false, false);
        r.step(queued(Side::Backend), Ok(10));
        r.copy(Side::Backend, 10, 10);
        assert_eq!(r.poll(), Next::Wait, "round {round}");
        r.relay.handle_ready(Side::Backend, true, false, false);
        r.step(queued(Side::Backend), Ok(8192));
        r.step(splice_in, Ok(8192));
        r.step(
            IoOp::SpliceOut {
                side: Side::Client,
                len: 8192,
            },
            Ok(8192),
        );
        r.step(splice_in, would_block());
    }
    assert_eq!(r.loan.stats.bytes_spliced, 3 * 8192);
    assert_eq!(r.loan.stats.bytes_copied, 4096 + 3 * 10);
    // The other direction never had a large burst: it never asks.
    r.relay.handle_ready(Side::Client, true, false, false);
    r.copy(Side::Client, 10, 10);
}

#[test]
fn auto_mode_stops_asking_once_a_direction_has_had_only_small_bursts_for_a_while() {
    let mut r = rig(RelayMode::Auto, 4);
    r.settle();
    r.relay.handle_ready(Side::Client, true, false, false);
    for _ in 0..4 {
        r.copy(Side::Client, 1024, 1024);
    }
    r.step(
        IoOp::SpliceIn {
            side: Side::Client,
            max: 65536,
        },
        would_block(),
    );
    // Small bursts from now on: each halves what the direction remembers; after a few it no
    // longer asks (a flow of small messages pays no ioctl), and copies.
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
    // A 4 KiB burst is 13 bits; each small burst takes one off, and below 12 bits (2 KiB, half
    // the threshold) the direction no longer asks: 2 asks.
    assert_eq!(asked, 2);
    assert_eq!(r.loan.stats.bytes_spliced, 0);
}

#[test]
fn auto_mode_keeps_the_last_verdict_when_nothing_is_queued_or_the_ioctl_fails() {
    let mut r = rig(RelayMode::Auto, 4);
    r.settle();
    r.relay.handle_ready(Side::Client, true, false, false);
    for _ in 0..4 {
        r.copy(Side::Client, 1024, 1024);
    }
    let splice_in = IoOp::SpliceIn {
        side: Side::Client,
        max: 65536,
    };
    r.step(splice_in, would_block());
    // A large burst: its verdict (splice) stands when the answer says nothing...
    r.relay.handle_ready(Side::Client, true, false, false);
    r.step(queued(Side::Client), Ok(0));
    r.step(splice_in, Ok(5000));
    let out = IoOp::SpliceOut {
        side: Side::Backend,
        len: 5000,
    };
    r.step(out, Ok(5000));
    r.step(splice_in, would_block());
    // ... and when the ioctl fails.
    r.relay.handle_ready(Side::Client, true, false, false);
    r.step(queued(Side::Client), Err(io::Error::other("EBADF")));
    assert_eq!(r.poll(), Next::Op(splice_in));
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
    let mut relay: Relay<u32> = Relay::new(
        Vec::new(),
        Vec::new(),
        false,
        Timeouts::new(Default::default(), Default::default()),
        1,
        &mut stats,
    );
    let mut pipes = FakePipes {
        cap: 4,
        ..Default::default()
    };
    let scratch = vec![0u8; 1024];
    let mut returned = Vec::new();
    let mut cx = Ctx {
        scratch: &scratch,
        lent: None,
        lent_at: 0,
        lent_room: 0,
        returned: &mut returned,
        pipes: &mut pipes,
        stats: &mut stats,
        mode: RelayMode::Splice,
        threshold: 1,
        completion: false,
        standing: false,
    };
    let room = cx.scratch.len();
    assert_eq!(
        relay.poll_op(&mut cx, 1, room),
        Next::Op(read(Side::Client))
    );
    assert_eq!(cx.stats.copy_fallbacks, 0);
}

#[test]
fn fin_each_way_is_forwarded_then_the_relay_is_done() {
    let mut r = rig(RelayMode::Copy, 0);
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
    r.step(IoOp::Shutdown { side: Side::Client }, Ok(0));
    assert_eq!(r.poll(), Next::Closed(CloseReason::Done));
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

// ---- a completion driver (io_uring) ------------------------------------------------------

fn from_buf(side: Side, id: BufId, from: u32, len: u32) -> IoOp {
    IoOp::Write {
        side,
        src: Src::Buf { id, from, len },
    }
}

#[test]
fn completion_driver_waits_on_both_sources_at_once() {
    let mut r = rig(RelayMode::Copy, 0);
    r.completion = true;
    // Both reads are submitted: each direction has its own operation in flight.
    assert_eq!(r.poll(), Next::Op(read(Side::Client)));
    assert_eq!(r.poll(), Next::Op(read(Side::Backend)));
    assert_eq!(r.poll(), Next::Wait);
    // The backend's bytes land in driver buffer 3 and are sent from there, in two parts: a
    // short write is no sign of a full socket when the driver waits for room.
    r.next_buf = 3;
    assert_eq!(
        r.complete(read(Side::Backend), Ok(100)),
        Ok((Way::Down, 100))
    );
    assert!(
        r.loan.returned.is_empty(),
        "the relay keeps the buffer it sends from"
    );
    assert_eq!(r.poll(), Next::Op(from_buf(Side::Client, 3, 0, 100)));
    assert_eq!(r.poll(), Next::Wait);
    r.complete(from_buf(Side::Client, 0, 0, 0), Ok(40))
        .expect("open");
    assert_eq!(r.poll(), Next::Op(from_buf(Side::Client, 3, 40, 60)));
    r.complete(from_buf(Side::Client, 0, 0, 0), Ok(60))
        .expect("open");
    assert_eq!(
        r.loan.returned,
        vec![3],
        "sent in full: the buffer goes back"
    );
    // A short read is no sign of a drained socket either: the next read waits for bytes.
    assert_eq!(r.poll(), Next::Op(read(Side::Backend)));
    // The client's read was in flight all along.
    r.next_buf = 4;
    assert_eq!(r.complete(read(Side::Client), Ok(0)), Ok((Way::Up, 0)));
    assert_eq!(
        r.poll(),
        Next::Op(IoOp::Shutdown {
            side: Side::Backend
        })
    );
}

#[test]
fn completion_driver_gets_its_buffer_back_when_the_relay_ends() {
    let mut r = rig(RelayMode::Copy, 0);
    r.completion = true;
    assert_eq!(r.poll(), Next::Op(read(Side::Client)));
    r.next_buf = 9;
    r.complete(read(Side::Client), Ok(10)).expect("open");
    assert_eq!(r.poll(), Next::Op(from_buf(Side::Backend, 9, 0, 10)));
    let (relay, mut cx) = r.parts();
    relay.release(&mut cx);
    assert_eq!(r.loan.returned, vec![9]);
}

#[test]
fn a_completion_for_a_direction_with_nothing_in_flight_is_ignored() {
    let mut r = rig(RelayMode::Copy, 0);
    r.completion = true;
    assert_eq!(r.poll(), Next::Op(read(Side::Client)));
    assert_eq!(r.complete(read(Side::Backend), Ok(5)), Ok((Way::Down, 0)));
    assert_eq!(r.loan.returned, vec![0], "the stray buffer is not kept");
}

// ---- a standing (multishot) receive --------------------------------------------------------

fn recv(side: Side) -> IoOp {
    IoOp::Recv { side, more: true }
}

impl Rig {
    /// Plays an io_uring driver with multishot receives.
    fn standing(mode: RelayMode, pipes: usize) -> Rig {
        let mut r = rig(mode, pipes);
        r.completion = true;
        r
    }

    /// An arrival of `side`'s standing receive: `n` bytes at `at` of buffer `id` (room: 1024
    /// from the buffer's start), or `res` when it carries none.
    fn arrive(
        &mut self,
        side: Side,
        buf: Option<(BufId, u32)>,
        res: io::Result<usize>,
        more: bool,
    ) -> Result<(Way, u64), CloseReason> {
        let (relay, mut cx) = self.parts();
        cx.standing = true;
        if let Some((id, at)) = buf {
            cx.lent = Some(id);
            cx.lent_at = at;
            cx.lent_room = 1024 - at;
        }
        let scratch = cx.scratch;
        let r = relay.complete(IoOp::Recv { side, more }, res, &mut cx, scratch, 5);
        if let Some(id) = cx.lent {
            cx.returned.push(id); // not kept: the worker gives it back
        }
        r
    }

    fn poll_standing(&mut self) -> Next {
        let (relay, mut cx) = self.parts();
        cx.standing = true;
        let room = cx.scratch.len();
        relay.poll_op(&mut cx, 5, room)
    }

    fn write_done(&mut self, side: Side, n: usize) {
        let (relay, mut cx) = self.parts();
        cx.standing = true;
        relay
            .complete(from_buf(side, 0, 0, 0), Ok(n), &mut cx, &[], 5)
            .expect("relay still open");
    }
}

#[test]
fn a_standing_receive_is_asked_for_once_and_every_arrival_goes_out_from_its_buffer() {
    let mut r = Rig::standing(RelayMode::Copy, 0);
    assert_eq!(r.poll_standing(), Next::Op(recv(Side::Client)));
    assert_eq!(r.poll_standing(), Next::Op(recv(Side::Backend)));
    assert_eq!(r.poll_standing(), Next::Wait);
    for round in 0..3u32 {
        let at = round * 10;
        assert_eq!(
            r.arrive(Side::Client, Some((3, at)), Ok(10), true),
            Ok((Way::Up, 10))
        );
        assert_eq!(
            r.poll_standing(),
            Next::Op(from_buf(Side::Backend, 3, at, 10))
        );
        r.write_done(Side::Backend, 10);
        // Not asked for again: the receive stands.
        assert_eq!(r.poll_standing(), Next::Wait);
    }
    assert_eq!(
        r.loan.returned,
        vec![3, 3, 3],
        "each arrival given back once"
    );
    assert_eq!(r.loan.stats.bytes_up, 30);
}

#[test]
fn arrivals_behind_a_write_in_flight_are_copied_and_the_receive_stops_at_the_bound() {
    let mut r = Rig::standing(RelayMode::Copy, 0);
    assert_eq!(r.poll_standing(), Next::Op(recv(Side::Client)));
    assert_eq!(r.poll_standing(), Next::Op(recv(Side::Backend)));
    r.arrive(Side::Client, Some((1, 0)), Ok(100), true)
        .expect("open");
    assert_eq!(
        r.poll_standing(),
        Next::Op(from_buf(Side::Backend, 1, 0, 100))
    );
    // The backend is slow: more arrives while the write waits. A contiguous arrival in the
    // same buffer joins the bytes being written; any other is copied behind them and its
    // buffer goes back at once: a slow reader pins one buffer of the shared ring, no more.
    r.arrive(Side::Client, Some((1, 100)), Ok(50), true)
        .expect("open");
    r.arrive(Side::Client, Some((2, 0)), Ok(20), true)
        .expect("open");
    assert_eq!(r.loan.returned, vec![2]);
    assert_eq!(r.poll_standing(), Next::Wait, "a write is in flight");
    // 64 KiB copied: the receive stops.
    let mut id = 10;
    while r.poll_standing() == Next::Wait {
        r.arrive(Side::Client, Some((id, 0)), Ok(1024), true)
            .expect("open");
        id += 1;
    }
    assert_eq!(id, 10 + 64, "stopped at 64 KiB held");
    // (the poll that ended the loop asked for the stop)
    assert_eq!(r.poll_standing(), Next::Wait, "stopped once");
    // What was under way when it stopped still arrives; then the receive's end.
    r.arrive(Side::Client, Some((99, 0)), Ok(7), true)
        .expect("open");
    r.arrive(
        Side::Client,
        None,
        Err(io::ErrorKind::Interrupted.into()),
        false,
    )
    .expect("open");
    assert_eq!(
        r.loan.returned.len(),
        1 + 64 + 1,
        "every copied arrival went back"
    );
    // The buffer's bytes go out first, then the copies; then the receive is armed again.
    r.write_done(Side::Backend, 100);
    assert_eq!(
        r.poll_standing(),
        Next::Op(from_buf(Side::Backend, 1, 100, 50))
    );
    r.write_done(Side::Backend, 50);
    assert_eq!(&r.loan.returned[r.loan.returned.len() - 2..], &[1, 1]);
    let held = IoOp::Write {
        side: Side::Backend,
        src: Src::Held,
    };
    assert_eq!(r.poll_standing(), Next::Op(held));
    assert_eq!(r.relay.held().len(), 20 + 64 * 1024 + 7);
    let (relay, mut cx) = r.parts();
    relay
        .complete(held, Ok(20 + 64 * 1024 + 7), &mut cx, &[], 5)
        .expect("open");
    assert_eq!(r.loan.stats.overflow_in_use, 0);
    assert_eq!(r.poll_standing(), Next::Op(recv(Side::Client)));
    assert_eq!(r.loan.stats.bytes_up, 100 + 50 + 20 + 64 * 1024 + 7);
}

#[test]
fn a_standing_receive_without_buffers_waits_for_readiness_and_fin_shuts_the_other_side() {
    let mut r = Rig::standing(RelayMode::Copy, 0);
    assert_eq!(r.poll_standing(), Next::Op(recv(Side::Client)));
    assert_eq!(r.poll_standing(), Next::Op(recv(Side::Backend)));
    // No free driver buffer: the receive is over and not asked for again until the driver
    // says the socket is worth reading (buffers are back).
    r.arrive(Side::Backend, None, would_block(), false)
        .expect("open");
    assert_eq!(r.poll_standing(), Next::Wait);
    r.relay.handle_ready(Side::Backend, true, false, false);
    assert_eq!(r.poll_standing(), Next::Op(recv(Side::Backend)));
    // FIN ends the receive and is forwarded.
    r.arrive(Side::Client, None, Ok(0), false).expect("open");
    assert_eq!(
        r.poll_standing(),
        Next::Op(IoOp::Shutdown {
            side: Side::Backend
        })
    );
    // A failing receive ends the relay, blaming its socket.
    assert_eq!(
        r.arrive(
            Side::Backend,
            None,
            Err(io::ErrorKind::ConnectionReset.into()),
            false
        ),
        Err(CloseReason::BackendReset)
    );
}

#[test]
fn a_bulk_burst_stops_the_standing_receive_and_splices_and_the_end_gives_buffers_back() {
    let mut r = Rig::standing(RelayMode::Auto, 4);
    assert_eq!(r.poll_standing(), Next::Op(recv(Side::Client)));
    assert_eq!(r.poll_standing(), Next::Op(recv(Side::Backend)));
    // Full buffers (the socket had more) until the burst reaches the threshold (4096 here).
    for id in 0..4 {
        r.arrive(Side::Client, Some((id, 0)), Ok(1024), true)
            .expect("open");
    }
    assert_eq!(
        r.poll_standing(),
        Next::Op(from_buf(Side::Backend, 0, 0, 1024))
    );
    r.write_done(Side::Backend, 1024);
    let held = IoOp::Write {
        side: Side::Backend,
        src: Src::Held,
    };
    assert_eq!(r.poll_standing(), Next::Op(held));
    let (relay, mut cx) = r.parts();
    relay
        .complete(held, Ok(3072), &mut cx, &[], 5)
        .expect("open");
    // Bulk: the standing receive stops, and the rest of the burst is spliced.
    assert_eq!(
        r.poll_standing(),
        Next::Op(IoOp::StopRecv { side: Side::Client })
    );
    assert_eq!(r.poll_standing(), Next::Wait);
    r.arrive(
        Side::Client,
        None,
        Err(io::ErrorKind::Interrupted.into()),
        false,
    )
    .expect("open");
    assert_eq!(
        r.poll_standing(),
        Next::Op(IoOp::SpliceIn {
            side: Side::Client,
            max: 65536
        })
    );
    // The backend's arrival is held when the relay ends: it goes back.
    r.arrive(Side::Backend, Some((9, 0)), Ok(5), true)
        .expect("open");
    let (relay, mut cx) = r.parts();
    relay.release(&mut cx);
    assert!(r.loan.returned.ends_with(&[9]), "{:?}", r.loan.returned);
}

#[test]
fn a_copied_overflow_that_keeps_streaming_holds_only_unsent_bytes() {
    let mut r = Rig::standing(RelayMode::Copy, 0);
    assert_eq!(r.poll_standing(), Next::Op(recv(Side::Client)));
    assert_eq!(r.poll_standing(), Next::Op(recv(Side::Backend)));
    r.arrive(Side::Client, Some((1, 0)), Ok(1000), true)
        .expect("open");
    assert_eq!(
        r.poll_standing(),
        Next::Op(from_buf(Side::Backend, 1, 0, 1000))
    );
    r.arrive(Side::Client, Some((2, 0)), Ok(1000), true)
        .expect("open");
    r.write_done(Side::Backend, 1000);
    let held = IoOp::Write {
        side: Side::Backend,
        src: Src::Held,
    };
    // A destination that takes half of each write while the source keeps sending: the
    // overflow never holds more than what is still unsent.
    for id in 3..200 {
        assert_eq!(r.poll_standing(), Next::Op(held));
        let unsent = r.relay.held().len();
        r.arrive(Side::Client, Some((id, 0)), Ok(1000), true)
            .expect("open");
        let (relay, mut cx) = r.parts();
        relay
            .complete(held, Ok(unsent / 2), &mut cx, &[], 5)
            .expect("open");
        assert!(
            r.relay.up_held_capacity() < 8192,
            "grew to {}",
            r.relay.up_held_capacity()
        );
    }
}
