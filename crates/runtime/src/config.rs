//! Service configuration: a TOML file, then environment variables over it.
//!
//! An environment variable `LUNGSTREAM__SECTION__KEY=value` sets `key` in table `section`
//! (names lowercased, `__` between levels), so a Kubernetes manifest can change any
//! setting without a new file. The value is read as TOML when it parses as a number or
//! a boolean, and as a string otherwise.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Prefix of the environment variables that override configuration values.
pub const ENV_PREFIX: &str = "LUNGSTREAM__";

/// Reads the configuration `T` from `file` (when given) and the process environment.
///
/// # Errors
///
/// The file cannot be read or parsed, or the merged values do not fit `T`; the message
/// names the file or the variable.
pub fn load<T: DeserializeOwned>(file: Option<&Path>) -> anyhow::Result<T> {
    let vars: Vec<(String, String)> = std::env::vars().collect();
    load_from(file, &vars)
}

/// [`load`] with the environment given explicitly (for tests).
///
/// # Errors
///
/// As [`load`].
pub fn load_from<T: DeserializeOwned>(file: Option<&Path>, vars: &[(String, String)]) -> anyhow::Result<T> {
    let mut table = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read configuration file {}: {e}", path.display()))?;
            text.parse::<toml::Table>()
                .map_err(|e| anyhow::anyhow!("configuration file {} is not valid TOML: {e}", path.display()))?
        }
        None => toml::Table::new(),
    };
    for (name, value) in vars {
        let Some(path) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let keys: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
        if keys.iter().any(String::is_empty) {
            anyhow::bail!("environment variable {name} has an empty key part");
        }
        set_path(&mut table, &keys, parse_scalar(value))
            .map_err(|e| anyhow::anyhow!("environment variable {name}: {e}"))?;
    }
    let from_env: Vec<&str> = vars.iter().filter(|(n, _)| n.starts_with(ENV_PREFIX)).map(|(n, _)| n.as_str()).collect();
    let sources = match (file, from_env.is_empty()) {
        (Some(path), true) => path.display().to_string(),
        (Some(path), false) => format!("{} and {}", path.display(), from_env.join(", ")),
        (None, false) => from_env.join(", "),
        (None, true) => "the defaults".to_string(),
    };
    T::deserialize(toml::Value::Table(table)).map_err(|e| anyhow::anyhow!("invalid configuration in {sources}: {e}"))
}

fn parse_scalar(text: &str) -> toml::Value {
    if let Ok(v) = text.parse::<i64>() {
        return toml::Value::Integer(v);
    }
    if let Ok(v) = text.parse::<f64>() {
        return toml::Value::Float(v);
    }
    match text {
        "true" => toml::Value::Boolean(true),
        "false" => toml::Value::Boolean(false),
        _ => toml::Value::String(text.to_string()),
    }
}

fn set_path(table: &mut toml::Table, keys: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = keys.split_last().expect("at least one key");
    let mut current = table;
    for key in parents {
        let entry = current
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = match entry {
            toml::Value::Table(t) => t,
            _ => return Err(format!("`{key}` is a value, not a table")),
        };
    }
    current.insert(last.clone(), value);
    Ok(())
}

/// Connection to the Kafka-protocol broker.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port[,host:port…]`.
    pub brokers: String,
    /// Consumer group; each service has its own default.
    pub group_id: Option<String>,
    /// Put before every topic name and consumer group, so several deployments (or test
    /// runs) can share a cluster: `staging.` makes `staging.ct.series.v1`. Services see
    /// the plain names.
    pub topic_prefix: String,
    /// Partitions of the topics a service creates at start.
    pub partitions: i32,
    pub replication_factor: i32,
    /// Consumer session timeout, ms: a member silent this long leaves the group.
    pub session_timeout_ms: u32,
    pub heartbeat_interval_ms: u32,
    /// Maximum time between two polls before the member is considered stuck, ms. It
    /// must exceed the slowest message's processing time.
    pub max_poll_interval_ms: u32,
    /// How long a produced message may wait for the broker's acknowledgement, ms.
    pub delivery_timeout_ms: u32,
    /// How often each consumer updates `lungstream_kafka_consumer_lag` from librdkafka's
    /// statistics, ms; 0 turns the statistics off.
    pub statistics_interval_ms: u32,
    /// Further librdkafka properties, passed through unchanged: `security.protocol`,
    /// `sasl.mechanism`, `sasl.username`, `sasl.password`, `ssl.ca.location`, …
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            group_id: None,
            topic_prefix: String::new(),
            partitions: 4,
            replication_factor: 1,
            session_timeout_ms: 10_000,
            heartbeat_interval_ms: 1_000,
            max_poll_interval_ms: 600_000,
            delivery_timeout_ms: 30_000,
            statistics_interval_ms: 15_000,
            properties: BTreeMap::new(),
        }
    }
}

