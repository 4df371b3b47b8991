//! Medians over runs, and the table.

use crate::load::Sample;
use std::fmt::Write;
use std::time::Duration;

/// The median of `values` (the mean of the middle two for an even count); `None` when empty.
pub fn median(mut values: Vec<f64>) -> Option<f64> {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    Some(if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 })
}

/// The medians of one scenario's runs.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub rate: Option<f64>,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    /// Seconds of CPU per event.
    pub cpu: Option<f64>,
    pub db_cpu: Option<f64>,
    pub bench_cpu: Option<f64>,
    pub rss_mib: Option<f64>,
    /// Bytes written to storage per event (the server's, and PostgreSQL's when it ran).
    pub written: Option<f64>,
    pub busy: Option<f64>,
    pub other: Option<f64>,
    pub accepted: Option<f64>,
    pub requests_per_s: Option<f64>,
}

impl Summary {
    pub fn of(samples: &[Sample]) -> Self {
        let each = |f: &dyn Fn(&Sample) -> Option<f64>| median(samples.iter().filter_map(f).collect());
        let per_event = |d: Duration, s: &Sample| (s.events > 0).then(|| d.as_secs_f64() / s.events as f64);
        Self {
            rate: each(&|s| Some(s.rate())),
            p50: each(&|s| s.percentile(50.0).map(|d| d.as_secs_f64())),
            p99: each(&|s| s.percentile(99.0).map(|d| d.as_secs_f64())),
            cpu: each(&|s| per_event(s.server_cpu, s)),
            db_cpu: each(&|s| s.db_cpu.and_then(|d| per_event(d, s))),
            bench_cpu: each(&|s| per_event(s.bench_cpu, s)),
            rss_mib: each(&|s| Some(s.peak_rss_kib as f64 / 1024.0)),
            written: each(&|s| s.written_per_event()),
            busy: each(&|s| Some(s.machine_busy)),
            other: each(&|s| Some(s.other_busy)),
            accepted: each(&|s| s.accepted_per_s),
            requests_per_s: each(&|s| Some(s.requests as f64 / s.window.as_secs_f64().max(1e-9))),
        }
    }
}

/// `13258.4` → `13,258`.
pub fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Seconds as a latency: `0.42 ms`, `3.1 ms`, `94 ms`, `1.26 s`.
pub fn latency(seconds: Option<f64>) -> String {
    match seconds {
        None => "–".into(),
        Some(s) if s < 0.001 => format!("{:.2} ms", s * 1e3),
        Some(s) if s < 0.01 => format!("{:.1} ms", s * 1e3),
        Some(s) if s < 1.0 => format!("{:.0} ms", s * 1e3),
        Some(s) => format!("{s:.2} s"),
    }
}

/// Seconds as microseconds: `1,962 µs`.
pub fn micros(seconds: Option<f64>) -> String {
    match seconds {
        None => "–".into(),
        Some(s) if s * 1e6 < 10.0 => format!("{:.1} µs", s * 1e6),
        Some(s) => format!("{} µs", thousands(s * 1e6)),
    }
}

pub fn ratio(value: Option<f64>, anchor: Option<f64>) -> String {
    match (value, anchor) {
        (Some(v), Some(a)) if a > 0.0 => {
            let r = v / a;
            if r < 0.1 {
                format!("{r:.3}×")
            } else if r < 10.0 {
                format!("{r:.2}×")
            } else {
                format!("{r:.1}×")
            }
        }
        _ => "–".into(),
    }
}

/// Bytes as kilobytes (10^3): `93.1 KB`, `0.9 KB`.
pub fn kilobytes(bytes: Option<f64>) -> String {
    bytes.map_or_else(|| "–".into(), |b| format!("{:.1} KB", b / 1e3))
}

pub fn percent(value: Option<f64>) -> String {
    value.map_or_else(|| "–".into(), |v| format!("{:.0} %", v * 100.0))
}

/// One line of the table.
pub struct Row {
    pub scenario: String,
    pub database: String,
    pub summary: Summary,
    /// Gateway rows are compared with the commit anchor.
    pub compare: bool,
    pub notes: String,
}

/// The table in Markdown, gateway rows with their ratios to `anchor` (the commit anchor).
pub fn table(rows: &[Row], anchor: Option<&Summary>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| scenario | DB | events/s | p50 | p99 | server CPU/event | PostgreSQL CPU/event | peak RSS | written/event | × commit anchor events/s | × commit anchor CPU/event | machine busy (other) | notes |"
    );
    let _ = writeln!(out, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|");
    for row in rows {
        let s = &row.summary;
        let (rate_ratio, cpu_ratio) = if row.compare {
            (ratio(s.rate, anchor.and_then(|a| a.rate)), ratio(s.cpu, anchor.and_then(|a| a.cpu)))
        } else {
            ("".into(), "".into())
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} ({}) | {} |",
            row.scenario,
            row.database,
            s.rate.map_or_else(|| "–".into(), thousands),
            latency(s.p50),
            latency(s.p99),
            micros(s.cpu),
            if s.db_cpu.is_some() { micros(s.db_cpu) } else { "".into() },
            s.rss_mib.map_or_else(|| "–".into(), |m| format!("{m:.1} MiB")),
            kilobytes(s.written),
            rate_ratio,
            cpu_ratio,
            percent(s.busy),
            percent(s.other),
            row.notes,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_formats() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
        assert_eq!(thousands(13258.4), "13,258");
        assert_eq!(thousands(341.0), "341");
        assert_eq!(thousands(1_000_000.0), "1,000,000");
        assert_eq!(latency(Some(0.194)), "194 ms");
        assert_eq!(latency(Some(1.26)), "1.26 s");
        assert_eq!(micros(Some(0.001962)), "1,962 µs");
        assert_eq!(ratio(Some(341.0), Some(13258.0)), "0.026×");
        assert_eq!(kilobytes(Some(93_140.0)), "93.1 KB");
        assert_eq!(kilobytes(None), "–");
    }
}
