//! Reports of analysed series: `report.json` (the [`Report`] type of the schemas crate),
//! PNG overlays of the worst slices, and a self-contained HTML page.
//!
//! [`build_report`] is a plain function of the slices to draw, the preprocessing facts
//! and the inference result; [`write_report`] puts its output in a folder.

pub mod api;
pub mod config;
pub mod db;
pub mod html;
pub mod overlay;
pub mod pages;
pub mod service;

use std::path::Path;

use lungstream_dicom::{CtVolume, SliceImage};
use lungstream_infer::{LobeResult, SeriesInference};
use lungstream_preprocess::{SeriesFacts, SideShares, Sides};
use lungstream_schemas::report::{Infection, LobeScores, ModelFree, ModelSummary, PerSide, Probabilities, Report, SeriesSummary, Timings, WorstSlice, REPORT_SCHEMA_VERSION};

pub use crate::overlay::{render_overlay, RgbImage};

/// Default number of worst slices drawn as overlays.
pub const DEFAULT_WORST_SLICES: usize = 4;

/// Source of the Hounsfield units of the slices drawn as overlays.
pub trait SlicePixels {
    /// Returns the values, rows and columns of slice `slice` (counted from the feet) in the
    /// canonical layout, or `None` when the slice is not available.
    fn slice_hu(&self, slice: usize) -> Option<(&[i16], usize, usize)>;
}

impl SlicePixels for CtVolume {
    fn slice_hu(&self, slice: usize) -> Option<(&[i16], usize, usize)> {
        (slice < self.dims.slices).then(|| (self.slice(slice), self.dims.rows, self.dims.columns))
    }
}

/// Single decoded instances by slice index: what the infer service fetches for the worst
/// slices instead of the whole volume.
impl SlicePixels for std::collections::HashMap<usize, SliceImage> {
    fn slice_hu(&self, slice: usize) -> Option<(&[i16], usize, usize)> {
        self.get(&slice).map(|s| (s.hu.as_slice(), s.rows, s.columns))
    }
}

/// Inputs of a report.
pub struct ReportInputs<'a> {
    /// Pixels of the worst slices, for the overlays.
    pub slices: &'a dyn SlicePixels,
    /// The pseudonymous patient key of the series.
    pub patient_key: Option<String>,
    pub facts: &'a SeriesFacts,
    pub inference: &'a SeriesInference,
    pub model: ModelSummary,
    pub timings: Timings,
    /// Number of worst slices to show.
    pub worst_slices: usize,
}

/// A report and the files that go with it.
pub struct RenderedReport {
    pub report: Report,
    /// Overlay images: file name and PNG bytes, in the order of `report.worst_slices`.
    pub overlays: Vec<(String, Vec<u8>)>,
}

/// Sentence shown wherever probabilities appear when the weights are untrained.
pub fn untrained_warning(model: &ModelSummary) -> String {
    format!(
        "Model {} ({}) is untrained: its probabilities, decision and infected areas mean nothing. Use a trained model file for real results.",
        model.id, model.version
    )
}

/// Sentence of every report made with weights that are not for use on patients.
pub fn research_only_warning(model: &ModelSummary) -> String {
    format!(
        "Model {} ({}) is for research and demonstration only, not for clinical use. Trained on: {}",
        model.id, model.version, model.trained_on
    )
}

fn per_side(sides: Sides<f64>) -> PerSide {
    PerSide { right: sides.right, left: sides.left, total: sides.right + sides.left }
}

fn shares(right: &SideShares, left: &SideShares, total: &SideShares, pick: fn(&SideShares) -> f64) -> PerSide {
    PerSide { right: pick(right), left: pick(left), total: pick(total) }
}

