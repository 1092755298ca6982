//! The `[table]` sections: `[timeouts]`, `[limits]`, `[keepalive]`, `[splice]`, `[uring]`,
//! `[access_log]`, `[proxy_protocol]`, `[tls]` and `[backend_pool]`.
//!
//! Each section is one [`Key`] table: the keys it accepts, in the order they are documented,
//! and how each is read. A key not in the table is rejected with the table's names as the hint.

use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use super::value::{one_of, parse_addr};
use super::walk::{key, required, Field, Key};
use super::{
    AccessLog, BackendPool, CertPair, Config, ConfigError, Keepalive, Limits, LogFormat, Relay,
    Timeouts, UnknownSni, Uring,
};

const HEAD_BYTES: RangeInclusive<u64> = 1024..=1 << 20;
const HEADERS: RangeInclusive<u64> = 1..=1000;
/// Less than 4 MiB cannot hold the process itself and a worker.
const MAX_MEMORY: RangeInclusive<u64> = 4 << 20..=1 << 40;
/// `limits.max_unsent`'s largest value (TCP_NOTSENT_LOWAT takes an int).
const MAX_UNSENT: u64 = 64 << 20;
/// Linux caps TCP_KEEPIDLE and TCP_KEEPINTVL at 32767 s (MAX_TCP_KEEPIDLE) and TCP_KEEPCNT at 127.
const MAX_KEEPALIVE_SECS: u64 = 32767;
const KEEPALIVE_COUNT: RangeInclusive<u64> = 1..=127;
/// Up to the default fs.pipe-max-size; larger F_SETPIPE_SZ fails for unprivileged processes.
const PIPE_SIZE: RangeInclusive<u64> = 4 << 10..=1 << 20;

// The tables keep one key a row, so that a section reads as the list of its keys.

/// `[timeouts]`.
#[rustfmt::skip]
pub(super) const TIMEOUTS: &[Key<Timeouts>] = &[
    key("handshake", |t, f| f.positive_duration().map(|d| t.handshake = d)),
    key("connect", |t, f| f.positive_duration().map(|d| t.connect = d)),
    key("idle", |t, f| f.duration().map(|d| t.idle = d)),
    key("half_close", |t, f| f.duration().map(|d| t.half_close = d)),
    key("drain", |t, f| f.duration().map(|d| t.drain = d)),
    key("client_idle", |t, f| f.positive_duration().map(|d| t.client_idle = d)),
];

/// `[backend_pool]`: idle backend connections kept for plain HTTP requests.
#[rustfmt::skip]
pub(super) const BACKEND_POOL: &[Key<BackendPool>] = &[
    key("max_idle", |p, f| f.uint_in(0..=1 << 20).map(|n| p.max_idle = n)),
    key("idle_timeout", |p, f| f.positive_duration().map(|d| p.idle_timeout = d)),
];

/// `[limits]`.
#[rustfmt::skip]
pub(super) const LIMITS: &[Key<Limits>] = &[
    key("max_connections", |l, f| f.uint_in(1..).map(|n| l.max_connections = Some(n))),
    key("max_head_bytes", |l, f| f.size_in(HEAD_BYTES).map(|n| l.max_head_bytes = n)),
    key("max_headers", |l, f| f.uint_in(HEADERS).map(|n| l.max_headers = n)),
    key("max_connections_per_ip", |l, f| {
        f.uint_in(1..).map(|n| l.max_connections_per_ip = Some(n))
    }),
    key("max_memory", |l, f| f.size_in(MAX_MEMORY).map(|n| l.max_memory = Some(n as u64))),
    key("max_unsent", |l, f| max_unsent(f).map(|n| l.max_unsent = n)),
];

/// 0 (the kernel's default) or 4 KiB to 64 MiB: less would wake the relay for every few
/// packets.
fn max_unsent(f: &Field<'_>) -> Result<usize, ConfigError> {
    let n = f.size_in(0..=MAX_UNSENT)?;
    if n != 0 && n < 4096 {
        return Err(f.error(format!(
            "{n} bytes is too small: use 0 (the kernel's default: no limit) or at least 4KiB"
        )));
    }
    Ok(n)
}

/// `[keepalive]`.
#[rustfmt::skip]
pub(super) const KEEPALIVE: &[Key<Keepalive>] = &[
    key("idle", |k, f| keepalive_secs(f, true).map(|d| k.idle = d)),
    key("interval", |k, f| keepalive_secs(f, false).map(|d| k.interval = d)),
    key("count", |k, f| f.uint_in(KEEPALIVE_COUNT).map(|n| k.count = n)),
];

