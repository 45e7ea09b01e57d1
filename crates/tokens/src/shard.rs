//! Token shards on disk: a flat token file plus an index, memory-mapped for reading.
//!
//! A shard is a directory (one `token-shard` artifact) holding:
//!
//! - `tokens.bin` — every document's tokens back to back (each document ends with `<|endoftext|>`),
//!   little-endian `u16` when the vocabulary has at most 65,536 tokens, else `u32`.
//! - `mask.bin` — chat/SFT shards only: one byte per token, 1 where the token is a loss target
//!   (assistant tokens).
//! - `index.idx` — a 256-byte header then little-endian arrays, each starting 8-byte aligned:
//!
//! | offset | field |
//! |---|---|
//! | 0 | magic `TBTOKIDX` |
//! | 8 | `u32` format version (1) · `u32` bytes per token (2 or 4) |
//! | 16 | tokenizer hash (32 raw bytes, BLAKE3 of `tokenizer.json`) |
//! | 48 | BLAKE3 of `tokens.bin` · 80: BLAKE3 of `mask.bin` (zeros without mask) |
//! | 112 | `u32` seq_len · `u32` flags (bit 0: has mask) · `u32` vocab size · `u32` pad id |
//! | 128 | `u64` n_tokens, n_docs, n_segments, n_windows, pad_tokens, cropped_tokens |
//! | 176 | BLAKE3 of the arrays (bytes 256..end) · 208: BLAKE3 of bytes 0..208 |
//! | 256 | `u64 doc_offsets[n_docs + 1]` (token offsets of documents) |
//! | … | `u64 seg_start[n_segments]`, `u32 seg_len[n_segments]` (padded to 8 bytes) |
//! | … | `u64 win_offsets[n_windows + 1]` (window `w` = segments `win_offsets[w]..win_offsets[w+1]`) |
//!
//! Compared with Megatron's `.bin/.idx`: the same flat token file and document index, plus the
//! packed windows (so training reads windows by index, no sample-index build at start-up), the
//! tokenizer identity, and checksums. [`TokenShard::open`] checks sizes, the header and array
//! checksums and the index's structure (so reads never go out of bounds), and the tokenizer hash;
//! [`TokenShard::verify_tokens`] also hashes the token file.

use crate::error::{Result, TokenizeError, io_err};
use crate::pack::{PackStats, Packing};
use crate::special_tokens::PAD_ID;
use memmap2::Mmap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

pub const TOKENS_FILE: &str = "tokens.bin";
pub const MASK_FILE: &str = "mask.bin";
pub const INDEX_FILE: &str = "index.idx";
const MAGIC: &[u8; 8] = b"TBTOKIDX";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 256;
const HEADER_HASHED: usize = 208;
const FLAG_MASK: u32 = 1;

/// Doc id of padding slots in a [`crate::loader::Batch`].
pub const PAD_DOC: u32 = u32::MAX;

/// The header of a shard's index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardHeader {
    pub bytes_per_token: u32,
    pub tokenizer_hash: String,
    pub tokens_hash: [u8; 32],
    pub mask_hash: [u8; 32],
    pub seq_len: u32,
    pub has_mask: bool,
    pub vocab_size: u32,
    pub pad_id: u32,
    pub n_tokens: u64,
    pub n_docs: u64,
    pub n_segments: u64,
    pub n_windows: u64,
    pub pad_tokens: u64,
    pub cropped_tokens: u64,
}

impl ShardHeader {
    /// Window length, `seq_len + 1`.
    pub fn window(&self) -> usize {
        self.seq_len as usize + 1
    }

