//! Property tests of the last-writer-wins rules: any permutation and duplication of a random set
//! of events about one record (TreadSoft creates, updates and deletes, from its UI or its API, and
//! the site's own edits) ends in one state, and the same state on SQLite and PostgreSQL.
//!
//! Each case is applied in several orders, on both databases, to records of its own; a failing
//! case shrinks to a small one. `PROPTEST_CASES` sets how many cases run (default 24).

use crate::helpers::{Backend, TestApp, TestDatabase};
use entity::user;
use proptest::prelude::*;
use sea_orm::EntityTrait;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicUsize, Ordering};

const PHONES: [&str; 3] = ["+44 1", "+44 2", "+44 3"];
const COMPANIES: [Option<&str>; 3] = [None, Some("Acme"), Some("Brontë & Co")];
const STATUSES: [&str; 3] = ["active", "pending", "inactive"];

/// One TreadSoft update: the fields it changes, with their new values, and where it came from.
#[derive(Debug, Clone)]
struct Update {
    phone: Option<usize>,
    company: Option<usize>,
    status: Option<usize>,
    via_api: bool,
}

#[derive(Debug, Clone)]
struct Case {
    updates: Vec<Update>,
    deleted: bool,
    /// The site's own edits, at most one per field (two edits of one field are ordered by when
    /// they happen, which is not what is permuted here).
    local_phone: Option<usize>,
    local_company: Option<usize>,
    /// Orders of the steps after the create (indexes into [`Case::steps`], repeats allowed).
    orders: Vec<Vec<usize>>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Step {
    Crm(usize),
    LocalPhone,
    LocalCompany,
}

impl Case {
    /// Every step but the create: TreadSoft events 1.. (updates, then the delete) and local edits.
    fn steps(&self) -> Vec<Step> {
        let mut steps: Vec<Step> = (1..=self.updates.len() + usize::from(self.deleted)).map(Step::Crm).collect();
        steps.extend(self.local_phone.map(|_| Step::LocalPhone));
        steps.extend(self.local_company.map(|_| Step::LocalCompany));
        steps
    }
}

fn update() -> impl Strategy<Value = Update> {
    (proptest::option::of(0..3usize), proptest::option::of(0..3usize), proptest::option::of(0..3usize), any::<bool>())
        .prop_filter("an update changes a field", |(p, c, s, _)| p.is_some() || c.is_some() || s.is_some())
        .prop_map(|(phone, company, status, via_api)| Update { phone, company, status, via_api })
}

fn case() -> impl Strategy<Value = Case> {
    (
        proptest::collection::vec(update(), 0..5),
        any::<bool>(),
        proptest::option::of(0..3usize),
        proptest::option::of(0..3usize),
    )
        .prop_flat_map(|(updates, deleted, local_phone, local_company)| {
            let n = updates.len()
                + usize::from(deleted)
                + usize::from(local_phone.is_some())
                + usize::from(local_company.is_some());
            // Each order: a permutation of every step, then some steps again (duplicates).
            let order = (Just((0..n).collect::<Vec<_>>()).prop_shuffle(), proptest::collection::vec(0..n.max(1), 0..3))
                .prop_map(move |(mut all, again)| {
                    all.extend(again.into_iter().filter(|_| n > 0));
                    all
                });
            proptest::collection::vec(order, 2..4).prop_map(move |orders| Case {
                updates: updates.clone(),
                deleted,
                local_phone,
                local_company,
                orders,
            })
        })
}

/// TreadSoft event `k` (0: the create) of the record, carrying the record's state at version k+1.
fn crm_event(case: &Case, k: usize, crm_id: &str, local_id: &str) -> Value {
    let (mut phone, mut company, mut status) = (0, 0, 0);
    for update in &case.updates[..k.min(case.updates.len())] {
        phone = update.phone.unwrap_or(phone);
        company = update.company.unwrap_or(company);
        status = update.status.unwrap_or(status);
    }
    let version = k as i64 + 1;
    let at = format!("2025-01-05T10:{:02}:00.000Z", k);
    let (kind, changed, source) = if k == 0 {
        ("contact.created", vec![], "ui")
    } else if k > case.updates.len() {
        ("contact.deleted", vec![], "ui")
    } else {
        let u = &case.updates[k - 1];
        let mut changed = vec![];
        changed.extend(u.phone.map(|_| "phone"));
        changed.extend(u.company.map(|_| "companyName"));
        changed.extend(u.status.map(|_| "membershipStatus"));
        ("contact.updated", changed, if u.via_api { "api" } else { "ui" })
    };
    let deleted = kind == "contact.deleted";
    json!({
        "id": format!("evt_{crm_id}_{k}"), "type": kind, "changeSource": source,
        "requestId": if source == "api" { json!("req_not_ours") } else { Value::Null },
        "changedFields": changed,
        "object": {
            "type": "contact", "id": crm_id, "externalId": local_id, "version": version, "updatedAt": at,
            "deletedAt": if deleted { json!(at) } else { Value::Null },
            "data": if deleted { Value::Null } else { json!({
                "firstName": "Zoë", "lastName": "Brontë", "email": format!("{local_id}@example.com"),
                "phone": PHONES[phone], "companyName": COMPANIES[company], "role": "owner",
                "membershipStatus": STATUSES[status],
            })},
        }
    })
}

/// What a user would look at: whether the record is deleted, and if not its synced fields.
type State = (bool, Option<(String, String, Option<String>, Option<String>, String)>);

async fn apply(app: &TestApp, case: &Case, order: &[usize], crm_id: &str, local_id: &str) -> State {
    let steps = case.steps();
    let mut all = vec![Step::Crm(0)];
    all.extend(order.iter().map(|&i| steps[i]));
    for step in all {
        match step {
            Step::Crm(k) => {
                let outcome = app.deliver(&[crm_event(case, k, crm_id, local_id)]).await;
                assert_ne!(outcome[0], "failed", "event {k} failed");
            }
            Step::LocalPhone | Step::LocalCompany => {
                let (field, value) = match step {
                    Step::LocalPhone => ("phone", json!(format!("+44 local {}", case.local_phone.unwrap()))),
                    _ => ("companyName", json!(format!("Local {}", case.local_company.unwrap()))),
                };
                let event = json!({"id": format!("ev_{local_id}_{field}"), "type": "owner.updated",
                    "data": {"id": local_id, field: value}});
                let status = app.post_events(&event).await.status();
                // An edit of a record TreadSoft deleted first is refused; any other answer is a bug.
                assert!(status == 202 || status == 422, "local edit answered {status}");
            }
        }
    }
    let user = user::Entity::find_by_id(local_id).one(app.db.reader()).await.unwrap().expect("the user exists");
    let deleted = user.deleted_at.is_some();
    let fields = (!deleted).then(|| {
        let status = serde_json::to_value(user.membership_status).unwrap().as_str().unwrap().to_owned();
        (user.name, user.email, user.phone, user.company_name, status)
    });
    (deleted, fields)
}

#[test]
fn any_order_and_duplication_of_events_ends_in_one_state_on_both_databases() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (apps, cleanups) = runtime.block_on(async {
        let mut apps = Vec::new();
        let mut cleanups = Vec::new();
        for backend in [Backend::Sqlite, Backend::Postgres] {
            if let Some(database) = TestDatabase::create(backend).await {
                cleanups.push(database.cleanup_handle());
                apps.push(TestApp::spawn(database).await);
            }
        }
        (apps, cleanups)
    });
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(24);
    // A failing case is kept in a file next to this one, and tried first on every later run.
    let regressions =
        proptest::test_runner::FileFailurePersistence::Direct("tests/api/lww_properties.proptest-regressions");
    let config =
        ProptestConfig { cases, failure_persistence: Some(Box::new(regressions)), ..ProptestConfig::default() };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let record = AtomicUsize::new(0);
    let result = runner.run(&case(), |case| {
        let outcomes: Vec<(Backend, usize, State)> = runtime.block_on(async {
            let mut outcomes = Vec::new();
            for app in &apps {
                for (n, order) in case.orders.iter().enumerate() {
                    let r = record.fetch_add(1, Ordering::SeqCst);
                    let state = apply(app, &case, order, &format!("crm_contact_p{r}"), &format!("user_p{r}")).await;
                    outcomes.push((app.backend, n, state));
                }
            }
            outcomes
        });
        // Emails differ per record by construction; compare everything else.
        let normalise = |s: &State| (s.0, s.1.clone().map(|(n, _, p, c, m)| (n, p, c, m)));
        let first = normalise(&outcomes[0].2);
        for (backend, n, state) in &outcomes {
            prop_assert_eq!(&normalise(state), &first, "order {} on {:?} differs", n, backend);
        }
        Ok(())
    });
    runtime.block_on(async {
        drop(apps);
        for cleanup in cleanups {
            cleanup.run().await;
        }
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
