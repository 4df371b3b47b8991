//! Sending one claimed row: building its TreadSoft payload (references resolved), and the
//! PATCH, DELETE or batch upsert that carries it.

use super::{Attempt, BATCH, Delivery, PARENT_WAIT};
use crate::crm::CrmError;
use crate::outbound::outbox;
use crate::sync::mapping::{Kind, RecordType, local_to_crm};
use crate::sync::records::{self, Local};
use entity::crm_outbox;
use entity::enums::OutboxOperation;
use sea_orm::DbErr;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};

/// The records a batch of claimed rows of one type sends, and the parents their references
/// name, read together (one statement per table, not one per row).
pub(super) struct Loaded(HashMap<(RecordType, String), Local>);

impl Loaded {
    fn get(&self, t: RecordType, id: &str) -> Option<&Local> {
        self.0.get(&(t, id.to_owned()))
    }
}

/// The id a reference field's value names.
fn ref_id(value: &Value) -> String {
    value.as_str().map_or_else(|| value.to_string(), str::to_owned)
}

impl Delivery {
    /// Reads the records `rows` (of type `t`) send, and their parents.
    pub(super) async fn load(&self, t: RecordType, rows: &[crm_outbox::Model]) -> Result<Loaded, DbErr> {
        let ids: Vec<String> = rows.iter().map(|row| row.record_id.clone()).collect();
        let found = records::read_many(self.db.reader(), t, &ids).await?;
        let mut parents: BTreeMap<RecordType, Vec<String>> = BTreeMap::new();
        for local in found.values() {
            for field in t.fields() {
                if let Kind::Ref(target) | Kind::OptRef(target) = field.kind
                    && let Some(value) = local.values.get(field.local).filter(|v| !v.is_null())
                {
                    parents.entry(target).or_default().push(ref_id(value));
                }
            }
        }
        let mut loaded: HashMap<(RecordType, String), Local> =
            found.into_iter().map(|(id, local)| ((t, id), local)).collect();
        for (target, ids) in parents {
            let found = records::read_many(self.db.reader(), target, &ids).await?;
            loaded.extend(found.into_iter().map(|(id, local)| ((target, id), local)));
        }
        Ok(Loaded(loaded))
    }

    /// Builds what a row sends (its record and parents from `loaded`); sends it unless it is a
    /// create (those go out in batches).
    pub(super) async fn prepare(
        &self,
        t: RecordType,
        row: &crm_outbox::Model,
        loaded: &Loaded,
    ) -> Result<Prepared, DbErr> {
        if !self.crm.syncs(t) {
            return Ok(Prepared::Sent(Attempt::Skipped(format!(
                "{} records are not synced (the mapping)",
                t.as_str()
            ))));
        }
        let Some(local) = loaded.get(t, &row.record_id).cloned() else {
            return Ok(Prepared::Sent(Attempt::Skipped("the local record no longer exists".into())));
        };
        let crm_id = local.crm_id().map(str::to_owned);
        match (row.operation, crm_id) {
            (OutboxOperation::Delete, None) => Ok(Prepared::Sent(Attempt::Skipped("never reached the CRM".into()))),
            (OutboxOperation::Delete, Some(crm_id)) => Ok(Prepared::Sent(self.delete(t, &crm_id).await)),
            (OutboxOperation::Link, None) => Ok(Prepared::Sent(Attempt::Skipped("not linked to a CRM record".into()))),
            (OutboxOperation::Link, Some(crm_id)) => {
                let payload = Map::from_iter([("externalId".to_owned(), Value::String(local.id.clone()))]);
                Ok(Prepared::Sent(self.patch(t, &crm_id, payload).await))
            }
            _ if local.is_deleted() => Ok(Prepared::Sent(Attempt::Skipped("the record was deleted".into()))),
            (_, crm_id) => {
                let fields: Option<Vec<String>> = row.fields.as_deref().and_then(|f| serde_json::from_str(f).ok());
                let payload = match self.payload(t, &local, fields.as_deref(), loaded).await? {
                    Ok(payload) => payload,
                    Err(attempt) => return Ok(Prepared::Sent(attempt)),
                };
                match crm_id {
                    Some(crm_id) => Ok(Prepared::Sent(self.patch(t, &crm_id, payload).await)),
                    None => {
                        // A create sends the whole record, whatever fields the row lists.
                        let full = match self.payload(t, &local, None, loaded).await? {
                            Ok(full) => full,
                            Err(attempt) => return Ok(Prepared::Sent(attempt)),
                        };
                        Ok(Prepared::Create(local, full))
                    }
                }
            }
        }
    }

