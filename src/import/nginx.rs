//! nginx's block tree in wsplice's terms: `server` blocks become listeners and certificates,
//! `location`s with `proxy_pass`/`uwsgi_pass` become routes, `upstream`s their backends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::nginx_parse::Directive;
use super::plan::{Balance, Listen, ListenOpts, Mapping, Note, Plan, Server};
use super::rules::{nginx_time, path_rule, prefix, slash_note};
use super::{resolve, split_url, tls_name, ImportError, Loc, TLS_BACKEND_NOTE};

/// An `upstream` block: its backends and how it balances.
#[derive(Debug, Default)]
struct Upstream {
    backends: Vec<SocketAddr>,
    /// Parallel to `backends`.
    weights: Vec<u32>,
    balance: Balance,
}

/// Directives a block hands down to the blocks inside it, by name (the nearest wins); the
/// `proxy_set_header`s of the nearest level that has any, as nginx inherits them.
#[derive(Debug, Clone, Default)]
struct Inherit<'a> {
    values: HashMap<&'a str, &'a Directive>,
    headers: Option<Vec<&'a Directive>>,
}

/// What a block may say for the blocks inside it.
const INHERITED: &[&str] = &[
    "proxy_read_timeout",
    "proxy_connect_timeout",
    "uwsgi_read_timeout",
    "uwsgi_connect_timeout",
    "ssl_certificate",
    "ssl_certificate_key",
];

impl<'a> Inherit<'a> {
    /// This context with `block`'s own settings over it.
    fn child(&self, block: &'a [Directive]) -> Inherit<'a> {
        let mut next = self.clone();
        let mut headers = Vec::new();
        for d in block {
            if INHERITED.contains(&d.name.as_str()) {
                next.values.insert(d.name.as_str(), d);
            }
            if d.name == "proxy_set_header" {
                headers.push(d);
            }
        }
        if !headers.is_empty() {
            next.headers = Some(headers);
        }
        next
    }
}

/// Whether a directive is read through [`Inherit`] (so it needs no note where it stands).
fn inherited(name: &str) -> bool {
    INHERITED.contains(&name) || name == "proxy_set_header"
}

struct Importer<'a> {
    plan: Plan,
    upstreams: HashMap<String, Upstream>,
    _tree: std::marker::PhantomData<&'a ()>,
}

pub(crate) fn plan(tree: &[Directive]) -> Result<Plan, ImportError> {
    let mut imp = Importer {
        plan: Plan::default(),
        upstreams: HashMap::new(),
        _tree: std::marker::PhantomData,
    };
    // The main file, or a snippet of `server` blocks as sites-enabled/ holds them: the top level
    // is read as the http block is.
    imp.http(tree, &Inherit::default().child(tree))?;
    Ok(imp.plan)
}

impl<'a> Importer<'a> {
    /// A directive with no wsplice meaning: one note, for the whole block if it has one.
    fn other(&mut self, d: &Directive) {
        let why = match d.name.as_str() {
            "events" => {
                "wsplice sizes its event loop itself (limits.max_connections caps connections)"
            }
            "stream" => "TCP/UDP proxying (stream) is not WebSocket/HTTP: not carried over",
            "user" | "pid" | "daemon" | "master_process" => {
                "process management: run wsplice under systemd (tools/wsplice.service)"
            }
            "error_log" => "wsplice logs errors to stderr",
            "access_log" | "log_format" => {
                "not carried over: wsplice has its own access log ([access_log] path, format)"
            }
            "worker_rlimit_nofile" => "wsplice raises its open-file limit to the hard limit itself",
            "types" | "default_type" | "sendfile" | "tcp_nopush" | "gzip" | "root" | "index"
            | "try_files" | "autoindex" | "charset" => {
                "static files and compression: wsplice only proxies"
            }
            "return" | "rewrite" => "redirects and rewrites: wsplice routes by path prefix only",
            "if" | "map" | "set" | "geo" => "variables and conditions have no wsplice equivalent",
            "proxy_http_version" => "wsplice always speaks HTTP/1.1 to backends",
            "keepalive_timeout" => {
                "wsplice's client keep-alive is timeouts.client_idle (60s by default)"
            }
            "client_max_body_size" => "wsplice streams request bodies without a size limit",
            "server_tokens" => "wsplice does not announce a version",
            "add_header" | "more_set_headers" => "wsplice does not add response headers",
            "proxy_buffering" | "proxy_buffers" | "proxy_buffer_size" | "proxy_cache" => {
                "wsplice does not buffer or cache: answers stream through"
            }
            "proxy_send_timeout" | "uwsgi_send_timeout" => {
                "wsplice's timeouts.idle covers both directions (see proxy_read_timeout)"
            }
            "uwsgi_param" => "wsplice sends the standard uwsgi variables itself",
            "proxy_redirect" => "wsplice does not rewrite Location headers in answers",
            _ => "no wsplice equivalent",
        };
        self.plan.note(&d.loc, d.text(), why);
    }

