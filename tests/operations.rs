//! Operating the proxy: reload under load without dropping a tunnel, drain on SIGTERM, metrics
//! that match what the test did, the access log. Each runs under every relay mode.

#[macro_use]
mod support;

use nix::sys::signal::Signal;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::blocking::eventually;
use support::{
    assert_closed_at_drain_end, assert_listener_closes, backend, open, route, Busy, Driver, Proxy,
    ProxyBuilder, RefusedPort, Relay, RelayMode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Two workers, `relay`, an admin listener, and one route per (prefix, backend).
fn proxy_config(relay: Relay, routes: &[(&str, SocketAddr)]) -> ProxyBuilder {
    routes
        .iter()
        .fold(Proxy::builder(relay).admin(), |b, (prefix, backend)| {
            b.route(route(prefix, &[*backend]))
        })
}

e2e!(
    sighup_reload_keeps_1000_tunnels_and_routes_new_connections_by_the_new_config,
    super::sighup_reload_keeps_1000_tunnels_and_routes_new_connections_by_the_new_config
);
async fn sighup_reload_keeps_1000_tunnels_and_routes_new_connections_by_the_new_config(
    relay: Relay,
) {
    let a = backend("A").await.addr;
    let b = backend("B").await.addr;
    let proxy = proxy_config(relay, &[("/a", a)]).start().await;
    let addr = proxy.addr();

    // 1,000 established tunnels with traffic flowing.
    let mut tunnels = Busy::new();
    for i in 0..1000 {
        let (s, name) = open(addr, "/a/x")
            .await
            .unwrap_or_else(|c| panic!("tunnel {i}: {c}"));
        assert_eq!(name, "A");
        tunnels.add(s);
    }
    // New connections keep arriving across the reload.
    let churn_stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let stop = churn_stop.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match open(addr, "/a/new").await {
                    Ok((mut s, name)) => {
                        s.write_all(b"ping").await.expect("churn write");
                        let mut b4 = [0u8; 4];
                        s.read_exact(&mut b4).await.expect("churn echo");
                        seen.push(Ok(name));
                    }
                    Err(code) => seen.push(Err(code)),
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            seen
        })
    };
    assert_eq!(
        open(addr, "/b").await.err(),
        Some(404),
        "no /b before the reload"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Reload: /a moves to backend B, /b appears.
    proxy.write_config(&proxy_config(relay, &[("/a", b), ("/b", b)]).toml());
    proxy.signal(Signal::SIGHUP);
    let lines = tokio::task::block_in_place(|| {
        proxy.expect_line(&["reloaded", "reload failed"], Duration::from_secs(5))
    });
    assert_eq!(lines, "reloaded");
    let (_, name) = open(addr, "/a/after").await.expect("new /a after reload");
    assert_eq!(name, "B", "new connections follow the new config");
    assert!(open(addr, "/b").await.is_ok(), "/b exists after the reload");

    // An invalid config changes nothing.
    proxy.write_config("listen = [\"127.0.0.1:0\"]\n[[route]]\nprefix = \"nope\"\n");
    proxy.signal(Signal::SIGHUP);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(open(addr, "/b").await.map(|(_, n)| n), Ok("B".to_string()));

    tokio::time::sleep(Duration::from_millis(500)).await;
    churn_stop.store(true, Ordering::Relaxed);
    let (records, bytes) = tunnels.stop("was disturbed by the reload").await;
    let seen = churn.await.expect("churn task");
    assert!(
        seen.iter().all(|r| r.is_ok()),
        "a new connection failed during the reload: {seen:?}"
    );
    assert!(
        seen.iter().any(|r| r.as_deref() == Ok("A"))
            && seen.iter().any(|r| r.as_deref() == Ok("B"))
    );
    assert_eq!(records * 32, bytes);
    assert!(
        records >= 1000 * 10,
        "traffic flowed on every tunnel ({records} records)"
    );
}

