//! The guard rails between requests, over the store seam: a cached copy carries nothing of one
//! request's connection into the next, writes cannot grow a database past `MAX_DB_BYTES` while
//! one stored larger stays usable, and the CPU and statement budgets are per request. `make unit`
//! runs them on the host (the wasm32 alias below lets them run there too; `make unit-wasm` does
//! not include them yet).

#[cfg(all(target_family = "wasm", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

use rusqlite::types::Value;
use serde_json::json;
use workers_sqlite_poc::error::Error;
use workers_sqlite_poc::exec::{Limits, Statement, StatementResult};
use workers_sqlite_poc::pipeline::{Context, serve};
use workers_sqlite_poc::report::{CacheStatus, Report};
use workers_sqlite_poc::request::{SaveMode, UserId};
use workers_sqlite_poc::storage::Layout;
use workers_sqlite_poc::storage::MemoryStore;
use workers_sqlite_poc::storage::cache::DbCache;
use workers_sqlite_poc::stream::{Call, Stream};
use workers_sqlite_poc::testing::{StepClock, open};
use workers_sqlite_poc::work::Transaction;
use workers_sqlite_poc::{config, fixtures, hrana};

const KEY: &str = "a/database.sqlite";

fn user() -> UserId {
    UserId::parse(Some("a")).unwrap()
}

fn block<T>(f: impl std::future::Future<Output = T>) -> T {
    pollster::block_on(f)
}

fn stmts(sqls: &[&str]) -> Vec<Statement> {
    sqls.iter().map(|s| Statement::new(*s)).collect()
}

/// One `POST /query` with the default guard rails.
fn post<C: workers_sqlite_poc::clock::Clock>(
    ctx: &Context<'_, MemoryStore, C>,
    sqls: &[&str],
) -> Result<(Report, Vec<StatementResult>), Error> {
    let mut work = Transaction {
        statements: stmts(sqls),
        limits: Limits::default(),
    };
    block(serve(ctx, &user(), SaveMode::Auto, &mut work))
}

/// One libSQL pipeline.
fn pipeline<C: workers_sqlite_poc::clock::Clock>(
    ctx: &Context<'_, MemoryStore, C>,
    body: &serde_json::Value,
    limits: Limits,
) -> Result<Vec<serde_json::Value>, Error> {
    let mut work = Stream {
        user: user().as_str().to_owned(),
        state: None,
        call: Call::Pipeline(
            hrana::parse(body.to_string().as_bytes(), limits.max_statements)?.requests,
        ),
        limits,
        now_ms: 0,
    };
    block(serve(ctx, &user(), SaveMode::Auto, &mut work)).map(|(_, out)| out.results)
}

fn first_value(results: &[StatementResult]) -> Value {
    results.last().unwrap().rows[0][0].clone()
}

