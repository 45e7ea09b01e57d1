//! AdamW with fp32 moments, decoupled weight decay, global-norm clipping and saveable state.
//!
//! The update follows PyTorch's `torch.optim.AdamW`: `p ← p − lr·wd·p`, then
//! `p ← p − lr · m̂ / (√v̂ + ε)` with bias-corrected moments. On CPU the whole update of a parameter
//! is one pass over its memory, in place (a candle `InplaceOp2` over parameter and gradient): no
//! temporaries, which is what dominates optimizer time with tensor-op formulations.
//!
//! Experts kept in an [`ExpertStore`] are updated by the same element-wise kernel, one region at a
//! time, with the same step count and clip scale; their gradient norms join the global norm in the
//! same (name) order as resident parameters', so both placements compute the same floats.

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, InplaceOp2, Layout, Var};
use rayon::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tardbot_model::expert_store::{ExpertStore, Part, StoreError, StoreLayout, sum_squares};

#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("parameter `{name}`: {what}")]
    Param { name: String, what: String },
    #[error("optimizer state {}: {what}", path.display())]
    State { path: PathBuf, what: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type Result<T> = std::result::Result<T, OptimError>;

/// Elements per parallel task of the optimizer's passes.
const CHUNK: usize = 1 << 16;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        }
    }
}

struct ParamState {
    name: String,
    var: Var,
    decay: bool,
    m: Vec<f32>,
    v: Vec<f32>,
}

/// AdamW over named f32 CPU parameters.
pub struct AdamW {
    params: Vec<ParamState>,
    config: AdamWConfig,
    /// Which parameters decay, by name (also asked for the expert store's tensors).
    decay: fn(&str) -> bool,
    /// Updates applied so far (the bias-correction exponent).
    t: u64,
}

