//! Salesforce as the CRM (`CRM_PROVIDER=salesforce`): outbound against a wiremock org (token,
//! REST), inbound from the in-process fake Pub/Sub API ([`crate::pubsub_fake`]), in-process and
//! as the real binary killed mid-stream.

use crate::helpers::{TestApp, TestDatabase};
use crate::on_both_databases_without_app;
use crate::pubsub_fake::{CHANNEL, Event, FakePubSub, TOKEN, bitmap, name_bitmap};
use crm_gateway::config::{CrmProvider, Provider, SalesforceInbound};
use crm_gateway::crm::mapping::{Flavor, Mapping};
use crm_gateway::crm::salesforce::client::SalesforceConfig;
use entity::enums::CrmSyncStatus;
use entity::user;
use reqwest::StatusCode;
use sea_orm::EntityTrait;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

async fn org() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/services/oauth2/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": TOKEN, "instance_url": server.uri(),
            "id": "https://login.salesforce.com/id/00D000000000001AAA/005000000000001AAA"
        })))
        .mount(&server)
        .await;
    server
}

fn use_salesforce(config: &mut crm_gateway::config::Config, server: &MockServer) {
    use_salesforce_with(config, server, "http://127.0.0.1:1");
}

fn use_salesforce_with(config: &mut crm_gateway::config::Config, server: &MockServer, pubsub_url: &str) {
    let mapping = Arc::new(Mapping::defaults(Flavor::Salesforce));
    let mut inbound = SalesforceInbound::new(pubsub_url.parse().unwrap(), CHANNEL.into(), mapping.clone());
    inbound.lease = Duration::from_secs(3);
    inbound.retry_base = Duration::from_millis(50);
    config.provider = Provider::Salesforce(inbound);
    config.crm = CrmProvider::Salesforce(SalesforceConfig {
        api_url: server.uri().parse().unwrap(),
        client_id: "key".to_owned().into(),
        client_secret: "secret".to_owned().into(),
        api_version: "v62.0".into(),
        client_tag: "crm-gateway".into(),
        mapping,
        jwt: None,
    });
    config.crm_request_timeout = std::time::Duration::from_millis(500);
}

async fn an_owner_registered_here_reaches_salesforce_as_a_contact(database: TestDatabase) {
    let server = org().await;
    Mock::given(method("PATCH"))
        .and(path("/services/data/v62.0/composite/sobjects/Contact/Crm_Gateway_Id__c"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!([{"id": "003A", "success": true, "created": true, "errors": []}])),
        )
        .mount(&server)
        .await;
    let app = TestApp::spawn_with(database, |c| use_salesforce(c, &server)).await;
    let owner = json!({"id": "user_1", "name": "Mary Anne van Dyke", "email": "user_1@example.com", "phone": "+44 1",
        "companyName": null, "role": "owner", "membershipStatus": "pending"});
    let response = app.post_events(&json!({"id": "ev_1", "type": "owner.registered", "data": owner})).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(app.deliver_pending().await, 1);

    let user = user::Entity::find_by_id("user_1").one(app.db.reader()).await.unwrap().unwrap();
    assert_eq!((user.crm_id.as_deref(), user.crm_sync_status), (Some("003A"), CrmSyncStatus::Synced));
    let sent = server.received_requests().await.unwrap().into_iter().find(|r| r.method.as_str() == "PATCH").unwrap();
    assert_eq!(sent.headers.get("sforce-call-options").unwrap(), "client=crm-gateway");
    let body: Value = serde_json::from_slice(&sent.body).unwrap();
    let record = &body["records"][0];
    assert_eq!((record["FirstName"].as_str(), record["LastName"].as_str()), (Some("Mary"), Some("Anne van Dyke")));
    assert_eq!(record["Crm_Gateway_Id__c"], "user_1");

    // No webhook route answers for Salesforce.
    for route in ["treadsoft", "hubspot"] {
        let response = app.request(reqwest::Method::POST, &format!("/api/crm/webhooks/{route}")).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{route}");
    }
}

