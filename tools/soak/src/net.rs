//! Sockets: source addresses, connecting, resets, limits, and short error reasons used as tally
//! keys.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

pub type Ws = WebSocketStream<TcpStream>;

/// Raises the soft open-file limit to the hard limit; returns the soft limit after the change.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim = want;
            }
        }
    }
    lim.rlim_cur
}

/// Small buffers: thousands of mostly idle connections, and tungstenite allocates its read
/// buffer eagerly (128 KiB by default). Messages go up to 256 KiB, well under the cap.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(8192)
        .write_buffer_size(0)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20))
}

/// Source addresses handed out round-robin, so that N is not bounded by one address's
/// ephemeral ports.
#[derive(Debug)]
pub struct Sources {
    addrs: Vec<Ipv4Addr>,
    next: AtomicUsize,
}

impl Sources {
    /// Parses `127.0.0.2-127.0.0.40`, `127.0.0.5`, a comma list of either, or `none` (let the
    /// kernel choose).
    pub fn parse(spec: &str) -> Result<Sources, String> {
        let mut addrs = Vec::new();
        if spec != "none" {
            for part in spec.split(',').filter(|p| !p.is_empty()) {
                let (a, b) = part.split_once('-').unwrap_or((part, part));
                let a: Ipv4Addr = a.trim().parse().map_err(|_| format!("bad source {a:?}"))?;
                let b: Ipv4Addr = b.trim().parse().map_err(|_| format!("bad source {b:?}"))?;
                let (a, b) = (u32::from(a), u32::from(b));
                if b < a || b - a > 65535 {
                    return Err(format!("bad source range {part:?}"));
                }
                addrs.extend((a..=b).map(Ipv4Addr::from));
            }
        }
        Ok(Sources {
            addrs,
            next: AtomicUsize::new(0),
        })
    }

    fn pick(&self) -> Option<Ipv4Addr> {
        if self.addrs.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        Some(self.addrs[i % self.addrs.len()])
    }
}

/// One TCP connection from the next source address and a WebSocket client handshake
/// (tungstenite checks the 101 and `Sec-WebSocket-Accept`). The error is a tally key.
pub async fn connect(proxy: SocketAddr, sources: &Sources) -> Result<Ws, String> {
    let sock = TcpSocket::new_v4().map_err(|e| io_reason("socket", &e))?;
    if let Some(src) = sources.pick() {
        // Defer the port choice to connect(): the 4-tuple, not (addr, port), must be unique.
        set_bind_no_port(&sock);
        sock.bind(SocketAddr::new(IpAddr::V4(src), 0))
            .map_err(|e| io_reason("bind", &e))?;
    }
    let stream = sock
        .connect(proxy)
        .await
        .map_err(|e| io_reason("connect", &e))?;
    let _ = stream.set_nodelay(true);
    let url = format!("ws://{proxy}/soak");
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config()))
        .await
        .map_err(|e| ws_reason("handshake", &e))?;
    Ok(ws)
}

fn set_bind_no_port(sock: &TcpSocket) {
    let one: libc::c_int = 1;
    // SAFETY: a valid fd owned by `sock`; the option value is a c_int on our stack.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Drops the connection with a RST instead of a FIN (SO_LINGER 0), whatever is in flight.
pub fn reset(ws: Ws) {
    let _ = socket2::SockRef::from(ws.get_ref()).set_linger(Some(Duration::ZERO));
    drop(ws);
}

/// TCP half-close of our side (FIN), leaving the read side open.
pub fn shutdown_write(ws: &Ws) {
    let _ = socket2::SockRef::from(ws.get_ref()).shutdown(std::net::Shutdown::Write);
}

pub fn io_reason(op: &str, e: &io::Error) -> String {
    let name = match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "ECONNREFUSED".into(),
        Some(libc::ECONNRESET) => "ECONNRESET".into(),
        Some(libc::ETIMEDOUT) => "ETIMEDOUT".into(),
        Some(libc::EMFILE) => "EMFILE".into(),
        Some(libc::ENFILE) => "ENFILE".into(),
        Some(libc::EADDRINUSE) => "EADDRINUSE".into(),
        Some(libc::EADDRNOTAVAIL) => "EADDRNOTAVAIL".into(),
        Some(libc::EPIPE) => "EPIPE".into(),
        Some(libc::ENOBUFS) => "ENOBUFS".into(),
        Some(other) => format!("errno {other}"),
        None => format!("{:?}", e.kind()),
    };
    format!("{op}: {name}")
}

pub fn ws_reason(op: &str, e: &tokio_tungstenite::tungstenite::Error) -> String {
    use tokio_tungstenite::tungstenite::Error as E;
    match e {
        E::Io(io) => io_reason(op, io),
        E::Http(resp) => format!("{op}: HTTP {}", resp.status().as_u16()),
        E::Protocol(p) => format!("{op}: protocol: {p}"),
        E::ConnectionClosed | E::AlreadyClosed => format!("{op}: closed"),
        E::Capacity(c) => format!("{op}: capacity: {c}"),
        other => format!("{op}: {other}"),
    }
}
