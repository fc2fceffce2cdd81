//! Models compiled into a `no_std` static library with no allocator. The panic handler
//! calls a symbol nothing defines, so a program linking this library only links if no
//! panic path is reachable from the exported entry points (`tests/no_panic.sh`).
#![no_std]

kerac::model!(pub Mlp = "../../tests/fixtures/mlp/k3.keras");
kerac::model!(pub Resnet = "../../tests/fixtures/resnet_cnn/k3.keras");
kerac::model!(pub Shapes = "../../tests/fixtures/reshaping/k3.keras");
kerac::model!(pub Transpose = "../../tests/fixtures/conv_transpose/k3.keras");
kerac::model!(pub Norms = "../../tests/fixtures/normalization/k3.keras");
kerac::model!(pub Merges = "../../tests/fixtures/merge/k3.keras");
kerac::model!(pub Recurrent = "../../tests/fixtures/recurrent_options/k3.keras");
kerac::model!(pub Bidirectional = "../../tests/fixtures/bidirectional/k3.keras");
kerac::model!(pub Transformer = "../../tests/fixtures/transformer_block/k3.keras");
kerac::model!(pub Tagger = "../../tests/fixtures/embedding_tagger/k3.keras");

static mut MLP: Mlp = Mlp::new_const();

/// Runs the MLP fixture on 12 floats at `x`, writing 10 at `y`.
///
/// # Safety
/// `x` points to 12 readable floats, `y` to 10 writable ones; one thread at a time.
#[no_mangle]
pub unsafe extern "C" fn mlp_predict(x: *const f32, y: *mut f32) {
    // SAFETY: the caller guarantees the pointers and the exclusive use of the model.
    unsafe {
        let x = &*(x as *const [f32; 12]);
        *(y as *mut [f32; 10]) = (*core::ptr::addr_of_mut!(MLP)).predict(x);
    }
}

macro_rules! export_run {
    ($name:ident, $model:ty) => {
        /// Runs the model through `kerac::Model::run` on caller buffers; 0 on success.
        ///
        /// # Safety
        /// `inputs` and `outputs` point to `n_in` and `n_out` buffers of `in_len[i]` and
        /// `out_len[i]` floats; `model` to an instance of the model.
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            model: *mut $model,
            inputs: *const *const f32,
            in_len: *const usize,
            n_in: usize,
            outputs: *const *mut f32,
            out_len: *const usize,
            n_out: usize,
        ) -> i32 {
            use kerac::Model;
            let mut ins: [&[f32]; 8] = [&[]; 8];
            let mut outs: [&mut [f32]; 8] = Default::default();
            if n_in > 8 || n_out > 8 {
                return 2;
            }
            // SAFETY: the caller guarantees the pointers and lengths.
            unsafe {
                for i in 0..n_in {
                    ins[i] = core::slice::from_raw_parts(*inputs.add(i), *in_len.add(i));
                }
                for (i, out) in outs.iter_mut().enumerate().take(n_out) {
                    *out = core::slice::from_raw_parts_mut(*outputs.add(i), *out_len.add(i));
                }
                match (*model).run(&ins[..n_in], &mut outs[..n_out]) {
                    Ok(()) => 0,
                    Err(_) => 1,
                }
            }
        }
    };
}

export_run!(resnet_run, Resnet);
export_run!(shapes_run, Shapes);
export_run!(transpose_run, Transpose);
export_run!(norms_run, Norms);
export_run!(merges_run, Merges);
export_run!(recurrent_run, Recurrent);
export_run!(bidirectional_run, Bidirectional);
export_run!(transformer_run, Transformer);
export_run!(tagger_run, Tagger);

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    extern "C" {
        fn kerac_panic_path_is_reachable_from_predict() -> !;
    }
    // SAFETY: never defined: reaching this at link time is the failure we test for.
    unsafe { kerac_panic_path_is_reachable_from_predict() }
}
