//! The compose stack's Grafana, as far as it can be checked without Grafana
//! (it is in none of Debian, PyPI or npm, so it is not run here): the
//! provisioned data source signs in to a real `swabstream serve` with the
//! stack's own credentials, and every SQL statement of the provisioned
//! "Sampling day" dashboard — its day variable and each panel's query — runs
//! on serve's SQL endpoint after a simulated day was published and projected
//! by a real worker, answering rows with the columns the panel shows, and the
//! numbers of the views.
//!
//! What Grafana would do that this does not: Grafana's PostgreSQL data
//! source (pgx) sends a query with the extended protocol (Parse, Describe,
//! Bind, Execute); `psql` here uses the simple one. pgx's connection ping,
//! the statement `-- ping`, is sent as Grafana sends it. The dashboard uses no
//! time macro (`$__timeFilter` and the like are Grafana's, expanded before
//! the query is sent): the day is a dashboard variable, `${day}`, which this
//! test expands as Grafana does for a single-valued variable in a SQL data
//! source (the value as is, single quotes doubled); any other `$` left in a
//! query fails the test, so a macro added later cannot go unnoticed.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Broker, Env, end_offsets, wait_until};
use serde_json::Value;
use swabstream_views::ViewSet;

/// A file of the repository.
fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The value of the first `key: value` line (list dash allowed) of a plain
/// YAML file, unquoted. The provisioning file is kept to such lines.
fn yaml_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let l = l.trim_start().trim_start_matches("- ");
        let v = l.strip_prefix(key)?.strip_prefix(':')?;
        Some(v.trim().trim_matches('"').to_owned())
    })
}

/// The lines of one top-level service of docker-compose.yml.
fn compose_service<'a>(compose: &'a str, name: &str) -> Vec<&'a str> {
    let head = format!("  {name}:");
    let mut lines = compose.lines().skip_while(|l| *l != head);
    assert!(lines.next().is_some(), "docker-compose.yml has no service `{name}`");
    lines.take_while(|l| l.is_empty() || l.starts_with("   ") || l.starts_with("  #")).collect()
}

/// The repository file a top-level secret of docker-compose.yml defaults to.
fn compose_secret_file(compose: &str, name: &str) -> PathBuf {
    let head = format!("  {name}:");
    let line = compose
        .lines()
        .skip_while(|l| !l.starts_with("secrets:"))
        .skip_while(|l| *l != head)
        .nth(1)
        .unwrap_or_else(|| panic!("docker-compose.yml defines no secret `{name}`"));
    let file = line.trim().strip_prefix("file:").expect("a secret's `file:`").trim();
    // `${VARIABLE:-default}`: the default, as the stack uses it unless told.
    let default = file.split(":-").nth(1).map_or(file, |d| d.trim_end_matches('}'));
    repo(default.trim_start_matches("./"))
}

/// The data source as provisioned, and as the stack wires it.
#[derive(Clone)]
struct DataSource {
    uid: String,
    host: String,
    user: String,
    database: String,
    sslmode: String,
    token: String,
    credentials: PathBuf,
}

