//! The uwsgi request packet (nginx's `uwsgi_pass`): a 4-byte header and the CGI-style variables
//! of the request, each as a little-endian length and bytes. The body follows raw; the uWSGI
//! server answers with a plain HTTP response.
//!
//! ```text
//!   u8 modifier1 = 0 | u16 LE size of the vars | u8 modifier2 = 0
//!   { u16 LE key length, key, u16 LE value length, value }*
//! ```
//! Spec: <https://uwsgi-docs.readthedocs.io/en/latest/Protocol.html>.

use crate::core::head::RequestHead;
use crate::core::rewrite::passes_through_plain;
use crate::core::validate::Body;
use std::net::SocketAddr;

/// The variables do not fit the packet's 16-bit size (answered 431).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge;

/// Where the request came from and went to, for the CGI variables.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub client: SocketAddr,
    pub local: SocketAddr,
    /// The Host header's name, without the port.
    pub server_name: &'a str,
    /// The route prefix removed from the path (`SCRIPT_NAME`), or empty.
    pub script_name: &'a str,
}

/// Appends the uwsgi packet for a plain request to `out`. `path` and `query` are the rewritten
/// target (the query with its `?`); `body` is [`Body::None`] or [`Body::Length`] (uwsgi has no
/// chunked requests).
pub fn write_packet(
    out: &mut Vec<u8>,
    req: &RequestHead<'_, '_>,
    path: &str,
    query: &str,
    body: Body,
    at: Origin<'_>,
    underscores: bool,
) -> Result<(), TooLarge> {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0]);
    let mut uri = String::with_capacity(path.len() + query.len());
    uri.push_str(path);
    uri.push_str(query);
    var(out, b"REQUEST_METHOD", req.method.as_bytes())?;
    var(out, b"REQUEST_URI", uri.as_bytes())?;
    var(out, b"PATH_INFO", &percent_decode(path))?;
    var(out, b"SCRIPT_NAME", at.script_name.as_bytes())?;
    var(
        out,
        b"QUERY_STRING",
        query.strip_prefix('?').unwrap_or(query).as_bytes(),
    )?;
    var(out, b"SERVER_PROTOCOL", b"HTTP/1.1")?;
    let length = match body {
        Body::Length(n) => n.to_string(),
        Body::None | Body::Chunked | Body::UntilClose => String::new(),
    };
    var(out, b"CONTENT_LENGTH", length.as_bytes())?;
    let content_type = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-type"))
        .map_or(&[][..], |h| h.value);
    var(out, b"CONTENT_TYPE", content_type)?;
    var(out, b"REMOTE_ADDR", at.client.ip().to_string().as_bytes())?;
    var(out, b"REMOTE_PORT", at.client.port().to_string().as_bytes())?;
    var(out, b"SERVER_NAME", at.server_name.as_bytes())?;
    var(out, b"SERVER_PORT", at.local.port().to_string().as_bytes())?;
    var(out, b"HTTPS", b"off")?;
    // Repeated fields become one variable, as CGI servers join them.
    let mut seen: Vec<String> = Vec::new();
    for h in req.headers {
        let name = h.name.to_ascii_uppercase().replace('-', "_");
        if name == "CONTENT_TYPE"
            || seen.contains(&name)
            || !passes_through_plain(req, h.name, underscores)
        {
            continue;
        }
        let joiner: &[u8] = if name == "COOKIE" { b"; " } else { b", " };
        let mut value = Vec::new();
        for same in req
            .headers
            .iter()
            .filter(|o| o.name.to_ascii_uppercase().replace('-', "_") == name)
        {
            if !value.is_empty() {
                value.extend_from_slice(joiner);
            }
            value.extend_from_slice(same.value);
        }
        let mut key = b"HTTP_".to_vec();
        key.extend_from_slice(name.as_bytes());
        var(out, &key, &value)?;
        seen.push(name);
    }
    let size = u16::try_from(out.len() - start - 4).map_err(|_| TooLarge)?;
    out[start + 1..start + 3].copy_from_slice(&size.to_le_bytes());
    Ok(())
}

