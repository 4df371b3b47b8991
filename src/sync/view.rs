//! The state a group of inbound events is applied against, held in memory for the group.
//!
//! Applying an event reads records (by CRM id, local id or email), tombstones, field stamps, the
//! gateway's own requests and the records' undelivered changes, and writes records, stamps,
//! tombstones, link-backs and sync log rows. Done one event at a time, each read and write is a
//! statement: a dozen or more per event, each a round trip. A [`View`] instead loads what every
//! event of the group will read with a few set queries ([`View::prefetch`]), lets the rules read
//! and change it in memory (so the events of one record within a group see each other's effects,
//! in order), and writes everything with a few multi-row statements ([`View::flush`]).
//!
//! Anything not prefetched is loaded on first use, one statement for it, so the rules never
//! depend on what was prefetched: the prefetch is only what makes a group cheap. Rows are read
//! `FOR UPDATE` on PostgreSQL, as one at a time would be.

use super::lww::Version;
use super::mapping::{Kind, RecordType};
use super::records::{self, Local};
use super::stamps::{self, Key};
use crate::outbound::outbox;
use entity::enums::OutboxStatus;
use entity::{crm_inbox, crm_outbox, crm_requests, crm_sent_values, crm_sync_logs, user};
use sea_orm::{ActiveModelTrait, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, TryIntoModel};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// As stored.
    Clean,
    /// Stored, and changed here.
    Dirty,
    /// Not stored yet.
    New,
}

struct Slot {
    t: RecordType,
    local: Local,
    state: State,
    /// The indexed columns changed here ([`records::changed_indexed`]): of the indexed columns,
    /// only these are written back.
    reindexed: records::Reindexed,
}

/// A group's records and sync state, read once and written once. See the module documentation.
pub(crate) struct View<'c, C> {
    pub(crate) c: &'c C,
    slots: Vec<Slot>,
    by_id: HashMap<Key, usize>,
    /// `None`: known not to exist.
    by_crm_id: HashMap<Key, Option<usize>>,
    by_email_key: HashMap<String, Option<usize>>,
    absent_ids: HashSet<Key>,
    tombstones: HashMap<Key, Option<Version>>,
    new_tombstones: BTreeMap<Key, (Option<String>, Version)>,
    /// Values sent that the CRM has since replaced: no longer what an echo would carry (each
    /// with the hash read, when known, so that a newer value sent meanwhile stays).
    forgotten_sent: Vec<(String, Option<String>)>,
    versions: HashMap<Key, HashMap<String, Version>>,
    /// Records whose stamps changed: each is written whole at [`Self::flush`].
    changed_versions: BTreeSet<Key>,
    /// Records stamped before their stored stamps were read: those are read and kept under the
    /// new ones at [`Self::flush`], so that no stored stamp is written over with nothing.
    unread_versions: BTreeSet<Key>,
    /// Each request's fields and, for a value sent, its hash.
    requests: HashMap<String, Option<OwnRequest>>,
    undelivered: HashMap<Key, Vec<crm_outbox::Model>>,
    /// Events waiting for a parent, by waiting key; `waiting_loaded` says which keys' stored ones are in.
    waiting: HashMap<String, Vec<crm_inbox::Model>>,
    waiting_loaded: HashSet<String>,
    link_backs: Vec<crm_outbox::ActiveModel>,
    logs: Vec<crm_sync_logs::ActiveModel>,
    /// Outbox rows queued or merged into here (by id; new ones have negative ids until written).
    outbox_changed: BTreeSet<i64>,
    next_new_row: i64,
    /// Records whose pending deliveries are dropped.
    cancelled: Vec<Key>,
    /// Tables given ids by the site here: PostgreSQL's sequence is moved past them.
    ids_given: BTreeSet<RecordType>,
}

/// What [`View::prefetch`] reads, taken from the events about to be applied.
#[derive(Default)]
pub(crate) struct Wanted {
    crm_ids: BTreeMap<RecordType, Vec<String>>,
    ids: BTreeMap<RecordType, Vec<String>>,
    email_keys: Vec<String>,
    tombstones: Vec<Key>,
    requests: Vec<String>,
}

