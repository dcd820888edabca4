//! Preprocessing of a CT volume for the networks: batch-effect normalisation, lung
//! extraction, lobe crops with their three-slice stacks, periphery distances, the
//! pseudo-infection band, and model-free quantification.
//!
//! Every step is a plain function of its inputs ([`normalise`], [`lungs`], [`crop`],
//! [`patches`]); [`preprocess`] chains them over a whole series:
//!
//! 1. Per slice (in parallel): HU clipped to -2000..3000 and shifted to 0..5000, the
//!    outside air found by K-means and a flood from the border, its values added to a
//!    series histogram.
//! 2. The series' background median is subtracted (the batch-effect statistic), values
//!    clipped at 2048 and scaled to [0, 1], then a 3×3 median filter.
//! 3. Per slice (in parallel): lungs found and assigned to the patient's sides. Each lung
//!    is cropped into 256×256, together with its neighbouring slices cut by the same box.
//! 4. Per series: the pseudo-infection band from all crops, and the share of lung in it
//!    and in the standard HU bands.
//!
//! Memory: slices are processed one at a time per thread; only the crops are kept.


pub mod bundle;
pub mod crop;
pub mod image;
pub mod kmeans;
pub mod lungs;
pub mod normalise;
pub mod patches;
mod quantify;
pub mod service;

use lungstream_dicom::CtVolume;
use lungstream_schemas::ReasonCode;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::crop::{CropBox, CROP_SIZE};
use crate::image::{Image, Mask};
use crate::lungs::{extract_lungs, LungConfig, Side};
use crate::normalise::{background_mask, median_filter_3x3, normalise_value, shift_hu, BackgroundHistogram, NORMALISED_MAX};
use crate::patches::{coarse_patch_min_distance, manhattan_distance_to_border, InfectionBand};

pub use quantify::{ModelFreeShares, SideShares};

/// Reasons a series cannot be preprocessed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum PreprocessError {
    #[error("series {series_uid}: no lungs found on any of its {slices} slices")]
    NoLungs { series_uid: String, slices: usize },
    #[error("series {series_uid}: no air outside the body on any slice, so the background cannot be measured")]
    NoBackground { series_uid: String },
}

impl PreprocessError {
    pub fn reason(&self) -> ReasonCode {
        match self {
            PreprocessError::NoLungs { .. } => ReasonCode::NoLungs,
            PreprocessError::NoBackground { .. } => ReasonCode::NoBackground,
        }
    }
}

/// Settings of the preprocessing.
#[derive(Clone, Debug, Default)]
pub struct PreprocessConfig {
    pub lungs: LungConfig,
}

/// A pair of values for the patient's right and left.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sides<T> {
    pub right: T,
    pub left: T,
}

impl<T: Copy + std::ops::Add<Output = T>> Sides<T> {
    pub fn get(&self, side: Side) -> T {
        match side {
            Side::Right => self.right,
            Side::Left => self.left,
        }
    }

    pub fn total(&self) -> T {
        self.right + self.left
    }
}

/// One lung on one slice, ready for the networks.
#[derive(Clone, Debug, PartialEq)]
pub struct Lobe {
    /// Slice index in the volume (feet to head).
    pub slice: usize,
    pub side: Side,
    /// Slice position along the head-pointing normal, mm.
    pub position_mm: f64,
    pub crop_box: CropBox,
    /// The previous, this and the next slice, each cropped with this slice's box, in
    /// normalised units (0..=2048 for 0..1). The first and last slice repeat themselves.
    pub channels: [Image<u16>; 3],
    /// The lung mask of this slice, cropped like the channels.
    pub mask: Mask,
    /// Lung pixels on this slice at full resolution.
    pub lung_pixels: u32,
    /// Minimum periphery distance of each coarse patch (32×32), crop pixels.
    pub patch_distance: Image<u32>,
}

/// Series-level facts of the preprocessing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeriesFacts {
    pub series_uid: String,
    /// Median HU of the outside air: the batch-effect statistic to monitor per scanner.
    pub background_median_hu: f64,
    /// Whether that median lies within -1100..-900 HU. It does not when lung cut by the
    /// reconstruction circle counts as outside air, which skews the normalisation.
    pub background_plausible: bool,
    pub background_pixels: u64,
    pub lung_voxels: Sides<u64>,
    pub lung_volume_ml: Sides<f64>,
    pub slices: usize,
    pub slices_with_lungs: usize,
    /// Spacing in mm: between slices, rows, columns.
    pub spacing_mm: [f64; 3],
    pub infection_band: Option<InfectionBand>,
    pub model_free: ModelFreeShares,
    /// SOP Instance UID of every slice, in volume order (from the feet), so a later stage
    /// can fetch the instance behind a slice index.
    #[serde(default)]
    pub sop_instance_uids: Vec<String>,
}

/// A preprocessed series: its lobes in slice order (right before left) and its facts.
#[derive(Clone, Debug, PartialEq)]
pub struct PreprocessedSeries {
    pub facts: SeriesFacts,
    pub lobes: Vec<Lobe>,
}

