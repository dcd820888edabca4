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
    /// HU volume to lobe crops: this preprocessing against numpy, scipy and scikit-learn.
    Preprocess(PreprocessBenchArgs),
}

#[derive(Args)]
struct PreprocessBenchArgs {
    /// Folder of one CT series.
    series: PathBuf,
    /// Timed repetitions of each implementation (after one untimed warm-up).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Python interpreter with numpy, scipy and scikit-learn (scripts/setup.sh installs
    /// one in .cache/venv).
    #[arg(long, env = "LUNGSTREAM_PYTHON", default_value = "python3")]
    python: PathBuf,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
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

/// The reference implementations, run by the Python interpreter.
const PYDICOM_REFERENCE: &str = include_str!("../../bench/reference/load_pydicom.py");
const PREPROCESS_REFERENCE: &str = include_str!("../../bench/reference/preprocess_numpy.py");

pub fn run(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    match &args.target {
        BenchTarget::Reader(reader) => bench_reader(reader),
        BenchTarget::Preprocess(preprocess) => bench_preprocess(preprocess),
    }
}

fn bench_preprocess(args: &PreprocessBenchArgs) -> anyhow::Result<ExitCode> {
    check_arguments(&args.series, args.repeat, args.json.as_deref())?;
    let (volume, _) = read_volume(std::slice::from_ref(&args.series), &ReaderConfig::default())?;
    let slices = volume.dims.slices;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let config = lungstream_preprocess::PreprocessConfig::default();

    let time = |threads: usize| -> anyhow::Result<(Vec<f64>, lungstream_preprocess::SeriesFacts, usize)> {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
        pool.install(|| {
            let warm_up = lungstream_preprocess::preprocess(&volume, &config)?;
            let mut seconds = Vec::with_capacity(args.repeat);
            for _ in 0..args.repeat {
                let start = Instant::now();
                let series = lungstream_preprocess::preprocess(&volume, &config)?;
                seconds.push(start.elapsed().as_secs_f64());
                std::hint::black_box(&series);
            }
            Ok((seconds, warm_up.facts, warm_up.lobes.len()))
        })
    };
    let (single, facts, lobes) = time(1)?;
    let (parallel, _, _) = time(cores)?;

    // The reference reads the volume and padding as .npy files.
    let folder = std::env::temp_dir().join(format!("lungstream-bench-preprocess-{}", std::process::id()));
    std::fs::create_dir_all(&folder)?;
    let shape = [slices, volume.dims.rows, volume.dims.columns];
    write_npy(&folder.join("volume.npy"), "<i2", &shape, &volume.hu.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>())?;
    let mut padding = vec![false; volume.hu.len()];
    volume.padding.copy_range(0, &mut padding);
    write_npy(&folder.join("padding.npy"), "|b1", &shape, &padding.iter().map(|p| u8::from(*p)).collect::<Vec<_>>())?;
    let script = folder.join("preprocess_numpy.py");
    std::fs::write(&script, PREPROCESS_REFERENCE)?;
    let output = Command::new(&args.python)
        // scikit-learn's K-means would otherwise use every core through OpenMP.
        .env("OMP_NUM_THREADS", "1")
        .arg(&script)
        .arg(folder.join("volume.npy"))
        .arg(folder.join("padding.npy"))
        .arg("--spacing")
        .arg(volume.spacing_mm[1].to_string())
        .arg(volume.spacing_mm[2].to_string())
        .arg("--repeat")
        .arg((args.repeat + 1).to_string())
        .output()
        .with_context(|| format!("cannot run {}", args.python.display()));
    let _ = std::fs::remove_dir_all(&folder);
    let report = reference_report(output?)?;
    let reference = timed_repetitions(&report)?;
    let reference_lobes = report["lobes"].as_u64().unwrap_or(0) as usize;
    let reference_right = report["lung_pixels"]["right"].as_u64().unwrap_or(0);
    let reference_left = report["lung_pixels"]["left"].as_u64().unwrap_or(0);
    let reference_lung = reference_right + reference_left;
    // The ratio means something only if both did the same work: the same lobes and, per
    // side, lung pixels within 0.1%.
    let close = |a: u64, b: u64| a.abs_diff(b) * 1000 <= a.max(b);
    if lobes != reference_lobes
        || !close(facts.lung_voxels.right, reference_right)
        || !close(facts.lung_voxels.left, reference_left)
    {
        bail!(
            "the implementations disagree: {lobes} lobes and {}/{} lung pixels (right/left) here, {reference_lobes} lobes and {reference_right}/{reference_left} in the reference",
            facts.lung_voxels.right,
            facts.lung_voxels.left
        );
    }

    let (single_median, parallel_median, reference_median) = (median(&single), median(&parallel), median(&reference));
    println!("Preprocessing benchmark: {} ({slices} slices of {}x{}), median of {} runs", args.series.display(), volume.dims.rows, volume.dims.columns, args.repeat);
    println!("lobes: {lobes} here, {reference_lobes} in the reference; lung pixels: {} here, {reference_lung} in the reference", facts.lung_voxels.total());
    println!();
    println!("| implementation | threads | median s | slices/s | slices/s per core | speed-up vs reference |");
    println!("|---|---|---|---|---|---|");
    for (name, threads, value) in [
        ("numpy + scipy + scikit-learn", 1, reference_median),
        ("lungstream-preprocess", 1, single_median),
        ("lungstream-preprocess", cores, parallel_median),
    ] {
        let rate = slices as f64 / value;
        println!("| {name} | {threads} | {value:.3} | {rate:.1} | {:.1} | {:.1}x |", rate / threads as f64, reference_median / value);
    }
    if let Some(path) = &args.json {
        let report = json!({
            "series": args.series,
            "slices": slices,
            "repeat": args.repeat,
            "cores": cores,
            "lobes": lobes,
            "reference_lobes": reference_lobes,
            "lung_pixels": facts.lung_voxels.total(),
            "reference_lung_pixels": reference_lung,
            "reference_seconds": reference,
            "single_thread_seconds": single,
            "parallel_seconds": parallel,
            "speedup_single_thread": reference_median / single_median,
            "speedup_parallel": reference_median / parallel_median,
        });
        std::fs::write(path, serde_json::to_string_pretty(&report)?).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes a NumPy .npy file (format 1.0) of C-ordered data.
fn write_npy(path: &Path, descr: &str, shape: &[usize], data: &[u8]) -> anyhow::Result<()> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({},), }}", dims.join(", "));
    // Magic (6) + version (2) + length (2) + header + newline, padded to 64 bytes.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = Vec::with_capacity(10 + header.len() + data.len());
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// Returns the timed repetitions of a reference's report, in seconds, without the first one (the
/// warm-up).
fn timed_repetitions(report: &serde_json::Value) -> anyhow::Result<Vec<f64>> {
    let seconds = report["seconds"].as_array().context("no \"seconds\" in the reference's output")?;
    Ok(seconds.iter().filter_map(|v| v.as_f64()).skip(1).collect())
}

/// Parses a reference script's JSON output, or turns its failure into an error.
fn reference_report(output: std::process::Output) -> anyhow::Result<serde_json::Value> {
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let hint = if stderr.contains("ModuleNotFoundError") {
            "; run scripts/setup.sh and pass --python .cache/venv/bin/python"
        } else {
            ""
        };
        bail!(
            "the reference failed ({}): {}{hint}",
            output.status,
            stderr.trim().lines().last().unwrap_or("no output")
        );
    }
    serde_json::from_slice(&output.stdout).context("the reference printed no JSON")
}

/// Checks, before any timing, that the series exists, `repeat` is positive and the JSON
/// output can be written.
fn check_arguments(series: &Path, repeat: usize, json: Option<&Path>) -> anyhow::Result<()> {
    crate::check_inputs(&[series.to_path_buf()])?;
    if repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    if let Some(path) = json {
        std::fs::write(path, "").with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn bench_reader(args: &ReaderBenchArgs) -> anyhow::Result<ExitCode> {
    check_arguments(&args.series, args.repeat, args.json.as_deref())?;
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
    let report = reference_report(output?)?;
    let seconds = timed_repetitions(&report)?;
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
