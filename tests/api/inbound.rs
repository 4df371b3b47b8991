//! TreadSoft webhooks: verification, the inbox, and each last-writer-wins rule by name.

use crate::helpers::{TestApp, TestDatabase, error_code};
use crate::{on_both_databases, on_both_databases_without_app};
use chrono::{DateTime, Duration, Utc};
use entity::{crm_inbox, crm_outbox, crm_requests, crm_sync_logs, properties, user};
use reqwest::StatusCode;
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, Set};
use serde_json::{Value, json};

const T0: &str = "2025-01-05T10:00:00.000Z";

fn at(offset_secs: i64) -> String {
    let t0: DateTime<Utc> = T0.parse().unwrap();
    (t0 + Duration::seconds(offset_secs)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A TreadSoft event about `crm_id` at version `version`, stamped `offset_secs` after T0.
pub(crate) fn event(
    id: &str,
    kind: &str,
    crm_id: &str,
    version: i64,
    offset_secs: i64,
    changed: &[&str],
    data: Value,
) -> Value {
    let (record, action) = kind.split_once('.').unwrap();
    let deleted = action == "deleted";
    json!({
        "id": id, "type": kind, "occurredAt": at(offset_secs), "changeSource": "ui", "requestId": null,
        "changedFields": changed,
        "object": {
            "type": record, "id": crm_id, "externalId": null, "version": version, "updatedAt": at(offset_secs),
            "deletedAt": if deleted { json!(at(offset_secs)) } else { Value::Null },
            "data": if deleted { Value::Null } else { data },
        }
    })
}

fn contact(phone: &str, company: Option<&str>) -> Value {
    json!({
        "firstName": "John", "lastName": "Smith", "email": "john@example.com", "phone": phone,
        "companyName": company, "role": "owner", "membershipStatus": "active"
    })
}

pub(crate) fn created(id: &str, crm_id: &str) -> Value {
    let mut data = contact("+44 1", None);
    data["email"] = json!(format!("{crm_id}@example.com"));
    event(id, "contact.created", crm_id, 1, 0, &[], data)
}

async fn user_by_crm_id(app: &TestApp, crm_id: &str) -> user::Model {
    user::Entity::find()
        .filter(user::Column::CrmId.eq(crm_id))
        .one(app.db.reader())
        .await
        .unwrap()
        .expect("a linked user")
}

async fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/fixtures/deliveries/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

// --- verification and refusals ------------------------------------------------------------

async fn a_signed_delivery_creates_the_contact_as_a_user(app: TestApp) {
    let response = app.post_webhook(&fixture("single-event.json").await).await;

    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["deliveryId"], "11111111-1111-4111-8111-111111111111");
    assert_eq!(body["results"], json!([{ "eventId": "evt_fixture_single_0001", "outcome": "applied" }]));
    let user = user_by_crm_id(&app, "crm_contact_fx_1").await;
    assert_eq!((user.name.as_str(), user.email.as_str()), ("John Smith", "john.smith@example.com"));
    assert_eq!(user.role, entity::enums::Role::Owner);
    assert_eq!(user.crm_sync_status, entity::enums::CrmSyncStatus::Synced);
    assert!(user.crm_last_synced_at.is_some());
    let log = crm_sync_logs::Entity::find().one(app.db.reader()).await.unwrap().unwrap();
    assert_eq!((log.entity_type.as_str(), log.action.as_str(), log.status.as_str()), ("contact", "create", "success"));
    assert_eq!(log.entity_id, user.id);
    let link = crm_outbox::Entity::find().one(app.db.reader()).await.unwrap().expect("a link-back is queued");
    assert_eq!((link.operation.as_str(), link.record_id.as_str()), ("link", user.id.as_str()));
}

async fn refusals_say_which_check_failed_and_store_nothing(app: TestApp) {
    let body = fixture("single-event.json").await;
    let now = Utc::now().timestamp();
    let sign = |ts: i64| crm_gateway::inbound::verify::treadsoft_signature("whsec_test_fixtures", ts, body.as_bytes());

    let missing = app.post_webhook_with(&body, &[("X-TreadSoft-Timestamp", now.to_string())]).await;
    let wrong = app
        .post_webhook_with(
            &body,
            &[("X-TreadSoft-Timestamp", now.to_string()), ("X-TreadSoft-Signature", sign(now - 1))],
        )
        .await;
    let old = app
        .post_webhook_with(
            &body,
            &[("X-TreadSoft-Timestamp", (now - 301).to_string()), ("X-TreadSoft-Signature", sign(now - 301))],
        )
        .await;

    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(missing).await, "missing_signature");
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(wrong).await, "invalid_signature");
    assert_eq!(old.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(old).await, "timestamp_out_of_tolerance");
    assert_eq!(crm_inbox::Entity::find().count(app.db.reader()).await.unwrap(), 0);
    assert_eq!(user::Entity::find().count(app.db.reader()).await.unwrap(), 0);
}

