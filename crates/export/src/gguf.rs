//! GGUF export for llama.cpp: one self-contained file (weights, tokenizer, chat template).
//!
//! **Architecture: `llama` with Mixtral-style experts.** It has TardBot's block (RMSNorm pre-norm,
//! GQA, SwiGLU) and GGML's "normal" RoPE rotates interleaved pairs exactly as TardBot does, so q/k
//! keep their layout. Its MoE is `softmax → top-k → renormalise`, TardBot's router. llama.cpp's
//! `llama` makes every layer MoE when `expert_count > 0`, so each dense layer of the first quarter is
//! written as `n_experts` copies of its MLP behind a zero router: the router's probabilities are
//! uniform, top-k picks k copies with weight 1/k each, and the sum is the dense MLP's output
//! (exactly for k = 2, where the weights are 0.5; within an ulp otherwise).
//!
//! **What differs: attention past the window.** llama.cpp's `llama` has no sliding window; its tokens
//! attend to the whole context. Up to `window` tokens of context the GGUF model computes TardBot
//! exactly; beyond, TardBot forgets what left its window and llama.cpp does not. (The GGUF records
//! `llama.context_length` = TardBot's `max_seq_len`; run it with a context of at most `window`
//! tokens to get TardBot's function.)
//!
//! Tensors: f32, f16 or q8_0 (GGML's blocks of 32 int8 weights with one f16 scale); norms and routers
//! stay f32, as llama.cpp's own converter keeps them.

use crate::card::ModelCard;
use crate::error::{ExportError, Result, output_err};
use crate::source::SourceModel;
use crate::{ExportDtype, staging};
use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Tensor};
use std::path::{Path, PathBuf};
use tardbot_tokens::special_tokens::{EOS_ID, PAD_ID, Special};

/// GGUF `general.file_type` values (llama.cpp's `llama_ftype`).
fn file_type(dtype: ExportDtype) -> u32 {
    match dtype {
        ExportDtype::F32 => 0,
        ExportDtype::F16 => 1,
        ExportDtype::Q8_0 => 7,
        ExportDtype::Bf16 => 32,
    }
}

/// GGUF `tokenizer.ggml.token_type` values.
const TOKEN_NORMAL: i32 = 1;
const TOKEN_CONTROL: i32 = 3;
const TOKEN_UNUSED: i32 = 5;

/// Writes `out/model.gguf` (and the model card) into `out`, which must not exist yet.
pub fn write_gguf(
    src: &SourceModel,
    card: &ModelCard,
    dtype: ExportDtype,
    out: &Path,
) -> Result<Vec<PathBuf>> {
    let weight_type = match dtype {
        ExportDtype::F32 => GgmlDType::F32,
        ExportDtype::F16 => GgmlDType::F16,
        ExportDtype::Q8_0 => GgmlDType::Q8_0,
        ExportDtype::Bf16 => {
            return Err(ExportError::Unsupported {
                format: "gguf",
                reason: "bf16 GGUF is not written; use f32, f16 or q8_0".into(),
            });
        }
    };
    if src.tokenizer.merges.is_empty() {
        return Err(ExportError::Unsupported {
            format: "gguf",
            reason: format!(
                "{} has no BPE merges; llama.cpp's BPE tokenizer needs at least one",
                src.tokenizer.path.display()
            ),
        });
    }
    let tensors = gguf_tensors(src, weight_type)?;
    let metadata = metadata(src, card, dtype);
    let mut stage = staging::Dir::new(out)?;
    let path = stage.path().join("model.gguf");
    let file = std::fs::File::create(&path).map_err(|e| output_err(&path, e))?;
    let mut w = std::io::BufWriter::new(file);
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    candle_core::quantized::gguf_file::write(&mut w, &md, &ts).map_err(|e| output_err(&path, e))?;
    std::io::Write::flush(&mut w).map_err(|e| output_err(&path, e))?;
    drop(w);
    stage.add("model.gguf");
    stage.write_bytes("README.md", card.render(src, "gguf", dtype).as_bytes())?;
    stage.finish()
}

