//! The backend's side of an exchange: the request body read from the client, the answer head and
//! body read from the backend, and how a backend failure or early end is answered.

use super::*;

impl Exchange {
    /// Client bytes: the request body, and what comes after it.
    pub(super) fn on_body(&mut self, data: &[u8]) {
        match self.req.feed(data, &mut self.up) {
            Ok(used) => {
                self.up_bytes += used as u64;
                if used < data.len() {
                    self.next.extend_from_slice(&data[used..]);
                }
            }
            Err(_) if self.answer.is_none() => {
                self.ending = Some(Ending::Refuse(Reject::BadRequest(BadRequest::Body)));
            }
            Err(_) => self.ending = Some(Ending::Abort(EndReason::ClientLeft)),
        }
    }

    /// The backend's connection failed (reset, or an error writing or reading).
    pub(super) fn backend_broke(&mut self, why: BackendFailure, t: &Time) {
        if self.answer.is_some() {
            self.ending = Some(Ending::Abort(EndReason::Aborted));
            return;
        }
        // A pooled connection the backend closed while we picked it up: the request never
        // reached it. Safe to send again on a new one when nothing of the body is gone and
        // either the method is idempotent or not even the head got through.
        let replayable = self.body_sent == 0 && (self.idempotent || self.head_pos == 0);
        if self.reused && !self.response_byte && !self.retried && replayable {
            self.retried = true;
            self.fresh = true;
            self.link = Link::Want;
            self.deadline = t.now + self.settings.timeouts.connect;
            self.build_head();
            return;
        }
        self.backend_failed();
        self.ending = Some(Ending::Refuse(Reject::BackendFailed(why)));
    }

    pub(super) fn backend_eof(&mut self, t: &Time) {
        match &mut self.answer {
            None => self.backend_broke(BackendFailure::ClosedEarly, t),
            Some(a) => {
                self.reusable = false;
                if a.finish(&mut self.down).is_err() {
                    // Shorter than it said: the client sees the body end early.
                    self.ending = Some(Ending::Abort(EndReason::Aborted));
                }
            }
        }
    }

    /// Backend bytes: interim heads, the final head, the body.
    pub(super) fn on_answer(&mut self, data: &[u8]) {
        self.response_byte = true;
        // Once the backend answered, the request cannot be sent again.
        self.template = Vec::new();
        let mut pending = Cow::Borrowed(data);
        loop {
            if let Some(a) = &mut self.answer {
                match a.feed(&pending, &mut self.down) {
                    Ok(used) if used < pending.len() => {
                        // More than the answer's framing holds: never reuse this connection.
                        self.reusable = false;
                    }
                    Ok(_) => {}
                    Err(_) => self.ending = Some(Ending::Abort(EndReason::Aborted)),
                }
                return;
            }
            let from = self.answer_head.len();
            self.answer_head.extend_from_slice(&pending);
            let Some(end) = find_head_end(&self.answer_head, from.max(self.searched)) else {
                self.searched = self.answer_head.len();
                if self.answer_head.len() >= self.settings.max_head_bytes {
                    self.bad_answer(BackendFailure::HeadTooLarge);
                }
                return;
            };
            let rest = self.answer_head.split_off(end);
            let head = std::mem::take(&mut self.answer_head);
            self.searched = 0;
            let route = self.settings.routes.get(self.route);
            let cookie = route.set_cookie(self.pick, self.backend_index);
            let close = self.client_close || !self.req.is_done();
            let extra = Extra {
                close,
                set_cookie: cookie.as_deref(),
                // An HTTP/1.0 client reads a body that ends with the connection as such.
                rechunk: !self.http10,
            };
            let max_headers = self.settings.max_headers;
            let at = self.down.len();
            match rewrite_response(&head, self.head_method, max_headers, extra, &mut self.down) {
                Err(_) => {
                    self.bad_answer(BackendFailure::BadAnswer);
                    return;
                }
                // HTTP/1.0 has no interim answers (RFC 9110 §15.2): not relayed to such a client.
                Ok(r) if r.interim && self.http10 => self.down.truncate(at),
                Ok(r) if r.interim => {}
                // Asked in HTTP/1.0, answered chunked: the client could not read it.
                Ok(r) if self.http10 && r.body == crate::core::validate::Body::Chunked => {
                    self.down.truncate(at);
                    self.bad_answer(BackendFailure::BadAnswer);
                    return;
                }
                Ok(r) => {
                    route.note_backend(self.backend_index, true);
                    self.status = r.status;
                    self.reusable = r.reusable;
                    self.close_client = close;
                    // A body that ends when the backend closes goes on chunked: the client's
                    // connection stays open after it (uwsgi and HTTP/1.0 backends answer so).
                    self.answer = Some(
                        if r.body == crate::core::validate::Body::UntilClose && !self.http10 {
                            BodyReader::rechunking()
                        } else {
                            BodyReader::new(r.body)
                        },
                    );
                }
            }
            if rest.is_empty() {
                return;
            }
            pending = Cow::Owned(rest);
        }
    }

    pub(super) fn bad_answer(&mut self, why: BackendFailure) {
        self.backend_failed();
        self.ending = Some(Ending::Refuse(Reject::BackendFailed(why)));
    }
}
