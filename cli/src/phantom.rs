//! `lungstream phantom`: synthetic chest CT series for tests and demos.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use lungstream_phantom::{write_series, InstanceOrder, Label, Orientation, PhantomSpec, TransferSyntax};
use serde::de::DeserializeOwned;

#[derive(Args)]
pub struct PhantomArgs {
    /// Output folder (created if missing); existing files in it are left alone.
    #[arg(long, required_unless_present = "print_spec")]
    out: Option<PathBuf>,
    /// Lesions: healthy, covid or other [default: healthy].
    #[arg(long, value_parser = parse_snake_case::<Label>)]
    label: Option<Label>,
    /// Seed of every random choice; the same seed gives the same files [default: 1].
    #[arg(long)]
    seed: Option<u64>,
    /// Start from this JSON spec (every field of the generator; missing fields take their
    /// defaults, unknown ones are an error) instead of the label's preset. The other
    /// options override it; --print-spec shows a complete spec.
    #[arg(long)]
    spec: Option<PathBuf>,
    /// Number of slices, 1-700 [default: 100].
    #[arg(long)]
    slices: Option<u32>,
    /// Distance between slices in mm [default: 2.5].
    #[arg(long)]
    slice_spacing: Option<f64>,
    /// Rows and columns, 16-4096 (the reader accepts up to 2048) [default: 512]; the
    /// pixel spacing follows, so the field of view stays the same.
    #[arg(long)]
    matrix: Option<u16>,
    /// supine, prone, flipped_rows, flipped_columns or transposed.
    #[arg(long, value_parser = parse_snake_case::<Orientation>)]
    orientation: Option<Orientation>,
    /// Instance Number order: ascending, descending or shuffled.
    #[arg(long, value_parser = parse_snake_case::<InstanceOrder>)]
    instance_order: Option<InstanceOrder>,
    /// explicit_vr_little_endian, implicit_vr_little_endian or explicit_vr_big_endian.
    #[arg(long, value_parser = parse_snake_case::<TransferSyntax>)]
    transfer_syntax: Option<TransferSyntax>,
    /// Print the resulting spec as JSON and write nothing.
    #[arg(long)]
    print_spec: bool,
}

/// Parses a `snake_case` name the way the spec's JSON spells it.
fn parse_snake_case<T: DeserializeOwned>(value: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(value.to_string())).map_err(|e| e.to_string())
}

pub fn run(args: &PhantomArgs) -> anyhow::Result<ExitCode> {
    let mut spec: PhantomSpec = match &args.spec {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| format!("invalid phantom spec {}", path.display()))?
        }
        None => PhantomSpec::preset(args.label.unwrap_or(Label::Healthy), args.seed.unwrap_or(1)),
    };
    if let Some(label) = args.label {
        spec.label = label;
    }
    if let Some(seed) = args.seed {
        spec.seed = seed;
    }
    if let Some(slices) = args.slices {
        spec.slices = slices;
    }
    if let Some(spacing) = args.slice_spacing {
        spec.slice_spacing_mm = spacing;
    }
    if let Some(matrix) = args.matrix {
        let field_of_view = spec.field_of_view_mm;
        spec = spec.with_matrix(matrix, matrix, field_of_view / f64::from(matrix));
    }
    if let Some(orientation) = args.orientation {
        spec.orientation = orientation;
    }
    if let Some(order) = args.instance_order {
        spec.instance_order = order;
    }
    if let Some(syntax) = args.transfer_syntax {
        spec.transfer_syntax = syntax;
    }
    if args.print_spec {
        println!("{}", serde_json::to_string_pretty(&spec)?);
        return Ok(ExitCode::SUCCESS);
    }
    spec.validate()?;

    let out = args.out.as_ref().expect("clap requires --out without --print-spec");
    if out.is_file() {
        anyhow::bail!("--out {} is a file; give a folder", out.display());
    }
    let truth = write_series(&spec, out)?;
    println!(
        "wrote {} files to {}: {}, {} slices of {}x{}, lungs {:.0} mL (right) and {:.0} mL (left), infected {:.2}%",
        truth.files,
        out.display(),
        serde_json::to_value(truth.label)?.as_str().unwrap_or("unknown"),
        truth.slices,
        truth.rows,
        truth.columns,
        truth.lung_volume_ml.right,
        truth.lung_volume_ml.left,
        truth.infected_percent,
    );
    Ok(ExitCode::SUCCESS)
}
