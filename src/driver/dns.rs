//! Backends by name: one resolver thread (hickory-resolver on its own current-thread tokio
//! runtime, never in a worker's event loop) looks every `backends` name up, again when its
//! records' TTL runs out (bounded by `[dns] min_ttl`/`max_ttl`), and reports a changed address
//! set to whoever applies it (the main thread: a reload of the route tables, so addresses that
//! appear join the rotation and addresses that disappear get no new connections while their
//! tunnels stay).
//!
//! ```text
//!   resolver thread ──Resolved──▶ main thread ──▶ Server::reload (threads)
//!                                              └▶ supervisor: `dns` + `reload` to each process
//! ```
//!
//! A lookup that fails (timeout, SERVFAIL, no records) keeps the name's last good addresses
//! and says so on stderr; it is retried after `min_ttl`, doubling up to 30 s (or `max_ttl`).

use crate::config::{srv_weights, BackendName, Dns, Resolved};
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::{Resolver as Hickory, TokioResolver};
use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::mpsc::{channel, sync_channel, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::time::{Duration, Instant};

/// Called on the resolver thread with the whole table when a name's addresses changed.
pub type OnChange = Box<dyn Fn(Resolved) + Send>;

/// The longest pause between two tries of a name that does not resolve.
const RETRY_CAP: Duration = Duration::from_secs(30);

/// A request to the resolver thread: look these names up from now on; the answer is the table
/// once the new ones were tried.
struct Names(Vec<BackendName>, SyncSender<Resolved>);

/// The running resolver thread (it ends when this is dropped).
pub struct Resolver {
    tx: Sender<Names>,
    /// How long [`Resolver::update`] waits for the thread's answer.
    wait: Duration,
}

impl Resolver {
    /// Starts the thread and waits until every name was tried once; returns what they resolved
    /// to. A name that did not resolve is missing from the table (its routes have no address
    /// from it and answer 502 while that lasts), is logged and is tried again. Fails only when
    /// the resolver cannot be set up (no /etc/resolv.conf and no `[dns] servers`).
    pub fn start(
        dns: &Dns,
        names: Vec<BackendName>,
        on_change: OnChange,
    ) -> io::Result<(Resolver, Resolved)> {
        let (tx, rx) = channel();
        let (first_tx, first) = sync_channel(1);
        let dns_cfg = dns.clone();
        std::thread::Builder::new()
            .name("wsplice-dns".into())
            .spawn(move || run(dns_cfg, names, rx, first_tx, on_change))?;
        let wait = wait_for(dns);
        let table = first
            .recv()
            .map_err(|_| io::Error::other("the DNS resolver thread stopped"))??;
        Ok((Resolver { tx, wait }, table))
    }

    /// Looks up `names` from now on (after a reload); returns the table once the new ones were
    /// tried (the last known table if the thread does not answer in time).
    pub fn update(&self, names: Vec<BackendName>) -> Option<Resolved> {
        let (reply, answer) = sync_channel(1);
        self.tx.send(Names(names, reply)).ok()?;
        answer.recv_timeout(self.wait).ok()
    }
}

/// Enough for one round of lookups of a few names, each with its retries.
fn wait_for(dns: &Dns) -> Duration {
    dns.timeout * 8 + Duration::from_secs(2)
}

/// One name's state.
struct Entry {
    /// The last good answer, sorted: addresses and their weights (see `srv_weights`).
    addrs: Option<Vec<(SocketAddr, u32)>>,
    due: Instant,
    failures: u32,
}

struct State {
    dns: Dns,
    resolver: TokioResolver,
    /// Which servers are asked, for the log.
    servers: String,
    names: BTreeMap<BackendName, Entry>,
}

fn run(
    dns: Dns,
    names: Vec<BackendName>,
    rx: Receiver<Names>,
    first: SyncSender<io::Result<Resolved>>,
    on_change: OnChange,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = first.send(Err(e));
            return;
        }
    };
    let _in_runtime = rt.enter();
    let (resolver, servers) = match build(&dns) {
        Ok(x) => x,
        Err(e) => {
            let _ = first.send(Err(e));
            return;
        }
    };
    let mut state = State {
        dns,
        resolver,
        servers,
        names: BTreeMap::new(),
    };
    state.set_names(names);
    rt.block_on(state.refresh());
    if first.send(Ok(state.table())).is_err() {
        return;
    }
    loop {
        let next = state.names.values().map(|e| e.due).min();
        let got = match next {
            Some(due) => rx.recv_timeout(due.saturating_duration_since(Instant::now())),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match got {
            Ok(Names(names, reply)) => {
                state.set_names(names);
                rt.block_on(state.refresh());
                let _ = reply.send(state.table());
            }
            Err(RecvTimeoutError::Timeout) => {
                let before = state.table();
                rt.block_on(state.refresh());
                let after = state.table();
                if after != before {
                    on_change(after);
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// The resolver: `[dns] servers` if set, else the system's (/etc/resolv.conf); and a
/// description of the servers for the log.
fn build(dns: &Dns) -> io::Result<(TokioResolver, String)> {
    let (config, mut opts) = if dns.servers.is_empty() {
        hickory_resolver::system_conf::read_system_conf().map_err(|e| {
            io::Error::other(format!(
                "backend names need a DNS server: cannot read the system's (/etc/resolv.conf): {e}; set `servers` in [dns]"
            ))
        })?
    } else {
        let servers = dns
            .servers
            .iter()
            .map(|a| {
                let (mut udp, mut tcp) = (ConnectionConfig::udp(), ConnectionConfig::tcp());
                udp.port = a.port();
                tcp.port = a.port();
                NameServerConfig::new(a.ip(), true, vec![udp, tcp])
            })
            .collect();
        (
            ResolverConfig::from_name_servers(servers),
            Default::default(),
        )
    };
    let servers = config
        .name_servers()
        .iter()
        .map(|s| {
            let port = s.connections.first().map_or(53, |c| c.port);
            SocketAddr::new(s.ip, port).to_string()
        })
        .collect::<Vec<_>>()
        .join(", ");
    let servers = if dns.servers.is_empty() {
        format!("the system's servers ({servers}, from /etc/resolv.conf)")
    } else {
        format!("server {servers} ([dns] servers)")
    };
    opts.timeout = dns.timeout;
    opts.attempts = 2;
    let resolver = Hickory::builder_with_config(config, TokioRuntimeProvider::default())
        .with_options(opts)
        .build()
        .map_err(|e| io::Error::other(format!("cannot set up the DNS resolver: {e}")))?;
    Ok((resolver, servers))
}

impl State {
    fn set_names(&mut self, names: Vec<BackendName>) {
        let now = Instant::now();
        self.names.retain(|n, _| names.contains(n));
        for n in names {
            self.names.entry(n).or_insert(Entry {
                addrs: None,
                due: now,
                failures: 0,
            });
        }
    }

    /// What every name resolved to last (names that never did are missing).
    fn table(&self) -> Resolved {
        self.names
            .iter()
            .filter_map(|(n, e)| e.addrs.clone().map(|a| (n.clone(), a)))
            .collect()
    }

    /// Looks up every name that is due.
    async fn refresh(&mut self) {
        let now = Instant::now();
        // Each round asks the servers: the records' own TTL (within bounds) says when next.
        self.resolver.clear_cache();
        let due: Vec<BackendName> = self
            .names
            .iter()
            .filter(|(_, e)| e.due <= now)
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            let got = self.lookup(&name).await;
            let (min, max) = (self.dns.min_ttl, self.dns.max_ttl);
            let Some(e) = self.names.get_mut(&name) else {
                continue;
            };
            match got {
                Ok((mut addrs, ttl)) => {
                    // An address twice (two records naming one target): its first weight.
                    addrs.sort_by_key(|a| a.0);
                    addrs.dedup_by_key(|a| a.0);
                    e.due = Instant::now() + ttl.clamp(min, max);
                    e.failures = 0;
                    if e.addrs.as_ref() != Some(&addrs) {
                        eprintln!(
                            "wsplice: dns: {name} {}",
                            change(e.addrs.as_deref(), &addrs)
                        );
                        e.addrs = Some(addrs);
                    }
                }
                Err(why) => {
                    let wait = (min * 2u32.saturating_pow(e.failures.min(16)))
                        .min(max.min(RETRY_CAP).max(min));
                    e.failures += 1;
                    e.due = Instant::now() + wait;
                    let keeps = match &e.addrs {
                        Some(a) => format!("keeping its last good addresses ({})", list(a)),
                        None => "it has no address yet: its routes answer 502 unless they have other backends".into(),
                    };
                    eprintln!(
                        "wsplice: dns: cannot resolve {name} via {}: {why}; {keeps}; trying again in {}",
                        self.servers,
                        humantime::format_duration(wait)
                    );
                }
            }
        }
    }

    /// The addresses of `name`, each with its weight, and how long they may be kept (the
    /// records' smallest TTL).
    async fn lookup(
        &self,
        name: &BackendName,
    ) -> Result<(Vec<(SocketAddr, u32)>, Duration), String> {
        match name {
            BackendName::Host { host, port } => {
                let (addrs, ttl) = self.host(host, *port).await?;
                Ok((addrs.into_iter().map(|a| (a, 1)).collect(), ttl))
            }
            BackendName::Srv(srv) => {
                let found = self
                    .resolver
                    .lookup(srv.as_str(), RecordType::SRV)
                    .await
                    .map_err(|e| e.to_string())?;
                let mut ttl = u32::MAX;
                let mut targets = Vec::new();
                for r in found.answers() {
                    if let RData::SRV(s) = &r.data {
                        ttl = ttl.min(r.ttl);
                        targets.push((s.priority, s.target.to_string(), s.port, s.weight));
                    }
                }
                // Lower priority first (RFC 2782): the others are the backups of a backup plan
                // wsplice does not keep; only the best priority's targets are used, weighted
                // by their records' weights (each address of a target by its record's).
                let best = targets.iter().map(|t| t.0).min().ok_or("no SRV records")?;
                let mut addrs = Vec::new();
                let mut weights = Vec::new();
                let mut min = Duration::from_secs(ttl.into());
                for (_, target, port, weight) in targets.iter().filter(|t| t.0 == best) {
                    let (a, t) = self.host(target, *port).await?;
                    weights.extend(a.iter().map(|_| *weight));
                    addrs.extend(a);
                    min = min.min(t);
                }
                let weighted = addrs.into_iter().zip(srv_weights(&weights)).collect();
                Ok((weighted, min))
            }
        }
    }

    async fn host(&self, host: &str, port: u16) -> Result<(Vec<SocketAddr>, Duration), String> {
        let found = self
            .resolver
            .lookup_ip(host)
            .await
            .map_err(|e| e.to_string())?;
        let addrs: Vec<SocketAddr> = found.iter().map(|ip| SocketAddr::new(ip, port)).collect();
        if addrs.is_empty() {
            return Err("no A or AAAA records".into());
        }
        let ttl = found
            .as_lookup()
            .answers()
            .iter()
            .map(|r| r.ttl)
            .min()
            .unwrap_or(0);
        Ok((addrs, Duration::from_secs(ttl.into())))
    }
}

/// `A, B (weight 3)`: an address's weight when it is not 1.
fn list(addrs: &[(SocketAddr, u32)]) -> String {
    addrs
        .iter()
        .map(|(a, w)| match w {
            1 => a.to_string(),
            w => format!("{a} (weight {w})"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `resolves to A, B (added B; removed C)`.
fn change(before: Option<&[(SocketAddr, u32)]>, after: &[(SocketAddr, u32)]) -> String {
    let mut s = format!("resolves to {}", list(after));
    if let Some(before) = before {
        let had = |set: &[(SocketAddr, u32)], a: &SocketAddr| set.iter().any(|(b, _)| b == a);
        let added: Vec<(SocketAddr, u32)> = after
            .iter()
            .filter(|(a, _)| !had(before, a))
            .copied()
            .collect();
        let removed: Vec<(SocketAddr, u32)> = before
            .iter()
            .filter(|(a, _)| !had(after, a))
            .copied()
            .collect();
        let mut parts = Vec::new();
        if !added.is_empty() {
            parts.push(format!("added {}", list(&added)));
        }
        if !removed.is_empty() {
            parts.push(format!(
                "removed {}: no new connections, open tunnels stay",
                list(&removed)
            ));
        }
        if !parts.is_empty() {
            s.push_str(&format!(" ({})", parts.join("; ")));
        }
    }
    s
}
