//! `report.json`: what `lungstream analyze` (and later the report service) writes for one
//! series. It carries no DICOM patient attribute: the patient appears only as the
//! pseudonymous key.
//!
//! The JSON Schema of this type is checked in at `schemas/json/report.v1.schema.json`;
//! a test in [`crate::events`] regenerates it and fails when the two differ.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Version of the report format. A reader rejects another major version.
pub const REPORT_SCHEMA_VERSION: &str = "1.0";

/// The scan-level decision of method.md §5.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Healthy,
    Covid19,
    OtherDisease,
}

impl Decision {
    /// Words for people: "healthy", "COVID-19 pneumonia", "other lung disease".
    pub fn describe(self) -> &'static str {
        match self {
            Decision::Healthy => "healthy",
            Decision::Covid19 => "COVID-19 pneumonia",
            Decision::OtherDisease => "other lung disease",
        }
    }
}

/// A value for the patient's right lung, left lung, and both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PerSide {
    pub right: f64,
    pub left: f64,
    pub total: f64,
}

/// The whole report of one series.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// [`REPORT_SCHEMA_VERSION`].
    pub schema_version: String,
    /// The program and version that wrote the report.
    pub generator: String,
    pub series: SeriesSummary,
    pub model: ModelSummary,
    pub decision: Decision,
    /// Scan probabilities after slice aggregation.
    pub probabilities: Probabilities,
    /// Infected share of the lung found by the networks.
    pub infection: Infection,
    /// Shares found from Hounsfield bands alone, without a model, for comparison.
    pub model_free: ModelFree,
    /// The slices with the largest infected area, worst first, with their overlay images.
    pub worst_slices: Vec<WorstSlice>,
    /// Every lobe's scores, in slice order (right before left).
    pub lobes: Vec<LobeScores>,
    pub timings_ms: Timings,
    /// Warnings a reader must see (untrained weights, an implausible background).
    pub warnings: Vec<String>,
}

/// Facts of the series analysed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SeriesSummary {
    /// _Series Instance UID_.
    pub series_uid: String,
    /// HMAC-SHA256 of _Patient ID_ with the deployment's secret, hex; never the ID itself.
    pub patient_key: String,
    pub slices: usize,
    pub slices_with_lungs: usize,
    /// Between slices, rows, columns; mm.
    pub spacing_mm: [f64; 3],
    pub lung_volume_ml: PerSide,
    /// Median HU of the air outside the body: the batch-effect statistic.
    pub background_median_hu: f64,
    pub background_plausible: bool,
}

/// Identity of the weights that produced the result, and their device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelSummary {
    pub id: String,
    /// Hash of the weights.
    pub version: String,
    /// `full`, `narrow` or `custom`.
    pub config: String,
    /// False for initial weights, whose outputs mean nothing.
    pub trained: bool,
    pub trained_on: String,
    /// True when the weights must not be used on patients (demo weights trained on
    /// synthetic phantoms, or untrained ones).
    pub research_only: bool,
    /// `cpu` or `cuda:N`.
    pub device: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Probabilities {
    /// P(diseased) from the diseased-vs-healthy network.
    pub diseased: f64,
    /// P(COVID-19 | diseased) from the COVID-vs-other network.
    pub covid19: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Infection {
    pub percent: PerSide,
    pub volume_ml: PerSide,
    /// Infected voxels at full resolution (fractional where crops were scaled).
    pub infected_voxels: PerSide,
    pub lung_voxels: PerSide,
}

/// Model-free shares of the lung volume, percent.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelFree {
    /// -700..-300 HU.
    pub ground_glass_percent: PerSide,
    /// -299..100 HU.
    pub consolidation_percent: PerSide,
    /// Both bands together.
    pub infected_percent: PerSide,
    /// Lung inside the series' pseudo-infection band (method.md §7).
    pub band_percent: PerSide,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorstSlice {
    /// Slice index, feet to head, from 0.
    pub slice: usize,
    pub position_mm: f64,
    pub infected_mm2: f64,
    /// Infected share of this slice's lung area, percent.
    pub infected_percent: f64,
    /// The higher P(diseased) of the slice's two lobes.
    pub p_diseased: f64,
    /// File name of the overlay image, beside report.json.
    pub overlay: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LobeScores {
    pub slice: usize,
    /// `right` or `left`: the patient's.
    pub side: String,
    pub position_mm: f64,
    /// Raw lobe probability and its aggregated (softened) score, diseased network.
    pub p_diseased: f64,
    pub s_diseased: f64,
    /// The same for the COVID-vs-other network.
    pub p_covid19: f64,
    pub s_covid19: f64,
    pub infected_pixels: f64,
    pub lung_pixels: u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Timings {
    pub read: u64,
    pub preprocess: u64,
    pub infer: u64,
    pub report: u64,
    pub total: u64,
}

/// Generates the JSON Schema of [`Report`], pretty-printed with a final newline.
pub fn report_json_schema() -> String {
    let schema = schemars::schema_for!(Report);
    let mut text = serde_json::to_string_pretty(&schema).expect("a schema serialises");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_serialise_as_snake_case() {
        assert_eq!(serde_json::to_string(&Decision::Covid19).unwrap(), "\"covid19\"");
        assert_eq!(serde_json::to_string(&Decision::OtherDisease).unwrap(), "\"other_disease\"");
    }
}
