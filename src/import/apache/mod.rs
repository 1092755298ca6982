//! Apache httpd's sections in wsplice's terms: `VirtualHost`s become listeners and certificates,
//! `ProxyPass` and `RewriteRule ... [P]` become routes, `<Proxy balancer://...>` their backends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::apache_parse::Node;
use super::plan::{Balance, Listen, ListenOpts, Mapping, Note, Only, Plan, Server};
use super::rules::{path_rule, prefix, rewrite_pattern, seconds, slash_note, upgrade_cond};
use super::{resolve, split_url, tls_name, ImportError, Loc, TLS_BACKEND_NOTE};

mod proxy;

/// A `balancer://NAME` cluster.
#[derive(Debug, Default)]
struct Balancer {
    backends: Vec<SocketAddr>,
    /// Parallel to `backends` (`loadfactor`).
    weights: Vec<u32>,
    balance: Balance,
}

/// A virtual host (or the main server) while it is read.
#[derive(Debug, Default)]
struct Scope<'a> {
    names: Vec<String>,
    listens: Vec<Listen>,
    ssl: Option<bool>,
    cert: Option<&'a Node>,
    key: Option<&'a Node>,
    timeout: Option<(Duration, Loc, String)>,
    mappings: Vec<Mapping>,
    /// RewriteConds waiting for their RewriteRule.
    conds: Vec<&'a Node>,
    /// `RewriteEngine on` in this scope (Apache does not inherit it into virtual hosts).
    rewrite: bool,
}

struct Importer {
    plan: Plan,
    balancers: HashMap<String, Balancer>,
}

pub(crate) fn plan(tree: &[Node]) -> Result<Plan, ImportError> {
    let mut imp = Importer {
        plan: Plan::default(),
        balancers: HashMap::new(),
    };
    // Balancers first: a ProxyPass may name one defined further down, or in another host.
    imp.balancers_in(tree);
    let mut main = Scope {
        rewrite: rewrite_on(tree),
        ..Scope::default()
    };
    let mut hosts = Vec::new();
    imp.walk(tree, &mut main, &mut hosts);
    let index = imp.plan.servers.len();
    let global_timeout = main.timeout.clone();
    if !main.mappings.is_empty() {
        let loc = main.mappings[0].loc.clone();
        if main.listens.is_empty() {
            let why = "no Listen: the main server is taken to listen on *:80";
            imp.plan.note(&loc, "Listen", why);
            main.listens.push(Listen {
                addr: SocketAddr::from(([0, 0, 0, 0], 80)),
                tls: false,
                default: false,
                loc: loc.clone(),
            });
        }
        imp.finish(main, &loc, index, None);
    }
    for host in hosts {
        let index = imp.plan.servers.len();
        let children = host.children.as_deref().unwrap_or_default();
        let mut scope = Scope {
            rewrite: rewrite_on(children),
            ..Scope::default()
        };
        imp.virtual_host(host, &mut scope);
        let mut nested = Vec::new();
        imp.walk(children, &mut scope, &mut nested);
        for n in nested {
            imp.plan.note(
                &n.loc,
                n.text(),
                "a VirtualHost inside a VirtualHost is not valid",
            );
        }
        imp.finish(scope, &host.loc, index, global_timeout.clone());
    }
    Ok(imp.plan)
}

/// Whether `RewriteEngine on` holds in a scope: wherever it stands in it (the last one wins),
/// not inherited by virtual hosts.
fn rewrite_on(nodes: &[Node]) -> bool {
    let mut on = false;
    for n in nodes {
        if n.is("RewriteEngine") && n.children.is_none() {
            on = n.args.first().is_some_and(|a| a.eq_ignore_ascii_case("on"));
        } else if n.is("IfModule") || n.is("IfDefine") || n.is("IfVersion") {
            if let Some(inner) = &n.children {
                on = rewrite_on(inner) || on;
            }
        }
    }
    on
}

/// `balancer://NAME` as the balancers map keys it.
fn balancer_name(url: &str) -> Option<String> {
    let u = split_url(url)?;
    (u.scheme == "balancer").then(|| u.authority.to_ascii_lowercase())
}

impl Importer {
    fn balancers_in(&mut self, nodes: &[Node]) {
        for n in nodes {
            let inner = n.children.as_deref().unwrap_or_default();
            if n.is("Proxy") {
                if let Some(name) = n.args.first().and_then(|a| balancer_name(a)) {
                    for m in inner {
                        if m.is("BalancerMember") {
                            self.member(&name, m, &m.args);
                        } else if m.is("ProxySet") {
                            self.proxy_set(&name, m, &m.args);
                        }
                    }
                    continue;
                }
            }
            let named = n.args.first().and_then(|a| balancer_name(a));
            match named {
                Some(name) if n.is("BalancerMember") => self.member(&name, n, &n.args[1..]),
                Some(name) if n.is("ProxySet") => self.proxy_set(&name, n, &n.args[1..]),
                _ => self.balancers_in(inner),
            }
        }
    }

