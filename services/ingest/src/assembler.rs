//! Series assembly: `ct.instances.v1` events in, one `ct.series.v1` event per complete
//! series out.
//!
//! A series is complete when its sender marks it so: a C-STORE association is released,
//! or the commit endpoint is called. It is also complete when no instance has arrived for
//! the quiet period and its stack has no gap (contiguous instance numbers, no slice
//! spacing far above the median). A series still incomplete at the expiry time goes to the dead-letter topic as
//! `incomplete_series`; its objects stay in the store for inspection. A SOP Instance UID
//! seen twice counts once.
//!
//! State survives restarts without a database: the topic is the log. The assembler
//! commits a partition only up to the first event of its oldest open series, so after a
//! restart (or a rebalance) the new owner reads the open series' events again and
//! rebuilds them. Completed series are recorded in the store
//! (`series/<hospital>/<study>/<series>/series.json`), so replayed events of a series
//! already sent are dropped, a second upload of the same instances sends nothing, and
//! instances added to a completed series produce a new revision that lists them all.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use lungstream_runtime::store::key_segment;
use lungstream_runtime::telemetry::{format_rfc3339, message_span, parse_rfc3339};
use lungstream_runtime::worker::{publish_dead_letter, publish_dead_letter_with, Rejection};
use lungstream_runtime::{Consumer, Message, Ops, Producer, RetryConfig, Store};
use lungstream_schemas::events::{
    check_schema_version, peek_schema_version, topics, CommitTrigger, InstanceBody, InstanceEvent, ResultsEvent, SeriesEvent, SeriesInstance, SeriesOutcome, EVENT_SCHEMA_VERSION,
};
use lungstream_schemas::ReasonCode;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::AssemblerConfig;
use crate::intake::INGEST_CHECKS;

/// Name of the service in logs, metrics and dead-letter events.
pub const SERVICE: &str = "assembler";

/// A series, per hospital: two hospitals cannot touch each other's series even with the
/// same UIDs.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesId {
    pub hospital: String,
    pub study_uid: String,
    pub series_uid: String,
}

impl SeriesId {
    /// Returns the id of a series from its hospital, study and series UIDs.
    pub fn new(hospital: &str, study_uid: &str, series_uid: &str) -> SeriesId {
        SeriesId {
            hospital: hospital.to_string(),
            study_uid: study_uid.to_string(),
            series_uid: series_uid.to_string(),
        }
    }

    /// Returns the folder of the series' records in the store.
    pub fn record_prefix(&self) -> String {
        format!(
            "series/{}/{}/{}",
            key_segment(&self.hospital),
            key_segment(&self.study_uid),
            key_segment(&self.series_uid)
        )
    }
}

/// The record of a completed series in the store: its last event, and whether the event
/// reached the broker.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SeriesRecord {
    pub published: bool,
    pub event: SeriesEvent,
}

/// An open series.
#[derive(Clone, Debug)]
struct Pending {
    patient_key: Option<String>,
    instances: BTreeMap<String, SeriesInstance>,
    first_received: String,
    last_received: String,
    last_received_at: OffsetDateTime,
    /// When this member last read an instance of the series: quiet periods and expiry
    /// count from here.
    last_read_at: OffsetDateTime,
    first_offset: i64,
    partition: i32,
    commit: Option<CommitTrigger>,
    revision: u32,
}

/// Decision of the assembler about an open series.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// The series is complete: send this event.
    Complete(SeriesEvent),
    /// The series will not complete: send it to the dead-letter topic.
    GiveUp {
        id: SeriesId,
        reason: ReasonCode,
        detail: String,
        /// The instances received, for the dead-letter event.
        summary: serde_json::Value,
        /// Pseudonymous patient key and revision, for the rejected result.
        patient_key: Option<String>,
        revision: u32,
    },
}

/// The assembly state of the partitions this member owns. Pure: no I/O, so every rule
/// is tested directly.
pub struct Assembly {
    config: AssemblerConfig,
    max_instances: usize,
    open: HashMap<SeriesId, Pending>,
    /// Partition → offset after the last event read.
    next_offsets: HashMap<i32, i64>,
}

impl Assembly {
    pub fn new(config: AssemblerConfig, max_instances: usize) -> Assembly {
        Assembly {
            config,
            max_instances,
            open: HashMap::new(),
            next_offsets: HashMap::new(),
        }
    }

    /// Returns the number of open series.
    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    /// Returns whether `id` is open.
    pub fn is_open(&self, id: &SeriesId) -> bool {
        self.open.contains_key(id)
    }

