//! A walk over a file's element headers that checks every declared value length against
//! the bytes the file really has, before a parser allocates buffers of that size.
//!
//! dicom-object 0.10 allocates a buffer of the declared length before reading a value, so
//! a corrupt length of 3 GB costs 3 GB of zeroed memory and seconds of system time before
//! the read fails. Walking the headers first turns such a file into a `truncated` error at
//! once.
//!
//! The walk must see the same element boundaries as dicom-parser 0.10, also in files that
//! break the standard. It therefore copies the parser's rules: an unknown VR has a
//! 4-byte length, sequences of any length are read element by element, and a binary
//! value is read in whole numbers only. A fuzz target (docs/fuzzing.md) searches for
//! places where the two still differ.

/// Value representations whose explicit-VR header has a 4-byte length. The file meta
/// group walk uses this list.
pub(crate) const LONG_VRS: [&[u8; 2]; 11] = [
    b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UT", b"UN", b"UC", b"UR",
];

/// Value representations whose explicit-VR header has a 2-byte length (PS3.5 table
/// 7.1-2). dicom-parser 0.10 reads every other VR, unknown ones included, as UN with a
/// 4-byte length, so the data set walk must do the same.
pub(crate) const SHORT_VRS: [&[u8; 2]; 21] = [
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN", b"SH",
    b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
];

use dicom_core::VR;

const UNDEFINED_LENGTH: u32 = 0xFFFF_FFFF;

const PIXEL_DATA: (u16, u16) = (0x7FE0, 0x0010);
const ITEM: (u16, u16) = (0xFFFE, 0xE000);
const ITEM_DELIMITER: (u16, u16) = (0xFFFE, 0xE00D);
const SEQUENCE_DELIMITER: (u16, u16) = (0xFFFE, 0xE0DD);

/// Encoding of the data set's element headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    ImplicitLittle,
    ExplicitLittle,
    ExplicitBig,
}

impl Encoding {
    /// Returns the encoding of a transfer syntax's data set, or `None` for deflated data
    /// sets, whose headers cannot be walked without inflating them (see [`inflate`]).
    pub fn of_transfer_syntax(uid: &str) -> Option<Encoding> {
        match uid.trim_end_matches('\0') {
            "1.2.840.10008.1.2" => Some(Encoding::ImplicitLittle),
            "1.2.840.10008.1.2.2" => Some(Encoding::ExplicitBig),
            DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN => None,
            // Every other standard syntax, encapsulated ones included, is explicit VR
            // little endian.
            _ => Some(Encoding::ExplicitLittle),
        }
    }
}

/// Deflated Explicit VR Little Endian: the data set is a raw deflate stream (RFC 1951) of
/// an explicit VR little endian data set.
pub const DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1.99";

/// Largest inflated data set accepted from a deflated file: 4 times the default file
/// size limit. A deflate stream can inflate about a thousandfold, so a small file could
/// otherwise make the parser inflate gigabytes.
pub const MAX_INFLATED_BYTES: u64 = 256 * 1024 * 1024;

/// Inflates a deflated data set. Returns `Err(())` when it inflates to more than
/// [`MAX_INFLATED_BYTES`]. A corrupt stream yields every byte that inflated before the
/// error, at least as many as dicom-parser can read from it.
pub fn inflate(deflated: &[u8]) -> Result<Vec<u8>, ()> {
    // flate2's `Read` adapters drop the output of a call that ends in an error, so
    // dicom-parser, reading a few bytes at a time, could see more than a large read
    // would. The low-level API keeps all of it.
    let mut decompress = flate2::Decompress::new(false);
    let mut inflated = Vec::new();
    loop {
        if inflated.len() as u64 > MAX_INFLATED_BYTES {
            return Err(());
        }
        inflated.reserve(64 * 1024);
        let (read_before, written_before) = (decompress.total_in(), decompress.total_out());
        let input = &deflated[read_before as usize..];
        match decompress.decompress_vec(input, &mut inflated, flate2::FlushDecompress::None) {
            Ok(flate2::Status::StreamEnd) | Err(_) => break,
            Ok(_) => {
                let progress = decompress.total_in() != read_before || decompress.total_out() != written_before;
                if !progress {
                    break;
                }
            }
        }
    }
    if inflated.len() as u64 > MAX_INFLATED_BYTES {
        return Err(());
    }
    Ok(inflated)
}

