//! Loading tests, second part: the sections the full example leaves out, unknown keys and their
//! hints, error formatting, syntax errors, the command line and the worker model.

use super::*;

/// The sections `FULL` leaves out.
#[test]
fn admin_access_log_proxy_protocol_and_send_proxy() {
    let text = r#"
listen = ["127.0.0.1:8080", "127.0.0.1:8081"]
admin = "127.0.0.1:9000"
trusted_proxies = ["10.0.0.0/8", "192.0.2.1"]
[access_log]
format = "json"
[proxy_protocol]
listen = ["127.0.0.1:8081"]
trusted = ["10.1.0.0/16"]
[[route]]
prefix = "/a"
backends = ["127.0.0.1:9"]
send_proxy = "v2"
[[route]]
prefix = "/b"
backends = ["127.0.0.1:9"]
send_proxy = "none"
[[route]]
prefix = "/c"
backends = ["127.0.0.1:9"]
send_proxy = "v1"
"#;
    let cfg = parse(text).unwrap();
    let nets =
        |list: &[&str]| -> Vec<ipnet::IpNet> { list.iter().map(|n| n.parse().unwrap()).collect() };
    assert_eq!(cfg.admin, Some("127.0.0.1:9000".parse().unwrap()));
    assert_eq!(cfg.trusted_proxies, nets(&["10.0.0.0/8", "192.0.2.1/32"]));
    assert_eq!(
        cfg.access_log,
        Some(AccessLog {
            path: "-".into(),
            format: LogFormat::Json
        })
    );
    assert_eq!(
        cfg.proxy_protocol,
        ProxyIn {
            listen: vec!["127.0.0.1:8081".parse().unwrap()],
            trusted: nets(&["10.1.0.0/16"]),
        }
    );
    let send_proxy: Vec<_> = cfg.routes.iter().map(|r| r.send_proxy).collect();
    assert_eq!(
        send_proxy,
        [Some(ProxyVersion::V2), None, Some(ProxyVersion::V1)]
    );

    let cfg = parse(&format!(
        "{LISTEN}[access_log]\npath = \"/var/log/ws.log\"\n{ROUTE}"
    ))
    .unwrap();
    assert_eq!(
        cfg.access_log,
        Some(AccessLog {
            path: "/var/log/ws.log".into(),
            format: LogFormat::Text
        })
    );
    assert_eq!(parse(&format!("{LISTEN}{ROUTE}")).unwrap().access_log, None);
}

#[test]
fn route_options_and_backend_pool() {
    let cfg = parse(&format!(
        "{LISTEN}[backend_pool]\nmax_idle = 0\nidle_timeout = \"5s\"\n[timeouts]\nclient_idle = \"75s\"\n\
         {ROUTE}http = false\nresponse_timeout = \"2m\"\nbalance = \"cookie\"\ncookie_name = \"srv\"\n\
         cookie_secure = true\ncookie_http_only = false\ncookie_same_site = \"strict\"\n\
         origins = [\"HTTPS://App.Example/\", \"null\"]\nprotocol = \"uwsgi\"\n\
         [[route]]\nprefix = \"/h\"\nbackends = [\"127.0.0.1:9\"]\nbalance = \"hash\"\nhash_key = \"query:sid\"\n\
         [[route]]\nprefix = \"/l\"\nbackends = [\"127.0.0.1:9\"]\nbalance = \"least_conn\"\n"
    ))
    .unwrap();
    assert_eq!(
        cfg.backend_pool,
        BackendPool {
            max_idle: 0,
            idle_timeout: secs(5)
        }
    );
    assert_eq!(cfg.timeouts.client_idle, secs(75));
    let o = &cfg.routes[0].options;
    assert!(!o.http);
    assert_eq!(o.response_timeout, secs(120));
    assert_eq!(
        o.balance,
        Balance::Cookie(StickyCookie {
            name: "srv".into(),
            secure: true,
            http_only: false,
            same_site: SameSite::Strict,
        })
    );
    assert_eq!(o.origins, ["https://app.example", "null"]);
    assert_eq!(o.protocol, BackendProtocol::Uwsgi);
    assert_eq!(
        cfg.routes[1].options.balance,
        Balance::Hash(HashKey::Query("sid".into()))
    );
    assert_eq!(cfg.routes[2].options.balance, Balance::LeastConn);
    let d = parse(&format!("{LISTEN}{ROUTE}")).unwrap();
    assert_eq!(d.routes[0].options, RouteOptions::default());
    assert!(d.routes[0].options.http);
    assert_eq!(d.routes[0].options.response_timeout, secs(60));
    assert_eq!(d.backend_pool, BackendPool::default());
}