/// Exponential backoff for transient failures (broker or store unavailable).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    pub initial_ms: u64,
    pub max_ms: u64,
    pub multiplier: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial_ms: 200,
            max_ms: 30_000,
            multiplier: 2.0,
        }
    }
}

impl RetryConfig {
    /// Returns the wait before retry number `attempt` (0 for the first retry).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = self.multiplier.max(1.0).powi(attempt.min(64) as i32);
        let ms = (self.initial_ms as f64 * factor).min(self.max_ms as f64);
        Duration::from_millis(ms as u64)
    }

    /// Runs `operation` until it succeeds, waiting [`RetryConfig::delay`] between tries
    /// and logging each failure with `what`. Returns `None` when `shutdown` is cancelled
    /// first.
    pub async fn until_ok<T, E, F, Fut>(&self, shutdown: &tokio_util::sync::CancellationToken, what: &str, mut operation: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        let mut attempt = 0;
        loop {
            match operation().await {
                Ok(value) => return Some(value),
                Err(error) => {
                    let delay = self.delay(attempt);
                    attempt += 1;
                    tracing::warn!(attempt, "Cannot {what} ({error}); retrying in {delay:?}.");
                    tokio::select! {
                        () = shutdown.cancelled() => return None,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        kafka: KafkaConfig,
        name: String,
        #[serde(default)]
        retry: RetryConfig,
    }

    #[test]
    fn environment_overrides_file_values() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "name = \"a\"\n[kafka]\nbrokers = \"h:1\"\npartitions = 2\n").unwrap();
        let vars = vec![
            ("LUNGSTREAM__KAFKA__PARTITIONS".to_string(), "8".to_string()),
            ("LUNGSTREAM__KAFKA__PROPERTIES__SECURITY.PROTOCOL".to_string(), "SASL_SSL".to_string()),
            ("OTHER".to_string(), "x".to_string()),
        ];
        let config: Sample = load_from(Some(&file), &vars).unwrap();
        assert_eq!(config.kafka.brokers, "h:1");
        assert_eq!(config.kafka.partitions, 8);
        assert_eq!(config.kafka.properties["security.protocol"], "SASL_SSL");
        assert_eq!(config.name, "a");
        assert_eq!(config.retry.initial_ms, 200);
    }

    #[test]
    fn unknown_keys_are_named_in_errors() {
        let vars = vec![
            ("LUNGSTREAM__NAME".to_string(), "a".to_string()),
            ("LUNGSTREAM__KAFKA__BROKER".to_string(), "h:1".to_string()),
        ];
        let error = load_from::<Sample>(None, &vars).unwrap_err().to_string();
        assert!(error.contains("broker"), "{error}");
        assert!(error.contains("LUNGSTREAM__KAFKA__BROKER"), "{error}");
        let missing = Path::new("/nonexistent/lungstream.toml");
        let error = load_from::<Sample>(Some(missing), &[]).unwrap_err().to_string();
        assert!(error.contains("/nonexistent/lungstream.toml"), "{error}");
    }

    #[tokio::test]
    async fn until_ok_retries_and_stops() {
        let retry = RetryConfig {
            initial_ms: 1,
            max_ms: 2,
            multiplier: 2.0,
        };
        let shutdown = tokio_util::sync::CancellationToken::new();
        let mut tries = 0;
        let value = retry
            .until_ok(&shutdown, "count", || {
                tries += 1;
                let result = if tries < 3 { Err("not yet") } else { Ok(tries) };
                async move { result }
            })
            .await;
        assert_eq!(value, Some(3));
        shutdown.cancel();
        let never: Option<()> = retry.until_ok(&shutdown, "fail", || async { Err::<(), _>("down") }).await;
        assert_eq!(never, None);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let retry = RetryConfig {
            initial_ms: 100,
            max_ms: 1000,
            multiplier: 2.0,
        };
        let delays: Vec<u64> = (0..6).map(|a| retry.delay(a).as_millis() as u64).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1000, 1000]);
    }
}
