//! Certificates: PEM files loaded and checked, chosen by SNI, and the rustls server settings
//! every TLS listener shares.
//!
//! Each certificate serves the DNS names of its subjectAltName extension: exact names, and
//! `*.example.com`, which covers one label (`a.example.com`, not `example.com` nor
//! `a.b.example.com`). An exact name wins over a wildcard. Among the certificates of one name
//! (an RSA and an ECDSA one, say) the first whose key can sign with a scheme the client offers
//! is taken. A client without SNI, or with a name no certificate covers, gets the first
//! certificate, or an alert with `unknown_sni = "refuse"`.

use super::TicketKeys;
use crate::config::{CertPair, Tls, UnknownSni};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, SignatureScheme};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A certificate or key file that cannot serve, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertError {
    pub path: PathBuf,
    pub message: String,
}

impl std::fmt::Display for CertError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "tls.cert {}: {}", self.path.display(), self.message)
    }
}

impl std::error::Error for CertError {}

fn error(path: &Path, message: impl Into<String>) -> CertError {
    CertError {
        path: path.to_owned(),
        message: message.into(),
    }
}

/// One loaded pair.
struct Loaded {
    key: Arc<CertifiedKey>,
    names: Vec<String>,
}

/// The crypto the listeners use: *ring*, its default (AEAD-only) suites, TLS 1.2 and 1.3.
pub(super) fn provider() -> Arc<CryptoProvider> {
    Arc::new(super::lazy_aead::provider())
}

/// Loads and checks one pair: the chain parses, the key parses and matches the leaf. An
/// expired or not yet valid leaf is served anyway, with a warning in `warnings`.
fn load_pair(
    pair: &CertPair,
    provider: &CryptoProvider,
    warnings: &mut Vec<String>,
) -> Result<Loaded, CertError> {
    let (cert, key) = (&pair.cert, &pair.key);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| error(cert, format!("cannot read the certificate: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| error(cert, format!("bad PEM: {e}")))?;
    if chain.is_empty() {
        return Err(error(
            cert,
            "no CERTIFICATE block (expected the PEM chain, leaf first)",
        ));
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        error(
            key,
            format!("cannot read the private key (PEM PKCS#8, PKCS#1 or SEC1): {e}"),
        )
    })?;
    let certified = CertifiedKey::from_der(chain, der, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => error(
            key,
            format!("this key does not match the certificate {}", cert.display()),
        ),
        e => error(key, format!("unusable private key: {e}")),
    })?;
    let leaf = &certified.cert[0];
    let ee = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| error(cert, format!("the leaf certificate does not parse: {e}")))?;
    let names: Vec<String> = ee
        .valid_dns_names()
        .map(|n| n.to_ascii_lowercase())
        .collect();
    if names.is_empty() {
        warnings.push(format!(
            "tls.cert {}: no DNS name in subjectAltName; served only as the default certificate",
            cert.display()
        ));
    }
    // webpki checks the leaf's validity period before it looks for an issuer, so with no
    // trust anchor a date problem is the error it reports, and anything else is not one.
    let now = UnixTime::now();
    let algs = provider.signature_verification_algorithms.all;
    match ee.verify_for_usage(
        algs,
        &[],
        &[],
        now,
        webpki::KeyUsage::server_auth(),
        None,
        None,
    ) {
        Err(webpki::Error::CertExpired { not_after, .. }) => warnings.push(format!(
            "tls.cert {}: the certificate expired {} days ago; clients will refuse it: renew it",
            cert.display(),
            now.as_secs().saturating_sub(not_after.as_secs()) / 86400
        )),
        Err(webpki::Error::CertNotValidYet { .. }) => warnings.push(format!(
            "tls.cert {}: the certificate is not valid yet (check the clock)",
            cert.display()
        )),
        _ => {}
    }
    Ok(Loaded {
        key: Arc::new(certified),
        names,
    })
}

/// Picks a certificate by the client's SNI name.
#[derive(Debug)]
pub struct CertResolver {
    exact: HashMap<String, Vec<Arc<CertifiedKey>>>,
    /// Keyed by what follows `*.`.
    wildcard: HashMap<String, Vec<Arc<CertifiedKey>>>,
    /// For no SNI or an unknown name; `None`: refuse.
    default: Option<Arc<CertifiedKey>>,
}

