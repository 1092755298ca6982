//! The relay under a completion driver (io_uring): driver buffers, one-shot and standing
//! (multishot) receives.

use super::*;

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

/// The write to the backend from the bytes the relay holds (its overflow).
const HELD_UP: IoOp = IoOp::Write {
    side: Side::Backend,
    src: Src::Held,
};

impl Rig {
    /// Plays an io_uring driver with multishot receives; both sides' receives are asked for.
    fn standing(mode: RelayMode, pipes: usize) -> Rig {
        let mut r = rig(mode, pipes);
        r.completion = true;
        assert_eq!(r.poll_standing(), Next::Op(recv(Side::Client)));
        assert_eq!(r.poll_standing(), Next::Op(recv(Side::Backend)));
        r
    }

    /// [`Rig::arrive`] of `n` bytes at `at` of buffer `id`, the receive still armed.
    fn arrives(&mut self, side: Side, id: BufId, at: u32, n: usize) {
        self.arrive(side, Some((id, at)), Ok(n), true)
            .expect("open");
    }

    /// The client's standing receive ends (`res`: how), with no bytes.
    fn recv_over(&mut self, res: io::Result<usize>) {
        self.arrive(Side::Client, None, res, false).expect("open");
    }

    /// Expects the write to the backend of `n` bytes at `at` of buffer `id` next.
    #[track_caller]
    fn expect_up(&mut self, id: BufId, at: u32, n: u32) {
        assert_eq!(
            self.poll_standing(),
            Next::Op(from_buf(Side::Backend, id, at, n))
        );
    }

    /// `n` bytes from the client arrive at the start of buffer `id` and go out to the backend
    /// from there.
    fn sent_up(&mut self, id: BufId, n: u32) {
        self.arrives(Side::Client, id, 0, n as usize);
        self.expect_up(id, 0, n);
    }

