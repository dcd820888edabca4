//! `lungstream bench`: speed of a stage against a reference implementation, both measured
//! in the same run on the same files.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use lungstream_dicom::{read_volume, ReaderConfig};
use lungstream_schemas::ReasonCode;
use serde_json::json;

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    target: BenchTarget,
}

#[derive(Subcommand)]
enum BenchTarget {
    /// DICOM folder to HU volume: this reader against pydicom + numpy.
    Reader(ReaderBenchArgs),
}

#[derive(Args)]
struct ReaderBenchArgs {
    /// Folder of one CT series.
    series: PathBuf,
    /// Timed repetitions of each implementation (after one untimed warm-up).
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Python interpreter with pydicom and numpy (scripts/setup.sh installs one in
    /// .cache/venv).
    #[arg(long, env = "LUNGSTREAM_PYTHON", default_value = "python3")]
    python: PathBuf,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// The reference implementation, run by the Python interpreter.
const PYDICOM_REFERENCE: &str = include_str!("../../bench/reference/load_pydicom.py");

pub fn run(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    match &args.target {
        BenchTarget::Reader(reader) => bench_reader(reader),
    }
}

fn bench_reader(args: &ReaderBenchArgs) -> anyhow::Result<ExitCode> {
    crate::check_inputs(std::slice::from_ref(&args.series))?;
    if args.repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    if let Some(path) = &args.json {
        std::fs::write(path, "").with_context(|| format!("cannot write {}", path.display()))?;
    }
    let config = ReaderConfig::default();
    let inputs = vec![args.series.clone()];
    // The reference keeps every CT image it finds, so the comparison is fair only on a
    // folder that holds one stack and nothing else the reader would skip as CT.
    let inventory = lungstream_dicom::Inventory::scan(&inputs, &config);
    let skipped_ct = inventory
        .skipped
        .iter()
        .filter(|s| !matches!(s.reason, ReasonCode::InvalidDicom | ReasonCode::NotCt | ReasonCode::NoPixelData))
        .count();
    if inventory.candidates.len() != 1 || skipped_ct > 0 {
        bail!(
            "bench reader needs a folder with exactly one CT series and no other CT images; {} has {} candidate stack(s) and {} skipped CT image(s) (see lungstream inspect)",
            args.series.display(),
            inventory.candidates.len(),
            skipped_ct
        );
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    let time_reader = |threads: usize| -> anyhow::Result<(Vec<f64>, usize)> {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
        pool.install(|| {
            let (warm_up, _) = read_volume(&inputs, &config)?;
            let mut seconds = Vec::with_capacity(args.repeat);
            for _ in 0..args.repeat {
                let start = Instant::now();
                let (volume, _) = read_volume(&inputs, &config)?;
                seconds.push(start.elapsed().as_secs_f64());
                std::hint::black_box(&volume);
            }
            Ok((seconds, warm_up.dims.slices))
        })
    };
    let (single, slices) = time_reader(1)?;
    let (parallel, _) = time_reader(cores)?;
    let (reference, reference_slices) = run_reference(&args.python, &args.series, args.repeat)?;
    if reference_slices != slices {
        bail!("the pydicom reference loaded {reference_slices} slices, the reader {slices}: they did not do the same work");
    }

    let single_median = median(&single);
    let parallel_median = median(&parallel);
    let reference_median = median(&reference);
    println!("Reader benchmark: {} ({slices} slices), median of {} runs", args.series.display(), args.repeat);
    println!();
    println!("| implementation | threads | median s | slices/s | speed-up vs pydicom |");
    println!("|---|---|---|---|---|");
    for (name, threads, value) in [
        ("pydicom + numpy", 1, reference_median),
        ("lungstream-dicom", 1, single_median),
        ("lungstream-dicom", cores, parallel_median),
    ] {
        println!(
            "| {name} | {threads} | {value:.4} | {:.0} | {:.2}x |",
            slices as f64 / value,
            reference_median / value
        );
    }
    if let Some(path) = &args.json {
        let report = json!({
            "series": args.series,
            "slices": slices,
            "repeat": args.repeat,
            "cores": cores,
            "reference_seconds": reference,
            "single_thread_seconds": single,
            "parallel_seconds": parallel,
            "speedup_single_thread": reference_median / single_median,
            "speedup_parallel": reference_median / parallel_median,
        });
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs the pydicom reference and returns its timed repetitions in seconds and the number
/// of slices it loaded.
fn run_reference(python: &Path, series: &Path, repeat: usize) -> anyhow::Result<(Vec<f64>, usize)> {
    let script = std::env::temp_dir().join(format!("lungstream-load-pydicom-{}.py", std::process::id()));
    std::fs::write(&script, PYDICOM_REFERENCE)?;
    // One extra repetition is the warm-up, dropped below.
    let output = Command::new(python)
        .arg(&script)
        .arg(series)
        .arg("--repeat")
        .arg((repeat + 1).to_string())
        .output()
        .with_context(|| format!("cannot run {}; set --python to an interpreter with pydicom", python.display()));
    let _ = std::fs::remove_file(&script);
    let output = output?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let hint = if stderr.contains("ModuleNotFoundError") {
            "; run scripts/setup.sh and pass --python .cache/venv/bin/python"
        } else {
            ""
        };
        bail!(
            "the pydicom reference failed ({}): {}{hint}",
            output.status,
            stderr.trim().lines().last().unwrap_or("no output")
        );
    }
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).context("the pydicom reference printed no JSON")?;
    let seconds: Vec<f64> = report["seconds"]
        .as_array()
        .context("no \"seconds\" in the reference's output")?
        .iter()
        .filter_map(|v| v.as_f64())
        .skip(1)
        .collect();
    let slices = report["shape"][0].as_u64().context("no \"shape\" in the reference's output")? as usize;
    Ok((seconds, slices))
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        0.5 * (sorted[mid - 1] + sorted[mid])
    }
}
