//! Each plan step as Cranelift IR. The step's parameters are constants here, so the
//! code is specialised: sliding windows are split into runs of output positions that
//! see the same kernel taps (the interior is one run, each padded edge position its
//! own), and each run is a loop nest whose bounds are constants and whose taps all
//! land inside the input. Output channels are register-blocked in passes of vector
//! accumulators.

use super::act::Tape;
use super::fx::{Addr, Fx};
use super::WeightLayout;
use crate::plan::{Kernel, Plan, Step};
use cranelift_codegen::ir::{types, InstBuilder, Type, Value};
use cranelift_frontend::Variable;
use kerac::merge::{Fold, RANK};
use kerac::shape::AxisMap;
use kerac::{Act, Window};
use std::ops::Range;

/// Accumulators per pass. Cranelift loads each weight vector into a register of its
/// own, so accumulators, weights and the broadcast input must fit x86-64's 16 vector
/// registers: 6 measured fastest (8 spills, 4 leaves the loads under-used).
const MAX_ACC: usize = 6;

/// Copies `n` floats.
pub(super) fn copy(fx: &mut Fx, from: Addr, to: Addr, n: usize) {
    fx.chunks(n, |fx, ty, ix| {
        let a = fx.ix(from, ix);
        let v = fx.load(ty, a);
        let b = fx.ix(to, ix);
        fx.store(v, b);
    });
}

/// Floats at `.0 + t * .1` for `t = 0, 1, ...`.
type Stream = (Addr, usize);

/// Columns `start..` in accumulators of the given widths (vectors, then single floats).
pub(super) struct Pass {
    start: usize,
    widths: Vec<usize>,
}

impl Pass {
    pub(super) fn cols(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.widths.iter().scan(self.start, |c, &w| {
            let col = *c;
            *c += w;
            Some((col, w))
        })
    }
}

pub(super) fn passes(n: usize, lanes: usize) -> Vec<Pass> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < n {
        let mut widths = Vec::new();
        let mut col = start;
        while col < n && widths.len() < MAX_ACC {
            let w = if n - col >= lanes { lanes } else { 1 };
            widths.push(w);
            col += w;
        }
        out.push(Pass { start, widths });
        start = col;
    }
    out
}

/// Accumulators of a pass set from `init` (column 0 of the row) or zero.
pub(super) fn init(fx: &mut Fx, pass: &Pass, from: Option<Addr>, zero: f32) -> Vec<Variable> {
    pass.cols()
        .map(|(col, w)| {
            let ty = fx.ty(w);
            let v = match from {
                Some(a) => fx.load(ty, a.add(col)),
                None => fx.splat(ty, zero),
            };
            fx.var(v)
        })
        .collect()
}

/// `acc[col] += x[t * x_step] * w[t * w_step + col]` for `t` in `0..len`.
pub(super) fn axpy(fx: &mut Fx, pass: &Pass, acc: &[Variable], x: Stream, w: Stream, len: usize) {
    fx.for_n(len, |fx, t| {
        let xa = fx.at(x.0, &[(t, x.1)]);
        let xs = fx.load(types::F32, xa);
        let wa = fx.at(w.0, &[(t, w.1)]);
        let mut splats: Vec<(Type, Value)> = Vec::new();
        for ((col, width), &var) in pass.cols().zip(acc) {
            let ty = fx.ty(width);
            let xv = match splats.iter().find(|(t, _)| *t == ty) {
                Some(&(_, v)) => v,
                None => {
                    let v = fx.splat_value(ty, xs);
                    splats.push((ty, v));
                    v
                }
            };
            let wv = fx.load(ty, wa.add(col));
            let a = fx.b.use_var(var);
            let r = fx.fma(xv, wv, a);
            fx.b.def_var(var, r);
        }
    });
}

