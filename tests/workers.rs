//! Worker processes (`worker_model = "processes"`): one proxy to the operator over several
//! processes. Counters summed exactly, limits exact across processes, reload and drain in every
//! worker, a killed worker replaced while the others keep their tunnels (and the limits get its
//! share back), one complete access log. Each test checks that both workers held connections, so
//! none passes by accident on one worker.

#[macro_use]
mod support;

use nix::sys::signal::Signal;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use support::blocking::eventually;
use support::{
    assert_closed_at_drain_end, assert_listener_closes, backend, open, open_from, upgrade_request,
    worker_model_args, worker_pids, Busy, Proxy,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const STEP: Duration = Duration::from_secs(5);

fn config(routes: &[(&str, SocketAddr)], extra: &str) -> String {
    let mut t = format!(
        "{}listen = [\"127.0.0.1:0\"]\nworkers = 2\nworker_model = \"processes\"\nadmin = \"127.0.0.1:0\"\n{extra}\n",
        support::scoped_driver_line()
    );
    for (prefix, b) in routes {
        t.push_str(&format!(
            "[[route]]\nprefix = \"{prefix}\"\nbackends = [\"{b}\"]\n"
        ));
    }
    t
}

/// Connections each worker holds, from `/metrics`.
fn per_worker(p: &Proxy) -> [u64; 2] {
    [0, 1].map(|w| p.metric(&format!("wsplice_worker_connections{{worker=\"{w}\"}}")))
}

/// Worker `id`'s pid from `/status`.
fn worker_pid(p: &Proxy, id: usize) -> u32 {
    let status = p.scrape("/status");
    let key = format!("{{\"id\":{id},\"pid\":");
    status
        .split_once(&key)
        .and_then(|(_, rest)| rest.split(',').next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no pid for worker {id} in {status}"))
}

/// Sends `msg` and reads it back within a step; false if the tunnel is gone.
async fn echoes(s: &mut TcpStream, msg: &[u8]) -> bool {
    if s.write_all(msg).await.is_err() {
        return false;
    }
    let mut back = vec![0u8; msg.len()];
    matches!(
        tokio::time::timeout(STEP, s.read_exact(&mut back)).await,
        Ok(Ok(_)) if back == msg
    )
}

/// Opens `n` tunnels to `path` (from the address `from`, when given), each of which must be
/// answered with a 101: their streams and the backends that took them.
async fn open_many(
    p: &Proxy,
    path: &str,
    n: usize,
    from: Option<IpAddr>,
) -> Vec<(TcpStream, String)> {
    let mut all = Vec::with_capacity(n);
    for i in 0..n {
        let tunnel = open_from(p.addr(), path, from)
            .await
            .unwrap_or_else(|c| panic!("tunnel {i} of {n} to {path}: {c}"));
        all.push(tunnel);
    }
    all
}

/// The streams of [`open_many`]'s tunnels.
fn streams(tunnels: Vec<(TcpStream, String)>) -> Vec<TcpStream> {
    tunnels.into_iter().map(|(s, _)| s).collect()
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

scoped_drivers!(metrics_are_summed_exactly_across_worker_processes);
async fn metrics_are_summed_exactly_across_worker_processes() {
    let a = backend("A").await.addr;
    let p = Proxy::blocking_start_toml(&config(&[("/ws", a)], ""));
    assert!(
        p.startup()
            .iter()
            .any(|l| l.starts_with("workers: 2 processes (worker_model = \"processes\")")),
        "{:?}",
        p.startup()
    );
    let mut tunnels = Vec::new();
    let mut up = 0;
    for i in 0..40 {
        let (mut s, _) = open(p.addr(), "/ws/x").await.expect("tunnel");
        let msg = vec![b'm'; 100 + i];
        assert!(echoes(&mut s, &msg).await);
        up += msg.len() as u64;
        tunnels.push(s);
    }
    let spread = blocking(|| per_worker(&p));
    assert!(
        spread[0] > 0 && spread[1] > 0,
        "one worker held all: {spread:?}"
    );
    assert_eq!(spread[0] + spread[1], 40);
    for _ in 0..5 {
        assert_eq!(open(p.addr(), "/nowhere").await.err(), Some(404));
    }
    for mut t in tunnels {
        t.shutdown().await.expect("fin");
        let mut rest = Vec::new();
        t.read_to_end(&mut rest).await.expect("backend fin");
    }
    blocking(|| {
        eventually("every tunnel to close", STEP, || {
            p.metric("wsplice_connections_active") == 0
        });
        let backend = format!("{{backend=\"{a}\"}}");
        p.assert_metrics(&[
            ("wsplice_tunnels_total", 40),
            ("wsplice_connections_accepted_total", 45),
            ("wsplice_handshake_rejects_total{status=\"404\"}", 5),
            ("wsplice_tunnels_closed_total{reason=\"done\"}", 40),
            ("wsplice_bytes_total{direction=\"client_to_backend\"}", up),
            ("wsplice_bytes_total{direction=\"backend_to_client\"}", up),
            ("wsplice_handshake_seconds_count", 40),
            (&format!("wsplice_backend_tunnels_total{backend}"), 40),
            (&format!("wsplice_backend_active{backend}"), 0),
            ("wsplice_workers", 2),
            ("wsplice_worker_restarts_total", 0),
        ]);
        assert!(p
            .scrape("/status")
            .contains("\"worker_model\":\"processes\""));
    });
    // Both worker processes run the driver the config names (epoll by default).
    let driver = support::SCOPED_DRIVER
        .try_with(|d| d.as_str())
        .unwrap_or("epoll");
    let line = format!("driver {driver}");
    assert!(
        p.startup().iter().any(|l| l.starts_with(&line)),
        "{:?}",
        p.startup()
    );
    let by_driver = format!("wsplice_workers_by_driver{{driver=\"{driver}\"}}");
    blocking(|| {
        eventually("both workers to report their driver", STEP, || {
            p.metric(&by_driver) == 2
        })
    });
}

scoped_drivers!(max_connections_is_exact_across_worker_processes);
async fn max_connections_is_exact_across_worker_processes() {
    let a = backend("A").await.addr;
    let p = Proxy::blocking_start_toml(&config(&[("/", a)], "[limits]\nmax_connections = 30"));
    // Within the limit.
    let mut open_now = streams(open_many(&p, "/x", 30, None).await);
    let spread = blocking(|| per_worker(&p));
    assert!(
        spread[0] > 0 && spread[1] > 0,
        "one worker held all: {spread:?}"
    );
    for _ in 0..10 {
        assert_eq!(
            open(p.addr(), "/x").await.err(),
            Some(503),
            "beyond max_connections"
        );
    }
    for s in &mut open_now {
        assert!(echoes(s, b"still flowing").await);
    }
    drop(open_now.pop());
    let deadline = Instant::now() + STEP;
    let mut refused = 10;
    loop {
        match open(p.addr(), "/x").await {
            Ok((s, _)) => {
                open_now.push(s);
                break;
            }
            Err(503) => refused += 1,
            Err(c) => panic!("unexpected {c}"),
        }
        assert!(Instant::now() < deadline, "the freed slot never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(open(p.addr(), "/x").await.err(), Some(503), "full again");
    refused += 1;
    blocking(|| {
        assert_eq!(
            p.metric("wsplice_handshake_rejects_total{status=\"503\"}"),
            refused
        );
        assert_eq!(p.metric("wsplice_connections_active"), 30);
    });
}

scoped_drivers!(reload_keeps_1000_tunnels_spread_over_worker_processes);
async fn reload_keeps_1000_tunnels_spread_over_worker_processes() {
    let a = backend("A").await.addr;
    let b = backend("B").await.addr;
    let p = Proxy::blocking_start_toml(&config(&[("/a", a)], ""));
    let mut tunnels = Busy::new();
    for (s, name) in open_many(&p, "/a/x", 1000, None).await {
        assert_eq!(name, "A");
        tunnels.add(s);
    }
    let spread = blocking(|| per_worker(&p));
    assert!(
        spread[0] >= 300 && spread[1] >= 300,
        "uneven spread {spread:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    p.write_config(&config(&[("/a", b), ("/b", b)], ""));
    p.signal(Signal::SIGHUP);
    let line = blocking(|| p.expect_line(&["reloaded", "reload failed"], STEP));
    assert_eq!(line, "reloaded");
    // Every worker runs the new configuration: enough new connections to reach both.
    let mut after = Vec::new();
    for _ in 0..20 {
        let (s, name) = open(p.addr(), "/a/after").await.expect("new /a");
        assert_eq!(name, "B", "new connections follow the new config");
        after.push(s);
    }
    assert!(open(p.addr(), "/b").await.is_ok());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (records, bytes) = tunnels.stop("was disturbed by the reload").await;
    assert_eq!(records * 32, bytes);
    assert!(
        records >= 1000 * 5,
        "traffic on every tunnel ({records} records)"
    );
}

scoped_drivers!(sigterm_drains_every_worker_process);
async fn sigterm_drains_every_worker_process() {
    let a = backend("A").await.addr;
    let mut p = Proxy::blocking_start_toml(&config(&[("/", a)], "[timeouts]\ndrain = \"2s\""));
    let workers = worker_pids(p.pid());
    assert_eq!(workers.len(), 2, "two worker processes");
    let mut busy = Busy::new();
    for _ in 0..30 {
        let (s, _) = open(p.addr(), "/x").await.expect("tunnel");
        busy.add(s);
    }
    let mut lingering = Vec::new();
    for _ in 0..10 {
        lingering.push(open(p.addr(), "/x").await.expect("tunnel").0);
    }
    let spread = blocking(|| per_worker(&p));
    assert!(
        spread[0] > 0 && spread[1] > 0,
        "one worker held all: {spread:?}"
    );
    let t0 = Instant::now();
    p.signal(Signal::SIGTERM);
    assert_listener_closes(p.addr(), "a listener").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    busy.stop("lost data during the drain").await;
    assert_closed_at_drain_end(lingering, t0).await;
    let status = blocking(|| p.wait_exit(STEP));
    assert_eq!(status.code(), Some(0));
    for pid in workers {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "worker process {pid} outlived the supervisor"
        );
    }
}

// Under io_uring too: a worker process polls its listeners and accepts with accept(2), so a
// killed worker's ring, torn down by the kernel after the process is gone, neither takes a
// client's wake-up from the replacement nor accepts a client into the dying process (see
// src/driver/uring/accept.rs).
scoped_drivers!(a_killed_worker_is_replaced_and_the_others_keep_their_tunnels_and_limits);
async fn a_killed_worker_is_replaced_and_the_others_keep_their_tunnels_and_limits() {
    let a = backend("A").await.addr;
    let p = Proxy::blocking_start_toml(&config(
        &[("/", a)],
        "[limits]\nmax_connections = 51\nmax_connections_per_ip = 40",
    ));
    let one: IpAddr = "127.0.0.1".parse().expect("ip");
    let two: IpAddr = "127.0.0.2".parse().expect("ip");
    let mut first = streams(open_many(&p, "/x", 40, Some(one)).await);
    assert_eq!(open_from(p.addr(), "/x", Some(one)).await.err(), Some(429));
    let spread = blocking(|| per_worker(&p));
    assert!(
        spread[0] > 0 && spread[1] > 0,
        "one worker held all: {spread:?}"
    );
    let (victim, lost) = (blocking(|| worker_pid(&p, 1)), spread[1]);

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim as i32), Signal::SIGKILL)
        .expect("kill worker 1");
    // Meanwhile: new clients are served (those hashed to the dead worker's socket wait in its
    // backlog, which the supervisor keeps, until the replacement takes them).
    let meanwhile: Vec<_> = (0..10)
        .map(|_| tokio::spawn(open_from(p.addr(), "/x", Some(two))))
        .collect();
    let mut second = Vec::new();
    for m in meanwhile {
        let (s, _) = tokio::time::timeout(STEP, m)
            .await
            .expect("served while a worker was replaced")
            .expect("task")
            .expect("a tunnel while a worker was replaced");
        second.push(s);
    }
    let mut alive = 0;
    for s in &mut first {
        alive += u64::from(echoes(s, b"after the kill").await);
    }
    assert_eq!(
        alive,
        40 - lost,
        "exactly the killed worker's tunnels are lost"
    );
    blocking(|| {
        eventually("the replacement", STEP, || {
            p.stderr().contains("restarted") && worker_pid(&p, 1) != victim
        });
        let log = p.stderr();
        assert!(
            log.contains(&format!(
                "worker 1 (pid {victim}) was killed by signal 9 (SIGKILL); its {lost} connections are lost"
            )),
            "{log}"
        );
        assert_eq!(p.metric("wsplice_worker_restarts_total"), 1);
    });
    // The limits got the dead worker's share back, exactly: 127.0.0.1 may open `lost` again
    // (then 429), and the proxy has one slot left (40 + 10 + 1 = max_connections, then 503).
    for i in 0..lost {
        let (mut s, _) = open_from(p.addr(), "/x", Some(one))
            .await
            .unwrap_or_else(|c| panic!("reclaimed slot {i}: {c}"));
        assert!(echoes(&mut s, b"new").await);
        first.push(s);
    }
    assert_eq!(open_from(p.addr(), "/x", Some(one)).await.err(), Some(429));
    let (last, _) = open_from(p.addr(), "/x", Some(two))
        .await
        .expect("the 51st");
    second.push(last);
    assert_eq!(open_from(p.addr(), "/x", Some(two)).await.err(), Some(503));
    for s in first.iter_mut().chain(&mut second) {
        let _ = echoes(s, b"x").await;
    }
    blocking(|| assert_eq!(p.metric("wsplice_connections_active"), 51));
}

scoped_drivers!(the_access_log_has_one_whole_line_per_connection_from_every_worker);
async fn the_access_log_has_one_whole_line_per_connection_from_every_worker() {
    let a = backend("A").await.addr;
    // One file per driver variant: both run at once in this test process.
    let driver = support::SCOPED_DRIVER
        .try_with(|d| d.as_str())
        .unwrap_or("epoll");
    let log = std::env::temp_dir().join(format!(
        "wsplice-workers-{}-{driver}.log",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&log);
    let extra = format!("[access_log]\npath = \"{}\"", log.display());
    let mut p = Proxy::blocking_start_toml(&config(&[("/ws", a)], &extra));
    let mut clients = Vec::new();
    let mut tunnels = Vec::new();
    for _ in 0..150 {
        let (mut s, _) = open(p.addr(), "/ws").await.expect("tunnel");
        clients.push(s.local_addr().expect("addr").to_string());
        assert!(echoes(&mut s, b"logged").await);
        tunnels.push(s);
    }
    let spread = blocking(|| per_worker(&p));
    assert!(
        spread[0] > 0 && spread[1] > 0,
        "one worker held all: {spread:?}"
    );
    for mut t in tunnels {
        t.shutdown().await.expect("fin");
        let mut rest = Vec::new();
        t.read_to_end(&mut rest).await.expect("backend fin");
    }
    for _ in 0..50 {
        let s = TcpStream::connect(p.addr()).await.expect("connect");
        clients.push(s.local_addr().expect("addr").to_string());
        let mut s = s;
        s.write_all(&upgrade_request("/missing", &[]))
            .await
            .expect("write");
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(STEP, s.read_to_end(&mut answer)).await;
    }
    p.signal(Signal::SIGTERM);
    blocking(|| p.wait_exit(STEP));
    let text = std::fs::read_to_string(&log).expect("access log");
    let _ = std::fs::remove_file(&log);
    assert!(text.ends_with('\n'));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 200, "one line per connection:\n{text}");
    let mut seen = Vec::new();
    for l in &lines {
        let f: Vec<&str> = l.split(' ').collect();
        assert_eq!(f.len(), 9, "a whole line: {l}");
        assert!(f[0].ends_with('Z') && f[8].starts_with("reason="), "{l}");
        seen.push(f[1].to_string());
    }
    let tunnels = lines.iter().filter(|l| l.contains(" status=101 ")).count();
    let missing = lines.iter().filter(|l| l.contains(" status=404 ")).count();
    assert_eq!((tunnels, missing), (150, 50));
    seen.sort();
    clients.sort();
    assert_eq!(seen, clients, "every client exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threads_stay_available_by_config() {
    let a = backend("A").await.addr;
    let p = Proxy::blocking_start_toml(
        &config(&[("/", a)], "")
            .replace("worker_model = \"processes\"", "worker_model = \"threads\""),
    );
    assert!(
        worker_pids(p.pid()).is_empty(),
        "threads: no worker processes"
    );
    assert!(p
        .startup()
        .iter()
        .any(|l| l == "workers: 2 threads (worker_model = \"threads\")"));
    let (mut s, _) = open(p.addr(), "/x").await.expect("tunnel");
    assert!(echoes(&mut s, b"threads").await);
    blocking(|| {
        assert!(p.scrape("/status").contains("\"worker_model\":\"threads\""));
        assert_eq!(p.metric("wsplice_connections_active"), 1);
    });
}

#[test]
fn auto_picks_processes_for_two_workers_and_says_why() {
    let p = Proxy::blocking_start_toml("listen = [\"127.0.0.1:0\"]\nworkers = 2\n[[route]]\nprefix = \"/\"\nbackends = [\"127.0.0.1:9\"]\n");
    if !worker_model_args().is_empty() {
        return; // the environment forces a model for the whole suite
    }
    let line = p
        .startup()
        .iter()
        .find(|l| l.starts_with("workers: "))
        .expect("a workers line");
    assert!(
        line.starts_with("workers: 2 processes (worker_model = \"auto\": an open-file limit of "),
        "{line}"
    );
    assert_eq!(worker_pids(p.pid()).len(), 2);
    let cap = p
        .startup()
        .iter()
        .find(|l| l.starts_with("capacity: "))
        .expect("a capacity line");
    assert!(cap.contains(" per process; per worker "), "{cap}");
}
