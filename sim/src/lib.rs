//! `treadsoft-sim`: TreadSoft's partner API (`../shared/treadsoft/API.md`) in memory, so the
//! gateway can be run, tested and shown end to end on one machine.
//!
//! Built so far: the REST API of §3 (signed requests, every record type and endpoint, validation,
//! unique emails with `409 duplicate` and `existingId`, unique external ids, `If-Match`,
//! idempotency keys, the rate limit with `Retry-After`, list paging by `updatedSince` and cursor,
//! batch upserts); every change sent as a signed webhook (§4, [`webhooks`]); an admin API to change
//! records as a CRM user would, and fault switches: dropped webhooks, an error rate, added
//! latency, an outage window ([`server`]).

pub mod server;
pub mod store;
pub mod webhooks;

use actix_web::{App, HttpServer, web};
use server::{Account, Sim};
use std::net::TcpListener;
use std::sync::Arc;

/// Serves `sim` on `listener` until the returned server is stopped.
pub fn serve(sim: Arc<Sim>, listener: TcpListener) -> std::io::Result<actix_web::dev::Server> {
    let data = web::Data::from(sim);
    Ok(HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(web::PayloadConfig::new(4 * 1024 * 1024))
            .default_service(web::to(server::handle))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run())
}

/// Adds `n` contacts (`Seed0 Contact`, `seed0@example.com`, ...) as records that were in the CRM
/// before the gateway: no webhook is sent for them.
pub fn seed_contacts(sim: &Sim, n: usize) {
    let source = store::Source { change_source: "ui", request_id: None };
    let mut store = sim.store();
    let start = store.counts().get("contacts").copied().unwrap_or(0);
    for i in start..start + n {
        let fields = serde_json::json!({"firstName": format!("Seed{i}"), "lastName": "Contact",
            "email": format!("seed{i}@example.com"), "phone": null, "companyName": null,
            "role": "owner", "membershipStatus": "active"});
        if let serde_json::Value::Object(fields) = fields {
            // Unique emails by construction: a refusal cannot happen.
            let _ = store.create(store::Collection::Contacts, &fields, &source);
        }
    }
    store.take_changes();
}

/// A simulator for `account` on a free port of 127.0.0.1: its state, its base URL, and the server
/// (to spawn or await).
pub fn start_local(account: Account) -> std::io::Result<(Arc<Sim>, String, actix_web::dev::Server)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}", listener.local_addr()?);
    let sim = Arc::new(Sim::new(account));
    let server = serve(sim.clone(), listener)?;
    Ok((sim, url, server))
}

#[cfg(test)]
mod pull_tests;
#[cfg(test)]
mod tests;
