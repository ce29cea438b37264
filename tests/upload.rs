//! Scenario tests of `PUT /import` over the store seam: a client's whole SQLite file replaces
//! the user's database in either layout, only when it names the stored version, and every
//! refusal leaves the store byte-identical (most without a single store call).

#[cfg(all(target_family = "wasm", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

use std::collections::BTreeMap;

use rusqlite::types::Value;
use workers_sqlite_poc::clock::Clock;
use workers_sqlite_poc::error::Error;
use workers_sqlite_poc::pipeline::{self, Context, ListTables};
use workers_sqlite_poc::report::Report;
use workers_sqlite_poc::request::{SaveMode, UserId};
use workers_sqlite_poc::storage::cache::DbCache;
use workers_sqlite_poc::storage::{self, FollowUp, Layout};
use workers_sqlite_poc::storage::{DB_VERSION_KEY, MemoryStore, ObjectStore, ROUTE_KEY};
use workers_sqlite_poc::testing::{
    self, AfterReads, HookStore, StepClock, apply_sql, newest_manifest, open, snapshot,
};
use workers_sqlite_poc::upload::{self, Precondition};
use workers_sqlite_poc::{fixtures, sqlite};

const KEY: &str = "a/database.sqlite";
const MAX_DB_BYTES: u64 = 1024 * 1024;

fn user() -> UserId {
    testing::user("a")
}

fn ctx<'a, S, C>(store: &'a S, clock: &'a C, layout: Layout) -> Context<'a, S, C> {
    Context {
        max_db_bytes: MAX_DB_BYTES,
        layout,
        ..Context::new(store, clock)
    }
}

/// `ctx` with one commit slot (`manifest.json` is every commit's key).
fn one_slot<'a, S, C>(ctx: Context<'a, S, C>) -> Context<'a, S, C> {
    Context {
        compaction: storage::CompactionPolicy {
            commit_slots: 1,
            ..ctx.compaction
        },
        ..ctx
    }
}

fn block<T>(f: impl std::future::Future<Output = T>) -> T {
    pollster::block_on(f)
}

/// A store holding the demo database as the user's file, with `metadata`.
fn demo_store(metadata: &[(&str, String)]) -> MemoryStore {
    let store = MemoryStore::new();
    store.insert(KEY, &fixtures::demo_database().unwrap(), metadata);
    store
}

/// The spec's request with `save=always` (in the incremental layout it leaves a manifest).
fn spec_request<S: ObjectStore, C: Clock>(ctx: &Context<'_, S, C>) {
    block(pipeline::serve(
        ctx,
        &user(),
        SaveMode::Always,
        &mut ListTables,
    ))
    .unwrap();
}

/// An upload of `bytes` by user `a`.
fn replace<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    bytes: Vec<u8>,
    precondition: Precondition,
) -> Result<Report, Error> {
    block(upload::replace(ctx, &user(), bytes, precondition))
}

/// Every row of every table, by table name: what "the same database" means through SQLite.
fn dump(bytes: &[u8]) -> BTreeMap<String, Vec<String>> {
    let conn = open(bytes);
    sqlite::list_tables(&conn)
        .unwrap()
        .into_iter()
        .map(|t| {
            let mut stmt = conn.prepare(&format!("SELECT * FROM \"{t}\"")).unwrap();
            let n = stmt.column_count();
            let mut rows = stmt
                .query_map([], |r| {
                    let row: Result<Vec<Value>, _> = (0..n).map(|i| r.get::<_, Value>(i)).collect();
                    row.map(|v| format!("{v:?}"))
                })
                .unwrap()
                .collect::<Result<Vec<String>, _>>()
                .unwrap();
            rows.sort();
            (t, rows)
        })
        .collect()
}

/// The current database as a load sees it.
fn current<S: ObjectStore>(store: &S, layout: Layout) -> Vec<u8> {
    let clock = StepClock::stepping(1.0);
    let ctx = ctx(store, &clock, layout);
    let mut loaded = block(pipeline::load(&ctx, &user())).unwrap();
    sqlite::export(&mut loaded.conn).unwrap().to_vec()
}

