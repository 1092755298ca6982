//! The small rules both importers share: a path as a wsplice prefix, the path rule of a proxy
//! target, times, and the shapes of Apache's rewrite rules that become routes.

use std::time::Duration;

use super::apache_parse::Node;

/// A location or ProxyPass path as a wsplice prefix.
pub(crate) fn prefix(path: &str) -> Result<String, String> {
    if !path.starts_with('/') {
        return Err("a prefix must start with '/'".into());
    }
    if path.contains(['?', '#']) || !path.is_ascii() || path.contains(char::is_whitespace) {
        return Err("wsplice prefixes are ASCII paths without ?, # or spaces".into());
    }
    let trimmed = path.trim_end_matches('/');
    Ok(if trimmed.is_empty() { "/" } else { trimmed }.to_owned())
}

/// nginx's and Apache's rule: the target's path replaces the matched prefix. wsplice keeps the
/// path (`Ok(false)`) or strips the prefix (`Ok(true)`); anything else is an error saying so.
pub(crate) fn path_rule(location: &str, target: Option<&str>) -> Result<bool, String> {
    let Some(target) = target else {
        return Ok(false);
    };
    if target == "/" || target.is_empty() {
        return Ok(true);
    }
    if target.trim_end_matches('/') == location.trim_end_matches('/') {
        return Ok(false);
    }
    Err(format!(
        "the backend would see {target}... in place of {location}...: wsplice keeps or strips the prefix only, so the path is kept as it is (strip_prefix = false)"
    ))
}

/// The case where nginx and Apache send a path wsplice does not: a target path ending in `/`
/// after a prefix that does not (`location /notice` + `proxy_pass http://b/` sends `/notice/x`
/// as `//x`; wsplice sends `/x`). The note, if so.
pub(crate) fn slash_note(location: &str, target: Option<&str>, strip: bool) -> Option<String> {
    let t = target.filter(|t| t.ends_with('/'))?;
    if location.ends_with('/') {
        return None;
    }
    let ours = if strip { "" } else { location };
    Some(format!(
        "this sends {location}/x to the backend as {t}/x (its path put in place of {location}); wsplice sends {ours}/x{}",
        if strip { format!(" ({location} alone goes to / in both)") } else { String::new() }
    ))
}

/// nginx's time syntax: `60`, `60s`, `500ms`, `1m30s`, `1h`, `2d`.
pub(crate) fn nginx_time(s: &str) -> Option<Duration> {
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().ok().map(Duration::from_secs);
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let one = match &rest[..unit] {
            "ms" => Duration::from_millis(1),
            "s" | "" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            "d" => Duration::from_secs(86400),
            "w" => Duration::from_secs(7 * 86400),
            _ => return None,
        };
        total += one.checked_mul(u32::try_from(n).ok()?)?;
        rest = &rest[unit..];
    }
    Some(total)
}

/// `Some(true)`: the condition holds for WebSocket upgrades; `Some(false)`: for everything
/// else; `None`: another condition.
pub(crate) fn upgrade_cond(c: &Node) -> Option<bool> {
    let [test, pattern, ..] = &c.args[..] else {
        return None;
    };
    let test = test.to_ascii_lowercase();
    let (negated, pattern) = match pattern.strip_prefix('!') {
        Some(p) => (true, p),
        None => (false, pattern.as_str()),
    };
    let p = pattern
        .trim_start_matches('=')
        .trim_start_matches("(?i)")
        .trim_start_matches('^')
        .trim_end_matches('$')
        .to_ascii_lowercase();
    let wanted = match test.as_str() {
        "%{http:upgrade}" => "websocket",
        "%{http:connection}" => "upgrade",
        _ => return None,
    };
    (p == wanted || (test == "%{http:connection}" && p.contains("upgrade"))).then_some(!negated)
}

/// The literal path a `^/PREFIX/(.*)`-shaped pattern consumes before its capture.
pub(crate) fn rewrite_pattern(pattern: &str) -> Option<String> {
    let anchored = pattern.starts_with('^');
    let s = pattern.trim_start_matches('^').trim_end_matches('$');
    if !anchored && !s.starts_with('/') {
        return None;
    }
    let body = s.strip_suffix("(.*)")?;
    let body = match body.strip_suffix("/?") {
        Some(b) => format!("{b}/"),
        None => body.to_owned(),
    };
    let mut out = String::new();
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '[' | ']' | '(' | ')' | '{' | '}' | '*' | '+' | '?' | '|' | '^' | '$' => return None,
            _ => out.push(c),
        }
    }
    if !out.is_empty() && !out.starts_with('/') {
        return None;
    }
    Some(out)
}

/// Apache's seconds (`300`), or milliseconds with `ms`.
pub(crate) fn seconds(s: &str) -> Option<Duration> {
    match s.strip_suffix("ms") {
        Some(ms) => ms.parse().ok().map(Duration::from_millis),
        None => s.parse().ok().map(Duration::from_secs),
    }
}
