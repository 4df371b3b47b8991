//! The set-based apply (issue 9): every webhook delivery queued while the writer is busy is
//! applied in one group, with the answers each would have had alone. The group is formed here
//! by holding the writer with a piece of work until the deliveries are queued behind it.

use crate::helpers::{TestApp, TestDatabase};
use crate::{on_both_databases, on_both_databases_without_app, on_one_database_without_app};
use crm_gateway::sync::apply::SyncContext;
use crm_gateway::sync::hlc::{Hlc, Stamp};
use crm_gateway::sync::lww::Origin;
use entity::{crm_inbox, properties, user};
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::{Value, json};
use std::future::Future;

fn at(secs: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(secs)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn contact(id: &str, kind: &str, crm_id: &str, version: i64, email: &str, phone: &str) -> Value {
    json!({"id": id, "type": format!("contact.{kind}"), "changeSource": "ui", "requestId": null,
        "changedFields": ["phone", "email"],
        "object": {"type": "contact", "id": crm_id, "externalId": null, "version": version, "updatedAt": at(version),
            "deletedAt": null, "data": {"firstName": "Ada", "lastName": "Lovelace", "email": email, "phone": phone,
                "companyName": null, "role": "owner", "membershipStatus": "active"}}})
}

fn property(id: &str, crm_id: &str, owner_crm_id: &str) -> Value {
    json!({"id": id, "type": "property.created", "changeSource": "ui", "requestId": null, "changedFields": [],
        "object": {"type": "property", "id": crm_id, "externalId": null, "version": 1, "updatedAt": at(0),
            "deletedAt": null, "data": {"title": "Haworth Hall", "location": "Haworth", "bedrooms": 12,
                "pricePerNight": 1450.5, "currency": "GBP", "status": "active", "ownerContactId": owner_crm_id}}})
}

/// Holds the writer, queues `deliveries` behind it one after another (each is sent once the one
/// before it is queued, so the group holds them in this order), then lets the group run; returns
/// their answers in order.
async fn in_one_group<T, F: Future<Output = T>>(app: &TestApp, deliveries: Vec<F>) -> Vec<T> {
    let (release, hold) = tokio::sync::oneshot::channel::<()>();
    let (held, holding) = tokio::sync::oneshot::channel::<()>();
    let writer = app.writer.clone();
    let blocker = tokio::spawn(async move {
        writer
            .run(move |_txn| {
                Box::pin(async move {
                    let _ = held.send(());
                    let _ = hold.await;
                    Ok(())
                })
            })
            .await
    });
    holding.await.expect("the writer runs the holding work");
    let mut sent = FuturesOrdered::new();
    for (queued, delivery) in deliveries.into_iter().enumerate() {
        sent.push_back(delivery);
        while app.writer.queued() <= queued {
            tokio::select! {
                biased;
                _ = sent.next() => panic!("a delivery was answered while the writer was held"),
                () = tokio::task::yield_now() => {}
            }
        }
    }
    let _ = release.send(());
    let results = sent.collect().await;
    blocker.await.unwrap().expect("the holding work commits");
    results
}

async fn deliveries_queued_together_answer_as_each_would_alone(app: TestApp) {
    let create_a = contact("evt_a1", "created", "crm_a", 1, "ada@example.com", "+44 1");
    let answers = in_one_group(
        &app,
        vec![
            app.deliver(std::slice::from_ref(&create_a)),
            // A child whose parent comes later in the same group waits, then is released by it.
            app.deliver(&[property("evt_p1", "crm_p", "crm_b")]),
            app.deliver(&[contact("evt_a2", "updated", "crm_a", 2, "ada@example.com", "+44 2")]),
            app.deliver(&[contact("evt_b1", "created", "crm_b", 1, "bob@example.com", "+44 3")]),
            // The same event twice in one group: the first applies, the second is its duplicate.
            app.deliver(std::slice::from_ref(&create_a)),
            // An older version after a newer one of the same record, in the same group.
            app.deliver(&[contact("evt_a0", "updated", "crm_a", 1, "ada@example.com", "+44 old")]),
        ],
    )
    .await;

    assert_eq!(answers, [["applied"], ["waiting"], ["applied"], ["applied"], ["duplicate"], ["stale"]]);
    let ada = user::Entity::find().filter(user::Column::CrmId.eq("crm_a")).one(app.db.reader()).await.unwrap().unwrap();
    assert_eq!(ada.phone.as_deref(), Some("+44 2"), "the later version of one group wins");
    let bob = user::Entity::find().filter(user::Column::CrmId.eq("crm_b")).one(app.db.reader()).await.unwrap().unwrap();
    let hall = properties::Entity::find().one(app.db.reader()).await.unwrap().expect("the waiting property applied");
    assert_eq!(hall.owner_id, bob.id);
    let waited = crm_inbox::Entity::find_by_id("evt_p1").one(app.db.reader()).await.unwrap().unwrap();
    assert_eq!((waited.outcome.as_str(), waited.attempts), ("applied", 2));
    assert_eq!(crm_inbox::Entity::find().count(app.db.reader()).await.unwrap(), 5);
}

async fn a_delivery_the_database_refuses_fails_alone_in_its_group(app: TestApp) {
    assert_eq!(app.deliver(&[contact("evt_x1", "created", "crm_x", 1, "x@example.com", "+44 1")]).await, ["applied"]);

    let answers = in_one_group(
        &app,
        vec![
            app.deliver(&[contact("evt_y1", "created", "crm_y", 1, "y@example.com", "+44 2")]),
            // X takes Y's email: the unique email key refuses it when the group is written.
            app.deliver(&[contact("evt_x2", "updated", "crm_x", 2, "y@example.com", "+44 3")]),
            app.deliver(&[
                contact("evt_z1", "created", "crm_z", 1, "z@example.com", "+44 4"),
                contact("evt_z2", "updated", "crm_z", 2, "z@example.com", "+44 5"),
            ]),
        ],
    )
    .await;

    assert_eq!(answers, [vec!["applied"], vec!["failed"], vec!["applied", "applied"]]);
    let x = user::Entity::find().filter(user::Column::CrmId.eq("crm_x")).one(app.db.reader()).await.unwrap().unwrap();
    assert_eq!((x.email.as_str(), x.phone.as_deref()), ("x@example.com", Some("+44 1")), "nothing of it written");
    let z = user::Entity::find().filter(user::Column::CrmId.eq("crm_z")).one(app.db.reader()).await.unwrap().unwrap();
    assert_eq!(z.phone.as_deref(), Some("+44 5"));
    let failed = crm_inbox::Entity::find_by_id("evt_x2").one(app.db.reader()).await.unwrap().unwrap();
    assert_eq!(failed.outcome, "failed");
    assert!(failed.reason.as_deref().unwrap().starts_with("database error"), "{:?}", failed.reason);
}

/// `property(...)` as another action and version of the same record.
fn property_again(id: &str, crm_id: &str, kind: &str, version: i64, title: &str) -> Value {
    let mut event = property(id, crm_id, "crm_o");
    event["type"] = json!(format!("property.{kind}"));
    event["changedFields"] = json!(["title"]);
    event["object"]["version"] = json!(version);
    event["object"]["updatedAt"] = json!(at(version));
    event["object"]["data"]["title"] = json!(title);
    if kind == "deleted" {
        event["object"]["deletedAt"] = json!(at(version));
    }
    event
}

/// Properties are numbered by the database, so they are written at once, not at the end of the
/// group: a later event of the same group must still find them by their TreadSoft id.
async fn a_record_created_then_changed_or_deleted_in_one_group_is_found(app: TestApp) {
    assert_eq!(app.deliver(&[contact("evt_o", "created", "crm_o", 1, "o@example.com", "+44 1")]).await, ["applied"]);

    let deleted = in_one_group(
        &app,
        vec![
            app.deliver(&[property("evt_3", "crm_p2", "crm_o")]),
            app.deliver(&[property_again("evt_4", "crm_p2", "deleted", 2, "Haworth Hall")]),
        ],
    )
    .await;
    let updated = in_one_group(
        &app,
        vec![
            app.deliver(&[property("evt_1", "crm_p1", "crm_o")]),
            app.deliver(&[property_again("evt_2", "crm_p1", "updated", 2, "Renamed Hall")]),
        ],
    )
    .await;

    assert_eq!(deleted, [["applied"], ["applied"]]);
    assert_eq!(updated, [["applied"], ["applied"]]);
    let find = |crm_id: &'static str| {
        let db = app.db.reader().clone();
        async move {
            properties::Entity::find().filter(properties::Column::CrmId.eq(crm_id)).one(&db).await.unwrap().unwrap()
        }
    };
    assert_eq!(find("crm_p1").await.title, "Renamed Hall");
    assert!(find("crm_p2").await.deleted_at.is_some(), "deleted here too");
    assert_eq!(properties::Entity::find().count(app.db.reader()).await.unwrap(), 2);
}