/// A declared length that runs past the end of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LengthOverrun {
    pub group: u16,
    pub element: u16,
    pub declared: u64,
    pub available: u64,
}

/// Outcome of [`walk_lengths`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LengthWalk {
    /// The first declared length that runs past the end of the file.
    pub overrun: Option<LengthOverrun>,
    /// Whether the walk reached the header of the top-level _Pixel Data_ element, so
    /// every element before it was checked.
    pub reached_pixel_data: bool,
}

/// Walks the element headers in `data_set`, checking every declared length against
/// what remains of the file.
///
/// `data_set` contains the bytes after the file meta group, possibly only a prefix of them,
/// and `remaining_in_file` bytes follow its start in the file.
///
/// Sequences and items are walked into, whatever their length, because dicom-parser
/// reads their elements one by one and allocates each value at its declared length.
/// Other values are skipped. The walk stops quietly where the prefix ends.
pub fn walk_lengths(data_set: &[u8], remaining_in_file: u64, encoding: Encoding) -> LengthWalk {
    let mut position = 0usize;
    let mut reached_pixel_data = false;
    // Inside encapsulated pixel data, items hold compressed fragments, not elements.
    let mut in_pixel_fragments = false;
    // Where each enclosing sequence or item of defined length ends (innermost last), and
    // how many of undefined length enclose the current element. Both are empty at the
    // top level.
    let mut defined_ends: Vec<usize> = Vec::new();
    let mut undefined_depth = 0usize;
    while position + 8 <= data_set.len() {
        while defined_ends.last().is_some_and(|end| *end <= position) {
            defined_ends.pop();
        }
        let top_level = defined_ends.is_empty() && undefined_depth == 0;
        let read16 = |at: usize| {
            let bytes = [data_set[at], data_set[at + 1]];
            if encoding == Encoding::ExplicitBig {
                u16::from_be_bytes(bytes)
            } else {
                u16::from_le_bytes(bytes)
            }
        };
        let read32 = |at: usize| {
            let bytes = [data_set[at], data_set[at + 1], data_set[at + 2], data_set[at + 3]];
            if encoding == Encoding::ExplicitBig {
                u32::from_be_bytes(bytes)
            } else {
                u32::from_le_bytes(bytes)
            }
        };
        let tag = (read16(position), read16(position + 2));
        // Items and delimiters are always encoded as tag + 4-byte length.
        let (header_len, length, vr) = if tag.0 == 0xFFFE {
            (8, read32(position + 4), VR::UN)
        } else if encoding == Encoding::ImplicitLittle {
            (8, read32(position + 4), implicit_vr(tag))
        } else {
            let vr_bytes = [data_set[position + 4], data_set[position + 5]];
            let vr = VR::from_binary(vr_bytes).unwrap_or(VR::UN);
            if SHORT_VRS.iter().any(|short| **short == vr_bytes) {
                (8, u32::from(read16(position + 6)), vr)
            } else {
                if position + 12 > data_set.len() {
                    break;
                }
                (12, read32(position + 8), vr)
            }
        };
        let is_sequence = vr == VR::SQ;
        position += header_len;
        if tag == PIXEL_DATA && top_level {
            reached_pixel_data = true;
        }
        if tag == PIXEL_DATA && length == UNDEFINED_LENGTH {
            in_pixel_fragments = true;
            continue;
        }
        if tag == SEQUENCE_DELIMITER {
            if in_pixel_fragments {
                in_pixel_fragments = false;
            } else {
                undefined_depth = undefined_depth.saturating_sub(1);
            }
            continue;
        }
        if tag == ITEM_DELIMITER {
            undefined_depth = undefined_depth.saturating_sub(1);
            continue;
        }
        if length == UNDEFINED_LENGTH {
            // Walk into the sequence or item.
            undefined_depth += 1;
            continue;
        }
        let available = remaining_in_file.saturating_sub(position as u64);
        if u64::from(length) > available {
            return LengthWalk {
                overrun: Some(LengthOverrun {
                    group: tag.0,
                    element: tag.1,
                    declared: u64::from(length),
                    available,
                }),
                reached_pixel_data,
            };
        }
        // A sequence's items, and an item's elements, follow at once.
        if is_sequence || (tag == ITEM && !in_pixel_fragments) {
            // Clamped to the enclosing end, so the ends on the stack never increase.
            let end = position + length as usize;
            defined_ends.push(defined_ends.last().map_or(end, |outer| end.min(*outer)));
            continue;
        }
        position += bytes_read_by_parser(vr, length) as usize;
    }
    LengthWalk {
        overrun: None,
        reached_pixel_data,
    }
}