fn pick(keys: &[Arc<CertifiedKey>], schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
    keys.iter()
        .find(|k| k.key.choose_scheme(schemes).is_some())
        .or(keys.first())
        .cloned()
}

impl CertResolver {
    /// The certificate for `name` (already lower case), if one covers it.
    fn lookup(&self, name: &str, schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        if let Some(keys) = self.exact.get(name) {
            return pick(keys, schemes);
        }
        let (_, parent) = name.split_once('.')?;
        pick(self.wildcard.get(parent)?, schemes)
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let schemes = hello.signature_schemes();
        match hello.server_name() {
            Some(name) => {
                let name = name.to_ascii_lowercase();
                self.lookup(&name, schemes).or_else(|| self.default.clone())
            }
            None => self.default.clone(),
        }
    }
}

/// What TLS listeners run with: replaced as a whole by a reload (established sessions keep
/// theirs), with the same ticket keys.
#[derive(Debug)]
pub struct TlsSettings {
    pub server: Arc<ServerConfig>,
    /// One line per certificate, for the start-up report: its file and names.
    pub summary: Vec<String>,
    /// Problems that do not stop serving (an expired certificate), each naming its file.
    pub warnings: Vec<String>,
}

impl TlsSettings {
    /// Loads every pair of `tls` and builds the server settings; `tickets` are the proxy's
    /// session ticket keys (made once, kept across reloads). Errors name the file.
    pub fn load(tls: &Tls, tickets: &Arc<TicketKeys>) -> Result<TlsSettings, CertError> {
        let provider = provider();
        let mut warnings = Vec::new();
        let mut summary = Vec::new();
        let mut exact: HashMap<String, Vec<Arc<CertifiedKey>>> = HashMap::new();
        let mut wildcard: HashMap<String, Vec<Arc<CertifiedKey>>> = HashMap::new();
        let mut default = None;
        for pair in &tls.certs {
            let loaded = load_pair(pair, &provider, &mut warnings)?;
            summary.push(format!(
                "tls cert {} names={}",
                pair.cert.display(),
                loaded.names.join(",")
            ));
            for name in &loaded.names {
                let (map, key) = match name.strip_prefix("*.") {
                    Some(parent) => (&mut wildcard, parent),
                    None => (&mut exact, name.as_str()),
                };
                map.entry(key.to_owned())
                    .or_default()
                    .push(loaded.key.clone());
            }
            default.get_or_insert(loaded.key);
        }
        if tls.unknown_sni == UnknownSni::Refuse {
            default = None;
        }
        let resolver = CertResolver {
            exact,
            wildcard,
            default,
        };
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| CertError {
                path: PathBuf::new(),
                message: format!("TLS settings: {e}"),
            })?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(resolver));
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        // Established sessions hand their traffic secrets over to our record layer and drop
        // rustls (transport/tls/records.rs).
        server.enable_secret_extraction = true;
        // Their TLS 1.3 traffic secrets, kept for KeyUpdate instead of rustls's state
        // (transport/tls/secrets.rs); nothing is logged anywhere.
        server.key_log = Arc::new(super::secrets::Capture);
        // Resumption is by tickets only: a session cache would be per process, and would hold
        // memory per client.
        server.session_storage = Arc::new(NoServerSessionStorage {});
        if tls.session_tickets {
            server.ticketer = tickets.clone();
            // One ticket per handshake: a client reconnects with one.
            server.send_tls13_tickets = 1;
        } else {
            server.send_tls13_tickets = 0;
        }
        Ok(TlsSettings {
            server: Arc::new(server),
            summary,
            warnings,
        })
    }
}

/// Checks every certificate/key pair of `tls` (`--check`): the first bad file is the error;
/// warnings (an expired certificate) are returned.
pub fn check_files(tls: &Tls) -> Result<Vec<String>, CertError> {
    let tickets = Arc::new(TicketKeys::from_bytes([0; 32]));
    TlsSettings::load(tls, &tickets).map(|s| s.warnings)
}
