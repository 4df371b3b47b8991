//! The data model on both databases: migrations, constraints, types, durability settings and
//! concurrent writers.

use crate::helpers::TestDatabase;
use crate::{on_both_databases_without_app, on_one_database_without_app};
use chrono::{NaiveDate, TimeZone, Utc};
use entity::enums::*;
use entity::{bookings, crm_sync_logs, enquiries, owner_memberships, properties, user};
use migration::{Migrator, MigratorTrait};
use sea_orm::{ActiveModelTrait, ConnectionTrait, EntityTrait, PaginatorTrait, Set, TransactionTrait};

fn a_user(id: &str, email: &str) -> user::ActiveModel {
    let now = Utc.with_ymd_and_hms(2025, 1, 5, 10, 30, 0).unwrap();
    user::ActiveModel {
        id: Set(id.to_owned()),
        name: Set("John Smith".to_owned()),
        email: Set(email.to_owned()),
        phone: Set(Some("+44 7700 900123".to_owned())),
        company_name: Set(None),
        role: Set(Role::Owner),
        created_at: Set(now),
        updated_at: Set(now),
        crm_id: Set(None),
        crm_sync_status: Set(CrmSyncStatus::Pending),
        crm_last_synced_at: Set(None),
        membership_status: Set(MembershipStatus::Pending),
        deleted_at: Set(None),
        ..Default::default()
    }
}

fn a_property(owner_id: &str) -> properties::ActiveModel {
    let now = Utc.with_ymd_and_hms(2025, 1, 5, 10, 30, 0).unwrap();
    properties::ActiveModel {
        owner_id: Set(owner_id.to_owned()),
        title: Set("Château Brontë — Haworth 🏡".to_owned()),
        location: Set("Haworth, West Yorkshire".to_owned()),
        bedrooms: Set(12),
        price_per_night: Set(145_050),
        currency: Set("GBP".to_owned()),
        status: Set(PropertyStatus::Active),
        created_at: Set(now),
        updated_at: Set(now),
        crm_id: Set(Some("crm_property_789ghi".to_owned())),
        crm_sync_status: Set(CrmSyncStatus::Synced),
        crm_last_synced_at: Set(Some(1_736_073_000_123)),
        ..Default::default()
    }
}

async fn migrations_go_up_down_and_up_again(database: TestDatabase) {
    let db = database.connect().await;

    Migrator::up(db.writer(), None).await.unwrap();
    assert_eq!(user::Entity::find().count(db.writer()).await.unwrap(), 0);
    assert_eq!(crm_sync_logs::Entity::find().count(db.writer()).await.unwrap(), 0);

    Migrator::down(db.writer(), None).await.unwrap();
    assert!(user::Entity::find().count(db.writer()).await.is_err(), "user table survived down");
    assert!(crm_sync_logs::Entity::find().count(db.writer()).await.is_err());

    Migrator::up(db.writer(), None).await.unwrap();
    assert_eq!(owner_memberships::Entity::find().count(db.writer()).await.unwrap(), 0);
    assert!(Migrator::get_pending_migrations(db.writer()).await.unwrap().is_empty());
}

