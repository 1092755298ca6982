//! Soak test for wsplice: holds ~N WebSocket tunnels through the proxy for a duration with
//! random churn, message sizes, half-closes and resets, checks every echo byte for byte, then
//! checks that the proxy gives back every descriptor and its memory and is still alive.
//!
//! ```text
//!  soak (clients, N slots)  ──▶  wsplice (--proxy-bin, or attached)  ──▶  soak backend (child)
//!      ◀── echoes checked ───                                          ◀── WebSocket echo ───
//! ```
//!
//! Prints one JSON summary line on stdout; progress goes to stderr. Exit code 1 if any check
//! failed, 2 on a setup error.

mod backend;
mod client;
mod net;
mod proxy;
mod rng;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use serde_json::{json, Value};

use client::{Settings, Stats};
use proxy::Proxy;
use rng::Rng;

#[derive(Parser)]
#[command(about = "Soak test for wsplice: churning WebSocket echo tunnels, fd and RSS checks")]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// The wsplice binary to start with a generated config.
    #[arg(long, conflicts_with = "proxy")]
    proxy_bin: Option<String>,
    /// Attach to a running proxy at this address instead (needs --proxy-pid and a route `/`
    /// to --backend-listen).
    #[arg(long, requires = "proxy_pid")]
    proxy: Option<SocketAddr>,
    #[arg(long)]
    proxy_pid: Option<u32>,
    /// The attached proxy's admin listener (to discount pooled pipes from its fd count).
    #[arg(long)]
    proxy_admin: Option<SocketAddr>,
    /// Where the echo backend listens.
    #[arg(long, default_value = "127.0.0.1:0")]
    backend_listen: SocketAddr,
    /// Relay mode of a started proxy: auto, splice or copy.
    #[arg(long, default_value = "auto")]
    relay: String,
    /// Workers of a started proxy (default: the proxy's own, one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// Connections held at once.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Seconds of traffic, after the ramp-up starts.
    #[arg(long, default_value_t = 60.0)]
    duration: f64,
    /// Client source addresses (`127.0.0.2-127.0.0.40`, comma lists, or `none`).
    #[arg(long, default_value = "127.0.0.2-127.0.0.40")]
    sources: String,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Connections start at random instants within this many seconds (default: min(10,
    /// duration/4)).
    #[arg(long)]
    ramp: Option<f64>,
    /// Mean connection lifetime, seconds (exponential).
    #[arg(long, default_value_t = 20.0)]
    mean_lifetime: f64,
    /// Mean pause between a connection's message rounds, ms (exponential).
    #[arg(long, default_value_t = 1000.0)]
    mean_gap_ms: f64,
    /// Largest message, bytes (sizes are log-uniform from 1).
    #[arg(long, default_value_t = 256 * 1024)]
    max_size: u64,
    /// Share of connections ending in a half-close, and in an abrupt reset.
    #[arg(long, default_value_t = 0.25)]
    half_close: f64,
    #[arg(long, default_value_t = 0.15)]
    reset: f64,
    /// Seconds an echo (or a close) may take before it counts as an error.
    #[arg(long, default_value_t = 30.0)]
    echo_timeout: f64,
    /// RSS allowed above the baseline after everyone left, KiB (see README: allocator slack and
    /// the slab's retained capacity).
    #[arg(long, default_value_t = 2048)]
    rss_tolerance_kib: u64,
    /// Seconds to wait for fds and RSS to come back to baseline after the clients left.
    #[arg(long, default_value_t = 10.0)]
    settle: f64,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run only the WebSocket echo backend (the soak run starts this as its child).
    Backend {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
}

fn main() {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Some(Cmd::Backend { listen }) = cli.cmd {
        if let Err(e) = rt.block_on(backend::run(listen)) {
            eprintln!("soak backend: {e}");
            std::process::exit(2);
        }
        return;
    }
    match rt.block_on(soak(cli)) {
        Ok(ok) => std::process::exit(if ok { 0 } else { 1 }),
        Err(e) => {
            eprintln!("soak: {e}");
            std::process::exit(2);
        }
    }
}

/// The echo backend as a child process: its address, and the child (stdin held open).
fn start_backend(listen: SocketAddr) -> Result<(Child, SocketAddr), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .args(["backend", "--listen", &listen.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn the backend: {e}"))?;
    let mut out = BufReader::new(child.stdout.as_mut().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).map_err(|e| e.to_string())?;
    let addr = line
        .trim()
        .strip_prefix("listen ")
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("backend said {line:?}"))?;
    Ok((child, addr))
}

/// Closes the backend's stdin and reads its counters line.
fn stop_backend(mut child: Child) -> Value {
    drop(child.stdin.take());
    let mut line = String::new();
    if let Some(out) = child.stdout.as_mut() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    let _ = child.wait();
    serde_json::from_str(line.trim()).unwrap_or(Value::Null)
}

async fn soak(cli: Cli) -> Result<bool, String> {
    let (nofile, _) = net::raise_nofile();
    if cli.connections as u64 + 100 > nofile {
        return Err(format!(
            "{} connections need more than the open-file limit of {nofile}",
            cli.connections
        ));
    }
    let (backend, backend_addr) = start_backend(cli.backend_listen)?;
    let mut proxy = match (&cli.proxy_bin, cli.proxy, cli.proxy_pid) {
        (Some(bin), None, _) => Proxy::start(bin, backend_addr, &cli.relay, cli.workers)?,
        (None, Some(addr), Some(pid)) => Proxy::attach(addr, pid, cli.proxy_admin),
        _ => return Err("give --proxy-bin, or --proxy with --proxy-pid".into()),
    };
    eprintln!(
        "soak: proxy {} (pid {}), backend {backend_addr}, {} connections for {} s, seed {}",
        proxy.addr, proxy.pid, cli.connections, cli.duration, cli.seed
    );
    let fd_base = proxy.fds().ok_or("cannot read the proxy's /proc/PID/fd")?;
    let pooled_base = proxy.pooled_pipes();
    let fd_base = fd_base - 2 * pooled_base as usize;
    let rss_base = proxy.rss_kib().ok_or("cannot read the proxy's RSS")?;

    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(cli.duration);
    let settings = Arc::new(Settings {
        proxy: proxy.addr,
        sources: net::Sources::parse(&cli.sources)?,
        deadline,
        ramp: Duration::from_secs_f64(cli.ramp.unwrap_or((cli.duration / 4.0).min(10.0))),
        mean_lifetime_s: cli.mean_lifetime,
        mean_gap_ms: cli.mean_gap_ms,
        max_size: cli.max_size,
        half_close: cli.half_close,
        reset: cli.reset,
        echo_timeout: Duration::from_secs_f64(cli.echo_timeout),
    });
    let stats = Arc::new(Stats::default());
    let mut rng = Rng::new(cli.seed);
    let slots: Vec<_> = (0..cli.connections as u64)
        .map(|i| tokio::spawn(client::slot(settings.clone(), stats.clone(), rng.fork(i))))
        .collect();

    // Progress, and the proxy's peaks, while the clients run.
    let (mut fd_peak, mut rss_peak) = (fd_base, rss_base);
    let mut last_report = Instant::now();
    // (seconds, connections opened so far, RSS KiB) every 30 s: a leak grows with connections
    // served, allocator slack levels off.
    let mut rss_timeline: Vec<(u64, u64, u64)> = Vec::new();
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        fd_peak = fd_peak.max(proxy.fds().unwrap_or(0));
        rss_peak = rss_peak.max(proxy.rss_kib().unwrap_or(0));
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            let secs = started.elapsed().as_secs();
            if secs / 30 > rss_timeline.last().map_or(0, |t| t.0 / 30) {
                rss_timeline.push((
                    secs,
                    stats.opened.load(Ordering::Relaxed),
                    proxy.rss_kib().unwrap_or(0),
                ));
            }
            eprintln!(
                "soak: {:>4.0} s  open {}  opened {}  failed {}  echoed {}  errors {}  proxy fds {}  rss {} KiB",
                started.elapsed().as_secs_f64(),
                stats.open_now.load(Ordering::Relaxed),
                stats.opened.load(Ordering::Relaxed),
                stats.failed.load(Ordering::Relaxed),
                stats.echoed.load(Ordering::Relaxed),
                stats.errors().values().sum::<u64>(),
                proxy.fds().unwrap_or(0),
                proxy.rss_kib().unwrap_or(0),
            );
        }
    }

    // Everyone leaves (cleanly, each finishing its round first).
    let leave_by =
        tokio::time::Instant::now() + Duration::from_secs_f64(cli.echo_timeout * 2.0 + 10.0);
    let mut stuck = 0;
    for s in slots {
        let abort = s.abort_handle();
        if tokio::time::timeout_at(leave_by, s).await.is_err() {
            abort.abort();
            stuck += 1;
        }
    }
    if stuck > 0 {
        stats.error(format!("leave: {stuck} clients stuck"));
    }
    let traffic_s = started.elapsed().as_secs_f64();

    // Then the proxy must come back to its baseline.
    let settle_until = Instant::now() + Duration::from_secs_f64(cli.settle);
    let rss_limit = rss_base + cli.rss_tolerance_kib;
    let (fd_after, pooled_after, rss_after) = loop {
        let pooled = proxy.pooled_pipes();
        let fds = proxy.fds().unwrap_or(usize::MAX);
        let rss = proxy.rss_kib().unwrap_or(u64::MAX);
        let fd_ok = fds.saturating_sub(2 * pooled as usize) == fd_base;
        if (fd_ok && rss <= rss_limit) || Instant::now() >= settle_until {
            break (fds, pooled, rss);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let settled_s = started.elapsed().as_secs_f64() - traffic_s;
    let fd_ok = fd_after.saturating_sub(2 * pooled_after as usize) == fd_base;
    let rss_ok = rss_after <= rss_limit;
    let alive = proxy.alive();
    let exit = proxy.stop();
    let (panicked, tail) = proxy.panicked();
    let exit_ok = match &exit {
        None => true,
        Some(Ok(st)) => st.success(),
        Some(Err(_)) => false,
    };
    let backend_stats = stop_backend(backend);

    let errors = stats.errors();
    let errors_total: u64 = errors.values().sum();
    let ok = errors_total == 0 && fd_ok && rss_ok && alive && !panicked && exit_ok;
    let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let summary = json!({
        "ok": ok,
        "seed": cli.seed,
        "duration_s": (traffic_s * 10.0).round() / 10.0,
        "settle_s": (settled_s * 10.0).round() / 10.0,
        "relay": if cli.proxy_bin.is_some() { json!(cli.relay) } else { Value::Null },
        "connections": {
            "target": cli.connections,
            "opened": l(&stats.opened),
            "failed": l(&stats.failed),
            "peak_open": l(&stats.open_peak),
            "closed_clean": l(&stats.closed_clean),
            "closed_half": l(&stats.closed_half),
            "closed_reset": l(&stats.closed_reset),
            "broken": l(&stats.broken),
        },
        "messages": {
            "sent": l(&stats.sent),
            "text": l(&stats.sent_text),
            "echoed": l(&stats.echoed),
            "abandoned_by_reset": l(&stats.abandoned),
        },
        "bytes": { "sent": l(&stats.bytes_sent), "echoed": l(&stats.bytes_echoed) },
        "errors": errors,
        "errors_total": errors_total,
        "fd": {
            "before": fd_base,
            "after": fd_after,
            "after_pooled_pipes": pooled_after,
            "peak": fd_peak,
            "ok": fd_ok,
        },
        "rss_kib": {
            "before": rss_base,
            "after": rss_after,
            "peak": rss_peak,
            "tolerance": cli.rss_tolerance_kib,
            "ok": rss_ok,
            "timeline_s_opened_kib": rss_timeline,
        },
        "proxy": {
            "alive": alive,
            "panicked": panicked,
            "exit": match &exit {
                None => Value::Null,
                Some(Ok(st)) => json!(st.to_string()),
                Some(Err(e)) => json!(e),
            },
            "stderr_tail": if panicked || !exit_ok { json!(tail) } else { Value::Null },
        },
        "backend": backend_stats,
    });
    let mut out = std::io::stdout().lock();
    writeln!(out, "{summary}").map_err(|e| e.to_string())?;
    Ok(ok)
}
