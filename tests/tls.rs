//! TLS termination over real sockets: bad input at the TLS layer (each checked for the answer,
//! nothing reaching the backend, and the proxy still serving), SNI certificate choice, session
//! resumption, certificate reload, `--check` and the command-line flags.
//!
//! The proxy runs in-process (`driver::Server`, as `main.rs` starts it), so tests read its
//! counters directly; the `--check` and flag tests run the binary. Each scenario marked
//! `scoped_drivers!` runs under epoll and under io_uring (`name::epoll`, `name::uring`).

#[macro_use]
mod support;

use futures_util::SinkExt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::tls::{connect, Certs, ClientStream, Pair, SERVER_NAME};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_tungstenite::tungstenite::Message;
use wsplice::config::Config;
use wsplice::driver::Server;
use wsplice::transport::tls::RESULTS;

/// A proxy in this process: TLS listener first in `local_addrs`.
struct Tls {
    server: Server,
    addr: SocketAddr,
    cfg: Config,
}

fn toml(backend: SocketAddr, pairs: &[&Pair], extra_top: &str, extra_tls: &str) -> String {
    let driver = scoped_driver_toml();
    let mut s = format!(
        "workers = 2\n{driver}{extra_top}\n[[route]]\nprefix = \"/\"\nbackends = [\"{backend}\"]\n\n[tls]\nlisten = [\"127.0.0.1:0\"]\n{extra_tls}"
    );
    for p in pairs {
        s.push_str(&format!(
            "[[tls.cert]]\ncert = \"{}\"\nkey = \"{}\"\n",
            p.cert.display(),
            p.key.display()
        ));
    }
    s
}

fn start(toml: &str) -> Tls {
    raise_test_fd_limit();
    let cfg = Config::from_toml_str(toml, "tls-test.toml").expect("config");
    let server = Server::start(&cfg).expect("start the proxy");
    let addr = server.local_addrs()[0];
    assert!(server.is_tls(addr));
    Tls { server, addr, cfg }
}

impl Tls {
    /// The count of one `wsplice_tls_handshakes_total` result.
    fn handshakes(&self, result: &str) -> u64 {
        let i = RESULTS.iter().position(|r| *r == result).expect("a result");
        self.server.stats().tls_handshakes[i]
    }