/// Runs every preprocessing step over a volume.
///
/// # Errors
///
/// `no_lungs` when no slice has a lung, `not_hounsfield` when no slice has outside air.
pub fn preprocess(volume: &CtVolume, config: &PreprocessConfig) -> Result<PreprocessedSeries, PreprocessError> {
    let dims = volume.dims;
    let series_uid = volume.meta.series_uid.clone();

    let background = background_histogram(volume);
    let median = background.median().ok_or_else(|| PreprocessError::NoBackground {
        series_uid: series_uid.clone(),
    })?;
    let median_hu = f64::from(median) + f64::from(normalise::HU_MIN);
    // Outside air reads -1000 HU give or take a scanner's offset. Far from it, the
    // "background" probably contains lung cut by the reconstruction circle, and every
    // normalised value of the series shifts with it.
    let background_plausible = (-1100.0..=-900.0).contains(&median_hu);
    if !background_plausible {
        tracing::warn!(
            %series_uid,
            background_median_hu = median_hu,
            "The background median is far from air (-1000 HU); the normalisation may be off."
        );
    }

    let pixel_area_mm2 = volume.spacing_mm[1] * volume.spacing_mm[2];
    let per_slice: Vec<SliceResult> = (0..dims.slices)
        .into_par_iter()
        .map(|k| process_slice(volume, k, median, pixel_area_mm2, config))
        .collect();

    let mut lobes = Vec::new();
    let mut lung_voxels = Sides::<u64>::default();
    let mut hu_counts = quantify::HuBandCounts::default();
    let mut slices_with_lungs = 0;
    for result in per_slice {
        slices_with_lungs += usize::from(!result.lobes.is_empty());
        for lobe in &result.lobes {
            match lobe.side {
                Side::Right => lung_voxels.right += u64::from(lobe.lung_pixels),
                Side::Left => lung_voxels.left += u64::from(lobe.lung_pixels),
            }
        }
        hu_counts = hu_counts.merge(&result.hu_counts);
        lobes.extend(result.lobes);
    }
    if lobes.is_empty() {
        return Err(PreprocessError::NoLungs {
            series_uid,
            slices: dims.slices,
        });
    }

    let band = InfectionBand::from_histogram(&crop_histogram(&lobes), patches::ground_glass_floor(median_hu, background_plausible));
    let model_free = quantify::model_free_shares(&hu_counts, &lobes, band.as_ref());
    let voxel_ml = volume.voxel_volume_mm3() / 1000.0;
    let facts = SeriesFacts {
        series_uid,
        background_median_hu: median_hu,
        background_plausible,
        background_pixels: background.pixels(),
        lung_voxels,
        lung_volume_ml: Sides {
            right: lung_voxels.right as f64 * voxel_ml,
            left: lung_voxels.left as f64 * voxel_ml,
        },
        slices: dims.slices,
        slices_with_lungs,
        spacing_mm: volume.spacing_mm,
        infection_band: band,
        model_free,
        sop_instance_uids: volume.slices.iter().map(|s| s.sop_instance_uid.clone()).collect(),
    };
    Ok(PreprocessedSeries { facts, lobes })
}

/// Contribution of one slice to the series.
struct SliceResult {
    lobes: Vec<Lobe>,
    hu_counts: quantify::HuBandCounts,
}

fn process_slice(volume: &CtVolume, k: usize, median: u16, pixel_area_mm2: f64, config: &PreprocessConfig) -> SliceResult {
    let dims = volume.dims;
    let (normalised, padding) = normalised_slice(volume, k, median);
    let lungs = extract_lungs(&normalised, &padding, pixel_area_mm2, &config.lungs);
    let mut result = SliceResult {
        lobes: Vec::new(),
        hu_counts: quantify::HuBandCounts::default(),
    };
    for side in Side::BOTH {
        let Some(mask) = lungs.side(side) else {
            continue;
        };
        let Some(crop_box) = CropBox::around(mask, pixel_area_mm2.sqrt()) else {
            continue;
        };
        result.hu_counts.add(side, volume.slice(k), mask, &crop_box);
        // Neighbours cut with this slice's box; the first and last slice repeat.
        let neighbour = |k: isize| k.clamp(0, dims.slices as isize - 1) as usize;
        let channels = [neighbour(k as isize - 1), k, neighbour(k as isize + 1)].map(|slice| {
            if slice == k {
                crop_box.crop_values(&normalised, (0, 0))
            } else {
                let (region, origin) = normalised_region(volume, slice, median, &crop_box);
                crop_box.crop_values(&region, origin)
            }
        });
        let crop_mask = crop_box.crop_mask(mask);
        let distance = manhattan_distance_to_border(&crop_mask);
        result.lobes.push(Lobe {
            slice: k,
            side,
            position_mm: volume.slice_positions_mm[k],
            crop_box,
            patch_distance: coarse_patch_min_distance(&distance, &crop_mask),
            channels,
            mask: crop_mask,
            lung_pixels: crop_mask_pixels(mask, &crop_box),
        });
    }
    result
}