impl Wanted {
    /// Notes what applying TreadSoft event `raw` reads.
    pub(crate) fn event(&mut self, raw: &Value) {
        if super::mapping::nul_at(raw).is_some() {
            return; // it fails before it reads anything
        }
        let text = |pointer: &str| raw.pointer(pointer).and_then(Value::as_str);
        let Some(t) = text("/object/type").and_then(RecordType::parse) else { return };
        if let Some(crm_id) = text("/object/id") {
            self.crm_ids.entry(t).or_default().push(crm_id.to_owned());
            self.tombstones.push((t, crm_id.to_owned()));
        }
        if let Some(id) = text("/object/externalId") {
            self.ids.entry(t).or_default().push(id.to_owned());
        }
        if t == RecordType::Contact
            && let Some(email) = text("/object/data/email")
        {
            self.email_keys.push(user::email_key(email));
        }
        if let (Some("api"), Some(request)) = (text("/changeSource"), text("/requestId")) {
            self.requests.push(request.to_owned());
        }
        if let Some((key, _)) = text("/echoOf").and_then(super::echo::split) {
            self.requests.push(key.to_owned());
        }
        for field in t.fields() {
            if let Kind::Ref(target) | Kind::OptRef(target) = field.kind
                && let Some(parent) = raw.pointer(&format!("/object/data/{}", field.crm[0])).and_then(Value::as_str)
            {
                self.crm_ids.entry(target).or_default().push(parent.to_owned());
            }
        }
    }

    /// Notes that record `id` of `t` will be read.
    pub(crate) fn record(&mut self, t: RecordType, id: &str) {
        self.ids.entry(t).or_default().push(id.to_owned());
    }

    /// Notes that the user with `email` will be looked for.
    pub(crate) fn email(&mut self, email: &str) {
        self.email_keys.push(user::email_key(email));
    }
}

impl<'c, C: ConnectionTrait> View<'c, C> {
    pub(crate) fn new(c: &'c C) -> Self {
        Self {
            c,
            slots: Vec::new(),
            by_id: HashMap::new(),
            by_crm_id: HashMap::new(),
            by_email_key: HashMap::new(),
            absent_ids: HashSet::new(),
            tombstones: HashMap::new(),
            new_tombstones: BTreeMap::new(),
            forgotten_sent: Vec::new(),
            versions: HashMap::new(),
            changed_versions: BTreeSet::new(),
            unread_versions: BTreeSet::new(),
            requests: HashMap::new(),
            undelivered: HashMap::new(),
            waiting: HashMap::new(),
            waiting_loaded: HashSet::new(),
            link_backs: Vec::new(),
            logs: Vec::new(),
            outbox_changed: BTreeSet::new(),
            next_new_row: -1,
            cancelled: Vec::new(),
            ids_given: BTreeSet::new(),
        }
    }

