//! What an import found, in wsplice's terms, and how it becomes routes: which server answers any
//! Host, one route per host and prefix, upgrade-only rules, listeners that would collide.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{duration_text, ImportError, Loc};

/// A directive not carried over, or carried differently: `loc: what: why`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Note {
    pub loc: Loc,
    pub what: String,
    pub why: String,
}

impl Note {
    pub fn new(loc: &Loc, what: impl Into<String>, why: impl Into<String>) -> Note {
        Note {
            loc: loc.clone(),
            what: what.into(),
            why: why.into(),
        }
    }
}

/// One listening address of a server block or virtual host.
#[derive(Debug, Clone)]
pub(crate) struct Listen {
    pub addr: SocketAddr,
    pub tls: bool,
    /// `default_server` (nginx): this server answers Hosts no other names.
    pub default: bool,
    pub loc: Loc,
}

/// How a listening address is used: TLS or not, and (nginx `default_server`) for any Host.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ListenOpts {
    pub tls: bool,
    pub default: bool,
}

/// An nginx `server` or an Apache `VirtualHost` (or the main server).
#[derive(Debug, Clone)]
pub(crate) struct Server {
    pub loc: Loc,
    /// Host names usable as a route's `host` (lower case, no port).
    pub names: Vec<String>,
    pub listens: Vec<Listen>,
    /// Certificate chain and key, where the server has them.
    pub cert: Option<(PathBuf, PathBuf, Loc)>,
}

/// Which requests a mapping takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Only {
    /// Upgrades and plain requests.
    Both,
    /// WebSocket upgrades only (a rewrite under `RewriteCond %{HTTP:Upgrade} websocket`).
    Upgrade,
    /// Plain requests only (the same condition negated).
    Plain,
}

/// `balance` and its companion keys.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) enum Balance {
    #[default]
    RoundRobin,
    LeastConn,
    /// `hash_key`.
    Hash(String),
    /// `cookie_name`, if not wsplice's default.
    Cookie(Option<String>),
}

/// A prefix of one server proxied to backends: what becomes a `[[route]]`.
#[derive(Debug, Clone)]
pub(crate) struct Mapping {
    pub server: usize,
    pub loc: Loc,
    /// What the source said, for the route's comment (`location /notice`).
    pub source: String,
    pub prefix: String,
    pub backends: Vec<SocketAddr>,
    /// Each backend's weight, parallel to `backends` (empty: all weigh 1).
    pub weights: Vec<u32>,
    pub strip: bool,
    pub only: Only,
    /// `Some(true)`: replace; `Some(false)`: append; `None`: wsplice's default (append).
    pub forwarded_replace: Option<bool>,
    pub balance: Balance,
    pub uwsgi: bool,
    /// The backends speak TLS (`https://`, `wss://`): `Some(name)` to check, or `Some(None)`
    /// for an IP address.
    pub tls: Option<Option<String>>,
    pub response_timeout: Option<Duration>,
    /// Notes printed above the route.
    pub notes: Vec<Note>,
    /// Printed as a commented-out route with this reason: it would not work as written.
    pub disabled: Option<String>,
}

impl Mapping {
    pub fn new(server: usize, loc: &Loc, source: String, prefix: String) -> Mapping {
        Mapping {
            server,
            loc: loc.clone(),
            source,
            prefix,
            backends: Vec::new(),
            weights: Vec::new(),
            strip: false,
            only: Only::Both,
            forwarded_replace: None,
            balance: Balance::RoundRobin,
            uwsgi: false,
            tls: None,
            response_timeout: None,
            notes: Vec::new(),
            disabled: None,
        }
    }

    /// Same backends, path and protocol: two rules that send a request to the same place.
    fn same_target(&self, other: &Mapping) -> bool {
        self.backends == other.backends
            && self.weights == other.weights
            && self.strips() == other.strips()
            && self.uwsgi == other.uwsgi
    }

    /// `strip_prefix` as it acts: stripping `/` leaves the path as it is.
    pub fn strips(&self) -> bool {
        self.strip && self.prefix != "/"
    }
}

