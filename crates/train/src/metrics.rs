//! Scan-level evaluation: accuracy, sensitivity and specificity of the two decisions per
//! centre, ROC AUC and calibration of the two scan probabilities, the three-class
//! confusion matrix and the error of the infected share.
//!
//! Rates are fractions in [0, 1] in [`Evaluation`] and its JSON form, and percentages in
//! [`Evaluation::to_markdown`]. A rate without a denominator (no positive scans, no
//! negative scans, ROC AUC with only one class) is `None`, never NaN.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::ScanLabel;

/// Probability above which a scan is called diseased, and a diseased scan COVID-19.
pub const DECISION_THRESHOLD: f64 = 0.5;

/// Number of equal-width calibration bins over [0, 1].
pub const CALIBRATION_BINS: usize = 10;

/// Maximum absolute error, in percentage points, for an infected-share estimate to count
/// as close to the reference.
pub const INFECTED_SHARE_TOLERANCE: f64 = 3.0;

/// The model output for one scan, with the scan's truth.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScanOutcome {
    /// Identifier of the series, such as its path or series instance UID.
    pub series: String,
    /// Centre (hospital) that acquired the scan.
    pub centre: String,
    /// True label of the scan.
    pub label: ScanLabel,
    /// Scan probability of disease (COVID-19 or other), in [0, 1].
    pub p_diseased: f64,
    /// Scan probability of COVID-19 rather than other disease, in [0, 1].
    pub p_covid: f64,
    /// Predicted infected share of the lung volume, in percent.
    pub infected_percent: f64,
    /// Reference infected share in percent, for scans with an infection annotation.
    pub truth_infected_percent: Option<f64>,
    /// Model-free share of the lung mask between -700 and +100 HU, in percent.
    #[serde(default)]
    pub hu_infected_percent: f64,
    /// Model-free share of the lung mask inside the pseudo-infection band that training
    /// labels from, in percent: what the infection heads are taught to find.
    #[serde(default)]
    pub band_percent: f64,
}

/// Evaluation of a set of scans, over all centres and per centre.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Metrics over all scans.
    pub overall: GroupMetrics,
    /// Metrics per centre, keyed by centre name.
    pub centres: BTreeMap<String, GroupMetrics>,
}

/// All metrics of one group of scans (all scans, or the scans of one centre).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupMetrics {
    /// Number of scans per true label.
    pub scans: LabelCounts,
    /// Diseased (positive) versus healthy over all scans, scored by `p_diseased`.
    pub diseased_vs_healthy: DiseasedVsHealthy,
    /// COVID-19 (positive) versus other disease over the truly diseased scans, scored by
    /// `p_covid`. This task thresholds `p_covid` whatever the disease decision was, so a
    /// diseased scan that was called healthy still counts here. Its sensitivity is the
    /// recall of COVID-19 and its specificity the recall of other disease.
    pub covid_vs_other: BinaryMetrics,
    /// Three-class decisions against the truth.
    pub confusion: LabelConfusion,
    /// Error of the predicted infected share, over scans with a reference share.
    pub infected_share: InfectedShareError,
}

/// Number of scans per true label.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelCounts {
    pub total: usize,
    pub healthy: usize,
    pub covid: usize,
    pub other: usize,
}

/// Metrics of the diseased-versus-healthy task: the binary metrics plus the sensitivity
/// for each disease on its own.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiseasedVsHealthy {
    /// Metrics over all scans. In JSON, these fields sit directly in this object.
    #[serde(flatten)]
    pub metrics: BinaryMetrics,
    /// Fraction of COVID-19 scans called diseased.
    pub sensitivity_covid: Option<f64>,
    /// Fraction of other-disease scans called diseased.
    pub sensitivity_other: Option<f64>,
}

/// Metrics of a binary decision made by thresholding a probability at
/// [`DECISION_THRESHOLD`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BinaryMetrics {
    /// Fraction of correct decisions.
    pub accuracy: Option<f64>,
    /// Fraction of positive scans called positive (recall, true positive rate).
    pub sensitivity: Option<f64>,
    /// Fraction of negative scans called negative (true negative rate).
    pub specificity: Option<f64>,
    /// Area under the ROC curve of the probability, with tied scores counted half.
    pub roc_auc: Option<f64>,
    /// Decision counts.
    pub confusion: BinaryConfusion,
    /// Calibration of the probability against the positive class.
    pub calibration: Calibration,
}

/// 2×2 confusion matrix of a binary decision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BinaryConfusion {
    pub true_positive: usize,
    pub false_negative: usize,
    pub false_positive: usize,
    pub true_negative: usize,
}

impl BinaryConfusion {
    /// Number of scans counted.
    pub fn total(&self) -> usize {
        self.true_positive + self.false_negative + self.false_positive + self.true_negative
    }
}

