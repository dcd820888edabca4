//! `lungstream ingest`: sends DICOM files to a running ingest service, by STOW-RS (the
//! default) or by C-STORE.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use lungstream_ingest::client::{upload, UploadOptions};

#[derive(Args)]
pub struct IngestArgs {
    /// Base URL of the ingest service's HTTP API (STOW-RS), e.g. http://127.0.0.1:8080.
    #[arg(long, required_unless_present = "dicom")]
    url: Option<String>,
    /// Bearer token of the hospital (STOW-RS).
    #[arg(long, env = "LUNGSTREAM_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Send by DICOM C-STORE to HOST:PORT instead of STOW-RS.
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "url")]
    dicom: Option<String>,
    /// Calling AE title for C-STORE; the service maps it to the hospital.
    #[arg(long, default_value = "LUNGSTREAM_CLI")]
    calling_ae: String,
    /// Called AE title for C-STORE (the service's own).
    #[arg(long, default_value = "LUNGSTREAM")]
    called_ae: String,
    /// Do not mark the series complete at the end (STOW-RS); the service then waits for
    /// its quiet period.
    #[arg(long)]
    no_commit: bool,
    /// Largest request body in MiB; files are sent in batches of at most this size.
    #[arg(long, default_value_t = 32)]
    batch_mib: usize,
    /// DICOM files and folders (searched recursively).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
}

/// Lists the files under `inputs`, folders recursively, sorted by path.
fn collect_files(inputs: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    crate::check_inputs(inputs)?;
    let mut files = Vec::new();
    for input in inputs {
        for entry in walkdir::WalkDir::new(input).follow_links(true) {
            let entry = entry?;
            if entry.file_type().is_file() {
                files.push(entry.into_path());
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Runs `lungstream ingest`. Exits with status 4 when the service rejected some files.
pub fn run(args: &IngestArgs) -> anyhow::Result<ExitCode> {
    let files = collect_files(&args.inputs)?;
    if files.is_empty() {
        anyhow::bail!("no files found under the inputs");
    }
    let rejected: Vec<(PathBuf, String)> = if let Some(address) = &args.dicom {
        // DIMSE carries data sets with their UIDs: files without a readable DICOM Part 10
        // header are listed here instead of being sent.
        let mut dicom = Vec::new();
        let mut rejected: Vec<(PathBuf, String)> = Vec::new();
        for file in &files {
            match lungstream_ingest::cstore::check_sendable(file) {
                Ok(()) => dicom.push(file.clone()),
                Err(error) => rejected.push((file.clone(), format!("invalid_dicom: not sent: {error:#}"))),
            }
        }
        if !dicom.is_empty() {
            let outcomes = lungstream_ingest::cstore::send_files(address, &args.calling_ae, &args.called_ae, &dicom).map_err(|e| {
                if format!("{e:#}").contains("calling AE title not recognized") {
                    e.context(format!("the service does not know the calling AE title {:?}: pass --calling-ae with a title listed for your hospital", args.calling_ae))
                } else {
                    e
                }
            })?;
            let stored = outcomes.iter().filter(|o| o.status == 0).count();
            eprintln!("{stored} of {} files stored by C-STORE; the association was released.", files.len());
            rejected.extend(
                outcomes
                    .into_iter()
                    .filter(|o| o.status != 0)
                    .map(|o| (o.file, format!("status 0x{:04X}: {}", o.status, o.error_comment.unwrap_or_default()))),
            );
        }
        rejected
    } else {
        let url = args.url.as_deref().expect("clap requires --url without --dicom");
        if !url.starts_with("http://") && !url.starts_with("https://") {
            anyhow::bail!("--url must start with http:// or https://, for example http://127.0.0.1:8080 (got {url:?})");
        }
        let token = args
            .token
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("a token is required: pass --token or set LUNGSTREAM_TOKEN"))?;
        let mut options = UploadOptions::new(url, token);
        options.commit = !args.no_commit;
        options.batch_bytes = args.batch_mib.max(1) * 1024 * 1024;
        let bar = ProgressBar::new(files.len() as u64);
        bar.set_style(ProgressStyle::with_template("{bar:40} {pos}/{len} files {elapsed}").expect("a valid template"));
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let summary = runtime.block_on(upload(&files, &options, |done| bar.set_position(done as u64)))?;
        bar.finish_and_clear();
        eprintln!(
            "{} of {} files stored by STOW-RS; {} series committed.",
            summary.stored,
            files.len(),
            summary.committed.len()
        );
        summary.rejected
    };
    for (file, reason) in &rejected {
        println!("rejected\t{}\t{reason}", file.display());
    }
    Ok(if rejected.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(4) })
}
