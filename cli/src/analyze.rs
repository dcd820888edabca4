//! `lungstream analyze`: reader → preprocess → infer → report in one process, through the
//! same library functions the services call, with a local folder as the output.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::builder::TypedValueParser;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use lungstream_dicom::{Inventory, ReaderConfig};
use lungstream_infer::{infer_series, DeviceChoice, InferOptions, Model, NetworkConfig, DEFAULT_BATCH};
use lungstream_preprocess::{preprocess, PreprocessConfig};
use lungstream_report::{build_report, write_report, ReportInputs, DEFAULT_WORST_SLICES};
use lungstream_schemas::report::{ModelSummary, Report, Timings};

#[derive(Args)]
pub struct AnalyzeArgs {
    /// DICOM files or folders (searched recursively); the best CT stack found is analysed.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Folder for report.json, report.html and the overlay images (created if missing).
    #[arg(long, default_value = "lungstream-report")]
    out: PathBuf,
    /// Model file (safetensors with a model card). Without it (and without --config) the
    /// bundled demo weights are used: trained on synthetic phantoms, research only.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Use deterministic untrained weights of these widths instead: narrow or full.
    /// Their outputs mean nothing, and every output warns about it.
    #[arg(long, conflicts_with = "model")]
    config: Option<String>,
    /// Device of the networks: auto (CUDA when available), cpu or cuda.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// Lobes per forward pass.
    #[arg(long, default_value_t = DEFAULT_BATCH, value_parser = clap::value_parser!(u32).range(1..=512).map(|v| v as usize))]
    batch: usize,
    /// Threads of the networks on the CPU (default: libtorch's choice, one per core).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024).map(|v| v as i32))]
    threads: Option<i32>,
    /// Number of worst slices drawn as overlays.
    #[arg(long, default_value_t = DEFAULT_WORST_SLICES)]
    worst_slices: usize,
    /// Secret of the pseudonymous patient key (HMAC-SHA256 of Patient ID).
    #[arg(long, env = "LUNGSTREAM_PATIENT_KEY_SECRET", hide_env_values = true, default_value = "")]
    patient_key_secret: String,
    /// Print report.json to stdout instead of the summary.
    #[arg(long)]
    json: bool,
}

/// Exit status when the input cannot be analysed (no usable CT stack, no lungs).
const NOT_ANALYSABLE: u8 = 3;

pub fn run(args: &AnalyzeArgs) -> anyhow::Result<ExitCode> {
    crate::check_inputs(&args.paths)?;
    let started = Instant::now();
    let mut timings = Timings::default();
    // The output folder is checked first: a bad --out should fail before minutes of work.
    lungstream_report::prepare_output(&args.out)?;

    // Model first: a bad --model should fail before minutes of reading.
    let mut model = match &args.model {
        Some(path) => Model::load(path).with_context(|| format!("cannot use model {}", path.display()))?,
        None => match args.config.as_deref() {
            None => Model::demo()?,
            Some(name) => {
                let config = NetworkConfig::preset(name).with_context(|| format!("unknown configuration {name:?}: expected narrow or full"))?;
                Model::initialised(config, lungstream_infer::model::DEFAULT_SEED)?
            }
        },
    };
    let (device, why) = args.device.resolve()?;
    model.to_device(device);
    if let Some(threads) = args.threads {
        tch::set_num_threads(threads);
    }
    let card = model.card().clone();
    tracing::info!(device = ?device, reason = why, threads = tch::get_num_threads(), model = %card.id, version = %card.version, trained = card.trained, "Networks placed.");
    if !card.trained {
        tracing::warn!(model = %card.id, "The model is untrained: its probabilities and infected areas mean nothing.");
    }

    let clock = Instant::now();
    let spinner = stage_spinner("reading DICOM");
    let reader = ReaderConfig::with_secret(args.patient_key_secret.as_bytes());
    let mut inventory = Inventory::scan(&args.paths, &reader);
    let volume = match inventory.load_selected(&reader) {
        Ok(volume) => volume,
        Err(error) => {
            spinner.finish_and_clear();
            eprintln!("error: nothing to analyse: {error}; reason code {}", error.reason());
            eprintln!("hint: `lungstream inspect PATH` lists every file that was skipped, with its reason code");
            return Ok(ExitCode::from(NOT_ANALYSABLE));
        }
    };
    spinner.finish_and_clear();
    timings.read = millis(clock);
    tracing::info!(slices = volume.dims.slices, rows = volume.dims.rows, columns = volume.dims.columns, ms = timings.read, "Series read.");

    let clock = Instant::now();
    let spinner = stage_spinner("preprocessing");
    let series = match preprocess(&volume, &PreprocessConfig::default()) {
        Ok(series) => series,
        Err(error) => {
            spinner.finish_and_clear();
            eprintln!("error: cannot preprocess the series: {error}; reason code {}", error.reason());
            return Ok(ExitCode::from(NOT_ANALYSABLE));
        }
    };
    spinner.finish_and_clear();
    timings.preprocess = millis(clock);
    tracing::info!(lobes = series.lobes.len(), ms = timings.preprocess, "Series preprocessed.");

    let clock = Instant::now();
    let bar = ProgressBar::new(series.lobes.len() as u64).with_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} lobes, {eta} left").expect("a valid template").progress_chars("=> "),
    );
    bar.set_message("networks");
    let total = series.lobes.len();
    let mut logged_quarter = 0;
    let inference = infer_series(&model, &series, InferOptions { batch: args.batch }, &mut |done| {
        bar.set_position(done as u64);
        // Without a terminal the bar is hidden, so each finished quarter is logged.
        let quarter = 4 * done / total.max(1);
        if quarter > logged_quarter && bar.is_hidden() {
            logged_quarter = quarter;
            tracing::info!(done, total, "Networks running.");
        }
    })?;
    bar.finish_and_clear();
    timings.infer = millis(clock);
    tracing::info!(lobes = series.lobes.len(), ms = timings.infer, "Networks done.");

    let clock = Instant::now();
    let inputs = ReportInputs {
        slices: &volume,
        patient_key: volume.meta.patient_key.clone(),
        facts: &series.facts,
        inference: &inference,
        model: ModelSummary {
            id: card.id.clone(),
            version: card.version.clone(),
            config: card.config.name().to_string(),
            trained: card.trained,
            trained_on: card.trained_on.clone(),
            research_only: card.research_only,
            device: device_name(device),
        },
        timings,
        worst_slices: args.worst_slices,
    };
    let mut rendered = build_report(&inputs);
    if args.patient_key_secret.is_empty() {
        rendered.report.warnings.push("No patient key secret was set (LUNGSTREAM_PATIENT_KEY_SECRET): the patient key is a plain hash, not a secret pseudonym.".into());
    }
    rendered.report.timings_ms.report = millis(clock);
    rendered.report.timings_ms.total = millis(started);
    write_report(&args.out, &rendered)?;

    if args.json {
        println!("{}", serde_json::to_string_pretty(&rendered.report)?);
    } else {
        print_summary(&rendered.report, &args.out);
    }
    Ok(ExitCode::SUCCESS)
}

