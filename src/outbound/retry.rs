//! When to try a failed delivery again: a configured schedule (`CRM_RETRY_SCHEDULE`), with jitter so
//! that many records failing together do not retry together, and never sooner than TreadSoft's
//! `Retry-After`.

use crate::crm::rate_limit::parse_duration;
use std::time::Duration;

/// The delays between attempts; after the last one a delivery is dead-lettered (`failed`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule(pub Vec<Duration>);

impl Default for RetrySchedule {
    fn default() -> Self {
        Self::parse("10s,1m,5m,30m,2h,5h,10h,10h").unwrap_or_else(|_| unreachable!("the default schedule parses"))
    }
}

impl RetrySchedule {
    /// Parses `10s,1m,5m,30m,2h,5h,10h,10h`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let delays: Option<Vec<Duration>> = text.split(',').map(|d| parse_duration(d.trim())).collect();
        match delays {
            Some(delays) if !delays.is_empty() => Ok(Self(delays)),
            _ => Err(format!("expected delays such as 10s,1m,5m,30m,2h, got {text:?}")),
        }
    }

    /// The wait before attempt `attempts + 1`, after `attempts` failed ones; `None` when the
    /// schedule is used up.
    pub fn delay(&self, attempts: u32, retry_after: Option<Duration>) -> Option<Duration> {
        let base = *self.0.get(usize::try_from(attempts).ok()?.checked_sub(1)?)?;
        // ±10 % jitter.
        let jittered = base.mul_f64(0.9 + fastrand::f64() * 0.2);
        Some(retry_after.map_or(jittered, |after| jittered.max(after)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_follow_the_schedule_with_jitter_and_run_out() {
        let schedule = RetrySchedule::parse("10s,1m").unwrap();
        let first = schedule.delay(1, None).unwrap();
        assert!(first >= Duration::from_secs(9) && first <= Duration::from_secs(11), "{first:?}");
        let second = schedule.delay(2, None).unwrap();
        assert!(second >= Duration::from_secs(54) && second <= Duration::from_secs(66));
        assert_eq!(schedule.delay(3, None), None);
    }

    #[test]
    fn retry_after_is_a_floor() {
        let schedule = RetrySchedule::parse("1s").unwrap();
        assert_eq!(schedule.delay(1, Some(Duration::from_secs(30))), Some(Duration::from_secs(30)));
    }

    #[test]
    fn the_default_has_eight_retries() {
        assert_eq!(RetrySchedule::default().0.len(), 8);
        assert!(RetrySchedule::parse("").is_err());
        assert!(RetrySchedule::parse("10s,soon").is_err());
    }
}
