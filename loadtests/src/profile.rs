//! Arrival-rate profiles: the compressed OPD morning (ramp from 07:30, a 3x spike when the
//! counters open at 08:00, a plateau to 11:00, a taper to 13:00) and constant rates.

/// Simulated clock times, in seconds after midnight.
const T0730: f64 = 7.5 * 3600.0;
const T0800: f64 = 8.0 * 3600.0;
const T0815: f64 = 8.25 * 3600.0;
const T1100: f64 = 11.0 * 3600.0;
const T1300: f64 = 13.0 * 3600.0;

/// The national morning, played `compression` times faster than real time.
#[derive(Debug, Clone, Copy)]
pub struct Morning {
    /// The arrival rate at the 08:00 spike, scans per real second.
    pub peak_rate: f64,
    /// Simulated seconds per real second.
    pub compression: f64,
}

impl Morning {
    /// Real seconds from 07:30 to 13:00.
    pub fn duration_s(&self) -> f64 {
        (T1300 - T0730) / self.compression
    }

    /// The simulated wall clock (seconds after midnight) `real_s` into the run.
    pub fn clock(&self, real_s: f64) -> f64 {
        T0730 + real_s * self.compression
    }

    /// The arrival rate `real_s` into the run, scans per real second.
    pub fn rate(&self, real_s: f64) -> f64 {
        let plateau = self.peak_rate / 3.0;
        let t = self.clock(real_s);
        let frac = |a: f64, b: f64| ((t - a) / (b - a)).clamp(0.0, 1.0);
        if t < T0730 {
            0.0
        } else if t < T0800 {
            // People queue before the counters open: a ramp to 40% of the plateau.
            0.4 * plateau * frac(T0730, T0800)
        } else if t < T0815 {
            // The counters open: 3x the plateau at 08:00, back to the plateau by 08:15.
            plateau * (3.0 - 2.0 * frac(T0800, T0815))
        } else if t < T1100 {
            plateau
        } else if t < T1300 {
            plateau * (1.0 - 0.9 * frac(T1100, T1300))
        } else {
            0.0
        }
    }

    /// Formats a simulated clock as HH:MM.
    #[cfg(test)]
    pub fn hhmm(&self, real_s: f64) -> String {
        let t = self.clock(real_s) as u64;
        format!("{:02}:{:02}", t / 3600, (t % 3600) / 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spike_is_three_times_the_plateau_and_the_day_tapers() {
        let m = Morning { peak_rate: 3_000.0, compression: 60.0 };
        assert_eq!(m.duration_s(), 330.0);
        let at = |hh: f64| m.rate((hh * 3600.0 - T0730) / 60.0);
        assert_eq!(at(7.5), 0.0);
        assert!((at(7.75) - 200.0).abs() < 1e-6, "halfway up the ramp: {}", at(7.75));
        assert!((at(8.0) - 3_000.0).abs() < 1e-6);
        assert!((at(9.5) - 1_000.0).abs() < 1e-6);
        assert!((at(12.0) - 550.0).abs() < 1e-6);
        assert_eq!(m.rate(m.duration_s() + 1.0), 0.0);
        assert_eq!(m.hhmm(30.0), "08:00");
    }

    #[test]
    fn most_of_the_morning_arrives_before_eleven() {
        let m = Morning { peak_rate: 900.0, compression: 100.0 };
        let (mut before, mut total) = (0.0, 0.0);
        let dt = 0.01;
        let mut s = 0.0;
        while s < m.duration_s() {
            let r = m.rate(s) * dt;
            total += r;
            if m.clock(s) < T1100 {
                before += r;
            }
            s += dt;
        }
        assert!(before / total > 0.7, "{}", before / total);
    }
}
