//! How many CPUs this process may really use: its affinity mask, capped by a cgroup CPU quota.
//!
//! A gateway box or a container often runs wsplice on fewer CPUs than the machine has: `taskset`
//! or systemd's `CPUAffinity=` narrow the affinity mask, and a cgroup quota (`CPUQuota=`,
//! `docker --cpus`) lets the process run on all of them but only for a share of the time. One
//! worker per online CPU would then run more workers than there is CPU time for, each paying
//! its memory and its wake-ups. The quota is read from cgroup v2 (`cpu.max`, the tightest on the
//! path up to the root) or v1 (`cpu.cfs_quota_us` / `cpu.cfs_period_us`).

use std::fmt;
use std::path::{Path, PathBuf};

/// The CPUs available to this process, and where the number came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Cpus {
    /// CPUs in the affinity mask (None: `sched_getaffinity` failed).
    pub affinity: Option<usize>,
    /// The cgroup CPU quota in CPUs, and the file that set it (None: no quota).
    pub quota: Option<(f64, PathBuf)>,
}

impl Cpus {
    /// Reads the affinity mask and the cgroup quota of this process.
    pub fn of_this_process() -> Cpus {
        let affinity = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
            .ok()
            .map(|set| {
                (0..nix::sched::CpuSet::count())
                    .filter(|&i| set.is_set(i).unwrap_or(false))
                    .count()
            })
            .filter(|&n| n > 0);
        let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let quota = quota_files(&cgroup, &mountinfo)
            .into_iter()
            .filter_map(|q| q.read().map(|cpus| (cpus, q.path().to_owned())))
            .min_by(|a, b| a.0.total_cmp(&b.0));
        Cpus { affinity, quota }
    }

    /// Whole CPUs to plan for: the affinity count, lowered to the quota rounded up (a quota of
    /// 1.5 CPUs keeps two workers busy), at least 1.
    pub fn count(&self) -> usize {
        let affinity = self.affinity.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        });
        let quota = self
            .quota
            .as_ref()
            .map_or(usize::MAX, |(q, _)| q.ceil() as usize);
        affinity.min(quota).max(1)
    }
}

/// "2 (affinity: 4 CPUs; cgroup quota 1.50 CPUs in /sys/fs/cgroup/app/cpu.max)"
impl fmt::Display for Cpus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (", self.count())?;
        match self.affinity {
            Some(n) => write!(f, "affinity: {n} CPUs")?,
            None => write!(f, "affinity unknown")?,
        }
        match &self.quota {
            Some((q, path)) => write!(f, "; cgroup quota {q:.2} CPUs in {})", path.display()),
            None => write!(f, "; no cgroup CPU quota)"),
        }
    }
}

/// A file that may hold a CPU quota.
#[derive(Debug, Clone, PartialEq, Eq)]
enum QuotaFile {
    /// cgroup v2 `cpu.max`: "QUOTA PERIOD" or "max PERIOD".
    V2(PathBuf),
    /// cgroup v1 `cpu.cfs_quota_us` (-1: none); the period is in the same directory.
    V1(PathBuf),
}

impl QuotaFile {
    fn path(&self) -> &Path {
        match self {
            QuotaFile::V2(p) | QuotaFile::V1(p) => p,
        }
    }

    fn read(&self) -> Option<f64> {
        match self {
            QuotaFile::V2(p) => parse_cpu_max(&std::fs::read_to_string(p).ok()?),
            QuotaFile::V1(p) => {
                let quota = std::fs::read_to_string(p).ok()?;
                let period = std::fs::read_to_string(p.with_file_name("cpu.cfs_period_us")).ok()?;
                parse_cfs(&quota, &period)
            }
        }
    }
}

/// CPUs allowed by a cgroup v2 `cpu.max` ("150000 100000" is 1.5); None for "max" or nonsense.
fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut it = text.split_whitespace();
    let quota = it.next()?;
    let period: f64 = it.next().map_or(Some(100_000.0), |p| p.parse().ok())?;
    if quota == "max" || period <= 0.0 {
        return None;
    }
    let quota: f64 = quota.parse().ok()?;
    (quota > 0.0).then_some(quota / period)
}

/// CPUs allowed by cgroup v1's quota and period files; None for a quota of -1 (no limit).
fn parse_cfs(quota: &str, period: &str) -> Option<f64> {
    let quota: i64 = quota.trim().parse().ok()?;
    let period: i64 = period.trim().parse().ok()?;
    (quota > 0 && period > 0).then(|| quota as f64 / period as f64)
}

/// Every file that may cap this process's CPU time, from `/proc/self/cgroup` and
/// `/proc/self/mountinfo`: for cgroup v2, `cpu.max` in this cgroup and each parent up to the
/// mount's root (a parent's quota binds its children too); for v1, the cpu controller's
/// `cpu.cfs_quota_us` in this cgroup.
fn quota_files(cgroup: &str, mountinfo: &str) -> Vec<QuotaFile> {
    let mut out = Vec::new();
    for line in cgroup.lines() {
        // "ID:CONTROLLERS:PATH"; v2 is "0::PATH".
        let mut f = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let v2 = id == "0" && controllers.is_empty();
        if !v2 && !controllers.split(',').any(|c| c == "cpu") {
            continue;
        }
        let Some((root, mount)) = mount_of(mountinfo, v2) else {
            continue;
        };
        // In a cgroup namespace the path is relative to the mount's root already; on the host
        // the mount's root is "/" and the path is absolute.
        let rel = path.strip_prefix(root.as_str()).unwrap_or(path);
        let mut dir = mount.join(rel.trim_start_matches('/'));
        if v2 {
            loop {
                out.push(QuotaFile::V2(dir.join("cpu.max")));
                if dir == mount || !dir.pop() {
                    break;
                }
            }
        } else {
            out.push(QuotaFile::V1(dir.join("cpu.cfs_quota_us")));
        }
    }
    out
}

