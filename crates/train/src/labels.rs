//! Targets and weights of weak supervision, as plain functions of plain
//! arrays so each rule can be checked by hand.
//!
//! * Lobe targets: only the top 30% of a scan's lobes by predicted probability take the
//!   scan's label ([`top_count`], [`top_indices`]).
//! * Patch targets: pseudo-infection labels from the series' infection band
//!   ([`coarse_targets`], [`fine_targets`]).
//! * Patch weights: the 80% of patches closest to their label weigh 1, the rest 0.1
//!   ([`noisy_label_weights`]). Then infected patches are scaled so that both classes
//!   weigh the same ([`balance_classes`]).

use lungstream_infer::maps::{fine_patch_range, FINE_GRID};
use lungstream_preprocess::image::Mask;
use lungstream_preprocess::patches::{coarse_patch_labels, coarse_patch_range, COARSE_GRID};

use crate::ScanLabel;

/// Share of a scan's lobes that take the scan's label.
pub const TOP_SHARE: f64 = 0.3;
/// Share of patches, closest to their label, that keep full weight.
pub const TRUSTED_SHARE: f64 = 0.8;
/// Weight of the other patches.
pub const NOISY_WEIGHT: f32 = 0.1;
/// A fine patch is infected when more than this share of its pixels is suspect.
pub const FINE_SUSPECT_SHARE: f64 = 0.75;
/// Probability above which a coarse patch counts as infected.
pub const INFECTED_PROBABILITY: f32 = 0.5;

/// Number of lobes, out of `n`, that take the scan's label.
///
/// **[choice]** The paper rounds 30% up and takes 4 of 10 slices. Plain
/// rounding up of 3.0 gives 3, so the count here is the smallest integer strictly above
/// 30%: ⌊0.3·n⌋ + 1, capped at `n` (10 → 4, 20 → 7, 3 → 1, 1 → 1).
pub fn top_count(n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    ((n * 3) / 10 + 1).min(n)
}

/// Indices of the `top_count(len)` largest probabilities, largest first; ties keep the
/// earlier index first.
pub fn top_indices(probabilities: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..probabilities.len()).collect();
    order.sort_by(|&a, &b| probabilities[b].total_cmp(&probabilities[a]).then(a.cmp(&b)));
    order.truncate(top_count(probabilities.len()));
    order
}

/// Returns the lobes of one diseased scan that the COVID network trains on. These are its
/// own top 30% by P(COVID), largest first. When `also_diseased` is set, the top 30% by
/// P(diseased) that are not already chosen follow.
pub fn covid_picks(p_covid: &[f32], p_diseased: &[f32], also_diseased: bool) -> Vec<usize> {
    let mut picks = top_indices(p_covid);
    if also_diseased {
        for i in top_indices(p_diseased) {
            if !picks.contains(&i) {
                picks.push(i);
            }
        }
    }
    picks
}

/// Returns whether the concordance loss applies to a scan: healthy and COVID-19 scans only, since
/// another disease need not show infection.
pub fn concordance_applies(label: ScanLabel) -> bool {
    matches!(label, ScanLabel::Healthy | ScanLabel::Covid)
}

/// Pseudo-infection targets (0 or 1) of the 32×32 coarse patches of one lobe crop.
///
/// Every patch of a healthy scan is healthy. For a diseased scan a patch is infected when
/// more than a third of its pixels are suspect (lung pixels inside the series' infection
/// band; see `lungstream_preprocess::patches::suspect_mask`).
pub fn coarse_targets(label: ScanLabel, suspect: &Mask) -> Vec<f32> {
    if !label.diseased() {
        return vec![0.0; COARSE_GRID * COARSE_GRID];
    }
    coarse_patch_labels(suspect).data.iter().map(|&infected| f32::from(u8::from(infected))).collect()
}

