//! Dynamic loss scaling for f16 training (`[execution] precision = "f16"`).
//!
//! f16 has 5 exponent bits: gradients below ~6e-8 flush to zero and values above 65504 overflow. The
//! loss is multiplied by `scale` before the backward, so the gradients are computed `scale` times
//! larger (out of the underflow range); the trainer divides them by `scale` again in f32 before
//! clipping and AdamW (exactly: the scale is a power of two). When the scaled gradients overflow (a
//! gradient or the loss is Inf/NaN) the step is skipped — no weight, moment or counter changes — and
//! the scale halves; after `growth_interval` clean steps in a row it doubles. The same policy as
//! PyTorch's `GradScaler` (initial scale 2¹⁶, ×½ on overflow, ×2 after 2000 clean steps).
//!
//! Its state is part of a checkpoint (`trainer.json`), so a resumed run scales the losses it would
//! have scaled.

use serde::{Deserialize, Serialize};

/// The scale an f16 run starts with: 2¹⁶.
pub const INITIAL_LOSS_SCALE: f64 = 65536.0;
/// Clean steps in a row after which the scale doubles.
pub const GROWTH_INTERVAL: u32 = 2000;

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    /// What the loss is multiplied by before the backward (a power of two).
    pub scale: f64,
    /// Clean steps in a row after which `scale` doubles.
    pub growth_interval: u32,
    /// Clean steps since the last change of `scale`.
    pub clean_steps: u32,
}

impl Default for LossScaler {
    fn default() -> Self {
        LossScaler::new(INITIAL_LOSS_SCALE, GROWTH_INTERVAL)
    }
}

impl LossScaler {
    pub fn new(scale: f64, growth_interval: u32) -> Self {
        LossScaler {
            scale,
            growth_interval: growth_interval.max(1),
            clean_steps: 0,
        }
    }

    /// The step's scaled gradients overflowed: it is skipped and the scale halves.
    pub fn overflowed(&mut self) {
        self.scale *= 0.5;
        self.clean_steps = 0;
    }

    /// The step was applied: after `growth_interval` of them in a row the scale doubles.
    pub fn clean(&mut self) {
        self.clean_steps += 1;
        if self.clean_steps >= self.growth_interval {
            self.scale *= 2.0;
            self.clean_steps = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_on_overflow_and_doubles_after_the_interval() {
        let mut s = LossScaler::new(1024.0, 3);
        s.clean();
        s.clean();
        s.overflowed();
        assert_eq!((s.scale, s.clean_steps), (512.0, 0));
        for _ in 0..2 {
            s.clean();
        }
        assert_eq!(s.scale, 512.0);
        s.clean();
        assert_eq!((s.scale, s.clean_steps), (1024.0, 0));
        assert_eq!(LossScaler::default().scale, 65536.0);
    }
}
