//! Built without the `dns` feature: no resolver. A configuration with backend names fails to
//! start (or to reload) with this error; one with addresses only never asks.

use crate::config::{BackendName, Dns, Resolved};
use std::io;

/// Called with the whole table when a name's addresses changed (never, here).
pub type OnChange = Box<dyn Fn(Resolved) + Send>;

/// No resolver in this build.
pub struct Resolver;

impl Resolver {
    /// Always fails: this build cannot look names up.
    pub fn start(
        _: &Dns,
        names: Vec<BackendName>,
        _: OnChange,
    ) -> io::Result<(Resolver, Resolved)> {
        let names: Vec<String> = names.iter().map(ToString::to_string).collect();
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "backends by name ({}) need DNS, and this wsplice was built without it (cargo feature `dns`): give them as IP:PORT, or use a build with the default features",
                names.join(", ")
            ),
        ))
    }

    /// Never reached: [`Resolver::start`] fails.
    pub fn update(&self, _: Vec<BackendName>) -> Option<Resolved> {
        None
    }
}