/// Stamps stored one row per field before the migration to one row per record are the same
/// stamps after it, and back after `down`.
async fn field_stamps_move_to_one_row_per_record_and_back(database: TestDatabase) {
    use crm_gateway::sync::lww::Origin;
    use crm_gateway::sync::mapping::RecordType;
    use crm_gateway::sync::stamps;
    use sea_orm::Statement;

    let db = database.connect().await;
    let w = db.writer();
    let migrations = Migrator::migrations();
    let it = migrations.iter().position(|m| m.name() == "m20261208_000001_record_versions").unwrap();
    let after_it = (migrations.len() - it - 1) as u32;
    Migrator::up(w, Some(it as u32)).await.unwrap();
    let rows = [
        ("contact", "user_1", "email", 1_764_590_400_000_i64, 4_i64, "crm", "evt_1"),
        ("contact", "user_1", "phone", 1_764_590_460_000, 0, "local", "ev_9"),
        ("contact", "user_2", "name", 1_764_590_000_000, 2, "crm", "evt_2"),
        ("property", "7", "title", 1_764_000_000_000, 1, "local", "ev_3"),
    ];
    for (t, id, field, ms, seq, origin, event) in rows {
        w.execute_unprepared(&format!(
            "INSERT INTO sync_field_versions (entity_type, entity_id, field, stamp_ms, stamp_seq, origin, event_id) \
             VALUES ('{t}', '{id}', '{field}', {ms}, {seq}, '{origin}', '{event}')"
        ))
        .await
        .unwrap();
    }

    Migrator::up(w, None).await.unwrap();
    let user_1 = stamps::field_versions(w, RecordType::Contact, "user_1").await.unwrap();
    assert_eq!(user_1.len(), 2, "{user_1:?}");
    assert_eq!((user_1["email"].stamp.ms, user_1["email"].stamp.seq), (1_764_590_400_000, 4));
    assert_eq!((user_1["email"].origin, user_1["email"].event_id.as_str()), (Origin::Crm, "evt_1"));
    assert_eq!((user_1["phone"].stamp.ms, user_1["phone"].origin), (1_764_590_460_000, Origin::Local));
    assert_eq!(stamps::field_versions(w, RecordType::Property, "7").await.unwrap()["title"].event_id, "ev_3");
    assert!(stamps::field_versions(w, RecordType::Contact, "user_3").await.unwrap().is_empty());
    assert_eq!(stamps::max_stamp(w).await.unwrap().ms, 1_764_590_460_000, "the clock's floor after a restart");

    Migrator::down(w, Some(after_it + 1)).await.unwrap();
    let back = w
        .query_all_raw(Statement::from_string(
            w.get_database_backend(),
            "SELECT entity_type, entity_id, field, stamp_ms, stamp_seq, origin, event_id FROM sync_field_versions \
             ORDER BY entity_type, entity_id, field",
        ))
        .await
        .unwrap();
    let back: Vec<(String, String, String, i64, i64, String, String)> = back
        .iter()
        .map(|r| {
            (
                r.try_get("", "entity_type").unwrap(),
                r.try_get("", "entity_id").unwrap(),
                r.try_get("", "field").unwrap(),
                r.try_get("", "stamp_ms").unwrap(),
                r.try_get("", "stamp_seq").unwrap(),
                r.try_get("", "origin").unwrap(),
                r.try_get("", "event_id").unwrap(),
            )
        })
        .collect();
    let expected: Vec<(String, String, String, i64, i64, String, String)> = rows
        .iter()
        .map(|(t, id, f, ms, seq, o, e)| {
            (t.to_string(), id.to_string(), f.to_string(), *ms, *seq, o.to_string(), e.to_string())
        })
        .collect();
    assert_eq!(back, expected);
}

/// Stamping some fields of a record keeps the stamps of its others (one row holds them all).
async fn stamping_some_fields_keeps_the_stamps_of_the_others(database: TestDatabase) {
    use crm_gateway::sync::hlc::Stamp;
    use crm_gateway::sync::lww::{Origin, Version};
    use crm_gateway::sync::mapping::RecordType::Contact;
    use crm_gateway::sync::stamps;

    let db = database.migrated().await;
    let w = db.writer();
    let v =
        |ms: i64, event: &str| Version { stamp: Stamp { ms, seq: 0 }, origin: Origin::Local, event_id: event.into() };
    let (first, second, third) = (v(1_000, "ev_1"), v(2_000, "ev_2"), v(3_000, "ev_3"));
    stamps::write_field_versions(w, [(Contact, "user_1", "email", &first), (Contact, "user_1", "phone", &first)])
        .await
        .unwrap();
    stamps::write_field_versions(
        w,
        [
            (Contact, "user_1", "name", &second),
            (Contact, "user_1", "phone", &second),
            (Contact, "user_1", "phone", &third),
        ],
    )
    .await
    .unwrap();

    let stored = stamps::field_versions(w, Contact, "user_1").await.unwrap();
    let by_field: std::collections::BTreeMap<&str, &str> =
        stored.iter().map(|(f, v)| (f.as_str(), v.event_id.as_str())).collect();
    assert_eq!(by_field, [("email", "ev_1"), ("name", "ev_2"), ("phone", "ev_3")].into_iter().collect());
    assert_eq!(stamps::max_stamp(w).await.unwrap().ms, 3_000);
}

