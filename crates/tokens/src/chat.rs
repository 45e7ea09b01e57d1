//! The chat template (one function for every stage) and SFT packing with a loss mask.
//!
//! A conversation renders as
//!
//! ```text
//! <|system|>{system}<|end|>                       (optional, first)
//! <|user|>{text}<|end|>
//! <|assistant|><|think|>{thinking}<|/think|>{text}<|tool_call|>{"name":…,"arguments":…}<|/tool_call|><|end|>
//! <|tool_result|>{tool output}<|end|>
//! <|assistant|>{text}<|end|>
//! <|endoftext|>
//! ```
//!
//! (`<|think|>…<|/think|>` only when the turn has thinking; one `<|tool_call|>` block per call.)
//! The loss mask is 1 on everything an assistant produces: the tokens after `<|assistant|>` up to and
//! including its `<|end|>`; 0 on the prompt, the turn openers and tool results. Text is encoded as
//! plain text, so a user who types `<|assistant|>` gets those characters, not the control token.
//! With `generation_prompt`, rendering stops after an opening `<|assistant|>` (inference).

use crate::error::{Result, TokenizeError};
use crate::pack::pack;
use crate::shard::{ShardMeta, ShardSummary, write_shard};
use crate::special_tokens::Special;
use crate::tokenizer::LoadedTokenizer;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
    /// A tool's result, fed back to the model.
    Tool,
}

/// A call of a tool by the assistant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub name: String,
    #[serde(default)]
    pub arguments: serde_json::Value,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub role: Role,
    #[serde(default)]
    pub content: String,
    /// Assistant only: reasoning rendered inside think tags before the content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thinking: Option<String>,
    /// Assistant only: calls rendered after the content.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Message {
        Message {
            role,
            content: content.into(),
            thinking: None,
            tool_calls: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    pub messages: Vec<Message>,
}

/// One piece of a rendered conversation.
#[derive(Clone, Debug, PartialEq)]
pub enum Piece {
    Special(Special),
    Text(String),
}

/// The chat template: the conversation as pieces, each with its loss flag. Every renderer (tokens,
/// text) goes through this one function.
pub fn chat_template(conv: &Conversation, generation_prompt: bool) -> Result<Vec<(Piece, bool)>> {
    if conv.messages.is_empty() {
        return Err(TokenizeError::Chat(
            "the conversation has no messages".to_string(),
        ));
    }
    let mut out = Vec::new();
    let sp = |s| (Piece::Special(s), false);
    for (i, m) in conv.messages.iter().enumerate() {
        if m.role != Role::Assistant && (m.thinking.is_some() || !m.tool_calls.is_empty()) {
            return Err(TokenizeError::Chat(format!(
                "message {i} ({:?}) has thinking or tool calls; only assistant messages may",
                m.role
            )));
        }
        if m.role == Role::System && i != 0 {
            return Err(TokenizeError::Chat(format!(
                "message {i}: a system message must come first"
            )));
        }
        match m.role {
            Role::System => out.push(sp(Special::System)),
            Role::User => out.push(sp(Special::User)),
            Role::Tool => out.push(sp(Special::ToolResult)),
            Role::Assistant => out.push(sp(Special::Assistant)),
        }
        let loss = m.role == Role::Assistant;
        if let Some(t) = &m.thinking {
            out.push((Piece::Special(Special::ThinkOpen), loss));
            out.push((Piece::Text(t.clone()), loss));
            out.push((Piece::Special(Special::ThinkClose), loss));
        }
        if !m.content.is_empty() {
            out.push((Piece::Text(m.content.clone()), loss));
        }
        for c in &m.tool_calls {
            let json = serde_json::json!({"name": c.name, "arguments": c.arguments});
            out.push((Piece::Special(Special::ToolCallOpen), loss));
            out.push((Piece::Text(json.to_string()), loss));
            out.push((Piece::Special(Special::ToolCallClose), loss));
        }
        out.push((Piece::Special(Special::EndOfTurn), loss));
    }
    if generation_prompt {
        out.push(sp(Special::Assistant));
    } else {
        if !conv.messages.iter().any(|m| m.role == Role::Assistant) {
            return Err(TokenizeError::Chat(
                "the conversation has no assistant turn, so nothing to train on".to_string(),
            ));
        }
        out.push(sp(Special::Eos));
    }
    Ok(out)
}

/// The template as text (for display and for peers that tokenize text).
pub fn render_chat_text(conv: &Conversation, generation_prompt: bool) -> Result<String> {
    Ok(chat_template(conv, generation_prompt)?
        .into_iter()
        .map(|(p, _)| match p {
            Piece::Special(s) => s.text().to_string(),
            Piece::Text(t) => t,
        })
        .collect())
}