    /// Waits until the `result` count reaches `n` (workers publish once per loop iteration).
    async fn expect_handshakes(&self, result: &str, n: u64) {
        let deadline = Instant::now() + STEP;
        while self.handshakes(result) < n {
            assert!(
                Instant::now() < deadline,
                "wsplice_tls_handshakes_total{{result=\"{result}\"}} is {}, want {n}",
                self.handshakes(result)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(self.handshakes(result), n, "{result}");
    }
}

/// A wss:// client through the proxy.
async fn wss(addr: SocketAddr, config: Arc<rustls::ClientConfig>, name: &str) -> Ws {
    let tls = tokio::time::timeout(STEP, connect(addr, config, name))
        .await
        .expect("TLS handshake in time")
        .expect("TLS handshake");
    let url = format!("wss://{name}:{}/echo", addr.port());
    let (ws, _) = tokio::time::timeout(
        STEP,
        tokio_tungstenite::client_async(url.as_str(), ClientStream::Tls(Box::new(tls))),
    )
    .await
    .expect("upgrade in time")
    .expect("upgrade through the proxy");
    ws
}

/// The proxy still serves: a wss:// echo works.
async fn still_serves(t: &Tls, certs: &Certs) {
    let mut ws = wss(t.addr, certs.client(), SERVER_NAME).await;
    ws_echo_once(&mut ws, "still serving").await;
}

/// A wss:// proxy in front of a raw backend, and one client whose upgrade the backend accepted.
struct RawTunnel {
    t: Tls,
    /// The client's end; the 101 is not read yet.
    tls: tokio_rustls::client::TlsStream<TcpStream>,
    /// The backend's end.
    server: TcpStream,
    certs: Certs,
    backend: RawBackend,
}

async fn raw_wss_tunnel() -> RawTunnel {
    let certs = Certs::new();
    let pair = certs.ecdsa("site", &[SERVER_NAME]);
    let backend = RawBackend::start().await;
    let t = start(&toml(backend.addr, &[&pair], "", ""));
    let (tls, server) = raw_tls_upgrade(&t, certs.client(), &backend).await;
    RawTunnel {
        t,
        tls,
        server,
        certs,
        backend,
    }
}

/// One client refused, counted as handshake `result`: nothing reached the backend, and the proxy
/// still serves.
async fn refused(t: &Tls, certs: &Certs, backend: &EchoBackend, result: &str) {
    t.expect_handshakes(result, 1).await;
    nothing_passed(t, certs, backend).await;
}

/// After a refused client: nothing reached the backend, and the proxy still serves.
async fn nothing_passed(t: &Tls, certs: &Certs, backend: &EchoBackend) {
    assert_eq!(
        backend.log().connections,
        0,
        "a refused client reached the backend"
    );
    still_serves(t, certs).await;
}

/// Reads until the proxy closes; returns what came.
async fn answer(s: &mut TcpStream) -> Vec<u8> {
    read_to_end(s, STEP).await.0
}

/// The description byte of the first TLS alert record in `bytes`, if they start with one.
fn alert(bytes: &[u8]) -> Option<u8> {
    (bytes.len() >= 7 && bytes[0] == 0x15 && bytes[3] == 0 && bytes[4] == 2).then(|| bytes[6])
}

/// A ClientHello of TLS 1.0/1.1 style: no supported_versions extension, `version` as the
/// client version.
fn old_client_hello(version: u8) -> Vec<u8> {
    let mut body = vec![3, version];
    body.extend_from_slice(&[7u8; 32]);
    body.push(0); // no session id
                  // ECDHE suites the proxy has, so that only the version is wrong.
    body.extend_from_slice(&[0, 4, 0xc0, 0x2b, 0xc0, 0x2f]);
    body.extend_from_slice(&[1, 0]); // null compression
                                     // signature_algorithms: ecdsa_secp256r1_sha256, so that a certificate can be chosen.
    body.extend_from_slice(&[0, 8, 0x00, 0x0d, 0, 4, 0, 2, 0x04, 0x03]);
    let mut hs = vec![1, 0, 0, body.len() as u8];
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 3, 1, 0, hs.len() as u8];
    rec.extend_from_slice(&hs);
    rec
}

/// A real ClientHello, as rustls writes it.
fn client_hello(certs: &Certs) -> Vec<u8> {
    let name = ServerName::try_from(SERVER_NAME).expect("name");
    let mut c = rustls::ClientConnection::new(certs.client(), name).expect("client");
    let mut out = Vec::new();
    c.write_tls(&mut out).expect("ClientHello");
    out
}

async fn echo_setup(extra_top: &str) -> (Tls, Certs, EchoBackend) {
    let certs = Certs::new();
    let pair = certs.ecdsa("site", &[SERVER_NAME]);
    let backend = EchoBackend::start().await;
    let t = start(&toml(backend.addr, &[&pair], extra_top, ""));
    (t, certs, backend)
}

// ---------------------------------------------------------------------------------------------
// Bad input: the answer, nothing at the backend, the proxy still serving
// ---------------------------------------------------------------------------------------------

scoped_drivers!(garbage_instead_of_a_client_hello_gets_an_alert);
async fn garbage_instead_of_a_client_hello_gets_an_alert() {
    let (t, certs, backend) = echo_setup("").await;
    let mut s = TcpStream::connect(t.addr).await.expect("connect");
    s.write_all(&[0u8, 1, 2, 3, 4, 5, 6, 7, 8, 9].repeat(20))
        .await
        .expect("write garbage");
    let got = answer(&mut s).await;
    assert!(alert(&got).is_some(), "expected a TLS alert, got {got:?}");
    refused(&t, &certs, &backend, "not_tls").await;
    t.expect_handshakes("ok", 1).await;
}

scoped_drivers!(plain_http_on_the_tls_port_gets_a_readable_400);
async fn plain_http_on_the_tls_port_gets_a_readable_400() {
    let (t, certs, backend) = echo_setup("").await;
    let mut s = TcpStream::connect(t.addr).await.expect("connect");
    s.write_all(&upgrade_request("/echo", &[]))
        .await
        .expect("write plain HTTP");
    let got = String::from_utf8(answer(&mut s).await).expect("a readable answer");
    assert!(got.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{got}");
    assert!(
        got.contains("plain HTTP request was sent to a TLS"),
        "{got}"
    );
    refused(&t, &certs, &backend, "plain_http").await;
}

scoped_drivers!(a_dribbled_client_hello_is_closed_at_the_handshake_timeout);
async fn a_dribbled_client_hello_is_closed_at_the_handshake_timeout() {
    let (t, certs, backend) = echo_setup("[timeouts]\nhandshake = \"1s\"\n").await;
    let hello = client_hello(&certs);
    let mut s = TcpStream::connect(t.addr).await.expect("connect");
    let started = Instant::now();
    let mut closed = None;
    for b in &hello {
        if s.write_all(&[*b]).await.is_err() {
            closed = Some(started.elapsed());
            break;
        }
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(50), s.read(&mut buf)).await {
            Err(_) => {}
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = Some(started.elapsed());
                break;
            }
            Ok(Ok(n)) => panic!("{n} bytes answered a partial ClientHello"),
        }
    }
    let took = closed.expect("the proxy never closed a dribbling client");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "closed after {took:?}, handshake timeout is 1 s"
    );
    refused(&t, &certs, &backend, "incomplete").await;
}

scoped_drivers!(tls_1_0_and_1_1_only_get_a_protocol_version_alert);
async fn tls_1_0_and_1_1_only_get_a_protocol_version_alert() {
    let (t, certs, backend) = echo_setup("").await;
    for (n, version) in [(1, 1u8), (2, 2)] {
        let mut s = TcpStream::connect(t.addr).await.expect("connect");
        s.write_all(&old_client_hello(version))
            .await
            .expect("write ClientHello");
        let got = answer(&mut s).await;
        assert_eq!(alert(&got), Some(70), "TLS 1.{}: {got:?}", version - 1);
        t.expect_handshakes("incompatible", n).await;
    }
    nothing_passed(&t, &certs, &backend).await;
}

scoped_drivers!(oversized_and_malformed_client_hellos_get_alerts);
async fn oversized_and_malformed_client_hellos_get_alerts() {
    let (t, certs, backend) = echo_setup("").await;
    // A handshake record longer than TLS allows, then one whose ClientHello is cut short.
    let oversized = [0x16u8, 3, 1, 0xff, 0xff];
    let malformed = [0x16u8, 3, 1, 0, 6, 1, 0, 0, 2, 3, 3];
    for (i, bytes) in [&oversized[..], &malformed[..]].into_iter().enumerate() {
        let mut s = TcpStream::connect(t.addr).await.expect("connect");
        s.write_all(bytes).await.expect("write");
        let got = answer(&mut s).await;
        assert!(
            alert(&got).is_some(),
            "case {i}: expected an alert, got {got:?}"
        );
        t.expect_handshakes("bad_message", i as u64 + 1).await;
    }
    nothing_passed(&t, &certs, &backend).await;
}

