//! SwiGLU feed-forward: `down(silu(gate(x)) * up(x))`, used by dense blocks and as every expert.

use candle_core::Tensor;
use candle_nn::{Init, VarBuilder};

use crate::Result;
use crate::ops::Linear;

#[derive(Clone, Debug)]
pub struct SwiGlu {
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
}

impl SwiGlu {
    pub fn new(cfg: &tardbot_core::ModelConfig, vb: VarBuilder) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let std = cfg.init_std;
        let out_std = cfg.init_std / (2.0 * cfg.n_layers as f64).sqrt();
        let w = |name: &str, o: usize, inp: usize, s: f64| -> Result<Linear> {
            Ok(Linear::new(vb.pp(name).get_with_hints(
                (o, inp),
                "weight",
                Init::Randn {
                    mean: 0.0,
                    stdev: s,
                },
            )?))
        };
        Ok(SwiGlu {
            gate: w("gate", i, h, std)?,
            up: w("up", i, h, std)?,
            down: w("down", h, i, out_std)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let g = self.gate.forward(x)?;
        let u = self.up.forward(x)?;
        let h = if crate::kernels::cpu_float(&g) && !self.gate.is_quantized() {
            crate::kernels::swiglu(&g, &u)?
        } else {
            (g.silu()? * u)?
        };
        self.down.forward(&h)
    }

    pub fn quantized(&self) -> Result<Self> {
        Ok(SwiGlu {
            gate: self.gate.quantized()?,
            up: self.up.quantized()?,
            down: self.down.quantized()?,
        })
    }
}
