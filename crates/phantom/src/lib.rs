//! Synthetic chest CT series written as real DICOM files, with exact ground truth.
//!
//! A [`PhantomSpec`] describes a patient (anatomy drawn from a seed, lesions from a
//! [`Label`]) and every acquisition and encoding option that a DICOM reader must cope
//! with: image orientation, instance order, missing slices, padding conventions,
//! per-slice rescale, bit depth, transfer syntax, a localizer and a second series.
//! [`render`] returns the slices in memory as HU and tissue label maps;
//! [`write_series`] writes them as CT Image Storage files plus `ground_truth.json`.
//!
//! The anatomy is defined in DICOM patient coordinates (LPS, mm: +x toward the
//! patient's left, +y posterior, +z toward the head). Each pixel samples it at its own
//! patient position, so every orientation option shows the same body and yields the
//! same ground truth. The right lung is larger than the left (the heart lies left of the
//! midline), so a reader that mirrors the image is detectable.
//!
//! The body, with noise-free HU values:
//! * an elliptical trunk of about 320 × 230 mm: subcutaneous fat (-100) over muscle (+45);
//! * two lungs (-860, with texture and a slight posterior gradient) about 240 mm high,
//!   narrowing to the apex and resting on domed diaphragms, the right dome higher;
//! * mediastinum, heart and aorta (+40), trachea and main bronchi (-1000);
//! * vertebrae with discs, ribs and sternum (+250…+850), liver (+55) below the right dome;
//! * pulmonary vessels (+40) branching from each hilum;
//! * a curved table (+100) separated from the back by an air gap, on the anterior side
//!   when prone.
//!
//! Every pixel outside the reconstruction circle contains the padding value.
//!
//! Lesions by [`Label`]:
//! * COVID-19: peripheral, mostly basal and posterior ground glass (-700…-350) and
//!   consolidation (0…+45), one of them at a lung base touching the chest wall;
//! * other disease: solid nodules (+30) near the hila, a lower-lobe consolidation and a
//!   posterior pleural effusion (+10) that lies outside the lung.
//!
//! Everything is deterministic: the same spec gives byte-identical files on any number
//! of threads, because every random stream is keyed by seed, purpose and slice.
//! NOTE: the anatomy uses `sin`, `cos` and `powf` from the platform's math library, so
//! byte identity is only checked between runs of the same build on the same platform.
//!
//! ```
//! use lungstream_phantom::{write_series, Label, PhantomSpec};
//!
//! let dir = tempfile::tempdir()?;
//! let spec = PhantomSpec {
//!     slices: 4,
//!     slice_spacing_mm: 20.0,
//!     ..PhantomSpec::preset(Label::Covid, 42).with_matrix(64, 64, 5.6)
//! };
//! let truth = write_series(&spec, dir.path())?;
//! assert_eq!(truth.files, 4);
//! assert!(truth.lung_voxels.left < truth.lung_voxels.right);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod anatomy;
mod dates;
mod error;
mod geometry;
mod random;
mod render;
mod scene;
mod spec;
mod tissue;
mod truth;
mod write;

pub use error::PhantomError;
pub use geometry::SeriesGeometry;
pub use render::{render, RenderedSeries, RenderedSlice};
pub use spec::{
    InstanceOrder, Label, Orientation, PaddingConvention, PhantomSpec, Rescale, TransferSyntax,
    MAX_SLICES,
};
pub use tissue::Tissue;
pub use truth::{GroundTruth, LesionVoxels, Sides, SliceTruth};
pub use write::{write_series, GROUND_TRUTH_FILE};