async fn every_record_type_round_trips_exactly(database: TestDatabase) {
    let db = database.migrated().await;
    let w = db.writer();
    let now = Utc.with_ymd_and_hms(2025, 1, 5, 10, 30, 0).unwrap();

    let owner = a_user("user_123abc", "john@example.com").insert(w).await.unwrap();
    let property = a_property(&owner.id).insert(w).await.unwrap();
    let booking = bookings::ActiveModel {
        property_id: Set(property.id),
        user_id: Set(None),
        guest_name: Set("Zoë Ångström".to_owned()),
        guest_email: Set("zoe@example.com".to_owned()),
        check_in: Set(NaiveDate::from_ymd_opt(2025, 7, 1).unwrap()),
        check_out: Set(NaiveDate::from_ymd_opt(2025, 7, 8).unwrap()),
        guests: Set(14),
        total_price: Set(1_015_350),
        currency: Set("GBP".to_owned()),
        status: Set(BookingStatus::Confirmed),
        payment_status: Set(BookingPaymentStatus::DepositPaid),
        created_at: Set(now),
        updated_at: Set(now),
        crm_id: Set(None),
        crm_sync_status: Set(CrmSyncStatus::Pending),
        crm_last_synced_at: Set(None),
        ..Default::default()
    }
    .insert(w)
    .await
    .unwrap();
    let enquiry = enquiries::ActiveModel {
        user_id: Set(None),
        property_id: Set(Some(property.id)),
        guest_name: Set("Ann".to_owned()),
        guest_email: Set("ann@example.com".to_owned()),
        guest_phone: Set(None),
        subject: Set("Dogs?".to_owned()),
        message: Set("Can we bring two dogs?".to_owned()),
        status: Set(EnquiryStatus::New),
        source: Set(EnquirySource::Website),
        crm_id: Set(None),
        crm_sync_status: Set(CrmSyncStatus::Pending),
        crm_last_synced_at: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    }
    .insert(w)
    .await
    .unwrap();
    let membership = owner_memberships::ActiveModel {
        user_id: Set(owner.id.clone()),
        membership_tier: Set(MembershipTier::Premium),
        status: Set(OwnerMembershipStatus::Active),
        start_date: Set(NaiveDate::from_ymd_opt(2025, 1, 1).unwrap()),
        end_date: Set(None),
        auto_renew: Set(false),
        payment_status: Set(MembershipPaymentStatus::Paid),
        crm_id: Set(None),
        crm_sync_status: Set(CrmSyncStatus::Pending),
        crm_last_synced_at: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    }
    .insert(w)
    .await
    .unwrap();

    let r = db.reader();
    assert_eq!(user::Entity::find_by_id("user_123abc").one(r).await.unwrap(), Some(owner));
    assert_eq!(properties::Entity::find_by_id(property.id).one(r).await.unwrap(), Some(property.clone()));
    assert_eq!(property.price_per_night, 145_050, "money is exact minor units");
    assert_eq!(bookings::Entity::find_by_id(booking.id).one(r).await.unwrap(), Some(booking));
    assert_eq!(enquiries::Entity::find_by_id(enquiry.id).one(r).await.unwrap(), Some(enquiry));
    assert_eq!(owner_memberships::Entity::find_by_id(membership.id).one(r).await.unwrap(), Some(membership));
}

async fn emails_are_unique_whatever_their_case(database: TestDatabase) {
    let db = database.migrated().await;
    a_user("u1", "John@Example.com").insert(db.writer()).await.unwrap();

    let second = a_user("u2", "jOHN@example.COM").insert(db.writer()).await;

    assert!(second.is_err(), "a second user with the same email in another case was stored");
    assert_eq!(user::Entity::find().count(db.reader()).await.unwrap(), 1);
}

