//! The one reader of the view store: a thread that reads the summed views
//! and the partitions' checkpoints once per refresh interval and publishes
//! them as an immutable [`Snapshot`]. Every request is answered from the
//! latest snapshot, so the store sees one read per interval whatever the
//! query load. When a read fails the last views keep being served, marked
//! stale in `as_of`, and the store is reopened on the next attempt.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use swabstream_events::{Day, Timestamp};
use swabstream_store::{PartitionStatus, StoreError, ViewStore};
use swabstream_views::ViewSet;
use tokio::sync::watch;

/// Opens the view store (again, after an outage).
pub type Opener = Box<dyn Fn() -> Result<Box<dyn ViewStore>, StoreError> + Send + Sync>;

/// Reads the log end (high watermark) of each partition of the topic; the
/// error says why it is unknown. Called from a thread of its own.
pub type LogEnds = Box<dyn Fn() -> Result<Vec<(i32, i64)>, String> + Send + Sync>;

/// How fresh an answer is (SPEC §8).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AsOf {
    /// When the numbers were read from the store (RFC 3339); null before the first read.
    pub read_at: Option<String>,
    /// When the store was last tried.
    pub checked_at: String,
    /// The view version the numbers are from: the live one when they were
    /// read (SPEC §9); null before the first read.
    pub version: Option<String>,
    /// Whether the last try failed, so the numbers are those of `read_at`.
    pub stale: bool,
    /// Why the store could not be read, when stale.
    pub problem: Option<String>,
    /// Records in the log not yet reflected, over all partitions (where known).
    pub lag: Option<i64>,
    /// Per Kafka partition.
    pub partitions: Vec<PartitionAsOf>,
}

/// One partition's freshness.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PartitionAsOf {
    pub partition: i32,
    /// The offset after the last record the numbers reflect; null if never committed.
    pub checkpoint_offset: Option<i64>,
    /// The partition's log end, where known.
    pub log_end: Option<i64>,
    /// `log_end - checkpoint_offset`, where both are known.
    pub lag: Option<i64>,
    /// The time of the partition's last commit (RFC 3339).
    pub committed_at: Option<String>,
}

/// What every request is answered from.
#[derive(Debug)]
pub struct Snapshot {
    pub views: Arc<ViewSet>,
    pub as_of: AsOf,
    /// Changes whenever the views or the checkpoints change, not on a mere
    /// re-read: what Server-Sent Events follow.
    pub generation: u64,
    /// Whether the store was ever read.
    pub ever_read: bool,
    /// Rendered summaries by day (None: the latest day), made on first use.
    pub(crate) summaries: Mutex<HashMap<Option<Day>, Bytes>>,
}

impl Snapshot {
    fn new(views: Arc<ViewSet>, as_of: AsOf, generation: u64, ever_read: bool) -> Snapshot {
        Snapshot { views, as_of, generation, ever_read, summaries: Mutex::new(HashMap::new()) }
    }

    /// The snapshot before the store was first read.
    pub fn empty() -> Snapshot {
        let as_of = AsOf {
            read_at: None,
            checked_at: now_rfc3339(),
            version: None,
            stale: true,
            problem: Some("the view store was not read yet".to_owned()),
            lag: None,
            partitions: Vec::new(),
        };
        Snapshot::new(Arc::new(ViewSet::default()), as_of, 0, false)
    }
}

/// The refresher's settings.
#[derive(Debug, Clone)]
pub struct RefreshOptions {
    pub interval: Duration,
    /// Open the store afresh for every read (cheap for the SQLite file, and
    /// it notices a file moved away or replaced), instead of only after an
    /// error (for stores with costly sessions, such as Scylla).
    pub reopen_each_read: bool,
}

/// Starts the refresher thread (and, with `log_ends`, the log-end reader).
/// They stop when `stop` is set.
pub fn start(
    opener: Opener,
    log_ends: Option<LogEnds>,
    opts: RefreshOptions,
    stop: Arc<AtomicBool>,
) -> watch::Receiver<Arc<Snapshot>> {
    let (tx, rx) = watch::channel(Arc::new(Snapshot::empty()));
    let ends: Arc<Mutex<BTreeMap<i32, i64>>> = Arc::default();
    if let Some(read_ends) = log_ends {
        let ends = ends.clone();
        let stop = stop.clone();
        let interval = opts.interval;
        std::thread::Builder::new()
            .name("serve-log-ends".to_owned())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match read_ends() {
                        Ok(v) => *ends.lock().expect("not poisoned") = v.into_iter().collect(),
                        Err(e) => tracing::debug!("log ends unknown: {e}"),
                    }
                    sleep_unless_stopped(interval, &stop);
                }
            })
            .expect("spawning a thread");
    }
    std::thread::Builder::new()
        .name("serve-refresh".to_owned())
        .spawn(move || refresh_loop(opener, opts, ends, tx, stop))
        .expect("spawning a thread");
    rx
}

