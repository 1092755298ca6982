//! `limits.max_memory`: a budget for what the proxy pins, so that a small box refuses new
//! connections (503) instead of meeting the OOM killer.
//!
//! What a connection pins is mostly not ours to measure per byte: the kernel holds each socket's
//! structures (about 3.7 KiB: `TCP` 2368 B, `sock_inode_cache` 832 B, `filp`, `dentry`,
//! `eventpoll_epi`, read off /proc/slabinfo) and, while bytes are in flight, up to its receive
//! and send buffer; per direction the relay holds at most one more chunk (a pipe or an overflow
//! buffer, see `core::relay`), which left the receive queue and so lets it fill again. So each
//! thing is charged what it can pin at most, and the charge is reserved before it exists:
//!
//! ```text
//!   tunnel     2 × (4 KiB kernel + receive buffer + send buffer + chunk in flight) + 512 B
//!              (chunk: a read's worth, at most the receive buffer, the 64 KiB scratch or a pipe:
//!              [splice] pipe_size, which a budget defaults to the kernel's 64 KiB)
//!   handshake  + 2 × limits.max_head_bytes while the upgrade runs (request and answer heads)
//!   pipe       4 KiB for its kernel structures while a tunnel borrows it (its bytes are the
//!              tunnel's chunk in flight)
//!   start-up   the process's RSS when it started, plus 384 KiB per worker (scratch, tables,
//!              the 64 empty pipes its pool may keep)
//! ```
//!
//! For the buffer charge to be a bound, every socket's buffers are fixed with SO_RCVBUF and
//! SO_SNDBUF, which turns the kernel's autotuning off for them: the receive buffer at the
//! kernel's initial size (`net.ipv4.tcp_rmem`'s middle value), the send buffer at `tcp_wmem`'s
//! or, when that is smaller, the receive buffer's size ([`SocketBuffers::fixed`]). A tunnel's
//! throughput is then at most a receive buffer per round trip (128 KiB per RTT with Linux's
//! defaults; lower the sysctls on a small board to fit more tunnels, README "Gateways").
//!
//! Each worker gets an equal share of what is left after start-up and keeps its own count
//! ([`MemoryUse`]: plain integers, touched at accept, at the 101, at the end and when a pipe is
//! lent or returned; never per byte). Beyond its share a worker answers new clients 503
//! (`wsplice_rejected_memory_total`) and lends no more pipes (the relay copies instead);
//! established tunnels keep their sockets and keep flowing.

use crate::core::relay::Pipes;
use crate::sys::pipe::{Pipe, PipePool};

/// Kernel memory of one idle TCP socket with its descriptor and epoll registration, rounded up.
pub const KERNEL_PER_SOCKET: u64 = 4096;
/// A connection's share of the worker's slab, timer wheel and tables.
pub const USER_PER_CONN: u64 = 512;
/// Per worker: its 64 KiB scratch buffer, its poll and tables when empty, and the 64 empty
/// pipes its pool may keep (4 KiB of kernel structures each).
pub const WORKER_FIXED: u64 = (128 << 10) + 64 * PIPE_KERNEL;
/// Kernel structures of one pipe (inode, two files, the buffer ring), rounded up.
pub const PIPE_KERNEL: u64 = 4096;
/// The relay's copy chunk: the worker's scratch buffer (an overflow buffer is at most this).
pub const COPY_CHUNK: u64 = 64 << 10;

/// The kernel's initial socket buffer sizes, which wsplice fixes its sockets at under a budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketBuffers {
    /// `sk_rcvbuf`, bytes (the middle value of `net.ipv4.tcp_rmem`).
    pub rcv: u64,
    /// `sk_sndbuf`, bytes (the middle value of `net.ipv4.tcp_wmem`, at least `rcv`).
    pub snd: u64,
}

impl SocketBuffers {
    /// Linux's defaults: tcp_rmem = 4096 131072 6291456, tcp_wmem = 4096 16384 4194304.
    pub const LINUX_DEFAULT: SocketBuffers = SocketBuffers {
        rcv: 131072,
        snd: 16384,
    };

