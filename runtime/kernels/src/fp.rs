//! The floating-point environment a model runs in: subnormals flushed to zero, as
//! TensorFlow's CPU kernels run Keras models.
//!
//! TensorFlow sets x86's FTZ and DAZ bits for its kernels, so Keras treats a subnormal
//! input as zero and rounds a subnormal result to zero. A model computed with IEEE 754
//! subnormals differs from Keras wherever one is scaled back into the normal range, and
//! on cores whose subnormal arithmetic takes microcode assists (Intel's) it runs many
//! times slower on such inputs: a worst case that depends on the data. [`flushed`] sets
//! both bits for one model call and puts the caller's bits back after it.

/// MXCSR's flush-to-zero (bit 15) and denormals-are-zero (bit 6) bits.
#[cfg(target_arch = "x86_64")]
pub const FTZ_DAZ: u32 = 0x8040;

/// Runs `f` with subnormal inputs and results of float arithmetic flushed to zero,
/// then restores the caller's setting. On x86-64 this is the MXCSR's FTZ and DAZ bits;
/// elsewhere `f` runs in the environment it is called in (aarch64 code compiled from
/// Rust uses the caller's FPCR).
#[inline(always)]
pub fn flushed<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        let old = mxcsr();
        set_mxcsr(old | FTZ_DAZ);
        let r = f();
        set_mxcsr(old);
        r
    }
    #[cfg(not(target_arch = "x86_64"))]
    f()
}

/// The MXCSR register.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn mxcsr() -> u32 {
    let mut v: u32 = 0;
    // SAFETY: `stmxcsr` writes four bytes to the address given, here `v`; SSE is part
    // of every x86-64.
    unsafe {
        core::arch::asm!(
            "stmxcsr [{}]",
            in(reg) &mut v,
            options(nostack, preserves_flags)
        );
    }
    v
}

/// Sets the MXCSR register. Only its control bits are meant to change: the caller
/// passes what [`mxcsr`] read, with FTZ and DAZ set or as they were.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn set_mxcsr(v: u32) {
    // SAFETY: `ldmxcsr` reads four bytes from `v`. The values passed are the register's
    // own with bits 15 and 6 set, which every x86-64 with SSE2 accepts (DAZ is in the
    // MXCSR_MASK of every CPU that has SSE2).
    unsafe {
        core::arch::asm!(
            "ldmxcsr [{}]",
            in(reg) &v,
            options(nostack, preserves_flags)
        );
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    #[test]
    fn flushes_inside_and_restores_after() {
        let before = mxcsr();
        let tiny = core::hint::black_box(1e-40f32);
        let big = core::hint::black_box(1e30f32);
        // IEEE 754 outside: a subnormal input and a subnormal product stay.
        assert_eq!(tiny * big, 1e-40f32 * 1e30);
        assert!(core::hint::black_box(1e-20f32) * core::hint::black_box(1e-20f32) > 0.0);
        let (scaled, under, inside) = flushed(|| {
            (
                core::hint::black_box(core::hint::black_box(tiny) * core::hint::black_box(big)),
                core::hint::black_box(
                    core::hint::black_box(1e-20f32) * core::hint::black_box(1e-20f32),
                ),
                mxcsr(),
            )
        });
        assert_eq!(scaled, 0.0, "a subnormal input reads as zero");
        assert_eq!(under, 0.0, "a subnormal result is zero");
        // The control bits (the low six are sticky exception flags).
        let control = |v: u32| v & !0x3f;
        assert_eq!(control(inside), control(before | FTZ_DAZ));
        assert_eq!(
            control(mxcsr()),
            control(before),
            "the caller's bits are back"
        );
        // A caller that flushes already keeps its bits.
        flushed(|| assert_eq!(control(flushed(mxcsr)), control(before | FTZ_DAZ)));
        assert_eq!(control(mxcsr()), control(before));
    }
}
