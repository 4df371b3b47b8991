//! HubSpot as the CRM (`CRM_PROVIDER=hubspot`), against the in-process stub: signed deliveries in,
//! upserts out, and the sync cases the TreadSoft tests cover (out of order, duplicates, echoes,
//! delete versus update, a lost create answer), on both databases.

use crate::helpers::{TestApp, TestDatabase};
use crate::hubspot_stub::{self, Stub};
use crate::on_both_databases_without_app;
use crm_gateway::config::{CrmProvider, HubSpotInbound, Provider};
use crm_gateway::crm::hubspot::client::HubSpotConfig;
use crm_gateway::crm::hubspot::mapping::Mapping;
use entity::enums::CrmSyncStatus;
use entity::{crm_outbox, user};
use reqwest::StatusCode;
use sea_orm::EntityTrait;
use serde_json::{Value, json};
use std::sync::Arc;

/// The public URL HubSpot is configured to call: not the test server's own address, which the
/// signature must not be checked against.
const PUBLIC_URL: &str = "https://gateway.example.com/api/crm/webhooks/hubspot";

fn use_hubspot(config: &mut crm_gateway::config::Config, stub: Option<&Stub>) {
    use_hubspot_with(config, stub, Mapping::default());
}

fn use_hubspot_with(config: &mut crm_gateway::config::Config, stub: Option<&Stub>, mapping: Mapping) {
    let mapping = Arc::new(mapping);
    config.provider =
        Provider::HubSpot(HubSpotInbound { webhook_url: Some(PUBLIC_URL.into()), mapping: mapping.clone() });
    config.webhook_secrets = vec![hubspot_stub::CLIENT_SECRET.to_owned().into()];
    if let Some(stub) = stub {
        config.crm = CrmProvider::HubSpot(HubSpotConfig {
            api_url: stub.server.uri().parse().unwrap(),
            access_token: hubspot_stub::TOKEN.to_owned().into(),
            batch_size: 100,
            mapping,
        });
    }
    config.crm_request_timeout = std::time::Duration::from_millis(500);
    config.crm_rate_limit =
        crm_gateway::crm::rate_limit::RateLimit { requests: 100_000, period: std::time::Duration::from_secs(1) };
}

async fn with_stub(database: TestDatabase) -> (TestApp, Stub) {
    let stub = Stub::start().await;
    let app = TestApp::spawn_with(database, |c| use_hubspot(c, Some(&stub))).await;
    (app, stub)
}

/// Posts `events` signed as HubSpot signs them for the public URL; the answer.
async fn post(app: &TestApp, events: &[Value]) -> reqwest::Response {
    let body = serde_json::to_string(events).unwrap();
    let mut request = app
        .http
        .post(format!("{}/api/crm/webhooks/hubspot", app.address))
        .header("Content-Type", "application/json")
        .body(body.clone());
    for (name, value) in hubspot_stub::signed_headers(PUBLIC_URL, &body) {
        request = request.header(name, value);
    }
    request.send().await.unwrap()
}

/// Sends `events` as one delivery; each event's outcome, in order.
async fn deliver(app: &TestApp, events: &[Value]) -> Vec<String> {
    let response = post(app, events).await;
    assert_eq!(response.status(), StatusCode::OK, "delivery refused");
    let answer: Value = response.json().await.unwrap();
    answer["results"].as_array().unwrap().iter().map(|r| r["outcome"].as_str().unwrap().to_owned()).collect()
}

/// Sends whatever the stub has queued.
async fn flush(app: &TestApp, stub: &Stub) -> Vec<String> {
    let events = stub.take_events();
    if events.is_empty() {
        return Vec::new();
    }
    deliver(app, &events).await
}

async fn user_by_crm_id(app: &TestApp, crm_id: &str) -> Option<user::Model> {
    use sea_orm::{ColumnTrait, QueryFilter};
    user::Entity::find().filter(user::Column::CrmId.eq(crm_id)).one(app.db.reader()).await.unwrap()
}

async fn stored_user(app: &TestApp, id: &str) -> user::Model {
    user::Entity::find_by_id(id).one(app.db.reader()).await.unwrap().unwrap()
}

async fn register(app: &TestApp, event_id: &str, user_id: &str) {
    let owner = json!({"id": user_id, "name": "Mary Anne van Dyke", "email": format!("{user_id}@example.com"),
        "phone": "+44 1", "companyName": null, "role": "owner", "membershipStatus": "pending"});
    let response = app.post_events(&json!({"id": event_id, "type": "owner.registered", "data": owner})).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
}

