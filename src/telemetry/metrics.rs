//! The metrics catalog: every metric's name, type, unit, labels and meaning, once. Handles
//! are registered once and cloned into the hot paths. Labels are bounded enums only:
//! never a facility, patient or token id.
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// `scangw_scans_total{state,counter_kind,outcome}`: scans answered by a facility, by the
/// facility's state code (or `unknown`), the counter's kind (or `unknown`) and outcome
/// (new = a token issued, repeat, replay, rejected).
pub const SCANS: &str = "scangw_scans_total";
/// `scangw_token_issue_seconds`: time from a scan reaching its facility actor to the token
/// being durable in Redis.
pub const TOKEN_ISSUE: &str = "scangw_token_issue_seconds";
/// `scangw_http_request_duration_seconds{route,status_class}`: HTTP latency by route pattern.
pub const HTTP_DURATION: &str = "scangw_http_request_duration_seconds";
/// `scangw_overloaded_total{reason}`: requests shed with 503 (mailbox, in_flight, writer).
pub const OVERLOADED: &str = "scangw_overloaded_total";
/// `scangw_active_facility_actors`: facility actors alive on this node.
pub const ACTIVE_ACTORS: &str = "scangw_active_facility_actors";
/// `scangw_facility_activation_seconds`: a facility actor's activation, from its first
/// request to a queue ready to serve (fencing epoch, day read from Redis, rebuild).
pub const ACTIVATION: &str = "scangw_facility_activation_seconds";
/// `scangw_passivations_total{reason}`: actors passivated, `idle` (the idle timeout) or
/// `pressure` (the node was over `SCANGW_MAX_ACTIVE_FACILITIES`).
pub const PASSIVATIONS: &str = "scangw_passivations_total";
/// `scangw_live_tokens`: waiting and called tokens held in memory (finished ones leave).
pub const LIVE_TOKENS: &str = "scangw_live_tokens";
/// `scangw_redis_batch_size`: writes per group-commit round trip.
pub const REDIS_BATCH_SIZE: &str = "scangw_redis_batch_size";
/// `scangw_redis_flush_seconds`: duration of one group-commit round trip.
pub const REDIS_FLUSH: &str = "scangw_redis_flush_seconds";
/// `scangw_fencing_conflicts_total`: writes refused because another activation owns the facility.
pub const FENCING_CONFLICTS: &str = "scangw_fencing_conflicts_total";
/// `scangw_redis_write_resends_total`: writes the Redis client sent again after they had
/// applied (a dropped cluster pipeline), answered `AGAIN` by the script and applied once.
pub const WRITE_RESENDS: &str = "scangw_redis_write_resends_total";
/// `scangw_facility_requests_total{thread}`: requests handed to a facility actor, by whether
/// the actor lives on the thread the request arrived on (`home`: no handoff) or on another
/// HTTP worker (`other`: one handoff there and back).
pub const FACILITY_REQUESTS: &str = "scangw_facility_requests_total";
/// `scangw_store_errors_total`: requests answered 503 STORE_UNAVAILABLE.
pub const STORE_ERRORS: &str = "scangw_store_errors_total";
/// `scangw_rate_limited_total{limit}`: requests refused with 429, by limit (global, client, facility, patient, page).
pub const RATE_LIMITED: &str = "scangw_rate_limited_total";
/// `scangw_counter_ops_total{op}`: counter operations applied (call_next, recall, complete, no_show, transfer).
pub const COUNTER_OPS: &str = "scangw_counter_ops_total";
/// `scangw_mailbox_depth`: commands waiting in facility mailboxes on this node (at scrape).
pub const MAILBOX_DEPTH: &str = "scangw_mailbox_depth";
/// `scangw_redis_up`: 1 when the last health ping reached Redis, else 0.
pub const REDIS_UP: &str = "scangw_redis_up";
/// `scangw_sse_clients`: open server-sent-event streams (live pages).
pub const SSE_CLIENTS: &str = "scangw_sse_clients";
/// `scangw_leaderboard_state_tokens{state,period}`: exact tokens per state, today or all
/// time, read from the Redis leaderboards (every node exports the same national value).
pub const LB_STATE: &str = "scangw_leaderboard_state_tokens";
/// `scangw_leaderboard_top_facility_tokens{rank,facility_id,facility_name,state}`: today's
/// top N facilities (N = `leaderboard_top_n`, so at most N series).
pub const LB_TOP_FACILITY: &str = "scangw_leaderboard_top_facility_tokens";
/// `scangw_leaderboard_top_district_tokens{rank,district,state}`: today's top N districts.
pub const LB_TOP_DISTRICT: &str = "scangw_leaderboard_top_district_tokens";
/// `scangw_shares_total{version,outcome}`: protocol share calls (v3, v1), accepted (202) or
/// rejected (4xx/5xx before the outbox).
pub const SHARES: &str = "scangw_shares_total";
/// `scangw_profile_fields_dropped_total{field}`: optional profile fields (`phone`,
/// `abha_number`) that broke their rule and were dropped so the scan or share still got its
/// token (native scans and shares alike; a share retried after a transient failure is read
/// again and counts again).
pub const PROFILE_FIELDS_DROPPED: &str = "scangw_profile_fields_dropped_total";
/// `scangw_onshare_callbacks_total{outcome}`: on-share attempts: delivered, retried, gave_up.
pub const ONSHARE: &str = "scangw_onshare_callbacks_total";
/// `scangw_onshare_given_up_total{reason}`: shares given up without a delivered on-share, by
/// [`GIVE_UP_REASONS`] (each also counts as `scangw_onshare_callbacks_total{outcome="gave_up"}`).
pub const ONSHARE_GIVEN_UP: &str = "scangw_onshare_given_up_total";
/// `scangw_onshare_delay_seconds`: share accepted to its on-share delivered (retries included).
pub const ONSHARE_DELAY: &str = "scangw_onshare_delay_seconds";
/// `scangw_share_hip_mismatch_total`: v3 shares whose `X-HIP-ID` header named another
/// facility than their `metaData.hipId` (routed on the header, as NHA's wrapper does).
pub const SHARE_HIP_MISMATCH: &str = "scangw_share_hip_mismatch_total";
/// `scangw_share_redelivery_expired_bearer_total`: shares redelivered with a bearer expired
/// within `SCANGW_JWT_REDELIVERY_GRACE_S` and accepted (their request id was accepted before).
pub const SHARE_REDELIVERY_EXPIRED: &str = "scangw_share_redelivery_expired_bearer_total";
/// `scangw_running_token_on_status_total{outcome}`: running-token on-status callbacks
/// `delivered`, or `failed` (not landed after a few tries, or refused by the switch).
pub const RUNNING_TOKEN_ON_STATUS: &str = "scangw_running_token_on_status_total";
/// `scangw_outbox_entries`: shares in the outbox not yet answered (all nodes).
pub const OUTBOX_ENTRIES: &str = "scangw_outbox_entries";
/// `scangw_leaderboard_apply_lag_seconds`: seconds since this node's leaderboard applier
/// last completed a pass (about `leaderboard_apply_ms` when healthy; grows while it fails).
pub const LB_APPLY_LAG: &str = "scangw_leaderboard_apply_lag_seconds";
/// `scangw_leaderboard_applied_tokens_total`: tokens this node's applier added to the boards.
pub const LB_APPLIED: &str = "scangw_leaderboard_applied_tokens_total";
/// `scangw_forwarded_total{outcome}`: requests for a facility whose lease is alive on another
/// node, sent on to that owner: `served_by_owner` (its answer passed back), `taken_over` (the
/// owner could not be reached before the request was sent, or sending again is harmless:
/// this node took the facility over and served it), `failed` (the owner may have received a
/// counter operation but did not answer: 503, as the outcome is unknown).
pub const FORWARDED: &str = "scangw_forwarded_total";
/// `process_resident_memory_bytes`: resident set size of the process.
pub const PROCESS_RSS: &str = "process_resident_memory_bytes";
/// `process_cpu_seconds_total`: user + system CPU time of the process.
pub const PROCESS_CPU: &str = "process_cpu_seconds_total";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// One exported metric: the catalog dashboards and alert rules are checked against.
#[derive(Debug, Clone, Copy)]
pub struct MetricDef {
    pub name: &'static str,
    pub kind: MetricKind,
    pub unit: &'static str,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

const fn def(
    name: &'static str,
    kind: MetricKind,
    unit: &'static str,
    labels: &'static [&'static str],
    help: &'static str,
) -> MetricDef {
    MetricDef { name, kind, unit, labels, help }
}