    /// The write of held bytes to the backend completed, `n` of them.
    fn held_done(&mut self, n: usize) {
        let (relay, mut cx) = self.parts();
        relay
            .complete(HELD_UP, Ok(n), &mut cx, &[], 5)
            .expect("open");
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
    assert_eq!(r.poll_standing(), Next::Wait);
    for round in 0..3u32 {
        let at = round * 10;
        assert_eq!(
            r.arrive(Side::Client, Some((3, at)), Ok(10), true),
            Ok((Way::Up, 10))
        );
        r.expect_up(3, at, 10);
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
    r.sent_up(1, 100);
    // The backend is slow: more arrives while the write waits. A contiguous arrival in the
    // same buffer joins the bytes being written; any other is copied behind them and its
    // buffer goes back at once: a slow reader pins one buffer of the shared ring, no more.
    r.arrives(Side::Client, 1, 100, 50);
    r.arrives(Side::Client, 2, 0, 20);
    assert_eq!(r.loan.returned, vec![2]);
    assert_eq!(r.poll_standing(), Next::Wait, "a write is in flight");
    // 64 KiB copied: the receive stops.
    let mut id = 10;
    while r.poll_standing() == Next::Wait {
        r.arrives(Side::Client, id, 0, 1024);
        id += 1;
    }
    assert_eq!(id, 10 + 64, "stopped at 64 KiB held");
    // (the poll that ended the loop asked for the stop)
    assert_eq!(r.poll_standing(), Next::Wait, "stopped once");
    // What was under way when it stopped still arrives; then the receive's end.
    r.arrives(Side::Client, 99, 0, 7);
    r.recv_over(Err(io::ErrorKind::Interrupted.into()));
    assert_eq!(
        r.loan.returned.len(),
        1 + 64 + 1,
        "every copied arrival went back"
    );
    // The buffer's bytes go out first, then the copies; then the receive is armed again.
    r.write_done(Side::Backend, 100);
    r.expect_up(1, 100, 50);
    r.write_done(Side::Backend, 50);
    assert_eq!(&r.loan.returned[r.loan.returned.len() - 2..], &[1, 1]);
    assert_eq!(r.poll_standing(), Next::Op(HELD_UP));
    assert_eq!(r.relay.held(Side::Backend).len(), 20 + 64 * 1024 + 7);
    r.held_done(20 + 64 * 1024 + 7);
    assert_eq!(r.loan.stats.overflow_in_use, 0);
    assert_eq!(r.poll_standing(), Next::Op(recv(Side::Client)));
    assert_eq!(r.loan.stats.bytes_up, 100 + 50 + 20 + 64 * 1024 + 7);
}

/// A limited receive (io_uring's multishot byte limit) ends with the arrival that reaches its
/// limit; it is armed again only once the destination took every byte it brought, so a
/// stalled destination holds what one arming brought and no more is received meanwhile.
#[test]
fn a_receive_that_ended_at_its_limit_is_armed_again_once_the_bytes_are_written() {
    // Both receives asked for.
    let mut r = Rig::standing(RelayMode::Copy, 0);
    r.arrive(Side::Client, Some((1, 0)), Ok(100), true)
        .expect("open");
    assert_eq!(
        r.poll_standing(),
        Next::Op(from_buf(Side::Backend, 1, 0, 100))
    );
    // The backend stalls; more arrives, the last arrival without MORE: the limit was reached.
    r.arrive(Side::Client, Some((2, 0)), Ok(1000), true)
        .expect("open");
    r.arrive(Side::Client, Some((3, 0)), Ok(900), false)
        .expect("open");
    assert_eq!(r.loan.returned, vec![2, 3], "copied, buffers back at once");
    assert_eq!(
        r.poll_standing(),
        Next::Wait,
        "no stop asked: it ended itself"
    );
    // The write completes: the copies go out before any new receive.
    r.write_done(Side::Backend, 100);
    let held = IoOp::Write {
        side: Side::Backend,
        src: Src::Held,
    };
    assert_eq!(r.poll_standing(), Next::Op(held));
    let (relay, mut cx) = r.parts();
    relay
        .complete(held, Ok(1000), &mut cx, &[], 5)
        .expect("open");
    // Part is left: still no receive.
    assert_eq!(r.poll_standing(), Next::Op(held));
    let (relay, mut cx) = r.parts();
    relay
        .complete(held, Ok(900), &mut cx, &[], 5)
        .expect("open");
    assert_eq!(r.poll_standing(), Next::Op(recv(Side::Client)));
    assert_eq!(r.loan.stats.bytes_up, 2000);
}

#[test]
fn a_standing_receive_without_buffers_waits_for_readiness_and_fin_shuts_the_other_side() {
    let mut r = Rig::standing(RelayMode::Copy, 0);
    // No free driver buffer: the receive is over and not asked for again until the driver
    // says the socket is worth reading (buffers are back).
    r.arrive(Side::Backend, None, would_block(), false)
        .expect("open");
    assert_eq!(r.poll_standing(), Next::Wait);
    r.relay.handle_ready(Side::Backend, true, false, false);
    assert_eq!(r.poll_standing(), Next::Op(recv(Side::Backend)));
    // FIN ends the receive and is forwarded.
    r.recv_over(Ok(0));
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
    // Full buffers (the socket had more) until the burst reaches the threshold (4096 here).
    for id in 0..4 {
        r.arrives(Side::Client, id, 0, 1024);
    }
    r.expect_up(0, 0, 1024);
    r.write_done(Side::Backend, 1024);
    assert_eq!(r.poll_standing(), Next::Op(HELD_UP));
    r.held_done(3072);
    // Bulk: the standing receive stops, and the rest of the burst is spliced.
    assert_eq!(
        r.poll_standing(),
        Next::Op(IoOp::StopRecv { side: Side::Client })
    );
    assert_eq!(r.poll_standing(), Next::Wait);
    r.recv_over(Err(io::ErrorKind::Interrupted.into()));
    assert_eq!(
        r.poll_standing(),
        Next::Op(IoOp::SpliceIn {
            side: Side::Client,
            max: 65536
        })
    );
    // The backend's arrival is held when the relay ends: it goes back.
    r.arrives(Side::Backend, 9, 0, 5);
    let (relay, mut cx) = r.parts();
    relay.release(&mut cx);
    assert!(r.loan.returned.ends_with(&[9]), "{:?}", r.loan.returned);
}

#[test]
fn a_copied_overflow_that_keeps_streaming_holds_only_unsent_bytes() {
    let mut r = Rig::standing(RelayMode::Copy, 0);
    r.sent_up(1, 1000);
    r.arrives(Side::Client, 2, 0, 1000);
    r.write_done(Side::Backend, 1000);
    // A destination that takes half of each write while the source keeps sending: the
    // overflow never holds more than what is still unsent.
    for id in 3..200 {
        assert_eq!(r.poll_standing(), Next::Op(HELD_UP));
        let unsent = r.relay.held(Side::Backend).len();
        r.arrives(Side::Client, id, 0, 1000);
        r.held_done(unsent / 2);
        assert!(
            r.relay.up_held_capacity() < 8192,
            "grew to {}",
            r.relay.up_held_capacity()
        );
    }
}

/// A binary upgrade under a completion driver: the settled relay starts nothing more, the
/// driver cancels what is in flight, and once every completion is in (a write that sent part,
/// both receives over) the relay goes with the bytes left in the driver's buffer in front of
/// the arrival copied behind them; none is written or read here meanwhile.
#[test]
fn a_settled_relay_starts_nothing_and_goes_once_what_was_in_flight_completed() {
    let mut r = Rig::standing(RelayMode::Copy, 0);
    r.sent_up(1, 100);
    r.arrives(Side::Client, 2, 0, 20);
    assert!(
        !r.relay.can_hand_over(),
        "a write and two receives in flight"
    );
    assert!(r.relay.settle(), "the driver must cancel what is in flight");
    assert!(!r.relay.settle(), "asked once");
    assert_eq!(r.poll_standing(), Next::Wait);
    // The cancelled write had sent 40 bytes; the rest is not written again here.
    r.write_done(Side::Backend, 40);
    assert_eq!(r.poll_standing(), Next::Wait);
    // An arrival before the cancel reached the receive is kept (a short one ends the burst:
    // the relay stays settled).
    r.arrives(Side::Client, 3, 0, 10);
    assert_eq!(r.poll_standing(), Next::Wait);
    r.recv_over(Err(io::ErrorKind::Interrupted.into()));
    assert!(
        !r.relay.can_hand_over(),
        "the backend's receive is still in flight"
    );
    r.arrive(
        Side::Backend,
        None,
        Err(io::ErrorKind::Interrupted.into()),
        false,
    )
    .expect("open");
    assert_eq!(r.poll_standing(), Next::Wait, "no receive armed again");
    assert!(r.relay.can_hand_over());
    let (relay, cx) = r.parts();
    let (state, held) = relay.hand_over(9, cx.stats);
    assert_eq!(
        held,
        [
            Some(Held::Lent {
                id: 1,
                from: 40,
                len: 60,
                holds: 1
            }),
            None
        ]
    );
    assert_eq!(
        state.up.pending,
        vec![7u8; 30],
        "the copied arrivals, behind"
    );
    assert!(state.down.pending.is_empty());
}

/// A hand-over that did not happen: the settled relay goes on where it stopped.
#[test]
fn an_unsettled_relay_goes_on() {
    let mut r = Rig::standing(RelayMode::Copy, 0);
    r.sent_up(1, 100);
    assert!(r.relay.settle());
    r.write_done(Side::Backend, 40);
    assert_eq!(r.poll_standing(), Next::Wait);
    assert!(r.relay.unsettle());
    r.expect_up(1, 40, 60);
}
