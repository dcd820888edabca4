//! `lungstream inspect`: what the reader finds under a path, and whether the preferred
//! stack loads.

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
    /// Minimum number of slices a stack needs to be analysed.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    min_slices: u32,
    /// Only read headers: skip decoding the preferred stack, so a stack whose pixels or
    /// values turn out unusable is still listed as the one to analyse.
    #[arg(long)]
    headers_only: bool,
    /// How many skipped files to list per reason (text output).
    #[arg(long, default_value_t = 5)]
    show_skipped: usize,
}

/// Exit status when no stack under the inputs can be analysed.
const NOTHING_TO_ANALYSE: u8 = 3;

pub fn run(args: &InspectArgs) -> anyhow::Result<ExitCode> {
    crate::check_inputs(&args.paths)?;
    let config = ReaderConfig {
        min_slices: args.min_slices as usize,
        ..ReaderConfig::default()
    };
    let mut inventory = Inventory::scan(&args.paths, &config);
    if !args.headers_only {
        // Decoding moves past stacks that fail to load; their error becomes their problem.
        let _ = inventory.load_selected(&config);
    }
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
    let selected = inventory.selected().map(|c| c as *const _);
    for candidate in &inventory.candidates {
        let status = match &candidate.problem {
            None if selected == Some(candidate as *const _) => "ANALYSE".to_string(),
            None => "other".to_string(),
            Some(problem) => format!("rejected: {}", problem.reason()),
        };
        println!("\n[{status}] {}", candidate.summary());
        println!("  study {}", candidate.study_uid);
        if let Some(folder) = candidate.slices.first().and_then(|s| s.path.parent()) {
            println!("  in {}", folder.display());
        }
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
    let mut studies: Vec<&str> = inventory.candidates.iter().map(|c| c.study_uid.as_str()).collect();
    studies.sort_unstable();
    studies.dedup();
    if studies.len() > 1 {
        println!(
            "\nNote: {} studies under the inputs; one stack is chosen across all of them. Inspect one study's folder at a time to see each.",
            studies.len()
        );
    }
    if !inventory.duplicates.is_empty() {
        println!("\nduplicates (same SOP Instance UID): {} file(s)", inventory.duplicates.len());
        for duplicate in inventory.duplicates.iter().take(show_skipped) {
            println!("  {} repeats {}", duplicate.path.display(), duplicate.original.display());
        }
        if inventory.duplicates.len() > show_skipped {
            println!("  ... and {} more", inventory.duplicates.len() - show_skipped);
        }
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
    let selected = inventory.selected().map(|c| c as *const _);
    let candidates: Vec<_> = inventory
        .candidates
        .iter()
        .map(|c| {
            json!({
                "selected": selected == Some(c as *const _),
                "folder": c.slices.first().and_then(|s| s.path.parent()),
                "slice_positions_mm": c.positions_mm,
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
