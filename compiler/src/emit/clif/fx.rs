//! A thin layer over Cranelift's function builder: counted loops with constant trip
//! counts, pointer arithmetic in floats, and float operations written once for a
//! vector of `lanes` floats or for one float (the tails, and targets without SIMD).

use crate::emit::tape::Tape;
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{types, InstBuilder, MemFlagsData, Type, Value};
use cranelift_frontend::{FunctionBuilder, Variable};
use kerac::Act;

/// Builds one function.
pub(super) struct Fx<'a> {
    pub b: FunctionBuilder<'a>,
    /// Floats per vector: 4 where the target has 128-bit SIMD, else 1.
    pub lanes: usize,
    /// Whether the target has a fused multiply-add.
    pub fma: bool,
    /// The scratch buffer (the arena).
    pub arena: Value,
    /// The weights in the object's read-only data.
    pub weights: Value,
    /// Traced activations, by their debug text, reused across steps.
    pub tapes: Vec<(Act, Tape)>,
    /// Every loop emitted so far, in emission order.
    pub loops: Vec<Loop>,
    /// Loops open around the code being emitted now.
    pub depth: usize,
    /// In a counting build, the address and index of the first counter of this
    /// function's loops: each loop's body adds one to its own 64-bit counter, so a test
    /// can hold the recorded trip counts against execution.
    pub counters: Option<(Addr, usize)>,
    /// The step's assembled kernel, where it has one (x86-64 v3 and v4).
    pub assembled: Option<Assembled>,
}

/// An assembled kernel a step calls with five pointers and its loop counters.
#[derive(Clone)]
pub(super) struct Assembled {
    pub func: cranelift_codegen::ir::FuncRef,
    /// Read-only data of its own (a table of where output pixels' windows start), the
    /// fifth pointer where the step gives none.
    pub table: Option<cranelift_codegen::ir::GlobalValue>,
    /// Its loops, in emission order, depths from its own outermost.
    pub loops: Vec<Loop>,
}

/// One loop of the generated code: its nesting depth in its function (0 outermost) and
/// its constant trip count. Loops that run once are not loops and are not emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loop {
    /// Loops around it.
    pub depth: usize,
    /// Iterations each time it is entered.
    pub trips: usize,
}

/// A float address: a pointer plus a constant offset in floats.
#[derive(Clone, Copy, Debug)]
pub(super) struct Addr {
    pub base: Value,
    pub off: i64,
}

impl Addr {
    /// `floats` further on.
    pub fn add(self, floats: usize) -> Addr {
        Addr {
            base: self.base,
            off: self.off + floats as i64,
        }
    }
}

/// No trap: every access was checked against the arena and weight sizes at compile
/// time. Not `aligned`: vectors may start at any float.
pub(super) fn trusted() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

impl<'a> Fx<'a> {
    /// The vector type of `width` floats (4 or 1).
    pub fn ty(&self, width: usize) -> Type {
        if width == 4 {
            types::F32X4
        } else {
            types::F32
        }
    }

    /// `base + sum(index * floats) + off`, as an address.
    pub fn at(&mut self, base: Addr, terms: &[(Value, usize)]) -> Addr {
        let mut p = base.base;
        for &(v, floats) in terms {
            if floats == 0 {
                continue;
            }
            let scaled = self.b.ins().imul_imm_s(v, (floats * 4) as i64);
            p = self.b.ins().iadd(p, scaled);
        }
        Addr {
            base: p,
            off: base.off,
        }
    }

    /// The pointer and the byte offset a load or store takes: offsets beyond what an
    /// instruction's immediate holds are folded into the pointer.
    fn split(&mut self, a: Addr) -> (Value, i32) {
        let bytes = a.off * 4;
        match i32::try_from(bytes) {
            Ok(b) => (a.base, b),
            Err(_) => (self.b.ins().iadd_imm_s(a.base, bytes), 0),
        }
    }

    /// Loads `ty` (a float or a vector) at `a`.
    pub fn load(&mut self, ty: Type, a: Addr) -> Value {
        let (p, o) = self.split(a);
        self.b.ins().load(ty, trusted(), p, o)
    }

