//! One worker process (started by the [`supervisor`](super::supervisor) as
//! `wsplice ... --worker-process N`): the same worker as a worker thread, driven by epoll or
//! io_uring as the supervisor resolved `driver` (its `init` message says which), on this
//! process's main thread, plus a control thread that turns the supervisor's messages into
//! [`Control`]s and mirrors per-backend counts into shared memory.
//!
//! Signals meant for the whole process group (Ctrl-C in a terminal, systemd's stop) are
//! ignored here: the supervisor decides and tells each worker. If the supervisor itself
//! disappears, the worker closes its connections and exits rather than run unsupervised.

use crate::config::{decode_resolved, Config, ConfigError, Resolved};
use crate::driver::access_log::LogSink;
use crate::driver::epoll::{self, WorkerConfig};
use crate::driver::limiter::{ConnLimiter, IpLimiter};
use crate::driver::routes::RouteSink;
use crate::driver::shared::Shared;
use crate::driver::stats::BackendSnapshot;
use crate::driver::upgrade;
use crate::driver::{
    backend_tls_for, process_params, tls_for, uring, Control, HandOver, Reload, Wake,
};
use crate::sys::{ipc, shm};
use crate::transport::tls::TicketKeys;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Builds the configuration from the supervisor's text (`None`: from this process's own
/// command line, which is the supervisor's).
pub type Loader = Box<dyn Fn(Option<&str>) -> Result<Config, ConfigError> + Send>;

/// How often the control thread refreshes the backend mirror unasked (so a crashed worker's
/// last counts are at most this old).
const MIRROR_EVERY: Duration = Duration::from_secs(1);

fn protocol(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("control message from the supervisor: {what} (--worker-process is for wsplice's own use)"),
    )
}

fn parse_addrs<'a>(words: impl Iterator<Item = &'a str>) -> io::Result<Vec<SocketAddr>> {
    words
        .map(|w| {
            w.parse()
                .map_err(|_| protocol(&format!("bad address {w:?}")))
        })
        .collect()
}

fn text_of(fd: Option<OwnedFd>) -> io::Result<Option<String>> {
    fd.map(|fd| {
        String::from_utf8(shm::read_all(fd)?).map_err(|_| protocol("config text is not UTF-8"))
    })
    .transpose()
}

