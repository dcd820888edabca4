//! Lobe crops: the image inside a lung's bounding box, pasted in the centre of a black
//! 256×256 image, scaled down when the box is larger, and scaled up when the slice's
//! pixels are coarser than [`CROP_PIXEL_MM`].

use serde::{Deserialize, Serialize};

use crate::image::{bounding_box, Image, Mask};

/// Side of the square network input, pixels.
pub const CROP_SIZE: usize = 256;

/// Pixel size the crops aim at, mm: that of the paper's scans (512² matrices over a
/// 35 cm field of view).
///
/// **[choice]** The method pastes the box unscaled unless it exceeds 256 pixels. On a
/// scan with 1.5–2.5 mm pixels the lung then fills a tenth of the crop, and the
/// networks' 36-pixel patches see lesions two to three times smaller than on the
/// paper's scans. Such boxes are scaled up towards this pixel size (never past 256
/// pixels), so a lesion covers about the same number of patches whatever the scanner's
/// field of view and matrix. Scans with pixels of this size or finer are cropped as the
/// method specifies.
pub const CROP_PIXEL_MM: f64 = 0.7;

/// Source box of a crop in the canonical slice, and its scale and placement.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CropBox {
    /// First row and column of the bounding box in the slice.
    pub row: usize,
    pub column: usize,
    /// Size of the bounding box in slice pixels.
    pub rows: usize,
    pub columns: usize,
    /// Crop pixels per slice pixel: 1; less when the box exceeds 256 pixels; more when
    /// the slice's pixels are coarser than [`CROP_PIXEL_MM`].
    pub scale: f64,
    /// First row and column of the pasted image inside the 256×256 crop.
    pub offset_row: usize,
    pub offset_column: usize,
    /// Size of the pasted image inside the crop.
    pub pasted_rows: usize,
    pub pasted_columns: usize,
}

impl CropBox {
    /// Returns the box around the set pixels of `mask`, or `None` when none is set.
    /// `pixel_mm` is the slice's pixel size (the geometric mean of the two spacings).
    pub fn around(mask: &Mask, pixel_mm: f64) -> Option<CropBox> {
        let (top, left, rows, columns) = bounding_box(mask, 0)?;
        let upscale = if pixel_mm.is_finite() { (pixel_mm / CROP_PIXEL_MM).max(1.0) } else { 1.0 };
        let scale = (CROP_SIZE as f64 / rows.max(columns) as f64).min(upscale);
        let pasted_rows = ((rows as f64 * scale).round() as usize).clamp(1, CROP_SIZE);
        let pasted_columns = ((columns as f64 * scale).round() as usize).clamp(1, CROP_SIZE);
        Some(CropBox {
            row: top,
            column: left,
            rows,
            columns,
            scale,
            offset_row: (CROP_SIZE - pasted_rows) / 2,
            offset_column: (CROP_SIZE - pasted_columns) / 2,
            pasted_rows,
            pasted_columns,
        })
    }

    /// Slice coordinates (row, column, fractional) sampled by crop pixel (r, c), or `None`
    /// outside the pasted image.
    fn source(&self, r: usize, c: usize) -> Option<(f64, f64)> {
        let (pr, pc) = (r.checked_sub(self.offset_row)?, c.checked_sub(self.offset_column)?);
        if pr >= self.pasted_rows || pc >= self.pasted_columns {
            return None;
        }
        // Pixel centres map onto pixel centres.
        let sr = self.row as f64 + (pr as f64 + 0.5) / self.scale - 0.5;
        let sc = self.column as f64 + (pc as f64 + 0.5) / self.scale - 0.5;
        Some((sr, sc))
    }

    /// Crops `image` (values in normalised units, 0..=2048) into a 256×256 image:
    /// bilinear when scaled, an exact copy otherwise; black (0) around the pasted image.
    /// `image` may be a region of the slice whose first pixel is at `origin` (row,
    /// column). It must cover the box and, when scaled, one pixel around it.
    pub fn crop_values(&self, image: &Image<u16>, origin: (usize, usize)) -> Image<u16> {
        let mut out = Image::filled(CROP_SIZE, CROP_SIZE, 0u16);
        if self.scale == 1.0 {
            self.copy_unscaled(image, origin, &mut out);
            return out;
        }
        for r in 0..CROP_SIZE {
            for c in 0..CROP_SIZE {
                let Some((sr, sc)) = self.source(r, c) else {
                    continue;
                };
                let value = bilinear(image, sr - origin.0 as f64, sc - origin.1 as f64);
                out.set(r, c, value.round() as u16);
            }
        }
        out
    }

    /// Crops a mask into a 256×256 mask (nearest pixel).
    pub fn crop_mask(&self, mask: &Mask) -> Mask {
        let mut out = Mask::filled(CROP_SIZE, CROP_SIZE, false);
        if self.scale == 1.0 {
            self.copy_unscaled(mask, (0, 0), &mut out);
            return out;
        }
        for r in 0..CROP_SIZE {
            for c in 0..CROP_SIZE {
                if let Some((sr, sc)) = self.source(r, c) {
                    let sr = (sr.round().max(0.0) as usize).min(mask.rows - 1);
                    let sc = (sc.round().max(0.0) as usize).min(mask.columns - 1);
                    out.set(r, c, mask.get(sr, sc));
                }
            }
        }
        out
    }

