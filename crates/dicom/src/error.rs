//! The reader's error type: one variant per way an input can be unusable, each mapped to
//! a stable [`ReasonCode`].

use std::path::PathBuf;
use std::sync::Arc;

use lungstream_schemas::ReasonCode;

/// A gap between two consecutive slice positions that is well beyond the median spacing.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SliceGap {
    /// Position of the slice below the gap, along the slice normal (mm).
    pub below_mm: f64,
    /// Position of the slice above the gap (mm).
    pub above_mm: f64,
}

/// Why a file or a series cannot be read into a [`CtVolume`](crate::CtVolume).
///
/// Messages name the file (by path or object key) or the series, and the offending value.
/// They never contain patient attributes.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{}: cannot read the file: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("{}: not a valid DICOM file: {detail}", .path.display())]
    InvalidDicom { path: PathBuf, detail: String },
    #[error("{}: the file is truncated: {detail}", .path.display())]
    Truncated { path: PathBuf, detail: String },
    #[error("{}: not a CT image (Modality {modality:?}, SOP Class {sop_class_uid:?})", .path.display())]
    NotCt {
        path: PathBuf,
        modality: String,
        sop_class_uid: String,
    },
    #[error("{}: required attribute {attribute} is missing", .path.display())]
    MissingAttribute {
        path: PathBuf,
        attribute: &'static str,
    },
    #[error("{}: attribute {attribute} has an unusable value {value:?}", .path.display())]
    InvalidAttribute {
        path: PathBuf,
        attribute: &'static str,
        value: String,
    },
    #[error(
        "{}: the image plane is not axial: its normal is {tilt_deg:.1} degrees from the \
         patient's head-feet axis (limit {limit_deg:.1}); Image Orientation (Patient) {orientation:?}", .path.display())]
    NotAxial {
        path: PathBuf,
        orientation: [f64; 6],
        tilt_deg: f64,
        limit_deg: f64,
    },
    #[error("{}: localizer image (Image Type {image_type:?}), not part of an axial stack", .path.display())]
    Localizer { path: PathBuf, image_type: String },
    #[error("{}: the file has no Pixel Data", .path.display())]
    NoPixelData { path: PathBuf },
    #[error("{}: transfer syntax {uid} ({name}) cannot be decoded by this build", .path.display())]
    UnsupportedTransferSyntax {
        path: PathBuf,
        uid: String,
        name: String,
    },
    #[error("{}: unsupported pixel format: {detail}", .path.display())]
    UnsupportedPixelFormat { path: PathBuf, detail: String },
    #[error(
        "{}: multi-frame image with {frames} frames and no per-frame positions; \
         send the series as single-frame CT images", .path.display())]
    UnsupportedMultiframe { path: PathBuf, frames: u32 },
    #[error("{}: the pixel data could not be decoded: {detail}", .path.display())]
    DecodeFailed { path: PathBuf, detail: String },
    #[error(
        "series {series_uid}: {} gap(s) in the slice positions beyond 1.5 x the median \
         spacing of {median_spacing_mm:.3} mm, first between {:.2} mm and {:.2} mm",
        gaps.len(), gaps[0].below_mm, gaps[0].above_mm
    )]
    MissingSlices {
        series_uid: String,
        median_spacing_mm: f64,
        gaps: Vec<SliceGap>,
    },
    #[error(
        "series {series_uid}: two different images lie at slice position {position_mm:.3} mm \
         ({} and {})",
        .first.display(), .second.display()
    )]
    DuplicatePositions {
        series_uid: String,
        position_mm: f64,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("series {series_uid}: {found} slice(s), at least {min} needed")]
    TooFewSlices {
        series_uid: String,
        found: usize,
        min: usize,
    },
    #[error("{subject}: {what} is {value}, above the limit of {limit}")]
    TooLarge {
        subject: String,
        what: &'static str,
        value: u64,
        limit: u64,
    },
    #[error(
        "series {series_uid}: the values are not Hounsfield units: only {air_fraction_percent:.4}% \
         of the voxels lie near air (-1100..-900 HU), minimum HU {min_hu}; \
         check Rescale Intercept and Rescale Slope"
    )]
    NotHounsfield {
        series_uid: String,
        air_fraction_percent: f64,
        min_hu: i32,
    },
    #[error("{input}: no usable CT image among {files_seen} file(s) ({skipped} skipped)")]
    NoImages {
        input: String,
        files_seen: usize,
        skipped: usize,
    },
}

impl ReadError {
    /// Returns the stable reason code for this error.
    pub fn reason(&self) -> ReasonCode {
        match self {
            ReadError::Io { .. } => ReasonCode::Unreadable,
            ReadError::InvalidDicom { .. } => ReasonCode::InvalidDicom,
            ReadError::Truncated { .. } => ReasonCode::Truncated,
            ReadError::NotCt { .. } => ReasonCode::NotCt,
            ReadError::MissingAttribute { .. } => ReasonCode::MissingAttribute,
            ReadError::InvalidAttribute { .. } => ReasonCode::InvalidAttribute,
            ReadError::NotAxial { .. } => ReasonCode::NotAxial,
            ReadError::Localizer { .. } => ReasonCode::Localizer,
            ReadError::NoPixelData { .. } => ReasonCode::NoPixelData,
            ReadError::UnsupportedTransferSyntax { .. } => ReasonCode::UnsupportedTransferSyntax,
            ReadError::UnsupportedPixelFormat { .. } => ReasonCode::UnsupportedPixelFormat,
            ReadError::UnsupportedMultiframe { .. } => ReasonCode::UnsupportedMultiframe,
            ReadError::DecodeFailed { .. } => ReasonCode::DecodeFailed,
            ReadError::MissingSlices { .. } => ReasonCode::MissingSlices,
            ReadError::DuplicatePositions { .. } => ReasonCode::DuplicatePositions,
            ReadError::TooFewSlices { .. } => ReasonCode::TooFewSlices,
            ReadError::TooLarge { .. } => ReasonCode::TooLarge,
            ReadError::NotHounsfield { .. } => ReasonCode::NotHounsfield,
            ReadError::NoImages { .. } => ReasonCode::NoImages,
        }
    }
}
