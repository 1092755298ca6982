//! Tunnel timing: idle and half-close deadlines, in wheel ticks, without reading a clock.
//!
//! The driver stamps `last_active` when bytes move (one store of a per-loop cached tick) and arms
//! the wheel lazily: when an entry fires, [`Times::check`] says whether the tunnel really expired
//! or when to look again.

use crate::core::timer::{at_or_before, Clock, Tick};
use std::time::Duration;

/// Why a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// Both directions finished with FIN.
    Done,
    /// No bytes either way for `timeouts.idle`.
    IdleTimeout,
    /// One side sent FIN and the other did not finish within `timeouts.half_close`.
    HalfCloseTimeout,
    /// The client reset or errored.
    ClientReset,
    /// The backend reset or errored.
    BackendReset,
    /// The proxy was stopping and `timeouts.drain` ran out.
    Drain,
}

impl CloseReason {
    /// Every reason: the `reason` label values of `wsplice_tunnels_closed_total`.
    pub const ALL: [CloseReason; 6] = [
        Self::Done,
        Self::IdleTimeout,
        Self::HalfCloseTimeout,
        Self::ClientReset,
        Self::BackendReset,
        Self::Drain,
    ];

    /// The word used in metrics labels and access log lines.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Done => "done",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::HalfCloseTimeout => "half_close_timeout",
            CloseReason::ClientReset => "client_reset",
            CloseReason::BackendReset => "backend_reset",
            CloseReason::Drain => "drain",
        }
    }
}

/// Tunnel timeouts in ticks; 0 = never.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub idle: u32,
    pub half_close: u32,
}

impl Timeouts {
    pub fn new(idle: Duration, half_close: Duration) -> Timeouts {
        Timeouts {
            idle: if idle.is_zero() {
                0
            } else {
                Clock::ticks(idle)
            },
            half_close: if half_close.is_zero() {
                0
            } else {
                Clock::ticks(half_close)
            },
        }
    }
}

/// Per-tunnel timing state: 8 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Times {
    pub last_active: Tick,
    /// When the first FIN was seen; 0 = both directions open.
    pub half_closed_at: Tick,
}

/// What a timer firing means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Close the tunnel.
    Expired(CloseReason),
    /// Not yet: arm the wheel at this tick.
    Rearm(Tick),
    /// No deadline at all.
    Never,
}

impl Times {
    pub fn new(now: Tick) -> Times {
        Times {
            last_active: now,
            half_closed_at: 0,
        }
    }

    /// Bytes moved at `now`.
    pub fn touch(&mut self, now: Tick) {
        self.last_active = now;
    }

    /// The first FIN was seen at `now` (later FINs keep the first stamp).
    pub fn half_close(&mut self, now: Tick) {
        if self.half_closed_at == 0 {
            self.half_closed_at = now;
        }
    }

    /// The earliest deadline, if any.
    pub fn deadline(&self, t: Timeouts) -> Option<Tick> {
        let idle = (t.idle > 0).then(|| self.last_active.wrapping_add(t.idle));
        let half = (t.half_close > 0 && self.half_closed_at != 0)
            .then(|| self.half_closed_at.wrapping_add(t.half_close));
        match (idle, half) {
            (Some(a), Some(b)) => Some(if at_or_before(a, b) { a } else { b }),
            (a, b) => a.or(b),
        }
    }

    /// Decides at `now` whether the tunnel expired.
    pub fn check(&self, t: Timeouts, now: Tick) -> Check {
        if t.half_close > 0
            && self.half_closed_at != 0
            && at_or_before(self.half_closed_at.wrapping_add(t.half_close), now)
        {
            return Check::Expired(CloseReason::HalfCloseTimeout);
        }
        if t.idle > 0 && at_or_before(self.last_active.wrapping_add(t.idle), now) {
            return Check::Expired(CloseReason::IdleTimeout);
        }
        match self.deadline(t) {
            Some(d) => Check::Rearm(d),
            None => Check::Never,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Timeouts in ticks.
    fn ticks(idle: u32, half_close: u32) -> Timeouts {
        Timeouts { idle, half_close }
    }

    #[test]
    fn idle_moves_with_activity() {
        let t = ticks(100, 0);
        let mut x = Times::new(10);
        assert_eq!(x.check(t, 50), Check::Rearm(110));
        x.touch(90);
        assert_eq!(x.check(t, 110), Check::Rearm(190));
        assert_eq!(x.check(t, 190), Check::Expired(CloseReason::IdleTimeout));
    }

    #[test]
    fn half_close_is_measured_from_first_fin() {
        let t = ticks(1000, 30);
        let mut x = Times::new(10);
        x.half_close(20);
        x.half_close(40);
        x.touch(45);
        assert_eq!(x.check(t, 45), Check::Rearm(50));
        assert_eq!(
            x.check(t, 50),
            Check::Expired(CloseReason::HalfCloseTimeout)
        );
    }

    #[test]
    fn zero_means_never() {
        let t = Timeouts::new(Duration::ZERO, Duration::ZERO);
        let mut x = Times::new(1);
        x.half_close(2);
        assert_eq!(x.check(t, u32::MAX / 3), Check::Never);
    }
}
