//! The live national feed: one background task re-reads the leaderboards every refresh
//! interval into a shared snapshot. The page's SSE stream, and the bounded top-N gauges
//! on `/metrics`, read that snapshot, so neither readers nor scrapes add Redis load.
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::civil::Date;
use serde::Serialize;
use tokio::sync::watch;

use super::{read, Board, Period, Query, Row};
use crate::clock::SharedClock;
use crate::facility::queue::CounterKind;
use crate::persistence::{Store, StoreError};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KindTotal {
    pub counter_kind: &'static str,
    pub tokens: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StateTotal {
    pub state: String,
    pub tokens: u64,
}

/// What the national page shows, and what the leaderboard gauges export.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    /// Service day of the default time zone.
    pub date: String,
    pub generated_at: String,
    /// False until the first successful read, and while Redis cannot be read.
    pub live: bool,
    pub total_today: u64,
    pub total_all: u64,
    /// National tokens issued over the last minute (scaled when less history is known).
    pub tokens_per_minute: f64,
    /// Every state for today, ranked.
    pub states: Vec<Row>,
    pub states_all: Vec<StateTotal>,
    pub districts: Vec<Row>,
    pub facilities: Vec<Row>,
    pub counter_kinds: Vec<KindTotal>,
}

impl Snapshot {
    fn empty() -> Self {
        Snapshot {
            date: String::new(),
            generated_at: String::new(),
            live: false,
            total_today: 0,
            total_all: 0,
            tokens_per_minute: 0.0,
            states: Vec::new(),
            states_all: Vec::new(),
            districts: Vec::new(),
            facilities: Vec::new(),
            counter_kinds: Vec::new(),
        }
    }
}

pub struct Feed {
    tx: watch::Sender<Arc<Snapshot>>,
}

impl Feed {
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }

    pub fn latest(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }

    /// Starts the refresher; it stops when `stop` is set.
    pub fn spawn(
        store: Store,
        clock: SharedClock,
        tz: jiff::tz::TimeZone,
        every: Duration,
        top_n: usize,
        stop: Arc<AtomicBool>,
    ) -> Arc<Feed> {
        let (tx, _) = watch::channel(Arc::new(Snapshot::empty()));
        let feed = Arc::new(Feed { tx });
        let f = feed.clone();
        actix_rt::spawn(async move {
            let mut history: VecDeque<(Instant, String, u64)> = VecDeque::new();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = false;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let now = clock.now();
                let day = now.to_zoned(tz.clone()).date();
                match build(&store, day, top_n).await {
                    Ok(mut snap) => {
                        failing = false;
                        snap.generated_at = now.to_string();
                        snap.tokens_per_minute = per_minute(&mut history, Instant::now(), &snap.date, snap.total_today);
                        f.tx.send_if_modified(|cur| {
                            let changed = **cur != snap;
                            *cur = Arc::new(snap);
                            changed
                        });
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!(error = %e, "leaderboard feed cannot read redis");
                        }
                        failing = true;
                        f.tx.send_if_modified(|cur| {
                            let was = cur.live;
                            if was {
                                let mut stale = (**cur).clone();
                                stale.live = false;
                                *cur = Arc::new(stale);
                            }
                            was
                        });
                    }
                }
            }
        });
        feed
    }
}

/// Tokens per minute over the last minute of national totals (scaled while less than a
/// minute but at least 10 s is known); a new day starts afresh.
fn per_minute(history: &mut VecDeque<(Instant, String, u64)>, now: Instant, date: &str, total: u64) -> f64 {
    if history.back().is_some_and(|(_, d, _)| d != date) {
        history.clear();
    }
    history.push_back((now, date.to_string(), total));
    while history.len() > 2 && now.duration_since(history[1].0) >= Duration::from_secs(60) {
        history.pop_front();
    }
    let (t0, _, n0) = history.front().expect("just pushed");
    let secs = now.duration_since(*t0).as_secs_f64();
    // Under 10 s of history a per-minute figure is mostly extrapolation: show none yet.
    if secs < 10.0 {
        return 0.0;
    }
    ((total.saturating_sub(*n0)) as f64 * 60.0 / secs * 10.0).round() / 10.0
}

