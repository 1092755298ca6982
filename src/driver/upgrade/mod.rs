//! Binary upgrade without dropping a tunnel (`SIGUSR2`, as nginx).
//!
//! ```text
//!  old process (SIGUSR2)                                 new process (same path, same argv)
//!  socketpair(SEQPACKET) ─ one end inherited across exec, WSPLICE_UPGRADE_FD=N ─▶ started
//!  L: every listening socket (SCM_RIGHTS) ─────────────────────────────────────▶ workers start
//!                                                                                 on those very
//!  ◀──────────────────────────────────────────────────────── R: ready (its pid)   sockets
//!  workers stop accepting (the new process accepts from the same queues: nothing is refused)
//!  each worker, after every batch of events: every established tunnel between two
//!  operations ─ both sockets + its state (pending bytes, half-close, timers, log facts) ─▶
//!  T: batches of up to 100 tunnels ────────────────────────────────────────────▶ slab, driver,
//!  handshakes finish here first, then go the same way; HTTP exchanges and TLS   relay resumes
//!  tunnels end here (bounded by timeouts.drain); D: done ─────────────────────▶
//!  exit 0 once every worker is empty
//! ```
//!
//! Nothing is lost in between: a tunnel is taken between two operations, when no byte is in
//! the worker's hands but an overflow buffer, a pipe's content or bytes in an io_uring buffer,
//! and those travel with it and are written first on the other side. Under io_uring a relay
//! always has an operation in flight (a receive on each socket): the worker settles it (it
//! starts nothing new), the driver cancels what is in flight, and the tunnel goes once every
//! completion is in (`driver::uring`'s `settle` module). Bytes that arrive meanwhile wait in the kernel's
//! socket buffers, which both processes share (a descriptor passed with `SCM_RIGHTS` is the
//! same socket). A listening socket is the same accept queue in both processes, so a client
//! that connects during the switch is accepted by one or the other.
//!
//! If the new binary does not start, exits, says it failed, or does not confirm within
//! [`CONFIRM_WITHIN`], the old process keeps everything (it never stopped accepting) and logs
//! why: the binary's path, its exit status, its own error line.
//!
//! Covered: both worker models under both drivers (epoll and io_uring, either way between
//! them: the state on the wire is the same), plain (non-TLS) tunnels, relay modes copy, splice
//! and auto. With worker processes the supervisors pass the listeners as above
//! and each old worker process sends its tunnels straight to one of the new supervisor's
//! workers, on a socket pair the new supervisor made for it and sent along with `ready`
//! (see `driver::supervisor`'s `upgrade` module); a mixed pair (threads to processes or back)
//! goes through the upgrade socket. TLS tunnels do not move: rustls can export a session's traffic secrets (feature
//! `secret_extraction`, meant for kernel TLS) but has no way to build a connection from them,
//! so the new process could carry one only through kernel TLS (`setsockopt(TLS_TX/TLS_RX)`),
//! which wsplice does not use. They finish in the old process, which lives until they close
//! or `timeouts.drain` passes (tested in tests/upgrade.rs).

mod server;
pub mod wire;

pub(crate) use server::take_passed;
pub use server::Adopter;

use crate::sys::ipc;
use std::ffi::OsString;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wire::{Msg, TunnelState};

/// The environment variable naming the inherited upgrade socket in the new process.
pub const ENV: &str = "WSPLICE_UPGRADE_FD";
/// How long the new process may take to confirm that it serves.
pub const CONFIRM_WITHIN: Duration = Duration::from_secs(30);
/// Tunnels per message (two descriptors each, within the kernel's 253 per message).
pub const BATCH: usize = 100;
/// The send buffer asked for on a channel to the new process.
pub const SEND_BUFFER_BYTES: usize = SEND_BUFFER;
/// Pending bytes per message before it is sent early (a message must fit the send buffer).
pub const BATCH_BYTES: usize = 128 * 1024;
/// The send buffer asked for (the kernel caps it by `net.core.wmem_max`).
const SEND_BUFFER: usize = 4 << 20;
/// The largest message the new process reads.
const MAX_MESSAGE: usize = 1 << 20;

