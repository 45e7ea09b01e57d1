//! The model card (`README.md` of an export): what the model is, what it was trained on, how each
//! stage went and what its evals measured, as the run's ledger recorded them.

use crate::ExportDtype;
use crate::source::SourceModel;
use std::fmt::Write as _;

/// What the ledger says about the run an export comes from (filled in by the pipeline).
#[derive(Clone, Debug, Default)]
pub struct ModelCard {
    pub run: String,
    /// The training stage whose weights are exported.
    pub stage: String,
    /// The model preset of the run's config, if it named one.
    pub preset: Option<String>,
    /// The data the run read, one line per source (e.g. `prose: data/sample/prose.txt (612 KB)`).
    pub data: Vec<String>,
    /// The run's stages in order.
    pub stages: Vec<CardStage>,
    /// Evals of the exported stage and those before it.
    pub evals: Vec<CardEval>,
}

#[derive(Clone, Debug)]
pub struct CardStage {
    pub name: String,
    pub status: String,
    /// A short summary (steps, final loss, duration).
    pub summary: String,
}

#[derive(Clone, Debug)]
pub struct CardEval {
    pub stage: String,
    pub suite: String,
    pub metric: String,
    /// The stage's first value (before it trained, for stages that evaluate at step 0).
    pub before: Option<f64>,
    pub value: f64,
    /// Items the figure is over, when known.
    pub n: Option<i64>,
}

impl ModelCard {
    pub fn render(&self, src: &SourceModel, format: &str, dtype: ExportDtype) -> String {
        let c = &src.config;
        let p = c.param_counts();
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# TardBot — run `{}`, stage `{}`\n",
            self.run, self.stage
        );
        let _ = writeln!(
            s,
            "A Mixture-of-Experts decoder trained by the TardBot pipeline, exported as **{format}** ({}).\n",
            dtype.name()
        );
        let _ = writeln!(s, "## Model\n");
        let _ = writeln!(s, "| | |\n|---|---|");
        if let Some(preset) = &self.preset {
            let _ = writeln!(s, "| preset | `{preset}` |");
        }
        let rows = [
            (
                "parameters",
                format!(
                    "{:.2}M total, {:.2}M active per token",
                    p.total as f64 / 1e6,
                    p.active_per_token as f64 / 1e6
                ),
            ),
            (
                "layers",
                format!(
                    "{} ({} dense, {} MoE)",
                    c.n_layers,
                    c.n_layers - c.n_moe_layers(),
                    c.n_moe_layers()
                ),
            ),
            (
                "hidden / intermediate",
                format!("{} / {}", c.hidden_size, c.intermediate_size),
            ),
            (
                "attention",
                format!(
                    "{} heads, {} KV heads, head dim {}, sliding window {}",
                    c.n_heads,
                    c.n_kv_heads,
                    c.head_dim(),
                    c.window
                ),
            ),
            (
                "experts",
                format!("{} per MoE layer, top-{}", c.n_experts, c.experts_per_token),
            ),
            (
                "vocabulary",
                format!(
                    "{} (byte-level BPE, {} tokens in the tokenizer)",
                    c.vocab_size,
                    src.tokenizer.tokens.len()
                ),
            ),
            (
                "RoPE θ / RMSNorm ε",
                format!("{} / {}", c.rope_theta, c.rms_norm_eps),
            ),
            ("max sequence", c.max_seq_len.to_string()),
        ];
        for (k, v) in rows {
            let _ = writeln!(s, "| {k} | {v} |");
        }
        match format {
            "hf" => {
                let _ = writeln!(
                    s,
                    "\nLoaded as `Qwen2MoeForCausalLM` (no remote code): the dense first quarter as \
                     `mlp_only_layers`, a zero shared expert, every layer sliding-window attention, \
                     q/k rows permuted for half-split RoPE. It computes the same function as TardBot.\n\n\
                     ```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\
                     tok = AutoTokenizer.from_pretrained(path)\nmodel = AutoModelForCausalLM.from_pretrained(path)\n\
                     inputs = tok.apply_chat_template([{{\"role\": \"user\", \"content\": \"Hello\"}}], add_generation_prompt=True, return_tensors=\"pt\", return_dict=True)\n\
                     print(tok.decode(model.generate(**inputs, max_new_tokens=64)[0]))\n```"
                );
            }
            _ => {
                let _ = writeln!(
                    s,
                    "\nA llama.cpp `llama` model with Mixtral-style experts (dense layers as identical \
                     experts behind a zero router). llama.cpp has no sliding window for this \
                     architecture: with a context of at most **{} tokens** it computes TardBot \
                     exactly; past that, TardBot's attention forgets what left its window and \
                     llama.cpp's does not.",
                    c.window
                );
            }
        }
        if !self.data.is_empty() {
            let _ = writeln!(s, "\n## Data\n");
            for d in &self.data {
                let _ = writeln!(s, "- {d}");
            }
        }
        if !self.stages.is_empty() {
            let _ = writeln!(
                s,
                "\n## Stages\n\n| stage | status | summary |\n|---|---|---|"
            );
            for st in &self.stages {
                let _ = writeln!(s, "| {} | {} | {} |", st.name, st.status, st.summary);
            }
        }
        let _ = writeln!(s, "\n## Evals\n");
        if self.evals.is_empty() {
            let _ = writeln!(s, "No evals were recorded for this run.");
        } else {
            let _ = writeln!(
                s,
                "Held-out figures recorded by the run's stages (per suite and kind).\n"
            );
            let _ = writeln!(
                s,
                "| stage | suite | metric | value | n |\n|---|---|---|---|---|"
            );
            for e in &self.evals {
                let n = e.n.map_or(String::new(), |n| n.to_string());
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {:.4} | {n} |",
                    e.stage, e.suite, e.metric, e.value
                );
            }
        }
        let _ = writeln!(
            s,
            "\n## Chat format\n\n`<|system|>…<|end|><|user|>…<|end|><|assistant|><|think|>…<|/think|>…\
             <|tool_call|>{{\"arguments\":…,\"name\":…}}<|/tool_call|><|end|><|tool_result|>…<|end|>` — \
             the tokenizer's chat template renders it; generation stops at `<|end|>`."
        );
        s
    }
}
