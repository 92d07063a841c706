//! Load generator: scanners on loopback against the gateway on the embedded
//! broker, at 1, 10 and 100 events per request.
//!
//!     cargo bench -p swabstream-gateway --bench load -- [seconds] [connections] [storage]
//!
//! One process holds three runtimes: the embedded broker (tansu; durable on
//! the engine `ENGINE` names, SlateDB by default, `sqlite` the other; or,
//! with `storage` = `memory`, SlateDB in memory, not durable, which shows
//! what the gateway does when the broker's disk is not the limit), the
//! gateway (axum, the idempotent acks=all producer, Prometheus recorder
//! installed) and the load generator (`connections` keep-alive HTTP/1.1
//! connections, each sending its next request when the last was answered).
//! Every event is new (fresh event ids); a quarter carry a raw `id_number`,
//! which the gateway pseudonymises. After a one-second warm-up, each size
//! runs `seconds` (default 10) and prints accepted events/s, requests/s and
//! the latency percentiles of answered requests. It asserts nothing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use swabstream_broker::EmbeddedBroker;
use swabstream_events::PseudonymKey;
use swabstream_gateway::client::Connection;
use swabstream_gateway::{Credentials, Gateway, Options};
use swabstream_kafka::{Cluster, TopicSpec, ensure_topics};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let seconds: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(10);
    let conns: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(32);
    let dir = std::env::temp_dir().join(format!("swabstream-bench-gw-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;

    let broker_rt = runtime("broker", 2)?;
    let memory = args.get(2).map(String::as_str) == Some("memory");
    // ENGINE=sqlite measures the embedded broker's other engine.
    let engine = swabstream_broker::LogEngine::from_env("ENGINE").map_err(anyhow::Error::msg)?;
    let broker = if memory {
        broker_rt.block_on(EmbeddedBroker::start_in_memory(0))?
    } else {
        broker_rt.block_on(EmbeddedBroker::open(&dir, engine, 0))?
    };
    let mut cluster = Cluster::embedded(broker.bootstrap());
    // Producer settings to try, e.g. PRODUCER="linger.ms=10,batch.num.messages=1000".
    for kv in std::env::var("PRODUCER").unwrap_or_default().split(',').filter(|s| !s.is_empty()) {
        if let Some((k, v)) = kv.split_once('=') {
            cluster.producer.insert(k.to_owned(), v.to_owned());
        }
    }
    let topic = "bench-gateway";
    broker_rt.block_on(ensure_topics(
        &cluster,
        &[TopicSpec { name: topic.to_owned(), partitions: 4, replication_factor: 1 }],
    ))?;

    let (token, hash) = swabstream_gateway::auth::new_token("bench", &[42; 32]);
    let credentials =
        Credentials::parse(&format!("[[device]]\nid = \"bench\"\nsecret_sha256 = \"{hash}\"\n"))?;
    let key = PseudonymKey::new(b"bench pseudonym key, 16+ bytes".to_vec())
        .map_err(|e| anyhow::anyhow!(e))?;
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(
                "swabstream_gateway_request_seconds".to_owned(),
            ),
            swabstream_gateway::LATENCY_BUCKETS,
        )?
        .install_recorder()?;
    let opts = Options { topic: topic.to_owned(), ..Options::default() };
    let gateway_rt = runtime("gateway", 2)?;
    let gateway = Gateway::new(&cluster, opts, credentials, key, Some(metrics))?;
    let listener = gateway_rt.block_on(Gateway::bind(SocketAddr::from(([127, 0, 0, 1], 0))))?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = gateway_rt.spawn(gateway.serve(listener, async move {
        let _ = stop_rx.await;
    }));

    println!(
        "gateway on the embedded broker ({}), 4 partitions; {conns} connections, {seconds} s per size",
        if memory {
            "SlateDB in memory, not durable".to_owned()
        } else {
            format!("{engine}, durable")
        }
    );
    println!(
        "{:>10} {:>10} {:>8} {:>7} {:>7} {:>8} {:>7} {:>7}  CPU µs per accepted event: broker / librdkafka / gateway / load generator; storage calls run again after a conflict",
        "events/req", "events/s", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "non-202",
    );
    let load_rt = runtime("load", 2)?;
    let mut serial = 0u64;
    for per_request in [1usize, 10, 100] {
        serial += 1;
        load_rt.block_on(run(addr, &token, conns, per_request, Duration::from_secs(1), serial))?;
        serial += 1;
        let cpu_before = cpu_by_component();
        let conflicts_before = swabstream_broker::conflict_retries();
        let r = load_rt.block_on(run(
            addr,
            &token,
            conns,
            per_request,
            Duration::from_secs(seconds),
            serial,
        ))?;
        let cpu_after = cpu_by_component();
        let per_event =
            |i: usize| (cpu_after[i] - cpu_before[i]) * 1e6 / (r.accepted_events.max(1) as f64);
        let secs = r.elapsed.as_secs_f64();
        println!(
            "{:>10} {:>10.0} {:>8.0} {:>7.2} {:>7.2} {:>8.2} {:>7.2} {:>7}  {:.1} / {:.1} / {:.1} / {:.1}; {}",
            per_request,
            r.accepted_events as f64 / secs,
            r.latencies_us.len() as f64 / secs,
            pct(&r.latencies_us, 0.50),
            pct(&r.latencies_us, 0.99),
            pct(&r.latencies_us, 0.999),
            pct(&r.latencies_us, 1.0),
            r.other,
            per_event(0),
            per_event(1),
            per_event(2),
            per_event(3),
            swabstream_broker::conflict_retries() - conflicts_before,
        );
    }
    let _ = stop_tx.send(());
    let drained = gateway_rt.block_on(serving)??;
    println!(
        "peak RSS of the process (broker, gateway and load generator): {} MiB; unacknowledged at stop: {}",
        peak_rss_kib() / 1024,
        drained.unacknowledged
    );
    broker_rt.block_on(broker.stop());
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn runtime(name: &str, threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .enable_all()
        .build()
}

struct Run {
    elapsed: Duration,
    accepted_events: u64,
    latencies_us: Vec<u32>,
    other: u64,
}

async fn run(
    addr: SocketAddr,
    token: &str,
    conns: usize,
    per_request: usize,
    length: Duration,
    serial: u64,
) -> anyhow::Result<Run> {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..conns {
        let stop = stop.clone();
        let token = token.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut conn = Connection::open(addr).await?;
            let mut lat = Vec::new();
            let (mut accepted, mut other) = (0u64, 0u64);
            let mut n = 0u64;
            let mut body = String::with_capacity(per_request * 400);
            while !stop.load(Ordering::Relaxed) {
                body.clear();
                body.push('[');
                for i in 0..per_request {
                    if i > 0 {
                        body.push(',');
                    }
                    n += 1;
                    event(&mut body, serial, c, n);
                }
                body.push(']');
                let t = Instant::now();
                let reply = conn.post_events(&token, Bytes::from(body.clone())).await?;
                lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                if reply.status == 202 {
                    accepted += per_request as u64;
                } else {
                    other += 1;
                }
            }
            anyhow::Ok((lat, accepted, other))
        }));
    }
    tokio::time::sleep(length).await;
    stop.store(true, Ordering::Relaxed);
    let mut r =
        Run { elapsed: Duration::ZERO, accepted_events: 0, latencies_us: Vec::new(), other: 0 };
    for t in tasks {
        let (lat, accepted, other) = t.await??;
        r.latencies_us.extend(lat);
        r.accepted_events += accepted;
        r.other += other;
    }
    r.elapsed = started.elapsed();
    r.latencies_us.sort_unstable();
    Ok(r)
}

