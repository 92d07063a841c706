//! The service over real TCP against a real SQLite view store: every route,
//! the filters, CSV, errors as data, authentication, `as_of`, the event
//! stream delivering a commit, stale serving through a store outage, and one
//! store read per refresh interval under load.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::Request;
use serde_json::{Value, json};
use swabstream_events::Day;
use swabstream_gateway::auth::{Credentials, new_token};
use swabstream_serve::{Options, Service};
use swabstream_store::{Version, ViewStore};
use swabstream_store_sqlite::SqliteStore;
use swabstream_views::*;

/// The version a new store starts with, live.
fn v1() -> Version {
    Version { name: "v1".into(), id: 1 }
}

const TOPIC: &str = "serve-test";
const INTERVAL: Duration = Duration::from_millis(100);

fn day(s: &str) -> Day {
    Day::parse(s).unwrap()
}

/// The partial rows of one partition for two days.
fn rows(partition: i32, scale: u64) -> Vec<ViewRow> {
    let d1 = day("2022-04-08");
    let d2 = day("2022-04-09");
    let p = partition as u64 + 1;
    let mut v = vec![];
    for (d, k) in [(d1, 1), (d2, 2)] {
        let n = 10 * k * p * scale;
        v.push(ViewRow::CityDaily(CityDaily {
            day: d,
            people_sampled: n,
            using_code: n * 3 / 4,
            percent_using_code: None,
            valid_scans: n + 2,
            rescans: 2,
            rejected: 1,
            duplicates: 1,
        }));
        for (district, share) in [("310104", 1), ("310115", 2)] {
            v.push(ViewRow::DistrictDaily(DistrictDaily {
                day: d,
                district: district.to_owned(),
                people_sampled: n * share / 3,
                using_code: n * share / 4,
                valid_scans: n * share / 3 + 1,
                rejected: 0,
            }));
        }
        for (site, hour) in [("XH-001", 8), ("XH-001", 9), ("PD-007", 9)] {
            v.push(ViewRow::SiteHourly(SiteHourly {
                day: d,
                site_id: site.to_owned(),
                hour,
                people_sampled: n / 3 + u64::from(hour),
                valid_scans: n / 3 + u64::from(hour) + 1,
            }));
        }
        v.push(ViewRow::MethodDaily(MethodDaily {
            day: d,
            method: "CODE_PERSONAL".to_owned(),
            people_sampled: n * 3 / 4,
        }));
        v.push(ViewRow::RejectionsDaily(RejectionsDaily {
            day: d,
            reason: "CODE_UNKNOWN".to_owned(),
            count: 1,
        }));
        v.push(ViewRow::CodesIssuedDaily(CodesIssuedDaily {
            day: d,
            kind: "PERSONAL".to_owned(),
            channel: "WECHAT".to_owned(),
            count: n,
        }));
    }
    v
}

