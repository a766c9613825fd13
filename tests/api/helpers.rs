//! Test harness: a real `redis-server` per test (free loopback port, temp dir, AOF on) and
//! the gateway in-process on port 0, driven over HTTP with awc.
//!
//! Shared with `tests/binary.rs` (which uses only the Redis half), hence `dead_code` allowed.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// 09:30 IST on 2026-11-23: a weekday morning, well inside the local day.
pub const START: &str = "2026-11-23T04:00:00Z";
pub const START_DATE: &str = "2026-11-23";

// ---------------------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------------------

/// A loopback port nobody is listening on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port").local_addr().unwrap().port()
}

fn redis_bin() -> &'static str {
    if std::path::Path::new("/usr/bin/redis-server").exists() {
        "/usr/bin/redis-server"
    } else {
        "redis-server"
    }
}

/// Sends one inline command over a raw TCP connection and returns the first reply line.
fn raw_command(port: u16, cmd: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(format!("{cmd}\r\n").as_bytes())?;
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or("").to_string())
}

pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Start from the shipped `deploy/redis/redis.conf` (the harness's flags still win).
    shipped_conf: bool,
}

impl RedisServer {
    /// Starts a fresh redis-server and waits (with a deadline) until it answers PING.
    pub fn start() -> Self {
        Self::start_from(false)
    }

    /// Like [`Self::start`], but from the shipped `deploy/redis/redis.conf`, for claims
    /// about that file. Port, dir, bind and persistence flags still come from the harness.
    pub fn start_shipped() -> Self {
        Self::start_from(true)
    }

    fn start_from(shipped_conf: bool) -> Self {
        for _attempt in 0..5 {
            let dir = tempfile::tempdir().expect("temp dir for redis");
            let port = free_port();
            let mut server = RedisServer { port, dir, child: None, shipped_conf };
            server.child = Some(server.spawn());
            if server.wait_ready(Duration::from_secs(15)) {
                return server;
            }
            // Most likely lost a race for the port: drop it and try another one.
        }
        panic!("could not start redis-server");
    }

