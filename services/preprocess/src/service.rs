//! The preprocess service: `ct.series.v1` → instances from the object store → the
//! preprocessing of this crate → lobe bundle in the store → `ct.lobes.v1`.
//!
//! A series the method cannot use (unreadable DICOM, no lungs, …) gets a "rejected" event
//! on `ct.results.v1`, so the hospital's report shows the reason, and then goes to the
//! dead-letter topic with the same reason code.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use lungstream_dicom::ReaderConfig;
use lungstream_runtime::stage::{spawn_worker, unready_on_shutdown, Running, Stage, StageSettings};
use lungstream_runtime::store::keys;
use lungstream_runtime::{HandleError, Handler, KafkaConfig, Message, Ops, Producer, Rejection, RetryConfig, Store, Worker};
use lungstream_schemas::events::{topics, LobesEvent, ResultsEvent, SeriesEvent, SeriesOutcome, EVENT_SCHEMA_VERSION};
use lungstream_schemas::report::{PerSide, SeriesSummary, Timings};
use lungstream_schemas::ReasonCode;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::bundle::encode_bundle;
use crate::{preprocess, PreprocessConfig, PreprocessedSeries};

/// Version of the preprocessing; part of every bundle key, so bundles of two versions
/// never overwrite each other.
pub const PREPROCESS_VERSION: &str = concat!("preprocess-", env!("CARGO_PKG_VERSION"));

/// Name of the service in logs, metrics and dead letters.
pub const SERVICE: &str = "preprocess";

/// Everything `lungstream-preprocess` reads from its TOML file and `LUNGSTREAM__…`
/// variables.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PreprocessServiceConfig {
    pub kafka: KafkaConfig,
    /// Object store of the instances and bundles: `s3://bucket[/prefix]`, `file:///path`.
    pub store_url: String,
    /// S3 settings over the `AWS_*` environment variables (names as in `object_store`).
    pub store_options: std::collections::BTreeMap<String, String>,
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    pub http_listen: SocketAddr,
    /// Instances downloaded at once per series.
    pub download_concurrency: usize,
    /// Largest series accepted, bytes of DICOM in all; larger ones are rejected as `too_large`.
    pub max_series_bytes: u64,
    /// Threads of the preprocessing (0: one per core).
    pub threads: usize,
    pub retry: RetryConfig,
}

impl Default for PreprocessServiceConfig {
    fn default() -> Self {
        PreprocessServiceConfig {
            kafka: KafkaConfig::default(),
            store_url: "memory://".into(),
            store_options: std::collections::BTreeMap::new(),
            http_listen: "127.0.0.1:8083".parse().expect("a valid address"),
            download_concurrency: 16,
            max_series_bytes: 4 << 30,
            threads: 0,
            retry: RetryConfig::default(),
        }
    }
}

/// The handler of `ct.series.v1`.
pub struct PreprocessHandler {
    pub store: Store,
    pub producer: Producer,
    pub config: PreprocessServiceConfig,
    pub pool: Arc<rayon::ThreadPool>,
}

/// The preprocessed series, the milliseconds of reading and preprocessing, and the bundle.
type Computed = (PreprocessedSeries, u64, u64, Vec<u8>);

/// Cause of a series stopping before its outputs were written.
enum Stop {
    Rejected(Rejection),
    Transient(anyhow::Error),
}

impl Handler for PreprocessHandler {
    async fn handle(&mut self, message: &Message) -> Result<(), HandleError> {
        let event: SeriesEvent = serde_json::from_slice(&message.payload)
            .map_err(|e| Rejection::new(ReasonCode::MalformedEvent, format!("not a series event: {e}")))?;
        let rejection = |reason: ReasonCode, detail: String| Rejection {
            reason: Some(reason),
            detail,
            hospital: Some(event.hospital.clone()),
            study_uid: Some(event.study_uid.clone()),
            series_uid: Some(event.series_uid.clone()),
        };
        match self.run(&event).await {
            Ok(()) => Ok(()),
            Err(Stop::Transient(error)) => Err(HandleError::Transient(error)),
            Err(Stop::Rejected(r)) => {
                let r = rejection(r.reason.unwrap_or(ReasonCode::MalformedEvent), r.detail);
                // The reason goes into the hospital's report, and the dead letter keeps the event.
                let result = ResultsEvent {
                    schema_version: EVENT_SCHEMA_VERSION.into(),
                    hospital: event.hospital.clone(),
                    study_uid: event.study_uid.clone(),
                    series_uid: event.series_uid.clone(),
                    patient_key: event.patient_key.clone(),
                    series_revision: event.revision,
                    outcome: SeriesOutcome::Rejected {
                        reason: r.reason.unwrap_or(ReasonCode::MalformedEvent),
                        detail: r.detail.clone(),
                    },
                };
                self.producer
                    .send_json(topics::RESULTS, &event.series_uid, &result)
                    .await
                    .map_err(|e| HandleError::Transient(e.into()))?;
                Err(HandleError::Permanent(r))
            }
        }
    }
}

