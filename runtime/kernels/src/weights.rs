//! Weights as generated code stores them: one aligned byte blob in read-only memory
//! (one literal that rustc compiles fast, not a float literal per weight), viewed as
//! float32 values.

#[cfg(target_endian = "big")]
compile_error!("kerac stores weights little-endian; big-endian targets are not supported");

/// `N` bytes of little-endian float32 weights, 64-byte aligned.
#[repr(C, align(64))]
pub struct Weights<const N: usize>(pub [u8; N]);

impl<const N: usize> Weights<N> {
    /// `len` floats from float offset `offset`; empty when out of range, which planned
    /// code never is (kernels then do nothing rather than panic).
    #[inline(always)]
    pub fn floats(&self, offset: usize, len: usize) -> &[f32] {
        let fits = offset
            .checked_add(len)
            .and_then(|end| end.checked_mul(4))
            .is_some_and(|end| end <= N);
        if !fits {
            return &[];
        }
        // SAFETY: the blob is 64-byte aligned and `offset * 4` is a multiple of 4, so the
        // pointer is aligned for f32; the range lies inside the blob (checked above); any
        // bit pattern is a valid f32; the target is little-endian, as the bytes are.
        unsafe { core::slice::from_raw_parts(self.0.as_ptr().cast::<f32>().add(offset), len) }
    }
}

/// Nested float arrays (`[[f32; W]; H]` and so on) as one flat slice: how `predict`
/// takes and returns arrays shaped like the model.
pub trait Flat {
    /// Floats in the array.
    const LEN: usize;
    /// The values in row-major order.
    fn flat(&self) -> &[f32];
    /// The values in row-major order, mutable.
    fn flat_mut(&mut self) -> &mut [f32];
}

impl<const N: usize> Flat for [f32; N] {
    const LEN: usize = N;
    #[inline(always)]
    fn flat(&self) -> &[f32] {
        self
    }
    #[inline(always)]
    fn flat_mut(&mut self) -> &mut [f32] {
        self
    }
}

impl<T: Flat, const N: usize> Flat for [T; N] {
    const LEN: usize = N * T::LEN;
    #[inline(always)]
    fn flat(&self) -> &[f32] {
        // SAFETY: an array of `Flat` arrays is `N * T::LEN` contiguous f32 values with no
        // padding (arrays have none, and f32 arrays nest without gaps).
        unsafe { core::slice::from_raw_parts(self.as_ptr().cast::<f32>(), Self::LEN) }
    }
    #[inline(always)]
    fn flat_mut(&mut self) -> &mut [f32] {
        // SAFETY: as in `flat`, and the borrow is exclusive.
        unsafe { core::slice::from_raw_parts_mut(self.as_mut_ptr().cast::<f32>(), Self::LEN) }
    }
}