    fn spawn(&self) -> Child {
        let mut cmd = Command::new(redis_bin());
        if self.shipped_conf {
            cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/redis/redis.conf"));
        }
        cmd.args([
            "--port",
            &self.port.to_string(),
            "--dir",
            self.dir.path().to_str().unwrap(),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--bind",
            "127.0.0.1",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn redis-server (is redis-server installed?)")
    }

    /// Polls PING until +PONG (not -LOADING) or the deadline; false if the child died.
    fn wait_ready(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(_status)) = child.try_wait() {
                    return false;
                }
            }
            if let Ok(line) = raw_command(self.port, "PING") {
                if line.starts_with("+PONG") {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops Redis (SHUTDOWN NOSAVE: the AOF is flushed, data survives a restart).
    pub fn stop(&mut self) {
        let _ = raw_command(self.port, "SHUTDOWN NOSAVE");
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    _ if Instant::now() > deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    _ => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        // The port must really be closed before a test relies on "Redis is down".
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(Instant::now() < deadline, "redis port still open after stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts Redis again on the same port and dir (the AOF brings the data back).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart() without stop()");
        self.child = Some(self.spawn());
        assert!(self.wait_ready(Duration::from_secs(20)), "redis did not come back on port {}", self.port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A direct, synchronous connection for inspection.
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url()).expect("redis url").get_connection().expect("connect to test redis")
    }

    pub fn dbsize(&self) -> i64 {
        redis::cmd("DBSIZE").query(&mut self.conn()).expect("DBSIZE")
    }

    pub fn keys(&self, pattern: &str) -> BTreeSet<String> {
        let keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query(&mut self.conn()).expect("KEYS");
        keys.into_iter().collect()
    }

    /// Every key with its full content (strings, hashes, sets, lists, sorted sets), for
    /// "nothing was stored" checks that also catch writes into existing keys.
    pub fn snapshot(&self) -> BTreeMap<String, String> {
        let mut con = self.conn();
        let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut con).expect("KEYS");
        let mut out = BTreeMap::new();
        for k in keys {
            let ty: String = redis::cmd("TYPE").arg(&k).query(&mut con).expect("TYPE");
            let content = match ty.as_str() {
                "string" => {
                    let v: Vec<u8> = redis::cmd("GET").arg(&k).query(&mut con).unwrap_or_default();
                    String::from_utf8_lossy(&v).to_string()
                }
                "hash" => {
                    let v: BTreeMap<String, Vec<u8>> =
                        redis::cmd("HGETALL").arg(&k).query(&mut con).unwrap_or_default();
                    format!(
                        "{:?}",
                        v.into_iter().map(|(f, x)| (f, String::from_utf8_lossy(&x).to_string())).collect::<Vec<_>>()
                    )
                }
                "set" => {
                    let v: BTreeSet<Vec<u8>> = redis::cmd("SMEMBERS").arg(&k).query(&mut con).unwrap_or_default();
                    format!("{:?}", v)
                }
                "list" => {
                    let v: Vec<Vec<u8>> =
                        redis::cmd("LRANGE").arg(&k).arg(0).arg(-1).query(&mut con).unwrap_or_default();
                    format!("{:?}", v)
                }
                "zset" => {
                    let v: Vec<Vec<u8>> = redis::cmd("ZRANGE")
                        .arg(&k)
                        .arg(0)
                        .arg(-1)
                        .arg("WITHSCORES")
                        .query(&mut con)
                        .unwrap_or_default();
                    format!("{:?}", v)
                }
                other => format!("<{other}>"),
            };
            out.insert(k, format!("{ty}:{content}"));
        }
        out
    }

    /// Whether the leaderboard applier has caught up: every facility's cumulative count
    /// (`sg:{F}:lbn`, field `<day>|<kind>`) equals what its day's applied hash
    /// (`lb:{lb}:<day>:ap`, field `<F>|<kind>`) says the boards hold.
    fn boards_caught_up(&self) -> bool {
        let mut c = self.conn();
        let keys: Vec<String> = redis::cmd("KEYS").arg("sg:{*}:lbn").query(&mut c).expect("KEYS lbn");
        keys.iter().all(|key| {
            let f = key.trim_start_matches("sg:{").trim_end_matches("}:lbn");
            let counts: Vec<(String, String)> = redis::cmd("HGETALL").arg(key).query(&mut c).expect("HGETALL lbn");
            counts.iter().all(|(field, n)| {
                let (day, kind) = field.split_once('|').expect("lbn field is <day>|<kind>");
                let applied: Option<String> = redis::cmd("HGET")
                    .arg(format!("lb:{{lb}}:{day}:ap"))
                    .arg(format!("{f}|{kind}"))
                    .query(&mut c)
                    .expect("HGET ap");
                applied.as_deref() == Some(n.as_str())
            })
        })
    }

    /// Takes snapshots until the leaderboard applier has caught up and two snapshots in a
    /// row agree (background writes have settled). The applier passes about once a second,
    /// so two equal snapshots alone could fall between its passes.
    pub async fn settled_snapshot(&self) -> BTreeMap<String, String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut prev = self.snapshot();
        loop {
            actix_rt::time::sleep(Duration::from_millis(100)).await;
            let next = self.snapshot();
            if next == prev && self.boards_caught_up() {
                return next;
            }
            assert!(Instant::now() < deadline, "redis content never settled");
            prev = next;
        }
    }

    /// A numeric field of INFO memory, in bytes.
    pub fn memory_field(&self, field: &str) -> i64 {
        let info: String = redis::cmd("INFO").arg("memory").query(&mut self.conn()).expect("INFO memory");
        let prefix = format!("{field}:");
        info.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("{field} in INFO memory"))
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{field} is a number"))
    }

    /// `used_memory` from INFO memory, in bytes.
    pub fn used_memory(&self) -> i64 {
        self.memory_field("used_memory")
    }

