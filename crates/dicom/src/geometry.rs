//! Image geometry in the DICOM patient coordinate system (LPS: +x toward the patient's
//! left, +y posterior, +z toward the head): the axial check, the in-plane reorientation
//! to one canonical frame, and slice ordering along the normal.

use std::path::Path;

use serde::Serialize;

use crate::error::{ReadError, SliceGap};

/// Cross product of the row and column direction cosines: the image normal.
pub fn normal(orientation: &[f64; 6]) -> [f64; 3] {
    let (r, c) = (&orientation[0..3], &orientation[3..6]);
    [
        r[1] * c[2] - r[2] * c[1],
        r[2] * c[0] - r[0] * c[2],
        r[0] * c[1] - r[1] * c[0],
    ]
}

/// Returns the normal of `orientation`, unit length and pointing toward the head (+z), so
/// that slice positions grow from feet to head whatever way the rows and columns run.
pub fn head_normal(orientation: &[f64; 6]) -> [f64; 3] {
    let n = normal(orientation);
    let length = (n[0] * n[0] + n[1] * n[1] + n[2] * n[2]).sqrt();
    let sign = if n[2] < 0.0 { -1.0 } else { 1.0 };
    [sign * n[0] / length, sign * n[1] / length, sign * n[2] / length]
}

/// Checks that the image plane is axial: its normal within `max_tilt_deg` of the z axis.
///
/// # Errors
///
/// `not_axial` for coronal, sagittal and strongly oblique planes, and `invalid_attribute`
/// for direction cosines that do not span a plane.
pub fn check_axial(orientation: &[f64; 6], max_tilt_deg: f64, path: &Path) -> Result<(), ReadError> {
    let n = normal(orientation);
    let length = (n[0] * n[0] + n[1] * n[1] + n[2] * n[2]).sqrt();
    // Also catches NaN: unit direction cosines give a normal of length 1.
    if length.is_nan() || length <= 0.5 {
        return Err(ReadError::InvalidAttribute {
            path: path.to_path_buf(),
            attribute: "Image Orientation (Patient)",
            value: format!("{orientation:?}"),
        });
    }
    let tilt_deg = (n[2].abs() / length).clamp(0.0, 1.0).acos().to_degrees();
    if tilt_deg > max_tilt_deg {
        return Err(ReadError::NotAxial {
            path: path.to_path_buf(),
            orientation: *orientation,
            tilt_deg,
            limit_deg: max_tilt_deg,
        });
    }
    Ok(())
}

/// Mapping of stored pixels to the canonical frame, where rows run anterior to posterior
/// (+y) and columns run from the patient's right to the patient's left (+x): the usual
/// radiological view of a supine patient seen from the feet.
///
/// Canonical pixel `(row, col)` reads stored pixel `(r, c)` as follows. Without
/// `transpose`, `r` comes from `row` and `c` from `col`; with it, `c` comes from `row` and
/// `r` from `col`. A set flip counts that stored index from the far end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct InPlaneMapping {
    /// The stored rows run along x (the stored image is transposed).
    pub transpose: bool,
    /// The canonical row index counts the source index from its far end.
    pub flip_rows: bool,
    /// The canonical column index counts the source index from its far end.
    pub flip_columns: bool,
}

impl InPlaneMapping {
    /// Derives the mapping from _Image Orientation (Patient)_ by snapping each direction to
    /// its dominant x or y axis (tilted planes keep their tilt, nothing is resampled).
    pub fn from_orientation(orientation: &[f64; 6]) -> InPlaneMapping {
        let (row_dir, col_dir) = (&orientation[0..3], &orientation[3..6]);
        // The row direction cosine is the direction of increasing column index.
        let transpose = row_dir[1].abs() > row_dir[0].abs();
        if transpose {
            // Stored columns advance along ±y, stored rows along ±x.
            InPlaneMapping {
                transpose,
                flip_rows: row_dir[1] < 0.0,
                flip_columns: col_dir[0] < 0.0,
            }
        } else {
            InPlaneMapping {
                transpose,
                flip_rows: col_dir[1] < 0.0,
                flip_columns: row_dir[0] < 0.0,
            }
        }
    }

    /// Canonical (rows, columns) of a stored image with `rows` × `columns` pixels.
    pub fn canonical_shape(&self, rows: usize, columns: usize) -> (usize, usize) {
        if self.transpose {
            (columns, rows)
        } else {
            (rows, columns)
        }
    }

