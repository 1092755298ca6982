//! Which driver runs the workers: the `driver` key resolved against what this machine and
//! this configuration allow.

use super::uring;
use crate::config::{Config, DriverMode};
use std::io;

/// The driver the workers run, once `auto` is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chosen {
    Epoll,
    Uring(uring::Setup),
}

/// True when `cfg` has TLS listeners or TLS backends, which only the epoll driver runs.
pub fn runs_tls(cfg: &Config) -> bool {
    !cfg.tls.listen.is_empty() || cfg.routes.iter().any(|r| r.options.backend_tls.is_some())
}

/// Resolves the `driver` key: `uring` refuses to start where io_uring cannot run (the error
/// says why), `auto` falls back to epoll with one line on stderr saying why.
pub fn choose_driver(cfg: &Config) -> io::Result<Chosen> {
    // TLS sessions run in the worker's own buffers through the transport; the io_uring driver
    // moves socket bytes itself, so TLS listeners stay on epoll until it runs them too.
    let tls = runs_tls(cfg);
    match cfg.driver {
        DriverMode::Epoll => Ok(Chosen::Epoll),
        DriverMode::Uring if tls => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "driver = \"uring\" does not run TLS yet; set driver = \"epoll\" (or \"auto\") while [tls] has listeners or a [[route]] has TLS backends",
        )),
        DriverMode::Uring => uring::probe().map(Chosen::Uring).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "driver = \"uring\" cannot run here: {e}; set driver = \"epoll\" (or \"auto\") in the config, or pass --driver epoll"
                ),
            )
        }),
        DriverMode::Auto if tls => {
            eprintln!("wsplice: driver auto: TLS (listeners or backends) runs on epoll (the io_uring driver does not run TLS yet)");
            Ok(Chosen::Epoll)
        }
        DriverMode::Auto => match uring::probe() {
            Ok(setup) => Ok(Chosen::Uring(setup)),
            Err(e) => {
                eprintln!("wsplice: driver auto: io_uring is unavailable ({e}); using epoll");
                Ok(Chosen::Epoll)
            }
        },
    }
}