/// Returns the VR that dicom-parser 0.10 gives `tag` in an implicit VR data set: OW for
/// pixel and overlay data, else the standard dictionary's, else UN.
fn implicit_vr(tag: (u16, u16)) -> VR {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
    if tag == PIXEL_DATA || (tag.0 >> 8 == 0x60 && tag.1 == 0x3000) {
        return VR::OW;
    }
    dicom_dictionary_std::StandardDataDictionary
        .by_tag(dicom_core::Tag(tag.0, tag.1))
        .map_or(VR::UN, |entry| entry.vr().relaxed())
}

/// Returns how many bytes of a value dicom-parser 0.10 reads. For binary VRs it reads
/// whole numbers only (a 2-byte FL value reads nothing), and the rest of the value is
/// then parsed as the next element header.
fn bytes_read_by_parser(vr: VR, length: u32) -> u32 {
    let size = match vr {
        VR::US | VR::SS | VR::OW => 2,
        VR::AT | VR::FL | VR::OF | VR::SL | VR::UL | VR::OL => 4,
        VR::FD | VR::OD | VR::SV | VR::UV | VR::OV => 8,
        _ => 1,
    };
    length - length % size
}

/// Returns the offset of the data set in `bytes` (which start at the `DICM` prefix), past
/// the file meta group, whose elements are always explicit VR little endian, and the
/// _Transfer Syntax UID_ found there.
pub fn read_file_meta(bytes: &[u8]) -> Option<(usize, String)> {
    let (elements, data_set_offset) = crate::file_meta::walk_file_meta(bytes)?;
    let transfer_syntax = elements.iter().find(|e| e.element == 0x0010)?;
    let uid = String::from_utf8_lossy(&bytes[transfer_syntax.value_start..transfer_syntax.end]);
    Some((data_set_offset, uid.trim_end_matches(['\0', ' ']).to_string()))
}