async fn a_crm_id_links_to_one_record_only(database: TestDatabase) {
    let db = database.migrated().await;
    let mut first = a_user("u1", "a@example.com");
    first.crm_id = Set(Some("crm_contact_1".to_owned()));
    first.insert(db.writer()).await.unwrap();
    let mut second = a_user("u2", "b@example.com");
    second.crm_id = Set(Some("crm_contact_1".to_owned()));

    assert!(second.insert(db.writer()).await.is_err());
}

async fn foreign_keys_are_enforced(database: TestDatabase) {
    let db = database.migrated().await;

    let orphan = a_property("nobody").insert(db.writer()).await;

    assert!(orphan.is_err(), "a property whose owner does not exist was stored");
}

async fn many_concurrent_writers_all_succeed(database: TestDatabase) {
    let db = database.migrated().await;
    let writers = (0..100).map(|i| {
        let db = db.clone();
        tokio::spawn(async move {
            let txn = db.writer().begin().await?;
            a_user(&format!("u{i}"), &format!("user{i}@example.com")).insert(&txn).await?;
            let mut property = a_property(&format!("u{i}"));
            property.crm_id = Set(Some(format!("crm_property_{i}")));
            property.insert(&txn).await?;
            txn.commit().await
        })
    });
    let readers = (0..50).map(|_| {
        let db = db.clone();
        tokio::spawn(async move { user::Entity::find().count(db.reader()).await.map(|_| ()) })
    });
    let handles: Vec<_> = writers.chain(readers).collect();

    for handle in handles {
        handle.await.unwrap().expect("no writer or reader failed (e.g. database is locked)");
    }
    assert_eq!(user::Entity::find().count(db.reader()).await.unwrap(), 100);
    assert_eq!(properties::Entity::find().count(db.reader()).await.unwrap(), 100);
}

async fn sqlite_runs_durable_wal_with_foreign_keys(database: TestDatabase) {
    let db = database.migrated().await;
    let pragma = |name: &'static str| {
        let db = db.clone();
        async move {
            let row = db
                .writer()
                .query_one_raw(sea_orm::Statement::from_string(db.backend(), format!("PRAGMA {name}")))
                .await
                .unwrap()
                .unwrap();
            row.try_get_by_index::<String>(0)
                .or_else(|_| row.try_get_by_index::<i64>(0).map(|n| n.to_string()))
                .unwrap()
        }
    };

    assert_eq!(pragma("journal_mode").await, "wal");
    assert_eq!(pragma("synchronous").await, "2", "synchronous=FULL");
    assert_eq!(pragma("foreign_keys").await, "1");
    assert_eq!(pragma("busy_timeout").await, "10000");
    assert_eq!(pragma("temp_store").await, "2", "temporary tables in memory, no file per statement");
}

/// The writer's commits are copied from the WAL into the database file on a connection beside
/// it: once the checkpoint after the last commit has run, a copy of the database file alone,
/// without its `-wal`, holds everything committed.
async fn sqlite_commits_reach_the_database_file_beside_the_writer(database: TestDatabase) {
    use crm_gateway::db::WalState;
    use crm_gateway::ops::metrics::Metrics;
    use crm_gateway::writer::Writer;
    use std::sync::Arc;

    let db = database.migrated().await;
    let (writer, task) = Writer::start(&db, Arc::new(Metrics::new()));
    let mut checkpoints = writer.wal_checkpoints().expect("SQLite's writer is checkpointed beside it");
    for i in 0..20 {
        let user = a_user(&format!("u{i}"), &format!("user{i}@example.com"));
        writer.run(move |txn| Box::pin(async move { user.insert(txn).await.map(drop) })).await.unwrap();
    }
    let copied_all = |state: &WalState| state.through_commit >= 20 && state.frames > 0 && state.copied == state.frames;
    let waited = tokio::time::timeout(std::time::Duration::from_secs(10), checkpoints.wait_for(copied_all))
        .await
        .is_ok_and(|seen| seen.is_ok());
    let last = *checkpoints.borrow();
    assert!(waited, "no checkpoint copied every frame after the twentieth commit: {last:?}");
    assert!(last.frames < 1000, "the writer's own checkpoint had nothing to do: {last:?}");

    let file = database.config.url.strip_prefix("sqlite://").unwrap();
    let copy = std::path::Path::new(file).with_file_name("copy.db");
    std::fs::copy(file, &copy).unwrap();
    let alone = sea_orm::Database::connect(format!("sqlite://{}?mode=rwc", copy.display())).await.unwrap();
    assert_eq!(user::Entity::find().count(&alone).await.unwrap(), 20, "the database file alone holds every commit");

    // The checkpoints end with the writer.
    task.stop().await;
    let ended = async { while checkpoints.changed().await.is_ok() {} };
    tokio::time::timeout(std::time::Duration::from_secs(10), ended).await.expect("the checkpoint task ended");
}

