//! `crm-gateway import` and `crm-gateway audit` as a terminal shows them (or, with `--json`,
//! as scripts read them).

use super::audit::{self, Item, Report};
use super::import::{Importer, PassError, Start, Summary};
use super::progress::Shown;
use crate::config::{Config, CrmProvider};
use crate::ops::report::{short, table, when};
use crate::sync::mapping::RecordType;
use anyhow::Context;
use serde_json::json;
use std::sync::Arc;

/// The record types `--type` names, parents first: one, or `all`.
pub fn types_arg(name: &str) -> anyhow::Result<Vec<RecordType>> {
    if name == "all" {
        return Ok(RecordType::ALL.to_vec());
    }
    crate::ops::recovery::record_type(name).map(|t| vec![t]).with_context(|| {
        format!("--type: expected contact (or user), property, enquiry, booking, membership or all, got {name:?}")
    })
}

/// The importer a one-shot command works through: the database, its writer and TreadSoft's client.
async fn importer(config: &Config) -> anyhow::Result<Importer> {
    anyhow::ensure!(
        !matches!(config.crm, CrmProvider::Mock),
        "this command reads TreadSoft: set CRM_ENABLED=true with CRM_API_URL, CRM_API_KEY and CRM_API_SECRET \
         (or CRM_PROVIDER=hubspot with CRM_API_KEY; the mock CRM has no records)"
    );
    let (db, writer) = crate::cli::open(config).await?;
    let sync = crate::cli::sync_context(config, &db).await?;
    let crm = crate::crm::from_config(config, Arc::new(crate::ops::metrics::Metrics::new()))?;
    Ok(Importer { db, writer, crm, sync, overlap: super::import::OVERLAP })
}

/// What a pass that stopped early tells the operator.
fn stopped(e: PassError) -> anyhow::Error {
    anyhow::Error::new(e).context("the import stopped; what it applied is kept: run it again to resume")
}

/// `crm-gateway import`.
pub async fn import(
    config: Config,
    types: Vec<RecordType>,
    since: Option<chrono::DateTime<chrono::Utc>>,
    dry_run: bool,
    json: bool,
) -> anyhow::Result<()> {
    let importer = importer(&config).await?;
    let types: Vec<RecordType> = types.into_iter().filter(|t| importer.crm.syncs(*t)).collect();
    let shown = Shown::new(json);
    let start = since.map_or(Start::Resume, Start::Since);
    let mut summaries: Vec<Summary> = Vec::new();
    let work = async {
        for &t in &types {
            summaries.push(importer.pass(t, start, dry_run, &shown).await.map_err(stopped)?);
        }
        anyhow::Ok(())
    };
    tokio::select! {
        done = work => done?,
        _ = tokio::signal::ctrl_c() => {
            anyhow::bail!("interrupted: the pages applied so far are kept; run the import again to resume");
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&json!({ "dryRun": dry_run, "types": summaries }))?);
        return Ok(());
    }
    let mut out = table(&[
        "record",
        "from",
        "pages",
        "seen",
        "created",
        "updated",
        "unchanged",
        "stale",
        "waiting",
        "failed",
        "through",
    ]);
    for s in &summaries {
        out.add_row(vec![
            format!("{}{}", s.record_type, if s.resumed { " (resumed)" } else { "" }),
            if s.since == chrono::DateTime::UNIX_EPOCH { "the beginning".into() } else { when(s.since) },
            s.pages.to_string(),
            s.seen.to_string(),
            s.created.to_string(),
            s.updated.to_string(),
            s.unchanged.to_string(),
            s.stale.to_string(),
            s.waiting.to_string(),
            s.failed.to_string(),
            s.through.map(when).unwrap_or_else(|| "–".into()),
        ]);
    }
    if dry_run {
        println!("Dry run: nothing was written. Children of records it would create count as waiting.");
    }
    println!("{out}");
    let failures: Vec<_> = summaries.iter().flat_map(|s| s.failures.iter().map(move |f| (s.record_type, f))).collect();
    if !failures.is_empty() {
        let mut out = table(&["record", "TreadSoft id", "why it failed"]);
        for (t, f) in failures {
            out.add_row(vec![t.to_owned(), f.crm_id.clone(), short(Some(&f.reason), 100)]);
        }
        println!("\nFailed records (also in `crm-gateway failures --inbound`):\n{out}");
    }
    Ok(())
}

