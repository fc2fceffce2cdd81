//! Sliding windows (convolution, transposed convolution, pooling), resampling and
//! gathers as Cranelift IR. Each window axis is split into runs of output positions
//! that see the same in-range taps (the interior is one run, each padded edge position
//! its own), and each run is a loop nest whose bounds are constants and whose taps all
//! land inside the input.

use super::fx::{Addr, Fx};
use super::kernels::{axpy, copy, init, lanewise, passes, store};
use cranelift_codegen::ir::{types, InstBuilder, Value};
use kerac::shape::AxisMap;
use kerac::{Act, Window};
use std::ops::Range;

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

/// The address of the first in-range tap of a run's output position: the input pixel
/// (the output pixel, for a transposed convolution) the window starts reading at.
#[allow(clippy::too_many_arguments)]
fn first_tap(
    fx: &mut Fx,
    base: Addr,
    vars: [Value; 4],
    windows: &[Window; 3],
    starts: [usize; 3],
    taps: [&Range<usize>; 3],
    channels: usize,
) -> Addr {
    let [wd, wh, ww] = windows;
    let first = [
        wd.at(starts[0], taps[0].start),
        wh.at(starts[1], taps[1].start),
        ww.at(starts[2], taps[2].start),
    ];
    pixel(
        fx,
        base,
        vars,
        first,
        [wd.stride, wh.stride, ww.stride],
        [wd.input, wh.input, ww.input],
        channels,
    )
}

/// Max and average pooling, window runs as in [`conv`].
pub(super) fn pool(fx: &mut Fx, p: &kerac::pool::Pool, x: Addr, y: Addr) {
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
                let xpix = first_tap(
                    fx,
                    x,
                    [b, od, oh, ow],
                    &p.windows,
                    [d0, h0, w0],
                    [&dt, &ht, &wt],
                    c,
                );
                let count = dt.len() * ht.len() * wt.len();
                for pass in &ps {
                    let acc = init(fx, pass, None, if max { f32::NEG_INFINITY } else { 0.0 });
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

pub(super) fn conv(
    fx: &mut Fx,
    p: &kerac::conv::Conv,
    x: Addr,
    w: Addr,
    bias: Option<Addr>,
    y: Addr,
) {
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
                let xpix = first_tap(
                    fx,
                    x,
                    [b, od, oh, ow],
                    &p.windows,
                    [d0, h0, w0],
                    [&dt, &ht, &wt],
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
pub(super) fn conv_transpose(
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
                let ypix = first_tap(
                    fx,
                    y,
                    [b, id, ih, iw],
                    &p.windows,
                    [d0, h0, w0],
                    [&dt, &ht, &wt],
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