/// SQLite: the writer and its connection's thread take turns on one CPU (`SQLITE_WRITER_CPU`,
/// `auto` by default: the last CPU the process may run on, when it may run on two or more), and
/// with `off` neither is pinned.
async fn sqlite_writer_and_its_connection_share_one_cpu(database: TestDatabase) {
    use crm_gateway::affinity::{allowed_cpus, current_thread_cpus, list, thread_cpus};
    use crm_gateway::config::WriterCpu;
    use crm_gateway::ops::metrics::Metrics;
    use crm_gateway::writer::Writer;
    use std::sync::Arc;

    // Inserts a user from the writer's own thread, and says which CPUs that thread may run on.
    async fn insert(writer: &Writer, id: &str) -> Option<String> {
        let user = a_user(id, &format!("{id}@example.com"));
        writer
            .run(move |txn| Box::pin(async move { user.insert(txn).await.map(|_| current_thread_cpus()) }))
            .await
            .unwrap()
    }
    let allowed = allowed_cpus();
    let db = database.migrated().await;
    let (writer, task) = Writer::start(&db, Arc::new(Metrics::new()));
    let writers_cpus = insert(&writer, "u1").await;
    let connection = db.writer_thread().expect("the writer connection's thread is named");
    assert!(connection.starts_with("sqlwr-"), "{connection}");
    if allowed.len() >= 2 {
        let cpu = *allowed.iter().max().unwrap();
        assert_eq!(db.writer_cpu(), Some(cpu));
        assert_eq!(thread_cpus(&connection), Some(cpu.to_string()), "the connection's thread");
        assert_eq!(writers_cpus, Some(cpu.to_string()), "the writer's thread");
    } else {
        assert_eq!(db.writer_cpu(), None, "one CPU: nothing to pin");
    }
    task.stop().await;
    // The connection is back in its pool after the writer stopped: the next writer takes it.
    let (writer, task) = Writer::start(&db, Arc::new(Metrics::new()));
    insert(&writer, "u2").await;
    assert_eq!(db.writer_thread(), Some(connection), "the same connection, not a new one");
    task.stop().await;

    let mut config = database.config.clone();
    config.sqlite_writer_cpu = WriterCpu::Off;
    let db = crm_gateway::db::Db::connect(&config).await.unwrap();
    let (writer, task) = Writer::start(&db, Arc::new(Metrics::new()));
    insert(&writer, "u3").await;
    assert_eq!(db.writer_cpu(), None);
    let connection = db.writer_thread().unwrap();
    assert_eq!(thread_cpus(&connection), Some(list(&allowed)), "off: {connection} may run anywhere");
    assert_eq!(user::Entity::find().count(db.reader()).await.unwrap(), 3);
    task.stop().await;
}

on_both_databases_without_app!(
    migrations_go_up_down_and_up_again,
    field_stamps_move_to_one_row_per_record_and_back,
    stamping_some_fields_keeps_the_stamps_of_the_others,
    every_record_type_round_trips_exactly,
    emails_are_unique_whatever_their_case,
    a_crm_id_links_to_one_record_only,
    foreign_keys_are_enforced,
    many_concurrent_writers_all_succeed,
);

on_one_database_without_app!(
    Sqlite sqlite:
    sqlite_runs_durable_wal_with_foreign_keys,
    sqlite_commits_reach_the_database_file_beside_the_writer,
    sqlite_writer_and_its_connection_share_one_cpu,
);
