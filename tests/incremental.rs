//! The incremental layout over the store seam: cost of a write, loads, the cache, compaction,
//! the sweep, the outside-replacement rule, moves, and the fault suite (a failure or a dead
//! worker at every step). Real SQLite, in-memory stores; host and wasm32.

#[cfg(all(target_family = "wasm", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

use rusqlite::types::Value;
use workers_sqlite_poc::clock::Clock;
use workers_sqlite_poc::error::Error;
use workers_sqlite_poc::exec::{Limits, Statement};
use workers_sqlite_poc::pipeline::{self, Context, Saved, load, query, save, serve};
use workers_sqlite_poc::report::{CacheStatus, Report};
use workers_sqlite_poc::request::{SaveMode, UserId};
use workers_sqlite_poc::storage::cache::DbCache;
use workers_sqlite_poc::storage::{self, CompactionPolicy, Layout, Manifest, Stored};
use workers_sqlite_poc::storage::{MemoryStore, ObjectStore};
use workers_sqlite_poc::storage::{StoreError, StoreErrorKind};
use workers_sqlite_poc::testing::{
    Action, After, Answer, Before, Call, Fault, FaultPlan, FaultTally, HookStore, Operation, Rng,
    StepClock, apply_sql, is_manifest_key, newest_manifest, open, snapshot,
};
use workers_sqlite_poc::work::Transaction;
use workers_sqlite_poc::{fixtures, migrate, sqlite};

const BASE: &str = "a/database.sqlite";
const MANIFEST: &str = "a/manifest.json";

fn user() -> UserId {
    workers_sqlite_poc::testing::user("a")
}

fn block<T>(f: impl std::future::Future<Output = T>) -> T {
    pollster::block_on(f)
}

fn incremental<'a, S, C>(
    store: &'a S,
    clock: &'a C,
    cache: Option<&'a DbCache>,
) -> Context<'a, S, C> {
    Context {
        cache,
        layout: Layout::Incremental,
        max_db_bytes: 64 * 1024 * 1024,
        compaction: CompactionPolicy {
            max_deltas: 4,
            max_delta_percent: 1000,
            sweep_grace_ms: 0,
            ..CompactionPolicy::default()
        },
        ..Context::new(store, clock)
    }
}

fn insert(id: i64) -> Transaction {
    Transaction {
        statements: vec![Statement {
            sql: "INSERT INTO hits(id, note) VALUES (?, ?)".into(),
            args: vec![Value::Integer(id), Value::Text(format!("write {id}"))],
            named_args: vec![],
        }],
        limits: Limits::default(),
    }
}

/// The demo database plus a `hits` table the tests write to, stored whole (single layout).
fn seeded() -> MemoryStore {
    let store = MemoryStore::new();
    let demo = fixtures::demo_database().unwrap();
    store.insert(
        BASE,
        &apply_sql(
            &demo,
            "CREATE TABLE hits(id INTEGER PRIMARY KEY, note TEXT)",
        ),
        &[],
    );
    store
}

fn write<S: ObjectStore, C: Clock>(ctx: &Context<'_, S, C>, id: i64) -> Result<Report, Error> {
    block(serve(ctx, &user(), SaveMode::Auto, &mut insert(id))).map(|(r, _)| r)
}

/// The spec's request, saving only a change.
fn read<S: ObjectStore, C: Clock>(ctx: &Context<'_, S, C>) -> Report {
    block(serve(
        ctx,
        &user(),
        SaveMode::Auto,
        &mut pipeline::ListTables,
    ))
    .unwrap()
    .0
}

fn storage(report: &Report) -> serde_json::Value {
    serde_json::to_value(report.storage.as_ref().unwrap()).unwrap()
}

/// The current database as a fresh worker sees it (no cache), exported.
fn current<S: ObjectStore>(store: &S) -> Vec<u8> {
    let clock = StepClock::stepping(1.0);
    let ctx = Context {
        max_db_bytes: 64 * 1024 * 1024,
        ..Context::new(store, &clock)
    };
    let mut loaded = block(load(&ctx, &user())).unwrap();
    sqlite::export(&mut loaded.conn).unwrap().to_vec()
}

fn hits(image: &[u8]) -> Vec<i64> {
    let conn = open(image);
    let mut stmt = conn.prepare("SELECT id FROM hits ORDER BY id").unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn integrity(image: &[u8]) -> String {
    open(image)
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

/// The newest manifest, whichever commit slot holds it.
fn manifest(store: &MemoryStore) -> Option<Manifest> {
    newest_manifest(store, &user()).map(|(_, m)| m)
}

/// The newest manifest's bytes.
fn manifest_bytes(store: &MemoryStore) -> Option<Vec<u8>> {
    newest_manifest(store, &user()).and_then(|(key, _)| store.bytes(&key))
}

fn delta_keys(store: &MemoryStore) -> Vec<String> {
    store
        .keys()
        .into_iter()
        .filter(|k| k.starts_with("a/deltas/"))
        .collect()
}

// ---- Cost and shape of a write ----

/// A one-row insert into a 32 MiB database uploads a few pages and the manifest: at most
/// 64 KiB, two objects; the base is not rewritten.
#[test]
fn one_row_insert_at_32_mib_uploads_at_most_64_kib() {
    let store = MemoryStore::new();
    let big = fixtures::sized_database(32 * 1024 * 1024, 7).unwrap();
    store.insert(
        BASE,
        &apply_sql(&big, "CREATE TABLE hits(id INTEGER PRIMARY KEY, note TEXT)"),
        &[],
    );
    let base_before = store.bytes(BASE).unwrap();
    let clock = StepClock::stepping(1.0);
    let cache = DbCache::new(64 * 1024 * 1024);
    let ctx = incremental(&store, &clock, Some(&cache));
    for id in 1..=3 {
        let report = write(&ctx, id).unwrap();
        let s = storage(&report);
        assert_eq!(s["layout"], "incremental");
        assert_eq!(s["objects_written"], 2);
        let uploaded = s["bytes_uploaded"].as_u64().unwrap();
        assert!(
            uploaded <= 64 * 1024,
            "write {id} uploaded {uploaded} bytes"
        );
    }
    assert_eq!(
        store.bytes(BASE).unwrap(),
        base_before,
        "the base is untouched"
    );
    assert_eq!(hits(&current(&store)), [1, 2, 3]);
}

/// The first incremental write upgrades a single-layout user: the old object becomes the base,
/// nothing is lost, and a fresh worker loads base + delta.
#[test]
fn single_layout_user_is_upgraded_on_first_write() {
    let store = seeded();
    let before = store.bytes(BASE).unwrap();
    let clock = StepClock::stepping(1.0);
    let report = write(&incremental(&store, &clock, None), 1).unwrap();
    assert_eq!(storage(&report)["manifest_seq"], 1);
    let m = manifest(&store).unwrap();
    assert_eq!((m.seq, m.deltas.len(), m.base.seq), (1, 1, 0));
    assert_eq!(store.bytes(BASE).unwrap(), before);
    let image = current(&store);
    assert_eq!(hits(&image), [1]);
    assert_eq!(
        workers_sqlite_poc::testing::row_counts(&image)
            .into_iter()
            .filter(|(t, _)| t != "hits")
            .collect::<Vec<_>>(),
        workers_sqlite_poc::testing::row_counts(&before)
            .into_iter()
            .filter(|(t, _)| t != "hits")
            .collect::<Vec<_>>()
    );
    // A cold load reports the delta it applied.
    let cold = write(&incremental(&store, &clock, None), 2).unwrap();
    assert_eq!(storage(&cold)["deltas_applied"], 1);
}

/// An isolate holding a cached copy of a single-layout user, while another isolate's write
/// upgrades the user to the incremental layout: its next load finds `database.sqlite`
/// unchanged (not modified) and a live manifest listing it. That once answered
/// `corrupt_database` ("database.sqlite is missing but manifest.json lists it"); the base is
/// read again whole and the load goes on.
#[test]
fn a_cached_single_copy_meets_an_upgrade_by_another_isolate() {
    let store = seeded();
    let clock = StepClock::stepping(1.0);
    let cache_a = DbCache::new(1 << 26);
    let a = incremental(&store, &clock, Some(&cache_a));
    let _ = read(&a);
    write(&incremental(&store, &clock, None), 1).unwrap();
    assert!(
        manifest(&store).is_some(),
        "the other isolate upgraded the user"
    );
    write(&a, 2).unwrap();
    assert_eq!(hits(&current(&store)), [1, 2]);
}

/// A cached copy is brought up to date with only the deltas it lacks; an unchanged manifest
/// costs one conditional get and no body.
#[test]
fn cache_hit_fetches_only_missing_deltas() {
    let store = seeded();
    let clock = StepClock::stepping(1.0);
    let (cache_a, cache_b) = (DbCache::new(1 << 26), DbCache::new(1 << 26));
    let a = incremental(&store, &clock, Some(&cache_a));
    let b = incremental(&store, &clock, Some(&cache_b));
    write(&a, 1).unwrap();
    write(&b, 2).unwrap();
    write(&b, 3).unwrap();
    let gets = store.get_count();
    let report = read(&a);
    assert_eq!(report.cache.as_ref().unwrap().status, CacheStatus::Updated);
    assert_eq!(storage(&report)["deltas_applied"], 2);
    let slots = u64::from(a.compaction.commit_slots);
    assert_eq!(
        store.get_count() - gets,
        slots + 2,
        "every commit slot (conditionally) + the two deltas it lacked"
    );
    let gets = store.get_count();
    let report = read(&a);
    assert_eq!(report.cache.as_ref().unwrap().status, CacheStatus::Hit);
    assert_eq!(store.get_count() - gets, slots);
    let mut entry = cache_a.take("a/database.sqlite").unwrap();
    assert_eq!(
        hits(&sqlite::export(&mut entry.conn).unwrap()),
        [1, 2, 3],
        "the updated copy equals the stored state"
    );
}

/// Two writers on one manifest: the one that commits second lost the race; its delta is
/// deleted, it re-runs on the newest state, and both writes are kept.
#[test]
fn concurrent_writers_lose_nothing() {
    let store = seeded();
    let clock = StepClock::stepping(1.0);
    let a = incremental(&store, &clock, None);
    write(&a, 1).unwrap();
    let loaded = block(load(&a, &user())).unwrap();
    let mut queried = query(&a, &user(), loaded, &mut insert(10)).unwrap();
    write(&a, 20).unwrap(); // the rival commits in between
    let saved = block(save(&a, &user(), &mut queried, SaveMode::Auto)).unwrap();
    assert_eq!(saved, Saved::Conflict);
    let listed: Vec<String> = manifest(&store)
        .unwrap()
        .deltas
        .iter()
        .map(|d| d.key.clone())
        .collect();
    assert_eq!(delta_keys(&store), listed, "the loser's delta was removed");
    // The full request re-runs and lands.
    let report = write(&a, 10).unwrap();
    assert_eq!(report.db_info.stored.as_ref().unwrap().attempts, 1);
    assert_eq!(hits(&current(&store)), [1, 10, 20]);
}

// ---- Commit slots ----

/// The incremental context with `k` commit slots.
fn slotted<'a, S, C>(
    store: &'a S,
    clock: &'a C,
    cache: Option<&'a DbCache>,
    k: u32,
) -> Context<'a, S, C> {
    let base = incremental(store, clock, cache);
    Context {
        compaction: CompactionPolicy {
            commit_slots: k,
            ..base.compaction
        },
        ..base
    }
}

