//! Every fixture through the Cranelift JIT, against the outputs Keras recorded.

use kerac_compiler::emit::clif::Jit;
use kerac_compiler::io::{self, IoFile};
use kerac_compiler::plan::Plan;
use kerac_conformance::{fixtures, load};

#[test]
fn every_fixture_matches_keras_through_the_jit() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for f in fixtures() {
        let reference = IoFile::read(&f.reference).expect("reference file");
        let result = load(&f, &reference).and_then(|graph| {
            let plan = Plan::new(&graph)?;
            let mut jit = Jit::new(&plan)?;
            let outputs = io::run_samples(&graph, &reference.inputs, |x| jit.run_arrays(x))?;
            io::compare(&outputs, &reference)
        });
        match result {
            Ok(cmp) => {
                for c in cmp.iter().filter(|c| c.mismatches > 0) {
                    failures.push(format!(
                        "{}/{} output {}: {} of {} outside tolerance (max abs err {:.3e})",
                        f.name, f.file, c.name, c.mismatches, c.total, c.max_abs
                    ));
                }
                checked += 1;
            }
            Err(e) => failures.push(format!("{}/{}: {e}", f.name, f.file)),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(checked >= 66, "only {checked} fixture files checked");
}
