//! swabstream's analysts' service (SPEC §8): the §4 views over HTTP, read-only.
//!
//! - [`refresh`]: the one reader of the view store. A thread reads the summed
//!   views and the partitions' checkpoints once per refresh interval into an
//!   immutable snapshot; every answer comes from the latest snapshot, so the
//!   store sees one read per interval whatever the query load, and an outage
//!   keeps the last numbers served, marked stale.
//! - Routes: `GET /v1/views/{view}` (filters, JSON or CSV), `GET /v1/summary`
//!   ([`summary`]), `GET /v1/stream` (Server-Sent Events: the summary when it
//!   changes, at most once a second), the dashboard at `/` (assets embedded,
//!   ECharts vendored), `/healthz`, `/readyz`, `/metrics`, `/openapi.json`.
//! - Every answer carries `as_of`: per Kafka partition, the checkpoint offset
//!   the numbers reflect, the log end where known, the lag, the last commit.
//! - Analysts authenticate with bearer tokens in the gateway's scheme
//!   (`swabstream_gateway::auth`), from a credentials file of their own; the
//!   token may also come as `access_token` in the query, for `EventSource`,
//!   which cannot set headers.
//!
//! Views hold no `person_ref`, and so nothing here can answer one.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use metrics_exporter_prometheus::PrometheusHandle;
use swabstream_events::Day;
use swabstream_gateway::auth::{AuthError, Credentials};
use swabstream_views::{VIEW_NAMES, render_csv};
use tokio::net::TcpListener;
use tokio::sync::watch;

mod assets;
pub mod query;
pub mod refresh;
pub mod sql;
pub mod summary;

pub use refresh::{AsOf, LogEnds, Opener, PartitionAsOf, RefreshOptions, Snapshot};

use query::ApiError;

/// Every route the service answers, as `openapi.json` names them.
pub const ROUTES: [&str; 10] = [
    "/v1/views",
    "/v1/views/{view}",
    "/v1/summary",
    "/v1/stream",
    "/",
    "/assets/{file}",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
];

/// The service's settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// How often the store is read.
    pub refresh_interval: Duration,
    /// See [`RefreshOptions::reopen_each_read`].
    pub reopen_each_read: bool,
    /// Most Server-Sent Event streams open at once (beyond: 503).
    pub max_streams: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            refresh_interval: Duration::from_secs(1),
            reopen_each_read: true,
            max_streams: 10_000,
        }
    }
}

struct Shared {
    credentials: Arc<Credentials>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    metrics: Option<PrometheusHandle>,
    streams: std::sync::atomic::AtomicUsize,
    max_streams: usize,
}

/// The analysts' service, its refresher running.
pub struct Service {
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").field("analysts", &self.shared.credentials.len()).finish()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Service {
    /// Starts reading the store through `opener` (and the log ends through
    /// `log_ends`, if given). `metrics` renders `/metrics` (the caller
    /// installs the recorder: it is process-wide).
    pub fn start(
        opener: Opener,
        log_ends: Option<LogEnds>,
        credentials: Credentials,
        opts: Options,
        metrics: Option<PrometheusHandle>,
    ) -> Service {
        describe_metrics();
        let stop = Arc::new(AtomicBool::new(false));
        let snapshots = refresh::start(
            opener,
            log_ends,
            RefreshOptions {
                interval: opts.refresh_interval,
                reopen_each_read: opts.reopen_each_read,
            },
            stop.clone(),
        );
        Service {
            shared: Arc::new(Shared {
                credentials: Arc::new(credentials),
                snapshots,
                metrics,
                streams: Default::default(),
                max_streams: opts.max_streams,
            }),
            stop,
        }
    }

    /// The latest snapshots, as they are made (for the SQL endpoint).
    pub fn snapshots(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.shared.snapshots.clone()
    }

    /// The analysts' credentials.
    pub fn credentials(&self) -> Arc<Credentials> {
        self.shared.credentials.clone()
    }

    /// Waits until the store was read once (or `timeout` passed).
    pub async fn first_read(&self, timeout: Duration) -> bool {
        let mut rx = self.shared.snapshots.clone();
        tokio::time::timeout(timeout, rx.wait_for(|s| s.ever_read)).await.is_ok_and(|r| r.is_ok())
    }

