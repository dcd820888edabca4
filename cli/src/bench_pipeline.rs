//! `lungstream bench pipeline`: throughput of the distributed pipeline against embedded
//! `analyze` on the same phantom series, in the same run. The services run in this process
//! and talk through the real broker, object store and PostgreSQL. A second pipeline run
//! with two preprocess workers is compared with the first, which has one.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use lungstream_dicom::{read_volume, ReaderConfig};
use lungstream_infer::{infer_series, InferOptions, Model, NetworkConfig};
use lungstream_ingest::client::{upload, UploadOptions};
use lungstream_phantom::{write_series, Label, PhantomSpec};
use lungstream_report::{build_report, write_report, ReportInputs, DEFAULT_WORST_SLICES};
use lungstream_runtime::kafka::KafkaConsumer;
use lungstream_runtime::tenants::Tenant;
use lungstream_schemas::events::{topics, ReportEvent};
use lungstream_schemas::report::{ModelSummary, Timings};
use serde_json::json;

use crate::local_pipeline::{Endpoints, LocalPipeline, PipelineOptions};

#[derive(Args)]
pub struct PipelineBenchArgs {
    /// Number of phantom series (studies) in the batch.
    #[arg(long, default_value_t = 16)]
    series: usize,
    /// Image matrix of the phantoms (rows = columns).
    #[arg(long, default_value_t = 256)]
    matrix: u16,
    /// Slices per phantom series.
    #[arg(long, default_value_t = 60)]
    slices: u32,
    /// Keep the phantoms here (written when missing) instead of a temporary folder.
    #[arg(long)]
    phantoms: Option<PathBuf>,
    /// Object store of the pipeline runs: `s3` (the SeaweedFS server of
    /// `scripts/services.sh`) or `file` (a local folder, as one node with a shared volume
    /// would use).
    #[arg(long, default_value = "s3", value_parser = ["s3", "file"])]
    store: String,
    /// Threads of each preprocess worker (0: one per core).
    #[arg(long, default_value_t = 0)]
    preprocess_threads: usize,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

const TOKEN: &str = "bench-pipeline-token-0123456789";

pub fn run(args: &PipelineBenchArgs) -> anyhow::Result<ExitCode> {
    if args.series == 0 {
        bail!("--series must be at least 1");
    }
    if let Some(path) = &args.json {
        std::fs::write(path, "").with_context(|| format!("cannot write {}", path.display()))?;
    }
    let endpoints = Endpoints::local("bench");
    endpoints.check()?;
    let temporary = tempfile::tempdir()?;
    let folder = args.phantoms.clone().unwrap_or_else(|| temporary.path().join("phantoms"));
    let series = write_phantoms(&folder, args)?;
    let files: usize = series.iter().map(|s| dicom_files(s).len()).sum();
    eprintln!("bench: {} phantom series, {files} files, in {}", series.len(), folder.display());

    let embedded = embedded_seconds(&series, temporary.path())?;
    eprintln!("bench: embedded analyze took {embedded:.2} s");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let store = (args.store == "file").then(|| temporary.path().join("store"));
    let one = runtime.block_on(pipeline_seconds(&series, 1, store.as_deref(), args.preprocess_threads))?;
    eprintln!("bench: pipeline with 1 preprocess worker took {one:.2} s");
    let two = runtime.block_on(pipeline_seconds(&series, 2, store.as_deref(), args.preprocess_threads))?;
    eprintln!("bench: pipeline with 2 preprocess workers took {two:.2} s");

    let n = series.len() as f64;
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    println!(
        "Pipeline benchmark: {} phantom series of {} slices of {}x{} ({files} files), {cores} cores, untrained narrow networks on the CPU, object store: {}",
        series.len(),
        args.slices,
        args.matrix,
        args.matrix,
        args.store
    );
    println!();
    println!("| run | seconds | series/hour | throughput vs embedded |");
    println!("|---|---|---|---|");
    for (name, seconds) in [("embedded analyze (one process, no broker)", embedded), ("pipeline, 1 preprocess worker", one), ("pipeline, 2 preprocess workers", two)] {
        println!("| {name} | {seconds:.2} | {:.0} | {:.2} |", n * 3600.0 / seconds, embedded / seconds);
    }
    println!();
    println!("2 preprocess workers against 1: {:.2}x the throughput", one / two);
    if let Some(path) = &args.json {
        let report = json!({
            "series": series.len(),
            "slices": args.slices,
            "matrix": args.matrix,
            "files": files,
            "cores": cores,
            "store": args.store,
            "preprocess_threads": args.preprocess_threads,
            "embedded_s": embedded,
            "pipeline_one_worker_s": one,
            "pipeline_two_workers_s": two,
            "pipeline_vs_embedded": embedded / one,
            "two_workers_vs_one": one / two,
        });
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n").with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes the phantom series (a mix of healthy, COVID-19 and other disease), one folder
/// each, unless the folder already contains them.
fn write_phantoms(folder: &Path, args: &PipelineBenchArgs) -> anyhow::Result<Vec<PathBuf>> {
    let labels = [Label::Healthy, Label::Covid, Label::Other];
    let mut series = Vec::new();
    for i in 0..args.series {
        let dir = folder.join(format!("series-{i:03}"));
        if dicom_files(&dir).is_empty() {
            let mut spec = PhantomSpec::preset(labels[i % labels.len()], 1000 + i as u64).with_matrix(args.matrix, args.matrix, 358.0 / f64::from(args.matrix));
            spec.slices = args.slices;
            spec.slice_spacing_mm = 300.0 / f64::from(args.slices.max(1));
            write_series(&spec, &dir).with_context(|| format!("cannot write a phantom into {}", dir.display()))?;
        }
        series.push(dir);
    }
    Ok(series)
}

fn dicom_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "dcm")).collect())
        .unwrap_or_default();
    files.sort();
    files
}

