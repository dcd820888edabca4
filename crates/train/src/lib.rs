//! Weakly supervised training of the two lobe networks of Ghavami et al. (2020), their
//! evaluation, and the phantom data set that the demo weights are trained on.
//!
//! Labels exist per scan only. [`labels`] turns them into lobe targets (top 30%),
//! pseudo-infection patch labels and the per-patch weights; [`loss`] assembles the loss;
//! [`trainer`] runs the two stages with checkpoints. [`evaluate`] runs a model over a
//! manifest, and [`metrics`] computes the paper's table, ROC AUC and calibration.

pub mod evaluate;
pub mod labels;
pub mod loss;
pub mod manifest;
pub mod metrics;
pub mod phantoms;
pub mod plot;
pub mod trainer;

use serde::{Deserialize, Serialize};

/// The label of a scan, as a manifest gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScanLabel {
    Healthy,
    Covid,
    Other,
}

impl ScanLabel {
    /// Returns the name used in manifests and outputs.
    pub fn name(self) -> &'static str {
        match self {
            ScanLabel::Healthy => "healthy",
            ScanLabel::Covid => "covid",
            ScanLabel::Other => "other",
        }
    }

    /// Returns true for COVID-19 and other disease.
    pub fn diseased(self) -> bool {
        self != ScanLabel::Healthy
    }
}

impl std::str::FromStr for ScanLabel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "healthy" => Ok(ScanLabel::Healthy),
            "covid" | "covid19" | "covid-19" => Ok(ScanLabel::Covid),
            "other" | "other_disease" => Ok(ScanLabel::Other),
            other => Err(format!("unknown label {other:?}: expected healthy, covid or other")),
        }
    }
}
