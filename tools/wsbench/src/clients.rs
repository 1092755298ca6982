//! The client modes: hold, echo, fanout, bulk, churn. Each returns `(params, results,
//! errors)` as JSON; `main` prints them as one line.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::time::Instant as TInstant;
use tokio_tungstenite::tungstenite::{Bytes, Message};

use crate::common::*;

pub struct Common {
    pub target: Target,
    pub sources: Arc<Sources>,
    pub connect_rate: f64,
    pub deadline: TInstant,
    pub pid: Option<u32>,
}

impl Common {
    fn params(&self) -> Value {
        json!({"target": self.target.url, "sources": self.sources.len(), "connect_rate": self.connect_rate})
    }
}

pub type Outcome = (Value, Value, Tally);

/// End of the connect phase: `reserve` before the run's deadline, but never less than half
/// of the time left (a short `--timeout` still gets to connect).
fn phase_deadline(deadline: TInstant, reserve: Duration) -> TInstant {
    let now = TInstant::now();
    let left = deadline.saturating_duration_since(now);
    if left > reserve * 2 { deadline - reserve } else { now + left / 2 }
}

/// Closes a connection with a Close frame and waits (bounded) for the peer's Close.
async fn close_clean(mut ws: Ws) -> bool {
    if ws.close(None).await.is_err() {
        return false;
    }
    let drain = async {
        loop {
            match ws.next().await {
                None => return true,
                Some(Err(_)) => return false,
                Some(Ok(_)) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), drain).await.unwrap_or(false)
}

async fn close_all(conns: Vec<Ws>) -> u64 {
    let tasks: Vec<_> = conns.into_iter().map(|ws| tokio::spawn(close_clean(ws))).collect();
    let mut clean = 0;
    for t in tasks {
        if let Ok(true) = t.await {
            clean += 1;
        }
    }
    clean
}

// ---------------------------------------------------------------------------------------
// hold

/// One message out and its echo back, byte-exact, within 10 s.
async fn echo_once(ws: &mut Ws, conn: u64) -> Result<(), String> {
    let mut msg = vec![0u8; 64];
    fill(&mut msg, conn);
    ws.send(Message::Binary(Bytes::from(msg.clone()))).await.map_err(|e| ws_reason("echo after hold", &e))?;
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Binary(b))) => return Ok(b),
                Some(Ok(Message::Close(_))) | None => return Err("echo after hold: closed by peer".to_string()),
                Some(Err(e)) => return Err(ws_reason("echo after hold", &e)),
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .map_err(|_| "echo after hold: timeout".to_string())??;
    if got[..] == msg[..] { Ok(()) } else { Err("echo after hold: differs".into()) }
}

pub async fn hold(c: Common, n: usize, hold_s: f64, echo_after: bool) -> Outcome {
    let errors = Tally::default();
    let open_deadline = phase_deadline(c.deadline, Duration::from_secs_f64(hold_s + 10.0));
    let (conns, open_s) =
        open_many(&c.target, &c.sources, n, c.connect_rate, small_config(), &errors, open_deadline).await;
    let opened = conns.len();
    eprintln!("hold: opened {opened}/{n} in {open_s:.2}s; holding {hold_s}s");
    let failed = errors.total();

    let (close_tx, close_rx) = tokio::sync::watch::channel(false);
    let dropped = Tally::default();
    let echoed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(opened);
    for (i, mut ws) in conns.into_iter().enumerate() {
        let mut rx = close_rx.clone();
        let dropped = dropped.clone();
        let echoed = echoed.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = rx.changed() => {
                        if echo_after {
                            match echo_once(&mut ws, i as u64).await {
                                Ok(()) => { echoed.fetch_add(1, Ordering::Relaxed); }
                                Err(e) => { dropped.add(e); return false }
                            }
                        }
                        return close_clean(ws).await
                    }
                    m = ws.next() => match m {
                        Some(Ok(Message::Close(_))) | None => { dropped.add("closed by peer"); return false }
                        Some(Err(e)) => { dropped.add(ws_reason("hold", &e)); return false }
                        Some(Ok(_)) => {}
                    }
                }
            }
        }));
    }
    let until = (TInstant::now() + Duration::from_secs_f64(hold_s)).min(c.deadline - Duration::from_secs(6));
    tokio::time::sleep_until(until).await;
    let sample = c.pid.map(proc_tree);
    let dropped_n = dropped.total();
    eprintln!("hold: sampled; {dropped_n} dropped during hold; closing");
    let _ = close_tx.send(true);
    let mut clean = 0u64;
    for t in tasks {
        if let Ok(true) = t.await {
            clean += 1;
        }
    }
    let results = json!({
        "opened": opened,
        "failed": failed,
        "open_s": open_s,
        "open_rate": if open_s > 0.0 { opened as f64 / open_s } else { 0.0 },
        "dropped_during_hold": dropped_n,
        "alive_at_sample": opened as u64 - dropped_n,
        "closed_clean": clean,
        "echoed_after_hold": echo_after.then(|| echoed.load(Ordering::Relaxed)),
        "proc": sample,
    });
    for (k, v) in dropped.to_json().as_object().unwrap() {
        for _ in 0..v.as_u64().unwrap_or(0) {
            errors.add(format!("hold: {k}"));
        }
    }
    let mut params = c.params();
    params["n"] = json!(n);
    params["hold_s"] = json!(hold_s);
    params["echo_after"] = json!(echo_after);
    (params, results, errors)
}

