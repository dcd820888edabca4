//! `lungstream_kafka_consumer_lag` against the real broker of `scripts/services.sh up`:
//! events published but not committed show as lag, and a commit lowers it.

use std::time::{Duration, Instant};

use lungstream_runtime::kafka::{ensure_topics, KafkaConsumer, KafkaProducer};
use lungstream_runtime::ops::Metrics;
use lungstream_runtime::{Consumer, KafkaConfig};

fn config() -> KafkaConfig {
    let port = std::env::var("LUNGSTREAM_KAFKA_PORT").unwrap_or_else(|_| "19092".into());
    let unique = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    KafkaConfig {
        brokers: format!("127.0.0.1:{port}"),
        topic_prefix: format!("test.lag-{}-{unique}.", std::process::id()),
        partitions: 1,
        session_timeout_ms: 6000,
        heartbeat_interval_ms: 1000,
        statistics_interval_ms: 200,
        ..KafkaConfig::default()
    }
}

/// Keeps the consumer polling (librdkafka delivers statistics while it polls) until the
/// metrics text contains `line`, for at most 30 s. Returns the last text.
async fn wait_for_line(consumer: &mut Consumer, metrics: &Metrics, line: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = metrics.encode();
        if text.lines().any(|l| l == line) || Instant::now() > deadline {
            return text;
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_follows_commits() {
    let config = config();
    let port: u16 = config.brokers.rsplit(':').next().unwrap().parse().unwrap();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        "the Kafka broker is not running on 127.0.0.1:{port}: start it with `scripts/services.sh up`"
    );
    ensure_topics(&config, &["lag.events"]).await.unwrap();
    let producer = KafkaProducer::connect(&config).unwrap();
    for i in 0..5 {
        producer.send("lag.events", "key", format!("event {i}").as_bytes(), &[]).await.unwrap();
    }
    let metrics = Metrics::default();
    let mut consumer = KafkaConsumer::join(&config, "lag-reader", &["lag.events"]).unwrap();
    let topic = format!("{}lag.events", config.topic_prefix);
    let group = format!("{}lag-reader", config.topic_prefix);
    let series = format!("lungstream_kafka_consumer_lag{{group=\"{group}\",topic=\"{topic}\",partition=\"0\"}}");

    // Two events read and committed: three are left.
    let first = tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await.unwrap().unwrap();
    let second = tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await.unwrap().unwrap();
    assert_eq!(first.partition, 0);
    consumer.commit("lag.events", second.partition, second.offset + 1).unwrap();
    let text = wait_for_line(&mut consumer, &metrics, &format!("{series} 3")).await;
    assert!(text.lines().any(|l| l == format!("{series} 3")), "no lag of 3 for {series} in:\n{text}");

    // Everything committed: no lag.
    consumer.commit("lag.events", 0, second.offset + 4).unwrap();
    let text = wait_for_line(&mut consumer, &metrics, &format!("{series} 0")).await;
    assert!(text.lines().any(|l| l == format!("{series} 0")), "no lag of 0 for {series} in:\n{text}");

    // A consumer that leaves takes its series away.
    consumer.close();
    let text = metrics.encode();
    assert!(!text.contains(&series), "the closed consumer's lag is still exported:\n{text}");
}
