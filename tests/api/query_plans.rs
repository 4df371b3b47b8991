//! The hot queries use an index on both databases, so their cost does not grow with the tables:
//! each is planned with `EXPLAIN` (SQLite: `EXPLAIN QUERY PLAN`; PostgreSQL: with sequential scans
//! priced out, which leaves a sequential scan only where no index can serve). Two sets: a list of
//! the lookups by hand, and every statement a group of webhook deliveries and app events really
//! runs (the set-based `IN`-list reads included), caught through the writer connection.

use crate::helpers::TestDatabase;
use crate::on_both_databases_without_app;
use crm_gateway::sync::mapping::RecordType;
use sea_orm::{ConnectionTrait, DatabaseBackend, Statement};

/// The hot statements, in the shape the gateway runs them, with literal values (`'1'` fits text
/// and integer keys alike; a time is a time).
fn hot_queries() -> Vec<(&'static str, String)> {
    let mut queries: Vec<(&str, String)> = vec![
        ("inbox event", "SELECT * FROM crm_inbox WHERE event_id = '1'".into()),
        ("events waiting for parents", "SELECT * FROM crm_inbox WHERE waiting_for IN ('1', '2')".into()),
        ("stamps of a record", "SELECT * FROM sync_record_versions WHERE entity_type = '1' AND entity_id = '1'".into()),
        ("tombstone", "SELECT * FROM sync_tombstones WHERE entity_type = '1' AND crm_id = '1'".into()),
        (
            "a record's pending deliveries",
            "SELECT * FROM crm_outbox WHERE record_type = '1' AND record_id = '1' \
             AND status IN ('pending', 'in_flight', 'failed') AND status IN ('pending')"
                .into(),
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
    let c = planner(&db).await;
    let backend = c.get_database_backend();
    let mut full_scans = Vec::new();
    for (name, sql) in hot_queries() {
        let steps = plan(&c, &Statement::from_string(backend, sql.clone())).await;
        if steps.iter().any(|step| step.whole) {
            full_scans.push(format!("{name}: {}", shown(&sql, steps)));
        }
    }
    assert!(full_scans.is_empty(), "queries that scan a whole table:\n{}", full_scans.join("\n"));
}

/// One step of a statement's plan: SQLite's line as it is, PostgreSQL's node as `<type> on
/// <table>`; whether it reads a whole table (a scan, or an index walked from end to end: no
/// condition on its key), and the index it reads, if any.
struct Step {
    line: String,
    whole: bool,
    index: Option<String>,
}

/// The plan of `statement`, with its bound values.
async fn plan(c: &impl ConnectionTrait, statement: &Statement) -> Vec<Step> {
    let backend = c.get_database_backend();
    let explain = match backend {
        DatabaseBackend::Postgres => format!("EXPLAIN (FORMAT JSON) {}", statement.sql),
        _ => format!("EXPLAIN QUERY PLAN {}", statement.sql),
    };
    let explain = Statement { sql: explain, values: statement.values.clone(), db_backend: backend };
    let rows = c.query_all_raw(explain).await.unwrap_or_else(|e| panic!("EXPLAIN {}: {e}", statement.sql));
    if backend != DatabaseBackend::Postgres {
        return rows
            .iter()
            .map(|row| {
                let line = row.try_get::<String>("", "detail").unwrap();
                let whole = line.starts_with("SCAN ") && line != "SCAN CONSTANT ROW";
                let index = line.split_once(" INDEX ").and_then(|(_, rest)| rest.split_whitespace().next());
                Step { index: index.map(str::to_owned), whole, line }
            })
            .collect();
    }
    let plan: serde_json::Value = rows[0].try_get("", "QUERY PLAN").unwrap();
    let mut steps = Vec::new();
    let mut nodes = vec![plan[0]["Plan"].clone()];
    while let Some(node) = nodes.pop() {
        let kind = node["Node Type"].as_str().unwrap_or_default();
        let whole = kind == "Seq Scan"
            || (matches!(kind, "Index Scan" | "Index Only Scan") && node.get("Index Cond").is_none());
        let index = node["Index Name"].as_str().map(str::to_owned);
        let line = match (&index, node["Relation Name"].as_str()) {
            (Some(index), _) => format!("{kind} using {index}"),
            (None, Some(table)) => format!("{kind} on {table}"),
            (None, None) => kind.to_owned(),
        };
        steps.push(Step { line, whole, index });
        nodes.extend(node["Plans"].as_array().cloned().unwrap_or_default());
    }
    steps
}

/// A transaction to plan statements in (one connection, so that a setting holds for every
/// `EXPLAIN`): on PostgreSQL with sequential scans priced out, which leaves one only where no
/// index can serve.
async fn planner(db: &crm_gateway::db::Db) -> sea_orm::DatabaseTransaction {
    let c = sea_orm::TransactionTrait::begin(db.writer()).await.unwrap();
    if c.get_database_backend() == DatabaseBackend::Postgres {
        c.execute_unprepared("SET LOCAL enable_seqscan = off").await.unwrap();
    }
    c
}

/// `sql` with the lines of its plan, for a failure's message.
fn shown(sql: &str, steps: Vec<Step>) -> String {
    let lines: Vec<String> = steps.into_iter().map(|step| step.line).collect();
    format!("{sql}\n    {}", lines.join("\n    "))
}

/// Those of `statements` whose plan reads a whole table, each shown with its plan.
async fn scanning<'s>(c: &impl ConnectionTrait, statements: impl IntoIterator<Item = &'s Statement>) -> Vec<String> {
    let mut scanning = Vec::new();
    for statement in statements {
        let steps = plan(c, statement).await;
        if steps.iter().any(|step| step.whole) {
            scanning.push(shown(&statement.sql, steps));
        }
    }
    scanning
}

/// Every read, update and delete a group of webhook deliveries and of app events runs.
async fn every_statement_of_a_group_uses_an_index(database: TestDatabase) {
    use crm_gateway::outbound::events::{parse, record_all};
    use crm_gateway::sync::apply::SyncContext;
    use crm_gateway::sync::hlc::{Hlc, Stamp};
    use crm_gateway::sync::inbox::{Incoming, receive_all};
    use crm_gateway::sync::lww::Origin;
    use sea_orm::TransactionTrait;
    use serde_json::json;
    use std::sync::{Arc, Mutex};

    let mut db = database.migrated().await;
    let seen: Arc<Mutex<Vec<Statement>>> = Arc::default();
    let record = seen.clone();
    db.on_write_statement(move |info| record.lock().unwrap().push(info.statement.clone()));
    let ctx = SyncContext { precedence: Origin::Crm, hlc: Hlc::starting_after(Stamp::default()) };
    let contact = |id: &str, kind: &str, crm_id: &str, version: i64, external: Option<&str>| {
        json!({"id": id, "type": format!("contact.{kind}"), "changeSource": "api", "requestId": "req_1",
            "changedFields": ["phone"], "object": {"type": "contact", "id": crm_id, "externalId": external,
            "version": version, "updatedAt": "2025-01-05T10:00:00.000Z", "deletedAt": null,
            "data": {"firstName": "Ada", "lastName": "L", "email": format!("{crm_id}@example.com"), "phone": "1",
                "companyName": null, "role": "owner", "membershipStatus": "active"}}})
    };
    let property = json!({"id": "evt_p", "type": "property.created", "changeSource": "ui", "changedFields": [],
        "object": {"type": "property", "id": "crm_p", "externalId": null, "version": 1,
            "updatedAt": "2025-01-05T10:00:00.000Z", "data": {"title": "Hall", "location": "Haworth", "bedrooms": 2,
            "pricePerNight": 100, "currency": "GBP", "status": "active", "ownerContactId": "crm_b"}}});
    let owner = |id: &str, kind: &str, user: &str| {
        parse(
            json!({"id": id, "type": kind, "data": {"id": user, "name": "Ada L", "email": format!("{user}@example.com"),
            "phone": "2", "companyName": null, "role": "owner", "membershipStatus": "pending"}}),
            None,
        )
        .unwrap()
    };
    let txn = db.writer().begin().await.unwrap();
    let hall = |id: &str, kind: &str| {
        parse(
            json!({"id": id, "type": kind, "data": {"id": 7, "ownerId": "user_1", "title": "Hall",
            "location": "Haworth", "bedrooms": 2, "pricePerNight": 100, "currency": "GBP", "status": "draft"}}),
            None,
        )
        .unwrap()
    };
    let registered = record_all(
        &txn,
        &ctx,
        &[Arc::new(owner("ev_1", "owner.registered", "user_1")), Arc::new(hall("ev_h", "property.created"))],
    )
    .await;
    assert!(registered.iter().all(|r| matches!(r, Ok(Ok(_)))));
    let deliveries: Vec<Incoming> = [
        vec![property],
        vec![contact("evt_a", "created", "crm_a", 1, None), contact("evt_a2", "updated", "crm_a", 2, None)],
        vec![contact("evt_b", "created", "crm_b", 1, None)],
        vec![contact("evt_u", "created", "crm_u", 1, Some("user_1"))],
        vec![contact("evt_d", "deleted", "crm_a", 3, None)],
    ]
    .into_iter()
    .enumerate()
    .map(|(i, events)| Incoming { delivery_id: format!("dlv_{i}"), events: Arc::new(events) })
    .collect();
    for result in receive_all(&txn, &ctx, &deliveries).await {
        result.unwrap();
    }
    let changed = record_all(
        &txn,
        &ctx,
        &[Arc::new(owner("ev_2", "owner.updated", "user_1")), Arc::new(hall("ev_3", "property.deleted"))],
    )
    .await;
    assert!(changed.iter().all(|r| matches!(r, Ok(Ok(_)))), "{changed:?}");
    txn.commit().await.unwrap();

    let statements: Vec<Statement> = seen.lock().unwrap().clone();
    let checked: Vec<&Statement> = statements
        .iter()
        .filter(|statement| {
            let verb = statement.sql.split_whitespace().next().unwrap_or_default().to_ascii_uppercase();
            matches!(verb.as_str(), "SELECT" | "UPDATE" | "DELETE") && !statement.sql.contains("pg_advisory")
        })
        .collect();
    assert!(checked.len() >= 10, "only {} statements were caught", checked.len());
    // The looks for events waiting for the records just linked (`crm_b`'s property waits for its
    // owner): on SQLite through the partial index of waiting rows, not through the index by
    // outcome, which holds every waiting event whatever it waits for.
    let waiting: Vec<&Statement> =
        checked.iter().copied().filter(|s| s.sql.contains(r#""crm_inbox"."waiting_for" IN"#)).collect();
    // With one key SQLite plans `IN (?)` as `=`, where the choice is close; the old plan showed
    // with lists of several.
    let listed = |s: &&Statement| s.values.as_ref().is_some_and(|v| v.0.len() >= 2);
    assert!(waiting.iter().any(listed), "no look for waiting events of several records was caught: {waiting:?}");
    if db.backend() == DatabaseBackend::Sqlite {
        for statement in &waiting {
            let steps = plan(db.reader(), statement).await;
            let read = steps.iter().any(|step| step.index.as_deref() == Some("idx_crm_inbox_waiting_for"));
            assert!(read, "idx_crm_inbox_waiting_for not read:\n{}", shown(&statement.sql, steps));
        }
    }
    let scanning = scanning(&planner(&db).await, checked).await;
    assert!(scanning.is_empty(), "statements that scan a whole table:\n{}", scanning.join("\n"));
}

/// The indexed columns a record written back leaves alone unless they changed
/// (`records::indexed_columns`) are every column an index of its table holds besides the key, on
/// both databases. An index over a column left off the list costs its entry rewritten with every
/// record written back (unlisted columns are always set), the waste the list is there to spare;
/// a listed column that no index holds is set only where it changed, which is harmless. (An index
/// over an expression, or a partial one, would need its columns worked out: none is.)
async fn the_indexed_columns_of_each_record_type_are_those_of_the_schema(database: TestDatabase) {
    use crm_gateway::sync::records::indexed_columns;
    use std::collections::BTreeSet;
    let db = database.migrated().await;
    let c = db.writer();
    let backend = c.get_database_backend();
    for t in RecordType::ALL {
        let table = t.table();
        let sql = match backend {
            DatabaseBackend::Postgres => format!(
                "SELECT CASE WHEN i.indexprs IS NULL AND i.indpred IS NULL THEN a.attname END AS name \
                 FROM pg_index i JOIN pg_class r ON r.oid = i.indrelid \
                 LEFT JOIN pg_attribute a ON a.attrelid = r.oid AND a.attnum = ANY(i.indkey) \
                 WHERE r.relname = '{table}' AND pg_table_is_visible(r.oid) AND NOT i.indisprimary"
            ),
            _ => format!(
                "SELECT CASE WHEN il.partial THEN NULL ELSE ii.name END AS name \
                 FROM pragma_index_list('{table}') il, pragma_index_info(il.name) ii WHERE il.origin != 'pk'"
            ),
        };
        let rows = c.query_all_raw(Statement::from_string(backend, sql)).await.unwrap();
        let columns: Vec<Option<String>> = rows.iter().map(|row| row.try_get("", "name").unwrap()).collect();
        assert!(
            columns.iter().all(Option::is_some),
            "{table}: a partial index, or one over an expression: {columns:?}"
        );
        let schema: BTreeSet<String> = columns.into_iter().flatten().collect();
        let listed: BTreeSet<String> = indexed_columns(t).iter().map(|c| (*c).to_owned()).collect();
        assert_eq!(listed, schema, "{table}: the indexed columns listed against the schema's");
    }
}

on_both_databases_without_app!(
    every_hot_query_uses_an_index,
    every_statement_of_a_group_uses_an_index,
    the_indexed_columns_of_each_record_type_are_those_of_the_schema,
);

/// 20,100 outbox rows of contacts `user_1` to `user_20100`, each 200th pending (due now), the
/// others delivered: a history that an index of open rows skips.
async fn outbox_history(db: &crm_gateway::db::Db) {
    let numbers = match db.backend() {
        DatabaseBackend::Postgres => "SELECT n FROM generate_series(1, 20100) AS n",
        _ => "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 20100) SELECT n FROM s",
    };
    db.writer()
        .execute_unprepared(&format!(
            "INSERT INTO crm_outbox (record_type, record_id, operation, status, next_attempt_at, idempotency_key, \
             created_at, updated_at) \
             SELECT 'contact', 'user_' || n, 'create', CASE WHEN n % 200 = 0 THEN 'pending' ELSE 'delivered' END, \
             CURRENT_TIMESTAMP, 'key_' || n, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP FROM ({numbers}) AS numbers"
        ))
        .await
        .unwrap();
}

/// A delivery step's claim is one statement (`outbox::due_query`) that reads through indexes,
/// never a whole table (on SQLite, whether a due row's record has a row in flight through the
/// index of open rows, not the delivered history; PostgreSQL's planner picks its own index). It
/// finds the pending rows and the rows whose lease ran out, and leaves out the record whose row
/// is in flight.
async fn the_claim_reads_through_indexes(database: TestDatabase) {
    use crm_gateway::outbound::outbox::{Operation, due_query, pending_row};
    use entity::enums::OutboxStatus;
    use sea_orm::{ActiveModelTrait, QueryTrait, Set};

    let db = database.migrated().await;
    let backend = db.backend();
    outbox_history(&db).await;
    let now = chrono::Utc::now() + chrono::Duration::minutes(1);
    let in_flight = |id: &str, lease: chrono::DateTime<chrono::Utc>| {
        let mut row = pending_row(RecordType::Contact, id, Operation::Upsert, None, None);
        row.status = Set(OutboxStatus::InFlight);
        row.lease_until = Set(Some(lease));
        row
    };
    // user_200's create is on its way (its pending row waits); user_7's send ran out of time.
    in_flight("user_200", now + chrono::Duration::minutes(5)).insert(db.writer()).await.unwrap();
    in_flight("user_7", now - chrono::Duration::minutes(5)).insert(db.writer()).await.unwrap();

    let statement = due_query(now, 500, None).build(backend);
    let c = planner(&db).await;
    let scans = scanning(&c, [&statement]).await;
    assert!(scans.is_empty(), "the claim scans a whole table:\n{}", scans.join("\n"));
    if backend != DatabaseBackend::Postgres {
        let steps = plan(&c, &statement).await;
        let indexes: Vec<&str> = steps.iter().filter_map(|step| step.index.as_deref()).collect();
        assert!(indexes.contains(&"idx_crm_outbox_open"), "{}", shown(&statement.sql, steps));
    }
    let mut claimable: Vec<String> =
        c.query_all_raw(statement).await.unwrap().iter().map(|r| r.try_get("", "record_id").unwrap()).collect();
    claimable.sort();
    let mut expected: Vec<String> = (2..=100).map(|n| format!("user_{}", n * 200)).collect();
    expected.push("user_7".into());
    expected.sort();
    assert_eq!(claimable, expected);
}

on_both_databases_without_app!(the_claim_reads_through_indexes);

/// The open deliveries of a set of records (what each group and each delivery outcome reads) are
/// found through the index of open rows, not by walking every delivered row of the record type:
/// here 20,000 delivered rows and 100 pending ones, just written, so that no statistics exist yet
/// (a busy new table; PostgreSQL then misjudged the index by record). The statements are the ones
/// the gateway builds, with their bound values; on PostgreSQL planned as a cached generic plan
/// (planned once for any values), which can use a partial index only if the statuses are part of
/// the statement rather than bound.
async fn open_deliveries_are_read_through_the_index_of_open_rows(database: TestDatabase) {
    use crm_gateway::outbound::outbox::{OPEN, open_query, undelivered_query};
    use entity::enums::OutboxStatus;
    use sea_orm::{QuerySelect, QueryTrait, TransactionTrait};

    let db = database.migrated().await;
    let backend = db.backend();
    outbox_history(&db).await;
    let keys: Vec<(RecordType, String)> =
        (1..=100).map(|n| (RecordType::Contact, format!("user_{}", n * 200))).collect();
    let statements = match backend {
        // What `undelivered_of` runs on each: the pending rows locked, then the others.
        DatabaseBackend::Postgres => vec![
            (undelivered_query(&keys, &[OutboxStatus::Pending]).lock_exclusive().build(backend), 100),
            (undelivered_query(&keys, &[OutboxStatus::InFlight, OutboxStatus::Failed]).build(backend), 0),
        ],
        // Every open row of the records, links aside (a record's own lookup) and with them (one
        // read: what `undelivered_of` and a delivery outcome read); a pending-only lookup (as
        // queuing a change makes) too.
        _ => vec![
            (undelivered_query(&keys, &OPEN).build(backend), 100),
            (open_query(&keys).build(backend), 100),
            (undelivered_query(&keys, &[OutboxStatus::Pending]).build(backend), 100),
        ],
    };
    let c = db.writer().begin().await.unwrap();
    if backend == DatabaseBackend::Postgres {
        c.execute_unprepared("SET LOCAL plan_cache_mode = force_generic_plan").await.unwrap();
    }
    for (i, (statement, found)) in statements.into_iter().enumerate() {
        assert!(
            statement.sql.contains("IN ('pending'") || statement.sql.contains("IN ('in_flight'"),
            "{}",
            statement.sql
        );
        if backend != DatabaseBackend::Postgres {
            let explain = Statement {
                sql: format!("EXPLAIN QUERY PLAN {}", statement.sql),
                values: statement.values.clone(),
                db_backend: backend,
            };
            let plan: Vec<String> =
                c.query_all_raw(explain).await.unwrap().iter().map(|r| r.try_get("", "detail").unwrap()).collect();
            assert!(plan.iter().any(|line| line.contains("idx_crm_outbox_open")), "{plan:#?}\n{}", statement.sql);
            let rows = c.query_all_raw(statement).await.unwrap();
            assert_eq!(rows.len(), found);
            continue;
        }
        let values: Vec<String> = statement
            .values
            .iter()
            .flat_map(|v| v.0.iter())
            .map(|v| match v {
                sea_orm::Value::String(Some(s)) => format!("'{}'", s.replace('\'', "''")),
                other => panic!("a value this test does not write out: {other:?}"),
            })
            .collect();
        c.execute_unprepared(&format!("PREPARE open_rows_{i} AS {}", statement.sql)).await.unwrap();
        let sql = format!("EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE open_rows_{i}({})", values.join(", "));
        let row = c.query_one_raw(Statement::from_string(backend, sql)).await.unwrap().unwrap();
        let plan: serde_json::Value = row.try_get("", "QUERY PLAN").unwrap();
        let mut indexes = Vec::new();
        let mut nodes = vec![plan[0]["Plan"].clone()];
        while let Some(node) = nodes.pop() {
            if let Some(name) = node["Index Name"].as_str() {
                indexes.push(name.to_owned());
            }
            nodes.extend(node["Plans"].as_array().cloned().unwrap_or_default());
        }
        assert_eq!(indexes, ["idx_crm_outbox_open"], "{plan:#}\n{}", statement.sql);
        let mut actual = plan[0]["Plan"].clone();
        while actual["Actual Rows"].is_null() || actual["Node Type"] == "LockRows" {
            actual = actual["Plans"][0].clone();
        }
        assert_eq!(actual["Actual Rows"], found, "{plan:#}");
    }
}

on_both_databases_without_app!(open_deliveries_are_read_through_the_index_of_open_rows);

/// The sync logs of a CRM id (`GET /api/crm/logs?crmId=`, `crm-gateway logs --crm-id`) are found
/// without an index of every log's CRM id: a linked record's through the index by record, a
/// deleted record's through its tombstone, a failed event's through the index of failed logs'
/// CRM ids, with a record type or a status as well; never by walking the table, or every log of
/// a type or status.
async fn the_logs_of_a_crm_id_are_found_through_indexes(database: TestDatabase) {
    use chrono::Utc;
    use crm_gateway::ops::recovery::{Filter, logs};
    use crm_gateway::sync::apply::SyncContext;
    use crm_gateway::sync::hlc::{Hlc, Stamp};
    use crm_gateway::sync::inbox::{Incoming, receive_all};
    use crm_gateway::sync::lww::Origin;
    use entity::{crm_sync_logs, sync_tombstones};
    use sea_orm::{ActiveValue::Set, EntityTrait, TransactionTrait};
    use serde_json::json;
    use std::sync::{Arc, Mutex};

    let mut db = database.migrated().await;
    let ctx = SyncContext { precedence: Origin::Crm, hlc: Hlc::starting_after(Stamp::default()) };
    let contact = |n: usize| {
        json!({"id": format!("evt_{n}"), "type": "contact.created", "changeSource": "ui", "changedFields": [],
            "object": {"type": "contact", "id": format!("crm_{n}"), "externalId": null, "version": 1,
            "updatedAt": "2025-01-05T10:00:00.000Z", "deletedAt": null,
            "data": {"firstName": "Ada", "lastName": "L", "email": format!("a{n}@example.com"), "phone": null,
                "companyName": null, "role": "owner", "membershipStatus": "active"}}})
    };
    let deliveries: Vec<Incoming> =
        (1..=2).map(|n| Incoming { delivery_id: format!("dlv_{n}"), events: Arc::new(vec![contact(n)]) }).collect();
    let txn = db.writer().begin().await.unwrap();
    for result in receive_all(&txn, &ctx, &deliveries).await {
        assert_eq!(result.unwrap()[0].outcome.as_str(), "applied");
    }
    txn.commit().await.unwrap();
    let log = |entity_id: &str, crm_id: &str, status: &str| crm_sync_logs::ActiveModel {
        entity_type: Set("contact".into()),
        entity_id: Set(entity_id.into()),
        crm_id: Set(Some(crm_id.into())),
        action: Set("update".into()),
        status: Set(status.into()),
        created_at: Set(Utc::now()),
        ..Default::default()
    };
    // An event for a contact that never came to exist here, failed; a contact deleted, and gone.
    crm_sync_logs::Entity::insert_many([log("", "crm_9", "failed"), log("user_gone", "crm_8", "success")])
        .exec(db.writer())
        .await
        .unwrap();
    sync_tombstones::Entity::insert(sync_tombstones::ActiveModel {
        entity_type: Set("contact".into()),
        crm_id: Set("crm_8".into()),
        entity_id: Set(Some("user_gone".into())),
        stamp_ms: Set(1),
        stamp_seq: Set(0),
        origin: Set("crm".into()),
        event_id: Set("evt_8".into()),
        created_at: Set(Utc::now()),
    })
    .exec(db.writer())
    .await
    .unwrap();

    let seen: Arc<Mutex<Vec<Statement>>> = Arc::default();
    let record = seen.clone();
    db.on_read_statement(move |info| record.lock().unwrap().push(info.statement.clone()));
    let listed = |crm_id: &str, record_type: Option<RecordType>| {
        let filter = Filter { crm_id: Some(crm_id.into()), record_type, ..Default::default() };
        let db = &db;
        async move {
            let page = logs(db.reader(), &filter, None, 50).await.unwrap();
            page.items.into_iter().map(|l| (l.record_type, l.crm_id.unwrap(), l.status)).collect::<Vec<_>>()
        }
    };
    let entry = |crm_id: &str, status: &str| ("contact".to_owned(), crm_id.to_owned(), status.to_owned());
    assert_eq!(listed("crm_1", None).await, [entry("crm_1", "success")]);
    assert_eq!(listed("crm_2", Some(RecordType::Contact)).await, [entry("crm_2", "success")]);
    assert_eq!(listed("crm_2", Some(RecordType::Property)).await, []);
    assert_eq!(listed("crm_9", None).await, [entry("crm_9", "failed")]);
    let of_status = |crm_id: &str, status: &str| {
        let filter = Filter { crm_id: Some(crm_id.into()), status: Some(status.into()), ..Default::default() };
        let db = &db;
        async move { logs(db.reader(), &filter, None, 50).await.unwrap().items.len() }
    };
    assert_eq!((of_status("crm_1", "success").await, of_status("crm_1", "failed").await), (1, 0));
    assert_eq!((of_status("crm_9", "failed").await, of_status("crm_9", "success").await), (1, 0));
    assert_eq!(listed("crm_8", None).await, [entry("crm_8", "success")]);
    assert_eq!(listed("crm_7", None).await, []);

    let statements: Vec<Statement> =
        seen.lock().unwrap().iter().filter(|s| s.sql.contains("crm_sync_logs")).cloned().collect();
    assert!(statements.len() >= 6, "only {} statements on the sync log were caught", statements.len());
    let c = planner(&db).await;
    // Only through the index by record and the failed rows' index of CRM ids: not by walking
    // every log of a type or a status. Which index, on SQLite; on PostgreSQL, whose planner has
    // no statistics of these few rows and takes any index on the first column alike, that none
    // walks a whole table.
    let through = ["idx_crm_sync_logs_entity", "idx_crm_sync_logs_failed_crm_id"];
    let sqlite = c.get_database_backend() == DatabaseBackend::Sqlite;
    let mut elsewhere = Vec::new();
    for statement in &statements {
        let steps = plan(&c, statement).await;
        let other =
            |step: &Step| step.whole || (sqlite && step.index.as_deref().is_some_and(|i| !through.contains(&i)));
        if steps.iter().any(other) {
            elsewhere.push(shown(&statement.sql, steps));
        }
    }
    assert!(elsewhere.is_empty(), "statements read otherwise:\n{}", elsewhere.join("\n"));
}

on_both_databases_without_app!(the_logs_of_a_crm_id_are_found_through_indexes);

/// The operator's view of a record (`inspect`) reads every part of it through an index: its
/// outbox rows through the index of open rows (the index of every row by record is gone), its
/// webhook events by the ids its logs name and, of those not applied, through the partial index
/// by record; its stamps and logs through theirs.
async fn inspecting_a_record_reads_through_indexes(database: TestDatabase) {
    use crm_gateway::ops::recovery::inspect;
    use crm_gateway::sync::apply::SyncContext;
    use crm_gateway::sync::hlc::{Hlc, Stamp};
    use crm_gateway::sync::inbox::{Incoming, receive_all};
    use crm_gateway::sync::lww::Origin;
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    use serde_json::json;
    use std::sync::{Arc, Mutex};

    let mut db = database.migrated().await;
    // A contact created by a webhook, and an older version of it (stale, not applied).
    let ctx = SyncContext { precedence: Origin::Crm, hlc: Hlc::starting_after(Stamp::default()) };
    let contact = |id: &str, kind: &str, version: i64| {
        json!({"id": id, "type": format!("contact.{kind}"), "changeSource": "ui", "changedFields": ["phone"],
            "object": {"type": "contact", "id": "crm_1", "externalId": null, "version": version,
            "updatedAt": format!("2025-01-05T10:00:0{version}.000Z"), "deletedAt": null,
            "data": {"firstName": "Ada", "lastName": "L", "email": "ada@example.com", "phone": null,
                "companyName": null, "role": "owner", "membershipStatus": "active"}}})
    };
    for (n, event) in [contact("evt_2", "created", 2), contact("evt_1", "updated", 1)].into_iter().enumerate() {
        let txn = sea_orm::TransactionTrait::begin(db.writer()).await.unwrap();
        let delivery = Incoming { delivery_id: format!("dlv_{n}"), events: Arc::new(vec![event]) };
        receive_all(&txn, &ctx, &[delivery]).await.pop().unwrap().unwrap();
        txn.commit().await.unwrap();
    }
    let user = entity::user::Entity::find()
        .filter(entity::user::Column::CrmId.eq("crm_1"))
        .one(db.reader())
        .await
        .unwrap()
        .expect("created");
    let seen: Arc<Mutex<Vec<Statement>>> = Arc::default();
    let record = seen.clone();
    db.on_read_statement(move |info| record.lock().unwrap().push(info.statement.clone()));
    let inspection = inspect(db.reader(), RecordType::Contact, &user.id).await.unwrap().expect("known");
    let events: Vec<(&str, &str)> =
        inspection.inbox.iter().map(|e| (e.event_id.as_str(), e.outcome.as_str())).collect();
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(events.contains(&("evt_2", "applied")) && events.iter().any(|e| e.0 == "evt_1" && e.1 != "applied"));
    for t in RecordType::ALL {
        assert!(inspect(db.reader(), t, "1").await.unwrap().is_none());
    }
    let statements: Vec<Statement> = seen.lock().unwrap().clone();
    let scanning = scanning(&planner(&db).await, &statements).await;
    for table in ["crm_outbox", "crm_inbox", "crm_sync_logs"] {
        assert!(statements.iter().any(|s| s.sql.contains(table)), "no read of {table}: {statements:?}");
    }
    assert!(scanning.is_empty(), "statements that scan a whole table:\n{}", scanning.join("\n"));
}

on_both_databases_without_app!(inspecting_a_record_reads_through_indexes);

/// The lookups by record that now have a partial index to go through say its condition, as
/// constants, and read it (SQLite, where the index is named in the plan): the failed deliveries
/// of a record (the failure list), and the unresolved events that keep a tombstone (retention),
/// rather than every failed row through an index by status.
async fn lookups_by_record_read_the_partial_indexes(database: TestDatabase) {
    use crm_gateway::config::Retention;
    use crm_gateway::ops::metrics::Metrics;
    use crm_gateway::ops::recovery::{Filter, outbound_failures};
    use crm_gateway::ops::retention::prune;
    use crm_gateway::writer::Writer;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    let mut db = database.migrated().await;
    let seen: Arc<Mutex<Vec<Statement>>> = Arc::default();
    let record = seen.clone();
    db.on_read_statement(move |info| record.lock().unwrap().push(info.statement.clone()));
    let by_record =
        Filter { record_type: Some(RecordType::Contact), record_id: Some("user_1".into()), ..Default::default() };
    outbound_failures(db.reader(), &by_record, None, 10).await.unwrap();
    let (writer, task) = Writer::start(&db, Arc::new(Metrics::new()));
    let day = Duration::from_secs(86_400);
    let keep = Retention { sync_logs: day, inbox: day, outbox: day, tombstones: day };
    prune(&writer, db.reader(), &keep, chrono::Utc::now(), true, None).await.unwrap();
    drop(writer);
    task.stop().await;

    let statements: Vec<Statement> = seen.lock().unwrap().clone();
    let mut checked = 0;
    for statement in &statements {
        let index = if statement.sql.contains("<> 'applied'") {
            "idx_crm_inbox_record"
        } else if statement.sql.contains("IN ('pending', 'in_flight', 'failed')") {
            "idx_crm_outbox_open"
        } else {
            continue;
        };
        checked += 1;
        let steps = plan(db.reader(), statement).await;
        let read = steps.iter().any(|step| step.index.as_deref() == Some(index));
        assert!(read, "{index} not read:\n{}", shown(&statement.sql, steps));
    }
    assert_eq!(checked, 2, "the failure list and the tombstones' retention: {statements:?}");
}

crate::on_one_database_without_app!(Sqlite sqlite: lookups_by_record_read_the_partial_indexes);
