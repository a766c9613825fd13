//! The open-model engine: scans leave at their scheduled arrival times whatever the server
//! does (Poisson or evenly spaced), follow-up operations (repeat scans, status polls,
//! call-next) are scheduled from each issued token, and every latency is measured from the
//! scheduled send time, so a stalled server shows up in the tail instead of hiding it.
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use scan_gateway::facility::token_id::TokenRef;
use serde_json::Value;
use tokio::sync::{OnceCell, Semaphore};

use crate::recorder::{OpKind, Outcome, Recorder};
use crate::registry::Registry;

/// Where the load goes.
#[derive(Debug, Clone)]
pub struct Target {
    /// `http://host:port`
    pub base: String,
    pub platform_token: String,
    pub admin_token: String,
}

/// The follow-up mix of a run.
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    /// Share of new patients who scan again while their token waits.
    pub repeat: f64,
    /// Share of issued tokens whose patient polls the token status.
    pub poll: f64,
    /// Share of issued tokens a counter calls (call-next at the token's counter).
    pub served: f64,
    /// Mean real seconds between a token being issued and its counter calling next.
    pub wait_mean_s: f64,
    /// Mean real seconds a called patient spends at the counter before staff complete the
    /// token (0: called tokens are left called).
    pub service_mean_s: f64,
    /// Share of new scans sent through the national protocol (v3 share, token by on-share).
    pub share: f64,
}

impl Mix {
    /// Scans only: what the step search and the reference designs compare.
    pub const SCANS_ONLY: Mix =
        Mix { repeat: 0.0, poll: 0.0, served: 0.0, wait_mean_s: 1.0, service_mean_s: 0.0, share: 0.0 };
}

/// One run's schedule.
pub struct Plan {
    /// Scans per second `s` seconds into the run.
    pub rate: Box<dyn Fn(f64) -> f64 + Send + Sync>,
    pub duration: Duration,
    /// Stop scheduling new scans after this many (the soak's national day).
    pub max_scans: Option<u64>,
    pub mix: Mix,
    /// Exponential inter-arrival gaps (true) or evenly spaced ones.
    pub poisson: bool,
    pub seed: u64,
}

/// A token the generator saw acknowledged (2xx), kept compact for the verify pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seen {
    pub facility: u32,
    pub counter: u16,
    pub day: u16,
    pub number: u32,
    pub patient: u64,
}

#[derive(Debug, Clone)]
enum Op {
    Scan { facility: u32, counter: u16, patient: u64, follow: Follow },
    Repeat { facility: u32, counter: u16, patient: u64 },
    Poll { token_id: String },
    CallNext { facility: u32, counter: u16, service_mean_s: f64 },
    Complete { facility: u32, token_id: String },
    Share { facility: u32, counter: u16, patient: u64 },
}

impl Op {
    fn kind(&self) -> OpKind {
        match self {
            Op::Scan { .. } => OpKind::Scan,
            Op::Repeat { .. } => OpKind::Repeat,
            Op::Poll { .. } => OpKind::Poll,
            Op::CallNext { .. } => OpKind::CallNext,
            Op::Complete { .. } => OpKind::Complete,
            Op::Share { .. } => OpKind::Share,
        }
    }
}

/// What follows a scan once it is acknowledged, decided at dispatch from the seeded RNG.
#[derive(Debug, Clone, Copy, Default)]
struct Follow {
    repeat_after: Option<Duration>,
    poll_after: Option<Duration>,
    call_after: Option<Duration>,
    service_mean_s: f64,
}

