//! `wsplice`: command line, configuration, start-up report.
//!
//! ```text
//! wsplice --config wsplice.toml                      run from a file
//! wsplice --listen 127.0.0.1:8000 --route /notice=127.0.0.1:50001,127.0.0.1:50002
//! wsplice --tls-listen 0.0.0.0:443 --cert site.pem --key site.key --route /ws=127.0.0.1:9001
//! wsplice --check --config wsplice.toml              validate and exit, like `nginx -t`
//! wsplice import nginx /etc/nginx/nginx.conf         print the equivalent TOML (also `apache`)
//! ```
//!
//! On start it prints, to stdout and one flushed line at a time (tests and scripts parse these):
//!
//! ```text
//! listen 127.0.0.1:8000 workers=2
//! listen 127.0.0.1:8443 workers=2 tls
//! tls cert /etc/wsplice/site.pem names=example.com,*.example.com
//! route /notice -> 127.0.0.1:50001 strip_prefix=true
//! route /msg host=example.com -> 127.0.0.1:50002,127.0.0.1:50003 strip_prefix=true
//! cpus: 2 (affinity: 2 CPUs; no cgroup CPU quota); workers = 2 (one per CPU)
//! workers: 2 processes (worker_model = "auto": an open-file limit of 20000 per process holds 9381 tunnels in one process, 18762 in 2 processes of 9381 each)
//! capacity: 18762 connections, 1172 pipes (open-file limit 20000 per process; per worker 9381 connections, 586 pipes; pipes 256 KiB each, up to 32 per worker (a quarter of fs.pipe-user-pages-soft), then 64 KiB, may pin 86 MiB)
//! driver epoll
//! memory: limits.max_memory = 64.0 MiB allows 74 tunnels (37 per worker; ...)   (with a budget)
//! ready
//! ```
//!
//! Exit status: 0 after a clean stop, a passing `--check` or a finished binary upgrade, 1 for a
//! bad configuration or a failed start, 2 for a usage error.
//!
//! `SIGUSR2` upgrades the binary without dropping a tunnel: the file at the path this process
//! was started from is started with the same arguments, takes the listening sockets and every
//! established tunnel, and this process exits (see `wsplice::driver::upgrade`). On stdout the
//! old process says `upgraded pid=NEW` once the new one serves (the new one prints its own
//! start-up lines and `ready`), or `upgrade failed` (stderr says why; nothing changed).

use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook::iterator::Signals;
use std::ffi::OsString;
use std::time::{Duration, Instant};
use wsplice::config::{
    Config, ConfigError, DriverMode, RelayMode, Resolved, TlsFlags, WorkerModel,
};
use wsplice::core::relay::CloseReason;
use wsplice::driver::supervisor::{Event, Spawn, Supervisor};
use wsplice::driver::upgrade::{self, Inherited};
use wsplice::driver::{self, admin, process, Server, StatsReader};
use wsplice::sys::cpus::Cpus;
use wsplice::sys::limits;

// The toy backends of `wsplice demo` live with the binary: the library has no use for a
// WebSocket implementation of its own. Gateway builds leave it out (cargo feature `demo`).
mod args;
#[cfg(feature = "demo")]
mod demo;
mod import_cmd;
mod names;
mod reload;
mod report;
mod upgrading;

use args::{Args, Cmd, DriverArg, RelayArg};
use import_cmd::ImportFrom;
use names::{Events, Main, Names};
use reload::reload;

use report::{announce, stopped, stopping_message, tls_summary, Found};

fn main() -> ExitCode {
    // First, while this is the only thread: the socket of a binary upgrade, if we are the new
    // binary, and our own path, for the next upgrade.
    let inherited = match Inherited::from_env() {
        Ok(i) => i,
        Err(e) => {
            eprintln!("wsplice: error: {} is set but unusable: {e}", upgrade::ENV);
            return ExitCode::FAILURE;
        }
    };
    let args = Args::parse();
    if let Some(id) = args.worker_process {
        let args = Arc::new(args);
        let loader: process::Loader = Box::new(move |text| load_text(&args, text));
        return match process::run(id, loader) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("wsplice: worker {id}: error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Cmd::Import { from, file }) = &args.command {
        return import_cmd::run(*from, file);
    }
    if let Some(Cmd::Demo {
        listen,
        driver,
        relay,
    }) = args.command
    {
        return match run_demo(listen, driver, relay, &args) {
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
                "either --config FILE, or --listen ADDR (or --tls-listen ADDR --cert FILE --key FILE) with --route PREFIX=HOST:PORT, is required",
            )
            .exit();
    }
    let source = match &args.config {
        Some(path) => path.display().to_string(),
        None => "from the command line".to_owned(),
    };
    let (cfg, text) = match load(&args) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("wsplice: error: {e}");
            upgrade::report_failure(&e.to_string());
            if args.check {
                eprintln!("wsplice: configuration {source} test failed");
            }
            return ExitCode::FAILURE;
        }
    };
    if args.check {
        // Certificates and keys are files of their own: each pair must load and match.
        match wsplice::transport::tls::check_files(&cfg.tls) {
            Ok(warnings) => {
                for w in warnings {
                    eprintln!("wsplice: warning: {w}");
                }
            }
            Err(e) => {
                eprintln!("wsplice: error: {e}");
                eprintln!("wsplice: configuration {source} test failed");
                return ExitCode::FAILURE;
            }
        }
        // So is each route's backend_ca.
        if let Err(e) = wsplice::transport::tls::BackendTlsTable::load(&cfg.routes) {
            eprintln!("wsplice: error: {e}");
            eprintln!("wsplice: configuration {source} test failed");
            return ExitCode::FAILURE;
        }
        println!("wsplice: configuration {source} is ok");
        return ExitCode::SUCCESS;
    }
    match run(cfg, text, &args, inherited) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wsplice: error: {e}");
            upgrade::report_failure(&e.to_string());
            ExitCode::FAILURE
        }
    }
}

