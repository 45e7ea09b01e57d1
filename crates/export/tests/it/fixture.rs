//! A model to export: a preset with seeded random weights (norms randomised too, so that swapping two
//! norms in the export would show), saved as a training stage saves it, and a small BPE tokenizer
//! trained on the bundled prose sample.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tardbot_core::ModelConfig;
use tardbot_export::{ModelCard, SourceModel};
use tardbot_model::{TardBot, init_weights, named_vars, save_safetensors};
use tardbot_tokenize::train_tokenizer::{TrainOptions, train_bpe};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn prose() -> String {
    std::fs::read_to_string(repo_root().join("data/sample/prose.txt"))
        .expect("bundled prose sample")
}

/// A 1,000-token tokenizer (fewer tokens than any preset's vocabulary: the exports pad), trained once.
pub fn tokenizer() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = prose();
        let docs: Vec<&str> = text.split("\n\n").collect();
        let opts = TrainOptions {
            vocab_size: 1000,
            min_frequency: 2,
            max_training_bytes: 1 << 30,
            seed: 1,
        };
        train_bpe(docs.into_iter(), &opts, &dir.path().join("tokenizer.json")).expect("train");
        dir
    });
    Box::leak(dir.path().join("tokenizer.json").into_boxed_path())
}

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub cfg: ModelConfig,
    pub model: TardBot,
    pub weights: PathBuf,
    pub model_json: PathBuf,
}

impl Fixture {
    pub fn new(cfg: ModelConfig, seed: u64) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let vm = VarMap::new();
        let model = TardBot::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu))
            .expect("model");
        init_weights(&vm, &cfg, seed).expect("init");
        let mut rng = tardbot_core::rng::SplitMix64::new(seed ^ 0x5eed);
        for (name, var) in named_vars(&vm) {
            if name.ends_with("norm.weight") {
                let v: Vec<f32> = (0..var.elem_count())
                    .map(|_| (1.0 + 0.3 * rng.normal()) as f32)
                    .collect();
                var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).expect("t"))
                    .expect("set");
            }
        }
        let weights = dir.path().join("model.safetensors");
        save_safetensors(&vm, None, &weights).expect("save");
        let model_json = dir.path().join("model.json");
        std::fs::write(&model_json, serde_json::to_vec_pretty(&cfg).expect("json")).expect("write");
        Fixture {
            dir,
            cfg,
            model,
            weights,
            model_json,
        }
    }

    pub fn preset(name: &str, seed: u64) -> Fixture {
        Fixture::new(ModelConfig::from_preset(name).expect("preset"), seed)
    }

    pub fn source(&self) -> SourceModel {
        SourceModel::load(&self.weights, &self.model_json, tokenizer()).expect("source")
    }

    pub fn card(&self) -> ModelCard {
        ModelCard {
            run: "test-run".into(),
            stage: "pretrain".into(),
            preset: None,
            ..ModelCard::default()
        }
    }
}
