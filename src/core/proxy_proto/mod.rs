//! PROXY protocol v1 (text) and v2 (binary) headers: a resumable parser and both encoders.
//!
//! A load balancer in front of wsplice (HAProxy, an AWS NLB, another wsplice) prepends one header
//! to the TCP stream that names the real client; the HTTP request head follows it directly.
//! Spec: <https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt>.
//!
//! ```text
//! v1: "PROXY TCP4 192.0.2.1 198.51.100.2 51000 443\r\n"              (at most 107 bytes)
//! v2: \r\n\r\n\0\r\nQUIT\n | ver<<4|cmd | fam<<4|proto | len (BE u16) | addresses | TLVs
//!     └──────── 12-byte signature ───┘   0x21 = v2 PROXY  0x11 = TCP/IPv4
//! ```
//!
//! [`parse`] is resumable like httparse: call it again with the grown buffer after
//! [`ProxyParse::Incomplete`]; it returns `Incomplete` exactly as long as more bytes could still
//! make a valid header, and an error as soon as none could (or the line/length cap is passed).
//! It never reads past the header: `header_len` bytes belong to it, the rest is the request.
//!
//! ```
//! use wsplice::core::proxy_proto::{parse, ProxyParse};
//! let buf = b"PROXY TCP4 192.0.2.1 198.51.100.2 51000 443\r\nGET / HTTP/1.1\r\n";
//! match parse(buf) {
//!     Ok(ProxyParse::Done { header_len, source, .. }) => {
//!         assert_eq!(source, Some("192.0.2.1:51000".parse().expect("address")));
//!         assert!(buf[header_len..].starts_with(b"GET "));
//!     }
//!     other => panic!("{other:?}"),
//! }
//! assert_eq!(parse(b"PROXY TCP4 192.0"), Ok(ProxyParse::Incomplete));
//! ```

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// The longest v1 line the spec allows, CRLF included
/// (`PROXY UNKNOWN` + two full IPv6 addresses + two 5-digit ports).
pub const V1_MAX_LEN: usize = 107;
/// The longest v2 header accepted: the 16-byte fixed part plus `len`. The spec's own worst case
/// without TLVs is 16 + 216 (AF_UNIX) = 232 bytes (it advises a 536-byte buffer); the rest leaves
/// room for TLVs (AWS VPC endpoint ids, SSL info, NOOP padding).
pub const V2_MAX_LEN: usize = 4096;
/// The v2 signature, chosen so that no valid v1 line or HTTP request starts with it.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

const V1_PREFIX: &[u8] = b"PROXY ";
const V2_FIXED_LEN: usize = 16;

/// The outcome of [`parse`] on a buffer that does not (yet) fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyParse {
    /// Every byte so far fits a valid header; read more and call [`parse`] again.
    Incomplete,
    /// A whole header: the first `header_len` bytes of the buffer. `source`/`dest` are `None`
    /// for v1 `UNKNOWN`, v2 `LOCAL` and v2 `PROXY` with `AF_UNSPEC` (use the socket's own
    /// addresses then).
    Done {
        header_len: usize,
        source: Option<SocketAddr>,
        dest: Option<SocketAddr>,
    },
}

/// Why the bytes cannot be a PROXY header. None of these is retryable on the same connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProxyError {
    /// The first bytes match neither the v1 (`"PROXY "`) nor the v2 signature.
    NotProxy,
    /// A PROXY signature followed by bytes the spec does not allow.
    Malformed,
    /// v1: no CRLF within 107 bytes; v2: declared length beyond [`V2_MAX_LEN`].
    TooLong,
    /// A well-formed v2 `PROXY` header for a family wsplice does not carry (AF_UNIX, datagrams).
    Unsupported,
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProxyError::NotProxy => "no PROXY protocol header",
            ProxyError::Malformed => "malformed PROXY protocol header",
            ProxyError::TooLong => "PROXY protocol header too long",
            ProxyError::Unsupported => "unsupported PROXY protocol address family",
        })
    }
}

impl std::error::Error for ProxyError {}

