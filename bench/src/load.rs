//! The load: closed-loop clients (tokio + reqwest, in the benchmark's process), each sending its
//! next request as soon as the previous one is answered, and what one run measured.

use crate::payload::{self, ContactStream};
use crate::procfs::{self, MachineCpu};
use crate::server::Server;
use crate::standin::StandIn;
use crm_gateway::sync::inbox::{EventResult, Outcome};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// The gateway's `GATEWAY_API_TOKEN` in the benchmark; app events carry it.
pub const API_TOKEN: &str = "bench-api-token";

/// Most distinct problems kept per run (each with its count).
const MAX_PROBLEMS: usize = 20;

/// What one run of one scenario measured.
#[derive(Debug, Default, Clone)]
pub struct Sample {
    /// Events counted: applied (gateway inbound), answered 200 (anchors) or delivered end to end.
    pub events: u64,
    /// Requests answered with success inside the window.
    pub requests: u64,
    pub window: Duration,
    /// Sorted.
    pub latencies: Vec<Duration>,
    pub server_cpu: Duration,
    /// PostgreSQL's processes, when the run used PostgreSQL.
    pub db_cpu: Option<Duration>,
    /// The benchmark's own process: the clients (and the stand-in in the outbound scenario).
    pub bench_cpu: Duration,
    /// Busy share of all the machine's cores during the window, and the part of it from none of
    /// the server, the benchmark and PostgreSQL (builds and anything else running).
    pub machine_busy: f64,
    pub other_busy: f64,
    pub peak_rss_kib: u64,
    /// Bytes the server, and PostgreSQL's processes when the run used PostgreSQL, wrote to
    /// storage during the window ([`procfs::written_bytes`]); `None` when one could not be read.
    pub written: Option<u64>,
    /// Outbound only: `POST /api/events` answered 202 per second while sending.
    pub accepted_per_s: Option<f64>,
    /// Problem → how many times (non-2xx answers, transport errors, unexpected outcomes, lost or
    /// repeated events). Any makes the run fail.
    pub problems: BTreeMap<String, u64>,
}

impl Sample {
    pub fn rate(&self) -> f64 {
        self.events as f64 / self.window.as_secs_f64().max(1e-9)
    }

    /// Nearest-rank percentile of the latencies (`p` in 0..=100).
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        let n = self.latencies.len();
        if n == 0 {
            return None;
        }
        let rank = ((p / 100.0) * n as f64).ceil() as usize;
        Some(self.latencies[rank.clamp(1, n) - 1])
    }

    pub fn cpu_per_event(&self) -> Option<Duration> {
        (self.events > 0).then(|| self.server_cpu / u32::try_from(self.events).unwrap_or(u32::MAX))
    }

    /// Bytes written to storage per counted event.
    pub fn written_per_event(&self) -> Option<f64> {
        self.written.filter(|_| self.events > 0).map(|w| w as f64 / self.events as f64)
    }

    fn problem(&mut self, what: String, count: u64) {
        if self.problems.len() < MAX_PROBLEMS || self.problems.contains_key(&what) {
            *self.problems.entry(what).or_default() += count;
        } else {
            *self.problems.entry("(more kinds of problems)".into()).or_default() += count;
        }
    }
}

/// CPU and storage counters at one moment.
struct Snapshot {
    at: Instant,
    server: u64,
    db: Option<u64>,
    bench: u64,
    machine: MachineCpu,
    /// Bytes written to storage by the server and PostgreSQL (`None`: not readable).
    written: Option<u64>,
}

impl Snapshot {
    fn take(server: &Server, postgres: bool) -> Self {
        Self {
            at: Instant::now(),
            server: server.cpu_ticks(),
            db: postgres.then(procfs::postgres_ticks),
            bench: procfs::cpu_ticks(std::process::id()).unwrap_or(0),
            machine: MachineCpu::read(),
            written: match (server.written_bytes(), postgres) {
                (Some(server), true) => procfs::postgres_written().map(|db| server + db),
                (server, _) => server,
            },
        }
    }

    /// Fills `sample`'s window and CPU figures from `self` to `end`.
    fn until(&self, end: &Snapshot, sample: &mut Sample) {
        sample.window = end.at - self.at;
        let server = end.server.saturating_sub(self.server);
        let bench = end.bench.saturating_sub(self.bench);
        let db = match (self.db, end.db) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        sample.server_cpu = procfs::ticks_to_duration(server);
        sample.bench_cpu = procfs::ticks_to_duration(bench);
        sample.db_cpu = db.map(procfs::ticks_to_duration);
        sample.written = self.written.zip(end.written).map(|(start, end)| end.saturating_sub(start));
        let total = end.machine.total.saturating_sub(self.machine.total).max(1) as f64;
        let busy = end.machine.busy.saturating_sub(self.machine.busy);
        sample.machine_busy = busy as f64 / total;
        sample.other_busy = busy.saturating_sub(server + bench + db.unwrap_or(0)) as f64 / total;
    }
}

