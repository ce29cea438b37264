//! Scenario tests of the R2 route's steps and of whole requests, over the store seam: real
//! SQLite, in-memory stores that race or fail on purpose, a stepping clock. They run on the
//! host and on wasm32 (under Node, against the Worker's SQLite build).

use std::cell::{Cell, RefCell};

use rusqlite::types::Value;
use workers_sqlite_poc::alerts::{Level, log_lines};
use workers_sqlite_poc::clock::Clock;
use workers_sqlite_poc::error::Error;
use workers_sqlite_poc::exec::{Limits, Statement, StatementResult};
use workers_sqlite_poc::pipeline::{
    self, Context, ListTables, RetryPolicy, Saved, Work, load, query, save, serve,
};
use workers_sqlite_poc::report::{CacheStatus, Report};
use workers_sqlite_poc::request::SaveMode;
use workers_sqlite_poc::storage::Layout;
use workers_sqlite_poc::storage::cache::DbCache;
use workers_sqlite_poc::storage::{DB_VERSION_KEY, MemoryStore, ObjectStore};
use workers_sqlite_poc::stream::{self, Stream, StreamOutput, StreamState};
use workers_sqlite_poc::testing::{
    Action, AfterReads, Before, Call, Fault, FaultPlan, FaultTally, HookStore, Object, Operation,
    StepClock, open, row_counts, snapshot, user,
};
use workers_sqlite_poc::trend::{Recommendation, TrendSettings, Trends};
use workers_sqlite_poc::work::Transaction;
use workers_sqlite_poc::{fixtures, sqlite};

/// Runs a scenario body once per storage layout, as `NAME::single` and `NAME::incremental`,
/// on the host and on wasm32: every scenario covers the default layout and the spec's.
macro_rules! both_layouts {
    ($name:ident) => {
        mod $name {
            #[cfg(all(target_family = "wasm", target_os = "unknown"))]
            use wasm_bindgen_test::wasm_bindgen_test as test;

            #[test]
            fn single() {
                super::$name(super::Layout::Single);
            }

            #[test]
            fn incremental() {
                super::$name(super::Layout::Incremental);
            }
        }
    };
}

const KEY: &str = "a/database.sqlite";
const MAX_DB_BYTES: u64 = 1024 * 1024;

fn ctx<'a, S, C>(
    layout: Layout,
    store: &'a S,
    clock: &'a C,
    cache: Option<&'a DbCache>,
) -> Context<'a, S, C> {
    Context {
        layout,
        max_db_bytes: MAX_DB_BYTES,
        cache,
        ..Context::new(store, clock)
    }
}

fn clock() -> StepClock {
    StepClock::stepping(1.0)
}

fn block<T>(f: impl std::future::Future<Output = T>) -> T {
    pollster::block_on(f)
}

/// One `GET /` request; its report as JSON.
fn get<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    id: &str,
    save: SaveMode,
) -> Result<serde_json::Value, Error> {
    block(serve(ctx, &user(id), save, &mut ListTables))
        .map(|(r, ())| serde_json::to_value(r).unwrap())
}

fn statement(sql: &str, args: Vec<Value>) -> Statement {
    Statement {
        sql: sql.into(),
        args,
        named_args: vec![],
    }
}

fn transaction(statements: Vec<Statement>) -> Transaction {
    Transaction {
        statements,
        limits: Limits::default(),
    }
}

/// One `POST /query` request.
fn post<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    id: &str,
    statements: Vec<Statement>,
) -> Result<(Report, Vec<StatementResult>), Error> {
    block(serve(
        ctx,
        &user(id),
        SaveMode::Auto,
        &mut transaction(statements),
    ))
}

fn demo_store() -> MemoryStore {
    let store = MemoryStore::new();
    store.insert(KEY, &fixtures::demo_database().unwrap(), &[]);
    store
}

/// The demo database in a store that counts body copies, and an empty cache.
fn counted_demo() -> (HookStore<'static>, DbCache, StepClock) {
    (
        HookStore::new(demo_store()),
        DbCache::new(MAX_DB_BYTES),
        clock(),
    )
}

/// The write that races the rival in the conflict tests (it touches no table the rival does).
const OUR_SQL: &str = "CREATE TABLE ours(x)";

/// The SQL the other writer of [`racing`] runs each time.
const RIVAL_SQL: &str =
    "INSERT INTO projects(name, created_at, settings) VALUES ('rival', 0, '{}')";

/// The demo database in a store where another worker (same layout, its own nonce) commits
/// [`RIVAL_SQL`] right after each of our first `races` reads of `database.sqlite`, so every
/// save that follows them meets a changed commit point. `after_rival` holds the store as the
/// rival's last commit left it.
fn racing(layout: Layout, races: u32, after_rival: &RefCell<Snapshot>) -> HookStore<'_> {
    let rival_runs = Cell::new(0);
    HookStore::new(demo_store()).with(AfterReads::new(KEY, races, move |store| {
        rival_runs.set(rival_runs.get() + 1);
        let clock = clock();
        let rival = Context {
            nonce: 0xbad0_0000 + rival_runs.get(),
            ..ctx(layout, store, &clock, None)
        };
        post(&rival, "a", vec![statement(RIVAL_SQL, vec![])]).unwrap();
        *after_rival.borrow_mut() = snapshot(store);
    }))
}

/// Every object in the store: key, bytes and metadata.
type Snapshot = Vec<Object>;

