//! TLS termination: one rustls server session per client, driven through its [`Transport`].
//!
//! ```text
//!   socket ──read──▶ worker's rx buffer ──rustls──▶ plaintext into the caller's buffer
//!   caller's bytes ──rustls──▶ worker's tx buffer ──write──▶ socket
//!                    what a socket did not take, or what a read left half a record of,
//!                    stays with the session (tx / rx), and only until it is gone
//! ```
//!
//! The handshake uses rustls's *unbuffered* API: rustls keeps no receive or send buffer of its
//! own. Records are read into and encrypted in the worker's [`TlsBuffers`]; a session holds
//! bytes only while a record is half received or the socket would not take what was encrypted.
//! Once the handshake is done and the session has written its first application bytes (the 101
//! toward a client, the request head toward a backend: rustls has then sent everything it owed),
//! rustls hands the connection's traffic secrets over and is dropped, and `records.rs` frames
//! and protects the records: an idle `wss://` tunnel holds its keys, sequence numbers and (TLS
//! 1.3) rustls's small KeyUpdate state, and nothing else: no buffer, no pipe.
//!
//! The handshake happens inside [`TlsIo::read`]: until application bytes arrive a read answers
//! `WouldBlock` (or an error the core maps: [`PlainHttpOnTls`]), so the upgrade stage and its
//! handshake timeout cover the whole TLS + HTTP handshake. Records rustls produces on its own
//! (the server's flight, session tickets, alerts, close_notify) are written at once and the rest
//! when the worker sees the socket writable ([`Transport::flush`]). `shutdown_write` sends
//! close_notify, then FIN once it is out; a close_notify or FIN from the client reads as EOF.
//!
//! How a handshake ended is reported once ([`TlsSession::take_event`]) for the metrics.
//!
//! [`Transport`]: crate::transport::Transport
//! [`Transport::flush`]: crate::transport::Transport::flush

mod backend;
mod certs;
mod events;
mod lazy_aead;
mod records;
mod role;
mod secrets;
mod tickets;
mod tlsio;

pub use events::{Failure, TlsEvent, CIPHERS, RESULTS, VERSIONS};

pub use backend::{BackendTls, BackendTlsTable, BACKEND_RESULTS};
pub use role::Role;
pub use tlsio::{TlsBuffers, TlsIo};

pub use certs::{check_files, CertError, CertResolver, TlsSettings};
pub use tickets::TicketKeys;

use crate::core::conn::{BackendTlsFailed, PlainHttpOnTls};
use records::Records;
use rustls::client::UnbufferedClientConnection;
use rustls::pki_types::ServerName;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    AppDataRecord, ConnectionState, EncodeError, EncodeTlsData, EncryptError, UnbufferedStatus,
    WriteTraffic,
};
use rustls::{ClientConfig, HandshakeKind, ProtocolVersion, ServerConfig};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use tlsio::TX_SLACK;

/// Some TLS bytes were processed (plain HTTP is told by the very first byte).
const STARTED: u16 = 1;
/// The handshake is complete.
const DONE: u16 = 2;
/// close_notify or FIN received: reads return 0 once the plaintext is delivered.
const PEER_CLOSED: u16 = 4;
/// rustls failed: reads and writes fail (the alert rustls queued is sent first).
const FAILED: u16 = 8;
/// The client spoke plain HTTP: our 400 and the lingering close go unencrypted.
const PLAIN: u16 = 16;
/// close_notify is queued.
const CLOSE_SENT: u16 = 32;
/// FIN is wanted once `tx` is written.
const WANT_FIN: u16 = 64;
const FIN_SENT: u16 = 128;
/// The first byte was not a TLS handshake record.
const NOT_TLS: u16 = 256;
/// The handshake's outcome was reported.
const REPORTED: u16 = 512;
/// A read returned the end (0) after `PEER_CLOSED`.
const EOF_READ: u16 = 1024;

