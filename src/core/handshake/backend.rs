//! The backend half of the handshake: the connect completing or failing, our request head
//! written, the backend's answer read and checked, the end of a forwarded answer.

use super::*;

impl Handshake {
    /// Like [`Handshake::take_failed`], and counts the failure for passive ejection.
    pub fn take_failed_noted(&mut self, s: &Settings) -> Option<SocketAddr> {
        let b = self.failed.take()?;
        let route = s.routes.get(self.route);
        if route.backends.get(self.failed_index) == Some(&b) {
            route.note_backend(self.failed_index, false);
        }
        Some(b)
    }

    /// The current attempt failed.
    pub(super) fn mark_failed(&mut self) {
        self.failed = self.backend;
        self.failed_index = self.current;
    }

    /// How many bytes the driver may read from the backend now.
    pub fn backend_read_limit(&self, s: &Settings) -> usize {
        match self.state {
            State::ReadAnswer => s.max_head_bytes.saturating_sub(self.answer.len()).max(1),
            State::ForwardAnswer { .. } => (s.max_head_bytes + MAX_FORWARD_BODY)
                .saturating_sub(self.answer.len())
                .max(1),
            // No backend yet, or its head is not sent; after the 101 the relay reads.
            State::ReadProxy
            | State::ReadHead
            | State::Connecting
            | State::SendHead
            | State::Upgraded
            | State::Forward
            | State::Done => 0,
        }
    }

    /// The next backend of the route, or the answer once each was tried.
    pub(super) fn connect_next(&mut self, s: &Settings, now: Instant) -> Action {
        let r = s.routes.get(self.route);
        if self.tried >= r.backends.len() {
            return self.fail(match self.last_failure {
                Some(ConnectFailure::Timeout) => Reject::BackendTimeout,
                Some(ConnectFailure::NoDescriptors) => Reject::Overloaded,
                Some(ConnectFailure::Reset | ConnectFailure::Tls) => {
                    Reject::BackendFailed(BackendFailure::Reset)
                }
                _ => Reject::BackendFailed(BackendFailure::Refused),
            });
        }
        // Down, ejected and drained backends are skipped; with none left, a 502.
        let Some((k, i)) = r.next_to_try(self.first_backend, self.tried) else {
            self.tried = r.backends.len();
            return self.connect_next(s, now);
        };
        let addr = r.backends[i];
        self.current = i;
        self.tried = k + 1;
        self.backend = Some(addr);
        self.state = State::Connecting;
        self.deadline = now + s.timeouts.connect;
        Action::Connect(addr)
    }

    /// The backend connect completed.
    pub fn handle_connected(&mut self, s: &Settings, now: Instant) -> Action {
        match self.state {
            State::Connecting => {
                self.state = State::SendHead;
                self.written = 0;
                // The answer must come within the handshake timeout of the connect.
                self.deadline = now + s.timeouts.handshake;
                Action::SendHead
            }
            // A late completion of an attempt we already gave up on (timeout) or a driver event
            // after the session ended: nothing to do.
            State::ReadProxy
            | State::ReadHead
            | State::SendHead
            | State::ReadAnswer
            | State::ForwardAnswer { .. }
            | State::Upgraded
            | State::Forward
            | State::Done => Action::Wait,
        }
    }

    /// The backend connect failed; try the next backend or answer.
    pub fn handle_connect_failed(
        &mut self,
        s: &Settings,
        now: Instant,
        why: ConnectFailure,
    ) -> Action {
        match self.state {
            State::Connecting => {
                self.last_failure = Some(why);
                self.mark_failed();
                if why == ConnectFailure::NoDescriptors {
                    return self.fail(Reject::Overloaded);
                }
                self.connect_next(s, now)
            }
            // A TLS backend that failed its handshake got nothing of the request: like a
            // refused connect, the next backend may serve.
            State::SendHead if why == ConnectFailure::Tls && self.written == 0 => {
                self.last_failure = Some(why);
                self.failed = self.backend;
                self.connect_next(s, now)
            }
            // After the connect, a socket error is a reset of an established backend.
            State::SendHead | State::ReadAnswer => {
                self.fail(Reject::BackendFailed(BackendFailure::Reset))
            }
            State::ForwardAnswer { .. } => {
                self.state = State::Done;
                Action::Answer
            }
            // No backend socket exists before the head; after the tunnel the driver owns it.
            State::ReadProxy | State::ReadHead | State::Upgraded | State::Forward | State::Done => {
                Action::Wait
            }
        }
    }

