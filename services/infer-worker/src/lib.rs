//! The infer service: `ct.lobes.v1` → lobe bundles from the object store → both networks
//! (CUDA when present, CPU otherwise) → maps and overlay images in the store →
//! `ct.results.v1`.
//!
//! It gathers lobes of several series into shared forward passes, so a GPU stays busy
//! when series arrive one by one. For each series it builds the same report
//! `lungstream analyze` writes, with the report crate's `build_report`. The overlays need
//! the worst slices' pixels, so it fetches only those instances from the store.
//!
//! It lives in a crate of its own because it needs both the networks (libtorch) and the
//! report crate, which itself depends on the inference crate without libtorch.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use lungstream_dicom::{ReaderConfig, SliceImage};
use lungstream_infer::{infer_many, DeviceChoice, InferOptions, Model, NetworkConfig, SeriesInference, DEFAULT_BATCH};
use lungstream_preprocess::bundle::decode_bundle;
use lungstream_preprocess::PreprocessedSeries;
use lungstream_report::{build_report, ReportInputs, DEFAULT_WORST_SLICES};
use lungstream_runtime::stage::{spawn_worker, unready_on_shutdown, Running, Stage, StageSettings};
use lungstream_runtime::store::keys;
use lungstream_runtime::worker::{BatchHandler, BatchLimits};
use lungstream_runtime::{HandleError, KafkaConfig, Message, Ops, Producer, Rejection, RetryConfig, Store, Worker};
use lungstream_schemas::events::{topics, Analysis, LobesEvent, ResultsEvent, SeriesOutcome, EVENT_SCHEMA_VERSION};
use lungstream_schemas::report::{ModelSummary, Timings};
use lungstream_schemas::ReasonCode;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Name of the service in logs, metrics and dead letters.
pub const SERVICE: &str = "infer";

/// Everything `lungstream-infer` reads from its TOML file and `LUNGSTREAM__…` variables.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InferServiceConfig {
    pub kafka: KafkaConfig,
    /// Object store of the bundles, instances and outputs.
    pub store_url: String,
    /// S3 settings over the `AWS_*` environment variables (names as in `object_store`).
    pub store_options: std::collections::BTreeMap<String, String>,
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    pub http_listen: SocketAddr,
    /// Model file (safetensors with a model card). Without it, `network` decides.
    pub model: Option<PathBuf>,
    /// Weights used without `model`. `demo` (the default) selects the bundled demo
    /// weights, trained on synthetic phantoms and marked research only. `narrow` or
    /// `full` select deterministic untrained weights of those widths, whose outputs mean
    /// nothing.
    pub network: String,
    /// `auto` (CUDA when libtorch finds a device), `cpu` or `cuda`.
    pub device: String,
    /// Lobes per forward pass.
    pub batch: usize,
    /// Threads of the networks on the CPU (0: libtorch's choice).
    pub threads: i32,
    /// Most series whose lobes share forward passes.
    pub max_series_per_batch: usize,
    /// How long to wait for more series after the first, ms.
    pub linger_ms: u64,
    /// Number of worst slices drawn as overlays.
    pub worst_slices: usize,
    /// Largest lobe bundle once inflated, bytes.
    pub max_bundle_bytes: u64,
    pub retry: RetryConfig,
}

impl Default for InferServiceConfig {
    fn default() -> Self {
        InferServiceConfig {
            kafka: KafkaConfig::default(),
            store_url: "memory://".into(),
            store_options: std::collections::BTreeMap::new(),
            http_listen: "127.0.0.1:8084".parse().expect("a valid address"),
            model: None,
            network: "demo".into(),
            device: "auto".into(),
            batch: DEFAULT_BATCH,
            threads: 0,
            max_series_per_batch: 4,
            linger_ms: 20,
            worst_slices: DEFAULT_WORST_SLICES,
            max_bundle_bytes: 8 << 30,
            retry: RetryConfig::default(),
        }
    }
}

