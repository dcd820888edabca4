//! Overlay images of one slice: the lung window with the infected area in red, beside the
//! same slice with the diseased network's attention as a heat map over the lung.

use lungstream_infer::LobeResult;
use lungstream_preprocess::crop::CropBox;
use lungstream_preprocess::patches::COARSE_STRIDE;

/// Lung window: centre -600 HU, width 1500 HU.
pub const LUNG_WINDOW_HU: (f64, f64) = (-1350.0, 150.0);

/// Opacity of the infection colour and of the attention heat map.
const INFECTION_ALPHA: f64 = 0.6;
const ATTENTION_ALPHA: f64 = 0.5;

/// An 8-bit RGB image, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl RgbImage {
    pub fn pixel(&self, row: usize, column: usize) -> [u8; 3] {
        let i = (row * self.width + column) * 3;
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }

    fn blend(&mut self, row: usize, column: usize, colour: [f64; 3], alpha: f64) {
        let i = (row * self.width + column) * 3;
        for (k, c) in colour.iter().enumerate() {
            let old = f64::from(self.data[i + k]);
            self.data[i + k] = (old * (1.0 - alpha) + c * alpha).round().clamp(0.0, 255.0) as u8;
        }
    }

    /// Encodes the image as PNG.
    pub fn to_png(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, self.width as u32, self.height as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().expect("writing to memory cannot fail");
        writer.write_image_data(&self.data).expect("the buffer matches the header");
        drop(writer);
        out
    }
}

/// Grey value of a HU value in the lung window.
pub fn lung_window(hu: i16) -> u8 {
    let (low, high) = LUNG_WINDOW_HU;
    ((f64::from(hu) - low) / (high - low) * 255.0).round().clamp(0.0, 255.0) as u8
}

/// Maps a weight in 0..1 to a blue–cyan–yellow–red colour.
pub fn heat(value: f64) -> [f64; 3] {
    let v = value.clamp(0.0, 1.0);
    let stops = [[0.0, 0.0, 255.0], [0.0, 255.0, 255.0], [255.0, 255.0, 0.0], [255.0, 0.0, 0.0]];
    let position = v * 3.0;
    let i = (position.floor() as usize).min(2);
    let t = position - i as f64;
    [0, 1, 2].map(|k| stops[i][k] * (1.0 - t) + stops[i + 1][k] * t)
}

/// Crop pixel that slice pixel (row, column) falls on, or `None` outside the box.
fn crop_pixel(crop_box: &CropBox, row: usize, column: usize) -> Option<(usize, usize)> {
    let (dr, dc) = (row.checked_sub(crop_box.row)?, column.checked_sub(crop_box.column)?);
    if dr >= crop_box.rows || dc >= crop_box.columns {
        return None;
    }
    let pr = (((dr as f64 + 0.5) * crop_box.scale) as usize).min(crop_box.pasted_rows - 1);
    let pc = (((dc as f64 + 0.5) * crop_box.scale) as usize).min(crop_box.pasted_columns - 1);
    Some((crop_box.offset_row + pr, crop_box.offset_column + pc))
}

/// Renders a slice (Hounsfield units, `rows × columns`, canonical layout) twice side by
/// side: infection in red on the left, attention on the right. `lobes` are the slice's
/// lobes (one or two).
pub fn render_overlay(hu: &[i16], rows: usize, columns: usize, lobes: &[&LobeResult]) -> RgbImage {
    let width = 2 * columns;
    let mut image = RgbImage { width, height: rows, data: vec![0; width * rows * 3] };
    for (i, &hu) in hu.iter().enumerate().take(rows * columns) {
        let grey = lung_window(hu);
        let (r, c) = (i / columns, i % columns);
        for panel in [c, columns + c] {
            let p = (r * width + panel) * 3;
            image.data[p..p + 3].copy_from_slice(&[grey; 3]);
        }
    }
    for lobe in lobes {
        let b = &lobe.crop_box;
        for r in b.row..(b.row + b.rows).min(rows) {
            for c in b.column..(b.column + b.columns).min(columns) {
                let Some((cr, cc)) = crop_pixel(b, r, c) else { continue };
                let k = cr * lungstream_preprocess::crop::CROP_SIZE + cc;
                if !lobe.lung.data[k] {
                    continue;
                }
                if lobe.infected.data[k] {
                    image.blend(r, c, [255.0, 0.0, 0.0], INFECTION_ALPHA);
                }
                let grid = lungstream_preprocess::patches::COARSE_GRID;
                let weight = lobe.attention[(cr / COARSE_STRIDE) * grid + cc / COARSE_STRIDE];
                image.blend(r, columns + c, heat(f64::from(weight)), ATTENTION_ALPHA);
            }
        }
    }
    image
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lung_window_maps_its_ends() {
        assert_eq!(lung_window(-1350), 0);
        assert_eq!(lung_window(-2000), 0);
        assert_eq!(lung_window(150), 255);
        assert_eq!(lung_window(-600), 128);
    }

    #[test]
    fn heat_runs_from_blue_to_red() {
        assert_eq!(heat(0.0), [0.0, 0.0, 255.0]);
        assert_eq!(heat(1.0), [255.0, 0.0, 0.0]);
        assert_eq!(heat(0.5), [127.5, 255.0, 127.5]);
    }

    #[test]
    fn crop_pixels_of_a_scaled_box() {
        let b = CropBox { row: 10, column: 20, rows: 512, columns: 256, scale: 0.5, offset_row: 0, offset_column: 64, pasted_rows: 256, pasted_columns: 128 };
        assert_eq!(crop_pixel(&b, 10, 20), Some((0, 64)));
        assert_eq!(crop_pixel(&b, 13, 23), Some((1, 65)));
        assert_eq!(crop_pixel(&b, 521, 275), Some((255, 191)));
        assert_eq!(crop_pixel(&b, 9, 20), None);
        assert_eq!(crop_pixel(&b, 522, 20), None);
    }
}
