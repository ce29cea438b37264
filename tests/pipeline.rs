//! Scenario tests of the R2 route's steps and of whole requests, over the store seam: real
//! SQLite, in-memory stores that race or fail on purpose, a stepping clock. They run on the
//! host and on wasm32 (under Node, against the Worker's SQLite build).

#[cfg(all(target_family = "wasm", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

use rusqlite::types::Value;
use workers_sqlite_poc::alerts::{Level, log_lines};
use workers_sqlite_poc::cache::DbCache;
use workers_sqlite_poc::clock::Clock;
use workers_sqlite_poc::error::Error;
use workers_sqlite_poc::exec::{Limits, Statement, StatementResult};
use workers_sqlite_poc::pipeline::{
    self, Context, ListTables, RetryPolicy, Saved, Work, load, query, save, serve,
};
use workers_sqlite_poc::report::{CacheStatus, Report};
use workers_sqlite_poc::request::{SaveMode, UserId};
use workers_sqlite_poc::store::{DB_VERSION_KEY, MemoryStore, ObjectStore};
use workers_sqlite_poc::testing::{
    AfterReads, Before, Call, Fault, FaultPlan, HookStore, Operation, StepClock, apply_sql, open,
    row_counts,
};
use workers_sqlite_poc::trend::{Recommendation, TrendSettings, Trends};
use workers_sqlite_poc::work::Transaction;
use workers_sqlite_poc::{fixtures, sqlite};

const KEY: &str = "a/database.sqlite";
const MAX_DB_BYTES: u64 = 1024 * 1024;

fn user(id: &str) -> UserId {
    UserId::parse(Some(id)).unwrap()
}

