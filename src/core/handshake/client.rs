//! The client half of the handshake: a PROXY header, the request head read, validated and
//! routed, and the head written fresh for the backend.

use super::*;

impl Handshake {
    /// Bytes arrived from the client.
    pub fn handle_client_data(&mut self, s: &Settings, now: Instant, data: &[u8]) -> Action {
        if self.state == State::ReadProxy {
            return self.on_proxy_data(s, now, data);
        }
        if self.state != State::ReadHead {
            // The driver reads only in ReadHead; anything else is a driver bug we tolerate by
            // holding the bytes (bounded like the head) for the backend, after the 101.
            if self.held.len() + data.len() > s.max_head_bytes {
                return self.fail(Reject::HeadTooLarge);
            }
            self.held.extend_from_slice(data);
            return Action::Wait;
        }
        if self.idle {
            // The next request began: it has the handshake timeout, like a first one.
            self.idle = false;
            self.deadline = now + s.timeouts.handshake;
        }
        let from = self.head.len();
        self.head.extend_from_slice(data);
        match find_head_end(&self.head, from.max(self.searched)) {
            Some(end) => {
                let extra = self.head.split_off(end);
                self.held = extra;
                self.on_head(s, now)
            }
            None => {
                self.searched = self.head.len();
                if self.head.len() >= s.max_head_bytes {
                    // The buffer is full and still no blank line.
                    if let Err(r) = precheck_partial(&self.head) {
                        return self.fail(r);
                    }
                    return self.fail(overflow_reject(&self.head));
                }
                // Refuse obviously broken framing early rather than waiting for the timeout.
                match precheck_partial(&self.head) {
                    Err(r) => self.fail(r),
                    Ok(()) => Action::Wait,
                }
            }
        }
    }

    fn on_proxy_data(&mut self, s: &Settings, now: Instant, data: &[u8]) -> Action {
        let bad = Reject::BadRequest(BadRequest::ProxyHeader);
        if !in_nets(&s.proxy_trusted, self.peer.ip()) {
            // Only a trusted load balancer may tell us who the client is.
            return self.fail(bad);
        }
        self.head.extend_from_slice(data);
        match proxy_proto::parse(&self.head) {
            Ok(ProxyParse::Incomplete) => Action::Wait,
            Err(_) => self.fail(bad),
            Ok(ProxyParse::Done {
                header_len,
                source,
                dest,
            }) => {
                // LOCAL / UNKNOWN (health checks): the connection's own addresses stand.
                if let Some(src) = source {
                    self.client = src;
                }
                if let Some(d) = dest {
                    self.local = d;
                }
                let rest = self.head.split_off(header_len);
                self.head.clear();
                self.state = State::ReadHead;
                if rest.is_empty() {
                    Action::Wait
                } else {
                    self.handle_client_data(s, now, &rest)
                }
            }
        }
    }

    fn on_head(&mut self, s: &Settings, now: Instant) -> Action {
        if let Some(port) = self.redirect {
            return match crate::core::redirect::answer(&self.head, s, port) {
                Ok((_, out)) => {
                    self.answer = out;
                    self.head = Vec::new();
                    self.state = State::Done;
                    Action::Answer
                }
                Err(r) => self.fail(r),
            };
        }
        match self.accept_head(s) {
            Ok(Accepted::Upgrade(out)) => {
                self.to_backend = out;
                self.head = Vec::new();
                self.state = State::Connecting;
                self.tried = 0;
                self.connect_next(s, now)
            }
            Ok(Accepted::Plain(mut p)) => {
                p.held = std::mem::take(&mut self.held);
                self.plain = Some(p);
                self.head = Vec::new();
                self.state = State::Forward;
                Action::Http
            }
            Err(r) => self.fail(r),
        }
    }

