//! The lobe bundle: everything infer needs from a series, as safetensors compressed with
//! zstd, so the networks never read DICOM again.
//!
//! Tensors (little endian, `n` lobes, in slice order, right before left):
//!
//! | name | dtype | shape | content |
//! |---|---|---|---|
//! | `channels` | U16 | n × 3 × 256 × 256 | previous, this and next slice, normalised × 2048 |
//! | `masks` | U8 | n × 256 × 256 | lung mask of this slice, 0 or 1 |
//! | `patch_distance` | U32 | n × 32 × 32 | minimum periphery distance per coarse patch |
//! | `boxes` | U32 | n × 8 | row, column, rows, columns, offset row, offset column, pasted rows, pasted columns |
//! | `scales` | F64 | n | crop pixels per slice pixel |
//! | `slices` | U32 | n | slice index in the volume |
//! | `sides` | U8 | n | 0 right, 1 left (the patient's) |
//! | `positions_mm` | F64 | n | slice position along the head-pointing normal |
//! | `lung_pixels` | U32 | n | lung pixels on the slice at full resolution |
//!
//! The safetensors metadata contains `format` ([`BUNDLE_FORMAT`]) and `facts` (the
//! [`SeriesFacts`] as JSON).

use std::collections::HashMap;
use std::io::Read;

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use crate::crop::{CropBox, CROP_SIZE};
use crate::image::{Image, Mask};
use crate::lungs::Side;
use crate::patches::COARSE_GRID;
use crate::{Lobe, PreprocessedSeries, SeriesFacts};

/// Format name and version written into every bundle; readers reject others.
pub const BUNDLE_FORMAT: &str = "lungstream-lobes-v1";

/// zstd level: 3 compresses a bundle several-fold at hundreds of MB/s.
const ZSTD_LEVEL: i32 = 3;

/// Reasons a bundle cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot encode the lobe bundle: {0}")]
    Encode(String),
    #[error("invalid lobe bundle: {0}")]
    Invalid(String),
    #[error("the lobe bundle inflates beyond {limit} bytes")]
    TooLarge { limit: u64 },
}

/// Serialises and compresses a preprocessed series.
///
/// # Errors
///
/// When safetensors or zstd fail, which they do only on exhausted memory.
pub fn encode_bundle(series: &PreprocessedSeries) -> Result<Vec<u8>, BundleError> {
    let lobes = &series.lobes;
    let n = lobes.len();
    let mut channels = Vec::with_capacity(n * 3 * CROP_SIZE * CROP_SIZE * 2);
    let mut masks = Vec::with_capacity(n * CROP_SIZE * CROP_SIZE);
    let mut distances = Vec::with_capacity(n * COARSE_GRID * COARSE_GRID * 4);
    let (mut boxes, mut scales, mut slices, mut sides, mut positions, mut lung_pixels) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for lobe in lobes {
        for channel in &lobe.channels {
            channels.extend(channel.data.iter().flat_map(|v| v.to_le_bytes()));
        }
        masks.extend(lobe.mask.data.iter().map(|v| u8::from(*v)));
        distances.extend(lobe.patch_distance.data.iter().flat_map(|v| v.to_le_bytes()));
        let b = &lobe.crop_box;
        for value in [
            b.row,
            b.column,
            b.rows,
            b.columns,
            b.offset_row,
            b.offset_column,
            b.pasted_rows,
            b.pasted_columns,
        ] {
            boxes.extend((value as u32).to_le_bytes());
        }
        scales.extend(b.scale.to_le_bytes());
        slices.extend((lobe.slice as u32).to_le_bytes());
        sides.push(match lobe.side {
            Side::Right => 0u8,
            Side::Left => 1,
        });
        positions.extend(lobe.position_mm.to_le_bytes());
        lung_pixels.extend(lobe.lung_pixels.to_le_bytes());
    }
    let tensors = vec![
        ("channels", view(Dtype::U16, vec![n, 3, CROP_SIZE, CROP_SIZE], &channels)?),
        ("masks", view(Dtype::U8, vec![n, CROP_SIZE, CROP_SIZE], &masks)?),
        ("patch_distance", view(Dtype::U32, vec![n, COARSE_GRID, COARSE_GRID], &distances)?),
        ("boxes", view(Dtype::U32, vec![n, 8], &boxes)?),
        ("scales", view(Dtype::F64, vec![n], &scales)?),
        ("slices", view(Dtype::U32, vec![n], &slices)?),
        ("sides", view(Dtype::U8, vec![n], &sides)?),
        ("positions_mm", view(Dtype::F64, vec![n], &positions)?),
        ("lung_pixels", view(Dtype::U32, vec![n], &lung_pixels)?),
    ];
    let metadata = HashMap::from([
        ("format".to_string(), BUNDLE_FORMAT.to_string()),
        (
            "facts".to_string(),
            serde_json::to_string(&series.facts).map_err(|e| BundleError::Encode(e.to_string()))?,
        ),
    ]);
    let raw = safetensors::serialize(tensors, Some(metadata)).map_err(|e| BundleError::Encode(e.to_string()))?;
    zstd::bulk::compress(&raw, ZSTD_LEVEL).map_err(|e| BundleError::Encode(e.to_string()))
}

