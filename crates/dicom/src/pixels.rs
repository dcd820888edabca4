//! Pixel data: decoding to stored values, the modality rescale to Hounsfield units, and
//! the padding mask.

use std::path::Path;

use dicom_core::value::{PixelFragmentSequence, Value};
use dicom_core::VR;
use dicom_object::mem::InMemElement;
use dicom_dictionary_std::tags;
use dicom_object::DefaultDicomObject;
use dicom_pixeldata::PixelDecoder;

use crate::error::ReadError;
use crate::header::SliceHeader;

/// No tissue and no air lies below this value; scanners fill the area outside the
/// reconstruction circle with values such as -2000, -2048 or -3024 HU.
pub const PADDING_HU_THRESHOLD: f64 = -1500.0;

/// Decodes every frame of an object's _Pixel Data_ into stored values (before the
/// rescale), frame after frame, row-major.
///
/// Samples are masked to _Bits Stored_ below _High Bit_ and sign-extended when _Pixel
/// Representation_ is 1, so bits above _High Bit_ (old overlay planes) are ignored.
///
/// # Errors
///
/// `decode_failed` when the codec fails, `truncated` when fewer bytes come out than
/// _Rows_ × _Columns_ × _Number of Frames_ samples need.
pub fn decode_stored_values(object: &DefaultDicomObject, path: &Path) -> Result<StoredFrames, ReadError> {
    let regrouped = regroup_fragments(object);
    let object = regrouped.as_ref().unwrap_or(object);
    let decoded = object.decode_pixel_data().map_err(|e| decode_error(path, &e))?;
    let rows = decoded.rows() as usize;
    let columns = decoded.columns() as usize;
    let frames = decoded.number_of_frames() as usize;
    let bits_allocated = decoded.bits_allocated();
    let bits_stored = decoded.bits_stored();
    let high_bit = decoded.high_bit();
    let signed = decoded.pixel_representation() == dicom_pixeldata::PixelRepresentation::Signed;
    let samples = rows * columns * frames;
    let bytes_per_sample = usize::from(bits_allocated / 8);
    let data = decoded.data();
    if data.len() < samples * bytes_per_sample {
        return Err(ReadError::Truncated {
            path: path.to_path_buf(),
            detail: format!(
                "{} bytes of decoded pixel data, {} expected for {frames} frame(s) of {rows}x{columns}",
                data.len(),
                samples * bytes_per_sample
            ),
        });
    }
    let unpack = SampleUnpacker::new(bits_stored, high_bit, signed);
    let values: Vec<i32> = match bits_allocated {
        16 => data[..samples * 2]
            .chunks_exact(2)
            // Decoded samples are in the machine's byte order (dicom-pixeldata 0.10).
            .map(|b| unpack.unpack(u32::from(u16::from_ne_bytes([b[0], b[1]]))))
            .collect(),
        8 => data[..samples].iter().map(|b| unpack.unpack(u32::from(*b))).collect(),
        other => {
            return Err(ReadError::UnsupportedPixelFormat {
                path: path.to_path_buf(),
                detail: format!("Bits Allocated {other}"),
            })
        }
    };
    Ok(StoredFrames {
        rows,
        columns,
        frames,
        values,
    })
}

/// Returns a copy of `object` with one fragment per frame, when its multi-frame
/// encapsulated _Pixel Data_ spreads frames over several fragments without a basic offset
/// table (dicom-pixeldata 0.10 then cannot find the frames).
///
/// A frame starts at a fragment that begins with a JPEG or JPEG-LS start-of-image marker
/// (`FF D8`) or a JPEG 2000 codestream marker (`FF 4F`). The copy is used only when that
/// rule finds exactly _Number of Frames_ frames.
fn regroup_fragments(object: &DefaultDicomObject) -> Option<DefaultDicomObject> {
    let frames = object
        .element_opt(tags::NUMBER_OF_FRAMES)
        .ok()
        .flatten()
        .and_then(|e| e.to_int::<usize>().ok())
        .unwrap_or(1);
    let pixel_data = object.element_opt(tags::PIXEL_DATA).ok().flatten()?;
    let fragments = pixel_data.value().fragments()?;
    let offset_table = pixel_data.value().offset_table().unwrap_or_default();
    if frames < 2 || fragments.len() <= frames || !offset_table.is_empty() {
        return None;
    }
    let mut grouped: Vec<Vec<u8>> = Vec::with_capacity(frames);
    for fragment in fragments {
        let starts_frame = fragment.starts_with(&[0xFF, 0xD8]) || fragment.starts_with(&[0xFF, 0x4F]);
        match grouped.last_mut() {
            Some(frame) if !starts_frame => frame.extend_from_slice(fragment),
            _ => grouped.push(fragment.clone()),
        }
    }
    if grouped.len() != frames {
        return None;
    }
    let mut copy = object.clone();
    copy.put(InMemElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        Value::from(PixelFragmentSequence::new(Vec::<u32>::new(), grouped)),
    ));
    Some(copy)
}

