//! Binary upgrade (`SIGUSR2`): the real binary upgraded to itself under load. 1,000 tunnels
//! with traffic both ways, a few bulk tunnels (bytes in pipes and overflow buffers at the
//! moment they move), 50 handshakes in progress and new clients arriving throughout: the old
//! process exits, every byte arrives in order, nothing is reset. And a new binary that fails
//! (exits, or refuses its configuration) leaves the old one serving.
//!
//! Under both worker models (threads, and processes: each old worker process hands its tunnels
//! to one of the new supervisor's workers), under both drivers (and from one to the other), in
//! the copy and splice relay modes. Under io_uring a relay always has a receive in flight: the
//! scenarios are the same, and so is what they check (every byte in order, none lost).
//! TLS tunnels cannot move (rustls cannot export a session's keys): the old process keeps
//! serving them until they close, or until `timeouts.drain`.

#[macro_use]
mod support;

use nix::sys::signal::Signal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::{
    backend, open, route, status, try_read_head, upgrade_request, wsplice_argv, Proxy,
    ProxyBuilder, Relay,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The whole scenario's deadline: 1,000 tunnels on a loaded two-core machine take a while.
const DEADLINE: Duration = Duration::from_secs(240);
/// Any single wait for bytes.
const WAIT: Duration = Duration::from_secs(30);

/// `upgrade!(name, body)`: `name::{threads,processes}::{copy,splice}` under epoll and
/// `name::{threads,processes}::{uring_copy,uring_splice}` under io_uring.
macro_rules! upgrade {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;
            upgrade!(@model threads, $body);
            upgrade!(@model processes, $body);
        }
    };
    (@model $model:ident, $body:expr) => {
        mod $model {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn copy() {
                within(DEADLINE, $body(Relay::Copy, stringify!($model))).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn splice() {
                within(DEADLINE, $body(Relay::Splice, stringify!($model))).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn uring_copy() {
                uring(|| $body(Relay::Copy.uring(), stringify!($model))).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn uring_splice() {
                uring(|| $body(Relay::Splice.uring(), stringify!($model))).await
            }
        }
    };
}

/// Runs an io_uring scenario within [`DEADLINE`] (skipped under emulation: qemu-user has no
/// io_uring).
async fn uring<F: std::future::Future<Output = ()>>(scenario: impl FnOnce() -> F) {
    if support::emulated() {
        eprintln!("skipped under emulation: the io_uring driver");
        return;
    }
    within(DEADLINE, scenario()).await
}

async fn within(d: Duration, f: impl std::future::Future<Output = ()>) {
    if tokio::time::timeout(d, f).await.is_err() {
        panic!("scenario did not finish within {d:?}");
    }
}

fn config(relay: Relay, model: &str, backend: SocketAddr) -> ProxyBuilder {
    Proxy::builder(relay)
        .top("worker_model", &format!("\"{model}\""))
        .workers(2)
        .route(route("/a", &[backend]))
}

/// Kills the process the upgrade started (not our child) when the test ends.
struct Reaper(u32);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0 as i32), Signal::SIGKILL);
    }
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Waits for the old process to leave, with success, after handing on its work.
fn old_exits(proxy: &mut Proxy, within: Duration) {
    let status = tokio::task::block_in_place(|| proxy.wait_exit(within));
    assert!(status.success(), "old process exit: {status}");
}

/// Waits until none of the processes `pids` (an old tree) is left.
fn all_gone(pids: &[u32], within: Duration) {
    tokio::task::block_in_place(|| {
        support::blocking::eventually("every old process is gone", within, || {
            pids.iter().all(|p| !alive(*p))
        })
    });
}

/// The process and its worker processes (none with worker threads).
fn tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    all.extend(support::worker_pids(pid));
    all
}

/// Open descriptors of the process and its worker processes.
fn fds_of(pid: u32) -> usize {
    tree(pid)
        .iter()
        .map(|p| std::fs::read_dir(format!("/proc/{p}/fd")).map_or(0, |d| d.count()))
        .sum()
}

