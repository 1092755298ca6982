//! `max_connections` and `max_connections_per_ip`, enforced exactly across workers.
//!
//! Both are touched once when a connection is accepted and once when it ends, never per byte:
//! one atomic counter for the total, and (only when a per-IP limit is set) one small map.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// The process-wide connection count against `max_connections`.
#[derive(Debug, Default)]
pub struct ConnLimiter {
    max: AtomicUsize,
    active: AtomicUsize,
}

impl ConnLimiter {
    pub fn new(max: usize) -> ConnLimiter {
        ConnLimiter {
            max: AtomicUsize::new(max),
            active: AtomicUsize::new(0),
        }
    }

    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    /// Counts one more connection, or refuses it at the limit.
    pub fn acquire(&self) -> bool {
        let max = self.max.load(Ordering::Relaxed);
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    pub fn release(&self) {
        self.active.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
pub struct IpLimiter {
    /// 0 = unlimited. Reload may change it; connections already counted stay counted.
    limit: AtomicUsize,
    open: Mutex<HashMap<IpAddr, u32>>,
}

impl IpLimiter {
    pub fn new(limit: Option<usize>) -> IpLimiter {
        let l = IpLimiter::default();
        l.set_limit(limit);
        l
    }

    pub fn set_limit(&self, limit: Option<usize>) {
        self.limit.store(limit.unwrap_or(0), Ordering::Relaxed);
    }

    /// Counts a new connection from `ip`. `None`: no limit in force (nothing counted);
    /// `Some(false)`: over the limit (nothing counted); `Some(true)`: counted, release it later.
    pub fn acquire(&self, ip: IpAddr) -> Option<bool> {
        let limit = self.limit.load(Ordering::Relaxed);
        if limit == 0 {
            return None;
        }
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n as usize >= limit {
            return Some(false);
        }
        *n += 1;
        Some(true)
    }

    /// Forgets one counted connection from `ip`.
    pub fn release(&self, ip: IpAddr) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&ip);
            }
        }
    }

    /// Distinct client IPs counted now.
    pub fn tracked_ips(&self) -> usize {
        self.open.lock().map(|m| m.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn total_is_exact() {
        let l = ConnLimiter::new(2);
        assert!(l.acquire() && l.acquire() && !l.acquire());
        l.release();
        assert!(l.acquire());
        assert_eq!(l.active(), 2);
    }

    #[test]
    fn counts_per_ip_and_forgets() {
        let l = IpLimiter::new(Some(2));
        let a: IpAddr = "127.0.0.2".parse().expect("ip");
        let b: IpAddr = "127.0.0.3".parse().expect("ip");
        assert_eq!(l.acquire(a), Some(true));
        assert_eq!(l.acquire(a), Some(true));
        assert_eq!(l.acquire(a), Some(false));
        assert_eq!(l.acquire(b), Some(true));
        l.release(a);
        assert_eq!(l.acquire(a), Some(true));
        l.release(a);
        l.release(a);
        l.release(b);
        assert_eq!(l.tracked_ips(), 0);
        l.set_limit(None);
        assert_eq!(l.acquire(a), None);
    }
}
