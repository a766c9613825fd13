//! Moves facilities' token counts into the national boards, exactly, without any script
//! touching two hash slots: the same code on a single Redis and on Redis Cluster.
//!
//! **Protocol.** The fenced WRITE adds each token to the facility's cumulative count
//! `sg:{F}:lbn` `<day>|<kind>` (facility slot, same atomic step as the token). Every
//! `SCANGW_LEADERBOARD_APPLY_MS` each node takes the counts its writers saw since the last
//! pass: WRITE returns each cumulative count it raised, so an answered write's counts are
//! applied without a read. An activation's first write returns every count of the facility
//! instead (an earlier owner may have counted other days or kinds). A facility whose write
//! had an unknown outcome is snapshotted (one atomic read of all its counts); a refused
//! write counts nothing, and a failed pass keeps everything for the next. Then one APPLY script per few
//! facilities on the `{lb}` slot, per (facility, day, kind), reads `applied` from
//! `lb:{lb}:<day>:ap`, adds `C - applied` to every board when positive and sets
//! `applied = C`. `C` only grows and `applied` only moves up to a `C` that existed, so
//! boards never over-count; a rerun, a crash between steps, or two nodes
//! applying the same facility (old and new owner) change nothing twice.
//!
//! **Discovery after a crash.** An activation marks its facility in `lb:{lb}:dirty` (field
//! = facility, value = the newest marking epoch) before its first write, and an owner that
//! stops normally records its whole fence, `r = <epoch>:<nonce>`, in its fence hash
//! (through the fenced writer, after its last write). Every node sweeps the dirty set (at
//! start and every [`SWEEP_EVERY`] passes): it applies each facility not active locally and
//! removes it only when the atomic snapshot showed `r` equal to the current fence (the
//! newest owner released, so no owner can write until a new activation; the snapshot then
//! reports `released == e`) and every count equalled `applied`, with a script that
//! deletes only if the stored mark is still `<= e`. Races, and why each is safe:
//! - A new activation `e' > e` between the snapshot and the removal: its mark (`e'`) is
//!   either already there (removal refused: `e' > e`) or written after the removal; it
//!   precedes its first write either way, so a facility with unapplied counts is marked.
//! - Marks arriving out of order (activation `e'` marks after `e'' > e'`): MARK keeps the
//!   larger epoch, so an old mark never lowers it.
//! - An owner killed with -9 never releases: its facility stays dirty and every sweep
//!   applies it (a cheap no-op once exact) until a later owner releases it. Nothing written
//!   is lost; it is applied within one sweep by any node.
//! - An owner that is alive on another node is not released either: this node applies it
//!   too (idempotent) but never removes it.
//! - The release itself is a fenced write: sent by a stale owner it is refused, and it is
//!   queued behind the owner's own writes, so a release of the current fence implies they
//!   were all answered.
//!
//! Days: a day's `applied` hash lives the leaderboard retention plus [`APPLIED_GRACE_DAYS`];
//! counts older than the retention are never applied (their `applied` may be gone, so
//! applying could count them twice) and are pruned, as are fully applied counts of days
//! that ended two days ago.
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::civil::Date;

use crate::clock::SharedClock;
use crate::facility::Directory;
use crate::persistence::keys;
use crate::persistence::lbcounts::{ApplyItem, Snapshot};
use crate::persistence::writer::{BoardOwner, Counted, Touched};
use crate::persistence::{Store, StoreError};
use crate::registry::FacilityInfo;
use crate::telemetry::metrics::Metrics;

/// The dirty set is swept once every this many passes (and at start).
pub const SWEEP_EVERY: u64 = 25;
/// Extra days an `applied` hash outlives the daily boards.
pub const APPLIED_GRACE_DAYS: i64 = 7;
/// Facilities per round trip. Small, so that Redis serves the writers' batches between
/// the applier's scripts instead of behind a long pipeline of them: at 4,000 scans/s on
/// 2,000 busy facilities, 32 per round trip left 2.7% of the writers' flushes waiting 2 to
/// 5 ms and the scans' p99 at 7 to 8.7 ms; 16 gave 6.3 ms, 8 gave 3.6 ms (4: 3.5 ms).
const CHUNK: usize = 8;

pub struct Applier {
    pub store: Store,
    pub directory: Arc<Directory>,
    pub touched: Touched,
    pub clock: SharedClock,
    pub metrics: Metrics,
    pub every: Duration,
    pub retention_days: i64,
    pub stop: Arc<AtomicBool>,
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    pub facilities: usize,
    /// Tokens added to the boards by this pass.
    pub applied: u64,
    /// Facilities removed from the dirty set.
    pub forgotten: usize,
}

