//! Repair of file meta groups that dicom-object rejects.

use crate::lengths::{LengthOverrun, LONG_VRS, SHORT_VRS};

/// File meta elements kept by [`rebuild_file_meta`]: version, SOP class and instance,
/// transfer syntax, implementation class UID and version name.
const KEPT_ELEMENTS: [u16; 6] = [0x0001, 0x0002, 0x0003, 0x0010, 0x0012, 0x0013];

/// Rebuilds the file meta group of `bytes` (which start at the `DICM` prefix) from its
/// essential elements, dropping the others and recomputing the group length.
///
/// Some writers break the meta group's own rules, for example 18 characters in the
/// 16-character _Source Application Entity Title_, and dicom-object then rejects the
/// whole file although the data set is sound. The meta group is always explicit VR
/// little endian, so it can be walked here without a parser. Returns `None` when the
/// group cannot be walked either.
pub fn rebuild_file_meta(bytes: &[u8]) -> Option<Vec<u8>> {
    let (elements, data_set_offset) = walk_file_meta(bytes)?;
    let mut kept = Vec::new();
    for element in &elements {
        // The implementation version name is a 16-character SH; drop it when longer.
        let valid = element.element != 0x0013 || element.end - element.value_start <= 16;
        if KEPT_ELEMENTS.contains(&element.element) && valid {
            kept.extend_from_slice(&bytes[element.start..element.end]);
        }
    }
    if kept.is_empty() {
        return None;
    }

    let mut rebuilt = Vec::with_capacity(bytes.len());
    rebuilt.extend_from_slice(b"DICM");
    // (0002,0000) File Meta Information Group Length, UL.
    rebuilt.extend_from_slice(&[0x02, 0x00, 0x00, 0x00, b'U', b'L', 0x04, 0x00]);
    rebuilt.extend_from_slice(&(kept.len() as u32).to_le_bytes());
    rebuilt.extend_from_slice(&kept);
    rebuilt.extend_from_slice(&bytes[data_set_offset..]);
    Some(rebuilt)
}

/// One element of the file meta group, as byte offsets into the file.
pub(crate) struct MetaElement {
    pub element: u16,
    /// First byte of the element's header.
    pub start: usize,
    pub value_start: usize,
    /// One past the value's last byte.
    pub end: usize,
}

/// Walks the file meta group of `bytes` (which start at the `DICM` prefix), which is
/// always explicit VR little endian, and returns its elements and the offset of the data
/// set after it. Returns `None` when an element runs past the end of `bytes`.
pub(crate) fn walk_file_meta(bytes: &[u8]) -> Option<(Vec<MetaElement>, usize)> {
    if !bytes.starts_with(b"DICM") {
        return None;
    }
    let mut position = 4;
    let mut elements = Vec::new();
    while position + 8 <= bytes.len() {
        let group = u16::from_le_bytes([bytes[position], bytes[position + 1]]);
        if group != 0x0002 {
            break;
        }
        let element = u16::from_le_bytes([bytes[position + 2], bytes[position + 3]]);
        let vr = &bytes[position + 4..position + 6];
        let (header_len, value_len) = if LONG_VRS.iter().any(|long| long.as_slice() == vr) {
            let length = bytes.get(position + 8..position + 12)?;
            (12, u32::from_le_bytes(length.try_into().ok()?) as usize)
        } else {
            (8, usize::from(u16::from_le_bytes([bytes[position + 6], bytes[position + 7]])))
        };
        let value_start = position.checked_add(header_len)?;
        let end = value_start.checked_add(value_len)?;
        if end > bytes.len() {
            return None;
        }
        elements.push(MetaElement {
            element,
            start: position,
            value_start,
            end,
        });
        position = end;
    }
    Some((elements, position))
}