/// Owner `user_1` and their listing (property 7), sent to HubSpot; the listing's id.
async fn owner_and_listing(app: &TestApp, stub: &Stub) -> String {
    register(app, "ev_1", "user_1").await;
    let property = json!({"id": 7, "ownerId": "user_1", "title": "Haworth Hall", "location": "Haworth",
        "bedrooms": 12, "pricePerNight": 145050, "currency": "GBP", "status": "active"});
    app.post_events(&json!({"id": "ev_p", "type": "property.created", "data": property})).await;
    app.deliver_pending().await;
    stub.take_events();
    stub.state().find("0-420", "crm_gateway_id", "7").unwrap().id.clone()
}

/// A deal for two nights at `listing`, made by a HubSpot user; its id.
fn hubspot_deal(stub: &Stub, listing: &str) -> String {
    stub.state().create(
        "deals",
        &[
            ("dealname", "Bo"),
            ("crm_gateway_guest_email", "bo@example.com"),
            ("crm_gateway_property_id", listing),
            ("crm_gateway_check_in", "2025-08-01"),
            ("crm_gateway_check_out", "2025-08-03"),
            ("crm_gateway_guests", "2"),
            ("amount", "300"),
            ("crm_gateway_status", "pending"),
            ("crm_gateway_payment_status", "pending"),
        ],
        "CRM_UI",
    )
}

fn ann(stub: &Stub) -> String {
    stub.state().create(
        "contacts",
        &[("firstname", "Ann"), ("lastname", "Lee"), ("email", "ann@example.com"), ("phone", "+44 7")],
        "CRM_UI",
    )
}

