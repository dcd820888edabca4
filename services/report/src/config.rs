//! Configuration of the report service.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use lungstream_runtime::{KafkaConfig, RetryConfig};
use serde::{Deserialize, Serialize};

pub use lungstream_runtime::tenants::Tenant;

/// Everything `lungstream-report` reads from its TOML file and `LUNGSTREAM__…` variables.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReportConfig {
    pub kafka: KafkaConfig,
    /// Object store of the results and reports: `s3://bucket[/prefix]`, `file:///path` or
    /// `memory://`. It must be the store the infer service writes its overlays to.
    pub store_url: String,
    /// S3 settings over the `AWS_*` environment variables: `aws_endpoint`,
    /// `aws_allow_http`, `aws_region`, … (names as in `object_store`). Keep keys in the
    /// environment or a Secret, not in this file.
    pub store_options: BTreeMap<String, String>,
    /// HTTP address of the report API and the operations endpoints.
    pub http_listen: SocketAddr,
    /// PostgreSQL URL. The database is created at start when the server has none of that
    /// name and the user may create databases.
    pub database_url: String,
    /// Maximum connections in the database pool.
    pub database_max_connections: u32,
    /// Hospitals, and the bearer tokens of their report readers.
    pub tenants: Vec<Tenant>,
    pub retry: RetryConfig,
    /// Consumer group of the report workers on `ct.results.v1`. `kafka.group_id`
    /// overrides it, and the topic prefix is put before it.
    pub group_id: String,
    /// The web pages for browsers (worklist, study, dashboard).
    pub web: WebConfig,
}

/// Settings of the web pages. A reader logs in with the bearer token of their hospital
/// and gets a session cookie. Sessions live in the database, so every replica of the
/// service accepts them.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebConfig {
    /// Minutes a session lasts after login.
    pub session_minutes: i64,
    /// Marks the session cookie `Secure`, so browsers send it only over HTTPS (and to
    /// http://localhost or 127.0.0.1, which browsers treat as secure). Set it to false
    /// only to serve the pages over plain HTTP on another address, on a trusted network.
    pub secure_cookie: bool,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            session_minutes: 12 * 60,
            secure_cookie: true,
        }
    }
}

impl Default for ReportConfig {
    fn default() -> Self {
        ReportConfig {
            kafka: KafkaConfig::default(),
            store_url: "memory://".into(),
            store_options: BTreeMap::new(),
            http_listen: "127.0.0.1:8082".parse().expect("a valid address"),
            database_url: "postgres://postgres@127.0.0.1:5432/lungstream".into(),
            database_max_connections: 8,
            tenants: Vec::new(),
            retry: RetryConfig::default(),
            group_id: "lungstream-report".into(),
            web: WebConfig::default(),
        }
    }
}

impl ReportConfig {
    /// Returns the consumer group before the topic prefix: `kafka.group_id` when set,
    /// otherwise `group_id`.
    pub fn consumer_group(&self) -> &str {
        self.kafka.group_id.as_deref().unwrap_or(&self.group_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides_load() {
        let vars = vec![
            (
                "LUNGSTREAM__DATABASE_URL".to_string(),
                "postgres://db:5432/reports".to_string(),
            ),
            (
                "LUNGSTREAM__DATABASE_MAX_CONNECTIONS".to_string(),
                "3".to_string(),
            ),
        ];
        let config: ReportConfig = lungstream_runtime::config::load_from(None, &vars).unwrap();
        assert_eq!(config.database_url, "postgres://db:5432/reports");
        assert_eq!(config.database_max_connections, 3);
        assert_eq!(config.http_listen.port(), 8082);
        assert_eq!(config.consumer_group(), "lungstream-report");
    }

    #[test]
    fn unknown_key_is_rejected() {
        let vars = vec![("LUNGSTREAM__DATABASE".to_string(), "x".to_string())];
        let error = lungstream_runtime::config::load_from::<ReportConfig>(None, &vars)
            .unwrap_err()
            .to_string();
        assert!(error.contains("database"), "{error}");
    }
}
