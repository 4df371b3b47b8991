//! The operator's commands as a terminal shows them: `crm-gateway logs`, `failures` and
//! `inspect` print tables (or, with `--json`, what the matching routes answer). The data comes
//! from [`crate::ops::recovery`], as the routes' does.

use crate::cli::ListArgs;
use crate::config::Config;
use crate::ops::recovery::{self, InboxCursor, ListQuery, Page, id_cursor, record_type};
use anyhow::Context;
use chrono::{DateTime, Utc};
use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use serde::Serialize;

impl ListArgs {
    fn query(self) -> ListQuery {
        ListQuery {
            record_type: self.record_type,
            record_id: self.record_id,
            crm_id: self.crm_id,
            status: self.status,
            since: self.since,
            until: self.until,
            limit: Some(self.limit),
            cursor: self.cursor,
        }
    }
}

pub(crate) fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_style(UTF8_FULL_CONDENSED).set_content_arrangement(ContentArrangement::Dynamic).set_header(header);
    table
}

pub(crate) fn when(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// A titled table, or the title and "none" when it has no rows.
fn section(title: &str, table: &Table) {
    if table.is_empty() {
        println!("\n{title}: none");
    } else {
        println!("\n{title}\n{table}");
    }
}

/// A cell's text, shortened to `max` characters (an error or a body can be long).
pub(crate) fn short(text: Option<&str>, max: usize) -> String {
    let text = text.unwrap_or("–");
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max - 1).collect();
    cut.push('…');
    cut
}

fn print_page<T: Serialize>(page: &Page<T>, json: bool, table: Table, what: &str) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(page)?);
        return Ok(());
    }
    if page.items.is_empty() {
        println!("no {what}");
    } else {
        println!("{table}");
    }
    if let Some(next) = &page.next_cursor {
        println!("more: add --cursor {next}");
    }
    Ok(())
}

/// `crm-gateway logs`.
pub async fn logs(config: Config, list: ListArgs) -> anyhow::Result<()> {
    let json = list.json;
    let (filter, cursor, limit) = list.query().parse().map_err(anyhow::Error::msg)?;
    let before = cursor.as_deref().map(id_cursor).transpose()?;
    let (db, _writer) = crate::cli::open(&config).await?;
    let page = recovery::logs(db.reader(), &filter, before, limit).await?;
    let mut out = table(&["id", "at (UTC)", "record", "CRM id", "action", "status", "error"]);
    for log in &page.items {
        out.add_row(vec![
            log.id.to_string(),
            when(log.created_at),
            format!("{} {}", log.record_type, log.record_id),
            log.crm_id.clone().unwrap_or_default(),
            log.action.clone(),
            log.status.clone(),
            short(log.error.as_deref(), 80),
        ]);
    }
    print_page(&page, json, out, "sync logs match")
}

/// `crm-gateway failures`: the outbound and/or inbound lists.
pub async fn failures(config: Config, outbound: bool, inbound: bool, list: ListArgs) -> anyhow::Result<()> {
    let json = list.json;
    let (filter, cursor, limit) = list.query().parse().map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        cursor.is_none() || outbound != inbound,
        "--cursor continues one list: give --outbound or --inbound with it"
    );
    let (db, _writer) = crate::cli::open(&config).await?;
    if outbound {
        let before = if inbound { None } else { cursor.as_deref().map(id_cursor).transpose()? };
        let page = recovery::outbound_failures(db.reader(), &filter, before, limit).await?;
        if !json {
            println!("Outbound: deliveries given up on (retry: crm-gateway outbox retry ID | --all)");
        }
        let mut out = table(&["row", "failed at (UTC)", "record", "operation", "attempts", "error"]);
        for f in &page.items {
            out.add_row(vec![
                f.id.to_string(),
                when(f.failed_at),
                format!("{} {}", f.record_type, f.record_id),
                f.operation.clone(),
                f.attempts.to_string(),
                short(f.error.as_deref(), 100),
            ]);
        }
        print_page(&page, json, out, "failed deliveries")?;
    }
    if inbound {
        let before = if outbound { None } else { cursor.as_deref().map(str::parse::<InboxCursor>).transpose()? };
        let page = recovery::inbound_failures(db.reader(), &filter, before, limit).await?;
        if !json {
            println!("Inbound: webhook events that failed (replay: crm-gateway inbox replay EVENT_ID | replay-failed)");
        }
        let mut out = table(&["event", "received at (UTC)", "type", "record", "error"]);
        for f in &page.items {
            out.add_row(vec![
                f.event_id.clone(),
                when(f.received_at),
                f.event_type.clone(),
                format!("{} {}", f.record_type.as_deref().unwrap_or(""), f.crm_id.as_deref().unwrap_or("")),
                short(f.error.as_deref(), 100),
            ]);
        }
        print_page(&page, json, out, "failed webhook events")?;
    }
    Ok(())
}