fn owner(event_id: &str, kind: &str, user_id: &str, email: &str, phone: &str) -> Value {
    json!({"id": event_id, "type": kind, "data": {"id": user_id, "name": "Ada Lovelace", "email": email,
        "phone": phone, "companyName": null, "role": "owner", "membershipStatus": "pending"}})
}

/// Posts app events and returns the status and the body.
async fn post(app: &TestApp, body: Value) -> (u16, Value) {
    let response = app.post_events(&body).await;
    (response.status().as_u16(), response.json().await.unwrap_or_default())
}

async fn app_event_requests_queued_together_answer_as_each_would_alone(app: TestApp) {
    let answers = in_one_group(
        &app,
        vec![
            post(&app, owner("ev_1", "owner.registered", "user_1", "ada@example.com", "+44 1")),
            // Another user with the same email: refused alone, whole (its first event included).
            post(
                &app,
                json!({"events": [owner("ev_2", "owner.registered", "user_2", "bob@example.com", "+44 2"),
                    owner("ev_3", "owner.registered", "user_3", "ADA@example.com", "+44 3")]}),
            ),
            post(&app, owner("ev_4", "owner.updated", "user_1", "ada@example.com", "+44 4")),
            post(&app, owner("ev_1", "owner.registered", "user_1", "ada@example.com", "+44 1")),
        ],
    )
    .await;

    let statuses: Vec<u16> = answers.iter().map(|(status, _)| *status).collect();
    assert_eq!(statuses, [202, 409, 202, 202], "{answers:?}");
    assert_eq!(answers[1].1["error"]["code"], "email_taken");
    assert_eq!(answers[3].1["duplicates"], json!(["ev_1"]));
    let ada = user::Entity::find_by_id("user_1").one(app.db.reader()).await.unwrap().unwrap();
    assert_eq!(ada.phone.as_deref(), Some("+44 4"));
    assert!(user::Entity::find_by_id("user_2").one(app.db.reader()).await.unwrap().is_none(), "nothing of it written");
    let queued = entity::crm_outbox::Entity::find().all(app.db.reader()).await.unwrap();
    assert_eq!(queued.len(), 1, "the update merged into the registration's pending delivery: {queued:?}");
    assert_eq!((queued[0].operation.as_str(), queued[0].fields.as_deref()), ("upsert", None));
}

