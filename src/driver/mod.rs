//! Event loops that turn the core's decisions into syscalls. Epoll (mio) now; io_uring later.
//!
//! ```text
//!            SO_REUSEPORT: the kernel spreads accepts
//!      ┌─────────────┬──────────────┬─────────────┐
//!   worker 0      worker 1   ...  worker N-1        one thread each, nothing shared but
//!   Poll, Slab<Conn>, Wheel, PipePool, scratch      read-only Settings and published stats
//! ```
pub mod epoll;
pub mod relay;
pub mod stats;

use crate::config::Config;
use crate::core::route::RouteTable;
use crate::core::session::Settings;
use crate::sys::sock::{reuseport_listener, Tuning};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

/// Descriptors kept aside for listeners, stdio, epoll and the odd log file.
const FD_RESERVE: u64 = 64;

/// What the open-file limit allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Concurrent proxied connections (client + backend socket each) for the whole process.
    pub max_connections: usize,
    /// Pooled splice pipes for the whole process (two fds each).
    pub max_pipes: usize,
}

/// Splits the open-file limit `nofile` between connections and pipes, honouring explicit config.
///
/// A proxied connection costs 2 fds, a lent pipe 2 more. Pipes are held only while bytes are in
/// flight, so by default one pipe is budgeted per 16 connections (the copy path serves when the
/// pool is exhausted): with 20,000 fds that is 9,381 connections and 586 pipes.
pub fn capacity(cfg: &Config, nofile: u64) -> Capacity {
    let workers = cfg.workers.unwrap_or(1).max(1) as u64;
    let budget = nofile.saturating_sub(FD_RESERVE + cfg.listen.len() as u64 * workers);
    let max_connections = match cfg.limits.max_connections {
        Some(n) => n,
        None => ((budget * 16) / 34).max(1) as usize,
    };
    let max_pipes = match cfg.relay.max_pipes {
        Some(n) => n,
        None => {
            let left = budget.saturating_sub(2 * max_connections as u64) / 2;
            left.min(max_connections as u64 / 4).max(workers.min(left)) as usize
        }
    };
    Capacity {
        max_connections,
        max_pipes,
    }
}

/// A running proxy: one worker thread per configured worker.
pub struct Server {
    addrs: Vec<SocketAddr>,
    threads: Vec<JoinHandle<io::Result<()>>>,
    published: Vec<Arc<stats::Published>>,
}

fn bind_error(addr: SocketAddr, e: io::Error) -> io::Error {
    let hint = match e.kind() {
        io::ErrorKind::AddrInUse => " (another process listens there: stop it or change `listen`)",
        io::ErrorKind::PermissionDenied => " (ports below 1024 need root or CAP_NET_BIND_SERVICE)",
        io::ErrorKind::AddrNotAvailable => " (no local interface has this address)",
        _ => "",
    };
    io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}{hint}"))
}

impl Server {
    /// Binds every listener (SO_REUSEPORT, one socket per worker; a port of 0 is resolved once and
    /// shared by all workers) and starts the workers. Errors name the address that failed.
    pub fn start(cfg: &Config) -> io::Result<Server> {
        let workers = cfg
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1);
        let nofile = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map(|(soft, _)| soft)
            .unwrap_or(1024);
        let mut sized = cfg.clone();
        sized.workers = Some(workers);
        let cap = capacity(&sized, nofile);
        let settings = Arc::new(Settings {
            routes: RouteTable::new(&cfg.routes),
            timeouts: cfg.timeouts.clone(),
            max_head_bytes: cfg.limits.max_head_bytes,
            max_headers: cfg.limits.max_headers,
        });
        // Bind every socket first, so a bad address fails start-up before any thread runs.
        let mut per_worker: Vec<Vec<std::net::TcpListener>> =
            (0..workers).map(|_| Vec::new()).collect();
        let mut addrs = Vec::new();
        for &want in &cfg.listen {
            let first = reuseport_listener(want, 4096).map_err(|e| bind_error(want, e))?;
            let actual = first.local_addr()?;
            addrs.push(actual);
            per_worker[0].push(first);
            for w in per_worker.iter_mut().skip(1) {
                w.push(reuseport_listener(actual, 4096).map_err(|e| bind_error(actual, e))?);
            }
        }
        let tuning = Tuning {
            keepalive: (!cfg.keepalive.idle.is_zero()).then_some((
                cfg.keepalive.idle,
                cfg.keepalive.interval,
                cfg.keepalive.count,
            )),
        };
        let mut threads = Vec::new();
        let mut published = Vec::new();
        for (id, listeners) in per_worker.into_iter().enumerate() {
            let p = Arc::new(stats::Published::default());
            published.push(p.clone());
            let wc = epoll::WorkerConfig {
                id,
                settings: settings.clone(),
                listeners,
                max_connections: cap.max_connections.div_ceil(workers),
                max_pipes: cap.max_pipes.div_ceil(workers),
                pipe_size: cfg.relay.pipe_size,
                relay: cfg.relay.mode,
                splice_threshold: cfg.relay.splice_threshold,
                tuning,
                published: p,
            };
            let worker = epoll::Worker::new(wc)?;
            let t = std::thread::Builder::new()
                .name(format!("wsplice-w{id}"))
                .spawn(move || worker.run())?;
            threads.push(t);
        }
        Ok(Server {
            addrs,
            threads,
            published,
        })
    }

    /// The bound listener addresses, in config order (port 0 resolved).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Number of worker threads.
    pub fn workers(&self) -> usize {
        self.threads.len()
    }

    /// The workers' counters, summed.
    pub fn stats(&self) -> stats::Counters {
        stats::sum(self.published.iter().map(|p| p.load()))
    }

    /// Blocks until every worker has stopped.
    pub fn join(self) {
        for t in self.threads {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("wsplice: worker stopped: {e}"),
                Err(_) => eprintln!("wsplice: worker panicked"),
            }
        }
    }
}