/// `crm-gateway audit`. Returns whether differences remain (the command exits 1 then).
pub async fn audit(config: Config, types: Vec<RecordType>, fix: bool, json: bool) -> anyhow::Result<bool> {
    let importer = importer(&config).await?;
    let types: Vec<RecordType> = types.into_iter().filter(|t| importer.crm.syncs(*t)).collect();
    let report = audit::run(&importer, &types, fix, &super::import::Quiet).await.map_err(anyhow::Error::new)?;
    let remaining = if fix { report.counts.left } else { report.counts.differences() };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_audit(&report);
    }
    Ok(remaining > 0)
}

fn print_audit(report: &Report) {
    let mut counts = table(&[
        "record",
        "compared",
        "matching",
        "differing",
        "only in TreadSoft",
        "only here",
        "missing there",
        "deleted here only",
        "duplicate links",
        "pending",
    ]);
    for (t, c) in report.record_types.iter().filter_map(|t| Some((t, report.by_type.get(t)?))) {
        counts.add_row(vec![
            (*t).to_owned(),
            c.compared.to_string(),
            c.matching.to_string(),
            format!("{} ({} fields)", c.differing_records, c.differing_fields),
            c.only_in_crm.to_string(),
            c.only_local.to_string(),
            c.missing_in_crm.to_string(),
            c.deleted_here_live_there.to_string(),
            c.duplicate_links.to_string(),
            c.pending.to_string(),
        ]);
    }
    println!("{counts}");
    if !report.items.is_empty() {
        let mut items = table(&["difference", "record", "local id", "TreadSoft id", "field: local | TreadSoft"]);
        for item in &report.items {
            let row = match item {
                Item::Differs { record_type, id, crm_id, fields } => ["field values", record_type, id, crm_id]
                    .map(str::to_owned)
                    .to_vec()
                    .into_iter()
                    .chain([audit::describe_fields(fields)])
                    .collect(),
                Item::OnlyInCrm { record_type, crm_id, .. } => {
                    vec!["only in TreadSoft".into(), (*record_type).into(), "–".into(), crm_id.clone(), String::new()]
                }
                Item::OnlyLocal { record_type, id } => {
                    vec!["only here".into(), (*record_type).into(), id.clone(), "–".into(), String::new()]
                }
                Item::MissingInCrm { record_type, id, crm_id, confirmed } => vec![
                    if *confirmed {
                        "linked to a record TreadSoft answers 404 for".into()
                    } else {
                        "linked to a record TreadSoft's listing lacks (not asked)".into()
                    },
                    (*record_type).into(),
                    id.clone(),
                    crm_id.clone(),
                    String::new(),
                ],
                Item::DeletedHereLiveThere { record_type, id, crm_id } => vec![
                    "deleted here, live in TreadSoft".into(),
                    (*record_type).into(),
                    id.clone(),
                    crm_id.clone(),
                    String::new(),
                ],
                Item::DuplicateLink { record_type, crm_id, ids } => vec![
                    "linked from several local records".into(),
                    (*record_type).into(),
                    ids.join(", "),
                    crm_id.clone(),
                    String::new(),
                ],
            };
            items.add_row(row);
        }
        println!("\n{items}");
    }
    if report.fix {
        if report.fixes.is_empty() {
            println!("\nNothing to fix.");
        } else {
            let mut fixes = table(&["record", "local id", "TreadSoft id", "done", "what --fix did"]);
            for f in &report.fixes {
                fixes.add_row(vec![
                    f.record_type.to_owned(),
                    f.id.clone().unwrap_or_else(|| "–".into()),
                    f.crm_id.clone().unwrap_or_else(|| "–".into()),
                    if f.done { "yes".into() } else { "no".into() },
                    f.action.clone(),
                ]);
            }
            println!("\n{fixes}");
            println!(
                "{} fixed, {} left for a person. Queued deliveries go out with the running gateway's workers.",
                report.counts.fixed, report.counts.left
            );
        }
    } else if report.counts.differences() == 0 {
        println!("\nNo differences: both sides hold the same records and values.");
    } else {
        println!(
            "\n{} difference(s). `crm-gateway audit --fix` resolves them by last-writer-wins.",
            report.counts.differences()
        );
    }
}
