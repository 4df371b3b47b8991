//! Last-writer-wins, decided per field. Pure: no I/O.
//!
//! A field's value carries the stamp of the change that wrote it. An incoming value replaces the
//! stored one only if its stamp is newer:
//! - two TreadSoft stamps of one record compare by `version` (TreadSoft's own order of its changes);
//! - otherwise stamps compare by (milliseconds, counter);
//! - ties go, whatever the arrival order, to the configured source (default: the CRM), then to the
//!   larger event id. (Deletes beat updates on a tie: see [`deleted_after`].)

use super::hlc::Stamp;
use std::cmp::Ordering;

/// Which side wrote a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Crm,
    Local,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Crm => "crm",
            Self::Local => "local",
        }
    }

    pub fn parse(s: &str) -> Self {
        if s == "crm" { Self::Crm } else { Self::Local }
    }
}

/// The stamp of one write of one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub stamp: Stamp,
    pub origin: Origin,
    pub event_id: String,
}

/// Orders two stamps by their clocks alone: TreadSoft's `version` between two TreadSoft stamps,
/// (milliseconds, counter) otherwise.
fn by_clock(a: &Version, b: &Version) -> Ordering {
    if a.origin == Origin::Crm && b.origin == Origin::Crm {
        a.stamp.seq.cmp(&b.stamp.seq).then(a.stamp.ms.cmp(&b.stamp.ms))
    } else {
        a.stamp.cmp(&b.stamp)
    }
}

/// Orders two versions of the same field; `precedence` wins ties between the two origins.
pub fn compare(a: &Version, b: &Version, precedence: Origin) -> Ordering {
    by_clock(a, b)
        .then_with(|| match (a.origin, b.origin) {
            (x, y) if x == y => Ordering::Equal,
            (x, _) if x == precedence => Ordering::Greater,
            _ => Ordering::Less,
        })
        .then_with(|| a.event_id.cmp(&b.event_id))
}

/// Whether `incoming` replaces `stored`.
pub fn wins(incoming: &Version, stored: Option<&Version>, precedence: Origin) -> bool {
    stored.is_none_or(|stored| compare(incoming, stored, precedence) == Ordering::Greater)
}

/// Whether a change stamped `change` is dropped by a delete stamped `delete`: at or before it
/// (a tie goes to the delete).
pub fn deleted_after(change: &Version, delete: &Version) -> bool {
    by_clock(change, delete) != Ordering::Greater
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(ms: i64, seq: i64, origin: Origin, id: &str) -> Version {
        Version { stamp: Stamp { ms, seq }, origin, event_id: id.to_owned() }
    }

    #[test]
    fn newer_wins_older_loses() {
        let old = v(1_000, 0, Origin::Local, "a");
        let new = v(2_000, 0, Origin::Crm, "b");
        assert!(wins(&new, Some(&old), Origin::Crm));
        assert!(!wins(&old, Some(&new), Origin::Crm));
        assert!(wins(&old, None, Origin::Crm), "a field never stamped takes any value");
    }

    #[test]
    fn crm_versions_order_changes_of_one_record_even_against_its_clock() {
        let v7 = v(2_000, 7, Origin::Crm, "e7");
        let v8_clock_behind = v(1_999, 8, Origin::Crm, "e8");
        assert!(wins(&v8_clock_behind, Some(&v7), Origin::Crm));
        assert!(!wins(&v7, Some(&v8_clock_behind), Origin::Crm));
    }

    #[test]
    fn ties_go_to_the_configured_source_then_the_larger_event_id_in_any_order() {
        let crm = v(1_000, 0, Origin::Crm, "a");
        let local = v(1_000, 0, Origin::Local, "z");
        assert!(wins(&crm, Some(&local), Origin::Crm) && !wins(&local, Some(&crm), Origin::Crm));
        assert!(wins(&local, Some(&crm), Origin::Local) && !wins(&crm, Some(&local), Origin::Local));
        let (x, y) = (v(1_000, 3, Origin::Crm, "evt_a"), v(1_000, 3, Origin::Crm, "evt_b"));
        assert!(wins(&y, Some(&x), Origin::Crm) && !wins(&x, Some(&y), Origin::Crm));
    }

    #[test]
    fn a_delete_drops_changes_at_or_before_it() {
        let delete = v(5_000, 9, Origin::Crm, "del");
        assert!(deleted_after(&v(5_000, 9, Origin::Crm, "zzz"), &delete), "tie: delete wins");
        assert!(deleted_after(&v(4_000, 8, Origin::Crm, "u"), &delete));
        assert!(!deleted_after(&v(6_000, 10, Origin::Crm, "u"), &delete));
    }
}
