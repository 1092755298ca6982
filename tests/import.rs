//! `wsplice import nginx|apache FILE` end to end: the classic setups written as their servers'
//! configuration (with the ports this test's backends listen on), imported by the binary, checked
//! with `--check`, then run: a real WebSocket client through wsplice must reach the backend the
//! original would have reached, with the path it would have seen. Then the errors: a syntax error
//! names file and line (inside an include too), and what has no equivalent is listed as comments.
//! Last, nginx and Apache themselves (Debian's packages) run a configuration beside wsplice
//! running its import, and every path must reach the same backend with the same path through both.
//!
//! The import is about the configuration, not the relay: each scenario runs under both drivers
//! with relay = "auto" (the relay modes themselves are covered by the other suites).

#[macro_use]
mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// `both_drivers!(name, body)`: [`e2e!`] under both drivers with relay = "auto" (the import is
/// about the configuration, not the relay).
macro_rules! both_drivers {
    ($name:ident, $body:expr) => {
        e2e!($name, $body, [epoll => crate::support::Relay::Auto, uring => crate::support::Relay::Auto.uring()]);
    };
}

/// A directory for one test's configuration files, removed at the end.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Dir {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("wsplice-import-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the config directory");
        Dir(dir)
    }

    /// A new directory with one file, `name`, written: the directory and the file's path.
    fn with(name: &str, text: &str) -> (Dir, PathBuf) {
        let dir = Dir::new();
        let path = dir.write(name, text);
        (dir, path)
    }

    /// Writes `name` (sub-directories made as needed) and returns its path.
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create a sub-directory");
        }
        std::fs::write(&path, text).expect("write a config file");
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `wsplice import KIND FILE`, which must succeed, and `wsplice --check` on what it printed,
/// which must pass too. Returns the TOML.
fn import(kind: &str, file: &Path) -> String {
    let out = wsplice(&["import", kind, &file.display().to_string()]);
    let toml = text(&out.stdout);
    assert!(
        out.status.success(),
        "import failed: {}\nstdout:\n{toml}",
        text(&out.stderr)
    );
    let saved = TempFile::new("toml", &toml);
    let check = wsplice(&["--check", "--config", &saved.path().display().to_string()]);
    assert!(
        check.status.success(),
        "--check refused the import: {}\n{toml}",
        text(&check.stderr)
    );
    toml
}

/// [`import`] of one file, `name` with `text`, written in a new directory: the directory, the
/// file and the TOML.
fn import_one(kind: &str, name: &str, text: &str) -> (Dir, PathBuf, String) {
    let (dir, conf) = Dir::with(name, text);
    let toml = import(kind, &conf);
    (dir, conf, toml)
}

/// `text` (an import or an error) must contain `part`.
fn has(text: &str, part: &str) {
    assert!(text.contains(part), "missing\n{part}\nin\n{text}");
}

/// [`has`] for each of `parts`.
fn has_all(text: &str, parts: &[&str]) {
    parts.iter().for_each(|part| has(text, part));
}

/// `wsplice import KIND FILE`, which must fail; returns stderr.
fn import_fails(kind: &str, file: &Path) -> String {
    let out = wsplice(&["import", kind, &file.display().to_string()]);
    assert_eq!(out.status.code(), Some(1), "stdout: {}", text(&out.stdout));
    assert!(out.stdout.is_empty(), "stdout: {}", text(&out.stdout));
    text(&out.stderr)
}

/// The comment the import wrote about `file:line`, which must exist and contain `why`.
fn assert_noted(toml: &str, file: &Path, line: usize, why: &str) {
    let at = format!("{}:{line}: ", file.display());
    let found = toml
        .lines()
        .filter(|l| l.starts_with('#') && l.contains(&at))
        .any(|l| l.contains(why));
    assert!(found, "no comment on {at} saying {why:?} in:\n{toml}");
}

/// [`assert_noted`] for each `(line, why)` of `notes`.
fn assert_notes(toml: &str, file: &Path, notes: &[(usize, &str)]) {
    for &(line, why) in notes {
        assert_noted(toml, file, line, why);
    }
}