    fn http(&mut self, block: &'a [Directive], ctx: &Inherit<'a>) -> Result<(), ImportError> {
        // Upstreams first: proxy_pass may name one defined further down.
        for d in block.iter().filter(|d| d.name == "upstream") {
            self.upstream(d);
        }
        for d in block {
            match d.name.as_str() {
                "upstream" => {}
                "http" => match &d.block {
                    Some(inner) => self.http(inner, &ctx.child(inner))?,
                    None => self.other(d),
                },
                "worker_processes" => match d.args.first().map(|a| a.parse::<u64>()) {
                    Some(Ok(n)) if (1..=1024).contains(&n) => self.plan.workers = Some(n),
                    _ => self.plan.note(
                        &d.loc,
                        d.text(),
                        "left out: wsplice runs one worker per CPU by default",
                    ),
                },
                "server" => match &d.block {
                    Some(inner) => self.server(d, inner, &ctx.child(inner))?,
                    None => self.other(d),
                },
                name if inherited(name) => {}
                _ => self.other(d),
            }
        }
        Ok(())
    }

    fn upstream(&mut self, d: &Directive) {
        let (Some(name), Some(block)) = (d.args.first(), &d.block) else {
            self.plan
                .note(&d.loc, d.text(), "expected `upstream NAME { ... }`");
            return;
        };
        let mut up = Upstream::default();
        for s in block {
            let loc = &s.loc;
            match (s.name.as_str(), &s.args[..]) {
                ("server", [addr, params @ ..]) => self.upstream_server(&mut up, s, addr, params),
                ("ip_hash", []) => up.balance = Balance::Hash("client_ip".into()),
                ("least_conn", []) => up.balance = Balance::LeastConn,
                ("hash", [key, rest @ ..]) => {
                    match hash_key(key) {
                        Some(k) => up.balance = Balance::Hash(k),
                        None => self.plan.note(
                            loc,
                            s.text(),
                            "wsplice hashes the client address, a cookie, a query parameter or a header only: round robin instead",
                        ),
                    }
                    if !rest.is_empty() {
                        let why = "wsplice's hash is always consistent across processes, not a ketama ring";
                        self.plan.note(loc, s.text(), why);
                    }
                }
                ("sticky", [kind, cookie, ..]) if kind == "cookie" => {
                    up.balance = Balance::Cookie(Some(cookie.clone()));
                    let why = "balance = \"cookie\" with this cookie name; its other settings are wsplice's (cookie_secure, cookie_same_site ...)";
                    self.plan.note(loc, s.text(), why);
                }
                ("keepalive" | "keepalive_timeout" | "keepalive_requests", _) => {
                    let why = "wsplice keeps idle backend connections itself ([backend_pool] max_idle, idle_timeout)";
                    self.plan.note(loc, s.text(), why);
                }
                _ => self.plan.note(
                    loc,
                    s.text(),
                    "no wsplice equivalent in an upstream: round robin over the servers",
                ),
            }
        }
        self.upstreams.insert(name.clone(), up);
    }

