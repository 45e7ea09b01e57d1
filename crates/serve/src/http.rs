//! The HTTP surface (axum): the OpenAI routes, `/health`, `/metrics` and the chat page at `/`.

use crate::api::{self, ChatRequest, FinishReason, Usage, tool_call_json};
use crate::engine::Engine;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::session::{self, Delta, SessionInput};
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tardbot_tokens::chat::{Message, Role, render_chat};
use tardbot_tokens::tokenizer::LoadedTokenizer;
use tardbot_tools::{LoopConfig, ToolRegistry, ToolSettings};
use tokio::sync::mpsc;

/// Request bodies above this are refused (413) before they are read further.
pub const MAX_BODY_BYTES: usize = 1 << 20;

const INDEX_HTML: &str = include_str!("../web/index.html");

/// What every handler shares.
pub struct ServerState {
    /// The id clients name in `model` (`<run>/<stage>`).
    pub model_id: String,
    pub created: u64,
    pub engine: Engine,
    pub tokenizer: Arc<LoadedTokenizer>,
    /// Prompt + completion tokens the model takes.
    pub context: usize,
    /// Built-in tools run by the server (`--tools`).
    pub tools: ServerTools,
    pub loop_cfg: LoopConfig,
    pub metrics: Arc<Metrics>,
    requests: AtomicU64,
}

impl ServerState {
    pub fn new(
        model_id: String,
        engine: Engine,
        tokenizer: Arc<LoadedTokenizer>,
        context: usize,
        tools: ServerTools,
        metrics: Arc<Metrics>,
    ) -> ServerState {
        ServerState {
            model_id,
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            engine,
            tokenizer,
            context,
            tools,
            loop_cfg: LoopConfig::default(),
            metrics,
            requests: AtomicU64::new(0),
        }
    }
}

/// The built-in tools a server runs. Each completion gets its own instances
/// ([`ServerTools::for_session`]), so a tool with state (the browser's page and cookies) is never
/// shared between clients.
#[derive(Clone, Default)]
pub struct ServerTools {
    names: Vec<String>,
    settings: ToolSettings,
    /// Built once: the specs offered and the names taken.
    offered: ToolRegistry,
}

impl ServerTools {
    /// The built-in tools of these names (`tardbot_tools::registry::BUILTIN`), as configured; an
    /// unknown name is an error listing the known ones.
    pub fn new(names: &[&str], settings: ToolSettings) -> Result<ServerTools, String> {
        Ok(ServerTools {
            names: names.iter().map(|n| n.to_string()).collect(),
            offered: ToolRegistry::builtin_with(names, &settings)?,
            settings,
        })
    }

    pub fn names(&self) -> Vec<String> {
        self.offered.names()
    }

    /// Fresh instances of the tools for one completion.
    pub fn for_session(&self) -> Result<ToolRegistry, String> {
        let names: Vec<&str> = self.names.iter().map(String::as_str).collect();
        ToolRegistry::builtin_with(&names, &self.settings)
    }
}

/// The routes.
pub fn router(state: Arc<ServerState>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(models))
        .route("/v1/models/{*id}", get(model))
        .route("/v1/chat/completions", post(chat_completions))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// A JSON body with its content type (axum's `Json` needs serde_json's `raw_value`, which would
/// rebuild every crate that uses serde_json for one convenience).
fn json_response(v: Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

async fn index() -> Html<&'static str> {
    Html(INDEX_HTML)
}

async fn health(State(s): State<Arc<ServerState>>) -> Response {
    json_response(json!({"status": "ok", "model": s.model_id})).into_response()
}

async fn metrics(State(s): State<Arc<ServerState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(&s.model_id),
    )
        .into_response()
}

fn model_object(s: &ServerState) -> Value {
    json!({"id": s.model_id, "object": "model", "created": s.created, "owned_by": "tardbot",
           "context_length": s.context})
}

async fn models(State(s): State<Arc<ServerState>>) -> Response {
    json_response(json!({"object": "list", "data": [model_object(&s)]})).into_response()
}

async fn model(State(s): State<Arc<ServerState>>, Path(id): Path<String>) -> Response {
    if id == s.model_id {
        json_response(model_object(&s)).into_response()
    } else {
        ApiError::model_not_found(&id, &s.model_id).into_response()
    }
}

async fn not_found(uri: Uri) -> Response {
    ApiError::not_found(uri.path()).into_response()
}

/// Refuses what a web page of another origin could send: a body not declared as JSON (a "simple"
/// cross-origin POST, e.g. `text/plain`, needs no CORS preflight, so without this check any page the
/// user visits could make the server run its tools), and a request whose `Origin` is not this
/// server's own address.
fn same_origin_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
    if !json {
        return Err(ApiError {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ..ApiError::invalid(
                None,
                "the request body must be sent with `Content-Type: application/json`",
            )
        });
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let own = host.is_some_and(|h| {
            origin
                .to_str()
                .is_ok_and(|o| o == format!("http://{h}") || o == format!("https://{h}"))
        });
        if !own {
            return Err(ApiError {
                status: StatusCode::FORBIDDEN,
                ..ApiError::invalid(
                    None,
                    format!(
                        "requests from the web page at {} are refused: only this server's own chat page may call the API from a browser",
                        origin.to_str().unwrap_or("?")
                    ),
                )
            });
        }
    }
    Ok(())
}

