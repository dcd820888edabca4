//! `lungstream train` and `lungstream evaluate`: weakly supervised training from a
//! manifest of labelled scans, and the evaluation of a model on a manifest.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use lungstream_infer::{DeviceChoice, Model, NetworkConfig, DEFAULT_BATCH};
use lungstream_train::manifest::Manifest;
use lungstream_train::trainer::{self, CardText, EpochRecord, LossValues, Progress, TrainOptions};

#[derive(Args)]
pub struct TrainArgs {
    /// Manifest CSV: series,label,centre,patient_id[,infected_percent].
    #[arg(long)]
    manifest: PathBuf,
    /// Run folder: split manifests, checkpoints, metrics.jsonl, loss.png, model.safetensors.
    #[arg(long)]
    out: PathBuf,
    /// Network widths: narrow or full.
    #[arg(long, default_value = "narrow")]
    config: String,
    /// Stage 1 epochs (the paper trains 500).
    #[arg(long, default_value_t = 20)]
    epochs: usize,
    /// Stage 2 epochs (fine decoder only).
    #[arg(long, default_value_t = 5)]
    fine_epochs: usize,
    /// Stage 1 learning rate (Adam); the paper's is 1e-4.
    #[arg(long, default_value_t = 1e-4)]
    learning_rate: f64,
    /// Stage 1 learning rate at the last epoch, reached along half a cosine
    /// [default: constant --learning-rate].
    #[arg(long)]
    final_learning_rate: Option<f64>,
    /// Stage 2 learning rate; the paper's is 1e-5.
    #[arg(long, default_value_t = 1e-5)]
    fine_learning_rate: f64,
    /// Scans per stage 1 batch.
    #[arg(long, default_value_t = 6)]
    scans_per_batch: usize,
    /// Evenly spaced slices each scan gives to a stage 1 batch.
    #[arg(long, default_value_t = 10)]
    slices_per_scan: usize,
    /// Centres kept out of training, validation and test (comma-separated).
    #[arg(long, value_delimiter = ',')]
    holdout_centres: Vec<String>,
    /// Seed of the initial weights, the split and the batch order.
    #[arg(long, default_value_t = lungstream_infer::model::DEFAULT_SEED)]
    seed: u64,
    /// Stage 1 epochs whose patch loss weighs --warmup-patch-weight instead of the
    /// paper's 0.01, to start the features without ImageNet weights.
    #[arg(long, default_value_t = 0)]
    warmup_epochs: usize,
    /// Weight of the patch loss during the warm-up epochs.
    #[arg(long, default_value_t = 1.0)]
    warmup_patch_weight: f64,
    /// After this stage 1 epoch, the COVID network's VGG and vicinity layers take the
    /// diseased network's values, in place of the paper's ImageNet start [default: never].
    #[arg(long)]
    share_features_after: Option<usize>,
    /// The COVID network also trains on each diseased scan's top 30% of lobes by
    /// P(diseased), the lobes that show disease [default: its own top lobes only].
    #[arg(long)]
    covid_on_diseased_top: bool,
    /// Uses at most this many training scans (for quick trials).
    #[arg(long)]
    max_train_scans: Option<usize>,
    /// Continue the run in --out from its last finished epoch.
    #[arg(long, conflicts_with = "overwrite")]
    resume: bool,
    /// Start again in an --out that already contains a run, replacing its files. Without
    /// it (or --resume), such a folder is an error.
    #[arg(long)]
    overwrite: bool,
    /// Model card id [default: ghavami2020-CONFIG-trained].
    #[arg(long)]
    model_id: Option<String>,
    /// Model card: what the weights were trained on.
    #[arg(long, default_value = "")]
    trained_on: String,
    /// Model card notes. The stage and epoch of the kept weights are appended to them.
    #[arg(long, default_value = "")]
    notes: String,
    /// Mark the weights as not for use on patients (every report made with them warns).
    #[arg(long)]
    research_only: bool,
    /// libtorch threads [default: libtorch's choice].
    #[arg(long)]
    threads: Option<i32>,
}