/// Parses a PROXY v1 or v2 header at the start of `buf` (which may be incomplete).
///
/// An empty buffer, or any proper prefix of a valid header, is [`ProxyParse::Incomplete`].
pub fn parse(buf: &[u8]) -> Result<ProxyParse, ProxyError> {
    match buf.first() {
        None => Ok(ProxyParse::Incomplete),
        Some(b'P') => parse_v1(buf),
        Some(b'\r') => parse_v2(buf),
        Some(_) => Err(ProxyError::NotProxy),
    }
}

/// Appends a v1 header. Two IPv4 ends give `TCP4`; otherwise `TCP6`, with an IPv4 end written
/// as its v4-mapped IPv6 address (`::ffff:a.b.c.d`), as the spec requires one family per line.
pub fn encode_v1(out: &mut Vec<u8>, source: SocketAddr, dest: SocketAddr) {
    use std::io::Write;
    // Writing into a Vec cannot fail.
    let _ = match (source, dest) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => write!(
            out,
            "PROXY TCP4 {} {} {} {}\r\n",
            s.ip(),
            d.ip(),
            s.port(),
            d.port()
        ),
        _ => write!(
            out,
            "PROXY TCP6 {} {} {} {}\r\n",
            v6(source.ip()),
            v6(dest.ip()),
            source.port(),
            dest.port()
        ),
    };
}

/// Appends a v2 `PROXY` header over `STREAM` without TLVs (28 bytes for IPv4, 52 for IPv6).
/// Mixed families are written as `AF_INET6` with v4-mapped addresses, like [`encode_v1`].
pub fn encode_v2(out: &mut Vec<u8>, source: SocketAddr, dest: SocketAddr) {
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(0x21); // version 2, PROXY
    match (source, dest) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            out.push(0x11); // AF_INET, STREAM
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
        }
        _ => {
            out.push(0x21); // AF_INET6, STREAM
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(source.ip()).octets());
            out.extend_from_slice(&v6(dest.ip()).octets());
        }
    }
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&dest.port().to_be_bytes());
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

// ---------------------------------------------------------------------------------------------
// v1

fn parse_v1(buf: &[u8]) -> Result<ProxyParse, ProxyError> {
    let sig = buf.len().min(V1_PREFIX.len());
    if buf[..sig] != V1_PREFIX[..sig] {
        return Err(ProxyError::NotProxy);
    }
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    // The first CR or LF ends the line; anything but CRLF there is malformed.
    match window.iter().position(|&b| b == b'\r' || b == b'\n') {
        Some(i) if window[i] == b'\n' => Err(ProxyError::Malformed),
        Some(i) => match window.get(i + 1) {
            Some(b'\n') => {
                let addrs = v1_line(&window[..i], true)?;
                Ok(ProxyParse::Done {
                    header_len: i + 2,
                    source: addrs.map(|(s, _)| s),
                    dest: addrs.map(|(_, d)| d),
                })
            }
            Some(_) => Err(ProxyError::Malformed),
            None => v1_partial(&window[..i], buf.len()),
        },
        None => v1_partial(window, buf.len()),
    }
}

/// No CRLF yet: junk so far is Malformed (whatever follows), else the length cap decides.
fn v1_partial(line: &[u8], buf_len: usize) -> Result<ProxyParse, ProxyError> {
    v1_line(line, false)?;
    if buf_len >= V1_MAX_LEN {
        // The CRLF would end past byte 107 (with a CR as byte 107, its LF would be byte 108).
        Err(ProxyError::TooLong)
    } else {
        Ok(ProxyParse::Incomplete)
    }
}

