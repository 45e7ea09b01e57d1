//! Calls to functions made up for each example: the skill BFCL measures on functions the model has
//! never seen.
//!
//! BFCL rows name a function once, in the system turn's schemas; the model must find it there and copy
//! its name and the arguments the request gives. Our own tools have six fixed names, which a model
//! learns by heart without reading a schema, and BFCL's training rows are a few thousand. Here every
//! example offers two or three functions composed from word lists (`verb_noun`, often under a module
//! prefix such as `open_data.get_air_quality` that the request never says), each with its JSON-schema
//! parameters; the request asks for one of them in words and gives every argument; the answer is the
//! call, whose name can only be copied from the schema. Rows are BFCL's shape (one user turn, the call
//! as the last assistant turn, the reference's `ground_truth`), so they are scored the same way, as
//! their own source `unseen`.

use super::{one_call, tools_system_prompt};
use crate::schema::ToolSpec;
use serde_json::{Map, Value, json};
use tardbot_core::rng::SplitMix64;
use tardbot_finetune::ChatExample;
use tardbot_tokens::chat::{Conversation, Message, Role};

/// (name part, how a request says it).
const VERBS: &[(&str, &str)] = &[
    ("get", "Get"),
    ("find", "Find"),
    ("fetch", "Fetch"),
    ("lookup", "Look up"),
    ("estimate", "Estimate"),
    ("list", "List"),
    ("check", "Check"),
    ("predict", "Predict"),
    ("report", "Report"),
    ("compare", "Compare"),
];

const NOUNS: &[(&str, &str)] = &[
    ("weather_forecast", "the weather forecast"),
    ("population", "the population"),
    ("air_quality", "the air quality"),
    ("hotel_prices", "hotel prices"),
    ("flight_delays", "flight delays"),
    ("museum_hours", "the opening hours of museums"),
    ("crime_rate", "the crime rate"),
    ("average_rent", "the average rent"),
    ("sunrise_time", "the sunrise time"),
    ("traffic_report", "the traffic report"),
    ("restaurant_reviews", "restaurant reviews"),
    ("rainfall", "the rainfall"),
    ("elevation", "the elevation"),
    ("bike_routes", "bike routes"),
    ("concert_listings", "concert listings"),
    ("school_rankings", "school rankings"),
    ("parking_spots", "free parking spots"),
    ("sales_tax", "the sales tax rate"),
    ("time_zone", "the time zone"),
    ("library_events", "library events"),
    ("housing_permits", "housing permits"),
    ("tourist_numbers", "tourist numbers"),
    ("energy_prices", "energy prices"),
    ("pollen_count", "the pollen count"),
];

const MODULES: &[&str] = &[
    "open_data",
    "geo",
    "travel_api",
    "civic",
    "local_info",
    "stats",
    "urban",
    "maps_v2",
    "city_services",
    "atlas",
];

const CITIES: &[&str] = &[
    "Oslo", "Lima", "Cairo", "Tokyo", "Perth", "Quito", "Lyon", "Dakar", "Hanoi", "Denver",
    "Porto", "Kraków", "Nairobi", "Bergen", "Osaka", "Austin",
];
const COUNTRIES: &[&str] = &[
    "Norway", "Peru", "Egypt", "Japan", "Chile", "Kenya", "Canada", "Spain", "Vietnam", "Ghana",
];
const MONTHS: &[&str] = &[
    "January", "March", "May", "June", "August", "October", "November",
];

/// A parameter: its name, JSON-schema type, description, and how a request says its value.
struct Param {
    name: &'static str,
    kind: &'static str,
    description: &'static str,
    /// `{v}` is the value.
    phrase: &'static str,
}

/// Where: every function takes one of these first.
const PLACES: &[Param] = &[
    Param {
        name: "city",
        kind: "string",
        description: "The city's name.",
        phrase: "in {v}",
    },
    Param {
        name: "country",
        kind: "string",
        description: "The country's name.",
        phrase: "in {v}",
    },
];