async fn only_the_configured_providers_route_answers(database: TestDatabase) {
    let treadsoft = TestApp::spawn(database).await;
    let response = post(&treadsoft, &[json!({"eventId": 1})]).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(crate::helpers::error_code(response).await, "not_found");

    let hubspot = treadsoft.another_instance_with(|c| use_hubspot(c, None)).await;
    let response = hubspot.post_webhook(r#"{"deliveryId":"d","events":[{"id":"e"}]}"#).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND, "TreadSoft's route is off while HubSpot is the CRM");
}

async fn a_contact_created_in_hubspot_becomes_a_user_linked_both_ways(database: TestDatabase) {
    let (app, stub) = with_stub(database).await;
    let id = ann(&stub);
    let outcomes = flush(&app, &stub).await;
    assert_eq!(outcomes[0], "applied", "{outcomes:?}");
    let user = user_by_crm_id(&app, &id).await.expect("a user linked to the contact");
    assert_eq!(
        (user.name.as_str(), user.email.as_str(), user.phone.as_deref()),
        ("Ann Lee", "ann@example.com", Some("+44 7"))
    );

    // The link back: HubSpot learns the gateway's id through the unique property.
    app.deliver_pending().await;
    assert_eq!(stub.state().object("contacts", &id).unwrap().get("crm_gateway_id"), Some(user.id.as_str()));
    assert_eq!(stub.state().objects.len(), 1, "no second contact");
}

async fn a_bad_signature_or_another_url_is_refused_and_nothing_is_stored(database: TestDatabase) {
    let (app, stub) = with_stub(database).await;
    ann(&stub);
    let events = stub.take_events();
    let body = serde_json::to_string(&events).unwrap();
    // Signed for the address the request reached (Host), not the configured public URL.
    let own_url = format!("{}/api/crm/webhooks/hubspot", app.address);
    for headers in [hubspot_stub::signed_headers(&own_url, &body), vec![]] {
        let mut request = app.http.post(&own_url).header("Content-Type", "application/json").body(body.clone());
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    assert!(user::Entity::find().all(app.db.reader()).await.unwrap().is_empty());
}

async fn duplicates_and_events_out_of_order_end_at_hubspots_latest_value(database: TestDatabase) {
    let (app, stub) = with_stub(database).await;
    let id = ann(&stub);
    flush(&app, &stub).await;
    stub.state().set("contacts", &id, &[("phone", "+44 8")], "CRM_UI");
    let older = stub.take_events();
    stub.state().set("contacts", &id, &[("phone", "+44 9")], "CRM_UI");
    let newer = stub.take_events();

    assert_eq!(deliver(&app, &newer).await, ["applied"]);
    assert_eq!(deliver(&app, &newer).await, ["duplicate"], "the same event again");
    // The older event, late: the read gives the current value, with its own change time, which
    // is no newer than what is stored.
    assert_eq!(deliver(&app, &older).await, ["stale"]);
    assert_eq!(user_by_crm_id(&app, &id).await.unwrap().phone.as_deref(), Some("+44 9"));
}

async fn an_owner_registered_here_reaches_hubspot_once_and_its_echo_changes_nothing(database: TestDatabase) {
    let (app, stub) = with_stub(database).await;
    register(&app, "ev_1", "user_1").await;
    assert_eq!(app.deliver_pending().await, 1);
    let contact =
        stub.state().find("contacts", "crm_gateway_id", "user_1").cloned().expect("upserted by the id property");
    assert_eq!((contact.get("firstname"), contact.get("lastname")), (Some("Mary"), Some("Anne van Dyke")));
    let user = stored_user(&app, "user_1").await;
    assert_eq!(user.crm_id.as_deref(), Some(contact.id.as_str()));
    assert_eq!(user.crm_sync_status, CrmSyncStatus::Synced);

    // A local edit waits to be sent while the echo of the first write arrives.
    app.post_events(&json!({"id": "ev_2", "type": "owner.updated", "data": {"id": "user_1", "phone": "+44 2"}})).await;
    // The id property is not a synced field: its events are recorded and not applied.
    let echoes = flush(&app, &stub).await;
    assert!(echoes.iter().all(|o| o == "echo" || o == "ignored"), "{echoes:?}");
    assert_eq!(echoes.iter().filter(|o| *o == "echo").count(), 8, "the creation and its seven fields: {echoes:?}");
    assert_eq!(stored_user(&app, "user_1").await.phone.as_deref(), Some("+44 2"), "the local edit stands");

    app.deliver_pending().await;
    assert_eq!(stub.state().object("contacts", &contact.id).unwrap().get("phone"), Some("+44 2"));
    assert_eq!(flush(&app, &stub).await, ["echo"], "the phone's echo");
    assert_eq!(stub.state().objects.len(), 1);
}

async fn a_change_back_to_an_earlier_value_in_hubspot_is_not_taken_for_an_echo(database: TestDatabase) {
    let (app, stub) = with_stub(database).await;
    register(&app, "ev_1", "user_1").await;
    app.deliver_pending().await;
    flush(&app, &stub).await;
    app.post_events(&json!({"id": "ev_2", "type": "owner.updated", "data": {"id": "user_1", "phone": "+44 2"}})).await;
    app.deliver_pending().await;
    flush(&app, &stub).await;

    // A HubSpot user sets the phone back to the first value the gateway sent.
    let crm_id = stored_user(&app, "user_1").await.crm_id.unwrap();
    stub.state().set("contacts", &crm_id, &[("phone", "+44 1")], "CRM_UI");
    assert_eq!(flush(&app, &stub).await, ["applied"]);
    assert_eq!(stored_user(&app, "user_1").await.phone.as_deref(), Some("+44 1"));
}

async fn a_delete_in_hubspot_beats_an_older_change_arriving_after_it(database: TestDatabase) {
    let (app, stub) = with_stub(database).await;
    let id = ann(&stub);
    flush(&app, &stub).await;
    stub.state().set("contacts", &id, &[("phone", "+44 8")], "CRM_UI");
    let change = stub.take_events();
    assert!(stub.state().delete("contacts", &id));
    assert_eq!(flush(&app, &stub).await, ["applied"]);
    let user = user_by_crm_id(&app, &id).await.unwrap();
    assert!(user.deleted_at.is_some());
    assert_eq!(deliver(&app, &change).await, ["stale"]);
    assert!(user_by_crm_id(&app, &id).await.unwrap().deleted_at.is_some());
}

async fn a_create_whose_answer_was_lost_is_not_made_twice(database: TestDatabase) {
    let (app, stub) = with_stub(database).await;
    register(&app, "ev_1", "user_1").await;
    // The first attempt reached HubSpot, and its answer was lost on the way back.
    stub.state().create("contacts", &[("crm_gateway_id", "user_1"), ("email", "user_1@example.com")], "INTEGRATION");
    stub.take_events();
    app.deliver_pending().await;
    assert_eq!(stub.state().objects.len(), 1, "the upsert found the record by its id property");
    let contact = stub.state().find("contacts", "crm_gateway_id", "user_1").cloned().unwrap();
    assert_eq!(stored_user(&app, "user_1").await.crm_id.as_deref(), Some(contact.id.as_str()));
    assert_eq!(contact.get("firstname"), Some("Mary"));
}

async fn a_partial_answer_fails_only_the_refused_record(database: TestDatabase) {
    let (app, stub) = with_stub(database).await;
    stub.state().refuse.insert("user_2".into());
    register(&app, "ev_1", "user_1").await;
    register(&app, "ev_2", "user_2").await;
    app.deliver_pending().await;
    assert_eq!(stored_user(&app, "user_1").await.crm_sync_status, CrmSyncStatus::Synced);
    let refused = stored_user(&app, "user_2").await;
    assert_eq!(refused.crm_sync_status, CrmSyncStatus::Failed);
    let row = crm_outbox::Entity::find().all(app.db.reader()).await.unwrap();
    let error = row.iter().find(|r| r.record_id == "user_2").unwrap().last_error.clone().unwrap_or_default();
    assert!(error.contains("Property values were not valid for user_2"), "{error}");
}

async fn a_429_waits_for_retry_after(database: TestDatabase) {
    let (app, stub) = with_stub(database).await;
    register(&app, "ev_1", "user_1").await;
    stub.fail_next(429, Some(7));
    app.deliver_pending().await;
    let row = crm_outbox::Entity::find().one(app.db.reader()).await.unwrap().unwrap();
    assert!(row.next_attempt_at >= chrono::Utc::now() + chrono::Duration::seconds(6), "{row:?}");
    assert!(stub.state().objects.is_empty(), "nothing was written");
}

async fn a_contact_hubspot_has_by_email_is_linked_not_duplicated(database: TestDatabase) {
    let (app, stub) = with_stub(database).await;
    let existing = stub.state().create("contacts", &[("email", "user_1@example.com"), ("firstname", "M")], "CRM_UI");
    stub.take_events();
    register(&app, "ev_1", "user_1").await;
    app.deliver_pending().await;
    assert_eq!(stub.state().objects.len(), 1);
    assert_eq!(stored_user(&app, "user_1").await.crm_id.as_deref(), Some(existing.as_str()));
    assert_eq!(stub.state().object("contacts", &existing).unwrap().get("firstname"), Some("Mary"));
}

async fn references_are_written_as_associations_too(database: TestDatabase) {
    let (app, stub) = with_stub(database).await;
    register(&app, "ev_1", "user_1").await;
    let property = json!({"id": 4201, "ownerId": "user_1", "title": "Haworth Hall", "location": "Haworth",
        "bedrooms": 12, "pricePerNight": 145050, "currency": "GBP", "status": "active"});
    app.post_events(&json!({"id": "ev_2", "type": "property.created", "data": property})).await;
    app.deliver_pending().await;
    let owner = stored_user(&app, "user_1").await.crm_id.unwrap();
    let listing = stub.state().find("0-420", "crm_gateway_id", "4201").cloned().expect("the listing");
    assert_eq!(listing.get("crm_gateway_owner_contact_id"), Some(owner.as_str()));
    assert_eq!(listing.get("crm_gateway_price_per_night"), Some("1450.5"));
    assert_eq!(listing.get("hs_name"), Some("Haworth Hall"));
    assert!(stub.state().associations.contains(&("0-420".into(), listing.id.clone(), "contacts".into(), owner)));
}

async fn subscriptions_not_synced_are_recorded_and_answered(database: TestDatabase) {
    let (app, _stub) = with_stub(database).await;
    let events = [
        json!({"eventId": 1, "subscriptionId": 2, "portalId": 3, "occurredAt": 1_700_000_000_000_i64,
            "subscriptionType": "company.creation", "objectId": 5}),
        json!({"eventId": 2, "subscriptionId": 2, "portalId": 3, "occurredAt": 1_700_000_000_000_i64,
            "subscriptionType": "contact.propertyChange", "objectId": 6, "propertyName": "hs_lead_status",
            "propertyValue": "NEW"}),
    ];
    assert_eq!(deliver(&app, &events).await, ["ignored", "ignored"]);
    assert_eq!(deliver(&app, &events).await, ["duplicate", "duplicate"]);
}

async fn with_the_mock_client_a_change_applies_from_the_events_own_value(database: TestDatabase) {
    use sea_orm::sea_query::Expr;
    let app = TestApp::spawn_with(database, |c| use_hubspot(c, None)).await;
    register(&app, "ev_1", "user_1").await;
    app.deliver_pending().await;
    // Linked to HubSpot contact 4711 (the mock's own ids are not HubSpot's).
    user::Entity::update_many().col_expr(user::Column::CrmId, Expr::value("4711")).exec(app.db.writer()).await.unwrap();
    let at = chrono::Utc::now().timestamp_millis() + 1000;
    let event = json!({"eventId": 9, "subscriptionId": 2, "portalId": 3, "occurredAt": at,
        "subscriptionType": "contact.propertyChange", "objectId": 4711, "propertyName": "phone",
        "propertyValue": "+44 5", "changeSource": "CRM_UI"});
    assert_eq!(deliver(&app, &[event]).await, ["applied"]);
    assert_eq!(stored_user(&app, "user_1").await.phone.as_deref(), Some("+44 5"));
}

async fn lost_webhooks_are_healed_by_an_import_and_the_audit_proves_it(database: TestDatabase) {
    use crm_gateway::pull::audit;
    use crm_gateway::pull::import::{Importer, Quiet, Start};
    use crm_gateway::sync::mapping::RecordType;
    let (app, stub) = with_stub(database).await;
    let ann = ann(&stub);
    let bob = stub.state().create("contacts", &[("firstname", "Bob"), ("email", "bob@example.com")], "CRM_UI");
    stub.take_events(); // never delivered
    let importer = Importer {
        db: app.db.clone(),
        writer: app.writer.clone(),
        crm: app.delivery.crm(),
        sync: app.sync.clone(),
        overlap: chrono::Duration::zero(),
    };
    let epoch = chrono::DateTime::UNIX_EPOCH;
    let first = importer.pass(RecordType::Contact, Start::Since(epoch), false, &Quiet).await.unwrap();
    assert_eq!((first.seen, first.created), (2, 2), "{first:?}");
    assert_eq!(
        user_by_crm_id(&app, &bob).await.unwrap().role,
        entity::enums::Role::Guest,
        "a HubSpot contact is a guest"
    );

    // A change whose webhook is lost too: the next pass takes it, and only it.
    stub.state().set("contacts", &ann, &[("phone", "+44 3")], "CRM_UI");
    stub.take_events();
    let again = importer.pass(RecordType::Contact, Start::Resume, false, &Quiet).await.unwrap();
    assert_eq!(again.updated, 1, "{again:?}");
    assert_eq!(user_by_crm_id(&app, &ann).await.unwrap().phone.as_deref(), Some("+44 3"));

    app.deliver_pending().await; // the link-backs
    let report = audit::run(&importer, &[RecordType::Contact], false, &Quiet).await.unwrap();
    assert_eq!(report.counts.differences(), 0, "{:?}", report.items);
    assert_eq!(report.counts.compared, 2);
}

#[tokio::test]
async fn setup_creates_the_missing_properties_once() {
    let stub = Stub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_crm-gateway"))
            .env_clear()
            .current_dir(dir.path())
            .envs([
                ("CRM_PROVIDER", "hubspot"),
                ("CRM_ENABLED", "true"),
                ("CRM_API_URL", stub.server.uri().as_str()),
                ("CRM_API_KEY", hubspot_stub::TOKEN),
            ])
            .args(args)
            .output()
            .unwrap()
    };
    let dry = run(&["hubspot", "setup", "--dry-run", "--json"]);
    assert!(dry.status.success(), "{}", String::from_utf8_lossy(&dry.stderr));
    let dry: Value = serde_json::from_slice(&dry.stdout).unwrap();
    let would = dry["properties"].as_array().unwrap().iter().filter(|p| p["result"] == "would create").count();
    assert!(would > 20, "{dry}");
    assert!(stub.state().properties.is_empty(), "a dry run creates nothing");

    let made = run(&["hubspot", "setup"]);
    let text = String::from_utf8_lossy(&made.stdout);
    assert!(made.status.success(), "{text}{}", String::from_utf8_lossy(&made.stderr));
    assert!(text.contains(&format!("Created {would} properties in the crm_gateway group.")), "{text}");
    let contacts = stub.state().properties["contacts"].clone();
    let id = contacts.iter().find(|p| p["name"] == "crm_gateway_id").expect("the id property");
    assert_eq!(id["hasUniqueValue"], true);
    let bedrooms = stub.state().properties["0-420"].iter().find(|p| p["name"] == "crm_gateway_bedrooms").cloned();
    assert_eq!(bedrooms.unwrap()["type"], "number");
    assert!(!contacts.iter().any(|p| p["name"] == "firstname"), "standard properties are left alone");

    let again = run(&["hubspot", "setup"]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("Nothing to create"));

    let unconfigured = std::process::Command::new(env!("CARGO_BIN_EXE_crm-gateway"))
        .env_clear()
        .current_dir(dir.path())
        .args(["hubspot", "setup"])
        .output()
        .unwrap();
    assert_eq!(unconfigured.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unconfigured.stderr).contains("set CRM_PROVIDER=hubspot"));
}

