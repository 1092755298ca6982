//! The access log: one line per connection when it ends, written by a logger thread so the event
//! loops never block on a disk.
//!
//! Workers format lines into a local batch and hand the batch over once per loop iteration with
//! a non-blocking `try_send` into a queue of [`QUEUE_BATCHES`]; if the logger falls behind, a
//! batch that finds the queue full is dropped rather than stalling traffic, and its lines are
//! counted by the worker (`wsplice_access_log_dropped_lines_total`). SIGUSR1 asks the logger to
//! reopen its file (logrotate).
//!
//! With worker processes each process has its own logger appending to the same file (see
//! `write_lines`): one file, whole lines, in the order each worker ended its connections.

use crate::config::{AccessLog, LogFormat};
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::time::{Duration, SystemTime};

enum Msg {
    Lines(Vec<u8>),
    Reopen,
}

/// A handle to the logger thread; cloned into each worker.
#[derive(Clone)]
pub struct LogSink {
    tx: SyncSender<Msg>,
    format: LogFormat,
}

/// Batches (one per worker loop iteration that ended connections) the logger may lag behind.
pub const QUEUE_BATCHES: usize = 1024;

/// What one line says.
#[derive(Debug, Clone)]
pub struct Record<'a> {
    pub client: SocketAddr,
    pub route: &'a str,
    pub backend: Option<SocketAddr>,
    /// 101 for a tunnel, the answer's status otherwise (0 when the client left first).
    pub status: u16,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub duration: Duration,
    pub reason: &'a str,
}

fn open(path: &str) -> io::Result<Box<dyn Write + Send>> {
    if path == "-" {
        return Ok(Box::new(io::stdout()));
    }
    let f: File = OpenOptions::new().create(true).append(true).open(path)?;
    Ok(Box::new(f))
}

/// Writes whole lines. Worker processes share the file: each batch of whole lines is one
/// write(2) on an O_APPEND descriptor, which Linux applies atomically to a regular file, so no
/// line of one worker lands inside another's. On stdout (`-`, often a pipe) only writes of at
/// most PIPE_BUF bytes are atomic: batches go out in line-aligned chunks of that size.
fn write_lines(out: &mut Box<dyn Write + Send>, b: &[u8], pipe: bool) -> io::Result<()> {
    const PIPE_BUF: usize = 4096;
    if !pipe {
        out.write_all(b)?;
        return out.flush();
    }
    let mut rest = b;
    while !rest.is_empty() {
        let window = &rest[..rest.len().min(PIPE_BUF)];
        let cut = match window.iter().rposition(|&c| c == b'\n') {
            Some(i) if rest.len() > PIPE_BUF => i + 1,
            // A single line longer than PIPE_BUF goes out alone.
            None if rest.len() > PIPE_BUF => rest
                .iter()
                .position(|&c| c == b'\n')
                .map_or(rest.len(), |i| i + 1),
            _ => rest.len(),
        };
        out.write_all(&rest[..cut])?;
        out.flush()?;
        rest = &rest[cut..];
    }
    Ok(())
}

