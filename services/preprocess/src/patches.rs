//! Coarse patches of a lobe crop, the periphery distance, and the pseudo-infection
//! labels that weak supervision trains on.

use crate::crop::CROP_SIZE;
use crate::image::{Image, Mask};

/// Cells of the coarse grid along each axis (the feature map of the VGG-16 prefix).
pub const COARSE_GRID: usize = 32;
/// Side of a coarse patch, pixels.
pub const COARSE_PATCH: usize = 36;
/// Distance between neighbouring coarse patches, pixels.
pub const COARSE_STRIDE: usize = 8;

/// Crop rows (or columns) covered by coarse patch `index`, clipped to the crop.
///
/// Each patch is centred on its grid cell: cell `i` covers pixels `8i .. 8i + 8`, and its
/// 36-pixel patch reaches 14 pixels before and 14 after that, so neighbouring patches
/// overlap by 28 pixels.
pub fn coarse_patch_range(index: usize) -> std::ops::Range<usize> {
    let start = (index * COARSE_STRIDE) as isize - ((COARSE_PATCH - COARSE_STRIDE) / 2) as isize;
    let end = start + COARSE_PATCH as isize;
    (start.max(0) as usize)..(end.min(CROP_SIZE as isize) as usize)
}

/// Manhattan distance from every lung pixel to the nearest non-lung pixel (0 outside the
/// lung); pixels beyond the crop count as non-lung.
///
/// Two raster passes of the city-block distance transform give exactly the breadth-first
/// search distance with 4-connectivity.
pub fn manhattan_distance_to_border(mask: &Mask) -> Image<u32> {
    let (rows, columns) = (mask.rows, mask.columns);
    let far = (rows + columns) as u32;
    let mut distance = Image::filled(rows, columns, 0u32);
    for r in 0..rows {
        for c in 0..columns {
            if !mask.get(r, c) {
                continue;
            }
            let up = if r > 0 { distance.get(r - 1, c) } else { 0 };
            let left = if c > 0 { distance.get(r, c - 1) } else { 0 };
            distance.set(r, c, (up.min(left) + 1).min(far));
        }
    }
    for r in (0..rows).rev() {
        for c in (0..columns).rev() {
            if !mask.get(r, c) {
                continue;
            }
            let down = if r + 1 < rows { distance.get(r + 1, c) } else { 0 };
            let right = if c + 1 < columns { distance.get(r, c + 1) } else { 0 };
            let value = distance.get(r, c).min(down + 1).min(right + 1);
            distance.set(r, c, value);
        }
    }
    distance
}

/// Returns, for each coarse patch, the minimum periphery distance over its lung pixels
/// (0 when the patch contains no lung).
pub fn coarse_patch_min_distance(distance: &Image<u32>, mask: &Mask) -> Image<u32> {
    // Separable: the minimum over each patch's columns for every row, then over its rows.
    let size = distance.rows;
    let lung_distance = |r: usize, c: usize| if mask.get(r, c) { distance.get(r, c) } else { u32::MAX };
    let mut by_row = Image::filled(size, COARSE_GRID, u32::MAX);
    for r in 0..size {
        for j in 0..COARSE_GRID {
            let minimum = coarse_patch_range(j).map(|c| lung_distance(r, c)).min().unwrap_or(u32::MAX);
            by_row.set(r, j, minimum);
        }
    }
    coarse_patches(|_, j, rows, _| {
        let minimum = rows.map(|r| by_row.get(r, j)).min().unwrap_or(u32::MAX);
        if minimum == u32::MAX {
            0
        } else {
            minimum
        }
    })
}

/// Thresholds of the pseudo-infection band of one series, in normalised units (0..=2048).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct InfectionBand {
    /// Darker pixels are air, background or healthy lung: the standard deviation of all
    /// lobe crop pixels of the series (the method's threshold), or the ground-glass floor
    /// where that is lower. See [`InfectionBand::from_histogram`].
    pub lower: f64,
    /// The least frequent value between the dark and the bright peak of the crop pixels'
    /// histogram: brighter pixels are soft tissue and bone.
    pub upper: f64,
}

