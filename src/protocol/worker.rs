//! The on-share worker: reads accepted shares from the outbox (consumer group), issues each
//! token through the same facility actor path as `POST /v1/scans` (idempotent by the
//! share's request id) unless its deadline already passed, and delivers the on-share callback
//! with exponential backoff and jitter until the deadline (a permanent 4xx of the switch ends
//! it at once). Entries of a stopped process are taken over once idle.
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use actix_web::web;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Semaphore;

use super::hiecm::{Hiecm, SendError, Version};
use super::shapes::{self, Failure, FailureCode, TokenAck};
use crate::facility::actor::FacilityError;
use crate::facility::queue::QueueError;
use crate::facility::view::ApiTime;
use crate::facility::Command;
use crate::ingress::validate::ScanRequest;
use crate::ingress::AppState;
use crate::persistence::outbox::Entry;
use crate::telemetry::metrics::{GiveUp, Metrics, GIVE_UP_REASONS};

/// Outbox entry fields.
pub const F_VERSION: &str = "v";
pub const F_REQUEST_ID: &str = "rid";
pub const F_HIP: &str = "hip";
pub const F_BODY: &str = "body";
/// Injected-clock milliseconds at which the share was accepted (the deadline counts from it).
pub const F_AT: &str = "at";

/// The answer for a share could not be decided yet (the store or the facility is busy).
struct Transient;

/// Delay before retry `attempt` (1-based): exponential, capped, with full jitter.
pub fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    let ceiling = base.saturating_mul(1u32.checked_shl(attempt.saturating_sub(1).min(20)).unwrap_or(u32::MAX)).min(max);
    let ms = ceiling.as_millis().max(1) as u64;
    Duration::from_millis(rand::rng().random_range(ms / 2..=ms))
}

struct Ctx {
    state: web::Data<AppState>,
    hiecm: Hiecm,
    consumer: String,
    metrics: Metrics,
    /// Entries a task of this process is working on: a claim of idle entries returns this
    /// consumer's own slow ones too, and one entry must never have two senders.
    working: std::cell::RefCell<std::collections::HashSet<String>>,
}

impl Ctx {
    fn stopping(&self) -> bool {
        self.state.shutting_down.load(Ordering::Relaxed)
    }
}

/// Starts the worker on the current actix system; it stops when the gateway drains.
pub fn spawn(state: web::Data<AppState>) {
    actix_rt::spawn(async move {
        let Some(p) = state.protocol.as_ref() else { return };
        let hiecm = Hiecm::new(p.session.clone());
        let consumer = format!("gw-{}-{}", std::process::id(), &super::hiecm::new_request_id()[..8]);
        let metrics = state.directory.deps().metrics.clone();
        let ctx = Rc::new(Ctx { state: state.clone(), hiecm, consumer, metrics, working: Default::default() });
        run(ctx).await;
    });
}

async fn run(ctx: Rc<Ctx>) {
    let s = &ctx.state.settings;
    let stop = ctx.state.shutting_down.clone();
    let claim_idle = Duration::from_millis(s.onshare_claim_idle_ms);
    while ctx.state.store.outbox_init().await.is_err() {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // XREADGROUP BLOCK holds its connection for the whole wait: it gets one of its own, or
    // every other command on the shared multiplexed connection would queue behind it.
    let Ok(reader) = s
        .redis_target()
        .ok_or_else(|| redis::RedisError::from(std::io::Error::other("bad SCANGW_REDIS_URL")))
        .and_then(|t| crate::persistence::Store::open(&t, ctx.state.store.timeout()))
    else {
        tracing::error!("on-share worker cannot open its Redis connection; callbacks are not sent");
        return;
    };
    tracing::info!(consumer = %ctx.consumer, "on-share worker started");
    let slots = std::sync::Arc::new(Semaphore::new(s.onshare_concurrency));
    let mut last_claim: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        let free = slots.available_permits();
        if free == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let mut entries = Vec::new();
        if last_claim.is_none_or(|t| t.elapsed() >= claim_idle / 4) {
            last_claim = Some(Instant::now());
            entries = ctx.state.store.outbox_claim_idle(&ctx.consumer, claim_idle, free).await.unwrap_or_default();
            if let Ok(n) = ctx.state.store.outbox_len().await {
                ctx.metrics.outbox_entries.set(n as f64);
            }
        }
        if entries.is_empty() {
            match reader.outbox_read(&ctx.consumer, free, Duration::from_millis(500)).await {
                Ok(e) => entries = e,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
            }
        }
        for e in entries {
            if !ctx.working.borrow_mut().insert(e.id.clone()) {
                continue;
            }
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                ctx.working.borrow_mut().remove(&e.id);
                break;
            };
            let ctx = ctx.clone();
            actix_rt::spawn(async move {
                let id = e.id.clone();
                handle(&ctx, e).await;
                ctx.working.borrow_mut().remove(&id);
                drop(permit);
            });
        }
    }
}

