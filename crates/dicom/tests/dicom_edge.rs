//! The reader against real files from public DICOM test suites: every CT image in every
//! transfer syntax decodes to its uncompressed reference, and every other file yields a
//! volume or a reason code without panicking.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lungstream_dicom::{parse_object, pixels::decode_stored_values, read_header, ReaderConfig};
use lungstream_schemas::ReasonCode;

use common::data_dir;

/// Decodes every frame of the file at `path` into stored values.
fn stored_values(path: &Path) -> Vec<i32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let object = parse_object(&bytes, path).unwrap_or_else(|e| panic!("{e}"));
    decode_stored_values(&object, path)
        .unwrap_or_else(|e| panic!("{e}"))
        .values
}

fn edge(path: &str) -> PathBuf {
    data_dir().join("dicom-edge").join(path)
}

/// Asserts that `variant` decodes to exactly the stored values of `reference`.
fn assert_identical(reference: &Path, variant: &Path) {
    let expected = stored_values(reference);
    let actual = stored_values(variant);
    assert_eq!(actual.len(), expected.len(), "{}: sample count", variant.display());
    let differing = expected.iter().zip(&actual).filter(|(a, b)| a != b).count();
    assert_eq!(differing, 0, "{}: {differing} samples differ from {}", variant.display(), reference.display());
}

/// Asserts that a lossy `variant` stays close to `reference`: a mean absolute error below
/// `max_fraction` of the reference's standard deviation.
fn assert_close(reference: &Path, variant: &Path, max_fraction: f64) {
    let expected = stored_values(reference);
    let actual = stored_values(variant);
    assert_eq!(actual.len(), expected.len(), "{}: sample count", variant.display());
    let n = expected.len() as f64;
    let mean = expected.iter().map(|v| f64::from(*v)).sum::<f64>() / n;
    let std = (expected.iter().map(|v| (f64::from(*v) - mean).powi(2)).sum::<f64>() / n).sqrt();
    let error = expected.iter().zip(&actual).map(|(a, b)| f64::from((a - b).abs())).sum::<f64>() / n;
    assert!(
        error < max_fraction * std,
        "{}: mean absolute error {error:.2}, {max_fraction} x std {std:.1} allowed",
        variant.display()
    );
}

const CORNERSTONE: &str = "cornerstone-test-images/testImages";

#[test]
fn cornerstone_lossless_syntaxes_match_reference() {
    let reference = edge(&format!("{CORNERSTONE}/CTImage.dcm"));
    for syntax in [
        "LittleEndianImplicitTransferSyntax_1.2.840.10008.1.2",
        "LittleEndianExplicitTransferSyntax_1.2.840.10008.1.2.1",
        "BigEndianExplicitTransferSyntax_1.2.840.10008.1.2.2",
        "DeflatedExplicitVRLittleEndianTransferSyntax_1.2.840.10008.1.2.1.99",
        "RLELosslessTransferSyntax_1.2.840.10008.1.2.5",
        "JPEGProcess14TransferSyntax_1.2.840.10008.1.2.4.57",
        "JPEGProcess14SV1TransferSyntax_1.2.840.10008.1.2.4.70",
        "JPEGLSLosslessTransferSyntax_1.2.840.10008.1.2.4.80",
        "JPEG2000LosslessOnlyTransferSyntax_1.2.840.10008.1.2.4.90",
    ] {
        assert_identical(&reference, &edge(&format!("{CORNERSTONE}/CTImage.dcm_{syntax}.dcm")));
    }
}

#[test]
fn cornerstone_lossy_syntaxes_stay_close() {
    let reference = edge(&format!("{CORNERSTONE}/CTImage.dcm"));
    for syntax in [
        "JPEGLSLossyTransferSyntax_1.2.840.10008.1.2.4.81",
        "JPEG2000TransferSyntax_1.2.840.10008.1.2.4.91",
    ] {
        assert_close(&reference, &edge(&format!("{CORNERSTONE}/CTImage.dcm_{syntax}.dcm")), 0.01);
    }
}

#[test]
fn nema_ct_lossless_syntaxes_match_reference() {
    for image in ["CT1", "CT2"] {
        let reference = edge(&format!("nema-and-dcmqi/WG04/REF/{image}_UNC"));
        for folder in ["RLE", "JPLL", "JLSL", "J2KR"] {
            assert_identical(&reference, &edge(&format!("nema-and-dcmqi/WG04/{folder}/{image}_{folder}")));
        }
        assert_identical(&reference, &edge(&format!("{CORNERSTONE}/{image}_J2KR")));
    }
}

