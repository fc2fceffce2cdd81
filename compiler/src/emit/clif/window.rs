//! Sliding windows shared by convolutions and pooling: each axis split into runs of
//! output positions whose taps are all inside the input, so that the inner loops need
//! no bounds tests.

use super::fx::{Addr, Fx};
use cranelift_codegen::ir::Value;
use kerac::Window;
use std::ops::Range;

/// The same window with a stride that only matters between outputs and a dilation
/// that only matters between taps set to 1 where there is just one: address
/// coefficients then stay within the tensor sizes even for absurd but legal configs.
pub(super) fn tame(w: &Window) -> Window {
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
pub(super) fn segments(w: &Window) -> Vec<(usize, usize, Range<usize>)> {
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
pub(super) fn windows3(
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
pub(super) fn pixel(
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
pub(super) fn first_tap(
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