    /// What the stored data takes: `used_memory` without the clients' query and reply
    /// buffers and the AOF buffer. Those hold commands and replies in flight; they come and
    /// go with load (a pipeline not yet read back), not with what is stored.
    pub fn stored_memory(&self) -> i64 {
        self.used_memory()
            - self.memory_field("mem_clients_normal")
            - self.memory_field("mem_clients_slaves")
            - self.memory_field("mem_aof_buffer")
    }

    /// INFO clients `blocked_clients` (clients held by CLIENT PAUSE count here).
    pub fn blocked_clients(&self) -> i64 {
        let info: String = redis::cmd("INFO").arg("clients").query(&mut self.conn()).expect("INFO clients");
        info.lines()
            .find_map(|l| l.strip_prefix("blocked_clients:"))
            .expect("blocked_clients in INFO")
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------
// Waiting with deadlines
// ---------------------------------------------------------------------------------------

/// Polls `check` every 50 ms until it returns true; panics naming `what` at the deadline.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for: {what}");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Request bodies
// ---------------------------------------------------------------------------------------

/// A facility id in the HFR style.
pub fn fid(i: usize) -> String {
    format!("IN04{:08}", 10_000_000 + i)
}

/// Counters OPD1 (opd), OPD2 (opd), Pharmacy (pharmacy).
pub fn standard_facility(id: &str) -> Value {
    json!({
        "name": format!("District Hospital {id}"),
        "state": "Karnataka",
        "district": "Mysuru",
        "counters": [
            {"id": "OPD1", "kind": "opd"},
            {"id": "OPD2", "kind": "opd"},
            {"id": "Pharmacy", "kind": "pharmacy"}
        ]
    })
}

/// Digits to letters, so generated names contain letters only.
pub fn alpha(i: usize) -> String {
    let s: String = i.to_string().bytes().map(|b| (b'a' + (b - b'0')) as char).collect();
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
        None => String::new(),
    }
}

pub fn abha_address(i: usize) -> String {
    format!("patient{i:07}@abdm")
}

/// 14 digits written the usual way: `91-XXXX-XXXX-XXXX`.
pub fn abha_number(i: usize) -> String {
    let d = format!("{:012}", i);
    format!("91-{}-{}-{}", &d[0..4], &d[4..8], &d[8..12])
}

const GENDERS: [&str; 3] = ["M", "F", "O"];

/// A distinct, valid patient for each `i`.
pub fn patient(i: usize) -> Value {
    json!({
        "abha_address": abha_address(i),
        "abha_number": abha_number(i),
        "name": format!("Ravi {}", alpha(i)),
        "gender": GENDERS[i % 3],
        "year_of_birth": 1950 + (i % 60) as i64,
        "phone": format!("9{:09}", i)
    })
}

pub fn scan_body(facility: &str, counter: &str, i: usize) -> Value {
    json!({"facility_id": facility, "counter_id": counter, "patient": patient(i)})
}

pub fn scan_body_prio(facility: &str, counter: &str, i: usize, priority: &str) -> Value {
    json!({"facility_id": facility, "counter_id": counter, "priority": priority, "patient": patient(i)})
}

// ---------------------------------------------------------------------------------------
// Response checks
// ---------------------------------------------------------------------------------------

pub fn ts(v: &Value) -> jiff::Timestamp {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a timestamp string, got {v}"))
        .parse()
        .unwrap_or_else(|e| panic!("unparseable timestamp {v}: {e}"))
}

pub fn num(v: &Value, field: &str) -> u64 {
    v[field].as_u64().unwrap_or_else(|| panic!("`{field}` is not a non-negative integer in {v}"))
}

pub fn s<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field].as_str().unwrap_or_else(|| panic!("`{field}` is not a string in {v}"))
}

