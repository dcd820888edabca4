//! The two training stages of Ghavami et al. (2020).
//!
//! Stage 1 trains both networks (everything but the fine decoder) with Adam at 1e-4 on
//! batches of 6 scans × 10 evenly spaced slices, and keeps the epoch with the best
//! validation accuracy. Stage 2 freezes everything but the fine decoder and trains it with
//! Adam at 1e-5 on batches of 14 scans × 2 slices.
//!
//! A run folder contains the split manifests (`train.csv`, `validation.csv`, `test.csv`,
//! `heldout.csv`), `checkpoint.safetensors` and `state.json` after every epoch (for
//! `--resume`), `best.safetensors`, `metrics.jsonl` (one line per epoch), `loss.png` and
//! finally `model.safetensors`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use lungstream_dicom::{Inventory, ReaderConfig};
use lungstream_infer::net::Mode;
use lungstream_infer::{infer_series, InferOptions, Model, ModelError, NetworkConfig};
use lungstream_preprocess::bundle::{decode_bundle, encode_bundle};
use lungstream_preprocess::patches::{suspect_mask, InfectionBand};
use lungstream_preprocess::{preprocess, Lobe, PreprocessConfig, PreprocessedSeries};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tch::nn::OptimizerConfig;
use tch::{nn, Kind, Tensor};

use crate::labels::{balance_classes, coarse_targets, concordance_applies, covid_picks, evenly_spaced, fine_targets, noisy_label_weights, top_indices};
use crate::loss::{concordance_loss, diseased_loss, lobe_loss, patch_loss, PATCH_WEIGHT};
use crate::manifest::{split, Manifest, ManifestEntry, Split};
use crate::plot::{self, Chart, Series}; 
use crate::ScanLabel;

/// Largest inflated bundle accepted when a cached scan is decoded.
const MAX_BUNDLE_BYTES: u64 = 4 << 30;
/// Prefix of the variables stage 2 trains.
const FINE_PREFIX: &str = "diseased.fine.";

/// Everything a training run needs besides the manifest.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainOptions {
    pub config: NetworkConfig,
    /// Seed of the initial weights, the split and the batch order.
    pub seed: u64,
    /// Stage 1 epochs (the paper: 500).
    pub epochs: usize,
    /// Stage 2 epochs.
    pub fine_epochs: usize,
    pub scans_per_batch: usize,
    pub slices_per_scan: usize,
    pub fine_scans_per_batch: usize,
    pub fine_slices_per_scan: usize,
    pub learning_rate: f64,
    /// Stage 1 learning rate at the last epoch: the rate falls from `learning_rate` along
    /// half a cosine ([`stage1_learning_rate`]). **[choice]** The paper keeps 1e-4 for
    /// 500 epochs. At the 1e-3 that a short CPU run needs, the validation accuracy of the
    /// COVID network swung between 93% and 50% from one epoch to the next. `None` keeps the
    /// rate constant, as the paper does.
    #[serde(default)]
    pub final_learning_rate: Option<f64>,
    pub fine_learning_rate: f64,
    /// Centres kept out of training, validation and test entirely.
    pub holdout_centres: Vec<String>,
    /// Stage 1 epochs, from the first, whose patch loss weighs `warmup_patch_weight`
    /// instead of 0.01. **[choice]** The paper starts from ImageNet VGG-16 weights, which
    /// cannot be had here. Weighting the dense pseudo-labels more at first gives the
    /// shared features a start on infection-like texture. 0 follows the paper.
    #[serde(default)]
    pub warmup_epochs: usize,
    #[serde(default)]
    pub warmup_patch_weight: f64,
    /// After this stage 1 epoch, the COVID network's VGG and vicinity layers take the
    /// diseased network's values ([`share_features`]). **[choice]** In the paper both
    /// networks start from ImageNet VGG-16. Trained from scratch on the top lobes of
    /// diseased scans only, the COVID network kept a loss of 0.69 (chance) for 5 epochs
    /// while the diseased network learned. The warmed-up features of the diseased network
    /// give it a start in place of ImageNet weights. `None` follows the paper.
    #[serde(default)]
    pub share_features_after: Option<usize>,
    /// The COVID network also trains on the top 30% of each diseased scan's lobes by
    /// P(diseased), besides its own top 30% by P(COVID). **[choice]** The method only
    /// states "by predicted probability". COVID-19 and other disease differ on the lobes
    /// that show disease, while the COVID network's own top lobes are mostly
    /// healthy-looking until it has learned. `false` uses its own top lobes only.
    #[serde(default)]
    pub covid_on_diseased_top: bool,
    /// Uses at most this many training scans (quick runs and tests).
    pub max_train_scans: Option<usize>,
    /// Uses at most this many validation scans.
    pub max_validation_scans: Option<usize>,
}

impl TrainOptions {
    /// Returns the paper's settings for a configuration, with `epochs` stage 1 epochs.
    pub fn paper(config: NetworkConfig, epochs: usize, fine_epochs: usize) -> TrainOptions {
        TrainOptions {
            config,
            seed: lungstream_infer::model::DEFAULT_SEED,
            epochs,
            fine_epochs,
            scans_per_batch: 6,
            slices_per_scan: 10,
            fine_scans_per_batch: 14,
            fine_slices_per_scan: 2,
            learning_rate: 1e-4,
            final_learning_rate: None,
            fine_learning_rate: 1e-5,
            holdout_centres: Vec::new(),
            warmup_epochs: 0,
            warmup_patch_weight: PATCH_WEIGHT,
            share_features_after: None,
            covid_on_diseased_top: false,
            max_train_scans: None,
            max_validation_scans: None,
        }
    }
}

