//! Image geometry in DICOM patient coordinates (LPS, mm: +x toward the patient's left,
//! +y posterior, +z toward the head) and the decimal-string encoding of its numbers.

use serde::{Deserialize, Serialize};

use crate::spec::Orientation;

pub(crate) type Vec3 = [f64; 3];

pub(crate) fn add(a: Vec3, b: Vec3) -> Vec3 {
    [a[0] + b[0], a[1] + b[1], a[2] + b[2]]
}

pub(crate) fn sub(a: Vec3, b: Vec3) -> Vec3 {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

pub(crate) fn scaled(a: Vec3, factor: f64) -> Vec3 {
    [a[0] * factor, a[1] * factor, a[2] * factor]
}

pub(crate) fn dot(a: Vec3, b: Vec3) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

pub(crate) fn cross(a: Vec3, b: Vec3) -> Vec3 {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

pub(crate) fn norm(a: Vec3) -> f64 {
    dot(a, a).sqrt()
}

/// Formats a number as a DICOM decimal string (VR DS, at most 16 characters): up to six
/// decimals, trailing zeros removed, never "-0".
pub(crate) fn format_ds(value: f64) -> String {
    for decimals in (0..=6).rev() {
        let mut text = format!("{value:.decimals$}");
        if text.contains('.') {
            text = text.trim_end_matches('0').trim_end_matches('.').to_string();
        }
        if text == "-0" {
            text = "0".to_string();
        }
        if text.len() <= 16 {
            return text;
        }
    }
    // Only magnitudes of 1e16 and more reach this point; the spec's validation keeps
    // positions and spacings far below that.
    format!("{value:.6e}")
}

/// Rounds a number to the value a reader obtains after parsing [`format_ds`]'s output.
/// Rendering uses these values, so the geometry in the header is exactly the geometry of
/// the pixels.
pub(crate) fn quantize_ds(value: f64) -> f64 {
    format_ds(value)
        .parse()
        .expect("format_ds always produces a parsable number")
}

/// Returns the row and column direction cosines of _Image Orientation (Patient)_ for an
/// orientation option.
pub(crate) fn orientation_cosines(orientation: Orientation) -> [f64; 6] {
    match orientation {
        Orientation::Supine => [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
        Orientation::Prone => [-1.0, 0.0, 0.0, 0.0, -1.0, 0.0],
        Orientation::FlippedRows => [1.0, 0.0, 0.0, 0.0, -1.0, 0.0],
        Orientation::FlippedColumns => [-1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
        Orientation::Transposed => [0.0, 1.0, 0.0, 1.0, 0.0, 0.0],
    }
}

/// Geometry shared by all slices of an axial series.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeriesGeometry {
    pub rows: u16,
    pub columns: u16,
    /// _Pixel Spacing_: [distance between rows, distance between columns] in mm.
    pub pixel_spacing_mm: [f64; 2],
    /// _Image Orientation (Patient)_: row direction cosines, then column direction cosines.
    pub image_orientation: [f64; 6],
    /// Distance between neighbouring slice positions in mm.
    pub slice_spacing_mm: f64,
    /// _Slice Thickness_ in mm.
    pub slice_thickness_mm: f64,
    /// Diameter of the reconstruction circle in mm, centred on the image.
    pub field_of_view_mm: f64,
    /// Patient x and y (mm) of the image centre, which is the centre of the
    /// reconstruction circle. The body's midline is at x = 0, so this offset is the
    /// patient's displacement from the scanner's centre.
    pub image_centre_mm: [f64; 2],
}

impl SeriesGeometry {
    /// Unit vector along a row (increasing column index).
    pub fn row_direction(&self) -> [f64; 3] {
        let o = self.image_orientation;
        [o[0], o[1], o[2]]
    }

    /// Unit vector along a column (increasing row index).
    pub fn column_direction(&self) -> [f64; 3] {
        let o = self.image_orientation;
        [o[3], o[4], o[5]]
    }

    /// Slice normal `row_direction × column_direction`; `ImagePositionPatient · normal`
    /// orders the slices. It is +z for supine and prone images and -z for the flipped and
    /// transposed options.
    pub fn normal(&self) -> [f64; 3] {
        cross(self.row_direction(), self.column_direction())
    }

    /// _Image Position (Patient)_ of the slice whose centre plane is at patient `z_mm`,
    /// rounded to the value that its decimal string stores.
    pub fn image_position(&self, z_mm: f64) -> [f64; 3] {
        let half_width = (f64::from(self.columns) - 1.0) / 2.0 * self.pixel_spacing_mm[1];
        let half_height = (f64::from(self.rows) - 1.0) / 2.0 * self.pixel_spacing_mm[0];
        let centre = [self.image_centre_mm[0], self.image_centre_mm[1], z_mm];
        let corner = sub(
            sub(centre, scaled(self.row_direction(), half_width)),
            scaled(self.column_direction(), half_height),
        );
        corner.map(quantize_ds)
    }

    /// Patient position of the centre of pixel (`row`, `column`) in the slice whose
    /// _Image Position (Patient)_ is `image_position`.
    pub fn pixel_position(&self, image_position: [f64; 3], row: usize, column: usize) -> [f64; 3] {
        self.plane(image_position).position(row, column)
    }

    pub(crate) fn plane(&self, image_position: Vec3) -> ImagePlane {
        ImagePlane {
            rows: usize::from(self.rows),
            columns: usize::from(self.columns),
            pixel_spacing: self.pixel_spacing_mm,
            row_direction: self.row_direction(),
            column_direction: self.column_direction(),
            origin: image_position,
            fov_radius: Some(self.field_of_view_mm / 2.0),
        }
    }
}

/// One image's sampling grid: pixel (r, c) lies at
/// `origin + c * spacing[1] * row_direction + r * spacing[0] * column_direction`.
#[derive(Clone, Debug)]
pub(crate) struct ImagePlane {
    pub rows: usize,
    pub columns: usize,
    pub pixel_spacing: [f64; 2],
    pub row_direction: Vec3,
    pub column_direction: Vec3,
    pub origin: Vec3,
    /// Radius of the reconstruction circle around the image centre; `None` for images
    /// without one (the localizer).
    pub fov_radius: Option<f64>,
}

impl ImagePlane {
    pub fn position(&self, row: usize, column: usize) -> Vec3 {
        let along_row = scaled(self.row_direction, column as f64 * self.pixel_spacing[1]);
        let along_column = scaled(self.column_direction, row as f64 * self.pixel_spacing[0]);
        add(add(self.origin, along_row), along_column)
    }

    /// Returns whether the pixel centre lies inside the reconstruction circle. The test
    /// uses pixel offsets to the image centre, so it is exactly symmetric for every
    /// orientation.
    pub fn inside_fov(&self, row: usize, column: usize) -> bool {
        let Some(radius) = self.fov_radius else {
            return true;
        };
        let dx = (column as f64 - (self.columns as f64 - 1.0) / 2.0) * self.pixel_spacing[1];
        let dy = (row as f64 - (self.rows as f64 - 1.0) / 2.0) * self.pixel_spacing[0];
        dx * dx + dy * dy <= radius * radius
    }

    pub fn normal(&self) -> Vec3 {
        cross(self.row_direction, self.column_direction)
    }

    /// Returns the pixel index ranges (rows, columns), clamped to the image, that cover
    /// the points of the plane inside the axis-aligned box `[low, high]`. Returns `None`
    /// when the box misses the plane.
    pub fn pixel_bounds(
        &self,
        low: Vec3,
        high: Vec3,
    ) -> Option<(std::ops::Range<usize>, std::ops::Range<usize>)> {
        let normal = self.normal();
        let mut distance = (f64::INFINITY, f64::NEG_INFINITY);
        let mut column = (f64::INFINITY, f64::NEG_INFINITY);
        let mut row = (f64::INFINITY, f64::NEG_INFINITY);
        for corner in 0..8 {
            let point = [
                if corner & 1 == 0 { low[0] } else { high[0] },
                if corner & 2 == 0 { low[1] } else { high[1] },
                if corner & 4 == 0 { low[2] } else { high[2] },
            ];
            let offset = sub(point, self.origin);
            let d = dot(offset, normal);
            let c = dot(offset, self.row_direction) / self.pixel_spacing[1];
            let r = dot(offset, self.column_direction) / self.pixel_spacing[0];
            distance = (distance.0.min(d), distance.1.max(d));
            column = (column.0.min(c), column.1.max(c));
            row = (row.0.min(r), row.1.max(r));
        }
        if distance.0 > 0.0 || distance.1 < 0.0 {
            return None;
        }
        let clamp = |range: (f64, f64), size: usize| -> Option<std::ops::Range<usize>> {
            let start = range.0.ceil().max(0.0);
            let end = (range.1.floor() + 1.0).min(size as f64);
            (start < end).then_some(start as usize..end as usize)
        };
        Some((clamp(row, self.rows)?, clamp(column, self.columns)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_ds_trims_and_limits_length() {
        assert_eq!(format_ds(-178.85), "-178.85");
        assert_eq!(format_ds(2.5), "2.5");
        assert_eq!(format_ds(-0.0), "0");
        assert_eq!(format_ds(-1024.0), "-1024");
        assert_eq!(format_ds(-279.90000000000003), "-279.9");
        assert!(format_ds(-12345.123456789).len() <= 16);
    }

    #[test]
    fn normals_of_orientation_options() {
        // row × column for each option, worked out by hand.
        let expected = [
            (Orientation::Supine, [0.0, 0.0, 1.0]),
            (Orientation::Prone, [0.0, 0.0, 1.0]),
            (Orientation::FlippedRows, [0.0, 0.0, -1.0]),
            (Orientation::FlippedColumns, [0.0, 0.0, -1.0]),
            (Orientation::Transposed, [0.0, 0.0, -1.0]),
        ];
        for (orientation, normal) in expected {
            let o = orientation_cosines(orientation);
            assert_eq!(
                cross([o[0], o[1], o[2]], [o[3], o[4], o[5]]),
                normal,
                "{orientation:?}"
            );
        }
    }

    #[test]
    fn image_position_centres_the_image() {
        let geometry = SeriesGeometry {
            rows: 512,
            columns: 512,
            pixel_spacing_mm: [0.7, 0.7],
            image_orientation: orientation_cosines(Orientation::Supine),
            slice_spacing_mm: 2.5,
            slice_thickness_mm: 2.5,
            field_of_view_mm: 358.4,
            image_centre_mm: [0.0, 0.0],
        };
        // 255.5 pixels × 0.7 mm = 178.85 mm from the centre to the first pixel centre.
        assert_eq!(geometry.image_position(-100.0), [-178.85, -178.85, -100.0]);
        let prone = SeriesGeometry {
            image_orientation: orientation_cosines(Orientation::Prone),
            ..geometry
        };
        assert_eq!(prone.image_position(-100.0), [178.85, 178.85, -100.0]);
        let last = prone.pixel_position(prone.image_position(-100.0), 511, 511);
        assert!((last[0] + 178.85).abs() < 1e-9, "x = {}", last[0]);
        assert!((last[1] + 178.85).abs() < 1e-9, "y = {}", last[1]);
    }
}
