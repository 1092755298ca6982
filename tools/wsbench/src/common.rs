//! Shared pieces of the client modes: connecting from rotating source addresses, the
//! connection-rate limiter, error tallies, histogram summaries and `/proc` sampling.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

pub type Ws = WebSocketStream<TcpStream>;

/// Raises the soft open-file limit to the hard limit; returns (soft, hard) after the change.
pub fn raise_nofile() -> (u64, u64) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read/write the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim = want;
            }
        }
    }
    (lim.rlim_cur, lim.rlim_max)
}

/// CPU seconds (user + system) this process has used so far.
pub fn self_cpu_s() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Nanoseconds since the UNIX epoch: the clock shared by the backend (stamping broadcasts)
/// and the clients (receiving them); both run on the same host.
pub fn unix_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// `ws://host:port/path` split into the socket address to dial and the URL for the handshake.
#[derive(Clone, Debug)]
pub struct Target {
    pub url: String,
    pub addr: SocketAddr,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
        let rest = url
            .strip_prefix("ws://")
            .or_else(|| url.strip_prefix("http://"))
            .ok_or_else(|| format!("target {url:?}: only ws:// (and http:// for `http`) URLs are supported"))?;
        let authority = rest.split('/').next().unwrap_or("");
        let addr: SocketAddr = authority
            .parse()
            .or_else(|_| format!("{authority}:80").parse())
            .map_err(|_| format!("target {url:?}: authority must be IP:PORT"))?;
        Ok(Target { url: url.to_string(), addr })
    }
}

/// Source addresses handed out round-robin, so that N is not bounded by one address's
/// ephemeral ports.
#[derive(Debug)]
pub struct Sources {
    addrs: Vec<Ipv4Addr>,
    next: AtomicUsize,
}

impl Sources {
    /// Parses `127.0.0.2-127.0.0.40`, `127.0.0.5` or a comma list of either; `none` means
    /// "let the kernel choose".
    pub fn parse(spec: &str) -> Result<Sources, String> {
        let mut addrs = Vec::new();
        if spec != "none" {
            for part in spec.split(',').filter(|p| !p.is_empty()) {
                let (a, b) = part.split_once('-').unwrap_or((part, part));
                let a: Ipv4Addr = a.trim().parse().map_err(|_| format!("bad source {a:?}"))?;
                let b: Ipv4Addr = b.trim().parse().map_err(|_| format!("bad source {b:?}"))?;
                let (a, b) = (u32::from(a), u32::from(b));
                if b < a || b - a > 65535 {
                    return Err(format!("bad source range {part:?}"));
                }
                addrs.extend((a..=b).map(Ipv4Addr::from));
            }
        }
        Ok(Sources { addrs, next: AtomicUsize::new(0) })
    }

    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    fn pick(&self) -> Option<Ipv4Addr> {
        if self.addrs.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        Some(self.addrs[i % self.addrs.len()])
    }
}

/// Small buffers for modes that hold many mostly idle connections: tungstenite allocates
/// its read buffer eagerly (128 KiB by default).
pub fn small_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0)
}

pub fn bulk_config() -> WebSocketConfig {
    WebSocketConfig::default().write_buffer_size(0).max_message_size(Some(64 << 20))
}

/// Opens one TCP connection from the next source address and performs the WebSocket
/// handshake (tungstenite checks the 101 and `Sec-WebSocket-Accept`). The error is a short
/// reason suitable as a tally key.
pub async fn connect(
    target: &Target,
    sources: &Sources,
    config: WebSocketConfig,
) -> Result<Ws, String> {
    let stream = tcp_connect(target, sources).await?;
    let (ws, _resp) =
        tokio_tungstenite::client_async_with_config(target.url.as_str(), stream, Some(config))
            .await
            .map_err(|e| ws_reason("handshake", &e))?;
    Ok(ws)
}