/// Everything an importer found.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub servers: Vec<Server>,
    pub mappings: Vec<Mapping>,
    pub workers: Option<u64>,
    pub connect: Option<(Duration, Loc)>,
    pub idle: Option<(Duration, Loc)>,
    /// `[tls] session_tickets`.
    pub session_tickets: Option<(bool, Loc)>,
    /// Notes for the head of the file.
    pub notes: Vec<Note>,
}

impl Plan {
    pub fn note(&mut self, loc: &Loc, what: impl Into<String>, why: impl Into<String>) {
        self.notes.push(Note::new(loc, what, why));
    }

    /// A listening address as nginx and Apache write it (`80`, `*`, `*:80`, `IP:PORT`,
    /// `NAME:PORT`) added to `listens`; a name resolved now, or an address that cannot be
    /// listened on, is noted against `what` at `loc`.
    pub fn listen_on(
        &mut self,
        listens: &mut Vec<Listen>,
        spec: &str,
        opts: ListenOpts,
        loc: &Loc,
        what: &str,
    ) {
        let spec = if spec.bytes().all(|b| b.is_ascii_digit()) {
            format!("*:{spec}")
        } else if spec == "*" {
            "*:80".to_owned()
        } else {
            spec.to_owned()
        };
        let result = match spec.strip_prefix("*:") {
            Some(port) => match port.parse::<u16>() {
                Ok(p) => Ok((vec![SocketAddr::from(([0, 0, 0, 0], p))], None)),
                Err(_) => Err(format!("invalid port {port:?}")),
            },
            None => super::resolve(&spec, 80),
        };
        match result {
            Ok((addrs, note)) => {
                if let Some(why) = note {
                    self.note(loc, what, why);
                }
                listens.extend(addrs.into_iter().map(|addr| Listen {
                    addr,
                    tls: opts.tls,
                    default: opts.default,
                    loc: loc.clone(),
                }));
            }
            Err(why) => self.note(loc, what, why),
        }
    }

    /// `[timeouts] connect` or `idle` are global: the longest value given wins, the others are
    /// noted.
    pub fn timeout(&mut self, idle: bool, d: Duration, loc: &Loc, what: &str) {
        let key = if idle { "idle" } else { "connect" };
        let slot = if idle {
            &mut self.idle
        } else {
            &mut self.connect
        };
        match slot {
            Some((have, at)) if *have >= d => {
                if *have != d {
                    let why = format!(
                        "timeouts.{key} is one value for all routes: {} from {at} is kept",
                        duration_text(*have)
                    );
                    self.notes.push(Note::new(loc, what, why));
                }
            }
            Some((have, at)) => {
                let why = format!(
                    "timeouts.{key} is one value for all routes: the longer {} from {loc} is used",
                    duration_text(d)
                );
                let old = Note::new(at, format!("{key} {}", duration_text(*have)), why);
                self.notes.push(old);
                *slot = Some((d, loc.clone()));
            }
            None => *slot = Some((d, loc.clone())),
        }
    }
}

/// One `[[route]]` to print.
#[derive(Debug)]
pub(crate) struct RouteOut<'a> {
    pub m: &'a Mapping,
    pub host: Option<String>,
    /// `http = false`.
    pub upgrade_only: bool,
    pub notes: Vec<Note>,
}

/// The plan resolved into what the TOML holds.
#[derive(Debug)]
pub(crate) struct Resolved<'a> {
    pub listen: Vec<SocketAddr>,
    pub tls_listen: Vec<SocketAddr>,
    pub certs: Vec<(PathBuf, PathBuf, Loc)>,
    pub routes: Vec<RouteOut<'a>>,
    /// Printed commented out, with their reason.
    pub disabled: Vec<&'a Mapping>,
    pub notes: Vec<Note>,
}