async fn a_signed_body_that_is_not_a_delivery_is_400(app: TestApp) {
    for body in ["not json", r#"{"deliveryId":"d","events":[]}"#, r#"{"deliveryId":"d","events":[{"type":"x"}]}"#] {
        let response = app.post_webhook(body).await;

        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(error_code(response).await, "invalid_delivery");
    }
    assert_eq!(crm_inbox::Entity::find().count(app.db.reader()).await.unwrap(), 0);
}

async fn a_body_over_the_limit_is_413(database: TestDatabase) {
    let app = TestApp::spawn_with(database, |c| c.webhook_max_bytes = 1024).await;

    let response = app.post_webhook(&fixture("batch-100.json").await).await;

    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(response).await, "payload_too_large");
}

async fn without_a_secret_webhooks_are_503(database: TestDatabase) {
    let app = TestApp::spawn_with(database, |c| c.webhook_secrets.clear()).await;

    let response = app.post_webhook(&fixture("single-event.json").await).await;

    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_code(response).await, "webhook_secret_not_configured");
}

async fn standard_webhooks_deliveries_are_accepted(database: TestDatabase) {
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let app = TestApp::spawn_with(database, |c| c.webhook_secrets = vec![secret.to_owned().into()]).await;
    let body = fixture("single-event.json").await;
    let now = Utc::now().timestamp();
    let signature = crm_gateway::inbound::verify::standard_signature(secret, "msg_1", now, body.as_bytes()).unwrap();

    let response = app
        .post_webhook_with(
            &body,
            &[("webhook-id", "msg_1".into()), ("webhook-timestamp", now.to_string()), ("webhook-signature", signature)],
        )
        .await;

    assert_eq!(response.status(), StatusCode::OK);
    user_by_crm_id(&app, "crm_contact_fx_1").await;
}

async fn every_fixture_is_signed_and_applies(app: TestApp) {
    let dir = format!("{}/tests/fixtures/deliveries", env!("CARGO_MANIFEST_DIR"));
    let secrets = ["whsec_test_fixtures".to_owned().into()];
    for (name, expected) in [
        ("single-event", vec!["applied"]),
        ("contact-updated", vec!["applied"]),
        ("contact-deleted", vec!["applied"]),
        ("each-record-type", vec!["applied"; 5]),
        ("unicode", vec!["waiting"]),
        ("batch-100", vec!["applied"; 100]),
    ] {
        let body = std::fs::read_to_string(format!("{dir}/{name}.json")).unwrap();
        let headers = std::fs::read_to_string(format!("{dir}/{name}.headers")).unwrap();
        let header = |h: &str| headers.lines().find_map(|l| l.strip_prefix(h)).map(str::trim);
        let signed = crm_gateway::inbound::verify::SignedHeaders::TreadSoft {
            timestamp: header("X-TreadSoft-Timestamp:"),
            signature: header("X-TreadSoft-Signature:"),
        };
        assert_eq!(
            crm_gateway::inbound::verify::verify(signed, body.as_bytes(), &secrets, 1_736_073_000, 300),
            Ok(()),
            "{name}"
        );

        let response = app.post_webhook(&body).await;

        assert_eq!(response.status(), StatusCode::OK, "{name}");
        let answer: Value = response.json().await.unwrap();
        let outcomes: Vec<&str> =
            answer["results"].as_array().unwrap().iter().map(|r| r["outcome"].as_str().unwrap()).collect();
        assert_eq!(outcomes, expected, "{name}");
    }
    let deleted = user_by_crm_id(&app, "crm_contact_fx_1").await;
    assert!(deleted.deleted_at.is_some(), "contact-deleted soft-deletes");
    assert_eq!(deleted.phone.as_deref(), Some("+44 7700 900999"), "contact-updated applied before");
    let property = properties::Entity::find()
        .filter(properties::Column::CrmId.eq("crm_property_fx_1"))
        .one(app.db.reader())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(property.price_per_night, 145_050);
    assert_eq!(user::Entity::find().count(app.db.reader()).await.unwrap(), 102);
}