/// `acc[col] = f(acc[col], x[t * x_step + col], w[t * w_step + col])` for `t` in
/// `0..len`: per-channel updates (depthwise convolution, pooling).
fn lanewise(
    fx: &mut Fx,
    pass: &Pass,
    acc: &[Variable],
    x: Stream,
    w: Option<Stream>,
    len: usize,
    f: impl Fn(&mut Fx, Value, Value, Option<Value>) -> Value,
) {
    fx.for_n(len, |fx, t| {
        let xa = fx.at(x.0, &[(t, x.1)]);
        let wa = w.map(|(w, s)| fx.at(w, &[(t, s)]));
        for ((col, width), &var) in pass.cols().zip(acc) {
            let ty = fx.ty(width);
            let xv = fx.load(ty, xa.add(col));
            let wv = wa.map(|wa| fx.load(ty, wa.add(col)));
            let a = fx.b.use_var(var);
            let r = f(fx, a, xv, wv);
            fx.b.def_var(var, r);
        }
    });
}

/// Stores a pass's accumulators at `y` (column 0 of the row), scaled and activated.
pub(super) fn store(
    fx: &mut Fx,
    pass: &Pass,
    acc: &[Variable],
    scale: Option<f32>,
    act: Act,
    y: Addr,
) {
    for ((col, width), &var) in pass.cols().zip(acc) {
        let mut v = fx.b.use_var(var);
        if let Some(s) = scale {
            let ty = fx.ty(width);
            let s = fx.splat(ty, s);
            v = fx.b.ins().fmul(v, s);
        }
        let v = fx.act(act, v);
        fx.store(v, y.add(col));
    }
}

/// The same window with a stride that only matters between outputs and a dilation
/// that only matters between taps set to 1 where there is just one: address
/// coefficients then stay within the tensor sizes even for absurd but legal configs.
fn tame(w: &Window) -> Window {
    let mut w = *w;
    if w.output <= 1 {
        w.stride = 1;
    }
    if (0..w.output).all(|o| w.taps(o).len() <= 1) {
        w.dilation = 1;
    }
    w
}

/// Runs of consecutive output positions with the same in-range taps.
fn segments(w: &Window) -> Vec<(usize, usize, Range<usize>)> {
    let mut out: Vec<(usize, usize, Range<usize>)> = Vec::new();
    for o in 0..w.output {
        let taps = w.taps(o);
        match out.last_mut() {
            Some(last) if last.2 == taps => last.1 += 1,
            _ => out.push((o, 1, taps)),
        }
    }
    out
}

/// Loops over every output position of three windows, run by run: `f` gets the three
/// position variables (counting from each run's start), the runs' first positions and
/// their taps.
#[allow(clippy::type_complexity)]
fn windows3(
    fx: &mut Fx,
    windows: &[Window; 3],
    mut f: impl FnMut(&mut Fx, [Value; 3], [usize; 3], [Range<usize>; 3]),
) {
    let [sd, sh, sw] = windows.each_ref().map(segments);
    for (d0, dn, dt) in &sd {
        for (h0, hn, ht) in &sh {
            for (w0, wn, wt) in &sw {
                fx.for_n(*dn, |fx, od| {
                    fx.for_n(*hn, |fx, oh| {
                        fx.for_n(*wn, |fx, ow| {
                            f(
                                fx,
                                [od, oh, ow],
                                [*d0, *h0, *w0],
                                [dt.clone(), ht.clone(), wt.clone()],
                            )
                        })
                    })
                });
            }
        }
    }
}

/// The address of a pixel of a `[batch, d, h, w, channels]` buffer whose grid is
/// `grid`: at `first` when the position variables are 0, moving `step` positions per
/// unit of each.
fn pixel(
    fx: &mut Fx,
    base: Addr,
    [b, vd, vh, vw]: [Value; 4],
    first: [usize; 3],
    step: [usize; 3],
    grid: [usize; 3],
    channels: usize,
) -> Addr {
    let [gd, gh, gw] = grid;
    fx.at(
        base.add(((first[0] * gh + first[1]) * gw + first[2]) * channels),
        &[
            (b, gd * gh * gw * channels),
            (vd, step[0] * gh * gw * channels),
            (vh, step[1] * gw * channels),
            (vw, step[2] * channels),
        ],
    )
}

