//! Scenario tests of the whole pipeline on the host: real SQLite, in-memory object store.
// Host only: these scenarios time with `SystemClock`; the wasm32 unit tests cover the SQLite parts.
#![cfg(not(all(target_family = "wasm", target_os = "unknown")))]

use std::cell::Cell;
use std::rc::Rc;

use workers_sqlite_poc::cache::DbCache;
use workers_sqlite_poc::clock::{Clock, SystemClock};
use workers_sqlite_poc::delay::Thresholds;
use workers_sqlite_poc::error::Error;
use workers_sqlite_poc::fixtures;
use workers_sqlite_poc::pipeline::{Context, sync};
use workers_sqlite_poc::request::{SaveMode, UserId};
use workers_sqlite_poc::sqlite;
use workers_sqlite_poc::store::{
    DB_VERSION_KEY, Fetched, MemoryStore, ObjectStore, PutCondition, PutOutcome, StoreError,
};

const KEY: &str = "a/database.sqlite";
const MAX_DB_BYTES: u64 = 1024 * 1024;

fn user(id: &str) -> UserId {
    UserId::parse(Some(id)).unwrap()
}

/// The default test context: spec thresholds, `MAX_DB_BYTES`, the given cache.
fn context<'a, S, C>(store: &'a S, clock: &'a C, cache: Option<&'a DbCache>) -> Context<'a, S, C> {
    Context {
        store,
        clock,
        thresholds: Thresholds::default(),
        max_db_bytes: MAX_DB_BYTES,
        cache,
    }
}

/// Runs one request and returns its JSON.
fn run_in<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    id: &str,
    save: SaveMode,
) -> Result<serde_json::Value, Error> {
    pollster::block_on(sync(ctx, &user(id), save)).map(|r| serde_json::to_value(r).unwrap())
}

fn run<S: ObjectStore, C: Clock>(
    store: &S,
    clock: &C,
    id: &str,
) -> Result<serde_json::Value, Error> {
    run_in(&context(store, clock, None), id, SaveMode::Always)
}

fn row_counts(bytes: &[u8]) -> Vec<(String, i64)> {
    let body: Rc<[u8]> = bytes.into();
    let loaded = sqlite::load(&body).unwrap();
    sqlite::list_tables(&loaded.conn)
        .unwrap()
        .into_iter()
        .map(|t| {
            let n = loaded
                .conn
                .query_row(&format!("SELECT count(*) FROM \"{t}\""), [], |r| r.get(0))
                .unwrap();
            (t, n)
        })
        .collect()
}

fn schema(bytes: &[u8]) -> Vec<String> {
    let body: Rc<[u8]> = bytes.into();
    let loaded = sqlite::load(&body).unwrap();
    let mut stmt = loaded
        .conn
        .prepare("SELECT sql FROM sqlite_master ORDER BY name")
        .unwrap();
    stmt.query_map([], |r| r.get::<_, Option<String>>(0))
        .unwrap()
        .map(|s| s.unwrap().unwrap_or_default())
        .collect()
}

/// An existing database: its tables are listed, and what is written back is a valid SQLite
/// image with the same schema and rows, stamped with an increasing `db-version`.
#[test]
fn existing_database_is_listed_and_written_back_intact() {
    let demo = fixtures::demo_database().unwrap();
    let store = MemoryStore::new();
    store.insert(KEY, &demo, &[]);
    let clock = SystemClock::new();

    let report = run(&store, &clock, "a").unwrap();
    assert_eq!(
        report["db_info"]["tables"],
        serde_json::json!(["projects", "raw_clips", "clip_tags"])
    );
    assert_eq!(report["db_info"]["new_database"], false);
    let stored = store.bytes(KEY).unwrap();
    assert_eq!(schema(&stored), schema(&demo));
    assert_eq!(row_counts(&stored), row_counts(&demo));
    let v1: u64 = store.metadata(KEY).unwrap()[DB_VERSION_KEY]
        .parse()
        .unwrap();
    assert_eq!(report["db_info"]["db_version"], v1.to_string());

    let again = run(&store, &clock, "a").unwrap();
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
    run(&store, &SystemClock::new(), "a").unwrap();
    let written: u64 = store.metadata(KEY).unwrap()[DB_VERSION_KEY]
        .parse()
        .unwrap();
    assert_eq!(written, future + 1);
}