impl AdamW {
    /// `decay(name)` says which parameters get weight decay (by convention not norms, biases or
    /// embeddings).
    pub fn new(
        vars: Vec<(String, Var)>,
        config: AdamWConfig,
        decay: fn(&str) -> bool,
    ) -> Result<Self> {
        let params = vars
            .into_iter()
            .map(|(name, var)| {
                if var.dtype() != DType::F32 || !var.device().is_cpu() {
                    return Err(OptimError::Param {
                        name,
                        what: format!(
                            "needs f32 on cpu, found {:?} on {:?}",
                            var.dtype(),
                            var.device()
                        ),
                    });
                }
                let n = var.elem_count();
                Ok(ParamState {
                    decay: decay(&name),
                    name,
                    var,
                    m: vec![0.0; n],
                    v: vec![0.0; n],
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(AdamW {
            params,
            config,
            decay,
            t: 0,
        })
    }

    /// Updates applied so far.
    pub fn steps_taken(&self) -> u64 {
        self.t
    }

    /// Global L2 norm of the gradients of all parameters (a parameter without a gradient counts 0),
    /// including the experts of `store` that hold gradients.
    pub fn grad_norm(&self, grads: &GradStore, store: Option<&ExpertStore>) -> Result<f64> {
        let mut sums: Vec<(String, f64)> = Vec::with_capacity(self.params.len());
        for p in &self.params {
            if let Some(g) = grads.get(p.var.as_tensor()) {
                let g = g.to_dtype(DType::F32)?.contiguous()?;
                let (st, layout) = g.storage_and_layout();
                let (candle_core::Storage::Cpu(CpuStorage::F32(data)), Some((a, b))) =
                    (&*st, layout.contiguous_offsets())
                else {
                    return Err(OptimError::Param {
                        name: p.name.clone(),
                        what: "gradient is not a contiguous f32 CPU tensor".into(),
                    });
                };
                sums.push((p.name.clone(), sum_squares(&data[a..b])));
            }
        }
        if let Some(store) = store {
            // Computed by the store as the gradients were accumulated: no region is checked out.
            let specs = store.layout().tensors.clone();
            for (layer, expert) in store.regions_with_grads() {
                let ss = store.grad_sum_squares(layer, expert)?.unwrap_or_default();
                for (spec, s) in specs.iter().zip(ss) {
                    sums.push((StoreLayout::param_name(layer, expert, &spec.name), s));
                }
            }
        }
        // Added in name order whatever the placement: the same value for resident and stored experts.
        sums.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(sums.iter().map(|(_, s)| s).sum::<f64>().sqrt())
    }

    /// One update at learning rate `lr`. With `clip > 0`, gradients are scaled so that their global
    /// norm is at most `clip`. Returns the norm before clipping.
    pub fn step(&mut self, grads: &GradStore, lr: f64, clip: f64) -> Result<f64> {
        let norm = self.grad_norm(grads, None)?;
        self.step_with_norm(grads, None, norm, lr, clip)?;
        Ok(norm)
    }

    /// [`AdamW::step`] with the global gradient norm already computed by [`AdamW::grad_norm`]; also
    /// updates every expert of `store` that holds gradients (one region checked out at a time, its
    /// gradients zeroed afterwards).
    pub fn step_with_norm(
        &mut self,
        grads: &GradStore,
        store: Option<&ExpertStore>,
        norm: f64,
        lr: f64,
        clip: f64,
    ) -> Result<()> {
        self.step_with_norm_scaled(grads, store, norm, lr, clip, 1.0)
    }

    /// [`AdamW::step_with_norm`] for gradients `unscale⁻¹` times too large (those of a scaled loss,
    /// f16 loss scaling): each gradient is multiplied by `unscale` (and the clip factor) as the
    /// update reads it. `norm` is the norm of the unscaled gradients.
    pub fn step_with_norm_scaled(
        &mut self,
        grads: &GradStore,
        store: Option<&ExpertStore>,
        norm: f64,
        lr: f64,
        clip: f64,
        unscale: f64,
    ) -> Result<()> {
        let clip_scale = if clip > 0.0 && norm > clip {
            clip / norm
        } else {
            1.0
        };
        let scale = clip_scale * unscale;
        self.t += 1;
        for i in 0..self.params.len() {
            let hyper = self.hyper(lr, self.params[i].decay, scale);
            let p = &mut self.params[i];
            let Some(g) = grads.get(p.var.as_tensor()) else {
                continue;
            };
            let g = g.contiguous()?;
            let op = AdamWUpdate {
                m: RefCell::new(&mut p.m),
                v: RefCell::new(&mut p.v),
                hyper,
            };
            p.var
                .as_tensor()
                .inplace_op2(&g, &op)
                .map_err(|e| OptimError::Param {
                    name: p.name.clone(),
                    what: e.to_string(),
                })?;
        }
        if let Some(store) = store {
            let specs = store.layout().tensors.clone();
            let todo = store.regions_with_grads();
            for (i, &(layer, expert)) in todo.iter().enumerate() {
                if let Some(&(l, e)) = todo.get(i + 1) {
                    store.prefetch(l, e)?;
                }
                let mut region = store.region(layer, expert)?;
                region.populate(Part::Weights, 4, true);
                for (t, spec) in specs.iter().enumerate() {
                    let name = StoreLayout::param_name(layer, expert, &spec.name);
                    let hyper = self.hyper(lr, (self.decay)(&name), scale);
                    let ts = region.tensor_mut(t)?;
                    adamw_update(ts.weights, ts.grads, ts.m, ts.v, &hyper);
                }
                region.zero_grads()?;
            }
        }
        Ok(())
    }

    /// Drops the gradients accumulated in `store` without updating (a rejected step).
    pub fn discard_store_grads(store: &ExpertStore) -> Result<()> {
        for (layer, expert) in store.regions_with_grads() {
            store.region(layer, expert)?.zero_grads()?;
        }
        Ok(())
    }

    /// The constants of one parameter's update at step `self.t`.
    fn hyper(&self, lr: f64, decay: bool, grad_scale: f64) -> AdamWHyper {
        let c = self.config;
        AdamWHyper {
            lr: lr as f32,
            decay: if decay {
                (lr * c.weight_decay) as f32
            } else {
                0.0
            },
            beta1: c.beta1 as f32,
            beta2: c.beta2 as f32,
            eps: c.eps as f32,
            bias1: (1.0 - c.beta1.powi(self.t as i32)) as f32,
            bias2_sqrt: (1.0 - c.beta2.powi(self.t as i32)).sqrt() as f32,
            grad_scale: grad_scale as f32,
        }
    }

    /// Writes the moments and the step count (safetensors: `m.<name>`, `v.<name>`; metadata `t`).
    pub fn save(&self, path: &Path) -> Result<()> {
        let state_err = |what: String| OptimError::State {
            path: path.to_path_buf(),
            what,
        };
        let bytes: Vec<(String, Vec<u8>, usize)> = self
            .params
            .iter()
            .flat_map(|p| {
                [
                    (format!("m.{}", p.name), &p.m),
                    (format!("v.{}", p.name), &p.v),
                ]
            })
            .map(|(k, data)| {
                (
                    k,
                    data.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    data.len(),
                )
            })
            .collect();
        let views = bytes
            .iter()
            .map(|(k, b, n)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![*n], b)
                    .map(|v| (k.clone(), v))
                    .map_err(|e| state_err(e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        let meta = HashMap::from([("t".to_string(), self.t.to_string())]);
        safetensors::serialize_to_file(views, Some(meta), path)
            .map_err(|e| state_err(e.to_string()))
    }

    /// Restores moments and step count saved by [`AdamW::save`] for the same parameters.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let state_err = |what: String| OptimError::State {
            path: path.to_path_buf(),
            what,
        };
        let data = std::fs::read(path).map_err(|e| state_err(e.to_string()))?;
        let (_, meta) =
            safetensors::SafeTensors::read_metadata(&data).map_err(|e| state_err(e.to_string()))?;
        let t = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("t"))
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| state_err("no step count `t` in the metadata".into()))?;
        let st =
            safetensors::SafeTensors::deserialize(&data).map_err(|e| state_err(e.to_string()))?;
        for p in &mut self.params {
            for (prefix, dst) in [("m", &mut p.m), ("v", &mut p.v)] {
                let key = format!("{prefix}.{}", p.name);
                let view = st
                    .tensor(&key)
                    .map_err(|_| state_err(format!("missing tensor `{key}`")))?;
                if view.dtype() != safetensors::Dtype::F32 || view.data().len() != dst.len() * 4 {
                    return Err(state_err(format!(
                        "`{key}` has the wrong type or size for this model"
                    )));
                }
                for (d, chunk) in dst.iter_mut().zip(view.data().chunks_exact(4)) {
                    *d = f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
                }
            }
        }
        self.t = t;
        Ok(())
    }
}

/// The constants of one parameter's AdamW update.
struct AdamWHyper {
    lr: f32,
    decay: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    bias1: f32,
    bias2_sqrt: f32,
    grad_scale: f32,
}

/// The AdamW update of one parameter, in place. Element-wise, so splitting over threads changes no
/// bit of the result.
fn adamw_update(param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32], h: &AdamWHyper) {
    let step = h.lr / h.bias1;
    let (beta1, beta2, decay, eps) = (h.beta1, h.beta2, h.decay, h.eps);
    let (grad_scale, bias2_sqrt) = (h.grad_scale, h.bias2_sqrt);
    param
        .par_chunks_mut(CHUNK)
        .zip(grad.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
        .for_each(|((ps, gs), (ms, vs))| {
            for (((p, &g), m), v) in ps.iter_mut().zip(gs).zip(ms.iter_mut()).zip(vs.iter_mut()) {
                let g = g * grad_scale;
                *m = beta1 * *m + (1.0 - beta1) * g;
                *v = beta2 * *v + (1.0 - beta2) * g * g;
                *p -= decay * *p;
                *p -= step * *m / (v.sqrt() / bias2_sqrt + eps);
            }
        });
}

/// [`adamw_update`] in place on a candle parameter's storage.
struct AdamWUpdate<'a> {
    m: RefCell<&'a mut Vec<f32>>,
    v: RefCell<&'a mut Vec<f32>>,
    hyper: AdamWHyper,
}

impl InplaceOp2 for AdamWUpdate<'_> {
    fn name(&self) -> &'static str {
        "adamw-update"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let (CpuStorage::F32(param), CpuStorage::F32(grad)) = (s1, s2) else {
            candle_core::bail!("adamw-update needs f32 parameter and gradient")
        };
        let (Some((p0, p1)), Some((g0, g1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("adamw-update needs contiguous tensors")
        };
        let (param, grad) = (&mut param[p0..p1], &grad[g0..g1]);
        let mut m = self.m.borrow_mut();
        let mut v = self.v.borrow_mut();
        if param.len() != grad.len() || param.len() != m.len() {
            candle_core::bail!("adamw-update: parameter, gradient and moments differ in size")
        }
        adamw_update(param, grad, &mut m, &mut v, &self.hyper);
        Ok(())
    }
}

/// The usual decay rule: matrices decay; norms, biases and embeddings do not.
pub fn default_decay(name: &str) -> bool {
    !(name.contains("norm") || name.contains("bias") || name.contains("embed"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// Parameters with chosen gradients: loss = Σ p ⊙ c gives ∂loss/∂p = c.
    fn grads_for(vars: &[(String, Var)], coeffs: &[Vec<f32>]) -> GradStore {
        let mut loss: Option<Tensor> = None;
        for ((_, var), c) in vars.iter().zip(coeffs) {
            let c = Tensor::from_vec(c.clone(), var.shape(), &Device::Cpu).unwrap();
            let term = (var.as_tensor() * c).unwrap().sum_all().unwrap();
            loss = Some(match loss {
                Some(l) => (l + term).unwrap(),
                None => term,
            });
        }
        loss.unwrap().backward().unwrap()
    }

    fn vars() -> Vec<(String, Var)> {
        vec![
            (
                "w".to_string(),
                Var::from_vec(vec![0.5f32, -1.0, 2.0, 0.25], (2, 2), &Device::Cpu).unwrap(),
            ),
            (
                "norm.weight".to_string(),
                Var::from_vec(vec![1.0f32, 1.0], 2, &Device::Cpu).unwrap(),
            ),
        ]
    }

    /// Scalar f64 reference of the same update rule.
    fn reference(
        p0: &[f64],
        grads: &[Vec<f64>],
        lr: &[f64],
        wd: f64,
        clip_scale: &[f64],
    ) -> Vec<f64> {
        let (b1, b2, eps) = (0.9f64, 0.95f64, 1e-8f64);
        let mut p = p0.to_vec();
        let mut m = vec![0.0; p.len()];
        let mut v = vec![0.0; p.len()];
        for (t, g) in grads.iter().enumerate() {
            let t = t as i32 + 1;
            for i in 0..p.len() {
                let gi = g[i] * clip_scale[t as usize - 1];
                m[i] = b1 * m[i] + (1.0 - b1) * gi;
                v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
                let mh = m[i] / (1.0 - b1.powi(t));
                let vh = v[i] / (1.0 - b2.powi(t));
                p[i] -= lr[t as usize - 1] * wd * p[i];
                p[i] -= lr[t as usize - 1] * mh / (vh.sqrt() + eps);
            }
        }
        p
    }

    #[test]
    fn matches_a_scalar_reference_with_decay_exclusions_and_clipping() {
        let vars = vars();
        let mut opt = AdamW::new(vars.clone(), AdamWConfig::default(), default_decay).unwrap();
        let g_steps = [
            vec![vec![0.1f32, -0.2, 0.3, 0.4], vec![1.0, -1.0]],
            vec![vec![3.0f32, 0.0, -4.0, 0.0], vec![0.5, 0.5]],
            vec![vec![-0.1f32, 0.1, 0.2, -0.3], vec![-2.0, 0.0]],
        ];
        let lrs = [1e-2, 5e-3, 1e-3];
        let clip = 2.0;
        let mut scales = vec![];
        for (g, lr) in g_steps.iter().zip(lrs) {
            let grads = grads_for(&vars, g);
            let norm = opt.step(&grads, lr, clip).unwrap();
            let expect: f64 = g
                .iter()
                .flatten()
                .map(|&x| (x as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            assert!((norm - expect).abs() < 1e-6);
            scales.push(if norm > clip { clip / norm } else { 1.0 });
        }
        assert!(scales[1] < 1.0, "the second step is clipped");
        let to64 = |i: usize| -> Vec<Vec<f64>> {
            g_steps
                .iter()
                .map(|s| s[i].iter().map(|&x| x as f64).collect())
                .collect()
        };
        let w = reference(&[0.5, -1.0, 2.0, 0.25], &to64(0), &lrs, 0.1, &scales);
        let n = reference(&[1.0, 1.0], &to64(1), &lrs, 0.0, &scales);
        let got_w = vars[0].1.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let got_n = vars[1].1.to_vec1::<f32>().unwrap();
        for (a, b) in got_w.iter().zip(&w).chain(got_n.iter().zip(&n)) {
            assert!((*a as f64 - b).abs() < 1e-6, "{a} vs {b}");
        }
        assert_eq!(opt.steps_taken(), 3);
    }

    #[test]
    fn saved_state_continues_bit_identically() {
        let dir = tempfile::tempdir().unwrap();
        let g = [vec![0.3f32, -0.1, 0.2, 0.7], vec![0.1, -0.4]];
        let a_vars = vars();
        let mut a = AdamW::new(a_vars.clone(), AdamWConfig::default(), default_decay).unwrap();
        for lr in [1e-2, 2e-2] {
            a.step(&grads_for(&a_vars, &g), lr, 1.0).unwrap();
        }
        a.save(&dir.path().join("optim.safetensors")).unwrap();

        // A fresh optimizer over a copy of the weights, restored from disk.
        let b_vars: Vec<(String, Var)> = a_vars
            .iter()
            .map(|(n, v)| {
                (
                    n.clone(),
                    Var::from_tensor(&v.as_tensor().copy().unwrap()).unwrap(),
                )
            })
            .collect();
        let mut b = AdamW::new(b_vars.clone(), AdamWConfig::default(), default_decay).unwrap();
        b.load(&dir.path().join("optim.safetensors")).unwrap();
        assert_eq!(b.steps_taken(), 2);
        a.step(&grads_for(&a_vars, &g), 3e-3, 1.0).unwrap();
        b.step(&grads_for(&b_vars, &g), 3e-3, 1.0).unwrap();
        for ((_, va), (_, vb)) in a_vars.iter().zip(&b_vars) {
            let x = va.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let y = vb.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(
                x.iter().map(|f| f.to_bits()).collect::<Vec<_>>(),
                y.iter().map(|f| f.to_bits()).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn state_of_another_model_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("optim.safetensors");
        AdamW::new(vars(), AdamWConfig::default(), default_decay)
            .unwrap()
            .save(&path)
            .unwrap();
        let other = vec![(
            "w".to_string(),
            Var::from_vec(vec![0f32; 6], (2, 3), &Device::Cpu).unwrap(),
        )];
        let err = AdamW::new(other, AdamWConfig::default(), default_decay)
            .unwrap()
            .load(&path)
            .unwrap_err();
        assert!(err.to_string().contains("wrong type or size"), "{err}");
    }
}
