//! Lambda's memory limit, locally: every function instance runs in a sandbox that holds it to
//! its template `MemorySize` and measures each invocation's peak memory for the REPORT line.
//!
//! In Lambda an execution environment that goes over its memory is killed
//! (`Runtime.OutOfMemory`) and its SQS batch comes back after the visibility timeout. Without
//! this the local stack would let a function use any amount of memory, and nothing at scale
//! would show that a step's memory stays bounded.
//!
//! Mechanisms, best first (`LOCAL_RUNNER_MEMORY_LIMIT=auto|cgroup-v1|cgroup-v2|watchdog`):
//! - **cgroup v1** (`memory` controller): one child group per instance under the runner's own
//!   memory cgroup, `memory.limit_in_bytes` = `memory.memsw.limit_in_bytes` = MemorySize MiB
//!   (no swap to escape into). The kernel OOM-kills the instance at the limit, exactly as a
//!   Lambda sandbox's cgroup does; `memory.oom_control`'s `oom_kill` counter says it was OOM.
//!   Peak per invocation: `memory.max_usage_in_bytes`, reset (to the current usage) when the
//!   invocation starts.
//! - **cgroup v2**: the same with `memory.max`, `memory.swap.max = 0`, `memory.events`'
//!   `oom_kill` and `memory.peak` (reset per invocation through a kept-open descriptor, Linux
//!   6.12+; older kernels report the instance's lifetime peak). Needs a delegated subtree whose
//!   `cgroup.subtree_control` already enables `memory`.
//! - **RSS watchdog** where neither is writable: the runner polls the instance's `VmRSS` every
//!   20 ms and kills it with SIGKILL above the limit; the peak is `VmHWM`, reset per invocation
//!   through `/proc/<pid>/clear_refs`. A fast allocation can overshoot the limit by what it
//!   allocates in 20 ms before it is killed, and page cache is not counted.
//!
//! What a cgroup counts (anonymous memory, page cache and kernel memory of the group) is what
//! the limit applies to, which is also how Lambda's sandbox is limited; Lambda's "Max Memory
//! Used" is the sandbox's peak including the runtime, as here the instance process's.

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::Context;

const GROUP_PREFIX: &str = "local-runner.";

/// How instances are held to their memory, chosen once per runner.
#[derive(Debug, Clone)]
pub enum Limiter {
    CgroupV1 { parent: PathBuf },
    CgroupV2 { parent: PathBuf },
    Watchdog { why: String },
}

impl Limiter {
    /// The mechanism to use: `choice` is `LOCAL_RUNNER_MEMORY_LIMIT` (default `auto`: the first
    /// of cgroup v1, cgroup v2, watchdog that works here).
    pub fn detect(choice: Option<&str>) -> anyhow::Result<Limiter> {
        let choice = choice.unwrap_or("auto");
        let v1 = || own_cgroup_dir(Hierarchy::V1Memory).and_then(|d| writable_parent(&d, "memory.limit_in_bytes"));
        let v2 = || {
            own_cgroup_dir(Hierarchy::V2).and_then(|d| {
                let control = fs::read_to_string(d.join("cgroup.subtree_control")).unwrap_or_default();
                anyhow::ensure!(
                    control.split_whitespace().any(|c| c == "memory"),
                    "{}: the memory controller is not enabled for children (cgroup.subtree_control: {:?})",
                    d.display(),
                    control.trim()
                );
                writable_parent(&d, "memory.max")
            })
        };
        match choice {
            "cgroup-v1" => Ok(Limiter::CgroupV1 { parent: v1()? }),
            "cgroup-v2" => Ok(Limiter::CgroupV2 { parent: v2()? }),
            "watchdog" => Ok(Limiter::Watchdog { why: "LOCAL_RUNNER_MEMORY_LIMIT=watchdog".into() }),
            "auto" => Ok(match v1() {
                Ok(parent) => Limiter::CgroupV1 { parent },
                Err(e1) => match v2() {
                    Ok(parent) => Limiter::CgroupV2 { parent },
                    Err(e2) => Limiter::Watchdog { why: format!("cgroup v1: {e1:#}; cgroup v2: {e2:#}") },
                },
            }),
            other => anyhow::bail!("LOCAL_RUNNER_MEMORY_LIMIT={other:?}: expected auto, cgroup-v1, cgroup-v2 or watchdog"),
        }
    }

