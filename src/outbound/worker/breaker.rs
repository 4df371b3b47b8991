//! The circuit breaker around CRM calls: after [`THRESHOLD`] calls in a row fail because the CRM
//! is down (timeouts, refused connections, 5xx), delivery pauses instead of using up every row's
//! attempts against a dead service. After a cool-down it probes `GET /v1/me`: an answer closes the
//! circuit and delivery resumes; a failure doubles the cool-down (up to [`MAX_COOLDOWN`]).
//!
//! A 429 or any other answer the CRM gives (4xx, a duplicate) means it is up: the count restarts.
//! The state is per instance, kept in memory, and shown by `/readyz`.

use crate::crm::CrmError;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::sync::Mutex;
use std::time::Duration;

/// Failed calls in a row that open the circuit.
pub const THRESHOLD: u32 = 5;
/// The first pause; each failed probe doubles it.
pub const COOLDOWN: Duration = Duration::from_secs(30);
pub const MAX_COOLDOWN: Duration = Duration::from_secs(600);

#[derive(Debug, Default)]
pub struct Breaker(Mutex<Inner>);

#[derive(Debug, Default)]
struct Inner {
    consecutive_failures: u32,
    open: Option<Open>,
}

#[derive(Debug, Clone, Copy)]
struct Open {
    since: DateTime<Utc>,
    probe_at: DateTime<Utc>,
    cooldown: Duration,
}

/// What `/readyz` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// `closed` (delivering) or `open` (paused).
    pub circuit: &'static str,
    pub consecutive_failures: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_since: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_probe_at: Option<DateTime<Utc>>,
}

/// What a delivery step may do now.
#[derive(Debug, PartialEq, Eq)]
pub enum Gate {
    /// Deliver.
    Closed,
    /// Paused: do nothing.
    Open,
    /// Paused, and the cool-down is over: probe the CRM first.
    Probe,
}

/// Whether a call's failure says the CRM is down (as opposed to answering).
pub fn is_outage(error: &CrmError) -> bool {
    matches!(error, CrmError::Transient { status, .. } if status.is_none_or(|s| s >= 500))
}

impl Breaker {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn gate(&self, now: DateTime<Utc>) -> Gate {
        match self.inner().open {
            None => Gate::Closed,
            Some(open) if now >= open.probe_at => Gate::Probe,
            Some(_) => Gate::Open,
        }
    }

    /// Counts one CRM call's result (`None`: it did not reach the CRM, e.g. not sent).
    pub fn observe(&self, result: Result<(), &CrmError>) {
        let mut inner = self.inner();
        match result {
            Ok(()) => inner.consecutive_failures = 0,
            Err(e) if is_outage(e) => inner.consecutive_failures += 1,
            Err(CrmError::NotSent { .. } | CrmError::ParentFailed { .. }) => {}
            Err(_) => inner.consecutive_failures = 0,
        }
    }

    /// Whether enough calls failed in a row that the rest of a step should not be sent.
    pub fn tripped(&self) -> bool {
        self.inner().consecutive_failures >= THRESHOLD
    }

    /// Opens the circuit at `now` if it tripped; returns whether it did just now.
    pub fn settle(&self, now: DateTime<Utc>) -> bool {
        let mut inner = self.inner();
        if inner.open.is_none() && inner.consecutive_failures >= THRESHOLD {
            inner.open = Some(Open { since: now, probe_at: now + chrono_duration(COOLDOWN), cooldown: COOLDOWN });
            tracing::warn!(
                failures = inner.consecutive_failures,
                pause_secs = COOLDOWN.as_secs(),
                "the CRM is failing: delivery paused (circuit open)"
            );
            return true;
        }
        false
    }

    /// Records the probe's result at `now`.
    pub fn probed(&self, now: DateTime<Utc>, result: Result<(), &CrmError>) {
        let mut inner = self.inner();
        let Some(open) = inner.open else { return };
        // Any answer (a 429 or a 401 too) means the CRM is reachable again.
        match result {
            Err(error) if is_outage(error) => {
                let cooldown = (open.cooldown * 2).min(MAX_COOLDOWN);
                tracing::warn!(%error, pause_secs = cooldown.as_secs(), "the CRM still fails its probe");
                inner.open = Some(Open { probe_at: now + chrono_duration(cooldown), cooldown, ..open });
            }
            _ => {
                tracing::info!(paused_since = %open.since, "the CRM answers again: delivery resumed (circuit closed)");
                *inner = Inner::default();
            }
        }
    }

    pub fn status(&self) -> Status {
        let inner = self.inner();
        Status {
            circuit: if inner.open.is_some() { "open" } else { "closed" },
            consecutive_failures: inner.consecutive_failures,
            open_since: inner.open.map(|o| o.since),
            next_probe_at: inner.open.map(|o| o.probe_at),
        }
    }
}

fn chrono_duration(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn down() -> CrmError {
        CrmError::Transient { status: Some(503), message: "down".into(), retry_after: None }
    }

    #[test]
    fn opens_after_the_threshold_probes_after_the_cooldown_and_backs_off() {
        let breaker = Breaker::default();
        let t0 = Utc::now();
        for _ in 0..THRESHOLD - 1 {
            breaker.observe(Err(&down()));
        }
        assert!(!breaker.settle(t0), "one failure short of the threshold");
        breaker.observe(Err(&down()));
        assert!(breaker.settle(t0));
        assert_eq!(breaker.gate(t0), Gate::Open);
        let after = t0 + chrono_duration(COOLDOWN);
        assert_eq!(breaker.gate(after), Gate::Probe);
        breaker.probed(after, Err(&down()));
        assert_eq!(breaker.gate(after + chrono_duration(COOLDOWN)), Gate::Open, "the second pause is twice as long");
        assert_eq!(breaker.gate(after + chrono_duration(COOLDOWN * 2)), Gate::Probe);
        breaker.probed(after, Ok(()));
        assert_eq!((breaker.gate(after), breaker.status().circuit), (Gate::Closed, "closed"));
    }

    #[test]
    fn answers_of_a_live_crm_restart_the_count() {
        let breaker = Breaker::default();
        let limited = CrmError::Transient { status: Some(429), message: "slow down".into(), retry_after: None };
        for _ in 0..THRESHOLD * 2 {
            breaker.observe(Err(&down()));
            breaker.observe(Err(&limited));
        }
        assert!(!breaker.tripped());
        assert!(is_outage(&CrmError::Transient { status: None, message: "timeout".into(), retry_after: None }));
    }
}