/// Runs worker `id` until it is drained (or its supervisor is gone).
pub fn run(id: usize, load: Loader) -> io::Result<()> {
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGUSR1,
    ] {
        signal_hook::flag::register(sig, Arc::new(AtomicBool::new(false)))?;
    }
    let ctl = io::stdin().as_fd().try_clone_to_owned()?;
    let (mut buf, mut fds) = (Vec::new(), Vec::new());
    let mut listeners = Vec::new();
    let mut resolved = Resolved::new();
    let (workers, generation, driver) = loop {
        fds.clear();
        if !ipc::recv(&ctl, &mut buf, &mut fds)? {
            return Err(protocol("closed before init"));
        }
        let text = String::from_utf8_lossy(&buf).into_owned();
        let mut words = text.split_whitespace();
        match words.next() {
            Some("listen") => take_listeners(words, &mut fds, &mut listeners)?,
            Some("dns") => resolved = read_resolved(fds.drain(..).next())?,
            Some("init") => {
                let mut num = || -> io::Result<u64> {
                    words
                        .next()
                        .and_then(|w| w.parse().ok())
                        .ok_or_else(|| protocol("bad init"))
                };
                let (got_id, workers, generation) = (num()?, num()?, num()?);
                if got_id != id as u64 {
                    return Err(protocol("init for another worker"));
                }
                // The driver the supervisor resolved (`auto` once, for every worker).
                let driver = match words.next() {
                    Some("uring") => Driven::Uring,
                    Some("epoll") | None => Driven::Epoll,
                    Some(other) => return Err(protocol(&format!("unknown driver {other:?}"))),
                };
                break (workers as usize, generation, driver);
            }
            _ => return Err(protocol(&format!("unexpected {text:?}"))),
        }
    };
    let mut fds = std::mem::take(&mut fds).into_iter();
    let map = shm::SharedMap::attach(fds.next().ok_or_else(|| protocol("no shared memory"))?)?;
    let shared = Arc::new(Shared::attach(map)?);
    if id >= shared.layout().workers || shared.layout().workers != workers {
        return Err(protocol("worker id outside the shared layout"));
    }
    let text = text_of(fds.next())?;
    let cfg = configure(&load, text.as_deref(), workers, &resolved)?;
    let (log, log_thread) = match &cfg.access_log {
        Some(a) => {
            let (sink, thread) = LogSink::start(a)?;
            (Some(sink), Some(thread))
        }
        None => (None, None),
    };
    let backends: BackendSnapshot = Arc::new(Mutex::new(Vec::new()));
    // Every worker derives its ticket keys from the supervisor's bytes: a client resumes its TLS
    // session on whichever worker it reaches, across reloads and restarts.
    let tickets = Arc::new(TicketKeys::from_bytes(shared.ticket_key()));
    let tls = tls_for(&cfg, &tickets)?;
    let (tx, rx) = channel();
    let wc = WorkerConfig {
        id,
        params: process_params(&cfg, (shared.clone(), id), tls, backend_tls_for(&cfg)?),
        listeners,
        published: Arc::new(shared.published(id)),
        control: rx,
        limiter: Arc::new(IpLimiter::shared(shared.clone(), id)),
        total: Arc::new(ConnLimiter::shared(shared.clone(), id)),
        log: log.clone(),
        published_backends: backends.clone(),
        started: None,
        published_routes: RouteSink::Shared(shared.clone(), id),
    };
    let (worker, waker) = match driver {
        Driven::Epoll => {
            let w = epoll::Worker::new(wc)?;
            let k = Wake::Epoll(w.waker());
            (Running::Epoll(Box::new(w)), k)
        }
        Driven::Uring => {
            let w = uring::Worker::new(wc, &cfg.uring)?;
            let k = Wake::Uring(w.waker());
            (Running::Uring(Box::new(w)), k)
        }
    };
    // The control thread's handle on the log is taken back when the worker stops, so the
    // logger sees every handle gone, writes what is queued and ends.
    // Listening since Worker::new: clients wait in the backlog until the loop runs, just below.
    ipc::send(&ctl, b"ready", &[])?;
    let ctl_log = Arc::new(Mutex::new(log));
    let handing: Handing = Arc::default();
    let control = ControlThread {
        handing: handing.clone(),
        id,
        ctl,
        tx,
        waker,
        log: ctl_log.clone(),
        shared,
        tickets,
        backends,
        load,
        generation,
        workers,
        resolved,
    };
    std::thread::Builder::new()
        .name("wsplice-control".into())
        .spawn(move || control.run())?;
    // The io_uring worker builds its ring here, on the thread that submits to it.
    let result = match worker {
        Running::Epoll(w) => w.run(),
        Running::Uring(w) => w.run(),
    };
    // A binary upgrade: the last batches are still on their way to the new process.
    let sending = handing.lock().ok().and_then(|mut h| h.take());
    if let Some(t) = sending {
        let _ = t.join();
    }
    if let Ok(mut l) = ctl_log.lock() {
        *l = None;
    }
    if let Some(t) = log_thread {
        let _ = t.join();
    }
    result
}

/// Which driver runs this worker process.
enum Driven {
    Epoll,
    Uring,
}

/// This process's worker, under its driver (boxed: one per process, and the two differ in
/// size, the more so in builds without the io_uring driver).
enum Running {
    Epoll(Box<epoll::Worker>),
    Uring(Box<uring::Worker>),
}

