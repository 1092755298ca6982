//! Backends by name, against a real DNS server: dnsmasq (Debian's, started by the test on a
//! loopback port, unprivileged port, no upstream) serves `app.wsplice.test` from a hosts file
//! the test rewrites (then SIGHUP: dnsmasq reads it again). Backends listen on 127.0.0.2,
//! 127.0.0.3 and 127.0.0.4, one port for all, and name themselves in their 101.
//!
//! Under worker threads (epoll and io_uring) and worker processes, whose address sets travel
//! by different paths (a channel to the workers; the supervisor's control socket).

#[allow(unused_macros)]
#[macro_use]
mod support;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const NAME: &str = "app.wsplice.test";
/// Records change within a second or two (TTL 1 s, `max_ttl = 2s`); the machine is loaded.
const FOLLOW: Duration = Duration::from_secs(25);

/// dnsmasq serving the names of a hosts file, on 127.0.0.1:`port`.
struct Dnsmasq {
    child: Child,
    hosts: PathBuf,
    log: PathBuf,
    port: u16,
}

fn write_hosts(path: &PathBuf, ips: &[&str]) {
    let text: String = ips.iter().map(|ip| format!("{ip} {NAME}\n")).collect();
    std::fs::write(path, text).expect("write the hosts file");
}

/// Debian installs it in /usr/sbin, which a non-root PATH may lack.
fn dnsmasq() -> &'static str {
    if std::path::Path::new("/usr/sbin/dnsmasq").exists() {
        "/usr/sbin/dnsmasq"
    } else {
        "dnsmasq"
    }
}

impl Dnsmasq {
    fn start(ips: &[&str]) -> Dnsmasq {
        Dnsmasq::start_with(ips, &[])
    }

