//! The `crm-gateway` binary as an operator runs it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_crm-gateway");

/// The binary with an empty environment (as on a fresh machine), run in `dir`.
fn gateway(dir: &std::path::Path) -> Command {
    let mut command = Command::new(BIN);
    command.env_clear().current_dir(dir).stdin(Stdio::null());
    command
}

#[tokio::test]
async fn serve_with_no_environment_starts_on_sqlite_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    // Port 0 only so parallel tests never collide; everything else is the default.
    let mut child = gateway(dir.path())
        .env("BIND_ADDR", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stderr.take().unwrap();
    let address = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|line| line.split("addr=").nth(1).map(|a| a.trim().to_owned()))
    })
    .await
    .unwrap()
    .expect("the gateway logs the address it listens on");

    let ready = reqwest::get(format!("http://{address}/readyz")).await.unwrap();
    assert_eq!(ready.status(), reqwest::StatusCode::OK);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["checks"]["database"]["backend"], "sqlite");
    assert!(dir.path().join("crm-gateway.db").exists(), "the default SQLite file was created");

    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(0), "SIGTERM ends the gateway with exit code 0");
}

#[test]
fn invalid_configuration_names_every_variable_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();

    let output = gateway(dir.path())
        .envs([
            ("CRM_ENABLED", "true"),
            ("CRM_API_URL", "::not a url::"),
            ("CRM_WEBHOOK_SECRET", "whsec_do-not-print-me"),
            ("LOG_FORMAT", "xml"),
            ("BIND_ADDR", "somewhere"),
        ])
        .output()
        .unwrap();

    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    for variable in ["CRM_API_URL", "CRM_API_KEY", "CRM_API_SECRET", "LOG_FORMAT", "BIND_ADDR"] {
        assert!(stderr.contains(variable), "{variable} is not named in:\n{stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("do-not-print-me"), "{stderr}");
    assert!(!dir.path().join("crm-gateway.db").exists(), "nothing is created on a bad configuration");
}

#[test]
fn help_explains_commands_and_variables() {
    let dir = tempfile::tempdir().unwrap();

    let output = gateway(dir.path()).arg("--help").output().unwrap();

    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for needle in ["serve", "migrate", "CRM_ENABLED", "CRM_API_SECRET", "DATABASE_URL", "BIND_ADDR", "LOG_FORMAT"] {
        assert!(help.contains(needle), "--help does not mention {needle}:\n{help}");
    }
}

#[test]
fn help_never_prints_a_secret_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();

    let output = gateway(dir.path())
        .args(["--help"])
        .envs([("CRM_API_SECRET", "s3cret-value"), ("GATEWAY_API_TOKEN", "t0ken-value")])
        .output()
        .unwrap();

    let help = String::from_utf8(output.stdout).unwrap();
    assert!(!help.contains("s3cret-value") && !help.contains("t0ken-value"), "{help}");
}

#[test]
fn migrate_creates_the_database_and_exits() {
    let dir = tempfile::tempdir().unwrap();

    let output = gateway(dir.path()).arg("migrate").output().unwrap();

    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(dir.path().join("crm-gateway.db").exists());
    // A second run finds nothing to do and still succeeds.
    let again = gateway(dir.path()).arg("migrate").output().unwrap();
    assert!(again.status.success());
}