on_both_databases_without_app!(an_owner_registered_here_reaches_salesforce_as_a_contact);

/// Waits (at most 20 s) until `check` returns something.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An org whose listings are empty (the reconciliation a first start runs reads nothing).
async fn quiet_org() -> MockServer {
    let server = org().await;
    Mock::given(method("GET"))
        .and(path("/services/data/v62.0/query"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"totalSize": 0, "done": true, "records": []})))
        .mount(&server)
        .await;
    server
}

async fn user_with_crm_id(db: &crm_gateway::db::Db, crm_id: &str) -> Option<user::Model> {
    use sea_orm::{ColumnTrait, QueryFilter};
    user::Entity::find().filter(user::Column::CrmId.eq(crm_id)).one(db.reader()).await.unwrap()
}

async fn stored_events(db: &crm_gateway::db::Db) -> i64 {
    entity::crm_stream_positions::Entity::find_by_id(CHANNEL.to_owned())
        .one(db.reader())
        .await
        .unwrap()
        .map_or(0, |p| p.events)
}

fn created(id: &str, at_ms: i64, first: &str, last: &str, email: &str) -> Value {
    let mut event = Event::new("CREATE", id, at_ms);
    event.fields = json!({"Name": {"FirstName": first, "LastName": last}, "Email": email, "Phone": "+44 1",
        "Role__c": "owner", "Membership_Status__c": "active"});
    event.to_json()
}

fn phone_changed(id: &str, at_ms: i64, phone: &str) -> Value {
    let mut event = Event::new("UPDATE", id, at_ms);
    event.changed = vec![bitmap(&["Phone"])];
    event.fields = json!({"Phone": phone});
    event.to_json()
}

/// The commit time of the tests' first event: an hour ago (the channel keeps events 72 hours, so
/// a replay id is resumed from only when its event is younger).
fn t0() -> i64 {
    static FIRST: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *FIRST.get_or_init(|| (chrono::Utc::now() - chrono::Duration::hours(1)).timestamp_millis() / 1_000 * 1_000)
}

async fn changes_made_in_salesforce_reach_the_site_over_change_data_capture(database: TestDatabase) {
    let server = quiet_org().await;
    let fake = FakePubSub::start().await;
    let app = TestApp::spawn_with(database, |c| use_salesforce_with(c, &server, &fake.url)).await;
    // Nothing stored: the subscription starts at the next event, with the token's metadata.
    let start = eventually("a subscription", || async { fake.starts().first().cloned() }).await;
    assert_eq!(start.preset, crm_gateway::crm::salesforce::pubsub::ReplayPreset::Latest);
    assert_eq!(start.access_token.as_deref(), Some(TOKEN));
    assert_eq!(start.tenant.as_deref(), Some("00D000000000001AAA"));

    fake.publish(created("003A", t0(), "Ann", "Lee", "ann@example.com"));
    let user = eventually("the contact created", || user_with_crm_id(&app.db, "003A")).await;
    assert_eq!(
        (user.name.as_str(), user.email.as_str(), user.phone.as_deref()),
        ("Ann Lee", "ann@example.com", Some("+44 1"))
    );

    // An update carries only its changed fields; the name's one part changed is read whole.
    let mut email = Event::new("UPDATE", "003A", t0() + 1_000);
    email.changed = vec![bitmap(&["Email"])];
    email.nulled = vec![bitmap(&["Phone"])];
    email.fields = json!({"Email": "ann.lee@example.com"});
    fake.publish(email.to_json());
    let user = eventually("the email changed", || async {
        user_with_crm_id(&app.db, "003A").await.filter(|u| u.email == "ann.lee@example.com")
    })
    .await;
    assert_eq!(user.phone, None, "a nulled field is cleared");
    assert_eq!(user.name, "Ann Lee", "fields not in changedFields are left alone");

    // A change older than what is applied loses (last writer wins on commitTimestamp), whatever
    // the order it comes in.
    fake.publish(phone_changed("003A", t0() + 2_000, "+44 new"));
    eventually("the newer phone", || async {
        user_with_crm_id(&app.db, "003A").await.filter(|u| u.phone.as_deref() == Some("+44 new"))
    })
    .await;
    fake.publish(phone_changed("003A", t0() + 1_500, "+44 old"));
    eventually("the older change taken", || async { (stored_events(&app.db).await == 4).then_some(()) }).await;
    let user = user_with_crm_id(&app.db, "003A").await.unwrap();
    assert_eq!(user.phone.as_deref(), Some("+44 new"), "the older change is stale");
    let status: Value = app.get("/api/crm/status").await.json().await.unwrap();
    let stream = &status["streams"][0];
    assert_eq!((stream["channel"].as_str(), stream["events"].as_i64()), (Some(CHANNEL), Some(4)), "{status}");
    assert!(stream["reader"].as_str().is_some_and(|r| !r.is_empty()), "the status names the reading instance");

    fake.publish(Event::new("DELETE", "003A", t0() + 3_000).to_json());
    eventually("the contact deleted", || async {
        user_with_crm_id(&app.db, "003A").await.filter(|u| u.deleted_at.is_some())
    })
    .await;
    assert_eq!(fake.schema_fetches(), 1, "the schema is fetched once and cached");
    assert!(!fake.top_ups().is_empty(), "events applied are asked for again");
    assert!(fake.top_ups().iter().all(|n| *n <= 100));
}