on_both_databases!(
    deliveries_queued_together_answer_as_each_would_alone,
    a_delivery_the_database_refuses_fails_alone_in_its_group,
    app_event_requests_queued_together_answer_as_each_would_alone,
    a_record_created_then_changed_or_deleted_in_one_group_is_found,
);

/// A migrated database and the count of statements run through its writer connection.
async fn counting_statements(
    database: &TestDatabase,
) -> (crm_gateway::db::Db, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let mut db = database.migrated().await;
    let statements = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = statements.clone();
    db.on_write_statement(move |_| {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    });
    (db, statements)
}

/// The point of the set-based apply: a group's statements do not grow with its deliveries.
async fn fifty_deliveries_in_one_group_take_as_many_statements_as_one(database: TestDatabase) {
    use crm_gateway::sync::inbox::{Incoming, receive_all};
    use sea_orm::TransactionTrait;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    let (db, statements) = counting_statements(&database).await;
    let ctx = SyncContext { precedence: Origin::Crm, hlc: Hlc::starting_after(Stamp::default()) };
    let group = |kind: &'static str, version: i64, from: usize, n: usize| -> Vec<Incoming> {
        (from..from + n)
            .map(|i| Incoming {
                delivery_id: format!("dlv_{kind}_{i}"),
                events: Arc::new(vec![contact(
                    &format!("evt_{kind}_{i}"),
                    kind,
                    &format!("crm_{i}"),
                    version,
                    &format!("c{i}@example.com"),
                    &format!("+44 {version}"),
                )]),
            })
            .collect()
    };
    let run = |deliveries: Vec<Incoming>| {
        let (db, ctx, statements) = (&db, &ctx, &statements);
        async move {
            let before = statements.load(Ordering::SeqCst);
            let txn = db.writer().begin().await.unwrap();
            let results = receive_all(&txn, ctx, &deliveries).await;
            txn.commit().await.unwrap();
            for result in results {
                let outcomes: Vec<_> = result.unwrap().into_iter().map(|r| r.outcome.as_str()).collect();
                assert_eq!(outcomes, ["applied"]);
            }
            statements.load(Ordering::SeqCst) - before
        }
    };

    let one_create = run(group("created", 1, 0, 1)).await;
    let fifty_creates = run(group("created", 1, 1, 50)).await;
    let one_update = run(group("updated", 2, 0, 1)).await;
    let fifty_updates = run(group("updated", 2, 1, 50)).await;

    assert_eq!(fifty_creates, one_create, "statements for 50 new contacts vs 1");
    assert_eq!(fifty_updates, one_update, "statements for 50 updated contacts vs 1");
    assert!(one_create < 20 && one_update < 20, "{one_create} and {one_update} statements");
    assert_eq!(user::Entity::find().count(db.reader()).await.unwrap(), 51);
}