/// Reads the provisioned data source and checks it against docker-compose.yml:
/// the host is the `serve` service, the port its SQL port, the password the
/// secret Grafana mounts; the credentials are those serve is given.
fn provisioned_data_source() -> DataSource {
    let ds = read(&repo("deploy/grafana/provisioning/datasources/swabstream.yaml"));
    let compose = read(&repo("docker-compose.yml"));
    let get = |k: &str| yaml_value(&ds, k).unwrap_or_else(|| panic!("the data source has no {k}"));
    assert_eq!(get("type"), "grafana-postgresql-datasource");
    let url = get("url");
    let (host, port) = url.rsplit_once(':').expect("url HOST:PORT");
    let serve = compose_service(&compose, host);
    assert!(
        serve.iter().any(|l| l.contains(r#"command: ["serve"]"#)),
        "the data source's host `{host}` is not the service running `swabstream serve`"
    );
    let sql_listen = serve
        .iter()
        .find_map(|l| l.trim().strip_prefix("SWABSTREAM_SERVE__SQL_LISTEN:"))
        .expect("serve sets SWABSTREAM_SERVE__SQL_LISTEN");
    assert_eq!(
        sql_listen.trim().rsplit_once(':').unwrap().1,
        port,
        "the data source's port is serve's SQL port"
    );
    let credentials_at = serve
        .iter()
        .find_map(|l| l.trim().strip_prefix("SWABSTREAM_SERVE__CREDENTIALS:"))
        .expect("serve sets SWABSTREAM_SERVE__CREDENTIALS")
        .trim();
    let credentials_secret = credentials_at.strip_prefix("/run/secrets/").expect("a secret");
    let password = get("password");
    let token_secret = password
        .strip_prefix("$__file{/run/secrets/")
        .and_then(|p| p.strip_suffix('}'))
        .unwrap_or_else(|| panic!("the password is $__file{{}} of a secret: {password}"));
    assert!(
        compose_service(&compose, "grafana")
            .iter()
            .any(|l| l.trim() == format!("- {token_secret}")),
        "grafana mounts the secret `{token_secret}`"
    );
    // Grafana's `$__file{}` trims white space around the file's text.
    let token = read(&compose_secret_file(&compose, token_secret)).trim().to_owned();
    DataSource {
        uid: get("uid"),
        host: host.to_owned(),
        user: get("user"),
        database: get("database"),
        sslmode: get("sslmode"),
        token,
        credentials: compose_secret_file(&compose, credentials_secret),
    }
}

/// `swabstream serve` with the given analysts' credentials file.
struct Serve {
    child: Child,
    http: SocketAddr,
    sql: SocketAddr,
}

impl Serve {
    fn start(env: &Env, credentials: &Path) -> Serve {
        let mut config = read(&env.config);
        config.push_str(&format!(
            "[serve]\nlisten = \"127.0.0.1:0\"\nsql_listen = \"127.0.0.1:0\"\ncredentials = \"{}\"\nrefresh_interval = \"200ms\"\n",
            credentials.display()
        ));
        std::fs::write(&env.config, config).unwrap();
        let log = std::fs::File::create(env.dir.join("serve.log")).unwrap();
        let mut child = env.cmd(&["serve"]).stdout(Stdio::piped()).stderr(log).spawn().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut addr = |prefix: &str| -> SocketAddr {
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            line.trim()
                .strip_prefix(prefix)
                .unwrap_or_else(|| panic!("serve printed `{line}`: {}", env.log("serve")))
                .parse()
                .unwrap()
        };
        let http = addr("listening on ");
        let sql = addr("sql listening on ");
        Serve { child, http, sql }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An answer of `psql --csv`: the header's columns and the rows.
#[derive(Debug)]
struct Table {
    columns: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn column(&self, name: &str) -> Vec<&str> {
        let i = self.columns.iter().position(|c| c == name).unwrap_or_else(|| {
            panic!("no column {name} in {:?}", self.columns);
        });
        self.rows.iter().map(|r| r[i].as_str()).collect()
    }

    fn sum(&self, name: &str) -> u64 {
        self.column(name).iter().map(|v| v.parse::<u64>().unwrap_or_else(|_| panic!("{v}"))).sum()
    }
}

/// Runs `sql` with psql, connecting with the data source's settings (its
/// host and port replaced by where this test's serve listens).
fn psql(ds: &DataSource, at: SocketAddr, sql: &str) -> Result<Table, String> {
    let o = Command::new("psql")
        .arg(format!(
            "host={} port={} user={} dbname={} sslmode={}",
            at.ip(),
            at.port(),
            ds.user,
            ds.database,
            ds.sslmode
        ))
        .args(["--csv", "-X", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGPASSWORD", &ds.token)
        .output()
        .expect("psql runs (Debian: apt-get install -y postgresql-client)");
    if !o.status.success() {
        return Err(String::from_utf8_lossy(&o.stderr).into_owned());
    }
    let text = String::from_utf8(o.stdout).unwrap();
    let mut lines = text.lines().map(csv_fields);
    let columns = lines.next().unwrap_or_default();
    Ok(Table { columns, rows: lines.collect() })
}

/// The fields of one CSV line (RFC 4180 quoting, as psql writes it).
fn csv_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                fields.last_mut().unwrap().push('"');
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(String::new()),
            c => fields.last_mut().unwrap().push(c),
        }
    }
    fields
}

/// A query of the dashboard with its variables expanded as Grafana expands a
/// single-valued variable for a SQL data source: the value as is, with
/// single quotes doubled. Anything else Grafana would expand is refused.
fn expand(sql: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = sql.to_owned();
    for (name, value) in vars {
        let value = value.replace('\'', "''");
        out = out.replace(&format!("${{{name}}}"), &value).replace(&format!("${name}"), &value);
    }
    assert!(
        !out.contains('$'),
        "a `$` is left after expanding the dashboard's variables, a macro this test does not expand: {out}"
    );
    out
}

/// Every panel of the dashboard, those inside rows included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = vec![];
    for p in dashboard["panels"].as_array().expect("panels") {
        if p["type"] == "row" {
            out.extend(p["panels"].as_array().into_iter().flatten());
        } else {
            out.push(p);
        }
    }
    out
}

/// The fields a panel refers to by name: its x axis and the fields its
/// overrides name (the display names it gives them).
fn fields_used(panel: &Value) -> Vec<String> {
    let mut used = vec![];
    if let Some(x) = panel["options"]["xField"].as_str() {
        used.push(x.to_owned());
    }
    for o in panel["fieldConfig"]["overrides"].as_array().into_iter().flatten() {
        if o["matcher"]["id"] == "byName" {
            used.push(o["matcher"]["options"].as_str().expect("a field name").to_owned());
        }
    }
    used.sort();
    used.dedup();
    used
}

#[test]
fn the_provisioned_dashboard_runs_on_serve_with_the_stacks_credentials() {
    let ds = provisioned_data_source();
    assert_eq!(ds.host, "serve");
    assert_eq!(ds.sslmode, "disable", "serve's SQL endpoint has no TLS");
    let dashboard: Value =
        serde_json::from_str(&read(&repo("deploy/grafana/dashboards/sampling-day.json"))).unwrap();

    let broker = Broker::start("grafana");
    let env = Env::new("grafana", &broker.addr, 3);
    let (events, truth) = env.simulate(2000, 7);
    env.publish(&events);
    let mut worker = env.spawn_worker("worker", &[]);
    let end = end_offsets(&broker.addr, &env.topic, env.partitions);
    wait_until(Duration::from_secs(120), "the worker caught up", || env.stored_offsets() == end);
    let stored = env.views();
    common::assert_views_equal(&stored, &truth, "the projected day");
    let serve = Serve::start(&env, &ds.credentials);
    // The stack's data source signs in (user, token) to serve given the
    // stack's analysts' credentials; serve's copy is of the whole log.
    wait_until(Duration::from_secs(30), "serve's SQL answers the whole log", || {
        psql(&ds, serve.sql, "SELECT sum(checkpoint_offset) AS n FROM as_of_partitions")
            .is_ok_and(|t| t.column("n") == [end.to_string()])
    });
    // pgx, Grafana's PostgreSQL driver, pings a connection (and "Save &
    // test" checks the data source) with the comment `-- ping`: an empty
    // query, not a refused statement.
    let ping = psql(&ds, serve.sql, "-- ping").expect("pgx's ping is answered");
    assert!(ping.rows.is_empty(), "{ping:?}");
    let wrong = DataSource { token: format!("{}.{}", ds.user, "0".repeat(64)), ..ds.clone() };
    let refused = psql(&wrong, serve.sql, "SELECT 1").expect_err("a wrong token is refused");
    assert!(refused.to_lowercase().contains("password"), "{refused}");

    // The day variable: its options as Grafana lists them, the first the default.
    let mut vars = BTreeMap::new();
    let templating = dashboard["templating"]["list"].as_array().expect("templating");
    assert_eq!(templating.len(), 1, "the dashboard's variables: {templating:?}");
    let day_var = &templating[0];
    assert_eq!(day_var["name"], "day");
    assert_eq!(day_var["datasource"]["uid"], ds.uid.as_str());
    let options = psql(&ds, serve.sql, day_var["query"].as_str().unwrap()).unwrap();
    let days: Vec<String> = options.rows.iter().map(|r| r[0].clone()).collect();
    let summary_day = latest_sampled_day(&truth);
    assert_eq!(days.first(), Some(&summary_day), "the default day is serve's summary's default");
    // The main day of the simulation, as an analyst would pick it.
    let day = busiest_day(&truth);
    assert!(days.contains(&day), "{day} is offered: {days:?}");

    // Every panel's query on every day offered runs; on the main day each
    // answers rows with the columns its panel shows.
    let mut answers: BTreeMap<String, Table> = BTreeMap::new();
    let all = panels(&dashboard);
    assert!(all.len() >= 10, "the dashboard's panels: {}", all.len());
    for panel in &all {
        let title = panel["title"].as_str().unwrap().to_owned();
        let targets = panel["targets"].as_array().expect("targets");
        assert_eq!(targets.len(), 1, "{title}: one query");
        let target = &targets[0];
        assert_eq!(panel["datasource"]["uid"], ds.uid.as_str(), "{title}: the data source");
        assert_eq!(target["datasource"]["uid"], ds.uid.as_str(), "{title}: the data source");
        assert_eq!(target["rawQuery"], true, "{title}: a raw SQL query");
        let sql = target["rawSql"].as_str().unwrap();
        for other in &days {
            let vars = BTreeMap::from([("day".to_owned(), other.clone())]);
            if let Err(e) = psql(&ds, serve.sql, &expand(sql, &vars)) {
                panic!("{title} on {other}: {e}");
            }
        }
        vars.insert("day".to_owned(), day.clone());
        let answer = psql(&ds, serve.sql, &expand(sql, &vars)).unwrap();
        let used = fields_used(panel);
        assert!(!used.is_empty(), "{title} names the fields it shows");
        for f in &used {
            assert!(answer.columns.contains(f), "{title}: no column {f} in {:?}", answer.columns);
        }
        assert!(!answer.rows.is_empty(), "{title}: no rows on {day}");
        answers.insert(title, answer);
    }

    // And the numbers are the views'.
    let city = truth.city_daily.iter().find(|r| r.day.to_string() == day).unwrap();
    let on = |d: &swabstream_events::Day| d.to_string() == day;
    let a = |t: &str| answers.get(t).unwrap_or_else(|| panic!("no panel {t}"));
    assert_eq!(a("People sampled").column("people_sampled"), [city.people_sampled.to_string()]);
    let percent: f64 = a("Using a code").column("percent_using_code")[0].parse().unwrap();
    assert!((percent - city.percent_using_code.unwrap()).abs() < 1e-9, "{percent}");
    assert_eq!(a("The day's scans").column("rejected"), [city.rejected.to_string()]);
    let districts = a("Districts");
    assert_eq!(districts.rows.len(), 16, "every district, zeros included");
    assert_eq!(districts.sum("people_sampled"), city.people_sampled);
    assert_eq!(a("People sampled by district").sum("people_sampled"), city.people_sampled);
    let hours = a("By hour");
    assert_eq!(hours.rows.len(), 24);
    assert_eq!(hours.column("hour")[8], "08:00");
    assert_eq!(hours.sum("people_sampled"), city.people_sampled);
    assert_eq!(hours.sum("valid_scans"), city.valid_scans);
    assert_eq!(a("Identification methods").sum("people_sampled"), city.people_sampled);
    assert_eq!(a("Rejections by reason").sum("count"), city.rejected);
    // Codes: the simulator issues them before the sampling day, so none on
    // it, and every one of them to date.
    let codes = a("Codes by channel");
    assert_eq!(codes.column("channel"), ["APP", "WECHAT", "ALIPAY", "OFFLINE"]);
    let issued = |f: &dyn Fn(&swabstream_events::Day) -> bool| -> u64 {
        truth.codes_issued_daily.iter().filter(|r| f(&r.day)).map(|r| r.count).sum()
    };
    assert_eq!(codes.sum("on_day"), issued(&on));
    let to_date = issued(&|d| d.to_string() <= day);
    assert!(to_date > 0, "the simulated day's codes were issued before it");
    assert_eq!(codes.sum("to_date"), to_date);
    let sites = a("The 20 busiest sites");
    let site_count = stored
        .site_hourly
        .iter()
        .filter(|r| on(&r.day))
        .map(|r| &r.site_id)
        .collect::<std::collections::BTreeSet<_>>();
    assert_eq!(sites.rows.len(), site_count.len().min(20));
    let fresh = a("Freshness");
    assert_eq!(fresh.column("stale"), ["f"], "{fresh:?}");
    let parts = a("Partitions");
    assert_eq!(parts.rows.len(), env.partitions as usize);
    assert_eq!(parts.sum("checkpoint_offset"), end as u64);
    assert_eq!(serve_http_is(&serve), 200);
    let _ = worker.kill();
    let _ = worker.wait();
}

/// serve's /readyz status: the compose health check's question.
fn serve_http_is(serve: &Serve) -> u16 {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(serve.http).unwrap();
    write!(s, "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    reply.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// The latest day anyone was sampled: serve's summary's default day.
fn latest_sampled_day(v: &ViewSet) -> String {
    v.city_daily.iter().filter(|r| r.people_sampled > 0).map(|r| r.day).max().unwrap().to_string()
}

/// The day with the most people sampled.
fn busiest_day(v: &ViewSet) -> String {
    v.city_daily.iter().max_by_key(|r| r.people_sampled).unwrap().day.to_string()
}