    /// Loads, with a few set queries, what `wanted` names and is not loaded yet: records and
    /// their stamps and undelivered changes, tombstones and requests.
    pub(crate) async fn prefetch(&mut self, wanted: Wanted) -> Result<(), DbErr> {
        let mut email_keys = unique(wanted.email_keys.into_iter().filter(|k| !self.by_email_key.contains_key(k)));
        for t in RecordType::ALL {
            let crm_ids = unique(
                wanted
                    .crm_ids
                    .get(&t)
                    .into_iter()
                    .flatten()
                    .filter(|id| !self.by_crm_id.contains_key(&(t, (*id).clone())))
                    .cloned(),
            );
            let ids = unique(
                wanted
                    .ids
                    .get(&t)
                    .into_iter()
                    .flatten()
                    .filter(|id| {
                        let key = (t, (*id).clone());
                        !self.by_id.contains_key(&key) && !self.absent_ids.contains(&key)
                    })
                    .cloned(),
            );
            let emails = if t == RecordType::Contact { std::mem::take(&mut email_keys) } else { Vec::new() };
            if crm_ids.is_empty() && ids.is_empty() && emails.is_empty() {
                continue;
            }
            for local in records::find_many(self.c, t, &crm_ids, &ids, &emails).await? {
                self.admit(t, local);
            }
            // What was asked for and not found does not exist.
            for crm_id in crm_ids {
                self.by_crm_id.entry((t, crm_id)).or_insert(None);
            }
            for id in ids {
                if !self.by_id.contains_key(&(t, id.clone())) {
                    self.absent_ids.insert((t, id));
                }
            }
            for key in emails {
                self.by_email_key.entry(key).or_insert(None);
            }
        }
        let tombstones: Vec<Key> = unique(wanted.tombstones.into_iter().filter(|k| !self.tombstones.contains_key(k)));
        if !tombstones.is_empty() {
            let mut found = stamps::tombstones_of(self.c, &tombstones).await?;
            for key in tombstones {
                let stamp = found.remove(&key);
                self.tombstones.insert(key, stamp);
            }
        }
        let requests: Vec<String> = unique(wanted.requests.into_iter().filter(|r| !self.requests.contains_key(r)));
        let (sent, requests): (Vec<String>, Vec<String>) = requests.into_iter().partition(|r| r.starts_with("sent:"));
        if !requests.is_empty() {
            let rows = crm_requests::Entity::find()
                .filter(crm_requests::Column::RequestId.is_in(requests.iter().map(String::as_str)))
                .all(self.c)
                .await?;
            for request in requests {
                self.requests.insert(request, None);
            }
            for row in rows {
                let fields = serde_json::from_str(&row.fields).unwrap_or_default();
                self.requests.insert(row.request_id, Some((fields, None)));
            }
        }
        if !sent.is_empty() {
            let rows = crm_sent_values::Entity::find()
                .filter(crm_sent_values::Column::Key.is_in(sent.iter().map(String::as_str)))
                .all(self.c)
                .await?;
            for key in sent {
                self.requests.insert(key, None);
            }
            for row in rows {
                let found = sent_value(row);
                self.requests.insert(found.0, Some(found.1));
            }
        }
        self.load_record_state().await
    }

    /// Loads the stamps and undelivered changes of every stored record not loaded yet.
    async fn load_record_state(&mut self) -> Result<(), DbErr> {
        let keys: Vec<Key> = self
            .slots
            .iter()
            .filter(|s| s.state != State::New)
            .map(|s| (s.t, s.local.id.clone()))
            .filter(|k| !self.versions.contains_key(k))
            .collect();
        if keys.is_empty() {
            return Ok(());
        }
        let mut versions = stamps::field_versions_of(self.c, &keys).await?;
        let mut undelivered = outbox::undelivered_of(self.c, &keys).await?;
        for key in keys {
            self.undelivered.insert(key.clone(), undelivered.remove(&key).unwrap_or_default());
            self.versions.insert(key.clone(), versions.remove(&key).unwrap_or_default());
        }
        Ok(())
    }

    /// Takes a stored record into the view, unless it holds it already (then its own copy, which
    /// may have changed, stands). Returns its slot.
    fn admit(&mut self, t: RecordType, local: Local) -> usize {
        let key = (t, local.id.clone());
        if let Some(&i) = self.by_id.get(&key) {
            return i;
        }
        let i = self.slots.len();
        self.absent_ids.remove(&key);
        self.by_id.insert(key, i);
        // A key looked for before and not found (`None`) is this record's now: it was just
        // inserted (a record the database numbers), or committed meanwhile by another instance.
        if let Some(crm_id) = local.crm_id() {
            let entry = self.by_crm_id.entry((t, crm_id.to_owned())).or_insert(None);
            entry.get_or_insert(i);
        }
        if let Some(email_key) = local.values.get("email_key").and_then(Value::as_str) {
            let entry = self.by_email_key.entry(email_key.to_owned()).or_insert(None);
            entry.get_or_insert(i);
        }
        self.slots.push(Slot { t, local, state: State::Clean, reindexed: Default::default() });
        i
    }

    pub(crate) fn record_type(&self, i: usize) -> RecordType {
        self.slots[i].t
    }

    pub(crate) fn local(&self, i: usize) -> &Local {
        &self.slots[i].local
    }