#[derive(Args)]
pub struct EvaluateArgs {
    /// Manifest CSV of the scans to evaluate, e.g. a run's test.csv or heldout.csv.
    #[arg(long)]
    manifest: PathBuf,
    /// Model file (.safetensors).
    #[arg(long)]
    model: PathBuf,
    /// Output folder: evaluation.json, evaluation.md, scans.csv, roc.png.
    #[arg(long)]
    out: PathBuf,
    /// auto, cpu or cuda.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// Lobes per forward pass.
    #[arg(long, default_value_t = DEFAULT_BATCH)]
    batch: usize,
    /// libtorch threads [default: libtorch's choice].
    #[arg(long)]
    threads: Option<i32>,
}

/// Shows a bar per stage; without a terminal, one log line per epoch.
struct Bars {
    bar: Mutex<Option<ProgressBar>>,
}

impl Bars {
    fn with_bar(&self, f: impl FnOnce(&ProgressBar)) {
        if let Some(bar) = self.bar.lock().expect("the bar lock is not poisoned").as_ref() {
            f(bar);
        }
    }
}

impl Progress for Bars {
    fn loading(&self, done: usize, total: usize) {
        let mut guard = self.bar.lock().expect("the bar lock is not poisoned");
        let bar = guard.get_or_insert_with(|| {
            let bar = ProgressBar::new(total as u64);
            bar.set_style(ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} scans, {eta} left").expect("a valid template").progress_chars("=> "));
            bar.set_message("reading and preprocessing");
            bar
        });
        bar.set_position(done as u64);
        if done == total {
            bar.finish_and_clear();
        }
    }

    fn stage(&self, stage: u8, epochs: usize, batches: usize) {
        tracing::info!(stage, epochs, batches, "Training stage starts.");
        let bar = ProgressBar::new((epochs * batches) as u64);
        bar.set_style(
            ProgressStyle::with_template("stage {msg} [{bar:30}] {pos}/{len} batches, {eta} left").expect("a valid template").progress_chars("=> "),
        );
        bar.set_message(format!("{stage}"));
        *self.bar.lock().expect("the bar lock is not poisoned") = Some(bar);
    }

    fn batch(&self, stage: u8, epoch: usize, batch: usize, loss: &LossValues) {
        self.with_bar(|bar| {
            bar.inc(1);
            bar.set_message(format!("{stage}, epoch {epoch}, batch {batch}, loss {:.4}", loss.total));
            // Without a terminal the bar is hidden: every 8th batch is logged instead.
            if bar.is_hidden() && batch % 8 == 0 {
                tracing::info!(stage, epoch, batch, loss = loss.total, "Training.");
            }
        });
    }

    fn epoch(&self, record: &EpochRecord) {
        let v = &record.validation;
        let line = format!(
            "stage {} epoch {}: loss {:.4}, validation accuracy {:.1}% (diseased {:.1}%, COVID {:.1}%), lobe spread {:.3}{}{}, {:.0} s",
            record.stage,
            record.epoch,
            record.train.total,
            100.0 * v.accuracy,
            100.0 * v.diseased_accuracy,
            100.0 * v.covid_accuracy,
            v.lobe_spread,
            v.infected_error.map_or(String::new(), |e| format!(", infected share error {e:.2} points (mean {:.2})", v.infected_mean_error.unwrap_or(e))),
            if record.best { ", best so far" } else { "" },
            record.seconds
        );
        self.with_bar(|bar| bar.println(&line));
        if self.bar.lock().expect("the bar lock is not poisoned").as_ref().is_none_or(ProgressBar::is_hidden) {
            tracing::info!("{line}");
        }
    }
}

