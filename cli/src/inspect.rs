//! `lungstream inspect`: what the reader finds under a path, without decoding pixels.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use lungstream_dicom::{Inventory, ReaderConfig};
use serde_json::json;

#[derive(Args)]
pub struct InspectArgs {
    /// DICOM files or folders (searched recursively).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Fewest slices a stack needs to be analysed.
    #[arg(long, default_value_t = ReaderConfig::default().min_slices)]
    min_slices: usize,
    /// How many skipped files to list per reason (text output).
    #[arg(long, default_value_t = 5)]
    show_skipped: usize,
}

/// Exit status when no stack under the inputs can be analysed.
const NOTHING_TO_ANALYSE: u8 = 3;

pub fn run(args: &InspectArgs) -> anyhow::Result<ExitCode> {
    crate::check_inputs(&args.paths)?;
    let config = ReaderConfig {
        min_slices: args.min_slices,
        ..ReaderConfig::default()
    };
    let inventory = Inventory::scan(&args.paths, &config);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&inventory_json(&inventory))?);
    } else {
        print_text(&inventory, args.show_skipped);
    }
    Ok(if inventory.selected().is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(NOTHING_TO_ANALYSE)
    })
}

fn print_text(inventory: &Inventory, show_skipped: usize) {
    println!(
        "{} file(s) read, {} candidate stack(s), {} file(s) skipped, {} duplicate(s)",
        inventory.files_seen,
        inventory.candidates.len(),
        inventory.skipped.len(),
        inventory.duplicates.len()
    );
    for (index, candidate) in inventory.candidates.iter().enumerate() {
        let status = match (&candidate.problem, index) {
            (None, 0) => "ANALYSE".to_string(),
            (None, _) => "other".to_string(),
            (Some(problem), _) => format!("rejected: {}", problem.reason()),
        };
        println!("\n[{status}] {}", candidate.summary());
        println!("  study {}", candidate.study_uid);
        if let (Some(first), Some(last)) = (candidate.positions_mm.first(), candidate.positions_mm.last()) {
            println!("  positions {first:.2} .. {last:.2} mm (feet to head)");
        }
        if let Some(problem) = &candidate.problem {
            println!("  {problem}");
        }
    }
    if inventory.selected().is_none() {
        println!("\nNothing can be analysed.");
    }

    let mut by_reason: BTreeMap<String, Vec<&lungstream_dicom::SkippedFile>> = BTreeMap::new();
    for skipped in &inventory.skipped {
        by_reason.entry(skipped.reason.to_string()).or_default().push(skipped);
    }
    for (reason, files) in by_reason {
        println!("\nskipped ({reason}): {} file(s)", files.len());
        for file in files.iter().take(show_skipped) {
            println!("  {}", file.message);
        }
        if files.len() > show_skipped {
            println!("  ... and {} more", files.len() - show_skipped);
        }
    }
}

fn inventory_json(inventory: &Inventory) -> serde_json::Value {
    let candidates: Vec<_> = inventory
        .candidates
        .iter()
        .enumerate()
        .map(|(index, c)| {
            json!({
                "selected": index == 0 && c.problem.is_none(),
                "study_uid": c.study_uid,
                "series_uid": c.series_uid,
                "slices": c.slices.len(),
                "rows": c.rows,
                "columns": c.columns,
                "pixel_spacing_mm": c.pixel_spacing,
                "slice_spacing_mm": c.median_spacing_mm,
                "coverage_mm": c.coverage_mm(),
                "kernel": c.kernel,
                "slice_thickness_mm": c.slice_thickness_mm,
                "problem": c.problem.as_ref().map(|p| json!({
                    "reason": p.reason(),
                    "message": p.to_string(),
                })),
            })
        })
        .collect();
    json!({
        "files_seen": inventory.files_seen,
        "candidates": candidates,
        "skipped": inventory.skipped,
        "duplicates": inventory.duplicates,
    })
}
