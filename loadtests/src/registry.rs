//! The synthetic national registry: up to 300,000 facilities over the 36 states/UTs,
//! deterministic from a seed, with state volumes shaped by the published Scan & Share
//! figures and facility sizes Zipf-distributed within each state.
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use scan_gateway::registry::states::STATES;
use serde_json::json;

/// Relative scan volume per state code. The first nine are the published April 2024 token
/// counts (millions: UP 7.8, AP 4.2, KA 3.4, JK 3.2, DL 1.7; laggards TN 94, HP 281,
/// SK 690, KL 921 tokens). The others were not published: they are assumptions in between,
/// larger states getting more, so that every state and UT has some traffic.
const STATE_VOLUME: [(&str, f64); 36] = [
    ("UP", 7_800_000.0),
    ("AP", 4_200_000.0),
    ("KA", 3_400_000.0),
    ("JK", 3_200_000.0),
    ("DL", 1_700_000.0),
    ("TN", 94.0),
    ("HP", 281.0),
    ("SK", 690.0),
    ("KL", 921.0),
    // Assumed (not published).
    ("MH", 900_000.0),
    ("MP", 800_000.0),
    ("BR", 700_000.0),
    ("TS", 700_000.0),
    ("GJ", 600_000.0),
    ("RJ", 600_000.0),
    ("HR", 500_000.0),
    ("OD", 450_000.0),
    ("WB", 400_000.0),
    ("CG", 350_000.0),
    ("JH", 300_000.0),
    ("AS", 300_000.0),
    ("PB", 250_000.0),
    ("UK", 200_000.0),
    ("CH", 80_000.0),
    ("GA", 40_000.0),
    ("PY", 40_000.0),
    ("TR", 30_000.0),
    ("ML", 15_000.0),
    ("MN", 15_000.0),
    ("MZ", 10_000.0),
    ("NL", 8_000.0),
    ("AR", 8_000.0),
    ("LA", 5_000.0),
    ("DH", 5_000.0),
    ("AN", 3_000.0),
    ("LD", 1_000.0),
];

/// The Zipf exponent of facility sizes within a state: with s = 1.07 the largest facility
/// of a state with 1,000 facilities takes ~15% of its scans, the median one ~0.02%.
pub const ZIPF_S: f64 = 1.07;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Opd,
    Pharmacy,
    Lab,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Opd => "opd",
            Kind::Pharmacy => "pharmacy",
            Kind::Lab => "lab",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Counter {
    pub id: String,
    pub kind: Kind,
}

#[derive(Debug, Clone)]
pub struct Facility {
    pub id: String,
    /// Index into `STATES`.
    pub state: usize,
    pub district: u16,
    pub counters: Vec<Counter>,
}

impl Facility {
    pub fn state_code(&self) -> &'static str {
        STATES[self.state].code
    }

    pub fn district_name(&self) -> String {
        format!("District {:02}", self.district)
    }

    /// One registry line, as `POST /v1/facilities:import` takes it (NDJSON).
    pub fn ndjson(&self, token_validity_s: u64) -> String {
        let counters: Vec<_> = self.counters.iter().map(|c| json!({"id": c.id, "kind": c.kind.as_str()})).collect();
        json!({
            "facility_id": self.id,
            "name": format!("Load Test Facility {}", &self.id[2..]),
            "state": STATES[self.state].name,
            "district": self.district_name(),
            "timezone": "Asia/Kolkata",
            "token_validity_s": token_validity_s,
            "counters": counters,
        })
        .to_string()
    }

    /// Picks a counter: OPD counters share 80% of scans evenly, the pharmacy 12%, the lab 8%.
    pub fn pick_counter(&self, u: f64) -> usize {
        let opd = self.counters.iter().filter(|c| c.kind == Kind::Opd).count();
        if u < 0.80 {
            ((u / 0.80) * opd as f64) as usize % opd
        } else if u < 0.92 {
            opd
        } else {
            opd + 1
        }
    }
}

