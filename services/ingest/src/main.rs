//! `lungstream-ingest`: the ingest service (STOW-RS, C-STORE, series assembly).

use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use lungstream_ingest::config::IngestConfig;
use lungstream_ingest::service::{self, Roles};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Role {
    /// Intake (STOW-RS, C-STORE) and the series assembler.
    All,
    /// STOW-RS and C-STORE only.
    Intake,
    /// The series assembler only.
    Assembler,
}

/// Receives DICOM instances, stores them and announces complete series on Kafka.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// TOML configuration file; `LUNGSTREAM__SECTION__KEY` variables override it.
    #[arg(long, env = "LUNGSTREAM_CONFIG")]
    config: Option<PathBuf>,
    /// Parts to run in this process.
    #[arg(long, value_enum, default_value = "all")]
    role: Role,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _telemetry = lungstream_runtime::telemetry::init("lungstream-ingest");
    let config: IngestConfig = lungstream_runtime::config::load(args.config.as_deref())?;
    let roles = match args.role {
        Role::All => Roles::ALL,
        Role::Intake => Roles {
            intake: true,
            assembler: false,
        },
        Role::Assembler => Roles {
            intake: false,
            assembler: true,
        },
    };
    let shutdown = lungstream_runtime::ops::shutdown_on_signals();
    let running = service::start(config, roles, shutdown).await?;
    running.wait().await
}
