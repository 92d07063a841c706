//! The end-to-end tests' harness: real processes of the binary (the embedded
//! broker, publish, workers) on loopback, each test with its own data
//! directory, topic names and store.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message};
use swabstream_store::ViewStore;
use swabstream_store_sqlite::SqliteStore;
use swabstream_views::ViewSet;

/// The program under test (this package's copy of the `swabstream` binary).
/// `E2E_SWABSTREAM_BIN` names another copy (not `SWABSTREAM_*`: the binary
/// reads those as its settings): in a target directory shared by
/// several worktrees, every build of this package overwrites the one cargo names.
pub static BIN: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    std::env::var("E2E_SWABSTREAM_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_swabstream-e2e").to_owned())
});

/// The workers' consumer session timeout in every test's configuration:
/// short, so that takeovers are quick.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(6);

/// Runs the binary with `args` and extra environment variables, as a user would.
pub fn swabstream(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(&*BIN);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("the binary runs")
}

/// A fresh directory for one test.
pub fn temp_dir(kind: &str, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("swabstream-{kind}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A test's directory, configuration file and names.
pub struct Env {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub topic: String,
    pub dlq: String,
    pub partitions: i32,
}

impl Env {
    /// A fresh directory and a configuration pointing at `broker`.
    pub fn new(name: &str, broker: &str, partitions: i32) -> Env {
        let dir = temp_dir("e2e", name);
        let env = Env {
            config: dir.join("swabstream.toml"),
            dir,
            topic: format!("events-{name}"),
            dlq: format!("dlq-{name}"),
            partitions,
        };
        env.write_config(broker);
        env
    }

    pub fn write_config(&self, broker: &str) {
        let text = format!(
            r#"data_dir = "{dir}"
[kafka]
brokers = "{broker}"
topic = "{topic}"
dlq_topic = "{dlq}"
partitions = {partitions}
group_id = "workers-{topic}"
[kafka.consumer]
"session.timeout.ms" = "{session_ms}"
"heartbeat.interval.ms" = "500"
# What a consumer of the embedded broker gets by default; `brokers` names
# it as a cluster here, so the tests say it (README, "Scaling out").
"fetch.wait.max.ms" = "10"
[worker]
batch_max_records = 2000
batch_max_wait = "100ms"
snapshot_interval = "1s"
orphan_after = "10s"
"#,
            dir = self.dir.display(),
            topic = self.topic,
            dlq = self.dlq,
            partitions = self.partitions,
            session_ms = SESSION_TIMEOUT.as_millis(),
        );
        std::fs::write(&self.config, text).unwrap();
    }

    pub fn store_path(&self) -> PathBuf {
        self.dir.join("views.db")
    }

    /// The binary with this test's configuration.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&*BIN);
        c.arg("--config").arg(&self.config).args(args).env("RUST_LOG", "info");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("the binary runs")
    }

    /// A simulated day of `people` as events.jsonl and its truth.
    pub fn simulate(&self, people: u64, seed: u64) -> (PathBuf, ViewSet) {
        let out = self.dir.join("sim");
        let o = Command::new(&*BIN)
            .args(["simulate", "--people", &people.to_string(), "--seed", &seed.to_string()])
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let truth = serde_json::from_str(&std::fs::read_to_string(out.join("truth.json")).unwrap())
            .unwrap();
        (out.join("events.jsonl"), truth)
    }

    pub fn publish(&self, file: &Path) -> Output {
        let o = self.run(&["publish", file.to_str().unwrap()]);
        assert!(o.status.success(), "publish failed: {}", String::from_utf8_lossy(&o.stderr));
        o
    }

    /// `publish FILE` in the background (for tests that publish while
    /// workers run and die); its log goes to `<dir>/publish.log`.
    pub fn spawn_publish(&self, file: &Path) -> Child {
        let file = file.to_str().unwrap();
        let log = std::fs::File::create(self.dir.join("publish.log")).unwrap();
        self.cmd(&["publish", file]).stdout(Stdio::null()).stderr(log).spawn().unwrap()
    }

    /// A worker process; its log goes to `<dir>/<name>.log`.
    pub fn spawn_worker(&self, name: &str, extra: &[&str]) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))
            .unwrap();
        let mut args = vec!["run"];
        args.extend_from_slice(extra);
        self.cmd(&args).stdout(Stdio::null()).stderr(log).spawn().unwrap()
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// The views in the store.
    pub fn views(&self) -> ViewSet {
        SqliteStore::open_existing(&self.store_path(), &self.topic).unwrap().views().unwrap()
    }

    /// The store's offsets, summed over partitions.
    pub fn stored_offsets(&self) -> i64 {
        match SqliteStore::open_existing(&self.store_path(), &self.topic) {
            Ok(s) => s.offsets(&s.live().unwrap()).unwrap().iter().map(|(_, o)| o).sum(),
            Err(_) => 0,
        }
    }

    /// The offsets of version `name`, summed over partitions.
    pub fn stored_offsets_of(&self, name: &str) -> i64 {
        let s = SqliteStore::open_existing(&self.store_path(), &self.topic).unwrap();
        let v = s.version(name).unwrap();
        s.offsets(&v).unwrap().iter().map(|(_, o)| o).sum()
    }

    /// The views of version `name`.
    pub fn views_of(&self, name: &str) -> ViewSet {
        let s = SqliteStore::open_existing(&self.store_path(), &self.topic).unwrap();
        s.version_views(&s.version(name).unwrap()).unwrap()
    }
}

