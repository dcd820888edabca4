//! Infection maps and infected volume (method.md §6).
//!
//! The coarse map gives each pixel of the 256×256 crop the largest probability of the
//! 36×36 coarse patches that cover it (stride 8, overlap 28). The fine map does the same
//! with the 6×6 fine patches (stride 2, overlap 4). A lung pixel is infected when both
//! maps exceed 0.5.

use std::ops::Range;

use lungstream_preprocess::crop::CROP_SIZE;
use lungstream_preprocess::image::Mask;
use lungstream_preprocess::patches::{coarse_patch_range, COARSE_GRID};

/// Cells of the fine grid along each axis.
pub const FINE_GRID: usize = 128;
/// Side of a fine patch, pixels.
pub const FINE_PATCH: usize = 6;
/// Distance between neighbouring fine patches, pixels.
pub const FINE_STRIDE: usize = 2;
/// A pixel is infected when both maps exceed this.
pub const INFECTED_THRESHOLD: f32 = 0.5;

/// Crop rows (or columns) covered by fine patch `index`, clipped to the crop: cell `j`
/// covers pixels `2j .. 2j + 2`, and its patch reaches two pixels further on each side.
pub fn fine_patch_range(index: usize) -> Range<usize> {
    let start = (index * FINE_STRIDE) as isize - ((FINE_PATCH - FINE_STRIDE) / 2) as isize;
    let end = start + FINE_PATCH as isize;
    (start.max(0) as usize)..(end.min(CROP_SIZE as isize) as usize)
}

/// Spreads a `grid × grid` map of patch probabilities onto the 256×256 crop: each pixel
/// gets the maximum over the patches that cover it. Separable: first along columns for
/// each grid row, then along rows.
fn patch_maximum(values: &[f32], grid: usize, range: fn(usize) -> Range<usize>) -> Vec<f32> {
    assert_eq!(values.len(), grid * grid, "patch map of the wrong size");
    let mut by_column = vec![0f32; grid * CROP_SIZE];
    for i in 0..grid {
        let row = &mut by_column[i * CROP_SIZE..(i + 1) * CROP_SIZE];
        for j in 0..grid {
            let value = values[i * grid + j];
            for pixel in &mut row[range(j)] {
                *pixel = pixel.max(value);
            }
        }
    }
    let mut map = vec![0f32; CROP_SIZE * CROP_SIZE];
    for i in 0..grid {
        let source = &by_column[i * CROP_SIZE..(i + 1) * CROP_SIZE];
        for r in range(i) {
            for (pixel, &value) in map[r * CROP_SIZE..(r + 1) * CROP_SIZE].iter_mut().zip(source) {
                *pixel = pixel.max(value);
            }
        }
    }
    map
}

/// Spreads 32×32 coarse patch probabilities onto the crop's pixels.
pub fn coarse_pixel_map(coarse: &[f32]) -> Vec<f32> {
    patch_maximum(coarse, COARSE_GRID, coarse_patch_range)
}

/// Spreads 128×128 fine patch probabilities onto the crop's pixels.
pub fn fine_pixel_map(fine: &[f32]) -> Vec<f32> {
    patch_maximum(fine, FINE_GRID, fine_patch_range)
}

/// Lung pixels of the crop where both maps exceed 0.5.
pub fn infection_mask(coarse: &[f32], fine: &[f32], lung: &Mask) -> Mask {
    let coarse = coarse_pixel_map(coarse);
    let fine = fine_pixel_map(fine);
    let data = lung
        .data
        .iter()
        .zip(coarse.iter().zip(&fine))
        .map(|(&in_lung, (&c, &f))| in_lung && c > INFECTED_THRESHOLD && f > INFECTED_THRESHOLD)
        .collect();
    Mask::from_vec(CROP_SIZE, CROP_SIZE, data)
}