/// User `id`'s current database as a fresh worker loads it (base and deltas in the
/// incremental layout), and its `db-version`.
fn current_of(store: &impl ObjectStore, id: &str) -> (Vec<u8>, Option<u64>) {
    let clock = clock();
    let c = ctx(Layout::default(), store, &clock, None);
    let mut loaded = block(load(&c, &user(id))).unwrap();
    let version = loaded.version;
    (sqlite::export(&mut loaded.conn).unwrap().to_vec(), version)
}

/// User `a`'s current database.
fn current(store: &impl ObjectStore) -> Vec<u8> {
    current_of(store, "a").0
}

/// User `a`'s current `db-version`.
fn current_version(store: &impl ObjectStore) -> u64 {
    current_of(store, "a").1.unwrap()
}

/// The demo database in a store that fails calls as `plan` says.
fn faulty(plan: &FaultPlan) -> HookStore<'_> {
    HookStore::new(demo_store()).with(plan)
}

fn projects(bytes: &[u8]) -> i64 {
    open(bytes)
        .query_row("SELECT count(*) FROM projects", [], |r| r.get(0))
        .unwrap()
}

// ---- The load step ----

/// Load: a stored object opens with its version; a missing one is a new empty database; an
/// oversize one is 413; a corrupt one is 422.
fn load_step_outcomes(layout: Layout) {
    let store = demo_store();
    store.insert(
        KEY,
        &fixtures::demo_database().unwrap(),
        &[(DB_VERSION_KEY, "41".into())],
    );
    let clock = clock();
    let c = ctx(layout, &store, &clock, None);
    let loaded = block(load(&c, &user("a"))).unwrap();
    assert_eq!(loaded.version, Some(41));
    assert!(loaded.etag().is_some() && loaded.parse_ms.is_some());
    assert_eq!(loaded.cache, CacheStatus::Disabled);

    let missing = block(load(&c, &user("nobody"))).unwrap();
    assert!(missing.etag().is_none() && missing.version.is_none());

    let small = Context {
        max_db_bytes: 1000,
        ..ctx(layout, &store, &clock, None)
    };
    let err = block(load(&small, &user("a"))).unwrap_err();
    assert_eq!((err.status(), err.code()), (413, "database_too_large"));

    store.insert("bad/database.sqlite", b"not a database at all", &[]);
    let err = block(load(&c, &user("bad"))).unwrap_err();
    assert_eq!((err.status(), err.code()), (422, "corrupt_database"));
}
both_layouts!(load_step_outcomes);

/// Load with a cache: a current entry is a hit (no body sent); an outdated one is stale.
fn load_step_uses_the_cache_only_when_current(layout: Layout) {
    let (store, cache, clock) = counted_demo();
    let c = ctx(layout, &store, &clock, Some(&cache));
    get(&c, "a", SaveMode::Never).unwrap();
    assert_eq!(store.bodies_sent(), 1);
    let hit = block(load(&c, &user("a"))).unwrap();
    assert_eq!(hit.cache, CacheStatus::Hit);
    assert!(hit.parse_ms.is_none());
    assert_eq!(store.bodies_sent(), 1, "a hit downloads nothing");
    drop(hit);
    get(&c, "a", SaveMode::Never).unwrap();
    store
        .inner
        .insert(KEY, &fixtures::demo_database().unwrap(), &[]);
    let stale = block(load(&c, &user("a"))).unwrap();
    assert_eq!(stale.cache, CacheStatus::Stale);
}
both_layouts!(load_step_uses_the_cache_only_when_current);

// ---- The query step ----

/// Query: a read leaves `changed` false, a committed write sets it, and tables are listed
/// after the work.
fn query_step_detects_changes(layout: Layout) {
    let store = demo_store();
    let clock = clock();
    let cache = DbCache::new(64 << 20);
    let c = ctx(layout, &store, &clock, Some(&cache));
    let u = user("a");
    let read = query(&c, &u, block(load(&c, &u)).unwrap(), &mut ListTables).unwrap();
    assert!(!read.changed);
    assert_eq!(read.tables, ["projects", "raw_clips", "clip_tags"]);
    let mut create = transaction(vec![statement("CREATE TABLE extra(x)", vec![])]);
    let wrote = query(&c, &u, block(load(&c, &u)).unwrap(), &mut create).unwrap();
    assert!(wrote.changed);
    assert_eq!(wrote.tables.last().unwrap(), "extra");
    let mut failing = transaction(vec![
        statement(
            "INSERT INTO projects(name, created_at, settings) VALUES ('x', 0, '{}')",
            vec![],
        ),
        statement("SELECT * FROM nope", vec![]),
    ]);
    assert_eq!(cache.usage().0, 0);
    let failed = query(&c, &u, block(load(&c, &u)).unwrap(), &mut failing).unwrap_err();
    assert_eq!(failed.code(), "sql_error");
    // A rolled-back request changed nothing: its copy equals the store and is cached.
    assert_eq!(cache.usage().0, 1, "the unchanged copy was not kept");
    // One that committed a change before failing is not.
    let mut committed_then_failed = transaction(vec![statement("SELECT * FROM nope", vec![])]);
    drop(cache.take(&u.db_key()));
    let loaded = block(load(&c, &u)).unwrap();
    loaded
        .conn
        .execute_batch("CREATE TABLE made_outside_the_work(x)")
        .unwrap();
    assert!(query(&c, &u, loaded, &mut committed_then_failed).is_err());
    assert_eq!(cache.usage().0, 0, "a changed copy went back to the cache");
}
both_layouts!(query_step_detects_changes);

// ---- The save step ----