/// The registry and a sampler that picks facilities in proportion to their scan volume.
pub struct Registry {
    pub facilities: Vec<Facility>,
    cumulative: Vec<f64>,
    /// How long a waiting token stays valid at every facility (the import's value).
    pub token_validity_s: u64,
}

impl Registry {
    /// `n` facilities (at least one per state), deterministic from `seed`.
    pub fn synthetic(n: usize, seed: u64) -> Registry {
        assert!(n >= STATES.len(), "need at least one facility per state");
        let mut rng = StdRng::seed_from_u64(seed);
        let volume = |code: &str| STATE_VOLUME.iter().find(|(c, _)| *c == code).map(|(_, v)| *v).unwrap_or(1.0);
        // Facilities per state grow with the square root of volume (big states have more
        // facilities, but also bigger ones), at least one each.
        let roots: Vec<f64> = STATES.iter().map(|s| volume(s.code).sqrt()).collect();
        let root_sum: f64 = roots.iter().sum();
        let spare = n - STATES.len();
        let mut per_state: Vec<usize> = roots.iter().map(|r| 1 + (r / root_sum * spare as f64) as usize).collect();
        // Hand out what rounding left over to the biggest states first.
        let mut left = n - per_state.iter().sum::<usize>();
        let mut order: Vec<usize> = (0..STATES.len()).collect();
        order.sort_by(|a, b| roots[*b].total_cmp(&roots[*a]));
        for i in order.iter().cycle() {
            if left == 0 {
                break;
            }
            per_state[*i] += 1;
            left -= 1;
        }
        let total_volume: f64 = STATES.iter().map(|s| volume(s.code)).sum();

        let mut facilities = Vec::with_capacity(n);
        let mut weights = Vec::with_capacity(n);
        for (si, state) in STATES.iter().enumerate() {
            let count = per_state[si];
            let districts = (count / 40).clamp(1, 75) as u16;
            let harmonic: f64 = (1..=count).map(|r| 1.0 / (r as f64).powf(ZIPF_S)).sum();
            let share = volume(state.code) / total_volume;
            for rank in 1..=count {
                let opd = match rank {
                    1..=3 => 8,
                    4..=50 => 4,
                    51..=500 => 2,
                    _ => 1,
                };
                let mut counters: Vec<Counter> =
                    (1..=opd).map(|i| Counter { id: format!("OPD{i}"), kind: Kind::Opd }).collect();
                counters.push(Counter { id: "Pharmacy".into(), kind: Kind::Pharmacy });
                counters.push(Counter { id: "Lab".into(), kind: Kind::Lab });
                facilities.push(Facility {
                    id: format!("IN{:02}{:08}", si + 1, rank),
                    state: si,
                    district: rng.random_range(1..=districts),
                    counters,
                });
                weights.push(share / (rank as f64).powf(ZIPF_S) / harmonic);
            }
        }
        let mut acc = 0.0;
        let cumulative = weights
            .iter()
            .map(|w| {
                acc += w;
                acc
            })
            .collect();
        Registry { facilities, cumulative, token_validity_s: 7200 }
    }

    /// The facility whose volume interval contains `u` in [0, 1).
    pub fn pick(&self, u: f64) -> usize {
        let total = *self.cumulative.last().expect("non-empty registry");
        let x = u * total;
        self.cumulative.partition_point(|c| *c <= x).min(self.facilities.len() - 1)
    }

    /// The expected share of scans of facility `i`.
    #[cfg(test)]
    pub fn share(&self, i: usize) -> f64 {
        let total = *self.cumulative.last().unwrap();
        let prev = if i == 0 { 0.0 } else { self.cumulative[i - 1] };
        (self.cumulative[i] - prev) / total
    }

