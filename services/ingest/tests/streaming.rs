//! The ingest service against the real broker and object store (`scripts/services.sh up`):
//! STOW-RS and C-STORE uploads of the real series, repeats, incomplete series, mixed
//! requests, and a killed service.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{dead_letters, series_events, series_files, Servers, TOKEN};
use lungstream_ingest::client::{upload, UploadOptions};
use lungstream_ingest::service::{self, Roles};
use lungstream_schemas::events::{topics, CommitTrigger, InstanceEvent};
use lungstream_schemas::ReasonCode;
use tokio_util::sync::CancellationToken;

const SERIES_UID_PREFIX: &str = "1.3.6.1.4.1.14519";

fn options(address: std::net::SocketAddr) -> UploadOptions {
    UploadOptions::new(&format!("http://{address}"), TOKEN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stow_upload_twice_gives_one_series() {
    let _telemetry = lungstream_runtime::telemetry::init("ingest-test");
    let servers = Servers::new("stow");
    let shutdown = CancellationToken::new();
    let running = service::start(servers.config(3.0, 600.0), Roles::ALL, shutdown.clone()).await.unwrap();
    let files = series_files();

    let summary = upload(&files, &options(running.http_address), |_| {}).await.unwrap();
    assert_eq!(summary.stored, 134, "refused: {:?}", summary.rejected);
    assert_eq!(summary.committed.len(), 1);

    let series = servers.read_until(topics::SERIES, Duration::from_secs(60), |m| !m.is_empty()).await;
    let events = series_events(&series);
    assert_eq!(events.len(), 1);
    let event = &events[0];
    assert_eq!(event.instance_count, 134);
    assert_eq!(event.instances.len(), 134);
    assert_eq!(event.hospital, "north");
    assert_eq!(event.trigger, CommitTrigger::ExplicitCommit);
    assert!(event.series_uid.starts_with(SERIES_UID_PREFIX));
    let positions: Vec<f64> = event.instances.iter().map(|i| i.slice_position_mm).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "instances sorted by position");
    assert_eq!(event.patient_key.as_ref().map(String::len), Some(64));

    let store = servers.store();
    let objects = store.list("instances/north").await.unwrap();
    assert_eq!(objects.len(), 134);
    let listed: Vec<&String> = event.instances.iter().map(|i| &i.object_key).collect();
    for key in &listed {
        assert!(objects.contains(key), "{key} missing from the store");
    }
    let instances = servers.read_until(topics::INSTANCES, Duration::from_secs(30), |m| m.len() >= 135).await;
    assert_eq!(instances.len(), 135, "134 instance events and one commit");
    let first: InstanceEvent = serde_json::from_slice(&instances[0].payload).unwrap();
    assert_eq!(instances[0].key_str(), Some(first.series_uid.as_str()));

    // The series event continues the trace of the upload (W3C traceparent header).
    let trace_of = |m: &lungstream_runtime::Message| {
        let header = m.header("traceparent").expect("a traceparent header");
        String::from_utf8(header.to_vec()).unwrap().split('-').nth(1).unwrap().to_string()
    };
    let upload_traces: std::collections::BTreeSet<String> = instances.iter().map(trace_of).collect();
    assert!(upload_traces.contains(&trace_of(&series[0])));

    // The same files again, then longer than the quiet period: nothing new.
    let again = upload(&files, &options(running.http_address), |_| {}).await.unwrap();
    assert_eq!(again.stored, 134);
    let series = servers.read_for(topics::SERIES, Duration::from_secs(8)).await;
    assert_eq!(series_events(&series), events, "a second upload must not change the series");
    assert_eq!(store.list("instances/north").await.unwrap().len(), 134);

    let metrics = reqwest::get(format!("http://{}/metrics", running.http_address)).await.unwrap().text().await.unwrap();
    let stored = "lungstream_ingest_instances_total{hospital=\"north\",source=\"stow_rs\",outcome=\"stored\",reason=\"\"} 134";
    let duplicates = "lungstream_ingest_instances_total{hospital=\"north\",source=\"stow_rs\",outcome=\"duplicate\",reason=\"\"} 134";
    assert!(metrics.contains(stored), "{metrics}");
    assert!(metrics.contains(duplicates), "{metrics}");
    assert!(metrics.contains("outcome=\"series_complete\"} 1"), "{metrics}");
    shutdown.cancel();
    running.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cstore_upload_gives_one_series() {
    let servers = Servers::new("cstore");
    let shutdown = CancellationToken::new();
    let mut config = servers.config(30.0, 600.0);
    config.dicom_listen = Some("127.0.0.1:0".parse().unwrap());
    let running = service::start(config, Roles::ALL, shutdown.clone()).await.unwrap();
    let address = running.dicom_address.unwrap().to_string();
    let files = series_files();
    let outcomes = tokio::task::spawn_blocking(move || lungstream_ingest::cstore::send_files(&address, "NORTH_CT", "LUNGSTREAM", &files))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcomes.len(), 134);
    assert!(outcomes.iter().all(|o| o.status == 0), "{:?}", outcomes.iter().find(|o| o.status != 0));

    // The quiet period is 30 s: the release of the association completes the series.
    let series = servers.read_until(topics::SERIES, Duration::from_secs(20), |m| !m.is_empty()).await;
    let events = series_events(&series);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].instance_count, 134);
    assert_eq!(events[0].trigger, CommitTrigger::AssociationReleased);
    assert_eq!(servers.store().list("instances/north").await.unwrap().len(), 134);
    shutdown.cancel();
    running.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_series_expires_as_incomplete() {
    let servers = Servers::new("half");
    let shutdown = CancellationToken::new();
    let running = service::start(servers.config(1.0, 4.0), Roles::ALL, shutdown.clone()).await.unwrap();
    // Every other slice: half the series, with a gap between every two.
    let half: Vec<PathBuf> = series_files().into_iter().step_by(2).collect();
    let mut options = options(running.http_address);
    options.commit = false;
    let summary = upload(&half, &options, |_| {}).await.unwrap();
    assert_eq!(summary.stored, 67);

    let dead = servers.read_until(topics::DEAD_LETTER, Duration::from_secs(30), |m| !m.is_empty()).await;
    let dead = dead_letters(&dead);
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, ReasonCode::IncompleteSeries);
    assert_eq!(dead[0].hospital.as_deref(), Some("north"));
    assert!(dead[0].series_uid.as_deref().unwrap().starts_with(SERIES_UID_PREFIX));
    assert_eq!(dead[0].original["instance_count"], 67);
    assert!(dead[0].detail.contains("missing"), "{}", dead[0].detail);
    assert!(servers.read_for(topics::SERIES, Duration::from_secs(2)).await.is_empty());
    // A rejected result, so the study reaches the hospital's worklist with the reason.
    let results = servers.read_until(topics::RESULTS, Duration::from_secs(10), |m| !m.is_empty()).await;
    assert_eq!(results.len(), 1);
    let result: lungstream_schemas::events::ResultsEvent = serde_json::from_slice(&results[0].payload).unwrap();
    assert_eq!(result.hospital, "north");
    assert_eq!(result.series_uid, dead[0].series_uid.clone().unwrap());
    match result.outcome {
        lungstream_schemas::events::SeriesOutcome::Rejected { reason, .. } => assert_eq!(reason, ReasonCode::IncompleteSeries),
        other => panic!("expected a rejected result, got {other:?}"),
    }
    // The objects stay for inspection.
    assert_eq!(servers.store().list("instances/north").await.unwrap().len(), 67);
    shutdown.cancel();
    running.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_request_stores_good_names_bad() {
    let servers = Servers::new("mixed");
    let shutdown = CancellationToken::new();
    let running = service::start(servers.config(30.0, 600.0), Roles::ALL, shutdown.clone()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let good: Vec<PathBuf> = series_files().into_iter().take(3).collect();
    let truncated = dir.path().join("truncated.dcm");
    let bytes = std::fs::read(&good[0]).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let text = dir.path().join("notes.dcm");
    std::fs::write(&text, "not a DICOM file at all").unwrap();
    let mr = common::data_dir().join("dicom-edge/pydicom-test-files/MR_small.dcm");
    let files = vec![good[0].clone(), truncated.clone(), good[1].clone(), text.clone(), mr.clone(), good[2].clone()];

    let mut options = options(running.http_address);
    options.commit = false;
    let summary = upload(&files, &options, |_| {}).await.unwrap();
    assert_eq!(summary.stored, 3);
    let reasons: Vec<(PathBuf, String)> = summary.rejected.clone();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    let reason_of = |path: &PathBuf| reasons.iter().find(|(p, _)| p == path).map(|(_, r)| r.clone()).unwrap();
    assert!(reason_of(&truncated).starts_with("truncated:"), "{}", reason_of(&truncated));
    assert!(!reason_of(&truncated).contains("part 2"), "the client names the file instead");
    assert!(reason_of(&text).starts_with("invalid_dicom:"), "{}", reason_of(&text));
    assert!(reason_of(&mr).starts_with("not_ct:"), "{}", reason_of(&mr));
    assert_eq!(servers.store().list("instances/north").await.unwrap().len(), 3);

    // A part of another study than the URL names is rejected and not stored.
    let other_study = &series_files()[10];
    let body = lungstream_ingest::multipart::build("b0undary", "application/dicom", &[std::fs::read(other_study).unwrap().into()]);
    let client = reqwest::Client::new();
    let response = client
        .post(format!("http://{}/studies/1.2.3.4", running.http_address))
        .bearer_auth(TOKEN)
        .header("Content-Type", "multipart/related; type=\"application/dicom\"; boundary=b0undary")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
    let answer: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    let comment = answer["00081198"]["Value"][0]["00000902"]["Value"][0].as_str().unwrap();
    assert!(comment.starts_with("invalid_attribute:"), "{comment}");
    assert!(comment.chars().count() <= 64, "{comment}");
    assert_eq!(servers.store().list("instances/north").await.unwrap().len(), 3);

    // A body without parts is a bad request.
    let response = client
        .post(format!("http://{}/studies", running.http_address))
        .bearer_auth(TOKEN)
        .header("Content-Type", "multipart/related; type=\"application/dicom\"; boundary=b0undary")
        .body("--b0undary--\r\n")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    // A request with a wrong token stores nothing.
    let mut wrong = options.clone();
    wrong.token = "south-token-not-known-0123456789".into();
    let error = upload(&good, &wrong, |_| {}).await.unwrap_err().to_string();
    assert!(error.contains("401"), "{error}");
    shutdown.cancel();
    running.wait().await.unwrap();
}

/// The ingest binary, started with a configuration file.
struct IngestProcess {
    child: Child,
    http: String,
}

impl IngestProcess {
    fn start(config: &lungstream_ingest::config::IngestConfig, dir: &std::path::Path, port: u16) -> IngestProcess {
        let mut config = config.clone();
        config.http_listen = format!("127.0.0.1:{port}").parse().unwrap();
        let path = dir.join("ingest.toml");
        std::fs::write(&path, toml_text(&config)).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_lungstream-ingest"))
            .arg("--config")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        IngestProcess {
            child,
            http: format!("127.0.0.1:{port}"),
        }
    }

    async fn wait_ready(&self) {
        for _ in 0..300 {
            if let Ok(response) = reqwest::get(format!("http://{}/readyz", self.http)).await {
                if response.status() == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the ingest process did not become ready");
    }

    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

fn toml_text(config: &lungstream_ingest::config::IngestConfig) -> String {
    toml::to_string(config).unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_ingest_loses_nothing() {
    let servers = Servers::new("restart");
    let dir = tempfile::tempdir().unwrap();
    let config = servers.config(3.0, 600.0);
    let port = free_port();
    let files = series_files();
    let (first_half, second_half) = files.split_at(67);

    let process = IngestProcess::start(&config, dir.path(), port);
    process.wait_ready().await;
    let mut options = UploadOptions::new(&format!("http://{}", process.http), TOKEN);
    options.commit = false;
    let summary = upload(first_half, &options, |_| {}).await.unwrap();
    assert_eq!(summary.stored, 67);
    // SIGKILL: no graceful shutdown, no final commit.
    process.kill();

    let process = IngestProcess::start(&config, dir.path(), port);
    process.wait_ready().await;
    let summary = upload(second_half, &options, |_| {}).await.unwrap();
    assert_eq!(summary.stored, 67);

    let series = servers.read_until(topics::SERIES, Duration::from_secs(60), |m| !m.is_empty()).await;
    let events = series_events(&series);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].instance_count, 134);
    assert_eq!(events[0].trigger, CommitTrigger::QuietPeriod);
    let later = servers.read_for(topics::SERIES, Duration::from_secs(5)).await;
    assert_eq!(later.len(), 1, "exactly one series event");
    process.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_ingest_cleanly() {
    let servers = Servers::new("sigterm");
    let dir = tempfile::tempdir().unwrap();
    let process = IngestProcess::start(&servers.config(30.0, 600.0), dir.path(), free_port());
    process.wait_ready().await;
    let IngestProcess { mut child, .. } = process;
    let status = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(std::time::Instant::now() < deadline, "the service did not stop within 20 s of SIGTERM");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(exit.success(), "{exit:?}");
}

/// Requests and instances over the configured limits get clear errors with the reason
/// code and the limit, and nothing is stored or published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_give_clear_errors() {
    let servers = Servers::new("limits");
    let mut config = servers.config(3.0, 600.0);
    config.limits.max_request_bytes = 1_000_000;
    config.limits.max_matrix = 256;
    let shutdown = CancellationToken::new();
    let running = service::start(config, Roles::ALL, shutdown.clone()).await.unwrap();

    // A body over the request limit: 413, naming the limit.
    let oversized = vec![b'x'; 1_500_000];
    let reply = reqwest::Client::new()
        .post(format!("http://{}/studies", running.http_address))
        .bearer_auth(TOKEN)
        .header("content-type", "multipart/related; type=\"application/dicom\"; boundary=b")
        .body(oversized)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 413);
    let text = reply.text().await.unwrap();
    assert!(text.starts_with("too_large:"), "{text}");
    assert!(text.contains("1000000"), "{text}");

    // The real series is 512×512: over a matrix limit of 256, each instance is rejected
    // with `too_large` and the size, and the client lists every file.
    let files: Vec<PathBuf> = series_files().into_iter().take(3).collect();
    let mut options = options(running.http_address);
    options.batch_bytes = 600_000;
    options.commit = false;
    let summary = upload(&files, &options, |_| {}).await.unwrap();
    assert_eq!(summary.rejected.len(), 3, "{summary:?}");
    for (_, reason) in &summary.rejected {
        assert!(reason.starts_with("too_large"), "{reason}");
        assert!(reason.contains("512"), "the size is missing: {reason}");
        assert!(reason.contains("256"), "the limit is missing: {reason}");
    }
    let instances = servers.read_until(topics::INSTANCES, Duration::from_secs(3), |_| false).await;
    assert!(instances.is_empty(), "{} instance events were published", instances.len());

    shutdown.cancel();
    running.wait().await.unwrap();
}