/// Reliability of a probability: equal-width bins, expected calibration error and Brier
/// score.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// [`CALIBRATION_BINS`] bins covering [0, 1]. Each bin contains its lower bound, and
    /// the last bin also contains 1.
    pub bins: Vec<CalibrationBin>,
    /// Mean over bins of |mean predicted − observed fraction|, weighted by the bin's
    /// share of the scans.
    pub expected_calibration_error: Option<f64>,
    /// Mean of (probability − outcome)², with outcome 1 for positive scans and 0 otherwise.
    pub brier_score: Option<f64>,
}

/// One calibration bin.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CalibrationBin {
    pub lower: f64,
    pub upper: f64,
    /// Number of scans whose probability falls in the bin.
    pub count: usize,
    /// Mean probability of those scans.
    pub mean_predicted: Option<f64>,
    /// Fraction of those scans that are positive.
    pub observed_fraction: Option<f64>,
}

/// 3×3 confusion matrix: one row per true label, one count per decision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelConfusion {
    pub truth_healthy: DecisionCounts,
    pub truth_covid: DecisionCounts,
    pub truth_other: DecisionCounts,
}

impl LabelConfusion {
    /// Returns the row of one true label.
    pub fn row(&self, truth: ScanLabel) -> &DecisionCounts {
        match truth {
            ScanLabel::Healthy => &self.truth_healthy,
            ScanLabel::Covid => &self.truth_covid,
            ScanLabel::Other => &self.truth_other,
        }
    }

    fn row_mut(&mut self, truth: ScanLabel) -> &mut DecisionCounts {
        match truth {
            ScanLabel::Healthy => &mut self.truth_healthy,
            ScanLabel::Covid => &mut self.truth_covid,
            ScanLabel::Other => &mut self.truth_other,
        }
    }
}

/// Number of scans per decision, within one row of [`LabelConfusion`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionCounts {
    pub decided_healthy: usize,
    pub decided_covid: usize,
    pub decided_other: usize,
}

impl DecisionCounts {
    /// Returns the count of one decision.
    pub fn get(&self, decision: ScanLabel) -> usize {
        match decision {
            ScanLabel::Healthy => self.decided_healthy,
            ScanLabel::Covid => self.decided_covid,
            ScanLabel::Other => self.decided_other,
        }
    }

    fn add(&mut self, decision: ScanLabel) {
        match decision {
            ScanLabel::Healthy => self.decided_healthy += 1,
            ScanLabel::Covid => self.decided_covid += 1,
            ScanLabel::Other => self.decided_other += 1,
        }
    }
}

/// Absolute error of the predicted infected share, in percentage points, over the scans
/// that have a reference share.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct InfectedShareError {
    /// Number of scans with a reference share.
    pub scans: usize,
    pub mean_absolute_error: Option<f64>,
    pub median_absolute_error: Option<f64>,
    /// Number of scans whose error is at most [`INFECTED_SHARE_TOLERANCE`] points.
    pub within_3_points: usize,
}

/// Applies the scan decision rule: diseased when `p_diseased` > 0.5, then COVID-19 when
/// `p_covid` > 0.5 and other disease otherwise. A scan at exactly 0.5 is healthy.
pub fn decide(p_diseased: f64, p_covid: f64) -> ScanLabel {
    if p_diseased <= DECISION_THRESHOLD {
        ScanLabel::Healthy
    } else if p_covid > DECISION_THRESHOLD {
        ScanLabel::Covid
    } else {
        ScanLabel::Other
    }
}

/// Computes the metrics over all scans and per centre.
///
/// # Panics
///
/// If a probability is NaN or outside [0, 1], or an infected share is not finite. Such
/// values come from a broken model or a bug, and averaging them would hide it.
pub fn evaluate(outcomes: &[ScanOutcome]) -> Evaluation {
    for outcome in outcomes {
        validate_outcome(outcome);
    }

    let mut by_centre: BTreeMap<String, Vec<&ScanOutcome>> = BTreeMap::new();
    for outcome in outcomes {
        by_centre.entry(outcome.centre.clone()).or_default().push(outcome);
    }

    let all: Vec<&ScanOutcome> = outcomes.iter().collect();
    Evaluation {
        overall: group_metrics(&all),
        centres: by_centre.into_iter().map(|(centre, group)| (centre, group_metrics(&group))).collect(),
    }
}

fn validate_outcome(outcome: &ScanOutcome) {
    let probabilities = [("p_diseased", outcome.p_diseased), ("p_covid", outcome.p_covid)];
    for (name, value) in probabilities {
        assert!((0.0..=1.0).contains(&value), "invalid {name} {value} for series {}: expected a probability in [0, 1]", outcome.series);
    }
    assert!(outcome.infected_percent.is_finite(), "invalid infected_percent {} for series {}: expected a finite number", outcome.infected_percent, outcome.series);
    if let Some(truth) = outcome.truth_infected_percent {
        assert!(truth.is_finite(), "invalid truth_infected_percent {truth} for series {}: expected a finite number", outcome.series);
    }
}

