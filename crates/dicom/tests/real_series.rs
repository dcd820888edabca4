//! The reader on real CT data: a 134-slice Philips series and single GE slices.

mod common;

use std::path::PathBuf;

use dicom_dictionary_std::tags;
use lungstream_dicom::{patient_key, read_volume, Inventory, ReaderConfig};
use lungstream_schemas::ReasonCode;

use common::data_dir;

fn pancreas() -> PathBuf {
    data_dir().join("ct/pancreas-ct-cb-001")
}

#[test]
fn pancreas_series_loads_in_position_order() {
    let config = ReaderConfig::with_secret(b"test-secret".to_vec());
    let (volume, inventory) = read_volume(&[pancreas()], &config).unwrap();

    assert_eq!(inventory.candidates.len(), 1);
    // LICENSE and Citations sit beside the images.
    assert_eq!(inventory.skipped.len(), 2);
    assert!(inventory.skipped.iter().all(|s| s.reason == ReasonCode::InvalidDicom));

    assert_eq!(volume.dims.slices, 134);
    assert_eq!((volume.dims.rows, volume.dims.columns), (512, 512));
    assert_eq!(volume.spacing_mm, [3.0, 1.07421875, 1.07421875]);
    for pair in volume.slice_positions_mm.windows(2) {
        assert!((pair[1] - pair[0] - 3.0).abs() < 1e-6, "spacing {pair:?}");
    }
    assert_eq!(volume.slice_positions_mm[0], 85.91);
    assert_eq!(*volume.slice_positions_mm.last().unwrap(), 484.91);
    // InstanceNumber runs from head to feet in this series.
    let instances: Vec<i32> = volume.slices.iter().map(|s| s.instance_number.unwrap()).collect();
    assert_eq!(instances, (1..=134).rev().collect::<Vec<_>>());

    // A standard supine series needs no reorientation.
    assert_eq!(volume.directions, [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]);
    assert_eq!(volume.meta.manufacturer.as_deref(), Some("Philips"));
    assert_eq!(volume.meta.kernel.as_deref(), Some("B"));
}

#[test]
fn pancreas_air_is_near_minus_1000() {
    let (volume, _) = read_volume(&[pancreas()], &ReaderConfig::default()).unwrap();
    // This scanner writes no padding: air reaches the image border, clipped at -1000.
    assert_eq!(volume.padding.count_ones(), 0);
    // The first row of every slice lies in the air in front of the patient.
    let mut first_rows: Vec<i16> = (0..volume.dims.slices)
        .flat_map(|k| volume.slice(k)[..volume.dims.columns].to_vec())
        .collect();
    first_rows.sort_unstable();
    let median = first_rows[first_rows.len() / 2];
    assert!((-1000..=-980).contains(&median), "median HU of the front row: {median}");
    let air = volume.hu.iter().filter(|v| (-1050..=-950).contains(*v)).count();
    assert!(air * 2 > volume.hu.len(), "only {air} of {} voxels are air", volume.hu.len());
}

#[test]
fn pancreas_patient_key_is_pseudonymous() {
    let secret = b"deployment-secret".to_vec();
    let (volume, _) = read_volume(&[pancreas()], &ReaderConfig::with_secret(secret.clone())).unwrap();
    let file = std::fs::read_dir(pancreas())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "dcm"))
        .unwrap();
    let object = dicom_object::open_file(&file).unwrap();
    let patient_id = object.element(tags::PATIENT_ID).unwrap().to_str().unwrap().trim().to_string();
    let patient_name = object.element(tags::PATIENT_NAME).unwrap().to_str().unwrap().trim().to_string();

    assert_eq!(volume.meta.patient_key.as_deref(), Some(patient_key(&secret, &patient_id).as_str()));
    // Neither the ID nor the name appears anywhere in what the reader returns.
    let dump = format!("{:?} {:?}", volume.meta, volume.slices);
    assert!(!dump.contains(&patient_id), "Patient ID leaked");
    assert!(!dump.contains(&patient_name), "Patient Name leaked");
}

#[test]
fn covid_axial_slices_load_with_padding() {
    let config = ReaderConfig {
        min_slices: 1,
        ..ReaderConfig::default()
    };
    let mut loaded = 0;
    for patient in std::fs::read_dir(data_dir().join("covid-slices")).unwrap() {
        let patient = patient.unwrap().path();
        if !patient.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(patient.join("axial")).unwrap() {
            let file = file.unwrap().path();
            let (volume, _) = read_volume(std::slice::from_ref(&file), &config).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(volume.dims.slices, 1);
            // GE writes -2000 outside the 512x512 reconstruction circle: about 1 - pi/4.
            let share = volume.padding.count_ones() as f64 / volume.hu.len() as f64;
            assert!((0.20..0.25).contains(&share), "{}: padding share {share}", file.display());
            loaded += 1;
        }
        for plane in ["coronal", "sagittal"] {
            let inventory = Inventory::scan(&[patient.join(plane)], &config);
            assert!(inventory.candidates.is_empty(), "{plane} images must not form a stack");
            assert!(inventory.skipped.iter().all(|s| s.reason == ReasonCode::NotAxial));
            assert_eq!(inventory.skipped.len(), 2);
        }
    }
    assert_eq!(loaded, 10);
}

#[test]
fn single_slice_is_too_few_by_default() {
    let file = data_dir().join("covid-slices/A002304/axial/19001231-076.dcm");
    let error = read_volume(&[file], &ReaderConfig::default()).unwrap_err();
    assert_eq!(error.reason(), ReasonCode::TooFewSlices);
    assert!(error.to_string().contains("1 slice(s), at least 3 needed"), "{error}");
}