async fn the_rotation_fixture_verifies_with_either_secret() {
    let dir = format!("{}/tests/fixtures/deliveries", env!("CARGO_MANIFEST_DIR"));
    let body = std::fs::read_to_string(format!("{dir}/single-event.json")).unwrap();
    let headers = std::fs::read_to_string(format!("{dir}/rotation.headers")).unwrap();
    let signature = headers.lines().find_map(|l| l.strip_prefix("X-TreadSoft-Signature:")).map(str::trim);
    let signed = crm_gateway::inbound::verify::SignedHeaders::TreadSoft { timestamp: Some("1736073000"), signature };
    for secret in ["whsec_test_fixtures", "whsec_test_fixtures_old"] {
        let result = crm_gateway::inbound::verify::verify(
            signed,
            body.as_bytes(),
            &[secret.to_owned().into()],
            1_736_073_000,
            300,
        );
        assert_eq!(result, Ok(()), "{secret}");
    }
}

#[tokio::test]
async fn rotation_fixture_carries_both_signatures() {
    the_rotation_fixture_verifies_with_either_secret().await;
}

// --- inbox and idempotency ----------------------------------------------------------------

async fn a_repeated_event_is_a_duplicate_and_changes_nothing(app: TestApp) {
    let first = app.deliver(&[created("evt_1", "crm_contact_1")]).await;
    let before = user_by_crm_id(&app, "crm_contact_1").await;

    let again = app.deliver(&[created("evt_1", "crm_contact_1")]).await;

    assert_eq!((first, again), (vec!["applied".to_owned()], vec!["duplicate".to_owned()]));
    assert_eq!(user_by_crm_id(&app, "crm_contact_1").await, before);
    assert_eq!(crm_inbox::Entity::find().count(app.db.reader()).await.unwrap(), 1);
}

async fn one_bad_event_fails_alone_and_can_be_replayed(app: TestApp) {
    let bad = event(
        "evt_bad",
        "contact.created",
        "crm_contact_2",
        1,
        0,
        &[],
        json!({"firstName": "A", "lastName": "B", "email": "b@example.com", "role": "superuser", "membershipStatus": "active"}),
    );

    let outcomes = app.deliver(&[created("evt_1", "crm_contact_1"), bad, created("evt_3", "crm_contact_3")]).await;

    assert_eq!(outcomes, ["applied", "failed", "applied"]);
    let row = crm_inbox::Entity::find_by_id("evt_bad").one(app.db.reader()).await.unwrap().unwrap();
    assert_eq!(row.outcome, "failed");
    assert!(row.reason.unwrap().contains("role"));
    let replayed = app.request(reqwest::Method::POST, "/api/crm/inbox/evt_bad/replay").await;
    assert_eq!(replayed.status(), StatusCode::OK);
    let replayed: Value = replayed.json().await.unwrap();
    assert_eq!(replayed["outcome"], "failed", "the same bad data fails again");
    let missing = app.request(reqwest::Method::POST, "/api/crm/inbox/evt_nope/replay").await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}

