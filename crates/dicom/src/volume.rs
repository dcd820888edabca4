//! The reader's output: a CT volume in Hounsfield units in one canonical patient frame.

use serde::Serialize;

use crate::geometry::InPlaneMapping;

/// A bit per voxel, packed 64 to a word.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BitMask {
    words: Vec<u64>,
    len: usize,
}

impl BitMask {
    /// Creates a mask of `len` bits, all clear.
    pub fn new(len: usize) -> Self {
        BitMask {
            words: vec![0; len.div_ceil(64)],
            len,
        }
    }

    /// Packs a slice of booleans.
    pub fn from_bools(bits: &[bool]) -> Self {
        let mut mask = BitMask::new(bits.len());
        for (word, chunk) in mask.words.iter_mut().zip(bits.chunks(64)) {
            *word = pack_bools(chunk);
        }
        mask
    }

    /// Joins masks end to end.
    pub fn concat(parts: &[BitMask]) -> Self {
        let len = parts.iter().map(|p| p.len).sum();
        let mut mask = BitMask::new(len);
        let mut offset = 0;
        for part in parts {
            if offset % 64 == 0 {
                // Word-aligned: bits past a part's end are zero, so whole words copy.
                let first = offset / 64;
                mask.words[first..first + part.words.len()].copy_from_slice(&part.words);
            } else {
                for i in (0..part.len).filter(|i| part.get(*i)) {
                    let j = offset + i;
                    mask.words[j / 64] |= 1 << (j % 64);
                }
            }
            offset += part.len;
        }
        mask
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Returns bit `i`.
    ///
    /// # Panics
    ///
    /// If `i` is out of range.
    pub fn get(&self, i: usize) -> bool {
        assert!(i < self.len, "bit {i} out of range for a mask of {}", self.len);
        self.words[i / 64] >> (i % 64) & 1 == 1
    }

    /// Copies bits `start .. start + out.len()` into `out`.
    ///
    /// # Panics
    ///
    /// If the range exceeds the mask.
    pub fn copy_range(&self, start: usize, out: &mut [bool]) {
        assert!(start + out.len() <= self.len, "range beyond a mask of {}", self.len);
        for (i, bit) in out.iter_mut().enumerate() {
            let j = start + i;
            *bit = self.words[j / 64] >> (j % 64) & 1 == 1;
        }
    }

    /// Number of set bits.
    pub fn count_ones(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }
}

/// Packs up to 64 booleans into a word, the first in the lowest bit.
fn pack_bools(chunk: &[bool]) -> u64 {
    let mut word = 0u64;
    let groups = chunk.chunks_exact(8);
    let rest = groups.remainder();
    for (group_index, group) in groups.enumerate() {
        // Eight 0/1 bytes are read as one little-endian word. The multiplication moves byte
        // i's bit to bit 56 + i without carries, because every product term has its own bit.
        let bytes = u64::from_le_bytes(std::array::from_fn(|i| u8::from(group[i])));
        let packed = bytes.wrapping_mul(0x0102_0408_1020_4080) >> 56;
        word |= packed << (8 * group_index);
    }
    let done = chunk.len() - rest.len();
    for (i, bit) in rest.iter().enumerate() {
        word |= u64::from(*bit) << (done + i);
    }
    word
}

/// Voxel counts along each axis: slices, then rows, then columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Dims {
    pub slices: usize,
    pub rows: usize,
    pub columns: usize,
}

impl Dims {
    pub fn voxels(&self) -> usize {
        self.slices * self.rows * self.columns
    }

    pub fn slice_len(&self) -> usize {
        self.rows * self.columns
    }
}

/// Series-level facts: identifiers and acquisition settings, never patient attributes.
#[derive(Clone, Debug, Serialize)]
pub struct SeriesMeta {
    pub study_uid: String,
    pub series_uid: String,
    pub frame_of_reference_uid: Option<String>,
    pub manufacturer: Option<String>,
    pub scanner_model: Option<String>,
    /// _Convolution Kernel_ (the first value).
    pub kernel: Option<String>,
    pub slice_thickness_mm: Option<f64>,
    /// _Acquisition Date_ and _Acquisition Time_ of the first slice, as written
    /// (`YYYYMMDD` and `HHMMSS.FFFFFF`).
    pub acquisition_date: Option<String>,
    pub acquisition_time: Option<String>,
    /// _Patient Position_ (HFS, HFP, FFS, …).
    pub patient_position: Option<String>,
    /// HMAC-SHA256 of _Patient ID_ under the deployment secret, hex.
    pub patient_key: Option<String>,
    /// Transfer syntax UIDs met in the series.
    pub transfer_syntaxes: Vec<String>,
}

