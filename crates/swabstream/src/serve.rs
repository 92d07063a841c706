//! `swabstream serve`: the analysts' service (swabstream-serve) on the
//! configured view store, with the log ends read from Kafka where it can be
//! reached (the configured cluster, or the data directory's embedded broker
//! if one runs; serve never starts a broker itself).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context as _;
use metrics_exporter_prometheus::PrometheusBuilder;
use rdkafka::consumer::{BaseConsumer, Consumer};
use swabstream_gateway::Credentials;
use swabstream_kafka::{Quiet, Role};
use swabstream_serve::{LogEnds, Opener, Options, Service};
use swabstream_store::StoreError;

use crate::config::{Config, StoreKind};

pub fn run(rt: &tokio::runtime::Runtime, config: &Config) -> anyhow::Result<ExitCode> {
    let path = config.serve.credentials.as_ref().context(
        "serve needs serve.credentials, a file of analysts' credentials \
         (make entries with `swabstream credential --device NAME`)",
    )?;
    let credentials = load_credentials(path)?;
    let metrics = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| anyhow::anyhow!("installing the metrics recorder: {e}"))?;
    rt.block_on(async {
        let service = start(config, credentials, Some(metrics));
        serve(service, config, crate::shutdown_signal()).await?;
        crate::report("serve stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// Serves HTTP (and SQL, if `serve.sql_listen` is set) until `shutdown`.
/// Prints `listening on ADDR` (and `sql listening on ADDR`) first.
pub async fn serve(
    service: Service,
    config: &Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = Service::bind(config.serve.listen).await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let sql = match config.serve.sql_listen {
        Some(at) => {
            let l = tokio::net::TcpListener::bind(at)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {at} (serve.sql_listen): {e}"))?;
            let sql_addr = l.local_addr()?;
            let mut stopped = stopped.clone();
            let task = tokio::spawn(swabstream_serve::sql::serve(
                l,
                service.snapshots(),
                service.credentials(),
                async move {
                    let _ = stopped.wait_for(|s| *s).await;
                },
            ));
            Some((sql_addr, task))
        }
        None => None,
    };
    // Scripts and tests read the addresses from the first lines of standard output.
    println!("listening on {addr}");
    if let Some((a, _)) = &sql {
        println!("sql listening on {a}");
    }
    let _ = std::io::stdout().flush();
    tracing::info!(%addr, "serve: the views at /v1, the dashboard at /");
    let mut http_stopped = stopped.clone();
    let http = service.serve(listener, async move {
        let _ = http_stopped.wait_for(|s| *s).await;
    });
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    http.await?;
    if let Some((_, task)) = sql {
        task.await??;
    }
    Ok(())
}

pub fn load_credentials(path: &Path) -> anyhow::Result<Credentials> {
    let credentials = Credentials::load(path)?;
    anyhow::ensure!(
        !credentials.is_empty(),
        "{} lists no [[device]]: no analyst could sign in",
        path.display()
    );
    Ok(credentials)
}

/// Starts the service's refresher on the configured store.
pub fn start(
    config: &Config,
    credentials: Credentials,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
) -> Service {
    let cfg = config.clone();
    let opener: Opener = Box::new(move || {
        crate::store::open_existing(&cfg).map_err(|e| StoreError::Backend {
            store: "configured",
            transient: true,
            error: e.into(),
        })
    });
    let opts = Options {
        refresh_interval: config.serve.refresh_interval,
        // Opening the SQLite file is cheap and notices it moved or replaced;
        // a Scylla session is kept and reopened only after an error.
        reopen_each_read: config.store.kind == StoreKind::Sqlite,
        ..Options::default()
    };
    Service::start(opener, Some(log_ends(config)), credentials, opts, metrics)
}

/// Reads the topic's log ends, connecting lazily (and again after an error).
fn log_ends(config: &Config) -> LogEnds {
    let config = config.clone();
    let consumer: Mutex<Option<(String, BaseConsumer<Quiet>)>> = Mutex::new(None);
    Box::new(move || {
        let bootstrap = match &config.kafka.brokers {
            Some(b) => b.clone(),
            None => embedded_address(&config.data_dir).ok_or("no embedded broker runs")?,
        };
        let mut guard = consumer.lock().map_err(|_| "poisoned")?;
        if guard.as_ref().is_none_or(|(b, _)| *b != bootstrap) {
            let c: BaseConsumer<Quiet> = config
                .cluster(bootstrap.clone())
                .config(Role::Consumer, &[("group.id", "swabstream-serve")])
                .create_with_context(Quiet)
                .map_err(|e| e.to_string())?;
            *guard = Some((bootstrap, c));
        }
        let (_, c) = guard.as_ref().expect("just made");
        let read = || -> Result<Vec<(i32, i64)>, String> {
            let topic = &config.kafka.topic;
            let md =
                c.fetch_metadata(Some(topic), Duration::from_secs(2)).map_err(|e| e.to_string())?;
            let partitions =
                md.topics().iter().find(|t| t.name() == topic).map_or(0, |t| t.partitions().len());
            (0..partitions as i32)
                .map(|p| {
                    c.fetch_watermarks(topic, p, Duration::from_secs(2))
                        .map(|(_, high)| (p, high))
                        .map_err(|e| e.to_string())
                })
                .collect()
        };
        let result = read();
        if result.is_err() {
            *guard = None;
        }
        result
    })
}

fn embedded_address(dir: &Path) -> Option<String> {
    let addr = std::fs::read_to_string(PathBuf::from(dir).join("broker.addr")).ok()?;
    let addr = addr.trim();
    (!addr.is_empty()).then(|| addr.to_owned())
}

/// `demo --serve`: the service on the demo's store, with a one-off analyst
/// token, until Ctrl-C.
pub fn demo(rt: &tokio::runtime::Runtime, config: &Config, dir: &Path) -> anyhow::Result<()> {
    let mut config = config.clone();
    config.data_dir = dir.to_owned();
    config.store.kind = StoreKind::Sqlite;
    config.store.path = Some(dir.join("views.db"));
    let secret: [u8; 32] = rand::random();
    let (token, hash) = swabstream_gateway::auth::new_token("demo", &secret);
    let credentials =
        Credentials::parse(&format!("[[device]]\nid = \"demo\"\nsecret_sha256 = \"{hash}\"\n"))?;
    rt.block_on(async {
        let service = start(&config, credentials, None);
        service.first_read(Duration::from_secs(10)).await;
        let listener = Service::bind(config.serve.listen).await?;
        let addr = listener.local_addr()?;
        println!("dashboard: http://{addr}/#token={token}");
        println!("API: curl -H 'Authorization: Bearer {token}' http://{addr}/v1/summary");
        println!("serving the demo's views until Ctrl-C");
        let _ = std::io::stdout().flush();
        service.serve(listener, crate::shutdown_signal()).await
    })
}