/// Every commit slot's manifest: (slot, commit).
fn slot_commits(store: &MemoryStore) -> Vec<(usize, u64)> {
    (0..5)
        .filter_map(|slot| {
            let bytes = store.bytes(&user().manifest_key(slot))?;
            let m: Manifest = serde_json::from_slice(&bytes).unwrap();
            Some((slot, m.commit))
        })
        .collect()
}

/// With three slots, commit c goes to slot c % 3 and a load (cold or cached, in any
/// isolate) takes the highest commit: writes, a compaction, a retirement to the single layout
/// and the way back are each the next commit, and nothing is lost.
#[test]
fn commits_rotate_over_the_slots_and_a_load_takes_the_newest() {
    let store = seeded();
    let clock = StepClock::stepping(1.0);
    let (cache_a, cache_b) = (DbCache::new(1 << 26), DbCache::new(1 << 26));
    let a = slotted(&store, &clock, Some(&cache_a), 3);
    let b = slotted(&store, &clock, Some(&cache_b), 3);
    let cold = slotted(&store, &clock, None, 3);
    for id in 1..=5 {
        let ctx = [&a, &b, &cold][id as usize % 3];
        write(ctx, id).unwrap();
    }
    // The upgrade is commit 0 (slot 0, format 2: a worker that knows only manifest.json
    // refuses it), then 1, 2, 3, 4.
    assert_eq!(slot_commits(&store), [(0, 3), (1, 4), (2, 2)]);
    let newest: Manifest =
        serde_json::from_slice(&store.bytes("a/manifest-1.json").unwrap()).unwrap();
    assert_eq!((newest.format, newest.slots, newest.seq), (2, 3, 5));
    assert_eq!(hits(&current(&store)), [1, 2, 3, 4, 5]);
    // A cached copy is refreshed from whichever slot is newest.
    assert_eq!(
        read(&a).cache.as_ref().unwrap().status,
        CacheStatus::Updated
    );
    assert_eq!(read(&a).cache.as_ref().unwrap().status, CacheStatus::Hit);
    // Compaction's manifest put is commit 5, in slot 2.
    let done = block(storage::compact(&cold, &user(), false)).unwrap();
    assert_eq!(done.outcome, storage::CompactOutcome::Compacted);
    assert_eq!(slot_commits(&store), [(0, 3), (1, 4), (2, 5)]);
    write(&b, 6).unwrap();
    assert_eq!(slot_commits(&store), [(0, 6), (1, 4), (2, 5)]);
    // Retired at commit 7 (slot 1); the way back is commit 8 (slot 2).
    let single = Context {
        layout: Layout::Single,
        ..cold
    };
    let done = block(storage::compact(&single, &user(), true)).unwrap();
    assert_eq!(done.outcome, storage::CompactOutcome::Retired);
    assert_eq!(slot_commits(&store), [(0, 6), (1, 7), (2, 5)]);
    write(&single, 7).unwrap();
    write(&a, 8).unwrap();
    assert_eq!(slot_commits(&store), [(0, 6), (1, 7), (2, 8)]);
    assert_eq!(hits(&current(&store)), [1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(integrity(&current(&store)), "ok");
}

/// A user's slot count only grows: a worker configured with fewer slots reads as many as the
/// manifests it finds name, and commits in the slot the newest one says; one configured with
/// more widens the user from the next commit on. A manifest written before slots existed is
/// commit 0 in slot 0.
#[test]
fn a_slot_count_only_grows_and_every_worker_finds_the_newest() {
    let store = seeded();
    let clock = StepClock::stepping(1.0);
    write(&slotted(&store, &clock, None, 1), 1).unwrap();
    let legacy: serde_json::Value =
        serde_json::from_slice(&store.bytes(MANIFEST).unwrap()).unwrap();
    assert_eq!(
        (legacy["format"].as_u64(), legacy["slots"].as_u64()),
        (Some(1), Some(1))
    );
    // An old manifest (no commit number, no slot count) reads as commit 0 of one slot.
    let mut old = legacy.clone();
    old.as_object_mut().unwrap().remove("commit");
    old.as_object_mut().unwrap().remove("slots");
    store.insert(MANIFEST, &serde_json::to_vec(&old).unwrap(), &[]);
    write(&slotted(&store, &clock, None, 4), 2).unwrap();
    assert_eq!(
        slot_commits(&store),
        [(0, 1)],
        "commit 1 after one slot goes to slot 0"
    );
    write(&slotted(&store, &clock, None, 4), 3).unwrap();
    assert_eq!(slot_commits(&store), [(0, 1), (2, 2)]);
    // A worker that reads one slot finds four named and reads them all.
    let narrow = DbCache::new(1 << 26);
    write(&slotted(&store, &clock, Some(&narrow), 1), 4).unwrap();
    write(&slotted(&store, &clock, Some(&narrow), 2), 5).unwrap();
    assert_eq!(slot_commits(&store), [(0, 4), (2, 2), (3, 3)]);
    assert_eq!(hits(&current(&store)), [1, 2, 3, 4, 5]);
}

/// Two writers that read the same state claim the same commit number: the same slot, so
/// exactly one put wins and the other loses its condition, deletes its delta and re-runs. A
/// writer whose read of the next slot was stale (a commit landed there after) also only fails
/// its condition.
#[test]
fn writers_claiming_one_commit_number_race_on_one_key() {
    for k in [2, 3] {
        let store = seeded();
        let clock = StepClock::stepping(1.0);
        let a = slotted(&store, &clock, None, k);
        // Every slot exists, so the claimed one is taken `If-Match` an etag the rival changes.
        let first: Vec<i64> = (1..=i64::from(k) + 1).collect();
        for id in &first {
            write(&a, *id).unwrap();
        }
        let loaded = block(load(&a, &user())).unwrap();
        let mut mine = query(&a, &user(), loaded, &mut insert(10)).unwrap();
        // The rival commits the number this writer would claim, then more.
        write(&a, 20).unwrap();
        write(&a, 30).unwrap();
        let saved = block(save(&a, &user(), &mut mine, SaveMode::Auto)).unwrap();
        assert_eq!(saved, Saved::Conflict, "k={k}");
        let newest = storage::Manifest::clone(
            &(0..k as usize)
                .filter_map(|s| store.bytes(&user().manifest_key(s)))
                .map(|b| serde_json::from_slice::<Manifest>(&b).unwrap())
                .max_by_key(|m| m.commit)
                .unwrap(),
        );
        let listed: Vec<String> = newest.deltas.iter().map(|d| d.key.clone()).collect();
        assert_eq!(
            delta_keys(&store),
            listed,
            "k={k}: the loser's delta was removed"
        );
        write(&a, 10).unwrap();
        let mut expected = first.clone();
        expected.extend([10, 20, 30]);
        assert_eq!(hits(&current(&store)), expected, "k={k}");
    }
}

// ---- Compaction, sweep, retire ----

/// Compaction folds the deltas into a new base, commits a manifest without them, deletes
/// them; the sweep removes orphans but keeps referenced and young objects.
#[test]
fn compaction_folds_deltas_and_sweep_removes_orphans() {
    let store = seeded();
    let clock = StepClock::stepping(1.0);
    let cache = DbCache::new(1 << 26);
    let ctx = incremental(&store, &clock, Some(&cache));
    let mut follow = String::new();
    for id in 1..=4 {
        follow = storage(&write(&ctx, id).unwrap())["follow_up"]
            .as_str()
            .unwrap()
            .to_owned();
    }
    assert_eq!(follow, "compact", "4 deltas pass the threshold of 4");
    // An orphan: a delta no manifest lists (a writer that died before committing).
    store.insert("a/deltas/000000000099-dead.delta", b"orphan", &[]);
    let done = block(storage::compact(&ctx, &user(), false)).unwrap();
    assert_eq!(done.outcome, storage::CompactOutcome::Compacted);
    assert_eq!((done.deltas_folded, done.deltas_deleted), (4, 4));
    assert_eq!(block(storage::sweep(&ctx, &user())).unwrap().deleted, 1);
    assert!(delta_keys(&store).is_empty());
    let m = manifest(&store).unwrap();
    assert!(m.deltas.is_empty() && m.base.seq == 4 && !m.retired);
    assert_eq!(hits(&store.bytes(BASE).unwrap()), [1, 2, 3, 4]);
    // The cached copy survived and the next write builds on the new base.
    write(&ctx, 5).unwrap();
    assert_eq!(hits(&current(&store)), [1, 2, 3, 4, 5]);
    // Young orphans are kept by a sweep with a grace period.
    store.set_now_ms(clock.epoch_ms());
    store.insert("a/deltas/000000000098-young.delta", b"orphan", &[]);
    let graceful = Context {
        compaction: CompactionPolicy::default(),
        ..ctx
    };
    let swept = block(storage::sweep(&graceful, &user())).unwrap();
    assert_eq!((swept.deleted, swept.kept_young), (0, 1));
}

/// A write committed between compaction's base put and its manifest put is not lost: loaders
/// apply only the deltas the new base does not cover, and the compaction tries again.
#[test]
fn write_between_compaction_steps_is_kept() {
    let store = seeded();
    let clock = StepClock::stepping(1.0);
    for id in 1..=3 {
        write(&incremental(&store, &clock, None), id).unwrap();
    }
    // Compaction stops after its base put (a load = a get of every commit slot, the base's
    // get, 3 deltas, then the put).
    let stops = FaultPlan::new();
    let faulty = HookStore::new(store).with(&stops);
    let fctx = incremental(&faulty, &clock, None);
    stops.stop_after(Some(fctx.compaction.commit_slots + 5));
    assert!(block(storage::compact(&fctx, &user(), false)).is_err());
    assert!(stops.stops() > 0, "the compaction was stopped");
    stops.stop_after(None);
    let base = faulty.inner.metadata(BASE).unwrap();
    assert_eq!(
        base["covers-seq"], "3",
        "the base was replaced by the compaction"
    );
    // A writer commits on the old manifest: its loader sees the new base and skips 1..3.
    let report = write(&fctx, 4).unwrap();
    assert_eq!(storage(&report)["deltas_applied"], 0);
    assert_eq!(hits(&current(&faulty)), [1, 2, 3, 4]);
    let done = block(storage::compact(&fctx, &user(), false)).unwrap();
    assert_eq!(done.outcome, storage::CompactOutcome::Compacted);
    assert_eq!(hits(&faulty.inner.bytes(BASE).unwrap()), [1, 2, 3, 4]);
}

/// Writes that commit while a compaction runs do not make it start over: it commits its
/// manifest over theirs, keeping their deltas, and deletes only what it folded.
#[test]
fn compaction_keeps_writes_that_commit_meanwhile() {
    let store = seeded();
    let clock = StepClock::stepping(1.0);
    let ctx = incremental(&store, &clock, None);
    for id in 1..=3 {
        write(&ctx, id).unwrap();
    }
    // Another writer commits twice right after compaction's base put lands, before its
    // manifest put.
    let rival_done = std::cell::Cell::new(false);
    let interleaved = HookStore::new(store).with(After(
        |call: &Call<'_>, answer: Answer, inner: &MemoryStore| {
            if call.key() == BASE
                && call.metadata("covers-seq").is_some()
                && answer == Answer::Stored
                && !rival_done.replace(true)
            {
                write(&incremental(inner, &clock, None), 4).unwrap();
                write(&incremental(inner, &clock, None), 5).unwrap();
            }
        },
    ));
    let done = block(storage::compact(
        &incremental(&interleaved, &clock, None),
        &user(),
        false,
    ))
    .unwrap();
    assert!(rival_done.get(), "the rival wrote in between");
    let store = interleaved.inner;
    assert_eq!(done.outcome, storage::CompactOutcome::Compacted);
    assert_eq!((done.deltas_folded, done.deltas_deleted), (3, 3));
    let m = manifest(&store).unwrap();
    assert_eq!((m.base.seq, m.seq), (3, 5));
    assert_eq!(m.deltas.iter().map(|d| d.seq).collect::<Vec<_>>(), [4, 5]);
    assert_eq!(hits(&store.bytes(BASE).unwrap()), [1, 2, 3]);
    assert_eq!(hits(&current(&store)), [1, 2, 3, 4, 5]);
}

/// A write whose commit loses to a compaction of the very state it was built on commits its
/// delta on top of the compaction's manifest: no second run of the work, no second upload of
/// the delta, and the stored database holds every write.
#[test]
fn a_write_that_loses_its_commit_to_a_compaction_commits_on_top_without_running_again() {
    let store = seeded();
    let clock = StepClock::stepping(1.0);
    for id in 1..=3 {
        write(&incremental(&store, &clock, None), id).unwrap();
    }
    // Right after the writer's delta lands, a compaction of seq 3 commits first.
    let compacted = std::cell::Cell::new(false);
    let delta_puts = std::cell::Cell::new(0);
    let interleaved = HookStore::new(store).with(After(
        |call: &Call<'_>, answer: Answer, inner: &MemoryStore| {
            let delta = matches!(call, Call::Put { key, .. } if key.starts_with("a/deltas/"));
            if delta && answer == Answer::Stored {
                delta_puts.set(delta_puts.get() + 1);
            }
            if delta && answer == Answer::Stored && !compacted.replace(true) {
                let done = block(storage::compact(
                    &incremental(inner, &clock, None),
                    &user(),
                    false,
                ))
                .unwrap();
                assert_eq!(done.outcome, storage::CompactOutcome::Compacted);
            }
        },
    ));
    let report = write(&incremental(&interleaved, &clock, None), 4).unwrap();
    assert!(compacted.get(), "the compaction committed in between");
    assert_eq!(report.db_info.stored.as_ref().unwrap().attempts, 1);
    assert_eq!(delta_puts.get(), 1, "the delta was uploaded once");
    let store = interleaved.inner;
    let m = manifest(&store).unwrap();
    assert_eq!((m.base.seq, m.seq), (3, 4));
    assert_eq!(m.deltas.iter().map(|d| d.seq).collect::<Vec<_>>(), [4]);
    assert_eq!(hits(&current(&store)), [1, 2, 3, 4]);
}

