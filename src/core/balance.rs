//! Which backend a new connection or request tries first: round robin, least connections,
//! hashing of a client key, or a sticky cookie the proxy sets.
//!
//! ```text
//!   round_robin  next of a shared cursor
//!   least_conn   fewest open tunnels + requests (all workers), ties in round-robin order
//!   hash         rendezvous hashing of the client IP, or of a cookie / query parameter /
//!                header (client IP when the request has none): a key keeps its backend, and
//!                adding or removing a backend moves only the keys of that backend
//!   cookie       the backend named by the route's cookie; without a valid one, round robin,
//!                and the answer sets the cookie
//! ```
//! Weights (`{ addr, weight }`) count in each: round robin walks nginx's smooth weighted
//! cycle, least_conn compares connections per unit of weight, hash is weighted rendezvous.
//! A backend that is down, ejected or drained ([`crate::core::health`]) is not chosen.
//! When the first choice fails, the others are tried in list order after it. SockJS and
//! socket.io need `hash` or `cookie`: their polling requests and the WebSocket upgrade that
//! follows must reach the backend that holds the session.

use crate::config::{Balance, HashKey, StickyCookie};
use crate::core::head::RequestHead;
use crate::core::route::RouteEntry;
use crate::core::settings::Settings;
use sha1::{Digest, Sha1};
use std::net::IpAddr;
use std::sync::Arc;

/// The backend to try first, and what the request's sticky cookie said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    pub first: usize,
    /// The backend a valid sticky cookie named (`balance = "cookie"`).
    pub cookie: Option<usize>,
}

fn score(key: &[u8], backend: &str) -> u64 {
    let mut h = Sha1::new();
    h.update(key);
    h.update([0u8]);
    h.update(backend.as_bytes());
    let d = h.finalize();
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// Weighted rendezvous hashing: `weight / -ln(u)` for the score taken as a uniform `u` in
/// (0, 1), so that a backend wins a share of keys proportional to its weight.
fn weighted(score: u64, weight: u32) -> f64 {
    let u = ((score >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    f64::from(weight) / -u.ln()
}

/// The value of cookie `name` in the request's Cookie headers.
fn cookie<'b>(req: &RequestHead<'b, '_>, name: &str) -> Option<&'b [u8]> {
    req.headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("cookie"))
        .flat_map(|h| h.value.split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
        })
}

/// The raw value of query parameter `name` (`query` starts with `?` or is empty).
fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q [u8]> {
    query
        .strip_prefix('?')?
        .split('&')
        .find_map(|p| match p.split_once('=') {
            Some((n, v)) if n == name => Some(v.as_bytes()),
            None if p == name => Some(&b""[..]),
            _ => None,
        })
}

impl RouteEntry {
    /// The backend to try first for a request (`query` with its `?`, or empty) from `client`.
    pub fn pick(&self, req: &RequestHead<'_, '_>, query: &str, client: IpAddr) -> Pick {
        let n = self.backends.len();
        let rr = Pick {
            first: self.first_backend(),
            cookie: None,
        };
        if n <= 1 {
            return Pick {
                first: 0,
                cookie: None,
            };
        }
        match &self.options.balance {
            Balance::RoundRobin => rr,
            Balance::LeastConn => {
                let start = rr.first;
                // Open connections per unit of weight; ties in round-robin order.
                let first = (0..n)
                    .map(|k| (start + k) % n)
                    .filter(|&i| self.available(i))
                    .min_by_key(|&i| {
                        self.load_of(i).saturating_mul(1024) / u64::from(self.weight(i))
                    })
                    .unwrap_or(start);
                Pick {
                    first,
                    cookie: None,
                }
            }
            Balance::Hash(key) => {
                let ip = client.to_string();
                let value = match key {
                    HashKey::ClientIp => None,
                    HashKey::Cookie(name) => cookie(req, name),
                    HashKey::Query(name) => query_param(query, name),
                    HashKey::Header(name) => req
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| h.value),
                }
                .filter(|v| !v.is_empty())
                .unwrap_or(ip.as_bytes());
                // Rendezvous over the available backends: one going down moves only its own
                // keys, which come back when it does.
                let best = |only_up: bool| {
                    let all = self.cookie_ids.iter().enumerate();
                    let cand = all.filter(|&(i, _)| !only_up || self.available(i));
                    if self.weights.is_empty() {
                        cand.max_by_key(|(_, id)| score(value, id)).map(|(i, _)| i)
                    } else {
                        cand.map(|(i, id)| (i, weighted(score(value, id), self.weight(i))))
                            .max_by(|a, b| a.1.total_cmp(&b.1))
                            .map(|(i, _)| i)
                    }
                };
                let first = best(true).or_else(|| best(false)).unwrap_or(0);
                Pick {
                    first,
                    cookie: None,
                }
            }
            Balance::Cookie(c) => {
                let named = cookie(req, &c.name)
                    .and_then(|v| self.cookie_ids.iter().position(|id| id.as_bytes() == v))
                    .filter(|&i| self.available(i));
                match named {
                    Some(i) => Pick {
                        first: i,
                        cookie: Some(i),
                    },
                    None => rr,
                }
            }
        }
    }

    /// The `Set-Cookie` value that sends later requests to backend `i`, when the route uses
    /// sticky cookies and the request did not already name `i`.
    pub fn set_cookie(&self, pick: Pick, i: usize) -> Option<String> {
        let Balance::Cookie(c) = &self.options.balance else {
            return None;
        };
        if pick.cookie == Some(i) {
            return None;
        }
        let id = self.cookie_ids.get(i)?;
        Some(sticky_cookie(c, id))
    }
}

