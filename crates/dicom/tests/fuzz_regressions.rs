//! Inputs that made the reader allocate gigabytes, found by the `dicom_volume` fuzz target
//! (docs/fuzzing.md), rebuilt here as small synthetic files. Each must be rejected by the
//! length check before dicom-object allocates the declared length, so every test checks
//! that check's message as well as the reason code.

use std::io::Write;
use std::path::Path;

use lungstream_dicom::{read_header, read_header_bytes, read_slice, read_volume, ReadError, ReaderConfig};
use lungstream_schemas::ReasonCode;

const EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1";
const DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1.99";
const CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2";

/// Returns a UID value padded with NUL to an even length.
fn uid_value(uid: &str) -> Vec<u8> {
    let mut value = uid.as_bytes().to_vec();
    if value.len() % 2 == 1 {
        value.push(0);
    }
    value
}

/// Returns an explicit VR little endian element with a 2-byte length.
fn short_element(group: u16, element: u16, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&group.to_le_bytes());
    bytes.extend_from_slice(&element.to_le_bytes());
    bytes.extend_from_slice(vr);
    bytes.extend_from_slice(&(value.len() as u16).to_le_bytes());
    bytes.extend_from_slice(value);
    bytes
}

/// Returns an explicit VR little endian header with 2 reserved bytes and a 4-byte length.
fn long_header(group: u16, element: u16, vr: &[u8; 2], length: u32) -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&group.to_le_bytes());
    bytes.extend_from_slice(&element.to_le_bytes());
    bytes.extend_from_slice(vr);
    bytes.extend_from_slice(&[0, 0]);
    bytes.extend_from_slice(&length.to_le_bytes());
    bytes
}

/// Returns a DICOM Part 10 file: preamble, a CT file meta group and `data_set` as given.
fn part10(transfer_syntax: &str, data_set: &[u8]) -> Vec<u8> {
    part10_with_meta(transfer_syntax, &[], data_set)
}

/// As [`part10`], with `extra_meta` inserted in the file meta group before the
/// _Transfer Syntax UID_ and counted in the group length.
fn part10_with_meta(transfer_syntax: &str, extra_meta: &[u8], data_set: &[u8]) -> Vec<u8> {
    let mut meta = Vec::new();
    meta.extend_from_slice(&long_header(0x0002, 0x0001, b"OB", 2));
    meta.extend_from_slice(&[0, 1]);
    meta.extend_from_slice(&short_element(0x0002, 0x0002, b"UI", &uid_value(CT_IMAGE_STORAGE)));
    meta.extend_from_slice(&short_element(0x0002, 0x0003, b"UI", &uid_value("1.2.826.0.1.3680043.2.1")));
    meta.extend_from_slice(extra_meta);
    meta.extend_from_slice(&short_element(0x0002, 0x0010, b"UI", &uid_value(transfer_syntax)));
    let mut file = vec![0u8; 128];
    file.extend_from_slice(b"DICM");
    file.extend_from_slice(&short_element(0x0002, 0x0000, b"UL", &(meta.len() as u32).to_le_bytes()));
    file.extend_from_slice(&meta);
    file.extend_from_slice(data_set);
    file
}

/// Returns the start of a CT data set, before the element under test.
fn ct_elements() -> Vec<u8> {
    short_element(0x0008, 0x0060, b"CS", b"CT")
}

/// Writes `file` and checks every reader entry point: each must fail with `expected`,
/// and the file-level ones with the length check's message.
fn assert_rejected_by_length_check(file: &[u8], expected: ReasonCode) {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("slice.dcm");
    std::fs::write(&path, file).unwrap();
    let config = ReaderConfig {
        min_slices: 1,
        ..ReaderConfig::default()
    };

    let from_path = read_header(&path, &config).unwrap_err();
    assert_length_check(&from_path, expected);
    let from_bytes = read_header_bytes(file, Path::new("slice.dcm"), &config).unwrap_err();
    assert_length_check(&from_bytes, expected);
    let slice = read_slice(&path, &config).unwrap_err();
    assert_length_check(&slice, expected);
    let volume = read_volume(&[folder.path().to_path_buf()], &config).unwrap_err();
    assert_eq!(volume.reason(), ReasonCode::NoImages, "{volume}");
}

fn assert_length_check(error: &ReadError, expected: ReasonCode) {
    assert_eq!(error.reason(), expected, "{error}");
    let message = error.to_string();
    let from_length_check = message.contains("remain in the file") || message.contains("inflated data set");
    assert!(from_length_check, "not rejected by the length check: {message}");
}

#[test]
fn unknown_vr_with_long_length() {
    // dicom-parser reads an unknown VR ("\0\0") as UN with a 4-byte length.
    let mut data_set = ct_elements();
    data_set.extend_from_slice(&long_header(0x0009, 0x1010, b"\0\0", 0xF000_0000));
    data_set.extend_from_slice(&[0; 64]);
    assert_rejected_by_length_check(&part10(EXPLICIT_VR_LITTLE_ENDIAN, &data_set), ReasonCode::Truncated);
}