    /// Canonical (row spacing, column spacing) in mm from _Pixel Spacing_ (between
    /// rows, between columns).
    pub fn canonical_spacing(&self, pixel_spacing: [f64; 2]) -> [f64; 2] {
        if self.transpose {
            [pixel_spacing[1], pixel_spacing[0]]
        } else {
            pixel_spacing
        }
    }

    /// Canonical row and column direction cosines, each the stored direction or its
    /// negation.
    pub fn canonical_directions(&self, orientation: &[f64; 6]) -> ([f64; 3], [f64; 3]) {
        let row_dir = [orientation[0], orientation[1], orientation[2]];
        let col_dir = [orientation[3], orientation[4], orientation[5]];
        let signed = |v: [f64; 3], flip: bool| if flip { v.map(|x| -x) } else { v };
        if self.transpose {
            // Canonical rows follow the stored row direction (along y).
            (signed(row_dir, self.flip_rows), signed(col_dir, self.flip_columns))
        } else {
            (signed(col_dir, self.flip_rows), signed(row_dir, self.flip_columns))
        }
    }

    /// Copies a stored image (row-major, `rows` × `columns`) into `out` in canonical
    /// layout, converting each sample with `convert`.
    pub fn remap<T: Copy, U>(
        &self,
        stored: &[T],
        rows: usize,
        columns: usize,
        out: &mut [U],
        mut convert: impl FnMut(T) -> U,
    ) {
        debug_assert_eq!(stored.len(), rows * columns);
        debug_assert_eq!(out.len(), rows * columns);
        let (out_rows, out_cols) = self.canonical_shape(rows, columns);
        for row in 0..out_rows {
            let source_a = if self.flip_rows { out_rows - 1 - row } else { row };
            let out_line = &mut out[row * out_cols..(row + 1) * out_cols];
            for (col, target) in out_line.iter_mut().enumerate() {
                let source_b = if self.flip_columns { out_cols - 1 - col } else { col };
                let (r, c) = if self.transpose {
                    (source_b, source_a)
                } else {
                    (source_a, source_b)
                };
                *target = convert(stored[r * columns + c]);
            }
        }
    }

    /// Patient position (mm) of canonical pixel (0, 0), given the stored image's
    /// _Image Position (Patient)_, its shape and its _Pixel Spacing_.
    pub fn canonical_origin(
        &self,
        position: [f64; 3],
        orientation: &[f64; 6],
        rows: usize,
        columns: usize,
        pixel_spacing: [f64; 2],
    ) -> [f64; 3] {
        // Stored pixel (r, c) lies at position + c·Δc·row_dir + r·Δr·col_dir.
        let (out_rows, out_cols) = self.canonical_shape(rows, columns);
        let source_a = if self.flip_rows { out_rows - 1 } else { 0 };
        let source_b = if self.flip_columns { out_cols - 1 } else { 0 };
        let (r, c) = if self.transpose {
            (source_b, source_a)
        } else {
            (source_a, source_b)
        };
        let mut origin = position;
        for axis in 0..3 {
            origin[axis] += c as f64 * pixel_spacing[1] * orientation[axis]
                + r as f64 * pixel_spacing[0] * orientation[3 + axis];
        }
        origin
    }
}

/// Median of the spacings between consecutive sorted positions; `None` for fewer than two.
pub fn median_spacing(sorted_positions: &[f64]) -> Option<f64> {
    let mut diffs: Vec<f64> = sorted_positions.windows(2).map(|w| w[1] - w[0]).collect();
    if diffs.is_empty() {
        return None;
    }
    diffs.sort_by(f64::total_cmp);
    let mid = diffs.len() / 2;
    Some(if diffs.len() % 2 == 1 {
        diffs[mid]
    } else {
        0.5 * (diffs[mid - 1] + diffs[mid])
    })
}