/// The file meta group as dicom-object 0.10 reads it (see [`read_meta_group`]).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum MetaGroup {
    /// A group that dicom-object reads: the data set's offset and _Transfer Syntax UID_.
    Read { data_set_offset: usize, transfer_syntax: String },
    /// A UID element declares more bytes than remain in the file.
    Overrun(LengthOverrun),
    /// dicom-object rejects the group before it allocates a value.
    Rejected,
    /// The bytes end inside the group.
    Incomplete,
}

/// Meta elements whose values dicom-object 0.10 allocates at their declared length
/// without a limit: the SOP class, SOP instance, transfer syntax and implementation
/// class UIDs. It skips other elements or limits them to 64 bytes.
const UNBOUNDED_ELEMENTS: [u16; 4] = [0x0002, 0x0003, 0x0010, 0x0012];

/// Walks the file meta group of `bytes` (which start at the `DICM` prefix) the way
/// dicom-object 0.10 reads it: the (0002,0000) group length comes first, and elements of
/// any group follow until that many bytes have been read. `total` counts the bytes from
/// the prefix to the end of the file.
///
/// [`walk_file_meta`] instead stops at the first element outside group 0002, which is
/// where [`rebuild_file_meta`] puts the data set. The two differ only for broken groups.
pub(crate) fn read_meta_group(bytes: &[u8], total: u64) -> MetaGroup {
    if !bytes.starts_with(b"DICM") {
        return MetaGroup::Rejected;
    }
    let Some((tag, header_len, length)) = explicit_header(bytes, 4) else {
        return MetaGroup::Incomplete;
    };
    if tag != (0x0002, 0x0000) || length != 4 {
        return MetaGroup::Rejected;
    }
    let Some(value) = bytes.get(4 + header_len..4 + header_len + 4) else {
        return MetaGroup::Incomplete;
    };
    let group_length = u32::from_le_bytes(value.try_into().expect("4 bytes"));

    let mut position = 4 + header_len + 4;
    let mut consumed = 0u32;
    let mut transfer_syntax = None;
    while consumed < group_length {
        let Some((tag, header_len, length)) = explicit_header(bytes, position) else {
            return MetaGroup::Incomplete;
        };
        if length == u32::MAX {
            return MetaGroup::Rejected;
        }
        let value_start = position + header_len;
        let available = total.saturating_sub(value_start as u64);
        if u64::from(length) > available {
            if tag.0 == 0x0002 && UNBOUNDED_ELEMENTS.contains(&tag.1) {
                return MetaGroup::Overrun(LengthOverrun {
                    group: tag.0,
                    element: tag.1,
                    declared: u64::from(length),
                    available,
                });
            }
            return MetaGroup::Rejected;
        }
        let end = value_start + length as usize;
        if tag == (0x0002, 0x0010) {
            let Some(value) = bytes.get(value_start..end) else {
                return MetaGroup::Incomplete;
            };
            let uid = String::from_utf8_lossy(value);
            transfer_syntax = Some(uid.trim_end_matches(['\0', ' ']).to_string());
        }
        position = end;
        consumed = consumed.saturating_add(header_len as u32).saturating_add(length);
    }
    match transfer_syntax {
        Some(transfer_syntax) => MetaGroup::Read {
            data_set_offset: position,
            transfer_syntax,
        },
        None => MetaGroup::Rejected,
    }
}

