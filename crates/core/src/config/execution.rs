//! `[execution]`: how the stages run, apart from what they compute.
//!
//! The recipe (data, model shape, training settings) decides a stage's results; these settings decide
//! where and with how much memory it runs. Those shown to leave the trained weights unchanged stay out
//! of the stages' fingerprints, so changing them reuses cached stages:
//!
//! - `max_experts_in_memory`: experts swapped through the memory-mapped store train the same bits as
//!   resident ones at `micro` (`tardbot-train`'s swapped-vs-resident test, the e2e kill/resume test);
//!   at `tiny` that test measures no difference but guarantees only 1e-6 (the autograd may add a
//!   block's gradient contributions in another order);
//! - `activation_checkpointing`: the segmented backward trains the same weights and gradient norms,
//!   bit for bit; only the logged loss, summed over LM-head chunks, differs in its last f32 bits
//!   (`activation_checkpointing_trains_the_same_bits`);
//! - `threads`: 1, 2 or 3 threads give the same bits (`results_do_not_depend_on_the_thread_count`).
//!
//! `device` changes results (other kernels, other rounding), so a training stage's fingerprint holds
//! the resolved device. So does `precision` (bf16/f16 compute rounds differently from f32) when it is
//! not `f32` (an f32 stage keeps the fingerprint it had before the setting existed).
//!
//! Every setting may be overridden per training stage in `[execution.stages.<stage>]`.

use super::validate::Problems;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecutionConfig {
    /// Where training runs: `auto` picks the best backend this binary was built with.
    pub device: Device,
    /// Worker threads shared by the stages that run at the same time; 0 = every core.
    pub threads: usize,
    /// How many independent stages may run at the same time.
    pub max_parallel_stages: usize,
    /// Experts of a MoE layer resident at once while training (1..=n_experts); the others wait in the
    /// memory-mapped expert store. Unset: every expert resident.
    pub max_experts_in_memory: Option<usize>,
    /// Segmented backward: keep only each block's input in the forward and recompute one block at a
    /// time in the backward (activation memory of one block instead of all, about a third more compute).
    pub activation_checkpointing: bool,
    /// Compute precision of training: `f32`, or mixed precision (`bf16`, `f16`: forward and backward
    /// in that type, f32 master weights and AdamW moments; `f16` with dynamic loss scaling).
    pub precision: Precision,
    /// Per training stage: `[execution.stages.sft]` overrides the settings above for that stage.
    pub stages: BTreeMap<String, StageExecution>,
}

/// The overridable part of [`ExecutionConfig`] for one stage; unset fields inherit.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StageExecution {
    pub threads: Option<usize>,
    pub max_experts_in_memory: Option<usize>,
    pub activation_checkpointing: Option<bool>,
    pub precision: Option<Precision>,
}

impl Default for ExecutionConfig {
    fn default() -> Self {
        ExecutionConfig {
            device: Device::Auto,
            threads: 0,
            max_parallel_stages: 2,
            max_experts_in_memory: None,
            activation_checkpointing: false,
            precision: Precision::F32,
            stages: BTreeMap::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    #[default]
    Auto,
    Cpu,
    Cuda,
    Metal,
}

impl Device {
    /// The backends this binary was built with, best first: the CPU always; CUDA and Metal with the
    /// `cuda` / `metal` cargo features (candle's backends, forwarded here by `tardbot-model`).
    pub fn available() -> &'static [Device] {
        if cfg!(feature = "cuda") {
            &[Device::Cuda, Device::Cpu]
        } else if cfg!(feature = "metal") {
            &[Device::Metal, Device::Cpu]
        } else {
            &[Device::Cpu]
        }
    }

    /// `auto` resolved to the best available backend; `None` for a backend this binary lacks.
    pub fn resolve(self) -> Option<Device> {
        match self {
            Device::Auto => Device::available().first().copied(),
            d => Device::available().contains(&d).then_some(d),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Device::Auto => "auto",
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
            Device::Metal => "metal",
        }
    }
}

/// The compute precision of training (`[execution] precision`).
///
/// `bf16` and `f16` are mixed precision: the model's forward and backward run in that type from a
/// copy of the weights cast each step from f32 master weights; gradients are accumulated, clipped and
/// applied in f32, and the AdamW moments are f32. `f16` (5 exponent bits) also scales the loss
/// dynamically so that small gradients do not underflow: a step whose gradients overflow is skipped
/// and the scale halved (`tardbot-train`'s `LossScaler`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
    F16,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        }
    }

    /// Parses `f32`, `bf16` or `f16` (command-line flags); the error lists the choices.
    pub fn parse(s: &str) -> Result<Precision, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            "f16" => Ok(Precision::F16),
            other => Err(format!(
                "unknown precision `{other}`; one of: f32, bf16, f16"
            )),
        }
    }
}

