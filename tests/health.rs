//! Backend health over real sockets: active checks that take a killed backend out and bring
//! it back once it listens again on the same port, an HTTP check that fails while the port
//! still accepts, passive ejection of a backend that resets every connection (and the share
//! of a route's backends that may be ejected at once), weights, and drain through the admin
//! listener. Each scenario runs with worker threads and with worker processes (the checking
//! thread then writes the shared table every worker process reads), and the core scenarios
//! under both drivers.
//!
//! Nothing here asserts a duration: each step waits for a condition with a generous deadline.
//! The time a state change took is printed, for the reader.

#[macro_use]
mod support;

use nix::sys::signal::Signal;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use support::blocking::{eventually, try_read_head};
use support::{header, response_101_with, status, upgrade_request, Driver, Proxy};

/// Long enough for a loaded machine; nothing waits this long unless something is broken.
const WAIT: Duration = Duration::from_secs(20);
const IO: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// A backend the test can kill, restart on the same port, make unhealthy or make reset
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Answers: `GET /healthz` 200 (503 while unhealthy), upgrades 101 then echo, else 200
    /// with its name as the body.
    Serve,
    /// Resets every connection as soon as it is accepted.
    Reset,
}

struct Backend {
    addr: SocketAddr,
    mode: Mode,
    stop: Arc<AtomicBool>,
    healthy: Arc<AtomicBool>,
    /// Connections that were not health checks.
    clients: Arc<AtomicUsize>,
    /// Health checks received.
    checks: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Backend {
    fn start(name: &'static str, mode: Mode) -> Backend {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind backend");
        Backend::serve(name, mode, l)
    }

    /// Listens on `addr` again (the port a killed backend had).
    fn restart(name: &'static str, mode: Mode, addr: SocketAddr) -> Backend {
        let deadline = Instant::now() + WAIT;
        loop {
            match TcpListener::bind(addr) {
                Ok(l) => return Backend::serve(name, mode, l),
                Err(e) if Instant::now() < deadline => {
                    eprintln!("rebinding {addr}: {e}; retrying");
                    thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("cannot listen on {addr} again: {e}"),
            }
        }
    }

    fn serve(name: &'static str, mode: Mode, l: TcpListener) -> Backend {
        let addr = l.local_addr().expect("addr");
        l.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let healthy = Arc::new(AtomicBool::new(true));
        let clients = Arc::new(AtomicUsize::new(0));
        let checks = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (st, h, c, k, a) = (
            stop.clone(),
            healthy.clone(),
            clients.clone(),
            checks.clone(),
            accepted.clone(),
        );
        let thread = thread::spawn(move || {
            // The listener is dropped (the port closed) when this loop ends.
            while !st.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, _)) => {
                        a.fetch_add(1, Ordering::Relaxed);
                        if mode == Mode::Reset {
                            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                            drop(s);
                            continue;
                        }
                        let (h, c, k) = (h.clone(), c.clone(), k.clone());
                        thread::spawn(move || answer(s, name, &h, &c, &k));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Backend {
            addr,
            mode,
            stop,
            healthy,
            clients,
            checks,
            accepted,
            thread: Some(thread),
        }
    }

    /// Closes the listening socket (tunnels already open keep being served).
    fn kill(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("backend thread");
        }
    }

    fn clients(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn answer(
    mut s: TcpStream,
    name: &str,
    healthy: &AtomicBool,
    clients: &AtomicUsize,
    checks: &AtomicUsize,
) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(head) = try_read_head(&mut s) else {
        return;
    };
    let check = header(&head, "user-agent").as_deref() == Some("wsplice-health");
    if check {
        checks.fetch_add(1, Ordering::Relaxed);
    } else {
        clients.fetch_add(1, Ordering::Relaxed);
    }
    let ok = !check || healthy.load(Ordering::Relaxed);
    let target = String::from_utf8_lossy(&head)
        .split(' ')
        .nth(1)
        .unwrap_or("")
        .to_owned();
    if header(&head, "upgrade").is_some() && ok {
        let tag = format!("X-Backend: {name}");
        if s.write_all(&response_101_with(&head, &[&tag])).is_ok() {
            support::blocking::echo(&mut s);
        }
        return;
    }
    let (code, body) = if target == "/healthz" && !ok {
        ("503 Service Unavailable", "sick".to_owned())
    } else {
        ("200 OK", name.to_owned())
    };
    let _ = write!(
        s,
        "HTTP/1.1 {code}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/// A plain GET through the proxy: (status, body).
fn get(p: &Proxy, path: &str, extra: &str) -> (u16, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{extra}Connection: close\r\n\r\n");
    exchange(p.addr(), &req)
}

/// Sends `req` to `addr` and reads the answer to the end: (status, body).
fn exchange(addr: SocketAddr, req: &str) -> (u16, String) {
    let resp = support::blocking::exchange(addr, req.as_bytes(), IO);
    let text = String::from_utf8_lossy(&resp);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status(&resp).unwrap_or(0), body.to_owned())
}

/// A WebSocket upgrade through the proxy: the open tunnel and the backend that took it, or
/// the status of the refusal.
fn upgrade(p: &Proxy) -> Result<(TcpStream, String), u16> {
    upgrade_with(p, &[])
}

/// A tunnel through `p` that reached the backend `name` (tries until one does, as the balancer
/// takes turns).
fn tunnel_to(p: &Proxy, name: &str) -> TcpStream {
    let mut to = None;
    eventually(&format!("a tunnel to {name}"), WAIT, || match upgrade(p) {
        Ok((s, got)) if got == name => {
            to = Some(s);
            true
        }
        _ => false,
    });
    to.unwrap_or_else(|| panic!("a tunnel to {name}"))
}

/// [`upgrade`] with `extra` header lines. (Under io_uring the proxy forwards upgrades only,
/// so the scenarios run under both drivers use upgrades.)
fn upgrade_with(p: &Proxy, extra: &[&str]) -> Result<(TcpStream, String), u16> {
    let mut s = TcpStream::connect(p.addr()).expect("connect proxy");
    s.set_read_timeout(Some(IO)).expect("timeout");
    s.write_all(&upgrade_request("/", extra)).expect("send");
    let head = try_read_head(&mut s).map_err(|_| 0u16)?;
    match status(&head) {
        Some(101) => Ok((s, header(&head, "x-backend").unwrap_or_default())),
        other => Err(other.unwrap_or(0)),
    }
}

fn echoes(s: &mut TcpStream, msg: &[u8]) -> bool {
    let mut back = vec![0u8; msg.len()];
    s.write_all(msg).is_ok() && s.read_exact(&mut back).is_ok() && back == msg
}

/// An admin request: (status, body).
fn admin(p: &Proxy, method: &str, path: &str) -> (u16, String) {
    let addr: SocketAddr = p
        .startup()
        .iter()
        .find_map(|l| l.strip_prefix("admin ")?.parse().ok())
        .expect("an admin line");
    let req = format!("{method} {path} HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\n\r\n");
    exchange(addr, &req)
}

/// `backend`'s entry in `/backends` (route `/`).
fn state(p: &Proxy, backend: SocketAddr) -> String {
    let v: serde_json::Value =
        serde_json::from_str(&admin(p, "GET", "/backends").1).expect("/backends is JSON");
    let want = backend.to_string();
    v["routes"][0]["backends"]
        .as_array()
        .and_then(|a| a.iter().find(|b| b["backend"] == want.as_str()))
        .and_then(|b| b["state"].as_str())
        .unwrap_or("missing")
        .to_owned()
}

/// The route's `backends = [...]` line for `list`.
fn backends_of(list: &[&Backend]) -> String {
    let quoted: Vec<String> = list.iter().map(|b| format!("\"{}\"", b.addr)).collect();
    format!("backends = [{}]", quoted.join(", "))
}

/// wsplice on [`config`] with `backends` on its route and `health` in its `[health]`.
fn start_proxy(model: &str, driver: Driver, backends: &[&Backend], health: &str) -> Proxy {
    Proxy::blocking_start_toml(&config(model, driver, &backends_of(backends), "", health))
}

fn config(model: &str, driver: Driver, backends: &str, route_extra: &str, health: &str) -> String {
    let driver_line = match driver {
        Driver::Uring => "driver = \"uring\"\n".to_owned(),
        Driver::Epoll => "driver = \"epoll\"\n".to_owned(),
    };
    let model = if driver == Driver::Uring {
        "threads"
    } else {
        model
    };
    format!(
        "listen = [\"127.0.0.1:0\"]\nworkers = 2\nworker_model = \"{model}\"\n{driver_line}admin = \"127.0.0.1:0\"\n\n[[route]]\nprefix = \"/\"\n{backends}\n{route_extra}\n{}",
        if health.is_empty() {
            String::new()
        } else {
            format!("[route.health]\n{health}\n")
        }
    )
}

// ---------------------------------------------------------------------------------------------
// Active checks
// ---------------------------------------------------------------------------------------------

/// Kills backend b: it is taken out (no new connection is even tried on it), while a tunnel
/// opened to it before stays; started again on the same port, it takes connections again.
fn killed_backend_goes_out_and_comes_back(model: &str, driver: Driver, kind: &str) {
    let a = Backend::start("a", Mode::Serve);
    let mut b = Backend::start("b", Mode::Serve);
    let path = if kind == "tcp" {
        ""
    } else {
        "path = \"/ws\"\n"
    };
    let health = format!(
        "kind = \"{kind}\"\n{path}interval = \"200ms\"\ntimeout = \"500ms\"\nrise = 2\nfall = 2"
    );
    let p = start_proxy(model, driver, &[&a, &b], &health);
    let said = format!("health: {kind} check every 200ms, eject after 5 failures");
    assert!(
        p.startup().iter().any(|l| l.contains(&said)),
        "{:?}",
        p.startup()
    );
    // Both serve at first.
    let mut to_b = tunnel_to(&p, "b");
    if kind != "tcp" {
        eventually("b checked", WAIT, || b.checks.load(Ordering::Relaxed) > 0);
    }

    let killed = Instant::now();
    b.kill();
    eventually("b marked down", WAIT, || state(&p, b.addr) == "down");
    eprintln!(
        "b down {:?} after the kill (fall x interval = 400ms)",
        killed.elapsed()
    );
    // No new connection tries b: every upgrade lands on a at once, and b's failure count (a
    // refused connect each time it is tried) stays where it is.
    let failures = format!("wsplice_backend_failures_total{{backend=\"{}\"}}", b.addr);
    // (b opened a tunnel: its line is there, so a missing line cannot pass for no failures.)
    let before = p.metric(&failures);
    for _ in 0..20 {
        let (_, name) = upgrade(&p).expect("a serves");
        assert_eq!(name, "a");
    }
    assert_eq!(p.metric(&failures), before, "b was still tried");
    // The tunnel opened before stays.
    assert!(echoes(&mut to_b, b"still here"), "the tunnel to b was cut");
    let gauge = format!("wsplice_backend_up{{route=\"/\",backend=\"{}\"}}", b.addr);
    assert_eq!(p.metric(&gauge), 0);
    let changes = format!(
        "wsplice_backend_state_changes_total{{route=\"/\",backend=\"{}\",reason=\"check_failed\"}}",
        b.addr
    );
    assert_eq!(p.metric(&changes), 1);

    let b2 = Backend::restart("b", Mode::Serve, b.addr);
    let back = Instant::now();
    eventually("b up again", WAIT, || state(&p, b.addr) == "up");
    eprintln!(
        "b up {:?} after it listened again (rise x interval = 400ms)",
        back.elapsed()
    );
    eventually(
        "a new tunnel to b",
        WAIT,
        || matches!(upgrade(&p), Ok((_, name)) if name == "b"),
    );
    assert!(b2.clients() > 0);
    assert_eq!(p.metric(&gauge), 1);
    let log = p.stderr();
    assert!(
        log.contains(&format!(
            "backend {} of route / is down: check_failed",
            b.addr
        )),
        "{log}"
    );
    assert!(log.contains("is up: check_passed"), "{log}");
    drop(a);
}

fn metric_or_zero(p: &Proxy, name: &str) -> u64 {
    p.scrape("/metrics")
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

#[test]
fn killed_backend_goes_out_and_comes_back_with_processes() {
    // A plain TCP connect as the check, here.
    killed_backend_goes_out_and_comes_back("processes", Driver::Epoll, "tcp");
}

drivers!(killed_backend_threads, |driver| {
    killed_backend_goes_out_and_comes_back("threads", driver, "websocket")
});

/// An HTTP check answered 503 while the port still accepts: no client reaches the backend
/// until the check passes again.
fn failing_http_check_keeps_clients_off(model: &str) {
    let a = Backend::start("a", Mode::Serve);
    let b = Backend::start("b", Mode::Serve);
    let health = "kind = \"http\"\npath = \"/healthz\"\nexpect_status = 200\ninterval = \"200ms\"\ntimeout = \"500ms\"\nrise = 2\nfall = 3";
    let p = start_proxy(model, Driver::Epoll, &[&a, &b], health);
    eventually("b serves", WAIT, || get(&p, "/", "").1 == "b");
    b.healthy.store(false, Ordering::Relaxed);
    eventually("b down", WAIT, || state(&p, b.addr) == "down");
    let seen = b.clients();
    for _ in 0..30 {
        assert_eq!(get(&p, "/", ""), (200, "a".to_owned()));
    }
    assert_eq!(
        b.clients(),
        seen,
        "a client reached b while its check failed"
    );
    b.healthy.store(true, Ordering::Relaxed);
    eventually("b up", WAIT, || state(&p, b.addr) == "up");
    eventually("b serves again", WAIT, || get(&p, "/", "").1 == "b");
    assert!(
        p.stderr().contains("answered 503, expected 200"),
        "{}",
        p.stderr()
    );
}

worker_models!(failing_http_check_keeps_clients_off);

// ---------------------------------------------------------------------------------------------
// Passive ejection
// ---------------------------------------------------------------------------------------------

/// Two of three backends reset every connection. With max_ejected_percent = 34 only one of
/// them may be ejected: the first to fail eject_after times is, the other stays in (said on
/// stderr). Once ejected, a backend gets no connection attempt; every client then succeeds
/// except those sent to the one the share limit kept in.
fn passive_ejection(model: &str, driver: Driver) {
    let good = Backend::start("good", Mode::Serve);
    let r1 = Backend::start("r1", Mode::Reset);
    let r2 = Backend::start("r2", Mode::Reset);
    let health = "eject_after = 3\neject_time = \"60s\"\neject_max_time = \"120s\"\nmax_ejected_percent = 34";
    let p = start_proxy(model, driver, &[&good, &r1, &r2], health);
    let ejected = |p: &Proxy| {
        [&r1, &r2]
            .iter()
            .filter(|b| state(p, b.addr) == "ejected")
            .count()
    };
    eventually("one resetting backend ejected", WAIT, || {
        let _ = upgrade(&p);
        ejected(&p) == 1
    });
    // Keep failing on the other one until the proxy says the limit holds it in.
    eventually("the share limit keeps the second in", WAIT, || {
        let _ = upgrade(&p);
        p.stderr()
            .contains("but stays in: 1 of 3 backends are ejected")
    });
    for _ in 0..20 {
        let _ = upgrade(&p);
    }
    assert_eq!(ejected(&p), 1, "the share limit did not hold");
    let (out, kept) = if state(&p, r1.addr) == "ejected" {
        (&r1, &r2)
    } else {
        (&r2, &r1)
    };
    assert_eq!(state(&p, kept.addr), "up");
    // The ejected one is not even connected to any more.
    let accepted = out.accepted.load(Ordering::Relaxed);
    let mut codes = std::collections::BTreeMap::new();
    for _ in 0..30 {
        let code = upgrade(&p).map_or_else(|c| c, |_| 101);
        *codes.entry(code).or_insert(0) += 1;
    }
    assert_eq!(
        out.accepted.load(Ordering::Relaxed),
        accepted,
        "an ejected backend was tried"
    );
    assert!(codes.get(&101).is_some_and(|&n| n >= 10), "{codes:?}");
    let ej = format!(
        "wsplice_backend_ejections_total{{route=\"/\",backend=\"{}\"}}",
        out.addr
    );
    assert_eq!(p.metric(&ej), 1);
    assert!(
        p.stderr().contains(&format!(
            "backend {} of route / is ejected: ejected",
            out.addr
        )),
        "{}",
        p.stderr()
    );
    assert_eq!(kept.mode, Mode::Reset);
    drop(good);
}

#[test]
fn passive_ejection_and_share_limit_with_processes() {
    passive_ejection("processes", Driver::Epoll);
}

drivers!(passive_ejection_threads, |driver| passive_ejection(
    "threads", driver
));

/// A backend nothing listens on: every connect is refused and clients are failed over to the
/// other one; after eject_after refusals it is ejected and no longer tried at all.
fn refused_connects_eject(model: &str) {
    let good = Backend::start("good", Mode::Serve);
    let mut dead = Backend::start("dead", Mode::Serve);
    dead.kill();
    let health = "eject_after = 3\neject_time = \"60s\"\nmax_ejected_percent = 50";
    let p = start_proxy(model, Driver::Epoll, &[&good, &dead], health);
    eventually("the dead backend ejected", WAIT, || {
        assert_eq!(upgrade(&p).expect("failed over").1, "good");
        state(&p, dead.addr) == "ejected"
    });
    let failures = format!(
        "wsplice_backend_failures_total{{backend=\"{}\"}}",
        dead.addr
    );
    let before = metric_or_zero(&p, &failures);
    assert!(before >= 3, "{before} refusals counted");
    for _ in 0..20 {
        assert_eq!(upgrade(&p).expect("serves").1, "good");
    }
    assert_eq!(
        metric_or_zero(&p, &failures),
        before,
        "an ejected backend was tried"
    );
}

worker_models!(refused_connects_eject);

/// An ejection ends after eject_time: the backend is tried again (and ejected again, for
/// twice as long, if it still fails).
#[test]
fn ejection_ends_and_grows() {
    let good = Backend::start("good", Mode::Serve);
    let r = Backend::start("r", Mode::Reset);
    let health =
        "eject_after = 2\neject_time = \"1s\"\neject_max_time = \"60s\"\nmax_ejected_percent = 50";
    let p = start_proxy("threads", Driver::Epoll, &[&good, &r], health);
    let ej = format!(
        "wsplice_backend_ejections_total{{route=\"/\",backend=\"{}\"}}",
        r.addr
    );
    eventually("ejected", WAIT, || {
        let _ = get(&p, "/", "");
        metric_or_zero(&p, &ej) == 1
    });
    eventually("ejected a second time", WAIT, || {
        let _ = get(&p, "/", "");
        metric_or_zero(&p, &ej) == 2
    });
    let log = p.stderr();
    assert!(log.contains("for 1s)"), "{log}");
    assert!(log.contains("for 2s)"), "{log}");
    assert!(log.contains("ejection_over"), "{log}");
}

// ---------------------------------------------------------------------------------------------
// Weights
// ---------------------------------------------------------------------------------------------

/// Weight 1 and 3: round robin and hash give b about three quarters of 300 tunnels; least_conn
/// holds about three quarters of 40 open tunnels on b.
fn weights(model: &str, driver: Driver) {
    let a = Backend::start("a", Mode::Serve);
    let b = Backend::start("b", Mode::Serve);
    let list = format!(
        "backends = [\"{}\", {{ addr = \"{}\", weight = 3 }}]",
        a.addr, b.addr
    );
    for (balance, extra) in [
        ("round_robin", ""),
        ("hash", "hash_key = \"header:x-user\""),
    ] {
        let p = Proxy::blocking_start_toml(&config(
            model,
            driver,
            &list,
            &format!("balance = \"{balance}\"\n{extra}"),
            "",
        ));
        let weighted = format!("{} weight=3", b.addr);
        assert!(
            p.startup().iter().any(|l| l.contains(&weighted)),
            "{:?}",
            p.startup()
        );
        let mut on_b = 0;
        for i in 0..300 {
            let user = format!("X-User: user-{i}");
            let (_, name) = upgrade_with(&p, &[&user]).expect("tunnel");
            on_b += usize::from(name == "b");
        }
        eprintln!("{balance}: {on_b} of 300 on b (weight 3 of 4)");
        assert!((190..=260).contains(&on_b), "{balance}: {on_b} of 300 on b");
    }
    let p = Proxy::blocking_start_toml(&config(
        model,
        driver,
        &list,
        "balance = \"least_conn\"",
        "",
    ));
    let mut held = Vec::new();
    let mut on_b = 0;
    for _ in 0..40 {
        let (s, name) = upgrade(&p).expect("tunnel");
        on_b += usize::from(name == "b");
        held.push(s);
    }
    eprintln!("least_conn: {on_b} of 40 tunnels on b");
    assert!((26..=34).contains(&on_b), "least_conn: {on_b} of 40 on b");
}

#[test]
fn weights_with_processes() {
    weights("processes", Driver::Epoll);
}

drivers!(weights_threads, |driver| weights("threads", driver));

// ---------------------------------------------------------------------------------------------
// Drain
// ---------------------------------------------------------------------------------------------

/// Drain b through the admin listener: no new connection reaches it, its open tunnel stays;
/// undrain: it takes connections again. Bad admin requests are answered and change nothing.
fn drain(model: &str) {
    let a = Backend::start("a", Mode::Serve);
    let b = Backend::start("b", Mode::Serve);
    let log_path =
        std::env::temp_dir().join(format!("wsplice-health-{}-{model}.log", std::process::id()));
    let _ = std::fs::remove_file(&log_path);
    let toml = config(model, Driver::Epoll, &backends_of(&[&a, &b]), "", "").replace(
        "\n[[route]]",
        &format!(
            "\n[access_log]\npath = \"{}\"\nformat = \"json\"\n\n[[route]]",
            log_path.display()
        ),
    );
    let p = Proxy::blocking_start_toml(&toml);
    let mut to_b = tunnel_to(&p, "b");

    let (code, body) = admin(
        &p,
        "POST",
        &format!("/backends/drain?route=%2F&backend={}", b.addr),
    );
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["state"], "drained");
    assert_eq!(v["routes"][0]["route"], "/");
    assert_eq!(v["routes"][0]["changed"], true);
    assert_eq!(state(&p, b.addr), "drained");
    let seen = b.clients();
    for _ in 0..20 {
        assert_eq!(upgrade(&p).expect("a serves").1, "a");
        assert_eq!(get(&p, "/", ""), (200, "a".to_owned()));
    }
    assert_eq!(b.clients(), seen, "a drained backend got a new connection");
    assert!(echoes(&mut to_b, b"open tunnel"), "draining cut the tunnel");

    // Wrong requests: answered, nothing changes.
    for (method, path, want) in [
        (
            "POST",
            "/backends/drain?backend=127.0.0.1:1".to_owned(),
            404,
        ),
        (
            "POST",
            "/backends/drain?route=%2Fnope&backend=127.0.0.1:1".to_owned(),
            404,
        ),
        ("POST", "/backends/drain".to_owned(), 400),
        ("POST", "/backends/drain?backend=nonsense".to_owned(), 400),
        (
            "POST",
            "/backends/drain?backend=127.0.0.1:1&x=%zz".to_owned(),
            400,
        ),
        ("PUT", format!("/backends/undrain?backend={}", b.addr), 405),
    ] {
        let (code, body) = admin(&p, method, &path);
        assert_eq!(code, want, "{method} {path}: {body}");
    }
    assert_eq!(state(&p, b.addr), "drained");

    let (code, body) = admin(&p, "POST", &format!("/backends/undrain?backend={}", b.addr));
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"undrained\""), "{body}");
    eventually("b serves again", WAIT, || get(&p, "/", "").1 == "b");
    let log = p.stderr();
    assert!(
        log.contains("is drained: drained (through the admin listener)"),
        "{log}"
    );
    assert!(log.contains("is up: undrained"), "{log}");
    let changes = format!(
        "wsplice_backend_state_changes_total{{route=\"/\",backend=\"{}\",reason=\"drained\"}}",
        b.addr
    );
    assert_eq!(p.metric(&changes), 1);
    // The access log has both changes, as lines of their own kind.
    let events = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["event"] == "backend_state")
            .collect()
    };
    eventually("state changes in the access log", WAIT, || {
        events().len() == 2
    });
    let ev = events();
    assert_eq!(ev[0]["backend"], b.addr.to_string().as_str());
    assert_eq!(
        (&ev[0]["state"], &ev[0]["reason"]),
        (&"drained".into(), &"drained".into())
    );
    assert_eq!(
        (&ev[1]["state"], &ev[1]["reason"]),
        (&"up".into(), &"undrained".into())
    );
    assert_eq!(ev[1]["route"], "/");
    drop(p);
    let _ = std::fs::remove_file(&log_path);
}

