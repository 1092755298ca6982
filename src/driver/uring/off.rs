//! The io_uring driver's place in a build without the `uring` cargo feature (the gateway
//! builds of `tools/build-static`): `driver = "uring"` refuses to start with the reason,
//! `driver = "auto"` runs epoll. The types are uninhabited: nothing can construct a uring
//! worker here, so none of the code that would drive one is built.

use super::worker::WorkerConfig;
use crate::config;
use std::io;
use std::sync::Arc;

pub use super::stats::UringStats;

/// How a ring was set up; never, in this build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {}

impl Setup {
    pub fn as_str(self) -> &'static str {
        match self {}
    }
}

/// A uring worker's waker; never, in this build.
pub enum Waker {}

impl Waker {
    pub fn wake(&self) -> io::Result<()> {
        match *self {}
    }
}

/// A uring worker; never, in this build.
pub enum Worker {}

impl Worker {
    pub fn new(_cfg: WorkerConfig, _uring: &config::Uring) -> io::Result<Worker> {
        Err(not_built())
    }

    pub fn waker(&self) -> Arc<Waker> {
        match *self {}
    }

    pub fn run(self) -> io::Result<()> {
        match self {}
    }
}

/// How relays would receive; the driver is never chosen in this build.
pub fn multishot_note(_uring: &config::Uring) -> String {
    String::new()
}

/// Why io_uring cannot run: this binary does not have the driver.
pub fn probe() -> io::Result<Setup> {
    Err(not_built())
}

fn not_built() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "this binary is built without the io_uring driver (cargo feature `uring`, left out of the gateway builds)",
    )
}
