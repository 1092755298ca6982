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
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;
use wsplice::config::{Config, RelayMode};
use wsplice::driver::{self, admin, Server};
use wsplice::sys::limits;

/// A WebSocket reverse proxy: strict upgrade handshakes, then a splice(2) relay.
#[derive(Debug, Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,

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

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Try it: the proxy plus two built-in backends, /notice (a notice every second) and /msg
    /// (echo), with nothing else to install.
    Demo {
        /// Where the proxy listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
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
    if let Some(Cmd::Demo { listen }) = args.command {
        return match demo(listen, &args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("wsplice: error: {e}");
                ExitCode::FAILURE
            }
        };
    }
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
    match run(cfg, &args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wsplice: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `wsplice demo`: the classic setup, self-contained.
fn demo(listen: SocketAddr, args: &Args) -> io::Result<()> {
    let (notice, echo) = wsplice::demo::start_demo_backends()?;
    let page = wsplice::demo::start_demo_page()?;
    let routes = [
        format!("/notice={notice}"),
        format!("/msg={echo}"),
        format!("/={page}"),
    ];
    let cfg = Config::from_cli(vec![listen], &routes, None, None)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    eprintln!(
        "wsplice demo: /notice pushes a notice every second, /msg echoes what you send.\n\
         Open http://{listen}/ in a browser: the page shows both, live.\n\
         Or from a browser console on any page:\n  \
         let ws = new WebSocket(\"ws://{listen}/notice\"); ws.onmessage = e => console.log(e.data)\n  \
         let m = new WebSocket(\"ws://{listen}/msg\"); m.onopen = () => m.send(\"hello\"); m.onmessage = e => console.log(e.data)\n\
         or with websocat: websocat ws://{listen}/msg\n\
         Ctrl-C stops it."
    );
    run(cfg, args)
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

fn run(mut cfg: Config, args: &Args) -> io::Result<()> {
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
    // Signals are caught from here on, before `ready`, so a script may signal right after it.
    let mut signals = Signals::new([SIGHUP, SIGTERM, SIGINT, SIGUSR1])?;
    let mut server = Server::start(&cfg)?;
    if let Some(addr) = cfg.admin {
        let bound = admin::start(addr, server.stats_reader(), server.started())?;
        say(&format!("admin {bound}"));
    }

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

    for sig in signals.forever() {
        match sig {
            SIGHUP => {
                if let Some(new) = reload(&mut server, args, &cfg) {
                    cfg = new;
                }
            }
            SIGUSR1 => {
                if !server.reopen_log() {
                    eprintln!("wsplice: SIGUSR1: no access log is configured; nothing to reopen");
                }
            }
            _ => {
                let grace = cfg.timeouts.drain;
                eprintln!(
                    "wsplice: stopping: no new connections; open tunnels may run {grace:?} (timeouts.drain); send the signal again to stop at once"
                );
                server.drain(std::time::Instant::now() + grace);
                // A second SIGTERM/SIGINT ends the process without waiting.
                std::thread::spawn(move || {
                    if signals.forever().any(|s| s == SIGTERM || s == SIGINT) {
                        eprintln!("wsplice: second stop signal: exiting now");
                        std::process::exit(0);
                    }
                });
                server.join();
                eprintln!("wsplice: stopped");
                return Ok(());
            }
        }
    }
    server.join();
    Ok(())
}

/// One flushed stdout line (tests and scripts read them); a closed stdout is not an error.
fn say(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

/// SIGHUP: reads the file again and applies it to new connections. A bad file changes nothing.
fn reload(server: &mut Server, args: &Args, running: &Config) -> Option<Config> {
    let Some(path) = &args.config else {
        eprintln!("wsplice: SIGHUP: started without --config, nothing to reload");
        return None;
    };
    let mut cfg = match load(args) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!(
                "wsplice: reload of {} failed, still serving the previous configuration: {e}",
                path.display()
            );
            say("reload failed");
            return None;
        }
    };
    if cfg.workers.is_some() && cfg.workers != running.workers {
        eprintln!(
            "wsplice: reload: `workers` changes need a restart; keeping {}",
            server.workers()
        );
    }
    if cfg.admin != running.admin {
        eprintln!("wsplice: reload: `admin` changes need a restart");
    }
    cfg.workers = Some(server.workers());
    match server.reload(&cfg) {
        Ok(listen) => {
            for (_, bound) in listen {
                say(&format!("listen {bound} workers={}", server.workers()));
            }
            eprintln!(
                "wsplice: reloaded {}: {} routes",
                path.display(),
                cfg.routes.len()
            );
            say("reloaded");
            Some(cfg)
        }
        Err(e) => {
            eprintln!(
                "wsplice: reload of {} failed, still serving the previous configuration: {e}",
                path.display()
            );
            say("reload failed");
            None
        }
    }
}