fn group_metrics(outcomes: &[&ScanOutcome]) -> GroupMetrics {
    let mut scans = LabelCounts { total: outcomes.len(), ..LabelCounts::default() };
    let mut confusion = LabelConfusion::default();
    for outcome in outcomes {
        match outcome.label {
            ScanLabel::Healthy => scans.healthy += 1,
            ScanLabel::Covid => scans.covid += 1,
            ScanLabel::Other => scans.other += 1,
        }
        confusion.row_mut(outcome.label).add(decide(outcome.p_diseased, outcome.p_covid));
    }

    GroupMetrics {
        scans,
        diseased_vs_healthy: diseased_vs_healthy(outcomes),
        covid_vs_other: covid_vs_other(outcomes),
        confusion,
        infected_share: infected_share_error(outcomes),
    }
}

fn diseased_vs_healthy(outcomes: &[&ScanOutcome]) -> DiseasedVsHealthy {
    let scores: Vec<f64> = outcomes.iter().map(|o| o.p_diseased).collect();
    let positive: Vec<bool> = outcomes.iter().map(|o| o.label.diseased()).collect();
    let called_diseased = |label: ScanLabel| {
        let with_label: Vec<&&ScanOutcome> = outcomes.iter().filter(|o| o.label == label).collect();
        let called = with_label.iter().filter(|o| o.p_diseased > DECISION_THRESHOLD).count();
        ratio(called, with_label.len())
    };
    DiseasedVsHealthy {
        metrics: binary_metrics(&scores, &positive),
        sensitivity_covid: called_diseased(ScanLabel::Covid),
        sensitivity_other: called_diseased(ScanLabel::Other),
    }
}

fn covid_vs_other(outcomes: &[&ScanOutcome]) -> BinaryMetrics {
    let diseased: Vec<&&ScanOutcome> = outcomes.iter().filter(|o| o.label.diseased()).collect();
    let scores: Vec<f64> = diseased.iter().map(|o| o.p_covid).collect();
    let positive: Vec<bool> = diseased.iter().map(|o| o.label == ScanLabel::Covid).collect();
    binary_metrics(&scores, &positive)
}

fn binary_metrics(scores: &[f64], positive: &[bool]) -> BinaryMetrics {
    let mut confusion = BinaryConfusion::default();
    for (&score, &is_positive) in scores.iter().zip(positive) {
        let called_positive = score > DECISION_THRESHOLD;
        match (is_positive, called_positive) {
            (true, true) => confusion.true_positive += 1,
            (true, false) => confusion.false_negative += 1,
            (false, true) => confusion.false_positive += 1,
            (false, false) => confusion.true_negative += 1,
        }
    }

    BinaryMetrics {
        accuracy: ratio(confusion.true_positive + confusion.true_negative, confusion.total()),
        sensitivity: ratio(confusion.true_positive, confusion.true_positive + confusion.false_negative),
        specificity: ratio(confusion.true_negative, confusion.true_negative + confusion.false_positive),
        roc_auc: roc_auc(scores, positive),
        confusion,
        calibration: calibration(scores, positive),
    }
}

fn ratio(numerator: usize, denominator: usize) -> Option<f64> {
    (denominator > 0).then(|| numerator as f64 / denominator as f64)
}

/// Computes the area under the ROC curve by the Mann–Whitney rank formula: the fraction
/// of (positive, negative) pairs in which the positive scores higher, with ties counted
/// half. Returns `None` unless both classes are present.
///
/// # Panics
///
/// If the slices differ in length.
pub fn roc_auc(scores: &[f64], positive: &[bool]) -> Option<f64> {
    assert_eq!(scores.len(), positive.len(), "roc_auc needs one label per score");
    let positives = positive.iter().filter(|&&p| p).count();
    let negatives = positive.len() - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }

    // Ranks start at 1, and a run of tied scores shares the mean of its ranks.
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut positive_rank_sum = 0.0;
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && scores[order[end]] == scores[order[start]] {
            end += 1;
        }
        let mean_rank = (start + 1 + end) as f64 / 2.0;
        let tied_positives = order[start..end].iter().filter(|&&i| positive[i]).count();
        positive_rank_sum += mean_rank * tied_positives as f64;
        start = end;
    }

    let positives = positives as f64;
    let u = positive_rank_sum - positives * (positives + 1.0) / 2.0;
    Some(u / (positives * negatives as f64))
}

