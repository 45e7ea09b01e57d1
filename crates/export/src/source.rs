//! What an export reads: a training stage's `model.safetensors` + `model.json` and the run's
//! `tokenizer.json`, checked against each other.

use crate::error::{Result, input_err};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tardbot_core::ModelConfig;
use tardbot_tokens::special_tokens::SPECIAL_TOKENS;

/// A trained model in TardBot's own names (`layers.3.moe.experts.1.gate.weight`), f32 on the CPU.
pub struct SourceModel {
    pub config: ModelConfig,
    pub weights_path: PathBuf,
    tensors: HashMap<String, Tensor>,
    pub tokenizer: TokenizerFile,
}

/// `tokenizer.json` as the exports need it: the file itself (copied verbatim to Hugging Face) and its
/// vocabulary and merges (written into GGUF metadata).
pub struct TokenizerFile {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
    /// Token text by id (byte-level strings as in the file, e.g. `Ġthe`).
    pub tokens: Vec<String>,
    /// Ids of the added (special) tokens.
    pub special_ids: Vec<u32>,
    /// BPE merges as `"left right"`, in rank order.
    pub merges: Vec<String>,
}

impl SourceModel {
    pub fn load(weights: &Path, model_json: &Path, tokenizer: &Path) -> Result<SourceModel> {
        let cfg_bytes = std::fs::read(model_json).map_err(|e| input_err(model_json, e))?;
        let config = ModelConfig::from_json(&cfg_bytes).map_err(|e| input_err(model_json, e))?;
        config.validate().map_err(|e| input_err(model_json, e))?;
        let tensors = candle_core::safetensors::load(weights, &Device::Cpu)
            .map_err(|e| input_err(weights, e))?
            .into_iter()
            .map(|(k, v)| Ok((k, v.to_dtype(DType::F32)?)))
            .collect::<Result<HashMap<_, _>>>()?;
        let tokenizer = TokenizerFile::load(tokenizer)?;
        let src = SourceModel {
            config,
            weights_path: weights.to_path_buf(),
            tensors,
            tokenizer,
        };
        src.check()?;
        Ok(src)
    }

    /// A tensor by its TardBot name, with the shape the config implies checked.
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<&Tensor> {
        let t = self.tensors.get(name).ok_or_else(|| {
            input_err(
                &self.weights_path,
                format!("missing tensor `{name}` (not a TardBot checkpoint of this model.json?)"),
            )
        })?;
        if t.dims() != shape {
            return Err(input_err(
                &self.weights_path,
                format!(
                    "`{name}` has shape {:?}, model.json implies {shape:?}",
                    t.dims()
                ),
            ));
        }
        Ok(t)
    }

    /// Every tensor the config implies is present, and nothing else is.
    fn check(&self) -> Result<()> {
        let c = &self.config;
        if !c.head_dim().is_multiple_of(2) || c.head_dim() * c.n_heads != c.hidden_size {
            return Err(crate::ExportError::Unsupported {
                format: "hf or gguf",
                reason: format!(
                    "head_dim {} (hidden_size {} / n_heads {}) must be even and divide hidden_size: \
                     RoPE rotates pairs of dimensions",
                    c.head_dim(),
                    c.hidden_size,
                    c.n_heads
                ),
            });
        }
        // The model crate's own names; shapes are checked where each tensor is read ([`Self::tensor`]).
        let names = tardbot_model::TardBot::param_names(c);
        if let Some(missing) = names.iter().find(|n| !self.tensors.contains_key(*n)) {
            return Err(input_err(
                &self.weights_path,
                format!(
                    "missing tensor `{missing}` (not a TardBot checkpoint of this model.json?)"
                ),
            ));
        }
        if let Some(extra) = self
            .tensors
            .keys()
            .filter(|k| names.binary_search(k).is_err())
            .min()
        {
            return Err(input_err(
                &self.weights_path,
                format!("unexpected tensor `{extra}` (another model configuration?)"),
            ));
        }
        let n_tok = self.tokenizer.tokens.len();
        if n_tok > c.vocab_size {
            return Err(input_err(
                &self.tokenizer.path,
                format!(
                    "the tokenizer has {n_tok} tokens but the model's vocabulary only {}; \
                     export the tokenizer this model was trained with",
                    c.vocab_size
                ),
            ));
        }
        Ok(())
    }
}

impl TokenizerFile {
    pub fn load(path: &Path) -> Result<TokenizerFile> {
        let bytes = std::fs::read(path).map_err(|e| input_err(path, e))?;
        let json: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| input_err(path, e))?;
        let model = &json["model"];
        if model["type"] != "BPE" {
            return Err(input_err(
                path,
                format!("model.type is {}, expected \"BPE\"", model["type"]),
            ));
        }
        let vocab = model["vocab"]
            .as_object()
            .ok_or_else(|| input_err(path, "model.vocab is not an object"))?;
        let mut by_id: Vec<Option<String>> = Vec::new();
        let mut put = |text: &str, id: u64| {
            let id = id as usize;
            if by_id.len() <= id {
                by_id.resize(id + 1, None);
            }
            by_id[id] = Some(text.to_string());
        };
        for (text, id) in vocab {
            let id = id
                .as_u64()
                .ok_or_else(|| input_err(path, format!("model.vocab[{text:?}] is not an id")))?;
            put(text, id);
        }
        let mut special_ids = Vec::new();
        for t in json["added_tokens"].as_array().into_iter().flatten() {
            let (Some(id), Some(text)) = (t["id"].as_u64(), t["content"].as_str()) else {
                return Err(input_err(path, "an added_tokens entry lacks id or content"));
            };
            put(text, id);
            special_ids.push(id as u32);
        }
        let tokens = by_id
            .into_iter()
            .enumerate()
            .map(|(id, t)| t.ok_or_else(|| input_err(path, format!("no token has id {id}"))))
            .collect::<Result<Vec<_>>>()?;
        for (i, (_, text)) in SPECIAL_TOKENS.iter().enumerate() {
            if tokens.get(i).map(String::as_str) != Some(*text) {
                return Err(input_err(
                    path,
                    format!("special token {text} should have id {i}; not a TardBot tokenizer"),
                ));
            }
        }
        // tokenizers writes merges as ["a", "b"] pairs (0.20+) or as "a b" strings (older files).
        let merges = model["merges"]
            .as_array()
            .ok_or_else(|| input_err(path, "model.merges is not an array"))?
            .iter()
            .map(|m| match m {
                serde_json::Value::String(s) => Ok(s.clone()),
                serde_json::Value::Array(p) => match (p.first(), p.get(1)) {
                    (Some(serde_json::Value::String(a)), Some(serde_json::Value::String(b))) => {
                        Ok(format!("{a} {b}"))
                    }
                    _ => Err(input_err(path, format!("malformed merge {m}"))),
                },
                _ => Err(input_err(path, format!("malformed merge {m}"))),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(TokenizerFile {
            path: path.to_path_buf(),
            bytes,
            tokens,
            special_ids,
            merges,
        })
    }
}