/// Keepalive socket options take whole seconds, 1..=32767; `zero_ok` allows 0 (disabled).
fn keepalive_secs(f: &Field<'_>, zero_ok: bool) -> Result<Duration, ConfigError> {
    let d = f.duration()?;
    if d.is_zero() && zero_ok {
        return Ok(d);
    }
    if d.subsec_nanos() != 0 || d.as_secs() == 0 || d.as_secs() > MAX_KEEPALIVE_SECS {
        return Err(f.error(format!(
            "must be a whole number of seconds from 1s to {MAX_KEEPALIVE_SECS}s{}",
            if zero_ok {
                " (or 0 to disable keepalive)"
            } else {
                ""
            }
        )));
    }
    Ok(d)
}

/// `[splice]`: the relay's pipes. The relay mode is the top-level key `relay`.
#[rustfmt::skip]
pub(super) const SPLICE: &[Key<Relay>] = &[
    key("max_pipes", |r, f| f.uint_in(0..).map(|n| r.max_pipes = Some(n))),
    key("pipe_size", |r, f| f.size_in(PIPE_SIZE).map(|n| r.pipe_size = Some(n))),
    key("threshold", |r, f| f.size_in(1..).map(|n| r.splice_threshold = Some(n))),
];

/// A provided buffer: at least a page; at most what one receive could use.
const BUFFER_SIZE: RangeInclusive<u64> = 4 << 10..=1 << 20;
/// A worker's buffers together: up to 1 GiB.
const BUFFER_MEMORY: RangeInclusive<u64> = 4 << 10..=1 << 30;

/// `[uring]`: the io_uring driver's provided buffers.
pub(super) fn uring(cfg: &mut Config, field: &Field<'_>) -> Result<(), ConfigError> {
    field.section(&mut cfg.uring, URING)?;
    let u = &cfg.uring;
    if u.buffer_memory < u.buffer_size {
        return Err(field.error(format!(
            "buffer_memory ({}) must hold at least one buffer of buffer_size ({})",
            u.buffer_memory, u.buffer_size
        )));
    }
    Ok(())
}

#[rustfmt::skip]
const URING: &[Key<Uring>] = &[
    key("buffer_size", |u, f| f.size_in(BUFFER_SIZE).map(|n| u.buffer_size = n)),
    key("buffer_memory", |u, f| f.size_in(BUFFER_MEMORY).map(|n| u.buffer_memory = n)),
    key("multishot", |u, f| f.bool().map(|b| u.multishot = b)),
];

/// `[access_log]`: present, even empty, it turns the access log on.
pub(super) fn access_log(cfg: &mut Config, field: &Field<'_>) -> Result<(), ConfigError> {
    let mut log = AccessLog::default();
    field.section(&mut log, ACCESS_LOG)?;
    cfg.access_log = Some(log);
    Ok(())
}

#[rustfmt::skip]
const ACCESS_LOG: &[Key<AccessLog>] = &[
    key("path", log_path),
    key("format", |log, f| log_format(f).map(|format| log.format = format)),
];

fn log_path(log: &mut AccessLog, field: &Field<'_>) -> Result<(), ConfigError> {
    let path = field.str()?;
    if path.is_empty() {
        return Err(field.error("must be a file path, or \"-\" for stdout"));
    }
    log.path = path.to_owned();
    Ok(())
}

fn log_format(field: &Field<'_>) -> Result<LogFormat, ConfigError> {
    let s = field.str()?;
    let spell = |format| match format {
        LogFormat::Text => "text",
        LogFormat::Json => "json",
    };
    one_of(s, &[LogFormat::Text, LogFormat::Json], spell)
        .map_err(|expected| field.error(format!("unknown format \"{s}\" (expected {expected})")))
}

/// `[proxy_protocol]`: which listeners expect a PROXY header, and from whom.
pub(super) fn proxy_protocol(cfg: &mut Config, field: &Field<'_>) -> Result<(), ConfigError> {
    let table = field.table()?;
    table.read(cfg, PROXY_PROTOCOL)?;
    let proxy = &cfg.proxy_protocol;
    if !proxy.listen.is_empty() && proxy.trusted.is_empty() {
        return Err(table.missing(
            "trusted",
            "list the load balancers allowed to send PROXY headers, such as [\"10.0.0.0/8\"]",
        ));
    }
    Ok(())
}

