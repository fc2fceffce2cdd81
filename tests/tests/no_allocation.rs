//! Compiled models allocate nothing when they run: a counting global allocator sees no
//! allocation during any call of any compiled fixture.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        // SAFETY: the caller's layout, passed through.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

use kerac_conformance_compiled as compiled;

#[test]
fn running_a_compiled_model_allocates_nothing() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let isas = kerac_conformance::isas();
    for ((label, reference, make), &isa) in compiled::compiled()
        .iter()
        .flat_map(|c| isas.iter().map(move |isa| (c, isa)))
    {
        let reference = kerac_compiler::io::IoFile::read(&root.join(reference)).unwrap();
        let (inputs, mut outputs) = kerac_conformance::one_sample(&reference);
        let ins: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
        let mut outs: Vec<&mut [f32]> = outputs.iter_mut().map(Vec::as_mut_slice).collect();
        let mut model = make(isa);
        let before = ALLOCATIONS.load(Ordering::SeqCst);
        let result = model.run(&ins, &mut outs);
        let after = ALLOCATIONS.load(Ordering::SeqCst);
        assert_eq!(result, Ok(()), "{label} ({})", isa.name());
        assert_eq!(
            after,
            before,
            "{label} ({}): {} allocations during run",
            isa.name(),
            after - before
        );
    }
}
