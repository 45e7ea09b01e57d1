//! The fine-tuning recipe every chat stage runs: build data, start from the upstream model, train on
//! assistant tokens only, evaluate before and after, publish.
//!
//! 1. Inputs: the tokenizer and the upstream stage's `model` + `model-config`.
//! 2. Data: the stage's examples split train/val by a hash of their id, written as JSONL artifacts,
//!    rendered through the one chat template (loss mask on assistant tokens) and packed into token
//!    shards (artifacts too). Conversations longer than a window are left out and counted, since a
//!    cropped example would train on a prompt without its answer.
//! 3. Trainer from the upstream weights; on resume, weights, moments, step and loader cursor from
//!    the newest checkpoint (the data is rebuilt deterministically, and the loader checks it is the
//!    same data by content).
//! 4. Evals at step 0 (before the stage), every `eval_every` steps (held-out loss) and at the end
//!    (held-out loss and the stage's task eval: greedy generation on held-out prompts, scored).
//! 5. Publish `model.safetensors` + `model.json` for the next stage.

use crate::chat_model::{greedy, respond};
use crate::example::{ChatExample, is_validation, write_jsonl};
use crate::settings::TaskEvalConfig;
use crate::task::{ChatTask, TaskInputs};
use std::path::{Path, PathBuf};
use tardbot_core::ModelConfig;
use tardbot_core::config::TrainConfig;
use tardbot_stage::{StageContext, StageError, StageOutput};
use tardbot_tokens::LoadedTokenizer;
use tardbot_tokens::chat::{RenderedChat, render_chat, write_chat_shard};
use tardbot_tokens::loader::{Loader, LoaderConfig};
use tardbot_tokens::shard::TokenShard;
use tardbot_train::{Trainer, fixed_batches};
use tardbot_train_stage::{record_val_loss, restore, train_loop};
use tracing::info;

/// The file of the upstream artifact of `kind` produced by `stage`.
pub fn input_file(ctx: &StageContext, stage: &str, kind: &str) -> Result<PathBuf, StageError> {
    ctx.input(stage)
        .iter()
        .find(|a| a.kind == kind)
        .map(|a| PathBuf::from(&a.path))
        .ok_or_else(|| {
            StageError::failed(format!(
                "the `{stage}` stage recorded no `{kind}` artifact; re-run it (`--force {stage}`)"
            ))
        })
}

