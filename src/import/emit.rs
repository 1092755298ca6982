//! The resolved plan as wsplice TOML, every note a `#` comment.

use std::fmt::Write as _;
use std::path::Path;

use super::plan::{resolve, Balance, Mapping, Note, Plan, RouteOut};
use super::{duration_text, ImportError, Kind};

/// A TOML basic string.
fn quote(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// Comment text on one line: control characters would end the comment early.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// [`clean`], and a long directive shortened.
fn short(s: &str) -> String {
    let one = clean(s);
    if one.chars().count() > 100 {
        let cut: String = one.chars().take(97).collect();
        format!("{cut}...")
    } else {
        one
    }
}

fn note_line(out: &mut String, indent: &str, n: &Note) {
    let _ = writeln!(
        out,
        "#{indent}{}: {}: {}",
        n.loc,
        short(&n.what),
        clean(&n.why)
    );
}

fn list(addrs: &[std::net::SocketAddr]) -> String {
    weighted(addrs, &[])
}

/// `["a", { addr = "b", weight = 3 }]`: a backend of weight 1 is written as its address.
fn weighted(addrs: &[std::net::SocketAddr], weights: &[u32]) -> String {
    let items: Vec<String> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| match weights.get(i) {
            Some(&w) if w != 1 => format!("{{ addr = {}, weight = {w} }}", quote(&a.to_string())),
            _ => quote(&a.to_string()),
        })
        .collect();
    format!("[{}]", items.join(", "))
}

pub(crate) fn emit_checked(plan: &Plan, kind: Kind, path: &Path) -> Result<String, ImportError> {
    let file = path.display().to_string();
    let r = resolve(plan, &file)?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# wsplice configuration imported from {} by `wsplice import {} {}` (wsplice {}).",
        kind.as_str(),
        kind.as_str(),
        clean(&file),
        env!("CARGO_PKG_VERSION")
    );
    out.push_str(
        "# Check it with `wsplice --check --config FILE`, run it with `wsplice --config FILE`.\n",
    );
    out.push_str("# wsplice always sends the backend Upgrade/Connection for WebSockets, X-Real-IP, X-Forwarded-For\n");
    out.push_str("# and X-Forwarded-Proto, and passes the client's Host unchanged.\n");
    let mut head: Vec<&Note> = plan.notes.iter().chain(&r.notes).collect();
    head.sort_by(|a, b| (&a.loc.file, a.loc.line).cmp(&(&b.loc.file, b.loc.line)));
    if !head.is_empty() {
        out.push_str(
            "#\n# Not carried over, or carried differently (file:line: directive: why):\n",
        );
        for n in head {
            note_line(&mut out, "   ", n);
        }
    }
    if !r.listen.is_empty() || plan.workers.is_some() {
        out.push('\n');
    }
    if !r.listen.is_empty() {
        let _ = writeln!(out, "listen = {}", list(&r.listen));
    }
    if let Some(n) = plan.workers {
        let _ = writeln!(out, "workers = {n}");
    }
    if plan.connect.is_some() || plan.idle.is_some() {
        out.push_str("\n[timeouts]\n");
        if let Some((d, loc)) = &plan.connect {
            let _ = writeln!(out, "# {loc}\nconnect = {}", quote(&duration_text(*d)));
        }
        if let Some((d, loc)) = &plan.idle {
            let _ = writeln!(
                out,
                "# {loc}: a tunnel quiet both ways this long is closed\nidle = {}",
                quote(&duration_text(*d))
            );
        }
    }
    if !r.tls_listen.is_empty() {
        out.push_str("\n[tls]\n");
        let _ = writeln!(out, "listen = {}", list(&r.tls_listen));
        if let Some((on, loc)) = &plan.session_tickets {
            let _ = writeln!(out, "# {loc}\nsession_tickets = {on}");
        }
        for (cert, key, loc) in &r.certs {
            let _ = writeln!(
                out,
                "\n[[tls.cert]]\n# {loc}: wsplice picks the certificate by the names it covers (SNI)\ncert = {}\nkey = {}",
                quote(&cert.display().to_string()),
                quote(&key.display().to_string())
            );
        }
    }
    for route in &r.routes {
        out.push('\n');
        route_table(&mut out, route);
    }
    for m in &r.disabled {
        out.push('\n');
        disabled(&mut out, m);
    }
    Ok(out)
}

fn route_table(out: &mut String, r: &RouteOut<'_>) {
    let m = r.m;
    let _ = writeln!(out, "# {}: {}", m.loc, short(&m.source));
    let mut notes: Vec<&Note> = m.notes.iter().chain(&r.notes).collect();
    notes.sort_by(|a, b| (&a.loc.file, a.loc.line).cmp(&(&b.loc.file, b.loc.line)));
    for n in notes {
        note_line(out, "   ", n);
    }
    out.push_str("[[route]]\n");
    for line in route_lines(m, r.host.as_deref(), r.upgrade_only) {
        out.push_str(&line);
        out.push('\n');
    }
}

/// A route that would not work as written: shown commented out, with why.
fn disabled(out: &mut String, m: &Mapping) {
    let why = m.disabled.as_deref().unwrap_or("not carried over");
    let _ = writeln!(
        out,
        "# {}: {}: not carried over: {}",
        m.loc,
        short(&m.source),
        clean(why)
    );
    for n in m.notes.iter().filter(|n| n.why != why) {
        note_line(out, "   ", n);
    }
    out.push_str("# [[route]]\n");
    for line in route_lines(m, None, false) {
        let _ = writeln!(out, "# {line}");
    }
}

fn route_lines(m: &Mapping, host: Option<&str>, upgrade_only: bool) -> Vec<String> {
    let mut lines = vec![format!("prefix = {}", quote(&m.prefix))];
    if let Some(h) = host {
        lines.push(format!("host = {}", quote(h)));
    }
    if !m.backends.is_empty() {
        lines.push(format!("backends = {}", weighted(&m.backends, &m.weights)));
    }
    lines.push(format!("strip_prefix = {}", m.strips()));
    if m.uwsgi {
        lines.push("protocol = \"uwsgi\"".into());
    }
    if let Some(name) = &m.tls {
        lines.push("backend_tls = true".into());
        if let Some(n) = name {
            lines.push(format!("backend_server_name = {}", quote(n)));
        }
    }
    match m.forwarded_replace {
        Some(true) => lines.push("forwarded_for = \"replace\"".into()),
        Some(false) => lines.push("forwarded_for = \"append\"".into()),
        None => {}
    }
    match &m.balance {
        Balance::RoundRobin => {}
        Balance::LeastConn => lines.push("balance = \"least_conn\"".into()),
        Balance::Hash(key) => {
            lines.push("balance = \"hash\"".into());
            lines.push(format!("hash_key = {}", quote(key)));
        }
        Balance::Cookie(name) => {
            lines.push("balance = \"cookie\"".into());
            if let Some(n) = name {
                lines.push(format!("cookie_name = {}", quote(n)));
            }
        }
    }
    if let Some(d) = m.response_timeout {
        lines.push(format!("response_timeout = {}", quote(&duration_text(d))));
    }
    if upgrade_only {
        lines.push("http = false".into());
    }
    lines
}
