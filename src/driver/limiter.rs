//! `max_connections` and `max_connections_per_ip`, enforced exactly across workers.
//!
//! Both are touched once when a connection is accepted and once when it ends, never per byte.
//! Worker threads of one process share one atomic counter and (only when a per-IP limit is set)
//! one small map. Worker processes share the same counts through [`Shared`] memory, each count
//! attributed to its worker so that a crashed worker's share is given back.

use crate::driver::shared::Shared;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The connection count against `max_connections`, for all workers.
#[derive(Debug)]
pub struct ConnLimiter {
    inner: ConnInner,
}

#[derive(Debug)]
enum ConnInner {
    /// Threads of one process.
    Local {
        max: AtomicUsize,
        active: AtomicUsize,
    },
    /// One worker process's handle on the shared count.
    Shared { shared: Arc<Shared>, worker: usize },
}

impl Default for ConnLimiter {
    fn default() -> Self {
        ConnLimiter::new(0)
    }
}

impl ConnLimiter {
    pub fn new(max: usize) -> ConnLimiter {
        ConnLimiter {
            inner: ConnInner::Local {
                max: AtomicUsize::new(max),
                active: AtomicUsize::new(0),
            },
        }
    }

    /// Worker process `worker`'s view of the count kept in `shared` (whose maximum the
    /// supervisor sets).
    pub fn shared(shared: Arc<Shared>, worker: usize) -> ConnLimiter {
        ConnLimiter {
            inner: ConnInner::Shared { shared, worker },
        }
    }

    pub fn set_max(&self, new: usize) {
        match &self.inner {
            ConnInner::Local { max, .. } => max.store(new, Ordering::Relaxed),
            ConnInner::Shared { shared, .. } => shared.set_max_connections(new),
        }
    }

    /// Counts one more connection, or refuses it at the limit.
    pub fn acquire(&self) -> bool {
        match &self.inner {
            ConnInner::Local { max, active } => {
                let max = max.load(Ordering::Relaxed);
                active
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                        (n < max).then_some(n + 1)
                    })
                    .is_ok()
            }
            ConnInner::Shared { shared, worker } => shared.conn_acquire(*worker),
        }
    }

    /// Counts a connection that exists already (a tunnel handed over at an upgrade), even
    /// past the limit: it is released as any other.
    pub fn force_acquire(&self) {
        match &self.inner {
            ConnInner::Local { active, .. } => {
                active.fetch_add(1, Ordering::AcqRel);
            }
            ConnInner::Shared { shared, worker } => {
                // Worker processes take no handed-over tunnels yet; counted if room remains.
                let _ = shared.conn_acquire(*worker);
            }
        }
    }

    pub fn release(&self) {
        match &self.inner {
            ConnInner::Local { active, .. } => {
                active.fetch_sub(1, Ordering::AcqRel);
            }
            ConnInner::Shared { shared, worker } => shared.conn_release(*worker),
        }
    }

    pub fn active(&self) -> usize {
        match &self.inner {
            ConnInner::Local { active, .. } => active.load(Ordering::Relaxed),
            ConnInner::Shared { shared, .. } => shared.connections() as usize,
        }
    }
}

/// The per-IP connection counts against `max_connections_per_ip`.
#[derive(Debug)]
pub struct IpLimiter {
    inner: IpInner,
}

#[derive(Debug)]
enum IpInner {
    Local {
        /// 0 = unlimited. Reload may change it; connections already counted stay counted.
        limit: AtomicUsize,
        open: Mutex<HashMap<IpAddr, u32>>,
    },
    Shared {
        shared: Arc<Shared>,
        worker: usize,
    },
}

impl Default for IpLimiter {
    fn default() -> Self {
        IpLimiter::new(None)
    }
}

impl IpLimiter {
    pub fn new(limit: Option<usize>) -> IpLimiter {
        IpLimiter {
            inner: IpInner::Local {
                limit: AtomicUsize::new(limit.unwrap_or(0)),
                open: Mutex::new(HashMap::new()),
            },
        }
    }

    /// Worker process `worker`'s view of the counts kept in `shared`.
    pub fn shared(shared: Arc<Shared>, worker: usize) -> IpLimiter {
        IpLimiter {
            inner: IpInner::Shared { shared, worker },
        }
    }

    pub fn set_limit(&self, new: Option<usize>) {
        match &self.inner {
            IpInner::Local { limit, .. } => limit.store(new.unwrap_or(0), Ordering::Relaxed),
            IpInner::Shared { shared, .. } => shared.set_ip_limit(new),
        }
    }

    /// Counts a new connection from `ip`. `None`: no limit in force (nothing counted);
    /// `Some(false)`: over the limit (nothing counted); `Some(true)`: counted, release it later.
    pub fn acquire(&self, ip: IpAddr) -> Option<bool> {
        let (limit, open) = match &self.inner {
            IpInner::Local { limit, open } => (limit, open),
            IpInner::Shared { shared, worker } => return shared.ip_acquire(*worker, ip),
        };
        let limit = limit.load(Ordering::Relaxed);
        if limit == 0 {
            return None;
        }
        let mut open = open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n as usize >= limit {
            return Some(false);
        }
        *n += 1;
        Some(true)
    }

    /// Forgets one counted connection from `ip`.
    pub fn release(&self, ip: IpAddr) {
        let open = match &self.inner {
            IpInner::Local { open, .. } => open,
            IpInner::Shared { shared, worker } => return shared.ip_release(*worker, ip),
        };
        let mut open = open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&ip);
            }
        }
    }

    /// Distinct client IPs counted now.
    pub fn tracked_ips(&self) -> usize {
        match &self.inner {
            IpInner::Local { open, .. } => open.lock().map(|m| m.len()).unwrap_or(0),
            IpInner::Shared { shared, .. } => shared.tracked_ips(),
        }
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
