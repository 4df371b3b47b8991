//! The hot queries use an index on both databases, so their cost does not grow with the tables:
//! each is planned with `EXPLAIN` (SQLite: `EXPLAIN QUERY PLAN`; PostgreSQL: with sequential scans
//! priced out, which leaves a sequential scan only where no index can serve).

use crate::helpers::{Backend, TestDatabase};
use crate::on_both_databases_without_app;
use crm_gateway::sync::mapping::RecordType;
use sea_orm::{ConnectionTrait, DatabaseBackend, Statement};

/// The hot statements, in the shape the gateway runs them, with literal values (`'1'` fits text
/// and integer keys alike; a time is a time).
fn hot_queries() -> Vec<(&'static str, String)> {
    const T: &str = "'2025-01-05 10:00:00+00'";
    let mut queries: Vec<(&str, String)> = vec![
        ("inbox event", "SELECT * FROM crm_inbox WHERE event_id = '1'".into()),
        (
            "events waiting for a parent",
            "SELECT * FROM crm_inbox WHERE outcome = 'waiting' AND waiting_for = '1'".into(),
        ),
        (
            "field versions of a record",
            "SELECT * FROM sync_field_versions WHERE entity_type = '1' AND entity_id = '1'".into(),
        ),
        ("tombstone", "SELECT * FROM sync_tombstones WHERE entity_type = '1' AND crm_id = '1'".into()),
        (
            "a record's deliveries",
            "SELECT * FROM crm_outbox WHERE record_type = '1' AND record_id = '1' AND status = 'pending'".into(),
        ),
        ("deliveries in flight", format!("SELECT * FROM crm_outbox WHERE status = 'in_flight' AND lease_until >= {T}")),
        (
            "due deliveries",
            format!(
                "SELECT * FROM crm_outbox WHERE (status = 'pending' AND next_attempt_at <= {T}) \
                 OR (status = 'in_flight' AND lease_until < {T}) ORDER BY id LIMIT 100"
            ),
        ),
        ("own request", "SELECT * FROM crm_requests WHERE request_id = '1'".into()),
        ("app event", "SELECT * FROM app_events WHERE id = '1'".into()),
        ("user by email", r#"SELECT * FROM "user" WHERE email_key = '1'"#.into()),
    ];
    for t in RecordType::ALL {
        let table = t.table();
        queries.push(("record by crm id", format!(r#"SELECT * FROM "{table}" WHERE crm_id = '1'"#)));
        queries.push(("record by id", format!(r#"SELECT * FROM "{table}" WHERE id = '1'"#)));
    }
    queries
}

async fn every_hot_query_uses_an_index(database: TestDatabase) {
    let db = database.migrated().await;
    let c = db.writer();
    let backend = c.get_database_backend();
    if backend == DatabaseBackend::Postgres {
        c.execute_unprepared("SET enable_seqscan = off").await.unwrap();
    }
    let mut full_scans = Vec::new();
    for (name, sql) in hot_queries() {
        let explain = match database.backend {
            Backend::Sqlite => format!("EXPLAIN QUERY PLAN {sql}"),
            Backend::Postgres => format!("EXPLAIN {sql}"),
        };
        let rows = c.query_all_raw(Statement::from_string(backend, explain)).await.unwrap();
        let plan: Vec<String> = rows
            .iter()
            .map(|row| match database.backend {
                Backend::Sqlite => row.try_get::<String>("", "detail").unwrap(),
                Backend::Postgres => row.try_get::<String>("", "QUERY PLAN").unwrap(),
            })
            .collect();
        let scans = plan.iter().any(|line| match database.backend {
            Backend::Sqlite => line.starts_with("SCAN "),
            Backend::Postgres => line.contains("Seq Scan"),
        });
        if scans {
            full_scans.push(format!("{name}: {sql}\n    {}", plan.join("\n    ")));
        }
    }
    assert!(full_scans.is_empty(), "queries that scan a whole table:\n{}", full_scans.join("\n"));
}

on_both_databases_without_app!(every_hot_query_uses_an_index);