use MetricKind::{Counter as C, Gauge as G, Histogram as H};

/// Every metric the gateway exports. Label values are bounded: 36 states + unknown, 5
/// counter kinds, 4 outcomes, route patterns, status classes, limit and shed reasons; the
/// leaderboard gauges are bounded by `leaderboard_top_n`.
pub const CATALOG: &[MetricDef] = &[
    def(SCANS, C, "scans", &["state", "counter_kind", "outcome"], "Scans answered by a facility"),
    def(TOKEN_ISSUE, H, "seconds", &[], "Scan reaching its actor to token durable in Redis"),
    def(HTTP_DURATION, H, "seconds", &["route", "status_class"], "HTTP request latency by route pattern"),
    def(OVERLOADED, C, "requests", &["reason"], "Requests shed with 503 OVERLOADED"),
    def(RATE_LIMITED, C, "requests", &["limit"], "Requests refused with 429"),
    def(ACTIVE_ACTORS, G, "actors", &[], "Facility actors alive on this node"),
    def(ACTIVATION, H, "seconds", &[], "Facility actor activations: epoch, day read and rebuild"),
    def(PASSIVATIONS, C, "actors", &["reason"], "Idle facility actors passivated (idle timeout or memory pressure)"),
    def(LIVE_TOKENS, G, "tokens", &[], "Waiting and called tokens held in memory on this node"),
    def(MAILBOX_DEPTH, G, "commands", &[], "Commands waiting in facility mailboxes"),
    def(REDIS_BATCH_SIZE, H, "writes", &[], "Writes per group-commit round trip"),
    def(REDIS_FLUSH, H, "seconds", &[], "Duration of one group-commit round trip"),
    def(FENCING_CONFLICTS, C, "writes", &[], "Writes refused by the fencing epoch"),
    def(WRITE_RESENDS, C, "writes", &[], "Writes sent again after they had applied, applied once"),
    def(
        FACILITY_REQUESTS,
        C,
        "requests",
        &["thread"],
        "Requests handed to a facility actor, on its own thread or another",
    ),
    def(STORE_ERRORS, C, "requests", &[], "Requests answered 503 STORE_UNAVAILABLE"),
    def(COUNTER_OPS, C, "operations", &["op"], "Counter operations applied"),
    def(REDIS_UP, G, "boolean", &[], "Redis reachable at the last health ping"),
    def(SSE_CLIENTS, G, "streams", &[], "Open server-sent-event streams"),
    def(LB_STATE, G, "tokens", &["state", "period"], "Tokens per state from the Redis leaderboards"),
    def(
        LB_TOP_FACILITY,
        G,
        "tokens",
        &["rank", "facility_id", "facility_name", "state"],
        "Today's top facilities by tokens",
    ),
    def(LB_TOP_DISTRICT, G, "tokens", &["rank", "district", "state"], "Today's top districts by tokens"),
    def(SHARES, C, "requests", &["version", "outcome"], "Protocol share calls, accepted or rejected"),
    def(PROFILE_FIELDS_DROPPED, C, "fields", &["field"], "Invalid optional profile fields dropped, by field"),
    def(ONSHARE, C, "callbacks", &["outcome"], "On-share attempts: delivered, retried, gave_up"),
    def(ONSHARE_GIVEN_UP, C, "shares", &["reason"], "Shares given up without a delivered on-share, by reason"),
    def(ONSHARE_DELAY, H, "seconds", &[], "Share accepted to on-share delivered"),
    def(OUTBOX_ENTRIES, G, "entries", &[], "Shares waiting for their on-share"),
    def(LB_APPLY_LAG, G, "seconds", &[], "Age of the leaderboard applier's last complete pass"),
    def(LB_APPLIED, C, "tokens", &[], "Tokens the leaderboard applier added to the boards"),
    def(FORWARDED, C, "requests", &["outcome"], "Requests forwarded to the facility's owner node, by outcome"),
    def(PROCESS_RSS, G, "bytes", &[], "Resident set size"),
    def(PROCESS_CPU, C, "seconds", &[], "User and system CPU time"),
];

