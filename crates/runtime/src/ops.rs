//! Health, readiness and Prometheus metrics over HTTP, and shutdown on SIGTERM.
//!
//! `/healthz` returns 200 while the process runs. `/readyz` returns 200 once the service
//! has connected and created its topics, and 503 again while it shuts down, so a load
//! balancer stops sending work. `/metrics` is the Prometheus text format.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Metric, Registry};
use tokio_util::sync::CancellationToken;

/// Labels of the per-event counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub service: String,
    pub topic: String,
    /// `done`, `dead_letter` or `retry`.
    pub outcome: String,
}

/// Labels of the dead-letter counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub service: String,
    pub reason: String,
}

/// Labels of the latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub service: String,
    pub topic: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 5 ms to about 3 minutes.
    Histogram::new(exponential_buckets(0.005, 2.0, 16))
}

/// The metrics every service has, and the registry services add their own to.
pub struct Metrics {
    registry: Mutex<Registry>,
    /// `lungstream_events_total{service,topic,outcome}`.
    pub events: Family<EventLabels, Counter>,
    /// `lungstream_dead_letters_total{service,reason}`.
    pub dead_letters: Family<ReasonLabels, Counter>,
    /// `lungstream_handle_seconds{service,topic}`: time to handle one event, retries
    /// included.
    pub handle_seconds: HistogramFamily<StageLabels>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("lungstream");
        let events = Family::<EventLabels, Counter>::default();
        let dead_letters = Family::<ReasonLabels, Counter>::default();
        let handle_seconds: HistogramFamily<StageLabels> = Family::new_with_constructor(latency_histogram);
        registry.register("events", "Events handled, by outcome", events.clone());
        registry.register("dead_letters", "Events sent to the dead-letter topic, by reason code", dead_letters.clone());
        registry.register("handle_seconds", "Time to handle one event, retries included", handle_seconds.clone());
        registry.register(
            "kafka_consumer_lag",
            "Events not yet committed, per consumer group and partition (high watermark minus committed offset)",
            crate::kafka::consumer_lag().clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            events,
            dead_letters,
            handle_seconds,
        }
    }
}

impl Metrics {
    /// Adds a service's own metric (the name gets the `lungstream_` prefix).
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.registry.lock().expect("metrics lock").register(name, help, metric);
    }

    /// Encodes the metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        let registry = self.registry.lock().expect("metrics lock");
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("writing to a String cannot fail");
        text
    }
}

/// State behind the operations endpoints.
#[derive(Default)]
pub struct Ops {
    ready: AtomicBool,
    pub metrics: Metrics,
}

impl Ops {
    /// Creates the state, not ready yet.
    pub fn new() -> Arc<Ops> {
        Arc::new(Ops::default())
    }

    /// Marks the service ready (or not) for `/readyz`.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Builds the router of `/healthz`, `/readyz` and `/metrics`. Services merge their
    /// own routes into it.
    pub fn router(self: &Arc<Ops>) -> Router {
        Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .with_state(self.clone())
    }
}

async fn readyz(State(ops): State<Arc<Ops>>) -> impl IntoResponse {
    if ops.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics(State(ops): State<Arc<Ops>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        ops.metrics.encode(),
    )
}

/// Serves `router` on `listen` until `shutdown` is cancelled, then finishes the requests
/// in flight. Returns the bound address (useful with port 0) and the server task.
///
/// # Errors
///
/// The address cannot be bound.
pub async fn serve(
    listen: SocketAddr,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let address = listener.local_addr()?;
    let task = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
    });
    Ok((address, task))
}

/// Returns a token that is cancelled on SIGTERM or SIGINT (Ctrl-C).
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("a SIGTERM handler");
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM received; finishing the work in flight."),
            _ = tokio::signal::ctrl_c() => tracing::info!("Interrupt received; finishing the work in flight."),
        }
        cancel.cancel();
    });
    token
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn endpoints_answer_over_http() {
        let ops = Ops::new();
        ops.metrics
            .dead_letters
            .get_or_create(&ReasonLabels {
                service: "ingest".into(),
                reason: "not_ct".into(),
            })
            .inc();
        let shutdown = CancellationToken::new();
        let (address, task) = serve("127.0.0.1:0".parse().unwrap(), ops.router(), shutdown.clone()).await.unwrap();
        let get = |path: &str| {
            let url = format!("http://{address}{path}");
            async move {
                let response = reqwest_lite(&url).await;
                response
            }
        };
        assert_eq!(get("/healthz").await.0, 200);
        assert_eq!(get("/readyz").await.0, 503);
        ops.set_ready(true);
        assert_eq!(get("/readyz").await.0, 200);
        let (status, body) = get("/metrics").await;
        assert_eq!(status, 200);
        assert!(body.contains("lungstream_dead_letters_total{service=\"ingest\",reason=\"not_ct\"} 1"), "{body}");
        shutdown.cancel();
        task.await.unwrap().unwrap();
    }

    /// Sends a minimal HTTP/1.1 GET over a TCP stream, so the test needs no client crate.
    async fn reqwest_lite(url: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let rest = url.strip_prefix("http://").unwrap();
        let (host, path) = rest.split_once('/').unwrap();
        let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
        let request = format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let status = response[9..12].parse().unwrap();
        let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        (status, body)
    }
}
