//! Stored version stamps: those of each record's synced fields (one row per record), and one per
//! deleted CRM record.
//!
//! A record's stamps are read and written while its record row is locked (every path that writes
//! them reads the record `FOR UPDATE` first, or has just created it), so the read-merge-write of
//! the one row cannot lose another instance's stamps.

use super::hlc::Stamp;
use super::lww::{Origin, Version};
use super::mapping::RecordType;
use entity::{sync_record_versions as versions, sync_tombstones as tombstones};
use sea_orm::sea_query::OnConflict;
use sea_orm::{ColumnTrait, Condition, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set};
use std::collections::{BTreeMap, HashMap};

fn version(ms: i64, seq: i64, origin: &str, event_id: String) -> Version {
    Version { stamp: Stamp { ms, seq }, origin: Origin::parse(origin), event_id }
}

/// The stamps of one record's fields, by local field name.
pub type Stamps = HashMap<String, Version>;

/// One field's stamp as stored: `[stamp_ms, stamp_seq, origin, event_id]`.
type Stored<'a> = (i64, i64, &'a str, &'a str);

/// Reads a stored `stamps` object; a row that does not parse is an error, not an empty record:
/// deciding without its stamps could let an older change win. It is a data error (the work that
/// reads it fails alone, recorded as failed, rather than being tried again for ever).
fn decode(row: &versions::Model) -> Result<Stamps, DbErr> {
    let stored: HashMap<String, (i64, i64, String, String)> = serde_json::from_str(&row.stamps).map_err(|e| {
        DbErr::Json(format!(
            "sync_record_versions ({}, {}): the stamps are not a JSON object of [ms, seq, origin, event id]: {e}",
            row.entity_type, row.entity_id
        ))
    })?;
    Ok(stored
        .into_iter()
        .map(|(field, (ms, seq, origin, event_id))| (field, version(ms, seq, &origin, event_id)))
        .collect())
}

/// The stored form of `stamps` (fields in name order) and its largest `stamp_ms`.
fn encode(stamps: &Stamps) -> Result<(String, i64), DbErr> {
    let stored: BTreeMap<&str, Stored<'_>> = stamps
        .iter()
        .map(|(field, v)| (field.as_str(), (v.stamp.ms, v.stamp.seq, v.origin.as_str(), v.event_id.as_str())))
        .collect();
    let max_ms = stamps.values().map(|v| v.stamp.ms).max().unwrap_or(0);
    let text = serde_json::to_string(&stored).map_err(|e| DbErr::Json(format!("stamps not written: {e}")))?;
    Ok((text, max_ms))
}

/// The stamps of record `id`'s fields, by local field name.
pub async fn field_versions(c: &impl ConnectionTrait, t: RecordType, id: &str) -> Result<Stamps, DbErr> {
    match versions::Entity::find_by_id((t.as_str().to_owned(), id.to_owned())).one(c).await? {
        Some(row) => decode(&row),
        None => Ok(Stamps::new()),
    }
}

/// A record of a type, by its local key (or, for tombstones, its CRM id).
pub type Key = (RecordType, String);

/// The stamps of the fields of every record in `records` that has any, by record and local field name.
pub async fn field_versions_of(c: &impl ConnectionTrait, records: &[Key]) -> Result<HashMap<Key, Stamps>, DbErr> {
    let mut out: HashMap<Key, Stamps> = HashMap::new();
    for chunk in records.chunks(crate::db::MAX_PARAMS / 2) {
        let rows = versions::Entity::find()
            .filter(by_type(chunk, versions::Column::EntityType, versions::Column::EntityId))
            .all(c)
            .await?;
        for r in rows {
            let stamps = decode(&r)?;
            out.insert((RecordType::parse(&r.entity_type).unwrap_or(RecordType::Contact), r.entity_id), stamps);
        }
    }
    Ok(out)
}

/// Writes the whole stamps of each record given, over what is stored, in as few statements as
/// possible. A record listed twice takes its last.
pub async fn write_record_versions<'a>(
    c: &impl ConnectionTrait,
    records: impl IntoIterator<Item = (RecordType, &'a str, &'a Stamps)>,
) -> Result<(), DbErr> {
    let rows = records
        .into_iter()
        .map(|(t, id, stamps)| {
            let (stamps, max_ms) = encode(stamps)?;
            let row = versions::ActiveModel {
                entity_type: Set(t.as_str().to_owned()),
                entity_id: Set(id.to_owned()),
                stamps: Set(stamps),
                max_ms: Set(max_ms),
            };
            Ok(((t, id), row))
        })
        .collect::<Result<Vec<_>, DbErr>>()?;
    let rows = last_of_each(rows);
    let on_conflict = OnConflict::columns([versions::Column::EntityType, versions::Column::EntityId])
        .update_columns([versions::Column::Stamps, versions::Column::MaxMs])
        .to_owned();
    crate::db::insert_all(c, rows, Some(on_conflict)).await
}

/// Stamps each (record type, record id, field) with its version, keeping the other fields'
/// stamps: one read and one write for all the records. A field listed twice takes its last
/// version. The records must be locked (see the module's note).
pub async fn write_field_versions<'a>(
    c: &impl ConnectionTrait,
    stamps: impl IntoIterator<Item = (RecordType, &'a str, &'a str, &'a Version)>,
) -> Result<(), DbErr> {
    let mut new: BTreeMap<Key, Stamps> = BTreeMap::new();
    for (t, id, field, v) in stamps {
        new.entry((t, id.to_owned())).or_default().insert(field.to_owned(), v.clone());
    }
    let keys: Vec<Key> = new.keys().cloned().collect();
    let whole = over_stored(c, new).await?;
    write_record_versions(c, keys.iter().map(|key| (key.0, key.1.as_str(), &whole[key]))).await
}