/// Computes the ROC curve as (false positive rate, true positive rate) points, from
/// (0, 0) to (1, 1), one point per distinct score in decreasing order. Tied scores form
/// one step, which the plot shows as a diagonal segment.
///
/// Returns an empty vector unless both classes are present, because one of the rates is
/// then undefined.
///
/// # Panics
///
/// If the slices differ in length.
pub fn roc_curve(scores: &[f64], positive: &[bool]) -> Vec<(f64, f64)> {
    assert_eq!(scores.len(), positive.len(), "roc_curve needs one label per score");
    let positives = positive.iter().filter(|&&p| p).count();
    let negatives = positive.len() - positives;
    if positives == 0 || negatives == 0 {
        return Vec::new();
    }

    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut points = vec![(0.0, 0.0)];
    let (mut true_positives, mut false_positives) = (0usize, 0usize);
    let mut start = 0;
    while start < order.len() {
        let mut end = start;
        while end < order.len() && scores[order[end]] == scores[order[start]] {
            if positive[order[end]] {
                true_positives += 1;
            } else {
                false_positives += 1;
            }
            end += 1;
        }
        points.push((false_positives as f64 / negatives as f64, true_positives as f64 / positives as f64));
        start = end;
    }
    points
}

fn calibration(scores: &[f64], positive: &[bool]) -> Calibration {
    let mut counts = [0usize; CALIBRATION_BINS];
    let mut predicted_sums = [0.0f64; CALIBRATION_BINS];
    let mut positive_counts = [0usize; CALIBRATION_BINS];
    for (&score, &is_positive) in scores.iter().zip(positive) {
        // The product can land just above an integer (0.7 * 10 = 7.000000000000001), which
        // still floors to the right bin. A score of exactly 1 goes into the last bin.
        let bin = ((score * CALIBRATION_BINS as f64) as usize).min(CALIBRATION_BINS - 1);
        counts[bin] += 1;
        predicted_sums[bin] += score;
        positive_counts[bin] += usize::from(is_positive);
    }

    let total = scores.len();
    let bins: Vec<CalibrationBin> = (0..CALIBRATION_BINS)
        .map(|bin| CalibrationBin {
            lower: bin as f64 / CALIBRATION_BINS as f64,
            upper: (bin + 1) as f64 / CALIBRATION_BINS as f64,
            count: counts[bin],
            mean_predicted: (counts[bin] > 0).then(|| predicted_sums[bin] / counts[bin] as f64),
            observed_fraction: ratio(positive_counts[bin], counts[bin]),
        })
        .collect();

    let expected_calibration_error = (total > 0).then(|| {
        bins.iter()
            .filter_map(|bin| {
                let gap = (bin.mean_predicted? - bin.observed_fraction?).abs();
                Some(bin.count as f64 / total as f64 * gap)
            })
            .sum()
    });
    let brier_score = (total > 0).then(|| {
        let squared_errors: f64 = scores.iter().zip(positive).map(|(&score, &is_positive)| (score - f64::from(u8::from(is_positive))).powi(2)).sum();
        squared_errors / total as f64
    });

    Calibration { bins, expected_calibration_error, brier_score }
}

/// Returns the mean and the median of `values`, which it sorts. Both are `None` for no
/// values.
pub(crate) fn mean_and_median(values: &mut [f64]) -> (Option<f64>, Option<f64>) {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let median = match n {
        0 => None,
        n if n % 2 == 1 => Some(values[n / 2]),
        n => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    };
    let mean = (n > 0).then(|| values.iter().sum::<f64>() / n as f64);
    (mean, median)
}

fn infected_share_error(outcomes: &[&ScanOutcome]) -> InfectedShareError {
    let mut errors: Vec<f64> = outcomes.iter().filter_map(|o| Some((o.infected_percent - o.truth_infected_percent?).abs())).collect();
    let (mean_absolute_error, median_absolute_error) = mean_and_median(&mut errors);
    InfectedShareError {
        scans: errors.len(),
        mean_absolute_error,
        median_absolute_error,
        within_3_points: errors.iter().filter(|&&e| e <= INFECTED_SHARE_TOLERANCE).count(),
    }
}