async fn replay_needs_the_api_token_when_one_is_set(database: TestDatabase) {
    let app = TestApp::spawn_with(database, |c| c.api_token = Some("t0ken".to_owned().into())).await;

    let refused = app.request(reqwest::Method::POST, "/api/crm/inbox/evt_1/replay").await;
    let allowed =
        app.http.post(format!("{}/api/crm/inbox/evt_1/replay", app.address)).bearer_auth("t0ken").send().await.unwrap();

    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(refused).await, "unauthorized");
    assert_eq!(allowed.status(), StatusCode::NOT_FOUND, "authorised, and there is no such event");
}

// --- last-writer-wins, rule by rule -------------------------------------------------------

async fn rule_1_per_field_concurrent_edits_to_different_fields_both_survive(app: TestApp) {
    app.deliver(&[created("evt_1", "crm_contact_1")]).await;
    let phone = event("evt_3", "contact.updated", "crm_contact_1", 3, 30, &["phone"], contact("+44 3", Some("Old Co")));
    let company =
        event("evt_2", "contact.updated", "crm_contact_1", 2, 20, &["companyName"], contact("+44 1", Some("New Co")));
    let older_phone =
        event("evt_2b", "contact.updated", "crm_contact_1", 2, 20, &["phone"], contact("+44 2", Some("New Co")));

    let outcomes = app.deliver(&[phone, company, older_phone]).await;

    assert_eq!(outcomes, ["applied", "applied", "stale"]);
    let user = user_by_crm_id(&app, "crm_contact_1").await;
    assert_eq!(user.phone.as_deref(), Some("+44 3"));
    assert_eq!(user.company_name.as_deref(), Some("New Co"));
}

/// A record whose stored stamps cannot be read (a hand edit gone wrong) fails the events that
/// touch it, each recorded `failed` with the reason, and nothing else: the delivery is answered,
/// not refused to be redelivered for ever, and the record is not changed without its stamps.
async fn a_record_whose_stamps_cannot_be_read_fails_its_events_alone(app: TestApp) {
    use sea_orm::ConnectionTrait;
    app.deliver(&[created("evt_1", "crm_contact_1"), created("evt_2", "crm_contact_2")]).await;
    let broken = user_by_crm_id(&app, "crm_contact_1").await;
    app.db
        .writer()
        .execute_unprepared(&format!(
            "UPDATE sync_record_versions SET stamps = 'not json' WHERE entity_type = 'contact' AND entity_id = '{}'",
            broken.id
        ))
        .await
        .unwrap();
    let change =
        |id: &str, crm_id: &str| event(id, "contact.updated", crm_id, 2, 20, &["phone"], contact("+44 2", None));

    let outcomes = app.deliver(&[change("evt_3", "crm_contact_1"), change("evt_4", "crm_contact_2")]).await;

    assert_eq!(outcomes, ["failed", "applied"]);
    let row = crm_inbox::Entity::find_by_id("evt_3").one(app.db.reader()).await.unwrap().unwrap();
    assert!(row.reason.as_deref().unwrap_or_default().contains("sync_record_versions"), "{:?}", row.reason);
    assert_eq!(user_by_crm_id(&app, "crm_contact_1").await.phone, broken.phone, "not changed without its stamps");
    assert_eq!(user_by_crm_id(&app, "crm_contact_2").await.phone.as_deref(), Some("+44 2"));
}

async fn rule_2_clocks_a_local_stamp_after_a_crm_change_is_newer_even_if_crm_runs_ahead(app: TestApp) {
    let future = Utc::now() + Duration::hours(2);
    let mut ahead = created("evt_1", "crm_contact_1");
    ahead["object"]["updatedAt"] = json!(future.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));

    app.deliver(&[ahead]).await;

    let local = app.sync.hlc.now();
    assert!(local.ms >= future.timestamp_millis(), "the clock moved past the applied stamp");
}

