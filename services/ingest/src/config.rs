//! Configuration of the ingest service and the series assembler.

use std::net::SocketAddr;
use std::time::Duration;

use lungstream_runtime::{KafkaConfig, RetryConfig};
use serde::{Deserialize, Serialize};

/// Everything `lungstream-ingest` reads from its TOML file and `LUNGSTREAM__…` variables.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    pub kafka: KafkaConfig,
    /// Object store of the instances: `s3://bucket[/prefix]`, `file:///path` or `memory://`.
    pub store_url: String,
    /// S3 settings over the `AWS_*` environment variables: `aws_endpoint`,
    /// `aws_allow_http`, `aws_region`, … (names as in `object_store`). Keep keys in the
    /// environment or a Secret, not in this file.
    pub store_options: std::collections::BTreeMap<String, String>,
    /// HTTP address of STOW-RS, the commit endpoint and the operations endpoints.
    pub http_listen: SocketAddr,
    /// DICOM address of the C-STORE SCP; none turns it off.
    pub dicom_listen: Option<SocketAddr>,
    /// Application Entity title of the C-STORE SCP.
    pub ae_title: String,
    /// Secret of the HMAC that turns _Patient ID_ into the pseudonymous patient key. The
    /// same secret must be set in every service of a deployment.
    pub patient_key_secret: String,
    /// Hospitals, and the credentials that identify them.
    pub tenants: Vec<Tenant>,
    pub limits: Limits,
    pub assembler: AssemblerConfig,
    pub retry: RetryConfig,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            kafka: KafkaConfig::default(),
            store_url: "memory://".into(),
            store_options: std::collections::BTreeMap::new(),
            http_listen: "127.0.0.1:8080".parse().expect("a valid address"),
            dicom_listen: None,
            ae_title: "LUNGSTREAM".into(),
            patient_key_secret: String::new(),
            tenants: Vec::new(),
            limits: Limits::default(),
            assembler: AssemblerConfig::default(),
            retry: RetryConfig::default(),
        }
    }
}

pub use lungstream_runtime::tenants::Tenant;

/// Size limits on what ingest accepts.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest STOW-RS request body, bytes.
    pub max_request_bytes: u64,
    /// Largest single instance, bytes.
    pub max_instance_bytes: u64,
    /// Largest _Rows_ or _Columns_.
    pub max_matrix: u32,
    /// Maximum C-STORE associations at once; more wait until one ends.
    pub max_associations: usize,
    /// Maximum instances in one series; a larger series goes to the dead-letter topic
    /// (`too_large`).
    pub max_instances_per_series: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_bytes: 2 * 1024 * 1024 * 1024,
            max_instance_bytes: 64 * 1024 * 1024,
            max_matrix: 2048,
            max_instances_per_series: 4000,
            max_associations: 32,
        }
    }
}

/// When the assembler declares a series complete or gives up on it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AssemblerConfig {
    /// Consumer group of the assemblers.
    pub group_id: String,
    /// A series without a new instance for this long, whose stack has no gap, is
    /// complete; seconds.
    pub quiet_period_s: f64,
    /// A series that is still not complete this long after its last instance goes to the
    /// dead-letter topic as `incomplete_series`; seconds.
    pub expiry_s: f64,
    /// How often the assembler checks its open series, ms.
    pub tick_ms: u64,
    /// A slice spacing above this multiple of the median spacing is a gap.
    pub max_gap_ratio: f64,
    /// A complete series with fewer instances goes to the dead-letter topic as
    /// `too_few_slices`: the method stacks three neighbouring slices.
    pub min_instances: usize,
}

impl Default for AssemblerConfig {
    fn default() -> Self {
        AssemblerConfig {
            group_id: "lungstream-assembler".into(),
            quiet_period_s: 30.0,
            expiry_s: 3600.0,
            tick_ms: 1000,
            max_gap_ratio: 1.5,
            min_instances: 3,
        }
    }
}

impl AssemblerConfig {
    pub fn quiet_period(&self) -> Duration {
        Duration::from_secs_f64(self.quiet_period_s.max(0.0))
    }

    pub fn expiry(&self) -> Duration {
        Duration::from_secs_f64(self.expiry_s.max(0.0))
    }
}