struct Scheduled {
    at: Instant,
    seq: u64,
    op: Op,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// What the verify pass needs besides the recorder.
#[derive(Default)]
pub struct Observed {
    pub seen: Vec<Seen>,
    /// Service days seen, indexed by `Seen::day`.
    pub days: Vec<jiff::civil::Date>,
    /// 2xx answers whose token id did not match the token number, facility or counter.
    pub inconsistent: u64,
    /// Shares the gateway accepted (202): request id, facility, counter, patient.
    pub shares: Vec<(String, u32, u16, u64)>,
}

impl Observed {
    pub fn day_index(&mut self, d: jiff::civil::Date) -> u16 {
        match self.days.iter().position(|x| *x == d) {
            Some(i) => i as u16,
            None => {
                self.days.push(d);
                (self.days.len() - 1) as u16
            }
        }
    }
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub struct Engine {
    /// Replaced between steps ([`Engine::fresh_connections`]), so one step's connections do
    /// not carry into the next.
    client: Mutex<HttpClient>,
    max_in_flight: usize,
    pub target: Target,
    pub registry: Arc<Registry>,
    pub recorder: Mutex<Recorder>,
    pub observed: Mutex<Observed>,
    in_flight: Arc<Semaphore>,
    timeout: Duration,
    staff_keys: Mutex<HashMap<u32, Arc<OnceCell<String>>>>,
    /// Patients of this run are numbered from here, so runs against one Redis never share one.
    patient_base: u64,
    next_patient: AtomicU64,
    started: Mutex<Option<Instant>>,
    /// The switch's bearer JWT for v3 shares (None: no protocol traffic).
    pub share_bearer: Mutex<Option<String>>,
}

fn http_client(max_in_flight: usize) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        // Below the servers' keep-alive (actix: 5 s), so the pool never reuses a
        // connection the server is closing (seen as rare IO errors at 15k+ req/s).
        .pool_idle_timeout(Duration::from_secs(2))
        .pool_max_idle_per_host(max_in_flight)
        .build(connector)
}

/// A server answer: status and body.
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Engine {
    pub fn new(
        target: Target,
        registry: Arc<Registry>,
        max_in_flight: usize,
        timeout: Duration,
        patient_base: u64,
    ) -> Arc<Engine> {
        Arc::new(Engine {
            client: Mutex::new(http_client(max_in_flight)),
            max_in_flight,
            target,
            registry,
            recorder: Mutex::new(Recorder::default()),
            observed: Mutex::new(Observed::default()),
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            timeout,
            staff_keys: Mutex::new(HashMap::new()),
            patient_base,
            next_patient: AtomicU64::new(0),
            started: Mutex::new(None),
            share_bearer: Mutex::new(None),
        })
    }

    /// Drops the connection pool and starts a new one. An overload step leaves thousands of
    /// connections open; carried into the next step, the pool's idle timeout closes them in
    /// waves while it runs, and new ones open in the next latency bump, so the step measured
    /// the generator's own churn (send-lag spikes about every 3 s). The old connections close
    /// as soon as their last requests finish, while the search waits for the host to settle.
    pub fn fresh_connections(&self) {
        *self.client.lock().unwrap() = http_client(self.max_in_flight);
    }

    /// One HTTP exchange, with the run's timeout.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        bearer: &str,
        content_type: &str,
        body: Bytes,
        extra: &[(&str, &str)],
    ) -> Result<Answer, &'static str> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.target.base, path))
            .header(AUTHORIZATION, format!("Bearer {bearer}"));
        if !body.is_empty() {
            req = req.header(CONTENT_TYPE, content_type);
        }
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body)).map_err(|_| "REQUEST")?;
        let fut = async {
            let client = self.client.lock().unwrap().clone();
            let resp = client.request(req).await.map_err(|e| if e.is_connect() { "CONNECT" } else { "IO" })?;
            let status = resp.status();
            let body = resp.into_body().collect().await.map_err(|_| "IO")?.to_bytes();
            Ok(Answer { status, body })
        };
        tokio::time::timeout(self.timeout, fut).await.map_err(|_| "TIMEOUT")?
    }

    fn patient_json(&self, patient: u64) -> String {
        let n = patient % 1_000_000_000_000;
        format!(
            r#"{{"abha_address":"lt{patient:012}@sbx","abha_number":"91{n:012}","name":"Load Test Patient","gender":"{}","year_of_birth":{},"phone":"9{:09}"}}"#,
            if patient.is_multiple_of(2) { "F" } else { "M" },
            1940 + patient % 80,
            patient % 1_000_000_000
        )
    }

    fn scan_body(&self, facility: u32, counter: u16, patient: u64) -> (String, Bytes) {
        let f = &self.registry.facilities[facility as usize];
        let c = &f.counters[counter as usize];
        let body =
            format!(r#"{{"facility_id":"{}","counter_id":"{}","patient":{}}}"#, f.id, c.id, self.patient_json(patient));
        (f.id.clone(), Bytes::from(body))
    }

    /// A v3 share as the switch sends it; returns its REQUEST-ID and the answer.
    async fn share(&self, facility: u32, counter: u16, patient: u64) -> (String, Result<Answer, &'static str>) {
        let f = &self.registry.facilities[facility as usize];
        let c = &f.counters[counter as usize];
        let n = patient % 1_000_000_000_000;
        let body = format!(
            r#"{{"intent":"PROFILE_SHARE","metaData":{{"hipId":"{}","context":"{}","hprId":"71-0000-0000-0001"}},"profile":{{"patient":{{"abhaNumber":"91{n:012}","abhaAddress":"lt{patient:012}@sbx","name":"Load Test Patient","gender":"F","dayOfBirth":"15","monthOfBirth":"1","yearOfBirth":"{}","phoneNumber":"9{:09}","address":{{"line":"1 Main Road","district":"{}","state":"{}","pincode":"110001"}}}}}}}}"#,
            f.id,
            c.id,
            1940 + patient % 80,
            patient % 1_000_000_000,
            f.district_name(),
            scan_gateway::registry::states::STATES[f.state].name,
        );
        let rid = scan_gateway::protocol::hiecm::new_request_id();
        let ts = scan_gateway::protocol::hiecm::timestamp(jiff::Timestamp::now());
        let bearer = self.share_bearer.lock().unwrap().clone().unwrap_or_default();
        let headers = [("REQUEST-ID", rid.as_str()), ("TIMESTAMP", ts.as_str()), ("X-HIP-ID", f.id.as_str())];
        let r = self
            .call(Method::POST, "/api/v3/hip/patient/share", &bearer, "application/json", Bytes::from(body), &headers)
            .await;
        (rid, r)
    }

    async fn staff_key(&self, facility: u32) -> Result<String, &'static str> {
        let cell = self.staff_keys.lock().unwrap().entry(facility).or_default().clone();
        cell.get_or_try_init(|| async {
            let id = &self.registry.facilities[facility as usize].id;
            let a = self
                .call(
                    Method::POST,
                    &format!("/v1/facilities/{id}/staff-keys"),
                    &self.target.admin_token,
                    "application/json",
                    Bytes::new(),
                    &[],
                )
                .await?;
            if a.status != StatusCode::CREATED {
                return Err("STAFF_KEY");
            }
            let v: Value = serde_json::from_slice(&a.body).map_err(|_| "STAFF_KEY")?;
            v["key"].as_str().map(str::to_string).ok_or("STAFF_KEY")
        })
        .await
        .cloned()
    }

    fn second_of(&self, at: Instant) -> usize {
        let start = self.started.lock().unwrap().expect("run started");
        at.saturating_duration_since(start).as_secs() as usize
    }

    /// Sends one operation and records it; schedules follow-ups through `follow_tx`.
    async fn execute(
        self: Arc<Self>,
        at: Instant,
        op: Op,
        follow_tx: tokio::sync::mpsc::UnboundedSender<(Duration, Op)>,
    ) {
        let _permit = self.in_flight.clone().acquire_owned().await.expect("semaphore open");
        let sent = Instant::now();
        let kind = op.kind();
        let result = match &op {
            Op::Scan { facility, counter, patient, .. } | Op::Repeat { facility, counter, patient } => {
                let (fid, body) = self.scan_body(*facility, *counter, *patient);
                self.call(
                    Method::POST,
                    "/v1/scans",
                    &self.target.platform_token,
                    "application/json",
                    body,
                    &[("x-facility-id", &fid)],
                )
                .await
            }
            Op::Poll { token_id } => {
                self.call(
                    Method::GET,
                    &format!("/v1/tokens/{token_id}"),
                    &self.target.platform_token,
                    "",
                    Bytes::new(),
                    &[],
                )
                .await
            }
            Op::CallNext { facility, counter, .. } => match self.staff_key(*facility).await {
                Ok(key) => {
                    let f = &self.registry.facilities[*facility as usize];
                    let path =
                        format!("/v1/facilities/{}/counters/{}/call-next", f.id, f.counters[*counter as usize].id);
                    self.call(Method::POST, &path, &key, "application/json", Bytes::new(), &[]).await
                }
                Err(e) => Err(e),
            },
            Op::Complete { facility, token_id } => match self.staff_key(*facility).await {
                Ok(key) => {
                    let path = format!("/v1/tokens/{token_id}/complete");
                    self.call(Method::POST, &path, &key, "application/json", Bytes::new(), &[]).await
                }
                Err(e) => Err(e),
            },
            Op::Share { facility, counter, patient } => {
                let (rid, result) = self.share(*facility, *counter, *patient).await;
                if matches!(&result, Ok(a) if a.status == StatusCode::ACCEPTED) {
                    self.observed.lock().unwrap().shares.push((rid, *facility, *counter, *patient));
                }
                result
            }
        };
        let latency = at.elapsed();
        let outcome = match &result {
            Ok(a) if a.status.is_success() => Outcome::Ok,
            Ok(a) => {
                let code = serde_json::from_slice::<Value>(&a.body)
                    .ok()
                    .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
                    .unwrap_or_else(|| format!("HTTP_{}", a.status.as_u16()));
                Outcome::Status(a.status.as_u16(), code)
            }
            Err(t) => Outcome::Transport(t),
        };
        let scanned = match &op {
            Op::Scan { facility, counter, patient, follow } => Some((*facility, *counter, *patient, *follow)),
            Op::Repeat { facility, counter, patient } => Some((*facility, *counter, *patient, Follow::default())),
            _ => None,
        };
        if let (Ok(a), Op::CallNext { facility, service_mean_s, .. }) = (&result, &op) {
            // The counter serves the called patient, then completes the token.
            if a.status == StatusCode::OK && *service_mean_s > 0.0 {
                let v: Value = serde_json::from_slice(&a.body).unwrap_or(Value::Null);
                if let Some(token_id) = v["token_id"].as_str() {
                    let after = Duration::from_secs_f64(-service_mean_s * (1.0 - rand::random::<f64>()).ln());
                    let _ = follow_tx.send((after, Op::Complete { facility: *facility, token_id: token_id.into() }));
                }
            }
        }
        if let (Ok(a), Some((facility, counter, patient, follow))) = (&result, scanned) {
            if a.status.is_success() {
                self.acknowledged(facility, counter, patient, &a.body, follow, &follow_tx);
            }
        }
        self.recorder.lock().unwrap().record(kind, self.second_of(at), latency, sent - at, &outcome);
    }

    fn acknowledged(
        &self,
        facility: u32,
        counter: u16,
        patient: u64,
        body: &[u8],
        follow: Follow,
        follow_tx: &tokio::sync::mpsc::UnboundedSender<(Duration, Op)>,
    ) {
        let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let token_id = v["token_id"].as_str().unwrap_or_default().to_string();
        let number = v["token_number"].as_u64().unwrap_or(0) as u32;
        let f = &self.registry.facilities[facility as usize];
        let decoded = TokenRef::decode(&token_id);
        let mut obs = self.observed.lock().unwrap();
        match decoded {
            Some(t) if t.number == number && t.facility == f.id && t.counter == f.counters[counter as usize].id => {
                let day = obs.day_index(t.day);
                obs.seen.push(Seen { facility, counter, day, number, patient });
            }
            _ => {
                obs.inconsistent += 1;
                return;
            }
        }
        drop(obs);
        if let Some(d) = follow.repeat_after {
            let _ = follow_tx.send((d, Op::Repeat { facility, counter, patient }));
        }
        if let Some(d) = follow.poll_after {
            let _ = follow_tx.send((d, Op::Poll { token_id }));
        }
        if let Some(d) = follow.call_after {
            let _ = follow_tx.send((d, Op::CallNext { facility, counter, service_mean_s: follow.service_mean_s }));
        }
    }

    fn new_scan(&self, rng: &mut StdRng, mix: &Mix) -> Op {
        let facility = self.registry.pick(rng.random::<f64>()) as u32;
        let counter = self.registry.facilities[facility as usize].pick_counter(rng.random::<f64>()) as u16;
        let patient = self.patient_base + self.next_patient.fetch_add(1, Ordering::Relaxed);
        if mix.share > 0.0 && rng.random::<f64>() < mix.share {
            return Op::Share { facility, counter, patient };
        }
        let exp = |rng: &mut StdRng, mean: f64| Duration::from_secs_f64(-mean * (1.0 - rng.random::<f64>()).ln());
        let mut follow = Follow::default();
        if rng.random::<f64>() < mix.repeat {
            follow.repeat_after = Some(exp(rng, 0.2 * mix.wait_mean_s));
        }
        if rng.random::<f64>() < mix.poll {
            follow.poll_after = Some(exp(rng, 0.5 * mix.wait_mean_s));
        }
        if rng.random::<f64>() < mix.served {
            follow.call_after = Some(exp(rng, mix.wait_mean_s));
            follow.service_mean_s = mix.service_mean_s;
        }
        Op::Scan { facility, counter, patient, follow }
    }

    /// Runs `plan` to its end and waits for the last answers (up to the timeout).
    pub async fn run(self: &Arc<Self>, plan: &Plan) -> RunInfo {
        let mut rng = StdRng::seed_from_u64(plan.seed);
        let start = Instant::now();
        let cpu0 = crate::resources::cpu_seconds(std::process::id());
        *self.started.lock().unwrap() = Some(start);
        let end = start + plan.duration;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Duration, Op)>();
        let mut heap: BinaryHeap<Reverse<Scheduled>> = BinaryHeap::new();
        let mut seq = 0u64;
        let mut scans = 0u64;
        let mut next_scan = start;
        let mut dropped_follow_ups = 0u64;
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            let now = Instant::now();
            while let Ok((after, op)) = rx.try_recv() {
                seq += 1;
                heap.push(Reverse(Scheduled { at: now + after, seq, op }));
            }
            let scans_done = next_scan >= end || plan.max_scans.is_some_and(|m| scans >= m);
            if !scans_done {
                while next_scan <= now && next_scan < end && plan.max_scans.is_none_or(|m| scans < m) {
                    let rate = (plan.rate)((next_scan - start).as_secs_f64());
                    if rate <= 0.0 {
                        next_scan += Duration::from_millis(10);
                        continue;
                    }
                    let op = self.new_scan(&mut rng, &plan.mix);
                    tasks.spawn(self.clone().execute(next_scan, op, tx.clone()));
                    scans += 1;
                    let gap = if plan.poisson { -(1.0 - rng.random::<f64>()).ln() / rate } else { 1.0 / rate };
                    next_scan += Duration::from_secs_f64(gap);
                }
            }
            while heap.peek().is_some_and(|s| s.0.at <= now) {
                let Reverse(s) = heap.pop().unwrap();
                if s.at >= end {
                    dropped_follow_ups += 1;
                    continue;
                }
                tasks.spawn(self.clone().execute(s.at, s.op, tx.clone()));
            }
            // Reap finished tasks so the set stays small.
            while tasks.try_join_next().is_some() {}
            let scans_done = next_scan >= end || plan.max_scans.is_some_and(|m| scans >= m);
            if now >= end || (scans_done && heap.is_empty() && plan.max_scans.is_some()) {
                // Follow-ups due after the end are not sent; what is in flight gets its answer.
                dropped_follow_ups += heap.len() as u64;
                let _ = tokio::time::timeout(self.timeout + Duration::from_secs(1), async {
                    while tasks.join_next().await.is_some() {}
                })
                .await;
                tasks.abort_all();
                while rx.try_recv().is_ok() {
                    dropped_follow_ups += 1;
                }
                break;
            }
            let mut wake = now + Duration::from_millis(1);
            if !scans_done {
                wake = wake.min(next_scan.max(now));
            }
            if let Some(s) = heap.peek() {
                wake = wake.min(s.0.at.max(now));
            }
            tokio::time::sleep_until(wake.into()).await;
        }
        let generator_cpu_s = cpu0.zip(crate::resources::cpu_seconds(std::process::id())).map(|(a, b)| b - a);
        RunInfo {
            started: start,
            elapsed: start.elapsed(),
            scans_scheduled: scans,
            dropped_follow_ups,
            generator_cpu_s,
        }
    }

    /// Registers the whole registry through the admin import API, `chunk` lines a request.
    pub async fn import_registry(&self, chunk: usize) -> anyhow::Result<()> {
        for (i, body) in self.registry.ndjson_chunks(chunk).enumerate() {
            let a = self
                .call(
                    Method::POST,
                    "/v1/facilities:import",
                    &self.target.admin_token,
                    "application/x-ndjson",
                    Bytes::from(body),
                    &[],
                )
                .await
                .map_err(|e| anyhow::anyhow!("import chunk {i}: {e}"))?;
            anyhow::ensure!(
                a.status.is_success(),
                "import chunk {i}: HTTP {}: {}",
                a.status,
                String::from_utf8_lossy(&a.body[..a.body.len().min(500)])
            );
        }
        Ok(())
    }
}

