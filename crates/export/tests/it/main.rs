//! The export crate's integration tests: exports of real (randomly initialised) models checked by
//! reading them back (`files`), and by Hugging Face transformers and llama.cpp themselves where the
//! interop Python environment exists (`interop`; `tests/interop/setup.sh` makes it).

mod files;
mod fixture;
mod interop;