/// One facility's cumulative counts (`<day>|<kind>` -> tokens) and where they count.
struct Counts {
    id: String,
    owner: Arc<BoardOwner>,
    counts: Vec<(String, u64)>,
}

/// The days a pass works with, from the clock and the retention.
struct Days {
    /// Counts of days before this are never applied (their `applied` may be gone).
    oldest: Date,
    /// Fully applied counts of days before this are pruned.
    finished: Date,
    board_ttl: i64,
    applied_ttl: i64,
}

impl Applier {
    pub fn spawn(self) {
        actix_rt::spawn(self.run());
    }

    async fn run(self) {
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_ok = Instant::now();
        for n in 0u64.. {
            tick.tick().await;
            let stopping = self.stop.load(Ordering::Relaxed);
            let touched = self.touched.drain();
            // The pass is spread over half the interval: applied in one burst, a second's
            // worth of 2,000 busy facilities (about 11,000 ZINCRBY) held Redis and a core for
            // tens of milliseconds and tripled the scans' p99.
            // The last pass of a draining node runs at once: shutdown has a grace period.
            let chunks = touched.len().div_ceil(CHUNK) as u32;
            let pace = if chunks > 1 && !stopping { self.every / 2 / chunks } else { Duration::ZERO };
            let mut ok = self.apply_touched(&touched, pace).await.is_ok();
            if !ok {
                // Not applied: look at them again next time.
                self.touched.restore(touched);
            }
            if n % SWEEP_EVERY == 0 && !stopping {
                ok &= self.sweep().await.is_ok();
            }
            if ok {
                last_ok = Instant::now();
            }
            self.metrics.leaderboard_apply_lag.set(last_ok.elapsed().as_secs_f64());
            if stopping {
                // One last pass ran after the drain began; released facilities are swept
                // by whichever node runs next.
                return;
            }
        }
    }

    fn days(&self) -> Days {
        let today = self.clock.now().to_zoned(jiff::tz::TimeZone::UTC).date();
        let board_ttl = self.retention_days * 86_400;
        Days {
            oldest: today.checked_sub(jiff::Span::new().days(self.retention_days)).unwrap_or(today),
            finished: today.checked_sub(jiff::Span::new().days(2)).unwrap_or(today),
            board_ttl,
            applied_ttl: board_ttl + APPLIED_GRACE_DAYS * 86_400,
        }
    }

    /// The regular pass over what this node's writers counted. Counts that answered writes
    /// returned are applied as they are, without a read; facilities with a write of unknown
    /// outcome are snapshotted first.
    async fn apply_touched(&self, touched: &[(String, Counted)], pace: Duration) -> Result<Pass, StoreError> {
        let mut known = Vec::new();
        let mut unknown = Vec::new();
        for (id, c) in touched {
            match c {
                Counted::Known { owner, counts } => {
                    known.push(Counts { id: id.clone(), owner: owner.clone(), counts: counts.clone() })
                }
                Counted::Snapshot => unknown.push(id.clone()),
            }
        }
        // Neighbours by district, so each round trip's facilities share rankings (see
        // `lb_apply`): the deltas of one district's facilities then bump its rankings once.
        known.sort_by(|a, b| (a.owner.state, &a.owner.district).cmp(&(b.owner.state, &b.owner.district)));
        let days = self.days();
        let mut total = Pass::default();
        for (n, chunk) in known.chunks(CHUNK).enumerate() {
            if n > 0 && !pace.is_zero() {
                tokio::time::sleep(pace).await;
            }
            let (applied, _) = self.apply(chunk, &days).await?;
            total.applied += applied;
            total.facilities += chunk.len();
        }
        let rest = self.pass(&unknown, false, pace).await?;
        total.applied += rest.applied;
        total.facilities += rest.facilities;
        Ok(total)
    }

    /// Applies every dirty facility not active here, and forgets those proven done.
    pub async fn sweep(&self) -> Result<Pass, StoreError> {
        let dirty = self.store.lb_dirty().await?;
        let remote: Vec<String> = dirty.into_iter().filter(|f| !self.directory.is_active(f)).collect();
        self.pass(&remote, true, Duration::ZERO).await
    }

