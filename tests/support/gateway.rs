//! The real `scan-gateway` binary as a test fixture: started with a real Redis, port read
//! from its one stdout line, output captured, killed on drop.
#![allow(dead_code)] // each test binary uses its own subset
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::*;

pub const ADMIN: &str = "bin-admin-token-0123456789";
pub const PLATFORM: &str = "bin-platform-token-0123456789";
pub const SECRET: &str = "bin-patient-secret-0123456789";
pub const BIN: &str = env!("CARGO_BIN_EXE_scan-gateway");

pub fn base_env(redis_url: &str) -> Vec<(String, String)> {
    [
        ("PATH", std::env::var("PATH").unwrap_or_default().as_str()),
        ("SCANGW_LISTEN", "127.0.0.1:0"),
        ("SCANGW_REDIS_URL", redis_url),
        ("SCANGW_ADMIN_TOKEN", ADMIN),
        ("SCANGW_PLATFORM_TOKEN", PLATFORM),
        ("SCANGW_PATIENT_KEY_SECRET", SECRET),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The real binary, serving on a port it chose itself.
pub struct Gateway {
    pub child: Child,
    pub base: String,
    pub output: Arc<Mutex<String>>,
    pub client: awc::Client,
}

impl Gateway {
    pub fn start(redis: &RedisServer, extra: &[(&str, &str)]) -> Gateway {
        Self::start_url(&redis.url(), extra)
    }

    /// Starts against any `SCANGW_REDIS_URL` (a Redis Cluster's node list, say).
    pub fn start_url(redis_url: &str, extra: &[(&str, &str)]) -> Gateway {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve").env_clear().envs(base_env(redis_url));
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let mut child =
            cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn gateway");
        let output = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel::<String>();
        let stdout = child.stdout.take().unwrap();
        let out = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                out.lock().unwrap().push_str(&format!("[stdout] {line}\n"));
                let _ = tx.send(line);
            }
        });
        let stderr = child.stderr.take().unwrap();
        let err = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                err.lock().unwrap().push_str(&format!("[stderr] {line}\n"));
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let base = loop {
            if let Ok(Some(st)) = child.try_wait() {
                panic!("gateway exited during startup with {st}:\n{}", output.lock().unwrap());
            }
            assert!(Instant::now() < deadline, "no listening line within 30 s:\n{}", output.lock().unwrap());
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("scan-gateway listening on ") {
                        let port: u16 = rest
                            .strip_prefix("http://127.0.0.1:")
                            .unwrap_or_else(|| panic!("unexpected listening line {line:?}"))
                            .trim()
                            .parse()
                            .unwrap_or_else(|_| panic!("no port in {line:?}"));
                        assert_ne!(port, 0);
                        break format!("http://127.0.0.1:{port}");
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        Gateway { child, base, output, client: client() }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped yet.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", self.pid());
    }

    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    pub async fn call(&self, method: &str, path: &str, bearer: &str, body: Option<&Value>) -> Resp {
        let (ct, bytes) = match body {
            Some(v) => (Some("application/json"), Some(serde_json::to_vec(v).unwrap())),
            None => (None, None),
        };
        http(&self.client, method, &format!("{}{}", self.base, path), Some(bearer), ct, bytes, &[])
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub async fn register(&self, f: &str) {
        let r = self.call("PUT", &format!("/v1/facilities/{f}"), ADMIN, Some(&standard_facility(f))).await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