/// One established tunnel on its way: its two sockets and its state.
#[derive(Debug)]
pub struct Tunnel {
    pub client: TcpStream,
    pub backend: TcpStream,
    pub state: TunnelState,
}

/// Tunnels a worker hands over at once.
#[derive(Debug)]
pub struct Batch {
    pub tunnels: Vec<Tunnel>,
    /// Part of the sweep at the start of the hand-over (the tunnels established at the signal);
    /// later batches are handshakes that finished since.
    pub first: bool,
}

impl Tunnel {
    /// Bytes in user space that travel with it.
    pub fn pending(&self) -> usize {
        let r = &self.state.handed.relay;
        r.up.pending.len() + r.down.pending.len()
    }
}

/// The binary to start on `SIGUSR2`: the path this process was started from (read at start,
/// so that a file replaced there since is the one started; `/proc/self/exe` would name the old
/// one).
pub fn exe_path() -> io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // A binary replaced while running reads back as "PATH (deleted)": the path is what counts.
    let s = exe.to_string_lossy();
    Ok(match s.strip_suffix(" (deleted)") {
        Some(p) => PathBuf::from(p),
        None => exe,
    })
}

/// A started new process that confirmed it serves.
pub struct Launched {
    sock: OwnedFd,
    pub pid: u32,
    /// Reaped by [`hand_over`] if it exits before the old process.
    child: Child,
    /// The sockets that came with its `ready`: one per worker process of a new process that
    /// runs worker processes (tunnels sent on one go straight to that worker); none from one
    /// that runs worker threads (tunnels go on the upgrade socket itself).
    pub channels: Vec<OwnedFd>,
}

impl Launched {
    /// A copy of the upgrade socket (worker processes of the old process write tunnels on
    /// it when the new process has no channels of its own).
    pub fn sock_copy(&self) -> io::Result<OwnedFd> {
        self.sock.try_clone()
    }

    /// Tells the new process the hand-over is over: `n` tunnels in all.
    pub fn done(&mut self, n: u64) {
        let _ = ipc::send(&self.sock, &wire::encode(&Msg::Done(n)), &[]);
    }

    /// Reaps it if it already ended; otherwise it outlives us (init adopts it).
    pub fn reap(&mut self) {
        let _ = self.child.try_wait();
    }
}