    fn upstream_server(&mut self, up: &mut Upstream, s: &Directive, addr: &str, params: &[String]) {
        let loc = &s.loc;
        if addr.starts_with("unix:") {
            let why = "wsplice connects to backends over TCP only: not carried over";
            self.plan.note(loc, s.text(), why);
            return;
        }
        let mut weight = 1;
        for p in params {
            let (key, value) = p.split_once('=').unwrap_or((p.as_str(), ""));
            let why = match key {
                "weight" => match value.parse::<u32>() {
                    Ok(w @ 1..=256) => {
                        weight = w;
                        continue;
                    }
                    _ => "a weight wsplice takes is 1 to 256: this server weighs 1",
                },
                "max_fails" | "fail_timeout" => {
                    "no failure accounting: wsplice tries the next backend when a connect fails"
                }
                "backup" => {
                    "wsplice has no backup servers: left out (it tries the other backends when one fails)"
                }
                "down" => "marked down: left out",
                _ => "no wsplice equivalent",
            };
            self.plan.note(loc, format!("server {addr} {p}"), why);
            if key == "backup" || key == "down" {
                return;
            }
        }
        match resolve(addr, 80) {
            Ok((addrs, note)) => {
                if let Some(n) = note {
                    self.plan.note(loc, s.text(), n);
                }
                for a in addrs {
                    if !up.backends.contains(&a) {
                        up.backends.push(a);
                        up.weights.push(weight);
                    }
                }
            }
            Err(why) => self.plan.note(loc, s.text(), why),
        }
    }

    fn server(
        &mut self,
        d: &Directive,
        block: &'a [Directive],
        ctx: &Inherit<'a>,
    ) -> Result<(), ImportError> {
        let index = self.plan.servers.len();
        let mut server = Server {
            loc: d.loc.clone(),
            names: Vec::new(),
            listens: Vec::new(),
            cert: None,
        };
        let mut ssl_on = false;
        for x in block {
            match x.name.as_str() {
                "listen" => self.listen(&mut server, x),
                "server_name" => self.server_names(&mut server, x),
                "ssl" if x.args.first().is_some_and(|a| a == "on") => ssl_on = true,
                "ssl_session_tickets" => {
                    let on = x.args.first().is_some_and(|a| a == "on");
                    self.plan.session_tickets = Some((on, x.loc.clone()));
                }
                "location" | "upstream" => {}
                name if inherited(name) => {}
                _ if x.name.starts_with("ssl_") => self.plan.note(
                    &x.loc,
                    x.text(),
                    "wsplice's TLS settings are fixed (rustls: TLS 1.2 and 1.3, modern ciphers)",
                ),
                _ => self.other(x),
            }
        }
        if server.listens.is_empty() {
            let addr = SocketAddr::from(([0, 0, 0, 0], 80));
            let why = "no listen in this server: nginx's default, *:80";
            self.plan.note(&d.loc, "server", why);
            server.listens.push(Listen {
                addr,
                tls: false,
                default: false,
                loc: d.loc.clone(),
            });
        }
        if ssl_on {
            server.listens.iter_mut().for_each(|l| l.tls = true);
        }
        if server.listens.iter().any(|l| l.tls) {
            server.cert = self.cert(d, ctx);
        }
        self.plan.servers.push(server);
        for x in block.iter().filter(|x| x.name == "location") {
            self.location(index, x, ctx);
        }
        Ok(())
    }