scoped_drivers!(a_corrupted_record_after_the_handshake_closes_the_tunnel);
async fn a_corrupted_record_after_the_handshake_closes_the_tunnel() {
    let RawTunnel {
        t,
        mut tls,
        mut server,
        certs: _certs,
        backend: _backend,
    } = raw_wss_tunnel().await;
    let (resp, _) = read_head(&mut tls).await;
    assert_eq!(status(&resp), Some(101));
    tls.write_all(b"hello").await.expect("write");
    assert_eq!(read_exact_n(&mut server, 5, "first bytes").await, b"hello");
    // An application-data record whose tag cannot verify.
    let (mut tcp, _) = tls.into_inner();
    let mut bad = vec![0x17u8, 3, 3, 0, 32];
    bad.extend_from_slice(&[0x5a; 32]);
    tcp.write_all(&bad)
        .await
        .expect("write the corrupted record");
    let (rest, _) = read_to_end(&mut server, STEP).await;
    assert!(
        rest.is_empty(),
        "the backend got {} bytes of garbage",
        rest.len()
    );
    // The proxy's bad_record_mac alert (encrypted under TLS 1.3: one record), then EOF.
    let got = answer(&mut tcp).await;
    assert!(
        got.len() < 64 && matches!(got.first(), Some(0x15 | 0x17)),
        "expected one alert record, got {got:?}"
    );
    // The counters are published a moment after the close; wait for them.
    let reset = || {
        t.server
            .stats()
            .closed(wsplice::core::relay::CloseReason::ClientReset)
    };
    eventually("the tunnel counted as a client reset", STEP, || {
        reset() >= 1
    })
    .await;
    assert_eq!(reset(), 1);
}