/// The execution settings of one stage, overrides applied.
#[derive(Clone, Debug, PartialEq)]
pub struct Execution {
    /// Resolved: never `auto` (validation refuses a device the binary lacks).
    pub device: Device,
    /// Threads the stage keeps busy (0 = all of the budget); `None`: what the stage declares.
    pub threads: Option<usize>,
    /// `None`: every expert resident.
    pub max_experts_in_memory: Option<usize>,
    pub activation_checkpointing: bool,
    pub precision: Precision,
}

impl Execution {
    /// Everything resident, no checkpointing, on the CPU in f32 (tests, benchmarks).
    pub fn cpu() -> Self {
        Execution {
            device: Device::Cpu,
            threads: None,
            max_experts_in_memory: None,
            activation_checkpointing: false,
            precision: Precision::F32,
        }
    }
}

impl ExecutionConfig {
    /// The thread budget with 0 resolved to the machine's core count.
    pub fn thread_budget(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }

    /// The settings `stage` runs with: `[execution]` with `[execution.stages.<stage>]` applied.
    pub fn for_stage(&self, stage: &str) -> Execution {
        let o = self.stages.get(stage).cloned().unwrap_or_default();
        Execution {
            device: self.device.resolve().unwrap_or(Device::Cpu),
            threads: o.threads,
            max_experts_in_memory: o.max_experts_in_memory.or(self.max_experts_in_memory),
            activation_checkpointing: o
                .activation_checkpointing
                .unwrap_or(self.activation_checkpointing),
            precision: o.precision.unwrap_or(self.precision),
        }
    }

