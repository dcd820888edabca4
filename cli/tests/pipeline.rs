//! The whole pipeline through the real broker, object store and PostgreSQL
//! (`scripts/services.sh up` and the local PostgreSQL): DICOM in by STOW-RS, a report out
//! on `ct.reports.v1`, in PostgreSQL and behind the report API.

#[path = "../src/local_pipeline.rs"]
#[allow(dead_code)]
mod local_pipeline;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use local_pipeline::{Endpoints, LocalPipeline, PipelineOptions};
use lungstream_ingest::client::{upload, UploadOptions};
use lungstream_runtime::kafka::KafkaConsumer;
use lungstream_runtime::tenants::Tenant;
use lungstream_schemas::events::{topics, DeadLetterEvent, ReportEvent};
use lungstream_schemas::report::Report;

const NORTH: &str = "north-pipeline-token-0123456789";
const SOUTH: &str = "south-pipeline-token-0123456789";
const SECRET: &str = "pipeline-test-secret";

fn data_dir() -> PathBuf {
    let dir = std::env::var_os("LUNGSTREAM_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"));
    assert!(dir.join("README.md").is_file(), "test data not found at {}", dir.display());
    dir
}

fn dicom_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .collect();
    files.sort();
    files
}

fn options(preprocess_workers: usize) -> PipelineOptions {
    PipelineOptions {
        tenants: vec![
            Tenant {
                hospital: "north".into(),
                tokens: vec![NORTH.into()],
                ae_titles: Vec::new(),
            },
            Tenant {
                hospital: "south".into(),
                tokens: vec![SOUTH.into()],
                ae_titles: Vec::new(),
            },
        ],
        patient_key_secret: SECRET.into(),
        preprocess_workers,
        preprocess_threads: 0,
        infer_threads: 0,
        quiet_period_s: 60.0,
        device: "auto".into(),
    }
}

/// Reads `ct.reports.v1` until `done` returns true for the latest report of each study,
/// or until `timeout`.
async fn reports_until(endpoints: &Endpoints, timeout: Duration, done: impl Fn(&[ReportEvent]) -> bool) -> Vec<ReportEvent> {
    let mut consumer = KafkaConsumer::join(&endpoints.kafka, "test-report-reader", &[topics::REPORTS]).unwrap();
    let deadline = Instant::now() + timeout;
    let mut seen: Vec<ReportEvent> = Vec::new();
    while Instant::now() < deadline {
        if let Ok(Ok(message)) = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await {
            let event: ReportEvent = serde_json::from_slice(&message.payload).unwrap();
            seen.retain(|e| e.study_uid != event.study_uid);
            seen.push(event);
            if done(&seen) {
                break;
            }
        }
    }
    consumer.close();
    seen
}

