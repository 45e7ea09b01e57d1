//! The stages this binary ships, in pipeline order.

use std::sync::Arc;
use tardbot_core::Stage;

pub type Registry = Vec<Arc<dyn Stage>>;

/// Every stage of the shipped pipeline.
pub fn stages() -> Registry {
    vec![
        Arc::new(tardbot_ingest::IngestStage),
        Arc::new(tardbot_tokenize::TokenizerStage),
        Arc::new(tardbot_tokenize::TokenizeStage),
        Arc::new(tardbot_pretrain::PretrainStage),
        Arc::new(tardbot_sft::SftStage),
        Arc::new(tardbot_toolcall::ToolcallStage),
        Arc::new(tardbot_cot::CotStage),
    ]
}