async fn rule_3_ties_resolve_the_same_whatever_the_arrival_order(app: TestApp) {
    for (crm_id, order) in [("crm_contact_a", [0, 1]), ("crm_contact_b", [1, 0])] {
        app.deliver(&[created(&format!("evt_c_{crm_id}"), crm_id)]).await;
        let tie = [
            event(&format!("evt_x_{crm_id}"), "contact.updated", crm_id, 2, 10, &["phone"], contact("+44 x", None)),
            event(&format!("evt_y_{crm_id}"), "contact.updated", crm_id, 2, 10, &["phone"], contact("+44 y", None)),
        ];
        for i in order {
            app.deliver(std::slice::from_ref(&tie[i])).await;
        }
    }
    let a = user_by_crm_id(&app, "crm_contact_a").await;
    let b = user_by_crm_id(&app, "crm_contact_b").await;
    assert_eq!(a.phone.as_deref(), Some("+44 y"), "the larger event id wins a tie");
    assert_eq!(a.phone, b.phone);
}

async fn rule_4_deletes_soft_delete_and_nothing_older_resurrects(app: TestApp) {
    app.deliver(&[created("evt_1", "crm_contact_1")]).await;
    let delete = event("evt_5", "contact.deleted", "crm_contact_1", 5, 50, &[], Value::Null);
    let older = event("evt_4", "contact.updated", "crm_contact_1", 4, 40, &["phone"], contact("+44 4", None));
    let same_stamp = event("evt_6", "contact.updated", "crm_contact_1", 5, 50, &["phone"], contact("+44 5", None));

    let outcomes = app.deliver(&[delete, older, same_stamp]).await;

    assert_eq!(outcomes, ["applied", "stale", "stale"]);
    let user = user_by_crm_id(&app, "crm_contact_1").await;
    assert!(user.deleted_at.is_some(), "the row stays, marked deleted");
    assert_eq!(user.phone.as_deref(), Some("+44 1"));
    // A delete of a record never seen here is kept: its late create does not create it.
    let early_delete = event("evt_d2", "contact.deleted", "crm_contact_2", 2, 20, &[], Value::Null);
    let late_create = created("evt_c2", "crm_contact_2");
    assert_eq!(app.deliver(&[early_delete, late_create]).await, ["applied", "stale"]);
    let found =
        user::Entity::find().filter(user::Column::CrmId.eq("crm_contact_2")).one(app.db.reader()).await.unwrap();
    assert!(found.is_none());
}

