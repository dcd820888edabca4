//! Two-cluster K-means on a histogram of integer values.

/// Result of [`kmeans_two_clusters`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TwoClusters {
    pub low_centre: f64,
    pub high_centre: f64,
}

impl TwoClusters {
    /// Values at or below this belong to the low cluster: the midpoint of the centres,
    /// where a value is equally far from both.
    pub fn threshold(&self) -> f64 {
        0.5 * (self.low_centre + self.high_centre)
    }

    /// Returns whether `value` belongs to the low cluster.
    pub fn is_low(&self, value: f64) -> bool {
        value <= self.threshold()
    }
}

/// Runs 1-D K-means with two clusters over values given as a histogram
/// (`histogram[v]` = how many times value `v` occurs).
///
/// The centres start at the smallest and the largest value present and move to the means
/// of their clusters until the assignment no longer changes, so the result is
/// deterministic and each iteration costs O(bins), not O(pixels). Returns `None` when no
/// value is present; when only one value is, both centres are that value.
pub fn kmeans_two_clusters(histogram: &[u64]) -> Option<TwoClusters> {
    let first = histogram.iter().position(|c| *c > 0)?;
    let last = histogram.iter().rposition(|c| *c > 0)?;
    let mut clusters = TwoClusters {
        low_centre: first as f64,
        high_centre: last as f64,
    };
    // Prefix sums of counts and of count × value give each cluster's mean in O(1).
    let mut counts = vec![0u64; histogram.len() + 1];
    let mut sums = vec![0f64; histogram.len() + 1];
    for (v, count) in histogram.iter().enumerate() {
        counts[v + 1] = counts[v] + count;
        sums[v + 1] = sums[v] + *count as f64 * v as f64;
    }
    let mut previous_split = usize::MAX;
    for _ in 0..100 {
        // Values 0 ..= split go to the low cluster.
        let split = (clusters.threshold().floor().max(0.0) as usize).min(histogram.len() - 1);
        if split == previous_split {
            break;
        }
        previous_split = split;
        let (low_count, low_sum) = (counts[split + 1], sums[split + 1]);
        let high_count = counts[histogram.len()] - low_count;
        let high_sum = sums[histogram.len()] - low_sum;
        if low_count > 0 {
            clusters.low_centre = low_sum / low_count as f64;
        }
        if high_count > 0 {
            clusters.high_centre = high_sum / high_count as f64;
        }
    }
    Some(clusters)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_separated_groups() {
        // 10 × value 2, 10 × value 4, 20 × value 20, 20 × value 22: means 3 and 21.
        let mut histogram = vec![0u64; 30];
        histogram[2] = 10;
        histogram[4] = 10;
        histogram[20] = 20;
        histogram[22] = 20;
        let clusters = kmeans_two_clusters(&histogram).unwrap();
        assert_eq!(clusters.low_centre, 3.0);
        assert_eq!(clusters.high_centre, 21.0);
        assert_eq!(clusters.threshold(), 12.0);
        assert!(clusters.is_low(12.0));
        assert!(!clusters.is_low(12.5));
    }

    #[test]
    fn unbalanced_groups_move_the_threshold() {
        // Start: centres 0 and 10, split at 5. Low {0: 90}, high {6: 5, 10: 5} → 0 and 8;
        // split at 4, unchanged assignment.
        let mut histogram = vec![0u64; 11];
        histogram[0] = 90;
        histogram[6] = 5;
        histogram[10] = 5;
        let clusters = kmeans_two_clusters(&histogram).unwrap();
        assert_eq!((clusters.low_centre, clusters.high_centre), (0.0, 8.0));
    }

    #[test]
    fn empty_and_single_value() {
        assert_eq!(kmeans_two_clusters(&[0, 0, 0]), None);
        let single = kmeans_two_clusters(&[0, 7, 0]).unwrap();
        assert_eq!((single.low_centre, single.high_centre), (1.0, 1.0));
    }
}
