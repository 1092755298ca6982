//! Whether a backend may take new connections, and the policy that decides it.
//!
//! ```text
//!   health words   per (route, backend) slot: a state word and a failure count
//!     state        DOWN (active checks) | EJECTED (passive) | DRAINED (operator); 0 = up
//!     failures     consecutive failed connects or bad answers, counted by the workers
//!   Tracker        one backend's checks and ejections (rise/fall, growing ejections):
//!                  kept by the one thread that checks, the only writer of state words
//! ```
//!
//! The words live in memory every worker sees: the process's with worker threads, the shared
//! mapping with worker processes. A worker reads one word per backend it considers for a new
//! connection (never per relayed byte); a tunnel already open is not affected by a state change.

use crate::config::Health;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// An active check failed `fall` times in a row (until it passes `rise` times).
pub const DOWN: u64 = 1;
/// Ejected after consecutive failures the workers saw, for a while.
pub const EJECTED: u64 = 2;
/// An operator drained it through the admin listener.
pub const DRAINED: u64 = 4;

/// (route, backend) slots at most: backends past a table's slots (all routes together) are
/// always available.
pub const HEALTH_SLOTS: usize = 4096;
/// Words of the health table: a state and a failure count per slot.
pub const HEALTH_WORDS: usize = 2 * HEALTH_SLOTS;

/// The health table's words, wherever they live.
pub trait HealthWords: Send + Sync + std::fmt::Debug {
    /// Word `i` (< 2 × [`HealthWords::slots`]).
    fn health_word(&self, i: usize) -> Option<&AtomicU64>;
    /// The (route, backend) slots the table holds (at most [`HEALTH_SLOTS`]).
    fn slots(&self) -> usize {
        HEALTH_SLOTS
    }
}

/// The health table in this process's memory (worker threads), sized at start: its words are
/// written, so unlike the shared mapping's untouched pages they cost memory.
#[derive(Debug)]
pub struct LocalHealth(Box<[AtomicU64]>);

impl LocalHealth {
    /// Room for `slots` (route, backend) pairs (capped at [`HEALTH_SLOTS`]).
    pub fn new(slots: usize) -> LocalHealth {
        let words = 2 * slots.min(HEALTH_SLOTS);
        LocalHealth((0..words).map(|_| AtomicU64::new(0)).collect())
    }

    /// Room for `backends` pairs and for reloads that add some: four times as many, at least
    /// 256 (4 KiB).
    pub fn for_backends(backends: usize) -> LocalHealth {
        LocalHealth::new(backends.saturating_mul(4).max(256))
    }
}

impl HealthWords for LocalHealth {
    fn health_word(&self, i: usize) -> Option<&AtomicU64> {
        self.0.get(i)
    }
    fn slots(&self) -> usize {
        self.0.len() / 2
    }
}

/// Slot `slot`'s state word.
pub fn state_word(w: &dyn HealthWords, slot: usize) -> Option<&AtomicU64> {
    w.health_word(2 * slot)
}

/// Slot `slot`'s failure count.
pub fn failure_word(w: &dyn HealthWords, slot: usize) -> Option<&AtomicU64> {
    w.health_word(2 * slot + 1)
}

/// Records one connect or answer of a backend for passive ejection: a failure adds one, a
/// success clears the count (written only when it is not already zero).
pub fn note(w: &dyn HealthWords, slot: usize, ok: bool) {
    let Some(f) = failure_word(w, slot) else {
        return;
    };
    if !ok {
        f.fetch_add(1, Ordering::Relaxed);
    } else if f.load(Ordering::Relaxed) != 0 {
        f.store(0, Ordering::Relaxed);
    }
}

/// Why a backend's state changed: the `reason` label of the metric and the log line's word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Active checks failed `fall` times in a row.
    CheckFailed,
    /// Active checks passed `rise` times in a row.
    CheckPassed,
    /// `eject_after` failures in a row seen by the workers.
    Ejected,
    /// The ejection's time ran out.
    EjectionOver,
    /// An operator drained it.
    Drained,
    /// An operator undrained it.
    Undrained,
}

