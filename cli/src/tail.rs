//! `lungstream tail TOPIC`: prints the events of a topic as JSON lines, for a quick look
//! at what the pipeline publishes. It reads as a group of its own and commits nothing, so
//! it never takes events from the services.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use lungstream_runtime::kafka::KafkaConsumer;
use lungstream_runtime::KafkaConfig;
use lungstream_schemas::events::topics;

#[derive(Args)]
pub struct TailArgs {
    /// Topic: a full name (`ct.reports.v1`) or a short one: instances, series, lobes,
    /// results, reports, dead-letter.
    topic: String,
    /// Kafka brokers, `host:port[,host:port…]`.
    #[arg(long, env = "LUNGSTREAM_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Prefix of the deployment's topic names (its `kafka.topic_prefix`), e.g. `dev.`.
    #[arg(long, default_value = "")]
    prefix: String,
    /// Start at the oldest event the broker keeps instead of the next one published.
    #[arg(long)]
    from_beginning: bool,
    /// Stop after this many events.
    #[arg(long)]
    count: Option<u64>,
    /// Stop when no event arrives for this many seconds (default: wait for ever).
    #[arg(long)]
    idle_exit: Option<u64>,
    /// Wrap each event with its partition, offset and key: `{"partition":…,"offset":…,"key":…,"event":…}`.
    #[arg(long)]
    meta: bool,
    /// A librdkafka property for the connection (SASL, TLS), `name=value`; repeatable.
    #[arg(long = "property", value_name = "NAME=VALUE")]
    properties: Vec<String>,
}

/// Returns the full topic name of a short name, or the name itself.
fn topic_name(name: &str) -> anyhow::Result<&str> {
    let full = match name {
        "instances" => topics::INSTANCES,
        "series" => topics::SERIES,
        "lobes" => topics::LOBES,
        "results" => topics::RESULTS,
        "reports" => topics::REPORTS,
        "dead-letter" | "dead-letters" => topics::DEAD_LETTER,
        other => other,
    };
    if !topics::ALL.contains(&full) {
        anyhow::bail!("unknown topic {name:?}: expected one of {} or a short name (instances, series, lobes, results, reports, dead-letter)", topics::ALL.join(", "));
    }
    Ok(full)
}

pub fn run(args: &TailArgs) -> anyhow::Result<ExitCode> {
    let topic = topic_name(&args.topic)?;
    let mut properties = std::collections::BTreeMap::new();
    for property in &args.properties {
        let (name, value) = property
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("invalid --property {property:?}: expected NAME=VALUE"))?;
        properties.insert(name.to_string(), value.to_string());
    }
    let config = KafkaConfig {
        brokers: args.brokers.clone(),
        topic_prefix: args.prefix.clone(),
        properties,
        ..KafkaConfig::default()
    };
    let unique = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    let group = format!("lungstream-tail-{}-{unique}", std::process::id());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut consumer = KafkaConsumer::join_at(&config, &group, &[topic], args.from_beginning)?;
        eprintln!("tail: reading {}{topic} from {} (Ctrl-C to stop)", args.prefix, args.brokers);
        let mut printed = 0u64;
        let stdout = std::io::stdout();
        loop {
            if args.count.is_some_and(|count| printed >= count) {
                break;
            }
            let wait = args.idle_exit.map_or(Duration::from_secs(3600), Duration::from_secs);
            let message = tokio::select! {
                received = tokio::time::timeout(wait, consumer.recv()) => match received {
                    Ok(received) => received?,
                    Err(_) if args.idle_exit.is_some() => break,
                    Err(_) => continue,
                },
                _ = tokio::signal::ctrl_c() => break,
            };
            let event: serde_json::Value = serde_json::from_slice(&message.payload)
                .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&message.payload).into_owned()));
            let line = if args.meta {
                serde_json::json!({"partition": message.partition, "offset": message.offset, "key": message.key_str(), "event": event})
            } else {
                event
            };
            let mut out = stdout.lock();
            // A closed pipe (`| head`) ends the command quietly.
            if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                break;
            }
            printed += 1;
        }
        consumer.close();
        eprintln!("tail: {printed} event(s)");
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