/// Analyses every series one after the other, as `lungstream analyze` does.
fn embedded_seconds(series: &[PathBuf], scratch: &Path) -> anyhow::Result<f64> {
    let mut model = Model::initialised(NetworkConfig::preset("narrow").expect("a preset"), lungstream_infer::model::DEFAULT_SEED)?;
    model.to_device(tch::Device::Cpu);
    let card = model.card().clone();
    let summary = ModelSummary {
        id: card.id.clone(),
        version: card.version.clone(),
        config: card.config.name().to_string(),
        trained: card.trained,
        trained_on: card.trained_on.clone(),
        research_only: card.research_only,
        device: "cpu".into(),
    };
    let started = Instant::now();
    for (i, dir) in series.iter().enumerate() {
        let (volume, _) = read_volume(std::slice::from_ref(dir), &ReaderConfig::default())?;
        let preprocessed = lungstream_preprocess::preprocess(&volume, &lungstream_preprocess::PreprocessConfig::default())?;
        let inference = infer_series(&model, &preprocessed, InferOptions::default(), &mut |_| {})?;
        let rendered = build_report(&ReportInputs {
            slices: &volume,
            patient_key: volume.meta.patient_key.clone(),
            facts: &preprocessed.facts,
            inference: &inference,
            model: summary.clone(),
            timings: Timings::default(),
            worst_slices: DEFAULT_WORST_SLICES,
        });
        write_report(&scratch.join(format!("report-{i}")), &rendered)?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Starts the services with fresh topics, store folder and database, sends the series one
/// after another by STOW-RS, and returns the seconds from the first upload to the last
/// report.
async fn pipeline_seconds(series: &[PathBuf], preprocess_workers: usize, store: Option<&Path>, preprocess_threads: usize) -> anyhow::Result<f64> {
    let mut endpoints = Endpoints::local(&format!("bench-{preprocess_workers}"));
    if let Some(folder) = store {
        let folder = folder.join(format!("run-{preprocess_workers}"));
        std::fs::create_dir_all(&folder)?;
        endpoints.store_url = format!("file://{}", folder.display());
    }
    let options = PipelineOptions {
        tenants: vec![Tenant {
            hospital: "bench".into(),
            tokens: vec![TOKEN.into()],
            ae_titles: Vec::new(),
        }],
        patient_key_secret: "bench".into(),
        preprocess_workers,
        preprocess_threads,
        infer_threads: 0,
        quiet_period_s: 60.0,
        // Embedded analyze runs on the CPU here, so the pipeline does too.
        device: "cpu".into(),
    };
    let pipeline = LocalPipeline::start(&endpoints, &options).await?;
    // The consumer joins before the first upload, so no report is missed.
    let mut consumer = KafkaConsumer::join(&endpoints.kafka, "bench-reader", &[topics::REPORTS])?;
    let started = Instant::now();
    // The series arrive one after another, as from a scanner, while the earlier ones are
    // already being processed.
    let url = format!("http://{}", pipeline.ingest_address);
    let folders = series.to_vec();
    let sender = tokio::spawn(async move {
        for dir in folders {
            let summary = upload(&dicom_files(&dir), &UploadOptions::new(&url, TOKEN), |_| {}).await?;
            if !summary.rejected.is_empty() {
                bail!("ingest rejected {} phantom files", summary.rejected.len());
            }
        }
        Ok(())
    });
    let mut studies = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(1800);
    while studies.len() < series.len() {
        if Instant::now() > deadline {
            bail!("only {} of {} reports arrived within 30 minutes", studies.len(), series.len());
        }
        if let Ok(Ok(message)) = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await {
            let event: ReportEvent = serde_json::from_slice(&message.payload)?;
            if event.status != "analysed" {
                bail!("a phantom study was rejected: {:?}", event.reason);
            }
            studies.insert(event.study_uid);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    sender.await??;
    consumer.close();
    pipeline.stop().await?;
    Ok(seconds)
}