/// Lung pixels of a full-slice mask, counted inside its bounding box.
fn crop_mask_pixels(mask: &Mask, crop_box: &CropBox) -> u32 {
    (crop_box.row..crop_box.row + crop_box.rows)
        .map(|r| {
            let start = r * mask.columns + crop_box.column;
            mask.data[start..start + crop_box.columns].iter().filter(|v| **v).count() as u32
        })
        .sum()
}

/// Histogram of the outside air's shifted values over every slice of a volume (in
/// parallel); its median is the series' background median.
pub fn background_histogram(volume: &CtVolume) -> BackgroundHistogram {
    (0..volume.dims.slices)
        .into_par_iter()
        .map(|k| {
            let (shifted, padding) = shifted_slice(volume, k);
            let mut histogram = BackgroundHistogram::default();
            histogram.add(&shifted, &background_mask(&shifted, &padding));
            histogram
        })
        .reduce(BackgroundHistogram::default, BackgroundHistogram::merge)
}

/// Shifted values (HU clipped to -2000..3000, plus 2000) and padding of slice `k`.
fn shifted_slice(volume: &CtVolume, k: usize) -> (Image<u16>, Mask) {
    let dims = volume.dims;
    let shifted = volume.slice(k).iter().map(|hu| shift_hu(*hu)).collect();
    let mut padding = vec![false; dims.slice_len()];
    volume.padding.copy_range(k * dims.slice_len(), &mut padding);
    (
        Image::from_vec(dims.rows, dims.columns, shifted),
        Mask::from_vec(dims.rows, dims.columns, padding),
    )
}

/// Normalised (0..=2048), median-filtered values and padding of slice `k`; padding is 0.
pub fn normalised_slice(volume: &CtVolume, k: usize, background_median: u16) -> (Image<u16>, Mask) {
    let (shifted, padding) = shifted_slice(volume, k);
    let values = shifted
        .data
        .iter()
        .zip(&padding.data)
        .map(|(value, is_padding)| if *is_padding { 0 } else { normalise_value(*value, background_median) })
        .collect();
    let normalised = Image::from_vec(shifted.rows, shifted.columns, values);
    (median_filter_3x3(&normalised), padding)
}

/// Normalised, median-filtered values of slice `k` over `crop_box` and a one-pixel margin
/// (clipped to the slice), and the region's first (row, column) in the slice.
///
/// Equal to the same pixels of [`normalised_slice`], at a fraction of the cost: the median
/// filter runs over the region and one more margin pixel, which is all it reads.
fn normalised_region(volume: &CtVolume, k: usize, background_median: u16, crop_box: &CropBox) -> (Image<u16>, (usize, usize)) {
    let dims = volume.dims;
    let grow = |start: usize, length: usize, margin: usize, limit: usize| {
        let first = start.saturating_sub(margin);
        let last = (start + length + margin).min(limit);
        (first, last - first)
    };
    // The filter input reaches two pixels beyond the box: one for the output margin,
    // one for the filter window.
    let (top, rows) = grow(crop_box.row, crop_box.rows, 2, dims.rows);
    let (left, columns) = grow(crop_box.column, crop_box.columns, 2, dims.columns);

    let slice = volume.slice(k);
    let mut padding = vec![false; dims.columns];
    let mut values = Vec::with_capacity(rows * columns);
    for r in top..top + rows {
        volume.padding.copy_range((k * dims.rows + r) * dims.columns, &mut padding);
        for c in left..left + columns {
            let value = if padding[c] {
                0
            } else {
                normalise_value(shift_hu(slice[r * dims.columns + c]), background_median)
            };
            values.push(value);
        }
    }
    let filtered = median_filter_3x3(&Image::from_vec(rows, columns, values));

    // Drop the outer pixel where the region was cut (its window was clamped wrongly),
    // except at the slice border, where clamping is what the full-slice filter does too.
    let (inner_top, inner_rows) = grow(crop_box.row, crop_box.rows, 1, dims.rows);
    let (inner_left, inner_columns) = grow(crop_box.column, crop_box.columns, 1, dims.columns);
    let mut inner = Vec::with_capacity(inner_rows * inner_columns);
    for r in inner_top..inner_top + inner_rows {
        let start = (r - top) * columns + (inner_left - left);
        inner.extend_from_slice(&filtered.data[start..start + inner_columns]);
    }
    (Image::from_vec(inner_rows, inner_columns, inner), (inner_top, inner_left))
}

/// Histogram of the middle channel of every crop.
fn crop_histogram(lobes: &[Lobe]) -> Vec<u64> {
    let mut counts = vec![0u64; usize::from(NORMALISED_MAX) + 1];
    for lobe in lobes {
        for value in &lobe.channels[1].data {
            counts[usize::from(*value)] += 1;
        }
    }
    debug_assert_eq!(counts.iter().sum::<u64>() as usize, lobes.len() * CROP_SIZE * CROP_SIZE);
    counts
}