/// Each record's `new` stamps over its stored ones (the fields it does not name keep theirs):
/// one read for all the records.
pub async fn over_stored(
    c: &impl ConnectionTrait,
    new: impl IntoIterator<Item = (Key, Stamps)>,
) -> Result<HashMap<Key, Stamps>, DbErr> {
    let new: HashMap<Key, Stamps> = new.into_iter().collect();
    if new.is_empty() {
        return Ok(new);
    }
    let keys: Vec<Key> = new.keys().cloned().collect();
    let mut whole = field_versions_of(c, &keys).await?;
    for (key, stamps) in new {
        whole.entry(key).or_default().extend(stamps);
    }
    Ok(whole)
}

/// The rows in the order their keys first come, each key's last row standing: one row per key
/// in a multi-row upsert (PostgreSQL refuses to update one row twice in a statement).
fn last_of_each<K: std::hash::Hash + Eq, R>(rows: impl IntoIterator<Item = (K, R)>) -> Vec<R> {
    let mut out: Vec<R> = Vec::new();
    let mut at: HashMap<K, usize> = HashMap::new();
    for (key, row) in rows {
        match at.get(&key) {
            Some(&i) => out[i] = row,
            None => {
                at.insert(key, out.len());
                out.push(row);
            }
        }
    }
    out
}

/// `<type_column> = t AND <column> IN (...)` for each record type in `keys`, joined by OR.
pub fn by_type<C: ColumnTrait>(keys: &[Key], type_column: C, column: C) -> Condition {
    let mut by_type: std::collections::BTreeMap<RecordType, Vec<&str>> = Default::default();
    for (t, id) in keys {
        by_type.entry(*t).or_default().push(id);
    }
    by_type.into_iter().fold(Condition::any(), |any, (t, ids)| {
        any.add(Condition::all().add(type_column.eq(t.as_str())).add(column.is_in(ids)))
    })
}

/// The delete stamps of the TreadSoft records in `records` (by type and CRM id) that were deleted,
/// locked in key order on PostgreSQL.
pub async fn tombstones_of(c: &impl ConnectionTrait, records: &[Key]) -> Result<HashMap<Key, Version>, DbErr> {
    let mut out = HashMap::new();
    for chunk in records.chunks(crate::db::MAX_PARAMS / 2) {
        let rows = tombstones::Entity::find()
            .filter(by_type(chunk, tombstones::Column::EntityType, tombstones::Column::CrmId))
            .order_by_asc(tombstones::Column::EntityType)
            .order_by_asc(tombstones::Column::CrmId)
            .lock_exclusive()
            .all(c)
            .await?;
        for r in rows {
            let key = (RecordType::parse(&r.entity_type).unwrap_or(RecordType::Contact), r.crm_id);
            out.insert(key, version(r.stamp_ms, r.stamp_seq, &r.origin, r.event_id));
        }
    }
    Ok(out)
}

/// Records (or moves forward) the deletes of TreadSoft records: (record type, CRM id, local id,
/// stamp). A record listed twice takes its last.
pub async fn write_tombstones<'a>(
    c: &impl ConnectionTrait,
    deletes: impl IntoIterator<Item = (RecordType, &'a str, Option<&'a str>, &'a Version)>,
) -> Result<(), DbErr> {
    let rows = last_of_each(deletes.into_iter().map(|(t, crm_id, local_id, v)| {
        let row = tombstones::ActiveModel {
            entity_type: Set(t.as_str().to_owned()),
            crm_id: Set(crm_id.to_owned()),
            entity_id: Set(local_id.map(str::to_owned)),
            stamp_ms: Set(v.stamp.ms),
            stamp_seq: Set(v.stamp.seq),
            origin: Set(v.origin.as_str().to_owned()),
            event_id: Set(v.event_id.clone()),
            created_at: Set(chrono::Utc::now()),
        };
        ((t, crm_id), row)
    }));
    let on_conflict = OnConflict::columns([tombstones::Column::EntityType, tombstones::Column::CrmId])
        .update_columns([
            tombstones::Column::EntityId,
            tombstones::Column::StampMs,
            tombstones::Column::StampSeq,
            tombstones::Column::Origin,
            tombstones::Column::EventId,
        ])
        .to_owned();
    crate::db::insert_all(c, rows, Some(on_conflict)).await
}

/// The delete stamp of TreadSoft record `crm_id`, if it was deleted.
pub async fn tombstone(c: &impl ConnectionTrait, t: RecordType, crm_id: &str) -> Result<Option<Version>, DbErr> {
    let row =
        tombstones::Entity::find_by_id((t.as_str().to_owned(), crm_id.to_owned())).lock_exclusive().one(c).await?;
    Ok(row.map(|r| version(r.stamp_ms, r.stamp_seq, &r.origin, r.event_id)))
}

/// Records (or moves forward) the delete of TreadSoft record `crm_id`.
pub async fn set_tombstone(
    c: &impl ConnectionTrait,
    t: RecordType,
    crm_id: &str,
    local_id: Option<&str>,
    v: &Version,
) -> Result<(), DbErr> {
    write_tombstones(c, [(t, crm_id, local_id, v)]).await
}

/// The largest stamp stored anywhere: the floor for the local clock after a restart.
pub async fn max_stamp(c: &impl ConnectionTrait) -> Result<Stamp, DbErr> {
    let row: Option<(Option<i64>,)> = versions::Entity::find()
        .select_only()
        .column_as(versions::Column::MaxMs.max(), "max_ms")
        .into_tuple()
        .one(c)
        .await?;
    Ok(Stamp { ms: row.and_then(|(ms,)| ms).unwrap_or(0), seq: 0 })
}
