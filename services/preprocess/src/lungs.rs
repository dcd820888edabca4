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
    /// Side of the square that erodes the foreground (pixels).
    pub erosion: usize,
    /// Side of the square that dilates the eroded foreground, so close parts join (pixels).
    pub dilation: usize,
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
            erosion: 3,
            dilation: 8,
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
/// 2. Erosion with a 3×3 square, then dilation with an 8×8 square.
/// 3. Connected components; objects under `min_object_area_mm2` are dropped, and so are
///    objects connected to the outside air (they touch the border or the padding).
/// 4. The body's midline is the mean column of everything the outside air does not
///    reach (body and table). An object with at least the minimum area on both
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
    let foreground = Mask::from_vec(
        rows,
        columns,
        normalised
            .data
            .iter()
            .zip(&padding.data)
            .map(|(value, is_padding)| !is_padding && clusters.is_low(f64::from(*value)))
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
    // The table under the patient is centred like the body, so it leaves the mean
    // column where the body alone would put it.
    let midline_column = mean_column(&body_filled);

    let opened = dilate_square(&erode_square(&foreground, config.erosion), config.dilation);
    let components = label_components(&opened);
    let min_pixels = (config.min_object_area_mm2 / pixel_area_mm2).ceil() as usize;
    let max_hole_pixels = (config.max_hole_area_mm2 / pixel_area_mm2).floor() as usize;
    let closing_radius = (config.closing_radius_mm / pixel_area_mm2.sqrt()).round() as usize;

    // Area of each object on the patient's right (low columns) and left of the midline.
    let count = components.areas.len();
    let mut right_area = vec![0usize; count];
    let mut left_area = vec![0usize; count];
    let mut outside_pixels = vec![0usize; count];
    let mut body_pixels = vec![0usize; count];
    for r in 0..rows {
        for c in 0..columns {
            let i = r * columns + c;
            let label = components.labels.data[i] as usize;
            if label == 0 {
                continue;
            }
            if (c as f64) < midline_column {
                right_area[label] += 1;
            } else {
                left_area[label] += 1;
            }
            outside_pixels[label] += usize::from(outside.data[i]);
            body_pixels[label] += usize::from(body_filled.data[i]);
        }
    }

    let mut best = [(0usize, 0usize); 2]; // (area, label) for right, left
    let mut split_labels = Vec::new();
    for label in 1..count {
        let area = components.areas[label];
        // Objects reaching the outside air are the background, and objects mostly
        // outside the body (an air pocket in a cushion) are not lungs.
        if area < min_pixels || components.touches_border[label] || outside_pixels[label] * 2 > area {
            continue;
        }
        if body_pixels[label] * 2 < area {
            continue;
        }
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
        let object = Mask::from_vec(
            rows,
            columns,
            (0..rows * columns)
                .map(|i| {
                    let on_side = ((i % columns) as f64) < midline_column;
                    let on_side = if slot == 0 { on_side } else { !on_side };
                    components.labels.data[i] as usize == label && (!split || on_side) && foreground.data[i]
                })
                .collect(),
        );
        // Small holes are vessels, nodules and lesions inside the lung; large ones are
        // the diaphragm's dome seen through the lung base, which is not lung.
        let filled = fill_small_holes(&object, max_hole_pixels);
        let closed = close_disk(&filled, closing_radius);
        let dense_bays = Mask::from_vec(
            rows,
            columns,
            (0..rows * columns)
                .map(|i| filled.data[i] || (closed.data[i] && body_filled.data[i] && !padding.data[i]))
                .collect(),
        );
        lungs[slot] = Some(fill_small_holes(&dense_bays, max_hole_pixels));
    }
    let [right, left] = lungs;
    SliceLungs {
        right,
        left,
        midline_column,
    }
}

