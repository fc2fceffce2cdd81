//! Shape arithmetic shared by the layer families: window geometry for convolution and
//! pooling (Keras's padding rules), and grouping a tensor by a set of axes.
//!
//! Spatial layers of every rank are handled as 3-D: a 1-D length `L` is `[1, 1, L]` and a
//! 2-D image `[1, H, W]`, so one loop nest serves Conv1D, Conv2D and Conv3D alike.

use crate::bail;
use crate::error::{Error, Result};
use ndarray::{ArrayD, IxDyn};

pub use kerac::Window;

/// Keras's output length and padding for `padding` in {valid, same, causal}.
/// "same" pads `total / 2` before and the rest after, like TensorFlow.
pub fn window(
    input: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    padding: &str,
) -> Result<Window> {
    if kernel == 0 || stride == 0 || dilation == 0 {
        bail!(
            "kernel size, strides and dilation must be positive (found {kernel}, {stride}, {dilation})"
        );
    }
    let span = dilation
        .checked_mul(kernel - 1)
        .and_then(|s| s.checked_add(1))
        .ok_or_else(|| Error::new("kernel span overflows"))?;
    let (output, pad_before) = match padding {
        "valid" => {
            if input < span {
                bail!(
                    "input length {input} is shorter than the kernel span {span} with padding valid"
                );
            }
            ((input - span) / stride + 1, 0)
        }
        "same" => {
            let output = input.div_ceil(stride);
            let needed = ((output - 1) as u128) * stride as u128 + span as u128;
            (output, (needed.saturating_sub(input as u128) / 2) as usize)
        }
        "causal" => ((input - 1) / stride + 1, span - 1),
        other => {
            bail!("padding `{other}` is not one of valid, same, causal")
        }
    };
    checked_window(Window {
        input,
        output,
        kernel,
        stride,
        dilation,
        pad_before,
    })
}

/// Refuses a window whose padded extent or kernel span passes [`MAX_WORK`]: the kernels'
/// position arithmetic (`input + pad_before`, `o * stride + k * dilation`) then cannot
/// overflow. A span that large (a huge `dilation_rate`) reads only padding anyway.
pub fn checked_window(w: Window) -> Result<Window> {
    let extent = (w.input as u128 + w.pad_before as u128)
        .max(w.output as u128 * w.stride as u128 + w.kernel as u128 * w.dilation as u128);
    if extent > MAX_WORK as u128 {
        bail!(
            "window of kernel {} with dilation {} and stride {} over length {} spans more than {MAX_WORK} positions",
            w.kernel,
            w.dilation,
            w.stride,
            w.input
        );
    }
    Ok(w)
}

/// The most multiply-adds (or window taps) one layer call may take: far beyond any
/// model that runs in real time, and low enough that every count derived from it
/// (FLOPs, bytes, trip counts) fits in 64 bits.
pub const MAX_WORK: u64 = 1 << 50;

/// Checks that the product of `factors` (window taps, output positions, channels, ...)
/// stays within [`MAX_WORK`], so the counts derived from them cannot overflow.
pub fn check_work(factors: &[usize], what: &str) -> Result<()> {
    let work = factors
        .iter()
        .try_fold(1u64, |acc, &f| acc.checked_mul(f as u64))
        .filter(|&w| w <= MAX_WORK);
    if work.is_none() {
        bail!("{what} {factors:?} multiply to more than {MAX_WORK} operations per call");
    }
    Ok(())
}

/// Lifts per-axis values of a 1-, 2- or 3-D layer to 3-D, filling leading axes with `fill`.
pub fn lift3<T: Copy>(values: &[T], fill: T) -> [T; 3] {
    let mut out = [fill; 3];
    let offset = 3 - values.len().min(3);
    for (i, v) in values.iter().take(3).enumerate() {
        out[offset + i] = *v;
    }
    out
}

/// Checks an `int or list` option has one value per spatial axis (an int repeats).
pub fn per_axis(name: &str, values: &[usize], rank: usize) -> Result<Vec<usize>> {
    match values.len() {
        1 => Ok(vec![values[0]; rank]),
        n if n == rank => Ok(values.to_vec()),
        n => Err(Error::new(format!(
            "`{name}` has {n} values, expected 1 or {rank}"
        ))),
    }
}

