//! What `kerac inspect` shows: a table like Keras's `model.summary()` with FLOPs, and
//! the totals.

use crate::graph::Graph;
use serde::Serialize;

/// One row of the layer table.
#[derive(Debug, Serialize)]
pub struct LayerRow {
    /// Layer name (nested models as `outer/inner`).
    pub name: String,
    /// Keras class.
    pub class: String,
    /// Which call of a shared layer.
    pub call: usize,
    /// Output shapes, batch first.
    pub output_shapes: Vec<Vec<usize>>,
    /// Parameters owned by the layer.
    pub params: usize,
    /// FLOPs per model call.
    pub flops: u64,
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Model name.
    pub model: String,
    /// The file.
    pub source: String,
    /// Keras version recorded in the file.
    pub keras_version: Option<String>,
    /// Batch size the shapes are fixed with.
    pub batch: usize,
    /// Inputs: name and shape.
    pub inputs: Vec<(String, Vec<usize>)>,
    /// Outputs: name and shape.
    pub outputs: Vec<(String, Vec<usize>)>,
    /// Per-layer rows.
    pub layers: Vec<LayerRow>,
    /// Total parameters.
    pub params: usize,
    /// Bytes of float32 weights.
    pub weight_bytes: usize,
    /// Total FLOPs per call.
    pub flops: u64,
}

impl Report {
    /// Summarises a graph.
    pub fn new(graph: &Graph) -> Report {
        let ports = |ports: &[crate::graph::Port]| {
            ports
                .iter()
                .map(|p| (p.name.clone(), graph.shape(p.tensor).clone()))
                .collect()
        };
        Report {
            model: graph.name.clone(),
            source: graph.source.display().to_string(),
            keras_version: graph.keras_version.clone(),
            batch: graph.batch,
            inputs: ports(&graph.inputs),
            outputs: ports(&graph.outputs),
            layers: graph
                .nodes
                .iter()
                .map(|n| LayerRow {
                    name: n.name.clone(),
                    class: n.class.clone(),
                    call: n.call,
                    output_shapes: n.outputs.iter().map(|&t| graph.shape(t).clone()).collect(),
                    params: n.params,
                    flops: n.op.flops(),
                })
                .collect(),
            params: graph.params(),
            weight_bytes: graph.params() * 4,
            flops: graph.flops(),
        }
    }

    /// The table as text.
    pub fn to_text(&self) -> String {
        let mut rows: Vec<[String; 4]> = vec![[
            "Layer (type)".into(),
            "Output Shape".into(),
            "Param #".into(),
            "FLOPs".into(),
        ]];
        for (name, shape) in &self.inputs {
            rows.push([
                format!("{name} (InputLayer)"),
                show_shape(shape),
                "0".into(),
                "0".into(),
            ]);
        }
        for l in &self.layers {
            let call = if l.call > 0 {
                format!(" [call {}]", l.call)
            } else {
                String::new()
            };
            let shapes: Vec<String> = l.output_shapes.iter().map(|s| show_shape(s)).collect();
            rows.push([
                format!("{} ({}){call}", l.name, l.class),
                shapes.join(", "),
                group(l.params as u64),
                group(l.flops),
            ]);
        }
        let widths: Vec<usize> = (0..4)
            .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
            .collect();
        let line = "─".repeat(widths.iter().sum::<usize>() + 9);
        let mut out = format!(
            "Model: \"{}\"  ({}, Keras {}, batch {})\n",
            self.model,
            self.source,
            self.keras_version.as_deref().unwrap_or("unknown"),
            self.batch
        );
        out.push_str(&line);
        out.push('\n');
        for (i, r) in rows.iter().enumerate() {
            out.push_str(&format!(
                "{:<w0$}   {:<w1$}   {:>w2$}   {:>w3$}\n",
                r[0],
                r[1],
                r[2],
                r[3],
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2],
                w3 = widths[3]
            ));
            if i == 0 {
                out.push_str(&line);
                out.push('\n');
            }
        }
        out.push_str(&line);
        out.push('\n');
        out.push_str(&format!(
            " Total params: {} ({})\n",
            group(self.params as u64),
            bytes(self.weight_bytes)
        ));
        out.push_str(&format!(" FLOPs per call: {}\n", group(self.flops)));
        out
    }
}

fn show_shape(s: &[usize]) -> String {
    format!(
        "({})",
        s.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn bytes(n: usize) -> String {
    match n {
        n if n >= 1 << 20 => format!("{:.2} MiB", n as f64 / (1 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.2} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}