    /// `ssl_certificate` and `ssl_certificate_key`, from this server or above it.
    fn cert(&mut self, d: &Directive, ctx: &Inherit<'a>) -> Option<(PathBuf, PathBuf, Loc)> {
        let cert = ctx.values.get("ssl_certificate");
        let key = ctx.values.get("ssl_certificate_key");
        let path = |x: &Directive| {
            let p = x.args.first()?;
            if p.contains('$') || p.starts_with("data:") {
                return None;
            }
            let dir = Path::new(&*x.loc.file).parent().unwrap_or(Path::new("."));
            Some(dir.join(p))
        };
        match (cert, key) {
            (Some(c), Some(k)) => match (path(c), path(k)) {
                (Some(cp), Some(kp)) => Some((cp, kp, c.loc.clone())),
                _ => {
                    let why = "certificates named by variables or data: are not carried over";
                    self.plan.note(&c.loc, c.text(), why);
                    None
                }
            },
            _ => {
                let why = "a TLS server without ssl_certificate and ssl_certificate_key";
                self.plan.note(&d.loc, "server", why);
                None
            }
        }
    }

    fn listen(&mut self, server: &mut Server, x: &Directive) {
        let Some(addr) = x.args.first() else {
            self.plan.note(&x.loc, x.text(), "expected an address");
            return;
        };
        if addr.starts_with("unix:") {
            let why = "wsplice listens on TCP addresses only";
            self.plan.note(&x.loc, x.text(), why);
            return;
        }
        let mut opts = ListenOpts::default();
        for p in &x.args[1..] {
            match p.as_str() {
                "ssl" => opts.tls = true,
                "default_server" | "default" => opts.default = true,
                "http2" => self.plan.note(
                    &x.loc,
                    x.text(),
                    "wsplice speaks HTTP/1.1 (WebSockets are upgraded over HTTP/1.1)",
                ),
                "proxy_protocol" => self.plan.note(
                    &x.loc,
                    x.text(),
                    "PROXY protocol in: add [proxy_protocol] listen and trusted (set_real_ip_from) by hand",
                ),
                _ => self.plan.note(&x.loc, format!("listen {addr} {p}"), "no wsplice equivalent"),
            }
        }
        self.plan
            .listen_on(&mut server.listens, addr, opts, &x.loc, &x.text());
    }

    fn server_names(&mut self, server: &mut Server, x: &Directive) {
        for name in &x.args {
            if name.is_empty() || name == "_" {
                continue;
            }
            let lower = name.to_ascii_lowercase();
            let plain = lower
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_');
            if plain && !lower.starts_with('.') {
                server.names.push(lower);
            } else {
                let why = "wildcard and regular-expression names have no wsplice equivalent (host matches one exact name)";
                self.plan.note(&x.loc, format!("server_name {name}"), why);
            }
        }
    }

    fn location(&mut self, server: usize, d: &'a Directive, ctx: &Inherit<'a>) {
        let Some(block) = &d.block else {
            self.plan.note(&d.loc, d.text(), "expected a block");
            return;
        };
        let (modifier, path) = match &d.args[..] {
            [p] => ("", p.as_str()),
            [m, p] => (m.as_str(), p.as_str()),
            _ => {
                self.plan.note(
                    &d.loc,
                    d.text(),
                    "expected `location [=|^~] PREFIX { ... }`",
                );
                return;
            }
        };
        if modifier == "~" || modifier == "~*" || path.starts_with('@') {
            let why = "regular-expression and named locations have no wsplice equivalent (routes match path prefixes)";
            self.plan.note(&d.loc, d.text(), why);
            return;
        }
        let ctx = ctx.child(block);
        let mut target: Option<&Directive> = None;
        let mut notes: Vec<Note> = Vec::new();
        for x in block {
            match x.name.as_str() {
                "proxy_pass" | "uwsgi_pass" if target.is_none() => target = Some(x),
                "location" => {}
                name if inherited(name) => {}
                _ => {
                    let before = self.plan.notes.len();
                    self.other(x);
                    notes.extend(self.plan.notes.drain(before..));
                }
            }
        }
        self.proxied(server, d, path, modifier, target, notes, &ctx);
        for x in block.iter().filter(|x| x.name == "location") {
            self.location(server, x, &ctx);
        }
    }

