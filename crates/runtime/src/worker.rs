//! The consumer loop every stage service runs: receive an event, handle it, and commit
//! its offset only after the handler has written its outputs.
//!
//! A handler's error is either permanent (bad input: the event goes to the dead-letter
//! topic with a reason code, and the offset is committed) or transient (store or broker
//! unavailable: the same event is retried with exponential backoff, for as long as it
//! takes, and never dead-lettered). On shutdown the loop finishes the event in hand,
//! commits, and leaves the group. An event interrupted in a retry wait is not committed,
//! so the next owner of the partition handles it again.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use lungstream_schemas::events::{check_schema_version, peek_schema_version, topics, DeadLetterEvent, SourcePosition, EVENT_SCHEMA_VERSION};
use lungstream_schemas::ReasonCode;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::bus::{BusError, Consumer, Message, Producer};
use crate::config::RetryConfig;
use crate::ops::{EventLabels, Ops, ReasonLabels, StageLabels};

/// Error of a handler that could not finish an event.
#[derive(Debug)]
pub enum HandleError {
    /// The event can never be handled: it goes to the dead-letter topic.
    Permanent(Rejection),
    /// Something outside the event failed; the event is retried after a backoff.
    Transient(anyhow::Error),
}

/// A permanent failure: the reason code, a sentence without patient attributes, and the
/// ids a report needs to show "rejected: reason".
#[derive(Clone, Debug, Default)]
pub struct Rejection {
    pub reason: Option<ReasonCode>,
    pub detail: String,
    pub hospital: Option<String>,
    pub study_uid: Option<String>,
    pub series_uid: Option<String>,
}

impl Rejection {
    /// Creates a rejection with a reason and a detail and no ids.
    pub fn new(reason: ReasonCode, detail: impl Into<String>) -> Rejection {
        Rejection {
            reason: Some(reason),
            detail: detail.into(),
            ..Rejection::default()
        }
    }
}

impl From<Rejection> for HandleError {
    fn from(rejection: Rejection) -> Self {
        HandleError::Permanent(rejection)
    }
}

/// A stage's work on one event. It writes its outputs (objects, then events) before it
/// returns `Ok`.
pub trait Handler: Send {
    fn handle(&mut self, message: &Message) -> impl Future<Output = Result<(), HandleError>> + Send;
}

/// A stage that works on several events at once (the infer service batches lobes of
/// several series through the networks). It writes the outputs of every event it reports
/// `Ok` before it returns.
pub trait BatchHandler: Send {
    /// Returns one result per message, in the order given.
    fn handle_batch(&mut self, messages: &[&Message]) -> impl Future<Output = Vec<Result<(), HandleError>>> + Send;
}

/// How [`Worker::run_batched`] gathers a batch.
#[derive(Clone, Copy, Debug)]
pub struct BatchLimits {
    /// Maximum number of events in one batch.
    pub max_events: usize,
    /// How long to wait for more events after the first one.
    pub linger: std::time::Duration,
}

/// How often the consumer is polled while an event is being handled. It must stay well
/// below `max.poll.interval.ms`, whose lowest accepted value is the session timeout.
const KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(3);

/// Runs `work` and polls `consumer` every [`KEEP_ALIVE`] until it ends, with fetching
/// paused, so that a slow event (or a long retry) does not cost the member its place in
/// the group. Without the polls librdkafka would leave the group after
/// `max.poll.interval.ms`, the commit would fail, and the event would be handled again
/// and again.
async fn keep_alive_while<T>(consumer: &mut Consumer, work: impl Future<Output = T>) -> T {
    tokio::pin!(work);
    let mut polled = false;
    let result = loop {
        tokio::select! {
            biased;
            result = &mut work => break result,
            () = tokio::time::sleep(KEEP_ALIVE) => {
                consumer.keep_alive().await;
                polled = true;
            }
        }
    };
    if polled {
        consumer.resume();
    }
    result
}

/// How one event ended.
enum Outcome {
    Done,
    Interrupted,
}

/// Runs a stage: the consumer loop with commits after outputs, retries and dead letters.
pub struct Worker {
    pub service: &'static str,
    pub producer: Producer,
    pub retry: RetryConfig,
    pub ops: Arc<Ops>,
}