/// Stored pixel values of all frames of one object.
#[derive(Clone, Debug)]
pub struct StoredFrames {
    pub rows: usize,
    pub columns: usize,
    pub frames: usize,
    /// Frame-major, then row-major.
    pub values: Vec<i32>,
}

impl StoredFrames {
    /// Stored values of one frame.
    pub fn frame(&self, index: usize) -> &[i32] {
        let size = self.rows * self.columns;
        &self.values[index * size..(index + 1) * size]
    }
}

/// Extracts the _Bits Stored_ bits that end at _High Bit_ and sign-extends them.
#[derive(Clone, Copy, Debug)]
pub struct SampleUnpacker {
    shift: u32,
    mask: u32,
    sign_bit: u32,
    signed: bool,
}

impl SampleUnpacker {
    pub fn new(bits_stored: u16, high_bit: u16, signed: bool) -> Self {
        let bits = u32::from(bits_stored.clamp(1, 32));
        let shift = (u32::from(high_bit) + 1).saturating_sub(bits);
        SampleUnpacker {
            shift,
            mask: if bits >= 32 { u32::MAX } else { (1 << bits) - 1 },
            sign_bit: 1 << (bits - 1),
            signed,
        }
    }

    pub fn unpack(&self, raw: u32) -> i32 {
        let value = (raw >> self.shift) & self.mask;
        if self.signed && value & self.sign_bit != 0 {
            (value | !self.mask) as i32
        } else {
            value as i32
        }
    }
}

/// Converts one slice's stored values to Hounsfield units (rounded to whole HU and
/// clamped to the `i16` range) and marks padding.
///
/// Padding is, in this order of evidence: the _Pixel Padding Value_ (and range), any value
/// at or below [`PADDING_HU_THRESHOLD`], and the constant fill outside the reconstruction
/// circle that some scanners write at an air-like value without declaring it (see
/// [`fill_outside_circle`]).
pub fn rescale_slice(stored: &[i32], header: &SliceHeader, hu: &mut [i16], padding: &mut [bool]) {
    let slope = header.rescale_slope;
    let intercept = header.rescale_intercept;
    for ((value, out_hu), out_padding) in stored.iter().zip(hu.iter_mut()).zip(padding.iter_mut()) {
        let real = f64::from(*value) * slope + intercept;
        *out_hu = real.round().clamp(f64::from(i16::MIN), f64::from(i16::MAX)) as i16;
        *out_padding = real <= PADDING_HU_THRESHOLD
            || header.padding.is_some_and(|p| p.contains(*value));
    }
    let (rows, columns) = (header.rows as usize, header.columns as usize);
    if let Some(fill) = fill_outside_circle(stored, rows, columns) {
        let (cy, cx) = ((rows as f64 - 1.0) / 2.0, (columns as f64 - 1.0) / 2.0);
        for r in 0..rows {
            for c in 0..columns {
                let i = r * columns + c;
                let distance = ((r as f64 - cy).powi(2) + (c as f64 - cx).powi(2)).sqrt();
                if stored[i] == fill.value && distance > fill.radius {
                    padding[i] = true;
                }
            }
        }
    }
}

/// A constant fill outside a centred circle: the reconstruction circle of a CT scanner.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CircleFill {
    /// Stored value of the fill.
    pub value: i32,
    /// Radius of the circle around the image centre, in pixels.
    pub radius: f64,
}

