//! Several real gateway processes on one Redis behind a real nginx (Debian package) that
//! runs the checked-in deploy/nginx/ files: routed load with a node killed (-9) and started
//! again, and worst-case round-robin routing. Afterwards every acknowledged token is in
//! Redis with its number, numbers are contiguous with no duplicate, leaderboards are exact.
#[path = "support/gateway.rs"]
mod gateway;
#[path = "api/helpers.rs"]
mod helpers;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use redis::Commands;
use serde_json::Value;

use gateway::*;
use helpers::*;

/// The two tests run one after the other: each starts five processes and measures
/// throughput, which a neighbour on a 2-core machine would distort.
static SERIAL: Mutex<()> = Mutex::new(());

const COUNTERS: [&str; 3] = ["OPD1", "OPD2", "Pharmacy"];
const CONCURRENCY: usize = 48;
/// Marks the response with the node that answered (the last one tried, after a retry).
const UPSTREAM_HEADER: &str = "X-Scangw-Upstream";

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The Debian package installs nginx in /usr/sbin, which a non-root PATH often lacks.
fn nginx_bin() -> PathBuf {
    for p in ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    PathBuf::from("nginx")
}

// ---------------------------------------------------------------------------------------
// nginx
// ---------------------------------------------------------------------------------------

/// nginx as the test user, everything (pid, logs, temp files) in its own temp dir, running
/// deploy/nginx/scan-gateway.conf.example with the upstream servers and the listen address
/// replaced, which includes deploy/nginx/facility-routing.conf from the repository.
struct Nginx {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
}

impl Nginx {
    fn start(nodes: &[u16]) -> Nginx {
        Self::start_edited(nodes, &[])
    }

