//! The consistency audit: every record of both sides compared, field by field, from TreadSoft's
//! listings (a page of 200 per call, not one `GET` per record) and the local tables.
//!
//! It reports records only on one side, links that point at a record TreadSoft no longer has
//! (confirmed by a `GET` answering 404: a listing holds live records only), records deleted here
//! but live there, two local records linked to one TreadSoft record, and each differing field
//! with both values and both stamps. Records with a change still on its way to TreadSoft (an
//! undelivered or dead-lettered outbox row) are counted as pending, not compared: the outbox is
//! already about to make them equal, or lists why it cannot.
//!
//! With `fix`, each difference is resolved by the last-writer-wins rules: where TreadSoft's
//! stamp is newer (and for records only there) its record is applied as an import; where the
//! local stamp is newer (and for records only here, or deleted here) a delivery is queued.
//! Links to records TreadSoft answers 404 for are deleted here, as their webhook would have
//! done, unless that is more than half of a type's links (a wrong `CRM_API_URL` or account
//! looks like that): those are left for a person, as are duplicate links.

use super::import::{self, Importer, Progress};
use crate::crm::{CrmError, CrmRecord};
use crate::outbound::outbox::{self, Operation};
use crate::sync::hlc::Stamp;
use crate::sync::inbox::{EventResult, Incoming, Outcome};
use crate::sync::lww::{self, Origin, Version};
use crate::sync::mapping::{Mapped, RecordType, crm_to_local};
use crate::sync::records::{self, Local};
use crate::sync::stamps;
use chrono::{DateTime, Utc};
use entity::crm_audits;
use sea_orm::{ActiveModelTrait, DbErr, EntityTrait, NotSet, QueryOrder, Set};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// How many of each kind of difference an audit found, and what `--fix` did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    /// Linked records compared field by field.
    pub compared: u64,
    pub matching: u64,
    pub differing_records: u64,
    pub differing_fields: u64,
    pub only_in_crm: u64,
    pub only_local: u64,
    /// Local links to a record TreadSoft answers 404 for.
    pub missing_in_crm: u64,
    pub deleted_here_live_there: u64,
    /// TreadSoft records that two or more local records link to.
    pub duplicate_links: u64,
    /// Records with a change on its way to TreadSoft: not compared.
    pub pending: u64,
    /// Differences `--fix` resolved (applied here or queued for TreadSoft).
    pub fixed: u64,
    /// Differences left for a person.
    pub left: u64,
}

impl Counts {
    /// Every difference found (pending records aside).
    pub fn differences(&self) -> u64 {
        self.differing_records
            + self.only_in_crm
            + self.only_local
            + self.missing_in_crm
            + self.deleted_here_live_there
            + self.duplicate_links
    }

    fn add(&mut self, other: &Counts) {
        self.compared += other.compared;
        self.matching += other.matching;
        self.differing_records += other.differing_records;
        self.differing_fields += other.differing_fields;
        self.only_in_crm += other.only_in_crm;
        self.only_local += other.only_local;
        self.missing_in_crm += other.missing_in_crm;
        self.deleted_here_live_there += other.deleted_here_live_there;
        self.duplicate_links += other.duplicate_links;
        self.pending += other.pending;
        self.fixed += other.fixed;
        self.left += other.left;
    }
}

/// A stamp as the report shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StampView {
    pub at: Option<DateTime<Utc>>,
    /// TreadSoft's `version` for TreadSoft stamps; the clock's counter for local ones.
    pub seq: i64,
    pub origin: &'static str,
}

