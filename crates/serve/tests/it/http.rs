//! Every endpoint with reqwest on 127.0.0.1: streaming and not, tools and not, every bad input, the
//! queue bound, cancellation, and batched decode against decoding alone.

use crate::fixture::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tardbot_serve::EngineConfig;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client")
}

async fn post(s: &Server, body: Value) -> (u16, Value) {
    let r = client()
        .post(s.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .expect("send");
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")),
    )
}

/// The `data:` payloads of a streamed response, `[DONE]` included.
async fn post_stream(s: &Server, mut body: Value) -> Vec<String> {
    body["stream"] = json!(true);
    let mut r = client()
        .post(s.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut raw = Vec::new();
    while let Some(c) = r.chunk().await.expect("chunk") {
        raw.extend_from_slice(&c);
    }
    String::from_utf8(raw)
        .expect("utf-8")
        .split("\n\n")
        .filter_map(|ev| ev.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(str::to_string)
        .collect()
}

fn user(text: &str) -> Value {
    json!({"model": MODEL_ID, "temperature": 0, "messages": [{"role": "user", "content": text}]})
}

fn message(v: &Value) -> &Value {
    &v["choices"][0]["message"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_health_metrics_and_unknown_routes() {
    let s = Server::default().await;
    let m: Value = client()
        .get(s.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(m["object"], "list");
    assert_eq!(m["data"][0]["id"], MODEL_ID);
    assert_eq!(m["data"][0]["object"], "model");
    let one = client()
        .get(s.url(&format!("/v1/models/{MODEL_ID}")))
        .send()
        .await
        .unwrap();
    assert_eq!(one.status().as_u16(), 200);
    let other = client()
        .get(s.url("/v1/models/gpt-4"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status().as_u16(), 404);
    let h: Value = client()
        .get(s.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["status"], "ok");
    let nf = client().get(s.url("/v1/nothing")).send().await.unwrap();
    assert_eq!(nf.status().as_u16(), 404);
    let e: Value = nf.json().await.unwrap();
    assert_eq!(e["error"]["type"], "not_found_error");
    // One answered request shows in the metrics.
    let (st, _) = post(&s, user(HELLO)).await;
    assert_eq!(st, 200);
    let text = client()
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "tardbot_serve_requests_total{model=\"test-run/toolcall\",status=\"200\"} 1",
        "tardbot_serve_tokens_generated_total",
        "tardbot_serve_time_to_first_token_seconds_count{model=\"test-run/toolcall\"} 1",
        "tardbot_serve_queue_length",
        "tardbot_serve_request_duration_seconds_bucket",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
    // The chat page.
    let page = client().get(s.url("/")).send().await.unwrap();
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(page.text().await.unwrap().contains("/v1/chat/completions"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_chat_streamed_and_not_give_the_same_answer() {
    let s = Server::default().await;
    let (st, v) = post(&s, user(HELLO)).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(message(&v)["role"], "assistant");
    assert_eq!(message(&v)["content"], HELLO_ANSWER);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let u = &v["usage"];
    assert!(u["prompt_tokens"].as_u64().unwrap() > 3);
    assert_eq!(
        u["total_tokens"].as_u64().unwrap(),
        u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap()
    );

    let mut body = user(HELLO);
    body["stream_options"] = json!({"include_usage": true});
    let events = post_stream(&s, body).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, HELLO_ANSWER);
    assert!(
        chunks
            .iter()
            .filter(|c| c["choices"][0]["delta"]["content"].is_string())
            .count()
            > 2,
        "the answer came in one piece, not streamed"
    );
    let finish: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, vec![&json!("stop")]);
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"], v["usage"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_tools_come_back_as_tool_calls_and_the_result_is_answered() {
    let s = Server::default().await;
    let mut body = user(WEATHER);
    body["tools"] = json!([weather_tool()]);
    let (st, v) = post(&s, body.clone()).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    let m = message(&v);
    assert!(m["content"].is_null(), "{m}");
    let call = &m["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"city": "Paris"}));
    let id = call["id"].as_str().unwrap().to_string();

    // Streamed: the same call as a tool_calls delta.
    let events = post_stream(&s, body.clone()).await;
    let chunks: Vec<Value> = events
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let delta_call = chunks
        .iter()
        .find_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0).cloned())
        .expect("a tool_calls delta");
    assert_eq!(delta_call["index"], 0);
    assert_eq!(delta_call["function"]["name"], "get_weather");
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "tool_calls")
    );

    // The follow-up with the tool's result.
    let mut follow = body;
    follow["messages"] = json!([
        {"role": "user", "content": WEATHER},
        {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": id, "content": WEATHER_RESULT},
    ]);
    let (st, v) = post(&s, follow).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(message(&v)["content"], WEATHER_ANSWER);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_tools_run_on_the_server_and_the_model_answers_with_the_result() {
    let s = Server::default().await;
    let (st, v) = post(&s, user(SIX_TIMES_SEVEN)).await;
    assert_eq!(st, 200, "{v}");
    let m = message(&v);
    let runs = m["tardbot_tool_runs"].as_array().expect("tool runs");
    assert_eq!(runs.len(), 1, "{m}");
    assert_eq!(runs[0]["name"], "calculator");
    assert_eq!(runs[0]["arguments"], json!({"expression": "6*7"}));
    assert_eq!(runs[0]["error"], false);
    assert!(runs[0]["result"].as_str().unwrap().contains("42"));
    assert_eq!(m["content"], SIX_TIMES_SEVEN_ANSWER);
    assert!(m.get("tool_calls").is_none());
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    // Streamed, the run arrives as its own delta between the turns.
    let events = post_stream(&s, user(SIX_TIMES_SEVEN)).await;
    assert!(events.iter().any(|e| e.contains("tardbot_tool_runs")));
    // tool_choice = none: nothing offered, nothing run.
    let mut none = user(SIX_TIMES_SEVEN);
    none["tool_choice"] = json!("none");
    let (_, v) = post(&s, none).await;
    assert!(message(&v).get("tardbot_tool_runs").is_none(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reasoning_stop_sequences_and_max_tokens() {
    let s = Server::default().await;
    let (_, v) = post(&s, user(THINK)).await;
    assert_eq!(message(&v)["reasoning_content"], THINK_REASONING, "{v}");
    assert_eq!(message(&v)["content"], THINK_ANSWER);

    let mut stop = user(HELLO);
    stop["stop"] = json!(["TardBot"]);
    let (_, v) = post(&s, stop).await;
    assert_eq!(message(&v)["content"], "Hello from ");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");

    // min_tokens: the end of the turn is not drawn before 12 tokens, so the answer runs on.
    let mut long = user(HELLO);
    long["min_tokens"] = json!(12);
    long["max_tokens"] = json!(12);
    let (_, v) = post(&s, long).await;
    assert_eq!(v["choices"][0]["finish_reason"], "length", "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 12);
    let text = message(&v)["content"].as_str().unwrap();
    assert!(
        text.starts_with(HELLO_ANSWER) && text.len() > HELLO_ANSWER.len(),
        "{text}"
    );

    let mut short = user(HELLO);
    short["max_tokens"] = json!(2);
    let (_, v) = post(&s, short).await;
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 2);
    assert!(HELLO_ANSWER.starts_with(message(&v)["content"].as_str().unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_openai_error_and_the_right_status() {
    let s = Server::default().await;
    let raw = |body: &'static str| {
        let url = s.url("/v1/chat/completions");
        async move {
            let r = client()
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (st, e) = raw("{\"model\": \"test-run/toolcall\", \"messages\": [").await;
    assert_eq!(st, 400);
    assert_eq!(e["error"]["type"], "invalid_request_error");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not valid JSON")
    );

    let mut unknown = user(HELLO);
    unknown["model"] = json!("gpt-4o");
    let (st, e) = post(&s, unknown).await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );

    let bad = |messages: Value| json!({"model": MODEL_ID, "messages": messages});
    let (st, e) = post(&s, bad(json!([{"role": "wizard", "content": "hi"}]))).await;
    assert_eq!(
        (st, e["error"]["param"].as_str()),
        (400, Some("messages[0].role"))
    );
    let (st, e) = post(
        &s,
        bad(json!([{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "call_9", "content": "1"}])),
    )
    .await;
    assert_eq!(
        (st, e["error"]["param"].as_str()),
        (400, Some("messages[1].tool_call_id"))
    );

    // A prompt longer than the context: the message says both lengths.
    let long = "word ".repeat(2000);
    let (st, e) = post(&s, user(&long)).await;
    assert_eq!(st, 400);
    assert_eq!(e["error"]["code"], "context_length_exceeded");
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(msg.contains("tokens") && msg.contains("512"), "{msg}");

    for (field, n) in [
        ("max_tokens", json!(0)),
        ("max_tokens", json!(100_000)),
        ("max_completion_tokens", json!(-1)),
    ] {
        let mut b = user(HELLO);
        b[field] = n.clone();
        let (st, e) = post(&s, b).await;
        assert_eq!(st, 400, "{field} = {n}: {e}");
        assert!(
            e["error"]["param"].as_str().unwrap().starts_with("max_"),
            "{e}"
        );
    }

    // The request bound: a body over 1 MiB is refused unread, as an OpenAI error.
    let huge = format!(
        "{{\"model\": \"{MODEL_ID}\", \"messages\": [{{\"role\": \"user\", \"content\": \"{}\"}}]}}",
        "a".repeat(tardbot_serve::http::MAX_BODY_BYTES + 10)
    );
    let r = client()
        .post(s.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    let e: Value = r.json().await.unwrap();
    assert!(e["error"]["message"].as_str().unwrap().contains("at most"));
    // Cross-site requests: a body not declared as JSON (what a web page can send without a CORS
    // preflight) is 415; a foreign Origin is 403; the server's own origin is fine.
    let body = user(HELLO).to_string();
    let url = s.url("/v1/chat/completions");
    let r = client()
        .post(&url)
        .header("content-type", "text/plain")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 415);
    assert!(
        r.json::<Value>().await.unwrap()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("application/json")
    );
    let json = |origin: &str| {
        client()
            .post(&url)
            .header("content-type", "application/json; charset=utf-8")
            .header("origin", origin)
            .body(body.clone())
            .send()
    };
    assert_eq!(
        json("http://evil.example").await.unwrap().status().as_u16(),
        403
    );
    assert_eq!(json(&s.base).await.unwrap().status().as_u16(), 200);
    // The server is still up.
    let (st, _) = post(&s, user(HELLO)).await;
    assert_eq!(st, 200);
}

/// Opens a streamed request that runs long (`min_tokens` keeps the end of the turn from being drawn
/// for 480 tokens) and reads its first chunk, so it is in the engine.
async fn open_long_stream(s: &Server) -> reqwest::Response {
    let body = json!({"model": MODEL_ID, "stream": true, "temperature": 1.0, "seed": 1,
        "max_tokens": 480, "min_tokens": 480,
        "messages": [{"role": "user", "content": "Tell me everything about rivers."}]});
    let mut r = client()
        .post(s.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    r.chunk().await.unwrap().expect("a first chunk");
    r
}

fn gauge(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_capacity_is_429_with_retry_after_and_a_disconnect_cancels() {
    let s = Server::start(
        EngineConfig {
            max_requests: 1,
            ..EngineConfig::default()
        },
        &[],
    )
    .await;
    let first = open_long_stream(&s).await;
    let r = client()
        .post(s.url("/v1/chat/completions"))
        .json(&user(HELLO))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["type"], "rate_limit_error");
    // The client goes away: its generation is dropped and its place freed.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = client()
            .get(s.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if gauge(&m, "tardbot_serve_cancelled_total") >= 1.0
            && gauge(&m, "tardbot_serve_requests_in_flight") == 0.0
        {
            break;
        }
        assert!(Instant::now() < deadline, "not cancelled:\n{m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (st, v) = post(&s, user(HELLO)).await;
    assert_eq!(st, 200, "{v}");
}

/// Sampled completions of several prompts, asked all at once.
async fn concurrent_answers(s: &Server, n: usize) -> Vec<String> {
    let mut tasks = Vec::new();
    for i in 0..n {
        let url = s.url("/v1/chat/completions");
        let prompt = [HELLO, WEATHER, THINK, "Tell me about rivers.", "Hi"][i % 5];
        let body = json!({"model": MODEL_ID, "temperature": 0.9, "seed": i, "max_tokens": 24 + 5 * i,
            "messages": [{"role": "user", "content": prompt}]});
        tasks.push(tokio::spawn(async move {
            let v: Value = client()
                .post(url)
                .json(&body)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            format!(
                "{}|{}",
                v["choices"][0]["message"]["content"], v["usage"]["completion_tokens"]
            )
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_decode_gives_what_each_request_gets_alone() {
    let n = 6;
    let batched = Server::start(EngineConfig::default(), &[]).await;
    let together = concurrent_answers(&batched, n).await;
    // Proof the batch formed: some steps advanced several sequences.
    let m = client()
        .get(batched.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (steps, seqs) = (
        gauge(&m, "tardbot_serve_decode_steps_total"),
        gauge(&m, "tardbot_serve_decode_step_sequences_total"),
    );
    assert!(
        seqs > steps * 1.5,
        "mean decode batch {:.2}: the requests were not decoded together",
        seqs / steps
    );
    let alone_server = Server::start(
        EngineConfig {
            max_batch: 1,
            batched: false,
            ..EngineConfig::default()
        },
        &[],
    )
    .await;
    let alone = concurrent_answers(&alone_server, n).await;
    assert_eq!(together, alone);
}
