//! Runs a model over the scans of a manifest and writes the evaluation table of Ghavami et al. (2020):
//! `evaluation.json`, `evaluation.md`, `scans.csv` (one row per scan) and `roc.png`.

use std::fs;
use std::path::{Path, PathBuf};

use lungstream_infer::{infer_series, InferOptions, Model};

use crate::manifest::Manifest;
use crate::metrics::{self, roc_auc, roc_curve, Evaluation, ScanOutcome};
use crate::plot::{self, Chart, Series};
use crate::trainer::{load_series, TrainError};
use crate::ScanLabel;

/// Scans the evaluation could not use, with the reason.
pub type Unreadable = Vec<(PathBuf, String)>;

/// Runs the model on every scan of the manifest. `progress(done, total)` is called after
/// each scan. A scan that cannot be read or preprocessed is left out and returned with
/// its reason.
///
/// # Errors
///
/// When libtorch fails.
pub fn run(model: &Model, manifest: &Manifest, batch: usize, progress: &dyn Fn(usize, usize)) -> Result<(Vec<ScanOutcome>, Unreadable), TrainError> {
    let _guard = tch::no_grad_guard();
    let mut outcomes = Vec::with_capacity(manifest.entries.len());
    let mut unreadable = Vec::new();
    for (done, entry) in manifest.entries.iter().enumerate() {
        match load_series(&entry.series) {
            Ok(series) => {
                let result = infer_series(model, &series, InferOptions { batch }, &mut |_| {})?;
                outcomes.push(ScanOutcome {
                    series: entry.series.display().to_string(),
                    centre: entry.centre.clone(),
                    label: entry.label,
                    p_diseased: result.p_diseased,
                    p_covid: result.p_covid,
                    infected_percent: result.infected_percent_total(),
                    truth_infected_percent: entry.infected_percent,
                    hu_infected_percent: series.facts.model_free.total.infected_percent,
                    band_percent: series.facts.model_free.total.band_percent,
                });
            }
            Err(reason) => {
                tracing::warn!(series = %entry.series.display(), %reason, "Scan left out of the evaluation.");
                unreadable.push((entry.series.clone(), reason));
            }
        }
        progress(done + 1, manifest.entries.len());
    }
    Ok((outcomes, unreadable))
}

/// Writes the evaluation files into `out` (created if missing) and returns the
/// evaluation.
///
/// # Errors
///
/// When a file cannot be written.
pub fn write(out: &Path, outcomes: &[ScanOutcome], unreadable: &Unreadable, model: &Model) -> Result<Evaluation, TrainError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |error| TrainError::Io { path, error }
    };
    fs::create_dir_all(out).map_err(io(out))?;
    let evaluation = metrics::evaluate(outcomes);
    let card = model.card();
    let json = serde_json::json!({
        "model": { "id": card.id, "version": card.version, "trained": card.trained, "trained_on": card.trained_on },
        "evaluation": evaluation,
        "unreadable": unreadable.iter().map(|(p, r)| serde_json::json!({ "series": p.display().to_string(), "reason": r })).collect::<Vec<_>>(),
    });
    let path = out.join("evaluation.json");
    fs::write(&path, serde_json::to_vec_pretty(&json).expect("the evaluation serialises")).map_err(io(&path))?;

    let mut markdown = format!("# Evaluation of {} ({})\n\nTrained on: {}\n\n", card.id, card.version, card.trained_on);
    if !unreadable.is_empty() {
        markdown.push_str(&format!("{} scans could not be read and are left out (see evaluation.json).\n\n", unreadable.len()));
    }
    markdown.push_str(&evaluation.to_markdown());
    let path = out.join("evaluation.md");
    fs::write(&path, markdown).map_err(io(&path))?;

    let mut csv = String::from("series,centre,label,p_diseased,p_covid,infected_percent,truth_infected_percent,hu_infected_percent,band_percent\n");
    for o in outcomes {
        let truth = o.truth_infected_percent.map_or(String::new(), |t| format!("{t:.3}"));
        csv.push_str(&format!(
            "{},{},{},{:.6},{:.6},{:.3},{},{:.3},{:.3}\n",
            quote(&o.series),
            quote(&o.centre),
            o.label.name(),
            o.p_diseased,
            o.p_covid,
            o.infected_percent,
            truth,
            o.hu_infected_percent,
            o.band_percent
        ));
    }
    let path = out.join("scans.csv");
    fs::write(&path, csv).map_err(io(&path))?;

    let path = out.join("roc.png");
    fs::write(&path, roc_chart(outcomes)).map_err(io(&path))?;
    Ok(evaluation)
}

fn quote(field: &str) -> String {
    if field.contains([',', '"', '\n']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_string()
    }
}

/// ROC curves of both tasks, with the chance diagonal.
pub fn roc_chart(outcomes: &[ScanOutcome]) -> Vec<u8> {
    let scores: Vec<f64> = outcomes.iter().map(|o| o.p_diseased).collect();
    let positive: Vec<bool> = outcomes.iter().map(|o| o.label.diseased()).collect();
    let diseased: Vec<&ScanOutcome> = outcomes.iter().filter(|o| o.label.diseased()).collect();
    let covid_scores: Vec<f64> = diseased.iter().map(|o| o.p_covid).collect();
    let covid_positive: Vec<bool> = diseased.iter().map(|o| o.label == ScanLabel::Covid).collect();
    let name = |task: &str, auc: Option<f64>| auc.map_or(task.to_string(), |a| format!("{task} (AUC {a:.3})"));
    let series = vec![
        Series { name: name("diseased vs healthy", roc_auc(&scores, &positive)), points: roc_curve(&scores, &positive), colour: [31, 119, 180], dashed: false },
        Series { name: name("COVID-19 vs other disease", roc_auc(&covid_scores, &covid_positive)), points: roc_curve(&covid_scores, &covid_positive), colour: [214, 39, 40], dashed: false },
        Series { name: "chance".into(), points: vec![(0.0, 0.0), (1.0, 1.0)], colour: [150, 150, 150], dashed: true },
    ];
    plot::render_png(
        &Chart {
            title: "ROC".into(),
            x_label: "false positive rate".into(),
            y_label: "true positive rate".into(),
            x_range: Some((0.0, 1.0)),
            y_range: Some((0.0, 1.0)),
            whole_x: false,
            series,
        },
        640,
        600,
    )
}
