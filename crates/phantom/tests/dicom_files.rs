//! Written DICOM files, read back with dicom-object.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{
    hu_values, is_localizer, number, numbers, read_dicom_files, small, stored_values, text,
};
use dicom_dictionary_std::{tags, uids};
use dicom_object::DefaultDicomObject;
use lungstream_phantom::{
    render, write_series, GroundTruth, InstanceOrder, Label, PaddingConvention, PhantomError,
    PhantomSpec, TransferSyntax, GROUND_TRUTH_FILE,
};

fn tiny(label: Label, seed: u64) -> PhantomSpec {
    PhantomSpec {
        slices: 5,
        z_start_mm: Some(-200.0),
        ..small(label, seed)
    }
}

fn write(spec: &PhantomSpec) -> (tempfile::TempDir, GroundTruth) {
    let dir = tempfile::tempdir().expect("temporary folder");
    let truth = write_series(spec, dir.path()).expect("series is written");
    (dir, truth)
}

/// The axial images of the main series (series number 2), in ascending z.
fn main_axial(files: &[(std::path::PathBuf, DefaultDicomObject)]) -> Vec<&DefaultDicomObject> {
    let mut objects: Vec<&DefaultDicomObject> = files
        .iter()
        .map(|(_, object)| object)
        .filter(|object| text(object, tags::SERIES_NUMBER) == "2" && !is_localizer(object))
        .collect();
    objects.sort_by(|a, b| {
        let za = numbers(a, tags::IMAGE_POSITION_PATIENT)[2];
        let zb = numbers(b, tags::IMAGE_POSITION_PATIENT)[2];
        za.total_cmp(&zb)
    });
    objects
}

#[test]
fn same_spec_writes_identical_bytes() {
    let spec = PhantomSpec {
        localizer: true,
        second_series_kernel: Some("LUNG".to_string()),
        instance_order: InstanceOrder::Shuffled,
        ..tiny(Label::Covid, 11)
    };
    let (first, _) = write(&spec);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("thread pool");
    let (second, _) = pool.install(|| write(&spec));

    let contents = |dir: &std::path::Path| -> BTreeMap<String, Vec<u8>> {
        std::fs::read_dir(dir)
            .expect("readable")
            .map(|entry| {
                let path = entry.expect("entry").path();
                let name = path
                    .file_name()
                    .expect("name")
                    .to_string_lossy()
                    .to_string();
                (name, std::fs::read(&path).expect("readable"))
            })
            .collect()
    };
    let (a, b) = (contents(first.path()), contents(second.path()));
    // 5 slices + 1 localizer + 3 slices of the second series + ground_truth.json.
    assert_eq!(a.len(), 10);
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (name, bytes) in &a {
        assert!(bytes == &b[name], "{name} differs between runs");
    }
}

#[test]
fn different_seed_changes_pixels_and_uids() {
    let (first, first_truth) = write(&tiny(Label::Healthy, 1));
    let (second, second_truth) = write(&tiny(Label::Healthy, 2));
    assert_ne!(first_truth.study_uid, second_truth.study_uid);
    let first_files = read_dicom_files(first.path());
    let second_files = read_dicom_files(second.path());
    let a = stored_values(main_axial(&first_files)[2]);
    let b = stored_values(main_axial(&second_files)[2]);
    let differing = a.iter().zip(&b).filter(|(x, y)| x != y).count();
    assert!(
        differing > a.len() / 2,
        "only {differing} of {} pixels differ",
        a.len()
    );
}

