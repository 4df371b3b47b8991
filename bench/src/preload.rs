//! `--preload N`: a gateway database that already holds N users and N inbox rows, so that a run
//! shows whether the cost per event stays flat as data grows (issue 9: 1,000,000 of each within
//! 1.3× of the figure with 1,000). One set statement per table, on either database.

use anyhow::Context;
use sea_orm::{ConnectionTrait, Database, DatabaseBackend};

/// Adds `n` linked, synced users (`pre_1`... with TreadSoft ids `crm_pre_1`...) and `n` applied
/// inbox events for them to the migrated database at `url`.
pub async fn fill(url: &str, n: u64) -> anyhow::Result<()> {
    let db = Database::connect(url).await.with_context(|| format!("cannot open {url} to preload it"))?;
    let (rows, text, stamp) = match db.get_database_backend() {
        DatabaseBackend::Postgres => {
            (format!("generate_series(1, {n}) AS g(i)"), "i::text", "'2025-01-01T00:00:00Z'::timestamptz")
        }
        _ => (
            format!("(WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < {n}) SELECT i FROM g)"),
            "i",
            "'2025-01-01T00:00:00Z'",
        ),
    };
    let users = format!(
        r#"INSERT INTO "user" (id, name, email, email_key, phone, company_name, role, created_at, updated_at,
               deleted_at, crm_id, crm_sync_status, crm_last_synced_at, membership_status)
           SELECT 'pre_' || {text}, 'Preloaded ' || {text}, 'pre' || {text} || '@example.com',
                  'pre' || {text} || '@example.com', '+44 20 7946 0000', NULL, 'owner', {stamp}, {stamp}, NULL,
                  'crm_pre_' || {text}, 'synced', 1735689600000, 'active'
           FROM {rows}"#
    );
    // About the size of a real event: the payload is what makes inbox pages fill up.
    let payload = format!("'{{\"id\":\"pre\",\"padding\":\"{}\"}}'", "x".repeat(900));
    let inbox = format!(
        r#"INSERT INTO crm_inbox (event_id, delivery_id, event_type, record_type, crm_id, received_at, payload,
               outcome, reason, waiting_for, attempts, processed_at)
           SELECT 'evt_pre_' || {text}, 'dlv_pre_' || {text}, 'contact.updated', 'contact', 'crm_pre_' || {text},
                  {stamp}, {payload}, 'applied', NULL, NULL, 1, {stamp}
           FROM {rows}"#
    );
    for (table, sql) in [("user", users), ("crm_inbox", inbox)] {
        db.execute_unprepared(&sql).await.with_context(|| format!("cannot preload {table}"))?;
    }
    if db.get_database_backend() == DatabaseBackend::Postgres {
        db.execute_unprepared(r#"ANALYZE "user"; ANALYZE crm_inbox"#).await?;
    }
    db.close().await?;
    Ok(())
}