async fn a_record_type_switched_off_is_neither_sent_nor_taken(database: TestDatabase) {
    let stub = Stub::start().await;
    let mapping = Mapping::parse("[enquiry]\nenabled = false").unwrap();
    let app = TestApp::spawn_with(database, |c| use_hubspot_with(c, Some(&stub), mapping)).await;
    let enquiry = json!({"id": 11, "userId": null, "propertyId": null, "guestName": "Ann Lee",
        "guestEmail": "ann@example.com", "guestPhone": null, "subject": "Dates", "message": "Free in May?",
        "status": "new", "source": "website"});
    let response = app.post_events(&json!({"id": "ev_e", "type": "enquiry.created", "data": enquiry})).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    app.deliver_pending().await;
    assert!(stub.state().calls.iter().all(|(_, path, _)| !path.contains("tickets")), "no ticket call");
    let row = crm_outbox::Entity::find().one(app.db.reader()).await.unwrap().unwrap();
    assert!(row.last_error.unwrap_or_default().contains("not synced"));
    let ticket = stub.state().create("tickets", &[("subject", "Hello")], "CRM_UI");
    assert!(!ticket.is_empty());
    assert!(flush(&app, &stub).await.iter().all(|o| o == "ignored"));
}

async fn a_merge_keeps_one_user_linked_to_the_survivor_and_deletes_the_duplicate(database: TestDatabase) {
    let (app, stub) = with_stub(database).await;
    for new_id in [false, true] {
        // The primary is the younger record (a larger id): the merge keeps it, not the older.
        let second = stub.state().create(
            "contacts",
            &[("firstname", "Ann"), ("lastname", "Lee-Smith"), ("email", format!("ann{new_id}@example.org").as_str())],
            "CRM_UI",
        );
        let first = stub.state().create(
            "contacts",
            &[("firstname", "Ann"), ("lastname", "Lee"), ("email", format!("ann{new_id}@example.com").as_str())],
            "CRM_UI",
        );
        flush(&app, &stub).await;
        let (kept, gone) = (user_by_crm_id(&app, &first).await.unwrap(), user_by_crm_id(&app, &second).await.unwrap());
        // A change to the second one, delivered late, after the merge.
        stub.state().set("contacts", &second, &[("phone", "+44 6")], "CRM_UI");
        let late = stub.take_events();
        let survivor = stub.state().merge("contacts", &first, &second, new_id);
        let outcomes = flush(&app, &stub).await;
        assert!(outcomes.iter().all(|o| o == "applied" || o == "echo"), "{outcomes:?}");

        let linked = user_by_crm_id(&app, &survivor).await.expect("a user linked to the survivor");
        assert_eq!(linked.id, kept.id, "the primary's user is kept (new id: {new_id})");
        assert!(linked.deleted_at.is_none());
        let duplicate = stored_user(&app, &gone.id).await;
        assert!(duplicate.deleted_at.is_some(), "the merged contact's user is deleted here");
        assert_eq!(deliver(&app, &late).await, ["stale"], "the merged record cannot come back");
        assert!(stored_user(&app, &gone.id).await.deleted_at.is_some());
    }
}