impl LogSink {
    /// Opens the log (failing start-up with a clear error if the file cannot be opened) and
    /// starts the logger thread.
    pub fn start(cfg: &AccessLog) -> io::Result<(LogSink, std::thread::JoinHandle<()>)> {
        let path = cfg.path.clone();
        let mut out = open(&path).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot open access_log.path {path}: {e}"))
        })?;
        let (tx, rx): (SyncSender<Msg>, Receiver<Msg>) = sync_channel(QUEUE_BATCHES);
        let thread = std::thread::Builder::new()
            .name("wsplice-log".into())
            .spawn(move || {
                for msg in rx {
                    match msg {
                        Msg::Lines(b) => {
                            if write_lines(&mut out, &b, path == "-").is_err() {
                                eprintln!("wsplice: access log {path}: write failed; lines lost");
                            }
                        }
                        Msg::Reopen => match open(&path) {
                            Ok(o) => out = o,
                            Err(e) => eprintln!(
                                "wsplice: access log: cannot reopen {path}: {e}; still writing to the old file"
                            ),
                        },
                    }
                }
            })?;
        let sink = LogSink {
            tx,
            format: cfg.format,
        };
        Ok((sink, thread))
    }

    /// Asks the logger to reopen its file (blocking briefly if the queue is full).
    pub fn reopen(&self) {
        let _ = self.tx.send(Msg::Reopen);
    }

    /// Appends one line for `r` to a worker's batch.
    pub fn format(&self, batch: &mut String, r: &Record<'_>) {
        let time = humantime::format_rfc3339_millis(SystemTime::now());
        let backend = r.backend.map_or_else(|| "-".to_string(), |b| b.to_string());
        let secs = r.duration.as_secs_f64();
        match self.format {
            LogFormat::Text => {
                let _ = writeln!(
                    batch,
                    "{time} {} route={} backend={backend} status={} up={} down={} duration={secs:.3}s reason={}",
                    r.client, r.route, r.status, r.bytes_up, r.bytes_down, r.reason
                );
            }
            LogFormat::Json => {
                // Every value is an address, a number or one of our own words: nothing to escape
                // except the route prefix, which config validation limits to URL-path bytes.
                let route = r.route.replace('\\', "\\\\").replace('"', "\\\"");
                let _ = writeln!(
                    batch,
                    "{{\"time\":\"{time}\",\"client\":\"{}\",\"route\":\"{route}\",\"backend\":\"{backend}\",\"status\":{},\"bytes_up\":{},\"bytes_down\":{},\"duration\":{secs:.3},\"reason\":\"{}\"}}",
                    r.client, r.status, r.bytes_up, r.bytes_down, r.reason
                );
            }
        }
    }

    /// Logs a backend's state change (`state` after it, `reason` the metric's word, `detail`
    /// what was seen) as one line of its own kind (`event=backend_state`), without blocking.
    pub fn backend_event(
        &self,
        route: &str,
        backend: SocketAddr,
        state: &str,
        reason: &str,
        detail: &str,
    ) {
        let time = humantime::format_rfc3339_millis(SystemTime::now());
        let mut line = String::new();
        match self.format {
            LogFormat::Text => {
                let _ = writeln!(
                    line,
                    "{time} event=backend_state route={route} backend={backend} state={state} reason={reason} detail={detail:?}"
                );
            }
            LogFormat::Json => {
                let _ = writeln!(
                    line,
                    "{{\"time\":\"{time}\",\"event\":\"backend_state\",\"route\":{},\"backend\":\"{backend}\",\"state\":\"{state}\",\"reason\":\"{reason}\",\"detail\":{}}}",
                    crate::driver::stats::json::string(route),
                    crate::driver::stats::json::string(detail)
                );
            }
        }
        let _ = self.flush(&mut line);
    }

    /// Hands a worker's batch to the logger without blocking. Returns the number of lines
    /// dropped because the queue was full (or the logger gone), for the worker to count.
    #[must_use = "lines dropped here are counted nowhere else"]
    pub fn flush(&self, batch: &mut String) -> u64 {
        if batch.is_empty() {
            return 0;
        }
        let b = std::mem::take(batch).into_bytes();
        match self.tx.try_send(Msg::Lines(b)) {
            Ok(()) => 0,
            // Counting the lines costs a pass over the batch, only when it is lost anyway.
            Err(TrySendError::Full(Msg::Lines(b)) | TrySendError::Disconnected(Msg::Lines(b))) => {
                b.iter().filter(|&&c| c == b'\n').count() as u64
            }
            Err(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Records every write call (each one a write(2) on a real descriptor).
    #[derive(Clone, Default)]
    struct Writes(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Writes {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("lock").push(b.to_vec());
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn pipe_writes_are_whole_lines_of_at_most_pipe_buf() {
        let line = |i: usize| format!("{i:04} {}\n", "x".repeat(90));
        let mut batch: String = (0..100).map(line).collect();
        batch.push_str(&format!("long {}\n", "y".repeat(5000)));
        batch.push_str(&line(100));
        let rec = Writes::default();
        let mut out: Box<dyn Write + Send> = Box::new(rec.clone());
        write_lines(&mut out, batch.as_bytes(), true).expect("write");
        let writes = rec.0.lock().expect("lock").clone();
        assert!(writes.len() > 3, "{} writes", writes.len());
        for w in &writes {
            assert!(w.ends_with(b"\n"));
            assert!(
                w.len() <= 4096 || w.starts_with(b"long "),
                "{} bytes",
                w.len()
            );
        }
        assert_eq!(writes.concat(), batch.as_bytes());

        let rec = Writes::default();
        let mut out: Box<dyn Write + Send> = Box::new(rec.clone());
        write_lines(&mut out, batch.as_bytes(), false).expect("write");
        assert_eq!(
            rec.0.lock().expect("lock").len(),
            1,
            "a file gets one write"
        );
    }
}