/// Reads `topic` from the start until `done` returns true or 60 s pass.
async fn read_topic(endpoints: &Endpoints, topic: &str, done: impl Fn(&[lungstream_runtime::Message]) -> bool) -> Vec<lungstream_runtime::Message> {
    let mut consumer = KafkaConsumer::join(&endpoints.kafka, "test-topic-reader", &[topic]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut messages = Vec::new();
    while Instant::now() < deadline && !done(&messages) {
        if let Ok(Ok(message)) = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await {
            messages.push(message);
        }
    }
    consumer.close();
    messages
}

/// Reads `topic` from the start until 3 s pass without an event after the first one (at
/// most 60 s).
async fn read_all(endpoints: &Endpoints, topic: &str) -> Vec<lungstream_runtime::Message> {
    let group = format!("test-read-all-{}", topic.replace('.', "-"));
    let mut consumer = KafkaConsumer::join(&endpoints.kafka, &group, &[topic]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut messages = Vec::new();
    let mut last = Instant::now();
    while Instant::now() < deadline && (messages.is_empty() || last.elapsed() < Duration::from_secs(3)) {
        if let Ok(Ok(message)) = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await {
            messages.push(message);
            last = Instant::now();
        }
    }
    consumer.close();
    messages
}

async fn get(address: std::net::SocketAddr, path: &str, token: &str) -> (u16, Vec<u8>) {
    let response = reqwest::Client::new()
        .get(format!("http://{address}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.bytes().await.unwrap().to_vec())
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * (1.0 + a.abs().max(b.abs()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_series_report_matches_analyze() {
    // No log subscriber here: the other test of this binary installs the process's one,
    // to search every log line for patient attributes.
    let endpoints = Endpoints::local("pipeline-real");
    endpoints.check().unwrap();
    let pipeline = LocalPipeline::start(&endpoints, &options(1)).await.unwrap();
    let series = data_dir().join("ct/pancreas-ct-cb-001");
    let files = dicom_files(&series);
    assert_eq!(files.len(), 134);
    let summary = upload(&files, &UploadOptions::new(&format!("http://{}", pipeline.ingest_address), NORTH), |_| {})
        .await
        .unwrap();
    assert_eq!(summary.rejected.len(), 0);

    let events = reports_until(&endpoints, Duration::from_secs(300), |seen| !seen.is_empty()).await;
    assert_eq!(events.len(), 1, "no report event within 300 s");
    let event = &events[0];
    assert_eq!(event.hospital, "north");
    assert_eq!(event.status, "analysed");

    // The same files through `lungstream analyze`, in one process.
    let out = tempfile::tempdir().unwrap();
    let analyze = tokio::task::spawn_blocking({
        let (series, out) = (series.clone(), out.path().to_path_buf());
        move || {
            Command::new(env!("CARGO_BIN_EXE_lungstream"))
                .args(["analyze", "--out"])
                .arg(&out)
                .arg(&series)
                .env("LUNGSTREAM_PATIENT_KEY_SECRET", SECRET)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(analyze.status.success(), "{}", String::from_utf8_lossy(&analyze.stderr));
    let expected: Report = serde_json::from_slice(&std::fs::read(out.path().join("report.json")).unwrap()).unwrap();

    // The report event for analysts.
    let probabilities = event.probabilities.unwrap();
    assert!(close(probabilities.diseased, expected.probabilities.diseased), "{probabilities:?} vs {:?}", expected.probabilities);
    assert!(close(probabilities.covid19, expected.probabilities.covid19));
    assert_eq!(event.decision, Some(expected.decision));
    let percent = event.infected_percent.unwrap();
    assert!(close(percent.total, expected.infection.percent.total), "{percent:?} vs {:?}", expected.infection.percent);
    assert!(close(event.infected_ml.unwrap().total, expected.infection.volume_ml.total));
    assert_eq!(event.patient_key.as_deref(), Some(expected.series.patient_key.as_str()));

    // The study behind the API, read from PostgreSQL and the store.
    let (status, body) = get(pipeline.report_address, &format!("/api/v1/studies/{}", event.study_uid), NORTH).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let study: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let stored: Report = serde_json::from_value(study["report"].clone()).unwrap();
    assert_eq!(stored.lobes.len(), expected.lobes.len());
    for (a, b) in stored.lobes.iter().zip(&expected.lobes) {
        assert_eq!((a.slice, &a.side), (b.slice, &b.side));
        assert!(close(a.p_diseased, b.p_diseased), "slice {}: {} vs {}", a.slice, a.p_diseased, b.p_diseased);
        assert!(close(a.s_covid19, b.s_covid19), "slice {}: {} vs {}", a.slice, a.s_covid19, b.s_covid19);
        assert!(close(a.infected_pixels, b.infected_pixels));
    }
    assert!(close(stored.model_free.infected_percent.total, expected.model_free.infected_percent.total));
    assert!(close(stored.series.lung_volume_ml.total, expected.series.lung_volume_ml.total));
    let worst: Vec<usize> = stored.worst_slices.iter().map(|s| s.slice).collect();
    let expected_worst: Vec<usize> = expected.worst_slices.iter().map(|s| s.slice).collect();
    assert_eq!(worst, expected_worst);
    // The overlays are the same images as analyze's.
    for slice in &expected.worst_slices {
        let (status, png) = get(pipeline.report_address, &format!("/api/v1/studies/{}/overlays/{}", event.study_uid, slice.overlay), NORTH).await;
        assert_eq!(status, 200);
        assert_eq!(png, std::fs::read(out.path().join(&slice.overlay)).unwrap(), "overlay {}", slice.overlay);
    }
    let (status, _) = get(pipeline.report_address, &format!("/api/v1/studies/{}", event.study_uid), SOUTH).await;
    assert_eq!(status, 403);
    pipeline.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phantom_studies_from_two_hospitals() {
    // Five analysable studies and one that preprocess rejects, from two hospitals at once.
    use lungstream_phantom::{write_series, Label, PhantomSpec};
    // Every log line of every service goes into `logs` too, to be searched for patient
    // attributes at the end.
    let logs = LogBuffer::default();
    {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        let capture = logs.clone();
        let _ = tracing_subscriber::registry()
            .with(tracing_subscriber::EnvFilter::new(
                "info,lungstream_ingest=debug,lungstream_preprocess=debug,lungstream_infer_worker=debug,lungstream_report=debug,lungstream_runtime=debug,lungstream_dicom=debug",
            ))
            .with(tracing_subscriber::fmt::layer().with_ansi(false).with_writer(move || capture.clone()))
            .try_init();
    }
    let endpoints = Endpoints::local("pipeline-phantoms");
    endpoints.check().unwrap();
    let pipeline = LocalPipeline::start(&endpoints, &options(2)).await.unwrap();
    let folder = tempfile::tempdir().unwrap();
    let plan = [
        ("north", NORTH, Label::Covid, 11),
        ("north", NORTH, Label::Healthy, 12),
        ("north", NORTH, Label::Other, 13),
        ("south", SOUTH, Label::Covid, 14),
        ("south", SOUTH, Label::Healthy, 15),
        ("south", SOUTH, Label::Healthy, 16),
    ];
    let mut studies = Vec::new();
    for (i, (hospital, _, label, seed)) in plan.iter().enumerate() {
        let mut spec = PhantomSpec::preset(*label, *seed).with_matrix(128, 128, 2.8);
        spec.slices = 40;
        spec.slice_spacing_mm = 5.0;
        spec.patient_name = format!("PIPELINE^PATIENT{i}");
        spec.patient_id = format!("PIPELINE-PID-{i}");
        spec.patient_birth_date = "19450817".into();
        // The first study has a second series (another kernel), so the study rule picks one.
        if i == 0 {
            spec.second_series_kernel = Some("LUNG".into());
        }
        // The last one misses two slices: the client commits it anyway, and preprocess
        // rejects it, so its report gives the reason.
        if i == 5 {
            spec.missing_slices = vec![20, 21];
        }
        let dir = folder.path().join(format!("{hospital}-{i}"));
        let truth = write_series(&spec, &dir).unwrap();
        studies.push((*hospital, truth.study_uid.clone(), truth.series_uids.clone(), dir));
    }
    // A poison event on each stage's input first: each goes to the dead-letter topic, and
    // the stages go on with the studies.
    let producer = lungstream_runtime::kafka::KafkaProducer::connect(&endpoints.kafka).unwrap();
    for topic in [topics::SERIES, topics::LOBES, topics::RESULTS] {
        producer.send(topic, "poison", br#"{"schema_version":"1.0","nonsense":true}"#, &[]).await.unwrap();
    }

    // All six at once.
    let uploads = plan.iter().zip(&studies).map(|((_, token, _, _), (_, _, _, dir))| {
        let files = dicom_files(dir);
        let options = UploadOptions::new(&format!("http://{}", pipeline.ingest_address), token);
        async move { upload(&files, &options, |_| {}).await.unwrap() }
    });
    for summary in futures::future::join_all(uploads).await {
        assert!(summary.rejected.is_empty(), "{:?}", summary.rejected);
    }

    // A study's report is updated when its second series arrives, so wait for the
    // report that lists every series.
    let complete = |seen: &[ReportEvent]| {
        studies.iter().all(|(_, study_uid, series_uids, _)| seen.iter().any(|e| &e.study_uid == study_uid && e.other_series.len() + 1 == series_uids.len()))
    };
    let events = reports_until(&endpoints, Duration::from_secs(300), complete).await;
    assert_eq!(events.len(), 6, "reports for {} of 6 studies within 300 s", events.len());
    for (i, (hospital, study_uid, series_uids, _)) in studies.iter().enumerate() {
        let event = events.iter().find(|e| &e.study_uid == study_uid).expect("a report per study");
        assert_eq!(&event.hospital, hospital);
        if i == 5 {
            assert_eq!(event.status, "rejected");
            assert_eq!(event.reason, Some(lungstream_schemas::ReasonCode::MissingSlices), "{event:?}");
            assert_eq!(event.decision, None);
            continue;
        }
        assert_eq!(event.status, "analysed");
        assert!(series_uids.contains(&event.series_uid));
        assert_eq!(event.other_series.len(), series_uids.len() - 1, "{event:?}");
        let text = serde_json::to_string(event).unwrap();
        assert!(!text.contains("PIPELINE^PATIENT"), "a patient name in the report event: {text}");
    }

    // Each hospital's worklist contains its own studies and no others.
    for (token, hospital, count) in [(NORTH, "north", 3), (SOUTH, "south", 3)] {
        let (status, body) = get(pipeline.report_address, "/api/v1/worklist?sort=severity", token).await;
        assert_eq!(status, 200);
        let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let items = list.as_array().expect("the worklist is a JSON array").clone();
        assert_eq!(items.len(), count, "{hospital}: {list}");
        for item in &items {
            assert_eq!(item["hospital"], hospital);
        }
    }
    let south_study = &studies[3].1;
    let (status, _) = get(pipeline.report_address, &format!("/api/v1/studies/{south_study}"), NORTH).await;
    assert_eq!(status, 403);
    let (status, _) = get(pipeline.report_address, &format!("/api/v1/studies/{south_study}"), SOUTH).await;
    assert_eq!(status, 200);
    // The rejected series is also on the dead-letter topic, with the same reason.
    let rejected_series = studies[5].2[0].clone();
    let letters = read_topic(&endpoints, topics::DEAD_LETTER, |m| {
        let events: Vec<DeadLetterEvent> = m.iter().filter_map(|m| serde_json::from_slice(&m.payload).ok()).collect();
        events.iter().any(|e| e.series_uid.as_deref() == Some(rejected_series.as_str())) && events.iter().filter(|e| e.original["nonsense"] == true).count() >= 3
    })
    .await;
    let letter: DeadLetterEvent = letters
        .iter()
        .filter_map(|m| serde_json::from_slice::<DeadLetterEvent>(&m.payload).ok())
        .find(|e| e.series_uid.as_deref() == Some(rejected_series.as_str()))
        .expect("a dead letter for the rejected series");
    assert_eq!(letter.reason, lungstream_schemas::ReasonCode::MissingSlices);
    assert_eq!(letter.service, "preprocess");
    let poisoned: Vec<String> = letters
        .iter()
        .filter_map(|m| serde_json::from_slice::<DeadLetterEvent>(&m.payload).ok())
        .filter(|e| e.original["nonsense"] == true)
        .map(|e| {
            assert_eq!(e.reason, lungstream_schemas::ReasonCode::MalformedEvent);
            e.service
        })
        .collect();
    for service in ["preprocess", "infer", "report"] {
        assert!(poisoned.iter().any(|s| s == service), "no dead letter from {service}: {poisoned:?}");
    }
    // No patient name, ID or birth date on any topic, in any metric or in any log line,
    // and no hospital token or the patient key secret either.
    let secrets = ["PIPELINE^PATIENT", "PIPELINE-PID", "19450817", NORTH, SOUTH, SECRET];
    for topic in topics::ALL {
        let events = read_all(&endpoints, topic).await;
        assert!(!events.is_empty(), "no events on {topic}");
        for event in &events {
            let text = String::from_utf8_lossy(&event.payload);
            for secret in secrets {
                assert!(!text.contains(secret), "{secret} on {topic}: {text}");
            }
        }
    }
    for address in &pipeline.http_addresses {
        let metrics = reqwest::get(format!("http://{address}/metrics")).await.unwrap().text().await.unwrap();
        assert!(metrics.contains("lungstream_"), "{address}: {metrics}");
        for secret in secrets {
            assert!(!metrics.contains(secret), "{secret} in the metrics of {address}");
        }
    }
    pipeline.stop().await.unwrap();
    let logged = logs.text();
    assert!(logged.contains("Published the study's report event"), "the log capture is empty");
    for secret in secrets {
        assert!(!logged.contains(secret), "{secret} in the logs");
    }
}

/// Log output kept in memory.
#[derive(Clone, Default)]
struct LogBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl LogBuffer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for LogBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
