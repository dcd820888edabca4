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

/// No tissue and no air lies below this value. Scanners fill the area outside the
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
/// As [`decode_raw_words`].
pub fn decode_stored_values(object: &DefaultDicomObject, path: &Path) -> Result<StoredFrames, ReadError> {
    let raw = decode_raw_words(object, path)?;
    let unpack = SampleUnpacker::new(raw.bits_stored, raw.high_bit, raw.signed);
    Ok(StoredFrames {
        rows: raw.rows,
        columns: raw.columns,
        frames: raw.frames,
        values: raw.words.iter().map(|w| unpack.unpack(u32::from(*w))).collect(),
    })
}

/// Pixel words of all frames of one object as the codec returns them: one 8- or 16-bit
/// word per sample, not yet unpacked.
#[derive(Clone, Debug)]
pub struct RawFrames {
    pub rows: usize,
    pub columns: usize,
    pub frames: usize,
    pub bits_stored: u16,
    pub high_bit: u16,
    pub signed: bool,
    /// Frame-major, then row-major.
    pub words: Vec<u16>,
}

/// Decodes every frame of an object's _Pixel Data_ with dicom-pixeldata's codecs.
///
/// # Errors
///
/// `decode_failed` when the codec fails, `truncated` when fewer bytes come out than
/// _Rows_ × _Columns_ × _Number of Frames_ samples need, `unsupported_pixel_format` for
/// samples other than 8 or 16 bits.
pub fn decode_raw_words(object: &DefaultDicomObject, path: &Path) -> Result<RawFrames, ReadError> {
    let regrouped = regroup_fragments(object);
    let object = regrouped.as_ref().unwrap_or(object);
    // Some dicom-rs 0.10 codecs index out of bounds on corrupt data (RLE segments, for
    // one). A panic there must become this file's error, not end the process.
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| object.decode_pixel_data()))
        .map_err(|panic| ReadError::DecodeFailed {
            path: path.to_path_buf(),
            detail: format!("the codec failed on corrupt data ({})", panic_message(&*panic)),
        })?
        .map_err(|e| decode_error(path, &e))?;

    let rows = decoded.rows() as usize;
    let columns = decoded.columns() as usize;
    let frames = decoded.number_of_frames() as usize;
    let bits_allocated = decoded.bits_allocated();
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

    let words: Vec<u16> = match bits_allocated {
        // Decoded samples are in the machine's byte order (dicom-pixeldata 0.10).
        16 => data[..samples * 2]
            .chunks_exact(2)
            .map(|b| u16::from_ne_bytes([b[0], b[1]]))
            .collect(),
        8 => data[..samples].iter().map(|b| u16::from(*b)).collect(),
        other => {
            return Err(ReadError::UnsupportedPixelFormat {
                path: path.to_path_buf(),
                detail: format!("Bits Allocated {other}"),
            })
        }
    };
    Ok(RawFrames {
        rows,
        columns,
        frames,
        bits_stored: decoded.bits_stored(),
        high_bit: decoded.high_bit(),
        signed: decoded.pixel_representation() == dicom_pixeldata::PixelRepresentation::Signed,
        words,
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

/// Converts raw pixel words of one slice to Hounsfield units and padding flags by table
/// lookup: the table covers every possible 8- or 16-bit word, so unpacking (_Bits
/// Stored_, _High Bit_, sign), the rescale and the padding test cost one lookup per pixel.
///
/// HU are rounded to whole units and clamped to the `i16` range. A word is padding when it
/// matches _Pixel Padding Value_ (and range) or its HU is at or below
/// [`PADDING_HU_THRESHOLD`]; the fill outside the reconstruction circle is found later,
/// on the whole slice ([`mark_circle_fill`]).
pub struct SliceConverter {
    /// HU and padding flag per raw word; 8-bit images use the first 256 entries.
    table: Box<[(i16, bool); 1 << 16]>,
}

impl SliceConverter {
    pub fn new(header: &SliceHeader) -> Self {
        let unpack = SampleUnpacker::new(header.bits_stored, header.high_bit, header.signed);
        let words: u32 = if header.bits_allocated == 8 { 1 << 8 } else { 1 << 16 };
        let mut table = Box::new([(0i16, true); 1 << 16]);
        for raw in 0..words {
            let stored = unpack.unpack(raw);
            let real = f64::from(stored) * header.rescale_slope + header.rescale_intercept;
            let hu = real.round().clamp(f64::from(i16::MIN), f64::from(i16::MAX)) as i16;
            let padding = real <= PADDING_HU_THRESHOLD || header.padding.is_some_and(|p| p.contains(stored));
            table[raw as usize] = (hu, padding);
        }
        SliceConverter { table }
    }

    /// Converts `words` (one per pixel) into `hu` and `padding`.
    ///
    /// # Panics
    ///
    /// If there are fewer words than pixels, or `hu` and `padding` differ in length.
    pub fn convert(&self, words: impl Iterator<Item = u16>, hu: &mut [i16], padding: &mut [bool]) {
        assert_eq!(hu.len(), padding.len());
        let mut count = 0;
        for ((word, out_hu), out_padding) in words.zip(hu.iter_mut()).zip(padding.iter_mut()) {
            (*out_hu, *out_padding) = self.table[usize::from(word)];
            count += 1;
        }
        assert_eq!(count, hu.len(), "fewer pixel words than pixels");
    }

    /// Converts 16-bit words stored as bytes (little endian unless `big_endian`).
    ///
    /// # Panics
    ///
    /// If `bytes` has fewer than two bytes per pixel.
    pub fn convert_bytes16(&self, bytes: &[u8], big_endian: bool, hu: &mut [i16], padding: &mut [bool]) {
        let n = hu.len();
        assert!(bytes.len() >= 2 * n, "fewer pixel bytes than pixels");
        assert_eq!(padding.len(), n);
        let (bytes, padding) = (&bytes[..2 * n], &mut padding[..n]);
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            let word = if big_endian {
                u16::from_be_bytes([pair[0], pair[1]])
            } else {
                u16::from_le_bytes([pair[0], pair[1]])
            };
            (hu[i], padding[i]) = self.table[usize::from(word)];
        }
    }
}

/// Marks the constant fill outside the reconstruction circle as padding, when the slice
/// (`hu`, row-major in stored layout) has one (see [`fill_outside_circle`]).
pub fn mark_circle_fill(hu: &[i16], rows: usize, columns: usize, padding: &mut [bool]) {
    let Some(fill) = fill_outside_circle(hu, rows, columns) else {
        return;
    };
    for_each_outside(rows, columns, fill.radius, |i| {
        if hu[i] == fill.value {
            padding[i] = true;
        }
    });
}

/// Calls `visit` with the index of every pixel farther than `radius` from the image
/// centre, row by row.
fn for_each_outside(rows: usize, columns: usize, radius: f64, mut visit: impl FnMut(usize)) {
    let (cy, cx) = ((rows as f64 - 1.0) / 2.0, (columns as f64 - 1.0) / 2.0);
    for r in 0..rows {
        let dy = r as f64 - cy;
        let half_width_squared = radius * radius - dy * dy;
        if half_width_squared < 0.0 {
            (0..columns).for_each(|c| visit(r * columns + c));
            continue;
        }
        // Columns within the circle on this row: |c - cx| <= half_width.
        let half_width = half_width_squared.sqrt();
        let first_inside = (cx - half_width).ceil().max(0.0) as usize;
        let last_inside = ((cx + half_width).floor() as usize).min(columns - 1);
        (0..first_inside.min(columns)).for_each(|c| visit(r * columns + c));
        (last_inside + 1..columns).for_each(|c| visit(r * columns + c));
    }
}

/// A constant fill outside a centred circle: the reconstruction circle of a CT scanner.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CircleFill<T> {
    /// Value of the fill.
    pub value: T,
    /// Radius of the circle around the image centre, in pixels.
    pub radius: f64,
}

