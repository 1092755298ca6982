//! A coarse hashed timer wheel, one per worker. Time is a parameter: the wheel never reads a clock.
//!
//! Entries are `(key, due)` pairs in per-slot `Vec`s that are reused, so inserting allocates only
//! while a slot grows past its previous high-water mark. There is no cancel: an owner keeps the
//! `due` of its one live entry and ignores fired entries that do not match it (lazy deletion,
//! like nginx's lazy timer re-arming). A deadline that moves later is not re-armed at all; the
//! early entry fires, the owner sees its real deadline is later, and arms again.
//!
//! Deadlines further away than one revolution stay in their slot and are skipped on each pass
//! until due: with 8 ms ticks and 2048 slots (a 16 s revolution) a 1 h idle timer is looked at
//! ~220 times an hour. The slots are a fixed cost per worker (24 B each: 48 KiB; 8192 slots cost a
//! gateway's one worker 192 KiB), paid at the first timer, not at start (an idle worker holds
//! none; an emptied one gives them back with its other tables), and fewer slots hold
//! their entries with less spare capacity (bench-results/2026-11-29-embedded). A bitmap of the
//! slots that hold entries sets the loop's wait: a worker whose timers are far away sleeps until
//! the first such slot instead of waking every tick (an idle gateway does not wake 125 times a
//! second).

use std::cell::Cell;
use std::time::{Duration, Instant};

/// Wheel resolution.
pub const TICK: Duration = Duration::from_millis(8);
const SLOTS: usize = 2048;

/// A point in wheel time: ticks since the worker's clock base. Never 0 (0 means "none").
pub type Tick = u32;

/// Converts between `Instant` and ticks for one worker.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base: Instant,
}

impl Clock {
    pub fn new(base: Instant) -> Clock {
        Clock { base }
    }

    /// The tick containing `now` (at least 1).
    pub fn tick(&self, now: Instant) -> Tick {
        // In u64: a u128 division (`as_millis`) costs a library call on every wake-up.
        let d = now.saturating_duration_since(self.base);
        let ms = d.as_secs() * 1000 + u64::from(d.subsec_millis());
        ((ms / TICK.as_millis() as u64) as u32)
            .wrapping_add(1)
            .max(1)
    }

    /// The first tick at or after `at` (deadlines round up so they never fire early).
    pub fn tick_ceil(&self, at: Instant) -> Tick {
        let d = at.saturating_duration_since(self.base);
        let ticks = d.as_nanos().div_ceil(TICK.as_nanos());
        (ticks as u32).wrapping_add(1).max(1)
    }

    /// Ticks in `d`, rounded up.
    pub fn ticks(d: Duration) -> u32 {
        d.as_nanos()
            .div_ceil(TICK.as_nanos())
            .min(u32::MAX as u128 / 4) as u32
    }
}

/// True if tick `a` is at or before tick `b` (wrapping-aware, valid for gaps < 2^31 ticks).
pub fn at_or_before(a: Tick, b: Tick) -> bool {
    (a.wrapping_sub(b) as i32) <= 0
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    key: u32,
    due: Tick,
}

/// The wheel.
#[derive(Debug)]
pub struct Wheel {
    slots: Vec<Vec<Entry>>,
    /// One bit per slot, set while it holds entries: the wait skips empty slots, so a loop
    /// whose timers are an hour away sleeps until the slot that holds them, not one tick.
    busy: [u64; SLOTS / 64],
    /// The next tick whose slot has not been processed.
    next: Tick,
    len: usize,
    /// The first tick at or after `next` whose slot held entries when the bitmap was last
    /// scanned, kept so that a wait costs no scan per wake-up: an insert before it moves it
    /// earlier, and passing it forgets it. Entries removed meanwhile can only make it early (a
    /// wake-up that finds nothing due), never late.
    soonest: Cell<Option<Tick>>,
}

impl Wheel {
    /// A wheel whose first unprocessed tick is `now`.
    pub fn new(now: Tick) -> Wheel {
        Wheel {
            // Allocated with the first entry (see `insert`): an idle worker holds none.
            slots: Vec::new(),
            busy: [0; SLOTS / 64],
            next: now,
            len: 0,
            soonest: Cell::new(None),
        }
    }

    /// Entries held, live and stale.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Schedules `key` at `due`. A `due` already passed fires on the next [`Wheel::expire`].
    pub fn insert(&mut self, key: u32, due: Tick) {
        let slot_tick = if at_or_before(due, self.next) {
            self.next
        } else {
            due
        };
        let i = slot_tick as usize % SLOTS;
        if self.slots.is_empty() {
            self.slots = (0..SLOTS).map(|_| Vec::new()).collect();
        }
        self.slots[i].push(Entry { key, due });
        self.busy[i / 64] |= 1 << (i % 64);
        self.len += 1;
        if let Some(at) = self.soonest.get() {
            // The tick at which a scan from `next` would meet slot `i`.
            let meets = self
                .next
                .wrapping_add(((i + SLOTS - self.next as usize % SLOTS) % SLOTS) as u32);
            if !at_or_before(at, meets) {
                self.soonest.set(Some(meets));
            }
        }
    }

