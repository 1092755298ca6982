//! What a stage knows of its sockets' readiness: one value kept by the upgrade, the HTTP
//! exchange and the linger alike, set from [`Event::Ready`](super::Event::Ready) edges and
//! cleared by the operation that found a socket not ready.

use super::Event;
use crate::core::relay::{IoOp, Side};

/// Readiness remembered between edges (a readiness driver reports each change once): the
/// socket may have bytes / may take bytes. A completion driver's stage learns the same from
/// its operations' results.
#[derive(Debug, Clone, Copy)]
pub(super) struct Readiness {
    pub(super) client_readable: bool,
    pub(super) client_writable: bool,
    pub(super) backend_readable: bool,
    pub(super) backend_writable: bool,
    /// A backend edge came while connecting: ask whether the connect finished.
    pub(super) check_connect: bool,
    /// A FIN or an error was reported on the client's / the backend's socket: that edge may
    /// be spent, so a short read no longer shows the socket drained (read on to the 0).
    pub(super) client_fin: bool,
    pub(super) backend_fin: bool,
}

impl Readiness {
    /// A client socket just accepted (tried at once: the first read or write finds out), and no
    /// backend yet.
    pub(super) fn new() -> Readiness {
        Readiness {
            client_readable: true,
            client_writable: true,
            backend_readable: false,
            backend_writable: false,
            check_connect: false,
            client_fin: false,
            backend_fin: false,
        }
    }

    /// Remembers what an [`Event::Ready`] edge says (other events say nothing of readiness).
    /// A FIN or an error shows as a read that returns it, a reset (`gone`) as a failing read
    /// or write. While the backend's connect is under way (`connecting`), its edge asks for the
    /// connect to be checked, and only its read side is kept: a backend that talks (or closes)
    /// at once shares the connect's edge, and no other edge may come.
    pub(super) fn edge(&mut self, ev: Event, connecting: bool) {
        let Event::Ready {
            side,
            readable,
            writable,
            hup,
            gone,
        } = ev
        else {
            return;
        };
        *self.readable(side) |= readable || hup || gone;
        self.fin_seen(side, hup || gone);
        if side == Side::Backend && connecting {
            self.check_connect = true;
        } else {
            *self.writable(side) |= writable || gone;
        }
    }

    /// A new backend socket replaces the old one: nothing is known of it yet.
    pub(super) fn new_backend(&mut self) {
        self.backend_readable = false;
        self.backend_writable = false;
        self.check_connect = false;
        self.backend_fin = false;
    }

    /// An edge of `side` said (`fin`) that a FIN or an error came.
    pub(super) fn fin_seen(&mut self, side: Side, fin: bool) {
        match side {
            Side::Client => self.client_fin |= fin,
            Side::Backend => self.backend_fin |= fin,
        }
    }

    /// A read of a plain socket under an edge-triggered readiness driver returned fewer bytes
    /// than it asked for: the socket is drained, and Linux reports the next bytes with a new
    /// edge, so reading again before it would only find nothing (one `EAGAIN` read saved per
    /// socket, e.g. at the start of every relay). Not once a FIN was reported: its edge may be
    /// spent, so the socket is read on to the 0. A completion driver's read waits for bytes
    /// instead, and a TLS session may hold decrypted bytes: neither calls this.
    pub(super) fn read_short(&mut self, side: Side) {
        let fin = match side {
            Side::Client => self.client_fin,
            Side::Backend => self.backend_fin,
        };
        if !fin {
            *self.readable(side) = false;
        }
    }

    /// Whether the client's and the backend's sockets are known to be drained (see
    /// [`Readiness::read_short`]): a relay that opens now waits for their next edge.
    pub(super) fn drained(&self) -> (bool, bool) {
        (!self.client_readable, !self.backend_readable)
    }

    /// The backend connected (or a pooled one was checked out): it takes bytes. A readiness
    /// driver reports its answer with an edge (the socket is watched from the connect on, a
    /// pooled one anew at checkout), and reading before it would only find nothing; a
    /// completion driver's read waits for the bytes, so it is asked for at once.
    pub(super) fn backend_connected(&mut self, completion: bool) {
        self.backend_readable |= completion;
        self.backend_writable = true;
    }

    /// `op` found its socket not ready (it would block): wait for the next edge.
    pub(super) fn blocked(&mut self, op: &IoOp) {
        match op {
            IoOp::Read { side, .. } => *self.readable(*side) = false,
            IoOp::Write { side, .. } => *self.writable(*side) = false,
            IoOp::SpliceIn { .. }
            | IoOp::SpliceOut { .. }
            | IoOp::Shutdown { .. }
            | IoOp::Queued { .. }
            | IoOp::Recv { .. }
            | IoOp::StopRecv { .. } => {}
        }
    }

    fn readable(&mut self, side: Side) -> &mut bool {
        match side {
            Side::Client => &mut self.client_readable,
            Side::Backend => &mut self.backend_readable,
        }
    }

    fn writable(&mut self, side: Side) -> &mut bool {
        match side {
            Side::Client => &mut self.client_writable,
            Side::Backend => &mut self.backend_writable,
        }
    }
}
