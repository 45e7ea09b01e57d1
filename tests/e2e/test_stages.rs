//! Test-only stages (never shipped): a source, a slow checkpointing stage, and two independent
//! stages for concurrency. Their behaviour is tuned by environment variables of the child process.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tardbot_core::PipelineConfig;
use tardbot_stage::{Resources, Stage, StageContext, StageError, StageOutput};

pub fn registry() -> tardbot_pipeline::registry::Registry {
    let stages: Vec<Arc<dyn Stage>> = vec![
        Arc::new(Alpha),
        Arc::new(Slow),
        Arc::new(Side("beta")),
        Arc::new(Side("gamma")),
    ];
    stages.into()
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// The slow stage's state after `step` steps: an independent reference for resume tests.
pub fn expected_state(seed: u64, steps: u64) -> u64 {
    (0..steps).fold(seed, step_fn)
}

fn step_fn(state: u64, step: u64) -> u64 {
    state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(step ^ 0x9e37_79b9)
}

struct Alpha;
impl Stage for Alpha {
    fn name(&self) -> &'static str {
        "alpha"
    }
    fn inputs(&self) -> &'static [&'static str] {
        &[]
    }
    fn enabled(&self, _: &PipelineConfig) -> bool {
        true
    }
    fn config_slice(&self, c: &PipelineConfig) -> serde_json::Value {
        serde_json::json!({ "seed": c.seed })
    }
    fn run(&self, ctx: &StageContext) -> Result<StageOutput, StageError> {
        std::fs::write(
            ctx.out_dir.join("alpha.txt"),
            format!("alpha {}", ctx.config.seed),
        )?;
        Ok(StageOutput::default().with("text", "alpha.txt"))
    }
}

/// Steps with a checkpoint every 5; resumes from `ctx.resume`; stops at a safe point on cancel.
struct Slow;
impl Stage for Slow {
    fn name(&self) -> &'static str {
        "slow"
    }
    fn inputs(&self) -> &'static [&'static str] {
        &["alpha"]
    }
    fn enabled(&self, _: &PipelineConfig) -> bool {
        true
    }
    fn config_slice(&self, c: &PipelineConfig) -> serde_json::Value {
        serde_json::json!({ "seed": c.seed, "steps": env_u64("SLOW_STEPS", 40) })
    }
    fn resources(&self, _: &PipelineConfig) -> Resources {
        Resources {
            threads: 1,
            exclusive: false,
        }
    }
    fn run(&self, ctx: &StageContext) -> Result<StageOutput, StageError> {
        let steps = env_u64("SLOW_STEPS", 40);
        let step_ms = env_u64("SLOW_STEP_MS", 50);
        let alpha = std::fs::read_to_string(&ctx.input("alpha")[0].path)?;
        assert!(alpha.starts_with("alpha"));
        let (mut step, mut state) = match &ctx.resume {
            Some(c) => {
                let saved = std::fs::read_to_string(Path::new(&c.path).join("state.txt"))?;
                let (a, b) = saved
                    .trim()
                    .split_once(' ')
                    .ok_or_else(|| StageError::failed("bad state"))?;
                (
                    a.parse().map_err(StageError::failed)?,
                    b.parse().map_err(StageError::failed)?,
                )
            }
            None => (0u64, ctx.config.seed),
        };
        let mut executed = 0;
        let checkpoint = |step: u64, state: u64| -> Result<(), StageError> {
            let dir = ctx.work_dir.join(format!("ckpt-{step:05}"));
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join("state.txt"), format!("{step} {state}"))?;
            ctx.record_checkpoint(step, step * 100, &dir)?;
            Ok(())
        };
        while step < steps {
            if ctx.cancelled() {
                checkpoint(step, state)?;
                return Err(StageError::Interrupted(Some(step)));
            }
            std::thread::sleep(Duration::from_millis(step_ms));
            state = step_fn(state, step);
            step += 1;
            executed += 1;
            ctx.log_metrics(
                step,
                &[("loss", (state % 1000) as f64 / 100.0), ("lr", 1e-3)],
            );
            if step % 5 == 0 {
                checkpoint(step, state)?;
            }
        }
        std::fs::write(
            ctx.out_dir.join("result.txt"),
            format!("{state} {executed}"),
        )?;
        Ok(StageOutput::default().with("result", "result.txt"))
    }
}

/// Sleeps, then records when it ran: two of these must overlap when the budget allows.
struct Side(&'static str);
impl Stage for Side {
    fn name(&self) -> &'static str {
        self.0
    }
    fn inputs(&self) -> &'static [&'static str] {
        &["alpha"]
    }
    fn enabled(&self, _: &PipelineConfig) -> bool {
        true
    }
    fn config_slice(&self, _: &PipelineConfig) -> serde_json::Value {
        serde_json::json!({})
    }
    fn run(&self, ctx: &StageContext) -> Result<StageOutput, StageError> {
        let start = now_ms();
        std::thread::sleep(Duration::from_millis(env_u64("SIDE_MS", 400)));
        std::fs::write(
            ctx.out_dir.join("span.txt"),
            format!("{start} {}", now_ms()),
        )?;
        // The rayon pool the stage runs in: its share of the budget, not every core.
        std::fs::write(
            ctx.out_dir.join("threads.txt"),
            format!("{} {}", rayon::current_num_threads(), ctx.threads),
        )?;
        Ok(StageOutput::default().with("span", "span.txt"))
    }
}
