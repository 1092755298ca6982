//! TLS toward backends (`backend_tls`, `wss://`/`https://` backends) and redirect listeners
//! (`[tls] redirect_listen`), over real sockets with the real binary.
//!
//! The end-to-end behaviours over TLS backends (echo sizes, ordering, ping/pong, close codes,
//! half-close, fail-over, header rewrite) run in tests/e2e.rs and tests/backend_answers.rs as
//! their `tls_backend` (ws:// client) and `tls_both` (wss:// client) variants. Here: a backend
//! whose certificate is not trusted or not valid for the name, an HTTP request to an https
//! backend, fail-over past a bad certificate, and the redirect listener's answers.

#[macro_use]
mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use support::tls::{shared, terminator, Certs, SERVER_NAME};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Listens on 127.0.0.1 and forwards each connection to `target`, keeping every byte sent
/// toward `target`.
async fn tap(target: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the tap");
    let addr = l.local_addr().expect("tap address");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut a, _)) = l.accept().await {
            let seen = kept.clone();
            tokio::spawn(async move {
                let Ok(mut b) = TcpStream::connect(target).await else {
                    return;
                };
                let (mut ar, mut aw) = a.split();
                let (mut br, mut bw) = b.split();
                let up = async {
                    let mut buf = [0u8; 4096];
                    loop {
                        match ar.read(&mut buf).await {
                            Ok(0) | Err(_) => {
                                let _ = bw.shutdown().await;
                                break;
                            }
                            Ok(n) => {
                                seen.lock().expect("tap").extend_from_slice(&buf[..n]);
                                if bw.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                };
                let down = async {
                    let _ = tokio::io::copy(&mut br, &mut aw).await;
                    let _ = aw.shutdown().await;
                };
                tokio::join!(up, down);
            });
        }
    });
    (addr, seen)
}

/// `[[route]]` to TLS backends, verified against the suite's CA.
fn tls_route(prefix: &str, backends: &[String], name: Option<&str>) -> String {
    let list: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    let mut s = format!(
        "\n[[route]]\nprefix = \"{prefix}\"\nbackends = [{}]\nbackend_tls = true\nbackend_ca = \"{}\"\n",
        list.join(", "),
        shared().0.ca_file.display()
    );
    if let Some(n) = name {
        s.push_str(&format!("backend_server_name = \"{n}\"\n"));
    }
    s
}