scoped_drivers!(a_client_stuck_in_its_handshake_does_not_slow_500_others);
async fn a_client_stuck_in_its_handshake_does_not_slow_500_others() {
    let (t, certs, backend) = echo_setup("[timeouts]\nhandshake = \"2s\"\n").await;
    let hello = client_hello(&certs);
    let mut stuck = TcpStream::connect(t.addr).await.expect("connect");
    stuck.write_all(&hello[..10]).await.expect("half a hello");
    let started = Instant::now();
    let config = certs.client();
    let clients: Vec<_> = (0..500)
        .map(|i| {
            let config = config.clone();
            let addr = t.addr;
            tokio::spawn(async move {
                let mut ws = wss(addr, config, SERVER_NAME).await;
                ws_echo_once(&mut ws, &format!("client {i}")).await;
                ws
            })
        })
        .collect();
    let mut open = Vec::new();
    for c in clients {
        open.push(c.await.expect("client task"));
    }
    let took = started.elapsed();
    eprintln!("500 wss handshakes and echoes took {took:?} beside a stuck client");
    assert_eq!(backend.log().connections, 500);
    let mut b = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(4), stuck.read(&mut b)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the stuck client was not closed at the handshake timeout: {closed:?}"
    );
    // The clients share a session cache: later ones resume with earlier ones' tickets.
    t.expect_handshakes("incomplete", 1).await;
    let deadline = Instant::now() + STEP;
    while t.handshakes("ok") + t.handshakes("resumed") < 500 {
        assert!(Instant::now() < deadline, "handshakes not counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(t.handshakes("ok") + t.handshakes("resumed"), 500);
    drop(open);
}

// ---------------------------------------------------------------------------------------------
// Certificates by SNI
// ---------------------------------------------------------------------------------------------

/// Accepts any server certificate and remembers the leaf: which certificate did we get?
#[derive(Debug, Default)]
struct Remember(Mutex<Option<CertificateDer<'static>>>);

/// The signature algorithms of the ring provider the proxy uses.
fn ring_algorithms() -> rustls::crypto::WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

impl ServerCertVerifier for Remember {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.0.lock().expect("lock") = Some(end_entity.clone().into_owned());
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &ring_algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &ring_algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        ring_algorithms().supported_schemes()
    }
}

/// The leaf certificate the proxy presents for `name` (`None`: no SNI), or the handshake error.
async fn served_cert(
    addr: SocketAddr,
    certs: &Certs,
    name: Option<&str>,
) -> Result<CertificateDer<'static>, String> {
    let seen = Arc::new(Remember::default());
    let config = certs.client_with(|c| {
        c.dangerous().set_certificate_verifier(seen.clone());
        // No SNI is sent for an IP address name.
        c.enable_sni = name.is_some();
    });
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let server_name =
        ServerName::try_from(name.unwrap_or("127.0.0.1").to_owned()).map_err(|e| e.to_string())?;
    tokio_rustls::TlsConnector::from(config)
        .connect(server_name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let leaf = seen.0.lock().expect("lock").clone();
    leaf.ok_or_else(|| "no certificate".to_string())
}

scoped_drivers!(sni_picks_exact_then_wildcard_names_else_the_first_certificate);
async fn sni_picks_exact_then_wildcard_names_else_the_first_certificate() {
    let certs = Certs::new();
    let rsa = certs.rsa("rsa", &["rsa.test", SERVER_NAME]);
    let ecdsa = certs.ecdsa("ecdsa", &["*.example.com", "ecdsa.test"]);
    let backend = EchoBackend::start().await;
    let t = start(&toml(backend.addr, &[&rsa, &ecdsa], "", ""));
    for (name, want, which) in [
        (Some("rsa.test"), &rsa, "exact, RSA"),
        (Some("ecdsa.test"), &ecdsa, "exact, ECDSA"),
        (Some("a.example.com"), &ecdsa, "wildcard"),
        (Some("A.Example.COM"), &ecdsa, "wildcard, any case"),
        (
            Some("a.b.example.com"),
            &rsa,
            "a wildcard covers one label: default",
        ),
        (Some("example.com"), &rsa, "not covered: default"),
        (Some("unknown.test"), &rsa, "unknown: default"),
        (None, &rsa, "no SNI: default"),
    ] {
        let got = served_cert(t.addr, &certs, name).await.expect(which);
        assert!(
            got == want.der,
            "{which}: {name:?} got the other certificate"
        );
    }
    assert_eq!(backend.log().connections, 0);
    t.expect_handshakes("ok", 8).await;
}

scoped_drivers!(unknown_sni_is_refused_when_configured);
async fn unknown_sni_is_refused_when_configured() {
    let certs = Certs::new();
    let pair = certs.ecdsa("site", &[SERVER_NAME]);
    let backend = EchoBackend::start().await;
    let t = start(&toml(
        backend.addr,
        &[&pair],
        "",
        "unknown_sni = \"refuse\"\n",
    ));
    let e = served_cert(t.addr, &certs, Some("unknown.test"))
        .await
        .expect_err("an unknown name must be refused");
    assert!(e.contains("AccessDenied") || e.contains("access"), "{e}");
    served_cert(t.addr, &certs, None)
        .await
        .expect_err("no SNI must be refused too");
    t.expect_handshakes("unknown_sni", 2).await;
    let got = served_cert(t.addr, &certs, Some(SERVER_NAME))
        .await
        .expect("a known name is served");
    assert!(got == pair.der);
    nothing_passed(&t, &certs, &backend).await;
}

// ---------------------------------------------------------------------------------------------
// Cipher suites
// ---------------------------------------------------------------------------------------------

scoped_drivers!(every_cipher_suite_relays_small_and_large_messages);
/// Every suite the proxy offers carries small and large messages both ways (TLS 1.3's suites
/// keep only their key bytes between records, see transport/tls/lazy_aead.rs; a 1 MiB
/// message is 64 records a direction, a 3-byte one a single record), and the suite counter
/// names the one the client insisted on.
async fn every_cipher_suite_relays_small_and_large_messages() {
    let (t, certs, _backend) = echo_setup("").await;
    let ring = rustls::crypto::ring::default_provider();
    let mut suites = 0;
    for suite in ring.cipher_suites.iter().copied() {
        // The certificate is ECDSA: the RSA-signed TLS 1.2 suites cannot be negotiated.
        let name = suite.suite().as_str().expect("a named suite").to_owned();
        if name.contains("_RSA_") {
            continue;
        }
        let version = suite.version();
        let mut provider = rustls::crypto::ring::default_provider();
        provider.cipher_suites = vec![suite];
        let mut roots = rustls::RootCertStore::empty();
        roots.add(certs.ca.clone()).expect("root");
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[version])
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tls = connect(t.addr, Arc::new(config), SERVER_NAME)
            .await
            .expect("TLS");
        assert_eq!(
            tls.get_ref().1.negotiated_cipher_suite().map(|s| s.suite()),
            Some(suite.suite())
        );
        let url = format!("wss://{SERVER_NAME}:{}/echo", t.addr.port());
        let (mut ws, _) =
            tokio_tungstenite::client_async(url.as_str(), ClientStream::Tls(Box::new(tls)))
                .await
                .expect("upgrade");
        for round in 0..3 {
            ws_echo_once(&mut ws, &format!("{name} {round}")).await;
            echo_mib(&mut ws, &name, round, 7).await;
        }
        let _ = ws.close(None).await;
        suites += 1;
        let i = wsplice::transport::tls::CIPHERS
            .iter()
            .position(|c| *c == name)
            .expect("a counted suite");
        let deadline = Instant::now() + STEP;
        while t.server.stats().tls_ciphers[i] < 1 {
            assert!(Instant::now() < deadline, "{name} was not counted");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // Three TLS 1.3 suites and the three ECDSA TLS 1.2 ones.
    assert_eq!(suites, 6);
}

// ---------------------------------------------------------------------------------------------
// Resumption and reload
// ---------------------------------------------------------------------------------------------

/// Connects with `config`, echoes once (so the client reads the session ticket), closes.
/// Returns whether the handshake was a resumption.
async fn session(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> bool {
    let tls = connect(addr, config, SERVER_NAME).await.expect("TLS");
    let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let url = format!("wss://{SERVER_NAME}:{}/echo", addr.port());
    let (mut ws, _) =
        tokio_tungstenite::client_async(url.as_str(), ClientStream::Tls(Box::new(tls)))
            .await
            .expect("upgrade");
    ws_echo_once(&mut ws, "ticket").await;
    let _ = ws.close(None).await;
    resumed
}

scoped_drivers!(session_tickets_resume_across_workers_and_reloads);
async fn session_tickets_resume_across_workers_and_reloads() {
    let (mut t, certs, _backend) = echo_setup("").await;
    for versions in [
        &[&rustls::version::TLS13][..],
        &[&rustls::version::TLS12][..],
    ] {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(certs.ca.clone()).expect("root");
        let config = Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_protocol_versions(versions)
                .expect("versions")
                .with_root_certificates(roots)
                .with_no_client_auth(),
        );
        assert!(!session(t.addr, config.clone()).await, "the first is full");
        // Two workers share the listener: several reconnects land on both.
        for _ in 0..4 {
            assert!(
                session(t.addr, config.clone()).await,
                "{versions:?}: not resumed"
            );
        }
        let cfg = t.cfg.clone();
        t.server.reload(&cfg).expect("reload");
        assert!(
            session(t.addr, config.clone()).await,
            "{versions:?}: tickets must survive a reload"
        );
    }
    t.expect_handshakes("ok", 2).await;
    t.expect_handshakes("resumed", 10).await;
    let s = t.server.stats();
    assert_eq!(s.tls_versions, [6, 6], "TLSv1.2 and TLSv1.3 sessions");
}

scoped_drivers!(reload_swaps_certificates_for_new_handshakes_and_keeps_1000_tunnels);
async fn reload_swaps_certificates_for_new_handshakes_and_keeps_1000_tunnels() {
    let certs = Certs::new();
    let old = certs.ecdsa("site", &[SERVER_NAME]);
    let backend = EchoBackend::start().await;
    let mut t = start(&toml(backend.addr, &[&old], "", ""));
    let config = certs.client();
    let mut tunnels = Vec::new();
    for chunk in 0..10 {
        let opened: Vec<_> = (0..100)
            .map(|_| {
                let config = config.clone();
                let addr = t.addr;
                tokio::spawn(async move { wss(addr, config, SERVER_NAME).await })
            })
            .collect();
        for o in opened {
            tunnels.push(o.await.expect("tunnel task"));
        }
        assert_eq!(tunnels.len(), (chunk + 1) * 100);
    }
    // A bad key file: the reload fails naming it, and the running certificate stays.
    let bad = certs.dir.join("bad.key");
    std::fs::write(&bad, "not a key").expect("write");
    let mut broken = t.cfg.clone();
    broken.tls.certs[0].key = bad.clone();
    let e = t.server.reload(&broken).expect_err("a bad key must fail");
    assert!(e.to_string().contains(&bad.display().to_string()), "{e}");
    let got = served_cert(t.addr, &certs, Some(SERVER_NAME))
        .await
        .expect("served");
    assert!(
        got == old.der,
        "a failed reload must keep the running certificate"
    );
    // The same files replaced by a new certificate and key, then SIGHUP's reload.
    let new = certs.ecdsa("site", &[SERVER_NAME]);
    assert_eq!((&new.cert, &new.key), (&old.cert, &old.key));
    let cfg = t.cfg.clone();
    t.server.reload(&cfg).expect("reload");
    let got = served_cert(t.addr, &certs, Some(SERVER_NAME))
        .await
        .expect("served");
    assert!(
        got == new.der,
        "new handshakes must see the new certificate"
    );
    for (i, ws) in tunnels.iter_mut().enumerate() {
        ws.send(Message::text(format!("after reload {i}")))
            .await
            .expect("send on an old tunnel");
    }
    for (i, ws) in tunnels.iter_mut().enumerate() {
        match ws_recv(ws).await {
            Message::Text(m) => assert_eq!(m.as_str(), format!("after reload {i}")),
            other => panic!("tunnel {i}: {other:?}"),
        }
    }
    assert_eq!(backend.log().connections, 1000);
}

// ---------------------------------------------------------------------------------------------
// The binary: flags and --check
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_flags_serve_wss() {
    let certs = Certs::new();
    let pair = certs.ecdsa("site", &[SERVER_NAME]);
    let backend = EchoBackend::start().await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_wsplice"))
        .arg("--tls-listen")
        .arg("127.0.0.1:0")
        .arg("--cert")
        .arg(&pair.cert)
        .arg("--key")
        .arg(&pair.key)
        .arg("--route")
        .arg(format!("/ws={}", backend.addr))
        .arg("--workers")
        .arg("1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn wsplice");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let mut addr = None;
    loop {
        let line = tokio::time::timeout(STEP, lines.next_line())
            .await
            .expect("start-up lines")
            .expect("read")
            .expect("a line before ready");
        if let Some(rest) = line.strip_prefix("listen ") {
            assert!(line.ends_with(" tls"), "{line}");
            addr = rest.split_whitespace().next().and_then(|a| a.parse().ok());
        }
        if line == "ready" {
            break;
        }
    }
    let addr: SocketAddr = addr.expect("a listen line");
    let tls = connect(addr, certs.client(), SERVER_NAME)
        .await
        .expect("TLS");
    let url = format!("wss://{SERVER_NAME}:{}/ws", addr.port());
    let (mut ws, _) =
        tokio_tungstenite::client_async(url.as_str(), ClientStream::Tls(Box::new(tls)))
            .await
            .expect("upgrade");
    ws_echo_once(&mut ws, "from the flags").await;
    let _ = child.start_kill();
}

#[test]
fn check_names_the_bad_file_and_warns_of_an_expired_certificate() {
    let certs = Certs::new();
    let good = certs.ecdsa("good", &[SERVER_NAME]);
    let other = certs.ecdsa("other", &[SERVER_NAME]);
    let expired = certs.expired("expired", &[SERVER_NAME]);
    let run = |pairs: &[&Pair]| {
        let file = certs.dir.join("check.toml");
        std::fs::write(&file, toml("127.0.0.1:9".parse().unwrap(), pairs, "", "")).expect("write");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_wsplice"))
            .arg("--check")
            .arg("--config")
            .arg(&file)
            .output()
            .expect("run --check");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&[&good]);
    assert_eq!(code, Some(0), "{err}");
    // The key of another certificate.
    let mismatched = Pair {
        key: other.key.clone(),
        ..good.clone()
    };
    let (code, err) = run(&[&mismatched]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&other.key.display().to_string()), "{err}");
    assert!(err.contains("does not match the certificate"), "{err}");
    let missing = Pair {
        cert: certs.dir.join("missing.pem"),
        ..good.clone()
    };
    let (code, err) = run(&[&missing]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("missing.pem"), "{err}");
    let (code, err) = run(&[&expired]);
    assert_eq!(code, Some(0), "an expired certificate warns: {err}");
    assert!(
        err.contains("expired") && err.contains("expired.pem"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Established sessions: the proxy's own record layer (rustls handed the secrets over)
// ---------------------------------------------------------------------------------------------

/// A client that speaks only `suite` (and its protocol version).
fn suite_client(certs: &Certs, suite: rustls::SupportedCipherSuite) -> Arc<rustls::ClientConfig> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![suite];
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certs.ca.clone()).expect("root");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[suite.version()])
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// The ring suites an ECDSA certificate can serve.
fn ecdsa_suites() -> Vec<rustls::SupportedCipherSuite> {
    rustls::crypto::ring::default_provider()
        .cipher_suites
        .into_iter()
        .filter(|s| !s.suite().as_str().is_some_and(|n| n.contains("_RSA_")))
        .collect()
}

/// Queues a TLS 1.3 KeyUpdate on a wss:// client (rustls asks the peer to update too); it goes
/// out with the client's next record.
fn key_update(ws: &mut Ws) {
    match ws.get_mut() {
        ClientStream::Tls(s) => s.get_mut().1.refresh_traffic_keys().expect("key update"),
        ClientStream::Plain(_) => panic!("not a TLS client"),
    }
}

/// A client's KeyUpdate (with update_requested, as rustls sends it) in the middle of a tunnel,
/// three times, for each TLS 1.3 suite: the proxy's receive keys and, after its own KeyUpdate,
/// its send keys move on, and small and 1 MiB echoes stay exact both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_updates_mid_tunnel_keep_the_echo_exact_both_ways() {
    let (t, certs, _backend) = echo_setup("").await;
    let mut tls13 = 0;
    for suite in ecdsa_suites() {
        if suite.version().version != rustls::ProtocolVersion::TLSv1_3 {
            continue;
        }
        tls13 += 1;
        let name = format!("{:?}", suite.suite());
        let mut ws = wss(t.addr, suite_client(&certs, suite), SERVER_NAME).await;
        ws_echo_once(&mut ws, "before any key update").await;
        for round in 0..3usize {
            key_update(&mut ws);
            ws_echo_once(&mut ws, &format!("{name} after key update {round}")).await;
            echo_mib(&mut ws, &name, round, 13).await;
        }
        let _ = ws.close(None).await;
    }
    assert_eq!(tls13, 3);
    still_serves(&t, &certs).await;
}

/// Sends 1 MiB + `round` bytes (pattern `i * mul + round`) as one binary message and checks
/// the echo byte for byte.
async fn echo_mib(ws: &mut Ws, name: &str, round: usize, mul: usize) {
    let big: Vec<u8> = (0..(1 << 20) + round)
        .map(|i| (i * mul + round) as u8)
        .collect();
    ws.send(Message::binary(big.clone())).await.expect("send");
    match ws_recv(ws).await {
        Message::Binary(b) => assert!(b[..] == big[..], "{name}: 1 MiB echo differs"),
        other => panic!("{name}: expected the binary echo, got {other:?}"),
    }
}

/// The proxy still serves a raw tunnel: a new TLS client's bytes reach the backend and back.
async fn still_serves_raw(t: &Tls, certs: &Certs, backend: &RawBackend) {
    let (mut tls, mut server) = raw_tls_tunnel(t, certs.client(), backend, "still serving").await;
    both_ways(&mut tls, &mut server, b"still", b"serving", "still serving").await;
}

/// A TLS client with `client`'s settings upgraded through the proxy to the raw `backend`: the
/// client's stream (its 101 read) and the backend's side.
async fn raw_tls_tunnel(
    t: &Tls,
    client: Arc<rustls::ClientConfig>,
    backend: &RawBackend,
    what: &str,
) -> (tokio_rustls::client::TlsStream<TcpStream>, TcpStream) {
    let (mut tls, server) = raw_tls_upgrade(t, client, backend).await;
    let (resp, _) = read_head(&mut tls).await;
    assert_eq!(status(&resp), Some(101), "{what}");
    (tls, server)
}

/// A TLS client with `client`'s settings that sent its upgrade to the raw `backend`, which
/// accepted it; the 101 is not read yet.
async fn raw_tls_upgrade(
    t: &Tls,
    client: Arc<rustls::ClientConfig>,
    backend: &RawBackend,
) -> (tokio_rustls::client::TlsStream<TcpStream>, TcpStream) {
    let mut tls = connect(t.addr, client, SERVER_NAME)
        .await
        .expect("TLS handshake");
    tls.write_all(&upgrade_request("/raw", &[]))
        .await
        .expect("upgrade");
    let (server, _) = backend.accept_101().await;
    (tls, server)
}

/// `up` from the TLS client reaches the backend, then `down` from the backend reaches the client.
async fn both_ways<S>(tls: &mut S, server: &mut TcpStream, up: &[u8], down: &[u8], what: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tls.write_all(up).await.expect("write");
    assert_eq!(read_exact_n(server, up.len(), what).await, up, "{what}");
    server.write_all(down).await.expect("write");
    let mut got = vec![0u8; down.len()];
    tokio::time::timeout(STEP, tls.read_exact(&mut got))
        .await
        .unwrap_or_else(|_| panic!("{what}: the answer in time"))
        .unwrap_or_else(|e| panic!("{what}: the answer: {e}"));
    assert_eq!(got, down, "{what}");
}

/// Waits until `buf` (what a child process printed) contains `what`.
async fn printed(buf: &Arc<Mutex<Vec<u8>>>, what: &str) {
    let has = || String::from_utf8_lossy(&buf.lock().expect("output")).contains(what);
    eventually(&format!("openssl printed {what:?}"), STEP, has).await;
}

/// Collects a child's output into a shared buffer.
fn collect(mut from: impl tokio::io::AsyncRead + Unpin + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let to = buf.clone();
    tokio::spawn(async move {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = from.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            to.lock().expect("output").extend_from_slice(&chunk[..n]);
        }
    });
    buf
}