    /// The record TreadSoft knows as `crm_id`, deleted or not.
    pub(crate) async fn find_by_crm_id(&mut self, t: RecordType, crm_id: &str) -> Result<Option<usize>, DbErr> {
        let key = (t, crm_id.to_owned());
        if let Some(found) = self.by_crm_id.get(&key) {
            return Ok(*found);
        }
        let found = records::find_by_crm_id(self.c, t, crm_id).await?.map(|local| self.admit(t, local));
        // Held here already with another crm_id: not this one.
        let found = found.filter(|&i| self.slots[i].local.crm_id() == Some(crm_id));
        self.by_crm_id.insert(key, found);
        self.load_record_state().await?;
        Ok(found)
    }

    /// [`Self::find_by_crm_id`], read again from the database when not found (after a lock that
    /// another transaction may have released with the record committed).
    pub(crate) async fn find_by_crm_id_again(&mut self, t: RecordType, crm_id: &str) -> Result<Option<usize>, DbErr> {
        if let Some(Some(i)) = self.by_crm_id.get(&(t, crm_id.to_owned())) {
            return Ok(Some(*i));
        }
        self.by_crm_id.remove(&(t, crm_id.to_owned()));
        self.find_by_crm_id(t, crm_id).await
    }

    /// The record with local primary key `id`, deleted or not.
    pub(crate) async fn find_by_id(&mut self, t: RecordType, id: &str) -> Result<Option<usize>, DbErr> {
        let key = (t, id.to_owned());
        if let Some(&i) = self.by_id.get(&key) {
            return Ok(Some(i));
        }
        if self.absent_ids.contains(&key) {
            return Ok(None);
        }
        let found = records::find_by_id(self.c, t, id).await?.map(|local| self.admit(t, local));
        if found.is_none() {
            self.absent_ids.insert(key);
        }
        self.load_record_state().await?;
        Ok(found)
    }

    /// The user whose email is `email`, compared by [`user::email_key`].
    pub(crate) async fn find_user_by_email(&mut self, email: &str) -> Result<Option<usize>, DbErr> {
        let email_key = user::email_key(email);
        if let Some(found) = self.by_email_key.get(&email_key) {
            return Ok(*found);
        }
        let found =
            records::find_user_by_email(self.c, email).await?.map(|local| self.admit(RecordType::Contact, local));
        let found =
            found.filter(|&i| self.slots[i].local.values.get("email_key").and_then(Value::as_str) == Some(&email_key));
        self.by_email_key.insert(email_key, found);
        self.load_record_state().await?;
        Ok(found)
    }

    /// Creates a record from its column values. A record whose key is given (text keys, and the
    /// ids the site assigns) is written at [`Self::flush`]; one the database numbers is inserted now.
    pub(crate) async fn insert(&mut self, t: RecordType, mut values: Map<String, Value>) -> Result<usize, DbErr> {
        with_email_key(t, &mut values);
        let given = match values.get("id") {
            Some(Value::String(id)) => Some(id.clone()),
            Some(Value::Number(id)) => Some(id.to_string()),
            _ => None,
        };
        if let Some(id) = given {
            if !t.has_text_id() {
                self.ids_given.insert(t);
            }
            let i = self.slots.len();
            self.slots.push(Slot {
                t,
                local: Local { id: id.clone(), values: Map::new() },
                state: State::New,
                reindexed: Default::default(),
            });
            self.by_id.insert((t, id.clone()), i);
            self.absent_ids.remove(&(t, id.clone()));
            self.versions.insert((t, id.clone()), HashMap::new());
            self.undelivered.insert((t, id), Vec::new());
            self.set_values(i, values);
            return Ok(i);
        }
        // Its parents may be among the records not written yet.
        self.flush_records().await?;
        let local = records::insert(self.c, t, values).await?;
        let key = (t, local.id.clone());
        self.versions.insert(key.clone(), HashMap::new());
        self.undelivered.insert(key, Vec::new());
        let i = self.admit(t, local);
        Ok(i)
    }

