//! The reader against synthetic series with known content: each phantom option yields the
//! right volume or the right reason code.

use std::path::{Path, PathBuf};

use lungstream_dicom::pixels::PADDING_HU_THRESHOLD;
use lungstream_dicom::{patient_key, read_volume, CtVolume, Inventory, ReadError, ReaderConfig};
use lungstream_phantom::{
    render, write_series, GroundTruth, InstanceOrder, Label, Orientation, PaddingConvention, PhantomSpec,
    Tissue, TransferSyntax,
};
use lungstream_schemas::ReasonCode;

/// Builds a small healthy chest: 128×128 at 2.8 mm over the standard 358.4 mm field of
/// view, 24 slices 10 mm apart covering the lungs.
fn small(seed: u64) -> PhantomSpec {
    PhantomSpec {
        slices: 24,
        slice_spacing_mm: 10.0,
        ..PhantomSpec::preset(Label::Healthy, seed).with_matrix(128, 128, 2.8)
    }
}

/// Builds the same chest without noise, so that volumes from different encodings compare exactly.
fn noiseless(seed: u64) -> PhantomSpec {
    PhantomSpec {
        noise_sd_hu: 0.0,
        ..small(seed)
    }
}

fn write(spec: &PhantomSpec) -> (tempfile::TempDir, GroundTruth) {
    let dir = tempfile::tempdir().unwrap();
    let truth = write_series(spec, dir.path()).unwrap();
    (dir, truth)
}

fn read(dir: &Path) -> Result<CtVolume, ReadError> {
    read_volume(&[dir.to_path_buf()], &ReaderConfig::default()).map(|(volume, _)| volume)
}

fn read_spec(spec: &PhantomSpec) -> Result<CtVolume, ReadError> {
    let (dir, _) = write(spec);
    read(dir.path())
}

fn reason(result: Result<CtVolume, ReadError>) -> ReasonCode {
    match result {
        Ok(volume) => panic!("expected an error, read {:?}", volume.dims),
        Err(error) => error.reason(),
    }
}

/// Counts voxels in the lung range (−950…−750 HU) in each half of the columns: the
/// patient's right half comes first in the canonical frame.
fn lung_halves(volume: &CtVolume) -> (usize, usize) {
    let (mut right, mut left) = (0, 0);
    let columns = volume.dims.columns;
    for (i, value) in volume.hu.iter().enumerate() {
        if (-950..=-750).contains(value) {
            if i % columns < columns / 2 {
                right += 1;
            } else {
                left += 1;
            }
        }
    }
    (right, left)
}

