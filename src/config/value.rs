//! Value parsers: durations, sizes, addresses, networks, route prefixes and hosts, and the
//! spellings of an enum.
//!
//! The `fn(&str) -> Result<T, String>` parsers serve the TOML file and the command line alike;
//! their message says what is wrong with the value, and the caller adds where it is. The `Field`
//! methods here are those parsers for a TOML value, with its file, line and key on the error.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::ops::RangeBounds;
use std::time::Duration;

use toml::de::DeValue;

use super::walk::{check_range, Field};
use super::ConfigError;

/// Deadlines are `Instant + Duration`, which panics on overflow; a year is far beyond any real timeout.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

const DURATION_HINT: &str = "expected a number followed by a unit such as 30s, 5m, 1h";
const SIZE_HINT: &str =
    "expected a number of bytes with an optional unit such as 16384, \"16KiB\", \"1MiB\"";

impl Field<'_> {
    /// A string read by `parse` (one of the parsers below).
    pub(super) fn parsed<T>(&self, parse: fn(&str) -> Result<T, String>) -> Result<T, ConfigError> {
        parse(self.str()?).map_err(|m| self.error(m))
    }

    /// One of `options`, written as `spell` spells it.
    pub(super) fn choice<T: Copy>(
        &self,
        options: &[T],
        spell: fn(T) -> &'static str,
    ) -> Result<T, ConfigError> {
        let s = self.str()?;
        one_of(s, options, spell)
            .map_err(|expected| self.error(format!("invalid value {s:?}: expected {expected}")))
    }

    /// An array of networks: CIDRs, or single addresses.
    pub(super) fn nets(&self) -> Result<Vec<ipnet::IpNet>, ConfigError> {
        self.items("an array of networks, such as [\"10.0.0.0/8\", \"127.0.0.1\"]")?
            .iter()
            .map(|item| item.parsed(parse_net))
            .collect()
    }

    /// An integer number of bytes, or a string such as "16KiB".
    pub(super) fn size_in(&self, range: impl RangeBounds<u64>) -> Result<usize, ConfigError> {
        let n: i128 = match self.value() {
            DeValue::Integer(_) => self.int()?,
            DeValue::String(s) => parse_size(s).map_err(|m| self.error(m))?.into(),
            _ => return Err(self.type_error("a size such as 16384 or \"16KiB\"")),
        };
        check_range(n, range).map_err(|m| self.error(m))?;
        usize::try_from(n).map_err(|_| self.error(format!("{n} is too large")))
    }

    /// A string such as "10s" or "1h 30m"; "0" or the integer 0 mean zero.
    pub(super) fn duration(&self) -> Result<Duration, ConfigError> {
        let d = match self.value() {
            DeValue::String(s) => parse_duration(s).map_err(|m| self.error(m))?,
            DeValue::Integer(_) => match self.int()? {
                0 => Duration::ZERO,
                n => {
                    return Err(self.error(format!(
                        "invalid duration {n}: a number needs a unit, such as \"{n}s\""
                    )))
                }
            },
            _ => return Err(self.type_error("a duration such as \"30s\"")),
        };
        if d > MAX_DURATION {
            return Err(self.error("must be at most 365 days (use 0 for \"never\")"));
        }
        Ok(d)
    }

    pub(super) fn positive_duration(&self) -> Result<Duration, ConfigError> {
        let d = self.duration()?;
        if d.is_zero() {
            return Err(self.error("must be greater than 0"));
        }
        Ok(d)
    }
}

/// The option spelled `s`, or the spellings to expect (`"a", "b" or "c"`) when none is.
pub(super) fn one_of<T: Copy>(
    s: &str,
    options: &[T],
    spell: fn(T) -> &'static str,
) -> Result<T, String> {
    if let Some(&found) = options.iter().find(|&&o| spell(o) == s) {
        return Ok(found);
    }
    let quoted: Vec<String> = options
        .iter()
        .map(|&o| format!("\"{}\"", spell(o)))
        .collect();
    Err(match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => quoted.concat(),
    })
}

/// `"10s"`, `"500ms"`, `"1h 30m"` (humantime), or `"0"`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(t).map_err(|_| format!("invalid duration {s:?}: {DURATION_HINT}"))
}

/// `16384`, `"16KiB"`, `"64 KiB"`, `"1MiB"`. `k`/`kb`/`kib` all mean 1024, as in nginx.
fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || format!("invalid size {s:?}: {SIZE_HINT}");
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    if digits == 0 {
        return Err(bad());
    }
    let n: u64 = t[..digits].parse().map_err(|_| bad())?;
    let unit: u64 = match t[digits..].trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(bad()),
    };
    n.checked_mul(unit).ok_or_else(bad)
}

/// A network in CIDR form (`10.0.0.0/8`), or one address (`127.0.0.1`).
fn parse_net(s: &str) -> Result<ipnet::IpNet, String> {
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| {
            format!("invalid network {s:?}: expected an address or CIDR such as 10.0.0.0/8")
        })
}

