//! A model that answers a few conversations word for word: a small TardBot trained here (real
//! gradient descent on the chat template's assistant tokens) until greedy decoding reproduces them,
//! and a BPE tokenizer trained on the bundled prose plus those conversations. Trained once per test
//! binary (~10 s), then served by as many servers as the tests start.

use candle_core::{DType, Device, Tensor};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use tardbot_core::ModelConfig;
use tardbot_finetune::ChatModel;
use tardbot_model::{TardBot, init_weights, named_vars, save_safetensors};
use tardbot_serve::{Engine, EngineConfig, Metrics, ServerState, ServerTools};
use tardbot_tokenize::train_tokenizer::{TrainOptions, train_bpe};
use tardbot_tokens::chat::{Conversation, Message, Role, ToolCall, render_chat, render_chat_text};
use tardbot_toolcall::{ToolSpec, tools_system_prompt};
use tardbot_tools::ToolRegistry;

pub const HELLO: &str = "Say hello.";
pub const HELLO_ANSWER: &str = "Hello from TardBot!";
pub const WEATHER: &str = "What is the weather in Paris?";
pub const WEATHER_RESULT: &str = "{\"temp_c\": 18}";
pub const WEATHER_ANSWER: &str = "It is 18 C in Paris.";
pub const SIX_TIMES_SEVEN: &str = "What is 6 times 7?";
pub const SIX_TIMES_SEVEN_ANSWER: &str = "6 times 7 is 42.";
pub const THINK: &str = "Think first: what is 2+2?";
pub const THINK_REASONING: &str = "2 plus 2 is 4.";
pub const THINK_ANSWER: &str = "4";

