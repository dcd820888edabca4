//! Lung extraction on one normalised slice: K-means foreground, erosion and dilation,
//! connected components, size filter, background removal, side assignment, and the
//! filling that keeps dense lung (consolidation) inside the lung mask.

use serde::{Deserialize, Serialize};

use crate::image::{close_disk, dilate_square, erode_square, fill_small_holes, label_components, reachable_from_border, Image, Mask};
use crate::kmeans::kmeans_two_clusters;
use crate::normalise::{histogram, NORMALISED_MAX};

/// The patient's side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Right,
    Left,
}

impl Side {
    pub const BOTH: [Side; 2] = [Side::Right, Side::Left];

    pub fn as_str(self) -> &'static str {
        match self {
            Side::Right => "right",
            Side::Left => "left",
        }
    }
}

/// Settings of the lung extraction.
#[derive(Clone, Debug)]
pub struct LungConfig {
    /// Side of the square that erodes the foreground, mm: the method's 3 pixels at about
    /// 0.7 mm. In pixels it would eat thin chests at coarse spacing, so it scales.
    pub erosion_mm: f64,
    /// Side of the square that dilates the eroded foreground so close parts join, mm: the
    /// method's 8 pixels at about 0.7 mm. In pixels, coarse spacing would join the lungs
    /// to the outside air across the chest wall.
    pub dilation_mm: f64,
    /// Objects smaller than this are dropped (holes, trachea, bowel gas). The method's
    /// 5000 pixels at ~0.7 mm pixels are about 2450 mm²; the area in mm² keeps the rule
    /// the same for other matrices.
    pub min_object_area_mm2: f64,
    /// Holes of a lung mask up to this area are filled: vessels, nodules and lesions
    /// inside the lung. Larger holes are the diaphragm's dome seen through the lung base.
    pub max_hole_area_mm2: f64,
    /// Radius of the disk that closes bays in the lung outline, so consolidation against
    /// the chest wall (as dense as the wall, so outside the K-means foreground) counts as
    /// lung. Bays wider than twice this (the heart, the dome) stay open.
    pub closing_radius_mm: f64,
}

impl Default for LungConfig {
    fn default() -> Self {
        LungConfig {
            erosion_mm: 2.1,
            dilation_mm: 5.6,
            min_object_area_mm2: 2450.0,
            max_hole_area_mm2: 1500.0,
            closing_radius_mm: 10.0,
        }
    }
}

/// The lungs found on one slice, as full-slice masks in the canonical frame.
#[derive(Clone, Debug)]
pub struct SliceLungs {
    pub right: Option<Mask>,
    pub left: Option<Mask>,
    /// Column of the body's midline (the patient's right lies at lower columns).
    pub midline_column: f64,
}

impl SliceLungs {
    pub fn side(&self, side: Side) -> Option<&Mask> {
        match side {
            Side::Right => self.right.as_ref(),
            Side::Left => self.left.as_ref(),
        }
    }
}