/// Loads the configured model and places it on the configured device.
///
/// # Errors
///
/// An unreadable model file, an unknown network name, CUDA requested but absent.
pub fn load_model(config: &InferServiceConfig) -> anyhow::Result<(Model, ModelSummary)> {
    let mut model = match &config.model {
        Some(path) => Model::load(path).map_err(|e| anyhow::anyhow!("cannot use model {}: {e}", path.display()))?,
        None if config.network == "demo" => Model::demo()?,
        None => {
            let network = NetworkConfig::preset(&config.network).ok_or_else(|| anyhow::anyhow!("unknown network {:?}: expected demo, narrow or full", config.network))?;
            Model::initialised(network, lungstream_infer::model::DEFAULT_SEED)?
        }
    };
    let choice: DeviceChoice = config.device.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    let (device, why) = choice.resolve()?;
    model.to_device(device);
    if config.threads > 0 {
        tch::set_num_threads(config.threads);
    }
    let card = model.card().clone();
    tracing::info!(device = ?device, reason = why, threads = tch::get_num_threads(), model = %card.id, version = %card.version, trained = card.trained, "Networks placed.");
    if !card.trained {
        tracing::warn!(model = %card.id, "The model is untrained: its probabilities and infected areas mean nothing.");
    }
    let summary = ModelSummary {
        id: card.id.clone(),
        version: card.version.clone(),
        config: card.config.name().to_string(),
        trained: card.trained,
        trained_on: card.trained_on.clone(),
        research_only: card.research_only,
        device: match device {
            tch::Device::Cuda(n) => format!("cuda:{n}"),
            _ => "cpu".to_string(),
        },
    };
    Ok((model, summary))
}

/// The networks on a thread of their own. Every forward pass starts from that one thread,
/// so libtorch keeps one pool of CPU threads (and one CUDA context) instead of one per
/// runtime thread that happens to call it.
pub struct Networks {
    jobs: std::sync::mpsc::Sender<Job>,
}

/// Series to run through the networks, and where to send the outcome.
struct Job {
    series: Vec<Arc<PreprocessedSeries>>,
    batch: usize,
    reply: tokio::sync::oneshot::Sender<Result<Vec<SeriesInference>, Failure>>,
}

impl Networks {
    /// Moves the model onto a new thread that runs jobs one at a time.
    ///
    /// # Errors
    ///
    /// The thread cannot be started.
    pub fn start(model: Model) -> std::io::Result<Networks> {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new().name("networks".into()).spawn(move || {
            for job in queue {
                let refs: Vec<&PreprocessedSeries> = job.series.iter().map(AsRef::as_ref).collect();
                let options = InferOptions { batch: job.batch };
                let outcome = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| infer_many(&model, &refs, options, &mut |_| {}))) {
                    Ok(Ok(inferences)) => Ok(inferences),
                    Ok(Err(error)) => Err(Failure::Error(error)),
                    Err(panic) => Err(Failure::Panic(lungstream_runtime::stage::panic_message(panic.as_ref()))),
                };
                // The handler may have stopped waiting (shutdown); nothing to do then.
                let _ = job.reply.send(outcome);
            }
        })?;
        Ok(Networks { jobs })
    }

    /// Runs the networks over the lobes of `series`, a panic becoming a [`Failure`].
    async fn run(&self, series: Vec<Arc<PreprocessedSeries>>, batch: usize) -> Result<Vec<SeriesInference>, Failure> {
        let (reply, outcome) = tokio::sync::oneshot::channel();
        let stopped = || Failure::Panic("the networks thread has stopped".into());
        self.jobs.send(Job { series, batch, reply }).map_err(|_| stopped())?;
        outcome.await.map_err(|_| stopped())?
    }
}

/// The handler of `ct.lobes.v1`.
pub struct InferHandler {
    pub store: Store,
    pub producer: Producer,
    pub networks: Networks,
    pub summary: ModelSummary,
    pub config: InferServiceConfig,
}

/// A lobes event whose bundle has been read.
struct Loaded {
    event: LobesEvent,
    series: Arc<PreprocessedSeries>,
}

