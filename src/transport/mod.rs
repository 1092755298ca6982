//! A connection's byte stream as the relay sees it: a plain socket today, a TLS session next,
//! behind one small interface. The core asks [`Transport::can_splice`] once, when a connection
//! is accepted: only a stream whose socket bytes are its application bytes may splice.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsFd;

/// Non-blocking reads and writes of application bytes, FIN, and whether splice(2) may move the
/// socket's bytes directly.
pub trait Transport: AsFd {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    fn write(&mut self, buf: &[u8]) -> io::Result<usize>;
    /// Sends FIN (after any bytes the transport still holds).
    fn shutdown_write(&mut self) -> io::Result<()>;
    /// True when the socket carries the application bytes unframed (no TLS records).
    fn can_splice(&self) -> bool;
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