#[test]
fn sign_prints_headers_that_verify() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let body = br#"{"deliveryId":"d-1","events":[]}"#;
    let mut child = gateway(dir.path())
        .args(["sign", "--secret", "whsec_x", "--timestamp", "1736073000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(body).unwrap();

    let output = child.wait_with_output().unwrap();

    assert!(output.status.success());
    let headers = String::from_utf8(output.stdout).unwrap();
    let value = |name: &str| headers.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
    assert_eq!(value("X-TreadSoft-Delivery:"), Some("d-1"));
    let signed = crm_gateway::inbound::verify::SignedHeaders::TreadSoft {
        timestamp: value("X-TreadSoft-Timestamp:"),
        signature: value("X-TreadSoft-Signature:"),
    };
    let secret = ["whsec_x".to_owned().into()];
    assert_eq!(crm_gateway::inbound::verify::verify(signed, body, &secret, 1_736_073_000, 300), Ok(()));
}

#[test]
fn inbox_replay_of_an_unknown_event_says_so() {
    let dir = tempfile::tempdir().unwrap();

    let output = gateway(dir.path()).args(["inbox", "replay", "evt_missing"]).output().unwrap();

    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no event evt_missing"));
}

#[test]
fn outbox_retry_names_what_it_did() {
    let dir = tempfile::tempdir().unwrap();

    let all = gateway(dir.path()).args(["outbox", "retry", "--all"]).output().unwrap();
    let missing = gateway(dir.path()).args(["outbox", "retry", "42"]).output().unwrap();
    let neither = gateway(dir.path()).args(["outbox", "retry"]).output().unwrap();

    assert!(all.status.success());
    assert_eq!(String::from_utf8_lossy(&all.stdout).trim(), "0 failed row(s) are due again");
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no outbox row 42"));
    assert!(!String::from_utf8_lossy(&missing.stdout).contains("INFO"), "logs go to standard error");
    assert_eq!(neither.status.code(), Some(2), "clap refuses a call without an id or --all");
}

#[tokio::test]
async fn logs_failures_inspect_and_replay_failed_show_what_the_database_holds() {
    let Some(database) = crate::helpers::TestDatabase::create(crate::helpers::Backend::Sqlite).await else { return };
    let url = database.config.url.clone();
    let (_app, _stub) = crate::operations::some_of_everything(database).await;
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let output = gateway(dir.path()).env("DATABASE_URL", &url).args(args).output().unwrap();
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };

    let failures = run(&["failures"]);
    assert!(failures.contains("Outbound") && failures.contains("Inbound"), "{failures}");
    assert!(failures.contains("contact user_1") && failures.contains("422 validation_failed"), "{failures}");
    assert!(failures.contains("evt_bad") && failures.contains("role"), "{failures}");
    let outbound: serde_json::Value = serde_json::from_str(&run(&["failures", "--outbound", "--json"])).unwrap();
    assert_eq!(outbound["items"].as_array().unwrap().len(), 1);
    assert_eq!(outbound["items"][0]["recordId"], "user_1");

    let page: serde_json::Value = serde_json::from_str(&run(&["logs", "--limit", "1", "--json"])).unwrap();
    let cursor = page["nextCursor"].as_str().expect("more than one log").to_owned();
    let next: serde_json::Value =
        serde_json::from_str(&run(&["logs", "--limit", "1", "--cursor", &cursor, "--json"])).unwrap();
    assert!(next["items"][0]["id"].as_i64() < page["items"][0]["id"].as_i64(), "older, not the same");
    let table = run(&["logs", "--record-type", "user", "--record-id", "user_1"]);
    assert!(table.contains("contact user_1") && table.contains("failed"), "{table}");

    let inspect = run(&["inspect", "user", "user_1"]);
    for part in
        ["contact user_1", "Record", "mary@example.com", "Field stamps", "Outbox", "Sync logs", "validation_failed"]
    {
        assert!(inspect.contains(part), "no {part:?} in\n{inspect}");
    }
    let unknown = gateway(dir.path()).env("DATABASE_URL", &url).args(["inspect", "user", "nobody"]).output().unwrap();
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("knows no user nobody"));

    let replayed: serde_json::Value = serde_json::from_str(&run(&["inbox", "replay-failed"])).unwrap();
    assert_eq!(replayed, serde_json::json!({"replayed": 1, "outcomes": {"failed": 1}}));
}