/// Starts wsplice on the imported TOML (off the runtime's threads), under `relay`'s driver and
/// relay mode (top-level keys, so they go first, before any table).
async fn start(toml: String, relay: Relay) -> Proxy {
    let mut run = format!(
        "driver = \"{}\"\nrelay = \"{}\"\n",
        relay.driver.as_str(),
        relay.as_str()
    );
    if relay.driver == Driver::Uring {
        // The io_uring driver runs with worker threads.
        run.push_str("worker_model = \"threads\"\n");
    }
    let toml = run + &toml;
    match tokio::task::spawn_blocking(move || Proxy::blocking_start_toml(&toml)).await {
        Ok(p) => p,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// A WebSocket through the proxy to `path` sending `headers` (wss:// with rustls to a TLS
/// listener), echoing one message; kept open.
async fn ws(proxy: &Proxy, path: &str, headers: &[(&'static str, &str)]) -> Ws {
    let stream = match proxy.tls_addr() {
        Some(addr) => {
            let config = tls::shared().0.client();
            let s = tokio::time::timeout(STEP, tls::connect(addr, config, tls::SERVER_NAME))
                .await
                .expect("TLS handshake in time")
                .expect("TLS handshake with the proxy");
            tls::ClientStream::Tls(Box::new(s))
        }
        None => tls::ClientStream::Plain(connect(proxy).await),
    };
    let mut req = proxy.url(path).into_client_request().expect("request");
    for (name, value) in headers {
        req.headers_mut()
            .insert(*name, value.parse().expect("header value"));
    }
    let (mut ws, _) = tokio::time::timeout(
        STEP,
        tokio_tungstenite::client_async_with_config(req, stream, Some(ws_config())),
    )
    .await
    .expect("WebSocket handshake in time")
    .unwrap_or_else(|e| panic!("WebSocket handshake to {path}: {e}"));
    ws_echo_once(&mut ws, &format!("hello {path}")).await;
    ws
}

/// The one request `backend` saw: its target and its headers.
fn only_request(backend: &EchoBackend, what: &str) -> SeenRequest {
    let log = backend.log();
    assert_eq!(log.requests.len(), 1, "{what}: {:?}", log.requests);
    log.requests[0].clone()
}

/// A WebSocket to each of two routes, `(path, backend, target)`, the first sending `headers`:
/// each reaches its own backend only, as `target`. Returns the tunnels (kept open) and the
/// request the first backend saw.
async fn two_routes(
    proxy: &Proxy,
    first: (&str, &EchoBackend, &str),
    headers: &[(&'static str, &str)],
    second: (&str, &EchoBackend, &str),
) -> ([Ws; 2], SeenRequest) {
    let ((path_a, a, target_a), (path_b, b, target_b)) = (first, second);
    let ws_a = ws(proxy, path_a, headers).await;
    let seen = only_request(a, &format!("{path_a} reaches its backend"));
    assert_eq!(seen.target, target_a, "{path_a} as the backend sees it");
    assert_eq!(
        b.log().requests.len(),
        0,
        "{path_a} must not reach {path_b}'s backend"
    );
    let ws_b = ws(proxy, path_b, &[]).await;
    let seen_b = only_request(b, &format!("{path_b} reaches its backend"));
    assert_eq!(seen_b.target, target_b, "{path_b} as the backend sees it");
    assert_eq!(
        a.log().requests.len(),
        1,
        "{path_b} must not reach {path_a}'s backend"
    );
    ([ws_a, ws_b], seen)
}

/// How many requests each of `backends` saw, and all of them in the order of their targets.
fn spread(backends: &[&EchoBackend]) -> (Vec<usize>, Vec<SeenRequest>) {
    let logs: Vec<Vec<SeenRequest>> = backends.iter().map(|b| b.log().requests).collect();
    let counts = logs.iter().map(Vec::len).collect();
    let mut seen: Vec<SeenRequest> = logs.into_iter().flatten().collect();
    seen.sort_by(|x, y| x.target.cmp(&y.target));
    (counts, seen)
}

fn header<'a>(seen: &'a SeenRequest, name: &str) -> Vec<&'a str> {
    seen.headers
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

fn port(addr: SocketAddr) -> u16 {
    addr.port()
}

// ---------------------------------------------------------------------------------------------
// nginx
// ---------------------------------------------------------------------------------------------

// The classic two-location config: /notice and /msg, each with the four header lines.
both_drivers!(nginx_two_locations, |relay| async move {
    let (notice, msg) = (EchoBackend::start().await, EchoBackend::start().await);
    // The location block as the guides write it, once per path: lines 6-13 and 14-21.
    let location = |path: &str, to: &EchoBackend| {
        format!(
            r#"        location {path} {{
            proxy_pass http://127.0.0.1:{}/;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $remote_addr;
        }}
"#,
            port(to.addr)
        )
    };
    let (_dir, conf, toml) = import_one(
        "nginx",
        "nginx.conf",
        &format!(
            r#"worker_processes 2;
events {{ worker_connections 1024; }}
http {{
    server {{
        listen 127.0.0.1:0;
{}{}    }}
}}
"#,
            location("/notice", &notice),
            location("/msg", &msg)
        ),
    );
    has(&toml, "workers = 2");
    has(&toml, "forwarded_for = \"replace\"");
    assert_notes(
        &toml,
        &conf,
        &[
            (8, "proxy_http_version 1.1: wsplice always speaks HTTP/1.1"),
            (9, "always sends Upgrade: websocket"),
            (10, "Connection: upgrade"),
            (11, "always sends X-Real-IP"),
            (2, "events"),
        ],
    );
    // nginx puts "/" in place of "/notice": /notice/a reaches it as //a, which wsplice does not.
    assert_noted(&toml, &conf, 7, "as //x");

    let proxy = start(toml, relay).await;
    // proxy_pass's trailing / strips /notice. The client's own X-Forwarded-For is replaced, as
    // `$remote_addr` did.
    let xff = [("x-forwarded-for", "6.6.6.6")];
    let notice_route = ("/notice?x=1", &notice, "/?x=1");
    let (_open, seen) = two_routes(&proxy, notice_route, &xff, ("/msg", &msg, "/")).await;
    assert_eq!(header(&seen, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(header(&seen, "x-real-ip"), ["127.0.0.1"]);
});

// An upstream with two servers (in an included file, found by a glob), proxy_pass without a
// path: both servers take turns and see the whole path.
both_drivers!(nginx_upstream_two_servers, |relay| async move {
    let (a, b) = (EchoBackend::start().await, EchoBackend::start().await);
    let dir = Dir::new();
    let upstream = dir.write(
        "conf.d/chat-upstream.conf",
        &format!(
            "upstream chat {{\n    server 127.0.0.1:{} weight=3;\n    server 127.0.0.1:{};\n}}\n",
            port(a.addr),
            port(b.addr)
        ),
    );
    let conf = dir.write(
        "nginx.conf",
        r#"http {
    include conf.d/*.conf;
    proxy_read_timeout 3600s;
    server {
        listen 127.0.0.1:0;
        server_name _;
        location /chat/ {
            proxy_pass http://chat;
            proxy_connect_timeout 2s;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }
    }
}
"#,
    );
    let toml = import("nginx", &conf);
    let _ = &upstream;
    // `weight=3` is a wsplice weight.
    let weighted = format!("{{ addr = \"127.0.0.1:{}\", weight = 3 }}", port(a.addr));
    has(&toml, &weighted);
    has(&toml, "connect = \"2s\"");
    has(&toml, "idle = \"1h\"");
    has(&toml, "forwarded_for = \"append\"");

    let proxy = start(toml, relay).await;
    let mut open = vec![ws(&proxy, "/chat/room/1", &[("x-forwarded-for", "6.6.6.6")]).await];
    for i in 2..=4 {
        open.push(ws(&proxy, &format!("/chat/room/{i}"), &[]).await);
    }
    // One cycle of the smooth weighted round robin: three for a, one for b.
    let (counts, seen) = spread(&[&a, &b]);
    assert_eq!(counts, [3, 1], "weights 3:1 over four tunnels");
    let targets: Vec<&str> = seen.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(
        targets,
        [
            "/chat/room/1",
            "/chat/room/2",
            "/chat/room/3",
            "/chat/room/4"
        ],
        "no URI in proxy_pass: the path is kept"
    );
    assert_eq!(header(&seen[0], "x-forwarded-for"), ["6.6.6.6, 127.0.0.1"]);
});

// A server on `listen ... ssl` with its certificate: wss:// through rustls.
e2e!(
    nginx_tls_server,
    |relay| async move {
        let backend = EchoBackend::start().await;
        let pair = &tls::shared().1;
        let (_dir, conf, toml) = import_one(
            "nginx",
            "nginx.conf",
            &format!(
                r#"http {{
    server {{
        listen 127.0.0.1:0 ssl;
        server_name localhost;
        ssl_certificate {};
        ssl_certificate_key "{}";
        ssl_protocols TLSv1.2 TLSv1.3;
        location /ws/ {{
            proxy_pass http://127.0.0.1:{}/;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}
    }}
}}
"#,
                pair.cert.display(),
                pair.key.display(),
                port(backend.addr)
            ),
        );
        has(&toml, "[tls]");
        assert_noted(&toml, &conf, 7, "TLS settings are fixed");
        assert_noted(&toml, &conf, 10, "passes the client's Host");

        let proxy = start(toml, relay).await;
        assert!(proxy.tls_addr().is_some(), "the listener speaks TLS");
        let _ws = ws(&proxy, "/ws/feed", &[]).await;
        let seen = only_request(&backend, "the TLS location");
        assert_eq!(seen.target, "/feed");
        assert_eq!(header(&seen, "x-forwarded-proto"), ["https"]);
    },
    [epoll => crate::support::Relay::Auto, uring => crate::support::Relay::Auto.uring()]
);

#[test]
fn nginx_syntax_error_names_file_and_line() {
    let dir = Dir::new();
    let bad = dir.write(
        "sites/bad.conf",
        "server {\n    listen 80;\n    location / { proxy_pass http://127.0.0.1:1 }\n}\n",
    );
    let conf = dir.write("nginx.conf", "http {\n    include sites/*.conf;\n}\n");
    let err = import_fails("nginx", &conf);
    has(&err, &format!("{}:3: unexpected \"}}\"", bad.display()));
    let missing = dir.write("other.conf", "http {\n    include nowhere.conf;\n}\n");
    let err = import_fails("nginx", &missing);
    assert!(
        err.contains(&format!("{}:2: included file", missing.display()))
            && err.contains("nowhere.conf does not exist"),
        "{err}"
    );
}

/// What has no wsplice equivalent is a comment naming file:line and why; the rest still runs.
#[test]
fn nginx_unmappable_directives_are_comments() {
    let (_dir, conf, toml) = import_one(
        "nginx",
        "nginx.conf",
        r#"http {
    gzip on;
    server {
        listen 127.0.0.1:0 http2;
        server_name *.example.com;
        location ~ \.php$ { proxy_pass http://127.0.0.1:9000; }
        location /static/ { root /srv; }
        location /secure/ { proxy_pass https://127.0.0.1:8443/; }
        location /api/ {
            proxy_pass http://127.0.0.1:8080/v2/;
            proxy_set_header X-Custom yes;
            add_header X-Frame-Options DENY;
        }
    }
}
"#,
    );
    assert_notes(
        &toml,
        &conf,
        &[
            (2, "compression"),
            (4, "HTTP/1.1"),
            (5, "wildcard"),
            (6, "regular-expression"),
            (7, "only proxies"),
            (8, "verifies its certificate"),
            (10, "in place of /api/"),
            (11, "does not add request headers"),
            (12, "response headers"),
        ],
    );
    assert_tls_route(&toml);
}

/// The importer's route for an https:// backend on port 8443.
fn assert_tls_route(toml: &str) {
    assert!(
        toml.contains("backends = [\"127.0.0.1:8443\"]\nstrip_prefix = true\nbackend_tls = true\n"),
        "the https backend is a TLS route: {toml}"
    );
}

// ---------------------------------------------------------------------------------------------
// Apache
// ---------------------------------------------------------------------------------------------

// `ProxyPass /notice ws://...` with its `ProxyPassReverse`, and /msg the same way.
both_drivers!(apache_proxy_pass_pair, |relay| async move {
    let (notice, msg) = (EchoBackend::start().await, EchoBackend::start().await);
    let (_dir, conf, toml) = import_one(
        "apache",
        "site.conf",
        &format!(
            r#"<VirtualHost 127.0.0.1:0>
    ServerName push.example.com
    ProxyRequests Off
    ProxyPreserveHost On
    ProxyPass /notice ws://127.0.0.1:{n}
    ProxyPassReverse /notice ws://127.0.0.1:{n}
    ProxyPass "/msg/" "ws://127.0.0.1:{m}/" \
        timeout=30
    ProxyPassReverse /msg/ ws://127.0.0.1:{m}/
    ErrorLog ${{APACHE_LOG_DIR}}/error.log
</VirtualHost>
"#,
            n = port(notice.addr),
            m = port(msg.addr)
        ),
    );
    assert_notes(
        &toml,
        &conf,
        &[
            (6, "does not rewrite Location headers"),
            (10, "stderr"),
            (1, "answers every Host"),
        ],
    );
    has(&toml, "response_timeout = \"30s\"");

    let proxy = start(toml, relay).await;
    let notice_route = ("/notice/a", &notice, "/a");
    let _open = two_routes(&proxy, notice_route, &[], ("/msg/b?c=d", &msg, "/b?c=d")).await;
});

// A balancer:// cluster of three on a TLS virtual host, reached through the WebSocket Upgrade
// rewrite; the cluster is defined in an included file.
e2e!(
    apache_balancer_tls_rewrite,
    |relay| async move {
        let members = [
            EchoBackend::start().await,
            EchoBackend::start().await,
            EchoBackend::start().await,
        ];
        let pair = &tls::shared().1;
        let dir = Dir::new();
        let cluster = dir.write(
            "conf.d/cluster.conf",
            &format!(
                "<Proxy \"balancer://chat\">\n    BalancerMember \"ws://127.0.0.1:{}\" loadfactor=2\n    BalancerMember \"ws://127.0.0.1:{}\"\n    BalancerMember \"ws://127.0.0.1:{}\"\n    ProxySet lbmethod=byrequests\n</Proxy>\n",
                port(members[0].addr),
                port(members[1].addr),
                port(members[2].addr)
            ),
        );
        let conf = dir.write(
            "ssl.conf",
            &format!(
                r#"<IfModule mod_ssl.c>
<VirtualHost 127.0.0.1:0>
    ServerName localhost
    SSLEngine on
    SSLCertificateFile {}
    SSLCertificateKeyFile "{}"
    Include conf.d/*.conf
    RewriteEngine On
    RewriteCond %{{HTTP:Upgrade}} websocket [NC]
    RewriteCond %{{HTTP:Connection}} upgrade [NC]
    RewriteRule ^/?(.*) "balancer://chat/$1" [P,L]
    ProxyTimeout 600
</VirtualHost>
</IfModule>
"#,
                pair.cert.display(),
                pair.key.display()
            ),
        );
        let toml = import("apache", &conf);
        let _ = &cluster;
        // `loadfactor=2` is a wsplice weight.
        let weighted = format!("{{ addr = \"127.0.0.1:{}\", weight = 2 }}", port(members[0].addr));
        has(&toml, &weighted);
        assert_noted(&toml, &conf, 11, "WebSocket upgrades only");
        has(&toml, "http = false");
        has(&toml, "idle = \"10m\"");

        let proxy = start(toml, relay).await;
        let mut open = Vec::new();
        for i in 0..4 {
            open.push(ws(&proxy, &format!("/room/{i}"), &[]).await);
        }
        // One weighted cycle: two for the member of loadfactor 2, one for each other.
        let (counts, seen) = spread(&[&members[0], &members[1], &members[2]]);
        assert_eq!(counts, [2, 1, 1], "loadfactor 2:1:1 over four tunnels");
        let seen: Vec<&str> = seen.iter().map(|r| r.target.as_str()).collect();
        assert_eq!(seen, ["/room/0", "/room/1", "/room/2", "/room/3"], "path kept");

        // Not an upgrade: Apache's rule did not apply, and wsplice answers 426.
        let addr = proxy.tls_addr().expect("TLS listener");
        let mut s = tls::connect(addr, tls::shared().0.client(), tls::SERVER_NAME)
            .await
            .expect("TLS connect");
        s.write_all(b"GET /room/0 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .expect("send");
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(STEP, s.read_to_end(&mut answer)).await;
        assert!(answer.starts_with(b"HTTP/1.1 426"), "{}", text(&answer));
        let after: Vec<usize> = members.iter().map(|m| m.log().requests.len()).collect();
        assert_eq!(after, counts, "the plain request reached no member");
    },
    [epoll => crate::support::Relay::Auto, uring => crate::support::Relay::Auto.uring()]
);

#[test]
fn apache_syntax_error_names_file_and_line() {
    let (_dir, conf) = Dir::with(
        "site.conf",
        "Listen 80\n<VirtualHost *:80>\n    ProxyPass / http://127.0.0.1:1/\n",
    );
    let err = import_fails("apache", &conf);
    has(
        &err,
        &format!("{}:2: <VirtualHost> was not closed", conf.display()),
    );
}

#[test]
fn apache_unmappable_directives_are_comments() {
    let (_dir, conf, toml) = import_one(
        "apache",
        "site.conf",
        r#"<VirtualHost *:8080>
    DocumentRoot /var/www
    ProxyPassMatch ^/(.*\.php)$ fcgi://127.0.0.1:9000/var/www/$1
    ProxyPass /static !
    ProxyPass /tls https://127.0.0.1:8443/
    ProxyPass / http://127.0.0.1:8081/
    RewriteRule ^/old$ /new [R=301,L]
    RequestHeader set X-Forwarded-Proto "https"
    ProxyPass /late http://127.0.0.1:8082/
    RewriteEngine On
</VirtualHost>
<VirtualHost *:8081>
    RewriteRule ^/(.*) ws://127.0.0.1:8083/$1 [P]
</VirtualHost>
"#,
    );
    assert_notes(
        &toml,
        &conf,
        &[
            (2, "only proxies"),
            (3, "regular expressions"),
            (4, "no exclusions"),
            (5, "verifies its certificate"),
            (7, "not a proxy rule"),
            (8, "request headers"),
            (9, "never used"),
            (13, "RewriteEngine is not on here"),
        ],
    );
    assert_tls_route(&toml);
    has(&toml, "listen = [\"0.0.0.0:8080\", \"0.0.0.0:8081\"]");
}

/// Balancing, uwsgi and name-based servers: the keys they become (each import passes `--check`).
#[test]
fn balance_methods_uwsgi_and_hosts() {
    let (dir, conf) = Dir::with(
        "nginx.conf",
        r#"http {
    upstream a { ip_hash; server 127.0.0.1:9001; server 127.0.0.1:9002; }
    upstream b { hash $arg_room consistent; server 127.0.0.1:9003; server 127.0.0.1:9004; }
    upstream c { least_conn; server 127.0.0.1:9005; server 127.0.0.1:9006 down; }
    server {
        listen 8080 default_server;
        server_name first.example.com;
        location /a { proxy_pass http://a; }
        location /app { uwsgi_pass 127.0.0.1:3031; include uwsgi_params; }
    }
    server {
        listen 8080;
        server_name B.example.com;
        location /b/ { proxy_pass http://b/; }
        location /c { proxy_pass http://c; }
    }
}
"#,
    );
    dir.write("uwsgi_params", "uwsgi_param QUERY_STRING $query_string;\n");
    let toml = import("nginx", &conf);
    has_all(
        &toml,
        &[
        "prefix = \"/a\"\nbackends = [\"127.0.0.1:9001\", \"127.0.0.1:9002\"]\nstrip_prefix = false\nbalance = \"hash\"\nhash_key = \"client_ip\"\n",
        "prefix = \"/app\"\nbackends = [\"127.0.0.1:3031\"]\nstrip_prefix = false\nprotocol = \"uwsgi\"\n",
        "prefix = \"/b\"\nhost = \"b.example.com\"\nbackends = [\"127.0.0.1:9003\", \"127.0.0.1:9004\"]\nstrip_prefix = true\nbalance = \"hash\"\nhash_key = \"query:room\"\n",
        "prefix = \"/c\"\nhost = \"b.example.com\"\nbackends = [\"127.0.0.1:9005\"]\nstrip_prefix = false\nbalance = \"least_conn\"\n",
        ],
    );
    assert_noted(&toml, &conf, 4, "marked down");
    assert_noted(
        &toml,
        &dir.0.join("uwsgi_params"),
        1,
        "standard uwsgi variables",
    );
    assert_noted(&toml, &conf, 5, "answers every Host");

    let site = dir.write(
        "site.conf",
        r#"Listen 8081
<Proxy balancer://busy>
    BalancerMember http://127.0.0.1:9007 route=one
    BalancerMember http://127.0.0.1:9008 route=two
    ProxySet lbmethod=bybusyness
</Proxy>
<Proxy balancer://sticky>
    BalancerMember ws://127.0.0.1:9009
    BalancerMember ws://127.0.0.1:9010
    ProxySet stickysession=ROUTEID
</Proxy>
ProxyPass /busy balancer://busy/
ProxyPass /sticky balancer://sticky
ProxyPass /py uwsgi://127.0.0.1:3032/
"#,
    );
    let toml = import("apache", &site);
    has_all(
        &toml,
        &[
        "listen = [\"0.0.0.0:8081\"]",
        "prefix = \"/busy\"\nbackends = [\"127.0.0.1:9007\", \"127.0.0.1:9008\"]\nstrip_prefix = true\nbalance = \"least_conn\"\n",
        "prefix = \"/sticky\"\nbackends = [\"127.0.0.1:9009\", \"127.0.0.1:9010\"]\nstrip_prefix = true\nbalance = \"cookie\"\ncookie_name = \"ROUTEID\"\n",
        "prefix = \"/py\"\nbackends = [\"127.0.0.1:3032\"]\nstrip_prefix = false\nprotocol = \"uwsgi\"\n",
        ],
    );
    assert_noted(&toml, &site, 3, "route name");
}

/// A sites-enabled/ file: `server` blocks with no `http` around them.
#[test]
fn nginx_sites_snippet_without_http() {
    let (_dir, _, toml) = import_one(
        "nginx",
        "default",
        "server {\n    listen [::1]:8090;\n    location /ws { proxy_pass http://[::1]:9011; }\n}\n",
    );
    has_all(
        &toml,
        &[
            "listen = [\"[::1]:8090\"]",
            "prefix = \"/ws\"\nbackends = [\"[::1]:9011\"]\nstrip_prefix = false\n",
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// nginx itself (Debian's package, installed by tools/test)
// ---------------------------------------------------------------------------------------------

/// nginx or Apache running a configuration in one process; killed on drop.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port free right now on 127.0.0.1 (nginx does not report the port of `listen ...:0`).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local address").port()
}

/// Runs nginx on `conf` (prefix `dir`) and waits until `port` accepts.
async fn nginx(dir: &Dir, conf: &Path, port: u16) -> Server {
    let mut cmd = installed("/usr/sbin/nginx", "nginx");
    cmd.arg("-p")
        .arg(&dir.0)
        .arg("-c")
        .arg(conf)
        .args(["-e", "stderr"]);
    listening(cmd, "nginx", port).await
}

/// A command of Debian's `package`, which tools/test installs.
fn installed(bin: &str, package: &str) -> Command {
    assert!(
        Path::new(bin).exists(),
        "{package} is not installed: apt-get install {package} (as tools/test does)"
    );
    Command::new(bin)
}

/// Starts `cmd` (a peer server) and waits until `port` accepts.
async fn listening(mut cmd: Command, what: &str, port: u16) -> Server {
    let child = cmd
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("run {what}: {e}"));
    let server = Server(child);
    let deadline = tokio::time::Instant::now() + STEP;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not listen on {port} within {STEP:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server
}

/// A plain WebSocket client to `addr`, one echo.
async fn ws_at(addr: SocketAddr, path: &str) -> Ws {
    let tcp = tokio::time::timeout(STEP, tokio::net::TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    let url = format!("ws://{addr}{path}");
    let (mut ws, _) = tokio::time::timeout(
        STEP,
        tokio_tungstenite::client_async_with_config(
            url.as_str(),
            tls::ClientStream::Plain(tcp),
            Some(ws_config()),
        ),
    )
    .await
    .expect("WebSocket handshake in time")
    .unwrap_or_else(|e| panic!("WebSocket handshake to {url}: {e}"));
    ws_echo_once(&mut ws, path).await;
    ws
}

/// Which of `backends` (by name) took the one new request since `before`, and its target.
fn took(backends: &[(&str, &EchoBackend)], before: &[usize]) -> (String, String) {
    let mut hit = Vec::new();
    for (i, (name, b)) in backends.iter().enumerate() {
        let log = b.log();
        for r in &log.requests[before[i]..] {
            hit.push((name.to_string(), r.target.clone()));
        }
    }
    assert_eq!(hit.len(), 1, "one backend takes the connection: {hit:?}");
    hit.remove(0)
}

/// Each path through `peer` and then through wsplice: both reach the same backend with the same
/// path. Returns the tunnels (kept open, so that round robin keeps its turn).
async fn agree(
    peer: &str,
    peer_addr: SocketAddr,
    wsplice: SocketAddr,
    backends: &[(&str, &EchoBackend)],
    paths: &[&str],
) -> Vec<Ws> {
    let mut open = Vec::new();
    for &path in paths {
        let (ws, by_peer) = through(peer_addr, path, backends).await;
        open.push(ws);
        let (ws, by_wsplice) = through(wsplice, path, backends).await;
        open.push(ws);
        assert_eq!(by_wsplice, by_peer, "{path}: wsplice differs from {peer}");
    }
    open
}

/// A WebSocket to `path` at `addr` (returned, kept open) and which of `backends` took it, with
/// its target.
async fn through(
    addr: SocketAddr,
    path: &str,
    backends: &[(&str, &EchoBackend)],
) -> (Ws, (String, String)) {
    let before = counts(backends);
    let ws = ws_at(addr, path).await;
    (ws, took(backends, &before))
}

fn counts(backends: &[(&str, &EchoBackend)]) -> Vec<usize> {
    backends
        .iter()
        .map(|(_, b)| b.log().requests.len())
        .collect()
}

// The same configuration run by nginx itself and, imported, by wsplice: each path reaches the
// same backend (the same upstream, for round-robin members) with the same path through both.
both_drivers!(nginx_itself_agrees, |relay| async move {
    let notice = EchoBackend::start().await;
    let msg = EchoBackend::start().await;
    let (a, b) = (EchoBackend::start().await, EchoBackend::start().await);
    let port = free_port();
    let (dir, conf, toml) = import_one(
        "nginx",
        "nginx.conf",
        &format!(
            r#"daemon off;
master_process off;
pid nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log off;
    upstream chat {{ server 127.0.0.1:{a}; server 127.0.0.1:{b}; }}
    server {{
        listen 127.0.0.1:{port};
        proxy_http_version 1.1;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection "upgrade";
        proxy_set_header X-Real-IP $remote_addr;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        location /notice {{ proxy_pass http://127.0.0.1:{n}/; }}
        location /msg/ {{ proxy_pass http://127.0.0.1:{m}/; }}
        location /chat/ {{ proxy_pass http://chat; }}
        location /v1/ {{ proxy_pass http://127.0.0.1:{m}/v1/; }}
    }}
}}
"#,
            a = a.addr.port(),
            b = b.addr.port(),
            n = notice.addr.port(),
            m = msg.addr.port()
        ),
    );
    // The same routes on another port: nginx holds this one.
    let listen = format!("listen = [\"127.0.0.1:{port}\"]");
    has(&toml, &listen);
    let toml_text = toml.clone();
    let toml = toml.replace(&listen, "listen = [\"127.0.0.1:0\"]");
    let _nginx = nginx(&dir, &conf, port).await;
    let proxy = start(toml, relay).await;
    let backends = [
        ("notice", &notice),
        ("msg", &msg),
        ("chat", &a),
        ("chat", &b),
    ];
    let nginx_addr = SocketAddr::from(([127, 0, 0, 1], port));
    let paths = [
        "/notice",
        "/notice?x=1",
        "/msg/",
        "/msg/a/b?c=d",
        "/chat/room/1",
        "/chat/room/2",
        "/v1/feed",
    ];
    let mut open = agree("nginx", nginx_addr, proxy.addr(), &backends, &paths).await;
    // The one difference, which the import notes: nginx puts "/" in place of "/notice".
    assert_noted(&toml_text, &conf, 15, "as //x");
    let (ws, by_nginx) = through(nginx_addr, "/notice/a", &backends).await;
    open.push(ws);
    assert_eq!(by_nginx, ("notice".into(), "//a".into()));
    let (ws, by_wsplice) = through(proxy.addr(), "/notice/a", &backends).await;
    open.push(ws);
    assert_eq!(by_wsplice, ("notice".into(), "/a".into()));
});

// ---------------------------------------------------------------------------------------------
// Apache httpd itself (Debian's apache2 package, installed by tools/test)
// ---------------------------------------------------------------------------------------------

/// Apache in one process (`-X`) on `conf`; waits until `port` accepts.
async fn apache(conf: &Path, port: u16) -> Server {
    let mut cmd = installed("/usr/sbin/apache2", "apache2");
    cmd.arg("-f").arg(conf).args(["-X", "-DFOREGROUND"]);
    listening(cmd, "apache2", port).await
}

// The same configuration run by Apache itself and, imported, by wsplice: ProxyPass with and
// without trailing slashes, a ProxyPass inside <Location>, and a balancer:// cluster behind the
// WebSocket Upgrade rewrite; each path reaches the same backend with the same path through both.
both_drivers!(apache_itself_agrees, |relay| async move {
    let notice = EchoBackend::start().await;
    let msg = EchoBackend::start().await;
    let members = [
        EchoBackend::start().await,
        EchoBackend::start().await,
        EchoBackend::start().await,
    ];
    let port = free_port();
    let dir = Dir::new();
    let modules = "/usr/lib/apache2/modules";
    let loads: String = [
        ("mpm_event", "mpm_event"),
        ("authz_core", "authz_core"),
        ("proxy", "proxy"),
        ("proxy_http", "proxy_http"),
        ("proxy_wstunnel", "proxy_wstunnel"),
        ("proxy_balancer", "proxy_balancer"),
        ("slotmem_shm", "slotmem_shm"),
        ("lbmethod_byrequests", "lbmethod_byrequests"),
        ("rewrite", "rewrite"),
    ]
    .iter()
    .map(|(name, file)| format!("LoadModule {name}_module {modules}/mod_{file}.so\n"))
    .collect();
    let d = dir.0.display();
    let conf = dir.write(
        "httpd.conf",
        &format!(
            r#"ServerRoot {d}
DefaultRuntimeDir {d}
PidFile {d}/httpd.pid
ErrorLog {d}/error.log
ServerName localhost
User www-data
Group www-data
{loads}Listen 127.0.0.1:{port}
<VirtualHost 127.0.0.1:{port}>
    ProxyPass /notice ws://127.0.0.1:{n}
    ProxyPassReverse /notice ws://127.0.0.1:{n}
    ProxyPass /msg/ ws://127.0.0.1:{m}/
    <Proxy balancer://chat>
        BalancerMember ws://127.0.0.1:{a}
        BalancerMember ws://127.0.0.1:{b}
        BalancerMember ws://127.0.0.1:{c}
    </Proxy>
    RewriteEngine On
    RewriteCond %{{HTTP:Upgrade}} websocket [NC]
    RewriteRule ^/chat/(.*) balancer://chat/chat/$1 [P,L]
    <Location /room>
        ProxyPass ws://127.0.0.1:{m}/room
    </Location>
</VirtualHost>
"#,
            n = notice.addr.port(),
            m = msg.addr.port(),
            a = members[0].addr.port(),
            b = members[1].addr.port(),
            c = members[2].addr.port(),
        ),
    );
    let toml = import("apache", &conf);
    let listen = format!("listen = [\"127.0.0.1:{port}\"]");
    has(&toml, &listen);
    let toml = toml.replace(&listen, "listen = [\"127.0.0.1:0\"]");
    let _apache = apache(&conf, port).await;
    let proxy = start(toml, relay).await;
    let backends = [
        ("notice", &notice),
        ("msg", &msg),
        ("chat", &members[0]),
        ("chat", &members[1]),
        ("chat", &members[2]),
    ];
    let apache_addr = SocketAddr::from(([127, 0, 0, 1], port));
    let paths = [
        "/notice",
        "/notice/a?x=1",
        "/msg/",
        "/msg/a/b?c=d",
        "/chat/room/1",
        "/chat/room/2",
        "/room/7",
    ];
    let _open = agree("Apache", apache_addr, proxy.addr(), &backends, &paths).await;
});

/// Nothing wsplice could serve: an error saying so, no TOML that would not load.
#[test]
fn nothing_to_route_is_an_error() {
    let (dir, conf) = Dir::with(
        "nginx.conf",
        "http {\n    server {\n        listen 80;\n        location / { root /srv; }\n    }\n}\n",
    );
    let err = import_fails("nginx", &conf);
    has(&err, "nothing to route");
    let missing = dir.0.join("absent.conf");
    let err = import_fails("apache", &missing);
    has(&err, &format!("{}: cannot read", missing.display()));
}
