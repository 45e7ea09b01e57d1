//! Exports read back without Python: names, shapes, configs, metadata, the tensors' values, and the
//! refusals.

use crate::fixture::{Fixture, tokenizer};
use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use tardbot_core::ModelConfig;
use tardbot_export::{CHAT_TEMPLATE, ExportDtype, ExportError, Format, SourceModel, export};

fn read_json(p: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).expect("read")).expect("json")
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("diff")
}

#[test]
fn hf_export_has_qwen2_moe_names_config_and_permuted_qk() {
    let fx = Fixture::preset("tiny", 3);
    let src = fx.source();
    let out = fx.dir.path().join("hf");
    let files = export(&src, &fx.card(), Format::Hf, ExportDtype::F32, &out).expect("export");
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in [
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "README.md",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    let cfg = read_json(&out.join("config.json"));
    assert_eq!(cfg["architectures"][0], "Qwen2MoeForCausalLM");
    assert_eq!(cfg["mlp_only_layers"], serde_json::json!([0]));
    assert_eq!(cfg["sliding_window"], 128);
    assert_eq!(cfg["layer_types"].as_array().unwrap().len(), 4);
    assert!(
        cfg["layer_types"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t == "sliding_attention")
    );
    assert_eq!(cfg["norm_topk_prob"], true);
    assert_eq!(cfg["tie_word_embeddings"], true);
    let tc = read_json(&out.join("tokenizer_config.json"));
    assert_eq!(tc["chat_template"], CHAT_TEMPLATE);
    assert_eq!(tc["eos_token"], "<|end|>");
    let st = candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
    // 4 layers × (2 norms + 4 attention) + 1 dense MLP (3) + 3 MoE layers × (router + 4 experts × 3
    // + shared expert 3 + its gate) + embedding + final norm.
    assert_eq!(
        st.len(),
        4 * 6 + 3 + 3 * (1 + 12 + 4) + 2,
        "{:?}",
        st.keys()
    );
    assert!(st.contains_key("model.layers.0.mlp.gate_proj.weight"));
    assert!(st.contains_key("model.layers.1.mlp.experts.3.down_proj.weight"));
    let ours = candle_core::safetensors::load(&fx.weights, &Device::Cpu).unwrap();
    let same = |a: &str, b: &str| max_abs_diff(&st[a], &ours[b]) == 0.0;
    assert!(same(
        "model.layers.2.input_layernorm.weight",
        "layers.2.attn_norm.weight"
    ));
    assert!(same(
        "model.layers.2.post_attention_layernorm.weight",
        "layers.2.mlp_norm.weight"
    ));
    assert!(same(
        "model.layers.3.mlp.gate.weight",
        "layers.3.moe.router.weight"
    ));
    assert!(same(
        "model.layers.3.self_attn.v_proj.weight",
        "layers.3.attn.v.weight"
    ));
    assert!(!same(
        "model.layers.3.self_attn.q_proj.weight",
        "layers.3.attn.q.weight"
    ));
    // Head 1 of k (head_dim 32): new row 1 is old row 2, new row 16 is old row 1.
    let (k_new, k_old) = (
        &st["model.layers.1.self_attn.k_proj.weight"],
        &ours["layers.1.attn.k.weight"],
    );
    for (new, old) in [(32 + 1, 32 + 2), (32 + 16, 32 + 1), (32 + 31, 32 + 31)] {
        assert_eq!(
            max_abs_diff(&k_new.get(new).unwrap(), &k_old.get(old).unwrap()),
            0.0
        );
    }
    let shared = &st["model.layers.1.mlp.shared_expert.down_proj.weight"];
    assert_eq!(
        shared
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap(),
        0.0
    );
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(
        card.contains("test-run") && card.contains("Qwen2MoeForCausalLM"),
        "{card}"
    );
}

#[test]
fn hf_export_in_half_precision_rounds_the_weights() {
    let fx = Fixture::preset("tiny", 4);
    let out = fx.dir.path().join("hf16");
    export(
        &fx.source(),
        &fx.card(),
        Format::Hf,
        ExportDtype::Bf16,
        &out,
    )
    .expect("export");
    let st = candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
    let e = &st["model.embed_tokens.weight"];
    assert_eq!(e.dtype(), candle_core::DType::BF16);
    assert_eq!(
        read_json(&out.join("config.json"))["torch_dtype"],
        "bfloat16"
    );
}

fn gguf_tensor(content: &gguf_file::Content, file: &mut std::fs::File, name: &str) -> Tensor {
    content
        .tensor(file, name, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .dequantize(&Device::Cpu)
        .unwrap()
}

#[test]
fn gguf_export_holds_llama_moe_with_dense_layers_as_identical_experts() {
    let fx = Fixture::preset("tiny", 5);
    let out = fx.dir.path().join("gguf");
    export(
        &fx.source(),
        &fx.card(),
        Format::Gguf,
        ExportDtype::F32,
        &out,
    )
    .expect("export");
    let path = out.join("model.gguf");
    let mut f = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap();
    let md = &content.metadata;
    assert_eq!(md["general.architecture"].to_string().unwrap(), "llama");
    assert_eq!(md["llama.expert_count"].to_u32().unwrap(), 4);
    assert_eq!(md["llama.expert_used_count"].to_u32().unwrap(), 2);
    assert_eq!(md["llama.rope.dimension_count"].to_u32().unwrap(), 32);
    let tokens = md["tokenizer.ggml.tokens"].to_vec().unwrap();
    assert_eq!(tokens.len(), 4096, "padded to the embedding's rows");
    assert_eq!(tokens[6].to_string().unwrap(), "<|end|>");
    assert_eq!(md["tokenizer.ggml.eot_token_id"].to_u32().unwrap(), 6);
    assert_eq!(
        md["tokenizer.chat_template"].to_string().unwrap(),
        CHAT_TEMPLATE
    );
    let ours = candle_core::safetensors::load(&fx.weights, &Device::Cpu).unwrap();
    // Layer 0 is dense: every expert is its MLP, the router is zero.
    let gate = gguf_tensor(&content, &mut f, "blk.0.ffn_gate_exps.weight");
    assert_eq!(gate.dims(), &[4, 512, 128]);
    for e in 0..4 {
        assert_eq!(
            max_abs_diff(&gate.get(e).unwrap(), &ours["layers.0.mlp.gate.weight"]),
            0.0
        );
    }
    let router = gguf_tensor(&content, &mut f, "blk.0.ffn_gate_inp.weight");
    assert_eq!(
        router
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap(),
        0.0
    );
    // Layer 2 is MoE: expert e of the stack is expert e; q keeps TardBot's interleaved layout.
    let down = gguf_tensor(&content, &mut f, "blk.2.ffn_down_exps.weight");
    assert_eq!(
        max_abs_diff(
            &down.get(3).unwrap(),
            &ours["layers.2.moe.experts.3.down.weight"]
        ),
        0.0
    );
    let q = gguf_tensor(&content, &mut f, "blk.2.attn_q.weight");
    assert_eq!(max_abs_diff(&q, &ours["layers.2.attn.q.weight"]), 0.0);
}

#[test]
fn gguf_q8_0_holds_blocks_within_half_a_step() {
    let fx = Fixture::preset("tiny", 6);
    let out = fx.dir.path().join("q8");
    export(
        &fx.source(),
        &fx.card(),
        Format::Gguf,
        ExportDtype::Q8_0,
        &out,
    )
    .expect("export");
    let mut f = std::fs::File::open(out.join("model.gguf")).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap();
    assert_eq!(content.metadata["general.file_type"].to_u32().unwrap(), 7);
    let qt = content
        .tensor(&mut f, "blk.1.attn_k.weight", &Device::Cpu)
        .unwrap();
    assert_eq!(qt.dtype(), candle_core::quantized::GgmlDType::Q8_0);
    let norm = content
        .tensor(&mut f, "blk.1.attn_norm.weight", &Device::Cpu)
        .unwrap();
    assert_eq!(
        norm.dtype(),
        candle_core::quantized::GgmlDType::F32,
        "norms stay f32"
    );
    let back = qt
        .dequantize(&Device::Cpu)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let ours = candle_core::safetensors::load(&fx.weights, &Device::Cpu).unwrap();
    let orig = ours["layers.1.attn.k.weight"].to_vec2::<f32>().unwrap();
    for (r, (a, b)) in back.iter().zip(&orig).enumerate() {
        for (blk, (qa, ob)) in a.chunks(32).zip(b.chunks(32)).enumerate() {
            let amax = ob.iter().fold(0f32, |m, x| m.max(x.abs()));
            let step = amax / 127.0;
            for (x, y) in qa.iter().zip(ob) {
                // Half a quantisation step, plus the f16 rounding of the block's scale.
                assert!(
                    (x - y).abs() <= 0.5 * step + amax * 1e-3,
                    "row {r} block {blk}: {x} vs {y}"
                );
            }
        }
    }
}

#[test]
fn exports_refuse_what_they_cannot_express_and_leave_nothing_behind() {
    let fx = Fixture::preset("tiny", 7);
    let src = fx.source();
    let out = fx.dir.path().join("refused");
    let err = export(&src, &fx.card(), Format::Hf, ExportDtype::Q8_0, &out).unwrap_err();
    assert!(
        matches!(err, ExportError::Unsupported { format: "hf", .. }),
        "{err}"
    );
    assert!(!out.exists());
    // Rows of 16 values cannot form q8_0 blocks of 32: refused, naming a tensor.
    let narrow = Fixture::new(
        ModelConfig {
            vocab_size: 1024,
            ..ModelConfig::from_preset("micro").unwrap()
        },
        8,
    );
    let err = export(
        &narrow.source(),
        &narrow.card(),
        Format::Gguf,
        ExportDtype::Q8_0,
        &out,
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("q8_0") && msg.contains("token_embd.weight") && msg.contains("16"),
        "{msg}"
    );
    assert!(!out.exists());
    let leftovers: Vec<_> = std::fs::read_dir(fx.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // An existing destination is never overwritten.
    std::fs::create_dir(&out).unwrap();
    let err = export(&src, &fx.card(), Format::Gguf, ExportDtype::F32, &out).unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
}

#[test]
fn bad_inputs_name_the_file_and_the_problem() {
    // A tokenizer larger than the model's vocabulary belongs to another model.
    let micro = Fixture::preset("micro", 9);
    let err = SourceModel::load(&micro.weights, &micro.model_json, tokenizer())
        .err()
        .expect("refused");
    let msg = err.to_string();
    assert!(
        msg.contains("tokenizer.json") && msg.contains("1000 tokens"),
        "{msg}"
    );
    // A checkpoint missing a tensor.
    let fx = Fixture::preset("tiny", 10);
    let mut st = candle_core::safetensors::load(&fx.weights, &Device::Cpu).unwrap();
    st.remove("layers.2.moe.router.weight");
    let st: HashMap<String, Tensor> = st;
    candle_core::safetensors::save(&st, &fx.weights).unwrap();
    let err = SourceModel::load(&fx.weights, &fx.model_json, tokenizer())
        .err()
        .expect("refused");
    let msg = err.to_string();
    assert!(
        msg.contains("model.safetensors") && msg.contains("layers.2.moe.router.weight"),
        "{msg}"
    );
}
