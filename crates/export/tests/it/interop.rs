//! Hugging Face transformers and llama.cpp run our exports: the checks are Python scripts in
//! `tests/interop/` (they need `torch`, `transformers` and `llama-cpp-python`, installed by
//! `tests/interop/setup.sh`); this test writes our reference figures (logits, greedy tokens, chat
//! token ids) beside the exports and runs them. Without that environment it skips with a message.

use crate::fixture::{Fixture, prose, repo_root, tokenizer};
use candle_core::{Device, Tensor};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use tardbot_export::{ExportDtype, Format, export};
use tardbot_model::{GenerateConfig, SamplingParams, generate};
use tardbot_tokens::LoadedTokenizer;
use tardbot_tokens::chat::{Conversation, Message, Role, ToolCall, render_chat};
use tardbot_tokens::tokenizer::load_tokenizer;
use tardbot_toolcall::{ToolSpec, tools_system_prompt};

/// The interop Python, if it has what the checks import.
fn interop_python() -> Option<PathBuf> {
    let candidate = std::env::var_os("TARDBOT_INTEROP_PYTHON")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".cache/tardbot/interop-venv/bin/python"))
        })?;
    let ok = Command::new(&candidate)
        .args(["-c", "import torch, transformers, llama_cpp, safetensors"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        Some(candidate)
    } else {
        eprintln!(
            "SKIP export interop: no Python with torch, transformers and llama-cpp-python at {} \
             (run tests/interop/setup.sh, or set TARDBOT_INTEROP_PYTHON)",
            candidate.display()
        );
        None
    }
}

fn msg(role: Role, content: &str) -> Message {
    Message::new(role, content)
}

fn call(name: &str, arguments: Value) -> ToolCall {
    ToolCall {
        name: name.into(),
        arguments,
    }
}

/// One conversation for the chat-template check: ours, and the same in Hugging Face's form.
struct ChatCase {
    kind: &'static str,
    ours: Conversation,
    generation_prompt: bool,
    /// Hugging Face `tools` (rendered by the template into the system turn).
    tools: Option<Value>,
    /// Tool calls in OpenAI's nested form (else flat `{"name", "arguments"}`).
    openai_calls: bool,
    /// Thinking under `reasoning_content` (else `thinking`).
    reasoning_key: bool,
}

fn hf_messages(c: &ChatCase) -> Value {
    let skip_system = c.tools.is_some();
    let msgs: Vec<Value> = c
        .ours
        .messages
        .iter()
        .enumerate()
        .filter(|(i, m)| !(skip_system && *i == 0 && m.role == Role::System))
        .map(|(_, m)| {
            let role = match m.role {
                Role::System => "system",
                Role::User => "user",
                Role::Assistant => "assistant",
                Role::Tool => "tool",
            };
            let mut v = json!({"role": role, "content": m.content});
            if let Some(t) = &m.thinking {
                v[if c.reasoning_key { "reasoning_content" } else { "thinking" }] = json!(t);
            }
            if !m.tool_calls.is_empty() {
                v["tool_calls"] = m
                    .tool_calls
                    .iter()
                    .map(|tc| {
                        if c.openai_calls {
                            json!({"type": "function", "function": {"name": tc.name, "arguments": tc.arguments}})
                        } else {
                            json!({"name": tc.name, "arguments": tc.arguments})
                        }
                    })
                    .collect();
            }
            v
        })
        .collect();
    json!(msgs)
}

