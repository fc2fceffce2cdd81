//! Classifies the images recorded with the MNIST-style CNN fixture on an NVIDIA GPU,
//! through `model!(..., cuda)`, and compares each answer with the CPU's and Keras's.
//! The build needs no CUDA: the driver and NVRTC (CUDA 13) are loaded when the model
//! is made, and without them the program says so.
//!
//! Then it times a call at batch 1 and batch 64 on the GPU and on the CPU.
//!
//! `cargo run --release -p kerac-example-cuda-classifier`

kerac::model!(Digits = "../../tests/fixtures/mnist_cnn/k3.keras", cuda);
// The same model for 64 images a call: the batch a server takes.
kerac::model!(
    Digits64 = "../../tests/fixtures/mnist_cnn/k3.keras",
    batch = 64,
    cuda
);

type Image = [[[f32; 1]; 28]; 28];

/// The fixture's images and Keras's probabilities for them.
fn recorded() -> (Vec<Image>, Vec<[f32; 10]>) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/mnist_cnn/k3.io.json"
    );
    let io: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("JSON");
    let floats = |v: &serde_json::Value| -> Vec<f32> {
        let values = v["data"].as_array().expect("data");
        values
            .iter()
            .map(|x| x.as_f64().unwrap_or(f64::NAN) as f32)
            .collect()
    };
    let images = floats(&io["inputs"][0])
        .chunks_exact(28 * 28)
        .map(|chunk| {
            let mut image: Image = [[[0.0; 1]; 28]; 28];
            for (p, v) in chunk.iter().enumerate() {
                image[p / 28][p % 28][0] = *v;
            }
            image
        })
        .collect();
    let keras = floats(&io["outputs"][0])
        .chunks_exact(10)
        .map(|c| c.try_into().expect("ten classes"))
        .collect();
    (images, keras)
}

fn main() {
    let mut gpu = match Digits::new_cuda(0) {
        Ok(gpu) => gpu,
        Err(e) => {
            eprintln!("no GPU model: {e}");
            std::process::exit(2);
        }
    };
    let mut cpu = Digits::new();
    let (images, keras) = recorded();
    let mut agree = 0;
    for (i, (image, theirs)) in images.iter().zip(&keras).enumerate() {
        let ours = gpu.predict(image).expect("the GPU run");
        let on_cpu = cpu.predict(image);
        let gap = max_gap(&ours, &on_cpu);
        let (class, keras_class) = (argmax(&ours), argmax(theirs));
        agree += usize::from(class == keras_class);
        println!(
            "image {i}: class {class} (p = {:.4}); Keras says {keras_class}; GPU - CPU at most {gap:.2e}",
            ours[class]
        );
    }
    println!("{agree}/{} answers agree with Keras", images.len());
    if agree != images.len() {
        std::process::exit(1);
    }

    // Latency per call, the median of 200 after 20 warm-up calls, on the GPU (inputs
    // from and outputs to host memory) and on this CPU.
    let one = images[0];
    let mut gpu64 = Digits64::new_cuda(0).expect("the batch-64 model");
    let mut cpu64 = Digits64::new();
    let many = [one; 64];
    let rows = [
        (
            "batch 1",
            median(|| {
                black_box(gpu.predict(&one).expect("the GPU run"));
            }),
            median(|| {
                black_box(cpu.predict(&one));
            }),
        ),
        (
            "batch 64",
            median(|| {
                black_box(gpu64.predict(&many).expect("the GPU run"));
            }),
            median(|| {
                black_box(cpu64.predict(&many));
            }),
        ),
    ];
    for (what, g, c) in rows {
        println!("{what}: GPU {g:.1} us, CPU {c:.1} us, CPU/GPU {:.2}", c / g);
    }
}

use std::hint::black_box;

/// The median time of one call of `f`, in microseconds.
fn median(mut f: impl FnMut()) -> f64 {
    for _ in 0..20 {
        f();
    }
    let mut times: Vec<f64> = (0..200)
        .map(|_| {
            let start = std::time::Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn argmax(values: &[f32]) -> usize {
    (0..values.len()).fold(0, |best, i| if values[i] > values[best] { i } else { best })
}

fn max_gap(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kerac::cuda::CudaError;

    /// NVRTC compiles the kernels for every GPU kerac targets; no GPU is needed. CI
    /// puts NVRTC (the `nvidia-cuda-nvrtc` wheel) on the library path.
    #[test]
    fn kernels_compile_under_nvrtc() {
        for (major, minor) in [(7, 5), (8, 7), (9, 0)] {
            match kerac::cuda::ptx(Digits::cuda_program(), major, minor) {
                Ok(ptx) => assert!(ptx.to_src().contains(".entry")),
                Err(CudaError::NoNvrtc) if std::env::var_os("CI").is_none() => {
                    eprintln!("skipping the NVRTC check: {}", CudaError::NoNvrtc);
                    return;
                }
                Err(e) => panic!("sm_{major}{minor}: {e}"),
            }
        }
    }

    /// On a GPU, every recorded image gives Keras's probabilities (and the CPU's);
    /// skipped, with a message, where there is none.
    #[test]
    fn gpu_matches_keras() {
        let mut gpu = match Digits::new_cuda(0) {
            Ok(gpu) => gpu,
            Err(e) => {
                eprintln!("skipping the GPU run: {e}");
                return;
            }
        };
        let mut cpu = Digits::new();
        let (images, keras) = recorded();
        for (image, theirs) in images.iter().zip(&keras) {
            let ours = gpu.predict(image).expect("the GPU run");
            assert!(
                max_gap(&ours, theirs) < 1e-5,
                "{ours:?} against Keras's {theirs:?}"
            );
            assert!(max_gap(&ours, &cpu.predict(image)) < 1e-5);
        }
        // Wrong buffer sizes are errors, not panics.
        let short = [0.0f32; 3];
        let mut out = [0.0f32; 10];
        let e = gpu.0.run(&[&short], &mut [&mut out]);
        assert!(matches!(e, Err(CudaError::BufferLength)));
    }
}