/// `VmRSS` of the process and its worker processes, KiB.
fn rss_kib_of(pid: u32) -> u64 {
    tree(pid)
        .iter()
        .map(|p| {
            std::fs::read_to_string(format!("/proc/{p}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("VmRSS:"))
                        .and_then(|v| v.split_whitespace().next())
                        .and_then(|n| n.parse::<u64>().ok())
                })
                .unwrap_or(0)
        })
        .sum()
}

/// Stops the [`flow`]s started by [`start_flows`] and returns the records each carried;
/// panics, saying it went `across` what, on one that lost bytes or was reset.
async fn end_flows(
    stop: &AtomicBool,
    flows: Vec<tokio::task::JoinHandle<Result<u64, String>>>,
    across: &str,
) -> Vec<u64> {
    stop.store(true, Ordering::Relaxed);
    let mut records = Vec::new();
    for (i, f) in flows.into_iter().enumerate() {
        match f.await.expect("flow task") {
            Ok(n) => records.push(n),
            Err(e) => panic!("tunnel {i} {across}: {e}"),
        }
    }
    records
}

/// Opens `n` tunnels through `addr`, each running a [`flow`] until `stop`.
async fn start_flows(
    addr: SocketAddr,
    n: usize,
    stop: &Arc<AtomicBool>,
    period: Duration,
) -> Vec<tokio::task::JoinHandle<Result<u64, String>>> {
    let mut flows = Vec::new();
    for i in 0..n {
        let (s, _) = open(addr, "/a/x")
            .await
            .unwrap_or_else(|c| panic!("tunnel {i}: {c}"));
        flows.push(tokio::spawn(flow(s, stop.clone(), period)));
    }
    flows
}

/// One tunnel's traffic: a writer sends numbered 32-byte records every `every` without
/// waiting for their echo (bytes are in flight both ways at any instant), a reader checks
/// every echo in order. On `stop`: our FIN, the rest of the echoes, the backend's FIN.
/// Returns the records sent and echoed (equal), or what went wrong.
async fn flow(s: TcpStream, stop: Arc<AtomicBool>, every: Duration) -> Result<u64, String> {
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let rec = format!("{n:031}\n");
            w.write_all(rec.as_bytes())
                .await
                .map_err(|e| format!("write #{n}: {e}"))?;
            n += 1;
            tokio::time::sleep(every).await;
        }
        w.shutdown().await.map_err(|e| format!("shutdown: {e}"))?;
        Ok::<u64, String>(n)
    });
    let mut got = 0u64;
    let mut buf = [0u8; 32];
    loop {
        match tokio::time::timeout(WAIT, r.read_exact(&mut buf)).await {
            Err(_) => return Err(format!("echo #{got} timed out")),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Ok(Err(e)) => return Err(format!("echo #{got}: {e}")),
            Ok(Ok(_)) => {
                if buf != format!("{got:031}\n").as_bytes() {
                    return Err(format!(
                        "echo #{got} differs: {:?}",
                        String::from_utf8_lossy(&buf)
                    ));
                }
                got += 1;
            }
        }
    }
    let sent = writer.await.map_err(|e| format!("writer: {e}"))??;
    if sent != got {
        return Err(format!("sent {sent} records, {got} came back"));
    }
    Ok(got)
}

