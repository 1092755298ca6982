//! Worker processes: the process the operator starts supervises one process per worker.
//!
//! ```text
//!   supervisor (the PID to signal)                      worker process N (one each)
//!   ├─ parses, validates, binds every listener ──fds──▶ its own SO_REUSEPORT sockets
//!   ├─ shared memory (memfd) ─────────────────fd────▶ limits, counters, backend mirror
//!   ├─ SIGHUP: config text (sealed memfd) ──seqpacket─▶ control thread ─▶ Control::Reload
//!   ├─ SIGTERM: drain; SIGUSR1: reopen ─────────────▶                    Control::Drain ...
//!   ├─ admin /metrics, /status: sums shared memory     epoll Worker on the main thread
//!   └─ a worker died: reclaims its counts, restarts it (same sockets, so no accept is lost)
//! ```
//!
//! A worker process is this same binary started as `/proc/self/exe ... --worker-process N`
//! (the running binary even if its file was replaced), its control socket as stdin. Listeners,
//! the shared memory and the configuration text travel over that socket (`SCM_RIGHTS`), so
//! nothing else is inherited. The supervisor keeps every listener open: while a dead worker is
//! being replaced, clients the kernel hashed to its socket wait in that socket's backlog and are
//! served by the replacement milliseconds later; the other workers accept as before.
//!
//! Control messages are one line of text each: `listen ADDR...` (with one listener per address),
//! `init ID WORKERS GENERATION DRIVER` (shared memory, then the config text if any), `reload GENERATION
//! [ADDR...]` (addresses to stop listening on; the config text attached), `dns` (before `init`
//! and `reload`: what backend names resolved to, as a sealed memfd), `drain MILLIS`,
//! `reopen`, `mirror`; answers `ready`, `applied GENERATION`, `failed GENERATION WHY`.

use crate::config::{encode_resolved, Config, Resolved};
use crate::driver::health::Health;
use crate::driver::shared::{Layout, Shared};
use crate::driver::{bind_all, process_capacity, StatsReader};
use crate::sys::{ipc, shm};
use crate::transport::tls::TicketKeys;
use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod board;
mod upgrade;

pub use board::Board;

/// How long a worker may take to start, or to confirm a reload.
const CONFIRM: Duration = Duration::from_secs(5);
/// A worker that dies sooner than this after starting is restarted after a growing pause, so a
/// worker that cannot start does not spin the machine.
const CRASH_LOOP: Duration = Duration::from_secs(1);

/// How to start a worker process: this binary with the supervisor's own arguments.
#[derive(Debug, Clone)]
pub struct Spawn {
    pub program: PathBuf,
    pub args: Vec<OsString>,
}

impl Spawn {
    /// The running binary (`/proc/self/exe`: still the right one after a package upgrade
    /// replaced the file) with these arguments; `--worker-process N` is added per worker.
    pub fn this_binary(args: Vec<OsString>) -> Spawn {
        Spawn {
            program: PathBuf::from("/proc/self/exe"),
            args,
        }
    }
}

/// What the supervisor waits on.
#[derive(Debug)]
pub enum Event {
    /// A signal for the supervisor (forwarded by the caller's signal thread).
    Signal(i32),
    /// A line from worker `id`'s process number `seq`.
    Message { id: usize, seq: u64, text: String },
    /// Worker `id`'s process number `seq` ended.
    Exited {
        id: usize,
        seq: u64,
        status: io::Result<ExitStatus>,
    },
    /// Backend names resolved to new addresses (from the resolver thread): applied like a
    /// reload of the same configuration.
    Resolved(Resolved),
}

/// One configured listen address: the bound address and one socket per worker, kept by the
/// supervisor for as long as the address is configured.
struct Listen {
    want: SocketAddr,
    bound: SocketAddr,
    socks: Vec<TcpListener>,
}

