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

/// One step of the compiled plan.
#[derive(Debug, Serialize)]
pub struct StepRow {
    /// Runtime kernel.
    pub kernel: String,
    /// Keras layers it implements.
    pub layers: String,
    /// Loop nest: named constant trip counts, outermost first.
    pub loops: Vec<(String, usize)>,
    /// FLOPs per call.
    pub flops: u64,
    /// Bytes read: inputs and weights.
    pub bytes_read: usize,
    /// Bytes written.
    pub bytes_written: usize,
    /// Arena region written, in bytes: `[start, end)`.
    pub output_region: (usize, usize),
}

/// The compiled plan, as `inspect` shows it.
#[derive(Debug, Serialize)]
pub struct PlanReport {
    /// Steps in order.
    pub steps: Vec<StepRow>,
    /// Arena bytes.
    pub arena_bytes: usize,
    /// Bytes alive at once at the worst step: no arena can be smaller.
    pub arena_lower_bound_bytes: usize,
    /// Weight bytes after folding.
    pub weight_bytes: usize,
}

impl PlanReport {
    /// Summarises a plan.
    pub fn new(plan: &crate::plan::Plan) -> PlanReport {
        use crate::plan::Kernel;
        let weight_floats = |k: &Kernel| -> usize {
            k.weights()
                .iter()
                .map(|&id| plan.weights[id].data.len())
                .sum()
        };
        PlanReport {
            steps: plan
                .steps
                .iter()
                .map(|s| {
                    let out = &plan.buffers[s.output];
                    StepRow {
                        kernel: s.kernel.name().to_string(),
                        layers: s.layers.clone(),
                        loops: s
                            .kernel
                            .loops()
                            .into_iter()
                            .map(|(n, v)| (n.to_string(), v))
                            .collect(),
                        flops: s.flops,
                        bytes_read: 4
                            * (s.inputs.iter().map(|&v| plan.buffers[v].len).sum::<usize>()
                                + weight_floats(&s.kernel)),
                        bytes_written: 4 * out.len,
                        output_region: (4 * out.offset, 4 * (out.offset + out.len)),
                    }
                })
                .collect(),
            arena_bytes: 4 * plan.arena_floats,
            arena_lower_bound_bytes: 4 * plan.lower_bound_floats,
            weight_bytes: plan.weight_bytes(),
        }
    }

    /// The plan as text.
    pub fn to_text(&self) -> String {
        let mut rows: Vec<[String; 6]> = vec![[
            "Step".into(),
            "Kernel (layers)".into(),
            "Loops".into(),
            "FLOPs".into(),
            "Read / written".into(),
            "Arena (bytes)".into(),
        ]];
        for (i, s) in self.steps.iter().enumerate() {
            let loops: Vec<String> = s.loops.iter().map(|(n, v)| format!("{n} {v}")).collect();
            rows.push([
                i.to_string(),
                format!("{} ({})", s.kernel, s.layers),
                loops.join(" x "),
                group(s.flops),
                format!("{} / {}", bytes(s.bytes_read), bytes(s.bytes_written)),
                format!("{}..{}", s.output_region.0, s.output_region.1),
            ]);
        }
        let mut out = format!("Plan: {} steps\n", self.steps.len());
        out.push_str(&table(&rows, &[true, false, false, true, true, true]));
        let over = if self.arena_lower_bound_bytes > 0 {
            100.0 * (self.arena_bytes as f64 / self.arena_lower_bound_bytes as f64 - 1.0)
        } else {
            0.0
        };
        out.push_str(&format!(
            " Arena: {} (lower bound {}, +{over:.1}%)   Weights: {}\n",
            bytes(self.arena_bytes),
            bytes(self.arena_lower_bound_bytes),
            bytes(self.weight_bytes)
        ));
        out
    }
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
    /// The compiled plan, when the model compiles.
    pub plan: Option<PlanReport>,
    /// Why the model does not compile, when it does not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan_error: Option<String>,
}

impl Report {
    /// Summarises a graph.
    pub fn new(graph: &Graph) -> Report {
        let ports = |ports: &[crate::graph::NamedTensor]| {
            ports
                .iter()
                .map(|p| (p.name.clone(), graph.shape(p.tensor).clone()))
                .collect()
        };
        let (plan, plan_error) = match crate::plan::Plan::new(graph) {
            Ok(plan) => (Some(PlanReport::new(&plan)), None),
            Err(e) => (None, Some(e.to_string())),
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
            plan,
            plan_error,
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
        let mut out = format!(
            "Model: \"{}\"  ({}, Keras {}, batch {})\n",
            self.model,
            self.source,
            self.keras_version.as_deref().unwrap_or("unknown"),
            self.batch
        );
        out.push_str(&table(&rows, &[false, false, true, true]));
        out.push_str(&format!(
            " Total params: {} ({})\n",
            group(self.params as u64),
            bytes(self.weight_bytes)
        ));
        out.push_str(&format!(" FLOPs per call: {}\n", group(self.flops)));
        out.push('\n');
        match (&self.plan, &self.plan_error) {
            (Some(plan), _) => out.push_str(&plan.to_text()),
            (None, e) => out.push_str(&format!(
                "Plan: not compiled: {}\n",
                e.as_deref().unwrap_or("unknown")
            )),
        }
        out
    }
}

/// Rows as aligned columns, the first row a header, with rules above and below the body;
/// `right[c]` right-aligns column `c`.
fn table<const N: usize>(rows: &[[String; N]], right: &[bool; N]) -> String {
    let widths: Vec<usize> = (0..N)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let line = "─".repeat(widths.iter().sum::<usize>() + 3 * N.saturating_sub(1));
    let mut out = format!("{line}\n");
    for (i, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .zip(right)
            .map(|((cell, &w), &r)| {
                if r {
                    format!("{cell:>w$}")
                } else {
                    format!("{cell:<w$}")
                }
            })
            .collect();
        out.push_str(cells.join("   ").trim_end());
        out.push('\n');
        if i == 0 {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out.push_str(&line);
    out.push('\n');
    out
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
