//! Reading and writing the five synced tables by [`RecordType`], as JSON in the models' shape, so
//! the sync rules can treat every record type alike. Rows are read `FOR UPDATE` on PostgreSQL, so
//! two gateway instances applying changes to one record take turns.

use super::mapping::RecordType;
use entity::{bookings, enquiries, owner_memberships, properties, user};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, IdenStatic, Iterable, QueryFilter, QuerySelect,
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
        let model = m::ActiveModel::from_json(Value::Object(values))?.insert(c).await?;
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
    // `from_json` wants every column (its placeholders for missing date-times do not parse), so
    // start from the stored row and then mark the unchanged columns as not set.
    let mut full = local.values.clone();
    full.extend(changes.iter().map(|(k, v)| (k.clone(), v.clone())));
    with_table!(t, m => {
        let mut row = m::ActiveModel::from_json(Value::Object(full))?;
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
