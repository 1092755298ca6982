//! A relay handed to another process (a binary upgrade, see [`crate::driver::upgrade`]): its
//! whole state as plain data, and a relay rebuilt from it on the other side.
//!
//! A relay can be handed over between two operations only: nothing in flight, nothing in the
//! worker's scratch buffer or a driver's buffer. What it still holds in user space (an overflow
//! buffer, bytes sitting in a pipe) travels along as bytes and is written first on the other
//! side, before anything more is read from the source: the byte order on the wire is kept.

use super::{Dir, Pending, Relay, RelayStats, Timeouts, Times, EOF, HUP, INFLIGHT, READABLE};
use super::{SHUT, SPLICE_OK};
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

/// What a relay's directions still hold in pipes when handed over: `(pipe, bytes)`, up then
/// down. The driver reads these bytes out into [`DirState::pending`] and gives the pipes back.
pub type HeldPipes<P> = [Option<(P, u32)>; 2];

impl<P> Dir<P> {
    fn idle_between_ops(&self) -> bool {
        self.flags & INFLIGHT == 0
            && self.recv == 0
            && matches!(
                self.pending,
                Pending::None | Pending::Pipe(..) | Pending::Buf(_)
            )
    }

    fn take_state(&mut self, stats: &mut RelayStats) -> (DirState, Option<(P, u32)>) {
        let mut state = DirState {
            pending: Vec::new(),
            eof: self.flags & EOF != 0,
            shut: self.flags & SHUT != 0,
            hup: self.flags & HUP != 0,
        };
        let pipe = match std::mem::take(&mut self.pending) {
            Pending::Pipe(p, n) => Some((p, n)),
            Pending::Buf(b) => {
                stats.overflow_in_use -= 1;
                let (mut data, written) = *b;
                data.drain(..written.min(data.len()));
                state.pending = data;
                None
            }
            _ => None,
        };
        (state, pipe)
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
    /// True when the relay is between operations and holds nothing but an overflow buffer or a
    /// filled pipe: it may be handed over now.
    pub fn can_hand_over(&self) -> bool {
        self.up.idle_between_ops() && self.down.idle_between_ops()
    }

    /// Takes the relay's state out at `now` (check [`Relay::can_hand_over`] first); the relay is
    /// left empty. Pipes still holding bytes come back beside the state.
    pub fn hand_over(&mut self, now: Tick, stats: &mut RelayStats) -> (RelayState, HeldPipes<P>) {
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
        assert_eq!(pipes, [None, Some((9, 4096))]);
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
