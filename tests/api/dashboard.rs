//! The dashboard in a real browser: headless Chromium driven through ChromeDriver (WebDriver,
//! `fantoccini`), against the running gateway. Screenshots go to `target/screenshots/`.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them). Without them the
//! test says so loudly and passes outside CI; with `CI=true` it fails with the reason.

use crate::helpers::{TestApp, TestDatabase, use_stub};
use crate::inbound::event;
use crate::treadsoft_stub::Stub;
use entity::crm_outbox;
use fantoccini::{Client, ClientBuilder, Locator};
use reqwest::StatusCode;
use sea_orm::EntityTrait;
use serde_json::json;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "chromedriver";
/// How long the page may take to show a change (it polls every 3 s).
const PAGE_WAIT: Duration = Duration::from_secs(15);

/// ChromeDriver, stopped when dropped.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Browser {
    client: Client,
    _driver: Driver,
}

/// Starts ChromeDriver on a free port and opens a headless Chromium session at 1280×800.
/// `None` (after saying why) when the browser is not installed and this is not CI.
async fn browser() -> Option<Browser> {
    let unavailable = |why: String| {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("the browser test cannot start a browser ({why}) and CI=true");
        }
        eprintln!(
            "\n*** SKIPPED the dashboard browser test: {why}. Install: apt-get install chromium chromium-driver ***\n"
        );
        None
    };
    if !std::path::Path::new(CHROMIUM).exists() {
        return unavailable(format!("{CHROMIUM} is missing"));
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let driver = match Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(driver) => Driver(driver),
        Err(e) => return unavailable(format!("cannot run {CHROMEDRIVER}: {e}")),
    };
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,800", "--lang=en-GB"],
        }),
    );
    let started = Instant::now();
    loop {
        // Plain HTTP to ChromeDriver on loopback: no TLS stack needed.
        let connected = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await;
        match connected {
            Ok(client) => return Some(Browser { client, _driver: driver }),
            // ChromeDriver takes a moment to listen.
            Err(_) if started.elapsed() < Duration::from_secs(20) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("ChromeDriver on port {port} did not open a Chromium session: {e}"),
        }
    }
}

/// Saves screenshots of the page as `target/screenshots/<name>.png` (the 1280×800 window, as an
/// operator sees it) and `<name>-full.png` (the whole page, the window stretched to its height).
async fn screenshot(client: &Client, name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target").join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    client.execute("window.scrollTo(0, 0); return true;", vec![]).await.unwrap();
    let path = dir.join(format!("{name}.png"));
    std::fs::write(&path, client.screenshot().await.expect("a screenshot")).unwrap();
    let (width, height) = client.get_window_size().await.unwrap();
    let page = client.execute("return document.documentElement.scrollHeight;", vec![]).await.unwrap();
    let page = page.as_u64().unwrap_or(height) as u32;
    client.set_window_size(width as u32, page + (height as u32).saturating_sub(657).max(150)).await.unwrap();
    std::fs::write(dir.join(format!("{name}-full.png")), client.screenshot().await.unwrap()).unwrap();
    client.set_window_size(width as u32, height as u32).await.unwrap();
    path
}