/// Emits one plan step.
pub(super) fn step(fx: &mut Fx, plan: &Plan, wl: &WeightLayout, step: &Step) {
    let arena = fx.arena;
    let value = |id: usize| Addr {
        base: arena,
        off: plan.values[id].offset as i64,
    };
    let weights = fx.weights;
    let weight = |id: usize| Addr {
        base: weights,
        off: wl.offsets[id] as i64,
    };
    let x = step.inputs.first().map(|&v| value(v));
    let xs: Vec<Addr> = step.inputs.iter().map(|&v| value(v)).collect();
    let y = value(step.output);
    let x = x.unwrap_or(y);
    match &step.kernel {
        Kernel::Dense { p, w, b } => {
            let (k, n) = (p.k, p.n);
            let (w, b) = (weight(*w), b.map(weight));
            let ps = passes(n, fx.lanes);
            fx.for_n(p.rows, |fx, r| {
                let xr = fx.at(x, &[(r, k)]);
                let yr = fx.at(y, &[(r, n)]);
                for pass in &ps {
                    let acc = init(fx, pass, b, 0.0);
                    axpy(fx, pass, &acc, (xr, 1), (w, n), k);
                    store(fx, pass, &acc, None, p.act, yr);
                }
            });
        }
        Kernel::Conv { p, w, b } => conv(fx, p, x, weight(*w), b.map(weight), y),
        Kernel::ConvTranspose { p, w, b } => conv_transpose(fx, p, x, weight(*w), b.map(weight), y),
        Kernel::Pool(p) => {
            let p = &kerac::pool::Pool {
                windows: p.windows.each_ref().map(tame),
                ..*p
            };
            let [wd, wh, ww] = p.windows;
            let c = p.channels;
            let ps = passes(c, fx.lanes);
            let max = p.max;
            fx.for_n(p.batch, |fx, b| {
                windows3(
                    fx,
                    &p.windows,
                    |fx, [od, oh, ow], [d0, h0, w0], [dt, ht, wt]| {
                        let ypix = pixel(
                            fx,
                            y,
                            [b, od, oh, ow],
                            [d0, h0, w0],
                            [1, 1, 1],
                            [wd.output, wh.output, ww.output],
                            c,
                        );
                        let first = [
                            wd.at(d0, dt.start),
                            wh.at(h0, ht.start),
                            ww.at(w0, wt.start),
                        ];
                        let xpix = pixel(
                            fx,
                            x,
                            [b, od, oh, ow],
                            first,
                            [wd.stride, wh.stride, ww.stride],
                            [wd.input, wh.input, ww.input],
                            c,
                        );
                        let count = dt.len() * ht.len() * wt.len();
                        for pass in &ps {
                            let acc =
                                init(fx, pass, None, if max { f32::NEG_INFINITY } else { 0.0 });
                            fx.for_n(dt.len(), |fx, kd| {
                                fx.for_n(ht.len(), |fx, kh| {
                                    let xrow = fx.at(
                                        xpix,
                                        &[
                                            (kd, wd.dilation * wh.input * ww.input * c),
                                            (kh, wh.dilation * ww.input * c),
                                        ],
                                    );
                                    lanewise(
                                        fx,
                                        pass,
                                        &acc,
                                        (xrow, ww.dilation * c),
                                        None,
                                        wt.len(),
                                        |fx, a, v, _| {
                                            if max {
                                                fx.max(v, a)
                                            } else {
                                                fx.b.ins().fadd(a, v)
                                            }
                                        },
                                    );
                                })
                            });
                            let scale = (!max).then(|| 1.0 / count.max(1) as f32);
                            store(fx, pass, &acc, scale, Act::Linear, ypix);
                        }
                    },
                )
            });
        }
        Kernel::GlobalPool(p) => {
            let c = p.channels;
            let ps = passes(c, fx.lanes);
            fx.for_n(p.batch, |fx, b| {
                let xb = fx.at(x, &[(b, p.positions * c)]);
                let yb = fx.at(y, &[(b, c)]);
                for pass in &ps {
                    let acc = init(fx, pass, None, if p.max { f32::NEG_INFINITY } else { 0.0 });
                    lanewise(fx, pass, &acc, (xb, c), None, p.positions, |fx, a, v, _| {
                        if p.max {
                            fx.max(v, a)
                        } else {
                            fx.b.ins().fadd(a, v)
                        }
                    });
                    let scale = (!p.max).then(|| 1.0 / p.positions as f32);
                    store(fx, pass, &acc, scale, Act::Linear, yb);
                }
            });
        }
        Kernel::ScaleShift { p, scale, offset } => {
            let (s, o) = (weight(*scale), weight(*offset));
            per_channel(fx, p, x, y, &[s, o], |fx, v, w| {
                let m = fx.b.ins().fmul(v, w[0]);
                fx.b.ins().fadd(m, w[1])
            });
        }
        Kernel::Prelu { p, alpha } => {
            per_channel(fx, p, x, y, &[weight(*alpha)], |fx, v, w| {
                let ty = fx.b.func.dfg.value_type(v);
                let zero = fx.splat(ty, 0.0);
                let pos = fx.max(v, zero);
                let nv = fx.b.ins().fneg(v);
                let neg = fx.max(nv, zero);
                let neg = fx.b.ins().fneg(neg);
                let m = fx.b.ins().fmul(w[0], neg);
                fx.b.ins().fadd(pos, m)
            });
        }
        Kernel::Activation(act) => {
            let n = plan.values[step.output].len;
            fx.chunks(n, |fx, ty, ix| {
                let a = fx.ix(x, ix);
                let v = fx.load(ty, a);
                let v = fx.act(*act, v);
                let b = fx.ix(y, ix);
                fx.store(v, b);
            });
        }
        Kernel::Softmax { p, log } => super::kernels_norm::softmax(fx, p, *log, x, y),
        Kernel::LayerNorm { p, gamma, beta } => {
            super::kernels_norm::layer_norm(fx, p, gamma.map(weight), beta.map(weight), x, y)
        }
        Kernel::GroupNorm { p, gamma, beta } => {
            super::kernels_norm::group_norm(fx, p, gamma.map(weight), beta.map(weight), x, y)
        }
        Kernel::UnitNorm(p) => super::kernels_norm::unit_norm(fx, p, x, y),
        Kernel::Merge {
            fold,
            shape,
            strides,
        } => merge(fx, *fold, shape, strides, &xs, y),
        Kernel::Concat { outer, parts } => {
            let row: usize = parts.iter().sum();
            fx.for_n(*outer, |fx, o| {
                let mut at = 0;
                for (xi, &n) in xs.iter().zip(parts) {
                    let from = fx.at(*xi, &[(o, n)]);
                    let to = fx.at(y.add(at), &[(o, row)]);
                    copy(fx, from, to, n);
                    at += n;
                }
            });
        }
        Kernel::BatchDot(p) => super::kernels_norm::batch_dot(fx, p, xs[0], xs[1], y),
        Kernel::StridedCopy(p) => {
            merge(fx, Fold::Add, &p.shape, &[p.strides], &[x.add(p.offset)], y)
        }
        Kernel::Resample(p) => resample(fx, p, x, y),
        Kernel::Gather { p, table } => gather(fx, p, x, weight(*table), y),
        Kernel::Attention { p, w } => {
            super::kernels_norm::attention(fx, p, [xs[0], xs[1], xs[2]], w.map(weight), y)
        }
        Kernel::Recurrent {
            p,
            u,
            rb,
            initial,
            masked,
        } => {
            let states = xs.len() - 1 - *masked as usize;
            let init = |i: usize| xs.get(i).copied().filter(|_| *initial && i <= states);
            let mask = xs.last().copied().filter(|_| *masked);
            super::kernels_recurrent::recurrent(
                fx,
                p,
                x,
                weight(*u),
                rb.map(weight),
                [init(1), init(2)],
                mask,
                y,
            )
        }
    }
}