/// The (root, mount point) of the cgroup2 mount, or of the v1 mount holding the cpu controller.
fn mount_of(mountinfo: &str, v2: bool) -> Option<(String, PathBuf)> {
    mountinfo.lines().find_map(|line| {
        // "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS"
        let (left, right) = line.split_once(" - ")?;
        let left: Vec<&str> = left.split_whitespace().collect();
        let right: Vec<&str> = right.split_whitespace().collect();
        let (root, mount) = (left.get(3)?, left.get(4)?);
        let fstype = right.first()?;
        let wanted = if v2 {
            *fstype == "cgroup2"
        } else {
            *fstype == "cgroup" && right.get(2)?.split(',').any(|o| o == "cpu")
        };
        wanted.then(|| (root.to_string(), PathBuf::from(mount)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const V2_MOUNT: &str =
        "25 30 0:22 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
    const V1_MOUNTS: &str = "\
31 23 0:28 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
33 31 0:30 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
";

    #[test]
    fn cpu_max_values() {
        assert_eq!(parse_cpu_max("150000 100000\n"), Some(1.5));
        assert_eq!(parse_cpu_max("50000 100000"), Some(0.5));
        assert_eq!(parse_cpu_max("200000"), Some(2.0));
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max(""), None);
        assert_eq!(parse_cpu_max("lots 100000"), None);
        assert_eq!(parse_cpu_max("100000 0"), None);
    }

    #[test]
    fn cfs_values() {
        assert_eq!(parse_cfs("-1\n", "100000\n"), None);
        assert_eq!(parse_cfs("250000\n", "100000\n"), Some(2.5));
        assert_eq!(parse_cfs("x", "100000"), None);
    }

    #[test]
    fn v2_walks_up_to_the_mount() {
        let files = quota_files("0::/system.slice/wsplice.service\n", V2_MOUNT);
        let want: Vec<QuotaFile> = [
            "/sys/fs/cgroup/system.slice/wsplice.service/cpu.max",
            "/sys/fs/cgroup/system.slice/cpu.max",
            "/sys/fs/cgroup/cpu.max",
        ]
        .iter()
        .map(|p| QuotaFile::V2(PathBuf::from(p)))
        .collect();
        assert_eq!(files, want);
    }

    #[test]
    fn v2_inside_a_cgroup_namespace() {
        // A container sees its own cgroup as "/" and has it mounted as the root.
        let files = quota_files("0::/\n", V2_MOUNT);
        assert_eq!(
            files,
            vec![QuotaFile::V2(PathBuf::from("/sys/fs/cgroup/cpu.max"))]
        );
    }

    #[test]
    fn v1_cpu_controller_among_others() {
        let cgroup = "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/x\n";
        assert_eq!(
            quota_files(cgroup, V1_MOUNTS),
            vec![QuotaFile::V1(PathBuf::from(
                "/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us"
            ))]
        );
    }

    #[test]
    fn v1_mount_with_a_root_strips_it() {
        let mounts = "32 31 0:29 /docker/abc /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(
            quota_files("4:cpu:/docker/abc\n", mounts),
            vec![QuotaFile::V1(PathBuf::from(
                "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"
            ))]
        );
    }

    #[test]
    fn no_cpu_controller_no_files() {
        assert!(quota_files("4:memory:/x\n", V1_MOUNTS).is_empty());
        assert!(quota_files("0::/x\n", V1_MOUNTS).is_empty());
    }

    #[test]
    fn count_takes_the_lower_and_rounds_a_quota_up() {
        let c = |affinity, quota: Option<f64>| {
            Cpus {
                affinity: Some(affinity),
                quota: quota.map(|q| (q, PathBuf::from("/q"))),
            }
            .count()
        };
        assert_eq!(c(4, None), 4);
        assert_eq!(c(4, Some(1.5)), 2);
        assert_eq!(c(4, Some(0.2)), 1);
        assert_eq!(c(2, Some(8.0)), 2);
        let shown = Cpus {
            affinity: Some(4),
            quota: Some((1.5, PathBuf::from("/sys/fs/cgroup/app/cpu.max"))),
        }
        .to_string();
        assert_eq!(
            shown,
            "2 (affinity: 4 CPUs; cgroup quota 1.50 CPUs in /sys/fs/cgroup/app/cpu.max)"
        );
    }

    #[test]
    fn this_process_has_at_least_one() {
        let cpus = Cpus::of_this_process();
        assert!(cpus.count() >= 1, "{cpus}");
        assert!(cpus.affinity.is_some_and(|n| n >= 1), "{cpus}");
    }
}
