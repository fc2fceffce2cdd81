//! The inner loops that decide speed, written once over [`Vector`]: each kernel
//! calls them with its ISA's registers inside [`crate::isa::Isa::vectorize`].

use crate::isa::Isa;
use crate::lanes::Vector;

/// `y += a * x` over `min(len)` values: `I`'s widest registers, then its half
/// width, then one by one.
#[inline(always)]
pub(crate) fn axpy<I: Isa>(y: &mut [f32], a: f32, x: &[f32]) {
    let n = y.len().min(x.len());
    let i = axpy_lanes::<I::F>(y, a, x, 0, n);
    let i = axpy_lanes::<I::H>(y, a, x, i, n);
    // `get`, not indexing, for the tails: `i <= n`, but the optimiser cannot always
    // see it, and an index would leave a panic path.
    let (yt, xt) = (
        y.get_mut(i..n).unwrap_or_default(),
        x.get(i..n).unwrap_or_default(),
    );
    for (yv, &xv) in yt.iter_mut().zip(xt) {
        *yv += a * xv;
    }
}

/// [`axpy`] in whole registers of `V` from `i` while they fit below `n`; returns the
/// first value left.
#[inline(always)]
fn axpy_lanes<V: Vector>(y: &mut [f32], a: f32, x: &[f32], mut i: usize, n: usize) -> usize {
    let (yp, xp) = (y.as_mut_ptr(), x.as_ptr());
    let av = V::splat(a);
    while i + V::LANES <= n {
        // SAFETY: `i + LANES <= n <= len` of both slices; the ISA is the caller's.
        unsafe {
            av.mul_add(V::load(xp.add(i)), V::load(yp.add(i)))
                .store(yp.add(i))
        };
        i += V::LANES;
    }
    i
}

/// `y += a * x` elementwise over `min(len)` values (a depthwise tap over channels).
#[inline(always)]
pub(crate) fn mul_acc<I: Isa>(y: &mut [f32], a: &[f32], x: &[f32]) {
    let n = y.len().min(a.len()).min(x.len());
    let i = mul_acc_lanes::<I::F>(y, a, x, 0, n);
    let i = mul_acc_lanes::<I::H>(y, a, x, i, n);
    let yt = y.get_mut(i..n).unwrap_or_default();
    let (at, xt) = (
        a.get(i..n).unwrap_or_default(),
        x.get(i..n).unwrap_or_default(),
    );
    for ((yv, &av), &xv) in yt.iter_mut().zip(at).zip(xt) {
        *yv += av * xv;
    }
}

/// [`mul_acc`] in whole registers of `V`, as [`axpy_lanes`].
#[inline(always)]
fn mul_acc_lanes<V: Vector>(y: &mut [f32], a: &[f32], x: &[f32], mut i: usize, n: usize) -> usize {
    let (yp, ap, xp) = (y.as_mut_ptr(), a.as_ptr(), x.as_ptr());
    while i + V::LANES <= n {
        // SAFETY: `i + LANES <= n <= len` of all three slices; the ISA is the caller's.
        unsafe {
            let acc = V::load(ap.add(i)).mul_add(V::load(xp.add(i)), V::load(yp.add(i)));
            acc.store(yp.add(i));
        }
        i += V::LANES;
    }
    i
}

/// `sum(a * b)` over `min(len)` values, in eight interleaved partial sums.
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let n = a.len().min(b.len());
    let (ah, at) = a[..n].split_at(n - n % 8);
    let (bh, bt) = b[..n].split_at(n - n % 8);
    for (ac, bc) in ah.chunks_exact(8).zip(bh.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += ac[i] * bc[i];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (&x, &y) in at.iter().zip(bt) {
        s += x * y;
    }
    s
}

/// `&s[start..start + len]` without a bounds check.
///
/// # Safety
/// `start + len <= s.len()`: kernels establish it for every use by checking their
/// buffer lengths against their constant parameters on entry.
#[inline(always)]
pub(crate) unsafe fn part(s: &[f32], start: usize, len: usize) -> &[f32] {
    // SAFETY: the caller guarantees the range is inside `s`.
    unsafe { s.get_unchecked(start..start + len) }
}

/// `&mut s[start..start + len]` without a bounds check.
///
/// # Safety
/// As for [`part`].
#[inline(always)]
pub(crate) unsafe fn part_mut(s: &mut [f32], start: usize, len: usize) -> &mut [f32] {
    // SAFETY: the caller guarantees the range is inside `s`.
    unsafe { s.get_unchecked_mut(start..start + len) }
}

/// `V::LANES` bias values from column `col`, or zeros without a bias.
///
/// # Safety
/// `bias`, when given, holds `col + V::LANES` floats; the ISA is the caller's.
#[inline(always)]
pub(crate) unsafe fn bias_vector<V: Vector>(bias: Option<*const f32>, col: usize) -> V {
    match bias {
        // SAFETY: the caller guarantees the floats are there.
        Some(b) => unsafe { V::load(b.add(col)) },
        None => V::splat(0.0),
    }
}

/// Asks the cache for the line holding `p`: a hint with no effect on results, and no
/// fault for any address.
#[inline(always)]
pub(crate) fn prefetch(p: *const f32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing and cannot fault; SSE is in every x86-64.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
