//! What a relay borrows from its worker for one call: buffers, the pipe pool, counters, the
//! relay settings.

use super::BufId;
use crate::config::RelayMode;

/// What a relay lends from its worker for one call.
pub struct Ctx<'a, P: Pipes> {
    /// Where a `Read`'s bytes are when it completes: the worker's scratch buffer, or the
    /// driver's buffer `lent` names. When polling, its length bounds a `Read`.
    pub scratch: &'a [u8],
    /// On a `Read`'s or `Recv`'s completion: the driver buffer that `scratch` is in. A relay
    /// that keeps the bytes takes it (and later puts it in `returned`, once per arrival); the
    /// worker gives back what is left.
    pub lent: Option<BufId>,
    /// Where in buffer `lent` the bytes start (a driver that fills its buffers incrementally
    /// puts several arrivals in one buffer).
    pub lent_at: u32,
    /// How many bytes the receive could have put in `lent`: an arrival shorter than that found
    /// the socket drained.
    pub lent_room: u32,
    /// Driver buffers the relay is done with, for the worker to give back.
    pub returned: &'a mut Vec<BufId>,
    pub pipes: &'a mut P,
    pub stats: &'a mut RelayStats,
    pub mode: RelayMode,
    pub threshold: usize,
    /// The driver completes operations (io_uring) rather than trying them (epoll): a `Read`
    /// waits for bytes and a `Write` for room, so a short read does not mean the socket is
    /// drained nor a short write that it is full. Splices keep readiness rules either way.
    pub completion: bool,
    /// The completion driver keeps receives standing ([`IoOp::Recv`], multishot): a copying
    /// direction asks for one receive and gets every arrival, instead of one `Read` per
    /// message.
    pub standing: bool,
}

impl<P: Pipes> Ctx<'_, P> {
    /// The same loan with `scratch` as the buffer reads land in.
    #[inline]
    pub fn with_scratch<'b>(&'b mut self, scratch: &'b [u8]) -> Ctx<'b, P> {
        Ctx {
            scratch,
            lent: self.lent,
            lent_at: self.lent_at,
            lent_room: self.lent_room,
            returned: self.returned,
            pipes: self.pipes,
            stats: self.stats,
            mode: self.mode,
            threshold: self.threshold,
            completion: self.completion,
            standing: self.standing,
        }
    }
}

/// The worker's pipe pool as the relay sees it: pipes lent while bytes are in flight.
pub trait Pipes {
    type Pipe;
    /// A pipe to fill, or None when the pool is at its cap (the relay copies instead).
    fn take(&mut self) -> Option<Self::Pipe>;
    /// An empty pipe back to the pool.
    fn give(&mut self, p: Self::Pipe);
    /// A pipe that may still hold bytes (its relay ended): never reused.
    fn discard(&mut self, p: Self::Pipe);
    /// How many bytes one splice may move into a pipe.
    fn pipe_size(&self) -> usize;
}

/// Per-worker relay counters, plain integers: only the owning thread writes them.
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