impl Worker {
    /// Handles events until `shutdown` is cancelled, then leaves the group.
    ///
    /// # Errors
    ///
    /// Never for a single event's failure; only when the consumer itself cannot go on.
    pub async fn run<H: Handler>(&self, mut consumer: Consumer, handler: &mut H, shutdown: CancellationToken) -> Result<(), BusError> {
        while let Some(message) = self.next_message(&mut consumer, &shutdown).await {
            let span = crate::telemetry::message_span(self.service, &message);
            let started = Instant::now();
            let outcome = keep_alive_while(&mut consumer, self.process(&message, handler, &shutdown).instrument(span)).await;
            self.ops
                .metrics
                .handle_seconds
                .get_or_create(&StageLabels {
                    service: self.service.into(),
                    topic: message.topic.clone(),
                })
                .observe(started.elapsed().as_secs_f64());
            match outcome {
                Outcome::Done => {
                    if let Err(error) = consumer.commit(&message.topic, message.partition, message.offset + 1) {
                        // The partition's next owner handles the event again, which is safe
                        // because outputs are idempotent.
                        tracing::warn!(service = self.service, "Commit failed ({error}); the event may be handled again.");
                    }
                }
                Outcome::Interrupted => break,
            }
        }
        tracing::info!(service = self.service, "Consumer loop stopped; leaving the group.");
        consumer.close();
        Ok(())
    }

    /// As [`Worker::run`], but hands the handler batches of events: after the first event
    /// it waits up to `limits.linger` for more, up to `limits.max_events`. Events of a
    /// batch that fail transiently are retried together; the batch is committed when
    /// every event in it is done.
    ///
    /// # Errors
    ///
    /// Never for a single event's failure; only when the consumer itself cannot go on.
    pub async fn run_batched<H: BatchHandler>(&self, mut consumer: Consumer, handler: &mut H, limits: BatchLimits, shutdown: CancellationToken) -> Result<(), BusError> {
        while let Some(first) = self.next_message(&mut consumer, &shutdown).await {
            let mut batch = vec![first];
            let deadline = tokio::time::Instant::now() + limits.linger;
            while batch.len() < limits.max_events.max(1) {
                match tokio::time::timeout_at(deadline, consumer.recv()).await {
                    Ok(Ok(message)) => batch.push(message),
                    Ok(Err(error)) => {
                        tracing::warn!(service = self.service, "Cannot receive from the broker ({error}); handling the batch gathered so far.");
                        break;
                    }
                    Err(_) => break,
                }
            }
            let started = Instant::now();
            let outcome = keep_alive_while(&mut consumer, self.process_batch(&batch, handler, &shutdown)).await;
            let share = started.elapsed().as_secs_f64() / batch.len() as f64;
            for message in &batch {
                self.ops
                    .metrics
                    .handle_seconds
                    .get_or_create(&StageLabels {
                        service: self.service.into(),
                        topic: message.topic.clone(),
                    })
                    .observe(share);
            }
            match outcome {
                Outcome::Done => {
                    let mut next: std::collections::BTreeMap<(String, i32), i64> = std::collections::BTreeMap::new();
                    for message in &batch {
                        let entry = next.entry((message.topic.clone(), message.partition)).or_insert(0);
                        *entry = (*entry).max(message.offset + 1);
                    }
                    for ((topic, partition), offset) in next {
                        if let Err(error) = consumer.commit(&topic, partition, offset) {
                            tracing::warn!(service = self.service, "Commit failed ({error}); the events may be handled again.");
                        }
                    }
                }
                Outcome::Interrupted => break,
            }
        }
        tracing::info!(service = self.service, "Consumer loop stopped; leaving the group.");
        consumer.close();
        Ok(())
    }