/// One client's TLS session. Boxed and kept beside the slab entry: plain entries do not pay
/// for it.
pub struct TlsSession<C: Role = UnbufferedServerConnection> {
    stage: Stage<C>,
    /// Received bytes not processed yet: the start of a record whose rest has not arrived.
    /// Empty, without an allocation, between records.
    rx: Vec<u8>,
    /// Decrypted bytes a read had no room for. Empty, without an allocation, between reads.
    plain: Vec<u8>,
    /// Records the socket has not taken yet. Empty, without an allocation, when written.
    tx: Vec<u8>,
    flags: u16,
    event: Option<TlsEvent>,
}

impl<C: Role> std::fmt::Debug for TlsSession<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSession")
            .field("rx", &self.rx.len())
            .field("plain", &self.plain.len())
            .field("tx", &self.tx.len())
            .field("flags", &self.flags)
            .finish()
    }
}

/// Who protects the records.
enum Stage<C: Role> {
    /// rustls: the handshake, and a session that was never handed over (closed before it wrote);
    /// the TLS 1.3 traffic secrets captured on the way (a client's session).
    Handshake(Box<C>, Option<Box<secrets::Secrets>>),
    /// Our record layer, with the traffic secrets rustls handed over.
    Records(Records<C::Data>),
    /// A hand-over that failed (the session fails with it).
    Gone,
}

fn invalid(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

fn not_connected() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "the TLS session is not established (or failed): nothing can be sent",
    )
}

/// Appends the handshake record rustls wants sent to `tx`.
fn encode<D>(e: &mut EncodeTlsData<'_, D>, tx: &mut Vec<u8>) {
    let start = tx.len();
    tx.resize(start + 4096, 0);
    let n = match e.encode(&mut tx[start..]) {
        Ok(n) => n,
        Err(EncodeError::InsufficientSize(s)) => {
            tx.resize(start + s.required_size, 0);
            e.encode(&mut tx[start..]).unwrap_or(0)
        }
        Err(EncodeError::AlreadyEncoded) => 0,
    };
    tx.truncate(start + n);
}

impl TlsSession<UnbufferedServerConnection> {
    /// A session for a client just accepted on a TLS listener.
    pub fn new(config: Arc<ServerConfig>) -> Result<Self, rustls::Error> {
        Ok(TlsSession {
            stage: Stage::Handshake(Box::new(UnbufferedServerConnection::new(config)?), None),
            rx: Vec::new(),
            plain: Vec::new(),
            tx: Vec::new(),
            flags: 0,
            event: None,
        })
    }
}

impl TlsSession<UnbufferedClientConnection> {
    /// A session toward a TLS backend whose TCP connect just completed, verifying its
    /// certificate for `name`. The handshake runs inside the first write (the request head),
    /// so nothing of the head leaves before the backend proved who it is.
    pub fn client(
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> Result<Self, rustls::Error> {
        Ok(TlsSession {
            stage: Stage::Handshake(
                Box::new(UnbufferedClientConnection::new(config, name)?),
                None,
            ),
            rx: Vec::new(),
            plain: Vec::new(),
            tx: Vec::new(),
            // A backend's bytes are never taken for a plain HTTP client.
            flags: STARTED,
            event: None,
        })
    }
}

impl<C: Role> TlsSession<C> {
    /// How the handshake ended, once.
    pub fn take_event(&mut self) -> Option<TlsEvent> {
        let e = self.event.take();
        if e.is_some() {
            self.flags |= REPORTED;
        }
        e
    }

    /// The connection is over: a handshake that never finished nor failed was cut short.
    pub fn final_event(&mut self) -> Option<TlsEvent> {
        if self.event.is_none() && self.flags & (REPORTED | DONE | FAILED) == 0 {
            self.event = Some(TlsEvent::Failed(Failure::Incomplete));
        }
        self.take_event()
    }

    fn established(&mut self) {
        let Stage::Handshake(conn, _) = &self.stage else {
            return;
        };
        self.flags |= DONE;
        let common = conn.common();
        let version = usize::from(common.protocol_version() == Some(ProtocolVersion::TLSv1_3));
        let cipher = common
            .negotiated_cipher_suite()
            .and_then(|s| s.suite().as_str())
            .and_then(|name| CIPHERS.iter().position(|&c| c == name));
        let resumed = common.handshake_kind() == Some(HandshakeKind::Resumed);
        self.event = Some(TlsEvent::Established {
            version,
            cipher,
            resumed,
        });
    }