/// Finds the lungs on one normalised, median-filtered slice.
///
/// 1. Two-cluster K-means over the non-padding values; the low cluster (air and lung) is
///    the foreground.
/// 2. Erosion with a 2.1 mm square, then dilation with a 5.6 mm square (3×3 and 8×8 at
///    0.7 mm pixels).
/// 3. Connected components; objects under `min_object_area_mm2` are dropped, and so are
///    objects connected to the outside air (they touch the border or the padding).
/// 4. The body's midline is the mean column of everything the outside air does not
///    reach, over the rows of the lung candidates (so the table does not count). An object with at least the minimum area on both
///    sides of it is two merged lungs and is split there. The largest object on each side
///    is that side's lung, unless most of it lies outside the body.
/// 5. The lung mask is the object's own foreground pixels, with its small holes filled
///    (vessels, nodules and lesions inside the lung) and narrow bays closed (consolidation
///    against the chest wall), see [`LungConfig`].
pub fn extract_lungs(normalised: &Image<u16>, padding: &Mask, pixel_area_mm2: f64, config: &LungConfig) -> SliceLungs {
    let (rows, columns) = (normalised.rows, normalised.columns);
    let counts = histogram(&normalised.data, &padding.data, NORMALISED_MAX);
    let empty = SliceLungs {
        right: None,
        left: None,
        midline_column: columns as f64 / 2.0,
    };
    let Some(clusters) = kmeans_two_clusters(&counts) else {
        return empty;
    };
    let threshold = clusters.threshold();
    let foreground = Mask::from_vec(
        rows,
        columns,
        normalised
            .data
            .iter()
            .zip(&padding.data)
            .map(|(value, is_padding)| !is_padding && f64::from(*value) <= threshold)
            .collect(),
    );

    // Outside air: foreground (or padding) connected to the border.
    let outside_passable = Mask::from_vec(
        rows,
        columns,
        foreground.data.iter().zip(&padding.data).map(|(f, p)| *f || *p).collect(),
    );
    let outside = reachable_from_border(&outside_passable);
    // Everything the outside air does not reach: the body with the lungs inside it, and
    // the table, which contains no lung candidates.
    let body_filled = Mask::from_vec(rows, columns, outside.data.iter().map(|v| !v).collect());
    if !body_filled.data.iter().any(|v| *v) {
        return empty;
    }
    let pixel_side = pixel_area_mm2.sqrt();
    let erosion = square_side_pixels(config.erosion_mm, pixel_side);
    let dilation = square_side_pixels(config.dilation_mm, pixel_side);
    let opened = dilate_square(&erode_square(&foreground, erosion), dilation);
    let components = label_components(&opened);
    let min_pixels = (config.min_object_area_mm2 / pixel_area_mm2).ceil() as usize;
    let max_hole_pixels = (config.max_hole_area_mm2 / pixel_area_mm2).floor() as usize;
    let closing_radius = (config.closing_radius_mm / pixel_area_mm2.sqrt()).round() as usize;

    // Objects reaching the outside air are the background, and objects mostly outside the
    // body (an air pocket in a cushion) are not lungs.
    let count = components.areas.len();
    let mut outside_pixels = vec![0usize; count];
    let mut body_pixels = vec![0usize; count];
    let mut first_row = vec![usize::MAX; count];
    let mut last_row = vec![0usize; count];
    let mut first_column = vec![usize::MAX; count];
    let mut last_column = vec![0usize; count];
    for r in 0..rows {
        for c in 0..columns {
            let i = r * columns + c;
            let label = components.labels.data[i] as usize;
            if label != 0 {
                outside_pixels[label] += usize::from(outside.data[i]);
                body_pixels[label] += usize::from(body_filled.data[i]);
                first_row[label] = first_row[label].min(r);
                last_row[label] = last_row[label].max(r);
                first_column[label] = first_column[label].min(c);
                last_column[label] = last_column[label].max(c);
            }
        }
    }
    let candidates: Vec<usize> = (1..count)
        .filter(|label| {
            let area = components.areas[*label];
            area >= min_pixels
                && !components.touches_border[*label]
                && outside_pixels[*label] * 2 <= area
                && body_pixels[*label] * 2 >= area
        })
        .collect();

    // The midline is the mean column of the body over the candidates' rows, which leaves
    // out the table below the patient (it need not be centred under the body).
    let candidate_rows = candidates
        .iter()
        .fold(None, |range: Option<(usize, usize)>, l| {
            Some(range.map_or((first_row[*l], last_row[*l]), |(a, b)| (a.min(first_row[*l]), b.max(last_row[*l]))))
        })
        .unwrap_or((0, rows - 1));
    let midline_column = mean_column_in_rows(&body_filled, candidate_rows.0, candidate_rows.1);

    // Area of each candidate on the patient's right (low columns) and left of the midline.
    let mut right_area = vec![0usize; count];
    let mut left_area = vec![0usize; count];
    // Columns below this one lie on the patient's right (column < midline_column).
    let split_column = (midline_column.ceil().max(0.0) as usize).min(columns);
    for row in components.labels.data.chunks(columns) {
        for label in &row[..split_column] {
            right_area[*label as usize] += 1;
        }
        for label in &row[split_column..] {
            left_area[*label as usize] += 1;
        }
    }

    let mut best = [(0usize, 0usize); 2]; // (area, label) for right, left
    let mut split_labels = Vec::new();
    for label in candidates {
        let area = components.areas[label];
        let merged = right_area[label] >= min_pixels && left_area[label] >= min_pixels;
        if merged {
            split_labels.push(label);
            for (slot, side_area) in [(0, right_area[label]), (1, left_area[label])] {
                if side_area > best[slot].0 {
                    best[slot] = (side_area, label);
                }
            }
        } else {
            let slot = usize::from(left_area[label] > right_area[label]);
            if area > best[slot].0 {
                best[slot] = (area, label);
            }
        }
    }

    let mut lungs = [None, None];
    for (slot, (area, label)) in best.into_iter().enumerate() {
        if area == 0 {
            continue;
        }
        let split = split_labels.contains(&label);
        // Work in a window around the object, grown so that neither the hole filling nor
        // the closing reaches its edge: the result equals the full-slice computation.
        let margin = closing_radius + 2;
        let top = first_row[label].saturating_sub(margin);
        let bottom = (last_row[label] + margin).min(rows - 1);
        let left = first_column[label].saturating_sub(margin);
        let right = (last_column[label] + margin).min(columns - 1);
        let (window_rows, window_columns) = (bottom - top + 1, right - left + 1);
        let at = |wr: usize, wc: usize| (top + wr) * columns + left + wc;
        let object = Mask::from_vec(
            window_rows,
            window_columns,
            (0..window_rows * window_columns)
                .map(|w| {
                    let (wr, wc) = (w / window_columns, w % window_columns);
                    let i = at(wr, wc);
                    let on_right = ((left + wc) as f64) < midline_column;
                    let on_side = if slot == 0 { on_right } else { !on_right };
                    components.labels.data[i] as usize == label && (!split || on_side) && foreground.data[i]
                })
                .collect(),
        );
        // Small holes are vessels, nodules and lesions inside the lung; large ones are
        // the diaphragm's dome seen through the lung base, which is not lung.
        let filled = fill_small_holes(&object, max_hole_pixels);
        let closed = close_disk(&filled, closing_radius);
        let dense_bays = Mask::from_vec(
            window_rows,
            window_columns,
            (0..window_rows * window_columns)
                .map(|w| {
                    let i = at(w / window_columns, w % window_columns);
                    filled.data[w] || (closed.data[w] && body_filled.data[i] && !padding.data[i])
                })
                .collect(),
        );
        let lung_window = fill_small_holes(&dense_bays, max_hole_pixels);
        let mut lung = Mask::filled(rows, columns, false);
        for wr in 0..window_rows {
            let start = at(wr, 0);
            lung.data[start..start + window_columns]
                .copy_from_slice(&lung_window.data[wr * window_columns..(wr + 1) * window_columns]);
        }
        lungs[slot] = Some(lung);
    }
    let [right, left] = lungs;
    SliceLungs {
        right,
        left,
        midline_column,
    }
}