/// Checks a v1 line without its CRLF. `complete`: the CRLF followed; otherwise the last field
/// may be cut short and only has to be a plausible prefix. Returns the addresses of a complete
/// TCP4/TCP6 line; `None` for UNKNOWN or a plausible partial line.
fn v1_line(line: &[u8], complete: bool) -> Result<Option<(SocketAddr, SocketAddr)>, ProxyError> {
    let Some(rest) = line.strip_prefix(V1_PREFIX) else {
        // Only reachable with a line shorter than the prefix, which the caller matched.
        return if complete {
            Err(ProxyError::Malformed)
        } else {
            Ok(None)
        };
    };
    let mut fields = rest.split(|&b| b == b' ').peekable();
    let mut v4 = true;
    let (mut src, mut dst, mut sport, mut dport) = (None, None, None, None);
    let mut n = 0;
    while let Some(field) = fields.next() {
        let partial = !complete && fields.peek().is_none();
        match (n, partial) {
            (0, true) => {
                let ok = [&b"TCP4"[..], b"TCP6", b"UNKNOWN"]
                    .iter()
                    .any(|p| p.starts_with(field));
                return if ok {
                    Ok(None)
                } else {
                    Err(ProxyError::Malformed)
                };
            }
            (0, false) => match field {
                b"TCP4" => v4 = true,
                b"TCP6" => v4 = false,
                // The spec: the receiver ignores whatever follows UNKNOWN up to the CRLF.
                b"UNKNOWN" => return Ok(None),
                _ => return Err(ProxyError::Malformed),
            },
            (1 | 2, true) => {
                return if addr_prefix(field, v4) {
                    Ok(None)
                } else {
                    Err(ProxyError::Malformed)
                }
            }
            (1, false) => src = Some(ip(field, v4)?),
            (2, false) => dst = Some(ip(field, v4)?),
            (3 | 4, true) => {
                return if port_prefix(field) {
                    Ok(None)
                } else {
                    Err(ProxyError::Malformed)
                }
            }
            (3, false) => sport = Some(port(field)?),
            (4, false) => dport = Some(port(field)?),
            // A sixth field, even an empty one after a trailing space.
            _ => return Err(ProxyError::Malformed),
        }
        n += 1;
    }
    match (src, dst, sport, dport) {
        (Some(s), Some(d), Some(sp), Some(dp)) => {
            Ok(Some((SocketAddr::new(s, sp), SocketAddr::new(d, dp))))
        }
        // A complete line that stopped early ("PROXY TCP4 1.2.3.4\r\n").
        _ if complete => Err(ProxyError::Malformed),
        // A partial line that ends in a space: the next field has not started yet.
        _ => Ok(None),
    }
}

fn ip(field: &[u8], v4: bool) -> Result<IpAddr, ProxyError> {
    // std's parsers are strict: no leading zeros or spare dots in IPv4, no zone ids, no spaces.
    let s = std::str::from_utf8(field).map_err(|_| ProxyError::Malformed)?;
    let ip = if v4 {
        s.parse::<Ipv4Addr>().map(IpAddr::V4)
    } else {
        s.parse::<Ipv6Addr>().map(IpAddr::V6)
    };
    ip.map_err(|_| ProxyError::Malformed)
}

/// Could `field` grow into an address of the family? (A cheap character/length check; the full
/// parse happens once the field is complete.)
fn addr_prefix(field: &[u8], v4: bool) -> bool {
    if v4 {
        field.len() <= 15 && field.iter().all(|&b| b.is_ascii_digit() || b == b'.')
    } else {
        // "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255" is the longest form: 45 bytes.
        field.len() <= 45
            && field
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
    }
}

/// 0..=65535 in canonical decimal: digits only, no sign, no leading zero.
fn port(field: &[u8]) -> Result<u16, ProxyError> {
    if field.is_empty() || !port_prefix(field) {
        return Err(ProxyError::Malformed);
    }
    let mut v: u32 = 0;
    for &b in field {
        v = v * 10 + u32::from(b - b'0');
    }
    u16::try_from(v).map_err(|_| ProxyError::Malformed)
}

fn port_prefix(field: &[u8]) -> bool {
    field.len() <= 5
        && field.iter().all(u8::is_ascii_digit)
        && !(field.len() > 1 && field[0] == b'0')
        && (field.len() < 5 || field <= &b"65535"[..])
}

// ---------------------------------------------------------------------------------------------
// v2