    fn fail(&mut self, e: &rustls::Error) {
        self.flags |= FAILED;
        if self.flags & DONE == 0 {
            let why = if C::CLIENT {
                backend::classify(e)
            } else if self.flags & NOT_TLS != 0 {
                Failure::NotTls
            } else {
                match e {
                    rustls::Error::PeerIncompatible(_) => Failure::Incompatible,
                    // What rustls says when the certificate resolver found nothing.
                    rustls::Error::General(m) if m.contains("certificate") => Failure::UnknownSni,
                    _ => Failure::BadMessage,
                }
            };
            self.event = Some(TlsEvent::Failed(why));
        }
        let conn = match &mut self.stage {
            Stage::Handshake(conn, _) => conn,
            Stage::Records(r) => {
                if let Some(alert) = records::alert_for(e) {
                    r.queue_alert(alert, &mut self.tx);
                }
                return;
            }
            Stage::Gone => return,
        };
        // rustls queued a fatal alert: take what it queued, and only that. A call with nothing
        // queued would go on to deframe, and the handshake messages it still holds point into
        // bytes already given up (a client session fails in the middle of the server's flight).
        // The bound only guards against a loop should that ever change.
        for _ in 0..8 {
            if !conn.common().wants_write() {
                break;
            }
            let UnbufferedStatus { state, .. } = conn.process(&mut []);
            match state {
                Ok(ConnectionState::EncodeTlsData(mut enc)) => encode(&mut enc, &mut self.tx),
                _ => break,
            }
        }
    }

    /// Hands an established session's secrets over to [`records`] and drops rustls, once
    /// rustls holds nothing the record layer would lose: the handshake is done, a write went
    /// through it (so a KeyUpdate it owed the peer is out), no close_notify either way, and no
    /// handshake message half received (`rx` holds no whole record rustls left).
    fn hand_over(&mut self) -> io::Result<()> {
        if self.flags & (DONE | FAILED | PEER_CLOSED | CLOSE_SENT | PLAIN) != DONE
            || !matches!(self.stage, Stage::Handshake(..))
            || records::holds_whole_record(&self.rx)
        {
            return Ok(());
        }
        let Stage::Handshake(conn, caught) = std::mem::replace(&mut self.stage, Stage::Gone) else {
            return Ok(());
        };
        match (*conn)
            .into_kernel()
            .and_then(|(secrets, kernel)| Records::new(secrets, kernel, caught, C::CLIENT))
        {
            Ok(r) => {
                self.stage = Stage::Records(r);
                Ok(())
            }
            Err(e) => {
                self.flags |= FAILED;
                Err(invalid(format!("TLS session hand-over failed: {e}")))
            }
        }
    }

    /// Runs rustls over `work[..*have]`: plaintext to `out[*n..]` (what does not fit to
    /// `plain`), records to send to `tx`. Processed bytes leave the front of `work`.
    fn process(
        &mut self,
        work: &mut [u8],
        have: &mut usize,
        out: &mut [u8],
        n: &mut usize,
    ) -> Result<(), rustls::Error> {
        let (conn, caught) = match &mut self.stage {
            Stage::Handshake(conn, caught) => (conn, caught),
            Stage::Records(r) => {
                if r.read::<C>(work, have, out, n, &mut self.plain, &mut self.tx)? {
                    self.flags |= PEER_CLOSED;
                }
                return Ok(());
            }
            Stage::Gone => return Err(rustls::Error::HandshakeNotComplete),
        };
        // A client's TLS 1.3 traffic secrets are told to `secrets::Capture` during this step.
        let capture = !C::CLIENT && self.flags & DONE == 0;
        if capture {
            secrets::clear();
        }
        let mut at = 0;
        let result = loop {
            let UnbufferedStatus { mut discard, state } = conn.process(&mut work[at..*have]);
            let state = match state {
                Ok(s) => s,
                Err(e) => {
                    at += discard;
                    break Err(e);
                }
            };
            let blocked = match state {
                ConnectionState::ReadTraffic(mut r) => {
                    while let Some(rec) = r.next_record() {
                        let AppDataRecord {
                            discard: d,
                            payload,
                        } = rec?;
                        discard += d;
                        let room = out.len() - *n;
                        let k = payload.len().min(room);
                        out[*n..*n + k].copy_from_slice(&payload[..k]);
                        *n += k;
                        self.plain.extend_from_slice(&payload[k..]);
                    }
                    false
                }
                ConnectionState::EncodeTlsData(mut e) => {
                    encode(&mut e, &mut self.tx);
                    false
                }
                // Queued in `tx`, which is written in order before anything else.
                ConnectionState::TransmitTlsData(t) => {
                    t.done();
                    false
                }
                ConnectionState::PeerClosed | ConnectionState::Closed => {
                    self.flags |= PEER_CLOSED;
                    true
                }
                // Early data is off (`max_early_data_size` 0): rustls refuses it itself.
                ConnectionState::ReadEarlyData(_) => {
                    at += discard;
                    break Err(rustls::Error::General("unexpected early data".into()));
                }
                // Waiting for more bytes, during or after the handshake.
                _ => true,
            };
            at += discard;
            if blocked {
                break Ok(());
            }
        };
        work.copy_within(at..*have, 0);
        *have -= at;
        if capture {
            if let Some(s) = secrets::take(true) {
                *caught = Some(s);
            }
        }
        if self.flags & (DONE | FAILED) == 0 && !conn.common().is_handshaking() {
            self.established();
        }
        result
    }