    fn accept_head(&mut self, s: &Settings) -> Result<Accepted, Reject> {
        precheck(&self.head, s.max_head_bytes / 2)?;
        let mut headers = vec![httparse::EMPTY_HEADER; s.max_headers];
        let req = parse_request(&self.head, &mut headers)?;
        let kind = classify_request(&req)?;
        let (host, path, query) = match kind {
            Request::Upgrade(u) => (u.host, u.path, u.query),
            Request::Plain(p) => (p.host, p.path, p.query),
        };
        let m = s.routes.lookup(host, path).ok_or(Reject::NoRoute)?;
        self.route = m.route;
        self.routed = true;
        let route = s.routes.get(m.route);
        if route.backends.is_empty() {
            // Its names resolved to nothing (yet): the route exists, its backends do not.
            return Err(Reject::BackendFailed(BackendFailure::NoBackends));
        }
        check_origin(route, &req)?;
        let uwsgi = route.options.protocol == BackendProtocol::Uwsgi;
        let (path, query) = rewritten_target(path, m.strip, query);
        let fwd = Forwarding {
            client_ip: self.client.ip(),
            forwarded_for: self.forwarded_for(s, route.forwarded_for),
            underscores: s.underscores_in_headers,
            https: self.https,
        };
        let plain = match kind {
            Request::Plain(p) => p,
            // uWSGI's own WebSocket support needs its handshake in the app, not a 101 from
            // a backend we tunnel to.
            Request::Upgrade(_) if uwsgi => {
                return Err(Reject::BadRequest(BadRequest::UpgradeToken))
            }
            Request::Upgrade(_) => {
                self.first_backend = route.pick(&req, query, self.client.ip()).first;
                return Ok(Accepted::Upgrade(
                    self.upgrade_head(route, &req, path, query, fwd),
                ));
            }
        };
        if !route.options.http {
            return Err(Reject::NotUpgrade);
        }
        let mut head = Vec::with_capacity(self.head.len() + 128);
        if uwsgi {
            if plain.body == Body::Chunked {
                return Err(Reject::LengthRequired);
            }
            let stripped = &plain.path[..m.strip.min(plain.path.len())];
            let at = uwsgi::Origin {
                client: self.client,
                local: self.local,
                server_name: plain.host,
                script_name: stripped,
            };
            uwsgi::write_packet(
                &mut head,
                &req,
                path,
                query,
                plain.body,
                at,
                fwd.underscores,
            )
            .map_err(|_| Reject::HeadTooLarge)?;
        } else {
            // A 1.0 exchange ends with its answer on both sides.
            let reuse = s.backend_reuse && route.send_proxy.is_none() && !plain.http10;
            write_request_head(&mut head, &req, path, query, plain.body, reuse, &fwd);
        }
        let pick = route.pick(&req, query, self.client.ip());
        Ok(Accepted::Plain(Box::new(PlainRequest {
            head,
            body: plain.body,
            head_method: req.method == "HEAD",
            idempotent: crate::core::http::idempotent(req.method),
            http10: plain.http10,
            close: plain.http10
                || req.headers.iter().any(|h| {
                    h.name.eq_ignore_ascii_case("connection")
                        && crate::core::validate::tokens(h.value)
                            .any(|t| t.eq_ignore_ascii_case(b"close"))
                }),
            route: m.route,
            pick,
            held: Vec::new(),
        })))
    }

    /// How X-Forwarded-For is written for this client: a client outside `trusted_proxies`
    /// cannot extend the chain, so its X-Forwarded-For is replaced and it cannot pass off a
    /// forged address as an earlier hop.
    fn forwarded_for(&self, s: &Settings, route: ForwardedFor) -> ForwardedFor {
        if s.trusted_proxies.is_empty() || in_nets(&s.trusted_proxies, self.client.ip()) {
            route
        } else {
            ForwardedFor::Replace
        }
    }

    fn upgrade_head(
        &self,
        route: &RouteEntry,
        req: &RequestHead<'_, '_>,
        path: &str,
        query: &str,
        fwd: Forwarding,
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.head.len() + 128);
        match route.send_proxy {
            Some(ProxyVersion::V1) => proxy_proto::encode_v1(&mut out, self.client, self.local),
            Some(ProxyVersion::V2) => proxy_proto::encode_v2(&mut out, self.client, self.local),
            None => {}
        }
        write_backend_head(&mut out, req, path, query, &fwd);
        out
    }
}

/// A route with `origins` takes requests without `Origin` (not from a browser page, or
/// same-origin) and from the origins listed, compared case-insensitively.
fn check_origin(route: &RouteEntry, req: &RequestHead<'_, '_>) -> Result<(), Reject> {
    let allowed = &route.options.origins;
    if allowed.is_empty() {
        return Ok(());
    }
    let mut origins = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("origin"));
    match (origins.next(), origins.next()) {
        (None, _) => Ok(()),
        (Some(o), None) => {
            let v = o.value.trim_ascii();
            if allowed.iter().any(|a| a.as_bytes().eq_ignore_ascii_case(v)) {
                Ok(())
            } else {
                Err(Reject::Forbidden)
            }
        }
        // Two origins: which one would the backend believe?
        (Some(_), Some(_)) => Err(Reject::Forbidden),
    }
}

/// Checks of an incomplete head that can already fail: bare line endings and NUL before the
/// last byte (the last byte may be a CR whose LF has not arrived).
fn precheck_partial(buf: &[u8]) -> Result<(), Reject> {
    // A CR as the very last byte may still get its LF in the next read.
    let settled = buf.strip_suffix(b"\r").unwrap_or(buf);
    if has_bare_line_ending(settled) || settled.contains(&0) {
        return Err(Reject::BadRequest(BadRequest::BareLineEnding));
    }
    Ok(())
}