/// Save: `never` and `auto` without a change skip; a change is written with a larger
/// version; a stale etag is a conflict with nothing written.
fn save_step_outcomes(layout: Layout) {
    let store = demo_store();
    let clock = clock();
    let c = ctx(layout, &store, &clock, None);
    let mut q = query(
        &c,
        &user("a"),
        block(load(&c, &user("a"))).unwrap(),
        &mut ListTables,
    )
    .unwrap();
    for mode in [SaveMode::Never, SaveMode::Auto] {
        assert!(matches!(
            block(save(&c, &user("a"), &mut q, mode)).unwrap(),
            Saved::Skipped { .. }
        ));
    }
    assert_eq!(store.put_count(), 0);
    let Saved::Written { version, .. } =
        block(save(&c, &user("a"), &mut q, SaveMode::Always)).unwrap()
    else {
        panic!("always writes");
    };
    assert_eq!(current_version(&store), version);
    let written = snapshot(&store);
    // The commit point this copy was loaded at is now outdated.
    assert_eq!(
        block(save(&c, &user("a"), &mut q, SaveMode::Always)).unwrap(),
        Saved::Conflict
    );
    assert_eq!(
        snapshot(&store),
        written,
        "a conflict leaves nothing behind"
    );
    // Single: one put each. Incremental: `always` upgrades the user (a delta and the
    // manifest) and folds the image into database.sqlite (the base and the manifest); the
    // stale save's base put fails.
    let puts = match layout {
        Layout::Single => 2,
        Layout::Incremental => 5,
    };
    assert_eq!(store.put_count(), puts);
}
both_layouts!(save_step_outcomes);

// ---- The report step ----

/// Report: a skipped save is `not_run`, not graded `optimal`; a frozen clock flags every
/// CPU-only span that ran.
fn report_step_never_overclaims(layout: Layout) {
    let store = demo_store();
    let clock = StepClock::frozen();
    let c = ctx(layout, &store, &clock, None);
    let skipped = get(&c, "a", SaveMode::Never).unwrap();
    assert_eq!(skipped["delay_analysis"]["save"]["status"], "not_run");
    assert_eq!(skipped["route"], "r2");
    let unmeasured: Vec<String> =
        serde_json::from_value(skipped["clock"]["unmeasured"].clone()).unwrap();
    assert!(
        unmeasured.contains(&"load.parse_ms".to_owned()),
        "{unmeasured:?}"
    );
    assert!(
        !unmeasured.contains(&"save.serialize_ms".to_owned()),
        "the save did not run"
    );
    let saved = get(&c, "a", SaveMode::Always).unwrap();
    assert_eq!(saved["delay_analysis"]["save"]["status"], "optimal");
    let unmeasured: Vec<String> =
        serde_json::from_value(saved["clock"]["unmeasured"].clone()).unwrap();
    for span in ["load.parse_ms", "query_ms", "save.serialize_ms"] {
        assert!(
            unmeasured.iter().any(|u| u == span),
            "{span}: {unmeasured:?}"
        );
    }
}
both_layouts!(report_step_never_overclaims);

// ---- Whole requests: the spec's GET / ----

/// An existing database: its tables are listed, and what is written back is a valid SQLite
/// image with the same rows, stamped with an increasing `db-version`.
fn existing_database_is_listed_and_written_back_intact(layout: Layout) {
    let store = demo_store();
    let demo = fixtures::demo_database().unwrap();
    let clock = clock();
    let c = ctx(layout, &store, &clock, None);
    let report = get(&c, "a", SaveMode::Always).unwrap();
    assert_eq!(
        report["db_info"]["tables"],
        serde_json::json!(["projects", "raw_clips", "clip_tags"])
    );
    assert_eq!(report["db_info"]["new_database"], false);
    assert_eq!(report["db_info"]["attempts"], 1);
    let (stored, v1) = current_of(&store, "a");
    assert_eq!(row_counts(&stored), row_counts(&demo));
    let v1 = v1.unwrap();
    if layout == Layout::Single {
        assert_eq!(
            store.bytes(KEY).unwrap(),
            stored,
            "the whole file is replaced"
        );
        assert_eq!(store.metadata(KEY).unwrap()[DB_VERSION_KEY], v1.to_string());
    }
    assert_eq!(report["db_info"]["db_version"], v1.to_string());
    let again = get(&c, "a", SaveMode::Always).unwrap();
    let v2 = current_version(&store);
    assert!(v2 > v1, "{v2} <= {v1}");
    assert_eq!(again["db_info"]["loaded_db_version"], v1.to_string());
}
both_layouts!(existing_database_is_listed_and_written_back_intact);

/// A version from the future (clock skew between writers) still gets a larger successor.
fn db_version_increases_even_when_the_clock_is_behind(layout: Layout) {
    let store = MemoryStore::new();
    let future = u64::MAX / 2;
    store.insert(
        KEY,
        &fixtures::demo_database().unwrap(),
        &[(DB_VERSION_KEY, future.to_string())],
    );
    let clock = clock();
    get(&ctx(layout, &store, &clock, None), "a", SaveMode::Always).unwrap();
    assert_eq!(current_version(&store), future + 1);
}
both_layouts!(db_version_increases_even_when_the_clock_is_behind);