impl InfectionBand {
    /// Derives the band from the histogram of every lobe crop pixel of a series
    /// (`histogram[v]` counts value `v`), or `None` for an empty histogram.
    ///
    /// The dark and bright peaks are the most frequent values below and above the
    /// histogram's two-cluster K-means threshold. Value 0 (the crops' black surround and
    /// clipped air) is left out of the peaks, or the dark peak would sit at 0 and the
    /// least frequent value right next to it. The histogram is smoothed over 33 values
    /// (about 1.6% of the range) before the least frequent value between the peaks is
    /// taken, so single-value noise does not decide it. That value is searched above the
    /// standard deviation only. The standard deviation uses every pixel, zeros included.
    ///
    /// The lower threshold departs from the method where `ground_glass_floor` (-700 HU in
    /// normalised units, the usual lower bound of ground glass, see
    /// [`ground_glass_floor`]) lies below the standard deviation. The standard deviation
    /// follows how much soft tissue the crops contain, not the lung. On the phantoms it is
    /// near -570 HU, which left the faint third of ground glass (-700 to -570 HU) outside
    /// the band. The infection heads then learned to miss it, and the infected share of
    /// COVID-19 scans came out at about 60% of the truth. `None` keeps the method's
    /// threshold.
    pub fn from_histogram(histogram: &[u64], ground_glass_floor: Option<f64>) -> Option<InfectionBand> {
        let total: u64 = histogram.iter().sum();
        if total == 0 {
            return None;
        }
        let mean = histogram.iter().enumerate().map(|(v, c)| v as f64 * *c as f64).sum::<f64>() / total as f64;
        let variance = histogram
            .iter()
            .enumerate()
            .map(|(v, c)| (v as f64 - mean).powi(2) * *c as f64)
            .sum::<f64>()
            / total as f64;

        let mut content = histogram.to_vec();
        content[0] = 0;
        let smoothed = smooth(&content, 16);
        let split = crate::kmeans::kmeans_two_clusters(&content).map_or(0.0, |c| c.threshold()).round() as usize;
        let split = split.clamp(1, histogram.len() - 1);
        let dark_peak = 1 + argmax(&smoothed[1..=split]);
        let bright_peak = split + argmax(&smoothed[split..]);
        // Infection forms a third bump between the peaks, and the least frequent value
        // would then fall between healthy lung and infection. Above the standard deviation,
        // the least frequent value separates infection from tissue, as the band needs.
        let deviation = variance.sqrt();
        let start = (deviation.ceil() as usize).clamp(dark_peak, bright_peak);
        let valley = start + argmin(&smoothed[start..=bright_peak]);
        Some(InfectionBand {
            lower: ground_glass_floor.map_or(deviation, |floor| deviation.min(floor)),
            upper: valley as f64,
        })
    }

    /// Returns whether a normalised value lies strictly inside the band.
    pub fn contains(&self, value: f64) -> bool {
        value > self.lower && value < self.upper
    }
}

/// Returns the lower bound of ground glass (-700 HU) in the normalised units of a series
/// whose background median is `background_median_hu`. Returns `None` when that median is
/// not plausibly air, because the normalised values then do not map to HU.
pub fn ground_glass_floor(background_median_hu: f64, background_plausible: bool) -> Option<f64> {
    background_plausible.then(|| (f64::from(crate::quantify::GROUND_GLASS_HU.0) - background_median_hu).max(0.0))
}

/// Lung pixels of a crop whose value lies in the infection band.
pub fn suspect_mask(crop: &Image<u16>, mask: &Mask, band: &InfectionBand) -> Mask {
    Mask::from_vec(
        crop.rows,
        crop.columns,
        crop.data
            .iter()
            .zip(&mask.data)
            .map(|(value, lung)| *lung && band.contains(f64::from(*value)))
            .collect(),
    )
}

