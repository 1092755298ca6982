//! Backpressure: a client that stops reading while the backend streams 1 GiB must not grow the
//! proxy's memory, must stall the backend's writes, and must then receive every byte, in order.
//!
//! The bound asserted: the proxy's RSS grows by less than 8 MiB while 1 GiB is pushed at a
//! reader that does not read (per direction the proxy holds at most one pipe, which is kernel
//! memory, or one 64 KiB overflow buffer; the rest waits in the kernel's socket buffers).
//!
//! And the kernel memory it leaves waiting: with `limits.max_unsent` set (TCP_NOTSENT_LOWAT) the
//! proxy's socket to the stalled client holds at most that much unsent plus one packet (64 KiB on
//! loopback), read with `ss`; with the limit off (`max_unsent = 0`, the default) the same socket
//! holds far more, which shows the bound is the setting's doing.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

#[macro_use]
mod support;
use support::blocking::{open_tunnel, until_stalled, RawBackend};
use support::{route, ProxyBuilder, Relay};

const TOTAL: u64 = 1 << 30;

/// The stream repeats this block. Its odd length (not a divisor of any buffer or pipe size)
/// makes a dropped, repeated or reordered chunk show up as a mismatch.
const BLOCK: usize = (1 << 20) + 7;

fn block() -> Vec<u8> {
    (0..BLOCK as u64)
        .map(|i| (i ^ (i >> 8) ^ (i >> 16)) as u8)
        .collect()
}

/// Bytes `pos..pos+len` of the stream (len <= BLOCK), as one or two slices of the block.
fn expected(b: &[u8], pos: u64, len: usize) -> (&[u8], &[u8]) {
    let start = (pos % BLOCK as u64) as usize;
    let first = len.min(BLOCK - start);
    (&b[start..start + first], &b[..len - first])
}

/// Loopback's largest packet: one write may queue this much past the unsent limit.
const PACKET: u64 = 64 << 10;

/// The unsent bytes (`notsent`, what `ss -i` shows) of the proxy's socket from `proxy` to the
/// client at `client`; 0 when `ss` prints none.
fn unsent(proxy: SocketAddr, client: SocketAddr) -> u64 {
    let filter = format!(
        "( sport = :{} and dport = :{} )",
        proxy.port(),
        client.port()
    );
    let out = Command::new("ss")
        .args(["-tniH", "state", "established", &filter])
        .output()
        .expect("run ss (iproute2)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(":{}", client.port())),
        "ss did not list the proxy's socket to the client: {text}"
    );
    text.split_whitespace()
        .find_map(|f| f.strip_prefix("notsent:"))
        .map_or(0, |n| n.parse().expect("notsent is a number"))
}

fn slow_consumer(relay: Relay) {
    slow_consumer_with(relay, None)
}

/// `max_unsent`: `limits.max_unsent` as configured (0: off), None: left out (off).
fn slow_consumer_with(relay: Relay, max_unsent: Option<u64>) {
    let raw = RawBackend::start();
    let accepted = raw.accept_101();
    let written = Arc::new(AtomicU64::new(0));
    let w = written.clone();
    let backend = thread::spawn(move || -> io::Result<()> {
        let (mut s, _) = accepted.recv().map_err(io::Error::other)?;
        s.set_read_timeout(None)?;
        let b = block();
        let mut pos = 0u64;
        while pos < TOTAL {
            let n = (256 * 1024u64).min(TOTAL - pos) as usize;
            let (x, y) = expected(&b, pos, n);
            s.write_all(x)?;
            s.write_all(y)?;
            pos += n as u64;
            w.store(pos, Ordering::Relaxed);
        }
        s.shutdown(std::net::Shutdown::Write)?;
        // Wait for the proxy to close after the client's FIN.
        let _ = s.read(&mut [0u8; 1]);
        Ok(())
    });

    let mut builder = ProxyBuilder::default()
        .workers(1)
        .relay(relay)
        .route(route("/", &[raw.addr]));
    if let Some(n) = max_unsent {
        builder = builder.set("limits", "max_unsent", &n.to_string());
    }
    let proxy = builder.blocking_start();
    let mut client = open_tunnel(proxy.addr(), "/stream");
    let rss_before = proxy.rss_bytes();

    // Do not read: wait until the backend's writes stall (no progress for 500 ms).
    let stalled_at = until_stalled(Duration::from_secs(20), || written.load(Ordering::Relaxed))
        .expect("the backend's writes never blocked");
    assert!(
        stalled_at < TOTAL / 4,
        "backend pushed {stalled_at} bytes into a stalled reader"
    );
    let rss_stalled = proxy.rss_bytes();
    let growth = rss_stalled.saturating_sub(rss_before);
    eprintln!(
        "{}: backend stalled after {} KiB; proxy RSS {} KiB -> {} KiB (+{} KiB)",
        relay.as_str(),
        stalled_at / 1024,
        rss_before / 1024,
        rss_stalled / 1024,
        growth / 1024
    );
    assert!(
        growth < 8 << 20,
        "proxy RSS grew by {growth} bytes under backpressure"
    );
    let waiting = unsent(proxy.addr(), client.local_addr().expect("client addr"));
    eprintln!(
        "{}: {waiting} bytes unsent toward the client",
        relay.as_str()
    );
    if let Some(0) = max_unsent {
        assert!(
            waiting > 4 * PACKET,
            "without the limit the kernel held only {waiting} bytes unsent: this test shows nothing"
        );
    } else if let Some(limit) = max_unsent {
        assert!(
            waiting <= limit + PACKET,
            "{waiting} bytes wait unsent toward the stalled client (limit {limit})"
        );
    }

    // Now read everything and check each byte.
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let b = block();
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    while pos < TOTAL {
        let n = client.read(&mut buf).expect("read tunnel");
        assert!(n > 0, "tunnel closed after {pos} of {TOTAL} bytes");
        let (x, y) = expected(&b, pos, n);
        assert!(
            buf[..x.len()] == *x && buf[x.len()..n] == *y,
            "bytes {pos}..{} differ from what the backend sent",
            pos + n as u64
        );
        pos += n as u64;
    }
    assert_eq!(
        client.read(&mut buf).expect("eof"),
        0,
        "FIN after the stream"
    );
    client
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    backend.join().expect("backend thread").expect("backend io");
}

drivers!(slow_consumer_copy, |d| slow_consumer(Relay::Copy.on(d)));
drivers!(slow_consumer_splice, |d| slow_consumer(Relay::Splice.on(d)));
drivers!(slow_consumer_auto, |d| slow_consumer(Relay::Auto.on(d)));
drivers!(slow_consumer_unsent_limit, |d| {
    slow_consumer_with(Relay::Auto.on(d), Some(256 << 10))
});
drivers!(slow_consumer_small_unsent_limit, |d| {
    slow_consumer_with(Relay::Splice.on(d), Some(16 << 10))
});
drivers!(slow_consumer_copy_small_unsent_limit, |d| {
    slow_consumer_with(Relay::Copy.on(d), Some(16 << 10))
});
drivers!(slow_consumer_without_an_unsent_limit, |d| {
    slow_consumer_with(Relay::Auto.on(d), Some(0))
});
