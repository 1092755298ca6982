//! Operations on a stream whose socket bytes are not its application bytes (TLS): the ring
//! cannot receive into or send from the session, so the loop calls the transport directly, as
//! the epoll driver does, and a one-shot poll reports the edge the transport waits for. Writes
//! from the worker's scratch buffer (what a TLS read put there, bound for the plain peer) go
//! the same way: the buffer is the next connection's as soon as this call returns. The
//! connection's lifecycle and relay decisions are the same as on a plain socket; only the way
//! these operations are carried out differs. A plain socket's reads and writes larger than one
//! provided buffer (large HTTP bodies) come here too: one recv or send of up to 64 KiB costs
//! less than four ring operations and a copy.
//!
//! ```text
//!   Read ──── transport.read into the scratch buffer ── WouldBlock ─▶ poll IN
//!   Write ─── transport.write (scratch, held bytes, or a ring buffer a plain peer filled)
//!   Shutdown ─ transport.shutdown_write (close_notify, then FIN)
//!   records or a FIN left unsent ─▶ poll OUT ─▶ Event::Ready(writable) ─▶ flush
//!   a write that blocks with nothing unsent (a backend handshake waiting for the peer's
//!   flight) ─▶ poll IN
//! ```

use super::Uring;
use crate::core::relay::{IoOp, Src};
use crate::driver::worker::Exec;
use crate::transport::Transport;
use std::io;
use std::os::fd::AsFd;

impl Uring<'_> {
    /// Carries `op` out on `sock` at once; watches for what it waits on.
    pub(super) fn exec_direct(
        &mut self,
        key: usize,
        op: IoOp,
        sock: &mut dyn Transport,
        held: &[u8],
        scratch: &mut [u8],
    ) -> Exec {
        let room = scratch.len();
        let res = match op {
            IoOp::Read { max, .. } => sock.read(&mut scratch[..max.min(room)]),
            IoOp::Write {
                src: Src::Scratch(n),
                ..
            } => sock.write(&scratch[..n.min(room)]),
            IoOp::Write { src: Src::Held, .. } => sock.write(held),
            // Bytes a receive on the plain peer put in one of the ring's buffers.
            IoOp::Write {
                src: Src::Buf { id, from, len },
                ..
            } => match self.bufs.bytes(id, from, len as usize) {
                Some(b) => sock.write(b),
                None => Err(io::Error::other("send from a buffer not lent")),
            },
            IoOp::Shutdown { .. } => sock.shutdown_write().map(|()| 0),
            IoOp::Queued { .. } => crate::sys::sock::queued(sock.as_fd()),
            // A framed stream never splices (the core asks the transport) and keeps no
            // receive standing (its connection's context says so).
            IoOp::SpliceIn { .. }
            | IoOp::SpliceOut { .. }
            | IoOp::Recv { .. }
            | IoOp::StopRecv { .. } => Err(io::Error::other(
                "a splice or standing receive on a TLS stream",
            )),
        };
        let side = op.side();
        let blocked = matches!(&res, Err(e) if e.kind() == io::ErrorKind::WouldBlock);
        let unsent = sock.unsent();
        let plain = sock.can_splice();
        let fd = sock.as_fd();
        if unsent {
            self.watch_edge(key, fd, side, true);
        }
        if blocked {
            match op {
                IoOp::Read { .. } => self.watch_edge(key, fd, side, false),
                // A plain socket is full; a TLS stream that blocks with nothing left to send
                // waits for the peer (a backend's handshake flight).
                _ if plain => self.watch_edge(key, fd, side, true),
                _ if !unsent => self.watch_edge(key, fd, side, false),
                _ => {}
            }
        }
        Exec::Done(res)
    }
}