/// `y[o, j, i] = f(x[o, j, i], params[..][j])` over a [`kerac::norm::Strided`] shape.
fn per_channel(
    fx: &mut Fx,
    p: &kerac::norm::Strided,
    x: Addr,
    y: Addr,
    params: &[Addr],
    f: impl Fn(&mut Fx, Value, &[Value]) -> Value,
) {
    let (n, inner) = (p.n, p.inner);
    fx.for_n(p.outer, |fx, o| {
        let xo = fx.at(x, &[(o, n * inner)]);
        let yo = fx.at(y, &[(o, n * inner)]);
        if inner == 1 {
            // Channels last: the parameters run alongside the values.
            fx.chunks(n, |fx, ty, ix| {
                let ws: Vec<Value> = params
                    .iter()
                    .map(|&a| {
                        let a = fx.ix(a, ix);
                        fx.load(ty, a)
                    })
                    .collect();
                let xa = fx.ix(xo, ix);
                let v = fx.load(ty, xa);
                let r = f(fx, v, &ws);
                let ya = fx.ix(yo, ix);
                fx.store(r, ya);
            });
        } else {
            fx.for_n(n, |fx, j| {
                let xj = fx.at(xo, &[(j, inner)]);
                let yj = fx.at(yo, &[(j, inner)]);
                let pj: Vec<Addr> = params.iter().map(|&a| fx.at(a, &[(j, 1)])).collect();
                fx.chunks(inner, |fx, ty, ix| {
                    let ws: Vec<Value> = pj.iter().map(|&a| fx.bcast(ty, a)).collect();
                    let xa = fx.ix(xj, ix);
                    let v = fx.load(ty, xa);
                    let r = f(fx, v, &ws);
                    let ya = fx.ix(yj, ix);
                    fx.store(r, ya);
                });
            });
        }
    });
}

