//! `lungstream serve SERVICE`: runs one service of the distributed pipeline in this
//! process, with the same configuration file and variables as its own binary
//! (`lungstream-ingest`, `lungstream-preprocess`, `lungstream-infer`, `lungstream-report`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Service {
    /// STOW-RS, C-STORE and the series assembler.
    Ingest,
    /// The series assembler alone (`ct.instances.v1` → `ct.series.v1`).
    Assemble,
    /// Series to lobe bundles (`ct.series.v1` → `ct.lobes.v1`).
    Preprocess,
    /// The networks (`ct.lobes.v1` → `ct.results.v1`).
    Infer,
    /// Study reports, PostgreSQL and the HTTP API (`ct.results.v1` → `ct.reports.v1`).
    Report,
}

#[derive(Args)]
pub struct ServeArgs {
    /// The service to run.
    #[arg(value_enum)]
    service: Service,
    /// TOML configuration file; `LUNGSTREAM__SECTION__KEY` variables override it.
    #[arg(long, env = "LUNGSTREAM_CONFIG")]
    config: Option<PathBuf>,
}

/// Name of the service in logs and traces.
pub fn service_name(args: &ServeArgs) -> &'static str {
    match args.service {
        Service::Ingest => "lungstream-ingest",
        Service::Assemble => "lungstream-assembler",
        Service::Preprocess => "lungstream-preprocess",
        Service::Infer => "lungstream-infer",
        Service::Report => "lungstream-report",
    }
}

pub fn run(args: &ServeArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(serve(args))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    use lungstream_runtime::config::load;
    let file = args.config.as_deref();
    let shutdown = lungstream_runtime::ops::shutdown_on_signals();
    match args.service {
        Service::Ingest | Service::Assemble => {
            let roles = match args.service {
                Service::Assemble => lungstream_ingest::service::Roles {
                    intake: false,
                    assembler: true,
                },
                _ => lungstream_ingest::service::Roles::ALL,
            };
            lungstream_ingest::service::start(load(file)?, roles, shutdown).await?.wait().await
        }
        Service::Preprocess => lungstream_preprocess::service::start(load(file)?, shutdown).await?.wait().await,
        Service::Infer => lungstream_infer_worker::start(load(file)?, shutdown).await?.wait().await,
        Service::Report => lungstream_report::service::start(load(file)?, shutdown).await?.wait().await,
    }
}