    /// Waits for the next event, retrying broker errors with backoff. Returns `None` when
    /// `shutdown` is cancelled first.
    async fn next_message(&self, consumer: &mut Consumer, shutdown: &CancellationToken) -> Option<Message> {
        let mut failures = 0u32;
        loop {
            let received = tokio::select! {
                biased;
                () = shutdown.cancelled() => return None,
                received = consumer.recv() => received,
            };
            match received {
                Ok(message) => return Some(message),
                Err(error) => {
                    let delay = self.retry.delay(failures);
                    failures += 1;
                    tracing::warn!(service = self.service, "Cannot receive from the broker ({error}); retrying in {delay:?}.");
                    tokio::select! {
                        () = shutdown.cancelled() => return None,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    async fn process_batch<H: BatchHandler>(&self, batch: &[Message], handler: &mut H, shutdown: &CancellationToken) -> Outcome {
        let mut pending: Vec<&Message> = Vec::new();
        for message in batch {
            match version_problem(message) {
                Some(rejection) => {
                    if let Outcome::Interrupted = self.reject(message, rejection, shutdown).await {
                        return Outcome::Interrupted;
                    }
                }
                None => pending.push(message),
            }
        }
        let mut attempt = 0u32;
        while !pending.is_empty() {
            let mut results = handler.handle_batch(&pending).await;
            if results.len() != pending.len() {
                tracing::error!(service = self.service, events = pending.len(), results = results.len(), "The handler returned a result count that does not match; retrying the batch.");
                results = (0..pending.len()).map(|_| Err(HandleError::Transient(anyhow::anyhow!("the handler lost track of an event")))).collect();
            }
            let mut retry = Vec::new();
            let mut last_error = None;
            for (message, result) in pending.iter().zip(results) {
                match result {
                    Ok(()) => self.count(message, "done"),
                    Err(HandleError::Permanent(rejection)) => {
                        if let Outcome::Interrupted = self.reject(message, rejection, shutdown).await {
                            return Outcome::Interrupted;
                        }
                    }
                    Err(HandleError::Transient(error)) => {
                        self.count(message, "retry");
                        last_error = Some(error);
                        retry.push(*message);
                    }
                }
            }
            pending = retry;
            if let Some(error) = last_error {
                let delay = self.retry.delay(attempt);
                attempt += 1;
                tracing::warn!(attempt, events = pending.len(), "Transient failure: {error:#}; retrying in {delay:?}.");
                tokio::select! {
                    () = shutdown.cancelled() => return Outcome::Interrupted,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
        Outcome::Done
    }

    async fn process<H: Handler>(&self, message: &Message, handler: &mut H, shutdown: &CancellationToken) -> Outcome {
        if let Some(rejection) = version_problem(message) {
            return self.reject(message, rejection, shutdown).await;
        }
        let mut attempt = 0u32;
        loop {
            match handler.handle(message).await {
                Ok(()) => {
                    self.count(message, "done");
                    return Outcome::Done;
                }
                Err(HandleError::Permanent(rejection)) => return self.reject(message, rejection, shutdown).await,
                Err(HandleError::Transient(error)) => {
                    self.count(message, "retry");
                    let delay = self.retry.delay(attempt);
                    attempt += 1;
                    tracing::warn!(attempt, "Transient failure: {error:#}; retrying in {delay:?}.");
                    tokio::select! {
                        () = shutdown.cancelled() => return Outcome::Interrupted,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    async fn reject(&self, message: &Message, rejection: Rejection, shutdown: &CancellationToken) -> Outcome {
        let reason = rejection.reason.unwrap_or(ReasonCode::MalformedEvent);
        tracing::warn!(reason = reason.as_str(), "Rejected: {}", rejection.detail);
        let published = self
            .retry
            .until_ok(shutdown, "publish to the dead-letter topic", || {
                publish_dead_letter(&self.producer, self.service, &rejection, Some(message))
            })
            .await;
        if published.is_none() {
            return Outcome::Interrupted;
        }
        self.ops
            .metrics
            .dead_letters
            .get_or_create(&ReasonLabels {
                service: self.service.into(),
                reason: reason.as_str().into(),
            })
            .inc();
        self.count(message, "dead_letter");
        Outcome::Done
    }

    fn count(&self, message: &Message, outcome: &str) {
        self.ops
            .metrics
            .events
            .get_or_create(&EventLabels {
                service: self.service.into(),
                topic: message.topic.clone(),
                outcome: outcome.into(),
            })
            .inc();
    }
}

/// Returns the rejection of an event that is not JSON with a `schema_version` this build
/// reads, or `None` for a readable one.
fn version_problem(message: &Message) -> Option<Rejection> {
    match peek_schema_version(&message.payload) {
        None => Some(Rejection::new(ReasonCode::MalformedEvent, "the event is not JSON with a schema_version")),
        Some(version) => check_schema_version(&version)
            .err()
            .map(|e| Rejection::new(ReasonCode::UnknownSchemaVersion, e.to_string())),
    }
}

/// Publishes a dead-letter event for `rejection`; `source` is the consumed event, when
/// there is one. The original event is kept as JSON when it parses.
///
/// # Errors
///
/// [`BusError`] when the broker does not take the event.
pub async fn publish_dead_letter(producer: &Producer, service: &str, rejection: &Rejection, source: Option<&Message>) -> Result<(), BusError> {
    let original = match source {
        Some(message) => serde_json::from_slice(&message.payload)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&message.payload).into_owned())),
        None => serde_json::Value::Null,
    };
    publish_dead_letter_with(producer, service, rejection, source, original).await
}

/// As [`publish_dead_letter`], with the `original` to record given explicitly (a state
/// summary when no single event failed, as for an expired series).
///
/// # Errors
///
/// [`BusError`] when the broker does not take the event.
pub async fn publish_dead_letter_with(
    producer: &Producer,
    service: &str,
    rejection: &Rejection,
    source: Option<&Message>,
    original: serde_json::Value,
) -> Result<(), BusError> {
    let event = DeadLetterEvent {
        schema_version: EVENT_SCHEMA_VERSION.into(),
        reason: rejection.reason.unwrap_or(ReasonCode::MalformedEvent),
        detail: rejection.detail.clone(),
        service: service.into(),
        source: source.map(|m| SourcePosition {
            topic: m.topic.clone(),
            partition: m.partition,
            offset: m.offset,
        }),
        hospital: rejection.hospital.clone(),
        study_uid: rejection.study_uid.clone(),
        series_uid: rejection.series_uid.clone(),
        original,
        failed_at: crate::telemetry::now_rfc3339(),
    };
    let key = rejection
        .series_uid
        .clone()
        .or_else(|| source.and_then(|m| m.key_str().map(str::to_string)))
        .unwrap_or_else(|| "unknown".into());
    producer.send_json(topics::DEAD_LETTER, &key, &event).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::bus::MemoryBus;

    /// Fails twice transiently on "flaky", rejects "poison", and records the rest.
    struct Recorder {
        seen: Vec<String>,
        flaky_failures: Arc<AtomicU32>,
    }

    impl Handler for Recorder {
        async fn handle(&mut self, message: &Message) -> Result<(), HandleError> {
            let value: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
            let name = value["name"].as_str().unwrap().to_string();
            if name == "poison" {
                return Err(Rejection::new(ReasonCode::InvalidDicom, "cannot parse").into());
            }
            if name == "flaky" && self.flaky_failures.fetch_add(1, Ordering::SeqCst) < 2 {
                return Err(HandleError::Transient(anyhow::anyhow!("store unavailable")));
            }
            self.seen.push(name);
            Ok(())
        }
    }

    #[tokio::test]
    async fn loop_retries_dead_letters_and_commits() {
        let bus = MemoryBus::new(1);
        let producer = bus.producer();
        for name in ["a", "poison", "flaky", "b"] {
            let event = serde_json::json!({"schema_version": "1.0", "name": name});
            producer.send_json("in", "k", &event).await.unwrap();
        }
        producer.send("in", "k", br#"{"schema_version":"2.0","name":"future"}"#, &[]).await.unwrap();
        producer.send("in", "k", b"\xff not json", &[]).await.unwrap();
        producer.send_json("in", "k", &serde_json::json!({"schema_version": "1.1", "name": "c"})).await.unwrap();

        let ops = Ops::new();
        let worker = Worker {
            service: "test",
            producer: producer.clone(),
            retry: RetryConfig {
                initial_ms: 1,
                max_ms: 5,
                multiplier: 2.0,
            },
            ops: ops.clone(),
        };
        let mut handler = Recorder {
            seen: Vec::new(),
            flaky_failures: Arc::new(AtomicU32::new(0)),
        };
        let shutdown = CancellationToken::new();
        let stopper = shutdown.clone();
        let watcher = bus.clone();
        tokio::spawn(async move {
            while watcher.committed("g", "in").get(&0) != Some(&7) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            stopper.cancel();
        });
        let consumer = bus.consumer("g", &["in"]);
        tokio::time::timeout(Duration::from_secs(10), worker.run(consumer, &mut handler, shutdown))
            .await
            .expect("the loop stops after shutdown")
            .unwrap();

        assert_eq!(handler.seen, vec!["a", "flaky", "b", "c"]);
        let dead: Vec<DeadLetterEvent> = bus
            .events(topics::DEAD_LETTER)
            .iter()
            .map(|m| serde_json::from_slice(&m.payload).unwrap())
            .collect();
        let reasons: Vec<ReasonCode> = dead.iter().map(|d| d.reason).collect();
        assert_eq!(reasons, vec![ReasonCode::InvalidDicom, ReasonCode::UnknownSchemaVersion, ReasonCode::MalformedEvent]);
        assert_eq!(dead[0].original["name"], "poison");
        assert_eq!(dead[0].source.as_ref().unwrap().offset, 1);
        assert_eq!(dead[2].original, serde_json::Value::String("\u{fffd} not json".into()));
        let metrics = ops.metrics.encode();
        assert!(metrics.contains("lungstream_events_total{service=\"test\",topic=\"in\",outcome=\"retry\"} 2"), "{metrics}");
        assert!(metrics.contains("lungstream_dead_letters_total{service=\"test\",reason=\"invalid_dicom\"} 1"), "{metrics}");
    }

    /// Always fails transiently.
    struct Down;

    impl Handler for Down {
        async fn handle(&mut self, _message: &Message) -> Result<(), HandleError> {
            Err(HandleError::Transient(anyhow::anyhow!("store unavailable")))
        }
    }

    #[tokio::test]
    async fn shutdown_during_retries_leaves_event_uncommitted() {
        let bus = MemoryBus::new(1);
        bus.producer()
            .send_json("in", "k", &serde_json::json!({"schema_version": "1.0"}))
            .await
            .unwrap();
        let worker = Worker {
            service: "test",
            producer: bus.producer(),
            retry: RetryConfig::default(),
            ops: Ops::new(),
        };
        let shutdown = CancellationToken::new();
        let stopper = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            stopper.cancel();
        });
        let consumer = bus.consumer("g", &["in"]);
        tokio::time::timeout(Duration::from_secs(5), worker.run(consumer, &mut Down, shutdown))
            .await
            .unwrap()
            .unwrap();
        assert!(bus.committed("g", "in").is_empty());
        assert!(bus.events(topics::DEAD_LETTER).is_empty());
    }

    /// Records the batches it is given; the same rules as [`Recorder`] per event.
    struct BatchRecorder {
        inner: Recorder,
        batches: Vec<Vec<String>>,
    }

    impl BatchHandler for BatchRecorder {
        async fn handle_batch(&mut self, messages: &[&Message]) -> Vec<Result<(), HandleError>> {
            let names = messages
                .iter()
                .map(|m| serde_json::from_slice::<serde_json::Value>(&m.payload).unwrap()["name"].as_str().unwrap().to_string())
                .collect();
            self.batches.push(names);
            let mut results = Vec::new();
            for message in messages {
                results.push(self.inner.handle(message).await);
            }
            results
        }
    }

    #[tokio::test]
    async fn batched_loop_retries_failed_events() {
        let bus = MemoryBus::new(1);
        let producer = bus.producer();
        for name in ["a", "poison", "flaky", "b", "c"] {
            producer.send_json("in", "k", &serde_json::json!({"schema_version": "1.0", "name": name})).await.unwrap();
        }
        producer.send("in", "k", b"not json", &[]).await.unwrap();
        let worker = Worker {
            service: "test",
            producer: producer.clone(),
            retry: RetryConfig {
                initial_ms: 1,
                max_ms: 5,
                multiplier: 2.0,
            },
            ops: Ops::new(),
        };
        let mut handler = BatchRecorder {
            inner: Recorder {
                seen: Vec::new(),
                flaky_failures: Arc::new(AtomicU32::new(0)),
            },
            batches: Vec::new(),
        };
        let shutdown = CancellationToken::new();
        let stopper = shutdown.clone();
        let watcher = bus.clone();
        tokio::spawn(async move {
            while watcher.committed("g", "in").get(&0) != Some(&6) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            stopper.cancel();
        });
        let limits = BatchLimits {
            max_events: 4,
            linger: Duration::from_millis(50),
        };
        let consumer = bus.consumer("g", &["in"]);
        tokio::time::timeout(Duration::from_secs(10), worker.run_batched(consumer, &mut handler, limits, shutdown))
            .await
            .expect("the loop stops after shutdown")
            .unwrap();

        // Four events, then the flaky one alone twice more, then the rest (the malformed
        // event never reaches the handler).
        assert_eq!(
            handler.batches,
            vec![vec!["a", "poison", "flaky", "b"], vec!["flaky"], vec!["flaky"], vec!["c"]]
        );
        assert_eq!(handler.inner.seen, vec!["a", "b", "flaky", "c"]);
        let reasons: Vec<ReasonCode> = bus
            .events(topics::DEAD_LETTER)
            .iter()
            .map(|m| serde_json::from_slice::<DeadLetterEvent>(&m.payload).unwrap().reason)
            .collect();
        assert_eq!(reasons, vec![ReasonCode::InvalidDicom, ReasonCode::MalformedEvent]);
    }
}