    /// Returns the partition of an open series.
    pub fn partition_of(&self, id: &SeriesId) -> Option<i32> {
        self.open.get(id).map(|p| p.partition)
    }

    /// Takes one event. `completed` is the record of the series if it was completed
    /// before.
    pub fn on_event(&mut self, partition: i32, offset: i64, event: &InstanceEvent, completed: Option<&SeriesEvent>, now: OffsetDateTime) {
        self.next_offsets.insert(partition, offset + 1);
        let id = SeriesId::new(&event.hospital, &event.study_uid, &event.series_uid);
        match &event.body {
            InstanceBody::Commit { trigger } => {
                if let Some(pending) = self.open.get_mut(&id) {
                    pending.commit = Some(*trigger);
                } else {
                    tracing::debug!(series = %id.series_uid, "Commit for a series with nothing new; ignored.");
                }
            }
            InstanceBody::Instance(stored) => {
                if let Some(done) = completed {
                    let known = done.instances.iter().any(|i| i.sop_instance_uid == stored.sop_instance_uid && i.sha256 == stored.sha256);
                    if known && !self.open.contains_key(&id) {
                        return;
                    }
                }
                let received_at = parse_rfc3339(&event.received_at).unwrap_or(now);
                let pending = self.open.entry(id).or_insert_with(|| {
                    let (instances, revision) = match completed {
                        Some(done) => (
                            done.instances.iter().map(|i| (i.sop_instance_uid.clone(), i.clone())).collect(),
                            done.revision + 1,
                        ),
                        None => (BTreeMap::new(), 1),
                    };
                    Pending {
                        patient_key: stored.patient_key.clone(),
                        instances,
                        first_received: event.received_at.clone(),
                        last_received: event.received_at.clone(),
                        last_received_at: received_at,
                        last_read_at: now,
                        first_offset: offset,
                        partition,
                        commit: None,
                        revision,
                    }
                });
                pending.last_read_at = pending.last_read_at.max(now);
                if received_at >= pending.last_received_at {
                    pending.last_received_at = received_at;
                    pending.last_received = event.received_at.clone();
                }
                pending.instances.entry(stored.sop_instance_uid.clone()).or_insert_with(|| SeriesInstance {
                    sop_instance_uid: stored.sop_instance_uid.clone(),
                    object_key: stored.object_key.clone(),
                    size_bytes: stored.size_bytes,
                    sha256: stored.sha256.clone(),
                    instance_number: stored.instance_number,
                    slice_position_mm: stored.slice_position_mm,
                });
            }
        }
    }

    /// Notes that an event was read and skipped (malformed, dead-lettered).
    pub fn on_skipped(&mut self, partition: i32, offset: i64) {
        self.next_offsets.insert(partition, offset + 1);
    }

    /// Returns the decisions due at `now`. The series stay open until [`Assembly::close`].
    pub fn due(&self, now: OffsetDateTime) -> Vec<Decision> {
        let mut ids: Vec<&SeriesId> = self.open.keys().collect();
        ids.sort();
        let mut decisions = Vec::new();
        for id in ids {
            let pending = &self.open[id];
            let quiet_for = now - pending.last_read_at;
            let quiet_for = Duration::try_from(quiet_for).unwrap_or(Duration::ZERO);
            if pending.instances.len() > self.max_instances {
                decisions.push(self.give_up(id, pending, ReasonCode::TooLarge, format!(
                    "the series has {} instances, more than the limit of {}",
                    pending.instances.len(),
                    self.max_instances
                )));
                continue;
            }
            let trigger = match pending.commit {
                Some(trigger) => Some(trigger),
                None if quiet_for >= self.config.quiet_period() => stack_problem(pending, self.config.max_gap_ratio)
                    .is_none()
                    .then_some(CommitTrigger::QuietPeriod),
                None => None,
            };
            if let (Some(_), true) = (trigger, pending.instances.len() < self.config.min_instances) {
                decisions.push(self.give_up(id, pending, ReasonCode::TooFewSlices, format!(
                    "the series is complete with {} instance(s), fewer than the {} the analysis needs",
                    pending.instances.len(),
                    self.config.min_instances
                )));
            } else if let Some(trigger) = trigger {
                decisions.push(Decision::Complete(self.series_event(id, pending, trigger, now)));
            } else if quiet_for >= self.config.expiry() {
                let problem = stack_problem(pending, self.config.max_gap_ratio).unwrap_or_else(|| "no commit arrived".into());
                decisions.push(self.give_up(id, pending, ReasonCode::IncompleteSeries, format!(
                    "{} instances received, then nothing for {:.0} s; {problem}",
                    pending.instances.len(),
                    quiet_for.as_secs_f64()
                )));
            }
        }
        decisions
    }