/// Waits until `script` (a JavaScript expression) is true on the page.
async fn until(client: &Client, what: &str, script: &str) {
    let started = Instant::now();
    loop {
        let value = client.execute(&format!("return Boolean({script});"), vec![]).await.expect("a script ran");
        if value == json!(true) {
            return;
        }
        assert!(started.elapsed() < PAGE_WAIT, "the page did not show {what} within {PAGE_WAIT:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn text_of(client: &Client, css: &str) -> String {
    client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no {css}: {e}")).text().await.unwrap()
}

const TOKEN: &str = "dashboard-token";

#[tokio::test]
async fn the_dashboard_shows_live_changes_retries_a_failure_and_escapes_what_it_shows() {
    let Some(database) = TestDatabase::create(crate::helpers::Backend::Sqlite).await else { return };
    let Some(browser) = browser().await else { return };
    let client = &browser.client;
    let stub = Stub::start().await;
    let app = TestApp::spawn_with(database, |c| {
        use_stub(c, &stub);
        c.api_token = Some(TOKEN.to_owned().into());
    })
    .await;
    // A delivery TreadSoft refuses for good: a dead letter to retry from the page.
    let owner = json!({"id": "user_1", "name": "Mary Smith", "email": "mary@example.com", "phone": null,
        "companyName": null, "role": "owner", "membershipStatus": "pending"});
    let accepted = app
        .http
        .post(format!("{}/api/events", app.address))
        .bearer_auth(TOKEN)
        .json(&json!({"id": "ev_1", "type": "owner.registered", "data": owner}))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    stub.fail_next(422, "validation_failed", None);
    app.deliver_pending().await;
    let failed = crm_outbox::Entity::find().one(app.db.reader()).await.unwrap().unwrap();
    assert_eq!(failed.status, "failed");

    // The page asks for the token once, then shows the status.
    client.goto(&format!("{}/dashboard", app.address)).await.expect("the page opens");
    client.wait().at_most(PAGE_WAIT).for_element(Locator::Css("#token-form:not([hidden]) #token")).await.unwrap();
    client.find(Locator::Css("#token")).await.unwrap().send_keys(TOKEN).await.unwrap();
    client.find(Locator::Css("#token-form button[type=submit]")).await.unwrap().click().await.unwrap();
    let row = format!("#outbound-failures tr[data-row='{}']", failed.id);
    until(client, "the dead letter", &format!("document.querySelector(\"{row}\")")).await;
    assert!(text_of(client, &row).await.contains("validation_failed"));
    assert_eq!(text_of(client, "[data-field='outbox.failed']").await, "1");
    // Marks this page load: a reload would lose it.
    client.execute("window.loadedOnce = true; return true;", vec![]).await.unwrap();
    screenshot(client, "dashboard-1-dead-letter").await;

    // A webhook sent now appears without a reload, its record's name shown as text.
    let hostile = "<img src=x onerror=alert(1)>";
    // TreadSoft has the record, so the link-back the webhook queues goes through.
    stub.state().records.insert(("contacts".into(), "crm_live".into()), json!({"id": "crm_live", "version": 1}));
    let data = json!({"firstName": hostile, "lastName": "Jones", "email": "x@example.com", "phone": null,
        "companyName": null, "role": "owner", "membershipStatus": "active"});
    assert_eq!(app.deliver(&[event("evt_live", "contact.created", "crm_live", 1, 0, &[], data)]).await, ["applied"]);
    let live = "#recent-events tr[data-event='evt_live']";
    until(client, "the webhook just sent", &format!("document.querySelector(\"{live}\")")).await;
    assert_eq!(text_of(client, &format!("{live} td.name")).await, format!("{hostile} Jones"));
    let images = client.execute("return document.querySelectorAll('main img').length;", vec![]).await.unwrap();
    assert_eq!(images, json!(0), "the name was parsed as HTML");
    assert!(client.get_alert_text().await.is_err(), "a script from the CRM's data ran");
    assert_eq!(client.execute("return window.loadedOnce === true;", vec![]).await.unwrap(), json!(true));
    screenshot(client, "dashboard-2-webhook-arrived").await;

    // The row's Retry button queues the delivery again; it then goes out.
    client.find(Locator::Css(&format!("{row} button[data-action=retry]"))).await.unwrap().click().await.unwrap();
    until(client, "the retried row gone", &format!("!document.querySelector(\"{row}\")")).await;
    until(client, "the confirmation", "document.getElementById('notice').textContent.includes('queued again')").await;
    let retried = crm_outbox::Entity::find_by_id(failed.id).one(app.db.reader()).await.unwrap().unwrap();
    assert_eq!(retried.status, "pending", "the button made the row due again");
    app.deliver_pending().await;
    let delivered = crm_outbox::Entity::find_by_id(failed.id).one(app.db.reader()).await.unwrap().unwrap();
    assert_eq!(delivered.status, "delivered");
    assert!(stub.state().by_external_id("contacts", "user_1").is_some());
    until(client, "no failures left", "!document.getElementById('outbound-empty').hidden").await;
    until(client, "the delivery", "document.querySelector(\"[data-field='outbox.pending']\").textContent === '0'")
        .await;
    assert_eq!(text_of(client, "#records tbody tr:first-child td:nth-child(4)").await, "0", "no contact failed");
    assert_eq!(client.execute("return window.loadedOnce === true;", vec![]).await.unwrap(), json!(true));
    screenshot(client, "dashboard-3-retried").await;

    // An audit's counts appear on the Consistency card. The stub's record for the webhook's
    // contact holds no fields, so the audit finds it differs from the site's.
    assert_eq!(text_of(client, "#audit-state").await, "? No audit yet");
    let importer = crm_gateway::pull::import::Importer {
        db: app.db.clone(),
        writer: app.writer.clone(),
        crm: app.delivery.crm(),
        sync: app.sync.clone(),
        overlap: crm_gateway::pull::import::OVERLAP,
    };
    let contacts = [crm_gateway::sync::mapping::RecordType::Contact];
    let quiet = crm_gateway::pull::import::Quiet;
    let report = crm_gateway::pull::audit::run(&importer, &contacts, false, &quiet).await.unwrap();
    assert_eq!((report.counts.compared, report.counts.differing_records), (2, 1), "{:#?}", report.items);
    until(client, "the audit's counts", "document.getElementById('audit-state').textContent.endsWith('1 difference')")
        .await;
    assert!(text_of(client, "[data-field='audit.differences']").await.starts_with("1 ("));
    screenshot(client, "dashboard-4-audit").await;

    // A change stream (Salesforce's Change Data Capture channel) read by an instance: the card
    // tells how far it is and who reads it.
    assert_eq!(text_of(client, "[data-field='stream.state']").await, "none (webhooks)");
    let now = chrono::Utc::now();
    let position = entity::crm_stream_positions::ActiveModel {
        channel: sea_orm::Set("/data/ChangeEvents".into()),
        replay_id: sea_orm::Set("AAAAAAAAA+k=".into()),
        events: sea_orm::Set(1234),
        event_at: sea_orm::Set(now),
        reconcile_from: sea_orm::Set(None),
        updated_at: sea_orm::Set(now),
    };
    let lease = entity::crm_leases::ActiveModel {
        name: sea_orm::Set("salesforce-cdc:/data/ChangeEvents".into()),
        holder: sea_orm::Set("gw-2:4242:ab12cd34".into()),
        taken_at: sea_orm::Set(now),
        expires_at: sea_orm::Set(now + chrono::Duration::minutes(5)),
    };
    entity::crm_stream_positions::Entity::insert(position).exec_without_returning(app.db.writer()).await.unwrap();
    entity::crm_leases::Entity::insert(lease).exec_without_returning(app.db.writer()).await.unwrap();
    until(
        client,
        "the change stream",
        "document.querySelector(\"[data-field='stream.state']\").textContent.includes('1,234 events')",
    )
    .await;
    assert_eq!(text_of(client, "[data-field='stream.reader']").await, "gw-2:4242:ab12cd34");
    screenshot(client, "dashboard-5-change-stream").await;

    browser.client.clone().close().await.unwrap();
}
