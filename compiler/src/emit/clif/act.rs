//! A [`Tape`] replayed as Cranelift instructions, on floats or vectors.

use super::fx::Fx;
use crate::emit::tape::{Tape, TapeOp};
use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{types, InstBuilder, MemFlagsData, Type, Value};

impl Tape {
    /// Emits the recorded operations on `inputs` (all of one type: a float or a
    /// vector) and returns the result.
    pub(super) fn emit(&self, fx: &mut Fx, inputs: &[Value]) -> Value {
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
                TapeOp::Input(k) => inputs[k],
                TapeOp::Const(c) => fx.splat(ty, c),
                TapeOp::Add(a, b) => fx.b.ins().fadd(g(a), g(b)),
                TapeOp::Sub(a, b) => fx.b.ins().fsub(g(a), g(b)),
                TapeOp::Mul(a, b) => fx.b.ins().fmul(g(a), g(b)),
                TapeOp::Div(a, b) => fx.b.ins().fdiv(g(a), g(b)),
                TapeOp::Neg(a) => fx.b.ins().fneg(g(a)),
                TapeOp::Gt(a, b) => fx.mask(FloatCC::GreaterThan, g(a), g(b)),
                TapeOp::Lt(a, b) => fx.mask(FloatCC::LessThan, g(a), g(b)),
                TapeOp::Ge(a, b) => fx.mask(FloatCC::GreaterThanOrEqual, g(a), g(b)),
                TapeOp::Select(m, a, b) => fx.select(g(m), g(a), g(b)),
                TapeOp::Sqrt(a) => fx.b.ins().sqrt(g(a)),
                TapeOp::Trunc(a) => {
                    let n = to_int_sat(fx, int, g(a));
                    fx.b.ins().fcvt_from_sint(ty, n)
                }
                TapeOp::Pow2Minus1(a) => {
                    let n = to_int_sat(fx, int, g(a));
                    let bias = int_const(fx, int, 126);
                    let e = fx.b.ins().iadd(n, bias);
                    let bits = fx.b.ins().ishl_imm_u(e, 23);
                    fx.b.ins().bitcast(ty, MemFlagsData::new(), bits)
                }
                TapeOp::Exponent(a) => {
                    let bits = fx.b.ins().bitcast(int, MemFlagsData::new(), g(a));
                    let e = fx.b.ins().ushr_imm_u(bits, 23);
                    let mask = int_const(fx, int, 0xff);
                    let e = fx.b.ins().band(e, mask);
                    let bias = int_const(fx, int, 126);
                    let e = fx.b.ins().isub(e, bias);
                    fx.b.ins().fcvt_from_sint(ty, e)
                }
                TapeOp::Mantissa(a) => {
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