    fn give_up(&self, id: &SeriesId, pending: &Pending, reason: ReasonCode, detail: String) -> Decision {
        let mut sorted: Vec<&SeriesInstance> = pending.instances.values().collect();
        sorted.sort_by(|a, b| a.slice_position_mm.total_cmp(&b.slice_position_mm));
        let listed: Vec<&SeriesInstance> = sorted.iter().take(MAX_SUMMARY_INSTANCES).copied().collect();
        Decision::GiveUp {
            id: id.clone(),
            reason,
            detail,
            summary: serde_json::json!({
                "hospital": id.hospital,
                "study_uid": id.study_uid,
                "series_uid": id.series_uid,
                "instance_count": sorted.len(),
                "first_received_at": pending.first_received,
                "last_received_at": pending.last_received,
                "instances": listed,
                "instances_not_listed": sorted.len() - listed.len(),
                "object_key_prefix": crate::intake::series_instances_prefix(&id.hospital, &id.study_uid, &id.series_uid),
            }),
            patient_key: pending.patient_key.clone(),
            revision: pending.revision,
        }
    }

    fn series_event(&self, id: &SeriesId, pending: &Pending, trigger: CommitTrigger, now: OffsetDateTime) -> SeriesEvent {
        let mut instances: Vec<SeriesInstance> = pending.instances.values().cloned().collect();
        instances.sort_by(|a, b| {
            a.slice_position_mm
                .total_cmp(&b.slice_position_mm)
                .then_with(|| a.sop_instance_uid.cmp(&b.sop_instance_uid))
        });
        SeriesEvent {
            schema_version: EVENT_SCHEMA_VERSION.into(),
            hospital: id.hospital.clone(),
            study_uid: id.study_uid.clone(),
            series_uid: id.series_uid.clone(),
            patient_key: pending.patient_key.clone(),
            revision: pending.revision,
            instance_count: instances.len(),
            instances,
            first_received_at: pending.first_received.clone(),
            last_received_at: pending.last_received.clone(),
            completed_at: format_rfc3339(now),
            trigger,
            checks: INGEST_CHECKS.iter().map(|c| c.to_string()).collect(),
        }
    }

    /// Forgets a series after its decision was carried out.
    pub fn close(&mut self, id: &SeriesId) {
        self.open.remove(id);
    }

    /// Drops the state of partitions this member no longer owns.
    pub fn revoke(&mut self, partition: i32) {
        self.open.retain(|_, p| p.partition != partition);
        self.next_offsets.remove(&partition);
    }

    /// Returns the position each partition may be committed to: the first event of its
    /// oldest open series, or everything read.
    pub fn commit_positions(&self) -> BTreeMap<i32, i64> {
        let mut positions: BTreeMap<i32, i64> = self.next_offsets.iter().map(|(p, o)| (*p, *o)).collect();
        for pending in self.open.values() {
            let entry = positions.entry(pending.partition).or_insert(pending.first_offset);
            *entry = (*entry).min(pending.first_offset);
        }
        positions
    }
}

/// Describes why the stack of an open series looks incomplete, or returns `None`.
fn stack_problem(pending: &Pending, max_gap_ratio: f64) -> Option<String> {
    let numbers: Option<Vec<i32>> = pending.instances.values().map(|i| i.instance_number).collect();
    if let Some(mut numbers) = numbers {
        numbers.sort_unstable();
        numbers.dedup();
        let (first, last) = (numbers[0], numbers[numbers.len() - 1]);
        let span = i64::from(last) - i64::from(first) + 1;
        if span != numbers.len() as i64 {
            return Some(format!("instance numbers {first}..{last} have {} missing", span - numbers.len() as i64));
        }
    }
    let mut positions: Vec<f64> = pending.instances.values().map(|i| i.slice_position_mm).collect();
    positions.sort_by(f64::total_cmp);
    let gaps = lungstream_dicom::geometry::find_gaps(&positions, max_gap_ratio);
    if let Some(gap) = gaps.first() {
        return Some(format!(
            "{} gap(s) in the slice positions, the first between {:.1} and {:.1} mm",
            gaps.len(),
            gap.below_mm,
            gap.above_mm
        ));
    }
    None
}

