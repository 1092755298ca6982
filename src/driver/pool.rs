//! One worker's idle backend connections, kept for the next plain HTTP request to the same
//! backend (nginx's upstream `keepalive`).
//!
//! A connection comes back here only clean: its answer was read to the end, the request was
//! sent whole, nothing failed, and the backend did not ask to close. Before it is handed out
//! again a non-blocking peek makes sure the backend neither closed it nor sent anything unasked;
//! such a connection is dropped. Idle connections close after `backend_pool.idle_timeout`; at
//! `backend_pool.max_idle` (parked ones included) the oldest one makes room.
//!
//! ```text
//!   parked  by client connection: still watched under that connection's key (readiness
//!           drivers), so its next request to the same backend takes it back with no
//!           epoll_ctl; an event on it while parked (the backend closed it or sent something)
//!           drops it. Another client's request takes a parked one when no idle one is left.
//!   idle    unwatched (no events while idle), oldest first
//! ```
//!
//! Parking saves the two epoll_ctl calls (remove at the end of an answer, add at the next
//! request) a keep-alive client's requests would cost otherwise.

use crate::core::relay::Side;
use crate::driver::worker::{Driver, Watch};
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

struct Idle {
    addr: SocketAddr,
    stream: TcpStream,
    since: Instant,
}

/// Idle backend connections, oldest first, and those parked with their client connection.
pub struct BackendPool {
    max: usize,
    timeout: Duration,
    idle: Vec<Idle>,
    parked: HashMap<usize, Idle>,
}

impl BackendPool {
    pub fn new(max: usize, timeout: Duration) -> BackendPool {
        BackendPool {
            max,
            timeout,
            idle: Vec::new(),
            parked: HashMap::new(),
        }
    }

    /// Takes new limits (a reload); connections beyond the new cap are closed.
    pub fn set_limits(&mut self, max: usize, timeout: Duration) {
        self.max = max;
        self.timeout = timeout;
        let over = self.idle.len().saturating_sub(max);
        self.idle.drain(..over);
    }

    /// The most recently released clean connection to `addr`, if any.
    pub fn checkout(&mut self, addr: SocketAddr, now: Instant) -> Option<TcpStream> {
        while let Some(i) = self.idle.iter().rposition(|c| c.addr == addr) {
            let c = self.idle.remove(i);
            if now.saturating_duration_since(c.since) < self.timeout && clean(&c.stream) {
                return Some(c.stream);
            }
        }
        None
    }

    /// Keeps a clean idle connection to `addr`.
    pub fn release(&mut self, addr: SocketAddr, stream: TcpStream, now: Instant) {
        if !self.make_room() {
            return;
        }
        self.idle.push(Idle {
            addr,
            stream,
            since: now,
        });
    }

    /// Closes the connections idle for longer than the timeout.
    #[inline]
    pub fn expire(&mut self, now: Instant) {
        if self.idle.is_empty() {
            return;
        }
        let fresh = self
            .idle
            .iter()
            .position(|c| now.saturating_duration_since(c.since) < self.timeout)
            .unwrap_or(self.idle.len());
        self.idle.drain(..fresh);
    }

    /// When the oldest idle connection expires.
    #[inline]
    pub fn next_expiry(&self) -> Option<Instant> {
        self.idle.first().map(|c| c.since + self.timeout)
    }

