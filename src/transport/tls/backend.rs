//! TLS toward backends: the rustls client settings of each route whose backends speak TLS
//! (`backend_tls`, or `wss://`/`https://` backends), and how a failed handshake is named.
//!
//! A backend's certificate is verified against `backend_ca` (a PEM file of certificate
//! authorities) or, without it, the system's roots (the OpenSSL store: `/etc/ssl/certs`, or
//! `SSL_CERT_FILE`), for `backend_server_name`, or the backend's IP address when none is set.
//! The settings are built when the configuration is loaded (start, reload): a bad CA file
//! refuses the configuration, naming the route and the file. Each route's settings keep
//! rustls's session cache, so reconnects to a backend resume their sessions.

use super::certs::provider;
use super::Failure;
use crate::config::Route;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{CertificateError, ClientConfig, RootCertStore};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// The `result` label values of `wsplice_backend_tls_handshakes_total`.
pub const BACKEND_RESULTS: [&str; 8] = [
    "ok",
    "resumed",
    "untrusted",
    "name_mismatch",
    "expired",
    "incompatible",
    "bad_message",
    "incomplete",
];

/// One route's TLS settings toward its backends.
#[derive(Debug)]
pub struct BackendTls {
    pub config: Arc<ClientConfig>,
    /// `backend_server_name`; `None`: each backend's IP address.
    server_name: Option<ServerName<'static>>,
}

impl BackendTls {
    /// The name to ask `addr` for and to check its certificate against.
    pub fn name_for(&self, addr: SocketAddr) -> ServerName<'static> {
        match &self.server_name {
            Some(n) => n.clone(),
            None => ServerName::IpAddress(addr.ip().into()),
        }
    }
}

/// Every TLS route's settings, by route id ([`crate::core::route::RouteEntry::id`]).
#[derive(Debug, Default)]
pub struct BackendTlsTable {
    by_route: HashMap<u32, Arc<BackendTls>>,
}

impl BackendTlsTable {
    /// Builds the settings of every route of `routes` with TLS backends. Errors name the route
    /// and the file.
    pub fn load(routes: &[Route]) -> Result<BackendTlsTable, String> {
        let mut table = BackendTlsTable::default();
        let mut system: Option<Arc<RootCertStore>> = None;
        for r in routes {
            let Some(tls) = &r.options.backend_tls else {
                continue;
            };
            let at = format!("route {:?}", r.prefix);
            let roots = match &tls.ca {
                Some(path) => {
                    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                        .map_err(|e| {
                            format!("{at}: backend_ca {}: cannot read: {e}", path.display())
                        })?
                        .collect::<Result<_, _>>()
                        .map_err(|e| {
                            format!("{at}: backend_ca {}: bad PEM: {e}", path.display())
                        })?;
                    let mut store = RootCertStore::empty();
                    let (_, bad) = store.add_parsable_certificates(certs);
                    if store.is_empty() {
                        return Err(format!(
                            "{at}: backend_ca {}: no usable CERTIFICATE block ({bad} unparsable): expected the PEM certificates of the authorities that sign the backends' certificates",
                            path.display()
                        ));
                    }
                    Arc::new(store)
                }
                None => system.get_or_insert_with(system_roots).clone(),
            };
            let mut config = ClientConfig::builder_with_provider(provider())
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .map_err(|e| format!("{at}: TLS settings: {e}"))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            // As toward clients: established sessions use our record layer (records.rs).
            config.enable_secret_extraction = true;
            let server_name = match &tls.server_name {
                Some(n) => Some(
                    ServerName::try_from(n.clone())
                        .map_err(|_| format!("{at}: invalid backend_server_name {n:?}"))?,
                ),
                None => None,
            };
            table.by_route.insert(
                crate::core::route::id_of(r),
                Arc::new(BackendTls {
                    config: Arc::new(config),
                    server_name,
                }),
            );
        }
        Ok(table)
    }

    /// Route `id`'s settings, if its backends speak TLS.
    pub fn get(&self, id: u32) -> Option<&Arc<BackendTls>> {
        self.by_route.get(&id)
    }

    pub fn is_empty(&self) -> bool {
        self.by_route.is_empty()
    }
}

/// The system's trusted roots. A store that cannot be read leaves it empty: every handshake
/// then fails as `untrusted`, and the log line says to set `backend_ca`.
fn system_roots() -> Arc<RootCertStore> {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        eprintln!("wsplice: warning: system certificate store: {e} (set backend_ca to trust a CA file instead)");
    }
    let mut store = RootCertStore::empty();
    store.add_parsable_certificates(found.certs);
    Arc::new(store)
}

/// Why a handshake with a backend failed.
pub(super) fn classify(e: &rustls::Error) -> Failure {
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                Failure::NameMismatch
            }
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => Failure::Expired,
            _ => Failure::Untrusted,
        },
        rustls::Error::PeerIncompatible(_) => Failure::Incompatible,
        _ => Failure::BadMessage,
    }
}