/// Starts `exe args` with the upgrade socket, passes `listeners` and the `admin` listener
/// (configured address, socket) and waits until it confirms. The error says why it did not,
/// for the operator.
pub fn launch(
    exe: &Path,
    args: &[OsString],
    listeners: &[(SocketAddr, BorrowedFd<'_>)],
    admin: Option<(SocketAddr, BorrowedFd<'_>)>,
    within: Duration,
) -> Result<Launched, String> {
    let name = exe.display();
    let (ours, theirs) = ipc::pair().map_err(|e| format!("socketpair: {e}"))?;
    let _ = ipc::set_send_buffer(&ours, SEND_BUFFER);
    ipc::inheritable(&theirs).map_err(|e| format!("fcntl: {e}"))?;
    let mut child = Command::new(exe)
        .args(args)
        .env(ENV, theirs.as_raw_fd().to_string())
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {name}: {e}"))?;
    drop(theirs);
    let pid = child.id();
    let fail = |child: &mut Child, why: String| -> String {
        // Whatever it did, it does not serve: make sure it is gone, and reaped.
        let _ = child.kill();
        let _ = child.wait();
        why
    };
    let addrs: Vec<SocketAddr> = listeners.iter().map(|(a, _)| *a).collect();
    let mut fds: Vec<BorrowedFd<'_>> = listeners.iter().map(|(_, f)| *f).collect();
    fds.extend(admin.map(|(_, f)| f));
    let admin = admin.map(|(a, _)| a);
    // A failed send means it is gone already: what it said before (a refusal), or its exit
    // status, is read below.
    let _ = ipc::send_large(&ours, &wire::encode(&Msg::Listeners { addrs, admin }), &fds);
    let deadline = Instant::now() + within;
    let (mut buf, mut fds) = (Vec::new(), Vec::new());
    let channels;
    let _ = ipc::set_timeout(&ours, Some(Duration::from_millis(200)));
    let exited = |child: &mut Child| -> String {
        // Closed: it exited or is exiting; its status says how.
        let until = Instant::now() + Duration::from_secs(2);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return format!(
                    "{name} (pid {pid}) exited before confirming: {status} (its own error, if it printed one, is above)"
                ),
                Ok(None) if Instant::now() < until => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    return fail(
                        child,
                        format!("{name} (pid {pid}) closed the upgrade socket without confirming; stopped it"),
                    )
                }
            }
        }
    };
    loop {
        if Instant::now() >= deadline {
            return Err(fail(
                &mut child,
                format!("{name} (pid {pid}) did not confirm within {within:?}; stopped it"),
            ));
        }
        // The socket first: a refusal it sent before exiting is the better reason.
        match ipc::recv(&ours, &mut buf, &mut fds) {
            Ok(true) => match wire::decode(&buf) {
                Ok(Msg::Ready(_)) => {
                    channels = std::mem::take(&mut fds);
                    break;
                }
                Ok(Msg::Failed(why)) => {
                    return Err(fail(
                        &mut child,
                        format!("{name} (pid {pid}) refused: {why}"),
                    ))
                }
                Ok(m) => {
                    return Err(fail(
                        &mut child,
                        format!("{name} (pid {pid}) sent {m:?} instead of ready"),
                    ))
                }
                Err(e) => return Err(fail(&mut child, format!("{name} (pid {pid}): {e}"))),
            },
            Ok(false) => return Err(exited(&mut child)),
            // It closed its end with our listeners unread. The kernel reports that once,
            // before what it sent (a refusal) and the end, which the next rounds read.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(fail(&mut child, format!("upgrade socket: {e}"))),
        }
        // Exited while something else holds its end of the socket open (a child of its own).
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "{name} (pid {pid}) exited before confirming: {status}"
            ));
        }
    }
    let _ = ipc::set_timeout(&ours, None);
    Ok(Launched {
        sock: ours,
        pid,
        child,
        channels,
    })
}

/// What [`hand_over`] did.
#[derive(Debug, Default, Clone, Copy)]
pub struct HandedOver {
    pub tunnels: u64,
    /// Of which established when the hand-over started (the workers' first sweep).
    pub established: u64,
    /// From the start of the hand-over to the last tunnel of the first sweep sent.
    pub sweep: Duration,
    /// Bytes in user space (overflow buffers, pipes) that travelled with the tunnels.
    pub bytes: u64,
    /// From the start of the hand-over to the last tunnel sent.
    pub took: Duration,
    /// Tunnels whose message could not be sent (the new process died): they were closed.
    pub lost: u64,
}

impl HandedOver {
    /// Several workers' hand-overs (run side by side): counts add up, times are the longest.
    pub fn merge(&mut self, o: &HandedOver) {
        self.tunnels += o.tunnels;
        self.established += o.established;
        self.bytes += o.bytes;
        self.lost += o.lost;
        self.sweep = self.sweep.max(o.sweep);
        self.took = self.took.max(o.took);
    }

    /// One line of text (a worker process reports its hand-over to its supervisor).
    pub fn to_line(&self) -> String {
        format!(
            "handed {} {} {} {} {} {}",
            self.tunnels,
            self.established,
            self.sweep.as_micros(),
            self.bytes,
            self.took.as_micros(),
            self.lost
        )
    }

    /// Reads [`HandedOver::to_line`] back.
    pub fn from_line(line: &str) -> Option<HandedOver> {
        let n: Vec<u64> = line
            .strip_prefix("handed ")?
            .split_whitespace()
            .map(|w| w.parse().ok())
            .collect::<Option<_>>()?;
        let [tunnels, established, sweep, bytes, took, lost] = n[..] else {
            return None;
        };
        Some(HandedOver {
            tunnels,
            established,
            sweep: Duration::from_micros(sweep),
            bytes,
            took: Duration::from_micros(took),
            lost,
        })
    }
}