fn rejection(event: &LobesEvent, reason: ReasonCode, detail: String) -> HandleError {
    HandleError::Permanent(Rejection {
        reason: Some(reason),
        detail,
        hospital: Some(event.hospital.clone()),
        study_uid: Some(event.study_uid.clone()),
        series_uid: Some(event.series_uid.clone()),
    })
}

impl BatchHandler for InferHandler {
    async fn handle_batch(&mut self, messages: &[&Message]) -> Vec<Result<(), HandleError>> {
        let mut results: Vec<Option<Result<(), HandleError>>> = (0..messages.len()).map(|_| None).collect();
        let mut loaded: Vec<(usize, Loaded)> = Vec::new();
        let fetches = messages.iter().map(|message| self.load(message));
        for (i, outcome) in futures::future::join_all(fetches).await.into_iter().enumerate() {
            match outcome {
                Ok(one) => loaded.push((i, one)),
                Err(error) => results[i] = Some(Err(error)),
            }
        }
        if !loaded.is_empty() {
            let lobes: usize = loaded.iter().map(|(_, l)| l.series.lobes.len()).sum();
            let started = Instant::now();
            let all: Vec<Arc<PreprocessedSeries>> = loaded.iter().map(|(_, l)| l.series.clone()).collect();
            let mut inferred = self.networks.run(all.clone(), self.config.batch).await.map(|all| all.into_iter().map(Ok).collect::<Vec<_>>());
            if inferred.is_err() && loaded.len() > 1 {
                // One series may be the cause: run each alone, so the others still finish.
                tracing::warn!(series = loaded.len(), "The networks failed on a batch; running its series one at a time.");
                let mut each = Vec::new();
                for one in all {
                    each.push(self.networks.run(vec![one], self.config.batch).await.map(|mut r| r.remove(0)));
                }
                inferred = Ok(each);
            }
            let elapsed_ms = started.elapsed().as_millis() as u64;
            tracing::info!(series = loaded.len(), lobes, ms = elapsed_ms, "Networks done.");
            let outcomes: Vec<Result<SeriesInference, Failure>> = match inferred {
                Ok(each) => each,
                Err(failure) => vec![Err(failure)],
            };
            for ((i, one), outcome) in loaded.iter().zip(outcomes) {
                let span = lungstream_runtime::telemetry::message_span(SERVICE, messages[*i]);
                let result = match outcome {
                    Ok(inference) => {
                        // The batch's time is shared by the series in proportion to their lobes.
                        let share = elapsed_ms * one.series.lobes.len() as u64 / lobes.max(1) as u64;
                        self.finish(one, &inference, share).instrument(span).await
                    }
                    Err(Failure::Error(error)) => Err(HandleError::Transient(anyhow::anyhow!("libtorch failed: {error}"))),
                    Err(Failure::Panic(message)) => {
                        tracing::error!(series_uid = %one.event.series_uid, "The networks panicked on this series: {message}");
                        let rejection = rejection(&one.event, ReasonCode::InternalError, "the networks failed unexpectedly on this series; the infer service log has the details".into());
                        self.reject(&one.event, rejection).instrument(span).await
                    }
                };
                results[*i] = Some(result);
            }
        }
        results.into_iter().map(|r| r.expect("every event has a result")).collect()
    }
}

/// Cause of a failed run of the networks.
enum Failure {
    /// libtorch returned an error (out of memory, a device error): worth retrying.
    Error(tch::TchError),
    /// Something panicked: it would fail the same way again.
    Panic(String),
}

impl InferHandler {
    /// Publishes a rejected result for the series, so its study's report shows why, and
    /// returns the rejection for the dead-letter topic.
    async fn reject(&self, event: &LobesEvent, rejection: HandleError) -> Result<(), HandleError> {
        let HandleError::Permanent(r) = &rejection else { return Err(rejection) };
        let result = ResultsEvent {
            schema_version: EVENT_SCHEMA_VERSION.into(),
            hospital: event.hospital.clone(),
            study_uid: event.study_uid.clone(),
            series_uid: event.series_uid.clone(),
            patient_key: event.patient_key.clone(),
            series_revision: event.series_revision,
            outcome: SeriesOutcome::Rejected {
                reason: r.reason.unwrap_or(ReasonCode::MalformedEvent),
                detail: r.detail.clone(),
            },
        };
        self.producer
            .send_json(topics::RESULTS, &event.series_uid, &result)
            .await
            .map_err(|e| HandleError::Transient(e.into()))?;
        Err(rejection)
    }

