//! `kerac::pool`: windowed and global pooling.

use super::fx::{Addr, Fx};
use super::simd::{init, lanewise, passes, store};
use super::window::{first_tap, pixel, tame, windows3};
use cranelift_codegen::ir::InstBuilder;
use kerac::Act;

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

/// `kerac::pool::global_pool`: the mean or maximum over positions, per channel.
pub(super) fn global_pool(fx: &mut Fx, p: &kerac::pool::GlobalPool, x: Addr, y: Addr) {
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
