//! `kerac::conv`: convolutions and transposed convolutions over the window runs.

use super::fx::{Addr, Fx};
use super::simd::{axpy, init, lanewise, passes, store};
use super::window::{first_tap, pixel, tame, windows3};
use kerac::Act;

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