    /// The HTTP routes.
    pub fn router(&self) -> Router {
        let api = Router::new()
            .route("/v1/views", get(list_views))
            .route("/v1/views/{view}", get(get_view))
            .route("/v1/summary", get(get_summary))
            .route("/v1/stream", get(stream))
            .route_layer(axum::middleware::from_fn_with_state(self.shared.clone(), authenticate));
        Router::new()
            .merge(api)
            .route("/", get(assets::index))
            .route("/assets/{*file}", get(assets::asset))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(render_metrics))
            .route("/openapi.json", get(openapi))
            .layer(axum::middleware::from_fn(observe))
            .with_state(self.shared.clone())
    }

    /// Serves on `listener` until `shutdown` resolves; then the refresher
    /// stops, which ends the event streams, and serving returns.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let app = self.router();
        let stop = self.stop.clone();
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                shutdown.await;
                stop.store(true, Ordering::Relaxed);
            })
            .await?;
        Ok(())
    }

    /// Binds `addr` (port 0: any free port).
    pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
        TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
    }
}

/// Admits requests with an analyst's bearer token (header, or `access_token`).
async fn authenticate(State(s): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let from_query = req.uri().query().and_then(|q| {
        query::pairs(Some(q)).into_iter().find(|(k, _)| k == "access_token").map(|(_, v)| v)
    });
    let header = match from_query {
        Some(t) => Some(format!("Bearer {t}").into_bytes()),
        None => req.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes().to_vec()),
    };
    match s.credentials.authenticate(header.as_deref()) {
        Ok(_) => next.run(req).await,
        Err(e) => {
            let message = match e {
                AuthError::Missing => "missing `Authorization: Bearer <analyst>.<secret>` header (or `access_token` parameter)".to_owned(),
                e => e.to_string(),
            };
            let mut r = json_response(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({ "error": message }).to_string(),
            );
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            r
        }
    }
}

fn current(s: &Shared) -> Arc<Snapshot> {
    s.snapshots.borrow().clone()
}

async fn list_views(State(s): State<Arc<Shared>>) -> Response {
    let snap = current(&s);
    let body = serde_json::json!({ "views": VIEW_NAMES, "as_of": snap.as_of });
    json_response(StatusCode::OK, body.to_string())
}

async fn get_view(
    State(s): State<Arc<Shared>>,
    Path(view): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if !VIEW_NAMES.contains(&view.as_str()) {
        return Err(ApiError::unknown_view(&view));
    }
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let q = query::ViewQuery::parse(&view, &query::pairs(raw.as_deref()), accept)?;
    let snap = current(&s);
    let (selected, total, limit) = q.select(&snap.views, &view);
    if q.csv {
        let csv = render_csv(&selected, &view).expect("a known view");
        let mut r = (StatusCode::OK, csv).into_response();
        let h = r.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"));
        if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{view}.csv\"")) {
            h.insert(header::CONTENT_DISPOSITION, v);
        }
        // CSV has no room for `as_of`: the headers carry its gist.
        if let Some(at) = snap.as_of.read_at.as_deref().and_then(|a| HeaderValue::from_str(a).ok())
        {
            h.insert("x-swabstream-read-at", at);
        }
        h.insert("x-swabstream-stale", HeaderValue::from_static(bool_str(snap.as_of.stale)));
        h.insert("x-swabstream-total-rows", HeaderValue::from(total));
        return Ok(r);
    }
    let rows = query::rows_json(&selected, &view);
    let returned = rows.as_array().map_or(0, Vec::len);
    let next_offset = (q.offset + returned < total).then_some(q.offset + returned);
    let body = serde_json::json!({
        "view": view,
        "as_of": snap.as_of,
        "total": total,
        "offset": q.offset,
        "limit": limit,
        "next_offset": next_offset,
        "rows": rows,
    });
    Ok(json_response(StatusCode::OK, body.to_string()))
}

fn bool_str(b: bool) -> &'static str {
    if b { "true" } else { "false" }
}

/// The rendered summary of `day` in `snap`, made once per snapshot and day.
pub fn summary_json(snap: &Snapshot, day: Option<Day>) -> Bytes {
    let mut cache = snap.summaries.lock().expect("not poisoned");
    if let Some(b) = cache.get(&day) {
        return b.clone();
    }
    #[derive(serde::Serialize)]
    struct Answer<'a> {
        as_of: &'a AsOf,
        #[serde(flatten)]
        summary: summary::Summary,
    }
    let answer = Answer { as_of: &snap.as_of, summary: summary::summarise(&snap.views, day) };
    let bytes = Bytes::from(serde_json::to_vec(&answer).expect("the summary serialises"));
    // Few distinct days are asked for; the cache lives as long as the snapshot.
    if cache.len() < 64 {
        cache.insert(day, bytes.clone());
    }
    bytes
}

