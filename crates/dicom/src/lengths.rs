//! A walk over a file's element headers that checks every declared value length against
//! the bytes the file really has, before a parser allocates buffers of that size.
//!
//! dicom-object 0.10 allocates a buffer of the declared length before reading a value, so
//! a corrupt length of 3 GB costs 3 GB of zeroed memory and seconds of system time before
//! the read fails. Walking the headers first turns such a file into a `truncated` error at
//! once.

/// Value representations whose explicit-VR header has a 4-byte length.
pub(crate) const LONG_VRS: [&[u8; 2]; 11] = [
    b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UT", b"UN", b"UC", b"UR",
];

const UNDEFINED_LENGTH: u32 = 0xFFFF_FFFF;

/// Encoding of the data set's element headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    ImplicitLittle,
    ExplicitLittle,
    ExplicitBig,
}

impl Encoding {
    /// Returns the encoding of a transfer syntax's data set, or `None` for deflated data
    /// sets, whose headers cannot be walked without inflating them.
    pub fn of_transfer_syntax(uid: &str) -> Option<Encoding> {
        match uid.trim_end_matches('\0') {
            "1.2.840.10008.1.2" => Some(Encoding::ImplicitLittle),
            "1.2.840.10008.1.2.2" => Some(Encoding::ExplicitBig),
            "1.2.840.10008.1.2.1.99" => None,
            // Every other standard syntax, encapsulated ones included, is explicit VR
            // little endian.
            _ => Some(Encoding::ExplicitLittle),
        }
    }
}

/// A declared length that runs past the end of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LengthOverrun {
    pub group: u16,
    pub element: u16,
    pub declared: u64,
    pub available: u64,
}

/// Walks the element headers in `data_set` and returns the first defined length that
/// exceeds what remains of the file.
///
/// `data_set` contains the bytes after the file meta group, possibly only a prefix of them,
/// and `remaining_in_file` bytes follow its start in the file.
///
/// Sequences and items of undefined length are walked into; values of defined length are
/// skipped. The walk stops quietly where the prefix ends.
pub fn find_length_overrun(data_set: &[u8], remaining_in_file: u64, encoding: Encoding) -> Option<LengthOverrun> {
    let mut position = 0usize;
    // Inside encapsulated pixel data, items hold compressed fragments, not elements.
    let mut in_pixel_fragments = false;
    while position + 8 <= data_set.len() {
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
        let group = read16(position);
        let element = read16(position + 2);
        // Items and delimiters are always encoded as tag + 4-byte length.
        let (header_len, length) = if group == 0xFFFE || encoding == Encoding::ImplicitLittle {
            (8, read32(position + 4))
        } else {
            let vr = &data_set[position + 4..position + 6];
            if LONG_VRS.iter().any(|long| long.as_slice() == vr) {
                if position + 12 > data_set.len() {
                    return None;
                }
                (12, read32(position + 8))
            } else {
                (8, u32::from(read16(position + 6)))
            }
        };
        position += header_len;
        if (group, element) == (0x7FE0, 0x0010) && length == UNDEFINED_LENGTH {
            in_pixel_fragments = true;
            continue;
        }
        if (group, element) == (0xFFFE, 0xE0DD) {
            in_pixel_fragments = false;
        }
        if length == UNDEFINED_LENGTH {
            // Walk into the sequence or item.
            continue;
        }
        // An item of a sequence is walked into too: its elements follow at once.
        if (group, element) == (0xFFFE, 0xE000) && !in_pixel_fragments {
            continue;
        }
        let available = remaining_in_file.saturating_sub(position as u64);
        if u64::from(length) > available {
            return Some(LengthOverrun {
                group,
                element,
                declared: u64::from(length),
                available,
            });
        }
        position += length as usize;
    }
    None
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
}