async fn chat_completions(
    State(s): State<Arc<ServerState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let n = s.requests.fetch_add(1, Ordering::Relaxed);
    let response = match (same_origin_json(&headers), body) {
        (Err(e), _) => Err(e),
        (Ok(()), Ok(body)) => complete(&s, &body, n, started).await,
        (Ok(()), Err(e)) => Err(ApiError {
            status: e.status(),
            ..ApiError::invalid(
                None,
                format!("the request body could not be read ({e}); at most {MAX_BODY_BYTES} bytes"),
            )
        }),
    };
    match response {
        Ok(r) => {
            s.metrics.count_request(r.status().as_u16());
            r
        }
        Err(e) => {
            s.metrics.count_request(e.status.as_u16());
            e.into_response()
        }
    }
}

/// A request checked, admitted and started; the response streams or is collected.
async fn complete(
    s: &Arc<ServerState>,
    body: &[u8],
    n: u64,
    started: Instant,
) -> Result<Response, ApiError> {
    let req = api::parse_request(body, n)?;
    if req.model != s.model_id {
        return Err(ApiError::model_not_found(&req.model, &s.model_id));
    }
    let input = session_input(s, &req, n, started)?;
    let Some(admission) = s.engine.admit() else {
        return Err(ApiError::busy(s.engine.config().max_requests, 1));
    };
    let (tx, rx) = mpsc::channel::<Delta>(64);
    tokio::task::spawn_blocking(move || session::run(input, admission, tx));
    let meta = CompletionMeta {
        id: format!("chatcmpl-{n}"),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        model: s.model_id.clone(),
    };
    if req.stream {
        Ok(stream_response(meta, rx, req.include_usage))
    } else {
        collect_response(meta, rx).await
    }
}

/// The conversation with the tools on offer in its system turn, its prompt checked against the
/// context and `max_tokens`.
fn session_input(
    s: &ServerState,
    req: &ChatRequest,
    n: u64,
    started: Instant,
) -> Result<SessionInput, ApiError> {
    for (i, t) in req.client_tools.iter().enumerate() {
        if s.tools.offered.get(&t.name).is_some() {
            return Err(ApiError::invalid(
                Some(format!("tools[{i}].function.name")),
                format!(
                    "`{}` is a tool this server runs itself; rename yours",
                    t.name
                ),
            ));
        }
    }
    let mut specs = if req.tools_off {
        Vec::new()
    } else {
        s.tools.offered.specs()
    };
    if !req.tools_off {
        specs.extend(req.client_tools.iter().cloned());
    }
    let tools_on = !specs.is_empty();
    let mut conversation = req.conversation.clone();
    if tools_on {
        // As `generate --tools` and the exported chat template write it: the client's system text,
        // a blank line, the toolcall stage's tool prompt.
        let tools = tardbot_toolcall::tools_system_prompt(&specs);
        match conversation.messages.first_mut() {
            Some(m) if m.role == Role::System && !m.content.is_empty() => {
                m.content = format!("{}\n\n{tools}", m.content)
            }
            Some(m) if m.role == Role::System => m.content = tools,
            _ => conversation
                .messages
                .insert(0, Message::new(Role::System, tools)),
        }
    }
    let prompt = render_chat(&s.tokenizer, &conversation, true)
        .map_err(|e| ApiError::invalid(Some("messages".into()), e.to_string()))?
        .tokens
        .len();
    if prompt >= s.context {
        return Err(ApiError::invalid(
            Some("messages".into()),
            format!(
                "the prompt is {prompt} tokens, and the model's context is {} tokens: shorten the messages",
                s.context
            ),
        )
        .with_code("context_length_exceeded"));
    }
    let room = s.context - prompt;
    let max_tokens = match req.max_tokens {
        Some(m) if m > room => {
            return Err(ApiError::invalid(
                Some("max_tokens".into()),
                format!(
                    "max_tokens = {m} does not fit: the prompt is {prompt} tokens and the context {} tokens, so at most {room}",
                    s.context
                ),
            )
            .with_code("context_length_exceeded"));
        }
        Some(m) => m,
        None => room,
    };
    let mut loop_cfg = s.loop_cfg.clone();
    loop_cfg.client_tools = req.client_tools.iter().map(|t| t.name.clone()).collect();
    Ok(SessionInput {
        tokenizer: s.tokenizer.clone(),
        metrics: s.metrics.clone(),
        builtin: s
            .tools
            .for_session()
            .map_err(|e| ApiError::internal(format!("the server's tools: {e}")))?,
        loop_cfg,
        context: s.context,
        conversation,
        max_tokens,
        min_tokens: req.min_tokens,
        sampling: req.sampling.clone(),
        stop: req.stop.clone(),
        tools_on,
        call_id_prefix: format!("call_{n}_"),
        started,
    })
}