/// ... but not over a compaction that folded another writer's commit: that state is not the
/// one the delta was built on, so the write runs again on it, and both writes are kept.
#[test]
fn a_write_is_not_committed_over_a_compaction_of_a_newer_state() {
    let store = seeded();
    let clock = StepClock::stepping(1.0);
    for id in 1..=3 {
        write(&incremental(&store, &clock, None), id).unwrap();
    }
    // After the writer's delta lands: a rival commits 5, then a compaction folds it.
    let rival_done = std::cell::Cell::new(false);
    let interleaved = HookStore::new(store).with(After(
        |call: &Call<'_>, answer: Answer, inner: &MemoryStore| {
            if matches!(call, Call::Put { key, .. } if key.starts_with("a/deltas/"))
                && answer == Answer::Stored
                && !rival_done.replace(true)
            {
                write(&incremental(inner, &clock, None), 5).unwrap();
                let done = block(storage::compact(
                    &incremental(inner, &clock, None),
                    &user(),
                    false,
                ))
                .unwrap();
                assert_eq!(done.outcome, storage::CompactOutcome::Compacted);
            }
        },
    ));
    let report = write(&incremental(&interleaved, &clock, None), 4).unwrap();
    assert!(
        rival_done.get(),
        "the rival and the compaction committed in between"
    );
    assert_eq!(report.db_info.stored.as_ref().unwrap().attempts, 2);
    let store = interleaved.inner;
    let m = manifest(&store).unwrap();
    assert_eq!((m.base.seq, m.seq), (4, 5));
    assert_eq!(hits(&current(&store)), [1, 2, 3, 4, 5]);
}