/// Coarse patches along one axis whose pixel range contains fine patch `index`'s range.
fn covering_coarse(index: usize) -> Vec<usize> {
    let fine = fine_patch_range(index);
    (0..COARSE_GRID)
        .filter(|&k| {
            let coarse = coarse_patch_range(k);
            coarse.start <= fine.start && fine.end <= coarse.end
        })
        .collect()
}

/// Pseudo-infection targets (0 or 1) of the 128×128 fine patches of one lobe crop.
///
/// A fine patch is infected when more than 3/4 of its pixels are suspect and a coarse
/// patch that contains it has a predicted probability above 0.5 (`coarse` is the 32×32
/// coarse map the trained network gives for this lobe). Every patch of a healthy scan is
/// healthy.
pub fn fine_targets(label: ScanLabel, suspect: &Mask, coarse: &[f32]) -> Vec<f32> {
    assert_eq!(coarse.len(), COARSE_GRID * COARSE_GRID, "coarse map of the wrong size");
    let mut targets = vec![0.0; FINE_GRID * FINE_GRID];
    if !label.diseased() {
        return targets;
    }
    let cover: Vec<Vec<usize>> = (0..FINE_GRID).map(covering_coarse).collect();
    for i in 0..FINE_GRID {
        let rows = fine_patch_range(i);
        for j in 0..FINE_GRID {
            let columns = fine_patch_range(j);
            let pixels = rows.len() * columns.len();
            let suspect_pixels: usize = rows.clone().map(|r| columns.clone().filter(|&c| suspect.get(r, c)).count()).sum();
            if (suspect_pixels as f64) <= FINE_SUSPECT_SHARE * pixels as f64 {
                continue;
            }
            let covered = cover[i]
                .iter()
                .any(|&a| cover[j].iter().any(|&b| coarse[a * COARSE_GRID + b] > INFECTED_PROBABILITY));
            if covered {
                targets[i * FINE_GRID + j] = 1.0;
            }
        }
    }
    targets
}

/// Weights against noisy pseudo-labels: patches sorted by |target − prediction|; the
/// closest 80% (rounded up) weigh 1, the others 0.1. Ties keep the earlier patch first.
pub fn noisy_label_weights(targets: &[f32], predictions: &[f32]) -> Vec<f32> {
    assert_eq!(targets.len(), predictions.len(), "targets and predictions differ in length");
    let distance: Vec<f32> = targets.iter().zip(predictions).map(|(t, p)| (t - p).abs()).collect();
    let mut order: Vec<usize> = (0..distance.len()).collect();
    order.sort_by(|&a, &b| distance[a].total_cmp(&distance[b]).then(a.cmp(&b)));
    let trusted = (TRUSTED_SHARE * distance.len() as f64).ceil() as usize;
    let mut weights = vec![NOISY_WEIGHT; distance.len()];
    for &i in &order[..trusted.min(order.len())] {
        weights[i] = 1.0;
    }
    weights
}

/// Scales the weights of infected patches (target > 0.5) by
/// (total weight of healthy patches) / (total weight of infected patches), so both
/// classes pull equally. Without infected or without healthy patches the weights are
/// returned unchanged.
pub fn balance_classes(targets: &[f32], weights: &[f32]) -> Vec<f32> {
    assert_eq!(targets.len(), weights.len(), "targets and weights differ in length");
    let (mut infected, mut healthy) = (0f64, 0f64);
    for (t, w) in targets.iter().zip(weights) {
        if *t > 0.5 {
            infected += f64::from(*w);
        } else {
            healthy += f64::from(*w);
        }
    }
    if infected == 0.0 || healthy == 0.0 {
        return weights.to_vec();
    }
    let factor = (healthy / infected) as f32;
    targets.iter().zip(weights).map(|(t, w)| if *t > 0.5 { w * factor } else { *w }).collect()
}

