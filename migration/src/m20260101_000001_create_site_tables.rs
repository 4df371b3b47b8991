//! The site's tables: `user` (its base plus the seed's CRM columns), `properties`, `bookings`,
//! `enquiries` and `owner_memberships`.

use crate::index;
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The three columns every synced table carries (seed: crm_id, crm_sync_status, crm_last_synced_at).
fn crm_columns(table: &mut TableCreateStatement) -> &mut TableCreateStatement {
    table
        .col(text_null("crm_id"))
        .col(text("crm_sync_status").default("pending"))
        .col(big_integer_null("crm_last_synced_at"))
}

fn timestamps(table: &mut TableCreateStatement) -> &mut TableCreateStatement {
    table.col(timestamp_with_time_zone("created_at")).col(timestamp_with_time_zone("updated_at"))
}

fn foreign_key(from_table: &str, from: &str, to_table: &str) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .name(format!("fk_{from_table}_{from}"))
        .from(Alias::new(from_table), Alias::new(from))
        .to(Alias::new(to_table), "id")
        .on_delete(ForeignKeyAction::Restrict)
        .on_update(ForeignKeyAction::Cascade)
        .to_owned()
}

const SYNCED_TABLES: [&str; 5] = ["user", "properties", "bookings", "enquiries", "owner_memberships"];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let mut user = Table::create();
        user.table("user")
            .col(text("id").primary_key())
            .col(text("name"))
            .col(text("email"))
            .col(text_null("phone"))
            .col(text_null("company_name"))
            .col(text("role").default("owner"));
        timestamps(&mut user);
        crm_columns(&mut user);
        user.col(text("membership_status").default("pending"));
        manager.create_table(user).await?;
        // Case-insensitive uniqueness: the same expression index works on SQLite and PostgreSQL.
        manager
            .get_connection()
            .execute_unprepared(r#"CREATE UNIQUE INDEX "ux_user_email_lower" ON "user" (lower("email"))"#)
            .await?;
        manager.create_index(index("idx_user_role", "user", &["role"])).await?;

        let mut properties = Table::create();
        properties
            .table("properties")
            .col(big_pk_auto("id"))
            .col(text("owner_id"))
            .col(text("title"))
            .col(text("location"))
            .col(integer("bedrooms"))
            .col(big_integer("price_per_night"))
            .col(text("currency").default("GBP"))
            .col(text("status").default("draft"));
        timestamps(&mut properties);
        crm_columns(&mut properties);
        properties.foreign_key(&mut foreign_key("properties", "owner_id", "user"));
        manager.create_table(properties).await?;
        manager.create_index(index("idx_properties_owner_id", "properties", &["owner_id"])).await?;

        let mut bookings = Table::create();
        bookings
            .table("bookings")
            .col(big_pk_auto("id"))
            .col(big_integer("property_id"))
            .col(text_null("user_id"))
            .col(text("guest_name"))
            .col(text("guest_email"))
            .col(date("check_in"))
            .col(date("check_out"))
            .col(integer("guests"))
            .col(big_integer("total_price"))
            .col(text("currency").default("GBP"))
            .col(text("status").default("pending"))
            .col(text("payment_status").default("pending"));
        timestamps(&mut bookings);
        crm_columns(&mut bookings);
        bookings
            .foreign_key(&mut foreign_key("bookings", "property_id", "properties"))
            .foreign_key(&mut foreign_key("bookings", "user_id", "user"));
        manager.create_table(bookings).await?;
        manager.create_index(index("idx_bookings_property_id", "bookings", &["property_id"])).await?;
        manager.create_index(index("idx_bookings_user_id", "bookings", &["user_id"])).await?;

        let mut enquiries = Table::create();
        enquiries
            .table("enquiries")
            .col(big_pk_auto("id"))
            .col(text_null("user_id"))
            .col(big_integer_null("property_id"))
            .col(text("guest_name"))
            .col(text("guest_email"))
            .col(text_null("guest_phone"))
            .col(text("subject"))
            .col(text("message"))
            .col(text("status").default("new"))
            .col(text("source").default("website"));
        crm_columns(&mut enquiries);
        timestamps(&mut enquiries);
        enquiries.foreign_key(&mut foreign_key("enquiries", "user_id", "user")).foreign_key(&mut foreign_key(
            "enquiries",
            "property_id",
            "properties",
        ));
        manager.create_table(enquiries).await?;
        manager.create_index(index("idx_enquiries_user_id", "enquiries", &["user_id"])).await?;
        manager.create_index(index("idx_enquiries_property_id", "enquiries", &["property_id"])).await?;

        let mut memberships = Table::create();
        memberships
            .table("owner_memberships")
            .col(big_pk_auto("id"))
            .col(text("user_id"))
            .col(text("membership_tier"))
            .col(text("status").default("pending"))
            .col(date("start_date"))
            .col(date_null("end_date"))
            .col(boolean("auto_renew").default(true))
            .col(text("payment_status").default("pending"));
        crm_columns(&mut memberships);
        timestamps(&mut memberships);
        memberships.foreign_key(&mut foreign_key("owner_memberships", "user_id", "user"));
        manager.create_table(memberships).await?;
        manager.create_index(index("idx_owner_memberships_user_id", "owner_memberships", &["user_id"])).await?;

        // A CRM record links to at most one local record of its type.
        for table in SYNCED_TABLES {
            manager
                .create_index(index(&format!("ux_{table}_crm_id"), Alias::new(table), &["crm_id"]).unique().to_owned())
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in ["owner_memberships", "enquiries", "bookings", "properties", "user"] {
            manager.drop_table(Table::drop().table(Alias::new(table)).to_owned()).await?;
        }
        Ok(())
    }
}