pub fn run(ctx: &StageContext, task: &dyn ChatTask) -> Result<StageOutput, StageError> {
    let settings = task.settings(&ctx.config).map_err(StageError::failed)?;
    let cfg = &settings.train;
    let seed = ctx.config.seed;
    let upstream = task.upstream();

    // 1. Inputs.
    let tokenizer =
        tardbot_tokens::tokenizer::load_tokenizer(&input_file(ctx, "tokenizer", "tokenizer")?)
            .map_err(StageError::failed)?;
    let weights = input_file(ctx, upstream, "model")?;
    let model_json = input_file(ctx, upstream, "model-config")?;
    let model_cfg = ModelConfig::from_json(&std::fs::read(&model_json)?)
        .map_err(|e| StageError::failed(format!("{}: {e}", model_json.display())))?;

    // 2. Data.
    let inputs = TaskInputs {
        files: task
            .inputs()
            .iter()
            .map(|stage| {
                let files = ctx
                    .input(stage)
                    .iter()
                    .map(|a| (a.kind.clone(), PathBuf::from(&a.path)))
                    .collect();
                (stage.to_string(), files)
            })
            .collect(),
    };
    let examples = task
        .examples(&ctx.config, &inputs)
        .map_err(StageError::Failed)?;
    let data = Data::build(ctx, &tokenizer, examples, settings.validation_fraction, cfg)?;
    let val_batches = fixed_batches(
        data.open("val", &tokenizer)?,
        cfg.batch_size,
        cfg.eval_batches,
        seed,
    )
    .map_err(StageError::Failed)?;

    // 3. Trainer and loader.
    let exec = ctx.config.execution.for_stage(ctx.stage);
    let mut trainer = Trainer::from_weights(&model_cfg, cfg, &exec, &weights, Some(&ctx.work_dir))
        .map_err(StageError::failed)?;
    let resumed = ctx.resume.is_some();
    let mut loader = match restore(ctx, &mut trainer, data.open("train", &tokenizer)?)? {
        Some(loader) => loader,
        None => {
            let lc = LoaderConfig {
                batch_size: cfg.batch_size,
                seed,
                rank: 0,
                world_size: 1,
            };
            Loader::new(data.open("train", &tokenizer)?, lc).map_err(StageError::failed)?
        }
    };
    ctx.event(
        "finetune_start",
        serde_json::json!({
            "from": upstream, "step": trainer.step, "train_examples": data.train.len(),
            "val_examples": data.val.len(), "too_long": data.too_long,
            "too_long_by_kind": data.too_long_by_kind,
        }),
    )?;

    // 4. Before: the upstream model on this stage's held-out data (once per run).
    let eval_set: Vec<ChatExample> = eval_sample(&data.val, settings.eval.examples)
        .iter()
        .flat_map(|ex| task.eval_items(ex))
        .collect();
    let task_eval = |trainer: &Trainer| {
        task_eval(ctx, trainer, &tokenizer, &eval_set, &settings.eval, task)?;
        extra_evals(ctx, trainer, &tokenizer, &inputs, task)
    };
    if !resumed {
        record_val_loss(ctx, &trainer, &val_batches, None)?;
        task_eval(&trainer)?;
    }
    let steps = cfg.steps;
    train_loop(ctx, cfg, &mut trainer, &mut loader, &mut |t| {
        let loss = record_val_loss(ctx, t, &val_batches, None)?;
        if t.step == steps {
            task_eval(t)?;
        }
        Ok(loss)
    })?;

    // 5. Publish.
    trainer
        .finish(&ctx.out_dir.join("model.safetensors"))
        .map_err(StageError::failed)?;
    let cfg_json = serde_json::to_vec_pretty(&model_cfg).map_err(StageError::failed)?;
    std::fs::write(ctx.out_dir.join("model.json"), cfg_json)?;
    Ok(StageOutput::default()
        .with("model", "model.safetensors")
        .with("model-config", "model.json")
        .with("examples", "examples/train.jsonl")
        .with("examples", "examples/val.jsonl")
        .with("chat-shard", "shards/train")
        .with("chat-shard", "shards/val"))
}

/// The stage's examples, split, rendered and packed under the attempt's output directory.
struct Data {
    train: Vec<ChatExample>,
    val: Vec<ChatExample>,
    too_long: usize,
    /// Of `too_long`, how many of each kind (so that a kind left out whole is seen).
    too_long_by_kind: std::collections::BTreeMap<String, usize>,
    dir: PathBuf,
}

impl Data {
    fn build(
        ctx: &StageContext,
        tok: &LoadedTokenizer,
        examples: Vec<ChatExample>,
        val_fraction: f64,
        cfg: &TrainConfig,
    ) -> Result<Data, StageError> {
        let window = cfg.seq_len + 1;
        let (mut train, mut val) = (Vec::new(), Vec::new());
        let (mut train_chats, mut val_chats) = (Vec::new(), Vec::new());
        let mut too_long = 0;
        let mut too_long_by_kind = std::collections::BTreeMap::<String, usize>::new();
        for ex in examples {
            let chat: RenderedChat = render_chat(tok, &ex.conversation, false)
                .map_err(|e| StageError::failed(format!("example `{}`: {e}", ex.id)))?;
            if chat.tokens.len() > window {
                too_long += 1;
                *too_long_by_kind.entry(ex.kind.clone()).or_default() += 1;
                continue;
            }
            if is_validation(&ex.id, val_fraction) {
                val.push(ex);
                val_chats.push(chat);
            } else {
                train.push(ex);
                train_chats.push(chat);
            }
        }
        if train.is_empty() || val.is_empty() {
            return Err(StageError::failed(format!(
                "{} train and {} validation examples fit in {window} tokens ({too_long} longer ones left out); \
                 raise {}.seq_len or add data",
                train.len(),
                val.len(),
                ctx.stage
            )));
        }
        if too_long > 0 {
            info!(
                too_long,
                window,
                by_kind = ?too_long_by_kind,
                "examples longer than a window are left out"
            );
        }
        let dir = ctx.out_dir.clone();
        std::fs::create_dir_all(dir.join("examples"))?;
        write_jsonl(&dir.join("examples/train.jsonl"), &train).map_err(StageError::failed)?;
        write_jsonl(&dir.join("examples/val.jsonl"), &val).map_err(StageError::failed)?;
        for (name, chats) in [("train", &train_chats), ("val", &val_chats)] {
            let shard = dir.join("shards").join(name);
            std::fs::create_dir_all(&shard)?;
            let s =
                write_chat_shard(&shard, tok, chats, cfg.seq_len).map_err(StageError::failed)?;
            info!(split = name, summary = ?s, "chat shard written");
        }
        Ok(Data {
            train,
            val,
            too_long,
            too_long_by_kind,
            dir,
        })
    }

