//! `serve`: a trained TardBot model behind an OpenAI-compatible chat API and a web chat page.
//!
//! - [`api`]: the chat-completions request read field by field (every refusal names its field) and
//!   the response objects; [`error`]: the OpenAI error object with its HTTP status.
//! - [`engine`]: one thread owns the model and decodes every admitted request together (batched
//!   decode: one forward per step for all active sequences, each with its own KV cache and seeded
//!   sampler, so results equal decoding alone); a bounded admission (429 beyond it); a generation
//!   whose client went away is dropped.
//! - [`session`]: one completion: the tool loop of `tardbot-tools` over the engine, each turn's text
//!   split as it streams into reasoning, content and tool calls; built-in tools run server-side, the
//!   request's own tools come back as `tool_calls`.
//! - [`http`]: axum routes: `GET /v1/models`, `POST /v1/chat/completions` (JSON or server-sent
//!   events), `GET /health`, `GET /metrics` (Prometheus), the chat page at `/` (`web/index.html`,
//!   a static file built into the binary).
//!
//! Not here: loading a run's model (the pipeline's `serve` command does that and hands over a
//! [`tardbot_model::TardBot`] and its tokenizer), TLS and authentication (bind to 127.0.0.1, or
//! put a reverse proxy in front).

pub mod api;
pub mod bench;
pub mod engine;
pub mod error;
pub mod http;
pub mod metrics;
pub mod session;

pub use engine::{Engine, EngineConfig};
pub use error::ApiError;
pub use http::{ServerState, ServerTools, router};
pub use metrics::Metrics;

use std::sync::Arc;

/// Serves `state` on `listener` until `shutdown` completes (in-flight requests are finished).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<ServerState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