async fn every_record_type_reaches_its_object_and_associations_made_in_hubspot_come_back(database: TestDatabase) {
    let stub = Stub::start().await;
    let mapping = Mapping::parse("[membership]\nenabled = true").unwrap();
    let app = TestApp::spawn_with(database, |c| use_hubspot_with(c, Some(&stub), mapping)).await;
    register(&app, "ev_o", "user_1").await;
    register(&app, "ev_o2", "user_2").await;
    let events = crate::helpers::every_record_type_of_user_1();
    assert_eq!(app.post_events(&events).await.status(), StatusCode::ACCEPTED);
    app.deliver_pending().await;

    let (listing, ticket, deal, membership) = {
        let state = stub.state();
        let find = |object: &str, id: &str| state.find(object, "crm_gateway_id", id).cloned().expect(object);
        (find("0-420", "7"), find("tickets", "11"), find("deals", "21"), find("p_memberships", "31"))
    };
    assert_eq!((ticket.get("subject"), ticket.get("hs_pipeline_stage")), (Some("Dogs?"), Some("1")));
    assert_eq!(
        (deal.get("dealname"), deal.get("amount"), deal.get("pipeline")),
        (Some("Ann Lee"), Some("10153.5"), Some("default"))
    );
    assert_eq!(deal.get("crm_gateway_property_id"), Some(listing.id.as_str()));
    assert_eq!(membership.get("crm_gateway_auto_renew"), Some("true"));
    assert_eq!(membership.get("crm_gateway_end_date"), Some(""));

    // The gateway's own associations come back as echoes.
    let outcomes = flush(&app, &stub).await;
    assert!(!outcomes.iter().any(|o| o == "applied" || o == "failed"), "{outcomes:?}");

    // A HubSpot user moves the deal to another contact, then removes it.
    use entity::bookings;
    let user_2 = stored_user(&app, "user_2").await.crm_id.unwrap();
    stub.state().associate(("deals", &deal.id), ("contacts", &user_2), false, "CRM_UI");
    let outcomes = flush(&app, &stub).await;
    assert_eq!(outcomes, ["applied", "ignored"], "the deal's side applies, the contact's is its mirror");
    let booking = bookings::Entity::find_by_id(21).one(app.db.reader()).await.unwrap().unwrap();
    assert_eq!(booking.user_id.as_deref(), Some("user_2"));
    // The move's other half, the removal of the first contact, arriving after: the guest stays.
    let user_1 = stored_user(&app, "user_1").await.crm_id.unwrap();
    stub.state().associate(("deals", &deal.id), ("contacts", &user_1), true, "CRM_UI");
    assert_eq!(flush(&app, &stub).await, ["ignored", "ignored"]);
    let booking = bookings::Entity::find_by_id(21).one(app.db.reader()).await.unwrap().unwrap();
    assert_eq!(booking.user_id.as_deref(), Some("user_2"));
    stub.state().associate(("deals", &deal.id), ("0-420", &listing.id), true, "CRM_UI");
    assert_eq!(flush(&app, &stub).await, ["ignored", "ignored"]);
    let booking = bookings::Entity::find_by_id(21).one(app.db.reader()).await.unwrap().unwrap();
    assert_eq!(booking.property_id, 7);
}