fn conv(fx: &mut Fx, p: &kerac::conv::Conv, x: Addr, w: Addr, bias: Option<Addr>, y: Addr) {
    let p = &kerac::conv::Conv {
        windows: p.windows.each_ref().map(tame),
        ..*p
    };
    let [wd, wh, ww] = p.windows;
    let (cin, cout, groups) = (p.cin, p.cout, p.groups.max(1));
    let (cin_g, cout_g) = (cin / groups, cout / groups);
    let depthwise = cin_g == 1 && cout_g == 1;
    let ps = passes(if depthwise { cout } else { cout_g }, fx.lanes);
    fx.for_n(p.batch, |fx, b| {
        windows3(
            fx,
            &p.windows,
            |fx, [od, oh, ow], [d0, h0, w0], [dt, ht, wt]| {
                let ypix = pixel(
                    fx,
                    y,
                    [b, od, oh, ow],
                    [d0, h0, w0],
                    [1, 1, 1],
                    [wd.output, wh.output, ww.output],
                    cout,
                );
                if dt.is_empty() || ht.is_empty() || wt.is_empty() {
                    // Every tap in padding: the bias alone.
                    for pass in &passes(cout, fx.lanes) {
                        let acc = init(fx, pass, bias, 0.0);
                        store(fx, pass, &acc, None, p.act, ypix);
                    }
                    return;
                }
                let first = [
                    wd.at(d0, dt.start),
                    wh.at(h0, ht.start),
                    ww.at(w0, wt.start),
                ];
                let xpix = pixel(
                    fx,
                    x,
                    [b, od, oh, ow],
                    first,
                    [wd.stride, wh.stride, ww.stride],
                    [wd.input, wh.input, ww.input],
                    cin,
                );
                let tap0 = (dt.start * wh.kernel + ht.start) * ww.kernel + wt.start;
                let wtap = w.add(tap0 * cin_g * cout);
                let taps = |fx: &mut Fx, body: &mut dyn FnMut(&mut Fx, Addr, Addr)| {
                    fx.for_n(dt.len(), |fx, kd| {
                        fx.for_n(ht.len(), |fx, kh| {
                            let xrow = fx.at(
                                xpix,
                                &[
                                    (kd, wd.dilation * wh.input * ww.input * cin),
                                    (kh, wh.dilation * ww.input * cin),
                                ],
                            );
                            let wrow = fx.at(
                                wtap,
                                &[
                                    (kd, wh.kernel * ww.kernel * cin_g * cout),
                                    (kh, ww.kernel * cin_g * cout),
                                ],
                            );
                            body(fx, xrow, wrow);
                        })
                    });
                };
                if depthwise {
                    for pass in &ps {
                        let acc = init(fx, pass, bias, 0.0);
                        taps(fx, &mut |fx, xrow, wrow| {
                            lanewise(
                                fx,
                                pass,
                                &acc,
                                (xrow, ww.dilation * cin),
                                Some((wrow, cout)),
                                wt.len(),
                                |fx, a, v, w| fx.fma(v, w.unwrap_or(v), a),
                            );
                        });
                        store(fx, pass, &acc, None, p.act, ypix);
                    }
                    return;
                }
                fx.for_n(groups, |fx, g| {
                    let yg = fx.at(ypix, &[(g, cout_g)]);
                    let bg = bias.map(|bias| fx.at(bias, &[(g, cout_g)]));
                    for pass in &ps {
                        let acc = init(fx, pass, bg, 0.0);
                        taps(fx, &mut |fx, xrow, wrow| {
                            let xg = fx.at(xrow, &[(g, cin_g)]);
                            let wg = fx.at(wrow, &[(g, cout_g)]);
                            if groups == 1 && ww.dilation == 1 {
                                // One stream over (kw, ci): input and kernel rows are both
                                // contiguous across the width taps.
                                axpy(fx, pass, &acc, (xg, 1), (wg, cout), wt.len() * cin);
                            } else {
                                fx.for_n(wt.len(), |fx, kw| {
                                    let xk = fx.at(xg, &[(kw, ww.dilation * cin)]);
                                    let wk = fx.at(wg, &[(kw, cin_g * cout)]);
                                    axpy(fx, pass, &acc, (xk, 1), (wk, cout), cin_g);
                                });
                            }
                        });
                        store(fx, pass, &acc, None, p.act, yg);
                    }
                });
            },
        )
    });
}

