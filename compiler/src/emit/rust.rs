//! Rust source for a plan: a type that owns its arena, with `predict` on arrays shaped
//! like the model and the generic [`kerac::Model`] entry point. The `model!` macro and
//! `kerac compile --emit rust` both call [`emit`], so they produce the same code.
//!
//! The code calls the runtime's kernels with named constant parameters, one block per
//! plan step under a comment naming its Keras layers; weights are one aligned byte
//! literal in read-only memory.

use super::tokens::ToRust;
use crate::error::{Error, Result};
use crate::plan::{BufferId, Kernel, Plan, Port, Step};
use proc_macro2::{Literal, TokenStream};
use quote::{format_ident, quote};

/// The instruction set levels `RustOptions::isa` names.
pub use kerac::Level;

/// Choices for the generated code.
#[derive(Debug, Clone)]
pub struct RustOptions {
    /// The type's name.
    pub type_name: String,
    /// Its visibility, as written before `struct` (`pub`, `pub(crate)`, or empty).
    pub visibility: String,
    /// Files whose bytes the expansion includes, so cargo rebuilds when they change.
    pub track_files: Vec<String>,
    /// Where the model came from, for the doc comment.
    pub source: String,
    /// Where the weight bytes live in the generated code.
    pub weights: WeightsAt,
    /// The widest instruction set `new()` may choose (`isa = "avx2"` pins it lower,
    /// for reproducible timing).
    pub isa: kerac::Level,
    /// The GPU side (`model!`'s `cuda`): the CUDA C++ of the plan without panels and
    /// its launches ([`super::cuda::source_and_launches`]), for `new_cuda` and the
    /// `<Name>Cuda` type; the runtime's `cuda` feature runs them.
    pub cuda: Option<(String, Vec<super::cuda::Launch>)>,
    /// Whether each step is a function of its own with its kernel inlined and the
    /// step's constants (`Some(true)`), or every kernel is called out of line, one copy
    /// per kernel and ISA shared by every step and model of the crate (`Some(false)`:
    /// slower code, built once for all models); `None` inlines plans of up to
    /// [`INLINE_STEPS`] steps.
    pub inline: Option<bool>,
}

/// Where generated code keeps its weight bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightsAt {
    /// In the code, as one byte-string literal (what the macro expands to).
    Inline,
    /// In a file beside the code, named here and read with `include_bytes!`.
    File(String),
}