/// `wsplice demo` in a build without it (the gateway builds): says so.
#[cfg(not(feature = "demo"))]
fn run_demo(
    _listen: SocketAddr,
    _driver: Option<DriverArg>,
    _relay: Option<RelayArg>,
    _args: &Args,
) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "this binary is built without `wsplice demo` (cargo feature `demo`, left out of the gateway builds); run the demo from a default build (cargo run --release -- demo)",
    ))
}

/// `wsplice demo`: the classic setup, self-contained.
#[cfg(feature = "demo")]
fn run_demo(
    listen: SocketAddr,
    driver: Option<DriverArg>,
    relay: Option<RelayArg>,
    args: &Args,
) -> io::Result<()> {
    let (notice, echo) = demo::start_demo_backends()?;
    let page = demo::start_demo_page()?;
    let routes = [
        format!("/notice={notice}"),
        format!("/msg={echo}"),
        format!("/={page}"),
    ];
    let mut cfg = Config::from_cli(vec![listen], &routes, None, None)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    // `wsplice demo --driver uring --relay copy` tries the demo under another driver/relay.
    if let Some(d) = driver {
        cfg.driver = d.into();
    }
    if let Some(r) = relay {
        cfg.relay.mode = r.into();
    }
    // The demo backends are threads of this process: worker processes could not reach them
    // through a re-run of `demo`.
    cfg.worker_model = WorkerModel::Threads;
    eprintln!(
        "wsplice demo: /notice pushes a notice every second, /msg echoes what you send.\n\
         Open http://{listen}/ in a browser: the page shows both, live.\n\
         Or from a browser console on any page:\n  \
         let ws = new WebSocket(\"ws://{listen}/notice\"); ws.onmessage = e => console.log(e.data)\n  \
         let m = new WebSocket(\"ws://{listen}/msg\"); m.onopen = () => m.send(\"hello\"); m.onmessage = e => console.log(e.data)\n\
         or with websocat: websocat ws://{listen}/msg\n\
         Ctrl-C stops it."
    );
    run(cfg, None, args, None)
}

/// The configuration from the file or the flags, with `--workers`, `--relay` and
/// `--worker-model` applied; and the file's text, which worker processes parse in turn.
fn load(args: &Args) -> Result<(Config, Option<String>), ConfigError> {
    match &args.config {
        Some(path) => {
            let (mut cfg, text) = Config::load_with_text(path)?;
            overrides(args, &mut cfg);
            Ok((cfg, Some(text)))
        }
        None => load_text(args, None).map(|cfg| (cfg, None)),
    }
}

/// The configuration from `text` (as read by the supervisor) or, without one, from the flags.
fn load_text(args: &Args, text: Option<&str>) -> Result<Config, ConfigError> {
    let mut cfg = match (text, &args.config) {
        (Some(text), path) => {
            let file = path
                .as_ref()
                .map_or_else(|| "configuration".into(), |p| p.display().to_string());
            Config::from_toml_str(text, &file)?
        }
        (None, _) => {
            let tls = TlsFlags {
                listen: args.tls_listen.clone(),
                certs: args.cert.clone(),
                keys: args.key.clone(),
                redirect: args.redirect_listen.clone(),
            };
            Config::from_cli_with_tls(
                args.listen.clone(),
                tls,
                &args.route,
                args.workers.map(usize::from),
                args.relay.map(RelayMode::from),
            )?
        }
    };
    overrides(args, &mut cfg);
    Ok(cfg)
}