/// The assembler service: reads `ct.instances.v1`, keeps the open series, and sends
/// decisions.
pub struct Assembler {
    pub store: Store,
    pub producer: Producer,
    pub config: AssemblerConfig,
    pub max_instances: usize,
    pub retry: RetryConfig,
    pub ops: Arc<Ops>,
}

/// Most completed-series records kept in memory; past it the cache starts again (the
/// records stay in the store).
const MAX_CACHED_RECORDS: usize = 10_000;

/// At most this many instances are listed in a dead-letter summary, so the event stays
/// well below the broker's message size limit.
const MAX_SUMMARY_INSTANCES: usize = 50;

/// The assembler's working state between events.
#[derive(Default)]
struct Working {
    /// Records of completed series, by series (`None`: never completed). A cache.
    records: HashMap<SeriesId, Option<SeriesEvent>>,
    /// Trace headers of each open series' first instance event.
    traces: HashMap<SeriesId, Vec<(String, Vec<u8>)>>,
    /// Series events whose record was written but whose sending is not confirmed. They
    /// are sent again exactly as they are, so one revision never has two contents.
    frozen: HashMap<SeriesId, SeriesEvent>,
    /// Series given up as too large: their further instances are dropped.
    too_large: HashMap<SeriesId, i32>,
    /// Partition → last committed position.
    committed: BTreeMap<i32, i64>,
}

impl Working {
    fn revoke(&mut self, assembly: &mut Assembly, partition: i32) {
        assembly.revoke(partition);
        self.committed.remove(&partition);
        self.records.clear();
        self.traces.retain(|id, _| assembly.is_open(id));
        self.frozen.retain(|id, _| assembly.is_open(id));
        self.too_large.retain(|_, p| *p != partition);
    }
}

