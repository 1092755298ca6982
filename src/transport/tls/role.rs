//! The side of the handshake a [`super::TlsSession`] plays: the server, for a client of a TLS
//! listener, or the client, toward a TLS backend. Everything else about a session is the same.

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::kernel::KernelConnection;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::UnbufferedStatus;
use rustls::{CommonState, Error, ExtractedSecrets};

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
    /// rustls's `dangerous_into_kernel_connection`: the traffic secrets and what derives the
    /// next ones, once the handshake is done and rustls has nothing left to send.
    fn into_kernel(self) -> Result<(ExtractedSecrets, KernelConnection<Self::Data>), Error>;
    /// A NewSessionTicket after the handshake (TLS 1.3): a backend's is kept for resumption; a
    /// client never sends one.
    fn take_ticket(k: &mut KernelConnection<Self::Data>, body: &[u8]) -> Result<(), Error>;
}

/// The methods both connection types have under the same names (rustls gives them no common
/// trait).
macro_rules! same_for_both_roles {
    () => {
        fn process<'c, 'i>(
            &'c mut self,
            buf: &'i mut [u8],
        ) -> UnbufferedStatus<'c, 'i, Self::Data> {
            self.process_tls_records(buf)
        }

        fn common(&self) -> &CommonState {
            self
        }

        fn into_kernel(self) -> Result<(ExtractedSecrets, KernelConnection<Self::Data>), Error> {
            self.dangerous_into_kernel_connection()
        }
    };
}

impl Role for UnbufferedServerConnection {
    type Data = ServerConnectionData;
    const CLIENT: bool = false;

    same_for_both_roles!();

    fn take_ticket(_: &mut KernelConnection<Self::Data>, _: &[u8]) -> Result<(), Error> {
        Err(Error::InappropriateHandshakeMessage {
            expect_types: vec![rustls::HandshakeType::KeyUpdate],
            got_type: rustls::HandshakeType::NewSessionTicket,
        })
    }
}

impl Role for UnbufferedClientConnection {
    type Data = ClientConnectionData;
    const CLIENT: bool = true;

    same_for_both_roles!();

    fn take_ticket(k: &mut KernelConnection<Self::Data>, body: &[u8]) -> Result<(), Error> {
        k.handle_new_session_ticket(body)
    }
}
