//! Forwarded HTTP and `least_conn` under worker processes: the per-route request counts of
//! `/metrics` and of the status page are every worker's together (and survive a worker being
//! replaced), and `least_conn` compares the connections all workers hold, not one process's.
//! Each test checks that several workers took part, so none passes by accident on one worker.

#[allow(unused_macros)]
#[macro_use]
mod support;
#[path = "support/http.rs"]
mod http;

use nix::sys::signal::Signal;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use support::blocking::{eventually, fetch};
use support::{backend, open, Proxy};

const STEP: Duration = Duration::from_secs(10);

fn config(routes: &[(&str, &[SocketAddr], &str)]) -> String {
    let mut t = support::scoped_driver_line()
        + "listen = [\"127.0.0.1:0\"]\nworkers = 2\nworker_model = \"processes\"\n\
                 admin = \"127.0.0.1:0\"\n";
    for (prefix, backends, extra) in routes {
        let list: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
        t.push_str(&format!(
            "[[route]]\nprefix = \"{prefix}\"\nbackends = [{}]\n{extra}\n",
            list.join(", ")
        ));
    }
    t
}

/// Connections each worker holds, from `/metrics`.
fn per_worker(p: &Proxy) -> [u64; 2] {
    [0, 1].map(|w| p.metric(&format!("wsplice_worker_connections{{worker=\"{w}\"}}")))
}

/// Waits until the workers hold `want` connections; returns them.
fn settle(p: &Proxy, want: u64) -> [u64; 2] {
    let mut now = [0; 2];
    eventually("the workers' connection counts", STEP, || {
        now = per_worker(p);
        now[0] + now[1] == want
    });
    now
}

fn route_metric(p: &Proxy, route: &str, class: &str) -> u64 {
    p.metric(&format!(
        "wsplice_route_requests_total{{route=\"{route}\",class=\"{class}\"}}"
    ))
}

/// `/status`'s forwarded requests of `route`, all classes together.
fn status_requests(p: &Proxy, route: &str) -> u64 {
    let j: serde_json::Value = serde_json::from_str(&p.scrape("/status")).expect("json");
    let r = j["routes"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["route"] == route).cloned())
        .unwrap_or_else(|| panic!("no route {route} in /status: {j}"));
    r["requests"]
        .as_object()
        .expect("requests by class")
        .values()
        .filter_map(|v| v.as_u64())
        .sum()
}

/// A keep-alive client of `p` for [`fetch`]; each read may wait [`STEP`].
fn client(p: &Proxy) -> TcpStream {
    let s = TcpStream::connect(p.addr()).expect("connect");
    s.set_read_timeout(Some(STEP)).expect("timeout");
    s
}

/// Worker `id`'s pid from `/status`.
fn worker_pid(p: &Proxy, id: usize) -> u32 {
    let j: serde_json::Value = serde_json::from_str(&p.scrape("/status")).expect("json");
    j["workers"][id]["pid"]
        .as_u64()
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or_else(|| panic!("no pid for worker {id} in {j}"))
}

