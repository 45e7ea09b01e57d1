//! Packing documents into `seq_len + 1`-token windows.
//!
//! Every window starts at the start of a *piece*, and a piece is a whole document or, for a document
//! longer than a window, one of its window-length chunks:
//! - `split_long_docs = true`: a long document is cut into pieces of `W = seq_len + 1` tokens that
//!   overlap by one token (starts `0, seq_len, 2·seq_len, …`), so every next-token pair of the
//!   document is trained exactly once and nothing is dropped;
//! - `split_long_docs = false`: a long document keeps its first `W` tokens, the rest is *cropped*.
//!
//! Pieces are placed by **best-fit decreasing** (longest first, each into the open window with the
//! least room that still fits it), which keeps padding low without cutting documents. Pieces are never
//! split across windows; the room left in a window is *padding*. Nothing is copied: a packing is an
//! index of `(start, len)` segments into the flat token array, grouped per window (CSR).

use std::cmp::Reverse;
use std::collections::BTreeSet;

/// How windows were filled, for the `pad %` / `crop %` report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PackStats {
    /// Tokens of the documents (before packing).
    pub doc_tokens: u64,
    pub docs: u64,
    pub windows: u64,
    /// Slots in all windows: `windows * (seq_len + 1)`.
    pub window_slots: u64,
    /// Slots holding padding.
    pub pad_tokens: u64,
    /// Document tokens left out of every window (`split_long_docs = false` only).
    pub cropped_tokens: u64,
}

impl PackStats {
    pub fn pad_pct(&self) -> f64 {
        pct(self.pad_tokens, self.window_slots)
    }
    pub fn crop_pct(&self) -> f64 {
        pct(self.cropped_tokens, self.doc_tokens)
    }
    pub fn add(&mut self, o: &PackStats) {
        self.doc_tokens += o.doc_tokens;
        self.docs += o.docs;
        self.windows += o.windows;
        self.window_slots += o.window_slots;
        self.pad_tokens += o.pad_tokens;
        self.cropped_tokens += o.cropped_tokens;
    }
}

fn pct(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        100.0 * a as f64 / b as f64
    }
}

/// The windows of one shard: window `w` holds segments `win_offsets[w]..win_offsets[w + 1]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Packing {
    /// Window length, `seq_len + 1`.
    pub window: usize,
    pub seg_start: Vec<u64>,
    pub seg_len: Vec<u32>,
    pub win_offsets: Vec<u64>,
    pub stats: PackStats,
}

impl Packing {
    pub fn n_windows(&self) -> usize {
        self.win_offsets.len().saturating_sub(1)
    }
}

