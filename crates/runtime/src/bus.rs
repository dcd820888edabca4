//! Producers and consumers of events: Kafka for the distributed services, and an
//! in-memory bus with the same interface for the embedded mode and unit tests.
//!
//! A consumer never commits by itself. The caller commits a partition's position after
//! it has written the outputs of everything before that position. A crash then replays
//! work instead of losing it: delivery is at-least-once, and outputs are idempotent.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::kafka::{KafkaConsumer, KafkaProducer};

/// One consumed event.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Message {
    /// Returns the key as UTF-8 text, or `None` when it is not valid UTF-8.
    pub fn key_str(&self) -> Option<&str> {
        self.key.as_deref().and_then(|k| std::str::from_utf8(k).ok())
    }

    /// Returns the value of header `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_slice())
    }
}

/// Error of a bus operation.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("Kafka error: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("Kafka delivery to {topic} failed: {source}")]
    Delivery {
        topic: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("{0}")]
    Other(String),
}

/// Sends events and waits for the broker to acknowledge each.
#[derive(Clone)]
pub enum Producer {
    Kafka(KafkaProducer),
    Memory(MemoryBus),
}

impl Producer {
    /// Sends one event and waits until the broker has it. Returns its partition and offset.
    ///
    /// # Errors
    ///
    /// [`BusError`] when the broker does not acknowledge it in the delivery timeout.
    pub async fn send(&self, topic: &str, key: &str, payload: &[u8], headers: &[(String, Vec<u8>)]) -> Result<(i32, i64), BusError> {
        match self {
            Producer::Kafka(p) => p.send(topic, key, payload, headers).await,
            Producer::Memory(bus) => Ok(bus.append(topic, Some(key.as_bytes().to_vec()), payload.to_vec(), headers.to_vec())),
        }
    }

    /// Serialises `event` as JSON and sends it with the current trace context.
    ///
    /// # Errors
    ///
    /// As [`Producer::send`].
    pub async fn send_json<T: serde::Serialize>(&self, topic: &str, key: &str, event: &T) -> Result<(i32, i64), BusError> {
        let payload = serde_json::to_vec(event).map_err(|e| BusError::Other(format!("cannot serialise event: {e}")))?;
        let headers = crate::telemetry::current_trace_headers();
        self.send(topic, key, &payload, &headers).await
    }
}

/// Reads events of a consumer group, one at a time.
pub enum Consumer {
    Kafka(KafkaConsumer),
    Memory(MemoryConsumer),
}

impl Consumer {
    /// Waits for the next event.
    ///
    /// # Errors
    ///
    /// [`BusError`] for a broker error the client does not recover from by itself.
    pub async fn recv(&mut self) -> Result<Message, BusError> {
        match self {
            Consumer::Kafka(c) => c.recv().await,
            Consumer::Memory(c) => Ok(c.recv().await),
        }
    }

    /// Commits `next_offset` as the position of the group on one partition: every event
    /// before it is done.
    ///
    /// # Errors
    ///
    /// [`BusError`] when the broker refuses the commit.
    pub fn commit(&mut self, topic: &str, partition: i32, next_offset: i64) -> Result<(), BusError> {
        match self {
            Consumer::Kafka(c) => c.commit(topic, partition, next_offset),
            Consumer::Memory(c) => {
                c.commit(topic, partition, next_offset);
                Ok(())
            }
        }
    }

    /// Polls the broker while an event is being handled, so that the member stays in its
    /// group however long the work takes (see [`crate::worker::Worker::run`]).
    pub async fn keep_alive(&mut self) {
        if let Consumer::Kafka(c) = self {
            c.keep_alive().await;
        }
    }

    /// Ends what [`Consumer::keep_alive`] started: fetching resumes.
    pub fn resume(&mut self) {
        if let Consumer::Kafka(c) = self {
            c.resume();
        }
    }

    /// Partitions taken away from this member since the last call (after a rebalance).
    /// State kept per partition must be dropped: the new owner replays from the
    /// committed position.
    pub fn take_revoked(&mut self) -> Vec<(String, i32)> {
        match self {
            Consumer::Kafka(c) => c.take_revoked(),
            Consumer::Memory(_) => Vec::new(),
        }
    }

    /// Leaves the consumer group (after the last commit).
    pub fn close(self) {
        match self {
            Consumer::Kafka(c) => c.close(),
            Consumer::Memory(_) => {}
        }
    }
}

#[derive(Default)]
struct MemoryState {
    /// Topic → partitions → events.
    topics: HashMap<String, Vec<Vec<Message>>>,
    /// (group, topic, partition) → committed position.
    committed: HashMap<(String, String, i32), i64>,
}

/// A bus in one process: topics with partitions, keys hashed to partitions, consumer
/// groups with committed positions. Nothing is persisted.
#[derive(Clone)]
pub struct MemoryBus {
    state: Arc<Mutex<MemoryState>>,
    notify: Arc<Notify>,
    partitions: usize,
}

impl MemoryBus {
    /// Creates a bus whose topics have `partitions` partitions each.
    pub fn new(partitions: usize) -> MemoryBus {
        MemoryBus {
            state: Arc::default(),
            notify: Arc::new(Notify::new()),
            partitions: partitions.max(1),
        }
    }

    /// Returns a producer that writes to this bus.
    pub fn producer(&self) -> Producer {
        Producer::Memory(self.clone())
    }

