//! The pipeline end to end on the Scylla view store: `store init`,
//! `publish`, `run` (and `run` killed with SIGKILL at random moments) as
//! child processes against the embedded broker and a real ScyllaDB, each
//! test with its own broker, topics and keyspace.
//!
//! They need a server: set `SWABSTREAM_TEST_SCYLLA=host:9042` and run with
//! `cargo nextest run -p swabstream-tests --test scylla --run-ignored all`.
//! Run without the variable, each says it was skipped and tests nothing.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Broker, Env, assert_views_equal, end_offsets, line_count, wait_until};
use rand::Rng;
use swabstream_store::ViewStore;
use swabstream_store_scylla::{ScyllaSettings, ScyllaStore};
use swabstream_views::ViewSet;

const VAR: &str = "SWABSTREAM_TEST_SCYLLA";

/// The server's address; a test run without one fails saying so.
fn server(test: &str) -> String {
    match std::env::var(VAR) {
        Ok(s) if !s.trim().is_empty() => s,
        _ => {
            // Ignored by default for this reason; run on purpose without a
            // server, it fails rather than passing with nothing tested.
            panic!("{test} needs a ScyllaDB: set {VAR}=host:9042 (this machine has none)")
        }
    }
}

/// A test's environment with `store.kind = "scylla"` in a keyspace of its own.
struct ScyllaEnv {
    env: Env,
    settings: ScyllaSettings,
}

impl ScyllaEnv {
    fn new(name: &str, broker: &str, partitions: i32, nodes: &str) -> ScyllaEnv {
        static N: AtomicU32 = AtomicU32::new(0);
        let secs = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let keyspace =
            format!("e2e_{secs}_{}_{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        let env = Env::new(name, broker, partitions);
        let mut text = std::fs::read_to_string(&env.config).unwrap();
        text.push_str(&format!(
            "[store]\nkind = \"scylla\"\n[store.scylla]\nnodes = \"{nodes}\"\nkeyspace = \"{keyspace}\"\nrequest_timeout = \"5s\"\n"
        ));
        std::fs::write(&env.config, text).unwrap();
        ScyllaEnv { env, settings: ScyllaSettings::new(nodes, &keyspace) }
    }

    fn store(&self) -> ScyllaStore {
        ScyllaStore::open(&self.settings, &self.env.topic).unwrap()
    }

    fn views(&self) -> ViewSet {
        self.store().views().unwrap()
    }

    fn stored_offsets(&self) -> i64 {
        let s = self.store();
        s.offsets(&s.live().unwrap()).unwrap().iter().map(|(_, o)| o).sum()
    }
}

#[test]
#[ignore = "needs a ScyllaDB: set SWABSTREAM_TEST_SCYLLA=host:9042 and run with --run-ignored all"]
fn store_init_publish_run_views_equal_truth() {
    let nodes = server("store_init_publish_run_views_equal_truth");
    let broker = Broker::start("scylla-basic");
    let s = ScyllaEnv::new("scylla-basic", &broker.addr, 3, &nodes);
    let env = &s.env;
    for _ in 0..2 {
        // Idempotent: the second run finds the keyspace and tables there.
        let o = env.run(&["store", "init"]);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{out}{}", String::from_utf8_lossy(&o.stderr));
        assert!(out.contains("ScyllaDB keyspace"), "{out}");
    }
    let (events, truth) = env.simulate(3000, 11);
    env.publish(&events);
    let o = env.run(&["run", "--until-caught-up"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_views_equal(&s.views(), &truth, "views in ScyllaDB after one run");
    assert_eq!(s.stored_offsets(), line_count(&events) as i64);
    // `views --json` reads the same store through the binary.
    let o = env.run(&["views", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let printed: ViewSet = serde_json::from_slice(&o.stdout).unwrap();
    assert_views_equal(&printed, &truth, "views --json");
}

#[test]
#[ignore = "needs a ScyllaDB: set SWABSTREAM_TEST_SCYLLA=host:9042 and run with --run-ignored all"]
fn exactly_once_on_scylla_when_the_worker_is_killed_at_random_moments() {
    let nodes = server("exactly_once_on_scylla_when_the_worker_is_killed_at_random_moments");
    let broker = Broker::start("scylla-crash");
    let s = ScyllaEnv::new("scylla-crash", &broker.addr, 4, &nodes);
    let env = &s.env;
    let (events, truth) = env.simulate(60_000, 13);
    let total = line_count(&events) as i64;
    let mut publish = env.spawn_publish(&events);
    let mut rng = common::crash_rng();
    let offsets = || std::panic::catch_unwind(|| s.stored_offsets()).unwrap_or(0);
    let mut kills_mid_stream = 0;
    let mut rounds = 0;
    while kills_mid_stream < 5 {
        rounds += 1;
        assert!(rounds < 40, "the worker made no progress between kills");
        let name = format!("worker-{rounds}");
        let mut worker = env.spawn_worker(&name, &[]);
        wait_until(Duration::from_secs(90), "the restarted worker holds partitions", || {
            env.log(&name).contains("claimed partition")
        });
        let before = offsets();
        std::thread::sleep(Duration::from_millis(rng.gen_range(100..6000)));
        worker.kill().unwrap(); // SIGKILL, mid-commit as likely as not
        worker.wait().unwrap();
        let after = offsets();
        eprintln!("killed the worker with {after} of {total} records committed (was {before})");
        if after > before && after < total {
            kills_mid_stream += 1;
        }
    }
    assert!(publish.wait().unwrap().success());
    let o = env.run(&["run", "--until-caught-up"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(s.stored_offsets(), end_offsets(&broker.addr, &env.topic, 4));
    assert_views_equal(&s.views(), &truth, "views in ScyllaDB after the kills");
}