/// Outcome of a scan, for [`SCANS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanOutcome {
    New,
    Repeat,
    Replay,
    Rejected,
}

/// Why a share was given up, for [`ONSHARE_GIVEN_UP`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUp {
    /// Its deadline passed before a token was issued (it waited behind busy slots, or was
    /// taken over late from a stopped node): no token, no leaderboard count.
    ExpiredBeforeToken = 0,
    /// Its token (or FAILURE) was decided, but no callback landed before the deadline.
    ExpiredUndelivered = 1,
    /// The switch refused the callback with a permanent 4xx: resending cannot help.
    SwitchRejected = 2,
    /// The outbox entry itself is unusable (unknown protocol version).
    BadEntry = 3,
}

pub const GIVE_UP_REASONS: [&str; 4] = ["expired_before_token", "expired_undelivered", "switch_rejected", "bad_entry"];

const OUTCOMES: [&str; 4] = ["new", "repeat", "replay", "rejected"];
const KINDS: [&str; 5] = ["opd", "pharmacy", "lab", "other", "unknown"];
const N_STATES: usize = crate::registry::states::STATES.len() + 1;

const LATENCY_BUCKETS: &[f64] = &[0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
const CALLBACK_BUCKETS: &[f64] =
    &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0];
const SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
const UPKEEP_THREAD: &str = "metrics-upkeep";
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Installs the Prometheus recorder once per process and returns its render handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(ONSHARE_DELAY.into()), CALLBACK_BUCKETS))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(REDIS_BATCH_SIZE.into()), SIZE_BUCKETS))
                .expect("bucket lists are non-empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (embedding); metrics then go there.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            // Histogram samples pile up raw until they are folded into buckets, which only
            // a scrape or an upkeep does: without this thread a node nobody scrapes (a
            // monitoring outage, a load test) grows by every request it serves.
            let upkeep = handle.clone();
            crate::periodic::spawn(UPKEEP_THREAD, UPKEEP_EVERY, move || upkeep.run_upkeep())
                .expect("spawn the metrics upkeep thread");
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(SCANS, "Scans answered, by outcome");
    describe_histogram!(TOKEN_ISSUE, Unit::Seconds, "Scan at the actor to durable token");
    describe_histogram!(HTTP_DURATION, Unit::Seconds, "HTTP request latency by route");
    describe_counter!(OVERLOADED, "Requests shed with 503 OVERLOADED, by reason");
    describe_gauge!(ACTIVE_ACTORS, "Facility actors alive on this node");
    describe_histogram!(ACTIVATION, Unit::Seconds, "Facility actor activations: epoch, day read and rebuild");
    describe_counter!(PASSIVATIONS, "Idle facility actors passivated, by reason");
    describe_gauge!(LIVE_TOKENS, "Waiting and called tokens held in memory on this node");
    describe_histogram!(REDIS_BATCH_SIZE, Unit::Count, "Writes per group-commit round trip");
    describe_histogram!(REDIS_FLUSH, Unit::Seconds, "Duration of one group-commit round trip");
    describe_counter!(FENCING_CONFLICTS, "Writes refused by the fencing epoch");
    describe_counter!(WRITE_RESENDS, "Writes sent again after they had applied, applied once");
    describe_counter!(FACILITY_REQUESTS, "Requests handed to a facility actor, on its own thread or another");
    describe_counter!(STORE_ERRORS, "Requests answered 503 STORE_UNAVAILABLE");
    describe_counter!(COUNTER_OPS, "Counter operations applied, by op");
    describe_counter!(RATE_LIMITED, "Requests refused with 429, by limit");
    describe_gauge!(MAILBOX_DEPTH, "Commands waiting in facility mailboxes on this node");
    describe_gauge!(REDIS_UP, "Redis reachable at the last health ping");
    describe_gauge!(SSE_CLIENTS, "Open server-sent-event streams");
    describe_counter!(SHARES, "Protocol share calls, accepted or rejected");
    describe_counter!(PROFILE_FIELDS_DROPPED, "Invalid optional profile fields dropped, by field");
    describe_counter!(ONSHARE, "On-share attempts: delivered, retried, gave_up");
    describe_counter!(ONSHARE_GIVEN_UP, "Shares given up without a delivered on-share, by reason");
    describe_histogram!(ONSHARE_DELAY, Unit::Seconds, "Share accepted to on-share delivered");
    describe_gauge!(OUTBOX_ENTRIES, "Shares waiting for their on-share");
    describe_counter!(SHARE_HIP_MISMATCH, "v3 shares whose X-HIP-ID differs from metaData.hipId");
    describe_counter!(SHARE_REDELIVERY_EXPIRED, "share redeliveries accepted with a bearer expired within the grace");
    describe_counter!(RUNNING_TOKEN_ON_STATUS, "running-token on-status callbacks, by outcome");
    describe_gauge!(LB_APPLY_LAG, "Age of the leaderboard applier's last complete pass");
    describe_counter!(LB_APPLIED, "Tokens the leaderboard applier added to the boards");
    describe_counter!(FORWARDED, "Requests forwarded to the facility's owner node, by outcome");
}