    /// [`Self::start`] with `(from, to)` replacements in the example (each must occur).
    fn start_edited(nodes: &[u16], edits: &[(&str, &str)]) -> Nginx {
        for _attempt in 0..5 {
            let dir = tempfile::tempdir().expect("temp dir for nginx");
            let port = free_port();
            let conf = Self::write_conf(dir.path(), port, nodes, edits);
            let child = Command::new(nginx_bin())
                .args(["-p", dir.path().to_str().unwrap(), "-e", "error.log", "-c"])
                .arg(&conf)
                .args(["-g", "daemon off;"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn nginx (is the nginx package installed?)");
            let mut n = Nginx { child: Some(child), dir, port };
            if n.wait_listening(Duration::from_secs(10)) {
                return n;
            }
            // Most likely lost a race for the port; the error log says.
            eprintln!("nginx did not come up: {}", n.error_log());
            n.stop();
        }
        panic!("could not start nginx");
    }

    fn write_conf(dir: &Path, port: u16, nodes: &[u16], edits: &[(&str, &str)]) -> PathBuf {
        let mut example = std::fs::read_to_string(repo_file("deploy/nginx/scan-gateway.conf.example")).unwrap();
        for (from, to) in edits {
            assert!(example.contains(from), "the example has {from:?}");
            example = example.replace(from, to);
        }
        let routing = repo_file("deploy/nginx/facility-routing.conf");
        let include = "include /etc/nginx/scan-gateway/facility-routing.conf;";
        assert!(example.contains(include), "the example includes the routing file");
        assert!(example.contains("    listen 80;\n"), "the example listens on port 80");
        assert!(example.contains("hash $facility_key consistent;"), "the example hashes on $facility_key");
        // The example's server lines, replaced by this test's nodes. A short fail_timeout so
        // a restarted node is tried again soon.
        let servers: String =
            nodes.iter().map(|p| format!("    server 127.0.0.1:{p} max_fails=1 fail_timeout=1s;\n")).collect();
        let mut site = String::new();
        let mut replaced = false;
        for line in example.lines() {
            if line.trim_start().starts_with("server 10.0.1.") {
                if !replaced {
                    site.push_str(&servers);
                    replaced = true;
                }
                continue;
            }
            site.push_str(line);
            site.push('\n');
        }
        assert!(replaced, "the example lists its upstream servers as `server 10.0.1.x:8080 ...`");
        let site = site
            .replace(include, &format!("include {};", routing.display()))
            .replace("    listen 80;\n", &format!("    listen 127.0.0.1:{port};\n"));
        let d = dir.display();
        // Running as root (CI containers), the workers would switch to `nobody` and lose
        // access to the private temp dir; as any other user the directive does not apply.
        // SAFETY: geteuid has no preconditions.
        let user = if unsafe { libc::geteuid() } == 0 { "user root;" } else { "" };
        let conf = format!(
            "{user}\nworker_processes 1;\npid {d}/nginx.pid;\nevents {{ worker_connections 1024; }}\n\
             http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
             add_header {UPSTREAM_HEADER} $upstream_addr always;\n{site}}}\n"
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        path
    }

    fn wait_listening(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                return false;
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Fast shutdown (SIGTERM): the master stops its workers. SIGKILL would orphan them.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on the pid of a child we spawned and have not reaped yet.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while !matches!(child.try_wait(), Ok(Some(_))) {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------
// The cluster: Redis, three nodes, nginx
// ---------------------------------------------------------------------------------------

/// How the nodes of a test share ownership.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Leases {
    /// No `SCANGW_ADVERTISE_URL`: a node takes over whatever it is asked for.
    Off,
    /// Each node advertises its own address and holds a lease of this many ms.
    On(u64),
}

fn node_env(listen: Option<u16>, leases: Leases) -> Vec<(String, String)> {
    let mut env = vec![
        ("SCANGW_LOG".to_string(), "warn".to_string()),
        // Limits have their own tests; here every scan must be served or retried.
        ("SCANGW_LIMIT_PATIENT_PER_MIN".into(), "0".into()),
        ("SCANGW_LIMIT_FACILITY_PER_MIN".into(), "0".into()),
        // nginx is the proxy whose X-Forwarded-For the nodes believe.
        ("SCANGW_TRUSTED_PROXIES".into(), "127.0.0.1".into()),
    ];
    if let Some(port) = listen {
        env.push(("SCANGW_LISTEN".into(), format!("127.0.0.1:{port}")));
    }
    if let Leases::On(ms) = leases {
        env.push(("SCANGW_ADVERTISE_URL".into(), "auto".into()));
        env.push(("SCANGW_NODE_LEASE_MS".into(), ms.to_string()));
    }
    env
}

fn start_node(redis: &RedisServer, listen: Option<u16>) -> Gateway {
    start_node_with(redis, listen, Leases::Off)
}

fn start_node_with(redis: &RedisServer, listen: Option<u16>, leases: Leases) -> Gateway {
    let env = node_env(listen, leases);
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Gateway::start(redis, &refs)
}

fn port_of(base: &str) -> u16 {
    base.rsplit(':').next().unwrap().parse().unwrap()
}

struct Cluster {
    redis: RedisServer,
    nodes: Vec<Gateway>,
    nginx: Nginx,
    client: awc::Client,
    facilities: Vec<String>,
    /// Staff key per facility, for reading tokens back with their patient.
    staff: BTreeMap<String, String>,
}

impl Cluster {
    async fn start(first_facility: usize, facilities: usize) -> Cluster {
        Self::start_with(first_facility, facilities, 3, Leases::Off).await
    }

    async fn start_with(first_facility: usize, facilities: usize, nodes: usize, leases: Leases) -> Cluster {
        let redis = RedisServer::start();
        let nodes: Vec<Gateway> = (0..nodes).map(|_| start_node_with(&redis, None, leases)).collect();
        let ports: Vec<u16> = nodes.iter().map(|n| port_of(&n.base)).collect();
        let nginx = Nginx::start(&ports);
        let mut c = Cluster {
            redis,
            nodes,
            nginx,
            client: client(),
            facilities: (0..facilities).map(|i| fid(first_facility + i)).collect(),
            staff: BTreeMap::new(),
        };
        let base = c.nginx.base();
        let client = c.client.clone();
        eventually(Duration::from_secs(10), "nginx answers /livez from a node", || {
            let (client, url) = (client.clone(), format!("{base}/livez"));
            async move { matches!(http(&client, "GET", &url, None, None, None, &[]).await, Ok(r) if r.status == 200) }
        })
        .await;
        // Registration and staff keys go through nginx too (routed by the path).
        for f in c.facilities.clone() {
            let r = c.via_nginx("PUT", &format!("/v1/facilities/{f}"), ADMIN, Some(&standard_facility(&f)), &[]).await;
            assert_eq!(r.status, 201, "register {f}: {}", r.text);
            let r = c.via_nginx("POST", &format!("/v1/facilities/{f}/staff-keys"), ADMIN, None, &[]).await;
            assert_eq!(r.status, 201, "staff key {f}: {}", r.text);
            c.staff.insert(f, s(&r.body, "key").to_string());
        }
        c
    }

    async fn via_nginx(
        &self,
        method: &str,
        path: &str,
        bearer: &str,
        body: Option<&Value>,
        hdr: &[(&str, &str)],
    ) -> Resp {
        call(&self.client, &format!("{}{path}", self.nginx.base()), method, bearer, body, hdr)
            .await
            .unwrap_or_else(|e| panic!("{method} {path} through nginx: {e}"))
    }

    /// The fencing epoch of a facility: how many activations it has had, on any node.
    fn epoch(&self, f: &str) -> u64 {
        let e: Option<u64> = self.redis.conn().hget(format!("sg:{{{f}}}:fence"), "e").unwrap();
        e.unwrap_or(0)
    }

    /// `scangw_active_facility_actors` of one node.
    async fn active_actors(&self, node: usize) -> u64 {
        sample(&self.client, &self.nodes[node], "scangw_active_facility_actors").await as u64
    }

    /// A series (name with its labels, as exported) summed over every node.
    async fn total(&self, series: &str) -> u64 {
        let mut sum = 0.0;
        for n in &self.nodes {
            sum += sample(&self.client, n, series).await;
        }
        sum as u64
    }
}

/// One node's value of a series (`name{labels}` exactly as exported; 0 when absent).
async fn sample(client: &awc::Client, node: &Gateway, series: &str) -> f64 {
    let r = call(client, &format!("{}/metrics", node.base), "GET", PLATFORM, None, &[]).await.expect("scrape a node");
    r.text
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .map(|v| v.trim().parse::<f64>().unwrap())
        .unwrap_or(0.0)
}

async fn call(
    client: &awc::Client,
    url: &str,
    method: &str,
    bearer: &str,
    body: Option<&Value>,
    hdr: &[(&str, &str)],
) -> Result<Resp, awc::error::SendRequestError> {
    let (ct, bytes) = match body {
        Some(v) => (Some("application/json"), Some(serde_json::to_vec(v).unwrap())),
        None => (None, None),
    };
    http(client, method, url, Some(bearer), ct, bytes, hdr).await
}

/// The node that answered through nginx (`$upstream_addr`: the last address after retries).
fn upstream(r: &Resp) -> String {
    let all = r.header(UPSTREAM_HEADER).unwrap_or_else(|| panic!("no {UPSTREAM_HEADER}: {} {}", r.status, r.text));
    all.rsplit(", ").next().unwrap().to_string()
}

// ---------------------------------------------------------------------------------------
// Load
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Route<'a> {
    /// Through nginx, alternating the header form and the path alias.
    Nginx(&'a Cluster),
    /// Straight to the nodes, the next node on every attempt.
    RoundRobin(&'a Cluster),
}

/// A scan acknowledged with 2xx.
#[derive(Debug, Clone)]
struct Ack {
    scan: usize,
    facility: String,
    counter: String,
    number: u64,
    day: String,
    token_id: String,
    node: Option<String>,
}

#[derive(Default)]
struct Tally {
    acks: Vec<Ack>,
    /// Answers that were retried, by status and code (or transport error).
    retried: BTreeMap<String, usize>,
    /// Acknowledged scans that nginx itself had sent to a second node first.
    resent_by_nginx: usize,
    unexpected: Vec<String>,
}

/// Scan `i`: facility, counter and patient follow from `i`.
fn scan_of(c: &Cluster, i: usize) -> (String, &'static str, Value) {
    let f = c.facilities[i % c.facilities.len()].clone();
    let counter = COUNTERS[(i / c.facilities.len()) % COUNTERS.len()];
    let body = scan_body(&f, counter, i);
    (f, counter, body)
}

/// Sends scan `i` until a 2xx, as the platform would: 503 (any code), nginx's 502/504 and
/// transport errors are retried with the same Idempotency-Key after a short pause (shorter
/// than Retry-After, to keep the test short). Anything else is unexpected.
async fn scan_until_acknowledged(route: Route<'_>, i: usize, tally: &RefCell<Tally>) {
    let c = match route {
        Route::Nginx(c) | Route::RoundRobin(c) => c,
    };
    let (f, counter, body) = scan_of(c, i);
    let idem = format!("multinode-{i}");
    let deadline = Instant::now() + Duration::from_secs(30);
    for attempt in 0.. {
        assert!(Instant::now() < deadline, "scan {i} not acknowledged within 30 s: {:?}", tally.borrow().retried);
        let res = match route {
            Route::Nginx(c) if i.is_multiple_of(2) => {
                let url = format!("{}/v1/scans", c.nginx.base());
                call(
                    &c.client,
                    &url,
                    "POST",
                    PLATFORM,
                    Some(&body),
                    &[("Idempotency-Key", &idem), ("X-Facility-Id", &f)],
                )
                .await
            }
            Route::Nginx(c) => {
                let url = format!("{}/v1/facilities/{f}/scans", c.nginx.base());
                call(&c.client, &url, "POST", PLATFORM, Some(&body), &[("Idempotency-Key", &idem)]).await
            }
            Route::RoundRobin(c) => {
                // Each scan of a facility goes to the next node, and so does each retry.
                let node = (i / c.facilities.len() + attempt) % c.nodes.len();
                let url = format!("{}/v1/scans", c.nodes[node].base);
                call(&c.client, &url, "POST", PLATFORM, Some(&body), &[("Idempotency-Key", &idem)]).await
            }
        };
        let why = match res {
            Ok(r) if r.status == 201 || r.status == 200 => {
                assert_scan_reply(r.status, &r.body);
                assert_eq!((s(&r.body, "facility_id"), s(&r.body, "counter_id")), (f.as_str(), counter), "{}", r.text);
                let node = r.header(UPSTREAM_HEADER).map(|_| upstream(&r));
                let mut tally = tally.borrow_mut();
                tally.resent_by_nginx += usize::from(r.header(UPSTREAM_HEADER).is_some_and(|u| u.contains(", ")));
                tally.acks.push(Ack {
                    scan: i,
                    facility: f,
                    counter: counter.to_string(),
                    number: num(&r.body, "token_number"),
                    day: s(&r.body, "service_date").to_string(),
                    token_id: s(&r.body, "token_id").to_string(),
                    node,
                });
                return;
            }
            Ok(r) if r.status == 503 => format!("503 {}", r.body["error"]["code"].as_str().unwrap_or("?")),
            Ok(r) if matches!(r.status, 502 | 504) => format!("{} from nginx", r.status),
            Ok(r) => {
                tally.borrow_mut().unexpected.push(format!("scan {i}: {} {}", r.status, r.text));
                return;
            }
            Err(e) => format!("transport: {e}"),
        };
        *tally.borrow_mut().retried.entry(why).or_default() += 1;
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Scans `range` with [`CONCURRENCY`] clients; returns the tally and the wall time.
async fn drive(route: Route<'_>, range: std::ops::Range<usize>, tally: &RefCell<Tally>) -> Duration {
    let next = Cell::new(range.start);
    let started = Instant::now();
    join_all((0..CONCURRENCY).map(|_| async {
        loop {
            let i = next.get();
            if i >= range.end {
                return;
            }
            next.set(i + 1);
            scan_until_acknowledged(route, i, tally).await;
        }
    }))
    .await;
    started.elapsed()
}

// ---------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------

/// Every acknowledged token is stored with its number and its patient; numbers per
/// (facility, counter, day) are exactly 1..n (nothing unacknowledged stored either, since
/// every scan was retried until acknowledged); the counts and leaderboards agree.
async fn verify(c: &Cluster, acks: &[Ack], scans: usize) {
    let scanned: BTreeSet<usize> = acks.iter().map(|a| a.scan).collect();
    assert_eq!((scanned.len(), acks.len()), (scans, scans), "each scan acknowledged exactly once");
    let mut acked: BTreeMap<(String, String, String), BTreeMap<u64, &Ack>> = BTreeMap::new();
    for a in acks {
        let prev = acked.entry((a.facility.clone(), a.counter.clone(), a.day.clone())).or_default().insert(a.number, a);
        assert!(
            prev.is_none(),
            "number {} issued twice at {}/{} on {}: scans {} and {}",
            a.number,
            a.facility,
            a.counter,
            a.day,
            prev.unwrap().scan,
            a.scan
        );
    }
    let mut con = c.redis.conn();
    let mut per_facility_day: BTreeMap<(String, String), u64> = BTreeMap::new();
    for ((f, counter, day), numbers) in &acked {
        let fields: Vec<String> = con.hkeys(format!("sg:{{{f}}}:d:{day}:t")).unwrap();
        let stored: Vec<u64> = fields
            .iter()
            .filter_map(|k| k.rsplit_once('#').filter(|(c, _)| c == counter).map(|(_, n)| n.parse().unwrap()))
            .collect::<BTreeSet<u64>>()
            .into_iter()
            .collect();
        let n = numbers.len() as u64;
        assert_eq!(stored, (1..=n).collect::<Vec<_>>(), "{f}/{counter} on {day}: stored numbers are exactly 1..{n}");
        assert_eq!(numbers.keys().copied().collect::<Vec<_>>(), stored, "{f}/{counter}: acknowledged = stored");
        *per_facility_day.entry((f.clone(), day.clone())).or_default() += n;
    }
    // Read back through nginx as the facility's staff: the token under each acknowledged
    // number is the acknowledged patient's.
    let tally = RefCell::new(0usize);
    let next = Cell::new(0usize);
    join_all((0..CONCURRENCY).map(|_| async {
        while let Some(a) = acks.get(next.get()) {
            next.set(next.get() + 1);
            let r = c.via_nginx("GET", &format!("/v1/tokens/{}", a.token_id), &c.staff[&a.facility], None, &[]).await;
            assert_eq!(r.status, 200, "token of scan {}: {}", a.scan, r.text);
            assert_eq!(num(&r.body, "token_number"), a.number, "{}", r.text);
            assert_eq!(
                r.body["patient"]["abha_address"].as_str(),
                Some(abha_address(a.scan).as_str()),
                "scan {}",
                a.scan
            );
            *tally.borrow_mut() += 1;
        }
    }))
    .await;
    assert_eq!(*tally.borrow(), acks.len());
    // Leaderboards: exact per facility and in total, per service day.
    let days: BTreeSet<&String> = per_facility_day.keys().map(|(_, d)| d).collect();
    for day in days {
        let want: BTreeMap<String, u64> =
            per_facility_day.iter().filter(|((_, d), _)| d == day).map(|((f, _), n)| (f.clone(), *n)).collect();
        // The leaderboard applier moves counts in the background: poll until exact, with a
        // deadline; the final values must equal the tokens issued.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = c
                .via_nginx("GET", &format!("/v1/leaderboards/facilities?date={day}&limit=1000"), ADMIN, None, &[])
                .await;
            assert_eq!(r.status, 200, "{}", r.text);
            let board: BTreeMap<String, u64> = r.body["rows"]
                .as_array()
                .unwrap()
                .iter()
                .map(|row| (s(row, "id").to_string(), num(row, "tokens")))
                .collect();
            let total = num(&r.body, "total");
            if board == want && total == want.values().sum::<u64>() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "leaderboard of {day} never equalled the tokens issued: {board:?} (total {total}) vs {want:?}"
            );
            actix_rt::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[actix_web::test]
#[allow(clippy::await_holding_lock)] // a test-wide lock held by one runtime thread
async fn routed_by_facility_through_nginx_survives_a_killed_and_restarted_node() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = Cluster::start(700, 24).await;
    let base = c.nginx.base();
    let node_addrs: Vec<String> = c.nodes.iter().map(|n| n.base.trim_start_matches("http://").to_string()).collect();
    let tally = RefCell::new(Tally::default());
    let (p1, p2, p3) = (480, 960, 1320);

    // Phase 1, normal operation: scans, a poll of every token, staff calls and board pages.
    let took = drive(Route::Nginx(&c), 0..p1, &tally).await;
    let routed_rate = p1 as f64 / took.as_secs_f64();
    let mut owner: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for a in &tally.borrow().acks {
        owner.entry(a.facility.clone()).or_default().insert(a.node.clone().unwrap());
    }
    let polls: Vec<Ack> = tally.borrow().acks.clone();
    for a in polls.iter().step_by(3) {
        let r = c.via_nginx("GET", &format!("/v1/tokens/{}", a.token_id), PLATFORM, None, &[]).await;
        assert_eq!((r.status, num(&r.body, "token_number")), (200, a.number), "{}", r.text);
        owner.get_mut(&a.facility).unwrap().insert(upstream(&r));
    }
    for f in &c.facilities {
        let key = &c.staff[f];
        let r = c.via_nginx("POST", &format!("/v1/facilities/{f}/counters/OPD1/call-next"), key, None, &[]).await;
        assert_eq!((r.status, num(&r.body, "token_number")), (200, 1), "{}", r.text);
        owner.get_mut(f).unwrap().insert(upstream(&r));
        let r = c.via_nginx("POST", &format!("/v1/tokens/{}/complete", s(&r.body, "token_id")), key, None, &[]).await;
        assert_eq!((r.status, s(&r.body, "status")), (200, "completed"), "{}", r.text);
        owner.get_mut(f).unwrap().insert(upstream(&r));
        let r = c.via_nginx("GET", &format!("/v1/facilities/{f}/queue"), key, None, &[]).await;
        assert_eq!(r.status, 200, "{}", r.text);
        owner.get_mut(f).unwrap().insert(upstream(&r));
        let r = c.via_nginx("GET", &format!("/facilities/{f}/board"), PLATFORM, None, &[]).await;
        assert_eq!(r.status, 200, "{}", r.text);
        owner.get_mut(f).unwrap().insert(upstream(&r));
        // Protocol shares route on X-HIP-ID (the protocol is off here: the node answers 404).
        let r =
            c.via_nginx("POST", "/api/v3/hip/patient/share", PLATFORM, Some(&Value::Null), &[("X-HIP-ID", f)]).await;
        assert_eq!(r.status, 404, "{}", r.text);
        owner.get_mut(f).unwrap().insert(upstream(&r));
    }
    // Each facility was served by one node, which activated it once; together the nodes
    // hold one actor per facility.
    for (f, nodes) in &owner {
        assert_eq!(nodes.len(), 1, "{f} served by {nodes:?}");
        assert_eq!(c.epoch(f), 1, "{f} activated once");
    }
    let mut actors = 0;
    for n in 0..3 {
        actors += c.active_actors(n).await;
    }
    assert_eq!(actors, c.facilities.len() as u64, "one actor per facility over all nodes");
    let owner: BTreeMap<String, String> = owner.into_iter().map(|(f, n)| (f, n.into_iter().next().unwrap())).collect();
    let mut load: BTreeMap<&String, usize> = BTreeMap::new();
    for n in owner.values() {
        *load.entry(n).or_default() += 1;
    }
    println!("facilities per node: {load:?}");
    assert!(load.len() >= 2, "the hash spreads facilities over nodes: {load:?}");
    // Requests of no facility go round-robin.
    let mut seen = BTreeSet::new();
    for _ in 0..6 {
        seen.insert(upstream(&c.via_nginx("GET", "/livez", PLATFORM, None, &[]).await));
    }
    assert!(seen.len() >= 2, "requests without a facility spread over nodes: {seen:?}");

    // Phase 2: kill -9 the busiest node a quarter of the way through.
    let busiest = load.iter().max_by_key(|(_, n)| **n).unwrap().0.to_string();
    let victim = node_addrs.iter().position(|a| *a == busiest).unwrap();
    let victim_addr = node_addrs[victim].clone();
    let moved: BTreeSet<&String> = owner.iter().filter(|(_, n)| **n == victim_addr).map(|(f, _)| f).collect();
    let kill_at = tally.borrow().acks.len() + (p2 - p1) / 4;
    let acked = &tally;
    let killer = async {
        eventually(Duration::from_secs(30), "a quarter of phase 2 acknowledged", move || async move {
            acked.borrow().acks.len() >= kill_at
        })
        .await;
        c.nodes[victim].signal(libc::SIGKILL);
    };
    futures_util::future::join(drive(Route::Nginx(&c), p1..p2, &tally), killer).await;
    assert!(c.nodes[victim].wait_exit(Duration::from_secs(5)).is_some(), "the node died");
    for f in &c.facilities {
        let want = if moved.contains(f) { 2 } else { 1 };
        assert_eq!(c.epoch(f), want, "{f}: only the dead node's facilities moved, once");
    }

    // Phase 3: the node comes back on its port; nginx routes its facilities to it again.
    c.nodes[victim] = start_node(&c.redis, Some(port_of(&format!("http://{victim_addr}"))));
    let probe = tally.borrow().acks.iter().find(|a| moved.contains(&a.facility)).cloned().unwrap();
    let (client, url) = (c.client.clone(), format!("{base}/v1/tokens/{}", probe.token_id));
    eventually(Duration::from_secs(15), "nginx routes the restarted node's facilities to it", || {
        let (client, url, want) = (client.clone(), url.clone(), victim_addr.clone());
        async move {
            matches!(call(&client, &url, "GET", PLATFORM, None, &[]).await, Ok(r) if r.status == 200 && upstream(&r) == want)
        }
    })
    .await;
    drive(Route::Nginx(&c), p2..p3, &tally).await;
    for a in tally.borrow().acks.iter().filter(|a| a.scan >= p2) {
        assert_eq!(a.node.as_ref(), Some(&owner[&a.facility]), "scan {} back on its facility's node", a.scan);
    }
    for f in &c.facilities {
        let want = if moved.contains(f) { 3 } else { 1 };
        assert_eq!(c.epoch(f), want, "{f}: moved back once");
    }

    let t = tally.into_inner();
    println!(
        "routed: {p3} scans over {} facilities, {:.0} scans/s before the kill; {} facilities moved and back; \
         {} scans resent to the next node by nginx; retried by the client: {:?}",
        c.facilities.len(),
        routed_rate,
        moved.len(),
        t.resent_by_nginx,
        t.retried
    );
    // The first request for a moved facility after the kill found its node gone.
    assert!(t.resent_by_nginx > 0, "nginx moved requests of the dead node to the next one");
    assert!(t.unexpected.is_empty(), "unexpected answers: {:?}", &t.unexpected[..t.unexpected.len().min(5)]);
    verify(&c, &t.acks, p3).await;
    let log = c.nginx.error_log();
    assert!(!log.contains("[emerg]") && !log.contains("[alert]"), "{log}");
}

/// Scans sent round-robin straight to every node (no routing at all), with ownership
/// leases on: a node forwards each scan for a facility another node owns to that owner, so
/// ownership stays where the routed phase put it. Under 1% of scans refused, no facility
/// moved, nothing lost or duplicated.
async fn round_robin_with_leases(nodes: usize, first_facility: usize) {
    let c = Cluster::start_with(first_facility, 24, nodes, Leases::On(3000)).await;
    let tally = RefCell::new(Tally::default());
    let n = 900;
    let routed = drive(Route::Nginx(&c), 0..n, &tally).await;
    let routed_retries: usize = tally.borrow().retried.values().sum();
    let epochs_routed: u64 = c.facilities.iter().map(|f| c.epoch(f)).sum();
    let rr = drive(Route::RoundRobin(&c), n..2 * n, &tally).await;
    let t = tally.into_inner();
    let refused: usize = t.retried.values().sum::<usize>() - routed_retries;
    let owner_changed = t.retried.get("503 OWNER_CHANGED").copied().unwrap_or(0);
    let epochs_all: u64 = c.facilities.iter().map(|f| c.epoch(f)).sum();
    let served_by_owner = c.total("scangw_forwarded_total{outcome=\"served_by_owner\"}").await;
    let taken_over = c.total("scangw_forwarded_total{outcome=\"taken_over\"}").await;
    let (routed_rate, rr_rate) = (n as f64 / routed.as_secs_f64(), n as f64 / rr.as_secs_f64());
    println!(
        "routed through nginx: {n} scans in {routed:.2?} ({routed_rate:.0}/s, {routed_retries} retries, {epochs_routed} \
         activations) | round-robin to {nodes} nodes with leases: {n} scans in {rr:.2?} ({rr_rate:.0}/s, {refused} \
         refused ({owner_changed} x 503 OWNER_CHANGED), {} activations, {served_by_owner} forwarded to the owner, \
         {taken_over} taken over, retried {:?}) | round-robin/routed throughput {:.2}",
        epochs_all - epochs_routed,
        t.retried,
        rr_rate / routed_rate
    );
    assert!(t.unexpected.is_empty(), "unexpected answers: {:?}", &t.unexpected[..t.unexpected.len().min(5)]);
    assert_eq!(routed_retries, 0, "routed load needs no retry");
    assert_eq!(epochs_routed, c.facilities.len() as u64, "routed: one activation per facility");
    assert!(refused * 100 < n, "round-robin: under 1% refused, got {refused} of {n}: {:?}", t.retried);
    assert_eq!(epochs_all, epochs_routed, "round-robin moved no facility: the owners served every scan");
    assert_eq!(taken_over, 0, "every owner was reachable");
    // A scan reaches its facility's owner first 1 time in `nodes`; the others are forwarded.
    let forwarded_at_least = (n * (nodes - 1) / nodes) as u64 * 9 / 10;
    assert!(
        served_by_owner >= forwarded_at_least,
        "{served_by_owner} forwarded, expected about {}",
        n * (nodes - 1) / nodes
    );
    verify(&c, &t.acks, 2 * n).await;
}

#[actix_web::test]
#[allow(clippy::await_holding_lock)] // a test-wide lock held by one runtime thread
async fn round_robin_to_three_nodes_with_leases_forwards_to_owners_and_loses_and_duplicates_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    round_robin_with_leases(3, 800).await;
}

#[actix_web::test]
#[allow(clippy::await_holding_lock)] // a test-wide lock held by one runtime thread
async fn round_robin_to_two_nodes_with_leases_forwards_to_owners_and_loses_and_duplicates_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    round_robin_with_leases(2, 850).await;
}

// ---------------------------------------------------------------------------------------
// Ownership leases: forwarding, expiry, graceful hand-over (two nodes, no nginx)
// ---------------------------------------------------------------------------------------

const NODE_HEADER: &str = "X-Scangw-Node";
const HOP_HEADER: &str = "X-Scangw-Forwarded-By";

/// Two nodes with leases of `lease_ms` on one Redis, each with its node id (from the
/// header every answer carries), and facility `f` registered.
async fn leased_pair(lease_ms: u64, f: &str) -> (RedisServer, [Gateway; 2], [String; 2]) {
    let redis = RedisServer::start();
    let a = start_node_with(&redis, None, Leases::On(lease_ms));
    let b = start_node_with(&redis, None, Leases::On(lease_ms));
    let mut ids = Vec::new();
    for n in [&a, &b] {
        let r = n.call("GET", "/livez", PLATFORM, None).await;
        ids.push(r.header(NODE_HEADER).expect("every answer names its node"));
    }
    a.register(f).await;
    assert_ne!(ids[0], ids[1]);
    (redis, [a, b], [ids[0].clone(), ids[1].clone()])
}

fn fence_epoch(redis: &RedisServer, f: &str) -> u64 {
    let e: Option<u64> = redis.conn().hget(format!("sg:{{{f}}}:fence"), "e").unwrap();
    e.unwrap_or(0)
}

fn lease_alive(redis: &RedisServer, node_id: &str) -> bool {
    redis.conn().exists(format!("sg:node:{node_id}")).unwrap()
}

async fn scan_at(node: &Gateway, f: &str, i: usize, hdr: &[(&str, &str)]) -> Resp {
    let body = scan_body(f, "OPD1", i);
    call(&node.client, &format!("{}/v1/scans", node.base), "POST", PLATFORM, Some(&body), hdr).await.expect("scan")
}

async fn forwarded(node: &Gateway, outcome: &str) -> u64 {
    sample(&node.client, node, &format!("scangw_forwarded_total{{outcome=\"{outcome}\"}}")).await as u64
}

/// A request to a node that does not own the facility is served by the owner (its node id
/// on the answer, the fence untouched); a request that carries the hop header is served
/// where it lands, never forwarded again.
#[actix_web::test]
#[allow(clippy::await_holding_lock)] // a test-wide lock held by one runtime thread
async fn a_request_to_a_non_owner_is_served_by_the_owner_and_a_forwarded_one_is_not_forwarded_again() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let f = fid(950);
    let (redis, [a, b], [id_a, id_b]) = leased_pair(3000, &f).await;
    let r = scan_at(&a, &f, 1, &[]).await;
    assert_eq!((r.status, r.header(NODE_HEADER)), (201, Some(id_a.clone())), "{}", r.text);
    assert_eq!(fence_epoch(&redis, &f), 1);
    // Scans, a token read, a counter call and the queue, all sent to b: a answers them.
    let r = scan_at(&b, &f, 2, &[("Idempotency-Key", "fwd-2")]).await;
    assert_eq!((r.status, r.header(NODE_HEADER)), (201, Some(id_a.clone())), "{}", r.text);
    assert_eq!(num(&r.body, "token_number"), 2, "{}", r.text);
    let again = scan_at(&b, &f, 2, &[("Idempotency-Key", "fwd-2")]).await;
    assert_eq!((again.status, num(&again.body, "token_number")), (201, 2), "the key's replay: {}", again.text);
    let token = s(&r.body, "token_id").to_string();
    let got = b.call("GET", &format!("/v1/tokens/{token}"), PLATFORM, None).await;
    assert_eq!((got.status, got.header(NODE_HEADER)), (200, Some(id_a.clone())), "{}", got.text);
    let key = a.call("POST", &format!("/v1/facilities/{f}/staff-keys"), ADMIN, None).await;
    assert_eq!(key.status, 201, "{}", key.text);
    let key = s(&key.body, "key").to_string();
    let called = b.call("POST", &format!("/v1/facilities/{f}/counters/OPD1/call-next"), &key, None).await;
    assert_eq!((called.status, called.header(NODE_HEADER)), (200, Some(id_a.clone())), "{}", called.text);
    assert_eq!(num(&called.body, "token_number"), 1);
    let queue = b.call("GET", &format!("/v1/facilities/{f}/queue?counter_id=OPD1"), &key, None).await;
    assert_eq!((queue.status, queue.header(NODE_HEADER)), (200, Some(id_a.clone())), "{}", queue.text);
    let bad = scan_at(&b, &f, 3, &[("Idempotency-Key", "fwd-2")]).await;
    assert_eq!(bad.status, 422, "the owner's refusal comes back as it is: {}", bad.text);
    assert_eq!(bad.body["error"]["code"], "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(fence_epoch(&redis, &f), 1, "no request moved the facility");
    assert_eq!(forwarded(&b, "served_by_owner").await, 6, "two scans, a replay, a read, a call, the queue");
    assert_eq!(forwarded(&a, "served_by_owner").await, 0, "the owner forwarded nothing");

    // A request that was forwarded once is served where it lands, taking over if it must.
    let r = scan_at(&b, &f, 4, &[(HOP_HEADER, &id_a)]).await;
    assert_eq!((r.status, r.header(NODE_HEADER)), (201, Some(id_b.clone())), "{}", r.text);
    assert_eq!(num(&r.body, "token_number"), 3, "{}", r.text);
    assert_eq!(fence_epoch(&redis, &f), 2, "b took the facility over");
    assert_eq!(forwarded(&b, "served_by_owner").await, 6, "not forwarded again");
    // Now a forwards to b.
    let r = scan_at(&a, &f, 5, &[]).await;
    assert_eq!((r.status, r.header(NODE_HEADER), num(&r.body, "token_number")), (201, Some(id_b), 4), "{}", r.text);
    assert_eq!(fence_epoch(&redis, &f), 2);
}

/// Redis calls of one command so far (`INFO commandstats`).
fn calls_of(redis: &RedisServer, cmd: &str) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query(&mut redis.conn()).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
        .map(|rest| rest.split(',').next().unwrap().parse().unwrap())
        .unwrap_or(0)
}

/// A non-owner believes what it saw of a facility's owner for a moment (a third of the
/// lease here), then looks again at the fence and the owner's lease only: it never tries an
/// activation (which reads the whole day from Redis) for a facility it already knows is
/// owned elsewhere.
#[actix_web::test]
#[allow(clippy::await_holding_lock)] // a test-wide lock held by one runtime thread
async fn a_non_owner_rechecks_a_known_owner_without_trying_an_activation() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let f = fid(955);
    // A 300 ms lease: b believes what it saw for 100 ms.
    let (redis, [a, b], [id_a, _]) = leased_pair(300, &f).await;
    let r = scan_at(&a, &f, 0, &[]).await;
    assert_eq!((r.status, r.header(NODE_HEADER)), (201, Some(id_a.clone())), "{}", r.text);
    let r = scan_at(&b, &f, 1, &[]).await;
    assert_eq!(r.header(NODE_HEADER), Some(id_a.clone()), "{}", r.text);
    // The day reads so far: a's activation and b's one look.
    let day_reads = calls_of(&redis, "hgetall");
    let started = Instant::now();
    let mut i = 2;
    // Scans to b for well over the 100 ms b believes what it saw, several times over.
    while started.elapsed() < Duration::from_millis(600) {
        let r = scan_at(&b, &f, i, &[]).await;
        assert_eq!((r.status, r.header(NODE_HEADER)), (201, Some(id_a.clone())), "{}", r.text);
        i += 1;
    }
    assert_eq!(calls_of(&redis, "hgetall"), day_reads, "no activation was tried for {} scans", i - 2);
    assert_eq!(fence_epoch(&redis, &f), 1);
}

/// kill -9 the owner: its lease runs out, and the other node then takes the facility over
/// by itself (no failed forward) and serves it with every acknowledged token. A second
/// facility asked for before the lease ran out is taken over when the forward finds the
/// owner gone.
#[actix_web::test]
#[allow(clippy::await_holding_lock)] // a test-wide lock held by one runtime thread
async fn when_the_owner_is_killed_its_lease_expires_and_another_node_takes_over_with_nothing_lost() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (f, g) = (fid(960), fid(961));
    let (redis, [mut a, b], [id_a, id_b]) = leased_pair(2000, &f).await;
    a.register(&g).await;
    let mut acked = Vec::new();
    for i in 0..5 {
        let r = scan_at(&b, &f, i, &[]).await;
        assert_eq!((r.status, r.header(NODE_HEADER)), (201, Some(id_b.clone())), "{}", r.text);
        acked.push(s(&r.body, "token_id").to_string());
    }
    // Let a own both: hand f to a (hop header), then g by plain use.
    let r = scan_at(&a, &f, 5, &[(HOP_HEADER, "test")]).await;
    assert_eq!((r.status, r.header(NODE_HEADER)), (201, Some(id_a.clone())), "{}", r.text);
    acked.push(s(&r.body, "token_id").to_string());
    let r = scan_at(&a, &g, 100, &[]).await;
    assert_eq!((r.status, r.header(NODE_HEADER)), (201, Some(id_a.clone())), "{}", r.text);
    let epoch_f = fence_epoch(&redis, &f);

    a.signal(libc::SIGKILL);
    assert!(a.wait_exit(Duration::from_secs(5)).is_some(), "a died");
    // Before the lease runs out: b forwards, finds nobody, takes g over.
    assert!(lease_alive(&redis, &id_a), "a's lease outlives a for a while");
    let r = scan_at(&b, &g, 101, &[]).await;
    assert_eq!((r.status, r.header(NODE_HEADER)), (201, Some(id_b.clone())), "{}", r.text);
    assert_eq!(forwarded(&b, "taken_over").await, 1, "taken over after a failed forward");
    // Once it has run out, b takes f over without trying a at all.
    let started = Instant::now();
    while lease_alive(&redis, &id_a) {
        assert!(started.elapsed() < Duration::from_secs(10), "a's lease never expired");
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = scan_at(&b, &f, 6, &[]).await;
    assert_eq!((r.status, r.header(NODE_HEADER)), (201, Some(id_b.clone())), "{}", r.text);
    assert_eq!(num(&r.body, "token_number"), 7, "numbering continues: {}", r.text);
    assert_eq!(fence_epoch(&redis, &f), epoch_f + 1, "one takeover");
    assert_eq!(forwarded(&b, "taken_over").await, 1, "no forward was tried for f");
    for (n, token) in acked.iter().enumerate() {
        let got = b.call("GET", &format!("/v1/tokens/{token}"), PLATFORM, None).await;
        assert_eq!((got.status, num(&got.body, "token_number")), (200, n as u64 + 1), "{}", got.text);
    }
}

/// A node stopped gracefully gives its lease up: the other node takes its facilities over at
/// once, without waiting for the lease or trying a forward.
#[actix_web::test]
#[allow(clippy::await_holding_lock)] // a test-wide lock held by one runtime thread
async fn a_gracefully_stopped_owner_gives_its_lease_up_and_another_node_takes_over_at_once() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let f = fid(970);
    // A lease far longer than the test: only giving it up lets b take over.
    let (redis, [mut a, b], [id_a, id_b]) = leased_pair(120_000, &f).await;
    let r = scan_at(&a, &f, 1, &[]).await;
    assert_eq!((r.status, r.header(NODE_HEADER)), (201, Some(id_a.clone())), "{}", r.text);
    let token = s(&r.body, "token_id").to_string();
    assert!(lease_alive(&redis, &id_a));
    a.signal(libc::SIGTERM);
    assert!(a.wait_exit(Duration::from_secs(15)).is_some_and(|st| st.success()), "a stopped cleanly");
    assert!(!lease_alive(&redis, &id_a), "a gave its lease up");
    let r = scan_at(&b, &f, 3, &[]).await;
    assert_eq!((r.status, r.header(NODE_HEADER)), (201, Some(id_b.clone())), "{}", r.text);
    assert_eq!(num(&r.body, "token_number"), 2, "{}", r.text);
    assert_eq!(fence_epoch(&redis, &f), 2, "one takeover");
    // With a's lease still in Redis, b would have tried a and found it gone.
    assert_eq!(forwarded(&b, "taken_over").await, 0, "taken over because the lease was gone");
    let got = b.call("GET", &format!("/v1/tokens/{token}"), PLATFORM, None).await;
    assert_eq!((got.status, num(&got.body, "token_number")), (200, 1), "{}", got.text);
}

/// A display board watched on a node that does not own its facility shows the owner's
/// queue, read from the owner on every poll, and never takes the facility over.
#[actix_web::test]
#[allow(clippy::await_holding_lock)] // a test-wide lock held by one runtime thread
async fn a_board_watched_on_a_non_owner_reads_the_owner_and_leaves_the_facility_where_it_is() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let f = fid(980);
    let (redis, [a, b], [id_a, _]) = leased_pair(3000, &f).await;
    let r = scan_at(&a, &f, 1, &[]).await;
    assert_eq!((r.status, r.header(NODE_HEADER)), (201, Some(id_a.clone())), "{}", r.text);
    let mut hall = b.client.get(format!("{}/facilities/{f}/board/events", b.base)).send().await.unwrap();
    assert_eq!(hall.status().as_u16(), 200);
    let first = wait_for_event(&mut hall, "one waiting", |v| v["counters"][0]["waiting"] == 1).await;
    assert_eq!(first["name"], format!("District Hospital {f}"), "{first}");
    assert_eq!(first["counters"][0]["kind"], "opd");
    for i in 2..4 {
        let r = scan_at(&a, &f, i, &[]).await;
        assert_eq!((r.status, r.header(NODE_HEADER)), (201, Some(id_a.clone())), "{}", r.text);
    }
    let now = wait_for_event(&mut hall, "three waiting", |v| v["counters"][0]["waiting"] == 3).await;
    assert_eq!(now["counters"][0]["next"][2], "OPD1-003", "{now}");
    assert!(!now.to_string().contains("abha"), "numbers only: {now}");
    assert_eq!(fence_epoch(&redis, &f), 1, "the board's polls moved nothing");
    // The owner still serves scans without a takeover.
    let r = scan_at(&a, &f, 4, &[]).await;
    assert_eq!((r.status, num(&r.body, "token_number")), (201, 4), "{}", r.text);
    assert_eq!(fence_epoch(&redis, &f), 1);
    // The internal route is for nodes only.
    let anon = http(&b.client, "GET", &format!("{}/internal/v1/boards/{f}", a.base), None, None, None, &[]).await;
    assert_eq!(anon.unwrap().status, 401);
}