    /// Stores `v` at `a`.
    pub fn store(&mut self, v: Value, a: Addr) {
        let (p, o) = self.split(a);
        self.b.ins().store(trusted(), v, p, o);
    }

    /// Loads one float at `a` into every lane of `ty`.
    pub fn bcast(&mut self, ty: Type, a: Addr) -> Value {
        let v = self.load(types::F32, a);
        self.splat_value(ty, v)
    }

    /// Every lane of `ty` set to the float value `v`.
    pub fn splat_value(&mut self, ty: Type, v: Value) -> Value {
        if ty.is_vector() {
            self.b.ins().splat(ty, v)
        } else {
            v
        }
    }

    /// Every lane of `ty` set to `c`.
    pub fn splat(&mut self, ty: Type, c: f32) -> Value {
        let v = self.b.ins().f32const(c);
        self.splat_value(ty, v)
    }

    /// `a * b + c`, fused where the target has it.
    pub fn fma(&mut self, a: Value, b: Value, c: Value) -> Value {
        if self.fma {
            self.b.ins().fma(a, b, c)
        } else {
            let m = self.b.ins().fmul(a, b);
            self.b.ins().fadd(m, c)
        }
    }

    /// A lane mask of `a cc b` with the type of `a` (all ones where true).
    pub fn mask(&mut self, cc: FloatCC, a: Value, b: Value) -> Value {
        let ty = self.b.func.dfg.value_type(a);
        let m = self.b.ins().fcmp(cc, a, b);
        if ty.is_vector() {
            self.b.ins().bitcast(ty, MemFlagsData::new(), m)
        } else {
            let wide = self.b.ins().bmask(types::I32, m);
            self.b.ins().bitcast(types::F32, MemFlagsData::new(), wide)
        }
    }

    /// `mask ? a : b` per lane, by bits: no branch.
    pub fn select(&mut self, mask: Value, a: Value, b: Value) -> Value {
        let ty = self.b.func.dfg.value_type(a);
        if ty.is_vector() {
            return self.b.ins().bitselect(mask, a, b);
        }
        let [m, a, b] =
            [mask, a, b].map(|v| self.b.ins().bitcast(types::I32, MemFlagsData::new(), v));
        let x = self.b.ins().band(a, m);
        let y = self.b.ins().band_not(b, m);
        let r = self.b.ins().bor(x, y);
        self.b.ins().bitcast(types::F32, MemFlagsData::new(), r)
    }

    /// `a > b ? a : b`, as x86 `maxps` and the runtime's `fmax`.
    pub fn max(&mut self, a: Value, b: Value) -> Value {
        let m = self.mask(FloatCC::GreaterThan, a, b);
        self.select(m, a, b)
    }

    /// `a < b ? a : b`, as the runtime's `fmin`.
    pub fn min(&mut self, a: Value, b: Value) -> Value {
        let m = self.mask(FloatCC::LessThan, a, b);
        self.select(m, a, b)
    }

    /// Runs `body` for `i` in `0..n`, a loop whose trip count is the constant `n` (no
    /// loop at all for 0 or 1).
    pub fn for_n(&mut self, n: usize, mut body: impl FnMut(&mut Self, Value)) {
        match n {
            0 => {}
            1 => {
                let zero = self.b.ins().iconst(types::I64, 0);
                body(self, zero);
            }
            _ => {
                let var = self.b.declare_var(types::I64);
                let zero = self.b.ins().iconst(types::I64, 0);
                self.b.def_var(var, zero);
                let head = self.b.create_block();
                let exit = self.b.create_block();
                self.b.ins().jump(head, &[]);
                self.b.switch_to_block(head);
                let i = self.b.use_var(var);
                let id = self.loops.len();
                self.loops.push(Loop {
                    depth: self.depth,
                    trips: n,
                });
                if let Some((base, first)) = self.counters {
                    // Offsets are in floats; a counter is two floats wide.
                    let at = ((base.off + 2 * (first + id) as i64) * 4) as i32;
                    let c = self.b.ins().load(types::I64, trusted(), base.base, at);
                    let c = self.b.ins().iadd_imm_s(c, 1);
                    self.b.ins().store(trusted(), c, base.base, at);
                }
                self.depth += 1;
                body(self, i);
                self.depth -= 1;
                let next = self.b.ins().iadd_imm_s(i, 1);
                self.b.def_var(var, next);
                let more = self
                    .b
                    .ins()
                    .icmp_imm_s(IntCC::UnsignedLessThan, next, n as i64);
                self.b.ins().brif(more, head, &[], exit, &[]);
                self.b.seal_block(head);
                self.b.switch_to_block(exit);
                self.b.seal_block(exit);
            }
        }
    }