/// Twenty conversations covering every turn kind: system, user, assistant (text, thinking, tool
/// calls), tool results, offered tools, non-ASCII text, nested arguments.
fn chat_cases() -> Vec<ChatCase> {
    let case = |kind, messages: Vec<Message>, generation_prompt| ChatCase {
        kind,
        ours: Conversation { messages },
        generation_prompt,
        tools: None,
        openai_calls: true,
        reasoning_key: false,
    };
    let think = |content: &str, thinking: &str| Message {
        thinking: Some(thinking.into()),
        ..msg(Role::Assistant, content)
    };
    let calls = |content: &str, c: Vec<ToolCall>| Message {
        tool_calls: c,
        ..msg(Role::Assistant, content)
    };
    let specs: Vec<ToolSpec> = serde_json::from_value(json!([
        {"name": "get_weather", "description": "Weather for a city.",
         "parameters": {"type": "dict", "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["C", "F"]}}, "required": ["city"]}},
        {"name": "add", "description": "Adds numbers."}
    ]))
    .expect("specs");
    let hf_tools: Value = specs
        .iter()
        .map(|s| json!({"type": "function", "function": s}))
        .collect();
    let mut v = vec![
        case(
            "user, generation prompt",
            vec![msg(Role::User, "What is 12 + 7?")],
            true,
        ),
        case(
            "system + user",
            vec![msg(Role::System, "Be brief."), msg(Role::User, "Hi")],
            true,
        ),
        case(
            "user + assistant",
            vec![msg(Role::User, "Hi"), msg(Role::Assistant, "Hello!")],
            false,
        ),
        case(
            "system + user + assistant",
            vec![
                msg(Role::System, "You are TardBot."),
                msg(Role::User, "Name?"),
                msg(Role::Assistant, "TardBot."),
            ],
            false,
        ),
        case(
            "thinking",
            vec![msg(Role::User, "2+2?"), think("4", "2 plus 2 is 4.")],
            false,
        ),
        case(
            "empty thinking",
            vec![msg(Role::User, "Say hi"), think("hi", "")],
            false,
        ),
        case(
            "one tool call",
            vec![
                msg(Role::User, "Weather in Paris?"),
                calls("", vec![call("get_weather", json!({"city": "Paris"}))]),
            ],
            false,
        ),
        case(
            "two tool calls after text",
            vec![
                msg(Role::User, "Paris and Rome?"),
                calls(
                    "Checking both.",
                    vec![
                        call("get_weather", json!({"city": "Paris"})),
                        call("get_weather", json!({"city": "Rome", "unit": "C"})),
                    ],
                ),
            ],
            false,
        ),
        case(
            "call, result, answer",
            vec![
                msg(Role::User, "3+4?"),
                calls("", vec![call("add", json!({"b": 4, "a": 3}))]),
                msg(Role::Tool, "{\"result\": 7}"),
                msg(Role::Assistant, "3 + 4 = 7."),
            ],
            false,
        ),
        case(
            "thinking, call, result, answer",
            vec![
                msg(Role::System, "Use tools."),
                msg(Role::User, "Weather?"),
                Message {
                    thinking: Some("I need the weather tool.".into()),
                    ..calls("", vec![call("get_weather", json!({"city": "Oslo"}))])
                },
                msg(Role::Tool, "-3 C, snow"),
                think("It is -3 C and snowing in Oslo.", "Report it."),
            ],
            false,
        ),
        case(
            "multi-turn, generation prompt",
            vec![
                msg(Role::User, "Hi"),
                msg(Role::Assistant, "Hello."),
                msg(Role::User, "How are you?"),
            ],
            true,
        ),
        case(
            "multi-turn",
            vec![
                msg(Role::User, "A?"),
                msg(Role::Assistant, "B."),
                msg(Role::User, "C?"),
                msg(Role::Assistant, "D."),
            ],
            false,
        ),
        case(
            "non-ASCII",
            vec![
                msg(Role::User, "Ça va? 中文 😀"),
                msg(Role::Assistant, "Très bien — 好的."),
            ],
            false,
        ),
        case(
            "whitespace and newlines",
            vec![
                msg(Role::User, "  two\nlines\n\n  indented"),
                msg(Role::Assistant, "\tok \n"),
            ],
            false,
        ),
        case(
            "nested arguments",
            vec![
                msg(Role::User, "Complex"),
                calls(
                    "",
                    vec![call(
                        "f",
                        json!({"z": [1, 2.5, "x"], "a": {"y": true, "b": null}, "m": "é"}),
                    )],
                ),
            ],
            false,
        ),
        case(
            "tool result, generation prompt",
            vec![
                msg(Role::User, "Add"),
                calls("", vec![call("add", json!({"a": 1, "b": 2}))]),
                msg(Role::Tool, "3"),
            ],
            true,
        ),
    ];
    let mut flat = case(
        "flat tool-call form",
        vec![
            msg(Role::User, "Weather?"),
            calls("", vec![call("get_weather", json!({"city": "Lima"}))]),
        ],
        false,
    );
    flat.openai_calls = false;
    v.push(flat);
    let mut reasoning = case(
        "reasoning_content",
        vec![msg(Role::User, "Why?"), think("Because.", "Think first.")],
        false,
    );
    reasoning.reasoning_key = true;
    v.push(reasoning);
    let mut tools = case(
        "offered tools",
        vec![
            msg(Role::System, &tools_system_prompt(&specs)),
            msg(Role::User, "Weather in Paris?"),
        ],
        true,
    );
    tools.tools = Some(hf_tools);
    v.push(tools);
    let mut none = case(
        "offered no tools",
        vec![
            msg(Role::System, &tools_system_prompt(&[])),
            msg(Role::User, "Hi"),
            msg(Role::Assistant, "Hello."),
        ],
        false,
    );
    none.tools = Some(json!([]));
    v.push(none);
    v
}

fn save_logits(path: &Path, logits: &Tensor) {
    let m: HashMap<String, Tensor> = HashMap::from([("logits".to_string(), logits.clone())]);
    candle_core::safetensors::save(&m, path).expect("save logits");
}

/// Our logits (positions, vocab) of `ids` through the full forward.
fn our_logits(fx: &Fixture, ids: &[u32]) -> Tensor {
    let t = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    fx.model
        .forward(&t, None)
        .unwrap()
        .logits
        .squeeze(0)
        .unwrap()
}

fn greedy(fx: &Fixture, prompt: &[u32], n: usize) -> Vec<u32> {
    let cfg = GenerateConfig {
        max_new_tokens: n,
        stop_tokens: Vec::new(),
        sampling: SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        },
    };
    generate(&fx.model, prompt, &cfg, &mut |_| true)
        .unwrap()
        .tokens
}

fn run_check(python: &Path, script: &str, reference: &Path) -> Value {
    let out = Command::new(python)
        .arg(repo_root().join("tests/interop").join(script))
        .arg(reference)
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stdout.lines().last().unwrap_or("");
    eprintln!("{script}: {last}");
    assert!(out.status.success(), "{script} failed:\n{stdout}\n{stderr}");
    serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("{script} printed no JSON ({e}):\n{stdout}\n{stderr}"))
}

