//! Wiring of the report service and its consumer of `ct.results.v1`.
//!
//! The consumer records each series result, chooses each study's series, writes the
//! report files and publishes on `ct.reports.v1`. The HTTP API (worklist, studies,
//! reports, aggregates) is in [`crate::api`].

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use lungstream_runtime::kafka::{ensure_topics, KafkaConsumer, KafkaProducer};
use lungstream_runtime::ops::Ops;
use lungstream_runtime::store::keys;
use lungstream_runtime::tenants::Tenants;
use lungstream_runtime::{
    HandleError, Handler, Message, Producer, Rejection, Store, StoreError, Worker,
};
use lungstream_schemas::events::{
    topics, Analysis, ReportEvent, ResultsEvent, SeriesOutcome, EVENT_SCHEMA_VERSION,
};
use lungstream_schemas::report::{Report, Timings, WorstSlice};
use lungstream_schemas::ReasonCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use time::OffsetDateTime;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiState};
use crate::config::ReportConfig;
use crate::db::{choose_series, Database, Inserted, SeriesResult, StudyRow};
use crate::html::render_html;
use crate::RenderedReport;

/// Name of the service in logs, metrics and dead-letter events.
pub const SERVICE: &str = "report";

/// Labels of the report event counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    /// `analysed` or `rejected`.
    pub status: String,
}

/// The report service's own metrics.
#[derive(Clone, Default)]
pub struct ReportMetrics {
    /// `lungstream_report_duplicates_total`: results received again for a study whose
    /// report was already published.
    pub duplicates: Counter,
    /// `lungstream_report_events_total{status}`: report events published.
    pub events: Family<StatusLabels, Counter>,
}

impl ReportMetrics {
    /// Adds the metrics to the service's registry.
    pub fn register(&self, ops: &Ops) {
        ops.metrics.register(
            "report_duplicates",
            "Results received again for a study whose report is already published",
            self.duplicates.clone(),
        );
        ops.metrics.register(
            "report_events",
            "Report events published on ct.reports.v1, by status",
            self.events.clone(),
        );
    }
}

/// The consumer of `ct.results.v1`.
pub struct ResultsHandler {
    pub database: Database,
    pub store: Store,
    pub producer: Producer,
    pub metrics: ReportMetrics,
}

impl Handler for ResultsHandler {
    async fn handle(&mut self, message: &Message) -> Result<(), HandleError> {
        let event = parse_results_event(&message.payload)?;
        self.record(&event).await
    }
}

/// Parses and checks a results event.
///
/// # Errors
///
/// [`ReasonCode::MalformedEvent`] for JSON that is not a results event, empty ids, or a
/// NUL character, which PostgreSQL cannot store.
pub fn parse_results_event(payload: &[u8]) -> Result<ResultsEvent, Rejection> {
    let event: ResultsEvent = serde_json::from_slice(payload).map_err(|e| {
        Rejection::new(
            ReasonCode::MalformedEvent,
            format!("not a results event: {e}"),
        )
    })?;
    let rejection = |detail: &str| Rejection {
        reason: Some(ReasonCode::MalformedEvent),
        detail: detail.to_string(),
        hospital: Some(event.hospital.clone()),
        study_uid: Some(event.study_uid.clone()),
        series_uid: Some(event.series_uid.clone()),
    };
    if event.hospital.is_empty() || event.study_uid.is_empty() || event.series_uid.is_empty() {
        return Err(rejection(
            "the results event has an empty hospital, study UID or series UID",
        ));
    }
    let text = serde_json::to_string(&event).expect("a results event serialises");
    if text.contains("\\u0000") {
        return Err(rejection("the results event contains a NUL character"));
    }
    if let SeriesOutcome::Analysed(analysis) = &event.outcome {
        if analysis.report.model.version.is_empty() {
            return Err(rejection("the analysed series has an empty model version"));
        }
    }
    Ok(event)
}

fn transient(error: impl Into<anyhow::Error>) -> HandleError {
    HandleError::Transient(error.into())
}

fn store_error(error: StoreError) -> HandleError {
    HandleError::Transient(error.into())
}

