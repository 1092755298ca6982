//! The command line (clap): flags, subcommands and the value enums they map to.

use super::*;

/// A WebSocket reverse proxy: strict upgrade handshakes, then a splice(2) relay.
#[derive(Debug, Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
pub(crate) struct Args {
    #[command(subcommand)]
    pub(crate) command: Option<Cmd>,

    /// Configuration file (TOML).
    #[arg(
        long,
        short,
        value_name = "FILE",
        conflicts_with_all = ["listen", "tls_listen", "cert", "key", "route", "redirect_listen"]
    )]
    pub(crate) config: Option<PathBuf>,

    /// Address to listen on, such as 127.0.0.1:8000 (repeatable; instead of --config).
    #[arg(long, value_name = "ADDR", requires = "route", group = "listeners")]
    pub(crate) listen: Vec<SocketAddr>,

    /// Address to listen on for TLS (wss://), such as 0.0.0.0:443 (repeatable; needs --cert and
    /// --key; instead of --config).
    #[arg(long, value_name = "ADDR", requires = "route", group = "listeners")]
    pub(crate) tls_listen: Vec<SocketAddr>,

    /// Certificate chain for --tls-listen, PEM, leaf first (repeatable: pairs with --key, in
    /// order; the first pair is the default certificate).
    #[arg(long, value_name = "FILE", requires = "key")]
    pub(crate) cert: Vec<PathBuf>,

    /// Private key of the --cert before it, PEM (PKCS#8, PKCS#1 or SEC1; RSA or ECDSA).
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub(crate) key: Vec<PathBuf>,

    /// Plain address that answers every request with a redirect to https on the first
    /// --tls-listen port (repeatable), such as 0.0.0.0:80.
    #[arg(long, value_name = "ADDR", requires = "route")]
    pub(crate) redirect_listen: Vec<SocketAddr>,

    /// Route PREFIX to one or more backends, such as /notice=127.0.0.1:50001,127.0.0.1:50002
    /// (repeatable; instead of --config).
    #[arg(
        long,
        value_name = "PREFIX=HOST:PORT[,HOST:PORT...]",
        requires = "listeners"
    )]
    pub(crate) route: Vec<String>,

    /// Workers (default: one per CPU this process may use: its affinity mask, capped by a cgroup
    /// CPU quota). Overrides the configuration file.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub(crate) workers: Option<u16>,

    /// Run the workers as threads of one process or as a process each (default auto: whichever
    /// holds more tunnels; start-up says which and why). Overrides the configuration file.
    #[arg(long, value_enum, value_name = "MODEL")]
    pub(crate) worker_model: Option<ModelArg>,

    /// Internal: run as worker process N of a supervisor (which passes the control socket as
    /// stdin).
    #[arg(long, value_name = "N", hide = true)]
    pub(crate) worker_process: Option<usize>,

    /// How tunnel bytes are moved. Overrides the configuration file.
    #[arg(long, value_enum, value_name = "MODE")]
    pub(crate) relay: Option<RelayArg>,

    /// The event loop: epoll, io_uring, or io_uring where the kernel allows it. Overrides the
    /// configuration file.
    #[arg(long, value_enum, value_name = "DRIVER")]
    pub(crate) driver: Option<DriverArg>,

    /// Check the configuration and exit: 0 if it is valid, 1 with the error otherwise.
    #[arg(long, short = 't')]
    pub(crate) check: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Cmd {
    /// Try it: the proxy plus two built-in backends, /notice (a notice every second) and /msg
    /// (echo), with nothing else to install.
    Demo {
        /// Where the proxy listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// The event loop, as for the proxy (default epoll).
        #[arg(long, value_enum, value_name = "DRIVER")]
        driver: Option<DriverArg>,
        /// How tunnel bytes are moved, as for the proxy (default auto).
        #[arg(long, value_enum, value_name = "MODE")]
        relay: Option<RelayArg>,
    },
    /// Read an nginx or Apache reverse-proxy configuration (includes followed) and print the
    /// equivalent wsplice TOML on stdout; what has no equivalent is listed as comments.
    Import {
        /// Whose configuration FILE is.
        #[arg(value_enum)]
        from: ImportFrom,
        /// The configuration file, such as /etc/nginx/nginx.conf or
        /// /etc/apache2/sites-enabled/000-default.conf.
        file: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum RelayArg {
    /// Copy small reads, splice bulk reads.
    Auto,
    /// Always splice through a pooled pipe.
    Splice,
    /// Always copy through a buffer.
    Copy,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum ModelArg {
    /// Processes when they hold more tunnels than threads would.
    Auto,
    /// Threads of one process.
    Threads,
    /// One process per worker under a supervisor.
    Processes,
}

impl From<ModelArg> for WorkerModel {
    fn from(arg: ModelArg) -> WorkerModel {
        match arg {
            ModelArg::Auto => WorkerModel::Auto,
            ModelArg::Threads => WorkerModel::Threads,
            ModelArg::Processes => WorkerModel::Processes,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum DriverArg {
    /// epoll: every Linux.
    Epoll,
    /// io_uring: refuse to start where the kernel lacks it or forbids it.
    Uring,
    /// io_uring where available, else epoll.
    Auto,
}

impl From<DriverArg> for DriverMode {
    fn from(arg: DriverArg) -> DriverMode {
        match arg {
            DriverArg::Epoll => DriverMode::Epoll,
            DriverArg::Uring => DriverMode::Uring,
            DriverArg::Auto => DriverMode::Auto,
        }
    }
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
