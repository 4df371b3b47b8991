//! Applying one TreadSoft webhook event to the local tables: last-writer-wins per field,
//! deletes and tombstones, echoes, records that wait for their parent, link-backs and the sync log.
//!
//! The rules read and write a [`View`]: the group's records and sync state in memory, loaded and
//! written with a few set statements for the whole group (see [`super::view`]).

use super::change::{Change as Event, ChangedObject as Object};
use super::hlc::{Hlc, Stamp};
use super::inbox::{Outcome, waiting_key};
use super::log::SyncLog;
use super::lww::{self, Origin, Version};
use super::mapping::{Field, Mapped, NUL_MESSAGE, RecordType, crm_to_local, nul_at};
use super::view::View;
use crate::outbound::outbox;
use chrono::Utc;
use entity::crm_outbox;
use sea_orm::{DatabaseTransaction, DbErr, NotSet, Set};
use serde_json::{Map, Value};

/// What the apply rules need besides the database.
#[derive(Debug)]
pub struct SyncContext {
    /// Which side wins a tie between a CRM change and a local one.
    pub precedence: Origin,
    /// The clock local writes are stamped with; it observes every stamp applied here.
    pub hlc: Hlc,
}

/// The decision for one event, before it is written to the inbox.
#[derive(Debug)]
pub(super) struct Decision {
    pub(super) outcome: Outcome,
    pub(super) reason: Option<String>,
    pub(super) waiting_for: Option<String>,
    /// A TreadSoft record that now has a local record: events waiting for it can go ahead.
    pub(super) linked: Option<(RecordType, String)>,
    /// The event created the local record.
    pub(super) created: bool,
}

impl Decision {
    pub(super) fn new(outcome: Outcome, reason: impl Into<String>) -> Self {
        Self { outcome, reason: Some(reason.into()), waiting_for: None, linked: None, created: false }
    }

