//! The messages of a binary upgrade on its `SOCK_SEQPACKET` socket (one message per packet,
//! descriptors attached with `SCM_RIGHTS`). A private format between two wsplice builds: the
//! first byte names the message, the version byte after it must match.
//!
//! ```text
//!   old ──L listeners (configured address each; one socket per descriptor)──▶ new
//!   old ◀─R ready (pid)───────────── or ─────────F failed (why)───────────── new
//!   old ──T tunnels (state each; client and backend socket per tunnel)──▶ new   (repeated)
//!   old ──D done (tunnels handed over in all)──▶ new
//! ```

use crate::core::conn::{Handed, LogFacts};
use crate::core::relay::{DirState, RelayState, Timeouts};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Bumped whenever the layout below changes: an old process never hands tunnels to a new one
/// that would read them differently (the new one refuses with a message saying so).
pub const VERSION: u8 = 1;

/// One message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// The listening sockets follow as descriptors, one per configured address listed, then
    /// the admin listener's if there is one.
    Listeners {
        addrs: Vec<SocketAddr>,
        admin: Option<SocketAddr>,
    },
    /// The new process serves; its pid.
    Ready(u32),
    /// The new process could not start.
    Failed(String),
    /// Tunnels; two descriptors each (client, backend), in order.
    Tunnels(Vec<TunnelState>),
    /// Everything is handed over: this many tunnels in all.
    Done(u64),
}

/// One tunnel's state as it travels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelState {
    /// The route's id ([`crate::core::route::RouteEntry::id`]) and the backend the tunnel is
    /// connected to (per-backend counts).
    pub route: u32,
    pub backend: Option<SocketAddr>,
    pub handed: Handed,
}

fn bad(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("upgrade message: {what}"),
    )
}

/// Encodes `m`.
pub fn encode(m: &Msg) -> Vec<u8> {
    let mut w = Vec::with_capacity(64);
    match m {
        Msg::Listeners { addrs, admin } => {
            w.extend([b'L', VERSION]);
            w.extend((addrs.len() as u32).to_le_bytes());
            for a in addrs {
                put_addr(&mut w, Some(*a));
            }
            put_addr(&mut w, *admin);
        }
        Msg::Ready(pid) => {
            w.extend([b'R', VERSION]);
            w.extend(pid.to_le_bytes());
        }
        Msg::Failed(why) => {
            w.extend([b'F', VERSION]);
            w.extend(why.as_bytes());
        }
        Msg::Tunnels(ts) => {
            w.extend([b'T', VERSION]);
            w.extend((ts.len() as u32).to_le_bytes());
            for t in ts {
                put_tunnel(&mut w, t);
            }
        }
        Msg::Done(n) => {
            w.extend([b'D', VERSION]);
            w.extend(n.to_le_bytes());
        }
    }
    w
}

/// Decodes one message.
pub fn decode(b: &[u8]) -> io::Result<Msg> {
    let mut r = Reader { b, at: 0 };
    let kind = r.u8()?;
    let version = r.u8()?;
    if version != VERSION {
        return Err(bad(&format!(
            "format version {version}, this build reads {VERSION} (upgrade between builds that share the hand-over format, or restart)"
        )));
    }
    let m = match kind {
        b'L' => {
            let n = r.u32()? as usize;
            let mut addrs = Vec::with_capacity(n.min(1024));
            for _ in 0..n {
                addrs.push(
                    r.addr()?
                        .ok_or_else(|| bad("listener without an address"))?,
                );
            }
            Msg::Listeners {
                addrs,
                admin: r.addr()?,
            }
        }
        b'R' => Msg::Ready(r.u32()?),
        b'F' => Msg::Failed(String::from_utf8_lossy(&b[2..]).into_owned()),
        b'T' => {
            let n = r.u32()? as usize;
            let mut ts = Vec::with_capacity(n.min(1024));
            for _ in 0..n {
                ts.push(r.tunnel()?);
            }
            Msg::Tunnels(ts)
        }
        b'D' => Msg::Done(r.u64()?),
        k => return Err(bad(&format!("unknown kind {k}"))),
    };
    if r.at != b.len() && kind != b'F' {
        return Err(bad("trailing bytes"));
    }
    Ok(m)
}

fn put_addr(w: &mut Vec<u8>, a: Option<SocketAddr>) {
    match a {
        None => w.push(0),
        Some(a) => {
            put_ip(w, Some(a.ip()));
            w.extend(a.port().to_le_bytes());
        }
    }
}

fn put_ip(w: &mut Vec<u8>, ip: Option<IpAddr>) {
    match ip {
        None => w.push(0),
        Some(IpAddr::V4(v4)) => {
            w.push(4);
            w.extend(v4.octets());
        }
        Some(IpAddr::V6(v6)) => {
            w.push(6);
            w.extend(v6.octets());
        }
    }
}

fn put_dir(w: &mut Vec<u8>, d: &DirState) {
    w.push(d.eof as u8 | (d.shut as u8) << 1 | (d.hup as u8) << 2);
    w.extend((d.pending.len() as u32).to_le_bytes());
    w.extend(&d.pending);
}