/// Evenly spaced picks of `count` items out of `len`, offset by `phase` in 0..1 of one
/// step: the slices a scan contributes to one training batch. All items when `len <=
/// count`.
pub fn evenly_spaced(len: usize, count: usize, phase: f64) -> Vec<usize> {
    if len <= count {
        return (0..len).collect();
    }
    let step = len as f64 / count as f64;
    let mut picks: Vec<usize> = (0..count).map(|k| (((k as f64 + phase.clamp(0.0, 0.999)) * step) as usize).min(len - 1)).collect();
    picks.dedup();
    picks
}

#[cfg(test)]
mod tests {
    use super::*;
    use lungstream_preprocess::crop::CROP_SIZE;

    #[test]
    fn top_count_follows_the_paper() {
        assert_eq!(top_count(10), 4);
        assert_eq!(top_count(20), 7);
        assert_eq!(top_count(3), 1);
        assert_eq!(top_count(1), 1);
        assert_eq!(top_count(0), 0);
    }

    #[test]
    fn top_indices_pick_the_largest() {
        let p = [0.1, 0.9, 0.3, 0.8, 0.2, 0.7, 0.0, 0.4, 0.6, 0.5];
        assert_eq!(top_indices(&p), vec![1, 3, 5, 8]);
    }

    #[test]
    fn top_indices_break_ties_by_order() {
        let p = [0.5; 5];
        assert_eq!(top_indices(&p), vec![0, 1]);
    }

    #[test]
    fn covid_picks_add_diseased_top() {
        // Ten lobes: 4 taken by each rule, lobes 1 and 2 by both.
        let p_covid = [0.9f32, 0.8, 0.7, 0.6, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1];
        let p_diseased = [0.1f32, 0.95, 0.9, 0.1, 0.1, 0.1, 0.1, 0.85, 0.8, 0.1];
        assert_eq!(covid_picks(&p_covid, &p_diseased, false), vec![0, 1, 2, 3]);
        assert_eq!(covid_picks(&p_covid, &p_diseased, true), vec![0, 1, 2, 3, 7, 8]);
    }

    #[test]
    fn concordance_skips_other_disease() {
        assert!(concordance_applies(ScanLabel::Healthy));
        assert!(concordance_applies(ScanLabel::Covid));
        assert!(!concordance_applies(ScanLabel::Other));
    }

