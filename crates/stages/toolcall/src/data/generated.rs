//! Generated conversations with the real local tools.
//!
//! **Generated conversations** ([`generated_examples`]): the three [`LocalTool`]s in the system turn, a
//! user request (several phrasings per tool), the assistant's call, a tool-result turn with the tool's
//! actual JSON output, and a final assistant answer taken from that output. [`ChatExample::prompt`] cuts
//! before the last assistant turn, so these examples evaluate the final answer: their reference carries
//! `final_answer` (plus the call's ground truth); [`first_call_example`] cuts one at its first assistant
//! turn instead, to score the call. One in eight is a request no tool can serve, answered with
//! [`ABSTAIN_ANSWER`].

use super::{ABSTAIN_ANSWER, one_call, tools_system_prompt};
use crate::tools::{ELEMENTS, Element, LocalTool, UNITS, Unit, format_number};
use serde_json::{Map, Value, json};
use tardbot_core::rng::SplitMix64;
use tardbot_finetune::ChatExample;
use tardbot_tokens::chat::{Conversation, Message, Role};

const CALC_ASK: &[&str] = &[
    "What is {e}?",
    "Calculate {e}.",
    "Compute {e}, please.",
    "How much is {e}?",
    "Evaluate the expression {e}.",
    "Use the calculator to work out {e}.",
    "Can you tell me what {e} equals?",
];
const CALC_SAY: &[&str] = &["{e} = {r}.", "The result is {r}.", "It comes to {r}."];
const CONVERT_ASK: &[&str] = &[
    "Convert {v} {from} to {to}.",
    "How many {to} are there in {v} {from}?",
    "What is {v} {from_sym} in {to_sym}?",
    "{v} {from} is how many {to}?",
    "Please change {v} {from_sym} into {to}.",
];
const CONVERT_SAY: &[&str] = &["{v} {from} is {x} {to}.", "That is {x} {to_sym}."];
const SYMBOL_ASK: &[&str] = &[
    "What is the chemical symbol for {name}?",
    "Which symbol does {name} have in the periodic table?",
    "Look up the symbol of {name}.",
];
const NUMBER_ASK: &[&str] = &[
    "What is the atomic number of {name}?",
    "How many protons does an atom of {name} have?",
    "Look up the atomic number of {name}.",
];
const NAME_ASK: &[&str] = &[
    "Which element has the symbol {sym}?",
    "What element is {sym}?",
    "Which chemical element does the symbol {sym} stand for?",
];
const NO_TOOL_ASK: &[&str] = &[
    "What's the weather like in Paris today?",
    "Book me a table for two at an Italian restaurant tonight.",
    "Send an email to my boss saying I'll be late.",
    "Play some relaxing music.",
    "Set an alarm for 7 am tomorrow.",
    "What is the current price of Bitcoin?",
    "Order a large pizza to my address.",
    "Call my mother and tell her I'm on my way.",
];

fn pick<'a>(rng: &mut SplitMix64, items: &'a [&'a str]) -> &'a str {
    items[rng.below(items.len() as u64) as usize]
}

fn fill(template: &str, vars: &[(&str, &str)]) -> String {
    let mut s = template.to_string();
    for (k, v) in vars {
        s = s.replace(&format!("{{{k}}}"), v);
    }
    s
}

/// One generated request: the user's text, the call, the final answer's text and the value it must
/// contain.
struct Generated {
    tool: LocalTool,
    user: String,
    arguments: Map<String, Value>,
}

fn gen_calculator(rng: &mut SplitMix64) -> Generated {
    let mut n = |lo: u64, hi: u64| (lo + rng.below(hi - lo + 1)).to_string();
    let (a, b, c) = (n(1, 99), n(1, 99), n(2, 20));
    let frac = n(1, 9);
    let d = ["2", "4", "5", "8", "10"][rng.below(5) as usize];
    let templates = [
        format!("{a} + {b} * {c}"),
        format!("({a} + {b}) * {c}"),
        format!("{a} * {c} - {b}"),
        format!("{a} / {d}"),
        format!("({a} - {b}) / {d}"),
        format!("-{a} + {b}"),
        format!("{c}.{frac} * {b}"),
        format!("{a} * ({b} - {c})"),
    ];
    let e = templates[rng.below(templates.len() as u64) as usize].clone();
    let user = fill(pick(rng, CALC_ASK), &[("e", &e)]);
    let mut arguments = Map::new();
    arguments.insert("expression".into(), Value::String(e));
    Generated {
        tool: LocalTool::Calculator,
        user,
        arguments,
    }
}

fn unit_name(u: &Unit, value: f64) -> &'static str {
    if value == 1.0 { u.singular } else { u.plural }
}