/// The `db-version` of the newest manifest, whichever commit slot holds it.
fn manifest_version(store: &MemoryStore) -> u64 {
    let (key, _) = newest_manifest(store, &user()).unwrap();
    version(store, &key)
}

fn version(store: &MemoryStore, key: &str) -> u64 {
    store.metadata(key).unwrap()[DB_VERSION_KEY]
        .parse()
        .unwrap()
}

/// What a backend would push: the demo database with its own edits.
fn edited(sql: &str) -> Vec<u8> {
    apply_sql(&fixtures::demo_database().unwrap(), sql)
}

/// The headers parse to exactly the two accepted forms; anything unconditional or ambiguous
/// is 428 and names what to send.
#[test]
fn preconditions_parse() {
    assert_eq!(
        Precondition::parse(Some("\"1700000000000\""), None).unwrap(),
        Precondition::IfMatch(1_700_000_000_000)
    );
    assert_eq!(
        Precondition::parse(Some(" 7 "), None).unwrap(),
        Precondition::IfMatch(7)
    );
    assert_eq!(
        Precondition::parse(None, Some("*")).unwrap(),
        Precondition::CreateOnly
    );
    for (m, n) in [
        (None, None),
        (Some("*"), None),
        (None, Some("\"5\"")),
        (Some("5"), Some("*")),
    ] {
        let e = Precondition::parse(m, n).unwrap_err();
        assert_eq!(
            (e.status(), e.code()),
            (428, "precondition_required"),
            "{m:?} {n:?}"
        );
        assert!(e.body().error.message.contains("If-"), "{e}");
    }
    let e = Precondition::parse(Some("W/\"abc\""), None).unwrap_err();
    assert_eq!((e.status(), e.code()), (400, "invalid_request"));
    // GET /export's If-None-Match: equal versions only; 0 is a database stored without one.
    assert!(upload::not_modified(Some("\"12\""), Some(12)));
    assert!(!upload::not_modified(Some("11"), Some(12)));
    assert!(upload::not_modified(Some("0"), None));
    assert!(!upload::not_modified(Some("*"), Some(12)));
    assert!(!upload::not_modified(None, Some(12)));
}

/// Single layout: create-only stores the file whole with a db-version; If-Match on that
/// version replaces it with a newer one; the stale version and a second create are 412 with
/// the store byte-identical.
#[test]
fn single_layout_create_replace_and_refuse() {
    let store = MemoryStore::new();
    let clock = StepClock::stepping(1.0);
    let ctx = ctx(&store, &clock, Layout::Single);
    let first = edited("CREATE TABLE notes(body TEXT); INSERT INTO notes VALUES ('from backend')");
    let report = replace(&ctx, first.clone(), Precondition::CreateOnly).unwrap();
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["db_info"]["saved"], true);
    assert_eq!(json["storage"]["layout"], "single");
    assert_ne!(json["delay_analysis"]["save"]["status"], "not_run");
    let v1 = version(&store, KEY);
    assert_eq!(json["db_info"]["db_version"], v1.to_string());
    assert_eq!(dump(&store.bytes(KEY).unwrap()), dump(&first));

    let again = replace(&ctx, first.clone(), Precondition::CreateOnly);
    let e = again.unwrap_err();
    assert_eq!((e.status(), e.code()), (412, "version_mismatch"));
    assert!(e.to_string().contains(&v1.to_string()), "{e}");

    let second =
        edited("DELETE FROM clip_tags; CREATE TABLE extra(x); INSERT INTO extra VALUES (1)");
    let report = replace(&ctx, second.clone(), Precondition::IfMatch(v1)).unwrap();
    let v2 = version(&store, KEY);
    assert!(v2 > v1);
    assert_eq!(
        serde_json::to_value(&report).unwrap()["db_info"]["loaded_db_version"],
        v1.to_string()
    );
    assert_eq!(dump(&store.bytes(KEY).unwrap()), dump(&second));

    let before = snapshot(&store);
    let stale = replace(&ctx, first.clone(), Precondition::IfMatch(v1));
    assert_eq!(stale.unwrap_err().code(), "version_mismatch");
    assert_eq!(snapshot(&store), before, "a refused upload writes nothing");
}