// ---------------------------------------------------------------------------------------
// echo

/// Echo message: seq, intended send time, actual send time (ns since the connection's
/// base instant), then filler seeded by (conn, seq).
fn echo_payload(size: usize, conn: u64, seq: u64, intended_ns: u64, actual_ns: u64) -> Vec<u8> {
    let mut buf = vec![0u8; size];
    buf[0..8].copy_from_slice(&seq.to_le_bytes());
    buf[8..16].copy_from_slice(&intended_ns.to_le_bytes());
    buf[16..24].copy_from_slice(&actual_ns.to_le_bytes());
    fill(&mut buf[24..], (conn << 32) ^ seq);
    buf
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

pub async fn echo(c: Common, conns_n: usize, size: usize, duration_s: f64, rate: Option<f64>, warmup_s: f64) -> Outcome {
    let errors = Tally::default();
    let mut params = c.params();
    params["c"] = json!(conns_n);
    params["size"] = json!(size);
    params["duration_s"] = json!(duration_s);
    params["warmup_s"] = json!(warmup_s);
    params["rate"] = json!(rate);
    params["loop"] = json!(if rate.is_some() { "open (CO-corrected)" } else { "closed" });
    if size < 24 {
        errors.add("size must be at least 24");
        return (params, json!({}), errors);
    }
    let open_deadline = phase_deadline(c.deadline, Duration::from_secs_f64(warmup_s + duration_s + 15.0));
    let (conns, open_s) =
        open_many(&c.target, &c.sources, conns_n, c.connect_rate, small_config(), &errors, open_deadline).await;
    eprintln!("echo: {} connections open in {open_s:.2}s; warming up {warmup_s}s, then measuring {duration_s}s", conns.len());
    let t0 = TInstant::now() + Duration::from_millis(50);
    // Messages due before `measured` warm every part up (first-message buffers of the
    // generator, backend and proxy, page faults, TCP state): they are echoed and checked but
    // kept out of the figures, which are the steady state's.
    let measured = t0 + Duration::from_secs_f64(warmup_s);
    let end = measured + Duration::from_secs_f64(duration_s);
    let drain_end = (end + Duration::from_secs(5)).min(c.deadline - Duration::from_secs(1));
    let n_live = conns.len().max(1) as f64;
    let mut tasks = Vec::new();
    for (i, ws) in conns.into_iter().enumerate() {
        let errors = errors.clone();
        let conn = i as u64;
        let span = Span { first: t0, measured, end, drain_end };
        tasks.push(tokio::spawn(async move {
            match rate {
                None => echo_closed(ws, conn, size, span, errors).await,
                Some(r) => {
                    let per_conn = Duration::from_secs_f64(n_live / r);
                    let offset = Duration::from_secs_f64(i as f64 / r);
                    echo_open(ws, conn, size, Span { first: t0 + offset, ..span }, per_conn, errors).await
                }
            }
        }));
    }
    // The CPU window starts with the measured phase.
    tokio::time::sleep_until(measured).await;
    let before = c.pid.map(proc_tree);
    let mut all = EchoSum::default();
    let mut conns_back = Vec::new();
    for t in tasks {
        if let Ok((tally, ws)) = t.await {
            all.add(&tally);
            conns_back.extend(ws);
        }
    }
    let elapsed = (TInstant::now().min(end) - measured).as_secs_f64().max(1e-9);
    let after = c.pid.map(proc_tree);
    let clean = close_all(conns_back).await;
    if all.n.received_total < all.n.sent_total {
        errors.add(format!("echo: {} messages not echoed before drain deadline", all.n.sent_total - all.n.received_total));
    }
    let results = json!({
        "open_s": open_s,
        // Messages of the measured phase (due at or after the warm-up's end).
        "sent": all.n.sent,
        "received": all.n.received,
        "sent_total": all.n.sent_total,
        "received_total": all.n.received_total,
        "msgs_per_s": all.n.received as f64 / duration_s.min(elapsed).max(1e-9),
        "latency": hist_us(&all.h),
        // Open loop only: from the actual send time. Differs from `latency` by sender
        // lateness, which includes tokio's 1 ms timer granularity.
        "latency_from_actual_send": if rate.is_some() { hist_us(&all.hu) } else { Value::Null },
        // The warm-up's messages, from the intended send time: the start-up transient.
        "latency_warmup": hist_us(&all.hw),
        "closed_clean": clean,
        "proc_before": before,
        "proc_after": after,
        "proxy_cpu_s": cpu_delta(&before, &after),
    });
    (params, results, errors)
}

pub fn cpu_delta(before: &Option<Value>, after: &Option<Value>) -> Value {
    match (before, after) {
        (Some(b), Some(a)) => json!(a["cpu_s"].as_f64().unwrap_or(0.0) - b["cpu_s"].as_f64().unwrap_or(0.0)),
        _ => Value::Null,
    }
}

/// When one connection's echo runs: sending from `first`, measuring from `measured`, no new
/// message from `end`, replies awaited until `drain_end`.
#[derive(Clone, Copy)]
struct Span {
    first: TInstant,
    measured: TInstant,
    end: TInstant,
    drain_end: TInstant,
}

/// One connection's echo figures, latencies in nanoseconds. Kept as plain vectors and put in
/// a histogram only at the end: an auto-resizing histogram per connection grows its counts
/// array (hundreds of KiB at 3 significant figures) the first time it sees a larger value,
/// and a thousand connections doing that at once stalled the generator itself for ~300 ms,
/// which was the p99 every peer showed at 20,000 msg/s.
#[derive(Default)]
struct EchoTally {
    /// Measured phase: from the intended (open loop) or actual (closed loop) send time.
    h: Vec<u64>,
    /// Measured phase, open loop: from the actual send time.
    hu: Vec<u64>,
    /// Warm-up.
    hw: Vec<u64>,
    n: Counts,
}

/// Messages sent and echoed: `sent`/`received` those of the measured phase, `*_total` all.
#[derive(Default, Clone, Copy)]
struct Counts {
    sent: u64,
    received: u64,
    sent_total: u64,
    received_total: u64,
}

/// All connections' echo figures.
struct EchoSum {
    h: hdrhistogram::Histogram<u64>,
    hu: hdrhistogram::Histogram<u64>,
    hw: hdrhistogram::Histogram<u64>,
    n: Counts,
}

impl Default for EchoSum {
    fn default() -> Self {
        EchoSum { h: new_hist(), hu: new_hist(), hw: new_hist(), n: Counts::default() }
    }
}

impl EchoSum {
    fn add(&mut self, o: &EchoTally) {
        for (h, v) in [(&mut self.h, &o.h), (&mut self.hu, &o.hu), (&mut self.hw, &o.hw)] {
            for &ns in v {
                let _ = h.record(ns);
            }
        }
        self.n.sent += o.n.sent;
        self.n.received += o.n.received;
        self.n.sent_total += o.n.sent_total;
        self.n.received_total += o.n.received_total;
    }
}

type EchoRet = (EchoTally, Option<Ws>);

async fn echo_closed(mut ws: Ws, conn: u64, size: usize, span: Span, errors: Tally) -> EchoRet {
    let mut t = EchoTally::default();
    tokio::time::sleep_until(span.first).await;
    let mut seq = 0u64;
    while TInstant::now() < span.end {
        let start = Instant::now();
        let warm = TInstant::now() < span.measured;
        let payload = echo_payload(size, conn, seq, 0, 0);
        if let Err(e) = ws.send(Message::Binary(Bytes::from(payload.clone()))).await {
            errors.add(ws_reason("echo send", &e));
            return (t, None);
        }
        t.n.sent_total += 1;
        t.n.sent += u64::from(!warm);
        let got = tokio::time::timeout_at(span.drain_end, next_data(&mut ws)).await;
        match got {
            Ok(Ok(b)) => {
                if b[..] != payload[..] {
                    errors.add("echo: payload mismatch");
                }
                t.n.received_total += 1;
                let ns = start.elapsed().as_nanos() as u64;
                if warm {
                    t.hw.push(ns);
                } else {
                    t.n.received += 1;
                    t.h.push(ns);
                }
            }
            Ok(Err(reason)) => {
                errors.add(reason);
                return (t, None);
            }
            Err(_) => {
                errors.add("echo: reply timeout");
                return (t, None);
            }
        }
        seq += 1;
    }
    (t, Some(ws))
}

/// Next text or binary payload, skipping control frames.
async fn next_data(ws: &mut Ws) -> Result<Bytes, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => return Ok(b),
            Some(Ok(Message::Text(t))) => return Ok(Bytes::copy_from_slice(t.as_bytes())),
            Some(Ok(Message::Close(_))) | None => return Err("closed by peer".into()),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(ws_reason("read", &e)),
        }
    }
}