    fn member(&mut self, name: &str, n: &Node, args: &[String]) {
        let Some(url) = args.first() else {
            self.plan.note(&n.loc, n.text(), "expected a URL");
            return;
        };
        let mut weight = 1;
        for p in &args[1..] {
            let (key, value) = p.split_once('=').unwrap_or((p.as_str(), ""));
            let why = match key.to_ascii_lowercase().as_str() {
                // Apache's loadfactor is 1 to 100: a weight as wsplice reads it.
                "loadfactor" => match value.parse::<u32>() {
                    Ok(w @ 1..=256) => {
                        weight = w;
                        continue;
                    }
                    _ => "a weight wsplice takes is 1 to 256: this member weighs 1",
                },
                "route" => "the route name belongs to Apache's stickysession; wsplice's cookie names each backend itself",
                "status" if value.contains('H') || value.contains('h') => {
                    "a hot standby: wsplice has no standby backends, left out"
                }
                _ => "no wsplice equivalent",
            };
            self.plan
                .note(&n.loc, format!("BalancerMember {url} {p}"), why);
            if why.ends_with("left out") {
                return;
            }
        }
        let Some(u) = split_url(url) else {
            self.plan
                .note(&n.loc, n.text(), "expected SCHEME://HOST[:PORT]");
            return;
        };
        if !matches!(u.scheme.as_str(), "http" | "ws") {
            let why = "wsplice speaks plain HTTP/WebSocket to backends (no TLS, AJP or FastCGI): member left out";
            self.plan.note(&n.loc, n.text(), why);
            return;
        }
        if u.path.as_deref().is_some_and(|p| p != "/") {
            let why = "a member's own path is not carried over: the route's path rule applies";
            self.plan.note(&n.loc, n.text(), why);
        }
        match resolve(&u.authority, 80) {
            Ok((addrs, note)) => {
                if let Some(why) = note {
                    self.plan.note(&n.loc, n.text(), why);
                }
                let b = self.balancers.entry(name.to_owned()).or_default();
                for a in addrs {
                    if !b.backends.contains(&a) {
                        b.backends.push(a);
                        b.weights.push(weight);
                    }
                }
            }
            Err(why) => self.plan.note(&n.loc, n.text(), why),
        }
    }

    fn proxy_set(&mut self, name: &str, n: &Node, args: &[String]) {
        for p in args {
            let (key, value) = p.split_once('=').unwrap_or((p.as_str(), ""));
            let b = self.balancers.entry(name.to_owned()).or_default();
            match (key.to_ascii_lowercase().as_str(), value.to_ascii_lowercase().as_str()) {
                ("lbmethod", "byrequests") => b.balance = Balance::RoundRobin,
                ("lbmethod", "bybusyness") => b.balance = Balance::LeastConn,
                ("stickysession", v) if !v.is_empty() => {
                    let first = value.split('|').next().unwrap_or(value).to_owned();
                    b.balance = Balance::Cookie(Some(first));
                    let why = "balance = \"cookie\": wsplice sets this cookie itself, naming the backend (Apache read the backend's own cookie and its route)";
                    self.plan.note(&n.loc, format!("ProxySet {p}"), why);
                }
                ("lbmethod", _) => self.plan.note(
                    &n.loc,
                    format!("ProxySet {p}"),
                    "wsplice balances round robin, least connections, by hash or by cookie: round robin",
                ),
                _ => self.plan.note(&n.loc, format!("ProxySet {p}"), "no wsplice equivalent"),
            }
        }
    }

