//! The exchange's backend connection: whether it may be pooled, how a connect (or a TLS
//! handshake) ended, and the next backend after a failure.

use super::*;

impl Exchange {
    /// May this connection come from (and go back to) the worker's pool?
    pub(super) fn poolable(&self) -> bool {
        let route = self.settings.routes.get(self.route);
        // A TLS backend connection would have to keep its session in the pool: not yet.
        self.settings.backend_reuse
            && route.send_proxy.is_none()
            && route.options.protocol == BackendProtocol::Http
            && route.options.backend_tls.is_none()
    }

    /// The next backend of the route after a failed connect, or the answer when all failed.
    pub(super) fn next_backend(&mut self, t: &Time) {
        let route = self.settings.routes.get(self.route);
        self.tried += 1;
        // Down, ejected and drained backends are skipped.
        if let Some((k, _)) = route.next_to_try(self.pick.first, self.tried) {
            self.tried = k;
        } else {
            self.tried = route.backends.len();
        }
        if self.tried >= route.backends.len() {
            self.ending = Some(Ending::Refuse(match self.last_failure {
                Some(ConnectFailure::Timeout) => Reject::BackendTimeout,
                Some(ConnectFailure::NoDescriptors) => Reject::Overloaded,
                Some(ConnectFailure::Reset | ConnectFailure::Tls) => {
                    Reject::BackendFailed(BackendFailure::Reset)
                }
                _ => Reject::BackendFailed(BackendFailure::Refused),
            }));
            return;
        }
        self.backend_index = (self.pick.first + self.tried) % route.backends.len();
        self.backend = route.backends[self.backend_index];
        self.lease = None;
        self.lease = Lease::take(&self.settings, self.route, self.backend_index);
        self.link = Link::Want;
        self.deadline = t.now + self.settings.timeouts.connect;
        self.build_head();
    }

    pub(in crate::core::conn) fn complete_connect(
        &mut self,
        c: Connecting,
        completion: bool,
        t: &Time,
    ) {
        if self.link != Link::Connecting || self.ending.is_some() {
            return;
        }
        match c {
            Connecting::Started | Connecting::Pending => {}
            Connecting::Reused | Connecting::Connected => {
                let route = self.settings.routes.get(self.route);
                if route.options.backend_tls.is_some() {
                    self.steps.push_back(Step::StartTls {
                        route: route.id,
                        backend: self.backend,
                    });
                }
                self.link = Link::Ready;
                self.reused = c == Connecting::Reused;
                self.ready.backend_connected(completion);
                self.touch(t);
            }
            Connecting::Failed(ConnectFailure::NoDescriptors) => {
                self.ending = Some(Ending::Refuse(Reject::Overloaded));
            }
            Connecting::Failed(why) => {
                self.last_failure = Some(why);
                self.backend_failed();
                self.next_backend(t);
            }
        }
    }
}
