//! What the benchmark reads from /proc: a process's CPU time (`/proc/<pid>/stat`, utime + stime),
//! peak resident set (`/proc/<pid>/status`, VmHWM) and bytes written to storage
//! (`/proc/<pid>/io`, write_bytes), the whole machine's CPU (`/proc/stat`),
//! PostgreSQL's processes, and the machine's description.

use std::fs;
use std::path::Path;
use std::time::Duration;

/// Clock ticks per second of the times in /proc, and whether it was assumed (sysconf failed).
pub fn clock_ticks() -> (u64, bool) {
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    match u64::try_from(ticks) {
        Ok(t) if t > 0 => (t, false),
        _ => (100, true),
    }
}

/// Ticks as time.
pub fn ticks_to_duration(ticks: u64) -> Duration {
    let (per_second, _) = clock_ticks();
    Duration::from_secs_f64(ticks as f64 / per_second as f64)
}

/// utime + stime of a process (all its threads), in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count from the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of proc(5); `after` starts at field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Peak resident set size (VmHWM) of a live process, in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| line.strip_prefix("VmHWM:")?.trim().strip_suffix("kB")?.trim().parse().ok())
}

/// Bytes a process (all its threads) caused to be written to storage: `write_bytes` of
/// `/proc/<pid>/io`, the file pages it dirtied (a SQLite WAL and database among them), not what it
/// sent over sockets. Zero on a file system without storage (tmpfs).
pub fn written_bytes(pid: u32) -> Option<u64> {
    write_bytes_in(&fs::read_to_string(format!("/proc/{pid}/io")).ok()?)
}

/// The `write_bytes` line of a `/proc/<pid>/io` text.
fn write_bytes_in(io: &str) -> Option<u64> {
    io.lines().find_map(|line| line.strip_prefix("write_bytes:")?.trim().parse().ok())
}

/// CPU ticks of every process whose command is `postgres` (the server and its backends).
pub fn postgres_ticks() -> u64 {
    postgres_pids().filter_map(cpu_ticks).sum()
}

/// Bytes written to storage by every process whose command is `postgres`. A backend that ends
/// keeps its bytes in the sum: the kernel adds them to the postmaster's, which reaps it. `None`
/// when there is none, or one of them cannot be read (a server running as another user, to a
/// benchmark that is not root): a partial sum would pass for the whole.
pub fn postgres_written() -> Option<u64> {
    let mut total = None;
    for pid in postgres_pids() {
        match fs::read_to_string(format!("/proc/{pid}/io")) {
            Ok(io) => {
                total = Some(total.unwrap_or(0) + write_bytes_in(&io)?);
            }
            // Ended between the listing and the read: reaped, its bytes are the postmaster's now.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(_) => return None,
        }
    }
    total
}

fn postgres_pids() -> impl Iterator<Item = u32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "postgres"))
}

/// The whole machine's CPU ticks, busy and in all, summed over every core (`/proc/stat`).
#[derive(Debug, Clone, Copy, Default)]
pub struct MachineCpu {
    pub busy: u64,
    pub total: u64,
}

impl MachineCpu {
    pub fn read() -> Self {
        let Ok(stat) = fs::read_to_string("/proc/stat") else { return Self::default() };
        let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else { return Self::default() };
        let values: Vec<u64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
        // user nice system idle iowait irq softirq steal (guest time is inside user already).
        let total: u64 = values.iter().take(8).sum();
        let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
        Self { busy: total.saturating_sub(idle), total }
    }
}

/// `/proc/loadavg`'s three load averages.
pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// The CPU model and core count, memory and kernel, for the report.
pub fn machine() -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|(_, m)| m.trim().to_owned()))
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let mem_gib = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().find_map(|l| l.strip_prefix("MemTotal:")?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
        })
        .map_or(0.0, |kib| kib as f64 / 1024.0 / 1024.0);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores ({model}), {mem_gib:.0} GiB, Linux {}", kernel.trim())
}

/// The file system type that holds `path` (longest matching mount point in /proc/mounts).
pub fn filesystem_of(path: &Path) -> String {
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    let path = path.canonicalize().unwrap_or_else(|_| path.to_owned());
    mounts
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let (device, point, kind) = (parts.next()?, parts.next()?, parts.next()?);
            path.starts_with(point).then(|| (point.len(), format!("{kind} ({device})")))
        })
        .max_by_key(|(len, _)| *len)
        .map_or_else(|| "unknown".into(), |(_, kind)| kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time_and_a_peak_rss() {
        let pid = std::process::id();
        assert!(cpu_ticks(pid).is_some());
        assert!(peak_rss_kib(pid).is_some_and(|k| k > 0));
        let cpu = MachineCpu::read();
        assert!(cpu.total >= cpu.busy && cpu.total > 0);
    }

    /// A file written here counts in this process's bytes written to storage, and bytes written
    /// to a pipe do not. Checked where the temporary directory is on a disk file system
    /// (elsewhere, as on tmpfs, nothing is written to storage) and the kernel accounts I/O.
    #[test]
    fn bytes_written_to_a_file_are_counted_and_a_pipe_is_not() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let kind = filesystem_of(dir.path());
        let pid = std::process::id();
        let Some(before) = written_bytes(pid) else { return };
        if !["ext4", "xfs", "btrfs", "ext3", "f2fs"].iter().any(|k| kind.starts_with(k)) {
            return;
        }
        // A pipe, written with write(2) as a file is: counted in `wchar`, not in `write_bytes`.
        let (mut from, mut to) = std::io::pipe().unwrap();
        let reader = std::thread::spawn(move || std::io::copy(&mut from, &mut std::io::sink()).unwrap());
        to.write_all(&vec![7u8; 1 << 20]).unwrap();
        drop(to);
        assert_eq!(reader.join().unwrap(), 1 << 20);
        let sent = written_bytes(pid).unwrap();
        assert!(sent - before < 1 << 18, "a pipe's bytes counted: {before} -> {sent}");

        fs::File::create(dir.path().join("written")).unwrap().write_all(&vec![7u8; 1 << 20]).unwrap();
        let after = written_bytes(pid).unwrap();
        assert!(after - sent >= 1 << 20, "a file's bytes not counted: {sent} -> {after}");
    }
}
