//! A relay handed to another process (a binary upgrade, see [`crate::driver::upgrade`]): its
//! whole state as plain data, and a relay rebuilt from it on the other side.
//!
//! A relay can be handed over between two operations only: nothing in flight, nothing in the
//! worker's scratch buffer. What it still holds in user space (an overflow buffer, bytes
//! sitting in a pipe or in a completion driver's buffer) travels along as bytes and is written
//! first on the other side, before anything more is read from the source: the byte order on the
//! wire is kept.
//!
//! A completion driver (io_uring) always has something in flight on a relay (a receive waits on
//! each socket, a send may wait for room): [`Relay::settle`] stops the relay from starting
//! anything new, the driver cancels what is in flight, and once every completion is in (each
//! cancelled, or done: bytes that came are kept as for any arrival) the relay is between two
//! operations and goes like any other.

use super::{BufId, Dir, Pending, Relay, RelayStats, Timeouts, Times, EOF, HUP, INFLIGHT};
use super::{READABLE, SETTLING, SHUT, SPLICE_OK};
use crate::core::timer::Tick;

/// One direction, as handed over.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirState {
    /// Bytes read from the source and not yet written to the destination, in order.
    pub pending: Vec<u8>,
    /// The source sent FIN.
    pub eof: bool,
    /// FIN was forwarded to the destination.
    pub shut: bool,
    /// The source's FIN or error was reported: read until 0.
    pub hup: bool,
}

/// A relay's state, as handed over: no clock readings, only ages (the two processes' tick
/// clocks start at different instants).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayState {
    /// Client to backend.
    pub up: DirState,
    /// Backend to client.
    pub down: DirState,
    /// Ticks since bytes last moved.
    pub idle_for: u32,
    /// Ticks since the first FIN, if one came.
    pub half_closed_for: Option<u32>,
    /// The timeouts the relay opened with (a reload or an upgrade does not change them).
    pub timeouts: Timeouts,
}

/// Bytes a direction holds outside its [`DirState`] when handed over. The driver reads them out
/// and puts them in front of [`DirState::pending`] (they came first), then gives back what held
/// them.
#[derive(Debug, PartialEq, Eq)]
pub enum Held<P> {
    /// A pipe holding this many bytes (back to the pool once read out).
    Pipe(P, u32),
    /// `len` bytes at `from` of the completion driver's buffer `id`, which the relay holds
    /// `holds` times (given back that many times once read out).
    Lent {
        id: BufId,
        from: u32,
        len: u32,
        holds: u16,
    },
}

/// What a relay's directions hold outside their state when handed over, up then down.
pub type HeldBytes<P> = [Option<Held<P>>; 2];

impl<P> Dir<P> {
    fn idle_between_ops(&self) -> bool {
        self.flags & INFLIGHT == 0 && self.recv == 0 && !matches!(self.pending, Pending::Scratch(_))
    }

    fn take_state(&mut self, stats: &mut RelayStats) -> (DirState, Option<Held<P>>) {
        let mut state = DirState {
            pending: Vec::new(),
            eof: self.flags & EOF != 0,
            shut: self.flags & SHUT != 0,
            hup: self.flags & HUP != 0,
        };
        let held = match std::mem::take(&mut self.pending) {
            Pending::Pipe(p, n) => Some(Held::Pipe(p, n)),
            Pending::Buf(b) => {
                stats.overflow_in_use -= 1;
                let (mut data, written) = *b;
                data.drain(..written.min(data.len()));
                state.pending = data;
                None
            }
            Pending::Lent(seg) => Some(seg.held()),
            // The segment being written, then the arrivals copied behind it.
            Pending::LentThen(b) => {
                let (seg, behind) = *b;
                state.pending = behind;
                Some(seg.held())
            }
            Pending::None | Pending::Scratch(_) => None,
        };
        (state, held)
    }

    fn from_state(s: DirState, splice_ok: bool, stats: &mut RelayStats) -> Dir<P> {
        let mut d = Dir::new(s.pending, splice_ok, stats);
        // A fresh registration reports readiness anew: READABLE stays set (as for a new relay),
        // so the first poll tries the source (after the pending bytes are out).
        d.flags = READABLE | if splice_ok { SPLICE_OK } else { 0 };
        if s.eof {
            d.flags |= EOF;
        }
        if s.shut {
            d.flags |= SHUT;
        }
        if s.hup {
            d.flags |= HUP;
        }
        d
    }
}

