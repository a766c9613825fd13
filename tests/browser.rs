//! The live pages in a real browser: Debian's headless Chromium, driven by Playwright
//! (`tests/browser/pages.mjs`), loads `/leaderboard` and a facility's `/board` from the real
//! gateway binary. The test checks that the pages show what the API says, then issues new
//! scans and counter calls and checks that the open pages (never reloaded) catch up with
//! the API through their live feeds. Screenshots land in `target/test-artifacts/`
//! (and in `docs/screenshots/` with `SCANGW_UPDATE_SCREENSHOTS=1`).
//!
//! Needs `chromium` (Debian package), `node`, and `npm ci --prefix tests/browser`; without
//! them the test fails, saying which is missing.
#[path = "support/gateway.rs"]
mod gateway;
#[path = "api/helpers.rs"]
mod helpers;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::{json, Value};

use gateway::*;
use helpers::*;

const MONITOR: &str = "browser-monitor-token-0123456789";
/// Rows per table on the leaderboard page (`SCANGW_LEADERBOARD_TOP_N`).
const TOP_N: usize = 10;
const KINDS: [&str; 4] = ["opd", "pharmacy", "lab", "other"];
/// The facility whose display board is opened.
const BOARD: usize = 0;

struct Site {
    id: String,
    name: &'static str,
    state: &'static str,
    district: &'static str,
    counters: &'static [(&'static str, &'static str)],
    /// Tokens issued before the pages open.
    scans: usize,
}

/// HFR-style ids: `IN`, the state's LGD code, eight digits.
fn site(
    lgd: &str,
    n: usize,
    name: &'static str,
    state: &'static str,
    district: &'static str,
    counters: &'static [(&'static str, &'static str)],
    scans: usize,
) -> Site {
    Site { id: format!("IN{lgd}{:08}", 10_000_000 + n), name, state, district, counters, scans }
}

const OPD3: &[(&str, &str)] = &[("OPD1", "opd"), ("OPD2", "opd"), ("Pharmacy", "pharmacy")];
const OPD_LAB: &[(&str, &str)] = &[("OPD1", "opd"), ("Lab", "lab")];
const OPD2: &[(&str, &str)] = &[("OPD1", "opd"), ("OPD2", "opd")];
const OPD1: &[(&str, &str)] = &[("OPD1", "opd")];
const OPD_PHARM: &[(&str, &str)] = &[("OPD1", "opd"), ("Pharmacy", "pharmacy")];
const OPD2_LAB: &[(&str, &str)] = &[("OPD1", "opd"), ("OPD2", "opd"), ("Lab", "lab")];

fn sites() -> Vec<Site> {
    vec![
        site("09", 481, "District Hospital Lucknow", "Uttar Pradesh", "Lucknow", OPD3, 84),
        site("09", 1207, "Community Health Centre Chinhat", "Uttar Pradesh", "Lucknow", OPD_LAB, 31),
        site("09", 3316, "District Women Hospital Varanasi", "Uttar Pradesh", "Varanasi", OPD2, 27),
        site("27", 215, "District Hospital Pune", "Maharashtra", "Pune", OPD3, 52),
        site("27", 4410, "Urban Health Centre Dharavi", "Maharashtra", "Mumbai", OPD1, 23),
        site("33", 96, "Government General Hospital Chennai", "Tamil Nadu", "Chennai", OPD2_LAB, 46),
        site("33", 2871, "Primary Health Centre Tambaram", "Tamil Nadu", "Chengalpattu", OPD1, 12),
        site("29", 5582, "District Hospital Mysuru", "Karnataka", "Mysuru", OPD_PHARM, 35),
        site("32", 733, "General Hospital Ernakulam", "Kerala", "Ernakulam", OPD_LAB, 29),
        site("10", 1904, "Sadar Hospital Patna", "Bihar", "Patna", OPD2, 33),
        site("19", 6120, "Community Health Centre Baruipur", "West Bengal", "South 24 Parganas", OPD1, 14),
        site("07", 388, "Delhi Government Dispensary Dwarka", "Delhi", "South West Delhi", OPD1, 9),
        site("08", 2650, "District Hospital Jaipur", "Rajasthan", "Jaipur", OPD_PHARM, 18),
        // No tokens until the pages are open: a state that joins the board live.
        site("18", 1042, "Civil Hospital Guwahati", "Assam", "Kamrup Metropolitan", OPD_LAB, 0),
    ]
}

