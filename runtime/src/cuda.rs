//! Models on an NVIDIA GPU: what `model!(Net = "...", cuda)` builds on (the `cuda`
//! feature).
//!
//! The kernels are those of `kerac compile --emit cuda`, one per step, embedded in the
//! type as CUDA C++ ([`Program`]). [`CudaModel::new`] compiles them with NVRTC for the
//! GPU it finds and loads them through the driver API (cudarc). Both libraries are
//! loaded when the model is made, not linked, so a crate with this feature builds and
//! runs on machines without CUDA: there, `new` returns [`CudaError::NoDriver`] or
//! [`CudaError::NoNvrtc`]. A model owns its device scratch memory; a call allocates
//! nothing on the device, and launches the same grids every time.

extern crate std;

use core::fmt;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DriverError, LaunchConfig,
    PushKernelArg,
};
use std::string::{String, ToString};
use std::sync::Arc;
use std::vec::Vec;

pub use cudarc;

/// One kernel launch of a call.
#[derive(Debug)]
pub struct Launch {
    /// The kernel's name in [`Program::source`].
    pub kernel: &'static str,
    /// Blocks in the grid (one dimension).
    pub blocks: u32,
    /// Threads per block.
    pub threads: u32,
    /// The scratch offsets (floats) of its arguments, inputs then output.
    pub buffers: &'static [usize],
}

/// A model's kernels and how one call runs them, as `model!` writes it.
#[derive(Debug)]
pub struct Program {
    /// CUDA C++ that NVRTC compiles: every step's kernel and the weights.
    pub source: &'static str,
    /// The steps' launches, in order.
    pub launches: &'static [Launch],
    /// Floats of device scratch memory the steps work in.
    pub scratch_floats: usize,
    /// Each input's (offset, length) in the scratch, in floats.
    pub inputs: &'static [(usize, usize)],
    /// Each output's (offset, length) in the scratch, in floats.
    pub outputs: &'static [(usize, usize)],
}

/// Why a GPU model could not be made or run.
#[derive(Debug)]
pub enum CudaError {
    /// The CUDA driver library (`libcuda`) is not installed.
    NoDriver,
    /// NVRTC (`libnvrtc`, CUDA 13) is not installed or not on the library path.
    NoNvrtc,
    /// NVRTC rejected the model's source (a kerac bug): its log.
    Compile(String),
    /// A driver call failed.
    Driver(DriverError),
    /// Not as many buffers as the model has inputs or outputs.
    BufferCount,
    /// A buffer's length is not its input's or output's size.
    BufferLength,
}

impl fmt::Display for CudaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CudaError::NoDriver => write!(f, "no CUDA driver (libcuda) on this machine"),
            CudaError::NoNvrtc => write!(
                f,
                "no NVRTC (libnvrtc.so.13) on the library path: install CUDA 13 or the nvidia-cuda-nvrtc wheel"
            ),
            CudaError::Compile(log) => write!(f, "NVRTC failed on the model's kernels: {log}"),
            CudaError::Driver(e) => write!(f, "CUDA: {e}"),
            CudaError::BufferCount => write!(f, "wrong number of input or output buffers"),
            CudaError::BufferLength => write!(f, "an input or output buffer has the wrong length"),
        }
    }
}

impl std::error::Error for CudaError {}

impl From<DriverError> for CudaError {
    fn from(e: DriverError) -> Self {
        CudaError::Driver(e)
    }
}

/// PTX of `program` for GPUs of compute capability `major.minor`, through NVRTC: what
/// [`CudaModel::new`] loads. Needs NVRTC but no GPU.
pub fn ptx(program: &Program, major: i32, minor: i32) -> Result<cudarc::nvrtc::Ptx, CudaError> {
    // SAFETY: only asks the dynamic loader whether the library loads.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(CudaError::NoNvrtc);
    }
    let options = cudarc::nvrtc::CompileOptions {
        options: std::vec![
            std::format!("--gpu-architecture=compute_{major}{minor}"),
            "-std=c++17".to_string(),
            // Subnormals flushed to zero, as TensorFlow computes Keras models on a CPU
            // and as the CPU backends do.
            "--ftz=true".to_string(),
        ],
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(program.source, options).map_err(|e| match e {
        cudarc::nvrtc::CompileError::CompileError { log, .. } => {
            CudaError::Compile(log.to_string_lossy().into_owned())
        }
        other => CudaError::Compile(std::format!("{other:?}")),
    })
}

/// A model loaded on one GPU, with its own stream and scratch memory.
pub struct CudaModel {
    program: &'static Program,
    stream: Arc<CudaStream>,
    functions: Vec<CudaFunction>,
    /// Each launch's arguments: device addresses into `scratch`.
    args: Vec<Vec<u64>>,
    scratch: CudaSlice<f32>,
}