fn now_ms(ctx: &Ctx) -> i64 {
    ctx.state.directory.deps().clock.now().as_millisecond()
}

/// Works one entry to the end: an answer, then its delivery; or it is given up (its
/// deadline passed, or the switch refused the callback for good).
async fn handle(ctx: &Ctx, e: Entry) {
    let s = &ctx.state.settings;
    let (base, max) = (Duration::from_millis(s.onshare_backoff_ms), Duration::from_millis(s.onshare_backoff_max_ms));
    let Some(version) = Version::parse(e.get(F_VERSION)) else {
        give_up(ctx, &e.id, "", GiveUp::BadEntry, 0, None).await;
        return;
    };
    let rid = e.get(F_REQUEST_ID).to_string();
    let at: i64 = e.get(F_AT).parse().unwrap_or_else(|_| e.accepted_ms());
    let deadline = at + (s.onshare_deadline_s as i64) * 1000;
    let mut attempt = 0u32;
    let answer = loop {
        if ctx.stopping() {
            return; // Still pending: another process (or this one restarted) takes it over.
        }
        // Before every attempt to issue, never after: a share whose deadline passed while it
        // waited (behind busy slots, or pending under a node that stopped) could not have its
        // callback sent any more, and a token nobody hears of would still take a number in
        // the patient's queue and count on the leaderboards.
        if now_ms(ctx) >= deadline {
            give_up(ctx, &e.id, &rid, GiveUp::ExpiredBeforeToken, attempt, None).await;
            return;
        }
        match answer(ctx, version, &rid, e.get(F_HIP), e.get(F_BODY), deadline).await {
            Ok(v) => break v,
            Err(Transient) => {
                attempt += 1;
                tokio::time::sleep(backoff(attempt, base, max)).await;
            }
        }
    };
    let mut attempt = 0u32;
    loop {
        if ctx.stopping() {
            return;
        }
        if now_ms(ctx) >= deadline {
            give_up(ctx, &e.id, &rid, GiveUp::ExpiredUndelivered, attempt, None).await;
            return;
        }
        match ctx.state.store.outbox_touch(&ctx.consumer, &e.id).await {
            Ok(true) => {}
            // Another process took this entry over (this one stalled): it sends from now on.
            Ok(false) => return,
            Err(_) => {
                attempt += 1;
                tokio::time::sleep(backoff(attempt, base, max)).await;
                continue;
            }
        }
        let now = ctx.state.directory.deps().clock.now();
        match ctx.hiecm.on_share(version, e.get(F_HIP), &answer, now).await {
            Ok(()) => {
                ctx.metrics.onshare_delivered.increment(1);
                ctx.metrics.onshare_delay.record(((now.as_millisecond() - at).max(0) as f64) / 1000.0);
                // Delivered: drop the entry (it holds patient data). If this fails the entry is
                // delivered again after a takeover: the callback is idempotent by requestId.
                done(ctx, &e.id).await;
                return;
            }
            // The switch read the body and refused it (400, 403, 404, 422, ...): the same body
            // sent again is refused again, so retrying would only load the switch until the
            // deadline. Only 5xx, timeouts and connection errors are retried.
            Err(SendError::Status(status)) if SendError::Status(status).is_permanent() => {
                give_up(ctx, &e.id, &rid, GiveUp::SwitchRejected, attempt + 1, Some(status)).await;
                return;
            }
            Err(err) => {
                attempt += 1;
                ctx.metrics.onshare_retried.increment(1);
                tracing::info!(request_id = %rid, attempt, error = %err, "on-share attempt failed; retrying");
                tokio::time::sleep(backoff(attempt, base, max)).await;
            }
        }
    }
}

