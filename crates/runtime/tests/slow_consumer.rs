//! A handler slower than `max.poll.interval.ms`, against the real broker of
//! `scripts/services.sh up`: the worker keeps its group membership while it works, so
//! each event is handled once and committed, without a rebalance.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lungstream_runtime::kafka::{ensure_topics, KafkaConsumer, KafkaProducer};
use lungstream_runtime::ops::Ops;
use lungstream_runtime::worker::{HandleError, Handler, Worker};
use lungstream_runtime::{KafkaConfig, Message, RetryConfig};
use lungstream_schemas::events::EVENT_SCHEMA_VERSION;
use tokio_util::sync::CancellationToken;

/// Sleeps longer than the poll interval on every event and records the offsets.
struct SlowHandler {
    handled: Arc<Mutex<BTreeMap<i64, usize>>>,
    work: Duration,
}

impl Handler for SlowHandler {
    async fn handle(&mut self, message: &Message) -> Result<(), HandleError> {
        tokio::time::sleep(self.work).await;
        *self.handled.lock().unwrap().entry(message.offset).or_default() += 1;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_slower_than_poll_interval_keeps_membership() {
    let port = std::env::var("LUNGSTREAM_KAFKA_PORT").unwrap_or_else(|_| "19092".into());
    assert!(
        std::net::TcpStream::connect(format!("127.0.0.1:{port}")).is_ok(),
        "the Kafka broker is not running on 127.0.0.1:{port}: start it with `scripts/services.sh up`"
    );
    let unique = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    let config = KafkaConfig {
        brokers: format!("127.0.0.1:{port}"),
        topic_prefix: format!("test.slow-{}-{unique}.", std::process::id()),
        partitions: 1,
        session_timeout_ms: 6000,
        heartbeat_interval_ms: 1000,
        // librdkafka requires at least the session timeout.
        max_poll_interval_ms: 7000,
        ..KafkaConfig::default()
    };
    ensure_topics(&config, &["slow.events", "dead.letter.v1"]).await.unwrap();
    let producer = KafkaProducer::connect(&config).unwrap();
    for i in 0..2 {
        let event = format!(r#"{{"schema_version":"{EVENT_SCHEMA_VERSION}","n":{i}}}"#);
        producer.send("slow.events", "key", event.as_bytes(), &[]).await.unwrap();
    }

    let handled = Arc::new(Mutex::new(BTreeMap::new()));
    let mut handler = SlowHandler {
        handled: handled.clone(),
        // Well past the 7 s poll interval.
        work: Duration::from_secs(12),
    };
    let worker = Worker {
        service: "slow-test",
        producer: producer.clone(),
        retry: RetryConfig::default(),
        ops: Ops::new(),
    };
    let consumer = KafkaConsumer::join(&config, "slow-workers", &["slow.events"]).unwrap();
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let running = tokio::spawn(async move { worker.run(consumer, &mut handler, token).await });

    let deadline = Instant::now() + Duration::from_secs(90);
    while handled.lock().unwrap().len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Time for a redelivery to show, had the member been thrown out.
    tokio::time::sleep(Duration::from_secs(3)).await;
    shutdown.cancel();
    running.await.unwrap().unwrap();
    let handled = handled.lock().unwrap().clone();
    assert_eq!(handled, BTreeMap::from([(0, 1), (1, 1)]), "offsets and how often each was handled");

    // Both commits held: a new member of the group receives nothing.
    let mut consumer = KafkaConsumer::join(&config, "slow-workers", &["slow.events"]).unwrap();
    let leftover = tokio::time::timeout(Duration::from_secs(8), consumer.recv()).await;
    assert!(leftover.is_err(), "an event was not committed: {:?}", leftover.map(|m| m.map(|m| m.offset)));
    consumer.close();
}