impl Reason {
    pub const ALL: [Reason; 6] = [
        Reason::CheckFailed,
        Reason::CheckPassed,
        Reason::Ejected,
        Reason::EjectionOver,
        Reason::Drained,
        Reason::Undrained,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::CheckFailed => "check_failed",
            Reason::CheckPassed => "check_passed",
            Reason::Ejected => "ejected",
            Reason::EjectionOver => "ejection_over",
            Reason::Drained => "drained",
            Reason::Undrained => "undrained",
        }
    }
}

/// One backend's health as the checking thread keeps it.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    /// The state bits ([`DOWN`], [`EJECTED`], [`DRAINED`]).
    pub state: u64,
    /// Checks passed in a row while down / failed in a row while up.
    run: u32,
    /// When the current ejection ends.
    pub ejected_until: Option<Instant>,
    /// Ejections in a row (each one twice as long as the last).
    ejections: u32,
    /// When the last ejection ended (a long healthy stretch after it resets the doubling).
    last_ejection_end: Option<Instant>,
}

impl Tracker {
    /// A backend starts up (nginx and HAProxy do the same): a dead one is found within `fall`
    /// checks, while a proxy that starts next to its backends serves at once.
    pub fn new() -> Tracker {
        Tracker::default()
    }

    pub fn is_up(&self) -> bool {
        self.state == 0
    }

    /// An active check's result; a change of the DOWN bit when `fall` or `rise` is reached.
    pub fn probe(&mut self, ok: bool, h: &Health) -> Option<Reason> {
        let down = self.state & DOWN != 0;
        if ok != down {
            self.run = 0;
            return None;
        }
        self.run += 1;
        if down && self.run >= h.rise {
            self.run = 0;
            self.state &= !DOWN;
            return Some(Reason::CheckPassed);
        }
        if !down && self.run >= h.fall {
            self.run = 0;
            self.state |= DOWN;
            return Some(Reason::CheckFailed);
        }
        None
    }

    /// The failures the workers counted in a row; ejects when they reach `eject_after` and
    /// `may_eject` (the route's share of ejected backends allows one more).
    pub fn failures(&mut self, n: u64, h: &Health, may_eject: bool, now: Instant) -> bool {
        if h.eject_after == 0 || n < u64::from(h.eject_after) || self.state & EJECTED != 0 {
            return false;
        }
        if !may_eject {
            return false;
        }
        if let Some(end) = self.last_ejection_end {
            if now.saturating_duration_since(end) > h.eject_max_time {
                self.ejections = 0;
            }
        }
        let time = self.ejection_time(h);
        self.ejections = self.ejections.saturating_add(1);
        self.state |= EJECTED;
        self.ejected_until = Some(now + time);
        true
    }

    /// How long the next ejection lasts: `eject_time` doubled per ejection in a row, capped.
    pub fn ejection_time(&self, h: &Health) -> Duration {
        let doubled = h
            .eject_time
            .saturating_mul(1u32 << self.ejections.min(20))
            .min(h.eject_max_time);
        doubled.max(h.eject_time.min(h.eject_max_time))
    }

    /// Ends an ejection whose time ran out.
    pub fn tick(&mut self, now: Instant) -> Option<Reason> {
        match self.ejected_until {
            Some(until) if now >= until => {
                self.ejected_until = None;
                self.state &= !EJECTED;
                self.last_ejection_end = Some(now);
                Some(Reason::EjectionOver)
            }
            _ => None,
        }
    }

    /// Drains (`true`) or undrains; the reason when that changed anything.
    pub fn drain(&mut self, on: bool) -> Option<Reason> {
        let was = self.state & DRAINED != 0;
        if was == on {
            return None;
        }
        if on {
            self.state |= DRAINED;
            Some(Reason::Drained)
        } else {
            self.state &= !DRAINED;
            Some(Reason::Undrained)
        }
    }
}

