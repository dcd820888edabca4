//! `lungstream analyze` as a user runs it: the real series end to end, a saved model,
//! and bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use lungstream_schemas::report::{Decision, Report};

fn data_dir() -> PathBuf {
    let dir = std::env::var_os("LUNGSTREAM_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"));
    assert!(dir.join("README.md").is_file(), "test data not found at {}", dir.display());
    dir
}

fn lungstream(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lungstream")).args(args).env("LUNGSTREAM_LOG", "info").output().expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Width, height and RGB bytes of a PNG file.
fn read_png(path: &Path) -> (u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buffer = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buffer).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    buffer.truncate(info.buffer_size());
    (info.width, info.height, buffer)
}

fn patient_attributes(dir: &Path) -> (String, String) {
    use dicom_dictionary_std::tags;
    let file = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).find(|p| p.extension().is_some_and(|e| e == "dcm")).unwrap();
    let object = dicom_object::open_file(&file).unwrap();
    let get = |tag| object.element(tag).unwrap().to_str().unwrap().trim().to_string();
    (get(tags::PATIENT_ID), get(tags::PATIENT_NAME))
}

#[test]
fn analyze_real_series_report() {
    let series = data_dir().join("ct/pancreas-ct-cb-001");
    let out = tempfile::tempdir().unwrap();
    let output = lungstream(&["analyze", series.to_str().unwrap(), "--out", out.path().to_str().unwrap()]);
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert!(output.status.success(), "exit {:?}\n{stdout}\n{stderr}", output.status);

    let json = std::fs::read_to_string(out.path().join("report.json")).unwrap();
    // Unknown fields are refused, so this also checks nothing unexpected is written.
    let report: Report = serde_json::from_str(&json).unwrap();
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    let schema: serde_json::Value = serde_json::from_str(&lungstream_schemas::report::report_json_schema()).unwrap();
    for field in schema["required"].as_array().unwrap() {
        assert!(value.get(field.as_str().unwrap()).is_some(), "report.json lacks {field}");
    }

    // The series: 134 slices 3 mm apart, lungs on the upper part only.
    assert_eq!(report.series.slices, 134);
    assert!((report.series.spacing_mm[0] - 3.0).abs() < 1e-6);
    assert!((30..=60).contains(&report.series.slices_with_lungs), "{} slices with lungs", report.series.slices_with_lungs);
    assert!((1000.0..6000.0).contains(&report.series.lung_volume_ml.total), "{} mL of lung", report.series.lung_volume_ml.total);
    assert_eq!(report.series.patient_key.len(), 64);

    // The bundled demo weights are the default. They are trained on phantoms, and every
    // output warns that they are for research only.
    assert!(report.model.trained);
    assert!(report.model.research_only);
    assert_eq!(report.model.id, "lungstream-demo-narrow-phantom");
    assert_eq!(report.model.device, "cpu");
    assert!(report.warnings.iter().any(|w| w.contains("not for clinical use")), "{:?}", report.warnings);
    assert!(stdout.contains("RESEARCH ONLY: not for clinical use"), "{stdout}");
    assert!(stderr.contains("Networks placed."), "{stderr}");
    assert!(stderr.contains("auto: libtorch finds no CUDA device"), "{stderr}");

    // Numbers that must agree with each other.
    let p = report.probabilities;
    assert!((0.0..=1.0).contains(&p.diseased));
    assert!((0.0..=1.0).contains(&p.covid19));
    let expected = if p.diseased <= 0.5 { Decision::Healthy } else if p.covid19 > 0.5 { Decision::Covid19 } else { Decision::OtherDisease };
    assert_eq!(report.decision, expected);
    let max_softened = report.lobes.iter().map(|l| l.s_diseased).fold(0.0, f64::max);
    assert!((max_softened - p.diseased).abs() < 1e-12);
    assert!(report.lobes.len() >= report.series.slices_with_lungs);
    assert!(report.lobes.len() <= 2 * report.series.slices_with_lungs);
    let infection = &report.infection;
    let lung: f64 = report.lobes.iter().map(|l| f64::from(l.lung_pixels)).sum();
    assert_eq!(infection.lung_voxels.total, lung);
    let infected: f64 = report.lobes.iter().map(|l| l.infected_pixels).sum();
    assert!((infection.infected_voxels.total - infected).abs() < 1e-6 * infected.max(1.0));
    assert!((infection.percent.total - 100.0 * infected / lung).abs() < 1e-9);
    assert!((report.model_free.infected_percent.total - report.model_free.ground_glass_percent.total - report.model_free.consolidation_percent.total).abs() < 1e-9);

    // Overlays: one per worst slice, the slice twice side by side; red where infected.
    assert_eq!(report.worst_slices.len(), 4);
    for slice in &report.worst_slices {
        let (width, height, rgb) = read_png(&out.path().join(&slice.overlay));
        assert_eq!((width, height), (1024, 512));
        let red = rgb.chunks_exact(3).enumerate().filter(|(i, px)| (i % 1024) < 512 && px[0] > px[1].saturating_add(60) && px[0] > px[2].saturating_add(60)).count();
        assert_eq!(red > 0, slice.infected_mm2 > 0.0, "slice {}: {red} red pixels, {} mm² infected", slice.slice, slice.infected_mm2);
        // The attention panel is coloured over the lung.
        let coloured = rgb.chunks_exact(3).enumerate().filter(|(i, px)| (i % 1024) >= 512 && (px[0] != px[1] || px[1] != px[2])).count();
        assert!(coloured > 1000, "slice {}: {coloured} coloured attention pixels", slice.slice);
    }
    let worst = &report.worst_slices;
    assert!(worst.windows(2).all(|w| w[0].infected_mm2 >= w[1].infected_mm2));

    // The page: offline (no external address), the overlays embedded, the warning shown.
    let html = std::fs::read_to_string(out.path().join("report.html")).unwrap();
    assert_eq!(html.matches("src=\"data:image/png;base64,").count(), 4);
    assert!(!html.contains("http://"));
    assert!(!html.contains("https://"));
    assert!(html.contains("not for clinical use"));
    assert!(html.contains(report.decision.describe()));

    // No patient identifier anywhere.
    let (id, name) = patient_attributes(&series);
    for (what, content) in [("report.json", &json), ("report.html", &html), ("stdout", &stdout), ("stderr", &stderr)] {
        assert!(!content.contains(&id), "{what} contains the patient ID");
        assert!(!content.contains(&name), "{what} contains the patient name");
    }
}