struct Fixture {
    _dir: TempDir,
    path: PathBuf,
    writer: SqliteStore,
    epochs: Vec<i64>,
    addr: SocketAddr,
    token: String,
    reads: Arc<AtomicUsize>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir(name: &str) -> TempDir {
    let p = std::env::temp_dir().join(format!(
        "swabstream-serve-{name}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    ));
    std::fs::create_dir_all(&p).unwrap();
    TempDir(p)
}

fn metrics_handle() -> metrics_exporter_prometheus::PrometheusHandle {
    static H: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    H.get_or_init(|| {
        metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder().unwrap()
    })
    .clone()
}

async fn start(name: &str) -> Fixture {
    let dir = temp_dir(name);
    let path = dir.0.join("views.db");
    let mut writer = SqliteStore::open(&path, TOPIC).unwrap();
    writer.check_partition_count(2).unwrap();
    let mut epochs = vec![];
    for p in 0..2 {
        let claim = writer.claim(&v1(), p).unwrap();
        writer.commit(&v1(), p, claim.epoch, &rows(p, 1), 100 + i64::from(p), None).unwrap();
        epochs.push(claim.epoch);
    }
    let (token, hash) = new_token("analyst-1", &[5; 32]);
    let credentials = Credentials::parse(&format!(
        "[[device]]\nid = \"analyst-1\"\nsecret_sha256 = \"{hash}\"\n"
    ))
    .unwrap();
    let reads = Arc::new(AtomicUsize::new(0));
    let opener = {
        let path = path.clone();
        let reads = reads.clone();
        Box::new(move || {
            reads.fetch_add(1, Ordering::Relaxed);
            SqliteStore::open_existing(&path, TOPIC).map(|s| Box::new(s) as Box<dyn ViewStore>)
        })
    };
    let log_ends = Box::new(|| Ok(vec![(0, 150), (1, 101)]));
    let service = Service::start(
        opener,
        Some(log_ends),
        credentials,
        Options { refresh_interval: INTERVAL, reopen_each_read: true, max_streams: 100 },
        Some(metrics_handle()),
    );
    assert!(service.first_read(Duration::from_secs(10)).await, "the store was read");
    let listener = Service::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(service.serve(listener, async move {
        let _ = stopped.await;
    }));
    // The log-end reader runs beside the refresher: wait until both showed.
    let f = Fixture { _dir: dir, path, writer, epochs, addr, token, reads, _stop: stop };
    let fr = &f;
    wait_until("log ends in as_of", || async move {
        fr.get("/v1/summary").await.json()["as_of"]["lag"] == json!(50)
    })
    .await;
    f
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: hyper::HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn header(&self, h: &str) -> &str {
        self.headers.get(h).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
}

async fn send(addr: SocketAddr, path: &str, auth: Option<&str>, accept: Option<&str>) -> Reply {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let mut req = Request::get(path).header("host", addr.to_string());
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let resp = sender.send_request(req.body(Empty::<Bytes>::new()).unwrap()).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Reply { status: parts.status.as_u16(), headers: parts.headers, body }
}

impl Fixture {
    async fn get(&self, path: &str) -> Reply {
        send(self.addr, path, Some(&format!("Bearer {}", self.token)), None).await
    }

    fn commit(&mut self, scale: u64, offsets: [i64; 2]) {
        for p in 0..2 {
            self.writer
                .commit(
                    &v1(),
                    p,
                    self.epochs[p as usize],
                    &rows(p, scale),
                    offsets[p as usize],
                    None,
                )
                .unwrap();
        }
    }

    fn truth(&self) -> ViewSet {
        SqliteStore::open_existing(&self.path, TOPIC).unwrap().views().unwrap()
    }
}

async fn wait_until<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < Duration::from_secs(20), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_filters_csv_and_as_of() {
    let f = start("views").await;
    let truth = f.truth();

    // Every view, unfiltered, equals the store's summed rows.
    for view in VIEW_NAMES {
        let r = f.get(&format!("/v1/views/{view}")).await;
        assert_eq!(r.status, 200, "{view}: {}", r.text());
        let j = r.json();
        let want = serde_json::to_value(&truth).unwrap()[view].clone();
        assert_eq!(j["rows"], want, "{view}");
        assert_eq!(j["view"], view);
        assert_eq!(j["total"], want.as_array().unwrap().len());
    }
    let list = f.get("/v1/views").await.json();
    assert_eq!(list["views"], json!(VIEW_NAMES));

    // as_of: the checkpoints committed, the log ends, the lag, the commit time.
    let a = f.get("/v1/views/city_daily").await.json()["as_of"].clone();
    assert_eq!(a["stale"], false);
    assert_eq!(a["version"], "v1", "the live version is named");
    assert_eq!(a["partitions"][0]["checkpoint_offset"], 100);
    assert_eq!(a["partitions"][0]["log_end"], 150);
    assert_eq!(a["partitions"][0]["lag"], 50);
    assert_eq!(a["partitions"][1]["checkpoint_offset"], 101);
    assert_eq!(a["partitions"][1]["lag"], 0);
    assert_eq!(a["lag"], 50);
    assert!(a["partitions"][0]["committed_at"].as_str().unwrap().ends_with("+08:00"), "{a}");
    assert!(a["read_at"].is_string());

    // Filters.
    let r = f.get("/v1/views/district_daily?day=2022-04-09&district=310104").await.json();
    assert_eq!(r["total"], 1);
    assert_eq!(r["rows"][0]["district"], "310104");
    assert_eq!(r["rows"][0]["day"], "2022-04-09");
    let want = truth
        .district_daily
        .iter()
        .find(|x| x.day == day("2022-04-09") && x.district == "310104")
        .unwrap();
    assert_eq!(r["rows"][0]["people_sampled"], want.people_sampled);
    let r = f.get("/v1/views/site_hourly?site_id=XH-001&hour=9").await.json();
    assert_eq!(r["total"], 2, "two days");
    assert!(
        r["rows"].as_array().unwrap().iter().all(|x| x["site_id"] == "XH-001" && x["hour"] == 9)
    );
    let r = f.get("/v1/views/city_daily?from=2022-04-09&to=2022-04-30").await.json();
    assert_eq!(r["total"], 1);
    assert_eq!(r["rows"][0]["day"], "2022-04-09");
    let r = f.get("/v1/views/site_hourly?limit=2&offset=1").await.json();
    assert_eq!(r["total"], 6);
    assert_eq!(r["rows"].as_array().unwrap().len(), 2);
    assert_eq!(r["next_offset"], 3);
    assert_eq!(r["rows"][0], serde_json::to_value(&truth.site_hourly[1]).unwrap());
    let r = f.get("/v1/views/codes_issued_daily?channel=WECHAT&kind=PERSONAL&day=2022-04-08").await;
    assert_eq!(r.json()["total"], 1);

    // CSV, by parameter or by Accept, equals the views' CSV rendering.
    let r = f.get("/v1/views/district_daily?format=csv").await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").starts_with("text/csv"));
    assert_eq!(r.text(), render_csv(&truth, "district_daily").unwrap());
    assert!(r.text().starts_with("day,district,"), "a header row: {}", r.text());
    let r = send(
        f.addr,
        "/v1/views/city_daily?day=2022-04-09",
        Some(&format!("Bearer {}", f.token)),
        Some("text/csv"),
    )
    .await;
    assert!(r.header("content-type").starts_with("text/csv"));
    let lines: Vec<&str> = r
        .body
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| std::str::from_utf8(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "header and one day: {lines:?}");
    assert!(lines[1].starts_with("2022-04-09,"));
    assert_eq!(r.header("x-swabstream-stale"), "false");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summary_sums_the_views() {
    let f = start("summary").await;
    let truth = f.truth();
    let s = f.get("/v1/summary?day=2022-04-09").await.json();
    let city = truth.city(day("2022-04-09")).unwrap();
    assert_eq!(s["day"], "2022-04-09");
    assert_eq!(s["days"], json!(["2022-04-08", "2022-04-09"]));
    assert_eq!(s["city"]["people_sampled"], city.people_sampled);
    assert_eq!(s["city"]["using_code"], city.using_code);
    assert_eq!(s["city"]["percent_using_code"], json!(city.percent_using_code));
    assert_eq!(s["city"]["rescans"], city.rescans);
    assert_eq!(s["districts"].as_array().unwrap().len(), 16);
    let xuhui = &s["districts"][1];
    assert_eq!(xuhui["district"], "310104");
    assert_eq!(xuhui["name"], "Xuhui");
    let hours = s["hours"].as_array().unwrap();
    assert_eq!(hours.len(), 24);
    let nine: u64 = truth
        .site_hourly
        .iter()
        .filter(|r| r.day == day("2022-04-09") && r.hour == 9)
        .map(|r| r.people_sampled)
        .sum();
    assert_eq!(hours[9]["people_sampled"], nine);
    assert_eq!(s["busiest_sites"][0]["site_id"], "XH-001");
    assert_eq!(s["methods"][0]["method"], "CODE_PERSONAL");
    assert_eq!(s["rejections"][0]["reason"], "CODE_UNKNOWN");
    let channels: Vec<&str> = s["codes_by_channel"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["channel"].as_str().unwrap())
        .collect();
    assert_eq!(channels, ["APP", "WECHAT", "ALIPAY", "OFFLINE"]);
    assert_eq!(s["codes_by_channel"][0]["count"], 0, "a failed channel shows as zero");
    // Codes: issued on the day, and on or before it (the 8th's codes too).
    let wechat = |d: &str| -> u64 {
        truth
            .codes_issued_daily
            .iter()
            .filter(|r| r.channel == "WECHAT" && r.day <= day(d))
            .map(|r| r.count)
            .sum()
    };
    let on_day = wechat("2022-04-09") - wechat("2022-04-08");
    assert_eq!(s["codes_by_channel"][1]["count"], on_day);
    assert_eq!(s["codes_by_channel"][1]["to_date"], wechat("2022-04-09"));
    assert!(wechat("2022-04-08") > 0, "the fixture has codes issued the day before");
    assert_eq!(
        s["codes_issued"],
        json!([{"kind": "PERSONAL", "channel": "WECHAT", "count": on_day, "to_date": wechat("2022-04-09")}])
    );
    let before = f.get("/v1/summary?day=2022-04-08").await.json();
    assert_eq!(before["codes_by_channel"][1]["to_date"], wechat("2022-04-08"));
    // Without a day: the latest.
    assert_eq!(f.get("/v1/summary").await.json()["day"], "2022-04-09");
    assert_eq!(f.get("/v1/summary?day=2022-04-08").await.json()["day"], "2022-04-08");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_data_and_tokens_are_required() {
    let f = start("errors").await;
    let r = f.get("/v1/views/nope").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["views"], json!(VIEW_NAMES));
    for (path, param, says) in [
        ("/v1/views/city_daily?day=2022-13-01", "day", "not a date"),
        ("/v1/views/city_daily?from=yesterday", "from", "not a date"),
        ("/v1/views/city_daily?from=2022-04-09&to=2022-04-01", "from", "after"),
        ("/v1/views/city_daily?site_id=XH-001", "site_id", "does not apply to city_daily"),
        ("/v1/views/site_hourly?hour=24", "hour", "0 to 23"),
        ("/v1/views/district_daily?district=999999", "district", "not a district code"),
        ("/v1/views/city_daily?limit=0", "limit", "positive"),
        ("/v1/views/city_daily?offset=-1", "offset", "whole number"),
        ("/v1/views/city_daily?colour=red", "colour", "unknown parameter"),
        ("/v1/views/city_daily?format=xml", "format", "json"),
        ("/v1/summary?day=9th", "day", "not a date"),
        ("/v1/stream?hour=3", "hour", "unknown parameter"),
    ] {
        let r = f.get(path).await;
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        let j = r.json();
        assert_eq!(j["parameter"], param, "{path}: {j}");
        assert!(j["error"].as_str().unwrap().contains(says), "{path}: {j}");
    }

    // Authentication: none, malformed, unknown analyst, wrong secret; the
    // query-string form for EventSource.
    let (wrong, _) = new_token("analyst-1", &[6; 32]);
    let (stranger, _) = new_token("stranger", &[5; 32]);
    for auth in [
        None,
        Some("Basic abc".to_owned()),
        Some(format!("Bearer {wrong}")),
        Some(format!("Bearer {stranger}")),
    ] {
        for path in ["/v1/views", "/v1/views/city_daily", "/v1/summary", "/v1/stream"] {
            let r = send(f.addr, path, auth.as_deref(), None).await;
            assert_eq!(r.status, 401, "{path} with {auth:?}");
            assert_eq!(r.header("www-authenticate"), "Bearer");
        }
    }
    let r = send(f.addr, &format!("/v1/summary?access_token={}", f.token), None, None).await;
    assert_eq!(r.status, 200);
    // The open routes.
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json", "/", "/assets/app.js"] {
        assert_eq!(send(f.addr, path, None, None).await.status, 200, "{path}");
    }
    assert_eq!(send(f.addr, "/assets/nothing.js", None, None).await.status, 404);
    let m = send(f.addr, "/metrics", None, None).await.text();
    assert!(m.contains("swabstream_serve_store_reads_total"), "{m}");
    assert!(m.contains("swabstream_serve_requests_total"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_matches_the_routes() {
    let f = start("openapi").await;
    let doc: Value = serde_json::from_str(swabstream_serve::OPENAPI).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let documented: Vec<String> = doc["paths"].as_object().unwrap().keys().cloned().collect();
    let mut routed: Vec<String> = swabstream_serve::ROUTES.iter().map(|r| r.to_string()).collect();
    let mut documented_sorted = documented.clone();
    documented_sorted.sort();
    routed.sort();
    assert_eq!(documented_sorted, routed, "openapi.json documents exactly the routes");
    // And each documented path is routed: no 404 from the router (the view
    // and asset paths get a known name).
    for path in &documented {
        let mut concrete = path.replace("{view}", "city_daily").replace("{file}", "app.js");
        if path == "/v1/stream" {
            // A stream never ends: a bad day shows it is routed, answered at once.
            concrete.push_str("?day=never");
        }
        let r = f.get(&concrete).await;
        assert_ne!(r.status, 404, "{path} is routed");
        if path.starts_with("/v1/") {
            assert!(r.json().is_object(), "{path} answers JSON");
        }
    }
    assert_eq!(send(f.addr, "/v2/nothing", None, None).await.status, 404);

    // Every field a summary answers is documented in the Summary schema,
    // arrays' items included, so a field added to the answer cannot be
    // left out of the contract.
    let summary = f.get("/v1/summary?day=2022-04-09").await.json();
    let schemas = &doc["components"]["schemas"];
    let mut undocumented = vec![];
    undocumented_fields(&summary, &schemas["Summary"], schemas, "summary", &mut undocumented);
    assert!(undocumented.is_empty(), "openapi.json does not document {undocumented:?}");
}

/// Collects the paths of the fields of `value` that `schema` does not name.
fn undocumented_fields(
    value: &Value,
    schema: &Value,
    schemas: &Value,
    at: &str,
    out: &mut Vec<String>,
) {
    let schema = match schema["$ref"].as_str() {
        Some(r) => &schemas[r.trim_start_matches("#/components/schemas/")],
        None => schema,
    };
    match value {
        Value::Object(fields) => {
            for (k, v) in fields {
                let documented = &schema["properties"][k];
                if documented.is_null() {
                    out.push(format!("{at}.{k}"));
                } else {
                    undocumented_fields(v, documented, schemas, &format!("{at}.{k}"), out);
                }
            }
        }
        Value::Array(items) => {
            for v in items {
                undocumented_fields(v, &schema["items"], schemas, &format!("{at}[]"), out);
            }
        }
        _ => {}
    }
}

/// Reads events from `/v1/stream` until `pred` holds for one; returns it.
async fn next_event(
    body: &mut hyper::body::Incoming,
    buf: &mut String,
    mut pred: impl FnMut(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let data: String = event
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|l| l.trim_start())
                .collect();
            if event.lines().any(|l| l == "event: summary") {
                let v: Value = serde_json::from_str(&data).unwrap();
                if pred(&v) {
                    return v;
                }
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = tokio::time::timeout(left, body.frame())
            .await
            .expect("an event in time")
            .expect("the stream stays open")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            buf.push_str(std::str::from_utf8(&data).unwrap());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_delivers_a_commit() {
    let mut f = start("stream").await;
    let stream = tokio::net::TcpStream::connect(f.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("/v1/stream?day=2022-04-09&access_token={}", f.token))
        .header("host", f.addr.to_string())
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let mut body = resp.into_body();
    let mut buf = String::new();
    let first = next_event(&mut body, &mut buf, |_| true).await;
    let before = first["city"]["people_sampled"].as_u64().unwrap();
    assert_eq!(before, f.truth().city(day("2022-04-09")).unwrap().people_sampled);

    f.commit(2, [120, 130]);
    let after = next_event(&mut body, &mut buf, |v| v["city"]["people_sampled"] != before).await;
    let want = f.truth().city(day("2022-04-09")).unwrap().people_sampled;
    assert_eq!(after["city"]["people_sampled"], want);
    assert_eq!(after["as_of"]["partitions"][1]["checkpoint_offset"], 130);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_serves_the_last_views_marked_stale() {
    let f = start("stale").await;
    let before = f.get("/v1/summary").await.json();
    assert_eq!(send(f.addr, "/readyz", None, None).await.status, 200);

    let away = f.path.with_extension("away");
    move_db(&f.path, &away);
    let fr = &f;
    wait_until(
        "stale",
        || async move { fr.get("/v1/summary").await.json()["as_of"]["stale"] == true },
    )
    .await;
    let during = f.get("/v1/summary").await.json();
    assert_eq!(during["city"], before["city"], "the last numbers keep being served");
    assert!(during["as_of"]["problem"].as_str().unwrap().contains("no view store"), "{during}");
    assert!(during["as_of"]["read_at"].is_string(), "the time of the last good read is kept");
    tokio::time::sleep(INTERVAL * 3).await;
    let later = f.get("/v1/summary").await.json();
    assert_eq!(later["as_of"]["read_at"], during["as_of"]["read_at"], "no read since");
    assert_ne!(later["as_of"]["checked_at"], during["as_of"]["checked_at"], "but tried again");
    let ready = send(f.addr, "/readyz", None, None).await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["status"], "stale");
    let csv = f.get("/v1/views/city_daily?format=csv").await;
    assert_eq!(csv.status, 200);
    assert_eq!(csv.header("x-swabstream-stale"), "true");

    move_db(&away, &f.path);
    let addr = f.addr;
    wait_until(
        "fresh again",
        || async move { send(addr, "/readyz", None, None).await.status == 200 },
    )
    .await;
    let after = f.get("/v1/summary").await.json();
    assert_eq!(after["as_of"]["stale"], false);
    assert_eq!(after["city"], before["city"]);
}

fn move_db(from: &Path, to: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let a = PathBuf::from(format!("{}{suffix}", from.display()));
        let b = PathBuf::from(format!("{}{suffix}", to.display()));
        if a.exists() {
            std::fs::rename(&a, &b).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_is_read_once_per_interval_whatever_the_load() {
    let f = start("load").await;
    let started = Instant::now();
    let reads_before = f.reads.load(Ordering::Relaxed);
    let mut tasks = vec![];
    for _ in 0..8 {
        let addr = f.addr;
        let auth = format!("Bearer {}", f.token);
        tasks.push(tokio::spawn(async move {
            for i in 0..100 {
                let path = if i % 2 == 0 { "/v1/summary" } else { "/v1/views/site_hourly?hour=9" };
                assert_eq!(send(addr, path, Some(&auth), None).await.status, 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let reads = f.reads.load(Ordering::Relaxed) - reads_before;
    let intervals = started.elapsed().as_millis() / INTERVAL.as_millis() + 2;
    assert!(
        reads as u128 <= intervals,
        "800 requests made {reads} store reads in {:?} (refresh every {INTERVAL:?})",
        started.elapsed()
    );
}
