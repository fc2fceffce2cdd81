//! `kerac::shape`: strided copies, resampling and table lookups.

use super::fx::{Addr, Fx};
use super::merge::merge;
use super::simd::{copy, init, lanewise, passes, store};
use cranelift_codegen::ir::{types, InstBuilder};
use kerac::merge::Fold;
use kerac::shape::AxisMap;
use kerac::Act;

/// `kerac::shape::strided_copy`: a one-input merge from `x + offset` with strides.
pub(super) fn strided_copy(fx: &mut Fx, p: &kerac::shape::Strided, x: Addr, y: Addr) {
    merge(fx, Fold::Add, &p.shape, &[p.strides], &[x.add(p.offset)], y)
}

/// Padding, cropping and resizing, from per-axis tables of source positions and
/// weights in the code (constants, so the path does not depend on the data).
pub(super) fn resample(fx: &mut Fx, p: &kerac::shape::Resample, x: Addr, y: Addr) {
    let [_, ih, iw] = p.input;
    let c = p.channels;
    let lens = p.axes.map(|a| a.len());
    let strides = [ih * iw * c, iw * c, c];
    // Per axis and output position: up to two (source, weight) taps, and whether the
    // position is inside (padding gives exact zeros, even for infinite inputs).
    let table = |a: &AxisMap| -> Vec<([(usize, f32); 2], bool)> {
        (0..a.len())
            .map(|o| match *a {
                AxisMap::Pad { before, input, .. } => {
                    let inside = o >= before && o - before < input;
                    (
                        [(if inside { o - before } else { 0 }, 1.0), (0, 0.0)],
                        inside,
                    )
                }
                AxisMap::Crop { before, .. } => ([(before + o, 1.0), (0, 0.0)], true),
                AxisMap::Nearest { scale, .. } => ([(o / scale.max(1), 1.0), (0, 0.0)], true),
                AxisMap::Reverse { len } => ([(len.saturating_sub(o + 1), 1.0), (0, 0.0)], true),
                AxisMap::Bilinear { scale, input, .. } => {
                    let pos = kerac::act::fmax((o as f32 + 0.5) / scale as f32 - 0.5, 0.0);
                    let lo = (pos as usize).min(input.saturating_sub(1));
                    let hi = (lo + 1).min(input.saturating_sub(1));
                    let t = pos - lo as f32;
                    ([(lo, 1.0 - t), (hi, t)], true)
                }
            })
            .collect()
    };
    let tables = p.axes.each_ref().map(table);
    let two = p.axes.map(|a| matches!(a, AxisMap::Bilinear { .. }));
    // Every output position is unrolled: its sources and weights are constants.
    let ps = passes(c, fx.lanes);
    fx.for_n(p.batch, |fx, b| {
        let xb = fx.at(x, &[(b, p.input.iter().product::<usize>() * c)]);
        let yb = fx.at(y, &[(b, lens.iter().product::<usize>() * c)]);
        for (d, td) in tables[0].iter().enumerate() {
            for (h, th) in tables[1].iter().enumerate() {
                for (w, tw) in tables[2].iter().enumerate() {
                    let out = yb.add(((d * lens[1] + h) * lens[2] + w) * c);
                    let inside = td.1 && th.1 && tw.1;
                    for pass in &ps {
                        let acc = init(fx, pass, None, 0.0);
                        if inside {
                            for (sd, wd) in td.0.iter().take(if two[0] { 2 } else { 1 }) {
                                for (sh, wh) in th.0.iter().take(if two[1] { 2 } else { 1 }) {
                                    for (sw, ww) in tw.0.iter().take(if two[2] { 2 } else { 1 }) {
                                        let weight = wd * wh * ww;
                                        if weight == 0.0 {
                                            continue;
                                        }
                                        let src = xb.add(
                                            sd * strides[0] + sh * strides[1] + sw * strides[2],
                                        );
                                        lanewise(
                                            fx,
                                            pass,
                                            &acc,
                                            (src, 0),
                                            None,
                                            1,
                                            |fx, a, v, _| {
                                                let ty = fx.b.func.dfg.value_type(v);
                                                let s = fx.splat(ty, weight);
                                                let m = fx.b.ins().fmul(s, v);
                                                fx.b.ins().fadd(a, m)
                                            },
                                        );
                                    }
                                }
                            }
                        }
                        store(fx, pass, &acc, None, Act::Linear, out);
                    }
                }
            }
        }
    });
}

/// Embedding rows by index, as the runtime: truncated, clamped into the table (NaN to
/// row 0) with max/min, so only the load addresses depend on the data.
pub(super) fn gather(fx: &mut Fx, p: &kerac::shape::Gather, x: Addr, table: Addr, y: Addr) {
    if p.vocab == 0 {
        return;
    }
    let last = (p.vocab - 1) as f32;
    fx.for_n(p.indices, |fx, i| {
        let xa = fx.at(x, &[(i, 1)]);
        let v = fx.load(types::F32, xa);
        let zero = fx.splat(types::F32, 0.0);
        let top = fx.splat(types::F32, last);
        let v = fx.max(v, zero);
        let v = fx.min(v, top);
        // Clamped above into [0, vocab): a signed 32-bit conversion holds it, and its
        // branch-free form keeps the path independent of the index.
        let row = super::act::to_int_sat(fx, types::I32, v);
        let row = fx.b.ins().uextend(types::I64, row);
        let from = fx.at(table, &[(row, p.dim)]);
        let to = fx.at(y, &[(i, p.dim)]);
        copy(fx, from, to, p.dim);
    });
}
