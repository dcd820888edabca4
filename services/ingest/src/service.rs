//! Wiring of the ingest service: the HTTP API (STOW-RS, commit, health, metrics), the
//! C-STORE SCP and the series assembler, each optional.

use std::net::SocketAddr;
use std::sync::Arc;

use lungstream_runtime::kafka::{ensure_topics, KafkaConsumer, KafkaProducer};
use lungstream_runtime::{Ops, Store};
use lungstream_schemas::events::topics;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::assembler::Assembler;
use crate::config::IngestConfig;
use crate::cstore::{self, CStoreScp};
use crate::intake::Intake;
use crate::stow::{self, StowState};
use crate::tenants::Tenants;

/// Parts of the service that run in this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Roles {
    /// STOW-RS, commit endpoint and (when configured) the C-STORE SCP.
    pub intake: bool,
    /// The series assembler.
    pub assembler: bool,
}

impl Roles {
    pub const ALL: Roles = Roles {
        intake: true,
        assembler: true,
    };
}

/// A started service.
pub struct Running {
    pub http_address: SocketAddr,
    pub dicom_address: Option<SocketAddr>,
    pub ops: Arc<Ops>,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    /// Waits until every part has stopped (after the shutdown token is cancelled).
    ///
    /// # Errors
    ///
    /// The first part that failed.
    pub async fn wait(self) -> anyhow::Result<()> {
        lungstream_runtime::stage::wait_all(self.tasks).await
    }
}

/// Starts the configured parts; they run until `shutdown` is cancelled.
///
/// # Errors
///
/// Invalid configuration, an address that cannot be bound, a store URL that cannot be
/// opened. An unreachable broker is retried until it responds or `shutdown` is cancelled.
pub async fn start(config: IngestConfig, roles: Roles, shutdown: CancellationToken) -> anyhow::Result<Running> {
    let store = Store::open_with(&config.store_url, &config.store_options)?;
    // A store that refuses the credentials fails here, not on the first upload.
    store
        .put("health/ingest", bytes::Bytes::from_static(b"ok"))
        .await
        .map_err(|e| anyhow::anyhow!("the object store {} does not accept writes: {e}", config.store_url))?;
    let tenants = Arc::new(Tenants::new(&config.tenants)?);
    if roles.intake && config.tenants.is_empty() {
        tracing::warn!("No tenants are configured: every upload will be rejected. Add [[tenants]] to the configuration.");
    }
    let ops = Ops::new();
    tracing::info!(
        store = %config.store_url,
        brokers = %config.kafka.brokers,
        topic_prefix = %config.kafka.topic_prefix,
        intake = roles.intake,
        assembler = roles.assembler,
        tenants = config.tenants.len(),
        "Starting the ingest service."
    );
    // The producer connects lazily, so the HTTP API can start before the broker responds:
    // health and metrics are then available, and /readyz stays 503 until the topics exist.
    let producer = KafkaProducer::connect(&config.kafka)?;
    let intake = Intake::new(store.clone(), producer.clone(), &config.patient_key_secret, &config.limits);
    intake.register_metrics(&ops);
    let mut tasks: Vec<JoinHandle<anyhow::Result<()>>> = Vec::new();
    let mut router = ops.router();
    if roles.intake {
        let state = Arc::new(StowState {
            intake: intake.clone(),
            tenants: tenants.clone(),
            max_request_bytes: config.limits.max_request_bytes,
        });
        router = router.merge(stow::router(state, config.limits.max_request_bytes));
    }
    let (http_address, http_task) = lungstream_runtime::ops::serve(config.http_listen, router, shutdown.clone()).await?;
    tasks.push(tokio::spawn(async move { http_task.await?.map_err(anyhow::Error::from) }));
    tracing::info!(%http_address, "HTTP API listening.");

    let created = config
        .retry
        .until_ok(&shutdown, "create the topics", || ensure_topics(&config.kafka, topics::ALL))
        .await;
    if created.is_none() {
        anyhow::bail!("stopped before the broker at {} responded", config.kafka.brokers);
    }

    let mut dicom_address = None;
    if let (true, Some(listen)) = (roles.intake, config.dicom_listen) {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let bound = listener.local_addr()?;
        dicom_address = Some(bound);
        let scp = Arc::new(CStoreScp {
            intake: intake.clone(),
            tenants: tenants.clone(),
            ae_title: config.ae_title.clone(),
            max_pdu: 16_384,
            max_associations: config.limits.max_associations,
        });
        tasks.push(tokio::spawn(cstore::serve(listener, scp, shutdown.clone())));
        tracing::info!(address = %bound, ae_title = %config.ae_title, "C-STORE SCP listening.");
    }

    if roles.assembler {
        let group = config.kafka.group_id.clone().unwrap_or_else(|| config.assembler.group_id.clone());
        let consumer = KafkaConsumer::join(&config.kafka, &group, &[topics::INSTANCES])?;
        let assembler = Assembler {
            store,
            producer,
            config: config.assembler.clone(),
            max_instances: config.limits.max_instances_per_series,
            retry: config.retry.clone(),
            ops: ops.clone(),
        };
        let token = shutdown.clone();
        tasks.push(tokio::spawn(async move { assembler.run(consumer, token).await }));
    }

    ops.set_ready(true);
    let readiness = ops.clone();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        readiness.set_ready(false);
    });
    Ok(Running {
        http_address,
        dicom_address,
        ops,
        tasks,
    })
}