    /// With more dnsmasq options (`--srv-host=...`).
    fn start_with(ips: &[&str], extra: &[String]) -> Dnsmasq {
        let which = Command::new(dnsmasq()).arg("--version").output();
        if !which.is_ok_and(|o| o.status.success()) {
            panic!("dnsmasq is missing: apt-get install dnsmasq-base (tools/test installs it)");
        }
        let dir = std::env::temp_dir();
        let tag = format!("wsplice-dns-{}-{:?}", std::process::id(), Instant::now());
        let tag: String = tag
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        let hosts = dir.join(format!("{tag}.hosts"));
        let log = dir.join(format!("{tag}.log"));
        write_hosts(&hosts, ips);
        // dnsmasq drops root for `nobody` before it reads the hosts file again.
        let _ =
            std::fs::set_permissions(&hosts, std::os::unix::fs::PermissionsExt::from_mode(0o644));
        for _ in 0..5 {
            // A free port (a race with other tests is retried).
            let port = std::net::UdpSocket::bind("127.0.0.1:0")
                .and_then(|s| s.local_addr())
                .expect("a free UDP port")
                .port();
            let err = std::fs::File::create(&log).expect("dnsmasq log");
            let mut child = Command::new(dnsmasq())
                .args([
                    "--no-daemon",
                    "--conf-file=/dev/null",
                    "--no-resolv",
                    "--no-hosts",
                    "--listen-address=127.0.0.1",
                    "--bind-interfaces",
                    "--local-ttl=1",
                    "--log-facility=-",
                    "--pid-file",
                ])
                .arg(format!("--port={port}"))
                .arg(format!("--addn-hosts={}", hosts.display()))
                .args(extra)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(err))
                .spawn()
                .expect("start dnsmasq");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if std::fs::read_to_string(&log).is_ok_and(|l| l.contains("started, version")) {
                    return Dnsmasq {
                        child,
                        hosts,
                        log,
                        port,
                    };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "dnsmasq did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// New records: the hosts file rewritten, then SIGHUP (dnsmasq reads it again).
    fn set(&self, ips: &[&str]) {
        write_hosts(&self.hosts, ips);
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("SIGHUP dnsmasq");
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "--- dnsmasq log\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        let _ = std::fs::remove_file(&self.hosts);
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A tunnel backend on `ip:port`: answers the upgrade with a 101 naming `ip` (`X-Backend`),
/// then echoes.
async fn serve(listener: TcpListener, ip: &'static str) {
    while let Ok((mut s, _)) = listener.accept().await {
        tokio::spawn(async move {
            let Ok((head, _)) = try_read_head(&mut s, 1 << 16).await else {
                return;
            };
            let answer = response_101_with(&head, &[&format!("X-Backend: {ip}")]);
            if s.write_all(&answer).await.is_err() {
                return;
            }
            let (mut r, mut w) = s.into_split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
    }
}

/// Backends on 127.0.0.2, .3 and .4, all on one port (the name's records carry no port).
async fn backends() -> u16 {
    const IPS: [&str; 3] = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
    for _ in 0..10 {
        let first = TcpListener::bind("127.0.0.2:0")
            .await
            .expect("bind 127.0.0.2");
        let port = first.local_addr().expect("addr").port();
        let mut all = vec![first];
        for ip in &IPS[1..] {
            match TcpListener::bind((ip.parse::<IpAddr>().expect("ip"), port)).await {
                Ok(l) => all.push(l),
                Err(_) => break,
            }
        }
        if all.len() == IPS.len() {
            for (l, ip) in all.into_iter().zip(IPS) {
                tokio::spawn(serve(l, ip));
            }
            return port;
        }
    }
    panic!("no port free on 127.0.0.2, .3 and .4 at once");
}

/// A tunnel through the proxy and the backend that answered.
async fn tunnel(proxy: &Proxy) -> (TcpStream, String) {
    match open(proxy.addr(), "/app").await {
        Ok(t) => t,
        Err(code) => panic!("upgrade through the proxy answered {code}"),
    }
}

/// Opens tunnels until `n` in a row land on backends of `want`, within [`FOLLOW`]; keeps
/// them all (with the backend each reached).
async fn follow(
    proxy: &Proxy,
    want: &[&str],
    n: usize,
    kept: &mut Vec<(TcpStream, String)>,
) -> BTreeSet<String> {
    let deadline = Instant::now() + FOLLOW;
    let mut run: Vec<String> = Vec::new();
    loop {
        let (s, name) = tunnel(proxy).await;
        if want.contains(&name.as_str()) {
            run.push(name.clone());
        } else {
            run.clear();
        }
        kept.push((s, name));
        if run.len() >= n {
            return run.into_iter().collect();
        }
        assert!(
            Instant::now() < deadline,
            "new connections did not follow the records to {want:?} within {FOLLOW:?}; last: {:?}\n{}",
            kept.iter().rev().take(8).map(|(_, n)| n).collect::<Vec<_>>(),
            proxy.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every kept tunnel still echoes.
async fn all_echo(kept: &mut [(TcpStream, String)]) {
    for (i, (s, name)) in kept.iter_mut().enumerate() {
        let msg = format!("tunnel {i} to {name}\n");
        let echoed = tokio::time::timeout(STEP, async {
            s.write_all(msg.as_bytes()).await?;
            let mut buf = vec![0u8; msg.len()];
            s.read_exact(&mut buf).await?;
            Ok::<_, std::io::Error>(buf)
        })
        .await;
        match echoed {
            Ok(Ok(buf)) => assert_eq!(buf, msg.as_bytes(), "tunnel {i} to {name}"),
            other => panic!("tunnel {i} to {name} was dropped: {other:?}"),
        }
    }
}

fn config(relay: Relay, model: &str, dns: u16, port: u16) -> String {
    let mut b = Proxy::builder(relay)
        .set("dns", "servers", &format!("[\"127.0.0.1:{dns}\"]"))
        .set("dns", "min_ttl", "\"1s\"")
        .set("dns", "max_ttl", "\"2s\"")
        .set("dns", "timeout", "\"1s\"");
    if relay.driver != Driver::Uring {
        b = b.top("worker_model", &format!("\"{model}\""));
    }
    format!(
        "{}\n[[route]]\nprefix = \"/app\"\nbackends = [\"{NAME}:{port}\"]\n",
        b.toml()
    )
}

async fn start(toml: String) -> Proxy {
    match tokio::task::spawn_blocking(move || Proxy::blocking_start_toml(&toml)).await {
        Ok(p) => p,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

async fn wait_stderr(proxy: &Proxy, want: &[&str]) {
    let deadline = Instant::now() + FOLLOW;
    while !want.iter().all(|w| proxy.stderr().contains(w)) {
        assert!(
            Instant::now() < deadline,
            "no {want:?} in the proxy's stderr within {FOLLOW:?}:\n{}",
            proxy.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for the proxy to say that backend `name` resolves to `addrs` (as it writes them).
async fn wait_resolved(proxy: &Proxy, name: &str, addrs: &str) {
    wait_stderr(
        proxy,
        &[&format!("wsplice: dns: {name} resolves to {addrs}")],
    )
    .await;
}

fn run_scenario<F: std::future::Future<Output = ()>>(f: F) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            if tokio::time::timeout(Duration::from_secs(150), f)
                .await
                .is_err()
            {
                panic!("scenario did not finish within 150 s");
            }
        });
}

/// Two addresses, then three, then one: new connections follow the records, no tunnel is
/// dropped; then the DNS server stops: the last good set stays, and the proxy says so.
fn records_change(relay: Relay, model: &'static str) {
    if relay.driver == Driver::Uring && emulated() {
        eprintln!("skipped under emulation: the io_uring driver");
        return;
    }
    run_scenario(async move {
        let port = backends().await;
        let mut dns = Dnsmasq::start(&["127.0.0.2", "127.0.0.3"]);
        let proxy = start(config(relay, model, dns.port, port)).await;
        let mut kept = Vec::new();

        let seen = follow(&proxy, &["127.0.0.2", "127.0.0.3"], 6, &mut kept).await;
        assert_eq!(seen.len(), 2, "round robin over both addresses: {seen:?}");

        dns.set(&["127.0.0.2", "127.0.0.3", "127.0.0.4"]);
        let deadline = Instant::now() + FOLLOW;
        while !kept.iter().any(|(_, n)| n == "127.0.0.4") {
            assert!(
                Instant::now() < deadline,
                "127.0.0.4 never joined:\n{}",
                proxy.stderr()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
            kept.push(tunnel(&proxy).await);
        }
        let three = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
        let seen = follow(&proxy, &three, 9, &mut kept).await;
        assert_eq!(seen.len(), 3, "round robin over three addresses: {seen:?}");
        all_echo(&mut kept).await;

        dns.set(&["127.0.0.4"]);
        follow(&proxy, &["127.0.0.4"], 6, &mut kept).await;
        let reached: BTreeSet<&str> = kept.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(reached.len(), 3, "{reached:?}");
        // The tunnels to the addresses that left the records are still there.
        all_echo(&mut kept).await;
        wait_stderr(
            &proxy,
            &[&format!(
                "removed 127.0.0.2:{port}, 127.0.0.3:{port}: no new connections, open tunnels stay"
            )],
        )
        .await;

        dns.stop();
        wait_stderr(
            &proxy,
            &[
                &format!("wsplice: dns: cannot resolve {NAME}:{port} via server 127.0.0.1:{} ([dns] servers):", dns.port),
                &format!("keeping its last good addresses (127.0.0.4:{port})"),
            ],
        )
        .await;
        let before = kept.len();
        follow(&proxy, &["127.0.0.4"], 4, &mut kept).await;
        assert!(kept.len() >= before + 4);
        all_echo(&mut kept).await;
    });
}

#[test]
fn records_change_threads_epoll() {
    records_change(Relay::Auto, "threads");
}

#[test]
fn records_change_threads_uring() {
    records_change(Relay::Auto.uring(), "threads");
}

#[test]
fn records_change_processes() {
    records_change(Relay::Auto, "processes");
}

/// A name that does not resolve at start: the proxy starts, says so, answers 502 for the
/// route, and serves once the name appears.
#[test]
fn name_missing_at_start_answers_502_until_it_resolves() {
    run_scenario(async {
        let port = backends().await;
        // The server has no record of the name yet.
        let dns = Dnsmasq::start(&[]);
        let proxy = start(config(Relay::Auto, "threads", dns.port, port)).await;
        wait_stderr(
            &proxy,
            &[&format!(
                "wsplice: warning: backend {NAME}:{port} does not resolve yet: route /app gets no address from it"
            )],
        )
        .await;
        match open(proxy.addr(), "/app").await {
            Err(502) => {}
            other => panic!(
                "expected 502 while the name does not resolve, got {:?}",
                other.map(|(_, n)| n)
            ),
        }
        // The proxy keeps serving other requests meanwhile: a route without a backend is
        // not a dead proxy.
        match open(proxy.addr(), "/nothing-here").await {
            Err(404) => {}
            other => panic!(
                "expected 404 off the route, got {:?}",
                other.map(|(_, n)| n)
            ),
        }
        dns.set(&["127.0.0.3"]);
        // 502 until the retry (1 s, then 2 s, ...) finds the record.
        let deadline = Instant::now() + FOLLOW;
        loop {
            match open(proxy.addr(), "/app").await {
                Ok(_) => break,
                Err(502) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(code) => panic!(
                    "answered {code} after the name appeared:\n{}",
                    proxy.stderr()
                ),
            }
        }
        wait_resolved(
            &proxy,
            &format!("{NAME}:{port}"),
            &format!("127.0.0.3:{port}"),
        )
        .await;
        let mut kept = Vec::new();
        follow(&proxy, &["127.0.0.3"], 3, &mut kept).await;
        all_echo(&mut kept).await;
    });
}

/// `srv:` backends: the SRV record names the target and the port; the target's addresses are
/// followed as they change.
#[test]
fn srv_record_gives_target_and_port() {
    run_scenario(async {
        let port = backends().await;
        let srv = format!("--srv-host=_ws._tcp.{NAME},{NAME},{port},0,0");
        let dns = Dnsmasq::start_with(&["127.0.0.2", "127.0.0.3"], &[srv]);
        let toml = config(Relay::Auto, "threads", dns.port, port).replace(
            &format!("backends = [\"{NAME}:{port}\"]"),
            &format!("backends = [\"srv:_ws._tcp.{NAME}\"]"),
        );
        let proxy = start(toml).await;
        let mut kept = Vec::new();
        let seen = follow(&proxy, &["127.0.0.2", "127.0.0.3"], 6, &mut kept).await;
        assert_eq!(seen.len(), 2, "{seen:?}");
        dns.set(&["127.0.0.4"]);
        follow(&proxy, &["127.0.0.4"], 4, &mut kept).await;
        all_echo(&mut kept).await;
        let srv = format!("srv:_ws._tcp.{NAME}");
        wait_resolved(&proxy, &srv, &format!("127.0.0.4:{port}")).await;
    });
}

/// SRV weights (RFC 2782) weigh the route's balancing: targets of weights 3 and 1 take 3 and 1
/// of every 4 new connections (the round robin is nginx's smooth weighted one over a shared
/// cursor, so any 40 connections in a row split 30 and 10), and a lower priority's target is
/// not used. Under worker threads (both drivers) and worker processes, where the weights
/// travel to the workers as text.
fn srv_weights_weigh_new_connections(relay: Relay, model: &'static str) {
    run_scenario(async {
        let port = backends().await;
        let records = [
            format!("--srv-host=_ws._tcp.{NAME},a.{NAME},{port},0,3"),
            format!("--srv-host=_ws._tcp.{NAME},b.{NAME},{port},0,1"),
            format!("--srv-host=_ws._tcp.{NAME},c.{NAME},{port},1,100"),
            format!("--host-record=a.{NAME},127.0.0.2"),
            format!("--host-record=b.{NAME},127.0.0.3"),
            format!("--host-record=c.{NAME},127.0.0.4"),
        ];
        let dns = Dnsmasq::start_with(&[], &records);
        let toml = config(relay, model, dns.port, port).replace(
            &format!("backends = [\"{NAME}:{port}\"]"),
            &format!("backends = [\"srv:_ws._tcp.{NAME}\"]"),
        );
        let proxy = start(toml).await;
        let srv = format!("srv:_ws._tcp.{NAME}");
        wait_resolved(
            &proxy,
            &srv,
            &format!("127.0.0.2:{port} (weight 3), 127.0.0.3:{port}\n"),
        )
        .await;
        let mut kept = Vec::new();
        let mut counts = std::collections::BTreeMap::new();
        for _ in 0..40 {
            let (s, name) = tunnel(&proxy).await;
            *counts.entry(name.clone()).or_insert(0) += 1;
            kept.push((s, name));
        }
        let want = std::collections::BTreeMap::from([
            ("127.0.0.2".to_string(), 30),
            ("127.0.0.3".to_string(), 10),
        ]);
        assert_eq!(counts, want, "{}", proxy.stderr());
        all_echo(&mut kept).await;
    });
}

#[test]
fn srv_weights_threads_epoll() {
    srv_weights_weigh_new_connections(Relay::Auto, "threads");
}

#[test]
fn srv_weights_threads_uring() {
    srv_weights_weigh_new_connections(Relay::Auto.uring(), "threads");
}

#[test]
fn srv_weights_processes() {
    srv_weights_weigh_new_connections(Relay::Auto, "processes");
}

/// Polls /metrics until `done` holds for its body, within [`FOLLOW`].
async fn wait_metrics(proxy: &Proxy, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + FOLLOW;
    loop {
        let body = proxy.scrape("/metrics");
        if done(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/metrics did not show {what} within {FOLLOW:?}:\n{body}\n{}",
            proxy.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Per-backend metrics follow the records: a backend that leaves them with no tunnel open
/// leaves /metrics; one that leaves with tunnels open stays, its counter not going down while
/// workers drop their rows one by one, until its last tunnel closes; the new one appears.
/// (A long-lived cluster whose pods come and go keeps rows for the backends it has, not for
/// every address it ever used.) Two workers; threads (both drivers) and processes.
fn backend_metrics_follow_the_records(relay: Relay, model: &'static str) {
    run_scenario(async {
        let port = backends().await;
        let dns = Dnsmasq::start(&["127.0.0.2", "127.0.0.3"]);
        let toml =
            config(relay, model, dns.port, port).replacen("\n", "\nadmin = \"127.0.0.1:0\"\n", 1);
        let proxy = start(toml).await;
        let label = |ip: &str| format!("{{backend=\"{ip}:{port}\"}}");
        let (b2, b3, b4) = (label("127.0.0.2"), label("127.0.0.3"), label("127.0.0.4"));
        let mut kept = Vec::new();
        follow(&proxy, &["127.0.0.2", "127.0.0.3"], 6, &mut kept).await;
        // Tunnels to .3 close; those to .2 stay.
        kept.retain(|(_, name)| name == "127.0.0.2");
        let open2 = kept.len() as u64;
        assert!(open2 >= 2, "round robin over two gave .2 {open2} of 6");
        let body = wait_metrics(&proxy, ".3's tunnels closed and .2's open", |b| {
            metric_in(b, &format!("wsplice_backend_active{b3}")) == Some(0)
                && metric_in(b, &format!("wsplice_backend_active{b2}")) == Some(open2)
        })
        .await;
        let total2 = metric_in(&body, &format!("wsplice_backend_tunnels_total{b2}")).unwrap_or(0);
        dns.set(&["127.0.0.4"]);
        follow(&proxy, &["127.0.0.4"], 3, &mut kept).await;
        // Tunnels opened to .3 while the new records came in close too.
        kept.retain(|(_, name)| name != "127.0.0.3");
        let body = wait_metrics(&proxy, "no row for .3 (gone, no tunnel open)", |b| {
            !b.contains(&b3)
        })
        .await;
        let open2 = kept.iter().filter(|(_, n)| n == "127.0.0.2").count() as u64;
        assert_eq!(
            metric_in(&body, &format!("wsplice_backend_active{b2}")),
            Some(open2),
            "{body}"
        );
        let now2 = metric_in(&body, &format!("wsplice_backend_tunnels_total{b2}")).unwrap_or(0);
        assert!(
            now2 >= total2,
            ".2's tunnels_total went down from {total2} to {now2}:\n{body}"
        );
        assert!(metric_in(&body, &format!("wsplice_backend_tunnels_total{b4}")) >= Some(3));
        all_echo(&mut kept).await;
        // The last tunnels to .2 close: its rows go.
        kept.retain(|(_, name)| name != "127.0.0.2");
        wait_metrics(&proxy, "no row for .2 once its last tunnel closed", |b| {
            !b.contains(&b2) && b.contains(&b4)
        })
        .await;
        all_echo(&mut kept).await;
    });
}

#[test]
fn backend_metrics_threads_epoll() {
    backend_metrics_follow_the_records(Relay::Auto, "threads");
}

#[test]
fn backend_metrics_threads_uring() {
    backend_metrics_follow_the_records(Relay::Auto.uring(), "threads");
}

#[test]
fn backend_metrics_processes() {
    backend_metrics_follow_the_records(Relay::Auto, "processes");
}

/// A reload that brings the first name: the resolver starts then, and the name is looked up
/// before `reloaded`, so the very next connection goes to its addresses; the tunnel opened
/// before the reload stays.
#[test]
fn reload_to_a_name_applies_its_addresses_at_once() {
    run_scenario(async {
        let port = backends().await;
        let dns = Dnsmasq::start(&["127.0.0.3"]);
        let named = config(Relay::Auto, "threads", dns.port, port);
        let fixed = named.replace(
            &format!("backends = [\"{NAME}:{port}\"]"),
            &format!("backends = [\"127.0.0.2:{port}\"]"),
        );
        let proxy = start(fixed).await;
        let mut kept = vec![tunnel(&proxy).await];
        assert_eq!(kept[0].1, "127.0.0.2");
        proxy.write_config(&named);
        proxy.signal(nix::sys::signal::Signal::SIGHUP);
        let line = tokio::task::block_in_place(|| {
            proxy.expect_line(&["reloaded", "reload failed"], Duration::from_secs(20))
        });
        assert_eq!(line, "reloaded", "{}", proxy.stderr());
        for _ in 0..4 {
            let t = tunnel(&proxy).await;
            assert_eq!(t.1, "127.0.0.3", "right after the reload");
            kept.push(t);
        }
        all_echo(&mut kept).await;
    });
}