/// An HTTP client for `connections` concurrent requests to a local server.
pub fn client(connections: usize) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(connections.max(1) * 2)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(60))
        .build()?)
}

/// Webhook deliveries at `connections`, each carrying `per_delivery` events of the worker's
/// contact stream, freshly signed.
pub struct Deliveries {
    pub url: String,
    pub connections: usize,
    pub per_delivery: usize,
    /// The gateway answers one result per event (checked: each must be `applied`); an anchor
    /// answers `{}` (each 200 counts its events).
    pub gateway: bool,
    pub updates: u32,
    /// Unique to the run: goes into every contact and event id.
    pub tag: String,
    pub warmup: Duration,
    pub seconds: Duration,
}

#[derive(Default)]
struct WorkerStats {
    latencies: Vec<Duration>,
    events: u64,
    requests: u64,
    problems: BTreeMap<String, u64>,
}

impl WorkerStats {
    fn problem(&mut self, what: String) {
        if self.problems.len() < MAX_PROBLEMS || self.problems.contains_key(&what) {
            *self.problems.entry(what).or_default() += 1;
        }
    }
}

impl Deliveries {
    pub async fn run(&self, client: &reqwest::Client, server: &Server, postgres: bool) -> Sample {
        let measure_from = Instant::now() + self.warmup;
        let stop_at = measure_from + self.seconds;
        let workers: Vec<_> = (0..self.connections)
            .map(|w| {
                let client = client.clone();
                let url = self.url.clone();
                let stream = ContactStream::new(format!("{}w{w:02}", self.tag), self.updates);
                let (per, gateway) = (self.per_delivery, self.gateway);
                tokio::spawn(delivery_worker(client, url, stream, per, gateway, measure_from, stop_at))
            })
            .collect();
        tokio::time::sleep_until(measure_from.into()).await;
        let start = Snapshot::take(server, postgres);
        let mut sample = Sample::default();
        for worker in workers {
            match worker.await {
                Ok(stats) => {
                    sample.events += stats.events;
                    sample.requests += stats.requests;
                    sample.latencies.extend(stats.latencies);
                    for (what, n) in stats.problems {
                        sample.problem(what, n);
                    }
                }
                Err(e) => sample.problem(format!("a load worker failed: {e}"), 1),
            }
        }
        let end = Snapshot::take(server, postgres);
        start.until(&end, &mut sample);
        sample.peak_rss_kib = server.peak_rss_kib();
        sample.latencies.sort_unstable();
        sample
    }
}

#[derive(Deserialize)]
struct GatewayAnswer {
    results: Vec<EventResult>,
}

async fn delivery_worker(
    client: reqwest::Client,
    url: String,
    mut stream: ContactStream,
    per_delivery: usize,
    gateway: bool,
    measure_from: Instant,
    stop_at: Instant,
) -> WorkerStats {
    let mut stats = WorkerStats::default();
    loop {
        let started = Instant::now();
        if started >= stop_at {
            break;
        }
        let body = payload::delivery((0..per_delivery).map(|_| stream.next_event()).collect());
        let (timestamp, signature) = payload::sign(&body);
        let sent = client
            .post(&url)
            .header("Content-Type", "application/json")
            .header("User-Agent", "TreadSoft-Webhooks/1.0")
            .header("X-TreadSoft-Delivery", uuid::Uuid::new_v4().to_string())
            .header("X-TreadSoft-Timestamp", timestamp)
            .header("X-TreadSoft-Signature", signature)
            .body(body)
            .send()
            .await;
        let answer = match sent {
            Ok(response) => {
                let status = response.status();
                response.bytes().await.map(|b| (status, b))
            }
            Err(e) => Err(e),
        };
        let elapsed = started.elapsed();
        let measured = started >= measure_from;
        let (status, bytes) = match answer {
            Ok(answer) => answer,
            Err(e) => {
                stats.problem(format!("transport error: {}", without_url(&e)));
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes).chars().take(200).collect::<String>();
            stats.problem(format!("HTTP {status}: {text}"));
            continue;
        }
        let applied = if gateway {
            match serde_json::from_slice::<GatewayAnswer>(&bytes) {
                Ok(answer) => {
                    if answer.results.len() != per_delivery {
                        stats.problem(format!("{} results for {per_delivery} events", answer.results.len()));
                    }
                    let mut applied = 0;
                    for result in answer.results {
                        if result.outcome == Outcome::Applied {
                            applied += 1;
                        } else {
                            stats.problem(format!(
                                "outcome {}{}",
                                result.outcome.as_str(),
                                result.reason.map(|r| format!(": {r}")).unwrap_or_default()
                            ));
                        }
                    }
                    applied
                }
                Err(e) => {
                    stats.problem(format!("an answer that is not a delivery result: {e}"));
                    0
                }
            }
        } else {
            per_delivery as u64
        };
        if measured {
            stats.requests += 1;
            stats.events += applied;
            stats.latencies.push(elapsed);
        }
    }
    stats
}