fn put_tunnel(w: &mut Vec<u8>, t: &TunnelState) {
    w.extend(t.route.to_le_bytes());
    put_addr(w, t.backend);
    let h = &t.handed;
    put_dir(w, &h.relay.up);
    put_dir(w, &h.relay.down);
    w.extend(h.relay.idle_for.to_le_bytes());
    w.extend(
        h.relay
            .half_closed_for
            .map_or(u32::MAX, |t| t.min(u32::MAX - 1))
            .to_le_bytes(),
    );
    w.extend(h.relay.timeouts.idle.to_le_bytes());
    w.extend(h.relay.timeouts.half_close.to_le_bytes());
    put_ip(w, h.counted_ip);
    match &h.log {
        None => w.push(0),
        Some(l) => {
            w.push(1);
            put_addr(w, Some(l.client));
            w.extend(l.route.map_or(u32::MAX, |r| r as u32).to_le_bytes());
            put_addr(w, l.backend);
            w.extend(l.status.to_le_bytes());
            w.extend((l.age.as_millis() as u64).to_le_bytes());
            w.extend(l.up.to_le_bytes());
            w.extend(l.down.to_le_bytes());
        }
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> io::Result<&[u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len());
        let end = end.ok_or_else(|| bad("cut short"))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> io::Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> io::Result<u16> {
        let mut a = [0u8; 2];
        a.copy_from_slice(self.take(2)?);
        Ok(u16::from_le_bytes(a))
    }
    fn u32(&mut self) -> io::Result<u32> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }
    fn u64(&mut self) -> io::Result<u64> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn ip(&mut self) -> io::Result<Option<IpAddr>> {
        Ok(match self.u8()? {
            0 => None,
            4 => {
                let mut a = [0u8; 4];
                a.copy_from_slice(self.take(4)?);
                Some(IpAddr::from(a))
            }
            6 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(self.take(16)?);
                Some(IpAddr::from(a))
            }
            k => return Err(bad(&format!("address kind {k}"))),
        })
    }
    fn addr(&mut self) -> io::Result<Option<SocketAddr>> {
        Ok(match self.ip()? {
            None => None,
            Some(ip) => Some(SocketAddr::new(ip, self.u16()?)),
        })
    }
    fn dir(&mut self) -> io::Result<DirState> {
        let f = self.u8()?;
        let n = self.u32()? as usize;
        Ok(DirState {
            eof: f & 1 != 0,
            shut: f & 2 != 0,
            hup: f & 4 != 0,
            pending: self.take(n)?.to_vec(),
        })
    }
    fn tunnel(&mut self) -> io::Result<TunnelState> {
        let route = self.u32()?;
        let backend = self.addr()?;
        let up = self.dir()?;
        let down = self.dir()?;
        let idle_for = self.u32()?;
        let half = self.u32()?;
        let timeouts = Timeouts {
            idle: self.u32()?,
            half_close: self.u32()?,
        };
        let counted_ip = self.ip()?;
        let log = match self.u8()? {
            0 => None,
            1 => Some(LogFacts {
                client: self.addr()?.ok_or_else(|| bad("log without a client"))?,
                route: match self.u32()? {
                    u32::MAX => None,
                    r => Some(r as usize),
                },
                backend: self.addr()?,
                status: self.u16()?,
                age: Duration::from_millis(self.u64()?),
                up: self.u64()?,
                down: self.u64()?,
            }),
            k => return Err(bad(&format!("log kind {k}"))),
        };
        Ok(TunnelState {
            route,
            backend,
            handed: Handed {
                relay: RelayState {
                    up,
                    down,
                    idle_for,
                    half_closed_for: (half != u32::MAX).then_some(half),
                    timeouts,
                },
                counted_ip,
                log,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tunnel(i: u8) -> TunnelState {
        TunnelState {
            route: 7,
            backend: Some(SocketAddr::from(([127, 0, 0, i], 9000))),
            handed: Handed {
                relay: RelayState {
                    up: DirState {
                        pending: vec![i; 3],
                        eof: true,
                        shut: false,
                        hup: true,
                    },
                    down: DirState::default(),
                    idle_for: 17,
                    half_closed_for: Some(4),
                    timeouts: Timeouts {
                        idle: 600,
                        half_close: 30,
                    },
                },
                counted_ip: Some("::1".parse().expect("ip")),
                log: Some(LogFacts {
                    client: "[::1]:5000".parse().expect("addr"),
                    route: Some(2),
                    backend: None,
                    status: 101,
                    age: Duration::from_millis(1234),
                    up: 10,
                    down: 20,
                }),
            },
        }
    }

    #[test]
    fn every_message_reads_back_as_written() {
        let all = [
            Msg::Listeners {
                addrs: vec![
                    "127.0.0.1:0".parse().expect("a"),
                    "[::]:443".parse().expect("a"),
                ],
                admin: Some("127.0.0.1:9090".parse().expect("a")),
            },
            Msg::Listeners {
                addrs: Vec::new(),
                admin: None,
            },
            Msg::Ready(4242),
            Msg::Failed("cannot listen: no".into()),
            Msg::Tunnels(vec![tunnel(1), tunnel(2)]),
            Msg::Done(1000),
        ];
        for m in all {
            assert_eq!(decode(&encode(&m)).expect("decode"), m);
        }
    }

    #[test]
    fn cut_wrong_version_and_unknown_messages_are_refused() {
        let full = encode(&Msg::Tunnels(vec![tunnel(3)]));
        for cut in 0..full.len() {
            assert!(decode(&full[..cut]).is_err(), "cut at {cut}");
        }
        let mut v = full.clone();
        v[1] = VERSION + 1;
        let e = decode(&v).expect_err("version");
        assert!(e.to_string().contains("format version"), "{e}");
        assert!(decode(b"Z\x01").is_err());
    }
}
