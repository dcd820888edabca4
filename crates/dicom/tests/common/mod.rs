//! Helpers shared by the reader's integration tests.

use std::path::{Path, PathBuf};

use lungstream_dicom::{parse_object, pixels::decode_stored_values};

/// The real test data beside the checkout (`../shared/data`), or `LUNGSTREAM_DATA`.
pub fn data_dir() -> PathBuf {
    let dir = std::env::var_os("LUNGSTREAM_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"));
    assert!(
        dir.join("README.md").is_file(),
        "test data not found at {}; set LUNGSTREAM_DATA to the shared data folder",
        dir.display()
    );
    dir
}

/// Decodes every frame of the file at `path` into stored values.
pub fn stored_values(path: &Path) -> Vec<i32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let object = parse_object(&bytes, path).unwrap_or_else(|e| panic!("{e}"));
    decode_stored_values(&object, path)
        .unwrap_or_else(|e| panic!("{e}"))
        .values
}