    fn layout(&self) -> Layout {
        let docs = HEADER_LEN;
        let seg_start = docs + 8 * (self.n_docs as usize + 1);
        let seg_len = seg_start + 8 * self.n_segments as usize;
        let win = seg_len + (4 * self.n_segments as usize).div_ceil(8) * 8;
        let end = win + 8 * (self.n_windows as usize + 1);
        Layout {
            docs,
            seg_start,
            seg_len,
            win,
            end,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Layout {
    docs: usize,
    seg_start: usize,
    seg_len: usize,
    win: usize,
    end: usize,
}

/// What a shard holds, for reports and metrics.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ShardSummary {
    pub dir: PathBuf,
    pub tokens: u64,
    pub docs: u64,
    pub windows: u64,
    pub bytes: u64,
    pub stats: PackStats,
}

/// Identity of the data a shard is written for.
#[derive(Clone, Debug)]
pub struct ShardMeta {
    /// Hex BLAKE3 of `tokenizer.json`.
    pub tokenizer_hash: String,
    pub vocab_size: u32,
    pub seq_len: u32,
}

/// Bytes per token on disk for a vocabulary of `vocab_size` tokens.
pub fn bytes_per_token(vocab_size: usize) -> u32 {
    if vocab_size <= 1 << 16 { 2 } else { 4 }
}

fn hex_to_32(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Writes a shard into `dir` (created): tokens of the documents (`doc_offsets` into `tokens`), an
/// optional loss mask (one byte per token) and their packing.
pub fn write_shard(
    dir: &Path,
    meta: &ShardMeta,
    tokens: &[u32],
    doc_offsets: &[u64],
    mask: Option<&[u8]>,
    packing: &Packing,
) -> Result<ShardSummary> {
    let corrupt = |message: String| TokenizeError::CorruptShard {
        path: dir.to_path_buf(),
        message,
    };
    let tokenizer_hash = hex_to_32(&meta.tokenizer_hash).ok_or_else(|| {
        corrupt(format!(
            "tokenizer hash `{}` is not 64 hex digits",
            meta.tokenizer_hash
        ))
    })?;
    if doc_offsets.last().copied().unwrap_or(0) != tokens.len() as u64 {
        return Err(corrupt(
            "document offsets do not end at the token count".to_string(),
        ));
    }
    if let Some(m) = mask
        && m.len() != tokens.len()
    {
        return Err(corrupt(format!(
            "mask has {} entries for {} tokens",
            m.len(),
            tokens.len()
        )));
    }
    if packing.window != meta.seq_len as usize + 1 {
        return Err(corrupt(format!(
            "packed for windows of {} tokens, not seq_len + 1 = {}",
            packing.window,
            meta.seq_len + 1
        )));
    }
    if let Some(t) = tokens.iter().find(|&&t| t >= meta.vocab_size) {
        return Err(corrupt(format!(
            "token id {t} is outside the vocabulary of {}",
            meta.vocab_size
        )));
    }
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let bpt = bytes_per_token(meta.vocab_size as usize);

    // tokens.bin
    let path = dir.join(TOKENS_FILE);
    let mut hasher = blake3::Hasher::new();
    let mut out = BufWriter::with_capacity(1 << 20, File::create(&path).map_err(io_err(&path))?);
    let mut buf = Vec::with_capacity(1 << 16);
    for chunk in tokens.chunks(1 << 14) {
        buf.clear();
        if bpt == 2 {
            buf.extend(chunk.iter().flat_map(|&t| (t as u16).to_le_bytes()));
        } else {
            buf.extend(chunk.iter().flat_map(|&t| t.to_le_bytes()));
        }
        hasher.update(&buf);
        out.write_all(&buf).map_err(io_err(&path))?;
    }
    out.flush().map_err(io_err(&path))?;
    let tokens_hash = *hasher.finalize().as_bytes();

    // mask.bin
    let mut mask_hash = [0u8; 32];
    if let Some(m) = mask {
        let path = dir.join(MASK_FILE);
        std::fs::write(&path, m).map_err(io_err(&path))?;
        mask_hash = *blake3::hash(m).as_bytes();
    }

    let header = ShardHeader {
        bytes_per_token: bpt,
        tokenizer_hash: meta.tokenizer_hash.clone(),
        tokens_hash,
        mask_hash,
        seq_len: meta.seq_len,
        has_mask: mask.is_some(),
        vocab_size: meta.vocab_size,
        pad_id: PAD_ID,
        n_tokens: tokens.len() as u64,
        n_docs: doc_offsets.len().saturating_sub(1) as u64,
        n_segments: packing.seg_len.len() as u64,
        n_windows: packing.n_windows() as u64,
        pad_tokens: packing.stats.pad_tokens,
        cropped_tokens: packing.stats.cropped_tokens,
    };
    let layout = header.layout();
    let mut body = Vec::with_capacity(layout.end - HEADER_LEN);
    body.extend(doc_offsets.iter().flat_map(|x| x.to_le_bytes()));
    body.extend(packing.seg_start.iter().flat_map(|x| x.to_le_bytes()));
    body.extend(packing.seg_len.iter().flat_map(|x| x.to_le_bytes()));
    body.resize(layout.win - HEADER_LEN, 0);
    body.extend(packing.win_offsets.iter().flat_map(|x| x.to_le_bytes()));
    if packing.win_offsets.is_empty() {
        body.extend(0u64.to_le_bytes());
    }
    debug_assert_eq!(body.len(), layout.end - HEADER_LEN);

    let mut head = vec![0u8; HEADER_LEN];
    head[0..8].copy_from_slice(MAGIC);
    head[8..12].copy_from_slice(&VERSION.to_le_bytes());
    head[12..16].copy_from_slice(&bpt.to_le_bytes());
    head[16..48].copy_from_slice(&tokenizer_hash);
    head[48..80].copy_from_slice(&header.tokens_hash);
    head[80..112].copy_from_slice(&header.mask_hash);
    let flags = if header.has_mask { FLAG_MASK } else { 0 };
    for (i, v) in [header.seq_len, flags, header.vocab_size, header.pad_id]
        .iter()
        .enumerate()
    {
        head[112 + 4 * i..116 + 4 * i].copy_from_slice(&v.to_le_bytes());
    }
    let counts = [
        header.n_tokens,
        header.n_docs,
        header.n_segments,
        header.n_windows,
        header.pad_tokens,
        header.cropped_tokens,
    ];
    for (i, v) in counts.iter().enumerate() {
        head[128 + 8 * i..136 + 8 * i].copy_from_slice(&v.to_le_bytes());
    }
    head[176..208].copy_from_slice(blake3::hash(&body).as_bytes());
    let header_hash = *blake3::hash(&head[..HEADER_HASHED]).as_bytes();
    head[208..240].copy_from_slice(&header_hash);
    let path = dir.join(INDEX_FILE);
    let mut f = File::create(&path).map_err(io_err(&path))?;
    f.write_all(&head).map_err(io_err(&path))?;
    f.write_all(&body).map_err(io_err(&path))?;
    f.flush().map_err(io_err(&path))?;

    let bytes =
        header.n_tokens * bpt as u64 + mask.map_or(0, |m| m.len() as u64) + layout.end as u64;
    let mut stats = packing.stats;
    stats.docs = header.n_docs;
    Ok(ShardSummary {
        dir: dir.to_path_buf(),
        tokens: header.n_tokens,
        docs: header.n_docs,
        windows: header.n_windows,
        bytes,
        stats,
    })
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn map(path: &Path) -> Result<Mmap> {
    let f = File::open(path).map_err(io_err(path))?;
    // SAFETY: shards are immutable once published (written to a staging directory, then renamed);
    // nothing in this project writes to a published shard while it is mapped.
    unsafe { Mmap::map(&f) }.map_err(io_err(path))
}

/// A memory-mapped, checked token shard.
pub struct TokenShard {
    dir: PathBuf,
    header: ShardHeader,
    layout: Layout,
    tokens: Mmap,
    mask: Option<Mmap>,
    index: Mmap,
}

impl std::fmt::Debug for TokenShard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenShard")
            .field("dir", &self.dir)
            .field("header", &self.header)
            .finish()
    }
}

impl TokenShard {
    /// Opens and checks a shard (see the module docs). With `expected_tokenizer`, a shard written with
    /// another tokenizer is an error.
    pub fn open(dir: &Path, expected_tokenizer: Option<&str>) -> Result<TokenShard> {
        let idx_path = dir.join(INDEX_FILE);
        let corrupt = |file: &Path, message: String| TokenizeError::CorruptShard {
            path: file.to_path_buf(),
            message,
        };
        let index = map(&idx_path)?;
        if index.len() < HEADER_LEN {
            return Err(corrupt(
                &idx_path,
                format!(
                    "index is truncated: {} bytes, shorter than its {HEADER_LEN}-byte header",
                    index.len()
                ),
            ));
        }
        if &index[0..8] != MAGIC {
            return Err(corrupt(
                &idx_path,
                "not a TardBot token index (bad magic)".to_string(),
            ));
        }
        if index[208..240] != *blake3::hash(&index[..HEADER_HASHED]).as_bytes() {
            return Err(corrupt(&idx_path, "header checksum mismatch".to_string()));
        }
        let version = le_u32(&index, 8);
        if version != VERSION {
            return Err(corrupt(
                &idx_path,
                format!("format version {version}, this build reads {VERSION}"),
            ));
        }
        let mut tokens_hash = [0u8; 32];
        tokens_hash.copy_from_slice(&index[48..80]);
        let mut mask_hash = [0u8; 32];
        mask_hash.copy_from_slice(&index[80..112]);
        let header = ShardHeader {
            bytes_per_token: le_u32(&index, 12),
            tokenizer_hash: to_hex(&index[16..48]),
            tokens_hash,
            mask_hash,
            seq_len: le_u32(&index, 112),
            has_mask: le_u32(&index, 116) & FLAG_MASK != 0,
            vocab_size: le_u32(&index, 120),
            pad_id: le_u32(&index, 124),
            n_tokens: le_u64(&index, 128),
            n_docs: le_u64(&index, 136),
            n_segments: le_u64(&index, 144),
            n_windows: le_u64(&index, 152),
            pad_tokens: le_u64(&index, 160),
            cropped_tokens: le_u64(&index, 168),
        };
        if !matches!(header.bytes_per_token, 2 | 4) {
            return Err(corrupt(
                &idx_path,
                format!("{} bytes per token", header.bytes_per_token),
            ));
        }
        let layout = header.layout();
        if index.len() != layout.end {
            return Err(corrupt(
                &idx_path,
                format!(
                    "index is truncated or padded: {} bytes, the header's counts need {}",
                    index.len(),
                    layout.end
                ),
            ));
        }
        if index[176..208] != *blake3::hash(&index[HEADER_LEN..]).as_bytes() {
            return Err(corrupt(&idx_path, "index checksum mismatch".to_string()));
        }
        if let Some(expected) = expected_tokenizer
            && expected != header.tokenizer_hash
        {
            return Err(TokenizeError::TokenizerMismatch {
                path: dir.to_path_buf(),
                expected: expected.to_string(),
                found: header.tokenizer_hash,
            });
        }
        let tok_path = dir.join(TOKENS_FILE);
        let tokens = map(&tok_path)?;
        let want = header.n_tokens * header.bytes_per_token as u64;
        if tokens.len() as u64 != want {
            return Err(corrupt(
                &tok_path,
                format!(
                    "token file is truncated: the index says {} tokens ({want} bytes), the file has {} bytes",
                    header.n_tokens,
                    tokens.len()
                ),
            ));
        }
        let mask = if header.has_mask {
            let p = dir.join(MASK_FILE);
            let m = map(&p)?;
            if m.len() as u64 != header.n_tokens {
                return Err(corrupt(
                    &p,
                    format!(
                        "mask file is truncated: {} bytes for {} tokens",
                        m.len(),
                        header.n_tokens
                    ),
                ));
            }
            Some(m)
        } else {
            None
        };
        let shard = TokenShard {
            dir: dir.to_path_buf(),
            header,
            layout,
            tokens,
            mask,
            index,
        };
        shard.check_structure().map_err(|m| corrupt(&idx_path, m))?;
        Ok(shard)
    }

    /// Offsets are monotone and in bounds; every window fits `seq_len + 1` tokens.
    fn check_structure(&self) -> std::result::Result<(), String> {
        let h = &self.header;
        let mut prev = 0;
        for d in 0..=h.n_docs as usize {
            let o = self.doc_offset(d);
            if o < prev || o > h.n_tokens || (d == 0 && o != 0) {
                return Err(format!(
                    "document offset {d} = {o} is out of order or out of bounds"
                ));
            }
            prev = o;
        }
        if prev != h.n_tokens {
            return Err(format!(
                "documents end at {prev}, not at n_tokens = {}",
                h.n_tokens
            ));
        }
        for s in 0..h.n_segments as usize {
            let (start, len) = self.segment(s);
            if len == 0 || start + len as u64 > h.n_tokens {
                return Err(format!("segment {s} ({start}+{len}) is out of bounds"));
            }
        }
        let mut prev = 0;
        for w in 0..h.n_windows as usize {
            let (a, b) = (self.win_offset(w), self.win_offset(w + 1));
            if a != prev || b < a || b > h.n_segments {
                return Err(format!("window {w} has bad segment range {a}..{b}"));
            }
            let total: u64 = (a..b).map(|s| self.segment(s as usize).1 as u64).sum();
            if total > h.window() as u64 {
                return Err(format!(
                    "window {w} holds {total} tokens, more than {}",
                    h.window()
                ));
            }
            prev = b;
        }
        if self.win_offset(h.n_windows as usize) != h.n_segments {
            return Err("windows do not cover all segments".to_string());
        }
        Ok(())
    }

    /// Hashes `tokens.bin` (and `mask.bin`) and compares with the index: catches bit rot that keeps
    /// the size.
    pub fn verify_tokens(&self) -> Result<()> {
        let check = |file: &str, data: &[u8], want: &[u8; 32]| {
            if blake3::Hasher::new()
                .update_rayon(data)
                .finalize()
                .as_bytes()
                != want
            {
                Err(TokenizeError::CorruptShard {
                    path: self.dir.join(file),
                    message: "content checksum mismatch".to_string(),
                })
            } else {
                Ok(())
            }
        };
        check(TOKENS_FILE, &self.tokens, &self.header.tokens_hash)?;
        if let Some(m) = &self.mask {
            check(MASK_FILE, m, &self.header.mask_hash)?;
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn header(&self) -> &ShardHeader {
        &self.header
    }
    pub fn n_windows(&self) -> usize {
        self.header.n_windows as usize
    }
    pub fn n_docs(&self) -> usize {
        self.header.n_docs as usize
    }
    pub fn n_tokens(&self) -> u64 {
        self.header.n_tokens
    }

    fn doc_offset(&self, d: usize) -> u64 {
        le_u64(&self.index, self.layout.docs + 8 * d)
    }
    fn win_offset(&self, w: usize) -> u64 {
        le_u64(&self.index, self.layout.win + 8 * w)
    }

    /// Segment `s`: (token offset, length).
    pub fn segment(&self, s: usize) -> (u64, u32) {
        (
            le_u64(&self.index, self.layout.seg_start + 8 * s),
            le_u32(&self.index, self.layout.seg_len + 4 * s),
        )
    }

    /// Token range of document `d`.
    pub fn doc_range(&self, d: usize) -> std::ops::Range<u64> {
        self.doc_offset(d)..self.doc_offset(d + 1)
    }

    /// Segments of window `w`.
    pub fn window_segments(&self, w: usize) -> impl Iterator<Item = (u64, u32)> + '_ {
        (self.win_offset(w)..self.win_offset(w + 1)).map(|s| self.segment(s as usize))
    }

    /// Appends tokens `range` to `out`.
    pub fn read_tokens(&self, range: std::ops::Range<u64>, out: &mut Vec<u32>) {
        let n = (range.end - range.start) as usize;
        let at = out.len();
        out.resize(at + n, 0);
        self.copy_tokens(range.start, &mut out[at..]);
    }

    fn copy_tokens(&self, start: u64, out: &mut [u32]) {
        let bpt = self.header.bytes_per_token as usize;
        let from = start as usize * bpt;
        let bytes = &self.tokens[from..from + out.len() * bpt];
        if bpt == 2 {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = u16::from_le_bytes([c[0], c[1]]) as u32;
            }
        } else {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
    }

    /// Materialises window `w` into rows of `seq_len + 1` slots:
    /// - `tokens`: the window's tokens, padding filled with the pad id;
    /// - `doc_ids`: segment number inside the window (0, 1, …), [`PAD_DOC`] on padding; attention is
    ///   allowed only between equal ids;
    /// - `positions`: position inside the segment (restarts at 0), 0 on padding;
    /// - `loss_mask[t]`: 1 when `tokens[t]` is a training target, i.e. it is predicted from slot
    ///   `t - 1` of the same segment (and, in chat shards, it is an assistant token).
    pub fn read_window(
        &self,
        w: usize,
        tokens: &mut [u32],
        doc_ids: &mut [u32],
        positions: &mut [u32],
        loss_mask: &mut [u8],
    ) {
        let mut at = 0usize;
        for (k, (start, len)) in self.window_segments(w).enumerate() {
            let len = len as usize;
            self.copy_tokens(start, &mut tokens[at..at + len]);
            doc_ids[at..at + len].fill(k as u32);
            for (j, p) in positions[at..at + len].iter_mut().enumerate() {
                *p = j as u32;
            }
            match &self.mask {
                Some(m) => {
                    let src = &m[start as usize..start as usize + len];
                    loss_mask[at..at + len].copy_from_slice(src);
                }
                None => loss_mask[at..at + len].fill(1),
            }
            loss_mask[at] = 0;
            at += len;
        }
        tokens[at..].fill(self.header.pad_id);
        doc_ids[at..].fill(PAD_DOC);
        positions[at..].fill(0);
        loss_mask[at..].fill(0);
    }
}

/// Which half of the data a document belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
}

impl Split {
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
        }
    }
}

