//! Hugging Face transformers export: a directory that `AutoModelForCausalLM.from_pretrained` and
//! `AutoTokenizer.from_pretrained` load without `trust_remote_code`.
//!
//! **Architecture: `Qwen2MoeForCausalLM`.** It computes TardBot exactly (checked against transformers
//! 5.24's `modeling_qwen2_moe.py`):
//! - pre-norm blocks with RMSNorm (`x · rsqrt(mean(x²) + eps) · w`, in f32), SwiGLU MLPs and experts,
//!   no biases (`qkv_bias = false`), tied embeddings, scale `head_dim^-0.5`;
//! - `mlp_only_layers` = the dense first quarter, whose MLP has `intermediate_size`; the experts have
//!   `moe_intermediate_size` (the same width in TardBot);
//! - router `softmax → top-k → renormalise` = `norm_topk_prob = true`;
//! - the shared expert cannot be switched off, so it is one unit wide with zero weights: its output
//!   (and its sigmoid gate's product) is exactly 0;
//! - every layer `sliding_attention` with `sliding_window` = TardBot's window (transformers masks key
//!   `k` for query `q` unless `q - k < window`, as TardBot does);
//! - RoPE: transformers rotates halves, TardBot interleaved pairs; q and k rows are permuted
//!   ([`crate::rope`]).

use crate::card::ModelCard;
use crate::error::{ExportError, Result, output_err};
use crate::rope::interleaved_to_half_split;
use crate::source::SourceModel;
use crate::{ExportDtype, staging};
use candle_core::{DType, Tensor};
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tardbot_tokens::special_tokens::{EOS_ID, PAD_ID, SPECIAL_TOKENS, Special};

/// Writes the export into `out` (which must not exist yet) and returns the files written.
pub fn write_hf(
    src: &SourceModel,
    card: &ModelCard,
    dtype: ExportDtype,
    out: &Path,
) -> Result<Vec<PathBuf>> {
    let torch_dtype = match dtype {
        ExportDtype::F32 => (DType::F32, "float32"),
        ExportDtype::F16 => (DType::F16, "float16"),
        ExportDtype::Bf16 => (DType::BF16, "bfloat16"),
        ExportDtype::Q8_0 => {
            return Err(ExportError::Unsupported {
                format: "hf",
                reason: "q8_0 is a GGUF type; export hf as f32, f16 or bf16 (or gguf as q8_0)"
                    .into(),
            });
        }
    };
    let mut stage = staging::Dir::new(out)?;
    let tensors = hf_tensors(src, torch_dtype.0)?;
    let weights = stage.path().join("model.safetensors");
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let mut sorted: Vec<(&String, &Tensor)> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    safetensors::serialize_to_file(sorted, Some(metadata), &weights)
        .map_err(|e| output_err(&weights, e))?;
    stage.add("model.safetensors");
    stage.write_json("config.json", &config_json(src, torch_dtype.1))?;
    stage.write_json("generation_config.json", &generation_config())?;
    stage.write_bytes("tokenizer.json", &src.tokenizer.bytes)?;
    stage.write_json("tokenizer_config.json", &tokenizer_config(src))?;
    stage.write_bytes("README.md", card.render(src, "hf", dtype).as_bytes())?;
    stage.finish()
}

/// `<|end|>` ends an assistant turn, `<|endoftext|>` a document: generation stops at either.
fn stop_ids() -> Vec<u32> {
    vec![Special::EndOfTurn.id(), EOS_ID]
}

fn config_json(src: &SourceModel, torch_dtype: &str) -> serde_json::Value {
    let c = &src.config;
    let dense: Vec<usize> = (0..c.n_layers).filter(|&l| !c.is_moe_layer(l)).collect();
    json!({
        "architectures": ["Qwen2MoeForCausalLM"],
        "model_type": "qwen2_moe",
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "moe_intermediate_size": c.intermediate_size,
        "shared_expert_intermediate_size": 1,
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.n_kv_heads,
        "head_dim": c.head_dim(),
        "hidden_act": "silu",
        "max_position_embeddings": c.max_seq_len,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},
        "tie_word_embeddings": c.tie_embeddings,
        "use_sliding_window": true,
        "sliding_window": c.window,
        "max_window_layers": c.n_layers,
        "layer_types": vec!["sliding_attention"; c.n_layers],
        "decoder_sparse_step": 1,
        "mlp_only_layers": dense,
        "num_experts": c.n_experts,
        "num_experts_per_tok": c.experts_per_token.max(1),
        "norm_topk_prob": true,
        "qkv_bias": false,
        "attention_dropout": 0.0,
        "initializer_range": c.init_std,
        "router_aux_loss_coef": c.router_aux_loss_coef,
        "output_router_logits": false,
        "use_cache": true,
        "bos_token_id": EOS_ID,
        "eos_token_id": stop_ids(),
        "pad_token_id": PAD_ID,
        "torch_dtype": torch_dtype,
        "dtype": torch_dtype,
    })
}

fn generation_config() -> serde_json::Value {
    json!({
        "bos_token_id": EOS_ID,
        "eos_token_id": stop_ids(),
        "pad_token_id": PAD_ID,
        "do_sample": false,
    })
}