/// One handle per (state, counter kind, outcome), registered up front: the label set is
/// small and bounded, and every series exists from zero, which `rate()` and the
/// silent-state alert need.
fn scan_table() -> Arc<[Counter]> {
    let states = crate::registry::states::STATES.iter().map(|s| s.code).chain(["unknown"]);
    let mut v = Vec::with_capacity(N_STATES * KINDS.len() * OUTCOMES.len());
    for state in states {
        for kind in KINDS {
            for outcome in OUTCOMES {
                v.push(metrics::counter!(SCANS, "state" => state, "counter_kind" => kind, "outcome" => outcome));
            }
        }
    }
    v.into()
}

/// The optional profile fields that are dropped rather than refused when invalid.
pub const DROPPABLE_FIELDS: [&str; 2] = ["phone", "abha_number"];

fn dropped_handles() -> &'static [Counter; 2] {
    static HANDLES: OnceLock<[Counter; 2]> = OnceLock::new();
    HANDLES.get_or_init(|| DROPPABLE_FIELDS.map(|f| metrics::counter!(PROFILE_FIELDS_DROPPED, "field" => f)))
}

/// Pre-registered handles for the hot paths.
#[derive(Clone)]
pub struct Metrics {
    scans: Arc<[Counter]>,
    pub token_issue: Histogram,
    pub overloaded_mailbox: Counter,
    pub overloaded_in_flight: Counter,
    pub overloaded_writer: Counter,
    pub active_actors: Gauge,
    pub activation: Histogram,
    pub passivated_idle: Counter,
    pub passivated_pressure: Counter,
    pub live_tokens: Gauge,
    pub batch_size: Histogram,
    pub flush: Histogram,
    pub fencing: Counter,
    pub write_resends: Counter,
    pub facility_requests_home: Counter,
    pub facility_requests_other: Counter,
    pub store_errors: Counter,
    pub redis_up: Gauge,
    pub mailbox_depth: Gauge,
    pub sse_clients: Gauge,
    pub onshare_delivered: Counter,
    pub onshare_retried: Counter,
    onshare_gave_up: Counter,
    onshare_given_up: [Counter; 4],
    pub onshare_delay: Histogram,
    pub outbox_entries: Gauge,
    pub share_hip_mismatch: Counter,
    pub running_token_on_status: Counter,
    pub share_redelivery_expired_bearer: Counter,
    pub running_token_on_status_failed: Counter,
    pub leaderboard_apply_lag: Gauge,
    pub leaderboard_applied: Counter,
    pub forwarded_served: Counter,
    pub forwarded_taken_over: Counter,
    pub forwarded_failed: Counter,
}