fn stage_spinner(message: &'static str) -> ProgressBar {
    let spinner = ProgressBar::new_spinner().with_message(message);
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    spinner
}

fn millis(since: Instant) -> u64 {
    since.elapsed().as_millis() as u64
}

fn device_name(device: tch::Device) -> String {
    match device {
        tch::Device::Cuda(n) => format!("cuda:{n}"),
        _ => "cpu".to_string(),
    }
}

fn print_summary(r: &Report, out: &std::path::Path) {
    let untrained = if !r.model.trained {
        "  [UNTRAINED MODEL: meaningless]"
    } else if r.model.research_only {
        "  [RESEARCH ONLY: not for clinical use]"
    } else {
        ""
    };
    println!(
        "series: {} slices ({} with lungs), {:.2} mm apart; lungs {:.0} mL",
        r.series.slices, r.series.slices_with_lungs, r.series.spacing_mm[0], r.series.lung_volume_ml.total
    );
    println!("decision: {}{untrained}", r.decision.describe());
    println!("P(diseased) = {:.3}, P(COVID-19 | diseased) = {:.3}{untrained}", r.probabilities.diseased, r.probabilities.covid19);
    println!(
        "infected (model): {:.2}% of the lung, {:.1} mL (right {:.2}%, left {:.2}%){untrained}",
        r.infection.percent.total, r.infection.volume_ml.total, r.infection.percent.right, r.infection.percent.left
    );
    println!(
        "infected (model-free, -700..100 HU): {:.2}% (ground glass {:.2}%, consolidation {:.2}%)",
        r.model_free.infected_percent.total, r.model_free.ground_glass_percent.total, r.model_free.consolidation_percent.total
    );
    let worst: Vec<String> = r.worst_slices.iter().map(|s| format!("{} at {:.1} mm ({:.0} mm²)", s.slice, s.position_mm, s.infected_mm2)).collect();
    if !worst.is_empty() {
        // Indices count from the feet, so they differ from Instance Numbers.
        println!("worst slices (index from the feet, from 0): {}", worst.join(", "));
    }
    for warning in &r.warnings {
        println!("warning: {warning}");
    }
    println!(
        "report: {} ({} overlay image{}); {:.1} s in all",
        out.join("report.html").display(),
        r.worst_slices.len(),
        if r.worst_slices.len() == 1 { "" } else { "s" },
        r.timings_ms.total as f64 / 1000.0
    );
}