impl ResultsHandler {
    /// Records one result and brings the study's row, report files and report event up
    /// to date, all under the study's lock.
    ///
    /// The report event is published before the transaction commits, so a failed commit
    /// publishes it again on the retry: consumers of `ct.reports.v1` may see an event
    /// twice, never zero times.
    ///
    /// # Errors
    ///
    /// [`HandleError::Transient`] when the database, the store or the broker fails.
    pub async fn record(&self, event: &ResultsEvent) -> Result<(), HandleError> {
        let mut lock = self
            .database
            .lock_study(&event.hospital, &event.study_uid)
            .await
            .map_err(transient)?;
        let inserted = lock.insert_result(event).await.map_err(transient)?;
        let current = lock.study().await.map_err(transient)?;
        if inserted == Inserted::Duplicate && current.as_ref().is_some_and(|s| s.published) {
            self.metrics.duplicates.inc();
            tracing::info!(
                hospital = %event.hospital,
                study_uid = %event.study_uid,
                series_uid = %event.series_uid,
                revision = event.series_revision,
                "Duplicate result of a study whose report is already published; nothing to do."
            );
            return Ok(());
        }

        let results = lock.results().await.map_err(transient)?;
        let chosen = choose_series(&results).ok_or_else(|| {
            transient(anyhow::anyhow!(
                "the study {} has no results after an insert",
                event.study_uid
            ))
        })?;
        let chosen_event = chosen.event().map_err(|e| {
            HandleError::Permanent(Rejection {
                reason: Some(ReasonCode::MalformedEvent),
                detail: format!(
                    "the stored result of series {} no longer parses: {e}",
                    chosen.series_uid
                ),
                hospital: Some(event.hospital.clone()),
                study_uid: Some(event.study_uid.clone()),
                series_uid: Some(event.series_uid.clone()),
            })
        })?;
        let changed = current
            .as_ref()
            .is_none_or(|c| c.choice() != chosen.choice());
        let mut row = study_row(chosen, &chosen_event, &results, current.as_ref(), changed);
        // A series that does not take over is still listed, so analysts see the
        // study's series change too.
        let listing_changed = current.as_ref().is_some_and(|c| c.other_series != row.other_series);
        let must_publish = changed || listing_changed || current.as_ref().is_some_and(|c| !c.published);

        if must_publish {
            if let (SeriesOutcome::Analysed(analysis), Some(report_key)) =
                (&chosen_event.outcome, &row.report_key)
            {
                self.write_report_files(report_key, analysis).await?;
            }
            let report_event = report_event(&row, &chosen_event);
            self.producer
                .send_json(topics::REPORTS, &row.study_uid, &report_event)
                .await
                .map_err(transient)?;
            row.published = true;
            self.metrics
                .events
                .get_or_create(&StatusLabels {
                    status: row.status.clone(),
                })
                .inc();
            tracing::info!(
                hospital = %row.hospital,
                study_uid = %row.study_uid,
                series_uid = %row.series_uid,
                revision = row.series_revision,
                status = %row.status,
                "Published the study's report event."
            );
        }
        lock.upsert_study(&row).await.map_err(transient)?;
        lock.commit().await.map_err(transient)
    }

    /// Writes `report.json` and `report.html` of an analysed series beside `report_key`.
    /// The page embeds the overlays from the store. An overlay missing from the store is
    /// left out of the page, which gets a warning instead, while `report.json` keeps
    /// every slice.
    async fn write_report_files(
        &self,
        report_key: &str,
        analysis: &Analysis,
    ) -> Result<(), HandleError> {
        let prefix = report_key.strip_suffix("report.json").unwrap_or(report_key);
        let mut json = serde_json::to_string_pretty(&analysis.report).expect("a report serialises");
        json.push('\n');
        self.store
            .put(report_key, Bytes::from(json))
            .await
            .map_err(store_error)?;

        let mut page_report: Report = analysis.report.clone();
        let mut shown_slices = Vec::new();
        let mut overlays = Vec::new();
        for (slice, key) in overlay_pairs(analysis) {
            match self.store.get(key).await {
                Ok(png) => {
                    shown_slices.push(slice.clone());
                    overlays.push((slice.overlay.clone(), png.to_vec()));
                }
                Err(StoreError::NotFound { .. }) => {
                    tracing::warn!(report_key, overlay_key = %key, "An overlay named by the results event is not in the store; the page leaves it out.");
                    page_report.warnings.push(format!(
                        "The overlay image of slice {} ({}) is missing from the object store.",
                        slice.slice, slice.overlay
                    ));
                }
                Err(e) => return Err(store_error(e)),
            }
        }
        page_report.worst_slices = shown_slices;
        let html = render_html(&RenderedReport {
            report: page_report,
            overlays,
        });
        self.store
            .put(&format!("{prefix}report.html"), Bytes::from(html))
            .await
            .map_err(store_error)
    }
}