    /// Moves time to `now` and calls `fire(key, due)` for every entry due at or before it.
    pub fn expire(&mut self, now: Tick, fire: impl FnMut(u32, Tick)) {
        self.expire_or_drop(now, fire, |_, _| true);
    }

    /// Like [`Wheel::expire`], and also drops not-yet-due entries of the visited slots for which
    /// `live(key, due)` is false (their owner closed or re-armed). Without it, the entry of a
    /// closed tunnel would stay until its idle deadline (an hour by default); with it, stale
    /// entries live at most one revolution.
    pub fn expire_or_drop(
        &mut self,
        now: Tick,
        mut fire: impl FnMut(u32, Tick),
        mut live: impl FnMut(u32, Tick) -> bool,
    ) {
        if !at_or_before(self.next, now) {
            return;
        }
        let span = now.wrapping_sub(self.next) as usize + 1;
        // No slots yet: nothing was ever inserted.
        let visit = if self.slots.is_empty() {
            0
        } else {
            span.min(SLOTS)
        };
        for i in 0..visit {
            let at = (self.next as usize + i) % SLOTS;
            let slot = &mut self.slots[at];
            let mut j = 0;
            while j < slot.len() {
                let e = slot[j];
                if at_or_before(e.due, now) {
                    slot.swap_remove(j);
                    self.len -= 1;
                    fire(e.key, e.due);
                } else if !live(e.key, e.due) {
                    slot.swap_remove(j);
                    self.len -= 1;
                } else {
                    j += 1;
                }
            }
            if slot.is_empty() {
                self.busy[at / 64] &= !(1 << (at % 64));
            }
        }
        self.next = now.wrapping_add(1);
        if span >= SLOTS || self.soonest.get().is_some_and(|at| at_or_before(at, now)) {
            self.soonest.set(None);
        }
    }

    /// Frees slot capacity beyond what the entries held now need.
    pub fn shrink_to_fit(&mut self) {
        if self.len == 0 {
            // Empty: the slots themselves go too (48 KiB), allocated again by the next insert.
            self.slots = Vec::new();
            return;
        }
        for slot in &mut self.slots {
            slot.shrink_to_fit();
        }
    }

    /// How long until the next tick whose slot holds entries (due then, or a revolution or
    /// more later), for the poll timeout: `None` when the wheel is empty. Reads the slot bitmap
    /// (32 words), never the slots.
    pub fn next_wait(&self, now: Tick) -> Option<Duration> {
        if self.len == 0 {
            return None;
        }
        let at = match self.soonest.get() {
            Some(at) => at,
            None => {
                let at = self
                    .next
                    .wrapping_add(self.busy_after(self.next as usize % SLOTS) as u32);
                self.soonest.set(Some(at));
                at
            }
        };
        let ticks = at.wrapping_sub(now) as i32;
        Some(TICK * ticks.max(0) as u32 + TICK)
    }

