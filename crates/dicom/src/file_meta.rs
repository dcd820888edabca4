//! Repair of file meta groups that dicom-object rejects.

use crate::lengths::LONG_VRS;

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
}