impl PreprocessHandler {
    async fn run(&self, event: &SeriesEvent) -> Result<(), Stop> {
        let total_bytes: u64 = event.instances.iter().map(|i| i.size_bytes).sum();
        if total_bytes > self.config.max_series_bytes {
            return Err(Stop::Rejected(Rejection::new(
                ReasonCode::TooLarge,
                format!("the series holds {total_bytes} bytes of DICOM, more than the limit of {}", self.config.max_series_bytes),
            )));
        }
        let started = Instant::now();
        let folder = tempfile::tempdir().map_err(|e| Stop::Transient(anyhow::anyhow!("cannot create a temporary folder: {e}")))?;
        let paths = self.download(event, folder.path().to_path_buf()).await?;
        let pool = self.pool.clone();
        let read_started = Instant::now();
        let computed = tokio::task::spawn_blocking(move || -> Result<Computed, Result<Rejection, String>> {
            let reader = ReaderConfig::default();
            pool.install(|| {
                let (volume, inventory) = lungstream_dicom::read_volume(&paths, &reader).map_err(|e| match e {
                    // The files are this service's temporary copies: a local disk problem.
                    lungstream_dicom::ReadError::Io { .. } => Err(e.to_string()),
                    _ => Ok(Rejection::new(e.reason(), e.to_string())),
                })?;
                if !inventory.skipped.is_empty() {
                    tracing::warn!(skipped = inventory.skipped.len(), "Some instances of the series were not used.");
                }
                let read_ms = read_started.elapsed().as_millis() as u64;
                let clock = Instant::now();
                let series = preprocess(&volume, &PreprocessConfig::default()).map_err(|e| Ok(Rejection::new(e.reason(), e.to_string())))?;
                let preprocess_ms = clock.elapsed().as_millis() as u64;
                let bundle = encode_bundle(&series).map_err(|e| Ok(Rejection::new(ReasonCode::TooLarge, e.to_string())))?;
                Ok((series, read_ms, preprocess_ms, bundle))
            })
        })
        .await
        .map_err(|e| {
            if e.is_panic() {
                // A bug met on this input: retrying would fail the same way for ever.
                tracing::error!("The preprocessing panicked on this series: {e}");
                Stop::Rejected(Rejection::new(ReasonCode::InternalError, "the preprocessing failed unexpectedly on this series; the service log has the details"))
            } else {
                Stop::Transient(anyhow::anyhow!("the preprocessing task was cancelled: {e}"))
            }
        })?;
        drop(folder);
        let (series, read_ms, preprocess_ms, bundle) = computed.map_err(|e| match e {
            Ok(rejection) => Stop::Rejected(rejection),
            Err(local) => Stop::Transient(anyhow::anyhow!("cannot read the temporary copies: {local}")),
        })?;
        let bundle_key = keys::bundle_key(&event.hospital, &event.study_uid, &event.series_uid, event.revision, PREPROCESS_VERSION);
        let bundle_bytes = bundle.len() as u64;
        self.store.put(&bundle_key, bundle.into()).await.map_err(|e| Stop::Transient(e.into()))?;
        let facts = &series.facts;
        let lobes = LobesEvent {
            schema_version: EVENT_SCHEMA_VERSION.into(),
            hospital: event.hospital.clone(),
            study_uid: event.study_uid.clone(),
            series_uid: event.series_uid.clone(),
            patient_key: event.patient_key.clone(),
            series_revision: event.revision,
            bundle_key,
            bundle_bytes,
            series: SeriesSummary {
                series_uid: facts.series_uid.clone(),
                patient_key: event.patient_key.clone().unwrap_or_default(),
                slices: facts.slices,
                slices_with_lungs: facts.slices_with_lungs,
                spacing_mm: facts.spacing_mm,
                lung_volume_ml: PerSide {
                    right: facts.lung_volume_ml.right,
                    left: facts.lung_volume_ml.left,
                    total: facts.lung_volume_ml.right + facts.lung_volume_ml.left,
                },
                background_median_hu: facts.background_median_hu,
                background_plausible: facts.background_plausible,
            },
            preprocess_version: PREPROCESS_VERSION.into(),
            timings_ms: Timings {
                read: read_ms,
                preprocess: preprocess_ms,
                ..Timings::default()
            },
        };
        self.producer
            .send_json(topics::LOBES, &event.series_uid, &lobes)
            .await
            .map_err(|e| Stop::Transient(e.into()))?;
        tracing::info!(
            hospital = %event.hospital,
            study_uid = %event.study_uid,
            series_uid = %event.series_uid,
            revision = event.revision,
            lobes = series.lobes.len(),
            slices = facts.slices,
            bundle_bytes,
            ms = started.elapsed().as_millis() as u64,
            "Series preprocessed."
        );
        Ok(())
    }

