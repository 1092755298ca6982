//! A connection handed to another process (binary upgrade): only an established relay goes,
//! between two operations; a handshake finishes here first, and a plain HTTP exchange or a
//! lingering refusal ends here.

use super::{Conn, ConnLog, Rare, Relaying, Time};
use crate::core::handshake::Settings;
use crate::core::relay::{Ctx, HeldBytes, Pipes, Relay, RelayState};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// The access log facts of a handed-over tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFacts {
    pub client: SocketAddr,
    /// The route's index in the table (the new process reads the same configuration).
    pub route: Option<usize>,
    pub backend: Option<SocketAddr>,
    pub status: u16,
    /// How long ago the connection was accepted.
    pub age: Duration,
    pub up: u64,
    pub down: u64,
}

/// An established tunnel's state, as handed to another process with its two sockets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handed {
    pub relay: RelayState,
    /// The client's address as the per-IP limiter counted it.
    pub counted_ip: Option<IpAddr>,
    /// Present when the old process kept access log facts.
    pub log: Option<LogFacts>,
}

/// What the worker gives back for a connection it handed over.
#[derive(Debug)]
pub struct Released {
    /// Per-backend active count to decrement (`u16::MAX`: none).
    pub backend_id: u16,
    /// Release this IP in the per-IP limiter.
    pub counted_ip: Option<IpAddr>,
}

impl<P> Conn<P> {
    /// True for an established relay between two operations: [`Conn::hand_over`] takes it.
    pub fn can_hand_over(&self) -> bool {
        matches!(self, Conn::Relay(r) if r.closed.is_none() && r.relay.can_hand_over())
    }

    /// A hand-over wants this connection: an established relay starts nothing more, so that
    /// what is in flight completes (see [`Relay::settle`]). True when this call began it and
    /// something is still in flight: the driver must cancel what is in flight on both
    /// sockets. False for any other connection.
    pub fn settle(&mut self) -> bool {
        match self {
            Conn::Relay(r) if r.closed.is_none() => r.relay.settle(),
            _ => false,
        }
    }

    /// The hand-over did not happen: a settled relay goes on. True when it was settled (then
    /// drive it).
    pub fn unsettle(&mut self) -> bool {
        match self {
            Conn::Relay(r) => r.relay.unsettle(),
            _ => false,
        }
    }

    /// Takes an established relay's state out (the connection is over here afterwards, with no
    /// [`super::Step::End`]: the worker gives back what [`Released`] says). None for any other
    /// connection. Pipes holding bytes come back beside it, for the driver to read out into the
    /// state's pending bytes.
    pub fn hand_over(
        &mut self,
        cx: &mut Ctx<'_, impl Pipes<Pipe = P>>,
        t: &Time,
    ) -> Option<(Handed, HeldBytes<P>, Released)> {
        if !self.can_hand_over() {
            return None;
        }
        let Conn::Relay(mut r) = std::mem::replace(self, Conn::Ended) else {
            return None;
        };
        let (relay, pipes) = r.relay.hand_over(t.tick, cx.stats);
        let log = r.rare.take().and_then(|r| r.log).map(|l| LogFacts {
            client: l.client,
            route: l.route,
            backend: l.backend,
            status: l.status,
            age: t.now.saturating_duration_since(l.started),
            up: l.up,
            down: l.down,
        });
        let released = Released {
            backend_id: r.backend_id,
            counted_ip: r.counted_ip,
        };
        let handed = Handed {
            relay,
            counted_ip: r.counted_ip.take(),
            log,
        };
        Some((handed, pipes, released))
    }