impl CudaModel {
    /// Compiles `program` for GPU `device` (0 the first), loads it and allocates the
    /// scratch memory, zeroed.
    pub fn new(device: usize, program: &'static Program) -> Result<Self, CudaError> {
        // SAFETY: only asks the dynamic loader whether the library loads.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(CudaError::NoDriver);
        }
        let ctx = CudaContext::new(device)?;
        let (major, minor) = ctx.compute_capability()?;
        let module = ctx.load_module(ptx(program, major, minor)?)?;
        let functions = program
            .launches
            .iter()
            .map(|l| module.load_function(l.kernel))
            .collect::<Result<Vec<_>, _>>()?;
        let stream = ctx.new_stream()?;
        let scratch = stream.alloc_zeros::<f32>(program.scratch_floats.max(1))?;
        let base = {
            let (ptr, _sync) = scratch.device_ptr(&stream);
            ptr
        };
        let args = program
            .launches
            .iter()
            .map(|l| l.buffers.iter().map(|&o| base + 4 * o as u64).collect())
            .collect();
        Ok(CudaModel {
            program,
            stream,
            functions,
            args,
            scratch,
        })
    }

    /// The stream the model's work is queued on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Runs the model once on inputs and outputs in host memory, in Keras's order, each
    /// of its size; returns when the outputs are written.
    pub fn run(&mut self, inputs: &[&[f32]], outputs: &mut [&mut [f32]]) -> Result<(), CudaError> {
        self.check(
            inputs.iter().map(|x| x.len()),
            outputs.iter().map(|y| y.len()),
        )?;
        for (x, &(at, n)) in inputs.iter().zip(self.program.inputs) {
            let mut to = self.scratch.slice_mut(at..at + n);
            self.stream.memcpy_htod(*x, &mut to)?;
        }
        self.launch()?;
        for (y, &(at, n)) in outputs.iter_mut().zip(self.program.outputs) {
            self.stream
                .memcpy_dtoh(&self.scratch.slice(at..at + n), *y)?;
        }
        self.stream.synchronize()?;
        Ok(())
    }

    /// Runs the model once on inputs and outputs in device memory; the work is queued
    /// on [`Self::stream`], and this returns without waiting for it.
    pub fn run_device(
        &mut self,
        inputs: &[&CudaSlice<f32>],
        outputs: &mut [&mut CudaSlice<f32>],
    ) -> Result<(), CudaError> {
        self.check(
            inputs.iter().map(|x| x.len()),
            outputs.iter().map(|y| y.len()),
        )?;
        for (x, &(at, n)) in inputs.iter().zip(self.program.inputs) {
            let mut to = self.scratch.slice_mut(at..at + n);
            self.stream.memcpy_dtod(*x, &mut to)?;
        }
        self.launch()?;
        for (y, &(at, n)) in outputs.iter_mut().zip(self.program.outputs) {
            self.stream
                .memcpy_dtod(&self.scratch.slice(at..at + n), *y)?;
        }
        Ok(())
    }

    /// Zeroes the scratch memory: a streaming model's recurrent state starts over.
    pub fn reset_state(&mut self) -> Result<(), CudaError> {
        self.stream.memset_zeros(&mut self.scratch)?;
        Ok(())
    }

    fn check(
        &self,
        inputs: impl ExactSizeIterator<Item = usize>,
        outputs: impl ExactSizeIterator<Item = usize>,
    ) -> Result<(), CudaError> {
        let (ins, outs) = (self.program.inputs, self.program.outputs);
        if inputs.len() != ins.len() || outputs.len() != outs.len() {
            return Err(CudaError::BufferCount);
        }
        let fits =
            inputs.zip(ins).all(|(n, p)| n == p.1) && outputs.zip(outs).all(|(n, p)| n == p.1);
        if !fits {
            return Err(CudaError::BufferLength);
        }
        Ok(())
    }

    fn launch(&mut self) -> Result<(), CudaError> {
        for ((launch, f), args) in self
            .program
            .launches
            .iter()
            .zip(&self.functions)
            .zip(&self.args)
        {
            let mut builder = self.stream.launch_builder(f);
            for a in args {
                builder.arg(a);
            }
            let config = LaunchConfig {
                grid_dim: (launch.blocks, 1, 1),
                block_dim: (launch.threads, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: each kernel takes as many float pointers as its launch has
            // buffers, and every buffer lies inside the scratch, which the model owns
            // for as long as its kernels can run (the stream is its own).
            unsafe { builder.launch(config) }?;
        }
        Ok(())
    }
}
