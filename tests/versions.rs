//! View versions end to end (SPEC §9, README "after an outage"): rebuild
//! into a new version while workers run (`replay --into`), compare (`views
//! diff`), make it live (`promote`) while events arrive and a worker is
//! killed in the switch, go back (`promote --back`), and drop what is no
//! longer needed (`versions drop`). The live views are checked against the
//! simulator's truth for the whole log after each switch.

mod common;

use std::process::{Output, Stdio};
use std::time::Duration;

use common::{Broker, Env, assert_views_equal, end_offsets, line_count, split, wait_until};
use rand::Rng as _;
use serde_json::Value;
use swabstream_store::ViewStore as _;

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn ok(env: &Env, args: &[&str]) -> Output {
    let o = env.run(args);
    assert!(o.status.success(), "`{}` failed: {}", args.join(" "), text(&o));
    o
}

fn json_of(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&o.stdout)))
}

fn swabstream_sqlite_store(
    env: &Env,
) -> Result<swabstream_store_sqlite::SqliteStore, swabstream_store::StoreError> {
    swabstream_store_sqlite::SqliteStore::open_existing(&env.store_path(), &env.topic)
}

fn kill(child: &mut std::process::Child) {
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
}

/// The versions each partition's worker writes, as `status` says.
fn writing(env: &Env) -> Vec<String> {
    let o = env.run(&["status", "--json", "--no-dlq"]);
    let s = json_of(&o);
    s["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["version"].as_str().unwrap_or("-").to_owned())
        .collect()
}

#[test]
fn rebuild_compare_promote_while_events_arrive_and_a_worker_dies_in_the_switch() {
    let broker = Broker::start("versions");
    let env = Env::new("versions", &broker.addr, 3);
    let (events, truth) = env.simulate(8000, 31);
    let (first, rest) = split(&events, line_count(&events) / 2);
    // The second part arrives during the switch, the third once every
    // partition writes v2: only v2 can hold it.
    let (second, third) = split(&rest, line_count(&rest) / 2);
    env.publish(&first);
    let mut a = env.spawn_worker("a", &[]);
    let mut b = env.spawn_worker("b", &[]);
    let first_end = end_offsets(&broker.addr, &env.topic, 3);
    wait_until(Duration::from_secs(120), "the workers applied the first half", || {
        env.stored_offsets() >= first_end
    });
    // The promotion below is to find worker a owning partitions. One worker
    // can apply the first half alone before the group hands any to the
    // other; promoted before a's first claim, a claims in v2 directly and
    // never switches.
    wait_until(Duration::from_secs(60), "both workers own partitions", || {
        ["a", "b"].iter().all(|w| env.log(w).contains("claimed partition"))
    });

    // A rebuild that differs (a rule change's stand-in: the log from offset
    // 100 on), while the workers run: `diff` shows it, exit 1.
    let o = ok(&env, &["replay", "--into", "from-100", "--from-offset", "100"]);
    assert!(text(&o).contains("rows differ from the live version `v1`"), "{}", text(&o));
    let o = env.run(&["views", "diff", "v1", "from-100"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(out.contains("rows differ between `v1` (left) and `from-100` (right)"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("city_daily: ") && l.ends_with(" rows")), "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("  2022-04-09: ")),
        "the rows under their view: {out}"
    );
    let d = json_of(&env.run(&["views", "diff", "v1", "from-100", "--json"]));
    assert_eq!(d["equal"], Value::Bool(false));
    assert!(!d["differences"]["city_daily"].as_array().unwrap().is_empty(), "{d}");
    // The live version never moved: still the workers' numbers.
    assert_views_equal(&env.views_of("v1"), &env.views(), "live is v1");

    // A full rebuild equals the live version: exit 0.
    ok(&env, &["replay", "--into", "v2"]);
    let o = env.run(&["views", "diff", "v1", "v2"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("hold the same views"), "{}", text(&o));
    // Rebuilding into an existing name is refused: its rows would mix.
    let o = env.run(&["replay", "--into", "v2"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("version `v2` exists already") && text(&o).contains("versions drop v2")
    );
    let o = env.run(&["replay", "--into", "Bad Name"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).contains("`Bad Name` is not a version name: use 1 to 32 characters"),
        "{}",
        text(&o)
    );

    // Promote v2 while the second half arrives; kill a worker in the switch.
    let mut publish = env.spawn_publish(&second);
    let o = ok(&env, &["promote", "v2"]);
    assert!(text(&o).contains("`v2` is live now (was `v1`)"), "{}", text(&o));
    let mut rng = common::crash_rng();
    wait_until(Duration::from_secs(60), "worker a noticed the promotion", || {
        env.log("a").contains("the live view version is now `v2`")
    });
    std::thread::sleep(Duration::from_millis(rng.gen_range(0..400)));
    kill(&mut a);
    let mut a2 = env.spawn_worker("a2", &[]);
    assert!(publish.wait().unwrap().success());
    wait_until(Duration::from_secs(60), "status shows every partition writing v2", || {
        writing(&env).iter().all(|v| v == "v2")
    });
    env.publish(&third);
    let end = end_offsets(&broker.addr, &env.topic, 3);
    wait_until(Duration::from_secs(180), "v2 reached the end of the log", || {
        env.stored_offsets_of("v2") >= end
    });
    assert_views_equal(&env.views(), &truth, "live v2 after the switch and the kill");
    // The old version stayed where the switch left it, behind the log: the
    // third part went to v2 alone. (Before the third part, a fast worker
    // could apply all of the second into v1 before it saw the promotion.)
    assert!(env.stored_offsets_of("v1") < end);

    // Back to v1: the workers catch it up from its own checkpoints.
    let o = ok(&env, &["promote", "--back"]);
    assert!(text(&o).contains("`v1` is live now (was `v2`)"), "{}", text(&o));
    wait_until(Duration::from_secs(180), "v1 caught up", || env.stored_offsets_of("v1") >= end);
    assert_views_equal(&env.views(), &truth, "live v1 after promote --back");
    let o = env.run(&["views", "diff", "v1", "v2"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: swabstream_views::ViewSet =
        serde_json::from_slice(&ok(&env, &["views", "--version", "v2", "--json"]).stdout).unwrap();
    assert_views_equal(&v, &truth, "views --version v2");

    // The list: names, live, previous, checkpoints.
    let list = json_of(&ok(&env, &["versions", "list", "--json"]));
    let names: Vec<&str> =
        list.as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["v1", "from-100", "v2"]);
    let v1 = &list[0];
    assert_eq!((v1["live"].as_bool(), list[2]["previous"].as_bool()), (Some(true), Some(true)));
    assert_eq!(v1["records_counted"].as_i64(), Some(end), "{v1}");
    assert_eq!(v1["checkpoints"].as_array().unwrap().len(), 3);
    let table = String::from_utf8_lossy(&ok(&env, &["versions", "list"]).stdout).into_owned();
    assert!(table.lines().any(|l| l.starts_with("v1 ") && l.contains("LIVE")), "{table}");

    // Drop: never the live one; the others go, with their rows.
    let o = env.run(&["versions", "drop", "v1"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("version `v1` is live"), "{}", text(&o));
    ok(&env, &["versions", "drop", "from-100"]);
    let o = env.run(&["views", "--version", "from-100"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).contains("no version named `from-100`; the versions are v1, v2"),
        "{}",
        text(&o)
    );
    // Promote and drop the old version at once, before the workers notice
    // (they read the live pointer once a second): they let the dropped
    // version's pending records go and carry on in v2.
    ok(&env, &["promote", "v2"]);
    ok(&env, &["versions", "drop", "v1"]);
    wait_until(Duration::from_secs(60), "status shows every partition writing v2 again", || {
        writing(&env).iter().all(|v| v == "v2")
    });
    assert!(b.try_wait().unwrap().is_none(), "worker b died: {}", env.log("b"));
    assert!(a2.try_wait().unwrap().is_none(), "worker a2 died: {}", env.log("a2"));
    let o = env.run(&["promote", "--back"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("`v1`, which has been dropped"), "{}", text(&o));
    assert_views_equal(&env.views(), &truth, "live v2 after the drops");
    kill(&mut b);
    kill(&mut a2);
}

/// A replay still writing a version when it is promoted: the workers' claims
/// there fence it; it stops saying so (exit 1), and the workers continue
/// the version from where the replay left it.
#[test]
fn a_replay_promoted_while_it_runs_is_fenced_and_the_workers_continue_its_version() {
    let broker = Broker::start("versions-fenced");
    let env = Env::new("versions-fenced", &broker.addr, 2);
    let (events, truth) = env.simulate(8000, 32);
    env.publish(&events);
    let mut worker = env.spawn_worker("worker", &[]);
    let end = end_offsets(&broker.addr, &env.topic, 2);
    wait_until(Duration::from_secs(120), "the worker applied the log", || {
        env.stored_offsets() >= end
    });
    // A replay into `rebuilt`, a commit per record (some 15,000 of them).
    let replay = env
        .cmd(&["replay", "--into", "rebuilt"])
        .env("SWABSTREAM_WORKER__BATCH_MAX_RECORDS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Caught as soon as it has claimed its partitions in `rebuilt` (a commit
    // takes well under a millisecond here, so this looks every 5 ms).
    let claimed = || {
        let Ok(s) = swabstream_sqlite_store(&env) else { return false };
        s.version("rebuilt").ok().is_some_and(|v| s.partitions(&v).is_ok_and(|p| p.len() == 2))
    };
    let started = std::time::Instant::now();
    while !claimed() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the replay never claimed its partitions"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // Frozen between two commits: the store's write lock is taken here, so
    // the replay is outside its transactions when it is stopped (SIGSTOP)
    // and holds no lock the promotion and the worker's claims would wait for.
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let conn = rt.block_on(async {
        let db = libsql::Builder::new_local(env.store_path()).build().await.unwrap();
        let conn = db.connect().unwrap();
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        conn.execute("BEGIN IMMEDIATE", ()).await.unwrap();
        conn
    });
    let signal = |sig: &str| {
        let pid = replay.id().to_string();
        assert!(std::process::Command::new("kill").args([sig, &pid]).status().unwrap().success());
    };
    signal("-STOP");
    rt.block_on(conn.execute("ROLLBACK", ())).unwrap();
    drop(conn);
    let at_promotion = env.stored_offsets_of("rebuilt");
    assert!(at_promotion < end, "the replay must still be running ({at_promotion} of {end})");
    ok(&env, &["promote", "rebuilt"]);
    wait_until(Duration::from_secs(60), "the worker claimed both partitions in `rebuilt`", || {
        let log = env.log("worker");
        log.lines()
            .filter(|l| l.contains("claimed partition") && l.contains("version=rebuilt"))
            .count()
            >= 2
    });
    signal("-CONT");
    let o = replay.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let said = text(&o);
    assert!(
        said.contains("the replay into version `rebuilt` stopped")
            && said.contains("claimed by another writer")
            && said.contains("nothing is lost or counted twice"),
        "{said}"
    );
    wait_until(Duration::from_secs(120), "the worker caught `rebuilt` up", || {
        env.stored_offsets_of("rebuilt") >= end
    });
    assert_views_equal(&env.views(), &truth, "the promoted rebuild, continued by the worker");
    kill(&mut worker);
}