async fn rule_5_echoes_write_nothing_and_own_requests_are_recognised(app: TestApp) {
    app.deliver(&[created("evt_1", "crm_contact_1")]).await;
    let before = user_by_crm_id(&app, "crm_contact_1").await;
    let logs_before = crm_sync_logs::Entity::find().count(app.db.reader()).await.unwrap();
    let same = event("evt_2", "contact.updated", "crm_contact_1", 2, 20, &["phone"], contact("+44 1", None));

    assert_eq!(app.deliver(&[same]).await, ["echo"]);
    assert_eq!(user_by_crm_id(&app, "crm_contact_1").await, before, "nothing written");
    assert_eq!(crm_sync_logs::Entity::find().count(app.db.reader()).await.unwrap(), logs_before);
    assert_eq!(
        crm_outbox::Entity::find()
            .filter(crm_outbox::Column::Operation.ne("link"))
            .count(app.db.reader())
            .await
            .unwrap(),
        0
    );

    // The gateway's own request set the phone; a workflow changed the company alongside.
    crm_requests::ActiveModel {
        request_id: Set("req_own_1".into()),
        record_type: Set("contact".into()),
        record_id: Set(before.id.clone()),
        fields: Set(r#"["phone"]"#.into()),
        created_at: Set(Utc::now()),
    }
    .insert(app.db.writer())
    .await
    .unwrap();
    let mut echo = event(
        "evt_3",
        "contact.updated",
        "crm_contact_1",
        3,
        30,
        &["phone", "companyName"],
        contact("+44 stale", Some("Workflow Co")),
    );
    echo["changeSource"] = json!("api");
    echo["requestId"] = json!("req_own_1");
    assert_eq!(app.deliver(&[echo]).await, ["applied"]);
    let after = user_by_crm_id(&app, "crm_contact_1").await;
    assert_eq!(after.phone.as_deref(), Some("+44 1"), "the echoed field is not re-applied");
    assert_eq!(after.company_name.as_deref(), Some("Workflow Co"), "the workflow's field applies");
}

async fn rule_6_any_order_with_repeats_ends_in_the_same_state(app: TestApp) {
    let events = |crm_id: &str| {
        let e = |n: &str| format!("evt_{n}_{crm_id}");
        vec![
            event(&e("c"), "contact.created", crm_id, 1, 0, &[], contact("+44 1", None)),
            event(&e("p"), "contact.updated", crm_id, 2, 10, &["phone"], contact("+44 2", None)),
            event(&e("k"), "contact.updated", crm_id, 3, 20, &["companyName"], contact("+44 2", Some("Co"))),
            event(&e("q"), "contact.updated", crm_id, 4, 30, &["phone"], contact("+44 4", Some("Co"))),
        ]
    };
    let orders: [&[usize]; 5] = [&[0, 1, 2, 3], &[3, 2, 1, 0], &[2, 0, 3, 1, 2], &[1, 3, 3, 0, 2, 1], &[3, 1, 0, 2, 0]];
    let mut finals = Vec::new();
    for (n, order) in orders.iter().enumerate() {
        let crm_id = format!("crm_contact_perm_{n}");
        let all = events(&crm_id);
        for &i in *order {
            let mut e = all[i].clone();
            e["object"]["data"]["email"] = json!(format!("perm{n}@example.com"));
            app.deliver(&[e]).await;
        }
        let user = user_by_crm_id(&app, &crm_id).await;
        finals.push((user.name, user.phone, user.company_name, user.role, user.membership_status));
    }
    assert!(finals.windows(2).all(|w| w[0] == w[1]), "{finals:?}");
    assert_eq!(finals[0].1.as_deref(), Some("+44 4"));
    assert_eq!(finals[0].2.as_deref(), Some("Co"));
}

async fn rule_7_unknown_records_are_created_and_children_wait_for_their_parent(app: TestApp) {
    let property = event(
        "evt_p",
        "property.created",
        "crm_property_1",
        1,
        0,
        &[],
        json!({
            "title": "Haworth Hall", "location": "Haworth", "bedrooms": 12, "pricePerNight": 1450.5,
            "currency": "GBP", "status": "active", "ownerContactId": "crm_contact_1"
        }),
    );
    assert_eq!(app.deliver(&[property]).await, ["waiting"]);
    assert_eq!(properties::Entity::find().count(app.db.reader()).await.unwrap(), 0);

    assert_eq!(app.deliver(&[created("evt_c", "crm_contact_1")]).await, ["applied"]);

    let owner = user_by_crm_id(&app, "crm_contact_1").await;
    let property =
        properties::Entity::find().one(app.db.reader()).await.unwrap().expect("the waiting property applied");
    assert_eq!(property.owner_id, owner.id);
    assert_eq!(property.crm_id.as_deref(), Some("crm_property_1"));
    let row = crm_inbox::Entity::find_by_id("evt_p").one(app.db.reader()).await.unwrap().unwrap();
    assert_eq!(row.outcome, "applied");
    let links = crm_outbox::Entity::find()
        .filter(crm_outbox::Column::Operation.eq("link"))
        .count(app.db.reader())
        .await
        .unwrap();
    assert_eq!(links, 2, "both new records queue their link-back");
}

async fn an_existing_user_is_linked_by_email_not_duplicated(app: TestApp) {
    let before_the_crm_change: DateTime<Utc> = "2024-06-01T00:00:00Z".parse().unwrap();
    let now = before_the_crm_change;
    user::ActiveModel {
        id: Set("user_local".into()),
        name: Set("Johnny Smith".into()),
        email: Set("JOHN@example.com".into()),
        phone: Set(None),
        company_name: Set(None),
        role: Set(entity::enums::Role::Owner),
        created_at: Set(now),
        updated_at: Set(now),
        deleted_at: Set(None),
        crm_id: Set(None),
        crm_sync_status: Set(entity::enums::CrmSyncStatus::Pending),
        crm_last_synced_at: Set(None),
        membership_status: Set(entity::enums::MembershipStatus::Pending),
        ..Default::default()
    }
    .insert(app.db.writer())
    .await
    .unwrap();

    let same_email = event("evt_1", "contact.created", "crm_contact_1", 1, 0, &[], contact("+44 1", None));

    assert_eq!(app.deliver(&[same_email]).await, ["applied"]);

    assert_eq!(user::Entity::find().count(app.db.reader()).await.unwrap(), 1);
    let linked = user_by_crm_id(&app, "crm_contact_1").await;
    assert_eq!(linked.id, "user_local");
    assert_eq!(linked.phone.as_deref(), Some("+44 1"), "the CRM's newer values win");
    assert_eq!(linked.email, "john@example.com");
}

async fn many_concurrent_deliveries_are_all_stored(app: TestApp) {
    let deliveries = (0..40).map(|n| {
        let app = &app;
        async move { app.deliver(&[created(&format!("evt_{n}"), &format!("crm_contact_{n}"))]).await }
    });

    let outcomes = futures_util::future::join_all(deliveries).await;

    assert!(outcomes.iter().all(|o| o == &["applied"]), "{outcomes:?}");
    assert_eq!(user::Entity::find().count(app.db.reader()).await.unwrap(), 40);
    assert_eq!(crm_inbox::Entity::find().count(app.db.reader()).await.unwrap(), 40);
}

async fn two_instances_take_the_same_event_once(database: TestDatabase) {
    let first = TestApp::spawn(database).await;
    let second = first.another_instance().await;
    let event = [created("evt_twice", "crm_contact_1")];

    let (a, b) = tokio::join!(first.deliver(&event), second.deliver(&event));

    let mut outcomes = [a[0].clone(), b[0].clone()];
    outcomes.sort();
    assert_eq!(outcomes, ["applied", "duplicate"]);
    assert_eq!(user::Entity::find().count(first.db.reader()).await.unwrap(), 1);
}

#[tokio::test]
async fn two_instances_on_postgres_take_the_same_event_once() {
    crate::helpers::run_db_test(crate::helpers::Backend::Postgres, two_instances_take_the_same_event_once).await;
}

/// A group reads which of its events the inbox holds, applies the others and records them at its
/// end. An instance that records one of them in between (here: a transaction holding its inbox
/// row, committed once the group waits for it) makes it a duplicate: nothing of the group's
/// apply of it stays.
async fn an_event_recorded_by_another_instance_while_a_group_applies_it_is_its_duplicate(database: TestDatabase) {
    use sea_orm::{ConnectionTrait, Statement, TransactionTrait};
    let app = TestApp::spawn(database).await;
    let other = sea_orm::Database::connect(&app.database_config.url).await.unwrap();
    let meanwhile = other.begin().await.unwrap();
    let now = Utc::now();
    crm_inbox::ActiveModel {
        event_id: Set("evt_meanwhile".into()),
        delivery_id: Set("dlv_other".into()),
        event_type: Set("contact.created".into()),
        record_type: Set(Some("contact".into())),
        crm_id: Set(Some("crm_contact_1".into())),
        received_at: Set(now),
        payload: Set("{}".into()),
        outcome: Set("applied".into()),
        reason: Set(None),
        waiting_for: Set(None),
        attempts: Set(1),
        processed_at: Set(now),
    }
    .insert(&meanwhile)
    .await
    .unwrap();

    let event = [created("evt_meanwhile", "crm_contact_1")];
    let delivery = app.deliver(&event);
    let commit_once_it_waits = async {
        // The group's insert of its inbox rows waits for the uncommitted row.
        let waiting = Statement::from_string(
            sea_orm::DatabaseBackend::Postgres,
            "SELECT count(*) AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'INSERT INTO \"crm_inbox\"%'",
        );
        for _ in 0..2_000 {
            let row = other.query_one_raw(waiting.clone()).await.unwrap().unwrap();
            if row.try_get::<i64>("", "n").unwrap() > 0 {
                return meanwhile.commit().await.unwrap();
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        panic!("the delivery never waited for the inbox row");
    };
    let (answer, ()) = tokio::join!(delivery, commit_once_it_waits);

    assert_eq!(answer, ["duplicate"]);
    assert_eq!(user::Entity::find().count(app.db.reader()).await.unwrap(), 0, "the group's apply was undone");
    let row = crm_inbox::Entity::find_by_id("evt_meanwhile").one(app.db.reader()).await.unwrap().unwrap();
    assert_eq!(row.delivery_id, "dlv_other");
}

#[tokio::test]
async fn an_event_recorded_by_another_instance_on_postgres_while_a_group_applies_it_is_its_duplicate() {
    crate::helpers::run_db_test(
        crate::helpers::Backend::Postgres,
        an_event_recorded_by_another_instance_while_a_group_applies_it_is_its_duplicate,
    )
    .await;
}

async fn an_admin_stays_admin_whatever_role_treadsoft_holds(app: TestApp) {
    let applied = app.deliver(&[event("evt_1", "contact.created", "crm_c1", 1, 0, &[], contact("+44 1", None))]).await;
    assert_eq!(applied, ["applied"]);
    let mut made_admin: user::ActiveModel = user_by_crm_id(&app, "crm_c1").await.into();
    made_admin.role = Set(entity::enums::Role::Admin);
    made_admin.update(app.db.writer()).await.unwrap();

    let mut data = contact("+44 2", None);
    data["role"] = json!("guest");
    let changed = app.deliver(&[event("evt_2", "contact.updated", "crm_c1", 2, 60, &["role", "phone"], data)]).await;

    assert_eq!(changed, ["applied"]);
    let user = user_by_crm_id(&app, "crm_c1").await;
    assert_eq!(user.phone.as_deref(), Some("+44 2"), "the other field applies");
    assert_eq!(user.role, entity::enums::Role::Admin, "admins are not synced");
}

on_both_databases!(
    a_record_whose_stamps_cannot_be_read_fails_its_events_alone,
    an_admin_stays_admin_whatever_role_treadsoft_holds,
    many_concurrent_deliveries_are_all_stored,
    a_signed_delivery_creates_the_contact_as_a_user,
    refusals_say_which_check_failed_and_store_nothing,
    a_signed_body_that_is_not_a_delivery_is_400,
    every_fixture_is_signed_and_applies,
    a_repeated_event_is_a_duplicate_and_changes_nothing,
    one_bad_event_fails_alone_and_can_be_replayed,
    rule_1_per_field_concurrent_edits_to_different_fields_both_survive,
    rule_2_clocks_a_local_stamp_after_a_crm_change_is_newer_even_if_crm_runs_ahead,
    rule_3_ties_resolve_the_same_whatever_the_arrival_order,
    rule_4_deletes_soft_delete_and_nothing_older_resurrects,
    rule_5_echoes_write_nothing_and_own_requests_are_recognised,
    rule_6_any_order_with_repeats_ends_in_the_same_state,
    rule_7_unknown_records_are_created_and_children_wait_for_their_parent,
    an_existing_user_is_linked_by_email_not_duplicated,
);

on_both_databases_without_app!(
    a_body_over_the_limit_is_413,
    without_a_secret_webhooks_are_503,
    standard_webhooks_deliveries_are_accepted,
    replay_needs_the_api_token_when_one_is_set,
);
