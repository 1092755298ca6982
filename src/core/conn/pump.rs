//! The short way through a connection: the core runs its own operation loop, calling the
//! driver's executor for each operation, and returns only when it needs the worker (a connect,
//! a timer, a note, waiting, the end).
//!
//! [`Conn::poll`] and [`Conn::complete_io`] do the same one operation at a time; the pump is
//! what a worker uses when it can carry an operation out without looking at the connection (a
//! plain socket pair): per relayed message it saves the worker's round trip per operation (a
//! slab lookup, a context, the held bytes and pipe fetched through the state enum).

use super::{Conn, Step, Time};
use crate::core::relay::{Ctx, IoOp, Next, Pipes};
use std::io;

/// Carries out a connection's operations for [`Conn::pump`].
pub trait Executor<P> {
    /// The buffer reads land in and `Write { src: Scratch(n) }` sends from.
    fn scratch(&self) -> &[u8];
    /// Executes `op` now and returns how it went, or submits it and returns `None` (a
    /// completion driver: the result comes through [`Conn::complete_io`] later). `held`: the
    /// bytes of a `Write { src: Held }`; `pipe`: the pipe of a splice.
    fn exec(&mut self, op: IoOp, held: &[u8], pipe: Option<&P>) -> Option<io::Result<usize>>;
}

impl<P> Conn<P> {
    /// Polls and carries out operations through `io` until the connection needs the worker:
    /// never returns [`Step::Io`]. `cx.scratch` is not used: `io` has the buffer.
    #[inline]
    pub fn pump(
        &mut self,
        cx: &mut Ctx<'_, impl Pipes<Pipe = P>>,
        t: &Time,
        io: &mut impl Executor<P>,
    ) -> Step {
        // The relay's loop, where a connection spends its bytes, is inline here.
        if let Conn::Relay(r) = self {
            // A read that brought bytes is followed by their write at once, without polling
            // both directions again (the relay says which write: `follow_up`).
            let mut then = None;
            let step = loop {
                if let Some(reason) = r.closed {
                    break r.end(reason, cx);
                }
                let op = match then.take() {
                    Some(op) => op,
                    None => match r.relay.poll_op(cx, t.tick, io.scratch().len()) {
                        Next::Op(op) => op,
                        next => break r.waiting(next, cx),
                    },
                };
                let (held, pipe) = match op {
                    IoOp::Read { .. } => (&[][..], None), // reads into the executor's buffer
                    _ => r.relay.lent(op),
                };
                let Some(res) = io.exec(op, held, pipe) else {
                    continue; // submitted: its completion comes later
                };
                r.complete(op, res, cx, io.scratch(), t);
                if let IoOp::Read { .. } = op {
                    if r.closed.is_none() {
                        then = r.relay.follow_up(op.way());
                    }
                }
            };
            if let Step::End(_) = step {
                *self = Conn::Ended;
            }
            return step;
        }
        self.pump_stage(cx, t, io)
    }

    /// The stages around the relay, an operation at a time.
    #[inline(never)]
    fn pump_stage(
        &mut self,
        cx: &mut Ctx<'_, impl Pipes<Pipe = P>>,
        t: &Time,
        io: &mut impl Executor<P>,
    ) -> Step {
        loop {
            let step = self.poll_stage(&mut cx.with_scratch(io.scratch()), t);
            let Step::Io(op) = step else {
                return step;
            };
            let (held, pipe) = self.lent(op);
            let Some(res) = io.exec(op, held, pipe) else {
                continue; // submitted: its completion comes later
            };
            self.complete_stage(op, res, &mut cx.with_scratch(io.scratch()), t);
        }
    }
}
