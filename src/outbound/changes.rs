//! Applying a change the site made: the record is written with fresh version stamps from the
//! hybrid logical clock and its delivery queued, in one transaction, so nothing acknowledged is lost.

use super::outbox::Operation;
use crate::error::ApiError;
use crate::sync::apply::SyncContext;
use crate::sync::lww::{Origin, Version};
use crate::sync::mapping::{Kind, NUL_MESSAGE, RecordType, check_local, nul_at};
use crate::sync::records;
use crate::sync::view::{View, Wanted};
use actix_web::http::StatusCode;
use chrono::Utc;
use sea_orm::{DatabaseTransaction, DbErr, TransactionTrait};
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

/// Applies `change` and queues its delivery, in a savepoint of its own; `Ok(Err(_))` is a
/// rejection that wrote nothing.
pub async fn apply(
    c: &DatabaseTransaction,
    ctx: &SyncContext,
    change: LocalChange,
    event_id: Option<&str>,
) -> Result<Result<(), Rejected>, DbErr> {
    let savepoint = c.begin().await?;
    let mut view = View::new(&savepoint);
    let mut applied = apply_in(&mut view, ctx, change, event_id).await?;
    if applied.is_ok() {
        match view.flush().await {
            Ok(()) => {}
            // A value the model cannot take (the checks before let it through).
            Err(DbErr::Json(message)) => applied = Err(Rejected::Invalid(message)),
            Err(e) => return Err(e),
        }
    }
    match applied {
        Ok(()) => savepoint.commit().await?,
        Err(_) => savepoint.rollback().await?,
    }
    Ok(applied)
}

/// Notes what applying `change` reads, for [`View::prefetch`].
pub(crate) fn wanted(change: &LocalChange, wanted: &mut Wanted) {
    wanted.record(change.record_type, &change.id);
    if change.record_type == RecordType::Contact
        && let Some(email) = change.values.get("email").and_then(Value::as_str)
    {
        wanted.email(email);
    }
}

/// [`apply`] in `view`, which the caller flushes; `Ok(Err(_))` is a rejection, after which the
/// view holds part of the change and must not be flushed.
pub(crate) async fn apply_in(
    view: &mut View<'_, DatabaseTransaction>,
    ctx: &SyncContext,
    change: LocalChange,
    event_id: Option<&str>,
) -> Result<Result<(), Rejected>, DbErr> {
    if let Err(rejected) = change.validate() {
        return Ok(Err(rejected));
    }
    let t = change.record_type;
    if t == RecordType::Contact
        && let Some(email) = change.values.get("email").and_then(Value::as_str)
        && let Some(other) = view.find_user_by_email(email).await?
        && view.local(other).id != change.id
    {
        return Ok(Err(Rejected::EmailTaken { existing_id: view.local(other).id.clone() }));
    }
    let existing = view.find_by_id(t, &change.id).await?;
    match existing {
        Some(_) if change.create => Ok(Err(Rejected::Exists(format!(
            "{} {} exists already; send an update to change it",
            t.as_str(),
            change.id
        )))),
        None if change.delete => Ok(Err(Rejected::NotFound(format!("no {} {}", t.as_str(), change.id)))),
        None => create(view, ctx, change, event_id).await,
        Some(i) if view.local(i).is_deleted() => {
            if change.delete {
                Ok(Ok(()))
            } else {
                Ok(Err(Rejected::Invalid(format!("{} {} was deleted", t.as_str(), change.id))))
            }
        }
        Some(i) if change.delete => delete(view, ctx, i, event_id).await.map(Ok),
        Some(i) => update(view, ctx, i, change.values, event_id).await,
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
    view: &mut View<'_, DatabaseTransaction>,
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
    let i = view.insert(t, values).await?;
    let fields: Vec<&'static str> = t.fields().iter().map(|f| f.local).collect();
    let version = local_version(ctx, None, event_id);
    view.set_field_versions(i, &fields, &version);
    view.enqueue(i, Operation::Upsert, None, event_id).await?;
    Ok(Ok(()))
}

async fn update(
    view: &mut View<'_, DatabaseTransaction>,
    ctx: &SyncContext,
    i: usize,
    values: Map<String, Value>,
    event_id: Option<&str>,
) -> Result<Result<(), Rejected>, DbErr> {
    let stored = view.field_versions(i).await?.clone();
    let local = view.local(i);
    let mut changes = Map::new();
    let mut changed = Vec::new();
    for field in view.record_type(i).fields() {
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
    view.update(i, changes);
    view.set_field_versions(i, &changed, &version);
    view.enqueue(i, Operation::Upsert, Some(&changed), event_id).await?;
    Ok(Ok(()))
}

async fn delete(
    view: &mut View<'_, DatabaseTransaction>,
    ctx: &SyncContext,
    i: usize,
    event_id: Option<&str>,
) -> Result<(), DbErr> {
    let mut changes = Map::new();
    changes.insert("deleted_at".into(), now_json());
    changes.insert("updated_at".into(), now_json());
    view.update(i, changes);
    let version = local_version(ctx, None, event_id);
    let (t, local) = (view.record_type(i), view.local(i).clone());
    match local.crm_id() {
        Some(crm_id) => {
            view.set_tombstone(t, crm_id, Some(&local.id), &version);
            view.enqueue(i, Operation::Delete, None, event_id).await?;
        }
        // Never reached the CRM: its queued create must not go out. If the create is being sent
        // right now, queue the delete behind it (it waits until the create has its crm_id).
        None => {
            view.cancel_pending(i).await?;
            if view.in_flight(i).await? {
                view.enqueue(i, Operation::Delete, None, event_id).await?;
            }
        }
    }
    Ok(())
}
