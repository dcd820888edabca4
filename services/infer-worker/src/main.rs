//! `lungstream-infer`: the infer service (`ct.lobes.v1` → `ct.results.v1`).

use std::path::PathBuf;

use clap::Parser;
use lungstream_infer_worker::InferServiceConfig;

/// Runs the networks over lobe bundles and publishes each series' result.
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
    let _telemetry = lungstream_runtime::telemetry::init("lungstream-infer");
    let config: InferServiceConfig = lungstream_runtime::config::load(args.config.as_deref())?;
    let shutdown = lungstream_runtime::ops::shutdown_on_signals();
    lungstream_infer_worker::start(config, shutdown).await?.wait().await
}