/// How the schedule itself went.
#[derive(Debug, Clone, Copy)]
pub struct RunInfo {
    /// When the first operation was scheduled (run second 0 starts here).
    pub started: Instant,
    pub elapsed: Duration,
    pub scans_scheduled: u64,
    /// Follow-ups (polls, calls, repeats) whose time fell after the end of the run.
    pub dropped_follow_ups: u64,
    /// CPU seconds the generator (this process) used during the run.
    pub generator_cpu_s: Option<f64>,
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A keep-alive HTTP/1.1 server that answers every request with 204 and counts the
    /// connections it accepted.
    async fn counting_server() -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut sock, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    loop {
                        let Ok(n) = sock.read(&mut chunk).await else { return };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        // Bodiless requests: one ends at its blank line.
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let reply = b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n";
                            if sock.write_all(reply).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (base, accepted)
    }

    #[tokio::test]
    async fn fresh_connections_drops_the_pool_so_the_next_request_connects_anew() {
        let (base, accepted) = counting_server().await;
        let target = Target { base, platform_token: String::new(), admin_token: String::new() };
        let engine = Engine::new(target, Arc::new(Registry::synthetic(36, 1)), 16, Duration::from_secs(5), 0);
        let get = || engine.call(Method::GET, "/", "t", "", Bytes::new(), &[]);
        assert_eq!(get().await.unwrap().status, StatusCode::NO_CONTENT);
        assert_eq!(get().await.unwrap().status, StatusCode::NO_CONTENT);
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "the pool reuses its connection");
        engine.fresh_connections();
        assert_eq!(get().await.unwrap().status, StatusCode::NO_CONTENT);
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "a fresh pool opens a new connection");
    }
}
