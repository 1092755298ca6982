//! What the binary tells the operator at start and stop: the start-up report (listeners,
//! workers, limits, TLS certificates) and the stopping and stopped lines.

use super::*;

/// Loads `cfg`'s certificates to check them and describe them. Worker processes load them again
/// themselves, with the ticket key bytes the supervisor shares (none are needed here: this load
/// never serves a handshake).
pub(super) fn tls_summary(cfg: &Config) -> io::Result<Vec<String>> {
    let unused = std::sync::Arc::new(wsplice::transport::tls::TicketKeys::from_bytes([0; 32]));
    Ok(driver::tls_for(cfg, &unused)?
        .map(|t| t.summary.clone())
        .unwrap_or_default())
}

pub(super) fn mib(bytes: u64) -> u64 {
    bytes.div_ceil(1 << 20)
}

/// Prints the start-up lines (listen, routes, model, capacity, admin) and `ready`.
/// What start-up found out beside the configuration, for [`announce`].
pub(super) struct Found<'a> {
    /// The `tls cert FILE names=...` lines.
    pub tls_summary: &'a [String],
    /// `driver epoll` or `driver uring (...)`.
    pub driver_line: &'a str,
    /// `cpus: N (...)`: the CPUs the process may use and the worker count it gave.
    pub cpus_line: &'a str,
}

pub(super) fn announce(
    cfg: &Config,
    addrs: &[SocketAddr],
    found: Found<'_>,
    stats: StatsReader,
    choice: &driver::ModelChoice,
    soft: u64,
) -> io::Result<()> {
    let Found {
        tls_summary,
        driver_line,
        cpus_line,
    } = found;
    let workers = cfg.workers.unwrap_or(1);
    if let Some(addr) = cfg.admin {
        driver::status::name_routes(&cfg.routes);
        let bound = admin::start(addr, stats, Instant::now())?;
        say(&format!("admin {bound}"));
    }
    let mut lines = Vec::new();
    let tls_listen = cfg.listen.len();
    let redirect_listen = tls_listen + cfg.tls.listen.len();
    // The first TLS listener's bound port, unless `redirect_port` says otherwise.
    let https_port = match (cfg.tls.redirect_port, addrs.get(tls_listen)) {
        (None, Some(a)) if !cfg.tls.listen.is_empty() => a.port(),
        _ => cfg.https_port(),
    };
    for (i, addr) in addrs.iter().enumerate() {
        // Listeners are bound in `all_listen` order: the plain ones, the TLS ones, then the
        // redirect ones.
        let kind = if i >= redirect_listen {
            format!(" redirect-to-https:{https_port}")
        } else if i >= tls_listen {
            " tls".to_owned()
        } else {
            String::new()
        };
        lines.push(format!("listen {addr} workers={workers}{kind}"));
    }
    lines.extend(tls_summary.iter().cloned());
    for route in &cfg.routes {
        let host = route
            .host
            .as_ref()
            .map(|h| format!(" host={h}"))
            .unwrap_or_default();
        let backends: Vec<String> = route
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| match route.options.weights.get(i) {
                Some(w) if *w != 1 => format!("{b} weight={w}"),
                _ => b.to_string(),
            })
            .chain(route.options.names.iter().map(|n| format!("{n} (dns)")))
            .collect();
        let health = route.options.health.as_ref().map_or(String::new(), |h| {
            let check = h.check.as_ref().map_or("passive only".to_owned(), |c| {
                format!("{} check every {:?}", c.kind.as_str(), h.interval)
            });
            let eject = if h.eject_after > 0 {
                format!(", eject after {} failures", h.eject_after)
            } else {
                String::new()
            };
            format!(" health: {check}{eject}")
        });
        lines.push(format!(
            "route {}{host} -> {} strip_prefix={}{health}",
            route.prefix,
            backends.join(","),
            route.strip_prefix
        ));
    }
    let kind = match choice.model {
        WorkerModel::Processes => "processes",
        _ => "threads",
    };
    lines.push(cpus_line.to_owned());
    lines.push(format!("workers: {workers} {kind} ({})", choice.reason));
    let pipes = PipeSizes::new(cfg.pipe_size(), workers);
    lines.push(match choice.model {
        WorkerModel::Processes => {
            let (per, total) = driver::process_capacity(cfg, soft);
            format!(
                "capacity: {} connections, {} pipes (open-file limit {soft} per process; per worker {} connections, {} pipes; {})",
                total.max_connections,
                total.max_pipes,
                per.max_connections,
                per.max_pipes,
                pipes.describe(per.max_pipes, workers),
            )
        }
        _ => {
            let c = driver::capacity(cfg, soft);
            let per = c.max_pipes.div_ceil(workers);
            format!(
                "capacity: {} connections, {} pipes (open-file limit {soft}; per worker {per} pipes; {})",
                c.max_connections,
                c.max_pipes,
                pipes.describe(per, workers),
            )
        }
    });
    lines.push(driver_line.to_owned());
    let processes = choice.model == WorkerModel::Processes;
    if let Some(plan) = driver::memory_plan(cfg, workers, processes) {
        lines.push(plan.describe(workers));
    }
    lines.push("ready".to_owned());
    let mut out = io::stdout().lock();
    for line in lines {
        // A closed stdout must not stop the proxy; the lines are a courtesy to whoever watches.
        let _ = writeln!(out, "{line}").and_then(|()| out.flush());
    }
    Ok(())
}

/// Pipe sizes as the pools make them: `size` while a worker has fewer than `large` such pipes
/// larger than the kernel's, then the kernel's 64 KiB.
struct PipeSizes {
    size: usize,
    large: usize,
}

impl PipeSizes {
    fn new(size: usize, workers: usize) -> PipeSizes {
        let soft = driver::pipe_user_pages_soft();
        PipeSizes {
            size,
            large: wsplice::core::relay::large_pipes(soft, size, workers),
        }
    }

    /// What `per_worker` pipes in each of `workers` may pin when full, and how they are sized.
    fn describe(&self, per_worker: usize, workers: usize) -> String {
        let kernel = wsplice::core::relay::KERNEL_PIPE;
        let large = per_worker.min(self.large);
        let pin = workers as u64
            * (large as u64 * self.size as u64 + (per_worker - large) as u64 * kernel as u64);
        let sizes = if self.size > kernel && large < per_worker {
            format!(
                "{} KiB each, up to {} per worker (a quarter of fs.pipe-user-pages-soft), then 64 KiB",
                self.size >> 10,
                self.large
            )
        } else {
            format!("{} KiB each", self.size >> 10)
        };
        format!("pipes {sizes}, may pin {} MiB", mib(pin))
    }
}

/// The last words: for scripts and tests, as `ready` and `reloaded`, how many tunnels were still
/// open when timeouts.drain ran out (wsplice_tunnels_closed_total{reason="drain"}).
pub(super) fn stopped(drain_closed: u64) {
    eprintln!("wsplice: stopped");
    println!("stopped (the drain closed {drain_closed} tunnels)");
}

pub(super) fn stopping_message(grace: Duration) {
    eprintln!(
        "wsplice: stopping: no new connections; open tunnels may run {grace:?} (timeouts.drain); send the signal again to stop at once"
    );
}