    /// `n` bytes of [`Handshake::backend_output`] were written.
    pub fn handle_backend_written(&mut self, n: usize) -> Action {
        match self.state {
            State::SendHead => {
                self.written += n;
                if self.written >= self.to_backend.len() {
                    self.state = State::ReadAnswer;
                    self.to_backend = Vec::new();
                    self.written = 0;
                    self.answer.clear();
                    self.searched = 0;
                    Action::Wait
                } else {
                    Action::SendHead
                }
            }
            // Only the head is written through the session; later writes are the relay's.
            State::ReadProxy
            | State::ReadHead
            | State::Connecting
            | State::ReadAnswer
            | State::ForwardAnswer { .. }
            | State::Upgraded
            | State::Forward
            | State::Done => Action::Wait,
        }
    }

    /// Bytes arrived from the backend.
    pub fn handle_backend_data(&mut self, s: &Settings, data: &[u8]) -> Action {
        match self.state {
            State::ReadAnswer => {
                let from = self.answer.len();
                self.answer.extend_from_slice(data);
                let Some(end) = find_head_end(&self.answer, from.max(self.searched)) else {
                    self.searched = self.answer.len();
                    if self.answer.len() >= s.max_head_bytes {
                        return self.fail(Reject::BackendFailed(BackendFailure::HeadTooLarge));
                    }
                    return Action::Wait;
                };
                let mut headers = vec![httparse::EMPTY_HEADER; s.max_headers];
                match validate_answer(&self.answer[..end], &mut headers) {
                    Ok(Answer::Switch) => {
                        s.routes.get(self.route).note_backend(self.current, true);
                        self.state = State::Upgraded;
                        Action::Relay
                    }
                    Ok(Answer::Other { body, .. }) => {
                        s.routes.get(self.route).note_backend(self.current, true);
                        self.state = State::ForwardAnswer {
                            body,
                            head_len: end,
                        };
                        self.check_forward_done(s)
                    }
                    Err(r) => self.fail(r),
                }
            }
            State::ForwardAnswer { .. } => {
                self.answer.extend_from_slice(data);
                self.check_forward_done(s)
            }
            // The driver reads the backend only when `backend_read_limit` allows it, and that
            // match names every state: in the others no backend bytes come.
            _ => Action::Wait,
        }
    }

    fn check_forward_done(&mut self, s: &Settings) -> Action {
        let State::ForwardAnswer { body, head_len } = self.state else {
            return Action::Wait;
        };
        let have = self.answer.len() - head_len;
        let done = match body {
            Body::None => {
                self.answer.truncate(head_len);
                true
            }
            Body::Length(n) => {
                if have as u64 >= n {
                    self.answer.truncate(head_len + n as usize);
                    true
                } else {
                    false
                }
            }
            Body::Chunked => self.answer[head_len..].ends_with(b"0\r\n\r\n"),
            Body::UntilClose => false,
        };
        if done || self.answer.len() >= s.max_head_bytes + MAX_FORWARD_BODY {
            self.answer.truncate(s.max_head_bytes + MAX_FORWARD_BODY);
            self.state = State::Done;
            Action::Answer
        } else {
            Action::Wait
        }
    }

    /// The backend closed its side.
    pub fn handle_backend_eof(&mut self) -> Action {
        match self.state {
            State::SendHead | State::ReadAnswer => {
                self.fail(Reject::BackendFailed(BackendFailure::ClosedEarly))
            }
            State::ForwardAnswer { .. } => {
                self.state = State::Done;
                Action::Answer
            }
            // No backend bytes are read in these states.
            State::ReadProxy
            | State::ReadHead
            | State::Connecting
            | State::Upgraded
            | State::Forward
            | State::Done => Action::Wait,
        }
    }
}