/// The split of a `token-shard` artifact, from its path (`…/train/<name>` or `…/val/<name>`).
pub fn shard_split(path: &Path) -> Option<Split> {
    match path.parent()?.file_name()?.to_str()? {
        "train" => Some(Split::Train),
        "val" => Some(Split::Val),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::pack;

    const HASH: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn sample(dir: &Path, vocab: u32, mask: bool) -> (Vec<u32>, Vec<u64>) {
        let tokens: Vec<u32> = (0..50u32).map(|i| (i * 7919) % vocab).collect();
        let offsets = vec![0, 5, 17, 30, 50];
        let m: Vec<u8> = (0..50).map(|i| (i % 3 == 0) as u8).collect();
        let meta = ShardMeta {
            tokenizer_hash: HASH.to_string(),
            vocab_size: vocab,
            seq_len: 7,
        };
        write_shard(
            dir,
            &meta,
            &tokens,
            &offsets,
            mask.then_some(&m[..]),
            &pack(&offsets, 7, true),
        )
        .unwrap();
        (tokens, offsets)
    }

    #[test]
    fn written_shard_reads_back_in_both_dtypes() {
        for (vocab, bpt) in [(1000u32, 2u32), (100_000, 4)] {
            let dir = tempfile::tempdir().unwrap();
            let (tokens, offsets) = sample(dir.path(), vocab, false);
            let s = TokenShard::open(dir.path(), Some(HASH)).unwrap();
            s.verify_tokens().unwrap();
            assert_eq!(s.header().bytes_per_token, bpt);
            assert_eq!(s.n_docs(), 4);
            for d in 0..4 {
                let mut out = Vec::new();
                s.read_tokens(s.doc_range(d), &mut out);
                assert_eq!(out, tokens[offsets[d] as usize..offsets[d + 1] as usize]);
            }
            // Windows: every slot is a token of its segment or padding, targets never cross segments.
            let w = s.header().window();
            let (mut t, mut d, mut p, mut m) = (vec![0; w], vec![0; w], vec![0; w], vec![0u8; w]);
            let mut covered = 0;
            for win in 0..s.n_windows() {
                s.read_window(win, &mut t, &mut d, &mut p, &mut m);
                for i in 0..w {
                    if d[i] == PAD_DOC {
                        assert_eq!((t[i], m[i]), (PAD_ID, 0));
                    } else {
                        assert_eq!(m[i] == 1, p[i] > 0);
                        covered += m[i] as usize;
                    }
                }
            }
            // Each next-token pair of each document is a target exactly once: 50 tokens - 4 docs.
            assert_eq!(covered, 46);
        }
    }

    #[test]
    fn mask_is_stored_and_applied() {
        let dir = tempfile::tempdir().unwrap();
        sample(dir.path(), 1000, true);
        let s = TokenShard::open(dir.path(), None).unwrap();
        assert!(s.header().has_mask);
        let w = s.header().window();
        let (mut t, mut d, mut p, mut m) = (vec![0; w], vec![0; w], vec![0; w], vec![0u8; w]);
        let (start, _) = s.window_segments(0).next().unwrap();
        s.read_window(0, &mut t, &mut d, &mut p, &mut m);
        for i in 1..w {
            if d[i] == 0 && p[i] > 0 {
                assert_eq!(m[i], (start + i as u64).is_multiple_of(3) as u8);
            }
        }
    }

    #[test]
    fn damage_is_detected_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        sample(dir.path(), 1000, false);
        // Wrong tokenizer.
        let other = HASH.replace('0', "1");
        let e = TokenShard::open(dir.path(), Some(&other)).unwrap_err();
        assert!(matches!(e, TokenizeError::TokenizerMismatch { .. }), "{e}");
        // Bit flip in the tokens: size checks pass, the content hash does not.
        let tok = dir.path().join(TOKENS_FILE);
        let mut bytes = std::fs::read(&tok).unwrap();
        bytes[3] ^= 1;
        std::fs::write(&tok, &bytes).unwrap();
        let s = TokenShard::open(dir.path(), Some(HASH)).unwrap();
        assert!(
            s.verify_tokens()
                .unwrap_err()
                .to_string()
                .contains("checksum mismatch")
        );
        drop(s);
        // Truncated token file.
        std::fs::write(&tok, &bytes[..bytes.len() - 2]).unwrap();
        let e = TokenShard::open(dir.path(), Some(HASH))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("truncated") && e.contains("tokens.bin") && e.contains("--force tokenize"),
            "{e}"
        );
        // Truncated index.
        let idx = dir.path().join(INDEX_FILE);
        let bytes = std::fs::read(&idx).unwrap();
        std::fs::write(&idx, &bytes[..bytes.len() - 8]).unwrap();
        let e = TokenShard::open(dir.path(), None).unwrap_err().to_string();
        assert!(e.contains("index is truncated"), "{e}");
        std::fs::write(&idx, &bytes[..100]).unwrap();
        assert!(
            TokenShard::open(dir.path(), None)
                .unwrap_err()
                .to_string()
                .contains("header")
        );
        // Tampered array.
        let mut bad = bytes.clone();
        let n = bad.len();
        bad[n - 1] ^= 0x80;
        std::fs::write(&idx, &bad).unwrap();
        assert!(
            TokenShard::open(dir.path(), None)
                .unwrap_err()
                .to_string()
                .contains("index checksum")
        );
    }
}