/// Side in pixels of the square that spans `mm` at `pixel_side` mm per pixel (at least 1).
/// The method's 3 and 8 pixels for ~0.7 mm pixels are 2.1 and 5.6 mm.
pub fn square_side_pixels(mm: f64, pixel_side: f64) -> usize {
    ((mm / pixel_side).round() as usize).max(1)
}

/// Mean column of the set pixels in rows `first ..= last` (the image's centre column when
/// none is set).
fn mean_column_in_rows(mask: &Mask, first: usize, last: usize) -> f64 {
    let (mut sum, mut count) = (0f64, 0usize);
    for r in first..=last.min(mask.rows - 1) {
        for (c, set) in mask.data[r * mask.columns..(r + 1) * mask.columns].iter().enumerate() {
            if *set {
                sum += c as f64;
                count += 1;
            }
        }
    }
    if count == 0 {
        mask.columns as f64 / 2.0
    } else {
        sum / count as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn square_sides_follow_the_spacing() {
        // The method's sizes at 0.7 mm, and the same physical size at other spacings.
        assert_eq!(square_side_pixels(2.1, 0.7), 3);
        assert_eq!(square_side_pixels(5.6, 0.7), 8);
        assert_eq!(square_side_pixels(5.6, 1.4), 4);
        assert_eq!(square_side_pixels(2.1, 2.8), 1);
    }

    #[test]
    fn midline_ignores_rows_outside_the_range() {
        // Rows 0-1: a body centred on column 4; row 2: a table shifted right.
        let mut mask = Mask::filled(3, 10, false);
        for c in 2..=6 {
            mask.set(0, c, true);
            mask.set(1, c, true);
        }
        for c in 5..10 {
            mask.set(2, c, true);
        }
        assert_eq!(mean_column_in_rows(&mask, 0, 1), 4.0);
        assert!(mean_column_in_rows(&mask, 0, 2) > 4.0);
        assert_eq!(mean_column_in_rows(&Mask::filled(2, 10, false), 0, 1), 5.0);
    }
}