    /// The route of a location, if it proxies.
    #[allow(clippy::too_many_arguments)]
    fn proxied(
        &mut self,
        server: usize,
        d: &Directive,
        path: &str,
        modifier: &str,
        target: Option<&Directive>,
        notes: Vec<Note>,
        ctx: &Inherit<'a>,
    ) {
        let Some(target) = target else {
            let why = "no proxy_pass or uwsgi_pass here: wsplice only proxies; not carried over";
            self.plan.note(&d.loc, d.text(), why);
            self.plan.notes.extend(notes);
            return;
        };
        let prefix = match prefix(path) {
            Ok(p) => p,
            Err(why) => {
                self.plan.note(&d.loc, d.text(), why);
                self.plan.notes.extend(notes);
                return;
            }
        };
        let source = format!("location {}", d.args.join(" "));
        let mut m = Mapping::new(server, &d.loc, source, prefix);
        m.notes = notes;
        if modifier == "=" {
            let why =
                "an exact-match location becomes a prefix route: paths below it are routed too";
            m.notes.push(Note::new(&d.loc, d.text(), why));
        }
        self.target(&mut m, target, path);
        self.headers(&mut m, ctx);
        self.timeouts(&mut m, ctx);
        self.plan.mappings.push(m);
    }

    /// The backends and the path rule of `proxy_pass URL` or `uwsgi_pass ADDR`.
    fn target(&mut self, m: &mut Mapping, x: &Directive, location: &str) {
        let note = |m: &mut Mapping, why: String| {
            m.notes.push(Note::new(&x.loc, x.text(), why.clone()));
            m.disabled = Some(why);
        };
        let Some(raw) = x.args.first().filter(|_| x.args.len() == 1) else {
            return note(m, "expected one URL".into());
        };
        if raw.contains('$') {
            return note(
                m,
                "a target made of variables has no wsplice equivalent".into(),
            );
        }
        m.uwsgi = x.name == "uwsgi_pass";
        let (scheme, authority, path) = match split_url(raw) {
            Some(u) => (u.scheme, u.authority, u.path),
            None if m.uwsgi => ("uwsgi".to_owned(), raw.clone(), None),
            None => return note(m, "expected http://HOST[:PORT][/PATH]".into()),
        };
        let tls = match (m.uwsgi, scheme.as_str()) {
            (false, "http") | (true, "uwsgi") => false,
            (false, "https") | (true, "suwsgi") => true,
            _ => return note(m, format!("unknown scheme {scheme}://")),
        };
        if tls && m.uwsgi {
            let why =
                "wsplice speaks uwsgi over plain TCP only: point it at the backend's plain port";
            return note(m, why.into());
        }
        if tls {
            m.notes.push(Note::new(&x.loc, x.text(), TLS_BACKEND_NOTE));
            m.tls = Some(if self.upstreams.contains_key(&authority) {
                None
            } else {
                tls_name(&authority)
            });
        }
        if authority.starts_with("unix:") {
            return note(m, "wsplice connects to backends over TCP only".into());
        }
        if let Some(up) = self.upstreams.get(&authority) {
            if up.backends.is_empty() {
                return note(
                    m,
                    format!("upstream {authority} has no server wsplice can use"),
                );
            }
            m.backends = up.backends.clone();
            m.weights = up.weights.clone();
            m.balance = up.balance.clone();
        } else {
            let default_port = match (m.uwsgi, tls) {
                (true, _) => 0,
                (false, true) => 443,
                (false, false) => 80,
            };
            match resolve(&authority, default_port) {
                Ok((addrs, _)) if addrs.iter().any(|a| a.port() == 0) => {
                    return note(m, "a uwsgi address needs a port".into())
                }
                Ok((addrs, resolved)) => {
                    if let Some(n) = resolved {
                        m.notes.push(Note::new(&x.loc, x.text(), n));
                    }
                    m.backends = addrs;
                }
                Err(why) => return note(m, why),
            }
        }
        if m.uwsgi {
            // uwsgi_pass hands the backend the request's own path.
            return;
        }
        m.strip = match path_rule(location, path.as_deref()) {
            Ok(strip) => strip,
            Err(why) => {
                m.notes.push(Note::new(&x.loc, x.text(), why));
                false
            }
        };
        if let Some(why) = slash_note(location, path.as_deref(), m.strip) {
            m.notes.push(Note::new(&x.loc, x.text(), why));
        }
    }

