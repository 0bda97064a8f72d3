//! Child processes for benchmarks: spawn, wait for a port, measure the
//! resident memory of a process tree, and always stop what was started.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::BenchError;

/// A child process that is stopped (SIGTERM, then SIGKILL after a grace
/// period) when dropped, so no benchmark leaves a server behind.
#[derive(Debug)]
pub struct Guard {
    name: String,
    child: Child,
}

impl Guard {
    /// Spawns `cmd` with stdin closed and stdout/stderr sent to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Self, BenchError> {
        let out = fs::File::create(log).map_err(|source| BenchError::Io {
            what: format!("create log {}", log.display()),
            source,
        })?;
        let err = out.try_clone().map_err(|source| BenchError::Io {
            what: format!("clone log handle {}", log.display()),
            source,
        })?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let child = cmd.spawn().map_err(|source| BenchError::Io {
            what: format!("start {name}"),
            source,
        })?;
        Ok(Self {
            name: name.to_owned(),
            child,
        })
    }

    /// The process id of the child (the root of its tree).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the child has already exited (it usually means a bad config).
    pub fn check_alive(&mut self) -> Result<(), BenchError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(BenchError::Exited {
                name: self.name.clone(),
                status: status.to_string(),
            }),
            Err(source) => Err(BenchError::Io {
                what: format!("poll {}", self.name),
                source,
            }),
        }
    }

    /// Asks the child to stop with SIGTERM, waits up to `grace`, then kills.
    pub fn stop(&mut self, grace: Duration) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // `kill` from the system: the bench crate forbids unsafe code and
        // std only sends SIGKILL, which would orphan nginx's workers.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16, BenchError> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|source| BenchError::Io {
            what: "bind an ephemeral port".into(),
            source,
        })?;
    let port = listener
        .local_addr()
        .map_err(|source| BenchError::Io {
            what: "read an ephemeral port".into(),
            source,
        })?
        .port();
    Ok(port)
}

/// Waits until something accepts TCP connections on `addr`, or fails after
/// `timeout` (or as soon as `guard`'s process exits).
pub fn wait_for_port(
    addr: SocketAddr,
    guard: &mut Guard,
    timeout: Duration,
) -> Result<(), BenchError> {
    let deadline = Instant::now() + timeout;
    loop {
        guard.check_alive()?;
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(BenchError::Timeout(format!(
                "{} did not listen on {addr} within {timeout:?}",
                guard.name
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Finds an executable on `PATH` (or `/usr/sbin`, where Debian puts
/// nginx and haproxy for non-root users).
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// The pids of `root` and all its descendants (from `/proc/*/stat`).
pub fn tree_pids(root: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Ok(stat) = fs::read_to_string(entry.path().join("stat"))
                && let Some(ppid) = parse_ppid(&stat)
            {
                parents.push((pid, ppid));
            }
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|(_, ppid)| *ppid == parent)
                .map(|(pid, _)| *pid),
        );
        i += 1;
    }
    tree
}

/// The parent pid from the text of `/proc/PID/stat` (the command name, in
/// parentheses, may itself hold spaces and parentheses).
fn parse_ppid(stat: &str) -> Option<u32> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// A `kB` field (such as `VmRSS`) from the text of `/proc/PID/status`.
fn status_kb(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// Current resident memory of `root` and its descendants, in KiB.
pub fn tree_rss_kb(root: u32) -> u64 {
    tree_pids(root)
        .into_iter()
        .filter_map(|pid| fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|status| status_kb(&status, "VmRSS"))
        .sum()
}

/// CPU time (user + system) used so far by `root` and its live
/// descendants, in clock ticks (see [`clock_ticks_per_second`]).
pub fn tree_cpu_ticks(root: u32) -> u64 {
    tree_pids(root)
        .into_iter()
        .filter_map(|pid| fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| parse_cpu_ticks(&stat))
        .sum()
}

/// Times the kernel has taken the CPU from a thread of `root` or its live
/// descendants while it could still run (`nonvoluntary_ctxt_switches`
/// summed over `/proc/PID/task/*/status`): how often busy neighbours
/// preempted it.
pub fn tree_preemptions(root: u32) -> u64 {
    let mut total = 0;
    for pid in tree_pids(root) {
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            if let Ok(status) = fs::read_to_string(task.path().join("status")) {
                total += status_count(&status, "nonvoluntary_ctxt_switches").unwrap_or(0);
            }
        }
    }
    total
}

/// A plain count (such as `voluntary_ctxt_switches`) from the text of
/// `/proc/PID/status`.
fn status_count(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().parse().ok())
}

/// CPU time (user + system) used so far by this process alone (all its
/// threads, none of its children), in clock ticks.
pub fn self_cpu_ticks() -> u64 {
    fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| parse_cpu_ticks(&stat))
        .unwrap_or(0)
}

/// `utime + stime` (fields 14 and 15) from the text of `/proc/PID/stat`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The kernel's clock ticks per second for `/proc` CPU times (`getconf
/// CLK_TCK`; 100 if that cannot be run).
pub fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// Whether the current process runs as root (from `/proc/self/status`).
pub fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|rest| rest.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// The `remora` binary to benchmark: `flag`, else `$REMORA_BIN`, else beside
/// this binary, else `$CARGO_TARGET_DIR/release/remora`, else `target/release/remora`.
pub fn find_remora(flag: Option<&Path>) -> Option<PathBuf> {
    if let Some(path) = flag {
        return Some(path.to_owned());
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("remora")));
    let target_dir =
        std::env::var_os("CARGO_TARGET_DIR").map(|d| PathBuf::from(d).join("release/remora"));
    [
        std::env::var_os("REMORA_BIN").map(PathBuf::from),
        beside,
        target_dir,
        Some(PathBuf::from("target/release/remora")),
    ]
    .into_iter()
    .flatten()
    .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ppid_survives_odd_command_names() {
        let stat = "1234 (we ird) name)) S 77 1234 1234 0 -1";
        assert_eq!(parse_ppid(stat), Some(77));
        assert_eq!(parse_ppid("garbage"), None);
    }

    #[test]
    fn cpu_ticks_are_utime_plus_stime() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt
        // majflt cmajflt utime stime ...
        let stat = "42 (a b) R 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 2";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
        assert_eq!(parse_cpu_ticks("42 (x) R 1"), None);
        assert!(clock_ticks_per_second() > 0);
    }

    #[test]
    fn status_fields_parse_in_kb() {
        let status = "Name:\tx\nVmHWM:\t   2048 kB\nVmRSS:\t    1024 kB\n";
        assert_eq!(status_kb(status, "VmRSS"), Some(1024));
        assert_eq!(status_kb(status, "VmHWM"), Some(2048));
        assert_eq!(status_kb(status, "VmSwap"), None);
    }

    #[test]
    fn switch_counts_parse_by_exact_name() {
        let status = "voluntary_ctxt_switches:\t120\nnonvoluntary_ctxt_switches:\t7\n";
        assert_eq!(status_count(status, "voluntary_ctxt_switches"), Some(120));
        assert_eq!(status_count(status, "nonvoluntary_ctxt_switches"), Some(7));
        assert_eq!(status_count(status, "Threads"), None);
    }

    #[test]
    fn own_tree_has_memory_and_includes_children() {
        let me = std::process::id();
        assert!(tree_rss_kb(me) > 0);
        let mut child = Command::new("sleep").arg("5").spawn().expect("spawn sleep");
        let pids = tree_pids(me);
        let found = pids.contains(&child.id());
        let _ = child.kill();
        let _ = child.wait();
        assert!(found, "child {} not in tree {pids:?}", child.id());
    }
}