/// One TCP connection (TCP_NODELAY) from the next source address to the target.
pub async fn tcp_connect(target: &Target, sources: &Sources) -> Result<TcpStream, String> {
    let sock = TcpSocket::new_v4().map_err(|e| io_reason("socket", &e))?;
    if let Some(src) = sources.pick() {
        // Defer port choice to connect() so that the 4-tuple, not the (addr, port) pair,
        // must be unique: more than 28k connections per source address become possible.
        set_bind_no_port(&sock);
        sock.bind(SocketAddr::new(IpAddr::V4(src), 0)).map_err(|e| io_reason("bind", &e))?;
    }
    let stream = sock.connect(target.addr).await.map_err(|e| io_reason("connect", &e))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

fn set_bind_no_port(sock: &TcpSocket) {
    let one: libc::c_int = 1;
    // SAFETY: valid fd owned by `sock`, option value is a c_int on our stack.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

pub fn io_reason(op: &str, e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => format!("{op}: {}", errno_name(code)),
        None => format!("{op}: {:?}", e.kind()),
    }
}

fn errno_name(code: i32) -> String {
    match code {
        libc::ECONNREFUSED => "ECONNREFUSED".into(),
        libc::ECONNRESET => "ECONNRESET".into(),
        libc::ETIMEDOUT => "ETIMEDOUT".into(),
        libc::EMFILE => "EMFILE".into(),
        libc::ENFILE => "ENFILE".into(),
        libc::EADDRINUSE => "EADDRINUSE".into(),
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL".into(),
        libc::EPIPE => "EPIPE".into(),
        libc::ENOBUFS => "ENOBUFS".into(),
        other => format!("errno {other}"),
    }
}

pub fn ws_reason(op: &str, e: &tokio_tungstenite::tungstenite::Error) -> String {
    use tokio_tungstenite::tungstenite::Error as E;
    match e {
        E::Io(io) => io_reason(op, io),
        E::Http(resp) => format!("{op}: HTTP {}", resp.status().as_u16()),
        E::Protocol(p) => format!("{op}: protocol: {p}"),
        E::ConnectionClosed | E::AlreadyClosed => format!("{op}: closed"),
        E::Capacity(c) => format!("{op}: capacity: {c}"),
        other => format!("{op}: {other}"),
    }
}

/// Counts errors by reason; shared between tasks.
#[derive(Clone, Default)]
pub struct Tally(Arc<Mutex<BTreeMap<String, u64>>>);

impl Tally {
    pub fn add(&self, reason: impl Into<String>) {
        *self.0.lock().unwrap().entry(reason.into()).or_insert(0) += 1;
    }
    pub fn total(&self) -> u64 {
        self.0.lock().unwrap().values().sum()
    }
    pub fn to_json(&self) -> Value {
        json!(self.0.lock().unwrap().clone())
    }
}

/// Spaces connection attempts `1/rate` apart (rate 0 = unbounded).
pub struct Pacer {
    start: tokio::time::Instant,
    interval: Duration,
    n: u64,
}

impl Pacer {
    pub fn new(rate: f64) -> Pacer {
        let interval =
            if rate > 0.0 { Duration::from_secs_f64(1.0 / rate) } else { Duration::ZERO };
        Pacer { start: tokio::time::Instant::now(), interval, n: 0 }
    }
    pub async fn tick(&mut self) {
        let due = self.start + self.interval * (self.n as u32);
        self.n += 1;
        if !self.interval.is_zero() {
            tokio::time::sleep_until(due).await;
        }
    }
}

pub fn new_hist() -> Histogram<u64> {
    Histogram::new(3).expect("sigfig 3 is valid")
}

/// p50/p99/p99.9/max in microseconds from a histogram recorded in nanoseconds.
pub fn hist_us(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({"count": 0});
    }
    let us = |ns: u64| (ns as f64 / 1000.0 * 10.0).round() / 10.0;
    json!({
        "count": h.len(),
        "p50_us": us(h.value_at_quantile(0.50)),
        "p99_us": us(h.value_at_quantile(0.99)),
        "p999_us": us(h.value_at_quantile(0.999)),
        "max_us": us(h.max()),
        "mean_us": us(h.mean() as u64),
    })
}