    /// The sizes a budget fixes from the kernel's initial ones (`rmem`, `wmem`: the middle
    /// values of `net.ipv4.tcp_rmem` and `tcp_wmem`): the receive buffer as the kernel starts it,
    /// the send buffer at least as large. The relay moves what one socket's receive buffer held
    /// into the other's send buffer; Linux's 16 KiB send buffer fed from its 128 KiB receive
    /// buffer moved one loopback bulk tunnel 2-4 MiB/s, 128 KiB moved it 516-593 MiB/s
    /// (bench-results/2026-11-30-budget-buffers).
    pub fn fixed(rmem: u64, wmem: u64) -> SocketBuffers {
        SocketBuffers {
            rcv: rmem,
            snd: wmem.max(rmem),
        }
    }

    /// [`SocketBuffers::fixed`] from this machine's `net.ipv4.tcp_rmem` and `tcp_wmem`.
    pub fn from_sysctls() -> SocketBuffers {
        SocketBuffers::fixed(
            sysctl_middle("tcp_rmem").unwrap_or(Self::LINUX_DEFAULT.rcv),
            sysctl_middle("tcp_wmem").unwrap_or(Self::LINUX_DEFAULT.snd),
        )
    }
}

/// The middle value of a three-number `net.ipv4` sysctl (`tcp_rmem`, `tcp_wmem`, `tcp_mem`).
pub fn sysctl_middle(name: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"))
        .ok()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// What one worker may reserve and what each thing costs, bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryPlan {
    /// The whole budget (`limits.max_memory`).
    pub max_memory: u64,
    /// What the process held at start-up plus [`WORKER_FIXED`] per worker.
    pub base: u64,
    /// This worker's share of what is left for connections and pipes.
    pub share: u64,
    pub per_tunnel: u64,
    /// Extra while the upgrade runs.
    pub per_handshake: u64,
    pub per_pipe: u64,
    pub buffers: SocketBuffers,
}

impl MemoryPlan {
    /// The plan for one of `workers` workers. `start_rss` is the process's footprint at start-up;
    /// with `processes`, every worker is a process of that size and the supervisor is about as
    /// large again.
    pub fn new(
        max_memory: u64,
        workers: usize,
        processes: bool,
        start_rss: u64,
        buffers: SocketBuffers,
        max_head_bytes: usize,
        pipe_size: usize,
    ) -> MemoryPlan {
        let workers = workers.max(1) as u64;
        let in_flight = buffers.rcv.min(COPY_CHUNK.max(pipe_size as u64));
        let base = if processes {
            start_rss * (workers + 1) + WORKER_FIXED * workers
        } else {
            start_rss + WORKER_FIXED * workers
        };
        MemoryPlan {
            max_memory,
            base,
            share: max_memory.saturating_sub(base) / workers,
            per_tunnel: 2 * (KERNEL_PER_SOCKET + buffers.rcv + buffers.snd + in_flight)
                + USER_PER_CONN,
            per_handshake: 2 * max_head_bytes as u64,
            per_pipe: PIPE_KERNEL,
            buffers,
        }
    }

    /// The chunk a direction may hold beside its socket buffers.
    pub fn in_flight(&self) -> u64 {
        (self.per_tunnel - USER_PER_CONN) / 2
            - KERNEL_PER_SOCKET
            - self.buffers.rcv
            - self.buffers.snd
    }

    /// Tunnels one worker's share holds (one handshake's worth kept aside to reach them).
    pub fn tunnels_per_worker(&self) -> u64 {
        self.share.saturating_sub(self.per_handshake) / self.per_tunnel
    }

    /// The start-up line's explanation, for `workers` workers.
    pub fn describe(&self, workers: usize) -> String {
        let kib = |b: u64| format!("{:.1} KiB", b as f64 / 1024.0);
        let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1 << 20) as f64);
        format!(
            "memory: limits.max_memory = {} allows {} tunnels ({} per worker; {} each: 2 × (4 KiB kernel + {} receive + {} send buffer, from net.ipv4.tcp_rmem/tcp_wmem, + {} in flight); {} more while in handshake; {} at start-up); beyond it new connections get 503 and splice pipes give way to copying",
            mib(self.max_memory),
            self.tunnels_per_worker() * workers as u64,
            self.tunnels_per_worker(),
            kib(self.per_tunnel),
            kib(self.buffers.rcv),
            kib(self.buffers.snd),
            kib(self.in_flight()),
            kib(self.per_handshake),
            mib(self.base),
        ) + &if self.tunnels_per_worker() == 0 {
            format!(
                ". That is no tunnel at all: raise limits.max_memory to at least {}",
                mib(self.base + workers as u64 * (self.per_tunnel + self.per_handshake))
            )
        } else {
            String::new()
        }
    }
}

