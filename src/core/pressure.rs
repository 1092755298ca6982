//! TCP memory pressure: the kernel's own state, which wsplice cannot prevent alone but must not
//! leave unsaid. Past `net.ipv4.tcp_mem`'s middle value Linux trims socket buffers and drops
//! packets at receive queues, and a loopback tunnel can sit in retransmission backoff for tens
//! of seconds (bench-results/2026-11-30-unsent). Sans-IO: the counters in, whether to warn out.

use std::time::Duration;

/// How often a warning may repeat while the pressure goes on.
pub const WARN_EVERY: Duration = Duration::from_secs(60);

/// Watches `TcpExt: TCPMemoryPressures` (how many times the kernel entered pressure since boot).
#[derive(Debug, Default)]
pub struct PressureWatch {
    /// The count at the last reading; None before the first.
    seen: Option<u64>,
    /// Entries counted since the last warning, not yet told.
    untold: u64,
    /// When the last warning was given.
    warned: Option<Duration>,
}

impl PressureWatch {
    /// A reading of the counter at `now` (any monotonic clock). Returns how many times the
    /// kernel entered pressure since the last warning, when a warning is due: the first entry
    /// after start is told at once, later ones at most once per [`WARN_EVERY`]. Entries before
    /// wsplice started are not its to tell.
    pub fn observe(&mut self, pressures: u64, now: Duration) -> Option<u64> {
        let seen = self.seen.replace(pressures)?;
        self.untold += pressures.saturating_sub(seen);
        if self.untold == 0 {
            return None;
        }
        if let Some(at) = self.warned {
            if now.saturating_sub(at) < WARN_EVERY {
                return None;
            }
        }
        self.warned = Some(now);
        Some(std::mem::take(&mut self.untold))
    }
}

/// The value of `field` in the `section` lines of /proc/net/netstat's format (a line of names,
/// then a line of values, each starting with `section:`).
pub fn netstat_field(text: &str, section: &str, field: &str) -> Option<u64> {
    let prefix = format!("{section}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        let at = names.split_whitespace().position(|n| n == field);
        if let Some(at) = at {
            return values.split_whitespace().nth(at)?.parse().ok();
        }
    }
    None
}

/// `mem` of the `TCP:` line of /proc/net/sockstat: pages TCP holds now.
pub fn sockstat_tcp_pages(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let mut words = line.split_whitespace();
    words.find(|w| *w == "mem")?;
    words.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn warns_of_new_entries_at_once_then_at_most_once_a_minute() {
        let mut w = PressureWatch::default();
        assert_eq!(w.observe(7, S), None, "entries before start are not told");
        assert_eq!(w.observe(7, 5 * S), None);
        assert_eq!(w.observe(8, 10 * S), Some(1), "the first entry, at once");
        assert_eq!(w.observe(10, 15 * S), None, "within the minute");
        assert_eq!(w.observe(11, 20 * S), None);
        assert_eq!(
            w.observe(11, 70 * S),
            Some(3),
            "the three since, a minute later"
        );
        assert_eq!(w.observe(11, 200 * S), None, "nothing new");
        assert_eq!(
            w.observe(12, 201 * S),
            Some(1),
            "a minute has passed: at once"
        );
    }

    #[test]
    fn reads_the_kernels_formats() {
        let netstat = "TcpExt: SyncookiesSent TCPMemoryPressures TCPRcvQDrop\n\
                       TcpExt: 42 5 3795\n\
                       IpExt: InNoRoutes InTruncatedPkts\n\
                       IpExt: 0 0\n";
        assert_eq!(
            netstat_field(netstat, "TcpExt", "TCPMemoryPressures"),
            Some(5)
        );
        assert_eq!(netstat_field(netstat, "TcpExt", "TCPRcvQDrop"), Some(3795));
        assert_eq!(netstat_field(netstat, "IpExt", "TCPMemoryPressures"), None);
        let sockstat = "sockets: used 190\n\
                        TCP: inuse 12 orphan 0 tw 3 alloc 14 mem 383866\n\
                        UDP: inuse 1 mem 2\n";
        assert_eq!(sockstat_tcp_pages(sockstat), Some(383866));
    }
}