    /// TreadSoft fields for `fields` of `local` (all when `None`), with references resolved.
    async fn payload(
        &self,
        t: RecordType,
        local: &Local,
        fields: Option<&[String]>,
        loaded: &Loaded,
    ) -> Result<Result<Map<String, Value>, Attempt>, DbErr> {
        if t == RecordType::Contact && local.values.get("role").and_then(Value::as_str) == Some("admin") {
            return Ok(Err(Attempt::Skipped("admins are not synced to the CRM".into())));
        }
        let mut out = Map::new();
        for field in t.fields().iter().filter(|f| fields.is_none_or(|list| list.iter().any(|n| n == f.local))) {
            let value = local.values.get(field.local).cloned().unwrap_or(Value::Null);
            let parent_crm_id = match field.kind {
                Kind::Ref(target) | Kind::OptRef(target) if !value.is_null() => {
                    let parent_id = ref_id(&value);
                    let parent = loaded.get(target, &parent_id);
                    let dead = match parent {
                        Some(p) if p.crm_id().is_none() => {
                            outbox::dead_lettered(self.db.reader(), target, &p.id).await?
                        }
                        _ => false,
                    };
                    match parent.and_then(Local::crm_id) {
                        Some(crm_id) => Some(crm_id.to_owned()),
                        // Its parent's create was dead-lettered: waiting would never end.
                        None if dead => {
                            return Ok(Err(Attempt::Failed {
                                error: CrmError::ParentFailed {
                                    message: format!(
                                        "{} {parent_id} failed to reach the CRM: retry it, then this",
                                        target.as_str()
                                    ),
                                },
                                action: "create",
                                request: Value::Null,
                            }));
                        }
                        None => {
                            return Ok(Err(Attempt::Later(
                                PARENT_WAIT,
                                format!("waiting for {} {parent_id} to reach the CRM", target.as_str()),
                            )));
                        }
                    }
                }
                _ => None,
            };
            out.extend(local_to_crm(field, &value, parent_crm_id.as_deref()));
        }
        out.insert("externalId".into(), Value::String(local.id.clone()));
        Ok(Ok(out))
    }

    async fn patch(&self, t: RecordType, crm_id: &str, payload: Map<String, Value>) -> Attempt {
        let request = Value::Object(payload.clone());
        let result = self.crm.update(t, crm_id, &payload).await;
        self.breaker.observe(result.as_ref().map(drop));
        match result {
            Ok(written) => Attempt::Done {
                crm_id: Some(written.record.id.clone()),
                request_id: written.request_id,
                action: "update",
                request,
                response: record_json(&written.record),
                answered: written.record.updated_at.map(|at| (at.timestamp_millis(), written.record.version)),
            },
            Err(error) => Attempt::Failed { error, action: "update", request },
        }
    }

    async fn delete(&self, t: RecordType, crm_id: &str) -> Attempt {
        let request = json!({ "id": crm_id });
        let result = self.crm.delete(t, crm_id).await;
        self.breaker.observe(result.as_ref().map(drop));
        match result {
            Ok(request_id) => Attempt::Done {
                crm_id: None,
                request_id,
                action: "delete",
                request,
                response: Value::Null,
                answered: None,
            },
            Err(CrmError::NotFound { .. }) => Attempt::Done {
                crm_id: None,
                request_id: None,
                action: "delete",
                request,
                response: json!({ "note": "already deleted in the CRM" }),
                answered: None,
            },
            Err(error) => Attempt::Failed { error, action: "delete", request },
        }
    }

