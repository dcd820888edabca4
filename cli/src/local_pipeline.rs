//! Every service of the distributed pipeline started in this process against a real
//! broker, object store and PostgreSQL: what the end-to-end tests and
//! `lungstream bench pipeline` run. The services talk only through Kafka, the store and
//! the database, exactly as separate processes would.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use lungstream_infer_worker::InferServiceConfig;
use lungstream_ingest::config::{AssemblerConfig, IngestConfig};
use lungstream_preprocess::service::PreprocessServiceConfig;
use lungstream_report::config::ReportConfig;
use lungstream_runtime::tenants::Tenant;
use lungstream_runtime::KafkaConfig;
use tokio_util::sync::CancellationToken;

/// Addresses of the servers, and the names this run uses on them.
#[derive(Clone, Debug)]
pub struct Endpoints {
    pub kafka: KafkaConfig,
    pub store_url: String,
    pub store_options: BTreeMap<String, String>,
    pub database_url: String,
}

impl Endpoints {
    /// Returns the servers of `scripts/services.sh` and the local PostgreSQL, with a topic
    /// prefix, store folder and database that contain `name` and that no other run uses.
    pub fn local(name: &str) -> Endpoints {
        let port = |variable: &str, default: u16| std::env::var(variable).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
        let unique = format!(
            "{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0)
        );
        let s3_port = port("LUNGSTREAM_S3_PORT", 18333);
        let database = format!("lungstream_{}", unique.replace(|c: char| !c.is_ascii_alphanumeric(), "_"));
        let database_host = std::env::var("LUNGSTREAM_TEST_DATABASE").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
        Endpoints {
            kafka: KafkaConfig {
                brokers: format!("127.0.0.1:{}", port("LUNGSTREAM_KAFKA_PORT", 19092)),
                topic_prefix: format!("test.{unique}."),
                partitions: 4,
                session_timeout_ms: 6000,
                heartbeat_interval_ms: 1000,
                ..KafkaConfig::default()
            },
            store_url: format!("s3://lungstream/test/{unique}"),
            store_options: BTreeMap::from([
                ("aws_endpoint".to_string(), format!("http://127.0.0.1:{s3_port}")),
                ("aws_allow_http".to_string(), "true".to_string()),
                ("aws_access_key_id".to_string(), "lungstream".to_string()),
                ("aws_secret_access_key".to_string(), "lungstream-local-secret".to_string()),
                ("aws_region".to_string(), "us-east-1".to_string()),
            ]),
            database_url: format!("{database_host}/{database}"),
        }
    }

    /// Checks that the broker, the store and PostgreSQL accept connections.
    pub fn check(&self) -> anyhow::Result<()> {
        let s3 = self.store_options.get("aws_endpoint").map(|e| e.trim_start_matches("http://").to_string()).unwrap_or_default();
        // postgres://user@host:port/database → host:port
        let database = self.database_url.split('@').nth(1).and_then(|rest| rest.split('/').next()).unwrap_or("127.0.0.1:5432").to_string();
        for (what, address) in [("the Kafka broker", self.kafka.brokers.clone()), ("the S3 server", s3), ("PostgreSQL", database)] {
            if std::net::TcpStream::connect(&address).is_err() {
                anyhow::bail!("{what} does not accept connections on {address}: start the servers with `scripts/services.sh up`");
            }
        }
        Ok(())
    }
}

/// Options of a local pipeline.
#[derive(Clone, Debug)]
pub struct PipelineOptions {
    pub tenants: Vec<Tenant>,
    pub patient_key_secret: String,
    pub preprocess_workers: usize,
    /// Threads of each preprocess worker (0: one per core).
    pub preprocess_threads: usize,
    /// Threads of the networks (0: libtorch's choice).
    pub infer_threads: i32,
    /// Quiet period of the assembler, seconds.
    pub quiet_period_s: f64,
    /// Device of the networks: `auto`, `cpu` or `cuda`.
    pub device: String,
}