/// Describes the weights a run writes into `model.safetensors`.
#[derive(Clone, Debug, Default)]
pub struct CardText {
    pub id: String,
    pub trained_on: String,
    pub notes: String,
    /// Marks the weights as not for use on patients.
    pub research_only: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{0}")]
    Model(#[from] ModelError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    // The I/O error is in the message and not a source, so chains do not repeat it.
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error(transparent)]
    Manifest(#[from] crate::manifest::ManifestError),
    #[error("no usable {part} scans: {detail}")]
    NoScans { part: &'static str, detail: String },
    #[error("cannot resume: {0}")]
    Resume(String),
    #[error("{0} already contains a run (state.json). Pass --resume to continue it, --overwrite to start again there, or choose another --out")]
    RunExists(String),
    #[error("invalid options: {0}")]
    Options(String),
    #[error("training diverged at stage {stage}, epoch {epoch}, batch {batch}: the loss is not a number. Try a lower --learning-rate. The checkpoint of the last finished epoch is kept")]
    Diverged { stage: u8, epoch: usize, batch: usize },
}

/// Checks the numbers a run needs before any work starts.
fn check_options(options: &TrainOptions) -> Result<(), TrainError> {
    let positive = |name: &str, value: f64, example: &str| {
        if value.is_finite() && value > 0.0 {
            Ok(())
        } else {
            Err(TrainError::Options(format!("invalid {name} {value}: it must be a positive number such as {example}")))
        }
    };
    positive("learning rate", options.learning_rate, "1e-4")?;
    positive("fine learning rate", options.fine_learning_rate, "1e-5")?;
    if let Some(rate) = options.final_learning_rate {
        positive("final learning rate", rate, "1e-5")?;
        if rate > options.learning_rate {
            return Err(TrainError::Options(format!("invalid final learning rate {rate}: the rate falls to it, so it must not exceed the learning rate {}", options.learning_rate)));
        }
    }
    if !(options.warmup_patch_weight.is_finite() && options.warmup_patch_weight >= 0.0) {
        return Err(TrainError::Options(format!("invalid warm-up patch weight {}: it must be 0 or a positive number such as 1", options.warmup_patch_weight)));
    }
    if options.epochs == 0 {
        return Err(TrainError::Options("stage 1 needs at least 1 epoch (--epochs)".into()));
    }
    Ok(())
}

/// Names the options that differ between a run's stored options and the new ones, with
/// both values, ignoring the epoch counts.
fn changed_options(stored: &TrainOptions, new: &TrainOptions) -> Vec<String> {
    let json = |o: &TrainOptions| match serde_json::to_value(TrainOptions { epochs: 0, fine_epochs: 0, ..o.clone() }) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    let (before, after) = (json(stored), json(new));
    let mut keys: Vec<&String> = before.keys().chain(after.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| before.get(*k) != after.get(*k))
        .map(|k| {
            let show = |v: Option<&serde_json::Value>| match v {
                None | Some(serde_json::Value::Null) => "unset".to_string(),
                Some(value) => value.to_string(),
            };
            format!("{k} was {}, now {}", show(before.get(k)), show(after.get(k)))
        })
        .collect()
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |error| TrainError::Io { path: path.display().to_string(), error }
}

/// One scan ready for training: its preprocessed series kept as a compressed bundle
/// (about a fifth of the raw size), the slices that have lungs, and its labels.
pub struct TrainingScan {
    pub label: ScanLabel,
    pub centre: String,
    pub series: PathBuf,
    pub infected_percent: Option<f64>,
    bundle: Vec<u8>,
    slices: Vec<usize>,
    band: Option<InfectionBand>,
}

impl TrainingScan {
    fn from_series(entry: &ManifestEntry, series: &PreprocessedSeries) -> Result<TrainingScan, String> {
        let mut slices: Vec<usize> = series.lobes.iter().map(|l| l.slice).collect();
        slices.dedup();
        Ok(TrainingScan {
            label: entry.label,
            centre: entry.centre.clone(),
            series: entry.series.clone(),
            infected_percent: entry.infected_percent,
            bundle: encode_bundle(series).map_err(|e| e.to_string())?,
            slices,
            band: series.facts.infection_band,
        })
    }

    /// Decodes the preprocessed series.
    pub fn series(&self) -> PreprocessedSeries {
        decode_bundle(&self.bundle, MAX_BUNDLE_BYTES).expect("a bundle this process encoded decodes")
    }
}

/// Reads and preprocesses one series folder. A phantom's `ground_truth.json` at its top
/// is passed over: the reader would skip it anyway, with one log line per scan.
///
/// # Errors
///
/// The reader's or the preprocessing's message with its reason code.
pub fn load_series(path: &Path) -> Result<PreprocessedSeries, String> {
    if !path.is_dir() {
        return Err(format!("series folder not found: {}", path.display()));
    }
    let inputs = series_inputs(path).map_err(|e| format!("cannot list series folder {}: {e}", path.display()))?;
    let reader = ReaderConfig::default();
    let mut inventory = Inventory::scan(&inputs, &reader);
    let volume = inventory.load_selected(&reader).map_err(|e| format!("{e} (reason code {})", e.reason()))?;
    preprocess(&volume, &PreprocessConfig::default()).map_err(|e| format!("{e} (reason code {})", e.reason()))
}

/// Lists the entries of a series folder for the reader, in name order, without a
/// phantom's ground truth file. Subfolders are passed whole, and the reader searches them.
fn series_inputs(folder: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut inputs = Vec::new();
    for entry in fs::read_dir(folder)? {
        let entry = entry?;
        if entry.file_name() == lungstream_phantom::GROUND_TRUTH_FILE && entry.file_type()?.is_file() {
            continue;
        }
        inputs.push(entry.path());
    }
    inputs.sort();
    Ok(inputs)
}

/// Loads scans in parallel; a scan that cannot be read is logged with its reason and
/// left out. `progress(done, total)` is called after each scan.
pub fn load_scans(entries: &[ManifestEntry], progress: &(dyn Fn(usize, usize) + Sync)) -> (Vec<TrainingScan>, Vec<(PathBuf, String)>) {
    let done = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<Result<TrainingScan, (PathBuf, String)>> = entries
        .par_iter()
        .map(|entry| {
            let scan = load_series(&entry.series).and_then(|series| TrainingScan::from_series(entry, &series));
            progress(done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1, entries.len());
            scan.map_err(|reason| (entry.series.clone(), reason))
        })
        .collect();
    let mut scans = Vec::new();
    let mut failed = Vec::new();
    for result in results {
        match result {
            Ok(scan) => scans.push(scan),
            Err((path, reason)) => {
                tracing::warn!(series = %path.display(), %reason, "Scan left out of training.");
                failed.push((path, reason));
            }
        }
    }
    (scans, failed)
}

/// The lobes of the chosen slices of a scan, with each lobe's suspect mask.
struct SampledLobes {
    label: ScanLabel,
    lobes: Vec<Lobe>,
    suspect: Vec<lungstream_preprocess::image::Mask>,
}

fn sample(scan: &TrainingScan, count: usize, phase: f64) -> SampledLobes {
    let picks: Vec<usize> = evenly_spaced(scan.slices.len(), count, phase).into_iter().map(|i| scan.slices[i]).collect();
    let series = scan.series();
    let lobes: Vec<Lobe> = series.lobes.into_iter().filter(|l| picks.binary_search(&l.slice).is_ok()).collect();
    let suspect = lobes
        .iter()
        .map(|lobe| match &scan.band {
            Some(band) => suspect_mask(&lobe.channels[1], &lobe.mask, band),
            None => lungstream_preprocess::image::Mask::filled(lobe.mask.rows, lobe.mask.columns, false),
        })
        .collect();
    SampledLobes { label: scan.label, lobes, suspect }
}

/// Builds the network inputs of every lobe of the samples, in order.
fn batch_input<'a>(samples: impl IntoIterator<Item = &'a SampledLobes>) -> (Tensor, Tensor) {
    let refs: Vec<&Lobe> = samples.into_iter().flat_map(|s| s.lobes.iter()).collect();
    lungstream_infer::batch_tensors(&refs)
}

fn to_vec(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(&t.detach().to_kind(Kind::Float).flatten(0, -1)).expect("a float tensor converts")
}

/// Loss values of one batch or the mean over an epoch.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct LossValues {
    pub total: f64,
    pub lobe: f64,
    pub concordance: f64,
    pub patch: f64,
    pub covid: f64,
    pub fine: f64,
}