const EXTRAS: &[Param] = &[
    Param {
        name: "year",
        kind: "integer",
        description: "The year.",
        phrase: "for {v}",
    },
    Param {
        name: "month",
        kind: "string",
        description: "The month, by name.",
        phrase: "in {v}",
    },
    Param {
        name: "limit",
        kind: "integer",
        description: "How many results at most.",
        phrase: "with at most {v} results",
    },
    Param {
        name: "days",
        kind: "integer",
        description: "How many days ahead.",
        phrase: "for the next {v} days",
    },
    Param {
        name: "units",
        kind: "string",
        description: "The unit system: metric or imperial.",
        phrase: "in {v} units",
    },
    Param {
        name: "max_price",
        kind: "float",
        description: "The highest price, in dollars.",
        phrase: "under {v} dollars",
    },
];

const ASK: &[&str] = &[
    "{verb} {noun} {args}.",
    "Can you {verb_lower} {noun} {args}?",
    "Please {verb_lower} {noun} {args}.",
    "I need {noun} {args}.",
    "{verb} {noun} {args}, please.",
];

fn pick<T: Copy>(rng: &mut SplitMix64, items: &[T]) -> T {
    items[rng.below(items.len() as u64) as usize]
}

/// A made-up function: its spec and its parameters in order.
struct Function {
    spec: ToolSpec,
    verb: (&'static str, &'static str),
    noun: (&'static str, &'static str),
    params: Vec<&'static Param>,
}

fn gen_function(rng: &mut SplitMix64, taken: &[(usize, usize)]) -> (Function, (usize, usize)) {
    let (vi, ni) = loop {
        let k = (
            rng.below(VERBS.len() as u64) as usize,
            rng.below(NOUNS.len() as u64) as usize,
        );
        // Distinct nouns, so that the request names one function.
        if !taken.iter().any(|t| t.1 == k.1) {
            break k;
        }
    };
    let (verb, noun) = (VERBS[vi], NOUNS[ni]);
    let base = format!("{}_{}", verb.0, noun.0);
    let name = if rng.below(3) < 2 {
        format!("{}.{base}", pick(rng, MODULES))
    } else {
        base
    };
    let mut params = vec![&PLACES[rng.below(PLACES.len() as u64) as usize]];
    let extra = rng.below(3) as usize;
    while params.len() < 1 + extra {
        let p = &EXTRAS[rng.below(EXTRAS.len() as u64) as usize];
        if !params.iter().any(|q| q.name == p.name) {
            params.push(p);
        }
    }
    let properties: Map<String, Value> = params
        .iter()
        .map(|p| {
            (
                p.name.to_string(),
                json!({"type": p.kind, "description": p.description}),
            )
        })
        .collect();
    let required: Vec<&str> = params.iter().map(|p| p.name).collect();
    let where_ = if params[0].name == "city" {
        "a city"
    } else {
        "a country"
    };
    let spec = ToolSpec {
        name,
        description: format!("{} {} for {where_}.", verb.1, noun.1),
        parameters: json!({"type": "dict", "properties": properties, "required": required}),
    };
    (
        Function {
            spec,
            verb,
            noun,
            params,
        },
        (vi, ni),
    )
}

/// A value for `p`, as the call's JSON and as the request says it.
fn gen_value(rng: &mut SplitMix64, p: &Param) -> (Value, String) {
    match p.name {
        "city" => {
            let c = pick(rng, CITIES);
            (json!(c), c.to_string())
        }
        "country" => {
            let c = pick(rng, COUNTRIES);
            (json!(c), c.to_string())
        }
        "year" => {
            let y = 1990 + rng.below(40);
            (json!(y), y.to_string())
        }
        "month" => {
            let m = pick(rng, MONTHS);
            (json!(m), m.to_string())
        }
        "limit" => {
            let n = 2 + rng.below(19);
            (json!(n), n.to_string())
        }
        "days" => {
            let n = 2 + rng.below(13);
            (json!(n), n.to_string())
        }
        "units" => {
            let u = if rng.below(2) == 0 {
                "metric"
            } else {
                "imperial"
            };
            (json!(u), u.to_string())
        }
        _ => {
            let d = 20 + 5 * rng.below(60);
            (json!(d as f64), d.to_string())
        }
    }
}