/// Returns the offset of the data set in a whole DICOM Part 10 file (with or without the
/// 128-byte preamble) and its _Transfer Syntax UID_, or `None` when the file meta group
/// cannot be read.
pub fn data_set_start(file: &[u8]) -> Option<(usize, String)> {
    let dicm = if file.get(128..132) == Some(b"DICM".as_slice()) {
        128
    } else if file.get(..4) == Some(b"DICM".as_slice()) {
        0
    } else {
        return None;
    };
    let (offset, transfer_syntax) = read_file_meta(&file[dicm..])?;
    Some((dicm + offset, transfer_syntax))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find_length_overrun(data_set: &[u8], remaining_in_file: u64, encoding: Encoding) -> Option<LengthOverrun> {
        walk_lengths(data_set, remaining_in_file, encoding).overrun
    }

    fn explicit_short(group: u16, element: u16, vr: &[u8; 2], length: u16) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&group.to_le_bytes());
        bytes.extend_from_slice(&element.to_le_bytes());
        bytes.extend_from_slice(vr);
        bytes.extend_from_slice(&length.to_le_bytes());
        bytes
    }

    #[test]
    fn sound_elements_pass() {
        let mut data = explicit_short(0x0008, 0x0060, b"CS", 2);
        data.extend_from_slice(b"CT");
        assert_eq!(find_length_overrun(&data, data.len() as u64, Encoding::ExplicitLittle), None);
    }

    #[test]
    fn overlong_value_is_found() {
        // (0008,0008) declares 0x4943 bytes, the file has 2.
        let mut data = explicit_short(0x0008, 0x0008, b"CS", 0x4943);
        data.extend_from_slice(b"AB");
        let overrun = find_length_overrun(&data, data.len() as u64, Encoding::ExplicitLittle).unwrap();
        assert_eq!((overrun.group, overrun.element, overrun.declared, overrun.available), (8, 8, 0x4943, 2));
    }

    #[test]
    fn implicit_4_byte_length_beyond_file() {
        let mut data = Vec::new();
        data.extend_from_slice(&[0x08, 0x00, 0x15, 0x11]);
        data.extend_from_slice(&0xE000_0000u32.to_le_bytes());
        let overrun = find_length_overrun(&data, 100, Encoding::ImplicitLittle).unwrap();
        assert_eq!(overrun.declared, 0xE000_0000);
    }

    #[test]
    fn pixel_fragments_are_skipped() {
        // Encapsulated pixel data: an empty offset table item, one 4-byte fragment whose
        // bytes would read as a huge element header, then the sequence delimiter.
        let mut data = vec![0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0];
        data.extend_from_slice(&UNDEFINED_LENGTH.to_le_bytes());
        data.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0, 0, 0, 0]);
        data.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 8, 0, 0, 0]);
        data.extend_from_slice(&[0x08, 0x00, 0x08, 0x00, b'U', b'N', 0xFF, 0x7F]);
        data.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        assert_eq!(find_length_overrun(&data, data.len() as u64, Encoding::ExplicitLittle), None);
    }

    #[test]
    fn prefix_end_stops_quietly() {
        // A 100-byte value that the prefix does not include, in a file long enough.
        let data = explicit_short(0x0010, 0x0010, b"PN", 100);
        assert_eq!(find_length_overrun(&data, 1000, Encoding::ExplicitLittle), None);
    }

    fn explicit_long(group: u16, element: u16, vr: &[u8; 2], length: u32) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&group.to_le_bytes());
        bytes.extend_from_slice(&element.to_le_bytes());
        bytes.extend_from_slice(vr);
        bytes.extend_from_slice(&[0, 0]);
        bytes.extend_from_slice(&length.to_le_bytes());
        bytes
    }

    #[test]
    fn unknown_vr_has_4_byte_length() {
        // dicom-parser reads an unknown VR as UN: 2 reserved bytes, then a 4-byte length.
        // Read as a short VR, this header declares 0 bytes.
        let data = explicit_long(0x0009, 0x1010, b"\0\0", 0xF000_0000);
        let overrun = find_length_overrun(&data, data.len() as u64, Encoding::ExplicitLittle).unwrap();
        assert_eq!((overrun.group, overrun.element, overrun.declared), (0x0009, 0x1010, 0xF000_0000));
    }

    #[test]
    fn defined_length_sequence_is_walked_into() {
        // A 20-byte sequence with one 12-byte item whose OB element declares 4 GB.
        let mut data = explicit_long(0x0008, 0x1140, b"SQ", 20);
        data.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 12, 0, 0, 0]);
        data.extend_from_slice(&explicit_long(0x0009, 0x1010, b"OB", 0xFFFF_FFF0));
        let overrun = find_length_overrun(&data, data.len() as u64, Encoding::ExplicitLittle).unwrap();
        assert_eq!((overrun.group, overrun.element), (0x0009, 0x1010));
    }

    #[test]
    fn implicit_sequence_found_in_dictionary() {
        // (0008,1140) Referenced Image Sequence, 16 bytes, in implicit VR: one item
        // holding the header of (0008,1150) with a length of 3 GB.
        let mut data = vec![0x08, 0x00, 0x40, 0x11, 16, 0, 0, 0];
        data.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 8, 0, 0, 0]);
        data.extend_from_slice(&[0x08, 0x00, 0x50, 0x11]);
        data.extend_from_slice(&0xC000_0000u32.to_le_bytes());
        let overrun = find_length_overrun(&data, data.len() as u64, Encoding::ImplicitLittle).unwrap();
        assert_eq!((overrun.group, overrun.element), (0x0008, 0x1150));
    }

    #[test]
    fn pixel_data_reached_at_top_level_only() {
        let pixel_data = explicit_long(0x7FE0, 0x0010, b"OW", 4);
        let top = [explicit_short(0x0028, 0x0010, b"US", 0), pixel_data.clone()].concat();
        let walk = walk_lengths(&top, top.len() as u64 + 4, Encoding::ExplicitLittle);
        assert!(walk.reached_pixel_data);

        // The same element inside an icon sequence's item does not count.
        let mut nested = explicit_long(0x0088, 0x0200, b"SQ", UNDEFINED_LENGTH);
        nested.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        nested.extend_from_slice(&pixel_data);
        let walk = walk_lengths(&nested, nested.len() as u64 + 4, Encoding::ExplicitLittle);
        assert!(!walk.reached_pixel_data);
    }

    #[test]
    fn deeply_nested_items_walk_in_linear_time() {
        // 100,000 items, each declaring the rest of the data as its value.
        let count = 100_000usize;
        let mut data = Vec::with_capacity(count * 8);
        for index in 0..count {
            let rest = ((count - index - 1) * 8) as u32;
            data.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0]);
            data.extend_from_slice(&rest.to_le_bytes());
        }
        let started = std::time::Instant::now();
        assert_eq!(find_length_overrun(&data, data.len() as u64, Encoding::ExplicitLittle), None);
        assert!(started.elapsed().as_secs() < 5, "the walk took {:?}", started.elapsed());
    }

    #[test]
    fn deflate_bomb_is_rejected() {
        use std::io::Write;
        let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..=(MAX_INFLATED_BYTES >> 20) {
            encoder.write_all(&zeros).unwrap();
        }
        let deflated = encoder.finish().unwrap();
        assert!(deflated.len() < 1 << 20, "{} deflated bytes", deflated.len());
        assert!(inflate(&deflated).is_err());
        assert_eq!(inflate(&deflated[..1000]).map(|v| v.is_empty()), Ok(false));
    }

    #[test]
    fn binary_value_is_read_in_whole_numbers() {
        // A 2-byte FL value: the parser reads no float, so its 2 bytes start the next
        // header, (0001,0028) with an unknown VR and a length of 0x4F4D000C.
        let mut data = explicit_short(0x0028, 0x0002, b"FL", 2);
        data.extend_from_slice(&[0x01, 0x00, 0x28, 0x00, 0x04, 0x00, b'C', b'S', 0x0C, 0x00, b'M', b'O']);
        data.extend_from_slice(&[0; 12]);
        let overrun = find_length_overrun(&data, data.len() as u64, Encoding::ExplicitLittle).unwrap();
        assert_eq!((overrun.group, overrun.element, overrun.declared), (0x0001, 0x0028, 0x4F4D_000C));
    }

    #[test]
    fn corrupt_deflate_keeps_output_before_error() {
        use std::io::Write;
        let data: Vec<u8> = (0..20_000u32).flat_map(|v| (v % 251).to_le_bytes()).collect();
        let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(&data).unwrap();
        encoder.flush().unwrap();
        let mut deflated = encoder.get_ref().clone();
        // A final block of the invalid type 3 after all of `data`.
        deflated.extend_from_slice(&[0xFF; 16]);

        let inflated = inflate(&deflated).unwrap();
        assert_eq!(inflated.len(), data.len());
        assert!(inflated == data, "the inflated bytes differ");
    }
}