    /// `n_experts` of the model bounds `max_experts_in_memory`. Which stages `[execution.stages.*]`
    /// may name is checked against the binary's stages ([`ExecutionConfig::check_stage_names`]).
    pub(crate) fn check(&self, n_experts: Option<usize>, p: &mut Problems) {
        if self.device.resolve().is_none() {
            p.push(
                "execution.device",
                format!(
                    "this tardbot-pipeline was built without the `{0}` backend (it has: {1}); \
                     build it with candle's {0} backend, `cargo build --release --features {0}`, \
                     or set device = \"cpu\"",
                    self.device.name(),
                    Device::available()
                        .iter()
                        .map(|d| d.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
        if self.max_parallel_stages == 0 {
            p.push(
                "execution.max_parallel_stages",
                "must be at least 1".to_string(),
            );
        }
        let experts = |field: &str, m: Option<usize>, p: &mut Problems| {
            if let (Some(m), Some(n)) = (m, n_experts)
                && (m == 0 || (n > 0 && m > n))
            {
                p.push(
                    field,
                    format!("{m} is not in 1..={n} (the model's experts per MoE layer)"),
                );
            }
        };
        experts(
            "execution.max_experts_in_memory",
            self.max_experts_in_memory,
            p,
        );
        for (stage, o) in &self.stages {
            experts(
                &format!("execution.stages.{stage}.max_experts_in_memory"),
                o.max_experts_in_memory,
                p,
            );
        }
        // Mixed precision computes from a bf16/f16 copy of resident weights; the expert store holds
        // f32 weights and trains them in f32 (one region at a time), so the two do not combine yet.
        let mixed_with_store = |field: &str,
                                precision: Precision,
                                m: Option<usize>,
                                p: &mut Problems| {
            if let (Some(m), Some(n)) = (m, n_experts)
                && precision != Precision::F32
                && m < n
            {
                p.push(
                    field,
                    format!(
                        "precision = \"{}\" needs every expert resident, but max_experts_in_memory = {m} \
                         < {n}: the expert store trains in f32 only; unset max_experts_in_memory or \
                         set precision = \"f32\"",
                        precision.name()
                    ),
                );
            }
        };
        mixed_with_store(
            "execution.precision",
            self.precision,
            self.max_experts_in_memory,
            p,
        );
        for (stage, o) in &self.stages {
            if o.precision.is_some() || o.max_experts_in_memory.is_some() {
                mixed_with_store(
                    &format!("execution.stages.{stage}.precision"),
                    o.precision.unwrap_or(self.precision),
                    o.max_experts_in_memory.or(self.max_experts_in_memory),
                    p,
                );
            }
        }
    }
}

impl ExecutionConfig {
    /// `[execution.stages.X]` must name one of `training_stages`.
    pub fn check_stage_names(&self, training_stages: &[&str], p: &mut Problems) {
        for stage in self.stages.keys() {
            if !training_stages.contains(&stage.as_str()) {
                p.push(
                    &format!("execution.stages.{stage}"),
                    format!(
                        "`{stage}` is not a training stage; per-stage settings apply to: {}",
                        training_stages.join(", ")
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_overrides_inherit_the_rest() {
        let cfg: ExecutionConfig = toml::from_str(
            "max_experts_in_memory = 2\n[stages.sft]\nactivation_checkpointing = true\nthreads = 1\n",
        )
        .unwrap();
        let sft = cfg.for_stage("sft");
        assert_eq!(
            sft,
            Execution {
                device: Device::Cpu,
                threads: Some(1),
                max_experts_in_memory: Some(2),
                activation_checkpointing: true,
                precision: Precision::F32,
            }
        );
        let pretrain = cfg.for_stage("pretrain");
        assert!(!pretrain.activation_checkpointing);
        assert_eq!(pretrain.threads, None);
        assert_eq!(cfg.max_parallel_stages, 2);
        assert_eq!(pretrain.precision, Precision::F32);
    }

    #[test]
    fn precision_parses_overrides_and_refuses_unknown_values() {
        let cfg: ExecutionConfig =
            toml::from_str("precision = \"bf16\"\n[stages.sft]\nprecision = \"f16\"\n").unwrap();
        assert_eq!(cfg.for_stage("pretrain").precision, Precision::Bf16);
        assert_eq!(cfg.for_stage("sft").precision, Precision::F16);
        assert_eq!(ExecutionConfig::default().precision, Precision::F32);
        let err = toml::from_str::<ExecutionConfig>("precision = \"fp8\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("precision") && err.contains("bf16") && err.contains("fp8"),
            "{err}"
        );
        assert_eq!(Precision::parse("f16"), Ok(Precision::F16));
        assert!(
            Precision::parse("half")
                .unwrap_err()
                .contains("f32, bf16, f16")
        );
    }

    #[test]
    fn mixed_precision_with_the_expert_store_is_a_problem() {
        let cfg: ExecutionConfig = toml::from_str(
            "precision = \"bf16\"\n[stages.sft]\nmax_experts_in_memory = 1\n[stages.cot]\nmax_experts_in_memory = 4\n",
        )
        .unwrap();
        let mut p = Problems::default();
        cfg.check(Some(4), &mut p);
        let text = format!("{p:?}");
        assert!(
            text.contains("execution.stages.sft.precision") && text.contains("f32 only"),
            "{text}"
        );
        assert!(!text.contains("execution.stages.cot"), "{text}");
        assert!(!text.contains("\"execution.precision"), "{text}");
    }

    /// The CPU-only build (the default features) refuses `device = "cuda"` with the message that says
    /// how to build a binary that has it.
    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_backend_the_binary_lacks_is_a_problem() {
        let mut p = Problems::default();
        let cfg = ExecutionConfig {
            device: Device::Cuda,
            ..Default::default()
        };
        cfg.check(Some(4), &mut p);
        let text = format!("{p:?}");
        assert!(
            text.contains("execution.device") && text.contains("--features cuda"),
            "{text}"
        );
        assert_eq!(Device::Auto.resolve(), Some(Device::Cpu));
        assert!(text.contains("(it has: cpu)"), "{text}");
    }

    #[test]
    fn bad_expert_counts_and_stage_names_are_problems() {
        let mut p = Problems::default();
        let cfg: ExecutionConfig = toml::from_str(
            "max_experts_in_memory = 9\n[stages.ingest]\nthreads = 1\n[stages.sft]\nmax_experts_in_memory = 0\n",
        )
        .unwrap();
        cfg.check(Some(4), &mut p);
        cfg.check_stage_names(&["pretrain", "sft"], &mut p);
        let text = format!("{p:?}");
        for field in [
            "execution.max_experts_in_memory",
            "execution.stages.ingest",
            "execution.stages.sft.max_experts_in_memory",
        ] {
            assert!(text.contains(field), "{field} missing: {text}");
        }
    }
}