fn ctx<'a, S, C>(store: &'a S, clock: &'a C, cache: Option<&'a DbCache>) -> Context<'a, S, C> {
    Context {
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

/// The demo database in a store where another writer stores `rival` right after each of our
/// first `races` reads of it.
fn racing(rival: Vec<u8>, races: u32) -> HookStore<'static> {
    HookStore::new(demo_store()).with(AfterReads::new(KEY, races, move |store| {
        store.insert(KEY, &rival, &[]);
    }))
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
#[test]
fn load_step_outcomes() {
    let store = demo_store();
    store.insert(
        KEY,
        &fixtures::demo_database().unwrap(),
        &[(DB_VERSION_KEY, "41".into())],
    );
    let clock = clock();
    let c = ctx(&store, &clock, None);
    let loaded = block(load(&c, &user("a"))).unwrap();
    assert_eq!(loaded.version, Some(41));
    assert!(loaded.etag().is_some() && loaded.parse_ms.is_some());
    assert_eq!(loaded.cache, CacheStatus::Disabled);

    let missing = block(load(&c, &user("nobody"))).unwrap();
    assert!(missing.etag().is_none() && missing.version.is_none());

    let small = Context {
        max_db_bytes: 1000,
        ..ctx(&store, &clock, None)
    };
    let err = block(load(&small, &user("a"))).unwrap_err();
    assert_eq!((err.status(), err.code()), (413, "database_too_large"));

    store.insert("bad/database.sqlite", b"not a database at all", &[]);
    let err = block(load(&c, &user("bad"))).unwrap_err();
    assert_eq!((err.status(), err.code()), (422, "corrupt_database"));
}

/// Load with a cache: a current entry is a hit (no body sent); an outdated one is stale.
#[test]
fn load_step_uses_the_cache_only_when_current() {
    let (store, cache, clock) = counted_demo();
    let c = ctx(&store, &clock, Some(&cache));
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

// ---- The query step ----

/// Query: a read leaves `changed` false, a committed write sets it, and tables are listed
/// after the work.
#[test]
fn query_step_detects_changes() {
    let store = demo_store();
    let clock = clock();
    let c = ctx(&store, &clock, None);
    let read = query(
        &clock,
        block(load(&c, &user("a"))).unwrap(),
        &mut ListTables,
    )
    .unwrap();
    assert!(!read.changed);
    assert_eq!(read.tables, ["projects", "raw_clips", "clip_tags"]);
    let mut create = transaction(vec![statement("CREATE TABLE extra(x)", vec![])]);
    let wrote = query(&clock, block(load(&c, &user("a"))).unwrap(), &mut create).unwrap();
    assert!(wrote.changed);
    assert_eq!(wrote.tables.last().unwrap(), "extra");
    let mut failing = transaction(vec![
        statement(
            "INSERT INTO projects(name, created_at, settings) VALUES ('x', 0, '{}')",
            vec![],
        ),
        statement("SELECT * FROM nope", vec![]),
    ]);
    let failed = query(&clock, block(load(&c, &user("a"))).unwrap(), &mut failing).unwrap_err();
    assert!(!failed.changed, "a rolled-back request changed nothing");
    assert_eq!(failed.error.code(), "sql_error");
}

// ---- The save step ----

/// Save: `never` and `auto` without a change skip; a change is written with a larger
/// version; a stale etag is a conflict with nothing written.
#[test]
fn save_step_outcomes() {
    let store = demo_store();
    let clock = clock();
    let c = ctx(&store, &clock, None);
    let mut q = query(
        &clock,
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
    assert_eq!(
        store.metadata(KEY).unwrap()[DB_VERSION_KEY],
        version.to_string()
    );
    // The etag this copy was loaded with is now outdated.
    assert_eq!(
        block(save(&c, &user("a"), &mut q, SaveMode::Always)).unwrap(),
        Saved::Conflict
    );
    assert_eq!(store.put_count(), 2);
}

// ---- The report step ----

/// Report: a skipped save is `not_run`, not graded `optimal`; a frozen clock flags every
/// CPU-only span that ran.
#[test]
fn report_step_never_overclaims() {
    let store = demo_store();
    let clock = StepClock::frozen();
    let c = ctx(&store, &clock, None);
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

// ---- Whole requests: the spec's GET / ----

/// An existing database: its tables are listed, and what is written back is a valid SQLite
/// image with the same rows, stamped with an increasing `db-version`.
#[test]
fn existing_database_is_listed_and_written_back_intact() {
    let store = demo_store();
    let demo = fixtures::demo_database().unwrap();
    let clock = clock();
    let c = ctx(&store, &clock, None);
    let report = get(&c, "a", SaveMode::Always).unwrap();
    assert_eq!(
        report["db_info"]["tables"],
        serde_json::json!(["projects", "raw_clips", "clip_tags"])
    );
    assert_eq!(report["db_info"]["new_database"], false);
    assert_eq!(report["db_info"]["attempts"], 1);
    let stored = store.bytes(KEY).unwrap();
    assert_eq!(row_counts(&stored), row_counts(&demo));
    let v1: u64 = store.metadata(KEY).unwrap()[DB_VERSION_KEY]
        .parse()
        .unwrap();
    assert_eq!(report["db_info"]["db_version"], v1.to_string());
    let again = get(&c, "a", SaveMode::Always).unwrap();
    let v2: u64 = store.metadata(KEY).unwrap()[DB_VERSION_KEY]
        .parse()
        .unwrap();
    assert!(v2 > v1, "{v2} <= {v1}");
    assert_eq!(again["db_info"]["loaded_db_version"], v1.to_string());
}

/// A version from the future (clock skew between writers) still gets a larger successor.
#[test]
fn db_version_increases_even_when_the_clock_is_behind() {
    let store = MemoryStore::new();
    let future = u64::MAX / 2;
    store.insert(
        KEY,
        &fixtures::demo_database().unwrap(),
        &[(DB_VERSION_KEY, future.to_string())],
    );
    let clock = clock();
    get(&ctx(&store, &clock, None), "a", SaveMode::Always).unwrap();
    let written: u64 = store.metadata(KEY).unwrap()[DB_VERSION_KEY]
        .parse()
        .unwrap();
    assert_eq!(written, future + 1);
}

/// A missing object means a new database: `always` stores it create-only; `auto` stores
/// nothing, since nothing was written to it.
#[test]
fn missing_object_creates_an_empty_database() {
    let store = MemoryStore::new();
    let clock = clock();
    let c = ctx(&store, &clock, None);
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

/// A stored object that is not a database is reported and never written to.
#[test]
fn corrupt_object_is_reported_and_left_untouched() {
    let store = MemoryStore::new();
    let garbage = workers_sqlite_poc::testing::Rng::new(3).bytes(8192);
    store.insert(KEY, &garbage, &[]);
    let clock = clock();
    let err = get(&ctx(&store, &clock, None), "a", SaveMode::Always).unwrap_err();
    assert_eq!((err.status(), err.code()), (422, "corrupt_database"));
    assert_eq!(store.put_count(), 0);
    assert_eq!(store.bytes(KEY).unwrap(), garbage);
}

/// An object over the size limit is refused with 413 without its body ever being read, and
/// is not written; one exactly at the limit is read once.
#[test]
fn oversize_object_is_refused_without_reading_its_body() {
    let store = HookStore::default();
    let big = fixtures::sized_database(64 * 1024, 7).unwrap();
    store.inner.insert(KEY, &big, &[]);
    let clock = clock();
    let limited = |max| Context {
        max_db_bytes: max,
        ..ctx(&store, &clock, None)
    };
    let err = get(&limited(big.len() as u64 - 1), "a", SaveMode::Always).unwrap_err();
    assert_eq!((err.status(), err.code()), (413, "database_too_large"));
    assert!(err.body().error.message.contains("Durable Object"));
    assert_eq!(store.body_copies(), 0, "the body was read");
    assert_eq!(store.inner.put_count(), 0);
    assert!(get(&limited(big.len() as u64), "a", SaveMode::Always).is_ok());
    assert_eq!(store.body_copies(), 1);
}

/// The version cache: a repeat request is a hit; a write by someone else makes the copy
/// stale, and the next request sees that write.
#[test]
fn version_cache_hits_and_detects_outside_writes() {
    let store = demo_store();
    let cache = DbCache::new(MAX_DB_BYTES);
    let clock = clock();
    let c = ctx(&store, &clock, Some(&cache));
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
    let rival = apply_sql(
        &store.bytes(KEY).unwrap(),
        "CREATE TABLE added_elsewhere(x)",
    );
    store.insert(KEY, &rival, &[]);
    let third = get(&c, "a", SaveMode::Always).unwrap();
    assert_eq!(third["cache"]["status"], "stale");
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

/// The cache never holds more than its budget, evicting least recently used users.
#[test]
fn version_cache_stays_within_budget() {
    let store = MemoryStore::new();
    let demo = fixtures::demo_database().unwrap();
    let cache = DbCache::new(3 * demo.len() as u64);
    let clock = clock();
    let c = ctx(&store, &clock, Some(&cache));
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

/// Another writer changes the object after the first load: the request re-runs on the new
/// version and keeps the other writer's change. When it keeps losing, it stops after three
/// runs with 409 and nothing written.
#[test]
fn lost_races_rerun_then_conflict() {
    let demo = fixtures::demo_database().unwrap();
    let rival = apply_sql(&demo, "CREATE TABLE added_by_rival(x)");
    let clock = clock();
    let store = racing(rival.clone(), 1);
    let report = get(&ctx(&store, &clock, None), "a", SaveMode::Always).unwrap();
    assert_eq!(report["db_info"]["attempts"], 2);
    assert!(
        row_counts(&store.inner.bytes(KEY).unwrap())
            .iter()
            .any(|(t, _)| t == "added_by_rival")
    );

    let store = racing(rival.clone(), 3);
    let err = get(&ctx(&store, &clock, None), "a", SaveMode::Always).unwrap_err();
    assert!(matches!(err, Error::Conflict { attempts: 3 }), "{err:?}");
    assert_eq!(err.status(), 409);
    assert_eq!(store.inner.bytes(KEY).unwrap(), rival);
}

/// A request that loses every race leaves nothing in the cache, and the next request loads
/// the other writer's version.
#[test]
fn conflict_does_not_poison_the_cache() {
    let demo = fixtures::demo_database().unwrap();
    let cache = DbCache::new(MAX_DB_BYTES);
    let clock = clock();
    let store = racing(demo.clone(), 3);
    let err = get(&ctx(&store, &clock, Some(&cache)), "a", SaveMode::Always).unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err:?}");
    assert_eq!(cache.usage(), (0, 0));
    let next = get(&ctx(&store, &clock, Some(&cache)), "a", SaveMode::Always).unwrap();
    assert_eq!(next["cache"]["status"], "miss");
}

/// Slow phases produce one JSON log line each, critical ones recommending archiving or a
/// Durable Object and a user warning, and a sustained trend recommends migrating.
#[test]
fn slow_syncs_are_logged_and_trended() {
    let store = demo_store();
    let clock = StepClock::slow();
    let c = ctx(&store, &clock, None);
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

/// Copies of the database's bytes, counted so that a regression fails here: a cache miss copies
/// the body once (straight into SQLite's buffer), a cache hit copies nothing, and a save hands
/// the store SQLite's own image, so the worker's core makes no copy of its own (the R2 adapter
/// then streams it out in 1 MiB chunks).
#[test]
fn copies_per_load_and_save_are_counted() {
    let last_put = std::cell::Cell::new(None);
    let store = HookStore::new(demo_store()).with(Before(|call: &Call<'_>, _: &MemoryStore| {
        if let Call::Put { bytes, .. } = call {
            last_put.set(Some((bytes.as_ptr() as usize, bytes.len())));
        }
        workers_sqlite_poc::testing::Action::Proceed
    }));
    let (cache, clock) = (DbCache::new(MAX_DB_BYTES), clock());
    let c = ctx(&store, &clock, Some(&cache));
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
    assert_eq!(
        last_put.get(),
        Some((image.as_ptr() as usize, image.len())),
        "the save must hand over SQLite's own image, not a copy"
    );
}

// ---- Whole requests: POST /query ----

/// Insert, then select: the write is saved, the read sees it, and every value comes back
/// exactly as sent.
#[test]
fn query_insert_then_select() {
    let store = demo_store();
    let clock = clock();
    let c = ctx(&store, &clock, None);
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

/// A batch that fails part-way is rolled back: nothing is written, and the stored object is
/// byte-identical.
#[test]
fn failing_batch_leaves_the_object_byte_identical() {
    let store = demo_store();
    let before = store.bytes(KEY).unwrap();
    let clock = clock();
    let err = post(
        &ctx(&store, &clock, None),
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
    assert_eq!(store.bytes(KEY).unwrap(), before);
    assert_eq!(store.put_count(), 0);
}

/// A read-only batch on a version-cache hit downloads nothing and uploads nothing.
#[test]
fn read_only_batch_on_a_cache_hit_transfers_nothing() {
    let (store, cache, clock) = counted_demo();
    let c = ctx(&store, &clock, Some(&cache));
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

/// Each guard rail refuses with its own 4xx code, and the stored object stays byte-identical.
#[test]
fn guard_rails_leave_the_object_byte_identical() {
    let store = demo_store();
    let before = store.bytes(KEY).unwrap();
    let clock = clock();
    let c = ctx(&store, &clock, None);
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
        assert_eq!(store.bytes(KEY).unwrap(), before, "{sql}");
    }
    let mut big = transaction(vec![statement("SELECT zeroblob(100000)", vec![])]);
    big.limits.max_result_bytes = 1000;
    let err = block(serve(&c, &user("a"), SaveMode::Auto, &mut big)).unwrap_err();
    assert_eq!(err.code(), "result_too_large");
    assert_eq!(store.put_count(), 0);
}

// ---- Production R2 behaviour, through a fault-injecting store ----

/// One insert through a faulty store; what the client is told.
fn insert_through(store: &HookStore<'_>, clock: &StepClock, n: i64) -> Result<(), Error> {
    let c = Context {
        retry: RetryPolicy::default(),
        nonce: n as u64,
        ..ctx(store, clock, None)
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
    let conn = open(&store.inner.bytes(KEY).unwrap());
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
/// by its write id, so it is acknowledged once and never applied twice.
#[test]
fn faults_on_put_lose_nothing_acknowledged_and_store_nothing_unacknowledged() {
    use Fault::{LostAnswer, Permanent, RateLimited, Unavailable};
    let plans: Vec<(&str, Vec<Fault>, bool)> = vec![
        ("one 429", vec![RateLimited], true),
        ("four 429s", vec![RateLimited; 4], true),
        ("five 429s", vec![RateLimited; 5], false),
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
    for (name, puts, acknowledged) in plans {
        let plan = FaultPlan::new().with(Operation::Put, &puts);
        let store = faulty(&plan);
        let before = store.inner.bytes(KEY).unwrap();
        let clock = clock();
        let result = insert_through(&store, &clock, 1);
        assert_eq!(result.is_ok(), acknowledged, "{name}: {result:?}");
        let ids = stored_ids(&store);
        if acknowledged {
            assert_eq!(
                ids,
                [1001],
                "{name}: an acknowledged write is stored exactly once"
            );
        } else {
            let err = result.unwrap_err();
            assert!(err.nothing_written(), "{name}: {err:?}");
            assert_eq!(
                store.inner.bytes(KEY).unwrap(),
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
    }
}

/// Faults on the get are retried too; a get that never succeeds writes nothing. When a put's
/// answer is lost and the read-back fails as well, the error says the outcome is unknown
/// rather than "nothing was written".
#[test]
fn faults_on_get_and_head() {
    let plan = FaultPlan::new().with(Operation::Get, &[Fault::Unavailable, Fault::RateLimited]);
    let store = faulty(&plan);
    let clock = clock();
    insert_through(&store, &clock, 2).unwrap();
    assert_eq!(stored_ids(&store), [1002]);

    let plan = FaultPlan::new().with(Operation::Get, &[Fault::Unavailable; 5]);
    let store = faulty(&plan);
    let err = insert_through(&store, &clock, 3).unwrap_err();
    assert_eq!(err.code(), "storage_unavailable");
    assert!(err.nothing_written());
    assert_eq!(store.inner.put_count(), 0);

    let plan = FaultPlan::new()
        .with(Operation::Head, &[Fault::Unavailable; 10])
        .with(
            Operation::Put,
            &[
                Fault::LostAnswer,
                Fault::Unavailable,
                Fault::Unavailable,
                Fault::Unavailable,
                Fault::Unavailable,
            ],
        );
    let store = faulty(&plan);
    let err = insert_through(&store, &clock, 4).unwrap_err();
    assert!(!err.nothing_written(), "{err:?}");
    assert!(!err.body().error.message.contains("nothing was written"));
}

/// A seeded sequence of writers and faults: after every request, every acknowledged insert is
/// stored exactly once, no refused insert is stored, and the database passes integrity_check.
/// The seed is printed on failure so any run can be replayed.
#[test]
fn seeded_fault_plans_keep_the_invariants() {
    let faults = [
        Fault::None,
        Fault::RateLimited,
        Fault::Unavailable,
        Fault::LostAnswer,
    ];
    let mut fired = std::collections::BTreeMap::new();
    for seed in 0..40u64 {
        let mut rng = workers_sqlite_poc::testing::Rng::new(seed);
        let mut draw = || -> Vec<Fault> {
            (0..rng.index(7))
                .map(|_| faults[rng.index(faults.len())])
                .collect()
        };
        let plan = FaultPlan::new();
        let store = faulty(&plan);
        let mut acknowledged = Vec::new();
        let clock = clock();
        for n in 0..6 {
            for op in Operation::ALL {
                plan.set(op, &draw());
            }
            let result = insert_through(&store, &clock, n);
            let ids = stored_ids(&store);
            match &result {
                Ok(()) => acknowledged.push(1000 + n),
                Err(e) if e.nothing_written() => {}
                // Outcome unknown to the client: either way is allowed, but at most once.
                Err(_) if ids.contains(&(1000 + n)) => acknowledged.push(1000 + n),
                Err(_) => {}
            }
            assert_eq!(ids, acknowledged, "seed {seed}, request {n}: {result:?}");
            let ok: String = open(&store.inner.bytes(KEY).unwrap())
                .query_row("PRAGMA integrity_check", [], |r| r.get(0))
                .unwrap();
            assert_eq!(ok, "ok", "seed {seed}");
        }
        assert!(plan.fired_total() > 0, "seed {seed}: no fault fired");
        for op in Operation::ALL {
            for fault in faults {
                *fired.entry((op, fault)).or_insert(0) += plan.fired(op, fault);
            }
        }
    }
    // Every fault the plans draw reached each kind of call a request makes.
    for op in [Operation::Get, Operation::Head, Operation::Put] {
        for fault in &faults[1..] {
            assert!(fired[&(op, *fault)] > 0, "{fault:?} never fired on {op:?}");
        }
    }
}

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
#[test]
fn rerun_applies_the_work_to_the_new_version() {
    let demo = fixtures::demo_database().unwrap();
    let rival = apply_sql(
        &demo,
        "INSERT INTO projects(name, created_at, settings) VALUES ('rival', 0, '{}')",
    );
    let store = racing(rival, 1);
    let clock = clock();
    let mut work = CountingWork(0);
    let (_, count) = block(pipeline::serve(
        &ctx(&store, &clock, None),
        &user("a"),
        SaveMode::Auto,
        &mut work,
    ))
    .unwrap();
    assert_eq!(work.0, 2);
    assert_eq!(count, projects(&demo) + 2);
    assert_eq!(
        projects(&store.inner.bytes(KEY).unwrap()),
        projects(&demo) + 2
    );
}