    fn open(&self, name: &str, tok: &LoadedTokenizer) -> Result<Vec<TokenShard>, StageError> {
        let shard = TokenShard::open(&self.dir.join("shards").join(name), Some(&tok.hash))
            .map_err(StageError::failed)?;
        Ok(vec![shard])
    }
}

/// Greedy answers to the held-out eval set, scored and recorded under the stage's own suite
/// (e.g. suite `toolcall`, metric `exact_match`).
pub fn task_eval(
    ctx: &StageContext,
    trainer: &Trainer,
    tok: &LoadedTokenizer,
    eval_set: &[ChatExample],
    eval: &TaskEvalConfig,
    task: &dyn ChatTask,
) -> Result<(), StageError> {
    if eval_set.is_empty() {
        return Ok(());
    }
    let answers = generate_answers(&trainer.model, tok, eval_set, eval.max_new_tokens)
        .map_err(StageError::Failed)?;
    let pairs: Vec<(&ChatExample, String)> = eval_set.iter().zip(answers).collect();
    record_suite(
        ctx,
        trainer.step,
        ctx.stage,
        &task.score(&pairs),
        pairs.len(),
    )
}

/// Records and logs one suite's figures over `n` items at `step`.
fn record_suite(
    ctx: &StageContext,
    step: u64,
    suite: &str,
    figures: &[(String, f64)],
    n: usize,
) -> Result<(), StageError> {
    for (metric, value) in figures {
        ctx.record_eval(None, step, suite, metric, *value, n)?;
        info!(
            step,
            suite,
            metric,
            value = format!("{value:.3}"),
            "task eval"
        );
    }
    Ok(())
}

/// The task's [`ChatTask::extra_evals`] on the trainer's model, each recorded under its suite.
fn extra_evals(
    ctx: &StageContext,
    trainer: &Trainer,
    tok: &LoadedTokenizer,
    inputs: &TaskInputs,
    task: &dyn ChatTask,
) -> Result<(), StageError> {
    let suites = task
        .extra_evals(&ctx.config, inputs, &trainer.model, tok)
        .map_err(StageError::Failed)?;
    for s in suites {
        record_suite(ctx, trainer.step, &s.suite, &s.figures, s.n)?;
    }
    Ok(())
}

/// `n` held-out examples spread evenly over the validation set (which is in build order, so every
/// source and task kind is represented, not just the first).
pub fn eval_sample(val: &[ChatExample], n: usize) -> Vec<ChatExample> {
    let n = n.min(val.len());
    (0..n).map(|i| val[i * val.len() / n].clone()).collect()
}

/// Greedy answers to each example's prompt.
pub fn generate_answers(
    model: &tardbot_model::TardBot,
    tok: &LoadedTokenizer,
    examples: &[ChatExample],
    max_new_tokens: usize,
) -> Result<Vec<String>, crate::chat_model::Error> {
    examples
        .iter()
        .map(|ex| {
            respond(
                model,
                tok,
                &ex.prompt(),
                max_new_tokens,
                greedy(),
                &mut |_| true,
            )
        })
        .collect()
}

/// Where a stage's example files are, relative to its output directory (for `eval`).
pub fn examples_path(out_dir: &Path, split: &str) -> PathBuf {
    out_dir.join("examples").join(format!("{split}.jsonl"))
}