fn metadata(src: &SourceModel, card: &ModelCard, dtype: ExportDtype) -> Vec<(String, Value)> {
    let c = &src.config;
    let u32v = |x: usize| Value::U32(x as u32);
    let mut m: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String("llama".into())),
        (
            "general.name".into(),
            Value::String(format!("TardBot {} ({})", card.run, card.stage)),
        ),
        ("general.file_type".into(), Value::U32(file_type(dtype))),
        ("general.quantization_version".into(), Value::U32(2)),
        ("llama.vocab_size".into(), u32v(c.vocab_size)),
        ("llama.context_length".into(), u32v(c.max_seq_len)),
        ("llama.embedding_length".into(), u32v(c.hidden_size)),
        ("llama.block_count".into(), u32v(c.n_layers)),
        (
            "llama.feed_forward_length".into(),
            u32v(c.intermediate_size),
        ),
        ("llama.rope.dimension_count".into(), u32v(c.head_dim())),
        ("llama.attention.head_count".into(), u32v(c.n_heads)),
        ("llama.attention.head_count_kv".into(), u32v(c.n_kv_heads)),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Value::F32(c.rms_norm_eps as f32),
        ),
        (
            "llama.rope.freq_base".into(),
            Value::F32(c.rope_theta as f32),
        ),
    ];
    if c.n_experts > 0 {
        m.push(("llama.expert_count".into(), u32v(c.n_experts)));
        m.push(("llama.expert_used_count".into(), u32v(c.experts_per_token)));
    }
    // The token list covers every embedding row: rows past the tokenizer's vocabulary (padding to a
    // multiple of 64) become unused tokens, as llama.cpp's own converter writes them.
    let tok = &src.tokenizer;
    let mut tokens: Vec<Value> = tok
        .tokens
        .iter()
        .map(|t| Value::String(t.clone()))
        .collect();
    let mut types: Vec<Value> = (0..tok.tokens.len() as u32)
        .map(|id| {
            Value::I32(if tok.special_ids.contains(&id) {
                TOKEN_CONTROL
            } else {
                TOKEN_NORMAL
            })
        })
        .collect();
    for i in tok.tokens.len()..c.vocab_size {
        tokens.push(Value::String(format!("<|unused_{i}|>")));
        types.push(Value::I32(TOKEN_UNUSED));
    }
    m.extend([
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("gpt-2".into())),
        ("tokenizer.ggml.tokens".into(), Value::Array(tokens)),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        (
            "tokenizer.ggml.merges".into(),
            Value::Array(
                tok.merges
                    .iter()
                    .map(|s| Value::String(s.clone()))
                    .collect(),
            ),
        ),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(EOS_ID)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(EOS_ID)),
        (
            "tokenizer.ggml.eot_token_id".into(),
            Value::U32(Special::EndOfTurn.id()),
        ),
        ("tokenizer.ggml.padding_token_id".into(), Value::U32(PAD_ID)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
        ("tokenizer.ggml.add_eos_token".into(), Value::Bool(false)),
        (
            "tokenizer.chat_template".into(),
            Value::String(crate::chat_template::CHAT_TEMPLATE.into()),
        ),
    ]);
    m
}

/// `t` as a GGUF tensor of `dtype`; a q8_0 request for a row length that is not a multiple of 32 is
/// refused, naming the tensor.
fn q(name: &str, t: &Tensor, dtype: GgmlDType) -> Result<QTensor> {
    if dtype == GgmlDType::Q8_0 {
        let row = t.dims().last().copied().unwrap_or(0);
        if !row.is_multiple_of(32) {
            return Err(ExportError::Unsupported {
                format: "gguf",
                reason: format!(
                    "q8_0 needs rows of a multiple of 32 values; `{name}` has rows of {row}: export f16 or f32"
                ),
            });
        }
    }
    Ok(QTensor::quantize(
        &t.to_dtype(DType::F32)?.contiguous()?,
        dtype,
    )?)
}