// ---------------------------------------------------------------------------------------
// Client addresses and the public pages' limit, through nginx
// ---------------------------------------------------------------------------------------

/// Page requests one client address may make per minute in these tests.
const PAGE_ALLOWANCE: usize = 5;
/// The shipped edge config's header line, and the appending form a proxy behind another
/// proxy would use.
const XFF_EDGE: &str = "proxy_set_header X-Forwarded-For $remote_addr;";
const XFF_APPEND: &str = "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;";

/// A client whose connections come from `addr` (any 127/8 address is loopback on Linux), so
/// nginx (trusted, on 127.0.0.1) sees a client address that is not its own.
fn client_from(addr: &str) -> awc::Client {
    awc::Client::builder()
        .timeout(Duration::from_secs(60))
        .connector(awc::Connector::new().local_address(addr.parse().unwrap()).timeout(Duration::from_secs(10)))
        .finish()
}

/// One node (nginx on 127.0.0.1 its only trusted proxy, pages limited to
/// [`PAGE_ALLOWANCE`] a minute) behind nginx running the example with `edits`.
async fn paged_node(redis: &RedisServer, edits: &[(&str, &str)]) -> (Gateway, Nginx) {
    let allowance = PAGE_ALLOWANCE.to_string();
    let mut env = node_env(None, Leases::Off);
    env.push(("SCANGW_LIMIT_PAGE_PER_MIN".into(), allowance));
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let node = Gateway::start(redis, &refs);
    node.register(&fid(900)).await;
    let nginx = Nginx::start_edited(&[port_of(&node.base)], edits);
    (node, nginx)
}