/// Keeps libtorch's large buffers on glibc's heap. Each training step allocates and frees
/// activations of hundreds of MB. By default glibc maps each one fresh with mmap and
/// unmaps it on free, and the page faults of the fresh pages took two thirds of the CPU
/// time here. Training runs in its own process, so the process-wide setting is safe.
fn keep_large_buffers_on_the_heap() {
    // SAFETY: mallopt only changes allocator parameters; it is called before any thread
    // of this command allocates tensors.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

pub fn run_train(args: &TrainArgs) -> anyhow::Result<ExitCode> {
    keep_large_buffers_on_the_heap();
    let manifest = Manifest::read(&args.manifest)?;
    let config = NetworkConfig::preset(&args.config).with_context(|| format!("unknown configuration {:?}: expected narrow or full", args.config))?;
    if let Some(threads) = args.threads {
        tch::set_num_threads(threads);
    }
    let mut options = TrainOptions::paper(config, args.epochs, args.fine_epochs);
    options.seed = args.seed;
    options.learning_rate = args.learning_rate;
    options.final_learning_rate = args.final_learning_rate;
    options.fine_learning_rate = args.fine_learning_rate;
    options.scans_per_batch = args.scans_per_batch;
    options.slices_per_scan = args.slices_per_scan;
    options.holdout_centres = args.holdout_centres.clone();
    options.max_train_scans = args.max_train_scans;
    options.share_features_after = args.share_features_after;
    options.covid_on_diseased_top = args.covid_on_diseased_top;
    options.warmup_epochs = args.warmup_epochs;
    options.warmup_patch_weight = args.warmup_patch_weight;
    let card = CardText {
        id: args.model_id.clone().unwrap_or_default(),
        trained_on: if args.trained_on.is_empty() { format!("the scans of {}", args.manifest.display()) } else { args.trained_on.clone() },
        notes: args.notes.clone(),
        research_only: args.research_only,
    };
    let bars = Bars { bar: Mutex::new(None) };
    let start = match (args.resume, args.overwrite) {
        (true, _) => trainer::RunStart::Resume,
        (false, true) => trainer::RunStart::Overwrite,
        (false, false) => trainer::RunStart::New,
    };
    let summary = trainer::train(&manifest, &options, &card, &args.out, start, &bars)?;
    bars.with_bar(ProgressBar::finish_and_clear);
    println!(
        "trained on {} scans ({} validation, {} unreadable) in {:.0} s; best stage 1 epoch {}, validation accuracy {:.1}%",
        summary.train_scans,
        summary.validation_scans,
        summary.left_out,
        summary.seconds,
        summary.best_epoch.map_or("none".to_string(), |e| e.to_string()),
        100.0 * summary.best_validation
    );
    println!("model: {}", summary.model.display());
    println!("test split: {}, held-out centres: {}", args.out.join("test.csv").display(), args.out.join("heldout.csv").display());
    Ok(ExitCode::SUCCESS)
}

pub fn run_evaluate(args: &EvaluateArgs) -> anyhow::Result<ExitCode> {
    let manifest = Manifest::read(&args.manifest)?;
    anyhow::ensure!(!manifest.entries.is_empty(), "manifest {} lists no scans", args.manifest.display());
    let mut model = Model::load(&args.model).with_context(|| format!("cannot use model {}", args.model.display()))?;
    let (device, why) = args.device.resolve()?;
    model.to_device(device);
    if let Some(threads) = args.threads {
        tch::set_num_threads(threads);
    }
    tracing::info!(device = ?device, reason = why, model = %model.card().id, "Networks placed.");
    let bar = ProgressBar::new(manifest.entries.len() as u64);
    bar.set_style(ProgressStyle::with_template("evaluating [{bar:30}] {pos}/{len} scans, {eta} left").expect("a valid template").progress_chars("=> "));
    let (outcomes, unreadable) = lungstream_train::evaluate::run(&model, &manifest, args.batch.max(1), &|done, total| {
        bar.set_position(done as u64);
        if bar.is_hidden() && (4 * done / total.max(1)) > (4 * (done - 1) / total.max(1)) {
            tracing::info!(done, total, "Evaluating.");
        }
    })?;
    bar.finish_and_clear();
    anyhow::ensure!(!outcomes.is_empty(), "none of the {} scans could be read; see the warnings above", manifest.entries.len());
    let evaluation = lungstream_train::evaluate::write(&args.out, &outcomes, &unreadable, &model)?;
    println!("{}", evaluation.to_markdown());
    println!("wrote {}", args.out.join("evaluation.md").display());
    Ok(ExitCode::SUCCESS)
}