fn sticky_cookie(c: &StickyCookie, id: &str) -> String {
    let mut s = format!("{}={id}; Path=/", c.name);
    if c.http_only {
        s.push_str("; HttpOnly");
    }
    if c.secure {
        s.push_str("; Secure");
    }
    s.push_str("; SameSite=");
    s.push_str(c.same_site.as_str());
    s
}

/// One open tunnel or request counted against backend `backend` of route `route` for
/// `least_conn`; the count drops when the lease does.
#[derive(Debug)]
pub struct Lease {
    settings: Arc<Settings>,
    route: u16,
    backend: u16,
}

impl Lease {
    /// Counts a connection to backend `backend` of route `route`, if that route balances by
    /// least connections (`None` otherwise: nothing to count).
    pub fn take(settings: &Arc<Settings>, route: usize, backend: usize) -> Option<Lease> {
        let r = settings.routes.get(route);
        if r.options.balance != Balance::LeastConn {
            return None;
        }
        if backend >= r.backends.len() {
            return None;
        }
        r.add_load(backend, true);
        Some(Lease {
            settings: settings.clone(),
            route: u16::try_from(route).ok()?,
            backend: u16::try_from(backend).ok()?,
        })
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let r = self.settings.routes.get(self.route as usize);
        r.add_load(usize::from(self.backend), false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Route, RouteOptions, SameSite, Timeouts};
    use crate::core::head::parse_request;
    use crate::core::route::RouteTable;
    use std::sync::atomic::Ordering;

    fn table(n: usize, balance: Balance) -> RouteTable {
        let mut r = Route {
            prefix: "/".into(),
            host: None,
            backends: (0..n)
                .map(|i| format!("127.0.0.1:{}", 5000 + i).parse().expect("addr"))
                .collect(),
            strip_prefix: true,
            forwarded_for: Default::default(),
            send_proxy: None,
            options: RouteOptions::default(),
        };
        r.options.balance = balance;
        RouteTable::new(&[r])
    }

    fn pick(t: &RouteTable, head: &str, client: &str) -> Pick {
        let mut h = [httparse::EMPTY_HEADER; 8];
        let req = parse_request(head.as_bytes(), &mut h).expect("parses");
        let query = req.target.find('?').map_or("", |i| &req.target[i..]);
        t.get(0).pick(&req, query, client.parse().expect("ip"))
    }

    #[test]
    fn hash_keeps_a_key_on_its_backend_and_moves_few_keys_when_one_is_added() {
        let head = |ip: &str| format!("GET /?sid={ip} HTTP/1.1\r\nHost: h\r\n\r\n");
        let four = table(4, Balance::Hash(HashKey::ClientIp));
        let five = table(5, Balance::Hash(HashKey::ClientIp));
        let mut moved = 0;
        let mut per = [0usize; 4];
        for i in 0..1000 {
            let ip = format!("10.0.{}.{}", i / 250, i % 250);
            let a = pick(&four, &head(&ip), &ip).first;
            assert_eq!(
                a,
                pick(&four, &head(&ip), &ip).first,
                "same key, same backend"
            );
            per[a] += 1;
            let b = pick(&five, &head(&ip), &ip).first;
            if a != b {
                assert_eq!(b, 4, "a key moved between two old backends");
                moved += 1;
            }
        }
        assert!(per.iter().all(|&n| n > 150), "uneven spread {per:?}");
        assert!((100..300).contains(&moved), "{moved} of 1000 keys moved");
        // By query parameter: the client address no longer matters.
        let q = table(4, Balance::Hash(HashKey::Query("sid".into())));
        let a = pick(&q, &head("abc"), "10.0.0.1").first;
        assert!((0..50).all(|i| pick(&q, &head("abc"), &format!("10.1.0.{i}")).first == a));
    }

    #[test]
    fn sticky_cookie_routes_and_sets() {
        let c = StickyCookie {
            name: "srv".into(),
            secure: true,
            http_only: true,
            same_site: SameSite::None,
        };
        let t = table(3, Balance::Cookie(c));
        let r = t.get(0);
        let id = r.cookie_ids[2].clone();
        assert_eq!(id.len(), 16);
        let with = format!("GET / HTTP/1.1\r\nHost: h\r\nCookie: a=1; srv={id}\r\n\r\n");
        for _ in 0..5 {
            let p = pick(&t, &with, "10.0.0.1");
            assert_eq!(
                p,
                Pick {
                    first: 2,
                    cookie: Some(2)
                }
            );
            assert_eq!(r.set_cookie(p, 2), None);
            // Failed over to another backend: the cookie moves with it.
            assert!(r.set_cookie(p, 0).is_some());
        }
        let without = "GET / HTTP/1.1\r\nHost: h\r\nCookie: srv=bogus\r\n\r\n";
        let p = pick(&t, without, "10.0.0.1");
        assert_eq!(p.cookie, None);
        assert_eq!(
            r.set_cookie(p, 1),
            Some(format!(
                "srv={}; Path=/; HttpOnly; Secure; SameSite=None",
                r.cookie_ids[1]
            ))
        );
    }

    #[test]
    fn least_conn_takes_the_emptiest_and_leases_give_back() {
        let s = Arc::new(Settings::new(
            table(3, Balance::LeastConn),
            Timeouts::default(),
        ));
        let head = "GET / HTTP/1.1\r\nHost: h\r\n\r\n";
        let mut leases = Vec::new();
        for _ in 0..6 {
            let p = pick(&s.routes, head, "10.0.0.1");
            leases.push(Lease::take(&s, 0, p.first).expect("least_conn"));
        }
        let load = |i: usize| s.routes.get(0).load_of(i);
        assert_eq!((load(0), load(1), load(2)), (2, 2, 2));
        leases.retain(|l| l.backend != 1);
        assert_eq!(load(1), 0);
        assert_eq!(pick(&s.routes, head, "10.0.0.1").first, 1);
        drop(leases);
        assert_eq!((load(0), load(1), load(2)), (0, 0, 0));
    }

    #[test]
    fn unavailable_backends_are_skipped_and_hash_moves_only_their_keys() {
        use crate::core::health::{state_word, HealthWords, LocalHealth, DRAINED};
        let words = Arc::new(LocalHealth::new(16));
        let rr = table(3, Balance::RoundRobin).with_health(words.clone());
        let hash = table(3, Balance::Hash(HashKey::ClientIp));
        let hash_words = Arc::new(LocalHealth::new(16));
        let hash = hash.with_health(hash_words.clone());
        let head = "GET / HTTP/1.1\r\nHost: h\r\n\r\n";
        let before: Vec<usize> = (0..300)
            .map(|i| pick(&hash, head, &format!("10.0.{}.{}", i / 200, i % 200)).first)
            .collect();
        for w in [&words, &hash_words] {
            let hw: &dyn HealthWords = w.as_ref();
            state_word(hw, 1)
                .expect("slot")
                .store(DRAINED, Ordering::Relaxed);
        }
        // Round robin alternates over the two left, evenly.
        let mut per = [0usize; 3];
        for _ in 0..100 {
            per[pick(&rr, head, "10.0.0.1").first] += 1;
        }
        assert_eq!(per, [50, 0, 50]);
        assert_eq!(rr.get(0).next_to_try(1, 0), Some((1, 2)));
        for (i, &was) in before.iter().enumerate() {
            let now = pick(&hash, head, &format!("10.0.{}.{}", i / 200, i % 200)).first;
            if was == 1 {
                assert_ne!(now, 1);
            } else {
                assert_eq!(now, was, "a key of a backend still up moved");
            }
        }
    }

    #[test]
    fn weighted_round_robin_and_hash_follow_the_weights() {
        let mut r = table(2, Balance::RoundRobin);
        let mut routes: Vec<crate::config::Route> = r.iter().map(|e| (**e).clone()).collect();
        routes[0].options.weights = vec![1, 3];
        r = RouteTable::new(&routes);
        let head = "GET / HTTP/1.1\r\nHost: h\r\n\r\n";
        let picks: Vec<usize> = (0..8).map(|_| pick(&r, head, "10.0.0.1").first).collect();
        assert_eq!(picks, [1, 0, 1, 1, 1, 0, 1, 1]);
        routes[0].options.balance = Balance::Hash(HashKey::ClientIp);
        let h = RouteTable::new(&routes);
        let on_1 = (0..4000)
            .filter(|i| pick(&h, head, &format!("10.1.{}.{}", i / 200, i % 200)).first == 1)
            .count();
        assert!(
            (2800..3200).contains(&on_1),
            "{on_1} of 4000 on the weight-3 backend"
        );
    }
}
