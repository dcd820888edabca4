//! Preprocessing against synthetic chests with exact ground truth.

use lungstream_dicom::{read_volume, CtVolume, ReaderConfig};
use lungstream_phantom::{write_series, GroundTruth, Label, PaddingConvention, PhantomSpec};
use lungstream_preprocess::bundle::{decode_bundle, encode_bundle};
use lungstream_preprocess::lungs::Side;
use lungstream_preprocess::{normalised_slice, preprocess, PreprocessedSeries};
use lungstream_schemas::ReasonCode;

/// Builds a 512×512 chest with 30 slices 8 mm apart: the lungs and some abdomen below them.
fn chest(label: Label, seed: u64) -> PhantomSpec {
    PhantomSpec {
        slices: 30,
        slice_spacing_mm: 8.0,
        ..PhantomSpec::preset(label, seed)
    }
}

fn load(spec: &PhantomSpec) -> (CtVolume, GroundTruth) {
    let dir = tempfile::tempdir().unwrap();
    let truth = write_series(spec, dir.path()).unwrap();
    let (volume, _) = read_volume(&[dir.path().to_path_buf()], &ReaderConfig::default()).unwrap();
    (volume, truth)
}

fn run(spec: &PhantomSpec) -> (PreprocessedSeries, GroundTruth, CtVolume) {
    let (volume, truth) = load(spec);
    let series = preprocess(&volume, &Default::default()).unwrap_or_else(|e| panic!("{e}"));
    (series, truth, volume)
}

/// Relative error of the lung voxel count of one side, percent.
fn volume_error(series: &PreprocessedSeries, truth: &GroundTruth, side: Side) -> f64 {
    let found = series.facts.lung_voxels.get(side) as f64;
    let expected = match side {
        Side::Right => truth.lung_voxels.right,
        Side::Left => truth.lung_voxels.left,
    } as f64;
    100.0 * (found - expected) / expected
}

fn assert_volume_within(name: &str, series: &PreprocessedSeries, truth: &GroundTruth, percent: f64) {
    for side in Side::BOTH {
        let error = volume_error(series, truth, side);
        assert!(error.abs() <= percent, "{name}: {} lung volume off by {error:.2}%", side.as_str());
    }
}

#[test]
fn healthy_lung_volume_within_5_percent() {
    for seed in [1, 2] {
        let (series, truth, _) = run(&chest(Label::Healthy, seed));
        assert_volume_within(&format!("healthy seed {seed}"), &series, &truth, 5.0);
        // The model-free share of a healthy chest stays near 0.
        let infected = series.facts.model_free.total.infected_percent;
        assert!(infected <= 3.0, "healthy seed {seed}: model-free infected {infected:.2}%");
    }
}

#[test]
fn coarse_matrices_find_the_lungs() {
    // The erosion and dilation scale with the pixel size, so a 64×64 matrix (5.6 mm
    // pixels) still separates the lungs from the outside air across the chest wall.
    for matrix in [64u16, 128, 256] {
        let spec = PhantomSpec {
            slices: 30,
            slice_spacing_mm: 8.0,
            ..PhantomSpec::preset(Label::Healthy, 12).with_matrix(matrix, matrix, 358.4 / f64::from(matrix))
        };
        let (series, truth, _) = run(&spec);
        let tolerance = if matrix == 64 { 15.0 } else { 5.0 };
        assert_volume_within(&format!("{matrix}x{matrix}"), &series, &truth, tolerance);
    }
}

#[test]
fn covid_lung_volume_and_infected_share() {
    for seed in [3, 4] {
        let (series, truth, _) = run(&chest(Label::Covid, seed));
        assert!(truth.infected_percent > 1.0, "the phantom must be infected");
        assert_volume_within(&format!("covid seed {seed}"), &series, &truth, 10.0);
        let infected = series.facts.model_free.total.infected_percent;
        assert!(
            (infected - truth.infected_percent).abs() <= 3.0,
            "covid seed {seed}: model-free infected {infected:.2}%, truth {:.2}%",
            truth.infected_percent
        );
    }
}

#[test]
fn other_disease_keeps_effusion_out_of_the_lung() {
    // Effusion is fluid outside the lung: counting it would push the volume above the
    // truth. (A lobar consolidation wider than the closing disk is undercounted, so the
    // volume may fall below it; see LungConfig.)
    let (series, truth, _) = run(&chest(Label::Other, 5));
    assert!(truth.lesion_voxels.effusion.total() > 0);
    for side in Side::BOTH {
        let error = volume_error(&series, &truth, side);
        assert!(error <= 2.0, "other disease: {} lung volume {error:+.2}% of the truth", side.as_str());
    }
}

#[test]
fn touching_lungs_are_split() {
    let spec = PhantomSpec {
        lungs_touching: true,
        ..chest(Label::Healthy, 6)
    };
    let (series, truth, _) = run(&spec);
    assert_volume_within("touching lungs", &series, &truth, 5.0);
    // Every slice with a sizeable lung on each side (twice the smallest object, 2 × 2450
    // mm² at 0.7 mm pixels) yields both sides, also where the lungs touch.
    let sizeable = 2 * 5000;
    let mut checked = 0;
    for (slice, counts) in truth.slice_truth.iter().enumerate() {
        if counts.lung_voxels.right < sizeable || counts.lung_voxels.left < sizeable {
            continue;
        }
        checked += 1;
        for side in Side::BOTH {
            assert!(
                series.lobes.iter().any(|l| l.slice == slice && l.side == side),
                "slice {slice}: no {} lung",
                side.as_str()
            );
        }
    }
    assert!(checked >= 20, "only {checked} slices checked");
}

