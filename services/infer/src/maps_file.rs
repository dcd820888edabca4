//! The maps object: every lobe's attention and infection maps, written by the infer
//! service next to its results, as safetensors compressed with zstd.
//!
//! Tensors (`n` lobes, in the order of the results):
//!
//! | name | dtype | shape | content |
//! |---|---|---|---|
//! | `attention` | U8 | n × 32 × 32 | attention of the diseased network, × 255 |
//! | `coarse` | U8 | n × 32 × 32 | coarse infection probability, × 255 |
//! | `fine` | U8 | n × 128 × 128 | fine infection probability, × 255 |
//! | `infected` | U8 | n × 256 × 256 | infected crop pixels, 0 or 1 |
//! | `slices` | U32 | n | slice index in the volume |
//! | `sides` | U8 | n | 0 right, 1 left (the patient's) |
//! | `boxes` | U32 | n × 8 | the crop box, as in the lobe bundle |
//!
//! Probabilities are kept to 1/255: enough to draw and to threshold again, at a quarter
//! of the size of float32.

use std::collections::HashMap;

use lungstream_preprocess::lungs::Side;
use safetensors::tensor::{Dtype, TensorView};

use crate::SeriesInference;

/// Format name and version written into every maps object.
pub const MAPS_FORMAT: &str = "lungstream-maps-v1";

fn quantise(values: &[f32]) -> impl Iterator<Item = u8> + '_ {
    values.iter().map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
}

fn view(dtype: Dtype, shape: Vec<usize>, data: &[u8]) -> Result<TensorView<'_>, String> {
    TensorView::new(dtype, shape, data).map_err(|e| e.to_string())
}

/// Serialises and compresses the maps of a series.
///
/// # Errors
///
/// When safetensors or zstd fail, which they do only on exhausted memory.
pub fn encode_maps(inference: &SeriesInference) -> Result<Vec<u8>, String> {
    let lobes = &inference.lobes;
    let n = lobes.len();
    let (mut attention, mut coarse, mut fine, mut infected) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut slices, mut sides, mut boxes) = (Vec::new(), Vec::new(), Vec::new());
    for lobe in lobes {
        attention.extend(quantise(&lobe.attention));
        coarse.extend(quantise(&lobe.coarse));
        fine.extend(quantise(&lobe.fine));
        infected.extend(lobe.infected.data.iter().map(|v| u8::from(*v)));
        slices.extend((lobe.slice as u32).to_le_bytes());
        sides.push(match lobe.side {
            Side::Right => 0u8,
            Side::Left => 1,
        });
        let b = &lobe.crop_box;
        for value in [b.row, b.column, b.rows, b.columns, b.offset_row, b.offset_column, b.pasted_rows, b.pasted_columns] {
            boxes.extend((value as u32).to_le_bytes());
        }
    }
    let grid = lungstream_preprocess::patches::COARSE_GRID;
    let crop = lungstream_preprocess::crop::CROP_SIZE;
    let tensors = vec![
        ("attention", view(Dtype::U8, vec![n, grid, grid], &attention)?),
        ("coarse", view(Dtype::U8, vec![n, grid, grid], &coarse)?),
        ("fine", view(Dtype::U8, vec![n, crate::FINE_GRID, crate::FINE_GRID], &fine)?),
        ("infected", view(Dtype::U8, vec![n, crop, crop], &infected)?),
        ("slices", view(Dtype::U32, vec![n], &slices)?),
        ("sides", view(Dtype::U8, vec![n], &sides)?),
        ("boxes", view(Dtype::U32, vec![n, 8], &boxes)?),
    ];
    let metadata = HashMap::from([("format".to_string(), MAPS_FORMAT.to_string())]);
    let raw = safetensors::serialize(tensors, Some(metadata)).map_err(|e| e.to_string())?;
    zstd::bulk::compress(&raw, 3).map_err(|e| e.to_string())
}
