//! Accepting: which listener may be accepted from, what an accept failure means, and a new
//! client's connection (its TLS session, its admission, its slab entry).

use super::*;

impl Worker {
    /// The listener the driver should accept from now, if accepting is allowed.
    pub fn listener(&self, i: usize) -> Option<&TcpListener> {
        if self.accept_paused_until.is_some() || self.draining.is_some() {
            return None;
        }
        self.listeners.get(i)?.as_ref().map(|(_, l)| l)
    }

    pub fn listener_count(&self) -> usize {
        self.listeners.len()
    }

    /// Connection `key`'s socket on `side`, if it is open (a completion driver re-submits a
    /// receive that found no buffer).
    pub fn socket(&self, key: usize, side: Side) -> Option<BorrowedFd<'_>> {
        let Some(Slot::Live(e)) = self.conns.get(key) else {
            return None;
        };
        match side {
            Side::Client => Some(e.client.as_fd()),
            Side::Backend => e.backend.as_ref().map(|b| b.as_fd()),
        }
    }

    /// True once: every listener should be tried (edge-triggered: clients may already wait).
    pub fn take_accept_wanted(&mut self) -> bool {
        std::mem::take(&mut self.accept_wanted)
    }

    /// Accepts from listener `i` until its backlog is empty or the worker stops accepting (a
    /// driver told that the listener is readable).
    pub fn accept_all(&mut self, i: usize, d: &mut impl Driver) {
        loop {
            let Some(l) = self.listener(i) else { return };
            match crate::sys::sock::accept_nonblocking(l) {
                Ok((s, peer)) => self.accepted(i, s, peer, d),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if !self.accept_failed(&e) {
                        return;
                    }
                }
            }
        }
    }

    /// An accept failed. Returns true when the driver may try the next client.
    pub fn accept_failed(&mut self, e: &io::Error) -> bool {
        self.changed = true;
        if is_no_fd(e) {
            // Out of descriptors: pending clients stay in the backlog. Retrying at once would
            // spin; wait a little or until one of ours closes.
            self.counters.accept_emfile += 1;
            self.accept_paused_until = Some(self.time.now + ACCEPT_PAUSE);
            return false;
        }
        // ECONNABORTED and friends concern one client only.
        true
    }

    /// A client was accepted on listener `i`.
    pub fn accepted(&mut self, i: usize, stream: TcpStream, peer: SocketAddr, d: &mut impl Driver) {
        self.counters.accepted += 1;
        self.changed = true;
        let Some(Some((configured, _))) = self.listeners.get(i) else {
            return;
        };
        let configured = *configured;
        let _ = if self.listeners_tuned {
            tune_buffers(&stream, &self.params.tuning)
        } else {
            tune(&stream, &self.params.tuning)
        };
        let local = if self.params.send_proxy {
            stream.local_addr().unwrap_or(configured)
        } else {
            configured
        };
        let session = match &self.params.tls {
            Some(tls) if self.params.tls_listen.contains(&configured) => {
                match TlsSession::new(tls.server.clone()) {
                    Ok(s) => Some(Box::new(s)),
                    Err(e) => {
                        eprintln!("wsplice: worker {}: TLS session: {e}", self.id);
                        return;
                    }
                }
            }
            _ => None,
        };
        let mut full = !self.total.acquire();
        // The memory budget is asked second: a slot taken for nothing is given straight back.
        if !full && !self.pool.used.admit(self.params.memory.as_ref()) {
            self.total.release();
            full = true;
            self.refusing_for_memory = true;
        }
        let accept = Accept {
            peer,
            local,
            expect_proxy: self.params.proxy_listen.contains(&configured),
            full,
            log: self.log.is_some(),
            splice_ok: session.is_none() && stream.can_splice(),
            tls: session.is_some(),
            redirect: self
                .params
                .redirect_listen
                .contains(&configured)
                .then(|| self.https_port()),
        };
        let conn = Conn::accept(accept, &self.time, self.params.settings.clone());
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if d.watch(stream.as_fd(), Watch::Conn(key, Side::Client))
            .is_err()
        {
            if !full {
                self.total.release();
                self.pool.used.ended(false);
            }
            self.refusing_for_memory = false;
            return;
        }
        let e = Entry {
            client: stream,
            backend: None,
            conn,
        };
        entry.insert(Slot::Live(e));
        if let Some(s) = session {
            self.tls.insert(key, s);
        }
        self.drive(key, d);
        self.refusing_for_memory = false;
    }

    /// The port redirect listeners send clients to: `[tls] redirect_port`, else the bound
    /// port of the first TLS listener (its configured one may be 0), else 443.
    fn https_port(&self) -> u16 {
        let tls = &self.params.tls_listen;
        self.params.redirect_port.unwrap_or_else(|| {
            self.listeners
                .iter()
                .flatten()
                .find(|(configured, _)| tls.contains(configured))
                .and_then(|(_, l)| l.local_addr().ok())
                .map_or(443, |a| a.port())
        })
    }
}
