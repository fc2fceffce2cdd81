//! Runs one compiled fixture once on one kind of input, for instruction counting under
//! callgrind: `predict_once LABEL zeros|huge|nan|inf|denormal|random ISA`. Prints a
//! checksum and the instruction set that ran (Valgrind's CPU may lack the one asked for).

use kerac_conformance_compiled as compiled;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (label, kind) = (&args[1], args[2].as_str());
    let isa = kerac::Level::parse(&args[3]).expect("an instruction set level");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let (_, reference, make) = compiled::compiled()
        .into_iter()
        .find(|(l, _, _)| l == label)
        .expect("known fixture");
    let reference = kerac_compiler::io::IoFile::read(&root.join(reference)).expect("reference");
    let samples = reference.inputs[0].shape[0];
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut value = |i: usize| -> f32 {
        match kind {
            "zeros" => 0.0,
            "huge" => {
                if i.is_multiple_of(2) {
                    3.0e38
                } else {
                    -3.0e38
                }
            }
            "nan" => f32::NAN,
            "inf" => {
                if i.is_multiple_of(2) {
                    f32::INFINITY
                } else {
                    f32::NEG_INFINITY
                }
            }
            "denormal" => 1.0e-40,
            _ => {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed % 2000) as f32 / 500.0 - 2.0
            }
        }
    };
    let inputs: Vec<Vec<f32>> = reference
        .inputs
        .iter()
        .map(|t| (0..t.data.len() / samples).map(&mut value).collect())
        .collect();
    let mut outputs: Vec<Vec<f32>> = reference
        .outputs
        .iter()
        .map(|t| vec![0.0; t.data.len() / samples])
        .collect();
    let ins: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
    let mut outs: Vec<&mut [f32]> = outputs.iter_mut().map(Vec::as_mut_slice).collect();
    let mut model = make(isa);
    model.run(&ins, &mut outs).expect("buffers fit");
    // Keep the outputs observable so nothing is optimized away.
    let checksum: f32 = outputs
        .iter()
        .flatten()
        .map(|v| if v.is_finite() { *v } else { 0.0 })
        .sum();
    println!("{checksum} {}", model.isa().name());
}
