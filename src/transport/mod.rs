//! A connection's byte stream as the relay sees it: a plain socket, or a TLS session
//! ([`tls`]), behind one small interface. The core asks [`Transport::can_splice`] once, when a
//! connection is accepted: only a stream whose socket bytes are its application bytes may
//! splice.
//!
//! A TLS session is driven entirely from inside its transport: a `read` before the handshake
//! is done reads ClientHello bytes, writes the server's flight and returns `WouldBlock` until
//! application bytes arrive, so the upgrade stage simply waits for its request head, under the
//! same handshake timeout, as on a plain socket. What the core must know of TLS is that the
//! stream cannot splice and (one error, [`crate::core::conn::PlainHttpOnTls`]) that a client
//! spoke plain HTTP to it. kTLS, which would let TLS tunnels splice, would be one more
//! transport behind this seam: once a session is established, rustls hands its traffic secrets
//! to `tls/records.rs`, which frames and protects the records itself; the same secrets (and the
//! same KeyUpdate handling) are what the kernel would be given instead.

pub mod tls;

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsFd;

/// Non-blocking reads and writes of application bytes, FIN, and whether splice(2) may move the
/// socket's bytes directly.
pub trait Transport: AsFd {
    /// Reads application bytes. A return shorter than `buf` means the socket is drained (the
    /// relay waits for the next readiness edge), as for a plain socket.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes application bytes; the count is of `buf`'s bytes taken.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize>;
    /// Sends FIN (after any bytes the transport still holds).
    fn shutdown_write(&mut self) -> io::Result<()>;
    /// True when the socket carries the application bytes unframed (no TLS records).
    fn can_splice(&self) -> bool;
    /// Writes out what the transport produced on its own and the socket did not take yet (TLS
    /// records: the rest of a record, handshake messages, alerts, close_notify then FIN).
    /// Called when the socket becomes writable; a plain socket holds nothing.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// True while the transport holds bytes (or a FIN) the socket did not take yet, which
    /// [`Transport::flush`] writes once it is writable: a driver that is not told of every
    /// writable edge (io_uring) then watches for one.
    fn unsent(&self) -> bool {
        false
    }
}

/// A plain TCP socket.
impl Transport for TcpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Read::read(self, buf)
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Write::write(self, buf)
    }

    fn shutdown_write(&mut self) -> io::Result<()> {
        crate::sys::sock::shutdown_write(&*self)
    }

    fn can_splice(&self) -> bool {
        true
    }
}