impl Assembler {
    /// Runs until `shutdown` is cancelled; then commits what is done and leaves the group.
    ///
    /// # Errors
    ///
    /// Only when the consumer cannot go on.
    pub async fn run(&self, mut consumer: Consumer, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut assembly = Assembly::new(self.config.clone(), self.max_instances);
        let mut working = Working::default();
        let mut tick = tokio::time::interval(Duration::from_millis(self.config.tick_ms.max(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failures = 0u32;
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {
                    for (_, partition) in consumer.take_revoked() {
                        working.revoke(&mut assembly, partition);
                    }
                    self.decide(&mut assembly, &mut working, &shutdown).await;
                    self.commit(&mut consumer, &assembly, &mut working.committed);
                }
                received = consumer.recv() => match received {
                    Ok(message) => {
                        failures = 0;
                        // A rebalance runs inside `recv`: drop the revoked partitions'
                        // state before this event, which may be the first one re-read.
                        for (_, partition) in consumer.take_revoked() {
                            working.revoke(&mut assembly, partition);
                        }
                        let span = message_span(SERVICE, &message);
                        let series = self.take(&mut assembly, &mut working, &message, &shutdown).instrument(span).await;
                        if let Some(id) = series.filter(|id| assembly.is_open(id)) {
                            // The series event continues the trace of the series' first instance.
                            working.traces.entry(id).or_insert_with(|| message.headers.clone());
                        }
                    }
                    Err(error) => {
                        let delay = self.retry.delay(failures);
                        failures += 1;
                        tracing::warn!("Cannot receive from the broker ({error}); retrying in {delay:?}.");
                        tokio::select! {
                            () = shutdown.cancelled() => break,
                            () = tokio::time::sleep(delay) => {}
                        }
                    }
                },
            }
        }
        for (_, partition) in consumer.take_revoked() {
            working.revoke(&mut assembly, partition);
        }
        self.commit(&mut consumer, &assembly, &mut working.committed);
        tracing::info!(open = assembly.open_count(), "Assembler stopped; open series resume from the log.");
        consumer.close();
        Ok(())
    }

    /// Applies one consumed event; returns its series when it is an instance event.
    async fn take(&self, assembly: &mut Assembly, working: &mut Working, message: &Message, shutdown: &CancellationToken) -> Option<SeriesId> {
        let parsed = match peek_schema_version(&message.payload) {
            None => Err(Rejection::new(ReasonCode::MalformedEvent, "the event is not JSON with a schema_version")),
            Some(version) => match check_schema_version(&version) {
                Err(e) => Err(Rejection::new(ReasonCode::UnknownSchemaVersion, e.to_string())),
                Ok(()) => serde_json::from_slice::<InstanceEvent>(&message.payload)
                    .map_err(|e| Rejection::new(ReasonCode::MalformedEvent, format!("not an instance event: {e}"))),
            },
        };
        let event = match parsed {
            Ok(event) => event,
            Err(rejection) => {
                // On shutdown the event stays unread, so the next owner dead-letters it.
                self.retry
                    .until_ok(shutdown, "publish to the dead-letter topic", || {
                        publish_dead_letter(&self.producer, SERVICE, &rejection, Some(message))
                    })
                    .await?;
                self.count_dead_letter(rejection.reason.unwrap_or(ReasonCode::MalformedEvent));
                assembly.on_skipped(message.partition, message.offset);
                return None;
            }
        };
        let id = SeriesId::new(&event.hospital, &event.study_uid, &event.series_uid);
        if working.too_large.contains_key(&id) {
            assembly.on_skipped(message.partition, message.offset);
            return None;
        }
        if !working.records.contains_key(&id) {
            if working.records.len() >= MAX_CACHED_RECORDS {
                working.records.clear();
            }
            let record = self.retry.until_ok(shutdown, "read the series record", || self.load_record(&id)).await?;
            working.records.insert(id.clone(), record);
        }
        // Quiet periods and expiry run on the time the event was read, not the time it was
        // stored: after a restart, a series read again gets a whole quiet period to be read
        // in full.
        assembly.on_event(message.partition, message.offset, &event, working.records[&id].as_ref(), OffsetDateTime::now_utc());
        matches!(event.body, InstanceBody::Instance(_)).then_some(id)
    }

    /// Reads the record of a completed series; sends its event again if the last run
    /// stopped between writing the record and sending the event. A record that cannot be
    /// parsed is logged and ignored, so one damaged object does not stop the assembler.
    async fn load_record(&self, id: &SeriesId) -> anyhow::Result<Option<SeriesEvent>> {
        let key = format!("{}/series.json", id.record_prefix());
        let Some(bytes) = self.store.get_opt(&key).await? else {
            return Ok(None);
        };
        let record: SeriesRecord = match serde_json::from_slice(&bytes) {
            Ok(record) => record,
            Err(error) => {
                tracing::error!(%key, "The series record cannot be parsed ({error}); the series is treated as new.");
                return Ok(None);
            }
        };
        if !record.published {
            tracing::info!(series = %id.series_uid, "Sending a completed series whose event was not confirmed.");
            self.send_and_mark(id, &record.event).await?;
        }
        Ok(Some(record.event))
    }

    /// Writes the record, sends the event, then marks the record sent.
    async fn publish(&self, id: &SeriesId, event: &SeriesEvent) -> anyhow::Result<()> {
        let key = format!("{}/series.json", id.record_prefix());
        let record = SeriesRecord {
            published: false,
            event: event.clone(),
        };
        self.store.put(&key, Bytes::from(serde_json::to_vec(&record)?)).await?;
        self.send_and_mark(id, event).await
    }

    async fn send_and_mark(&self, id: &SeriesId, event: &SeriesEvent) -> anyhow::Result<()> {
        let key = format!("{}/series.json", id.record_prefix());
        self.producer.send_json(topics::SERIES, &id.series_uid, event).await?;
        let record = SeriesRecord {
            published: true,
            event: event.clone(),
        };
        self.store.put(&key, Bytes::from(serde_json::to_vec(&record)?)).await?;
        Ok(())
    }

    /// Carries out the decisions due now. A decision that fails is logged and tried again
    /// at the next tick; the others go on.
    async fn decide(&self, assembly: &mut Assembly, working: &mut Working, shutdown: &CancellationToken) {
        for decision in assembly.due(OffsetDateTime::now_utc()) {
            if shutdown.is_cancelled() {
                break;
            }
            let id = match &decision {
                Decision::Complete(event) => SeriesId::new(&event.hospital, &event.study_uid, &event.series_uid),
                Decision::GiveUp { id, .. } => id.clone(),
            };
            let span = tracing::info_span!("assemble_series", service = SERVICE);
            if let Some(headers) = working.traces.get(&id) {
                lungstream_runtime::telemetry::adopt_parent(&span, headers);
            }
            match self.carry_out(decision, assembly, working).instrument(span).await {
                Ok(()) => {
                    working.traces.remove(&id);
                }
                Err(error) => {
                    tracing::warn!(hospital = %id.hospital, series = %id.series_uid, "Cannot carry out a decision yet: {error:#}");
                }
            }
        }
    }

    async fn carry_out(&self, decision: Decision, assembly: &mut Assembly, working: &mut Working) -> anyhow::Result<()> {
        match decision {
            Decision::Complete(built) => {
                let id = SeriesId::new(&built.hospital, &built.study_uid, &built.series_uid);
                let previous = working.records.get(&id).cloned().flatten();
                if previous.as_ref().is_some_and(|p| same_instances(p, &built)) {
                    assembly.close(&id);
                    return Ok(());
                }
                if let Some(frozen) = working.frozen.get(&id).cloned() {
                    self.send_and_mark(&id, &frozen).await?;
                } else {
                    working.frozen.insert(id.clone(), built.clone());
                    self.publish(&id, &built).await?;
                }
                let event = working.frozen.remove(&id).expect("the event was frozen above");
                tracing::info!(
                    hospital = %id.hospital,
                    series = %id.series_uid,
                    instances = event.instance_count,
                    revision = event.revision,
                    trigger = ?event.trigger,
                    "Series complete."
                );
                self.ops
                    .metrics
                    .events
                    .get_or_create(&lungstream_runtime::ops::EventLabels {
                        service: SERVICE.into(),
                        topic: topics::SERIES.into(),
                        outcome: "series_complete".into(),
                    })
                    .inc();
                working.records.insert(id.clone(), Some(event));
                assembly.close(&id);
            }
            Decision::GiveUp { id, reason, detail, summary, patient_key, revision } => {
                let marker = format!("{}/given-up.json", id.record_prefix());
                let summary_bytes = serde_json::to_vec(&summary)?;
                let already = self.store.get_opt(&marker).await?.is_some_and(|b| b == summary_bytes);
                if !already {
                    let rejection = Rejection {
                        reason: Some(reason),
                        detail: detail.clone(),
                        hospital: Some(id.hospital.clone()),
                        study_uid: Some(id.study_uid.clone()),
                        series_uid: Some(id.series_uid.clone()),
                    };
                    // The marker first: a crash after it loses at most this dead letter's
                    // repeat, never sends two.
                    self.store.put(&marker, Bytes::from(summary_bytes)).await?;
                    // A rejected result too, so the study appears in the hospital's
                    // worklist with the reason instead of never appearing at all.
                    let result = ResultsEvent {
                        schema_version: EVENT_SCHEMA_VERSION.into(),
                        hospital: id.hospital.clone(),
                        study_uid: id.study_uid.clone(),
                        series_uid: id.series_uid.clone(),
                        patient_key,
                        series_revision: revision,
                        outcome: SeriesOutcome::Rejected {
                            reason,
                            detail: detail.clone(),
                        },
                    };
                    self.producer.send_json(topics::RESULTS, &id.series_uid, &result).await?;
                    publish_dead_letter_with(&self.producer, SERVICE, &rejection, None, summary.clone()).await?;
                    self.count_dead_letter(reason);
                    tracing::warn!(hospital = %id.hospital, series = %id.series_uid, reason = reason.as_str(), "Series given up: {detail}");
                }
                if reason == ReasonCode::TooLarge {
                    if let Some(partition) = assembly.partition_of(&id) {
                        working.too_large.insert(id.clone(), partition);
                    }
                }
                assembly.close(&id);
            }
        }
        Ok(())
    }

    fn commit(&self, consumer: &mut Consumer, assembly: &Assembly, committed: &mut BTreeMap<i32, i64>) {
        for (partition, position) in assembly.commit_positions() {
            if committed.get(&partition).is_some_and(|c| *c >= position) {
                continue;
            }
            match consumer.commit(topics::INSTANCES, partition, position) {
                Ok(()) => {
                    committed.insert(partition, position);
                }
                Err(error) => tracing::warn!(partition, "Commit failed ({error}); will try again."),
            }
        }
    }

    fn count_dead_letter(&self, reason: ReasonCode) {
        self.ops
            .metrics
            .dead_letters
            .get_or_create(&lungstream_runtime::ops::ReasonLabels {
                service: SERVICE.into(),
                reason: reason.as_str().into(),
            })
            .inc();
    }
}

fn same_instances(a: &SeriesEvent, b: &SeriesEvent) -> bool {
    a.instances.len() == b.instances.len()
        && a.instances
            .iter()
            .zip(&b.instances)
            .all(|(x, y)| x.sop_instance_uid == y.sop_instance_uid && x.sha256 == y.sha256)
}

#[cfg(test)]
mod tests {
    use lungstream_schemas::events::{IngestSource, StoredInstance};

