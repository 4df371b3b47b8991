//! Servers under test, each a process of its own (so that its CPU and peak RSS can be read from
//! /proc): the anchors (this binary, re-executed) and the real `crm-gateway` binary.

use crate::anchor::AnchorKind;
use crate::procfs;
use anyhow::{Context, bail};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// How long a server may take to start and say where it listens.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The gateway's environment variables (src/config.rs): all are cleared before the benchmark sets
/// its own, so a developer's shell or `.env` cannot change what is measured.
const GATEWAY_VARIABLES: [&str; 24] = [
    "CRM_ENABLED",
    "CRM_PROVIDER",
    "CRM_API_URL",
    "CRM_API_KEY",
    "CRM_API_SECRET",
    "CRM_WEBHOOK_SECRET",
    "CRM_WEBHOOK_TOLERANCE_SECS",
    "CRM_WEBHOOK_MAX_BYTES",
    "SYNC_TIE_WINNER",
    "CRM_RATE_LIMIT",
    "CRM_REQUEST_TIMEOUT_SECS",
    "CRM_DELIVERY_WORKERS",
    "CRM_DELIVERY_LEASE_SECS",
    "CRM_RETRY_SCHEDULE",
    "DATABASE_URL",
    "DATABASE_MAX_CONNECTIONS",
    "SQLITE_SYNCHRONOUS",
    "SQLITE_WRITER_CPU",
    "BIND_ADDR",
    "GATEWAY_API_TOKEN",
    "RUST_LOG",
    "LOG_FORMAT",
    "HTTP_WORKERS",
    "NO_COLOR",
];

/// ERROR and WARN lines of a gateway's log.
#[derive(Debug, Default, Clone)]
pub struct LogSummary {
    pub errors: u64,
    pub warnings: u64,
    /// The first few ERROR lines.
    pub error_lines: Vec<String>,
    /// The first few WARN lines.
    pub warning_lines: Vec<String>,
}

pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    pub name: String,
    log: Option<Arc<Mutex<LogSummary>>>,
    log_path: PathBuf,
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn cpu_ticks(&self) -> u64 {
        procfs::cpu_ticks(self.pid()).unwrap_or(0)
    }

    pub fn peak_rss_kib(&self) -> u64 {
        procfs::peak_rss_kib(self.pid()).unwrap_or(0)
    }

    pub fn written_bytes(&self) -> Option<u64> {
        procfs::written_bytes(self.pid())
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// SIGTERM, then SIGKILL if it has not exited within 15 s. Returns the log summary (for the
    /// gateway) and a problem if it did not exit cleanly.
    pub fn stop(mut self) -> (LogSummary, Option<String>) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap_or(0);
        // SAFETY: signals our own child, by its id.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        let problem = loop {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => break None,
                Ok(Some(status)) => break Some(format!("{} exited with {status} after SIGTERM", self.name)),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                Ok(None) | Err(_) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break Some(format!("{} did not stop within 15 s of SIGTERM; killed", self.name));
                }
            }
        };
        // The log reader ends with the process's stderr; give it a moment to count the last lines.
        std::thread::sleep(Duration::from_millis(50));
        let summary = self.log.as_ref().map(|l| l.lock().map(|s| s.clone()).unwrap_or_default()).unwrap_or_default();
        (summary, problem)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts `bench anchor <kind> --port 0 --db <db>` and reads its address from its stdout.
pub fn spawn_anchor(kind: AnchorKind, db: &Path, workdir: &Path) -> anyhow::Result<Server> {
    let exe = std::env::current_exe().context("cannot find the benchmark's own binary")?;
    let log_path = workdir.join(format!("anchor-{}.log", kind.as_str()));
    let mut child = Command::new(exe)
        .args(["anchor", kind.as_str(), "--port", "0", "--db"])
        .arg(db)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(File::create(&log_path)?)
        .spawn()
        .context("cannot start the anchor")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let name = format!("anchor {}", kind.as_str());
    let line = rx.recv_timeout(START_TIMEOUT).with_context(|| format!("{name} did not print its address"))?;
    let addr = line.trim().parse().with_context(|| format!("{name} printed {line:?}, not an address"))?;
    Ok(Server { child, addr, name, log: None, log_path })
}

/// Starts the gateway with `env` (on top of a cleared set of its variables) in `workdir`, and
/// finds its address in its log line `listening addr=...`. Its log goes to `log_path`.
/// Runs `crm-gateway migrate` with the environment a run's gateway gets.
pub fn migrate_gateway(binary: &Path, env: &[(&str, String)], workdir: &Path) -> anyhow::Result<()> {
    let mut command = Command::new(binary);
    for variable in GATEWAY_VARIABLES {
        command.env_remove(variable);
    }
    let status = command
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .arg("migrate")
        .current_dir(workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .with_context(|| format!("cannot run {} migrate", binary.display()))?;
    anyhow::ensure!(status.success(), "{} migrate failed: {status}", binary.display());
    Ok(())
}

pub fn spawn_gateway(
    binary: &Path,
    env: &[(&str, String)],
    workdir: &Path,
    log_path: PathBuf,
) -> anyhow::Result<Server> {
    let mut command = Command::new(binary);
    for variable in GATEWAY_VARIABLES {
        command.env_remove(variable);
    }
    command.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    let mut child = command
        .arg("serve")
        .current_dir(workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    let stderr = child.stderr.take().context("no stderr")?;
    let summary = Arc::new(Mutex::new(LogSummary::default()));
    let (tx, rx) = std::sync::mpsc::channel();
    let mut file = File::create(&log_path)?;
    let counts = summary.clone();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let _ = writeln!(file, "{line}");
            if let Some(addr) = line.contains("listening").then(|| listening_addr(&line)).flatten()
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(addr);
            }
            let level = line.split_whitespace().nth(1).unwrap_or_default();
            if let Ok(mut s) = counts.lock() {
                match level {
                    "ERROR" => {
                        s.errors += 1;
                        if s.error_lines.len() < 5 {
                            s.error_lines.push(line.clone());
                        }
                    }
                    "WARN" => {
                        s.warnings += 1;
                        if s.warning_lines.len() < 5 {
                            s.warning_lines.push(line.clone());
                        }
                    }
                    _ => {}
                }
            }
        }
    });
    let addr = match rx.recv_timeout(START_TIMEOUT) {
        Ok(addr) => addr,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect();
            bail!("the gateway did not log `listening addr=...`; its log ends:\n{}", tail.join("\n"));
        }
    };
    Ok(Server { child, addr, name: "crm-gateway".into(), log: Some(summary), log_path })
}