    /// The directives of one scope; VirtualHosts met at the top are collected into `hosts`.
    fn walk<'a>(&mut self, nodes: &'a [Node], scope: &mut Scope<'a>, hosts: &mut Vec<&'a Node>) {
        for n in nodes {
            let inner = n.children.as_deref();
            let name = n.name.to_ascii_lowercase();
            match (name.as_str(), inner) {
                ("virtualhost", Some(_)) => hosts.push(n),
                ("ifmodule" | "ifdefine" | "ifversion" | "ifdirective", Some(inner)) => {
                    self.walk(inner, scope, hosts)
                }
                ("proxy", Some(_)) if n.args.first().and_then(|a| balancer_name(a)).is_some() => {}
                ("location", Some(inner)) => self.location(n, inner, scope),
                ("balancermember" | "proxyset", None) => {
                    if n.args.first().and_then(|a| balancer_name(a)).is_none() {
                        self.plan.note(
                            &n.loc,
                            n.text(),
                            "outside a <Proxy balancer://...> it needs the balancer's URL first",
                        );
                    }
                }
                ("listen", None) => self.listen(n, scope),
                ("servername" | "serveralias", None) => self.names(n, scope),
                ("sslengine", None) => {
                    scope.ssl = n.args.first().map(|a| a.eq_ignore_ascii_case("on"))
                }
                ("sslcertificatefile", None) => scope.cert = Some(n),
                ("sslcertificatekeyfile", None) => scope.key = Some(n),
                ("proxytimeout", None) => match n.args.first().and_then(|a| seconds(a)) {
                    Some(d) => scope.timeout = Some((d, n.loc.clone(), n.text())),
                    None => self.plan.note(&n.loc, n.text(), "expected seconds"),
                },
                ("proxypass", None) => match &n.args[..] {
                    [path, url, params @ ..] => self.proxy_pass(n, path, url, params, scope),
                    _ => self
                        .plan
                        .note(&n.loc, n.text(), "expected ProxyPass PATH URL"),
                },
                ("proxypassreverse", None) => self.reverse(n, scope),
                ("rewritecond", None) => scope.conds.push(n),
                ("rewriterule", None) => {
                    let conds = std::mem::take(&mut scope.conds);
                    if scope.rewrite {
                        self.rewrite(n, &conds, scope);
                    } else {
                        let why = "RewriteEngine is not on here, so Apache ignores this rule: not carried over";
                        self.plan.note(&n.loc, n.text(), why);
                    }
                }
                ("rewriteengine", None) => {}
                _ => self.other(n),
            }
        }
    }

    /// A directive or section with no wsplice meaning: one note.
    fn other(&mut self, n: &Node) {
        let name = n.name.to_ascii_lowercase();
        let why = match name.as_str() {
            "proxypassmatch" | "locationmatch" => {
                "regular expressions have no wsplice equivalent (routes match path prefixes)"
            }
            "proxypreservehost" => "wsplice always passes the client's Host unchanged",
            "proxyrequests" => "wsplice is a reverse proxy only, never a forward proxy",
            "proxyaddheaders" => "wsplice always sends X-Forwarded-For, X-Real-IP and X-Forwarded-Proto",
            "sslcertificatechainfile" => {
                "put the chain after the certificate in the SSLCertificateFile file: wsplice reads the chain from there"
            }
            "sslproxyengine" => "wsplice speaks TLS to https:// and wss:// backends by their scheme",
            "requestheader" => "wsplice does not add or change request headers: not carried over",
            "header" => "wsplice does not add response headers",
            "documentroot" | "directory" | "directorymatch" | "files" | "filesmatch"
            | "directoryindex" | "alias" => "static files: wsplice only proxies",
            "errorlog" | "loglevel" => "wsplice logs errors to stderr",
            "customlog" | "logformat" | "transferlog" => {
                "not carried over: wsplice has its own access log ([access_log] path, format)"
            }
            "loadmodule" | "serverroot" | "user" | "group" | "pidfile" | "mutex" => {
                "process management: run wsplice under systemd (tools/wsplice.service)"
            }
            "redirect" | "redirectmatch" => "redirects: wsplice routes by path prefix only",
            "proxy" => "access control for proxied URLs has no wsplice equivalent",
            "keepalive" | "keepalivetimeout" | "maxkeepaliverequests" => {
                "wsplice's client keep-alive is timeouts.client_idle (60s by default)"
            }
            "timeout" => "wsplice's timeouts are [timeouts] handshake, idle and client_idle",
            "serveradmin" | "servertokens" | "serversignature" => "no wsplice equivalent",
            _ if name.starts_with("ssl") => {
                "wsplice's TLS settings are fixed (rustls: TLS 1.2 and 1.3, modern ciphers)"
            }
            _ => "no wsplice equivalent",
        };
        self.plan.note(&n.loc, n.text(), why);
    }

    fn listen(&mut self, n: &Node, scope: &mut Scope<'_>) {
        let Some(addr) = n.args.first() else {
            return self.plan.note(&n.loc, n.text(), "expected an address");
        };
        let tls = n
            .args
            .get(1)
            .is_some_and(|p| p.eq_ignore_ascii_case("https"));
        self.address(n, addr, tls, scope);
    }

    /// A Listen or VirtualHost address: `80`, `*:80`, `_default_:443`, `IP:PORT`, `NAME:PORT`.
    fn address(&mut self, n: &Node, addr: &str, tls: bool, scope: &mut Scope<'_>) {
        let spec = addr.replace("_default_", "*");
        let opts = ListenOpts {
            tls,
            default: false,
        };
        self.plan
            .listen_on(&mut scope.listens, &spec, opts, &n.loc, &n.text());
    }

    fn virtual_host(&mut self, n: &Node, scope: &mut Scope<'_>) {
        if n.args.is_empty() {
            self.plan
                .note(&n.loc, n.text(), "a VirtualHost needs an address");
        }
        for a in &n.args {
            self.address(n, a, false, scope);
        }
    }

    fn names(&mut self, n: &Node, scope: &mut Scope<'_>) {
        let server_name = n.is("ServerName");
        for raw in &n.args {
            let name = raw.split_once("://").map_or(raw.as_str(), |(_, rest)| rest);
            // ServerName may carry a port: the host is the part before it.
            let name = if server_name {
                name.rsplit_once(':').map_or(name, |(h, _)| h)
            } else {
                name
            };
            let lower = name.to_ascii_lowercase();
            let plain = !lower.is_empty()
                && lower
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_');
            if plain {
                if !scope.names.contains(&lower) {
                    scope.names.push(lower);
                }
            } else {
                let why = "wildcard names have no wsplice equivalent (host matches one exact name)";
                self.plan.note(&n.loc, format!("{} {raw}", n.name), why);
            }
        }
    }

    /// The scope's server, certificate and mappings into the plan.
    fn finish(
        &mut self,
        mut scope: Scope<'_>,
        loc: &Loc,
        index: usize,
        inherited: Option<(Duration, Loc, String)>,
    ) {
        let path = |x: &Node| {
            let p = x.args.first()?;
            let dir = Path::new(&*x.loc.file).parent().unwrap_or(Path::new("."));
            Some(dir.join(p))
        };
        let cert: Option<(PathBuf, PathBuf, Loc)> = match (scope.cert, scope.key) {
            (Some(c), Some(k)) => path(c).zip(path(k)).map(|(a, b)| (a, b, c.loc.clone())),
            (Some(c), None) => {
                let why = "no SSLCertificateKeyFile: the key is read from the certificate file";
                self.plan.note(&c.loc, c.text(), why);
                path(c).map(|p| (p.clone(), p, c.loc.clone()))
            }
            _ => None,
        };
        let tls = match scope.ssl {
            Some(on) => on,
            None => cert.is_some() && scope.listens.iter().any(|l| l.addr.port() == 443),
        };
        if tls {
            scope.listens.iter_mut().for_each(|l| l.tls = true);
            if cert.is_none() {
                self.plan
                    .note(loc, "VirtualHost", "TLS without SSLCertificateFile");
            }
        }
        let timeout = scope.timeout.or(inherited);
        shadowed(&mut scope.mappings);
        for mut m in scope.mappings {
            m.server = index;
            if let (Some((d, at, text)), None) = (&timeout, m.response_timeout) {
                m.response_timeout = Some(*d);
                self.plan.timeout(true, *d, at, text);
            }
            self.plan.mappings.push(m);
        }
        for c in scope.conds {
            self.plan.note(
                &c.loc,
                c.text(),
                "a RewriteCond without a RewriteRule after it",
            );
        }
        self.plan.servers.push(Server {
            loc: loc.clone(),
            names: scope.names,
            listens: scope.listens,
            cert: if tls { cert } else { None },
        });
    }
}

/// Apache takes the first ProxyPass that matches, in the order written; wsplice the longest
/// prefix. A longer prefix below a shorter one that covers it was never reached in Apache.
fn shadowed(mappings: &mut [Mapping]) {
    let proxy_pass = |m: &Mapping| m.source.starts_with("ProxyPass") && m.disabled.is_none();
    for i in 0..mappings.len() {
        let earlier = mappings[..i].iter().find(|e| {
            proxy_pass(e)
                && e.prefix != mappings[i].prefix
                && (e.prefix == "/" || mappings[i].prefix.starts_with(&format!("{}/", e.prefix)))
        });
        if let (Some(e), true) = (earlier, proxy_pass(&mappings[i])) {
            let why = format!(
                "Apache matched the earlier ProxyPass {} at {} first, so this one was never used; wsplice routes by the longest prefix, so here it is (put it first in Apache too, as its documentation asks)",
                e.prefix, e.loc
            );
            let note = Note::new(&mappings[i].loc, mappings[i].source.clone(), why);
            mappings[i].notes.push(note);
        }
    }
}