/// A missing object means a new, empty database, stored create-only.
#[test]
fn missing_object_creates_an_empty_database() {
    let store = MemoryStore::new();
    let report = run(&store, &SystemClock::new(), "newcomer").unwrap();
    assert_eq!(report["db_info"]["new_database"], true);
    assert_eq!(report["db_info"]["tables"], serde_json::json!([]));
    assert!(report["db_info"]["loaded_db_version"].is_null());
    let stored = store.bytes("newcomer/database.sqlite").unwrap();
    assert!(row_counts(&stored).is_empty());
    assert_eq!(report["db_info"]["size_bytes"], stored.len());
}

/// A stored object that is not a database is reported and never written to.
#[test]
fn corrupt_object_is_reported_and_left_untouched() {
    let store = MemoryStore::new();
    let garbage: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    store.insert(KEY, &garbage, &[]);
    let err = run(&store, &SystemClock::new(), "a").unwrap_err();
    assert_eq!(err.status(), 422);
    assert_eq!(err.code(), "corrupt_database");
    assert_eq!(store.put_count(), 0);
    assert_eq!(store.bytes(KEY).unwrap(), garbage);
}

/// A store where another writer changes the object between our get and our put.
struct RacingStore {
    inner: MemoryStore,
    raced: Cell<bool>,
    rival: Vec<u8>,
}

impl ObjectStore for RacingStore {
    type Body = Rc<[u8]>;

    async fn get(
        &self,
        key: &str,
        max_bytes: u64,
        if_none_match: Option<&str>,
    ) -> Result<Fetched<Rc<[u8]>>, StoreError> {
        let got = self.inner.get(key, max_bytes, if_none_match).await;
        if !self.raced.replace(true) {
            self.inner.insert(key, &self.rival, &[]);
        }
        got
    }

    async fn put(
        &self,
        key: &str,
        bytes: &[u8],
        metadata: &[(&str, String)],
        condition: &PutCondition,
    ) -> Result<PutOutcome, StoreError> {
        self.inner.put(key, bytes, metadata, condition).await
    }
}

/// No lost update: when the object changes after the load, the save is refused with a
/// conflict and the other writer's version survives.
#[test]
fn concurrent_change_is_a_conflict_not_a_lost_update() {
    let demo = fixtures::demo_database().unwrap();
    let mut rival_conn = {
        let body: Rc<[u8]> = demo.clone().into();
        sqlite::load(&body).unwrap().conn
    };
    rival_conn
        .execute_batch("CREATE TABLE added_by_rival(x)")
        .unwrap();
    let rival = sqlite::export(&mut rival_conn).unwrap().to_vec();

    for existing in [true, false] {
        let store = RacingStore {
            inner: MemoryStore::new(),
            raced: Cell::new(false),
            rival: rival.clone(),
        };
        if existing {
            store.inner.insert(KEY, &demo, &[]);
        }
        let err = run(&store, &SystemClock::new(), "a").unwrap_err();
        assert!(
            matches!(err, Error::Conflict),
            "existing={existing}: {err:?}"
        );
        assert_eq!(err.status(), 409);
        assert_eq!(
            store.inner.bytes(KEY).unwrap(),
            rival,
            "existing={existing}"
        );
    }
}

/// A test clock: every reading is `step_ms` after the previous one, and it reports whether it
/// advances during computation as told. Step 0 and `advances: false` is a deployed Worker's
/// frozen clock; a large step makes every phase slow.
struct StepClock {
    now: Cell<f64>,
    step_ms: f64,
    advances: bool,
}

impl StepClock {
    fn frozen() -> Self {
        Self {
            now: Cell::new(1_000.0),
            step_ms: 0.0,
            advances: false,
        }
    }
    fn slow() -> Self {
        Self {
            now: Cell::new(0.0),
            step_ms: 400.0,
            advances: true,
        }
    }
}

impl Clock for StepClock {
    fn now_ms(&self) -> f64 {
        self.now.set(self.now.get() + self.step_ms);
        self.now.get()
    }
    fn epoch_ms(&self) -> u64 {
        1_700_000_000_000
    }
    fn resolution_ms(&self) -> f64 {
        1.0
    }
    fn source(&self) -> &'static str {
        "test"
    }
    fn advances_during_cpu(&self) -> Option<bool> {
        Some(self.advances)
    }
}