/// Acknowledges and deletes an entry, with a few tries (it holds the patient profile).
async fn done(ctx: &Ctx, id: &str) {
    for _ in 0..3 {
        if ctx.state.store.outbox_done(id).await.is_ok() {
            break;
        }
    }
}

/// Drops an entry without a delivered on-share: one log line (the switch's request id and
/// the stream id, never patient data), the give-up metric by reason, and the entry deleted.
async fn give_up(ctx: &Ctx, id: &str, rid: &str, why: GiveUp, attempts: u32, status: Option<u16>) {
    let what = match why {
        GiveUp::ExpiredBeforeToken => "share given up: its deadline passed before a token was issued (no token)",
        GiveUp::ExpiredUndelivered => "share given up: no on-share landed before its deadline",
        GiveUp::SwitchRejected => "share given up: the switch refused its on-share with a permanent 4xx",
        GiveUp::BadEntry => "outbox entry of unknown version dropped",
    };
    let reason = GIVE_UP_REASONS[why as usize];
    tracing::warn!(request_id = %rid, entry = %id, reason, attempts, status, "{what}");
    ctx.metrics.onshare_given_up(why);
    done(ctx, id).await;
}

/// Whole seconds between two times of a token view (its validity), as the API shows them.
fn validity_s(issued: ApiTime, expires: ApiTime) -> u64 {
    match (issued.timestamp(), expires.timestamp()) {
        (Some(a), Some(b)) => (b.as_second() - a.as_second()).max(0) as u64,
        _ => 0,
    }
}

/// An on-share body (v1.0 bodies carry a new request id and time of their own).
fn body(ctx: &Ctx, version: Version, rid: &str, outcome: Result<&TokenAck<'_>, &Failure>) -> Value {
    let now = ctx.state.directory.deps().clock.now();
    shapes::on_share(version, &super::hiecm::new_request_id(), &super::hiecm::timestamp(now), rid, outcome)
}

/// The on-share body for a share: the token (issued now, or the same one again), or a
/// FAILURE with a code. Transient trouble (store down, facility overloaded) is retried.
async fn answer(
    ctx: &Ctx,
    version: Version,
    rid: &str,
    hip: &str,
    raw: &str,
    deadline: i64,
) -> Result<Value, Transient> {
    let fail = |f: Failure| Ok(body(ctx, version, rid, Err(&f)));
    // The ABHA address is answered as the share sent it (trimmed, case kept), not in the
    // lower case the gateway keys its patients by.
    let mut received_address = None;
    let scan = match version {
        Version::V3 => match shapes::parse_v3(raw.as_bytes()) {
            Ok(mut s) => {
                // Routed on X-HIP-ID (see `ingress::protocol::share_v3`).
                let meta = s.meta_data.get_or_insert_with(Default::default);
                meta.hip_id = Some(hip.to_string());
                if blank(&meta.context) {
                    match default_counter(ctx, hip).await? {
                        Some(c) => meta.context = c,
                        None => return fail(Failure::new(FailureCode::UnknownFacility)),
                    }
                }
                received_address =
                    s.profile.as_ref().and_then(|p| p.patient.as_ref()).and_then(|p| p.abha_address.clone());
                s.into_scan()
            }
            Err(e) => Err(e),
        },
        Version::V1 => match shapes::parse_v1(raw.as_bytes()) {
            Ok(mut s) => {
                let profile = s.profile.get_or_insert_with(Default::default);
                if blank(&profile.hip_code) {
                    match default_counter(ctx, hip).await? {
                        Some(c) => profile.hip_code = c,
                        None => return fail(Failure::new(FailureCode::UnknownFacility)),
                    }
                }
                received_address = profile.patient.as_ref().and_then(|p| p.health_id.clone()).map(|a| {
                    let a = a.trim().to_string();
                    if a.contains('@') {
                        a
                    } else {
                        format!("{a}@abdm")
                    }
                });
                s.into_scan(hip)
            }
            Err(e) => Err(e),
        },
    };
    let scan = match scan {
        Ok(s) => s,
        Err(e) => return fail(Failure::invalid(&e, version)),
    };
    let state = &ctx.state;
    let deps = state.directory.deps();
    let year = deps.clock.now().to_zoned(jiff::tz::TimeZone::UTC).year();
    let idem = format!("share:{rid}");
    // Kept as read, for the facility's owner if that is another node (see `ShareScan`).
    let forwardable = scan.clone();
    let (facility, input) = match scan.into_input(&deps.hasher, year, Some(&idem)) {
        Ok(x) => x,
        Err(e) => return fail(Failure::invalid(&e, version)),
    };
    if !state.redis_up.load(Ordering::Relaxed) {
        return Err(Transient);
    }
    let abha = received_address
        .map(|a| a.trim().to_string())
        .filter(|a| a.eq_ignore_ascii_case(&input.profile.abha_address))
        .unwrap_or_else(|| input.profile.abha_address.clone());
    let counter = input.counter.clone();
    let outcome = match scan_here_or_at_owner(state, &facility, input, &forwardable, &idem, deadline).await {
        Some(o) => o,
        None => return Err(Transient),
    };
    match outcome {
        Ok(ticket) => {
            let ack = TokenAck {
                abha_address: &abha,
                context: &counter,
                token_number: ticket.token_number,
                expiry_s: ticket.validity_s,
            };
            Ok(body(ctx, version, rid, Ok(&ack)))
        }
        Err(code) => fail(Failure::new(code)),
    }
}

