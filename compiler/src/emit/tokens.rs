//! The runtime's parameter types as Rust expressions, for the Rust emitter: each
//! struct field by field and each enum variant by variant, with fully qualified paths.
//! The impls destructure exhaustively, so a field or variant added to the runtime
//! fails to compile here until it is spelled.

use proc_macro2::{Literal, TokenStream};
use quote::quote;

/// A value as the Rust expression that rebuilds it.
pub trait ToRust {
    /// The expression's tokens.
    fn to_rust(&self) -> TokenStream;
}

impl ToRust for usize {
    fn to_rust(&self) -> TokenStream {
        let l = Literal::usize_unsuffixed(*self);
        quote!(#l)
    }
}

impl ToRust for bool {
    fn to_rust(&self) -> TokenStream {
        quote!(#self)
    }
}

impl ToRust for f32 {
    fn to_rust(&self) -> TokenStream {
        if self.is_nan() {
            quote!(f32::NAN)
        } else if *self == f32::INFINITY {
            quote!(f32::INFINITY)
        } else if *self == f32::NEG_INFINITY {
            quote!(f32::NEG_INFINITY)
        } else {
            // Debug prints the shortest text that reads back to the same bits.
            let l = Literal::f32_suffixed(*self);
            quote!(#l)
        }
    }
}

impl<T: ToRust, const N: usize> ToRust for [T; N] {
    fn to_rust(&self) -> TokenStream {
        let items = self.iter().map(ToRust::to_rust);
        quote!([#(#items),*])
    }
}

/// `impl ToRust` for a struct, naming every field.
macro_rules! record {
    ($($seg:ident)::+ { $($field:ident),* $(,)? }) => {
        impl ToRust for $($seg)::+ {
            fn to_rust(&self) -> TokenStream {
                let Self { $($field),* } = self;
                $(let $field = $field.to_rust();)*
                quote!($($seg)::+ { $($field: #$field),* })
            }
        }
    };
}

/// `impl ToRust` for an enum: unit variants, one-field tuple variants and struct
/// variants, every one named.
macro_rules! variants {
    ($($seg:ident)::+ {
        units: [$($unit:ident),* $(,)?],
        tuples: [$($tuple:ident),* $(,)?],
        structs: [$($st:ident { $($f:ident),* }),* $(,)?] $(,)?
    }) => {
        impl ToRust for $($seg)::+ {
            fn to_rust(&self) -> TokenStream {
                let ty = quote!($($seg)::+);
                match self {
                    $(Self::$unit => quote!(#ty::$unit),)*
                    $(Self::$tuple(v) => {
                        let v = v.to_rust();
                        quote!(#ty::$tuple(#v))
                    })*
                    $(Self::$st { $($f),* } => {
                        $(let $f = $f.to_rust();)*
                        quote!(#ty::$st { $($f: #$f),* })
                    })*
                }
            }
        }
    };
}

variants!(kerac::act::Act {
    units: [
        Linear,
        Relu,
        Relu6,
        Selu,
        Gelu,
        GeluTanh,
        Sigmoid,
        HardSigmoidKeras2,
        HardSigmoid,
        Tanh,
        Softplus,
        Softsign,
        Swish,
        Exponential,
        Mish,
        HardSwish,
        NonZero,
        Abs,
        Sqrt,
        Rsqrt,
        Log,
    ],
    tuples: [LeakyRelu, Elu, Thresholded, Max, Min, DivInto, Pow, Fill],
    structs: [
        ReluFull {
            max,
            slope,
            threshold
        },
        Clip { lo, hi }
    ],
});
variants!(kerac::merge::Fold {
    units: [Add, Subtract, Multiply, Average, Maximum, Minimum, Divide],
    tuples: [],
    structs: [],
});
variants!(kerac::recurrent::Cell {
    units: [Simple, Lstm],
    tuples: [],
    structs: [Gru { reset_after }],
});
variants!(kerac::shape::AxisMap {
    units: [],
    tuples: [],
    structs: [
        Pad { before, input, len },
        Crop { before, len },
        Nearest { scale, len },
        Reverse { len },
        Bilinear { scale, input, len },
    ],
});

record!(kerac::Window {
    input,
    output,
    kernel,
    stride,
    dilation,
    pad_before
});
record!(kerac::dense::Dense { rows, k, n, act });
record!(kerac::conv::Conv {
    batch,
    windows,
    cin,
    cout,
    groups,
    act,
    panels
});
record!(kerac::conv::ConvTranspose {
    batch,
    windows,
    cin,
    cout,
    act
});
record!(kerac::pool::Pool {
    batch,
    windows,
    channels,
    max
});
record!(kerac::pool::GlobalPool {
    batch,
    positions,
    channels,
    max
});
record!(kerac::norm::Strided { outer, n, inner });
record!(kerac::norm::LayerNorm {
    shape,
    epsilon,
    rms
});
record!(kerac::norm::GroupNorm {
    batch,
    positions,
    channels,
    groups,
    epsilon
});
record!(kerac::merge::BatchDot {
    batch,
    m,
    n,
    k,
    a,
    b,
    normalize
});
record!(kerac::shape::Strided {
    shape,
    strides,
    offset
});
record!(kerac::shape::Resample {
    batch,
    input,
    axes,
    channels
});
record!(kerac::shape::Gather {
    indices,
    vocab,
    dim
});
record!(kerac::attention::Attention {
    batch,
    heads,
    tq,
    tk,
    dk,
    dv,
    scale,
    causal,
    additive
});
record!(kerac::recurrent::Recurrent {
    cell,
    batch,
    steps,
    units,
    act,
    rec_act,
    backwards,
    input_order
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_read_back_to_the_same_bits() {
        for v in [
            0.1f32,
            -3.0e-38,
            1.0 / 3.0,
            f32::MAX,
            f32::MIN_POSITIVE,
            1e-45,
        ] {
            let text = v.to_rust().to_string();
            let back: f32 = text
                .trim_end_matches("f32")
                .replace(' ', "")
                .parse()
                .unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(back.to_bits(), v.to_bits(), "{text}");
        }
        assert_eq!(f32::INFINITY.to_rust().to_string(), "f32 :: INFINITY");
    }

    #[test]
    fn structs_and_variants_are_spelled_in_full() {
        let act = kerac::Act::ReluFull {
            max: f32::INFINITY,
            slope: 0.5,
            threshold: 0.0,
        };
        let text = act.to_rust().to_string().replace(' ', "");
        assert_eq!(
            text,
            "kerac::act::Act::ReluFull{max:f32::INFINITY,slope:0.5f32,threshold:0f32}"
        );
    }
}