/// Assembles the report and renders the overlays of the worst slices.
pub fn build_report(inputs: &ReportInputs) -> RenderedReport {
    let (facts, inference) = (inputs.facts, inputs.inference);
    let percent = inference.infected_percent();
    let pixel_mm2 = facts.spacing_mm[1] * facts.spacing_mm[2];
    let mut worst_slices = Vec::new();
    let mut overlays = Vec::new();
    let mut missing_slices = Vec::new();
    for slice in inference.slices_by_severity.iter().take(inputs.worst_slices) {
        let lobes: Vec<&LobeResult> = inference.lobes.iter().filter(|l| l.slice == slice.slice).collect();
        let name = match inputs.slices.slice_hu(slice.slice) {
            Some((hu, rows, columns)) => {
                let name = format!("slice-{:04}.png", slice.slice);
                overlays.push((name.clone(), render_overlay(hu, rows, columns, &lobes).to_png()));
                name
            }
            None => {
                missing_slices.push(slice.slice);
                String::new()
            }
        };
        worst_slices.push(WorstSlice {
            slice: slice.slice,
            position_mm: slice.position_mm,
            infected_mm2: slice.infected_pixels * pixel_mm2,
            infected_percent: if slice.lung_pixels > 0 { 100.0 * slice.infected_pixels / f64::from(slice.lung_pixels) } else { 0.0 },
            p_diseased: slice.p_diseased,
            overlay: name,
        });
    }

    let mut warnings = Vec::new();
    if !inputs.model.trained {
        warnings.push(untrained_warning(&inputs.model));
    } else if inputs.model.research_only {
        warnings.push(research_only_warning(&inputs.model));
    }
    if !facts.background_plausible {
        warnings.push(format!(
            "The air outside the body has a median of {:.0} HU instead of about -1000 HU (lung cut by the field of view, or unusual padding); the normalisation may be off.",
            facts.background_median_hu
        ));
    }

    if !missing_slices.is_empty() {
        warnings.push(format!("The images of slices {missing_slices:?} could not be read, so they have no overlay."));
    }

    let mf = &facts.model_free;
    let report = Report {
        schema_version: REPORT_SCHEMA_VERSION.to_string(),
        generator: format!("lungstream {}", env!("CARGO_PKG_VERSION")),
        series: SeriesSummary {
            series_uid: facts.series_uid.clone(),
            patient_key: inputs.patient_key.clone().unwrap_or_default(),
            slices: facts.slices,
            slices_with_lungs: facts.slices_with_lungs,
            spacing_mm: facts.spacing_mm,
            lung_volume_ml: per_side(facts.lung_volume_ml),
            background_median_hu: facts.background_median_hu,
            background_plausible: facts.background_plausible,
        },
        model: inputs.model.clone(),
        decision: inference.decision,
        probabilities: Probabilities { diseased: inference.p_diseased, covid19: inference.p_covid },
        infection: Infection {
            percent: PerSide { right: percent.right, left: percent.left, total: inference.infected_percent_total() },
            volume_ml: per_side(Sides { right: inference.infected_voxels.right * inference.voxel_ml, left: inference.infected_voxels.left * inference.voxel_ml }),
            infected_voxels: per_side(inference.infected_voxels),
            lung_voxels: per_side(inference.lung_voxels),
        },
        model_free: ModelFree {
            ground_glass_percent: shares(&mf.right, &mf.left, &mf.total, |s| s.ground_glass_percent),
            consolidation_percent: shares(&mf.right, &mf.left, &mf.total, |s| s.consolidation_percent),
            infected_percent: shares(&mf.right, &mf.left, &mf.total, |s| s.infected_percent),
            band_percent: shares(&mf.right, &mf.left, &mf.total, |s| s.band_percent),
        },
        worst_slices,
        lobes: inference
            .lobes
            .iter()
            .map(|l| LobeScores {
                slice: l.slice,
                side: l.side.as_str().to_string(),
                position_mm: l.position_mm,
                p_diseased: l.p_diseased,
                s_diseased: l.s_diseased,
                p_covid19: l.p_covid,
                s_covid19: l.s_covid,
                infected_pixels: l.infected_pixels,
                lung_pixels: l.lung_pixels,
            })
            .collect(),
        timings_ms: inputs.timings,
        warnings,
    };
    RenderedReport { report, overlays }
}

/// Reasons the report cannot be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}")]
pub struct WriteError {
    path: String,
    source: std::io::Error,
}

/// Checks that `dir` exists or can be created and accepts files, so a bad output folder
/// fails before minutes of work.
pub fn prepare_output(dir: &Path) -> Result<(), WriteError> {
    let error = |path: &Path, source| WriteError { path: path.display().to_string(), source };
    std::fs::create_dir_all(dir).map_err(|e| error(dir, e))?;
    let probe = dir.join(".lungstream-write-check");
    std::fs::write(&probe, b"").map_err(|e| error(&probe, e))?;
    std::fs::remove_file(&probe).map_err(|e| error(&probe, e))
}

/// Writes `report.json`, the overlays and `report.html` into `dir` (created if needed).
/// Overlays of an earlier report in the same folder (`slice-*.png`) are removed first,
/// so images of two series never sit side by side.
pub fn write_report(dir: &Path, rendered: &RenderedReport) -> Result<(), WriteError> {
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).map_err(|source| WriteError { path: path.display().to_string(), source })
    };
    prepare_output(dir)?;
    let entries = std::fs::read_dir(dir).map_err(|source| WriteError { path: dir.display().to_string(), source })?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("slice-") && name.ends_with(".png") {
            std::fs::remove_file(entry.path()).map_err(|source| WriteError { path: entry.path().display().to_string(), source })?;
        }
    }
    let json = serde_json::to_string_pretty(&rendered.report).expect("a report serialises");
    write("report.json", format!("{json}\n").as_bytes())?;
    for (name, png) in &rendered.overlays {
        write(name, png)?;
    }
    write("report.html", html::render_html(rendered).as_bytes())
}