/// `addr=127.0.0.1:1234` out of a log line (human or JSON format).
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("addr")? + 4..];
    let rest = rest.trim_start_matches(['=', '"', ':', ' ']);
    let end =
        rest.find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '[' | ']'))).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// The `crm-gateway` binary next to this one, built first if it is missing or older than the
/// sources (`cargo build` with the same profile and target directory). Returns its path and, when
/// it was built, a note saying so.
pub fn gateway_binary(explicit: Option<PathBuf>) -> anyhow::Result<(PathBuf, Option<String>)> {
    if let Some(path) = explicit {
        anyhow::ensure!(path.is_file(), "--gateway {}: no such file", path.display());
        return Ok((path, None));
    }
    let exe = std::env::current_exe().context("cannot find the benchmark's own binary")?;
    let profile_dir = exe.parent().context("the benchmark's binary has no directory")?;
    let binary = profile_dir.join("crm-gateway");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("no workspace root")?.to_owned();
    let built = std::fs::metadata(&binary).and_then(|m| m.modified()).ok();
    let newest = newest_source(&root);
    let reason = match (built, &newest) {
        (None, _) => "missing",
        (Some(built), Some((newest, _))) if *newest > built => "older than the sources",
        _ => return Ok((binary, None)),
    };
    let profile = profile_dir.file_name().and_then(|n| n.to_str()).unwrap_or("release").to_owned();
    let target_dir = profile_dir.parent().context("no target directory")?;
    let mut args = vec!["build".to_owned()];
    match profile.as_str() {
        "release" => args.push("--release".into()),
        "debug" => {}
        other => args.extend(["--profile".into(), other.into()]),
    }
    args.extend(["--bin".into(), "crm-gateway".into()]);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let changed = newest.map(|(_, path)| format!(" (newest source: {})", path.display())).unwrap_or_default();
    let note = format!(
        "crm-gateway was {reason}{changed}; built it first: `cargo {}` with CARGO_TARGET_DIR={}",
        args.join(" "),
        target_dir.display()
    );
    eprintln!("bench: {note}");
    let mut build = Command::new(cargo);
    build.args(&args).current_dir(&root).env("CARGO_TARGET_DIR", target_dir);
    // `cargo run` gave this process the variables of the bench package (CARGO_MANIFEST_DIR,
    // CARGO_PKG_NAME, OUT_DIR, ...). Build scripts such as ring's track some of them, so passing
    // them on would make this build and the next `cargo run -p bench` rebuild each other's crates.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || matches!(
                &*name,
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_MANIFEST_LINKS"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
                    | "OUT_DIR"
            )
        {
            build.env_remove(&*name);
        }
    }
    let status = build.status().context("cannot run cargo")?;
    anyhow::ensure!(status.success(), "cargo build --bin crm-gateway failed ({status})");
    let rebuilt = std::fs::metadata(&binary).and_then(|m| m.modified()).ok();
    anyhow::ensure!(rebuilt.is_some(), "cargo built no {}", binary.display());
    if built.is_some() && rebuilt == built {
        // Cargo's own fingerprints found nothing to do (a file changed that the binary does
        // not depend on, such as Cargo.lock for another member).
        return Ok((binary, Some(format!("{note} (cargo found it up to date)"))));
    }
    Ok((binary, Some(note)))
}

/// The newest modification time among the gateway's sources: src/, entity/, migration/, the
/// manifests and Cargo.lock.
fn newest_source(root: &Path) -> Option<(SystemTime, PathBuf)> {
    let mut newest: Option<(SystemTime, PathBuf)> = None;
    let mut pending: Vec<PathBuf> =
        ["src", "entity", "migration", "Cargo.toml", "Cargo.lock"].iter().map(|p| root.join(p)).collect();
    while let Some(path) = pending.pop() {
        let Ok(meta) = std::fs::metadata(&path) else { continue };
        if meta.is_dir() {
            if path.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            if let Ok(entries) = std::fs::read_dir(&path) {
                pending.extend(entries.filter_map(Result::ok).map(|e| e.path()));
            }
        } else if let Ok(modified) = meta.modified()
            && newest.as_ref().is_none_or(|(t, _)| modified > *t)
        {
            newest = Some((modified, path));
        }
    }
    newest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_is_read_from_the_listening_line() {
        let human = "2026-12-02T22:49:46.123456Z  INFO crm_gateway::startup: listening addr=127.0.0.1:40123";
        assert_eq!(listening_addr(human), Some("127.0.0.1:40123".parse().unwrap()));
        let json = r#"{"timestamp":"...","level":"INFO","addr":"127.0.0.1:40124","message":"listening"}"#;
        assert_eq!(listening_addr(json), Some("127.0.0.1:40124".parse().unwrap()));
    }
}