    /// Downloads the series' instances into `folder`, a few at a time.
    async fn download(&self, event: &SeriesEvent, folder: PathBuf) -> Result<Vec<PathBuf>, Stop> {
        // Owned values: a stream of futures that borrow the event is not `Send` here.
        let wanted: Vec<(PathBuf, String, String)> = event
            .instances
            .iter()
            .enumerate()
            .map(|(i, instance)| (folder.join(format!("{i:06}.dcm")), instance.object_key.clone(), instance.sop_instance_uid.clone()))
            .collect();
        futures::stream::iter(wanted)
            .map(|(path, key, sop_instance_uid)| {
                let store = self.store.clone();
                async move {
                    let bytes = match store.get_opt(&key).await {
                        Ok(Some(bytes)) => bytes,
                        Ok(None) => {
                            return Err(Stop::Rejected(Rejection::new(
                                ReasonCode::IncompleteSeries,
                                format!("instance {sop_instance_uid} of the series is no longer in the object store"),
                            )))
                        }
                        Err(e) => return Err(Stop::Transient(e.into())),
                    };
                    tokio::fs::write(&path, &bytes)
                        .await
                        .map_err(|e| Stop::Transient(anyhow::anyhow!("cannot write a temporary file: {e}")))?;
                    Ok(path)
                }
            })
            .buffer_unordered(self.config.download_concurrency.max(1))
            .try_collect()
            .await
    }
}

/// Starts the service; it runs until `shutdown` is cancelled.
///
/// # Errors
///
/// Invalid configuration, an address that cannot be bound, a store that cannot be
/// opened, or `shutdown` cancelled while waiting for the broker.
pub async fn start(config: PreprocessServiceConfig, shutdown: CancellationToken) -> anyhow::Result<Running> {
    let ops = Ops::new();
    let stage = Stage::start(
        StageSettings {
            service: SERVICE,
            kafka: &config.kafka,
            retry: &config.retry,
            store_url: &config.store_url,
            store_options: &config.store_options,
            http_listen: config.http_listen,
            default_group: "lungstream-preprocess",
            input_topics: &[topics::SERIES],
        },
        ops.clone(),
        None,
        &shutdown,
    )
    .await?;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(config.threads).thread_name(|i| format!("preprocess-{i}")).build()?;
    let worker = Worker {
        service: SERVICE,
        producer: stage.producer.clone(),
        retry: config.retry.clone(),
        ops: ops.clone(),
    };
    let mut handler = PreprocessHandler {
        store: stage.store,
        producer: stage.producer,
        config,
        pool: Arc::new(pool),
    };
    let consumer = stage.consumer;
    let token = shutdown.clone();
    let http_task = stage.http_task;
    let tasks: Vec<JoinHandle<anyhow::Result<()>>> = vec![
        spawn_worker(SERVICE, shutdown.clone(), async move { worker.run(consumer, &mut handler, token).await }),
        tokio::spawn(async move { http_task.await?.map_err(anyhow::Error::from) }),
    ];
    ops.set_ready(true);
    unready_on_shutdown(&ops, &shutdown);
    Ok(Running {
        http_address: stage.http_address,
        ops,
        tasks,
    })
}