e2e!(
    sigterm_drains_tunnels_then_exits_0,
    super::sigterm_drains_tunnels_then_exits_0
);
async fn sigterm_drains_tunnels_then_exits_0(relay: Relay) {
    let a = backend("A").await.addr;
    let mut proxy = proxy_config(relay, &[("/", a)])
        .timeout("drain", "2s")
        .start()
        .await;
    let addr = proxy.addr();
    let mut busy = Busy::new();
    for _ in 0..20 {
        let (s, _) = open(addr, "/x").await.expect("tunnel");
        busy.add(s);
    }
    let (lingering, _) = open(addr, "/x")
        .await
        .expect("tunnel that outlives the drain");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = std::time::Instant::now();
    proxy.signal(Signal::SIGTERM);

    // No new connections once the listener is gone.
    assert_listener_closes(addr, "the listener").await;

    // Tunnels that finish within the drain time lose nothing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, bytes) = busy.stop("lost data during the drain").await;
    assert!(bytes > 0);

    // The one left open is closed by the proxy when the drain time ends, then it exits 0.
    assert_closed_at_drain_end(vec![lingering], t0).await;
    let status = tokio::task::block_in_place(|| proxy.wait_exit(Duration::from_secs(5)));
    assert_eq!(status.code(), Some(0));
}

e2e!(
    metrics_count_exactly_what_happened,
    super::metrics_count_exactly_what_happened
);
async fn metrics_count_exactly_what_happened(relay: Relay) {
    let a = backend("A").await.addr;
    // A second route whose only backend refuses: one failure for that backend. The port stays
    // bound (never listening) so that no other test's listener can take it meanwhile.
    let refused = RefusedPort::new();
    let dead = refused.addr;
    let proxy = proxy_config(relay, &[("/ws", a), ("/dead", dead)])
        .start()
        .await;
    let addr = proxy.addr();
    assert_eq!(open(addr, "/dead").await.err(), Some(502));
    let payload = vec![b'x'; 1000];
    let mut tunnels = Vec::new();
    for _ in 0..3 {
        let (mut s, _) = open(addr, "/ws").await.expect("tunnel");
        s.write_all(&payload).await.expect("write");
        let mut back = vec![0u8; 1000];
        s.read_exact(&mut back).await.expect("echo");
        tunnels.push(s);
    }
    assert_eq!(open(addr, "/nowhere").await.err(), Some(404));
    for bad in [
        &b"GET / HTTP/1.1\nHost: x\r\n\r\n"[..],
        b"CONNECT x:1 HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(bad).await.expect("write");
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
    }
    for t in &mut tunnels {
        t.shutdown().await.expect("fin");
        let mut rest = Vec::new();
        t.read_to_end(&mut rest).await.expect("backend fin");
    }
    drop(tunnels);
    tokio::task::block_in_place(|| {
        eventually("tunnels to close", Duration::from_secs(5), || {
            proxy.metric("wsplice_connections_active") == 0
        });
        proxy.assert_metrics(&[
            ("wsplice_tunnels_total", 3),
            ("wsplice_connections_accepted_total", 7),
            ("wsplice_handshake_rejects_total{status=\"502\"}", 1),
            ("wsplice_handshake_rejects_total{status=\"404\"}", 1),
            ("wsplice_handshake_rejects_total{status=\"400\"}", 1),
            ("wsplice_handshake_rejects_total{status=\"405\"}", 1),
            ("wsplice_tunnels_closed_total{reason=\"done\"}", 3),
            ("wsplice_bytes_total{direction=\"client_to_backend\"}", 3000),
            ("wsplice_bytes_total{direction=\"backend_to_client\"}", 3000),
        ]);
        // 6,000 bytes in 1,000-byte bursts: spliced only when told to; auto copies bursts
        // below its 32 KiB threshold.
        let (spliced, copied) = if relay.mode == RelayMode::Splice {
            (6000, 0)
        } else {
            (0, 6000)
        };
        assert_eq!(proxy.metric("wsplice_bytes_spliced_total"), spliced);
        assert_eq!(proxy.metric("wsplice_bytes_copied_total"), copied);
        assert_eq!(proxy.metric("wsplice_handshake_seconds_count"), 3);
        assert_eq!(
            proxy.metric("wsplice_handshake_seconds_bucket{le=\"+Inf\"}"),
            3
        );
        let backend = format!("{{backend=\"{a}\"}}");
        // Every worker publishes its per-backend counts at the end of the loop iteration that
        // changed them; all tunnels are closed (connections_active is 0), so they are final.
        let m = proxy.scrape("/metrics");
        assert!(
            m.contains(&format!("wsplice_backend_active{backend} 0\n")),
            "{m}"
        );
        assert_eq!(
            proxy.metric(&format!("wsplice_backend_tunnels_total{backend}")),
            3
        );
        assert_eq!(
            proxy.metric(&format!("wsplice_backend_failures_total{backend}")),
            0
        );
        let dead = format!("{{backend=\"{dead}\"}}");
        assert_eq!(
            proxy.metric(&format!("wsplice_backend_failures_total{dead}")),
            1
        );
        assert_eq!(
            proxy.metric(&format!("wsplice_backend_tunnels_total{dead}")),
            0
        );
        assert_eq!(proxy.scrape("/healthz"), "ok\n");
        assert!(proxy.scrape("/status").contains("\"tunnels_total\":3"));
    });
}