    /// Creates new records with batch upserts keyed by `externalId` (safe to repeat: a retry
    /// updates what a timed-out attempt created). A contact TreadSoft already has by email is
    /// linked to that contact and updated.
    pub(super) async fn create_batch(&self, t: RecordType, rows: Vec<Create>) -> Vec<(crm_outbox::Model, Attempt)> {
        let mut results = Vec::with_capacity(rows.len());
        let mut rows = rows.into_iter().peekable();
        while rows.peek().is_some() {
            let chunk: Vec<_> = rows.by_ref().take(BATCH as usize).collect();
            let payloads: Vec<Map<String, Value>> = chunk.iter().map(|(_, _, p)| p.clone()).collect();
            let key = idempotency_key(&payloads);
            let result = self.crm.batch_upsert(t, &payloads, &key).await;
            self.breaker.observe(result.as_ref().map(drop));
            match result {
                Err(error) => {
                    for (row, _, payload) in chunk {
                        let attempt =
                            Attempt::Failed { error: error.clone(), action: "create", request: Value::Object(payload) };
                        results.push((row, attempt));
                    }
                }
                Ok((items, request_id)) => {
                    for (row, local, payload) in chunk {
                        let item = items.iter().find(|i| i.external_id == local.id);
                        let attempt = match item {
                            Some(item) if item.status != "error" && item.id.is_some() => Attempt::Done {
                                crm_id: item.id.clone(),
                                request_id: request_id.clone(),
                                action: "create",
                                request: Value::Object(payload),
                                response: json!({ "id": item.id, "status": item.status }),
                                answered: None,
                            },
                            Some(item) => match item.error.as_ref().and_then(|e| e.existing_id.clone()) {
                                Some(existing) => match records::find_by_crm_id(self.db.reader(), t, &existing).await {
                                    Ok(Some(other)) if other.id != local.id => Attempt::Failed {
                                        error: CrmError::Permanent {
                                            status: 409,
                                            code: "duplicate".into(),
                                            message: format!(
                                                "TreadSoft has this email as {existing}, which is linked to {} {}",
                                                t.as_str(),
                                                other.id
                                            ),
                                        },
                                        action: "create",
                                        request: Value::Object(payload),
                                    },
                                    Ok(_) => self.patch(t, &existing, payload).await,
                                    Err(e) => Attempt::Later(PARENT_WAIT, format!("database error: {e}")),
                                },
                                None => {
                                    let e = item.error.clone().unwrap_or_default();
                                    // A record's own 429 or 5xx in a partial answer: only it is sent again.
                                    let error = match e.status {
                                        Some(s) if s == 429 || s >= 500 => CrmError::Transient {
                                            status: Some(s),
                                            message: e.message,
                                            retry_after: None,
                                        },
                                        s => CrmError::Permanent {
                                            status: s.unwrap_or(422),
                                            code: e.code,
                                            message: e.message,
                                        },
                                    };
                                    Attempt::Failed { error, action: "create", request: Value::Object(payload) }
                                }
                            },
                            None => Attempt::Failed {
                                error: CrmError::Transient {
                                    status: None,
                                    message: "the batch answer left this record out".into(),
                                    retry_after: None,
                                },
                                action: "create",
                                request: Value::Object(payload),
                            },
                        };
                        results.push((row, attempt));
                    }
                }
            }
        }
        results
    }
}

/// The `Idempotency-Key` for a request body: derived from the body, so a retry of the same request
/// is recognised by TreadSoft (the first answer comes back, nothing is created twice), while a
/// request whose body changed meanwhile (a coalesced edit) gets a new key instead of TreadSoft's
/// `422 idempotency_mismatch`. Batch upserts are keyed by `externalId` as well, so even then no
/// record is created twice.
fn idempotency_key(payloads: &[Map<String, Value>]) -> String {
    use sha2::{Digest, Sha256};
    let body = serde_json::to_vec(payloads).unwrap_or_default();
    format!("cgw-{}", hex::encode(&Sha256::digest(&body)[..16]))
}

/// A row whose record does not exist in the CRM yet, with the record and its whole payload.
pub(super) type Create = (crm_outbox::Model, Local, Map<String, Value>);

pub(super) enum Prepared {
    Create(Local, Map<String, Value>),
    Sent(Attempt),
}

fn record_json(record: &crate::crm::CrmRecord) -> Value {
    let mut fields = record.fields.clone();
    fields.insert("id".into(), Value::String(record.id.clone()));
    Value::Object(fields)
}
