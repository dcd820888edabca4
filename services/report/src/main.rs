//! `lungstream-report`: the report service (results consumer, report files, HTTP API).

use std::path::PathBuf;

use clap::Parser;
use lungstream_report::config::ReportConfig;
use lungstream_report::service;

/// Records series results in PostgreSQL, writes each study's report to the object store,
/// publishes report events and serves the worklist API.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// TOML configuration file; `LUNGSTREAM__SECTION__KEY` variables override it.
    #[arg(long, env = "LUNGSTREAM_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _telemetry = lungstream_runtime::telemetry::init("lungstream-report");
    let config: ReportConfig = lungstream_runtime::config::load(args.config.as_deref())?;
    let shutdown = lungstream_runtime::ops::shutdown_on_signals();
    let running = service::start(config, shutdown).await?;
    running.wait().await
}