/// Incremental layout: the file commits as one write through the manifest (a delta of every
/// page), never as an outside replacement; the next load and the compaction it calls for
/// both give exactly the file, and no conflict record appears.
#[test]
fn incremental_layout_commits_through_the_manifest() {
    let store = demo_store(&[(DB_VERSION_KEY, "1000".into())]);
    let clock = StepClock::stepping(1.0);
    let ctx = ctx(&store, &clock, Layout::Incremental);
    // An app write first: the user now has a manifest and a pending delta.
    block(pipeline::serve(
        &ctx,
        &user(),
        SaveMode::Always,
        &mut workers_sqlite_poc::work::Transaction {
            statements: workers_sqlite_poc::work::parse_query_body(
                br#"[{"sql": "CREATE TABLE notes(body TEXT)"}, {"sql": "INSERT INTO notes VALUES ('app write')"}]"#,
                10,
            )
            .unwrap(),
            limits: Default::default(),
        },
    ))
    .unwrap();
    let pulled = current(&store, Layout::Incremental);
    let v = manifest_version(&store);
    // The backend edits what it pulled (the app's row included) and pushes it.
    let pushed = apply_sql(
        &pulled,
        "UPDATE notes SET body = 'renamed'; INSERT INTO notes VALUES ('backend')",
    );
    let report = replace(&ctx, pushed.clone(), Precondition::IfMatch(v)).unwrap();
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["storage"]["layout"], "incremental");
    assert_eq!(json["storage"]["follow_up"], "compact");
    assert!(json["storage"]["outside_replacement"].is_null());
    assert!(manifest_version(&store) > v);
    assert_eq!(dump(&current(&store, Layout::Incremental)), dump(&pushed));

    let done = block(storage::compact(&ctx, &user(), false)).unwrap();
    assert_eq!(
        done.outcome,
        workers_sqlite_poc::storage::CompactOutcome::Compacted
    );
    assert_eq!(
        dump(&store.bytes(KEY).unwrap()),
        dump(&pushed),
        "the file is the base"
    );
    let loaded = block(pipeline::load(&ctx, &user())).unwrap();
    assert!(loaded.outside.is_none());
    assert!(!store.keys().iter().any(|k| k.contains("/conflicts/")));
    assert_eq!(loaded.version, Some(manifest_version(&store)));
}

/// A file with another page size than the stored database replaces it whole in the
/// incremental layout too (its delta carries its own page size and length).
#[test]
fn incremental_upload_with_another_page_size() {
    let store = demo_store(&[]);
    let clock = StepClock::stepping(1.0);
    let ctx = ctx(&store, &clock, Layout::Incremental);
    spec_request(&ctx);
    for page_size in [1024, 65536] {
        let pushed = edited(&format!("PRAGMA page_size = {page_size}; VACUUM;"));
        assert_eq!(
            workers_sqlite_poc::header::page_size(&pushed),
            Some(page_size)
        );
        let v = manifest_version(&store);
        replace(&ctx, pushed.clone(), Precondition::IfMatch(v)).unwrap();
        let now = current(&store, Layout::Incremental);
        assert_eq!(workers_sqlite_poc::header::page_size(&now), Some(page_size));
        assert_eq!(dump(&now), dump(&pushed));
    }
}

/// Under `LAYOUT=single`, a user who still has a manifest gets the file committed as a write
/// and the retirement that folds them back into one object.
#[test]
fn single_layout_with_a_live_manifest_retires_it() {
    let store = demo_store(&[]);
    let clock = StepClock::stepping(1.0);
    let inc = ctx(&store, &clock, Layout::Incremental);
    spec_request(&inc);
    let v = manifest_version(&store);
    let pushed = edited("DELETE FROM clip_tags; DELETE FROM raw_clips");
    let single = ctx(&store, &clock, Layout::Single);
    let report = replace(&single, pushed.clone(), Precondition::IfMatch(v)).unwrap();
    assert_eq!(report.storage.as_ref().unwrap().follow_up, FollowUp::Retire);
    block(storage::compact(&single, &user(), true)).unwrap();
    assert_eq!(dump(&store.bytes(KEY).unwrap()), dump(&pushed));
    assert_eq!(dump(&current(&store, Layout::Single)), dump(&pushed));
}