async fn get_summary(
    State(s): State<Arc<Shared>>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let day = query::summary_day(&query::pairs(raw.as_deref()), "/v1/summary")?;
    let snap = current(&s);
    Ok(json_response(StatusCode::OK, summary_json(&snap, day)))
}

/// Counts an open event stream while it lives.
struct StreamGuard(Arc<Shared>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!("swabstream_serve_event_streams").decrement(1.0);
    }
}

struct StreamState {
    rx: watch::Receiver<Arc<Snapshot>>,
    day: Option<Day>,
    sent: Option<(u64, tokio::time::Instant)>,
    _guard: StreamGuard,
}

async fn stream(
    State(s): State<Arc<Shared>>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let day = query::summary_day(&query::pairs(raw.as_deref()), "/v1/stream")?;
    if s.streams.fetch_add(1, Ordering::Relaxed) >= s.max_streams {
        s.streams.fetch_sub(1, Ordering::Relaxed);
        return Err(ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: format!(
                "{} event streams are open, the most this service holds",
                s.max_streams
            ),
            parameter: None,
            extra: None,
        });
    }
    metrics::gauge!("swabstream_serve_event_streams").increment(1.0);
    let state =
        StreamState { rx: s.snapshots.clone(), day, sent: None, _guard: StreamGuard(s.clone()) };
    let events = futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some((_, at)) = st.sent {
                // At most one event a second, whatever the refresh interval.
                tokio::time::sleep_until(at + Duration::from_secs(1)).await;
            }
            let snap = st.rx.borrow_and_update().clone();
            if st.sent.is_none_or(|(g, _)| g != snap.generation) {
                st.sent = Some((snap.generation, tokio::time::Instant::now()));
                let body = summary_json(&snap, st.day);
                let event = Event::default()
                    .event("summary")
                    .id(snap.generation.to_string())
                    .data(String::from_utf8_lossy(&body));
                return Some((Ok::<_, Infallible>(event), st));
            }
            if st.rx.changed().await.is_err() {
                return None;
            }
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response())
}

async fn healthz() -> Response {
    json_response(StatusCode::OK, r#"{"status":"ok"}"#)
}

async fn readyz(State(s): State<Arc<Shared>>) -> Response {
    let snap = current(&s);
    let a = &snap.as_of;
    let (status, word) = match (snap.ever_read, a.stale) {
        (true, false) => (StatusCode::OK, "ready"),
        (true, true) => (StatusCode::SERVICE_UNAVAILABLE, "stale"),
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "not ready"),
    };
    let body = serde_json::json!({
        "status": word,
        "read_at": a.read_at,
        "checked_at": a.checked_at,
        "store": a.problem.as_deref().unwrap_or("readable"),
    });
    json_response(status, body.to_string())
}

async fn render_metrics(State(s): State<Arc<Shared>>) -> Response {
    match &s.metrics {
        Some(h) => {
            ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], h.render()).into_response()
        }
        None => (StatusCode::NOT_FOUND, "metrics are not enabled").into_response(),
    }
}

async fn openapi() -> Response {
    json_response(StatusCode::OK, OPENAPI)
}

/// The OpenAPI 3.1 document of the service's HTTP interface.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// Counts requests by route and status, and their latency.
async fn observe(req: Request, next: Next) -> Response {
    let route = match req.extensions().get::<MatchedPath>() {
        Some(p) => p.as_str().to_owned(),
        None => "unmatched".to_owned(),
    };
    let started = Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("swabstream_serve_requests_total", "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("swabstream_serve_request_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!("swabstream_serve_requests_total", "HTTP requests by route and status");
    describe_histogram!(
        "swabstream_serve_request_seconds",
        "Time from request to response, by route"
    );
    describe_counter!(
        "swabstream_serve_store_reads_total",
        "Reads of the view store (one per refresh interval, whatever the query load)"
    );
    describe_counter!("swabstream_serve_store_errors_total", "Reads of the view store that failed");
    describe_gauge!("swabstream_serve_stale", "1 while the last read of the view store failed");
    describe_gauge!("swabstream_serve_event_streams", "Server-Sent Event streams open");
}

/// A JSON response.
pub(crate) fn json_response(status: StatusCode, body: impl Into<axum::body::Body>) -> Response {
    let mut r = (status, body.into()).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}