    /// A variable of `ty` set to `v`: values that loops carry (accumulators).
    pub fn var(&mut self, v: Value) -> Variable {
        let ty = self.b.func.dfg.value_type(v);
        let var = self.b.declare_var(ty);
        self.b.def_var(var, v);
        var
    }

    /// Applies `act` to `v`, every lane.
    pub fn act(&mut self, act: Act, v: Value) -> Value {
        if act == Act::Linear {
            return v;
        }
        let tape = match self.tapes.iter().find(|(a, _)| *a == act) {
            Some((_, t)) => t.clone(),
            None => {
                let t = Tape::trace(|x| act.eval_lanes(x));
                self.tapes.push((act, t.clone()));
                t
            }
        };
        tape.emit(self, &[v])
    }

    /// Runs `f` over `n` consecutive floats: vectors, then single floats for the
    /// remainder. `f` gets the type and where its first float is.
    pub fn chunks(&mut self, n: usize, mut f: impl FnMut(&mut Self, Type, Ix)) {
        let lanes = self.lanes;
        if lanes == 1 {
            self.for_n(n, |fx, i| {
                f(
                    fx,
                    types::F32,
                    Ix {
                        v: Some(i),
                        stride: 1,
                        off: 0,
                    },
                )
            });
            return;
        }
        let whole = n / lanes;
        let vt = self.ty(lanes);
        self.for_n(whole, |fx, i| {
            f(
                fx,
                vt,
                Ix {
                    v: Some(i),
                    stride: lanes,
                    off: 0,
                },
            )
        });
        // The remainder is at most three floats: unrolled, at constant offsets.
        for t in whole * lanes..n {
            f(
                self,
                types::F32,
                Ix {
                    v: None,
                    stride: 0,
                    off: t,
                },
            );
        }
    }

    /// The address `a` as one pointer value.
    pub fn pointer(&mut self, a: Addr) -> Value {
        if a.off == 0 {
            a.base
        } else {
            self.b.ins().iadd_imm_s(a.base, a.off * 4)
        }
    }

    /// Calls an assembled kernel with the pointers `args` (null where `None`; the
    /// fifth is the kernel's own table where it has one); its loops join this
    /// function's, and in a counting build it counts into the counters that follow.
    pub fn call_assembled(&mut self, k: Assembled, args: [Option<Addr>; 5]) {
        let ptr = self.b.func.dfg.value_type(self.arena);
        let mut values = Vec::with_capacity(6);
        for (i, a) in args.into_iter().enumerate() {
            let v = match (a, k.table) {
                (Some(a), _) => self.pointer(a),
                (None, Some(t)) if i == 4 => self.b.ins().symbol_value(ptr, t),
                (None, _) => self.b.ins().iconst(ptr, 0),
            };
            values.push(v);
        }
        let counters = match self.counters {
            Some((base, first)) => {
                let at = base.add(2 * (first + self.loops.len()));
                self.pointer(at)
            }
            None => self.b.ins().iconst(ptr, 0),
        };
        values.push(counters);
        self.b.ins().call(k.func, &values);
        let depth = self.depth;
        self.loops.extend(k.loops.iter().map(|l| Loop {
            depth: l.depth + depth,
            trips: l.trips,
        }));
    }

    /// The address of `ix` floats after `base`.
    pub fn ix(&mut self, base: Addr, ix: Ix) -> Addr {
        let a = base.add(ix.off);
        match ix.v {
            Some(v) => self.at(a, &[(v, ix.stride)]),
            None => a,
        }
    }
}

/// A position `v * stride + off` floats into a buffer.
#[derive(Clone, Copy, Debug)]
pub(super) struct Ix {
    pub v: Option<Value>,
    pub stride: usize,
    pub off: usize,
}