#[test]
fn attributes_describe_ct_image() {
    let spec = tiny(Label::Healthy, 3);
    let (dir, truth) = write(&spec);
    let files = read_dicom_files(dir.path());
    assert_eq!(files.len(), 5);
    assert_eq!(truth.files, 5);
    for (_, object) in &files {
        assert_eq!(
            object.meta().transfer_syntax().trim_end_matches('\0'),
            uids::EXPLICIT_VR_LITTLE_ENDIAN
        );
        assert_eq!(text(object, tags::SOP_CLASS_UID), uids::CT_IMAGE_STORAGE);
        assert_eq!(text(object, tags::MODALITY), "CT");
        assert_eq!(text(object, tags::STUDY_INSTANCE_UID), truth.study_uid);
        assert_eq!(
            text(object, tags::SERIES_INSTANCE_UID),
            truth.series_uids[0]
        );
        assert!(text(object, tags::SOP_INSTANCE_UID).starts_with("2.25."));
        assert_eq!(text(object, tags::PATIENT_POSITION), "HFS");
        assert_eq!(text(object, tags::IMAGE_TYPE), "ORIGINAL\\PRIMARY\\AXIAL");
        assert_eq!(
            text(object, tags::PHOTOMETRIC_INTERPRETATION),
            "MONOCHROME2"
        );
        assert_eq!(text(object, tags::PATIENT_NAME), "PHANTOM^S3");
        assert_eq!(text(object, tags::CONVOLUTION_KERNEL), "STANDARD");
        assert_eq!(text(object, tags::RESCALE_TYPE), "HU");
        assert_eq!(number(object, tags::ROWS), 128.0);
        assert_eq!(number(object, tags::COLUMNS), 128.0);
        assert_eq!(numbers(object, tags::PIXEL_SPACING), vec![2.8, 2.8]);
        assert_eq!(
            numbers(object, tags::IMAGE_ORIENTATION_PATIENT),
            vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        );
        assert_eq!(number(object, tags::SLICE_THICKNESS), 10.0);
        assert_eq!(number(object, tags::BITS_ALLOCATED), 16.0);
        assert_eq!(number(object, tags::BITS_STORED), 16.0);
        assert_eq!(number(object, tags::HIGH_BIT), 15.0);
        assert_eq!(number(object, tags::PIXEL_REPRESENTATION), 1.0);
        assert_eq!(number(object, tags::RESCALE_INTERCEPT), -1024.0);
        assert_eq!(number(object, tags::RESCALE_SLOPE), 1.0);
        assert_eq!(number(object, tags::WINDOW_CENTER), -600.0);
        assert_eq!(number(object, tags::WINDOW_WIDTH), 1500.0);
        let z = numbers(object, tags::IMAGE_POSITION_PATIENT)[2];
        assert_eq!(number(object, tags::SLICE_LOCATION), z);
    }
    // Slices start at z = -200 and are 10 mm apart.
    let z: Vec<f64> = main_axial(&files)
        .iter()
        .map(|object| numbers(object, tags::IMAGE_POSITION_PATIENT)[2])
        .collect();
    assert_eq!(z, vec![-200.0, -190.0, -180.0, -170.0, -160.0]);
}

#[test]
fn file_names_do_not_follow_position() {
    let spec = PhantomSpec {
        slices: 12,
        ..tiny(Label::Healthy, 4)
    };
    let (dir, _) = write(&spec);
    // Files sorted by name; their z values must not be sorted either way.
    let z: Vec<f64> = read_dicom_files(dir.path())
        .iter()
        .map(|(_, object)| numbers(object, tags::IMAGE_POSITION_PATIENT)[2])
        .collect();
    let ascending = z.windows(2).all(|w| w[0] < w[1]);
    let descending = z.windows(2).all(|w| w[0] > w[1]);
    assert!(!ascending, "file order follows ascending z: {z:?}");
    assert!(!descending, "file order follows descending z: {z:?}");
}

#[test]
fn instance_order_options() {
    let cases = [
        (InstanceOrder::Ascending, Some(vec![1, 2, 3, 4, 5, 6])),
        (InstanceOrder::Descending, Some(vec![6, 5, 4, 3, 2, 1])),
        (InstanceOrder::Shuffled, None),
    ];
    for (order, expected) in cases {
        let spec = PhantomSpec {
            slices: 6,
            instance_order: order,
            ..tiny(Label::Healthy, 5)
        };
        let (dir, _) = write(&spec);
        let files = read_dicom_files(dir.path());
        let numbers_by_z: Vec<i64> = main_axial(&files)
            .iter()
            .map(|object| number(object, tags::INSTANCE_NUMBER) as i64)
            .collect();
        match expected {
            Some(expected) => assert_eq!(numbers_by_z, expected, "{order:?}"),
            None => {
                let mut sorted = numbers_by_z.clone();
                sorted.sort();
                assert_eq!(sorted, vec![1, 2, 3, 4, 5, 6], "a permutation");
                assert_ne!(numbers_by_z, vec![1, 2, 3, 4, 5, 6]);
                assert_ne!(numbers_by_z, vec![6, 5, 4, 3, 2, 1]);
            }
        }
    }
}

