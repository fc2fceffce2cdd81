//! Merge layers: elementwise folds with broadcasting (Add, Subtract, Multiply, Average,
//! Maximum, Minimum), Concatenate, and Dot as a batched matrix product.

use crate::act::{fmax, fmin};
use crate::norm::libm_sqrt;
use crate::simd::{part, part_mut};

/// Rank of the index space elementwise merges and strided copies run over.
pub const RANK: usize = 6;

/// How an elementwise merge folds its inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fold {
    /// Sum.
    Add,
    /// First minus second.
    Subtract,
    /// Product.
    Multiply,
    /// Mean.
    Average,
    /// Largest.
    Maximum,
    /// Smallest.
    Minimum,
    /// First divided by second.
    Divide,
}

impl Fold {
    /// The running value `acc` folded with the next input's `v` (the mean's final
    /// scaling aside).
    #[inline(always)]
    pub fn apply(self, acc: f32, v: f32) -> f32 {
        match self {
            Fold::Add | Fold::Average => acc + v,
            Fold::Subtract => acc - v,
            Fold::Multiply => acc * v,
            Fold::Maximum => fmax(v, acc),
            Fold::Minimum => fmin(v, acc),
            Fold::Divide => acc / v,
        }
    }

    /// `acc[i] = fold(acc[i], x[i])`, or with `x[0]` for every `i` where `x` is one
    /// value: one loop per fold, chosen once, that the compiler can vectorize.
    #[inline(always)]
    fn into(self, acc: &mut [f32], x: &[f32]) {
        #[inline(always)]
        fn each(acc: &mut [f32], x: &[f32], f: impl Fn(f32, f32) -> f32) {
            if let [v] = *x {
                acc.iter_mut().for_each(|a| *a = f(*a, v));
            } else {
                acc.iter_mut().zip(x).for_each(|(a, &v)| *a = f(*a, v));
            }
        }
        match self {
            Fold::Add | Fold::Average => each(acc, x, |a, v| a + v),
            Fold::Subtract => each(acc, x, |a, v| a - v),
            Fold::Multiply => each(acc, x, |a, v| a * v),
            Fold::Maximum => each(acc, x, |a, v| fmax(v, a)),
            Fold::Minimum => each(acc, x, |a, v| fmin(v, a)),
            Fold::Divide => each(acc, x, |a, v| a / v),
        }
    }
}

/// An elementwise merge: `shape` is the output (leading axes padded with 1), and
/// `strides[i]` the strides of input `i` in that index space (0 where it broadcasts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Merge<const N: usize> {
    /// The fold.
    pub fold: Fold,
    /// Output shape.
    pub shape: [usize; RANK],
    /// Per input, its strides over the output's axes.
    pub strides: [[usize; RANK]; N],
}

#[inline(always)]
fn offsets(shape: &[usize; RANK], mut f: impl FnMut(usize, [usize; RANK])) {
    let mut flat = 0;
    for a in 0..shape[0] {
        for b in 0..shape[1] {
            for c in 0..shape[2] {
                for d in 0..shape[3] {
                    for e in 0..shape[4] {
                        for g in 0..shape[5] {
                            f(flat, [a, b, c, d, e, g]);
                            flat += 1;
                        }
                    }
                }
            }
        }
    }
}

#[inline(always)]
fn offset(index: &[usize; RANK], strides: &[usize; RANK]) -> usize {
    let mut o = 0;
    for i in 0..RANK {
        o += index[i] * strides[i];
    }
    o
}