/// The configuration as the supervisor runs it: its worker count, whatever the text says (a
/// changed `workers` needs a restart), and its backend names resolved as the supervisor's
/// resolver last found them.
fn configure(
    load: &Loader,
    text: Option<&str>,
    workers: usize,
    resolved: &Resolved,
) -> io::Result<Config> {
    let mut cfg = load(text).map_err(|e| io::Error::other(e.to_string()))?;
    cfg.workers = Some(workers);
    Ok(cfg.resolved(resolved))
}

/// The table of a `dns` message.
fn read_resolved(fd: Option<OwnedFd>) -> io::Result<Resolved> {
    let text = text_of(fd)?.ok_or_else(|| protocol("dns without its table"))?;
    Ok(decode_resolved(&text))
}

fn take_listeners<'a>(
    words: impl Iterator<Item = &'a str>,
    fds: &mut Vec<OwnedFd>,
    into: &mut Vec<(SocketAddr, TcpListener)>,
) -> io::Result<()> {
    let addrs = parse_addrs(words)?;
    if addrs.len() != fds.len() {
        return Err(protocol("listen: addresses and sockets differ in number"));
    }
    into.extend(addrs.into_iter().zip(fds.drain(..).map(TcpListener::from)));
    Ok(())
}

/// The thread sending this worker's tunnels to the new process in a binary upgrade.
type Handing = Arc<Mutex<Option<std::thread::JoinHandle<()>>>>;

struct ControlThread {
    handing: Handing,
    id: usize,
    ctl: OwnedFd,
    tx: Sender<Control>,
    waker: Wake,
    log: Arc<Mutex<Option<LogSink>>>,
    shared: Arc<Shared>,
    tickets: Arc<TicketKeys>,
    backends: BackendSnapshot,
    load: Loader,
    generation: u64,
    workers: usize,
    /// What backend names resolve to (the supervisor's last `dns`).
    resolved: Resolved,
}