/// Pairs the worst slices that have an overlay (a non-empty file name) with the overlay
/// keys of the results event, in order. A count mismatch is logged, and the extra slices
/// or keys are left out.
pub fn overlay_pairs(analysis: &Analysis) -> Vec<(&WorstSlice, &String)> {
    let with_overlay: Vec<&WorstSlice> = analysis
        .report
        .worst_slices
        .iter()
        .filter(|s| !s.overlay.is_empty())
        .collect();
    if with_overlay.len() != analysis.overlay_keys.len() {
        tracing::warn!(
            series_uid = %analysis.report.series.series_uid,
            overlays = analysis.overlay_keys.len(),
            slices = with_overlay.len(),
            "The results event lists a different number of overlay keys than worst slices with overlays; pairing them in order."
        );
    }
    with_overlay
        .into_iter()
        .zip(&analysis.overlay_keys)
        .collect()
}

/// Builds the study row for the chosen result. `reported_at` is now when the choice
/// changed and is kept otherwise; `published` is kept until the caller publishes.
fn study_row(
    chosen: &SeriesResult,
    chosen_event: &ResultsEvent,
    results: &[SeriesResult],
    current: Option<&StudyRow>,
    changed: bool,
) -> StudyRow {
    let mut other_series: Vec<String> = results
        .iter()
        .map(|r| r.series_uid.clone())
        .filter(|uid| *uid != chosen.series_uid)
        .collect();
    other_series.sort();
    other_series.dedup();
    let first_seen_at = results
        .iter()
        .map(|r| r.received_at)
        .min()
        .unwrap_or(chosen.received_at);
    let reported_at = match current {
        Some(row) if !changed => row.reported_at,
        _ => OffsetDateTime::now_utc(),
    };
    let patient_key = chosen
        .patient_key
        .clone()
        .or_else(|| results.iter().rev().find_map(|r| r.patient_key.clone()));
    let mut row = StudyRow {
        hospital: chosen.hospital.clone(),
        study_uid: chosen.study_uid.clone(),
        patient_key,
        series_uid: chosen.series_uid.clone(),
        series_revision: chosen.series_revision,
        model_version: chosen.model_version.clone(),
        model_id: None,
        research_only: None,
        status: chosen.status.clone(),
        reason: chosen.reason.clone(),
        detail: chosen.detail.clone(),
        decision: chosen.decision.clone(),
        p_diseased: chosen.p_diseased,
        p_covid: chosen.p_covid,
        infected_percent: None,
        infected_percent_right: None,
        infected_percent_left: None,
        infected_ml: None,
        infected_ml_right: None,
        infected_ml_left: None,
        severity: None,
        other_series,
        report_key: None,
        published: current.is_some_and(|c| c.published) && !changed,
        first_seen_at,
        reported_at,
    };
    if let SeriesOutcome::Analysed(analysis) = &chosen_event.outcome {
        let report = &analysis.report;
        let revision = u32::try_from(chosen.series_revision).unwrap_or(u32::MAX);
        let prefix = keys::report_prefix(
            &row.hospital,
            &row.study_uid,
            &row.series_uid,
            revision,
            &row.model_version,
        );
        row.model_id = Some(report.model.id.clone());
        row.research_only = Some(report.model.research_only);
        row.infected_percent = Some(report.infection.percent.total);
        row.infected_percent_right = Some(report.infection.percent.right);
        row.infected_percent_left = Some(report.infection.percent.left);
        row.infected_ml = Some(report.infection.volume_ml.total);
        row.infected_ml_right = Some(report.infection.volume_ml.right);
        row.infected_ml_left = Some(report.infection.volume_ml.left);
        row.severity = Some(report.infection.percent.total);
        row.report_key = Some(format!("{prefix}report.json"));
    }
    row
}

/// Builds the event for analysts. It carries the pseudonymous patient key and no other
/// patient attribute.
fn report_event(row: &StudyRow, chosen_event: &ResultsEvent) -> ReportEvent {
    let (report, reason) = match &chosen_event.outcome {
        SeriesOutcome::Analysed(analysis) => (Some(&analysis.report), None),
        SeriesOutcome::Rejected { reason, .. } => (None, Some(*reason)),
    };
    ReportEvent {
        schema_version: EVENT_SCHEMA_VERSION.into(),
        hospital: row.hospital.clone(),
        study_uid: row.study_uid.clone(),
        patient_key: row.patient_key.clone(),
        series_uid: row.series_uid.clone(),
        other_series: row.other_series.clone(),
        status: row.status.clone(),
        reason,
        decision: report.map(|r| r.decision),
        probabilities: report.map(|r| r.probabilities),
        infected_percent: report.map(|r| r.infection.percent),
        infected_ml: report.map(|r| r.infection.volume_ml),
        model_id: report.map(|r| r.model.id.clone()),
        model_version: report.map(|r| r.model.version.clone()),
        research_only: report.map(|r| r.model.research_only),
        report_key: row.report_key.clone(),
        timings_ms: report.map_or_else(Timings::default, |r| r.timings_ms),
        reported_at: lungstream_runtime::telemetry::format_rfc3339(row.reported_at),
    }
}

