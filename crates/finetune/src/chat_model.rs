//! A trained model with its tokenizer, answering conversations: the one generation path used by the
//! task evals, `tardbot-pipeline generate`, `chat` and `eval`.

use candle_core::{DType, Device};
use std::path::Path;
use tardbot_core::ModelConfig;
use tardbot_model::{GenerateConfig, SamplingParams, TardBot, generate, load_model};
use tardbot_tokens::LoadedTokenizer;
use tardbot_tokens::chat::{Conversation, render_chat};
use tardbot_tokens::special_tokens::{EOS_ID, Special};

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// A published model (`model.safetensors` + `model.json`) and the tokenizer it was trained with.
pub struct ChatModel {
    pub model: TardBot,
    pub tokenizer: LoadedTokenizer,
}

impl ChatModel {
    /// Loads the weights and their configuration (f32, CPU).
    pub fn load(weights: &Path, model_json: &Path, tokenizer: &Path) -> Result<ChatModel, Error> {
        let cfg_bytes = std::fs::read(model_json)
            .map_err(|e| format!("reading model config {}: {e}", model_json.display()))?;
        let cfg = ModelConfig::from_json(&cfg_bytes)
            .map_err(|e| format!("model config {}: {e}", model_json.display()))?;
        let (model, _) = load_model(&cfg, weights, DType::F32, &Device::Cpu)?;
        let tokenizer = tardbot_tokens::tokenizer::load_tokenizer(tokenizer)?;
        Ok(ChatModel { model, tokenizer })
    }
}

/// Generates the assistant's next turn after `prompt` and returns it as text, special tokens
/// written out (`<|tool_call|>…`), without the closing `<|end|>`. Greedy when `temperature` is 0.
/// `on_text` sees the text as it grows (streaming); returning false stops.
pub fn respond(
    model: &TardBot,
    tokenizer: &LoadedTokenizer,
    prompt: &Conversation,
    max_new_tokens: usize,
    sampling: SamplingParams,
    on_text: &mut dyn FnMut(&str) -> bool,
) -> Result<String, Error> {
    let rendered = render_chat(tokenizer, prompt, true)?;
    let cfg = GenerateConfig {
        max_new_tokens,
        stop_tokens: vec![Special::EndOfTurn.id(), EOS_ID],
        sampling,
    };
    let mut ids: Vec<u32> = Vec::new();
    let mut shown = 0;
    let mut failed = None;
    let generation = generate(model, &rendered.tokens, &cfg, &mut |t| {
        if t == Special::EndOfTurn.id() || t == EOS_ID {
            return true;
        }
        ids.push(t);
        match tokenizer.decode(&ids) {
            // Byte-level BPE: a partial UTF-8 sequence decodes to U+FFFD until it completes.
            Ok(text) if !text.ends_with('\u{FFFD}') => {
                let keep = on_text(&text[shown.min(text.len())..]);
                shown = text.len();
                keep
            }
            Ok(_) => true,
            Err(e) => {
                failed = Some(e);
                false
            }
        }
    })?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    let mut tokens = generation.tokens;
    if matches!(tokens.last(), Some(&t) if t == Special::EndOfTurn.id() || t == EOS_ID) {
        tokens.pop();
    }
    Ok(tokenizer.decode(&tokens)?)
}

/// Greedy decoding (deterministic): what every task eval uses.
pub fn greedy() -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        seed: 0,
    }
}