/// Finds the constant fill outside the reconstruction circle, if the image has one.
///
/// The fill is the slice's minimum stored value found at all four corners. Walking
/// inward from the border along 180 rays, the fill ends where a different value starts;
/// the median of those distances from the centre is the circle's radius (rays that meet
/// clipped air equal to the fill run further in, and the median ignores them). The result
/// is accepted only when at least 95% of the pixels beyond that radius hold the fill and
/// they make up at least 2% of the image, so a slice of noisy air is never taken for one.
pub fn fill_outside_circle(stored: &[i32], rows: usize, columns: usize) -> Option<CircleFill> {
    if rows < 16 || columns < 16 {
        return None;
    }
    let corners = [
        stored[0],
        stored[columns - 1],
        stored[(rows - 1) * columns],
        stored[rows * columns - 1],
    ];
    let value = corners[0];
    if corners.iter().any(|c| *c != value) || stored.iter().any(|v| *v < value) {
        return None;
    }
    let (cy, cx) = ((rows as f64 - 1.0) / 2.0, (columns as f64 - 1.0) / 2.0);
    let mut radii: Vec<f64> = (0..180)
        .map(|step| {
            let angle = (step as f64) * std::f64::consts::PI / 90.0;
            let (dy, dx) = angle.sin_cos();
            // Distance from the centre to the image border along this ray.
            let to_border = (cx / dx.abs().max(1e-9)).min(cy / dy.abs().max(1e-9));
            let mut distance = to_border;
            while distance > 0.0 {
                let r = (cy + dy * distance).round() as usize;
                let c = (cx + dx * distance).round() as usize;
                if stored[r.min(rows - 1) * columns + c.min(columns - 1)] != value {
                    break;
                }
                distance -= 0.5;
            }
            distance
        })
        .collect();
    radii.sort_by(f64::total_cmp);
    let radius = radii[radii.len() / 2] + 0.5;

    let (mut outside, mut filled) = (0usize, 0usize);
    for r in 0..rows {
        for c in 0..columns {
            let distance = ((r as f64 - cy).powi(2) + (c as f64 - cx).powi(2)).sqrt();
            if distance > radius + 1.0 {
                outside += 1;
                filled += usize::from(stored[r * columns + c] == value);
            }
        }
    }
    let big_enough = outside * 50 >= rows * columns;
    (big_enough && filled * 100 >= outside * 95).then_some(CircleFill { value, radius })
}

fn decode_error(path: &Path, error: &dicom_pixeldata::Error) -> ReadError {
    let mut detail = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        detail.push_str(": ");
        detail.push_str(&e.to_string());
        source = e.source();
    }
    ReadError::DecodeFailed {
        path: path.to_path_buf(),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpack_signed_12_bit() {
        let unpack = SampleUnpacker::new(12, 11, true);
        assert_eq!(unpack.unpack(0x0FFF), -1);
        assert_eq!(unpack.unpack(0x0800), -2048);
        assert_eq!(unpack.unpack(0x07FF), 2047);
        // Bits above High Bit (an old overlay plane) are ignored.
        assert_eq!(unpack.unpack(0xF001), 1);
    }

    #[test]
    fn unpack_unsigned_and_shifted() {
        assert_eq!(SampleUnpacker::new(16, 15, false).unpack(0xFFFF), 65535);
        assert_eq!(SampleUnpacker::new(16, 15, true).unpack(0xF830), -2000);
        // 12 bits stored in the high bits of the word (High Bit 15).
        assert_eq!(SampleUnpacker::new(12, 15, false).unpack(0x1230), 0x123);
    }

    /// A 64×64 image of noise-free "air" 24 inside a centred circle of radius 28 and the
    /// fill 0 outside it.
    fn circle_image(fill: i32, inside: i32) -> Vec<i32> {
        let mut image = vec![fill; 64 * 64];
        for r in 0..64 {
            for c in 0..64 {
                let d = ((r as f64 - 31.5).powi(2) + (c as f64 - 31.5).powi(2)).sqrt();
                if d < 28.0 {
                    image[r * 64 + c] = inside + ((r + c) % 3) as i32;
                }
            }
        }
        image
    }

    #[test]
    fn circle_fill_found() {
        let fill = fill_outside_circle(&circle_image(0, 24), 64, 64).expect("a fill");
        assert_eq!(fill.value, 0);
        assert!((fill.radius - 28.0).abs() < 1.5, "radius {}", fill.radius);
    }

    #[test]
    fn circle_fill_needs_constant_corners() {
        let mut image = circle_image(0, 24);
        image[0] = 1;
        assert_eq!(fill_outside_circle(&image, 64, 64), None);
        // Noise everywhere: no fill.
        let noisy: Vec<i32> = (0..64 * 64).map(|i| (i * 7919 % 13) as i32).collect();
        assert_eq!(fill_outside_circle(&noisy, 64, 64), None);
    }
}