/// The client tool of the weather conversations, as an OpenAI request carries it.
pub fn weather_tool() -> Value {
    json!({"type": "function", "function": {
        "name": "get_weather", "description": "Current weather of a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}})
}

fn weather_spec() -> Vec<ToolSpec> {
    tardbot_serve::api::parse_tools(Some(&json!([weather_tool()]))).expect("weather tool")
}

fn system(specs: &[ToolSpec]) -> Message {
    Message::new(Role::System, tools_system_prompt(specs))
}

fn assistant_call(name: &str, arguments: Value) -> Message {
    Message {
        tool_calls: vec![ToolCall {
            name: name.into(),
            arguments,
        }],
        ..Message::new(Role::Assistant, "")
    }
}

/// The conversations the model learns, as a server with `--tools calculator` renders them (the
/// calculator offered in every system turn, a request's tools after it).
pub fn conversations() -> Vec<Conversation> {
    let calc = ToolRegistry::builtin(&["calculator"]).expect("calculator");
    let calc_and_weather: Vec<ToolSpec> = calc.specs().into_iter().chain(weather_spec()).collect();
    let calc_args = json!({"expression": "6*7"});
    let calc_result = calc
        .get("calculator")
        .expect("calculator")
        .call(calc_args.as_object().expect("object"))
        .expect("6*7")
        .to_string();
    let weather_call = assistant_call("get_weather", json!({"city": "Paris"}));
    let conv = |m: Vec<Message>| Conversation { messages: m };
    vec![
        conv(vec![
            system(&calc.specs()),
            Message::new(Role::User, HELLO),
            Message::new(Role::Assistant, HELLO_ANSWER),
        ]),
        conv(vec![
            system(&calc_and_weather),
            Message::new(Role::User, WEATHER),
            weather_call.clone(),
        ]),
        conv(vec![
            system(&calc_and_weather),
            Message::new(Role::User, WEATHER),
            weather_call,
            Message::new(Role::Tool, WEATHER_RESULT),
            Message::new(Role::Assistant, WEATHER_ANSWER),
        ]),
        conv(vec![
            system(&calc.specs()),
            Message::new(Role::User, SIX_TIMES_SEVEN),
            assistant_call("calculator", calc_args),
            Message::new(Role::Tool, calc_result),
            Message::new(Role::Assistant, SIX_TIMES_SEVEN_ANSWER),
        ]),
        conv(vec![
            system(&calc.specs()),
            Message::new(Role::User, THINK),
            Message {
                thinking: Some(THINK_REASONING.into()),
                ..Message::new(Role::Assistant, THINK_ANSWER)
            },
        ]),
    ]
}

pub struct TrainedModel {
    pub _dir: tempfile::TempDir,
    pub model: Arc<TardBot>,
    pub tokenizer: Arc<tardbot_tokens::tokenizer::LoadedTokenizer>,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The trained model (once per process).
pub fn trained() -> &'static TrainedModel {
    static M: OnceLock<TrainedModel> = OnceLock::new();
    M.get_or_init(train)
}

fn train() -> TrainedModel {
    let dir = tempfile::tempdir().expect("tempdir");
    let convs = conversations();
    // Tokenizer: prose plus the conversations' text (so the tool prompt is a few dozen tokens).
    let prose = std::fs::read_to_string(repo_root().join("data/sample/prose.txt")).expect("prose");
    let mut docs: Vec<String> = prose.split("\n\n").map(str::to_string).collect();
    for c in &convs {
        let text = render_chat_text(c, false).expect("render");
        docs.extend(std::iter::repeat_n(text, 20));
    }
    let tokenizer_path = dir.path().join("tokenizer.json");
    let opts = TrainOptions {
        vocab_size: 1000,
        min_frequency: 2,
        max_training_bytes: 1 << 30,
        seed: 1,
    };
    train_bpe(docs.iter().map(String::as_str), &opts, &tokenizer_path).expect("tokenizer");
    let tok = tardbot_tokens::tokenizer::load_tokenizer(&tokenizer_path).expect("load tokenizer");
    let cfg = ModelConfig {
        vocab_size: tok.vocab_size(),
        hidden_size: 64,
        n_layers: 2,
        n_dense_layers: 1,
        n_heads: 4,
        n_kv_heads: 2,
        n_experts: 2,
        experts_per_token: 2,
        intermediate_size: 128,
        window: 256,
        window_stride: 64,
        max_seq_len: 512,
        init_std: 0.05,
        ..ModelConfig::from_preset("micro").expect("micro")
    };
    cfg.validate().expect("config");
    let vm = VarMap::new();
    let model =
        TardBot::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).expect("model");
    init_weights(&vm, &cfg, 7).expect("init");
    let rendered: Vec<_> = convs
        .iter()
        .map(|c| render_chat(&tok, c, false).expect("render"))
        .collect();
    let vars: Vec<_> = named_vars(&vm).into_iter().map(|(_, v)| v).collect();
    let mut opt = candle_nn::AdamW::new(
        vars,
        candle_nn::ParamsAdamW {
            lr: 1e-2,
            weight_decay: 0.0,
            ..Default::default()
        },
    )
    .expect("optimizer");
    let mut last = f32::MAX;
    for step in 0..600 {
        let mut total: Option<Tensor> = None;
        for r in &rendered {
            let n = r.tokens.len() - 1;
            let ids = Tensor::new(&r.tokens[..n], &Device::Cpu)
                .and_then(|t| t.unsqueeze(0))
                .expect("ids");
            let targets = Tensor::new(&r.tokens[1..], &Device::Cpu)
                .and_then(|t| t.unsqueeze(0))
                .expect("targets");
            let mask: Vec<f32> = r.loss_mask[1..].iter().map(|&m| m as f32).collect();
            let mask = Tensor::new(mask, &Device::Cpu)
                .and_then(|t| t.unsqueeze(0))
                .expect("mask");
            let out = model.forward(&ids, None).expect("forward");
            let loss = model.loss(&out, &targets, Some(&mask)).expect("loss").ce;
            total = Some(match total {
                Some(t) => (t + loss).expect("sum"),
                None => loss,
            });
        }
        let total = total.expect("loss");
        last = total.to_scalar::<f32>().expect("scalar") / rendered.len() as f32;
        if last < 2e-3 && step > 50 {
            break;
        }
        opt.backward_step(&total).expect("step");
    }
    assert!(
        last < 0.05,
        "the fixture model did not learn its conversations (loss {last})"
    );
    let weights = dir.path().join("model.safetensors");
    save_safetensors(&vm, None, &weights).expect("save");
    let model_json = dir.path().join("model.json");
    std::fs::write(&model_json, serde_json::to_vec_pretty(&cfg).expect("json")).expect("write");
    // Served as a run's model is: loaded from its files.
    let chat = ChatModel::load(&weights, &model_json, &tokenizer_path).expect("load");
    TrainedModel {
        _dir: dir,
        model: Arc::new(chat.model),
        tokenizer: Arc::new(chat.tokenizer),
    }
}

pub const MODEL_ID: &str = "test-run/toolcall";

/// A server on 127.0.0.1 (a port of its own) with the trained model; stops when dropped.
pub struct Server {
    pub base: String,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl Server {
    pub async fn start(engine: EngineConfig, tools: &[&str]) -> Server {
        let m = trained();
        let metrics = Arc::new(Metrics::default());
        let state = ServerState::new(
            MODEL_ID.into(),
            Engine::start(m.model.clone(), engine, metrics.clone()),
            m.tokenizer.clone(),
            m.model.config().max_seq_len,
            ServerTools::new(tools, Default::default()).expect("tools"),
            metrics.clone(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(tardbot_serve::serve(
            listener,
            Arc::new(state),
            async move {
                let _ = rx.await;
            },
        ));
        Server {
            base,
            _shutdown: tx,
        }
    }

    pub async fn default() -> Server {
        Server::start(EngineConfig::default(), &["calculator"]).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}