async fn echo_open(ws: Ws, conn: u64, size: usize, span: Span, interval: Duration, errors: Tally) -> EchoRet {
    let base = Instant::now();
    let tbase = TInstant::now();
    let measured_ns = span.measured.saturating_duration_since(tbase).as_nanos() as u64;
    let (mut sink, mut stream) = ws.split();
    let sent = Arc::new(AtomicU64::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let sender = {
        let (sent, errors, done) = (sent.clone(), errors.clone(), done.clone());
        async move {
            let mut seq = 0u64;
            let mut measured = 0u64;
            loop {
                let intended = span.first + interval * (seq as u32);
                if intended >= span.end {
                    break;
                }
                tokio::time::sleep_until(intended).await;
                // The intended time, not the actual send time, is what latency is measured
                // from: a stalled sender must not hide the stall (coordinated omission).
                let intended_ns = (intended - tbase).as_nanos() as u64;
                let payload = echo_payload(size, conn, seq, intended_ns, base.elapsed().as_nanos() as u64);
                if let Err(e) = sink.send(Message::Binary(Bytes::from(payload))).await {
                    errors.add(ws_reason("echo send", &e));
                    break;
                }
                seq += 1;
                measured += u64::from(intended >= span.measured);
                sent.store(seq, Ordering::Release);
            }
            done.notify_one();
            (sink, measured)
        }
    };
    let receiver = {
        let (sent, errors) = (sent.clone(), errors.clone());
        async move {
            let mut t = EchoTally::default();
            let mut sender_done = false;
            loop {
                if sender_done && t.n.received_total >= sent.load(Ordering::Acquire) {
                    break;
                }
                let m = tokio::select! {
                    m = stream.next() => m,
                    _ = done.notified(), if !sender_done => { sender_done = true; continue }
                    _ = tokio::time::sleep_until(span.drain_end) => break,
                };
                let b = match m {
                    Some(Ok(Message::Binary(b))) => b,
                    Some(Ok(Message::Close(_))) | None => {
                        errors.add("echo: closed by peer");
                        return (t, None);
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => {
                        errors.add(ws_reason("echo read", &e));
                        return (t, None);
                    }
                };
                let now_ns = base.elapsed().as_nanos() as u64;
                if b.len() != size {
                    errors.add("echo: wrong length");
                } else {
                    let seq = u64_at(&b, 0);
                    let intended_ns = u64_at(&b, 8);
                    if seq != t.n.received_total {
                        errors.add("echo: out of order");
                    } else if b[..] != echo_payload(size, conn, seq, intended_ns, u64_at(&b, 16))[..] {
                        errors.add("echo: payload mismatch");
                    }
                    if intended_ns < measured_ns {
                        t.hw.push(now_ns.saturating_sub(intended_ns));
                    } else {
                        t.n.received += 1;
                        t.h.push(now_ns.saturating_sub(intended_ns));
                        t.hu.push(now_ns.saturating_sub(u64_at(&b, 16)));
                    }
                }
                t.n.received_total += 1;
            }
            (t, Some(stream))
        }
    };
    let ((sink, measured), (mut t, stream)) = tokio::join!(sender, receiver);
    t.n.sent_total = sent.load(Ordering::Acquire);
    t.n.sent = measured;
    let ws = stream.and_then(|s| s.reunite(sink).ok());
    (t, ws)
}

// ---------------------------------------------------------------------------------------
// fanout

pub async fn fanout(c: Common, n: usize, control: std::net::SocketAddr, m: u64, size: usize, gap_ms: u64) -> Outcome {
    let errors = Tally::default();
    let mut params = c.params();
    params["c"] = json!(n);
    params["m"] = json!(m);
    params["size"] = json!(size);
    params["control"] = json!(control.to_string());
    params["gap_ms"] = json!(gap_ms);
    if size < 16 {
        errors.add("size must be at least 16");
        return (params, json!({}), errors);
    }
    let per_bcast = Duration::from_secs(10);
    let open_deadline = phase_deadline(c.deadline, per_bcast * 2);
    let (conns, open_s) =
        open_many(&c.target, &c.sources, n, c.connect_rate, small_config(), &errors, open_deadline).await;
    let live = conns.len();
    eprintln!("fanout: {live} connections open in {open_s:.2}s");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, u64)>();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for mut ws in conns {
        let (tx, errors, mut stop) = (tx.clone(), errors.clone(), stop_rx.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let m = tokio::select! {
                    _ = stop.changed() => return Some(ws),
                    m = ws.next() => m,
                };
                match m {
                    Some(Ok(Message::Binary(b))) => {
                        let now = unix_nanos();
                        if b.len() != size {
                            errors.add("fanout: wrong length");
                            continue;
                        }
                        let (stamp, id) = (u64_at(&b, 0), u64_at(&b, 8));
                        let mut expect = vec![0u8; size - 16];
                        fill(&mut expect, id);
                        if b[16..] != expect[..] {
                            errors.add("fanout: payload mismatch");
                        }
                        let _ = tx.send((id, now.saturating_sub(stamp)));
                    }
                    Some(Ok(Message::Close(_))) | None => {
                        errors.add("fanout: closed by peer");
                        return None;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        errors.add(ws_reason("fanout read", &e));
                        return None;
                    }
                }
            }
        }));
    }
    drop(tx);

    let mut per = Vec::new();
    let mut all = new_hist();
    let mut missing = 0u64;
    let mut late = 0u64;
    let ctl = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(control)).await;
    match ctl {
        Ok(Ok(s)) => {
            let (r, mut w) = s.into_split();
            let mut lines = BufReader::new(r).lines();
            tokio::time::sleep(Duration::from_millis(200)).await;
            for id in 1..=m {
                if TInstant::now() + per_bcast > c.deadline {
                    errors.add("fanout: global deadline before all broadcasts");
                    break;
                }
                let t_trigger = Instant::now();
                if w.write_all(format!("broadcast {size} {id}\n").as_bytes()).await.is_err() {
                    errors.add("fanout: control write failed");
                    break;
                }
                let queued = match tokio::time::timeout(Duration::from_secs(5), lines.next_line()).await {
                    Ok(Ok(Some(l))) => l.strip_prefix("ok ").and_then(|x| x.trim().parse::<u64>().ok()),
                    _ => None,
                };
                let Some(queued) = queued else {
                    errors.add("fanout: bad control reply");
                    break;
                };
                let mut h = new_hist();
                let wait_until = TInstant::now() + per_bcast;
                while (h.len() as usize) < live {
                    match tokio::time::timeout_at(wait_until, rx.recv()).await {
                        Ok(Some((got, lat))) if got == id => {
                            let _ = h.record(lat);
                        }
                        Ok(Some(_)) => late += 1,
                        Ok(None) | Err(_) => break,
                    }
                }
                let got = h.len();
                missing += live as u64 - got;
                let _ = all.add(&h);
                let us = |q: f64| (h.value_at_quantile(q) as f64 / 100.0).round() / 10.0;
                per.push(json!({
                    "id": id, "queued": queued, "delivered": got,
                    "p50_us": us(0.5), "p99_us": us(0.99), "last_us": (h.max() as f64 / 100.0).round() / 10.0,
                    "collect_ms": t_trigger.elapsed().as_secs_f64() * 1000.0,
                }));
                eprintln!("fanout: #{id} delivered {got}/{live} p50 {}us p99 {}us last {}us", us(0.5), us(0.99), h.max() / 1000);
                tokio::time::sleep(Duration::from_millis(gap_ms)).await;
            }
        }
        _ => errors.add("fanout: cannot connect to control port"),
    }
    let _ = stop_tx.send(true);
    let mut back = Vec::new();
    for t in tasks {
        if let Ok(Some(ws)) = t.await {
            back.push(ws);
        }
    }
    let clean = close_all(back).await;
    if missing > 0 {
        errors.add(format!("fanout: {missing} deliveries missing"));
    }
    let med = |key: &str| -> Value {
        let mut v: Vec<f64> = per.iter().filter_map(|p| p[key].as_f64()).collect();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        if v.is_empty() { Value::Null } else { json!(v[v.len() / 2]) }
    };
    let results = json!({
        "open_s": open_s,
        "connections": live,
        "broadcasts": per.len(),
        "median_p50_us": med("p50_us"),
        "median_p99_us": med("p99_us"),
        "median_last_us": med("last_us"),
        "max_last_us": per.iter().filter_map(|p| p["last_us"].as_f64()).fold(0.0, f64::max),
        "all": hist_us(&all),
        "missing": missing,
        "late": late,
        "closed_clean": clean,
        "per_broadcast": per,
    });
    (params, results, errors)
}