fn gguf_tensors(src: &SourceModel, wt: GgmlDType) -> Result<Vec<(String, QTensor)>> {
    let c = &src.config;
    let (h, hd, i, e) = (
        c.hidden_size,
        c.head_dim(),
        c.intermediate_size,
        c.n_experts,
    );
    let f32t = GgmlDType::F32;
    let mut out = Vec::new();
    let mut put = |name: String, t: &Tensor, dtype: GgmlDType| -> Result<()> {
        let qt = q(&name, t, dtype)?;
        out.push((name, qt));
        Ok(())
    };
    put(
        "token_embd.weight".into(),
        src.tensor("embed.weight", &[c.vocab_size, h])?,
        wt,
    )?;
    put(
        "output_norm.weight".into(),
        src.tensor("final_norm.weight", &[h])?,
        f32t,
    )?;
    if !c.tie_embeddings {
        put(
            "output.weight".into(),
            src.tensor("lm_head.weight", &[c.vocab_size, h])?,
            wt,
        )?;
    }
    for l in 0..c.n_layers {
        let (ours, blk) = (format!("layers.{l}"), format!("blk.{l}"));
        let get = |n: &str, shape: &[usize]| src.tensor(&format!("{ours}.{n}"), shape);
        put(
            format!("{blk}.attn_norm.weight"),
            get("attn_norm.weight", &[h])?,
            f32t,
        )?;
        put(
            format!("{blk}.ffn_norm.weight"),
            get("mlp_norm.weight", &[h])?,
            f32t,
        )?;
        put(
            format!("{blk}.attn_q.weight"),
            get("attn.q.weight", &[c.n_heads * hd, h])?,
            wt,
        )?;
        put(
            format!("{blk}.attn_k.weight"),
            get("attn.k.weight", &[c.n_kv_heads * hd, h])?,
            wt,
        )?;
        put(
            format!("{blk}.attn_v.weight"),
            get("attn.v.weight", &[c.n_kv_heads * hd, h])?,
            wt,
        )?;
        put(
            format!("{blk}.attn_output.weight"),
            get("attn.o.weight", &[h, c.n_heads * hd])?,
            wt,
        )?;
        // Per expert (gate, up, down); a dense layer repeats its MLP as every expert.
        let mlps: Vec<[&Tensor; 3]> = if c.is_moe_layer(l) {
            (0..e)
                .map(|x| {
                    let p = format!("moe.experts.{x}");
                    Ok([
                        get(&format!("{p}.gate.weight"), &[i, h])?,
                        get(&format!("{p}.up.weight"), &[i, h])?,
                        get(&format!("{p}.down.weight"), &[h, i])?,
                    ])
                })
                .collect::<Result<_>>()?
        } else {
            let dense = [
                get("mlp.gate.weight", &[i, h])?,
                get("mlp.up.weight", &[i, h])?,
                get("mlp.down.weight", &[h, i])?,
            ];
            vec![dense; e.max(1)]
        };
        if e == 0 {
            let [g, u, d] = mlps[0];
            put(format!("{blk}.ffn_gate.weight"), g, wt)?;
            put(format!("{blk}.ffn_up.weight"), u, wt)?;
            put(format!("{blk}.ffn_down.weight"), d, wt)?;
            continue;
        }
        let router = if c.is_moe_layer(l) {
            get("moe.router.weight", &[e, h])?.clone()
        } else {
            Tensor::zeros((e, h), DType::F32, &candle_core::Device::Cpu)?
        };
        put(format!("{blk}.ffn_gate_inp.weight"), &router, f32t)?;
        for (k, name) in ["ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"]
            .iter()
            .enumerate()
        {
            let parts: Vec<&Tensor> = mlps.iter().map(|m| m[k]).collect();
            put(
                format!("{blk}.{name}.weight"),
                &Tensor::stack(&parts, 0)?,
                wt,
            )?;
        }
    }
    Ok(out)
}
