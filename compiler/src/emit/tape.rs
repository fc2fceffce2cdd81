//! Activations traced from the runtime's own definitions: `Act::eval_lanes` runs once
//! on a symbolic lane type that records each operation (a [`Tape`]); `clif/act.rs`
//! replays the record as Cranelift instructions, `clif/asm/act.rs` as assembled
//! vector code, and `c.rs` as C statements. Every backend therefore uses the same
//! approximations, in the same order, with the same error bounds as the Rust backend;
//! nothing is written twice. Knows nothing of any backend.

use kerac::act::Lanes;
use std::cell::RefCell;
use std::ops::{Add, Div, Mul, Neg, Sub};

/// One recorded operation; operands are indices of earlier operations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum TapeOp {
    Input(usize),
    Const(f32),
    Add(u32, u32),
    Sub(u32, u32),
    Mul(u32, u32),
    Div(u32, u32),
    Neg(u32),
    Gt(u32, u32),
    Lt(u32, u32),
    Ge(u32, u32),
    Select(u32, u32, u32),
    Trunc(u32),
    Pow2Minus1(u32),
    Exponent(u32),
    Mantissa(u32),
    Sqrt(u32),
}

impl TapeOp {
    /// The operands, in order.
    pub(crate) fn operands(&self) -> Vec<u32> {
        match *self {
            TapeOp::Input(_) | TapeOp::Const(_) => vec![],
            TapeOp::Add(a, b)
            | TapeOp::Sub(a, b)
            | TapeOp::Mul(a, b)
            | TapeOp::Div(a, b)
            | TapeOp::Gt(a, b)
            | TapeOp::Lt(a, b)
            | TapeOp::Ge(a, b) => vec![a, b],
            TapeOp::Select(m, a, b) => vec![m, a, b],
            TapeOp::Neg(a)
            | TapeOp::Trunc(a)
            | TapeOp::Pow2Minus1(a)
            | TapeOp::Exponent(a)
            | TapeOp::Mantissa(a)
            | TapeOp::Sqrt(a) => vec![a],
        }
    }
}

/// A recorded computation from inputs to one result.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Tape {
    pub(crate) ops: Vec<TapeOp>,
    pub(crate) result: u32,
}

thread_local! {
    static RECORDING: RefCell<Vec<TapeOp>> = const { RefCell::new(Vec::new()) };
}

/// A symbolic float lane: an index into the tape being recorded.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Traced(u32);

fn push(op: TapeOp) -> Traced {
    RECORDING.with(|r| {
        let mut r = r.borrow_mut();
        // Constants repeat often (every polynomial coefficient is splat at its use).
        if let TapeOp::Const(c) = op {
            if let Some(i) = r
                .iter()
                .position(|o| matches!(o, TapeOp::Const(d) if d.to_bits() == c.to_bits()))
            {
                return Traced(i as u32);
            }
        }
        r.push(op);
        Traced((r.len() - 1) as u32)
    })
}

macro_rules! binary {
    ($trait:ident, $f:ident, $op:ident) => {
        impl $trait for Traced {
            type Output = Traced;
            fn $f(self, o: Traced) -> Traced {
                push(TapeOp::$op(self.0, o.0))
            }
        }
    };
}
binary!(Add, add, Add);
binary!(Sub, sub, Sub);
binary!(Mul, mul, Mul);
binary!(Div, div, Div);

impl Neg for Traced {
    type Output = Traced;
    fn neg(self) -> Traced {
        push(TapeOp::Neg(self.0))
    }
}

impl Lanes for Traced {
    fn splat(v: f32) -> Traced {
        push(TapeOp::Const(v))
    }
    fn gt(self, o: Traced) -> Traced {
        push(TapeOp::Gt(self.0, o.0))
    }
    fn lt(self, o: Traced) -> Traced {
        push(TapeOp::Lt(self.0, o.0))
    }
    fn ge(self, o: Traced) -> Traced {
        push(TapeOp::Ge(self.0, o.0))
    }
    fn select(m: Traced, a: Traced, b: Traced) -> Traced {
        push(TapeOp::Select(m.0, a.0, b.0))
    }
    fn trunc(self) -> Traced {
        push(TapeOp::Trunc(self.0))
    }
    fn pow2_minus_1(self) -> Traced {
        push(TapeOp::Pow2Minus1(self.0))
    }
    fn exponent(self) -> Traced {
        push(TapeOp::Exponent(self.0))
    }
    fn mantissa(self) -> Traced {
        push(TapeOp::Mantissa(self.0))
    }
    fn sqrt(self) -> Traced {
        push(TapeOp::Sqrt(self.0))
    }
}

impl Tape {
    /// Records `f` applied to one input.
    pub fn trace(f: impl FnOnce(Traced) -> Traced) -> Tape {
        Self::trace_n(1, |xs| f(xs[0]))
    }

    /// Records `f` applied to `n` inputs.
    pub fn trace_n(n: usize, f: impl FnOnce(&[Traced]) -> Traced) -> Tape {
        RECORDING.with(|r| r.borrow_mut().clear());
        let inputs: Vec<Traced> = (0..n).map(|i| push(TapeOp::Input(i))).collect();
        let result = f(&inputs).0;
        let ops = RECORDING.with(|r| std::mem::take(&mut *r.borrow_mut()));
        Tape { ops, result }
    }
}
