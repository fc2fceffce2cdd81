//! The floating-point environment of `<prefix>_predict`: subnormals flushed to zero
//! while it runs, as TensorFlow computes Keras models and as the Rust backend does
//! ([`kerac::fp`]). Cranelift has no instruction for the control registers, so two
//! leaf functions of machine code set and restore them:
//!
//! - `<prefix>_fp_enter()` returns the caller's setting and turns flushing on;
//! - `<prefix>_fp_leave(old)` puts the caller's setting back.
//!
//! x86-64 sets MXCSR's FTZ and DAZ bits; aarch64 sets FPCR.FZ, which flushes both
//! subnormal inputs and results. riscv64 has no such mode: its code computes
//! subnormals as IEEE 754 says, and [`functions`] gives it none.

use crate::error::{Error, Result};
use iced_x86::code_asm::*;

/// The machine code of `(enter, leave)` for the architecture of a target triple, or
/// `None` where it has no flush mode.
pub(super) fn functions(architecture: &str) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
    match architecture {
        "x86_64" => x86_64().map(Some),
        "aarch64" => Ok(Some((words(&AARCH64_ENTER), words(&AARCH64_LEAVE)))),
        _ => Ok(None),
    }
}

/// System V: the result in eax, the argument in edi. MXCSR moves only through memory,
/// so each function uses one stack slot.
fn x86_64() -> Result<(Vec<u8>, Vec<u8>)> {
    let fail = |e: IcedError| Error::new(format!("assembling the MXCSR functions: {e}"));
    let mut enter = CodeAssembler::new(64).map_err(fail)?;
    (|| -> core::result::Result<(), IcedError> {
        enter.push(rax)?;
        // The caller's MXCSR, returned.
        enter.stmxcsr(dword_ptr(rsp))?;
        enter.mov(eax, dword_ptr(rsp))?;
        // FTZ (bit 15) and DAZ (bit 6) on.
        enter.or(dword_ptr(rsp), kerac::fp::FTZ_DAZ as i32)?;
        enter.ldmxcsr(dword_ptr(rsp))?;
        enter.pop(rcx)?;
        enter.ret()
    })()
    .map_err(fail)?;
    let mut leave = CodeAssembler::new(64).map_err(fail)?;
    (|| -> core::result::Result<(), IcedError> {
        // The caller's MXCSR back, from the argument.
        leave.push(rdi)?;
        leave.ldmxcsr(dword_ptr(rsp))?;
        leave.pop(rdi)?;
        leave.ret()
    })()
    .map_err(fail)?;
    Ok((
        enter.assemble(0).map_err(fail)?,
        leave.assemble(0).map_err(fail)?,
    ))
}

/// `mrs x0, fpcr; orr x1, x0, #(1 << 24); msr fpcr, x1; ret`: the caller's FPCR in x0,
/// then FZ (bit 24) on.
const AARCH64_ENTER: [u32; 4] = [0xd53b_4400, 0xb268_0001, 0xd51b_4401, 0xd65f_03c0];
/// `msr fpcr, x0; ret`: the caller's FPCR back, from the argument.
const AARCH64_LEAVE: [u32; 2] = [0xd51b_4400, 0xd65f_03c0];

fn words(w: &[u32]) -> Vec<u8> {
    w.iter().flat_map(|w| w.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes GNU `as` gives for the listings.
    #[test]
    fn x86_64_code_is_the_listing() {
        let (enter, leave) = x86_64().unwrap();
        #[rustfmt::skip]
        let expected: [&[u8]; 7] = [
            &[0x50],                                     // push rax
            &[0x0f, 0xae, 0x1c, 0x24],                   // stmxcsr [rsp]
            &[0x8b, 0x04, 0x24],                         // mov eax, [rsp]
            &[0x81, 0x0c, 0x24, 0x40, 0x80, 0x00, 0x00], // or dword [rsp], 0x8040
            &[0x0f, 0xae, 0x14, 0x24],                   // ldmxcsr [rsp]
            &[0x59],                                     // pop rcx
            &[0xc3],                                     // ret
        ];
        assert_eq!(enter, expected.concat());
        assert_eq!(leave, [0x57, 0x0f, 0xae, 0x14, 0x24, 0x5f, 0xc3]);
    }
}