    use super::*;

    fn config() -> AssemblerConfig {
        AssemblerConfig {
            quiet_period_s: 30.0,
            expiry_s: 600.0,
            min_instances: 1,
            ..AssemblerConfig::default()
        }
    }

    fn t(seconds: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000 + seconds).unwrap()
    }

    fn instance(number: i32, at: i64) -> InstanceEvent {
        InstanceEvent {
            schema_version: "1.0".into(),
            hospital: "north".into(),
            study_uid: "1.2".into(),
            series_uid: "1.2.3".into(),
            received_at: format_rfc3339(t(at)),
            body: InstanceBody::Instance(StoredInstance {
                sop_instance_uid: format!("1.2.3.{number}"),
                sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
                object_key: format!("instances/north/1.2/1.2.3/1.2.3.{number}.dcm"),
                size_bytes: 10,
                sha256: format!("{number:064}"),
                instance_number: Some(number),
                slice_position_mm: -2.5 * f64::from(number),
                patient_key: Some("k".into()),
                source: IngestSource::StowRs,
            }),
        }
    }

    fn commit(at: i64) -> InstanceEvent {
        InstanceEvent {
            body: InstanceBody::Commit {
                trigger: CommitTrigger::ExplicitCommit,
            },
            ..instance(0, at)
        }
    }

