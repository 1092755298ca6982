//! Bytes in a completion driver's buffers: what a `Read` or a standing receive (`Recv`) put
//! there, written on from the same buffer, and given back once written.
//!
//! A standing receive reports arrivals whenever they come, also while the previous ones are
//! still being written. Only the bytes being written stay in their driver buffer (an arrival
//! that continues them in the same buffer, which a driver filling its buffers incrementally
//! produces, joins them); later arrivals are copied behind them and their buffers go back at
//! once, so a slow reader pins at most one buffer of its worker's shared ring, never the ring.
//! At [`MAX_HELD`] copied bytes the direction stops its receive
//! ([`IoOp::StopRecv`](super::IoOp::StopRecv)) until the destination has taken them: memory
//! per direction stays bounded as with epoll's overflow buffer.

use super::RECV_ARMED;
use super::{BufId, Ctx, Dir, Fail, Pending, Pipes, RelayStats, Src, BULK, EOF, HUP, READABLE};
use std::io;

/// Copied bytes behind a write at which a standing receive is stopped (one epoll read's worth).
pub(super) const MAX_HELD: usize = 64 * 1024;

/// The bytes a standing receive may bring before it ends by itself, for a driver that can
/// limit it (io_uring's multishot byte limit): it is armed again only once the destination
/// took what it brought, so a stalled reader holds at most this (plus one driver buffer the
/// last arrival may pass it by), copied, and no buffer of the shared ring beyond one.
pub const RECV_LIMIT: u32 = MAX_HELD as u32;

/// Bytes `from..end` of driver buffer `id`, of which the relay holds `holds` arrivals (each
/// given back once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seg {
    from: u32,
    end: u32,
    id: BufId,
    holds: u16,
}

impl Seg {
    pub(super) fn new(id: BufId, at: u32, n: usize) -> Seg {
        Seg {
            from: at,
            end: at.saturating_add(n as u32),
            id,
            holds: 1,
        }
    }

    /// The write that sends what is left.
    pub(super) fn src(&self) -> Src {
        Src::Buf {
            id: self.id,
            from: self.from,
            len: self.end - self.from,
        }
    }

    /// What is left of it, for a hand-over (the driver copies the bytes out).
    pub(super) fn held<P>(&self) -> super::Held<P> {
        super::Held::Lent {
            id: self.id,
            from: self.from,
            len: self.end - self.from,
            holds: self.holds,
        }
    }

    pub(super) fn give_back(&self, returned: &mut Vec<BufId>) {
        for _ in 0..self.holds {
            returned.push(self.id);
        }
    }

    /// Takes `next` into this segment when it continues it in the same buffer.
    fn merge(&mut self, next: Seg) -> bool {
        if next.id != self.id || next.from != self.end || self.holds == u16::MAX {
            return false;
        }
        self.end = next.end;
        self.holds += 1;
        true
    }
}

impl<P> Dir<P> {
    /// The driver-buffer segment to write next.
    pub(super) fn front(&self) -> Option<&Seg> {
        match &self.pending {
            Pending::Lent(s) => Some(s),
            Pending::LentThen(b) => Some(&b.0),
            _ => None,
        }
    }

    /// The standing receive must stop: the bytes held behind the write reached the bound
    /// (or, which the relay never lets happen, a pipe or the scratch buffer is pending).
    pub(super) fn must_stop_recv(&self) -> bool {
        match &self.pending {
            Pending::None | Pending::Lent(_) => false,
            Pending::LentThen(b) => b.1.len() >= MAX_HELD,
            Pending::Buf(b) => b.0.len().saturating_sub(b.1) >= MAX_HELD,
            Pending::Scratch(_) | Pending::Pipe(..) => true,
        }
    }

    /// A write from the front segment sent `m` bytes. True when that segment is done (given
    /// back; copied bytes behind it become the overflow buffer) or there was none; false when
    /// part of it is left.
    pub(super) fn sent_from_front(
        &mut self,
        m: usize,
        returned: &mut Vec<BufId>,
        stats: &mut RelayStats,
    ) -> bool {
        let front = match &mut self.pending {
            Pending::Lent(s) => s,
            Pending::LentThen(b) => &mut b.0,
            _ => return true,
        };
        front.from = front.from.saturating_add(m as u32).min(front.end);
        if front.from < front.end {
            return false;
        }
        front.give_back(returned);
        self.pending = match std::mem::take(&mut self.pending) {
            Pending::LentThen(b) => {
                stats.overflow_in_use += 1;
                Pending::Buf(Box::new((b.1, 0)))
            }
            _ => Pending::None,
        };
        true
    }

    /// An arrival of the standing receive (`more`: it stays armed), its bytes in `scratch`.
    /// Returns the bytes read.
    pub(super) fn arrived(
        &mut self,
        more: bool,
        res: io::Result<usize>,
        cx: &mut Ctx<'_, impl Pipes<Pipe = P>>,
        scratch: &[u8],
    ) -> Result<u64, Fail> {
        if !more {
            self.recv = 0;
        } else if self.recv == 0 {
            self.recv = RECV_ARMED;
        }
        match res {
            Ok(0) => self.flags |= EOF,
            Ok(n) => {
                let Some(id) = cx.lent.take() else {
                    // Bytes the driver did not say where to find: fail rather than relay
                    // garbage.
                    return Err(Fail::Src);
                };
                self.burst = self.burst.saturating_add(n as u32);
                cx.stats.bytes_copied += n as u64;
                if self.burst as usize >= cx.threshold {
                    self.flags |= BULK;
                }
                // Less than the buffer had room for: the socket was drained, the burst is over.
                if n < cx.lent_room as usize && self.flags & HUP == 0 {
                    self.end_burst(cx.threshold);
                }
                let bytes = &scratch[..n.min(scratch.len())];
                self.keep(Seg::new(id, cx.lent_at, n), bytes, cx.returned)?;
                return Ok(n as u64);
            }
            // No free driver buffer: the driver says when the socket is worth receiving from
            // again (a readable event once buffers are back).
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.flags &= !READABLE;
                self.end_burst(cx.threshold);
            }
            // Stopped (or interrupted): armed again when the direction wants bytes.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(Fail::Src),
        }
        Ok(0)
    }

    /// Keeps an arrival behind what is pending: in its buffer when nothing is, else copied.
    fn keep(&mut self, seg: Seg, bytes: &[u8], returned: &mut Vec<BufId>) -> Result<(), Fail> {
        match &mut self.pending {
            Pending::None => {
                self.pending = Pending::Lent(seg);
                return Ok(());
            }
            Pending::Lent(first) => {
                if first.merge(seg) {
                    return Ok(());
                }
                let first = *first;
                self.pending = Pending::LentThen(Box::new((first, bytes.to_vec())));
            }
            Pending::LentThen(b) => b.1.extend_from_slice(bytes),
            Pending::Buf(b) => {
                // What was written is dropped first (a write in flight started at `b.1`, which
                // becomes 0), so the buffer holds only unsent bytes however long it streams.
                let (data, written) = &mut **b;
                data.drain(..(*written).min(data.len()));
                *written = 0;
                data.extend_from_slice(bytes);
            }
            // A pipe or the scratch buffer: the receive is never armed beside them.
            Pending::Pipe(..) | Pending::Scratch(_) => {
                seg.give_back(returned);
                return Err(Fail::Src);
            }
        }
        seg.give_back(returned);
        Ok(())
    }
}