/// `crm-gateway inspect TYPE ID`.
pub async fn inspect(config: Config, name: String, id: String, json: bool) -> anyhow::Result<()> {
    let t = record_type(&name).with_context(|| {
        format!("no record type {name:?}: contact (or user), property, enquiry, booking, membership")
    })?;
    let (db, _writer) = crate::cli::open(&config).await?;
    let inspection =
        recovery::inspect(db.reader(), t, &id).await?.with_context(|| format!("the gateway knows no {name} {id}"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&inspection)?);
        return Ok(());
    }
    println!(
        "{} {}  (TreadSoft id: {})",
        inspection.record_type,
        inspection.record_id,
        inspection.crm_id.as_deref().unwrap_or("none yet")
    );
    if let Some(at) = inspection.tombstoned_at {
        println!("deleted in TreadSoft at {} (tombstone)", when(at));
    }
    match &inspection.record {
        None => println!("\nno row: the record is not in the database"),
        Some(record) => {
            let mut out = table(&["column", "value"]);
            for (column, value) in record.as_object().into_iter().flatten() {
                out.add_row(vec![column.clone(), short(Some(&value.to_string()), 100)]);
            }
            section("Record", &out);
        }
    }
    let mut stamps = table(&["field", "stamp (ms.seq)", "origin", "event"]);
    for s in &inspection.field_stamps {
        stamps.add_row(vec![
            s.field.clone(),
            format!("{}.{}", s.stamp_ms, s.stamp_seq),
            s.origin.clone(),
            s.event_id.clone(),
        ]);
    }
    section("Field stamps (last writer wins)", &stamps);
    let mut outbox = table(&["row", "operation", "status", "attempts", "next attempt (UTC)", "error"]);
    for o in &inspection.outbox {
        outbox.add_row(vec![
            o.id.to_string(),
            o.operation.clone(),
            o.status.clone(),
            o.attempts.to_string(),
            when(o.next_attempt_at),
            short(o.last_error.as_deref(), 80),
        ]);
    }
    section("Outbox, not delivered yet (newest first; those delivered are in the sync logs)", &outbox);
    let mut inbox = table(&["event", "received (UTC)", "type", "outcome", "reason"]);
    for e in &inspection.inbox {
        inbox.add_row(vec![
            e.event_id.clone(),
            when(e.received_at),
            e.event_type.clone(),
            e.outcome.clone(),
            short(e.reason.as_deref(), 80),
        ]);
    }
    section("Webhook events (newest first)", &inbox);
    let mut logs = table(&["id", "at (UTC)", "action", "status", "error"]);
    for l in &inspection.logs {
        logs.add_row(vec![
            l.id.to_string(),
            when(l.created_at),
            l.action.clone(),
            l.status.clone(),
            short(l.error.as_deref(), 80),
        ]);
    }
    section("Sync logs (newest first)", &logs);
    Ok(())
}

/// `crm-gateway prune [--dry-run]`.
pub async fn prune(config: Config, dry_run: bool, json: bool) -> anyhow::Result<()> {
    let (db, writer) = crate::cli::open(&config).await?;
    let pruned =
        crate::ops::retention::prune(&writer, db.reader(), &config.retention, Utc::now(), dry_run, None).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "dryRun": dry_run, "removed": pruned }))?);
        return Ok(());
    }
    let days = |d: std::time::Duration| format!("{} days", d.as_secs() / 86_400);
    let keep = &config.retention;
    let mut out = table(&["table", "rows", "kept for", "which rows"]);
    for (name, rows, kept, which) in [
        ("crm_sync_logs", pruned.sync_logs, days(keep.sync_logs), "all"),
        ("crm_inbox", pruned.inbox, days(keep.inbox), "applied, stale, echo"),
        ("crm_requests", pruned.requests, days(keep.outbox), "all"),
        ("crm_outbox", pruned.outbox, days(keep.outbox), "delivered"),
        ("sync_tombstones", pruned.tombstones, days(keep.tombstones), "all"),
    ] {
        out.add_row(vec![name.to_owned(), rows.to_string(), kept, which.to_owned()]);
    }
    println!("{}\n{out}", if dry_run { "would remove (dry run, nothing removed):" } else { "removed:" });
    Ok(())
}