/// Damaged, truncated, oversize and non-SQLite files are refused with a 4xx that says what is
/// wrong, before any store call: the stored database stays byte-identical.
#[test]
fn bad_files_are_refused_before_touching_the_store() {
    let store = HookStore::default();
    let demo = fixtures::demo_database().unwrap();
    store
        .inner
        .insert(KEY, &demo, &[(DB_VERSION_KEY, "5".into())]);
    let clock = StepClock::stepping(1.0);
    let ctx = ctx(&store, &clock, Layout::Single);
    let good = edited("CREATE TABLE notes(body TEXT); INSERT INTO notes VALUES ('x')");
    let page_size = workers_sqlite_poc::header::page_size(&good).unwrap() as usize;
    let mut bad_page = good.clone();
    // Scribble over the second page (a b-tree page): the header is fine, quick_check is not.
    for b in &mut bad_page[page_size..page_size + 64] {
        *b = 0xA5;
    }
    let mut bad_magic = good.clone();
    bad_magic[0] = b'X';
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("empty", vec![], 422, "invalid_upload"),
        (
            "text",
            b"not a database at all".repeat(10),
            422,
            "invalid_upload",
        ),
        ("magic", bad_magic, 422, "invalid_upload"),
        (
            "truncated",
            good[..good.len() - 100].to_vec(),
            422,
            "invalid_upload",
        ),
        ("damaged page", bad_page, 422, "invalid_upload"),
        (
            "oversize",
            vec![0; MAX_DB_BYTES as usize + 1],
            413,
            "database_too_large",
        ),
    ];
    for (name, bytes, status, code) in cases {
        let e = replace(&ctx, bytes.clone(), Precondition::IfMatch(5)).unwrap_err();
        assert_eq!((e.status(), e.code()), (status, code), "{name}: {e}");
        let message = e.body().error.message;
        let says = if status == 413 {
            "MAX_DB_BYTES"
        } else {
            "nothing was written"
        };
        assert!(message.contains(says), "{name}: {message}");
        assert!(!message.contains("stored object"), "{name}: {message}");
    }
    assert_eq!(store.inner.bytes(KEY).unwrap(), demo);
    assert_eq!(store.inner.keys(), [KEY]);
    assert_eq!((store.inner.get_count(), store.inner.put_count()), (0, 0));
}

/// A write that lands between the upload's read and its put wins: the upload is 412 (the
/// retry finds the newer version) and the other write is what stays stored; without a
/// db-version on the stored object it is 412 at once.
#[test]
fn lost_race_is_refused_and_keeps_the_other_write() {
    for (stored, rival_version) in [(Some("5"), Some("6")), (None, None)] {
        let inner = MemoryStore::new();
        let meta = |v: Option<&str>| -> Vec<(&str, String)> {
            v.map(|v| vec![(DB_VERSION_KEY, v.to_owned())])
                .unwrap_or_default()
        };
        inner.insert(KEY, &fixtures::demo_database().unwrap(), &meta(stored));
        let rival = edited("CREATE TABLE notes(body TEXT); INSERT INTO notes VALUES ('rival')");
        let stored_rival = rival.clone();
        let store =
            HookStore::new(inner).with(AfterReads::new(KEY, 1, move |store: &MemoryStore| {
                store.insert(KEY, &stored_rival, &meta(rival_version));
            }));
        let clock = StepClock::stepping(1.0);
        let ctx = ctx(&store, &clock, Layout::Single);
        let named = stored.map_or(0, |v| v.parse().unwrap());
        let e = replace(
            &ctx,
            edited("DELETE FROM clip_tags"),
            Precondition::IfMatch(named),
        )
        .unwrap_err();
        assert_eq!((e.status(), e.code()), (412, "version_mismatch"), "{e}");
        assert_eq!(store.inner.bytes(KEY).unwrap(), rival);
    }
}

