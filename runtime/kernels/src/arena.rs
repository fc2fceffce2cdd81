//! The activation arena: one fixed buffer whose regions the compiler planned from
//! tensor lifetimes. Kernels read some regions and write another; this hands out those
//! views after checking they are in bounds and that the written one overlaps no read.

/// A fixed-size, 64-byte aligned arena of `N` floats.
#[repr(C, align(64))]
#[derive(Clone)]
pub struct Arena<const N: usize>(pub [f32; N]);

impl<const N: usize> Arena<N> {
    /// A zeroed arena.
    pub const fn new() -> Self {
        Arena([0.0; N])
    }
}

impl<const N: usize> Default for Arena<N> {
    fn default() -> Self {
        Self::new()
    }
}

/// A region of the arena: offset and length in floats.
pub type Region = (usize, usize);

/// Views of `reads` (shared) and `write` (exclusive) in `arena`, or `None` when a region
/// is out of bounds or the written region overlaps a read one. Planned code never gets
/// `None`; the check is one constant branch, not a panic path.
#[inline(always)]
pub fn views<const R: usize>(
    arena: &mut [f32],
    reads: [Region; R],
    write: Region,
) -> Option<([&[f32]; R], &mut [f32])> {
    let in_bounds = |(off, len): Region| off.checked_add(len).is_some_and(|end| end <= arena.len());
    let disjoint = |(a, al): Region, (b, bl): Region| a + al <= b || b + bl <= a;
    if !in_bounds(write) || reads.iter().any(|&r| !in_bounds(r) || !disjoint(r, write)) {
        return None;
    }
    let base = arena.as_mut_ptr();
    // SAFETY: every region is inside `arena` (checked above); the written region overlaps
    // no read region, so the one `&mut` view aliases none of the shared ones, and all
    // borrow from `arena`, which stays mutably borrowed for their lifetime.
    unsafe {
        let out = core::slice::from_raw_parts_mut(base.add(write.0), write.1);
        let ins = reads.map(|(off, len)| core::slice::from_raw_parts(base.add(off), len));
        Some((ins, out))
    }
}

/// Copies `src` into the arena at `offset`; nothing when it does not fit, which planned
/// code never hits.
#[inline(always)]
pub fn write(arena: &mut [f32], offset: usize, src: &[f32]) {
    if let Some(dst) = offset
        .checked_add(src.len())
        .and_then(|end| arena.get_mut(offset..end))
    {
        dst.copy_from_slice(src);
    }
}

/// Copies from the arena at `offset` into `dst`; nothing when it does not fit.
#[inline(always)]
pub fn read(arena: &[f32], offset: usize, dst: &mut [f32]) {
    if let Some(src) = offset
        .checked_add(dst.len())
        .and_then(|end| arena.get(offset..end))
    {
        dst.copy_from_slice(src);
    }
}