impl Metrics {
    pub fn new() -> Self {
        install();
        dropped_handles();
        Self {
            scans: scan_table(),
            token_issue: metrics::histogram!(TOKEN_ISSUE),
            overloaded_mailbox: metrics::counter!(OVERLOADED, "reason" => "mailbox"),
            overloaded_in_flight: metrics::counter!(OVERLOADED, "reason" => "in_flight"),
            overloaded_writer: metrics::counter!(OVERLOADED, "reason" => "writer"),
            active_actors: metrics::gauge!(ACTIVE_ACTORS),
            activation: metrics::histogram!(ACTIVATION),
            passivated_idle: metrics::counter!(PASSIVATIONS, "reason" => "idle"),
            passivated_pressure: metrics::counter!(PASSIVATIONS, "reason" => "pressure"),
            live_tokens: metrics::gauge!(LIVE_TOKENS),
            batch_size: metrics::histogram!(REDIS_BATCH_SIZE),
            flush: metrics::histogram!(REDIS_FLUSH),
            fencing: metrics::counter!(FENCING_CONFLICTS),
            write_resends: metrics::counter!(WRITE_RESENDS),
            facility_requests_home: metrics::counter!(FACILITY_REQUESTS, "thread" => "home"),
            facility_requests_other: metrics::counter!(FACILITY_REQUESTS, "thread" => "other"),
            store_errors: metrics::counter!(STORE_ERRORS),
            redis_up: metrics::gauge!(REDIS_UP),
            mailbox_depth: metrics::gauge!(MAILBOX_DEPTH),
            sse_clients: metrics::gauge!(SSE_CLIENTS),
            onshare_delivered: metrics::counter!(ONSHARE, "outcome" => "delivered"),
            onshare_retried: metrics::counter!(ONSHARE, "outcome" => "retried"),
            onshare_gave_up: metrics::counter!(ONSHARE, "outcome" => "gave_up"),
            onshare_given_up: GIVE_UP_REASONS.map(|r| metrics::counter!(ONSHARE_GIVEN_UP, "reason" => r)),
            onshare_delay: metrics::histogram!(ONSHARE_DELAY),
            outbox_entries: metrics::gauge!(OUTBOX_ENTRIES),
            share_hip_mismatch: metrics::counter!(SHARE_HIP_MISMATCH),
            share_redelivery_expired_bearer: metrics::counter!(SHARE_REDELIVERY_EXPIRED),
            running_token_on_status: metrics::counter!(RUNNING_TOKEN_ON_STATUS, "outcome" => "delivered"),
            running_token_on_status_failed: metrics::counter!(RUNNING_TOKEN_ON_STATUS, "outcome" => "failed"),
            leaderboard_apply_lag: metrics::gauge!(LB_APPLY_LAG),
            leaderboard_applied: metrics::counter!(LB_APPLIED),
            forwarded_served: metrics::counter!(FORWARDED, "outcome" => "served_by_owner"),
            forwarded_taken_over: metrics::counter!(FORWARDED, "outcome" => "taken_over"),
            forwarded_failed: metrics::counter!(FORWARDED, "outcome" => "failed"),
        }
    }