fn gen_convert(rng: &mut SplitMix64) -> Generated {
    let from = &UNITS[rng.below(UNITS.len() as u64) as usize];
    let same: Vec<&Unit> = UNITS
        .iter()
        .filter(|u| u.dimension == from.dimension && u.symbol != from.symbol)
        .collect();
    let to = same[rng.below(same.len() as u64) as usize];
    let whole = if from.dimension == crate::tools::Dimension::Temperature {
        // -40..=300 in every temperature unit is above absolute zero except in kelvin.
        let lo = if from.symbol == "K" { 0 } else { -40 };
        lo + rng.below((300 - lo + 1) as u64) as i64
    } else {
        1 + rng.below(500) as i64
    };
    let value = if rng.below(4) == 0 {
        whole as f64 + 0.5
    } else {
        whole as f64
    };
    let v = format_number(value, 10);
    let user = fill(
        pick(rng, CONVERT_ASK),
        &[
            ("v", &v),
            ("from", unit_name(from, value)),
            ("to", to.plural),
            ("from_sym", from.symbol),
            ("to_sym", to.symbol),
        ],
    );
    let mut arguments = Map::new();
    arguments.insert("value".into(), crate::tools::number_value(value, 10));
    arguments.insert("from_unit".into(), Value::String(from.symbol.into()));
    arguments.insert("to_unit".into(), Value::String(to.symbol.into()));
    Generated {
        tool: LocalTool::UnitConverter,
        user,
        arguments,
    }
}

/// Which fact an element question asks for.
#[derive(Clone, Copy)]
enum Ask {
    Symbol,
    Number,
    Name,
}

fn gen_lookup(rng: &mut SplitMix64) -> (Generated, Ask) {
    let e: &Element = &ELEMENTS[rng.below(ELEMENTS.len() as u64) as usize];
    let ask = [Ask::Symbol, Ask::Number, Ask::Name][rng.below(3) as usize];
    let name = if rng.below(2) == 0 {
        e.name.to_string()
    } else {
        e.name.to_lowercase()
    };
    let (template, query) = match ask {
        Ask::Symbol => (pick(rng, SYMBOL_ASK), name.clone()),
        Ask::Number => (pick(rng, NUMBER_ASK), name.clone()),
        Ask::Name => (pick(rng, NAME_ASK), e.symbol.to_string()),
    };
    let user = fill(template, &[("name", &name), ("sym", e.symbol)]);
    let mut arguments = Map::new();
    arguments.insert("element".into(), Value::String(query));
    (
        Generated {
            tool: LocalTool::ElementLookup,
            user,
            arguments,
        },
        ask,
    )
}

