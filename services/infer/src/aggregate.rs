//! From lobe probabilities to a scan probability (method.md §5).
//!
//! For each network and each side, with `p_i` the lobe probability on slice `i`:
//! `s_i = min(p_i, max(p_{i-1}, p_{i+1}))`. A sign of disease counts only when it
//! continues over at least two consecutive slices. A neighbour without a lobe (the edge
//! of the volume, or a slice where no lung was found on that side) counts as 0. The scan
//! probability is the maximum of `s_i` over slices and sides.

use lungstream_preprocess::lungs::Side;
use lungstream_schemas::report::Decision;

/// Threshold of both decisions.
pub const DECISION_THRESHOLD: f64 = 0.5;

/// One lobe's probability from one network, with where the lobe is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LobeProbability {
    pub slice: usize,
    pub side: Side,
    pub probability: f64,
}

/// Computes the softened score `s_i` of every lobe (in the order given) and the scan
/// probability.
///
/// # Panics
///
/// When two lobes share a slice and side.
pub fn aggregate(lobes: &[LobeProbability]) -> (Vec<f64>, f64) {
    let mut by_side: [std::collections::BTreeMap<usize, f64>; 2] = Default::default();
    for lobe in lobes {
        let previous = by_side[side_index(lobe.side)].insert(lobe.slice, lobe.probability);
        assert!(previous.is_none(), "two lobes on slice {} side {:?}", lobe.slice, lobe.side);
    }
    let softened: Vec<f64> = lobes
        .iter()
        .map(|lobe| {
            let side = &by_side[side_index(lobe.side)];
            let neighbour = |slice: Option<usize>| slice.and_then(|s| side.get(&s)).copied().unwrap_or(0.0);
            let best_neighbour = neighbour(lobe.slice.checked_sub(1)).max(neighbour(lobe.slice.checked_add(1)));
            lobe.probability.min(best_neighbour)
        })
        .collect();
    let scan = softened.iter().copied().fold(0.0, f64::max);
    (softened, scan)
}

/// Decides the scan: diseased when P(diseased) > 0.5, then COVID-19 when P(COVID) > 0.5,
/// else other disease. Healthy otherwise.
pub fn decide(p_diseased: f64, p_covid: f64) -> Decision {
    if p_diseased <= DECISION_THRESHOLD {
        Decision::Healthy
    } else if p_covid > DECISION_THRESHOLD {
        Decision::Covid19
    } else {
        Decision::OtherDisease
    }
}

fn side_index(side: Side) -> usize {
    match side {
        Side::Right => 0,
        Side::Left => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn right(probabilities: &[(usize, f64)]) -> Vec<LobeProbability> {
        probabilities.iter().map(|&(slice, probability)| LobeProbability { slice, side: Side::Right, probability }).collect()
    }

    #[test]
    fn softened_scores_table() {
        // (lobes on the right side as (slice, p), expected softened scores, expected scan).
        let cases: &[(&[(usize, f64)], &[f64], f64)] = &[
            // An isolated high slice is suppressed: both neighbours are low.
            (&[(0, 0.1), (1, 0.9), (2, 0.1)], &[0.1, 0.1, 0.1], 0.1),
            // A run of two keeps the lower of the pair.
            (&[(0, 0.1), (1, 0.9), (2, 0.7), (3, 0.1)], &[0.1, 0.7, 0.7, 0.1], 0.7),
            // A run at the first slice: the missing neighbour counts as 0.
            (&[(0, 0.8), (1, 0.95), (2, 0.2)], &[0.8, 0.8, 0.2], 0.8),
            // At the last slice the same.
            (&[(4, 0.3), (5, 0.9)], &[0.3, 0.3], 0.3),
            // A single lobe has no neighbour at all.
            (&[(3, 0.99)], &[0.0], 0.0),
            // A gap (no lung on slice 2) breaks the run.
            (&[(1, 0.9), (3, 0.9)], &[0.0, 0.0], 0.0),
            // Slice 0 has no previous slice; index arithmetic must not wrap.
            (&[(0, 0.6), (1, 0.6)], &[0.6, 0.6], 0.6),
        ];
        for (lobes, expected, scan) in cases {
            let (softened, got) = aggregate(&right(lobes));
            for (s, e) in softened.iter().zip(*expected) {
                assert!((s - e).abs() < 1e-12, "{lobes:?}: softened {softened:?}, expected {expected:?}");
            }
            assert!((got - scan).abs() < 1e-12, "{lobes:?}: scan {got}, expected {scan}");
        }
    }

    #[test]
    fn sides_aggregate_separately() {
        // The left side has a run of two at 0.6. The high right lobe on slice 0 touches
        // only a left lobe, so it is not a run and the maximum is 0.6.
        let lobes = vec![
            LobeProbability { slice: 0, side: Side::Right, probability: 0.9 },
            LobeProbability { slice: 1, side: Side::Left, probability: 0.9 },
            LobeProbability { slice: 2, side: Side::Left, probability: 0.6 },
        ];
        let (softened, scan) = aggregate(&lobes);
        assert_eq!(softened, vec![0.0, 0.6, 0.6]);
        assert_eq!(scan, 0.6);
    }

    #[test]
    fn decision_thresholds() {
        assert_eq!(decide(0.5, 0.9), Decision::Healthy);
        assert_eq!(decide(0.51, 0.9), Decision::Covid19);
        assert_eq!(decide(0.9, 0.5), Decision::OtherDisease);
        assert_eq!(decide(0.1, 0.1), Decision::Healthy);
    }

    #[test]
    #[should_panic(expected = "two lobes on slice 1")]
    fn duplicate_lobes_panic() {
        aggregate(&right(&[(1, 0.5), (1, 0.6)]));
    }
}