    /// Counts a scan; `state` is a state code, `kind` the counter's kind when known.
    pub fn scan(&self, state: &str, kind: Option<crate::facility::queue::CounterKind>, outcome: ScanOutcome) {
        let s = crate::registry::states::index_of_code(state).unwrap_or(N_STATES - 1);
        let k = kind.map_or(KINDS.len() - 1, |k| k as usize);
        let i = (s * KINDS.len() + k) * OUTCOMES.len() + outcome as usize;
        self.scans[i].increment(1);
    }

    /// A share given up: counted under its reason and as an on-share outcome.
    pub fn onshare_given_up(&self, why: GiveUp) {
        self.onshare_gave_up.increment(1);
        self.onshare_given_up[why as usize].increment(1);
    }

    pub fn redis_batch(&self, size: usize, took: Duration) {
        self.batch_size.record(size as f64);
        self.flush.record(took.as_secs_f64());
    }

    pub fn fencing_conflict(&self) {
        self.fencing.increment(1);
    }

    pub fn rate_limited(limit: &'static str) {
        static HANDLES: OnceLock<[Counter; 5]> = OnceLock::new();
        const LIMITS: [&str; 5] = ["global", "client", "facility", "patient", "page"];
        let h = HANDLES.get_or_init(|| LIMITS.map(|l| metrics::counter!(RATE_LIMITED, "limit" => l)));
        match LIMITS.iter().position(|l| *l == limit) {
            Some(i) => h[i].increment(1),
            None => metrics::counter!(RATE_LIMITED, "limit" => limit).increment(1),
        }
    }

    /// A protocol share call: `version` is `v3` or `v1`, `accepted` whether it reached the outbox.
    pub fn share(version: &'static str, accepted: bool) {
        let outcome = if accepted { "accepted" } else { "rejected" };
        metrics::counter!(SHARES, "version" => version, "outcome" => outcome).increment(1);
    }

    /// An invalid optional profile field dropped instead of refusing the scan; `field` is
    /// one of [`DROPPABLE_FIELDS`]. The series are registered at zero by [`Metrics::new`].
    pub fn profile_field_dropped(field: &'static str) {
        let h = dropped_handles();
        match DROPPABLE_FIELDS.iter().position(|f| *f == field) {
            Some(i) => h[i].increment(1),
            None => metrics::counter!(PROFILE_FIELDS_DROPPED, "field" => field).increment(1),
        }
    }

