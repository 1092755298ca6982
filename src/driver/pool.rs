//! One worker's idle backend connections, kept for the next plain HTTP request to the same
//! backend (nginx's upstream `keepalive`).
//!
//! A connection comes back here only clean: its answer was read to the end, the request was
//! sent whole, nothing failed, and the backend did not ask to close. It leaves unwatched (no
//! events while idle), and before it is handed out again a non-blocking peek makes sure the
//! backend neither closed it nor sent anything unasked; such a connection is dropped. Idle
//! connections close after `backend_pool.idle_timeout`; at `backend_pool.max_idle` the oldest
//! one makes room.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

struct Idle {
    addr: SocketAddr,
    stream: TcpStream,
    since: Instant,
}

/// Idle backend connections, oldest first.
pub struct BackendPool {
    max: usize,
    timeout: Duration,
    idle: Vec<Idle>,
}

impl BackendPool {
    pub fn new(max: usize, timeout: Duration) -> BackendPool {
        BackendPool {
            max,
            timeout,
            idle: Vec::new(),
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
        if self.max == 0 {
            return;
        }
        if self.idle.len() >= self.max {
            self.idle.remove(0);
        }
        self.idle.push(Idle {
            addr,
            stream,
            since: now,
        });
    }

    /// Closes the connections idle for longer than the timeout.
    pub fn expire(&mut self, now: Instant) {
        let fresh = self
            .idle
            .iter()
            .position(|c| now.saturating_duration_since(c.since) < self.timeout)
            .unwrap_or(self.idle.len());
        self.idle.drain(..fresh);
    }

    /// When the oldest idle connection expires.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.idle.first().map(|c| c.since + self.timeout)
    }

    pub fn len(&self) -> usize {
        self.idle.len()
    }

    pub fn is_empty(&self) -> bool {
        self.idle.is_empty()
    }

    /// Closes every idle connection (draining).
    pub fn clear(&mut self) {
        self.idle.clear();
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

    fn pair(l: &TcpListener) -> (TcpStream, TcpStream) {
        let c = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        c.set_nonblocking(true).expect("nonblocking");
        let (s, _) = l.accept().expect("accept");
        (c, s)
    }

    #[test]
    fn only_clean_live_connections_come_back() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let now = Instant::now();
        let mut pool = BackendPool::new(8, Duration::from_secs(30));
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
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let now = Instant::now();
        let mut pool = BackendPool::new(2, Duration::from_secs(30));
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