e2e_drivers!(
    auto_splices_from_the_drivers_own_threshold,
    super::auto_splices_from_the_drivers_own_threshold
);
/// `relay = "auto"` with no `threshold` in the configuration takes the driver's own: 4 KiB
/// under io_uring, where copying costs more, and 32 KiB under epoll. 8 KiB bursts echoed one at
/// a time splice under the first and copy under the second; every byte comes back either way.
async fn auto_splices_from_the_drivers_own_threshold(relay: Relay) {
    const BURST: usize = 8 * 1024;
    const ROUNDS: usize = 32;
    let a = backend("A").await.addr;
    let proxy = proxy_config(relay, &[("/ws", a)]).start().await;
    let (mut s, _) = open(proxy.addr(), "/ws").await.expect("tunnel");
    let mut back = vec![0u8; BURST];
    for round in 0..ROUNDS {
        let payload: Vec<u8> = (0..BURST).map(|k| (k * 7 + round) as u8).collect();
        s.write_all(&payload).await.expect("write");
        s.read_exact(&mut back).await.expect("echo");
        assert!(back == payload, "round {round}: the echo differs");
    }
    s.shutdown().await.expect("fin");
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.expect("backend fin");
    assert!(rest.is_empty(), "{} bytes after the echoes", rest.len());
    tokio::task::block_in_place(|| {
        eventually("the tunnel to close", Duration::from_secs(5), || {
            proxy.metric("wsplice_connections_active") == 0
        });
        let spliced = proxy.metric("wsplice_bytes_spliced_total");
        let copied = proxy.metric("wsplice_bytes_copied_total");
        let total = (2 * BURST * ROUNDS) as u64;
        assert_eq!(
            spliced + copied,
            total,
            "spliced {spliced}, copied {copied}"
        );
        match relay.driver {
            // Each direction copies its first burst, then splices from its verdict.
            Driver::Uring => assert!(
                spliced >= total / 2,
                "io_uring: only {spliced} of {total} bytes spliced"
            ),
            Driver::Epoll => assert_eq!(spliced, 0, "epoll spliced bursts under 32 KiB"),
        }
    });
}