/// Decompresses and parses a bundle written by [`encode_bundle`].
///
/// `max_bytes` caps the inflated size, so a corrupt or hostile object cannot exhaust
/// memory.
///
/// # Errors
///
/// `Invalid` for anything that is not a bundle of this format with consistent shapes,
/// `TooLarge` beyond `max_bytes`.
pub fn decode_bundle(compressed: &[u8], max_bytes: u64) -> Result<PreprocessedSeries, BundleError> {
    let decoder = zstd::stream::read::Decoder::new(compressed).map_err(|e| BundleError::Invalid(e.to_string()))?;
    let mut raw = Vec::new();
    decoder
        .take(max_bytes + 1)
        .read_to_end(&mut raw)
        .map_err(|e| BundleError::Invalid(format!("zstd: {e}")))?;
    if raw.len() as u64 > max_bytes {
        return Err(BundleError::TooLarge { limit: max_bytes });
    }
    let (_, metadata) = SafeTensors::read_metadata(&raw).map_err(|e| BundleError::Invalid(e.to_string()))?;
    let info = metadata.metadata().clone().unwrap_or_default();
    if info.get("format").map(String::as_str) != Some(BUNDLE_FORMAT) {
        return Err(BundleError::Invalid(format!(
            "format {:?}, expected {BUNDLE_FORMAT}",
            info.get("format")
        )));
    }
    let facts: SeriesFacts = serde_json::from_str(info.get("facts").map_or("", String::as_str))
        .map_err(|e| BundleError::Invalid(format!("facts: {e}")))?;
    let tensors = SafeTensors::deserialize(&raw).map_err(|e| BundleError::Invalid(e.to_string()))?;

    let n = tensor(&tensors, "slices", Dtype::U32, &[])?.len() / 4;
    let channels = tensor(&tensors, "channels", Dtype::U16, &[n, 3, CROP_SIZE, CROP_SIZE])?;
    let masks = tensor(&tensors, "masks", Dtype::U8, &[n, CROP_SIZE, CROP_SIZE])?;
    let distances = tensor(&tensors, "patch_distance", Dtype::U32, &[n, COARSE_GRID, COARSE_GRID])?;
    let boxes = tensor(&tensors, "boxes", Dtype::U32, &[n, 8])?;
    let scales = tensor(&tensors, "scales", Dtype::F64, &[n])?;
    let slices = tensor(&tensors, "slices", Dtype::U32, &[n])?;
    let sides = tensor(&tensors, "sides", Dtype::U8, &[n])?;
    let positions = tensor(&tensors, "positions_mm", Dtype::F64, &[n])?;
    let lung_pixels = tensor(&tensors, "lung_pixels", Dtype::U32, &[n])?;

    let u16_at = |bytes: &[u8], i: usize| u16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]);
    let u32_at = |bytes: &[u8], i: usize| u32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap());
    let f64_at = |bytes: &[u8], i: usize| f64::from_le_bytes(bytes[8 * i..8 * i + 8].try_into().unwrap());
    let crop_pixels = CROP_SIZE * CROP_SIZE;
    let grid = COARSE_GRID * COARSE_GRID;
    let mut lobes = Vec::with_capacity(n);
    for l in 0..n {
        let channel = |c: usize| {
            let start = (l * 3 + c) * crop_pixels;
            Image::from_vec(CROP_SIZE, CROP_SIZE, (start..start + crop_pixels).map(|i| u16_at(channels, i)).collect())
        };
        let b: Vec<usize> = (0..8).map(|i| u32_at(boxes, l * 8 + i) as usize).collect();
        let side = match sides[l] {
            0 => Side::Right,
            1 => Side::Left,
            other => return Err(BundleError::Invalid(format!("side {other} of lobe {l}"))),
        };
        lobes.push(Lobe {
            slice: u32_at(slices, l) as usize,
            side,
            position_mm: f64_at(positions, l),
            crop_box: CropBox {
                row: b[0],
                column: b[1],
                rows: b[2],
                columns: b[3],
                scale: f64_at(scales, l),
                offset_row: b[4],
                offset_column: b[5],
                pasted_rows: b[6],
                pasted_columns: b[7],
            },
            channels: [channel(0), channel(1), channel(2)],
            mask: Mask::from_vec(
                CROP_SIZE,
                CROP_SIZE,
                masks[l * crop_pixels..(l + 1) * crop_pixels].iter().map(|v| *v != 0).collect(),
            ),
            lung_pixels: u32_at(lung_pixels, l),
            patch_distance: Image::from_vec(
                COARSE_GRID,
                COARSE_GRID,
                (l * grid..(l + 1) * grid).map(|i| u32_at(distances, i)).collect(),
            ),
        });
    }
    Ok(PreprocessedSeries { facts, lobes })
}

fn view(dtype: Dtype, shape: Vec<usize>, data: &[u8]) -> Result<TensorView<'_>, BundleError> {
    TensorView::new(dtype, shape, data).map_err(|e| BundleError::Encode(e.to_string()))
}

/// Returns the bytes of tensor `name`, checked for dtype and, unless `shape` is empty,
/// shape.
fn tensor<'a>(tensors: &'a SafeTensors<'a>, name: &str, dtype: Dtype, shape: &[usize]) -> Result<&'a [u8], BundleError> {
    let view = tensors
        .tensor(name)
        .map_err(|e| BundleError::Invalid(format!("tensor {name}: {e}")))?;
    if view.dtype() != dtype || (!shape.is_empty() && view.shape() != shape) {
        return Err(BundleError::Invalid(format!(
            "tensor {name} is {:?} {:?}, expected {dtype:?} {shape:?}",
            view.dtype(),
            view.shape()
        )));
    }
    Ok(view.data())
}
