//! How `crm-gateway import` shows a pass: a progress bar on a terminal, log lines otherwise.
//!
//! TreadSoft's listings give no count, but they are ordered by `updatedAt`: how far a pass has
//! read is how far its last `updatedAt` is between its `updatedSince` and now, which is what the
//! bar shows (and its ETA is estimated from).

use super::import::{Progress, Summary};
use crate::sync::mapping::RecordType;
use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The bar's span: seconds from `since` to now (at least one).
fn span(since: DateTime<Utc>, now: DateTime<Utc>) -> u64 {
    (now - since).num_seconds().max(1) as u64
}

/// The plural a line names a record type by (`contacts`, `properties`, ...).
fn plural(record_type: &'static str) -> &'static str {
    RecordType::parse(record_type).map_or(record_type, RecordType::collection)
}

fn rate(seen: u64, elapsed: Duration) -> u64 {
    (seen as f64 / elapsed.as_secs_f64().max(0.001)).round() as u64
}

/// A progress bar on standard error when it is a terminal; else a line at most every
/// `every` (and one per record type at its end).
pub struct Shown {
    bar: Option<ProgressBar>,
    every: Duration,
    state: Mutex<State>,
}

struct State {
    started: Instant,
    last_line: Option<Instant>,
    now: DateTime<Utc>,
}

impl Shown {
    /// A bar if standard error is a terminal (and `quiet` is not asked), else log lines.
    pub fn new(quiet: bool) -> Self {
        use std::io::IsTerminal;
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(Some(1), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{prefix:>12.bold} [{bar:32.cyan/blue}] {percent:>3}% {msg} · ETA {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar
        });
        Self::with(bar, if quiet { Duration::MAX } else { Duration::from_secs(1) })
    }

    fn with(bar: Option<ProgressBar>, every: Duration) -> Self {
        Self { bar, every, state: Mutex::new(State { started: Instant::now(), last_line: None, now: Utc::now() }) }
    }

    fn line(&self, text: &str) {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{text}");
    }
}

impl Progress for Shown {
    fn started(&self, summary: &Summary) {
        let now = Utc::now();
        if let Ok(mut state) = self.state.lock() {
            *state = State { started: Instant::now(), last_line: None, now };
        }
        let from = if summary.since == DateTime::UNIX_EPOCH {
            "the beginning".to_owned()
        } else {
            summary.since.format("%Y-%m-%d %H:%M:%S").to_string()
        };
        let how = if summary.resumed { "resuming the pass" } else { "reading" };
        match &self.bar {
            Some(bar) => {
                bar.reset();
                bar.set_length(span(summary.since, now));
                bar.set_position(0);
                bar.set_prefix(plural(summary.record_type).to_owned());
                bar.set_message(format!("{how} changes since {from}"));
            }
            None if self.every != Duration::MAX => {
                self.line(&format!("import: {}: {how} changes since {from}", plural(summary.record_type)));
            }
            None => {}
        }
    }

    fn page(&self, summary: &Summary) {
        let Ok(mut state) = self.state.lock() else { return };
        let per_second = rate(summary.seen, state.started.elapsed());
        match &self.bar {
            Some(bar) => {
                if let Some(through) = summary.through {
                    bar.set_position(span(summary.since, through).min(span(summary.since, state.now)));
                }
                bar.set_message(format!("{} records · {per_second}/s", summary.seen));
            }
            None if self.every == Duration::MAX => {}
            None => {
                if state.last_line.is_none_or(|at| at.elapsed() >= self.every) {
                    state.last_line = Some(Instant::now());
                    let through = summary.through.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string());
                    self.line(&format!(
                        "import: {}: {} records in {} pages ({per_second}/s), through {}",
                        plural(summary.record_type),
                        summary.seen,
                        summary.pages,
                        through.as_deref().unwrap_or("–"),
                    ));
                }
            }
        }
    }

    fn waiting(&self, t: RecordType, why: &str, wait: Duration) {
        let text = format!("{why}; trying again in {:.0?}", wait);
        match &self.bar {
            Some(bar) => bar.set_message(text),
            None if self.every != Duration::MAX => self.line(&format!("import: {}: {text}", t.collection())),
            None => {}
        }
    }

    fn finished(&self, summary: &Summary) {
        let Ok(state) = self.state.lock() else { return };
        let per_second = rate(summary.seen, state.started.elapsed());
        let text = format!(
            "{} records in {:.1?} ({per_second}/s): {} created, {} updated, {} unchanged, {} stale, {} waiting, {} failed",
            summary.seen,
            state.started.elapsed(),
            summary.created,
            summary.updated,
            summary.unchanged,
            summary.stale,
            summary.waiting,
            summary.failed
        );
        match &self.bar {
            Some(bar) => {
                bar.set_position(bar.length().unwrap_or(1));
                bar.finish_with_message(format!(
                    "{} records in {:.1?} ({per_second}/s)",
                    summary.seen,
                    state.started.elapsed()
                ));
                // The next bar, or the summary, starts on a line of its own.
                let _ = writeln!(std::io::stderr().lock());
            }
            None if self.every != Duration::MAX => {
                self.line(&format!("import: {}s: done, {text}", summary.record_type))
            }
            None => {}
        }
    }
}