/// Returns the gaps between consecutive sorted positions larger than `max_ratio` × the
/// median spacing.
pub fn find_gaps(sorted_positions: &[f64], max_ratio: f64) -> Vec<SliceGap> {
    let Some(median) = median_spacing(sorted_positions) else {
        return Vec::new();
    };
    sorted_positions
        .windows(2)
        .filter(|w| w[1] - w[0] > max_ratio * median)
        .map(|w| SliceGap {
            below_mm: w[0],
            above_mm: w[1],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUPINE: [f64; 6] = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0];
    const PRONE: [f64; 6] = [-1.0, 0.0, 0.0, 0.0, -1.0, 0.0];
    const TRANSPOSED: [f64; 6] = [0.0, 1.0, 0.0, 1.0, 0.0, 0.0];
    const CORONAL: [f64; 6] = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0];

    /// Builds a 2×3 stored image whose pixel values encode their stored index as 10·r + c.
    fn stored_2x3() -> Vec<i32> {
        vec![0, 1, 2, 10, 11, 12]
    }

    fn remapped(orientation: &[f64; 6]) -> (Vec<i32>, (usize, usize)) {
        let mapping = InPlaneMapping::from_orientation(orientation);
        let mut out = vec![0; 6];
        mapping.remap(&stored_2x3(), 2, 3, &mut out, |v| v);
        (out, mapping.canonical_shape(2, 3))
    }

    #[test]
    fn supine_is_identity() {
        assert_eq!(remapped(&SUPINE), (stored_2x3(), (2, 3)));
        assert_eq!(head_normal(&SUPINE), [0.0, 0.0, 1.0]);
    }

    #[test]
    fn prone_flips_both_axes() {
        // Stored pixel (0, 0) lies at the patient's left and posterior; flipping both axes
        // makes the stored last pixel the canonical first.
        assert_eq!(remapped(&PRONE).0, vec![12, 11, 10, 2, 1, 0]);
        // row × col = (-x) × (-y) = +z.
        assert_eq!(head_normal(&PRONE), [0.0, 0.0, 1.0]);
    }

    #[test]
    fn transposed_swaps_axes() {
        // Stored columns run along +y, so they become canonical rows.
        let (out, shape) = remapped(&TRANSPOSED);
        assert_eq!(shape, (3, 2));
        assert_eq!(out, vec![0, 10, 1, 11, 2, 12]);
        // row × col = y × x = -z, which head_normal turns around.
        assert_eq!(head_normal(&TRANSPOSED), [0.0, 0.0, 1.0]);
    }

    #[test]
    fn canonical_directions_point_to_posterior_and_left() {
        for orientation in [SUPINE, PRONE, TRANSPOSED, [-1.0, 0.0, 0.0, 0.0, 1.0, 0.0]] {
            let mapping = InPlaneMapping::from_orientation(&orientation);
            let (rows, cols) = mapping.canonical_directions(&orientation);
            assert_eq!(rows, [0.0, 1.0, 0.0], "{orientation:?}");
            assert_eq!(cols, [1.0, 0.0, 0.0], "{orientation:?}");
        }
    }

    #[test]
    fn canonical_origin_of_prone_image() {
        // Prone 2×3 image at (100, 50, 0) with 1 mm rows and 2 mm columns: stored pixel
        // (1, 2) is at 100 - 2·2 = 96 in x and 50 - 1·1 = 49 in y.
        let mapping = InPlaneMapping::from_orientation(&PRONE);
        let origin = mapping.canonical_origin([100.0, 50.0, 0.0], &PRONE, 2, 3, [1.0, 2.0]);
        assert_eq!(origin, [96.0, 49.0, 0.0]);
    }

    #[test]
    fn coronal_is_not_axial() {
        let error = check_axial(&CORONAL, 30.0, Path::new("x.dcm")).unwrap_err();
        assert_eq!(error.reason(), lungstream_schemas::ReasonCode::NotAxial);
        assert!(check_axial(&SUPINE, 30.0, Path::new("x.dcm")).is_ok());
    }

    #[test]
    fn tilt_within_limit_is_axial() {
        // A 20 degree gantry tilt: the column direction leans toward z.
        let (s, c) = 20f64.to_radians().sin_cos();
        let tilted = [1.0, 0.0, 0.0, 0.0, c, -s];
        assert!(check_axial(&tilted, 30.0, Path::new("x.dcm")).is_ok());
        assert!(check_axial(&tilted, 10.0, Path::new("x.dcm")).is_err());
    }

    #[test]
    fn gaps_are_found_against_the_median() {
        let positions = [0.0, 2.5, 5.0, 7.5, 12.5, 15.0];
        let gaps = find_gaps(&positions, 1.5);
        assert_eq!(gaps.len(), 1);
        assert_eq!((gaps[0].below_mm, gaps[0].above_mm), (7.5, 12.5));
        assert_eq!(median_spacing(&positions), Some(2.5));
        assert!(find_gaps(&[0.0, 3.0, 6.0], 1.5).is_empty());
    }
}
