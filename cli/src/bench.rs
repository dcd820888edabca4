//! `lungstream bench`: speed of a stage against a reference implementation, both measured
//! in the same run on the same files.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::builder::TypedValueParser;
use clap::{Args, Subcommand};
use lungstream_dicom::{read_volume, ReaderConfig};
use lungstream_infer::model::DEFAULT_SEED;
use lungstream_infer::{batch_tensors, run_batch, BatchOutput, Model, NetworkConfig, DEFAULT_BATCH, FINE_GRID};
use lungstream_preprocess::patches::COARSE_GRID;
use lungstream_preprocess::Lobe;
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
    /// Both lobe networks on a batch of lobes: tch against the same graph in PyTorch eager.
    /// Needs `--python .cache/torch-full/bin/python` (made by `scripts/setup.sh
    /// --torch-full`): the torch of .cache/venv cannot be imported by Python.
    Infer(InferBenchArgs),
    /// The distributed pipeline (every service in this process, through the real broker,
    /// object store and PostgreSQL of `scripts/services.sh up`) against embedded analyze
    /// on the same phantom series, and with two preprocess workers against one.
    Pipeline(crate::bench_pipeline::PipelineBenchArgs),
}

#[derive(Args)]
struct InferBenchArgs {
    /// Folder of one CT series. It is read and preprocessed, and its first lobes form the
    /// batch, repeated in order when the series has fewer.
    series: PathBuf,
    /// Network widths: full (VGG-16's) or narrow (every width divided by eight).
    #[arg(long, default_value = "full")]
    config: String,
    /// Lobes per forward pass.
    #[arg(long, default_value_t = DEFAULT_BATCH, value_parser = clap::value_parser!(u32).range(1..=512).map(|v| v as usize))]
    batch: usize,
    /// Intra-op threads of both implementations (default: one per core).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024).map(|v| v as i32))]
    threads: Option<i32>,
    /// Timed repetitions of each implementation (after one untimed warm-up).
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Python interpreter that can import torch, numpy and safetensors. The CPU-only
    /// torch of .cache/venv cannot be imported by Python; pass
    /// .cache/torch-full/bin/python, which `scripts/setup.sh --torch-full` creates.
    #[arg(long, env = "LUNGSTREAM_PYTHON", default_value = "python3")]
    python: PathBuf,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
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
const INFER_REFERENCE: &str = include_str!("../../bench/reference/infer_torch.py");

pub fn run(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    match &args.target {
        BenchTarget::Reader(reader) => bench_reader(reader),
        BenchTarget::Preprocess(preprocess) => bench_preprocess(preprocess),
        BenchTarget::Infer(infer) => bench_infer(infer),
        BenchTarget::Pipeline(pipeline) => crate::bench_pipeline::run(pipeline),
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

/// Largest difference between tch's and PyTorch's outputs (probabilities, attention and
/// infection maps, all in 0..1) that still counts as the same computation. Both run the
/// same libtorch, so the outputs are usually bit-identical, but a kernel that sums in
/// another order (another memory layout or thread split) moves them by about 1e-6.
const INFER_TOLERANCE: f32 = 1e-4;

/// The outputs of [`run_batch`], by the names the PyTorch reference writes them under.
const INFER_OUTPUTS: [&str; 5] = ["p_diseased", "p_covid", "attention", "coarse", "fine"];

fn bench_infer(args: &InferBenchArgs) -> anyhow::Result<ExitCode> {
    check_arguments(&args.series, args.repeat, args.json.as_deref())?;
    let config = NetworkConfig::preset(&args.config).with_context(|| format!("unknown configuration {:?}: expected full or narrow", args.config))?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = args.threads.unwrap_or(cores as i32);

    let (volume, _) = read_volume(std::slice::from_ref(&args.series), &ReaderConfig::default())?;
    let series = lungstream_preprocess::preprocess(&volume, &lungstream_preprocess::PreprocessConfig::default())?;
    if series.lobes.is_empty() {
        bail!("{} has no lobes after preprocessing (no lungs found); pass a chest CT series", args.series.display());
    }
    let lobes: Vec<&Lobe> = series.lobes.iter().cycle().take(args.batch).collect();
    let (input, distance) = batch_tensors(&lobes);
    let mut batch_seconds = Vec::with_capacity(args.repeat);
    for _ in 0..args.repeat {
        let start = Instant::now();
        let tensors = batch_tensors(&lobes);
        batch_seconds.push(start.elapsed().as_secs_f64());
        std::hint::black_box(&tensors);
    }
    let model = Model::initialised(config, DEFAULT_SEED)?;

    let folder = std::env::temp_dir().join(format!("lungstream-bench-infer-{}", std::process::id()));
    std::fs::create_dir_all(&folder)?;
    let timed = time_infer(args, &folder, &model, &input, &distance, threads);
    let _ = std::fs::remove_dir_all(&folder);
    let timings = timed?;

    let differences = compare_outputs(&timings.outputs, &timings.reference_outputs)?;
    let torch_version = timings.report["versions"]["torch"].as_str().unwrap_or("unknown version");
    let (seconds, reference) = (&timings.seconds, &timings.reference_seconds);
    let (median_here, median_reference) = (median(seconds), median(reference));
    let batch = args.batch as f64;
    println!(
        "Network benchmark: both networks ({} configuration) on {} lobes of {}, {threads} threads, median of {} runs taken in turns",
        config.name(),
        args.batch,
        args.series.display(),
        args.repeat
    );
    let listed: Vec<String> = INFER_OUTPUTS.iter().zip(&differences).map(|(name, d)| format!("{name} {d:.1e}")).collect();
    println!("max |tch - PyTorch|: {} (tolerance {INFER_TOLERANCE:.0e})", listed.join(", "));
    println!("building the batch tensors (not timed below): {:.1} ms", 1000.0 * median(&batch_seconds));
    println!();
    println!("| implementation | threads | batch | median s | min s | max s | lobes/s | throughput vs PyTorch |");
    println!("|---|---|---|---|---|---|---|---|");
    for (name, values, value) in [
        (format!("PyTorch eager (torch {torch_version})"), reference, median_reference),
        ("lungstream-infer (tch)".to_string(), seconds, median_here),
    ] {
        let (min, max) = (values.iter().copied().fold(f64::INFINITY, f64::min), values.iter().copied().fold(0.0, f64::max));
        println!("| {name} | {threads} | {} | {value:.3} | {min:.3} | {max:.3} | {:.2} | {:.2}x |", args.batch, batch / value, median_reference / value);
    }
    if let Some(path) = &args.json {
        let report = json!({
            "series": args.series,
            "config": config.name(),
            "batch": args.batch,
            "threads": threads,
            "repeat": args.repeat,
            "cores": cores,
            "torch": torch_version,
            "max_abs_difference": INFER_OUTPUTS.iter().zip(&differences).map(|(name, d)| (name.to_string(), json!(d))).collect::<serde_json::Map<_, _>>(),
            "batch_tensor_seconds": batch_seconds,
            "reference_seconds": reference,
            "tch_seconds": seconds,
            "reference_lobes_per_second": batch / median_reference,
            "tch_lobes_per_second": batch / median_here,
            "throughput_ratio": median_reference / median_here,
        });
        std::fs::write(path, serde_json::to_string_pretty(&report)?).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Timings and warm-up outputs of both implementations, from [`time_infer`]. Timings
/// are in seconds.
struct InferTimings {
    seconds: Vec<f64>,
    reference_seconds: Vec<f64>,
    outputs: BatchOutput,
    /// Shape and values of each reference output, in [`INFER_OUTPUTS`] order.
    reference_outputs: Vec<(Vec<usize>, Vec<f32>)>,
    /// The reference's first line: batch, threads and versions.
    report: serde_json::Value,
}

/// Starts the PyTorch reference on the model's weights and the batch, passed as files in
/// `folder`, warms both implementations up, and then times them in turns.
fn time_infer(args: &InferBenchArgs, folder: &Path, model: &Model, input: &tch::Tensor, distance: &tch::Tensor, threads: i32) -> anyhow::Result<InferTimings> {
    let model_path = folder.join("model.safetensors");
    model.save(&model_path)?;
    for (name, tensor) in [("input.npy", input), ("distance.npy", distance)] {
        let shape: Vec<usize> = tensor.size().iter().map(|&d| d as usize).collect();
        let values = Vec::<f32>::try_from(&tensor.flatten(0, -1))?;
        write_npy(&folder.join(name), "<f4", &shape, &values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>())?;
    }
    let script = folder.join("infer_torch.py");
    std::fs::write(&script, INFER_REFERENCE)?;
    let outputs_folder = folder.join("outputs");
    let mut command = Command::new(&args.python);
    command
        .arg(&script)
        .arg(&model_path)
        .arg(folder.join("input.npy"))
        .arg(folder.join("distance.npy"))
        .arg("--out")
        .arg(&outputs_folder)
        .arg("--threads")
        .arg(threads.to_string())
        .arg("--serve");
    let (mut reference, report) = ServedReference::start(command, &folder.join("reference-stderr.txt"))?;
    let reference_outputs = INFER_OUTPUTS.iter().map(|name| read_npy_f32(&outputs_folder.join(format!("{name}.npy")))).collect::<anyhow::Result<Vec<_>>>()?;

    tch::set_num_threads(threads);
    let outputs = run_batch(model, input, distance)?;
    let time_here = || -> anyhow::Result<f64> {
        let start = Instant::now();
        let timed = run_batch(model, input, distance)?;
        let elapsed = start.elapsed().as_secs_f64();
        std::hint::black_box(&timed);
        Ok(elapsed)
    };
    let mut seconds = Vec::with_capacity(args.repeat);
    let mut reference_seconds = Vec::with_capacity(args.repeat);
    for round in 0..args.repeat {
        // Taking turns, and swapping who goes first, spreads a change in machine load
        // over both implementations.
        if round % 2 == 0 {
            reference_seconds.push(reference.time_once()?);
            seconds.push(time_here()?);
        } else {
            seconds.push(time_here()?);
            reference_seconds.push(reference.time_once()?);
        }
    }
    reference.finish()?;
    Ok(InferTimings { seconds, reference_seconds, outputs, reference_outputs, report })
}

/// A reference script started with `--serve`: it times one repetition for each line it
/// reads and prints the result as one JSON line.
struct ServedReference {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    stderr_path: PathBuf,
}

impl ServedReference {
    /// Starts `command` with its stderr in `stderr_path` and waits for its first line (after
    /// its warm-up), which it returns.
    fn start(mut command: Command, stderr_path: &Path) -> anyhow::Result<(ServedReference, serde_json::Value)> {
        let stderr = std::fs::File::create(stderr_path).with_context(|| format!("cannot write {}", stderr_path.display()))?;
        let program = command.get_program().to_string_lossy().into_owned();
        let mut child = command
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("cannot run {program}"))?;
        let stdin = child.stdin.take();
        let stdout = std::io::BufReader::new(child.stdout.take().context("no stdout pipe to the reference")?);
        let mut reference = ServedReference { child, stdin, stdout, stderr_path: stderr_path.to_path_buf() };
        let report = reference.read_line()?;
        Ok((reference, report))
    }

    /// Asks for one timed repetition and returns its wall time in seconds.
    fn time_once(&mut self) -> anyhow::Result<f64> {
        use std::io::Write;
        let stdin = self.stdin.as_mut().context("the reference's stdin is closed")?;
        stdin.write_all(b"run\n").and_then(|()| stdin.flush()).context("cannot send a request to the reference")?;
        let line = self.read_line()?;
        line["seconds"].as_f64().with_context(|| format!("the reference printed {line} instead of its seconds"))
    }

    /// Closes the reference's stdin and checks that it exits successfully.
    fn finish(mut self) -> anyhow::Result<()> {
        drop(self.stdin.take());
        let status = self.child.wait().context("cannot wait for the reference")?;
        if !status.success() {
            return Err(self.failure(status));
        }
        Ok(())
    }

    /// Reads one JSON line; at the end of the output, the reference's exit becomes the error.
    fn read_line(&mut self) -> anyhow::Result<serde_json::Value> {
        use std::io::BufRead;
        let mut line = String::new();
        let bytes = self.stdout.read_line(&mut line).context("cannot read the reference's output")?;
        if bytes == 0 {
            drop(self.stdin.take());
            let status = self.child.wait().context("cannot wait for the reference")?;
            return Err(self.failure(status));
        }
        serde_json::from_str(&line).with_context(|| format!("the reference printed {:?}, not a JSON line", line.trim()))
    }

    /// Describes a reference that stopped: its exit status and the last line of its stderr,
    /// with the setup hint when it could not import a module.
    fn failure(&self, status: std::process::ExitStatus) -> anyhow::Error {
        let stderr = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let hint = if stderr.contains("ModuleNotFoundError") || stderr.contains("ImportError") {
            "; run scripts/setup.sh --torch-full and pass --python .cache/torch-full/bin/python (Python cannot import the CPU-only torch of .cache/venv)"
        } else {
            ""
        };
        anyhow::anyhow!("the reference failed ({status}): {}{hint}", stderr.trim().lines().last().unwrap_or("no output"))
    }
}

impl Drop for ServedReference {
    /// Stops the reference when the benchmark fails before `finish`.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Returns the maximum absolute difference of each output in [`INFER_OUTPUTS`] order, or
/// fails when the shapes differ or a difference exceeds [`INFER_TOLERANCE`].
fn compare_outputs(here: &BatchOutput, reference: &[(Vec<usize>, Vec<f32>)]) -> anyhow::Result<Vec<f32>> {
    let batch = here.p_diseased.len();
    let expected_shapes: [Vec<usize>; 5] = [vec![batch], vec![batch], vec![batch, COARSE_GRID, COARSE_GRID], vec![batch, COARSE_GRID, COARSE_GRID], vec![batch, FINE_GRID, FINE_GRID]];
    let ours = [&here.p_diseased, &here.p_covid, &here.attention, &here.coarse, &here.fine];
    let mut differences = Vec::with_capacity(INFER_OUTPUTS.len());
    for (((name, expected), values), (shape, reference_values)) in INFER_OUTPUTS.iter().zip(&expected_shapes).zip(ours).zip(reference) {
        if shape != expected || values.len() != reference_values.len() {
            bail!("the PyTorch reference wrote {name} with shape {shape:?}, expected {expected:?}");
        }
        // A NaN on either side counts as an infinite difference.
        let difference = values.iter().zip(reference_values).map(|(a, b)| (a - b).abs()).fold(0.0f32, |max, d| if d.is_nan() { f32::INFINITY } else { max.max(d) });
        differences.push(difference);
    }
    if differences.iter().any(|&d| d > INFER_TOLERANCE) {
        let listed: Vec<String> = INFER_OUTPUTS.iter().zip(&differences).map(|(name, d)| format!("{name} {d:.2e}")).collect();
        bail!("the implementations disagree: max |tch - PyTorch| is {}, above the tolerance of {INFER_TOLERANCE:.0e}; the timings compare different computations", listed.join(", "));
    }
    Ok(differences)
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

/// Reads a NumPy .npy file of little-endian float32 in C order, as `np.save` writes it.
/// Returns the shape and the values.
fn read_npy_f32(path: &Path) -> anyhow::Result<(Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let invalid = |reason: &str| anyhow::anyhow!("{} is not a float32 .npy file: {reason}", path.display());
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(invalid("no .npy magic"));
    }
    // Versions 2 and 3 store the header length in four bytes instead of two.
    let (header_start, header_len) = match bytes[6] {
        1 => (10, usize::from(u16::from_le_bytes([bytes[8], bytes[9]]))),
        2 | 3 if bytes.len() >= 12 => (12, u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize),
        version => return Err(invalid(&format!("unsupported format version {version}"))),
    };
    let data_start = header_start + header_len;
    let header = bytes.get(header_start..data_start).ok_or_else(|| invalid("truncated header"))?;
    let header = std::str::from_utf8(header).map_err(|_| invalid("header is not text"))?;
    if !header.contains("'descr': '<f4'") || !header.contains("'fortran_order': False") {
        return Err(invalid(&format!("header {:?}, expected little-endian float32 in C order", header.trim())));
    }
    let dims = header.split("'shape': (").nth(1).and_then(|rest| rest.split(')').next()).ok_or_else(|| invalid("no shape in the header"))?;
    let shape = dims
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.parse::<usize>().map_err(|_| invalid(&format!("invalid dimension {d:?}"))))
        .collect::<anyhow::Result<Vec<usize>>>()?;
    let data = &bytes[data_start..];
    if data.len() != 4 * shape.iter().product::<usize>() {
        return Err(invalid(&format!("{} data bytes for shape {shape:?}", data.len())));
    }
    Ok((shape, data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()))
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