    async fn load(&self, message: &Message) -> Result<Loaded, HandleError> {
        let event: LobesEvent = serde_json::from_slice(&message.payload)
            .map_err(|e| HandleError::Permanent(Rejection::new(ReasonCode::MalformedEvent, format!("not a lobes event: {e}"))))?;
        match self.read_bundle(&event).await {
            Ok(series) => Ok(Loaded { event, series: Arc::new(series) }),
            Err(error @ HandleError::Transient(_)) => Err(error),
            Err(rejection) => Err(self.reject(&event, rejection).await.expect_err("a rejection is an error")),
        }
    }

    async fn read_bundle(&self, event: &LobesEvent) -> Result<PreprocessedSeries, HandleError> {
        let bytes = match self.store.get_opt(&event.bundle_key).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                return Err(rejection(
                    event,
                    ReasonCode::IncompleteSeries,
                    format!("the lobe bundle {} is not in the object store (do preprocess and infer use the same store_url?)", event.bundle_key),
                ))
            }
            Err(e) => return Err(HandleError::Transient(e.into())),
        };
        let max = self.config.max_bundle_bytes;
        tokio::task::block_in_place(|| decode_bundle(&bytes, max)).map_err(|e| {
            let reason = match e {
                lungstream_preprocess::bundle::BundleError::TooLarge { .. } => ReasonCode::TooLarge,
                _ => ReasonCode::MalformedEvent,
            };
            rejection(event, reason, e.to_string())
        })
    }

    /// Draws the overlays, writes the maps and overlays, and publishes the result.
    async fn finish(&self, one: &Loaded, inference: &SeriesInference, infer_ms: u64) -> Result<(), HandleError> {
        let transient = |e: anyhow::Error| HandleError::Transient(e);
        let event = &one.event;
        let clock = Instant::now();
        let worst: Vec<usize> = inference.slices_by_severity.iter().take(self.config.worst_slices).map(|s| s.slice).collect();
        let pixels = self.worst_slice_pixels(event, &one.series, &worst).await.map_err(transient)?;
        let timings = Timings {
            read: event.timings_ms.read,
            preprocess: event.timings_ms.preprocess,
            infer: infer_ms,
            ..Timings::default()
        };
        let (rendered, maps) = tokio::task::block_in_place(|| {
            let inputs = ReportInputs {
                slices: &pixels,
                patient_key: event.patient_key.clone(),
                facts: &one.series.facts,
                inference,
                model: self.summary.clone(),
                timings,
                worst_slices: self.config.worst_slices,
            };
            (build_report(&inputs), lungstream_infer::maps_file::encode_maps(inference))
        });
        let maps = maps.map_err(|e| transient(anyhow::anyhow!("cannot encode the maps: {e}")))?;
        let prefix = keys::results_prefix(&event.hospital, &event.study_uid, &event.series_uid, event.series_revision, &self.summary.version);
        let maps_key = format!("{prefix}maps.safetensors.zst");
        self.store.put(&maps_key, maps.into()).await.map_err(|e| transient(e.into()))?;
        let mut overlay_keys = Vec::new();
        for (name, png) in &rendered.overlays {
            let key = format!("{prefix}{name}");
            self.store.put(&key, png.clone().into()).await.map_err(|e| transient(e.into()))?;
            overlay_keys.push(key);
        }
        let mut report = rendered.report;
        report.timings_ms.report = clock.elapsed().as_millis() as u64;
        report.timings_ms.total = report.timings_ms.read + report.timings_ms.preprocess + report.timings_ms.infer + report.timings_ms.report;
        let decision = report.decision;
        let result = ResultsEvent {
            schema_version: EVENT_SCHEMA_VERSION.into(),
            hospital: event.hospital.clone(),
            study_uid: event.study_uid.clone(),
            series_uid: event.series_uid.clone(),
            patient_key: event.patient_key.clone(),
            series_revision: event.series_revision,
            outcome: SeriesOutcome::Analysed(Box::new(Analysis { report, maps_key, overlay_keys })),
        };
        self.producer
            .send_json(topics::RESULTS, &event.series_uid, &result)
            .await
            .map_err(|e| transient(e.into()))?;
        tracing::info!(
            hospital = %event.hospital,
            study_uid = %event.study_uid,
            series_uid = %event.series_uid,
            revision = event.series_revision,
            decision = ?decision,
            "Series result published."
        );
        Ok(())
    }

    /// Fetches and decodes the instances of the worst slices. A missing instance leaves its
    /// slice without an overlay (with a warning in the report) instead of failing the series.
    async fn worst_slice_pixels(&self, event: &LobesEvent, series: &PreprocessedSeries, worst: &[usize]) -> anyhow::Result<HashMap<usize, SliceImage>> {
        let folder = tempfile::tempdir()?;
        let mut files = Vec::new();
        for &slice in worst {
            let Some(sop) = series.facts.sop_instance_uids.get(slice) else { continue };
            let key = keys::instance_key(&event.hospital, &event.study_uid, &event.series_uid, sop);
            let Some(bytes) = self.store.get_opt(&key).await? else {
                tracing::warn!(slice, "The instance of a worst slice is not in the store; it gets no overlay.");
                continue;
            };
            let path = folder.path().join(format!("{slice}.dcm"));
            tokio::fs::write(&path, &bytes).await?;
            files.push((slice, path));
        }
        let reader = ReaderConfig::default();
        let decoded = tokio::task::block_in_place(|| {
            files
                .into_iter()
                .filter_map(|(slice, path)| match lungstream_dicom::read_slice(&path, &reader) {
                    Ok(image) => Some((slice, image)),
                    Err(error) => {
                        tracing::warn!(slice, reason = error.reason().as_str(), "A worst slice cannot be decoded; it gets no overlay.");
                        None
                    }
                })
                .collect()
        });
        Ok(decoded)
    }
}

