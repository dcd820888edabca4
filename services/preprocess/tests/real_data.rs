//! Preprocessing on real CT: a 134-slice abdomen-to-chest series and single COVID-19
//! slices.

use std::path::{Path, PathBuf};

use lungstream_dicom::{read_volume, ReaderConfig};
use lungstream_preprocess::lungs::Side;
use lungstream_preprocess::preprocess;
use lungstream_schemas::ReasonCode;

fn data_dir() -> PathBuf {
    let dir = std::env::var_os("LUNGSTREAM_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"));
    assert!(dir.join("README.md").is_file(), "test data not found at {}", dir.display());
    dir
}

#[test]
fn pancreas_series_has_lungs_only_on_chest_slices() {
    let (volume, _) = read_volume(&[data_dir().join("ct/pancreas-ct-cb-001")], &ReaderConfig::default()).unwrap();
    let series = preprocess(&volume, &Default::default()).unwrap();
    let facts = &series.facts;
    eprintln!(
        "pancreas-ct-cb-001: lung volume {:.0} mL right, {:.0} mL left, on {} of {} slices; background {} HU",
        facts.lung_volume_ml.right, facts.lung_volume_ml.left, facts.slices_with_lungs, facts.slices, facts.background_median_hu
    );

    // The lungs of this partial chest lie above z = 320 mm; the abdomen and pelvis below
    // have none.
    for lobe in &series.lobes {
        assert!(lobe.position_mm >= 320.0, "a lobe at z = {} mm", lobe.position_mm);
    }
    // Both lungs on every slice of the chest above the right diaphragm's dome.
    for (k, z) in volume.slice_positions_mm.iter().enumerate() {
        if (380.0..=480.0).contains(z) {
            for side in Side::BOTH {
                assert!(
                    series.lobes.iter().any(|l| l.slice == k && l.side == side),
                    "z = {z} mm: no {} lung",
                    side.as_str()
                );
            }
        }
    }
    // A plausible volume for the lower two thirds of adult lungs, similar on both sides.
    let total = facts.lung_volume_ml.total();
    assert!((1500.0..=4500.0).contains(&total), "lung volume {total:.0} mL");
    let ratio = facts.lung_volume_ml.right / facts.lung_volume_ml.left;
    assert!((0.7..=1.4).contains(&ratio), "right/left {ratio:.2}");
    assert!((-1010.0..=-985.0).contains(&facts.background_median_hu));
    assert!(facts.background_plausible);
}

#[test]
fn covid_slices_lungs_found_on_chest_slices() {
    let config = ReaderConfig {
        min_slices: 1,
        ..ReaderConfig::default()
    };
    let mut both_sides = 0;
    let mut some_lung = 0;
    let mut no_lungs = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(data_dir().join("covid-slices"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .flat_map(|patient| std::fs::read_dir(patient.join("axial")).unwrap().map(|e| e.unwrap().path()))
        .collect();
    files.sort();
    for file in &files {
        let (volume, _) = read_volume(std::slice::from_ref(file), &config).unwrap();
        match preprocess(&volume, &Default::default()) {
            Ok(series) => {
                some_lung += 1;
                both_sides += usize::from(series.lobes.len() == 2);
            }
            Err(error) => {
                assert_eq!(error.reason(), ReasonCode::NoLungs);
                no_lungs.push(file.clone());
            }
        }
    }
    // Patient A027284's two slices are abdominal.
    assert_eq!(no_lungs.len(), 2, "{no_lungs:?}");
    assert!(no_lungs.iter().all(|f| f.to_string_lossy().contains("A027284")));
    assert_eq!(some_lung, 8);
    // NOTE: a lung almost filled with ground glass and crazy paving falls mostly outside
    // the K-means foreground and is missed. Three slices lose one side that way.
    assert!(both_sides >= 5, "both lungs on {both_sides} of 8 chest slices");
}