impl From<&Version> for StampView {
    fn from(v: &Version) -> Self {
        Self { at: DateTime::from_timestamp_millis(v.stamp.ms), seq: v.stamp.seq, origin: v.origin.as_str() }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FieldDiff {
    /// The local field (`name`, `price_per_night`, ...).
    pub field: &'static str,
    /// The local value.
    pub local: Value,
    pub local_stamp: StampView,
    /// TreadSoft's value, as it would be stored here (references as local ids where linked).
    pub crm: Value,
    pub crm_stamp: StampView,
    /// Whose value the last-writer-wins rules keep: `crm` or `local`.
    pub newer: &'static str,
}

/// One difference.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Item {
    Differs {
        #[serde(rename = "recordType")]
        record_type: &'static str,
        id: String,
        #[serde(rename = "crmId")]
        crm_id: String,
        fields: Vec<FieldDiff>,
    },
    OnlyInCrm {
        #[serde(rename = "recordType")]
        record_type: &'static str,
        #[serde(rename = "crmId")]
        crm_id: String,
        #[serde(rename = "externalId")]
        external_id: Option<String>,
    },
    OnlyLocal {
        #[serde(rename = "recordType")]
        record_type: &'static str,
        id: String,
    },
    MissingInCrm {
        #[serde(rename = "recordType")]
        record_type: &'static str,
        id: String,
        #[serde(rename = "crmId")]
        crm_id: String,
        /// TreadSoft answered 404 for it; `false`: not asked, the listing lacked too many.
        confirmed: bool,
    },
    DeletedHereLiveThere {
        #[serde(rename = "recordType")]
        record_type: &'static str,
        id: String,
        #[serde(rename = "crmId")]
        crm_id: String,
    },
    DuplicateLink {
        #[serde(rename = "recordType")]
        record_type: &'static str,
        #[serde(rename = "crmId")]
        crm_id: String,
        ids: Vec<String>,
    },
}

/// What `--fix` did about one difference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Fix {
    pub record_type: &'static str,
    pub id: Option<String>,
    pub crm_id: Option<String>,
    /// What was done (or why nothing was).
    pub action: String,
    /// Whether it was done (`false`: left for a person).
    pub done: bool,
}

/// An audit's whole answer.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub fix: bool,
    pub record_types: Vec<&'static str>,
    pub counts: Counts,
    pub by_type: BTreeMap<&'static str, Counts>,
    pub items: Vec<Item>,
    pub fixes: Vec<Fix>,
}

/// The last audit's counts, as the dashboard shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LastAudit {
    pub finished_at: DateTime<Utc>,
    pub fixed: bool,
    pub record_types: String,
    pub counts: Counts,
    pub differences: u64,
}

/// The last audit recorded, if any.
pub async fn last(c: &impl sea_orm::ConnectionTrait) -> Result<Option<LastAudit>, DbErr> {
    let row = crm_audits::Entity::find().order_by_desc(crm_audits::Column::Id).one(c).await?;
    Ok(row.map(|row| {
        let counts: Counts = serde_json::from_str(&row.counts).unwrap_or_default();
        LastAudit {
            finished_at: row.finished_at,
            fixed: row.fixed,
            record_types: row.record_types,
            differences: counts.differences(),
            counts,
        }
    }))
}

/// Compares `types` (in parent-first order), mends what `fix` allows, records the counts.
pub async fn run(
    importer: &Importer,
    types: &[RecordType],
    fix: bool,
    progress: &dyn Progress,
) -> Result<Report, import::PassError> {
    let started_at = Utc::now();
    let mut report = Report {
        started_at,
        finished_at: started_at,
        fix,
        record_types: types.iter().map(|t| t.as_str()).collect(),
        counts: Counts::default(),
        by_type: BTreeMap::new(),
        items: Vec::new(),
        fixes: Vec::new(),
    };
    // Each linked record's local id by TreadSoft id, per type: references compare as local ids.
    let mut links: HashMap<RecordType, HashMap<String, Value>> = HashMap::new();
    for &t in types {
        let counts = audit_type(importer, t, fix, &mut links, &mut report, progress).await?;
        report.counts.add(&counts);
        report.by_type.insert(t.as_str(), counts);
    }
    report.finished_at = Utc::now();
    let row = crm_audits::ActiveModel {
        id: NotSet,
        started_at: Set(report.started_at),
        finished_at: Set(report.finished_at),
        fixed: Set(fix),
        record_types: Set(report.record_types.join(",")),
        counts: Set(serde_json::to_string(&report.counts).unwrap_or_default()),
    };
    importer.writer.run(move |txn| Box::pin(async move { row.insert(txn).await.map(|_| ()) })).await?;
    Ok(report)
}