impl LossValues {
    fn add(&mut self, other: &LossValues) {
        self.total += other.total;
        self.lobe += other.lobe;
        self.concordance += other.concordance;
        self.patch += other.patch;
        self.covid += other.covid;
        self.fine += other.fine;
    }

    fn scaled(&self, factor: f64) -> LossValues {
        LossValues {
            total: self.total * factor,
            lobe: self.lobe * factor,
            concordance: self.concordance * factor,
            patch: self.patch * factor,
            covid: self.covid * factor,
            fine: self.fine * factor,
        }
    }
}

/// Computes one stage 1 step: builds the targets and weights from the current predictions,
/// and returns the loss to minimise with its parts.
///
/// The diseased network runs with autograd on every sampled lobe: the lobe term uses each
/// scan's top 30%, the concordance term the lobes of healthy and COVID-19 scans, and the
/// patch term every coarse patch. The COVID network's lobes (of diseased scans only; see
/// [`covid_picks`]) are chosen on a pass without autograd and then run again with it. The loss is the same as
/// with one pass, and the backward pass covers 30% of the lobes instead of all.
fn stage1_loss(model: &Model, samples: &[&SampledLobes], patch_weight: f64, covid_on_diseased_top: bool) -> (Tensor, LossValues) {
    let (input, distance) = batch_input(samples.iter().copied());
    let out = model.diseased.forward_parts(&input, &distance, false, Mode::Train);
    let coarse = out.coarse.as_ref().expect("the diseased network has infection heads");
    let p = to_vec(&out.probability);
    let coarse_values = to_vec(coarse);

    // Lobe targets (top 30% per scan) and the concordance scope.
    let mut selected = Vec::new();
    let mut selected_targets = Vec::new();
    let mut concordant = Vec::new();
    let mut patch_targets = Vec::with_capacity(coarse_values.len());
    // Per diseased scan, its lobes' P(diseased) (for the COVID network's choice).
    let mut diseased_p: Vec<&[f32]> = Vec::new();
    let mut start = 0;
    for sample in samples {
        let n = sample.lobes.len();
        if sample.label.diseased() {
            diseased_p.push(&p[start..start + n]);
        }
        for i in top_indices(&p[start..start + n]) {
            selected.push((start + i) as i64);
            selected_targets.push(f32::from(u8::from(sample.label.diseased())));
        }
        if concordance_applies(sample.label) {
            concordant.extend((start..start + n).map(|i| i as i64));
        }
        for suspect in &sample.suspect {
            patch_targets.extend(coarse_targets(sample.label, suspect));
        }
        start += n;
    }
    let lobe = lobe_loss(&out.probability.index_select(0, &Tensor::from_slice(&selected)), &Tensor::from_slice(&selected_targets));
    let concordance = (!concordant.is_empty()).then(|| {
        let index = Tensor::from_slice(&concordant);
        concordance_loss(&out.probability.index_select(0, &index), &coarse.index_select(0, &index))
    });
    let weights = balance_classes(&patch_targets, &noisy_label_weights(&patch_targets, &coarse_values));
    let patch = patch_loss(&coarse.flatten(0, -1), &Tensor::from_slice(&patch_targets), &Tensor::from_slice(&weights));
    let diseased = diseased_loss(lobe, concordance, patch, patch_weight);

    // The COVID network, on diseased scans only.
    let diseased_samples: Vec<&SampledLobes> = samples.iter().copied().filter(|s| s.label.diseased()).collect();
    let mut values = LossValues { lobe: diseased.lobe, concordance: diseased.concordance, patch: diseased.patch, ..LossValues::default() };
    let mut total = diseased.total;
    if !diseased_samples.is_empty() {
        let (input, distance) = batch_input(diseased_samples.iter().copied());
        let p_covid = tch::no_grad(|| to_vec(&model.covid.forward(&input, &distance).probability));
        let mut chosen = Vec::new();
        let mut targets = Vec::new();
        let mut start = 0;
        for (sample, p_diseased) in diseased_samples.iter().zip(&diseased_p) {
            let n = sample.lobes.len();
            for i in covid_picks(&p_covid[start..start + n], p_diseased, covid_on_diseased_top) {
                chosen.push((start + i) as i64);
                targets.push(f32::from(u8::from(sample.label == ScanLabel::Covid)));
            }
            start += n;
        }
        let index = Tensor::from_slice(&chosen);
        let out = model.covid.forward_parts(&input.index_select(0, &index), &distance.index_select(0, &index), false, Mode::Train);
        let covid = lobe_loss(&out.probability, &Tensor::from_slice(&targets));
        values.covid = covid.double_value(&[]);
        total += covid;
    }
    values.total = total.double_value(&[]);
    (total, values)
}