/// A missing object means a new database: `always` stores it create-only; `auto` stores
/// nothing, since nothing was written to it.
fn missing_object_creates_an_empty_database(layout: Layout) {
    let store = MemoryStore::new();
    let clock = clock();
    let c = ctx(layout, &store, &clock, None);
    let auto = get(&c, "newcomer", SaveMode::Auto).unwrap();
    assert_eq!(auto["db_info"]["saved"], false);
    assert!(store.bytes("newcomer/database.sqlite").is_none());
    let report = get(&c, "newcomer", SaveMode::Always).unwrap();
    assert_eq!(report["db_info"]["new_database"], true);
    assert_eq!(report["db_info"]["tables"], serde_json::json!([]));
    assert!(report["db_info"]["loaded_db_version"].is_null());
    let stored = store.bytes("newcomer/database.sqlite").unwrap();
    assert!(row_counts(&stored).is_empty());
}
both_layouts!(missing_object_creates_an_empty_database);

/// A stored object that is not a database is reported and never written to.
fn corrupt_object_is_reported_and_left_untouched(layout: Layout) {
    let store = MemoryStore::new();
    let garbage = workers_sqlite_poc::testing::Rng::new(3).bytes(8192);
    store.insert(KEY, &garbage, &[]);
    let clock = clock();
    let err = get(&ctx(layout, &store, &clock, None), "a", SaveMode::Always).unwrap_err();
    assert_eq!((err.status(), err.code()), (422, "corrupt_database"));
    assert_eq!(store.put_count(), 0);
    assert_eq!(store.bytes(KEY).unwrap(), garbage);
}
both_layouts!(corrupt_object_is_reported_and_left_untouched);

/// An object over the size limit is refused with 413 without its body ever being read, and
/// is not written; one exactly at the limit is read once.
fn oversize_object_is_refused_without_reading_its_body(layout: Layout) {
    let store = HookStore::default();
    let big = fixtures::sized_database(64 * 1024, 7).unwrap();
    store.inner.insert(KEY, &big, &[]);
    let clock = clock();
    let limited = |max| Context {
        max_db_bytes: max,
        ..ctx(layout, &store, &clock, None)
    };
    let err = get(&limited(big.len() as u64 - 1), "a", SaveMode::Always).unwrap_err();
    assert_eq!((err.status(), err.code()), (413, "database_too_large"));
    assert!(err.body().error.message.contains("Durable Object"));
    assert_eq!(store.body_copies(), 0, "the body was read");
    assert_eq!(store.inner.put_count(), 0);
    assert!(get(&limited(big.len() as u64), "a", SaveMode::Always).is_ok());
    assert_eq!(store.body_copies(), 1);
}
both_layouts!(oversize_object_is_refused_without_reading_its_body);

/// The version cache: a repeat request is a hit; a write by someone else makes the copy
/// stale, and the next request sees that write.
fn version_cache_hits_and_detects_outside_writes(layout: Layout) {
    let store = demo_store();
    let cache = DbCache::new(MAX_DB_BYTES);
    let clock = clock();
    let c = ctx(layout, &store, &clock, Some(&cache));
    let first = get(&c, "a", SaveMode::Always).unwrap();
    assert_eq!(first["cache"]["status"], "miss");
    assert_eq!(
        first["cache"]["entries"], 1,
        "the report shows the cache after the request"
    );
    let second = get(&c, "a", SaveMode::Always).unwrap();
    assert_eq!(second["cache"]["status"], "hit");
    assert_eq!(
        second["db_info"]["loaded_db_version"],
        first["db_info"]["db_version"]
    );
    // Another worker (no cache of its own) writes.
    let elsewhere = Context {
        nonce: 99,
        ..ctx(layout, &store, &clock, None)
    };
    post(
        &elsewhere,
        "a",
        vec![statement("CREATE TABLE added_elsewhere(x)", vec![])],
    )
    .unwrap();
    let third = get(&c, "a", SaveMode::Always).unwrap();
    // Single: the copy is dropped and the new file loaded. Incremental: the copy is brought
    // up to date with the other worker's delta.
    let status = match layout {
        Layout::Single => "stale",
        Layout::Incremental => "updated",
    };
    assert_eq!(third["cache"]["status"], status);
    let fourth = get(&c, "a", SaveMode::Always).unwrap();
    assert_eq!(fourth["cache"]["status"], "hit");
    assert!(
        fourth["db_info"]["tables"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "added_elsewhere")
    );
}
both_layouts!(version_cache_hits_and_detects_outside_writes);

/// The cache never holds more than its budget, evicting least recently used users.
fn version_cache_stays_within_budget(layout: Layout) {
    let store = MemoryStore::new();
    let demo = fixtures::demo_database().unwrap();
    let cache = DbCache::new(3 * demo.len() as u64);
    let clock = clock();
    let c = ctx(layout, &store, &clock, Some(&cache));
    for i in 0..6 {
        store.insert(&format!("u{i}/database.sqlite"), &demo, &[]);
        let report = get(&c, &format!("u{i}"), SaveMode::Always).unwrap();
        assert!(report["cache"]["bytes"].as_u64().unwrap() <= cache.max_bytes());
    }
    assert_eq!(cache.usage().0, 3);
    assert_eq!(
        get(&c, "u0", SaveMode::Always).unwrap()["cache"]["status"],
        "miss"
    );
    assert_eq!(
        get(&c, "u5", SaveMode::Always).unwrap()["cache"]["status"],
        "hit"
    );
}
both_layouts!(version_cache_stays_within_budget);