    /// Sets the columns in `changes` of the record in slot `i`.
    pub(crate) fn update(&mut self, i: usize, changes: Map<String, Value>) {
        let slot = &mut self.slots[i];
        // The indexed columns before: the CRM id and the email key (what `reindex` reads) among them.
        let indexed = records::indexed_columns(slot.t);
        let before: Map<String, Value> =
            indexed.iter().filter_map(|c| Some(((*c).to_owned(), slot.local.values.get(*c)?.clone()))).collect();
        slot.local.values.extend(changes);
        with_email_key(slot.t, &mut slot.local.values);
        slot.reindexed.extend(records::changed_indexed(slot.t, &before, &slot.local.values));
        if slot.state == State::Clean {
            slot.state = State::Dirty;
        }
        self.reindex(i, &before);
    }

    /// Replaces slot `i`'s values, keeping the CRM id and email lookups right.
    fn set_values(&mut self, i: usize, values: Map<String, Value>) {
        let old = std::mem::replace(&mut self.slots[i].local.values, values);
        self.reindex(i, &old);
    }

    /// Keeps the CRM id and email lookups right after slot `i`'s values changed from `old` (of
    /// which only `crm_id` and `email_key` are read).
    fn reindex(&mut self, i: usize, old: &Map<String, Value>) {
        let t = self.slots[i].t;
        let text =
            |values: &Map<String, Value>, name: &str| values.get(name).and_then(Value::as_str).map(str::to_owned);
        let new = &self.slots[i].local.values;
        let (old_crm, new_crm) = (text(old, "crm_id"), text(new, "crm_id"));
        let (old_email, new_email) = (text(old, "email_key"), text(new, "email_key"));
        if old_crm != new_crm {
            if let Some(old_crm) = old_crm {
                self.by_crm_id.insert((t, old_crm), None);
            }
            if let Some(new_crm) = new_crm {
                self.by_crm_id.insert((t, new_crm), Some(i));
            }
        }
        if old_email != new_email {
            if let Some(old_email) = old_email {
                self.by_email_key.insert(old_email, None);
            }
            if let Some(new_email) = new_email {
                self.by_email_key.insert(new_email, Some(i));
            }
        }
    }

    /// The delete stamp of TreadSoft record `crm_id`, if it was deleted.
    pub(crate) async fn tombstone(&mut self, t: RecordType, crm_id: &str) -> Result<Option<Version>, DbErr> {
        let key = (t, crm_id.to_owned());
        if let Some(stamp) = self.tombstones.get(&key) {
            return Ok(stamp.clone());
        }
        let stamp = stamps::tombstone(self.c, t, crm_id).await?;
        self.tombstones.insert(key, stamp.clone());
        Ok(stamp)
    }

    pub(crate) fn set_tombstone(&mut self, t: RecordType, crm_id: &str, local_id: Option<&str>, v: &Version) {
        let key = (t, crm_id.to_owned());
        self.tombstones.insert(key.clone(), Some(v.clone()));
        self.new_tombstones.insert(key, (local_id.map(str::to_owned), v.clone()));
    }

    /// The stamps of the fields of the record in slot `i`, by local field name.
    pub(crate) async fn field_versions(&mut self, i: usize) -> Result<&HashMap<String, Version>, DbErr> {
        let key = (self.slots[i].t, self.slots[i].local.id.clone());
        if !self.versions.contains_key(&key) {
            let stored = stamps::field_versions(self.c, key.0, &key.1).await?;
            self.versions.insert(key.clone(), stored);
        }
        Ok(&self.versions[&key])
    }

    pub(crate) fn set_field_versions(&mut self, i: usize, fields: &[&str], v: &Version) {
        if fields.is_empty() {
            return;
        }
        let key = (self.slots[i].t, self.slots[i].local.id.clone());
        if !self.versions.contains_key(&key) {
            self.unread_versions.insert(key.clone());
        }
        let stored = self.versions.entry(key.clone()).or_default();
        for field in fields {
            stored.insert((*field).to_owned(), v.clone());
        }
        self.changed_versions.insert(key);
    }

