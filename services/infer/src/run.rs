//! Running both networks over the lobes of a series.

use lungstream_preprocess::crop::CROP_SIZE;
use lungstream_preprocess::normalise::NORMALISED_MAX;
use lungstream_preprocess::patches::COARSE_GRID;
use lungstream_preprocess::{Lobe, PreprocessedSeries};
use tch::{Device, Kind, Tensor};

use crate::maps::{self, FINE_GRID};
use crate::model::Model;
use crate::{summarise, LobeResult, SeriesInference};

/// Lobes per forward pass when none is given.
pub const DEFAULT_BATCH: usize = 8;

/// Options of [`infer_series`].
#[derive(Clone, Copy, Debug)]
pub struct InferOptions {
    /// Lobes per forward pass.
    pub batch: usize,
}

impl Default for InferOptions {
    fn default() -> Self {
        InferOptions { batch: DEFAULT_BATCH }
    }
}

/// Network outputs of one batch, copied to the CPU as float32.
pub struct BatchOutput {
    pub p_diseased: Vec<f32>,
    pub p_covid: Vec<f32>,
    pub attention: Vec<f32>,
    pub coarse: Vec<f32>,
    pub fine: Vec<f32>,
}

/// Builds the network inputs of a batch of lobes: `B × 3 × 256 × 256` in 0..1 and the periphery
/// distances `B × 1 × 32 × 32`.
pub fn batch_tensors(lobes: &[&Lobe]) -> (Tensor, Tensor) {
    let pixels = CROP_SIZE * CROP_SIZE;
    let cells = COARSE_GRID * COARSE_GRID;
    let scale = 1.0 / f32::from(NORMALISED_MAX);
    let mut input = Vec::with_capacity(lobes.len() * 3 * pixels);
    let mut distance = Vec::with_capacity(lobes.len() * cells);
    for lobe in lobes {
        for channel in &lobe.channels {
            input.extend(channel.data.iter().map(|&v| f32::from(v) * scale));
        }
        distance.extend(lobe.patch_distance.data.iter().map(|&d| d as f32));
    }
    let b = lobes.len() as i64;
    let size = CROP_SIZE as i64;
    let grid = COARSE_GRID as i64;
    (Tensor::from_slice(&input).view([b, 3, size, size]), Tensor::from_slice(&distance).view([b, 1, grid, grid]))
}

/// Runs both networks on one batch without autograd.
///
/// # Errors
///
/// When libtorch fails (out of memory, a device error).
pub fn run_batch(model: &Model, input: &Tensor, distance: &Tensor) -> Result<BatchOutput, tch::TchError> {
    let _guard = tch::no_grad_guard();
    let diseased = model.diseased.forward(input, distance);
    let covid = model.covid.forward(input, distance);
    let to_vec = |t: &Tensor| Vec::<f32>::try_from(&t.to_device(Device::Cpu).to_kind(Kind::Float).flatten(0, -1));
    let coarse = diseased.coarse.as_ref().expect("the diseased network has infection heads");
    let fine = diseased.fine.as_ref().expect("the diseased network has infection heads");
    Ok(BatchOutput {
        p_diseased: to_vec(&diseased.probability)?,
        p_covid: to_vec(&covid.probability)?,
        attention: to_vec(&diseased.attention)?,
        coarse: to_vec(coarse)?,
        fine: to_vec(fine)?,
    })
}

/// Runs both networks over every lobe of a series, aggregates the slices and measures the
/// infected volume. `progress` is called with the number of lobes done after each batch.
///
/// # Errors
///
/// When libtorch fails.
pub fn infer_series(model: &Model, series: &PreprocessedSeries, options: InferOptions, progress: &mut dyn FnMut(usize)) -> Result<SeriesInference, tch::TchError> {
    let mut results = infer_many(model, &[series], options, progress)?;
    Ok(results.pop().expect("one result per series"))
}

/// As [`infer_series`] for several series at once: their lobes run through the networks in
/// shared batches, so a device stays busy even when series are small. `progress` gets the
/// number of lobes done over all series.
///
/// # Errors
///
/// When libtorch fails.
pub fn infer_many(model: &Model, series: &[&PreprocessedSeries], options: InferOptions, progress: &mut dyn FnMut(usize)) -> Result<Vec<SeriesInference>, tch::TchError> {
    let batch = options.batch.max(1);
    let cells = COARSE_GRID * COARSE_GRID;
    let fine_cells = FINE_GRID * FINE_GRID;
    let all: Vec<(usize, &Lobe)> = series.iter().enumerate().flat_map(|(s, one)| one.lobes.iter().map(move |lobe| (s, lobe))).collect();
    let mut per_series: Vec<Vec<LobeResult>> = series.iter().map(|one| Vec::with_capacity(one.lobes.len())).collect();
    let mut done = 0;
    for chunk in all.chunks(batch) {
        let refs: Vec<&Lobe> = chunk.iter().map(|(_, lobe)| *lobe).collect();
        let (input, distance) = batch_tensors(&refs);
        let out = run_batch(model, &input, &distance)?;
        for (i, (s, lobe)) in chunk.iter().enumerate() {
            let coarse = out.coarse[i * cells..(i + 1) * cells].to_vec();
            let fine = out.fine[i * fine_cells..(i + 1) * fine_cells].to_vec();
            let infected = maps::infection_mask(&coarse, &fine, &lobe.mask);
            let infected_pixels = maps::infected_slice_pixels(infected.count(), lobe.mask.count(), lobe.lung_pixels);
            per_series[*s].push(LobeResult {
                slice: lobe.slice,
                side: lobe.side,
                position_mm: lobe.position_mm,
                crop_box: lobe.crop_box,
                p_diseased: f64::from(out.p_diseased[i]),
                s_diseased: 0.0,
                p_covid: f64::from(out.p_covid[i]),
                s_covid: 0.0,
                attention: out.attention[i * cells..(i + 1) * cells].to_vec(),
                coarse,
                fine,
                lung: lobe.mask.clone(),
                infected,
                infected_pixels,
                lung_pixels: lobe.lung_pixels,
            });
        }
        done += chunk.len();
        progress(done);
    }
    Ok(per_series.into_iter().zip(series).map(|(lobes, one)| summarise(lobes, one.facts.spacing_mm)).collect())
}