/// OpenSSL's `s_client` as the client of a raw tunnel: its `k` command sends a KeyUpdate, `K`
/// one that asks the proxy to update too. The bytes stay exact both ways after each; a `K` is
/// answered with the proxy's own KeyUpdate (s_client's `-msg` prints every handshake message it
/// receives), a `k` is not; closing stdin sends close_notify, which reaches the backend as FIN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_key_updates_are_answered_and_the_bytes_stay_exact() {
    let certs = Certs::new();
    let pair = certs.ecdsa("site", &[SERVER_NAME]);
    let backend = RawBackend::start().await;
    let t = start(&toml(backend.addr, &[&pair], "", ""));
    let mut child = tokio::process::Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(t.addr.to_string())
        .args(["-servername", SERVER_NAME, "-CAfile"])
        .arg(&certs.ca_file)
        .args(["-verify_return_error", "-tls1_3", "-msg"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run openssl s_client (Debian package openssl)");
    let mut stdin = child.stdin.take().expect("stdin");
    let out = collect(child.stdout.take().expect("stdout"));
    let err = collect(child.stderr.take().expect("stderr"));
    // s_client sends what it reads from stdin as it is.
    stdin
        .write_all(&upgrade_request("/raw", &[]))
        .await
        .expect("the upgrade");
    let (mut server, _) = backend.accept_101().await;
    printed(&out, "101 Switching Protocols").await;
    let received_key_updates = || {
        String::from_utf8_lossy(&out.lock().expect("output"))
            .lines()
            .filter(|l| l.starts_with("<<<") && l.contains("KeyUpdate"))
            .count()
    };
    for (i, cmd) in ["k", "K", "k", "K", "K"].into_iter().enumerate() {
        let ping = format!("ping {i}\n");
        stdin.write_all(ping.as_bytes()).await.expect("stdin");
        assert_eq!(
            read_exact_n(&mut server, ping.len(), "ping").await,
            ping.as_bytes()
        );
        server
            .write_all(format!("pong {i}\n").as_bytes())
            .await
            .expect("pong");
        printed(&out, &format!("pong {i}\n")).await;
        let before = received_key_updates();
        // A line of its own: s_client takes a read starting with `k`/`K` as the command.
        stdin
            .write_all(format!("{cmd}\n").as_bytes())
            .await
            .expect("stdin");
        let sent = i + 1;
        eventually("s_client sent its KeyUpdate", STEP, || {
            String::from_utf8_lossy(&err.lock().expect("stderr"))
                .matches("KEYUPDATE")
                .count()
                >= sent
        })
        .await;
        // No command letter can start a read of it (s_client may split a long line).
        let after = format!("after {i}: {}\n", "x".repeat(3000 * i));
        stdin.write_all(after.as_bytes()).await.expect("stdin");
        assert_eq!(
            read_exact_n(&mut server, after.len(), "bytes after the key update").await,
            after.as_bytes()
        );
        let back = format!("back {i}\n");
        server.write_all(back.as_bytes()).await.expect("back");
        printed(&out, &back).await;
        // The proxy's answer went out before anything it sent after reading the KeyUpdate.
        let want = before + usize::from(cmd == "K");
        assert_eq!(
            received_key_updates(),
            want,
            "after `{cmd}`: KeyUpdates received by s_client"
        );
    }
    drop(stdin);
    let (rest, end) = read_to_end(&mut server, STEP).await;
    assert!(rest.is_empty(), "the backend got {rest:?} at the close");
    assert_eq!(end, End::Eof, "close_notify reaches the backend as FIN");
    let _ = tokio::time::timeout(STEP, child.wait()).await;
    still_serves_raw(&t, &certs, &backend).await;
}

/// After the hand-over (the 101 and an echo went through the proxy's own record layer), for
/// every suite, TLS 1.2 and 1.3: a record that does not open, a plaintext alert and a record
/// too short for a tag each close the tunnel with an alert; the backend gets nothing of them,
/// only the end; and the proxy still serves. For TLS 1.3 the record comes after a KeyUpdate too (new keys).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_after_the_hand_over_close_the_tunnel_and_nothing_reaches_the_backend() {
    let certs = Certs::new();
    let pair = certs.ecdsa("site", &[SERVER_NAME]);
    let backend = RawBackend::start().await;
    let t = start(&toml(backend.addr, &[&pair], "", ""));
    let bad_records: [(&str, Vec<u8>); 3] = [
        ("a record whose tag does not verify", {
            let mut r = vec![0x17u8, 3, 3, 0, 40];
            r.extend_from_slice(&[0x5a; 40]);
            r
        }),
        ("a plaintext fatal alert", vec![0x15, 3, 3, 0, 2, 2, 40]),
        (
            "a record too short to hold a tag",
            vec![0x17, 3, 3, 0, 3, 1, 2, 3],
        ),
    ];
    let mut cases = 0;
    for suite in ecdsa_suites() {
        let tls13 = suite.version().version == rustls::ProtocolVersion::TLSv1_3;
        for (what, bad) in &bad_records {
            for after_key_update in [false, true] {
                if after_key_update && !tls13 {
                    continue;
                }
                let what = format!(
                    "{:?}, {what}, key update: {after_key_update}",
                    suite.suite()
                );
                let (mut tls, mut server) =
                    raw_tls_tunnel(&t, suite_client(&certs, suite), &backend, &what).await;
                if after_key_update {
                    tls.get_mut().1.refresh_traffic_keys().expect("key update");
                }
                both_ways(&mut tls, &mut server, b"hello", b"world", &what).await;
                let (mut tcp, _) = tls.into_inner();
                tcp.write_all(bad).await.expect("write the bad record");
                let (rest, _) = read_to_end(&mut server, STEP).await;
                assert!(rest.is_empty(), "{what}: the backend got {rest:?}");
                // One alert (TLS 1.3: inside an application-data record), then the end.
                let got = answer(&mut tcp).await;
                assert!(
                    got.len() < 64 && matches!(got.first(), Some(0x15 | 0x17)),
                    "{what}: expected one alert record, got {got:?}"
                );
                cases += 1;
            }
        }
    }
    // 3 TLS 1.3 suites × 3 records × 2, and 3 TLS 1.2 suites × 3 records.
    assert_eq!(cases, 27);
    still_serves_raw(&t, &certs, &backend).await;
}

