//! Real socket.io and SockJS peers (the npm packages in tests/node, installed by .ci/run with
//! `npm ci`) through wsplice to two backends.
//!
//! ```text
//!   node clients ──▶ wsplice (balance = cookie | hash | round_robin) ─┬─▶ node server "s1"
//!                                                                      └─▶ node server "s2"
//! ```
//!
//! Their fallback transports are plain HTTP requests that must all reach the server holding
//! the session: socket.io's long-polling (then its upgrade to WebSocket on the same session),
//! SockJS's xhr-streaming and xhr-polling (a stream or poll, plus separate POSTs that send).
//! With `cookie` or `hash` balancing every session works; with `round_robin` the requests of
//! one session alternate between the servers, and the one that did not create it answers 400
//! ("Session ID unknown") or 404: the tests show that failure too, as the reason stickiness
//! exists.

#[allow(unused_macros)]
#[macro_use]
mod support;
#[path = "support/http.rs"]
mod http;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use http::{r, with_routes, R};
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

fn node_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/node");
    assert!(
        dir.join("node_modules/socket.io").is_dir() && dir.join("node_modules/sockjs").is_dir(),
        "the test peers are not installed: run `npm ci --prefix tests/node` (as .ci/run does)"
    );
    dir
}

/// A node server script, killed on drop, and its address.
async fn server(script: &str, name: &str) -> (Child, SocketAddr) {
    let mut child = Command::new("node")
        .arg(script)
        .arg(name)
        .current_dir(node_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs (Node 20 is on the machine)");
    let out = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(out).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("the node server starts")
        .expect("read")
        .expect("a listening line");
    let port: u16 = line
        .strip_prefix("listening ")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("unexpected line {line:?}"));
    (child, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// What a client script reported.
#[derive(Debug)]
struct Outcome {
    ok: u64,
    failed: u64,
    /// Sessions served per server name.
    servers: Vec<(String, u64)>,
    raw: String,
}

async fn clients(script: &str, args: &[&str]) -> Outcome {
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        Command::new("node")
            .arg(script)
            .args(args)
            .current_dir(node_dir())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the clients finish")
    .expect("node runs");
    let raw = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let v: serde_json::Value = serde_json::from_str(&raw)
        .unwrap_or_else(|e| panic!("{e}: {raw:?} {}", String::from_utf8_lossy(&out.stderr)));
    let servers = v["servers"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    Outcome {
        ok: v["ok"].as_u64().unwrap_or(0),
        failed: v["failed"].as_u64().unwrap_or(0),
        servers,
        raw,
    }
}

/// Both servers served sessions (the balancing spread them and kept each where it began).
fn spread(o: &Outcome) {
    assert_eq!(o.servers.len(), 2, "{}", o.raw);
    assert!(o.servers.iter().all(|(_, n)| *n >= 10), "{}", o.raw);
}

async fn proxy(relay: Relay, route: R) -> Proxy {
    with_routes(Proxy::builder(relay), &[route]).start().await
}

/// Hash balancing on the `affinity` query parameter the clients add to every request.
fn by_affinity(route: R) -> R {
    route
        .key("balance", "\"hash\"")
        .key("hash_key", "\"query:affinity\"")
}

const SOCKETIO_CLIENTS: &str = "200";

/// Under every relay mode: the sessions upgrade to WebSocket, which the relay carries.
async fn socketio_sessions_stick_by_cookie(relay: Relay, n: u64) {
    let (_a, s1) = server("socketio_server.js", "s1").await;
    let (_b, s2) = server("socketio_server.js", "s2").await;
    let cookie = proxy(relay, r("/", &[s1, s2]).key("balance", "\"cookie\"")).await;
    let url = format!("http://{}", cookie.addr());
    let o = clients("socketio_clients.js", &[&url, &n.to_string()]).await;
    assert_eq!(
        (o.ok, o.failed),
        (n, 0),
        "cookie, relay {}: {}",
        relay.as_str(),
        o.raw
    );
    spread(&o);
}

async fn socketio_sessions_stick_by_hash_and_not_without_stickiness(relay: Relay) {
    let (_a, s1) = server("socketio_server.js", "s1").await;
    let (_b, s2) = server("socketio_server.js", "s2").await;
    let hashed = proxy(relay, by_affinity(r("/", &[s1, s2]))).await;
    let url = format!("http://{}", hashed.addr());
    let o = clients("socketio_clients.js", &[&url, SOCKETIO_CLIENTS, "affinity"]).await;
    assert_eq!((o.ok, o.failed), (200, 0), "hash: {}", o.raw);
    spread(&o);

    let rr = proxy(relay, r("/", &[s1, s2])).await;
    let url = format!("http://{}", rr.addr());
    // Sessions that fail do so at once; a short wait keeps the rare one that hangs short.
    let o = clients(
        "socketio_clients.js",
        &[&url, SOCKETIO_CLIENTS, "plain", "2000"],
    )
    .await;
    // The second poll of a session lands on the other server half of the time, which answers
    // 400 "Session ID unknown": nearly every session fails.
    assert!(
        o.failed >= 150,
        "round_robin kept sessions together?! {}",
        o.raw
    );
    assert!(o.raw.contains("xhr poll error"), "{}", o.raw);
}

/// SockJS's xhr transports are plain requests only: the relay mode plays no part.
async fn sockjs_xhr_transports_stick_by_hash_and_not_without_stickiness(relay: Relay) {
    let (_a, s1) = server("sockjs_server.js", "a").await;
    let (_b, s2) = server("sockjs_server.js", "b").await;
    let route = r("/", &[s1, s2]).key("strip_prefix", "false");
    let hashed = proxy(relay, by_affinity(route)).await;
    let url = format!("http://{}/echo", hashed.addr());
    for transport in ["xhr-streaming", "xhr-polling"] {
        let o = clients("sockjs_clients.js", &[&url, "50", transport]).await;
        assert_eq!((o.ok, o.failed), (50, 0), "{transport}: {}", o.raw);
        spread(&o);
    }
    let rr = proxy(relay, r("/", &[s1, s2]).key("strip_prefix", "false")).await;
    let url = format!("http://{}/echo", rr.addr());
    let o = clients("sockjs_clients.js", &[&url, "50", "xhr-polling"]).await;
    // A send or poll on the server that does not hold the session: 404, session lost.
    assert!(
        o.failed >= 25,
        "round_robin kept sessions together?! {}",
        o.raw
    );
}

/// One test, one scenario at a time: each runs hundreds of node clients, and on two cores
/// they would only slow each other down.
#[test]
fn socketio_and_sockjs_through_two_backends() {
    let rt = support::runtime(2);
    rt.block_on(async {
        let all = async {
            // 200 sessions under the default relay mode, 50 under each of the others.
            socketio_sessions_stick_by_cookie(Relay::Auto, 200).await;
            socketio_sessions_stick_by_cookie(Relay::Copy, 50).await;
            socketio_sessions_stick_by_cookie(Relay::Splice, 50).await;
            socketio_sessions_stick_by_hash_and_not_without_stickiness(Relay::Auto).await;
            sockjs_xhr_transports_stick_by_hash_and_not_without_stickiness(Relay::Auto).await;
        };
        tokio::time::timeout(Duration::from_secs(120), all)
            .await
            .expect("the real-peer scenarios finish within 2 minutes");
    });
}
