//! TardBot in candle: the Mixture-of-Experts decoder of `shared/spec/tardbot-architecture.md`, with
//! gradients proven by finite differences.
//!
//! What it does:
//! - [`TardBot`]: token embedding with a tied LM head, RoPE, grouped-query attention (half as many KV
//!   heads), sliding-window causal attention (blocked, O(n·w) memory) with optional document masking for
//!   packed sequences, pre-norm RMSNorm, SwiGLU (4× hidden by default), the first ⌊L/4⌋ blocks dense and
//!   the rest top-2 MoE with a softmax router, the Switch load-balancing loss and the router z-loss, and
//!   per-expert token counts ([`ModelOutput`]).
//! - Training uses only differentiable compositions ([`ops`]): candle 0.11's fused `rms_norm`,
//!   `softmax_last_dim` and `rope` have no backward. On CPU in f32/f64 the compositions run as
//!   [`kernels`]: custom ops with their own backward (one candle node each). Inference may switch to
//!   candle's fused, forward-only kernels ([`TardBot::with_fused_kernels`]).
//! - Initialisation: seeded scaled normal ([`init_weights`]).
//! - Safetensors save/load with stable names ([`io`]).
//! - KV-cache generation (ring buffer of the window size), temperature/top-k/top-p sampling with a seeded
//!   RNG, stop tokens, a streaming callback ([`generate`]); int8 (GGML Q8_0) weights for CPU inference
//!   ([`TardBot::quantize_int8`]). Accuracy measured on random weights: `tiny` max |Δlogit| 0.5% of the
//!   largest logit, top-1 agreement 100% (a test holds < 3%); `mac_nano` (12 layers, where routing flips
//!   amplify the error) 16% and 93.8%. Speed: candle 0.11's Q8_0 CPU kernel was slower than the f32 gemm
//!   on the 2-core x86 development machine (see `bench_generate`); it is meant for memory-bound Apple
//!   silicon (NEON) and as a 4× smaller resident model.
//! - Batched decoding ([`TardBot::forward_decode_batch`]): one step of n independent sequences, each
//!   continuing its own [`KvCache`] at its own position, with every token-parallel op (projections,
//!   MLPs, router and experts, LM head) run once on the n tokens, so weights are read once per step;
//!   only RoPE and the attention over each ring are per sequence (one [`kernels::decode_attention`]
//!   call per layer on CPU, reading only filled slots). Row i equals `forward_cached` of that token
//!   alone (max |Δlogit| 8e-7 in f32 on `tiny`, 0 in f64 on `micro`). Measured on the 2-core
//!   development machine under load, fp32 fused, prompts of 16–63 tokens: `mac_nano` 32 sequences
//!   5.2× the tokens/s of decoding them one at a time (190 vs 35 tok/s), 8 sequences 2.0×; with
//!   400-token prompts 4.0× and 2.0× (attention is per sequence either way); `tiny` 2.9× and 1.5×
//!   (`tests/batch_decode.rs`, `bench_decode_batch`).
//! - [`bench::bench_generate`]: tokens/s of generation, fp32 and int8.
//!
//! - [`expert_store`]: every MoE expert's weights, gradient accumulators and AdamW moments in one
//!   memory-mapped file, a checksummed region per (layer, expert); [`TardBot::with_expert_store`] builds
//!   a model whose experts are computed from it one region at a time ([`stored_expert`]), so that only
//!   `max_experts_in_memory` experts are in memory.
//!
//! What it does not do: optimizers (the training engine updates the store's regions), schedules,
//! checkpoint directories, activation checkpointing (the training engine's job; [`Block::forward`],
//! [`TardBot::embed`] and [`TardBot::head`] let it run the blocks one at a time), tokenization, and
//! choosing presets ([`tardbot_core::ModelConfig`]).
//!
//! Devices: CPU always; `cuda` and `metal` cargo features enable candle's backends (not built in CI).

pub mod attention;
pub mod bench;
pub mod error;
pub mod expert_store;
pub mod generate;
pub mod io;
pub mod kernels;
pub mod mlp;
pub mod model;
pub mod moe;
pub mod ops;
pub mod profile;
pub mod stored_expert;

pub use attention::{AttnCtx, LayerKvCache};
pub use bench::{BenchGenerateOptions, bench_generate, bench_prompt};
pub use error::{ModelError, Result};
pub use expert_store::{ExpertStore, StoreError, StoreLayout};
pub use generate::{GenerateConfig, Generation, Sampler, SamplingParams, StopReason, generate};
pub use io::{load_model, load_safetensors_into, save_safetensors};
pub use model::{
    Block, Ffn, KvCache, Loss, ModelOutput, TardBot, cross_entropy, init_expert_store,
    init_weights, named_vars,
};
pub use tardbot_core::ModelConfig;

pub use candle_core;
pub use candle_nn;

#[cfg(test)]
mod test_util;
#[cfg(test)]
mod tests;