async fn linking_a_hubspot_contact_without_site_values_keeps_the_owner_an_owner(database: TestDatabase) {
    let (app, stub) = with_stub(database).await;
    // Registered here, not yet sent; the same person is added in HubSpot by hand.
    register(&app, "ev_1", "user_1").await;
    let id = stub.state().create(
        "contacts",
        &[("firstname", "Mary"), ("lastname", "Anne van Dyke"), ("email", "user_1@example.com")],
        "CRM_UI",
    );
    let outcomes = flush(&app, &stub).await;
    assert_eq!(outcomes[0], "applied", "{outcomes:?}");
    let user = stored_user(&app, "user_1").await;
    assert_eq!(user.crm_id.as_deref(), Some(id.as_str()), "linked by email");
    assert_eq!(user.role, entity::enums::Role::Owner, "HubSpot holds no role: the site's stands");
    assert_eq!(user.phone.as_deref(), Some("+44 1"), "nor does an empty phone clear the site's");
    assert_eq!(user.membership_status, entity::enums::MembershipStatus::Pending);
}

async fn a_change_back_to_the_last_value_sent_is_taken_too(database: TestDatabase) {
    let (app, stub) = with_stub(database).await;
    register(&app, "ev_1", "user_1").await;
    app.deliver_pending().await;
    flush(&app, &stub).await;
    let crm_id = stored_user(&app, "user_1").await.crm_id.unwrap();
    stub.state().set("contacts", &crm_id, &[("phone", "+44 3")], "CRM_UI");
    assert_eq!(flush(&app, &stub).await, ["applied"]);
    // Back to "+44 1", the value the gateway sent last.
    stub.state().set("contacts", &crm_id, &[("phone", "+44 1")], "CRM_UI");
    assert_eq!(flush(&app, &stub).await, ["applied"]);
    assert_eq!(stored_user(&app, "user_1").await.phone.as_deref(), Some("+44 1"));
}