/// The terminal's final screen from what a program wrote to it: each line as the last `\r`
/// left it, escape sequences removed.
fn screen(raw: &str) -> String {
    let plain = {
        let mut out = String::new();
        let mut chars = raw.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                // CSI: ESC [ parameters final-byte.
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if c.is_ascii_alphabetic() {
                            break;
                        }
                    }
                }
                continue;
            }
            out.push(c);
        }
        out
    };
    plain
        .split('\n')
        .map(|line| line.rsplit('\r').find(|part| !part.trim().is_empty()).unwrap_or("").trim_end().to_owned())
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn import_shows_progress_on_a_terminal_log_lines_otherwise_and_resumes_with_nothing_applied_twice() {
    let stub = crate::treadsoft_stub::Stub::start().await;
    for i in 0..450 {
        stub.state().add(
            "contacts",
            serde_json::json!({"firstName": format!("Guest{i}"), "lastName": "Smith",
                "email": format!("g{i}@example.com"), "phone": null, "companyName": null,
                "role": "guest", "membershipStatus": "active"}),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("CRM_ENABLED", "true".to_owned()),
        ("CRM_API_URL", stub.server.uri()),
        ("CRM_API_KEY", crate::treadsoft_stub::API_KEY.to_owned()),
        ("CRM_API_SECRET", crate::treadsoft_stub::API_SECRET.to_owned()),
        ("DATABASE_URL", format!("sqlite://{}", dir.path().join("import.db").display())),
    ];

    // A dry run says what it would do and writes nothing: the audit still finds every contact
    // only in TreadSoft.
    let dry = gateway(dir.path())
        .envs(env.clone())
        .args(["import", "--type", "contact", "--dry-run", "--json"])
        .output()
        .unwrap();
    assert!(dry.status.success(), "{}", String::from_utf8_lossy(&dry.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&dry.stdout).unwrap();
    assert_eq!((summary["dryRun"].as_bool(), summary["types"][0]["created"].as_u64()), (Some(true), Some(450)));
    let audit = gateway(dir.path()).envs(env.clone()).args(["audit", "--type", "contact", "--json"]).output().unwrap();
    assert_eq!(audit.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&audit.stdout).unwrap();
    assert_eq!(report["counts"]["onlyInCrm"], 450, "the dry run wrote nothing");

    // Not a terminal: log lines on standard error, the summary table on standard output.
    let output = gateway(dir.path()).envs(env.clone()).args(["import", "--type", "contact"]).output().unwrap();
    let (out, err) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{err}");
    assert!(err.contains("import: contacts: reading changes since the beginning"), "{err}");
    assert!(err.contains("import: contacts: done, 450 records"), "{err}");
    assert!(out.contains("│ contact") && out.contains("450"), "the summary table:\n{out}");

    // Again, for a script: it reads from five minutes before the last record seen (the stub's
    // records are a second apart, the last at 10:07:30), and applies nothing twice.
    let again = gateway(dir.path()).envs(env.clone()).args(["import", "--type", "contact", "--json"]).output().unwrap();
    assert!(again.status.success());
    let summary: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    let contacts = &summary["types"][0];
    assert_eq!(contacts["since"], "2025-01-05T10:02:30Z", "{summary}");
    assert_eq!((contacts["seen"].as_u64(), contacts["unchanged"].as_u64()), (Some(301), Some(301)), "{summary}");
    assert_eq!((contacts["created"].as_u64(), contacts["updated"].as_u64()), (Some(0), Some(0)));
    assert!(again.stderr.is_empty() || !String::from_utf8_lossy(&again.stderr).contains("import:"), "--json is quiet");

    // The audit: both sides equal; then a change TreadSoft never told of is found, with both
    // values, and the exit code says so.
    let audit = gateway(dir.path()).envs(env.clone()).args(["audit", "--type", "contact"]).output().unwrap();
    let shown = String::from_utf8_lossy(&audit.stdout);
    assert_eq!(audit.status.code(), Some(0), "{shown}{}", String::from_utf8_lossy(&audit.stderr));
    assert!(shown.contains("No differences") && shown.contains("│ contact"), "{shown}");
    {
        let mut state = stub.state();
        let guest = state.records.values_mut().find(|r| r["email"] == "g7@example.com").unwrap();
        guest["phone"] = serde_json::json!("+44 7 changed");
        guest["version"] = serde_json::json!(2);
        guest["updatedAt"] = serde_json::json!("2025-01-06T09:00:00.000Z");
    }
    let audit = gateway(dir.path()).envs(env.clone()).args(["audit", "--type", "contact"]).output().unwrap();
    let shown = String::from_utf8_lossy(&audit.stdout);
    assert_eq!(audit.status.code(), Some(1), "differences remain: {shown}");
    assert!(shown.contains("field values") && shown.contains("+44 7 changed"), "{shown}");
    assert!(shown.contains("TreadSoft wins") && shown.contains("1 difference(s)"), "{shown}");

    // A real terminal (a pseudo-terminal through script(1)): a progress bar that ends full.
    let mut command = format!("{BIN} import --type contact --since 2020-01-01T00:00:00Z");
    command.insert_str(0, "stty cols 120; ");
    let output = Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .envs(env)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let raw = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{raw}");
    let shown = screen(&raw);
    let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("import-progress.txt"), &shown).unwrap();
    std::fs::write(folder.join("import-progress.raw"), &raw).unwrap();
    let bar = shown.lines().find(|l| l.contains("contacts [")).unwrap_or_else(|| panic!("no bar in\n{shown}"));
    assert!(bar.contains("100%") && bar.contains("450 records in"), "the bar ends full, with the counts: {bar}");
    assert!(raw.contains("\u{1b}["), "drawn with terminal escapes, not log lines");
    assert!(!shown.contains("import: contacts:"), "no log lines on a terminal:\n{shown}");
}
