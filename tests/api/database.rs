//! The data model on both databases: migrations, constraints, types, durability settings and
//! concurrent writers.

use crate::helpers::TestDatabase;
use crate::on_both_databases_without_app;
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

on_both_databases_without_app!(
    migrations_go_up_down_and_up_again,
    every_record_type_round_trips_exactly,
    emails_are_unique_whatever_their_case,
    a_crm_id_links_to_one_record_only,
    foreign_keys_are_enforced,
    many_concurrent_writers_all_succeed,
);

mod sqlite_pragmas {
    #[tokio::test]
    async fn sqlite() {
        crate::helpers::run_db_test(crate::helpers::Backend::Sqlite, super::sqlite_runs_durable_wal_with_foreign_keys)
            .await;
    }
}
