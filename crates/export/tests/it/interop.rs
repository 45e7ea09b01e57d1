//! Hugging Face transformers and llama.cpp run our exports: the checks are Python scripts in
//! `tests/interop/` (they need `torch`, `transformers` and `llama-cpp-python`, installed by
//! `tests/interop/setup.sh`); this test writes our reference figures (logits, greedy tokens, chat
//! token ids) beside the exports and runs them. Without that environment it skips with a message.
