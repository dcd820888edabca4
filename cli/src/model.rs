//! `lungstream model`: write initial weights, show a model card.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use lungstream_infer::model::DEFAULT_SEED;
use lungstream_infer::{Model, NetworkConfig};

#[derive(Args)]
pub struct ModelArgs {
    #[command(subcommand)]
    command: ModelCommand,
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Write deterministic untrained weights (He initialisation) with their model card.
    Init {
        /// Output file (.safetensors).
        #[arg(long)]
        out: PathBuf,
        /// Network widths: narrow or full.
        #[arg(long, default_value = "narrow")]
        config: String,
        /// Seed of the initial weights.
        #[arg(long, default_value_t = DEFAULT_SEED)]
        seed: u64,
    },
    /// Print a model file's card as JSON, after checking its weights against it.
    Show {
        file: PathBuf,
    },
}

pub fn run(args: &ModelArgs) -> anyhow::Result<ExitCode> {
    match &args.command {
        ModelCommand::Init { out, config, seed } => {
            let config = NetworkConfig::preset(config).with_context(|| format!("unknown configuration {config:?}: expected narrow or full"))?;
            let model = Model::initialised(config, *seed)?;
            model.save(out)?;
            eprintln!("wrote {} ({} weights, version {})", out.display(), model.parameters(), model.card().version);
        }
        ModelCommand::Show { file } => {
            let model = Model::load(file)?;
            println!("{}", serde_json::to_string_pretty(model.card())?);
        }
    }
    Ok(ExitCode::SUCCESS)
}
