//! `user.email_key`: one normalised form of the email (NFC, Unicode lower case), computed by the
//! gateway and uniquely indexed, replacing the unique index on `lower(email)`, which folds only
//! ASCII on SQLite (so `JOSÉ@…` and `josé@…` were two users there).

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, Statement};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let backend = manager.get_database_backend();
        manager
            .alter_table(
                Table::alter()
                    .table("user")
                    .add_column(ColumnDef::new("email_key").text().not_null().default(""))
                    .to_owned(),
            )
            .await?;
        // Existing rows get their key here; two rows whose emails now share one key make the
        // unique index below fail, and with it the migration, which names them.
        let rows = db.query_all_raw(Statement::from_string(backend, r#"SELECT "id", "email" FROM "user""#)).await?;
        for row in rows {
            let id: String = row.try_get("", "id")?;
            let email: String = row.try_get("", "email")?;
            let update = Query::update()
                .table("user")
                .value("email_key", entity::user::email_key(&email))
                .and_where(Expr::col("id").eq(id))
                .to_owned();
            manager.exec_stmt(update).await?;
        }
        db.execute_unprepared(r#"DROP INDEX IF EXISTS "ux_user_email_lower""#).await?;
        manager
            .create_index(Index::create().name("ux_user_email_key").table("user").col("email_key").unique().to_owned())
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_index(Index::drop().name("ux_user_email_key").table("user").to_owned()).await?;
        manager.alter_table(Table::alter().table("user").drop_column("email_key").to_owned()).await?;
        manager
            .get_connection()
            .execute_unprepared(r#"CREATE UNIQUE INDEX "ux_user_email_lower" ON "user" (lower("email"))"#)
            .await?;
        Ok(())
    }
}
