//! Backends by name: `backends = ["app:8080"]` (A/AAAA records) or `["srv:_ws._tcp.app"]` (SRV
//! records: each target's addresses with the record's port), and the `[dns]` section that says
//! which server to ask and how often.
//!
//! The configuration keeps the names; the driver's resolver thread turns them into addresses
//! ([`Resolved`]) and [`Config::resolved`] gives the configuration with them filled in, which is
//! what the workers run (a new address set is applied like a reload).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use super::health::{MAX_WEIGHT, MAX_WEIGHT_SUM};
use super::walk::{key, Field, Key};
use super::{Config, ConfigError};

/// A backend given by name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BackendName {
    /// `HOST:PORT`: every A and AAAA address of `host`, each with `port`.
    Host { host: String, port: u16 },
    /// `srv:NAME`: the SRV records of `NAME`, each target's addresses with the record's port.
    Srv(String),
}

impl fmt::Display for BackendName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendName::Host { host, port } => write!(f, "{host}:{port}"),
            BackendName::Srv(name) => write!(f, "srv:{name}"),
        }
    }
}

/// What each name resolved to (the last good answer): addresses, each with its weight in the
/// route's balancing (1 for A/AAAA names; an SRV record's weight, see [`srv_weights`]).
pub type Resolved = BTreeMap<BackendName, Vec<(SocketAddr, u32)>>;

/// RFC 2782 weights of one priority's SRV records (0 to 65535, relative), one per address (an
/// address has its record's weight), as the balancer's weights (1 to [`MAX_WEIGHT`], summing
/// to at most [`MAX_WEIGHT_SUM`]). Equal weights: all 1, plain rotation. Weights that already
/// fit are kept as they are (3 and 1 stay 3 and 1); otherwise they are scaled so that the
/// heaviest gets the most the limits allow. A weight 0 beside heavier ones gets 1, the least
/// share: the RFC gives it "a very small chance" of being picked.
pub fn srv_weights(weights: &[u16]) -> Vec<u32> {
    let max = weights.iter().copied().max().unwrap_or(0);
    if weights.iter().all(|&w| w == max) {
        return vec![1; weights.len()];
    }
    let sum: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    if !weights.contains(&0) && u32::from(max) <= MAX_WEIGHT && sum <= u64::from(MAX_WEIGHT_SUM) {
        return weights.iter().map(|&w| u32::from(w)).collect();
    }
    // The heaviest weighs `top`, the others in proportion (at least 1).
    let n = weights.len().max(1) as u32;
    let top = u64::from(MAX_WEIGHT.min(MAX_WEIGHT_SUM / n).max(1));
    weights
        .iter()
        .map(|&w| ((u64::from(w) * top + u64::from(max) / 2) / u64::from(max)).max(1) as u32)
        .collect()
}

/// `[dns]`: where backend names are looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dns {
    /// Name servers (`IP:PORT`) to ask; empty (the default): the system's, from
    /// /etc/resolv.conf.
    pub servers: Vec<SocketAddr>,
    /// A name is looked up again when its records' TTL runs out, but not sooner than this
    /// (default 1 s) ...
    pub min_ttl: Duration,
    /// ... nor later than this (default 300 s). A failed lookup is retried after `min_ttl`,
    /// growing to this.
    pub max_ttl: Duration,
    /// One lookup's time limit (default 2 s).
    pub timeout: Duration,
}

impl Default for Dns {
    fn default() -> Self {
        Dns {
            servers: Vec::new(),
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(300),
            timeout: Duration::from_secs(2),
        }
    }
}

/// `[dns]`.
#[rustfmt::skip]
pub(super) const DNS: &[Key<Dns>] = &[
    key("servers", servers),
    key("min_ttl", |d, f| f.positive_duration().map(|t| d.min_ttl = t)),
    key("max_ttl", max_ttl),
    key("timeout", |d, f| f.positive_duration().map(|t| d.timeout = t)),
];

