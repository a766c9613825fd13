//! Fencing at the edges: a takeover across local midnight, a fence that steps back after
//! Redis data loss, a write resent after it was applied, and the keys a write leaves behind.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::Commands;
use scan_gateway::persistence::conn::Target;
use scan_gateway::persistence::keys;
use scan_gateway::persistence::store::{Activated, Claim};
use scan_gateway::persistence::writer::{self, Touched, WriteOp};
use scan_gateway::persistence::{Store, StoreError};
use tokio::sync::{mpsc, oneshot};

use crate::helpers::*;

/// Takes a registered facility's fence without leases, as an owner would.
async fn fence_of(store: &Store, f: &str, day: jiff::civil::Date) -> scan_gateway::persistence::store::Fence {
    match store.activate(f, day, Claim::Anonymous).await.unwrap() {
        Activated::Taken(act) => act.fence,
        _ => panic!("{f} is registered"),
    }
}

/// A writer's shape for tests that look at batches as they were handed over.
fn no_linger(batch_max: usize) -> writer::Shape {
    writer::Shape { batch_max, linger: Duration::ZERO, wait_replicas: 0 }
}

fn day_hash(redis: &RedisServer, f: &str, day: &str) -> HashMap<String, String> {
    redis.conn().hgetall(keys::day_tokens(f, day.parse().unwrap())).expect("HGETALL day")
}

async fn fencing_conflicts(app: &TestApp) -> f64 {
    let m = app.req("GET", "/metrics", None, None, &[]).await.text;
    m.lines().find_map(|l| l.strip_prefix("scangw_fencing_conflicts_total ")).map_or(0.0, |v| v.trim().parse().unwrap())
}

/// Node A's clock runs a few seconds ahead of node B's across local midnight (18:30Z is
/// midnight IST). A issues tokens of the new day; B, whose clock still says the old day,
/// takes the facility over, then rolls into the new day: it must read A's tokens of that
/// day from Redis and continue their numbering, never issue #1 again over A's record.
#[actix_web::test]
async fn a_takeover_near_midnight_continues_the_new_days_numbering_from_redis() {
    let redis = RedisServer::start();
    let a = TestApp::spawn(&redis, TestApp::clock_at("2026-11-23T18:29:50Z")).await;
    let b = TestApp::spawn(&redis, TestApp::clock_at("2026-11-23T18:29:50Z")).await;
    let f = fid(370);
    a.register(&f).await;
    let first = a.scan_new(&scan_body(&f, "OPD1", 1)).await;
    assert_eq!((s(&first, "service_date"), num(&first, "token_number")), ("2026-11-23", 1));

    // Just after midnight by A's clock: two tokens of the 24th.
    a.clock.set("2026-11-23T18:30:02Z".parse().unwrap());
    for (i, want) in [(2, 1), (3, 2)] {
        let t = a.scan_new(&scan_body(&f, "OPD1", i)).await;
        assert_eq!((s(&t, "service_date"), num(&t, "token_number")), ("2026-11-24", want), "{t}");
    }
    let acked = day_hash(&redis, &f, "2026-11-24");
    assert_eq!(acked.len(), 2);

    // B still says 23:59:58 on the 23rd: it activates (fencing A) on the 23rd ...
    b.clock.set("2026-11-23T18:29:58Z".parse().unwrap());
    let t = b.scan_new(&scan_body(&f, "OPD1", 4)).await;
    assert_eq!((s(&t, "service_date"), num(&t, "token_number")), ("2026-11-23", 2), "{t}");
    // ... then crosses midnight itself.
    b.clock.set("2026-11-23T18:30:03Z".parse().unwrap());
    let t = b.scan_new(&scan_body(&f, "OPD1", 5)).await;
    assert_eq!(s(&t, "service_date"), "2026-11-24");
    assert_eq!(num(&t, "token_number"), 3, "the new day's numbering continues after A's #1 and #2: {t}");
    let now = day_hash(&redis, &f, "2026-11-24");
    for (field, record) in &acked {
        assert_eq!(now.get(field), Some(record), "acknowledged {field} of the new day was overwritten");
    }
    assert_eq!(now.len(), 3);
    // And B serves A's tokens of the new day as its own queue.
    let (_, staff) = b.create_staff_key(&f).await;
    let (st, q) = b.queue(&f, Some("OPD1"), &staff).await;
    assert_eq!(st, 200, "{q}");
    let waiting: Vec<u64> =
        q["counters"][0]["waiting"].as_array().unwrap().iter().map(|t| num(t, "token_number")).collect();
    assert_eq!(waiting, vec![1, 2, 3], "{q}");
}