    /// The CRM fields request `request_id` of the gateway set, if it is one of its own, and for
    /// a value sent (`sent:...`), that value's hash.
    pub(crate) async fn own_request(&mut self, request_id: &str) -> Result<Option<OwnRequest>, DbErr> {
        if let Some(found) = self.requests.get(request_id) {
            return Ok(found.clone());
        }
        let found = if request_id.starts_with("sent:") {
            crm_sent_values::Entity::find_by_id(request_id).one(self.c).await?.map(|row| sent_value(row).1)
        } else {
            let row = crm_requests::Entity::find_by_id(request_id).one(self.c).await?;
            row.map(|r| (serde_json::from_str(&r.fields).unwrap_or_default(), None))
        };
        self.requests.insert(request_id.to_owned(), found.clone());
        Ok(found)
    }

    /// The CRM holds another value than the one last sent (`sent:` key): a later change back to
    /// that value is the CRM's own, not an echo.
    pub(crate) fn forget_sent(&mut self, key: &str, hash: Option<&str>) {
        self.requests.insert(key.to_owned(), None);
        self.forgotten_sent.push((key.to_owned(), hash.map(str::to_owned)));
    }

    /// The undelivered changes of the record in slot `i`.
    pub(crate) async fn undelivered(&mut self, i: usize) -> Result<&[crm_outbox::Model], DbErr> {
        let key = (self.slots[i].t, self.slots[i].local.id.clone());
        if !self.undelivered.contains_key(&key) {
            let rows = outbox::undelivered_of(self.c, std::slice::from_ref(&key)).await?.remove(&key);
            self.undelivered.insert(key.clone(), rows.unwrap_or_default());
        }
        Ok(&self.undelivered[&key])
    }

    /// Queues a delivery of `fields` (`None`: all) of the record in slot `i`, merged into its
    /// pending row if it has one (see [`outbox::enqueue`]).
    pub(crate) async fn enqueue(
        &mut self,
        i: usize,
        operation: outbox::Operation,
        fields: Option<&[&str]>,
        event_id: Option<&str>,
    ) -> Result<(), DbErr> {
        self.undelivered(i).await?;
        let (t, id) = (self.slots[i].t, self.slots[i].local.id.clone());
        let now = chrono::Utc::now();
        let rows = self.undelivered.entry((t, id.clone())).or_default();
        if let Some(row) = rows.iter_mut().find(|r| r.status == OutboxStatus::Pending) {
            let (operation, fields) = outbox::merged(operation, row, fields);
            row.operation = operation.into();
            row.fields = fields;
            row.event_id = event_id.map(str::to_owned);
            // A new change deserves a fresh try, not the backoff of the failures before it.
            row.attempts = 0;
            row.next_attempt_at = now;
            row.updated_at = now;
            self.outbox_changed.insert(row.id);
            return Ok(());
        }
        let mut row = outbox::pending_row(t, &id, operation, fields, event_id);
        row.id = sea_orm::Set(self.next_new_row);
        self.next_new_row -= 1;
        let row: crm_outbox::Model = row.try_into_model()?;
        self.outbox_changed.insert(row.id);
        rows.push(row);
        Ok(())
    }

    /// Drops the pending deliveries of the record in slot `i` (deleted before it reached the CRM).
    pub(crate) async fn cancel_pending(&mut self, i: usize) -> Result<(), DbErr> {
        self.undelivered(i).await?;
        let key = (self.slots[i].t, self.slots[i].local.id.clone());
        let changed = &mut self.outbox_changed;
        self.undelivered.entry(key.clone()).or_default().retain(|r| {
            let pending = r.status == OutboxStatus::Pending;
            if pending {
                changed.remove(&r.id);
            }
            !pending
        });
        self.cancelled.push(key);
        Ok(())
    }

    /// Whether a delivery of the record in slot `i` is being sent right now.
    pub(crate) async fn in_flight(&mut self, i: usize) -> Result<bool, DbErr> {
        Ok(self.undelivered(i).await?.iter().any(|r| r.status == OutboxStatus::InFlight))
    }

    pub(crate) fn queue_link_back(&mut self, row: crm_outbox::ActiveModel) {
        self.link_backs.push(row);
    }

    pub(crate) fn log(&mut self, row: crm_sync_logs::ActiveModel) {
        self.logs.push(row);
    }