/// Scatters each input pixel through the kernel into the output, as the runtime does;
/// the kernel was stored `[taps, cin, cout]` by the weight layout.
fn conv_transpose(
    fx: &mut Fx,
    p: &kerac::conv::ConvTranspose,
    x: Addr,
    w: Addr,
    bias: Option<Addr>,
    y: Addr,
) {
    let p = &kerac::conv::ConvTranspose {
        windows: p.windows.each_ref().map(tame),
        ..*p
    };
    let [wd, wh, ww] = p.windows;
    let (cin, cout) = (p.cin, p.cout);
    let pixels = p.batch * wd.input * wh.input * ww.input;
    let ps = passes(cout, fx.lanes);
    fx.for_n(pixels, |fx, i| {
        let yp = fx.at(y, &[(i, cout)]);
        for pass in &ps {
            let acc = init(fx, pass, bias, 0.0);
            store(fx, pass, &acc, None, Act::Linear, yp);
        }
    });
    fx.for_n(p.batch, |fx, b| {
        windows3(
            fx,
            &p.windows,
            |fx, [id, ih, iw], [d0, h0, w0], [dt, ht, wt]| {
                if dt.is_empty() || ht.is_empty() || wt.is_empty() {
                    return;
                }
                let xpix = pixel(
                    fx,
                    x,
                    [b, id, ih, iw],
                    [d0, h0, w0],
                    [1, 1, 1],
                    [wd.output, wh.output, ww.output],
                    cin,
                );
                let first = [
                    wd.at(d0, dt.start),
                    wh.at(h0, ht.start),
                    ww.at(w0, wt.start),
                ];
                let ypix = pixel(
                    fx,
                    y,
                    [b, id, ih, iw],
                    first,
                    [wd.stride, wh.stride, ww.stride],
                    [wd.input, wh.input, ww.input],
                    cout,
                );
                let tap0 = (dt.start * wh.kernel + ht.start) * ww.kernel + wt.start;
                let wtap = w.add(tap0 * cin * cout);
                fx.for_n(dt.len(), |fx, kd| {
                    fx.for_n(ht.len(), |fx, kh| {
                        fx.for_n(wt.len(), |fx, kw| {
                            let yo = fx.at(
                                ypix,
                                &[
                                    (kd, wd.dilation * wh.input * ww.input * cout),
                                    (kh, wh.dilation * ww.input * cout),
                                    (kw, ww.dilation * cout),
                                ],
                            );
                            let wk = fx.at(
                                wtap,
                                &[
                                    (kd, wh.kernel * ww.kernel * cin * cout),
                                    (kh, ww.kernel * cin * cout),
                                    (kw, cin * cout),
                                ],
                            );
                            for pass in &ps {
                                let acc = init(fx, pass, Some(yo), 0.0);
                                axpy(fx, pass, &acc, (xpix, 1), (wk, cout), cin);
                                store(fx, pass, &acc, None, Act::Linear, yo);
                            }
                        })
                    })
                });
            },
        )
    });
    if p.act != Act::Linear {
        fx.chunks(pixels * cout, |fx, ty, ix| {
            let a = fx.ix(y, ix);
            let v = fx.load(ty, a);
            let v = fx.act(p.act, v);
            fx.store(v, a);
        });
    }
}

