//! What plain HTTP forwarding reports: requests by status class and by route, pooled backend
//! connections reused and kept, and one access-log line per request.

#[allow(unused_macros)]
#[macro_use]
mod support;
#[path = "support/http.rs"]
mod http;

use std::io::Read;
use std::time::Duration;
use support::blocking::{connect, fetch};

drivers!(
    requests_are_counted_by_class_and_route_and_logged_one_line_each,
    |driver: support::Driver| {
        let rt = support::runtime(1);
        let origin = rt.block_on(http::Origin::start());
        let refused = support::RefusedPort::new();
        let log = std::env::temp_dir().join(format!(
            "wsplice-http-log-{}-{}.jsonl",
            std::process::id(),
            driver.as_str()
        ));
        let _ = std::fs::remove_file(&log);
        let toml = format!(
            "{}listen = [\"127.0.0.1:0\"]\nworkers = 1\nadmin = \"127.0.0.1:0\"\n\
         [access_log]\npath = \"{}\"\nformat = \"json\"\n\
         [[route]]\nprefix = \"/app\"\nbackends = [\"{}\"]\n\
         [[route]]\nprefix = \"/down\"\nbackends = [\"{}\"]\n\
         [[route]]\nprefix = \"/quiet\"\nhost = \"example.com\"\nbackends = [\"{}\"]\n",
            driver.toml(),
            log.display(),
            origin.addr,
            refused.addr,
            origin.addr
        );
        let p = support::Proxy::blocking_start_toml(&toml);
        let mut a = connect(p.addr());
        for path in ["/app/a", "/app/b"] {
            let (status, body) = fetch(&mut a, &http::get(path, &[]));
            assert_eq!(
                (status, body.as_str()),
                (200, &format!("GET {} 0", &path[4..])[..])
            );
        }
        let mut b = connect(p.addr());
        assert_eq!(fetch(&mut b, &http::get("/app/c", &[])).0, 200);
        assert_eq!(fetch(&mut b, &http::get("/down/x", &[])).0, 502);

        // Counters are published once per loop iteration, which may end after the answer went out.
        support::blocking::eventually("the counts to be published", Duration::from_secs(5), || {
            p.metric("wsplice_http_requests_total{class=\"2xx\"}") == 3
                && p.metric("wsplice_http_requests_total{class=\"5xx\"}") == 1
        });
        assert_eq!(
            p.metric("wsplice_route_requests_total{route=\"/app\",class=\"2xx\"}"),
            3
        );
        assert_eq!(
            p.metric("wsplice_route_requests_total{route=\"/down\",class=\"5xx\"}"),
            1
        );
        assert_eq!(
            p.metric("wsplice_route_requests_total{route=\"example.com/quiet\",class=\"2xx\"}"),
            0,
            "a configured route is listed before its first request"
        );
        // One backend connection served the three requests: kept in the pool in between.
        assert_eq!(origin.accepted(), 1);
        assert_eq!(p.metric("wsplice_backend_pool_reused_total"), 2);
        assert_eq!(p.metric("wsplice_backend_pool_idle"), 1);
        assert_eq!(p.metric("wsplice_http_retries_total"), 0);

        let mut lines = Vec::new();
        support::blocking::eventually("four access-log lines", Duration::from_secs(5), || {
            lines = std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect();
            lines.len() >= 4
        });
        assert_eq!(lines.len(), 4, "{lines:?}");
        let parsed: Vec<serde_json::Value> = lines
            .iter()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        let got: Vec<(u64, &str, &str)> = parsed
            .iter()
            .map(|v| {
                (
                    v["status"].as_u64().unwrap_or(0),
                    v["route"].as_str().unwrap_or(""),
                    v["reason"].as_str().unwrap_or(""),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (200, "/app", "http"),
                (200, "/app", "http"),
                (200, "/app", "http"),
                (502, "/down", "http_refused"),
            ]
        );
        assert_eq!(
            parsed[3]["backend"].as_str(),
            Some(refused.addr.to_string().as_str())
        );
        drop(a);
        drop(b);
        let _ = std::fs::remove_file(&log);
    }
);

drivers!(
    a_stop_closes_idle_keep_alive_connections_at_once,
    |driver: support::Driver| {
        let rt = support::runtime(1);
        let origin = rt.block_on(http::Origin::start());
        let toml = format!(
            "{}listen = [\"127.0.0.1:0\"]\nworkers = 2\n[timeouts]\ndrain = \"20s\"\n\
         [[route]]\nprefix = \"/\"\nbackends = [\"{}\"]\n",
            driver.toml(),
            origin.addr
        );
        let mut p = support::Proxy::blocking_start_toml(&toml);
        let mut idle = Vec::new();
        for i in 0..4 {
            let mut s = connect(p.addr());
            assert_eq!(fetch(&mut s, &http::get(&format!("/{i}"), &[])).0, 200);
            idle.push(s);
        }
        let stopped = std::time::Instant::now();
        p.signal(nix::sys::signal::Signal::SIGTERM);
        for s in &mut idle {
            let mut b = [0u8; 16];
            assert!(
                matches!(s.read(&mut b), Ok(0)),
                "an idle keep-alive connection is closed without an answer"
            );
        }
        // Idle keep-alive connections must not hold the stop for the drain time (20 s).
        p.wait_exit(Duration::from_secs(5));
        assert!(stopped.elapsed() < Duration::from_secs(5));
    }
);
