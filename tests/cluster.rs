//! The real binary on a real 3-master Redis Cluster (core flow and a short concurrent load,
//! checked key by key on every master), and the leaderboard applier's crash safety on a
//! single Redis: a gateway killed with -9 before applying, its counts applied by the next.
#[path = "support/gateway.rs"]
mod gateway;
#[path = "api/helpers.rs"]
mod helpers;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::future::join_all;

use gateway::*;
use helpers::*;

/// Three cluster-enabled redis-servers in one temp dir, joined by `redis-cli --cluster create`.
struct Cluster {
    ports: Vec<u16>,
    _dir: tempfile::TempDir,
    children: Vec<Child>,
}

/// A free port whose cluster bus port (+10000) is free too.
fn cluster_port(taken: &[u16]) -> u16 {
    loop {
        let p = free_port();
        if p < 55_000 && !taken.contains(&p) && std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir for the cluster");
        let mut ports = Vec::new();
        let mut children = Vec::new();
        for i in 0..3 {
            let port = cluster_port(&ports);
            let node_dir = dir.path().join(format!("node{i}"));
            std::fs::create_dir_all(&node_dir).unwrap();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--cluster-enabled", "yes"])
                .args(["--cluster-config-file", "nodes.conf", "--appendonly", "yes", "--save", ""])
                .args(["--dir", node_dir.to_str().unwrap()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-server");
            ports.push(port);
            children.push(child);
        }
        let cluster = Cluster { ports, _dir: dir, children };
        for p in &cluster.ports {
            cluster.poll(Duration::from_secs(15), &format!("node {p} answers PING"), || {
                redis::cmd("PING").query::<String>(&mut cluster.node(*p)?).ok()
            });
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for p in &cluster.ports {
            create.arg(format!("127.0.0.1:{p}"));
        }
        let out = create.args(["--cluster-replicas", "0", "--cluster-yes"]).output().expect("run redis-cli");
        assert!(out.status.success(), "cluster create failed: {}", String::from_utf8_lossy(&out.stdout));
        for p in &cluster.ports {
            cluster.poll(Duration::from_secs(30), &format!("node {p} reports cluster_state:ok"), || {
                let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut cluster.node(*p)?).ok()?;
                info.contains("cluster_state:ok").then_some(())
            });
        }
        cluster
    }

    fn poll<T>(&self, limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for: {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn node(&self, port: u16) -> Option<redis::Connection> {
        redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?.get_connection().ok()
    }

    fn url_list(&self) -> String {
        self.ports.iter().map(|p| format!("redis://127.0.0.1:{p}")).collect::<Vec<_>>().join(",")
    }

    /// A cluster-aware connection for inspection (follows slots to their master).
    fn conn(&self) -> redis::cluster::ClusterConnection {
        let nodes: Vec<String> = self.ports.iter().map(|p| format!("redis://127.0.0.1:{p}")).collect();
        redis::cluster::ClusterClient::new(nodes).unwrap().get_connection().expect("cluster connection")
    }

    /// Keys matching `pattern` on one master.
    fn keys_on(&self, port: u16, pattern: &str) -> Vec<String> {
        redis::cmd("KEYS").arg(pattern).query(&mut self.node(port).expect("node")).expect("KEYS")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The leaderboard's facility counts for `date` (`all` or a day), as the API shows them.
async fn board_counts(gw: &Gateway, date: &str) -> BTreeMap<String, u64> {
    let r = gw.call("GET", &format!("/v1/leaderboards/facilities?date={date}&limit=1000"), ADMIN, None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["rows"].as_array().unwrap().iter().map(|row| (s(row, "id").to_string(), num(row, "tokens"))).collect()
}

/// Polls the boards (both the day and all-time) until they equal `want`, with a deadline.
async fn boards_become(gw: &Gateway, day: &str, want: &BTreeMap<String, u64>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (d, all) = (board_counts(gw, day).await, board_counts(gw, "all").await);
        if &d == want && &all == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "leaderboards never became exact:\n day {d:?}\n all {all:?}\n want {want:?}"
        );
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Numbers stored per counter for one facility's day, read from the facility's day hash.
fn stored_numbers(conn: &mut impl redis::ConnectionLike, facility: &str, day: &str) -> BTreeMap<String, Vec<u32>> {
    let fields: Vec<String> =
        redis::cmd("HKEYS").arg(format!("sg:{{{facility}}}:d:{day}:t")).query(conn).expect("HKEYS");
    let mut out: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for f in fields {
        let (counter, n) = f.rsplit_once('#').expect("token field");
        out.entry(counter.to_string()).or_default().push(n.parse().unwrap());
    }
    out.values_mut().for_each(|v| v.sort_unstable());
    out
}

#[actix_web::test]
async fn the_gateway_runs_unchanged_on_a_three_master_redis_cluster() {
    let cluster = Cluster::start();
    let gw = Gateway::start_url(&cluster.url_list(), &[("SCANGW_LEADERBOARD_APPLY_MS", "100")]);
    let ready = gw.call("GET", "/readyz", ADMIN, None).await;
    assert_eq!(ready.status, 200, "{}", ready.text);
    let facilities: Vec<String> = (0..40).map(|i| fid(9000 + i)).collect();
    join_all(facilities.iter().map(|f| gw.register(f))).await;

    // Core flow on one facility.
    let f0 = &facilities[0];
    let first = gw.call("POST", "/v1/scans", PLATFORM, Some(&scan_body(f0, "OPD1", 1))).await;
    assert_eq!(first.status, 201, "{}", first.text);
    assert_eq!(num(&first.body, "token_number"), 1);
    let again = gw.call("POST", "/v1/scans", PLATFORM, Some(&scan_body(f0, "OPD1", 1))).await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!((s(&again.body, "token_id"), again.body["repeat"].as_bool()), (s(&first.body, "token_id"), Some(true)));
    let day = s(&first.body, "service_date").to_string();
    let key = gw.call("POST", &format!("/v1/facilities/{f0}/staff-keys"), ADMIN, None).await;
    assert_eq!(key.status, 201, "{}", key.text);
    let staff = s(&key.body, "key").to_string();
    let called = gw.call("POST", &format!("/v1/facilities/{f0}/counters/OPD1/call-next"), &staff, None).await;
    assert_eq!(called.status, 200, "{}", called.text);
    assert_eq!(s(&called.body, "token_id"), s(&first.body, "token_id"));
    let status = gw.call("GET", &format!("/v1/tokens/{}", s(&first.body, "token_id")), PLATFORM, None).await;
    assert_eq!((status.status, s(&status.body, "status")), (200, "called"), "{}", status.text);

    // A short concurrent load over every facility, two counters each.
    let plan: Vec<(String, &str, usize)> =
        (0..480).map(|i| (facilities[i % 40].clone(), ["OPD1", "Pharmacy"][(i / 40) % 2], 100 + i)).collect();
    let answers = join_all(plan.iter().map(|(f, c, p)| {
        let gw = &gw;
        async move { (f.clone(), *c, gw.call("POST", "/v1/scans", PLATFORM, Some(&scan_body(f, c, *p))).await) }
    }))
    .await;
    let mut acked: Vec<(String, String, u64, String)> =
        vec![(f0.clone(), "OPD1".into(), 1, s(&first.body, "token_id").to_string())];
    for (f, c, r) in &answers {
        match r.status {
            201 => acked.push((f.clone(), c.to_string(), num(&r.body, "token_number"), s(&r.body, "token_id").into())),
            st => assert_eq!(st, 503, "only overload may refuse a scan: {}", r.text),
        }
    }
    assert!(acked.len() > 400, "most scans were answered with a token: {}", acked.len());

    // The facilities' keys landed on all three masters.
    for p in &cluster.ports {
        let n = cluster.keys_on(*p, &format!("sg:{{*}}:d:{day}:t")).len();
        assert!(n > 0, "master {p} holds no facility day: the load did not spread over the cluster");
    }

    // Every acknowledged token is stored with its number, numbers contiguous from 1.
    let mut conn = cluster.conn();
    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    let mut seen: BTreeSet<(String, String, u64)> = BTreeSet::new();
    for (f, c, n, id) in &acked {
        assert!(seen.insert((f.clone(), c.clone(), *n)), "number {n} acknowledged twice at {f}/{c}");
        *want.entry(f.clone()).or_default() += 1;
        let got = gw.call("GET", &format!("/v1/tokens/{id}"), PLATFORM, None).await;
        assert_eq!((got.status, num(&got.body, "token_number")), (200, *n), "{}", got.text);
    }
    for f in &facilities {
        for (counter, numbers) in stored_numbers(&mut conn, f, &day) {
            let expect: Vec<u32> = (1..=numbers.len() as u32).collect();
            assert_eq!(numbers, expect, "{f}/{counter}: numbers contiguous from 1");
            let acked_here = acked.iter().filter(|(af, ac, _, _)| af == f && *ac == counter).count();
            assert_eq!(numbers.len(), acked_here, "{f}/{counter}: stored = acknowledged");
        }
    }

    // The leaderboards count exactly the tokens issued, once the applier caught up.
    boards_become(&gw, &day, &want).await;
    // A state's ranking is read (and, with its total member removed, rebuilt from the
    // district rankings) by one script on the `{lb}` slot. Every facility is in KA/Mysuru.
    let _: () = redis::cmd("ZREM").arg("lb:{lb}:all:all:f:s:KA").arg("*").query(&mut conn).expect("ZREM");
    for date in [day.as_str(), "all", "all"] {
        let r =
            gw.call("GET", &format!("/v1/leaderboards/facilities?date={date}&state=KA&limit=1000"), ADMIN, None).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let got: BTreeMap<String, u64> = r.body["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| (s(row, "id").to_string(), num(row, "tokens")))
            .collect();
        assert_eq!(got, want, "the state's ranking on {date}");
    }
    let out = gw.output();
    assert!(!out.contains("CrossSlot") && !out.contains("CROSSSLOT"), "no cross-slot errors:\n{out}");
}

#[actix_web::test]
async fn leaderboards_become_exact_after_the_owning_gateway_is_killed_before_applying() {
    let redis = RedisServer::start();
    // An apply interval far beyond the test: this gateway never applies after its start.
    let a = Gateway::start(&redis, &[("SCANGW_LEADERBOARD_APPLY_MS", "3600000")]);
    let facilities: Vec<String> = (0..5).map(|i| fid(9100 + i)).collect();
    for f in &facilities {
        a.register(f).await;
    }
    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    let mut day = String::new();
    for i in 0..60 {
        let f = &facilities[i % 5];
        let r = a.call("POST", "/v1/scans", PLATFORM, Some(&scan_body(f, "OPD1", i))).await;
        assert_eq!(r.status, 201, "{}", r.text);
        day = s(&r.body, "service_date").to_string();
        *want.entry(f.clone()).or_default() += 1;
    }
    assert!(board_counts(&a, &day).await.is_empty(), "the premise: nothing applied before the crash");
    a.signal(libc::SIGKILL);
    let mut a = a;
    assert!(a.wait_exit(Duration::from_secs(10)).is_some(), "gateway A did not die");

    // A new gateway owns none of these facilities: only its sweep of the dirty set finds them.
    let b = Gateway::start(&redis, &[("SCANGW_LEADERBOARD_APPLY_MS", "50"), ("SCANGW_IDLE_TIMEOUT_S", "1")]);
    boards_become(&b, &day, &want).await;
    let dirty: u64 = redis::cmd("HLEN").arg("lb:{lb}:dirty").query(&mut redis.conn()).unwrap();
    assert_eq!(dirty, 5, "a crashed owner never released: its facilities stay swept");

    // New owners on B release when they passivate; the sweep then forgets the facilities.
    for (i, f) in facilities.iter().enumerate() {
        let r = b.call("POST", "/v1/scans", PLATFORM, Some(&scan_body(f, "OPD2", 1000 + i))).await;
        assert_eq!(r.status, 201, "{}", r.text);
        *want.entry(f.clone()).or_default() += 1;
    }
    boards_become(&b, &day, &want).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let dirty: u64 = redis::cmd("HLEN").arg("lb:{lb}:dirty").query(&mut redis.conn()).unwrap();
        if dirty == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "released facilities never left the dirty set ({dirty} left)");
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = b.call("GET", "/metrics", ADMIN, None).await.text;
    let applied: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("scangw_leaderboard_applied_tokens_total "))
        .expect("applied tokens metric")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(applied, 65.0, "B applied A's 60 tokens and its own 5, each once");
    assert!(metrics.lines().any(|l| l.starts_with("scangw_leaderboard_apply_lag_seconds ")), "lag metric exported");
}

#[actix_web::test]
async fn a_new_owner_applies_what_a_killed_owner_counted_in_other_kinds() {
    let redis = RedisServer::start();
    // B runs first, so its start-up sweep has already passed, and its next one (25 passes
    // of 1 s) skips the facility anyway once B owns it: only B's own passes can apply it.
    let b = Gateway::start(&redis, &[("SCANGW_LEADERBOARD_APPLY_MS", "1000")]);
    // A never applies after its start.
    let a = Gateway::start(&redis, &[("SCANGW_LEADERBOARD_APPLY_MS", "3600000")]);
    let f = fid(9200);
    a.register(&f).await;
    let mut day = String::new();
    for (i, counter) in ["OPD1", "Pharmacy", "Pharmacy"].iter().enumerate() {
        let r = a.call("POST", "/v1/scans", PLATFORM, Some(&scan_body(&f, counter, i))).await;
        assert_eq!(r.status, 201, "{}", r.text);
        day = s(&r.body, "service_date").to_string();
    }
    a.signal(libc::SIGKILL);
    let mut a = a;
    assert!(a.wait_exit(Duration::from_secs(10)).is_some(), "gateway A did not die");
    // B takes the facility over with an OPD token only: its write returns the OPD total,
    // but A's pharmacy tokens must reach the boards too.
    let r = b.call("POST", "/v1/scans", PLATFORM, Some(&scan_body(&f, "OPD1", 100))).await;
    assert_eq!(r.status, 201, "{}", r.text);
    boards_become(&b, &day, &BTreeMap::from([(f.clone(), 4)])).await;
}

/// What one facility's staff loop saw: call-next answers with a token, call-nexts of
/// unknown outcome (503), and completes answered 409.
#[derive(Default)]
struct DeskLog {
    called: Vec<String>,
    unknown_calls: usize,
    complete_409: Vec<String>,
}

/// A desk's day under connection kills: call the next patient, complete them, until
/// nobody waits. A 503 is an unknown outcome: a call-next is counted as such and tried
/// again; a complete is checked (done by the first try?) and tried again only if not.
async fn desk(gw: &Gateway, f: &str, staff: &str, deadline: Instant) -> DeskLog {
    let mut log = DeskLog::default();
    loop {
        assert!(Instant::now() < deadline, "{f}: the desk did not get through its queue in time");
        let r = gw.call("POST", &format!("/v1/facilities/{f}/counters/OPD1/call-next"), staff, None).await;
        match r.status {
            204 => return log,
            503 => {
                log.unknown_calls += 1;
                continue;
            }
            200 => {}
            st => panic!("{f}: call-next answered {st}: {}", r.text),
        }
        let id = s(&r.body, "token_id").to_string();
        log.called.push(id.clone());
        loop {
            assert!(Instant::now() < deadline, "{f}: complete of {id} never went through");
            let c = gw.call("POST", &format!("/v1/tokens/{id}/complete"), staff, None).await;
            match c.status {
                200 => break,
                409 => {
                    log.complete_409.push(id.clone());
                    break;
                }
                503 => {
                    // Look before acting again (a 503 of the look itself is no answer yet).
                    let g = loop {
                        let g = gw.call("GET", &format!("/v1/tokens/{id}"), staff, None).await;
                        if g.status != 503 {
                            break g;
                        }
                        assert!(Instant::now() < deadline, "{f}: {id} never readable");
                    };
                    assert_eq!(g.status, 200, "{}", g.text);
                    if s(&g.body, "status") == "completed" {
                        break;
                    }
                }
                st => panic!("{f}: complete answered {st}: {}", c.text),
            }
        }
    }
}

/// Issues `n` tokens at `f`'s OPD1 to fresh patients from `first` on; a 503 (the gateway
/// reconnecting after the kills) is tried again: a scan run twice finds its token.
async fn fill_queue(gw: &Gateway, f: &str, first: usize, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut ids = Vec::new();
    for p in first..first + n {
        let r = loop {
            let r = gw.call("POST", "/v1/scans", PLATFORM, Some(&scan_body(f, "OPD1", p))).await;
            if r.status != 503 || Instant::now() > deadline {
                break r;
            }
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(r.status == 201 || r.status == 200, "{}", r.text);
        ids.push(s(&r.body, "token_id").to_string());
    }
    ids
}

/// Counter operations are exactly once although the cluster client resends a pipeline
/// whose connection dropped: while every master keeps killing the gateway's connections,
/// each call-next calls one patient (no second patient behind an answer, no token called
/// twice), and a complete never answers 409 for the work it did itself. A resend of an
/// applied write needs a kill between the script's execution and its reply, which one round
/// of a few hundred operations does not always catch: rounds go on until the gateway has
/// seen a few such resends (its metric), ten at most.
#[actix_web::test]
async fn counter_operations_stay_exactly_once_while_cluster_connections_are_killed() {
    let cluster = Cluster::start();
    let gw = Gateway::start_url(&cluster.url_list(), &[]);
    let facilities: Vec<String> = (0..8).map(|i| fid(9300 + i)).collect();
    join_all(facilities.iter().map(|f| gw.register(f))).await;
    let mut staff = BTreeMap::new();
    for f in &facilities {
        let key = gw.call("POST", &format!("/v1/facilities/{f}/staff-keys"), ADMIN, None).await;
        assert_eq!(key.status, 201, "{}", key.text);
        staff.insert(f.clone(), s(&key.body, "key").to_string());
    }
    let resends = || async {
        let m = gw.call("GET", "/metrics", ADMIN, None).await.text;
        m.lines()
            .find_map(|l| l.strip_prefix("scangw_redis_write_resends_total "))
            .map_or(0.0, |v| v.trim().parse::<f64>().unwrap())
    };
    let (mut kills, mut unknown) = (0, 0);
    for round in 0..10 {
        if resends().await >= 3.0 {
            break;
        }
        let issued: Vec<Vec<String>> =
            join_all(facilities.iter().enumerate().map(|(k, f)| fill_queue(&gw, f, k * 10_000 + round * 100, 40)))
                .await;

        // Every master kills its normal clients (the gateway's connections) over and over.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ports = cluster.ports.clone();
        let killer = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut kills = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for p in &ports {
                        let Ok(mut c) =
                            redis::Client::open(format!("redis://127.0.0.1:{p}")).and_then(|c| c.get_connection())
                        else {
                            continue;
                        };
                        if let Ok(n) = redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("normal").query::<u64>(&mut c) {
                            kills += n;
                        }
                    }
                    // Paces the kills (not a wait for anything): connections are re-made between.
                    std::thread::sleep(Duration::from_millis(10));
                }
                kills
            })
        };
        let deadline = Instant::now() + Duration::from_secs(180);
        let logs = join_all(facilities.iter().map(|f| desk(&gw, f, &staff[f], deadline))).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        kills += killer.join().unwrap();

        for ((f, log), ids) in facilities.iter().zip(&logs).zip(&issued) {
            let answered: BTreeSet<&String> = log.called.iter().collect();
            assert_eq!(answered.len(), log.called.len(), "{f}: a token was answered to two call-nexts");
            assert!(log.complete_409.is_empty(), "{f}: complete answered 409 for its own work: {:?}", log.complete_409);
            // Every token that was called: each once, and each behind an answer or a 503.
            let mut called_silently = 0;
            for id in ids {
                // The gateway reconnects after the last kill: a 503 first is no answer yet.
                let t = loop {
                    let t = gw.call("GET", &format!("/v1/tokens/{id}"), &staff[f], None).await;
                    if t.status != 503 || Instant::now() > deadline {
                        break t;
                    }
                    actix_rt::time::sleep(Duration::from_millis(20)).await;
                };
                assert_eq!(t.status, 200, "{}", t.text);
                let calls = t.body["history"].as_array().unwrap().iter().filter(|h| h["event"] == "called").count();
                assert!(calls <= 1, "{f}: token {id} was called {calls} times: {}", t.text);
                if calls == 1 && !answered.contains(id) {
                    called_silently += 1;
                }
            }
            assert!(
                called_silently <= log.unknown_calls,
                "{f}: {called_silently} patients called behind no answer, but only {} call-nexts had an unknown outcome",
                log.unknown_calls
            );
            unknown += log.unknown_calls;
        }
    }
    let resent = resends().await;
    println!("connection kills: {kills}; writes resent after they applied: {resent}; call-nexts of unknown outcome: {unknown}");
    assert!(resent > 0.0, "the premise: the client resent writes that had applied ({kills} connection kills)");
    let out = gw.output();
    assert!(!out.contains("CrossSlot") && !out.contains("CROSSSLOT"), "no cross-slot errors:\n{out}");
}

/// On a cluster a counter operation refused by the fence is not run again: the client may
/// have resent a copy of an applied write, so its outcome is unknown, and a rerun could call
/// a second patient. Gateway A owns the facility, gateway B takes it over; A's call-next,
/// made by A's stale owner, is answered 503 (never a 200 from a silent rerun) and calls
/// nobody; the staff member's retry then calls the first patient, once.
#[actix_web::test]
async fn a_fenced_counter_operation_on_a_cluster_is_answered_503_and_not_run_again() {
    let cluster = Cluster::start();
    let a = Gateway::start_url(&cluster.url_list(), &[]);
    let b = Gateway::start_url(&cluster.url_list(), &[]);
    let f = fid(9400);
    a.register(&f).await;
    let key = a.call("POST", &format!("/v1/facilities/{f}/staff-keys"), ADMIN, None).await;
    assert_eq!(key.status, 201, "{}", key.text);
    let staff = s(&key.body, "key").to_string();
    let first = a.call("POST", "/v1/scans", PLATFORM, Some(&scan_body(&f, "OPD1", 1))).await;
    assert_eq!(first.status, 201, "{}", first.text);
    // B takes the facility over (any request activates it there); A's owner is now stale.
    let second = b.call("POST", "/v1/scans", PLATFORM, Some(&scan_body(&f, "OPD1", 2))).await;
    assert_eq!((second.status, num(&second.body, "token_number")), (201, 2), "{}", second.text);

    let call = format!("/v1/facilities/{f}/counters/OPD1/call-next");
    let fenced = a.call("POST", &call, &staff, None).await;
    assert_eq!(
        (fenced.status, fenced.body["error"]["code"].as_str()),
        (503, Some("STORE_UNAVAILABLE")),
        "{}",
        fenced.text
    );
    let token = b.call("GET", &format!("/v1/tokens/{}", s(&first.body, "token_id")), PLATFORM, None).await;
    assert_eq!(s(&token.body, "status"), "waiting", "the fenced call-next called nobody: {}", token.text);

    let retry = a.call("POST", &call, &staff, None).await;
    assert_eq!(retry.status, 200, "{}", retry.text);
    assert_eq!(s(&retry.body, "token_id"), s(&first.body, "token_id"), "the retry calls the first patient");
    let after = b.call("GET", &format!("/v1/tokens/{}", s(&second.body, "token_id")), PLATFORM, None).await;
    assert_eq!(s(&after.body, "status"), "waiting", "and nobody else: {}", after.text);
}

/// Issue 36 item 1 on a Redis Cluster, where a node's lease key lives in another slot than
/// the facility's fence: the activation reads the owner's lease first, then claims the
/// facility on condition that the owner is still the one it checked. A request to the
/// other gateway is served by the owner and moves nothing; one forwarded once (the hop
/// header) takes the facility over, and the first owner then forwards to the new one.
#[actix_web::test]
async fn with_leases_on_a_cluster_a_non_owner_forwards_to_the_owner() {
    let cluster = Cluster::start();
    let leases = [("SCANGW_ADVERTISE_URL", "auto")];
    let a = Gateway::start_url(&cluster.url_list(), &leases);
    let b = Gateway::start_url(&cluster.url_list(), &leases);
    let f = fid(9500);
    a.register(&f).await;
    let epoch = || -> u64 {
        let e: Option<u64> = redis::Commands::hget(&mut cluster.conn(), format!("sg:{{{f}}}:fence"), "e").unwrap();
        e.unwrap_or(0)
    };
    let node = |r: &Resp| r.header("X-Scangw-Node").expect("the serving node");
    let first = a.call("POST", "/v1/scans", PLATFORM, Some(&scan_body(&f, "OPD1", 1))).await;
    assert_eq!(first.status, 201, "{}", first.text);
    let owner = node(&first);
    for i in 2..5 {
        let r = b.call("POST", "/v1/scans", PLATFORM, Some(&scan_body(&f, "OPD1", i))).await;
        assert_eq!((r.status, num(&r.body, "token_number")), (201, i as u64), "{}", r.text);
        assert_eq!(node(&r), owner, "served by the owner");
    }
    assert_eq!(epoch(), 1, "nothing moved");
    let hop = [("X-Scangw-Forwarded-By", owner.as_str())];
    let body = serde_json::to_vec(&scan_body(&f, "OPD1", 5)).unwrap();
    let url = format!("{}/v1/scans", b.base);
    let r = http(&b.client, "POST", &url, Some(PLATFORM), Some("application/json"), Some(body), &hop).await.unwrap();
    assert_eq!((r.status, num(&r.body, "token_number")), (201, 5), "{}", r.text);
    let taker = node(&r);
    assert_ne!(taker, owner, "served where it landed");
    assert_eq!(epoch(), 2, "taken over once");
    let r = a.call("POST", "/v1/scans", PLATFORM, Some(&scan_body(&f, "OPD1", 6))).await;
    assert_eq!((r.status, num(&r.body, "token_number"), node(&r)), (201, 6, taker), "{}", r.text);
    assert_eq!(epoch(), 2);
}
