//! Preprocesses a DICOM series and prints its facts. With a phantom's ground_truth.json
//! beside the files, it also compares lung volume and the model-free infected share with the
//! truth.
//!
//! `cargo run --release -p lungstream-preprocess --example preprocess_stats -- DIR`

use std::path::PathBuf;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: preprocess_stats DIR");
        std::process::exit(2);
    };
    let config = lungstream_dicom::ReaderConfig {
        min_slices: 1,
        ..Default::default()
    };
    let start = std::time::Instant::now();
    let (volume, _) = lungstream_dicom::read_volume(std::slice::from_ref(&dir), &config).unwrap_or_else(|e| panic!("{e}"));
    let read = start.elapsed();
    let series = match lungstream_preprocess::preprocess(&volume, &Default::default()) {
        Ok(series) => series,
        Err(error) => {
            eprintln!("{} ({})", error, error.reason());
            std::process::exit(1);
        }
    };
    println!("read {read:?}, preprocessed {:?}", start.elapsed() - read);
    println!("{}", serde_json::to_string_pretty(&series.facts).unwrap());
    let slices: Vec<usize> = series.lobes.iter().map(|l| l.slice).collect();
    println!("lobes {} on slices {:?}..{:?}", series.lobes.len(), slices.first(), slices.last());

    let truth_path = dir.join("ground_truth.json");
    if let Ok(text) = std::fs::read_to_string(&truth_path) {
        let truth: serde_json::Value = serde_json::from_str(&text).unwrap();
        for side in ["right", "left"] {
            let expected = truth["lung_voxels"][side].as_f64().unwrap();
            let found = series.facts.lung_voxels.get(if side == "right" {
                lungstream_preprocess::lungs::Side::Right
            } else {
                lungstream_preprocess::lungs::Side::Left
            }) as f64;
            println!("{side}: lung voxels {found} vs truth {expected}: {:+.2}%", 100.0 * (found - expected) / expected);
        }
        println!(
            "infected: model-free {:.2}% (band {:.2}%) vs truth {:.2}%",
            series.facts.model_free.total.infected_percent,
            series.facts.model_free.total.band_percent,
            truth["infected_percent"].as_f64().unwrap()
        );
    }
}