async fn board(client: &awc::Client, nginx: &Nginx, xff: Option<&str>) -> Resp {
    let hdr: Vec<(&str, &str)> = xff.map(|v| ("X-Forwarded-For", v)).into_iter().collect();
    http(client, "GET", &format!("{}/facilities/{}/board", nginx.base(), fid(900)), None, None, None, &hdr)
        .await
        .expect("board page through nginx")
}

fn assert_page_limited(r: &Resp) {
    assert_eq!(r.status, 429, "{}", r.text);
    assert_eq!(r.body["error"]["code"], "RATE_LIMITED_PAGE", "{}", r.text);
    let retry: u64 = r.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
}

/// A client sends a new forged `X-Forwarded-For` with every request. If a forged value
/// became its limiter key, each request would start a fresh allowance and it would never
/// be refused; it is refused after its allowance, and another client claiming the first
/// one's address in the header is not.
async fn forged_forwarded_for_is_never_the_key(edits: &[(&str, &str)]) {
    let redis = RedisServer::start();
    let (_node, nginx) = paged_node(&redis, edits).await;
    let me = client_from("127.0.0.2");
    for i in 0..PAGE_ALLOWANCE {
        let forged = format!("198.51.100.{i}, 127.0.0.{}", 100 + i);
        let r = board(&me, &nginx, Some(&forged)).await;
        assert_eq!(r.status, 200, "request {i} within the allowance: {}", r.text);
    }
    for forged in ["203.0.113.77", "127.0.0.1", "unknown", "::1, 198.51.100.200"] {
        assert_page_limited(&board(&me, &nginx, Some(forged)).await);
    }
    assert_page_limited(&board(&me, &nginx, None).await);
    // Another client naming the first one's address in the header is limited as itself.
    let other = client_from("127.0.0.3");
    let r = board(&other, &nginx, Some("127.0.0.2")).await;
    assert_eq!(r.status, 200, "the forged address did not become the key: {}", r.text);
}

