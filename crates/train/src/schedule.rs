//! Learning-rate schedules: linear warmup, then cosine decay or WSD (warmup, stable, decay).
//!
//! A pure function of the step, so a resumed run needs only the step to be at the same position.

use tardbot_core::config::{Schedule, TrainConfig};

/// Fraction of the steps spent decaying in WSD.
const WSD_DECAY_FRACTION: f64 = 0.2;

#[derive(Clone, Debug, PartialEq)]
pub struct LrSchedule {
    pub peak: f64,
    pub min: f64,
    pub warmup: u64,
    pub total: u64,
    pub kind: Schedule,
}

impl LrSchedule {
    pub fn from_config(c: &TrainConfig) -> Self {
        LrSchedule {
            peak: c.lr,
            min: c.lr * c.min_lr_ratio,
            warmup: c.warmup_steps,
            total: c.steps,
            kind: c.schedule,
        }
    }

    /// The learning rate of optimizer step `step` (0-based).
    pub fn lr_at(&self, step: u64) -> f64 {
        if step < self.warmup {
            return self.peak * (step + 1) as f64 / self.warmup as f64;
        }
        let span = self.total.saturating_sub(self.warmup).max(1) as f64;
        let progress = ((step - self.warmup) as f64 / span).clamp(0.0, 1.0);
        match self.kind {
            Schedule::Cosine => {
                self.min
                    + (self.peak - self.min) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
            Schedule::Wsd => {
                let decay_start = 1.0 - WSD_DECAY_FRACTION;
                if progress < decay_start {
                    self.peak
                } else {
                    let d = (progress - decay_start) / WSD_DECAY_FRACTION;
                    self.peak + (self.min - self.peak) * d
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(kind: Schedule) -> LrSchedule {
        LrSchedule {
            peak: 1e-3,
            min: 1e-4,
            warmup: 10,
            total: 110,
            kind,
        }
    }

    #[test]
    fn warmup_is_linear_and_cosine_reaches_min_at_the_end() {
        let s = sched(Schedule::Cosine);
        assert!((s.lr_at(0) - 1e-4).abs() < 1e-12);
        assert!((s.lr_at(4) - 5e-4).abs() < 1e-12);
        assert!((s.lr_at(10) - 1e-3).abs() < 1e-12);
        // Halfway through the decay: the mean of peak and min.
        assert!((s.lr_at(60) - 5.5e-4).abs() < 1e-12);
        assert!((s.lr_at(110) - 1e-4).abs() < 1e-12);
        assert!((s.lr_at(500) - 1e-4).abs() < 1e-12);
        for step in 10..110 {
            assert!(s.lr_at(step + 1) <= s.lr_at(step));
        }
    }

    #[test]
    fn wsd_holds_the_peak_then_decays_linearly() {
        let s = sched(Schedule::Wsd);
        assert_eq!(s.lr_at(50), 1e-3);
        assert_eq!(s.lr_at(90), 1e-3);
        assert!((s.lr_at(100) - 5.5e-4).abs() < 1e-12);
        assert!((s.lr_at(110) - 1e-4).abs() < 1e-12);
    }
}