/// With a frozen clock every CPU-only span is flagged as unmeasured instead of passing off
/// its 0 as a measurement.
#[test]
fn frozen_clock_spans_are_flagged_unmeasured() {
    let store = MemoryStore::new();
    store.insert(KEY, &fixtures::demo_database().unwrap(), &[]);
    let report = run(&store, &StepClock::frozen(), "a").unwrap();
    let unmeasured: Vec<String> =
        serde_json::from_value(report["clock"]["unmeasured"].clone()).unwrap();
    for span in ["load.parse_ms", "query_ms", "save.serialize_ms"] {
        assert!(
            unmeasured.iter().any(|u| u == span),
            "{span} not flagged: {unmeasured:?}"
        );
    }
    assert_eq!(report["clock"]["advances_during_cpu"], false);
    assert_eq!(report["delay_analysis"]["load"]["status"], "optimal");
}

/// An object over the size limit is refused with 413 before its body is read, and is not
/// written; one exactly at the limit loads.
#[test]
fn oversize_object_is_refused_without_download() {
    let store = MemoryStore::new();
    let big = fixtures::sized_database(MAX_DB_BYTES as usize + 1, 7).unwrap();
    store.insert(KEY, &big, &[]);
    let err = run(&store, &SystemClock::new(), "a").unwrap_err();
    assert_eq!(err.status(), 413);
    assert_eq!(err.code(), "database_too_large");
    assert!(err.body().error.message.contains("Durable Object"));
    assert_eq!(store.put_count(), 0);
    assert_eq!(store.bytes(KEY).unwrap(), big);

    let exact = fixtures::sized_database(MAX_DB_BYTES as usize / 2, 7).unwrap();
    let clock = SystemClock::new();
    let ctx = Context {
        max_db_bytes: exact.len() as u64,
        ..context(&store, &clock, None)
    };
    store.insert(KEY, &exact, &[]);
    assert!(run_in(&ctx, "a", SaveMode::Always).is_ok());
}

fn run_with<S: ObjectStore>(
    store: &S,
    cache: Option<&DbCache>,
    id: &str,
    save: SaveMode,
) -> Result<serde_json::Value, Error> {
    run_in(&context(store, &SystemClock::new(), cache), id, save)
}

/// The version cache: a repeat request is a hit (no body fetched, nothing parsed); a write by
/// someone else makes the cached copy stale, and the next request sees that write.
#[test]
fn version_cache_hits_and_detects_outside_writes() {
    let store = MemoryStore::new();
    let demo = fixtures::demo_database().unwrap();
    store.insert(KEY, &demo, &[]);
    let cache = DbCache::new(MAX_DB_BYTES);

    let first = run_with(&store, Some(&cache), "a", SaveMode::Always).unwrap();
    assert_eq!(first["cache"]["status"], "miss");
    assert_eq!(first["cache"]["entries"], 1);
    let second = run_with(&store, Some(&cache), "a", SaveMode::Always).unwrap();
    assert_eq!(second["cache"]["status"], "hit");
    assert_eq!(
        second["db_info"]["loaded_db_version"],
        first["db_info"]["db_version"]
    );
    assert_eq!(second["db_info"]["tables"], first["db_info"]["tables"]);
    assert_eq!(row_counts(&store.bytes(KEY).unwrap()), row_counts(&demo));

    // Another writer adds a table: the cached copy must not be used.
    let mut rival = {
        let body: Rc<[u8]> = store.bytes(KEY).unwrap().into();
        sqlite::load(&body).unwrap().conn
    };
    rival
        .execute_batch("CREATE TABLE added_elsewhere(x)")
        .unwrap();
    store.insert(KEY, &sqlite::export(&mut rival).unwrap(), &[]);
    let third = run_with(&store, Some(&cache), "a", SaveMode::Always).unwrap();
    assert_eq!(third["cache"]["status"], "stale");
    assert!(
        third["db_info"]["tables"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "added_elsewhere")
    );
    let fourth = run_with(&store, Some(&cache), "a", SaveMode::Always).unwrap();
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
    for i in 0..6 {
        store.insert(&format!("u{i}/database.sqlite"), &demo, &[]);
        let report = run_with(&store, Some(&cache), &format!("u{i}"), SaveMode::Always).unwrap();
        assert!(report["cache"]["bytes"].as_u64().unwrap() <= cache.max_bytes());
    }
    assert_eq!(cache.usage().0, 3);
    let evicted = run_with(&store, Some(&cache), "u0", SaveMode::Always).unwrap();
    assert_eq!(evicted["cache"]["status"], "miss");
    let kept = run_with(&store, Some(&cache), "u5", SaveMode::Always).unwrap();
    assert_eq!(kept["cache"]["status"], "hit");
}