#[test]
fn nema_ct_lossy_syntaxes_stay_close() {
    for image in ["CT1", "CT2"] {
        let reference = edge(&format!("nema-and-dcmqi/WG04/REF/{image}_UNC"));
        // JPEG-LS near-lossless at 6:1, and JPEG 2000 irreversible at 69:1.
        assert_close(&reference, &edge(&format!("nema-and-dcmqi/WG04/JLSN/{image}_JLSN")), 0.01);
        assert_close(&reference, &edge(&format!("nema-and-dcmqi/WG04/J2KI/{image}_J2KI")), 0.03);
    }
}

#[test]
fn dicomparser_ct1_variants_match_nema_reference() {
    let reference = edge("nema-and-dcmqi/WG04/REF/CT1_UNC");
    for variant in [
        "dicomparser/testImages/CT1_UNC.explicit_big_endian.dcm",
        "dicomparser/testImages/CT1_UNC.implicit_little_endian.dcm",
        "dicomparser/testImages/CT1_UNC.explicit_little_endian.dcm",
        "dicomparser/testImages/encapsulated/single-frame/CT1_UNC.explicit_little_endian.dcm",
        "dicomparser/testImages/encapsulated/single-frame/CT1_UNC.fragmented_no_bot_jpeg_ls.80.dcm",
        "dicomparser/testImages/encapsulated/single-frame/CT1_UNC.fragmented_bot_jpeg_ls.80.dcm",
        "dicomparser/testImages/encapsulated/single-frame/CT1_UNC.not_fragmented_no_bot_jpeg_ls.80.dcm",
        "dicomparser/testImages/encapsulated/single-frame/CT1_UNC.not_fragmented_bot_jpeg_ls.80.dcm",
    ] {
        assert_identical(&reference, &edge(variant));
    }
}

#[test]
fn multiframe_ct_variants_decode_every_frame() {
    let dir = "dicomparser/testImages/encapsulated/multi-frame";
    let reference = edge(&format!("{dir}/CT0012.explicit_little_endian.dcm"));
    for lossless in [
        "CT0012.fragmented_no_bot_jpeg_lossless.70.dcm",
        "CT0012.fragmented_no_bot_jpeg_lossless.57.dcm",
        "CT0012.fragmented_no_bot_jpeg_ls.80.dcm",
        "CT0012.not_fragmented_no_bot_jpeg_ls.80.dcm",
        "CT0012.not_fragmented_bot_jpeg_ls.80.dcm",
        "CT0012.not_fragmented_no_bot_rle.dcm",
        "CT0012.not_fragmented_bot_rle.dcm",
    ] {
        assert_identical(&reference, &edge(&format!("{dir}/{lossless}")));
    }
    assert_close(&reference, &edge(&format!("{dir}/CT0012.fragmented_no_bot_jpeg_ls.81.dcm")), 0.01);
    // 12-bit JPEG Extended is beyond dicom-rs's JPEG codec: a reason code, before decoding.
    let extended = edge(&format!("{dir}/CT0012.fragmented_no_bot_jpeg_baseline.51.dcm"));
    let error = read_header(&extended, &ReaderConfig::default()).unwrap_err();
    assert_eq!(error.reason(), ReasonCode::UnsupportedTransferSyntax);
}

