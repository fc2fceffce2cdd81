//! Classifies the images recorded with the MNIST-style CNN fixture and compares each
//! answer with the one Keras gave. The model is compiled into the binary by `model!`.
//!
//! `cargo run --release -p kerac-example-classifier`

kerac::model!(Digits = "../../tests/fixtures/mnist_cnn/k3.keras");

type Image = [[[f32; 1]; 28]; 28];

fn main() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/mnist_cnn/k3.io.json"
    );
    let io: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("JSON");
    let pixels: Vec<f32> = io["inputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let keras: Vec<f32> = io["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();

    let mut net = Digits::new();
    let mut agree = 0;
    let images = pixels.len() / (28 * 28);
    for (i, chunk) in pixels.chunks_exact(28 * 28).enumerate() {
        let mut image: Image = [[[0.0; 1]; 28]; 28];
        for (p, v) in chunk.iter().enumerate() {
            image[p / 28][p % 28][0] = *v;
        }
        let probabilities = net.predict(&image);
        let ours = argmax(&probabilities);
        let theirs = argmax(&keras[i * 10..(i + 1) * 10]);
        agree += usize::from(ours == theirs);
        println!(
            "image {i}: class {ours} (p = {:.4}); Keras says {theirs}",
            probabilities[ours]
        );
    }
    println!("{agree}/{images} answers agree with Keras");
    std::process::exit(if agree == images { 0 } else { 1 });
}

fn argmax(values: &[f32]) -> usize {
    (0..values.len()).fold(0, |best, i| if values[i] > values[best] { i } else { best })
}
