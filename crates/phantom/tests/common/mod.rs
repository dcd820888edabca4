//! Helpers shared by the integration tests: small specs and reading files back with
//! dicom-object.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::DefaultDicomObject;
use lungstream_phantom::{Label, PhantomSpec};

/// Returns a fast spec: 128 × 128 pixels of 2.8 mm (the default 358.4 mm field of view) and 26
/// slices 10 mm apart, which cover the lungs.
pub fn small(label: Label, seed: u64) -> PhantomSpec {
    PhantomSpec {
        slices: 26,
        slice_spacing_mm: 10.0,
        ..PhantomSpec::preset(label, seed).with_matrix(128, 128, 2.8)
    }
}

/// Opens every `.dcm` file in `dir`, sorted by file name.
pub fn read_dicom_files(dir: &Path) -> Vec<(PathBuf, DefaultDicomObject)> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("output folder is readable")
        .map(|entry| entry.expect("directory entry is readable").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "dcm"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let object = dicom_object::open_file(&path)
                .unwrap_or_else(|error| panic!("{} does not open: {error}", path.display()));
            (path, object)
        })
        .collect()
}

pub fn text(object: &DefaultDicomObject, tag: Tag) -> String {
    object
        .element(tag)
        .unwrap_or_else(|_| panic!("{tag} is missing"))
        .to_str()
        .expect("value is text")
        .trim()
        .to_string()
}

pub fn numbers(object: &DefaultDicomObject, tag: Tag) -> Vec<f64> {
    object
        .element(tag)
        .unwrap_or_else(|_| panic!("{tag} is missing"))
        .to_multi_float64()
        .expect("value is numeric")
}

pub fn number(object: &DefaultDicomObject, tag: Tag) -> f64 {
    numbers(object, tag)[0]
}

pub fn is_localizer(object: &DefaultDicomObject) -> bool {
    text(object, tags::IMAGE_TYPE).ends_with("LOCALIZER")
}

/// Stored pixel values, sign-extended from the 16-bit words when _Pixel Representation_
/// is 1.
pub fn stored_values(object: &DefaultDicomObject) -> Vec<i32> {
    let signed = number(object, tags::PIXEL_REPRESENTATION) == 1.0;
    let words: Vec<u16> = object
        .element(tags::PIXEL_DATA)
        .expect("pixel data is present")
        .to_multi_int()
        .expect("pixel data holds 16-bit words");
    words
        .into_iter()
        .map(|word| {
            if signed {
                i32::from(word as i16)
            } else {
                i32::from(word)
            }
        })
        .collect()
}

/// HU from the stored values with the file's own _Rescale Slope_ and _Rescale Intercept_.
pub fn hu_values(object: &DefaultDicomObject) -> Vec<f64> {
    let slope = number(object, tags::RESCALE_SLOPE);
    let intercept = number(object, tags::RESCALE_INTERCEPT);
    stored_values(object)
        .into_iter()
        .map(|stored| f64::from(stored) * slope + intercept)
        .collect()
}
