//! Counts the instructions of each step of a fixture's JIT-compiled code, for
//! `tests/wcet.rs`; Valgrind runs it: `count_steps MODEL zeros|huge|nan|denormal|random
//! --dumps FILE`.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (model, kind, dumps) = (&args[1], args[2].clone(), &args[4]);
    let graph = kerac_compiler::load(model.as_ref(), None, &Default::default()).expect("model");
    let plan = kerac_compiler::plan::Plan::new(&graph).expect("plan");
    let fill = move |i: usize| -> f32 {
        let r = (i as u32).wrapping_mul(2_654_435_761);
        match kind.as_str() {
            "zeros" => 0.0,
            "huge" => [3.0e38, -3.0e38][i % 2],
            "nan" => f32::NAN,
            "denormal" => f32::from_bits((r >> 9).max(1)),
            _ => (r >> 8) as f32 / (1u32 << 23) as f32 - 1.0,
        }
    };
    let counts =
        kerac_compiler::wcet::count_in_valgrind(&plan, dumps.as_ref(), &fill).expect("counts");
    println!("{}", serde_json::to_string(&counts).expect("json"));
}