/// A bulk tunnel: 64 KiB chunks of consecutive little-endian u64 counters, every word of the
/// echo checked; the reader starts when `read_from` is set (if given). Returns the bytes
/// that made the round trip.
async fn bulk(
    s: TcpStream,
    stop: Arc<AtomicBool>,
    read_from: Option<Arc<AtomicBool>>,
    written: Arc<AtomicU64>,
) -> Result<u64, String> {
    let (mut r, mut w) = s.into_split();
    // The stalled tunnel writes flat out, to fill every buffer before the upgrade.
    let pause = if read_from.is_some() {
        Duration::ZERO
    } else {
        Duration::from_millis(5)
    };
    let writer = tokio::spawn(async move {
        let mut next = 0u64;
        let mut chunk = vec![0u8; 64 * 1024];
        while !stop.load(Ordering::Relaxed) {
            for word in chunk.chunks_exact_mut(8) {
                word.copy_from_slice(&next.to_le_bytes());
                next += 1;
            }
            w.write_all(&chunk)
                .await
                .map_err(|e| format!("bulk write at word {next}: {e}"))?;
            written.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            tokio::time::sleep(pause).await;
        }
        w.shutdown().await.map_err(|e| format!("shutdown: {e}"))?;
        Ok::<u64, String>(next * 8)
    });
    // A stalled reader: the echo fills every buffer on its way back, so the proxy holds bytes
    // it could not write (an overflow buffer, or a full pipe) when the upgrade takes the tunnel.
    if let Some(gate) = read_from {
        while !gate.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let mut word = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let n = match tokio::time::timeout(WAIT, r.read(&mut buf)).await {
            Err(_) => return Err(format!("bulk echo stalled at word {word}")),
            Ok(Err(e)) => return Err(format!("bulk read at word {word}: {e}")),
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => n,
        };
        carry.extend_from_slice(&buf[..n]);
        let whole = carry.len() / 8 * 8;
        for w8 in carry[..whole].chunks_exact(8) {
            let mut a = [0u8; 8];
            a.copy_from_slice(w8);
            if u64::from_le_bytes(a) != word {
                return Err(format!(
                    "bulk word {word} came back as {}",
                    u64::from_le_bytes(a)
                ));
            }
            word += 1;
        }
        carry.drain(..whole);
    }
    let sent = writer.await.map_err(|e| format!("writer: {e}"))??;
    if !carry.is_empty() || sent != word * 8 {
        return Err(format!(
            "bulk: sent {sent} bytes, {} came back",
            word * 8 + carry.len() as u64
        ));
    }
    Ok(sent)
}

