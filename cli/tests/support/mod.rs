//! The pipeline's services as separate `lungstream serve` processes, for the tests that
//! kill, restart or cut off one of them, or that collect their traces.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lungstream_infer_worker::InferServiceConfig;
use lungstream_ingest::client::{upload, UploadOptions, UploadSummary};
use lungstream_ingest::config::{AssemblerConfig, IngestConfig};
use lungstream_preprocess::service::PreprocessServiceConfig;
use lungstream_report::config::ReportConfig;
use lungstream_runtime::kafka::KafkaConsumer;
use lungstream_runtime::tenants::Tenant;
use lungstream_runtime::{KafkaConfig, Message};

pub const TOKEN: &str = "process-tests-token-0123456789";
pub const HOSPITAL: &str = "north";
pub const SERVICES: [&str; 4] = ["ingest", "preprocess", "infer", "report"];

pub fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// One `lungstream serve SERVICE` process.
pub struct ServiceProcess {
    pub service: String,
    child: Child,
    config: PathBuf,
    log: PathBuf,
    env: Vec<(String, String)>,
    restarts: usize,
}

impl ServiceProcess {
    pub fn start(service: &str, config: &str, folder: &Path, env: &[(String, String)]) -> ServiceProcess {
        let config_path = folder.join(format!("{service}.toml"));
        std::fs::write(&config_path, config).unwrap();
        let log = folder.join(format!("{service}.log"));
        let child = Self::spawn(service, &config_path, &log, env);
        ServiceProcess {
            service: service.to_string(),
            child,
            config: config_path,
            log,
            env: env.to_vec(),
            restarts: 0,
        }
    }

