//! Infected volume on phantom lungs with known truth: maps that mark one whole side must
//! give that side's lung, at any crop scale.

use lungstream_dicom::{read_volume, ReaderConfig};
use lungstream_infer::maps::{infected_slice_pixels, infection_mask};
use lungstream_infer::{summarise, LobeResult, FINE_GRID};
use lungstream_phantom::{write_series, Label, PhantomSpec};
use lungstream_preprocess::lungs::Side;
use lungstream_preprocess::patches::COARSE_GRID;
use lungstream_preprocess::{preprocess, PreprocessedSeries};

fn phantom(spec: &PhantomSpec) -> (PreprocessedSeries, lungstream_phantom::GroundTruth) {
    let dir = tempfile::tempdir().unwrap();
    let truth = write_series(spec, dir.path()).unwrap();
    let (volume, _) = read_volume(&[dir.path().to_path_buf()], &ReaderConfig::default()).unwrap();
    (preprocess(&volume, &Default::default()).unwrap(), truth)
}

/// Builds lobe results whose maps give `probability` everywhere on the lobes of `infected_side`
/// and 0.1 elsewhere.
fn results(series: &PreprocessedSeries, infected_side: Side, probability: f32) -> Vec<LobeResult> {
    series
        .lobes
        .iter()
        .map(|lobe| {
            let p = if lobe.side == infected_side { probability } else { 0.1 };
            let coarse = vec![p; COARSE_GRID * COARSE_GRID];
            let fine = vec![p; FINE_GRID * FINE_GRID];
            let infected = infection_mask(&coarse, &fine, &lobe.mask);
            LobeResult {
                slice: lobe.slice,
                side: lobe.side,
                position_mm: lobe.position_mm,
                crop_box: lobe.crop_box,
                p_diseased: f64::from(p),
                s_diseased: 0.0,
                p_covid: 0.5,
                s_covid: 0.0,
                attention: vec![0.5; COARSE_GRID * COARSE_GRID],
                coarse,
                fine,
                infected_pixels: infected_slice_pixels(infected.count(), lobe.mask.count(), lobe.lung_pixels),
                lung: lobe.mask.clone(),
                infected,
                lung_pixels: lobe.lung_pixels,
            }
        })
        .collect()
}

fn check_right_side_infected(spec: &PhantomSpec, expect_scaled: bool) {
    let (series, truth) = phantom(spec);
    let scaled = series.lobes.iter().any(|l| l.crop_box.scale < 1.0);
    assert_eq!(scaled, expect_scaled, "crop scale of the phantom");
    let inference = summarise(results(&series, Side::Right, 0.9), series.facts.spacing_mm);

    let percent = inference.infected_percent();
    assert!((percent.right - 100.0).abs() < 1e-9, "right {}", percent.right);
    assert_eq!(percent.left, 0.0);
    // Every lung voxel the preprocessing found counts, whatever the crop scale.
    assert_eq!(inference.lung_voxels.right, series.facts.lung_voxels.right as f64);
    assert!((inference.infected_voxels.right - inference.lung_voxels.right).abs() < 1e-6);
    // Against the phantom's truth: the right lung's share of both lungs, within the
    // lung extraction's tolerance (5% per side, see the preprocessing tests).
    let expected = 100.0 * truth.lung_voxels.right as f64 / (truth.lung_voxels.right + truth.lung_voxels.left) as f64;
    let total = inference.infected_percent_total();
    assert!((total - expected).abs() < 2.5, "total {total:.2}%, truth {expected:.2}%");
    // Millilitres: the right lung volume.
    let ml = inference.infected_voxels.right * inference.voxel_ml;
    assert!((ml - series.facts.lung_volume_ml.right).abs() < 1e-6 * ml.max(1.0), "{ml} mL vs {} mL", series.facts.lung_volume_ml.right);
    assert!((ml - truth.lung_volume_ml.right).abs() < 0.05 * truth.lung_volume_ml.right, "{ml} mL vs truth {} mL", truth.lung_volume_ml.right);
    // The worst slice is the one with the largest right lung.
    let largest = series.lobes.iter().filter(|l| l.side == Side::Right).max_by_key(|l| l.lung_pixels).unwrap();
    assert_eq!(inference.slices_by_severity[0].slice, largest.slice);

    // At exactly 0.5 nothing is infected: the threshold is strict.
    let none = summarise(results(&series, Side::Right, 0.5), series.facts.spacing_mm);
    assert_eq!(none.infected_percent_total(), 0.0);
}

#[test]
fn volume_of_infected_right_lung() {
    let spec = PhantomSpec { slices: 12, slice_spacing_mm: 10.0, ..PhantomSpec::preset(Label::Healthy, 4) };
    check_right_side_infected(&spec, false);
}

#[test]
fn volume_with_scaled_crops() {
    // 0.35 mm pixels on a 1024 matrix: each lung spans more than 256 pixels, so its crop
    // is scaled down.
    let spec = PhantomSpec { slices: 6, slice_spacing_mm: 20.0, ..PhantomSpec::preset(Label::Healthy, 4).with_matrix(1024, 1024, 0.35) };
    check_right_side_infected(&spec, true);
}

#[test]
fn shared_batches_match_single_series() {
    use lungstream_infer::{infer_many, infer_series, InferOptions, Model, NetworkConfig};
    let small = |label, seed| PhantomSpec { slices: 8, slice_spacing_mm: 15.0, ..PhantomSpec::preset(label, seed).with_matrix(128, 128, 2.8) };
    let (a, _) = phantom(&small(Label::Covid, 21));
    let (b, _) = phantom(&small(Label::Healthy, 22));
    let model = Model::initialised(NetworkConfig::NARROW, 5).unwrap();
    // A batch size that makes one forward pass hold lobes of both series.
    let options = InferOptions { batch: 5 };
    let together = infer_many(&model, &[&a, &b], options, &mut |_| {}).unwrap();
    assert_eq!(together.len(), 2);
    for (alone, shared) in [&a, &b].into_iter().zip(&together) {
        let alone = infer_series(&model, alone, options, &mut |_| {}).unwrap();
        assert_eq!(alone.lobes.len(), shared.lobes.len());
        assert!((alone.p_diseased - shared.p_diseased).abs() < 1e-5, "{} vs {}", alone.p_diseased, shared.p_diseased);
        assert!((alone.p_covid - shared.p_covid).abs() < 1e-5);
        assert!((alone.infected_percent_total() - shared.infected_percent_total()).abs() < 1e-3);
        for (x, y) in alone.lobes.iter().zip(&shared.lobes) {
            assert_eq!((x.slice, x.side), (y.slice, y.side));
            assert!((x.p_diseased - y.p_diseased).abs() < 1e-5);
        }
    }
}