struct Slot {
    /// Which process of this worker (increases with each start).
    seq: u64,
    pid: u32,
    ctl: Option<Arc<OwnedFd>>,
    alive: bool,
    ready: bool,
    started: Instant,
    fast_crashes: u32,
    restart_at: Option<Instant>,
}

/// The running supervisor.
pub struct Supervisor {
    /// Backend checks, ejections and drains (the workers read the shared health table).
    health: Health,
    cfg: Config,
    /// The driver every worker process runs: `cfg.driver` as the caller resolved it at start
    /// (`auto` resolved once; a reload does not change it).
    driver: &'static str,
    text: Option<String>,
    /// What the configuration's backend names resolve to (sent to every worker process).
    resolved: Resolved,
    /// The open-file limit, for capacity on reloads.
    nofile: u64,
    generation: u64,
    listen: Vec<Listen>,
    shared: Arc<Shared>,
    board: Arc<Board>,
    slots: Vec<Slot>,
    spawn: Spawn,
    events: Receiver<Event>,
    tx: Sender<Event>,
    pending: VecDeque<Event>,
    stopping: bool,
    /// A binary upgrade under way: what the workers reported handing over so far.
    handed: Option<crate::driver::upgrade::HandedOver>,
}

fn worker_count(cfg: &Config) -> usize {
    cfg.workers.unwrap_or(1).max(1)
}

/// How a worker process ended, for the log.
fn describe(status: &io::Result<ExitStatus>) -> String {
    match status {
        Ok(st) => match (st.signal(), st.code()) {
            (Some(sig), _) => {
                let name = nix::sys::signal::Signal::try_from(sig)
                    .map(|s| s.as_str().to_owned())
                    .unwrap_or_else(|_| "?".into());
                format!("was killed by signal {sig} ({name})")
            }
            (None, Some(code)) => format!("exited with status {code}"),
            (None, None) => "ended".into(),
        },
        Err(e) => format!("could not be waited for ({e})"),
    }
}

