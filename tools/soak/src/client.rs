//! The clients: `N` slots, each holding one connection at a time and replacing it when it ends.
//! A connection lives for an exponentially distributed time, exchanges rounds of 1..=3 pipelined
//! messages (log-uniform sizes, text or binary) whose echoes are checked byte for byte, then ends
//! one of three ways: a clean close, a half-close (messages still in flight, then Close and
//! maybe a TCP FIN, then read everything until the backend closes), or an abrupt reset.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::time::{sleep, sleep_until, timeout, timeout_at, Instant};
use tokio_tungstenite::tungstenite::Message;

use crate::net::{self, Sources, Ws};
use crate::rng::Rng;

pub struct Settings {
    pub proxy: SocketAddr,
    pub sources: Sources,
    /// Clients stop starting rounds and leave at this instant.
    pub deadline: Instant,
    pub ramp: Duration,
    pub mean_lifetime_s: f64,
    pub mean_gap_ms: f64,
    pub max_size: u64,
    pub half_close: f64,
    pub reset: f64,
    pub echo_timeout: Duration,
}

#[derive(Default)]
pub struct Stats {
    pub opened: AtomicU64,
    pub failed: AtomicU64,
    pub open_now: AtomicU64,
    pub open_peak: AtomicU64,
    pub closed_clean: AtomicU64,
    pub closed_half: AtomicU64,
    pub closed_reset: AtomicU64,
    /// Connections that ended in an error after the handshake.
    pub broken: AtomicU64,
    pub sent: AtomicU64,
    pub sent_text: AtomicU64,
    pub echoed: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub bytes_echoed: AtomicU64,
    /// Messages still in flight when their connection was reset on purpose.
    pub abandoned: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Stats {
    pub fn error(&self, reason: impl Into<String>) {
        *self
            .errors
            .lock()
            .expect("lock")
            .entry(reason.into())
            .or_default() += 1;
    }

    pub fn errors(&self) -> BTreeMap<String, u64> {
        self.errors.lock().expect("lock").clone()
    }
}

#[derive(Clone, Copy)]
enum Ending {
    Clean,
    HalfClose,
    Reset,
}

/// One slot: connect, run, end, replace, until the deadline.
pub async fn slot(s: Arc<Settings>, stats: Arc<Stats>, mut rng: Rng) {
    sleep(s.ramp.mul_f64(rng.unit())).await;
    let mut n = 0u64;
    while Instant::now() < s.deadline {
        let mut r = rng.fork(n);
        n += 1;
        if !connection(&s, &stats, &mut r).await {
            // Back off a little after a failed connect: a refusing proxy must not be hammered.
            sleep(Duration::from_millis(200)).await;
        } else {
            sleep(Duration::from_millis(rng.range(0, 50))).await;
        }
    }
}

/// What is expected back: the payload, and whether it was sent as text.
type Expect = VecDeque<(bool, Vec<u8>)>;

/// Runs one connection to its end; false if it could not be opened.
async fn connection(s: &Settings, stats: &Stats, rng: &mut Rng) -> bool {
    let mut ws = match timeout(Duration::from_secs(10), net::connect(s.proxy, &s.sources)).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(reason)) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            stats.error(reason);
            return false;
        }
        Err(_) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            stats.error("connect: timeout");
            return false;
        }
    };
    stats.opened.fetch_add(1, Ordering::Relaxed);
    let now_open = stats.open_now.fetch_add(1, Ordering::Relaxed) + 1;
    stats.open_peak.fetch_max(now_open, Ordering::Relaxed);

    let end = Instant::now() + Duration::from_secs_f64(rng.exp(s.mean_lifetime_s));
    let ending = match rng.unit() {
        u if u < s.reset => Ending::Reset,
        u if u < s.reset + s.half_close => Ending::HalfClose,
        _ => Ending::Clean,
    };
    let result = run(s, stats, rng, &mut ws, end.min(s.deadline)).await;
    let result = match result {
        // Everyone leaving at the deadline leaves cleanly.
        Ok(()) if Instant::now() >= s.deadline => finish(s, stats, rng, ws, Ending::Clean).await,
        Ok(()) => finish(s, stats, rng, ws, ending).await,
        Err(e) => Err(e),
    };
    stats.open_now.fetch_sub(1, Ordering::Relaxed);
    if let Err(reason) = result {
        stats.broken.fetch_add(1, Ordering::Relaxed);
        stats.error(reason);
    }
    true
}

/// Rounds of pipelined messages until `end`.
async fn run(
    s: &Settings,
    stats: &Stats,
    rng: &mut Rng,
    ws: &mut Ws,
    end: Instant,
) -> Result<(), String> {
    let mut expect = Expect::new();
    loop {
        let next = Instant::now() + Duration::from_secs_f64(rng.exp(s.mean_gap_ms) / 1000.0);
        if next >= end {
            sleep_until(end).await;
            return Ok(());
        }
        sleep_until(next).await;
        for _ in 0..rng.range(1, 3) {
            send(s, stats, rng, ws, &mut expect).await?;
        }
        while !expect.is_empty() {
            match timeout(s.echo_timeout, ws.next()).await {
                Err(_) => return Err("echo: timeout".into()),
                Ok(m) => check(stats, m, &mut expect)?,
            }
        }
    }
}