/// Every file under dicom-edge: a usable header or a reason code, and for usable headers a
/// successful decode; nothing panics. The reason counts are checked against what the
/// suite holds.
#[test]
fn every_edge_file_reads_or_has_a_reason() {
    let config = ReaderConfig {
        min_slices: 1,
        ..ReaderConfig::default()
    };
    let mut reasons: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut decoded = 0;
    for entry in walkdir::WalkDir::new(data_dir().join("dicom-edge")).sort_by_file_name() {
        let entry = entry.unwrap();
        if !entry.file_type().is_file() {
            continue;
        }
        let path = entry.path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        match read_header(path, &config) {
            Ok(header) => {
                let bytes = std::fs::read(path).unwrap();
                let object = parse_object(&bytes, path).expect("a file whose header reads parses");
                let frames = decode_stored_values(&object, path)
                    .unwrap_or_else(|e| panic!("{name}: header accepted but decoding failed: {e}"));
                assert_eq!(frames.values.len(), (header.rows * header.columns) as usize, "{name}");
                decoded += 1;
            }
            Err(error) => reasons.entry(error.reason().to_string()).or_default().push(name),
        }
    }
    let count = |reason: ReasonCode| reasons.get(reason.as_str()).map_or(0, Vec::len);
    // Every CT slice of the suites decodes: the cornerstone and NEMA variants, the
    // dicomparser CT1 copies, pydicom's CT_small and the dcmqi and DICOMDIR CT slices.
    assert!(decoded >= 40, "only {decoded} CT slices decoded; reasons: {reasons:#?}");
    assert!(count(ReasonCode::NotCt) >= 100, "{reasons:#?}");
    assert!(count(ReasonCode::InvalidDicom) >= 20, "{reasons:#?}");
    assert_eq!(count(ReasonCode::Localizer), 2, "{reasons:#?}");
    // JPEG processes 6/8 and 10/12 (retired) and 12-bit JPEG Extended, three files of
    // the last.
    assert_eq!(count(ReasonCode::UnsupportedTransferSyntax), 5, "{reasons:#?}");
    assert!(count(ReasonCode::Truncated) >= 1, "{reasons:#?}");
    assert!(count(ReasonCode::UnsupportedMultiframe) >= 10, "{reasons:#?}");
    for retired in ["1.2.840.10008.1.2.4.53", "1.2.840.10008.1.2.4.55", "1.2.840.10008.1.2.4.51"] {
        assert!(
            reasons["unsupported_transfer_syntax"].iter().any(|n| n.contains(retired)),
            "{retired} should be unsupported: {reasons:#?}"
        );
    }
    assert!(reasons["truncated"].iter().any(|n| n == "rtplan_truncated.dcm"), "{reasons:#?}");
}

/// Copies `source` with the last two thirds of its pixel data zeroed, as a broken
/// transfer might leave it.
fn with_zeroed_pixel_data(source: &Path, target: &Path) {
    let mut bytes = std::fs::read(source).unwrap();
    let tag = [0xE0, 0x7F, 0x10, 0x00];
    let start = bytes.windows(4).rposition(|w| w == tag).expect("a Pixel Data element");
    let length = bytes.len() - start;
    let zero_from = start + length / 3;
    let zero_to = bytes.len() - 20;
    bytes[zero_from..zero_to].fill(0);
    std::fs::write(target, bytes).unwrap();
}

#[test]
fn corrupt_rle_is_decode_failed() {
    let dir = tempfile::tempdir().unwrap();
    let corrupt = dir.path().join("corrupt.dcm");
    with_zeroed_pixel_data(
        &edge(&format!("{CORNERSTONE}/CTImage.dcm_RLELosslessTransferSyntax_1.2.840.10008.1.2.5.dcm")),
        &corrupt,
    );
    let bytes = std::fs::read(&corrupt).unwrap();
    let object = parse_object(&bytes, &corrupt).unwrap();
    let error = decode_stored_values(&object, &corrupt).unwrap_err();
    assert_eq!(error.reason(), ReasonCode::DecodeFailed);
    assert!(error.to_string().contains("corrupt.dcm"), "{error}");
}

#[test]
fn failed_stack_falls_back_to_the_next() {
    // The preferred stack of the suite (16x16 test images) is not in Hounsfield units;
    // the reader moves on to the next candidate that loads.
    let config = ReaderConfig {
        min_slices: 1,
        ..ReaderConfig::default()
    };
    let (volume, inventory) = lungstream_dicom::read_volume(&[data_dir().join("dicom-edge")], &config).unwrap();
    let first = &inventory.candidates[0];
    assert_eq!(first.problem.as_ref().map(|p| p.reason()), Some(ReasonCode::NotHounsfield));
    let selected = inventory.selected().unwrap();
    assert_eq!(volume.meta.series_uid, selected.series_uid);
    assert_eq!((volume.dims.rows, volume.dims.columns), (512, 512));
}

#[test]
fn reason_messages_name_the_file() {
    let path = edge(&format!("{CORNERSTONE}/CTImage.dcm_JPEGProcess6_8TransferSyntax_1.2.840.10008.1.2.4.53.dcm"));
    let error = read_header(&path, &ReaderConfig::default()).unwrap_err();
    assert_eq!(error.reason(), ReasonCode::UnsupportedTransferSyntax);
    let message = error.to_string();
    assert!(message.contains("1.2.840.10008.1.2.4.53"), "{message}");
    assert!(message.contains("CTImage.dcm_JPEGProcess6_8"), "{message}");
}
