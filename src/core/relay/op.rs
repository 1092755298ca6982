//! The operations a relay asks a driver to carry out, and the sockets and directions they name.

/// Which socket of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Backend,
}

/// A direction of a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// Client to backend.
    Up,
    /// Backend to client.
    Down,
}

impl Way {
    /// The socket this direction reads from.
    #[inline]
    pub fn src(self) -> Side {
        match self {
            Way::Up => Side::Client,
            Way::Down => Side::Backend,
        }
    }

    /// The socket this direction writes to.
    #[inline]
    pub fn dst(self) -> Side {
        match self {
            Way::Up => Side::Backend,
            Way::Down => Side::Client,
        }
    }
}

/// A buffer of a completion driver (an io_uring provided buffer): reads land there, and the
/// write that follows sends straight from it.
pub type BufId = u16;

/// Where the bytes of a write come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Src {
    /// The first `n` bytes of the worker's scratch buffer (what the last read returned).
    Scratch(usize),
    /// The connection's own bytes: see [`crate::core::conn::Conn::out_bytes`].
    Held,
    /// `len` bytes at `from` in the driver's buffer `id`, which a read filled.
    Buf { id: BufId, from: u32, len: u32 },
}

/// One operation on a socket, for the driver to execute.
///
/// A completion is matched to its operation by kind and side alone: the payloads (`max`,
/// `len`, `Src`) instruct the driver and are not read back, so a completion driver may report
/// an operation rebuilt from the few bits it keeps per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoOp {
    /// Read at most `max` bytes from `side` into the worker's scratch buffer.
    Read { side: Side, max: usize },
    /// Write bytes to `side`.
    Write { side: Side, src: Src },
    /// Splice at most `max` bytes from `side` into the connection's pipe.
    SpliceIn { side: Side, max: usize },
    /// Splice `len` bytes out of the connection's pipe into `side`.
    SpliceOut { side: Side, len: usize },
    /// Send FIN on `side`.
    Shutdown { side: Side },
    /// Keep receiving from `side` until stopped (a completion driver's multishot receive, asked
    /// for when [`super::Ctx::standing`]): one submission, then each arrival is reported as a
    /// completion of `Recv { side, more }` with its bytes in a driver buffer, any time, also
    /// while a write of the same direction is in flight. `more` is false on the last one: FIN
    /// (`Ok(0)`), an error, no free driver buffer (`WouldBlock`: the driver reports the socket
    /// readable again once buffers are back) or stopped (`Interrupted`).
    Recv { side: Side, more: bool },
    /// Stop the standing receive on `side` (the destination does not keep up, or the direction
    /// is about to splice). Done at once; arrivals already under way are still reported, and
    /// the last says `more: false`.
    StopRecv { side: Side },
    /// How many bytes wait in `side`'s receive queue (SIOCINQ); reads nothing. Only asked in
    /// `auto` mode of plain sockets, to choose splice or copy for the burst that follows.
    Queued { side: Side },
}

impl IoOp {
    /// The socket the operation names.
    #[inline]
    pub fn side(self) -> Side {
        match self {
            IoOp::Read { side, .. }
            | IoOp::Write { side, .. }
            | IoOp::SpliceIn { side, .. }
            | IoOp::SpliceOut { side, .. }
            | IoOp::Shutdown { side }
            | IoOp::Recv { side, .. }
            | IoOp::StopRecv { side }
            | IoOp::Queued { side } => side,
        }
    }

    /// True for operations on the receiving side of their socket: those that take bytes from
    /// it, and asking what it holds (the others give it bytes or FIN).
    #[inline]
    pub fn reads(self) -> bool {
        matches!(
            self,
            IoOp::Read { .. }
                | IoOp::SpliceIn { .. }
                | IoOp::Recv { .. }
                | IoOp::StopRecv { .. }
                | IoOp::Queued { .. }
        )
    }

    /// True for the standing receive's operations, which do not occupy their direction's one
    /// slot for an operation in flight.
    #[inline]
    pub fn standing(self) -> bool {
        matches!(self, IoOp::Recv { .. } | IoOp::StopRecv { .. })
    }

    /// The relay direction the operation serves: reads serve the direction that starts at
    /// their socket, writes the one that ends there.
    #[inline]
    pub fn way(self) -> Way {
        match (self.reads(), self.side()) {
            (true, Side::Client) | (false, Side::Backend) => Way::Up,
            (true, Side::Backend) | (false, Side::Client) => Way::Down,
        }
    }
}
