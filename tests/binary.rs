//! Tests that drive the real compiled binary: kill -9 mid-load, SIGTERM with requests in
//! flight, startup configuration errors, the `facilities import` command, and logs (the
//! national protocol through the binary: tests/protocol_binary.rs).
#[path = "support/gateway.rs"]
mod gateway;
#[path = "api/helpers.rs"]
mod helpers;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::json;

use gateway::*;
use helpers::*;

/// Runs a command with a deadline, returning (status, stdout, stderr).
fn run_with_deadline(mut cmd: Command, limit: Duration) -> (ExitStatus, String, String) {
    let mut child =
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn binary");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, t_out.join().unwrap(), t_err.join().unwrap())
}

/// A served gateway process.
/// Server-side ESTABLISHED TCP connections on `port` (from /proc/net/tcp).
fn established_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let local = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.len() > 3 && cols[1].ends_with(&local) && cols[3] == "01"
        })
        .count()
}

#[actix_web::test]
async fn kill_dash_nine_mid_load_loses_no_acknowledged_token_and_reuses_no_number() {
    let redis = RedisServer::start();
    let mut gw = Gateway::start(&redis, &[]);
    let facilities: Vec<String> = (0..4).map(|i| fid(500 + i)).collect();
    for f in &facilities {
        gw.register(f).await;
    }
    let counters = ["OPD1", "Pharmacy"];

    let acked: RefCell<Vec<(String, String, u64, String)>> = RefCell::new(Vec::new());
    let killed = Cell::new(false);
    let early_errors: RefCell<Vec<String>> = RefCell::new(Vec::new());
    let url = format!("{}/v1/scans", gw.base);

    let loops = join_all((0..20usize).map(|k| {
        let (acked, killed, early_errors, url, client) = (&acked, &killed, &early_errors, &url, gw.client.clone());
        let facilities = &facilities;
        async move {
            for i in 0..2000usize {
                if killed.get() {
                    break;
                }
                let f = &facilities[(k + i) % facilities.len()];
                let c = counters[(k / 4 + i) % 2];
                let body = serde_json::to_vec(&scan_body(f, c, k * 100_000 + i)).unwrap();
                match http(&client, "POST", url, Some(PLATFORM), Some("application/json"), Some(body), &[]).await {
                    Ok(r) if r.status == 201 => {
                        acked.borrow_mut().push((
                            f.clone(),
                            c.to_string(),
                            num(&r.body, "token_number"),
                            s(&r.body, "token_id").into(),
                        ));
                    }
                    Ok(r) if r.status == 503 => {}
                    Ok(r) => {
                        if !killed.get() {
                            early_errors.borrow_mut().push(format!("{}: {}", r.status, r.text));
                        }
                    }
                    Err(e) => {
                        if !killed.get() {
                            early_errors.borrow_mut().push(format!("request error before the kill: {e}"));
                        }
                        break;
                    }
                }
            }
        }
    }));
    let killer = async {
        let deadline = Instant::now() + Duration::from_secs(60);
        while acked.borrow().len() < 400 {
            assert!(Instant::now() < deadline, "load never reached 400 acknowledged scans");
            actix_rt::time::sleep(Duration::from_millis(5)).await;
        }
        gw.signal(libc::SIGKILL);
        killed.set(true);
    };
    futures_util::future::join(loops, killer).await;
    assert!(gw.wait_exit(Duration::from_secs(10)).is_some(), "process did not die");
    assert!(early_errors.borrow().is_empty(), "errors before the kill: {:?}", early_errors.borrow());
    let acked = acked.into_inner();
    println!("{} scans acknowledged before kill -9", acked.len());

    let mut max_by_counter: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut seen = HashSet::new();
    for (f, c, n, _) in &acked {
        assert!(seen.insert((f.clone(), c.clone(), *n)), "number {n} acknowledged twice at {f}/{c}");
        let m = max_by_counter.entry((f.clone(), c.clone())).or_default();
        *m = (*m).max(*n);
    }

    drop(gw);
    let gw = Gateway::start(&redis, &[]);
    let checks = join_all(acked.iter().map(|(f, c, n, id)| {
        let gw = &gw;
        async move {
            let r = gw.call("GET", &format!("/v1/tokens/{id}"), PLATFORM, None).await;
            (f, c, n, id, r)
        }
    }))
    .await;
    let mut lost = Vec::new();
    for (f, c, n, id, r) in checks {
        if r.status != 200 || r.body["token_number"].as_u64() != Some(*n) || r.body["counter_id"] != c.as_str() {
            lost.push(format!("{f}/{c} #{n} ({id}): {} {}", r.status, r.text));
        }
    }
    assert!(lost.is_empty(), "{} acknowledged tokens lost or changed after kill -9:\n{}", lost.len(), lost.join("\n"));

    for (k, f) in facilities.iter().enumerate() {
        for (j, c) in counters.into_iter().enumerate() {
            // A new patient each time: one patient at eight counters in a second would
            // (rightly) meet the per-patient limit.
            let patient = 9_000_000 + k * 10 + j;
            let r = gw.call("POST", "/v1/scans", PLATFORM, Some(&scan_body(f, c, patient))).await;
            assert_eq!(r.status, 201, "{}", r.text);
            let n = num(&r.body, "token_number");
            let max = max_by_counter.get(&(f.clone(), c.to_string())).copied().unwrap_or(0);
            assert!(n > max, "{f}/{c}: new number {n} reuses an acknowledged one (max acknowledged {max})");
        }
    }
}

