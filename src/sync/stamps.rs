//! Stored version stamps: one per synced field of each record, and one per deleted CRM record.

use super::hlc::Stamp;
use super::lww::{Origin, Version};
use super::mapping::RecordType;
use entity::{sync_field_versions as versions, sync_tombstones as tombstones};
use sea_orm::sea_query::OnConflict;
use sea_orm::{ColumnTrait, Condition, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set};
use std::collections::HashMap;

fn version(ms: i64, seq: i64, origin: &str, event_id: String) -> Version {
    Version { stamp: Stamp { ms, seq }, origin: Origin::parse(origin), event_id }
}

/// The stamps of record `id`'s fields, by local field name.
pub async fn field_versions(
    c: &impl ConnectionTrait,
    t: RecordType,
    id: &str,
) -> Result<HashMap<String, Version>, DbErr> {
    let rows = versions::Entity::find()
        .filter(versions::Column::EntityType.eq(t.as_str()))
        .filter(versions::Column::EntityId.eq(id))
        .all(c)
        .await?;
    Ok(rows.into_iter().map(|r| (r.field, version(r.stamp_ms, r.stamp_seq, &r.origin, r.event_id))).collect())
}

/// Stamps `fields` of record `id` with `v`.
pub async fn set_field_versions(
    c: &impl ConnectionTrait,
    t: RecordType,
    id: &str,
    fields: &[&str],
    v: &Version,
) -> Result<(), DbErr> {
    write_field_versions(c, fields.iter().map(|field| (t, id, *field, v))).await
}

/// A record of a type, by its local key (or, for tombstones, its CRM id).
pub type Key = (RecordType, String);

/// The stamps of the fields of every record in `records`, by record and local field name.
pub async fn field_versions_of(
    c: &impl ConnectionTrait,
    records: &[Key],
) -> Result<HashMap<Key, HashMap<String, Version>>, DbErr> {
    let mut out: HashMap<Key, HashMap<String, Version>> = HashMap::new();
    for chunk in records.chunks(crate::db::MAX_PARAMS / 2) {
        let rows = versions::Entity::find()
            .filter(by_type(chunk, versions::Column::EntityType, versions::Column::EntityId))
            .all(c)
            .await?;
        for r in rows {
            let key = (RecordType::parse(&r.entity_type).unwrap_or(RecordType::Contact), r.entity_id);
            out.entry(key).or_default().insert(r.field, version(r.stamp_ms, r.stamp_seq, &r.origin, r.event_id));
        }
    }
    Ok(out)
}

/// Stamps each (record type, record id, field) with its version, in as few statements as possible.
/// A field listed twice takes its last version.
pub async fn write_field_versions<'a>(
    c: &impl ConnectionTrait,
    stamps: impl IntoIterator<Item = (RecordType, &'a str, &'a str, &'a Version)>,
) -> Result<(), DbErr> {
    let mut last: HashMap<(RecordType, &str, &str), &Version> = HashMap::new();
    let mut order = Vec::new();
    for (t, id, field, v) in stamps {
        if last.insert((t, id, field), v).is_none() {
            order.push((t, id, field));
        }
    }
    let rows: Vec<versions::ActiveModel> = order
        .into_iter()
        .map(|(t, id, field)| {
            let v = last[&(t, id, field)];
            versions::ActiveModel {
                entity_type: Set(t.as_str().to_owned()),
                entity_id: Set(id.to_owned()),
                field: Set(field.to_owned()),
                stamp_ms: Set(v.stamp.ms),
                stamp_seq: Set(v.stamp.seq),
                origin: Set(v.origin.as_str().to_owned()),
                event_id: Set(v.event_id.clone()),
            }
        })
        .collect();
    let on_conflict =
        OnConflict::columns([versions::Column::EntityType, versions::Column::EntityId, versions::Column::Field])
            .update_columns([
                versions::Column::StampMs,
                versions::Column::StampSeq,
                versions::Column::Origin,
                versions::Column::EventId,
            ])
            .to_owned();
    crate::db::insert_all(c, rows, Some(on_conflict)).await
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
    let mut rows: Vec<tombstones::ActiveModel> = Vec::new();
    let mut at: HashMap<(RecordType, &str), usize> = HashMap::new();
    for (t, crm_id, local_id, v) in deletes {
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
        match at.get(&(t, crm_id)) {
            Some(&i) => rows[i] = row,
            None => {
                at.insert((t, crm_id), rows.len());
                rows.push(row);
            }
        }
    }
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
        .column_as(versions::Column::StampMs.max(), "max_ms")
        .into_tuple()
        .one(c)
        .await?;
    Ok(Stamp { ms: row.and_then(|(ms,)| ms).unwrap_or(0), seq: 0 })
}