/// Packs documents given by their token offsets (`doc_offsets[d]..doc_offsets[d + 1]`, so
/// `doc_offsets.len() == docs + 1`) into windows of `seq_len + 1` tokens.
pub fn pack(doc_offsets: &[u64], seq_len: usize, split_long_docs: bool) -> Packing {
    let w = seq_len + 1;
    let mut stats = PackStats::default();
    let mut starts: Vec<u64> = Vec::with_capacity(doc_offsets.len());
    let mut lens: Vec<u32> = Vec::with_capacity(doc_offsets.len());
    for d in doc_offsets.windows(2) {
        let (start, len) = (d[0], (d[1] - d[0]) as usize);
        stats.docs += 1;
        stats.doc_tokens += len as u64;
        if len == 0 {
            continue;
        }
        if len <= w {
            starts.push(start);
            lens.push(len as u32);
        } else if split_long_docs && seq_len >= 1 {
            let mut s = 0usize;
            loop {
                let l = w.min(len - s);
                starts.push(start + s as u64);
                lens.push(l as u32);
                if s + l >= len {
                    break;
                }
                s += seq_len;
            }
        } else {
            starts.push(start);
            lens.push(w as u32);
            stats.cropped_tokens += (len - w) as u64;
        }
    }

    // Best-fit decreasing. `open[c]`: windows with exactly `c` free slots; `free`: the non-empty `c`s.
    let mut order: Vec<u32> = (0..lens.len() as u32).collect();
    order.sort_by_key(|&i| Reverse(lens[i as usize]));
    let mut open: Vec<Vec<u32>> = vec![Vec::new(); w + 1];
    let mut free: BTreeSet<usize> = BTreeSet::new();
    let mut window_of = vec![0u32; lens.len()];
    let mut n_windows = 0u32;
    for &p in &order {
        let l = lens[p as usize] as usize;
        let (win, room) = match free.range(l..).next().copied() {
            Some(c) => {
                let win = open[c].pop().unwrap_or_default();
                if open[c].is_empty() {
                    free.remove(&c);
                }
                (win, c)
            }
            None => {
                n_windows += 1;
                (n_windows - 1, w)
            }
        };
        window_of[p as usize] = win;
        let left = room - l;
        if left > 0 {
            open[left].push(win);
            free.insert(left);
        }
    }

    // Group segments by window (counting sort, keeping placement order inside a window).
    let mut win_offsets = vec![0u64; n_windows as usize + 1];
    for &win in &window_of {
        win_offsets[win as usize + 1] += 1;
    }
    for i in 0..n_windows as usize {
        win_offsets[i + 1] += win_offsets[i];
    }
    let mut fill: Vec<u64> = win_offsets[..n_windows as usize].to_vec();
    let mut seg_start = vec![0u64; lens.len()];
    let mut seg_len = vec![0u32; lens.len()];
    let mut used = 0u64;
    for &p in &order {
        let win = window_of[p as usize] as usize;
        let at = fill[win] as usize;
        fill[win] += 1;
        seg_start[at] = starts[p as usize];
        seg_len[at] = lens[p as usize];
        used += lens[p as usize] as u64;
    }
    stats.windows = n_windows as u64;
    stats.window_slots = n_windows as u64 * w as u64;
    stats.pad_tokens = stats.window_slots - used;
    Packing {
        window: w,
        seg_start,
        seg_len,
        win_offsets,
        stats,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(lens: &[u64]) -> Vec<u64> {
        let mut o = vec![0];
        for l in lens {
            o.push(o.last().copied().unwrap_or(0) + l);
        }
        o
    }

    fn windows(p: &Packing) -> Vec<Vec<(u64, u32)>> {
        (0..p.n_windows())
            .map(|w| {
                (p.win_offsets[w] as usize..p.win_offsets[w + 1] as usize)
                    .map(|s| (p.seg_start[s], p.seg_len[s]))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn best_fit_fills_gaps_and_counts_padding() {
        // W = 10. Docs: 6, 4, 7, 3, 5 → best-fit decreasing: [7,3], [6,4], [5] = 3 windows, 5 pad.
        let p = pack(&offsets(&[6, 4, 7, 3, 5]), 9, true);
        let w = windows(&p);
        assert_eq!(w.len(), 3);
        assert_eq!(w[0], vec![(10, 7), (17, 3)]);
        assert_eq!(w[1], vec![(0, 6), (6, 4)]);
        assert_eq!(w[2], vec![(20, 5)]);
        assert_eq!(p.stats.pad_tokens, 5);
        assert_eq!(p.stats.window_slots, 30);
        assert_eq!(p.stats.cropped_tokens, 0);
        assert!((p.stats.pad_pct() - 100.0 / 6.0).abs() < 1e-9);
        // Every window fits and starts at a piece start.
        for win in &w {
            assert!(win.iter().map(|s| s.1).sum::<u32>() <= 10);
        }
    }

    #[test]
    fn long_documents_split_with_one_token_overlap_or_crop() {
        // One doc of 25 tokens, seq_len 9 (W 10): pieces [0,10) [9,19) [18,25).
        let p = pack(&offsets(&[25]), 9, true);
        let mut segs: Vec<_> = windows(&p).into_iter().flatten().collect();
        segs.sort();
        assert_eq!(segs, vec![(0, 10), (9, 10), (18, 7)]);
        // Every next-token pair (t, t+1) is inside exactly one piece.
        for t in 0..24u64 {
            let n = segs
                .iter()
                .filter(|(s, l)| *s <= t && t + 1 < s + *l as u64)
                .count();
            assert_eq!(n, 1, "pair {t}");
        }
        assert_eq!(p.stats.cropped_tokens, 0);
        // Exact multiple: 19 tokens → [0,10) [9,19), no 1-token tail.
        let p = pack(&offsets(&[19]), 9, true);
        assert_eq!(p.seg_len.iter().sum::<u32>(), 20);
        assert_eq!(p.n_windows(), 2);
        // Crop: only the first window survives.
        let p = pack(&offsets(&[25, 3]), 9, false);
        assert_eq!(p.stats.cropped_tokens, 15);
        assert!((p.stats.crop_pct() - 100.0 * 15.0 / 28.0).abs() < 1e-9);
        assert_eq!(p.n_windows(), 2);
    }

    #[test]
    fn empty_input_packs_to_nothing() {
        let p = pack(&[0], 16, true);
        assert_eq!(p.n_windows(), 0);
        assert_eq!(p.stats, PackStats::default());
        let p = pack(&[0, 0, 0], 16, true);
        assert_eq!(p.n_windows(), 0);
        assert_eq!(p.stats.docs, 2);
    }
}
