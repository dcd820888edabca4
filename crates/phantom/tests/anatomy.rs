//! Anatomy, lesions and ground truth of rendered phantoms.

mod common;

use std::collections::VecDeque;

use common::small;
use lungstream_phantom::{
    render, write_series, GroundTruth, Label, Orientation, PhantomSpec, RenderedSeries, Sides,
    Tissue,
};

fn write_truth(spec: &PhantomSpec) -> GroundTruth {
    let dir = tempfile::tempdir().expect("temporary folder");
    write_series(spec, dir.path()).expect("series is written")
}

/// Counts voxels of `wanted` tissues per patient side straight from the label maps.
fn count(series: &RenderedSeries, wanted: impl Fn(Tissue) -> bool) -> Sides {
    let geometry = &series.geometry;
    let mut sides = Sides::default();
    for slice in &series.slices {
        for row in 0..usize::from(geometry.rows) {
            for column in 0..usize::from(geometry.columns) {
                let tissue = slice.tissue[row * usize::from(geometry.columns) + column];
                if !wanted(tissue) {
                    continue;
                }
                let x = geometry.pixel_position(slice.image_position, row, column)[0];
                if x > 0.0 {
                    sides.left += 1;
                } else {
                    sides.right += 1;
                }
            }
        }
    }
    sides
}

#[test]
fn right_lung_larger_than_left() {
    for seed in 1..=4 {
        let truth = write_truth(&small(Label::Healthy, seed));
        assert!(
            truth.lung_voxels.left < truth.lung_voxels.right,
            "seed {seed}: {:?}",
            truth.lung_voxels
        );
        // Both lungs together hold 4 to 6.5 litres at this size (about 5 L at seed 1).
        let total_ml = truth.lung_volume_ml.left + truth.lung_volume_ml.right;
        assert!(
            (4000.0..6500.0).contains(&total_ml),
            "seed {seed}: {total_ml} ml"
        );
    }
}

#[test]
fn truth_matches_label_maps() {
    let spec = small(Label::Covid, 7);
    let series = render(&spec).expect("renders");
    let truth = write_truth(&spec);

    assert_eq!(truth.lung_voxels, count(&series, Tissue::is_lung));
    assert_eq!(truth.infected_voxels, count(&series, Tissue::is_infected));
    let ground_glass = count(&series, |t| t == Tissue::GroundGlass);
    assert_eq!(truth.lesion_voxels.ground_glass, ground_glass);
    let consolidation = count(&series, |t| t == Tissue::Consolidation);
    assert_eq!(truth.lesion_voxels.consolidation, consolidation);
    assert_eq!(truth.slices as usize, series.slices.len());

    let voxel_mm3 = 2.8 * 2.8 * 10.0;
    assert!((truth.voxel_volume_mm3 - voxel_mm3).abs() < 1e-9);
    let expected_ml = truth.lung_voxels.left as f64 * voxel_mm3 / 1000.0;
    assert!((truth.lung_volume_ml.left - expected_ml).abs() < 1e-6);
    let percent = 100.0 * truth.infected_voxels.total() as f64 / truth.lung_voxels.total() as f64;
    assert!((truth.infected_percent - percent).abs() < 1e-9);

    let with_lung: Vec<u32> = series
        .slices
        .iter()
        .enumerate()
        .filter(|(_, slice)| slice.tissue.iter().any(|t| t.is_lung()))
        .map(|(index, _)| index as u32)
        .collect();
    assert_eq!(truth.lung_slices, with_lung);
    let slice_lung: u64 = truth
        .slice_truth
        .iter()
        .map(|s| s.lung_voxels.total())
        .sum();
    assert_eq!(slice_lung, truth.lung_voxels.total());
}

#[test]
fn healthy_preset_has_no_lesions() {
    let truth = write_truth(&small(Label::Healthy, 3));
    let lesions = truth.lesion_voxels;
    assert_eq!(lesions.ground_glass.total(), 0);
    assert_eq!(lesions.consolidation.total(), 0);
    assert_eq!(lesions.nodule.total(), 0);
    assert_eq!(lesions.effusion.total(), 0);
    assert_eq!(truth.infected_voxels.total(), 0);
    assert_eq!(truth.infected_percent, 0.0);
}