    /// One line for the runner's log: which mechanism holds the functions to their MemorySize.
    pub fn describe(&self) -> String {
        match self {
            Limiter::CgroupV1 { parent } => format!(
                "memory limits: cgroup v1 (one memory cgroup per instance under {}, limit = memsw limit = MemorySize; OOM kill by the kernel)",
                parent.display()
            ),
            Limiter::CgroupV2 { parent } => format!(
                "memory limits: cgroup v2 (one cgroup per instance under {}, memory.max = MemorySize, memory.swap.max = 0; OOM kill by the kernel)",
                parent.display()
            ),
            Limiter::Watchdog { why } => {
                format!("memory limits: RSS watchdog (VmRSS polled every 20 ms, SIGKILL above MemorySize); no writable memory cgroup: {why}")
            }
        }
    }

    /// Removes groups that earlier runners left behind (a runner killed with SIGKILL cannot
    /// clean up); a group whose runner still lives is kept.
    pub fn remove_stale_groups(&self) {
        let parent = match self {
            Limiter::CgroupV1 { parent } | Limiter::CgroupV2 { parent } => parent,
            Limiter::Watchdog { .. } => return,
        };
        let Ok(entries) = fs::read_dir(parent) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(GROUP_PREFIX) else { continue };
            let owner = rest.split('.').next().and_then(|p| p.parse::<u32>().ok());
            if owner.is_some_and(|pid| pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()) {
                let _ = fs::remove_dir(entry.path());
            }
        }
    }

    /// A sandbox for one instance (`name`: function and instance number) limited to `limit_mib`.
    pub fn sandbox(&self, name: &str, limit_mib: u64) -> anyhow::Result<Sandbox> {
        let limit = limit_mib * 1024 * 1024;
        let kind = match self {
            Limiter::CgroupV1 { parent } => {
                let dir = parent.join(format!("{GROUP_PREFIX}{}.{name}", std::process::id()));
                create_group(&dir)?;
                write(&dir, "memory.limit_in_bytes", limit)?;
                // Without swap accounting (no memsw files) there is no swap to escape into on a
                // machine that has none; with swap, swappiness 0 keeps the group out of it.
                if dir.join("memory.memsw.limit_in_bytes").exists() {
                    write(&dir, "memory.memsw.limit_in_bytes", limit)?;
                } else {
                    let _ = write(&dir, "memory.swappiness", 0);
                }
                Kind::CgroupV1 { procs: open_procs(&dir)?, dir }
            }
            Limiter::CgroupV2 { parent } => {
                let dir = parent.join(format!("{GROUP_PREFIX}{}.{name}", std::process::id()));
                create_group(&dir)?;
                write(&dir, "memory.max", limit)?;
                let _ = write(&dir, "memory.swap.max", 0);
                let peak = fs::OpenOptions::new().read(true).write(true).open(dir.join("memory.peak")).ok();
                Kind::CgroupV2 { procs: open_procs(&dir)?, peak, dir }
            }
            Limiter::Watchdog { .. } => Kind::Watchdog { pid: None, killed: false, polled_peak: 0 },
        };
        Ok(Sandbox { kind, limit, oom_kills_before: 0 })
    }
}

/// One instance's memory sandbox; the instance's processes (one after another, as crashed ones
/// are replaced) all run in it.
pub struct Sandbox {
    kind: Kind,
    limit: u64,
    oom_kills_before: u64,
}

enum Kind {
    CgroupV1 { dir: PathBuf, procs: fs::File },
    CgroupV2 { dir: PathBuf, procs: fs::File, peak: Option<fs::File> },
    Watchdog { pid: Option<u32>, killed: bool, polled_peak: u64 },
}

