//! The answer of a redirect listener (`[tls] redirect_listen`, `--redirect-listen`): every
//! request, an upgrade or not, gets a redirect to the same path over https, then the
//! connection closes (nginx's `return 301 https://$host$request_uri`).
//!
//! GET and HEAD get `301 Moved Permanently`; other methods `308 Permanent Redirect`, which
//! tells the client to repeat the method and body. The host of the `Location` is never an
//! arbitrary string from the request: when routes name hosts (`host` in `[[route]]`), it is
//! the request's Host if it is one of them, else the first of them; without any, it is the
//! request's Host only if that is a syntactically valid DNS name or IP address (else 400).
//! The port is `[tls] redirect_port` (default: the first TLS listener's port), left out when
//! it is 443.

use crate::core::settings::Settings;
use crate::core::status::{BadRequest, Reject};
use rustls::pki_types::ServerName;

/// The request head `head` (complete) answered with a redirect to `https_port`: the status
/// and the bytes to write.
pub fn answer(head: &[u8], s: &Settings, https_port: u16) -> Result<(u16, Vec<u8>), Reject> {
    let bad = |b| Reject::BadRequest(b);
    let mut headers = vec![httparse::EMPTY_HEADER; s.max_headers];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(bad(BadRequest::Syntax)),
    }
    let method = req.method.unwrap_or("GET");
    let target = req.path.ok_or(bad(BadRequest::Syntax))?;
    if !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad(BadRequest::TargetByte));
    }
    // Origin form; an absolute form keeps its path (its authority is the client's word only).
    let path = if target.starts_with('/') {
        target
    } else if let Some(rest) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        rest.find('/').map_or("/", |i| &rest[i..])
    } else {
        return Err(bad(BadRequest::TargetForm));
    };
    let mut hosts = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"));
    let asked = match (hosts.next(), hosts.next()) {
        (Some(h), None) => std::str::from_utf8(h.value).ok().and_then(valid_host),
        (None, _) => None,
        (Some(_), Some(_)) => return Err(bad(BadRequest::Host)),
    };
    let host = choose_host(asked, s).ok_or(bad(BadRequest::Host))?;
    let port = match https_port {
        443 => String::new(),
        p => format!(":{p}"),
    };
    let location = format!("https://{host}{port}{path}");
    let (status, reason) = if method == "GET" || method == "HEAD" {
        (301, "Moved Permanently")
    } else {
        (308, "Permanent Redirect")
    };
    let body = format!("{status} {reason}: {location}\n");
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nLocation: {location}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        out.extend_from_slice(body.as_bytes());
    }
    Ok((status, out))
}

/// The host part of a Host header (`name`, `name:port`, `[v6]:port`), lower-cased and as it
/// goes into a URL, if it is a DNS name or an IP address.
fn valid_host(value: &str) -> Option<String> {
    let value = value.trim();
    let name = if let Some(rest) = value.strip_prefix('[') {
        let (inner, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        inner.parse::<std::net::Ipv6Addr>().ok()?;
        return Some(format!("[{}]", inner.to_ascii_lowercase()));
    } else {
        match value.rsplit_once(':') {
            Some((n, p)) if is_port(p) => n,
            Some(_) => return None,
            None => value,
        }
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return None;
    }
    ServerName::try_from(name).ok()?;
    Some(name.to_ascii_lowercase())
}

fn is_port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
}

/// The host of the `Location`: see the module's documentation.
fn choose_host(asked: Option<String>, s: &Settings) -> Option<String> {
    let mut configured = s.routes.iter().filter_map(|r| r.host.as_deref());
    let Some(first) = configured.next() else {
        return asked;
    };
    match asked {
        Some(a) if a == first || configured.any(|h| h == a) => Some(a),
        _ => Some(first.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_names_or_addresses() {
        assert_eq!(valid_host("Example.COM:80").as_deref(), Some("example.com"));
        assert_eq!(valid_host("[::1]:8080").as_deref(), Some("[::1]"));
        assert_eq!(valid_host("127.0.0.1").as_deref(), Some("127.0.0.1"));
        for bad in [
            "evil.com/x",
            "evil.com@x",
            "a b",
            "",
            ":80",
            "evil.com:8o",
            "[::1",
            "[::1]x",
            "evil.com\\@x",
            "x.com?y",
        ] {
            assert_eq!(valid_host(bad), None, "{bad:?}");
        }
    }
}