#[test]
fn covid_preset_has_ground_glass_and_consolidation() {
    for seed in 1..=3 {
        let truth = write_truth(&small(Label::Covid, seed));
        let lesions = truth.lesion_voxels;
        assert!(lesions.ground_glass.total() > 0, "seed {seed}");
        assert!(lesions.consolidation.total() > 0, "seed {seed}");
        assert_eq!(lesions.nodule.total(), 0, "seed {seed}");
        assert_eq!(lesions.effusion.total(), 0, "seed {seed}");
        // 5 to 8 patches of 22-40 mm: a few per cent of the lungs, 5-12 % at 512².
        assert!(
            (2.0..25.0).contains(&truth.infected_percent),
            "seed {seed}: {}",
            truth.infected_percent
        );
    }
}

/// Returns whether walking outward from pixel (row, column), away from the body's
/// midline, crosses only chest wall (soft tissue, bone) before reaching subcutaneous fat.
fn leads_to_fat(series: &RenderedSeries, slice: usize, row: usize, column: usize) -> bool {
    let geometry = &series.geometry;
    let (rows, columns) = (usize::from(geometry.rows), usize::from(geometry.columns));
    let p = geometry.pixel_position(series.slices[slice].image_position, row, column);
    let length = (p[0] * p[0] + p[1] * p[1]).sqrt();
    // Supine: columns run along +x and rows along +y.
    let (step_row, step_column) = (p[1] / length, p[0] / length);
    for step in 1..25 {
        let r = (row as f64 + step as f64 * step_row).round();
        let c = (column as f64 + step as f64 * step_column).round();
        if r < 0.0 || c < 0.0 || r >= rows as f64 || c >= columns as f64 {
            return false;
        }
        match series.slices[slice].tissue[r as usize * columns + c as usize] {
            Tissue::Fat => return true,
            Tissue::SoftTissue | Tissue::Bone => {}
            _ => return false,
        }
    }
    false
}

#[test]
fn covid_basal_consolidation_touches_chest_wall() {
    for seed in 1..=3 {
        let series = render(&small(Label::Covid, seed)).expect("renders");
        let columns = usize::from(series.geometry.columns);
        let lung_slices: Vec<usize> = (0..series.slices.len())
            .filter(|&k| series.slices[k].tissue.iter().any(|t| t.is_lung()))
            .collect();
        // The base: the lowest 40 % of the slices with lung.
        let base = &lung_slices[..lung_slices.len() * 2 / 5];

        let mut touching = 0;
        for &k in base {
            let tissue = &series.slices[k].tissue;
            for (index, &label) in tissue.iter().enumerate() {
                if label != Tissue::Consolidation {
                    continue;
                }
                let (row, column) = (index / columns, index % columns);
                let neighbours = [
                    (row.wrapping_sub(1), column),
                    (row + 1, column),
                    (row, column.wrapping_sub(1)),
                    (row, column + 1),
                ];
                for (r, c) in neighbours {
                    let Some(&next) = tissue.get(r * columns + c).filter(|_| c < columns) else {
                        continue;
                    };
                    let wall = matches!(next, Tissue::SoftTissue | Tissue::Bone);
                    if wall && leads_to_fat(&series, k, r, c) {
                        touching += 1;
                    }
                }
            }
        }
        assert!(
            touching > 0,
            "seed {seed}: no basal consolidation voxel touches the chest wall"
        );
    }
}

#[test]
fn other_preset_has_nodules_effusion_and_lobar_consolidation() {
    for seed in 1..=3 {
        // Nodules are 5-10 mm in radius, so sample finer than `small` does.
        let spec = PhantomSpec {
            slices: 60,
            slice_spacing_mm: 4.0,
            ..PhantomSpec::preset(Label::Other, seed).with_matrix(192, 192, 1.9)
        };
        let truth = write_truth(&spec);
        let lesions = truth.lesion_voxels;
        assert!(lesions.nodule.total() > 0, "seed {seed}");
        assert!(lesions.effusion.total() > 0, "seed {seed}");
        assert!(lesions.consolidation.total() > 0, "seed {seed}");
        assert_eq!(lesions.ground_glass.total(), 0, "seed {seed}");
        // The effusion is on one side only, and so is the lobar consolidation.
        assert!(
            lesions.effusion.left == 0 || lesions.effusion.right == 0,
            "seed {seed}"
        );
    }
}

