//! Kafka clients (rdkafka with its bundled librdkafka): an idempotent producer that waits
//! for every acknowledgement, a consumer with manual commits that reports revoked
//! partitions, and topic creation at start.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::bus::{BusError, Consumer, Message, Producer};
use crate::config::KafkaConfig;

/// Builds the properties every client shares: brokers, then the pass-through properties
/// (security settings).
fn base_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &config.brokers);
    for (key, value) in &config.properties {
        client.set(key, value);
    }
    client
}

fn next_client_number() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Creates `topics` with the configured partitions and replication; topics that exist
/// are left as they are.
///
/// # Errors
///
/// [`BusError`] when the broker cannot be reached or refuses a topic for another reason.
pub async fn ensure_topics(config: &KafkaConfig, topics: &[&str]) -> Result<(), BusError> {
    let admin: AdminClient<DefaultClientContext> = base_config(config).create()?;
    let names: Vec<String> = topics.iter().map(|t| format!("{}{t}", config.topic_prefix)).collect();
    let new_topics: Vec<NewTopic> = names
        .iter()
        .map(|t| NewTopic::new(t, config.partitions, TopicReplication::Fixed(config.replication_factor)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin.create_topics(&new_topics, &options).await?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(BusError::Other(format!("cannot create topic {topic}: {code}"))),
        }
    }
    Ok(())
}

/// A producer with idempotence on and `acks=all`: a send returns only after the broker
/// has the event.
#[derive(Clone)]
pub struct KafkaProducer {
    inner: FutureProducer,
    timeout: Duration,
    prefix: String,
}

impl KafkaProducer {
    /// Connects a producer.
    ///
    /// # Errors
    ///
    /// [`BusError`] for invalid client properties.
    pub fn connect(config: &KafkaConfig) -> Result<Producer, BusError> {
        let inner: FutureProducer = base_config(config)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", config.delivery_timeout_ms.to_string())
            .set("compression.type", "lz4")
            // A series event lists every instance: a 4000-slice series is about 2 MB of
            // JSON before compression. The broker's limit applies to the compressed batch.
            .set("message.max.bytes", "10000000")
            .create()?;
        Ok(Producer::Kafka(KafkaProducer {
            inner,
            timeout: Duration::from_millis(u64::from(config.delivery_timeout_ms)),
            prefix: config.topic_prefix.clone(),
        }))
    }

    pub(crate) async fn send(&self, topic: &str, key: &str, payload: &[u8], headers: &[(String, Vec<u8>)]) -> Result<(i32, i64), BusError> {
        let mut owned = OwnedHeaders::new_with_capacity(headers.len());
        for (name, value) in headers {
            owned = owned.insert(Header {
                key: name,
                value: Some(value.as_slice()),
            });
        }
        let full_topic = format!("{}{topic}", self.prefix);
        let record = FutureRecord::to(&full_topic).key(key).payload(payload).headers(owned);
        match self.inner.send(record, self.timeout).await {
            Ok(delivery) => Ok((delivery.partition, delivery.offset)),
            Err((source, _)) => Err(BusError::Delivery {
                topic: topic.to_string(),
                source,
            }),
        }
    }
}

/// Labels of `lungstream_kafka_consumer_lag`: the consumer group and topic as the broker
/// names them (topic prefix included), and the partition.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LagLabels {
    pub group: String,
    pub topic: String,
    pub partition: String,
}

/// Events not yet committed by this process's consumers, per group and partition: the
/// broker's high watermark minus the committed offset, from librdkafka's statistics.
/// Partitions without a committed offset yet are left out.
pub fn consumer_lag() -> &'static Family<LagLabels, Gauge> {
    static LAG: OnceLock<Family<LagLabels, Gauge>> = OnceLock::new();
    LAG.get_or_init(Family::default)
}

