//! The lingering close of a refused or answered client: write our answer, send FIN, then
//! discard what the client still sends until it closes or [`LINGER`] is over. Closing with
//! unread input would send RST, and an RST may destroy the answer before the client reads it.

use super::ready::Readiness;
use super::{ConnLog, End, EndReason, Event, Lanes, Note, Step, Time, LINGER};
use crate::core::relay::{IoOp, Side, Src};
use crate::core::status::Reject;
use crate::core::timer::{Clock, Tick};
use std::collections::VecDeque;
use std::io;
use std::net::IpAddr;

#[derive(Debug)]
pub struct Linger {
    out: Vec<u8>,
    pos: usize,
    shut: bool,
    /// The end of the linger.
    until: Tick,
    /// The due tick of the live wheel entry (0: not armed yet).
    pub(super) armed: Tick,
    reason: EndReason,
    notes: VecDeque<Note>,
    close_backend: bool,
    ready: Readiness,
    done: bool,
    holds_slot: bool,
    counted_ip: Option<IpAddr>,
    log: Option<Box<ConnLog>>,
    /// Operations in flight (a read of the upgrade may still wait in a completion driver).
    pub(super) lanes: Lanes,
}

impl Linger {
    fn new(out: Vec<u8>, reason: EndReason, t: &Time) -> Linger {
        Linger {
            out,
            pos: 0,
            shut: false,
            until: t.tick.wrapping_add(Clock::ticks(LINGER)).max(1),
            armed: 0,
            reason,
            notes: VecDeque::new(),
            close_backend: false,
            ready: Readiness::new(),
            done: false,
            holds_slot: true,
            counted_ip: None,
            log: None,
            lanes: Lanes::default(),
        }
    }

    /// A client refused before its upgrade began (the proxy is full, or its IP has too many
    /// connections): no access log line, as before any head was read.
    pub(super) fn refuse_at_accept(
        r: Reject,
        notes: &[Note],
        holds_slot: bool,
        t: &Time,
    ) -> Linger {
        let mut l = Linger::new(r.response().to_vec(), EndReason::Rejected, t);
        l.notes.extend(notes.iter().copied());
        l.holds_slot = holds_slot;
        l
    }

    /// The upgrade ended with `out` for the client (a refusal, or the backend's non-101 answer
    /// when `answered`); the client's per-IP count and log facts carry over.
    pub(super) fn after_upgrade(
        out: Vec<u8>,
        answered: bool,
        counted_ip: Option<IpAddr>,
        log: Option<Box<ConnLog>>,
        t: &Time,
    ) -> Linger {
        let reason = if answered {
            EndReason::Answered
        } else {
            EndReason::Rejected
        };
        let mut l = Linger::new(out, reason, t);
        l.close_backend = true;
        l.counted_ip = counted_ip;
        l.log = log;
        l
    }

    /// A forwarded request ended with `out` for the client: our answer (a refusal), or
    /// nothing after an answer that said `Connection: close`. Its access log line is written.
    pub(super) fn after_http(
        x: &super::http::Exchange,
        out: Vec<u8>,
        status: u16,
        t: &Time,
    ) -> Linger {
        let reason = if status == 0 {
            EndReason::Answered
        } else {
            EndReason::Rejected
        };
        let mut l = Linger::new(out, reason, t);
        l.close_backend = true;
        l.counted_ip = x.counted_ip;
        // What the exchange has in flight on the client (a completion driver's) still counts;
        // the backend socket closes.
        l.lanes = x.lanes;
        l.lanes.drop_side(Side::Backend);
        l
    }

    pub(super) fn handle(&mut self, ev: Event) {
        match ev {
            Event::Ready {
                side: Side::Client, ..
            } => self.ready.edge(ev, false),
            // Its backend is already closed.
            Event::Ready {
                side: Side::Backend,
                ..
            } => {}
            Event::Timer(due) => self.done |= due == self.armed,
            Event::Resume => {}
            Event::Drain => self.done = true,
            // Already closing.
            Event::Draining => {}
        }
    }

    pub(super) fn poll(&mut self, scratch: usize) -> Step {
        if let Some(n) = self.notes.pop_front() {
            return Step::Note(n);
        }
        if self.close_backend {
            self.close_backend = false;
            return Step::CloseBackend;
        }
        if self.armed == 0 {
            self.armed = self.until;
            return Step::Arm(self.until);
        }
        if self.done {
            return Step::End(End {
                reason: self.reason,
                counted_ip: self.counted_ip.take(),
                holds_slot: self.holds_slot,
                backend_id: u16::MAX,
                log: self.log.take(),
            });
        }
        let writing = self.lanes.busy(Side::Client, false);
        let op = if self.pos < self.out.len() {
            if !self.ready.client_writable || writing {
                return Step::Wait;
            }
            IoOp::Write {
                side: Side::Client,
                src: Src::Held,
            }
        } else if !self.shut {
            if writing {
                return Step::Wait;
            }
            self.shut = true;
            IoOp::Shutdown { side: Side::Client }
        } else if self.ready.client_readable && !self.lanes.busy(Side::Client, true) {
            // Discard what the client still sends until it closes.
            IoOp::Read {
                side: Side::Client,
                max: scratch,
            }
        } else {
            return Step::Wait;
        };
        self.lanes.start(op);
        Step::Io(op)
    }

    pub(super) fn complete_io(&mut self, op: IoOp, res: io::Result<usize>) {
        if !self.lanes.busy(op.side(), op.reads()) {
            return; // abandoned with the backend socket
        }
        self.lanes.end(op);
        let blocked = |e: &io::Error| e.kind() == io::ErrorKind::WouldBlock;
        let retry = |e: &io::Error| e.kind() == io::ErrorKind::Interrupted;
        match (op, res) {
            (IoOp::Write { .. }, Ok(n)) => self.pos += n,
            (IoOp::Read { .. }, Ok(0)) => self.done = true,
            (IoOp::Read { .. }, Ok(_)) => {}
            (IoOp::Write { .. } | IoOp::Read { .. }, Err(e)) if blocked(&e) => {
                self.ready.blocked(&op)
            }
            (IoOp::Write { .. } | IoOp::Read { .. }, Err(e)) if retry(&e) => {}
            (IoOp::Write { .. } | IoOp::Read { .. }, Err(_)) => self.done = true,
            // FIN sent (or the client is gone, which the read will tell).
            (
                IoOp::Shutdown { .. }
                | IoOp::Queued { .. }
                | IoOp::SpliceIn { .. }
                | IoOp::SpliceOut { .. }
                | IoOp::Recv { .. }
                | IoOp::StopRecv { .. },
                _,
            ) => {}
        }
    }

    /// Bytes for the `Write` in flight.
    pub(super) fn out_bytes(&self) -> &[u8] {
        &self.out[self.pos.min(self.out.len())..]
    }
}