e2e!(
    access_log_lines_parse_and_sigusr1_reopens_the_file,
    super::access_log_lines_parse_and_sigusr1_reopens_the_file
);
async fn access_log_lines_parse_and_sigusr1_reopens_the_file(relay: Relay) {
    let a = backend("A").await.addr;
    let log = std::env::temp_dir().join(format!(
        "wsplice-access-{}-{}.log",
        std::process::id(),
        relay.as_str()
    ));
    let rotated = log.with_extension("log.1");
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_file(&rotated);
    let mut proxy = proxy_config(relay, &[("/ws", a)])
        .set("access_log", "path", &format!("\"{}\"", log.display()))
        .set("access_log", "format", "\"json\"")
        .start()
        .await;
    let addr = proxy.addr();

    let (mut s, _) = open(addr, "/ws/room").await.expect("tunnel");
    s.write_all(&[7u8; 1234]).await.expect("write");
    let mut back = vec![0u8; 1234];
    s.read_exact(&mut back).await.expect("echo");
    s.shutdown().await.expect("fin");
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.expect("fin back");
    assert_eq!(open(addr, "/missing").await.err(), Some(404));

    // logrotate: move the file away, SIGUSR1, and the next line lands in a new file.
    tokio::task::block_in_place(|| {
        eventually("two lines in the log", Duration::from_secs(5), || {
            std::fs::read_to_string(&log)
                .map(|t| t.lines().count() == 2)
                .unwrap_or(false)
        });
    });
    std::fs::rename(&log, &rotated).expect("rotate");
    proxy.signal(Signal::SIGUSR1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(open(addr, "/missing/again").await.err(), Some(404));
    proxy.signal(Signal::SIGTERM);
    tokio::task::block_in_place(|| proxy.wait_exit(Duration::from_secs(10)));

    let old = std::fs::read_to_string(&rotated).expect("rotated log");
    let new = std::fs::read_to_string(&log).expect("reopened log");
    let lines: Vec<serde_json_lite::Obj> = old.lines().map(serde_json_lite::parse).collect();
    assert_eq!(lines.len(), 2, "{old}");
    let tunnel = lines
        .iter()
        .find(|l| l.get("status") == Some("101"))
        .expect("tunnel line");
    assert_eq!(tunnel.get("route"), Some("/ws"));
    assert_eq!(tunnel.get("backend"), Some(a.to_string().as_str()));
    assert_eq!(tunnel.get("bytes_up"), Some("1234"));
    assert_eq!(tunnel.get("bytes_down"), Some("1234"));
    assert_eq!(tunnel.get("reason"), Some("done"));
    assert!(tunnel
        .get("client")
        .is_some_and(|c| c.starts_with("127.0.0.1:")));
    assert!(tunnel.get("time").is_some_and(|t| t.ends_with('Z')));
    let missing = lines
        .iter()
        .find(|l| l.get("status") == Some("404"))
        .expect("404 line");
    assert_eq!(missing.get("route"), Some("-"));
    assert_eq!(missing.get("reason"), Some("rejected"));
    let after: Vec<serde_json_lite::Obj> = new.lines().map(serde_json_lite::parse).collect();
    assert_eq!(after.len(), 1, "{new}");
    assert_eq!(after[0].get("status"), Some("404"));
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_file(&rotated);
}

/// Just enough JSON for flat objects of strings and numbers (the access log's shape), so the
/// test checks the real bytes without another dependency.
mod serde_json_lite {
    pub struct Obj(Vec<(String, String)>);

    impl Obj {
        pub fn get(&self, k: &str) -> Option<&str> {
            self.0
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        }
    }

    pub fn parse(line: &str) -> Obj {
        let body = line
            .trim()
            .strip_prefix('{')
            .and_then(|l| l.strip_suffix('}'))
            .unwrap_or_else(|| panic!("not a JSON object: {line}"));
        let mut out = Vec::new();
        for pair in body.split(',') {
            let (k, v) = pair
                .split_once(':')
                .unwrap_or_else(|| panic!("bad pair {pair}"));
            let k = k.trim().trim_matches('"').to_string();
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            out.push((k, v.to_string()));
        }
        Obj(out)
    }
}