async fn objects_of_two_types_with_one_id_are_both_read(database: TestDatabase) {
    let (app, stub) = with_stub(database).await;
    let listing = owner_and_listing(&app, &stub).await;
    // A contact and a deal made in HubSpot, both numbered 902 (deal 901 is someone else's).
    stub.state().create("deals", &[("dealname", "Someone else")], "CRM_UI");
    stub.take_events();
    let contact = stub.state().create("contacts", &[("firstname", "Bo"), ("email", "bo@example.com")], "CRM_UI");
    let deal = hubspot_deal(&stub, &listing);
    assert_eq!(contact, deal, "the same number in two object types");
    let outcomes = flush(&app, &stub).await;
    assert!(!outcomes.iter().any(|o| o == "failed"), "{outcomes:?}");
    assert!(user_by_crm_id(&app, &contact).await.is_some());
    use sea_orm::{ColumnTrait, QueryFilter};
    let booking = entity::bookings::Entity::find()
        .filter(entity::bookings::Column::CrmId.eq(deal.as_str()))
        .one(app.db.reader())
        .await
        .unwrap()
        .expect("the deal became a booking");
    assert_eq!((booking.property_id, booking.guests, booking.total_price), (7, 2, 30000));
}

async fn a_whole_batch_refused_for_one_email_is_sent_again_record_by_record(database: TestDatabase) {
    let (app, stub) = with_stub(database).await;
    let existing = stub.state().create("contacts", &[("email", "user_2@example.com")], "CRM_UI");
    stub.take_events();
    stub.state().refuse_whole_batch = true;
    register(&app, "ev_1", "user_1").await;
    register(&app, "ev_2", "user_2").await;
    app.deliver_pending().await;
    assert_eq!(stored_user(&app, "user_2").await.crm_id.as_deref(), Some(existing.as_str()), "linked, not failed");
    assert_eq!(stored_user(&app, "user_1").await.crm_sync_status, CrmSyncStatus::Synced);
    assert_eq!(stub.state().objects.len(), 2);
}