/// Checks the fields every token view carries.
pub fn assert_token_view(v: &Value) {
    let id = s(v, "token_id");
    // `<facility_id>.<base64url>`: URL-safe, and routable by its readable facility prefix.
    assert!(
        !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'),
        "token_id must be URL-safe: {id:?}"
    );
    assert_eq!(id.split_once('.').map(|(f, _)| f), v["facility_id"].as_str(), "token_id names its facility: {v}");
    let n = num(v, "token_number");
    assert!(n >= 1, "token numbers start at 1: {v}");
    let display = s(v, "display");
    assert_eq!(display, format!("{}-{:03}", display.rsplit_once('-').unwrap().0, n), "display format: {v}");
    s(v, "facility_id");
    s(v, "counter_id");
    let date = s(v, "service_date");
    assert!(jiff::civil::Date::strptime("%Y-%m-%d", date).is_ok(), "service_date {date:?}");
    let status = s(v, "status");
    assert!(["waiting", "called", "completed", "no_show", "expired"].contains(&status), "unknown status {status:?}");
    num(v, "ahead");
    num(v, "estimated_wait_s");
    let issued = ts(&v["issued_at"]);
    let expires = ts(&v["expires_at"]);
    assert!(expires > issued, "expires_at after issued_at: {v}");
}

/// Checks a scan reply: 201/200, token view shape, `repeat` consistent with the status.
pub fn assert_scan_reply(status: u16, v: &Value) {
    assert!(status == 201 || status == 200, "scan status {status}: {v}");
    assert_token_view(v);
    assert_eq!(v["repeat"].as_bool(), Some(status == 200), "repeat flag vs status {status}: {v}");
}

/// Checks the error envelope: status, `error.code`, a string `error.message`.
pub fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "expected {want_status} {want_code}, got {status}: {body}");
    assert_eq!(body["error"]["code"].as_str(), Some(want_code), "error code in {body}");
    assert!(body["error"]["message"].is_string(), "error.message missing in {body}");
}

// ---------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------

pub struct Resp {
    pub status: u16,
    pub headers: awc::http::header::HeaderMap,
    pub text: String,
    pub body: Value,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| v.to_str().unwrap_or("").to_string())
    }
    pub fn pair(self) -> (u16, Value) {
        (self.status, self.body)
    }
}

/// Panics with both sides' differences when two snapshots differ.
pub fn assert_same_store(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>, what: &str) {
    let mut diff = Vec::new();
    for (k, v) in after {
        match before.get(k) {
            None => diff.push(format!("new key {k} = {v}")),
            Some(old) if old != v => diff.push(format!("changed {k}: {old} -> {v}")),
            _ => {}
        }
    }
    for k in before.keys() {
        if !after.contains_key(k) {
            diff.push(format!("removed key {k}"));
        }
    }
    assert!(diff.is_empty(), "{what}: Redis changed:\n{}", diff.join("\n"));
}

pub fn client() -> awc::Client {
    awc::Client::builder()
        .timeout(Duration::from_secs(60))
        .connector(awc::Connector::new().limit(256).timeout(Duration::from_secs(10)))
        .finish()
}

/// One request. `body` is sent with `content_type` when given. awc's pool occasionally
/// reports its connector gone under load; a request that could not connect never reached
/// the gateway, so it is sent once more on a fresh client.
pub async fn http(
    client: &awc::Client,
    method: &str,
    url: &str,
    bearer: Option<&str>,
    content_type: Option<&str>,
    body: Option<Vec<u8>>,
    extra: &[(&str, &str)],
) -> Result<Resp, awc::error::SendRequestError> {
    match http_once(client, method, url, bearer, content_type, body.clone(), extra).await {
        Err(e) if e.to_string().contains("Failed to connect") => {
            http_once(&self::client(), method, url, bearer, content_type, body, extra).await
        }
        r => r,
    }
}

async fn http_once(
    client: &awc::Client,
    method: &str,
    url: &str,
    bearer: Option<&str>,
    content_type: Option<&str>,
    body: Option<Vec<u8>>,
    extra: &[(&str, &str)],
) -> Result<Resp, awc::error::SendRequestError> {
    let m = awc::http::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = client.request(m, url);
    if let Some(b) = bearer {
        req = req.insert_header(("Authorization", format!("Bearer {b}")));
    }
    if let Some(ct) = content_type {
        req = req.insert_header(("Content-Type", ct));
    }
    for (k, v) in extra {
        req = req.insert_header((*k, *v));
    }
    let mut res = match body {
        Some(b) => req.send_body(b).await?,
        None => req.send().await?,
    };
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let bytes = res.body().limit(64 * 1024 * 1024).await.expect("read response body");
    let text = String::from_utf8_lossy(&bytes).to_string();
    let body = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text.clone()))
    };
    Ok(Resp { status, headers, text, body })
}