/// A compaction that commits between the upload's load and its commit keeps the version and
/// the state, so the upload's commit goes on top of it and lands without running again
/// (`attempts: 1`; it was 2 before commits rebased over a compaction).
#[test]
fn a_compaction_in_between_is_committed_over() {
    let store = demo_store(&[]);
    let clock = StepClock::stepping(1.0);
    // One commit slot: the manifest the upload reads is the one rewritten below.
    let inc = one_slot(ctx(&store, &clock, Layout::Incremental));
    spec_request(&inc);
    let v = manifest_version(&store);
    let m = "a/manifest.json";
    // What a compaction's manifest put looks like to the upload: same version, new etag.
    let store = HookStore::new(store).with(AfterReads::new(m, 1, move |s: &MemoryStore| {
        let meta: Vec<(String, String)> = s.metadata(m).unwrap().into_iter().collect();
        let meta: Vec<(&str, String)> = meta.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        s.insert(m, &s.bytes(m).unwrap(), &meta);
    }));
    let ctx = one_slot(ctx(&store, &clock, Layout::Incremental));
    let pushed = edited("DELETE FROM clip_tags");
    let report = replace(&ctx, pushed.clone(), Precondition::IfMatch(v)).unwrap();
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["db_info"]["attempts"], 1);
    let commits = newest_manifest(&store.inner, &user()).unwrap().1.commit;
    assert_eq!(commits, 2, "the upload's commit followed the compaction's");
    assert_eq!(
        dump(&current(&store.inner, Layout::Incremental)),
        dump(&pushed)
    );
}

/// A user in their Durable Object is 409 `served_by_durable_object`; during a move 409
/// `move_in_progress`; both write nothing.
#[test]
fn moved_and_moving_users_are_409() {
    for (route, code) in [
        ("durable_object", "served_by_durable_object"),
        ("moving", "move_in_progress"),
    ] {
        let store = demo_store(&[(ROUTE_KEY, route.into()), (DB_VERSION_KEY, "9".into())]);
        let before = snapshot(&store);
        let clock = StepClock::stepping(1.0);
        let ctx = ctx(&store, &clock, Layout::Incremental);
        let e = replace(
            &ctx,
            edited("DELETE FROM clip_tags"),
            Precondition::IfMatch(9),
        )
        .unwrap_err();
        assert_eq!((e.status(), e.code()), (409, code));
        assert_eq!(snapshot(&store), before);
    }
}

/// Another isolate's cached copy, taken before the upload, is not what it serves after it;
/// and the stored change counter moves past the one that copy has even when the file carries
/// that very counter (readers and compaction tell versions apart by it).
#[test]
fn another_isolates_cached_copy_sees_the_upload() {
    for layout in [Layout::Single, Layout::Incremental] {
        let store = demo_store(&[(DB_VERSION_KEY, "3".into())]);
        let (uploader, other) = (
            DbCache::new(MAX_DB_BYTES * 4),
            DbCache::new(MAX_DB_BYTES * 4),
        );
        let clock = StepClock::stepping(1.0);
        let with = |cache| Context {
            cache: Some(cache),
            ..ctx(&store, &clock, layout)
        };
        // A write (incremental: the manifest now exists), then the other isolate caches it.
        spec_request(&with(&uploader));
        let mut warm = block(pipeline::load(&with(&other), &user())).unwrap();
        let same_counter = {
            let mut conn = open(&sqlite::export(&mut warm.conn).unwrap());
            conn.execute_batch("DELETE FROM clip_tags").unwrap();
            let mut image = sqlite::export(&mut conn).unwrap().to_vec();
            image[24..28].copy_from_slice(&warm.change_counter.to_be_bytes());
            image
        };
        let v = warm.version.unwrap();
        workers_sqlite_poc::storage::loaded::keep_loaded(Some(&other), &user(), warm);
        replace(
            &with(&uploader),
            same_counter.clone(),
            Precondition::IfMatch(v),
        )
        .unwrap();
        let mut after = block(pipeline::load(&with(&other), &user())).unwrap();
        assert_ne!(after.cache, workers_sqlite_poc::report::CacheStatus::Hit);
        let image = sqlite::export(&mut after.conn).unwrap().to_vec();
        assert_eq!(dump(&image), dump(&same_counter), "{layout:?}");
        let counter = |b: &[u8]| u32::from_be_bytes(b[24..28].try_into().unwrap());
        assert_ne!(counter(&image), counter(&same_counter), "{layout:?}");
    }
}