#[test]
fn missing_slices_leave_gap() {
    let spec = PhantomSpec {
        slices: 10,
        missing_slices: vec![3, 4],
        ..tiny(Label::Healthy, 6)
    };
    let (dir, truth) = write(&spec);
    let files = read_dicom_files(dir.path());
    assert_eq!(files.len(), 8);
    assert_eq!(truth.slices, 8);
    assert_eq!(truth.slice_truth.len(), 8);
    let z: Vec<f64> = main_axial(&files)
        .iter()
        .map(|object| numbers(object, tags::IMAGE_POSITION_PATIENT)[2])
        .collect();
    let steps: Vec<f64> = z.windows(2).map(|w| w[1] - w[0]).collect();
    // Positions -200, -190, -180, (-170 and -160 missing), -150, …: one 30 mm step.
    assert_eq!(steps, vec![10.0, 10.0, 30.0, 10.0, 10.0, 10.0, 10.0]);
}

#[test]
fn localizer_and_second_series() {
    let spec = PhantomSpec {
        slices: 6,
        localizer: true,
        second_series_kernel: Some("LUNG".to_string()),
        ..tiny(Label::Covid, 7)
    };
    let (dir, truth) = write(&spec);
    let files = read_dicom_files(dir.path());
    // 6 main slices + 1 localizer + 3 slices at twice the spacing.
    assert_eq!(files.len(), 10);
    assert_eq!(truth.files, 10);
    assert_eq!(truth.series_uids.len(), 2);
    assert_eq!(truth.slices, 6);

    let mut by_series: BTreeMap<String, Vec<&DefaultDicomObject>> = BTreeMap::new();
    for (_, object) in &files {
        assert_eq!(text(object, tags::STUDY_INSTANCE_UID), truth.study_uid);
        by_series
            .entry(text(object, tags::SERIES_INSTANCE_UID))
            .or_default()
            .push(object);
    }
    assert_eq!(by_series.len(), 2);

    let main = &by_series[&truth.series_uids[0]];
    assert_eq!(main.len(), 7);
    let localizers: Vec<_> = main.iter().filter(|object| is_localizer(object)).collect();
    assert_eq!(localizers.len(), 1);
    let localizer = localizers[0];
    assert_eq!(
        text(localizer, tags::IMAGE_TYPE),
        "ORIGINAL\\PRIMARY\\LOCALIZER"
    );
    assert_eq!(
        numbers(localizer, tags::IMAGE_ORIENTATION_PATIENT),
        vec![1.0, 0.0, 0.0, 0.0, 0.0, -1.0]
    );
    // Half the columns at twice the spacing; rows cover 50 mm of slices plus 2 × 30 mm.
    assert_eq!(number(localizer, tags::COLUMNS), 64.0);
    assert_eq!(numbers(localizer, tags::PIXEL_SPACING), vec![5.6, 5.6]);
    assert_ne!(number(localizer, tags::ROWS), 128.0);
    assert_eq!(
        stored_values(localizer).len(),
        64 * number(localizer, tags::ROWS) as usize
    );

    let second = &by_series[&truth.series_uids[1]];
    assert_eq!(second.len(), 3);
    for object in second {
        assert_eq!(text(object, tags::CONVOLUTION_KERNEL), "LUNG");
        assert_eq!(number(object, tags::SLICE_THICKNESS), 20.0);
        assert_eq!(text(object, tags::SERIES_NUMBER), "3");
        assert!(!is_localizer(object));
    }
    let second_z: BTreeSet<i64> = second
        .iter()
        .map(|object| numbers(object, tags::IMAGE_POSITION_PATIENT)[2] as i64)
        .collect();
    assert_eq!(second_z, BTreeSet::from([-200, -180, -160]));
}

/// VR and value bytes (little endian) of _Pixel Padding Value_ (0028,0120) as written in
/// an Explicit VR Little Endian file. dicom-object 0.10.1 cannot show this: its parser
/// turns a US padding value into SS whenever _Pixel Representation_ is 1.
fn raw_padding_element(path: &std::path::Path) -> Option<(String, u16)> {
    let bytes = std::fs::read(path).expect("readable");
    let header = [0x28, 0x00, 0x20, 0x01];
    let start = bytes.windows(4).position(|window| window == header)?;
    let vr = String::from_utf8_lossy(&bytes[start + 4..start + 6]).to_string();
    let length = u16::from_le_bytes([bytes[start + 6], bytes[start + 7]]);
    assert_eq!(length, 2, "padding value holds one 16-bit value");
    Some((vr, u16::from_le_bytes([bytes[start + 8], bytes[start + 9]])))
}