/// A started service.
pub struct Running {
    pub http_address: SocketAddr,
    pub ops: Arc<Ops>,
    /// The service's connection pool, for callers that inspect the database.
    pub database: Database,
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

/// Starts the HTTP API, then waits for the broker (topics) and the database, then starts
/// the consumer of `ct.results.v1`; everything runs until `shutdown` is cancelled.
/// `/readyz` returns 503 until the topics and the database are ready, and the API
/// returns 503 until the database is.
///
/// # Errors
///
/// Invalid configuration, an address that cannot be bound, a store that cannot be opened
/// or does not accept writes, or `shutdown` cancelled before the broker and the database
/// were ready. An unreachable broker or database, and a failed migration, are logged and
/// retried with backoff until `shutdown`.
pub async fn start(config: ReportConfig, shutdown: CancellationToken) -> anyhow::Result<Running> {
    let store = Store::open_with(&config.store_url, &config.store_options)?;
    // A store that refuses the credentials fails here, not on the first result.
    store
        .put("health/report", Bytes::from_static(b"ok"))
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "the object store {} does not accept writes: {e}",
                config.store_url
            )
        })?;
    let tenants = Tenants::new(&config.tenants)?;
    if config.tenants.is_empty() {
        tracing::warn!("No tenants are configured: every API request will be rejected. Add [[tenants]] to the configuration.");
    }
    let ops = Ops::new();
    let metrics = ReportMetrics::default();
    metrics.register(&ops);
    tracing::info!(
        store = %config.store_url,
        brokers = %config.kafka.brokers,
        topic_prefix = %config.kafka.topic_prefix,
        group = config.consumer_group(),
        tenants = config.tenants.len(),
        "Starting the report service."
    );

    let producer = KafkaProducer::connect(&config.kafka)?;
    let state = Arc::new(ApiState {
        database: OnceLock::new(),
        store: store.clone(),
        tenants,
        web: config.web.clone(),
        credentials: crate::pages::credential_hashes(&config.tenants),
    });
    let router = ops
        .router()
        .merge(api::router(state.clone()))
        .merge(crate::pages::router(state.clone()));
    let (http_address, http_task) =
        lungstream_runtime::ops::serve(config.http_listen, router, shutdown.clone()).await?;
    let mut tasks: Vec<JoinHandle<anyhow::Result<()>>> = vec![tokio::spawn(async move {
        http_task.await?.map_err(anyhow::Error::from)
    })];
    tracing::info!(%http_address, "HTTP API listening.");

    let created = config
        .retry
        .until_ok(&shutdown, "create the topics", || {
            ensure_topics(
                &config.kafka,
                &[topics::RESULTS, topics::REPORTS, topics::DEAD_LETTER],
            )
        })
        .await;
    if created.is_none() {
        anyhow::bail!(
            "stopped before the broker at {} responded",
            config.kafka.brokers
        );
    }
    let database = config
        .retry
        .until_ok(&shutdown, "connect to the database", || {
            Database::connect(&config.database_url, config.database_max_connections)
        })
        .await
        .ok_or_else(|| anyhow::anyhow!("stopped before the database responded"))?;
    tracing::info!("Database connected and migrated.");
    // Only this function sets it, once.
    let _ = state.database.set(database.clone());

    let consumer = KafkaConsumer::join(&config.kafka, config.consumer_group(), &[topics::RESULTS])?;
    let worker = Worker {
        service: SERVICE,
        producer: producer.clone(),
        retry: config.retry.clone(),
        ops: ops.clone(),
    };
    let mut handler = ResultsHandler {
        database: database.clone(),
        store,
        producer,
        metrics,
    };
    let token = shutdown.clone();
    tasks.push(lungstream_runtime::stage::spawn_worker(SERVICE, shutdown.clone(), async move {
        worker.run(consumer, &mut handler, token).await
    }));

    ops.set_ready(true);
    let readiness = ops.clone();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        readiness.set_ready(false);
    });
    Ok(Running {
        http_address,
        ops,
        database,
        tasks,
    })
}
