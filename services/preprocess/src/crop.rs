//! Lobe crops: the image inside a lung's bounding box, pasted in the centre of a black
//! 256×256 image, scaled down when the box is larger.

use serde::{Deserialize, Serialize};

use crate::image::{bounding_box, Image, Mask};

/// Side of the square network input, pixels.
pub const CROP_SIZE: usize = 256;

/// Source box of a crop in the canonical slice, and its scale and placement.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CropBox {
    /// First row and column of the bounding box in the slice.
    pub row: usize,
    pub column: usize,
    /// Size of the bounding box in slice pixels.
    pub rows: usize,
    pub columns: usize,
    /// Crop pixels per slice pixel: 1, or less when the box exceeds 256 pixels.
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
    pub fn around(mask: &Mask) -> Option<CropBox> {
        let (top, left, rows, columns) = bounding_box(mask, 0)?;
        let scale = (CROP_SIZE as f64 / rows.max(columns) as f64).min(1.0);
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

    #[test]
    fn small_box_is_centred_unscaled() {
        let mut mask = Mask::filled(300, 300, false);
        for r in 100..150 {
            for c in 20..120 {
                mask.set(r, c, true);
            }
        }
        let crop = CropBox::around(&mask).unwrap();
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
        let mut mask = Mask::filled(500, 500, false);
        for r in 50..450 {
            for c in 100..300 {
                mask.set(r, c, true);
            }
        }
        let crop = CropBox::around(&mask).unwrap();
        assert_eq!(crop.scale, 0.64);
        assert_eq!((crop.pasted_rows, crop.pasted_columns), (256, 128));
        assert_eq!((crop.offset_row, crop.offset_column), (0, 64));
        let image = Image::filled(500, 500, 1000u16);
        let values = crop.crop_values(&image, (0, 0));
        assert_eq!(values.get(128, 128), 1000);
        assert_eq!(values.get(128, 10), 0);
        assert_eq!(crop.crop_mask(&mask).count(), 256 * 128);
    }
}
