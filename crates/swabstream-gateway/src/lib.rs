//! swabstream's ingest gateway: the scanners' and code systems' front door.
//!
//! `POST /v1/events` takes one JSON event or an array of them (SPEC §2.1),
//! authenticates the device ([`auth`]), pseudonymises `id_number`s at the
//! edge, and publishes the valid events as Avro through an idempotent,
//! acks=all producer ([`sink`]). It answers 202 only after Kafka acknowledged
//! every accepted event of the request.
//!
//! Overload is refused, not queued: a request first reserves its body's size
//! from a fixed budget of bytes in flight and its events from a fixed budget
//! of records waiting for Kafka; when either is spent it is answered 429 (or
//! 503 when Kafka is the reason) with `Retry-After`, at once. Memory is
//! therefore bounded by the two budgets whatever the offered load.
//!
//! See `openapi.json` (served at `/openapi.json`) for the HTTP contract.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use swabstream_events::PseudonymKey;
use swabstream_kafka::Cluster;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub mod auth;
pub mod client;
mod ingest;
pub mod sink;

pub use auth::Credentials;

/// The gateway's limits and names.
#[derive(Clone, Debug)]
pub struct Options {
    /// The events topic.
    pub topic: String,
    /// Largest request body accepted (413 beyond).
    pub max_request_bytes: usize,
    /// Most events in one request (413 beyond).
    pub max_events_per_request: usize,
    /// Request bodies held at once, in bytes; a request that would exceed it gets 429.
    pub max_in_flight_bytes: usize,
    /// Events handed to Kafka and not yet acknowledged; beyond it, 429 (503 if Kafka is away).
    pub max_queued_events: usize,
    /// Longest time to receive a request's body (408 beyond): a client that
    /// trickles its body must not hold its share of the byte budget forever.
    pub read_timeout: Duration,
    /// Longest wait for Kafka's acknowledgements before answering 503.
    pub ack_timeout: Duration,
    /// `Retry-After` when the gateway is saturated.
    pub retry_after_saturated: Duration,
    /// `Retry-After` when Kafka did not acknowledge in time or is unreachable.
    pub retry_after_unavailable: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            topic: "sampling-events".to_owned(),
            max_request_bytes: 1 << 20,
            max_events_per_request: 1000,
            max_in_flight_bytes: 64 << 20,
            max_queued_events: 100_000,
            read_timeout: Duration::from_secs(10),
            ack_timeout: Duration::from_secs(10),
            retry_after_saturated: Duration::from_secs(1),
            retry_after_unavailable: Duration::from_secs(5),
        }
    }
}

impl Options {
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.max_request_bytes > 0, "max_request_bytes must be at least 1");
        anyhow::ensure!(
            self.max_in_flight_bytes >= self.max_request_bytes,
            "max_in_flight_bytes ({}) must be at least max_request_bytes ({})",
            self.max_in_flight_bytes,
            self.max_request_bytes
        );
        anyhow::ensure!(
            u32::try_from(self.max_in_flight_bytes).is_ok(),
            "max_in_flight_bytes must be below 4 GiB"
        );
        anyhow::ensure!(
            self.max_events_per_request > 0,
            "max_events_per_request must be at least 1"
        );
        anyhow::ensure!(
            self.max_queued_events >= self.max_events_per_request,
            "max_queued_events must be at least max_events_per_request"
        );
        Ok(())
    }
}

/// What every request handler shares.
struct Shared {
    opts: Options,
    credentials: Credentials,
    key: PseudonymKey,
    sink: Arc<sink::Sink>,
    body_budget: Arc<Semaphore>,
    draining: AtomicBool,
    metrics: Option<PrometheusHandle>,
}

/// A gateway ready to serve.
pub struct Gateway {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("options", &self.shared.opts)
            .field("devices", &self.shared.credentials.len())
            .finish_non_exhaustive()
    }
}

/// How a gateway's serving ended.
#[derive(Debug)]
pub struct Drained {
    /// Records still unacknowledged after the final flush (their requests were answered 503).
    pub unacknowledged: usize,
}

impl Gateway {
    /// A gateway publishing to `cluster`. `metrics` renders `/metrics` (the
    /// caller installs the recorder: it is process-wide).
    pub fn new(
        cluster: &Cluster,
        opts: Options,
        credentials: Credentials,
        key: PseudonymKey,
        metrics: Option<PrometheusHandle>,
    ) -> anyhow::Result<Gateway> {
        opts.check()?;
        // librdkafka's own queue bound sits above the gateway's admission
        // bound (which concurrent requests may overshoot by one request each).
        let backstop = opts.max_queued_events * 2 + opts.max_events_per_request;
        let sink = Arc::new(sink::Sink::new(cluster, &opts.topic, backstop)?);
        let budget = Arc::new(Semaphore::new(opts.max_in_flight_bytes));
        describe_metrics();
        Ok(Gateway {
            shared: Arc::new(Shared {
                opts,
                credentials,
                key,
                sink,
                body_budget: budget,
                draining: AtomicBool::new(false),
                metrics,
            }),
        })
    }

