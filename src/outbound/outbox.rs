//! Queuing deliveries to the CRM. A record has at most one pending row: a new change to a record
//! that already waits is merged into that row (its fields joined), so the CRM receives the record's
//! current state once instead of every intermediate edit.

use crate::sync::mapping::RecordType;
use chrono::Utc;
use entity::crm_outbox;
use sea_orm::{ActiveModelTrait, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QuerySelect, Set};
use std::collections::BTreeSet;

/// What a delivery does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Create the record in the CRM, or update the listed fields of it.
    Upsert,
    /// Delete the CRM record.
    Delete,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Upsert => "upsert",
            Self::Delete => "delete",
        }
    }
}

/// Queues (or merges into the record's pending row) a delivery of `fields` (`None`: all fields).
pub async fn enqueue(
    c: &impl ConnectionTrait,
    t: RecordType,
    record_id: &str,
    operation: Operation,
    fields: Option<&[&str]>,
    event_id: Option<&str>,
) -> Result<i64, DbErr> {
    let now = Utc::now();
    let pending = crm_outbox::Entity::find()
        .filter(crm_outbox::Column::RecordType.eq(t.as_str()))
        .filter(crm_outbox::Column::RecordId.eq(record_id))
        .filter(crm_outbox::Column::Status.eq("pending"))
        .filter(crm_outbox::Column::Operation.ne("link"))
        .lock_exclusive()
        .one(c)
        .await?;
    if let Some(row) = pending {
        let merged = match (operation, row.operation.as_str()) {
            (Operation::Delete, _) => (Operation::Delete, None),
            (Operation::Upsert, "delete") => (Operation::Delete, None),
            (Operation::Upsert, _) => (Operation::Upsert, merge_fields(row.fields.as_deref(), fields)),
        };
        let id = row.id;
        let mut row: crm_outbox::ActiveModel = row.into();
        row.operation = Set(merged.0.as_str().to_owned());
        row.fields = Set(merged.1);
        row.event_id = Set(event_id.map(str::to_owned));
        row.updated_at = Set(now);
        row.update(c).await?;
        return Ok(id);
    }
    let row = crm_outbox::ActiveModel {
        record_type: Set(t.as_str().to_owned()),
        record_id: Set(record_id.to_owned()),
        operation: Set(operation.as_str().to_owned()),
        fields: Set(fields.map(|f| serde_json::to_string(f).unwrap_or_default())),
        event_id: Set(event_id.map(str::to_owned)),
        status: Set("pending".to_owned()),
        attempts: Set(0),
        next_attempt_at: Set(now),
        lease_until: Set(None),
        last_error: Set(None),
        idempotency_key: Set(format!("cgw-{}", uuid::Uuid::now_v7())),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    }
    .insert(c)
    .await?;
    Ok(row.id)
}

/// Drops the record's queued deliveries (a record deleted before it ever reached the CRM).
pub async fn cancel_pending(c: &impl ConnectionTrait, t: RecordType, record_id: &str) -> Result<(), DbErr> {
    crm_outbox::Entity::delete_many()
        .filter(crm_outbox::Column::RecordType.eq(t.as_str()))
        .filter(crm_outbox::Column::RecordId.eq(record_id))
        .filter(crm_outbox::Column::Status.eq("pending"))
        .exec(c)
        .await?;
    Ok(())
}

/// The union of two field lists, where `None` means every field.
fn merge_fields(stored: Option<&str>, new: Option<&[&str]>) -> Option<String> {
    let stored: Option<BTreeSet<String>> = stored.map(|text| serde_json::from_str(text).unwrap_or_default());
    match (stored, new) {
        (Some(mut set), Some(new)) => {
            set.extend(new.iter().map(|f| (*f).to_owned()));
            Some(serde_json::to_string(&set).unwrap_or_default())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_lists_merge_and_all_absorbs_any() {
        assert_eq!(
            merge_fields(Some(r#"["phone"]"#), Some(&["name", "phone"])).as_deref(),
            Some(r#"["name","phone"]"#)
        );
        assert_eq!(merge_fields(None, Some(&["name"])), None);
        assert_eq!(merge_fields(Some(r#"["name"]"#), None), None);
    }
}