/// Loads the model, then starts the service; it runs until `shutdown` is cancelled.
///
/// # Errors
///
/// A model that cannot be loaded, invalid configuration, an address that cannot be bound,
/// a store that cannot be opened, or `shutdown` cancelled while waiting for the broker.
pub async fn start(config: InferServiceConfig, shutdown: CancellationToken) -> anyhow::Result<Running> {
    let (model, summary) = tokio::task::block_in_place(|| load_model(&config))?;
    let ops = Ops::new();
    let stage = Stage::start(
        StageSettings {
            service: SERVICE,
            kafka: &config.kafka,
            retry: &config.retry,
            store_url: &config.store_url,
            store_options: &config.store_options,
            http_listen: config.http_listen,
            default_group: "lungstream-infer",
            input_topics: &[topics::LOBES],
        },
        ops.clone(),
        None,
        &shutdown,
    )
    .await?;
    let worker = Worker {
        service: SERVICE,
        producer: stage.producer.clone(),
        retry: config.retry.clone(),
        ops: ops.clone(),
    };
    let limits = BatchLimits {
        max_events: config.max_series_per_batch.max(1),
        linger: std::time::Duration::from_millis(config.linger_ms),
    };
    let mut handler = InferHandler {
        store: stage.store,
        producer: stage.producer,
        networks: Networks::start(model)?,
        summary,
        config,
    };
    let consumer = stage.consumer;
    let token = shutdown.clone();
    let http_task = stage.http_task;
    let tasks: Vec<JoinHandle<anyhow::Result<()>>> = vec![
        spawn_worker(SERVICE, shutdown.clone(), async move { worker.run_batched(consumer, &mut handler, limits, token).await }),
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
