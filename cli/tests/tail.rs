//! `lungstream tail` against the real broker (`scripts/services.sh up`).

use std::process::Command;

use lungstream_runtime::kafka::{ensure_topics, KafkaProducer};
use lungstream_runtime::KafkaConfig;
use lungstream_schemas::events::topics;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_events_as_json_lines() {
    let port: u16 = std::env::var("LUNGSTREAM_KAFKA_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(19092);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        "no Kafka broker on 127.0.0.1:{port}: start it with `scripts/services.sh up`"
    );
    let unique = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    let prefix = format!("test.tail-{}-{unique}.", std::process::id());
    let kafka = KafkaConfig {
        brokers: format!("127.0.0.1:{port}"),
        topic_prefix: prefix.clone(),
        ..KafkaConfig::default()
    };
    ensure_topics(&kafka, topics::ALL).await.unwrap();
    let producer = KafkaProducer::connect(&kafka).unwrap();
    for study in ["1.2.1", "1.2.2", "1.2.3"] {
        let event = serde_json::json!({"schema_version": "1.0", "hospital": "north", "study_uid": study, "status": "analysed"});
        producer.send_json(topics::REPORTS, study, &event).await.unwrap();
    }

    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || Command::new(env!("CARGO_BIN_EXE_lungstream")).arg("tail").args(args).output().unwrap())
    };
    let brokers = kafka.brokers.clone();
    let output = run(vec!["reports".into(), "--brokers".into(), brokers.clone(), "--prefix".into(), prefix.clone(), "--from-beginning".into(), "--meta".into(), "--idle-exit".into(), "10".into()])
        .await
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8(output.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    let mut studies: Vec<&str> = lines.iter().map(|l| l["event"]["study_uid"].as_str().unwrap()).collect();
    studies.sort();
    assert_eq!(studies, ["1.2.1", "1.2.2", "1.2.3"]);
    for line in &lines {
        assert_eq!(line["key"], line["event"]["study_uid"]);
        assert!(line["offset"].is_i64(), "{line}");
    }

    // --count stops early, and the output is the bare event.
    let output = run(vec!["ct.reports.v1".into(), "--brokers".into(), brokers.clone(), "--prefix".into(), prefix.clone(), "--from-beginning".into(), "--count".into(), "1".into()])
        .await
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert_eq!(text.lines().count(), 1);
    let event: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(event["hospital"], "north");

    // An unknown topic is refused with the list of known ones.
    let output = run(vec!["patients".into(), "--brokers".into(), brokers]).await.unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown topic \"patients\""), "{stderr}");
    assert!(stderr.contains("ct.reports.v1"), "{stderr}");
}