/// The same for the site's changes: 50 registrations (then 50 profile updates) in one group.
async fn fifty_app_event_requests_in_one_group_take_as_many_statements_as_one(database: TestDatabase) {
    use crm_gateway::outbound::events::{AppEvent, parse, record_all};
    use sea_orm::TransactionTrait;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    let (db, statements) = counting_statements(&database).await;
    let ctx = SyncContext { precedence: Origin::Crm, hlc: Hlc::starting_after(Stamp::default()) };
    let group = |kind: &str, from: usize, n: usize| -> Vec<Arc<Vec<AppEvent>>> {
        (from..from + n)
            .map(|i| {
                let event =
                    owner(&format!("ev_{kind}_{i}"), kind, &format!("user_{i}"), &format!("u{i}@example.com"), kind);
                Arc::new(parse(event, None).unwrap())
            })
            .collect()
    };
    let run = |requests: Vec<Arc<Vec<AppEvent>>>| {
        let (db, ctx, statements) = (&db, &ctx, &statements);
        async move {
            let before = statements.load(Ordering::SeqCst);
            let txn = db.writer().begin().await.unwrap();
            let outcomes = record_all(&txn, ctx, &requests).await;
            txn.commit().await.unwrap();
            assert!(outcomes.iter().all(|o| matches!(o, Ok(Ok(_)))), "{outcomes:?}");
            statements.load(Ordering::SeqCst) - before
        }
    };

    let one_registration = run(group("owner.registered", 0, 1)).await;
    let fifty_registrations = run(group("owner.registered", 1, 50)).await;
    let one_update = run(group("owner.updated", 0, 1)).await;
    let fifty_updates = run(group("owner.updated", 1, 50)).await;

    assert_eq!(fifty_registrations, one_registration, "statements for 50 registrations vs 1");
    assert_eq!(fifty_updates, one_update, "statements for 50 profile updates vs 1");
    assert!(one_registration < 15 && one_update < 15, "{one_registration} and {one_update} statements");
    assert_eq!(user::Entity::find().count(db.reader()).await.unwrap(), 51);
    let merged = entity::crm_outbox::Entity::find().count(db.reader()).await.unwrap();
    assert_eq!(merged, 51, "each update merged into its user's pending delivery");
}