/// The proxy for `toml` (top-level keys first), under the scenario's driver.
async fn start(toml: String) -> Proxy {
    let toml = scoped_driver_toml() + &toml;
    match tokio::task::spawn_blocking(move || Proxy::blocking_start_toml(&toml)).await {
        Ok(p) => p,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

fn backend_tls(proxy: &Proxy, result: &str) -> u64 {
    proxy.metric(&format!(
        "wsplice_backend_tls_handshakes_total{{result=\"{result}\"}}"
    ))
}

/// Sends `request` on a new plain connection and reads the answer to its end.
async fn exchange(proxy: &Proxy, request: &[u8]) -> Vec<u8> {
    let (answer, _) = send_and_read_all(proxy, request).await;
    answer
}

async fn still_serves(proxy: &Proxy, path: &str) {
    let mut ws = ws_connect(proxy, path).await;
    ws_echo_once(&mut ws, "still serving").await;
}

scoped_drivers!(untrusted_backend_certificate_is_502_and_no_plaintext_reaches_it);
async fn untrusted_backend_certificate_is_502_and_no_plaintext_reaches_it() {
    // A TLS backend whose certificate another CA signed, behind a tap that keeps the bytes.
    let other = Certs::new();
    let evil = other.ecdsa("evil", &[SERVER_NAME]);
    let recorder = RecordingBackend::start().await;
    let (bad, seen) = tap(terminator(recorder.addr, evil).await).await;
    let echo = EchoBackend::start().await;
    let good = terminator(echo.addr, shared().1.clone()).await;
    let mut toml = "listen = [\"127.0.0.1:0\"]\nworkers = 1\nadmin = \"127.0.0.1:0\"\n".to_owned();
    toml.push_str(&tls_route(
        "/bad",
        &[format!("wss://{bad}")],
        Some(SERVER_NAME),
    ));
    toml.push_str(&tls_route("/good", &[good.to_string()], Some(SERVER_NAME)));
    let proxy = start(toml).await;

    let answer = exchange(&proxy, &upgrade_request("/bad/chat", &[])).await;
    assert_status(
        &answer,
        502,
        "upgrade to a backend with an untrusted certificate",
    );
    eventually("the untrusted handshake is counted", STEP, || {
        backend_tls(&proxy, "untrusted") == 1
    })
    .await;
    let raw = seen.lock().expect("tap").clone();
    assert!(
        raw.first() == Some(&0x16),
        "the backend's first bytes are a TLS handshake record: {:?}",
        &raw[..raw.len().min(16)]
    );
    for needle in [&b"/chat"[..], b"GET ", b"websocket", b"Sec-WebSocket-Key"] {
        assert!(
            !raw.windows(needle.len()).any(|w| w == needle),
            "{:?} reached the backend in plaintext",
            String::from_utf8_lossy(needle)
        );
    }
    assert_eq!(
        recorder.counts().1,
        0,
        "the backend decrypted nothing: {}",
        recorder.describe()
    );
    // The operator's line names the backend and the reason.
    let log_line = format!("backend {bad}");
    eventually("the log line", STEP, || {
        let log = proxy.stderr();
        log.contains(&log_line)
            && log.contains("invalid peer certificate")
            && log.contains("backend_ca")
    })
    .await;
    // An HTTP request to it is refused the same way.
    let answer = exchange(
        &proxy,
        b"GET /bad/x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_status(
        &answer,
        502,
        "request to a backend with an untrusted certificate",
    );
    still_serves(&proxy, "/good").await;
    eventually("the good backend's handshake is counted", STEP, || {
        backend_tls(&proxy, "ok") == 1
    })
    .await;
}

scoped_drivers!(backend_name_mismatch_is_502);
async fn backend_name_mismatch_is_502() {
    let echo = EchoBackend::start().await;
    let good = terminator(echo.addr, shared().1.clone()).await;
    let mut toml = "listen = [\"127.0.0.1:0\"]\nworkers = 1\nadmin = \"127.0.0.1:0\"\n".to_owned();
    // The certificate names localhost and *.example.com.
    toml.push_str(&tls_route(
        "/other",
        &[good.to_string()],
        Some("other.test"),
    ));
    // Without a name the backend's IP is checked, which the certificate does not name.
    toml.push_str(&tls_route("/ip", &[good.to_string()], None));
    toml.push_str(&tls_route(
        "/wild",
        &[good.to_string()],
        Some("a.example.com"),
    ));
    let proxy = start(toml).await;

    for path in ["/other/x", "/ip/x"] {
        let answer = exchange(&proxy, &upgrade_request(path, &[])).await;
        assert_status(&answer, 502, path);
    }
    eventually("both mismatches counted", STEP, || {
        backend_tls(&proxy, "name_mismatch") == 2
    })
    .await;
    assert!(proxy.stderr().contains("backend_server_name"));
    assert!(echo.log().requests.is_empty(), "the backend got no upgrade");
    // A name the certificate covers (by its wildcard) passes.
    still_serves(&proxy, "/wild").await;
}

scoped_drivers!(bad_certificate_fails_over_to_the_next_backend);
async fn bad_certificate_fails_over_to_the_next_backend() {
    let other = Certs::new();
    let evil = other.ecdsa("evil", &[SERVER_NAME]);
    let recorder = RecordingBackend::start().await;
    let bad = terminator(recorder.addr, evil).await;
    let echo = EchoBackend::start().await;
    let good = terminator(echo.addr, shared().1.clone()).await;
    let mut toml = "listen = [\"127.0.0.1:0\"]\nworkers = 1\nadmin = \"127.0.0.1:0\"\n".to_owned();
    toml.push_str(&tls_route(
        "/ws",
        &[format!("wss://{bad}"), format!("wss://{good}")],
        Some(SERVER_NAME),
    ));
    let proxy = start(toml).await;
    // Round robin: of two clients, one starts at the bad backend and goes on to the good one.
    for _ in 0..2 {
        still_serves(&proxy, "/ws").await;
    }
    assert_eq!(echo.log().requests.len(), 2);
    eventually("one untrusted handshake", STEP, || {
        backend_tls(&proxy, "untrusted") == 1
    })
    .await;
    assert_eq!(
        recorder.counts().1,
        0,
        "nothing decrypted at the bad backend"
    );
}

scoped_drivers!(http_request_to_an_https_backend);
async fn http_request_to_an_https_backend() {
    let origin = serve_each("http origin", |mut s: TcpStream| async move {
        let (head, _) = read_head(&mut s).await;
        let body = format!("saw {}", first_line(&head));
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let _ = s.write_all(answer.as_bytes()).await;
    })
    .await;
    let https = terminator(origin, shared().1.clone()).await;
    let toml = format!(
        "listen = [\"127.0.0.1:0\"]\nworkers = 1\nadmin = \"127.0.0.1:0\"\n\n[[route]]\nprefix = \"/api\"\nbackends = [\"https://{https}\"]\nbackend_ca = \"{}\"\nbackend_server_name = \"{SERVER_NAME}\"\n",
        shared().0.ca_file.display()
    );
    let proxy = start(toml).await;
    for _ in 0..2 {
        let answer = exchange(
            &proxy,
            b"GET /api/items?id=7 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_status(&answer, 200, "GET through an https backend");
        let text = String::from_utf8_lossy(&answer);
        assert!(
            text.ends_with("saw GET /items?id=7 HTTP/1.1"),
            "the backend's answer: {text:?}"
        );
    }
    // TLS backend connections are not pooled: one handshake per request; the second resumes
    // the session of the first (rustls's cache in the route's client settings).
    eventually("a full handshake, then a resumed one", STEP, || {
        (backend_tls(&proxy, "ok"), backend_tls(&proxy, "resumed")) == (1, 1)
    })
    .await;
}

/// A TLS backend that updates its keys mid-tunnel, asking the proxy to update too (rustls's
/// server side sends KeyUpdate with update_requested): the proxy's session toward it moves its
/// receive keys on (or it could not read the echo), answers with its own KeyUpdate (counted on
/// the wire: one 22-byte protected record per round, a size no other record of this exchange
/// has) under keys the backend then reads with, and the bytes stay exact both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_key_update_mid_tunnel_keeps_the_bytes_exact() {
    let acceptor = tokio_rustls::TlsAcceptor::from(support::tls::server_config(&shared().1));
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the TLS backend");
    let addr = l.local_addr().expect("backend address");
    let (tapped, seen) = tap(addr).await;
    let sizes = [7usize, 100_000, 3];
    let backend = tokio::spawn(async move {
        let (tcp, _) = l.accept().await.expect("the proxy connects");
        let mut tls = acceptor.accept(tcp).await.expect("TLS handshake");
        let (head, rest) = read_head(&mut tls).await;
        assert!(rest.is_empty());
        tls.write_all(&response_101(&head)).await.expect("101");
        for n in sizes {
            let mut got = vec![0u8; n];
            tls.read_exact(&mut got).await.expect("the client's bytes");
            tls.get_mut().1.refresh_traffic_keys().expect("key update");
            tls.write_all(&got).await.expect("echo");
            tls.flush().await.expect("flush");
        }
        let mut end = Vec::new();
        let _ = tls.read_to_end(&mut end).await;
        end
    });
    let toml = format!(
        "listen = [\"127.0.0.1:0\"]\nworkers = 1\n{}",
        tls_route("/", &[tapped.to_string()], Some(SERVER_NAME))
    );
    let proxy = start(toml).await;
    let mut client = send(&proxy, &upgrade_request("/", &[])).await;
    let (head, _) = read_head(&mut client).await;
    assert_eq!(status(&head), Some(101));
    for (round, n) in sizes.into_iter().enumerate() {
        let bytes: Vec<u8> = (0..n).map(|i| (i * 31 + round) as u8).collect();
        client.write_all(&bytes).await.expect("write");
        let back = read_exact_n(&mut client, n, "the echo after a key update").await;
        assert!(back == bytes, "round {round}: the echo differs");
    }
    client.shutdown().await.expect("FIN");
    let end = tokio::time::timeout(STEP, backend)
        .await
        .expect("the backend ends")
        .expect("the backend task");
    assert!(
        end.is_empty(),
        "the backend got {end:?} after the last round"
    );
    // TLS 1.3 records toward the backend whose body is a KeyUpdate (5 bytes), its inner type
    // and the tag: the proxy's answers.
    let wire = seen.lock().expect("tap").clone();
    let (mut at, mut answers) = (0, 0);
    while at + 5 <= wire.len() {
        let len = usize::from(u16::from_be_bytes([wire[at + 3], wire[at + 4]]));
        answers += usize::from(wire[at] == 0x17 && len == 5 + 1 + 16);
        at += 5 + len;
    }
    assert_eq!(answers, sizes.len(), "the proxy's KeyUpdate answers");
}

scoped_drivers!(a_reload_takes_tls_backends);
/// Started with a plain backend, the proxy reloads (SIGHUP) into a route to a TLS backend and
/// serves through it (the io_uring driver refused this reload before it ran TLS).
async fn a_reload_takes_tls_backends() {
    let echo = EchoBackend::start().await;
    let tls = terminator(echo.addr, shared().1.clone()).await;
    let top = "listen = [\"127.0.0.1:0\"]\nworkers = 1\nadmin = \"127.0.0.1:0\"\n";
    let plain = format!(
        "{top}\n[[route]]\nprefix = \"/\"\nbackends = [\"{}\"]\n",
        echo.addr
    );
    let proxy = start(plain).await;
    still_serves(&proxy, "/plain").await;
    assert_eq!(backend_tls(&proxy, "ok"), 0);
    let to_tls = tls_route("/", &[format!("wss://{tls}")], Some(SERVER_NAME));
    proxy.write_config(&format!("{}{top}{to_tls}", scoped_driver_toml()));
    proxy.signal(nix::sys::signal::Signal::SIGHUP);
    let line = proxy.expect_line(&["reloaded", "reload failed"], STEP);
    assert_eq!(line, "reloaded", "{}", proxy.stderr());
    still_serves(&proxy, "/tls").await;
    eventually("the TLS backend's handshake", STEP, || {
        backend_tls(&proxy, "ok") == 1
    })
    .await;
    assert_eq!(echo.log().requests.len(), 2, "one request each way in");
}

// ---------------------------------------------------------------------------------------------
// Redirect listener
// ---------------------------------------------------------------------------------------------

/// A proxy with a TLS listener and a redirect listener (on 127.0.0.2: configured addresses
/// must differ); `extra_route` is TOML for the route.
async fn redirecting(echo: &EchoBackend, extra_route: &str) -> (Proxy, SocketAddr, u16) {
    let pair = &shared().1;
    let toml = format!(
        "workers = 1\nadmin = \"127.0.0.1:0\"\n\n[[route]]\nprefix = \"/\"\nbackends = [\"{}\"]\n{extra_route}\n[tls]\nlisten = [\"127.0.0.1:0\"]\nredirect_listen = [\"127.0.0.2:0\"]\n[[tls.cert]]\ncert = \"{}\"\nkey = \"{}\"\n",
        echo.addr,
        pair.cert.display(),
        pair.key.display()
    );
    let proxy = start(toml).await;
    let (addr, line) = redirect_listener(&proxy);
    let tls_port = proxy.tls_addr().expect("TLS listener").port();
    assert!(
        line.ends_with(&format!("redirect-to-https:{tls_port}")),
        "{line}"
    );
    (proxy, addr, tls_port)
}

/// The redirect listener's address, and its line in the startup summary.
fn redirect_listener(proxy: &Proxy) -> (SocketAddr, String) {
    let line = proxy
        .startup()
        .iter()
        .find(|l| l.contains("redirect-to-https"))
        .unwrap_or_else(|| panic!("no redirect listener in {:?}", proxy.startup()));
    let addr = line
        .split_whitespace()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    (addr, line.clone())
}

async fn ask(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("send");
    // Fails the test unless the proxy closes after its answer.
    let (answer, _) = read_to_end(&mut s, STEP).await;
    answer
}

/// The answer's body, checked against its Content-Length.
fn body(answer: &[u8]) -> Vec<u8> {
    let at = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    let len: usize = header(answer, "Content-Length")
        .expect("Content-Length")
        .parse()
        .expect("a number");
    assert_eq!(answer.len() - at, len, "Content-Length matches the body");
    answer[at..].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_listener_answers_every_request_with_https() {
    let echo = EchoBackend::start().await;
    let (proxy, addr, port) = redirecting(&echo, "").await;
    let answer = ask(
        addr,
        b"GET /a/b?x=1&y=%20 HTTP/1.1\r\nHost: www.example.com\r\n\r\n",
    )
    .await;
    assert_status(&answer, 301, "GET on the redirect listener");
    let want = format!("https://www.example.com:{port}/a/b?x=1&y=%20");
    assert_eq!(header(&answer, "Location").as_deref(), Some(want.as_str()));
    assert_eq!(header(&answer, "Connection").as_deref(), Some("close"));
    assert!(String::from_utf8_lossy(&body(&answer)).contains(&want));
    // A port in Host is replaced by the TLS port; HEAD has no body.
    let answer = ask(addr, b"HEAD / HTTP/1.1\r\nHost: WWW.Example.com:80\r\n\r\n").await;
    assert_status(&answer, 301, "HEAD");
    assert_eq!(
        header(&answer, "Location"),
        Some(format!("https://www.example.com:{port}/"))
    );
    assert!(answer.ends_with(b"\r\n\r\n"), "HEAD: no body");
    // Other methods must be repeated as they were: 308.
    let answer = ask(
        addr,
        b"POST /form HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 3\r\n\r\nabc",
    )
    .await;
    assert_status(&answer, 308, "POST");
    assert_eq!(
        header(&answer, "Location"),
        Some(format!("https://127.0.0.1:{port}/form"))
    );
    // Upgrades too, as nginx's `return 301`.
    let answer = ask(addr, &upgrade_request("/chat", &[])).await;
    assert_status(&answer, 301, "upgrade on the redirect listener");
    assert_eq!(echo.log().connections, 0, "the backend saw nothing");
    eventually("four redirects counted", STEP, || {
        proxy.metric("wsplice_redirects_total") == 4
    })
    .await;
    // The TLS listener serves meanwhile.
    still_serves(&proxy, "/").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_listener_refuses_hostile_hosts() {
    let echo = EchoBackend::start().await;
    let (proxy, addr, _) = redirecting(&echo, "").await;
    for host in [
        "Host: evil.com/x",
        "Host: evil.com@good.com",
        "Host: a b",
        "Host: evil.com\\@x",
        "Host: [::1",
        "Host: x.com:8o",
        "Host: \"evil\"",
        "Host: a.com\r\nHost: b.com",
        "X-No-Host: 1",
    ] {
        let request = format!("GET /p HTTP/1.1\r\n{host}\r\n\r\n");
        let answer = ask(addr, request.as_bytes()).await;
        assert_status(&answer, 400, host);
        assert_eq!(header(&answer, "Location"), None, "{host}");
    }
    // A target that is not a path never makes the Location either.
    let answer = ask(addr, b"GET evil.com HTTP/1.1\r\nHost: a.com\r\n\r\n").await;
    assert_status(&answer, 400, "a target without a leading slash");
    assert_eq!(echo.log().connections, 0);
    still_serves(&proxy, "/").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_listener_keeps_to_the_configured_hosts() {
    let echo = EchoBackend::start().await;
    let route = format!(
        "\n[[route]]\nprefix = \"/\"\nhost = \"chat.example.com\"\nbackends = [\"{}\"]\n",
        echo.addr
    );
    let (proxy, addr, port) = redirecting(&echo, &route).await;
    let answer = ask(addr, b"GET /x HTTP/1.1\r\nHost: chat.example.com\r\n\r\n").await;
    assert_eq!(
        header(&answer, "Location"),
        Some(format!("https://chat.example.com:{port}/x"))
    );
    // Another (well-formed) host is not echoed back: the configured name is used.
    let answer = ask(addr, b"GET /x HTTP/1.1\r\nHost: evil.example.net\r\n\r\n").await;
    assert_status(&answer, 301, "unknown host");
    assert_eq!(
        header(&answer, "Location"),
        Some(format!("https://chat.example.com:{port}/x"))
    );
    assert_eq!(echo.log().connections, 0);
    still_serves(&proxy, "/").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_listen_flag() {
    let (_, pair) = shared();
    let echo = EchoBackend::start().await;
    let route = format!("/={}", echo.addr);
    let cert = pair.cert.display().to_string();
    let key = pair.key.display().to_string();
    let proxy = Proxy::start_args(&[
        "--tls-listen",
        "127.0.0.1:0",
        "--cert",
        &cert,
        "--key",
        &key,
        "--redirect-listen",
        "127.0.0.2:0",
        "--route",
        &route,
    ])
    .await;
    let (addr, _) = redirect_listener(&proxy);
    let port = proxy.tls_addr().expect("TLS listener").port();
    let answer = ask(addr, b"GET /q HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert_eq!(
        header(&answer, "Location"),
        Some(format!("https://localhost:{port}/q"))
    );
}
