//! Reading and writing the five synced tables by [`RecordType`], as JSON in the models' shape, so
//! the sync rules can treat every record type alike. Rows are read `FOR UPDATE` on PostgreSQL, so
//! two gateway instances applying changes to one record take turns.

use super::mapping::RecordType;
use entity::{bookings, enquiries, owner_memberships, properties, user};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, IdenStatic, Iterable, QueryFilter, QueryOrder,
    QuerySelect,
};
use serde_json::{Map, Value};

/// A local record as the sync rules see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Local {
    /// The primary key as text (`"user_123abc"`, `"4201"`).
    pub id: String,
    /// Every column, as the model serializes it.
    pub values: Map<String, Value>,
}

impl Local {
    pub fn crm_id(&self) -> Option<&str> {
        self.values.get("crm_id").and_then(Value::as_str)
    }

    /// `crm_sync_status`: `synced`, `pending` or `failed`.
    pub fn sync_status(&self) -> Option<&str> {
        self.values.get("crm_sync_status").and_then(Value::as_str)
    }

    /// Whether `crm_sync_status` is `synced`.
    pub fn is_synced(&self) -> bool {
        self.sync_status() == Some("synced")
    }

    pub fn is_deleted(&self) -> bool {
        !self.values.get("deleted_at").is_none_or(Value::is_null)
    }

    /// `updated_at` in Unix milliseconds: the stamp of fields that have none of their own.
    pub fn updated_at_ms(&self) -> i64 {
        self.values
            .get("updated_at")
            .and_then(Value::as_str)
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .map_or(0, |t| t.timestamp_millis())
    }
}

/// Runs `$body` with `$m` naming the entity module of record type `$t`.
macro_rules! with_table {
    ($t:expr, $m:ident => $body:expr) => {
        match $t {
            RecordType::Contact => {
                use user as $m;
                $body
            }
            RecordType::Property => {
                use properties as $m;
                $body
            }
            RecordType::Enquiry => {
                use enquiries as $m;
                $body
            }
            RecordType::Booking => {
                use bookings as $m;
                $body
            }
            RecordType::Membership => {
                use owner_memberships as $m;
                $body
            }
        }
    };
}

/// The active model of a row from its column values, every column given set: read straight into
/// the model when the values name every column (a whole row, as [`Local`] holds it), otherwise
/// through sea-orm's `from_json`, which leaves the missing columns not set. The same model either
/// way; the first skips `from_json`'s placeholder row and its per-column copies, which were most
/// of the writer's cost of writing a record back.
fn active<A>(values: Map<String, Value>) -> Result<A, DbErr>
where
    A: ActiveModelTrait + sea_orm::TryIntoModel<<A::Entity as EntityTrait>::Model>,
    <A::Entity as EntityTrait>::Model: sea_orm::IntoActiveModel<A> + serde::de::DeserializeOwned + serde::Serialize,
{
    let whole = <<A::Entity as EntityTrait>::Column as Iterable>::iter().all(|c| values.contains_key(c.json_key()));
    if !whole {
        return A::from_json(Value::Object(values));
    }
    let model: <A::Entity as EntityTrait>::Model =
        serde_json::from_value(Value::Object(values)).map_err(|e| DbErr::Json(e.to_string()))?;
    Ok(sea_orm::IntoActiveModel::<A>::into_active_model(model).reset_all())
}

fn to_local<M: serde::Serialize>(t: RecordType, model: M) -> Result<Local, DbErr> {
    let Value::Object(values) = serde_json::to_value(model).map_err(|e| DbErr::Json(e.to_string()))? else {
        return Err(DbErr::Json("a model did not serialize to an object".into()));
    };
    let id = match values.get("id") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err(DbErr::Json(format!("{} row without an id", t.table()))),
    };
    Ok(Local { id, values })
}