/// Prefixes of the layers [`share_features`] copies: the feature extractor of a lobe
/// network, without its heads.
const SHARED_FEATURES: [&str; 2] = ["vgg.", "vicinity."];

/// Copies the diseased network's VGG and vicinity layers into the COVID network.
pub fn share_features(model: &Model) {
    let variables = model.var_store().variables();
    let _guard = tch::no_grad_guard();
    for (name, source) in &variables {
        let Some(rest) = name.strip_prefix("diseased.") else {
            continue;
        };
        if SHARED_FEATURES.iter().any(|prefix| rest.starts_with(prefix)) {
            let mut target = variables[&format!("covid.{rest}")].shallow_clone();
            target.copy_(source);
        }
    }
}

/// Computes one stage 2 step: the fine decoder's weighted loss against the fine pseudo-labels.
fn stage2_loss(model: &Model, samples: &[SampledLobes]) -> (Tensor, LossValues) {
    let (input, distance) = batch_input(samples);
    let out = model.diseased.forward(&input, &distance);
    let coarse = to_vec(out.coarse.as_ref().expect("the diseased network has infection heads"));
    let fine = out.fine.as_ref().expect("the diseased network has infection heads");
    let fine_values = to_vec(fine);
    let cells = lungstream_preprocess::patches::COARSE_GRID.pow(2);
    let mut targets = Vec::with_capacity(fine_values.len());
    let mut k = 0;
    for sample in samples {
        for suspect in &sample.suspect {
            targets.extend(fine_targets(sample.label, suspect, &coarse[k * cells..(k + 1) * cells]));
            k += 1;
        }
    }
    let weights = balance_classes(&targets, &noisy_label_weights(&targets, &fine_values));
    let loss = patch_loss(&fine.flatten(0, -1), &Tensor::from_slice(&targets), &Tensor::from_slice(&weights));
    let value = loss.double_value(&[]);
    (loss, LossValues { total: value, fine: value, ..LossValues::default() })
}

/// Validation measures of one epoch.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Validation {
    /// Share of scans whose decision (healthy / COVID-19 / other) is right.
    pub accuracy: f64,
    /// Diseased-vs-healthy accuracy over all scans.
    pub diseased_accuracy: f64,
    /// COVID-vs-other accuracy over diseased scans.
    pub covid_accuracy: f64,
    /// Mean cross-entropy of the scan probabilities of both tasks: breaks accuracy ties.
    pub loss: f64,
    /// Median absolute error of the infected share, percentage points, over scans whose
    /// truth is known.
    pub infected_error: Option<f64>,
    /// Mean absolute error of the infected share over the same scans. Stage 2 keeps the
    /// epoch where it is smallest: when most validation scans are healthy, their near-zero
    /// errors set the median, and only the mean follows the diseased scans.
    #[serde(default)]
    pub infected_mean_error: Option<f64>,
    /// Standard deviation of P(diseased) over all validation lobes. Near 0 the network
    /// gives every lobe the same output, which a too high learning rate can cause.
    #[serde(default)]
    pub lobe_spread: f64,
}

/// Below this [`Validation::lobe_spread`] the network is taken to have collapsed to a
/// constant output.
pub const COLLAPSED_SPREAD: f64 = 1e-3;

/// Runs the model over scans and measures the decisions.
pub fn validate(model: &Model, scans: &[TrainingScan]) -> Result<Validation, TrainError> {
    let mut right = 0usize;
    let mut diseased_right = 0usize;
    let (mut covid_right, mut covid_total) = (0usize, 0usize);
    let mut loss = 0f64;
    let mut errors = Vec::new();
    let mut lobe_p = Vec::new();
    let bce = |p: f64, positive: bool| -(if positive { p } else { 1.0 - p }).clamp(1e-6, 1.0).ln();
    for scan in scans {
        let result = infer_series(model, &scan.series(), InferOptions::default(), &mut |_| {})?;
        let decided = match result.decision {
            lungstream_schemas::report::Decision::Healthy => ScanLabel::Healthy,
            lungstream_schemas::report::Decision::Covid19 => ScanLabel::Covid,
            lungstream_schemas::report::Decision::OtherDisease => ScanLabel::Other,
        };
        lobe_p.extend(result.lobes.iter().map(|l| l.p_diseased));
        right += usize::from(decided == scan.label);
        diseased_right += usize::from((result.p_diseased > 0.5) == scan.label.diseased());
        loss += bce(result.p_diseased, scan.label.diseased());
        if scan.label.diseased() {
            covid_total += 1;
            covid_right += usize::from((result.p_covid > 0.5) == (scan.label == ScanLabel::Covid));
            loss += bce(result.p_covid, scan.label == ScanLabel::Covid);
        }
        if let Some(truth) = scan.infected_percent {
            errors.push((result.infected_percent_total() - truth).abs());
        }
    }
    let n = scans.len().max(1) as f64;
    let (infected_mean_error, infected_error) = crate::metrics::mean_and_median(&mut errors);
    let mean = lobe_p.iter().sum::<f64>() / lobe_p.len().max(1) as f64;
    let lobe_spread = (lobe_p.iter().map(|p| (p - mean).powi(2)).sum::<f64>() / lobe_p.len().max(1) as f64).sqrt();
    Ok(Validation {
        lobe_spread,
        accuracy: right as f64 / n,
        diseased_accuracy: diseased_right as f64 / n,
        covid_accuracy: if covid_total == 0 { 1.0 } else { covid_right as f64 / covid_total as f64 },
        loss: loss / n,
        infected_mean_error,
        infected_error,
    })
}

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpochRecord {
    pub stage: u8,
    pub epoch: usize,
    pub train: LossValues,
    pub validation: Validation,
    pub seconds: f64,
    /// Whether this epoch's weights became `best.safetensors`.
    pub best: bool,
}

