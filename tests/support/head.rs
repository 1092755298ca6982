//! HTTP heads: building the upgrade request and the backend's 101, reading a head off a socket,
//! looking into it, and checking the proxy's own refusals.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::STEP;

/// The RFC 6455 sample key; 16 bytes once decoded.
pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// `Sec-WebSocket-Accept` for [`KEY`].
pub const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

// ---------------------------------------------------------------------------------------------
// Building heads
// ---------------------------------------------------------------------------------------------

/// A valid upgrade request for `path` with `Host: localhost`, plus `extra` header lines.
pub fn upgrade_request(path: &str, extra: &[&str]) -> Vec<u8> {
    let mut s = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n"
    );
    for line in extra {
        s.push_str(line);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

/// A valid 101 answering the request head `request` (its Sec-WebSocket-Key).
pub fn response_101(request: &[u8]) -> Vec<u8> {
    response_101_with(request, &[])
}

/// [`response_101`] with `extra` header lines after the standard ones.
pub fn response_101_with(request: &[u8], extra: &[&str]) -> Vec<u8> {
    let key = header(request, "sec-websocket-key").unwrap_or_default();
    let mut s = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n",
        derive_accept_key(key.as_bytes())
    );
    for line in extra {
        s.push_str(line);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

// ---------------------------------------------------------------------------------------------
// Looking into heads
// ---------------------------------------------------------------------------------------------

/// Header lines of a head (after the first line) as (name, value), values trimmed.
/// Splits on CRLF only; use [`assert_crlf_only`] first when that matters.
pub fn headers(head: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(head);
    text.split("\r\n")
        .skip(1)
        .filter(|l| !l.is_empty())
        .map(|l| match l.split_once(':') {
            Some((k, v)) => (k.to_owned(), v.trim().to_owned()),
            None => (l.to_owned(), String::new()),
        })
        .collect()
}

/// The first value of header `name` (case-insensitive).
pub fn header(head: &[u8], name: &str) -> Option<String> {
    headers(head)
        .into_iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

/// Every value of header `name` (case-insensitive).
pub fn header_all(head: &[u8], name: &str) -> Vec<String> {
    headers(head)
        .into_iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
        .collect()
}

/// The first line, without CRLF.
pub fn first_line(head: &[u8]) -> String {
    let text = String::from_utf8_lossy(head);
    text.split("\r\n").next().unwrap_or_default().to_owned()
}

/// The status code of a response head, if its first line is `HTTP/1.1 NNN ...`.
pub fn status(resp: &[u8]) -> Option<u16> {
    let line = first_line(resp);
    let mut parts = line.splitn(3, ' ');
    if parts.next() != Some("HTTP/1.1") {
        return None;
    }
    parts.next()?.parse().ok()
}

/// Asserts that `resp` is a response with status `want`; the message shows what came instead.
#[track_caller]
pub fn assert_status(resp: &[u8], want: u16, what: &str) {
    assert_eq!(
        status(resp),
        Some(want),
        "{what}: got {:?}",
        String::from_utf8_lossy(&resp[..resp.len().min(300)])
    );
}

/// Where the first bare LF (one without a CR before it) is.
fn bare_lf(head: &[u8]) -> Option<usize> {
    head.iter()
        .enumerate()
        .position(|(i, &b)| b == b'\n' && (i == 0 || head[i - 1] != b'\r'))
}

/// Every `\n` is preceded by `\r`, and the head ends with an empty line.
pub fn assert_crlf_only(head: &[u8]) {
    if let Some(i) = bare_lf(head) {
        panic!(
            "bare LF at offset {i} in head {:?}",
            String::from_utf8_lossy(head)
        );
    }
    assert!(
        head.ends_with(b"\r\n\r\n"),
        "head does not end with CRLF CRLF: {:?}",
        String::from_utf8_lossy(head)
    );
}

/// Checks one of the proxy's own refusals: status `want`, a terminated head, CRLF only,
/// `Connection: close`.
pub fn check_refusal(resp: &[u8], want: u16) -> Result<(), String> {
    let text = String::from_utf8_lossy(resp);
    if status(resp) != Some(want) {
        return Err(format!("expected {want}, got {text:?}"));
    }
    let Some(end) = find_head_end(resp) else {
        return Err(format!("answer head not terminated: {text:?}"));
    };
    let head = &resp[..end];
    if bare_lf(head).is_some() {
        return Err(format!("bare LF in the answer: {text:?}"));
    }
    match header(head, "connection") {
        Some(c) if c.eq_ignore_ascii_case("close") => Ok(()),
        _ => Err(format!("no `Connection: close` in {text:?}")),
    }
}

/// The offset just past the first CRLF CRLF.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

// ---------------------------------------------------------------------------------------------
// Reading heads
// ---------------------------------------------------------------------------------------------

/// Reads until CRLF CRLF; returns (head including the blank line, bytes already read past it).
pub async fn try_read_head(
    stream: &mut (impl AsyncRead + Unpin),
    limit: usize,
) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = find_head_end(&buf) {
            let rest = buf.split_off(end);
            return Ok((buf, rest));
        }
        if buf.len() > limit {
            return Err(io::Error::other(format!("head larger than {limit} bytes")));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "EOF after {} bytes of head: {:?}",
                    buf.len(),
                    String::from_utf8_lossy(&buf)
                ),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// [`try_read_head`] with a [`STEP`] deadline; fails the test on error.
pub async fn read_head(stream: &mut (impl AsyncRead + Unpin)) -> (Vec<u8>, Vec<u8>) {
    match tokio::time::timeout(STEP, try_read_head(stream, 1 << 20)).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => panic!("reading a head: {e}"),
        Err(_) => panic!("no complete head within {STEP:?}"),
    }
}

/// Blocking twins: heads read off std sockets, within the socket's read timeout.
pub mod blocking {
    use std::io::{self, Read};

    /// Reads one head (through `\r\n\r\n`) byte by byte, so nothing after it is consumed.
    pub fn try_read_head(s: &mut impl Read) -> io::Result<Vec<u8>> {
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if s.read(&mut b)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            head.push(b[0]);
        }
        Ok(head)
    }

    /// [`try_read_head`]; fails the test on error.
    pub fn read_head(s: &mut impl Read) -> Vec<u8> {
        try_read_head(s).unwrap_or_else(|e| panic!("reading a head: {e}"))
    }
}