impl<P> Relay<P> {
    /// True when the relay is between operations and holds nothing but an overflow buffer, a
    /// filled pipe or bytes in a driver's buffer: it may be handed over now.
    pub fn can_hand_over(&self) -> bool {
        self.up.idle_between_ops() && self.down.idle_between_ops()
    }

    /// A hand-over wants this relay: it starts nothing more (see the module docs). True when
    /// this call began it and an operation is still in flight: the driver must cancel what is
    /// in flight on both sockets, and the relay can go once every completion is in.
    pub fn settle(&mut self) -> bool {
        let began = self.up.seen & SETTLING == 0;
        self.up.seen |= SETTLING;
        began && !self.can_hand_over()
    }

    /// The hand-over did not happen: the relay goes on (the next poll starts what it needs).
    /// True when it was settled.
    pub fn unsettle(&mut self) -> bool {
        let was = self.up.seen & SETTLING != 0;
        self.up.seen &= !SETTLING;
        was
    }

    /// Takes the relay's state out at `now` (check [`Relay::can_hand_over`] first); the relay is
    /// left empty. Pipes still holding bytes come back beside the state.
    pub fn hand_over(&mut self, now: Tick, stats: &mut RelayStats) -> (RelayState, HeldBytes<P>) {
        let (up, up_pipe) = self.up.take_state(stats);
        let (down, down_pipe) = self.down.take_state(stats);
        let state = RelayState {
            up,
            down,
            idle_for: now.wrapping_sub(self.times.last_active),
            half_closed_for: (self.times.half_closed_at != 0)
                .then(|| now.wrapping_sub(self.times.half_closed_at)),
            timeouts: self.timeouts,
        };
        (state, [up_pipe, down_pipe])
    }

    /// A relay continuing `state` at `now`. `splice_ok`: both sockets are plain.
    pub fn taken_over(
        state: RelayState,
        splice_ok: bool,
        now: Tick,
        stats: &mut RelayStats,
    ) -> Relay<P> {
        // 0 means "never" for a stamp: one tick older is the nearest honest value.
        let stamp = |age: u32| match now.wrapping_sub(age) {
            0 => u32::MAX,
            t => t,
        };
        Relay {
            up: Dir::from_state(state.up, splice_ok, stats),
            down: Dir::from_state(state.down, splice_ok, stats),
            times: Times {
                last_active: stamp(state.idle_for),
                half_closed_at: state.half_closed_for.map_or(0, stamp),
            },
            timeouts: state.timeouts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_bytes_and_half_close_travel_and_resume_in_order() {
        let mut stats = RelayStats::default();
        let t = Timeouts {
            idle: 1000,
            half_close: 50,
        };
        let mut r: Relay<u32> =
            Relay::new(b"101 tail".to_vec(), Vec::new(), true, t, 100, &mut stats);
        r.up.flags |= EOF | SHUT;
        r.times.half_close(120);
        r.times.touch(130);
        assert!(r.can_hand_over());
        let (state, pipes) = r.hand_over(140, &mut stats);
        assert!(pipes.iter().all(Option::is_none));
        assert_eq!(stats.overflow_in_use, 0);
        assert_eq!(state.down.pending, b"101 tail");
        assert!(state.up.eof && state.up.shut);
        assert_eq!((state.idle_for, state.half_closed_for), (10, Some(20)));

        let mut stats2 = RelayStats::default();
        let r2: Relay<u32> = Relay::taken_over(state, true, 7, &mut stats2);
        assert_eq!(stats2.overflow_in_use, 1);
        assert_eq!(r2.times.half_closed_at, 7u32.wrapping_sub(20));
        // The half-close deadline keeps its remaining 30 ticks.
        assert_eq!(r2.deadline(), Some(7u32.wrapping_sub(20).wrapping_add(50)));
    }

    #[test]
    fn a_filled_pipe_comes_back_beside_the_state() {
        let mut stats = RelayStats::default();
        let t = Timeouts::new(Default::default(), Default::default());
        let mut r: Relay<u32> = Relay::new(Vec::new(), Vec::new(), true, t, 1, &mut stats);
        r.down.pending = Pending::Pipe(9, 4096);
        assert!(r.can_hand_over());
        let (state, pipes) = r.hand_over(1, &mut stats);
        assert_eq!(pipes, [None, Some(Held::Pipe(9, 4096))]);
        assert!(state.down.pending.is_empty());
        r.up.pending = Pending::Scratch(10);
        assert!(
            !r.can_hand_over(),
            "bytes in the scratch buffer are mid-operation"
        );
        r.up.pending = Pending::None;
        r.down.flags |= INFLIGHT;
        assert!(!r.can_hand_over(), "an operation in flight");
    }
}
