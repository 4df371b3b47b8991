//! The site's v1 routes, with the seed's paths and JSON shapes: manual and bulk sync, sync status,
//! profile updates and owner registration.

use super::changes::{self, LocalChange, Rejected};
use super::outbox;
use crate::error::{ApiError, resource};
use crate::state::AppState;
use crate::sync::mapping::RecordType;
use crate::sync::records::{self, Local};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use entity::user;
use futures_util::future::BoxFuture;
use sea_orm::{DatabaseTransaction, DbErr};
use serde::Deserialize;
use serde_json::{Map, Value, json};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/crm/sync/owner", "GET, POST").route(web::post().to(sync_owner)).route(web::get().to(owner_status)),
    )
    .service(resource("/crm/sync/property", "POST").route(web::post().to(sync_property)))
    .service(resource("/crm/sync/bulk", "POST").route(web::post().to(sync_bulk)))
    .service(resource("/owner/profile", "PUT").route(web::put().to(update_profile)))
    .service(resource("/owner/register", "POST").route(web::post().to(register)));
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed", message)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OwnerRef {
    user_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PropertyRef {
    property_id: Option<Value>,
}

/// Queues (or makes due now) the record's delivery, delivers it, and says how it went.
async fn sync_now(
    state: &AppState,
    t: RecordType,
    id: String,
) -> Result<(bool, Option<String>, Option<String>), ApiError> {
    let row_id = outbox::queue_now(&state.writer, t, id.clone()).await?;
    state.delivery.deliver_rows(vec![row_id]).await?;
    let local = records::find_by_id(state.db.reader(), t, &id).await?;
    let crm_id = local.as_ref().and_then(|l| l.crm_id().map(str::to_owned));
    let synced = local.as_ref().is_some_and(Local::is_synced);
    let error = outbox::last_error(state.db.reader(), row_id).await?;
    Ok((synced, crm_id, error))
}

fn sync_answer(what: &str, synced: bool, crm_id: Option<String>, error: Option<String>) -> HttpResponse {
    if synced {
        HttpResponse::Ok()
            .json(json!({ "success": true, "message": format!("{what} synced to CRM successfully"), "crmId": crm_id }))
    } else {
        HttpResponse::BadGateway().json(json!({
            "success": false,
            "message": format!("{what} sync to CRM failed; it stays queued and is retried"),
            "error": { "code": "crm_sync_failed", "message": error.unwrap_or_else(|| "the CRM did not accept the record".into()) },
        }))
    }
}

async fn owner(state: &AppState, user_id: &str) -> Result<user::Model, ApiError> {
    records::live_owner(state.db.reader(), user_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no user {user_id:?}")))
}

fn required_user_id(user_id: Option<String>) -> Result<String, ApiError> {
    user_id
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| ApiError::bad_request("invalid_request", "userId is required"))
}

async fn sync_owner(body: web::Json<OwnerRef>, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let user_id = required_user_id(body.into_inner().user_id)?;
    let user = owner(&state, &user_id).await?;
    if user.crm_id.is_some() && user.crm_sync_status == entity::enums::CrmSyncStatus::Synced {
        return Ok(HttpResponse::Ok()
            .json(json!({ "success": true, "message": "Owner already synced to CRM", "crmId": user.crm_id })));
    }
    let (synced, crm_id, error) = sync_now(&state, RecordType::Contact, user.id).await?;
    Ok(sync_answer("Owner", synced, crm_id, error))
}