async fn answers_that_do_not_say_which_record_is_which_link_nothing_wrongly(database: TestDatabase) {
    let (app, stub) = with_stub(database).await;
    stub.state().hide_id_property = true;
    register(&app, "ev_1", "user_1").await;
    register(&app, "ev_2", "user_2").await;
    app.deliver_pending().await;
    assert_eq!(stored_user(&app, "user_1").await.crm_id, None, "which result is whose is unknown");
    assert_eq!(stored_user(&app, "user_2").await.crm_id, None);
    stub.state().hide_id_property = false;
    app.deliver_at(chrono::Utc::now() + chrono::Duration::hours(1)).await;
    for user in ["user_1", "user_2"] {
        let crm_id = stored_user(&app, user).await.crm_id.expect("linked once the answer says");
        assert_eq!(stub.state().object("contacts", &crm_id).unwrap().get("crm_gateway_id"), Some(user));
    }
    assert_eq!(stub.state().objects.len(), 2, "the upserts made no second record");
}

async fn an_association_before_its_record_waits_for_it(database: TestDatabase) {
    let (app, stub) = with_stub(database).await;
    let listing = owner_and_listing(&app, &stub).await;
    let contact = stored_user(&app, "user_1").await.crm_id.unwrap();
    let deal = hubspot_deal(&stub, &listing);
    let creation = stub.take_events();
    stub.state().associate(("deals", &deal), ("contacts", &contact), false, "CRM_UI");
    // The association comes first: the deal is not here yet.
    assert_eq!(flush(&app, &stub).await, ["waiting", "ignored"]);
    let outcomes = deliver(&app, &creation).await;
    assert!(!outcomes.iter().any(|o| o == "failed"), "{outcomes:?}");
    use sea_orm::{ColumnTrait, QueryFilter};
    let booking = entity::bookings::Entity::find()
        .filter(entity::bookings::Column::CrmId.eq(deal.as_str()))
        .one(app.db.reader())
        .await
        .unwrap()
        .expect("the deal became a booking");
    assert_eq!(booking.user_id.as_deref(), Some("user_1"), "the waiting association applied once it could");
}

async fn a_creation_hubspot_cannot_show_is_sent_again_for_a_while_then_recorded(database: TestDatabase) {
    let (app, _stub) = with_stub(database).await;
    let creation = |at: i64| {
        json!({"eventId": 5, "subscriptionId": 2, "portalId": 3, "occurredAt": at,
            "subscriptionType": "contact.creation", "objectId": 4242})
    };
    let now = chrono::Utc::now().timestamp_millis();
    let response = post(&app, &[creation(now)]).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "not readable yet: HubSpot sends it again");
    assert_eq!(crate::helpers::error_code(response).await, "crm_unavailable");
    // Ten minutes on, it is gone (deleted or merged since): recorded, answered.
    assert_eq!(deliver(&app, &[creation(now - 600_000)]).await, ["ignored"]);
}

on_both_databases_without_app!(
    only_the_configured_providers_route_answers,
    a_contact_created_in_hubspot_becomes_a_user_linked_both_ways,
    a_bad_signature_or_another_url_is_refused_and_nothing_is_stored,
    duplicates_and_events_out_of_order_end_at_hubspots_latest_value,
    an_owner_registered_here_reaches_hubspot_once_and_its_echo_changes_nothing,
    a_change_back_to_an_earlier_value_in_hubspot_is_not_taken_for_an_echo,
    a_delete_in_hubspot_beats_an_older_change_arriving_after_it,
    a_create_whose_answer_was_lost_is_not_made_twice,
    a_partial_answer_fails_only_the_refused_record,
    a_429_waits_for_retry_after,
    a_contact_hubspot_has_by_email_is_linked_not_duplicated,
    references_are_written_as_associations_too,
    subscriptions_not_synced_are_recorded_and_answered,
    with_the_mock_client_a_change_applies_from_the_events_own_value,
    lost_webhooks_are_healed_by_an_import_and_the_audit_proves_it,
    a_record_type_switched_off_is_neither_sent_nor_taken,
    a_merge_keeps_one_user_linked_to_the_survivor_and_deletes_the_duplicate,
    every_record_type_reaches_its_object_and_associations_made_in_hubspot_come_back,
    linking_a_hubspot_contact_without_site_values_keeps_the_owner_an_owner,
    a_change_back_to_the_last_value_sent_is_taken_too,
    objects_of_two_types_with_one_id_are_both_read,
    a_whole_batch_refused_for_one_email_is_sent_again_record_by_record,
    answers_that_do_not_say_which_record_is_which_link_nothing_wrongly,
    an_association_before_its_record_waits_for_it,
    a_creation_hubspot_cannot_show_is_sent_again_for_a_while_then_recorded,
);