async fn send(
    s: &Settings,
    stats: &Stats,
    rng: &mut Rng,
    ws: &mut Ws,
    expect: &mut Expect,
) -> Result<(), String> {
    let size = rng.log_uniform(s.max_size) as usize;
    let text = rng.chance(0.5);
    let mut payload = vec![0u8; size];
    rng.fill(&mut payload);
    let msg = if text {
        for b in &mut payload {
            *b = b' ' + *b % 95;
        }
        Message::text(String::from_utf8(payload.clone()).expect("ASCII"))
    } else {
        Message::binary(payload.clone())
    };
    timeout(s.echo_timeout, ws.send(msg))
        .await
        .map_err(|_| "send: timeout".to_string())?
        .map_err(|e| net::ws_reason("send", &e))?;
    stats.sent.fetch_add(1, Ordering::Relaxed);
    if text {
        stats.sent_text.fetch_add(1, Ordering::Relaxed);
    }
    stats.bytes_sent.fetch_add(size as u64, Ordering::Relaxed);
    expect.push_back((text, payload));
    Ok(())
}

/// Checks one received item against the oldest expected echo.
fn check(
    stats: &Stats,
    m: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    expect: &mut Expect,
) -> Result<(), String> {
    let m = match m {
        None => return Err("echo: connection ended".into()),
        Some(Err(e)) => return Err(net::ws_reason("echo", &e)),
        Some(Ok(m)) => m,
    };
    let (text, want) = expect.pop_front().ok_or("echo: unexpected message")?;
    let got: &[u8] = match (&m, text) {
        (Message::Text(t), true) => t.as_bytes(),
        (Message::Binary(b), false) => b,
        (Message::Close(_), _) => return Err("echo: close before all echoes".into()),
        _ => return Err("echo: mismatch (type)".into()),
    };
    if got.len() != want.len() {
        return Err("echo: mismatch (length)".into());
    }
    if got != want.as_slice() {
        return Err("echo: mismatch (content)".into());
    }
    stats.echoed.fetch_add(1, Ordering::Relaxed);
    stats
        .bytes_echoed
        .fetch_add(got.len() as u64, Ordering::Relaxed);
    Ok(())
}

async fn finish(
    s: &Settings,
    stats: &Stats,
    rng: &mut Rng,
    mut ws: Ws,
    ending: Ending,
) -> Result<(), String> {
    let mut expect = Expect::new();
    match ending {
        Ending::Reset => {
            // Half of the resets hit a tunnel with bytes in flight.
            if rng.chance(0.5) {
                send(s, stats, rng, &mut ws, &mut expect).await?;
                stats.abandoned.fetch_add(1, Ordering::Relaxed);
            }
            net::reset(ws);
            stats.closed_reset.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        Ending::HalfClose => {
            for _ in 0..rng.range(1, 3) {
                send(s, stats, rng, &mut ws, &mut expect).await?;
            }
        }
        Ending::Clean => {}
    }
    timeout(s.echo_timeout, ws.close(None))
        .await
        .map_err(|_| "close: timeout".to_string())?
        .map_err(|e| net::ws_reason("close", &e))?;
    if matches!(ending, Ending::HalfClose) && rng.chance(0.5) {
        // Our FIN after the Close frame: the proxy must pass it on as a half-close and still
        // deliver everything the backend sends back.
        net::shutdown_write(&ws);
    }
    let deadline = Instant::now() + s.echo_timeout;
    while !expect.is_empty() {
        match timeout_at(deadline, ws.next()).await {
            Err(_) => return Err("close: echoes timeout".into()),
            Ok(m) => check(stats, m, &mut expect)?,
        }
    }
    // Then the backend's Close, then the end of the stream.
    let mut saw_close = false;
    loop {
        match timeout_at(deadline, ws.next()).await {
            Err(_) => return Err("close: timeout waiting for the backend to close".into()),
            Ok(Some(Ok(Message::Close(_)))) => saw_close = true,
            Ok(Some(Ok(_))) => return Err("close: data after the echoes".into()),
            Ok(None) => break,
            Ok(Some(Err(tokio_tungstenite::tungstenite::Error::ConnectionClosed))) => break,
            Ok(Some(Err(e))) => return Err(net::ws_reason("close", &e)),
        }
    }
    if !saw_close {
        return Err("close: no Close frame from the backend".into());
    }
    match ending {
        Ending::HalfClose => stats.closed_half.fetch_add(1, Ordering::Relaxed),
        _ => stats.closed_clean.fetch_add(1, Ordering::Relaxed),
    };
    Ok(())
}