/// The process's resident set now, bytes (`VmRSS` of /proc/self/status); 0 if unreadable.
pub fn rss_now() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let kib = s.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
            kib.split_whitespace().next()?.parse::<u64>().ok()
        })
        .map_or(0, |kib| kib * 1024)
}

/// The process's footprint when it first asked: later calls (reloads) return the same, so a
/// reload under load does not count the connections' memory as start-up's.
pub fn start_rss() -> u64 {
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *START.get_or_init(rss_now)
}

/// What one worker has reserved: counts, so that a reload that changes the charges changes
/// the sum consistently.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MemoryUse {
    /// Connections holding a slot (handshaking, relaying or lingering).
    pub conns: u64,
    /// Of those, the ones still in their upgrade.
    pub handshakes: u64,
    /// Splice pipes lent.
    pub pipes: u64,
}

impl MemoryUse {
    /// Bytes reserved under `plan`.
    pub fn bytes(&self, plan: &MemoryPlan) -> u64 {
        self.conns * plan.per_tunnel
            + self.handshakes * plan.per_handshake
            + self.pipes * plan.per_pipe
    }

    /// Reserves a new connection (in its handshake), or refuses it: beyond the share.
    pub fn admit(&mut self, plan: Option<&MemoryPlan>) -> bool {
        if let Some(p) = plan {
            if self.bytes(p) + p.per_tunnel + p.per_handshake > p.share {
                return false;
            }
        }
        self.conns += 1;
        self.handshakes += 1;
        true
    }

    /// The upgrade is over (101): the head buffers are gone.
    pub fn relay_opened(&mut self) {
        self.handshakes = self.handshakes.saturating_sub(1);
    }

    /// An admitted connection ended; `relayed`: after [`MemoryUse::relay_opened`].
    pub fn ended(&mut self, relayed: bool) {
        self.conns = self.conns.saturating_sub(1);
        if !relayed {
            self.handshakes = self.handshakes.saturating_sub(1);
        }
    }

    fn pipe_fits(&self, plan: Option<&MemoryPlan>) -> bool {
        plan.map_or(true, |p| self.bytes(p) + p.per_pipe <= p.share)
    }
}

/// The worker's pipe pool behind its memory share: the relay borrows through this, and gets no
/// pipe (so it copies) when the share has no room for one.
#[derive(Debug)]
pub struct Budgeted {
    pub pipes: PipePool,
    pub used: MemoryUse,
    pub plan: Option<MemoryPlan>,
}

impl Budgeted {
    pub fn new(pipes: PipePool, plan: Option<MemoryPlan>) -> Budgeted {
        Budgeted {
            pipes,
            used: MemoryUse::default(),
            plan,
        }
    }

    /// Bytes reserved now (0 without a budget).
    pub fn reserved(&self) -> u64 {
        self.plan.as_ref().map_or(0, |p| self.used.bytes(p))
    }
}

impl Pipes for Budgeted {
    type Pipe = Pipe;

    #[inline]
    fn take(&mut self) -> Option<Pipe> {
        if !self.used.pipe_fits(self.plan.as_ref()) {
            self.pipes.refused();
            return None;
        }
        let p = self.pipes.take()?;
        self.used.pipes += 1;
        Some(p)
    }

    #[inline]
    fn give(&mut self, p: Pipe) {
        self.used.pipes = self.used.pipes.saturating_sub(1);
        self.pipes.give(p)
    }

    fn discard(&mut self, p: Pipe) {
        self.used.pipes = self.used.pipes.saturating_sub(1);
        self.pipes.discard(p)
    }