/// After an AOF power loss or an asynchronous failover, the fence hash can step back to an
/// older state. A new activation then gets the epoch counter value a stale, idle actor still
/// holds, with the same write sequence: the stale actor's next write must still be refused
/// (the fence carries a per-activation nonce) and nothing of it may land.
#[actix_web::test]
async fn a_fence_that_steps_back_after_data_loss_never_lets_a_stale_owner_write() {
    let redis = RedisServer::start();
    let clock = TestApp::clock_at(START);
    let a = TestApp::spawn(&redis, clock.clone()).await;
    let b = TestApp::spawn(&redis, clock.clone()).await;
    let f = fid(371);
    a.register(&f).await;
    assert_eq!(num(&a.scan_new(&scan_body(&f, "OPD1", 1)).await, "token_number"), 1);

    // The data loss: the fence hash is back to its state before A's activation (absent).
    let _: () = redis.conn().del(keys::fence(&f)).unwrap();
    // B activates with the epoch counter at A's value again and makes one write, so the
    // write sequence matches A's too.
    let t2 = b.scan_new(&scan_body(&f, "OPD1", 2)).await;
    assert_eq!(num(&t2, "token_number"), 2);
    let e: u64 = redis.conn().hget(keys::fence(&f), "e").unwrap();
    assert_eq!(e, 1, "the premise: B holds the epoch number A holds");
    let before = day_hash(&redis, &f, START_DATE);

    // A, idle and stale, believes it still owns the facility with #1 only.
    let conflicts = fencing_conflicts(&a).await;
    let t3 = a.scan_new(&scan_body(&f, "OPD1", 3)).await;
    assert!(fencing_conflicts(&a).await > conflicts, "A's stale write was refused by the fence");
    assert_eq!(num(&t3, "token_number"), 3, "A's rerun on a fresh activation continues after B's #2: {t3}");
    let after = day_hash(&redis, &f, START_DATE);
    for (field, record) in &before {
        assert_eq!(after.get(field), Some(record), "{field} was overwritten by the stale owner");
    }
    assert_eq!(after.len(), 3, "exactly one token added (A's rerun), nothing of the stale write");
}

/// `sg:{F}:n` (per-counter daily counts) was read by nothing and never expired.
#[actix_web::test]
async fn scans_leave_no_unread_per_counter_count_hash() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis, TestApp::clock_at(START)).await;
    let f = fid(372);
    app.register(&f).await;
    for i in 0..3 {
        app.scan_new(&scan_body(&f, ["OPD1", "Pharmacy"][i % 2], i)).await;
    }
    assert!(!day_hash(&redis, &f, START_DATE).is_empty(), "the premise: tokens are stored");
    for k in redis.keys("sg:{*}:*") {
        let ttl: i64 = redis::cmd("TTL").arg(&k).query(&mut redis.conn()).unwrap();
        assert!(!k.ends_with(":n") || ttl > 0, "{k} never expires");
    }
    assert!(redis.keys(&format!("sg:{{{f}}}:n")).is_empty(), "no per-counter count hash is written");
}

/// A write whose reply was lost is sent again by the cluster client: the copy must be
/// answered as applied (not GAP, which made the caller run the command again), and
/// nothing of it may be applied twice. GAP is left for a write behind a missing one.
#[actix_web::test]
async fn a_write_sent_again_after_it_was_applied_is_answered_applied_and_applied_once() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis, TestApp::clock_at(START)).await;
    let f = fid(373);
    app.register(&f).await;
    let target = Target { urls: vec![redis.url()], cluster: false };
    let store = Store::open(&target, Duration::from_secs(2)).unwrap();
    let day = START_DATE.parse().unwrap();
    let act = match store.activate(&f, day, Claim::Anonymous).await.unwrap() {
        Activated::Taken(act) => act,
        other => panic!("registered, no owner: {other:?}"),
    };
    let (tx, rx) = mpsc::channel(8);
    let metrics = scan_gateway::telemetry::metrics::Metrics::new();
    actix_rt::spawn(writer::run(
        rx,
        store.connection(),
        Duration::from_secs(2),
        no_linger(8),
        Touched::default(),
        metrics,
    ));
    let keys = Arc::new(keys::FacilityKeys::new(&f));
    let day_key: Arc<str> = keys.day(day).into();
    let write = |prev: u64, field: &str| {
        let (done, rx) = oneshot::channel();
        let op = WriteOp {
            fields: vec![(field.to_string(), "record".to_string())],
            lb_count_fields: vec![keys::lb_count_field(day, "opd")],
            ..WriteOp::barrier_of(keys.clone(), day_key.clone(), act.fence.clone(), prev, 60, done)
        };
        (op, rx)
    };
    let send = |op: WriteOp, rx: oneshot::Receiver<Result<(), StoreError>>| {
        let tx = tx.clone();
        async move {
            tx.send(op).await.unwrap();
            rx.await.unwrap()
        }
    };
    let lb = || -> u64 { redis.conn().hget(keys::lb_counts(&f), keys::lb_count_field(day, "opd")).unwrap() };
    let w = || -> u64 { redis.conn().hget(keys::fence(&f), "w").unwrap() };

    let (op, rx) = write(0, "OPD1#1");
    assert_eq!(send(op, rx).await, Ok(()));
    assert_eq!((lb(), w()), (1, 1));
    // The same write again (its reply was lost): applied already, so answered Ok, unchanged.
    let (op, rx) = write(0, "OPD1#1");
    assert_eq!(send(op, rx).await, Ok(()), "a resent write that already applied is not a GAP");
    assert_eq!((lb(), w()), (1, 1), "nothing applied twice");
    let (op, rx) = write(1, "OPD1#2");
    assert_eq!(send(op, rx).await, Ok(()));
    assert_eq!((lb(), w()), (2, 2));
    // A write behind a missing one is still a GAP, and changes nothing.
    let (op, rx) = write(5, "OPD1#9");
    assert_eq!(send(op, rx).await, Err(StoreError::Gap));
    assert_eq!((lb(), w()), (2, 2));
    let fields: Vec<String> = redis.conn().hkeys(keys::day_tokens(&f, day)).unwrap();
    assert_eq!(fields.len(), 2, "{fields:?}");
}

