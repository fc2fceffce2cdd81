//! The `model!` proc macro. It parses its arguments, resolves the model path against the
//! calling crate, and hands the rest to `kerac-compiler`; the code it returns is what
//! `kerac compile --emit rust` writes.

use kerac_compiler::emit::rust::{emit, Level, RustOptions, WeightsAt};
use kerac_compiler::plan::Plan;
use kerac_compiler::BuildOptions;
use proc_macro::TokenStream;
use std::path::PathBuf;
use syn::parse::{Parse, ParseStream};
use syn::{bracketed, parenthesized, Ident, LitInt, LitStr, Token, Visibility};

struct Args {
    vis: Visibility,
    name: Ident,
    path: LitStr,
    batch: Option<LitInt>,
    weights: Option<LitStr>,
    input_shapes: Vec<(String, Vec<usize>)>,
    stream: bool,
    isa: Option<LitStr>,
    cuda: bool,
    inline: Option<bool>,
}

impl Parse for Args {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let vis: Visibility = input.parse()?;
        let name: Ident = input.parse()?;
        input.parse::<Token![=]>()?;
        let path: LitStr = input.parse()?;
        let mut args = Args {
            vis,
            name,
            path,
            batch: None,
            weights: None,
            input_shapes: Vec::new(),
            stream: false,
            isa: None,
            cuda: false,
            inline: None,
        };
        while input.parse::<Option<Token![,]>>()?.is_some() {
            if input.is_empty() {
                break;
            }
            let key: Ident = input.parse()?;
            match key.to_string().as_str() {
                "batch" => {
                    input.parse::<Token![=]>()?;
                    args.batch = Some(input.parse()?);
                }
                "weights" => {
                    input.parse::<Token![=]>()?;
                    args.weights = Some(input.parse()?);
                }
                "isa" => {
                    input.parse::<Token![=]>()?;
                    let name: LitStr = input.parse()?;
                    if Level::parse(&name.value()).is_none() {
                        let names: Vec<&str> = Level::ALL.iter().map(|l| l.name()).collect();
                        let message = format!(
                            "unknown isa `{}`; expected one of {}",
                            name.value(),
                            names.join(", ")
                        );
                        return Err(syn::Error::new(name.span(), message));
                    }
                    args.isa = Some(name);
                }
                "cuda" => args.cuda = true,
                "stream" => {
                    input.parse::<Token![=]>()?;
                    args.stream = input.parse::<syn::LitBool>()?.value;
                }
                "inline" => {
                    input.parse::<Token![=]>()?;
                    args.inline = Some(input.parse::<syn::LitBool>()?.value);
                }
                "input_shape" => {
                    let inner;
                    parenthesized!(inner in input);
                    let input_name = if inner.peek(LitStr) {
                        inner.parse::<LitStr>()?.value()
                    } else {
                        inner.parse::<Ident>()?.to_string()
                    };
                    input.parse::<Token![=]>()?;
                    let dims;
                    bracketed!(dims in input);
                    let dims = dims.parse_terminated(LitInt::parse, Token![,])?;
                    let dims = dims
                        .iter()
                        .map(LitInt::base10_parse::<usize>)
                        .collect::<syn::Result<Vec<_>>>()?;
                    args.input_shapes.push((input_name, dims));
                }
                other => {
                    return Err(syn::Error::new(key.span(), format!("unknown option `{other}`; expected batch, weights, stream, isa, cuda, inline or input_shape(NAME)")));
                }
            }
        }
        Ok(args)
    }
}

/// Compiles a Keras model file into a Rust type: `model!(pub Net = "models/net.keras")`.
#[proc_macro]
pub fn model(input: TokenStream) -> TokenStream {
    let args = syn::parse_macro_input!(input as Args);
    match expand(&args) {
        Ok(tokens) => tokens.into(),
        Err(message) => syn::Error::new(args.path.span(), message)
            .to_compile_error()
            .into(),
    }
}

fn expand(args: &Args) -> Result<proc_macro2::TokenStream, String> {
    let root = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_default();
    let path = root.join(args.path.value());
    let weights = args.weights.as_ref().map(|w| root.join(w.value()));
    let batch = match &args.batch {
        Some(b) => b.base10_parse::<usize>().map_err(|e| e.to_string())?,
        None => 1,
    };
    let options = BuildOptions {
        batch,
        input_shapes: args.input_shapes.iter().cloned().collect(),
        stream: args.stream,
    };
    let graph =
        kerac_compiler::load(&path, weights.as_deref(), &options).map_err(|e| e.to_string())?;
    let plan = Plan::new(&graph).map_err(|e| e.to_string())?;
    // The GPU's kernels read the weights as Keras lays them out; the CPU's, in panels.
    let cuda = if args.cuda {
        let source = args.path.value();
        Some(
            kerac_compiler::emit::cuda::source_and_launches(&plan, "net", &source)
                .map_err(|e| e.to_string())?,
        )
    } else {
        None
    };
    let plan = plan.with_runtime_panels();
    let vis = &args.vis;
    let rust = RustOptions {
        type_name: args.name.to_string(),
        visibility: quote::quote!(#vis).to_string(),
        track_files: std::iter::once(&path)
            .chain(weights.as_ref())
            .map(|p| p.display().to_string())
            .collect(),
        source: args.path.value(),
        weights: weights_at(&plan)?,
        isa: args
            .isa
            .as_ref()
            .and_then(|name| Level::parse(&name.value()))
            .unwrap_or(Level::Avx512),
        cuda,
        inline: args.inline,
    };
    emit(&plan, &rust).map_err(|e| e.to_string())
}

/// Weights above this size go to a file that `include_bytes!` reads: rustc takes a
/// 100 MB file in stride, but a byte-string literal of that size costs it gigabytes.
const INLINE_LIMIT: usize = 1 << 20;

/// Where the expansion keeps the weights: inline when small, else in a file named by
/// its content's hash, under the crate's `OUT_DIR` when it has one, else the system's
/// temporary folder. rustc tracks the file, so a deleted one is written again.
fn weights_at(plan: &Plan) -> Result<WeightsAt, String> {
    let blob = plan.weight_blob();
    if blob.len() <= INLINE_LIMIT {
        return Ok(WeightsAt::Inline);
    }
    // FNV-1a: stable across runs and machines, unlike std's hasher.
    let hash = blob.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    let dir = std::env::var_os("OUT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join("kerac-weights");
    let file = dir.join(format!("{hash:016x}-{}.bin", blob.len()));
    let unwritten = std::fs::metadata(&file).map_or(true, |m| m.len() != blob.len() as u64);
    if unwritten {
        let failed =
            |e: std::io::Error| format!("cannot write the weights to {}: {e}", file.display());
        std::fs::create_dir_all(&dir).map_err(failed)?;
        // Written aside and renamed, so a parallel expansion never reads half a file.
        let part = dir.join(format!("{hash:016x}.{}.part", std::process::id()));
        let out = std::fs::File::create(&part).map_err(failed)?;
        std::io::Write::write_all(&mut &out, &blob).map_err(failed)?;
        // Dated long before any build: cargo deems a crate stale when a file it read
        // is newer than the build's start, which a file written during that build
        // always is, and the next `cargo` call rebuilt the whole crate once more (a
        // conformance crate: 8 minutes). The name is the content's hash, so the date
        // says nothing the name does not.
        out.set_modified(
            std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(86_400),
        )
        .map_err(failed)?;
        drop(out);
        std::fs::rename(&part, &file).map_err(failed)?;
    }
    Ok(WeightsAt::File(file.display().to_string()))
}