impl ControlThread {
    fn run(mut self) {
        let id = self.id;
        if let Err(e) = ipc::set_timeout(&self.ctl, Some(MIRROR_EVERY)) {
            eprintln!("wsplice: worker {id}: control socket: {e}");
        }
        let (mut buf, mut fds) = (Vec::new(), Vec::new());
        let mut pending = Vec::new();
        loop {
            fds.clear();
            match ipc::recv(&self.ctl, &mut buf, &mut fds) {
                Ok(true) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    self.mirror();
                    continue;
                }
                Ok(false) | Err(_) => {
                    eprintln!("wsplice: worker {id}: the supervisor is gone; closing this worker's connections and exiting");
                    self.control(Control::Drain(Instant::now()));
                    return;
                }
            }
            let text = String::from_utf8_lossy(&buf).into_owned();
            let mut words = text.split_whitespace();
            let result = match words.next() {
                Some("listen") => take_listeners(words, &mut fds, &mut pending),
                Some("dns") => read_resolved(fds.drain(..).next()).map(|r| self.resolved = r),
                Some("reload") => {
                    let answer = self.reload(words, fds.drain(..).next(), &mut pending);
                    ipc::send(&self.ctl, answer.as_bytes(), &[])
                }
                Some("drain") => {
                    let ms = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
                    self.control(Control::Drain(Instant::now() + Duration::from_millis(ms)));
                    Ok(())
                }
                Some("reopen") => {
                    if let Some(l) = self.log.lock().ok().as_ref().and_then(|l| l.as_ref()) {
                        l.reopen();
                    }
                    Ok(())
                }
                Some("mirror") => {
                    self.mirror();
                    Ok(())
                }
                Some("handover") => {
                    let ms = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
                    match fds.drain(..).next() {
                        Some(sock) => self.hand_over(Duration::from_millis(ms), sock),
                        None => Err(protocol("handover without its socket")),
                    }
                }
                Some("adopt") => match fds.drain(..).next() {
                    Some(sock) => self.adopt(sock),
                    None => Err(protocol("adopt without its socket")),
                },
                _ => Err(protocol(&format!("unexpected {text:?}"))),
            };
            if let Err(e) = result {
                eprintln!("wsplice: worker {id}: {e}");
            }
        }
    }

    fn control(&self, msg: Control) {
        if self.tx.send(msg).is_ok() {
            let _ = self.waker.wake();
        }
    }

    /// A binary upgrade (old side): the worker stops accepting and hands its tunnels over;
    /// a thread sends them on `sock`, then reports to the supervisor what went.
    fn hand_over(&self, drain: Duration, sock: OwnedFd) -> io::Result<()> {
        let (out, batches) = channel();
        let abort: upgrade::Abort = Arc::default();
        let started = Instant::now();
        let report = self.ctl.try_clone()?;
        let thread_abort = abort.clone();
        let t = std::thread::Builder::new()
            .name("wsplice-handover".into())
            .spawn(move || {
                let done = upgrade::send_batches(
                    &sock,
                    "the new process",
                    batches,
                    &thread_abort,
                    started,
                );
                let _ = ipc::send(&report, done.to_line().as_bytes(), &[]);
            })?;
        if let Ok(mut h) = self.handing.lock() {
            *h = Some(t);
        }
        self.control(Control::HandOver(HandOver {
            out,
            abort,
            until: started + drain,
        }));
        Ok(())
    }

    /// A binary upgrade (new side): tunnels the old process's workers send on `sock` join
    /// this worker.
    fn adopt(&self, sock: OwnedFd) -> io::Result<()> {
        let (tx, waker, id) = (self.tx.clone(), self.waker.clone(), self.id);
        std::thread::Builder::new()
            .name("wsplice-adopt".into())
            .spawn(move || {
                let started = Instant::now();
                let n = upgrade::Receiving::from(sock).run(|batch| {
                    if tx.send(Control::Adopt(batch)).is_ok() {
                        let _ = waker.wake();
                    }
                });
                if n > 0 {
                    // One write: the old process logs on the same stderr at the same moment.
                    let line = format!(
                        "wsplice: worker {id}: upgrade: took over {n} tunnels in {:.1} ms\n",
                        started.elapsed().as_secs_f64() * 1e3
                    );
                    eprint!("{line}");
                }
            })?;
        Ok(())
    }

    fn mirror(&self) {
        let list = self.backends.lock().map(|b| b.clone()).unwrap_or_default();
        self.shared.mirror_backends(self.id, &list);
    }

    /// Applies `reload GENERATION [REMOVED...]`; the answer for the supervisor.
    fn reload<'a>(
        &self,
        mut words: impl Iterator<Item = &'a str>,
        config: Option<OwnedFd>,
        pending: &mut Vec<(SocketAddr, TcpListener)>,
    ) -> String {
        let generation = words
            .next()
            .and_then(|w| w.parse::<u64>().ok())
            .unwrap_or(self.generation);
        let cfg = parse_addrs(words).and_then(|remove| {
            let text = text_of(config)?;
            let cfg = configure(&self.load, text.as_deref(), self.workers, &self.resolved)?;
            let tls = (tls_for(&cfg, &self.tickets)?, backend_tls_for(&cfg)?);
            Ok((remove, cfg, tls))
        });
        let (remove, cfg, (tls, backend_tls)) = match cfg {
            Ok(x) => x,
            Err(e) => return format!("failed {generation} {e}"),
        };
        let (applied, done) = channel();
        self.control(Control::Reload(Box::new(Reload {
            params: process_params(&cfg, (self.shared.clone(), self.id), tls, backend_tls),
            add: std::mem::take(pending),
            remove,
            applied,
        })));
        match done.recv_timeout(Duration::from_secs(5)) {
            Ok(_) => format!("applied {generation}"),
            Err(_) => format!(
                "failed {generation} the event loop did not take the new configuration within 5 s"
            ),
        }
    }
}
