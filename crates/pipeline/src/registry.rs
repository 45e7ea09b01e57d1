//! The stages this binary ships, in pipeline order.
//!
//! Adding a stage is one line here: `.stage(MyStage)` for a stage of its own, `.chat(MyTask)` for a
//! chat fine-tuning task (run by the one [`ChatStage`]). `generate`, `chat` and `eval` find the model
//! stages and eval suites here too.

use std::path::Path;
use std::sync::Arc;
use tardbot_core::PipelineConfig;
use tardbot_core::config::{ConfigError, ConfigProblem, Problems};
use tardbot_finetune::{ChatStage, ChatTask};
use tardbot_stage::Stage;

/// The stages a binary can run, and which of them are chat tasks.
#[derive(Clone, Default)]
pub struct Registry {
    pub stages: Vec<Arc<dyn Stage>>,
    /// The chat tasks among `stages`: the suites of `eval`.
    pub chat_tasks: Vec<Arc<dyn ChatTask>>,
}

impl Registry {
    pub fn stage(mut self, stage: impl Stage) -> Self {
        self.stages.push(Arc::new(stage));
        self
    }

    pub fn chat(mut self, task: impl ChatTask) -> Self {
        let task: Arc<dyn ChatTask> = Arc::new(task);
        self.stages
            .push(Arc::new(ChatStage::new(Arc::clone(&task))));
        self.chat_tasks.push(task);
        self
    }

    pub fn chat_task(&self, name: &str) -> Option<&Arc<dyn ChatTask>> {
        self.chat_tasks.iter().find(|t| t.name() == name)
    }

    /// The stages that train a model under `config`, in pipeline order.
    pub fn training_stages(&self, config: &PipelineConfig) -> Vec<&'static str> {
        self.stages
            .iter()
            .filter(|s| s.training(config).is_some())
            .map(|s| s.name())
            .collect()
    }

    /// What only the stages know about a config: their own tables' problems, tables no stage owns,
    /// and `[execution.stages.X]` naming something other than a training stage.
    pub fn check_config(&self, config: &PipelineConfig) -> Vec<ConfigProblem> {
        let mut problems: Vec<ConfigProblem> = self
            .stages
            .iter()
            .flat_map(|s| s.check_config(config))
            .collect();
        let mut owned: Vec<String> = self.stages.iter().flat_map(|s| s.tables()).collect();
        // Not a stage's: the tools' settings (`generate`/`chat --tools`, `tool`).
        owned.push("tools.python".to_string());
        owned.push("tools.search".to_string());
        owned.push("tools.browser".to_string());
        match browser_settings(config) {
            Ok(settings) => {
                let mut p = Problems::default();
                for (field, message) in settings.problems() {
                    p.push(&format!("tools.browser.{field}"), message);
                }
                problems.extend(config.locate(p));
            }
            Err(e) => problems.extend(e.problems().iter().cloned()),
        }
        match python_settings(config) {
            Ok(settings) => {
                let mut p = Problems::default();
                for (field, message) in settings.problems() {
                    p.push(&format!("tools.python.{field}"), message);
                }
                problems.extend(config.locate(p));
            }
            Err(e) => problems.extend(e.problems().iter().cloned()),
        }
        match search_settings(config) {
            Ok(settings) => {
                let mut p = Problems::default();
                for (field, message) in settings.problems() {
                    p.push(&format!("tools.search.{field}"), message);
                }
                problems.extend(config.locate(p));
            }
            Err(e) => problems.extend(e.problems().iter().cloned()),
        }
        let mut p = Problems::default();
        for table in config.stage_tables() {
            let nested: Vec<&str> = owned
                .iter()
                .filter_map(|o| o.strip_prefix(&format!("{table}.")))
                .collect();
            if owned.contains(table) {
                continue;
            }
            if nested.is_empty() {
                p.push(
                    table,
                    format!(
                        "`[{table}]` is not a section of any stage; the stages' own sections are: {}",
                        owned.join(", ")
                    ),
                );
                continue;
            }
            for key in config.keys_under(&[table]) {
                if !nested.contains(&key.as_str()) {
                    p.push(
                        &format!("{table}.{key}"),
                        format!(
                            "`{key}` is not a stage with a `[{table}.*]` section; those are: {}",
                            nested.join(", ")
                        ),
                    );
                }
            }
        }
        config
            .execution
            .check_stage_names(&self.training_stages(config), &mut p);
        problems.extend(config.locate(p));
        problems
    }

    /// The built-in tools' settings: the python tool's sandbox as `[tools.python]` configures it,
    /// the search tool's backend as `[tools.search]` does (defaults without the sections).
    pub fn tool_settings(config: &PipelineConfig) -> tardbot_tools::ToolSettings {
        tardbot_tools::ToolSettings {
            python: python_settings(config)
                .map(|s| s.sandbox_config())
                .unwrap_or_default(),
            search: search_settings(config)
                .map(|s| s.search_config())
                .unwrap_or_default(),
            browser: browser_settings(config)
                .map(|s| s.browser_config())
                .unwrap_or_default(),
        }
    }

    /// Loads a pipeline file and checks it with every stage: all problems at once.
    pub fn load_config(&self, path: &Path) -> Result<PipelineConfig, ConfigError> {
        PipelineConfig::load_with(path, &|c| self.check_config(c))
    }

    /// Parses config text (a run's recorded config) and checks it with every stage.
    pub fn config_from_text(
        &self,
        text: &str,
        path: &Path,
        base_dir: &Path,
    ) -> Result<PipelineConfig, ConfigError> {
        PipelineConfig::from_text_with(text, path, base_dir, &|c| self.check_config(c))
    }
}

