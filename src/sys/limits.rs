//! Process resource limits: the open-file limit bounds how many connections and pipes fit.

use std::io;

use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};

/// Where Linux caps RLIMIT_NOFILE when the hard limit is "unlimited".
const NR_OPEN: &str = "/proc/sys/fs/nr_open";
/// The kernel's default `fs.nr_open`, used when /proc is unreadable.
const DEFAULT_NR_OPEN: u64 = 1 << 20;

/// The current RLIMIT_NOFILE as (soft, hard).
pub fn nofile_limit() -> io::Result<(u64, u64)> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    Ok((wide(soft), wide(hard)))
}

/// `rlim_t` is 32 bits wide on 32-bit glibc (armv7-unknown-linux-gnueabihf), 64 elsewhere.
#[allow(clippy::useless_conversion)]
fn wide(limit: libc::rlim_t) -> u64 {
    u64::from(limit)
}

/// Raises the RLIMIT_NOFILE soft limit to the hard limit and returns (soft, hard) afterwards.
///
/// The soft limit often defaults to 1024, far below what a proxy with two sockets per connection
/// needs; the hard limit is the most an unprivileged process may take. An "unlimited" hard limit
/// cannot be used as a soft limit (the kernel refuses anything above `fs.nr_open`), so the soft
/// limit then goes to `fs.nr_open`.
pub fn raise_nofile_limit() -> io::Result<(u64, u64)> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let target = if hard == RLIM_INFINITY {
        libc::rlim_t::try_from(nr_open()).map_or(hard, |n| n.min(hard))
    } else {
        hard
    };
    if soft < target {
        setrlimit(Resource::RLIMIT_NOFILE, target, hard)?;
    }
    nofile_limit()
}

fn nr_open() -> u64 {
    std::fs::read_to_string(NR_OPEN)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(DEFAULT_NR_OPEN)
}

/// How many file descriptors this process has open (the entries of /proc/self/fd).
///
/// The count includes the descriptor used to read the directory itself, so it is one more than
/// the caller's own descriptors while the call runs.
pub fn open_fd_count() -> io::Result<usize> {
    let mut n = 0;
    for entry in std::fs::read_dir("/proc/self/fd")? {
        entry?;
        n += 1;
    }
    Ok(n)
}

/// How many file descriptors process `pid` (of the same user) has open.
pub fn fd_count_of(pid: u32) -> io::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raise_reaches_hard_limit() {
        let (soft, hard) = raise_nofile_limit().unwrap();
        assert!(soft <= hard);
        if hard != wide(RLIM_INFINITY) {
            assert_eq!(soft, hard);
        }
        assert_eq!(nofile_limit().unwrap(), (soft, hard));
    }

    #[test]
    fn fd_count_sees_new_files() {
        let before = open_fd_count().unwrap();
        let files: Vec<_> = (0..4)
            .map(|_| std::fs::File::open("/proc/self/stat").unwrap())
            .collect();
        let after = open_fd_count().unwrap();
        // Other test threads open and close files too, so only a lower bound is certain.
        assert!(after >= 4, "{before} -> {after}");
        drop(files);
    }
}