/// A listen address: `IP:PORT`; port 0 asks the kernel for a free port.
pub(super) fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let t = s.trim();
    let why = if t.contains("://") || t.contains('/') {
        "expected IP:PORT without a scheme or path".to_owned()
    } else if t.parse::<IpAddr>().is_ok() || t.trim_matches(['[', ']']).parse::<Ipv6Addr>().is_ok()
    {
        "missing port".to_owned()
    } else if t.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty()
            && port.parse::<u16>().is_ok()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    }) {
        "use an IP address here (host names are for `backends` only)".to_owned()
    } else {
        "expected IP:PORT, such as 127.0.0.1:8080 or [::1]:8080".to_owned()
    };
    Err(format!("invalid address {s:?}: {why}"))
}

/// A backend address: `IP:PORT` with a port to connect to.
/// `ADDR`, or `wss://ADDR` / `https://ADDR` (TLS, the `true`), or `ws://ADDR` / `http://ADDR`;
/// a trailing `/` is allowed.
pub(super) fn parse_backend_url(s: &str) -> Result<(bool, SocketAddr), String> {
    let (tls, addr) = match s.split_once("://") {
        Some(("wss" | "https", rest)) => (true, rest),
        Some(("ws" | "http", rest)) => (false, rest),
        Some((scheme, _)) => {
            return Err(format!(
                "unknown scheme {scheme:?} in {s:?}: use ws:// or http:// (plain), wss:// or https:// (TLS), or just ADDR:PORT"
            ))
        }
        None => (false, s),
    };
    let addr = addr.strip_suffix('/').unwrap_or(addr);
    Ok((tls, parse_backend(addr)?))
}

pub(super) fn parse_backend(s: &str) -> Result<SocketAddr, String> {
    let addr = parse_addr(s)?;
    if addr.port() == 0 {
        return Err(format!(
            "invalid address {s:?}: a backend needs a non-zero port"
        ));
    }
    Ok(addr)
}

/// Starts with `/`; no query, fragment, whitespace, control or non-ASCII bytes; trailing `/`
/// removed unless the prefix is `/` itself.
pub(super) fn normalize_prefix(s: &str) -> Result<String, String> {
    if !s.starts_with('/') {
        return Err(format!("invalid prefix {s:?}: must start with '/'"));
    }
    if let Some(c) = s.chars().find(|&c| c == '?' || c == '#') {
        return Err(format!(
            "invalid prefix {s:?}: must not contain '{c}' (routes match the path only)"
        ));
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "invalid prefix {s:?}: must not contain whitespace or control characters"
        ));
    }
    if !s.is_ascii() {
        return Err(format!(
            "invalid prefix {s:?}: must be ASCII (percent-encode other characters)"
        ));
    }
    let trimmed = s.trim_end_matches('/');
    Ok(if trimmed.is_empty() {
        "/".to_owned()
    } else {
        trimmed.to_owned()
    })
}

/// Lower-cased host name or IP literal (`[::1]` for IPv6), without a port.
pub(super) fn normalize_host(s: &str) -> Result<String, String> {
    let host = s.to_ascii_lowercase();
    let bad = |why: &str| Err(format!("invalid host {s:?}: {why}"));
    if host.is_empty() {
        return bad("must not be empty (leave `host` out to match any Host)");
    }
    if let Some(inner) = host.strip_prefix('[') {
        return match inner.strip_suffix(']') {
            Some(ip) if ip.parse::<Ipv6Addr>().is_ok() => Ok(host),
            _ if inner.contains("]:") => bad("must not include a port"),
            _ => bad("expected an IPv6 address in brackets, such as [::1]"),
        };
    }
    if host.parse::<Ipv6Addr>().is_ok() {
        return bad("write an IPv6 address in brackets, such as [::1]");
    }
    if host.contains(':') {
        return bad("must not include a port");
    }
    if host.len() > 253 {
        return bad("longer than 253 characters");
    }
    if let Some(c) = host
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_'))
    {
        return bad(&format!("invalid character {c:?}"));
    }
    if host.split('.').any(str::is_empty) {
        return bad("empty label (leading, trailing or doubled '.')");
    }
    Ok(host)
}

/// An origin as browsers send it: `scheme://host[:port]`, lower-cased, without a path; `null`
/// as is.
pub(super) fn normalize_origin(s: &str) -> Result<String, String> {
    if s == "null" {
        return Ok(s.to_owned());
    }
    let lower = s.trim_end_matches('/').to_ascii_lowercase();
    let Some((scheme, rest)) = lower.split_once("://") else {
        return Err(format!(
            "invalid origin {s:?}: expected scheme://host[:port], such as https://example.com"
        ));
    };
    let ok_scheme = !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    let ok_rest = !rest.is_empty()
        && rest.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':' | b'[' | b']')
        });
    if !ok_scheme || !ok_rest {
        return Err(format!(
            "invalid origin {s:?}: expected scheme://host[:port] without a path, such as https://example.com"
        ));
    }
    Ok(lower)
}