/// The primary key value of `id` for `t`'s table; `None` if it cannot be one (e.g. `"abc"` for an integer key).
pub fn id_value(t: RecordType, id: &str) -> Option<sea_orm::Value> {
    if id.contains('\0') {
        return None; // no record has one, and PostgreSQL refuses it in text
    }
    if t.has_text_id() { Some(id.to_owned().into()) } else { id.parse::<i64>().ok().map(Into::into) }
}

/// The primary key `id` as the models serialize it (text or a number); `None` if it cannot be one.
pub fn id_json(t: RecordType, id: &str) -> Option<Value> {
    if t.has_text_id() { Some(Value::String(id.to_owned())) } else { id.parse::<i64>().ok().map(Value::from) }
}

/// The owner (a user, not deleted) with id `id`.
pub async fn live_owner(c: &impl ConnectionTrait, id: &str) -> Result<Option<user::Model>, DbErr> {
    if id_value(RecordType::Contact, id).is_none() {
        return Ok(None);
    }
    user::Entity::find_by_id(id).filter(user::Column::DeletedAt.is_null()).one(c).await
}

/// The property (not deleted) with id `id`.
pub async fn live_property(c: &impl ConnectionTrait, id: i64) -> Result<Option<properties::Model>, DbErr> {
    properties::Entity::find_by_id(id).filter(properties::Column::DeletedAt.is_null()).one(c).await
}

/// The live records of `t` (owners, for contacts) that are not synced with the CRM, by id, and
/// how many are (the seed's bulk sync skips those).
pub async fn not_synced(c: &impl ConnectionTrait, t: RecordType) -> Result<(Vec<String>, usize), DbErr> {
    use entity::enums::{CrmSyncStatus, Role};
    use sea_orm::QuerySelect;
    let all: Vec<(String, Option<String>, CrmSyncStatus)> = if t == RecordType::Contact {
        user::Entity::find()
            .select_only()
            .columns([user::Column::Id, user::Column::CrmId, user::Column::CrmSyncStatus])
            .filter(user::Column::DeletedAt.is_null())
            .filter(user::Column::Role.eq(Role::Owner))
            .into_tuple()
            .all(c)
            .await?
    } else {
        // The other tables number their records.
        with_table!(t, m => {
            m::Entity::find()
                .select_only()
                .columns([m::Column::Id, m::Column::CrmId, m::Column::CrmSyncStatus])
                .filter(m::Column::DeletedAt.is_null())
                .into_tuple::<(i64, Option<String>, CrmSyncStatus)>()
                .all(c)
                .await?
                .into_iter()
                .map(|(id, crm_id, status)| (id.to_string(), crm_id, status))
                .collect()
        })
    };
    let total = all.len();
    let todo: Vec<String> = all
        .into_iter()
        .filter(|(_, crm_id, status)| crm_id.is_none() || *status != CrmSyncStatus::Synced)
        .map(|(id, _, _)| id)
        .collect();
    let skipped = total - todo.len();
    Ok((todo, skipped))
}

/// How many live (not deleted) records of `t` stand at each `crm_sync_status`.
pub async fn sync_status_counts(
    c: &impl ConnectionTrait,
    t: RecordType,
) -> Result<Vec<(entity::enums::CrmSyncStatus, i64)>, DbErr> {
    use sea_orm::QuerySelect;
    with_table!(t, m => {
        m::Entity::find()
            .select_only()
            .column(m::Column::CrmSyncStatus)
            .column_as(m::Column::CrmSyncStatus.count(), "n")
            .filter(m::Column::DeletedAt.is_null())
            .group_by(m::Column::CrmSyncStatus)
            .into_tuple::<(entity::enums::CrmSyncStatus, i64)>()
            .all(c)
            .await
    })
}

/// The record TreadSoft knows as `crm_id`, deleted or not.
pub async fn find_by_crm_id(c: &impl ConnectionTrait, t: RecordType, crm_id: &str) -> Result<Option<Local>, DbErr> {
    with_table!(t, m => {
        let model = m::Entity::find().filter(m::Column::CrmId.eq(crm_id)).lock_exclusive().one(c).await?;
        model.map(|model| to_local(t, model)).transpose()
    })
}