#[test]
fn duplicate_routes_differ_by_host() {
    let text = format!(
        "{LISTEN}[[route]]\nprefix = \"/a\"\nhost = \"x.com\"\nbackends = [\"127.0.0.1:9\"]\n\
         [[route]]\nprefix = \"/a\"\nbackends = [\"127.0.0.1:9\"]\n"
    );
    assert_eq!(parse(&text).unwrap().routes.len(), 2);
}

#[test]
fn unknown_keys() {
    #[rustfmt::skip]
    let cases = [
        (format!("listn = []\n{LISTEN}{ROUTE}"), 1, "listn"),
        (format!("{LISTEN}[timeouts]\nidle = \"1s\"\nidel = \"1s\"\n{ROUTE}"), 4, "timeouts.idel"),
        (format!("{LISTEN}[limits]\nmax_conns = 1\n{ROUTE}"), 3, "limits.max_conns"),
        (format!("{LISTEN}[keepalive]\ncnt = 1\n{ROUTE}"), 3, "keepalive.cnt"),
        (format!("{LISTEN}[splice]\nsize = 1\n{ROUTE}"), 3, "splice.size"),
        (format!("{LISTEN}{ROUTE}strip = true\n"), 5, "route.strip"),
        (format!("{LISTEN}timeouts = {{ idle = \"1s\", nope = 1 }}\n{ROUTE}"), 2, "timeouts.nope"),
        (format!("{LISTEN}[tls]\nciphers = \"x\"\n{ROUTE}"), 3, "tls.ciphers"),
        (format!("{LISTEN}[dns]\nserver = \"x\"\n{ROUTE}"), 3, "dns.server"),
        // reported in file order, not in the map's alphabetical order
        (format!("{LISTEN}zzz = 1\naaa = 1\n{ROUTE}"), 2, "zzz"),
    ];
    for (text, line, key) in cases {
        let e = error_for(&text);
        assert_eq!(
            (e.line(), e.key()),
            (Some(line), Some(key)),
            "{e} for:\n{text}"
        );
        assert!(
            e.to_string().starts_with(&format!(
                "t.toml:{line}: unknown key `{key}` (expected one of: "
            )),
            "{e}"
        );
    }
    let e = parse(&format!("listn = []\n{LISTEN}{ROUTE}")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "t.toml:1: unknown key `listn` (expected one of: listen, workers, worker_model, relay, driver, timeouts, limits, keepalive, splice, uring, route, admin, access_log, trusted_proxies, proxy_protocol, underscores_in_headers, tls, backend_pool, dns)"
    );
}

/// Each section's hint lists the keys of its table, in the documented order.
#[test]
fn unknown_key_hints_name_each_sections_keys() {
    for (section, keys) in [
        (
            "[timeouts]",
            "handshake, connect, idle, half_close, drain, client_idle",
        ),
        (
            "[limits]",
            "max_connections, max_head_bytes, max_headers, max_connections_per_ip, max_memory, max_unsent",
        ),
        ("[keepalive]", "idle, interval, count"),
        ("[splice]", "max_pipes, pipe_size, threshold"),
        ("[uring]", "buffer_size, buffer_memory, multishot"),
        ("[access_log]", "path, format"),
        ("[proxy_protocol]", "listen, trusted"),
        (
            "[tls]",
            "listen, cert, unknown_sni, session_tickets, redirect_listen, redirect_port",
        ),
        ("[backend_pool]", "max_idle, idle_timeout"),
        (
            "[[route]]",
            "prefix, host, backends, strip_prefix, forwarded_for, send_proxy, http, \
             response_timeout, balance, hash_key, cookie_name, cookie_secure, cookie_http_only, \
             cookie_same_site, origins, protocol, health, backend_tls, backend_ca, backend_server_name",
        ),
    ] {
        let e = error_for(&format!("{LISTEN}{ROUTE}{section}\nnope = 1\n"));
        let name = section.trim_matches(['[', ']']);
        assert_eq!(
            e.to_string(),
            format!("t.toml:6: unknown key `{name}.nope` (expected one of: {keys})")
        );
    }
}

#[test]
fn error_format() {
    let e = parse(&format!(
        "{LISTEN}\n\n[timeouts]\n\n\nidle = \"1x\"\n{ROUTE}"
    ))
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "t.toml:7: timeouts.idle: invalid duration \"1x\": expected a number followed by a unit such as 30s, 5m, 1h"
    );
    let e = parse(ROUTE).unwrap_err();
    assert_eq!(
        e.to_string(),
        "t.toml: listen: missing required key (or a [tls] section with its own `listen`)"
    );
}

