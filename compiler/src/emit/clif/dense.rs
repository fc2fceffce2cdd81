//! `kerac::dense`: output columns in register-blocked passes.

use super::fx::{Addr, Fx};
use super::simd::{axpy, init, passes, store};

/// `kerac::dense::dense`: each row of `x` times `w` (`[k, n]`), plus the bias, activated.
pub(super) fn dense(
    fx: &mut Fx,
    p: &kerac::dense::Dense,
    x: Addr,
    w: Addr,
    b: Option<Addr>,
    y: Addr,
) {
    let (k, n) = (p.k, p.n);
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
