//! How a TLS handshake ended, for the metrics: `wsplice_tls_handshakes_total` (clients of the
//! TLS listeners), `wsplice_backend_tls_handshakes_total` (TLS backends), versions and suites.

/// Why a handshake did not finish: the `result` label of `wsplice_tls_handshakes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The first bytes were a plain HTTP request (answered with a readable 400).
    PlainHttp,
    /// The first bytes were neither TLS nor HTTP.
    NotTls,
    /// No protocol version, cipher suite, group or signature scheme in common (TLS 1.0/1.1
    /// only, for instance).
    Incompatible,
    /// An SNI name no certificate covers, with `tls.unknown_sni = "refuse"`.
    UnknownSni,
    /// A malformed, oversized or unexpected handshake message, or a bad record.
    BadMessage,
    /// The client closed or timed out before the handshake finished.
    Incomplete,
    /// A backend's certificate does not chain to the trusted roots (`backend_ca`, or the
    /// system's), or is otherwise unacceptable.
    Untrusted,
    /// A backend's certificate is not valid for the name we asked (`backend_server_name`).
    NameMismatch,
    /// A backend's certificate is expired or not valid yet.
    Expired,
}

/// How a TLS handshake ended, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsEvent {
    Established {
        /// Index into [`VERSIONS`].
        version: usize,
        /// Index into [`CIPHERS`], or `None` for a suite not listed there.
        cipher: Option<usize>,
        resumed: bool,
    },
    Failed(Failure),
}

/// The `result` label values of `wsplice_tls_handshakes_total`.
pub const RESULTS: [&str; 8] = [
    "ok",
    "resumed",
    "plain_http",
    "not_tls",
    "incompatible",
    "unknown_sni",
    "bad_message",
    "incomplete",
];
/// The `version` label values of `wsplice_tls_versions_total`.
pub const VERSIONS: [&str; 2] = ["TLSv1.2", "TLSv1.3"];
/// The `cipher` label values of `wsplice_tls_ciphers_total`: the suites the listeners offer.
pub const CIPHERS: [&str; 9] = [
    "TLS13_AES_128_GCM_SHA256",
    "TLS13_AES_256_GCM_SHA384",
    "TLS13_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
];

impl TlsEvent {
    /// Index into [`RESULTS`].
    pub fn result(self) -> usize {
        match self {
            TlsEvent::Established { resumed: false, .. } => 0,
            TlsEvent::Established { resumed: true, .. } => 1,
            TlsEvent::Failed(f) => match f {
                Failure::PlainHttp => 2,
                Failure::NotTls => 3,
                Failure::Incompatible => 4,
                Failure::UnknownSni => 5,
                // Only a backend's certificate is verified.
                Failure::BadMessage
                | Failure::Untrusted
                | Failure::NameMismatch
                | Failure::Expired => 6,
                Failure::Incomplete => 7,
            },
        }
    }

    /// Index into [`super::BACKEND_RESULTS`].
    pub fn backend_result(self) -> usize {
        match self {
            TlsEvent::Established { resumed: false, .. } => 0,
            TlsEvent::Established { resumed: true, .. } => 1,
            TlsEvent::Failed(f) => match f {
                Failure::Untrusted => 2,
                Failure::NameMismatch => 3,
                Failure::Expired => 4,
                Failure::Incompatible => 5,
                Failure::Incomplete => 7,
                // A backend is never a client speaking plain HTTP or asking by SNI.
                Failure::BadMessage
                | Failure::PlainHttp
                | Failure::NotTls
                | Failure::UnknownSni => 6,
            },
        }
    }
}