    /// A relay continuing a handed-over tunnel at `t`. `counted_ip`: the per-IP limiter of this
    /// process counted the client; `log`: keep access log facts (under `settings`).
    pub fn taken_over(
        h: Handed,
        splice_ok: bool,
        counted_ip: Option<IpAddr>,
        log: Option<Arc<Settings>>,
        cx: &mut Ctx<'_, impl Pipes<Pipe = P>>,
        t: &Time,
    ) -> Conn<P> {
        let log = match (log, h.log) {
            (Some(settings), Some(f)) => Some(Box::new(ConnLog {
                client: f.client,
                settings,
                route: f.route,
                backend: f.backend,
                status: f.status,
                started: t.now.checked_sub(f.age).unwrap_or(t.now),
                up: f.up,
                down: f.down,
            })),
            _ => None,
        };
        Conn::Relay(Relaying {
            relay: Relay::taken_over(h.relay, splice_ok, t.tick, cx.stats),
            armed: 0,
            backend_id: u16::MAX,
            counted_ip,
            closed: None,
            rare: Rare::new(log, None),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RelayMode;
    use crate::core::conn::Step;
    use crate::core::relay::tests::FakePipes;
    use crate::core::relay::{IoOp, RelayStats, Side, Src, Timeouts};
    use crate::core::timer::Clock;
    use std::time::Instant;

    fn time(now: Instant, clock: Clock) -> Time {
        Time {
            now,
            tick: clock.tick(now),
            clock,
        }
    }

    #[test]
    fn a_relay_goes_with_its_pending_bytes_and_resumes_writing_them_first() {
        let start = Instant::now();
        let t = time(start, Clock::new(start));
        let mut stats = RelayStats::default();
        let timeouts = Timeouts::new(Duration::from_secs(60), Duration::from_secs(5));
        let ip: IpAddr = "10.0.0.7".parse().expect("ip");
        let mut conn: Conn<u32> = Conn::Relay(Relaying {
            relay: Relay::new(
                b"101 and more".to_vec(),
                Vec::new(),
                true,
                timeouts,
                t.tick,
                &mut stats,
            ),
            armed: 0,
            backend_id: 3,
            counted_ip: Some(ip),
            closed: None,
            rare: None,
        });
        let (scratch, mut returned, mut pipes) = (vec![0u8; 64], Vec::new(), FakePipes::default());
        let mut cx = Ctx {
            scratch: &scratch,
            lent: None,
            lent_at: 0,
            lent_room: 0,
            returned: &mut returned,
            pipes: &mut pipes,
            stats: &mut stats,
            mode: RelayMode::Copy,
            threshold: 4096,
            completion: false,
            standing: false,
        };
        assert!(conn.can_hand_over());
        let (handed, held, released) = conn.hand_over(&mut cx, &t).expect("a relay goes");
        assert!(matches!(conn, Conn::Ended) && !conn.can_hand_over());
        assert!(held.iter().all(Option::is_none));
        assert_eq!((released.backend_id, released.counted_ip), (3, Some(ip)));
        assert_eq!(handed.counted_ip, Some(ip));
        assert_eq!(handed.relay.down.pending, b"101 and more");
        assert_eq!(handed.relay.timeouts, timeouts);

        // The other side: another clock, later.
        let later = start + Duration::from_secs(3);
        let t2 = time(later, Clock::new(later));
        let mut conn2: Conn<u32> = Conn::taken_over(handed, true, None, None, &mut cx, &t2);
        // The client side is read as for any relay; the backend is not read before the
        // pending bytes are out to the client.
        let mut step = conn2.poll(&mut cx, &t2);
        if let Step::Io(
            op @ IoOp::Read {
                side: Side::Client, ..
            },
        ) = step
        {
            let would_block = std::io::Error::from(std::io::ErrorKind::WouldBlock);
            conn2.complete_io(op, Err(would_block), &mut cx, &t2);
            step = conn2.poll(&mut cx, &t2);
        }
        assert!(
            matches!(
                step,
                Step::Io(IoOp::Write {
                    side: Side::Client,
                    src: Src::Held
                })
            ),
            "{step:?}"
        );
        let held = IoOp::Write {
            side: Side::Client,
            src: Src::Held,
        };
        assert_eq!(conn2.lent(held).0, b"101 and more");
    }
}