/// Checks a channels_last input of a spatial layer: `[batch, spatial x rank, channels]`.
pub fn spatial_input(shape: &[usize], rank: usize) -> Result<(usize, Vec<usize>, usize)> {
    if shape.len() != rank + 2 {
        bail!(
            "expected a rank-{} input (batch, {rank} spatial, channels), found shape {shape:?}",
            rank + 2
        );
    }
    Ok((shape[0], shape[1..=rank].to_vec(), shape[rank + 1]))
}

/// Only channels_last is supported; says what to do otherwise.
pub fn check_channels_last(data_format: Option<&str>) -> Result<()> {
    match data_format {
        None | Some("channels_last") => Ok(()),
        Some(other) => Err(Error::new(format!(
            "data_format `{other}` is not supported; re-save the model with channels_last"
        ))),
    }
}

/// Calls `f` on each group of values that share every index outside `axes`: `f` sees
/// the group flattened in row-major order of `axes`. Used for softmax and the norms.
/// Builds check `axes`; one out of range or named twice is skipped, not a panic.
pub fn for_each_group(a: &mut ArrayD<f32>, axes: &[usize], mut f: impl FnMut(&mut [f32])) {
    let rank = a.ndim();
    let mut kept: Vec<usize> = Vec::with_capacity(axes.len());
    for &d in axes {
        if d < rank && !kept.contains(&d) {
            kept.push(d);
        }
    }
    let axes = &kept[..];
    let mut order: Vec<usize> = (0..rank).filter(|d| !axes.contains(d)).collect();
    order.extend(axes);
    let group: usize = axes.iter().map(|&d| a.shape()[d]).product();
    let permuted = a.view().permuted_axes(IxDyn(&order));
    let mut flat: Vec<f32> = permuted.iter().copied().collect();
    for chunk in flat.chunks_mut(group.max(1)) {
        f(chunk);
    }
    let permuted_shape: Vec<usize> = order.iter().map(|&d| a.shape()[d]).collect();
    let back = ArrayD::from_shape_vec(IxDyn(&permuted_shape), flat).expect("same element count");
    let mut inverse = vec![0; rank];
    for (i, &d) in order.iter().enumerate() {
        inverse[d] = i;
    }
    a.assign(&back.permuted_axes(IxDyn(&inverse)));
}

#[cfg(test)]
mod tests {
    use super::window;

    #[test]
    fn same_padding_puts_the_odd_row_after() {
        let w = window(5, 4, 2, 1, "same").unwrap();
        assert_eq!((w.output, w.pad_before), (3, 1));
        let w = window(6, 3, 1, 2, "same").unwrap();
        assert_eq!((w.output, w.pad_before), (6, 2));
    }

    #[test]
    fn taps_are_exactly_those_inside_the_input() {
        for (input, kernel, stride, dilation, padding) in [
            (7, 3, 2, 1, "same"),
            (5, 4, 1, 2, "same"),
            (9, 3, 3, 2, "causal"),
            (3, 1000, 1, 1, "same"),
        ] {
            let w = window(input, kernel, stride, dilation, padding).unwrap();
            for o in 0..w.output {
                let expected: Vec<usize> = (0..kernel)
                    .filter(|&k| {
                        let p = (o * stride + k * dilation) as i64 - w.pad_before as i64;
                        (0..input as i64).contains(&p)
                    })
                    .collect();
                assert_eq!(
                    w.taps(o).collect::<Vec<_>>(),
                    expected,
                    "{input} {kernel} {stride} {dilation} {padding} o={o}"
                );
            }
        }
    }

    #[test]
    fn valid_and_causal_lengths() {
        assert_eq!(window(7, 3, 2, 1, "valid").unwrap().output, 3);
        let c = window(7, 3, 1, 2, "causal").unwrap();
        assert_eq!((c.output, c.pad_before), (7, 4));
        assert!(window(2, 3, 1, 1, "valid").is_err());
    }
}
