//! `lungstream phantom`: synthetic chest CT series for tests and demos.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

#[derive(Args)]
pub struct PhantomArgs {
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(_args: &PhantomArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("phantom: not wired yet")
}
