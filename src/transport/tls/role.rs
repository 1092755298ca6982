//! The side of the handshake a [`super::TlsSession`] plays: the server, for a client of a TLS
//! listener, or the client, toward a TLS backend. Everything else about a session is the same.

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::UnbufferedStatus;
use rustls::CommonState;

/// A rustls unbuffered connection of one side.
pub trait Role {
    type Data;
    /// True for the client side (toward a backend): the first write runs the handshake, and a
    /// failure is told by the backend's certificate.
    const CLIENT: bool;
    /// rustls's `process_tls_records`.
    fn process<'c, 'i>(&'c mut self, buf: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data>;
    /// The negotiated version, suite, handshake kind.
    fn common(&self) -> &CommonState;
}

impl Role for UnbufferedServerConnection {
    type Data = ServerConnectionData;
    const CLIENT: bool = false;

    fn process<'c, 'i>(&'c mut self, buf: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(buf)
    }

    fn common(&self) -> &CommonState {
        self
    }
}

impl Role for UnbufferedClientConnection {
    type Data = ClientConnectionData;
    const CLIENT: bool = true;

    fn process<'c, 'i>(&'c mut self, buf: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(buf)
    }

    fn common(&self) -> &CommonState {
        self
    }
}