/// The final answer from the tool's result: (text, the value it must contain).
fn final_answer(
    g: &Generated,
    ask: Option<Ask>,
    result: &Value,
    rng: &mut SplitMix64,
) -> (String, String) {
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let arg = |k: &str| g.arguments.get(k).unwrap_or(&Value::Null);
    match g.tool {
        LocalTool::Calculator => {
            let r = s(&result["result"]);
            let e = s(arg("expression"));
            (fill(pick(rng, CALC_SAY), &[("e", &e), ("r", &r)]), r)
        }
        LocalTool::UnitConverter => {
            let x = s(&result["value"]);
            let value = arg("value").as_f64().unwrap_or(0.0);
            let from = crate::tools::find_unit(&s(arg("from_unit")));
            let to = crate::tools::find_unit(&s(&result["unit"]));
            let (Some(from), Some(to)) = (from, to) else {
                return (format!("It is {x}."), x);
            };
            let xv = result["value"].as_f64().unwrap_or(0.0);
            let text = fill(
                pick(rng, CONVERT_SAY),
                &[
                    ("v", &format_number(value, 10)),
                    ("from", unit_name(from, value)),
                    ("x", &x),
                    ("to", unit_name(to, xv)),
                    ("to_sym", to.symbol),
                ],
            );
            (text, x)
        }
        LocalTool::ElementLookup => {
            let (name, sym, num) = (
                s(&result["name"]),
                s(&result["symbol"]),
                s(&result["atomic_number"]),
            );
            match ask.unwrap_or(Ask::Symbol) {
                Ask::Symbol => (format!("The chemical symbol for {name} is {sym}."), sym),
                Ask::Number => (format!("The atomic number of {name} is {num}."), num),
                Ask::Name => (format!("{sym} is the symbol for {name}."), name),
            }
        }
    }
}

/// `n` deterministic conversations with the real local tools (same `seed`, same examples; a longer
/// run extends a shorter one). Ids are `gen:<seed>:<i>`, kinds `gen:<tool name>` or `gen:abstain`.
pub fn generated_examples(n: usize, seed: u64) -> Vec<ChatExample> {
    let mut rng = SplitMix64::new(seed ^ 0x7001_ca11_0000_0000);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let pick_kind = rng.below(8);
        // Two tools on offer (the needed one and a distractor, in random order): the prompt stays
        // short enough for a small model's window, and picking the right tool still matters.
        let needed = match pick_kind {
            0 => LocalTool::ALL[rng.below(LocalTool::ALL.len() as u64) as usize],
            k => LocalTool::ALL[(k % 3) as usize],
        };
        let others: Vec<LocalTool> = LocalTool::ALL
            .into_iter()
            .filter(|t| *t != needed)
            .collect();
        let other = others[rng.below(others.len() as u64) as usize];
        let mut specs = vec![needed.spec(), other.spec()];
        if rng.below(2) == 1 {
            specs.swap(0, 1);
        }
        let tools_json: Vec<Value> = specs
            .iter()
            .map(|s| serde_json::to_value(s).unwrap_or(Value::Null))
            .collect();
        let system = Message::new(Role::System, tools_system_prompt(&specs));
        let id = format!("gen:{seed}:{i}");
        if pick_kind == 0 {
            out.push(ChatExample {
                id,
                kind: "gen:abstain".to_string(),
                conversation: Conversation {
                    messages: vec![
                        system,
                        Message::new(Role::User, pick(&mut rng, NO_TOOL_ASK)),
                        Message::new(Role::Assistant, ABSTAIN_ANSWER),
                    ],
                },
                reference: json!({"tools": tools_json, "ground_truth": [], "abstain": true}),
            });
            continue;
        }
        let (g, ask) = match pick_kind % 3 {
            0 => (gen_calculator(&mut rng), None),
            1 => (gen_convert(&mut rng), None),
            _ => {
                let (g, a) = gen_lookup(&mut rng);
                (g, Some(a))
            }
        };
        // The generators only produce arguments the tools accept; an error would be a bug here, and
        // is shown as the tool's result rather than hidden.
        let result = g
            .tool
            .call(&g.arguments)
            .unwrap_or_else(|e| json!({"error": e}));
        let (answer_text, answer) = final_answer(&g, ask, &result, &mut rng);
        let (call, ground_truth) = one_call(g.tool.name(), g.arguments.clone());
        out.push(ChatExample {
            id,
            kind: format!("gen:{}", g.tool.name()),
            conversation: Conversation {
                messages: vec![
                    system,
                    Message::new(Role::User, g.user),
                    call,
                    Message::new(Role::Tool, result.to_string()),
                    Message::new(Role::Assistant, answer_text),
                ],
            },
            reference: json!({
                "tools": tools_json,
                "ground_truth": [ground_truth],
                "abstain": false,
                "final_answer": answer,
            }),
        });
    }
    out
}

