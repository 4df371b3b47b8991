//! `crm-gateway hubspot setup`: creates, in the HubSpot account, the properties the mapping needs
//! and the account lacks (each record type's unique id property and its custom properties, in a
//! `crm_gateway` property group), so that an operator does not click through HubSpot's settings.
//! Properties that exist are left as they are; an id property that exists without unique values
//! is reported, as upserts cannot work without them.

use super::client::HubSpotClient;
use crate::crm::CrmError;
use crate::sync::mapping::{Kind, RecordType};
use serde::Serialize;
use serde_json::json;

/// The property group the gateway's properties go in.
pub const GROUP: &str = "crm_gateway";

/// What setup found or did for one property.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    pub record_type: &'static str,
    pub object: String,
    pub property: String,
    /// HubSpot's property type: `string` or `number`.
    pub kind: &'static str,
    pub unique: bool,
    /// `exists`, `created`, `would create`, or a problem: `exists, not unique`, `no such object
    /// in the account`.
    pub result: &'static str,
}

impl Step {
    pub fn is_problem(&self) -> bool {
        self.result == NOT_UNIQUE || self.result == NO_OBJECT
    }
}

const NOT_UNIQUE: &str = "exists, not unique";
const NO_OBJECT: &str = "no such object in the account";

/// HubSpot's type for a gateway field: numbers for counts and amounts, text for the rest (dates,
/// choices and references included, so that every value crosses unchanged).
fn kind_of(t: RecordType, field: &str) -> &'static str {
    match t.fields().iter().find(|f| f.crm.contains(&field)).map(|f| f.kind) {
        Some(Kind::Int | Kind::Money) => "number",
        _ => "string",
    }
}

/// Checks, and unless `dry_run` creates, every property the mapping needs.
pub async fn run(client: &HubSpotClient, dry_run: bool) -> Result<Vec<Step>, CrmError> {
    let mapping = client.mapping().clone();
    let mut steps = Vec::new();
    for t in mapping.enabled() {
        let object = mapping.object(t).object.clone();
        let existing = match client.property_list(&object).await {
            Ok(existing) => existing,
            // Not in this account (listings not switched on, no such custom object).
            Err(CrmError::NotFound { .. }) => {
                let (property, kind, unique, result) = (String::new(), "", false, NO_OBJECT);
                steps.push(Step { record_type: t.as_str(), object, property, kind, unique, result });
                continue;
            }
            Err(e) => return Err(e),
        };
        let find = |name: &str| existing.iter().find(|p| p["name"].as_str() == Some(name));
        let mut wanted = vec![(mapping.id_property.clone(), "string", true)];
        for (field, property) in &mapping.object(t).properties {
            wanted.push((property.clone(), kind_of(t, field), false));
        }
        let mut group_ready = false;
        for (property, kind, unique) in wanted {
            let result = match find(&property) {
                Some(found) if unique && found["hasUniqueValue"].as_bool() != Some(true) => NOT_UNIQUE,
                Some(_) => "exists",
                None if dry_run => "would create",
                None => {
                    if !group_ready {
                        client.create_property_group(&object, GROUP, "crm-gateway").await?;
                        group_ready = true;
                    }
                    let label = if unique { "crm-gateway id".to_owned() } else { format!("crm-gateway {property}") };
                    let field_type = if kind == "number" { "number" } else { "text" };
                    let body = json!({
                        "name": property, "label": label, "type": kind, "fieldType": field_type,
                        "groupName": GROUP, "hasUniqueValue": unique,
                        "description": "Written by crm-gateway, which keeps the rental site and HubSpot in sync.",
                    });
                    client.create_property(&object, &body).await?;
                    "created"
                }
            };
            steps.push(Step { record_type: t.as_str(), object: object.clone(), property, kind, unique, result });
        }
    }
    Ok(steps)
}

/// `crm-gateway hubspot setup [--dry-run] [--json]`: prints each property and what was done;
/// fails while an id property is not unique.
pub async fn command(config: &crate::config::Config, dry_run: bool, as_json: bool) -> anyhow::Result<()> {
    let crate::config::CrmProvider::HubSpot(hubspot) = &config.crm else {
        anyhow::bail!(
            "this command sets up a HubSpot account: set CRM_PROVIDER=hubspot, CRM_ENABLED=true and CRM_API_KEY \
             (the private app's access token)"
        );
    };
    let client = HubSpotClient::new(hubspot.clone(), config.crm_request_timeout, config.crm_rate_limit)?;
    let steps = run(&client, dry_run).await.map_err(|e| anyhow::anyhow!("HubSpot refused: {e}"))?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&json!({ "dryRun": dry_run, "properties": steps }))?);
    } else {
        let mut out = crate::ops::report::table(&["record", "object", "property", "type", "unique", "result"]);
        for s in &steps {
            let unique = if s.unique { "yes" } else { "" };
            out.add_row(vec![s.record_type, &s.object, &s.property, s.kind, unique, s.result]);
        }
        println!("{out}");
        let created = steps.iter().filter(|s| s.result == "created").count();
        let would = steps.iter().filter(|s| s.result == "would create").count();
        match (dry_run, created, would) {
            (true, _, 0) | (false, 0, _) => println!("Nothing to create: every property exists."),
            (true, _, n) => println!("{n} properties would be created (a dry run: nothing was changed)."),
            (false, n, _) => println!("Created {n} properties in the {GROUP} group."),
        }
    }
    let mut problems = Vec::new();
    for step in steps.iter().filter(|s| s.is_problem()) {
        problems.push(if step.result == NO_OBJECT {
            format!(
                "{} records go to object {}, which this account does not have: switch it on in HubSpot, name \
                 another object in CRM_MAPPING_FILE, or set enabled = false for {}",
                step.record_type, step.object, step.record_type
            )
        } else {
            format!(
                "{} on {} exists without unique values, and upserts need them: delete it in HubSpot (or name \
                 another id_property in CRM_MAPPING_FILE)",
                step.property, step.object
            )
        });
    }
    anyhow::ensure!(problems.is_empty(), "{}; then run setup again", problems.join("; "));
    Ok(())
}