    /// Returns a consumer of `topics` in `group`, starting at the group's committed positions.
    pub fn consumer(&self, group: &str, topics: &[&str]) -> Consumer {
        Consumer::Memory(MemoryConsumer {
            bus: self.clone(),
            group: group.to_string(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            positions: HashMap::new(),
        })
    }

    fn append(&self, topic: &str, key: Option<Vec<u8>>, payload: Vec<u8>, headers: Vec<(String, Vec<u8>)>) -> (i32, i64) {
        let partition = key.as_deref().map_or(0, |k| (fnv1a(k) % self.partitions as u64) as usize);
        let mut state = self.state.lock().expect("bus lock");
        let partitions = state
            .topics
            .entry(topic.to_string())
            .or_insert_with(|| vec![Vec::new(); self.partitions]);
        let log = &mut partitions[partition];
        let offset = log.len() as i64;
        log.push(Message {
            topic: topic.to_string(),
            partition: partition as i32,
            offset,
            key,
            payload,
            headers,
        });
        drop(state);
        self.notify.notify_waiters();
        (partition as i32, offset)
    }

    /// Returns every event on `topic`, partition by partition (for tests).
    pub fn events(&self, topic: &str) -> Vec<Message> {
        let state = self.state.lock().expect("bus lock");
        state.topics.get(topic).map(|p| p.iter().flatten().cloned().collect()).unwrap_or_default()
    }

    /// Returns the committed position of `group` on every partition of `topic` that has one.
    pub fn committed(&self, group: &str, topic: &str) -> BTreeMap<i32, i64> {
        let state = self.state.lock().expect("bus lock");
        state
            .committed
            .iter()
            .filter(|((g, t, _), _)| g == group && t == topic)
            .map(|((_, _, p), o)| (*p, *o))
            .collect()
    }
}

/// A consumer of a [`MemoryBus`].
pub struct MemoryConsumer {
    bus: MemoryBus,
    group: String,
    topics: Vec<String>,
    positions: HashMap<(String, i32), i64>,
}

impl MemoryConsumer {
    async fn recv(&mut self) -> Message {
        loop {
            let notify = self.bus.notify.clone();
            let notified = notify.notified();
            if let Some(message) = self.next_ready() {
                return message;
            }
            // A timeout guards against a notification lost between the check and the wait.
            let _ = tokio::time::timeout(Duration::from_millis(200), notified).await;
        }
    }

    fn next_ready(&mut self) -> Option<Message> {
        let state = self.bus.state.lock().expect("bus lock");
        for topic in &self.topics {
            let Some(partitions) = state.topics.get(topic) else {
                continue;
            };
            for (index, log) in partitions.iter().enumerate() {
                let partition = index as i32;
                let position = *self.positions.entry((topic.clone(), partition)).or_insert_with(|| {
                    state
                        .committed
                        .get(&(self.group.clone(), topic.clone(), partition))
                        .copied()
                        .unwrap_or(0)
                });
                if let Some(message) = log.get(position as usize) {
                    self.positions.insert((topic.clone(), partition), position + 1);
                    return Some(message.clone());
                }
            }
        }
        None
    }

    fn commit(&mut self, topic: &str, partition: i32, next_offset: i64) {
        let mut state = self.bus.state.lock().expect("bus lock");
        state
            .committed
            .insert((self.group.clone(), topic.to_string(), partition), next_offset);
    }
}

/// FNV-1a, a stable hash: the same key always lands in the same partition.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_bus_resumes_from_commit() {
        let bus = MemoryBus::new(3);
        let producer = bus.producer();
        // Two keys that hash to different partitions.
        let odd_key = (0..100)
            .map(|i| format!("odd{i}"))
            .find(|k| fnv1a(k.as_bytes()) % 3 != fnv1a(b"even") % 3)
            .unwrap();
        for i in 0..10 {
            let key = if i % 2 == 0 { "even" } else { odd_key.as_str() };
            producer.send("t", key, format!("{i}").as_bytes(), &[]).await.unwrap();
        }
        let mut consumer = bus.consumer("g", &["t"]);

        let mut seen: HashMap<String, Vec<i32>> = HashMap::new();
        let mut last = None;
        for _ in 0..10 {
            let m = consumer.recv().await.unwrap();
            let value: i32 = String::from_utf8(m.payload.clone()).unwrap().parse().unwrap();
            seen.entry(m.key_str().unwrap().to_string()).or_default().push(value);
            if value == 4 {
                consumer.commit(&m.topic, m.partition, m.offset + 1).unwrap();
                last = Some(m.partition);
            }
        }
        assert_eq!(seen["even"], vec![0, 2, 4, 6, 8]);
        assert_eq!(seen[&odd_key], vec![1, 3, 5, 7, 9]);
        // A new member of the group starts after the committed event on that partition,
        // and from the start elsewhere.
        let mut again = bus.consumer("g", &["t"]);
        let mut replayed = Vec::new();
        while let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(300), again.recv()).await {
            replayed.push(String::from_utf8(m.payload).unwrap());
        }
        let even_partition = last.unwrap();
        assert_eq!(bus.committed("g", "t").get(&even_partition), Some(&3));
        assert!(replayed.contains(&"6".to_string()));
        assert!(replayed.contains(&"8".to_string()));
        assert!(!replayed.contains(&"4".to_string()));
        assert!(!replayed.contains(&"0".to_string()));
        assert!(replayed.contains(&"1".to_string()));
    }

    #[tokio::test]
    async fn memory_consumer_wakes_on_new_events() {
        let bus = MemoryBus::new(1);
        let mut consumer = bus.consumer("g", &["t"]);
        let producer = bus.producer();
        let waiter = tokio::spawn(async move { consumer.recv().await.unwrap().payload });
        tokio::time::sleep(Duration::from_millis(50)).await;
        producer.send("t", "k", b"late", &[]).await.unwrap();
        let payload = tokio::time::timeout(Duration::from_secs(2), waiter).await.unwrap().unwrap();
        assert_eq!(payload, b"late");
    }
}