fn tokenizer_config(src: &SourceModel) -> serde_json::Value {
    let added: serde_json::Map<String, serde_json::Value> = SPECIAL_TOKENS
        .iter()
        .enumerate()
        .map(|(id, (_, text))| {
            (
                id.to_string(),
                json!({"content": text, "lstrip": false, "rstrip": false, "normalized": false,
                       "single_word": false, "special": true}),
            )
        })
        .collect();
    let extra: Vec<&str> = SPECIAL_TOKENS
        .iter()
        .filter(|(s, _)| !matches!(s, Special::Eos | Special::Pad | Special::EndOfTurn))
        .map(|(_, t)| *t)
        .collect();
    json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "bos_token": null,
        "eos_token": Special::EndOfTurn.text(),
        "pad_token": Special::Pad.text(),
        "unk_token": null,
        "additional_special_tokens": extra,
        "add_bos_token": false,
        "add_eos_token": false,
        "clean_up_tokenization_spaces": false,
        "model_max_length": src.config.max_seq_len,
        "chat_template": crate::chat_template::CHAT_TEMPLATE,
    })
}

/// Every tensor under Qwen2-MoE's names, in `dtype`.
fn hf_tensors(src: &SourceModel, dtype: DType) -> Result<HashMap<String, Tensor>> {
    let c = &src.config;
    let (h, hd, i) = (c.hidden_size, c.head_dim(), c.intermediate_size);
    let mut out = HashMap::new();
    let mut put = |name: String, t: Tensor| -> Result<()> {
        out.insert(name, t.to_dtype(dtype)?.contiguous()?);
        Ok(())
    };
    put(
        "model.embed_tokens.weight".into(),
        src.tensor("embed.weight", &[c.vocab_size, h])?.clone(),
    )?;
    put(
        "model.norm.weight".into(),
        src.tensor("final_norm.weight", &[h])?.clone(),
    )?;
    if !c.tie_embeddings {
        put(
            "lm_head.weight".into(),
            src.tensor("lm_head.weight", &[c.vocab_size, h])?.clone(),
        )?;
    }
    for l in 0..c.n_layers {
        let (ours, theirs) = (format!("layers.{l}"), format!("model.layers.{l}"));
        let get = |n: &str, shape: &[usize]| src.tensor(&format!("{ours}.{n}"), shape).cloned();
        put(
            format!("{theirs}.input_layernorm.weight"),
            get("attn_norm.weight", &[h])?,
        )?;
        put(
            format!("{theirs}.post_attention_layernorm.weight"),
            get("mlp_norm.weight", &[h])?,
        )?;
        let q = get("attn.q.weight", &[c.n_heads * hd, h])?;
        let k = get("attn.k.weight", &[c.n_kv_heads * hd, h])?;
        put(
            format!("{theirs}.self_attn.q_proj.weight"),
            interleaved_to_half_split(&q, c.n_heads, hd)?,
        )?;
        put(
            format!("{theirs}.self_attn.k_proj.weight"),
            interleaved_to_half_split(&k, c.n_kv_heads, hd)?,
        )?;
        put(
            format!("{theirs}.self_attn.v_proj.weight"),
            get("attn.v.weight", &[c.n_kv_heads * hd, h])?,
        )?;
        put(
            format!("{theirs}.self_attn.o_proj.weight"),
            get("attn.o.weight", &[h, c.n_heads * hd])?,
        )?;
        let swiglu = |from: &str, to: &str, put: &mut dyn FnMut(String, Tensor) -> Result<()>| {
            put(
                format!("{to}.gate_proj.weight"),
                get(&format!("{from}.gate.weight"), &[i, h])?,
            )?;
            put(
                format!("{to}.up_proj.weight"),
                get(&format!("{from}.up.weight"), &[i, h])?,
            )?;
            put(
                format!("{to}.down_proj.weight"),
                get(&format!("{from}.down.weight"), &[h, i])?,
            )
        };
        if c.is_moe_layer(l) {
            put(
                format!("{theirs}.mlp.gate.weight"),
                get("moe.router.weight", &[c.n_experts, h])?,
            )?;
            for e in 0..c.n_experts {
                swiglu(
                    &format!("moe.experts.{e}"),
                    &format!("{theirs}.mlp.experts.{e}"),
                    &mut put,
                )?;
            }
            // The shared expert Qwen2-MoE always adds, made exactly zero.
            let zeros = |shape: (usize, usize)| Tensor::zeros(shape, DType::F32, q.device());
            let sh = format!("{theirs}.mlp.shared_expert");
            put(format!("{sh}.gate_proj.weight"), zeros((1, h))?)?;
            put(format!("{sh}.up_proj.weight"), zeros((1, h))?)?;
            put(format!("{sh}.down_proj.weight"), zeros((h, 1))?)?;
            put(
                format!("{theirs}.mlp.shared_expert_gate.weight"),
                zeros((1, h))?,
            )?;
        } else {
            swiglu("mlp", &format!("{theirs}.mlp"), &mut put)?;
        }
    }
    Ok(out)
}