/// Asserts that the volume read from `spec`'s files equals the in-memory rendering. HU
/// agree within one unit, because stored values are rounded. Padding is exactly the area
/// outside the circle, plus any sharp-kernel undershoot at the skin at -1500 HU or below.
fn assert_matches_render(name: &str, spec: &PhantomSpec) {
    let (dir, truth) = write(spec);
    let volume = read(dir.path()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let rendered = render(spec).unwrap();
    let slice_len = volume.dims.slice_len();

    assert_eq!(volume.dims.slices, rendered.slices.len(), "{name}");
    assert_eq!(volume.meta.series_uid, truth.series_uids[0], "{name}");
    for (k, slice) in rendered.slices.iter().enumerate() {
        assert!((volume.slice_positions_mm[k] - slice.z_mm()).abs() < 1e-6, "{name}: slice {k}");
        for (i, (hu, tissue)) in slice.hu.iter().zip(&slice.tissue).enumerate() {
            let read = volume.slice(k)[i];
            assert!((f32::from(read) - hu).abs() <= 1.0, "{name}: slice {k} pixel {i}: {read} vs {hu}");
            let padding = volume.padding.get(k * slice_len + i);
            let expected = *tissue == Tissue::Outside || f64::from(*hu) <= PADDING_HU_THRESHOLD;
            assert_eq!(padding, expected, "{name}: slice {k} pixel {i}, {hu} HU, {tissue:?}");
        }
    }
}

#[test]
fn supine_volume_matches_rendered_hu() {
    let spec = small(1);
    let (dir, _) = write(&spec);
    let volume = read(dir.path()).unwrap();
    assert_eq!((volume.dims.slices, volume.dims.rows, volume.dims.columns), (24, 128, 128));
    assert_eq!(volume.spacing_mm, [10.0, 2.8, 2.8]);
    assert_matches_render("supine", &spec);
}

#[test]
fn anatomy_options_load_as_rendered() {
    let cases = [
        ("covid", PhantomSpec { label: Label::Covid, ..small(19) }),
        ("other disease", PhantomSpec { label: Label::Other, ..small(19) }),
        ("sharp kernel", PhantomSpec { kernel: "LUNG".to_string(), ..small(19) }),
        ("soft kernel", PhantomSpec { kernel: "SOFT".to_string(), ..small(19) }),
        ("touching lungs", PhantomSpec { lungs_touching: true, ..small(19) }),
        ("air pocket outside the body", PhantomSpec { external_air_pocket: true, ..small(19) }),
        ("small body", PhantomSpec { body_scale: 0.6, ..small(19) }),
    ];
    for (name, spec) in cases {
        assert_matches_render(name, &spec);
    }
}

#[test]
fn orientations_put_right_lung_left() {
    for orientation in [
        Orientation::Supine,
        Orientation::Prone,
        Orientation::FlippedRows,
        Orientation::FlippedColumns,
        Orientation::Transposed,
    ] {
        let volume = read_spec(&PhantomSpec {
            orientation,
            ..noiseless(2)
        })
        .unwrap();
        let (right, left) = lung_halves(&volume);
        assert!(right > left + left / 20, "{orientation:?}: right {right}, left {left}");
        assert_eq!(volume.directions[0], [0.0, 1.0, 0.0], "{orientation:?}");
        assert_eq!(volume.directions[1], [1.0, 0.0, 0.0], "{orientation:?}");
    }
}

#[test]
fn flips_and_transpose_give_the_supine_volume() {
    let supine = read_spec(&noiseless(3)).unwrap();
    for orientation in [Orientation::FlippedRows, Orientation::FlippedColumns, Orientation::Transposed] {
        let volume = read_spec(&PhantomSpec {
            orientation,
            ..noiseless(3)
        })
        .unwrap();
        assert_eq!(volume.dims, supine.dims, "{orientation:?}");
        let differing = volume.hu.iter().zip(&supine.hu).filter(|(a, b)| a != b).count();
        assert_eq!(differing, 0, "{orientation:?}: {differing} voxels differ");
        for axis in 0..3 {
            assert!((volume.origin_mm[axis] - supine.origin_mm[axis]).abs() < 1e-6, "{orientation:?}");
        }
    }
}

#[test]
fn prone_lungs_match_supine_lungs() {
    // The prone table lies on the anterior side, so only the lungs are compared.
    let supine = read_spec(&noiseless(4)).unwrap();
    let prone = read_spec(&PhantomSpec {
        orientation: Orientation::Prone,
        ..noiseless(4)
    })
    .unwrap();
    let lungs = |v: &CtVolume| v.hu.iter().map(|h| (-950..=-750).contains(h)).collect::<Vec<_>>();
    let (a, b) = (lungs(&supine), lungs(&prone));
    let differing = a.iter().zip(&b).filter(|(x, y)| x != y).count();
    assert_eq!(differing, 0, "{differing} lung voxels differ between supine and prone");
    assert_eq!(prone.meta.patient_position.as_deref(), Some("HFP"));
}

#[test]
fn instance_order_does_not_change_the_volume() {
    let ascending = read_spec(&noiseless(5)).unwrap();
    for order in [InstanceOrder::Descending, InstanceOrder::Shuffled] {
        let volume = read_spec(&PhantomSpec {
            instance_order: order,
            ..noiseless(5)
        })
        .unwrap();
        assert_eq!(volume.hu, ascending.hu, "{order:?}");
        assert_eq!(volume.slice_positions_mm, ascending.slice_positions_mm, "{order:?}");
    }
}

#[test]
fn per_slice_rescale_gives_the_same_hu() {
    let base = read_spec(&small(6)).unwrap();
    let volume = read_spec(&PhantomSpec {
        per_slice_rescale: true,
        ..small(6)
    })
    .unwrap();
    let rescales: std::collections::BTreeSet<String> = volume
        .slices
        .iter()
        .map(|s| format!("{}/{}", s.rescale_slope, s.rescale_intercept))
        .collect();
    assert!(rescales.len() > 1, "the slices should differ in rescale: {rescales:?}");
    let max_difference = volume.hu.iter().zip(&base.hu).map(|(a, b)| (a - b).abs()).max().unwrap();
    // A slope of 0.5 or 2 rounds stored values differently: at most one HU apart.
    assert!(max_difference <= 1, "HU differ by up to {max_difference}");
}

#[test]
fn transfer_syntaxes_give_the_same_volume() {
    let explicit = read_spec(&small(7)).unwrap();
    for transfer_syntax in [TransferSyntax::ImplicitVrLittleEndian, TransferSyntax::ExplicitVrBigEndian] {
        let volume = read_spec(&PhantomSpec {
            transfer_syntax,
            ..small(7)
        })
        .unwrap();
        assert_eq!(volume.hu, explicit.hu, "{transfer_syntax:?}");
        assert_eq!(volume.padding, explicit.padding, "{transfer_syntax:?}");
        assert_eq!(volume.meta.transfer_syntaxes, vec![transfer_syntax.uid().to_string()]);
    }
}

#[test]
fn padding_conventions_mark_the_same_voxels() {
    let rendered = render(&small(8)).unwrap();
    let outside: usize = rendered
        .slices
        .iter()
        .map(|s| s.tissue.iter().filter(|t| **t == Tissue::Outside).count())
        .sum();
    assert!(outside > 0);
    // Each case: name, spec, and how many voxels beyond the truth may be marked. Air
    // that the 12-bit range clips to stored 0 equals the fill there, and right at the
    // circle's edge such pixels are taken for fill: up to 0.2% more is allowed.
    let cases = [
        ("attribute", small(8), 0),
        ("no attribute, -2000 HU", PhantomSpec { padding: PaddingConvention::None, ..small(8) }, 0),
        (
            "US value for signed pixels",
            PhantomSpec { padding: PaddingConvention::UnsignedForSigned, ..small(8) },
            0,
        ),
        // Unsigned 12-bit pixels cannot hold -2000: the fill becomes stored 0, that is
        // -1024 HU, an air-like value found only by the reconstruction-circle rule.
        (
            "12-bit unsigned fill at -1024 HU, no attribute",
            PhantomSpec { padding: PaddingConvention::None, signed: false, bits_stored: 12, ..small(8) },
            outside / 500,
        ),
        ("12-bit signed with attribute", PhantomSpec { signed: true, bits_stored: 12, ..small(8) }, 0),
    ];
    for (name, spec, tolerance) in cases {
        let volume = read_spec(&spec).unwrap_or_else(|e| panic!("{name}: {e}"));
        let marked = volume.padding.count_ones();
        assert!(marked >= outside, "{name}: {marked} marked, {outside} outside the circle");
        assert!(marked <= outside + tolerance, "{name}: {marked} marked, {outside} outside the circle");
    }
}

#[test]
fn missing_slices_are_rejected_with_positions() {
    let spec = PhantomSpec {
        missing_slices: vec![10, 11],
        ..small(9)
    };
    let error = read_spec(&spec).unwrap_err();
    assert_eq!(error.reason(), ReasonCode::MissingSlices);
    let ReadError::MissingSlices { gaps, median_spacing_mm, .. } = &error else {
        panic!("{error}");
    };
    assert_eq!(*median_spacing_mm, 10.0);
    assert_eq!(gaps.len(), 1);
    assert!((gaps[0].above_mm - gaps[0].below_mm - 30.0).abs() < 1e-6, "{gaps:?}");
    assert!(error.to_string().contains("gap"), "{error}");
}

#[test]
fn localizer_in_the_series_is_skipped() {
    let (dir, truth) = write(&PhantomSpec {
        localizer: true,
        ..small(10)
    });
    let (volume, inventory) = read_volume(&[dir.path().to_path_buf()], &ReaderConfig::default()).unwrap();
    assert_eq!(volume.dims.slices, 24);
    assert_eq!(volume.meta.series_uid, truth.series_uids[0]);
    let localizers: Vec<_> = inventory.skipped.iter().filter(|s| s.reason == ReasonCode::Localizer).collect();
    assert_eq!(localizers.len(), 1, "{:?}", inventory.skipped);
}

#[test]
fn second_kernel_listed_finer_chosen() {
    let (dir, truth) = write(&PhantomSpec {
        second_series_kernel: Some("LUNG".to_string()),
        ..small(11)
    });
    let inventory = Inventory::scan(&[dir.path().to_path_buf()], &ReaderConfig::default());
    assert_eq!(inventory.candidates.len(), 2);
    let selected = inventory.selected().unwrap();
    assert_eq!(selected.series_uid, truth.series_uids[0]);
    assert_eq!(selected.median_spacing_mm, Some(10.0));
    let other = &inventory.candidates[1];
    assert_eq!(other.series_uid, truth.series_uids[1]);
    assert_eq!(other.kernel.as_deref(), Some("LUNG"));
    assert!(other.problem.is_none());
}

#[test]
fn wrong_intercept_is_not_hounsfield() {
    let spec = PhantomSpec {
        declared_intercept: Some(0.0),
        ..small(12)
    };
    assert_eq!(reason(read_spec(&spec)), ReasonCode::NotHounsfield);
}

#[test]
fn other_modality_is_not_ct() {
    let (dir, _) = write(&PhantomSpec {
        modality: "MR".to_string(),
        ..small(13)
    });
    let inventory = Inventory::scan(&[dir.path().to_path_buf()], &ReaderConfig::default());
    assert_eq!(inventory.skipped.len(), 24 + 1, "24 images and ground_truth.json");
    assert_eq!(inventory.skipped.iter().filter(|s| s.reason == ReasonCode::NotCt).count(), 24);
    assert_eq!(reason(read(dir.path())), ReasonCode::NoImages);
}

#[test]
fn slice_count_limits() {
    let one = PhantomSpec {
        slices: 1,
        ..small(14)
    };
    let (dir, _) = write(&one);
    assert_eq!(reason(read(dir.path())), ReasonCode::TooFewSlices);
    let lenient = ReaderConfig {
        min_slices: 1,
        ..ReaderConfig::default()
    };
    let (volume, _) = read_volume(&[dir.path().to_path_buf()], &lenient).unwrap();
    assert_eq!(volume.dims.slices, 1);

    // The generator's maximum, 700 slices, on a small matrix.
    let many = PhantomSpec {
        slices: 700,
        slice_spacing_mm: 0.5,
        ..PhantomSpec::preset(Label::Healthy, 15).with_matrix(32, 32, 11.2)
    };
    let (dir, _) = write(&many);
    assert_eq!(read(dir.path()).unwrap().dims.slices, 700);
    let strict = ReaderConfig {
        max_slices: 600,
        ..ReaderConfig::default()
    };
    let error = read_volume(&[dir.path().to_path_buf()], &strict).unwrap_err();
    assert_eq!(error.reason(), ReasonCode::TooLarge);
    assert!(error.to_string().contains("700"), "{error}");
}

#[test]
fn slice_spacing_limit() {
    let spec = PhantomSpec {
        slices: 4,
        slice_spacing_mm: 25.0,
        ..small(21)
    };
    let error = read_spec(&spec).unwrap_err();
    assert_eq!(error.reason(), ReasonCode::TooLarge);
    assert!(error.to_string().contains("slice spacing"), "{error}");
}

#[test]
fn matrix_limit() {
    let (dir, _) = write(&small(16));
    let config = ReaderConfig {
        max_matrix: 100,
        ..ReaderConfig::default()
    };
    let inventory = Inventory::scan(&[dir.path().to_path_buf()], &config);
    assert!(inventory.candidates.is_empty());
    assert_eq!(inventory.skipped.iter().filter(|s| s.reason == ReasonCode::TooLarge).count(), 24);
}

#[test]
fn truncated_slice_is_named_and_leaves_a_gap() {
    let (dir, _) = write(&small(17));
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .collect();
    files.sort();
    // Cut a slice in the middle of the stack (position order is not file order).
    let inventory = Inventory::scan(&[dir.path().to_path_buf()], &ReaderConfig::default());
    let middle = inventory.selected().unwrap().slices[12].path.clone();
    let bytes = std::fs::read(&middle).unwrap();
    std::fs::write(&middle, &bytes[..bytes.len() / 2]).unwrap();

    let inventory = Inventory::scan(&[dir.path().to_path_buf()], &ReaderConfig::default());
    let truncated: Vec<_> = inventory.skipped.iter().filter(|s| s.reason == ReasonCode::Truncated).collect();
    assert_eq!(truncated.len(), 1);
    assert_eq!(truncated[0].path, middle);
    assert!(truncated[0].message.contains("declares"), "{}", truncated[0].message);
    assert_eq!(reason(read(dir.path())), ReasonCode::MissingSlices);
    assert_eq!(files.len(), 24);
}

#[test]
fn repeated_image_is_listed_once() {
    let (dir, _) = write(&small(20));
    let original = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .min()
        .unwrap();
    // "zz" sorts after every hex file name, so the copy is found second.
    let copy = dir.path().join("zz-copy.dcm");
    std::fs::copy(&original, &copy).unwrap();
    let (volume, inventory) = read_volume(&[dir.path().to_path_buf()], &ReaderConfig::default()).unwrap();
    assert_eq!(volume.dims.slices, 24);
    assert_eq!(inventory.duplicates.len(), 1);
    assert_eq!(inventory.duplicates[0].path, copy);
    assert_eq!(inventory.duplicates[0].original, original);
}

#[test]
fn missing_folder_is_unreadable() {
    let dir = tempfile::tempdir().unwrap();
    let inventory = Inventory::scan(&[dir.path().join("missing")], &ReaderConfig::default());
    assert_eq!(inventory.skipped.len(), 1);
    assert_eq!(inventory.skipped[0].reason, ReasonCode::Unreadable);
    assert!(inventory.skipped[0].message.contains("missing"), "{}", inventory.skipped[0].message);
}

#[test]
fn patient_key_replaces_the_patient_id() {
    let spec = PhantomSpec {
        patient_name: "Doe^Jane".to_string(),
        patient_id: "PID-4711".to_string(),
        ..small(18)
    };
    let (dir, _) = write(&spec);
    let config = ReaderConfig::with_secret(b"site-secret".to_vec());
    let (volume, inventory) = read_volume(&[dir.path().to_path_buf()], &config).unwrap();
    assert_eq!(volume.meta.patient_key.as_deref(), Some(patient_key(b"site-secret", "PID-4711").as_str()));
    let dump = format!("{:?} {:?} {:?}", volume.meta, volume.slices, inventory);
    assert!(!dump.contains("PID-4711"));
    assert!(!dump.contains("Doe"));
}
