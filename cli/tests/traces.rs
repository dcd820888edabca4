//! Trace export: the four services run as separate `lungstream serve` processes that send
//! their spans by OTLP/HTTP (JSON) to a receiver in this test. One phantom series sent by
//! STOW-RS must give one trace with spans of every service.

#[path = "../src/local_pipeline.rs"]
#[allow(dead_code)]
mod local_pipeline;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::routing::post;
use local_pipeline::Endpoints;
use lungstream_infer_worker::InferServiceConfig;
use lungstream_ingest::client::{upload, UploadOptions};
use lungstream_ingest::config::{AssemblerConfig, IngestConfig};
use lungstream_preprocess::service::PreprocessServiceConfig;
use lungstream_report::config::ReportConfig;
use lungstream_runtime::kafka::KafkaConsumer;
use lungstream_runtime::tenants::Tenant;
use lungstream_schemas::events::{topics, ReportEvent};
use serde_json::Value;

const TOKEN: &str = "traces-test-token-0123456789";

/// The OTLP export requests received, as JSON.
type Received = Arc<Mutex<Vec<Value>>>;

/// Starts an OTLP/HTTP receiver on a free port that keeps every `/v1/traces` request.
async fn otlp_receiver() -> (SocketAddr, Received) {
    let received: Received = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let sink = sink.clone();
            async move {
                let request: Value = serde_json::from_slice(&body).expect("an OTLP JSON export request");
                sink.lock().unwrap().push(request);
                "{}"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (address, received)
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// A `lungstream serve` process, stopped with SIGTERM on drop.
struct ServiceProcess {
    child: Child,
    log: PathBuf,
}

impl ServiceProcess {
    fn start(service: &str, config: &str, folder: &Path, otlp: SocketAddr) -> ServiceProcess {
        let config_path = folder.join(format!("{service}.toml"));
        std::fs::write(&config_path, config).unwrap();
        let log = folder.join(format!("{service}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_lungstream"))
            .args(["serve", service, "--config"])
            .arg(&config_path)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}"))
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
            .env("OTEL_BSP_SCHEDULE_DELAY", "200")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        ServiceProcess { child, log }
    }

    /// Sends SIGTERM and waits for the process to end, so it exports its last spans.
    fn stop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until `/readyz` of every address returns 200, or fails with the services' logs.
async fn wait_ready(services: &[(&ServiceProcess, SocketAddr)]) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    for (process, address) in services {
        loop {
            let ready = match client.get(format!("http://{address}/readyz")).send().await {
                Ok(r) => r.status().is_success(),
                Err(_) => false,
            };
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "a service did not become ready; its log:\n{}", process.log());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Returns the value of a string attribute in an OTLP JSON attribute list.
fn attribute<'a>(attributes: &'a Value, key: &str) -> Option<&'a str> {
    attributes
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .and_then(|a| a["value"]["stringValue"].as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_spans_every_service() {
    let endpoints = Endpoints::local("traces");
    endpoints.check().unwrap();
    let (otlp, received) = otlp_receiver().await;
    let folder = tempfile::tempdir().unwrap();
    let tenants = vec![Tenant {
        hospital: "north".into(),
        tokens: vec![TOKEN.into()],
        ae_titles: Vec::new(),
    }];
    let addresses: Vec<SocketAddr> = (0..4).map(|_| free_port()).collect();
    let ingest = IngestConfig {
        kafka: endpoints.kafka.clone(),
        store_url: endpoints.store_url.clone(),
        store_options: endpoints.store_options.clone(),
        http_listen: addresses[0],
        dicom_listen: None,
        patient_key_secret: "traces-test-secret".into(),
        tenants: tenants.clone(),
        assembler: AssemblerConfig {
            quiet_period_s: 60.0,
            tick_ms: 200,
            ..AssemblerConfig::default()
        },
        ..IngestConfig::default()
    };
    let preprocess = PreprocessServiceConfig {
        kafka: endpoints.kafka.clone(),
        store_url: endpoints.store_url.clone(),
        store_options: endpoints.store_options.clone(),
        http_listen: addresses[1],
        ..PreprocessServiceConfig::default()
    };
    let infer = InferServiceConfig {
        kafka: endpoints.kafka.clone(),
        store_url: endpoints.store_url.clone(),
        store_options: endpoints.store_options.clone(),
        http_listen: addresses[2],
        device: "cpu".into(),
        ..InferServiceConfig::default()
    };
    let report = ReportConfig {
        kafka: endpoints.kafka.clone(),
        store_url: endpoints.store_url.clone(),
        store_options: endpoints.store_options.clone(),
        http_listen: addresses[3],
        database_url: endpoints.database_url.clone(),
        tenants,
        ..ReportConfig::default()
    };
    let mut processes = vec![
        ServiceProcess::start("ingest", &toml::to_string(&ingest).unwrap(), folder.path(), otlp),
        ServiceProcess::start("preprocess", &toml::to_string(&preprocess).unwrap(), folder.path(), otlp),
        ServiceProcess::start("infer", &toml::to_string(&infer).unwrap(), folder.path(), otlp),
        ServiceProcess::start("report", &toml::to_string(&report).unwrap(), folder.path(), otlp),
    ];
    wait_ready(&processes.iter().zip(addresses.iter().copied()).collect::<Vec<_>>()).await;

    // One small phantom series by STOW-RS; the client commits it, so the assembler does
    // not wait for the quiet period.
    let mut spec = lungstream_phantom::PhantomSpec::preset(lungstream_phantom::Label::Covid, 31).with_matrix(128, 128, 2.8);
    spec.slices = 40;
    spec.slice_spacing_mm = 5.0;
    let dir = folder.path().join("series");
    let truth = lungstream_phantom::write_series(&spec, &dir).unwrap();
    // The folder also contains the phantom's ground_truth.json.
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_none_or(|e| e != "json"))
        .collect();
    files.sort();
    let summary = upload(&files, &UploadOptions::new(&format!("http://{}", addresses[0]), TOKEN), |_| {}).await.unwrap();
    assert!(summary.rejected.is_empty(), "{:?}", summary.rejected);

    let mut consumer = KafkaConsumer::join(&endpoints.kafka, "traces-test-reader", &[topics::REPORTS]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut report_event: Option<ReportEvent> = None;
    while report_event.is_none() {
        assert!(
            Instant::now() < deadline,
            "no report in 120 s; the services' logs:\n{}",
            processes.iter().map(ServiceProcess::log).collect::<Vec<_>>().join("\n")
        );
        if let Ok(Ok(message)) = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await {
            report_event = Some(serde_json::from_slice(&message.payload).unwrap());
        }
    }
    consumer.close();
    assert_eq!(report_event.unwrap().study_uid, truth.study_uid);

    // SIGTERM makes each service export what it still holds.
    let stopping: Vec<_> = processes
        .drain(..)
        .map(|mut p| {
            std::thread::spawn(move || {
                p.stop();
                p
            })
        })
        .collect();
    let stopped: Vec<ServiceProcess> = stopping.into_iter().map(|t| t.join().unwrap()).collect();

    // Services of every trace id, and the trace ids of the spans that handled this series.
    let mut services_by_trace: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut spans = 0;
    for request in received.lock().unwrap().iter() {
        for resource_spans in request["resourceSpans"].as_array().into_iter().flatten() {
            let service = attribute(&resource_spans["resource"]["attributes"], "service.name").unwrap_or("?").to_string();
            for scope in resource_spans["scopeSpans"].as_array().into_iter().flatten() {
                for span in scope["spans"].as_array().into_iter().flatten() {
                    spans += 1;
                    let trace = span["traceId"].as_str().unwrap_or_default().to_string();
                    services_by_trace.entry(trace).or_default().insert(service.clone());
                }
            }
        }
    }
    let every_service: BTreeSet<String> = ["lungstream-ingest", "lungstream-preprocess", "lungstream-infer", "lungstream-report"]
        .into_iter()
        .map(String::from)
        .collect();
    let complete: Vec<&String> = services_by_trace
        .iter()
        .filter(|(_, services)| every_service.is_subset(services))
        .map(|(trace, _)| trace)
        .collect();
    eprintln!("received {spans} spans in {} traces: {services_by_trace:?}", services_by_trace.len());
    assert!(spans > 0, "no span was received; the services' logs:\n{}", stopped.iter().map(ServiceProcess::log).collect::<Vec<_>>().join("\n"));
    assert_eq!(
        complete.len(),
        1,
        "expected one trace with spans of all four services, got {} ({spans} spans): {services_by_trace:?}",
        complete.len()
    );
    // Preprocess, infer and report saw only this series, so all their spans are in it.
    for (trace, services) in &services_by_trace {
        if trace != complete[0] {
            for stage in ["lungstream-preprocess", "lungstream-infer", "lungstream-report"] {
                assert!(!services.contains(stage), "{stage} has spans in another trace {trace}: {services:?}");
            }
        }
    }
}