/// Progress of a run, for the command line.
pub trait Progress: Sync {
    /// A stage starts: `epochs` epochs of `batches` batches each.
    fn stage(&self, stage: u8, epochs: usize, batches: usize);
    /// A batch finished.
    fn batch(&self, stage: u8, epoch: usize, batch: usize, loss: &LossValues);
    /// An epoch finished, with its validation.
    fn epoch(&self, record: &EpochRecord);
    /// Scans loaded so far.
    fn loading(&self, done: usize, total: usize);
}

/// A [`Progress`] that reports nothing, for tests and callers without a display.
pub struct NoProgress;

impl Progress for NoProgress {
    fn stage(&self, _: u8, _: usize, _: usize) {}
    fn batch(&self, _: u8, _: usize, _: usize, _: &LossValues) {}
    fn epoch(&self, _: &EpochRecord) {}
    fn loading(&self, _: usize, _: usize) {}
}

/// State written after every epoch so that a run can resume.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct RunState {
    options: TrainOptions,
    /// The stage and the number of its epochs finished.
    stage: u8,
    epochs_done: usize,
    best_epoch: Option<usize>,
    best_accuracy: f64,
    best_loss: f64,
    /// Smallest mean error of the infected share over the stage 2 epochs so far. Older
    /// state files stored the median under another name, which is ignored, so the first
    /// stage 2 epoch after resuming such a run sets the mark again.
    #[serde(default)]
    best_infected_mean_error: Option<f64>,
}

/// Summary of a finished run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainSummary {
    pub model: PathBuf,
    pub train_scans: usize,
    pub validation_scans: usize,
    pub left_out: usize,
    pub best_epoch: Option<usize>,
    pub best_validation: f64,
    pub seconds: f64,
}

/// Start mode of a run: whether its folder may already contain a run, and what becomes
/// of that run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunStart {
    /// A new run: the folder must not contain one already.
    New,
    /// Continue the run in the folder from its last finished epoch.
    Resume,
    /// Start again in the folder, replacing the run it contains.
    Overwrite,
}