    fn read(&mut self, sock: &TcpStream, out: &mut [u8], work: &mut [u8]) -> io::Result<usize> {
        if self.flags & PLAIN != 0 {
            return (&*sock).read(out);
        }
        if self.flags & FAILED != 0 {
            return Err(invalid("the TLS session failed"));
        }
        let mut n = self.plain.len().min(out.len());
        out[..n].copy_from_slice(&self.plain[..n]);
        self.plain.drain(..n);
        if self.plain.is_empty() {
            self.plain = Vec::new();
        }
        if n == out.len() || self.flags & PEER_CLOSED != 0 {
            if n == 0 {
                self.flags |= EOF_READ;
            }
            return Ok(n);
        }
        let mut have = self.rx.len();
        work[..have].copy_from_slice(&self.rx);
        self.rx = Vec::new();
        let res = loop {
            if have > 0 {
                if self.flags & STARTED == 0 {
                    self.flags |= STARTED;
                    // Every HTTP method starts with an upper-case letter; a TLS connection
                    // with a handshake record (22).
                    if work[0].is_ascii_uppercase() {
                        self.flags |= PLAIN | FAILED;
                        self.event = Some(TlsEvent::Failed(Failure::PlainHttp));
                        have = 0;
                        break Err(invalid(PlainHttpOnTls));
                    }
                    if work[0] != 22 {
                        self.flags |= NOT_TLS;
                    }
                }
                // The server's flight, tickets, a key update answer: out at once if possible.
                if let Err(e) = self.process_then_flush(sock, work, &mut have, out, &mut n) {
                    break Err(e);
                }
            }
            if n == out.len() || self.flags & PEER_CLOSED != 0 {
                break Ok(n);
            }
            if have == work.len() {
                // Cannot happen: the buffer holds a whole record and more.
                break Err(invalid("TLS record larger than the receive buffer"));
            }
            let want = work.len() - have;
            match (&*sock).read(&mut work[have..]) {
                Ok(0) => {
                    // FIN without close_notify is taken as the end too (a truncation attack
                    // cannot hurt WebSocket, whose frames carry their own lengths).
                    self.flags |= PEER_CLOSED;
                    break Ok(n);
                }
                Ok(k) => {
                    have += k;
                    // A short read drained the socket (Linux); with plaintext in hand the
                    // caller may stop here. Without any, read on until WouldBlock or EOF: an
                    // EOF already signalled by EPOLLRDHUP would not be signalled again.
                    if k < want && n > 0 {
                        if let Err(e) = self.process(work, &mut have, out, &mut n) {
                            self.fail(&e);
                            let _ = self.flush(sock);
                            have = 0;
                            break Err(invalid(e));
                        }
                        let _ = self.flush(sock);
                        break Ok(n);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && n > 0 => break Ok(n),
                Err(e) => break Err(e),
            }
        };
        if have > 0 {
            self.rx = work[..have].to_vec();
        }
        if matches!(res, Ok(0)) {
            self.flags |= EOF_READ;
        }
        res
    }

    /// The client's close_notify (or FIN) came with the bytes the last read returned, and no
    /// read has returned the end yet: the kernel will not signal it again, so the caller must
    /// read once more as if the socket were readable.
    pub fn eof_pending(&self) -> bool {
        self.flags & (PEER_CLOSED | EOF_READ | PLAIN) == PEER_CLOSED
    }

    /// Gets rustls to a state where it may encrypt, writing out what it queued on the way, and
    /// runs `f` with it and `work`: the bytes `f` put in `work`, or why it could not.
    fn with_write_traffic(
        &mut self,
        work: &mut [u8],
        mut f: impl FnMut(&mut WriteTraffic<'_, C::Data>, &mut [u8]) -> Result<usize, EncryptError>,
    ) -> io::Result<Result<usize, EncryptError>> {
        let Stage::Handshake(conn, _) = &mut self.stage else {
            return Err(not_connected());
        };
        for _ in 0..8 {
            // `rx` holds at most the start of one record, so nothing is read here.
            let UnbufferedStatus { state, .. } = conn.process(&mut self.rx);
            match state {
                Ok(ConnectionState::WriteTraffic(mut w)) => return Ok(f(&mut w, work)),
                Ok(ConnectionState::EncodeTlsData(mut e)) => encode(&mut e, &mut self.tx),
                Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
                Ok(_) => return Err(not_connected()),
                Err(e) => {
                    self.fail(&e);
                    return Err(invalid(e));
                }
            }
        }
        Err(not_connected())
    }

    /// Sends `work[..len]` after whatever `tx` holds; what the socket does not take stays in
    /// `tx`.
    fn send(&mut self, sock: &TcpStream, work: &[u8]) -> io::Result<()> {
        if self.tx.is_empty() {
            let mut at = 0;
            while at < work.len() {
                match (&*sock).write(&work[at..]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(k) => at += k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            self.tx.extend_from_slice(&work[at..]);
            return Ok(());
        }
        self.tx.extend_from_slice(work);
        match self.flush(sock) {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
            _ => Ok(()),
        }
    }

    fn write(&mut self, sock: &TcpStream, data: &[u8], work: &mut [u8]) -> io::Result<usize> {
        if self.flags & PLAIN != 0 {
            return (&*sock).write(data);
        }
        if C::CLIENT && self.flags & (DONE | FAILED | CLOSE_SENT) == 0 {
            // Toward a backend: the first write runs the handshake; `WouldBlock` until done.
            self.handshake(sock, work).map_err(|e| {
                if e.kind() == io::ErrorKind::WouldBlock {
                    e
                } else {
                    io::Error::new(e.kind(), BackendTlsFailed(e.to_string()))
                }
            })?;
        }
        if self.flags & DONE == 0 || self.flags & (FAILED | CLOSE_SENT) != 0 {
            return Err(not_connected());
        }
        // Encrypted bytes the socket did not take come first: the caller keeps its bytes and
        // waits for writability, as with a full socket.
        self.flush(sock)?;
        let mut take = data.len().min(work.len() - TX_SLACK);
        let len = if let Stage::Records(r) = &mut self.stage {
            match r.seal_data(&data[..take], work) {
                Ok(len) => len,
                Err(e) => {
                    self.fail(&e);
                    let _ = self.flush(sock);
                    return Err(invalid(e));
                }
            }
        } else {
            let len = loop {
                match self.with_write_traffic(work, |w, out| w.encrypt(&data[..take], out))? {
                    Ok(len) => break len,
                    // More records than TX_SLACK allows for: never with rustls's record sizes.
                    Err(EncryptError::InsufficientSize(_)) if take > 1 => take /= 2,
                    Err(e) => return Err(invalid(e.to_string())),
                }
            };
            if take > 0 {
                self.hand_over()?;
            }
            len
        };
        self.send(sock, &work[..len])?;
        Ok(take)
    }

    /// Processes the `have` bytes of `work` (application bytes to `out` from `n` on), then
    /// writes what that produced as far as the socket takes it. A TLS failure is answered with
    /// its alert and drops what was received (`have` = 0).
    fn process_then_flush(
        &mut self,
        sock: &TcpStream,
        work: &mut [u8],
        have: &mut usize,
        out: &mut [u8],
        n: &mut usize,
    ) -> io::Result<()> {
        if let Err(e) = self.process(work, have, out, n) {
            self.fail(&e);
            let _ = self.flush(sock);
            *have = 0;
            return Err(invalid(e));
        }
        match self.flush(sock) {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
            _ => Ok(()),
        }
    }

    /// Runs a client handshake as far as the socket allows: Ok once it is complete,
    /// `WouldBlock` while it waits for the backend, an error when it failed (the alert is sent).
    fn handshake(&mut self, sock: &TcpStream, work: &mut [u8]) -> io::Result<()> {
        let mut have = self.rx.len();
        work[..have].copy_from_slice(&self.rx);
        self.rx = Vec::new();
        // Application bytes the backend sends with its last flight wait in `plain`.
        let mut n = 0;
        let res = loop {
            if let Err(e) = self.process_then_flush(sock, work, &mut have, &mut [], &mut n) {
                break Err(e);
            }
            if self.flags & DONE != 0 {
                break Ok(());
            }
            if self.flags & PEER_CLOSED != 0 {
                break Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the backend closed during the TLS handshake",
                ));
            }
            if have == work.len() {
                break Err(invalid("TLS record larger than the receive buffer"));
            }
            match (&*sock).read(&mut work[have..]) {
                Ok(0) => self.flags |= PEER_CLOSED,
                Ok(k) => have += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        if have > 0 {
            self.rx = work[..have].to_vec();
        }
        res
    }

    /// True while a client session's handshake is under way (a readable backend socket then
    /// lets the write that waits for it go on).
    pub fn handshaking(&self) -> bool {
        C::CLIENT && self.flags & (DONE | FAILED) == 0
    }

    fn shutdown_write(&mut self, sock: &TcpStream, work: &mut [u8]) -> io::Result<()> {
        if self.flags & DONE != 0 && self.flags & (FAILED | CLOSE_SENT | PLAIN) == 0 {
            self.flags |= CLOSE_SENT;
            let len = match &mut self.stage {
                Stage::Records(r) => r.seal_alert(0, work).map_err(invalid)?,
                _ => self
                    .with_write_traffic(work, |w, out| w.queue_close_notify(out))?
                    .map_err(|e| invalid(e.to_string()))?,
            };
            self.send(sock, &work[..len])?;
        }
        self.flags |= WANT_FIN;
        match self.flush(sock) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            r => r,
        }
    }

    /// Records (or a FIN) wait for the socket to take them: see [`Transport::unsent`].
    pub fn unsent(&self) -> bool {
        !self.tx.is_empty() || self.flags & (WANT_FIN | FIN_SENT) == WANT_FIN
    }

    /// Writes what `tx` holds; then FIN if it was asked for. `WouldBlock` while bytes remain.
    pub fn flush(&mut self, sock: &TcpStream) -> io::Result<()> {
        while !self.tx.is_empty() {
            match (&*sock).write(&self.tx) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(k) => {
                    self.tx.drain(..k);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.tx = Vec::new();
        if self.flags & (WANT_FIN | FIN_SENT) == WANT_FIN {
            self.flags |= FIN_SENT;
            crate::sys::sock::shutdown_write(sock)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a TLS client adds to an idle tunnel before rustls's heap state (keys, the traffic
    /// state): see the RSS test in tests/tls.rs for the whole.
    #[test]
    fn an_idle_session_holds_no_buffer() {
        let size = std::mem::size_of::<TlsSession>();
        eprintln!(
            "TlsSession {size} B; during the handshake a boxed UnbufferedServerConnection of {} B; \
             after it, rustls's KernelConnection (TLS 1.3) {} B",
            std::mem::size_of::<UnbufferedServerConnection>(),
            std::mem::size_of::<rustls::kernel::KernelConnection<rustls::server::ServerConnectionData>>()
        );
        assert!(size <= 320, "TlsSession grew to {size} B");
    }
}