#[test]
fn padding_conventions() {
    struct Case {
        padding: PaddingConvention,
        signed: bool,
        intercept: f64,
        /// Expected VR and 16-bit value of Pixel Padding Value; `None` when absent.
        attribute: Option<(&'static str, u16)>,
        /// Expected stored value outside the reconstruction circle.
        stored: i32,
    }
    let cases = [
        // (-2000 - (-1024)) / 1 = -976, whose 16-bit pattern is 65536 - 976 = 64560.
        Case {
            padding: PaddingConvention::Attribute,
            signed: true,
            intercept: -1024.0,
            attribute: Some(("SS", 64560)),
            stored: -976,
        },
        Case {
            padding: PaddingConvention::Attribute,
            signed: true,
            intercept: 0.0,
            attribute: Some(("SS", 63536)),
            stored: -2000,
        },
        // The same patterns, but declared as US: 63536 is -2000 and 64560 is -976.
        Case {
            padding: PaddingConvention::UnsignedForSigned,
            signed: true,
            intercept: 0.0,
            attribute: Some(("US", 63536)),
            stored: -2000,
        },
        Case {
            padding: PaddingConvention::UnsignedForSigned,
            signed: true,
            intercept: -1024.0,
            attribute: Some(("US", 64560)),
            stored: -976,
        },
        // -2000 HU is below what unsigned pixels hold with intercept -1024: stored 0.
        Case {
            padding: PaddingConvention::Attribute,
            signed: false,
            intercept: -1024.0,
            attribute: Some(("US", 0)),
            stored: 0,
        },
        Case {
            padding: PaddingConvention::None,
            signed: true,
            intercept: -1024.0,
            attribute: None,
            stored: -976,
        },
    ];
    for case in cases {
        let spec = PhantomSpec {
            slices: 1,
            padding: case.padding,
            signed: case.signed,
            rescale_intercept: case.intercept,
            ..tiny(Label::Healthy, 8)
        };
        let label = format!(
            "{:?} signed={} intercept={}",
            case.padding, case.signed, case.intercept
        );
        let (dir, truth) = write(&spec);
        let files = read_dicom_files(dir.path());
        let (path, object) = &files[0];
        let expected = case.attribute.map(|(vr, value)| (vr.to_string(), value));
        assert_eq!(raw_padding_element(path), expected, "{label}");
        // dicom-object reads the padding value as the signed number when pixels are signed.
        if let Ok(element) = object.element(tags::PIXEL_PADDING_VALUE) {
            assert_eq!(
                element.to_int::<i32>().expect("integer"),
                case.stored,
                "{label}"
            );
        }
        // Pixel (0, 0) is a corner, outside the reconstruction circle.
        assert_eq!(stored_values(object)[0], case.stored, "{label}");
        assert_eq!(
            truth.padding_hu,
            f64::from(case.stored) + case.intercept,
            "{label}"
        );
    }
}

#[test]
fn unsigned_for_signed_needs_signed_pixels() {
    let spec = PhantomSpec {
        padding: PaddingConvention::UnsignedForSigned,
        signed: false,
        ..tiny(Label::Healthy, 1)
    };
    let dir = tempfile::tempdir().expect("temporary folder");
    let error = write_series(&spec, dir.path()).expect_err("invalid spec");
    assert!(
        matches!(
            error,
            PhantomError::InvalidSpec {
                field: "padding",
                ..
            }
        ),
        "{error}"
    );
}

/// Checks that every main-series file reproduces the rendered HU within half a stored
/// step (slope / 2), matching files to rendered slices by z.
fn assert_read_back_matches(spec: &PhantomSpec, label: &str) {
    let rendered = render(spec).expect("renders");
    let (dir, _) = write(spec);
    let files = read_dicom_files(dir.path());
    let objects = main_axial(&files);
    assert_eq!(objects.len(), rendered.slices.len(), "{label}");
    for (object, slice) in objects.iter().zip(&rendered.slices) {
        assert_eq!(
            numbers(object, tags::IMAGE_POSITION_PATIENT),
            slice.image_position.to_vec(),
            "{label}"
        );
        let slope = number(object, tags::RESCALE_SLOPE);
        assert_eq!(slope, slice.rescale.slope, "{label}");
        for (read, &expected) in hu_values(object).iter().zip(&slice.hu) {
            let error = (read - f64::from(expected)).abs();
            assert!(
                error <= slope / 2.0 + 1e-3,
                "{label}: read {read}, rendered {expected}"
            );
        }
    }
}

#[test]
fn read_back_matches_rendered_hu() {
    for transfer_syntax in [
        TransferSyntax::ExplicitVrLittleEndian,
        TransferSyntax::ImplicitVrLittleEndian,
        TransferSyntax::ExplicitVrBigEndian,
    ] {
        let spec = PhantomSpec {
            transfer_syntax,
            ..tiny(Label::Covid, 9)
        };
        assert_read_back_matches(&spec, &format!("{transfer_syntax:?}"));
    }
    // 12-bit unsigned: stored = HU + 1024 clipped to 0..4095, so HU below -1024 (the
    // -2000 padding) and above 3071 are clamped in the rendered HU too.
    let twelve_bit = PhantomSpec {
        bits_stored: 12,
        signed: false,
        ..tiny(Label::Other, 9)
    };
    assert_read_back_matches(&twelve_bit, "12-bit unsigned");
    let files_dir = write(&twelve_bit).0;
    for (_, object) in read_dicom_files(files_dir.path()) {
        assert_eq!(number(&object, tags::BITS_STORED), 12.0);
        assert_eq!(number(&object, tags::HIGH_BIT), 11.0);
        assert!(stored_values(&object)
            .iter()
            .all(|&v| (0..=4095).contains(&v)));
    }
    let sharp_slope = PhantomSpec {
        rescale_slope: 0.25,
        kernel: "BONE".to_string(),
        ..tiny(Label::Covid, 9)
    };
    assert_read_back_matches(&sharp_slope, "slope 0.25, BONE kernel");
}

#[test]
fn per_slice_rescale_keeps_hu() {
    let spec = PhantomSpec {
        per_slice_rescale: true,
        ..tiny(Label::Covid, 10)
    };
    assert_read_back_matches(&spec, "per-slice rescale");

    let (dir, _) = write(&spec);
    let files = read_dicom_files(dir.path());
    let rescales: Vec<(f64, f64)> = main_axial(&files)
        .iter()
        .map(|object| {
            (
                number(object, tags::RESCALE_INTERCEPT),
                number(object, tags::RESCALE_SLOPE),
            )
        })
        .collect();
    // Even positions keep -1024/1, odd ones use -1000/0.5 (16-bit signed).
    let expected = vec![
        (-1024.0, 1.0),
        (-1000.0, 0.5),
        (-1024.0, 1.0),
        (-1000.0, 0.5),
        (-1024.0, 1.0),
    ];
    assert_eq!(rescales, expected);

    // The rendered HU do not depend on the rescale.
    let plain = render(&PhantomSpec {
        per_slice_rescale: false,
        ..spec.clone()
    })
    .expect("renders");
    let alternating = render(&spec).expect("renders");
    for (a, b) in plain.slices.iter().zip(&alternating.slices) {
        assert_eq!(a.hu, b.hu);
    }
}

#[test]
fn declared_intercept_shifts_hu() {
    let spec = PhantomSpec {
        declared_intercept: Some(0.0),
        ..tiny(Label::Healthy, 12)
    };
    let rendered = render(&spec).expect("renders");
    let (dir, _) = write(&spec);
    let files = read_dicom_files(dir.path());
    let objects = main_axial(&files);
    for (object, slice) in objects.iter().zip(&rendered.slices) {
        assert_eq!(number(object, tags::RESCALE_INTERCEPT), 0.0);
        // Declared 0 instead of the real -1024: every value reads 1024 too high, so air
        // reads about +24 instead of -1000.
        for (read, &expected) in hu_values(object).iter().zip(&slice.hu) {
            assert!((read - (f64::from(expected) + 1024.0)).abs() <= 0.5 + 1e-3);
        }
    }
}

#[test]
fn modality_is_written_as_given() {
    let spec = PhantomSpec {
        modality: "MR".to_string(),
        slices: 1,
        ..tiny(Label::Healthy, 13)
    };
    let (dir, _) = write(&spec);
    let files = read_dicom_files(dir.path());
    assert_eq!(text(&files[0].1, tags::MODALITY), "MR");
}

#[test]
fn ground_truth_file_round_trips() {
    let (dir, truth) = write(&tiny(Label::Other, 14));
    let json = std::fs::read_to_string(dir.path().join(GROUND_TRUTH_FILE)).expect("truth file");
    let parsed: GroundTruth = serde_json::from_str(&json).expect("valid ground truth JSON");
    assert_eq!(parsed, truth);
    assert!(json.contains("\"label\": \"other\""));
}

#[test]
fn validate_rejects_bad_fields() {
    let base = tiny(Label::Healthy, 1);
    let cases: Vec<(&str, PhantomSpec)> = vec![
        (
            "rows",
            PhantomSpec {
                rows: 8,
                ..base.clone()
            },
        ),
        (
            "slices",
            PhantomSpec {
                slices: 0,
                ..base.clone()
            },
        ),
        (
            "slices",
            PhantomSpec {
                slices: 701,
                ..base.clone()
            },
        ),
        (
            "pixel_spacing_mm",
            PhantomSpec {
                pixel_spacing_mm: 0.0,
                ..base.clone()
            },
        ),
        (
            "rescale_slope",
            PhantomSpec {
                rescale_slope: -1.0,
                ..base.clone()
            },
        ),
        (
            "bits_stored",
            PhantomSpec {
                bits_stored: 8,
                ..base.clone()
            },
        ),
        (
            "missing_slices",
            PhantomSpec {
                missing_slices: vec![5],
                ..base.clone()
            },
        ),
        (
            "missing_slices",
            PhantomSpec {
                missing_slices: vec![0, 1, 2, 3, 4],
                ..base.clone()
            },
        ),
        (
            "modality",
            PhantomSpec {
                modality: "ct".to_string(),
                ..base.clone()
            },
        ),
        (
            "kernel",
            PhantomSpec {
                kernel: "A\\B".to_string(),
                ..base.clone()
            },
        ),
        (
            "patient_birth_date",
            PhantomSpec {
                patient_birth_date: "19990230".to_string(),
                ..base.clone()
            },
        ),
        (
            "body_scale",
            PhantomSpec {
                body_scale: 2.0,
                ..base.clone()
            },
        ),
        (
            "noise_sd_hu",
            PhantomSpec {
                noise_sd_hu: f64::NAN,
                ..base.clone()
            },
        ),
    ];
    for (field, spec) in cases {
        match spec.validate() {
            Err(PhantomError::InvalidSpec { field: got, .. }) => assert_eq!(got, field),
            other => panic!("{field}: expected InvalidSpec, got {other:?}"),
        }
    }
    assert!(base.validate().is_ok());
    assert!(PhantomSpec::default().validate().is_ok());
}

/// Times a full-size series (512 × 512 × 100, COVID preset). Run it in release mode:
/// `cargo test -p lungstream-phantom --release -- --ignored --nocapture`.
#[test]
#[ignore = "slow in debug builds; a timing check for release builds"]
fn full_size_series_timing() {
    let spec = PhantomSpec::preset(Label::Covid, 1);
    let dir = tempfile::tempdir().expect("temporary folder");
    let start = std::time::Instant::now();
    let truth = write_series(&spec, dir.path()).expect("series is written");
    let elapsed = start.elapsed();
    println!(
        "write_series 512x512x100 on {} threads: {elapsed:?}",
        rayon::current_num_threads()
    );
    assert_eq!(truth.files, 100);

    let start = std::time::Instant::now();
    let series = render(&spec).expect("renders");
    println!("render 512x512x100: {:?}", start.elapsed());
    assert_eq!(series.slices.len(), 100);
}

#[test]
fn spec_rejects_unknown_fields() {
    // A typo in an edited spec must not silently give another phantom.
    let error = serde_json::from_str::<lungstream_phantom::PhantomSpec>(r#"{"missing_slice": [3]}"#).unwrap_err();
    assert!(error.to_string().contains("missing_slice"), "{error}");
    let spec: lungstream_phantom::PhantomSpec = serde_json::from_str(r#"{"missing_slices": [3]}"#).unwrap();
    assert_eq!(spec.missing_slices, vec![3]);
}