// ---------------------------------------------------------------------------------------
// Prerequisites: fail (never skip) naming what is missing
// ---------------------------------------------------------------------------------------

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chromium_path() -> String {
    let path = std::env::var("SCANGW_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&path).exists(),
        "Chromium not found at {path}: install Debian's `chromium` package (scripts/test does), \
         or point SCANGW_CHROMIUM at a Chromium binary"
    );
    path
}

fn check_node() {
    let out = Command::new("node").arg("--version").output();
    let ok = matches!(&out, Ok(o) if o.status.success());
    assert!(
        ok,
        "`node --version` failed ({out:?}): install Node.js 20+ (Debian's `nodejs` package; scripts/test does)"
    );
    let modules = root().join("tests/browser/node_modules/playwright-core/package.json");
    assert!(
        modules.exists(),
        "{} is missing: run `npm ci --prefix tests/browser` first (scripts/test does)",
        modules.display()
    );
}

fn artefact_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"));
    let target = if target.is_absolute() { target } else { root().join(target) };
    target.join("test-artifacts")
}

// ---------------------------------------------------------------------------------------
// The browser driver: one JSON object a line each way
// ---------------------------------------------------------------------------------------

struct Browser {
    child: Child,
    stdin: Option<ChildStdin>,
    rx: mpsc::Receiver<Value>,
    stderr: Arc<Mutex<String>>,
}

