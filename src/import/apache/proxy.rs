//! Apache's proxy directives in a scope: `<Location>`, `ProxyPass`/`ProxyPassReverse`, and
//! `RewriteRule ... [P]` with its `RewriteCond`s.

use super::*;

impl Importer {
    /// `<Location PATH>`: its ProxyPass takes the path from the section.
    pub(super) fn location<'a>(&mut self, n: &'a Node, inner: &'a [Node], scope: &mut Scope<'a>) {
        let Some(path) = n.args.first() else {
            return self.plan.note(&n.loc, n.text(), "expected <Location PATH>");
        };
        for x in inner {
            if x.is("ProxyPass") {
                match &x.args[..] {
                    [url, params @ ..] => self.proxy_pass(x, path, url, params, scope),
                    _ => self.plan.note(&x.loc, x.text(), "expected ProxyPass URL"),
                }
            } else if x.is("ProxyPassReverse") {
                let why = "wsplice does not rewrite Location headers in answers: the backend's redirects reach the client as written";
                self.plan.note(&x.loc, x.text(), why);
            } else {
                self.other(x);
            }
        }
    }

    pub(super) fn reverse(&mut self, n: &Node, scope: &mut Scope<'_>) {
        let why = "wsplice does not rewrite Location headers in answers: the backend's redirects reach the client as written";
        let note = Note::new(&n.loc, n.text(), why);
        let path = n.args.first().and_then(|p| prefix(p).ok());
        match scope
            .mappings
            .iter_mut()
            .find(|m| Some(&m.prefix) == path.as_ref())
        {
            Some(m) => m.notes.push(note),
            None => self.plan.notes.push(note),
        }
    }

    pub(super) fn proxy_pass(
        &mut self,
        n: &Node,
        path: &str,
        url: &str,
        params: &[String],
        scope: &mut Scope<'_>,
    ) {
        if url == "!" {
            let why =
                "wsplice has no exclusions: this path is routed by the route around it, if any";
            return self.plan.note(&n.loc, n.text(), why);
        }
        let pfx = match prefix(path) {
            Ok(p) => p,
            Err(why) => return self.plan.note(&n.loc, n.text(), why),
        };
        let mut m = Mapping::new(0, &n.loc, n.text(), pfx);
        for p in params {
            let (key, value) = p.split_once('=').unwrap_or((p.as_str(), ""));
            match key.to_ascii_lowercase().as_str() {
                "upgrade" => {}
                "timeout" => match seconds(value) {
                    Some(d) => {
                        m.response_timeout = Some(d);
                        self.plan.timeout(true, d, &n.loc, p);
                    }
                    None => m
                        .notes
                        .push(Note::new(&n.loc, p.clone(), "expected seconds")),
                },
                "connectiontimeout" => match seconds(value) {
                    Some(d) => self.plan.timeout(false, d, &n.loc, p),
                    None => m
                        .notes
                        .push(Note::new(&n.loc, p.clone(), "expected seconds")),
                },
                _ => m
                    .notes
                    .push(Note::new(&n.loc, p.clone(), "no wsplice equivalent")),
            }
        }
        self.target(&mut m, n, url);
        if m.disabled.is_none() && !m.uwsgi {
            let target = split_url(url).and_then(|u| u.path).unwrap_or_default();
            m.strip = match path_rule(path, Some(&target)) {
                Ok(strip) => strip,
                Err(why) => {
                    m.notes.push(Note::new(&n.loc, n.text(), why));
                    false
                }
            };
            if let Some(why) = slash_note(path, Some(&target), m.strip) {
                m.notes.push(Note::new(&n.loc, n.text(), why));
            }
        }
        scope.mappings.push(m);
    }

    /// The backends of a proxy URL (the path rule is the caller's).
    fn target(&mut self, m: &mut Mapping, n: &Node, url: &str) {
        let disable = |m: &mut Mapping, why: &str| {
            m.notes.push(Note::new(&n.loc, n.text(), why));
            m.disabled = Some(why.to_owned());
        };
        let Some(u) = split_url(url) else {
            return disable(m, "expected SCHEME://HOST[:PORT][/PATH]");
        };
        match u.scheme.as_str() {
            "ws" | "http" | "uwsgi" => match resolve(&u.authority, 80) {
                Ok((addrs, note)) => {
                    if let Some(why) = note {
                        m.notes.push(Note::new(&n.loc, n.text(), why));
                    }
                    m.backends = addrs;
                    m.uwsgi = u.scheme == "uwsgi";
                }
                Err(why) => disable(m, &why),
            },
            "balancer" => match self.balancers.get(&u.authority.to_ascii_lowercase()) {
                Some(b) if !b.backends.is_empty() => {
                    m.backends = b.backends.clone();
                    m.weights = b.weights.clone();
                    m.balance = b.balance.clone();
                }
                _ => disable(
                    m,
                    &format!("balancer://{} has no member wsplice can use", u.authority),
                ),
            },
            "wss" | "https" => match resolve(&u.authority, 443) {
                Ok((addrs, note)) => {
                    if let Some(why) = note {
                        m.notes.push(Note::new(&n.loc, n.text(), why));
                    }
                    m.notes.push(Note::new(&n.loc, n.text(), TLS_BACKEND_NOTE));
                    m.backends = addrs;
                    m.tls = Some(tls_name(&u.authority));
                }
                Err(why) => disable(m, &why),
            },
            other => disable(
                m,
                &format!("{other}:// backends have no wsplice equivalent"),
            ),
        }
    }

    /// `RewriteRule PATTERN SUBSTITUTION [P,...]` under its RewriteConds.
    pub(super) fn rewrite(&mut self, n: &Node, conds: &[&Node], scope: &mut Scope<'_>) {
        let [pattern, sub, rest @ ..] = &n.args[..] else {
            return self.plan.note(
                &n.loc,
                n.text(),
                "expected RewriteRule PATTERN SUBSTITUTION [FLAGS]",
            );
        };
        let flags: Vec<String> = rest
            .first()
            .map(|f| {
                f.trim_matches(['[', ']'])
                    .split(',')
                    .map(|s| s.trim().to_ascii_lowercase())
                    .collect()
            })
            .unwrap_or_default();
        if !flags.iter().any(|f| f == "p" || f == "proxy") {
            let why = "not a proxy rule ([P]): rewrites and redirects have no wsplice equivalent";
            self.plan.note(&n.loc, n.text(), why);
            for c in conds {
                self.plan
                    .note(&c.loc, c.text(), "belongs to the RewriteRule below it");
            }
            return;
        }
        let Some(consumed) = rewrite_pattern(pattern) else {
            let why =
                "wsplice routes path prefixes: only patterns like ^/PREFIX/(.*) are carried over";
            return self.plan.note(&n.loc, n.text(), why);
        };
        let pfx = match prefix(if consumed.is_empty() { "/" } else { &consumed }) {
            Ok(p) => p,
            Err(why) => return self.plan.note(&n.loc, n.text(), why),
        };
        let mut m = Mapping::new(0, &n.loc, n.text(), pfx);
        let (mut upgrade, mut plain) = (false, false);
        for c in conds {
            match upgrade_cond(c) {
                Some(true) => upgrade = true,
                Some(false) => plain = true,
                None => m.notes.push(Note::new(
                    &c.loc,
                    c.text(),
                    "condition not carried over: the rule applies to every request to its prefix",
                )),
            }
        }
        m.only = match (upgrade, plain) {
            (true, false) => Only::Upgrade,
            (false, true) => Only::Plain,
            _ => Only::Both,
        };
        for f in flags
            .iter()
            .filter(|f| !matches!(f.as_str(), "p" | "proxy" | "l" | "last" | "nc" | "nocase"))
        {
            m.notes
                .push(Note::new(&n.loc, format!("[{f}]"), "flag not carried over"));
        }
        // The substitution: URL + `$1`, or URL + `%{REQUEST_URI}` (the whole path).
        let (url, whole) = if let Some(u) = sub.strip_suffix("%{REQUEST_URI}") {
            (u, true)
        } else if let Some(u) = sub.strip_suffix("$1") {
            (u, false)
        } else {
            let why = "the substitution must end in $1 or %{REQUEST_URI} (the rest of the path) to become a route";
            return self.plan.note(&n.loc, n.text(), why);
        };
        self.target(&mut m, n, url);
        if !whole && !m.uwsgi && m.disabled.is_none() {
            let t = split_url(url).and_then(|u| u.path).unwrap_or_default();
            let trimmed = consumed.trim_end_matches('/');
            m.strip = if t == consumed {
                false
            } else if t == consumed[trimmed.len()..] {
                true
            } else {
                let why = format!("the backend would see {t}... in place of {consumed}...: kept as is (strip_prefix = false)");
                m.notes.push(Note::new(&n.loc, n.text(), why));
                false
            };
        }
        scope.mappings.push(m);
    }
}