/// Pseudo-infection label of each coarse patch: infected when more than a third of its
/// pixels are suspect.
pub fn coarse_patch_labels(suspect: &Mask) -> Image<bool> {
    coarse_patches(|_, _, rows, columns| {
        let pixels = rows.len() * columns.len();
        let mut count = 0;
        for r in rows {
            for c in columns.clone() {
                count += usize::from(suspect.get(r, c));
            }
        }
        count * 3 > pixels
    })
}

/// Evaluates `patch(i, j, rows, columns)` for every cell (i, j) of the coarse grid.
fn coarse_patches<T: Copy + Default>(
    mut patch: impl FnMut(usize, usize, std::ops::Range<usize>, std::ops::Range<usize>) -> T,
) -> Image<T> {
    let mut out = Image::filled(COARSE_GRID, COARSE_GRID, T::default());
    for i in 0..COARSE_GRID {
        for j in 0..COARSE_GRID {
            out.set(i, j, patch(i, j, coarse_patch_range(i), coarse_patch_range(j)));
        }
    }
    out
}

fn smooth(histogram: &[u64], half_width: usize) -> Vec<f64> {
    let n = histogram.len();
    let mut prefix = vec![0u64; n + 1];
    for (i, count) in histogram.iter().enumerate() {
        prefix[i + 1] = prefix[i] + count;
    }
    (0..n)
        .map(|i| {
            let (low, high) = (i.saturating_sub(half_width), (i + half_width + 1).min(n));
            (prefix[high] - prefix[low]) as f64 / (high - low) as f64
        })
        .collect()
}

fn argmax(values: &[f64]) -> usize {
    values
        .iter()
        .enumerate()
        .fold((0, f64::NEG_INFINITY), |best, (i, v)| if *v > best.1 { (i, *v) } else { best })
        .0
}

