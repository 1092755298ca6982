//! Blocking helpers for tests that drive the `wsplice` process itself (signals, limits, RSS):
//! start it from a config file, find its addresses, signal it, scrape its admin listener.
//! (tests/support/ holds the async helpers of the end-to-end suite.)
#![allow(dead_code)]

pub mod tunnels;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// A running proxy, killed on drop.
pub struct Proxy {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub config: PathBuf,
    /// Stdout lines after `ready` (e.g. `reloaded`), read by a background thread.
    pub lines: Receiver<String>,
    /// Stdout lines up to `ready`.
    pub startup: Vec<String>,
    /// Where its stderr goes (printed if the test fails).
    pub stderr_log: PathBuf,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- wsplice stderr ----\n{}", self.stderr());
        }
        let _ = std::fs::remove_file(&self.config);
        let _ = std::fs::remove_file(&self.stderr_log);
    }
}

impl Proxy {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The proxy's stderr so far (its worker processes write there too).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// The process holding the connections: the proxy itself with worker threads, its one
    /// worker process with `worker_model = "processes"` (tests that use this run one worker).
    pub fn serving_pid(&self) -> u32 {
        match worker_pids(self.pid())[..] {
            [one] => one,
            _ => self.pid(),
        }
    }

    /// Rewrites the config file (for a reload).
    pub fn write_config(&self, toml: &str) {
        std::fs::write(&self.config, toml).expect("rewrite config");
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig)
            .expect("signal the proxy");
    }

    /// Waits for a stdout line equal to one of `want`; returns it.
    pub fn expect_line(&self, want: &[&str], within: Duration) -> String {
        let deadline = std::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if want.contains(&l.as_str()) => return l,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => panic!("no {want:?} line within {within:?}"),
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("proxy stdout closed before {want:?}")
                }
            }
        }
    }

    /// One metric's value from `/metrics` (exact name including labels).
    pub fn metric(&self, name: &str) -> u64 {
        let body = self.scrape("/metrics");
        body.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no {name} in\n{body}"))
    }

    /// The body of an admin GET.
    pub fn scrape(&self, path: &str) -> String {
        let admin = self.admin.expect("the config has no admin listener");
        let mut s = TcpStream::connect(admin).expect("admin connect");
        write!(s, "GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n").expect("admin request");
        let mut resp = String::new();
        s.read_to_string(&mut resp).expect("admin answer");
        resp.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default()
    }
}

/// `--worker-model MODEL` when `WSPLICE_TEST_WORKER_MODEL` is set (`threads` or `processes`):
/// the whole suite can be run in either model; by default (and for a config that sets
/// `worker_model` itself) the config's choice stands.
pub fn worker_model_args() -> Vec<String> {
    match std::env::var("WSPLICE_TEST_WORKER_MODEL") {
        Ok(m) if !m.is_empty() => vec!["--worker-model".into(), m],
        _ => Vec::new(),
    }
}

/// The worker processes of a supervisor `pid` (none with threads), by /proc's parent links.
pub fn worker_pids(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(child) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let after = stat.rfind(')').map(|i| &stat[i + 2..]).unwrap_or("");
        if after.split_whitespace().nth(1).and_then(|p| p.parse().ok()) == Some(pid) {
            out.push(child);
        }
    }
    out.sort_unstable();
    out
}

fn temp_config(toml: &str) -> PathBuf {
    static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("wsplice-proc-{}-{n}.toml", std::process::id()));
    std::fs::write(&path, toml).expect("write config");
    path
}

/// Starts `wsplice --config FILE`, through `sh -c "<shell_prefix> exec ..."` when a prefix (such
/// as `ulimit -n 48 &&`) is given; waits for `ready`.
pub fn start(toml: &str, shell_prefix: &str) -> Proxy {
    raise_test_fd_limit();
    let config = temp_config(toml);
    let bin = env!("CARGO_BIN_EXE_wsplice");
    // A test whose config names its model keeps it.
    let model = if toml.contains("worker_model") {
        Vec::new()
    } else {
        worker_model_args()
    };
    let mut cmd = if shell_prefix.is_empty() {
        let mut c = Command::new(bin);
        c.arg("--config").arg(&config).args(&model);
        c
    } else {
        let mut c = Command::new("sh");
        c.args([
            "-c",
            &format!(
                "{shell_prefix} exec '{bin}' --config '{}' {}",
                config.display(),
                model.join(" ")
            ),
        ]);
        c
    };
    let stderr_log = config.with_extension("stderr");
    let stderr = std::fs::File::create(&stderr_log).expect("create the proxy's stderr log");
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .spawn()
        .expect("spawn wsplice");
    let out = child.stdout.take().expect("stdout");
    let (addr, admin, lines, startup) = read_startup(out);
    Proxy {
        child,
        addr: addr.expect("a listen line before ready"),
        admin,
        config,
        lines,
        startup,
        stderr_log,
    }
}

type Startup = (
    Option<SocketAddr>,
    Option<SocketAddr>,
    Receiver<String>,
    Vec<String>,
);

fn read_startup(out: ChildStdout) -> Startup {
    let mut out = BufReader::new(out);
    let (mut addr, mut admin) = (None, None);
    let mut startup = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if out.read_line(&mut line).unwrap_or(0) == 0 {
            panic!("wsplice exited before `ready`");
        }
        let l = line.trim_end();
        if let Some(rest) = l.strip_prefix("listen ") {
            addr = addr.or(rest.split_whitespace().next().and_then(|a| a.parse().ok()));
        }
        if let Some(rest) = l.strip_prefix("admin ") {
            admin = rest.trim().parse().ok();
        }
        startup.push(l.to_owned());
        if l == "ready" {
            break;
        }
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in out.lines() {
            let Ok(l) = l else { return };
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    (addr, admin, rx, startup)
}

/// A WebSocket upgrade head for `path`.
pub fn upgrade_head(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n")
}

/// Reads one head (through `\r\n\r\n`) byte by byte, so nothing after it is consumed.
pub fn read_head(s: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push(b[0]);
    }
    Ok(head)
}

/// `pid` and its worker processes (with `worker_model = "processes"`): the whole proxy.
fn tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    all.extend(worker_pids(pid));
    all
}

/// `VmRSS` of the proxy (a process and its worker processes), bytes.
pub fn rss_bytes(pid: u32) -> u64 {
    tree(pid).into_iter().map(process_rss).sum()
}

fn process_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

/// utime + stime of the proxy (a process and its worker processes), clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    tree(pid).into_iter().map(process_ticks).sum()
}

fn process_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
}

/// Open descriptors of the proxy (a process and its worker processes).
pub fn fd_count(pid: u32) -> usize {
    tree(pid).into_iter().map(process_fds).sum()
}

fn process_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Waits up to `within` for `cond`.
pub fn eventually(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The tests hold thousands of sockets at once (1,000-tunnel reloads under three relay modes run
/// in parallel): take the hard open-file limit, as the proxy itself does, rather than fail on a
/// machine whose soft limit is the usual 1,024.
pub fn raise_test_fd_limit() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Err(e) = wsplice::sys::limits::raise_nofile_limit() {
            eprintln!("could not raise the test process's open-file limit: {e}");
        }
    });
}