/// The record with local primary key `id`, deleted or not.
pub async fn find_by_id(c: &impl ConnectionTrait, t: RecordType, id: &str) -> Result<Option<Local>, DbErr> {
    let Some(key) = id_value(t, id) else { return Ok(None) };
    with_table!(t, m => {
        let model = m::Entity::find().filter(m::Column::Id.eq(key)).lock_exclusive().one(c).await?;
        model.map(|model| to_local(t, model)).transpose()
    })
}

/// The user whose email is `email`, compared by [`user::email_key`] (Unicode case and normal form).
pub async fn find_user_by_email(c: &impl ConnectionTrait, email: &str) -> Result<Option<Local>, DbErr> {
    let model =
        user::Entity::find().filter(user::Column::EmailKey.eq(user::email_key(email))).lock_exclusive().one(c).await?;
    model.map(|model| to_local(RecordType::Contact, model)).transpose()
}

/// Inserts a record from its column values; returns it as stored.
pub async fn insert(c: &impl ConnectionTrait, t: RecordType, values: Map<String, Value>) -> Result<Local, DbErr> {
    with_table!(t, m => {
        let model = active::<m::ActiveModel>(values)?.insert(c).await?;
        to_local(t, model)
    })
}

/// Sets the columns in `changes` of record `local`, leaving every other column as it is.
pub async fn update(
    c: &impl ConnectionTrait,
    t: RecordType,
    local: &Local,
    changes: Map<String, Value>,
) -> Result<(), DbErr> {
    // A model wants every column (`from_json`'s placeholders for missing date-times do not
    // parse), so start from the stored row and then mark the unchanged columns as not set.
    let mut full = local.values.clone();
    full.extend(changes.iter().map(|(k, v)| (k.clone(), v.clone())));
    with_table!(t, m => {
        let mut row = active::<m::ActiveModel>(full)?;
        for column in <m::Column as Iterable>::iter() {
            let name = column.as_str();
            if name != "id" && !changes.contains_key(name) {
                row.not_set(column);
            }
        }
        row.update(c).await?;
        Ok(())
    })
}

/// Every record of `t`, deleted or not, in key order, unlocked (the audit's read).
pub async fn all(c: &impl ConnectionTrait, t: RecordType) -> Result<Vec<Local>, DbErr> {
    with_table!(t, m => {
        m::Entity::find().order_by_asc(m::Column::Id).all(c).await?.into_iter().map(|model| to_local(t, model)).collect()
    })
}

/// Every record of `t` whose `crm_id` is in `crm_ids`, whose primary key is in `ids`, or (users)
/// whose email key is in `email_keys`, deleted or not: the set form of the `find_*` functions.
/// Rows are locked in primary key order on PostgreSQL, so two instances locking overlapping sets
/// take turns instead of deadlocking.
pub async fn find_many(
    c: &impl ConnectionTrait,
    t: RecordType,
    crm_ids: &[String],
    ids: &[String],
    email_keys: &[String],
) -> Result<Vec<Local>, DbErr> {
    select_many(c, t, crm_ids, ids, email_keys, true).await
}

/// The records of `t` linked to any of `crm_ids`, deleted or not, unlocked: a read outside any
/// write transaction (an operator's list).
pub async fn read_by_crm_ids(c: &impl ConnectionTrait, t: RecordType, crm_ids: &[String]) -> Result<Vec<Local>, DbErr> {
    select_many(c, t, crm_ids, &[], &[], false).await
}

/// The records of `t` whose primary key is in `ids`, deleted or not, by id, unlocked: a read
/// outside any write transaction (what the delivery worker sends).
pub async fn read_many(
    c: &impl ConnectionTrait,
    t: RecordType,
    ids: &[String],
) -> Result<std::collections::HashMap<String, Local>, DbErr> {
    let found = select_many(c, t, &[], ids, &[], false).await?;
    Ok(found.into_iter().map(|local| (local.id.clone(), local)).collect())
}