/// A client that connected and sends its head slowly: `first` bytes now, the rest (a few
/// bytes at a time) once `go` is set; then a 101 and some echoed traffic.
async fn slow_handshake(
    addr: SocketAddr,
    first: usize,
    go: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> Result<u64, String> {
    let head = upgrade_request("/a/slow", &[]);
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    s.write_all(&head[..first])
        .await
        .map_err(|e| format!("first bytes: {e}"))?;
    while !go.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for part in head[first..].chunks(8) {
        s.write_all(part)
            .await
            .map_err(|e| format!("head bytes: {e}"))?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (answer, rest) = tokio::time::timeout(WAIT, try_read_head(&mut s, 1 << 16))
        .await
        .map_err(|_| "no answer to the slow head".to_string())?
        .map_err(|e| format!("answer: {e}"))?;
    if status(&answer) != Some(101) || !rest.is_empty() {
        return Err(format!(
            "slow head answered {:?}",
            String::from_utf8_lossy(&answer)
        ));
    }
    flow(s, stop, Duration::from_millis(100)).await
}

/// The old process's summary line: (tunnels handed over, ms per 1,000).
fn handed_line(stderr: &str) -> Option<(u64, f64, String)> {
    let line = stderr.lines().find(|l| l.contains("upgrade: handed "))?;
    let n = line
        .split("handed ")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let per = line
        .split('(')
        .nth(1)?
        .split(" ms per 1,000")
        .next()?
        .parse()
        .ok()?;
    Some((n, per, line.to_owned()))
}

upgrade!(
    sigusr2_hands_1000_tunnels_and_50_handshakes_to_the_new_binary_without_losing_a_byte,
    super::sigusr2_hands_1000_tunnels_and_50_handshakes_to_the_new_binary_without_losing_a_byte
);
async fn sigusr2_hands_1000_tunnels_and_50_handshakes_to_the_new_binary_without_losing_a_byte(
    relay: Relay,
    model: &str,
) {
    let echo = backend("A").await.addr;
    // The slow clients' heads end only after the upgrade: on a loaded machine that can take
    // longer than the default timeouts.handshake (10 s), which would close them (a 408).
    let mut proxy = config(relay, model, echo)
        .timeout("handshake", "60s")
        .admin()
        .start()
        .await;
    let addr = proxy.addr();
    let old = proxy.pid();
    let old_tree = tree(old);
    assert_eq!(old_tree.len(), if model == "processes" { 3 } else { 1 });

    let stop = Arc::new(AtomicBool::new(false));
    let flows = start_flows(addr, 1000, &stop, Duration::from_millis(200)).await;
    let mut bulks = Vec::new();
    for i in 0..4 {
        let (s, _) = open(addr, "/a/bulk")
            .await
            .unwrap_or_else(|c| panic!("bulk tunnel {i}: {c}"));
        bulks.push(tokio::spawn(bulk(s, stop.clone(), None, Arc::default())));
    }
    // One tunnel whose client reads nothing until after the upgrade.
    let go = Arc::new(AtomicBool::new(false));
    let (s, _) = open(addr, "/a/stalled").await.expect("stalled tunnel");
    let stalled_written = Arc::new(AtomicU64::new(0));
    bulks.push(tokio::spawn(bulk(
        s,
        stop.clone(),
        Some(go.clone()),
        stalled_written.clone(),
    )));
    // New clients keep coming across the switch: every one must be answered.
    let churn_stop = Arc::new(AtomicBool::new(false));
    let churned = Arc::new(AtomicU64::new(0));
    // Paused while the slow clients connect, so that the proxy's descriptors count them alone.
    let (churn_pause, churn_idle) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let churn = {
        let (stop, churned) = (churn_stop.clone(), churned.clone());
        let (pause, idle) = (churn_pause.clone(), churn_idle.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if pause.load(Ordering::Relaxed) {
                    idle.store(true, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                idle.store(false, Ordering::Relaxed);
                let n = churned.load(Ordering::Relaxed);
                let one = async {
                    let (mut s, _) = open(addr, "/a/new")
                        .await
                        .map_err(|c| format!("new client #{n} answered {c}"))?;
                    s.write_all(b"ping").await.map_err(|e| e.to_string())?;
                    let mut b4 = [0u8; 4];
                    s.read_exact(&mut b4).await.map_err(|e| e.to_string())?;
                    Ok::<(), String>(())
                };
                tokio::time::timeout(WAIT, one)
                    .await
                    .map_err(|_| format!("new client #{n} not answered within {WAIT:?}"))??;
                churned.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok::<(), String>(())
        })
    };
    // Let traffic run, and the slow clients be accepted by the old process; the stalled
    // tunnel's writer blocks once every buffer on the way is full (then the proxy holds bytes
    // it cannot write).
    let mut last = u64::MAX;
    let filled_by = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = stalled_written.load(Ordering::Relaxed);
        if now == last && now > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < filled_by,
            "the stalled tunnel never filled ({now} bytes written)"
        );
        last = now;
    }
    // 50 clients mid-handshake (connected, part of the head sent), accepted by the old
    // process: its descriptors show them (no other client comes and goes meanwhile). (Their
    // head timeout runs from here.)
    churn_pause.store(true, Ordering::Relaxed);
    while !churn_idle.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The last churn client's sockets close in the proxy too.
    let mut fds_before = fds_of(old);
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        fds_before = fds_before.min(fds_of(old));
    }
    let mut slow = Vec::new();
    for i in 0..50 {
        slow.push(tokio::spawn(slow_handshake(
            addr,
            10 + i,
            go.clone(),
            stop.clone(),
        )));
    }
    tokio::task::block_in_place(|| {
        support::blocking::eventually("the old process accepts the 50 slow clients", WAIT, || {
            fds_of(old) >= fds_before + 50
        })
    });
    let old_fds = fds_of(old);
    let old_rss = rss_kib_of(old);
    churn_pause.store(false, Ordering::Relaxed);

    proxy.signal(Signal::SIGUSR2);
    let new = upgraded(&proxy);
    let _reaper = Reaper(new);
    assert_ne!(new, old);
    // The slow clients finish their heads now: in the old process, which then hands them on.
    go.store(true, Ordering::Relaxed);

    old_exits(&mut proxy, Duration::from_secs(60));
    all_gone(&old_tree, WAIT);
    assert!(alive(new), "the new process {new} serves");
    let new_tree = tree(new);
    assert_eq!(new_tree.len(), old_tree.len(), "new: {new_tree:?}");
    let stderr = proxy.stderr();
    let (handed, per_1000, summary) =
        handed_line(&stderr).unwrap_or_else(|| panic!("no hand-over summary in\n{stderr}"));
    // Every tunnel went: the 1,005 established ones and the 50 handshakes that finished in
    // the old process (a churn client may have been caught mid-life too).
    assert!(handed >= 1055, "{summary}");
    assert!(summary.contains("; 0 lost"), "{summary}");
    let carried: u64 = summary
        .split(" bytes in flight went along")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no byte count in {summary}"));
    assert!(
        carried > 0,
        "the stalled tunnel's bytes held in the proxy travelled along: {summary}"
    );
    // The admin listener moved too: the new process answers on it, and counts what it took.
    tokio::task::block_in_place(|| {
        support::blocking::eventually("the new process counts every tunnel", WAIT, || {
            proxy.metric("wsplice_upgrade_tunnels_adopted_total") == handed
        })
    });

    // Traffic goes on through the new process for a while.
    let before = churned.load(Ordering::Relaxed);
    let served_by = std::time::Instant::now() + WAIT;
    while churned.load(Ordering::Relaxed) < before + 10 {
        if churn.is_finished() {
            let why = churn.await.expect("churn task");
            panic!(
                "a new client failed across the upgrade: {why:?}\n{}",
                proxy.stderr()
            );
        }
        assert!(
            std::time::Instant::now() < served_by,
            "new clients are served after the old process left ({} served, {before} before it left)",
            churned.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let new_fds = fds_of(new);
    let new_rss = rss_kib_of(new);

    churn_stop.store(true, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    churn
        .await
        .expect("churn task")
        .unwrap_or_else(|e| panic!("a new client failed across the upgrade: {e}"));
    let records: u64 = end_flows(&stop, flows, "lost bytes or was reset across the upgrade")
        .await
        .iter()
        .sum();
    for (i, f) in slow.into_iter().enumerate() {
        if let Err(e) = f.await.expect("slow task") {
            panic!("handshake {i} in progress at the upgrade failed: {e}");
        }
    }
    let mut bulk_bytes = 0;
    for (i, b) in bulks.into_iter().enumerate() {
        match b.await.expect("bulk task") {
            Ok(n) => bulk_bytes += n,
            Err(e) => panic!("bulk tunnel {i} across the upgrade: {e}"),
        }
    }
    assert!(records >= 1000 * 10, "traffic flowed ({records} records)");
    assert!(bulk_bytes > 0);
    let stderr = proxy.stderr();
    let took = stderr
        .lines()
        .find(|l| l.contains("took over"))
        .unwrap_or("");
    eprintln!(
        "upgrade-bench model={model} relay={} tunnels_handed={handed} per_1000_ms={per_1000:.1} \
         old_before: fds={old_fds} rss_kib={old_rss}; new_after: fds={new_fds} rss_kib={new_rss}; \
         records={records} bulk_bytes={bulk_bytes}\n  old: {summary}\n  new: {took}",
        relay.as_str()
    );
}

/// A copy of the binary in a directory of its own, which the test may replace.
struct Copy {
    dir: PathBuf,
    exe: PathBuf,
}

impl Copy {
    fn new() -> Copy {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wsplice-upgrade-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let exe = dir.join("wsplice");
        let c = Copy { dir, exe };
        c.put_binary();
        c
    }

    /// Replaces the file at the path (rename over it, as a package manager does: the running
    /// binary keeps its own inode).
    fn replace(&self, write: impl FnOnce(&Path)) {
        let tmp = self.dir.join("wsplice.new");
        write(&tmp);
        std::fs::rename(&tmp, &self.exe).expect("rename over the binary");
    }

    fn put_binary(&self) {
        let real = wsplice_argv().pop().expect("binary");
        self.replace(|tmp| {
            std::fs::copy(&real, tmp).expect("copy the binary");
        });
    }

    fn put_script(&self, text: &str) {
        self.replace(|tmp| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::write(tmp, text).expect("write the script");
            std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        });
    }
}

impl Drop for Copy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

upgrade!(
    a_failing_new_binary_leaves_the_old_one_serving_then_a_good_one_takes_over,
    super::a_failing_new_binary_leaves_the_old_one_serving_then_a_good_one_takes_over
);
async fn a_failing_new_binary_leaves_the_old_one_serving_then_a_good_one_takes_over(
    relay: Relay,
    model: &str,
) {
    if support::emulated() {
        eprintln!("skipped under emulation: the test runs a copy of the binary itself");
        return;
    }
    let echo = backend("A").await.addr;
    let copy = Copy::new();
    let exe = copy.exe.clone();
    let cfg = config(relay, model, echo);
    let good_toml = cfg.toml();
    let mut proxy = tokio::task::spawn_blocking(move || cfg.blocking_start_from(&exe))
        .await
        .expect("start");
    let addr = proxy.addr();
    let old = proxy.pid();
    let stop = Arc::new(AtomicBool::new(false));
    let flows = start_flows(addr, 50, &stop, Duration::from_millis(50)).await;

    // 1. The file at the binary's path now is a script that fails.
    copy.put_script("#!/bin/sh\necho 'upgrade-test: this binary refuses to run' >&2\nexit 1\n");
    proxy.signal(Signal::SIGUSR2);
    assert_eq!(outcome(&proxy), "upgrade failed");
    let stderr = proxy.stderr();
    assert!(
        stderr.contains(&format!("{} (pid", copy.exe.display()))
            && stderr.contains("exited before confirming: exit status: 1"),
        "the log names the binary and its exit status:\n{stderr}"
    );
    assert!(stderr.contains("this binary refuses to run"), "{stderr}");
    assert!(
        stderr.contains("send SIGUSR2 again (or restart)"),
        "the log tells the operator what to do:\n{stderr}"
    );
    let old_tree = tree(old);
    assert!(proxy.is_running() && old_tree.iter().all(|p| alive(*p)));
    assert_eq!(old_tree.len(), if model == "processes" { 3 } else { 1 });
    ping(addr, "/a/after-failure", "the old process still accepts").await;

    // 2. The real binary again, but the configuration no longer loads: the new process says
    //    why before it exits, and the old one logs it.
    copy.put_binary();
    proxy.write_config("listen = [\"127.0.0.1:0\"]\n[[route]]\nprefix = \"no-slash\"\n");
    proxy.signal(Signal::SIGUSR2);
    assert_eq!(outcome(&proxy), "upgrade failed");
    let stderr = proxy.stderr();
    assert!(stderr.contains(") refused: "), "{stderr}");
    assert!(proxy.is_running());
    ping(addr, "/a/after-refusal", "the old process still accepts").await;

    // 3. A good binary and configuration: it takes over, the old process exits.
    proxy.write_config(&good_toml);
    proxy.signal(Signal::SIGUSR2);
    let new = upgraded(&proxy);
    let _reaper = Reaper(new);
    old_exits(&mut proxy, Duration::from_secs(60));
    all_gone(&old_tree, WAIT);
    assert!(alive(new));
    tokio::time::sleep(Duration::from_millis(500)).await;
    end_flows(&stop, flows, "across two failed upgrades and a good one").await;
    ping(addr, "/a/new-process", "new process serves").await;
}

/// `both_models!(name)`: `name::threads` and `name::processes` under epoll,
/// `name::uring_threads` and `name::uring_processes` under io_uring.
macro_rules! both_models {
    ($name:ident) => {
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn threads() {
                within(DEADLINE, super::$name(Relay::Tls, "threads")).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn processes() {
                within(DEADLINE, super::$name(Relay::Tls, "processes")).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn uring_threads() {
                uring(|| super::$name(Relay::Tls.uring(), "threads")).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn uring_processes() {
                uring(|| super::$name(Relay::Tls.uring(), "processes")).await
            }
        }
    };
}

both_models!(tls_tunnels_stay_in_the_old_process_until_they_close_or_timeouts_drain);
/// TLS tunnels cannot move (rustls cannot export a session's keys): after `SIGUSR2` they keep
/// flowing in the old process, which lives on while one is open; new TLS clients reach the
/// new process; at `timeouts.drain` the old process closes what is left and exits.
async fn tls_tunnels_stay_in_the_old_process_until_they_close_or_timeouts_drain(
    relay: Relay,
    model: &str,
) {
    let echo = backend("A").await.addr;
    let mut proxy = Proxy::builder(relay)
        .top("worker_model", &format!("\"{model}\""))
        .workers(2)
        .timeout("drain", "30s")
        .route(route("/a", &[echo]))
        .start()
        .await;
    // The address of a local TLS shim: each connection reaches the proxy over TLS.
    let addr = proxy.addr();
    let old = proxy.pid();
    let old_tree = tree(old);
    let stop = Arc::new(AtomicBool::new(false));
    let flows = start_flows(addr, 5, &stop, Duration::from_millis(20)).await;
    // A tunnel the client never closes: only the drain timeout ends it.
    let (mut idle, _) = open(addr, "/a/idle").await.expect("idle TLS tunnel");
    let mut b4 = [0u8; 4];
    idle.write_all(b"ping").await.expect("write");
    idle.read_exact(&mut b4).await.expect("echo");

    proxy.signal(Signal::SIGUSR2);
    let new = upgraded(&proxy);
    let _reaper = Reaper(new);

    // New TLS clients are served (by the new process, on the same listener).
    ping(addr, "/a/new", "a new TLS client").await;
    // The TLS tunnels stayed: they still carry traffic, through the old process.
    idle.write_all(b"pong")
        .await
        .expect("write after the upgrade");
    tokio::time::timeout(WAIT, idle.read_exact(&mut b4))
        .await
        .expect("echo after the upgrade in time")
        .expect("echo after the upgrade");
    assert_eq!(&b4, b"pong");
    // The old process lives on; with worker processes, so do the old workers holding the TLS
    // tunnels (the six may all have landed on one worker: one that held none may be gone).
    assert!(alive(old), "the old process holds the TLS tunnels");
    assert!(
        old_tree.len() == 1 || old_tree.iter().any(|p| *p != old && alive(*p)),
        "an old worker holds the TLS tunnels: {old_tree:?}"
    );
    for n in end_flows(&stop, flows, "(TLS) across the upgrade").await {
        assert!(n > 0);
    }
    // The idle tunnel holds the old process until timeouts.drain, which then closes it.
    assert!(
        proxy.is_running(),
        "the idle TLS tunnel keeps the old process"
    );
    old_exits(&mut proxy, Duration::from_secs(90));
    let end = tokio::time::timeout(WAIT, idle.read(&mut b4))
        .await
        .expect("the idle tunnel is closed at timeouts.drain");
    assert!(matches!(end, Ok(0) | Err(_)), "closed, not data: {end:?}");
    let stderr = proxy.stderr();
    let (handed, _, summary) =
        handed_line(&stderr).unwrap_or_else(|| panic!("no hand-over summary in\n{stderr}"));
    assert_eq!(handed, 0, "no TLS tunnel can move: {summary}");
    assert!(alive(new));
    ping(addr, "/a/after", "the new process serves TLS").await;
}

/// A new tunnel to `path` echoes a `ping` (`what`: who must accept it).
async fn ping(addr: SocketAddr, path: &str, what: &str) {
    let (mut s, _) = open(addr, path).await.expect(what);
    s.write_all(b"ping").await.expect("write");
    let mut b4 = [0u8; 4];
    s.read_exact(&mut b4).await.expect("echo");
}

/// Waits for the upgrade's outcome on the process tree's stdout (the new process inherits it):
/// `upgraded pid=N` or `upgrade failed`.
fn outcome(proxy: &Proxy) -> String {
    tokio::task::block_in_place(|| {
        proxy.expect_line_starting(&["upgraded pid=", "upgrade failed"], WAIT)
    })
}

/// Waits for the upgrade's [`outcome`] and returns the pid an `upgraded pid=` line names.
fn upgraded(proxy: &Proxy) -> u32 {
    let line = outcome(proxy);
    line.strip_prefix("upgraded pid=")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("the upgrade failed: {line}\n{}", proxy.stderr()))
}

/// The configuration may change the worker model and count between two binaries: two worker
/// threads hand their tunnels to a tree of three worker processes (its supervisor passes them
/// on to its workers), and that tree hands them back to two worker threads (its workers write
/// on the upgrade socket itself). Every tunnel keeps flowing through both upgrades, and new
/// clients are served on every listening socket (each is accepted from).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_survive_threads_to_processes_and_back() {
    within(DEADLINE, there_and_back(Relay::Copy, Relay::Copy)).await
}

/// The driver may change between two binaries too (what travels is the same under both):
/// epoll worker threads hand their tunnels to io_uring worker processes, which hand them back
/// to epoll worker threads; in splice mode the other way round (io_uring threads to epoll
/// processes and back), so bytes held in pipes and in io_uring buffers both cross.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_survive_epoll_to_io_uring_and_back() {
    uring(|| there_and_back(Relay::Copy, Relay::Copy.uring())).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_survive_io_uring_to_epoll_and_back() {
    uring(|| there_and_back(Relay::Splice.uring(), Relay::Splice)).await
}

/// Waits until the process serving the admin listener counts `n` tunnels taken over.
fn took_over_all(proxy: &Proxy, n: u64) {
    tokio::task::block_in_place(|| {
        support::blocking::eventually("the new process took every tunnel in", WAIT, || {
            proxy.metric("wsplice_upgrade_tunnels_adopted_total") == n
        })
    });
}

/// Worker threads under `threads` upgrade to three worker processes under `processes`, which
/// upgrade back to worker threads under `threads`: 50 tunnels flow throughout.
async fn there_and_back(threads: Relay, processes: Relay) {
    let echo = backend("A").await.addr;
    let threads = config(threads, "threads", echo).admin();
    let threads_toml = threads.toml();
    // Three worker processes where there were two threads: listeners and tunnels spread
    // over a different number of workers each way.
    let processes_toml = config(processes, "processes", echo)
        .workers(3)
        .admin()
        .toml();
    let mut proxy = threads.start().await;
    let addr = proxy.addr();
    let first = proxy.pid();
    let stop = Arc::new(AtomicBool::new(false));
    let flows = start_flows(addr, 50, &stop, Duration::from_millis(50)).await;

    proxy.write_config(&processes_toml);
    proxy.signal(Signal::SIGUSR2);
    let second = upgraded(&proxy);
    let _reaper = Reaper(second);
    old_exits(&mut proxy, Duration::from_secs(60));
    assert!(!alive(first));
    tokio::task::block_in_place(|| {
        support::blocking::eventually("the new tree runs three worker processes", WAIT, || {
            tree(second).len() == 4
        })
    });
    let old_tree = tree(second);
    // The old process is gone once it has sent every tunnel; the new supervisor may still be
    // passing them on to its workers (a SIGUSR2 meanwhile would close those in transit).
    took_over_all(&proxy, 50);

    proxy.write_config(&threads_toml);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(second as i32), Signal::SIGUSR2)
        .expect("SIGUSR2 to the second process");
    let third = upgraded(&proxy);
    let _reaper3 = Reaper(third);
    all_gone(&old_tree, DEADLINE);
    assert!(alive(third));
    assert_eq!(tree(third).len(), 1, "worker threads again");
    took_over_all(&proxy, 50);
    let stderr = proxy.stderr();
    let summaries: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("upgrade: handed "))
        .collect();
    assert_eq!(summaries.len(), 2, "{stderr}");
    for s in &summaries {
        assert!(
            s.contains("upgrade: handed 50 tunnels") && s.contains("; 0 lost"),
            "{s}\n{stderr}"
        );
    }
    for n in end_flows(&stop, flows, "across threads -> processes -> threads").await {
        assert!(n > 0);
    }
    ping(addr, "/a/after", "the third process serves").await;
}