    /// NDJSON chunks of at most `per_chunk` lines for the import API.
    pub fn ndjson_chunks(&self, per_chunk: usize) -> impl Iterator<Item = String> + '_ {
        self.facilities.chunks(per_chunk).map(|c| {
            let mut s = String::with_capacity(c.len() * 300);
            for f in c {
                s.push_str(&f.ndjson(self.token_validity_s));
                s.push('\n');
            }
            s
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scan_gateway::registry::import::{self, Format};

    #[test]
    fn same_seed_same_registry_and_every_state_present() {
        let a = Registry::synthetic(5_000, 7);
        let b = Registry::synthetic(5_000, 7);
        let c = Registry::synthetic(5_000, 8);
        assert_eq!(a.facilities.len(), 5_000);
        let lines = |r: &Registry| r.facilities.iter().map(|f| f.ndjson(7200)).collect::<Vec<_>>();
        assert_eq!(lines(&a), lines(&b));
        assert_ne!(lines(&a), lines(&c), "the seed changes the district layout");
        for (si, st) in STATES.iter().enumerate() {
            assert!(a.facilities.iter().any(|f| f.state == si), "state {} missing", st.code);
        }
        let mut ids: Vec<&str> = a.facilities.iter().map(|f| f.id.as_str()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 5_000, "facility ids are unique");
    }

    #[test]
    fn every_line_is_a_valid_gateway_registry_record() {
        let r = Registry::synthetic(300, 1);
        let body: String = r.ndjson_chunks(1_000).collect();
        let parsed = import::parse(Format::Ndjson, body.as_bytes(), "Asia/Kolkata", 1800)
            .unwrap_or_else(|e| panic!("the gateway refused lines: {:?}", &e[..e.len().min(3)]));
        assert_eq!(parsed.len(), 300);
        assert_eq!(parsed[0].state, "Andaman and Nicobar Islands");
    }

    #[test]
    fn state_shares_follow_the_published_leaders_and_sizes_are_zipf() {
        let r = Registry::synthetic(300_000, 1);
        let state_share = |code: &str| -> f64 {
            (0..r.facilities.len()).filter(|i| r.facilities[*i].state_code() == code).map(|i| r.share(i)).sum()
        };
        let (up, ap, tn) = (state_share("UP"), state_share("AP"), state_share("TN"));
        assert!((up / ap - 7.8 / 4.2).abs() < 0.01, "UP/AP {}", up / ap);
        assert!(tn < 1e-5, "Tamil Nadu is a laggard: {tn}");
        // Within a state, the biggest facility dwarfs the median one.
        let up_idx: Vec<usize> = (0..r.facilities.len()).filter(|i| r.facilities[*i].state_code() == "UP").collect();
        let top = r.share(up_idx[0]);
        let median = r.share(up_idx[up_idx.len() / 2]);
        assert!(top / median > 1_000.0, "top {top} median {median}");
        assert_eq!(r.facilities[up_idx[0]].counters.len(), 10, "8 OPD + pharmacy + lab for the biggest");
        assert_eq!(r.facilities[*up_idx.last().unwrap()].counters.len(), 3);
    }

    #[test]
    fn sampling_matches_the_shares() {
        let r = Registry::synthetic(1_000, 3);
        let mut hits = vec![0u32; r.facilities.len()];
        let n = 200_000;
        for k in 0..n {
            hits[r.pick((k as f64 + 0.5) / n as f64)] += 1;
        }
        for (i, got) in hits.iter().enumerate() {
            let expected = r.share(i) * n as f64;
            assert!((*got as f64 - expected).abs() <= 1.0 + expected * 0.01, "facility {i}: {got} vs {expected}");
        }
    }

    #[test]
    fn counter_mix_is_80_12_8() {
        let r = Registry::synthetic(100, 1);
        let f = &r.facilities[0];
        let mut kinds = [0u32; 3];
        for k in 0..10_000 {
            let c = &f.counters[f.pick_counter((k as f64 + 0.5) / 10_000.0)];
            kinds[c.kind as usize] += 1;
        }
        assert_eq!(kinds, [8_000, 1_200, 800]);
    }
}
