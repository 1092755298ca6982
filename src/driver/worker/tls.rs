//! The worker's side of TLS toward backends: a client session per connection whose route's
//! backends speak TLS, kept beside the slab like the client sessions, and what a handshake's
//! end is counted and logged as.

use super::Worker;
use crate::driver::stats::Counters;
use crate::transport::tls::{Failure, TlsEvent, TlsSession};
use rustls::client::UnbufferedClientConnection;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;

/// A TLS backend connection's session, and the backend it is with (for the log line).
pub(super) struct BackendTls {
    pub session: TlsSession<UnbufferedClientConnection>,
    pub addr: SocketAddr,
}

pub(super) type BackendSessions = HashMap<usize, Box<BackendTls>>;

/// What the operator should do about a failed handshake.
fn hint(f: Failure) -> &'static str {
    match f {
        Failure::Untrusted => {
            "; set backend_ca in this [[route]] to the CA file that signed the backend's certificate"
        }
        Failure::NameMismatch => {
            "; set backend_server_name in this [[route]] to a name the backend's certificate holds"
        }
        Failure::Expired => "; renew the backend's certificate (or check the clocks)",
        _ => "",
    }
}

/// Counts how connection `b`'s handshake ended, if it just did; a failure is logged with the
/// backend and the reason (`res`: the operation that saw it).
pub(super) fn report(b: &mut BackendTls, counters: &mut Counters, res: &io::Result<usize>) {
    let Some(ev) = b.session.take_event() else {
        return;
    };
    counters.count_backend_tls(ev);
    if let TlsEvent::Failed(f) = ev {
        let why = match res {
            Err(e) => e.to_string(),
            Ok(_) => "the handshake failed".to_owned(),
        };
        eprintln!(
            "wsplice: backend {}: {why}{} (the route's next backend is tried; with none left the client gets 502)",
            b.addr,
            hint(f)
        );
    }
}

/// Connection `key`'s backend socket is closed: its session goes, and a handshake it never
/// finished is counted as incomplete.
pub(super) fn drop_session(map: &mut BackendSessions, counters: &mut Counters, key: usize) {
    if map.is_empty() {
        return;
    }
    if let Some(mut b) = map.remove(&key) {
        if let Some(ev) = b.session.final_event() {
            counters.count_backend_tls(ev);
            if ev == TlsEvent::Failed(Failure::Incomplete) {
                eprintln!(
                    "wsplice: backend {}: TLS handshake did not complete (the backend closed, or timeouts.handshake ran out)",
                    b.addr
                );
            }
        }
    }
}

impl Worker {
    /// [`crate::core::conn::Step::StartTls`]: a session for connection `key`'s new backend
    /// socket. Without one (no settings for the route, a bad name) the socket is closed, so
    /// the head fails instead of going out in plaintext.
    pub(super) fn start_backend_tls(
        &mut self,
        key: usize,
        route: u32,
        backend: SocketAddr,
        d: &mut impl super::Driver,
    ) {
        drop_session(&mut self.backend_tls, &mut self.counters, key);
        let made = self
            .params
            .backend_tls
            .get(route)
            .map(|t| TlsSession::client(t.config.clone(), t.name_for(backend)));
        let Some(super::Slot::Live(e)) = self.conns.get_mut(key) else {
            return;
        };
        match made {
            Some(Ok(session)) if e.backend.is_some() => {
                self.backend_tls.insert(
                    key,
                    Box::new(BackendTls {
                        session,
                        addr: backend,
                    }),
                );
            }
            other => {
                let why = match other {
                    Some(Err(err)) => err.to_string(),
                    Some(Ok(_)) => "its socket is gone".to_owned(),
                    None => "no TLS settings for its route (reloaded meanwhile?)".to_owned(),
                };
                eprintln!(
                    "wsplice: worker {}: backend {backend}: cannot start TLS: {why}",
                    self.id
                );
                if let Some(old) = e.backend.take() {
                    d.close(key, crate::core::relay::Side::Backend, old.into());
                }
            }
        }
    }
}
