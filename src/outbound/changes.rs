//! Applying a change the site made: the record is written with fresh version stamps from the
//! hybrid logical clock and its delivery queued, in one transaction, so nothing acknowledged is lost.

use super::outbox::{self, Operation};
use crate::error::ApiError;
use crate::sync::apply::SyncContext;
use crate::sync::lww::{Origin, Version};
use crate::sync::mapping::{Kind, NUL_MESSAGE, RecordType, check_local, nul_at};
use crate::sync::records::{self, Local};
use crate::sync::stamps;
use actix_web::http::StatusCode;
use chrono::Utc;
use sea_orm::{ConnectionTrait, DatabaseBackend, DatabaseTransaction, DbErr, Statement};
use serde_json::{Map, Value};

/// A change to one local record, in the table's column names.
#[derive(Debug, Clone)]
pub struct LocalChange {
    pub record_type: RecordType,
    pub id: String,
    /// Columns to set. A new record needs all of its required columns.
    pub values: Map<String, Value>,
    /// A new record: one that exists already is refused, not silently updated.
    pub create: bool,
    pub delete: bool,
}

/// Why a change cannot be taken (a client error: nothing was written).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    /// A create for a record that exists already.
    #[error("{0}")]
    Exists(String),
    /// Another user has this email (compared as [`entity::user::email_key`]).
    #[error("email: a user with this email exists already: {existing_id}")]
    EmailTaken { existing_id: String },
}

impl Rejected {
    /// The answer for a client; `context` (e.g. `event ev_1`) goes before the message.
    pub fn to_api_error(&self, context: Option<&str>) -> ApiError {
        let message = match context {
            Some(context) => format!("{context}: {self}"),
            None => self.to_string(),
        };
        match self {
            Self::Invalid(_) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed", message),
            Self::NotFound(_) => ApiError::not_found(message),
            Self::EmailTaken { .. } => ApiError::new(StatusCode::CONFLICT, "email_taken", message),
            Self::Exists(_) => ApiError::new(StatusCode::CONFLICT, "already_exists", message),
        }
    }
}

impl LocalChange {
    /// What no database can store or the site's data never holds: a NUL character in the id or in
    /// any text, a negative count or amount.
    pub fn validate(&self) -> Result<(), Rejected> {
        if self.id.contains('\0') {
            return Err(Rejected::Invalid(format!("id: {NUL_MESSAGE}")));
        }
        if let Some(path) = nul_at(&Value::Object(self.values.clone())) {
            return Err(Rejected::Invalid(format!("{}: {NUL_MESSAGE}", camel_case(&path))));
        }
        for field in self.record_type.fields() {
            if let Some(value) = self.values.get(field.local) {
                check_local(field, value)
                    .map_err(|e| Rejected::Invalid(format!("{}: {e}", camel_case(field.local))))?;
            }
        }
        Ok(())
    }
}

/// The user other than `except` whose email is `email`, as a rejection.
async fn email_taken(c: &DatabaseTransaction, email: Option<&Value>, except: &str) -> Result<Option<Rejected>, DbErr> {
    let Some(email) = email.and_then(Value::as_str) else { return Ok(None) };
    Ok(records::find_user_by_email(c, email)
        .await?
        .filter(|other| other.id != except)
        .map(|other| Rejected::EmailTaken { existing_id: other.id }))
}

/// Applies `change` and queues its delivery; `Ok(Err(_))` is a rejection that wrote nothing.
pub async fn apply(
    c: &DatabaseTransaction,
    ctx: &SyncContext,
    change: LocalChange,
    event_id: Option<&str>,
) -> Result<Result<(), Rejected>, DbErr> {
    if let Err(rejected) = change.validate() {
        return Ok(Err(rejected));
    }
    let t = change.record_type;
    if t == RecordType::Contact
        && let Some(taken) = email_taken(c, change.values.get("email"), &change.id).await?
    {
        return Ok(Err(taken));
    }
    let existing = records::find_by_id(c, t, &change.id).await?;
    match existing {
        Some(_) if change.create => Ok(Err(Rejected::Exists(format!(
            "{} {} exists already; send an update to change it",
            t.as_str(),
            change.id
        )))),
        None if change.delete => Ok(Err(Rejected::NotFound(format!("no {} {}", t.as_str(), change.id)))),
        None => create(c, ctx, change, event_id).await,
        Some(local) if local.is_deleted() => {
            if change.delete {
                Ok(Ok(()))
            } else {
                Ok(Err(Rejected::Invalid(format!("{} {} was deleted", t.as_str(), change.id))))
            }
        }
        Some(local) if change.delete => delete(c, ctx, t, local, event_id).await.map(Ok),
        Some(local) => update(c, ctx, t, local, change.values, event_id).await,
    }
}