/// Read into the whole `Config`, because `listen` here is checked against the top-level one.
#[rustfmt::skip]
const PROXY_PROTOCOL: &[Key<Config>] = &[
    key("listen", proxy_listen),
    key("trusted", |c, f| f.nets().map(|nets| c.proxy_protocol.trusted = nets)),
];

/// Each address must be one of the top-level `listen` addresses, which are read before this.
fn proxy_listen(cfg: &mut Config, field: &Field<'_>) -> Result<(), ConfigError> {
    for item in field.items("an array of listen addresses")? {
        let addr = item.parsed(parse_addr)?;
        if !cfg.listen.contains(&addr) {
            return Err(item.error(format!(
                "{addr} is not one of the `listen` addresses; add it there too"
            )));
        }
        cfg.proxy_protocol.listen.push(addr);
    }
    Ok(())
}

/// `[tls]`: TLS listeners and their certificates. Read into the whole `Config`, because its
/// `listen` addresses must differ from the plain ones, which are read before it.
pub(super) fn tls(cfg: &mut Config, field: &Field<'_>) -> Result<(), ConfigError> {
    let table = field.table()?;
    table.read(cfg, TLS)?;
    let tls = &cfg.tls;
    if !tls.listen.is_empty() && tls.certs.is_empty() {
        return Err(table.missing(
            "cert",
            "a TLS listener needs a certificate: add [[tls.cert]] with cert = \"FILE\" and key = \"FILE\"",
        ));
    }
    if tls.listen.is_empty() && !tls.certs.is_empty() {
        return Err(table.missing(
            "listen",
            "certificates are given but no TLS listener: add listen = [\"0.0.0.0:443\"]",
        ));
    }
    Ok(())
}

#[rustfmt::skip]
const TLS: &[Key<Config>] = &[
    key("listen", tls_listen),
    key("cert", tls_certs),
    key("unknown_sni", |c, f| {
        f.choice(&UNKNOWN_SNI, UnknownSni::as_str).map(|v| c.tls.unknown_sni = v)
    }),
    key("session_tickets", |c, f| f.bool().map(|b| c.tls.session_tickets = b)),
    key("redirect_listen", redirect_listen),
    key("redirect_port", |c, f| f.uint_in::<u16>(1..=65535).map(|p| c.tls.redirect_port = Some(p))),
];

/// `redirect_listen`: plain listeners answering with redirects to https; read after the plain
/// and TLS `listen`, from which they must differ.
fn redirect_listen(cfg: &mut Config, field: &Field<'_>) -> Result<(), ConfigError> {
    for item in field.items("an array of addresses, such as [\"0.0.0.0:80\"]")? {
        let addr = item.parsed(parse_addr)?;
        if cfg.all_listen().any(|a| a == addr) {
            return Err(item.error(format!(
                "{addr} is already a listen address; a redirect listener needs a port of its own"
            )));
        }
        cfg.tls.redirect_listen.push(addr);
    }
    Ok(())
}

const UNKNOWN_SNI: [UnknownSni; 2] = [UnknownSni::Default, UnknownSni::Refuse];

fn tls_listen(cfg: &mut Config, field: &Field<'_>) -> Result<(), ConfigError> {
    for item in field.items("an array of addresses, such as [\"0.0.0.0:443\"]")? {
        let addr = item.parsed(parse_addr)?;
        if cfg.listen.contains(&addr) {
            return Err(item.error(format!(
                "{addr} is also a plain `listen` address; one port speaks either TLS or plain HTTP"
            )));
        }
        if cfg.tls.listen.contains(&addr) {
            return Err(item.error(format!("{addr} is listed twice")));
        }
        cfg.tls.listen.push(addr);
    }
    Ok(())
}

/// `[[tls.cert]]`: one table per certificate/key pair.
fn tls_certs(cfg: &mut Config, field: &Field<'_>) -> Result<(), ConfigError> {
    for item in field.items("[[tls.cert]] tables with cert and key")? {
        let mut pair = CertPair {
            cert: PathBuf::new(),
            key: PathBuf::new(),
        };
        item.section(&mut pair, CERT)?;
        cfg.tls.certs.push(pair);
    }
    Ok(())
}

#[rustfmt::skip]
const CERT: &[Key<CertPair>] = &[
    required("cert", |p, f| file_path(f).map(|path| p.cert = path)),
    required("key", |p, f| file_path(f).map(|path| p.key = path)),
];

fn file_path(field: &Field<'_>) -> Result<PathBuf, ConfigError> {
    let s = field.str()?;
    if s.is_empty() {
        return Err(field.error("must be a file path"));
    }
    Ok(PathBuf::from(s))
}
