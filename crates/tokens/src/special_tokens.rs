//! The special tokens of TardBot's tokenizer, defined once for every stage.
//!
//! They take the first ids of the vocabulary, in the order of [`SPECIAL_TOKENS`], so that
//! `Special::Eos.id() == 0` for every tokenizer this crate trains (checked when a tokenizer is loaded).
//! Literal occurrences of these strings inside *data* are encoded as ordinary text (see
//! [`crate::tokenizer::load_tokenizer`]); only the chat template and the packer emit the ids.

/// One special token's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Special {
    /// Document boundary: ends every pretraining document and every packed conversation (also BOS).
    Eos,
    /// Padding of packed windows (never a training target).
    Pad,
    /// Opens a system turn.
    System,
    /// Opens a user turn.
    User,
    /// Opens an assistant turn.
    Assistant,
    /// Opens a tool result turn (what a tool returned, fed back to the model).
    ToolResult,
    /// Ends a turn (system, user, assistant or tool result). The assistant emits it to stop.
    EndOfTurn,
    /// Opens a tool call (JSON `{"name": …, "arguments": …}`) inside an assistant turn.
    ToolCallOpen,
    /// Closes a tool call.
    ToolCallClose,
    /// Opens the reasoning of an assistant turn.
    ThinkOpen,
    /// Closes the reasoning.
    ThinkClose,
}

/// The table: role and text, in id order (`id == index`).
pub const SPECIAL_TOKENS: &[(Special, &str)] = &[
    (Special::Eos, "<|endoftext|>"),
    (Special::Pad, "<|pad|>"),
    (Special::System, "<|system|>"),
    (Special::User, "<|user|>"),
    (Special::Assistant, "<|assistant|>"),
    (Special::ToolResult, "<|tool_result|>"),
    (Special::EndOfTurn, "<|end|>"),
    (Special::ToolCallOpen, "<|tool_call|>"),
    (Special::ToolCallClose, "<|/tool_call|>"),
    (Special::ThinkOpen, "<|think|>"),
    (Special::ThinkClose, "<|/think|>"),
];

/// Number of special tokens (they hold ids `0..N_SPECIAL`).
pub const N_SPECIAL: usize = SPECIAL_TOKENS.len();

impl Special {
    /// The token id (its index in [`SPECIAL_TOKENS`]).
    pub fn id(self) -> u32 {
        SPECIAL_TOKENS
            .iter()
            .position(|(s, _)| *s == self)
            .unwrap_or(0) as u32
    }

    /// The token's text in `tokenizer.json`.
    pub fn text(self) -> &'static str {
        SPECIAL_TOKENS
            .iter()
            .find(|(s, _)| *s == self)
            .map_or("", |(_, t)| t)
    }

    /// The special token with this id, if it is one.
    pub fn from_id(id: u32) -> Option<Special> {
        SPECIAL_TOKENS.get(id as usize).map(|(s, _)| *s)
    }
}

/// Convenience constants for hot loops.
pub const EOS_ID: u32 = 0;
pub const PAD_ID: u32 = 1;

/// The model's embedding rows for a tokenizer of `vocab_size` tokens: rounded up to a multiple of 64
/// (aligned matmuls); the extra rows are never produced by the tokenizer.
pub fn padded_vocab_size(vocab_size: usize) -> usize {
    vocab_size.div_ceil(64) * 64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_table_and_texts_are_unique() {
        assert_eq!(Special::Eos.id(), EOS_ID);
        assert_eq!(Special::Pad.id(), PAD_ID);
        for (i, (s, t)) in SPECIAL_TOKENS.iter().enumerate() {
            assert_eq!(s.id() as usize, i);
            assert_eq!(s.text(), *t);
            assert_eq!(Special::from_id(i as u32), Some(*s));
            assert_eq!(SPECIAL_TOKENS.iter().filter(|(_, u)| u == t).count(), 1);
        }
        assert_eq!(Special::from_id(N_SPECIAL as u32), None);
    }

    #[test]
    fn vocab_is_padded_to_64() {
        assert_eq!(padded_vocab_size(32_000), 32_000);
        assert_eq!(padded_vocab_size(32_001), 32_064);
        assert_eq!(padded_vocab_size(1), 64);
        assert_eq!(padded_vocab_size(300), 320);
    }
}
