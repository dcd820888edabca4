//! Training on small phantoms: the loss falls on a repeated batch, and a whole run writes
//! its files and resumes.

use std::path::Path;

use lungstream_infer::{Model, NetworkConfig};
use lungstream_phantom::{write_series, Label, PhantomSpec};
use lungstream_train::manifest::{Manifest, ManifestEntry};
use lungstream_train::trainer::{self, CardText, EpochRecord, NoProgress, RunStart, TrainOptions};
use lungstream_train::ScanLabel;

/// Writes a small phantom (128², 12 slices 20 mm apart) and returns its manifest entry.
fn phantom(dir: &Path, label: Label, seed: u64, centre: &str) -> ManifestEntry {
    let spec = PhantomSpec { slices: 12, slice_spacing_mm: 20.0, ..PhantomSpec::preset(label, seed).with_matrix(128, 128, 2.8) };
    let folder = dir.join(format!("{label:?}-{seed}"));
    let truth = write_series(&spec, &folder).expect("the phantom is written");
    ManifestEntry {
        series: folder,
        label: match label {
            Label::Healthy => ScanLabel::Healthy,
            Label::Covid => ScanLabel::Covid,
            Label::Other => ScanLabel::Other,
        },
        centre: centre.to_string(),
        patient_id: format!("patient-{seed}"),
        infected_percent: Some(truth.infected_percent),
    }
}

#[test]
fn loss_falls_on_a_repeated_batch() {
    tch::manual_seed(0);
    let dir = tempfile::tempdir().unwrap();
    let entries: Vec<ManifestEntry> = [Label::Healthy, Label::Covid, Label::Other].into_iter().enumerate().map(|(i, l)| phantom(dir.path(), l, 40 + i as u64, "a")).collect();
    let (scans, failed) = trainer::load_scans(&entries, &|_, _| {});
    assert!(failed.is_empty(), "{failed:?}");
    let model = Model::initialised(NetworkConfig::preset("narrow").unwrap(), 7).unwrap();
    let first_layer = |m: &Model| m.named_tensors()["diseased.vgg.conv1_1.weight"].copy();
    let before = first_layer(&model);
    let losses = trainer::repeat_batch(&model, &scans, 4, 1e-3, 20).unwrap();
    // The gradient reaches the first VGG layer (which runs on oneDNN tensors on the CPU).
    let change = (first_layer(&model) - before).abs().max().double_value(&[]);
    assert!(change > 1e-4, "conv1_1 moved by {change}");
    let first = losses[0].total;
    let last = losses[losses.len() - 1].total;
    eprintln!("losses: {:?}", losses.iter().map(|l| l.total).collect::<Vec<_>>());
    assert!(last < 0.8 * first, "loss went from {first} to {last}");
    assert!(losses.iter().all(|l| l.total.is_finite()));
}

#[test]
fn shared_features_copy_the_extractor_only() {
    let model = Model::initialised(NetworkConfig::preset("narrow").unwrap(), 7).unwrap();
    let tensors = |m: &Model| m.named_tensors().into_iter().map(|(k, v)| (k, v.copy())).collect::<std::collections::BTreeMap<_, _>>();
    let before = tensors(&model);
    assert!(!before["covid.vgg.conv1_1.weight"].equal(&before["diseased.vgg.conv1_1.weight"]), "the networks start alike");
    trainer::share_features(&model);
    let after = tensors(&model);
    let mut copied = 0;
    for (name, value) in &after {
        let shared = name.starts_with("covid.vgg.") || name.starts_with("covid.vicinity.");
        if shared {
            let source = name.replacen("covid.", "diseased.", 1);
            assert!(value.equal(&after[&source]), "{name} differs from {source}");
            copied += 1;
        } else {
            assert!(value.equal(&before[name]), "{name} changed");
        }
    }
    // Seven VGG and ten vicinity layers, each with a weight and a bias.
    assert_eq!(copied, 2 * (7 + 10));
}

#[test]
fn a_run_writes_its_files_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    // Ten patients per label, so that the stratified 81/9/10 split by patient gives each
    // part at least one scan.
    let mut entries = Vec::new();
    for (k, label) in [Label::Healthy, Label::Covid, Label::Other].into_iter().enumerate() {
        for i in 0..10u64 {
            entries.push(phantom(dir.path(), label, 100 * k as u64 + i, "a"));
        }
    }
    entries.push(phantom(dir.path(), Label::Covid, 999, "far"));
    let manifest = Manifest { entries };
    let mut options = TrainOptions::paper(NetworkConfig::preset("narrow").unwrap(), 1, 1);
    options.holdout_centres = vec!["far".into()];
    options.max_train_scans = Some(6);
    options.max_validation_scans = Some(2);
    options.slices_per_scan = 3;
    options.fine_slices_per_scan = 1;
    options.share_features_after = Some(1);
    let card = CardText { id: "test-run".into(), trained_on: "phantoms of a test".into(), notes: "Not for use.".into(), research_only: true };
    let run = dir.path().join("run");
    let summary = trainer::train(&manifest, &options, &card, &run, RunStart::New, &NoProgress).unwrap();
    assert_eq!(summary.train_scans, 6);
    for file in ["train.csv", "validation.csv", "test.csv", "heldout.csv", "checkpoint.safetensors", "best.safetensors", "state.json", "loss.png", "model.safetensors"] {
        assert!(run.join(file).is_file(), "{file} missing");
    }
    let heldout = Manifest::read(&run.join("heldout.csv")).unwrap();
    assert_eq!(heldout.entries.len(), 1);
    let lines = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().count();
    assert_eq!(lines, 2, "one line per epoch of each stage");
    let model = Model::load(&summary.model).unwrap();
    assert!(model.card().trained);
    assert!(model.card().research_only);
    assert_eq!(model.card().trained_on, "phantoms of a test");
    // The features were shared after the only stage 1 epoch, and stage 2 trains the fine
    // decoder alone, so they are still equal.
    let weights = model.named_tensors();
    assert!(weights["covid.vgg.conv3_3.weight"].equal(&weights["diseased.vgg.conv3_3.weight"]));
    assert!(weights["covid.vicinity.merge0.weight"].equal(&weights["diseased.vicinity.merge0.weight"]));

    // A new run does not replace the finished one.
    let second = trainer::train(&manifest, &options, &card, &run, RunStart::New, &NoProgress);
    assert!(matches!(second, Err(trainer::TrainError::RunExists(_))), "{:?}", second.err());
    assert!(run.join("model.safetensors").is_file());

    // A changed batch size cannot resume; one more stage 2 epoch can.
    options.scans_per_batch = 3;
    let changed = trainer::train(&manifest, &options, &card, &run, RunStart::Resume, &NoProgress);
    assert!(changed.is_err(), "changed options must not resume silently");
    options.scans_per_batch = 6;
    options.fine_epochs = 2;
    let again = trainer::train(&manifest, &options, &card, &run, RunStart::Resume, &NoProgress).unwrap();
    assert_eq!(again.train_scans, 6);
    let records: Vec<EpochRecord> = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let stages: Vec<(u8, usize)> = records.iter().map(|r| (r.stage, r.epoch)).collect();
    assert_eq!(stages, vec![(1, 1), (2, 1), (2, 2)]);
}