async fn the_gateways_own_writes_come_back_as_echoes_and_change_nothing(database: TestDatabase) {
    let server = quiet_org().await;
    Mock::given(method("PATCH"))
        .and(path("/services/data/v62.0/composite/sobjects/Contact/Crm_Gateway_Id__c"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!([{"id": "003E", "success": true, "created": true, "errors": []}])),
        )
        .mount(&server)
        .await;
    let fake = FakePubSub::start().await;
    let app = TestApp::spawn_with(database, |c| use_salesforce_with(c, &server, &fake.url)).await;
    eventually("a subscription", || async { fake.starts().first().cloned() }).await;
    let owner = json!({"id": "user_e", "name": "Eve Stone", "email": "eve@example.com", "phone": "+44 5",
        "companyName": null, "role": "owner", "membershipStatus": "pending"});
    let response = app.post_events(&json!({"id": "ev_e", "type": "owner.registered", "data": owner})).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(app.deliver_pending().await, 1);

    // The site changes the phone again before Salesforce's echo of the first write arrives.
    let response = app
        .post_events(&json!({"id": "ev_e2", "type": "owner.updated", "data": {"id": "user_e", "phone": "+44 6"}}))
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    // The echo comes without the gateway's tag (as a trigger's would): its value is the one sent.
    let mut echo = Event::new("UPDATE", "003E", chrono::Utc::now().timestamp_millis());
    echo.origin = "";
    echo.changed = vec![bitmap(&["Phone"])];
    echo.fields = json!({"Phone": "+44 5"});
    fake.publish(echo.to_json());
    eventually("the echo taken", || async { (stored_events(&app.db).await == 1).then_some(()) }).await;
    let user = user::Entity::find_by_id("user_e").one(app.db.reader()).await.unwrap().unwrap();
    assert_eq!(user.phone.as_deref(), Some("+44 6"), "the echo of the old value does not undo the newer change");
    let outcomes: Vec<String> =
        entity::crm_inbox::Entity::find().all(app.db.reader()).await.unwrap().into_iter().map(|r| r.outcome).collect();
    assert_eq!(outcomes, ["echo"], "known by the value sent, not by a tag");

    // Someone changes it in Salesforce: that is applied.
    fake.publish(phone_changed("003E", chrono::Utc::now().timestamp_millis() + 1_000, "+44 7"));
    eventually("the user's change", || async {
        user_with_crm_id(&app.db, "003E").await.filter(|u| u.phone.as_deref() == Some("+44 7"))
    })
    .await;
}