/// Infected pixels of the full-resolution slice that `infected_crop` crop pixels stand
/// for. A crop scaled down by `s` contains about `s²` times fewer lung pixels than the
/// slice, so the count is multiplied by the slice's lung pixels over the crop's.
pub fn infected_slice_pixels(infected_crop: usize, lung_crop: usize, lung_slice: u32) -> f64 {
    if lung_crop == 0 {
        return 0.0;
    }
    infected_crop as f64 * f64::from(lung_slice) / lung_crop as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fine_patches_tile_with_overlap_four() {
        assert_eq!(fine_patch_range(0), 0..4);
        assert_eq!(fine_patch_range(1), 0..6);
        assert_eq!(fine_patch_range(10), 18..24);
        assert_eq!(fine_patch_range(11), 20..26);
        assert_eq!(fine_patch_range(127), 252..256);
    }

    #[test]
    fn one_coarse_patch_covers_its_36_pixels() {
        let mut coarse = vec![0f32; COARSE_GRID * COARSE_GRID];
        coarse[10 * COARSE_GRID + 20] = 0.8;
        let map = coarse_pixel_map(&coarse);
        // Cell (10, 20) covers rows 66..102 and columns 146..182.
        let covered: Vec<(usize, usize)> = (0..CROP_SIZE * CROP_SIZE).filter(|&i| map[i] > 0.0).map(|i| (i / CROP_SIZE, i % CROP_SIZE)).collect();
        assert_eq!(covered.len(), 36 * 36);
        assert_eq!(covered.first(), Some(&(66, 146)));
        assert_eq!(covered.last(), Some(&(101, 181)));
        assert!(covered.iter().all(|&(r, c)| map[r * CROP_SIZE + c] == 0.8));
    }

    #[test]
    fn overlapping_patches_take_the_maximum() {
        let mut coarse = vec![0f32; COARSE_GRID * COARSE_GRID];
        coarse[5 * COARSE_GRID + 5] = 0.3;
        coarse[5 * COARSE_GRID + 6] = 0.9;
        let map = coarse_pixel_map(&coarse);
        // Column 30 is covered by cells 2..=5 (26..62 is cell 5's range) and column 40 by
        // cells 3..=6, so row 40 reads 0.3 at column 30 and 0.9 at column 40.
        assert_eq!(map[40 * CROP_SIZE + 30], 0.3);
        assert_eq!(map[40 * CROP_SIZE + 40], 0.9);
        // Column 64 is past cell 5 (26..62) but inside cell 6 (34..70).
        assert_eq!(map[40 * CROP_SIZE + 64], 0.9);
        assert_eq!(map[40 * CROP_SIZE + 70], 0.0);
    }

    #[test]
    fn infection_needs_both_maps_and_lung() {
        // The coarse map marks the whole crop. The fine map marks one 6×6 patch at cell
        // (50, 60), pixels 98..104 × 118..124. The lung covers columns 120.. only.
        let coarse = vec![0.9f32; COARSE_GRID * COARSE_GRID];
        let mut fine = vec![0.1f32; FINE_GRID * FINE_GRID];
        fine[50 * FINE_GRID + 60] = 0.7;
        let mut lung = Mask::filled(CROP_SIZE, CROP_SIZE, false);
        for r in 0..CROP_SIZE {
            for c in 120..CROP_SIZE {
                lung.set(r, c, true);
            }
        }
        let infected = infection_mask(&coarse, &fine, &lung);
        assert_eq!(infected.count(), 6 * 4);
        assert!(infected.get(98, 120));
        assert!(infected.get(103, 123));
        assert!(!infected.get(98, 119));
        assert!(!infected.get(104, 120));

        // With a coarse map below threshold nothing is infected.
        let infected = infection_mask(&vec![0.5; COARSE_GRID * COARSE_GRID], &fine, &lung);
        assert_eq!(infected.count(), 0);
    }

    #[test]
    fn scaled_crops_count_slice_pixels() {
        // A crop at scale 0.5 contains a quarter of the slice's lung pixels.
        assert_eq!(infected_slice_pixels(100, 1000, 4000), 400.0);
        assert_eq!(infected_slice_pixels(100, 1000, 1000), 100.0);
        assert_eq!(infected_slice_pixels(5, 0, 0), 0.0);
    }
}