/// Records the partitions a rebalance takes away, and the consumer lag of each
/// statistics report.
#[derive(Default)]
pub struct RebalanceTracker {
    revoked: Arc<Mutex<Vec<(String, i32)>>>,
    group: String,
    /// Lag series this consumer has set, so that partitions it no longer owns are
    /// removed.
    lag_series: Mutex<HashSet<LagLabels>>,
}

impl ClientContext for RebalanceTracker {
    fn stats(&self, statistics: Statistics) {
        let mut current = HashSet::new();
        for (topic, stats) in &statistics.topics {
            for (partition, p) in &stats.partitions {
                // Partition -1 is librdkafka's queue of messages without a partition.
                if *partition < 0 || !p.desired || p.consumer_lag < 0 {
                    continue;
                }
                let labels = LagLabels {
                    group: self.group.clone(),
                    topic: topic.clone(),
                    partition: partition.to_string(),
                };
                consumer_lag().get_or_create(&labels).set(p.consumer_lag);
                current.insert(labels);
            }
        }
        let mut series = self.lag_series.lock().expect("lag lock");
        for released in series.difference(&current) {
            consumer_lag().remove(released);
        }
        *series = current;
    }
}

impl ConsumerContext for RebalanceTracker {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            let mut revoked = self.revoked.lock().expect("rebalance lock");
            for element in partitions.elements() {
                // Full topic names: callers compare partitions only.
                revoked.push((element.topic().to_string(), element.partition()));
            }
            tracing::info!(count = partitions.count(), "Partitions revoked by a rebalance.");
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            tracing::info!(count = partitions.count(), "Partitions assigned by a rebalance.");
        }
    }
}

impl Drop for RebalanceTracker {
    fn drop(&mut self) {
        if let Ok(series) = self.lag_series.lock() {
            for labels in series.iter() {
                consumer_lag().remove(labels);
            }
        }
    }
}

/// A group member that commits only on request.
pub struct KafkaConsumer {
    inner: StreamConsumer<RebalanceTracker>,
    revoked: Arc<Mutex<Vec<(String, i32)>>>,
    prefix: String,
    /// Partitions paused by [`KafkaConsumer::keep_alive`] until [`KafkaConsumer::resume`].
    paused: Option<TopicPartitionList>,
    /// Events that arrived during a keep-alive poll, returned first by `recv`.
    stashed: std::collections::VecDeque<Message>,
}

impl KafkaConsumer {
    /// Joins `group` (after the topic prefix) and subscribes to `topics`. A new group
    /// starts at the earliest event.
    ///
    /// # Errors
    ///
    /// [`BusError`] for invalid client properties or a failed subscription.
    pub fn join(config: &KafkaConfig, group: &str, topics: &[&str]) -> Result<Consumer, BusError> {
        Self::join_at(config, group, topics, true)
    }

    /// As [`KafkaConsumer::join`]; a new group starts at the earliest event when
    /// `from_earliest`, otherwise at the next event published.
    ///
    /// # Errors
    ///
    /// [`BusError`] for invalid client properties or a failed subscription.
    pub fn join_at(config: &KafkaConfig, group: &str, topics: &[&str], from_earliest: bool) -> Result<Consumer, BusError> {
        // The topic prefix namespaces consumer groups too: two deployments (or tests) on
        // one cluster must not share a group, or one's members take the other's partitions.
        let group = format!("{}{group}", config.topic_prefix);
        let tracker = RebalanceTracker {
            revoked: Arc::default(),
            group: group.clone(),
            lag_series: Mutex::default(),
        };
        let revoked = tracker.revoked.clone();
        // A client id per member: brokers tell members apart by it in logs and quotas.
        let client_id = format!("{group}-{}-{}", std::process::id(), next_client_number());
        let inner: StreamConsumer<RebalanceTracker> = base_config(config)
            .set("client.id", client_id)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", if from_earliest { "earliest" } else { "latest" })
            .set("session.timeout.ms", config.session_timeout_ms.to_string())
            .set("heartbeat.interval.ms", config.heartbeat_interval_ms.to_string())
            .set("max.poll.interval.ms", config.max_poll_interval_ms.to_string())
            .set("statistics.interval.ms", config.statistics_interval_ms.to_string())
            .create_with_context(tracker)?;
        let full: Vec<String> = topics.iter().map(|t| format!("{}{t}", config.topic_prefix)).collect();
        let names: Vec<&str> = full.iter().map(String::as_str).collect();
        inner.subscribe(&names)?;
        Ok(Consumer::Kafka(KafkaConsumer {
            inner,
            revoked,
            prefix: config.topic_prefix.clone(),
            paused: None,
            stashed: std::collections::VecDeque::new(),
        }))
    }

