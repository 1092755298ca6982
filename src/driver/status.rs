//! The admin listener's status page (`/`) and the JSON document it polls (`/status`).
//!
//! Both are built on the admin thread, only when asked, from what the workers already publish
//! for `/metrics` (their counter blocks, per-backend and per-route lists): a proxy nobody
//! watches does no work for them. The page keeps its own history of the polls (connections
//! over the last minutes) in the browser, so the proxy keeps none.

use crate::config::Route;
use crate::core::route::{route_id, route_label};
use crate::driver::stats::{self, json, BackendCounts, BackendKey, Counters, STATUS_CLASSES};
use crate::driver::{StatsReader, WorkerModel};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Mutex;

/// The page: one self-contained file (inline CSS, script and SVG; nothing fetched but
/// `/status`), compiled into the binary.
pub const PAGE: &str = include_str!("status.html");

/// A configured route as the page names it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Named {
    id: u32,
    label: String,
    backends: Vec<SocketAddr>,
    /// In the configuration serving now (a route a reload removed stays listed while its
    /// tunnels last).
    current: bool,
}

/// The routes of every configuration loaded so far, so tunnels count under their route's
/// name (workers publish only the route's id).
static ROUTES: Mutex<Vec<Named>> = Mutex::new(Vec::new());

/// Records the routes of the configuration now serving (at start and after each reload).
pub fn name_routes(routes: &[Route]) {
    let mut known = ROUTES.lock().unwrap_or_else(|p| p.into_inner());
    known.iter_mut().for_each(|n| n.current = false);
    for r in routes {
        let label = route_label(r);
        let id = route_id(&label);
        let named = Named {
            id,
            label,
            backends: r.backends.clone(),
            current: true,
        };
        match known.iter_mut().find(|n| n.id == id) {
            Some(n) => *n = named,
            None => known.push(named),
        }
    }
}

/// The label of route `id` in any configuration loaded so far (`#` and its id in hex for one
/// none named).
pub fn route_name(id: u32) -> String {
    let known = ROUTES.lock().unwrap_or_else(|p| p.into_inner());
    match known.iter().find(|n| n.id == id) {
        Some(n) => n.label.clone(),
        None => format!("#{id:08x}"),
    }
}

/// What one route shows: its tunnels (by backend) and forwarded requests.
#[derive(Default)]
struct RouteView {
    label: String,
    current: bool,
    tunnels: BackendCounts,
    backends: Vec<(SocketAddr, BackendCounts)>,
    requests: [u64; 6],
}

/// Sums the workers' per-(route, backend) counts and per-route requests under the known
/// routes (configured routes first, with every backend, at zero until used).
fn route_views(
    rows: &[Vec<(BackendKey, BackendCounts)>],
    requests: &[Vec<(String, [u64; 6])>],
) -> Vec<RouteView> {
    let known = ROUTES.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut views: Vec<(u32, RouteView)> = known
        .iter()
        .map(|n| {
            let v = RouteView {
                label: n.label.clone(),
                current: n.current,
                backends: n
                    .backends
                    .iter()
                    .map(|&a| (a, BackendCounts::default()))
                    .collect(),
                ..RouteView::default()
            };
            (n.id, v)
        })
        .collect();
    for &((route, addr), c) in rows.iter().flatten() {
        let i = match views.iter().position(|(id, _)| *id == route) {
            Some(i) => i,
            None => {
                let label = match route {
                    0 => "(no route)".to_owned(),
                    id => format!("#{id:08x}"),
                };
                views.push((
                    route,
                    RouteView {
                        label,
                        ..RouteView::default()
                    },
                ));
                views.len() - 1
            }
        };
        let v = &mut views[i].1;
        add(&mut v.tunnels, &c);
        match v.backends.iter_mut().find(|(a, _)| *a == addr) {
            Some((_, t)) => add(t, &c),
            None => v.backends.push((addr, c)),
        }
    }
    for (label, c) in requests.iter().flatten() {
        if let Some((_, v)) = views.iter_mut().find(|(_, v)| v.label == *label) {
            v.requests.iter_mut().zip(c).for_each(|(a, b)| *a += b);
        }
    }
    // Routes a reload removed drop out once nothing of theirs is left open.
    views
        .into_iter()
        .map(|(_, v)| v)
        .filter(|v| v.current || v.tunnels.active > 0)
        .collect()
}

fn add(t: &mut BackendCounts, c: &BackendCounts) {
    t.active += c.active;
    t.tunnels += c.tunnels;
    t.failures += c.failures;
}

/// Resident memory of a process, bytes: (VmRSS, RssAnon) from /proc/PID/status.
fn rss_of(pid: Option<u32>) -> (u64, u64) {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".to_owned(),
    };
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let kib = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |k| k * 1024)
    };
    (kib("VmRSS:"), kib("RssAnon:"))
}

/// The proxy's memory: this process, plus each worker process (resident sets summed: pages
/// the processes share, such as the binary's text, count once per process).
fn memory(stats: &StatsReader, connections: u64) -> String {
    let (mut rss, mut anon) = rss_of(None);
    if stats.model() == WorkerModel::Processes {
        for w in stats.workers() {
            let (r, a) = rss_of(Some(w.pid));
            rss += r;
            anon += a;
        }
    }
    let per = match connections {
        0 => "null".to_owned(),
        n => (rss / n).to_string(),
    };
    format!(
        "{{\"rss_bytes\":{rss},\"anon_bytes\":{anon},\"connections\":{connections},\"per_connection_bytes\":{per}}}"
    )
}