    /// Loads the stored events waiting for each of `keys` (their advisory locks are held).
    async fn load_waiting(&mut self, keys: &[String]) -> Result<(), DbErr> {
        for chunk in keys.chunks(crate::db::MAX_PARAMS / 2) {
            let rows = super::inbox::waiting_for_any(chunk).all(self.c).await?;
            for row in rows.into_iter().filter(super::inbox::still_waiting) {
                let key = row.waiting_for.clone().unwrap_or_default();
                self.waiting.entry(key).or_default().push(row);
            }
        }
        self.waiting_loaded.extend(keys.iter().cloned());
        Ok(())
    }

    /// Notes event `row` waiting for `key` (applied in this group, not written yet).
    pub(crate) fn wait(&mut self, key: String, row: crm_inbox::Model) {
        self.waiting.entry(key).or_default().push(row);
    }

    /// Loads the stored events waiting for each of `keys` not loaded yet, after taking their
    /// advisory locks in one statement, keeping the ones noted in this group.
    pub(crate) async fn load_waiting_for(&mut self, keys: &[String]) -> Result<(), DbErr> {
        let keys: Vec<String> = unique(keys.iter().filter(|k| !self.waiting_loaded.contains(*k)).cloned());
        if keys.is_empty() {
            return Ok(());
        }
        crate::db::lock_names(self.c, &keys).await?;
        let noted: Vec<(String, Vec<crm_inbox::Model>)> =
            keys.iter().filter_map(|k| self.waiting.remove(k).map(|rows| (k.clone(), rows))).collect();
        self.load_waiting(&keys).await?;
        for (key, noted) in noted {
            let stored = self.waiting.entry(key).or_default();
            stored.retain(|row| !noted.iter().any(|n| n.event_id == row.event_id));
            stored.extend(noted);
        }
        Ok(())
    }

    /// Takes the events waiting for `key`, stored or noted in this group. The key's advisory lock
    /// is taken first (see [`super::apply`]: whichever of a waiting event and its parent's
    /// release comes second sees what the first one committed).
    pub(crate) async fn take_waiting(&mut self, key: &str) -> Result<Vec<crm_inbox::Model>, DbErr> {
        if !self.waiting_loaded.contains(key) {
            crate::db::lock_named(self.c, key).await?;
            let noted = self.waiting.remove(key).unwrap_or_default();
            self.load_waiting(&[key.to_owned()]).await?;
            let stored = self.waiting.entry(key.to_owned()).or_default();
            stored.retain(|row| !noted.iter().any(|n| n.event_id == row.event_id));
            stored.extend(noted);
        }
        Ok(self.waiting.remove(key).unwrap_or_default())
    }

    /// Writes the records created or changed since the last flush.
    async fn flush_records(&mut self) -> Result<(), DbErr> {
        for t in RecordType::ALL {
            for state in [State::New, State::Dirty] {
                let rows: Vec<(Map<String, Value>, records::Reindexed)> = self
                    .slots
                    .iter_mut()
                    .filter(|s| s.t == t && s.state == state)
                    .map(|s| {
                        s.state = State::Clean;
                        (s.local.values.clone(), std::mem::take(&mut s.reindexed))
                    })
                    .collect();
                if rows.is_empty() {
                    continue;
                }
                if state == State::New {
                    records::insert_many(self.c, t, rows.into_iter().map(|(values, _)| values).collect()).await?;
                } else {
                    records::overwrite_many(self.c, t, rows).await?;
                }
            }
        }
        Ok(())
    }

