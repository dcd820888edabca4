//! `lungstream-preprocess`: the preprocess service (`ct.series.v1` → `ct.lobes.v1`).

use std::path::PathBuf;

use clap::Parser;
use lungstream_preprocess::service::{self, PreprocessServiceConfig};

/// Turns complete series into lobe bundles for the networks.
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
    let _telemetry = lungstream_runtime::telemetry::init("lungstream-preprocess");
    let config: PreprocessServiceConfig = lungstream_runtime::config::load(args.config.as_deref())?;
    let shutdown = lungstream_runtime::ops::shutdown_on_signals();
    service::start(config, shutdown).await?.wait().await
}
