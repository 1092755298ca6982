//! Reads the kernel's TCP memory counter every few seconds (worker 0, after an event batch: no
//! thread of its own) and warns the operator when the kernel enters pressure
//! ([`crate::core::pressure`] decides when).

use std::time::{Duration, Instant};

use crate::core::pressure::{netstat_field, sockstat_tcp_pages, PressureWatch};

/// Between readings: two small /proc reads, by worker 0 after an event batch.
pub const EVERY: Duration = Duration::from_secs(5);

/// Worker 0's watch: the reading's state, when it is next due, and the clock it counts from.
#[derive(Debug)]
pub struct Watch {
    watch: PressureWatch,
    due: Instant,
    start: Instant,
}

impl Watch {
    pub fn new(now: Instant) -> Watch {
        Watch {
            watch: PressureWatch::default(),
            due: now,
            start: now,
        }
    }

    /// Reads the counter when due and prints the warning when one is due.
    pub fn check(&mut self, now: Instant) {
        if now < self.due {
            return;
        }
        self.due = now + EVERY;
        let since = now.saturating_duration_since(self.start);
        if let Some(n) = read_pressures().and_then(|p| self.watch.observe(p, since)) {
            eprintln!("{}", warning(n));
        }
    }
}

/// `TcpExt: TCPMemoryPressures` of /proc/net/netstat.
pub fn read_pressures() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    netstat_field(&text, "TcpExt", "TCPMemoryPressures")
}

/// The warning for `n` entries into pressure, with what TCP holds and the threshold.
fn warning(n: u64) -> String {
    let mib = |pages: u64| format!("{:.0} MiB", pages as f64 * 4096.0 / (1 << 20) as f64);
    let held = std::fs::read_to_string("/proc/net/sockstat")
        .ok()
        .and_then(|t| sockstat_tcp_pages(&t))
        .map_or("unknown".to_owned(), mib);
    let threshold =
        crate::driver::memory::sysctl_middle("tcp_mem").map_or("unknown".to_owned(), mib);
    format!(
        "wsplice: warning: the kernel entered TCP memory pressure {n} time(s) (TCP sockets hold {held}; net.ipv4.tcp_mem's middle value, {threshold}, starts it): it trims socket buffers and drops packets, and a tunnel may stall for seconds in retransmission. Raise net.ipv4.tcp_mem (tools/sysctl.conf), or cap what each tunnel holds (limits.max_unsent = \"256KiB\", or limits.max_memory)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine's files parse (Linux has had both fields since 2.6), and the warning names
    /// the sysctl and the keys.
    #[test]
    fn reads_this_kernels_files() {
        assert!(
            read_pressures().is_some(),
            "TCPMemoryPressures in /proc/net/netstat"
        );
        let sockstat = std::fs::read_to_string("/proc/net/sockstat").expect("/proc/net/sockstat");
        assert!(sockstat_tcp_pages(&sockstat).is_some());
        let w = warning(2);
        assert!(w.contains("2 time(s)"), "{w}");
        assert!(!w.contains("unknown"), "{w}");
        assert!(
            w.contains("net.ipv4.tcp_mem") && w.contains("limits.max_unsent"),
            "{w}"
        );
    }
}
