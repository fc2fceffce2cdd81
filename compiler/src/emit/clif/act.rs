//! Activations traced from the runtime's own definitions: `Act::eval_lanes` runs once
//! on a symbolic lane type that records each operation, and the record is replayed as
//! Cranelift instructions. The native code therefore uses the same approximations, in
//! the same order, with the same error bounds as the Rust backend; nothing is written
//! twice.

use super::fx::Fx;
use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{types, InstBuilder, MemFlagsData, Type, Value};
use kerac::act::Lanes;
use std::cell::RefCell;
use std::ops::{Add, Div, Mul, Neg, Sub};

/// One recorded operation; operands are indices of earlier operations.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
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

/// A recorded computation from inputs to one result.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Tape {
    ops: Vec<Op>,
    result: u32,
}

thread_local! {
    static RECORDING: RefCell<Vec<Op>> = const { RefCell::new(Vec::new()) };
}

/// A symbolic float lane: an index into the tape being recorded.
#[derive(Debug, Clone, Copy)]
pub(super) struct Traced(u32);

fn push(op: Op) -> Traced {
    RECORDING.with(|r| {
        let mut r = r.borrow_mut();
        // Constants repeat often (every polynomial coefficient is splat at its use).
        if let Op::Const(c) = op {
            if let Some(i) = r
                .iter()
                .position(|o| matches!(o, Op::Const(d) if d.to_bits() == c.to_bits()))
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
                push(Op::$op(self.0, o.0))
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
        push(Op::Neg(self.0))
    }
}

impl Lanes for Traced {
    fn splat(v: f32) -> Traced {
        push(Op::Const(v))
    }
    fn gt(self, o: Traced) -> Traced {
        push(Op::Gt(self.0, o.0))
    }
    fn lt(self, o: Traced) -> Traced {
        push(Op::Lt(self.0, o.0))
    }
    fn ge(self, o: Traced) -> Traced {
        push(Op::Ge(self.0, o.0))
    }
    fn select(m: Traced, a: Traced, b: Traced) -> Traced {
        push(Op::Select(m.0, a.0, b.0))
    }
    fn trunc(self) -> Traced {
        push(Op::Trunc(self.0))
    }
    fn pow2_minus_1(self) -> Traced {
        push(Op::Pow2Minus1(self.0))
    }
    fn exponent(self) -> Traced {
        push(Op::Exponent(self.0))
    }
    fn mantissa(self) -> Traced {
        push(Op::Mantissa(self.0))
    }
    fn sqrt(self) -> Traced {
        push(Op::Sqrt(self.0))
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
        let inputs: Vec<Traced> = (0..n).map(|i| push(Op::Input(i))).collect();
        let result = f(&inputs).0;
        let ops = RECORDING.with(|r| std::mem::take(&mut *r.borrow_mut()));
        Tape { ops, result }
    }

    /// Emits the recorded operations on `inputs` (all of one type: a float or a
    /// vector) and returns the result.
    pub fn emit(&self, fx: &mut Fx, inputs: &[Value]) -> Value {
        let ty = fx.b.func.dfg.value_type(inputs[0]);
        let int = if ty.is_vector() {
            types::I32X4
        } else {
            types::I32
        };
        let mut vals: Vec<Option<Value>> = vec![None; self.ops.len()];
        // Constants are materialised where first used (the tape keeps one copy).
        for (i, op) in self.ops.iter().enumerate() {
            let g = |k: u32| vals[k as usize].expect("operands precede their uses");
            let v = match *op {
                Op::Input(k) => inputs[k],
                Op::Const(c) => fx.splat(ty, c),
                Op::Add(a, b) => fx.b.ins().fadd(g(a), g(b)),
                Op::Sub(a, b) => fx.b.ins().fsub(g(a), g(b)),
                Op::Mul(a, b) => fx.b.ins().fmul(g(a), g(b)),
                Op::Div(a, b) => fx.b.ins().fdiv(g(a), g(b)),
                Op::Neg(a) => fx.b.ins().fneg(g(a)),
                Op::Gt(a, b) => fx.mask(FloatCC::GreaterThan, g(a), g(b)),
                Op::Lt(a, b) => fx.mask(FloatCC::LessThan, g(a), g(b)),
                Op::Ge(a, b) => fx.mask(FloatCC::GreaterThanOrEqual, g(a), g(b)),
                Op::Select(m, a, b) => fx.select(g(m), g(a), g(b)),
                Op::Sqrt(a) => fx.b.ins().sqrt(g(a)),
                Op::Trunc(a) => {
                    let n = to_int_sat(fx, int, g(a));
                    fx.b.ins().fcvt_from_sint(ty, n)
                }
                Op::Pow2Minus1(a) => {
                    let n = to_int_sat(fx, int, g(a));
                    let bias = int_const(fx, int, 126);
                    let e = fx.b.ins().iadd(n, bias);
                    let bits = fx.b.ins().ishl_imm_u(e, 23);
                    fx.b.ins().bitcast(ty, MemFlagsData::new(), bits)
                }
                Op::Exponent(a) => {
                    let bits = fx.b.ins().bitcast(int, MemFlagsData::new(), g(a));
                    let e = fx.b.ins().ushr_imm_u(bits, 23);
                    let mask = int_const(fx, int, 0xff);
                    let e = fx.b.ins().band(e, mask);
                    let bias = int_const(fx, int, 126);
                    let e = fx.b.ins().isub(e, bias);
                    fx.b.ins().fcvt_from_sint(ty, e)
                }
                Op::Mantissa(a) => {
                    let bits = fx.b.ins().bitcast(int, MemFlagsData::new(), g(a));
                    let keep = int_const(fx, int, 0x007f_ffff);
                    let half = int_const(fx, int, 0x3f00_0000);
                    let m = fx.b.ins().band(bits, keep);
                    let m = fx.b.ins().bor(m, half);
                    fx.b.ins().bitcast(ty, MemFlagsData::new(), m)
                }
            };
            vals[i] = Some(v);
        }
        vals[self.result as usize].expect("the result is recorded")
    }
}

/// `fcvt_to_sint_sat` without a branch. Cranelift lowers the scalar form on x86-64 with
/// branches for NaN and overflow, which would make the path depend on the data; the
/// vector form is branch-free, so where the target has vectors a scalar goes through
/// lane 0 of one.
pub(super) fn to_int_sat(fx: &mut Fx, int: Type, v: Value) -> Value {
    if int.is_vector() || fx.lanes == 1 {
        return fx.b.ins().fcvt_to_sint_sat(int, v);
    }
    let wide = fx.b.ins().splat(types::F32X4, v);
    let n = fx.b.ins().fcvt_to_sint_sat(types::I32X4, wide);
    fx.b.ins().extractlane(n, 0)
}

fn int_const(fx: &mut Fx, ty: Type, v: i64) -> Value {
    let c = fx.b.ins().iconst(types::I32, v);
    if ty.is_vector() {
        fx.b.ins().splat(ty, c)
    } else {
        c
    }
}