/// A commit put refused for the key's rate right after another writer committed there (the
/// write that took the key's second) has lost its race: one head shows the key moved on, and
/// the write runs again on the new state at once, instead of repeating a put that can only
/// fail its condition once the second is over.
#[test]
fn a_commit_refused_for_the_rate_of_a_key_another_writer_took_loses_at_once() {
    let store = seeded();
    let clock = StepClock::stepping(1.0);
    write(&incremental(&store, &clock, None), 1).unwrap();
    // The writer's first manifest put: a rival commits just before it, and the key stays
    // refused for its next three puts (its second, as R2 keeps it).
    let refused = std::cell::Cell::new(0);
    let rival_done = std::cell::Cell::new(false);
    let interleaved = HookStore::new(store).with(Before(|call: &Call<'_>, inner: &MemoryStore| {
        if !matches!(call, Call::Put { key, .. } if is_manifest_key(key)) {
            return Action::Proceed;
        }
        if !rival_done.replace(true) {
            write(&incremental(inner, &clock, None), 3).unwrap();
        }
        if refused.get() < 3 {
            refused.set(refused.get() + 1);
            return Action::Fail(StoreError::new("put", StoreErrorKind::RateLimited, "429"));
        }
        Action::Proceed
    }));
    let slept_before = clock.slept_ms();
    let report = write(&incremental(&interleaved, &clock, None), 2).unwrap();
    assert_eq!(refused.get(), 3, "the key stayed refused for three puts");
    assert_eq!(report.db_info.stored.as_ref().unwrap().attempts, 2);
    // The rerun's own jittered wait (at most 100 ms), and then the rerun's put waiting out
    // the key's second (two refusals, 250 ms each); not three more waits on a lost race.
    assert!(
        clock.slept_ms() - slept_before <= 600,
        "slept {} ms",
        clock.slept_ms() - slept_before
    );
    let store = interleaved.inner;
    assert_eq!(hits(&current(&store)), [1, 2, 3]);
}

/// A compaction folds a copy of its own: the cached copy goes back before the base's upload,
/// so a request arriving during the compaction is served from the cache (a compaction can
/// take seconds under R2's one write a second per key, and every request would otherwise load
/// the base and every delta from R2).
#[test]
fn a_request_during_a_compaction_is_served_from_the_cache() {
    let store = seeded();
    let clock = StepClock::stepping(1.0);
    let cache = DbCache::new(1 << 26);
    for id in 1..=3 {
        write(&incremental(&store, &clock, Some(&cache)), id).unwrap();
    }
    let during = std::cell::Cell::new(None);
    let interleaved = HookStore::new(store).with(Before(|call: &Call<'_>, inner: &MemoryStore| {
        if matches!(call, Call::Put { key, .. } if *key == BASE) && during.get().is_none() {
            let report = read(&incremental(inner, &clock, Some(&cache)));
            during.set(Some(report.cache.unwrap().status));
        }
        Action::Proceed
    }));
    let ctx = incremental(&interleaved, &clock, Some(&cache));
    let done = block(storage::compact(&ctx, &user(), false)).unwrap();
    assert_eq!(done.outcome, storage::CompactOutcome::Compacted);
    assert_eq!(
        during.get(),
        Some(CacheStatus::Hit),
        "served from the cache"
    );
    assert_eq!(hits(&current(&interleaved.inner)), [1, 2, 3]);
    // And the copy in the cache still loads as the stored state after the compaction.
    let report = read(&ctx);
    assert_ne!(report.cache.as_ref().unwrap().status, CacheStatus::Miss);
}