/// `n` single-turn calls to made-up functions (ids `unseen:<seed>:<i>`, kind `unseen`), two or
/// three functions on offer each, in a shuffled order.
pub fn unseen_function_examples(n: usize, seed: u64) -> Vec<ChatExample> {
    let mut rng = SplitMix64::new(seed ^ 0x756e_7365_656e_0000);
    (0..n)
        .map(|i| {
            let count = 2 + rng.below(2) as usize;
            let mut taken = Vec::new();
            let mut functions = Vec::new();
            for _ in 0..count {
                let (f, k) = gen_function(&mut rng, &taken);
                taken.push(k);
                functions.push(f);
            }
            let target = rng.below(count as u64) as usize;
            let f = &functions[target];
            let mut arguments = Map::new();
            let mut phrases = Vec::new();
            for p in &f.params {
                let (v, said) = gen_value(&mut rng, p);
                arguments.insert(p.name.to_string(), v);
                phrases.push(p.phrase.replace("{v}", &said));
            }
            let user = pick(&mut rng, ASK)
                .replace("{verb_lower}", &f.verb.1.to_lowercase())
                .replace("{verb}", f.verb.1)
                .replace("{noun}", f.noun.1)
                .replace("{args}", &phrases.join(" "));
            // "I need the …" reads better than "I need The …"; a template may start with {noun}.
            let user = capitalize(&user);
            let specs: Vec<ToolSpec> = functions.iter().map(|f| f.spec.clone()).collect();
            let (call, ground_truth) = one_call(&f.spec.name, arguments);
            ChatExample {
                id: format!("unseen:{seed}:{i}"),
                kind: "unseen".into(),
                conversation: Conversation {
                    messages: vec![
                        Message::new(Role::System, tools_system_prompt(&specs)),
                        Message::new(Role::User, user),
                        call,
                    ],
                },
                reference: json!({
                    "tools": specs,
                    "ground_truth": [ground_truth],
                    "abstain": false,
                }),
            }
        })
        .collect()
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(first) => first.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Expected, score};
    use crate::test_util::target_text;

    #[test]
    fn calls_name_an_offered_function_and_pass_its_schema() {
        let ex = unseen_function_examples(300, 4);
        assert_eq!(ex, unseen_function_examples(300, 4), "deterministic");
        let mut names = std::collections::BTreeSet::new();
        let mut prefixed = 0;
        for e in &ex {
            let m = &e.conversation.messages;
            let call = &m[2].tool_calls[0];
            let specs: Vec<ToolSpec> =
                serde_json::from_value(e.reference["tools"].clone()).unwrap();
            assert!((2..=3).contains(&specs.len()));
            assert!(specs.iter().any(|s| s.name == call.name));
            let Value::Object(args) = &call.arguments else {
                panic!("arguments are an object")
            };
            // The request gives every argument's value.
            for v in args.values() {
                let said = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.as_f64().unwrap().to_string(),
                    _ => unreachable!(),
                };
                assert!(m[1].content.contains(&said), "{} / {said}", m[1].content);
            }
            // The prefix is only in the schema, never in the request.
            if let Some((module, _)) = call.name.split_once('.') {
                prefixed += 1;
                assert!(!m[1].content.contains(module));
            }
            names.insert(call.name.clone());
            // Scored as BFCL rows are: the reference call is schema-valid and exact.
            let s = score(e, &target_text(e));
            assert_eq!(s.expected, Expected::Calls);
            assert!(s.schema_valid && s.exact_match, "{}: {:?}", e.id, s.note);
        }
        assert!(names.len() > 150, "{} distinct names", names.len());
        assert!(prefixed > 150 && prefixed < 250, "{prefixed}");
    }
}