/// Sends the tunnels the workers hand over (`batches`, until every worker has dropped its
/// sender) to the new process, then says it is done; on a failed send sets `abort` (the
/// workers keep the rest).
pub fn hand_over(
    l: &mut Launched,
    batches: Receiver<Batch>,
    abort: &AtomicBool,
    started: Instant,
) -> HandedOver {
    let done = send_batches(&l.sock, &format!("pid {}", l.pid), batches, abort, started);
    if !abort.load(Ordering::Relaxed) {
        l.done(done.tunnels);
    }
    l.reap();
    done
}

/// Sends one batch: the states in one message, both sockets of each tunnel attached.
pub fn send_tunnels(sock: impl AsFd, batch: &[Tunnel]) -> io::Result<()> {
    let mut fds: Vec<BorrowedFd<'_>> = Vec::with_capacity(batch.len() * 2);
    let mut states = Vec::with_capacity(batch.len());
    for t in batch {
        fds.push(t.client.as_fd());
        fds.push(t.backend.as_fd());
        states.push(t.state.clone());
    }
    ipc::send_large(sock, &wire::encode(&Msg::Tunnels(states)), &fds)
}

/// [`hand_over`]'s sending, on any socket that reaches the new process (`peer`, for the
/// log, "pid N"): the upgrade socket, or a worker process's own channel. Sends no `done`: a channel
/// ends when every sender has closed it.
pub fn send_batches(
    sock: &OwnedFd,
    peer: &str,
    batches: Receiver<Batch>,
    abort: &AtomicBool,
    started: Instant,
) -> HandedOver {
    let mut done = HandedOver::default();
    let mut last = started;
    for Batch {
        tunnels: batch,
        first,
    } in batches
    {
        let n = batch.len() as u64;
        let bytes: usize = batch.iter().map(Tunnel::pending).sum();
        if abort.load(Ordering::Relaxed) {
            done.lost += n;
            continue;
        }
        match send_tunnels(sock, &batch) {
            Ok(()) => {
                done.tunnels += n;
                done.bytes += bytes as u64;
                last = Instant::now();
                if first {
                    done.established += n;
                    done.sweep = last.saturating_duration_since(started);
                }
            }
            Err(e) => {
                eprintln!(
                    "wsplice: upgrade: cannot hand {n} tunnels to {peer}: {e}; they are closed, and the tunnels left stay in this process"
                );
                abort.store(true, Ordering::Relaxed);
                done.lost += n;
            }
        }
        // The descriptors close here: the new process holds its own copies.
    }
    done.took = last.saturating_duration_since(started);
    done
}

/// The new process's end of an upgrade: taken from [`ENV`] at start.
pub struct Inherited {
    sock: OwnedFd,
}

/// A copy of the socket while the new process starts, to say why it could not.
static STARTING: Mutex<Option<OwnedFd>> = Mutex::new(None);