    /// Copies the box out of `image` (whose first pixel is at `origin` in the slice) into
    /// the pasted area of `out`, row by row: the crop of an unscaled box.
    fn copy_unscaled<T: Copy>(&self, image: &Image<T>, origin: (usize, usize), out: &mut Image<T>) {
        for pasted_row in 0..self.pasted_rows {
            let start = (self.row + pasted_row - origin.0) * image.columns + self.column - origin.1;
            let target = (self.offset_row + pasted_row) * CROP_SIZE + self.offset_column;
            out.data[target..target + self.pasted_columns].copy_from_slice(&image.data[start..start + self.pasted_columns]);
        }
    }
}

fn bilinear(image: &Image<u16>, row: f64, column: f64) -> f64 {
    let row = row.clamp(0.0, (image.rows - 1) as f64);
    let column = column.clamp(0.0, (image.columns - 1) as f64);
    let (r0, c0) = (row.floor() as usize, column.floor() as usize);
    let (r1, c1) = ((r0 + 1).min(image.rows - 1), (c0 + 1).min(image.columns - 1));
    let (fr, fc) = (row - r0 as f64, column - c0 as f64);
    let top = f64::from(image.get(r0, c0)) * (1.0 - fc) + f64::from(image.get(r0, c1)) * fc;
    let bottom = f64::from(image.get(r1, c0)) * (1.0 - fc) + f64::from(image.get(r1, c1)) * fc;
    top * (1.0 - fr) + bottom * fr
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Returns a `size`×`size` mask that is set inside the given rows and columns.
    fn rectangle(size: usize, rows: std::ops::Range<usize>, columns: std::ops::Range<usize>) -> Mask {
        let mut mask = Mask::filled(size, size, false);
        for r in rows {
            for c in columns.clone() {
                mask.set(r, c, true);
            }
        }
        mask
    }

    #[test]
    fn small_box_is_centred_unscaled() {
        let mask = rectangle(300, 100..150, 20..120);
        let crop = CropBox::around(&mask, CROP_PIXEL_MM).unwrap();
        assert_eq!((crop.row, crop.column, crop.rows, crop.columns), (100, 20, 50, 100));
        assert_eq!(crop.scale, 1.0);
        assert_eq!((crop.offset_row, crop.offset_column), (103, 78));
        let mut image = Image::filled(300, 300, 0u16);
        image.set(100, 20, 777);
        image.set(149, 119, 555);
        let values = crop.crop_values(&image, (0, 0));
        assert_eq!(values.get(103, 78), 777);
        // The same from a region of the slice that starts at (99, 19).
        let region = Image::from_vec(
            52,
            102,
            (99..151).flat_map(|r| (19..121).map(move |c| (r, c))).map(|(r, c)| image.get(r, c)).collect(),
        );
        assert_eq!(crop.crop_values(&region, (99, 19)), values);
        assert_eq!(values.get(103 + 49, 78 + 99), 555);
        assert_eq!(crop.crop_mask(&mask).count(), 50 * 100);
    }

    #[test]
    fn large_box_is_scaled_to_fit() {
        // A 400×200 box scales by 256/400 = 0.64 to 256×128.
        let mask = rectangle(500, 50..450, 100..300);
        let crop = CropBox::around(&mask, CROP_PIXEL_MM).unwrap();
        assert_eq!(crop.scale, 0.64);
        assert_eq!((crop.pasted_rows, crop.pasted_columns), (256, 128));
        assert_eq!((crop.offset_row, crop.offset_column), (0, 64));
        let image = Image::filled(500, 500, 1000u16);
        let values = crop.crop_values(&image, (0, 0));
        assert_eq!(values.get(128, 128), 1000);
        assert_eq!(values.get(128, 10), 0);
        assert_eq!(crop.crop_mask(&mask).count(), 256 * 128);
    }

    #[test]
    fn coarse_pixels_are_scaled_up() {
        // 1.4 mm pixels scale by 2 towards 0.7 mm: a 50×80 box becomes 100×160.
        let mask = rectangle(300, 100..150, 20..100);
        let crop = CropBox::around(&mask, 2.0 * CROP_PIXEL_MM).unwrap();
        assert_eq!(crop.scale, 2.0);
        assert_eq!((crop.pasted_rows, crop.pasted_columns), (100, 160));
        assert_eq!((crop.offset_row, crop.offset_column), (78, 48));
        assert_eq!(crop.crop_mask(&mask).count(), 100 * 160);
        // A left-to-right ramp of 10 per pixel: crop pixels sample columns 19.75, 20.25
        // and 20.75 of the slice, interpolated (and rounded half away from zero).
        let image = Image::from_vec(300, 300, (0..300 * 300).map(|i| (i % 300) as u16 * 10).collect());
        let values = crop.crop_values(&image, (0, 0));
        assert_eq!([values.get(128, 48), values.get(128, 49), values.get(128, 50)], [198, 203, 208]);

        // 2.5 mm pixels would scale by 3.57, but the 80-pixel side may only grow to 256.
        let crop = CropBox::around(&mask, 2.5).unwrap();
        assert_eq!(crop.scale, 256.0 / 80.0);
        assert_eq!((crop.pasted_rows, crop.pasted_columns), (160, 256));
        // Pixels finer than the target are never scaled down for that reason alone.
        assert_eq!(CropBox::around(&mask, 0.5).unwrap().scale, 1.0);
    }
}
