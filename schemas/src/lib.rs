//! Types shared by every lungstream stage: the stable reason codes that record why an input
//! was rejected, the events and topics between the services ([`events`]), and the report
//! format ([`report`]).
//!
//! A reason code is part of the public contract: it appears in dead-letter events, in
//! reports ("rejected: not_axial") and as a metric label, so analysts and alerting rules
//! match on it. Codes are only ever added, never renamed or reused.

pub mod events;
pub mod report;

use std::fmt;

use serde::{Deserialize, Serialize};

/// Reason an input cannot be analysed, as a stable `snake_case` code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReasonCode {
    /// The bytes are not a readable DICOM Part 10 file (no preamble and `DICM` prefix,
    /// broken element structure, invalid value representation).
    InvalidDicom,
    /// The file ends before an element or the pixel data it announces.
    Truncated,
    /// The file or folder could not be read (permissions, I/O error).
    Unreadable,
    /// _Modality_ is not CT or the SOP class is not a CT image.
    NotCt,
    /// A required attribute is missing.
    MissingAttribute,
    /// A required attribute contains a value that cannot be used (wrong count, not a number,
    /// zero spacing).
    InvalidAttribute,
    /// The image plane is not axial (coronal, sagittal or strongly oblique).
    NotAxial,
    /// Localizer (scout) image, or an image whose orientation or matrix differs from its
    /// series' stack.
    Localizer,
    /// The file has no _Pixel Data_.
    NoPixelData,
    /// The pixel data is encoded with a transfer syntax this build cannot decode.
    UnsupportedTransferSyntax,
    /// The pixel format is not a grey-scale CT image (colour, 1-bit, 32-bit, float).
    UnsupportedPixelFormat,
    /// A multi-frame image without per-frame positions, which cannot be stacked.
    UnsupportedMultiframe,
    /// The pixel data could not be decoded although the transfer syntax is supported.
    DecodeFailed,
    /// The slice positions leave a gap well beyond the series' median spacing.
    MissingSlices,
    /// Two different images share one slice position in the same stack.
    DuplicatePositions,
    /// Fewer slices than the configured minimum.
    TooFewSlices,
    /// More slices, a larger matrix or a larger file than the configured limits.
    TooLarge,
    /// The values are not Hounsfield units: nothing near air (−1000 HU) in the volume.
    NotHounsfield,
    /// No file in the input is a DICOM image.
    NoImages,
    /// Preprocessing found no lungs in the series.
    NoLungs,
    /// Preprocessing found no air outside the body on any slice, so the batch-effect
    /// statistic (the background median) cannot be measured.
    NoBackground,
    /// An event's `schema_version` has a major version this consumer does not know.
    UnknownSchemaVersion,
    /// A series was started but never completed within the expiry time.
    IncompleteSeries,
    /// An event is not valid JSON of its topic's type.
    MalformedEvent,
    /// An instance arrived again under a known SOP Instance UID with a different data set.
    ConflictingInstance,
    /// The object store or the broker did not respond; sending the input again may work.
    Unavailable,
    /// A stage failed on this input in a way it does not expect (a panic, a libtorch
    /// exception on this series alone); the service's log has the details.
    InternalError,
}

impl ReasonCode {
    /// Every code, in declaration order.
    pub const ALL: &'static [ReasonCode] = &[
        ReasonCode::InvalidDicom,
        ReasonCode::Truncated,
        ReasonCode::Unreadable,
        ReasonCode::NotCt,
        ReasonCode::MissingAttribute,
        ReasonCode::InvalidAttribute,
        ReasonCode::NotAxial,
        ReasonCode::Localizer,
        ReasonCode::NoPixelData,
        ReasonCode::UnsupportedTransferSyntax,
        ReasonCode::UnsupportedPixelFormat,
        ReasonCode::UnsupportedMultiframe,
        ReasonCode::DecodeFailed,
        ReasonCode::MissingSlices,
        ReasonCode::DuplicatePositions,
        ReasonCode::TooFewSlices,
        ReasonCode::TooLarge,
        ReasonCode::NotHounsfield,
        ReasonCode::NoImages,
        ReasonCode::NoLungs,
        ReasonCode::NoBackground,
        ReasonCode::UnknownSchemaVersion,
        ReasonCode::IncompleteSeries,
        ReasonCode::MalformedEvent,
        ReasonCode::ConflictingInstance,
        ReasonCode::Unavailable,
        ReasonCode::InternalError,
    ];

    /// Returns the stable code, as used in events, reports and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ReasonCode::InvalidDicom => "invalid_dicom",
            ReasonCode::Truncated => "truncated",
            ReasonCode::Unreadable => "unreadable",
            ReasonCode::NotCt => "not_ct",
            ReasonCode::MissingAttribute => "missing_attribute",
            ReasonCode::InvalidAttribute => "invalid_attribute",
            ReasonCode::NotAxial => "not_axial",
            ReasonCode::Localizer => "localizer",
            ReasonCode::NoPixelData => "no_pixel_data",
            ReasonCode::UnsupportedTransferSyntax => "unsupported_transfer_syntax",
            ReasonCode::UnsupportedPixelFormat => "unsupported_pixel_format",
            ReasonCode::UnsupportedMultiframe => "unsupported_multiframe",
            ReasonCode::DecodeFailed => "decode_failed",
            ReasonCode::MissingSlices => "missing_slices",
            ReasonCode::DuplicatePositions => "duplicate_positions",
            ReasonCode::TooFewSlices => "too_few_slices",
            ReasonCode::TooLarge => "too_large",
            ReasonCode::NotHounsfield => "not_hounsfield",
            ReasonCode::NoImages => "no_images",
            ReasonCode::NoLungs => "no_lungs",
            ReasonCode::NoBackground => "no_background",
            ReasonCode::UnknownSchemaVersion => "unknown_schema_version",
            ReasonCode::IncompleteSeries => "incomplete_series",
            ReasonCode::MalformedEvent => "malformed_event",
            ReasonCode::ConflictingInstance => "conflicting_instance",
            ReasonCode::Unavailable => "unavailable",
            ReasonCode::InternalError => "internal_error",
        }
    }
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_name_matches_as_str() {
        for code in ReasonCode::ALL {
            let json = serde_json::to_string(code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            let back: ReasonCode = serde_json::from_str(&json).unwrap();
            assert_eq!(back, *code);
        }
    }

    #[test]
    fn codes_are_unique() {
        let mut names: Vec<&str> = ReasonCode::ALL.iter().map(|c| c.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ReasonCode::ALL.len());
    }
}
