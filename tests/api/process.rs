//! The real `crm-gateway` binary as a separate process, for what only a process shows: a
//! SIGKILL at any point, and everything it writes to its log.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_crm-gateway");

/// A running gateway process and every line it logged.
pub struct Gateway {
    child: Child,
    pub address: String,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Gateway {
    /// Starts the binary with exactly `env` (plus `BIND_ADDR=127.0.0.1:0`) and waits until it listens.
    pub async fn start(env: &[(&str, String)], dir: &std::path::Path) -> Self {
        let mut child = Command::new(BIN)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("BIND_ADDR", "127.0.0.1:0")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the gateway binary");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (found, address) = tokio::sync::oneshot::channel();
        let mut found = Some(found);
        for stream in [
            Box::new(child.stderr.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stdout.take().unwrap()),
        ] {
            let log = log.clone();
            let mut found = found.take();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if let Some(address) = line.split("addr=").nth(1)
                        && let Some(found) = found.take()
                    {
                        let _ = found.send(address.trim().to_owned());
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        let address = match tokio::time::timeout(Duration::from_secs(30), address).await {
            Ok(Ok(address)) => address,
            _ => {
                let _ = child.kill();
                panic!("the gateway did not start listening:\n{}", log.lock().unwrap().join("\n"));
            }
        };
        Self { child, address: format!("http://{address}"), log }
    }

    /// SIGKILL: no shutdown of any kind.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit; returns its code.
    pub async fn terminate(mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        tokio::task::spawn_blocking(move || self.child.wait()).await.unwrap().unwrap().code()
    }

    /// SIGTERM and wait, keeping the log readable afterwards.
    pub async fn terminate_keep_log(&mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // Let the reader threads take the last lines.
        tokio::time::sleep(Duration::from_millis(100)).await;
        status.code()
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The environment of a gateway that talks to `stub` and verifies webhooks with the test secret.
pub fn env_for(database_url: &str, stub: &crate::treadsoft_stub::Stub) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE_URL", database_url.to_owned()),
        ("CRM_ENABLED", "true".into()),
        ("CRM_API_URL", stub.server.uri()),
        ("CRM_API_KEY", crate::treadsoft_stub::API_KEY.into()),
        ("CRM_API_SECRET", crate::treadsoft_stub::API_SECRET.into()),
        ("CRM_WEBHOOK_SECRET", crate::helpers::WEBHOOK_SECRET.into()),
        ("CRM_RATE_LIMIT", "100000/1s".into()),
        ("HTTP_WORKERS", "2".into()),
    ]
}

/// A TreadSoft delivery of `events`, signed now: (headers, body).
pub fn signed(events: &[serde_json::Value], delivery_id: &str) -> (Vec<(&'static str, String)>, String) {
    let body =
        serde_json::json!({"deliveryId": delivery_id, "accountId": "acc_ge_houses", "events": events}).to_string();
    let timestamp = chrono::Utc::now().timestamp();
    let signature =
        crm_gateway::inbound::verify::treadsoft_signature(crate::helpers::WEBHOOK_SECRET, timestamp, body.as_bytes());
    (vec![("X-TreadSoft-Timestamp", timestamp.to_string()), ("X-TreadSoft-Signature", signature)], body)
}