    /// The HTTP routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/events", post(ingest::post_events))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(render_metrics))
            .route("/openapi.json", get(openapi))
            .layer(axum::middleware::from_fn(observe))
            .with_state(self.shared.clone())
    }

    /// Serves on `listener` until `shutdown` resolves, then drains: stops
    /// accepting, answers every request in flight (each waits at most the
    /// ack timeout) and flushes the producer.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<Drained> {
        let sink = self.shared.sink.clone();
        // The first check before serving, so /readyz is true from the start.
        let first = sink.clone();
        tokio::task::spawn_blocking(move || first.check(Duration::from_secs(5))).await?;
        sink::watch(sink.clone(), Duration::from_secs(1));
        let shared = self.shared.clone();
        let app = self.router();
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                shutdown.await;
                shared.draining.store(true, Ordering::Relaxed);
                tracing::info!("draining: answering the requests in flight, accepting no more");
            })
            .await?;
        let limit = self.shared.opts.ack_timeout;
        let unacknowledged = tokio::task::spawn_blocking(move || sink.flush(limit)).await?;
        Ok(Drained { unacknowledged })
    }

    /// Binds `addr` (port 0: any free port).
    pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
        TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
    }
}

async fn healthz() -> Response {
    json(StatusCode::OK, serde_json::json!({"status": "ok"}))
}

async fn readyz(State(s): State<Arc<Shared>>) -> Response {
    if s.draining.load(Ordering::Relaxed) {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"status": "draining", "kafka": "not checked"}),
        );
    }
    if s.sink.reachable() {
        json(StatusCode::OK, serde_json::json!({"status": "ready", "kafka": "reachable"}))
    } else {
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({
                "status": "not ready",
                "kafka": s.sink.last_problem().unwrap_or_else(|| "unreachable".to_owned()),
            }),
        )
    }
}

async fn render_metrics(State(s): State<Arc<Shared>>) -> Response {
    match &s.metrics {
        Some(h) => {
            metrics::gauge!("swabstream_gateway_queued_events").set(s.sink.queued() as f64);
            ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], h.render()).into_response()
        }
        None => (StatusCode::NOT_FOUND, "metrics are not enabled").into_response(),
    }
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// The OpenAPI 3.1 document of the gateway's HTTP interface.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// Counts requests by route and status, their latency, and those in flight.
async fn observe(req: Request, next: Next) -> Response {
    let route = match req.extensions().get::<MatchedPath>() {
        Some(p) => p.as_str().to_owned(),
        None => "unmatched".to_owned(),
    };
    let started = Instant::now();
    let in_flight = metrics::gauge!("swabstream_gateway_in_flight_requests");
    in_flight.increment(1.0);
    let response = next.run(req).await;
    in_flight.decrement(1.0);
    let status = response.status().as_u16().to_string();
    metrics::counter!("swabstream_gateway_requests_total", "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("swabstream_gateway_request_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!("swabstream_gateway_requests_total", "HTTP requests by route and status");
    describe_histogram!(
        "swabstream_gateway_request_seconds",
        "Time from request to response, by route (for /v1/events: until Kafka acknowledged)"
    );
    describe_gauge!("swabstream_gateway_in_flight_requests", "Requests being handled");
    describe_gauge!(
        "swabstream_gateway_in_flight_bytes",
        "Request body bytes reserved by requests being handled"
    );
    describe_gauge!(
        "swabstream_gateway_queued_events",
        "Events handed to Kafka and not yet acknowledged"
    );
    describe_counter!(
        "swabstream_gateway_events_total",
        "Events by outcome: accepted, rejected, forbidden, not_acknowledged"
    );
}

/// Buckets of the request latency histogram, in seconds.
pub const LATENCY_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// A JSON response.
pub(crate) fn json(status: StatusCode, body: serde_json::Value) -> Response {
    let mut r = (status, body.to_string()).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// A JSON error response with a `Retry-After` header.
pub(crate) fn retry_later(
    status: StatusCode,
    after: Duration,
    body: serde_json::Value,
) -> Response {
    let mut r = json(status, body);
    let secs = after.as_secs().max(1);
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    r
}

/// The request's `Content-Length`, if it has a valid one.
pub(crate) fn content_length(headers: &HeaderMap) -> Option<usize> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}