/// The records of `t` as the audit sees them: every local one, and the live TreadSoft ones.
struct Sides {
    locals: Vec<Local>,
    crm: Vec<CrmRecord>,
    /// Local records with a delivery not done (pending, in flight, dead-lettered).
    undelivered: HashSet<String>,
}

async fn load(importer: &Importer, t: RecordType, progress: &dyn Progress) -> Result<Sides, import::PassError> {
    let reader = importer.db.reader();
    let locals = records::all(reader, t).await?;
    let undelivered = outbox::undelivered_ids(reader, t).await?;
    let mut crm = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = importer.fetch(t, DateTime::UNIX_EPOCH, cursor.as_deref(), progress).await?;
        let last = page.data.is_empty();
        crm.extend(page.data);
        match page.next_cursor {
            Some(next) if !last => cursor = Some(next),
            _ => break,
        }
    }
    // A record changed while the listing was read comes twice (before and after): its latest.
    crm.sort_by(|a: &CrmRecord, b: &CrmRecord| a.id.cmp(&b.id).then(b.version.cmp(&a.version)));
    crm.dedup_by(|later, first| later.id == first.id);
    Ok(Sides { locals, crm, undelivered })
}

/// The local records of a type that are synced: every one, except users who are guests of the
/// site (only owners are sent) and have never been linked.
fn synced_here(t: RecordType, local: &Local) -> bool {
    t != RecordType::Contact
        || local.crm_id().is_some()
        || local.values.get("role").and_then(Value::as_str) == Some("owner")
}

/// Whether `field` of `local` is synced: not the role of an admin (admins are not synced).
fn synced_field(t: RecordType, local: &Local, field: &str) -> bool {
    !(t == RecordType::Contact && field == "role" && local.values.get("role").and_then(Value::as_str) == Some("admin"))
}

