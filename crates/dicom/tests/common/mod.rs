//! Helpers shared by the reader's integration tests.

use std::path::{Path, PathBuf};

/// Returns the real test data folder: `LUNGSTREAM_DATA`, or `../shared/data` beside the
/// checkout.
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
