//! One spatial axis of a sliding window (convolution, pooling), with Keras's padding
//! already resolved into `pad_before`.

use core::ops::Range;

/// One spatial axis of a sliding window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Input length.
    pub input: usize,
    /// Output length.
    pub output: usize,
    /// Kernel taps.
    pub kernel: usize,
    /// Step between outputs.
    pub stride: usize,
    /// Spacing between taps.
    pub dilation: usize,
    /// Zero rows before the input (the rest of the padding goes after).
    pub pad_before: usize,
}

impl Window {
    /// A window with no effect: the length-1 axis that lifts 1-D and 2-D layers to 3-D.
    pub const UNIT: Window = Window {
        input: 1,
        output: 1,
        kernel: 1,
        stride: 1,
        dilation: 1,
        pad_before: 0,
    };

    /// The kernel taps of output `o` that land inside the input (not in padding):
    /// loops visit only these, so a window far larger than its input costs nothing.
    #[inline(always)]
    pub const fn taps(&self, o: usize) -> Range<usize> {
        // A zero dilation never comes out of the compiler; the guard keeps the division
        // below free of a panic path.
        if self.dilation == 0 {
            return 0..0;
        }
        // The compiler bounds every extent far below `usize::MAX`; saturating keeps a
        // hand-built window free of an overflow panic all the same.
        let start = o.saturating_mul(self.stride);
        let lo = self.pad_before.saturating_sub(start);
        let hi = self
            .input
            .saturating_add(self.pad_before)
            .saturating_sub(start);
        // Undilated windows (nearly all) skip the two divisions, which would cost more
        // than a small pixel's arithmetic: this runs once per output position and axis.
        let (lo, hi) = if self.dilation == 1 {
            (lo, hi)
        } else {
            (lo.div_ceil(self.dilation), hi.div_ceil(self.dilation))
        };
        let hi = if hi < self.kernel { hi } else { self.kernel };
        let lo = if lo < hi { lo } else { hi };
        lo..hi
    }

    /// True when every tap of every output lands inside the input: no padding, and the
    /// last window ends inside (Keras's `valid`, or an input padded beforehand).
    #[inline]
    pub const fn is_valid(&self) -> bool {
        self.pad_before == 0
            && (self.output == 0
                || (self.output - 1)
                    .saturating_mul(self.stride)
                    .saturating_add(self.kernel.saturating_sub(1).saturating_mul(self.dilation))
                    < self.input)
    }

    /// The outputs all of whose taps land inside the input: one run, between the
    /// outputs that reach into the padding before and after.
    #[inline]
    pub const fn interior(&self) -> Range<usize> {
        if self.stride == 0 {
            return 0..0;
        }
        let start = self.pad_before.div_ceil(self.stride);
        let reach = self.kernel.saturating_sub(1).saturating_mul(self.dilation);
        // The last output's window ends on the input's last position at most.
        let room = self.input.saturating_add(self.pad_before);
        let end = if room > reach {
            (room - reach - 1) / self.stride + 1
        } else {
            0
        };
        let end = if end < self.output { end } else { self.output };
        let start = if start < end { start } else { end };
        start..end
    }

    /// Input position of tap `k` of output `o`, for `k` in [`Window::taps`]`(o)`.
    #[inline(always)]
    pub const fn at(&self, o: usize, k: usize) -> usize {
        o * self.stride + k * self.dilation - self.pad_before
    }
}

#[cfg(test)]
mod tests {
    use super::Window;
    use std::vec::Vec;

    #[test]
    fn interior_holds_exactly_the_outputs_with_every_tap_inside() {
        for input in 1..12 {
            for kernel in 1..5 {
                for stride in 1..4 {
                    for dilation in 1..3 {
                        for pad_before in 0..4 {
                            let reach = (kernel - 1) * dilation;
                            let padded = input + 2 * pad_before;
                            if padded <= reach {
                                continue;
                            }
                            let w = Window {
                                input,
                                output: (padded - reach - 1) / stride + 1,
                                kernel,
                                stride,
                                dilation,
                                pad_before,
                            };
                            let full: Vec<usize> = (0..w.output)
                                .filter(|&o| w.taps(o).len() == kernel)
                                .collect();
                            let interior: Vec<usize> = w.interior().collect();
                            assert_eq!(interior, full, "{w:?}");
                        }
                    }
                }
            }
        }
    }
}