    fn completed(decisions: &[Decision]) -> Vec<&SeriesEvent> {
        decisions
            .iter()
            .filter_map(|d| match d {
                Decision::Complete(e) => Some(e),
                Decision::GiveUp { .. } => None,
            })
            .collect()
    }

    #[test]
    fn quiet_gap_free_series_completes() {
        let mut a = Assembly::new(config(), 100);
        for n in 1..=5 {
            a.on_event(0, i64::from(n), &instance(n, 0), None, t(0));
        }
        a.on_event(0, 6, &instance(3, 1), None, t(1)); // a duplicate SOP Instance UID
        assert!(a.due(t(29)).is_empty());
        let decisions = a.due(t(31));
        let events = completed(&decisions);
        assert_eq!(events.len(), 1);
        let event = events[0];
        assert_eq!(event.instance_count, 5);
        assert_eq!(event.trigger, CommitTrigger::QuietPeriod);
        assert_eq!(event.revision, 1);
        let numbers: Vec<i32> = event.instances.iter().map(|i| i.instance_number.unwrap()).collect();
        assert_eq!(numbers, vec![5, 4, 3, 2, 1], "sorted by slice position, feet first");
        assert_eq!(event.last_received_at, format_rfc3339(t(1)));
    }

    #[test]
    fn replayed_series_waits_full_quiet_period() {
        // Events stored long ago and read again after a restart at t(100).
        let mut a = Assembly::new(config(), 100);
        for n in 1..=3 {
            a.on_event(0, i64::from(n), &instance(n, 0), None, t(100));
        }
        assert!(a.due(t(101)).is_empty(), "the rest of the series may still be unread");
        let decisions = a.due(t(131));
        assert_eq!(completed(&decisions).len(), 1);
    }

    #[test]
    fn give_up_summary_is_bounded() {
        let mut a = Assembly::new(config(), 100);
        for n in (1..=120).step_by(2) {
            a.on_event(0, i64::from(n), &instance(n, 0), None, t(0));
        }
        let decisions = a.due(t(601));
        let Decision::GiveUp { summary, .. } = &decisions[0] else {
            panic!("expected a give-up, got {decisions:?}");
        };
        assert_eq!(summary["instance_count"], 60);
        assert_eq!(summary["instances"].as_array().unwrap().len(), MAX_SUMMARY_INSTANCES);
        assert_eq!(summary["instances_not_listed"], 10);
    }

    #[test]
    fn gappy_series_waits_then_expires() {
        let mut a = Assembly::new(config(), 100);
        for n in [1, 2, 3, 6, 7] {
            a.on_event(0, i64::from(n), &instance(n, 0), None, t(0));
        }
        assert!(a.due(t(100)).is_empty());
        let decisions = a.due(t(601));
        match &decisions[..] {
            [Decision::GiveUp { reason, detail, summary, .. }] => {
                assert_eq!(*reason, ReasonCode::IncompleteSeries);
                assert!(detail.contains("2 missing"), "{detail}");
                assert_eq!(summary["instance_count"], 5);
            }
            other => panic!("expected one give-up, got {other:?}"),
        }
    }