/// A generated example cut after its first assistant turn that makes a call, with the reference of a
/// call row (no `final_answer`), so that [`score`] grades the call. `None` when no assistant turn
/// makes a call.
pub fn first_call_example(example: &ChatExample) -> Option<ChatExample> {
    let msgs = &example.conversation.messages;
    let i = msgs
        .iter()
        .position(|m| m.role == Role::Assistant && !m.tool_calls.is_empty())?;
    let mut reference = example.reference.clone();
    if let Some(o) = reference.as_object_mut() {
        o.remove("final_answer");
    }
    Some(ChatExample {
        id: example.id.clone(),
        kind: example.kind.clone(),
        conversation: Conversation {
            messages: msgs[..=i].to_vec(),
        },
        reference,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::score;
    use crate::test_util::target_text;
    use tardbot_tokens::chat::render_chat_text;

    #[test]
    fn generated_examples_are_real_and_deterministic() {
        let a = generated_examples(200, 7);
        assert_eq!(a, generated_examples(200, 7));
        assert_eq!(a[..50], generated_examples(50, 7)[..]);
        assert_ne!(a, generated_examples(200, 8));
        let mut kinds: Vec<&str> = a.iter().map(|e| e.kind.as_str()).collect();
        kinds.sort_unstable();
        kinds.dedup();
        assert_eq!(
            kinds,
            [
                "gen:abstain",
                "gen:calculator",
                "gen:convert_units",
                "gen:element_lookup"
            ]
        );
        let mut users: Vec<&str> = a
            .iter()
            .map(|e| e.conversation.messages[1].content.as_str())
            .collect();
        users.sort_unstable();
        users.dedup();
        assert!(users.len() > 150, "{}", users.len());
        for e in &a {
            render_chat_text(&e.conversation, false).unwrap();
            let msgs = &e.conversation.messages;
            let last = msgs.last().unwrap();
            assert_eq!(last.role, Role::Assistant);
            if e.kind == "gen:abstain" {
                assert_eq!(score(e, ABSTAIN_ANSWER).abstained_correctly, Some(true));
                continue;
            }
            // The tool turn is the tool's real result, and the answer is scored from the final turn.
            assert_eq!(msgs[3].role, Role::Tool);
            assert!(
                !msgs[3].content.contains("error"),
                "{}: {}",
                e.id,
                msgs[3].content
            );
            let s = score(e, &last.content);
            assert_eq!(
                s.answer_correct,
                Some(true),
                "{}: {:?} {s:?}",
                e.id,
                last.content
            );
            assert_eq!(score(e, "No idea.").answer_correct, Some(false));
            // Cut at the call, the call scores as a call row.
            let c = first_call_example(e).unwrap();
            assert_eq!(c.prompt().messages.len(), 2);
            let s = score(&c, &target_text(&c));
            assert!(s.exact_match && s.schema_valid, "{}: {s:?}", e.id);
        }
        // Shown with --nocapture, to eyeball the phrasings.
        for e in a.iter().take(8) {
            eprintln!(
                "{}",
                render_chat_text(&e.conversation, false)
                    .unwrap()
                    .split("<|end|>")
                    .skip(1)
                    .collect::<Vec<_>>()
                    .join("<|end|>")
            );
        }
        let calc = a.iter().find(|e| e.kind == "gen:calculator").unwrap();
        assert!(
            calc.conversation.messages[3]
                .content
                .starts_with("{\"result\":")
        );
    }
}