fn overrides(args: &Args, cfg: &mut Config) {
    if let Some(n) = args.workers {
        cfg.workers = Some(usize::from(n));
    }
    if let Some(mode) = args.relay {
        cfg.relay.mode = mode.into();
    }
    if let Some(model) = args.worker_model {
        cfg.worker_model = model.into();
    }
    if let Some(d) = args.driver {
        cfg.driver = d.into();
    }
}

/// What `main` needs of a running proxy, whichever the worker model.
trait Running {
    fn workers(&self) -> usize;
    /// The `tls cert FILE names=...` lines of the certificates `cfg` serves.
    fn tls_summary(&self, cfg: &Config) -> io::Result<Vec<String>>;
    /// Applies `cfg` (its backend names as `resolved` says) to new connections.
    fn reload(
        &mut self,
        cfg: &Config,
        text: Option<String>,
        resolved: &Resolved,
    ) -> io::Result<Vec<(SocketAddr, SocketAddr)>>;
    fn reopen_log(&self) -> bool;
}

impl Running for Server {
    fn workers(&self) -> usize {
        Server::workers(self)
    }
    fn tls_summary(&self, _: &Config) -> io::Result<Vec<String>> {
        Ok(self.tls().map(|t| t.summary.clone()).unwrap_or_default())
    }
    fn reload(
        &mut self,
        cfg: &Config,
        _: Option<String>,
        resolved: &Resolved,
    ) -> io::Result<Vec<(SocketAddr, SocketAddr)>> {
        Server::reload(self, &cfg.resolved(resolved))
    }
    fn reopen_log(&self) -> bool {
        Server::reopen_log(self)
    }
}

struct Processes {
    sup: Supervisor,
    nofile: u64,
}

impl Running for Processes {
    fn workers(&self) -> usize {
        self.sup.workers()
    }
    fn tls_summary(&self, cfg: &Config) -> io::Result<Vec<String>> {
        tls_summary(cfg)
    }
    fn reload(
        &mut self,
        cfg: &Config,
        text: Option<String>,
        resolved: &Resolved,
    ) -> io::Result<Vec<(SocketAddr, SocketAddr)>> {
        // The worker processes parse the text and fill the names in from this table.
        self.sup.set_resolved(resolved.clone());
        self.sup.reload(cfg, text, self.nofile)
    }
    fn reopen_log(&self) -> bool {
        self.sup.reopen_log()
    }
}

/// The start-up line naming the driver the workers run (and, for io_uring, its buffers).
fn driver_line(chosen: driver::Chosen, cfg: &Config) -> String {
    match chosen {
        driver::Chosen::Epoll => "driver epoll".to_owned(),
        driver::Chosen::Uring(setup) => {
            let u = &cfg.uring;
            let count = u.buffer_count() as usize;
            format!(
                "driver uring ({}): {count} buffers of {} KiB per worker, {} KiB fixed (uring.buffer_memory); {}",
                setup.as_str(),
                u.buffer_size / 1024,
                count * u.buffer_size / 1024,
                driver::uring::multishot_note(u)
            )
        }
    }
}

