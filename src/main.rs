//! `wsplice`: command line, configuration, start-up report.
//!
//! ```text
//! wsplice --config wsplice.toml                      run from a file
//! wsplice --listen 127.0.0.1:8000 --route /notice=127.0.0.1:50001,127.0.0.1:50002
//! wsplice --check --config wsplice.toml              validate and exit, like `nginx -t`
//! ```
//!
//! On start it prints, to stdout and one flushed line at a time (tests and scripts parse these):
//!
//! ```text
//! listen 127.0.0.1:8000 workers=4
//! route /notice -> 127.0.0.1:50001 strip_prefix=true
//! route /msg host=example.com -> 127.0.0.1:50002,127.0.0.1:50003 strip_prefix=true
//! capacity: 261000 connections, 65000 pipes (open-file limit 1048576)
//! ready
//! ```
//!
//! Exit status: 0 after a clean stop or a passing `--check`, 1 for a bad configuration or a failed
//! start, 2 for a usage error.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser, ValueEnum};
use wsplice::config::{Config, RelayMode};
use wsplice::driver::{self, Server};
use wsplice::sys::limits;

/// A WebSocket reverse proxy: strict upgrade handshakes, then a splice(2) relay.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Configuration file (TOML).
    #[arg(long, short, value_name = "FILE", conflicts_with_all = ["listen", "route"])]
    config: Option<PathBuf>,

    /// Address to listen on, such as 127.0.0.1:8000 (repeatable; instead of --config).
    #[arg(long, value_name = "ADDR", requires = "route")]
    listen: Vec<SocketAddr>,

    /// Route PREFIX to one or more backends, such as /notice=127.0.0.1:50001,127.0.0.1:50002
    /// (repeatable; instead of --config).
    #[arg(
        long,
        value_name = "PREFIX=HOST:PORT[,HOST:PORT...]",
        requires = "listen"
    )]
    route: Vec<String>,

    /// Worker threads (default: one per CPU). Overrides the configuration file.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    workers: Option<u16>,

    /// How tunnel bytes are moved. Overrides the configuration file.
    #[arg(long, value_enum, value_name = "MODE")]
    relay: Option<RelayArg>,

    /// Check the configuration and exit: 0 if it is valid, 1 with the error otherwise.
    #[arg(long, short = 't')]
    check: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RelayArg {
    /// Copy small reads, splice bulk reads.
    Auto,
    /// Always splice through a pooled pipe.
    Splice,
    /// Always copy through a buffer.
    Copy,
}

impl From<RelayArg> for RelayMode {
    fn from(arg: RelayArg) -> RelayMode {
        match arg {
            RelayArg::Auto => RelayMode::Auto,
            RelayArg::Splice => RelayMode::Splice,
            RelayArg::Copy => RelayMode::Copy,
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.config.is_none() && args.route.is_empty() {
        Args::command()
            .error(
                ErrorKind::MissingRequiredArgument,
                "either --config FILE, or --listen ADDR with --route PREFIX=HOST:PORT, is required",
            )
            .exit();
    }
    let source = match &args.config {
        Some(path) => path.display().to_string(),
        None => "from the command line".to_owned(),
    };
    let cfg = match load(&args) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("wsplice: error: {e}");
            if args.check {
                eprintln!("wsplice: configuration {source} test failed");
            }
            return ExitCode::FAILURE;
        }
    };
    if args.check {
        println!("wsplice: configuration {source} is ok");
        return ExitCode::SUCCESS;
    }
    match run(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wsplice: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The configuration from the file or the flags, with `--workers` and `--relay` applied.
fn load(args: &Args) -> Result<Config, wsplice::config::ConfigError> {
    let workers = args.workers.map(usize::from);
    let relay = args.relay.map(RelayMode::from);
    let mut cfg = match &args.config {
        Some(path) => Config::load(path)?,
        None => return Config::from_cli(args.listen.clone(), &args.route, workers, relay),
    };
    if workers.is_some() {
        cfg.workers = workers;
    }
    if let Some(mode) = relay {
        cfg.relay.mode = mode;
    }
    Ok(cfg)
}

fn run(mut cfg: Config) -> io::Result<()> {
    let (soft, _hard) = match limits::raise_nofile_limit() {
        Ok(limit) => limit,
        Err(e) => {
            eprintln!("wsplice: warning: cannot raise the open-file limit: {e}");
            limits::nofile_limit()?
        }
    };
    if cfg.workers.is_none() {
        cfg.workers = Some(std::thread::available_parallelism().map_or(1, |n| n.get()));
    }
    let capacity = driver::capacity(&cfg, soft);
    let server = Server::start(&cfg)?;

    let mut lines = Vec::new();
    for addr in server.local_addrs() {
        lines.push(format!("listen {addr} workers={}", server.workers()));
    }
    for route in &cfg.routes {
        let host = route
            .host
            .as_ref()
            .map(|h| format!(" host={h}"))
            .unwrap_or_default();
        let backends: Vec<String> = route.backends.iter().map(SocketAddr::to_string).collect();
        lines.push(format!(
            "route {}{host} -> {} strip_prefix={}",
            route.prefix,
            backends.join(","),
            route.strip_prefix
        ));
    }
    lines.push(format!(
        "capacity: {} connections, {} pipes (open-file limit {soft})",
        capacity.max_connections, capacity.max_pipes
    ));
    lines.push("ready".to_owned());
    let mut out = io::stdout().lock();
    for line in lines {
        // A closed stdout must not stop the proxy; the lines are a courtesy to whoever watches.
        let _ = writeln!(out, "{line}").and_then(|()| out.flush());
    }
    drop(out);

    server.join();
    Ok(())
}