#[test]
fn overlong_element_in_defined_length_sequence() {
    // A defined-length sequence whose item contains an OB element declaring 4 GB.
    let mut item = long_header(0x0009, 0x1010, b"OB", 0xFFFF_FFF0);
    item.extend_from_slice(&[0; 16]);
    let mut sequence = vec![0xFE, 0xFF, 0x00, 0xE0];
    sequence.extend_from_slice(&(item.len() as u32).to_le_bytes());
    sequence.extend_from_slice(&item);
    let mut data_set = ct_elements();
    data_set.extend_from_slice(&long_header(0x0008, 0x1140, b"SQ", sequence.len() as u32));
    data_set.extend_from_slice(&sequence);
    assert_rejected_by_length_check(&part10(EXPLICIT_VR_LITTLE_ENDIAN, &data_set), ReasonCode::Truncated);
}

#[test]
fn binary_value_with_partial_number() {
    // dicom-parser reads a 2-byte FL value as no float at all, so its 2 bytes begin the
    // next element header: (0001,0028) with an unknown VR and a length of 1.3 GB.
    let mut data_set = ct_elements();
    data_set.extend_from_slice(&short_element(0x0028, 0x0002, b"FL", &[0x01, 0x00]));
    data_set.extend_from_slice(&[0x28, 0x00, 0x04, 0x00, b'C', b'S', 0x0C, 0x00, b'M', b'O']);
    data_set.extend_from_slice(&[0; 64]);
    assert_rejected_by_length_check(&part10(EXPLICIT_VR_LITTLE_ENDIAN, &data_set), ReasonCode::Truncated);
}

#[test]
fn overlong_element_past_header_prefix() {
    // read_header checks the first 64 KiB; here a 70,000-byte value pushes the bad
    // element past them, and the parser reads up to Pixel Data all the same.
    let mut data_set = ct_elements();
    data_set.extend_from_slice(&long_header(0x0009, 0x1010, b"OB", 70_000));
    data_set.extend_from_slice(&vec![0; 70_000]);
    data_set.extend_from_slice(&long_header(0x0009, 0x1011, b"OB", 0xF000_0000));
    data_set.extend_from_slice(&[0; 64]);
    assert_rejected_by_length_check(&part10(EXPLICIT_VR_LITTLE_ENDIAN, &data_set), ReasonCode::Truncated);
}

#[test]
fn off_group_element_in_file_meta_group() {
    // dicom-object reads the meta group by its group length, so an element of another
    // group there does not end it, and the transfer syntax after it still counts.
    let off_group = short_element(0xF902, 0x0002, b"UI", &uid_value("1.2.3"));
    let mut data_set = ct_elements();
    data_set.extend_from_slice(&long_header(0x0009, 0x1010, b"OB", 0xF000_0000));
    data_set.extend_from_slice(&[0; 64]);
    let file = part10_with_meta(EXPLICIT_VR_LITTLE_ENDIAN, &off_group, &data_set);
    assert_rejected_by_length_check(&file, ReasonCode::Truncated);
}

#[test]
fn overlong_uid_in_file_meta_group() {
    // (0002,0003) with an unknown VR, so a 4-byte length of 3 GB that dicom-object
    // would allocate before reading.
    let mut instance_uid = long_header(0x0002, 0x0003, b"XX", 0xC000_0000);
    instance_uid.extend_from_slice(&[b'1'; 32]);
    let file = part10_with_meta(EXPLICIT_VR_LITTLE_ENDIAN, &instance_uid, &ct_elements());
    assert_rejected_by_length_check(&file, ReasonCode::Truncated);
}

#[test]
fn overlong_element_in_deflated_data_set() {
    let mut data_set = ct_elements();
    data_set.extend_from_slice(&long_header(0x0009, 0x1010, b"OB", 0xF000_0000));
    data_set.extend_from_slice(&[0; 64]);
    let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(&data_set).unwrap();
    let deflated = encoder.finish().unwrap();
    assert_rejected_by_length_check(&part10(DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, &deflated), ReasonCode::Truncated);
}

#[test]
fn overlong_element_before_corrupt_deflate_block() {
    // A deflate stream that inflates into an overlong element header, then breaks. The
    // parser reads the header before the break, so the check must see it too.
    let mut data_set = ct_elements();
    data_set.extend_from_slice(&long_header(0x0009, 0x1010, b"OB", 1000));
    data_set.extend_from_slice(&[7; 1000]);
    data_set.extend_from_slice(&long_header(0x0040, 0x0555, b"SQ", u32::MAX));
    data_set.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
    data_set.extend_from_slice(&long_header(0x0009, 0x1011, b"OB", 0xF000_0000));
    let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(&data_set).unwrap();
    encoder.flush().unwrap();
    let mut deflated = encoder.get_ref().clone();
    // A final block of the invalid type 3.
    deflated.extend_from_slice(&[0xFF; 16]);
    assert_rejected_by_length_check(&part10(DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, &deflated), ReasonCode::Truncated);
}

#[test]
fn deflated_data_set_too_large_when_inflated() {
    // About 300 KB that inflate to 300 MiB of one long private value.
    let length = 300u32 << 20;
    let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(&ct_elements()).unwrap();
    encoder.write_all(&long_header(0x0009, 0x1010, b"OB", length)).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..(length >> 20) {
        encoder.write_all(&zeros).unwrap();
    }
    let deflated = encoder.finish().unwrap();
    assert_rejected_by_length_check(&part10(DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, &deflated), ReasonCode::TooLarge);
}
