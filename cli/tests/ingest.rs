//! `lungstream ingest` against an ingest service on the real broker (`scripts/services.sh
//! up`): a folder with the real series and a non-CT file, by STOW-RS and by C-STORE.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use lungstream_ingest::config::{AssemblerConfig, IngestConfig, Tenant};
use lungstream_ingest::service::{self, Roles};
use lungstream_runtime::kafka::KafkaConsumer;
use lungstream_runtime::KafkaConfig;
use lungstream_schemas::events::{topics, CommitTrigger, SeriesEvent};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "cli-test-token-0123456789abcdef";

fn data_dir() -> PathBuf {
    let dir = std::env::var_os("LUNGSTREAM_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"));
    assert!(dir.join("README.md").is_file(), "test data not found at {}", dir.display());
    dir
}

fn kafka_config(name: &str) -> KafkaConfig {
    let port: u16 = std::env::var("LUNGSTREAM_KAFKA_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(19092);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        "no Kafka broker on 127.0.0.1:{port}: start it with `scripts/services.sh up`"
    );
    let unique = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    KafkaConfig {
        brokers: format!("127.0.0.1:{port}"),
        topic_prefix: format!("test.cli-{name}-{}-{unique}.", std::process::id()),
        session_timeout_ms: 6000,
        heartbeat_interval_ms: 1000,
        ..KafkaConfig::default()
    }
}

/// Reads series events until one arrives or 60 s pass.
async fn first_series_event(kafka: &KafkaConfig) -> Option<SeriesEvent> {
    let mut consumer = KafkaConsumer::join(kafka, "cli-test-reader", &[topics::SERIES]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(Ok(message)) = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await {
            return Some(serde_json::from_slice(&message.payload).unwrap());
        }
    }
    None
}

async fn run_cli(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || Command::new(env!("CARGO_BIN_EXE_lungstream")).args(&args).output().unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_folder_lists_rejected_files() {
    for via_dicom in [false, true] {
        let kafka = kafka_config(if via_dicom { "cstore" } else { "stow" });
        let config = IngestConfig {
            kafka: kafka.clone(),
            store_url: "memory://".into(),
            http_listen: "127.0.0.1:0".parse().unwrap(),
            dicom_listen: Some("127.0.0.1:0".parse().unwrap()),
            patient_key_secret: "cli-test".into(),
            tenants: vec![Tenant {
                hospital: "north".into(),
                tokens: vec![TOKEN.into()],
                ae_titles: vec!["NORTH_CT".into()],
            }],
            assembler: AssemblerConfig {
                quiet_period_s: 60.0,
                tick_ms: 200,
                ..AssemblerConfig::default()
            },
            ..IngestConfig::default()
        };
        let shutdown = CancellationToken::new();
        let running = service::start(config, Roles::ALL, shutdown.clone()).await.unwrap();
        let series = data_dir().join("ct/pancreas-ct-cb-001");
        let mr = data_dir().join("dicom-edge/pydicom-test-files/MR_small.dcm");
        let mut args = vec!["ingest".to_string()];
        if via_dicom {
            args.extend(["--dicom".into(), running.dicom_address.unwrap().to_string(), "--calling-ae".into(), "NORTH_CT".into()]);
        } else {
            args.extend(["--url".into(), format!("http://{}", running.http_address), "--token".into(), TOKEN.into()]);
        }
        args.extend([series.display().to_string(), mr.display().to_string()]);
        let output = run_cli(args).await;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(output.status.code(), Some(4), "stdout: {stdout}\nstderr: {stderr}");
        // The folder's LICENSE and Citations files and the MR image are rejected.
        let rejected: Vec<&str> = stdout.lines().filter(|l| l.starts_with("rejected\t")).collect();
        assert_eq!(rejected.len(), 3, "{stdout}");
        let mr_line = rejected.iter().find(|l| l.contains("MR_small.dcm")).unwrap();
        assert!(mr_line.contains("not_ct"), "{mr_line}");
        assert!(stderr.contains("134 of 137 files stored"), "{stderr}");

        // The quiet period is 60 s, so the series completes by the commit or the release.
        let event = first_series_event(&kafka).await.expect("a series event");
        assert_eq!(event.instance_count, 134);
        let expected = if via_dicom { CommitTrigger::AssociationReleased } else { CommitTrigger::ExplicitCommit };
        assert_eq!(event.trigger, expected);
        shutdown.cancel();
        running.wait().await.unwrap();
    }
}

#[test]
fn ingest_without_token_explains() {
    let output = Command::new(env!("CARGO_BIN_EXE_lungstream"))
        .args(["ingest", "--url", "http://127.0.0.1:9", "."])
        .env_remove("LUNGSTREAM_TOKEN")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("LUNGSTREAM_TOKEN"), "{stderr}");
}