    #[test]
    fn position_gap_blocks_quiet_completion() {
        let mut a = Assembly::new(config(), 100);
        for n in [1, 2, 3, 6, 7] {
            let mut event = instance(n, 0);
            if let InstanceBody::Instance(stored) = &mut event.body {
                stored.instance_number = None;
            }
            a.on_event(0, i64::from(n), &event, None, t(0));
        }
        assert!(a.due(t(100)).is_empty());
    }

    #[test]
    fn commit_completes_at_once_even_with_gaps() {
        let mut a = Assembly::new(config(), 100);
        a.on_event(0, 0, &instance(1, 0), None, t(0));
        a.on_event(0, 1, &instance(4, 0), None, t(0));
        a.on_event(0, 2, &commit(1), None, t(1));
        let decisions = a.due(t(1));
        let events = completed(&decisions);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].trigger, CommitTrigger::ExplicitCommit);
    }

    #[test]
    fn completed_series_ignores_repeats_and_grows() {
        let mut first = Assembly::new(config(), 100);
        for n in 1..=3 {
            first.on_event(0, i64::from(n), &instance(n, 0), None, t(0));
        }
        let decisions = first.due(t(40));
        let done = completed(&decisions)[0].clone();

        let mut a = Assembly::new(config(), 100);
        for n in 1..=3 {
            a.on_event(0, 10 + i64::from(n), &instance(n, 50), Some(&done), t(50));
        }
        assert_eq!(a.open_count(), 0, "a second upload of the same instances opens nothing");
        a.on_event(0, 14, &commit(51), Some(&done), t(51));
        assert!(a.due(t(52)).is_empty());
        a.on_event(0, 15, &instance(4, 60), Some(&done), t(60));
        let decisions = a.due(t(100));
        let grown = completed(&decisions);
        assert_eq!(grown.len(), 1);
        assert_eq!(grown[0].revision, 2);
        assert_eq!(grown[0].instance_count, 4);
    }

    #[test]
    fn hospitals_do_not_share_series() {
        let mut a = Assembly::new(config(), 100);
        a.on_event(0, 0, &instance(1, 0), None, t(0));
        let mut other = commit(1);
        other.hospital = "south".into();
        a.on_event(0, 1, &other, None, t(1));
        assert!(a.due(t(2)).is_empty(), "south's commit must not complete north's series");
    }

    #[test]
    fn commit_position_stops_at_oldest_open_series() {
        let mut a = Assembly::new(config(), 100);
        a.on_event(0, 7, &instance(1, 0), None, t(0));
        let mut later = instance(1, 5);
        later.series_uid = "1.2.4".into();
        a.on_event(0, 8, &later, None, t(5));
        a.on_event(1, 3, &commit(5), None, t(5));
        assert_eq!(a.commit_positions(), BTreeMap::from([(0, 7), (1, 4)]));
        let decisions = a.due(t(31));
        assert_eq!(completed(&decisions).len(), 1);
        a.close(&SeriesId {
            hospital: "north".into(),
            study_uid: "1.2".into(),
            series_uid: "1.2.3".into(),
        });
        assert_eq!(a.commit_positions(), BTreeMap::from([(0, 8), (1, 4)]));
        a.revoke(0);
        assert_eq!(a.commit_positions(), BTreeMap::from([(1, 4)]));
        assert_eq!(a.open_count(), 0);
    }

    #[test]
    fn short_series_is_given_up() {
        let three = AssemblerConfig {
            min_instances: 3,
            ..config()
        };
        let mut a = Assembly::new(three, 100);
        a.on_event(0, 0, &instance(1, 0), None, t(0));
        a.on_event(0, 1, &instance(2, 0), None, t(0));
        a.on_event(0, 2, &commit(1), None, t(1));
        let decisions = a.due(t(1));
        assert!(matches!(&decisions[..], [Decision::GiveUp { reason: ReasonCode::TooFewSlices, .. }]));
    }

    #[test]
    fn oversized_series_is_given_up() {
        let mut a = Assembly::new(config(), 2);
        for n in 1..=3 {
            a.on_event(0, i64::from(n), &instance(n, 0), None, t(0));
        }
        let decisions = a.due(t(1));
        assert!(matches!(&decisions[..], [Decision::GiveUp { reason: ReasonCode::TooLarge, .. }]));
        if let Decision::GiveUp { summary, .. } = &decisions[0] {
            assert_eq!(summary["instance_count"], 3);
            assert_eq!(summary["instances"].as_array().unwrap().len(), 3);
            assert_eq!(summary["instances_not_listed"], 0);
        }
    }
}