impl From<Vec<Arc<dyn Stage>>> for Registry {
    fn from(stages: Vec<Arc<dyn Stage>>) -> Self {
        Registry {
            stages,
            chat_tasks: Vec::new(),
        }
    }
}

/// Every stage of the shipped pipeline.
pub fn stages() -> Registry {
    Registry::default()
        .stage(tardbot_ingest::IngestStage)
        .stage(tardbot_tokenize::TokenizerStage)
        .stage(tardbot_tokenize::TokenizeStage)
        .stage(tardbot_search_index::SearchIndexStage)
        .stage(tardbot_pretrain::PretrainStage)
        .chat(tardbot_sft::SftTask)
        .chat(
            tardbot_toolcall::ToolcallTask::with_runner(std::sync::Arc::new(
                tardbot_tools::data_runner::BuiltinRunner,
            ))
            .with_agent_evaluator(std::sync::Arc::new(crate::agent_eval::LoopAgentEvaluator)),
        )
        .chat(tardbot_cot::CotTask)
}

/// `[tools.python]`, parsed with line numbers for its errors.
fn python_settings(
    config: &PipelineConfig,
) -> Result<tardbot_tools::settings::PythonSettings, tardbot_core::config::ConfigError> {
    Ok(config
        .section::<tardbot_tools::settings::PythonSettings>(&["tools", "python"])?
        .unwrap_or_default())
}

/// `[tools.search]`, parsed with line numbers for its errors.
fn search_settings(
    config: &PipelineConfig,
) -> Result<tardbot_tools::settings::SearchSettings, tardbot_core::config::ConfigError> {
    Ok(config
        .section::<tardbot_tools::settings::SearchSettings>(&["tools", "search"])?
        .unwrap_or_default())
}