/// Exports a model of `cfg` (random weights; `preset` names it in the output) as hf f32 and gguf f32 + q8_0, writes our figures, and runs
/// both checks. `long` tokens (past the window) for the transformers logits and greedy prompt,
/// `short` (inside it) for llama.cpp.
fn check_model(preset: &str, cfg: tardbot_core::ModelConfig, long: usize, short: usize) {
    let Some(python) = interop_python() else {
        return;
    };
    let fx = Fixture::new(cfg, 11);
    assert!(long > fx.cfg.window && short + 32 <= fx.cfg.window);
    let src = fx.source();
    let card = fx.card();
    let dir = fx.dir.path();
    export(&src, &card, Format::Hf, ExportDtype::F32, &dir.join("hf")).expect("hf export");
    export(
        &src,
        &card,
        Format::Gguf,
        ExportDtype::F32,
        &dir.join("gguf-f32"),
    )
    .expect("gguf f32");
    export(
        &src,
        &card,
        Format::Gguf,
        ExportDtype::Q8_0,
        &dir.join("gguf-q8"),
    )
    .expect("gguf q8_0");

    let tok: LoadedTokenizer = load_tokenizer(tokenizer()).expect("tokenizer");
    let text = prose();
    // Special-token strings inside text: TardBot encodes them as text, Hugging Face tokenizers as the
    // special token unless `split_special_tokens=True`; the tokenizer check uses text without them.
    let sample: String = text
        .replace("<|endoftext|>", "\n")
        .chars()
        .take(3000)
        .collect();
    let sample_ids = tok.encode(&sample).unwrap();
    let all_ids = tok.encode(&text).unwrap();
    let long_ids = &all_ids[..long];
    save_logits(&dir.join("logits.safetensors"), &our_logits(&fx, long_ids));
    let greedy_tokens = greedy(&fx, long_ids, 32);
    let short_ids = &all_ids[..short];
    save_logits(
        &dir.join("gguf_logits.safetensors"),
        &our_logits(&fx, short_ids),
    );
    let gguf_greedy = greedy(&fx, short_ids, 32);

    let conversations: Vec<Value> = chat_cases()
        .iter()
        .map(|c| {
            let ids = render_chat(&tok, &c.ours, c.generation_prompt)
                .expect("render")
                .tokens;
            json!({"kind": c.kind, "messages": hf_messages(c), "tools": c.tools,
                   "generation_prompt": c.generation_prompt, "ids": ids})
        })
        .collect();
    assert_eq!(conversations.len(), 20);
    let reference = json!({
        "name": preset,
        "window": fx.cfg.window,
        "hf_dir": dir.join("hf"),
        "gguf_f32": dir.join("gguf-f32/model.gguf"),
        "gguf_q8_0": dir.join("gguf-q8/model.gguf"),
        "text": sample,
        "text_ids": sample_ids,
        "logits": dir.join("logits.safetensors"),
        "greedy_prompt": long_ids,
        "greedy_tokens": greedy_tokens,
        "gguf_prompt": short_ids,
        "gguf_logits": dir.join("gguf_logits.safetensors"),
        "gguf_greedy": gguf_greedy,
        "conversations": conversations,
    });
    let ref_path = dir.join("reference.json");
    std::fs::write(&ref_path, serde_json::to_vec(&reference).unwrap()).unwrap();
    let hf = run_check(&python, "check_hf.py", &ref_path);
    assert_eq!(hf["chat_template_equal"], "20/20");
    let gguf = run_check(&python, "check_gguf.py", &ref_path);
    assert_eq!(gguf["f32_greedy_equal"], true);
}