/// `save=never` never writes; `save=auto` writes only when the database changed, which this
/// read-only request never does; `save=always` (the default) always writes.
#[test]
fn save_modes_control_the_write() {
    let store = MemoryStore::new();
    let demo = fixtures::demo_database().unwrap();
    store.insert(KEY, &demo, &[(DB_VERSION_KEY, "42".into())]);

    for mode in [SaveMode::Never, SaveMode::Auto] {
        let report = run_with(&store, None, "a", mode).unwrap();
        assert_eq!(report["db_info"]["saved"], false, "{mode:?}");
        assert_eq!(report["db_info"]["db_version"], "42");
        assert_eq!(report["timing_breakdown"]["save"]["total_ms"], 0.0);
        assert_eq!(report["db_info"]["size_bytes"], demo.len());
    }
    assert_eq!(store.put_count(), 0);
    let missing = run_with(&store, None, "nobody", SaveMode::Auto).unwrap();
    assert_eq!(missing["db_info"]["saved"], false);
    assert!(missing["db_info"]["db_version"].is_null());
    assert!(store.bytes("nobody/database.sqlite").is_none());

    let always = run_with(&store, None, "a", SaveMode::Always).unwrap();
    assert_eq!(always["db_info"]["saved"], true);
    assert_eq!(always["db_info"]["save_mode"], "always");
    assert_eq!(store.put_count(), 1);
}

/// A request that hits a conflict leaves nothing in the cache, and the other writer's
/// version is what the next request loads.
#[test]
fn conflict_does_not_poison_the_cache() {
    let demo = fixtures::demo_database().unwrap();
    let cache = DbCache::new(MAX_DB_BYTES);
    let store = MemoryStore::new();
    store.insert(KEY, &demo, &[]);
    run_with(&store, Some(&cache), "a", SaveMode::Always).unwrap();
    assert_eq!(cache.usage().0, 1);

    let racing = RacingStore {
        inner: store,
        raced: Cell::new(false),
        rival: demo.clone(),
    };
    let err = run_with(&racing, Some(&cache), "a", SaveMode::Always).unwrap_err();
    assert!(matches!(err, Error::Conflict), "{err:?}");
    assert_eq!(cache.usage(), (0, 0));
    let next = run_with(&racing, Some(&cache), "a", SaveMode::Always).unwrap();
    assert_eq!(next["cache"]["status"], "miss");
}

/// Slow phases produce one JSON log line each, critical ones recommending archiving or a
/// Durable Object, and a sustained trend recommends migrating.
#[test]
fn slow_syncs_are_logged_and_trended() {
    use workers_sqlite_poc::trend::{Level, Recommendation, TrendSettings, Trends, log_lines};
    let store = MemoryStore::new();
    store.insert(KEY, &fixtures::demo_database().unwrap(), &[]);
    let clock = StepClock::slow();
    let ctx = context(&store, &clock, None);
    let trends = Trends::new();
    let mut last = None;
    for _ in 0..3 {
        let report = pollster::block_on(sync(&ctx, &user("a"), SaveMode::Always)).unwrap();
        let lines = log_lines("a", &report);
        assert_eq!(lines.len(), 2, "{lines:?}");
        for (level, line) in &lines {
            assert_eq!(*level, Level::Critical);
            assert_eq!(line["user"], "a");
            assert_eq!(line["status"], "critical");
            assert!(line["ms"].as_u64().unwrap() >= 1000);
            assert!(line["message"].as_str().unwrap().contains("Durable Object"));
        }
        last = Some(trends.record(
            "a",
            report.sync_ms(),
            &ctx.thresholds,
            &TrendSettings::default(),
        ));
    }
    assert_eq!(
        last.unwrap().recommendation,
        Recommendation::MigrateToDurableObject
    );
}