/// A compaction whose base put waited out R2's second for the key reads the manifest again
/// before its own put: writes that committed meanwhile are kept without a put over a stale
/// read, which fails its condition and still takes the key's second from the next writer.
#[test]
fn a_compaction_whose_base_put_waited_reads_the_manifest_again() {
    let store = seeded();
    let clock = StepClock::stepping(1.0);
    for id in 1..=3 {
        write(&incremental(&store, &clock, None), id).unwrap();
    }
    let refused = std::cell::Cell::new(false);
    let failed_commits = std::cell::Cell::new(0);
    let interleaved = HookStore::new(store)
        .with(Before(|call: &Call<'_>, inner: &MemoryStore| {
            if matches!(call, Call::Put { key, .. } if *key == BASE) && !refused.replace(true) {
                // A write commits while the base put waits for the key's second.
                write(&incremental(inner, &clock, None), 4).unwrap();
                return Action::Fail(StoreError::new("put", StoreErrorKind::RateLimited, "429"));
            }
            Action::Proceed
        }))
        .with(After(|call: &Call<'_>, answer: Answer, _: &MemoryStore| {
            if is_manifest_key(call.key()) && answer == Answer::ConditionFailed {
                failed_commits.set(failed_commits.get() + 1);
            }
        }));
    let done = block(storage::compact(
        &incremental(&interleaved, &clock, None),
        &user(),
        false,
    ))
    .unwrap();
    assert!(refused.get());
    assert_eq!(done.outcome, storage::CompactOutcome::Compacted);
    assert_eq!(failed_commits.get(), 0, "no put over a stale read");
    let store = interleaved.inner;
    let m = manifest(&store).unwrap();
    assert_eq!((m.base.seq, m.seq), (3, 4));
    assert_eq!(hits(&current(&store)), [1, 2, 3, 4]);
}

/// A commit put that landed with its answer lost, whose repeat is refused for the key's rate
/// (the second its own landed put took): one head finds the object is ours, and the write is
/// acknowledged at once instead of after waiting out the second.
#[test]
fn a_lost_answer_whose_repeat_is_rate_limited_is_found_landed_at_once() {
    let store = seeded();
    let clock = StepClock::stepping(1.0);
    write(&incremental(&store, &clock, None), 1).unwrap();
    let puts = std::cell::Cell::new(0);
    let interleaved = HookStore::new(store).with(Before(|call: &Call<'_>, _: &MemoryStore| {
        if !matches!(call, Call::Put { key, .. } if is_manifest_key(key)) {
            return Action::Proceed;
        }
        puts.set(puts.get() + 1);
        match puts.get() {
            1 => Action::LoseAnswer(StoreError::new("put", StoreErrorKind::Transient, "lost")),
            2..=4 => Action::Fail(StoreError::new("put", StoreErrorKind::RateLimited, "429")),
            _ => Action::Proceed,
        }
    }));
    let slept_before = clock.slept_ms();
    let report = write(&incremental(&interleaved, &clock, None), 2).unwrap();
    assert_eq!(report.db_info.stored.as_ref().unwrap().attempts, 1);
    assert_eq!(puts.get(), 2, "found landed at the first refusal");
    // The wait after the lost answer (the first 5xx backoff), and no wait for the rate.
    assert!(
        clock.slept_ms() - slept_before <= 300,
        "slept {} ms",
        clock.slept_ms() - slept_before
    );
    assert_eq!(hits(&current(&interleaved.inner)), [1, 2]);
}

/// A commit whose manifest put landed but whose answer was lost, and on which another writer
/// committed before the retry: the retry's condition fails and the object is no longer ours.
/// That is not a lost race (taking it for one deleted the delta the newer manifest lists, and
/// the next load answered `corrupt_database`, or ran the insert twice): the writer answers
/// that the outcome is unknown, and the database loads with both writes.
///
/// With more than one commit slot the rival's commit goes to the next slot, so the retry
/// finds its own landed commit where it put it, and the write is acknowledged.
#[test]
fn a_lost_answer_overtaken_by_another_commit_is_an_unknown_outcome_not_a_lost_race() {
    for k in [1, 5] {
        lost_answer_overtaken(k);
    }
}

fn lost_answer_overtaken(k: u32) {
    let store = seeded();
    let clock = StepClock::stepping(1.0);
    write(&slotted(&store, &clock, None, k), 1).unwrap();
    let lost = std::cell::Cell::new(false);
    let rival_done = std::cell::Cell::new(false);
    let interleaved = HookStore::new(store)
        .with(Before(|call: &Call<'_>, _: &MemoryStore| {
            if matches!(call, Call::Put { key, .. } if is_manifest_key(key)) && !lost.replace(true)
            {
                Action::LoseAnswer(StoreError::new("put", StoreErrorKind::Transient, "lost"))
            } else {
                Action::Proceed
            }
        }))
        .with(After(
            |call: &Call<'_>, answer: Answer, inner: &MemoryStore| {
                if is_manifest_key(call.key())
                    && answer == Answer::Stored
                    && !rival_done.replace(true)
                {
                    write(&slotted(inner, &clock, None, k), 3).unwrap();
                }
            },
        ));
    let written = write(&slotted(&interleaved, &clock, None, k), 2);
    assert!(rival_done.get(), "the rival committed on top");
    match written {
        Err(err) => assert!(k == 1 && !err.nothing_written(), "{k} slots: {err:?}"),
        Ok(_) => assert!(k > 1, "one slot: the outcome cannot be known"),
    }
    let store = interleaved.inner;
    assert_eq!(hits(&current(&store)), [1, 2, 3]);
}

// ---- The spec's request: `save=always` writes the whole database ----

fn base_etag(store: &MemoryStore) -> String {
    block(store.head(BASE)).unwrap().unwrap().etag
}

fn db_version(store: &MemoryStore) -> u64 {
    store.metadata(BASE).unwrap()["db-version"].parse().unwrap()
}

/// The spec's request (`GET /`, `save=always`), as the worker runs it.
fn spec_request<S: ObjectStore, C: Clock>(ctx: &Context<'_, S, C>) -> serde_json::Value {
    let (report, ()) = block(serve(
        ctx,
        &user(),
        SaveMode::Always,
        &mut pipeline::ListTables,
    ))
    .unwrap();
    serde_json::to_value(report).unwrap()
}

/// In both layouts, `save=always` puts the current database whole as `database.sqlite` with a
/// larger `db-version`, and its save timing measures that put. In the incremental layout it is
/// a compaction: the manifest lists the new base and no deltas, and the folded deltas are
/// left for the sweep.
#[test]
fn spec_request_writes_the_whole_database_in_both_layouts() {
    for layout in [Layout::Single, Layout::Incremental] {
        let store = seeded();
        let clock = StepClock::stepping(1.0);
        let cache = DbCache::new(1 << 26);
        let ctx = Context {
            layout,
            ..incremental(&store, &clock, Some(&cache))
        };
        write(&ctx, 1).unwrap();
        write(&ctx, 2).unwrap();
        let before = store.metadata(BASE).unwrap().get("db-version").cloned();
        let report = spec_request(&ctx);
        let after = db_version(&store);
        assert!(
            before
                .as_ref()
                .is_none_or(|b| after > b.parse::<u64>().unwrap()),
            "{layout:?}: db-version {before:?} -> {after}"
        );
        assert_eq!(report["db_info"]["db_version"], after.to_string());
        assert_eq!(hits(&store.bytes(BASE).unwrap()), [1, 2], "{layout:?}");
        assert_eq!(
            report["db_info"]["size_bytes"],
            store.bytes(BASE).unwrap().len()
        );
        assert_ne!(report["delay_analysis"]["save"]["status"], "not_run");
        assert!(
            report["timing_breakdown"]["save"]["upload_ms"]
                .as_f64()
                .unwrap()
                > 0.0
        );
        let s = &report["storage"];
        assert!(s["bytes_uploaded"].as_u64().unwrap() >= store.bytes(BASE).unwrap().len() as u64);
        if layout == Layout::Incremental {
            let m = manifest(&store).unwrap();
            assert_eq!(m.base.etag, base_etag(&store));
            assert!(m.deltas.is_empty() && m.base.seq == 2, "{m:?}");
            assert_eq!(
                (s["objects_written"].as_u64(), s["deltas_pending"].as_u64()),
                (Some(2), Some(0))
            );
            assert_eq!(s["follow_up"], "none");
        }
        // Again, from the cache: still a new, larger version, nothing lost.
        let again = spec_request(&ctx);
        assert_eq!(again["cache"]["status"], "hit");
        assert!(db_version(&store) > after);
        assert_eq!(hits(&store.bytes(BASE).unwrap()), [1, 2]);
        assert_eq!(hits(&current(&store)), [1, 2]);
        // `auto` and `never` still write nothing when nothing changed.
        let keys = store.keys().len();
        let v = db_version(&store);
        for mode in [SaveMode::Auto, SaveMode::Never] {
            block(serve(&ctx, &user(), mode, &mut pipeline::ListTables)).unwrap();
        }
        assert_eq!((store.keys().len(), db_version(&store)), (keys, v));
        // `/query` keeps writing deltas in the incremental layout.
        write(&ctx, 3).unwrap();
        if layout == Layout::Incremental {
            assert_eq!(manifest(&store).unwrap().deltas.len(), 1);
            assert_eq!(hits(&store.bytes(BASE).unwrap()), [1, 2]);
        }
        assert_eq!(hits(&current(&store)), [1, 2, 3]);
    }
}