impl Evaluation {
    /// Formats the evaluation as Markdown: the accuracy, sensitivity and specificity
    /// table of both tasks with ROC AUC (all centres, then each centre), the confusion
    /// matrices and calibration bins over all centres, and the infected-share errors.
    /// Undefined values read "n/a".
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        self.write_summary_table(&mut out);
        write_confusion_matrices(&mut out, &self.overall);
        self.write_infected_share_table(&mut out);
        write_calibration_table(&mut out, "Calibration of P(diseased), all scans", &self.overall.diseased_vs_healthy.metrics.calibration);
        write_calibration_table(&mut out, "Calibration of P(COVID-19), diseased scans", &self.overall.covid_vs_other.calibration);
        out
    }

    fn groups(&self) -> impl Iterator<Item = (String, &GroupMetrics)> {
        std::iter::once(("all centres".to_string(), &self.overall)).chain(self.centres.iter().map(|(centre, metrics)| (escape_cell(centre), metrics)))
    }

    fn write_summary_table(&self, out: &mut String) {
        out.push_str("## Classification\n\n");
        out.push_str("Diseased vs healthy is measured over all scans; COVID-19 vs other disease over the truly diseased scans, thresholding P(COVID-19) whatever the disease decision.\n\n");
        out.push_str("| centre | scans (healthy / COVID-19 / other) | diseased vs healthy: accuracy | sensitivity | specificity | AUC | COVID-19 vs other: accuracy | sensitivity | specificity | AUC |\n");
        out.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
        for (name, group) in self.groups() {
            let disease = &group.diseased_vs_healthy;
            let covid = &group.covid_vs_other;
            let sensitivity = format!(
                "{} (COVID-19 {}, other {})",
                percent(disease.metrics.sensitivity),
                percent(disease.sensitivity_covid),
                percent(disease.sensitivity_other)
            );
            let _ = writeln!(
                out,
                "| {name} | {} ({} / {} / {}) | {} | {sensitivity} | {} | {} | {} | {} | {} | {} |",
                group.scans.total,
                group.scans.healthy,
                group.scans.covid,
                group.scans.other,
                percent(disease.metrics.accuracy),
                percent(disease.metrics.specificity),
                decimal(disease.metrics.roc_auc),
                percent(covid.accuracy),
                percent(covid.sensitivity),
                percent(covid.specificity),
                decimal(covid.roc_auc),
            );
        }
        out.push('\n');
    }

    fn write_infected_share_table(&self, out: &mut String) {
        out.push_str("## Infected share\n\n");
        let _ = writeln!(out, "Absolute error of the predicted infected share of the lung, in percentage points, over scans with a reference share.\n");
        let _ = writeln!(out, "| centre | scans with reference | mean absolute error | median absolute error | within ±{INFECTED_SHARE_TOLERANCE} points |");
        out.push_str("|---|---|---|---|---|\n");
        for (name, group) in self.groups() {
            let share = &group.infected_share;
            let within = match ratio(share.within_3_points, share.scans) {
                Some(fraction) => format!("{} ({})", share.within_3_points, percent(Some(fraction))),
                None => "n/a".to_string(),
            };
            let _ = writeln!(out, "| {name} | {} | {} | {} | {within} |", share.scans, decimal2(share.mean_absolute_error), decimal2(share.median_absolute_error));
        }
        out.push('\n');
    }
}

fn write_confusion_matrices(out: &mut String, group: &GroupMetrics) {
    out.push_str("## Confusion matrices, all centres\n\n");
    out.push_str("| truth \\ decision | healthy | COVID-19 | other |\n|---|---|---|---|\n");
    for truth in [ScanLabel::Healthy, ScanLabel::Covid, ScanLabel::Other] {
        let row = group.confusion.row(truth);
        let _ = writeln!(out, "| {} | {} | {} | {} |", label_heading(truth), row.decided_healthy, row.decided_covid, row.decided_other);
    }
    out.push('\n');

    let disease = &group.diseased_vs_healthy.metrics.confusion;
    out.push_str("| diseased vs healthy | called diseased | called healthy |\n|---|---|---|\n");
    let _ = writeln!(out, "| diseased | {} | {} |", disease.true_positive, disease.false_negative);
    let _ = writeln!(out, "| healthy | {} | {} |\n", disease.false_positive, disease.true_negative);

    let covid = &group.covid_vs_other.confusion;
    out.push_str("| COVID-19 vs other | called COVID-19 | called other |\n|---|---|---|\n");
    let _ = writeln!(out, "| COVID-19 | {} | {} |", covid.true_positive, covid.false_negative);
    let _ = writeln!(out, "| other | {} | {} |\n", covid.false_positive, covid.true_negative);
}

fn write_calibration_table(out: &mut String, title: &str, calibration: &Calibration) {
    let _ = writeln!(out, "## {title}\n");
    let _ = writeln!(
        out,
        "Expected calibration error {}, Brier score {}.\n",
        percent(calibration.expected_calibration_error),
        decimal(calibration.brier_score)
    );
    out.push_str("| probability | scans | mean predicted | observed |\n|---|---|---|---|\n");
    let last = calibration.bins.len().saturating_sub(1);
    for (index, bin) in calibration.bins.iter().enumerate() {
        let close = if index == last { ']' } else { ')' };
        let _ = writeln!(
            out,
            "| [{:.1}, {:.1}{close} | {} | {} | {} |",
            bin.lower,
            bin.upper,
            bin.count,
            percent(bin.mean_predicted),
            percent(bin.observed_fraction)
        );
    }
    out.push('\n');
}

fn label_heading(label: ScanLabel) -> &'static str {
    match label {
        ScanLabel::Healthy => "healthy",
        ScanLabel::Covid => "COVID-19",
        ScanLabel::Other => "other",
    }
}

