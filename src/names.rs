//! The binary's side of backends by name: starts the resolver thread when the configuration
//! has names, and gives each reload the addresses they resolve to.

use std::io;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

use signal_hook::iterator::Signals;

use wsplice::config::{Config, Resolved};
use wsplice::driver::dns::Resolver;

/// Where a changed address set goes (the main thread's event channel).
pub type Notify = Arc<dyn Fn(Resolved) + Send + Sync>;

/// The resolver thread (once some configuration had names) and its last table.
pub struct Names {
    resolver: Option<Resolver>,
    pub table: Resolved,
    notify: Notify,
}

impl Names {
    /// Resolves `cfg`'s backend names once (a name that does not resolve is reported; its
    /// routes answer 502 until it does, if they have no other backend) and keeps them fresh.
    pub fn start(cfg: &Config, notify: Notify) -> io::Result<Names> {
        let mut names = Names {
            resolver: None,
            table: Resolved::new(),
            notify,
        };
        names.table = names.update(cfg)?;
        Ok(names)
    }

    /// The table for `cfg`'s names (a reload): new names are looked up before it returns.
    pub fn update(&mut self, cfg: &Config) -> io::Result<Resolved> {
        let wanted = cfg.backend_names();
        let table = match &self.resolver {
            Some(r) => r
                .update(wanted.clone())
                .unwrap_or_else(|| self.table.clone()),
            None if wanted.is_empty() => return Ok(Resolved::new()),
            None => {
                let notify = self.notify.clone();
                let (r, table) =
                    Resolver::start(&cfg.dns, wanted.clone(), Box::new(move |t| notify(t)))?;
                self.resolver = Some(r);
                table
            }
        };
        for n in wanted.iter().filter(|n| !table.contains_key(n)) {
            let routes: Vec<&str> = cfg
                .routes
                .iter()
                .filter(|r| r.options.names.contains(n))
                .map(|r| r.prefix.as_str())
                .collect();
            eprintln!(
                "wsplice: warning: backend {n} does not resolve yet: route {} gets no address from it (502 without other backends) until it does; trying again",
                routes.join(", ")
            );
        }
        Ok(table)
    }

    /// True once a resolver runs ([dns] is read once, at its start).
    pub fn running(&self) -> bool {
        self.resolver.is_some()
    }
}

/// What the main thread of worker threads waits for.
pub enum Main {
    Signal(i32),
    /// Backend names resolved to new addresses.
    Resolved(Resolved),
}

/// Signals, and new backend addresses once a resolver runs. Without backend names the main
/// thread waits on the signals itself (no thread more than the workers); with them a small
/// thread forwards the signals into the channel the resolver also sends to.
pub struct Events {
    signals: Option<Signals>,
    tx: Sender<Main>,
    rx: Receiver<Main>,
}

impl Events {
    pub fn new(signals: Signals) -> Events {
        let (tx, rx) = channel();
        Events {
            signals: Some(signals),
            tx,
            rx,
        }
    }

    /// Where the resolver reports changes.
    pub fn notify(&self) -> Notify {
        let tx = Mutex::new(self.tx.clone());
        Arc::new(move |t| {
            if let Ok(tx) = tx.lock() {
                let _ = tx.send(Main::Resolved(t));
            }
        })
    }

    /// The next event; `merged`: a resolver runs, so signals go through the channel from now on.
    pub fn next(&mut self, merged: bool) -> Option<Main> {
        if merged {
            if let Some(mut signals) = self.signals.take() {
                let tx = self.tx.clone();
                let forward = std::thread::Builder::new()
                    .name("wsplice-signals".into())
                    .spawn(move || {
                        for sig in signals.forever() {
                            if tx.send(Main::Signal(sig)).is_err() {
                                return;
                            }
                        }
                    });
                if let Err(e) = forward {
                    eprintln!("wsplice: cannot start the signal thread: {e}");
                }
            }
        }
        match &mut self.signals {
            Some(s) => s.forever().next().map(Main::Signal),
            None => self.rx.recv().ok(),
        }
    }
}