fn parse_v2(buf: &[u8]) -> Result<ProxyParse, ProxyError> {
    let sig = buf.len().min(V2_SIGNATURE.len());
    if buf[..sig] != V2_SIGNATURE[..sig] {
        return Err(ProxyError::NotProxy);
    }
    let local = match buf.get(12) {
        None => return Ok(ProxyParse::Incomplete),
        // The spec: other versions and commands must be dropped.
        Some(0x20) => true,
        Some(0x21) => false,
        Some(_) => return Err(ProxyError::Malformed),
    };
    let Some(&fam) = buf.get(13) else {
        return Ok(ProxyParse::Incomplete);
    };
    // The family whose addresses we read, or None when addresses are not used.
    let family = if local {
        // LOCAL: the receiver ignores the family and the address block, whatever they are.
        None
    } else {
        match fam {
            // AF_UNSPEC: the spec's analogue of v1 UNKNOWN (a sender proxying a protocol it
            // cannot describe); the receiver may use the real endpoints, as HAProxy does.
            0x00 => None,
            0x11 => Some(Family::Inet),
            0x21 => Some(Family::Inet6),
            // AF_INET/AF_INET6 over DGRAM, AF_UNIX over STREAM/DGRAM: assigned, not ours.
            0x12 | 0x22 | 0x31 | 0x32 => return Err(ProxyError::Unsupported),
            // The spec: unassigned values must be dropped.
            _ => return Err(ProxyError::Malformed),
        }
    };
    let need = family.map_or(0, Family::block_len);
    let (Some(&hi), Some(&lo)) = (buf.get(14), buf.get(15)) else {
        return Ok(ProxyParse::Incomplete);
    };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    let total = V2_FIXED_LEN + len;
    if total > V2_MAX_LEN {
        return Err(ProxyError::TooLong);
    }
    if len < need {
        return Err(ProxyError::Malformed);
    }
    let Some(block) = buf.get(V2_FIXED_LEN..total) else {
        return Ok(ProxyParse::Incomplete);
    };
    let (addrs, tlvs) = block.split_at(need);
    let port = |i: usize| u16::from_be_bytes([addrs[i], addrs[i + 1]]);
    let (source, dest) = match family {
        Some(Family::Inet) => {
            let ip = |i: usize| Ipv4Addr::new(addrs[i], addrs[i + 1], addrs[i + 2], addrs[i + 3]);
            (
                SocketAddr::V4(SocketAddrV4::new(ip(0), port(8))),
                SocketAddr::V4(SocketAddrV4::new(ip(4), port(10))),
            )
        }
        Some(Family::Inet6) => {
            let ip = |i: usize| {
                let mut o = [0u8; 16];
                o.copy_from_slice(&addrs[i..i + 16]);
                Ipv6Addr::from(o)
            };
            (
                SocketAddr::V6(SocketAddrV6::new(ip(0), port(32), 0, 0)),
                SocketAddr::V6(SocketAddrV6::new(ip(16), port(34), 0, 0)),
            )
        }
        // LOCAL or AF_UNSPEC: the spec has the receiver ignore the whole block, so it is
        // skipped unread (it may hold addresses of a protocol we cannot name, not TLVs).
        None => return Ok(done_without_addrs(total)),
    };
    if !tlvs_well_formed(tlvs) {
        return Err(ProxyError::Malformed);
    }
    Ok(ProxyParse::Done {
        header_len: total,
        source: Some(source),
        dest: Some(dest),
    })
}

fn done_without_addrs(header_len: usize) -> ProxyParse {
    ProxyParse::Done {
        header_len,
        source: None,
        dest: None,
    }
}

#[derive(Clone, Copy)]
enum Family {
    Inet,
    Inet6,
}

impl Family {
    /// Two addresses and two ports.
    fn block_len(self) -> usize {
        match self {
            Family::Inet => 12,
            Family::Inet6 => 36,
        }
    }
}

/// TLVs are skipped, but their framing must add up exactly: a TLV running past the declared
/// length means the sender and we disagree about where the request starts.
fn tlvs_well_formed(mut tlvs: &[u8]) -> bool {
    while !tlvs.is_empty() {
        let [_, hi, lo, ref rest @ ..] = *tlvs else {
            return false;
        };
        let Some(next) = rest.get(usize::from(u16::from_be_bytes([hi, lo]))..) else {
            return false;
        };
        tlvs = next;
    }
    true
}

#[cfg(test)]
mod tests;