// ---------------------------------------------------------------------------------------
// bulk

pub async fn bulk(c: Common, n: usize, bytes: u64, msg: usize) -> Outcome {
    let errors = Tally::default();
    let mut params = c.params();
    params["c"] = json!(n);
    params["bytes_each_way"] = json!(bytes);
    params["msg_size"] = json!(msg);
    if msg < 16 {
        errors.add("msg size must be at least 16");
        return (params, json!({}), errors);
    }
    let (conns, open_s) =
        open_many(&c.target, &c.sources, n, c.connect_rate, bulk_config(), &errors, c.deadline).await;
    eprintln!("bulk: {} connections; moving {} MiB each way per connection", conns.len(), bytes >> 20);
    let before = c.pid.map(proc_tree);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (i, ws) in conns.into_iter().enumerate() {
        let errors = errors.clone();
        let deadline = c.deadline - Duration::from_secs(2);
        tasks.push(tokio::spawn(async move {
            let mut template = vec![0u8; msg];
            fill(&mut template, 0xB0_0000 + i as u64);
            let template = Arc::new(template);
            let (mut sink, mut stream) = ws.split();
            let msgs = bytes.div_ceil(msg as u64);
            let writer = {
                let (template, errors) = (template.clone(), errors.clone());
                async move {
                    for seq in 0..msgs {
                        let len = (bytes - seq * msg as u64).min(msg as u64) as usize;
                        let mut b = template[..len].to_vec();
                        if len >= 8 {
                            b[0..8].copy_from_slice(&seq.to_le_bytes());
                        }
                        if let Err(e) = sink.send(Message::Binary(Bytes::from(b))).await {
                            errors.add(ws_reason("bulk send", &e));
                            break;
                        }
                    }
                    sink
                }
            };
            let reader = {
                let errors = errors.clone();
                async move {
                let (mut got, mut seq) = (0u64, 0u64);
                while got < bytes {
                    match stream.next().await {
                        Some(Ok(Message::Binary(b))) => {
                            let len = (bytes - seq * msg as u64).min(msg as u64) as usize;
                            let ok = b.len() == len
                                && (len < 8 || u64_at(&b, 0) == seq)
                                && b[len.min(8)..] == template[len.min(8)..len];
                            if !ok {
                                errors.add("bulk: payload mismatch");
                            }
                            got += b.len() as u64;
                            seq += 1;
                        }
                        Some(Ok(Message::Close(_))) | None => {
                            errors.add("bulk: closed by peer");
                            return (got, None);
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            errors.add(ws_reason("bulk read", &e));
                            return (got, None);
                        }
                    }
                }
                (got, Some(stream))
            }
            };
            let run = async { tokio::join!(writer, reader) };
            match tokio::time::timeout_at(deadline, run).await {
                Ok((sink, (got, stream))) => (got, stream.and_then(|s| s.reunite(sink).ok())),
                Err(_) => {
                    errors.add("bulk: deadline");
                    (0, None)
                }
            }
        }));
    }
    let mut total = 0u64;
    let mut back = Vec::new();
    for t in tasks {
        if let Ok((got, ws)) = t.await {
            total += got;
            back.extend(ws);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let after = c.pid.map(proc_tree);
    let clean = close_all(back).await;
    let relayed = 2 * total;
    let cpu = cpu_delta(&before, &after);
    let results = json!({
        "open_s": open_s,
        "secs": secs,
        "bytes_echoed": total,
        "relayed_bytes": relayed,
        "mib_per_s_each_way": total as f64 / secs / 1048576.0,
        "gbit_per_s_both_ways": relayed as f64 * 8.0 / secs / 1e9,
        "proc_before": before,
        "proc_after": after,
        "proxy_cpu_s": cpu,
        "proxy_cpu_s_per_gb": cpu.as_f64().map(|c| c / (relayed as f64 / 1e9)),
        "closed_clean": clean,
    });
    (params, results, errors)
}

// ---------------------------------------------------------------------------------------
// churn

pub async fn churn(c: Common, concurrency: usize, duration_s: f64) -> Outcome {
    let errors = Tally::default();
    let mut params = c.params();
    params["c"] = json!(concurrency);
    params["duration_s"] = json!(duration_s);
    let before = c.pid.map(proc_tree);
    let start = Instant::now();
    let end = (TInstant::now() + Duration::from_secs_f64(duration_s)).min(c.deadline - Duration::from_secs(8));
    let c = Arc::new(c);
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let (c, errors) = (c.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let (mut hs, mut cyc) = (new_hist(), new_hist());
            let (mut ok, mut unclean) = (0u64, 0u64);
            let mut i = 0u64;
            while TInstant::now() < end {
                i += 1;
                let t = Instant::now();
                let one = async {
                    let mut ws = connect(&c.target, &c.sources, small_config()).await?;
                    let t_hs = t.elapsed();
                    let msg = format!("churn {w} {i} {:08x}", i.wrapping_mul(0x9E37_79B9));
                    ws.send(Message::text(msg.clone())).await.map_err(|e| ws_reason("send", &e))?;
                    let b = next_data(&mut ws).await?;
                    if b[..] != *msg.as_bytes() {
                        return Err("payload mismatch".to_string());
                    }
                    Ok::<_, String>((t_hs, close_clean(ws).await))
                };
                match tokio::time::timeout(Duration::from_secs(5), one).await {
                    Ok(Ok((t_hs, clean))) => {
                        ok += 1;
                        if !clean {
                            unclean += 1;
                        }
                        let _ = hs.record(t_hs.as_nanos() as u64);
                        let _ = cyc.record(t.elapsed().as_nanos() as u64);
                    }
                    Ok(Err(reason)) => {
                        errors.add(format!("churn: {reason}"));
                        // Do not turn a refused port into a busy loop.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err(_) => errors.add("churn: cycle timeout (5s)"),
                }
            }
            (hs, cyc, ok, unclean)
        }));
    }
    let (mut hs, mut cyc) = (new_hist(), new_hist());
    let (mut ok, mut unclean) = (0u64, 0u64);
    for t in tasks {
        if let Ok((h1, h2, o, u)) = t.await {
            let _ = hs.add(&h1);
            let _ = cyc.add(&h2);
            ok += o;
            unclean += u;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let after = c.pid.map(proc_tree);
    let results = json!({
        "secs": secs,
        "cycles_ok": ok,
        "handshakes_per_s": ok as f64 / secs,
        "failures": errors.total(),
        "unclean_close": unclean,
        "handshake": hist_us(&hs),
        "cycle": hist_us(&cyc),
        "proxy_cpu_s": cpu_delta(&before, &after),
        "proc_after": after,
    });
    (params, results, errors)
}
