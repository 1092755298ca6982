//! What a `[[route]]` sets: its match, backends, balancing, health checks, backend TLS and the
//! options of its plain HTTP requests.

use super::*;

/// One route: requests whose path starts with `prefix` (and whose Host matches `host`, if set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Path prefix, starts with `/`, no trailing slash unless it is `/` itself.
    pub prefix: String,
    /// Lower-cased host name without port; `None` matches any Host.
    pub host: Option<String>,
    /// The configured addresses (and, in the configuration the workers run, what the route's
    /// names resolved to). With names, possibly none: the route answers 502 until one resolves.
    pub backends: Vec<SocketAddr>,
    /// Default true: `/notice/a?x=1` reaches the backend as `/a?x=1`.
    pub strip_prefix: bool,
    /// Default Append.
    pub forwarded_for: ForwardedFor,
    /// Send a PROXY protocol header of this version to the backend first (default: none).
    pub send_proxy: Option<ProxyVersion>,
    /// Plain HTTP forwarding, balancing, origins and the backend protocol.
    pub options: RouteOptions,
}

/// What a route does besides WebSocket upgrades; every key has a default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteOptions {
    /// Forward plain HTTP/1.1 requests (default true); false answers them 426 (a WebSocket-only
    /// route).
    pub http: bool,
    /// How long a forwarded request may wait for the backend: for its answer, and between two
    /// reads of a streamed answer (default 60 s, above engine.io's 25 s ping + 20 s timeout).
    pub response_timeout: Duration,
    /// How a backend is chosen for a new connection or request.
    pub balance: Balance,
    /// Origins allowed to upgrade or send requests (`https://example.com`); empty: any. A
    /// request with another `Origin` is answered 403; one without `Origin` passes.
    pub origins: Vec<String>,
    /// How requests are written to the backends.
    pub protocol: BackendProtocol,
    /// Backends given by name in `backends` (looked up by the resolver thread; what they resolve
    /// to is added to the route's addresses, see [`Config::resolved`]).
    pub names: Vec<crate::config::BackendName>,
    /// Speak TLS to the backends (`backend_tls = true`, or `wss://`/`https://` backends).
    pub backend_tls: Option<BackendTls>,
    /// Each backend's weight, in `backends` order (`{ addr = "...", weight = 3 }`); empty when
    /// every backend has weight 1.
    pub weights: Vec<u32>,
    /// `[route.health]`: active checks and passive ejection; `None`: neither (a backend is
    /// only skipped while an operator drains it).
    pub health: Option<Health>,
}

/// `[route.health]`: how a route learns that a backend is down, and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// The active check, if any (`kind`); `None`: passive ejection only.
    pub check: Option<HealthCheck>,
    /// Between two checks of one backend (default 2 s).
    pub interval: Duration,
    /// A check not answered within this failed (default 1 s).
    pub timeout: Duration,
    /// Consecutive good checks that bring a down backend back (default 2).
    pub rise: u32,
    /// Consecutive failed checks that take a backend down (default 3).
    pub fall: u32,
    /// Consecutive connect failures or bad answers seen by the workers that eject a backend
    /// (default 5; 0 turns passive ejection off).
    pub eject_after: u32,
    /// How long the first ejection lasts; each ejection that follows another doubles it
    /// (default 10 s).
    pub eject_time: Duration,
    /// The longest ejection (default 5 min).
    pub eject_max_time: Duration,
    /// At most this share of the route's backends is ejected at once (default 50).
    pub max_ejected_percent: u8,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            check: None,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            eject_after: 5,
            eject_time: Duration::from_secs(10),
            eject_max_time: Duration::from_secs(300),
            max_ejected_percent: 50,
        }
    }
}

/// The active check of `[route.health]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub kind: CheckKind,
    /// The path `http` and `websocket` checks request (default `/`).
    pub path: String,
    /// The status an `http` check expects (default 200; `websocket` expects 101).
    pub expect_status: u16,
    /// The Host header of `http` and `websocket` checks (default: the route's host, or the
    /// backend's address).
    pub host: Option<String>,
}

/// What an active check does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckKind {
    /// A TCP connect.
    Tcp,
    /// `GET path` expecting `expect_status`.
    Http,
    /// A WebSocket upgrade of `path` expecting `101 Switching Protocols`.
    WebSocket,
}

impl CheckKind {
    /// As written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckKind::Tcp => "tcp",
            CheckKind::Http => "http",
            CheckKind::WebSocket => "websocket",
        }
    }
}

/// How a route's backends are verified when it speaks TLS to them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BackendTls {
    /// PEM file of the certificate authorities to trust (`backend_ca`); without one, the
    /// system's roots (the OpenSSL store: /etc/ssl/certs, or `SSL_CERT_FILE`).
    pub ca: Option<PathBuf>,
    /// The name sent as SNI and checked against the backend's certificate
    /// (`backend_server_name`); without one, the backend's IP address (its certificate must
    /// then name the IP).
    pub server_name: Option<String>,
}

impl Default for RouteOptions {
    fn default() -> Self {
        RouteOptions {
            http: true,
            response_timeout: Duration::from_secs(60),
            balance: Balance::default(),
            origins: Vec::new(),
            protocol: BackendProtocol::Http,
            names: Vec::new(),
            weights: Vec::new(),
            health: None,
            backend_tls: None,
        }
    }
}

/// The wire protocol spoken to a route's backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendProtocol {
    /// HTTP/1.1 (WebSocket upgrades and plain requests).
    #[default]
    Http,
    /// uwsgi packets (nginx's `uwsgi_pass`): plain requests only, one per connection.
    Uwsgi,
}

/// How a route spreads clients over its backends. The backend tried first is chosen by the
/// mode; when it fails, the others are tried in list order after it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Balance {
    /// Each new connection or request takes the next backend.
    #[default]
    RoundRobin,
    /// The backend with the fewest open tunnels and requests.
    LeastConn,
    /// The same key always picks the same backend (rendezvous hashing: adding or removing a
    /// backend moves only the keys of that backend).
    Hash(HashKey),
    /// The proxy sets a cookie naming the backend on answers, and routes by it afterwards.
    Cookie(StickyCookie),
}

/// What `balance = "hash"` hashes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum HashKey {
    /// The client address (its IP, without the port), as nginx's `ip_hash`.
    #[default]
    ClientIp,
    /// The value of this cookie; requests without it fall back to the client address.
    Cookie(String),
    /// The value of this query parameter; requests without it fall back to the client address.
    Query(String),
    /// The value of this request header; requests without it fall back to the client address.
    Header(String),
}

/// The cookie of `balance = "cookie"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StickyCookie {
    /// Default `wsplice_backend`.
    pub name: String,
    /// Add `Secure` (default false: set it when clients reach you over HTTPS).
    pub secure: bool,
    /// Add `HttpOnly` (default true).
    pub http_only: bool,
    /// `SameSite` attribute (default `Lax`).
    pub same_site: SameSite,
}

impl Default for StickyCookie {
    fn default() -> Self {
        StickyCookie {
            name: "wsplice_backend".to_owned(),
            secure: false,
            http_only: true,
            same_site: SameSite::Lax,
        }
    }
}

/// A cookie's `SameSite` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SameSite {
    #[default]
    Lax,
    Strict,
    /// Requires `Secure` in browsers.
    None,
}

impl SameSite {
    /// The attribute value as written in `Set-Cookie` (and in the config, lower-cased).
    pub fn as_str(self) -> &'static str {
        match self {
            SameSite::Lax => "Lax",
            SameSite::Strict => "Strict",
            SameSite::None => "None",
        }
    }
}
