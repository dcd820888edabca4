//! Batch-effect removal: Hounsfield units to a [0, 1] scale on which outside air is 0
//! whatever the scanner's offset.
//!
//! Values are kept as integers: a normalised value `n` in `0..=2048` stands for
//! `n / 2048`, which is exact because HU and the background median are whole numbers.

use crate::image::{reachable_from_border, Image, Mask};
use crate::kmeans::kmeans_two_clusters;

/// HU below this are artefacts and are clipped.
pub const HU_MIN: i16 = -2000;
/// HU above this are artefacts and are clipped.
pub const HU_MAX: i16 = 3000;
/// Largest shifted value: `HU_MAX - HU_MIN`.
pub const SHIFTED_MAX: u16 = (HU_MAX as i32 - HU_MIN as i32) as u16;
/// Shifted values above this (bone detail) are clipped; the normalised scale divides by it.
pub const NORMALISED_MAX: u16 = 2048;

/// Clips HU to [`HU_MIN`, `HU_MAX`] and subtracts `HU_MIN`, giving 0..=5000.
pub fn shift_hu(hu: i16) -> u16 {
    (i32::from(hu.clamp(HU_MIN, HU_MAX)) - i32::from(HU_MIN)) as u16
}

/// Subtracts the background median from a shifted value (negatives become 0) and clips
/// at [`NORMALISED_MAX`]: the numerator of the normalised value.
pub fn normalise_value(shifted: u16, background_median: u16) -> u16 {
    shifted.saturating_sub(background_median).min(NORMALISED_MAX)
}

/// Histogram of the non-padding values of an image whose values are at most `max`.
pub fn histogram(values: &[u16], padding: &[bool], max: u16) -> Vec<u64> {
    let mut counts = vec![0u64; usize::from(max) + 1];
    for (value, is_padding) in values.iter().zip(padding) {
        if !is_padding {
            counts[usize::from((*value).min(max))] += 1;
        }
    }
    counts
}

/// Air outside the body on one slice of shifted values: pixels of the low K-means cluster
/// connected to the image border, padding excluded.
///
/// Padding is passable for the connection, because the fill outside the reconstruction
/// circle separates the air inside it from the border. K-means runs on the non-padding
/// values only.
pub fn background_mask(shifted: &Image<u16>, padding: &Mask) -> Mask {
    let counts = histogram(&shifted.data, &padding.data, SHIFTED_MAX);
    let Some(clusters) = kmeans_two_clusters(&counts) else {
        return Mask::filled(shifted.rows, shifted.columns, false);
    };
    let passable = Mask::from_vec(
        shifted.rows,
        shifted.columns,
        shifted
            .data
            .iter()
            .zip(&padding.data)
            .map(|(value, is_padding)| *is_padding || clusters.is_low(f64::from(*value)))
            .collect(),
    );
    let mut background = reachable_from_border(&passable);
    for (pixel, is_padding) in background.data.iter_mut().zip(&padding.data) {
        *pixel &= !is_padding;
    }
    background
}

/// Running histogram of background values over a whole series, for its median.
#[derive(Clone, Debug)]
pub struct BackgroundHistogram {
    counts: Vec<u64>,
}

impl Default for BackgroundHistogram {
    fn default() -> Self {
        BackgroundHistogram {
            counts: vec![0; usize::from(SHIFTED_MAX) + 1],
        }
    }
}

impl BackgroundHistogram {
    /// Adds the background pixels of one slice.
    pub fn add(&mut self, shifted: &Image<u16>, background: &Mask) {
        for (value, is_background) in shifted.data.iter().zip(&background.data) {
            if *is_background {
                self.counts[usize::from(*value)] += 1;
            }
        }
    }

    /// Merges another histogram into this one.
    pub fn merge(mut self, other: BackgroundHistogram) -> Self {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a += b;
        }
        self
    }

    pub fn pixels(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Returns the lower median of the background values (shifted units), or `None`
    /// without background pixels.
    pub fn median(&self) -> Option<u16> {
        let total = self.pixels();
        if total == 0 {
            return None;
        }
        let target = total.div_ceil(2);
        let mut seen = 0;
        for (value, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= target {
                return Some(value as u16);
            }
        }
        None
    }
}

/// Applies a 3×3 median filter; the border repeats its edge pixels (for a 3×3 window this
/// is the same as scipy.ndimage's default reflection).
///
/// Each row is filtered in blocks of 32 pixels: the nine neighbours of every pixel of the
/// block go into nine arrays, and one branch-free min/max network runs over the arrays
/// lane by lane, which the compiler vectorises.
pub fn median_filter_3x3(image: &Image<u16>) -> Image<u16> {
    const BLOCK: usize = 32;
    let (rows, columns) = (image.rows, image.columns);
    let mut out = Image::filled(rows, columns, 0u16);
    if rows == 0 || columns == 0 {
        return out;
    }
    // Each source row with its edge pixel repeated on both sides.
    let padded_row = |r: usize| -> Vec<u16> {
        let row = &image.data[r * columns..(r + 1) * columns];
        let mut padded = Vec::with_capacity(columns + 2);
        padded.push(row[0]);
        padded.extend_from_slice(row);
        padded.push(row[columns - 1]);
        padded
    };
    let mut lanes = [[0u16; BLOCK]; 9];
    for r in 0..rows {
        let neighbours = [padded_row(r.saturating_sub(1)), padded_row(r), padded_row((r + 1).min(rows - 1))];
        for start in (0..columns).step_by(BLOCK) {
            let width = BLOCK.min(columns - start);
            for (n, source) in neighbours.iter().enumerate() {
                for dc in 0..3 {
                    lanes[n * 3 + dc][..width].copy_from_slice(&source[start + dc..start + dc + width]);
                }
            }
            median_of_9_lanes(&mut lanes);
            out.data[r * columns + start..r * columns + start + width].copy_from_slice(&lanes[4][..width]);
        }
    }
    out
}

