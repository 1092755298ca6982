//! The tunnel: bytes both ways, splice through a borrowed pipe or copy through the worker's
//! scratch buffer, with backpressure and half-close.
//!
//! Per direction at most one thing is in flight: a pipe holding bytes, or an overflow buffer
//! holding what the peer could not take. While something is in flight the source is not read,
//! so a slow reader stops the writer at the kernel's socket buffers: memory per direction is
//! bounded by one pipe or one scratch-sized buffer.

use crate::config::RelayMode;
use crate::core::session::Settings;
use crate::core::timer::Tick;
use crate::core::tunnel::{self, CloseReason, Times};
use crate::driver::access_log::{LogSink, Record};
use crate::sys::pipe::{Pipe, PipePool};
use crate::sys::sock::shutdown_write;
use mio::net::TcpStream;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

/// The source may have bytes (edge-triggered: remembered until a read says otherwise).
const READABLE: u8 = 1;
/// The source sent FIN (a read returned 0).
const EOF: u8 = 2;
/// We sent FIN to the destination.
const SHUT: u8 = 4;
/// Auto mode: this source sends in bulk (its last burst reached the splice threshold), so
/// splice. Decided per burst (everything read between two readiness waits), not per read: the
/// short tail read of a bulk burst must not flip a bulk flow back to copying.
const BULK: u8 = 8;
/// The source's FIN or error was reported (EPOLLRDHUP): read until 0, never trust a short read.
const HUP: u8 = 16;

/// Bytes that could not be written yet.
#[derive(Debug, Default)]
pub enum Pending {
    #[default]
    None,
    /// A borrowed pipe holding this many bytes.
    Pipe(Pipe, u32),
    /// Copied bytes the peer did not take: `(data, written so far)`.
    Buf(Box<(Vec<u8>, usize)>),
}

/// One direction of a tunnel.
#[derive(Debug, Default)]
pub struct Dir {
    pending: Pending,
    flags: u8,
}

/// Per-worker counters, plain integers: only the owning thread writes them.
#[derive(Debug, Default, Clone, Copy)]
pub struct RelayStats {
    /// Bytes read from clients and sent on to backends.
    pub bytes_up: u64,
    /// Bytes read from backends and sent on to clients.
    pub bytes_down: u64,
    pub bytes_spliced: u64,
    pub bytes_copied: u64,
    pub overflow_in_use: u64,
    pub copy_fallbacks: u64,
}

/// What a worker lends the relay for one call.
pub struct Ctx<'a> {
    pub scratch: &'a mut [u8],
    pub pool: &'a mut PipePool,
    pub stats: &'a mut RelayStats,
    pub mode: RelayMode,
    pub threshold: usize,
}

/// How far a direction got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pumped {
    /// Waiting for readiness (source empty or destination full).
    Blocked,
    /// The per-call budget ran out while the source still had bytes: call again soon.
    MoreLater,
    /// FIN forwarded and nothing in flight: this direction is over.
    Finished,
}

/// Which socket failed.
#[derive(Debug)]
pub enum Fail {
    Src(io::Error),
    Dst(io::Error),
}

impl Dir {
    /// A direction that starts with `initial` bytes to deliver (may be empty).
    pub fn with_initial(initial: Vec<u8>, stats: &mut RelayStats) -> Dir {
        let pending = if initial.is_empty() {
            Pending::None
        } else {
            stats.overflow_in_use += 1;
            Pending::Buf(Box::new((initial, 0)))
        };
        Dir {
            pending,
            flags: READABLE,
        }
    }

    /// The source reported readiness; `hup`: it also reported FIN or an error.
    pub fn readable(&mut self, hup: bool) {
        self.flags |= READABLE;
        if hup {
            self.flags |= HUP;
        }
    }

    /// Returns borrowed resources when the tunnel closes.
    pub fn release(&mut self, cx: &mut Ctx<'_>) {
        match std::mem::take(&mut self.pending) {
            Pending::None => {}
            Pending::Pipe(p, _) => cx.pool.discard(p),
            Pending::Buf(_) => cx.stats.overflow_in_use -= 1,
        }
    }

