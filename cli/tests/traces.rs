//! Trace export: the four services run as separate `lungstream serve` processes that send
//! their spans by OTLP/HTTP (JSON) to a receiver in this test. One phantom series sent by
//! STOW-RS must give one trace with spans of every service.

#[path = "../src/local_pipeline.rs"]
#[allow(dead_code)]
mod local_pipeline;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::routing::post;
use local_pipeline::Endpoints;
use lungstream_runtime::kafka::KafkaConsumer;
use lungstream_schemas::events::{topics, ReportEvent};
use serde_json::Value;
use support::{phantom, Cluster, SERVICES};

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
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT".to_string(), format!("http://{otlp}")),
        ("OTEL_EXPORTER_OTLP_PROTOCOL".to_string(), "http/json".to_string()),
        ("OTEL_BSP_SCHEDULE_DELAY".to_string(), "200".to_string()),
    ];
    let mut cluster = Cluster::start(&endpoints.kafka, &endpoints.store_url, &endpoints.store_options, &endpoints.database_url, &env);
    cluster.wait_ready(&SERVICES).await;

    // One small phantom series by STOW-RS; the client commits it, so the assembler does
    // not wait for the quiet period.
    let (files, study_uid) = phantom(&cluster.folder.path().join("series"), 31, 40, 128);
    let summary = cluster.upload(&files).await.unwrap();
    assert!(summary.rejected.is_empty(), "{:?}", summary.rejected);

    let mut consumer = KafkaConsumer::join(&endpoints.kafka, "traces-test-reader", &[topics::REPORTS]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut report_event: Option<ReportEvent> = None;
    while report_event.is_none() {
        assert!(
            Instant::now() < deadline,
            "no report in 120 s; the services' logs:\n{}",
            cluster.logs()
        );
        if let Ok(Ok(message)) = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await {
            report_event = Some(serde_json::from_slice(&message.payload).unwrap());
        }
    }
    consumer.close();
    assert_eq!(report_event.unwrap().study_uid, study_uid);

    // SIGTERM makes each service export what it still holds.
    let logs = cluster.logs();
    let stopping: Vec<_> = std::mem::take(&mut cluster.processes)
        .into_values()
        .map(|mut p| {
            std::thread::spawn(move || {
                p.stop();
                p
            })
        })
        .collect();
    for stopped in stopping {
        stopped.join().unwrap();
    }

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
    assert!(spans > 0, "no span was received; the services' logs:\n{logs}");
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
