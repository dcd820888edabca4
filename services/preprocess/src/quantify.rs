//! Model-free quantification: the share of lung volume in standard HU bands and in the
//! pseudo-infection band, reported beside the networks' infected share.

use serde::{Deserialize, Serialize};

use crate::crop::CropBox;
use crate::image::Mask;
use crate::lungs::Side;
use crate::patches::InfectionBand;
use crate::Lobe;

/// Ground-glass opacity, HU (inclusive).
pub const GROUND_GLASS_HU: (i16, i16) = (-700, -300);
/// Consolidation, HU (above the ground-glass band, inclusive).
pub const CONSOLIDATION_HU: (i16, i16) = (-299, 100);

/// Lung pixel counts per HU band, per side (index 0 right, 1 left).
#[derive(Clone, Debug, Default)]
pub(crate) struct HuBandCounts {
    lung: [u64; 2],
    ground_glass: [u64; 2],
    consolidation: [u64; 2],
}

impl HuBandCounts {
    /// Counts the lung pixels of one side on one slice (`hu` row-major like `mask`),
    /// looking only inside the mask's bounding box.
    pub(crate) fn add(&mut self, side: Side, hu: &[i16], mask: &Mask, crop_box: &CropBox) {
        let s = side_index(side);
        for r in crop_box.row..crop_box.row + crop_box.rows {
            let start = r * mask.columns + crop_box.column;
            let range = start..start + crop_box.columns;
            for (value, lung) in hu[range.clone()].iter().zip(&mask.data[range]) {
                if !lung {
                    continue;
                }
                self.lung[s] += 1;
                self.ground_glass[s] += u64::from((GROUND_GLASS_HU.0..=GROUND_GLASS_HU.1).contains(value));
                self.consolidation[s] += u64::from((CONSOLIDATION_HU.0..=CONSOLIDATION_HU.1).contains(value));
            }
        }
    }

    pub(crate) fn merge(mut self, other: &HuBandCounts) -> Self {
        for s in 0..2 {
            self.lung[s] += other.lung[s];
            self.ground_glass[s] += other.ground_glass[s];
            self.consolidation[s] += other.consolidation[s];
        }
        self
    }
}

/// Shares of one side's (or both sides') lung volume, percent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SideShares {
    pub lung_voxels: u64,
    pub ground_glass_percent: f64,
    pub consolidation_percent: f64,
    /// Ground glass and consolidation together: the model-free infected share.
    pub infected_percent: f64,
    /// Lung in the pseudo-infection band (measured on the lobe crops).
    pub band_percent: f64,
}

/// Model-free shares per side and for both lungs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelFreeShares {
    pub right: SideShares,
    pub left: SideShares,
    pub total: SideShares,
}

pub(crate) fn model_free_shares(counts: &HuBandCounts, lobes: &[Lobe], band: Option<&InfectionBand>) -> ModelFreeShares {
    // Band shares from the crops; a scaled crop's pixel stands for 1 / scale² slice pixels.
    let mut band_weight = [0f64; 2];
    let mut lung_weight = [0f64; 2];
    for lobe in lobes {
        let s = side_index(lobe.side);
        let weight = 1.0 / (lobe.crop_box.scale * lobe.crop_box.scale);
        for (value, lung) in lobe.channels[1].data.iter().zip(&lobe.mask.data) {
            if *lung {
                lung_weight[s] += weight;
                if band.is_some_and(|b| b.contains(f64::from(*value))) {
                    band_weight[s] += weight;
                }
            }
        }
    }
    let percent = |part: f64, whole: f64| if whole > 0.0 { 100.0 * part / whole } else { 0.0 };
    let side = |s: usize| SideShares {
        lung_voxels: counts.lung[s],
        ground_glass_percent: percent(counts.ground_glass[s] as f64, counts.lung[s] as f64),
        consolidation_percent: percent(counts.consolidation[s] as f64, counts.lung[s] as f64),
        infected_percent: percent((counts.ground_glass[s] + counts.consolidation[s]) as f64, counts.lung[s] as f64),
        band_percent: percent(band_weight[s], lung_weight[s]),
    };
    let lung = counts.lung[0] + counts.lung[1];
    let ground_glass = counts.ground_glass[0] + counts.ground_glass[1];
    let consolidation = counts.consolidation[0] + counts.consolidation[1];
    ModelFreeShares {
        right: side(0),
        left: side(1),
        total: SideShares {
            lung_voxels: lung,
            ground_glass_percent: percent(ground_glass as f64, lung as f64),
            consolidation_percent: percent(consolidation as f64, lung as f64),
            infected_percent: percent((ground_glass + consolidation) as f64, lung as f64),
            band_percent: percent(band_weight[0] + band_weight[1], lung_weight[0] + lung_weight[1]),
        },
    }
}

fn side_index(side: Side) -> usize {
    match side {
        Side::Right => 0,
        Side::Left => 1,
    }
}