/// What a fresh connection on the stored database answers to `sql` (the last statement's first
/// value), on this engine (its defaults differ between the host and wasm builds).
fn fresh_answer(store: &MemoryStore, sql: &str) -> Value {
    let conn = open(&store.bytes(KEY).unwrap());
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

/// Each kind of state a request can leave on its connection (TEMP tables, triggers and views,
/// pragma settings, `last_insert_rowid` and `changes`) is set in one request and looked for in
/// the next, which is served from the version cache: it sees exactly what a fresh connection
/// on the stored database sees. Both layouts, `/query` and the libSQL protocol.
#[test]
fn connection_state_does_not_reach_the_next_request() {
    // (what the first request runs, what the second asks, a statement that must then work)
    let scenarios: &[(&[&str], &str)] = &[
        (
            &[
                "CREATE TEMP TABLE parked(x)",
                "INSERT INTO parked VALUES (zeroblob(1000))",
            ],
            "SELECT count(*) FROM temp.sqlite_master",
        ),
        (
            &["CREATE TEMP VIEW v AS SELECT 1"],
            "SELECT count(*) FROM temp.sqlite_master",
        ),
        (
            &["CREATE TEMP TRIGGER eat AFTER INSERT ON t BEGIN DELETE FROM t; END"],
            "SELECT count(*) FROM temp.sqlite_master",
        ),
        (&["PRAGMA query_only = 1"], "PRAGMA query_only"),
        (
            &["PRAGMA recursive_triggers = 1"],
            "PRAGMA recursive_triggers",
        ),
        (&["PRAGMA foreign_keys = 0"], "PRAGMA foreign_keys"),
        (&["PRAGMA foreign_keys = 1"], "PRAGMA foreign_keys"),
        (
            &["PRAGMA reverse_unordered_selects = 1"],
            "PRAGMA reverse_unordered_selects",
        ),
        (&["PRAGMA cache_size = -500000"], "PRAGMA cache_size"),
        (&["PRAGMA automatic_index = 0"], "PRAGMA automatic_index"),
        (
            &["PRAGMA ignore_check_constraints = 1"],
            "PRAGMA ignore_check_constraints",
        ),
        (&["PRAGMA trusted_schema = 0"], "PRAGMA trusted_schema"),
        (
            &["PRAGMA legacy_alter_table = 1"],
            "PRAGMA legacy_alter_table",
        ),
        (&["PRAGMA cell_size_check = 1"], "PRAGMA cell_size_check"),
        (&["PRAGMA busy_timeout = 5000"], "PRAGMA busy_timeout"),
        (&["INSERT INTO t VALUES (7)"], "SELECT last_insert_rowid()"),
        (&["INSERT INTO t VALUES (8)"], "SELECT changes()"),
        (&["INSERT INTO t VALUES (9)"], "SELECT total_changes()"),
    ];
    for layout in [Layout::Single, Layout::Incremental] {
        let store = MemoryStore::new();
        let cache = DbCache::new(1024 * 1024);
        let clock = StepClock::stepping(1.0);
        let ctx = Context {
            cache: Some(&cache),
            layout,
            ..Context::new(&store, &clock)
        };
        post(&ctx, &["CREATE TABLE t(x)"]).unwrap();
        for (set, check) in scenarios {
            post(&ctx, set).unwrap_or_else(|e| panic!("{set:?}: {e}"));
            let expected = fresh_answer(&store, check);
            let (report, results) = post(&ctx, &[check]).unwrap();
            let status = report.cache.as_ref().map(|c| c.status);
            assert_eq!(status, Some(CacheStatus::Hit), "{layout:?} {set:?}");
            assert_eq!(
                first_value(&results),
                expected,
                "{layout:?} {set:?} → {check}"
            );
            // A write works afterwards and stays (no query_only, no trigger eating it).
            let rows = || first_value(&post(&ctx, &["SELECT count(*) FROM t"]).unwrap().1);
            let Value::Integer(before) = rows() else {
                unreachable!("count(*) is an integer")
            };
            let (_, results) = post(&ctx, &["INSERT INTO t VALUES (1)"])
                .unwrap_or_else(|e| panic!("{layout:?} after {set:?}: {e}"));
            assert_eq!(results[0].changes, 1);
            assert_eq!(
                rows(),
                Value::Integer(before + 1),
                "{layout:?} after {set:?}"
            );
        }
        // A read reports a fresh connection's rowid and changes, not an earlier write's.
        post(&ctx, &["INSERT INTO t VALUES (2)"]).unwrap();
        let (_, results) = post(&ctx, &["SELECT 1"]).unwrap();
        assert_eq!((results[0].last_insert_rowid, results[0].changes), (0, 0));
        // The same through the libSQL protocol.
        let exec = |sql: &str| json!({"type": "execute", "stmt": {"sql": sql}});
        let body =
            json!({"requests": [exec("CREATE TEMP TABLE h(x)"), exec("PRAGMA query_only = 1")]});
        pipeline(&ctx, &body, Limits::default()).unwrap();
        let body = json!({"requests": [exec("INSERT INTO t VALUES (3)"), exec("SELECT count(*) FROM temp.sqlite_master")]});
        let out = pipeline(&ctx, &body, Limits::default()).unwrap();
        assert_eq!(out[0]["type"], "ok", "{out:?}");
        assert_eq!(out[1]["response"]["result"]["rows"][0][0]["value"], "0");
    }
}

/// A write that would take the database past `MAX_DB_BYTES` is refused with 413
/// `database_full` before anything is uploaded, in either layout and either protocol; the
/// stored object stays byte-identical.
#[test]
fn writes_cannot_grow_past_max_db_bytes() {
    const MAX: u64 = 256 * 1024;
    for layout in [Layout::Single, Layout::Incremental] {
        let store = MemoryStore::new();
        let clock = StepClock::stepping(1.0);
        let ctx = Context {
            layout,
            max_db_bytes: config::load_max_bytes(MAX),
            max_write_bytes: MAX,
            ..Context::new(&store, &clock)
        };
        post(&ctx, &["CREATE TABLE t(x)"]).unwrap();
        let before = store.bytes(KEY).unwrap();
        let puts = store.put_count();
        let err = post(&ctx, &["INSERT INTO t VALUES (zeroblob(300000))"]).unwrap_err();
        assert_eq!((err.status(), err.code()), (413, "database_full"), "{err}");
        // Many small writes that add up, in one request.
        let many: Vec<String> = (0..40)
            .map(|_| "INSERT INTO t VALUES (zeroblob(10000))".to_owned())
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(post(&ctx, &many).unwrap_err().code(), "database_full");
        let body = json!({"requests": [
            {"type": "execute", "stmt": {"sql": "INSERT INTO t VALUES (zeroblob(300000))"}}
        ]});
        let err = pipeline(&ctx, &body, Limits::default()).unwrap_err();
        assert_eq!(err.code(), "database_full", "{layout:?}");
        assert_eq!(
            store.put_count(),
            puts,
            "{layout:?}: something was uploaded"
        );
        assert_eq!(store.bytes(KEY).unwrap(), before);
        // Up to the limit is fine.
        post(&ctx, &["INSERT INTO t VALUES (zeroblob(100000))"]).unwrap();
    }
}

/// A database stored larger than `MAX_DB_BYTES` (by an outside writer, or under an older
/// limit) is never locked out: it loads, reads, takes writes that do not grow it, deletes,
/// and a VACUUM shrinks it; a write that would grow it further is refused.
#[test]
fn a_database_over_the_limit_stays_usable_and_can_shrink() {
    let big = fixtures::sized_database(256 * 1024, 3).unwrap();
    // Stored a sixteenth over the limit in force now.
    let max = big.len() as u64 * 15 / 16;
    assert!(big.len() as u64 <= config::load_max_bytes(max));
    let store = MemoryStore::new();
    store.insert(KEY, &big, &[]);
    let clock = StepClock::stepping(1.0);
    // The single layout: the stored object is the whole database, read back below.
    let ctx = Context {
        layout: Layout::Single,
        max_db_bytes: config::load_max_bytes(max),
        max_write_bytes: max,
        ..Context::new(&store, &clock)
    };
    let (_, rows) = post(&ctx, &["SELECT count(*) FROM raw_clips"]).unwrap();
    assert!(matches!(first_value(&rows), Value::Integer(n) if n > 0));
    let grow = [
        "CREATE TABLE more(x)",
        "INSERT INTO more VALUES (zeroblob(100000))",
    ];
    assert_eq!(post(&ctx, &grow).unwrap_err().code(), "database_full");
    assert_eq!(store.bytes(KEY).unwrap(), big);
    let (report, _) = post(
        &ctx,
        &[
            "DELETE FROM clip_tags WHERE clip_id % 2 = 0",
            "DELETE FROM raw_clips WHERE id % 2 = 0",
        ],
    )
    .unwrap();
    assert!(report.db_info.stored.as_ref().unwrap().saved);
    let vacuum = json!({"requests": [{"type": "execute", "stmt": {"sql": "VACUUM"}}]});
    let out = pipeline(&ctx, &vacuum, Limits::default()).unwrap();
    assert_eq!(out[0]["type"], "ok", "{out:?}");
    let after = store.bytes(KEY).unwrap();
    assert!(after.len() < big.len() * 3 / 4, "{} bytes", after.len());
    // Now under the limit, it may grow up to it again.
    post(&ctx, &grow[..1]).unwrap();
    post(&ctx, &["INSERT INTO more VALUES (zeroblob(10000))"]).unwrap();
}

/// The CPU budget is the request's: statements that each fit stop together once the sum
/// passes it, on `/query` and across a libSQL pipeline's requests; nothing is saved.
#[test]
fn the_step_budget_is_per_request() {
    let store = MemoryStore::new();
    let clock = StepClock::stepping(1.0);
    let ctx = Context::new(&store, &clock);
    post(&ctx, &["CREATE TABLE t(x)"]).unwrap();
    let before = store.bytes(KEY).unwrap();
    let limits = Limits {
        max_steps: 2_000_000,
        ..Limits::default()
    };
    let spin = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100000) \
                SELECT count(*) FROM c";
    let one = json!({"type": "execute", "stmt": {"sql": spin}});
    pipeline(&ctx, &json!({"requests": [one]}), limits).unwrap();
    let mut requests =
        vec![json!({"type": "execute", "stmt": {"sql": "INSERT INTO t VALUES (1)"}})];
    requests.extend(std::iter::repeat_n(one, 10));
    let err = pipeline(&ctx, &json!({"requests": requests}), limits).unwrap_err();
    assert_eq!(err.code(), "cpu_budget_exceeded", "{err}");
    let mut statements = vec!["INSERT INTO t VALUES (1)"];
    statements.extend(std::iter::repeat_n(spin, 10));
    let mut work = Transaction {
        statements: stmts(&statements),
        limits,
    };
    let err = block(serve(&ctx, &user(), SaveMode::Auto, &mut work)).unwrap_err();
    assert_eq!(err.code(), "cpu_budget_exceeded", "{err}");
    assert_eq!(store.bytes(KEY).unwrap(), before);
}

