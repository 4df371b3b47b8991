//! The SQLite writer's CPU (`SQLITE_WRITER_CPU`).
//!
//! Every statement the writer runs is a round trip between two threads: the writer's, which
//! builds the statements and applies the events, and the thread sqlx runs the connection on. They
//! take turns, and on different CPUs each turn wakes a CPU that had gone idle, which on a virtual
//! machine costs more than most statements (BENCHMARKS.md, session 13). On one CPU a turn is a
//! plain context switch: with both threads there, the gateway applied 50 % more single-event
//! deliveries a second on two cores, with a quarter less CPU per event. The writer then runs on a
//! thread of its own ([`crate::writer::Writer::start`]), so that the rest of the gateway's work
//! (HTTP, deliveries to the CRM) does not share its runtime, and is free to use every CPU.
//!
//! A thread started from a pinned one inherits its CPU: nothing on the writer's thread may start
//! threads of its own (`spawn_blocking`, say), other than the connections the pool opens there.

use crate::config::WriterCpu;

/// The CPU the SQLite writer's threads are pinned to, if any: `auto` takes the last CPU this
/// process may run on, when it may run on two or more (on one, there is nothing to gain);
/// `off` none; a number that CPU, which must be one the process may run on.
pub fn choose(choice: WriterCpu) -> Result<Option<usize>, String> {
    choose_from(choice, &allowed_cpus())
}

/// [`choose`] among `allowed` (empty where pinning is not supported).
pub fn choose_from(choice: WriterCpu, allowed: &[usize]) -> Result<Option<usize>, String> {
    match choice {
        WriterCpu::Off => Ok(None),
        WriterCpu::Auto if allowed.len() >= 2 => Ok(allowed.iter().max().copied()),
        WriterCpu::Auto => Ok(None),
        WriterCpu::Cpu(cpu) if allowed.contains(&cpu) => Ok(Some(cpu)),
        WriterCpu::Cpu(cpu) if allowed.is_empty() => {
            Err(format!("cannot pin to CPU {cpu}: pinning threads is supported on Linux only; use auto or off"))
        }
        WriterCpu::Cpu(cpu) => Err(format!("CPU {cpu} is not one this process may run on ({})", list(allowed))),
    }
}

/// The name of the thread of the writer's `id`th SQLite connection (sqlx numbers the connections
/// of the process). Linux keeps 15 bytes of a thread's name; this one fits them for any id below
/// 10^9, so the thread is found by it ([`pin_named`]).
pub fn writer_connection_thread(id: u64) -> String {
    format!("sqlwr-{id}")
}