async fn build(store: &Store, day: Date, top_n: usize) -> Result<Snapshot, StoreError> {
    let q = |board, period, kind| Query { board, period, state: None, district: None, kind, limit: top_n };
    let today = Period::Day(day);
    // Every state, not the top N: the state gauges and the page list all 36.
    let every_state = |period| Query { limit: crate::registry::states::STATES.len(), ..q(Board::States, period, None) };
    let states = read(store, &every_state(today)).await?;
    let all = read(store, &every_state(Period::All)).await?;
    let districts = read(store, &q(Board::Districts, today, None)).await?;
    let facilities = read(store, &q(Board::Facilities, today, None)).await?;
    let mut counter_kinds = Vec::new();
    for k in CounterKind::ALL {
        let tokens = super::national(store, &day.to_string(), &[k.as_str()]).await?;
        counter_kinds.push(KindTotal { counter_kind: k.as_str(), tokens });
    }
    Ok(Snapshot {
        date: day.to_string(),
        generated_at: String::new(),
        live: true,
        total_today: states.total,
        total_all: all.total,
        tokens_per_minute: 0.0,
        states: states.rows,
        states_all: all.rows.into_iter().map(|r| StateTotal { state: r.id, tokens: r.tokens }).collect(),
        districts: districts.rows,
        facilities: facilities.rows,
        counter_kinds,
    })
}

/// Escapes a Prometheus label value.
fn label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// The leaderboard gauges in the Prometheus text format: 36 states x 2 periods, and the
/// top N districts and facilities of the day. Rendered from the snapshot, so the series
/// are exactly the current top N (no stale ranks linger) and stay bounded.
pub fn render_prometheus(s: &Snapshot) -> String {
    use crate::telemetry::metrics::{LB_STATE, LB_TOP_DISTRICT, LB_TOP_FACILITY};
    let mut out = String::new();
    if !s.live {
        return out;
    }
    let _ = writeln!(out, "# HELP {LB_STATE} Tokens issued per state (exact, from the Redis leaderboards)");
    let _ = writeln!(out, "# TYPE {LB_STATE} gauge");
    for r in &s.states {
        let _ = writeln!(out, "{LB_STATE}{{state=\"{}\",period=\"today\"}} {}", label(&r.id), r.tokens);
    }
    for r in &s.states_all {
        let _ = writeln!(out, "{LB_STATE}{{state=\"{}\",period=\"all\"}} {}", label(&r.state), r.tokens);
    }
    let _ = writeln!(out, "# HELP {LB_TOP_DISTRICT} Tokens issued today by the top districts");
    let _ = writeln!(out, "# TYPE {LB_TOP_DISTRICT} gauge");
    for r in &s.districts {
        let _ = writeln!(
            out,
            "{LB_TOP_DISTRICT}{{rank=\"{}\",district=\"{}\",state=\"{}\"}} {}",
            r.rank,
            label(&r.name),
            label(&r.state),
            r.tokens
        );
    }
    let _ = writeln!(out, "# HELP {LB_TOP_FACILITY} Tokens issued today by the top facilities");
    let _ = writeln!(out, "# TYPE {LB_TOP_FACILITY} gauge");
    for r in &s.facilities {
        let _ = writeln!(
            out,
            "{LB_TOP_FACILITY}{{rank=\"{}\",facility_id=\"{}\",facility_name=\"{}\",state=\"{}\"}} {}",
            r.rank,
            label(&r.id),
            label(&r.name),
            label(&r.state),
            r.tokens
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_minute_uses_the_window_and_restarts_on_a_new_day() {
        let mut h = VecDeque::new();
        let t0 = Instant::now();
        assert_eq!(per_minute(&mut h, t0, "d1", 100), 0.0);
        assert_eq!(per_minute(&mut h, t0 + Duration::from_secs(30), "d1", 130), 60.0);
        assert_eq!(per_minute(&mut h, t0 + Duration::from_secs(90), "d1", 190), 60.0);
        assert_eq!(per_minute(&mut h, t0 + Duration::from_secs(91), "d2", 3), 0.0);
    }

    #[test]
    fn gauges_escape_labels_and_stay_bounded() {
        let mut s = Snapshot::empty();
        s.live = true;
        s.facilities = vec![Row {
            rank: 1,
            id: "IN01".into(),
            name: "St \"Mary\" \\ Hospital\n".into(),
            state: "KA".into(),
            district: Some("Mysuru".into()),
            tokens: 7,
            share: 1.0,
        }];
        let text = render_prometheus(&s);
        assert!(text.contains(r#"facility_name="St \"Mary\" \\ Hospital\n",state="KA"} 7"#), "{text}");
        s.live = false;
        assert_eq!(render_prometheus(&s), "");
    }
}
