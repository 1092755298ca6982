//! A session's socket, the session and the worker's buffers put together for one operation:
//! the [`Transport`] the relay reads and writes.

use super::{Role, TlsSession};
use crate::transport::Transport;
use rustls::server::UnbufferedServerConnection;
use std::io;
use std::net::TcpStream;
use std::os::fd::{AsFd, BorrowedFd};

/// The largest record on the wire: 16 KiB of plaintext, the expansion TLS 1.2 allows, and the
/// header.
pub(super) const MAX_RECORD: usize = 5 + (1 << 14) + 2048;
/// Room for the record overhead of one `write` (at most four 16 KiB records of a 64 KiB chunk).
pub(super) const TX_SLACK: usize = 1024;

/// The worker's buffers every session borrows for one operation. Allocated when a worker
/// accepts its first TLS client.
pub struct TlsBuffers {
    pub(super) rx: Box<[u8]>,
    pub(super) tx: Box<[u8]>,
}

impl TlsBuffers {
    /// Buffers for reads and writes of up to `chunk` application bytes.
    pub fn new(chunk: usize) -> TlsBuffers {
        TlsBuffers {
            rx: vec![0u8; chunk + MAX_RECORD].into_boxed_slice(),
            tx: vec![0u8; chunk + TX_SLACK].into_boxed_slice(),
        }
    }
}

/// A TLS client's socket, session and the worker's buffers, for one operation.
pub struct TlsIo<'a, C: Role = UnbufferedServerConnection> {
    pub sock: &'a TcpStream,
    pub session: &'a mut TlsSession<C>,
    pub bufs: &'a mut TlsBuffers,
}

impl<C: Role> AsFd for TlsIo<'_, C> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

impl<C: Role> Transport for TlsIo<'_, C> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.session.read(self.sock, buf, &mut self.bufs.rx)
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.session.write(self.sock, buf, &mut self.bufs.tx)
    }

    fn shutdown_write(&mut self) -> io::Result<()> {
        self.session.shutdown_write(self.sock, &mut self.bufs.tx)
    }

    fn can_splice(&self) -> bool {
        false
    }

    fn flush(&mut self) -> io::Result<()> {
        self.session.flush(self.sock)
    }

    fn unsent(&self) -> bool {
        self.session.unsent()
    }
}