fn servers(dns: &mut Dns, field: &Field<'_>) -> Result<(), ConfigError> {
    let items = field.items("an array of name servers, such as [\"10.96.0.10:53\"]")?;
    dns.servers = items
        .iter()
        .map(|i| i.parsed(super::value::parse_backend))
        .collect::<Result<_, _>>()?;
    Ok(())
}

/// Read after `min_ttl` (table order): must not be below it.
fn max_ttl(dns: &mut Dns, field: &Field<'_>) -> Result<(), ConfigError> {
    let t = field.positive_duration()?;
    if t < dns.min_ttl {
        return Err(field.error(format!(
            "must not be below min_ttl ({})",
            humantime::format_duration(dns.min_ttl)
        )));
    }
    dns.max_ttl = t;
    Ok(())
}

/// `HOST:PORT` with a DNS host name, or `srv:NAME`. `None`: not a name (then it is an address,
/// or an error the address parser explains).
pub(super) fn parse_name(s: &str) -> Option<Result<BackendName, String>> {
    if let Some(name) = s.strip_prefix("srv:") {
        return Some(if is_dns_name(name) {
            Ok(BackendName::Srv(
                name.trim_end_matches('.').to_ascii_lowercase(),
            ))
        } else {
            Err(format!(
                "invalid SRV name {name:?}: expected a DNS name such as _ws._tcp.app.default.svc.cluster.local"
            ))
        });
    }
    let (host, port) = s.rsplit_once(':')?;
    // An IP literal is an address, not a name: the address parser says what is wrong with it.
    if host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[') || !is_dns_name(host) {
        return None;
    }
    // Only letters, digits, '-' and '.': a dotted quad with a bad octet is no name either.
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    Some(match port.parse::<u16>() {
        Ok(port) if port != 0 => Ok(BackendName::Host {
            host: host.trim_end_matches('.').to_ascii_lowercase(),
            port,
        }),
        _ => Err(format!(
            "invalid backend {s:?}: a name needs a port from 1 to 65535 (HOST:PORT), or srv:NAME for SRV records"
        )),
    })
}

/// Labels of letters, digits, `-` and `_` (SRV names), 1..=63 bytes each, 253 in all.
fn is_dns_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            (1..=63).contains(&l.len())
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl BackendName {
    /// Reads a name as [`fmt::Display`] writes it (`app:8080`, `srv:_ws._tcp.app`).
    pub fn parse(s: &str) -> Option<BackendName> {
        parse_name(s).and_then(Result::ok)
    }
}

/// `resolved` as text, one name a line: `NAME ADDR ADDR*WEIGHT...` (`*WEIGHT` when it is not
/// 1; how the supervisor hands it to worker processes).
pub fn encode_resolved(resolved: &Resolved) -> String {
    let mut out = String::new();
    for (name, addrs) in resolved {
        out.push_str(&name.to_string());
        for (a, w) in addrs {
            out.push(' ');
            out.push_str(&a.to_string());
            if *w != 1 {
                out.push_str(&format!("*{w}"));
            }
        }
        out.push('\n');
    }
    out
}

/// Reads [`encode_resolved`]'s text; lines and words that do not parse are skipped.
pub fn decode_resolved(text: &str) -> Resolved {
    let mut out = Resolved::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some(name) = words.next().and_then(BackendName::parse) else {
            continue;
        };
        let addrs = words.filter_map(|w| {
            let (a, weight) = w.split_once('*').unwrap_or((w, "1"));
            Some((a.parse().ok()?, weight.parse().ok()?))
        });
        out.insert(name, addrs.collect());
    }
    out
}