    fn applied(linked: Option<(RecordType, String)>) -> Self {
        Self { outcome: Outcome::Applied, reason: None, waiting_for: None, linked, created: false }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Action {
    Created,
    Updated,
    Deleted,
}

/// How the local record was found (its slot in the view).
enum Found {
    ByCrmId(usize),
    /// By `externalId` or (contacts) by email: not linked to this TreadSoft record yet.
    Unlinked(usize, bool),
    Nothing,
}

type Txn<'v, 'c> = &'v mut View<'c, DatabaseTransaction>;

pub(super) async fn apply_event(v: Txn<'_, '_>, ctx: &SyncContext, raw: &Value) -> Result<Decision, DbErr> {
    if let Some(path) = nul_at(raw) {
        return Ok(Decision::new(Outcome::Failed, format!("{path}: {NUL_MESSAGE}")));
    }
    let event: Event = match serde_json::from_value(raw.clone()) {
        Ok(event) => event,
        Err(e) => return Ok(Decision::new(Outcome::Failed, format!("not a valid event: {e}"))),
    };
    let Some((type_name, action)) = event.event_type.split_once('.') else {
        return Ok(Decision::new(Outcome::Failed, format!("unknown event type {:?}", event.event_type)));
    };
    if action == "ignored" {
        return Ok(Decision::new(Outcome::Ignored, event.reason.clone().unwrap_or_else(|| "not synced".into())));
    }
    let Some(t) = RecordType::parse(type_name).filter(|_| event.object.object_type == type_name) else {
        return Ok(Decision::new(Outcome::Failed, format!("unknown record type in {:?}", event.event_type)));
    };
    if action == "merged" {
        return merge(v, ctx, t, &event, raw).await;
    }
    let action = match action {
        // `imported`: a record read from a listing (the import and reconciliation), applied as a
        // creation is, every field compared.
        "created" | "imported" => Action::Created,
        "updated" => Action::Updated,
        "deleted" => Action::Deleted,
        other => return Ok(Decision::new(Outcome::Failed, format!("unknown action {other:?}"))),
    };
    let object = &event.object;
    let version = Version {
        stamp: Stamp { ms: object.updated_at.timestamp_millis(), seq: object.version },
        origin: Origin::Crm,
        event_id: event.id.clone(),
    };
    let tombstone = v.tombstone(t, &object.id).await?;
    let found = match locate(v, t, object).await? {
        Ok(found) => found,
        Err(conflict) => return Ok(Decision::new(Outcome::Failed, conflict)),
    };

    if action == Action::Deleted {
        return delete(v, ctx, t, object, &version, tombstone, found, raw).await;
    }
    if let Some(tombstone) = &tombstone {
        let why = if lww::deleted_after(&version, tombstone) { "a later delete" } else { "a delete" };
        return Ok(Decision::new(Outcome::Stale, format!("the record was deleted in TreadSoft ({why} wins)")));
    }
    let Some(data) = &object.data else {
        return Ok(Decision::new(Outcome::Failed, "object.data is missing"));
    };

    let (i, linking, link_back) = match found {
        Found::Nothing if event.partial => {
            // Fields the CRM holds no value for take their defaults in a record made here.
            let mut filled = data.clone();
            for (field, value) in &event.defaults {
                filled.entry(field.clone()).or_insert_with(|| value.clone());
            }
            return create(v, ctx, t, object, &filled, &version, raw).await;
        }
        Found::Nothing if event.needs_record => {
            // Too little to make a record: it waits for the record to be linked here. (The lock:
            // the release of waiting events takes it too, so one of the two sees the other.)
            let key = waiting_key(t, &object.id);
            crate::db::lock_named(v.c, &key).await?;
            match v.find_by_crm_id_again(t, &object.id).await? {
                Some(i) => (i, false, false),
                None => {
                    let why = format!("waiting for {} {}, which is not known here yet", t.as_str(), object.id);
                    let mut decision = Decision::new(Outcome::Waiting, why);
                    decision.waiting_for = Some(key);
                    return Ok(decision);
                }
            }
        }
        Found::Nothing => return create(v, ctx, t, object, data, &version, raw).await,
        Found::ByCrmId(i) => (i, false, false),
        Found::Unlinked(i, link_back) => (i, true, link_back),
    };
    if v.local(i).is_deleted() && linking && !link_back {
        // Found by its externalId, deleted here before its create was confirmed (the answer was
        // lost): this is that create's record, which must not live on in TreadSoft.
        return link_and_delete(v, ctx, t, i, &object.id, raw).await;
    }
    if v.local(i).is_deleted() {
        return Ok(Decision::new(Outcome::Stale, "the record was deleted locally"));
    }

    let mut candidates: Vec<&'static Field> = if action == Action::Created || linking {
        t.fields().iter().collect()
    } else {
        t.local_fields_for(event.changed_fields.iter().map(String::as_str))
    };
    if event.partial {
        // A field the CRM holds no value for is unknown there: what is stored here stands.
        candidates.retain(|f| f.crm.iter().any(|name| data.contains_key(*name)));
        if linking {
            // Nor does linking a record the CRM knows less of clear what is known here.
            candidates.retain(|f| f.crm.iter().any(|name| data.get(*name).is_some_and(|v| !v.is_null())));
        }
    }
    let mut echo_reason = "no synced field changed";
    if let Some(sent) = own_request_fields(v, &event).await? {
        if event.echo_of.is_some() {
            // One field's value sent, coming back: the local field it is part of (a name of two
            // parts) stays as it is here.
            candidates.retain(|f| !f.crm.iter().any(|name| sent.iter().any(|s| s == name)));
        } else {
            candidates.retain(|f| !f.crm.iter().all(|name| sent.iter().any(|s| s == name)));
        }
        echo_reason = "an echo of the gateway's own request";
    } else if event.change_source.as_deref() == Some("api") {
        // An API change to a field whose local change is still on its way to the CRM may be the
        // echo of a request whose id is not recorded yet: the local change stands.
        match outbox::unconfirmed_of(v.undelivered(i).await?) {
            None => candidates.clear(),
            Some(fields) => candidates.retain(|f| !fields.contains(f.local)),
        }
        echo_reason = "a local change to these fields is still being delivered";
    } else if event.change_source.as_deref() == Some("import") {
        // A listed record carries one stamp for all its fields: a field changed here and not yet
        // delivered (or dead-lettered) shows TreadSoft's value from before that change, however
        // new the record's stamp. The local change stands until it is delivered.
        match outbox::undelivered_fields(v.undelivered(i).await?) {
            None => candidates.clear(),
            Some(fields) => candidates.retain(|f| !fields.contains(f.local)),
        }
        echo_reason = "a local change to these fields is waiting for delivery";
    }

    if t == RecordType::Contact && v.local(i).values.get("role").and_then(Value::as_str) == Some("admin") {
        // Admins are not synced (TreadSoft knows owners and guests): a linked user made admin
        // here stays admin whatever role TreadSoft holds.
        candidates.retain(|f| f.local != "role");
    }
    let mapped = match map_fields(v, &candidates, data).await? {
        Ok(mapped) => mapped,
        Err(decision) => return Ok(decision),
    };
    let stored = v.field_versions(i).await?.clone();
    let local = v.local(i);
    let fallback =
        Version { stamp: Stamp { ms: local.updated_at_ms(), seq: 0 }, origin: Origin::Local, event_id: String::new() };
    // `equal`: fields whose newer value is the one stored. Their stamp still moves to this
    // version, or an older change arriving later would look newer than what is stored.
    let (mut changes, mut changed, mut equal, mut stale) = (Map::new(), Vec::new(), Vec::new(), 0);
    for (field, value) in mapped {
        let stored_version = stored.get(field.local).unwrap_or(&fallback);
        if !lww::wins(&version, Some(stored_version), ctx.precedence) {
            stale += 1;
        } else if local.values.get(field.local) == Some(&value) {
            equal.push(field.local);
        } else {
            changes.insert(field.local.to_owned(), value);
            changed.push(field.local);
        }
    }

    if changes.is_empty() && !linking {
        v.set_field_versions(i, &equal, &version);
        ctx.hlc.observe(version.stamp);
        return Ok(match (equal.len(), stale) {
            (0, 0) => Decision::new(Outcome::Echo, echo_reason),
            (0, _) => Decision::new(Outcome::Stale, "every changed field holds a newer value"),
            _ => Decision::new(Outcome::Echo, "the values equal what is stored"),
        });
    }
    if event.partial && event.echo_of.is_none() {
        // HubSpot holds other values than the gateway sent for these fields: a later change back
        // to a value sent is the CRM's own (a webhook's own field is forgotten by its `echoOf`).
        for field in t.fields().iter().filter(|f| changed.contains(&f.local)) {
            for name in field.crm {
                v.forget_sent(&super::echo::sent_key(t, &object.id, name), None);
            }
        }
    }
    changed.extend(equal);
    // Fields never stamped keep the stamp they had implicitly (the row's updated_at).
    let unstamped: Vec<&str> =
        t.fields().iter().map(|f| f.local).filter(|f| !stored.contains_key(*f) && !changed.contains(f)).collect();
    v.set_field_versions(i, &unstamped, &fallback);
    v.set_field_versions(i, &changed, &version);
    let status = outbox::status_of(v.undelivered(i).await?);
    mark_synced(&mut changes, &object.id, status);
    let local_id = v.local(i).id.clone();
    v.update(i, changes);
    if link_back {
        queue_link_back(v, t, &local_id, &object.id);
    }
    log_applied(v, t, &local_id, &object.id, "update", raw);
    ctx.hlc.observe(version.stamp);
    Ok(Decision::applied(linking.then(|| (t, object.id.clone()))))
}

/// Finds the local record for a TreadSoft record: by `crm_id`, then `externalId`, then (contacts) email.
async fn locate(v: Txn<'_, '_>, t: RecordType, object: &Object) -> Result<Result<Found, String>, DbErr> {
    if let Some(i) = v.find_by_crm_id(t, &object.id).await? {
        return Ok(Ok(Found::ByCrmId(i)));
    }
    if let Some(external_id) = object.external_id.as_deref()
        && let Some(i) = v.find_by_id(t, external_id).await?
    {
        return Ok(match v.local(i).crm_id() {
            None => Ok(Found::Unlinked(i, false)),
            // Linked meanwhile (by another transaction the crm_id lookup could not see yet): itself.
            Some(same) if same == object.id => Ok(Found::ByCrmId(i)),
            Some(other) => Err(format!("externalId {external_id} is linked to TreadSoft record {other}")),
        });
    }
    if t == RecordType::Contact
        && let Some(email) = object.data.as_ref().and_then(|d| d.get("email")).and_then(Value::as_str)
        && let Some(i) = v.find_user_by_email(email).await?
    {
        let local = v.local(i);
        return Ok(match local.crm_id() {
            None => Ok(Found::Unlinked(i, true)),
            Some(same) if same == object.id => Ok(Found::ByCrmId(i)),
            Some(other) => Err(format!("user {} with this email is linked to TreadSoft record {other}", local.id)),
        });
    }
    Ok(Ok(Found::Nothing))
}

/// The CRM fields the gateway's own request set, when this event is the echo of one: by
/// TreadSoft's request id on an `api` change, or by the key of the value last sent (`echoOf`).
async fn own_request_fields(v: Txn<'_, '_>, event: &Event) -> Result<Option<Vec<String>>, DbErr> {
    if let Some((key, hash)) = event.echo_of.as_deref().and_then(super::echo::split) {
        // The last value sent for this field, and the change sets that value: its echo.
        return Ok(match v.own_request(key).await? {
            Some((fields, Some(sent))) if sent == hash => Some(fields),
            Some((_, sent)) => {
                v.forget_sent(key, sent.as_deref());
                None
            }
            None => None,
        });
    }
    let (Some("api"), Some(request_id)) = (event.change_source.as_deref(), event.request_id.as_deref()) else {
        return Ok(None);
    };
    Ok(v.own_request(request_id).await?.map(|(fields, _)| fields))
}

/// Maps fields to local values, resolving references to local ids. `Err` is the decision for an
/// event that cannot be applied yet (`waiting`) or at all (`failed`).
async fn map_fields(
    v: Txn<'_, '_>,
    fields: &[&'static Field],
    data: &Map<String, Value>,
) -> Result<Result<Vec<(&'static Field, Value)>, Decision>, DbErr> {
    let mut out = Vec::with_capacity(fields.len());
    for field in fields {
        let value = match crm_to_local(field, data) {
            Err(e) => return Ok(Err(Decision::new(Outcome::Failed, e.to_string()))),
            Ok(Mapped::Value(value)) => value,
            Ok(Mapped::Ref { crm_id: None, .. }) => Value::Null,
            Ok(Mapped::Ref { target, crm_id: Some(crm_id), .. }) => {
                let alive =
                    |v: &View<'_, DatabaseTransaction>, i: Option<usize>| i.filter(|&i| !v.local(i).is_deleted());
                let found = v.find_by_crm_id(target, &crm_id).await?;
                let mut parent = alive(v, found);
                if parent.is_none() {
                    // Another instance may be linking the parent right now, unseen by this
                    // transaction. Its release of waiting events takes the same lock: whichever
                    // comes second sees what the first one committed, so no event waits forever.
                    crate::db::lock_named(v.c, &waiting_key(target, &crm_id)).await?;
                    let found = v.find_by_crm_id_again(target, &crm_id).await?;
                    parent = alive(v, found);
                }
                match parent {
                    Some(parent) => v.local(parent).values.get("id").cloned().unwrap_or(Value::Null),
                    None => {
                        let mut decision = Decision::new(
                            Outcome::Waiting,
                            format!("waiting for {} {crm_id}, which is not known here yet", target.as_str()),
                        );
                        decision.waiting_for = Some(waiting_key(target, &crm_id));
                        return Ok(Err(decision));
                    }
                }
            }
        };
        out.push((*field, value));
    }
    Ok(Ok(out))
}

/// Creates the local record for a TreadSoft record no local record links to.
async fn create(
    v: Txn<'_, '_>,
    ctx: &SyncContext,
    t: RecordType,
    object: &Object,
    data: &Map<String, Value>,
    version: &Version,
    raw: &Value,
) -> Result<Decision, DbErr> {
    let fields: Vec<&'static Field> = t.fields().iter().collect();
    let mapped = match map_fields(v, &fields, data).await? {
        Ok(mapped) => mapped,
        Err(decision) => return Ok(decision),
    };
    let mut values: Map<String, Value> = mapped.into_iter().map(|(f, v)| (f.local.to_owned(), v)).collect();
    if t == RecordType::Contact {
        let id = object.external_id.clone().unwrap_or_else(|| format!("user_{}", uuid::Uuid::now_v7().simple()));
        values.insert("id".into(), Value::String(id));
    }
    values.insert(
        "created_at".into(),
        serde_json::to_value(object.created_at.unwrap_or(object.updated_at)).unwrap_or_default(),
    );
    values.insert("deleted_at".into(), Value::Null);
    mark_synced(&mut values, &object.id, "synced");
    let i = v.insert(t, values).await?;
    let local_id = v.local(i).id.clone();
    let fields: Vec<&str> = t.fields().iter().map(|f| f.local).collect();
    v.set_field_versions(i, &fields, version);
    if object.external_id.as_deref() != Some(local_id.as_str()) {
        queue_link_back(v, t, &local_id, &object.id);
    }
    log_applied(v, t, &local_id, &object.id, "create", raw);
    ctx.hlc.observe(version.stamp);
    Ok(Decision { created: true, ..Decision::applied(Some((t, object.id.clone()))) })
}

#[allow(clippy::too_many_arguments)]
async fn delete(
    v: Txn<'_, '_>,
    ctx: &SyncContext,
    t: RecordType,
    object: &Object,
    version: &Version,
    tombstone: Option<Version>,
    found: Found,
    raw: &Value,
) -> Result<Decision, DbErr> {
    if tombstone.as_ref().is_some_and(|stored| !lww::wins(version, Some(stored), ctx.precedence)) {
        return Ok(Decision::new(Outcome::Echo, "already deleted"));
    }
    let found = match found {
        Found::ByCrmId(i) | Found::Unlinked(i, _) => Some(i),
        Found::Nothing => None,
    };
    let local_id = found.map(|i| v.local(i).id.clone());
    v.set_tombstone(t, &object.id, local_id.as_deref(), version);
    ctx.hlc.observe(version.stamp);
    let (Some(i), Some(local_id)) = (found, local_id) else {
        return Ok(Decision::new(
            Outcome::Applied,
            "no local record; the delete is kept so older changes cannot create it",
        ));
    };
    if v.local(i).is_deleted() {
        return Ok(Decision::new(Outcome::Echo, "already deleted locally"));
    }
    let mut changes = Map::new();
    changes.insert(
        "deleted_at".into(),
        serde_json::to_value(object.deleted_at.unwrap_or(object.updated_at)).unwrap_or_default(),
    );
    let status = outbox::status_of(v.undelivered(i).await?);
    mark_synced(&mut changes, &object.id, status);
    v.update(i, changes);
    log_applied(v, t, &local_id, &object.id, "delete", raw);
    Ok(Decision::applied(None))
}

/// Records merged in the CRM: each merged record is tombstoned (so a late change cannot bring it
/// back); the local record linked to the survivor stays, or else the first one linked to a merged
/// record is linked to the survivor; the other local records linked to merged ones are deleted,
/// as the CRM deleted theirs. The survivor's values come with a change of their own.
async fn merge(
    v: Txn<'_, '_>,
    ctx: &SyncContext,
    t: RecordType,
    event: &Event,
    raw: &Value,
) -> Result<Decision, DbErr> {
    let survivor = &event.object.id;
    let version = Version {
        stamp: Stamp { ms: event.object.updated_at.timestamp_millis(), seq: event.object.version },
        origin: Origin::Crm,
        event_id: event.id.clone(),
    };
    let found = v.find_by_crm_id(t, survivor).await?;
    let mut keeper = found.filter(|&i| !v.local(i).is_deleted());
    // Every merged record is tombstoned; the live local records linked to them, in the merge's
    // order (the primary first).
    let mut linked = Vec::new();
    for merged in event.merged_ids.iter().filter(|id| *id != survivor) {
        let found = v.find_by_crm_id(t, merged).await?;
        let local_id = found.map(|i| v.local(i).id.clone());
        v.set_tombstone(t, merged, local_id.as_deref(), &version);
        if let (Some(i), Some(local_id)) = (found.filter(|&i| !v.local(i).is_deleted()), local_id) {
            linked.push((merged, i, local_id));
        }
    }
    // Without a record linked to the survivor, the one the survivor names (its gateway id), else
    // the primary's, stays and is linked to it.
    let relinked = match keeper {
        Some(_) => None,
        None => {
            let named = event.object.external_id.as_deref();
            let at =
                linked.iter().position(|(_, _, id)| Some(id.as_str()) == named).or((!linked.is_empty()).then_some(0));
            at.map(|at| linked.remove(at))
        }
    };
    if let Some((_, i, local_id)) = &relinked {
        keeper = Some(*i);
        log_applied(v, t, local_id, survivor, "link", raw);
        let status = outbox::status_of(v.undelivered(*i).await?);
        let mut changes = Map::new();
        mark_synced(&mut changes, survivor, status);
        v.update(*i, changes);
    }
    let mut deleted = Vec::new();
    for (merged, i, local_id) in linked {
        let mut changes = Map::new();
        changes.insert("deleted_at".into(), serde_json::to_value(event.object.updated_at).unwrap_or_default());
        let status = outbox::status_of(v.undelivered(i).await?);
        mark_synced(&mut changes, merged, status);
        v.update(i, changes);
        log_applied(v, t, &local_id, merged, "delete", raw);
        deleted.push(local_id);
    }
    let relinked = relinked.map(|(_, _, id)| id);
    ctx.hlc.observe(version.stamp);
    let mut decision = Decision::applied(keeper.map(|_| (t, survivor.clone())));
    let kept = keeper.map(|i| v.local(i).id.clone());
    decision.reason = Some(match (kept, relinked.is_some()) {
        (Some(kept), true) => format!("merged into {survivor}: {} {kept} linked to it", t.as_str()),
        (Some(kept), false) => format!("merged into {survivor}, linked to {} {kept}", t.as_str()),
        (None, _) => format!("merged into {survivor}, which no local record is linked to"),
    });
    if !deleted.is_empty() {
        let list = deleted.join(", ");
        decision.reason = decision.reason.map(|r| format!("{r}; deleted here as duplicates: {list}"));
    }
    Ok(decision)
}

/// Links a locally deleted record to the TreadSoft record it turned out to have, and queues the
/// delete of that record.
async fn link_and_delete(
    v: Txn<'_, '_>,
    ctx: &SyncContext,
    t: RecordType,
    i: usize,
    crm_id: &str,
    raw: &Value,
) -> Result<Decision, DbErr> {
    let version = Version { stamp: ctx.hlc.now(), origin: Origin::Local, event_id: String::new() };
    let local_id = v.local(i).id.clone();
    v.set_tombstone(t, crm_id, Some(&local_id), &version);
    let changes = Map::from_iter([
        ("crm_id".to_owned(), Value::String(crm_id.to_owned())),
        ("crm_sync_status".to_owned(), Value::String("pending".into())),
    ]);
    v.update(i, changes);
    v.enqueue(i, outbox::Operation::Delete, None, None).await?;
    log_applied(v, t, &local_id, crm_id, "link", raw);
    Ok(Decision::new(
        Outcome::Applied,
        "the record was deleted here before its create was confirmed: linked, and its delete queued",
    ))
}

/// Adds `updated_at` and the three `crm_*` columns of a record the CRM just synced. The status
/// stays `pending` or `failed` while a local change of the record has not reached the CRM.
fn mark_synced(values: &mut Map<String, Value>, crm_id: &str, status: &str) {
    let now = Utc::now();
    values.insert("updated_at".into(), serde_json::to_value(now).unwrap_or_default());
    values.insert("crm_id".into(), Value::String(crm_id.to_owned()));
    values.insert("crm_sync_status".into(), Value::String(status.to_owned()));
    values.insert("crm_last_synced_at".into(), Value::from(now.timestamp_millis()));
}

/// Queues setting `externalId` on the TreadSoft record, so TreadSoft knows the local id too.
fn queue_link_back(v: Txn<'_, '_>, t: RecordType, local_id: &str, crm_id: &str) {
    let now = Utc::now();
    v.queue_link_back(crm_outbox::ActiveModel {
        id: NotSet,
        record_type: Set(t.as_str().to_owned()),
        record_id: Set(local_id.to_owned()),
        operation: Set(entity::enums::OutboxOperation::Link),
        fields: Set(Some(r#"["externalId"]"#.to_owned())),
        event_id: Set(None),
        status: Set(entity::enums::OutboxStatus::Pending),
        attempts: Set(0),
        next_attempt_at: Set(now),
        lease_until: Set(None),
        last_error: Set(None),
        idempotency_key: Set(format!("link-{}-{local_id}-{crm_id}", t.as_str())),
        created_at: Set(now),
        updated_at: Set(now),
    });
}

fn log_applied(v: Txn<'_, '_>, t: RecordType, local_id: &str, crm_id: &str, action: &str, raw: &Value) {
    v.log(
        SyncLog {
            entity_type: t.as_str(),
            entity_id: local_id,
            crm_id: Some(crm_id),
            action,
            status: "success",
            request_data: Some(raw.to_string()),
            ..Default::default()
        }
        .row(),
    );
}
