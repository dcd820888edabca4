//! Reader limits and the secret behind pseudonymous patient keys.

/// Limits that protect the reader from inputs too large to process, and the rules that
/// decide what counts as a usable axial stack.
#[derive(Clone, Debug)]
pub struct ReaderConfig {
    /// Largest file read, in bytes. A 512×512 16-bit slice is about 0.5 MB; the default
    /// (64 MiB) leaves room for large matrices and uncompressed multi-frame files.
    pub max_file_bytes: u64,
    /// Largest _Rows_ or _Columns_ accepted.
    pub max_matrix: u32,
    /// Maximum number of slices in one volume. 2000 covers a whole-body scan at 1 mm.
    pub max_slices: usize,
    /// Maximum number of voxels in one volume: 2^30 voxels take 2 GiB as 16-bit HU.
    pub max_voxels: u64,
    /// Minimum number of slices in one volume. The method stacks three neighbouring slices and
    /// requires disease on two consecutive slices, so the default is 3; per-slice tools
    /// lower it to 1.
    pub min_slices: usize,
    /// Largest angle between the image normal and the patient's head-feet axis that still
    /// counts as axial, in degrees. Gantry tilts reach about 30 degrees.
    pub max_axial_tilt_deg: f64,
    /// A spacing between consecutive slices above this multiple of the median spacing is a
    /// gap (`missing_slices`).
    pub max_gap_ratio: f64,
    /// Largest median slice spacing accepted, mm. Diagnostic chest CT uses 0.5–10 mm; a
    /// larger spacing is a broken _Image Position (Patient)_ or not a volume at all.
    pub max_slice_spacing_mm: f64,
    /// Secret key of the HMAC-SHA256 that turns _Patient ID_ into the pseudonymous
    /// patient key. Deployments set one secret for all their services, so the same
    /// patient gets the same key everywhere.
    pub patient_key_secret: Vec<u8>,
}

impl ReaderConfig {
    /// Creates the default limits with the given patient key secret.
    pub fn with_secret(patient_key_secret: impl Into<Vec<u8>>) -> Self {
        ReaderConfig {
            patient_key_secret: patient_key_secret.into(),
            ..ReaderConfig::default()
        }
    }
}

impl Default for ReaderConfig {
    /// Default limits with an empty patient key secret: keys are then stable but not
    /// secret, which suits tests only. Services must set a secret.
    fn default() -> Self {
        ReaderConfig {
            max_file_bytes: 64 * 1024 * 1024,
            max_matrix: 2048,
            max_slices: 2000,
            max_voxels: 1 << 30,
            min_slices: 3,
            max_axial_tilt_deg: 30.0,
            max_gap_ratio: 1.5,
            max_slice_spacing_mm: 20.0,
            patient_key_secret: Vec::new(),
        }
    }
}