/// Opens `n` connections with `concurrency` attempts in flight at most, paced at `rate`
/// per second, giving up at `deadline`. Returns the connections (in no particular order)
/// and the seconds it took.
pub async fn open_many(
    target: &Target,
    sources: &Arc<Sources>,
    n: usize,
    rate: f64,
    config: WebSocketConfig,
    errors: &Tally,
    deadline: tokio::time::Instant,
) -> (Vec<Ws>, f64) {
    let start = std::time::Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let sem = Arc::new(tokio::sync::Semaphore::new(512));
    let spawner = {
        let target = target.clone();
        let sources = sources.clone();
        let errors = errors.clone();
        tokio::spawn(async move {
            let mut pacer = Pacer::new(rate);
            for _ in 0..n {
                pacer.tick().await;
                let permit = sem.clone().acquire_owned().await.unwrap();
                let (target, sources, errors, tx) =
                    (target.clone(), sources.clone(), errors.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout_at(deadline, connect(&target, &sources, config))
                        .await
                    {
                        Ok(Ok(ws)) => {
                            let _ = tx.send(ws);
                        }
                        Ok(Err(reason)) => errors.add(reason),
                        Err(_) => errors.add("connect: deadline"),
                    }
                    drop(permit);
                });
            }
        })
    };
    let mut out = Vec::with_capacity(n);
    let mut last_report = std::time::Instant::now();
    loop {
        if out.len() + errors.total() as usize >= n {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
            Ok(Some(ws)) => out.push(ws),
            Ok(None) => break,
            Err(_) => {}
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        if last_report.elapsed() > Duration::from_secs(2) {
            last_report = std::time::Instant::now();
            eprintln!("  opened {} / {} ({} failed)", out.len(), n, errors.total());
        }
    }
    spawner.abort();
    (out, start.elapsed().as_secs_f64())
}

/// Resource use of a process and all its descendants, from `/proc`.
pub fn proc_tree(pid: u32) -> Value {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for ent in rd.flatten() {
            let Some(p) = ent.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(st) = read_stat(p) {
                children.entry(st.ppid).or_default().push(p);
            }
        }
    }
    let mut pids = vec![pid];
    let mut i = 0;
    while i < pids.len() {
        if let Some(c) = children.get(&pids[i]) {
            pids.extend(c.iter().copied());
        }
        i += 1;
    }
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let (mut rss, mut pss, mut fds, mut ticks, mut alive) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut root_rss = 0;
    for &p in &pids {
        let Some(st) = read_stat(p) else { continue };
        alive += 1;
        ticks += st.utime + st.stime;
        let r = status_kb(p, "VmRSS:");
        if p == pid {
            root_rss = r;
        }
        rss += r;
        pss += rollup_kb(p, "Pss:");
        fds += std::fs::read_dir(format!("/proc/{p}/fd")).map(|d| d.count() as u64).unwrap_or(0);
    }
    json!({
        "pid": pid,
        "processes": alive,
        "rss_kb": rss,
        "root_rss_kb": root_rss,
        "children_rss_kb": rss - root_rss,
        "pss_kb": pss,
        "fds": fds,
        "cpu_s": ticks as f64 / tck,
    })
}

struct Stat {
    ppid: u32,
    utime: u64,
    stime: u64,
}

fn read_stat(pid: u32) -> Option<Stat> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // rest[0] is field 3 (state); ppid is field 4, utime 14, stime 15.
    Some(Stat { ppid: f.get(1)?.parse().ok()?, utime: f.get(11)?.parse().ok()?, stime: f.get(12)?.parse().ok()? })
}

fn status_kb(pid: u32, key: &str) -> u64 {
    kb_field(&std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default(), key)
}

fn rollup_kb(pid: u32, key: &str) -> u64 {
    kb_field(&std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default(), key)
}

fn kb_field(text: &str, key: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l[key.len()..].trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Deterministic filler so that any corrupted, reordered or truncated byte is detected.
pub fn fill(buf: &mut [u8], seed: u64) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}