/// Calls of `cmd` since the last CONFIG RESETSTAT, from INFO commandstats (commands that
/// scripts run count too).
fn calls(redis: &RedisServer, cmd: &str) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query(&mut redis.conn()).unwrap();
    let prefix = format!("cmdstat_{cmd}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |rest| rest.split(',').next().unwrap().parse().unwrap())
}

/// One group commit is one script call carrying every write, each answered by itself: two
/// writes of one facility apply (sharing one fence check), a write under a stale fence is
/// FENCED, one behind a missing write is a GAP, a resent copy is answered applied; the
/// refused writes change nothing, and the others apply regardless of them.
#[actix_web::test]
async fn a_batch_is_one_script_call_and_each_write_in_it_is_answered_and_applied_or_refused_alone() {
    // No gateway runs on this Redis: the command counts below are the writer's alone.
    let redis = RedisServer::start();
    let (a, b, c, d) = (fid(374), fid(375), fid(376), fid(377));
    let target = Target { urls: vec![redis.url()], cluster: false };
    let store = Store::open(&target, Duration::from_secs(2)).unwrap();
    let infos: Vec<(String, String)> = [&a, &b, &c, &d].iter().map(|f| (f.to_string(), "{}".to_string())).collect();
    store.put_infos(&infos).await.unwrap();
    let day = START_DATE.parse().unwrap();
    let mut fences = HashMap::new();
    for f in [&a, &b, &c, &d] {
        fences.insert(f.clone(), fence_of(&store, f, day).await);
    }
    let owner = Arc::new(writer::BoardOwner { state: "KA", district: "KA/Mysuru".into() });
    let write = |f: &str, prev: u64, field: &str| {
        let (done, rx) = oneshot::channel();
        let keys = Arc::new(keys::FacilityKeys::new(f));
        let day_key: Arc<str> = keys.day(day).into();
        let op = WriteOp {
            fields: vec![(field.to_string(), "record".to_string())],
            lb_count_fields: vec![keys::lb_count_field(day, "opd")],
            board: Some(owner.clone()),
            ..WriteOp::barrier_of(keys, day_key, fences[f].clone(), prev, 60, done)
        };
        (op, rx)
    };
    let metrics = scan_gateway::telemetry::metrics::Metrics::new();
    let run = |ops: Vec<WriteOp>, touched: Touched| {
        let (tx, rx) = mpsc::channel(16);
        for op in ops {
            tx.try_send(op).unwrap();
        }
        drop(tx);
        // Every write is queued before the writer starts: they go as one batch.
        writer::run(rx, store.connection(), Duration::from_secs(2), no_linger(16), touched, metrics.clone())
    };
    // D's first write applies before the batch, whose copy of it is a resend.
    let (d0, d0_rx) = write(&d, 0, "OPD1#1");
    run(vec![d0], Touched::default()).await;
    assert_eq!(d0_rx.await.unwrap(), Ok(()));

    let untouched =
        |f: &str| redis.snapshot().into_iter().filter(|(k, _)| k.contains(&format!("{{{f}}}"))).collect::<Vec<_>>();
    let (before_b, before_c, before_d) = (untouched(&b), untouched(&c), untouched(&d));
    let mut stale = write(&b, 0, "OPD1#1");
    stale.0.fence.nonce = "0000000000000000".into();
    let batch = [write(&a, 0, "OPD1#1"), stale, write(&a, 1, "OPD1#2"), write(&c, 5, "OPD1#9"), write(&d, 0, "OPD1#1")];
    let (ops, rxs): (Vec<WriteOp>, Vec<_>) = batch.into_iter().unzip();
    let touched = Touched::default();
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut redis.conn()).unwrap();
    run(ops, touched.clone()).await;
    let mut answers = Vec::new();
    for rx in rxs {
        answers.push(rx.await.unwrap());
    }
    assert_eq!(
        answers,
        vec![Ok(()), Err(StoreError::Fenced), Ok(()), Err(StoreError::Gap), Ok(())],
        "applied, fenced, applied, gap, resent"
    );
    assert_eq!(calls(&redis, "evalsha"), 1, "one script call for the batch");
    assert_eq!(calls(&redis, "hmget"), 4, "one fence check per facility");

    let lb =
        |f: &str| -> Option<u64> { redis.conn().hget(keys::lb_counts(f), keys::lb_count_field(day, "opd")).unwrap() };
    let w = |f: &str| -> u64 { redis.conn().hget(keys::fence(f), "w").unwrap() };
    assert_eq!((day_hash(&redis, &a, START_DATE).len(), lb(&a), w(&a)), (2, Some(2), 2), "both of A's writes applied");
    assert_eq!(untouched(&b), before_b, "the fenced write changed nothing");
    assert_eq!(untouched(&c), before_c, "the write behind a gap changed nothing");
    assert_eq!(untouched(&d), before_d, "the resent copy changed nothing");
    // What the applier is told: A's counts as answered, D's to be read, nothing of B or C.
    let mut told = touched.drain();
    told.sort_by(|x, y| x.0.cmp(&y.0));
    let opd = keys::lb_count_field(day, "opd");
    assert_eq!(
        told,
        vec![
            (a.clone(), writer::Counted::Known { owner: owner.clone(), counts: vec![(opd, 2)] }),
            (d.clone(), writer::Counted::Snapshot)
        ]
    );
}