pub(crate) fn resolve<'a>(plan: &'a Plan, file: &str) -> Result<Resolved<'a>, ImportError> {
    let mut notes = Vec::new();
    let (listen, tls_listen) = listeners(plan, &mut notes);
    let defaults = default_servers(plan);
    let mut certs: Vec<(PathBuf, PathBuf, Loc)> = Vec::new();
    for s in &plan.servers {
        if let Some(pair) = &s.cert {
            let serves_tls = s.listens.iter().any(|l| tls_listen.contains(&l.addr));
            if serves_tls && !certs.iter().any(|c| c.0 == pair.0 && c.1 == pair.1) {
                certs.push(pair.clone());
            }
        }
    }
    let mut tls_listen = tls_listen;
    if certs.is_empty() && !tls_listen.is_empty() {
        for s in &plan.servers {
            for l in s.listens.iter().filter(|l| l.tls) {
                let why = "TLS listener without a certificate (ssl_certificate / SSLCertificateFile): not carried over";
                notes.push(Note::new(&l.loc, format!("listen {}", l.addr), why));
            }
        }
        tls_listen.clear();
    }
    if listen.is_empty() && tls_listen.is_empty() {
        return Err(ImportError {
            file: file.to_owned(),
            line: None,
            message: "no listener wsplice can use (listen / VirtualHost addresses)".into(),
        });
    }
    let (routes, disabled) = routes(plan, &defaults, &mut notes);
    for (i, s) in plan.servers.iter().enumerate() {
        if !plan
            .mappings
            .iter()
            .any(|m| m.server == i && m.disabled.is_none())
        {
            let why = "nothing proxied here: wsplice routes do not depend on the listener, so its addresses serve the other servers' routes";
            notes.push(Note::new(&s.loc, "server", why));
        }
    }
    if routes.is_empty() {
        return Err(ImportError {
            file: file.to_owned(),
            line: None,
            message: format!(
                "nothing to route: no proxy_pass, uwsgi_pass, ProxyPass or RewriteRule [P] that wsplice can serve ({} directives not mappable)",
                plan.notes.len() + plan.mappings.iter().map(|m| m.notes.len()).sum::<usize>()
            ),
        });
    }
    Ok(Resolved {
        listen,
        tls_listen,
        certs,
        routes,
        disabled,
        notes,
    })
}

/// Plain and TLS addresses, once each: one port speaks one of them, and a wildcard address
/// covers the specific ones of its port (as nginx binds only the wildcard).
fn listeners(plan: &Plan, notes: &mut Vec<Note>) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
    let mut all: Vec<&Listen> = Vec::new();
    for l in plan.servers.iter().flat_map(|s| &s.listens) {
        match all.iter().find(|a| a.addr == l.addr) {
            Some(first) if first.tls != l.tls => {
                let why = format!(
                    "{} is {} at {}; one port speaks either TLS or plain HTTP: kept as there",
                    l.addr,
                    if first.tls { "TLS" } else { "plain" },
                    first.loc
                );
                notes.push(Note::new(&l.loc, format!("listen {}", l.addr), why));
            }
            Some(_) => {}
            None => all.push(l),
        }
    }
    let covered = |l: &Listen| {
        !l.addr.ip().is_unspecified()
            && all.iter().any(|w| {
                w.addr.ip().is_unspecified()
                    && w.addr.port() == l.addr.port()
                    && w.addr.is_ipv4() == l.addr.is_ipv4()
            })
    };
    let mut plain = Vec::new();
    let mut tls = Vec::new();
    for l in &all {
        if covered(l) {
            let why = "the wildcard address of the same port is listened on already";
            notes.push(Note::new(&l.loc, format!("listen {}", l.addr), why));
            continue;
        }
        if l.tls {
            tls.push(l.addr);
        } else {
            plain.push(l.addr);
        }
    }
    (plain, tls)
}

/// Servers that answer any Host on some address: the one marked default there, else the first.
fn default_servers(plan: &Plan) -> Vec<bool> {
    let mut defaults = vec![false; plan.servers.len()];
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for s in &plan.servers {
        for l in &s.listens {
            if !addrs.contains(&l.addr) {
                addrs.push(l.addr);
            }
        }
    }
    for addr in addrs {
        let on: Vec<usize> = (0..plan.servers.len())
            .filter(|&i| plan.servers[i].listens.iter().any(|l| l.addr == addr))
            .collect();
        let marked = on.iter().copied().find(|&i| {
            plan.servers[i]
                .listens
                .iter()
                .any(|l| l.addr == addr && l.default)
        });
        if let Some(i) = marked.or(on.first().copied()) {
            defaults[i] = true;
        }
    }
    defaults
}