/// Rasterises the convex hull of the set pixels (pixel centres), or `None` for an empty
/// mask.
pub fn convex_hull_mask(mask: &Mask) -> Option<Mask> {
    // The extreme pixels of each row are enough to span the hull.
    let mut points = Vec::new();
    for r in 0..mask.rows {
        let row = &mask.data[r * mask.columns..(r + 1) * mask.columns];
        if let (Some(first), Some(last)) = (row.iter().position(|v| *v), row.iter().rposition(|v| *v)) {
            points.push((first as f64, r as f64));
            points.push((last as f64, r as f64));
        }
    }
    if points.is_empty() {
        return None;
    }
    let hull = convex_hull(points);
    let mut out = Mask::filled(mask.rows, mask.columns, false);
    for r in 0..mask.rows {
        let y = r as f64;
        // Intersect the row with every hull edge; the hull covers the span between.
        let (mut low, mut high) = (f64::INFINITY, f64::NEG_INFINITY);
        for k in 0..hull.len() {
            let (a, b) = (hull[k], hull[(k + 1) % hull.len()]);
            if (a.1 - y) * (b.1 - y) > 0.0 {
                continue;
            }
            if a.1 == b.1 {
                low = low.min(a.0.min(b.0));
                high = high.max(a.0.max(b.0));
            } else {
                let x = a.0 + (y - a.1) * (b.0 - a.0) / (b.1 - a.1);
                low = low.min(x);
                high = high.max(x);
            }
        }
        if low > high {
            continue;
        }
        let first = (low - 1e-9).ceil().max(0.0) as usize;
        let last = ((high + 1e-9).floor() as usize).min(mask.columns - 1);
        for c in first..=last {
            out.data[r * mask.columns + c] = true;
        }
    }
    Some(out)
}

/// Andrew's monotone chain: the convex hull in counter-clockwise order.
fn convex_hull(mut points: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    points.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    points.dedup();
    if points.len() < 3 {
        return points;
    }
    let cross = |o: (f64, f64), a: (f64, f64), b: (f64, f64)| (a.0 - o.0) * (b.1 - o.1) - (a.1 - o.1) * (b.0 - o.0);
    let mut hull: Vec<(f64, f64)> = Vec::with_capacity(points.len() * 2);
    for pass in 0..2 {
        let start = hull.len();
        let ordered: Box<dyn Iterator<Item = &(f64, f64)>> = if pass == 0 {
            Box::new(points.iter())
        } else {
            Box::new(points.iter().rev())
        };
        for &p in ordered {
            while hull.len() >= start + 2 && cross(hull[hull.len() - 2], hull[hull.len() - 1], p) <= 0.0 {
                hull.pop();
            }
            hull.push(p);
        }
        hull.pop();
    }
    hull
}

/// Mean column of the set pixels (0 for an empty mask).
pub fn mean_column(mask: &Mask) -> f64 {
    let (mut sum, mut count) = (0f64, 0usize);
    for (i, value) in mask.data.iter().enumerate() {
        if *value {
            sum += (i % mask.columns) as f64;
            count += 1;
        }
    }
    if count == 0 {
        0.0
    } else {
        sum / count as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hull_of_an_l_shape_fills_the_corner() {
        let mut mask = Mask::filled(5, 5, false);
        for i in 0..5 {
            mask.set(4, i, true);
            mask.set(i, 0, true);
        }
        let hull = convex_hull_mask(&mask).unwrap();
        // The triangle (0,0), (4,0), (4,4): row r covers columns 0..=r.
        for r in 0..5 {
            for c in 0..5 {
                assert_eq!(hull.get(r, c), c <= r, "({r}, {c})");
            }
        }
    }

    #[test]
    fn hull_of_a_single_pixel() {
        let mut mask = Mask::filled(3, 3, false);
        mask.set(1, 2, true);
        let hull = convex_hull_mask(&mask).unwrap();
        assert_eq!(hull.count(), 1);
        assert!(hull.get(1, 2));
        assert!(convex_hull_mask(&Mask::filled(3, 3, false)).is_none());
    }
}