/// Another writer changes the object after the first load: the request re-runs on the new
/// version and keeps the other writer's change. When it keeps losing, it re-runs after
/// jittered waits until the retry deadline, then answers 503 (`Retry-After`) with nothing
/// written.
fn lost_races_rerun_then_conflict(layout: Layout) {
    let demo = projects(&fixtures::demo_database().unwrap());
    let clock = clock();
    let after_rival = RefCell::default();
    let store = racing(layout, 1, &after_rival);
    let (report, _) = post(
        &ctx(layout, &store, &clock, None),
        "a",
        vec![statement(OUR_SQL, vec![])],
    )
    .unwrap();
    let report = serde_json::to_value(report).unwrap();
    assert_eq!(report["db_info"]["attempts"], 2);
    assert_eq!(projects(&current(&store)), demo + 1, "the rival's write");

    let after_all = RefCell::default();
    let store = racing(layout, u32::MAX, &after_all);
    let clock = self::clock();
    let err = post(
        &ctx(layout, &store, &clock, None),
        "a",
        vec![statement(OUR_SQL, vec![])],
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::Conflict { attempts } if attempts > 3),
        "{err:?}"
    );
    assert_eq!((err.status(), err.retry_after_s()), (503, Some(1)));
    let deadline = u64::from(RetryPolicy::default().deadline_ms);
    assert!(clock.slept_ms() > 0 && clock.slept_ms() < deadline);
    assert_eq!(
        snapshot(&store.inner),
        *after_all.borrow(),
        "the store is as the rival's last write left it"
    );
}
both_layouts!(lost_races_rerun_then_conflict);

/// One call on a libSQL stream through the whole request: `state` continues a stream.
fn stream_call<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    state: Option<StreamState>,
    requests: serde_json::Value,
) -> Result<StreamOutput, Error> {
    let mut work = Stream {
        user: "a".into(),
        state,
        call: stream::Call::Pipeline(serde_json::from_value(requests).unwrap()),
        limits: Limits::default(),
        now_ms: 0,
    };
    block(serve(ctx, &user("a"), SaveMode::Auto, &mut work)).map(|(_, out)| out)
}

/// An interactive transaction's COMMIT that loses the race to another writer's save re-runs,
/// replay included, on the other writer's version: if that writer changed what the
/// transaction read (the projects count), the commit fails with `transaction_conflict` and
/// the store is exactly as the other writer left it; if not, the transaction commits after
/// it and both are kept.
fn interactive_commit_losing_a_race(layout: Layout) {
    let exec = |sql: &str| serde_json::json!({"type": "execute", "stmt": {"sql": sql}});
    let demo = projects(&fixtures::demo_database().unwrap());
    let blind = serde_json::json!([
        exec("BEGIN"),
        exec("CREATE TABLE mine(x)"),
        exec("INSERT INTO mine VALUES (1)"),
    ]);
    let reader = serde_json::json!([
        exec("BEGIN"),
        exec("SELECT count(*) FROM projects"),
        exec("INSERT INTO projects(name, created_at, settings) VALUES ('tx', 0, '{}')"),
    ]);
    for (opening, commits) in [(blind, true), (reader, false)] {
        let clock = clock();
        let store = demo_store();
        let opened = stream_call(&ctx(layout, &store, &clock, None), None, opening).unwrap();
        let before = snapshot(&store);
        assert_eq!(
            projects(&current(&store)),
            demo,
            "nothing stored before COMMIT"
        );
        assert!(opened.next.is_some());
        let after_rival = RefCell::default();
        let racing = HookStore::new(store).with(AfterReads::new(KEY, 1, |store| {
            let rival_clock = self::clock();
            let rival = Context {
                nonce: 0xbad0_0001,
                ..ctx(layout, store, &rival_clock, None)
            };
            post(&rival, "a", vec![statement(RIVAL_SQL, vec![])]).unwrap();
            *after_rival.borrow_mut() = snapshot(store);
        }));
        let committed = stream_call(
            &ctx(layout, &racing, &clock, None),
            opened.next,
            serde_json::json!([exec("COMMIT"), {"type": "close"}]),
        );
        assert_ne!(snapshot(&racing.inner), before, "the rival wrote");
        let stored = current(&racing);
        if commits {
            let out = committed.unwrap();
            assert_eq!(out.results[0]["type"], "ok", "{:?}", out.results);
            assert_eq!(projects(&stored), demo + 1, "the rival's row");
            assert!(
                row_counts(&stored)
                    .iter()
                    .any(|(t, n)| t == "mine" && *n == 1)
            );
        } else {
            let err = committed.unwrap_err();
            assert_eq!((err.status(), err.code()), (409, "transaction_conflict"));
            assert_eq!(
                snapshot(&racing.inner),
                *after_rival.borrow(),
                "nothing of the transaction"
            );
        }
    }
}
both_layouts!(interactive_commit_losing_a_race);

/// A request that loses every race leaves nothing in the cache, and the next request loads
/// the other writer's version.
fn conflict_does_not_poison_the_cache(layout: Layout) {
    let cache = DbCache::new(MAX_DB_BYTES);
    let clock = clock();
    let after_rival = RefCell::default();
    let store = racing(layout, u32::MAX, &after_rival);
    // A write: the spec's request in the incremental layout keeps a rival's write instead
    // of losing to it.
    let err = post(
        &ctx(layout, &store, &clock, Some(&cache)),
        "a",
        vec![statement(OUR_SQL, vec![])],
    )
    .unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err:?}");
    assert_eq!(cache.usage(), (0, 0));
    // The rival stops (reads of the store underneath do not set it off): the next request
    // loads its last version.
    let rival_version = current_version(&store.inner);
    let next = get(
        &ctx(layout, &store.inner, &clock, Some(&cache)),
        "a",
        SaveMode::Always,
    )
    .unwrap();
    assert_eq!(next["cache"]["status"], "miss");
    assert_eq!(
        next["db_info"]["loaded_db_version"],
        rival_version.to_string()
    );
}
both_layouts!(conflict_does_not_poison_the_cache);