    fn headers(&mut self, m: &mut Mapping, ctx: &Inherit<'a>) {
        for h in ctx.headers.iter().flatten() {
            let (name, value) = match &h.args[..] {
                [n, v] => (n.to_ascii_lowercase(), v.as_str()),
                _ => {
                    m.notes
                        .push(Note::new(&h.loc, h.text(), "expected NAME VALUE"));
                    continue;
                }
            };
            let why = match (name.as_str(), value) {
                ("x-forwarded-for", "$proxy_add_x_forwarded_for") => {
                    m.forwarded_replace = Some(false);
                    continue;
                }
                ("x-forwarded-for", "$remote_addr") => {
                    m.forwarded_replace = Some(true);
                    continue;
                }
                ("x-forwarded-for", _) => {
                    "wsplice appends or replaces with the client address only"
                }
                ("upgrade", _) | ("connection", _) => {
                    "wsplice always sends Upgrade: websocket and Connection: upgrade on an upgrade"
                }
                ("x-real-ip", "$remote_addr") => {
                    "wsplice always sends X-Real-IP: the client address"
                }
                ("x-forwarded-proto", "$scheme") => {
                    "wsplice always sends X-Forwarded-Proto (https behind a TLS listener)"
                }
                ("host", "$host" | "$http_host") => "wsplice passes the client's Host unchanged",
                ("host", _) => "wsplice passes the client's Host unchanged; this value is not sent",
                _ => "wsplice does not add request headers: not carried over",
            };
            m.notes.push(Note::new(&h.loc, h.text(), why));
        }
    }

    fn timeouts(&mut self, m: &mut Mapping, ctx: &Inherit<'a>) {
        let (read, connect) = if m.uwsgi {
            ("uwsgi_read_timeout", "uwsgi_connect_timeout")
        } else {
            ("proxy_read_timeout", "proxy_connect_timeout")
        };
        if let Some(x) = ctx.values.get(read) {
            match x.args.first().and_then(|a| nginx_time(a)) {
                Some(d) => {
                    m.response_timeout = Some(d);
                    self.plan.timeout(true, d, &x.loc, &x.text());
                }
                None => m.notes.push(Note::new(&x.loc, x.text(), "unreadable time")),
            }
        }
        if let Some(x) = ctx.values.get(connect) {
            match x.args.first().and_then(|a| nginx_time(a)) {
                Some(d) => self.plan.timeout(false, d, &x.loc, &x.text()),
                None => m.notes.push(Note::new(&x.loc, x.text(), "unreadable time")),
            }
        }
    }
}

/// `hash KEY`: the keys wsplice can hash.
pub(super) fn hash_key(key: &str) -> Option<String> {
    if key == "$remote_addr" || key == "$binary_remote_addr" {
        return Some("client_ip".into());
    }
    let named = |p: &str| {
        key.strip_prefix(p)
            .filter(|n| !n.is_empty() && !n.contains('$'))
    };
    if let Some(n) = named("$cookie_") {
        return Some(format!("cookie:{n}"));
    }
    if let Some(n) = named("$arg_") {
        return Some(format!("query:{n}"));
    }
    named("$http_").map(|n| format!("header:{}", n.replace('_', "-")))
}
