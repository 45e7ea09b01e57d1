//! The server's tests: the HTTP API with a real client on 127.0.0.1 against a model trained here,
//! the official `openai` Python client, and the chat page in headless Chromium.

mod browser;
mod fixture;
mod http;
mod openai_python;