#[actix_web::test]
#[allow(clippy::await_holding_lock)] // a test-wide lock held by one runtime thread
async fn forged_forwarded_for_through_the_shipped_nginx_never_becomes_the_limiter_key() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let example = std::fs::read_to_string(repo_file("deploy/nginx/scan-gateway.conf.example")).unwrap();
    assert!(example.contains(XFF_EDGE) && !example.contains(XFF_APPEND), "the edge config replaces the header");
    forged_forwarded_for_is_never_the_key(&[]).await;
}

/// The gateway's own walk (rightmost address that is not a trusted proxy), with an nginx
/// that passes the client's header on and appends to it.
#[actix_web::test]
#[allow(clippy::await_holding_lock)] // a test-wide lock held by one runtime thread
async fn forged_forwarded_for_through_an_appending_nginx_never_becomes_the_limiter_key() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    forged_forwarded_for_is_never_the_key(&[(XFF_EDGE, XFF_APPEND)]).await;
}

/// Redis `GET` calls so far (`INFO commandstats`): what a board page costs.
fn get_calls(redis: &RedisServer) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query(&mut redis.conn()).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_get:calls="))
        .map(|rest| rest.split(',').next().unwrap().parse().unwrap())
        .unwrap_or(0)
}

#[actix_web::test]
#[allow(clippy::await_holding_lock)] // a test-wide lock held by one runtime thread
async fn hammering_the_board_page_through_nginx_gets_429_after_the_allowance() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let redis = RedisServer::start();
    let (_node, nginx) = paged_node(&redis, &[]).await;
    let me = client_from("127.0.0.2");
    for i in 0..PAGE_ALLOWANCE {
        let r = board(&me, &nginx, None).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text);
    }
    let reads = get_calls(&redis);
    for _ in 0..50 {
        assert_page_limited(&board(&me, &nginx, None).await);
    }
    assert_eq!(get_calls(&redis), reads, "a refused page read nothing from Redis");
    // The other public pages and streams count against the same allowance.
    for path in ["/leaderboard", "/leaderboard/events", &format!("/facilities/{}/board/events", fid(900))] {
        let r = http(&me, "GET", &format!("{}{path}", nginx.base()), None, None, None, &[]).await.unwrap();
        assert_page_limited(&r);
    }
    let other = client_from("127.0.0.3");
    assert_eq!(board(&other, &nginx, None).await.status, 200, "another client has its own allowance");
}