#[test]
fn syntax_errors() {
    let cases = [
        (format!("{LISTEN}workers = \n{ROUTE}"), 2, "invalid TOML"),
        (
            format!("{LISTEN}workers = 1\nworkers = 2\n{ROUTE}"),
            3,
            "duplicate key `workers`",
        ),
        (
            format!("{LISTEN}[timeouts]\n[timeouts]\n{ROUTE}"),
            3,
            "duplicate key",
        ),
        (
            format!("{LISTEN}{ROUTE}prefix = \"unterminated\n"),
            5,
            "invalid TOML",
        ),
    ];
    for (text, line, msg) in cases {
        let e = error_for(&text);
        assert_eq!((e.line(), e.key()), (Some(line), None), "{e} for:\n{text}");
        assert!(e.message().contains(msg), "{e}");
    }
}

#[test]
fn load_reports_path_and_os_error() {
    let path = "/nonexistent/wsplice.toml";
    let e = Config::load(Path::new(path)).unwrap_err();
    assert_eq!((e.file(), e.line(), e.key()), (Some(path), None, None));
    assert!(e.message().starts_with("cannot read: "), "{e:?}");
    assert!(e.message().contains("os error 2"), "{e:?}");
    assert_eq!(e.to_string(), format!("{path}: {}", e.message()));
}

#[test]
fn cli() {
    let listen = vec!["127.0.0.1:0".parse().unwrap()];
    let routes = [
        "/notice/=127.0.0.1:50001, 127.0.0.1:50002".to_owned(),
        "/msg=127.0.0.1:50003".to_owned(),
    ];
    let cfg = Config::from_cli(listen.clone(), &routes, Some(3), Some(RelayMode::Copy)).unwrap();
    assert_eq!(cfg.listen, listen);
    assert_eq!(cfg.workers, Some(3));
    assert_eq!(cfg.relay.mode, RelayMode::Copy);
    assert_eq!(cfg.timeouts, Timeouts::default());
    assert_eq!(cfg.routes.len(), 2);
    assert_eq!(cfg.routes[0].prefix, "/notice");
    assert_eq!(cfg.routes[0].backends.len(), 2);
    assert!(cfg.routes[0].strip_prefix);
    assert_eq!(
        cfg.routes[1].backends,
        vec!["127.0.0.1:50003".parse::<SocketAddr>().unwrap()]
    );

    for (listen, routes, workers, key, msg) in [
        (
            vec![],
            vec!["/=127.0.0.1:1"],
            None,
            "--listen",
            "at least one",
        ),
        (listen.clone(), vec![], None, "--route", "at least one"),
        (
            listen.clone(),
            vec!["/=127.0.0.1:1"],
            Some(0),
            "--workers",
            "invalid value 0",
        ),
        (
            listen.clone(),
            vec!["/notice"],
            None,
            "--route",
            "invalid value \"/notice\": expected PREFIX=HOST:PORT",
        ),
        (
            listen.clone(),
            vec!["notice=127.0.0.1:1"],
            None,
            "--route",
            "must start with '/'",
        ),
        (
            listen.clone(),
            vec!["/=localhost:1"],
            None,
            "--route",
            "use an IP address",
        ),
        (
            listen.clone(),
            vec!["/=127.0.0.1:1,"],
            None,
            "--route",
            "backend: invalid address \"\"",
        ),
        (
            listen.clone(),
            vec!["/a=127.0.0.1:1", "/a/=127.0.0.1:2"],
            None,
            "--route",
            "routed twice",
        ),
    ] {
        let routes: Vec<String> = routes.into_iter().map(str::to_owned).collect();
        let e = Config::from_cli(listen, &routes, workers, None).unwrap_err();
        assert_eq!(
            (e.file(), e.line(), e.key()),
            (None, None, Some(key)),
            "{e}"
        );
        assert!(e.message().contains(msg), "{e:?} lacks {msg:?}");
        assert!(e.to_string().starts_with(&format!("{key}: ")), "{e}");
    }
}

#[test]
fn worker_model() {
    let top = |v: &str| format!("{LISTEN}worker_model = {v}\n{ROUTE}");
    assert_eq!(
        parse(&top("\"processes\"")).unwrap().worker_model,
        WorkerModel::Processes
    );
    assert_eq!(
        parse(&top("\"threads\"")).unwrap().worker_model,
        WorkerModel::Threads
    );
    assert_eq!(
        parse(&format!("{LISTEN}{ROUTE}")).unwrap().worker_model,
        WorkerModel::Auto
    );
    let e = parse(&top("\"forks\"")).unwrap_err();
    assert_eq!(e.key(), Some("worker_model"));
    assert!(
        e.to_string()
            .contains("expected \"auto\", \"threads\" or \"processes\""),
        "{e}"
    );
}