async fn a_restarted_gateway_resumes_after_the_last_event_it_applied(database: TestDatabase) {
    let server = quiet_org().await;
    let fake = FakePubSub::start().await;
    let mut first = TestApp::spawn_with(database, |c| use_salesforce_with(c, &server, &fake.url)).await;
    eventually("a subscription", || async { fake.starts().first().cloned() }).await;
    fake.publish(created("003R", t0(), "Rae", "Moss", "rae@example.com"));
    fake.publish(phone_changed("003R", t0() + 1_000, "+44 2"));
    eventually("two events applied", || async { (stored_events(&first.db).await == 2).then_some(()) }).await;
    let queries = server.received_requests().await.unwrap().iter().filter(|r| r.method.as_str() == "GET").count();
    first.stop().await.unwrap();

    // Changes made while no gateway reads the channel.
    fake.publish(phone_changed("003R", t0() + 2_000, "+44 3"));
    let mut name = Event::new("UPDATE", "003R", t0() + 3_000);
    name.changed = vec![name_bitmap(&["LastName"])];
    name.fields = json!({"Name": {"LastName": "Moss-Hart"}});
    fake.publish(name.to_json());
    // The name's last part alone is read again over REST, whole.
    Mock::given(method("GET"))
        .and(path("/services/data/v62.0/sobjects/Contact/003R"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "Id": "003R", "FirstName": "Rae", "LastName": "Moss-Hart", "Email": "rae@example.com",
            "Phone": "+44 3",
            "LastModifiedDate": chrono::DateTime::from_timestamp_millis(t0() + 3_000).unwrap().format("%Y-%m-%dT%H:%M:%S%.3f+0000").to_string()
        })))
        .mount(&server)
        .await;

    let second = first.another_instance_with(|c| use_salesforce_with(c, &server, &fake.url)).await;
    eventually("every event applied", || async { (stored_events(&second.db).await == 4).then_some(()) }).await;
    let starts = fake.starts();
    assert_eq!(starts.len(), 2);
    assert_eq!(starts[1].preset, crm_gateway::crm::salesforce::pubsub::ReplayPreset::Custom);
    assert_eq!(starts[1].after, Some(1), "resumed right after the last event applied");
    let user = user_with_crm_id(&second.db, "003R").await.unwrap();
    assert_eq!((user.name.as_str(), user.phone.as_deref()), ("Rae Moss-Hart", Some("+44 3")));
    let queries_after = server.received_requests().await.unwrap().iter().filter(|r| r.method.as_str() == "GET").count();
    assert_eq!(queries_after, queries + 1, "no reconciliation on a resume; one read of the half-changed name");
}

async fn disconnects_and_a_refused_token_are_survived_without_losing_or_repeating(database: TestDatabase) {
    let server = quiet_org().await;
    let fake = FakePubSub::start().await;
    let app = TestApp::spawn_with(database, |c| use_salesforce_with(c, &server, &fake.url)).await;
    eventually("a subscription", || async { fake.starts().first().cloned() }).await;
    fake.publish(created("003D", t0(), "Dan", "Cole", "dan@example.com"));
    eventually("the contact", || user_with_crm_id(&app.db, "003D")).await;
    let tokens = || async {
        server.received_requests().await.unwrap().iter().filter(|r| r.url.path().ends_with("/token")).count()
    };
    let tokens_before = tokens().await;
    // The stream ends; the next subscription's token is refused once; the one after ends after
    // two events.
    fake.refuse_next(tonic::Status::unauthenticated("INVALID_SESSION_ID"));
    fake.disconnect_after(2);
    fake.disconnect();
    for i in 1..=5 {
        fake.publish(phone_changed("003D", t0() + i * 1_000, &format!("+44 {i}")));
    }
    eventually("every event applied", || async { (stored_events(&app.db).await == 6).then_some(()) }).await;
    let user = user_with_crm_id(&app.db, "003D").await.unwrap();
    assert_eq!(user.phone.as_deref(), Some("+44 5"));
    let starts: Vec<_> = fake.starts().iter().map(|s| (s.preset, s.after)).collect();
    use crm_gateway::crm::salesforce::pubsub::ReplayPreset::{Custom, Latest};
    assert_eq!(starts, [(Latest, None), (Custom, Some(0)), (Custom, Some(0)), (Custom, Some(2))]);
    assert_eq!(tokens().await, tokens_before + 1, "the refused token was renewed once");
    use sea_orm::{ColumnTrait, PaginatorTrait, QueryFilter};
    let applied = entity::crm_inbox::Entity::find()
        .filter(entity::crm_inbox::Column::CrmId.eq("003D"))
        .count(app.db.reader())
        .await
        .unwrap();
    assert_eq!(applied, 6, "each event recorded once");
}

