//! Data movement: strided copies (Permute, RepeatVector, and plain copies) and
//! resampling (ZeroPadding, Cropping, UpSampling nearest and bilinear).

use crate::merge::RANK;

/// Copies `x` into `y` in the order of `shape`, reading `x` through `strides` (Permute
/// is a reordering of strides, RepeatVector a stride of 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Strided {
    /// Output shape, leading axes padded with 1.
    pub shape: [usize; RANK],
    /// Strides of `x` over the output's axes.
    pub strides: [usize; RANK],
    /// Where in `x` the first value is (a part of a larger buffer).
    pub offset: usize,
}

/// The strided copy.
#[inline]
pub fn strided_copy(p: &Strided, x: &[f32], y: &mut [f32]) {
    let Some(x) = x.get(p.offset..) else { return };
    crate::merge::merge(
        &crate::merge::Merge {
            fold: crate::merge::Fold::Add,
            shape: p.shape,
            strides: [p.strides],
        },
        [x],
        y,
    );
}

/// How output positions along one axis map to input positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AxisMap {
    /// `before` zeros, the `input` values, then zeros up to `len`.
    Pad {
        /// Zeros first.
        before: usize,
        /// Input length.
        input: usize,
        /// Output length.
        len: usize,
    },
    /// The input from `before`, `len` positions.
    Crop {
        /// Positions skipped.
        before: usize,
        /// Output length.
        len: usize,
    },
    /// Each input position `scale` times.
    Nearest {
        /// Repeat count.
        scale: usize,
        /// Output length.
        len: usize,
    },
    /// The input backwards: output `o` reads position `len - 1 - o` (a slice with a
    /// negative step, `x[:, ::-1]`).
    Reverse {
        /// Output (and input) length.
        len: usize,
    },
    /// Linear interpolation with half-pixel centres, as tf.image.resize does.
    Bilinear {
        /// Upsampling factor.
        scale: usize,
        /// Input length.
        input: usize,
        /// Output length.
        len: usize,
    },
}

impl AxisMap {
    /// An axis of length 1 that maps to itself.
    pub const UNIT: AxisMap = AxisMap::Crop { before: 0, len: 1 };

    /// Output length.
    pub const fn len(&self) -> usize {
        match *self {
            AxisMap::Pad { len, .. }
            | AxisMap::Crop { len, .. }
            | AxisMap::Nearest { len, .. }
            | AxisMap::Reverse { len }
            | AxisMap::Bilinear { len, .. } => len,
        }
    }

    /// True for an empty axis.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The input taps of output `o`: two (position, weight) pairs; weight 0 for none.
    #[inline(always)]
    pub fn taps(&self, o: usize) -> [(usize, f32); 2] {
        match *self {
            AxisMap::Pad { before, input, .. } => {
                let inside = o >= before && o - before < input;
                [
                    (
                        if inside { o - before } else { 0 },
                        if inside { 1.0 } else { 0.0 },
                    ),
                    (0, 0.0),
                ]
            }
            AxisMap::Crop { before, .. } => [(before + o, 1.0), (0, 0.0)],
            AxisMap::Nearest { scale, .. } => [(o / scale.max(1), 1.0), (0, 0.0)],
            AxisMap::Reverse { len } => [(len.saturating_sub(o + 1), 1.0), (0, 0.0)],
            AxisMap::Bilinear { scale, input, .. } => {
                let pos = crate::act::fmax((o as f32 + 0.5) / scale as f32 - 0.5, 0.0);
                let lo = pos as usize;
                let lo = if lo < input - 1 { lo } else { input - 1 };
                let hi = if lo + 1 < input { lo + 1 } else { input - 1 };
                let t = pos - lo as f32;
                [(lo, 1.0 - t), (hi, t)]
            }
        }
    }
}

/// Resampling of a channels_last tensor lifted to 3-D.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resample {
    /// Batch size.
    pub batch: usize,
    /// Input depth, height, width.
    pub input: [usize; 3],
    /// How each output axis reads its input axis.
    pub axes: [AxisMap; 3],
    /// Channels.
    pub channels: usize,
}