/// Slow phases produce one JSON log line each, critical ones recommending archiving or a
/// Durable Object and a user warning, and a sustained trend recommends migrating.
fn slow_syncs_are_logged_and_trended(layout: Layout) {
    let store = demo_store();
    let clock = StepClock::slow();
    let c = ctx(layout, &store, &clock, None);
    let trends = Trends::new();
    let mut last = None;
    for _ in 0..3 {
        let (report, ()) = block(serve(&c, &user("a"), SaveMode::Always, &mut ListTables)).unwrap();
        let lines = log_lines("a", &report);
        assert_eq!(lines.len(), 2, "{lines:?}");
        for (level, line) in &lines {
            assert_eq!(*level, Level::Critical);
            assert_eq!(line["status"], "critical");
            assert!(line["message"].as_str().unwrap().contains("Durable Object"));
        }
        assert!(report.user_warning.is_some());
        last = Some(trends.record(
            "a",
            report.sync_ms(),
            &c.thresholds,
            &TrendSettings::default(),
        ));
    }
    assert_eq!(
        last.unwrap().recommendation,
        Recommendation::MigrateToDurableObject
    );
}
both_layouts!(slow_syncs_are_logged_and_trended);

/// Copies of the database's bytes, counted so that a regression fails here: a cache miss copies
/// the body once (straight into SQLite's buffer), a cache hit copies nothing, and a save in the
/// single layout hands the store SQLite's own image, so the worker's core makes no copy of its
/// own (the R2 adapter then streams it out in 1 MiB chunks); the incremental layout uploads no
/// image at all, only a delta and the manifest.
fn copies_per_load_and_save_are_counted(layout: Layout) {
    let puts = RefCell::new(Vec::new());
    let store = HookStore::new(demo_store()).with(Before(|call: &Call<'_>, _: &MemoryStore| {
        if let Call::Put { bytes, .. } = call {
            puts.borrow_mut()
                .push((bytes.as_ptr() as usize, bytes.len()));
        }
        Action::Proceed
    }));
    let (cache, clock) = (DbCache::new(MAX_DB_BYTES), clock());
    let c = ctx(layout, &store, &clock, Some(&cache));
    get(&c, "a", SaveMode::Always).unwrap();
    assert_eq!(
        store.body_copies(),
        1,
        "a miss copies the body exactly once"
    );
    get(&c, "a", SaveMode::Always).unwrap();
    assert_eq!(store.body_copies(), 1, "a hit copies nothing");
    let mut entry = cache.take(KEY).unwrap();
    let image = sqlite::export(&mut entry.conn).unwrap();
    let puts = puts.borrow();
    // `always` writes the whole database in both layouts: the put of database.sqlite hands
    // over SQLite's own image, not a copy.
    assert!(
        puts.contains(&(image.as_ptr() as usize, image.len())),
        "{puts:?}"
    );
    if layout == Layout::Incremental {
        // The upgrade (a delta and the manifest), then per request the base and the manifest.
        assert_eq!(puts.len(), 6, "{puts:?}");
    }
}
both_layouts!(copies_per_load_and_save_are_counted);

// ---- Whole requests: POST /query ----

/// Insert, then select: the write is saved, the read sees it, and every value comes back
/// exactly as sent.
fn query_insert_then_select(layout: Layout) {
    let store = demo_store();
    let clock = clock();
    let c = ctx(layout, &store, &clock, None);
    let values = vec![
        Value::Integer(9_007_199_254_740_993),
        Value::Real(2.5),
        Value::Text("clip".into()),
        Value::Blob(vec![0, 1, 2]),
        Value::Null,
    ];
    let (report, results) = post(
        &c,
        "a",
        vec![
            statement("CREATE TABLE t(a, b, c, d, e)", vec![]),
            statement("INSERT INTO t VALUES (?, ?, ?, ?, ?)", values.clone()),
        ],
    )
    .unwrap();
    assert_eq!(results[1].changes, 1);
    let report = serde_json::to_value(&report).unwrap();
    assert_eq!(report["db_info"]["saved"], true);
    assert_eq!(report["db_info"]["save_mode"], "auto");
    let (_, results) = post(&c, "a", vec![statement("SELECT * FROM t", vec![])]).unwrap();
    assert_eq!(results[0].rows, [values]);
    assert_eq!(results[0].columns, ["a", "b", "c", "d", "e"]);
}
both_layouts!(query_insert_then_select);

/// A batch that fails part-way is rolled back: nothing is written, and the stored object is
/// byte-identical.
fn failing_batch_leaves_the_object_byte_identical(layout: Layout) {
    let store = demo_store();
    let before = snapshot(&store);
    let clock = clock();
    let err = post(
        &ctx(layout, &store, &clock, None),
        "a",
        vec![
            statement("DELETE FROM clip_tags", vec![]),
            statement("INSERT INTO missing VALUES (1)", vec![]),
        ],
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::SqlError { statement: 1, .. }),
        "{err:?}"
    );
    assert_eq!(snapshot(&store), before);
    assert_eq!(store.put_count(), 0);
}
both_layouts!(failing_batch_leaves_the_object_byte_identical);