fn counts_json(c: &BackendCounts) -> String {
    format!(
        "\"active\":{},\"tunnels\":{},\"failures\":{}",
        c.active, c.tunnels, c.failures
    )
}

/// The `"routes"` array: each route's tunnels, its backends' and its forwarded requests.
fn routes_json(views: &[RouteView]) -> String {
    let mut out = String::from("[");
    for (i, v) in views.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let backends: Vec<String> = v
            .backends
            .iter()
            .map(|(a, c)| {
                format!(
                    "{{\"backend\":{},{}}}",
                    json::string(&a.to_string()),
                    counts_json(c)
                )
            })
            .collect();
        let requests: Vec<String> = STATUS_CLASSES
            .iter()
            .zip(v.requests)
            .map(|(k, n)| format!("\"{k}\":{n}"))
            .collect();
        let _ = write!(
            out,
            "{{\"route\":{},\"current\":{},{},\"backends\":[{}],\"requests\":{{{}}}}}",
            json::string(&v.label),
            v.current,
            counts_json(&v.tunnels),
            backends.join(","),
            requests.join(",")
        );
    }
    out.push(']');
    out
}

/// The `/status` document: the list's marked keys at the top (stable, for scripts), then every
/// family (`metrics`), routes with their backends, workers and memory.
pub fn document(
    c: &Counters,
    stats: &StatsReader,
    process: &[(stats::Family, u64)],
    fds: &[(usize, usize)],
) -> String {
    let mut body: Vec<String> = stats::status_fields(c)
        .iter()
        .chain(
            process
                .iter()
                .filter_map(|(f, v)| Some((f.json?, *v)))
                .collect::<Vec<_>>()
                .iter(),
        )
        .map(|(k, v)| format!("\"{k}\":{v}"))
        .collect();
    body.push(format!("\"worker_model\":\"{}\"", stats.model().as_str()));
    let workers = stats.workers();
    let list: Vec<String> = workers
        .iter()
        .map(|w| {
            let fd = fds.iter().find(|(id, _)| *id == w.id).map_or(0, |f| f.1);
            format!(
                "{{\"id\":{},\"pid\":{},\"connections\":{},\"restarts\":{},\"open_fds\":{fd}}}",
                w.id, w.pid, w.connections, w.restarts
            )
        })
        .collect();
    body.push(format!("\"workers\":[{}]", list.join(",")));
    let views = route_views(&stats.backend_rows(), &stats.route_rows());
    body.push(format!("\"routes\":{}", routes_json(&views)));
    body.push(format!("\"memory\":{}", memory(stats, c.connections)));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    body.push(format!("\"time_ms\":{now}"));
    body.push(format!("\"metrics\":{{{}}}", json::families(c)));
    format!("{{{}}}\n", body.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(prefix: &str, backends: &[&str]) -> Route {
        let toml = format!(
            "listen = [\"127.0.0.1:0\"]\n[[route]]\nprefix = \"{prefix}\"\nbackends = [{}]\n",
            backends
                .iter()
                .map(|b| format!("\"{b}\""))
                .collect::<Vec<_>>()
                .join(",")
        );
        let cfg = crate::config::Config::from_toml_str(&toml, "t.toml").expect("config");
        cfg.routes[0].clone()
    }

    #[test]
    fn views_sum_workers_by_route_and_keep_configured_backends() {
        // The registry is process-wide: this test's prefixes are its own.
        let a = route("/views-a", &["127.0.0.1:7001", "127.0.0.1:7002"]);
        let b = route("/views-b", &["127.0.0.1:7001"]);
        name_routes(&[a.clone(), b.clone()]);
        let (ida, idb) = (route_id("/views-a"), route_id("/views-b"));
        let b1: SocketAddr = "127.0.0.1:7001".parse().expect("addr");
        let one = |active, tunnels, failures| BackendCounts {
            active,
            tunnels,
            failures,
        };
        let w0 = vec![((ida, b1), one(2, 3, 0)), ((idb, b1), one(1, 1, 0))];
        let w1 = vec![((ida, b1), one(1, 1, 4)), ((0xdead, b1), one(1, 1, 0))];
        let req = vec![vec![("/views-a".to_owned(), [0, 5, 0, 0, 0, 0])]];
        let v = route_views(&[w0, w1], &req);
        let a = v.iter().find(|v| v.label == "/views-a").expect("route a");
        assert_eq!(a.tunnels, one(3, 4, 4));
        assert_eq!(a.backends.len(), 2, "the unused backend is listed at zero");
        assert_eq!(a.backends[0], (b1, one(3, 4, 4)));
        assert_eq!(a.requests[1], 5);
        let b = v.iter().find(|v| v.label == "/views-b").expect("route b");
        assert_eq!(b.tunnels.active, 1);
        let unknown = v.iter().find(|v| v.label == "#0000dead");
        assert_eq!(unknown.map(|u| u.tunnels.active), Some(1));
        let j = routes_json(&v);
        let parsed: serde_json::Value = serde_json::from_str(&j).expect(&j);
        assert!(parsed.as_array().is_some_and(|r| r.len() >= 3), "{j}");
    }
}