/// The resampling.
#[inline]
pub fn resample(p: &Resample, x: &[f32], y: &mut [f32]) {
    let [id, ih, iw] = p.input;
    let c = p.channels;
    let (od, oh, ow) = (p.axes[0].len(), p.axes[1].len(), p.axes[2].len());
    if x.len() < p.batch * id * ih * iw * c
        || y.len() < p.batch * od * oh * ow * c
        || id * ih * iw == 0
    {
        return;
    }
    if p.axes
        .iter()
        .all(|a| matches!(a, AxisMap::Pad { .. } | AxisMap::Crop { .. }))
    {
        pad_or_crop(p, x, y);
        return;
    }
    let mut at = 0;
    for b in 0..p.batch {
        for d in 0..od {
            for h in 0..oh {
                for w in 0..ow {
                    // `get`: out of line, the optimiser may not see the length checks
                    // above, and an index would leave a panic path.
                    let Some(out) = y.get_mut(at..at + c) else {
                        return;
                    };
                    out.fill(0.0);
                    for (sd, wd) in p.axes[0].taps(d) {
                        for (sh, wh) in p.axes[1].taps(h) {
                            for (sw, ww) in p.axes[2].taps(w) {
                                let weight = wd * wh * ww;
                                // Taps outside the input have weight 0; skipping them (a
                                // choice fixed by position, not data) keeps inf and NaN
                                // in the input from leaking into the padding.
                                if weight == 0.0 {
                                    continue;
                                }
                                let xi = (((b * id + sd) * ih + sh) * iw + sw) * c;
                                let xs = x.get(xi..xi + c).unwrap_or(&[]);
                                for (o, &v) in out.iter_mut().zip(xs) {
                                    *o += weight * v;
                                }
                            }
                        }
                    }
                    at += c;
                }
            }
        }
    }
}

/// [`resample`] of pads and crops alone: each output row is zeros, one contiguous run
/// of an input row, zeros; copies rather than a sum of taps per pixel.
#[inline(always)]
fn pad_or_crop(p: &Resample, x: &[f32], y: &mut [f32]) {
    let [id, ih, iw] = p.input;
    let c = p.channels;
    // The input position of output `o` along an axis, if any.
    let source = |a: &AxisMap, o: usize| match *a {
        AxisMap::Pad { before, input, .. } => {
            (o >= before && o - before < input).then(|| o - before)
        }
        AxisMap::Crop { before, .. } => Some(before + o),
        _ => None,
    };
    let ow = p.axes[2].len();
    // Along the width: `zeros` first, then `take` inputs from position `from`.
    let (zeros, take, from) = match p.axes[2] {
        AxisMap::Pad { before, input, len } => {
            (before.min(len), input.min(len.saturating_sub(before)), 0)
        }
        AxisMap::Crop { before, len } => (0, len, before),
        _ => (0, 0, 0),
    };
    let mut at = 0;
    for b in 0..p.batch {
        for d in 0..p.axes[0].len() {
            for h in 0..p.axes[1].len() {
                let Some(row) = y.get_mut(at..at + ow * c) else {
                    return;
                };
                at += ow * c;
                let run = match (source(&p.axes[0], d), source(&p.axes[1], h)) {
                    (Some(sd), Some(sh)) => {
                        let xi = (((b * id + sd) * ih + sh) * iw + from) * c;
                        x.get(xi..xi + take * c)
                    }
                    _ => None,
                };
                // Zeros over the whole row, then the run: the row is in L1 either way,
                // and no slice bound is left to check.
                row.fill(0.0);
                if let (Some(run), Some(to)) = (run, row.get_mut(zeros * c..(zeros + take) * c)) {
                    to.iter_mut().zip(run).for_each(|(t, &v)| *t = v);
                }
            }
        }
    }
}

/// Rows of a table picked by index: Embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gather {
    /// Indices per call.
    pub indices: usize,
    /// Rows in the table (Embedding's `input_dim`).
    pub vocab: usize,
    /// Floats per row (`output_dim`).
    pub dim: usize,
}

/// `y[i] = table[x[i]]`. An index is truncated to an integer and clamped into the
/// table (NaN reads row 0), so no input reads outside it; the loads' addresses depend
/// on the data, the instruction path does not.
#[inline]
pub fn gather(p: &Gather, x: &[f32], table: &[f32], y: &mut [f32]) {
    if p.vocab == 0
        || x.len() < p.indices
        || table.len() < p.vocab * p.dim
        || y.len() < p.indices * p.dim
    {
        return;
    }
    let last = (p.vocab - 1) as f32;
    for (i, &v) in x.iter().take(p.indices).enumerate() {
        // fmax/fmin put NaN at 0 and keep the index inside the table.
        let row = crate::act::fmin(crate::act::fmax(v, 0.0), last) as usize;
        // SAFETY: row < vocab and i < indices, checked against the lengths above.
        let (from, to) = unsafe {
            (
                crate::simd::part(table, row * p.dim, p.dim),
                crate::simd::part_mut(y, i * p.dim, p.dim),
            )
        };
        for (d, &t) in to.iter_mut().zip(from) {
            *d = t;
        }
    }
}