fn fold(fx: &mut Fx, f: Fold, acc: Value, v: Value) -> Value {
    match f {
        Fold::Add | Fold::Average => fx.b.ins().fadd(acc, v),
        Fold::Subtract => fx.b.ins().fsub(acc, v),
        Fold::Multiply => fx.b.ins().fmul(acc, v),
        Fold::Maximum => fx.max(v, acc),
        Fold::Minimum => fx.min(v, acc),
    }
}

/// Elementwise folds over inputs with their own strides (broadcasting), and strided
/// copies (one input): contiguous inputs run as vectors over the flat length.
fn merge(
    fx: &mut Fx,
    f: Fold,
    shape: &[usize; RANK],
    strides: &[[usize; RANK]],
    xs: &[Addr],
    y: Addr,
) {
    let total: usize = shape.iter().product();
    let n = strides.len();
    let mut contiguous = [0; RANK];
    let mut step = 1;
    for i in (0..RANK).rev() {
        contiguous[i] = if shape[i] == 1 { 0 } else { step };
        step *= shape[i];
    }
    let plain = |s: &[usize; RANK]| (0..RANK).all(|i| shape[i] == 1 || s[i] == contiguous[i]);
    let average = (f == Fold::Average).then(|| 1.0 / n as f32);
    if strides.iter().all(plain) {
        fx.chunks(total, |fx, ty, ix| {
            let a = fx.ix(xs[0], ix);
            let mut acc = fx.load(ty, a);
            for &x in &xs[1..] {
                let a = fx.ix(x, ix);
                let v = fx.load(ty, a);
                acc = fold(fx, f, acc, v);
            }
            if let Some(s) = average {
                let s = fx.splat(ty, s);
                acc = fx.b.ins().fmul(acc, s);
            }
            let b = fx.ix(y, ix);
            fx.store(acc, b);
        });
        return;
    }
    let dims: Vec<usize> = (0..RANK).filter(|&d| shape[d] > 1).collect();
    nest(fx, shape, &dims, &mut Vec::new(), &mut |fx, idx| {
        let at = |fx: &mut Fx, base: Addr, s: &[usize; RANK]| {
            let terms: Vec<(Value, usize)> =
                dims.iter().zip(idx).map(|(&d, &v)| (v, s[d])).collect();
            fx.at(base, &terms)
        };
        let a = at(fx, xs[0], &strides[0]);
        let mut acc = fx.load(types::F32, a);
        for (&x, s) in xs.iter().zip(strides).skip(1) {
            let a = at(fx, x, s);
            let v = fx.load(types::F32, a);
            acc = fold(fx, f, acc, v);
        }
        if let Some(s) = average {
            let s = fx.splat(types::F32, s);
            acc = fx.b.ins().fmul(acc, s);
        }
        let b = at(fx, y, &contiguous);
        fx.store(acc, b);
    });
}

/// Loops over the axes `dims` of `shape`, outermost first.
fn nest(
    fx: &mut Fx,
    shape: &[usize; RANK],
    dims: &[usize],
    idx: &mut Vec<Value>,
    body: &mut dyn FnMut(&mut Fx, &[Value]),
) {
    match dims.split_first() {
        None => body(fx, idx),
        Some((&d, rest)) => fx.for_n(shape[d], |fx, i| {
            idx.push(i);
            nest(fx, shape, rest, idx, body);
            idx.pop();
        }),
    }
}

/// Padding, cropping and resizing, from per-axis tables of source positions and
/// weights in the code (constants, so the path does not depend on the data).
fn resample(fx: &mut Fx, p: &kerac::shape::Resample, x: Addr, y: Addr) {
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
fn gather(fx: &mut Fx, p: &kerac::shape::Gather, x: Addr, table: Addr, y: Addr) {
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
        let row = fx.b.ins().fcvt_to_uint_sat(types::I64, v);
        let from = fx.at(table, &[(row, p.dim)]);
        let to = fx.at(y, &[(i, p.dim)]);
        copy(fx, from, to, p.dim);
    });
}

/// The traced `log` of the runtime, for softmax.
pub(super) fn log_tape() -> Tape {
    Tape::trace(kerac::act::log_l)
}