#[test]
fn effusion_is_posterior_and_outside_lung() {
    let series = render(&small(Label::Other, 2)).expect("renders");
    let geometry = &series.geometry;
    let columns = usize::from(geometry.columns);
    let mut y_sum = 0.0;
    let mut voxels = 0;
    for slice in &series.slices {
        for (index, &tissue) in slice.tissue.iter().enumerate() {
            if tissue == Tissue::Effusion {
                let p =
                    geometry.pixel_position(slice.image_position, index / columns, index % columns);
                y_sum += p[1];
                voxels += 1;
            }
        }
    }
    assert!(voxels > 0);
    assert!(!Tissue::Effusion.is_lung());
    // +y is posterior; the fluid layers along the posterior wall (cavity semi-axis in y
    // is about 87 mm).
    let mean_y = y_sum / voxels as f64;
    assert!(mean_y > 30.0, "mean effusion y = {mean_y} mm");
}

/// Returns the pixel of the supine image that has the same patient position as pixel
/// (row, column) of an image with `orientation`, for a square matrix of `size`.
fn supine_pixel(
    orientation: Orientation,
    size: usize,
    row: usize,
    column: usize,
) -> (usize, usize) {
    let last = size - 1;
    match orientation {
        Orientation::Supine => (row, column),
        Orientation::Prone => (last - row, last - column),
        Orientation::FlippedRows => (last - row, column),
        Orientation::FlippedColumns => (row, last - column),
        Orientation::Transposed => (column, row),
    }
}

#[test]
fn orientation_options_move_pixels_not_anatomy() {
    let supine = render(&small(Label::Covid, 4)).expect("renders");
    let size = usize::from(supine.geometry.rows);
    for orientation in [
        Orientation::Prone,
        Orientation::FlippedRows,
        Orientation::FlippedColumns,
        Orientation::Transposed,
    ] {
        let spec = PhantomSpec {
            orientation,
            ..small(Label::Covid, 4)
        };
        let other = render(&spec).expect("renders");
        // The table (and the air it displaces) moves to the anterior side when prone.
        let body = |t: Tissue| {
            if matches!(t, Tissue::Table) {
                Tissue::Air
            } else {
                t
            }
        };
        let mut mismatches = 0;
        for (k, slice) in other.slices.iter().enumerate() {
            assert_eq!(slice.z_mm(), supine.slices[k].z_mm());
            for row in 0..size {
                for column in 0..size {
                    let (r, c) = supine_pixel(orientation, size, row, column);
                    let expected = body(supine.slices[k].tissue[r * size + c]);
                    if body(slice.tissue[row * size + column]) != expected {
                        mismatches += 1;
                    }
                }
            }
        }
        assert_eq!(mismatches, 0, "{orientation:?}");
    }
}

#[test]
fn orientation_options_give_identical_truth() {
    let reference = write_truth(&small(Label::Other, 5));
    for orientation in [
        Orientation::Prone,
        Orientation::FlippedRows,
        Orientation::FlippedColumns,
        Orientation::Transposed,
    ] {
        let truth = write_truth(&PhantomSpec {
            orientation,
            ..small(Label::Other, 5)
        });
        assert_eq!(truth.lung_voxels, reference.lung_voxels, "{orientation:?}");
        assert_eq!(
            truth.lesion_voxels, reference.lesion_voxels,
            "{orientation:?}"
        );
        assert_eq!(
            truth.infected_voxels, reference.infected_voxels,
            "{orientation:?}"
        );
        assert_eq!(truth.slice_truth, reference.slice_truth, "{orientation:?}");
    }
}

#[test]
fn lungs_touching_meet_at_midline() {
    let pairs = |lungs_touching: bool| {
        let series = render(&PhantomSpec {
            lungs_touching,
            ..small(Label::Healthy, 1)
        })
        .expect("renders");
        let geometry = &series.geometry;
        let columns = usize::from(geometry.columns);
        let mut pairs = 0;
        for slice in &series.slices {
            for row in 0..usize::from(geometry.rows) {
                for column in 0..columns - 1 {
                    let x = geometry.pixel_position(slice.image_position, row, column)[0];
                    let x_next = geometry.pixel_position(slice.image_position, row, column + 1)[0];
                    let both_lung = slice.tissue[row * columns + column].is_lung()
                        && slice.tissue[row * columns + column + 1].is_lung();
                    if x < 0.0 && x_next > 0.0 && both_lung {
                        pairs += 1;
                    }
                }
            }
        }
        pairs
    };
    assert!(pairs(true) > 0, "the lungs should touch across x = 0");
    assert_eq!(pairs(false), 0, "the mediastinum should separate the lungs");
}

