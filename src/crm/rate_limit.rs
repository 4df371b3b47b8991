//! Keeps the whole process under TreadSoft's limit (100 requests per 10 s per key), whatever
//! work is calling. A GCRA limiter (`governor`) with a small burst: with `b` of the `n` requests
//! allowed as a burst and the rest spread evenly over the period, no window of that length ever
//! holds more than `n`.

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::time::Duration;

/// `N` requests per `period`, as in `CRM_RATE_LIMIT=100/10s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub requests: u32,
    pub period: Duration,
}

impl RateLimit {
    /// Parses `100/10s`, `5/1s`, `600/1m`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("expected REQUESTS/PERIOD such as 100/10s, got {text:?}");
        let (requests, period) = text.trim().split_once('/').ok_or_else(bad)?;
        let requests: u32 = requests.trim().parse().ok().filter(|n| *n > 0).ok_or_else(bad)?;
        let period = parse_duration(period.trim()).filter(|d| !d.is_zero()).ok_or_else(bad)?;
        Ok(Self { requests, period })
    }

    /// A limiter that never lets more than `requests` through in any `period`.
    pub fn limiter(self) -> DefaultDirectRateLimiter {
        let burst = (self.requests / 10).max(1);
        let steady = (self.requests - burst).max(1);
        let interval = self.period / steady;
        let quota = Quota::with_period(interval.max(Duration::from_nanos(1)))
            .unwrap_or_else(|| unreachable!("the interval is above zero"))
            .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
        RateLimiter::direct(quota)
    }
}

/// `10s`, `500ms`, `1m`, `2h`, or bare seconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    match unit {
        "" | "s" => Some(Duration::from_secs(n)),
        "ms" => Some(Duration::from_millis(n)),
        "m" => Some(Duration::from_secs(n * 60)),
        "h" => Some(Duration::from_secs(n * 3600)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse() {
        assert_eq!(RateLimit::parse("100/10s"), Ok(RateLimit { requests: 100, period: Duration::from_secs(10) }));
        assert_eq!(RateLimit::parse("600/1m").unwrap().period, Duration::from_secs(60));
        assert!(RateLimit::parse("100").is_err());
        assert!(RateLimit::parse("0/10s").is_err());
        assert!(RateLimit::parse("100/10x").is_err());
    }

    #[test]
    fn the_burst_is_a_tenth_and_the_rest_is_spread() {
        let limiter = RateLimit::parse("100/10s").unwrap().limiter();
        let allowed = (0..100).filter(|_| limiter.check().is_ok()).count();
        assert_eq!(allowed, 10, "only the burst passes at once");
    }
}