async fn audit_type(
    importer: &Importer,
    t: RecordType,
    fix: bool,
    links: &mut HashMap<RecordType, HashMap<String, Value>>,
    report: &mut Report,
    progress: &dyn Progress,
) -> Result<Counts, import::PassError> {
    let mut counts = Counts::default();
    let run = report.started_at.timestamp_millis();
    let mut sides = load(importer, t, progress).await?;
    for field in t.fields() {
        if let crate::sync::mapping::Kind::Ref(target) | crate::sync::mapping::Kind::OptRef(target) = field.kind
            && !links.contains_key(&target)
        {
            let parents = records::all(importer.db.reader(), target).await?;
            links.insert(target, link_map(&parents));
        }
    }
    links.insert(t, link_map(&sides.locals));

    let mut by_crm: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, local) in sides.locals.iter().enumerate() {
        if let Some(crm_id) = local.crm_id() {
            by_crm.entry(crm_id).or_default().push(i);
        }
    }
    let listed: HashSet<&str> = sides.crm.iter().map(|r| r.id.as_str()).collect();
    // Links to records the listing does not hold. When that is more than half of the type's
    // links, or the listing is empty, TreadSoft is more likely the wrong account or URL than
    // missing them all: they are reported unconfirmed and never deleted. Otherwise each is asked
    // for (a 404 confirms it is gone; a record listed late by a race comes back and is compared).
    let linked_live = by_crm.values().filter(|l| l.len() == 1 && !sides.locals[l[0]].is_deleted()).count();
    let unlisted: Vec<usize> = by_crm
        .iter()
        .filter_map(|(crm_id, locals)| match locals.as_slice() {
            &[i] if !listed.contains(crm_id)
                && !sides.locals[i].is_deleted()
                && !sides.undelivered.contains(&sides.locals[i].id) =>
            {
                Some(i)
            }
            _ => None,
        })
        .collect();
    let implausible = !unlisted.is_empty() && (sides.crm.is_empty() || unlisted.len() * 2 > linked_live);
    let mut missing: Vec<(usize, bool)> = Vec::new();
    let mut late: Vec<CrmRecord> = Vec::new();
    for &i in &unlisted {
        if implausible {
            missing.push((i, false));
            continue;
        }
        let crm_id = sides.locals[i].crm_id().unwrap_or_default().to_owned();
        match importer.patiently(t, progress, || importer.crm.get(t, &crm_id)).await {
            Ok(record) => late.push(record),
            Err(import::PassError::Crm { source: CrmError::NotFound { .. }, .. }) => missing.push((i, true)),
            Err(e) => return Err(e),
        }
    }
    sides.crm.extend(late);

    let keys: Vec<stamps::Key> = by_crm.values().flatten().map(|&i| (t, sides.locals[i].id.clone())).collect();
    let stored = stamps::field_versions_of(importer.db.reader(), &keys).await?;
    let precedence = importer.sync.precedence;
    // Deleted here, live there: a delete that came from TreadSoft (a webhook, an audit's 404)
    // left a tombstone of TreadSoft's; such a record is not deleted there again by a fix.
    let deleted_linked: Vec<stamps::Key> = by_crm
        .iter()
        .filter(|(_, l)| l.len() == 1 && sides.locals[l[0]].is_deleted())
        .map(|(crm_id, _)| (t, (*crm_id).to_owned()))
        .collect();
    let tombstones = stamps::tombstones_of(importer.db.reader(), &deleted_linked).await?;
    let mut apply_crm: Vec<&CrmRecord> = Vec::new();
    let mut queue: Vec<(String, Operation, Option<Vec<&'static str>>)> = Vec::new();

    for record in &sides.crm {
        let linked = by_crm.get(record.id.as_str()).map(Vec::as_slice).unwrap_or_default();
        match linked {
            [] => {
                counts.only_in_crm += 1;
                report.items.push(Item::OnlyInCrm {
                    record_type: t.as_str(),
                    crm_id: record.id.clone(),
                    external_id: record.external_id.clone(),
                });
                apply_crm.push(record);
            }
            [i] => {
                let local = &sides.locals[*i];
                if sides.undelivered.contains(&local.id) {
                    counts.pending += 1;
                } else if local.is_deleted() {
                    counts.deleted_here_live_there += 1;
                    report.items.push(Item::DeletedHereLiveThere {
                        record_type: t.as_str(),
                        id: local.id.clone(),
                        crm_id: record.id.clone(),
                    });
                    let from_treadsoft =
                        tombstones.get(&(t, record.id.clone())).is_some_and(|v| v.origin == Origin::Crm);
                    if !from_treadsoft {
                        queue.push((local.id.clone(), Operation::Delete, None));
                    } else if fix {
                        counts.left += 1;
                        report.fixes.push(Fix {
                            record_type: t.as_str(),
                            id: Some(local.id.clone()),
                            crm_id: Some(record.id.clone()),
                            action: "left for a person: deleted here because TreadSoft said so (a webhook or an \
                                     audit's 404), yet TreadSoft lists it; delete it there, or restore it here"
                                .into(),
                            done: false,
                        });
                    }
                } else {
                    counts.compared += 1;
                    let fields = compare(run, t, local, record, stored.get(&(t, local.id.clone())), links, precedence);
                    if fields.is_empty() {
                        counts.matching += 1;
                        continue;
                    }
                    counts.differing_records += 1;
                    counts.differing_fields += fields.len() as u64;
                    if fields.iter().any(|f| f.newer == "crm") {
                        apply_crm.push(record);
                    }
                    let ours: Vec<&'static str> =
                        fields.iter().filter(|f| f.newer == "local").map(|f| f.field).collect();
                    if !ours.is_empty() {
                        queue.push((local.id.clone(), Operation::Upsert, Some(ours)));
                    }
                    report.items.push(Item::Differs {
                        record_type: t.as_str(),
                        id: local.id.clone(),
                        crm_id: record.id.clone(),
                        fields,
                    });
                }
            }
            several => {
                counts.duplicate_links += 1;
                let ids: Vec<String> = several.iter().map(|&i| sides.locals[i].id.clone()).collect();
                report.items.push(Item::DuplicateLink { record_type: t.as_str(), crm_id: record.id.clone(), ids });
                if fix {
                    counts.left += 1;
                    report.fixes.push(Fix {
                        record_type: t.as_str(),
                        id: None,
                        crm_id: Some(record.id.clone()),
                        action: "left for a person: several local records link to this record; unlink all but one \
                                 (set crm_id to null), then audit again"
                            .into(),
                        done: false,
                    });
                }
            }
        }
    }
    for local in &sides.locals {
        if local.crm_id().is_none() && !local.is_deleted() && synced_here(t, local) {
            if sides.undelivered.contains(&local.id) {
                counts.pending += 1;
            } else {
                counts.only_local += 1;
                report.items.push(Item::OnlyLocal { record_type: t.as_str(), id: local.id.clone() });
                queue.push((local.id.clone(), Operation::Upsert, None));
            }
        }
    }
    for &(i, confirmed) in &missing {
        let local = &sides.locals[i];
        counts.missing_in_crm += 1;
        report.items.push(Item::MissingInCrm {
            record_type: t.as_str(),
            id: local.id.clone(),
            crm_id: local.crm_id().unwrap_or_default().to_owned(),
            confirmed,
        });
    }

    if !fix {
        return Ok(counts);
    }
    fix_crm_side(importer, t, &apply_crm, report, &mut counts).await?;
    fix_local_side(importer, t, queue, report, &mut counts).await?;
    let gone: Vec<(String, String, i64)> = missing
        .iter()
        .filter(|(_, confirmed)| *confirmed)
        .map(|&(i, _)| {
            let local = &sides.locals[i];
            // After every TreadSoft version of it seen here.
            let seen = stored.get(&(t, local.id.clone())).into_iter().flat_map(|f| f.values());
            let last = seen.filter(|v| v.origin == Origin::Crm).map(|v| v.stamp.seq).max().unwrap_or(0);
            (local.id.clone(), local.crm_id().unwrap_or_default().to_owned(), last + 1)
        })
        .collect();
    fix_missing(importer, t, gone, report, &mut counts).await?;
    for &(i, _) in missing.iter().filter(|(_, confirmed)| !confirmed) {
        counts.left += 1;
        report.fixes.push(Fix {
            record_type: t.as_str(),
            id: Some(sides.locals[i].id.clone()),
            crm_id: sides.locals[i].crm_id().map(str::to_owned),
            action: format!(
                "left for a person: TreadSoft's listing lacks {} of {linked_live} linked {}s; check CRM_API_URL and \
                 the account, then audit again",
                unlisted.len(),
                t.as_str()
            ),
            done: false,
        });
    }
    Ok(counts)
}