async fn select_many(
    c: &impl ConnectionTrait,
    t: RecordType,
    crm_ids: &[String],
    ids: &[String],
    email_keys: &[String],
    lock: bool,
) -> Result<Vec<Local>, DbErr> {
    let ids: Vec<sea_orm::Value> = ids.iter().filter_map(|id| id_value(t, id)).collect();
    let crm_ids: Vec<&String> = crm_ids.iter().filter(|id| !id.contains('\0')).collect();
    let email_keys: Vec<&String> =
        if t == RecordType::Contact { email_keys.iter().filter(|k| !k.contains('\0')).collect() } else { Vec::new() };
    let per = crate::db::MAX_PARAMS / 3;
    let chunks = [crm_ids.len(), ids.len(), email_keys.len()].into_iter().max().unwrap_or(0).div_ceil(per);
    let part = |len: usize, i: usize| (i * per).min(len)..((i + 1) * per).min(len);
    let mut out = Vec::new();
    for i in 0..chunks {
        with_table!(t, m => {
            let mut any = sea_orm::Condition::any();
            let crm = &crm_ids[part(crm_ids.len(), i)];
            if !crm.is_empty() {
                any = any.add(m::Column::CrmId.is_in(crm.iter().map(|s| s.as_str())));
            }
            let keys = &ids[part(ids.len(), i)];
            if !keys.is_empty() {
                any = any.add(m::Column::Id.is_in(keys.iter().cloned()));
            }
            let emails = &email_keys[part(email_keys.len(), i)];
            if !emails.is_empty() {
                any = any.add(user::Column::EmailKey.is_in(emails.iter().map(|s| s.as_str())));
            }
            let mut select = m::Entity::find().filter(any).order_by_asc(m::Column::Id);
            if lock {
                select = select.lock_exclusive();
            }
            let models = select.all(c).await?;
            for model in models {
                out.push(to_local(t, model)?);
            }
        })
    }
    Ok(out)
}

/// Inserts records of `t` from their column values (every column given, the key included), in
/// as few statements as possible.
pub async fn insert_many(c: &impl ConnectionTrait, t: RecordType, rows: Vec<Map<String, Value>>) -> Result<(), DbErr> {
    with_table!(t, m => {
        let models =
            rows.into_iter().map(active::<m::ActiveModel>).collect::<Result<Vec<_>, _>>()?;
        crate::db::insert_all(c, models, None).await
    })
}

/// The columns of `t`'s table that an index holds, besides the primary key. SQLite rewrites a
/// row's entry in every index over a column an `UPDATE` sets, whether or not its value changed
/// (a page of the index written for each row whose key is random, as a CRM id or an email is), so
/// [`overwrite_many`] sets these only where they changed. A test holds this list to the schema.
/// The CRM id and (contacts) the email key are among them, uniquely indexed: the view's lookups
/// by them read their values before an update from these columns.
pub fn indexed_columns(t: RecordType) -> &'static [&'static str] {
    match t {
        RecordType::Contact => &["crm_id", "email_key", "role"],
        RecordType::Property => &["crm_id", "owner_id"],
        RecordType::Enquiry => &["crm_id", "property_id", "user_id"],
        RecordType::Booking => &["crm_id", "property_id", "user_id"],
        RecordType::Membership => &["crm_id", "user_id"],
    }
}

/// The indexed columns of `t` ([`indexed_columns`]) whose values differ between `before` and `after`.
pub fn changed_indexed(t: RecordType, before: &Map<String, Value>, after: &Map<String, Value>) -> Reindexed {
    indexed_columns(t).iter().copied().filter(|c| before.get(*c) != after.get(*c)).collect()
}

/// Indexed columns of a record that changed: its entries in their indexes are to be rewritten.
pub type Reindexed = std::collections::BTreeSet<&'static str>;