/// A read-only batch on a version-cache hit downloads nothing and uploads nothing.
fn read_only_batch_on_a_cache_hit_transfers_nothing(layout: Layout) {
    let (store, cache, clock) = counted_demo();
    let c = ctx(layout, &store, &clock, Some(&cache));
    post(
        &c,
        "a",
        vec![statement("SELECT count(*) FROM projects", vec![])],
    )
    .unwrap();
    let (bodies, puts) = (store.bodies_sent(), store.inner.put_count());
    let (report, results) = post(
        &c,
        "a",
        vec![statement("SELECT name FROM projects", vec![])],
    )
    .unwrap();
    assert_eq!(results[0].rows.len(), 3);
    assert_eq!(report.cache.unwrap().status, CacheStatus::Hit);
    assert_eq!(store.bodies_sent(), bodies, "downloaded on a hit");
    assert_eq!(store.inner.put_count(), puts, "uploaded a read");
    assert_eq!(puts, 0);
}
both_layouts!(read_only_batch_on_a_cache_hit_transfers_nothing);

/// Each guard rail refuses with its own 4xx code, and the stored object stays byte-identical.
fn guard_rails_leave_the_object_byte_identical(layout: Layout) {
    let store = demo_store();
    let before = snapshot(&store);
    let clock = clock();
    let c = ctx(layout, &store, &clock, None);
    for (sql, code) in [
        ("ATTACH 'x.db' AS x", "statement_not_allowed"),
        ("VACUUM INTO 'x.db'", "statement_not_allowed"),
        ("PRAGMA writable_schema = 1", "statement_not_allowed"),
        ("PRAGMA journal_mode = WAL", "statement_not_allowed"),
        (
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT max(x) FROM c",
            "cpu_budget_exceeded",
        ),
    ] {
        let err = post(
            &c,
            "a",
            vec![
                statement("DELETE FROM clip_tags", vec![]),
                statement(sql, vec![]),
            ],
        )
        .unwrap_err();
        assert_eq!(err.code(), code, "{sql}");
        assert!((400..500).contains(&err.status()), "{sql}");
        assert_eq!(snapshot(&store), before, "{sql}");
    }
    let mut big = transaction(vec![statement("SELECT zeroblob(100000)", vec![])]);
    big.limits.max_result_bytes = 1000;
    let err = block(serve(&c, &user("a"), SaveMode::Auto, &mut big)).unwrap_err();
    assert_eq!(err.code(), "result_too_large");
    assert_eq!(store.put_count(), 0);
}
both_layouts!(guard_rails_leave_the_object_byte_identical);

// ---- Production R2 behaviour, through a fault-injecting store ----

/// One insert through a faulty store; what the client is told.
fn insert_through(
    layout: Layout,
    store: &HookStore<'_>,
    clock: &StepClock,
    n: i64,
) -> Result<(), Error> {
    let c = Context {
        retry: RetryPolicy::default(),
        nonce: n as u64,
        ..ctx(layout, store, clock, None)
    };
    post(
        &c,
        "a",
        vec![statement(
            "INSERT INTO projects(id, name, created_at, settings) VALUES (?, 'p', 0, '{}')",
            vec![Value::Integer(1000 + n)],
        )],
    )
    .map(|_| ())
}

