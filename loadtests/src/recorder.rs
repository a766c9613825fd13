//! What a run observed: per-operation HdrHistograms of latency measured from each
//! request's *scheduled* send time, a per-second timeline, answers by status and error code,
//! and how late the generator itself was in sending.
use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies are recorded in microseconds, up to a minute, with 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    Scan,
    Repeat,
    Poll,
    CallNext,
    Complete,
    Share,
}

impl OpKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Scan => "scan",
            OpKind::Repeat => "repeat",
            OpKind::Poll => "poll",
            OpKind::CallNext => "call_next",
            OpKind::Complete => "complete",
            OpKind::Share => "share",
        }
    }
}

/// How one request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx answer.
    Ok,
    /// A non-2xx answer, with the error code from its body (or `HTTP_<status>`).
    Status(u16, String),
    /// No answer: `TIMEOUT`, `CONNECT`, `IO`.
    Transport(&'static str),
}

impl Outcome {
    pub fn code(&self) -> String {
        match self {
            Outcome::Ok => "OK".into(),
            Outcome::Status(s, c) => format!("{s} {c}"),
            Outcome::Transport(t) => (*t).into(),
        }
    }
}

/// One second of the run.
pub struct Second {
    pub ok: u64,
    pub errors: u64,
    pub latency: Histogram<u64>,
}

pub struct Recorder {
    pub ops: BTreeMap<OpKind, Histogram<u64>>,
    pub ok: BTreeMap<OpKind, u64>,
    /// Failures by (operation, code).
    pub errors: BTreeMap<(OpKind, String), u64>,
    pub timeline: Vec<Second>,
    /// How late requests left the generator after their scheduled time.
    pub send_lag: Histogram<u64>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            ops: BTreeMap::new(),
            ok: BTreeMap::new(),
            errors: BTreeMap::new(),
            timeline: Vec::new(),
            send_lag: histogram(),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

pub fn percentiles(h: &Histogram<u64>) -> Percentiles {
    let ms = |v: u64| v as f64 / 1000.0;
    Percentiles {
        count: h.len(),
        p50_ms: ms(h.value_at_quantile(0.50)),
        p90_ms: ms(h.value_at_quantile(0.90)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        p999_ms: ms(h.value_at_quantile(0.999)),
        max_ms: ms(h.max()),
    }
}

impl Recorder {
    /// Records one finished request. `second` is the run second it was scheduled in.
    pub fn record(&mut self, kind: OpKind, second: usize, latency: Duration, lag: Duration, outcome: &Outcome) {
        let us = (latency.as_micros() as u64).clamp(1, 60_000_000);
        self.ops.entry(kind).or_insert_with(histogram).saturating_record(us);
        self.send_lag.saturating_record((lag.as_micros() as u64).clamp(1, 60_000_000));
        while self.timeline.len() <= second {
            self.timeline.push(Second { ok: 0, errors: 0, latency: histogram() });
        }
        let s = &mut self.timeline[second];
        s.latency.saturating_record(us);
        match outcome {
            Outcome::Ok => {
                s.ok += 1;
                *self.ok.entry(kind).or_default() += 1;
            }
            other => {
                s.errors += 1;
                *self.errors.entry((kind, other.code())).or_default() += 1;
            }
        }
    }

    pub fn total(&self) -> u64 {
        self.ops.values().map(|h| h.len()).sum()
    }

    pub fn total_errors(&self) -> u64 {
        self.errors.values().sum()
    }

    /// All operations together.
    pub fn overall(&self) -> Histogram<u64> {
        let mut all = histogram();
        for h in self.ops.values() {
            all.add(h).expect("same bounds");
        }
        all
    }

    /// Error share of all requests, 0 when nothing was sent.
    pub fn error_ratio(&self) -> f64 {
        let n = self.total();
        if n == 0 {
            0.0
        } else {
            self.total_errors() as f64 / n as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_scheduled_time_and_errors_are_counted_by_code() {
        let mut r = Recorder::default();
        for i in 0..1000u64 {
            let lat = Duration::from_micros(1_000 + i);
            r.record(OpKind::Scan, (i / 500) as usize, lat, Duration::from_micros(10), &Outcome::Ok);
        }
        // A stall: the server answered after 2 s; latency counts from the scheduled time.
        r.record(OpKind::Scan, 1, Duration::from_secs(2), Duration::from_micros(10), &Outcome::Ok);
        r.record(OpKind::Scan, 1, Duration::from_millis(1), Duration::ZERO, &Outcome::Status(503, "OVERLOADED".into()));
        r.record(OpKind::Poll, 1, Duration::from_millis(1), Duration::ZERO, &Outcome::Transport("TIMEOUT"));
        let p = percentiles(&r.ops[&OpKind::Scan]);
        assert_eq!(p.count, 1002);
        assert!((p.p50_ms - 1.5).abs() < 0.01, "{p:?}");
        assert!(p.max_ms >= 1999.0, "{p:?}");
        assert_eq!(r.errors[&(OpKind::Scan, "503 OVERLOADED".to_string())], 1);
        assert_eq!(r.errors[&(OpKind::Poll, "TIMEOUT".to_string())], 1);
        assert_eq!(r.timeline.len(), 2);
        assert_eq!((r.timeline[0].ok, r.timeline[1].ok, r.timeline[1].errors), (500, 501, 2));
        assert!((r.error_ratio() - 2.0 / 1003.0).abs() < 1e-12);
    }
}