async fn owner_status(query: web::Query<OwnerRef>, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let user_id = required_user_id(query.into_inner().user_id)?;
    let user = owner(&state, &user_id).await?;
    let last = user
        .crm_last_synced_at
        .and_then(DateTime::<Utc>::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    Ok(HttpResponse::Ok().json(json!({
        "userId": user.id, "crmId": user.crm_id, "syncStatus": user.crm_sync_status, "lastSyncedAt": last,
    })))
}

async fn sync_property(body: web::Json<PropertyRef>, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let id = match body.into_inner().property_id {
        Some(Value::Number(n)) if n.is_i64() => n.as_i64().unwrap_or_default(),
        Some(Value::String(s)) if s.parse::<i64>().is_ok() => s.parse().unwrap_or_default(),
        _ => return Err(ApiError::bad_request("invalid_request", "propertyId is required (a number)")),
    };
    let property = records::live_property(state.db.reader(), id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no property {id}")))?;
    if property.crm_id.is_some() && property.crm_sync_status == entity::enums::CrmSyncStatus::Synced {
        return Ok(HttpResponse::Ok()
            .json(json!({ "success": true, "message": "Property already synced to CRM", "crmId": property.crm_id })));
    }
    let (synced, crm_id, error) = sync_now(&state, RecordType::Property, id.to_string()).await?;
    Ok(sync_answer("Property", synced, crm_id, error))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Bulk {
    sync_type: Option<String>,
}

async fn sync_bulk(body: web::Json<Bulk>, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let types: &[(RecordType, &str)] = match body.sync_type.as_deref() {
        Some("owners") => &[(RecordType::Contact, "owners")],
        Some("properties") => &[(RecordType::Property, "properties")],
        Some("all") => &[(RecordType::Contact, "owners"), (RecordType::Property, "properties")],
        other => return Err(invalid(format!("syncType: expected owners, properties or all, got {other:?}"))),
    };
    let mut results = Map::new();
    for (t, name) in types {
        results.insert((*name).to_owned(), bulk_one(&state, *t).await?);
    }
    Ok(HttpResponse::Ok().json(json!({ "success": true, "message": "Bulk sync completed", "results": results })))
}

/// Syncs every live record of one type that is not synced; counts synced, failed and skipped.
async fn bulk_one(state: &AppState, t: RecordType) -> Result<Value, ApiError> {
    let (ids, skipped) = records::not_synced(state.db.reader(), t).await?;
    let rows = outbox::queue_all(&state.writer, t, ids.clone()).await?;
    state.delivery.deliver_rows(rows).await?;
    let mut synced = 0;
    for id in &ids {
        let local = records::find_by_id(state.db.reader(), t, id).await?;
        if local.as_ref().is_some_and(Local::is_synced) {
            synced += 1;
        }
    }
    Ok(json!({ "synced": synced, "failed": ids.len() - synced, "skipped": skipped }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Profile {
    user_id: Option<String>,
    name: Option<String>,
    phone: Option<Value>,
    company_name: Option<Value>,
    membership_status: Option<String>,
}

async fn update_profile(body: web::Json<Profile>, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let profile = body.into_inner();
    let user_id = required_user_id(profile.user_id)?;
    let mut values = Map::new();
    if let Some(name) = profile.name {
        if name.trim().is_empty() {
            return Err(invalid("name: must not be empty"));
        }
        values.insert("name".into(), Value::String(name.trim().to_owned()));
    }
    for (column, value) in [("phone", profile.phone), ("company_name", profile.company_name)] {
        match value {
            None => {}
            Some(v @ (Value::Null | Value::String(_))) => {
                values.insert(column.into(), v);
            }
            Some(_) => return Err(invalid(format!("{column}: expected text or null"))),
        }
    }
    if let Some(status) = profile.membership_status {
        if !matches!(status.as_str(), "active" | "pending" | "inactive") {
            return Err(invalid(format!("membershipStatus: expected active, pending or inactive, got {status:?}")));
        }
        values.insert("membership_status".into(), Value::String(status));
    }
    owner(&state, &user_id).await?;
    let change =
        LocalChange { record_type: RecordType::Contact, id: user_id.clone(), values, create: false, delete: false };
    apply_change(&state, change).await?;
    let user = owner(&state, &user_id).await?;
    Ok(HttpResponse::Ok().json(json!({
        "success": true,
        "message": "Profile updated successfully",
        "user": { "id": user.id, "name": user.name, "email": user.email, "crmSyncStatus": user.crm_sync_status },
    })))
}

async fn apply_change(state: &AppState, change: LocalChange) -> Result<(), ApiError> {
    let outcome = state
        .writer
        .run_retrying(|| {
            let (change, sync) = (change.clone(), state.sync.clone());
            move |txn: &DatabaseTransaction| -> BoxFuture<'_, Result<Result<(), Rejected>, DbErr>> {
                Box::pin(async move { changes::apply(txn, &sync, change, None).await })
            }
        })
        .await?;
    outcome.map_err(rejection)?;
    state.delivery.wake.notify_one();
    Ok(())
}

/// A change the rules refused, as the client sees it.
fn rejection(rejected: Rejected) -> ApiError {
    rejected.to_api_error(None)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Registration {
    name: Option<String>,
    email: Option<String>,
    phone: Option<String>,
    company_name: Option<String>,
    user_id: Option<String>,
}

async fn register(body: web::Json<Registration>, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let r = body.into_inner();
    let name =
        r.name.map(|n| n.trim().to_owned()).filter(|n| !n.is_empty()).ok_or_else(|| invalid("name: required"))?;
    let email = r.email.map(|e| e.trim().to_owned()).filter(|e| e.contains('@') && !e.contains(char::is_whitespace));
    let email = email.ok_or_else(|| invalid("email: a valid email address is required"))?;
    let id =
        r.user_id.filter(|s| !s.trim().is_empty()).unwrap_or_else(|| format!("user_{}", uuid::Uuid::now_v7().simple()));
    let values = Map::from_iter([
        ("name".to_owned(), Value::String(name)),
        ("email".to_owned(), Value::String(email)),
        ("phone".to_owned(), r.phone.map_or(Value::Null, Value::String)),
        ("company_name".to_owned(), r.company_name.map_or(Value::Null, Value::String)),
        ("role".to_owned(), Value::String("owner".into())),
        ("membership_status".to_owned(), Value::String("pending".into())),
    ]);
    let change = LocalChange { record_type: RecordType::Contact, id: id.clone(), values, create: true, delete: false };
    let outcome = state
        .writer
        .run_retrying(|| {
            let (change, sync) = (change.clone(), state.sync.clone());
            move |txn: &DatabaseTransaction| -> BoxFuture<'_, Result<Result<(), ApiError>, DbErr>> {
                Box::pin(async move {
                    // Checked in the writer, so two registrations racing cannot both pass (the
                    // email is checked by `changes::apply`, in the writer too; another instance's
                    // registration of it shows when the job runs again).
                    if records::find_by_id(txn, RecordType::Contact, &change.id).await?.is_some() {
                        return Ok(Err(ApiError::new(
                            StatusCode::CONFLICT,
                            "user_exists",
                            format!("userId: {} exists already", change.id),
                        )));
                    }
                    Ok(changes::apply(txn, &sync, change, None).await?.map_err(rejection))
                })
            }
        })
        .await?;
    outcome?;
    state.delivery.wake.notify_one();
    let user = owner(&state, &id).await?;
    Ok(HttpResponse::Created().json(json!({
        "success": true,
        "message": "Owner registered successfully",
        "user": {
            "id": user.id, "name": user.name, "email": user.email, "phone": user.phone,
            "companyName": user.company_name, "role": user.role, "membershipStatus": user.membership_status,
            "crmSyncStatus": user.crm_sync_status,
        },
    })))
}