#[actix_web::test]
async fn sigterm_finishes_in_flight_requests_and_exits_zero() {
    let redis = RedisServer::start();
    // The Redis timeout must outlast the 3 s write pause below.
    let mut gw = Gateway::start(&redis, &[("SCANGW_SHUTDOWN_GRACE_S", "10"), ("SCANGW_REDIS_TIMEOUT_MS", "10000")]);
    let f = fid(510);
    gw.register(&f).await;
    let warm = gw.call("POST", "/v1/scans", PLATFORM, Some(&scan_body(&f, "OPD1", 0))).await;
    assert_eq!(warm.status, 201, "{}", warm.text);

    // Hold Redis writes for 5 s so the next scans are certainly in flight at SIGTERM.
    let _: () = redis::cmd("CLIENT").arg("PAUSE").arg(5000).arg("WRITE").query(&mut redis.conn()).unwrap();
    let url = format!("{}/v1/scans", gw.base);
    let port: u16 = gw.base.rsplit(':').next().unwrap().parse().unwrap();
    let baseline = established_to(port);
    let fresh = client(); // new connections only, so each request is counted below
    let sent = Instant::now();
    let requests = join_all((1..=10usize).map(|i| {
        let (client, url, f) = (fresh.clone(), url.clone(), f.clone());
        async move {
            let body = serde_json::to_vec(&scan_body(&f, "OPD1", i)).unwrap();
            let r = http(&client, "POST", &url, Some(PLATFORM), Some("application/json"), Some(body), &[]).await;
            (r, Instant::now())
        }
    }));
    let signaller = async {
        let deadline = Instant::now() + Duration::from_secs(3);
        while redis.blocked_clients() == 0 || established_to(port) < baseline + 10 {
            assert!(
                Instant::now() < deadline,
                "scans never reached Redis / the gateway (blocked {}, connections {} of {})",
                redis.blocked_clients(),
                established_to(port),
                baseline + 10
            );
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
        // All ten connections are open and one write is held by Redis: a short margin for the
        // gateway to read the (tiny) requests, well inside the 5 s pause.
        actix_rt::time::sleep(Duration::from_millis(100)).await;
        gw.signal(libc::SIGTERM);
        Instant::now()
    };
    let (results, signalled) = futures_util::future::join(requests, signaller).await;
    for (i, (r, at)) in results.iter().enumerate() {
        match r {
            Ok(r) => assert_eq!(r.status, 201, "in-flight scan {i} after SIGTERM: {}", r.text),
            Err(e) => panic!("in-flight scan {i} failed after SIGTERM: {e}\n{}", gw.output()),
        }
        // Each answer came after the signal: the request really was in flight at SIGTERM.
        assert!(*at > signalled, "scan {i} was answered before SIGTERM; the test did not hold it");
        assert!(at.duration_since(sent) >= Duration::from_millis(2000), "the pause held scan {i}");
    }
    let results: Vec<Resp> = results.into_iter().map(|(r, _)| r.unwrap()).collect();

    // Grace is 10 s from the signal; allow 2 s for process teardown.
    let left = Duration::from_secs(12).saturating_sub(signalled.elapsed());
    let status = gw.wait_exit(left).unwrap_or_else(|| panic!("no exit within the 10 s grace period:\n{}", gw.output()));
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM:\n{}", gw.output());
    let listening = gw.output().lines().filter(|l| l.starts_with("[stdout] scan-gateway listening on ")).count();
    assert_eq!(listening, 1, "exactly one listening line:\n{}", gw.output());

    // Every acknowledged scan was flushed: a fresh process sees numbers 1..=11.
    let gw = Gateway::start(&redis, &[]);
    let mut numbers: Vec<u64> = Vec::new();
    for r in results {
        let id = s(&r.body, "token_id").to_string();
        let got = gw.call("GET", &format!("/v1/tokens/{id}"), PLATFORM, None).await;
        assert_eq!(got.status, 200, "{}", got.text);
        numbers.push(num(&got.body, "token_number"));
    }
    numbers.sort_unstable();
    assert_eq!(numbers, (2..=11).collect::<Vec<u64>>());
}

#[test]
fn missing_or_bad_settings_exit_64_naming_the_key() {
    let redis_url = "redis://127.0.0.1:1";
    for (drop_key, bad) in [
        ("SCANGW_ADMIN_TOKEN", None),
        ("SCANGW_PLATFORM_TOKEN", Some("short")),
        ("SCANGW_PATIENT_KEY_SECRET", None),
        ("SCANGW_LISTEN", Some("not-an-address")),
    ] {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve").env_clear();
        for (k, v) in base_env(redis_url) {
            if k != drop_key {
                cmd.env(k, v);
            }
        }
        if let Some(v) = bad {
            cmd.env(drop_key, v);
        }
        let (status, out, err) = run_with_deadline(cmd, Duration::from_secs(20));
        assert_eq!(status.code(), Some(64), "{drop_key}={bad:?}: exit {status}\nstdout: {out}\nstderr: {err}");
        assert!(err.contains(drop_key), "stderr must name {drop_key}: {err}");
        assert!(!out.contains("listening"), "must not start serving: {out}");
        for secret in [ADMIN, PLATFORM, SECRET] {
            assert!(!err.contains(secret), "stderr leaks a secret: {err}");
        }
    }
}

#[actix_web::test]
async fn facilities_import_command_loads_ndjson_and_csv_and_refuses_bad_files() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let ndjson_path = dir.path().join("facilities.ndjson");
    let lines: Vec<String> = (0..2)
        .map(|i| {
            let id = fid(520 + i);
            let mut v = standard_facility(&id);
            v["facility_id"] = json!(id);
            v.to_string()
        })
        .collect();
    std::fs::write(&ndjson_path, lines.join("\n") + "\n").unwrap();
    let csv_path = dir.path().join("facilities.csv");
    std::fs::write(
        &csv_path,
        format!(
            "facility_id,name,state,district,timezone,token_validity_s,counters\n\
             {},PHC Kupwara,Jammu and Kashmir,Kupwara,,,OPD1:opd;Pharmacy:pharmacy\n\
             {},CHC Uri,Jammu and Kashmir,Baramulla,UTC,900,OPD 2:opd\n",
            fid(530),
            fid(531)
        ),
    )
    .unwrap();
    let bad_path = dir.path().join("bad.ndjson");
    let mut bad = standard_facility(&fid(540));
    bad["facility_id"] = json!(fid(540));
    std::fs::write(&bad_path, format!("{}\n{{\"facility_id\": \"no good\"}}\n", bad)).unwrap();

    for path in [&ndjson_path, &csv_path] {
        let mut cmd = Command::new(BIN);
        cmd.arg("facilities").arg("import").arg(path).env_clear().envs(base_env(&redis.url()));
        let (status, out, err) = run_with_deadline(cmd, Duration::from_secs(60));
        assert_eq!(status.code(), Some(0), "import {path:?}: {status}\nstdout: {out}\nstderr: {err}");
    }
    let mut cmd = Command::new(BIN);
    cmd.arg("facilities").arg("import").arg(&bad_path).env_clear().envs(base_env(&redis.url()));
    let (status, out, err) = run_with_deadline(cmd, Duration::from_secs(60));
    assert_ne!(status.code(), Some(0), "a bad file must fail\nstdout: {out}\nstderr: {err}");

    let gw = Gateway::start(&redis, &[]);
    for (id, counters) in [
        (fid(520), vec!["OPD1", "OPD2", "Pharmacy"]),
        (fid(521), vec!["OPD1", "OPD2", "Pharmacy"]),
        (fid(530), vec!["OPD1", "Pharmacy"]),
        (fid(531), vec!["OPD 2"]),
    ] {
        let r = gw.call("GET", &format!("/v1/facilities/{id}"), ADMIN, None).await;
        assert_eq!(r.status, 200, "{id} imported: {}", r.text);
        let got: Vec<&str> = r.body["counters"].as_array().unwrap().iter().map(|c| s(c, "id")).collect();
        assert_eq!(got, counters, "{}", r.text);
        assert!(!redis.keys(&format!("sg:{{{id}}}*")).is_empty(), "{id} has keys under its hash tag");
    }
    let r = gw.call("GET", &format!("/v1/facilities/{}", fid(531)), ADMIN, None).await;
    assert_eq!(r.body["timezone"], "UTC");
    assert_eq!(r.body["token_validity_s"], 900);
    let r = gw.call("GET", &format!("/v1/facilities/{}", fid(540)), ADMIN, None).await;
    assert_eq!(r.status, 404, "nothing from the bad file was imported: {}", r.text);

    // And it serves scans.
    let r = gw.call("POST", "/v1/scans", PLATFORM, Some(&scan_body(&fid(531), "OPD 2", 1))).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(s(&r.body, "display"), "OPD 2-001");
}