    /// Slots from `from` (circularly) to the first one holding entries; 0 if none does.
    fn busy_after(&self, from: usize) -> usize {
        let words = self.busy.len();
        let (w0, b0) = (from / 64, from % 64);
        for i in 0..=words {
            let w = (w0 + i) % words;
            let mut m = self.busy[w];
            if i == 0 {
                m &= !0u64 << b0; // this word: from `from` on
            } else if i == words {
                m &= (1u64 << b0) - 1; // back at the start: the bits before `from`
            }
            if m != 0 {
                let slot = w * 64 + m.trailing_zeros() as usize;
                return (slot + SLOTS - from) % SLOTS;
            }
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_skips_empty_slots() {
        let mut w = Wheel::new(10);
        assert_eq!(w.next_wait(10), None);
        w.insert(1, 110);
        assert_eq!(w.next_wait(10), Some(TICK * 101));
        // Beyond one revolution: the slot comes first, a revolution early.
        w.insert(2, 10 + SLOTS as u32 + 50);
        assert_eq!(w.next_wait(10), Some(TICK * 51));
        assert_eq!(fired(&mut w, 60), []);
        assert_eq!(w.next_wait(60), Some(TICK * 51));
        assert_eq!(fired(&mut w, 110), [(1, 110)]);
        // Key 2 sits in slot 60 and waits there for its revolution: the wait wraps around.
        assert_eq!(w.next_wait(110), Some(TICK * (SLOTS as u32 - 50 + 1)));
        assert_eq!(
            fired(&mut w, 10 + SLOTS as u32 + 50),
            [(2, 10 + SLOTS as u32 + 50)]
        );
        assert_eq!(w.next_wait(10 + SLOTS as u32 + 50), None);
    }

    /// The wait a fresh scan of the bitmap gives (what the remembered soonest tick stands for).
    fn scanned_wait(w: &Wheel, now: Tick) -> Option<Duration> {
        w.soonest.set(None);
        w.next_wait(now)
    }

    #[test]
    fn the_remembered_soonest_slot_is_never_later_than_a_scan() {
        // A pseudo-random run of inserts (near, far, past due) and expiries.
        let mut w = Wheel::new(1);
        let (mut now, mut seed, mut early) = (1u32, 7u64, 0);
        for round in 0..20_000u32 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let r = (seed >> 33) as u32;
            match r % 4 {
                0 | 1 => w.insert(round, now.wrapping_add(r % (3 * SLOTS as u32))),
                2 => w.insert(round, now.wrapping_add(r % 40)),
                _ => {
                    now = now.wrapping_add(1 + r % 300);
                    w.expire_or_drop(now, |_, _| {}, |k, _| k % 3 != 0);
                }
            }
            let cached = w.next_wait(now);
            let remembered = w.soonest.get();
            let scanned = scanned_wait(&w, now);
            assert!(cached.is_some() == scanned.is_some(), "round {round}");
            assert!(
                cached <= scanned,
                "round {round}: {cached:?} later than {scanned:?}"
            );
            early += usize::from(cached < scanned);
            // Put back what was remembered, so the next round goes on from it.
            w.soonest.set(remembered);
        }
        // Early only after removals (stale entries dropped): rare, not the rule.
        assert!(early < 2_000, "{early} early waits of 20,000");
    }

    fn fired(w: &mut Wheel, now: Tick) -> Vec<(u32, Tick)> {
        let mut v = Vec::new();
        w.expire(now, |k, d| v.push((k, d)));
        v.sort();
        v
    }

    #[test]
    fn fires_at_due_not_before() {
        let mut w = Wheel::new(1);
        w.insert(7, 10);
        w.insert(8, 12);
        assert_eq!(fired(&mut w, 9), []);
        assert_eq!(fired(&mut w, 10), [(7, 10)]);
        assert_eq!(fired(&mut w, 100), [(8, 12)]);
        assert!(w.is_empty());
    }

    #[test]
    fn past_due_fires_next_time() {
        let mut w = Wheel::new(50);
        w.insert(1, 3);
        assert_eq!(fired(&mut w, 50), [(1, 3)]);
    }

    #[test]
    fn far_future_survives_revolutions() {
        let mut w = Wheel::new(1);
        let due = 1 + 3 * SLOTS as u32 + 5;
        w.insert(42, due);
        let mut now = 1;
        while now < due - 1 {
            now += 1000;
            now = now.min(due - 1);
            assert_eq!(fired(&mut w, now), []);
        }
        assert_eq!(fired(&mut w, due), [(42, due)]);
    }

    #[test]
    fn stale_far_entries_are_dropped_when_their_slot_is_passed() {
        let mut w = Wheel::new(1);
        let far = 1 + 2 * SLOTS as u32; // two revolutions away
        w.insert(1, far);
        w.insert(2, far);
        let mut fired = Vec::new();
        // One revolution later both slots were visited once; key 1's owner is gone.
        w.expire_or_drop(1 + SLOTS as u32, |k, d| fired.push((k, d)), |k, _| k != 1);
        assert!(fired.is_empty());
        assert_eq!(w.len(), 1, "the stale entry is gone, the live one stays");
        w.expire_or_drop(far, |k, d| fired.push((k, d)), |_, _| true);
        assert_eq!(fired, [(2, far)]);
    }

    #[test]
    fn wraps_around_u32() {
        let start = u32::MAX - 5;
        let mut w = Wheel::new(start);
        let due = start.wrapping_add(10);
        w.insert(1, due);
        assert_eq!(fired(&mut w, start.wrapping_add(9)), []);
        assert_eq!(fired(&mut w, due), [(1, due)]);
    }

    #[test]
    fn clock_rounds_deadlines_up() {
        let base = Instant::now();
        let c = Clock::new(base);
        assert_eq!(c.tick(base), 1);
        assert_eq!(c.tick(base + TICK), 2);
        assert_eq!(c.tick_ceil(base + TICK / 2), 2);
        assert_eq!(c.tick_ceil(base + TICK), 2);
        assert_eq!(Clock::ticks(Duration::from_millis(500)), 63);
    }
}