    #[test]
    fn noisy_weights_trust_the_closest_eighty_percent() {
        // Distances: 0.9, 0.1, 0.2, 0.8, 0.0, 0.3, 0.4, 0.5, 0.6, 0.7 → the two farthest
        // (indices 0 and 3) get 0.1.
        let targets = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0];
        let predictions = [0.1, 0.1, 0.8, 0.8, 1.0, 0.3, 0.6, 0.5, 0.4, 0.7];
        let weights = noisy_label_weights(&targets, &predictions);
        assert_eq!(weights, vec![0.1, 1.0, 1.0, 0.1, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]);
    }

    #[test]
    fn noisy_weights_round_the_trusted_count_up() {
        // 3 patches: 80% is 2.4, so 3 keep weight 1.
        let weights = noisy_label_weights(&[0.0, 1.0, 0.0], &[0.9, 0.0, 0.5]);
        assert_eq!(weights, vec![1.0; 3]);
    }

    #[test]
    fn class_balance_equalises_total_weight() {
        // Healthy weight 1 + 1 + 0.1 = 2.1; infected 1 + 0.1 = 1.1 → factor 2.1 / 1.1.
        let targets = [0.0, 0.0, 0.0, 1.0, 1.0];
        let weights = [1.0, 1.0, 0.1, 1.0, 0.1];
        let balanced = balance_classes(&targets, &weights);
        let factor = 2.1f32 / 1.1;
        let expected = [1.0, 1.0, 0.1, factor, 0.1 * factor];
        for (got, want) in balanced.iter().zip(expected) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
        let infected_total: f32 = balanced[3..].iter().sum();
        assert!((infected_total - 2.1).abs() < 1e-5);
    }

    #[test]
    fn class_balance_without_infection_changes_nothing() {
        let weights = [1.0, 0.1, 1.0];
        assert_eq!(balance_classes(&[0.0; 3], &weights), weights.to_vec());
    }

    /// A crop whose suspect pixels fill rows and columns `from..to`.
    fn square(from: usize, to: usize) -> Mask {
        let mut mask = Mask::filled(CROP_SIZE, CROP_SIZE, false);
        for r in from..to {
            for c in from..to {
                mask.set(r, c, true);
            }
        }
        mask
    }

    #[test]
    fn healthy_scans_have_no_infected_patches() {
        let suspect = square(0, CROP_SIZE);
        assert!(coarse_targets(ScanLabel::Healthy, &suspect).iter().all(|&t| t == 0.0));
        assert!(fine_targets(ScanLabel::Healthy, &suspect, &[1.0; 1024]).iter().all(|&t| t == 0.0));
    }

    #[test]
    fn coarse_target_needs_over_a_third_suspect() {
        // Patch (10, 10) covers pixels 66..102 (36 × 36 = 1296). A 21 × 21 suspect square
        // (441 pixels, 34%) inside it makes it infected; 20 × 20 (400, 30.9%) does not.
        let infected = coarse_targets(ScanLabel::Covid, &square(70, 91));
        assert_eq!(infected[10 * 32 + 10], 1.0);
        let healthy = coarse_targets(ScanLabel::Covid, &square(70, 90));
        assert_eq!(healthy[10 * 32 + 10], 0.0);
    }

    #[test]
    fn coarse_targets_apply_to_other_disease() {
        let targets = coarse_targets(ScanLabel::Other, &square(70, 91));
        assert_eq!(targets[10 * 32 + 10], 1.0);
    }

    #[test]
    fn fine_target_needs_suspect_pixels_and_a_confident_coarse_patch() {
        // Fine patch (50, 50) covers pixels 98..104. Coarse patches containing it along one
        // axis: k with 8k − 14 ≤ 98 and 104 ≤ 8k + 22, i.e. k = 11..=14.
        let suspect = square(98, 104);
        let mut coarse = vec![0.0f32; 1024];
        let none = fine_targets(ScanLabel::Covid, &suspect, &coarse);
        assert_eq!(none[50 * 128 + 50], 0.0);
        coarse[12 * 32 + 14] = 0.9;
        let covered = fine_targets(ScanLabel::Covid, &suspect, &coarse);
        assert_eq!(covered[50 * 128 + 50], 1.0);
    }

    #[test]
    fn fine_target_ignores_a_coarse_patch_that_only_overlaps() {
        // Coarse patch 15 covers 106..142 along each axis: it overlaps nothing of 98..104;
        // patch 10 covers 66..102 and only overlaps it.
        let suspect = square(98, 104);
        let mut coarse = vec![0.0f32; 1024];
        coarse[10 * 32 + 10] = 0.9;
        let targets = fine_targets(ScanLabel::Covid, &suspect, &coarse);
        assert_eq!(targets[50 * 128 + 50], 0.0);
    }

    #[test]
    fn fine_target_needs_over_three_quarters_suspect() {
        // 27 of 36 pixels (exactly 3/4) are not enough.
        let mut suspect = Mask::filled(CROP_SIZE, CROP_SIZE, false);
        for r in 98..104 {
            for c in 98..104 {
                suspect.set(r, c, !(r < 101 && c < 101));
            }
        }
        let coarse = vec![0.9f32; 1024];
        let targets = fine_targets(ScanLabel::Covid, &suspect, &coarse);
        assert_eq!(targets[50 * 128 + 50], 0.0);
    }

    #[test]
    fn evenly_spaced_slices_cover_the_scan() {
        assert_eq!(evenly_spaced(30, 10, 0.0), vec![0, 3, 6, 9, 12, 15, 18, 21, 24, 27]);
        assert_eq!(evenly_spaced(30, 10, 0.5), vec![1, 4, 7, 10, 13, 16, 19, 22, 25, 28]);
        assert_eq!(evenly_spaced(4, 10, 0.3), vec![0, 1, 2, 3]);
    }
}