/// A share's scan as another node runs it for the node whose worker holds the share
/// ([`crate::ingress::protocol::share_scan_for_node`]): the scan as read from the share, its
/// Idempotency-Key (`share:<request id>`) and its deadline.
#[derive(Debug, Serialize, Deserialize)]
pub struct ShareScan {
    pub scan: ScanRequest,
    pub idempotency_key: String,
    pub deadline_ms: i64,
}

/// What an on-share needs of the token.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ShareTicket {
    pub token_number: u32,
    pub validity_s: u64,
}

impl ShareTicket {
    pub fn of(view: &crate::facility::view::TokenView) -> Self {
        ShareTicket { token_number: view.token_number, validity_s: validity_s(view.issued_at, view.expires_at) }
    }
}

/// The share's token, or the failure its on-share reports; `None`: transient trouble (store
/// down, facility overloaded, owner answering 5xx), tried again later.
type ShareOutcome = Option<Result<ShareTicket, FailureCode>>;

/// Runs a share's scan on this node, or, with ownership leases, on the node that owns the
/// facility under a live lease (the worker runs on whatever node claimed the share, so
/// running it here would take the facility from the node the load balancer routes to). An
/// owner that cannot be reached is taken over: the share's Idempotency-Key makes a second
/// run answer the same token.
async fn scan_here_or_at_owner(
    state: &web::Data<AppState>,
    facility: &str,
    input: crate::facility::queue::ScanInput,
    forwardable: &ScanRequest,
    idem: &str,
    deadline: i64,
) -> ShareOutcome {
    // The facility and patient limits are charged by the actor, only for a new token: a
    // redelivered share answers its token again however often it comes.
    let admit = || crate::ingress::auth::share_admission(state, facility, input.patient, deadline);
    let make = |reply| Command::Scan { input: input.clone(), admit: admit(), reply };
    let dir = &state.directory;
    let url = match dir.ask_routed(facility, make).await {
        Err(FacilityError::OwnedElsewhere { url, .. }) => url,
        r => return local_outcome(r),
    };
    let me = dir.deps().node.as_ref().map_or("", |n| n.id.as_str());
    let metrics = &dir.deps().metrics;
    let share = ShareScan { scan: forwardable.clone(), idempotency_key: idem.to_string(), deadline_ms: deadline };
    let path = format!("{url}/internal/v1/shares/scan");
    match crate::ingress::forward::post_json(&path, &state.settings.platform_token, me, &share).await {
        Ok((status, body)) => {
            metrics.forwarded_served.increment(1);
            remote_outcome(status, &body)
        }
        Err(()) => {
            tracing::warn!(owner = %url, "facility owner unreachable; taking the facility over for a share");
            metrics.forwarded_taken_over.increment(1);
            dir.forget_owner(facility);
            local_outcome(dir.ask(facility, make).await)
        }
    }
}

