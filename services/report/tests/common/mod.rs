//! Shared setup of the report tests: the real broker (tansu) and object store
//! (SeaweedFS) that `scripts/services.sh up` starts, and the PostgreSQL server on
//! 127.0.0.1:5432 with a fresh database per test.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use lungstream_report::config::{ReportConfig, Tenant};
use lungstream_report::service::{self, Running};
use lungstream_runtime::kafka::{KafkaConsumer, KafkaProducer};
use lungstream_runtime::store::keys;
use lungstream_runtime::{KafkaConfig, Message, Producer, RetryConfig, Store};
use lungstream_schemas::events::{
    topics, Analysis, ReportEvent, ResultsEvent, SeriesOutcome, EVENT_SCHEMA_VERSION,
};
use lungstream_schemas::report::{
    Decision, Infection, ModelFree, ModelSummary, PerSide, Probabilities, Report, SeriesSummary,
    Timings, WorstSlice, REPORT_SCHEMA_VERSION,
};
use lungstream_schemas::ReasonCode;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};
use tokio_util::sync::CancellationToken;

/// Bearer tokens of the two test hospitals.
pub const NORTH_TOKEN: &str = "north-reader-token-0123456789";
pub const SOUTH_TOKEN: &str = "south-reader-token-0123456789";

/// PostgreSQL server of the tests, as a URL without a database name.
pub fn postgres_server() -> String {
    std::env::var("LUNGSTREAM_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_string())
}

/// A database created for one test and dropped when the value is dropped, also when the
/// test panics.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

impl TestDatabase {
    /// Picks a name no other test uses; the service creates the database at start.
    pub fn new() -> TestDatabase {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        let name = format!(
            "lungstream_test_{}_{}_{millis}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let url = format!("{}/{name}", postgres_server());
        TestDatabase { name, url }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        let admin = format!("{}/postgres", postgres_server());
        // Drop runs inside the test's runtime, which cannot block on a future, so a thread
        // with its own runtime drops the database.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let mut connection = PgConnectOptions::from_str(&admin)?.connect().await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&mut connection)
                    .await?;
                connection.close().await
            })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("cannot drop test database {}: {e}", self.name);
        }
    }
}