async fn a_refused_or_expired_replay_id_starts_at_the_next_event_and_reconciles(database: TestDatabase) {
    let server = org().await;
    Mock::given(method("GET"))
        .and(path("/services/data/v62.0/query"))
        .respond_with(move |request: &wiremock::Request| {
            let soql =
                request.url.query_pairs().find(|(k, _)| k == "q").map(|(_, v)| v.into_owned()).unwrap_or_default();
            let records = if soql.contains("FROM Contact") {
                json!([{"attributes": {"type": "Contact"}, "Id": "003M", "FirstName": "Max", "LastName": "Bell",
                    "Email": "max@example.com", "Phone": null, "Role__c": "owner", "Membership_Status__c": "active",
                    "Crm_Gateway_Id__c": null, "LastModifiedDate": "2025-11-24T16:00:00.000+0000"}])
            } else {
                json!([])
            };
            ResponseTemplate::new(200).set_body_json(json!({"totalSize": 1, "done": true, "records": records}))
        })
        .mount(&server)
        .await;
    let fake = FakePubSub::start().await;
    fake.publish(created("003X", t0(), "Old", "Event", "old@example.com"));
    // A replay id the channel does not know any more.
    let db = database.migrated().await;
    let stale = entity::crm_stream_positions::ActiveModel {
        channel: sea_orm::Set(CHANNEL.into()),
        replay_id: sea_orm::Set("AAAAAAAAAAE=".into()),
        events: sea_orm::Set(7),
        event_at: sea_orm::Set(chrono::Utc::now()),
        reconcile_from: sea_orm::Set(None),
        updated_at: sea_orm::Set(chrono::Utc::now()),
    };
    entity::crm_stream_positions::Entity::insert(stale).exec_without_returning(db.writer()).await.unwrap();
    let app = TestApp::spawn_with(database, |c| use_salesforce_with(c, &server, &fake.url)).await;
    let user = eventually("the reconciled contact", || user_with_crm_id(&app.db, "003M")).await;
    assert_eq!(user.email, "max@example.com");
    let starts = eventually("two subscriptions", || async { Some(fake.starts()).filter(|s| s.len() >= 2) }).await;
    use crm_gateway::crm::salesforce::pubsub::ReplayPreset;
    assert_eq!((starts[0].preset, starts[1].preset), (ReplayPreset::Custom, ReplayPreset::Latest));
    fake.publish(phone_changed("003M", t0() + 1_000, "+44 9"));
    eventually("the change after it", || async {
        user_with_crm_id(&app.db, "003M").await.filter(|u| u.phone.as_deref() == Some("+44 9"))
    })
    .await;
    assert!(user_with_crm_id(&app.db, "003X").await.is_none(), "the event before the new start is not read");

    // A replay id whose event is older than the channel keeps events is not even tried, however
    // recently it was stored.
    let mut app = app;
    app.stop().await.unwrap();
    let position =
        entity::crm_stream_positions::Entity::find_by_id(CHANNEL.to_owned()).one(db.reader()).await.unwrap().unwrap();
    let mut old: entity::crm_stream_positions::ActiveModel = position.into();
    old.event_at = sea_orm::Set(chrono::Utc::now() - chrono::Duration::hours(80));
    old.updated_at = sea_orm::Set(chrono::Utc::now());
    entity::crm_stream_positions::Entity::update(old).exec(db.writer()).await.unwrap();
    let _again = app.another_instance_with(|c| use_salesforce_with(c, &server, &fake.url)).await;
    let starts = eventually("a third subscription", || async { Some(fake.starts()).filter(|s| s.len() >= 3) }).await;
    assert_eq!(starts[2].preset, ReplayPreset::Latest, "{starts:?}");
}

