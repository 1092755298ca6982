//! Event loops. (STUB: being written; the signatures below are the contract main.rs uses.)
use crate::config::Config;
use std::io;
use std::net::SocketAddr;

/// A running proxy: one worker thread per configured worker.
pub struct Server {
    addrs: Vec<SocketAddr>,
}

impl Server {
    /// Binds every listener (SO_REUSEPORT, one socket per worker; a port of 0 is resolved once and
    /// shared by all workers) and starts the workers. Errors name the address that failed.
    pub fn start(cfg: &Config) -> io::Result<Server> {
        let _ = cfg;
        Err(io::Error::other("driver not implemented yet"))
    }
    /// The bound listener addresses, in config order (port 0 resolved).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }
    /// Number of worker threads.
    pub fn workers(&self) -> usize {
        0
    }
    /// Blocks until every worker has stopped.
    pub fn join(self) {}
}

/// What the open-file limit allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Concurrent proxied connections (client + backend socket each) for the whole process.
    pub max_connections: usize,
    /// Pooled splice pipes for the whole process (two fds each).
    pub max_pipes: usize,
}

/// Splits the open-file limit `nofile` between connections and pipes, honouring explicit config.
pub fn capacity(cfg: &Config, nofile: u64) -> Capacity {
    let _ = (cfg, nofile);
    Capacity { max_connections: 0, max_pipes: 0 }
}