    pub(crate) async fn recv(&mut self) -> Result<Message, BusError> {
        if let Some(message) = self.stashed.pop_front() {
            return Ok(message);
        }
        self.receive().await
    }

    /// Polls the consumer while the caller is busy with an event: librdkafka counts the
    /// poll as a sign of life, so work longer than `max.poll.interval.ms` does not make
    /// the member leave the group (and its events handled again). The first call pauses
    /// the assigned partitions, so that no new events are fetched meanwhile; an event
    /// already fetched is kept for the next `recv`.
    pub(crate) async fn keep_alive(&mut self) {
        if self.paused.is_none() {
            match self.inner.assignment() {
                Ok(assigned) => match self.inner.pause(&assigned) {
                    Ok(()) => self.paused = Some(assigned),
                    Err(error) => tracing::warn!("Cannot pause the assigned partitions: {error}"),
                },
                Err(error) => tracing::warn!("Cannot read the assigned partitions: {error}"),
            }
        }
        if let Ok(Ok(message)) = tokio::time::timeout(Duration::from_millis(20), self.receive()).await {
            self.stashed.push_back(message);
        }
    }

    /// Resumes the partitions [`KafkaConsumer::keep_alive`] paused.
    pub(crate) fn resume(&mut self) {
        if let Some(paused) = self.paused.take() {
            // Partitions that a rebalance took away meanwhile are no longer ours to resume.
            let assigned = self.inner.assignment().unwrap_or_default();
            let mut still_ours = TopicPartitionList::new();
            for element in paused.elements() {
                if assigned.find_partition(element.topic(), element.partition()).is_some() {
                    still_ours.add_partition(element.topic(), element.partition());
                }
            }
            if still_ours.count() > 0 {
                if let Err(error) = self.inner.resume(&still_ours) {
                    tracing::warn!("Cannot resume the paused partitions: {error}");
                }
            }
        }
    }

    async fn receive(&mut self) -> Result<Message, BusError> {
        let message = self.inner.recv().await?;
        let headers = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|header| (header.key.to_string(), header.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Message {
            topic: message.topic().strip_prefix(self.prefix.as_str()).unwrap_or(message.topic()).to_string(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().unwrap_or_default().to_vec(),
            headers,
        })
    }

    pub(crate) fn commit(&mut self, topic: &str, partition: i32, next_offset: i64) -> Result<(), BusError> {
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&format!("{}{topic}", self.prefix), partition, Offset::Offset(next_offset))?;
        match self.inner.commit(&list, CommitMode::Sync) {
            Ok(()) => Ok(()),
            // The partition moved to another member meanwhile. That member starts from the
            // last committed position, so the events after it are handled again.
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::IllegalGeneration | RDKafkaErrorCode::RebalanceInProgress)) => {
                tracing::warn!(topic, partition, next_offset, "Commit rejected during a rebalance; the new owner handles these events again.");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    pub(crate) fn take_revoked(&mut self) -> Vec<(String, i32)> {
        std::mem::take(&mut *self.revoked.lock().expect("rebalance lock"))
    }

    pub(crate) fn close(self) {
        self.inner.unsubscribe();
        drop(self.inner);
    }
}