fn local_outcome(r: Result<crate::facility::ScanReply, FacilityError>) -> ShareOutcome {
    match r {
        Ok(r) => Some(Ok(ShareTicket::of(&r.view))),
        Err(FacilityError::UnknownFacility) => Some(Err(FailureCode::UnknownFacility)),
        Err(FacilityError::RateLimited(_)) => Some(Err(FailureCode::RateLimited)),
        Err(FacilityError::Queue(QueueError::UnknownCounter)) => Some(Err(FailureCode::UnknownCounter)),
        Err(FacilityError::Queue(_)) => Some(Err(FailureCode::InvalidProfile)),
        Err(FacilityError::Overloaded) | Err(FacilityError::Store(_)) => None,
        // Not answered by `ask`, which takes the facility over; retried if it ever is.
        Err(FacilityError::OwnedElsewhere { .. }) => None,
        // The deadline passed while the share waited for its facility: no token was issued;
        // the caller's deadline check gives it up on its next turn.
        Err(FacilityError::Expired) => None,
    }
}

/// The owner's answer to [`ShareScan`], read as [`local_outcome`] reads the actor's (the
/// owner maps those errors to statuses and codes in `ingress::error`).
fn remote_outcome(status: u16, body: &[u8]) -> ShareOutcome {
    let code =
        || serde_json::from_slice::<Value>(body).ok().and_then(|v| v["error"]["code"].as_str().map(String::from));
    match status {
        200 => serde_json::from_slice::<ShareTicket>(body).ok().map(Ok),
        404 if code().as_deref() == Some("UNKNOWN_COUNTER") => Some(Err(FailureCode::UnknownCounter)),
        404 => Some(Err(FailureCode::UnknownFacility)),
        429 => Some(Err(FailureCode::RateLimited)),
        400..=499 => Some(Err(FailureCode::InvalidProfile)),
        _ => None,
    }
}

fn blank(v: &Option<String>) -> bool {
    v.as_deref().is_none_or(|c| c.trim().is_empty())
}

/// The counter of a share that names none (the 2023 Scan & Share documents make the counter
/// code optional): the facility's default OPD counter, defined as the first counter of kind
/// `opd` in its registry record, in the order the record lists them; without one the share
/// gets a FAILURE naming the missing counter field. A store error is retried.
/// `Ok(None)`: the facility is not registered (UNKNOWN_FACILITY, as a share naming a counter
/// would get); `Ok(Some(None))`: it has no OPD counter.
async fn default_counter(ctx: &Ctx, hip: &str) -> Result<Option<Option<String>>, Transient> {
    let raw = ctx.state.store.get_info(hip).await.map_err(|_| Transient)?;
    let Some(info) = raw.and_then(|r| serde_json::from_str::<crate::registry::FacilityInfo>(&r).ok()) else {
        return Ok(None);
    };
    Ok(Some(default_opd_counter(&info)))
}

/// The first counter of kind `opd` of `info`, in its listed order.
pub fn default_opd_counter(info: &crate::registry::FacilityInfo) -> Option<String> {
    info.counters.iter().find(|c| c.kind == crate::facility::queue::CounterKind::Opd).map(|c| c.id.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let (b, m) = (Duration::from_millis(100), Duration::from_secs(2));
        for _ in 0..50 {
            let d1 = backoff(1, b, m);
            assert!((50..=100).contains(&(d1.as_millis() as u64)), "{d1:?}");
            let d3 = backoff(3, b, m);
            assert!((200..=400).contains(&(d3.as_millis() as u64)), "{d3:?}");
            let d30 = backoff(30, b, m);
            assert!((1000..=2000).contains(&(d30.as_millis() as u64)), "{d30:?}");
        }
    }
}