/// Writes whole records of `t` (every column given) over the stored ones with the same key, each
/// with the indexed columns that changed in it ([`changed_indexed`]): those are set, and the other
/// indexed columns are left as stored. A statement for each set of changed indexed columns (as
/// few as possible for each).
pub async fn overwrite_many(
    c: &impl ConnectionTrait,
    t: RecordType,
    rows: Vec<(Map<String, Value>, Reindexed)>,
) -> Result<(), DbErr> {
    let mut by_reindexed: std::collections::BTreeMap<Reindexed, Vec<Map<String, Value>>> = Default::default();
    for (values, reindexed) in rows {
        by_reindexed.entry(reindexed).or_default().push(values);
    }
    for (reindexed, rows) in by_reindexed {
        with_table!(t, m => {
            let models = rows
                .into_iter()
                .map(active::<m::ActiveModel>)
                .collect::<Result<Vec<_>, _>>()?;
            let columns = <m::Column as Iterable>::iter().filter(|c| {
                let name = c.as_str();
                name != "id" && (!indexed_columns(t).contains(&name) || reindexed.contains(name))
            });
            let on_conflict = OnConflict::column(m::Column::Id).update_columns(columns).to_owned();
            crate::db::insert_all(c, models, Some(on_conflict)).await?;
        });
    }
    Ok(())
}

/// On PostgreSQL, moves the id sequence of `t`'s table past the largest id stored (the site
/// assigns ids too), never backwards: a value the sequence handed out is not handed out again.
pub async fn sequence_past_max(c: &impl ConnectionTrait, t: RecordType) -> Result<(), DbErr> {
    if c.get_database_backend() != sea_orm::DatabaseBackend::Postgres || t.has_text_id() {
        return Ok(());
    }
    let table = t.table();
    let sql = format!(
        r#"SELECT setval(s, GREATEST((SELECT MAX(id) FROM "{table}"), COALESCE(pg_sequence_last_value(s), 1), 1))
           FROM CAST(pg_get_serial_sequence('"{table}"', 'id') AS regclass) AS s"#
    );
    c.execute_raw(sea_orm::Statement::from_string(sea_orm::DatabaseBackend::Postgres, sql)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::ActiveValue;

    fn whole_user() -> Map<String, Value> {
        let row = serde_json::json!({"id": "user_1", "name": "Ada L", "email": "ada@example.com",
            "email_key": "ada@example.com", "phone": "+44 1", "company_name": null, "role": "owner",
            "created_at": "2025-01-05T10:00:00Z", "updated_at": "2025-01-05T10:00:00.123Z", "deleted_at": null,
            "crm_id": "crm_1", "crm_sync_status": "synced", "crm_last_synced_at": 1736071200000_i64,
            "membership_status": "active"});
        row.as_object().unwrap().clone()
    }

    /// A whole row, read straight into its model, is the active model `from_json` makes of it, every
    /// column set; a row missing columns still leaves them not set; a value of the wrong type fails.
    #[test]
    fn a_row_read_straight_into_its_model_is_the_one_from_json_makes() {
        let whole = whole_user();
        let fast = active::<user::ActiveModel>(whole.clone()).unwrap();
        assert_eq!(fast, user::ActiveModel::from_json(Value::Object(whole)).unwrap());
        assert!(matches!(fast.crm_last_synced_at, ActiveValue::Set(Some(1736071200000))));
        assert!(matches!(fast.company_name, ActiveValue::Set(None)));

        let mut partial = whole_user();
        partial.remove("phone");
        let partial = active::<user::ActiveModel>(partial).unwrap();
        assert!(matches!(partial.phone, ActiveValue::NotSet));
        assert_eq!(partial.crm_id, ActiveValue::Set(Some("crm_1".to_owned())));

        let mut bad = whole_user();
        bad.insert("crm_last_synced_at".into(), Value::String("soon".into()));
        assert!(matches!(active::<user::ActiveModel>(bad), Err(DbErr::Json(_))));
    }
}
