//! TLS termination's place in a build without the `tls` cargo feature (a gateway build made
//! with `WSPLICE_FEATURES=""`: no rustls, no ring, about 0.6 MB less binary). A TLS listener
//! refuses to start and says why; `--check` does the same for a `[tls]` section with
//! certificates. The session types are uninhabited: nothing can construct one, so none of the
//! code that would drive one is built. The handshake metrics keep their labels, at zero.

#[path = "event.rs"]
mod event;

pub use event::{Failure, TlsEvent, CIPHERS, RESULTS, VERSIONS};

use crate::config::Tls;
use crate::transport::Transport;
use std::convert::Infallible;
use std::io;
use std::net::TcpStream;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use std::sync::Arc;

const NOT_BUILT: &str = "this binary is built without TLS (cargo feature `tls`, which tools/build-static leaves out only with WSPLICE_FEATURES=\"\"): remove the [tls] section, run a build with TLS, or terminate TLS in front of wsplice";

/// Why TLS settings cannot serve: here, always that TLS is not built in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertError {
    pub path: PathBuf,
    pub message: String,
}

impl std::fmt::Display for CertError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[tls]: {}", self.message)
    }
}

impl std::error::Error for CertError {}

fn not_built() -> CertError {
    CertError {
        path: PathBuf::new(),
        message: NOT_BUILT.to_owned(),
    }
}

/// Stands for rustls's server settings, of which this build has none.
#[derive(Debug)]
pub enum ServerConfig {}

/// What TLS listeners would run with; never built here (it would need a [`ServerConfig`]).
#[derive(Debug)]
pub struct TlsSettings {
    pub server: Arc<ServerConfig>,
    pub summary: Vec<String>,
    pub warnings: Vec<String>,
}

impl TlsSettings {
    /// Fails: TLS listeners cannot run in this build.
    pub fn load(_tls: &Tls, _tickets: &Arc<TicketKeys>) -> Result<TlsSettings, CertError> {
        Err(not_built())
    }
}

/// `--check`: a `[tls]` section with listeners or certificates cannot serve in this build.
pub fn check_files(tls: &Tls) -> Result<Vec<String>, CertError> {
    if tls.listen.is_empty() && tls.certs.is_empty() {
        Ok(Vec::new())
    } else {
        Err(not_built())
    }
}

/// Session ticket keys: nothing to seal without TLS.
#[derive(Debug)]
pub struct TicketKeys;

impl TicketKeys {
    pub fn from_bytes(_master: [u8; 32]) -> TicketKeys {
        TicketKeys
    }

    /// No key material is drawn: no ticket is ever sealed in this build.
    pub fn generate() -> Result<([u8; 32], TicketKeys), Infallible> {
        Ok(([0; 32], TicketKeys))
    }
}

/// The worker's TLS buffers: none are needed (no session ever asks for them).
pub struct TlsBuffers;

impl TlsBuffers {
    pub fn new(_chunk: usize) -> TlsBuffers {
        TlsBuffers
    }
}

/// A client's TLS session; never, in this build.
#[derive(Debug)]
pub enum TlsSession {}

impl TlsSession {
    pub fn new(config: Arc<ServerConfig>) -> Result<TlsSession, CertError> {
        match *config {}
    }

    pub fn take_event(&mut self) -> Option<TlsEvent> {
        match *self {}
    }

    pub fn final_event(&mut self) -> Option<TlsEvent> {
        match *self {}
    }

    pub fn eof_pending(&self) -> bool {
        match *self {}
    }

    pub fn flush(&mut self, _sock: &TcpStream) -> io::Result<()> {
        match *self {}
    }
}

/// A TLS client's socket, session and buffers; never, in this build (no session exists).
pub struct TlsIo<'a> {
    pub sock: &'a TcpStream,
    pub session: &'a mut TlsSession,
    pub bufs: &'a mut TlsBuffers,
}

impl AsFd for TlsIo<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

impl Transport for TlsIo<'_> {
    fn read(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
        match *self.session {}
    }

    fn write(&mut self, _buf: &[u8]) -> io::Result<usize> {
        match *self.session {}
    }

    fn shutdown_write(&mut self) -> io::Result<()> {
        match *self.session {}
    }

    fn can_splice(&self) -> bool {
        match *self.session {}
    }
}
