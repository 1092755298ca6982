//! wsbench: WebSocket load generator and benchmark backend for comparing wsplice with
//! nginx and HAProxy (see `tools/compare`).
//!
//! ```text
//!  wsbench hold/echo/fanout/bulk/churn ──ws──> proxy under test ──ws──> wsbench backend
//!  wsbench http ─────── HTTP/1.1 keep-alive ──>       "        ──────> (GET /bytes/N)
//!                 │                                                        ▲
//!                 └──────────── control port: "broadcast SIZE ID" ────────┘ (fanout)
//! ```
//!
//! Every client mode is bounded by `--timeout`, checks payload integrity, and prints exactly
//! one JSON line on stdout: `{"mode", "params", "results", "errors", "ok"}`. Progress goes
//! to stderr.

mod backend;
mod clients;
mod http;
mod shapes;

use wsbench::common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::json;

use clients::Common;
use common::{Sources, Target};

#[derive(Parser)]
#[command(version, about = "WebSocket load generator and benchmark backend")]
struct Cli {
    /// Tokio worker threads (default: number of CPUs).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Echo server (any path) with broadcast pushes triggered over a control port.
    Backend {
        #[arg(long, required = true)]
        listen: Vec<SocketAddr>,
        /// Control port: lines `broadcast SIZE [ID]` -> `ok N`, `count` -> `ok N`.
        #[arg(long)]
        control: Option<SocketAddr>,
    },
    /// Open N idle connections, hold them, sample --pid's memory and fds, close.
    Hold {
        #[command(flatten)]
        common: ClientArgs,
        #[arg(short = 'n', long, default_value_t = 1000)]
        n: usize,
        /// Connection attempts per second.
        #[arg(long, default_value_t = 2000.0)]
        rate: f64,
        /// Seconds to hold the connections idle before sampling and closing.
        #[arg(long, default_value_t = 5.0)]
        hold: f64,
        /// After the hold, every connection sends one message and checks its echo before it
        /// closes (`echoed_after_hold` in the results; a failure is an error).
        #[arg(long)]
        echo_after: bool,
    },
    /// N connections echoing SIZE-byte messages: closed loop, or open loop at --rate.
    Echo {
        #[command(flatten)]
        common: ClientArgs,
        #[arg(short = 'c', long, default_value_t = 100)]
        c: usize,
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Total messages per second over all connections (open loop, latency measured
        /// from the intended send time). Without it: closed loop, one in flight per conn.
        #[arg(long)]
        rate: Option<f64>,
        /// Seconds of echo before the measured `--duration`, kept out of the figures (its
        /// latencies are reported apart, as `latency_warmup`): the start-up transient of
        /// every connection's first messages in the generator, backend and proxy.
        #[arg(long, default_value_t = 2.0)]
        warmup: f64,
        #[arg(long, default_value_t = 2000.0)]
        connect_rate: f64,
    },
    /// N connections receiving M broadcasts triggered via the backend's control port.
    Fanout {
        #[command(flatten)]
        common: ClientArgs,
        #[arg(short = 'c', long, default_value_t = 1000)]
        c: usize,
        #[arg(long)]
        control: SocketAddr,
        #[arg(short = 'm', long, default_value_t = 10)]
        m: u64,
        #[arg(long, default_value_t = 128)]
        size: usize,
        /// Pause between broadcasts, after the previous one was fully delivered.
        #[arg(long, default_value_t = 100)]
        gap_ms: u64,
        #[arg(long, default_value_t = 2000.0)]
        connect_rate: f64,
    },
    /// C connections each sending X bytes (binary messages) and checking the echo.
    Bulk {
        #[command(flatten)]
        common: ClientArgs,
        #[arg(short = 'c', long, default_value_t = 4)]
        c: usize,
        /// Bytes each way per connection; suffixes K, M, G (binary).
        #[arg(long, default_value = "64M", value_parser = parse_size)]
        bytes: u64,
        #[arg(long, default_value = "64K", value_parser = parse_size)]
        msg_size: u64,
    },
    /// Connect, handshake, one echo, close, in a loop, from C concurrent workers.
    Churn {
        #[command(flatten)]
        common: ClientArgs,
        #[arg(short = 'c', long, default_value_t = 32)]
        c: usize,
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
    },
    /// C keep-alive connections GETting the target (http://IP:PORT/bytes/N) in a closed
    /// loop, every body checked byte for byte; requests/s and the --pid tree's CPU.
    Http {
        #[command(flatten)]
        common: ClientArgs,
        #[arg(short = 'c', long, default_value_t = 50)]
        c: usize,
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
    },
    /// The shape matrix: message sizes x write shapes (whole, split into 1-4 KiB writes, back
    /// to back), each cell a closed loop through the proxy to a raw echo backend this process
    /// runs (--backend); prints one JSON line with the proxy's (--pid) CPU per GB and per
    /// message, load average and foreign CPU for every cell.
    Shapes {
        /// A proxy under test, `NAME=ws://IP:PORT/path@PID` (PID: the process tree whose CPU
        /// is measured); repeat the flag to compare proxies cell by cell.
        #[arg(long, required = true)]
        proxy: Vec<String>,
        /// Each cell against each proxy this many times (interleaved).
        #[arg(long, default_value_t = 1)]
        repeats: usize,
        /// Source addresses, round-robin: `127.0.0.2-127.0.0.40`, comma lists, or `none`.
        #[arg(long, default_value = "127.0.0.2-127.0.0.40")]
        sources: String,
        /// Where to run the raw echo backend (the proxy under test routes to it); omit to use
        /// a backend started elsewhere (it must echo raw bytes after the upgrade).
        #[arg(long)]
        backend: Option<SocketAddr>,
        #[arg(short = 'c', long, default_value_t = 8)]
        c: usize,
        /// Comma-separated sizes; suffixes K, M.
        #[arg(long, default_value = "64,1K,16K,64K,1M")]
        sizes: String,
        #[arg(long, default_value = "whole,split,stream")]
        writers: String,
        /// Seconds per cell.
        #[arg(long, default_value_t = 3.0)]
        duration: f64,
    },
    /// Print the resource use of a process tree (RSS, PSS, fds, CPU seconds) as JSON.
    Proc {
        #[arg(long)]
        pid: u32,
    },
}

#[derive(Args)]
struct ClientArgs {
    /// ws://IP:PORT/path
    #[arg(long)]
    target: String,
    /// Source addresses, round-robin: `127.0.0.2-127.0.0.40`, comma lists, or `none`.
    #[arg(long, default_value = "127.0.0.2-127.0.0.40")]
    sources: String,
    /// Hard bound on the whole run in seconds (default depends on the mode).
    #[arg(long)]
    timeout: Option<f64>,
    /// Process (tree) to sample from /proc: RSS, fds, CPU.
    #[arg(long)]
    pid: Option<u32>,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>().map(|n| n * mult).map_err(|e| format!("{s:?}: {e}"))
}

fn main() {
    let cli = Cli::parse();
    let (soft, hard) = common::raise_nofile();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(t) = cli.threads {
        rt.worker_threads(t.max(1));
    }
    let rt = rt.build().expect("tokio runtime");
    let code = rt.block_on(run(cli.cmd, soft, hard));
    // Do not wait for stragglers (tasks stuck on dead peers): the JSON line is out.
    std::process::exit(code);
}

async fn run(cmd: Cmd, soft: u64, hard: u64) -> i32 {
    let (mode, client, default_timeout) = match &cmd {
        Cmd::Backend { listen, control } => {
            return match backend::run(listen.clone(), *control).await {
                Ok(()) => 0,
                Err(e) => {
                    println!("{}", json!({"mode": "backend", "ok": false, "errors": {e: 1}}));
                    1
                }
            };
        }
        Cmd::Proc { pid } => {
            println!("{}", common::proc_tree(*pid));
            return 0;
        }
        Cmd::Shapes { proxy, repeats, sources, backend, c, sizes, writers, duration } => {
            let parsed = (|| -> Result<shapes::Matrix, String> {
                Ok(shapes::Matrix {
                    proxies: proxy.iter().map(|p| shapes::Proxy::parse(p)).collect::<Result<_, _>>()?,
                    repeats: (*repeats).max(1),
                    sources: Arc::new(Sources::parse(sources)?),
                    backend: *backend,
                    conns: *c,
                    sizes: sizes.split(',').map(|x| parse_size(x).map(|n| n as usize)).collect::<Result<_, _>>()?,
                    writers: writers.split(',').map(|x| shapes::Writer::parse(x.trim())).collect::<Result<_, _>>()?,
                    duration: *duration,
                })
            })();
            let m = match parsed {
                Ok(m) => m,
                Err(e) => {
                    println!("{}", json!({"mode": "shapes", "ok": false, "errors": {e: 1}}));
                    return 2;
                }
            };
            let (out, ok) = shapes::run(m).await;
            println!("{out}");
            return if ok { 0 } else { 1 };
        }
        Cmd::Hold { common, n, rate, hold, .. } => ("hold", common, *n as f64 / rate.max(1.0) + hold + 60.0),
        Cmd::Echo { common, duration, warmup, c, connect_rate, .. } => {
            ("echo", common, *c as f64 / connect_rate.max(1.0) + warmup + duration + 60.0)
        }
        Cmd::Fanout { common, c, m, connect_rate, .. } => ("fanout", common, *c as f64 / connect_rate.max(1.0) + *m as f64 * 11.0 + 60.0),
        Cmd::Bulk { common, .. } => ("bulk", common, 300.0),
        Cmd::Churn { common, duration, .. } => ("churn", common, duration + 30.0),
        Cmd::Http { common, duration, .. } => ("http", common, duration + 30.0),
    };
    let timeout = client.timeout.unwrap_or(default_timeout);
    let fail = |msg: String| {
        println!("{}", json!({"mode": mode, "ok": false, "errors": {msg: 1}}));
        2
    };
    let target = match Target::parse(&client.target) {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let sources = match Sources::parse(&client.sources) {
        Ok(s) => Arc::new(s),
        Err(e) => return fail(e),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(timeout);
    let mk = |rate: f64| Common { target: target.clone(), sources: sources.clone(), connect_rate: rate, deadline, pid: client.pid };
    let fut = async {
        match cmd {
            Cmd::Hold { n, rate, hold, echo_after, .. } => clients::hold(mk(rate), n, hold, echo_after).await,
            Cmd::Echo { c, size, duration, rate, warmup, connect_rate, .. } => {
                clients::echo(mk(connect_rate), c, size, duration, rate, warmup.max(0.0)).await
            }
            Cmd::Fanout { c, control, m, size, gap_ms, connect_rate, .. } => clients::fanout(mk(connect_rate), c, control, m, size, gap_ms).await,
            Cmd::Bulk { c, bytes, msg_size, .. } => clients::bulk(mk(2000.0), c, bytes, msg_size as usize).await,
            Cmd::Churn { c, duration, .. } => clients::churn(mk(0.0), c, duration).await,
            Cmd::Http { c, duration, .. } => http::http(mk(0.0), c, duration).await,
            Cmd::Backend { .. } | Cmd::Proc { .. } | Cmd::Shapes { .. } => unreachable!("handled above"),
        }
    };
    // A margin past the internal deadlines: the modes end themselves first when they can.
    match tokio::time::timeout(Duration::from_secs_f64(timeout + 5.0), fut).await {
        Ok((mut params, results, errors)) => {
            params["timeout_s"] = json!(timeout);
            params["nofile"] = json!({"soft": soft, "hard": hard});
            let ok = errors.total() == 0;
            println!(
                "{}",
                json!({"mode": mode, "params": params, "results": results, "errors": errors.to_json(), "ok": ok,
                       "self_cpu_s": common::self_cpu_s()})
            );
            if ok { 0 } else { 1 }
        }
        Err(_) => fail(format!("global timeout after {timeout}s")),
    }
}