/// `price_per_night` → `pricePerNight`, the site's name for a column.
fn camel_case(column: &str) -> String {
    let mut out = String::with_capacity(column.len());
    let mut upper = false;
    for c in column.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn now_json() -> Value {
    serde_json::to_value(Utc::now()).unwrap_or_default()
}

/// A stamp for a local write, newer than `stored` whatever the clocks say.
fn local_version(ctx: &SyncContext, stored: Option<&Version>, event_id: Option<&str>) -> Version {
    if let Some(stored) = stored {
        ctx.hlc.observe(stored.stamp);
    }
    Version { stamp: ctx.hlc.now(), origin: Origin::Local, event_id: event_id.unwrap_or_default().to_owned() }
}

async fn create(
    c: &DatabaseTransaction,
    ctx: &SyncContext,
    change: LocalChange,
    event_id: Option<&str>,
) -> Result<Result<(), Rejected>, DbErr> {
    let t = change.record_type;
    let mut values = change.values;
    let Some(id_value) = records::id_json(t, &change.id) else {
        return Ok(Err(Rejected::Invalid(format!("id: {:?} is not a valid {} id", change.id, t.as_str()))));
    };
    for field in t.fields() {
        let missing = values.get(field.local).is_none_or(Value::is_null);
        match field.kind {
            Kind::OptText | Kind::OptDate | Kind::OptRef(_) if missing => {
                values.insert(field.local.to_owned(), Value::Null);
            }
            Kind::TextOr(default) if missing => {
                values.insert(field.local.to_owned(), Value::String(default.to_owned()));
            }
            Kind::OptText | Kind::OptDate | Kind::OptRef(_) | Kind::TextOr(_) => {}
            _ if missing => return Ok(Err(Rejected::Invalid(format!("{}: required", camel_case(field.local))))),
            _ => {}
        }
    }
    values.insert("id".into(), id_value);
    values.entry("created_at").or_insert_with(now_json);
    values.insert("updated_at".into(), now_json());
    values.insert("deleted_at".into(), Value::Null);
    values.insert("crm_id".into(), Value::Null);
    values.insert("crm_sync_status".into(), Value::String("pending".into()));
    values.insert("crm_last_synced_at".into(), Value::Null);
    let local = match records::insert(c, t, values).await {
        Ok(local) => local,
        Err(DbErr::Json(message)) => return Ok(Err(Rejected::Invalid(message))),
        Err(e) => return Err(e),
    };
    if c.get_database_backend() == DatabaseBackend::Postgres && !t.has_text_id() {
        // The site assigns these ids; keep the identity sequence past them for records the CRM creates.
        let table = t.table();
        // Never backwards: a value the sequence handed out already is not handed out again.
        let sql = format!(
            r#"SELECT setval(s, GREATEST((SELECT MAX(id) FROM "{table}"), COALESCE(pg_sequence_last_value(s), 1), 1))
               FROM CAST(pg_get_serial_sequence('"{table}"', 'id') AS regclass) AS s"#
        );
        c.execute_raw(Statement::from_string(DatabaseBackend::Postgres, sql)).await?;
    }
    let fields: Vec<&'static str> = t.fields().iter().map(|f| f.local).collect();
    let version = local_version(ctx, None, event_id);
    stamps::set_field_versions(c, t, &local.id, &fields, &version).await?;
    outbox::enqueue(c, t, &local.id, Operation::Upsert, None, event_id).await?;
    Ok(Ok(()))
}

async fn update(
    c: &DatabaseTransaction,
    ctx: &SyncContext,
    t: RecordType,
    local: Local,
    values: Map<String, Value>,
    event_id: Option<&str>,
) -> Result<Result<(), Rejected>, DbErr> {
    let stored = stamps::field_versions(c, t, &local.id).await?;
    let mut changes = Map::new();
    let mut changed = Vec::new();
    for field in t.fields() {
        if let Some(value) = values.get(field.local)
            && local.values.get(field.local) != Some(value)
        {
            changes.insert(field.local.to_owned(), value.clone());
            changed.push(field.local);
        }
    }
    if changed.is_empty() {
        return Ok(Ok(()));
    }
    let newest = changed.iter().filter_map(|f| stored.get(*f)).max_by_key(|v| v.stamp);
    let version = local_version(ctx, newest, event_id);
    changes.insert("updated_at".into(), now_json());
    changes.insert("crm_sync_status".into(), Value::String("pending".into()));
    match records::update(c, t, &local, changes).await {
        Err(DbErr::Json(message)) => return Ok(Err(Rejected::Invalid(message))),
        other => other?,
    }
    stamps::set_field_versions(c, t, &local.id, &changed, &version).await?;
    outbox::enqueue(c, t, &local.id, Operation::Upsert, Some(&changed), event_id).await?;
    Ok(Ok(()))
}

async fn delete(
    c: &DatabaseTransaction,
    ctx: &SyncContext,
    t: RecordType,
    local: Local,
    event_id: Option<&str>,
) -> Result<(), DbErr> {
    let mut changes = Map::new();
    changes.insert("deleted_at".into(), now_json());
    changes.insert("updated_at".into(), now_json());
    records::update(c, t, &local, changes).await?;
    let version = local_version(ctx, None, event_id);
    match local.crm_id() {
        Some(crm_id) => {
            stamps::set_tombstone(c, t, crm_id, Some(&local.id), &version).await?;
            outbox::enqueue(c, t, &local.id, Operation::Delete, None, event_id).await?;
        }
        // Never reached the CRM: its queued create must not go out. If the create is being sent
        // right now, queue the delete behind it (it waits until the create has its crm_id).
        None => {
            outbox::cancel_pending(c, t, &local.id).await?;
            if outbox::in_flight(c, t, &local.id).await? {
                outbox::enqueue(c, t, &local.id, Operation::Delete, None, event_id).await?;
            }
        }
    }
    Ok(())
}
