//! Ground truth counted from the label maps of the written slices.

use std::ops::AddAssign;

use serde::{Deserialize, Serialize};

use crate::geometry::ImagePlane;
use crate::spec::{Label, PhantomSpec};
use crate::tissue::Tissue;

/// A value per side of the PATIENT: `left` is x > 0 in patient coordinates (LPS).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sides<T = u64> {
    pub left: T,
    pub right: T,
}

impl<T: Copy + std::ops::Add<Output = T>> Sides<T> {
    /// left + right.
    pub fn total(&self) -> T {
        self.left + self.right
    }
}

impl<T: AddAssign> AddAssign for Sides<T> {
    fn add_assign(&mut self, other: Self) {
        self.left += other.left;
        self.right += other.right;
    }
}

/// Lesion voxel counts per kind and side. Ground glass, consolidation and nodules lie
/// inside the lung and are also counted in the lung voxels; effusion lies outside it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LesionVoxels {
    pub ground_glass: Sides,
    pub consolidation: Sides,
    pub nodule: Sides,
    pub effusion: Sides,
}

/// Counts of one written slice.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SliceTruth {
    /// Patient z of the slice plane in mm.
    pub z_mm: f64,
    pub lung_voxels: Sides,
    pub infected_voxels: Sides,
}

/// Counts and facts that a correct reader and lung analysis must reproduce from the
/// written main series.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroundTruth {
    pub label: Label,
    pub seed: u64,
    /// _Study Instance UID_.
    pub study_uid: String,
    /// _Series Instance UID_ of the main series, then of the second series if any.
    pub series_uids: Vec<String>,
    /// Number of DICOM files written: main series slices, localizer, second series.
    pub files: usize,
    pub rows: u16,
    pub columns: u16,
    /// Number of slices written to the main series (missing slices excluded).
    pub slices: u32,
    pub pixel_spacing_mm: f64,
    pub slice_spacing_mm: f64,
    /// pixel spacing² × slice spacing, in mm³.
    pub voxel_volume_mm3: f64,
    /// Lung voxels: parenchyma, pulmonary vessels, ground glass, consolidation, nodules.
    pub lung_voxels: Sides,
    /// `lung_voxels` × `voxel_volume_mm3` / 1000.
    pub lung_volume_ml: Sides<f64>,
    pub lesion_voxels: LesionVoxels,
    /// Ground glass + consolidation voxels (all inside the lung).
    pub infected_voxels: Sides,
    /// 100 × infected voxels / lung voxels, both sides together; 0 without lung voxels.
    pub infected_percent: f64,
    /// Indices (0-based, among the written slices in ascending z) of the slices that
    /// contain lung. Readers that order slices along a normal pointing to -z see them in
    /// reverse.
    pub lung_slices: Vec<u32>,
    /// Per written slice, in ascending z.
    pub slice_truth: Vec<SliceTruth>,
    /// HU written outside the reconstruction circle with the base rescale (see
    /// [`PhantomSpec::padding_hu`]).
    pub padding_hu: f64,
    pub spec: PhantomSpec,
}

/// Voxel counts of one slice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SliceCounts {
    pub lung: Sides,
    pub lesions: LesionVoxels,
    pub infected: Sides,
}

/// Counts the label map of one slice. A voxel is on the patient's left when the x of its
/// centre is > 0.
pub(crate) fn count_slice(plane: &ImagePlane, tissue: &[Tissue]) -> SliceCounts {
    let mut counts = SliceCounts::default();
    for row in 0..plane.rows {
        for column in 0..plane.columns {
            let label = tissue[row * plane.columns + column];
            if !label.is_lung() && label != Tissue::Effusion {
                continue;
            }
            let left = plane.position(row, column)[0] > 0.0;
            let side = |sides: &mut Sides| {
                if left {
                    sides.left += 1;
                } else {
                    sides.right += 1;
                }
            };
            match label {
                Tissue::GroundGlass => side(&mut counts.lesions.ground_glass),
                Tissue::Consolidation => side(&mut counts.lesions.consolidation),
                Tissue::Nodule => side(&mut counts.lesions.nodule),
                Tissue::Effusion => side(&mut counts.lesions.effusion),
                _ => {}
            }
            if label.is_lung() {
                side(&mut counts.lung);
            }
            if label.is_infected() {
                side(&mut counts.infected);
            }
        }
    }
    counts
}

/// Facts about the written files that the label maps do not contain.
pub(crate) struct WrittenSeries {
    pub study_uid: String,
    pub series_uids: Vec<String>,
    pub files: usize,
    pub padding_hu: f64,
    pub pixel_spacing_mm: f64,
}

impl GroundTruth {
    /// Sums the per-slice counts (in ascending z) into the truth of the main series.
    pub(crate) fn from_counts(
        spec: &PhantomSpec,
        written: WrittenSeries,
        slices: &[(f64, SliceCounts)],
    ) -> Self {
        let mut lung = Sides::default();
        let mut lesions = LesionVoxels::default();
        let mut infected = Sides::default();
        let mut lung_slices = Vec::new();
        let mut slice_truth = Vec::new();
        for (index, (z_mm, counts)) in slices.iter().enumerate() {
            lung += counts.lung;
            lesions.ground_glass += counts.lesions.ground_glass;
            lesions.consolidation += counts.lesions.consolidation;
            lesions.nodule += counts.lesions.nodule;
            lesions.effusion += counts.lesions.effusion;
            infected += counts.infected;
            if counts.lung.total() > 0 {
                lung_slices.push(index as u32);
            }
            slice_truth.push(SliceTruth {
                z_mm: *z_mm,
                lung_voxels: counts.lung,
                infected_voxels: counts.infected,
            });
        }

        let spacing = written.pixel_spacing_mm;
        let voxel_volume_mm3 = spacing * spacing * spec.slice_spacing_mm;
        let millilitres = |voxels: u64| voxels as f64 * voxel_volume_mm3 / 1000.0;
        let infected_percent = if lung.total() > 0 {
            100.0 * infected.total() as f64 / lung.total() as f64
        } else {
            0.0
        };
        GroundTruth {
            label: spec.label,
            seed: spec.seed,
            study_uid: written.study_uid,
            series_uids: written.series_uids,
            files: written.files,
            rows: spec.rows,
            columns: spec.columns,
            slices: slices.len() as u32,
            pixel_spacing_mm: spacing,
            slice_spacing_mm: spec.slice_spacing_mm,
            voxel_volume_mm3,
            lung_voxels: lung,
            lung_volume_ml: Sides {
                left: millilitres(lung.left),
                right: millilitres(lung.right),
            },
            lesion_voxels: lesions,
            infected_voxels: infected,
            infected_percent,
            lung_slices,
            slice_truth,
            padding_hu: written.padding_hu,
            spec: spec.clone(),
        }
    }
}