worker_models!(drain);

/// A reload keeps a drained backend drained (same route, same address) and a new backend
/// starts up.
#[test]
fn drain_survives_a_reload() {
    let a = Backend::start("a", Mode::Serve);
    let b = Backend::start("b", Mode::Serve);
    let c = Backend::start("c", Mode::Serve);
    let toml = config("threads", Driver::Epoll, &backends_of(&[&a, &b]), "", "");
    let p = Proxy::blocking_start_toml(&toml);
    let (code, _) = admin(&p, "POST", &format!("/backends/drain?backend={}", b.addr));
    assert_eq!(code, 200);
    p.write_config(&toml.replace(&backends_of(&[&a, &b]), &backends_of(&[&a, &b, &c])));
    p.signal(Signal::SIGHUP);
    eventually("c listed", WAIT, || state(&p, c.addr) == "up");
    assert_eq!(state(&p, b.addr), "drained");
    eventually("c serves", WAIT, || get(&p, "/", "").1 == "c");
    let seen = b.clients();
    for _ in 0..20 {
        assert_ne!(get(&p, "/", "").1, "b");
    }
    assert_eq!(b.clients(), seen);
}

/// A proxy started without `[route.health]` gets checks from a reload that adds them.
#[test]
fn checks_start_with_a_reload() {
    let a = Backend::start("a", Mode::Serve);
    let b = Backend::start("b", Mode::Serve);
    b.healthy.store(false, Ordering::Relaxed);
    let list = backends_of(&[&a, &b]);
    let toml = config("threads", Driver::Epoll, &list, "", "");
    let p = Proxy::blocking_start_toml(&toml);
    eventually("b serves (nothing checks it yet)", WAIT, || {
        get(&p, "/", "").1 == "b"
    });
    assert_eq!(b.checks.load(Ordering::Relaxed), 0);
    let health = "kind = \"http\"\npath = \"/healthz\"\ninterval = \"200ms\"\nfall = 2";
    p.write_config(&config("threads", Driver::Epoll, &list, "", health));
    p.signal(Signal::SIGHUP);
    eventually("b down after the reload", WAIT, || {
        state(&p, b.addr) == "down"
    });
    let seen = b.clients();
    for _ in 0..10 {
        assert_eq!(get(&p, "/", "").1, "a");
    }
    assert_eq!(b.clients(), seen);
}