    fn spawn(service: &str, config: &Path, log: &Path, env: &[(String, String)]) -> Child {
        let output = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        Command::new(env!("CARGO_BIN_EXE_lungstream"))
            .args(["serve", service, "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(output)
            .spawn()
            .unwrap()
    }

    /// Sends SIGKILL: the process ends at once, without any cleanup.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the process again with the same configuration.
    pub fn restart(&mut self) {
        self.kill();
        self.restarts += 1;
        self.child = Self::spawn(&self.service, &self.config, &self.log, &self.env);
    }

    /// Sends SIGTERM and waits up to 30 s for the process to end.
    pub fn stop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.kill();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The four services on one broker, store and database.
pub struct Cluster {
    pub kafka: KafkaConfig,
    pub addresses: BTreeMap<&'static str, SocketAddr>,
    pub processes: BTreeMap<&'static str, ServiceProcess>,
    pub folder: tempfile::TempDir,
}

impl Cluster {
    /// Writes each service's configuration and starts it; `env` goes to every process.
    pub fn start(
        kafka: &KafkaConfig,
        store_url: &str,
        store_options: &BTreeMap<String, String>,
        database_url: &str,
        env: &[(String, String)],
    ) -> Cluster {
        let folder = tempfile::tempdir().unwrap();
        let addresses: BTreeMap<&'static str, SocketAddr> = SERVICES.iter().map(|s| (*s, free_port())).collect();
        let tenants = vec![Tenant {
            hospital: HOSPITAL.into(),
            tokens: vec![TOKEN.into()],
            ae_titles: Vec::new(),
        }];
        let fast_retry = lungstream_runtime::RetryConfig {
            initial_ms: 200,
            max_ms: 2000,
            multiplier: 2.0,
        };
        let configs = [
            (
                "ingest",
                toml::to_string(&IngestConfig {
                    kafka: kafka.clone(),
                    store_url: store_url.into(),
                    store_options: store_options.clone(),
                    http_listen: addresses["ingest"],
                    dicom_listen: None,
                    patient_key_secret: "process-tests-secret".into(),
                    tenants: tenants.clone(),
                    assembler: AssemblerConfig {
                        quiet_period_s: 60.0,
                        tick_ms: 200,
                        ..AssemblerConfig::default()
                    },
                    retry: fast_retry.clone(),
                    ..IngestConfig::default()
                }),
            ),
            (
                "preprocess",
                toml::to_string(&PreprocessServiceConfig {
                    kafka: kafka.clone(),
                    store_url: store_url.into(),
                    store_options: store_options.clone(),
                    http_listen: addresses["preprocess"],
                    retry: fast_retry.clone(),
                    ..PreprocessServiceConfig::default()
                }),
            ),
            (
                "infer",
                toml::to_string(&InferServiceConfig {
                    kafka: kafka.clone(),
                    store_url: store_url.into(),
                    store_options: store_options.clone(),
                    http_listen: addresses["infer"],
                    device: "cpu".into(),
                    retry: fast_retry.clone(),
                    ..InferServiceConfig::default()
                }),
            ),
            (
                "report",
                toml::to_string(&ReportConfig {
                    kafka: kafka.clone(),
                    store_url: store_url.into(),
                    store_options: store_options.clone(),
                    http_listen: addresses["report"],
                    database_url: database_url.into(),
                    tenants,
                    retry: fast_retry,
                    ..ReportConfig::default()
                }),
            ),
        ];
        let processes = configs
            .into_iter()
            .map(|(service, config)| (service, ServiceProcess::start(service, &config.unwrap(), folder.path(), env)))
            .collect();
        Cluster {
            kafka: kafka.clone(),
            addresses,
            processes,
            folder,
        }
    }

    pub fn process(&mut self, service: &str) -> &mut ServiceProcess {
        self.processes.get_mut(service).unwrap()
    }

    /// Returns every service's log, for failure messages.
    pub fn logs(&self) -> String {
        self.processes
            .values()
            .map(|p| format!("----- {} -----\n{}", p.service, p.log()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until `/readyz` of `services` returns 200, for at most 90 s.
    pub async fn wait_ready(&self, services: &[&str]) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(90);
        for service in services {
            let address = self.addresses[service];
            loop {
                let ready = match client.get(format!("http://{address}/readyz")).send().await {
                    Ok(r) => r.status().is_success(),
                    Err(_) => false,
                };
                if ready {
                    break;
                }
                assert!(Instant::now() < deadline, "{service} did not become ready; the logs:\n{}", self.logs());
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    /// Sends a series' files to ingest by STOW-RS.
    pub async fn upload(&self, files: &[PathBuf]) -> anyhow::Result<UploadSummary> {
        upload(files, &UploadOptions::new(&format!("http://{}", self.addresses["ingest"]), TOKEN), |_| {}).await
    }

    /// Returns the studies of the worklist.
    pub async fn worklist(&self) -> Vec<serde_json::Value> {
        let reply = reqwest::Client::new()
            .get(format!("http://{}/api/v1/worklist?limit=500", self.addresses["report"]))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 200);
        serde_json::from_slice(&reply.bytes().await.unwrap()).unwrap()
    }
}

/// Writes a COVID-like phantom series of `slices` slices of `matrix`² into `dir` and
/// returns its DICOM files and study UID.
pub fn phantom(dir: &Path, seed: u64, slices: u32, matrix: u16) -> (Vec<PathBuf>, String) {
    let mut spec =
        lungstream_phantom::PhantomSpec::preset(lungstream_phantom::Label::Covid, seed).with_matrix(matrix, matrix, 360.0 / f64::from(matrix));
    spec.slices = slices;
    spec.slice_spacing_mm = 200.0 / f64::from(slices);
    let truth = lungstream_phantom::write_series(&spec, dir).unwrap();
    // The folder also contains the phantom's ground_truth.json.
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_none_or(|e| e != "json"))
        .collect();
    files.sort();
    (files, truth.study_uid)
}

/// Reads `topic` from the start, as a group of its own, until `done` holds for what was
/// read or `timeout` passes; returns what was read.
pub async fn read_until(kafka: &KafkaConfig, topic: &str, timeout: Duration, done: impl Fn(&[Message]) -> bool) -> Vec<Message> {
    let group = format!(
        "reader-{}",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    );
    let mut consumer = KafkaConsumer::join(kafka, &group, &[topic]).unwrap();
    let deadline = Instant::now() + timeout;
    let mut messages = Vec::new();
    while !done(&messages) && Instant::now() < deadline {
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await {
            messages.push(m);
        }
    }
    consumer.close();
    messages
}

/// Returns whether a message's JSON payload has `study_uid` equal to `study`.
pub fn is_study(message: &Message, study: &str) -> bool {
    serde_json::from_slice::<serde_json::Value>(&message.payload)
        .map(|v| v["study_uid"] == study)
        .unwrap_or(false)
}
