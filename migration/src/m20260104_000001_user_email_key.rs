//! `user.email_key`: one normalised form of the email (NFC, Unicode lower case), computed by the
//! gateway and uniquely indexed, replacing the unique index on `lower(email)`, which folds only
//! ASCII on SQLite (so `JOSÉ@…` and `josé@…` were two users there).

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, Statement};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    /// All or nothing on SQLite too: a refused migration leaves the schema as it was, so it can
    /// run again once the duplicates it names are resolved.
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

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
        // Existing rows get their key here. Users whose emails now share one key (SQLite's
        // lower() folded only ASCII, so `JOSÉ@…` and `josé@…` could both be stored) refuse the
        // migration, naming them, before anything is changed for good.
        let rows = db.query_all_raw(Statement::from_string(backend, r#"SELECT "id", "email" FROM "user""#)).await?;
        let mut by_key: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for row in rows {
            let id: String = row.try_get("", "id")?;
            let email: String = row.try_get("", "email")?;
            let key = entity::user::email_key(&email);
            let update = Query::update()
                .table("user")
                .value("email_key", key.clone())
                .and_where(Expr::col("id").eq(id.clone()))
                .to_owned();
            manager.exec_stmt(update).await?;
            by_key.entry(key).or_default().push(id);
        }
        let clashes: Vec<String> = by_key
            .into_iter()
            .filter(|(_, ids)| ids.len() > 1)
            .map(|(key, ids)| format!("{key}: users {}", ids.join(", ")))
            .collect();
        if !clashes.is_empty() {
            return Err(DbErr::Migration(format!(
                "users share an email that differs only in letter case or Unicode form; merge or change them, \
                 then migrate again ({})",
                clashes.join("; ")
            )));
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