/// A route's identity: host (`None`: any) and prefix.
type RouteKey = (Option<String>, String);

fn routes<'a>(
    plan: &'a Plan,
    defaults: &[bool],
    notes: &mut Vec<Note>,
) -> (Vec<RouteOut<'a>>, Vec<&'a Mapping>) {
    // (host, prefix) -> the mappings for it, in source order.
    let mut groups: Vec<(RouteKey, Vec<&'a Mapping>)> = Vec::new();
    let mut disabled = Vec::new();
    let mut noted = vec![false; plan.servers.len()];
    for m in &plan.mappings {
        if m.disabled.is_some() {
            disabled.push(m);
            continue;
        }
        let server = &plan.servers[m.server];
        let hosts: Vec<Option<String>> = if defaults[m.server] || server.names.is_empty() {
            if !server.names.is_empty() && !noted[m.server] {
                noted[m.server] = true;
                let why = format!(
                    "this server is the default of its address, so it answers every Host: its routes match any Host (add host = \"{}\" to narrow them)",
                    server.names[0]
                );
                notes.push(Note::new(
                    &server.loc,
                    format!("server {}", server.names.join(" ")),
                    why,
                ));
            }
            vec![None]
        } else {
            server.names.iter().cloned().map(Some).collect()
        };
        for host in hosts {
            let key = (host, m.prefix.clone());
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, list)) => list.push(m),
                None => groups.push((key, vec![m])),
            }
        }
    }
    let mut out = Vec::new();
    for ((host, _), list) in groups {
        out.push(merge(host, &list));
    }
    (out, disabled)
}

/// One route out of the mappings for one host and prefix.
fn merge<'a>(host: Option<String>, list: &[&'a Mapping]) -> RouteOut<'a> {
    let up = list.iter().copied().find(|m| m.only != Only::Plain);
    let plain = list.iter().copied().find(|m| m.only != Only::Upgrade);
    let mut notes = Vec::new();
    let (chosen, upgrade_only) = match (up, plain) {
        (Some(u), Some(p)) if std::ptr::eq(u, p) => (u, false),
        (Some(u), Some(p)) if u.same_target(p) => (u, false),
        (Some(u), Some(p)) => {
            let why = "wsplice sends a prefix's plain requests and upgrades to the same backends: plain requests here are answered 426 (http = false), only upgrades are routed";
            notes.push(Note::new(&p.loc, p.source.clone(), why));
            (u, true)
        }
        (Some(u), None) => {
            if u.only == Only::Upgrade {
                let why = "applies to WebSocket upgrades only: plain requests to this prefix are answered 426 (http = false)";
                notes.push(Note::new(&u.loc, u.source.clone(), why));
            }
            (u, u.only == Only::Upgrade)
        }
        (None, Some(p)) => {
            let why = "applies to plain requests only; WebSocket upgrades to this prefix are routed here too";
            notes.push(Note::new(&p.loc, p.source.clone(), why));
            (p, false)
        }
        (None, None) => unreachable!("a group has at least one mapping"),
    };
    for m in list {
        let m = *m;
        if !std::ptr::eq(m, chosen) {
            // What was said about a rule that does not become the route still stands here.
            notes.extend(m.notes.iter().cloned());
        }
        // The chosen one, and the first of each kind, are accounted for above.
        let taken = std::ptr::eq(m, chosen)
            || up.is_some_and(|u| std::ptr::eq(m, u))
            || plain.is_some_and(|p| std::ptr::eq(m, p));
        if taken {
            continue;
        }
        let why = if m.same_target(chosen) {
            format!("the same prefix and backends as {}: one route", chosen.loc)
        } else {
            format!(
                "the same host and prefix as {}, which comes first: wsplice has one route per host and prefix",
                chosen.loc
            )
        };
        notes.push(Note::new(&m.loc, m.source.clone(), why));
    }
    RouteOut {
        m: chosen,
        host,
        upgrade_only,
        notes,
    }
}