/// The generated code as tokens.
pub fn emit(plan: &Plan, options: &RustOptions) -> Result<TokenStream> {
    let name = syn::parse_str::<syn::Ident>(&options.type_name)
        .map_err(|_| Error::new(format!("`{}` is not a valid type name", options.type_name)))?;
    let vis: syn::Visibility = syn::parse_str(&options.visibility).map_err(|_| {
        Error::new(format!(
            "`{}` is not a valid visibility",
            options.visibility
        ))
    })?;
    let module = format_ident!("__kerac_{}", options.type_name.to_lowercase());

    let weight_bytes = plan.weight_bytes();
    let steps = steps_module(plan, options, &module)?;

    let arena_floats = plan.arena_floats;
    let flops = plan.flops();
    let params: usize = plan.weights.iter().map(|w| w.data.len()).sum();
    let input_types: Vec<TokenStream> = plan.inputs.iter().map(|p| array_type(plan, p)).collect();
    let output_types: Vec<TokenStream> = plan.outputs.iter().map(|p| array_type(plan, p)).collect();
    let output_zeros: Vec<TokenStream> = plan.outputs.iter().map(|p| array_zero(plan, p)).collect();
    let input_names = arg_names(&plan.inputs);
    let input_shapes: Vec<TokenStream> =
        plan.inputs.iter().map(|p| shape_tokens(&p.shape)).collect();
    let output_shapes: Vec<TokenStream> = plan
        .outputs
        .iter()
        .map(|p| shape_tokens(&p.shape))
        .collect();
    let input_offsets: Vec<usize> = plan
        .inputs
        .iter()
        .map(|p| plan.buffers[p.buffer].offset)
        .collect();
    let output_offsets: Vec<usize> = plan
        .outputs
        .iter()
        .map(|p| plan.buffers[p.buffer].offset)
        .collect();
    let (n_in, n_out) = (plan.inputs.len(), plan.outputs.len());
    let out_vars: Vec<syn::Ident> = (0..n_out).map(|i| format_ident!("output_{}", i)).collect();
    let returns = if n_out == 1 {
        let t = &output_types[0];
        quote!(#t)
    } else {
        quote!((#(#output_types),*))
    };
    let result = if n_out == 1 {
        quote!(output_0)
    } else {
        quote!((#(#out_vars),*))
    };
    let doc = format!(
        " `{}` compiled by kerac from `{}`: {} steps, {} parameters, {} FLOPs per call, batch {}.",
        plan.name,
        options.source,
        plan.steps.len(),
        params,
        flops,
        plan.batch
    );
    let predict_doc = format!(
        " Runs the model on {} and returns {}.",
        describe(&plan.inputs),
        describe(&plan.outputs)
    );

    // A streaming model keeps its recurrent state in the arena between calls, and a
    // zeroed arena is the initial state.
    let reset = if plan.state.is_empty() {
        quote!()
    } else {
        quote! {
            /// Forgets the recurrent state: the next call starts a new sequence.
            pub fn reset_state(&mut self) {
                self.arena = kerac::Arena::new();
            }

            /// One time step of a streaming model: `predict` by the name a control loop
            /// reads best.
            pub fn step(&mut self, #(#input_names: &#input_types),*) -> #returns {
                self.predict(#(#input_names),*)
            }
        }
    };
    let model_trait = model_trait(plan, &name, &module);
    let cuda = match &options.cuda {
        None => quote!(),
        Some((source, launches)) => {
            let cuda_name = format_ident!("{}Cuda", name);
            let kernels = launches.iter().filter(|l| !l.buffers.is_empty()).map(|l| {
                let (k, b, t) = (&l.kernel, l.blocks as u32, l.threads as u32);
                let buffers = &l.buffers;
                quote!(kerac::cuda::Launch { kernel: #k, blocks: #b, threads: #t, buffers: &[#(#buffers),*] })
            });
            let input_sizes: Vec<usize> = plan
                .inputs
                .iter()
                .map(|p| plan.buffers[p.buffer].len)
                .collect();
            let output_sizes: Vec<usize> = plan
                .outputs
                .iter()
                .map(|p| plan.buffers[p.buffer].len)
                .collect();
            let type_doc = format!(" [`{name}`] on an NVIDIA GPU, made by [`{name}::new_cuda`].");
            quote! {
                impl #name {
                    /// The model's CUDA kernels (those of `kerac compile --emit cuda`) and
                    /// how a call launches them.
                    pub fn cuda_program() -> &'static kerac::cuda::Program {
                        static PROGRAM: kerac::cuda::Program = kerac::cuda::Program {
                            source: #source,
                            launches: &[#(#kernels),*],
                            scratch_floats: #arena_floats,
                            inputs: &[#((#input_offsets, #input_sizes)),*],
                            outputs: &[#((#output_offsets, #output_sizes)),*],
                        };
                        &PROGRAM
                    }

                    /// The model on GPU `device` (0 the first): its kernels compiled by
                    /// NVRTC for that GPU and loaded, with scratch memory of its own.
                    /// An error, not a panic, where CUDA or the GPU is missing.
                    pub fn new_cuda(device: usize) -> Result<#cuda_name, kerac::cuda::CudaError> {
                        Ok(#cuda_name(kerac::cuda::CudaModel::new(device, Self::cuda_program())?))
                    }
                }

                #[doc = #type_doc]
                #vis struct #cuda_name(pub kerac::cuda::CudaModel);

                impl #cuda_name {
                    #[doc = #predict_doc]
                    pub fn predict(&mut self, #(#input_names: &#input_types),*) -> Result<#returns, kerac::cuda::CudaError> {
                        use kerac::Flat;
                        #(let mut #out_vars: #output_types = #output_zeros;)*
                        self.0.run(&[#(#input_names.flat()),*], &mut [#(#out_vars.flat_mut()),*])?;
                        Ok(#result)
                    }
                }
            }
        }
    };
    let max_isa = match options.isa {
        kerac::Level::Baseline => quote!(kerac::Level::Baseline),
        kerac::Level::Avx2 => quote!(kerac::Level::Avx2),
        kerac::Level::Avx512 => quote!(kerac::Level::Avx512),
    };
    Ok(quote! {
        #[doc = #doc]
        #vis struct #name {
            arena: kerac::Arena<{ #module::ARENA_FLOATS }>,
            isa: kerac::Dispatch,
        }

        #steps

        impl #name {
            /// Input shapes, batch first, in Keras's order.
            pub const INPUT_SHAPES: [&'static [usize]; #n_in] = [#(#input_shapes),*];
            /// Output shapes, batch first, in Keras's order.
            pub const OUTPUT_SHAPES: [&'static [usize]; #n_out] = [#(#output_shapes),*];
            /// Bytes of the activation arena the type holds.
            pub const ARENA_BYTES: usize = #arena_floats * 4;
            /// Bytes of read-only weights.
            pub const WEIGHT_BYTES: usize = #weight_bytes;
            /// Floating-point operations per call.
            pub const FLOPS: u64 = #flops;

            /// A model with a zeroed arena, running the widest kernels this CPU has
            /// (up to the `isa` the model was compiled with): detected once, here.
            pub fn new() -> Self {
                Self::with_isa(#max_isa)
            }

            /// As [`Self::new`], with kernels no wider than `max`: for reproducible
            /// timing, or to compare instruction sets on one machine.
            pub fn with_isa(max: kerac::Level) -> Self {
                let max = max.min(#max_isa);
                #name { arena: kerac::Arena::new(), isa: kerac::Dispatch::detect(max) }
            }

            /// A model for a `static`: a constant cannot ask the CPU, so it runs the
            /// widest kernels the build's target features enable (the baseline in a
            /// plain build).
            pub const fn new_const() -> Self {
                #name { arena: kerac::Arena::new(), isa: kerac::Dispatch::compiled(#max_isa) }
            }

            /// The instruction set this model's kernels run with.
            pub const fn isa(&self) -> kerac::Level {
                self.isa.level()
            }

            #reset

            #[doc = #predict_doc]
            pub fn predict(&mut self, #(#input_names: &#input_types),*) -> #returns {
                use kerac::Flat;
                let arena = &mut self.arena.0;
                #module::write_inputs(arena, [#(#input_names.flat()),*]);
                self.isa.run(#module::Run(arena));
                #(let mut #out_vars: #output_types = #output_zeros;
                  kerac::arena::read(arena, #output_offsets, #out_vars.flat_mut());)*
                #result
            }
        }

        impl Default for #name {
            fn default() -> Self {
                Self::new()
            }
        }

        #model_trait

        #cuda
    })
}

/// The private module with the weights, each step's constant parameters and `run`,
/// which calls every step's kernel on the arena.
fn steps_module(plan: &Plan, options: &RustOptions, module: &syn::Ident) -> Result<TokenStream> {
    let blob = plan.weight_blob();
    let weight_bytes = blob.len();
    let blob = match &options.weights {
        WeightsAt::Inline => {
            let literal = Literal::byte_string(&blob);
            quote!(*#literal)
        }
        WeightsAt::File(path) => {
            let path = Literal::string(path);
            quote!(*include_bytes!(#path))
        }
    };
    let inline = options.inline.unwrap_or(plan.steps.len() <= INLINE_STEPS);
    let padded = padded_input(plan);
    let mut consts = Vec::new();
    let mut calls = Vec::new();
    let mut step_fns = Vec::new();
    for (i, step) in plan.steps.iter().enumerate() {
        let (c, call) = emit_step(plan, i, step, inline)?;
        consts.push(c);
        if i == 0 && padded.is_some() {
            // `write_inputs` runs it.
            continue;
        }
        if inline {
            // A function of its own for each step, compiled for the ISA with the
            // step's constants: one function holding every step took the optimiser
            // minutes for a MobileNet, its passes growing faster than the code.
            let f = format_ident!("step_{}", i);
            step_fns.push(quote! {
                #[inline(never)]
                #[allow(unused_variables)]
                fn #f<I: kerac::Isa>(isa: I, arena: &mut [f32]) {
                    isa.vectorize(#[inline(always)] || { #call })
                }
            });
            calls.push(quote!(#f::<I>(isa, arena);));
        } else {
            calls.push(call);
        }
    }
    let track = options.track_files.iter().map(|path| {
        let path = Literal::string(path);
        quote!(
            const _: &[u8] = include_bytes!(#path);
        )
    });
    let arena_floats = plan.arena_floats;
    let n_in = plan.inputs.len();
    let writes = plan.inputs.iter().enumerate().map(|(k, port)| {
        let b = &plan.buffers[port.buffer];
        match padded {
            Some((input, out)) if input == k => {
                let (o, l) = (plan.buffers[out].offset, plan.buffers[out].len);
                quote! {
                    if let Some(y) = arena.get_mut(#o..#o + #l) {
                        kerac::shape::resample(&STEP_0, inputs[#k], y);
                    }
                }
            }
            _ => {
                let o = b.offset;
                quote!(kerac::arena::write(arena, #o, inputs[#k]);)
            }
        }
    });
    Ok(quote! {
        #[allow(clippy::all, clippy::pedantic, non_upper_case_globals)]
        mod #module {
            #(#track)*
            /// Floats in the activation arena.
            pub(super) const ARENA_FLOATS: usize = #arena_floats;
            /// Every weight, little-endian float32, each 64-byte aligned.
            pub(super) static WEIGHTS: kerac::Weights<#weight_bytes> = kerac::Weights(#blob);
            #(#consts)*
            #(#step_fns)*
            /// Runs every step with `isa`'s kernels; the inputs are already in the arena.
            /// Each kernel is inlined with its step's constants in a function compiled
            /// for that ISA: the step's own, or (out of line) the kernel's.
            #[inline(never)]
            pub(super) fn run<I: kerac::Isa>(isa: I, arena: &mut [f32]) {
                isa.vectorize(#[inline(always)] || steps::<I>(isa, arena))
            }
            #[inline(always)]
            #[allow(unused_variables)]
            fn steps<I: kerac::Isa>(isa: I, arena: &mut [f32]) {
                #(#calls)*
            }
            /// Copies the inputs into the arena; an input that only the first step reads,
            /// to pad or resample it, goes straight to that step's output, and `run`
            /// skips the step.
            #[inline(always)]
            pub(super) fn write_inputs(arena: &mut [f32], inputs: [&[f32]; #n_in]) {
                #(#writes)*
            }
            /// [`run`] for whichever ISA the model chose when it was made.
            pub(super) struct Run<'a>(pub(super) &'a mut [f32]);
            impl kerac::WithIsa for Run<'_> {
                type Output = ();
                #[inline(always)]
                fn with<I: kerac::Isa>(self, isa: I) {
                    run(isa, self.0)
                }
            }
        }
    })
}

/// The input (its index) that step 0 resamples (pads, crops or scales) and nothing
/// else reads, with that step's output: the input is then written to its resampled
/// place directly, which saves a copy of it (`write_inputs`). MobileNets and ResNets
/// pad their input first.
fn padded_input(plan: &Plan) -> Option<(usize, BufferId)> {
    let first = plan.steps.first()?;
    let (Kernel::Resample(_), [b]) = (&first.kernel, first.inputs.as_slice()) else {
        return None;
    };
    let input = plan.inputs.iter().position(|p| p.buffer == *b)?;
    let elsewhere = plan.steps[1..].iter().any(|s| s.inputs.contains(b))
        || plan.outputs.iter().any(|p| p.buffer == *b)
        || plan.state.contains(b);
    (!elsewhere).then_some((input, first.output))
}

/// `impl kerac::Model`: the generic entry point on flat slices, lengths checked.
fn model_trait(plan: &Plan, name: &syn::Ident, module: &syn::Ident) -> TokenStream {
    let (n_in, n_out) = (plan.inputs.len(), plan.outputs.len());
    let in_idx: Vec<usize> = (0..n_in).collect();
    let out_idx: Vec<usize> = (0..n_out).collect();
    let sizes =
        |ports: &[Port]| -> Vec<usize> { ports.iter().map(|p| p.shape.iter().product()).collect() };
    let (input_sizes, output_sizes) = (sizes(&plan.inputs), sizes(&plan.outputs));
    let output_offsets: Vec<usize> = plan
        .outputs
        .iter()
        .map(|p| plan.buffers[p.buffer].offset)
        .collect();
    let reset_trait = if plan.state.is_empty() {
        quote!()
    } else {
        quote! {
            fn reset_state(&mut self) {
                #name::reset_state(self);
            }
        }
    };
    quote! {
        impl kerac::Model for #name {
            fn new() -> Self {
                #name::new()
            }

            fn with_isa(max: kerac::Level) -> Self {
                #name::with_isa(max)
            }

            fn isa(&self) -> kerac::Level {
                #name::isa(self)
            }

            fn run(&mut self, inputs: &[&[f32]], outputs: &mut [&mut [f32]]) -> Result<(), kerac::Error> {
                if inputs.len() != #n_in || outputs.len() != #n_out {
                    return Err(kerac::Error::BufferCount);
                }
                if #(inputs[#in_idx].len() != #input_sizes)||* #(|| outputs[#out_idx].len() != #output_sizes)* {
                    return Err(kerac::Error::BufferLength);
                }
                let arena = &mut self.arena.0;
                #module::write_inputs(arena, [#(inputs[#in_idx]),*]);
                self.isa.run(#module::Run(arena));
                #(kerac::arena::read(arena, #output_offsets, outputs[#out_idx]);)*
                Ok(())
            }

            #reset_trait
        }
    }
}

/// Integer literals without type suffixes, as a person writes them.
fn unsuffixed(tokens: TokenStream) -> TokenStream {
    tokens
        .into_iter()
        .map(|t| match t {
            proc_macro2::TokenTree::Literal(l) => {
                let text = l.to_string();
                match text
                    .strip_suffix("usize")
                    .or_else(|| text.strip_suffix("u64"))
                    .and_then(|n| n.parse::<u64>().ok())
                {
                    Some(n) => proc_macro2::TokenTree::Literal(Literal::u64_unsuffixed(n)),
                    None => proc_macro2::TokenTree::Literal(l),
                }
            }
            proc_macro2::TokenTree::Group(g) => {
                let mut group = proc_macro2::Group::new(g.delimiter(), unsuffixed(g.stream()));
                group.set_span(g.span());
                proc_macro2::TokenTree::Group(group)
            }
            other => other,
        })
        .collect()
}

/// The generated code as formatted source.
pub fn emit_source(plan: &Plan, options: &RustOptions) -> Result<String> {
    let tokens = unsuffixed(emit(plan, options)?);
    let file: syn::File = syn::parse2(tokens)
        .map_err(|e| Error::new(format!("generated code does not parse: {e}")))?;
    Ok(prettyplease::unparse(&file))
}

/// Plans with more steps than this call each vector kernel out of line (one function
/// per kernel and ISA, shared by its steps) instead of giving each step a function of
/// its own with its kernel inlined. Each inlined step costs about half a second of
/// build and the shared kernels a fixed 100-300 s, so inlining is both the faster build
/// and the faster code up to a few hundred steps. In a user crate rebuilt with `cargo
/// build --release` (user time; p10 latency), EfficientNetB0 (96x96, 127 steps) took
/// 63 s inlined against 287 s out of line and ran in 3.48-3.55 ms against 3.63-4.05
/// ms; ResNet50 (64x64, 106 steps) 44 s against 124 s, 11.6-12.0 ms against 12.1-13.4
/// ms. NASNetMobile (646 steps) took 754 s inlined, which is why the limit stays.
pub const INLINE_STEPS: usize = 200;

fn emit_step(
    plan: &Plan,
    i: usize,
    step: &Step,
    inline: bool,
) -> Result<(TokenStream, TokenStream)> {
    // `conv_in` inside the step's `vectorize`, or `conv`, which has its own.
    let kernel = |f: &str| {
        let suffix = if inline { "_in" } else { "" };
        format_ident!("{f}{suffix}")
    };
    let (dense, conv, conv_transpose, pool, global_pool, activation, attention, recurrent) = (
        kernel("dense"),
        kernel("conv"),
        kernel("conv_transpose"),
        kernel("pool"),
        kernel("global_pool"),
        kernel("activation"),
        kernel("attention"),
        kernel("recurrent"),
    );
    let name = format_ident!("STEP_{}", i);
    let weight = |id: usize| {
        let (offset, len) = (plan.weights[id].offset, plan.weights[id].data.len());
        quote!(WEIGHTS.floats(#offset, #len))
    };
    let opt_weight = |id: Option<usize>| match id {
        Some(id) => {
            let w = weight(id);
            quote!(Some(#w))
        }
        None => quote!(None),
    };
    let reads: Vec<TokenStream> = step
        .inputs
        .iter()
        .map(|&v| {
            let (o, l) = (plan.buffers[v].offset, plan.buffers[v].len);
            quote!((#o, #l))
        })
        .collect();
    let (wo, wl) = (
        plan.buffers[step.output].offset,
        plan.buffers[step.output].len,
    );
    let ins: Vec<syn::Ident> = (0..step.inputs.len())
        .map(|k| format_ident!("x{}", k))
        .collect();
    let (ty, value, call): (TokenStream, TokenStream, TokenStream) = match &step.kernel {
        Kernel::Dense { p, w, b } => (quote!(kerac::dense::Dense), p.to_rust(), {
            let (w, b) = (weight(*w), opt_weight(*b));
            quote!(kerac::dense::#dense::<I>(isa, &#name, x0, #w, #b, y))
        }),
        Kernel::Conv { p, w, b } => (quote!(kerac::conv::Conv), p.to_rust(), {
            let (w, b) = (weight(*w), opt_weight(*b));
            if inline {
                // The step's kernel and channel count as parameters: its inlined code
                // holds that kernel alone.
                let route = match p.route() {
                    kerac::conv::VALID => quote!(kerac::conv::VALID),
                    kerac::conv::ROWS => quote!(kerac::conv::ROWS),
                    kerac::conv::SMALL => quote!(kerac::conv::SMALL),
                    kerac::conv::DEPTHWISE => quote!(kerac::conv::DEPTHWISE),
                    _ => quote!(kerac::conv::GENERAL),
                };
                let cout = p.cout;
                quote!(kerac::conv::conv_at::<I, { #route }, #cout>(isa, &#name, x0, #w, #b, y))
            } else {
                quote!(kerac::conv::#conv::<I>(isa, &#name, x0, #w, #b, y))
            }
        }),
        Kernel::ConvTranspose { p, w, b } => (quote!(kerac::conv::ConvTranspose), p.to_rust(), {
            let (w, b) = (weight(*w), opt_weight(*b));
            quote!(kerac::conv::#conv_transpose::<I>(isa, &#name, x0, #w, #b, y))
        }),
        Kernel::Pool(p) => (
            quote!(kerac::pool::Pool),
            p.to_rust(),
            quote!(kerac::pool::#pool::<I>(isa, &#name, x0, y)),
        ),
        Kernel::GlobalPool(p) => (
            quote!(kerac::pool::GlobalPool),
            p.to_rust(),
            quote!(kerac::pool::#global_pool::<I>(isa, &#name, x0, y)),
        ),
        Kernel::ScaleShift { p, scale, offset } => (quote!(kerac::norm::Strided), p.to_rust(), {
            let (s, o) = (weight(*scale), weight(*offset));
            quote!(kerac::norm::scale_shift(&#name, #s, #o, x0, y))
        }),
        Kernel::Prelu { p, alpha } => (quote!(kerac::norm::Strided), p.to_rust(), {
            let a = weight(*alpha);
            quote!(kerac::norm::prelu(&#name, #a, x0, y))
        }),
        Kernel::Activation(act) => (
            quote!(kerac::Act),
            act.to_rust(),
            quote!(kerac::norm::#activation::<I>(isa, #name, x0, y)),
        ),
        Kernel::Softmax { p, log } => (
            quote!(kerac::norm::Strided),
            p.to_rust(),
            quote!(kerac::norm::softmax(&#name, #log, x0, y)),
        ),
        Kernel::LayerNorm { p, gamma, beta } => (quote!(kerac::norm::LayerNorm), p.to_rust(), {
            let (g, b) = (opt_weight(*gamma), opt_weight(*beta));
            quote!(kerac::norm::layer_norm(&#name, #g, #b, x0, y))
        }),
        Kernel::GroupNorm { p, gamma, beta } => (quote!(kerac::norm::GroupNorm), p.to_rust(), {
            let (g, b) = (opt_weight(*gamma), opt_weight(*beta));
            quote!(kerac::norm::group_norm(&#name, #g, #b, x0, y))
        }),
        Kernel::UnitNorm(p) => (
            quote!(kerac::norm::Strided),
            p.to_rust(),
            quote!(kerac::norm::unit_norm(&#name, x0, y)),
        ),
        Kernel::Merge {
            fold,
            shape,
            strides,
        } => {
            let n = strides.len();
            let (fold, shape) = (fold.to_rust(), shape.to_rust());
            let strides = strides.iter().map(ToRust::to_rust);
            let value = quote!(kerac::merge::Merge {
                fold: #fold,
                shape: #shape,
                strides: [#(#strides),*],
            });
            (
                quote!(kerac::merge::Merge<#n>),
                value,
                quote!(kerac::merge::merge(&#name, [#(#ins),*], y)),
            )
        }
        Kernel::Concat { outer, parts } => {
            let n = parts.len();
            (
                quote!(kerac::merge::Concat<#n>),
                quote!(kerac::merge::Concat { outer: #outer, parts: [#(#parts),*] }),
                quote!(kerac::merge::concat(&#name, [#(#ins),*], y)),
            )
        }
        Kernel::BatchDot(p) => (
            quote!(kerac::merge::BatchDot),
            p.to_rust(),
            quote!(kerac::merge::batch_dot(&#name, x0, x1, y)),
        ),
        Kernel::StridedCopy(p) => (
            quote!(kerac::shape::Strided),
            p.to_rust(),
            quote!(kerac::shape::strided_copy(&#name, x0, y)),
        ),
        Kernel::Resample(p) => (
            quote!(kerac::shape::Resample),
            p.to_rust(),
            quote!(kerac::shape::resample(&#name, x0, y)),
        ),
        Kernel::Attention { p, w } => (quote!(kerac::attention::Attention), p.to_rust(), {
            let w = match w {
                Some(id) => weight(*id),
                None => quote!(&[]),
            };
            quote!(kerac::attention::#attention::<I>(isa, &#name, x0, x1, x2, #w, y))
        }),
        Kernel::Gather { p, table } => (quote!(kerac::shape::Gather), p.to_rust(), {
            let t = weight(*table);
            quote!(kerac::shape::gather(&#name, x0, #t, y))
        }),
        Kernel::Recurrent { p, u, rb, .. } => (quote!(kerac::recurrent::Recurrent), p.to_rust(), {
            let (u, rb) = (weight(*u), opt_weight(*rb));
            let r = step.recurrent_inputs();
            let at = |i: Option<usize>| match i {
                Some(i) => {
                    let x = &ins[i];
                    quote!(Some(#x))
                }
                None => quote!(None),
            };
            let (h0, c0, mask) = (at(r.h0), at(r.c0), at(r.mask));
            quote!(kerac::recurrent::#recurrent::<I>(isa, &#name, x0, #u, #rb, #h0, #c0, #mask, y))
        }),
    };
    let in_shapes: Vec<String> = step
        .inputs
        .iter()
        .map(|&v| format!("{} floats", plan.buffers[v].len))
        .collect();
    let doc = format!(
        " `{}` ({}): {} -> {} floats, {} FLOPs.",
        step.layers,
        step.kernel.name(),
        in_shapes.join(" + "),
        wl,
        step.flops
    );
    let constant = quote! {
        #[doc = #doc]
        const #name: #ty = #value;
    };
    let call = quote! {
        if let Some(([#(#ins),*], y)) = kerac::arena::views(arena, [#(#reads),*], (#wo, #wl)) {
            #call;
        }
    };
    Ok((constant, call))
}

fn array_type(plan: &Plan, port: &Port) -> TokenStream {
    // One sample drops the batch axis; a batch keeps it.
    let dims: &[usize] = if plan.batch == 1 {
        &port.shape[1..]
    } else {
        &port.shape
    };
    let mut t = quote!(f32);
    for &d in dims.iter().rev() {
        t = quote!([#t; #d]);
    }
    if dims.is_empty() {
        t = quote!([f32; 1]);
    }
    t
}

/// A zero value of [`array_type`] (arrays past 32 elements have no `Default`).
fn array_zero(plan: &Plan, port: &Port) -> TokenStream {
    let dims: &[usize] = if plan.batch == 1 {
        &port.shape[1..]
    } else {
        &port.shape
    };
    let mut t = quote!(0.0f32);
    for &d in dims.iter().rev() {
        t = quote!([#t; #d]);
    }
    if dims.is_empty() {
        t = quote!([0.0f32; 1]);
    }
    t
}

fn shape_tokens(shape: &[usize]) -> TokenStream {
    quote!(&[#(#shape),*])
}

fn arg_names(ports: &[Port]) -> Vec<syn::Ident> {
    let mut seen = std::collections::HashSet::new();
    ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut s: String = p
                .name
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_lowercase()
                    } else {
                        '_'
                    }
                })
                .collect();
            if s.is_empty()
                || s.starts_with(|c: char| c.is_ascii_digit())
                || syn::parse_str::<syn::Ident>(&s).is_err()
                || s.starts_with("output_")
            {
                s = format!("input_{i}");
            }
            while !seen.insert(s.clone()) {
                s.push('_');
            }
            format_ident!("{}", s)
        })
        .collect()
}

fn describe(ports: &[Port]) -> String {
    let parts: Vec<String> = ports
        .iter()
        .map(|p| format!("`{}` {:?}", p.name, p.shape))
        .collect();
    parts.join(", ")
}