    pub fn counter_op(op: &'static str) {
        static HANDLES: OnceLock<[Counter; 5]> = OnceLock::new();
        const OPS: [&str; 5] = ["call_next", "recall", "complete", "no_show", "transfer"];
        let h = HANDLES.get_or_init(|| OPS.map(|o| metrics::counter!(COUNTER_OPS, "op" => o)));
        match OPS.iter().position(|o| *o == op) {
            Some(i) => h[i].increment(1),
            None => metrics::counter!(COUNTER_OPS, "op" => op).increment(1),
        }
    }

    /// Records one request. Handles are registered the first time a route pattern is seen
    /// (route patterns are a fixed, small set) and looked up without allocating after that.
    pub fn http(route: &str, status: u16, took: Duration) {
        static HANDLES: OnceLock<dashmap::DashMap<String, [Option<Histogram>; 5]>> = OnceLock::new();
        const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
        let class = match status {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            _ => 4,
        };
        let map = HANDLES.get_or_init(dashmap::DashMap::new);
        if let Some(h) = map.get(route).and_then(|e| e[class].clone()) {
            h.record(took.as_secs_f64());
            return;
        }
        let mut e = map.entry(route.to_string()).or_default();
        let h = e[class].get_or_insert_with(
            || metrics::histogram!(HTTP_DURATION, "route" => route.to_string(), "status_class" => CLASSES[class]),
        );
        h.record(took.as_secs_f64());
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_counts_land_on_their_own_labels() {
        let handle = install();
        let m = Metrics::new();
        // Lakshadweep labs replaying twice: a combination no other test uses.
        m.scan("LD", Some(crate::facility::queue::CounterKind::Lab), ScanOutcome::Replay);
        m.scan("LD", Some(crate::facility::queue::CounterKind::Lab), ScanOutcome::Replay);
        m.scan("??", None, ScanOutcome::Rejected);
        let text = handle.render();
        let line = |l: &str| text.lines().find(|x| x.starts_with(l)).map(str::to_string);
        let ld = line(r#"scangw_scans_total{state="LD",counter_kind="lab",outcome="replay"}"#).unwrap();
        assert!(ld.ends_with(" 2"), "{ld}");
        assert!(line(r#"scangw_scans_total{state="unknown",counter_kind="unknown",outcome="rejected"}"#).is_some());
        assert!(line(r#"scangw_scans_total{state="LD",counter_kind="opd",outcome="replay"} 0"#).is_some());
    }

    #[test]
    fn every_give_up_reason_is_exported_from_zero_and_counts_as_gave_up() {
        let handle = install();
        let m = Metrics::new();
        let text = handle.render();
        for reason in GIVE_UP_REASONS {
            let series = format!("{ONSHARE_GIVEN_UP}{{reason=\"{reason}\"}} ");
            assert!(text.lines().any(|l| l.starts_with(&series)), "{series} pre-registered");
        }
        let value = |text: &str, series: &str| -> f64 {
            text.lines().find_map(|l| l.strip_prefix(series)).map_or(0.0, |v| v.trim().parse().unwrap())
        };
        let bad = format!("{ONSHARE_GIVEN_UP}{{reason=\"bad_entry\"}} ");
        let gave_up = format!("{ONSHARE}{{outcome=\"gave_up\"}} ");
        let (b0, g0) = (value(&text, &bad), value(&text, &gave_up));
        m.onshare_given_up(GiveUp::BadEntry);
        let text = handle.render();
        assert_eq!(value(&text, &bad), b0 + 1.0);
        assert!(value(&text, &gave_up) >= g0 + 1.0);
    }

    #[test]
    fn histograms_are_folded_by_an_upkeep_thread_not_only_by_scrapes() {
        install();
        // A new thread names itself once it runs: poll for the name, with a deadline.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match crate::periodic::threads_named(UPKEEP_THREAD) {
                1 => break,
                0 if std::time::Instant::now() < deadline => std::thread::yield_now(),
                n => panic!("{n} upkeep threads"),
            }
        }
    }

    #[test]
    fn catalog_names_use_base_units_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for m in CATALOG {
            assert!(seen.insert(m.name), "{} twice", m.name);
            match m.kind {
                MetricKind::Counter => assert!(m.name.ends_with("_total"), "{}", m.name),
                MetricKind::Histogram if m.unit == "seconds" => assert!(m.name.ends_with("_seconds")),
                _ => assert!(!m.name.ends_with("_total"), "{}", m.name),
            }
            for l in m.labels {
                assert!(!["patient", "token_id", "abha"].contains(l), "{}: {l}", m.name);
            }
        }
    }
}