/// How many of `n` backends may be ejected at once under `percent`.
pub fn max_ejected(n: usize, percent: u8) -> usize {
    n * usize::from(percent) / 100
}

/// The smooth weighted round robin of nginx, one whole cycle: `sum(weights)` picks in which
/// each backend appears `weight` times, spread out (weights 5,1,1 give a a b a c a a).
pub fn smooth_cycle(weights: &[u32]) -> Vec<u16> {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        let mut best = 0;
        for (i, &w) in weights.iter().enumerate() {
            current[i] += i64::from(w);
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(u16::try_from(best).unwrap_or(u16::MAX));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health() -> Health {
        Health {
            rise: 2,
            fall: 3,
            eject_after: 4,
            eject_time: Duration::from_secs(10),
            eject_max_time: Duration::from_secs(35),
            ..Health::default()
        }
    }

    #[test]
    fn fall_then_rise() {
        let h = health();
        let mut t = Tracker::new();
        assert_eq!(t.probe(false, &h), None);
        assert_eq!(t.probe(false, &h), None);
        // A pass in between starts the count again.
        assert_eq!(t.probe(true, &h), None);
        assert_eq!(t.probe(false, &h), None);
        assert_eq!(t.probe(false, &h), None);
        assert_eq!(t.probe(false, &h), Some(Reason::CheckFailed));
        assert!(!t.is_up());
        assert_eq!(t.probe(false, &h), None);
        assert_eq!(t.probe(true, &h), None);
        assert_eq!(t.probe(true, &h), Some(Reason::CheckPassed));
        assert!(t.is_up());
    }

    #[test]
    fn ejections_grow_and_respect_the_share() {
        let h = health();
        let mut t = Tracker::new();
        let t0 = Instant::now();
        assert!(!t.failures(3, &h, true, t0), "below eject_after");
        assert!(!t.failures(4, &h, false, t0), "share used up");
        assert!(t.failures(4, &h, true, t0));
        assert_eq!(t.ejected_until, Some(t0 + Duration::from_secs(10)));
        assert_eq!(t.tick(t0 + Duration::from_secs(9)), None);
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(t.tick(t1), Some(Reason::EjectionOver));
        assert!(t.is_up());
        assert!(t.failures(4, &h, true, t1));
        assert_eq!(t.ejected_until, Some(t1 + Duration::from_secs(20)));
        let t2 = t1 + Duration::from_secs(20);
        t.tick(t2);
        assert!(t.failures(9, &h, true, t2));
        // 40 s capped at eject_max_time.
        assert_eq!(t.ejected_until, Some(t2 + Duration::from_secs(35)));
        let t3 = t2 + Duration::from_secs(35);
        t.tick(t3);
        // Healthy for longer than eject_max_time: back to eject_time.
        let t4 = t3 + Duration::from_secs(36);
        assert!(t.failures(4, &h, true, t4));
        assert_eq!(t.ejected_until, Some(t4 + Duration::from_secs(10)));
        assert_eq!(max_ejected(3, 50), 1);
        assert_eq!(max_ejected(1, 50), 0);
        assert_eq!(max_ejected(4, 100), 4);
    }

    #[test]
    fn drain_is_its_own_bit() {
        let h = health();
        let mut t = Tracker::new();
        assert_eq!(t.drain(true), Some(Reason::Drained));
        assert_eq!(t.drain(true), None);
        for _ in 0..3 {
            t.probe(false, &h);
        }
        assert_eq!(t.state, DOWN | DRAINED);
        assert_eq!(t.drain(false), Some(Reason::Undrained));
        assert_eq!(t.state, DOWN);
    }

    #[test]
    fn smooth_cycle_is_nginx_order() {
        assert_eq!(smooth_cycle(&[5, 1, 1]), [0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_cycle(&[1, 1]), [0, 1]);
        let c = smooth_cycle(&[3, 1, 2]);
        assert_eq!(c.len(), 6);
        assert_eq!(c.iter().filter(|&&i| i == 0).count(), 3);
    }
}