impl Config {
    /// Every backend name of every route, each once, sorted.
    pub fn backend_names(&self) -> Vec<BackendName> {
        let mut names: Vec<BackendName> = self
            .routes
            .iter()
            .flat_map(|r| r.options.names.iter().cloned())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// This configuration with each route's names replaced by what they resolved to: the
    /// route's addresses first (in config order), then each name's, without repeats, each
    /// with its weight (SRV records') beside the route's own. A name missing from `resolved`
    /// adds nothing (a route left with no backend answers 502).
    pub fn resolved(&self, resolved: &Resolved) -> Config {
        let mut cfg = self.clone();
        for r in &mut cfg.routes {
            // Weights parallel to the addresses (the route's own: none means all weigh 1).
            let mut weights = match r.options.weights.is_empty() {
                true => vec![1; r.backends.len()],
                false => r.options.weights.clone(),
            };
            for name in &r.options.names {
                for (a, w) in resolved.get(name).into_iter().flatten() {
                    if !r.backends.contains(a) {
                        r.backends.push(*a);
                        weights.push(*w);
                    }
                }
            }
            // The route's own weights and its names' together within the balancer's bound.
            let sum: u32 = weights.iter().sum();
            if sum > MAX_WEIGHT_SUM {
                let div = sum.div_ceil(MAX_WEIGHT_SUM);
                for w in &mut weights {
                    *w = (*w / div).max(1);
                }
            }
            r.options.weights = match weights.iter().all(|&w| w == 1) {
                true => Vec::new(),
                false => weights,
            };
        }
        cfg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_addresses_are_told_apart() {
        let host = |h: &str, port| {
            Some(Ok(BackendName::Host {
                host: h.into(),
                port,
            }))
        };
        assert_eq!(
            parse_name("App.default.svc:8080"),
            host("app.default.svc", 8080)
        );
        assert_eq!(parse_name("app:80"), host("app", 80));
        assert_eq!(
            parse_name("srv:_ws._tcp.app."),
            Some(Ok(BackendName::Srv("_ws._tcp.app".into())))
        );
        for not_a_name in [
            "127.0.0.1:80",
            "[::1]:80",
            "1.2.3.999:80",
            "a b:80",
            "noport",
        ] {
            assert_eq!(parse_name(not_a_name), None, "{not_a_name}");
        }
        assert!(matches!(parse_name("app:0"), Some(Err(_))));
        assert!(matches!(parse_name("app:http"), Some(Err(_))));
        assert!(matches!(parse_name("srv:bad name"), Some(Err(_))));
    }

    #[test]
    fn resolved_sets_travel_as_text_and_fill_routes_in() {
        let app = BackendName::Host {
            host: "app".into(),
            port: 80,
        };
        let srv = BackendName::Srv("_ws._tcp.app".into());
        let mut r = Resolved::new();
        r.insert(
            app.clone(),
            vec![
                ("127.0.0.2:80".parse().expect("addr"), 1),
                ("[::1]:80".parse().expect("addr"), 1),
            ],
        );
        r.insert(srv.clone(), vec![]);
        assert_eq!(decode_resolved(&encode_resolved(&r)), r);
        let cfg = Config::from_toml_str(
            "listen = [\"127.0.0.1:1\"]\n[[route]]\nprefix = \"/\"\nbackends = [\"127.0.0.2:80\", \"app:80\", \"srv:_ws._tcp.app\"]\n",
            "t.toml",
        )
        .expect("valid");
        assert_eq!(cfg.backend_names(), vec![app, srv.clone()]);
        let run = cfg.resolved(&r);
        let want: Vec<SocketAddr> = vec![
            "127.0.0.2:80".parse().expect("addr"),
            "[::1]:80".parse().expect("addr"),
        ];
        assert_eq!(run.routes[0].backends, want);
        assert!(run.routes[0].options.weights.is_empty(), "all weigh 1");
        assert!(cfg.resolved(&Resolved::new()).routes[0].backends.len() == 1);

        // SRV weights travel as `ADDR*W` and become the route's weights, beside the route's
        // own address (weight 1).
        let a: SocketAddr = "127.0.0.3:81".parse().expect("addr");
        let b: SocketAddr = "127.0.0.4:82".parse().expect("addr");
        r.insert(srv, vec![(a, 3), (b, 1)]);
        let text = encode_resolved(&r);
        assert!(
            text.contains("srv:_ws._tcp.app 127.0.0.3:81*3 127.0.0.4:82\n"),
            "{text}"
        );
        assert_eq!(decode_resolved(&text), r);
        assert_eq!(
            decode_resolved("srv:_ws._tcp.app 127.0.0.3:81*x 127.0.0.4:82*2\n")
                [&BackendName::Srv("_ws._tcp.app".into())],
            vec![(b, 2)],
            "a word that does not parse is skipped"
        );
        let run = cfg.resolved(&r);
        assert_eq!(run.routes[0].backends[2..], [a, b]);
        assert_eq!(run.routes[0].options.weights, vec![1, 1, 3, 1]);
        // A route of one SRV name alone: its weights are the route's.
        let only = Config::from_toml_str(
            "listen = [\"127.0.0.1:1\"]\n[[route]]\nprefix = \"/\"\nbackends = [\"srv:_ws._tcp.app\"]\n",
            "t.toml",
        )
        .expect("valid")
        .resolved(&r);
        assert_eq!(only.routes[0].backends, [a, b]);
        assert_eq!(only.routes[0].options.weights, vec![3, 1]);
    }

    #[test]
    fn srv_weights_become_balancer_weights() {
        // Equal (zero included): plain rotation.
        assert_eq!(srv_weights(&[0, 0, 0]), vec![1, 1, 1]);
        assert_eq!(srv_weights(&[10, 10]), vec![1, 1]);
        // Within the balancer's bounds: as they are.
        assert_eq!(srv_weights(&[3, 1]), vec![3, 1]);
        assert_eq!(srv_weights(&[256, 5]), vec![256, 5]);
        // Larger: scaled, the heaviest to 256, the others in proportion, at least 1.
        assert_eq!(srv_weights(&[1000, 500, 1]), vec![256, 128, 1]);
        assert_eq!(srv_weights(&[65535, 0]), vec![256, 1]);
        // A weight 0 beside heavier ones: the least share, not none.
        assert_eq!(srv_weights(&[10, 0]), vec![256, 1]);
        // Many addresses: the sum stays within the balancer's bound.
        let many: Vec<u16> = (0..1000).map(|i| if i == 0 { 0 } else { 300 }).collect();
        let w = srv_weights(&many);
        assert!(
            w.iter().sum::<u32>() <= MAX_WEIGHT_SUM,
            "{}",
            w.iter().sum::<u32>()
        );
        assert_eq!((w[0], w[1]), (1, 65));
        assert_eq!(srv_weights(&[]), Vec::<u32>::new());
    }

    #[test]
    fn names_and_static_weights_together_stay_within_the_bound() {
        let cfg = Config::from_toml_str(
            "listen = [\"127.0.0.1:1\"]\n[[route]]\nprefix = \"/\"\nbackends = [{ addr = \"127.0.0.2:80\", weight = 256 }, \"srv:_ws._tcp.app\"]\n",
            "t.toml",
        )
        .expect("valid");
        let mut r = Resolved::new();
        let addrs: Vec<(SocketAddr, u32)> = (0..256u32)
            .map(|i| {
                (
                    SocketAddr::from(([127, 1, (i / 256) as u8, i as u8], 80)),
                    256,
                )
            })
            .collect();
        r.insert(BackendName::Srv("_ws._tcp.app".into()), addrs);
        let run = cfg.resolved(&r);
        let w = &run.routes[0].options.weights;
        assert_eq!(w.len(), 257);
        assert!(w.iter().sum::<u32>() <= MAX_WEIGHT_SUM);
        assert!(w.iter().all(|&x| x == 128), "{:?}", &w[..4]);
    }
}