/// One scan event as a scanner sends it: three in four identified by code
/// (the person's pseudonym comes with it), one in four by ID document.
fn event(out: &mut String, serial: u64, conn: usize, n: u64) {
    use std::fmt::Write as _;
    let person = (serial << 40) ^ ((conn as u64) << 32) ^ n;
    let who = if n.is_multiple_of(4) {
        format!("\"id_number\":\"3101041980{:08}\"", person % 100_000_000)
    } else {
        format!("\"person_ref\":\"{person:064x}\"")
    };
    let ident = if n.is_multiple_of(4) {
        "{\"method\":\"ID_DOCUMENT\"}".to_owned()
    } else {
        format!("{{\"method\":\"CODE\",\"code_id\":\"PC-{person:x}\"}}")
    };
    let _ = write!(
        out,
        "{{\"type\":\"SampleScanned\",\"event_id\":\"b{serial}-{conn}-{n}\",{who},\"occurred_at\":\"2022-04-09T08:15:00+08:00\",\"site_id\":\"XH-{:03}\",\"district\":\"310104\",\"tube_id\":\"T{serial}-{conn}-{n}\",\"scanner_id\":\"S-{conn}\",\"identification\":{ident}}}",
        conn % 100
    );
}

fn pct(sorted_us: &[u32], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted_us.len() as f64 * q).ceil() as usize).clamp(1, sorted_us.len()) - 1;
    sorted_us[i] as f64 / 1000.0
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// CPU seconds used so far by the process's threads, by component: the
/// broker's runtime, librdkafka's threads, the gateway's runtime (with its
/// blocking pool) and the load generator, told apart by thread name.
fn cpu_by_component() -> [f64; 4] {
    let mut out = [0.0; 4];
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return out };
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        // Fields after the parenthesised name: utime and stime are the 12th and 13th.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { continue };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
            + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        let i = match comm.trim() {
            c if c.starts_with("broker") => 0,
            c if c.starts_with("rdk:") || c.starts_with("producer") => 1,
            c if c.starts_with("gateway") => 2,
            c if c.starts_with("load") => 3,
            _ => continue,
        };
        out[i] += ticks / 100.0;
    }
    out
}
