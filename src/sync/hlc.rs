//! A hybrid logical clock for local writes.
//!
//! A stamp is (milliseconds, counter). The clock follows wall time, never runs backwards, and after
//! it has seen a stamp (one it applied from the CRM) every stamp it issues is greater, so an edit
//! made after seeing a CRM change wins over it even when TreadSoft's clock runs ahead of ours.
//! Written here rather than taken from `uhlc`, whose 64-bit NTP stamps and node ids do not match the
//! (updatedAt, version) pairs TreadSoft stamps its changes with.

use std::sync::Mutex;

/// A point on the clock; ordered by milliseconds, then counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Stamp {
    pub ms: i64,
    pub seq: i64,
}

/// The clock. Shared by the whole process.
#[derive(Debug, Default)]
pub struct Hlc {
    last: Mutex<Stamp>,
}

impl Hlc {
    /// A clock that starts past `floor` (e.g. the largest stamp stored in the database).
    pub fn starting_after(floor: Stamp) -> Self {
        Self { last: Mutex::new(floor) }
    }

    /// A new stamp, greater than every stamp issued or observed before.
    pub fn now(&self) -> Stamp {
        self.tick(wall_ms())
    }

    /// Makes every later stamp greater than `seen`.
    pub fn observe(&self, seen: Stamp) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if seen > *last {
            *last = seen;
        }
    }

    fn tick(&self, wall: i64) -> Stamp {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        *last = if wall > last.ms { Stamp { ms: wall, seq: 0 } } else { Stamp { ms: last.ms, seq: last.seq + 1 } };
        *last
    }
}

fn wall_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_only_grow_even_when_the_wall_clock_steps_back() {
        let clock = Hlc::default();
        let a = clock.tick(1_000);
        let b = clock.tick(900);
        let c = clock.tick(900);
        assert!(a < b && b < c);
        assert_eq!(b, Stamp { ms: 1_000, seq: 1 });
    }

    #[test]
    fn a_stamp_issued_after_observing_one_from_the_future_is_greater() {
        let clock = Hlc::default();
        let from_crm = Stamp { ms: wall_ms() + 60_000, seq: 7 };

        clock.observe(from_crm);

        assert!(clock.now() > from_crm);
    }

    #[test]
    fn observing_an_older_stamp_changes_nothing() {
        let clock = Hlc::default();
        let first = clock.tick(5_000);
        clock.observe(Stamp { ms: 10, seq: 99 });
        assert!(clock.tick(4_000) > first);
    }
}