/// A write that commits while the spec's request folds the database is kept: it stays listed
/// after the new base, is neither lost nor a conflict, and the spec's request succeeds.
#[test]
fn spec_request_keeps_a_write_that_commits_meanwhile() {
    let store = seeded();
    let clock = StepClock::stepping(1.0);
    write(&incremental(&store, &clock, None), 1).unwrap();
    // Another writer commits right after the spec's request's base put lands, before its
    // manifest put.
    let rival_done = std::cell::Cell::new(false);
    let interleaved = HookStore::new(store).with(After(
        |call: &Call<'_>, answer: Answer, inner: &MemoryStore| {
            if call.key() == BASE
                && call.metadata("covers-seq").is_some()
                && answer == Answer::Stored
                && !rival_done.replace(true)
            {
                write(&incremental(inner, &clock, None), 2).unwrap();
            }
        },
    ));
    let report = spec_request(&incremental(&interleaved, &clock, None));
    assert!(rival_done.get(), "the rival wrote in between");
    let store = &interleaved.inner;
    let ctx = incremental(store, &clock, None);
    assert_eq!(report["db_info"]["attempts"], 1);
    assert_eq!(report["storage"]["follow_up"], "compact");
    assert_eq!(hits(&store.bytes(BASE).unwrap()), [1]);
    let m = manifest(store).unwrap();
    assert_eq!((m.base.seq, m.seq), (1, 2));
    assert_eq!(m.base.etag, base_etag(store));
    assert!(store.keys().iter().all(|k| !k.contains("conflicts/")));
    assert_eq!(hits(&current(store)), [1, 2]);
    assert_eq!(
        block(storage::compact(&ctx, &user(), false))
            .unwrap()
            .outcome,
        storage::CompactOutcome::Compacted
    );
    assert_eq!(hits(&store.bytes(BASE).unwrap()), [1, 2]);
}

/// `LAYOUT=single` on a user with a manifest: the write is committed as a delta and the
/// follow-up retires the manifest, leaving one complete object that single writes replace.
#[test]
fn single_layout_retires_a_manifest() {
    let store = seeded();
    let clock = StepClock::stepping(1.0);
    write(&incremental(&store, &clock, None), 1).unwrap();
    let single = Context {
        layout: Layout::Single,
        ..incremental(&store, &clock, None)
    };
    let report = write(&single, 2).unwrap();
    assert_eq!(storage(&report)["follow_up"], "retire");
    let done = block(storage::compact(&single, &user(), true)).unwrap();
    assert_eq!(done.outcome, storage::CompactOutcome::Retired);
    assert!(manifest(&store).unwrap().retired);
    assert_eq!(hits(&store.bytes(BASE).unwrap()), [1, 2]);
    let report = write(&single, 3).unwrap();
    assert_eq!(storage(&report)["layout"], "single");
    assert_eq!(storage(&report)["objects_written"], 1);
    assert_eq!(hits(&store.bytes(BASE).unwrap()), [1, 2, 3]);
    // And back: an incremental write re-upgrades over the retired manifest.
    write(&incremental(&store, &clock, None), 4).unwrap();
    assert!(!manifest(&store).unwrap().retired);
    assert_eq!(hits(&current(&store)), [1, 2, 3, 4]);
}

/// Before the Durable Object's import reads `database.sqlite`, pending deltas are folded in;
/// with nothing pending it costs one get and writes nothing.
#[test]
fn pending_deltas_are_folded_before_an_import() {
    let store = seeded();
    let clock = StepClock::stepping(1.0);
    let ctx = incremental(&store, &clock, None);
    assert!(
        block(storage::fold_pending(&ctx, &user()))
            .unwrap()
            .is_none()
    );
    write(&ctx, 1).unwrap();
    write(&ctx, 2).unwrap();
    let done = block(storage::fold_pending(&ctx, &user()))
        .unwrap()
        .unwrap();
    assert_eq!(done.deltas_folded, 2);
    assert_eq!(hits(&store.bytes(BASE).unwrap()), [1, 2]);
    let puts = store.put_count();
    assert!(
        block(storage::fold_pending(&ctx, &user()))
            .unwrap()
            .is_none()
    );
    assert_eq!(store.put_count(), puts);
}

/// Moving an incremental user folds them into one frozen object first: the copy the Durable
/// Object imports holds every committed write.
#[test]
fn move_of_an_incremental_user_copies_every_write() {
    let store = seeded();
    let clock = StepClock::stepping(1.0);
    let ctx = incremental(&store, &clock, None);
    for id in 1..=3 {
        write(&ctx, id).unwrap();
    }
    let imported = std::cell::RefCell::new(Vec::new());
    block(migrate::to_durable_object(&ctx, &user(), async || {
        let object = store.bytes(BASE).unwrap();
        assert_eq!(store.metadata(BASE).unwrap()["route"], "moving");
        *imported.borrow_mut() = hits(&object);
        Ok(serde_json::json!({"success": true}))
    }))
    .unwrap();
    assert_eq!(*imported.borrow(), [1, 2, 3]);
    assert!(manifest(&store).unwrap().retired);
    assert!(matches!(write(&ctx, 4), Err(Error::ServedByDurableObject)));
}

/// A move whose import failed lifts its freeze even while R2 refuses the lift for longer than
/// one store call's repeats (R2's one write a second per key, just after the move's own write
/// of the same key): the lift is repeated until the retry deadline, so the user is never left
/// frozen, every request refused as `migrating`.
#[test]
fn a_failed_move_lifts_its_freeze_through_a_run_of_429s() {
    let store = seeded();
    let clock = StepClock::stepping(1.0);
    write(&incremental(&store, &clock, None), 1).unwrap();
    let refused = std::cell::Cell::new(0);
    let limited = HookStore::new(store).with(Before(|call: &Call<'_>, _: &MemoryStore| {
        if matches!(call, Call::Put { key, .. } if *key == BASE)
            && call.metadata("route").is_none()
            && refused.get() < 12
        {
            refused.set(refused.get() + 1);
            Action::Fail(StoreError::new("put", StoreErrorKind::RateLimited, "429"))
        } else {
            Action::Proceed
        }
    }));
    let ctx = incremental(&limited, &clock, None);
    let err = block(migrate::to_durable_object(&ctx, &user(), async || {
        Err(Error::Internal {
            detail: "the import failed".into(),
        })
    }))
    .unwrap_err();
    assert!(matches!(err, Error::Internal { .. }), "{err:?}");
    assert_eq!(refused.get(), 12, "the lift met every 429");
    let store = limited.inner;
    assert_eq!(store.metadata(BASE).unwrap().get("route"), None);
    write(&incremental(&store, &clock, None), 2).unwrap();
    assert_eq!(hits(&current(&store)), [1, 2]);
}