/// TreadSoft id → the local id (as the models serialize it) of each linked record, deleted ones
/// too (a reference to a record deleted here still names it).
fn link_map(locals: &[Local]) -> HashMap<String, Value> {
    locals.iter().filter_map(|l| Some((l.crm_id()?.to_owned(), l.values.get("id")?.clone()))).collect()
}

/// The event id a fix applies TreadSoft's record under: new for each audit (so it is applied
/// even where the import applied that version before), and, beginning with the import's own id,
/// it wins the tie against a stamp of the same TreadSoft version (a value changed here past the
/// gateway, its stamp still claiming that version: TreadSoft's value is restored). The compare
/// uses the same id, so it predicts what the fix does.
fn fix_event_id(run: i64, t: RecordType, record: &CrmRecord) -> String {
    format!("import:{}:{}:v{}:audit-{run}", t.as_str(), record.id, record.version)
}

/// The fields of `local` whose value differs from TreadSoft's, with both stamps.
fn compare(
    run: i64,
    t: RecordType,
    local: &Local,
    record: &CrmRecord,
    stored: Option<&HashMap<String, Version>>,
    links: &HashMap<RecordType, HashMap<String, Value>>,
    precedence: Origin,
) -> Vec<FieldDiff> {
    let crm_version = Version {
        stamp: Stamp { ms: record.updated_at.map_or(0, |at| at.timestamp_millis()), seq: record.version },
        origin: Origin::Crm,
        event_id: fix_event_id(run, t, record),
    };
    let fallback =
        Version { stamp: Stamp { ms: local.updated_at_ms(), seq: 0 }, origin: Origin::Local, event_id: String::new() };
    let mut out = Vec::new();
    for field in t.fields() {
        if record.partial && !field.crm.iter().any(|name| record.fields.contains_key(*name)) {
            continue; // the CRM holds no value for it: nothing to compare
        }
        let theirs = match crm_to_local(field, &record.fields) {
            Ok(Mapped::Value(value)) => value,
            Ok(Mapped::Ref { crm_id: None, .. }) => Value::Null,
            Ok(Mapped::Ref { target, crm_id: Some(crm_id), .. }) => links
                .get(&target)
                .and_then(|m| m.get(&crm_id))
                .cloned()
                .unwrap_or_else(|| json!({ "crmId": crm_id, "linked": false })),
            Err(e) => json!({ "unreadable": e.to_string() }),
        };
        let ours = local.values.get(field.local).cloned().unwrap_or(Value::Null);
        if ours == theirs || !synced_field(t, local, field.local) {
            continue;
        }
        let local_version = stored.and_then(|s| s.get(field.local)).unwrap_or(&fallback);
        // As the apply decides: the precedence (SYNC_TIE_WINNER) breaks exact ties.
        let newer = if lww::wins(&crm_version, Some(local_version), precedence) { "crm" } else { "local" };
        out.push(FieldDiff {
            field: field.local,
            local: ours,
            local_stamp: local_version.into(),
            crm: theirs,
            crm_stamp: (&crm_version).into(),
            newer,
        });
    }
    out
}

