//! The status page at the admin listener's `/`, in a real browser: headless Chromium (the Debian
//! `chromium` package) loads it while the test holds tunnels open on two routes, runs the
//! page's script through several polls of `/status`, and the test reads the numbers from the
//! DOM it dumps and compares them with what it did. Also `/status` itself against `/metrics`,
//! and the page's promise to fetch nothing but `/status`.
//!
//! Without Chromium the browser tests say so and pass, unless `CI` or
//! `WSPLICE_REQUIRE_BROWSER` is set (`.ci/run` sets it and installs the package): then they
//! fail. `cargo test --test status_page -- --ignored screenshot` writes the README's
//! screenshot.

#[macro_use]
mod support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;
use support::blocking::{echoing_tunnel, eventually, serve_each, try_read_head as read_head};
use support::browser::{chromium, run_chromium, text_of, Dom};
use support::{route, Driver, Proxy, ProxyBuilder, RefusedPort, ACCEPT};

// ---------------------------------------------------------------------------------------------
// The backend and the scenario
// ---------------------------------------------------------------------------------------------

/// A blocking backend: an upgrade gets a 101 and an echo (until EOF; `rst` makes it reset the
/// connection); any other request gets `200 ok` and a close.
fn backend() -> SocketAddr {
    serve_each(|mut s| {
        let Ok(head) = read_head(&mut s) else { return };
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        if !head.contains("upgrade: websocket") {
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
            return;
        }
        let answer = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {ACCEPT}\r\n\r\n"
                );
        if s.write_all(answer.as_bytes()).is_err() {
            return;
        }
        let mut b = [0u8; 4096];
        loop {
            match s.read(&mut b) {
                Ok(0) | Err(_) => break,
                Ok(n) if &b[..n] == b"rst" => {
                    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                    return;
                }
                Ok(n) => {
                    if s.write_all(&b[..n]).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = s.shutdown(Shutdown::Write);
    })
}

/// Opens a tunnel on `path` and checks that it echoes.
fn tunnel(proxy: SocketAddr, path: &str) -> TcpStream {
    echoing_tunnel(proxy, path, Duration::from_secs(10))
}

/// Reads until the proxy closes (EOF or reset).
fn until_closed(s: &mut TcpStream) {
    let mut b = [0u8; 64];
    while let Ok(n) = s.read(&mut b) {
        if n == 0 {
            return;
        }
    }
}

/// What the test did, to compare with what the page shows.
struct Scene {
    proxy: Proxy,
    /// Held open while the browser looks.
    _open: Vec<TcpStream>,
    a: SocketAddr,
    b: SocketAddr,
    dead: SocketAddr,
    _refused: RefusedPort,
}

const A_OPENED: u64 = 5;
const B_OPENED: u64 = 4;
/// Left open: /a 3 (one done, one reset by the client), /b 3 (one reset by the backend).
const A_OPEN: u64 = 3;
const B_OPEN: u64 = 3;

/// Route `/a` over one backend, `/b` over a backend and a refused port; 9 tunnels opened,
/// 3 closed with known reasons, one plain request forwarded.
fn scene(model: &str, driver: Driver) -> Scene {
    support::raise_test_fd_limit();
    let (a, b) = (backend(), backend());
    let refused = RefusedPort::new();
    let dead = refused.addr;
    let mut builder = ProxyBuilder::default().workers(2).driver(driver).admin();
    if driver != Driver::Uring {
        // (the builder names worker threads for the io_uring driver itself)
        builder = builder.top("worker_model", &format!("\"{model}\""));
    }
    let proxy = builder
        .route(route("/a", &[a]))
        .route(route("/b", &[dead, b]))
        .blocking_start();
    let addr = proxy.addr();
    let mut on_a: Vec<TcpStream> = (0..A_OPENED).map(|_| tunnel(addr, "/a/t")).collect();
    let mut on_b: Vec<TcpStream> = (0..B_OPENED).map(|_| tunnel(addr, "/b/t")).collect();

    // done: the client finishes, the backend finishes.
    let mut done = on_a.pop().expect("tunnel");
    done.shutdown(Shutdown::Write).expect("fin");
    until_closed(&mut done);
    // client_reset: the client aborts.
    let reset = on_a.pop().expect("tunnel");
    socket2::SockRef::from(&reset)
        .set_linger(Some(Duration::ZERO))
        .expect("linger");
    drop(reset);
    // backend_reset: the backend aborts.
    let mut by_backend = on_b.pop().expect("tunnel");
    by_backend.write_all(b"rst").expect("write");
    until_closed(&mut by_backend);

    // One plain request on /a: forwarded, under either driver.
    let request = b"GET /a/plain HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    let answer = support::blocking::exchange(addr, request, Duration::from_secs(10));
    assert!(
        answer.starts_with(b"HTTP/1.1 200 "),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );

    eventually(
        "the closes and the request to be counted",
        Duration::from_secs(20),
        || {
            proxy.metric("wsplice_connections_active ") == A_OPEN + B_OPEN
                && proxy.metric("wsplice_tunnels_closed_total{reason=\"done\"}") == 1
                && proxy.metric("wsplice_tunnels_closed_total{reason=\"client_reset\"}") == 1
                && proxy.metric("wsplice_tunnels_closed_total{reason=\"backend_reset\"}") == 1
                && proxy.metric("wsplice_http_requests_total{class=\"2xx\"}") == 1
                && proxy.metric("wsplice_handshake_rejects_total{status=\"426\"}") == 0
        },
    );
    let mut open = on_a;
    open.extend(on_b);
    Scene {
        proxy,
        _open: open,
        a,
        b,
        dead,
        _refused: refused,
    }
}

// ---------------------------------------------------------------------------------------------
// The browser (support/browser.rs)
// ---------------------------------------------------------------------------------------------

fn page_test(model: &str, driver: Driver) {
    let Some(bin) = chromium() else { return };
    let s = scene(model, driver);
    let admin = s.proxy.admin_addr().expect("admin");
    let html = run_chromium(
        &bin,
        &format!("http://{admin}/"),
        Duration::from_secs(6),
        &["--dump-dom"],
    );
    let dom = Dom::parse(&html);
    let m = |name: &str| s.proxy.metric(name);

    // The script ran and polled more than once: the page updates itself.
    let polls = dom.num("<tag>", "body", "data-polls");
    assert!(polls >= 2, "{polls} polls of /status:\n{html}");
    let points = dom.num("id", "history", "data-points");
    assert!(points >= 2, "{points} points of history");
    assert_eq!(dom.num("id", "history", "data-last"), A_OPEN + B_OPEN);

    assert_eq!(dom.value("connections"), A_OPEN + B_OPEN, "{model}");
    assert_eq!(dom.value("tunnels-open"), A_OPEN + B_OPEN);
    assert_eq!(dom.value("tunnels-total"), A_OPENED + B_OPENED);
    assert_eq!(dom.value("workers"), 2);
    assert_eq!(text_of(&html, "worker-model"), model);
    // Descriptors move with every admin request; the page shows the proxy's, not nothing.
    assert!(dom.value("open-fds") > A_OPEN + B_OPEN);

    // Routes and their backends.
    let route = |r: &str, attr: &str| {
        let rows = dom.all("data-route", Some(r));
        let row = rows
            .iter()
            .find(|t| !t.contains_key("data-backend"))
            .unwrap_or_else(|| panic!("no row of route {r}"));
        row[attr].parse::<u64>().expect("count")
    };
    let backend = |r: &str, b: SocketAddr| -> HashMap<String, String> {
        dom.all("data-route", Some(r))
            .into_iter()
            .find(|t| t.get("data-backend") == Some(&b.to_string()))
            .unwrap_or_else(|| panic!("no row of backend {b} under {r}"))
            .clone()
    };
    let n = |t: &HashMap<String, String>, k: &str| t[k].parse::<u64>().expect("count");
    assert_eq!(route("/a", "data-active"), A_OPEN);
    assert_eq!(route("/a", "data-tunnels"), A_OPENED);
    assert_eq!(route("/b", "data-active"), B_OPEN);
    assert_eq!(route("/b", "data-tunnels"), B_OPENED);
    let (ba, bb, dead) = (
        backend("/a", s.a),
        backend("/b", s.b),
        backend("/b", s.dead),
    );
    assert_eq!(
        (n(&ba, "data-active"), n(&ba, "data-tunnels")),
        (A_OPEN, A_OPENED)
    );
    assert_eq!(n(&ba, "data-failures"), 0);
    assert_eq!(ba["data-state"], "serving");
    assert_eq!(
        (n(&bb, "data-active"), n(&bb, "data-tunnels")),
        (B_OPEN, B_OPENED)
    );
    assert_eq!(bb["data-state"], "serving");
    // Round robin sent some of /b's tunnels to the refused port first: each such connect is a
    // failure, and the tunnel went on to the next backend.
    let failures = m(&format!(
        "wsplice_backend_failures_total{{backend=\"{}\"}}",
        s.dead
    ));
    assert!(failures >= 1, "round robin never tried {}", s.dead);
    assert_eq!(n(&dead, "data-failures"), failures);
    assert_eq!(route("/b", "data-failures"), failures);
    assert_eq!((n(&dead, "data-active"), n(&dead, "data-tunnels")), (0, 0));
    assert_eq!(dead["data-state"], "failing");
    // Per-route request counts, summed over the workers (threads or processes).
    assert_eq!(route("/a", "data-requests"), 1);

    // Closes by reason, each as counted.
    for (reason, want) in [
        ("done", 1),
        ("client_reset", 1),
        ("backend_reset", 1),
        ("idle_timeout", 0),
        ("half_close_timeout", 0),
        ("drain", 0),
    ] {
        assert_eq!(
            dom.num("data-close", reason, "data-value"),
            want,
            "{reason}"
        );
    }

    // The handshake histogram: one observation per tunnel, in the buckets /metrics has.
    assert_eq!(
        dom.num("id", "handshake", "data-count"),
        A_OPENED + B_OPENED
    );
    let mut cumulative = 0;
    for bar in dom.all("data-le", None) {
        cumulative += bar["data-value"].parse::<u64>().expect("count");
        let le = &bar["data-le"];
        assert_eq!(
            cumulative,
            m(&format!("wsplice_handshake_seconds_bucket{{le=\"{le}\"}}")),
            "le={le}"
        );
    }
    assert_eq!(cumulative, A_OPENED + B_OPENED);

    // HTTP: the one forwarded request, and no refusal; TLS: none.
    assert_eq!(dom.num("id", "http", "data-requests"), 1);
    assert_eq!(dom.num("data-class", "2xx", "data-value"), 1);
    assert!(dom.all("data-status", None).is_empty(), "no refusal shown");
    assert_eq!(dom.num("id", "tls", "data-handshakes"), 0);

    // Memory per connection: the resident memory of the proxy's processes over its
    // connections (resident sets move a little between the page's poll and this read).
    let per = dom.value("memory-per-connection");
    let rss = dom.value("rss");
    assert_eq!(per, rss / (A_OPEN + B_OPEN));
    let tree = s.proxy.rss_bytes();
    assert!(
        rss > tree / 2 && rss < tree * 2,
        "the page shows {rss} bytes resident, the process tree has {tree}"
    );
}

drivers!(page_with_worker_threads, |driver| page_test(
    "threads", driver
));

#[test]
fn page_with_worker_processes() {
    page_test("processes", Driver::Epoll);
}

// ---------------------------------------------------------------------------------------------
// Without the browser
// ---------------------------------------------------------------------------------------------

fn status_json_test(model: &str) {
    let s = scene(model, Driver::Epoll);
    let j: serde_json::Value = serde_json::from_str(&s.proxy.scrape("/status")).expect("json");
    let m = |name: &str| s.proxy.metric(name);
    assert_eq!(j["worker_model"], model);
    let a = j["routes"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["route"] == "/a"))
        .expect("route /a");
    let requests: u64 = a["requests"]
        .as_object()
        .expect("requests")
        .values()
        .filter_map(|v| v.as_u64())
        .sum();
    assert_eq!(requests, 1, "/a's requests, every worker's");
    assert_eq!(j["connections"], A_OPEN + B_OPEN);
    assert_eq!(j["tunnels_total"], A_OPENED + B_OPENED);
    let metrics = &j["metrics"];
    assert_eq!(metrics["wsplice_connections_active"], A_OPEN + B_OPEN);
    assert_eq!(metrics["wsplice_tunnels_closed_total"]["done"], 1);
    assert_eq!(metrics["wsplice_tunnels_closed_total"]["client_reset"], 1);
    assert_eq!(metrics["wsplice_tunnels_closed_total"]["backend_reset"], 1);
    assert_eq!(metrics["wsplice_http_requests_total"]["2xx"], 1);
    let h = &metrics["wsplice_handshake_seconds"];
    let counts: Vec<u64> = h["counts"]
        .as_array()
        .expect("counts")
        .iter()
        .filter_map(|v| v.as_u64())
        .collect();
    assert_eq!(
        counts.iter().sum::<u64>(),
        m("wsplice_handshake_seconds_count")
    );
    assert_eq!(
        h["le"].as_array().map(Vec::len),
        Some(counts.len() - 1),
        "one bucket per bound and +Inf"
    );
    // Every family of the workers' list that /metrics shows is in `metrics`, same name.
    let text = s.proxy.scrape("/metrics");
    for family in wsplice::driver::stats::families() {
        let per_worker = family.name.starts_with("wsplice_worker")
            || family.name.starts_with("wsplice_backend_")
            || family.name.starts_with("wsplice_route_")
            || [
                "wsplice_open_fds",
                "wsplice_fd_limit",
                "wsplice_uptime_seconds",
                "wsplice_workers",
            ]
            .contains(&family.name);
        if !per_worker && text.contains(&format!("# TYPE {} ", family.name)) {
            assert!(
                !metrics[family.name].is_null(),
                "{} is missing from /status",
                family.name
            );
        }
    }

    // Routes, with configured backends listed even when unused.
    let routes = j["routes"].as_array().expect("routes");
    let r = |label: &str| {
        routes
            .iter()
            .find(|r| r["route"] == label)
            .unwrap_or_else(|| panic!("no route {label} in {routes:?}"))
    };
    assert_eq!(r("/a")["active"], A_OPEN);
    assert_eq!(r("/a")["tunnels"], A_OPENED);
    assert_eq!(r("/b")["active"], B_OPEN);
    let b = r("/b")["backends"].as_array().expect("backends");
    let dead = b
        .iter()
        .find(|x| x["backend"] == s.dead.to_string())
        .expect("the refused backend is listed");
    assert_eq!(
        dead["failures"],
        m(&format!(
            "wsplice_backend_failures_total{{backend=\"{}\"}}",
            s.dead
        ))
    );
    let live = b
        .iter()
        .find(|x| x["backend"] == s.b.to_string())
        .expect("backend b");
    assert_eq!(live["active"], B_OPEN);
    assert_eq!(
        live["tunnels"],
        m(&format!(
            "wsplice_backend_tunnels_total{{backend=\"{}\"}}",
            s.b
        ))
    );

    // Memory: resident bytes of every process of the proxy over its connections.
    let mem = &j["memory"];
    let rss = mem["rss_bytes"].as_u64().expect("rss");
    assert_eq!(mem["connections"], A_OPEN + B_OPEN);
    assert_eq!(mem["per_connection_bytes"], rss / (A_OPEN + B_OPEN));
    let tree = s.proxy.rss_bytes();
    assert!(rss > tree / 2 && rss < tree * 2, "{rss} vs {tree}");
    if model == "processes" {
        assert_eq!(j["workers"].as_array().map(Vec::len), Some(2));
    }
}

worker_models!(status_json_test);

/// The page fetches nothing but `/status`: no external script, style, font or image (the
/// proxy runs on machines without internet), and the admin listener's other paths still answer.
#[test]
fn page_is_self_contained_and_served_at_the_root() {
    let a = backend();
    let proxy = ProxyBuilder::default()
        .admin()
        .route(route("/", &[a]))
        .blocking_start();
    let admin = proxy.admin_addr().expect("admin");
    let request = b"GET /?x=1 HTTP/1.1\r\nHost: admin\r\n\r\n";
    let resp = support::blocking::exchange(admin, request, Duration::from_secs(10));
    let resp = String::from_utf8(resp).expect("the page is UTF-8");
    let (head, page) = resp.split_once("\r\n\r\n").expect("head");
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(head.contains("Content-Type: text/html"), "{head}");
    assert!(page.contains("fetch(\"/status\""), "the page polls /status");
    let lower = page.to_ascii_lowercase();
    for outside in [
        "src=\"http",
        "href=\"http",
        "src=\"//",
        "href=\"//",
        "@import",
        "url(",
        "<link",
        "<script src",
        "@font-face",
    ] {
        assert!(
            !lower.contains(outside),
            "the page refers to something outside it: {outside}"
        );
    }
    assert!(proxy.scrape("/healthz").starts_with("ok"));
    assert!(proxy
        .scrape("/metrics")
        .contains("wsplice_connections_active"));
}

/// Writes `bench-results/2026-11-29-status/status-page.png` (the README's picture): the page
/// at 1280x900 with the test scene's tunnels open. Run by hand:
/// `cargo test --test status_page -- --ignored screenshot`.
#[test]
#[ignore]
fn screenshot() {
    let Some(bin) = chromium() else { return };
    let s = scene("processes", Driver::Epoll);
    let admin = s.proxy.admin_addr().expect("admin");
    let out = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("bench-results/2026-11-29-status/status-page.png");
    std::fs::create_dir_all(out.parent().expect("dir")).expect("mkdir");
    // More tunnels come and go while the page polls, so its history has a shape: the page's
    // clock runs on virtual time, which waits for each poll's real fetch.
    let addr = s.proxy.addr();
    let churn = std::thread::spawn(move || {
        let mut held = Vec::new();
        for i in 0..120 {
            held.push(tunnel(addr, if i % 3 == 0 { "/b/t" } else { "/a/t" }));
            if i % 4 == 3 {
                held.swap_remove(i % held.len());
            }
            std::thread::sleep(Duration::from_millis(15));
        }
        held
    });
    run_chromium(
        &bin,
        &format!("http://{admin}/"),
        Duration::from_secs(20),
        &[
            &format!("--screenshot={}", out.display()),
            "--window-size=1280,900",
        ],
    );
    drop(churn.join().expect("churn"));
    assert!(out.is_file(), "no screenshot at {}", out.display());
}