// ---------------------------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------------------------

/// Proxy RSS per idle tunnel, bytes: the growth from 20 warm tunnels to 1,020, each having
/// echoed one message (so every transient buffer was used once and given back).
async fn rss_per_idle_tunnel(relay: Relay) -> u64 {
    let backend = EchoBackend::start().await;
    let proxy = Proxy::builder(relay)
        .workers(1)
        .route(route("/echo", &[backend.addr]))
        .start()
        .await;
    let mut open = Vec::new();
    let add = |n: usize| {
        let proxy = &proxy;
        async move {
            let mut tunnels = Vec::new();
            for chunk in 0..n / 20 {
                let batch: Vec<_> = (0..20)
                    .map(|i| async move {
                        let mut ws = ws_connect(proxy, "/echo").await;
                        ws_echo_once(&mut ws, &format!("idle {chunk} {i}")).await;
                        ws
                    })
                    .collect();
                tunnels.extend(futures_util::future::join_all(batch).await);
            }
            tunnels
        }
    };
    open.extend(add(20).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = proxy.rss_bytes();
    open.extend(add(1000).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = proxy.rss_bytes();
    assert_eq!(open.len(), 1020);
    after.saturating_sub(before) / 1000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_wss_tunnel_costs_little_more_than_an_idle_ws_tunnel() {
    let plain = rss_per_idle_tunnel(Relay::Auto).await;
    let tls = rss_per_idle_tunnel(Relay::Tls).await;
    eprintln!("proxy RSS per idle tunnel at 1,000: ws:// {plain} B, wss:// {tls} B");
    // After the handshake rustls is dropped: the session keeps its record keys as bytes, the
    // sequence numbers and the two TLS 1.3 traffic secrets (for KeyUpdate), no buffer: 0.7 KB
    // measured here (2.7 KB while rustls's connection was kept, 1.4 KB keeping rustls's
    // KernelConnection instead of the secrets; bench-results/2026-11-29-tls-idle). A growth
    // guard, below what keeping rustls's state would cost.
    assert!(tls <= 1280, "an idle wss:// tunnel costs {tls} B");
}

scoped_drivers!(close_notify_with_the_last_bytes_and_no_fin_still_ends_the_direction);
async fn close_notify_with_the_last_bytes_and_no_fin_still_ends_the_direction() {
    let RawTunnel {
        t: _t,
        mut tls,
        mut server,
        certs: _certs,
        backend: _backend,
    } = raw_wss_tunnel().await;
    let mut b = [0u8; 512];
    let n = tls.read(&mut b).await.expect("the 101");
    assert_eq!(status(&b[..n]), Some(101));
    // The last bytes and close_notify in one flight; the TCP connection stays open both ways,
    // so no FIN (and no new readiness) follows the close_notify.
    tls.write_all(b"bye").await.expect("write");
    tls.get_mut().1.send_close_notify();
    tls.flush().await.expect("flush");
    let (rest, end) = read_to_end(&mut server, STEP).await;
    assert_eq!(rest, b"bye");
    assert_eq!(
        end,
        End::Eof,
        "the backend must see the client's end as FIN"
    );
}
