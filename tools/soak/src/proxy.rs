//! The proxy under test: started from `--proxy-bin` with a generated config, or attached to by
//! address and pid. Measured through `/proc/PID` (fds, RSS) and, when it has one, its admin
//! listener (`wsplice_pipes_pooled`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Proxy {
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub pid: u32,
    /// Set when we started it (and so stop it and read its stderr).
    child: Option<Child>,
    config: Option<PathBuf>,
    stderr: Arc<Mutex<Stderr>>,
}

#[derive(Default)]
struct Stderr {
    panicked: bool,
    /// The last lines, for the report when something went wrong.
    tail: Vec<String>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(p) = &self.config {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The generated config: one route to the echo backend, an admin listener for the pipe-pool
/// count, defaults for everything else (idle 1 h, handshake 10 s, limits from the fd limit).
fn config(backend: SocketAddr, relay: &str, workers: Option<usize>) -> String {
    let workers = workers
        .map(|w| format!("workers = {w}\n"))
        .unwrap_or_default();
    format!(
        "listen = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\nrelay = \"{relay}\"\n{workers}\n[[route]]\nprefix = \"/\"\nbackends = [\"{backend}\"]\n"
    )
}

impl Proxy {
    /// Starts `bin --config FILE`; waits for `ready` and takes the `listen` and `admin` lines.
    pub fn start(
        bin: &str,
        backend: SocketAddr,
        relay: &str,
        workers: Option<usize>,
    ) -> Result<Proxy, String> {
        let path = std::env::temp_dir().join(format!("wsplice-soak-{}.toml", std::process::id()));
        std::fs::write(&path, config(backend, relay, workers))
            .map_err(|e| format!("write {}: {e}", path.display()))?;
        let mut child = Command::new(bin)
            .arg("--config")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn {bin}: {e}"))?;
        let stderr = Arc::new(Mutex::new(Stderr::default()));
        let err = BufReader::new(child.stderr.take().expect("stderr"));
        let s2 = stderr.clone();
        std::thread::spawn(move || {
            for l in err.lines() {
                let Ok(l) = l else { return };
                eprintln!("proxy: {l}");
                let mut s = s2.lock().expect("lock");
                s.panicked |= l.contains("panicked");
                s.tail.push(l);
                if s.tail.len() > 50 {
                    s.tail.remove(0);
                }
            }
        });
        // stdout: startup lines to us, then drained for the proxy's whole life (access logs
        // or reload notices must never block it on a full pipe).
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in out.lines() {
                let Ok(l) = l else { return };
                let _ = tx.send(l);
            }
        });
        let (mut addr, mut admin) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let l = rx
                .recv_timeout(left)
                .map_err(|_| format!("{bin}: no `ready` line within 15 s"))?;
            if let Some(rest) = l.strip_prefix("listen ") {
                addr = addr.or(rest.split_whitespace().next().and_then(|a| a.parse().ok()));
            }
            if let Some(rest) = l.strip_prefix("admin ") {
                admin = rest.split_whitespace().next().and_then(|a| a.parse().ok());
            }
            if l == "ready" {
                break;
            }
        }
        std::thread::spawn(move || while rx.recv().is_ok() {});
        let pid = child.id();
        Ok(Proxy {
            addr: addr.ok_or("no `listen ADDR` line before `ready`")?,
            admin,
            pid,
            child: Some(child),
            config: Some(path),
            stderr,
        })
    }

    pub fn attach(addr: SocketAddr, pid: u32, admin: Option<SocketAddr>) -> Proxy {
        Proxy {
            addr,
            admin,
            pid,
            child: None,
            config: None,
            stderr: Arc::default(),
        }
    }

    pub fn fds(&self) -> Option<usize> {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .ok()
            .map(|d| d.count())
    }

    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    }

    /// Empty pipes the proxy keeps pooled for reuse (two fds each; not a leak), from its admin
    /// listener; 0 without one.
    pub fn pooled_pipes(&self) -> u64 {
        self.metric("wsplice_pipes_pooled").unwrap_or(0)
    }

    pub fn metric(&self, name: &str) -> Option<u64> {
        let admin = self.admin?;
        let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(s, "GET /metrics HTTP/1.1\r\nHost: admin\r\n\r\n").ok()?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).ok()?;
        resp.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
    }

    /// Still running (not exited, not a zombie)?
    pub fn alive(&mut self) -> bool {
        if let Some(c) = &mut self.child {
            return matches!(c.try_wait(), Ok(None));
        }
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .ok()
            .and_then(|s| {
                let after = s.rfind(')')?;
                s.get(after + 2..after + 3).map(|st| st != "Z")
            })
            .unwrap_or(false)
    }

    /// Asks a proxy we started to stop (SIGTERM, a drain with nothing left to drain) and waits
    /// up to 10 s; `None` for an attached proxy (left running).
    pub fn stop(&mut self) -> Option<Result<ExitStatus, String>> {
        let child = self.child.as_mut()?;
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match child.try_wait() {
                Ok(Some(st)) => return Some(Ok(st)),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Ok(None) => return Some(Err("did not exit within 10 s of SIGTERM".into())),
                Err(e) => return Some(Err(e.to_string())),
            }
        }
    }

    /// Did its stderr say "panicked"? (Its last lines, for the report.)
    pub fn panicked(&self) -> (bool, Vec<String>) {
        let s = self.stderr.lock().expect("lock");
        (s.panicked, s.tail.clone())
    }
}