/// Per-slice facts kept for traceability.
#[derive(Clone, Debug, Serialize)]
pub struct SliceMeta {
    pub sop_instance_uid: String,
    pub instance_number: Option<i32>,
    /// _Image Position (Patient)_ as stored, mm.
    pub position: [f64; 3],
    pub rescale_slope: f64,
    pub rescale_intercept: f64,
}

/// A CT volume in Hounsfield units.
///
/// Voxels are stored as `hu[(slice * rows + row) * columns + column]` in the canonical
/// frame: slices from feet to head, rows from anterior to posterior, columns from the
/// patient's right to the patient's left. So the left half of a row shows the patient's
/// right lung whatever the scanner's orientation, and a prone scan reads like a supine
/// one.
#[derive(Clone, Debug)]
pub struct CtVolume {
    pub dims: Dims,
    /// Hounsfield units, rounded to whole units.
    pub hu: Vec<i16>,
    /// Voxels that hold no measurement: _Pixel Padding Value_, the fill outside the
    /// reconstruction circle, and anything at or below -1500 HU.
    pub padding: BitMask,
    /// Spacing in mm: between slices (the median), between rows, between columns.
    pub spacing_mm: [f64; 3],
    /// Position of each slice along the head-pointing normal, mm, ascending.
    pub slice_positions_mm: Vec<f64>,
    /// Patient position (mm) of voxel (0, 0, 0).
    pub origin_mm: [f64; 3],
    /// Direction cosines of increasing row index and increasing column index in the
    /// canonical frame, and the slice normal.
    pub directions: [[f64; 3]; 3],
    /// _Image Orientation (Patient)_ as the scanner wrote it.
    pub source_orientation: [f64; 6],
    /// Mapping that moved the stored pixels into the canonical frame.
    pub mapping: InPlaneMapping,
    pub meta: SeriesMeta,
    pub slices: Vec<SliceMeta>,
}

impl CtVolume {
    /// Returns the HU values of slice `k`, row-major.
    pub fn slice(&self, k: usize) -> &[i16] {
        let n = self.dims.slice_len();
        &self.hu[k * n..(k + 1) * n]
    }

    /// Returns whether voxel (k, row, column) is padding.
    pub fn is_padding(&self, k: usize, row: usize, column: usize) -> bool {
        self.padding
            .get((k * self.dims.rows + row) * self.dims.columns + column)
    }

    /// Volume of one voxel in mm³.
    pub fn voxel_volume_mm3(&self) -> f64 {
        self.spacing_mm.iter().product()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmask_packs_and_concats() {
        let a = BitMask::from_bools(&[true, false, true]);
        let b: Vec<bool> = (0..70).map(|i| i == 69).collect();
        let joined = BitMask::concat(&[a.clone(), BitMask::from_bools(&b)]);
        assert_eq!(joined.len(), 73);
        assert!(joined.get(0));
        assert!(!joined.get(1));
        assert!(joined.get(2));
        assert!(joined.get(72));
        assert_eq!(joined.count_ones(), 3);
        assert_eq!(a.count_ones(), 2);
    }

    #[test]
    fn pack_bools_matches_bit_by_bit() {
        let bits: Vec<bool> = (0..64).map(|i| (i * 37 + i / 5) % 3 == 0).collect();
        let expected = bits.iter().enumerate().fold(0u64, |w, (i, b)| w | (u64::from(*b) << i));
        assert_eq!(pack_bools(&bits), expected);
        assert_eq!(pack_bools(&bits[..13]), expected & ((1 << 13) - 1));
        assert_eq!(pack_bools(&[true; 64]), u64::MAX);
    }

    #[test]
    fn bitmask_concat_word_aligned() {
        let first: Vec<bool> = (0..64).map(|i| i % 2 == 0).collect();
        let second: Vec<bool> = (0..10).map(|i| i == 3).collect();
        let joined = BitMask::concat(&[BitMask::from_bools(&first), BitMask::from_bools(&second)]);
        assert_eq!(joined.count_ones(), 33);
        assert!(joined.get(62));
        assert!(joined.get(67));
        assert!(!joined.get(68));
    }
}