fn port(variable: &str, default: u16) -> u16 {
    std::env::var(variable)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The broker, store and database of one test, under names no other test uses.
pub struct Servers {
    pub kafka: KafkaConfig,
    pub store_url: String,
    pub store_options: BTreeMap<String, String>,
    pub database: TestDatabase,
}

impl Servers {
    /// Checks that the servers accept connections and picks a fresh topic prefix, store
    /// folder and database name.
    pub fn new(name: &str) -> Servers {
        let kafka_port = port("LUNGSTREAM_KAFKA_PORT", 19092);
        let s3_port = port("LUNGSTREAM_S3_PORT", 18333);
        for (what, p) in [
            ("tansu (Kafka)", kafka_port),
            ("SeaweedFS (S3)", s3_port),
            ("PostgreSQL", 5432),
        ] {
            assert!(
                std::net::TcpStream::connect(("127.0.0.1", p)).is_ok(),
                "{what} is not running on 127.0.0.1:{p}: start the broker and store with `scripts/services.sh up`"
            );
        }
        let unique = format!(
            "{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis()
        );
        let kafka = KafkaConfig {
            brokers: format!("127.0.0.1:{kafka_port}"),
            topic_prefix: format!("test.{unique}."),
            partitions: 2,
            session_timeout_ms: 6000,
            heartbeat_interval_ms: 1000,
            ..KafkaConfig::default()
        };
        let store_options = BTreeMap::from([
            (
                "aws_endpoint".to_string(),
                format!("http://127.0.0.1:{s3_port}"),
            ),
            ("aws_allow_http".to_string(), "true".to_string()),
            ("aws_access_key_id".to_string(), "lungstream".to_string()),
            (
                "aws_secret_access_key".to_string(),
                "lungstream-local-secret".to_string(),
            ),
            ("aws_region".to_string(), "us-east-1".to_string()),
        ]);
        Servers {
            kafka,
            store_url: format!("s3://lungstream/test/{unique}"),
            store_options,
            database: TestDatabase::new(),
        }
    }

    pub fn store(&self) -> Store {
        Store::open_with(&self.store_url, &self.store_options).unwrap()
    }

    pub fn producer(&self) -> Producer {
        KafkaProducer::connect(&self.kafka).unwrap()
    }

    /// Returns a configuration on these servers with two hospitals, `north` and `south`.
    pub fn config(&self) -> ReportConfig {
        ReportConfig {
            kafka: self.kafka.clone(),
            store_url: self.store_url.clone(),
            store_options: self.store_options.clone(),
            http_listen: "127.0.0.1:0".parse().unwrap(),
            database_url: self.database.url.clone(),
            database_max_connections: 4,
            tenants: vec![
                Tenant {
                    hospital: "north".into(),
                    tokens: vec![NORTH_TOKEN.into()],
                    ae_titles: Vec::new(),
                },
                Tenant {
                    hospital: "south".into(),
                    tokens: vec![SOUTH_TOKEN.into()],
                    ae_titles: Vec::new(),
                },
            ],
            retry: RetryConfig {
                initial_ms: 100,
                max_ms: 1000,
                multiplier: 2.0,
            },
            ..ReportConfig::default()
        }
    }

    /// Starts the service and returns it with its shutdown token.
    pub async fn start(&self) -> (Running, CancellationToken) {
        let shutdown = CancellationToken::new();
        let running = tokio::time::timeout(
            Duration::from_secs(60),
            service::start(self.config(), shutdown.clone()),
        )
        .await
        .expect("the service starts within a minute")
        .unwrap();
        (running, shutdown)
    }

    /// Publishes a results event keyed by its series UID.
    pub async fn send(&self, producer: &Producer, event: &ResultsEvent) {
        producer
            .send_json(topics::RESULTS, &event.series_uid, event)
            .await
            .unwrap();
    }

    /// Reads `topic` from the start with a fresh group until `done` holds for what was
    /// read, or `timeout` passes. Returns everything read.
    pub async fn read_until(
        &self,
        topic: &str,
        timeout: Duration,
        done: impl Fn(&[Message]) -> bool,
    ) -> Vec<Message> {
        let group = format!(
            "reader-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        let mut consumer = KafkaConsumer::join(&self.kafka, &group, &[topic]).unwrap();
        let deadline = Instant::now() + timeout;
        let mut messages = Vec::new();
        while !done(&messages) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if let Ok(Ok(m)) =
                tokio::time::timeout(left.min(Duration::from_millis(500)), consumer.recv()).await
            {
                messages.push(m);
            }
        }
        consumer.close();
        messages
    }

    /// Reads `topic` from the start until `expected` events arrived (or 30 seconds
    /// passed), then for `quiet` more, and returns everything read: more than `expected`
    /// events means something was published that should not have been.
    pub async fn read_expecting(
        &self,
        topic: &str,
        expected: usize,
        quiet: Duration,
    ) -> Vec<Message> {
        let group = format!(
            "reader-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        let mut consumer = KafkaConsumer::join(&self.kafka, &group, &[topic]).unwrap();
        let mut deadline = Instant::now() + Duration::from_secs(30);
        let mut quiet_started = false;
        let mut messages = Vec::new();
        loop {
            if !quiet_started && messages.len() >= expected {
                quiet_started = true;
                deadline = Instant::now() + quiet;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if let Ok(Ok(m)) =
                tokio::time::timeout(left.min(Duration::from_millis(500)), consumer.recv()).await
            {
                messages.push(m);
            }
        }
        consumer.close();
        messages
    }

    /// Reads report events until there are `count`, or 30 seconds pass.
    pub async fn report_events(&self, count: usize) -> Vec<ReportEvent> {
        let messages = self
            .read_until(topics::REPORTS, Duration::from_secs(30), |m| {
                m.len() >= count
            })
            .await;
        messages
            .iter()
            .map(|m| serde_json::from_slice(&m.payload).unwrap())
            .collect()
    }
}

/// Polls `check` every 100 ms until it returns true, for at most 30 seconds.
pub async fn wait_for<F, Fut>(condition: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {condition}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Findings of a hand-built analysed series.
#[derive(Clone, Debug)]
pub struct Findings {
    pub decision: Decision,
    pub p_diseased: f64,
    pub p_covid: f64,
    /// Infected share of both lungs, percent. The right lung (60 % of the lung volume) is
    /// 1.2 times as infected and the left 0.7 times, which adds up to this share.
    pub infected_percent: f64,
    pub slices_with_lungs: usize,
    /// Number of worst slices with overlays.
    pub overlays: usize,
}

impl Default for Findings {
    fn default() -> Self {
        Findings {
            decision: Decision::Covid19,
            p_diseased: 0.9,
            p_covid: 0.8,
            infected_percent: 12.5,
            slices_with_lungs: 60,
            overlays: 2,
        }
    }
}

/// Builds the series report of an analysed series with the given findings.
pub fn report(series_uid: &str, model_version: &str, findings: &Findings) -> Report {
    // Volumes and voxel counts: 60 % in the right lung.
    let side = |total: f64| PerSide {
        right: total * 0.6,
        left: total * 0.4,
        total,
    };
    // A share that is the same on both sides.
    let same = |share: f64| PerSide {
        right: share,
        left: share,
        total: share,
    };
    let t = findings.infected_percent;
    let worst_slices = (0..findings.overlays)
        .map(|i| WorstSlice {
            slice: 10 + i,
            position_mm: -100.0 + 2.5 * i as f64,
            infected_mm2: 300.0 - 10.0 * i as f64,
            infected_percent: 20.0,
            p_diseased: findings.p_diseased,
            overlay: format!("slice-{:04}.png", 10 + i),
        })
        .collect();
    Report {
        schema_version: REPORT_SCHEMA_VERSION.into(),
        generator: "lungstream test".into(),
        series: SeriesSummary {
            series_uid: series_uid.into(),
            patient_key: "patient-key-0123".into(),
            slices: findings.slices_with_lungs + 20,
            slices_with_lungs: findings.slices_with_lungs,
            spacing_mm: [2.5, 0.7, 0.7],
            lung_volume_ml: side(4000.0),
            background_median_hu: -1000.0,
            background_plausible: true,
        },
        model: ModelSummary {
            id: "lungstream-test".into(),
            version: model_version.into(),
            config: "narrow".into(),
            trained: true,
            trained_on: "phantoms".into(),
            research_only: true,
            device: "cpu".into(),
        },
        decision: findings.decision,
        probabilities: Probabilities {
            diseased: findings.p_diseased,
            covid19: findings.p_covid,
        },
        infection: Infection {
            percent: PerSide {
                right: 1.2 * t,
                left: 0.7 * t,
                total: t,
            },
            volume_ml: PerSide {
                right: 28.8 * t,
                left: 11.2 * t,
                total: 40.0 * t,
            },
            infected_voxels: PerSide {
                right: 720.0 * t,
                left: 280.0 * t,
                total: 1000.0 * t,
            },
            lung_voxels: side(100_000.0),
        },
        model_free: ModelFree {
            ground_glass_percent: same(5.0),
            consolidation_percent: same(1.0),
            infected_percent: same(6.0),
            band_percent: same(3.0),
        },
        worst_slices,
        lobes: Vec::new(),
        timings_ms: Timings {
            read: 100,
            preprocess: 200,
            infer: 300,
            report: 40,
            total: 640,
        },
        warnings: Vec::new(),
    }
}

/// Returns a small PNG whose colour identifies it.
pub fn png(red: u8) -> Vec<u8> {
    let mut bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut bytes, 2, 2);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(&[red, 0, 0].repeat(4)).unwrap();
    }
    bytes
}

/// Builds an analysed results event and writes its overlays to the store, as the infer
/// service does. Returns the event and the overlay bytes by file name.
pub async fn analysed(
    store: &Store,
    hospital: &str,
    study_uid: &str,
    series_uid: &str,
    revision: u32,
    findings: &Findings,
) -> (ResultsEvent, Vec<(String, Vec<u8>)>) {
    let model_version = "model-v1";
    let report = report(series_uid, model_version, findings);
    let prefix = keys::results_prefix(hospital, study_uid, series_uid, revision, model_version);
    let mut overlay_keys = Vec::new();
    let mut overlays = Vec::new();
    for (i, slice) in report.worst_slices.iter().enumerate() {
        let key = format!("{prefix}{}", slice.overlay);
        let bytes = png(100 + i as u8);
        store.put(&key, bytes.clone().into()).await.unwrap();
        overlay_keys.push(key);
        overlays.push((slice.overlay.clone(), bytes));
    }
    let event = ResultsEvent {
        schema_version: EVENT_SCHEMA_VERSION.into(),
        hospital: hospital.into(),
        study_uid: study_uid.into(),
        series_uid: series_uid.into(),
        patient_key: Some("patient-key-0123".into()),
        series_revision: revision,
        outcome: SeriesOutcome::Analysed(Box::new(Analysis {
            report,
            maps_key: format!("{prefix}maps.safetensors.zst"),
            overlay_keys,
        })),
    };
    (event, overlays)
}

/// Builds a rejected results event.
pub fn rejected(
    hospital: &str,
    study_uid: &str,
    series_uid: &str,
    revision: u32,
    reason: ReasonCode,
) -> ResultsEvent {
    ResultsEvent {
        schema_version: EVENT_SCHEMA_VERSION.into(),
        hospital: hospital.into(),
        study_uid: study_uid.into(),
        series_uid: series_uid.into(),
        patient_key: Some("patient-key-0123".into()),
        series_revision: revision,
        outcome: SeriesOutcome::Rejected {
            reason,
            detail: "no lungs found on any slice".into(),
        },
    }
}

/// An HTTP response: status, content type and body.
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Sends `GET path` to the service with an optional bearer token.
pub async fn get(running: &Running, path: &str, token: Option<&str>) -> Reply {
    let client = reqwest::Client::new();
    let mut request = client.get(format!("http://{}{path}", running.http_address));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = response.bytes().await.unwrap().to_vec();
    Reply {
        status,
        content_type,
        body,
    }
}