type StopFn = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()>>>>;

pub struct TestApp {
    pub base: String,
    pub admin: String,
    pub platform: String,
    pub monitor: String,
    pub clock: scan_gateway::clock::ManualClock,
    pub client: awc::Client,
    /// Facility actors alive in this app now.
    pub active_facilities: Box<dyn Fn() -> usize>,
    stop: Option<StopFn>,
}

impl TestApp {
    pub async fn spawn(redis: &RedisServer, clock: scan_gateway::clock::ManualClock) -> TestApp {
        let settings = scan_gateway::config::Settings::for_tests(&redis.url());
        Self::spawn_with(settings, clock).await
    }

    pub async fn spawn_with(
        settings: scan_gateway::config::Settings,
        clock: scan_gateway::clock::ManualClock,
    ) -> TestApp {
        use std::sync::Arc;
        let admin = settings.admin_token.clone();
        let platform = settings.platform_token.clone();
        let monitor = settings.monitor_token.clone();
        let shared: Arc<dyn scan_gateway::clock::Clock> = Arc::new(clock.clone());
        let app = scan_gateway::startup::Application::build(settings, shared).await.expect("build the application");
        let port = app.port();
        let handle = app.spawn();
        let active_facilities = Box::new(handle.active_facilities_probe());
        let stop: StopFn = Box::new(move || {
            Box::pin(async move {
                let _ = handle.stop().await;
            })
        });
        let app = TestApp {
            base: format!("http://127.0.0.1:{port}"),
            admin,
            platform,
            monitor,
            clock,
            client: client(),
            active_facilities,
            stop: Some(stop),
        };
        let c = app.client.clone();
        let url = format!("{}/livez", app.base);
        eventually(Duration::from_secs(10), "app /livez answers 200", || {
            let (c, url) = (c.clone(), url.clone());
            async move { matches!(http(&c, "GET", &url, None, None, None, &[]).await, Ok(r) if r.status == 200) }
        })
        .await;
        app
    }

    /// A manual clock at [`START`].
    pub fn clock_at(at: &str) -> scan_gateway::clock::ManualClock {
        scan_gateway::clock::ManualClock::new(at.parse().expect("timestamp"))
    }