// ---- Outside replacement ----

/// Something outside the worker replaces database.sqlite: the outside file wins, the worker's
/// deltas are kept under a conflict record (and never swept), and the response says so.
#[test]
fn outside_replacement_keeps_a_conflict_copy() {
    let store = seeded();
    let clock = StepClock::stepping(1.0);
    let ctx = incremental(&store, &clock, None);
    write(&ctx, 1).unwrap();
    write(&ctx, 2).unwrap();
    let worker_deltas = delta_keys(&store);
    let outside = apply_sql(
        &store.bytes(BASE).unwrap(),
        "INSERT INTO hits(id, note) VALUES (500, 'outside')",
    );
    store.insert(BASE, &outside, &[]);
    let report = write(&ctx, 3).unwrap();
    let s = storage(&report);
    let record = s["outside_replacement"]["record"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(s["outside_replacement"]["deltas_kept"], 2);
    assert_eq!(
        hits(&current(&store)),
        [3, 500],
        "outside file + the new write"
    );
    let kept: serde_json::Value = serde_json::from_slice(&store.bytes(&record).unwrap()).unwrap();
    let listed: Vec<String> = kept["replaced_manifest"]["deltas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["key"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, worker_deltas);
    // Compaction and the sweep keep the conflict copy's deltas, and so do a retirement to the
    // single layout and the next upgrade.
    block(storage::compact(&ctx, &user(), false)).unwrap();
    block(storage::compact(&ctx, &user(), true)).unwrap();
    write(&ctx, 4).unwrap();
    block(storage::compact(&ctx, &user(), false)).unwrap();
    assert_eq!(manifest(&store).unwrap().conflicts.len(), 1);
    for key in &worker_deltas {
        assert!(store.bytes(key).is_some(), "{key} was swept");
    }
}

/// Two committed writes, then database.sqlite replaced from outside (with row 500).
fn replaced_from_outside(store: &MemoryStore) {
    let clock = StepClock::stepping(1.0);
    let ctx = incremental(store, &clock, None);
    write(&ctx, 1).unwrap();
    write(&ctx, 2).unwrap();
    let outside = apply_sql(
        &store.bytes(BASE).unwrap(),
        "INSERT INTO hits(id, note) VALUES (500, 'outside')",
    );
    store.insert(BASE, &outside, &[]);
}

/// A load never writes, not even to adopt a database.sqlite replaced from outside: against a
/// store that refuses every put and delete it loads the outside file and reports the
/// replacement, and every stored object is byte-identical afterwards (the adoption is the save
/// step's commit).
#[test]
fn a_load_never_writes_even_when_it_finds_an_outside_replacement() {
    let store =
        HookStore::new(seeded()).with(Before(|call: &Call<'_>, _: &MemoryStore| {
            match call.operation() {
                Operation::Put | Operation::Delete => Action::Fail(StoreError::new(
                    call.operation().as_str(),
                    StoreErrorKind::Permanent,
                    "this store refuses every write",
                )),
                _ => Action::Proceed,
            }
        }));
    replaced_from_outside(&store.inner);
    let before = snapshot(&store.inner);
    let clock = StepClock::stepping(1.0);
    let ctx = incremental(&store, &clock, None);
    let mut loaded = block(load(&ctx, &user())).unwrap();
    assert_eq!(hits(&sqlite::export(&mut loaded.conn).unwrap()), [500]);
    let outside = loaded
        .outside
        .as_ref()
        .expect("the replacement is reported");
    assert_eq!(outside.deltas_kept, 2);
    assert!(
        loaded.adoption.is_some(),
        "the adoption is left to the save step"
    );
    // A read that saves nothing (`never`) loads it too, and writes nothing either.
    let (report, ()) = block(serve(
        &ctx,
        &user(),
        SaveMode::Never,
        &mut pipeline::ListTables,
    ))
    .unwrap();
    assert!(storage(&report)["outside_replacement"].is_object());
    assert_eq!(snapshot(&store.inner), before);
    assert!(
        store
            .inner
            .keys()
            .iter()
            .all(|k| !k.starts_with("a/conflicts/"))
    );
}

/// The adoption's commit is conditional on the manifest the load read: when another writer
/// adopted the file and committed first, this save is a lost race that writes nothing (its
/// conflict record is deleted again), runs again on the new state, and both writes are kept
/// beside the outside file, with one conflict record.
#[test]
fn an_adoption_is_committed_only_over_the_manifest_its_load_read() {
    let store = seeded();
    replaced_from_outside(&store);
    let clock = StepClock::stepping(1.0);
    let (ours, theirs) = (
        incremental(&store, &clock, None),
        Context {
            nonce: 7,
            ..incremental(&store, &clock, None)
        },
    );
    let loaded = block(load(&ours, &user())).unwrap();
    assert!(loaded.adoption.is_some());
    let manifest_read = manifest_bytes(&store).unwrap();
    write(&theirs, 3).unwrap();
    let mut queried = query(&ours, &user(), loaded, &mut insert(4)).unwrap();
    let after_theirs = snapshot(&store);
    assert_ne!(manifest_bytes(&store).unwrap(), manifest_read);
    let saved = block(save(&ours, &user(), &mut queried, SaveMode::Auto)).unwrap();
    assert_eq!(saved, Saved::Conflict);
    assert_eq!(
        snapshot(&store),
        after_theirs,
        "a lost adoption leaves nothing behind"
    );
    drop(queried);
    write(&ours, 4).unwrap();
    assert_eq!(hits(&current(&store)), [3, 4, 500]);
    let m = manifest(&store).unwrap();
    assert_eq!(m.conflicts.len(), 1);
    let records: Vec<String> = store
        .keys()
        .into_iter()
        .filter(|k| k.starts_with("a/conflicts/"))
        .collect();
    assert_eq!(records, [m.conflicts[0].record.clone()]);
}

/// A manifest that lists a base which is gone is an error that changes nothing.
#[test]
fn missing_base_is_refused_without_writing() {
    let store = seeded();
    let clock = StepClock::stepping(1.0);
    let ctx = incremental(&store, &clock, None);
    write(&ctx, 1).unwrap();
    store.remove(BASE);
    let keys = store.keys();
    assert!(matches!(write(&ctx, 2), Err(Error::CorruptDatabase(_))));
    assert_eq!(store.keys(), keys);
}

/// A damaged delta is refused (its checksum), not applied.
#[test]
fn damaged_delta_is_refused() {
    let store = seeded();
    let clock = StepClock::stepping(1.0);
    let ctx = incremental(&store, &clock, None);
    write(&ctx, 1).unwrap();
    let key = delta_keys(&store).remove(0);
    let mut bytes = store.bytes(&key).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    store.insert(&key, &bytes, &[]);
    assert!(matches!(write(&ctx, 2), Err(Error::CorruptDatabase(_))));
}

// ---- The fault suite ----

/// One worker's scenario: six writes, compaction whenever it is due, a sweep at the end.
/// Returns the writes acknowledged, and the ones whose outcome the worker could not know.
/// Each write is its own request, with its own nonce as in the worker (with one nonce for all,
/// a write whose delta put landed unacknowledged and the next write would share a delta key
/// and a write id under a frozen clock).
fn scenario<S: ObjectStore, C: Clock>(ctx: &Context<'_, S, C>, first: i64) -> (Vec<i64>, Vec<i64>) {
    let (mut acked, mut unknown) = (vec![], vec![]);
    for id in first..first + 6 {
        let request = Context {
            nonce: ctx.nonce ^ id as u64,
            ..*ctx
        };
        match write(&request, id) {
            Ok(report) => {
                acked.push(id);
                if storage(&report)["follow_up"] == "compact" {
                    let _ = block(storage::compact(ctx, &user(), false));
                }
            }
            Err(e) if !e.nothing_written() => unknown.push(id),
            Err(_) => {}
        }
    }
    let _ = block(storage::sweep(ctx, &user()));
    (acked, unknown)
}

/// After a fault: the database loads, passes integrity_check, holds every acknowledged write
/// and nothing unacknowledged (writes of unknown outcome may be either way).
fn check(store: &HookStore<'_>, acked: &[i64], unknown: &[i64], what: &str) -> Vec<i64> {
    let image = current(store);
    assert_eq!(integrity(&image), "ok", "{what}");
    let ids = hits(&image);
    for id in acked {
        assert!(
            ids.contains(id),
            "{what}: acknowledged write {id} lost; have {ids:?}"
        );
    }
    for id in &ids {
        assert!(
            acked.contains(id) || unknown.contains(id),
            "{what}: unacknowledged write {id} present"
        );
    }
    ids
}

fn faulty_seeded(plan: &FaultPlan) -> HookStore<'_> {
    HookStore::new(seeded()).with(plan)
}