struct CompletionMeta {
    id: String,
    created: u64,
    model: String,
}

impl CompletionMeta {
    fn chunk(&self, delta: Value, finish: Option<FinishReason>) -> Value {
        json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null,
                         "finish_reason": finish.map(FinishReason::as_str)}],
        })
    }
}

/// A server-run tool as the response shows it (`tardbot_tool_runs`, beside the standard fields).
fn server_tool_json(name: &str, arguments: &Value, result: &str, error: bool) -> Value {
    json!({"name": name, "arguments": arguments, "result": result, "error": error})
}

/// Server-sent events in OpenAI's chunk format, ending `data: [DONE]`.
fn stream_response(meta: CompletionMeta, mut rx: mpsc::Receiver<Delta>, usage: bool) -> Response {
    let (tx, events) = mpsc::channel::<Event>(64);
    tokio::spawn(async move {
        let send = |v: Value| Event::default().data(v.to_string());
        let first = meta.chunk(json!({"role": "assistant", "content": ""}), None);
        if tx.send(send(first)).await.is_err() {
            return;
        }
        while let Some(d) = rx.recv().await {
            let mut out = Vec::new();
            match d {
                Delta::Reasoning(r) => out.push(meta.chunk(json!({"reasoning_content": r}), None)),
                Delta::Content(c) => out.push(meta.chunk(json!({"content": c}), None)),
                Delta::ServerTool {
                    name,
                    arguments,
                    result,
                    error,
                } => out.push(meta.chunk(
                    json!({"tardbot_tool_runs": [server_tool_json(&name, &arguments, &result, error)]}),
                    None,
                )),
                Delta::ClientCalls(calls) => {
                    let calls: Vec<Value> = calls
                        .iter()
                        .enumerate()
                        .map(|(i, (id, c))| {
                            let mut v = tool_call_json(id, c);
                            v["index"] = json!(i);
                            v
                        })
                        .collect();
                    out.push(meta.chunk(json!({"tool_calls": calls}), None));
                }
                Delta::Finished { reason, usage: u } => {
                    out.push(meta.chunk(json!({}), Some(reason)));
                    if usage {
                        let mut c = meta.chunk(json!({}), None);
                        c["choices"] = json!([]);
                        c["usage"] = u.to_json();
                        out.push(c);
                    }
                }
                Delta::Failed(e) => out.push(e.body()),
            }
            for v in out {
                if tx.send(send(v)).await.is_err() {
                    return;
                }
            }
        }
        let _ = tx.send(Event::default().data("[DONE]")).await;
    });
    let stream = futures_util::stream::unfold(events, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// The whole completion as one `chat.completion` object.
async fn collect_response(
    meta: CompletionMeta,
    mut rx: mpsc::Receiver<Delta>,
) -> Result<Response, ApiError> {
    let (mut content, mut reasoning) = (String::new(), String::new());
    let (mut calls, mut runs) = (Vec::new(), Vec::new());
    let mut end: Option<(FinishReason, Usage)> = None;
    while let Some(d) = rx.recv().await {
        match d {
            Delta::Reasoning(r) => reasoning.push_str(&r),
            Delta::Content(c) => content.push_str(&c),
            Delta::ServerTool {
                name,
                arguments,
                result,
                error,
            } => runs.push(server_tool_json(&name, &arguments, &result, error)),
            Delta::ClientCalls(c) => calls.extend(c.iter().map(|(id, c)| tool_call_json(id, c))),
            Delta::Finished { reason, usage } => end = Some((reason, usage)),
            Delta::Failed(e) => return Err(e),
        }
    }
    let Some((reason, usage)) = end else {
        return Err(ApiError::internal("the generation ended without an answer"));
    };
    let mut message = json!({
        "role": "assistant",
        "content": if content.is_empty() && !calls.is_empty() { Value::Null } else { json!(content) },
    });
    if !reasoning.is_empty() {
        message["reasoning_content"] = json!(reasoning);
    }
    if !calls.is_empty() {
        message["tool_calls"] = json!(calls);
    }
    if !runs.is_empty() {
        message["tardbot_tool_runs"] = json!(runs);
    }
    Ok((
        StatusCode::OK,
        json_response(json!({
            "id": meta.id, "object": "chat.completion", "created": meta.created, "model": meta.model,
            "choices": [{"index": 0, "message": message, "logprobs": null,
                         "finish_reason": reason.as_str()}],
            "usage": usage.to_json(),
        })),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_session_gets_its_own_tool_instances() {
        let tools = ServerTools::new(&["calculator", "browser"], ToolSettings::default()).unwrap();
        let (a, b) = (tools.for_session().unwrap(), tools.for_session().unwrap());
        for name in ["calculator", "browser"] {
            assert!(
                !Arc::ptr_eq(a.get(name).unwrap(), b.get(name).unwrap()),
                "{name} is shared"
            );
        }
        assert_eq!(tools.names(), ["calculator", "browser"]);
        assert!(ServerTools::new(&["teleport"], ToolSettings::default()).is_err());
    }
}