/// reqwest's error without the URL (the same for every request).
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(url.as_str(), "<url>");
    }
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        text.push_str(&format!(": {inner}"));
        source = inner.source();
    }
    text
}

/// `owner.registered` app events, one per `POST /api/events`, at `connections`, for `seconds`;
/// then waits (up to `drain`) for every accepted event to reach the stand-in.
pub struct AppEvents {
    pub url: String,
    pub connections: usize,
    pub tag: String,
    pub seconds: Duration,
    pub drain: Duration,
}

impl AppEvents {
    pub async fn run(&self, client: &reqwest::Client, server: &Server, postgres: bool, standin: &StandIn) -> Sample {
        standin.reset();
        let start = Snapshot::take(server, postgres);
        let stop_at = start.at + self.seconds;
        let workers: Vec<_> = (0..self.connections)
            .map(|w| {
                let (client, url) = (client.clone(), self.url.clone());
                tokio::spawn(app_event_worker(client, url, format!("bu_{}w{w:02}", self.tag), stop_at))
            })
            .collect();
        let mut sample = Sample::default();
        let mut sent: HashMap<String, Instant> = HashMap::new();
        for worker in workers {
            match worker.await {
                Ok((stats, accepted)) => {
                    sample.requests += stats.requests;
                    for (what, n) in stats.problems {
                        sample.problem(what, n);
                    }
                    sent.extend(accepted);
                }
                Err(e) => sample.problem(format!("a load worker failed: {e}"), 1),
            }
        }
        let sending = start.at.elapsed();
        sample.accepted_per_s = Some(sample.requests as f64 / sending.as_secs_f64().max(1e-9));
        // Wait for the outbox to drain into the stand-in.
        let drain_until = Instant::now() + self.drain;
        while standin.arrived() < sent.len() && Instant::now() < drain_until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let end = Snapshot::take(server, postgres);
        sample.peak_rss_kib = server.peak_rss_kib();
        // A short grace period, outside the window, to see any event arrive a second time.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let seen = standin.take();
        start.until(&end, &mut sample);
        let mut last_arrival = None;
        let mut missing = 0;
        for (user_id, sent_at) in &sent {
            match seen.arrivals.get(user_id) {
                Some(&(arrived, count)) => {
                    sample.events += 1;
                    sample.latencies.push(arrived.saturating_duration_since(*sent_at));
                    last_arrival = last_arrival.max(Some(arrived));
                    if count > 1 {
                        sample.problem("an event reached the stand-in more than once".into(), 1);
                    }
                }
                None => missing += 1,
            }
        }
        if missing > 0 {
            sample.problem(
                format!(
                    "accepted events that never reached the stand-in within {} s of the last send",
                    self.drain.as_secs()
                ),
                missing,
            );
        }
        let unexpected = seen.arrivals.keys().filter(|id| !sent.contains_key(*id)).count();
        if unexpected > 0 {
            sample.problem("records reached the stand-in that no accepted event sent".into(), unexpected as u64);
        }
        // End to end: from the first send to the last arrival.
        if let Some(last) = last_arrival {
            sample.window = last.saturating_duration_since(start.at);
        }
        sample.latencies.sort_unstable();
        sample
    }
}

async fn app_event_worker(
    client: reqwest::Client,
    url: String,
    prefix: String,
    stop_at: Instant,
) -> (WorkerStats, Vec<(String, Instant)>) {
    let mut stats = WorkerStats::default();
    let mut accepted = Vec::new();
    for n in 0u64.. {
        let started = Instant::now();
        if started >= stop_at {
            break;
        }
        let user_id = format!("{prefix}n{n:06}");
        let sent = client
            .post(&url)
            .header("Content-Type", "application/json")
            .bearer_auth(API_TOKEN)
            .body(payload::owner_registered(&user_id))
            .send()
            .await;
        match sent {
            Ok(response) if response.status() == reqwest::StatusCode::ACCEPTED => {
                let _ = response.bytes().await;
                stats.requests += 1;
                accepted.push((user_id, started));
            }
            Ok(response) => {
                let status = response.status();
                let text = response.text().await.unwrap_or_default().chars().take(200).collect::<String>();
                stats.problem(format!("HTTP {status}: {text}"));
            }
            Err(e) => {
                stats.problem(format!("transport error: {}", without_url(&e)));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    (stats, accepted)
}