async fn one_instance_reads_the_channel_and_another_takes_over_when_it_stops(database: TestDatabase) {
    let server = quiet_org().await;
    let fake = FakePubSub::start().await;
    let mut first = TestApp::spawn_with(database, |c| use_salesforce_with(c, &server, &fake.url)).await;
    eventually("a subscription", || async { fake.starts().first().cloned() }).await;
    let second = first.another_instance_with(|c| use_salesforce_with(c, &server, &fake.url)).await;
    fake.publish(created("003L", t0(), "Lea", "Hill", "lea@example.com"));
    eventually("the contact", || user_with_crm_id(&second.db, "003L")).await;
    assert_eq!(fake.starts().len(), 1, "the second instance does not read while the first holds the lease");
    first.stop().await.unwrap();
    eventually("the second instance reading", || async { (fake.starts().len() == 2).then_some(()) }).await;
    fake.publish(phone_changed("003L", t0() + 1_000, "+44 8"));
    eventually("the change", || async {
        user_with_crm_id(&second.db, "003L").await.filter(|u| u.phone.as_deref() == Some("+44 8"))
    })
    .await;
    assert_eq!(fake.starts()[1].after, Some(0), "it resumed where the first stopped");
}

async fn killed_mid_stream_the_gateway_resumes_and_applies_every_event_once(database: TestDatabase) {
    use crate::process::Gateway;
    use sea_orm::{ColumnTrait, PaginatorTrait, QueryFilter};
    let server = quiet_org().await;
    let fake = FakePubSub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let env = vec![
        ("DATABASE_URL", database.config.url.clone()),
        ("CRM_ENABLED", "true".to_owned()),
        ("CRM_PROVIDER", "salesforce".to_owned()),
        ("CRM_API_URL", server.uri()),
        ("CRM_API_KEY", "key".to_owned()),
        ("CRM_API_SECRET", "secret".to_owned()),
        ("CRM_PUBSUB_URL", fake.url.clone()),
        ("CRM_CDC_LEASE_SECS", "1".to_owned()),
        ("HTTP_WORKERS", "1".to_owned()),
    ];
    let gateway = Gateway::start(&env, dir.path()).await;
    eventually("a subscription", || async { fake.starts().first().cloned() }).await;
    fake.publish(created("003K", t0(), "Kit", "Vale", "kit@example.com"));
    let db = database.connect().await;
    eventually("the contact", || user_with_crm_id(&db, "003K")).await;
    const UPDATES: i64 = 300;
    // Three batches at least (100 events a batch); killed once the first has committed.
    for n in 1..=UPDATES {
        fake.publish(phone_changed("003K", t0() + n * 1_000, &format!("+44 {n}")));
    }
    eventually("part of the stream applied", || async { (stored_events(&db).await > 1).then_some(()) }).await;
    gateway.kill();
    let applied_before = stored_events(&db).await;
    assert!(applied_before < UPDATES + 1, "killed mid-stream ({applied_before} applied)");
    let gateway = Gateway::start(&env, dir.path()).await;
    eventually("every event applied", || async { (stored_events(&db).await == UPDATES + 1).then_some(()) }).await;
    let starts = fake.starts();
    let resumed = starts.last().unwrap();
    assert_eq!(resumed.preset, crm_gateway::crm::salesforce::pubsub::ReplayPreset::Custom, "{starts:?}");
    assert_eq!(resumed.after, Some(applied_before as usize - 1), "resumed after the last event committed");
    let recorded = entity::crm_inbox::Entity::find()
        .filter(entity::crm_inbox::Column::CrmId.eq("003K"))
        .count(db.reader())
        .await
        .unwrap();
    assert_eq!(recorded, (UPDATES + 1) as u64, "every event recorded once");
    let user = user_with_crm_id(&db, "003K").await.unwrap();
    assert_eq!(user.phone.as_deref(), Some(format!("+44 {UPDATES}").as_str()));
    drop(gateway);
}