/// Runs the 19-exchange median network of nine values on every lane: afterwards
/// `lanes[4][i]` is the median of `lanes[0..9][i]`.
fn median_of_9_lanes<const N: usize>(lanes: &mut [[u16; N]; 9]) {
    const NETWORK: [(usize, usize); 19] = [
        (1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8), (0, 3),
        (5, 8), (4, 7), (3, 6), (1, 4), (2, 5), (4, 7), (4, 2), (6, 4), (4, 2),
    ];
    for (a, b) in NETWORK {
        let (low, high) = if a < b {
            let (head, tail) = lanes.split_at_mut(b);
            (&mut head[a], &mut tail[0])
        } else {
            let (head, tail) = lanes.split_at_mut(a);
            (&mut tail[0], &mut head[b])
        };
        for (x, y) in low.iter_mut().zip(high.iter_mut()) {
            let (min, max) = ((*x).min(*y), (*x).max(*y));
            *x = min;
            *y = max;
        }
    }
}

/// Median of nine values with the same network (tests compare the lane version with it).
#[cfg(test)]
fn median_of_9(p: &mut [u16; 9]) -> u16 {
    let mut lanes = [[0u16; 1]; 9];
    for (lane, value) in lanes.iter_mut().zip(p.iter()) {
        lane[0] = *value;
    }
    median_of_9_lanes(&mut lanes);
    lanes[4][0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shift_and_normalise() {
        assert_eq!(shift_hu(-3024), 0);
        assert_eq!(shift_hu(-1000), 1000);
        assert_eq!(shift_hu(3071), 5000);
        // Background median 1000 (air at -1000 HU): air → 0, water (0 HU) → 1000.
        assert_eq!(normalise_value(shift_hu(-1000), 1000), 0);
        assert_eq!(normalise_value(shift_hu(-1020), 1000), 0);
        assert_eq!(normalise_value(shift_hu(0), 1000), 1000);
        // Bone beyond 1048 HU is clipped at 2048.
        assert_eq!(normalise_value(shift_hu(1500), 1000), 2048);
    }

    #[test]
    fn median_of_9_over_permutations() {
        let values = [9u16, 3, 7, 1, 5, 8, 2, 6, 4];
        for rotation in 0..9 {
            let mut window = [0u16; 9];
            for i in 0..9 {
                window[i] = values[(i + rotation) % 9];
            }
            assert_eq!(median_of_9(&mut window), 5);
        }
        assert_eq!(median_of_9(&mut [1, 1, 1, 1, 9, 9, 9, 9, 9]), 9);
        assert_eq!(median_of_9(&mut [0, 0, 0, 0, 0, 7, 7, 7, 7]), 0);
    }

    #[test]
    fn median_filter_matches_sorting() {
        // A 7×70 pseudo-random image: every output is the median of its clamped window.
        let data: Vec<u16> = (0..7 * 70u32).map(|i| (i.wrapping_mul(2654435761) >> 20) as u16 % 4000).collect();
        let image = Image::from_vec(7, 70, data);
        let filtered = median_filter_3x3(&image);
        for r in 0..7usize {
            for c in 0..70usize {
                let mut window = Vec::new();
                for dr in [-1i32, 0, 1] {
                    for dc in [-1i32, 0, 1] {
                        let rr = (r as i32 + dr).clamp(0, 6) as usize;
                        let cc = (c as i32 + dc).clamp(0, 69) as usize;
                        window.push(image.get(rr, cc));
                    }
                }
                window.sort_unstable();
                assert_eq!(filtered.get(r, c), window[4], "({r}, {c})");
            }
        }
    }

    #[test]
    fn median_filter_removes_salt() {
        let mut image = Image::filled(5, 5, 10u16);
        image.set(2, 2, 1000);
        image.set(0, 0, 0);
        let filtered = median_filter_3x3(&image);
        assert_eq!(filtered.get(2, 2), 10);
        // At the corner the window repeats the edge: four copies of 0, five of 10.
        assert_eq!(filtered.get(0, 0), 10);
        assert!(filtered.data.iter().all(|v| *v == 10));
    }

    #[test]
    fn background_is_outside_air_only() {
        // Air (shifted 1000) around a body (2040) that encloses a lung (1150): only the
        // outer air is background. The corner pixel is padding.
        let mut shifted = Image::filled(9, 9, 1000u16);
        for r in 2..7 {
            for c in 2..7 {
                shifted.set(r, c, 2040);
            }
        }
        shifted.set(4, 4, 1150);
        let mut padding = Mask::filled(9, 9, false);
        padding.set(0, 0, true);
        let background = background_mask(&shifted, &padding);
        assert!(!background.get(4, 4), "the lung is not background");
        assert!(!background.get(0, 0), "padding is not background");
        assert!(background.get(0, 1));
        assert_eq!(background.count(), 81 - 25 - 1);
    }

    #[test]
    fn background_median_of_a_histogram() {
        let mut image = Image::filled(1, 5, 0u16);
        image.data = vec![990, 1000, 1000, 1010, 3000];
        let mut histogram = BackgroundHistogram::default();
        histogram.add(&image, &Mask::from_vec(1, 5, vec![true, true, true, true, false]));
        assert_eq!(histogram.pixels(), 4);
        assert_eq!(histogram.median(), Some(1000));
        assert_eq!(BackgroundHistogram::default().median(), None);
    }
}
