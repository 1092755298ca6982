//! Loading tests: every key, every default, and the file, line, key and message of each error.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::*;

mod health;
mod sections;

const LISTEN: &str = "listen = [\"127.0.0.1:8080\"]\n";
const ROUTE: &str = "[[route]]\nprefix = \"/ok\"\nbackends = [\"127.0.0.1:9\"]\n";

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str(text, "t.toml")
}

/// The error `text` must be rejected with.
fn error_for(text: &str) -> ConfigError {
    match parse(text) {
        Ok(cfg) => panic!("accepted:\n{text}\n=> {cfg:?}"),
        Err(e) => e,
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// The shape documented for operators and scripts, with every key present.
const FULL: &str = r#"
listen = ["127.0.0.1:8080", "[::1]:8081"]
workers = 2
relay = "splice"
driver = "uring"
underscores_in_headers = false
[timeouts]
handshake = "10s"
connect = "500ms"
idle = "1h 30m"
half_close = "0"
[limits]
max_connections = 10000
max_head_bytes = "64 KiB"
max_headers = 50
max_unsent = "1 MiB"
[keepalive]
idle = "0"
interval = "10s"
count = 6
[splice]
max_pipes = 2500
pipe_size = "128KiB"
threshold = 8192
[uring]
buffer_size = "32KiB"
buffer_memory = "4MiB"
multishot = true
[tls]
listen = ["127.0.0.1:8443"]
unknown_sni = "refuse"
session_tickets = false
[[tls.cert]]
cert = "/etc/wsplice/rsa.pem"
key = "/etc/wsplice/rsa.key"
[[tls.cert]]
cert = "ecdsa.pem"
key = "ecdsa.key"
[[route]]
prefix = "/notice/"
host = "Example.COM"
backends = ["127.0.0.1:50001", "127.0.0.1:50002"]
strip_prefix = false
forwarded_for = "replace"
[dns]
servers = ["127.0.0.1:5353", "[::1]:53"]
min_ttl = "2s"
max_ttl = "1m"
timeout = "500ms"
[[route]]
prefix = "/"
backends = ["127.0.0.1:50003", "App.Internal:8080", "srv:_ws._tcp.app", "app.internal.:8080"]
"#;

#[test]
fn full_example() {
    let cfg = parse(FULL).unwrap();
    let want = Config {
        listen: vec![
            "127.0.0.1:8080".parse().unwrap(),
            "[::1]:8081".parse().unwrap(),
        ],
        workers: Some(2),
        worker_model: WorkerModel::Auto,
        driver: DriverMode::Uring,
        uring: Uring {
            buffer_size: 32768,
            buffer_memory: 4 << 20,
            multishot: true,
        },
        timeouts: Timeouts {
            handshake: secs(10),
            connect: Duration::from_millis(500),
            idle: secs(5400),
            half_close: Duration::ZERO,
            drain: secs(30),
            client_idle: secs(60),
        },
        limits: Limits {
            max_connections: Some(10000),
            max_head_bytes: 65536,
            max_headers: 50,
            max_connections_per_ip: None,
            max_memory: None,
            max_unsent: 1 << 20,
        },
        keepalive: Keepalive {
            idle: Duration::ZERO,
            interval: secs(10),
            count: 6,
        },
        relay: Relay {
            mode: RelayMode::Splice,
            max_pipes: Some(2500),
            pipe_size: Some(131072),
            splice_threshold: Some(8192),
        },
        routes: vec![
            Route {
                prefix: "/notice".into(),
                host: Some("example.com".into()),
                backends: vec![
                    "127.0.0.1:50001".parse().unwrap(),
                    "127.0.0.1:50002".parse().unwrap(),
                ],
                strip_prefix: false,
                forwarded_for: ForwardedFor::Replace,
                send_proxy: None,
                options: Default::default(),
            },
            Route {
                prefix: "/".into(),
                host: None,
                backends: vec!["127.0.0.1:50003".parse().unwrap()],
                strip_prefix: true,
                forwarded_for: ForwardedFor::Append,
                send_proxy: None,
                // Names are kept apart from addresses, each once (case and the root dot aside).
                options: RouteOptions {
                    names: vec![
                        BackendName::Host {
                            host: "app.internal".into(),
                            port: 8080,
                        },
                        BackendName::Srv("_ws._tcp.app".into()),
                    ],
                    ..Default::default()
                },
            },
        ],
        admin: None,
        access_log: None,
        trusted_proxies: Vec::new(),
        proxy_protocol: ProxyIn::default(),
        underscores_in_headers: false,
        tls: Tls {
            listen: vec!["127.0.0.1:8443".parse().unwrap()],
            certs: vec![
                CertPair {
                    cert: "/etc/wsplice/rsa.pem".into(),
                    key: "/etc/wsplice/rsa.key".into(),
                },
                CertPair {
                    cert: "ecdsa.pem".into(),
                    key: "ecdsa.key".into(),
                },
            ],
            unknown_sni: UnknownSni::Refuse,
            session_tickets: false,
            redirect_listen: Vec::new(),
            redirect_port: None,
        },
        backend_pool: BackendPool::default(),
        dns: Dns {
            servers: vec![
                "127.0.0.1:5353".parse().unwrap(),
                "[::1]:53".parse().unwrap(),
            ],
            min_ttl: secs(2),
            max_ttl: secs(60),
            timeout: Duration::from_millis(500),
        },
    };
    assert_eq!(cfg, want);
}

#[test]
fn tls_errors_name_the_key() {
    let cert = "[[tls.cert]]\ncert = \"c.pem\"\nkey = \"k.pem\"\n";
    for (text, line, key, message) in [
        (format!("{LISTEN}[tls]\nlisten = [\"127.0.0.1:8443\"]\n{ROUTE}"), Some(2), "tls.cert", "needs a certificate"),
        (format!("{LISTEN}[tls]\n{cert}{ROUTE}"), Some(2), "tls.listen", "no TLS listener"),
        (format!("{LISTEN}[tls]\nlisten = [\"127.0.0.1:8080\"]\n{cert}{ROUTE}"), Some(3), "tls.listen", "also a plain `listen` address"),
        (format!("{LISTEN}[tls]\nlisten = [\"127.0.0.1:8443\"]\n[[tls.cert]]\ncert = \"c.pem\"\n{ROUTE}"), Some(4), "tls.cert.key", "missing required key"),
        (format!("{LISTEN}[tls]\nlisten = [\"127.0.0.1:8443\"]\nunknown_sni = \"drop\"\n{cert}{ROUTE}"), Some(4), "tls.unknown_sni", "expected \"default\" or \"refuse\""),
        (format!("{LISTEN}[tls]\nlisten = [\"127.0.0.1:8443\"]\nciphers = 1\n{cert}{ROUTE}"), Some(4), "tls.ciphers", "unknown key"),
    ] {
        let e = error_for(&text);
        assert_eq!((e.line(), e.key()), (line, Some(key)), "{text}\n=> {e}");
        assert!(e.message().contains(message), "{text}\n=> {e}");
    }
}

#[test]
fn a_tls_only_proxy_needs_no_plain_listen() {
    let text = format!("[tls]\nlisten = [\"127.0.0.1:8443\"]\n[[tls.cert]]\ncert = \"c.pem\"\nkey = \"k.pem\"\n{ROUTE}");
    let cfg = parse(&text).unwrap();
    assert!(cfg.listen.is_empty());
    assert_eq!(cfg.all_listen().count(), 1);
    assert_eq!(cfg.tls.unknown_sni, UnknownSni::Default);
    assert!(cfg.tls.session_tickets);
}

#[test]
fn tls_flags_pair_certificates_with_keys_in_order() {
    let routes = ["/ws=127.0.0.1:9001".to_string()];
    let flags = TlsFlags {
        listen: vec!["127.0.0.1:8443".parse().unwrap()],
        certs: vec!["a.pem".into(), "b.pem".into()],
        keys: vec!["a.key".into(), "b.key".into()],
        redirect: Vec::new(),
    };
    let cfg = Config::from_cli_with_tls(Vec::new(), flags.clone(), &routes, None, None).unwrap();
    assert!(cfg.listen.is_empty());
    assert_eq!(cfg.tls.certs[1].cert, Path::new("b.pem"));
    assert_eq!(cfg.tls.certs[1].key, Path::new("b.key"));
    let mut odd = flags.clone();
    odd.keys.pop();
    let e = Config::from_cli_with_tls(Vec::new(), odd, &routes, None, None).unwrap_err();
    assert_eq!(e.key(), Some("--cert"));
    let mut none = flags;
    none.certs.clear();
    none.keys.clear();
    let e = Config::from_cli_with_tls(Vec::new(), none, &routes, None, None).unwrap_err();
    assert_eq!(e.key(), Some("--tls-listen"));
}

#[test]
fn defaults() {
    let cfg = parse(&format!("{LISTEN}{ROUTE}")).unwrap();
    assert_eq!(cfg.workers, None);
    assert_eq!(
        cfg.timeouts,
        Timeouts {
            handshake: secs(10),
            connect: secs(5),
            idle: secs(3600),
            half_close: secs(30),
            drain: secs(30),
            client_idle: secs(60),
        }
    );
    assert_eq!(
        cfg.limits,
        Limits {
            max_connections: None,
            max_head_bytes: 16384,
            max_headers: 100,
            max_connections_per_ip: None,
            max_memory: None,
            max_unsent: 0,
        }
    );
    assert_eq!(
        cfg.keepalive,
        Keepalive {
            idle: secs(60),
            interval: secs(10),
            count: 6
        }
    );
    assert_eq!(
        cfg.relay,
        Relay {
            mode: RelayMode::Auto,
            max_pipes: None,
            pipe_size: None,
            splice_threshold: None
        }
    );
    let route = &cfg.routes[0];
    assert!(route.strip_prefix);
    assert_eq!(route.forwarded_for, ForwardedFor::Append);
    assert_eq!(route.host, None);
    assert_eq!(cfg.timeouts, Timeouts::default());
    assert_eq!(cfg.limits, Limits::default());
    assert_eq!(cfg.keepalive, Keepalive::default());
    assert!(cfg.underscores_in_headers);
    assert_eq!(cfg.relay, Relay::default());
    assert_eq!(cfg.driver, DriverMode::Epoll);
    assert_eq!(cfg.uring, Uring::default());
    assert_eq!(cfg.uring.buffer_count(), 64);
}

#[test]
fn uring_buffer_count_is_a_power_of_two() {
    let count = |size, memory| {
        Uring {
            buffer_size: size,
            buffer_memory: memory,
            multishot: true,
        }
        .buffer_count()
    };
    assert_eq!(count(16384, 1 << 20), 64);
    assert_eq!(count(16384, 1_000_000), 32);
    assert_eq!(count(4096, 4096), 1);
    assert_eq!(count(4096, 1 << 30), 32768);
}

#[test]
fn durations() {
    for (text, want) in [
        ("\"0\"", Duration::ZERO),
        ("0", Duration::ZERO),
        ("\"500ms\"", Duration::from_millis(500)),
        ("\"1h 30m\"", secs(5400)),
        ("\"1h30m\"", secs(5400)),
        ("\"2m\"", secs(120)),
        ("\" 45s \"", secs(45)),
    ] {
        let cfg = parse(&format!("{LISTEN}[timeouts]\nidle = {text}\n{ROUTE}")).unwrap();
        assert_eq!(cfg.timeouts.idle, want, "idle = {text}");
    }
}

#[test]
fn sizes() {
    for (text, want) in [
        ("16384", 16384),
        ("\"16384\"", 16384),
        ("\"16KiB\"", 16384),
        ("\"64 KiB\"", 65536),
        ("\"32k\"", 32768),
        ("\"1MiB\"", 1 << 20),
        ("\"1024 B\"", 1024),
    ] {
        let cfg = parse(&format!(
            "{LISTEN}[limits]\nmax_head_bytes = {text}\n{ROUTE}"
        ))
        .unwrap();
        assert_eq!(cfg.limits.max_head_bytes, want, "max_head_bytes = {text}");
    }
}

/// `limits.max_unsent`: a size, or 0 for the kernel's default (no limit).
#[test]
fn max_unsent_sizes() {
    for (text, want) in [("\"64KiB\"", 64 << 10), ("0", 0), ("\"4 KiB\"", 4096)] {
        let cfg = parse(&format!("{LISTEN}[limits]\nmax_unsent = {text}\n{ROUTE}")).unwrap();
        assert_eq!(cfg.limits.max_unsent, want, "max_unsent = {text}");
    }
}

#[test]
fn max_memory_sizes() {
    for (text, want) in [
        ("\"64MiB\"", 64 << 20),
        ("\"4 MiB\"", 4 << 20),
        ("8388608", 8 << 20),
    ] {
        let cfg = parse(&format!("{LISTEN}[limits]\nmax_memory = {text}\n{ROUTE}")).unwrap();
        assert_eq!(cfg.limits.max_memory, Some(want), "max_memory = {text}");
    }
}

#[test]
fn prefix_normalization() {
    for (given, want) in [
        ("/", "/"),
        ("/notice", "/notice"),
        ("/notice/", "/notice"),
        ("/notice//", "/notice"),
        ("//", "/"),
        ("/a/b/", "/a/b"),
        ("/%20x", "/%20x"),
    ] {
        let text = format!("{LISTEN}[[route]]\nprefix = {given:?}\nbackends = [\"127.0.0.1:9\"]\n");
        assert_eq!(
            parse(&text).unwrap().routes[0].prefix,
            want,
            "prefix {given:?}"
        );
    }
}

#[test]
fn hosts() {
    for (given, want) in [
        ("example.com", "example.com"),
        ("WS.Example.COM", "ws.example.com"),
        ("10.0.0.1", "10.0.0.1"),
        ("[::1]", "[::1]"),
        ("my_host", "my_host"),
    ] {
        let text = format!(
            "{LISTEN}[[route]]\nprefix = \"/\"\nhost = {given:?}\nbackends = [\"127.0.0.1:9\"]\n"
        );
        assert_eq!(
            parse(&text).unwrap().routes[0].host.as_deref(),
            Some(want),
            "host {given:?}"
        );
    }
}

/// Each case: the document, then the line, key and a piece of the message the error must have.
#[test]
fn bad_values() {
    let r = ROUTE;
    let l = LISTEN;
    let cases: Vec<(String, Option<usize>, &str, &str)> = vec![
        // top level
        (format!("listen = []\n{r}"), Some(1), "listen", "at least one address"),
        (format!("listen = \"127.0.0.1:1\"\n{r}"), Some(1), "listen", "expected an array of addresses"),
        (format!("listen = [\n  \"127.0.0.1:1\",\n  \"nope\"]\n{r}"), Some(3), "listen", "invalid address \"nope\""),
        (format!("listen = [\"localhost:80\"]\n{r}"), Some(1), "listen", "use an IP address"),
        (format!("listen = [\"127.0.0.1\"]\n{r}"), Some(1), "listen", "missing port"),
        (format!("listen = [\"127.0.0.1:1\", \"127.0.0.1:1\"]\n{r}"), Some(1), "listen", "listed twice"),
        (format!("{l}workers = 0\n{r}"), Some(2), "workers", "between 1 and 1024, got 0"),
        (format!("{l}workers = 1025\n{r}"), Some(2), "workers", "between 1 and 1024"),
        (format!("{l}workers = \"2\"\n{r}"), Some(2), "workers", "expected an integer, found string \"2\""),
        (format!("{l}workers = -1\n{r}"), Some(2), "workers", "got -1"),
        (format!("{l}relay = \"fast\"\n{r}"), Some(2), "relay", "expected \"auto\", \"splice\" or \"copy\""),
        (format!("{l}driver = \"kqueue\"\n{r}"), Some(2), "driver", "invalid value \"kqueue\": expected \"epoll\", \"uring\" or \"auto\""),
        // [uring]
        (format!("{l}[uring]\nbuffer_size = 100\n{r}"), Some(3), "uring.buffer_size", "between 4096 and 1048576"),
        (format!("{l}[uring]\nbuffer_size = \"64KiB\"\nbuffer_memory = \"32KiB\"\n{r}"), Some(2), "uring", "must hold at least one buffer"),
        (format!("{l}underscores_in_headers = \"on\"\n{r}"), Some(2), "underscores_in_headers", "expected true or false"),
        // [timeouts]
        (format!("{l}[timeouts]\nidle = \"1x\"\n{r}"), Some(3), "timeouts.idle", "invalid duration \"1x\": expected a number followed by a unit such as 30s, 5m, 1h"),
        (format!("{l}[timeouts]\nidle = 10\n{r}"), Some(3), "timeouts.idle", "a number needs a unit"),
        (format!("{l}[timeouts]\nidle = \"10\"\n{r}"), Some(3), "timeouts.idle", "invalid duration"),
        (format!("{l}[timeouts]\nidle = true\n{r}"), Some(3), "timeouts.idle", "expected a duration"),
        (format!("{l}[timeouts]\nidle = \"400days\"\n{r}"), Some(3), "timeouts.idle", "at most 365 days"),
        (format!("{l}[timeouts]\nhandshake = \"0\"\n{r}"), Some(3), "timeouts.handshake", "greater than 0"),
        (format!("{l}[timeouts]\nconnect = 0\n{r}"), Some(3), "timeouts.connect", "greater than 0"),
        (format!("{l}[timeouts]\n\nhalf_close = \"-1s\"\n{r}"), Some(4), "timeouts.half_close", "invalid duration"),
        (format!("{l}timeouts = 5\n{r}"), Some(2), "timeouts", "expected a table"),
        // [limits]
        (format!("{l}[limits]\nmax_connections = 0\n{r}"), Some(3), "limits.max_connections", "at least 1"),
        (format!("{l}[limits]\nmax_head_bytes = 1023\n{r}"), Some(3), "limits.max_head_bytes", "between 1024 and 1048576"),
        (format!("{l}[limits]\nmax_head_bytes = \"2MiB\"\n{r}"), Some(3), "limits.max_head_bytes", "between 1024 and 1048576, got 2097152"),
        (format!("{l}[limits]\nmax_head_bytes = \"16 KB/s\"\n{r}"), Some(3), "limits.max_head_bytes", "invalid size"),
        (format!("{l}[limits]\nmax_head_bytes = \"KiB\"\n{r}"), Some(3), "limits.max_head_bytes", "invalid size"),
        (format!("{l}[limits]\nmax_head_bytes = 1.5\n{r}"), Some(3), "limits.max_head_bytes", "found float"),
        (format!("{l}[limits]\nmax_memory = \"1MiB\"\n{r}"), Some(3), "limits.max_memory", "between 4194304 and 1099511627776, got 1048576"),
        (format!("{l}[limits]\nmax_memory = \"lots\"\n{r}"), Some(3), "limits.max_memory", "invalid size"),
        (format!("{l}[limits]\nmax_headers = 0\n{r}"), Some(3), "limits.max_headers", "between 1 and 1000"),
        (format!("{l}[limits]\nmax_unsent = 100\n{r}"), Some(3), "limits.max_unsent", "100 bytes is too small: use 0 (the kernel's default: no limit) or at least 4KiB"),
        (format!("{l}[limits]\nmax_unsent = \"1GiB\"\n{r}"), Some(3), "limits.max_unsent", "between 0 and 67108864, got 1073741824"),
        (format!("{l}[limits]\nmax_headers = 1001\n{r}"), Some(3), "limits.max_headers", "between 1 and 1000"),
        // [keepalive]
        (format!("{l}[keepalive]\ncount = 0\n{r}"), Some(3), "keepalive.count", "between 1 and 127"),
        (format!("{l}[keepalive]\ncount = 128\n{r}"), Some(3), "keepalive.count", "between 1 and 127"),
        (format!("{l}[keepalive]\ninterval = \"0\"\n{r}"), Some(3), "keepalive.interval", "whole number of seconds"),
        (format!("{l}[keepalive]\nidle = \"1500ms\"\n{r}"), Some(3), "keepalive.idle", "whole number of seconds"),
        (format!("{l}[keepalive]\nidle = \"10h\"\n{r}"), Some(3), "keepalive.idle", "32767s"),
        // [splice]
        (format!("{l}[splice]\npipe_size = \"2KiB\"\n{r}"), Some(3), "splice.pipe_size", "between 4096 and 1048576"),
        (format!("{l}[splice]\npipe_size = \"2MiB\"\n{r}"), Some(3), "splice.pipe_size", "between 4096 and 1048576"),
        (format!("{l}[splice]\nthreshold = 0\n{r}"), Some(3), "splice.threshold", "at least 1"),
        (format!("{l}[splice]\nmax_pipes = -1\n{r}"), Some(3), "splice.max_pipes", "at least 0"),
        // [[route]]
        (format!("{l}[[route]]\nbackends = [\"127.0.0.1:9\"]\n"), Some(2), "route.prefix", "missing required key"),
        (format!("{l}[[route]]\nprefix = \"/a\"\n"), Some(2), "route.backends", "missing required key"),
        (format!("{l}[[route]]\nprefix = \"a\"\nbackends = [\"127.0.0.1:9\"]\n"), Some(3), "route.prefix", "must start with '/'"),
        (format!("{l}[[route]]\nprefix = \"\"\nbackends = [\"127.0.0.1:9\"]\n"), Some(3), "route.prefix", "must start with '/'"),
        (format!("{l}[[route]]\nprefix = \"/a?b\"\nbackends = [\"127.0.0.1:9\"]\n"), Some(3), "route.prefix", "'?'"),
        (format!("{l}[[route]]\nprefix = \"/a#b\"\nbackends = [\"127.0.0.1:9\"]\n"), Some(3), "route.prefix", "'#'"),
        (format!("{l}[[route]]\nprefix = \"/a b\"\nbackends = [\"127.0.0.1:9\"]\n"), Some(3), "route.prefix", "whitespace"),
        (format!("{l}[[route]]\nprefix = \"/a\\u0001\"\nbackends = [\"127.0.0.1:9\"]\n"), Some(3), "route.prefix", "control"),
        (format!("{l}[[route]]\nprefix = \"/é\"\nbackends = [\"127.0.0.1:9\"]\n"), Some(3), "route.prefix", "ASCII"),
        (format!("{l}[[route]]\nprefix = \"/\"\nhost = \"a.com:80\"\nbackends = [\"127.0.0.1:9\"]\n"), Some(4), "route.host", "port"),
        (format!("{l}[[route]]\nprefix = \"/\"\nhost = \"a b\"\nbackends = [\"127.0.0.1:9\"]\n"), Some(4), "route.host", "invalid character ' '"),
        (format!("{l}[[route]]\nprefix = \"/\"\nhost = \"\"\nbackends = [\"127.0.0.1:9\"]\n"), Some(4), "route.host", "must not be empty"),
        (format!("{l}[[route]]\nprefix = \"/\"\nhost = \"a..b\"\nbackends = [\"127.0.0.1:9\"]\n"), Some(4), "route.host", "empty label"),
        (format!("{l}[[route]]\nprefix = \"/\"\nhost = \"::1\"\nbackends = [\"127.0.0.1:9\"]\n"), Some(4), "route.host", "brackets"),
        (format!("{l}[[route]]\nprefix = \"/\"\nbackends = []\n"), Some(4), "route.backends", "at least one backend"),
        (format!("{l}[[route]]\nprefix = \"/\"\nbackends = [\"ftp://127.0.0.1:1/\"]\n"), Some(4), "route.backends", "unknown scheme"),
        (format!("{l}[[route]]\nprefix = \"/\"\nbackends = [\"wss://127.0.0.1:1\", \"127.0.0.1:2\"]\n"), Some(4), "route.backends", "all TLS"),
        (format!("{l}[[route]]\nprefix = \"/\"\nbackends = [\"127.0.0.1:9\"]\nbackend_ca = \"ca.pem\"\n"), Some(5), "route.backend_ca", "backend_tls = true"),
        (format!("{l}[[route]]\nprefix = \"/\"\nbackends = [\"127.0.0.1:9\"]\nbackend_server_name = \"a.example\"\n"), Some(5), "route.backend_server_name", "backend_tls = true"),
        (format!("{l}[[route]]\nprefix = \"/\"\nbackends = [\"127.0.0.1:9\"]\nbackend_tls = true\nbackend_server_name = \"a b\"\n"), Some(6), "route.backend_server_name", "invalid server name"),
        (format!("{l}[[route]]\nprefix = \"/\"\nbackends = [\"wss://127.0.0.1:9\"]\nbackend_tls = false\n"), Some(5), "route.backend_tls", "contradicts"),
        (format!("{l}{r}[tls]\nredirect_listen = [\"127.0.0.1:8080\"]\n"), Some(6), "tls.redirect_listen", "already a listen address"),
        (format!("{l}{r}[tls]\nredirect_port = 0\n"), Some(6), "tls.redirect_port", "between 1 and 65535"),
        (format!("{l}[[route]]\nprefix = \"/\"\nbackends = [\"backend.local:0\"]\n"), Some(4), "route.backends", "a name needs a port from 1 to 65535"),
        (format!("{l}[[route]]\nprefix = \"/\"\nbackends = [\"srv:a b\"]\n"), Some(4), "route.backends", "invalid SRV name"),
        (format!("listen = [\"localhost:80\"]\n{r}"), Some(1), "listen", "use an IP address here (host names are for `backends` only)"),
        (format!("{l}[dns]\nmin_ttl = \"10s\"\nmax_ttl = \"5s\"\n[[route]]\nprefix = \"/\"\nbackends = [\"app:80\"]\n"), Some(4), "dns.max_ttl", "must not be below min_ttl (10s)"),
        (format!("{l}[dns]\nservers = [\"dns.local:53\"]\n[[route]]\nprefix = \"/\"\nbackends = [\"app:80\"]\n"), Some(3), "dns.servers", "use an IP address"),
        (format!("{l}[[route]]\nprefix = \"/\"\nbackends = [\"127.0.0.1:0\"]\n"), Some(4), "route.backends", "non-zero port"),
        (format!("{l}[[route]]\nprefix = \"/\"\nbackends = [\"127.0.0.1:9\"]\nstrip_prefix = \"yes\"\n"), Some(5), "route.strip_prefix", "expected true or false"),
        (format!("{l}[[route]]\nprefix = \"/\"\nbackends = [\"127.0.0.1:9\"]\nforwarded_for = \"set\"\n"), Some(5), "route.forwarded_for", "\"append\" or \"replace\""),
        (format!("{l}route = 1\n"), Some(2), "route", "expected [[route]] tables"),
        (format!("{l}route = [1]\n"), Some(2), "route", "expected a table"),
        // duplicates: the error names the second route, and the message the first one's line
        (format!("{l}{r}\n{r}"), Some(7), "route.prefix", "duplicate route: prefix \"/ok\" for any host is already defined on line 3"),
        (
            format!("{l}[[route]]\nprefix = \"/a/\"\nhost = \"x.com\"\nbackends = [\"127.0.0.1:9\"]\n[[route]]\nprefix = \"/a\"\nhost = \"X.com\"\nbackends = [\"127.0.0.1:8\"]\n"),
            Some(7),
            "route.prefix",
            "for host x.com is already defined on line 3",
        ),
        // [access_log], [proxy_protocol] and the keys around them
        (format!("{l}admin = \"nope\"\n{r}"), Some(2), "admin", "invalid address \"nope\": expected IP:PORT, such as 127.0.0.1:8080 or [::1]:8080"),
        (format!("{l}trusted_proxies = \"10.0.0.0/8\"\n{r}"), Some(2), "trusted_proxies", "expected an array of networks, such as [\"10.0.0.0/8\", \"127.0.0.1\"], found string \"10.0.0.0/8\""),
        (format!("{l}trusted_proxies = [\"10.0.0.0/33\"]\n{r}"), Some(2), "trusted_proxies", "invalid network \"10.0.0.0/33\": expected an address or CIDR such as 10.0.0.0/8"),
        (format!("{l}[access_log]\nformat = \"xml\"\n{r}"), Some(3), "access_log.format", "unknown format \"xml\" (expected \"text\" or \"json\")"),
        (format!("{l}[access_log]\npath = \"\"\n{r}"), Some(3), "access_log.path", "must be a file path, or \"-\" for stdout"),
        (format!("{l}[proxy_protocol]\nlisten = [\"127.0.0.1:9090\"]\ntrusted = [\"10.0.0.0/8\"]\n{r}"), Some(3), "proxy_protocol.listen", "127.0.0.1:9090 is not one of the `listen` addresses; add it there too"),
        (format!("{l}[proxy_protocol]\nlisten = [\"127.0.0.1:8080\"]\n{r}"), Some(2), "proxy_protocol.trusted", "list the load balancers allowed to send PROXY headers, such as [\"10.0.0.0/8\"]"),
        (format!("{l}[[route]]\nprefix = \"/\"\nbackends = [\"127.0.0.1:9\"]\nsend_proxy = \"v3\"\n"), Some(5), "route.send_proxy", "invalid value \"v3\": expected \"v1\", \"v2\" or \"none\""),
        (format!("{l}relay = \"fast\"\n{r}"), Some(2), "relay", "invalid value \"fast\": expected \"auto\", \"splice\" or \"copy\""),
        // plain HTTP, balancing, origins, protocol, the backend pool
        (format!("{l}{r}http = 1\n"), Some(5), "route.http", "expected true or false"),
        (format!("{l}{r}response_timeout = \"0\"\n"), Some(5), "route.response_timeout", "greater than 0"),
        (format!("{l}{r}balance = \"random\"\n"), Some(5), "route.balance", "expected \"round_robin\", \"least_conn\", \"hash\" or \"cookie\""),
        (format!("{l}{r}hash_key = \"client_ip\"\n"), Some(5), "route.hash_key", "needs balance = \"hash\""),
        (format!("{l}{r}balance = \"hash\"\nhash_key = \"path\"\n"), Some(6), "route.hash_key", "\"client_ip\", \"cookie:NAME\", \"query:NAME\" or \"header:NAME\""),
        (format!("{l}{r}balance = \"hash\"\nhash_key = \"cookie:\"\n"), Some(6), "route.hash_key", "invalid value"),
        (format!("{l}{r}cookie_name = \"srv\"\n"), Some(5), "route.cookie_name", "need balance = \"cookie\""),
        (format!("{l}{r}balance = \"cookie\"\ncookie_name = \"a b\"\n"), Some(6), "route.cookie_name", "invalid cookie name"),
        (format!("{l}{r}origins = [\"example.com\"]\n"), Some(5), "route.origins", "expected scheme://host[:port]"),
        (format!("{l}{r}origins = [\"https://example.com/app\"]\n"), Some(5), "route.origins", "without a path"),
        (format!("{l}{r}protocol = \"fastcgi\"\n"), Some(5), "route.protocol", "expected \"http\" or \"uwsgi\""),
        (format!("{l}{r}protocol = \"uwsgi\"\nsend_proxy = \"v1\"\n"), Some(6), "route.send_proxy", "uwsgi backends take no PROXY header"),
        (format!("{l}[backend_pool]\nidle_timeout = \"0\"\n{r}"), Some(3), "backend_pool.idle_timeout", "greater than 0"),
        (format!("{l}[timeouts]\nclient_idle = 0\n{r}"), Some(3), "timeouts.client_idle", "greater than 0"),
        // missing things with no line to point at
        (r.to_string(), None, "listen", "missing required key"),
        (l.to_string(), None, "route", "at least one [[route]]"),
        (format!("{l}route = []\n"), None, "route", "at least one [[route]]"),
    ];
    for (text, line, key, msg) in &cases {
        let e = error_for(text);
        assert_eq!(
            (e.line(), e.key()),
            (*line, Some(*key)),
            "error {e} for:\n{text}"
        );
        assert!(
            e.message().contains(msg),
            "error {e:?} lacks {msg:?} for:\n{text}"
        );
        assert_eq!(e.file(), Some("t.toml"));
    }
}

#[test]
fn tls_backends_by_scheme_or_key() {
    let cfg = parse(&format!(
        "{LISTEN}[[route]]\nprefix = \"/a\"\nbackends = [\"wss://127.0.0.1:9443/\", \"https://127.0.0.1:9444\"]\nbackend_ca = \"ca.pem\"\nbackend_server_name = \"backend.example\"\n\n[[route]]\nprefix = \"/b\"\nbackends = [\"127.0.0.1:9\"]\nbackend_tls = true\n\n[[route]]\nprefix = \"/c\"\nbackends = [\"ws://127.0.0.1:9\"]\n"
    ))
    .expect("config");
    let a = &cfg.routes[0];
    assert_eq!(
        a.backends,
        vec![
            "127.0.0.1:9443".parse::<SocketAddr>().unwrap(),
            "127.0.0.1:9444".parse().unwrap()
        ]
    );
    let tls = a.options.backend_tls.as_ref().expect("TLS backends");
    assert_eq!(tls.ca.as_deref(), Some(Path::new("ca.pem")));
    assert_eq!(tls.server_name.as_deref(), Some("backend.example"));
    let b = cfg.routes[1]
        .options
        .backend_tls
        .as_ref()
        .expect("backend_tls = true");
    assert_eq!((b.ca.as_ref(), b.server_name.as_ref()), (None, None));
    assert_eq!(cfg.routes[2].options.backend_tls, None);
}

#[test]
fn redirect_listen_and_port() {
    let cfg = parse(&format!(
        "{LISTEN}{ROUTE}[tls]\nlisten = [\"127.0.0.1:8443\"]\nredirect_listen = [\"127.0.0.1:8081\"]\n[[tls.cert]]\ncert = \"c.pem\"\nkey = \"k.pem\"\n"
    ))
    .expect("config");
    assert_eq!(
        cfg.tls.redirect_listen,
        vec!["127.0.0.1:8081".parse::<SocketAddr>().unwrap()]
    );
    assert_eq!(cfg.https_port(), 8443);
    assert_eq!(cfg.all_listen().count(), 3);
    let cfg = parse(&format!(
        "{LISTEN}{ROUTE}[tls]\nredirect_listen = [\"127.0.0.1:8081\"]\nredirect_port = 4443\n"
    ))
    .expect("config");
    assert_eq!(cfg.https_port(), 4443);
}