fn stored_ids(store: &HookStore<'_>) -> Vec<i64> {
    let conn = open(&current(store));
    let mut stmt = conn
        .prepare("SELECT id FROM projects WHERE id >= 1000 ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// 429s and 5xx on the put are retried with backoff; the put stays conditional, so a retry
/// never overwrites. Past the retries the answer is 503 with `Retry-After`, and the stored
/// object is still the last committed version. A put whose answer was lost is recognised
/// by its write id, so it is acknowledged once and never applied twice. In the incremental
/// layout each plan hits the delta's put, then (separately) the manifest's, the commit point.
fn faults_on_put_lose_nothing_acknowledged_and_store_nothing_unacknowledged(layout: Layout) {
    use Fault::{LostAnswer, Permanent, RateLimited, Unavailable};
    let plans: Vec<(&str, Vec<Fault>, bool)> = vec![
        ("one 429", vec![RateLimited], true),
        ("four 429s", vec![RateLimited; 4], true),
        // A 429 is asked again every 250 ms for a little over R2's one-second window.
        ("five 429s", vec![RateLimited; 5], true),
        ("six 429s", vec![RateLimited; 6], false),
        ("500 then ok", vec![Unavailable], true),
        ("five 500s", vec![Unavailable; 5], false),
        ("lost answer", vec![LostAnswer], true),
        (
            "lost answer then 429s",
            vec![LostAnswer, RateLimited, RateLimited],
            true,
        ),
        ("permanent", vec![Permanent], false),
    ];
    let targets: &[(&str, &[Fault])] = match layout {
        Layout::Single => &[("put", &[])],
        Layout::Incremental => &[("delta put", &[]), ("manifest put", &[Fault::None])],
    };
    for ((name, puts, acknowledged), (target, before_target)) in plans
        .iter()
        .flat_map(|p| targets.iter().map(move |t| (p, t)))
    {
        let name = format!("{name} on the {target}");
        let plan = FaultPlan::new().with(Operation::Put, &[*before_target, &puts[..]].concat());
        let store = faulty(&plan);
        let before = current(&store.inner);
        let clock = clock();
        let result = insert_through(layout, &store, &clock, 1);
        assert_eq!(result.is_ok(), *acknowledged, "{name}: {result:?}");
        let ids = stored_ids(&store);
        if *acknowledged {
            assert_eq!(
                ids,
                [1001],
                "{name}: an acknowledged write is stored exactly once"
            );
        } else {
            let err = result.unwrap_err();
            assert!(err.nothing_written(), "{name}: {err:?}");
            // The database is unchanged (a delta no manifest lists may be left for the sweep).
            assert_eq!(
                current(&store.inner),
                before,
                "{name}: unacknowledged write stored"
            );
            if err.code() == "storage_unavailable" {
                assert_eq!(
                    (err.status(), err.retry_after_s()),
                    (503, Some(2)),
                    "{name}"
                );
            }
        }
        assert!(
            clock.slept_ms() <= 4_000,
            "{name}: waited {} ms",
            clock.slept_ms()
        );
        assert!(
            plan.fired(Operation::Put, puts[0]) > 0,
            "{name}: the plan never fired"
        );
    }
}
both_layouts!(faults_on_put_lose_nothing_acknowledged_and_store_nothing_unacknowledged);

/// Faults on the get are retried too; a get that never succeeds writes nothing. When a put's
/// answer is lost and the read-back fails as well, the error says the outcome is unknown
/// rather than "nothing was written".
fn faults_on_get_and_head(layout: Layout) {
    // The put of the commit point: the only one in the single layout, the manifest's (after
    // the delta's) in the incremental one.
    let before_commit: &[Fault] = match layout {
        Layout::Single => &[],
        Layout::Incremental => &[Fault::None],
    };
    let plan = FaultPlan::new().with(Operation::Get, &[Fault::Unavailable, Fault::RateLimited]);
    let store = faulty(&plan);
    let clock = clock();
    insert_through(layout, &store, &clock, 2).unwrap();
    assert_eq!(stored_ids(&store), [1002]);

    let plan = FaultPlan::new().with(Operation::Get, &[Fault::Unavailable; 5]);
    let store = faulty(&plan);
    let err = insert_through(layout, &store, &clock, 3).unwrap_err();
    assert_eq!(err.code(), "storage_unavailable");
    assert!(err.nothing_written());
    assert_eq!(store.inner.put_count(), 0);

    let plan = FaultPlan::new()
        .with(Operation::Head, &[Fault::Unavailable; 10])
        .with(
            Operation::Put,
            &[
                before_commit,
                &[
                    Fault::LostAnswer,
                    Fault::Unavailable,
                    Fault::Unavailable,
                    Fault::Unavailable,
                    Fault::Unavailable,
                ],
            ]
            .concat(),
        );
    let store = faulty(&plan);
    let err = insert_through(layout, &store, &clock, 4).unwrap_err();
    assert!(!err.nothing_written(), "{err:?}");
    assert!(!err.body().error.message.contains("nothing was written"));
}
both_layouts!(faults_on_get_and_head);

/// A seeded sequence of writers and faults: after every request, every acknowledged insert is
/// stored exactly once, no refused insert is stored, and the database passes integrity_check.
/// The seed is printed on failure so any run can be replayed.
fn seeded_fault_plans_keep_the_invariants(layout: Layout) {
    let faults = [
        Fault::None,
        Fault::RateLimited,
        Fault::Unavailable,
        Fault::LostAnswer,
    ];
    let mut fired = FaultTally::default();
    for seed in 0..40u64 {
        let mut rng = workers_sqlite_poc::testing::Rng::new(seed);
        let mut draw = || {
            let n = rng.index(7);
            rng.picks(&faults, n)
        };
        let plan = FaultPlan::new();
        let store = faulty(&plan);
        let mut acknowledged = Vec::new();
        let clock = clock();
        for n in 0..6 {
            for op in Operation::ALL {
                plan.set(op, &draw());
            }
            let result = insert_through(layout, &store, &clock, n);
            let ids = stored_ids(&store);
            match &result {
                Ok(()) => acknowledged.push(1000 + n),
                Err(e) if e.nothing_written() => {}
                // Outcome unknown to the client: either way is allowed, but at most once.
                Err(_) if ids.contains(&(1000 + n)) => acknowledged.push(1000 + n),
                Err(_) => {}
            }
            assert_eq!(ids, acknowledged, "seed {seed}, request {n}: {result:?}");
            let ok: String = open(&current(&store.inner))
                .query_row("PRAGMA integrity_check", [], |r| r.get(0))
                .unwrap();
            assert_eq!(ok, "ok", "seed {seed}");
        }
        fired.add(&plan, &format!("seed {seed}"));
    }
    // Every fault the plans draw reached each kind of call a request makes.
    fired.assert_reached(
        &[Operation::Get, Operation::Head, Operation::Put],
        &faults[1..],
    );
}
both_layouts!(seeded_fault_plans_keep_the_invariants);

/// A `Work` that counts its runs, to show the re-run happens on the newest version.
struct CountingWork(u32);

impl Work for CountingWork {
    type Output = i64;
    fn run(&mut self, conn: &mut rusqlite::Connection) -> Result<i64, Error> {
        self.0 += 1;
        conn.execute_batch(
            "INSERT INTO projects(name, created_at, settings) VALUES ('w', 0, '{}')",
        )?;
        Ok(conn.query_row("SELECT count(*) FROM projects", [], |r| r.get(0))?)
    }
}

/// A write that loses a race runs again on the winner's version, so both writes survive.
fn rerun_applies_the_work_to_the_new_version(layout: Layout) {
    let demo = fixtures::demo_database().unwrap();
    let after_rival = RefCell::default();
    let store = racing(layout, 1, &after_rival);
    let clock = clock();
    let mut work = CountingWork(0);
    let (_, count) = block(pipeline::serve(
        &ctx(layout, &store, &clock, None),
        &user("a"),
        SaveMode::Auto,
        &mut work,
    ))
    .unwrap();
    assert_eq!(work.0, 2);
    assert_eq!(count, projects(&demo) + 2);
    assert_eq!(projects(&current(&store)), projects(&demo) + 2);
}
both_layouts!(rerun_applies_the_work_to_the_new_version);