impl Sandbox {
    /// Makes the process `command` starts join this sandbox before it runs anything (a cgroup
    /// charges memory to the group a task was in when it allocated, so joining after the start
    /// would leave its first allocations outside the limit).
    pub fn enter_on_spawn(&self, command: &mut tokio::process::Command) {
        let fd = match &self.kind {
            Kind::CgroupV1 { procs, .. } | Kind::CgroupV2 { procs, .. } => procs.as_raw_fd(),
            Kind::Watchdog { .. } => return,
        };
        // SAFETY: between fork and exec only async-signal-safe calls are allowed; write(2) on a
        // descriptor opened before the fork is one. "0" moves the writing task (the child).
        unsafe {
            command.pre_exec(move || {
                let written = libc::pwrite(fd, b"0".as_ptr().cast(), 1, 0);
                if written == 1 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
            });
        }
    }

    /// Called once the process runs (the watchdog needs its pid).
    pub fn started(&mut self, pid: Option<u32>) {
        if let Kind::Watchdog { pid: p, killed, polled_peak } = &mut self.kind {
            *p = pid;
            *killed = false;
            *polled_peak = 0;
        }
    }

    /// The watchdog polls; the cgroups need no polling (the kernel enforces the limit).
    pub fn needs_polling(&self) -> bool {
        matches!(self.kind, Kind::Watchdog { .. })
    }

    /// Resets the peak to the memory in use now (what is already resident counts, as in a
    /// Lambda sandbox that is reused) and notes the OOM-kill count.
    pub fn begin_invocation(&mut self) {
        self.oom_kills_before = self.oom_kills();
        match &mut self.kind {
            Kind::CgroupV1 { dir, .. } => {
                let _ = write(dir, "memory.max_usage_in_bytes", 0);
            }
            Kind::CgroupV2 { peak, .. } => {
                if let Some(f) = peak {
                    let _ = f.write_at(b"reset\n", 0);
                }
            }
            Kind::Watchdog { pid, killed, polled_peak } => {
                *killed = false;
                *polled_peak = 0;
                if let Some(pid) = pid {
                    let _ = fs::write(format!("/proc/{pid}/clear_refs"), "5");
                }
            }
        }
    }

    /// Watchdog only: true if the instance is over its limit (the caller kills it).
    pub fn poll_over_limit(&mut self) -> bool {
        let Kind::Watchdog { pid: Some(pid), killed, polled_peak } = &mut self.kind else { return false };
        let Some(rss) = proc_status_kib(*pid, "VmRSS:").map(|k| k * 1024) else { return false };
        *polled_peak = (*polled_peak).max(rss);
        if rss > self.limit {
            *killed = true;
        }
        *killed
    }

    /// Whether the instance was killed for its memory since the invocation began.
    pub fn oom_killed(&self) -> bool {
        match &self.kind {
            Kind::Watchdog { killed, .. } => *killed,
            _ => self.oom_kills() > self.oom_kills_before,
        }
    }

    /// Peak memory of the invocation so far, in bytes.
    pub fn peak_bytes(&self) -> u64 {
        match &self.kind {
            Kind::CgroupV1 { dir, .. } => read_u64(&dir.join("memory.max_usage_in_bytes")).unwrap_or(0),
            Kind::CgroupV2 { dir, peak, .. } => match peak {
                Some(f) => {
                    let mut buf = [0u8; 32];
                    let n = f.read_at(&mut buf, 0).unwrap_or(0);
                    let text = String::from_utf8_lossy(&buf[..n]);
                    text.trim().parse().ok().or_else(|| read_u64(&dir.join("memory.peak"))).unwrap_or(0)
                }
                None => read_u64(&dir.join("memory.current")).unwrap_or(0),
            },
            Kind::Watchdog { pid, polled_peak, .. } => {
                let hwm = pid.and_then(|p| proc_status_kib(p, "VmHWM:")).map(|k| k * 1024).unwrap_or(0);
                hwm.max(*polled_peak)
            }
        }
    }