/// Runs both stages. With [`RunStart::Resume`], continues the run in `run_dir` from its
/// last finished epoch (the optimiser's moment estimates start again from zero there).
///
/// # Errors
///
/// When the manifest has no usable training or validation scans, a file cannot be
/// written, libtorch fails, a resume finds no compatible state, or a new run finds a run
/// in `run_dir`.
pub fn train(manifest: &Manifest, options: &TrainOptions, card: &CardText, run_dir: &Path, start: RunStart, progress: &dyn Progress) -> Result<TrainSummary, TrainError> {
    let clock = Instant::now();
    let resume = start == RunStart::Resume;
    if options.scans_per_batch == 0 || options.slices_per_scan == 0 || options.fine_scans_per_batch == 0 || options.fine_slices_per_scan == 0 {
        return Err(TrainError::Options("batch sizes and slices per scan must be at least 1".into()));
    }
    check_options(options)?;
    let centres: std::collections::BTreeSet<&str> = manifest.entries.iter().map(|e| e.centre.as_str()).collect();
    let unknown: Vec<&String> = options.holdout_centres.iter().filter(|c| !centres.contains(c.as_str())).collect();
    if !unknown.is_empty() {
        return Err(TrainError::Options(format!("hold-out centres not in the manifest: {unknown:?}. Its centres are {centres:?}")));
    }
    options.config.validate().map_err(TrainError::Options)?;
    let state_path = run_dir.join("state.json");
    if start == RunStart::New && state_path.exists() {
        return Err(TrainError::RunExists(run_dir.display().to_string()));
    }
    fs::create_dir_all(run_dir).map_err(io_error(run_dir))?;
    let checkpoint = run_dir.join("checkpoint.safetensors");
    let best_path = run_dir.join("best.safetensors");
    let mut state = if resume {
        let text = fs::read_to_string(&state_path).map_err(|e| TrainError::Resume(format!("{}: {e}", state_path.display())))?;
        let state: RunState = serde_json::from_str(&text).map_err(|e| TrainError::Resume(format!("{}: {e}", state_path.display())))?;
        // More (or fewer) epochs may be asked for; anything else must match.
        let changed = changed_options(&state.options, options);
        if !changed.is_empty() {
            return Err(TrainError::Resume(format!("the options differ from those the run started with: {}. Only the epoch counts may change, so start a new run in another folder to change the others", changed.join("; "))));
        }
        if state.stage == 2 && options.epochs > state.options.epochs {
            return Err(TrainError::Resume("stage 1 is finished: more stage 1 epochs need a new run".into()));
        }
        RunState { options: options.clone(), ..state }
    } else {
        RunState { options: options.clone(), stage: 1, epochs_done: 0, best_epoch: None, best_accuracy: -1.0, best_loss: f64::INFINITY, best_infected_mean_error: None }
    };

    // The split, written as manifests so that `evaluate` can take the test part.
    let parts = split(&manifest.entries, &options.holdout_centres, options.seed);
    if !parts.contains(&Split::Test) {
        tracing::warn!(scans = manifest.entries.len(), "The test split is empty because the manifest has too few patients per label outside the hold-out centres. `evaluate` gets no test manifest from this run.");
    }
    let pick = |wanted: Split| Manifest { entries: manifest.entries.iter().zip(&parts).filter(|(_, p)| **p == wanted).map(|(e, _)| e.clone()).collect() };
    let (mut train_part, mut validation_part) = (pick(Split::Train), pick(Split::Validation));
    for (name, part) in [("train.csv", &train_part), ("validation.csv", &validation_part), ("test.csv", &pick(Split::Test)), ("heldout.csv", &pick(Split::HeldOutCentre))] {
        part.write(&run_dir.join(name))?;
    }
    if let Some(max) = options.max_train_scans {
        train_part.entries.truncate(max);
    }
    if let Some(max) = options.max_validation_scans {
        validation_part.entries.truncate(max);
    }
    let all: Vec<ManifestEntry> = train_part.entries.iter().chain(&validation_part.entries).cloned().collect();
    let (mut scans, failed) = load_scans(&all, &|done, total| progress.loading(done, total));
    let validation_paths: std::collections::HashSet<PathBuf> = validation_part.entries.iter().map(|e| e.series.clone()).collect();
    let validation: Vec<TrainingScan> = {
        let (v, t): (Vec<TrainingScan>, Vec<TrainingScan>) = scans.drain(..).partition(|s| validation_paths.contains(&s.series));
        scans = t;
        v
    };
    let train_scans = scans;
    if train_scans.is_empty() {
        return Err(TrainError::NoScans { part: "training", detail: format!("{} in the manifest's training part, {} unreadable", train_part.entries.len(), failed.len()) });
    }
    if validation.is_empty() {
        return Err(TrainError::NoScans { part: "validation", detail: format!("{} in the manifest's validation part", validation_part.entries.len()) });
    }
    tracing::info!(train = train_scans.len(), validation = validation.len(), left_out = failed.len(), "Scans loaded.");

    let mut model = if resume && checkpoint.exists() { Model::load(&checkpoint)? } else { Model::initialised(options.config, options.seed)? };
    let metrics_path = run_dir.join("metrics.jsonl");
    if !resume {
        fs::write(&metrics_path, b"").map_err(io_error(&metrics_path))?;
    }
    let mut records: Vec<EpochRecord> = fs::read_to_string(&metrics_path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();

    // Stage 1.
    if state.stage == 1 && state.epochs_done < options.epochs {
        let mut optimiser = nn::Adam::default().build(model.var_store(), options.learning_rate)?;
        let batches = train_scans.len().div_ceil(options.scans_per_batch);
        progress.stage(1, options.epochs, batches);
        for epoch in state.epochs_done + 1..=options.epochs {
            let epoch_clock = Instant::now();
            optimiser.set_lr(stage1_learning_rate(options, epoch));
            let order = shuffled(train_scans.len(), options.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut sum = LossValues::default();
            for (b, chunk) in order.chunks(options.scans_per_batch).enumerate() {
                let samples: Vec<SampledLobes> = chunk
                    .par_iter()
                    .map(|&i| sample(&train_scans[i], options.slices_per_scan, phase(options.seed, epoch, i)))
                    .filter(|s| !s.lobes.is_empty())
                    .collect();
                if samples.is_empty() {
                    continue;
                }
                let refs: Vec<&SampledLobes> = samples.iter().collect();
                let patch_weight = if epoch <= options.warmup_epochs { options.warmup_patch_weight } else { PATCH_WEIGHT };
                let (loss, values) = stage1_loss(&model, &refs, patch_weight, options.covid_on_diseased_top);
                if !values.total.is_finite() {
                    return Err(TrainError::Diverged { stage: 1, epoch, batch: b + 1 });
                }
                optimiser.backward_step(&loss);
                sum.add(&values);
                progress.batch(1, epoch, b + 1, &values);
            }
            if options.share_features_after == Some(epoch) {
                share_features(&model);
                tracing::info!(epoch, "The COVID network now starts from the diseased network's VGG and vicinity layers.");
            }
            let validation_result = tch::no_grad(|| validate(&model, &validation))?;
            if validation_result.lobe_spread < COLLAPSED_SPREAD {
                tracing::warn!(epoch, spread = validation_result.lobe_spread, "The diseased network gives every validation lobe the same probability: it has collapsed to a constant output. Try a lower --learning-rate.");
            }
            let better = validation_result.accuracy > state.best_accuracy
                || (validation_result.accuracy == state.best_accuracy && validation_result.loss < state.best_loss);
            if better {
                state.best_accuracy = validation_result.accuracy;
                state.best_loss = validation_result.loss;
                state.best_epoch = Some(epoch);
                label_card(&mut model, card, options, &format!("stage 1, epoch {epoch}"))?;
                model.save(&best_path)?;
            }
            let record = EpochRecord { stage: 1, epoch, train: sum.scaled(1.0 / batches as f64), validation: validation_result, seconds: epoch_clock.elapsed().as_secs_f64(), best: better };
            finish_epoch(&mut model, &mut state, &mut records, record, card, options, run_dir, progress)?;
        }
    }

    // Stage 2 starts from the best stage 1 weights.
    if state.stage == 1 {
        state.stage = 2;
        state.epochs_done = 0;
        if best_path.exists() {
            model = Model::load(&best_path)?;
        }
        label_card(&mut model, card, options, "stage 2 start")?;
        model.save(&checkpoint)?;
        write_state(&state_path, &state)?;
    }
    if state.epochs_done < options.fine_epochs {
        for (name, tensor) in model.var_store().variables() {
            let _ = tensor.set_requires_grad(name.starts_with(FINE_PREFIX));
        }
        let mut optimiser = nn::Adam::default().build(model.var_store(), options.fine_learning_rate)?;
        let batches = train_scans.len().div_ceil(options.fine_scans_per_batch);
        progress.stage(2, options.fine_epochs, batches);
        for epoch in state.epochs_done + 1..=options.fine_epochs {
            let epoch_clock = Instant::now();
            let order = shuffled(train_scans.len(), options.seed ^ 0x5EED ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut sum = LossValues::default();
            for (b, chunk) in order.chunks(options.fine_scans_per_batch).enumerate() {
                let samples: Vec<SampledLobes> = chunk
                    .par_iter()
                    .map(|&i| sample(&train_scans[i], options.fine_slices_per_scan, phase(options.seed ^ 0x5EED, epoch, i)))
                    .filter(|s| !s.lobes.is_empty())
                    .collect();
                if samples.is_empty() {
                    continue;
                }
                let (loss, values) = stage2_loss(&model, &samples);
                if !values.total.is_finite() {
                    return Err(TrainError::Diverged { stage: 2, epoch, batch: b + 1 });
                }
                optimiser.backward_step(&loss);
                sum.add(&values);
                progress.batch(2, epoch, b + 1, &values);
            }
            let validation_result = tch::no_grad(|| validate(&model, &validation))?;
            // Stage 2 changes only the fine map: keep the epoch with the smallest mean error
            // of the infected share where the truth is known, else the last one.
            let better = match (validation_result.infected_mean_error, state.best_infected_mean_error) {
                (Some(now), Some(best)) => now <= best,
                _ => true,
            };
            if better {
                state.best_infected_mean_error = validation_result.infected_mean_error;
                label_card(&mut model, card, options, &format!("stage 2, epoch {epoch}"))?;
                model.save(&best_path)?;
            }
            let record = EpochRecord { stage: 2, epoch, train: sum.scaled(1.0 / batches as f64), validation: validation_result, seconds: epoch_clock.elapsed().as_secs_f64(), best: better };
            finish_epoch(&mut model, &mut state, &mut records, record, card, options, run_dir, progress)?;
        }
    }

    let mut final_model = if best_path.exists() { Model::load(&best_path)? } else { model };
    label_card(&mut final_model, card, options, "final")?;
    let model_path = run_dir.join("model.safetensors");
    final_model.save(&model_path)?;
    Ok(TrainSummary {
        model: model_path,
        train_scans: train_scans.len(),
        validation_scans: validation.len(),
        left_out: failed.len(),
        best_epoch: state.best_epoch,
        best_validation: state.best_accuracy,
        seconds: clock.elapsed().as_secs_f64(),
    })
}

#[allow(clippy::too_many_arguments)]
fn finish_epoch(
    model: &mut Model,
    state: &mut RunState,
    records: &mut Vec<EpochRecord>,
    record: EpochRecord,
    card: &CardText,
    options: &TrainOptions,
    run_dir: &Path,
    progress: &dyn Progress,
) -> Result<(), TrainError> {
    state.epochs_done = record.epoch;
    label_card(model, card, options, &format!("stage {}, epoch {}", record.stage, record.epoch))?;
    model.save(&run_dir.join("checkpoint.safetensors"))?;
    let metrics_path = run_dir.join("metrics.jsonl");
    let mut file = fs::OpenOptions::new().append(true).create(true).open(&metrics_path).map_err(io_error(&metrics_path))?;
    writeln!(file, "{}", serde_json::to_string(&record).expect("records serialise")).map_err(io_error(&metrics_path))?;
    progress.epoch(&record);
    records.push(record);
    let png = loss_chart(records);
    let png_path = run_dir.join("loss.png");
    fs::write(&png_path, png).map_err(io_error(&png_path))?;
    write_state(&run_dir.join("state.json"), state)
}

fn write_state(path: &Path, state: &RunState) -> Result<(), TrainError> {
    let tmp = path.with_extension("json.tmp");
    fs::write(&tmp, serde_json::to_vec_pretty(state).expect("the state serialises")).map_err(io_error(&tmp))?;
    fs::rename(&tmp, path).map_err(io_error(path))
}

fn label_card(model: &mut Model, card: &CardText, options: &TrainOptions, when: &str) -> Result<(), TrainError> {
    let id = if card.id.is_empty() { format!("ghavami2020-{}-trained", options.config.name()) } else { card.id.clone() };
    let notes = format!("{} Weights at {when}.", card.notes).trim().to_string();
    model.set_card(id, true, card.trained_on.clone(), notes)?;
    model.set_research_only(card.research_only);
    Ok(())
}

/// Draws the training loss and validation accuracy per epoch as a PNG chart.
pub fn loss_chart(records: &[EpochRecord]) -> Vec<u8> {
    let stage1: Vec<&EpochRecord> = records.iter().filter(|r| r.stage == 1).collect();
    let stage2: Vec<&EpochRecord> = records.iter().filter(|r| r.stage == 2).collect();
    let offset = stage1.len() as f64;
    let series = vec![
        Series { name: "stage 1 training loss".into(), points: stage1.iter().map(|r| (r.epoch as f64, r.train.total)).collect(), colour: [31, 119, 180], dashed: false },
        Series { name: "validation accuracy".into(), points: stage1.iter().map(|r| (r.epoch as f64, r.validation.accuracy)).collect(), colour: [44, 160, 44], dashed: true },
        Series { name: "stage 2 fine loss".into(), points: stage2.iter().map(|r| (offset + r.epoch as f64, r.train.fine)).collect(), colour: [214, 39, 40], dashed: false },
    ];
    plot::render_png(
        &Chart { title: "Training".into(), x_label: "epoch".into(), y_label: "loss, accuracy".into(), x_range: None, y_range: None, whole_x: true, series },
        800,
        500,
    )
}

/// Returns the stage 1 learning rate of an epoch (counted from 1): `learning_rate` at the
/// first epoch, `final_learning_rate` at the last, along half a cosine in between.
pub fn stage1_learning_rate(options: &TrainOptions, epoch: usize) -> f64 {
    let Some(last) = options.final_learning_rate else {
        return options.learning_rate;
    };
    if options.epochs <= 1 {
        return options.learning_rate;
    }
    let progress = (epoch.clamp(1, options.epochs) - 1) as f64 / (options.epochs - 1) as f64;
    last + 0.5 * (options.learning_rate - last) * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// Returns a permutation of `0..n` from a seed (Fisher–Yates over SplitMix64).
fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

/// Returns the phase of the evenly spaced slices a scan gives in an epoch, in 0..1.
fn phase(seed: u64, epoch: usize, scan: usize) -> f64 {
    let mut z = seed ^ (epoch as u64).wrapping_mul(0xD1B5_4A32_D192_ED03) ^ (scan as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
}

/// Trains stage 1 on one fixed batch for `steps` steps and returns each step's loss: a
/// quick check that the loss terms and gradients fit together.
///
/// # Errors
///
/// When libtorch fails.
pub fn repeat_batch(model: &Model, scans: &[TrainingScan], slices_per_scan: usize, learning_rate: f64, steps: usize) -> Result<Vec<LossValues>, TrainError> {
    let mut optimiser = nn::Adam::default().build(model.var_store(), learning_rate)?;
    let samples: Vec<SampledLobes> = scans.iter().map(|scan| sample(scan, slices_per_scan, 0.0)).collect();
    let refs: Vec<&SampledLobes> = samples.iter().collect();
    let mut losses = Vec::with_capacity(steps);
    for _ in 0..steps {
        let (loss, values) = stage1_loss(model, &refs, PATCH_WEIGHT, false);
        optimiser.backward_step(&loss);
        losses.push(values);
    }
    Ok(losses)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(epochs: usize, final_rate: Option<f64>) -> TrainOptions {
        let mut options = TrainOptions::paper(NetworkConfig::preset("narrow").unwrap(), epochs, 0);
        options.learning_rate = 1e-3;
        options.final_learning_rate = final_rate;
        options
    }

    #[test]
    fn learning_rate_falls_along_half_a_cosine() {
        let schedule = options(5, Some(1e-5));
        let rates: Vec<f64> = (1..=5).map(|e| stage1_learning_rate(&schedule, e)).collect();
        // cos(0) = 1, cos(π/4) = √½, cos(π/2) = 0, cos(3π/4) = −√½, cos(π) = −1.
        let half = 0.5 * (1e-3 - 1e-5);
        let want = [1e-3, 1e-5 + half * (1.0 + 0.5f64.sqrt()), 1e-5 + half, 1e-5 + half * (1.0 - 0.5f64.sqrt()), 1e-5];
        for (got, want) in rates.iter().zip(want) {
            assert!((got - want).abs() < 1e-12, "{rates:?}");
        }
    }

    #[test]
    fn constant_rate_without_final_rate() {
        let constant = options(5, None);
        assert!((1..=5).all(|e| stage1_learning_rate(&constant, e) == 1e-3));
        // A single epoch uses the starting rate.
        assert_eq!(stage1_learning_rate(&options(1, Some(1e-5)), 1), 1e-3);
    }

    #[test]
    fn bad_final_rates_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        for rate in [0.0, -1e-4, f64::NAN] {
            let run = dir.path().join("run");
            let result = train(&Manifest { entries: Vec::new() }, &options(3, Some(rate)), &CardText::default(), &run, RunStart::New, &NoProgress);
            assert!(matches!(result, Err(TrainError::Options(ref m)) if m.contains("invalid final learning rate")), "{rate}: {:?}", result.err());
            assert!(!run.exists(), "the run folder was created");
        }
    }

    #[test]
    fn check_options_rejects_bad_numbers() {
        let invalid = |change: &dyn Fn(&mut TrainOptions), expected: &str| {
            let mut candidate = options(3, Some(1e-5));
            change(&mut candidate);
            match check_options(&candidate) {
                Err(TrainError::Options(message)) => assert!(message.contains(expected), "{message}"),
                other => panic!("expected an error with {expected:?}, got {other:?}"),
            }
        };
        invalid(&|o| o.learning_rate = f64::NAN, "invalid learning rate");
        invalid(&|o| o.learning_rate = -1.0, "invalid learning rate");
        invalid(&|o| o.fine_learning_rate = 0.0, "invalid fine learning rate");
        invalid(&|o| o.final_learning_rate = Some(1e-2), "must not exceed the learning rate");
        invalid(&|o| o.warmup_patch_weight = f64::NAN, "invalid warm-up patch weight");
        invalid(&|o| o.epochs = 0, "at least 1 epoch");
        assert!(check_options(&options(3, Some(1e-3))).is_ok(), "a final rate equal to the start is a constant rate");
    }

    #[test]
    fn changed_options_name_both_values() {
        let stored = options(3, None);
        let mut new = options(9, Some(1e-5));
        new.covid_on_diseased_top = true;
        let changed = changed_options(&stored, &new);
        assert_eq!(changed, vec!["covid_on_diseased_top was false, now true".to_string(), "final_learning_rate was unset, now 0.00001".to_string()]);
        assert!(changed_options(&stored, &options(7, None)).is_empty(), "the epoch counts may change");
    }

    #[test]
    fn unknown_holdout_centre_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let entry = ManifestEntry { series: dir.path().join("a"), label: ScanLabel::Healthy, centre: "north".into(), patient_id: "p1".into(), infected_percent: None };
        let mut holdout = options(1, None);
        holdout.holdout_centres = vec!["nrth".into()];
        let run = dir.path().join("run");
        let result = train(&Manifest { entries: vec![entry] }, &holdout, &CardText::default(), &run, RunStart::New, &NoProgress);
        assert!(!run.exists(), "the run folder was created");
        match result {
            Err(TrainError::Options(message)) => {
                assert!(message.contains("\"nrth\""), "{message}");
                assert!(message.contains("\"north\""), "{message}");
            }
            other => panic!("expected an options error, got {:?}", other.err()),
        }
    }

    #[test]
    fn mean_error_follows_the_diseased_scans() {
        // Three healthy scans measured right and one diseased scan 9 points off: the
        // median hides the diseased scan, the mean does not.
        let mut errors = [0.0, 9.0, 0.0, 0.0];
        let (mean, median) = crate::metrics::mean_and_median(&mut errors);
        assert_eq!(mean, Some(2.25));
        assert_eq!(median, Some(0.0));
        assert_eq!(crate::metrics::mean_and_median(&mut []), (None, None));
    }

    #[test]
    fn missing_series_folder_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let reason = load_series(&dir.path().join("absent")).err().unwrap();
        assert!(reason.starts_with("series folder not found"), "{reason}");
    }

    #[test]
    fn series_inputs_skip_the_ground_truth() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b.dcm", "a.dcm", lungstream_phantom::GROUND_TRUTH_FILE, "notes.txt"] {
            fs::write(dir.path().join(name), b"x").unwrap();
        }
        // A folder of that name is not the phantom's file, and the reader searches it.
        fs::create_dir_all(dir.path().join("sub").join(lungstream_phantom::GROUND_TRUTH_FILE)).unwrap();
        let names: Vec<String> = series_inputs(dir.path()).unwrap().iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["a.dcm", "b.dcm", "notes.txt", "sub"]);
    }
}