fn run(
    mut cfg: Config,
    mut text: Option<String>,
    args: &Args,
    inherited: Option<Inherited>,
) -> io::Result<()> {
    let exe = upgrade::exe_path();
    let (soft, _hard) = match limits::raise_nofile_limit() {
        Ok(limit) => limit,
        Err(e) => {
            eprintln!("wsplice: warning: cannot raise the open-file limit: {e}");
            limits::nofile_limit()?
        }
    };
    let cpus = Cpus::of_this_process();
    let cpus_line = match cfg.workers {
        Some(n) => format!("cpus: {cpus}; workers = {n} as configured"),
        None => {
            cfg.workers = Some(cpus.count());
            format!("cpus: {cpus}; workers = {} (one per CPU)", cpus.count())
        }
    };
    let choice = driver::choose_model(&cfg, soft);
    // Signals are caught from here on, before `ready`, so a script may signal right after it.
    let mut signals = Signals::new([SIGHUP, SIGTERM, SIGINT, SIGUSR1, SIGUSR2])?;
    if choice.model == WorkerModel::Processes {
        // Resolved here, once (`auto` says why it fell back once, not once per worker); every
        // worker process runs what the supervisor tells it.
        let chosen = driver::choose_driver(&cfg)?;
        cfg.driver = match chosen {
            driver::Chosen::Epoll => DriverMode::Epoll,
            driver::Chosen::Uring(_) => DriverMode::Uring,
        };
        let driver_line = driver_line(chosen, &cfg);
        let (tx, rx) = std::sync::mpsc::channel();
        let to_sup = std::sync::Mutex::new(tx.clone());
        let mut names = Names::start(
            &cfg,
            Arc::new(move |t| {
                if let Ok(tx) = to_sup.lock() {
                    let _ = tx.send(Event::Resolved(t));
                }
            }),
        )?;
        let forward = tx.clone();
        std::thread::Builder::new()
            .name("wsplice-signals".into())
            .spawn(move || {
                for sig in signals.forever() {
                    if forward.send(Event::Signal(sig)).is_err() {
                        return;
                    }
                }
            })?;
        // The workers run this binary with the same arguments, so they read the same flags.
        let worker_args: Vec<OsString> = std::env::args_os().skip(1).collect();
        // Certificates are checked before any worker starts: a bad file fails the start here,
        // named, not in every worker.
        let certs = tls_summary(&cfg)?;
        // A binary upgrade passes the old process's listening sockets.
        let passed = match &inherited {
            Some(i) => i.listeners()?,
            None => Vec::new(),
        };
        let sup = Supervisor::start(
            &cfg,
            text.clone(),
            Spawn::this_binary(worker_args),
            (tx, rx),
            soft,
            names.table.clone(),
            passed,
        )?;
        announce(
            &cfg,
            &sup.local_addrs(),
            Found {
                tls_summary: &certs,
                driver_line: &driver_line,
                cpus_line: &cpus_line,
            },
            sup.stats_reader(),
            &choice,
            soft,
        )?;
        if let Some(i) = inherited {
            upgrading::receive_processes(i, &sup)?;
        }
        let mut running = Processes { sup, nofile: soft };
        let mut stopping = false;
        while let Some(sig) = running.sup.next_signal() {
            match sig {
                SIGHUP => reload(&mut running, args, &mut cfg, &mut text, &mut names),
                SIGUSR1 => reopen(&running),
                SIGUSR2 if stopping => {
                    eprintln!("wsplice: SIGUSR2 while stopping: ignored");
                }
                SIGUSR2 => {
                    if upgrading::binary_upgrade_processes(&mut running.sup, &exe, &cfg) {
                        return Ok(());
                    }
                }
                _ if stopping => {
                    eprintln!("wsplice: second stop signal: exiting now");
                    // The workers see their control socket close and stop at once.
                    std::process::exit(0);
                }
                _ => {
                    stopping = true;
                    stopping_message(cfg.timeouts.drain);
                    running.sup.drain(cfg.timeouts.drain);
                }
            }
        }
        let closed = running.sup.stats_reader().read().closed(CloseReason::Drain);
        stopped(closed);
        return Ok(());
    }

    // Signals and new backend addresses, in the order they come.
    let mut events = Events::new(signals);
    let mut names = Names::start(&cfg, events.notify())?;
    let mut server = upgrading::start_threads(&cfg.resolved(&names.table), inherited.as_ref())?;
    let certs = server.tls().map(|t| t.summary.clone()).unwrap_or_default();
    let driver_line = driver_line(server.driver(), &cfg);
    announce(
        &cfg,
        &server.local_addrs(),
        Found {
            tls_summary: &certs,
            driver_line: &driver_line,
            cpus_line: &cpus_line,
        },
        server.stats_reader(),
        &choice,
        soft,
    )?;
    if let Some(i) = inherited {
        upgrading::receive(i, &server)?;
    }
    while let Some(ev) = events.next(names.running()) {
        match ev {
            Main::Signal(SIGHUP) => reload(&mut server, args, &mut cfg, &mut text, &mut names),
            Main::Signal(SIGUSR1) => reopen(&server),
            Main::Signal(SIGUSR2) => {
                if upgrading::binary_upgrade(&mut server, &exe, &cfg) {
                    return Ok(());
                }
            }
            Main::Resolved(table) => {
                // The same configuration with the new addresses: a reload without the file.
                match Running::reload(&mut server, &cfg, text.clone(), &table) {
                    Ok(_) => names.table = table,
                    Err(e) => eprintln!(
                        "wsplice: dns: the workers did not take the new backend addresses: {e}"
                    ),
                }
            }
            Main::Signal(_) => {
                let grace = cfg.timeouts.drain;
                stopping_message(grace);
                server.drain(Instant::now() + grace);
                // A second SIGTERM/SIGINT ends the process without waiting.
                std::thread::spawn(move || {
                    let stop = |e: &Main| matches!(e, Main::Signal(SIGTERM | SIGINT));
                    let merged = names.running();
                    if std::iter::from_fn(|| events.next(merged)).any(|e| stop(&e)) {
                        eprintln!("wsplice: second stop signal: exiting now");
                        std::process::exit(0);
                    }
                });
                server.join();
                let closed = server.stats().closed(CloseReason::Drain);
                stopped(closed);
                return Ok(());
            }
        }
    }
    server.join();
    Ok(())
}

fn reopen(running: &dyn Running) {
    if !running.reopen_log() {
        eprintln!("wsplice: SIGUSR1: no access log is configured; nothing to reopen");
    }
}

/// One flushed stdout line (tests and scripts read them); a closed stdout is not an error.
fn say(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}