on_both_databases_without_app!(
    fifty_deliveries_in_one_group_take_as_many_statements_as_one,
    fifty_app_event_requests_in_one_group_take_as_many_statements_as_one,
);

/// Whether, within 10 s, a connection to the test's PostgreSQL database waits for a lock, or
/// `finished` says the work that was to wait has ended (the caller's assertions then say how).
async fn waits_for_a_lock(db: &crm_gateway::db::Db, finished: impl Fn() -> bool) -> bool {
    use sea_orm::{ConnectionTrait, Statement};
    let waiting = Statement::from_string(
        db.reader().get_database_backend(),
        "SELECT COUNT(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
    );
    let until = async {
        while db.reader().query_one_raw(waiting.clone()).await.unwrap().unwrap().try_get::<i64>("", "n").unwrap() == 0
            && !finished()
        {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), until).await.is_ok()
}

/// An event done alone (when its group failed) locks its record before it records the event in
/// the inbox, as every group does, so it no longer deadlocks with a group of another connection
/// (another instance) that has locked the same contact and is yet to record the same event. The
/// one alone waits for the group, then finds the event recorded: a duplicate, with no error on
/// either side.
async fn an_event_done_alone_waits_for_a_group_holding_its_record(database: TestDatabase) {
    use crm_gateway::sync::inbox::{Incoming, Outcome, receive, receive_all};
    use sea_orm::{QuerySelect, TransactionTrait};
    use std::sync::Arc;

    let db = database.migrated().await;
    let other = database.connect().await;
    let ctx = Arc::new(SyncContext { precedence: Origin::Crm, hlc: Hlc::starting_after(Stamp::default()) });
    let delivery = |id: &str, event: Value| Incoming { delivery_id: id.into(), events: Arc::new(vec![event]) };
    let created = contact("evt_created", "created", "crm_1", 1, "ada@example.com", "+44 1");
    let txn = db.writer().begin().await.unwrap();
    let results = receive_all(&txn, &ctx, &[delivery("dlv_created", created)]).await;
    txn.commit().await.unwrap();
    assert_eq!(results[0].as_ref().unwrap()[0].outcome, Outcome::Applied);

    let updated = contact("evt_updated", "updated", "crm_1", 2, "ada@example.com", "+44 2");
    // The group: its contact locked as its reads lock it, the event not recorded yet.
    let group = db.writer().begin().await.unwrap();
    let locked = user::Entity::find().filter(user::Column::CrmId.eq("crm_1")).lock_exclusive().one(&group).await;
    assert!(locked.unwrap().is_some());
    // The same event done alone, on another connection.
    let alone = {
        let (ctx, updated) = (ctx.clone(), updated.clone());
        tokio::spawn(async move {
            let txn = other.writer().begin().await?;
            let result = receive(&txn, &ctx, "dlv_alone", &updated).await?;
            txn.commit().await?;
            Ok::<_, sea_orm::DbErr>(result)
        })
    };
    // Until it waits for the group's lock (or fails: it must not).
    let blocked = waits_for_a_lock(&db, || alone.is_finished()).await;
    assert!(blocked, "the event done alone neither waited for the group nor finished");
    // The group records and applies the event, and commits: no deadlock.
    let results = receive_all(&group, &ctx, &[delivery("dlv_group", updated)]).await;
    group.commit().await.unwrap();
    let in_group = &results[0].as_ref().expect("the group's delivery")[0];
    assert_eq!(in_group.outcome, Outcome::Applied);
    let alone = alone.await.unwrap().expect("the event done alone");
    assert_eq!((alone.event_id.as_str(), alone.outcome), ("evt_updated", Outcome::Duplicate));

    let stored = crm_inbox::Entity::find_by_id("evt_updated").one(db.reader()).await.unwrap().unwrap();
    assert_eq!((stored.delivery_id.as_str(), stored.outcome.as_str()), ("dlv_group", "applied"));
    let ada = user::Entity::find().filter(user::Column::CrmId.eq("crm_1")).one(db.reader()).await.unwrap().unwrap();
    assert_eq!(ada.phone.as_deref(), Some("+44 2"));
}

