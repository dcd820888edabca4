//! The loss terms of weak supervision, on tensors.
//!
//! Loss = lobe cross-entropy + 1 × concordance + 0.01 × patch loss. The networks output
//! probabilities (after the sigmoid), so the cross-entropies clamp them away from 0 and 1
//! before taking logarithms.

use tch::{Kind, Reduction, Tensor};

/// Weight of the concordance term.
pub const CONCORDANCE_WEIGHT: f64 = 1.0;
/// Weight of the coarse patch term.
pub const PATCH_WEIGHT: f64 = 0.01;
/// Probabilities are clamped to `EPSILON..1 - EPSILON` inside the logarithms.
pub const EPSILON: f64 = 1e-6;

/// Mean binary cross-entropy of probabilities `p` against targets (same shape).
pub fn lobe_loss(p: &Tensor, targets: &Tensor) -> Tensor {
    p.clamp(EPSILON, 1.0 - EPSILON).binary_cross_entropy(targets, None::<Tensor>, Reduction::Mean)
}

/// Mean squared difference between each lobe's probability (`N`) and the largest coarse
/// patch probability of that lobe (`N × 32 × 32`).
pub fn concordance_loss(p: &Tensor, coarse: &Tensor) -> Tensor {
    let strongest = coarse.flatten(1, -1).amax([1i64].as_slice(), false);
    p.mse_loss(&strongest, Reduction::Mean)
}

/// Weighted binary cross-entropy of patch probabilities: Σ w·bce / Σ w over every patch.
/// **[choice]** Normalised by the total weight, so the term's scale does not depend on the
/// number of patches in a batch; the paper does not say.
pub fn patch_loss(p: &Tensor, targets: &Tensor, weights: &Tensor) -> Tensor {
    let per_patch = p.clamp(EPSILON, 1.0 - EPSILON).binary_cross_entropy(targets, None::<Tensor>, Reduction::None);
    let total = weights.sum(Kind::Float).clamp_min(1e-12);
    (per_patch * weights).sum(Kind::Float) / total
}

/// The diseased network's loss: cross-entropy of the selected lobes, concordance over the
/// lobes it applies to, and the weighted patch loss. Returns the total and the three
/// terms as plain numbers for the metrics file.
pub struct DiseasedLoss {
    pub total: Tensor,
    pub lobe: f64,
    pub concordance: f64,
    pub patch: f64,
}

/// Combines the three terms: concordance weighs 1, the patch loss `patch_weight` (the
/// paper's is [`PATCH_WEIGHT`]).
pub fn diseased_loss(lobe: Tensor, concordance: Option<Tensor>, patch: Tensor, patch_weight: f64) -> DiseasedLoss {
    let value = |t: &Tensor| t.double_value(&[]);
    let (lobe_value, patch_value) = (value(&lobe), value(&patch));
    let concordance_value = concordance.as_ref().map_or(0.0, value);
    let mut total = lobe + patch * patch_weight;
    if let Some(c) = concordance {
        total += c * CONCORDANCE_WEIGHT;
    }
    DiseasedLoss { total, lobe: lobe_value, concordance: concordance_value, patch: patch_value }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(t: &Tensor, want: f64) -> bool {
        (t.double_value(&[]) - want).abs() < 1e-5
    }

    #[test]
    fn lobe_loss_is_mean_cross_entropy() {
        let p = Tensor::from_slice(&[0.8f32, 0.25]);
        let t = Tensor::from_slice(&[1.0f32, 0.0]);
        // (−ln 0.8 − ln 0.75) / 2
        let want = (-(0.8f64).ln() - (0.75f64).ln()) / 2.0;
        assert!(close(&lobe_loss(&p, &t), want));
    }

    #[test]
    fn lobe_loss_stays_finite_at_certainty() {
        let p = Tensor::from_slice(&[0.0f32, 1.0]);
        let t = Tensor::from_slice(&[1.0f32, 0.0]);
        assert!(lobe_loss(&p, &t).double_value(&[]).is_finite());
    }

    #[test]
    fn concordance_compares_with_the_strongest_patch() {
        let p = Tensor::from_slice(&[0.9f32, 0.1]);
        let mut coarse = vec![0.0f32; 2 * 1024];
        coarse[17] = 0.5; // lobe 0: strongest patch 0.5 → (0.4)²
        coarse[1024 + 3] = 0.3; // lobe 1: strongest 0.3 → (0.2)²
        let coarse = Tensor::from_slice(&coarse).view([2, 32, 32]);
        let want = (0.4f64 * 0.4 + 0.2 * 0.2) / 2.0;
        assert!(close(&concordance_loss(&p, &coarse), want));
    }

    #[test]
    fn patch_loss_weights_each_patch() {
        let p = Tensor::from_slice(&[0.5f32, 0.9, 0.2]);
        let t = Tensor::from_slice(&[1.0f32, 1.0, 0.0]);
        let w = Tensor::from_slice(&[2.0f32, 1.0, 0.1]);
        let bce = [-(0.5f64).ln(), -(0.9f64).ln(), -(0.8f64).ln()];
        let want = (2.0 * bce[0] + bce[1] + 0.1 * bce[2]) / 3.1;
        assert!(close(&patch_loss(&p, &t, &w), want));
    }

    #[test]
    fn total_uses_the_paper_weights() {
        let loss = diseased_loss(Tensor::from(0.5f32), Some(Tensor::from(0.25f32)), Tensor::from(2.0f32), PATCH_WEIGHT);
        assert!(close(&loss.total, 0.5 + 0.25 + 0.02));
    }

    #[test]
    fn total_without_concordance_drops_the_term() {
        let loss = diseased_loss(Tensor::from(0.5f32), None, Tensor::from(2.0f32), PATCH_WEIGHT);
        assert!(close(&loss.total, 0.52));
    }
}