    /// Idle connections, parked ones included.
    pub fn len(&self) -> usize {
        self.idle.len() + self.parked.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes every idle connection, parked ones included (draining).
    pub fn clear(&mut self) {
        self.idle.clear();
        self.parked.clear();
    }

    /// Parks connection `key`'s clean backend connection, still watched under `key`; gives it
    /// back when there is no room (the caller unwatches it and pools it).
    fn park(&mut self, key: usize, c: Idle) -> Result<(), Idle> {
        if self.max == 0 || self.len() >= self.max || self.parked.contains_key(&key) {
            return Err(c);
        }
        self.parked.insert(key, c);
        Ok(())
    }

    /// True when connection `key` has a backend connection parked.
    #[inline]
    pub fn is_parked(&self, key: usize) -> bool {
        !self.parked.is_empty() && self.parked.contains_key(&key)
    }

    /// Something happened on connection `key`'s parked backend connection (readable: the
    /// backend closed it or sent something unasked): it is closed.
    pub fn parked_event(&mut self, key: usize) {
        self.parked.remove(&key);
    }

    fn usable(&self, c: &Idle, now: Instant) -> bool {
        now.saturating_duration_since(c.since) < self.timeout && clean(&c.stream)
    }

    /// Takes a clean parked connection to `addr` from whichever client connection parked it,
    /// unwatched.
    fn steal(&mut self, addr: SocketAddr, now: Instant, d: &mut impl Driver) -> Option<TcpStream> {
        loop {
            let key = self
                .parked
                .iter()
                .find_map(|(k, c)| (c.addr == addr).then_some(*k))?;
            let c = self.parked.remove(&key)?;
            d.unwatch(c.stream.as_fd());
            if self.usable(&c, now) {
                return Some(c.stream);
            }
        }
    }
}

/// A clean connection to `addr` for connection `key`'s request, watched under `key`: the one
/// `key` parked (no epoll_ctl), an idle one, or one another client connection parked.
pub fn checkout_watched(
    pool: &mut BackendPool,
    key: usize,
    addr: SocketAddr,
    now: Instant,
    d: &mut impl Driver,
) -> Option<TcpStream> {
    if let Some(c) = pool.parked.remove(&key) {
        if c.addr == addr {
            if pool.usable(&c, now) {
                return Some(c.stream);
            }
            // Closing it takes it out of epoll.
        } else {
            d.unwatch(c.stream.as_fd());
            pool.idle_again(c);
        }
    }
    let s = match pool.checkout(addr, now) {
        Some(s) => s,
        None if pool.parked.is_empty() => return None,
        None => pool.steal(addr, now, d)?,
    };
    d.watch(s.as_fd(), Watch::Conn(key, Side::Backend)).ok()?;
    Some(s)
}

/// Keeps connection `key`'s backend connection to `addr` after a clean answer: parked with
/// `key` when the driver reports readiness (a completion driver's operations are tied to the
/// connection: it is unwatched and pooled), or dropped when `keep` is false (draining, TLS).
pub fn release_watched(
    pool: &mut BackendPool,
    (key, addr): (usize, SocketAddr),
    stream: TcpStream,
    keep: bool,
    now: Instant,
    d: &mut impl Driver,
) {
    let c = Idle {
        addr,
        stream,
        since: now,
    };
    let c = match keep && !d.completes() {
        true => match pool.park(key, c) {
            Ok(()) => return,
            Err(c) => c,
        },
        false => c,
    };
    d.unwatch(c.stream.as_fd());
    if keep {
        pool.release(c.addr, c.stream, now);
    }
}

/// Connection `key` ends or connects anew: its parked backend connection, if any, becomes an
/// idle one any request may take.
pub fn detach(pool: &mut BackendPool, key: usize, now: Instant, d: &mut impl Driver) {
    if pool.parked.is_empty() {
        return;
    }
    if let Some(c) = pool.parked.remove(&key) {
        d.unwatch(c.stream.as_fd());
        if pool.usable(&c, now) {
            pool.idle_again(c);
        }
    }
}

impl BackendPool {
    /// Room for one more idle connection: at the cap the oldest idle one is closed. Parked
    /// connections count against the cap too (they are in use again soon) but are not closed:
    /// false when the pool is off or holds only parked ones.
    fn make_room(&mut self) -> bool {
        if self.max == 0 {
            return false;
        }
        if self.len() >= self.max {
            if self.idle.is_empty() {
                return false;
            }
            self.idle.remove(0);
        }
        true
    }

    /// Puts a formerly parked connection with the idle ones, where its age places it.
    fn idle_again(&mut self, c: Idle) {
        if !self.make_room() {
            return;
        }
        let at = self.idle.partition_point(|i| i.since <= c.since);
        self.idle.insert(at, c);
    }
}

/// True when the backend has neither closed the connection nor sent anything: a peek would
/// block.
fn clean(s: &TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(s.peek(&mut b), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    /// A backend listener, its address and an empty pool of `cap` (30 s idle).
    fn listener_and_pool(cap: usize) -> (TcpListener, SocketAddr, BackendPool) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        (l, addr, BackendPool::new(cap, Duration::from_secs(30)))
    }

    fn pair(l: &TcpListener) -> (TcpStream, TcpStream) {
        let c = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        c.set_nonblocking(true).expect("nonblocking");
        let (s, _) = l.accept().expect("accept");
        (c, s)
    }

    #[test]
    fn only_clean_live_connections_come_back() {
        let (l, addr, mut pool) = listener_and_pool(8);
        let now = Instant::now();
        let (clean_c, _clean_s) = pair(&l);
        let (closed_c, closed_s) = pair(&l);
        let (dirty_c, mut dirty_s) = pair(&l);
        pool.release(addr, clean_c, now);
        pool.release(addr, closed_c, now);
        pool.release(addr, dirty_c, now);
        drop(closed_s);
        dirty_s.write_all(b"HTTP/1.1 200 OK\r\n").expect("write");
        std::thread::sleep(Duration::from_millis(50));
        let other: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        assert!(pool.checkout(other, now).is_none());
        assert!(pool.checkout(addr, now).is_some(), "the clean one");
        assert!(pool.checkout(addr, now).is_none());
        assert!(pool.is_empty(), "the dirty and the closed one were dropped");
    }

    #[test]
    fn cap_and_timeout() {
        let (l, addr, mut pool) = listener_and_pool(2);
        let now = Instant::now();
        let mut keep = Vec::new();
        for i in 0..3 {
            let (c, s) = pair(&l);
            keep.push(s);
            pool.release(addr, c, now + Duration::from_secs(i));
        }
        assert_eq!(pool.len(), 2);
        assert_eq!(pool.next_expiry(), Some(now + Duration::from_secs(31)));
        pool.expire(now + Duration::from_secs(31));
        assert_eq!(pool.len(), 1);
        assert!(
            pool.checkout(addr, now + Duration::from_secs(33)).is_none(),
            "expired"
        );
        assert_eq!(pool.len(), 0);
    }
}
