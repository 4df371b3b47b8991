//! Stored version stamps: one per synced field of each record, and one per deleted CRM record.

use super::hlc::Stamp;
use super::lww::{Origin, Version};
use super::mapping::RecordType;
use entity::{sync_field_versions as versions, sync_tombstones as tombstones};
use sea_orm::sea_query::OnConflict;
use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QuerySelect, Set};
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
    let rows = fields.iter().map(|field| versions::ActiveModel {
        entity_type: Set(t.as_str().to_owned()),
        entity_id: Set(id.to_owned()),
        field: Set((*field).to_owned()),
        stamp_ms: Set(v.stamp.ms),
        stamp_seq: Set(v.stamp.seq),
        origin: Set(v.origin.as_str().to_owned()),
        event_id: Set(v.event_id.clone()),
    });
    versions::Entity::insert_many(rows)
        .on_conflict(
            OnConflict::columns([versions::Column::EntityType, versions::Column::EntityId, versions::Column::Field])
                .update_columns([
                    versions::Column::StampMs,
                    versions::Column::StampSeq,
                    versions::Column::Origin,
                    versions::Column::EventId,
                ])
                .to_owned(),
        )
        .exec_without_returning(c)
        .await?;
    Ok(())
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
    tombstones::Entity::insert(row)
        .on_conflict(
            OnConflict::columns([tombstones::Column::EntityType, tombstones::Column::CrmId])
                .update_columns([
                    tombstones::Column::EntityId,
                    tombstones::Column::StampMs,
                    tombstones::Column::StampSeq,
                    tombstones::Column::Origin,
                    tombstones::Column::EventId,
                ])
                .to_owned(),
        )
        .exec_without_returning(c)
        .await?;
    Ok(())
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