/// Applies TreadSoft's records as an import, a page at a time, under the audit's own event ids
/// (so a version applied before, or listed before, is compared again rather than skipped).
async fn fix_crm_side(
    importer: &Importer,
    t: RecordType,
    records: &[&CrmRecord],
    report: &mut Report,
    counts: &mut Counts,
) -> Result<(), import::PassError> {
    let run = report.started_at.timestamp_millis();
    for chunk in records.chunks(import::PAGE_SIZE as usize) {
        let events: Vec<Value> = chunk.iter().map(|r| import::event_with_id(t, r, fix_event_id(run, t, r))).collect();
        let incoming = Incoming { delivery_id: format!("audit-{run}-{}", t.as_str()), events: Arc::new(events) };
        let results = importer.apply_events(incoming).await?;
        for (record, result) in chunk.iter().zip(results) {
            let done = matches!(result.outcome, Outcome::Applied | Outcome::Echo);
            if done {
                counts.fixed += 1;
            } else {
                counts.left += 1;
            }
            report.fixes.push(Fix {
                record_type: t.as_str(),
                id: None,
                crm_id: Some(record.id.clone()),
                action: describe(&result),
                done,
            });
        }
    }
    Ok(())
}

fn describe(result: &EventResult) -> String {
    let what = match result.outcome {
        Outcome::Applied if result.created => "created here from TreadSoft's record".to_owned(),
        Outcome::Applied => "applied TreadSoft's newer values here".to_owned(),
        Outcome::Echo | Outcome::Duplicate => "nothing to apply: the values are equal now".to_owned(),
        Outcome::Ignored => "not applied: not synced".to_owned(),
        Outcome::Stale => "kept the local values: they are newer".to_owned(),
        Outcome::Waiting => "waiting: it refers to a record not here yet".to_owned(),
        Outcome::Failed => "could not apply TreadSoft's record".to_owned(),
    };
    match &result.reason {
        Some(reason) if !matches!(result.outcome, Outcome::Applied if result.created) => format!("{what} ({reason})"),
        _ => what,
    }
}