    fn oom_kills(&self) -> u64 {
        let (dir, file) = match &self.kind {
            Kind::CgroupV1 { dir, .. } => (dir, "memory.oom_control"),
            Kind::CgroupV2 { dir, .. } => (dir, "memory.events"),
            Kind::Watchdog { .. } => return 0,
        };
        fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|t| {
                t.lines().find_map(|l| l.strip_prefix("oom_kill ").and_then(|v| v.trim().parse().ok()))
            })
            .unwrap_or(0)
    }
}

impl Drop for Sandbox {
    /// The group can go once its process has exited (the caller kills and waits first); a
    /// group still busy is left for the next runner's `remove_stale_groups`.
    fn drop(&mut self) {
        if let Kind::CgroupV1 { dir, .. } | Kind::CgroupV2 { dir, .. } = &self.kind {
            for _ in 0..20 {
                if fs::remove_dir(dir).is_ok() || !dir.exists() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(25));
            }
            tracing::warn!(group = %dir.display(), "could not remove the instance's memory cgroup");
        }
    }
}

#[derive(Clone, Copy)]
enum Hierarchy {
    V1Memory,
    V2,
}

/// The directory of this process's own cgroup in the hierarchy: its path from
/// `/proc/self/cgroup`, under that hierarchy's mount point (minus the mount's root, as in a
/// container that sees only its own subtree).
fn own_cgroup_dir(hierarchy: Hierarchy) -> anyhow::Result<PathBuf> {
    let cgroups = fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
    let path = cgroups
        .lines()
        .find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let wanted = match hierarchy {
                Hierarchy::V1Memory => controllers.split(',').any(|c| c == "memory"),
                Hierarchy::V2 => id == "0" && controllers.is_empty(),
            };
            wanted.then(|| path.to_string())
        })
        .with_context(|| match hierarchy {
            Hierarchy::V1Memory => "no cgroup v1 memory controller in /proc/self/cgroup",
            Hierarchy::V2 => "no cgroup v2 entry in /proc/self/cgroup",
        })?;
    let mounts = fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let (root, mount_point) = mounts
        .lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            let (fstype, options) = (*right.first()?, right.get(2).copied().unwrap_or(""));
            let matches = match hierarchy {
                Hierarchy::V1Memory => fstype == "cgroup" && options.split(',').any(|o| o == "memory"),
                Hierarchy::V2 => fstype == "cgroup2",
            };
            matches.then(|| (left.get(3).map(|s| s.to_string()), left.get(4).map(|s| s.to_string())))
        })
        .and_then(|(r, m)| Some((r?, m?)))
        .context("the cgroup hierarchy is not mounted")?;
    let relative = path.strip_prefix(root.trim_end_matches('/')).unwrap_or(&path);
    Ok(PathBuf::from(mount_point).join(relative.trim_start_matches('/')))
}

/// `dir` if a child group can be created in it and limited (tried with a throw-away group).
fn writable_parent(dir: &Path, limit_file: &str) -> anyhow::Result<PathBuf> {
    let probe = dir.join(format!("{GROUP_PREFIX}{}.probe", std::process::id()));
    create_group(&probe)?;
    let ok = write(&probe, limit_file, 64 * 1024 * 1024);
    let _ = fs::remove_dir(&probe);
    ok.with_context(|| format!("{} is not writable", probe.join(limit_file).display()))?;
    Ok(dir.to_path_buf())
}

fn create_group(dir: &Path) -> anyhow::Result<()> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating {}", dir.display())),
    }
}

fn open_procs(dir: &Path) -> anyhow::Result<fs::File> {
    let path = dir.join("cgroup.procs");
    fs::OpenOptions::new().write(true).open(&path).with_context(|| format!("opening {}", path.display()))
}

fn write(dir: &Path, file: &str, value: u64) -> anyhow::Result<()> {
    let path = dir.join(file);
    fs::write(&path, value.to_string()).with_context(|| format!("writing {value} to {}", path.display()))
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS:`, `VmHWM:`).
fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix(field)?.trim().strip_suffix("kB")?.trim().parse().ok())
}