#[test]
fn route_request_counts_are_every_workers_and_outlive_a_replaced_worker() {
    let rt = support::runtime(1);
    let origin = rt.block_on(http::Origin::start());
    let refused = support::RefusedPort::new();
    let p = Proxy::blocking_start_toml(&config(&[
        ("/app", &[origin.addr], ""),
        ("/down", &[refused.addr], ""),
        ("/quiet", &[origin.addr], ""),
    ]));
    // Keep-alive connections, three requests to /app each (and, on a connection of its own,
    // one to /down every other time), until both workers hold some (the kernel spreads
    // connections over their listeners).
    let mut conns = Vec::new();
    let (mut ok, mut failed) = (0, 0);
    let spread = loop {
        let mut s = client(&p);
        for i in 0..3 {
            assert_eq!(fetch(&mut s, &http::get(&format!("/app/{i}"), &[])).0, 200);
            ok += 1;
        }
        if conns.len() % 2 == 1 {
            let mut d = client(&p);
            assert_eq!(fetch(&mut d, &http::get("/down/x", &[])).0, 502);
            failed += 1;
        }
        conns.push(s);
        let spread = settle(&p, conns.len() as u64);
        if (spread[0] > 0 && spread[1] > 0) || conns.len() >= 40 {
            break spread;
        }
    };
    assert!(
        spread[0] > 0 && spread[1] > 0,
        "one worker took all {} connections: {spread:?}",
        conns.len()
    );
    // Counts reach the shared map as each request ends: the totals are exact at once.
    eventually("every worker's requests in /metrics", STEP, || {
        route_metric(&p, "/app", "2xx") == ok && route_metric(&p, "/down", "5xx") == failed
    });
    assert_eq!(route_metric(&p, "/app", "5xx"), 0);
    assert_eq!(route_metric(&p, "/down", "2xx"), 0);
    assert_eq!(
        route_metric(&p, "/quiet", "2xx"),
        0,
        "a configured route is listed before its first request"
    );
    assert_eq!(p.metric("wsplice_http_requests_total{class=\"2xx\"}"), ok);
    assert_eq!(status_requests(&p, "/app"), ok);
    assert_eq!(status_requests(&p, "/down"), failed);

    // Worker 1 dies: what it counted stays in the totals, and its replacement counts on.
    let victim = worker_pid(&p, 1);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim as i32), Signal::SIGKILL)
        .expect("kill worker 1");
    eventually("worker 1 to be replaced", STEP, || {
        p.metric("wsplice_worker_restarts_total") == 1 && worker_pid(&p, 1) != victim
    });
    assert_eq!(route_metric(&p, "/app", "2xx"), ok, "no count lost");
    assert_eq!(route_metric(&p, "/down", "5xx"), failed);
    drop(conns);
    settle(&p, 0);
    let mut more = Vec::new();
    let spread = loop {
        let mut s = client(&p);
        assert_eq!(fetch(&mut s, &http::get("/app/again", &[])).0, 200);
        ok += 1;
        more.push(s);
        let spread = settle(&p, more.len() as u64);
        if spread[1] > 0 || more.len() >= 40 {
            break spread;
        }
    };
    assert!(spread[1] > 0, "the new worker 1 took no connection");
    eventually("the replacement's requests in /metrics", STEP, || {
        route_metric(&p, "/app", "2xx") == ok
    });
    assert_eq!(status_requests(&p, "/app"), ok);
    assert_eq!(status_requests(&p, "/down"), failed);
}

/// One open tunnel: its stream, the backend that answered, the worker that holds it.
struct Tunnel {
    _s: tokio::net::TcpStream,
    backend: String,
    worker: usize,
}

/// Opens a tunnel and finds which worker took it (from the workers' connection counts).
async fn open_on(p: &Proxy, held: u64) -> Tunnel {
    let before = tokio::task::block_in_place(|| settle(p, held));
    let (s, backend) = open(p.addr(), "/").await.expect("tunnel");
    let after = tokio::task::block_in_place(|| settle(p, held + 1));
    let worker = usize::from(after[1] > before[1]);
    Tunnel {
        _s: s,
        backend,
        worker,
    }
}

scoped_drivers!(least_conn_counts_the_connections_of_every_worker_process);
async fn least_conn_counts_the_connections_of_every_worker_process() {
    let a = backend("A").await.addr;
    let b = backend("B").await.addr;
    let p = Proxy::blocking_start_toml(&config(&[("/", &[a, b], "balance = \"least_conn\"")]));
    // Twelve tunnels, then keep only the tunnels to B that one worker holds (at least two):
    // B's load is all in worker `x`, worker `y` holds nothing.
    let mut held = Vec::new();
    for _ in 0..12 {
        held.push(open_on(&p, held.len() as u64).await);
    }
    let on_b = |w: usize| {
        held.iter()
            .filter(|t| t.backend == "B" && t.worker == w)
            .count()
    };
    let x = if on_b(0) >= on_b(1) { 0 } else { 1 };
    let y = 1 - x;
    held.retain(|t| t.backend == "B" && t.worker == x);
    let k = held.len();
    assert!(k >= 2, "worker {x} holds {k} tunnels to B");
    tokio::task::block_in_place(|| settle(&p, k as u64));

    // New tunnels go to A (load 0 against B's k) whichever worker takes them. One taken by
    // `x` is closed again; the test goes on until `y`, which holds no tunnel, took two. Had
    // each process counted its own, `y` would see A and B both empty for the first and A
    // ahead for the second, and send it to B.
    let mut on_y = Vec::new();
    for _ in 0..40 {
        let t = open_on(&p, (k + on_y.len()) as u64).await;
        assert_eq!(
            t.backend,
            "A",
            "worker {} sent a tunnel to B, which holds {k} while A holds {}",
            t.worker,
            on_y.len()
        );
        if t.worker == y {
            on_y.push(t);
            if on_y.len() == 2 {
                break;
            }
        } else {
            drop(t);
            tokio::task::block_in_place(|| settle(&p, (k + on_y.len()) as u64));
        }
    }
    assert_eq!(on_y.len(), 2, "worker {y} never took a connection");
    // The same through a third connection on either worker: A and B are now 2 and k.
    if k > 2 {
        let t = open_on(&p, (k + 2) as u64).await;
        assert_eq!(t.backend, "A");
    }
}