fn var(out: &mut Vec<u8>, key: &[u8], value: &[u8]) -> Result<(), TooLarge> {
    let k = u16::try_from(key.len()).map_err(|_| TooLarge)?;
    let v = u16::try_from(value.len()).map_err(|_| TooLarge)?;
    out.extend_from_slice(&k.to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&v.to_le_bytes());
    out.extend_from_slice(value);
    Ok(())
}

/// `%XX` decoded (PATH_INFO is decoded in CGI); a `%` not followed by two hex digits stays.
fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::head::parse_request;

    /// The packet's variables as pairs.
    fn vars(p: &[u8]) -> Vec<(String, String)> {
        assert_eq!(p[0], 0);
        assert_eq!(p[3], 0);
        let size = u16::from_le_bytes([p[1], p[2]]) as usize;
        assert_eq!(size, p.len() - 4);
        let mut v = Vec::new();
        let mut i = 4;
        let take = |i: &mut usize| {
            let n = u16::from_le_bytes([p[*i], p[*i + 1]]) as usize;
            let s = String::from_utf8_lossy(&p[*i + 2..*i + 2 + n]).into_owned();
            *i += 2 + n;
            s
        };
        while i < p.len() {
            let k = take(&mut i);
            let val = take(&mut i);
            v.push((k, val));
        }
        v
    }

    #[test]
    fn packet_carries_cgi_variables() {
        let head = b"POST /app/a%20b?x=1&y=2 HTTP/1.1\r\nHost: site.example:8080\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nCookie: a=1\r\nCookie: b=2\r\nX-Real-IP: 6.6.6.6\r\nX_Real_IP: 6.6.6.6\r\nUser-Agent: t\r\n\r\n";
        let mut h = [httparse::EMPTY_HEADER; 16];
        let req = parse_request(head, &mut h).expect("parses");
        let mut out = Vec::new();
        let at = Origin {
            client: "203.0.113.9:4000".parse().expect("addr"),
            local: "127.0.0.1:8080".parse().expect("addr"),
            server_name: "site.example",
            script_name: "/app",
        };
        write_packet(
            &mut out,
            &req,
            "/a%20b",
            "?x=1&y=2",
            Body::Length(5),
            at,
            true,
        )
        .expect("fits");
        let v = vars(&out);
        let get = |k: &str| v.iter().find(|(n, _)| n == k).map(|(_, x)| x.as_str());
        assert_eq!(get("REQUEST_METHOD"), Some("POST"));
        assert_eq!(get("REQUEST_URI"), Some("/a%20b?x=1&y=2"));
        assert_eq!(get("PATH_INFO"), Some("/a b"));
        assert_eq!(get("SCRIPT_NAME"), Some("/app"));
        assert_eq!(get("QUERY_STRING"), Some("x=1&y=2"));
        assert_eq!(get("CONTENT_LENGTH"), Some("5"));
        assert_eq!(get("CONTENT_TYPE"), Some("text/plain"));
        assert_eq!(get("REMOTE_ADDR"), Some("203.0.113.9"));
        assert_eq!(get("REMOTE_PORT"), Some("4000"));
        assert_eq!(get("SERVER_NAME"), Some("site.example"));
        assert_eq!(get("SERVER_PORT"), Some("8080"));
        assert_eq!(get("HTTP_HOST"), Some("site.example:8080"));
        assert_eq!(get("HTTP_COOKIE"), Some("a=1; b=2"));
        assert_eq!(get("HTTP_USER_AGENT"), Some("t"));
        assert_eq!(get("HTTP_CONTENT_LENGTH"), None);
        assert_eq!(get("HTTP_CONTENT_TYPE"), None);
        assert_eq!(get("HTTP_X_REAL_IP"), None, "forged client address passed");
    }

    #[test]
    fn decoding_leaves_broken_escapes() {
        assert_eq!(percent_decode("/a%2Fb%zz%4"), b"/a/b%zz%4");
    }
}