/// Finds the constant fill outside the reconstruction circle, if the image has one.
///
/// The fill is the slice's minimum value found at all four corners. Walking
/// inward from the border along 180 rays, the fill ends where a different value starts.
/// The median of those distances from the centre is the circle's radius: rays that meet
/// clipped air equal to the fill run further in, and the median ignores them. The result
/// is accepted only when at least 99% of the pixels beyond that radius contain the fill,
/// they make up at least 2% of the image, and the radius is at least 40% of the matrix.
/// Air that the scanner clipped to its minimum is noisy, so it fails the first test.
pub fn fill_outside_circle<T: Copy + PartialOrd>(stored: &[T], rows: usize, columns: usize) -> Option<CircleFill<T>> {
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
    // The first non-fill sample on a ray lies inside the circle and the last fill sample
    // 0.5 pixel farther out: the edge is taken halfway.
    let radius = radii[radii.len() / 2] + 0.25;

    let (mut outside, mut filled) = (0usize, 0usize);
    for_each_outside(rows, columns, radius + 1.5, |i| {
        outside += 1;
        filled += usize::from(stored[i] == value);
    });
    let big_enough = outside * 50 >= rows * columns && radius >= 0.4 * rows.min(columns) as f64;
    (big_enough && filled * 100 >= outside * 99).then_some(CircleFill { value, radius })
}

fn decode_error(path: &Path, error: &dicom_pixeldata::Error) -> ReadError {
    let mut detail = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        // Some errors repeat their source's text; keep each text once.
        let text = e.to_string();
        if !detail.contains(&text) {
            detail.push_str(": ");
            detail.push_str(&text);
        }
        source = e.source();
    }
    ReadError::DecodeFailed {
        path: path.to_path_buf(),
        detail,
    }
}

/// Returns the text of a caught panic's payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "no message".to_string()
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

    /// Builds a 64×64 image of noise-free "air" (`inside`) within a centred circle of
    /// radius 28 and `fill` outside it.
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
        let noisy: Vec<i32> = (0..64 * 64).map(|i| i * 7919 % 13).collect();
        assert_eq!(fill_outside_circle(&noisy, 64, 64), None);
    }
}