    /// Writes what is in flight. `Ok(true)`: nothing left in flight.
    fn flush(&mut self, dst: &TcpStream, cx: &mut Ctx<'_>) -> Result<bool, Fail> {
        loop {
            match &mut self.pending {
                Pending::None => return Ok(true),
                Pending::Pipe(p, len) => match p.drain(dst, *len as usize) {
                    Ok(n) => {
                        *len -= n as u32;
                        if *len == 0 {
                            if let Pending::Pipe(p, _) = std::mem::take(&mut self.pending) {
                                cx.pool.give(p);
                            }
                            return Ok(true);
                        }
                        // A short write means the socket buffer is full; EPOLLOUT will follow.
                        return Ok(false);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(Fail::Dst(e)),
                },
                Pending::Buf(b) => {
                    let (data, pos) = &mut **b;
                    match (&*dst).write(&data[*pos..]) {
                        Ok(n) => {
                            *pos += n;
                            if *pos == data.len() {
                                self.pending = Pending::None;
                                cx.stats.overflow_in_use -= 1;
                                return Ok(true);
                            }
                            return Ok(false);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(Fail::Dst(e)),
                    }
                }
            }
        }
    }

    /// Moves bytes from `src` to `dst` until blocked, finished or out of budget. Adds the bytes
    /// read to `moved`.
    pub fn pump(
        &mut self,
        src: &TcpStream,
        dst: &TcpStream,
        cx: &mut Ctx<'_>,
        moved: &mut u64,
    ) -> Result<Pumped, Fail> {
        let mut budget = 32u32;
        // Bytes read in this burst: what was waiting, as FIONREAD would say, without the syscall.
        let mut burst = 0usize;
        loop {
            if !self.flush(dst, cx)? {
                return Ok(Pumped::Blocked);
            }
            if self.flags & EOF != 0 {
                if self.flags & SHUT == 0 {
                    self.flags |= SHUT;
                    // The peer may already be gone; its own read side will report that.
                    let _ = shutdown_write(dst);
                }
                return Ok(Pumped::Finished);
            }
            if self.flags & READABLE == 0 {
                return Ok(Pumped::Blocked);
            }
            if budget == 0 {
                return Ok(Pumped::MoreLater);
            }
            budget -= 1;
            let splice = match cx.mode {
                RelayMode::Splice => true,
                RelayMode::Copy => false,
                RelayMode::Auto => self.flags & BULK != 0,
            };
            if splice {
                if let Some(p) = cx.pool.take() {
                    let want = cx.pool.pipe_size();
                    match p.fill(src, want) {
                        Ok(0) => {
                            cx.pool.give(p);
                            self.flags |= EOF;
                        }
                        Ok(n) => {
                            *moved += n as u64;
                            burst += n;
                            cx.stats.bytes_spliced += n as u64;
                            self.pending = Pending::Pipe(p, n as u32);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            cx.pool.give(p);
                            self.flags &= !READABLE;
                            self.end_burst(burst, cx.threshold);
                            return Ok(Pumped::Blocked);
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => cx.pool.give(p),
                        Err(e) => {
                            cx.pool.give(p);
                            return Err(Fail::Src(e));
                        }
                    }
                    continue;
                }
                cx.stats.copy_fallbacks += 1;
            }
            match (&*src).read(cx.scratch) {
                Ok(0) => self.flags |= EOF,
                Ok(n) => {
                    *moved += n as u64;
                    burst += n;
                    cx.stats.bytes_copied += n as u64;
                    if burst >= cx.threshold {
                        // Splice the rest of this burst already.
                        self.flags |= BULK;
                    }
                    // A short read drained the socket: Linux reports new data with a new edge.
                    // Not after EPOLLRDHUP, whose edge may already be spent: then read to 0.
                    if n < cx.scratch.len() && self.flags & HUP == 0 {
                        self.flags &= !READABLE;
                        self.end_burst(burst, cx.threshold);
                    }
                    let written = match (&*dst).write(&cx.scratch[..n]) {
                        Ok(m) => m,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                        Err(e) => return Err(Fail::Dst(e)),
                    };
                    if written < n {
                        cx.stats.overflow_in_use += 1;
                        self.pending = Pending::Buf(Box::new((cx.scratch[written..n].to_vec(), 0)));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.flags &= !READABLE;
                    self.end_burst(burst, cx.threshold);
                    return Ok(Pumped::Blocked);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Fail::Src(e)),
            }
        }
    }

    /// The source is drained: a small burst means small messages, which copy more cheaply than
    /// they splice (bench-results/: tools/splice-threshold).
    fn end_burst(&mut self, burst: usize, threshold: usize) {
        if burst < threshold {
            self.flags &= !BULK;
        } else {
            self.flags |= BULK;
        }
    }
}

/// An established tunnel: the whole per-connection state once the handshake is over.
#[derive(Debug)]
pub struct Tunnel {
    pub client: TcpStream,
    pub backend: TcpStream,
    /// client -> backend
    pub up: Dir,
    /// backend -> client
    pub down: Dir,
    pub times: Times,
    /// The due tick of this tunnel's live wheel entry (0: none).
    pub armed: Tick,
    /// Idle and half-close timeouts as configured when the tunnel opened: a reload does not
    /// change the rules for established tunnels.
    pub timeouts: tunnel::Timeouts,
    /// The client IP, when the per-IP limiter counted this connection.
    pub counted_ip: Option<IpAddr>,
    /// The worker-local index of the backend (per-backend counts); `u16::MAX`: none.
    pub backend_id: u16,
    /// Access log facts; allocated only when an access log is configured.
    pub log: Option<Box<ConnLog>>,
}

/// What the access log line of a connection says, gathered while it lives.
#[derive(Debug)]
pub struct ConnLog {
    pub client: SocketAddr,
    pub settings: Arc<Settings>,
    pub route: Option<usize>,
    pub backend: Option<SocketAddr>,
    pub status: u16,
    pub started: Instant,
    pub up: u64,
    pub down: u64,
}

impl ConnLog {
    /// Formats this connection's line into a worker's batch.
    pub fn write(&self, sink: &LogSink, batch: &mut String, now: Instant, reason: &str) {
        let route = self
            .route
            .filter(|&r| r < self.settings.routes.len())
            .map_or("-", |r| self.settings.routes.get(r).prefix.as_str());
        sink.format(
            batch,
            &Record {
                client: self.client,
                route,
                backend: self.backend,
                status: self.status,
                bytes_up: self.up,
                bytes_down: self.down,
                duration: now.saturating_duration_since(self.started),
                reason,
            },
        );
    }
}

/// What happened to a tunnel in one round of pumping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Still open; `more`: call again without waiting for readiness.
    Open {
        more: bool,
    },
    Closed(CloseReason),
}

impl Tunnel {
    /// Pumps both directions once.
    pub fn pump(&mut self, cx: &mut Ctx<'_>, now: Tick) -> Outcome {
        let (mut up_bytes, mut down_bytes) = (0u64, 0u64);
        let up = self.up.pump(&self.client, &self.backend, cx, &mut up_bytes);
        let down = match up {
            Err(_) => Ok(Pumped::Blocked),
            Ok(_) => self
                .down
                .pump(&self.backend, &self.client, cx, &mut down_bytes),
        };
        cx.stats.bytes_up += up_bytes;
        cx.stats.bytes_down += down_bytes;
        if let Some(l) = &mut self.log {
            l.up += up_bytes;
            l.down += down_bytes;
        }
        if up_bytes + down_bytes > 0 {
            self.times.touch(now);
        }
        match (up, down) {
            (Err(Fail::Src(_)), _) | (_, Err(Fail::Dst(_))) => {
                Outcome::Closed(CloseReason::ClientReset)
            }
            (Err(Fail::Dst(_)), _) | (_, Err(Fail::Src(_))) => {
                Outcome::Closed(CloseReason::BackendReset)
            }
            (Ok(a), Ok(b)) => {
                if a == Pumped::Finished && b == Pumped::Finished {
                    return Outcome::Closed(CloseReason::Done);
                }
                if a == Pumped::Finished || b == Pumped::Finished {
                    self.times.half_close(now);
                }
                Outcome::Open {
                    more: a == Pumped::MoreLater || b == Pumped::MoreLater,
                }
            }
        }
    }

    /// Gives back pipes and buffers.
    pub fn release(&mut self, cx: &mut Ctx<'_>) {
        self.up.release(cx);
        self.down.release(cx);
    }
}