/// Escapes the characters that would break a Markdown table cell.
fn escape_cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

fn percent(fraction: Option<f64>) -> String {
    fraction.map_or_else(|| "n/a".to_string(), |f| format!("{:.2}%", f * 100.0))
}

/// Formats a value in [0, 1] that is not a rate, such as an AUC or Brier score.
fn decimal(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".to_string(), |v| format!("{v:.4}"))
}

fn decimal2(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".to_string(), |v| format!("{v:.2}"))
}


#[cfg(test)]
mod tests {
    use super::*;

    fn scan(centre: &str, label: ScanLabel, p_diseased: f64, p_covid: f64, infected: f64, truth: Option<f64>) -> ScanOutcome {
        ScanOutcome {
            series: format!("{centre}-{label:?}-{p_diseased}"),
            centre: centre.to_string(),
            label,
            p_diseased,
            p_covid,
            infected_percent: infected,
            truth_infected_percent: truth,
            hu_infected_percent: 0.0,
            band_percent: 0.0,
        }
    }

    /// Ten scans from two centres. Centre B has no healthy scan. The expected values in
    /// the tests below are worked out by hand from this table.
    fn example() -> Vec<ScanOutcome> {
        use ScanLabel::{Covid, Healthy, Other};
        vec![
            // Decisions: healthy, other, COVID-19, healthy, other.
            scan("A", Healthy, 0.1, 0.3, 0.0, Some(0.0)),
            scan("A", Healthy, 0.6, 0.2, 2.0, Some(0.0)),
            scan("A", Covid, 0.9, 0.8, 20.0, Some(25.0)),
            scan("A", Covid, 0.4, 0.7, 10.0, Some(11.0)),
            scan("A", Other, 0.8, 0.3, 5.0, None),
            // Decisions: other, COVID-19, healthy, COVID-19, COVID-19.
            scan("B", Covid, 0.95, 0.45, 30.0, Some(31.0)),
            scan("B", Covid, 0.7, 0.9, 15.0, None),
            scan("B", Other, 0.3, 0.2, 1.0, Some(4.0)),
            scan("B", Other, 0.85, 0.6, 8.0, None),
            scan("B", Covid, 0.6, 0.55, 12.0, Some(12.0)),
        ]
    }

    #[track_caller]
    fn assert_close(actual: Option<f64>, expected: f64) {
        let actual = actual.unwrap_or_else(|| panic!("expected {expected}, got None"));
        assert!((actual - expected).abs() < 1e-9, "expected {expected}, got {actual}");
    }

    #[test]
    fn decide_applies_thresholds() {
        assert_eq!(decide(0.5, 0.9), ScanLabel::Healthy);
        assert_eq!(decide(0.51, 0.9), ScanLabel::Covid);
        assert_eq!(decide(0.51, 0.5), ScanLabel::Other);
        assert_eq!(decide(0.2, 0.1), ScanLabel::Healthy);
    }

    #[test]
    fn overall_label_counts() {
        let scans = evaluate(&example()).overall.scans;
        assert_eq!(scans, LabelCounts { total: 10, healthy: 2, covid: 5, other: 3 });
    }

    #[test]
    fn overall_diseased_vs_healthy() {
        let task = evaluate(&example()).overall.diseased_vs_healthy;
        let expected_confusion = BinaryConfusion { true_positive: 6, false_negative: 2, false_positive: 1, true_negative: 1 };
        assert_eq!(task.metrics.confusion, expected_confusion);
        assert_close(task.metrics.accuracy, 0.7);
        assert_close(task.metrics.sensitivity, 0.75);
        assert_close(task.metrics.specificity, 0.5);
        assert_close(task.sensitivity_covid, 0.8);
        assert_close(task.sensitivity_other, 2.0 / 3.0);
        // 16 pairs: all 8 positives beat 0.1, and against 0.6 five win and one ties.
        assert_close(task.metrics.roc_auc, 13.5 / 16.0);
    }

    #[test]
    fn overall_diseased_calibration() {
        let calibration = evaluate(&example()).overall.diseased_vs_healthy.metrics.calibration;
        let counts: Vec<usize> = calibration.bins.iter().map(|bin| bin.count).collect();
        assert_eq!(counts, vec![0, 1, 0, 1, 1, 0, 2, 1, 2, 2]);
        assert_eq!(calibration.bins[0].mean_predicted, None);
        assert_eq!(calibration.bins[0].observed_fraction, None);
        assert_close(calibration.bins[6].mean_predicted, 0.6);
        assert_close(calibration.bins[6].observed_fraction, 0.5);
        assert_close(calibration.bins[8].mean_predicted, 0.825);
        assert_close(calibration.bins[8].observed_fraction, 1.0);
        // Weighted gaps: 0.1 + 0.7 + 0.6 + 2 × 0.1 + 0.3 + 2 × 0.175 + 2 × 0.075 = 2.4.
        assert_close(calibration.expected_calibration_error, 0.24);
        assert_close(calibration.brier_score, 0.1545);
    }