fn refresh_loop(
    opener: Opener,
    opts: RefreshOptions,
    ends: Arc<Mutex<BTreeMap<i32, i64>>>,
    tx: watch::Sender<Arc<Snapshot>>,
    stop: Arc<AtomicBool>,
) {
    let mut store: Option<Box<dyn ViewStore>> = None;
    let mut last: Option<(Arc<ViewSet>, Vec<PartitionStatus>, String, String)> = None;
    let mut generation = 0u64;
    let mut was_stale = false;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        metrics::counter!("swabstream_serve_store_reads_total").increment(1);
        let read = (|| {
            if opts.reopen_each_read || store.is_none() {
                store = None;
                store = Some(opener()?);
            }
            let s = store.as_ref().expect("just opened");
            // The views and checkpoints of one version, the live one as read
            // now: a promotion between the reads does not mix two.
            let live = s.live()?;
            Ok::<_, StoreError>((s.version_views(&live)?, s.partitions(&live)?, live.name))
        })();
        let checked_at = now_rfc3339();
        let ends = ends.lock().expect("not poisoned").clone();
        let snapshot = match read {
            Ok((views, parts, version)) => {
                let changed = match &last {
                    Some((v, p, _, n)) => **v != views || *p != parts || *n != version,
                    None => true,
                };
                if changed || was_stale {
                    generation += 1;
                }
                let views = match (&last, changed) {
                    (Some((v, _, _, _)), false) => v.clone(),
                    _ => Arc::new(views),
                };
                let mut as_of = as_of(&parts, &ends, Some(checked_at.clone()), checked_at, None);
                as_of.version = Some(version.clone());
                last = Some((views.clone(), parts, as_of.checked_at.clone(), version));
                was_stale = false;
                metrics::gauge!("swabstream_serve_stale").set(0.0);
                Snapshot::new(views, as_of, generation, true)
            }
            Err(e) => {
                store = None;
                metrics::counter!("swabstream_serve_store_errors_total").increment(1);
                metrics::gauge!("swabstream_serve_stale").set(1.0);
                if !was_stale {
                    tracing::warn!("view store unreadable, serving the last views as stale: {e}");
                    generation += 1;
                }
                was_stale = true;
                match &last {
                    Some((views, parts, read_at, version)) => {
                        let mut as_of = as_of(
                            parts,
                            &ends,
                            Some(read_at.clone()),
                            checked_at,
                            Some(e.to_string()),
                        );
                        as_of.version = Some(version.clone());
                        Snapshot::new(views.clone(), as_of, generation, true)
                    }
                    None => {
                        let as_of = as_of(&[], &ends, None, checked_at, Some(e.to_string()));
                        Snapshot::new(Arc::new(ViewSet::default()), as_of, generation, false)
                    }
                }
            }
        };
        if tx.send(Arc::new(snapshot)).is_err() {
            return;
        }
        sleep_unless_stopped(opts.interval.saturating_sub(started.elapsed()), &stop);
    }
}

fn as_of(
    parts: &[PartitionStatus],
    ends: &BTreeMap<i32, i64>,
    read_at: Option<String>,
    checked_at: String,
    problem: Option<String>,
) -> AsOf {
    let mut by_partition: BTreeMap<i32, PartitionAsOf> = BTreeMap::new();
    for p in parts {
        by_partition.insert(
            p.partition,
            PartitionAsOf {
                partition: p.partition,
                checkpoint_offset: p.next_offset,
                log_end: None,
                lag: None,
                committed_at: p.committed_at_ms.map(|ms| Timestamp::from_millis(ms).to_rfc3339()),
            },
        );
    }
    for (&partition, &end) in ends {
        let entry = by_partition.entry(partition).or_insert(PartitionAsOf {
            partition,
            checkpoint_offset: None,
            log_end: None,
            lag: None,
            committed_at: None,
        });
        entry.log_end = Some(end);
        entry.lag = Some((end - entry.checkpoint_offset.unwrap_or(0)).max(0));
    }
    let partitions: Vec<PartitionAsOf> = by_partition.into_values().collect();
    let lag = (!ends.is_empty()).then(|| partitions.iter().filter_map(|p| p.lag).sum());
    AsOf { read_at, checked_at, version: None, stale: problem.is_some(), problem, lag, partitions }
}

fn sleep_unless_stopped(total: Duration, stop: &AtomicBool) {
    let until = Instant::now() + total;
    while !stop.load(Ordering::Relaxed) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// Now, as RFC 3339 in the city's offset.
pub fn now_rfc3339() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    Timestamp::from_millis(ms).to_rfc3339()
}