impl Inherited {
    /// The upgrade socket, when this process was started by an upgrade. Call first thing in
    /// `main`, while the process has one thread.
    pub fn from_env() -> io::Result<Option<Inherited>> {
        let Some(v) = std::env::var_os(ENV) else {
            return Ok(None);
        };
        // Not passed on to whatever this process starts.
        std::env::remove_var(ENV);
        let raw: i32 = v.to_string_lossy().parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{ENV}={v:?} is not a descriptor number"),
            )
        })?;
        let sock = ipc::adopt_inherited(raw)?;
        if let Ok(mut s) = STARTING.lock() {
            *s = sock.try_clone().ok();
        }
        Ok(Some(Inherited { sock }))
    }

    /// The listeners the old process passes: (configured address, socket), in its order. The
    /// admin listener's goes to [`crate::driver::admin::inherit`].
    pub fn listeners(&self) -> io::Result<Vec<(SocketAddr, TcpListener)>> {
        ipc::set_timeout(&self.sock, Some(Duration::from_secs(10)))?;
        let (mut buf, mut fds) = (Vec::new(), Vec::new());
        if !ipc::recv(&self.sock, &mut buf, &mut fds)? {
            return Err(io::Error::other(
                "the old process closed the upgrade socket",
            ));
        }
        ipc::set_timeout(&self.sock, None)?;
        let Msg::Listeners { addrs, admin } = wire::decode(&buf)? else {
            return Err(io::Error::other("the old process sent no listeners first"));
        };
        if addrs.len() + admin.is_some() as usize != fds.len() {
            return Err(io::Error::other(format!(
                "{} listener addresses but {} sockets",
                addrs.len() + admin.is_some() as usize,
                fds.len()
            )));
        }
        if let Some(a) = admin {
            if let Some(fd) = fds.pop() {
                crate::driver::admin::inherit(a, TcpListener::from(fd));
            }
        }
        let mut out = Vec::with_capacity(addrs.len());
        for (a, fd) in addrs.into_iter().zip(fds) {
            let l = TcpListener::from(fd);
            l.set_nonblocking(true)?;
            out.push((a, l));
        }
        Ok(out)
    }

    /// Tells the old process this one serves; returns the socket tunnels then arrive on.
    pub fn ready(self) -> io::Result<Receiving> {
        self.ready_with(&[])
    }

    /// [`Inherited::ready`] with `channels` attached: one socket per worker process, on which
    /// the old process's workers send their tunnels straight to it.
    pub fn ready_with(self, channels: &[BorrowedFd<'_>]) -> io::Result<Receiving> {
        ipc::send(
            &self.sock,
            &wire::encode(&Msg::Ready(std::process::id())),
            channels,
        )?;
        if let Ok(mut s) = STARTING.lock() {
            *s = None;
        }
        Ok(Receiving { sock: self.sock })
    }
}

/// Tells the old process (if this one was started by an upgrade and is not serving yet) why
/// this one could not start.
pub fn report_failure(why: &str) {
    let sock = STARTING.lock().ok().and_then(|mut s| s.take());
    if let Some(s) = sock {
        let mut text = why.to_owned();
        text.truncate(4096);
        let _ = ipc::send(&s, &wire::encode(&Msg::Failed(text)), &[]);
    }
}

/// The new process receiving tunnels.
pub struct Receiving {
    sock: OwnedFd,
}

impl From<OwnedFd> for Receiving {
    /// A worker process's channel (see [`Inherited::ready_with`]).
    fn from(sock: OwnedFd) -> Receiving {
        Receiving { sock }
    }
}

impl Receiving {
    /// Receives tunnel batches until the old process is done, handing each to `deliver`;
    /// returns how many tunnels came. A broken message is logged and ends the hand-over (its
    /// descriptors are closed).
    pub fn run(self, mut deliver: impl FnMut(Vec<Tunnel>)) -> u64 {
        let (mut buf, mut fds) = (Vec::new(), Vec::new());
        let mut got = 0;
        loop {
            fds.clear();
            match ipc::recv_up_to(&self.sock, &mut buf, &mut fds, MAX_MESSAGE) {
                Ok(true) => {}
                Ok(false) => return got,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    eprintln!("wsplice: upgrade: reading the upgrade socket: {e}");
                    return got;
                }
            }
            match wire::decode(&buf) {
                Ok(Msg::Tunnels(states)) if states.len() * 2 == fds.len() => {
                    let mut socks = std::mem::take(&mut fds).into_iter();
                    let mut batch = Vec::with_capacity(states.len());
                    for state in states {
                        let (Some(c), Some(b)) = (socks.next(), socks.next()) else {
                            break;
                        };
                        batch.push(Tunnel {
                            client: TcpStream::from(c),
                            backend: TcpStream::from(b),
                            state,
                        });
                    }
                    got += batch.len() as u64;
                    deliver(batch);
                }
                Ok(Msg::Done(_)) => return got,
                Ok(m) => {
                    eprintln!("wsplice: upgrade: unexpected message {m:?} with {} descriptors; the hand-over ends here", fds.len());
                    return got;
                }
                Err(e) => {
                    eprintln!("wsplice: upgrade: {e}; the hand-over ends here");
                    return got;
                }
            }
        }
    }
}

/// Shared between the old process's control thread and its workers: set when the new
/// process can no longer take tunnels.
pub type Abort = Arc<AtomicBool>;