    #[test]
    fn overall_covid_vs_other() {
        let task = evaluate(&example()).overall.covid_vs_other;
        let expected_confusion = BinaryConfusion { true_positive: 4, false_negative: 1, false_positive: 1, true_negative: 2 };
        assert_eq!(task.confusion, expected_confusion);
        assert_close(task.accuracy, 0.75);
        assert_close(task.sensitivity, 0.8);
        assert_close(task.specificity, 2.0 / 3.0);
        assert_close(task.roc_auc, 13.0 / 15.0);
        assert_eq!(task.calibration.bins.iter().map(|bin| bin.count).sum::<usize>(), 8);
    }

    #[test]
    fn overall_three_class_confusion() {
        let confusion = evaluate(&example()).overall.confusion;
        assert_eq!(confusion.truth_healthy, DecisionCounts { decided_healthy: 1, decided_covid: 0, decided_other: 1 });
        assert_eq!(confusion.truth_covid, DecisionCounts { decided_healthy: 1, decided_covid: 3, decided_other: 1 });
        assert_eq!(confusion.truth_other, DecisionCounts { decided_healthy: 1, decided_covid: 1, decided_other: 1 });
        assert_eq!(confusion.row(ScanLabel::Covid).get(ScanLabel::Covid), 3);
    }

    #[test]
    fn overall_infected_share() {
        // Errors 0, 2, 5, 1, 1, 3, 0: sorted 0, 0, 1, 1, 2, 3, 5.
        let share = evaluate(&example()).overall.infected_share;
        assert_eq!(share.scans, 7);
        assert_close(share.median_absolute_error, 1.0);
        assert_close(share.mean_absolute_error, 12.0 / 7.0);
        assert_eq!(share.within_3_points, 6);
    }

    #[test]
    fn infected_share_median_even_count() {
        // Centre A errors 0, 2, 5, 1: sorted 0, 1, 2, 5.
        let share = evaluate(&example()).centres["A"].infected_share;
        assert_eq!(share.scans, 4);
        assert_close(share.median_absolute_error, 1.5);
        assert_close(share.mean_absolute_error, 2.0);
        assert_eq!(share.within_3_points, 3);
    }

    #[test]
    fn per_centre_split() {
        let evaluation = evaluate(&example());
        assert_eq!(evaluation.centres.keys().collect::<Vec<_>>(), vec!["A", "B"]);

        let a = &evaluation.centres["A"];
        assert_eq!(a.scans, LabelCounts { total: 5, healthy: 2, covid: 2, other: 1 });
        assert_close(a.diseased_vs_healthy.metrics.accuracy, 0.6);
        assert_close(a.diseased_vs_healthy.metrics.sensitivity, 2.0 / 3.0);
        assert_close(a.diseased_vs_healthy.metrics.specificity, 0.5);
        assert_close(a.diseased_vs_healthy.sensitivity_covid, 0.5);
        assert_close(a.diseased_vs_healthy.sensitivity_other, 1.0);

        let b = &evaluation.centres["B"];
        assert_eq!(b.scans, LabelCounts { total: 5, healthy: 0, covid: 3, other: 2 });
        assert_close(b.diseased_vs_healthy.metrics.accuracy, 0.8);
        assert_close(b.diseased_vs_healthy.metrics.sensitivity, 0.8);
        assert_eq!(b.diseased_vs_healthy.metrics.specificity, None);
        assert_eq!(b.diseased_vs_healthy.metrics.roc_auc, None);
        assert_close(b.covid_vs_other.accuracy, 0.6);
        assert_close(b.infected_share.median_absolute_error, 1.0);
    }

    #[test]
    fn roc_auc_ties_count_half() {
        assert_close(roc_auc(&[0.3, 0.3, 0.3, 0.3], &[true, false, true, false]), 0.5);
        assert_close(roc_auc(&[0.2, 0.8, 0.8], &[false, true, false]), 0.75);
    }

    #[test]
    fn roc_auc_perfect_and_inverted() {
        assert_close(roc_auc(&[0.1, 0.2, 0.8, 0.9], &[false, false, true, true]), 1.0);
        assert_close(roc_auc(&[0.9, 0.8, 0.2, 0.1], &[false, false, true, true]), 0.0);
    }

    #[test]
    fn roc_auc_one_class_is_none() {
        assert_eq!(roc_auc(&[0.1, 0.9], &[true, true]), None);
        assert_eq!(roc_auc(&[0.1, 0.9], &[false, false]), None);
        assert_eq!(roc_auc(&[], &[]), None);
    }

