//! The `lungstream` command.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

// Preprocessing allocates and frees many slice-sized buffers; the system allocator
// returns them to the kernel and page-faults them back in, mimalloc keeps them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod analyze;
mod bench;
mod bench_pipeline;
mod dataset;
mod ingest;
mod inspect;
mod local_pipeline;
mod model;
mod phantom;
mod serve;
mod tail;
mod train;

#[derive(Parser)]
#[command(
    name = "lungstream",
    version,
    about = "Chest CT (DICOM) analysis for COVID-19 pneumonia: analyse series, inspect folders, write phantoms, benchmark"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Analyse a chest CT series: read, preprocess, run both networks, and write
    /// report.json, report.html and overlay images of the worst slices.
    Analyze(analyze::AnalyzeArgs),
    /// List the CT series found under the given files and folders: which stack would be
    /// analysed, the other candidates, and why other files were skipped. Exits with
    /// status 3 when nothing can be analysed.
    Inspect(inspect::InspectArgs),
    /// Write initial weights or show a model file's card.
    Model(model::ModelArgs),
    /// Write a synthetic chest CT series as DICOM files, with its ground truth as JSON.
    Phantom(phantom::PhantomArgs),
    /// Measure a stage's speed against a reference implementation in the same run.
    Bench(bench::BenchArgs),
    /// Train both networks from a manifest of scans labelled healthy, covid or other
    /// (weak supervision: no lesion outlines needed).
    Train(train::TrainArgs),
    /// Evaluate a model on a manifest: accuracy, sensitivity, specificity, ROC AUC and
    /// calibration per centre, as JSON, markdown and a ROC chart.
    Evaluate(train::EvaluateArgs),
    /// Write data sets for training and evaluation, with their manifests.
    Dataset(dataset::DatasetArgs),
    /// Send DICOM files to a running ingest service (STOW-RS or C-STORE). Exits with
    /// status 4 when the service rejected some files, and lists them with the reasons.
    Ingest(ingest::IngestArgs),
    /// Run one service of the distributed pipeline (ingest, assemble, preprocess, infer
    /// or report) against Kafka, the object store and, for report, PostgreSQL.
    Serve(serve::ServeArgs),
    /// Print the events of a topic as JSON lines (a group of its own, nothing committed):
    /// `lungstream tail reports --brokers HOST:PORT`.
    Tail(tail::TailArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Services log as their own binaries do, with trace context for Kafka headers, and
    // export their spans by OTLP when asked to. The guard lives until the service stops.
    let _telemetry = match &cli.command {
        Command::Serve(args) => Some(lungstream_runtime::telemetry::init(serve::service_name(args))),
        _ => {
            init_logging();
            None
        }
    };
    // The reader catches codec panics on corrupt pixel data and reports them as
    // `decode_failed`. Each panic is logged as one line instead of a backtrace.
    std::panic::set_hook(Box::new(|info| tracing::error!("Internal error: {info}")));
    let result = match cli.command {
        Command::Analyze(args) => analyze::run(&args),
        Command::Inspect(args) => inspect::run(&args),
        Command::Model(args) => model::run(&args),
        Command::Phantom(args) => phantom::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Train(args) => train::run_train(&args),
        Command::Evaluate(args) => train::run_evaluate(&args),
        Command::Dataset(args) => dataset::run(&args),
        Command::Ingest(args) => ingest::run(&args),
        Command::Serve(args) => serve::run(&args),
        Command::Tail(args) => tail::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr; `LUNGSTREAM_LOG` (or `RUST_LOG`) sets the filter. By default the
/// command's own steps show at info level. Of the DICOM crates only errors show: they
/// warn about every odd attribute they tolerate, and the reader reports what matters as
/// reason codes.
fn init_logging() {
    let filter = std::env::var("LUNGSTREAM_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "warn,lungstream=info,dicom_parser=error,dicom_object=error,dicom_encoding=error".to_string());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Checks that every input path exists, so a typo is reported as such rather than as an
/// empty folder.
pub(crate) fn check_inputs(paths: &[PathBuf]) -> anyhow::Result<()> {
    for path in paths {
        std::fs::metadata(path).with_context(|| format!("cannot read input {}", path.display()))?;
    }
    Ok(())
}