/// The worker stops at every store call of the scenario (each get, delta put, manifest put,
/// compaction step, delete, list): the state stays loadable and correct, and a new worker
/// carries on from it (its sweep leaves no orphan behind).
#[test]
fn worker_stopping_at_any_step_loses_nothing() {
    let clock = StepClock::stepping(1.0);
    let probe = FaultPlan::new();
    probe.stop_after(Some(1_000_000));
    let cache = DbCache::new(1 << 26);
    scenario(
        &incremental(&faulty_seeded(&probe), &clock, Some(&cache)),
        1,
    );
    let calls = 1_000_000 - probe.calls_left().unwrap();
    assert!(calls > 30, "the scenario makes {calls} store calls");
    for stop in 0..=calls {
        let plan = FaultPlan::new();
        let store = faulty_seeded(&plan);
        let cache = DbCache::new(1 << 26);
        plan.stop_after(Some(stop));
        let (acked, unknown) = scenario(&incremental(&store, &clock, Some(&cache)), 1);
        let what = format!("stopped after {stop} calls");
        assert_eq!(plan.stops() > 0, stop < calls, "{what}: stopped or not");
        plan.stop_after(None);
        let before = check(&store, &acked, &unknown, &what);
        // A new worker: writes, compacts, sweeps.
        let next = incremental(&store, &clock, None);
        write(&next, 100).unwrap();
        block(storage::compact(&next, &user(), false)).unwrap();
        block(storage::sweep(&next, &user())).unwrap();
        let mut expected = before.clone();
        expected.push(100);
        let mut acked = acked;
        acked.push(100);
        assert_eq!(check(&store, &acked, &unknown, &what), expected, "{what}");
        let m = manifest(&store.inner).unwrap();
        for key in delta_keys(&store.inner) {
            assert!(
                m.deltas.iter().any(|d| d.key == key),
                "{what}: orphan {key} survived the sweep"
            );
        }
    }
}

/// Seeded plans of 429s, 5xx, lost answers and permanent failures on every kind of call,
/// including compaction's and the sweep's deletes and lists; every kind of fault is seen to
/// fire on every kind of call.
#[test]
fn seeded_fault_plans_keep_the_invariants() {
    let faults = [
        Fault::None,
        Fault::None,
        Fault::RateLimited,
        Fault::Unavailable,
        Fault::LostAnswer,
        Fault::Permanent,
    ];
    let mut fired = FaultTally::default();
    for seed in 0..60u64 {
        let mut rng = Rng::new(seed);
        let mut draw = |n| rng.picks(&faults, n);
        let plan = FaultPlan::new()
            .with(Operation::Get, &draw(12))
            .with(Operation::Head, &draw(10))
            .with(Operation::Put, &draw(16))
            .with(Operation::Delete, &draw(10))
            .with(Operation::List, &draw(4));
        let store = faulty_seeded(&plan);
        let clock = StepClock::frozen();
        let cache = DbCache::new(1 << 26);
        let ctx = Context {
            retry: pipeline::RetryPolicy {
                store_retries: 1,
                ..pipeline::RetryPolicy::default()
            },
            ..incremental(&store, &clock, Some(&cache))
        };
        let (acked, unknown) = scenario(&ctx, 1);
        fired.add(&plan, &format!("seed {seed}"));
        plan.clear();
        check(&store, &acked, &unknown, &format!("seed {seed}"));
    }
    fired.assert_reached(&Operation::ALL, &faults[2..]);
}

// ---- Both layouts are the same database ----

/// SQL run as a plain batch (so VACUUM and page-size changes, which `/query` refuses inside
/// its transaction, are exercised too).
struct Batch(String);

impl pipeline::Work for Batch {
    type Output = ();
    fn run(&mut self, conn: &mut rusqlite::Connection) -> Result<(), Error> {
        conn.execute_batch(&self.0)?;
        Ok(())
    }
}

/// Random write sequences give the same rows and the same exported file on both layouts
/// (the incremental one compacting along the way).
#[test]
fn both_layouts_store_the_same_database() {
    let menu = [
        "INSERT INTO hits(note) VALUES (hex(randomblob(40)))",
        "INSERT INTO hits(note) SELECT note || note FROM hits LIMIT 50",
        "INSERT INTO hits(note) VALUES (zeroblob(9000))",
        "UPDATE hits SET note = 'u' || id WHERE id % 3 = 0",
        "DELETE FROM hits WHERE id % 4 = 1",
        "CREATE INDEX IF NOT EXISTS hits_note ON hits(note)",
        "DROP INDEX IF EXISTS hits_note",
        "CREATE TABLE IF NOT EXISTS other(x); INSERT INTO other VALUES (1)",
        "VACUUM",
        "PRAGMA page_size = 1024; VACUUM",
        "UPDATE projects SET name = name || '!'",
    ];
    for seed in 0..12u64 {
        let mut rng = Rng::new(seed);
        let single_store = seeded();
        let inc_store = seeded();
        let clock = StepClock::stepping(1.0);
        let (c1, c2) = (DbCache::new(1 << 26), DbCache::new(1 << 26));
        let single = Context {
            layout: Layout::Single,
            ..incremental(&single_store, &clock, Some(&c1))
        };
        let inc = incremental(&inc_store, &clock, Some(&c2));
        for step in 0..14 {
            // randomblob is not repeatable: both sides get the same literal text instead.
            let text = menu[rng.index(menu.len())]
                .replace("hex(randomblob(40))", &format!("'r{seed}-{step}'"));
            for ctx in [&single, &inc] {
                let (report, ()) = block(serve(
                    ctx,
                    &user(),
                    SaveMode::Auto,
                    &mut Batch(text.clone()),
                ))
                .unwrap();
                if storage(&report)["follow_up"] == "compact" {
                    block(storage::compact(ctx, &user(), false)).unwrap();
                }
            }
        }
        assert!(manifest(&inc_store).is_some() && manifest(&single_store).is_none());
        let (a, b) = (current(&single_store), current(&inc_store));
        assert_eq!(
            workers_sqlite_poc::testing::row_counts(&a),
            workers_sqlite_poc::testing::row_counts(&b),
            "seed {seed}"
        );
        assert!(a == b, "seed {seed}: the exports differ");
        assert_eq!(integrity(&b), "ok");
    }
}

/// A load after an incremental write knows the user is stored as a manifest.
#[test]
fn layouts_report_what_they_are() {
    let store = seeded();
    let clock = StepClock::stepping(1.0);
    let report = write(&incremental(&store, &clock, None), 1).unwrap();
    let loaded = block(load(&incremental(&store, &clock, None), &user())).unwrap();
    assert!(matches!(loaded.stored, Stored::Incremental { .. }));
    assert_eq!(storage(&report)["layout"], "incremental");
}