    /// Snapshots and applies the given facilities; with `forget`, removes those applied and
    /// released. `pace` is a pause between chunks, so the pass does not arrive as one burst.
    pub async fn pass(&self, ids: &[String], forget: bool, pace: Duration) -> Result<Pass, StoreError> {
        let days = self.days();
        let mut total = Pass::default();
        for (n, chunk) in ids.chunks(CHUNK).enumerate() {
            if n > 0 && !pace.is_zero() {
                tokio::time::sleep(pace).await;
            }
            let snaps = self.store.lb_snapshots(chunk).await?;
            let mut counts = Vec::with_capacity(chunk.len());
            // Per facility of the chunk: its index in `counts` (None: not in the registry, so
            // nothing to apply; released, it may be forgotten as before).
            let mut at = Vec::with_capacity(chunk.len());
            for (id, snap) in chunk.iter().zip(&snaps) {
                let Ok(info) = serde_json::from_str::<FacilityInfo>(&snap.info) else {
                    at.push(None);
                    continue;
                };
                at.push(Some(counts.len()));
                counts.push(Counts {
                    id: id.clone(),
                    owner: Arc::new(info.board_owner()),
                    counts: snap.counts.clone(),
                });
            }
            let (applied, exact) = self.apply(&counts, &days).await?;
            total.applied += applied;
            if forget {
                let done: Vec<(String, u64)> = chunk
                    .iter()
                    .zip(&snaps)
                    .zip(&at)
                    .filter(|((id, s), at)| at.is_none_or(|i| exact[i]) && released(s) && !self.directory.is_active(id))
                    .map(|((id, s), _)| (id.clone(), s.epoch))
                    .collect();
                total.forgotten += done.len();
                self.store.lb_unmark(&done).await?;
            }
            total.facilities += chunk.len();
        }
        Ok(total)
    }

    /// Brings the boards up to `facilities`' counts (one APPLY batch) and prunes finished
    /// days' counts that are fully applied. Returns the tokens added and, per facility,
    /// whether every count of it is now exactly applied.
    async fn apply(&self, facilities: &[Counts], days: &Days) -> Result<(u64, Vec<bool>), StoreError> {
        let mut items = Vec::new();
        // Per item: (facility index, field, count, day).
        let mut owners: Vec<(usize, String, u64, Date)> = Vec::new();
        let mut prune: Vec<(String, Vec<(String, u64)>)> = Vec::new();
        // A district's facilities feed the same 14 boards per day and kind.
        let mut boards: HashMap<(&str, Date, &str), Arc<[String]>> = HashMap::new();
        for (i, f) in facilities.iter().enumerate() {
            let mut stale = Vec::new();
            for (field, count) in &f.counts {
                let Some((day, kind)) = keys::parse_lb_count_field(field) else { continue };
                if day < days.oldest {
                    tracing::warn!(facility = %f.id, %day, "leaderboard count older than the retention dropped unapplied");
                    stale.push((field.clone(), *count));
                    continue;
                }
                let keys = boards.entry((&f.owner.district, day, kind)).or_insert_with(|| {
                    let mut k = vec![keys::lb_applied(day)];
                    k.extend(super::board_keys(&f.owner.district, day, kind));
                    k.into()
                });
                items.push(ApplyItem {
                    keys: keys.clone(),
                    applied_field: keys::lb_applied_field(&f.id, kind),
                    count: *count,
                    state: f.owner.state,
                    district: f.owner.district.clone(),
                    facility: f.id.clone(),
                });
                owners.push((i, field.clone(), *count, day));
            }
            if !stale.is_empty() {
                prune.push((f.id.clone(), stale));
            }
        }
        let results = self.store.lb_apply(&items, days.board_ttl, days.applied_ttl).await?;
        let added: u64 = results.iter().map(|(before, after)| after.saturating_sub(*before)).sum();
        // Counted as soon as they are on the boards: a pass that fails in a later step
        // still reports these (its rerun adds nothing for them).
        self.metrics.leaderboard_applied.increment(added);
        let mut exact = vec![true; facilities.len()];
        for ((i, field, count, day), (_, after)) in owners.into_iter().zip(results) {
            if after != count {
                exact[i] = false;
            } else if day < days.finished {
                match prune.iter_mut().find(|(f, _)| *f == facilities[i].id) {
                    Some((_, v)) => v.push((field, count)),
                    None => prune.push((facilities[i].id.clone(), vec![(field, count)])),
                }
            }
        }
        self.store.lb_prune(&prune).await?;
        Ok((added, exact))
    }
}

/// The newest owner stopped normally: nobody writes until a new activation (which marks).
fn released(s: &Snapshot) -> bool {
    s.epoch > 0 && s.released == s.epoch
}