impl Browser {
    fn start(base: &str, facility: &str, out: &Path) -> Browser {
        let chromium = chromium_path();
        check_node();
        let mut child = Command::new("node")
            .arg(root().join("tests/browser/pages.mjs"))
            .args(["--base", base, "--facility", facility, "--chromium", &chromium])
            .arg("--out")
            .arg(out)
            .current_dir(root().join("tests/browser"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn node tests/browser/pages.mjs");
        let (tx, rx) = mpsc::channel();
        let stderr = Arc::new(Mutex::new(String::new()));
        let stdout = child.stdout.take().unwrap();
        let log = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => {
                        let _ = tx.send(v);
                    }
                    Err(_) => log.lock().unwrap().push_str(&format!("[stdout] {line}\n")),
                }
            }
        });
        let err = child.stderr.take().unwrap();
        let log = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                log.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        let stdin = child.stdin.take();
        Browser { child, stdin, rx, stderr }
    }

    fn send(&mut self, msg: Value) {
        let stdin = self.stdin.as_mut().expect("driver stdin open");
        writeln!(stdin, "{msg}").and_then(|_| stdin.flush()).unwrap_or_else(|e| {
            panic!("writing to the browser driver: {e}\ndriver stderr:\n{}", self.stderr.lock().unwrap())
        });
    }

    /// The driver's next message, polled without blocking the runtime (the HTTP client's
    /// connection pool lives on it).
    async fn next(&mut self, limit: Duration) -> Result<Value, String> {
        let deadline = Instant::now() + limit;
        loop {
            match self.rx.try_recv() {
                Ok(v) => return Ok(v),
                Err(mpsc::TryRecvError::Disconnected) => return Err("driver closed its stdout".into()),
                Err(mpsc::TryRecvError::Empty) if Instant::now() > deadline => return Err("timed out".into()),
                Err(mpsc::TryRecvError::Empty) => actix_rt::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// The driver's next message, which must be of type `want`.
    async fn recv(&mut self, want: &str, limit: Duration) -> Value {
        let msg = self.next(limit).await.unwrap_or_else(|e| {
            let status = self.child.try_wait().ok().flatten();
            panic!(
                "no {want:?} from the browser driver within {limit:?} ({e}; driver exit status {status:?})\n\
                 driver stderr:\n{}",
                self.stderr.lock().unwrap()
            )
        });
        assert_eq!(
            msg["type"].as_str(),
            Some(want),
            "browser driver said {msg:#}\ndriver stderr:\n{}",
            self.stderr.lock().unwrap()
        );
        msg
    }

    /// Waits until both pages show `want` (or the driver gives up and says what they show).
    async fn expect(&mut self, id: u64, want: &Value, what: &str) -> Value {
        let mut cmd = want.clone();
        cmd["cmd"] = json!("expect");
        cmd["id"] = json!(id);
        cmd["timeout_ms"] = json!(20_000);
        self.send(cmd);
        let msg = self.next(Duration::from_secs(60)).await.unwrap_or_else(|e| {
            panic!("browser driver silent while waiting for {what} ({e})\n{}", self.stderr.lock().unwrap())
        });
        if msg["type"] == "mismatch" {
            let problems: Vec<&str> =
                msg["problems"].as_array().unwrap().iter().map(|p| p.as_str().unwrap_or("?")).collect();
            panic!(
                "{what}: the pages never showed what the API says within 20 s:\n  {}\n\nfull page view: {:#}",
                problems.join("\n  "),
                msg["seen"]
            );
        }
        assert_eq!(msg["type"], "matched", "{what}: driver said {msg:#}\n{}", self.stderr.lock().unwrap());
        assert_eq!(msg["id"], id, "answer to another question: {msg}");
        msg
    }

    async fn quit(mut self) {
        self.send(json!({"cmd": "quit"}));
        self.recv("bye", Duration::from_secs(30)).await;
        drop(self.stdin.take());
        let status = self.child.wait().expect("wait for node");
        assert!(status.success(), "browser driver exited with {status}:\n{}", self.stderr.lock().unwrap());
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Closing stdin lets the driver close Chromium; kill it if it does not.
        drop(self.stdin.take());
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// Driving the gateway
// ---------------------------------------------------------------------------------------

async fn register(gw: &Gateway, s: &Site) {
    let counters: Vec<Value> = s.counters.iter().map(|(id, kind)| json!({"id": id, "kind": kind})).collect();
    let body = json!({"name": s.name, "state": s.state, "district": s.district, "counters": counters});
    let r = gw.call("PUT", &format!("/v1/facilities/{}", s.id), ADMIN, Some(&body)).await;
    assert_eq!(r.status, 201, "register {}: {}", s.id, r.text);
}

/// Issues one token per (facility, counter), each for a new patient numbered from `*patient`.
async fn scan_all(gw: &Gateway, scans: &[(String, &str)], patient: &mut usize) {
    for chunk in scans.chunks(16) {
        let calls = chunk.iter().map(|(f, c)| {
            *patient += 1;
            let body = scan_body(f, c, *patient);
            async move { (f, c, gw.call("POST", "/v1/scans", PLATFORM, Some(&body)).await) }
        });
        for (f, c, r) in join_all(calls.collect::<Vec<_>>()).await {
            assert_eq!(r.status, 201, "scan at {f}/{c}: {}", r.text);
        }
    }
}

/// `n` scans at a site, spread over its counters (the first counter gets the most).
fn spread(s: &Site, n: usize) -> Vec<(String, &'static str)> {
    let k = s.counters.len();
    (0..n).map(|i| (s.id.clone(), s.counters[if i % 5 < 3 { 0 } else { i % k }].0)).collect()
}

/// Calls the next token at a counter; returns its token id.
async fn call_next(gw: &Gateway, key: &str, facility: &str, counter: &str) -> String {
    let r = gw.call("POST", &format!("/v1/facilities/{facility}/counters/{counter}/call-next"), key, None).await;
    assert_eq!(r.status, 200, "call-next at {counter}: {}", r.text);
    s(&r.body, "token_id").to_string()
}

async fn complete(gw: &Gateway, key: &str, token: &str) {
    let r = gw.call("POST", &format!("/v1/tokens/{token}/complete"), key, None).await;
    assert_eq!(r.status, 200, "complete {token}: {}", r.text);
}

async fn api(gw: &Gateway, path: &str, bearer: &str) -> Value {
    let r = gw.call("GET", path, bearer, None).await;
    assert_eq!(r.status, 200, "GET {path}: {}", r.text);
    r.body
}

/// What the leaderboard page must show, from the monitoring API.
async fn leaderboard_view(gw: &Gateway) -> Value {
    let rows = |v: &Value| -> Value {
        v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| json!({"id": r["id"], "name": r["name"], "tokens": r["tokens"]}))
            .collect()
    };
    let board = |b: &str| format!("/v1/leaderboards/{b}?limit={TOP_N}");
    // The page lists every state and union territory, those without tokens last.
    let states = api(gw, "/v1/leaderboards/states?limit=36", MONITOR).await;
    let all = api(gw, "/v1/leaderboards/states?date=all&limit=1", MONITOR).await;
    let districts = api(gw, &board("districts"), MONITOR).await;
    let facilities = api(gw, &board("facilities"), MONITOR).await;
    let mut kinds = serde_json::Map::new();
    for k in KINDS {
        let v = api(gw, &format!("/v1/leaderboards/states?counter_kind={k}&limit=1"), MONITOR).await;
        kinds.insert(k.into(), v["total"].clone());
    }
    json!({
        "live": true,
        "date": states["date"],
        "total_today": states["total"],
        "total_all": all["total"],
        "states": rows(&states),
        "districts": rows(&districts),
        "facilities": rows(&facilities),
        "kinds": kinds,
    })
}

/// A token's number as the board prints it: `OPD1-017` -> `17`.
/// The leaderboard view once the applier has moved `total` tokens into the boards (they
/// trail the tokens by about `SCANGW_LEADERBOARD_APPLY_MS`); the last view at the deadline.
async fn leaderboard_with_total(gw: &Gateway, total: usize) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let v = leaderboard_view(gw).await;
        if v["total_today"] == total || std::time::Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn shown(display: &str) -> String {
    let n: u32 = display.rsplit('-').next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{display}"));
    n.to_string()
}

/// What the display board must show, from the staff queue API.
async fn board_view(gw: &Gateway, site: &Site, key: &str) -> Value {
    let q = api(gw, &format!("/v1/facilities/{}/queue", site.id), key).await;
    let counters: Vec<Value> = q["counters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let mut called: Vec<&Value> = c["called"].as_array().unwrap().iter().collect();
            called.sort_by_key(|t| std::cmp::Reverse(ts(&t["called_at"])));
            let mut waiting: Vec<&Value> = c["waiting"].as_array().unwrap().iter().collect();
            waiting.sort_by_key(|t| num(t, "ahead"));
            let serving: Vec<&str> = called.iter().map(|t| s(t, "display")).collect();
            let text = if serving.is_empty() {
                "—".to_string()
            } else {
                serving.iter().map(|d| shown(d)).collect::<Vec<_>>().join(" · ")
            };
            json!({
                "counter": c["counter_id"],
                "serving": serving,
                "serving_text": text,
                "next": waiting.iter().take(6).map(|t| s(t, "display")).collect::<Vec<_>>(),
                "waiting": waiting.len(),
            })
        })
        .collect();
    json!({"name": site.name, "live": "live", "counters": counters})
}

/// Width and height from a PNG's IHDR chunk.
fn png_size(path: &Path) -> (u32, u32) {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert!(
        b.len() > 24 && b.starts_with(b"\x89PNG\r\n\x1a\n") && &b[12..16] == b"IHDR",
        "{} is no PNG",
        path.display()
    );
    let be = |i: usize| u32::from_be_bytes(b[i..i + 4].try_into().unwrap());
    (be(16), be(20))
}

/// A fixed-offset zone where it is now between noon and one o'clock, so that the service
/// day (and with it every daily ranking) cannot roll over while the test runs.
fn midday_zone() -> String {
    let hour = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC).hour();
    // `Etc/GMT-5` is UTC+5 (POSIX signs); the offsets needed, -11..=+12, all exist.
    match 12 - hour {
        0 => "Etc/GMT".to_string(),
        n if n > 0 => format!("Etc/GMT-{n}"),
        n => format!("Etc/GMT+{}", -n),
    }
}

#[actix_web::test]
async fn live_pages_in_chromium_show_what_the_api_says_and_follow_new_scans() {
    // Before anything slow: a missing browser or driver fails here, by name.
    chromium_path();
    check_node();

    let redis = RedisServer::start();
    let zone = midday_zone();
    let top_n = TOP_N.to_string();
    let gw = Gateway::start(
        &redis,
        &[
            ("SCANGW_MONITOR_TOKEN", MONITOR),
            ("SCANGW_LEADERBOARD_REFRESH_MS", "200"),
            ("SCANGW_BOARD_REFRESH_MS", "200"),
            ("SCANGW_LEADERBOARD_TOP_N", &top_n),
            ("SCANGW_DEFAULT_TIMEZONE", &zone),
        ],
    );
    let sites = sites();
    for s in &sites {
        register(&gw, s).await;
    }
    let board = &sites[BOARD];
    let r = gw.call("POST", &format!("/v1/facilities/{}/staff-keys", board.id), ADMIN, None).await;
    assert_eq!(r.status, 201, "staff key: {}", r.text);
    let key = s(&r.body, "key").to_string();

    // A morning's worth of tokens; at the board's hospital, tokens per counter as its staff
    // will call them.
    let mut patient = 0;
    let mut scans: Vec<(String, &str)> = Vec::new();
    for (counter, n) in [("OPD1", 38), ("OPD2", 29), ("Pharmacy", 17)] {
        scans.extend((0..n).map(|_| (board.id.clone(), counter)));
    }
    for s in sites.iter().skip(1) {
        scans.extend(spread(s, s.scans));
    }
    let issued: usize = sites.iter().map(|s| s.scans).sum();
    assert_eq!(scans.len(), issued);
    scan_all(&gw, &scans, &mut patient).await;
    let mut serving = std::collections::BTreeMap::new();
    for (counter, done) in [("OPD1", 21), ("OPD2", 14), ("Pharmacy", 8)] {
        for _ in 0..done {
            let t = call_next(&gw, &key, &board.id, counter).await;
            complete(&gw, &key, &t).await;
        }
        serving.insert(counter, call_next(&gw, &key, &board.id, counter).await);
    }

    // Both pages open and show exactly what the API says.
    let out = artefact_dir();
    let mut browser = Browser::start(&gw.base, &board.id, &out);
    browser.recv("ready", Duration::from_secs(90)).await;
    let before = (leaderboard_with_total(&gw, issued).await, board_view(&gw, board, &key).await);
    assert_eq!(before.0["total_today"], issued, "API total after {issued} scans");
    let want = json!({"leaderboard": before.0, "board": before.1});
    browser.expect(1, &want, "pages as first loaded").await;

    // Then, with the pages open: new tokens in several states (one of them new to the board),
    // at the board's counters too, and the counter staff move on.
    let mut more: Vec<(String, &str)> = Vec::new();
    for (i, n) in [(13, 9), (3, 6), (5, 4), (9, 3)] {
        more.extend(spread(&sites[i], n));
    }
    more.extend((0..3).map(|_| (board.id.clone(), "OPD1")));
    more.extend((0..2).map(|_| (board.id.clone(), "Pharmacy")));
    scan_all(&gw, &more, &mut patient).await;
    complete(&gw, &key, &serving["OPD1"]).await;
    call_next(&gw, &key, &board.id, "OPD1").await;
    call_next(&gw, &key, &board.id, "Pharmacy").await;

    let after = (leaderboard_with_total(&gw, issued + more.len()).await, board_view(&gw, board, &key).await);
    assert_eq!(after.0["total_today"], issued + more.len(), "API total after the new scans");
    assert!(
        after.0["states"].as_array().unwrap().iter().any(|r| r["id"] == "AS" && r["tokens"] == 9),
        "Assam joins the states board: {}",
        after.0["states"]
    );
    assert_ne!(before.1, after.1, "the counter calls change the board");
    let want = json!({"leaderboard": after.0, "board": after.1});
    let matched = browser.expect(2, &want, "pages after new scans and calls (live, no reload)").await;
    eprintln!("pages caught up with the API in {} ms", matched["elapsed_ms"]);

    browser.send(json!({"cmd": "screenshot"}));
    browser.recv("screenshots", Duration::from_secs(60)).await;
    let shots = [("leaderboard.png", (1366, 768)), ("board.png", (1920, 1080))];
    for (file, size) in shots {
        assert_eq!(png_size(&out.join(file)), size, "{file} size");
    }
    browser.quit().await;
    if std::env::var_os("SCANGW_UPDATE_SCREENSHOTS").is_some() {
        let docs = root().join("docs/screenshots");
        std::fs::create_dir_all(&docs).expect("create docs/screenshots");
        for (file, _) in shots {
            std::fs::copy(out.join(file), docs.join(file)).expect("copy screenshot to docs/screenshots");
        }
    }
    eprintln!("screenshots: {}", out.display());
}