/// Air pixels that are not 4-connected through air or padding to the image border.
fn enclosed_air(series: &RenderedSeries) -> usize {
    let (rows, columns) = (
        usize::from(series.geometry.rows),
        usize::from(series.geometry.columns),
    );
    let open = |t: Tissue| matches!(t, Tissue::Air | Tissue::Outside);
    let mut enclosed = 0;
    for slice in &series.slices {
        let mut reached = vec![false; rows * columns];
        let mut queue = VecDeque::new();
        for row in 0..rows {
            for column in 0..columns {
                let border = row == 0 || column == 0 || row == rows - 1 || column == columns - 1;
                if border && open(slice.tissue[row * columns + column]) {
                    reached[row * columns + column] = true;
                    queue.push_back((row, column));
                }
            }
        }
        while let Some((row, column)) = queue.pop_front() {
            let neighbours = [
                (row.wrapping_sub(1), column),
                (row + 1, column),
                (row, column.wrapping_sub(1)),
                (row, column + 1),
            ];
            for (r, c) in neighbours {
                if r < rows
                    && c < columns
                    && !reached[r * columns + c]
                    && open(slice.tissue[r * columns + c])
                {
                    reached[r * columns + c] = true;
                    queue.push_back((r, c));
                }
            }
        }
        enclosed += slice
            .tissue
            .iter()
            .zip(&reached)
            .filter(|(&t, &r)| t == Tissue::Air && !r)
            .count();
    }
    enclosed
}

#[test]
fn external_air_pocket_is_enclosed() {
    let with_pocket = render(&PhantomSpec {
        external_air_pocket: true,
        ..small(Label::Healthy, 1)
    })
    .expect("renders");
    let without = render(&small(Label::Healthy, 1)).expect("renders");
    assert!(enclosed_air(&with_pocket) > 0);
    assert_eq!(enclosed_air(&without), 0);
}

#[test]
fn render_is_deterministic_across_thread_counts() {
    let spec = PhantomSpec {
        slices: 6,
        ..small(Label::Covid, 9)
    };
    let first = render(&spec).expect("renders");
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("thread pool");
    let single_thread = pool.install(|| render(&spec)).expect("renders");
    assert_eq!(first, single_thread);
}

/// HU of air pixels whose 3×3 neighbourhood is all air, in the middle slice.
fn interior_air(series: &RenderedSeries) -> Vec<f64> {
    let columns = usize::from(series.geometry.columns);
    let rows = usize::from(series.geometry.rows);
    let slice = &series.slices[series.slices.len() / 2];
    let mut values = Vec::new();
    for row in 1..rows - 1 {
        for column in 1..columns - 1 {
            let all_air = (row - 1..=row + 1).all(|r| {
                (column - 1..=column + 1).all(|c| slice.tissue[r * columns + c] == Tissue::Air)
            });
            if all_air {
                values.push(f64::from(slice.hu[row * columns + column]));
            }
        }
    }
    values
}

fn standard_deviation(values: &[f64]) -> f64 {
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64;
    variance.sqrt()
}

#[test]
fn seed_changes_noise() {
    let spec = |seed| PhantomSpec {
        slices: 3,
        ..small(Label::Healthy, seed)
    };
    let first = interior_air(&render(&spec(1)).expect("renders"));
    let second = interior_air(&render(&spec(2)).expect("renders"));
    assert!(first.len() > 1000, "{} interior air pixels", first.len());
    assert!(second.len() > 1000, "{} interior air pixels", second.len());
    let differing = first.iter().zip(&second).filter(|(a, b)| a != b).count();
    assert!(differing > first.len().min(second.len()) * 9 / 10);
}

#[test]
fn kernel_sets_noise_level() {
    // Noise of SD 12 HU on uniform air, then the kernel's 3×3 filter. The SD factor is the
    // root of the sum of squared weights: binomial blur 6/16 = 0.375; unsharp mask with
    // amount 1: sqrt(1.75² + (6/16)² - (4/16)²) = 1.772.
    let cases = [("STANDARD", 12.0), ("SOFT", 4.5), ("LUNG", 21.26)];
    for (kernel, expected) in cases {
        let spec = PhantomSpec {
            slices: 3,
            kernel: kernel.to_string(),
            ..small(Label::Healthy, 1)
        };
        let air = interior_air(&render(&spec).expect("renders"));
        let sd = standard_deviation(&air);
        assert!(
            (sd / expected - 1.0).abs() < 0.1,
            "{kernel}: SD {sd}, expected {expected}"
        );
    }
}