/// Queues deliveries of the local side: the newer fields, records only here, deletes.
async fn fix_local_side(
    importer: &Importer,
    t: RecordType,
    queue: Vec<(String, Operation, Option<Vec<&'static str>>)>,
    report: &mut Report,
    counts: &mut Counts,
) -> Result<(), import::PassError> {
    if queue.is_empty() {
        return Ok(());
    }
    let work = queue.clone();
    importer
        .writer
        .run_retrying(move || {
            let work = work.clone();
            move |txn| {
                Box::pin(async move {
                    for (id, operation, fields) in &work {
                        outbox::enqueue(txn, t, id, *operation, fields.as_deref(), None).await?;
                    }
                    Ok(())
                })
            }
        })
        .await?;
    for (id, operation, fields) in queue {
        counts.fixed += 1;
        let action = match (operation, &fields) {
            (Operation::Delete, _) => "queued the delete in TreadSoft (deleted here)".to_owned(),
            (Operation::Upsert, None) => "queued the record's delivery to TreadSoft (only here)".to_owned(),
            (Operation::Upsert, Some(fields)) => {
                format!("queued the newer local values of {} for TreadSoft", fields.join(", "))
            }
        };
        report.fixes.push(Fix { record_type: t.as_str(), id: Some(id), crm_id: None, action, done: true });
    }
    Ok(())
}

/// Applies TreadSoft's delete of each record it answered 404 for, as its lost webhook would
/// have. The delete's time is not known: it is stamped now, with the version after the last
/// TreadSoft version seen here.
async fn fix_missing(
    importer: &Importer,
    t: RecordType,
    gone: Vec<(String, String, i64)>,
    report: &mut Report,
    counts: &mut Counts,
) -> Result<(), import::PassError> {
    let run = report.started_at.timestamp_millis();
    let now = Utc::now();
    for chunk in gone.chunks(import::PAGE_SIZE as usize) {
        let events: Vec<Value> = chunk
            .iter()
            .map(|(_, crm_id, version)| {
                json!({
                    "id": format!("audit:{run}:{}:{crm_id}:deleted", t.as_str()),
                    "type": format!("{}.deleted", t.as_str()),
                    "changeSource": "import",
                    "object": {
                        "type": t.as_str(), "id": crm_id, "version": version,
                        "updatedAt": now, "deletedAt": now, "data": null,
                    },
                })
            })
            .collect();
        let incoming =
            Incoming { delivery_id: format!("audit-{run}-{}-deletes", t.as_str()), events: Arc::new(events) };
        let results = importer.apply_events(incoming).await?;
        for ((id, crm_id, _), result) in chunk.iter().zip(results) {
            let done = result.outcome == Outcome::Applied;
            if done {
                counts.fixed += 1;
            } else {
                counts.left += 1;
            }
            let mut action = "deleted here: TreadSoft answers 404 for it".to_owned();
            if !done {
                action = format!("not deleted: {}", result.reason.clone().unwrap_or_else(|| "no change".into()));
            }
            report.fixes.push(Fix {
                record_type: t.as_str(),
                id: Some(id.clone()),
                crm_id: Some(crm_id.clone()),
                action,
                done,
            });
        }
    }
    Ok(())
}

/// A record's fields as the report's table shows them: `field: local → TreadSoft`.
pub fn describe_fields(fields: &[FieldDiff]) -> String {
    fields
        .iter()
        .map(|f| {
            let stamp = |s: &StampView| s.at.map(|at| at.format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_default();
            format!(
                "{}: {} ({}) | {} ({}) → {} wins",
                f.field,
                f.local,
                stamp(&f.local_stamp),
                f.crm,
                stamp(&f.crm_stamp),
                if f.newer == "crm" { "TreadSoft" } else { "local" }
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}
