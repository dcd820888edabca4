//! Start-up shared by the stage services (preprocess, infer, report): the object store,
//! the operations endpoints, the topics, a producer and a consumer group member.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::bus::{Consumer, Producer};
use crate::config::{KafkaConfig, RetryConfig};
use crate::kafka::{ensure_topics, KafkaConsumer, KafkaProducer};
use crate::ops::Ops;
use crate::store::Store;
use lungstream_schemas::events::topics;

/// Connection settings of a stage service.
pub struct StageSettings<'a> {
    pub service: &'static str,
    pub kafka: &'a KafkaConfig,
    pub retry: &'a RetryConfig,
    pub store_url: &'a str,
    pub store_options: &'a std::collections::BTreeMap<String, String>,
    pub http_listen: SocketAddr,
    /// Consumer group when `kafka.group_id` is not set.
    pub default_group: &'a str,
    /// Topics the stage consumes.
    pub input_topics: &'a [&'a str],
}

/// A connected stage: everything its handler and worker loop need.
pub struct Stage {
    pub store: Store,
    pub producer: Producer,
    pub consumer: Consumer,
    pub ops: Arc<Ops>,
    pub http_address: SocketAddr,
    pub http_task: JoinHandle<std::io::Result<()>>,
}

impl Stage {
    /// Opens the store (and checks that it accepts writes), serves `/healthz`, `/readyz`
    /// and `/metrics` plus `routes` at once, then waits for the broker, creates the topics
    /// and joins the consumer group. `/readyz` returns 503 until the caller sets the
    /// service ready.
    ///
    /// # Errors
    ///
    /// A store URL that cannot be opened or refuses writes, an address that cannot be
    /// bound, invalid Kafka properties, or `shutdown` cancelled before the broker answered.
    pub async fn start(settings: StageSettings<'_>, ops: Arc<Ops>, routes: Option<Router>, shutdown: &CancellationToken) -> anyhow::Result<Stage> {
        let store = Store::open_with(settings.store_url, settings.store_options)?;
        let health_key = format!("health/{}", settings.service);
        let written = settings
            .retry
            .until_ok(shutdown, "write to the object store", || store.put(&health_key, bytes::Bytes::from_static(b"ok")))
            .await;
        if written.is_none() {
            anyhow::bail!("stopped before the object store {} accepted a write", settings.store_url);
        }
        let mut router = ops.router();
        if let Some(routes) = routes {
            router = router.merge(routes);
        }
        let (http_address, http_task) = crate::ops::serve(settings.http_listen, router, shutdown.clone()).await?;
        tracing::info!(service = settings.service, %http_address, "HTTP endpoints listening.");
        let producer = KafkaProducer::connect(settings.kafka)?;
        let created = settings
            .retry
            .until_ok(shutdown, "create the topics", || ensure_topics(settings.kafka, topics::ALL))
            .await;
        if created.is_none() {
            anyhow::bail!("stopped before the broker at {} responded", settings.kafka.brokers);
        }
        let group = settings.kafka.group_id.clone().unwrap_or_else(|| settings.default_group.to_string());
        let consumer = KafkaConsumer::join(settings.kafka, &group, settings.input_topics)?;
        tracing::info!(
            service = settings.service,
            brokers = %settings.kafka.brokers,
            topic_prefix = %settings.kafka.topic_prefix,
            group = %group,
            store = %settings.store_url,
            "Connected; consuming {:?}.",
            settings.input_topics
        );
        Ok(Stage {
            store,
            producer,
            consumer,
            ops,
            http_address,
            http_task,
        })
    }
}

/// Clears readiness when `shutdown` is cancelled, so load balancers stop sending work.
pub fn unready_on_shutdown(ops: &Arc<Ops>, shutdown: &CancellationToken) {
    let ops = ops.clone();
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        ops.set_ready(false);
    });
}

/// Runs a stage's consumer loop as a task. When the loop ends for any reason, panics
/// included, `shutdown` is cancelled, so the whole service stops and exits with an error
/// instead of passing health checks while it consumes nothing.
pub fn spawn_worker<F>(service: &'static str, shutdown: CancellationToken, work: F) -> JoinHandle<anyhow::Result<()>>
where
    F: std::future::Future<Output = Result<(), crate::bus::BusError>> + Send + 'static,
{
    use futures::FutureExt;
    tokio::spawn(async move {
        let outcome = std::panic::AssertUnwindSafe(work).catch_unwind().await;
        let stopped_by_request = shutdown.is_cancelled();
        shutdown.cancel();
        match outcome {
            Ok(Ok(())) if stopped_by_request => Ok(()),
            Ok(Ok(())) => Err(anyhow::anyhow!("the {service} consumer loop ended without a shutdown request")),
            Ok(Err(error)) => Err(anyhow::anyhow!("the {service} consumer loop failed: {error}")),
            Err(panic) => {
                let message = panic_message(panic.as_ref());
                tracing::error!(service, "The consumer loop panicked: {message}; stopping the service.");
                Err(anyhow::anyhow!("the {service} consumer loop panicked: {message}"))
            }
        }
    })
}

/// Returns the text of a caught panic's payload (empty when it is not text).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_string()))
        .unwrap_or_default()
}

/// Waits for every task of a service and returns the first failure.
///
/// # Errors
///
/// The first task that failed or panicked.
pub async fn wait_all(tasks: Vec<JoinHandle<anyhow::Result<()>>>) -> anyhow::Result<()> {
    let mut first_error = None;
    for task in tasks {
        if let Err(e) = task.await.map_err(anyhow::Error::from).and_then(|r| r) {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// A started stage service: its HTTP address, its operations state and its tasks.
pub struct Running {
    pub http_address: SocketAddr,
    pub ops: Arc<Ops>,
    pub tasks: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    /// Waits until the service has stopped (after the shutdown token is cancelled).
    ///
    /// # Errors
    ///
    /// The first part that failed.
    pub async fn wait(self) -> anyhow::Result<()> {
        wait_all(self.tasks).await
    }
}
