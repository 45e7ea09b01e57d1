//! RoPE layouts. TardBot rotates interleaved pairs `(x[2i], x[2i+1])` of each head (as GGML's "normal"
//! RoPE does); Hugging Face's `rotate_half` rotates `(x[i], x[i + d/2])`. Both rotate pair `i` by
//! `pos · θ^(-2i/d)`, so permuting the output rows of the q and k projections within each head,
//! `[0, 2, 4, …, d-2, 1, 3, …, d-1]`, turns one into the other. Scores `q·k` are sums over all head
//! dimensions, unchanged when q and k are permuted alike, and v/o are untouched.

use candle_core::{Result, Tensor};

/// New row `j` of a head takes old row `source_row(j)`.
pub fn half_split_source_row(j: usize, head_dim: usize) -> usize {
    let half = head_dim / 2;
    if j < half { 2 * j } else { 2 * (j - half) + 1 }
}

/// The q or k projection `w` (heads × head_dim, hidden) with each head's rows in `rotate_half` order.
pub fn interleaved_to_half_split(w: &Tensor, heads: usize, head_dim: usize) -> Result<Tensor> {
    let order: Vec<u32> = (0..heads)
        .flat_map(|h| {
            (0..head_dim).map(move |j| (h * head_dim + half_split_source_row(j, head_dim)) as u32)
        })
        .collect();
    let idx = Tensor::new(order.as_slice(), w.device())?;
    w.index_select(&idx, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Interleaved RoPE of one head vector at `pos`.
    fn rope_interleaved(x: &[f64], pos: f64, theta: f64) -> Vec<f64> {
        let d = x.len();
        let mut y = x.to_vec();
        for i in 0..d / 2 {
            let a = pos * theta.powf(-((2 * i) as f64) / d as f64);
            let (c, s) = (a.cos(), a.sin());
            y[2 * i] = x[2 * i] * c - x[2 * i + 1] * s;
            y[2 * i + 1] = x[2 * i] * s + x[2 * i + 1] * c;
        }
        y
    }

    /// Hugging Face's `q * cos + rotate_half(q) * sin` with `cos`/`sin` repeated over both halves.
    fn rope_half_split(x: &[f64], pos: f64, theta: f64) -> Vec<f64> {
        let d = x.len();
        let h = d / 2;
        (0..d)
            .map(|j| {
                let i = j % h;
                let a = pos * theta.powf(-((2 * i) as f64) / d as f64);
                let rot = if j < h { -x[j + h] } else { x[j - h] };
                x[j] * a.cos() + rot * a.sin()
            })
            .collect()
    }

    fn dot(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn permuted_projections_give_the_same_scores_under_half_split_rope() {
        let (heads, hd, hidden) = (2, 8, 5);
        let mut rng = tardbot_core::rng::SplitMix64::new(7);
        let wq: Vec<f64> = (0..heads * hd * hidden).map(|_| rng.normal()).collect();
        let wk: Vec<f64> = (0..heads * hd * hidden).map(|_| rng.normal()).collect();
        let x: Vec<f64> = (0..hidden).map(|_| rng.normal()).collect();
        let y: Vec<f64> = (0..hidden).map(|_| rng.normal()).collect();
        let dev = Device::Cpu;
        let tq = Tensor::from_vec(wq.clone(), (heads * hd, hidden), &dev).unwrap();
        let tk = Tensor::from_vec(wk.clone(), (heads * hd, hidden), &dev).unwrap();
        let pq = interleaved_to_half_split(&tq, heads, hd)
            .unwrap()
            .to_vec2::<f64>()
            .unwrap();
        let pk = interleaved_to_half_split(&tk, heads, hd)
            .unwrap()
            .to_vec2::<f64>()
            .unwrap();
        let proj = |w: &[Vec<f64>], v: &[f64], h: usize| -> Vec<f64> {
            (0..hd).map(|j| dot(&w[h * hd + j], v)).collect()
        };
        let rows = |w: &[f64]| -> Vec<Vec<f64>> { w.chunks(hidden).map(<[f64]>::to_vec).collect() };
        let (oq, ok) = (rows(&wq), rows(&wk));
        for h in 0..heads {
            for (pq_pos, pk_pos) in [(0.0, 0.0), (5.0, 3.0), (17.0, 2.0)] {
                let ours = dot(
                    &rope_interleaved(&proj(&oq, &x, h), pq_pos, 10_000.0),
                    &rope_interleaved(&proj(&ok, &y, h), pk_pos, 10_000.0),
                );
                let theirs = dot(
                    &rope_half_split(&proj(&pq, &x, h), pq_pos, 10_000.0),
                    &rope_half_split(&proj(&pk, &y, h), pk_pos, 10_000.0),
                );
                assert!((ours - theirs).abs() < 1e-9, "head {h}: {ours} vs {theirs}");
            }
        }
        // Without the permutation the scores differ: the test can fail.
        let unpermuted = dot(
            &rope_half_split(&proj(&oq, &x, 0), 5.0, 10_000.0),
            &rope_half_split(&proj(&ok, &y, 0), 3.0, 10_000.0),
        );
        let ours = dot(
            &rope_interleaved(&proj(&oq, &x, 0), 5.0, 10_000.0),
            &rope_interleaved(&proj(&ok, &y, 0), 3.0, 10_000.0),
        );
        assert!((ours - unpermuted).abs() > 1e-6);
    }
}
