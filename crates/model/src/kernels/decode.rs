//! Attention of one new token per sequence over its KV ring, for incremental decoding (forward only,
//! no candle node: inference never differentiates through the cache). Only the visible slots are read:
//! a ring is allocated at the full window from the first token, so candle's matmul over the whole ring
//! reads (and multiplies) every empty slot of a short conversation, and its small per-head matmuls
//! cost more than the data they touch.

use candle_core::{CpuStorage, Shape, Storage, Tensor, bail};
use rayon::prelude::*;

use super::common::{Float, R, dispatch, slice, tensor};

/// One sequence's KV ring: keys and values (b, n_kv_heads, slots, head_dim), contiguous, and the
/// slots its new token may see (at least one).
pub struct Ring<'a> {
    pub k: &'a Tensor,
    pub v: &'a Tensor,
    pub visible: &'a [usize],
}

/// `q` (b, n_heads, n, head_dim), already rotated and scaled: column `i` is the new token of the
/// sequence whose ring is `rings[i]` (n_heads a multiple of n_kv_heads: query head h reads kv head
/// h / (n_heads / n_kv_heads)). Returns softmax(q·kᵀ)·v over each token's visible slots,
/// (b, n_heads, n, head_dim). One call covers all sequences of a decode step, so the tasks (one per
/// batch row, head and sequence) spread over the threads; a row's result does not depend on `n`.
pub fn decode_attention(q: &Tensor, rings: &[Ring<'_>]) -> R<Tensor> {
    let (b, nh, n, hd) = q.dims4()?;
    if n != rings.len() || n == 0 {
        bail!("decode attention: {n} queries for {} rings", rings.len());
    }
    let mut nkv = 0;
    for r in rings {
        let (bk, g, slots, hdk) = r.k.dims4()?;
        if bk != b || hdk != hd || r.v.dims() != r.k.dims() || g == 0 || nh % g != 0 {
            bail!(
                "decode attention: q {:?}, k {:?}, v {:?}",
                q.dims(),
                r.k.dims(),
                r.v.dims()
            );
        }
        if nkv != 0 && g != nkv {
            bail!("decode attention: rings with {nkv} and {g} kv heads");
        }
        nkv = g;
        if r.visible.is_empty() || r.visible.iter().any(|&s| s >= slots) {
            bail!("decode attention: visible slots {:?} of {slots}", r.visible);
        }
    }
    fn go<T: Float>(q: &Tensor, rings: &[Ring<'_>], (b, nh, n, hd, nkv): Dims) -> R<Tensor> {
        let rep = nh / nkv;
        let q = q.contiguous()?;
        let (qs, ql) = q.storage_and_layout();
        // Read guards of every ring, held while the tasks run (read locks: rings sharing storage are fine).
        let guards: Vec<_> = rings
            .iter()
            .map(|r| (r.k.storage_and_layout(), r.v.storage_and_layout()))
            .collect();
        let qd = slice::<T>(cpu(&qs)?, ql)?;
        let kv: Vec<(&[T], &[T], usize)> = guards
            .iter()
            .zip(rings)
            .map(|(((ks, kl), (vs, vl)), r)| {
                Ok((
                    slice::<T>(cpu(ks)?, kl)?,
                    slice::<T>(cpu(vs)?, vl)?,
                    r.k.dim(2)?,
                ))
            })
            .collect::<R<_>>()?;
        let mut out = vec![T::zero(); b * nh * n * hd];
        // Rows (batch row, query head, sequence) split over tasks of at least ~16k multiply-adds each:
        // a small model's step is too little work to hand out row by row.
        let macs_per_row = 2 * hd * rings.iter().map(|r| r.visible.len()).sum::<usize>() / n;
        let min_rows = (16_384 / macs_per_row.max(1)).max(1);
        out.par_chunks_mut(hd)
            .with_min_len(min_rows)
            .enumerate()
            .for_each(|(row, o)| {
                let (i, bh) = (row % n, row / n);
                let (kd, vd, slots) = kv[i];
                let ring = ((bh / nh) * nkv + (bh % nh) / rep) * slots * hd;
                let qr = &qd[row * hd..][..hd];
                let visible = rings[i].visible;
                let mut s: Vec<T> = visible
                    .iter()
                    .map(|&j| dot(qr, &kd[ring + j * hd..][..hd]))
                    .collect();
                let m = s.iter().fold(T::NEG_INF, |m, &x| m.max_(x));
                let inv = T::one() / T::exp_shift_sum(&mut s, m);
                for (&j, &p) in visible.iter().zip(&s) {
                    let w = p * inv;
                    let vr = &vd[ring + j * hd..][..hd];
                    for (y, &x) in o.iter_mut().zip(vr) {
                        *y += w * x;
                    }
                }
            });
        tensor(out, &Shape::from((b, nh, n, hd)), &q)
    }
    dispatch!(q.dtype(), go(q, rings, (b, nh, n, hd, nkv)))
}

/// (batch, query heads, sequences, head_dim, kv heads).
type Dims = (usize, usize, usize, usize, usize);

/// `a · b` with eight partial sums: a fixed order (deterministic) that the compiler can vectorise,
/// where one running sum could not be reordered.
#[inline(always)]
fn dot<T: Float>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::zero(); 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .fold(T::zero(), |s, (&x, &y)| s + x * y);
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().fold(tail, |s, &x| s + x)
}

fn cpu(s: &Storage) -> R<&CpuStorage> {
    match s {
        Storage::Cpu(c) => Ok(c),
        _ => bail!("decode attention: CPU tensors only"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{max_abs_diff_as_f64, randn_f64};
    use candle_core::{D, DType, Device};

    /// softmax(q·kᵀ + mask)·v over the whole ring with candle ops, in f64: (b, nh, 1, hd).
    fn composed(q: &Tensor, k: &Tensor, v: &Tensor, visible: &[usize]) -> Tensor {
        let (nh, nkv, slots) = (q.dim(1).unwrap(), k.dim(1).unwrap(), k.dim(2).unwrap());
        let mask: Vec<f64> = (0..slots)
            .map(|j| {
                if visible.contains(&j) {
                    0.0
                } else {
                    f64::NEG_INFINITY
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, slots, &Device::Cpu).unwrap();
        let f = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
        let heads: Vec<Tensor> = (0..nh)
            .map(|h| {
                let g = h / (nh / nkv);
                let s = f(&q.narrow(1, h, 1).unwrap())
                    .matmul(&f(&k.narrow(1, g, 1).unwrap()).t().unwrap())
                    .unwrap()
                    .broadcast_add(&mask)
                    .unwrap();
                candle_nn::ops::softmax(&s, D::Minus1)
                    .unwrap()
                    .matmul(&f(&v.narrow(1, g, 1).unwrap()))
                    .unwrap()
            })
            .collect();
        Tensor::cat(&heads, 1).unwrap()
    }

    /// Three sequences in one call (rings of different sizes and fills), two batch rows, two query
    /// heads per kv head, against the composition; and each sequence alone gives the same rows.
    #[test]
    fn decode_attention_matches_composition() {
        let (b, nh, nkv, hd) = (2, 4, 2, 8);
        let sizes = [6usize, 6, 4];
        let visible: [&[usize]; 3] = [&[0, 2, 3, 5], &[1], &[0, 1, 2, 3]];
        for dtype in [DType::F64, DType::F32] {
            let q = randn_f64(&[b, nh, 3, hd], 1).to_dtype(dtype).unwrap();
            let kv: Vec<(Tensor, Tensor)> = (0..3)
                .map(|i| {
                    let r = |seed| {
                        randn_f64(&[b, nkv, sizes[i], hd], seed)
                            .to_dtype(dtype)
                            .unwrap()
                    };
                    (r(10 + i as u64), r(20 + i as u64))
                })
                .collect();
            let rings: Vec<Ring> = (0..3)
                .map(|i| Ring {
                    k: &kv[i].0,
                    v: &kv[i].1,
                    visible: visible[i],
                })
                .collect();
            let got = decode_attention(&q, &rings).unwrap();
            let tol = if dtype == DType::F64 { 1e-12 } else { 1e-5 };
            for (i, ring) in rings.iter().enumerate() {
                let qi = q.narrow(2, i, 1).unwrap();
                let want = composed(&qi, &kv[i].0, &kv[i].1, visible[i]);
                let row = got.narrow(2, i, 1).unwrap();
                let err = max_abs_diff_as_f64(&row, &want);
                assert!(err < tol, "{dtype:?} sequence {i}: {err}");
                let alone = decode_attention(&qi, std::slice::from_ref(ring)).unwrap();
                assert_eq!(max_abs_diff_as_f64(&row, &alone), 0.0);
            }
        }
        let q = randn_f64(&[1, 4, 1, 8], 1);
        let k = randn_f64(&[1, 2, 6, 8], 2);
        let k3 = randn_f64(&[1, 3, 6, 8], 2);
        let ring = |k, visible| Ring { k, v: k, visible };
        assert!(decode_attention(&q, &[]).is_err());
        assert!(decode_attention(&q, &[ring(&k, &[])]).is_err());
        assert!(decode_attention(&q, &[ring(&k, &[6])]).is_err());
        assert!(decode_attention(&q, &[ring(&k3, &[0])]).is_err());
        assert!(decode_attention(&q, &[ring(&k, &[0]), ring(&k, &[0])]).is_err());
    }
}