#[test]
fn analyze_saved_model_repeats() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let phantom = lungstream(&["phantom", "--out", &path("ct"), "--label", "covid", "--slices", "16", "--slice-spacing", "8", "--matrix", "256"]);
    assert!(phantom.status.success(), "{}", text(&phantom.stderr));
    let init = lungstream(&["model", "init", "--out", &path("model.safetensors"), "--seed", "9"]);
    assert!(init.status.success(), "{}", text(&init.stderr));

    // An overlay of an earlier series in the output folder is removed.
    std::fs::create_dir(dir.path().join("a")).unwrap();
    std::fs::write(dir.path().join("a/slice-9999.png"), b"old").unwrap();

    let mut reports = Vec::new();
    for run in ["a", "b"] {
        let output = lungstream(&["analyze", &path("ct"), "--out", &path(run), "--model", &path("model.safetensors"), "--json", "--batch", "3"]);
        assert!(output.status.success(), "{}", text(&output.stderr));
        let printed: Report = serde_json::from_slice(&output.stdout).unwrap();
        let written: Report = serde_json::from_str(&std::fs::read_to_string(dir.path().join(run).join("report.json")).unwrap()).unwrap();
        assert_eq!(printed.lobes, written.lobes);
        reports.push(written);
    }
    assert!(!dir.path().join("a/slice-9999.png").exists(), "a stale overlay was kept");
    for slice in &reports[0].worst_slices {
        assert!(dir.path().join("a").join(&slice.overlay).is_file());
    }

    let show = lungstream(&["model", "show", &path("model.safetensors")]);
    let card: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(reports[0].model.version, card["version"].as_str().unwrap());
    assert!(reports[0].model.trained_on.contains("seed 9"));
    // Same input, same weights: the same scores and volumes.
    assert_eq!(reports[0].lobes, reports[1].lobes);
    assert_eq!(reports[0].infection, reports[1].infection);
    assert!(!reports[0].lobes.is_empty());
}

#[test]
fn analyze_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk");
    std::fs::create_dir(&junk).unwrap();
    std::fs::write(junk.join("notes.txt"), "not a DICOM file").unwrap();
    let out = dir.path().join("out");
    let out = out.to_str().unwrap();

    // Nothing analysable: exit 3 with the reason code, and no report.
    let output = lungstream(&["analyze", junk.to_str().unwrap(), "--out", out]);
    assert_eq!(output.status.code(), Some(3), "{}", text(&output.stderr));
    assert!(text(&output.stderr).contains("reason code "), "{}", text(&output.stderr));
    assert!(!Path::new(out).join("report.json").exists());

    // A path that does not exist.
    let output = lungstream(&["analyze", dir.path().join("absent").to_str().unwrap(), "--out", out]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("cannot read input"), "{}", text(&output.stderr));

    // A model file that is not one.
    let fake = dir.path().join("fake.safetensors");
    std::fs::write(&fake, b"{\"not\": \"weights\"}").unwrap();
    let output = lungstream(&["analyze", junk.to_str().unwrap(), "--model", fake.to_str().unwrap(), "--out", out]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("is not a lungstream model"), "{}", text(&output.stderr));

    // An output path that is a file fails before any work.
    let file = dir.path().join("file");
    std::fs::write(&file, b"").unwrap();
    let output = lungstream(&["analyze", junk.to_str().unwrap(), "--out", file.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("cannot write"), "{}", text(&output.stderr));
    assert!(!text(&output.stderr).contains("Series read."), "{}", text(&output.stderr));

    // Unknown configuration and device.
    let output = lungstream(&["analyze", junk.to_str().unwrap(), "--config", "huge", "--out", out]);
    assert!(text(&output.stderr).contains("unknown configuration \"huge\""), "{}", text(&output.stderr));
    let output = lungstream(&["analyze", junk.to_str().unwrap(), "--device", "gpu", "--out", out]);
    assert!(text(&output.stderr).contains("expected auto, cpu or cuda"), "{}", text(&output.stderr));
    if !tch::Cuda::is_available() {
        let output = lungstream(&["analyze", junk.to_str().unwrap(), "--device", "cuda", "--out", out]);
        assert_eq!(output.status.code(), Some(1));
        assert!(text(&output.stderr).contains("CUDA was requested"), "{}", text(&output.stderr));
    }
}
