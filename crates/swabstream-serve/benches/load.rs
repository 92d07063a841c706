//! Load on the analysts' service, printing figures (no assertions): requests
//! per second and p50/p99 latency of `/v1/summary` and of a view query with
//! 64 keep-alive connections, while a writer commits to the same SQLite
//! view store as a worker would (a batch every 50 ms); the store reads per
//! second during that load (one per refresh interval is the promise); and
//! 1,000 open event streams with the process's resident memory.
//!
//! `cargo bench -p swabstream-serve --bench load` (`BENCH_SECONDS`, default 5, per phase).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use swabstream_gateway::auth::{Credentials, new_token};
use swabstream_gateway::client::Connection;
use swabstream_serve::{Options, Service};
use swabstream_sim::{SimConfig, simulate};
use swabstream_store::ViewStore;
use swabstream_store_sqlite::SqliteStore;
use swabstream_views::{ViewRow, ViewSet};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const TOPIC: &str = "bench";
/// The version a new store starts with, live.
static V1: std::sync::LazyLock<swabstream_store::Version> =
    std::sync::LazyLock::new(|| swabstream_store::Version { name: "v1".into(), id: 1 });
const CONNECTIONS: usize = 64;
const STREAMS: usize = 1000;

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn bump(views: &ViewSet, n: u64) -> Vec<ViewRow> {
    let mut v = views.clone();
    for r in &mut v.city_daily {
        r.people_sampled += n;
        r.valid_scans += n;
    }
    v.into_rows().collect()
}

async fn hammer(
    addr: SocketAddr,
    token: String,
    path: String,
    secs: u64,
) -> (usize, Vec<Duration>) {
    let done = Arc::new(AtomicBool::new(false));
    let mut tasks = vec![];
    for _ in 0..CONNECTIONS {
        let (token, path, done) = (token.clone(), path.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = Connection::open(addr).await.unwrap();
            let mut lat = vec![];
            while !done.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = c
                    .request(hyper::Method::GET, &path, Some(&token), bytes::Bytes::new())
                    .await
                    .unwrap();
                assert_eq!(r.status, 200);
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    done.store(true, Ordering::Relaxed);
    let mut all = vec![];
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    (all.len(), all)
}

fn pct(v: &[Duration], p: f64) -> Duration {
    v[((v.len() as f64 - 1.0) * p) as usize]
}

fn main() {
    let secs: u64 = std::env::var("BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let dir = std::env::temp_dir().join(format!("swabstream-serve-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("views.db");

    let sim = simulate(&SimConfig { people: 200_000, seed: 1, ..SimConfig::default() });
    let truth = sim.truth.clone();
    let day = truth.city_daily[0].day;
    let mut writer = SqliteStore::open(&path, TOPIC).unwrap();
    writer.check_partition_count(1).unwrap();
    let epoch = writer.claim(&writer.live().unwrap(), 0).unwrap().epoch;
    writer.commit(&V1, 0, epoch, &truth.clone().into_rows().collect::<Vec<_>>(), 1, None).unwrap();
    println!(
        "store: {} site_hourly rows, {} district rows ({} people simulated)",
        truth.site_hourly.len(),
        truth.district_daily.len(),
        200_000
    );

    // The writer: a batch every 50 ms, as a worker applying events commits.
    let stop = Arc::new(AtomicBool::new(false));
    let commits = Arc::new(AtomicUsize::new(0));
    let w = {
        let (stop, commits, truth) = (stop.clone(), commits.clone(), truth.clone());
        std::thread::spawn(move || {
            let mut n = 1u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                writer.commit(&V1, 0, epoch, &bump(&truth, n), n as i64, None).unwrap();
                commits.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (token, hash) = new_token("bench", &[3; 32]);
        let creds =
            Credentials::parse(&format!("[[device]]\nid = \"bench\"\nsecret_sha256 = \"{hash}\"\n"))
                .unwrap();
        let reads = Arc::new(AtomicUsize::new(0));
        let opener = {
            let (path, reads) = (path.clone(), reads.clone());
            Box::new(move || {
                reads.fetch_add(1, Ordering::Relaxed);
                SqliteStore::open_existing(&path, TOPIC).map(|s| Box::new(s) as Box<dyn ViewStore>)
            })
        };
        let service = Service::start(
            opener,
            None,
            creds,
            Options { max_streams: STREAMS + 10, ..Options::default() },
            None,
        );
        service.first_read(Duration::from_secs(10)).await;
        let listener = Service::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(service.serve(listener, std::future::pending()));

        for path in [
            "/v1/summary".to_owned(),
            format!("/v1/views/district_daily?day={day}"),
            format!("/v1/views/site_hourly?day={day}&hour=9&limit=100"),
        ] {
            let reads_before = reads.load(Ordering::Relaxed);
            let commits_before = commits.load(Ordering::Relaxed);
            let started = Instant::now();
            let (n, lat) = hammer(addr, token.clone(), path.clone(), secs).await;
            let el = started.elapsed().as_secs_f64();
            println!(
                "{path}: {CONNECTIONS} connections, {:.0} requests/s, p50 {:.2?}, p99 {:.2?}, max {:.2?}; store reads {:.2}/s while the writer committed {:.1}/s",
                n as f64 / el,
                pct(&lat, 0.5),
                pct(&lat, 0.99),
                lat[lat.len() - 1],
                (reads.load(Ordering::Relaxed) - reads_before) as f64 / el,
                (commits.load(Ordering::Relaxed) - commits_before) as f64 / el,
            );
        }

        // 1,000 open event streams.
        let rss_before = rss_kib();
        let got_first = Arc::new(AtomicUsize::new(0));
        let mut held = vec![];
        for _ in 0..STREAMS {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(
                format!("GET /v1/stream?access_token={token} HTTP/1.1\r\nHost: {addr}\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
            let got = got_first.clone();
            held.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut seen = false;
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if !seen && buf[..n].windows(14).any(|w| w == b"event: summary") {
                                seen = true;
                                got.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            }));
        }
        let t = Instant::now();
        while got_first.load(Ordering::Relaxed) < STREAMS && t.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let first = got_first.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(secs)).await;
        println!(
            "{STREAMS} event streams open: {first} got their first summary; resident memory {} MiB before, {} MiB with them open for {secs} s (the benchmark's clients included)",
            rss_before / 1024,
            rss_kib() / 1024
        );
        for h in held {
            h.abort();
        }
    });
    stop.store(true, Ordering::Relaxed);
    let _ = w.join();
    let _ = std::fs::remove_dir_all(&dir);
}