/// `[tools.browser]`, parsed with line numbers for its errors.
fn browser_settings(
    config: &PipelineConfig,
) -> Result<tardbot_tools::settings::BrowserSettings, tardbot_core::config::ConfigError> {
    Ok(config
        .section::<tardbot_tools::settings::BrowserSettings>(&["tools", "browser"])?
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    //! The extension point as a new chat stage uses it: a task type and one registry line, nothing
    //! in `tardbot-core` or the pipeline besides.

    use super::*;
    use serde::{Deserialize, Serialize};
    use tardbot_core::config::Problems;
    use tardbot_finetune::{BoxError, ChatData, ChatExample, ChatSettings, TaskEvalConfig};

    #[derive(Default, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct EchoData {
        words: usize,
        validation_fraction: f64,
        eval: TaskEvalConfig,
    }

    impl ChatData for EchoData {
        fn eval(&self) -> &TaskEvalConfig {
            &self.eval
        }
        fn validation_fraction(&self) -> f64 {
            self.validation_fraction
        }
        fn check(&self, name: &str, _: &PipelineConfig, enabled: bool, p: &mut Problems) {
            if enabled && self.words == 0 {
                p.push(&format!("data.{name}.words"), "must be at least 1".into());
            }
        }
    }

    struct Echo;

    impl ChatTask for Echo {
        fn name(&self) -> &'static str {
            "echo"
        }
        fn upstream(&self) -> &'static str {
            "cot"
        }
        fn settings(&self, config: &PipelineConfig) -> Result<ChatSettings, ConfigError> {
            ChatSettings::parse::<EchoData>(config, self.name()).map(|(s, _)| s)
        }
        fn examples(
            &self,
            _: &PipelineConfig,
            _: &tardbot_finetune::TaskInputs,
        ) -> Result<Vec<ChatExample>, BoxError> {
            Ok(Vec::new())
        }
        fn score(&self, _: &[(&ChatExample, String)]) -> Vec<(String, f64)> {
            Vec::new()
        }
    }

    const BASE: &str = "[model]\npreset = \"tiny\"\n[ingest]\nsources = []\nenabled = false\n\
                        [pretrain]\nenabled = false\nsteps = 1\nbatch_size = 1\nseq_len = 8\nlr = 0.01\n";

    fn load(registry: &Registry, rest: &str) -> Result<PipelineConfig, ConfigError> {
        registry.config_from_text(
            &format!("{BASE}{rest}"),
            Path::new("p.toml"),
            Path::new("."),
        )
    }

    #[test]
    fn a_chat_stage_is_a_task_and_one_registry_line() {
        let registry = stages().chat(Echo);
        let rest =
            "[echo]\nsteps = 2\nbatch_size = 1\nseq_len = 8\nlr = 0.01\n[data.echo]\nwords = 3\n";
        let cfg = load(&registry, rest).expect("valid");
        assert!(registry.training_stages(&cfg).contains(&"echo"));
        assert!(registry.chat_task("echo").is_some());
        let stage = registry.stages.iter().find(|s| s.name() == "echo").unwrap();
        assert!(stage.enabled(&cfg));
        assert_eq!(stage.inputs(), ["tokenizer", "cot"]);
        // Its own tables are parsed and checked by it, with lines and fields, at validation.
        let err = load(
            &registry,
            &rest.replace("words = 3", "words = 0\nwrods = 1"),
        )
        .unwrap_err();
        let fields: Vec<&str> = err.problems().iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["data.echo.wrods"], "{err}");
        let err = load(&registry, &rest.replace("words = 3", "words = 0")).unwrap_err();
        assert_eq!(err.problems()[0].field, "data.echo.words", "{err}");
        assert_eq!(err.problems()[0].line, 18, "{err}");
        // Without the registry line its tables belong to no stage.
        let err = load(&stages(), rest).unwrap_err();
        let fields: Vec<&str> = err.problems().iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["echo", "data.echo"], "{err}");
    }

    #[test]
    fn tools_search_is_read_and_checked_with_the_file() {
        let cfg = load(
            &stages(),
            "[tools.python]\ntimeout_s = 5\n[tools.search]\nbase_url = \"http://127.0.0.1:9/html/\"\n\
             timeout_s = 2.5\nmax_results = 3\n",
        )
        .expect("valid");
        let t = Registry::tool_settings(&cfg);
        assert_eq!(t.search.base_url, "http://127.0.0.1:9/html/");
        assert_eq!(t.search.timeout, std::time::Duration::from_millis(2500));
        assert_eq!(t.search.max_results, 3);
        assert_eq!(t.python.timeout, std::time::Duration::from_secs(5));
        let d = Registry::tool_settings(&load(&stages(), "").expect("valid"));
        assert_eq!(d.search, tardbot_tools::search::SearchConfig::default());
        let err = load(
            &stages(),
            "[tools.search]\nbase_url = \"duckduckgo\"\nmax_results = 0\n",
        )
        .unwrap_err();
        let fields: Vec<&str> = err.problems().iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            ["tools.search.base_url", "tools.search.max_results"],
            "{err}"
        );
        let err = load(&stages(), "[tools.search]\nbackend = \"bing\"\n").unwrap_err();
        assert!(err.to_string().contains("backend"), "{err}");
    }

    #[test]
    fn tools_browser_is_owned_parsed_and_checked() {
        let ok = "[tools.browser]\nallowed_hosts = [\"127.0.0.1\"]\ntimeout_s = 5\n";
        let cfg = load(&stages(), ok).expect("valid");
        let settings = Registry::tool_settings(&cfg);
        assert_eq!(settings.browser.allowed_hosts, ["127.0.0.1"]);
        assert_eq!(settings.browser.timeout, std::time::Duration::from_secs(5));
        let err = load(
            &stages(),
            "[tools.browser]\nallowed_hosts = [\"http://x.org\"]\nmax_text_kib = 0\nhosts = 1\n",
        )
        .unwrap_err();
        let fields: Vec<&str> = err.problems().iter().map(|p| p.field.as_str()).collect();
        assert!(fields.contains(&"tools.browser.hosts"), "{err}");
        let err = load(
            &stages(),
            "[tools.browser]\nallowed_hosts = [\"http://x.org\"]\nmax_text_kib = 0\n",
        )
        .unwrap_err();
        let fields: Vec<&str> = err.problems().iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            ["tools.browser.allowed_hosts", "tools.browser.max_text_kib"],
            "{err}"
        );
    }
}
