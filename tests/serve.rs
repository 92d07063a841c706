//! `swabstream serve` end to end: the real binary on a store a real worker
//! fills from a real broker — the HTTP API equal to the views, `as_of`
//! against the log's ends, the event stream delivering what the worker
//! applies, and the dashboard in a real browser (headless Chromium through
//! chromedriver) showing the views' numbers and following new events without
//! a reload.

mod common;

use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Broker, Env, end_offsets, wait_until};
use serde_json::{Value, json};
use swabstream_views::{ViewSet, render_csv};

/// A running `swabstream serve`.
struct Serve {
    child: Child,
    addr: SocketAddr,
    sql: SocketAddr,
    token: String,
}

impl Serve {
    fn start(env: &Env) -> Serve {
        let o = env.run(&["credential", "--device", "analyst-1"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let creds = env.dir.join("serve.credentials");
        std::fs::write(&creds, &o.stdout).unwrap();
        let token = String::from_utf8(o.stderr).unwrap().lines().last().unwrap().trim().to_owned();
        let mut config = std::fs::read_to_string(&env.config).unwrap();
        config.push_str(&format!(
            "[serve]\nlisten = \"127.0.0.1:0\"\nsql_listen = \"127.0.0.1:0\"\ncredentials = \"{}\"\nrefresh_interval = \"200ms\"\n",
            creds.display()
        ));
        std::fs::write(&env.config, config).unwrap();
        let log = std::fs::File::create(env.dir.join("serve.log")).unwrap();
        let mut child = env.cmd(&["serve"]).stdout(Stdio::piped()).stderr(log).spawn().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("serve printed `{line}`: {}", env.log("serve")))
            .parse()
            .unwrap();
        line.clear();
        out.read_line(&mut line).unwrap();
        let sql = line
            .trim()
            .strip_prefix("sql listening on ")
            .unwrap_or_else(|| panic!("serve printed `{line}`: {}", env.log("serve")))
            .parse()
            .unwrap();
        Serve { child, addr, sql, token }
    }

    fn get(&self, path: &str) -> Reply {
        http(self.addr, "GET", path, Some(&self.token), None)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Reply {
    status: u16,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`).
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // Read by Content-Length: chromedriver keeps connections open whatever
    // the request says, so the end of the stream cannot mark the end of a reply.
    let mut raw = vec![];
    let mut buf = [0u8; 65536];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            let body = &raw[end + 4..];
            let complete = match length {
                Some(n) => body.len() >= n,
                None if head.contains("transfer-encoding: chunked") => body.ends_with(b"0\r\n\r\n"),
                None => false,
            };
            if complete {
                break;
            }
        }
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head");
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let mut body = raw[end + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    Reply { status, body }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = vec![];
    loop {
        let Some(nl) = b.windows(2).position(|w| w == b"\r\n") else { return out };
        let size =
            usize::from_str_radix(std::str::from_utf8(&b[..nl]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[nl + 2..nl + 2 + size]);
        b = &b[nl + 2 + size + 2..];
    }
}

/// A Server-Sent Events stream read line by line.
struct Events {
    reader: BufReader<TcpStream>,
}

impl Events {
    fn open(serve: &Serve, query: &str) -> Events {
        let mut s = TcpStream::connect(serve.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        write!(
            s,
            "GET /v1/stream?access_token={}{query} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
            serve.token, serve.addr
        )
        .unwrap();
        let mut reader = BufReader::new(s);
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        assert!(status.contains(" 200 "), "stream: {status}");
        Events { reader }
    }

    /// The next `summary` event for which `pred` holds.
    fn next(&mut self, limit: Duration, mut pred: impl FnMut(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            assert!(started.elapsed() < limit, "no such event within {limit:?}");
            let mut line = String::new();
            assert!(self.reader.read_line(&mut line).unwrap() > 0, "the stream ended");
            // One event is one chunk, so a data line arrives whole.
            if let Some(data) = line.trim_end().strip_prefix("data: ")
                && let Ok(v) = serde_json::from_str::<Value>(data)
                && pred(&v)
            {
                return v;
            }
        }
    }
}

/// The first `n` lines of `events` into one file, the rest into another:
/// published one after the other they are the whole day.
fn split(events: &Path, dir: &Path, n: usize) -> (PathBuf, PathBuf) {
    let text = std::fs::read_to_string(events).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let (a, b) = (dir.join("first.jsonl"), dir.join("second.jsonl"));
    std::fs::write(&a, lines[..n].join("\n") + "\n").unwrap();
    std::fs::write(&b, lines[n..].join("\n") + "\n").unwrap();
    (a, b)
}

fn caught_up(env: &Env, broker: &Broker) {
    let end = end_offsets(&broker.addr, &env.topic, env.partitions);
    wait_until(Duration::from_secs(120), "the worker caught up", || env.stored_offsets() == end);
}

/// The views the service answers, view by view (every row).
fn served_views(serve: &Serve) -> ViewSet {
    let mut all = serde_json::Map::new();
    for view in swabstream_views::VIEW_NAMES {
        let r = serve.get(&format!("/v1/views/{view}?limit=1000000"));
        assert_eq!(r.status, 200, "{view}: {}", r.text());
        all.insert(view.to_owned(), r.json()["rows"].clone());
    }
    serde_json::from_value(Value::Object(all)).unwrap()
}

#[test]
fn serve_answers_what_the_worker_applied_and_streams_new_events() {
    let broker = Broker::start("serve-api");
    let env = Env::new("serve-api", &broker.addr, 3);
    let (events, truth) = env.simulate(3000, 11);
    let lines = std::fs::read_to_string(&events).unwrap().lines().count();
    let (first, second) = split(&events, &env.dir, lines / 2);
    env.publish(&first);
    let mut worker = env.spawn_worker("worker", &[]);
    caught_up(&env, &broker);
    let serve = Serve::start(&env);
    wait_until(Duration::from_secs(30), "serve ready", || {
        http(serve.addr, "GET", "/readyz", None, None).status == 200
    });

    // The API answers the store's views, and says how fresh they are.
    let stored = env.views();
    common::assert_views_equal(&served_views(&serve), &stored, "served views");
    let r = serve.get("/v1/views/district_daily?format=csv");
    assert_eq!(r.text(), render_csv(&stored, "district_daily").unwrap());
    let a = serve.get("/v1/summary").json()["as_of"].clone();
    let parts = a["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 3, "{a}");
    let ends = end_offsets(&broker.addr, &env.topic, env.partitions);
    wait_until(Duration::from_secs(10), "the log ends in as_of", || {
        let a = serve.get("/v1/summary").json()["as_of"].clone();
        a["lag"] == json!(0)
            && a["partitions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["log_end"].as_i64().unwrap_or(-1))
                .sum::<i64>()
                == ends
    });
    for p in parts {
        assert!(p["committed_at"].is_string(), "{p}");
        assert!(p["checkpoint_offset"].as_i64().unwrap() > 0, "{p}");
    }
    assert_eq!(http(serve.addr, "GET", "/v1/summary", None, None).status, 401);

    // SQL: psql gets the rows the HTTP API answers, view by view; writes are refused.
    for view in swabstream_views::VIEW_NAMES {
        let api = serve.get(&format!("/v1/views/{view}?limit=1000000")).json()["rows"].clone();
        let columns: Vec<String> = api[0].as_object().unwrap().keys().cloned().collect();
        let keys: Vec<String> = columns.iter().filter(|c| !is_value(c)).cloned().collect();
        let sql = format!("SELECT {} FROM {view} ORDER BY {}", columns.join(", "), keys.join(", "));
        let mut got = psql(&serve, &sql).expect("a SELECT runs");
        let mut want: Vec<Vec<String>> = api
            .as_array()
            .unwrap()
            .iter()
            .map(|r| columns.iter().map(|c| cell(&r[c])).collect())
            .collect();
        // serde_json orders the columns by name: sort both sides' rows alike.
        got.sort();
        want.sort();
        assert_eq!(got.len(), want.len(), "{view}: rows");
        for (g, w) in got.iter().zip(&want) {
            assert!(same_cells(g, w), "{view}: psql {g:?} vs API {w:?}");
        }
    }
    let n = psql(&serve, "SELECT count(*) AS n FROM site_hourly").unwrap();
    assert_eq!(n[0][0], stored.site_hourly.len().to_string());
    for write in [
        "DELETE FROM city_daily",
        "INSERT INTO city_daily (day) VALUES ('2022-01-01')",
        "DROP TABLE city_daily",
        "ATTACH DATABASE '/tmp/x.db' AS x",
        "PRAGMA query_only = OFF",
    ] {
        let err = psql(&serve, write).expect_err(write);
        assert!(err.contains("read-only"), "{write}: {err}");
    }
    let wrong = Command::new("psql")
        .arg(format!(
            "host={} port={} user=analyst-1 dbname=views sslmode=disable",
            serve.sql.ip(),
            serve.sql.port()
        ))
        .args(["-At", "-c", "SELECT 1"])
        .env("PGPASSWORD", "analyst-1.wrong")
        .output()
        .unwrap();
    assert!(!wrong.status.success(), "a wrong token is refused");

    // The stream: the numbers now, then the rest of the day once applied.
    // The day pinned: the latest day may move as the rest of the day arrives.
    let day = serve.get("/v1/summary").json()["day"].as_str().unwrap().to_owned();
    let mut stream = Events::open(&serve, &format!("&day={day}"));
    let now = stream.next(Duration::from_secs(10), |_| true);
    assert_eq!(now["day"], day.as_str());
    let city =
        |v: &ViewSet| v.city_daily.iter().find(|r| r.day.to_string() == day).unwrap().clone();
    assert_eq!(now["city"]["people_sampled"], city(&stored).people_sampled);
    env.publish(&second);
    let want = city(&truth).people_sampled;
    let later = stream.next(Duration::from_secs(120), |v| v["city"]["people_sampled"] == want);
    assert_eq!(later["city"]["using_code"], city(&truth).using_code);
    caught_up(&env, &broker);
    wait_until(Duration::from_secs(10), "every view served equals the truth", || {
        served_views(&serve).differences(&truth).is_empty()
    });
    let _ = worker.kill();
    let _ = worker.wait();
}

/// Whether a column of a view is a value (not part of its key).
fn is_value(c: &str) -> bool {
    matches!(
        c,
        "people_sampled"
            | "using_code"
            | "percent_using_code"
            | "valid_scans"
            | "rescans"
            | "rejected"
            | "duplicates"
            | "count"
    )
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Cells equal as text, or as numbers (`75` and `75.0` are one number).
fn same_cells(a: &[String], b: &[String]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x == y || matches!((x.parse::<f64>(), y.parse::<f64>()), (Ok(p), Ok(q)) if p == q)
        })
}

/// Runs one statement with `psql` (PostgreSQL's own client) as the analyst:
/// the rows (`|`-separated cells), or psql's error output.
fn psql(serve: &Serve, sql: &str) -> Result<Vec<Vec<String>>, String> {
    let o = Command::new("psql")
        .arg(format!(
            "host={} port={} user=analyst-1 dbname=views sslmode=disable",
            serve.sql.ip(),
            serve.sql.port()
        ))
        .args(["-At", "-F", "|", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGPASSWORD", &serve.token)
        .output()
        .expect("psql runs (Debian: apt-get install -y postgresql-client)");
    if !o.status.success() {
        return Err(String::from_utf8_lossy(&o.stderr).into_owned());
    }
    Ok(String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| l.split('|').map(str::to_owned).collect())
        .collect())
}

// ---- the dashboard in a real browser -------------------------------------

const CHROMIUM_INSTALL: &str = "apt-get update && apt-get install -y chromium chromium-driver";

/// chromedriver on a free port, and one headless Chromium session.
struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    _profile: PathBuf,
}

impl Browser {
    fn start(dir: &Path) -> Browser {
        for bin in ["chromium", "chromedriver"] {
            let found = Command::new("sh").arg("-c").arg(format!("command -v {bin}")).output();
            assert!(
                found.is_ok_and(|o| o.status.success()),
                "the dashboard test needs `{bin}` (headless Chromium and its WebDriver); install them with: {CHROMIUM_INSTALL}"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = std::fs::File::create(dir.join("chromedriver.log")).unwrap();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_until(Duration::from_secs(30), "chromedriver listens", || {
            TcpStream::connect(addr).is_ok()
                && http(addr, "GET", "/status", None, None).json()["value"]["ready"] == true
        });
        let profile = dir.join("chromium-profile");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium_binary(),
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-dev-shm-usage", "--window-size=1280,2400",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        }}});
        let r = http(addr, "POST", "/session", None, Some(&caps));
        let session = r.json()["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {}", r.text()))
            .to_owned();
        Browser { driver, addr, session, _profile: profile }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let r = http(
            self.addr,
            method,
            &format!("/session/{}{path}", self.session),
            None,
            body.as_ref(),
        );
        assert_eq!(r.status, 200, "webdriver {method} {path}: {}", r.text());
        r.json()["value"].clone()
    }

    fn open(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url })));
    }

    /// Runs `script` (a function body) in the page and returns its value.
    fn eval(&self, script: &str) -> Value {
        self.call("POST", "/execute/sync", Some(json!({ "script": script, "args": [] })))
    }

    fn screenshot(&self, to: &Path) {
        let b64 = self.call("GET", "/screenshot", None);
        std::fs::write(to, base64_decode(b64.as_str().unwrap())).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = http(self.addr, "DELETE", &format!("/session/{}", self.session), None, None);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn chromium_binary() -> String {
    let o = Command::new("sh").arg("-c").arg("command -v chromium").output().unwrap();
    String::from_utf8(o.stdout).unwrap().trim().to_owned()
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let bytes: Vec<u8> = s.bytes().filter(|c| !matches!(c, b'=' | b'\n' | b'\r')).collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= u32::from(val(*c)) << (18 - 6 * i);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

/// What the page shows: the headline figures and the district table, as the
/// numbers the elements carry.
const READ_PAGE: &str = r#"
const v = (id) => document.getElementById(id).dataset.value;
const rows = Array.from(document.querySelectorAll('#district-table tbody tr')).map((tr) => ({
  district: tr.dataset.district,
  people_sampled: Number(tr.querySelector('.people').dataset.value),
  using_code: Number(tr.querySelector('.using').dataset.value),
  valid_scans: Number(tr.querySelector('.scans').dataset.value),
  rejected: Number(tr.querySelector('.rejected').dataset.value),
}));
return {
  day: document.body.dataset.day || null,
  people_sampled: v('people-sampled') ? Number(v('people-sampled')) : null,
  using_code: v('using-code') ? Number(v('using-code')) : null,
  valid_scans: v('valid-scans') ? Number(v('valid-scans')) : null,
  rejected: v('rejected') ? Number(v('rejected')) : null,
  headline: document.getElementById('people-sampled').textContent,
  freshness: document.getElementById('freshness').textContent,
  districts: rows,
  channels: Array.from(document.querySelectorAll('#channel-table tbody tr')).map((tr) => ({
    channel: tr.dataset.channel,
    count: Number(tr.querySelector('.on-day').dataset.value),
    to_date: Number(tr.querySelector('.to-date').dataset.value),
  })),
  sites: document.querySelectorAll('#site-table tbody tr').length,
  map: !!document.querySelector('#map canvas'),
};
"#;

fn expected_page(views: &ViewSet, day: &str) -> Value {
    let c = views.city_daily.iter().find(|r| r.day.to_string() == day).unwrap();
    let districts: Vec<Value> = swabstream_events::DISTRICTS
        .iter()
        .map(|(code, _, _)| {
            let r = views
                .district_daily
                .iter()
                .find(|r| r.day.to_string() == day && r.district == *code);
            json!({
                "district": code,
                "people_sampled": r.map_or(0, |r| r.people_sampled),
                "using_code": r.map_or(0, |r| r.using_code),
                "valid_scans": r.map_or(0, |r| r.valid_scans),
                "rejected": r.map_or(0, |r| r.rejected),
            })
        })
        .collect();
    // Codes per channel: issued on the day, and on or before it.
    let channels: Vec<Value> = ["APP", "WECHAT", "ALIPAY", "OFFLINE"]
        .iter()
        .map(|channel| {
            let sum = |on_day: bool| -> u64 {
                views
                    .codes_issued_daily
                    .iter()
                    .filter(|r| r.channel == *channel)
                    .filter(|r| if on_day { r.day == c.day } else { r.day <= c.day })
                    .map(|r| r.count)
                    .sum()
            };
            json!({ "channel": channel, "count": sum(true), "to_date": sum(false) })
        })
        .collect();
    json!({
        "people_sampled": c.people_sampled,
        "using_code": c.using_code,
        "valid_scans": c.valid_scans,
        "rejected": c.rejected,
        "districts": districts,
        "channels": channels,
    })
}

fn shown(page: &Value) -> Value {
    json!({
        "people_sampled": page["people_sampled"],
        "using_code": page["using_code"],
        "valid_scans": page["valid_scans"],
        "rejected": page["rejected"],
        "districts": page["districts"],
        "channels": page["channels"],
    })
}

#[test]
fn the_dashboard_shows_the_views_and_follows_new_events_in_a_browser() {
    let broker = Broker::start("serve-page");
    let env = Env::new("serve-page", &broker.addr, 2);
    let (events, truth) = env.simulate(2000, 5);
    let lines = std::fs::read_to_string(&events).unwrap().lines().count();
    let (first, second) = split(&events, &env.dir, lines / 2);
    env.publish(&first);
    let mut worker = env.spawn_worker("worker", &[]);
    caught_up(&env, &broker);
    let serve = Serve::start(&env);
    let browser = Browser::start(&env.dir);

    let stored = env.views();
    // The day pinned in the link: the latest day may move as the rest arrives.
    let day = serve.get("/v1/summary").json()["day"].as_str().unwrap().to_owned();
    browser.open(&format!("http://{}/#token={}&day={day}", serve.addr, serve.token));
    let want = expected_page(&stored, &day);
    let mut page = Value::Null;
    wait_until(Duration::from_secs(30), "the page shows the views", || {
        page = browser.eval(READ_PAGE);
        shown(&page) == want
    });
    assert_eq!(page["day"], day.as_str());
    let sites: std::collections::BTreeSet<&str> = stored
        .site_hourly
        .iter()
        .filter(|r| r.day.to_string() == day)
        .map(|r| r.site_id.as_str())
        .collect();
    assert_eq!(page["sites"], sites.len().min(20), "the busiest sites: {page}");
    assert!(page["map"] == true, "the district map is drawn: {page}");
    // The simulator issues codes before the sampling day: the day's page
    // shows them to date, not a row of zeros.
    let to_date: u64 =
        page["channels"].as_array().unwrap().iter().map(|c| c["to_date"].as_u64().unwrap()).sum();
    assert!(to_date > 0, "codes issued to date are shown: {page}");
    assert!(page["freshness"].as_str().unwrap().contains("分区"), "freshness line: {page}");
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let before = shots.join("dashboard-before.png");
    browser.screenshot(&before);
    println!("dashboard screenshot: {}", before.display());

    // New events applied: the page follows without a reload.
    let marker = browser.eval("window.__same_page = 42; return 1;");
    assert_eq!(marker, 1);
    env.publish(&second);
    let want = expected_page(&truth, &day);
    wait_until(Duration::from_secs(120), "the page shows the new numbers", || {
        page = browser.eval(READ_PAGE);
        shown(&page) == want
    });
    assert_eq!(browser.eval("return window.__same_page;"), 42, "no reload");
    // The language switch, remembered.
    browser.eval("document.getElementById('lang').click(); return 1;");
    let english = browser.eval(READ_PAGE);
    assert!(english["freshness"].as_str().unwrap().contains("partitions"), "{english}");
    assert!(
        english["headline"].as_str().unwrap().contains('k')
            || english["headline"].as_str().unwrap().contains('M')
            || english["people_sampled"].as_u64().unwrap() < 10_000
    );
    assert_eq!(browser.eval("return localStorage.getItem('swabstream.lang');"), "en");
    let after = shots.join("dashboard-after.png");
    browser.screenshot(&after);
    println!("dashboard screenshot: {}", after.display());
    let _ = worker.kill();
    let _ = worker.wait();
}