/// Asserts two view sets are equal, printing their first differences.
pub fn assert_views_equal(got: &ViewSet, want: &ViewSet, what: &str) {
    let diffs = got.differences(want);
    assert!(
        diffs.is_empty(),
        "{what}: {} rows differ (left = got, right = want):\n{}",
        diffs.len(),
        diffs.iter().take(20).map(|d| format!("  {d}\n")).collect::<String>()
    );
}

/// `swabstream broker` as a child process, on a port that survives restarts.
pub struct Broker {
    pub dir: PathBuf,
    pub addr: String,
    child: Option<Child>,
}

impl Broker {
    pub fn start(name: &str) -> Broker {
        let dir = std::env::temp_dir()
            .join(format!("swabstream-e2e-{}-{name}-broker", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut b = Broker { dir, addr: String::new(), child: None };
        b.spawn(0);
        b
    }

    fn spawn(&mut self, port: u16) {
        let mut child = Command::new(&*BIN)
            .arg("broker")
            .env("SWABSTREAM_DATA_DIR", &self.dir)
            .env("SWABSTREAM_KAFKA__EMBEDDED_PORT", port.to_string())
            // E2E_BROKER_ENGINE=sqlite runs the suite on the other engine.
            .env(
                "SWABSTREAM_KAFKA__EMBEDDED_STORAGE",
                std::env::var("E2E_BROKER_ENGINE").unwrap_or_else(|_| "slatedb".into()),
            )
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("the broker printed `{line}`"))
            .to_owned();
        self.addr = addr;
        self.child = Some(child);
    }

    /// Kills the broker (SIGKILL: no goodbye to anyone).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and file.
    pub fn restart(&mut self) {
        let port: u16 = self.addr.rsplit(':').next().unwrap().parse().unwrap();
        self.spawn(port);
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until `cond` holds, or panics after `limit`, saying `what`.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < limit, "timed out after {limit:?} waiting until {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The end offsets of `topic`'s partitions, summed.
pub fn end_offsets(broker: &str, topic: &str, partitions: i32) -> i64 {
    let c: BaseConsumer = client(broker).set("group.id", "e2e-probe").create().unwrap();
    (0..partitions).map(|p| c.fetch_watermarks(topic, p, Duration::from_secs(10)).unwrap().1).sum()
}

pub fn client(broker: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", broker);
    c
}

/// A record read back from a topic.
#[derive(Debug)]
pub struct Read {
    pub partition: i32,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

/// Every record of `topic`, read by assignment from the beginning to the end.
pub fn read_topic(broker: &str, topic: &str, partitions: i32) -> Vec<Read> {
    use rdkafka::message::Headers;
    use rdkafka::{Offset, TopicPartitionList};
    let c: BaseConsumer = client(broker)
        .set("group.id", "e2e-reader")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    let mut ends = 0;
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
        ends += c.fetch_watermarks(topic, p, Duration::from_secs(10)).unwrap().1;
    }
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let started = Instant::now();
    while (out.len() as i64) < ends {
        assert!(started.elapsed() < Duration::from_secs(120), "reading {topic} took too long");
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            out.push(Read {
                partition: m.partition(),
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().unwrap_or_default().to_vec(),
                headers: m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_owned(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default()).into(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        }
    }
    out
}

/// Splits a JSON-lines file into two at line `at`.
pub fn split(file: &Path, at: usize) -> (PathBuf, PathBuf) {
    let text = std::fs::read_to_string(file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let a = file.with_extension("a.jsonl");
    let b = file.with_extension("b.jsonl");
    std::fs::write(&a, lines[..at].join("\n") + "\n").unwrap();
    std::fs::write(&b, lines[at..].join("\n") + "\n").unwrap();
    (a, b)
}

/// A JSON-lines file cut into `parts` files of about equal length, in order.
pub fn chunks(file: &Path, parts: usize) -> Vec<PathBuf> {
    let text = std::fs::read_to_string(file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let size = lines.len().div_ceil(parts.max(1));
    lines
        .chunks(size.max(1))
        .enumerate()
        .map(|(i, part)| {
            let p = file.with_extension(format!("part{i}.jsonl"));
            std::fs::write(&p, part.join("\n") + "\n").unwrap();
            p
        })
        .collect()
}

/// The lines of a JSON-lines file.
pub fn line_count(file: &Path) -> usize {
    std::fs::read_to_string(file).unwrap().lines().count()
}

/// The random source of a crash test: seeded from `CRASH_SEED` when given
/// (to replay a failure), else from the clock, and the seed printed.
pub fn crash_rng() -> rand_chacha::ChaCha8Rng {
    use rand::SeedableRng;
    let seed: u64 =
        std::env::var("CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
            since.unwrap_or_default().as_nanos() as u64
        });
    eprintln!("CRASH_SEED={seed}");
    rand_chacha::ChaCha8Rng::seed_from_u64(seed)
}

/// Watches this machine for pauses while a test waits: a sampler thread
/// notes, every 100 ms, how long it really slept (a stall: the process was
/// not scheduled, or the VM was paused) and how far the wall clock moved
/// against the monotonic one (a step of the system clock, as NTP makes after
/// a VM pause). tansu's group coordinator times sessions by the wall clock,
/// so either, longer than a session timeout, expires every member and forces
/// a rebalance that is the group's correct response, not a bug under test.
pub struct ClockWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    worst: std::sync::Arc<std::sync::Mutex<(Duration, Duration)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ClockWatch {
    pub fn start() -> ClockWatch {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let stop = Arc::new(AtomicBool::new(false));
        let worst = Arc::new(Mutex::new((Duration::ZERO, Duration::ZERO)));
        let (s, w) = (stop.clone(), worst.clone());
        let thread = std::thread::spawn(move || {
            let tick = Duration::from_millis(100);
            let (mut mono, mut wall) = (Instant::now(), std::time::SystemTime::now());
            while !s.load(Ordering::Relaxed) {
                std::thread::sleep(tick);
                let (m, t) = (Instant::now(), std::time::SystemTime::now());
                let slept = m - mono;
                let moved = match t.duration_since(wall) {
                    Ok(d) => d,
                    Err(back) => slept + back.duration(),
                };
                let drift = moved.abs_diff(slept);
                let mut worst = w.lock().unwrap();
                worst.0 = worst.0.max(slept.saturating_sub(tick));
                worst.1 = worst.1.max(drift);
                (mono, wall) = (m, t);
            }
        });
        ClockWatch { stop, worst, thread: Some(thread) }
    }

    /// What disturbed the machine since `start`, if anything came near
    /// `limit` (a stall or a clock step of at least half of it).
    pub fn disturbance(&self, limit: Duration) -> Option<String> {
        let (stall, step) = *self.worst.lock().unwrap();
        (stall >= limit / 2 || step >= limit / 2).then(|| {
            format!("longest stall {stall:?}, largest wall-clock step {step:?}, session timeout {limit:?}")
        })
    }
}

impl Drop for ClockWatch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