#[test]
fn external_air_pocket_is_not_lung() {
    let spec = PhantomSpec {
        external_air_pocket: true,
        ..chest(Label::Healthy, 7)
    };
    let (series, truth, _) = run(&spec);
    assert_volume_within("air pocket", &series, &truth, 5.0);
    let lung_slices: Vec<usize> = truth.lung_slices.iter().map(|s| *s as usize).collect();
    for lobe in &series.lobes {
        assert!(lung_slices.contains(&lobe.slice), "a lobe on slice {} without lung", lobe.slice);
    }
}

#[test]
fn padding_without_attribute_is_not_air() {
    // Unsigned 12-bit pixels store the fill as 0, that is -1024 HU, like air. Only the
    // reconstruction circle distinguishes it.
    let spec = PhantomSpec {
        padding: PaddingConvention::None,
        signed: false,
        bits_stored: 12,
        ..chest(Label::Healthy, 8)
    };
    let (series, truth, _) = run(&spec);
    assert_volume_within("unsigned 12-bit", &series, &truth, 5.0);
    let median = series.facts.background_median_hu;
    assert!((-1010.0..=-990.0).contains(&median), "background median {median} HU");
    assert!(series.facts.background_plausible);
}

#[test]
fn abdomen_has_no_lobes() {
    // 40 slices 8 mm apart reach 40 mm beyond the lungs at each end.
    let (series, truth, _) = run(&PhantomSpec {
        slices: 40,
        ..chest(Label::Healthy, 9)
    });
    let lung_slices: Vec<usize> = truth.lung_slices.iter().map(|s| *s as usize).collect();
    assert!(lung_slices.len() < 40, "the phantom must include slices without lung");
    for lobe in &series.lobes {
        assert!(lung_slices.contains(&lobe.slice), "lobe on slice {} without lung", lobe.slice);
    }

    // Ten slices far below the lungs.
    let abdomen = PhantomSpec {
        slices: 10,
        slice_spacing_mm: 5.0,
        z_start_mm: Some(-400.0),
        ..PhantomSpec::preset(Label::Healthy, 9)
    };
    let (volume, truth) = load(&abdomen);
    assert!(truth.lung_slices.is_empty(), "the abdomen phantom must have no lung");
    let error = preprocess(&volume, &Default::default()).unwrap_err();
    assert_eq!(error.reason(), ReasonCode::NoLungs);
    assert!(error.to_string().contains("no lungs"), "{error}");
}

#[test]
fn neighbour_channels_match_full_slice_crops() {
    let (series, _, volume) = run(&chest(Label::Covid, 10));
    let median = (series.facts.background_median_hu + 2000.0) as u16;
    for lobe in series.lobes.iter().step_by(7) {
        let last = volume.dims.slices - 1;
        let neighbours = [lobe.slice.saturating_sub(1), lobe.slice, (lobe.slice + 1).min(last)];
        for (channel, slice) in lobe.channels.iter().zip(neighbours) {
            let (full, _) = normalised_slice(&volume, slice, median);
            let expected = lobe.crop_box.crop_values(&full, (0, 0));
            assert!(*channel == expected, "lobe on slice {}: channel of slice {slice} differs", lobe.slice);
        }
    }
}

#[test]
fn bundle_round_trip_is_identical() {
    let (series, _, _) = run(&PhantomSpec {
        slices: 12,
        ..chest(Label::Covid, 11)
    });
    let bytes = encode_bundle(&series).unwrap();
    let raw_size = series.lobes.len() * (3 * 256 * 256 * 2 + 256 * 256);
    assert!(bytes.len() < raw_size / 2, "zstd should at least halve {raw_size} bytes, got {}", bytes.len());
    let back = decode_bundle(&bytes, 1 << 30).unwrap();
    // Compared part by part: a failing comparison of the whole prints megabytes.
    assert_eq!(back.facts, series.facts);
    assert_eq!(back.lobes.len(), series.lobes.len());
    for (read, written) in back.lobes.iter().zip(&series.lobes) {
        let at = (written.slice, written.side);
        assert_eq!((read.slice, read.side), at);
        assert_eq!(read.position_mm, written.position_mm, "{at:?}");
        assert_eq!(read.crop_box, written.crop_box, "{at:?}");
        assert_eq!(read.lung_pixels, written.lung_pixels, "{at:?}");
        assert!(read.channels == written.channels, "{at:?}: channels differ");
        assert!(read.mask == written.mask, "{at:?}: masks differ");
        assert!(read.patch_distance == written.patch_distance, "{at:?}: patch distances differ");
    }

    let error = decode_bundle(&bytes, 1000).unwrap_err();
    assert!(error.to_string().contains("1000"), "{error}");
    assert!(decode_bundle(b"not a bundle", 1 << 20).is_err());
}