/// The running services.
pub struct LocalPipeline {
    pub ingest_address: SocketAddr,
    /// The report API; the end-to-end tests read it.
    #[allow(dead_code)]
    pub report_address: SocketAddr,
    /// Every service's HTTP address (`/metrics`, `/healthz`), for the tests.
    #[allow(dead_code)]
    pub http_addresses: Vec<SocketAddr>,
    shutdown: CancellationToken,
    ingest: lungstream_ingest::service::Running,
    preprocess: Vec<lungstream_runtime::stage::Running>,
    infer: lungstream_runtime::stage::Running,
    report: lungstream_report::service::Running,
}

impl LocalPipeline {
    /// Starts ingest (with the assembler), the preprocess workers, one infer worker and the
    /// report service.
    ///
    /// # Errors
    ///
    /// The first service that cannot start.
    pub async fn start(endpoints: &Endpoints, options: &PipelineOptions) -> anyhow::Result<LocalPipeline> {
        let shutdown = CancellationToken::new();
        // The services started before one that fails stop with it.
        let started = Self::start_all(endpoints, options, shutdown.clone()).await;
        if started.is_err() {
            shutdown.cancel();
        }
        started
    }

    async fn start_all(endpoints: &Endpoints, options: &PipelineOptions, shutdown: CancellationToken) -> anyhow::Result<LocalPipeline> {
        let any_port: SocketAddr = "127.0.0.1:0".parse().expect("a valid address");
        let ingest = lungstream_ingest::service::start(
            IngestConfig {
                kafka: endpoints.kafka.clone(),
                store_url: endpoints.store_url.clone(),
                store_options: endpoints.store_options.clone(),
                http_listen: any_port,
                patient_key_secret: options.patient_key_secret.clone(),
                tenants: options.tenants.clone(),
                assembler: AssemblerConfig {
                    quiet_period_s: options.quiet_period_s,
                    tick_ms: 200,
                    ..AssemblerConfig::default()
                },
                ..IngestConfig::default()
            },
            lungstream_ingest::service::Roles::ALL,
            shutdown.clone(),
        )
        .await?;
        let mut preprocess = Vec::new();
        for _ in 0..options.preprocess_workers.max(1) {
            preprocess.push(
                lungstream_preprocess::service::start(
                    PreprocessServiceConfig {
                        kafka: endpoints.kafka.clone(),
                        store_url: endpoints.store_url.clone(),
                        store_options: endpoints.store_options.clone(),
                        http_listen: any_port,
                        threads: options.preprocess_threads,
                        ..PreprocessServiceConfig::default()
                    },
                    shutdown.clone(),
                )
                .await?,
            );
        }
        let infer = lungstream_infer_worker::start(
            InferServiceConfig {
                kafka: endpoints.kafka.clone(),
                store_url: endpoints.store_url.clone(),
                store_options: endpoints.store_options.clone(),
                http_listen: any_port,
                device: options.device.clone(),
                threads: options.infer_threads,
                ..InferServiceConfig::default()
            },
            shutdown.clone(),
        )
        .await?;
        let report = lungstream_report::service::start(
            ReportConfig {
                kafka: endpoints.kafka.clone(),
                store_url: endpoints.store_url.clone(),
                store_options: endpoints.store_options.clone(),
                http_listen: any_port,
                database_url: endpoints.database_url.clone(),
                tenants: options.tenants.clone(),
                ..ReportConfig::default()
            },
            shutdown.clone(),
        )
        .await?;
        Ok(LocalPipeline {
            ingest_address: ingest.http_address,
            report_address: report.http_address,
            http_addresses: [ingest.http_address, infer.http_address, report.http_address]
                .into_iter()
                .chain(preprocess.iter().map(|p| p.http_address))
                .collect(),
            shutdown,
            ingest,
            preprocess,
            infer,
            report,
        })
    }

    /// Stops every service and waits for them.
    ///
    /// # Errors
    ///
    /// The first service that failed.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let mut outcomes = vec![self.ingest.wait().await];
        for worker in self.preprocess {
            outcomes.push(worker.wait().await);
        }
        outcomes.push(self.infer.wait().await);
        outcomes.push(self.report.wait().await);
        outcomes.into_iter().collect()
    }
}