/// A libSQL `describe` prepares a statement, so it counts against `MAX_STATEMENTS` like one.
#[test]
fn describe_counts_against_max_statements() {
    let describe = json!({"type": "describe", "sql": "SELECT 1"});
    let body = json!({"requests": vec![describe; 101]}).to_string();
    let err = hrana::parse(body.as_bytes(), 100).unwrap_err();
    assert_eq!((err.status(), err.code()), (413, "too_many_statements"));
    let body = json!({"requests": vec![json!({"type": "describe", "sql": "SELECT 1"}); 100]});
    assert!(hrana::parse(body.to_string().as_bytes(), 100).is_ok());
}

/// A manifest that lists a delta the store does not have is damage, not a race: 422
/// `corrupt_database` (not a retryable 503), naming the missing delta and the last state that
/// can still be built, with nothing written; on a cold load and on a cache refresh.
#[test]
fn a_missing_delta_is_corrupt_database() {
    use workers_sqlite_poc::storage::CompactionPolicy;
    for cached in [false, true] {
        let store = MemoryStore::new();
        let cache = DbCache::new(1024 * 1024);
        let clock = StepClock::stepping(1.0);
        let ctx = Context {
            layout: Layout::Incremental,
            cache: cached.then_some(&cache),
            compaction: CompactionPolicy {
                max_deltas: 1000,
                max_delta_percent: 1000,
                sweep_grace_ms: 0,
                ..CompactionPolicy::default()
            },
            ..Context::new(&store, &clock)
        };
        post(&ctx, &["CREATE TABLE t(x)"]).unwrap();
        post(&ctx, &["INSERT INTO t VALUES (1)"]).unwrap();
        // Another isolate's writes, which this one's cached copy does not have yet.
        let elsewhere = Context {
            cache: None,
            nonce: 7,
            ..ctx
        };
        post(&elsewhere, &["INSERT INTO t VALUES (2)"]).unwrap();
        post(&elsewhere, &["INSERT INTO t VALUES (3)"]).unwrap();
        let mut deltas: Vec<String> = store
            .keys()
            .into_iter()
            .filter(|k| k.starts_with("a/deltas/"))
            .collect();
        deltas.sort();
        assert!(deltas.len() >= 3, "{deltas:?}");
        let lost = deltas[deltas.len() - 2].clone();
        store.remove(&lost);
        let snapshot: Vec<(String, Option<Vec<u8>>)> = store
            .keys()
            .into_iter()
            .map(|k| (k.clone(), store.bytes(&k)))
            .collect();
        let puts = store.put_count();
        for attempt in 0..2 {
            let err = post(&ctx, &["SELECT count(*) FROM t"]).unwrap_err();
            assert_eq!(
                (err.status(), err.code()),
                (422, "corrupt_database"),
                "{err}"
            );
            let body = err.body();
            assert!(!body.error.retryable, "cached={cached} attempt {attempt}");
            assert!(body.error.message.contains(&lost), "{}", body.error.message);
            assert!(
                body.error.message.contains("last state"),
                "{}",
                body.error.message
            );
        }
        let err = block(workers_sqlite_poc::pipeline::load(&ctx, &user())).unwrap_err();
        assert_eq!(err.code(), "corrupt_database", "the export's load: {err}");
        assert_eq!(
            store.put_count(),
            puts,
            "cached={cached}: something was written"
        );
        let now: Vec<(String, Option<Vec<u8>>)> = store
            .keys()
            .into_iter()
            .map(|k| (k.clone(), store.bytes(&k)))
            .collect();
        assert_eq!(now, snapshot);
    }
}
