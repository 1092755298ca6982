//! TLS for the end-to-end tests: certificates made at test time (rcgen), a rustls client that
//! trusts them, and a local TLS shim so byte-level scenarios written against a plain
//! `TcpStream` run unchanged over `wss://`.
//!
//! ```text
//!   WebSocket scenarios:  tungstenite ── rustls ────────────────▶ wsplice TLS listener
//!   byte-level scenarios: raw TcpStream ──▶ shim ── rustls ─────▶ wsplice TLS listener
//!                         (FIN becomes close_notify + FIN, EOF from the proxy becomes FIN)
//! ```

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::TlsConnector;

/// The name every test certificate covers and the clients ask for.
pub const SERVER_NAME: &str = "localhost";

/// A test CA and certificates it signed, written as PEM files.
pub struct Certs {
    pub dir: PathBuf,
    pub ca: CertificateDer<'static>,
    /// The CA certificate as a PEM file (for `backend_ca`).
    pub ca_file: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

/// One certificate/key pair on disk.
#[derive(Debug, Clone)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: CertificateDer<'static>,
}

impl Certs {
    /// A fresh CA in a fresh directory.
    pub fn new() -> Certs {
        static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wsplice-tls-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create the certificate directory");
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "wsplice test CA");
        let ca = params.self_signed(&key).expect("CA certificate");
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).expect("write the CA certificate");
        Certs {
            dir,
            ca: ca.der().clone(),
            ca_file,
            issuer: Issuer::new(params, key),
        }
    }

    /// An ECDSA P-256 certificate for `names`, written as `stem.pem` and `stem.key`.
    pub fn ecdsa(&self, stem: &str, names: &[&str]) -> Pair {
        let key = KeyPair::generate().expect("ECDSA key");
        self.issue(stem, names, key, |_| {})
    }

    /// An RSA 2048 certificate for `names` (the key is tests/data/rsa-2048-key.pem: rcgen with
    /// *ring* signs with RSA but cannot make RSA keys).
    pub fn rsa(&self, stem: &str, names: &[&str]) -> Pair {
        let pem = include_str!("../data/rsa-2048-key.pem");
        let key = KeyPair::from_pem_and_sign_algo(pem, &rcgen::PKCS_RSA_SHA256).expect("RSA key");
        self.issue(stem, names, key, |_| {})
    }

    /// An ECDSA certificate that expired in 2020.
    pub fn expired(&self, stem: &str, names: &[&str]) -> Pair {
        let key = KeyPair::generate().expect("ECDSA key");
        self.issue(stem, names, key, |p| {
            p.not_before = rcgen::date_time_ymd(2019, 1, 1);
            p.not_after = rcgen::date_time_ymd(2020, 1, 1);
        })
    }

    fn issue(
        &self,
        stem: &str,
        names: &[&str],
        key: KeyPair,
        edit: impl FnOnce(&mut CertificateParams),
    ) -> Pair {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, stem);
        edit(&mut params);
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        let pair = Pair {
            cert: self.dir.join(format!("{stem}.pem")),
            key: self.dir.join(format!("{stem}.key")),
            der: cert.der().clone(),
        };
        std::fs::write(&pair.cert, cert.pem()).expect("write the certificate");
        std::fs::write(&pair.key, key.serialize_pem()).expect("write the key");
        pair
    }

    /// A rustls client that trusts this CA and speaks `http/1.1` (ALPN).
    pub fn client(&self) -> Arc<rustls::ClientConfig> {
        self.client_with(|_| {})
    }

    /// [`Certs::client`] adjusted by `edit` (versions, resumption).
    pub fn client_with(
        &self,
        edit: impl FnOnce(&mut rustls::ClientConfig),
    ) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).expect("trust the test CA");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut c = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        edit(&mut c);
        Arc::new(c)
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The certificates of the e2e scenarios: made once per test binary.
pub fn shared() -> &'static (Certs, Pair) {
    static CERTS: OnceLock<(Certs, Pair)> = OnceLock::new();
    CERTS.get_or_init(|| {
        let certs = Certs::new();
        let pair = certs.ecdsa("localhost", &[SERVER_NAME, "*.example.com"]);
        // Kept for the whole run: the OnceLock is never dropped, nor is the directory removed
        // before the process ends; it lives under the temp dir.
        (certs, pair)
    })
}

/// The `[tls]` section serving `pair` on 127.0.0.1:0.
pub fn tls_section(pair: &Pair, extra: &str) -> String {
    format!(
        "\n[tls]\nlisten = [\"127.0.0.1:0\"]\n{extra}[[tls.cert]]\ncert = \"{}\"\nkey = \"{}\"\n",
        pair.cert.display(),
        pair.key.display()
    )
}

/// A TLS connection to `addr` asking for `name`.
pub async fn connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    name: &str,
) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(name.to_owned()).map_err(io::Error::other)?;
    TlsConnector::from(config).connect(name, tcp).await
}

/// A plain socket or a TLS client stream: what the WebSocket helpers run over.
pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Listens on 127.0.0.1 and carries each connection over TLS to `target`: FIN from the test
/// becomes close_notify + FIN, the proxy's end becomes FIN, an error on either side closes
/// both. Returns the plain address.
pub async fn shim(target: SocketAddr, config: Arc<rustls::ClientConfig>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the TLS shim");
    let addr = l.local_addr().expect("shim address");
    tokio::spawn(async move {
        while let Ok((plain, _)) = l.accept().await {
            let config = config.clone();
            tokio::spawn(async move {
                let _ = plain.set_nodelay(true);
                if let Ok(tls) = connect(target, config, SERVER_NAME).await {
                    carry(plain, tls).await;
                }
            });
        }
    });
    addr
}

/// A TLS server for `pair` on 127.0.0.1 in front of the plain `target`: a TLS backend for the
/// proxy. Each connection first connects to `target` (if that fails the TLS connection is
/// closed before its handshake, so a refused backend stays a failed one), then completes the
/// handshake and carries the bytes (close_notify or FIN becomes FIN, and back).
pub async fn terminator(target: SocketAddr, pair: Pair) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the TLS terminator");
    let addr = l.local_addr().expect("terminator address");
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config(&pair));
    tokio::spawn(async move {
        while let Ok((tls, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = tls.set_nodelay(true);
                let Ok(plain) = TcpStream::connect(target).await else {
                    return;
                };
                let _ = plain.set_nodelay(true);
                if let Ok(tls) = acceptor.accept(tls).await {
                    carry(plain, tls).await;
                }
            });
        }
    });
    addr
}

/// rustls server settings serving `pair` (ALPN `http/1.1`).
pub fn server_config(pair: &Pair) -> Arc<rustls::ServerConfig> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::PrivateKeyDer;
    let key = PrivateKeyDer::from_pem_file(&pair.key).expect("read the test key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut c = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![pair.der.clone()], key)
        .expect("the test certificate and key");
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(c)
}

async fn carry<S>(plain: TcpStream, tls: S)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut plain_in, mut plain_out) = tokio::io::split(plain);
    let (mut tls_in, mut tls_out) = tokio::io::split(tls);
    // The first error ends both directions (both streams are dropped, so both close).
    let _ = tokio::try_join!(
        pump(&mut plain_in, &mut tls_out),
        pump(&mut tls_in, &mut plain_out)
    );
}

/// Copies `from` to `to` (each write flushed: a TLS record goes out at once) until `from`
/// ends, then shuts `to` down.
async fn pump(
    from: &mut (impl AsyncRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
) -> io::Result<()> {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        to.write_all(&buf[..n]).await?;
        to.flush().await?;
    }
}