    /// Graceful stop (drain and flush).
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop().await;
        }
    }

    pub async fn req(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        json_body: Option<&Value>,
        extra: &[(&str, &str)],
    ) -> Resp {
        let (ct, body) = match json_body {
            Some(v) => (Some("application/json"), Some(serde_json::to_vec(v).unwrap())),
            None => (None, None),
        };
        self.raw(method, path, bearer, ct, body, extra).await
    }

    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        content_type: Option<&str>,
        body: Option<Vec<u8>>,
        extra: &[(&str, &str)],
    ) -> Resp {
        let url = format!("{}{}", self.base, path);
        http(&self.client, method, &url, bearer, content_type, body, extra)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: request failed: {e}"))
    }

    // -- registry --------------------------------------------------------------------

    pub async fn put_facility(&self, id: &str, body: &Value) -> (u16, Value) {
        self.req("PUT", &format!("/v1/facilities/{id}"), Some(&self.admin), Some(body), &[]).await.pair()
    }

    pub async fn get_facility(&self, id: &str) -> (u16, Value) {
        self.req("GET", &format!("/v1/facilities/{id}"), Some(&self.admin), None, &[]).await.pair()
    }

    /// Registers [`standard_facility`] and asserts it was created.
    pub async fn register(&self, id: &str) {
        let (st, body) = self.put_facility(id, &standard_facility(id)).await;
        assert_eq!(st, 201, "register facility {id}: {body}");
    }

    pub async fn create_staff_key(&self, fid: &str) -> (String, String) {
        let (st, body) =
            self.req("POST", &format!("/v1/facilities/{fid}/staff-keys"), Some(&self.admin), None, &[]).await.pair();
        assert_eq!(st, 201, "create staff key for {fid}: {body}");
        (s(&body, "key_id").to_string(), s(&body, "key").to_string())
    }

    pub async fn revoke_staff_key(&self, fid: &str, key_id: &str) -> u16 {
        self.req("DELETE", &format!("/v1/facilities/{fid}/staff-keys/{key_id}"), Some(&self.admin), None, &[])
            .await
            .status
    }

    // -- scans and tokens ------------------------------------------------------------

    pub async fn scan(&self, body: &Value) -> (u16, Value) {
        self.req("POST", "/v1/scans", Some(&self.platform), Some(body), &[]).await.pair()
    }

    pub async fn scan_resp(&self, body: &Value) -> Resp {
        self.req("POST", "/v1/scans", Some(&self.platform), Some(body), &[]).await
    }

    pub async fn scan_with_idem(&self, body: &Value, key: &str) -> (u16, Value) {
        self.req("POST", "/v1/scans", Some(&self.platform), Some(body), &[("Idempotency-Key", key)]).await.pair()
    }

    /// Scans and asserts a fresh token (201); returns the reply.
    pub async fn scan_new(&self, body: &Value) -> Value {
        let (st, v) = self.scan(body).await;
        assert_eq!(st, 201, "scan should issue a new token: {v}");
        assert_scan_reply(st, &v);
        v
    }

    pub async fn get_token(&self, id: &str, bearer: &str) -> (u16, Value) {
        self.req("GET", &format!("/v1/tokens/{id}"), Some(bearer), None, &[]).await.pair()
    }

    pub async fn call_next(&self, fid: &str, cid: &str, staff_key: &str) -> (u16, Value) {
        self.req("POST", &format!("/v1/facilities/{fid}/counters/{cid}/call-next"), Some(staff_key), None, &[])
            .await
            .pair()
    }

    pub async fn token_op(&self, token_id: &str, op: &str, staff_key: &str) -> (u16, Value) {
        self.req("POST", &format!("/v1/tokens/{token_id}/{op}"), Some(staff_key), None, &[]).await.pair()
    }

    pub async fn transfer(&self, token_id: &str, counter: &str, staff_key: &str) -> (u16, Value) {
        let body = json!({ "counter_id": counter });
        self.req("POST", &format!("/v1/tokens/{token_id}/transfer"), Some(staff_key), Some(&body), &[]).await.pair()
    }

    pub async fn queue(&self, fid: &str, counter: Option<&str>, staff_key: &str) -> (u16, Value) {
        let path = match counter {
            Some(c) => format!("/v1/facilities/{fid}/queue?counter_id={c}"),
            None => format!("/v1/facilities/{fid}/queue"),
        };
        self.req("GET", &path, Some(staff_key), None, &[]).await.pair()
    }
}

/// Reads server-sent events until `want` accepts one (or the deadline passes).
pub async fn wait_for_event(
    res: &mut awc::ClientResponse<
        impl futures_util::Stream<Item = Result<actix_web::web::Bytes, awc::error::PayloadError>> + Unpin,
    >,
    what: &str,
    want: impl Fn(&Value) -> bool,
) -> Value {
    use futures_util::StreamExt;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut buf = String::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        assert!(!left.is_zero(), "timed out waiting for an event: {what}");
        let chunk = match actix_rt::time::timeout(left, res.next()).await {
            Ok(Some(Ok(c))) => c,
            Ok(other) => panic!("event stream ended while waiting for {what}: {other:?}"),
            Err(_) => panic!("timed out waiting for an event: {what}"),
        };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            if let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data: ")) {
                let v: Value = serde_json::from_str(data).expect("event data is JSON");
                if want(&v) {
                    return v;
                }
            }
        }
    }
}
