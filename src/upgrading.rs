//! `SIGUSR2` in the binary: the old process's side (start the new binary, hand everything
//! over, report) and the new process's (start on the passed sockets, confirm, take tunnels in).
//! The mechanism is `wsplice::driver::upgrade`.

use std::ffi::OsString;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use wsplice::config::Config;
use wsplice::driver::supervisor::Supervisor;
use wsplice::driver::upgrade::{self, HandedOver, Inherited, Launched};
use wsplice::driver::{admin, Server};

use crate::say;

/// Starts the worker threads: on the sockets a binary upgrade passed (`inherited`), or bound
/// anew.
pub fn start_threads(cfg: &Config, inherited: Option<&Inherited>) -> io::Result<Server> {
    let Some(i) = inherited else {
        return Server::start(cfg);
    };
    let listeners = i.listeners()?;
    let (key, _) = wsplice::transport::tls::TicketKeys::generate()
        .map_err(|_| io::Error::other("the system random generator failed (getrandom)"))?;
    Server::start_inherited(cfg, key, listeners)
}

/// Serving (after `ready`): tells the old process, and takes in its tunnels on a thread.
pub fn receive(i: Inherited, server: &Server) -> io::Result<()> {
    let receiving = i.ready()?;
    let mut adopter = server.adopter();
    std::thread::Builder::new()
        .name("wsplice-upgrade".into())
        .spawn(move || {
            let started = Instant::now();
            let n = receiving.run(|batch| adopter.deliver(batch));
            // One write: the old process logs on the same stderr at the same moment.
            let line = format!(
                "wsplice: upgrade: took over {n} tunnels in {:.1} ms\n",
                started.elapsed().as_secs_f64() * 1e3
            );
            eprint!("{line}");
        })?;
    Ok(())
}

/// Logs why an upgrade did not happen and says `upgrade failed`; false (this process serves
/// on, unchanged).
fn fail(why: &str) -> bool {
    eprintln!(
        "wsplice: upgrade failed, still serving (pid {}): {why}; nothing changed: fix the cause and send SIGUSR2 again (or restart)",
        std::process::id()
    );
    say("upgrade failed");
    false
}

/// Starts the binary at `exe` with this process's arguments, passes it `listeners` and the
/// admin listener and waits for it to confirm.
fn start_new(
    exe: &io::Result<PathBuf>,
    listeners: &[(SocketAddr, BorrowedFd<'_>)],
) -> Result<Launched, String> {
    let exe = match exe {
        Ok(p) => p,
        Err(e) => return Err(format!("cannot tell which binary this is: {e}")),
    };
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    eprintln!(
        "wsplice: SIGUSR2: starting {} to take over the listeners and tunnels",
        exe.display()
    );
    let admin = admin::socket_for_upgrade();
    let admin_fd = admin.as_ref().map(|(a, l)| (*a, l.as_fd()));
    let launched = upgrade::launch(exe, &args, listeners, admin_fd, upgrade::CONFIRM_WITHIN)?;
    say(&format!("upgraded pid={}", launched.pid));
    Ok(launched)
}

/// The old process's last line about an upgrade.
fn summary(done: &HandedOver, pid: u32) {
    let sweep = done.sweep.as_secs_f64() * 1e3;
    let per_1000 = if done.established > 0 {
        sweep * 1000.0 / done.established as f64
    } else {
        0.0
    };
    // Formatted first and written at once: eprintln! writes piece by piece, and the new
    // process logs on the same stderr at the same moment (the lines came out interleaved).
    let line = format!(
        "wsplice: upgrade: handed {} tunnels to pid {pid}: the {} established at the signal in {sweep:.1} ms ({per_1000:.1} ms per 1,000 tunnels), the rest as their handshakes finished, {:.1} ms in all; {} bytes in flight went along; {} lost; every connection left here has finished: exiting\n",
        done.tunnels,
        done.established,
        done.took.as_secs_f64() * 1e3,
        done.bytes,
        done.lost
    );
    eprint!("{line}");
}

/// SIGUSR2 with worker threads: starts the binary at `exe` and hands it everything. True once
/// this process is done (every tunnel handed over or finished); false when the upgrade failed
/// and this process serves on, unchanged.
pub fn binary_upgrade(server: &mut Server, exe: &io::Result<PathBuf>, cfg: &Config) -> bool {
    let owned = server.listener_fds();
    let listeners: Vec<_> = owned.iter().map(|(a, fd)| (*a, fd.as_fd())).collect();
    let mut launched = match start_new(exe, &listeners) {
        Ok(l) => l,
        Err(why) => return fail(&why),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let abort: upgrade::Abort = Arc::default();
    let started = Instant::now();
    server.hand_over(tx, &abort, started + cfg.timeouts.drain);
    let done = upgrade::hand_over(&mut launched, rx, &abort, started);
    server.join();
    summary(&done, launched.pid);
    true
}

/// SIGUSR2 with worker processes: starts the binary at `exe` (a supervisor of its own
/// workers) and has every worker hand its tunnels to one of the new ones. True once every
/// worker here has exited; false when the upgrade failed and this tree serves on, unchanged.
pub fn binary_upgrade_processes(
    sup: &mut Supervisor,
    exe: &io::Result<PathBuf>,
    cfg: &Config,
) -> bool {
    let mut launched = match start_new(exe, &sup.listener_fds()) {
        Ok(l) => l,
        Err(why) => return fail(&why),
    };
    let done = sup.hand_over(&mut launched, cfg.timeouts.drain);
    summary(&done, launched.pid);
    true
}

/// The new process with worker processes, serving: one channel per worker goes to the old
/// process with `ready`. Tunnels that come on the upgrade socket itself (an old process with
/// worker threads) are passed on to the workers, in turn.
pub fn receive_processes(i: Inherited, sup: &Supervisor) -> io::Result<()> {
    let channels = sup.adopt_channels()?;
    let fds: Vec<BorrowedFd<'_>> = channels.iter().map(|c| c.as_fd()).collect();
    let receiving = i.ready_with(&fds)?;
    std::thread::Builder::new()
        .name("wsplice-upgrade".into())
        .spawn(move || {
            let mut next = 0usize;
            let n = receiving.run(|batch| {
                if channels.is_empty() {
                    return;
                }
                let c = &channels[next % channels.len()];
                next = next.wrapping_add(1);
                if let Err(e) = upgrade::send_tunnels(c, &batch) {
                    eprintln!(
                        "wsplice: upgrade: cannot pass {} tunnels on to a worker: {e}; they are closed",
                        batch.len()
                    );
                }
            });
            if n > 0 {
                eprintln!("wsplice: upgrade: passed {n} tunnels on to the workers");
            }
            // Dropped here: each worker's channel ends once the old workers are done too.
        })?;
    Ok(())
}