    fn pipe_size(&self) -> usize {
        self.pipes.pipe_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(max_memory: u64) -> MemoryPlan {
        MemoryPlan::new(
            max_memory,
            1,
            false,
            2 << 20,
            SocketBuffers {
                rcv: 16384,
                snd: 16384,
            },
            16384,
            65536,
        )
    }

    #[test]
    fn the_send_buffer_is_fixed_no_smaller_than_the_receive_buffer() {
        let linux = SocketBuffers::LINUX_DEFAULT;
        assert_eq!(
            SocketBuffers::fixed(linux.rcv, linux.snd),
            SocketBuffers {
                rcv: 131072,
                snd: 131072
            }
        );
        // A gateway's small initial sizes stay as they are; a larger send buffer is kept.
        assert_eq!(
            SocketBuffers::fixed(16384, 16384),
            SocketBuffers {
                rcv: 16384,
                snd: 16384
            }
        );
        assert_eq!(SocketBuffers::fixed(16384, 65536).snd, 65536);
    }

    #[test]
    fn charges_follow_the_socket_buffers() {
        let p = plan(64 << 20);
        // 16 KiB buffers: the chunk in flight is a receive buffer's worth.
        assert_eq!(p.per_tunnel, 2 * (4096 + 32768 + 16384) + 512);
        assert_eq!(p.in_flight(), 16384);
        assert_eq!(p.per_pipe, 4096);
        assert_eq!(p.per_handshake, 32768);
        assert_eq!(p.base, (2 << 20) + (384 << 10));
        let linux = MemoryPlan::new(
            64 << 20,
            1,
            false,
            0,
            SocketBuffers::LINUX_DEFAULT,
            16384,
            65536,
        );
        assert_eq!(
            linux.in_flight(),
            65536,
            "the scratch chunk, below the 128 KiB buffer"
        );
        assert_eq!(p.share, (64 << 20) - p.base);
        assert_eq!(p.tunnels_per_worker(), (p.share - 32768) / p.per_tunnel);
        let two = MemoryPlan::new(64 << 20, 2, true, 2 << 20, p.buffers, 16384, 65536);
        assert_eq!(two.base, 3 * (2 << 20) + 2 * (384 << 10));
        assert_eq!(two.share, ((64 << 20) - two.base) / 2);
    }

    #[test]
    fn admits_until_the_share_then_refuses_and_recovers() {
        let p = plan(8 << 20);
        let mut u = MemoryUse::default();
        let mut admitted = 0;
        while u.admit(Some(&p)) {
            u.relay_opened();
            admitted += 1;
        }
        assert_eq!(admitted, p.tunnels_per_worker());
        assert!(u.bytes(&p) <= p.share);
        u.ended(true);
        assert!(u.admit(Some(&p)), "room again after a tunnel ended");
        u.ended(false);
        assert_eq!(u.conns, admitted - 1);
        assert_eq!(u.handshakes, 0);
    }

    #[test]
    fn pipes_need_room_and_give_it_back() {
        let p = plan(8 << 20);
        let mut b = Budgeted::new(PipePool::new(1000, 65536, usize::MAX), Some(p));
        while b.used.admit(Some(&p)) {
            b.used.relay_opened();
        }
        // Full of tunnels: what room is left takes a few pipes, then the relay copies.
        let room = p.share - b.used.bytes(&p);
        assert!(room < p.per_tunnel + p.per_handshake);
        let mut lent = Vec::new();
        while let Some(pipe) = b.take() {
            lent.push(pipe);
        }
        assert_eq!(
            lent.len() as u64,
            room / p.per_pipe,
            "pipes in the room left"
        );
        assert_eq!(b.pipes.stats().unavailable, 1);
        assert!(b.reserved() <= p.share);
        for pipe in lent {
            b.give(pipe);
        }
        b.used.ended(true);
        b.used.ended(true);
        let pipe = b.take().expect("room for a pipe after two tunnels ended");
        assert_eq!(b.used.pipes, 1);
        b.give(pipe);
        assert_eq!(b.used.pipes, 0);
    }

    #[test]
    fn without_a_budget_everything_is_admitted() {
        let mut b = Budgeted::new(PipePool::new(4, 65536, usize::MAX), None);
        for _ in 0..10_000 {
            assert!(b.used.admit(None));
        }
        assert!(b.take().is_some());
        assert_eq!(b.reserved(), 0);
    }

    #[test]
    fn start_rss_is_read_once() {
        let first = start_rss();
        assert!(first > 0);
        let _grow: Vec<u8> = vec![1; 8 << 20];
        assert_eq!(start_rss(), first);
        assert!(rss_now() > 0);
    }
}