async fn an_unreadable_event_is_read_from_the_listing_instead_and_keepalives_keep_the_position(database: TestDatabase) {
    let server = quiet_org().await;
    let fake = FakePubSub::start().await;
    fake.keepalive_every(Duration::from_millis(50));
    let app = TestApp::spawn_with(database, |c| use_salesforce_with(c, &server, &fake.url)).await;
    eventually("a subscription", || async { fake.starts().first().cloned() }).await;
    let listings = || async {
        server.received_requests().await.unwrap().iter().filter(|r| r.url.path().ends_with("/query")).count()
    };
    // The first start's reconciliation is over once the first event is applied.
    fake.publish(created("003F", t0(), "Fay", "Lund", "fay@example.com"));
    eventually("the first contact", || user_with_crm_id(&app.db, "003F")).await;
    let before = listings().await;
    fake.publish_garbage();
    fake.publish(created("003G", t0(), "Gus", "Reed", "gus@example.com"));
    eventually("the event after the unreadable one", || user_with_crm_id(&app.db, "003G")).await;
    eventually("the reconciliation pass for the unreadable event", || async {
        (listings().await > before).then_some(())
    })
    .await;
    let position = || async {
        entity::crm_stream_positions::Entity::find_by_id(CHANNEL.to_owned()).one(app.db.reader()).await.unwrap()
    };
    let stored = eventually("the catch-up mark cleared", || async {
        position().await.filter(|p| p.events == 3 && p.reconcile_from.is_none())
    })
    .await;
    assert_eq!(stored.event_at.timestamp_millis(), t0(), "the time of the newest event applied");
    // An empty batch (a keepalive) stores the channel's latest replay id again, keeping its time.
    let kept =
        eventually("a keepalive stored", || async { position().await.filter(|p| p.updated_at > stored.updated_at) })
            .await;
    assert_eq!(kept.event_at, stored.event_at);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("cdc_event_unreadable"), "the unreadable event is counted");
}

async fn three_refusals_in_a_row_of_a_resumed_subscription_start_it_afresh(database: TestDatabase) {
    use crm_gateway::crm::salesforce::pubsub::ReplayPreset::{Custom, Latest};
    let server = quiet_org().await;
    let fake = FakePubSub::start().await;
    let mut first = TestApp::spawn_with(database, |c| use_salesforce_with(c, &server, &fake.url)).await;
    eventually("a subscription", || async { fake.starts().first().cloned() }).await;
    fake.publish(created("003T", t0(), "Tom", "Ash", "tom@example.com"));
    eventually("the contact", || user_with_crm_id(&first.db, "003T")).await;
    first.stop().await.unwrap();
    // Refusals that do not name the replay id: two are retried from it, the third gives it up.
    for _ in 0..3 {
        fake.refuse_next(tonic::Status::invalid_argument("the request was refused"));
    }
    let _second = first.another_instance_with(|c| use_salesforce_with(c, &server, &fake.url)).await;
    let starts = eventually("a fresh start", || async { Some(fake.starts()).filter(|s| s.len() >= 5) }).await;
    let presets: Vec<_> = starts.iter().map(|s| s.preset).collect();
    assert_eq!(presets, [Latest, Custom, Custom, Custom, Latest]);
}

on_both_databases_without_app!(
    three_refusals_in_a_row_of_a_resumed_subscription_start_it_afresh,
    an_unreadable_event_is_read_from_the_listing_instead_and_keepalives_keep_the_position,
    changes_made_in_salesforce_reach_the_site_over_change_data_capture,
    the_gateways_own_writes_come_back_as_echoes_and_change_nothing,
    a_restarted_gateway_resumes_after_the_last_event_it_applied,
    disconnects_and_a_refused_token_are_survived_without_losing_or_repeating,
    a_refused_or_expired_replay_id_starts_at_the_next_event_and_reconciles,
    one_instance_reads_the_channel_and_another_takes_over_when_it_stops,
    killed_mid_stream_the_gateway_resumes_and_applies_every_event_once,
);
