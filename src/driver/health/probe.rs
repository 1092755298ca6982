//! One active check of one backend: a blocking TCP connect, HTTP GET or WebSocket upgrade with
//! a deadline, run on the checking thread's helpers (never on a worker's loop).

use crate::config::{CheckKind, HealthCheck};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The largest answer head a check reads.
const MAX_HEAD: usize = 8192;

/// Checks `addr`; `Err` says why it failed, for the log line.
pub fn check(
    addr: SocketAddr,
    c: &HealthCheck,
    host: &str,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| match e.kind() {
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
            format!("connect timed out after {timeout:?}")
        }
        _ => format!("connect failed: {e}"),
    })?;
    if c.kind == CheckKind::Tcp {
        return Ok(());
    }
    let _ = s.set_nodelay(true);
    let head = match c.kind {
        CheckKind::WebSocket => format!(
            "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: wsplice-health\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: d3NwbGljZS1oZWFsdGgtaw==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            c.path
        ),
        _ => format!(
            "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: wsplice-health\r\nConnection: close\r\n\r\n",
            c.path
        ),
    };
    let left = |what: &str| {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("no answer within {timeout:?} ({what})"))
    };
    s.set_write_timeout(Some(left("sending")?))
        .map_err(|e| e.to_string())?;
    s.write_all(head.as_bytes())
        .map_err(|e| format!("sending the check failed: {e}"))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        s.set_read_timeout(Some(left("reading")?))
            .map_err(|e| e.to_string())?;
        let n = match s.read(&mut chunk) {
            Ok(0) => return Err("the backend closed before its answer head".into()),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!("no answer within {timeout:?}"))
            }
            Err(e) => return Err(format!("reading the answer failed: {e}")),
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Response::new(&mut headers);
        match r.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                let status = r.code.unwrap_or(0);
                let want = c.expect_status;
                if status != want {
                    return Err(format!("answered {status}, expected {want}"));
                }
                if c.kind == CheckKind::WebSocket {
                    let upgrade = r.headers.iter().any(|h| {
                        h.name.eq_ignore_ascii_case("upgrade")
                            && h.value.trim_ascii().eq_ignore_ascii_case(b"websocket")
                    });
                    if !upgrade {
                        return Err("answered 101 without Upgrade: websocket".into());
                    }
                }
                return Ok(());
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) => {
                return Err(format!("answer head longer than {MAX_HEAD} bytes"))
            }
            Err(e) => return Err(format!("answer does not parse as HTTP ({e})")),
        }
    }
}
