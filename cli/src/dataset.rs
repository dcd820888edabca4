//! `lungstream dataset`: data sets for training and evaluation.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::Context;
use clap::builder::TypedValueParser;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use lungstream_train::manifest::Manifest;
use lungstream_train::phantoms::{generate, DatasetOptions, DEFAULT_SCANS, DEFAULT_SEED, MANIFEST_FILE};
use lungstream_train::ScanLabel;

#[derive(Args)]
pub struct DatasetArgs {
    #[command(subcommand)]
    command: DatasetCommand,
}

#[derive(Subcommand)]
enum DatasetCommand {
    /// Write the phantom training set: synthetic chest CT series from five imaginary
    /// centres with different scanner settings, one folder per series
    /// (OUT/<centre>/<label>-<NNNN>), and OUT/manifest.csv with the labels, patients and
    /// true infected shares.
    Phantoms(PhantomsArgs),
}

#[derive(Args)]
struct PhantomsArgs {
    /// Output folder (created if missing); it must be empty unless --force is given.
    #[arg(long)]
    out: PathBuf,
    /// Number of scans, spread evenly over the centres and labels.
    #[arg(long, default_value_t = DEFAULT_SCANS, value_parser = clap::value_parser!(u64).range(1..).map(|v| v as usize))]
    scans: usize,
    /// Seed of every random choice; the same seed and number of scans give the same files.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    seed: u64,
    /// Worker threads [default: one per core].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1024).map(|v| v as usize))]
    threads: Option<usize>,
    /// Write into a non-empty output folder: the series folders of this set are deleted
    /// and rewritten, manifest.csv is replaced, and other files are kept.
    #[arg(long)]
    force: bool,
}

pub fn run(args: &DatasetArgs) -> anyhow::Result<ExitCode> {
    match &args.command {
        DatasetCommand::Phantoms(args) => run_phantoms(args),
    }
}

fn run_phantoms(args: &PhantomsArgs) -> anyhow::Result<ExitCode> {
    check_output_folder(&args.out, args.force)?;
    let options = DatasetOptions {
        scans: args.scans,
        seed: args.seed,
        threads: args.threads.unwrap_or(0),
    };
    tracing::info!(out = %args.out.display(), scans = options.scans, seed = options.seed, "Writing the phantom data set.");

    let started = Instant::now();
    let bar = ProgressBar::new(options.scans as u64).with_style(
        ProgressStyle::with_template("phantoms [{bar:30}] {pos}/{len} scans, {eta} left").expect("a valid template").progress_chars("=> "),
    );
    // Without a terminal the bar is hidden, so every tenth of the scans is logged instead.
    let logged_tenths = AtomicUsize::new(0);
    let progress = |done: usize, total: usize| {
        bar.set_position(done as u64);
        let tenth = 10 * done / total.max(1);
        if bar.is_hidden() && logged_tenths.fetch_max(tenth, Ordering::Relaxed) < tenth {
            tracing::info!(done, total, "Phantoms written.");
        }
    };
    let manifest = generate(&args.out, &options, &progress).with_context(|| format!("failed to write the phantom data set to {}", args.out.display()))?;
    bar.finish_and_clear();
    tracing::info!(scans = manifest.entries.len(), seconds = started.elapsed().as_secs_f64(), "Phantom data set written.");

    print_summary(&manifest, &args.out.join(MANIFEST_FILE));
    Ok(ExitCode::SUCCESS)
}

/// Rejects an output path that is a file, or a folder with entries unless `force`.
fn check_output_folder(out: &Path, force: bool) -> anyhow::Result<()> {
    if out.is_file() {
        anyhow::bail!("--out {} is a file; give a folder", out.display());
    }
    if !out.exists() || force {
        return Ok(());
    }
    let mut entries = std::fs::read_dir(out).with_context(|| format!("failed to list output folder {}", out.display()))?;
    if entries.next().is_some() {
        anyhow::bail!(
            "output folder {} is not empty; choose another folder or pass --force to replace the series folders of this set in it",
            out.display()
        );
    }
    Ok(())
}

/// Prints the manifest's path and a table of scans per centre and label.
fn print_summary(manifest: &Manifest, path: &Path) {
    let labels = [ScanLabel::Healthy, ScanLabel::Covid, ScanLabel::Other];
    // Centres in the order of their first scan, which is the order of `centres()`.
    let mut counts: Vec<(&str, [usize; 3])> = Vec::new();
    let mut patients = HashSet::new();
    for entry in &manifest.entries {
        let row = match counts.iter().position(|(centre, _)| *centre == entry.centre) {
            Some(position) => &mut counts[position].1,
            None => {
                counts.push((entry.centre.as_str(), [0; 3]));
                &mut counts.last_mut().expect("a row was just pushed").1
            }
        };
        let column = labels.iter().position(|&label| label == entry.label).expect("every label is listed");
        row[column] += 1;
        patients.insert(entry.patient_id.as_str());
    }

    println!("manifest: {} ({} scans of {} patients)", path.display(), manifest.entries.len(), patients.len());
    println!("{:<12} {:>8} {:>8} {:>8} {:>8}", "centre", "healthy", "covid", "other", "total");
    let mut totals = [0usize; 3];
    for (centre, row) in &counts {
        println!("{:<12} {:>8} {:>8} {:>8} {:>8}", centre, row[0], row[1], row[2], row.iter().sum::<usize>());
        for (total, count) in totals.iter_mut().zip(row) {
            *total += count;
        }
    }
    println!("{:<12} {:>8} {:>8} {:>8} {:>8}", "all", totals[0], totals[1], totals[2], totals.iter().sum::<usize>());
}