/// A group beaten to one of its events by a group of another connection (another instance) is done
/// again as a group, not delivery by delivery: the same answers (that event a duplicate), for the
/// statements of about two groups.
async fn a_group_raced_for_an_event_is_done_again_as_a_group(database: TestDatabase) {
    use crm_gateway::sync::inbox::{Incoming, receive_all};
    use sea_orm::{QuerySelect, TransactionTrait};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let db = database.migrated().await;
    let mut other = database.connect().await;
    let statements = Arc::new(AtomicUsize::new(0));
    let counter = statements.clone();
    other.on_write_statement(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    let other = Arc::new(other);
    let ctx = Arc::new(SyncContext { precedence: Origin::Crm, hlc: Hlc::starting_after(Stamp::default()) });
    let delivery = |id: &str, event: Value| Incoming { delivery_id: id.into(), events: Arc::new(vec![event]) };
    let group_on_other = |deliveries: Vec<Incoming>| {
        let (other, ctx, statements) = (other.clone(), ctx.clone(), statements.clone());
        async move {
            let before = statements.load(Ordering::SeqCst);
            let txn = other.writer().begin().await.unwrap();
            let results = receive_all(&txn, &ctx, &deliveries).await;
            txn.commit().await.unwrap();
            let outcomes: Vec<Vec<&str>> =
                results.into_iter().map(|r| r.unwrap().iter().map(|e| e.outcome.as_str()).collect()).collect();
            (outcomes, statements.load(Ordering::SeqCst) - before)
        }
    };
    let created = |n: usize| {
        contact(&format!("evt_c{n}"), "created", &format!("crm_{n}"), 1, &format!("c{n}@example.com"), "+44 1")
    };
    let updated =
        |id: &str, version: i64| contact(id, "updated", "crm_1", version, "c1@example.com", &format!("+44 {version}"));
    let (outcomes, _) = group_on_other(vec![delivery("dlv_c1", created(1))]).await;
    assert_eq!(outcomes, [["applied"]]);
    // Ten contacts created, and contact crm_1 updated: the group's shape.
    let shape = |from: usize, update: &str, version: i64| {
        let mut deliveries: Vec<Incoming> =
            (from..from + 10).map(|n| delivery(&format!("dlv_c{n}"), created(n))).collect();
        deliveries.push(delivery(&format!("dlv_{update}"), updated(update, version)));
        deliveries
    };
    let (outcomes, one_group) = group_on_other(shape(10, "evt_u2", 2)).await;
    assert_eq!(outcomes, [["applied"]; 11]);

    // The race: a group on the first connection has locked contact crm_1 and is yet to record
    // evt_u3; the other connection's group has both.
    let group = db.writer().begin().await.unwrap();
    let locked = user::Entity::find().filter(user::Column::CrmId.eq("crm_1")).lock_exclusive().one(&group).await;
    assert!(locked.unwrap().is_some());
    let raced = tokio::spawn(group_on_other(shape(20, "evt_u3", 3)));
    let blocked = waits_for_a_lock(&db, || raced.is_finished()).await;
    assert!(blocked, "the other group neither waited for the contact's lock nor finished");
    let results = receive_all(&group, &ctx, &[delivery("dlv_u3_first", updated("evt_u3", 3))]).await;
    group.commit().await.unwrap();
    assert_eq!(results[0].as_ref().unwrap()[0].outcome.as_str(), "applied");

    let (outcomes, raced_statements) = raced.await.unwrap();
    let mut expected = vec![vec!["applied"]; 10];
    expected.push(vec!["duplicate"]);
    assert_eq!(outcomes, expected);
    assert!(
        raced_statements <= 2 * one_group,
        "the raced group took {raced_statements} statements, one group {one_group}: done one delivery at a time"
    );
    assert_eq!(user::Entity::find().count(db.reader()).await.unwrap(), 21);
}

on_one_database_without_app!(
    Postgres postgres:
    an_event_done_alone_waits_for_a_group_holding_its_record,
    a_group_raced_for_an_event_is_done_again_as_a_group,
);
