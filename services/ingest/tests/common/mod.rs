//! Shared setup of the tests against the real broker (tansu) and object store
//! (SeaweedFS) that `scripts/services.sh up` starts on 127.0.0.1.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use lungstream_ingest::config::{AssemblerConfig, IngestConfig, Tenant};
use lungstream_runtime::kafka::KafkaConsumer;
use lungstream_runtime::{KafkaConfig, Message, Store};
use lungstream_schemas::events::{DeadLetterEvent, SeriesEvent};

/// Returns the real test data folder: `LUNGSTREAM_DATA`, or `../shared/data` beside the
/// checkout.
pub fn data_dir() -> PathBuf {
    let dir = std::env::var_os("LUNGSTREAM_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"));
    assert!(dir.is_dir(), "test data not found at {}; set LUNGSTREAM_DATA", dir.display());
    dir
}

/// Returns the 134 files of the real CT series, by name.
pub fn series_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data_dir().join("ct/pancreas-ct-cb-001"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 134);
    files
}

fn port(variable: &str, default: u16) -> u16 {
    std::env::var(variable).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The broker and store of `scripts/services.sh`, under names no other test uses.
pub struct Servers {
    pub kafka: KafkaConfig,
    pub store_url: String,
    pub store_options: BTreeMap<String, String>,
}

impl Servers {
    /// Checks that both servers accept connections and picks a fresh topic prefix and
    /// store folder.
    pub fn new(name: &str) -> Servers {
        let kafka_port = port("LUNGSTREAM_KAFKA_PORT", 19092);
        let s3_port = port("LUNGSTREAM_S3_PORT", 18333);
        for (what, p) in [("tansu (Kafka)", kafka_port), ("SeaweedFS (S3)", s3_port)] {
            assert!(
                std::net::TcpStream::connect(("127.0.0.1", p)).is_ok(),
                "{what} is not running on 127.0.0.1:{p}: start it with `scripts/services.sh up`"
            );
        }
        let unique = format!(
            "{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
        );
        let mut properties = std::collections::BTreeMap::new();
        if let Ok(debug) = std::env::var("LUNGSTREAM_TEST_KAFKA_DEBUG") {
            properties.insert("debug".to_string(), debug);
        }
        let kafka = KafkaConfig {
            properties,
            brokers: format!("127.0.0.1:{kafka_port}"),
            topic_prefix: format!("test.{unique}."),
            partitions: 2,
            session_timeout_ms: 6000,
            heartbeat_interval_ms: 1000,
            ..KafkaConfig::default()
        };
        let store_options = BTreeMap::from([
            ("aws_endpoint".to_string(), format!("http://127.0.0.1:{s3_port}")),
            ("aws_allow_http".to_string(), "true".to_string()),
            ("aws_access_key_id".to_string(), "lungstream".to_string()),
            ("aws_secret_access_key".to_string(), "lungstream-local-secret".to_string()),
            ("aws_region".to_string(), "us-east-1".to_string()),
        ]);
        Servers {
            kafka,
            store_url: format!("s3://lungstream/test/{unique}"),
            store_options,
        }
    }

    pub fn store(&self) -> Store {
        Store::open_with(&self.store_url, &self.store_options).unwrap()
    }

    /// Returns an ingest configuration on these servers with one hospital, `north`.
    pub fn config(&self, quiet_period_s: f64, expiry_s: f64) -> IngestConfig {
        IngestConfig {
            kafka: self.kafka.clone(),
            store_url: self.store_url.clone(),
            store_options: self.store_options.clone(),
            http_listen: "127.0.0.1:0".parse().unwrap(),
            patient_key_secret: "test-secret".into(),
            tenants: vec![Tenant {
                hospital: "north".into(),
                tokens: vec![TOKEN.into()],
                ae_titles: vec!["NORTH_CT".into()],
            }],
            assembler: AssemblerConfig {
                quiet_period_s,
                expiry_s,
                tick_ms: 200,
                ..AssemblerConfig::default()
            },
            ..IngestConfig::default()
        }
    }

    /// Reads `topic` from the start with a fresh group until `done` holds for what was
    /// read, or `timeout` passes; returns everything read.
    pub async fn read_until(&self, topic: &str, timeout: Duration, done: impl Fn(&[Message]) -> bool) -> Vec<Message> {
        let group = format!("reader-{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
        let mut consumer = KafkaConsumer::join(&self.kafka, &group, &[topic]).unwrap();
        let deadline = Instant::now() + timeout;
        let mut messages = Vec::new();
        while !done(&messages) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if let Ok(Ok(m)) = tokio::time::timeout(left.min(Duration::from_millis(500)), consumer.recv()).await {
                messages.push(m);
            }
        }
        consumer.close();
        messages
    }

    /// Reads `topic` for `wait`, returning all its events (to show that nothing more came).
    pub async fn read_for(&self, topic: &str, wait: Duration) -> Vec<Message> {
        self.read_until(topic, wait, |_| false).await
    }
}

/// Bearer token of hospital `north`.
pub const TOKEN: &str = "north-token-for-tests-0123456789";

pub fn series_events(messages: &[Message]) -> Vec<SeriesEvent> {
    messages.iter().map(|m| serde_json::from_slice(&m.payload).unwrap()).collect()
}

pub fn dead_letters(messages: &[Message]) -> Vec<DeadLetterEvent> {
    messages.iter().map(|m| serde_json::from_slice(&m.payload).unwrap()).collect()
}
