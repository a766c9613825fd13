//! The metrics catalog: every metric's name, type, unit, labels and meaning, once. Handles
//! are registered once and cloned into the hot paths. Labels are bounded enums only:
//! never a facility, patient or token id.
use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// `scangw_scans_total{outcome}`: scans answered, by outcome (new, repeat, replay, rejected).
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
/// `scangw_redis_batch_size`: writes per group-commit round trip.
pub const REDIS_BATCH_SIZE: &str = "scangw_redis_batch_size";
/// `scangw_redis_flush_seconds`: duration of one group-commit round trip.
pub const REDIS_FLUSH: &str = "scangw_redis_flush_seconds";
/// `scangw_fencing_conflicts_total`: writes refused because another activation owns the facility.
pub const FENCING_CONFLICTS: &str = "scangw_fencing_conflicts_total";
/// `scangw_store_errors_total`: requests answered 503 STORE_UNAVAILABLE.
pub const STORE_ERRORS: &str = "scangw_store_errors_total";
/// `scangw_rate_limited_total{limit}`: requests refused with 429, by limit (global, client, facility, patient).
pub const RATE_LIMITED: &str = "scangw_rate_limited_total";
/// `scangw_counter_ops_total{op}`: counter operations applied (call_next, recall, complete, no_show, transfer).
pub const COUNTER_OPS: &str = "scangw_counter_ops_total";

const LATENCY_BUCKETS: &[f64] = &[0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
const SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder once per process and returns its render handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(REDIS_BATCH_SIZE.into()), SIZE_BUCKETS))
                .expect("bucket lists are non-empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (embedding); metrics then go there.
            let _ = metrics::set_global_recorder(recorder);
            describe();
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
    describe_histogram!(REDIS_BATCH_SIZE, Unit::Count, "Writes per group-commit round trip");
    describe_histogram!(REDIS_FLUSH, Unit::Seconds, "Duration of one group-commit round trip");
    describe_counter!(FENCING_CONFLICTS, "Writes refused by the fencing epoch");
    describe_counter!(STORE_ERRORS, "Requests answered 503 STORE_UNAVAILABLE");
    describe_counter!(COUNTER_OPS, "Counter operations applied, by op");
    describe_counter!(RATE_LIMITED, "Requests refused with 429, by limit");
}

/// Pre-registered handles for the hot paths.
#[derive(Clone)]
pub struct Metrics {
    pub scans_new: Counter,
    pub scans_repeat: Counter,
    pub scans_replay: Counter,
    pub scans_rejected: Counter,
    pub token_issue: Histogram,
    pub overloaded_mailbox: Counter,
    pub overloaded_in_flight: Counter,
    pub overloaded_writer: Counter,
    pub active_actors: Gauge,
    pub batch_size: Histogram,
    pub flush: Histogram,
    pub fencing: Counter,
    pub store_errors: Counter,
}

impl Metrics {
    pub fn new() -> Self {
        install();
        Self {
            scans_new: metrics::counter!(SCANS, "outcome" => "new"),
            scans_repeat: metrics::counter!(SCANS, "outcome" => "repeat"),
            scans_replay: metrics::counter!(SCANS, "outcome" => "replay"),
            scans_rejected: metrics::counter!(SCANS, "outcome" => "rejected"),
            token_issue: metrics::histogram!(TOKEN_ISSUE),
            overloaded_mailbox: metrics::counter!(OVERLOADED, "reason" => "mailbox"),
            overloaded_in_flight: metrics::counter!(OVERLOADED, "reason" => "in_flight"),
            overloaded_writer: metrics::counter!(OVERLOADED, "reason" => "writer"),
            active_actors: metrics::gauge!(ACTIVE_ACTORS),
            batch_size: metrics::histogram!(REDIS_BATCH_SIZE),
            flush: metrics::histogram!(REDIS_FLUSH),
            fencing: metrics::counter!(FENCING_CONFLICTS),
            store_errors: metrics::counter!(STORE_ERRORS),
        }
    }

    pub fn redis_batch(&self, size: usize, took: Duration) {
        self.batch_size.record(size as f64);
        self.flush.record(took.as_secs_f64());
    }

    pub fn fencing_conflict(&self) {
        self.fencing.increment(1);
    }

    pub fn rate_limited(limit: &'static str) {
        metrics::counter!(RATE_LIMITED, "limit" => limit).increment(1);
    }

    pub fn counter_op(op: &'static str) {
        metrics::counter!(COUNTER_OPS, "op" => op).increment(1);
    }

    pub fn http(route: &str, status: u16, took: Duration) {
        let class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        metrics::histogram!(HTTP_DURATION, "route" => route.to_string(), "status_class" => class)
            .record(took.as_secs_f64());
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