/// Redis lost its script cache (a restart, a failover): the batch's call is refused with
/// NOSCRIPT and ran nothing, so the writer loads the script and sends the writes again;
/// each applies once.
#[actix_web::test]
async fn a_batch_refused_for_a_lost_script_cache_is_sent_again_and_applies_once() {
    let redis = RedisServer::start();
    let f = fid(378);
    let target = Target { urls: vec![redis.url()], cluster: false };
    let store = Store::open(&target, Duration::from_secs(2)).unwrap();
    store.put_infos(&[(f.clone(), "{}".to_string())]).await.unwrap();
    let day = START_DATE.parse().unwrap();
    let fence = fence_of(&store, &f, day).await;
    let keys = Arc::new(keys::FacilityKeys::new(&f));
    let day_key: Arc<str> = keys.day(day).into();
    let (tx, rx) = mpsc::channel(8);
    let mut answers = Vec::new();
    for (prev, field) in [(0, "OPD1#1"), (1, "OPD1#2")] {
        let (done, answer) = oneshot::channel();
        tx.try_send(WriteOp {
            fields: vec![(field.to_string(), "record".to_string())],
            lb_count_fields: vec![keys::lb_count_field(day, "opd")],
            ..WriteOp::barrier_of(keys.clone(), day_key.clone(), fence.clone(), prev, 60, done)
        })
        .unwrap();
        answers.push(answer);
    }
    drop(tx);
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut redis.conn()).unwrap();
    let sha = redis::Script::new(scan_gateway::persistence::store::WRITE).get_hash().to_string();
    let loaded: Vec<bool> = redis::cmd("SCRIPT").arg("EXISTS").arg(&sha).query(&mut redis.conn()).unwrap();
    assert_eq!(loaded, vec![false], "the premise: Redis does not know the script");
    let metrics = scan_gateway::telemetry::metrics::Metrics::new();
    writer::run(rx, store.connection(), Duration::from_secs(2), no_linger(8), Touched::default(), metrics).await;
    for a in answers {
        assert_eq!(a.await.unwrap(), Ok(()));
    }
    let lb: u64 = redis.conn().hget(keys::lb_counts(&f), keys::lb_count_field(day, "opd")).unwrap();
    let w: u64 = redis.conn().hget(keys::fence(&f), "w").unwrap();
    assert_eq!((day_hash(&redis, &f, START_DATE).len(), lb, w), (2, 2, 2), "both applied, once");
    let sha = redis::Script::new(scan_gateway::persistence::store::WRITE).get_hash().to_string();
    let loaded: Vec<bool> = redis::cmd("SCRIPT").arg("EXISTS").arg(&sha).query(&mut redis.conn()).unwrap();
    assert_eq!(loaded, vec![true], "the writer loaded the script again");
}