fn argmin(values: &[f64]) -> usize {
    values
        .iter()
        .enumerate()
        .fold((0, f64::INFINITY), |best, (i, v)| if *v < best.1 { (i, *v) } else { best })
        .0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_ranges_overlap_by_28() {
        assert_eq!(coarse_patch_range(0), 0..22);
        assert_eq!(coarse_patch_range(2), 2..38);
        assert_eq!(coarse_patch_range(3), 10..46);
        assert_eq!(coarse_patch_range(31), 234..256);
    }

    #[test]
    fn manhattan_distance_of_a_square() {
        // A 5×5 lung in a 7×7 crop: the centre is 3 steps from the nearest non-lung pixel.
        let mut mask = Mask::filled(7, 7, false);
        for r in 1..6 {
            for c in 1..6 {
                mask.set(r, c, true);
            }
        }
        let distance = manhattan_distance_to_border(&mask);
        assert_eq!(distance.get(3, 3), 3);
        assert_eq!(distance.get(1, 1), 1);
        assert_eq!(distance.get(2, 3), 2);
        assert_eq!(distance.get(0, 0), 0);
        // Beyond the crop counts as non-lung.
        let full = Mask::filled(3, 3, true);
        assert_eq!(manhattan_distance_to_border(&full).get(1, 1), 2);
    }

    #[test]
    fn band_between_std_and_valley() {
        // Black surround at 0, a lung peak around 150, a tissue peak around 1000, and a
        // thin plateau between them that dips lowest around 600.
        let mut histogram = vec![0u64; 2049];
        histogram[0] = 5000;
        histogram[100..=200].fill(50);
        histogram[950..=1050].fill(30);
        histogram[201..950].fill(3);
        histogram[560..=640].fill(1);
        let band = InfectionBand::from_histogram(&histogram, None).unwrap();
        assert!((560.0..=640.0).contains(&band.upper), "upper {}", band.upper);
        // The standard deviation counts the 5000 zeros too.
        let total: u64 = histogram.iter().sum();
        let mean = histogram.iter().enumerate().map(|(v, c)| v as f64 * *c as f64).sum::<f64>() / total as f64;
        let variance = histogram.iter().enumerate().map(|(v, c)| (v as f64 - mean).powi(2) * *c as f64).sum::<f64>() / total as f64;
        assert!((band.lower - variance.sqrt()).abs() < 1e-9);
        assert!(band.lower > 200.0, "lower {}", band.lower);
        assert!(band.lower < band.upper, "lower {} above upper {}", band.lower, band.upper);
        assert!(InfectionBand::from_histogram(&[0; 10], None).is_none());

        // An infection bump at 300..400 adds a second valley near 250, below the lower
        // threshold: the band's upper end stays at the valley before the tissue peak.
        histogram[300..=400].fill(20);
        let band = InfectionBand::from_histogram(&histogram, None).unwrap();
        assert!((560.0..=640.0).contains(&band.upper), "upper {}", band.upper);
    }

    #[test]
    fn ground_glass_floor_lowers_the_band() {
        // Lung around 150, faint ground glass around 330 (-670 HU), tissue around 1000,
        // and enough black surround that the standard deviation lies above the faint
        // ground glass.
        let mut histogram = vec![0u64; 2049];
        histogram[0] = 5000;
        histogram[100..=200].fill(50);
        histogram[300..=360].fill(20);
        histogram[950..=1050].fill(30);
        let method = InfectionBand::from_histogram(&histogram, None).unwrap();
        assert!(method.lower > 360.0, "the standard deviation {} is above the faint ground glass", method.lower);
        assert!(!method.contains(330.0));

        let floor = ground_glass_floor(-1000.0, true).unwrap();
        assert_eq!(floor, 300.0);
        let band = InfectionBand::from_histogram(&histogram, Some(floor)).unwrap();
        assert_eq!(band.lower, 300.0);
        assert_eq!(band.upper, method.upper, "the floor does not move the valley");
        assert!(band.contains(330.0), "faint ground glass is in the band");
        assert!(!band.contains(150.0), "healthy lung is not in the band");

        // A floor above the standard deviation leaves the method's threshold.
        let band = InfectionBand::from_histogram(&histogram, Some(900.0)).unwrap();
        assert_eq!(band.lower, method.lower);
    }

    #[test]
    fn ground_glass_floor_follows_the_background() {
        // Normalised values are HU minus the background median.
        assert_eq!(ground_glass_floor(-1024.0, true), Some(324.0));
        assert_eq!(ground_glass_floor(-990.0, true), Some(290.0));
        assert_eq!(ground_glass_floor(-500.0, false), None);
    }

    #[test]
    fn patch_min_distance_matches_brute_force() {
        let mut mask = Mask::filled(CROP_SIZE, CROP_SIZE, false);
        for r in 40..200 {
            for c in 30..(60 + r / 2) {
                mask.set(r, c, true);
            }
        }
        let distance = manhattan_distance_to_border(&mask);
        let fast = coarse_patch_min_distance(&distance, &mask);
        for i in 0..COARSE_GRID {
            for j in 0..COARSE_GRID {
                let mut expected = u32::MAX;
                for r in coarse_patch_range(i) {
                    for c in coarse_patch_range(j) {
                        if mask.get(r, c) {
                            expected = expected.min(distance.get(r, c));
                        }
                    }
                }
                let expected = if expected == u32::MAX { 0 } else { expected };
                assert_eq!(fast.get(i, j), expected, "patch ({i}, {j})");
            }
        }
        assert!(fast.data.iter().any(|d| *d > 5));
    }

    #[test]
    fn patch_label_needs_a_third() {
        let mut suspect = Mask::filled(CROP_SIZE, CROP_SIZE, false);
        // Patch (10, 10) covers rows and columns 66..102 (36 × 36 = 1296 pixels); fill
        // 433 of them (more than a third) in its top rows.
        let mut filled = 0;
        'outer: for r in 66..102 {
            for c in 66..102 {
                suspect.set(r, c, true);
                filled += 1;
                if filled == 433 {
                    break 'outer;
                }
            }
        }
        let labels = coarse_patch_labels(&suspect);
        assert!(labels.get(10, 10));
        assert!(!labels.get(12, 12));
    }
}