/// Tokens of a conversation and the loss mask (1 on assistant tokens), of equal length.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RenderedChat {
    pub tokens: Vec<u32>,
    pub loss_mask: Vec<u8>,
}

/// Renders a conversation to tokens through [`chat_template`].
pub fn render_chat(
    tok: &LoadedTokenizer,
    conv: &Conversation,
    generation_prompt: bool,
) -> Result<RenderedChat> {
    let mut r = RenderedChat::default();
    for (piece, loss) in chat_template(conv, generation_prompt)? {
        match piece {
            Piece::Special(s) => r.tokens.push(s.id()),
            Piece::Text(t) => r.tokens.extend(tok.encode(&t)?),
        }
        r.loss_mask.resize(r.tokens.len(), loss as u8);
    }
    Ok(r)
}

/// Writes rendered conversations as a token shard with a loss mask, best-fit packed into
/// `seq_len + 1` windows; conversations longer than a window are cropped (reported as crop %).
pub fn write_chat_shard(
    dir: &Path,
    tok: &LoadedTokenizer,
    chats: &[RenderedChat],
    seq_len: usize,
) -> Result<ShardSummary> {
    let n: usize = chats.iter().map(|c| c.tokens.len()).sum();
    let mut tokens = Vec::with_capacity(n);
    let mut mask = Vec::with_capacity(n);
    let mut offsets = Vec::with_capacity(chats.len() + 1);
    offsets.push(0u64);
    for c in chats {
        if c.tokens.len() != c.loss_mask.len() {
            return Err(TokenizeError::Chat(format!(
                "a rendered conversation has {} tokens but {} mask entries",
                c.tokens.len(),
                c.loss_mask.len()
            )));
        }
        tokens.extend_from_slice(&c.tokens);
        mask.extend_from_slice(&c.loss_mask);
        offsets.push(tokens.len() as u64);
    }
    let packing = pack(&offsets, seq_len, false);
    let meta = ShardMeta {
        tokenizer_hash: tok.hash.clone(),
        vocab_size: tok.vocab_size() as u32,
        seq_len: seq_len as u32,
    };
    write_shard(dir, &meta, &tokens, &offsets, Some(&mask), &packing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_marks_only_assistant_output() {
        let mut a = Message::new(Role::Assistant, "It is 4.");
        a.thinking = Some("2+2".to_string());
        a.tool_calls.push(ToolCall {
            name: "calc".to_string(),
            arguments: serde_json::json!({"x": 2}),
        });
        let conv = Conversation {
            messages: vec![
                Message::new(Role::System, "Be brief."),
                Message::new(Role::User, "2+2?"),
                a,
                Message::new(Role::Tool, "4"),
                Message::new(Role::Assistant, "4"),
            ],
        };
        let text = render_chat_text(&conv, false).unwrap();
        assert_eq!(
            text,
            "<|system|>Be brief.<|end|><|user|>2+2?<|end|><|assistant|><|think|>2+2<|/think|>It is 4.\
             <|tool_call|>{\"arguments\":{\"x\":2},\"name\":\"calc\"}<|/tool_call|><|end|>\
             <|tool_result|>4<|end|><|assistant|>4<|end|><|endoftext|>"
        );
        let trained: String = chat_template(&conv, false)
            .unwrap()
            .into_iter()
            .filter(|(_, l)| *l)
            .map(|(p, _)| match p {
                Piece::Special(s) => s.text().to_string(),
                Piece::Text(t) => t,
            })
            .collect();
        assert_eq!(
            trained,
            "<|think|>2+2<|/think|>It is 4.<|tool_call|>{\"arguments\":{\"x\":2},\"name\":\"calc\"}<|/tool_call|><|end|>4<|end|>"
        );
        let prompt = render_chat_text(
            &Conversation {
                messages: conv.messages[..2].to_vec(),
            },
            true,
        )
        .unwrap();
        assert!(prompt.ends_with("<|user|>2+2?<|end|><|assistant|>"));
    }

    #[test]
    fn malformed_conversations_are_refused() {
        assert!(chat_template(&Conversation { messages: vec![] }, false).is_err());
        let only_user = Conversation {
            messages: vec![Message::new(Role::User, "hi")],
        };
        assert!(
            chat_template(&only_user, false)
                .unwrap_err()
                .to_string()
                .contains("no assistant")
        );
        let mut u = Message::new(Role::User, "hi");
        u.thinking = Some("x".into());
        assert!(chat_template(&Conversation { messages: vec![u] }, true).is_err());
        let late_system = Conversation {
            messages: vec![
                Message::new(Role::User, "a"),
                Message::new(Role::System, "b"),
            ],
        };
        assert!(chat_template(&late_system, true).is_err());
    }
}
