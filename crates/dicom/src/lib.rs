//! DICOM CT series reader: files and folders in, a validated volume in Hounsfield units
//! out.
//!
//! [`Inventory::scan`] reads the header of every file (stopping before _Pixel Data_),
//! skips what cannot be a slice of an axial CT stack with a reason code, and groups the
//! rest into candidate stacks. [`load_volume`] decodes the preferred stack in parallel
//! into a [`CtVolume`]: HU per slice from each slice's own _Rescale Slope_ and _Rescale
//! Intercept_, a padding mask, and one canonical patient frame whatever the scanner's
//! orientation. [`read_volume`] does both.
//!
//! Every failure is a [`ReadError`] whose [`ReadError::reason`] is a stable
//! [`ReasonCode`](lungstream_schemas::ReasonCode). No patient attribute leaves this crate:
//! _Patient ID_ becomes an HMAC key on reading, and names and birth dates are never read.

mod config;
mod error;
mod file_meta;
pub mod geometry;
mod header;
mod lengths;
mod patient_key;
pub mod pixels;
mod series;
mod volume;

pub use config::ReaderConfig;
pub use error::{ReadError, SliceGap};
pub use lengths::data_set_start;
pub use header::{header_from_object, parse_object, read_header, read_header_bytes, PixelPadding, SliceHeader};
pub use patient_key::patient_key;
pub use series::{load_volume, read_slice, read_volume, DuplicateFile, Inventory, SkippedFile, SliceImage, StackCandidate};
pub use volume::{BitMask, CtVolume, Dims, SeriesMeta, SliceMeta};
