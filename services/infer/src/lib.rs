//! Inference on a preprocessed series: the two lobe networks of method.md §3–4 in tch,
//! slice aggregation (§5), and infection maps with the infected volume (§6).
//!
//! [`infer_series`] is a plain function of a [`Model`] and a [`PreprocessedSeries`], used
//! the same way by `lungstream analyze` and by the infer service. Inference runs without
//! autograd, in batches of lobes, on the CPU or on CUDA (half precision there).

pub mod aggregate;
pub mod config;
pub mod init;
pub mod maps;
pub mod maps_file;
#[cfg(feature = "torch")]
pub mod model;
#[cfg(feature = "torch")]
pub mod net;
#[cfg(feature = "torch")]
mod run;

use lungstream_preprocess::crop::CropBox;
use lungstream_preprocess::image::Mask;
use lungstream_preprocess::lungs::Side;
use lungstream_preprocess::Sides;
use lungstream_schemas::report::Decision;

pub use crate::aggregate::{aggregate, decide, LobeProbability};
pub use crate::config::NetworkConfig;
pub use crate::maps::FINE_GRID;
#[cfg(feature = "torch")]
pub use crate::model::{DeviceChoice, Model, ModelCard, ModelError};
#[cfg(feature = "torch")]
pub use crate::run::{batch_tensors, infer_many, infer_series, run_batch, BatchOutput, InferOptions, DEFAULT_BATCH};

/// Network outputs for one lobe.
#[derive(Clone, Debug)]
pub struct LobeResult {
    pub slice: usize,
    pub side: Side,
    pub position_mm: f64,
    /// Source box of the crop in the slice.
    pub crop_box: CropBox,
    /// P(diseased) of the lobe and its softened score (§5).
    pub p_diseased: f64,
    pub s_diseased: f64,
    /// P(COVID-19) of the lobe and its softened score.
    pub p_covid: f64,
    pub s_covid: f64,
    /// Attention weight of each coarse patch, diseased network, 32×32.
    pub attention: Vec<f32>,
    /// Coarse (32×32) and fine (128×128) infection probabilities.
    pub coarse: Vec<f32>,
    pub fine: Vec<f32>,
    /// Lung pixels of the crop (256×256), and those of them found infected.
    pub lung: Mask,
    pub infected: Mask,
    /// Infected and lung pixels at the slice's full resolution.
    pub infected_pixels: f64,
    pub lung_pixels: u32,
}

/// Infection of one slice (both sides).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SliceInfection {
    pub slice: usize,
    pub position_mm: f64,
    pub infected_pixels: f64,
    pub lung_pixels: u32,
    /// The higher P(diseased) of the slice's lobes.
    pub p_diseased: f64,
}

/// The result of both networks on a series.
#[derive(Clone, Debug)]
pub struct SeriesInference {
    pub lobes: Vec<LobeResult>,
    /// Scan probabilities after aggregation.
    pub p_diseased: f64,
    pub p_covid: f64,
    pub decision: Decision,
    /// Infected and lung voxels per side, at full resolution.
    pub infected_voxels: Sides<f64>,
    pub lung_voxels: Sides<f64>,
    /// Volume of one voxel, mL.
    pub voxel_ml: f64,
    /// Slices ordered by infected area (then by P(diseased)), worst first.
    pub slices_by_severity: Vec<SliceInfection>,
}

impl SeriesInference {
    /// Infected share of the lung, percent, per side.
    pub fn infected_percent(&self) -> Sides<f64> {
        Sides { right: percent(self.infected_voxels.right, self.lung_voxels.right), left: percent(self.infected_voxels.left, self.lung_voxels.left) }
    }

    /// Infected share of both lungs together, percent.
    pub fn infected_percent_total(&self) -> f64 {
        percent(self.infected_voxels.total(), self.lung_voxels.total())
    }
}

fn percent(part: f64, whole: f64) -> f64 {
    if whole > 0.0 {
        100.0 * part / whole
    } else {
        0.0
    }
}

/// Aggregation and volumes over the lobe results of a series.
pub fn summarise(mut lobes: Vec<LobeResult>, spacing_mm: [f64; 3]) -> SeriesInference {
    let probabilities = |pick: fn(&LobeResult) -> f64, lobes: &[LobeResult]| -> Vec<LobeProbability> {
        lobes.iter().map(|l| LobeProbability { slice: l.slice, side: l.side, probability: pick(l) }).collect()
    };
    let (s_diseased, p_diseased) = aggregate(&probabilities(|l| l.p_diseased, &lobes));
    let (s_covid, p_covid) = aggregate(&probabilities(|l| l.p_covid, &lobes));
    let mut infected_voxels = Sides::<f64>::default();
    let mut lung_voxels = Sides::<f64>::default();
    let mut slices = std::collections::BTreeMap::<usize, SliceInfection>::new();
    for (i, lobe) in lobes.iter_mut().enumerate() {
        lobe.s_diseased = s_diseased[i];
        lobe.s_covid = s_covid[i];
        let (infected, lung) = match lobe.side {
            Side::Right => (&mut infected_voxels.right, &mut lung_voxels.right),
            Side::Left => (&mut infected_voxels.left, &mut lung_voxels.left),
        };
        *infected += lobe.infected_pixels;
        *lung += f64::from(lobe.lung_pixels);
        let entry = slices.entry(lobe.slice).or_insert(SliceInfection { slice: lobe.slice, position_mm: lobe.position_mm, infected_pixels: 0.0, lung_pixels: 0, p_diseased: 0.0 });
        entry.infected_pixels += lobe.infected_pixels;
        entry.lung_pixels += lobe.lung_pixels;
        entry.p_diseased = entry.p_diseased.max(lobe.p_diseased);
    }
    let mut slices_by_severity: Vec<SliceInfection> = slices.into_values().collect();
    slices_by_severity.sort_by(|a, b| b.infected_pixels.total_cmp(&a.infected_pixels).then(b.p_diseased.total_cmp(&a.p_diseased)).then(a.slice.cmp(&b.slice)));
    SeriesInference {
        lobes,
        p_diseased,
        p_covid,
        decision: decide(p_diseased, p_covid),
        infected_voxels,
        lung_voxels,
        voxel_ml: spacing_mm.iter().product::<f64>() / 1000.0,
        slices_by_severity,
    }
}
