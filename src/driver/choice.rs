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

/// Resolves the `driver` key: `uring` refuses to start where io_uring cannot run (the error
/// says why), `auto` falls back to epoll with one line on stderr saying why. Both drivers run
/// TLS (under io_uring a TLS stream's operations are direct calls through its session, see
/// `uring::direct`).
pub fn choose_driver(cfg: &Config) -> io::Result<Chosen> {
    match cfg.driver {
        DriverMode::Epoll => Ok(Chosen::Epoll),
        DriverMode::Uring => uring::probe().map(Chosen::Uring).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "driver = \"uring\" cannot run here: {e}; set driver = \"epoll\" (or \"auto\") in the config, or pass --driver epoll"
                ),
            )
        }),
        DriverMode::Auto => match uring::probe() {
            Ok(setup) => Ok(Chosen::Uring(setup)),
            Err(e) => {
                eprintln!("wsplice: driver auto: io_uring is unavailable ({e}); using epoll");
                Ok(Chosen::Epoll)
            }
        },
    }
}
