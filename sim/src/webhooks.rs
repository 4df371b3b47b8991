//! Sending every change as a signed webhook (API.md §4): deliveries of up to 100 events in the
//! order the changes were made, `X-TreadSoft-Signature` over `<timestamp>.<body>`, a failed
//! delivery retried after 1 min, 5 min, 30 min, 2 h, 5 h, 10 h and 10 h divided by a speed
//! factor (8 attempts), then given up on, as TreadSoft does.

use crate::server::Sim;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// TreadSoft's waits between attempts (§4.1).
pub const RETRY_SCHEDULE_SECS: [u64; 7] = [60, 300, 1800, 7200, 18000, 36000, 36000];
/// Most events in one delivery.
pub const MAX_EVENTS: usize = 100;

/// Where and how webhooks go.
#[derive(Debug, Clone)]
pub struct Webhooks {
    pub url: String,
    pub secret: String,
    /// The retry schedule is divided by this (1: real time; 3600: an hour a second).
    pub speed: f64,
}

/// One delivery and its attempts so far.
#[derive(Debug, Clone)]
struct Delivery {
    id: String,
    events: Vec<Value>,
    attempts: usize,
    due: Instant,
}

/// What the sender did, for the admin API and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sent {
    pub delivered: usize,
    pub failed_attempts: usize,
    /// Deliveries given up on after the last attempt.
    pub given_up: usize,
    pub waiting: usize,
}

/// Sends the store's changes to `hooks.url` until the process ends.
pub async fn run(sim: Arc<Sim>, hooks: Webhooks) {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap_or_default();
    let mut queue: VecDeque<Delivery> = VecDeque::new();
    loop {
        let changes = sim.store().take_changes();
        for chunk in changes.chunks(MAX_EVENTS) {
            queue.push_back(Delivery {
                id: uuid::Uuid::new_v4().to_string(),
                events: chunk.iter().map(|c| c.event.clone()).collect(),
                attempts: 0,
                due: Instant::now(),
            });
        }
        // The oldest due delivery first; the others wait their turn (order is kept where it can be).
        if let Some(position) = queue.iter().position(|d| d.due <= Instant::now()) {
            let mut delivery = queue.remove(position).unwrap_or_else(|| unreachable!("the position exists"));
            let dropped = sim.faults().drop_webhooks;
            let ok = !dropped && send(&http, &sim, &hooks, &delivery).await;
            let mut sent = sim.sent();
            if ok || dropped {
                // A dropped delivery is lost for good, as when TreadSoft gives up.
                if ok { sent.delivered += 1 } else { sent.given_up += 1 }
            } else {
                sent.failed_attempts += 1;
                delivery.attempts += 1;
                match RETRY_SCHEDULE_SECS.get(delivery.attempts - 1) {
                    Some(wait) => {
                        delivery.due = Instant::now() + Duration::from_secs_f64(*wait as f64 / hooks.speed.max(1e-6));
                        queue.push_front(delivery);
                    }
                    None => sent.given_up += 1,
                }
            }
            sent.waiting = queue.len();
            continue;
        }
        sim.sent().waiting = queue.len();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn send(http: &reqwest::Client, sim: &Sim, hooks: &Webhooks, delivery: &Delivery) -> bool {
    let body = json!({ "deliveryId": delivery.id, "accountId": sim.account.account_id, "events": delivery.events });
    let body = serde_json::to_vec(&body).unwrap_or_default();
    let timestamp = chrono::Utc::now().timestamp();
    let signature = crm_gateway::inbound::verify::treadsoft_signature(&hooks.secret, timestamp, &body);
    let answer = http
        .post(&hooks.url)
        .header("Content-Type", "application/json")
        .header("User-Agent", "TreadSoft-Webhooks/1.0")
        .header("X-TreadSoft-Delivery", &delivery.id)
        .header("X-TreadSoft-Timestamp", timestamp.to_string())
        .header("X-TreadSoft-Signature", signature)
        .body(body)
        .send()
        .await;
    match answer {
        Ok(response) if response.status().is_success() => true,
        Ok(response) => {
            tracing::warn!(status = %response.status(), delivery = %delivery.id, "webhook refused");
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, delivery = %delivery.id, "webhook not delivered");
            false
        }
    }
}