/// `0-3,6` style, as `/proc/<pid>/status` and `taskset` show CPU lists.
pub fn list(cpus: &[usize]) -> String {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    for cpu in sorted {
        match ranges.last_mut() {
            Some((_, end)) if *end + 1 == cpu => *end = cpu,
            _ => ranges.push((cpu, cpu)),
        }
    }
    let parts: Vec<String> =
        ranges.iter().map(|&(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") }).collect();
    parts.join(",")
}

#[cfg(target_os = "linux")]
mod os {
    use std::io;

    /// The CPUs the process (its main thread) may run on.
    pub fn allowed_cpus() -> Vec<usize> {
        // SAFETY: `set` is a plain bit set that sched_getaffinity fills in; its size is passed.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(libc::getpid(), size_of::<libc::cpu_set_t>(), &mut set) != 0 {
                return Vec::new();
            }
            (0..libc::CPU_SETSIZE as usize).filter(|&cpu| libc::CPU_ISSET(cpu, &set)).collect()
        }
    }

    /// Pins thread `tid` (0: the calling thread) to `cpu`.
    pub fn pin(tid: libc::pid_t, cpu: usize) -> io::Result<()> {
        // SAFETY: as above; CPU_SET is given a CPU below CPU_SETSIZE.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if cpu >= libc::CPU_SETSIZE as usize {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
            libc::CPU_SET(cpu, &mut set);
            if libc::sched_setaffinity(tid, size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// Pins every thread of this process named `name` to `cpu`; returns how many it pinned, or
    /// the error of one it could not pin when it pinned none.
    pub fn pin_named(name: &str, cpu: usize) -> io::Result<usize> {
        let (mut pinned, mut failed) = (0, None);
        for (tid, _) in super::threads_named(name)? {
            match pin(tid, cpu) {
                Ok(()) => pinned += 1,
                Err(e) => failed = Some(e),
            }
        }
        match failed {
            Some(e) if pinned == 0 => Err(e),
            _ => Ok(pinned),
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod os {
    use std::io;

    pub fn allowed_cpus() -> Vec<usize> {
        Vec::new()
    }

    pub fn pin(_: i32, _: usize) -> io::Result<()> {
        Err(io::Error::new(io::ErrorKind::Unsupported, "pinning threads is supported on Linux only"))
    }

    pub fn pin_named(_: &str, _: usize) -> io::Result<usize> {
        pin(0, 0).map(|()| 0)
    }
}

pub use os::{allowed_cpus, pin_named};

/// Pins the calling thread to `cpu`.
pub fn pin_current(cpu: usize) -> std::io::Result<()> {
    os::pin(0, cpu)
}

/// The CPUs thread `name` of this process may run on, as `/proc` lists them (`None` if there is
/// no such thread). For tests and diagnostics.
pub fn thread_cpus(name: &str) -> Option<String> {
    let (_, task) = threads_named(name).ok()?.into_iter().next()?;
    cpus_in(&task.join("status"))
}

/// The threads of this process named `name`: each one's id and its `/proc` directory.
fn threads_named(name: &str) -> std::io::Result<Vec<(i32, std::path::PathBuf)>> {
    let mut found = Vec::new();
    for task in std::fs::read_dir("/proc/self/task")?.flatten() {
        let Ok(comm) = std::fs::read_to_string(task.path().join("comm")) else { continue };
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else { continue };
        if comm.trim_end() == name {
            found.push((tid, task.path()));
        }
    }
    Ok(found)
}

/// The CPUs the calling thread may run on, as `/proc` lists them.
pub fn current_thread_cpus() -> Option<String> {
    cpus_in(std::path::Path::new("/proc/thread-self/status"))
}

fn cpus_in(status: &std::path::Path) -> Option<String> {
    let status = std::fs::read_to_string(status).ok()?;
    status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).map(|l| l.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_takes_the_last_allowed_cpu_when_there_are_two_or_more() {
        assert_eq!(choose_from(WriterCpu::Auto, &[0, 1]), Ok(Some(1)));
        assert_eq!(choose_from(WriterCpu::Auto, &[2, 5, 3]), Ok(Some(5)));
        assert_eq!(choose_from(WriterCpu::Auto, &[4]), Ok(None), "one CPU: nothing to pin");
        assert_eq!(choose_from(WriterCpu::Auto, &[]), Ok(None), "not supported: not pinned");
    }

    #[test]
    fn the_connection_threads_name_fits_what_linux_keeps() {
        assert_eq!(writer_connection_thread(7), "sqlwr-7");
        assert!(writer_connection_thread(999_999_999).len() <= 15);
    }

    #[test]
    fn off_never_pins_and_a_number_must_be_allowed() {
        assert_eq!(choose_from(WriterCpu::Off, &[0, 1]), Ok(None));
        assert_eq!(choose_from(WriterCpu::Cpu(0), &[0, 1]), Ok(Some(0)));
        assert_eq!(
            choose_from(WriterCpu::Cpu(7), &[0, 1, 2, 3, 6]),
            Err("CPU 7 is not one this process may run on (0-3,6)".to_owned())
        );
        assert!(choose_from(WriterCpu::Cpu(0), &[]).unwrap_err().contains("Linux only"));
    }
}
