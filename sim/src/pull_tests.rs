//! Import, reconciliation and the audit, end to end: the gateway in-process pointed at the
//! simulator, webhooks dropped on purpose, on SQLite and on PostgreSQL.

use crate::server::Sim;
use crate::store::Collection;
use crm_gateway::config::{CrmProvider, TreadSoftConfig};
use crm_gateway::crm::rate_limit::RateLimit;
use crm_gateway::crm::treadsoft::TreadSoftClient;
use crm_gateway::db::Db;
use crm_gateway::pull::audit::{self, Item};
use crm_gateway::pull::import::{Importer, OVERLAP, Progress, Quiet, Start, Summary};
use crm_gateway::sync::apply::SyncContext;
use crm_gateway::sync::hlc::Hlc;
use crm_gateway::sync::lww::Origin;
use crm_gateway::sync::mapping::RecordType;
use crm_gateway::writer::Writer;
use sea_orm::{ConnectionTrait, Database};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Copy, Debug)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

const PG_PREFIX: &str = "cgw_sim_";

fn postgres_url() -> String {
    std::env::var("TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A database URL for `backend`: a file in `dir`, or a new PostgreSQL database (`None` when
/// PostgreSQL does not answer outside CI).
async fn database(backend: Backend, dir: &std::path::Path) -> Option<(String, Option<String>)> {
    match backend {
        Backend::Sqlite => Some((format!("sqlite://{}", dir.join("gateway.db").display()), None)),
        Backend::Postgres => {
            let admin = match tokio::time::timeout(Duration::from_secs(5), Database::connect(postgres_url())).await {
                Ok(Ok(admin)) => admin,
                other => {
                    assert!(
                        std::env::var("CI").map_or(true, |v| v != "true"),
                        "PostgreSQL does not answer at {} and CI=true: {other:?}",
                        postgres_url()
                    );
                    eprintln!("*** SKIPPED on PostgreSQL: it does not answer at {} ***", postgres_url());
                    return None;
                }
            };
            let now = chrono::Utc::now().timestamp();
            // Databases of runs that crashed more than an hour ago.
            let stale = admin
                .query_all_raw(sea_orm::Statement::from_string(
                    admin.get_database_backend(),
                    format!("SELECT datname FROM pg_database WHERE datname LIKE '{PG_PREFIX}%'"),
                ))
                .await
                .unwrap_or_default();
            for row in stale {
                let Ok(name) = row.try_get::<String>("", "datname") else { continue };
                let at = name.trim_start_matches(PG_PREFIX).split('_').next().and_then(|t| t.parse::<i64>().ok());
                if at.is_some_and(|at| at < now - 3600) {
                    let _ =
                        admin.execute_unprepared(&format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#)).await;
                }
            }
            let name = format!("{PG_PREFIX}{now}_{}", uuid::Uuid::new_v4().simple());
            admin.execute_unprepared(&format!(r#"CREATE DATABASE "{name}""#)).await.expect("create a database");
            let mut url = reqwest::Url::parse(&postgres_url()).unwrap();
            url.set_path(&name);
            Some((url.to_string(), Some(name)))
        }
    }
}

async fn drop_database(name: &str) {
    if let Ok(admin) = Database::connect(postgres_url()).await {
        let _ = admin.execute_unprepared(&format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#)).await;
    }
}

/// The simulator and the gateway pointed at each other, and an importer beside the gateway on
/// the same database (as `crm-gateway import` runs beside a serving gateway).
pub(crate) struct Pair {
    pub(crate) sim: Arc<Sim>,
    pub(crate) sim_url: String,
    pub(crate) gateway: String,
    pub(crate) http: reqwest::Client,
    db: Db,
    importer: Importer,
    pg_name: Option<String>,
    _dir: tempfile::TempDir,
}

fn treadsoft(url: &str) -> TreadSoftConfig {
    TreadSoftConfig {
        api_url: url.parse().unwrap(),
        api_key: "ts_key_test".to_owned().into(),
        api_secret: "ts_secret_test".to_owned().into(),
    }
}

pub(crate) async fn pair(backend: Backend) -> Option<Pair> {
    let (sim, sim_url, server) = crate::start_local(crate::tests::account(10_000)).unwrap();
    tokio::spawn(server);
    let dir = tempfile::tempdir().unwrap();
    let (url, pg_name) = database(backend, dir.path()).await?;
    let mut config = crm_gateway::config::Settings::default().validate().unwrap();
    config.database.url = url;
    config.bind_addr = "127.0.0.1:0".parse().unwrap();
    config.http_workers = 1;
    config.webhook_secrets = vec!["whsec_e2e".to_owned().into()];
    config.crm = CrmProvider::TreadSoft(treadsoft(&sim_url));
    config.crm_rate_limit = RateLimit { requests: 10_000, period: Duration::from_secs(1) };
    let database = config.database.clone();
    let app = crm_gateway::startup::Application::build(config).await.unwrap();
    let gateway = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until(std::future::pending()));
    let hooks = crate::webhooks::Webhooks {
        url: format!("{gateway}/api/crm/webhooks/treadsoft"),
        secret: "whsec_e2e".into(),
        speed: 3600.0,
    };
    tokio::spawn(crate::webhooks::run(sim.clone(), hooks));

    let db = Db::connect(&database).await.unwrap();
    let (writer, _task) = Writer::start(&db, Arc::new(crm_gateway::ops::metrics::Metrics::new()));
    let floor = crm_gateway::sync::stamps::max_stamp(db.reader()).await.unwrap();
    let sync = Arc::new(SyncContext { precedence: Origin::Crm, hlc: Hlc::starting_after(floor) });
    let client = TreadSoftClient::new(
        treadsoft(&sim_url),
        Duration::from_secs(5),
        RateLimit { requests: 10_000, period: Duration::from_secs(1) },
    )
    .unwrap();
    let importer = Importer { db: db.clone(), writer, crm: Arc::new(client), sync, overlap: OVERLAP };
    Some(Pair { sim, sim_url, gateway, http: reqwest::Client::new(), db, importer, pg_name, _dir: dir })
}

impl Pair {
    async fn finish(self) {
        if let Some(name) = &self.pg_name {
            self.db.close().await.ok();
            drop_database(name).await;
        }
    }

    async fn faults(&self, faults: Value) {
        let answer = self.http.put(format!("{}/admin/faults", self.sim_url)).json(&faults).send().await.unwrap();
        assert_eq!(answer.status(), reqwest::StatusCode::OK);
    }

    /// Creates a record as a CRM user would (admin API); returns its TreadSoft id.
    async fn crm_create(&self, collection: &str, fields: Value) -> String {
        let answer = self.http.post(format!("{}/admin/{collection}", self.sim_url)).json(&fields).send().await.unwrap();
        assert_eq!(answer.status(), reqwest::StatusCode::CREATED, "{collection} {fields}");
        answer.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
    }

    async fn crm_patch(&self, collection: &str, id: &str, fields: Value) {
        let url = format!("{}/admin/{collection}/{id}", self.sim_url);
        assert_eq!(self.http.patch(url).json(&fields).send().await.unwrap().status(), reqwest::StatusCode::OK);
    }

    async fn crm_delete(&self, collection: &str, id: &str) {
        let url = format!("{}/admin/{collection}/{id}", self.sim_url);
        assert_eq!(self.http.delete(url).send().await.unwrap().status(), reqwest::StatusCode::NO_CONTENT);
    }

    /// One text (or null) the local database answers `sql` with.
    async fn text(&self, sql: &str) -> Option<String> {
        let row = self
            .db
            .reader()
            .query_one_raw(sea_orm::Statement::from_string(self.db.backend(), sql.to_owned()))
            .await
            .unwrap()?;
        row.try_get_by_index::<Option<String>>(0).unwrap()
    }

    async fn count(&self, sql: &str) -> i64 {
        let row = self
            .db
            .reader()
            .query_one_raw(sea_orm::Statement::from_string(self.db.backend(), sql.to_owned()))
            .await
            .unwrap()
            .unwrap();
        row.try_get_by_index::<i64>(0).unwrap()
    }

    async fn execute(&self, sql: &str) {
        self.db.writer().execute_unprepared(sql).await.unwrap();
    }

    /// Waits until the gateway's outbox has delivered everything.
    async fn delivered(&self) {
        crate::tests::eventually("the outbox delivered", async || {
            self.count("SELECT COUNT(*) FROM crm_outbox WHERE status <> 'delivered'").await == 0
        })
        .await;
    }
}

fn contact(first: &str, email: &str) -> Value {
    json!({"firstName": first, "lastName": "Smith", "email": email, "phone": "+44 1",
        "companyName": null, "role": "owner", "membershipStatus": "active"})
}

fn property(owner: &str, title: &str) -> Value {
    json!({"ownerContactId": owner, "title": title, "location": "Bath", "bedrooms": 4,
        "pricePerNight": 250.0, "currency": "GBP", "status": "active"})
}

async fn dropped_webhooks_are_healed_by_import_and_the_audit_proves_it(backend: Backend) {
    let Some(p) = pair(backend).await else { return };

    // Both sides in step: an owner from the site, two contacts and a property from the CRM.
    let registered: Value = p
        .http
        .post(format!("{}/api/owner/register", p.gateway))
        .json(&json!({"name": "Ann Site", "email": "ann@example.com", "phone": "+44 10"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ann = registered["user"]["id"].as_str().unwrap().to_owned();
    let bob = p.crm_create("contacts", contact("Bob", "bob@example.com")).await;
    let fay = p.crm_create("contacts", contact("Fay", "fay@example.com")).await;
    let bobs_house = p.crm_create("properties", property(&bob, "Bob's house")).await;
    crate::tests::eventually("the CRM's records on the site", async || {
        p.count(&format!("SELECT COUNT(*) FROM properties WHERE crm_id = '{bobs_house}'")).await == 1
            && p.count(&format!("SELECT COUNT(*) FROM \"user\" WHERE crm_id = '{fay}'")).await == 1
    })
    .await;
    p.delivered().await;
    let report = audit::run(&p.importer, &RecordType::ALL, false, &Quiet).await.unwrap();
    assert_eq!(report.counts.differences(), 0, "in step before anything is lost: {:#?}", report.items);
    assert_eq!(report.counts.compared, 4, "three contacts and a property compared");

    // Webhooks lost for good: a changed phone, a new contact with a property, a deleted contact.
    p.faults(json!({"dropWebhooks": true})).await;
    p.crm_patch("contacts", &bob, json!({"phone": "+44 99 lost"})).await;
    let dee = p.crm_create("contacts", contact("Dee", "dee@example.com")).await;
    let dees_flat = p.crm_create("properties", property(&dee, "Dee's flat")).await;
    p.crm_delete("contacts", &fay).await;
    // And an owner planted on the site's side, past the gateway: one the CRM never got.
    p.execute(&format!(
        "INSERT INTO \"user\" (id, name, email, email_key, phone, company_name, role, created_at, updated_at, \
         deleted_at, crm_id, crm_sync_status, crm_last_synced_at, membership_status) \
         SELECT 'user_planted', 'Eve Planted', 'eve@example.com', 'eve@example.com', phone, company_name, role, \
         created_at, updated_at, NULL, NULL, crm_sync_status, NULL, membership_status FROM \"user\" WHERE id = '{ann}'"
    ))
    .await;
    assert_eq!(p.text(&format!("SELECT phone FROM \"user\" WHERE crm_id = '{bob}'")).await.as_deref(), Some("+44 1"));

    // The audit sees every difference, changes nothing, and says which side is newer.
    let report = audit::run(&p.importer, &RecordType::ALL, false, &Quiet).await.unwrap();
    let c = &report.counts;
    assert_eq!(
        (c.differing_records, c.only_in_crm, c.only_local, c.missing_in_crm),
        (1, 2, 1, 1),
        "Bob differs, Dee and her flat are only in TreadSoft, Eve only here, Fay gone there: {:#?}",
        report.items
    );
    let bobs = report.items.iter().find_map(|item| match item {
        Item::Differs { crm_id, fields, .. } if *crm_id == bob => Some(fields.clone()),
        _ => None,
    });
    let bobs = bobs.expect("Bob's phone differs");
    assert_eq!((bobs[0].field, bobs[0].newer), ("phone", "crm"));
    assert_eq!((bobs[0].local.clone(), bobs[0].crm.clone()), (json!("+44 1"), json!("+44 99 lost")));
    assert!(bobs[0].crm_stamp.at > bobs[0].local_stamp.at, "both stamps shown, TreadSoft's newer");
    assert_eq!(p.count("SELECT COUNT(*) FROM \"user\" WHERE email = 'dee@example.com'").await, 0, "unchanged");

    // The import brings what the lost webhooks carried: Bob's phone, Dee and her flat.
    let summaries = import_all(&p.importer, Start::Resume).await;
    let contacts = &summaries[0];
    assert_eq!((contacts.seen, contacts.created, contacts.updated), (3, 1, 1), "{contacts:?}");
    assert_eq!((summaries[1].seen, summaries[1].created), (2, 1), "{:?}", summaries[1]);
    assert_eq!(
        p.text(&format!("SELECT phone FROM \"user\" WHERE crm_id = '{bob}'")).await.as_deref(),
        Some("+44 99 lost")
    );
    let dee_here = p.text(&format!("SELECT id FROM \"user\" WHERE crm_id = '{dee}'")).await.expect("Dee imported");
    let flat_owner = p.text(&format!("SELECT owner_id FROM properties WHERE crm_id = '{dees_flat}'")).await;
    assert_eq!(flat_owner, Some(dee_here), "the child linked to its imported parent");
    p.delivered().await; // Dee's link-back: TreadSoft learns her local id.

    // Run again, nothing is applied twice.
    let again = import_all(&p.importer, Start::Resume).await;
    assert!(again.iter().all(|s| s.created + s.updated == 0), "{again:?}");

    // A value changed in the site's database alone (its stamp stays older than TreadSoft's).
    p.execute(&format!("UPDATE \"user\" SET phone = '+44 drifted' WHERE id = '{ann}'")).await;

    // What is left (the planted ones, and Fay's delete) the audit finds and --fix mends.
    let report = audit::run(&p.importer, &RecordType::ALL, true, &Quiet).await.unwrap();
    let c = &report.counts;
    assert_eq!(
        (c.differing_records, c.only_in_crm, c.only_local, c.missing_in_crm, c.fixed, c.left),
        (1, 0, 1, 1, 3, 0),
        "{:#?}",
        report.fixes
    );
    assert_eq!(
        p.text(&format!("SELECT phone FROM \"user\" WHERE id = '{ann}'")).await.as_deref(),
        Some("+44 10"),
        "TreadSoft's newer value restored"
    );
    let fay_deleted = format!("SELECT COUNT(*) FROM \"user\" WHERE crm_id = '{fay}' AND deleted_at IS NOT NULL");
    assert_eq!(p.count(&fay_deleted).await, 1, "Fay deleted here, as her webhook would have done");
    p.delivered().await;
    assert!(p.sim.store().by_external_id(Collection::Contacts, "user_planted").is_some(), "Eve sent to TreadSoft");

    // Both sides the same: the audit proves it.
    let report = audit::run(&p.importer, &RecordType::ALL, false, &Quiet).await.unwrap();
    assert_eq!(report.counts.differences(), 0, "{:#?}", report.items);
    assert_eq!(report.counts.compared, 6, "Ann, Bob, Dee, Eve and two properties");
    let last = audit::last(p.db.reader()).await.unwrap().expect("recorded for the dashboard");
    assert_eq!((last.differences, last.fixed), (0, false));
    let status: Value = p.http.get(format!("{}/api/crm/status", p.gateway)).send().await.unwrap().json().await.unwrap();
    assert_eq!(status["lastAudit"]["differences"], 0, "the dashboard's status shows the last audit");
    p.finish().await;
}

async fn import_all(importer: &Importer, start: Start) -> Vec<Summary> {
    let mut out = Vec::new();
    for t in RecordType::ALL {
        out.push(importer.pass(t, start, false, &Quiet).await.unwrap());
    }
    out
}

#[tokio::test]
async fn dropped_webhooks_are_healed_by_import_and_the_audit_proves_it_on_sqlite() {
    dropped_webhooks_are_healed_by_import_and_the_audit_proves_it(Backend::Sqlite).await;
}

#[tokio::test]
async fn dropped_webhooks_are_healed_by_import_and_the_audit_proves_it_on_postgres() {
    dropped_webhooks_are_healed_by_import_and_the_audit_proves_it(Backend::Postgres).await;
}

/// Stops the pass it watches after `pages` pages, as Ctrl-C or `kill -9` would.
struct StopAfter {
    pages: u64,
    stop: tokio::sync::Notify,
}

impl Progress for StopAfter {
    fn page(&self, summary: &Summary) {
        if summary.pages == self.pages {
            self.stop.notify_one();
        }
    }
}

async fn an_interrupted_import_resumes_where_it_stopped_and_reconciliation_reads_only_what_changed(backend: Backend) {
    let Some(p) = pair(backend).await else { return };
    p.faults(json!({"dropWebhooks": true})).await;
    crate::seed_contacts(&p.sim, 450);

    let watch = StopAfter { pages: 1, stop: tokio::sync::Notify::new() };
    tokio::select! {
        done = p.importer.pass(RecordType::Contact, Start::Resume, false, &watch) => panic!("not stopped: {done:?}"),
        () = watch.stop.notified() => {}
    }
    let first = p.count("SELECT COUNT(*) FROM \"user\"").await;
    assert!((200..450).contains(&first), "the first page (and at most the one under way) is kept: {first}");

    let resumed = p.importer.pass(RecordType::Contact, Start::Resume, false, &Quiet).await.unwrap();
    assert!(resumed.resumed, "it goes on from the stored cursor");
    assert_eq!(resumed.created as i64, 450 - first, "{resumed:?}");
    assert_eq!(p.count("SELECT COUNT(*) FROM \"user\"").await, 450, "every contact once");
    assert_eq!(p.count("SELECT COUNT(*) FROM crm_inbox WHERE outcome = 'applied'").await, 450, "none applied twice");

    // Reconciliation: from the stored position, only what changed since (the overlap, five
    // minutes in service, is none here: every record of the test is younger than that).
    let importer = Importer { overlap: chrono::Duration::zero(), ..p.importer.clone() };
    let changed = p.sim.store().list(Collection::Contacts, None, None, 3).0;
    for record in &changed {
        p.crm_patch("contacts", record["id"].as_str().unwrap(), json!({"companyName": "Reconciled Ltd"})).await;
    }
    let pass = importer.pass(RecordType::Contact, Start::Resume, false, &Quiet).await.unwrap();
    assert!(!pass.resumed && pass.seen < 450, "a new pass over recent changes only: {pass:?}");
    assert_eq!(pass.updated, 3, "{pass:?}");
    assert_eq!(p.count("SELECT COUNT(*) FROM \"user\" WHERE company_name = 'Reconciled Ltd'").await, 3);
    p.finish().await;
}

#[tokio::test]
async fn an_interrupted_import_resumes_where_it_stopped_and_reconciliation_reads_only_what_changed_on_sqlite() {
    an_interrupted_import_resumes_where_it_stopped_and_reconciliation_reads_only_what_changed(Backend::Sqlite).await;
}

#[tokio::test]
async fn an_interrupted_import_resumes_where_it_stopped_and_reconciliation_reads_only_what_changed_on_postgres() {
    an_interrupted_import_resumes_where_it_stopped_and_reconciliation_reads_only_what_changed(Backend::Postgres).await;
}

async fn scheduled_reconciliation_lands_a_lost_change_and_skips_what_another_instance_just_read(backend: Backend) {
    let Some(p) = pair(backend).await else { return };
    let (_stop, stop) = tokio::sync::watch::channel(false);
    let every = Duration::from_secs(3600);
    let first = crm_gateway::ops::maintenance::reconcile(&p.importer, every, stop.clone()).await;
    assert_eq!(first.len(), 5, "every record type read on the first run");

    p.faults(json!({"dropWebhooks": true})).await;
    let lost = p.crm_create("contacts", contact("Lou", "lou@example.com")).await;
    // Within half the interval of the last pass (another instance's, or this one's): skipped.
    let skipped = crm_gateway::ops::maintenance::reconcile(&p.importer, every, stop.clone()).await;
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(p.count(&format!("SELECT COUNT(*) FROM \"user\" WHERE crm_id = '{lost}'")).await, 0);

    // The next scheduled run (here, a short interval: every pass is older than half of it).
    let again = crm_gateway::ops::maintenance::reconcile(&p.importer, Duration::ZERO, stop).await;
    assert_eq!((again[0].record_type, again[0].created), ("contact", 1), "{again:?}");
    assert_eq!(p.count(&format!("SELECT COUNT(*) FROM \"user\" WHERE crm_id = '{lost}'")).await, 1);
    p.finish().await;
}

#[tokio::test]
async fn scheduled_reconciliation_lands_a_lost_change_and_skips_what_another_instance_just_read_on_sqlite() {
    scheduled_reconciliation_lands_a_lost_change_and_skips_what_another_instance_just_read(Backend::Sqlite).await;
}

#[tokio::test]
async fn scheduled_reconciliation_lands_a_lost_change_and_skips_what_another_instance_just_read_on_postgres() {
    scheduled_reconciliation_lands_a_lost_change_and_skips_what_another_instance_just_read(Backend::Postgres).await;
}

async fn a_listing_never_reverts_a_local_change_waiting_for_delivery_and_a_refused_cursor_restarts_the_pass(
    backend: Backend,
) {
    let Some(p) = pair(backend).await else { return };
    let registered: Value = p
        .http
        .post(format!("{}/api/owner/register", p.gateway))
        .json(&json!({"name": "Ann Site", "email": "ann@example.com", "phone": "+44 10"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ann = registered["user"]["id"].as_str().unwrap().to_owned();
    p.delivered().await;
    let crm_id = p.text(&format!("SELECT crm_id FROM \"user\" WHERE id = '{ann}'")).await.unwrap();

    // TreadSoft down: the site's new phone waits in the outbox (its first attempt failed). Then,
    // webhooks lost, a CRM user changes another field: the listing carries a newer stamp, and
    // the phone from before.
    p.faults(json!({"outageSeconds": 3600, "dropWebhooks": true})).await;
    let changed = p
        .http
        .post(format!("{}/api/events", p.gateway))
        .json(&json!({"id": "ev_phone", "type": "owner.updated", "data": {"id": ann, "phone": "+44 new here"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), reqwest::StatusCode::ACCEPTED);
    let waiting = "SELECT COUNT(*) FROM crm_outbox WHERE status = 'pending' AND last_error IS NOT NULL";
    crate::tests::eventually("the attempt during the outage", async || p.count(waiting).await == 1).await;
    p.faults(json!({"dropWebhooks": true})).await;
    p.crm_patch("contacts", &crm_id, json!({"companyName": "Set in the CRM"})).await;
    let before_delivery = p.importer.crm.get(RecordType::Contact, &crm_id).await.unwrap();
    let pass = p.importer.pass(RecordType::Contact, Start::Resume, false, &Quiet).await.unwrap();
    assert_eq!(pass.updated, 1, "{pass:?}");
    let phone = format!("SELECT phone FROM \"user\" WHERE id = '{ann}'");
    assert_eq!(p.text(&phone).await.as_deref(), Some("+44 new here"), "the waiting local change stands");
    let company = format!("SELECT company_name FROM \"user\" WHERE id = '{ann}'");
    assert_eq!(p.text(&company).await.as_deref(), Some("Set in the CRM"), "the CRM's change lands");

    // Delivered now; a listing read before that lands late: the delivered value stays.
    let row: i64 = p.count("SELECT MAX(id) FROM crm_outbox").await;
    let retried = p.http.post(format!("{}/api/crm/outbox/{row}/retry", p.gateway)).send().await.unwrap();
    assert!(retried.status().is_success(), "{}", retried.text().await.unwrap());
    p.delivered().await;
    let late = crm_gateway::pull::import::event_with_id(RecordType::Contact, &before_delivery, "import:late".into());
    let incoming = crm_gateway::sync::inbox::Incoming { delivery_id: "late".into(), events: Arc::new(vec![late]) };
    let results = p.importer.apply_events(incoming).await.unwrap();
    assert_ne!(results[0].outcome, crm_gateway::sync::inbox::Outcome::Applied, "{results:?}");
    assert_eq!(p.text(&phone).await.as_deref(), Some("+44 new here"), "an older listing cannot undo a delivery");

    // An interrupted pass whose stored cursor TreadSoft no longer takes is read again.
    p.execute("UPDATE crm_import_cursors SET cursor = 'not-a-cursor', finished_at = NULL").await;
    let again = p.importer.pass(RecordType::Contact, Start::Resume, false, &Quiet).await.unwrap();
    assert!(!again.resumed && again.seen == 1, "restarted from the pass's start: {again:?}");
    p.finish().await;
}

#[tokio::test]
async fn a_listing_never_reverts_a_local_change_waiting_for_delivery_and_a_refused_cursor_restarts_the_pass_on_sqlite()
{
    a_listing_never_reverts_a_local_change_waiting_for_delivery_and_a_refused_cursor_restarts_the_pass(Backend::Sqlite)
        .await;
}

#[tokio::test]
async fn a_listing_never_reverts_a_local_change_waiting_for_delivery_and_a_refused_cursor_restarts_the_pass_on_postgres()
 {
    a_listing_never_reverts_a_local_change_waiting_for_delivery_and_a_refused_cursor_restarts_the_pass(
        Backend::Postgres,
    )
    .await;
}