    /// Writes everything changed in the view: records (parents first), stamps, tombstones,
    /// link-backs and log rows, a few multi-row statements for each table.
    pub(crate) async fn flush(&mut self) -> Result<(), DbErr> {
        self.flush_records().await?;
        let unread = std::mem::take(&mut self.unread_versions);
        let new = unread.into_iter().map(|key| (key.clone(), self.versions.remove(&key).unwrap_or_default()));
        let new: Vec<(Key, stamps::Stamps)> = new.collect();
        self.versions.extend(stamps::over_stored(self.c, new).await?);
        let changed = std::mem::take(&mut self.changed_versions);
        stamps::write_record_versions(self.c, changed.iter().map(|key| (key.0, key.1.as_str(), &self.versions[key])))
            .await?;
        let tombstones = std::mem::take(&mut self.new_tombstones);
        stamps::write_tombstones(
            self.c,
            tombstones.iter().map(|((t, crm_id), (local_id, v))| (*t, crm_id.as_str(), local_id.as_deref(), v)),
        )
        .await?;
        for chunk in std::mem::take(&mut self.forgotten_sent).chunks(crate::db::MAX_PARAMS / 2) {
            let mut which = sea_orm::Condition::any();
            for (key, hash) in chunk {
                let mut one = sea_orm::Condition::all().add(crm_sent_values::Column::Key.eq(key.as_str()));
                if let Some(hash) = hash {
                    one = one.add(crm_sent_values::Column::ValueHash.eq(hash.as_str()));
                }
                which = which.add(one);
            }
            crm_sent_values::Entity::delete_many().filter(which).exec(self.c).await?;
        }
        crate::db::insert_all(self.c, std::mem::take(&mut self.link_backs), None).await?;
        crate::db::insert_all(self.c, std::mem::take(&mut self.logs), None).await?;
        self.flush_outbox().await?;
        for t in std::mem::take(&mut self.ids_given) {
            records::sequence_past_max(self.c, t).await?;
        }
        Ok(())
    }

    /// Writes the outbox rows dropped, queued and merged into here.
    async fn flush_outbox(&mut self) -> Result<(), DbErr> {
        let cancelled = std::mem::take(&mut self.cancelled);
        for chunk in cancelled.chunks(crate::db::MAX_PARAMS / 2) {
            crm_outbox::Entity::delete_many()
                .filter(stamps::by_type(chunk, crm_outbox::Column::RecordType, crm_outbox::Column::RecordId))
                .filter(outbox::status_in(&[OutboxStatus::Pending]))
                .exec(self.c)
                .await?;
        }
        let changed = std::mem::take(&mut self.outbox_changed);
        let (mut new, mut merged) = (Vec::new(), Vec::new());
        let mut rows: Vec<&crm_outbox::Model> =
            self.undelivered.values().flatten().filter(|r| changed.contains(&r.id)).collect();
        // New rows (-1, -2, ...) get their ids in the order they were queued.
        rows.sort_by_key(|r| std::cmp::Reverse(r.id));
        for row in rows {
            let mut model = crm_outbox::ActiveModel::from(row.clone()).reset_all();
            if row.id < 0 {
                model.id = sea_orm::NotSet;
                new.push(model);
            } else {
                merged.push(model);
            }
        }
        crate::db::insert_all(self.c, new, None).await?;
        let columns = [
            crm_outbox::Column::Operation,
            crm_outbox::Column::Fields,
            crm_outbox::Column::EventId,
            crm_outbox::Column::Attempts,
            crm_outbox::Column::NextAttemptAt,
            crm_outbox::Column::UpdatedAt,
        ];
        let on_conflict =
            sea_orm::sea_query::OnConflict::column(crm_outbox::Column::Id).update_columns(columns).to_owned();
        crate::db::insert_all(self.c, merged, Some(on_conflict)).await
    }
}

/// Users carry the key their email is compared by; it follows the email.
fn with_email_key(t: RecordType, values: &mut Map<String, Value>) {
    if t == RecordType::Contact
        && let Some(email) = values.get("email").and_then(Value::as_str)
    {
        let key = user::email_key(email);
        values.insert("email_key".into(), Value::String(key));
    }
}

fn unique<T: Ord>(items: impl IntoIterator<Item = T>) -> Vec<T> {
    let mut items: Vec<T> = items.into_iter().collect();
    items.sort();
    items.dedup();
    items
}

/// What the gateway's own write set: the CRM fields, and for a value sent, its hash.
pub(crate) type OwnRequest = (Vec<String>, Option<String>);

/// A value sent, as [`View::own_request`] answers it: its key, its one field and its hash.
fn sent_value(row: crm_sent_values::Model) -> (String, OwnRequest) {
    let field = row.key.rsplit(':').next().unwrap_or_default().to_owned();
    (row.key, (vec![field], Some(row.value_hash)))
}