    #[test]
    fn roc_curve_groups_ties() {
        let curve = roc_curve(&[0.9, 0.7, 0.7, 0.2], &[true, true, false, false]);
        assert_eq!(curve, vec![(0.0, 0.0), (0.0, 0.5), (0.5, 1.0), (1.0, 1.0)]);
    }

    #[test]
    fn roc_curve_one_class_is_empty() {
        assert!(roc_curve(&[0.4, 0.6], &[true, true]).is_empty());
    }

    #[test]
    fn calibration_bins_by_hand() {
        let calibration = calibration(&[0.05, 0.15, 0.12, 1.0, 0.95], &[false, true, false, true, true]);
        assert_eq!(calibration.bins.len(), CALIBRATION_BINS);
        assert_close(Some(calibration.bins[1].lower), 0.1);
        assert_close(Some(calibration.bins[1].upper), 0.2);
        assert_eq!(calibration.bins[0].count, 1);
        assert_eq!(calibration.bins[1].count, 2);
        assert_eq!(calibration.bins[9].count, 2);
        assert_close(calibration.bins[1].mean_predicted, 0.135);
        assert_close(calibration.bins[1].observed_fraction, 0.5);
        assert_close(calibration.bins[9].mean_predicted, 0.975);
        // (1 × 0.05 + 2 × 0.365 + 2 × 0.025) / 5.
        assert_close(calibration.expected_calibration_error, 0.166);
        // (0.0025 + 0.7225 + 0.0144 + 0 + 0.0025) / 5.
        assert_close(calibration.brier_score, 0.14838);
    }

    #[test]
    fn empty_evaluation_is_undefined() {
        let evaluation = evaluate(&[]);
        let task = &evaluation.overall.diseased_vs_healthy;
        assert_eq!(task.metrics.accuracy, None);
        assert_eq!(task.metrics.sensitivity, None);
        assert_eq!(task.metrics.calibration.expected_calibration_error, None);
        assert_eq!(task.metrics.calibration.brier_score, None);
        assert_eq!(evaluation.overall.infected_share.median_absolute_error, None);
        assert!(evaluation.centres.is_empty());
        assert!(evaluation.to_markdown().contains("n/a"));
    }

    #[test]
    fn json_round_trip_and_names() {
        let evaluation = evaluate(&example());
        let json = serde_json::to_value(&evaluation).unwrap();
        let centre_b = &json["centres"]["B"]["diseased_vs_healthy"];
        assert!(centre_b["specificity"].is_null());
        assert!(centre_b["sensitivity_covid"].is_number());
        assert!(centre_b["confusion"]["true_positive"].is_number());
        assert!(json["overall"]["covid_vs_other"]["calibration"]["bins"].is_array());
        assert!(json["overall"]["confusion"]["truth_covid"]["decided_other"].is_number());
        assert!(json["overall"]["infected_share"]["within_3_points"].is_number());

        let text = serde_json::to_string(&evaluation).unwrap();
        assert!(!text.contains("NaN"));
        let parsed: Evaluation = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed, evaluation);
    }

    #[test]
    fn markdown_overall_row() {
        let markdown = evaluate(&example()).to_markdown();
        let row = markdown.lines().find(|line| line.starts_with("| all centres | 10 ")).expect("overall row");
        assert!(row.contains("| 70.00% |"), "{row}");
        assert!(row.contains("75.00% (COVID-19 80.00%, other 66.67%)"), "{row}");
        assert!(row.contains("| 0.8438 |"), "{row}");
        assert!(row.contains("| 0.8667 |"), "{row}");
    }

    #[test]
    fn markdown_na_without_healthy_scans() {
        let markdown = evaluate(&example()).to_markdown();
        let row = markdown.lines().find(|line| line.starts_with("| B |")).expect("row of centre B");
        assert!(row.contains("n/a"), "{row}");
        let row_a = markdown.lines().find(|line| line.starts_with("| A |")).expect("row of centre A");
        assert!(!row_a.contains("n/a"), "{row_a}");
    }

    #[test]
    fn markdown_sections() {
        let markdown = evaluate(&example()).to_markdown();
        assert!(markdown.contains("| COVID-19 | 1 | 3 | 1 |"), "{markdown}");
        assert!(markdown.contains("| diseased | 6 | 2 |"), "{markdown}");
        assert!(markdown.contains("Expected calibration error 24.00%"), "{markdown}");
        assert!(markdown.contains("| [0.9, 1.0] | 2 | 92.50% | 100.00% |"), "{markdown}");
        assert!(markdown.contains("| all centres | 7 | 1.71 | 1.00 | 6 (85.71%) |"), "{markdown}");
    }

    #[test]
    #[should_panic(expected = "invalid p_diseased")]
    fn nan_probability_panics() {
        evaluate(&[scan("A", ScanLabel::Covid, f64::NAN, 0.5, 1.0, None)]);
    }
}