#[actix_web::test]
async fn logs_never_contain_patient_data() {
    let redis = RedisServer::start();
    // Debug level: even the chattiest setting must not log patient data.
    let mut gw = Gateway::start(&redis, &[("SCANGW_LOG", "debug")]);
    let f = fid(550);
    gw.register(&f).await;
    let addr = "meera.logcheck@abdm";
    let name = "Meera Logcheck";
    let phone = "9812345670";
    let number = "91-4242-5353-6464";
    let good = json!({"facility_id": f, "counter_id": "OPD1", "patient": {
        "abha_address": addr, "abha_number": number, "name": name, "gender": "F",
        "year_of_birth": 1990, "phone": phone}});
    let r = gw.call("POST", "/v1/scans", PLATFORM, Some(&good)).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = gw.call("POST", "/v1/scans", PLATFORM, Some(&good)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // An invalid optional field is dropped (and counted), not refused: the same token again.
    let mut bad = good.clone();
    bad["patient"]["phone"] = json!("98123");
    let r = gw.call("POST", "/v1/scans", PLATFORM, Some(&bad)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let mut bad = good.clone();
    bad["patient"]["gender"] = json!("X");
    let r = gw.call("POST", "/v1/scans", PLATFORM, Some(&bad)).await;
    assert_eq!(r.status, 422, "{}", r.text);
    let mut bad = good.clone();
    bad["patient"]["abha_address"] = json!("meera.logcheck@gmail.com");
    let r = gw.call("POST", "/v1/scans", PLATFORM, Some(&bad)).await;
    assert_eq!(r.status, 422, "{}", r.text);
    let mut bad = good.clone();
    bad["counter_id"] = json!("Nowhere");
    let r = gw.call("POST", "/v1/scans", PLATFORM, Some(&bad)).await;
    assert_eq!(r.status, 404, "{}", r.text);
    let r = gw.call("POST", "/v1/scans", "wrong-token-0123456789", Some(&good)).await;
    assert_eq!(r.status, 401, "{}", r.text);

    gw.signal(libc::SIGTERM);
    let status = gw.wait_exit(Duration::from_secs(15));
    assert!(status.is_some(), "exit after SIGTERM");
    // Let the reader threads drain the pipes.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut out = gw.output();
    while !out.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        let next = gw.output();
        if next == out {
            break;
        }
        out = next;
    }
    if std::env::var("SG_PRINT_LOGS").is_ok() {
        println!("{out}");
    }
    for secret in ["meera", "Meera", "Logcheck", "logcheck", "9812345670", "4242-5353", "424253536464"] {
        assert!(!out.contains(secret), "logs contain patient data {secret:?}:\n{out}");
    }
    for secret in [ADMIN, PLATFORM, SECRET, "wrong-token-0123456789"] {
        assert!(!out.contains(secret), "logs contain a credential:\n{out}");
    }
}

/// Redis's SLOWLOG keeps command arguments, and a token write's arguments carry the patient's
/// fields. With SLOWLOG logging everything (threshold 0) the leak is real and the gateway
/// warns; the shipped redis.conf switches SLOWLOG off, so nothing is kept and no warning.
#[actix_web::test]
async fn redis_slowlog_keeps_no_patient_data_with_the_shipped_config() {
    let name = "Zubeida Slowcheck";
    let slowlog_text = |redis: &RedisServer| {
        let v: redis::Value = redis::cmd("SLOWLOG").arg("GET").arg(1000).query(&mut redis.conn()).expect("SLOWLOG GET");
        format!("{v:?}")
    };
    // Waits (deadline) for the gateway's check of the Redis config; true when it warned.
    let warned = |gw: &Gateway| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = gw.output();
            if let Some(line) = out.lines().find(|l| l.contains("redis SLOWLOG is o")) {
                return line.contains("\"level\":\"WARN\"") && line.contains("SLOWLOG is on");
            }
            assert!(Instant::now() < deadline, "the gateway never checked SLOWLOG:\n{out}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let scan = |f: &str| {
        json!({"facility_id": f, "counter_id": "OPD1", "patient": {
            "abha_address": "zubeida.slowcheck@abdm", "name": name, "gender": "F",
            "year_of_birth": 1985, "phone": "9876501234"}})
    };

    // Every command logged: the token write's arguments (the patient) land in SLOWLOG.
    let leaky = RedisServer::start();
    redis::cmd("CONFIG").arg("SET").arg("slowlog-log-slower-than").arg(0).exec(&mut leaky.conn()).unwrap();
    let gw = Gateway::start(&leaky, &[]);
    let f = fid(560);
    gw.register(&f).await;
    let r = gw.call("POST", "/v1/scans", PLATFORM, Some(&scan(&f))).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert!(slowlog_text(&leaky).contains("Slowcheck"), "the hazard this guards against is real");
    assert!(warned(&gw), "the gateway must warn when SLOWLOG is on:\n{}", gw.output());

    // The shipped config: SLOWLOG off, nothing kept, no warning.
    let shipped = RedisServer::start_shipped();
    let threshold: Vec<String> =
        redis::cmd("CONFIG").arg("GET").arg("slowlog-log-slower-than").query(&mut shipped.conn()).unwrap();
    assert_eq!(threshold[1], "-1", "deploy/redis/redis.conf must switch SLOWLOG off");
    let gw = Gateway::start(&shipped, &[]);
    gw.register(&f).await;
    let r = gw.call("POST", "/v1/scans", PLATFORM, Some(&scan(&f))).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let kept = slowlog_text(&shipped);
    assert!(!kept.contains("Slowcheck") && !kept.contains("9876501234"), "SLOWLOG kept patient data: {kept}");
    assert!(!warned(&gw), "no warning with SLOWLOG off:\n{}", gw.output());
}

/// Sum and count of a Prometheus histogram in a scrape.
fn histogram_sum_count(scrape: &str, name: &str) -> (f64, f64) {
    let value = |suffix: &str| {
        scrape
            .lines()
            .find(|l| l.starts_with(&format!("{name}_{suffix}")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (value("sum"), value("count"))
}

#[actix_web::test]
async fn concurrent_scans_share_redis_round_trips_group_commit() {
    let redis = RedisServer::start();
    let gw = Gateway::start(&redis, &[]);
    let facilities: Vec<String> = (0..20).map(|i| fid(700 + i)).collect();
    for f in &facilities {
        gw.register(f).await;
    }
    let scans = 400;
    let results = join_all((0..scans).map(|i| {
        let body = scan_body(&facilities[i % facilities.len()], "OPD1", 50_000 + i);
        let gw = &gw;
        async move { gw.call("POST", "/v1/scans", PLATFORM, Some(&body)).await.status }
    }))
    .await;
    assert!(results.iter().all(|s| *s == 201), "{results:?}");
    let scrape = gw.call("GET", "/metrics", PLATFORM, None).await.text;
    let (writes, batches) = histogram_sum_count(&scrape, "scangw_redis_batch_size");
    println!("group commit: {writes} writes in {batches} round trips ({:.1} per round trip)", writes / batches);
    assert!(writes >= scans as f64, "every scan is a write: {writes}");
    assert!(batches > 0.0 && batches < writes / 2.0, "{writes} writes took {batches} round trips: not batched");
}

#[actix_web::test]
async fn switching_jwt_verification_off_is_explicit_and_logged() {
    let redis = RedisServer::start();
    let protocol = [
        ("SCANGW_HIECM_BASE_URL", "http://127.0.0.1:9"),
        ("SCANGW_HIECM_CLIENT_ID", "gateway-client"),
        ("SCANGW_HIECM_CLIENT_SECRET", "gateway-secret-0123456789"),
    ];
    // With the protocol on, neither a JWKS nor an explicit off: refused at startup.
    let mut cmd = Command::new(BIN);
    cmd.arg("serve").env_clear();
    for (k, v) in base_env(&redis.url()) {
        cmd.env(k, v);
    }
    cmd.envs(protocol);
    let (status, _, err) = run_with_deadline(cmd, Duration::from_secs(20));
    assert_eq!(status.code(), Some(64), "{err}");
    assert!(err.contains("SCANGW_JWKS_FILE"), "{err}");
    // Explicitly off: it serves, and says so loudly at startup.
    let mut env = protocol.to_vec();
    env.push(("SCANGW_JWT_VERIFICATION", "off"));
    let gw = Gateway::start(&redis, &env);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let warned = |out: &str| out.lines().any(|l| l.contains("\"level\":\"WARN\"") && l.contains("JWT verification"));
    while !warned(&gw.output()) {
        assert!(std::time::Instant::now() < deadline, "no startup warning:\n{}", gw.output());
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Makes `replica` replicate `primary`, then polls `INFO replication` on the primary until
/// the replica is online (deadline 20 s).
fn replicate(replica: &RedisServer, primary: &RedisServer) {
    let port = primary.url().rsplit(':').next().unwrap().to_string();
    let _: () = redis::cmd("REPLICAOF").arg("127.0.0.1").arg(port).query(&mut replica.conn()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let info: String = redis::cmd("INFO").arg("replication").query(&mut primary.conn()).unwrap();
        if info.contains("connected_slaves:1") && info.contains("state=online") {
            return;
        }
        assert!(Instant::now() < deadline, "the replica never came online: {info}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[actix_rt::test]
async fn wait_replicas_acknowledges_only_what_a_replica_holds() {
    let primary = RedisServer::start();
    let mut replica = RedisServer::start();
    replicate(&replica, &primary);
    // WAIT gets half the Redis timeout. 4 s, not 1 s: on a loaded CI host a healthy replica
    // once took over 500 ms to answer the primary's GETACK, and the first scan got a 503.
    let gw = Gateway::start(&primary, &[("SCANGW_REDIS_WAIT_REPLICAS", "1"), ("SCANGW_REDIS_TIMEOUT_MS", "4000")]);
    gw.register("IN9900000001").await;

    // With the replica up: acknowledged, and the replica already holds the token.
    let r = gw.call("POST", "/v1/scans", PLATFORM, Some(&scan_body("IN9900000001", "OPD1", 1))).await;
    assert_eq!(r.status, 201, "{}\n{}", r.text, gw.output());
    let on_replica: Vec<String> = redis::cmd("KEYS").arg("sg:{IN9900000001}:d:*").query(&mut replica.conn()).unwrap();
    assert_eq!(on_replica.len(), 1, "the day's token hash is on the replica when the scan is answered");

    // Without it: the write reaches the primary but is not acknowledged (503), never a 201.
    replica.stop();
    let r = gw.call("POST", "/v1/scans", PLATFORM, Some(&scan_body("IN9900000001", "OPD1", 2))).await;
    assert_error(r.status, &r.body, 503, "STORE_UNAVAILABLE");
    assert!(r.header("retry-after").is_some());
    assert!(gw.output().contains("writes not acknowledged by enough replicas"), "{}", gw.output());

    // The replica back: the patient's retry gets a token, and numbering has no gap.
    replica.restart();
    replicate(&replica, &primary);
    let deadline = Instant::now() + Duration::from_secs(20);
    let r = loop {
        let r = gw.call("POST", "/v1/scans", PLATFORM, Some(&scan_body("IN9900000001", "OPD1", 2))).await;
        if r.status != 503 || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(matches!(r.status, 200 | 201), "{}", r.text);
    assert_eq!(r.body["token_number"], 2, "{}", r.text);
}