/// Folds the inputs elementwise into `y`.
#[inline]
pub fn merge<const N: usize>(p: &Merge<N>, inputs: [&[f32]; N], y: &mut [f32]) {
    let total: usize = p.shape.iter().product();
    let fits = inputs.iter().zip(&p.strides).all(|(x, s)| {
        let last = (0..RANK)
            .map(|i| p.shape[i].saturating_sub(1) * s[i])
            .sum::<usize>();
        total == 0 || last < x.len()
    });
    if N == 0 || y.len() < total || !fits {
        return;
    }
    // Inputs laid out exactly like the output (no broadcasting): one flat pass that the
    // compiler vectorizes, the same arithmetic in the same order per element.
    let mut contiguous = [0; RANK];
    let mut step = 1;
    for i in (0..RANK).rev() {
        contiguous[i] = if p.shape[i] == 1 { 0 } else { step };
        step *= p.shape[i];
    }
    let plain = |s: &[usize; RANK]| (0..RANK).all(|i| p.shape[i] == 1 || s[i] == contiguous[i]);
    if p.strides.iter().all(plain) {
        let (Some(y), Some(first)) = (y.get_mut(..total), inputs[0].get(..total)) else {
            return;
        };
        y.copy_from_slice(first);
        for x in inputs.iter().skip(1) {
            let Some(x) = x.get(..total) else { return };
            p.fold.into(y, x);
        }
        if p.fold == Fold::Average {
            let inv = 1.0 / N as f32;
            y.iter_mut().for_each(|v| *v *= inv);
        }
        return;
    }
    let inner = p.shape[RANK - 1];
    if inner > 1 && p.strides.iter().all(|s| s[RANK - 1] <= 1) {
        // Broadcasting where every input reads the last axis contiguously or repeats one
        // value along it (a squeeze-excite scale, a bias): whole runs of the last axis
        // at a time, in the same order per element as the loop below.
        let mut rows = p.shape;
        rows[RANK - 1] = 1;
        offsets(&rows, |row, index| {
            let Some(out) = y.get_mut(row * inner..(row + 1) * inner) else {
                return;
            };
            for (i, (x, strides)) in inputs.iter().zip(&p.strides).enumerate() {
                let at = offset(&index, strides);
                let len = if strides[RANK - 1] == 1 { inner } else { 1 };
                let run = x.get(at..at + len).unwrap_or(&[]);
                if i > 0 {
                    p.fold.into(out, run);
                } else if let [v] = *run {
                    out.fill(v);
                } else {
                    out.iter_mut().zip(run).for_each(|(o, &v)| *o = v);
                }
            }
            if p.fold == Fold::Average {
                let inv = 1.0 / N as f32;
                out.iter_mut().for_each(|v| *v *= inv);
            }
        });
        return;
    }
    // SAFETY (both `get_unchecked`s): every index is below its shape entry, so each
    // offset is at most the `last` offset checked against the input's length above; and
    // `flat` counts the output's elements, checked against y's length.
    offsets(&p.shape, |flat, index| {
        let mut acc = unsafe { *inputs[0].get_unchecked(offset(&index, &p.strides[0])) };
        for (x, strides) in inputs.iter().zip(&p.strides).skip(1) {
            let v = unsafe { *x.get_unchecked(offset(&index, strides)) };
            acc = p.fold.apply(acc, v);
        }
        if p.fold == Fold::Average {
            acc *= 1.0 / N as f32;
        }
        unsafe { *y.get_unchecked_mut(flat) = acc };
    });
}

/// Concatenation along one axis: `outer` rows, input `i` giving `parts[i]` floats of
/// each row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Concat<const N: usize> {
    /// Product of the axes before the concatenation axis.
    pub outer: usize,
    /// Floats per row from each input (its axis length times the axes after it).
    pub parts: [usize; N],
}

/// Concatenates the inputs into `y`.
#[inline]
pub fn concat<const N: usize>(p: &Concat<N>, inputs: [&[f32]; N], y: &mut [f32]) {
    let row: usize = p.parts.iter().sum();
    if y.len() < p.outer * row
        || inputs
            .iter()
            .zip(&p.parts)
            .any(|(x, &n)| x.len() < p.outer * n)
    {
        return;
    }
    for o in 0..p.outer {
        let mut at = o * row;
        for (x, &n) in inputs.iter().zip(&p.parts) {
            // SAFETY: y holds outer * row floats and x outer * n (checked above); these
            // ranges lie inside.
            let (to, from) = unsafe { (part_mut(y, at, n), part(x, o * n, n)) };
            for (d, &v) in to.iter_mut().zip(from) {
                *d = v;
            }
            at += n;
        }
    }
}

/// `y[b, i, j] = sum_t a[b, i, t] * c[b, t, j]`, with each operand addressed through
/// strides (so the contracted axis may be any axis of either input), optionally of
/// L2-normalized operands (Keras's `Dot(normalize=True)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchDot {
    /// Batch size.
    pub batch: usize,
    /// Rows of the result.
    pub m: usize,
    /// Columns of the result.
    pub n: usize,
    /// Contracted length.
    pub k: usize,
    /// Strides of the first input: batch, row, contracted.
    pub a: [usize; 3],
    /// Strides of the second input: batch, contracted, column.
    pub b: [usize; 3],
    /// Normalize both operands along the contracted axis first.
    pub normalize: bool,
}

/// The batched product.
#[inline]
pub fn batch_dot(p: &BatchDot, a: &[f32], b: &[f32], y: &mut [f32]) {
    let last =
        |s: [usize; 3], d: [usize; 3]| (0..3).map(|i| d[i].saturating_sub(1) * s[i]).sum::<usize>();
    let empty = p.batch * p.m * p.n * p.k == 0;
    if y.len() < p.batch * p.m * p.n
        || (!empty
            && (last(p.a, [p.batch, p.m, p.k]) >= a.len()
                || last(p.b, [p.batch, p.k, p.n]) >= b.len()))
    {
        return;
    }
    let norm = |x: &[f32], base: usize, step: usize| {
        if !p.normalize {
            return 1.0;
        }
        let mut s = 0.0;
        for t in 0..p.k {
            s += x[base + t * step] * x[base + t * step];
        }
        1.0 / fmax(libm_sqrt(s), 1e-12)
    };
    for bi in 0..p.batch {
        for i in 0..p.m {
            let abase = bi * p.a[0] + i * p.a[1];
            let na = norm(a, abase, p.a[2]);
            for j in 0..p.n {
                let bbase = bi * p.b[0] + j * p.b[2];
                let nb = norm(b, bbase, p.b[1]);
                let mut s = 0.0;
                for t in 0..p.k {
                    s += a[abase + t * p.a[2]] * b[bbase + t * p.b[1]];
                }
                y[(bi * p.m + i) * p.n + j] = s * na * nb;
            }
        }
    }
}