fn preset(name: &str) -> tardbot_core::ModelConfig {
    tardbot_core::ModelConfig::from_preset(name).expect("preset")
}

#[test]
fn transformers_and_llama_cpp_run_tiny_exactly() {
    // tiny: window 128; 300 tokens reach well past it.
    check_model("tiny", preset("tiny"), 300, 64);
}

#[test]
fn transformers_and_llama_cpp_run_mac_nano_exactly() {
    // mac_nano: window 768.
    check_model("mac_nano", preset("mac_nano"), 900, 200);
}

#[test]
fn transformers_and_llama_cpp_run_a_dense_model_with_an_untied_head_exactly() {
    // The shape of dense_175m (no experts: Qwen2-MoE with only MLP layers, plain llama), at tiny's size,
    // with an untied LM head and top-3 elsewhere untested; the exports' other branches.
    let cfg = tardbot_core::ModelConfig {
        n_experts: 0,
        experts_per_token: 0,
        n_dense_layers: 4,
        tie_embeddings: false,
        ..preset("tiny")
    };
    check_model("tiny dense, untied", cfg, 300, 64);
}

#[test]
fn transformers_and_llama_cpp_run_top_3_routing_exactly() {
    // Three experts per token: llama.cpp's identical dense experts weigh 1/3 each.
    let cfg = tardbot_core::ModelConfig {
        experts_per_token: 3,
        ..preset("tiny")
    };
    check_model("tiny top-3", cfg, 300, 64);
}