impl Supervisor {
    /// Binds every listener, creates the shared memory and starts one process per worker;
    /// returns once all of them accept. `text` is the configuration file's text (`None`: the
    /// configuration came from the command line, which the workers parse themselves).
    /// `inherited`: the listening sockets a binary upgrade passed (configured address,
    /// socket), taken instead of binding anew (more are bound if there are more workers).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        cfg: &Config,
        text: Option<String>,
        spawn: Spawn,
        events: (Sender<Event>, Receiver<Event>),
        nofile: u64,
        resolved: Resolved,
        mut inherited: Vec<(SocketAddr, TcpListener)>,
    ) -> io::Result<Supervisor> {
        let workers = worker_count(cfg);
        let mut listen = Vec::new();
        for want in cfg.all_listen() {
            let (bound, socks) =
                match crate::driver::upgrade::take_passed(&mut inherited, want, workers, cfg)? {
                    Some(passed) => passed,
                    None => bind_all(want, workers, cfg)?,
                };
            listen.push(Listen { want, bound, socks });
        }
        for (want, _) in &inherited {
            eprintln!(
                "wsplice: upgrade: the old process listened on {want}, which this configuration does not: closed"
            );
        }
        let (per, total) = process_capacity(cfg, nofile);
        let shared = Arc::new(Shared::create(Layout::new(workers, per.max_connections))?);
        let (ticket_key, _) = TicketKeys::generate()
            .map_err(|_| io::Error::other("the system random generator failed (getrandom)"))?;
        shared.set_ticket_key(ticket_key);
        shared.set_max_connections(total.max_connections);
        shared.set_ip_limit(cfg.limits.max_connections_per_ip);
        let board = Arc::new(Board::new(shared.clone(), workers));
        let now = Instant::now();
        let (tx, rx) = events;
        let health = Health::start(cfg, shared.clone())?;
        // State changes go to the access log too, written from here (O_APPEND, whole lines).
        if let Some(a) = &cfg.access_log {
            health.set_log(Some(crate::driver::access_log::LogSink::start(a)?.0));
        }
        let mut sup = Supervisor {
            health,
            cfg: cfg.clone(),
            driver: match cfg.driver {
                crate::config::DriverMode::Uring => "uring",
                _ => "epoll",
            },
            text,
            resolved,
            nofile,
            generation: 1,
            listen,
            shared,
            board,
            slots: (0..workers)
                .map(|_| Slot {
                    seq: 0,
                    pid: 0,
                    ctl: None,
                    alive: false,
                    ready: false,
                    started: now,
                    fast_crashes: 0,
                    restart_at: None,
                })
                .collect(),
            spawn,
            events: rx,
            tx,
            pending: VecDeque::new(),
            stopping: false,
            handed: None,
        };
        for id in 0..workers {
            if let Err(e) = sup.spawn(id) {
                sup.kill_all();
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot start worker process {id}: {e}"),
                ));
            }
        }
        let deadline = Instant::now() + CONFIRM;
        while sup.slots.iter().any(|s| !s.ready) {
            let left = deadline.saturating_duration_since(Instant::now());
            match sup.events.recv_timeout(left) {
                Ok(Event::Message { id, seq, text }) if text == "ready" => {
                    if sup.slots[id].seq == seq {
                        sup.slots[id].ready = true;
                    }
                }
                Ok(Event::Exited { id, status, .. }) => {
                    sup.kill_all();
                    return Err(io::Error::other(format!(
                        "worker process {id} {} before it was ready (see its message above)",
                        describe(&status)
                    )));
                }
                Ok(other) => sup.pending.push_back(other),
                Err(_) => {
                    sup.kill_all();
                    return Err(io::Error::other(format!(
                        "the worker processes did not start within {CONFIRM:?}"
                    )));
                }
            }
        }
        Ok(sup)
    }

    /// (configured, bound) listen addresses in config order.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listen.iter().map(|l| l.bound).collect()
    }

    pub fn workers(&self) -> usize {
        self.slots.len()
    }

    /// The admin listener's view.
    pub fn stats_reader(&self) -> StatsReader {
        StatsReader(
            super::reader::Source::Processes(self.board.clone()),
            Some(self.health.clone()),
            Default::default(),
        )
    }

    fn kill_all(&mut self) {
        for s in &self.slots {
            if s.alive {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(s.pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }

    fn spawn(&mut self, id: usize) -> io::Result<()> {
        let (mine, theirs) = ipc::pair()?;
        let mut child = Command::new(&self.spawn.program)
            .arg0(format!("wsplice: worker {id}"))
            .args(&self.spawn.args)
            .arg("--worker-process")
            .arg(id.to_string())
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()?;
        let ctl = Arc::new(mine);
        let slot = &mut self.slots[id];
        slot.seq += 1;
        slot.pid = child.id();
        slot.ctl = Some(ctl.clone());
        slot.alive = true;
        slot.ready = false;
        slot.started = Instant::now();
        slot.restart_at = None;
        let seq = slot.seq;
        let (tx, reader) = (self.tx.clone(), ctl.clone());
        std::thread::Builder::new()
            .name(format!("wsplice-ctl{id}"))
            .spawn(move || {
                let (mut buf, mut fds) = (Vec::new(), Vec::new());
                loop {
                    match ipc::recv(&*reader, &mut buf, &mut fds) {
                        Ok(true) => {
                            let text = String::from_utf8_lossy(&buf).into_owned();
                            if tx.send(Event::Message { id, seq, text }).is_err() {
                                break;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Ok(false) | Err(_) => break,
                    }
                    fds.clear();
                }
                let status = child.wait();
                let _ = tx.send(Event::Exited { id, seq, status });
            })?;
        let setup = self
            .send_listeners(id, &ctl, &self.cfg.all_listen().collect::<Vec<_>>())
            .and_then(|()| {
                let config = self
                    .text
                    .as_ref()
                    .map(|t| shm::sealed_bytes("wsplice-config", t.as_bytes()))
                    .transpose()?;
                self.send_resolved(&ctl)?;
                let mut fds = vec![self.shared.fd()];
                fds.extend(config.as_ref().map(|c| c.as_fd()));
                let msg = format!(
                    "init {id} {} {} {}",
                    self.slots.len(),
                    self.generation,
                    self.driver
                );
                ipc::send(&*ctl, msg.as_bytes(), &fds)
            });
        self.board.set_worker(id, self.slots[id].pid, Some(ctl));
        // A worker that died before reading its setup is reported by its reader thread.
        if let Err(e) = setup {
            eprintln!("wsplice: worker {id}: cannot send its setup: {e}");
        }
        Ok(())
    }

    /// Sends worker `id` its sockets for the listen addresses `which` (socket `id`, and every
    /// `workers`th after it: an upgrade from more workers passes more sockets, and each must
    /// be accepted from).
    fn send_listeners(&self, id: usize, ctl: &OwnedFd, which: &[SocketAddr]) -> io::Result<()> {
        let n = self.slots.len();
        let mine: Vec<(SocketAddr, &TcpListener)> = self
            .listen
            .iter()
            .filter(|l| which.contains(&l.want))
            .flat_map(|l| l.socks.iter().skip(id).step_by(n).map(|s| (l.want, s)))
            .collect();
        for chunk in mine.chunks(ipc::MAX_FDS) {
            let mut msg = String::from("listen");
            for (want, _) in chunk {
                msg.push_str(&format!(" {want}"));
            }
            let fds: Vec<_> = chunk.iter().map(|(_, s)| s.as_fd()).collect();
            ipc::send(ctl, msg.as_bytes(), &fds)?;
        }
        Ok(())
    }

    /// Sends what backend names resolve to (nothing without names).
    fn send_resolved(&self, ctl: &OwnedFd) -> io::Result<()> {
        if self.cfg.backend_names().is_empty() {
            return Ok(());
        }
        let table = shm::sealed_bytes("wsplice-dns", encode_resolved(&self.resolved).as_bytes())?;
        ipc::send(ctl, b"dns", &[table.as_fd()])
    }

    /// New addresses for backend names: the workers run the same configuration with them (a
    /// reload: established tunnels stay, new connections use the new set).
    fn apply_resolved(&mut self, resolved: Resolved) {
        self.resolved = resolved;
        let (cfg, text) = (self.cfg.clone(), self.text.clone());
        if let Err(e) = self.reload(&cfg, text, self.nofile) {
            eprintln!("wsplice: dns: the workers did not take the new backend addresses: {e}");
        }
    }

    /// Sets what backend names resolve to, for the next [`Supervisor::reload`].
    pub fn set_resolved(&mut self, resolved: Resolved) {
        self.resolved = resolved;
    }

    fn send_all(&self, msg: &str) {
        for s in self.slots.iter().filter(|s| s.alive) {
            if let Some(ctl) = &s.ctl {
                // A worker that just died is replaced (and then starts from the current state).
                let _ = ipc::send(&**ctl, msg.as_bytes(), &[]);
            }
        }
    }

    /// Waits for the next event, handling worker exits and restarts on the way. Returns the
    /// next signal for the caller, or `None` once every worker has stopped after a drain.
    pub fn next_signal(&mut self) -> Option<i32> {
        loop {
            if self.stopping && self.slots.iter().all(|s| !s.alive) {
                return None;
            }
            let ev = match self.pending.pop_front() {
                Some(ev) => ev,
                None => {
                    let due = self.slots.iter().filter_map(|s| s.restart_at).min();
                    let got = match due {
                        Some(t) => self
                            .events
                            .recv_timeout(t.saturating_duration_since(Instant::now())),
                        None => self
                            .events
                            .recv()
                            .map_err(|_| RecvTimeoutError::Disconnected),
                    };
                    match got {
                        Ok(ev) => ev,
                        Err(RecvTimeoutError::Timeout) => {
                            self.restart_due();
                            continue;
                        }
                        Err(RecvTimeoutError::Disconnected) => return None,
                    }
                }
            };
            match ev {
                Event::Signal(sig) => return Some(sig),
                Event::Exited { id, seq, status } => self.on_exit(id, seq, &status),
                Event::Message { id, seq, text } => self.on_message(id, seq, &text),
                Event::Resolved(r) if !self.stopping => self.apply_resolved(r),
                Event::Resolved(_) => {}
            }
        }
    }

    fn on_message(&mut self, id: usize, seq: u64, text: &str) {
        let slot = &mut self.slots[id];
        if slot.seq != seq {
            return;
        }
        if let Some(h) = crate::driver::upgrade::HandedOver::from_line(text) {
            self.handed.get_or_insert_with(Default::default).merge(&h);
            return;
        }
        if text == "ready" && !slot.ready {
            slot.ready = true;
            if slot.fast_crashes > 0 || self.board.workers()[id].restarts > 0 {
                eprintln!("wsplice: worker {id} restarted (pid {})", slot.pid);
            }
        }
    }

    fn on_exit(&mut self, id: usize, seq: u64, status: &io::Result<ExitStatus>) {
        let slot = &mut self.slots[id];
        if slot.seq != seq || !slot.alive {
            return;
        }
        slot.alive = false;
        slot.ctl = None;
        let pid = slot.pid;
        let lived = slot.started.elapsed();
        self.board.set_worker(id, pid, None);
        if self.stopping {
            if !matches!(status, Ok(st) if st.success()) {
                eprintln!(
                    "wsplice: worker {id} (pid {pid}) {} while draining",
                    describe(status)
                );
            }
            return;
        }
        let reclaimed = self.shared.reclaim(id);
        self.board.retire(id);
        let slot = &mut self.slots[id];
        let delay = if lived < CRASH_LOOP {
            slot.fast_crashes += 1;
            Duration::from_millis(100 << (slot.fast_crashes - 1).min(6))
        } else {
            slot.fast_crashes = 0;
            Duration::ZERO
        };
        slot.restart_at = Some(Instant::now() + delay);
        eprintln!(
            "wsplice: worker {id} (pid {pid}) {}; its {} connections are lost, the other workers keep theirs; restarting it{}",
            describe(status),
            reclaimed.connections,
            if delay.is_zero() {
                String::new()
            } else {
                format!(" in {delay:?} (it died {lived:?} after starting)")
            }
        );
        self.restart_due();
    }

    fn restart_due(&mut self) {
        let now = Instant::now();
        for id in 0..self.slots.len() {
            let due = self.slots[id].restart_at.is_some_and(|t| t <= now);
            if due && !self.stopping {
                if let Err(e) = self.spawn(id) {
                    eprintln!("wsplice: worker {id}: cannot start a new process: {e}; trying again in 1 s");
                    self.slots[id].restart_at = Some(now + Duration::from_secs(1));
                }
            }
        }
    }

    /// Applies a new configuration in every worker: new listeners are bound first (if one
    /// fails, nothing changes), then each worker parses `text` and confirms. A worker that dies
    /// meanwhile is replaced with the new configuration. Returns the listen addresses in force.
    pub fn reload(
        &mut self,
        cfg: &Config,
        text: Option<String>,
        nofile: u64,
    ) -> io::Result<Vec<(SocketAddr, SocketAddr)>> {
        let n = self.slots.len();
        let mut added = Vec::new();
        let wanted: Vec<SocketAddr> = cfg.all_listen().collect();
        for &want in &wanted {
            if !self.listen.iter().any(|l| l.want == want) {
                let (bound, socks) = bind_all(want, n, cfg)?;
                added.push(Listen { want, bound, socks });
            }
        }
        let config_fd = text
            .as_ref()
            .map(|t| shm::sealed_bytes("wsplice-config", t.as_bytes()))
            .transpose()?;
        let removed: Vec<SocketAddr> = self
            .listen
            .iter()
            .map(|l| l.want)
            .filter(|w| !wanted.contains(w))
            .collect();
        let new_addrs: Vec<SocketAddr> = added.iter().map(|l| l.want).collect();
        self.listen.retain(|l| !removed.contains(&l.want));
        self.listen.extend(added);
        let (_, total) = process_capacity(cfg, nofile);
        self.shared.set_max_connections(total.max_connections);
        self.shared.set_ip_limit(cfg.limits.max_connections_per_ip);
        self.generation += 1;
        self.health.reload(cfg);
        self.cfg = cfg.clone();
        self.text = text;
        let mut msg = format!("reload {}", self.generation);
        for r in &removed {
            msg.push_str(&format!(" {r}"));
        }
        let mut waiting = Vec::new();
        for id in 0..n {
            // A worker still starting (spawned with the previous text) gets the reload too: its
            // control thread reads it right after its setup.
            let (alive, seq, ctl) = {
                let s = &self.slots[id];
                (s.alive, s.seq, s.ctl.clone())
            };
            let Some(ctl) = ctl.filter(|_| alive) else {
                continue;
            };
            let fds: Vec<_> = config_fd.iter().map(|f| f.as_fd()).collect();
            let sent = self
                .send_listeners(id, &ctl, &new_addrs)
                .and_then(|()| self.send_resolved(&ctl))
                .and_then(|()| ipc::send(&*ctl, msg.as_bytes(), &fds));
            if sent.is_ok() {
                waiting.push((id, seq));
            }
        }
        let applied = format!("applied {}", self.generation);
        let failed = format!("failed {} ", self.generation);
        let deadline = Instant::now() + CONFIRM;
        let mut errors = Vec::new();
        while !waiting.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(Event::Message { id, seq, text }) if waiting.contains(&(id, seq)) => {
                    if text == applied {
                        waiting.retain(|w| *w != (id, seq));
                    } else if let Some(why) = text.strip_prefix(&failed) {
                        waiting.retain(|w| *w != (id, seq));
                        errors.push(format!("worker {id}: {why}"));
                    } else {
                        self.on_message(id, seq, &text);
                    }
                }
                Ok(Event::Exited { id, seq, status }) => {
                    // Its replacement starts with the new configuration.
                    waiting.retain(|w| *w != (id, seq));
                    self.on_exit(id, seq, &status);
                }
                Ok(Event::Message { id, seq, text }) => self.on_message(id, seq, &text),
                Ok(other) => self.pending.push_back(other),
                Err(_) => {
                    let ids: Vec<String> = waiting.iter().map(|(id, _)| id.to_string()).collect();
                    return Err(io::Error::other(format!(
                        "worker {} did not confirm the new configuration within {CONFIRM:?} (is it stuck?)",
                        ids.join(", ")
                    )));
                }
            }
        }
        if !errors.is_empty() {
            return Err(io::Error::other(errors.join("; ")));
        }
        Ok(self.listen.iter().map(|l| (l.want, l.bound)).collect())
    }

    /// Stops accepting (the supervisor closes its copies of the listeners, each worker its
    /// own); tunnels may run for `grace`, then every worker closes the rest and exits.
    pub fn drain(&mut self, grace: Duration) {
        self.stopping = true;
        for s in &mut self.slots {
            s.restart_at = None;
        }
        self.send_all(&format!("drain {}", grace.as_millis()));
        self.listen.clear();
    }

    /// Asks every worker to reopen the access log. False: no access log is configured.
    pub fn reopen_log(&self) -> bool {
        if self.cfg.access_log.is_none() {
            return false;
        }
        self.send_all("reopen");
        self.health.reopen_log();
        true
    }
}