/// Decodes the explicit VR little endian element header at `position` as dicom-encoding
/// 0.10 does: a VR outside [`SHORT_VRS`], unknown ones included, has a 4-byte length.
/// Returns the tag, the header's length and the value length.
fn explicit_header(bytes: &[u8], position: usize) -> Option<((u16, u16), usize, u32)> {
    let header = bytes.get(position..position + 8)?;
    let tag = (
        u16::from_le_bytes([header[0], header[1]]),
        u16::from_le_bytes([header[2], header[3]]),
    );
    if tag.0 == 0xFFFE {
        return Some((tag, 8, u32::from_le_bytes([header[4], header[5], header[6], header[7]])));
    }
    let vr = &header[4..6];
    if SHORT_VRS.iter().any(|short| short.as_slice() == vr) {
        return Some((tag, 8, u32::from(u16::from_le_bytes([header[6], header[7]]))));
    }
    let length = bytes.get(position + 8..position + 12)?;
    Some((tag, 12, u32::from_le_bytes(length.try_into().ok()?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn short_element(element: u16, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0x02, 0x00];
        bytes.extend_from_slice(&element.to_le_bytes());
        bytes.extend_from_slice(vr);
        bytes.extend_from_slice(&(value.len() as u16).to_le_bytes());
        bytes.extend_from_slice(value);
        bytes
    }

    #[test]
    fn drops_overlong_source_ae_title() {
        let mut input = b"DICM".to_vec();
        input.extend(short_element(0x0000, b"UL", &[0, 0, 0, 0]));
        input.extend(short_element(0x0010, b"UI", b"1.2.840.10008.1.2\0"));
        input.extend(short_element(0x0016, b"AE", b"EIGHTEEN_CHARS_AE_"));
        input.extend_from_slice(&[0x08, 0x00, 0x60, 0x00]); // start of the data set
        let rebuilt = rebuild_file_meta(&input).expect("rebuilt");
        let ts = short_element(0x0010, b"UI", b"1.2.840.10008.1.2\0");
        let mut expected = b"DICM".to_vec();
        expected.extend(short_element(0x0000, b"UL", &(ts.len() as u32).to_le_bytes()));
        expected.extend(ts);
        expected.extend_from_slice(&[0x08, 0x00, 0x60, 0x00]);
        assert_eq!(rebuilt, expected);
    }

    #[test]
    fn rejects_a_group_running_past_the_end() {
        let mut input = b"DICM".to_vec();
        input.extend_from_slice(&[0x02, 0x00, 0x10, 0x00, b'U', b'I', 0xFF, 0x00, b'1']);
        assert_eq!(rebuild_file_meta(&input), None);
    }

    fn meta_with(elements: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = elements.concat();
        let mut input = b"DICM".to_vec();
        input.extend(short_element(0x0000, b"UL", &(body.len() as u32).to_le_bytes()));
        input.extend(body);
        input
    }

    #[test]
    fn meta_group_read_by_group_length() {
        // An element of another group inside the group length belongs to the meta group.
        let mut off_group = short_element(0x0016, b"AE", b"AE");
        off_group[0] = 0x09;
        let ts = short_element(0x0010, b"UI", b"1.2.840.10008.1.2\0");
        let mut input = meta_with(&[off_group, ts]);
        let data_set_offset = input.len();
        input.extend_from_slice(&[0x08, 0x00, 0x60, 0x00]);
        let expected = MetaGroup::Read {
            data_set_offset,
            transfer_syntax: "1.2.840.10008.1.2".to_string(),
        };
        assert_eq!(read_meta_group(&input, input.len() as u64), expected);
    }

    #[test]
    fn meta_uid_longer_than_file_is_overrun() {
        // (0002,0002) with an unknown VR, so a 4-byte length of 3 GB.
        let mut sop_class = vec![0x02, 0x00, 0x02, 0x00, b'X', b'X', 0, 0];
        sop_class.extend_from_slice(&0xC000_0000u32.to_le_bytes());
        let input = meta_with(&[sop_class]);
        match read_meta_group(&input, input.len() as u64) {
            MetaGroup::Overrun(overrun) => assert_eq!((overrun.element, overrun.declared), (0x0002, 0xC000_0000)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn meta_group_without_length_first_is_rejected() {
        let input = [b"DICM".as_slice(), &short_element(0x0010, b"UI", b"1.2.840.10008.1.2\0")].concat();
        assert_eq!(read_meta_group(&input, input.len() as u64), MetaGroup::Rejected);
        assert_eq!(read_meta_group(b"DICM\x02\x00", 1000), MetaGroup::Incomplete);
    }
}
