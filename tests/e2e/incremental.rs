//! The incremental layout against the real workerd and its local R2: concurrent writers while
//! compaction runs (in `waitUntil`) and readers read, an outside writer replacing
//! `database.sqlite`, and `GET /export` opened with SQLite.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use workers_sqlite_poc::fixtures;
use workers_sqlite_poc::testing::{apply_sql, open, row_counts};

use crate::harness::{LocalWorker, sha256};

/// Compaction every 4 deltas: the suite's settings, so a short run goes through every step.
/// (The sweep keeps its shortest grace, a minute: a shorter one could delete the delta of a
/// commit still in flight, and the config refuses it.)
const VARS: &[(&str, &str)] = &[
    ("ALLOW_ANONYMOUS", "true"),
    ("LAYOUT", "incremental"),
    ("COMPACT_AFTER_DELTAS", "4"),
    ("SWEEP_GRACE_MS", "60000"),
];

/// Compaction off: deltas stay pending.
const NO_COMPACTION: &[(&str, &str)] = &[
    ("ALLOW_ANONYMOUS", "true"),
    ("LAYOUT", "incremental"),
    ("COMPACT_AFTER_DELTAS", "1000"),
    ("COMPACT_DELTA_PERCENT", "100000"),
];

fn seeded(user: &str) -> (Vec<u8>, String) {
    let demo = fixtures::demo_database().unwrap();
    let image = apply_sql(
        &demo,
        "CREATE TABLE hits(id INTEGER PRIMARY KEY, client INTEGER)",
    );
    (image, format!("{user}/database.sqlite"))
}

fn insert(worker: &LocalWorker, user: &str, id: i64, client: i64) -> crate::harness::Answer {
    worker.post_json(
        &format!("/query?user={user}"),
        &json!({"sql": "INSERT INTO hits VALUES (?, ?)", "params": [id, client]}),
        &[],
    )
}

fn export(worker: &LocalWorker, user: &str) -> Vec<u8> {
    let (status, content_type, body) = worker.get_bytes(&format!("/export?user={user}"));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(content_type.as_deref(), Some("application/vnd.sqlite3"));
    body
}

fn ids(image: &[u8]) -> Vec<i64> {
    open(image)
        .prepare("SELECT id FROM hits ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn manifest(worker: &LocalWorker, user: &str) -> Value {
    worker.newest_manifest(user).unwrap()
}

/// Three writers and a reader on one incremental user, with compaction folding deltas in the
/// background: every acknowledged insert is in the export exactly once, the export passes
/// `integrity_check` and keeps the demo rows, each write uploaded a delta (not the database),
/// and compaction ran (the base moved on and the manifest stayed short).
#[test]
fn concurrent_writers_and_compaction_lose_nothing() {
    let (image, key) = seeded("inc");
    let worker = LocalWorker::start_with_vars(&[(&key, &image)], VARS);
    let acknowledged = Mutex::new(Vec::<i64>::new());
    let uploads = Mutex::new(Vec::<u64>::new());
    let reads = Mutex::new(0u32);
    let writers_done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let mut writers = vec![];
        for client in 0..3i64 {
            let (worker, acknowledged, uploads) = (&worker, &acknowledged, &uploads);
            writers.push(scope.spawn(move || {
                for n in 0..12 {
                    let id = client * 1000 + n;
                    for attempt in 0..50 {
                        let answer = insert(worker, "inc", id, client);
                        if answer.status == 200 {
                            acknowledged.lock().unwrap().push(id);
                            let storage = &answer.json["storage"];
                            assert_eq!(storage["layout"], "incremental", "{}", answer.json);
                            uploads
                                .lock()
                                .unwrap()
                                .push(storage["bytes_uploaded"].as_u64().unwrap());
                            break;
                        }
                        assert_eq!(answer.json["error"]["retryable"], true, "{}", answer.json);
                        assert!(attempt < 49, "insert {id} never landed");
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }));
        }
        let (worker, reads, done) = (&worker, &reads, &writers_done);
        scope.spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let answer = worker.get("/?user=inc&save=auto");
                assert_eq!(answer.status, 200, "{}", answer.json);
                *reads.lock().unwrap() += 1;
            }
        });
        for w in writers {
            w.join().unwrap();
        }
        writers_done.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let mut acknowledged = acknowledged.into_inner().unwrap();
    acknowledged.sort_unstable();
    assert_eq!(acknowledged.len(), 36);
    // Compaction runs after responses; give the last one time to finish.
    let deadline = Instant::now() + Duration::from_secs(20);
    while manifest(&worker, "inc")["deltas"].as_array().unwrap().len() >= 4
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let exported = export(&worker, "inc");
    assert_eq!(
        ids(&exported),
        acknowledged,
        "an insert was lost or doubled"
    );
    let ok: String = open(&exported)
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    let demo_tables = |image: &[u8]| {
        row_counts(image)
            .into_iter()
            .filter(|(t, _)| t != "hits")
            .collect::<Vec<_>>()
    };
    assert_eq!(demo_tables(&exported), demo_tables(&image));
    let m = manifest(&worker, "inc");
    assert!(
        m["base"]["seq"].as_u64().unwrap() > 0,
        "compaction never ran: {m}"
    );
    assert!(m["deltas"].as_array().unwrap().len() < 4, "{m}");
    let base = worker.object(&key).unwrap();
    assert!(ids(&base).len() > 30, "the base holds the folded writes");
    let max_upload = uploads.lock().unwrap().iter().copied().max().unwrap();
    assert!(
        max_upload < image.len() as u64 / 2,
        "a write uploaded {max_upload} bytes of a {}-byte database",
        image.len()
    );
    eprintln!(
        "36 writes, {} reads; largest upload {max_upload} bytes; manifest {m}",
        reads.lock().unwrap()
    );
}

/// Another backend replaces `database.sqlite` behind the manifest: the next request adopts
/// the outside file, keeps the worker's deltas under a conflict record, and says so.
#[test]
fn outside_writer_replacing_the_base_is_detected() {
    let (image, key) = seeded("out");
    // No compaction in this test: the worker's deltas must still be pending when the outside
    // writer strikes.
    let worker = LocalWorker::start_with_vars(&[(&key, &image)], NO_COMPACTION);
    for id in [1, 2] {
        assert_eq!(insert(&worker, "out", id, 0).status, 200);
    }
    let deltas: Vec<String> = manifest(&worker, "out")["deltas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["key"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(deltas.len(), 2);
    // The outside writer's file: the original plus its own row (it never saw 1 and 2).
    let outside = apply_sql(&image, "INSERT INTO hits VALUES (900, 9)");
    worker.put_object(&key, &outside);
    let answer = insert(&worker, "out", 3, 0);
    assert_eq!(answer.status, 200, "{}", answer.json);
    let replaced = &answer.json["storage"]["outside_replacement"];
    assert_eq!(replaced["deltas_kept"], 2, "{}", answer.json);
    let record = replaced["record"].as_str().unwrap();
    let kept: Value = serde_json::from_slice(&worker.object(record).unwrap()).unwrap();
    assert_eq!(
        kept["replaced_manifest"]["deltas"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    for key in &deltas {
        assert!(worker.object(key).is_some(), "{key} was not kept");
    }
    assert_eq!(ids(&export(&worker, "out")), [3, 900]);
}

/// `GET /export` is the same complete file in both layouts, and is refused for a user with no
/// database; the Durable Object's import copies the same current database.
#[test]
fn export_streams_the_current_database() {
    let (image, key) = seeded("ex");
    let worker = LocalWorker::start_with_vars(&[(&key, &image)], NO_COMPACTION);
    assert_eq!(
        sha256(&export(&worker, "ex")),
        sha256(&image),
        "single layout: the object itself"
    );
    for id in 1..=3 {
        assert_eq!(insert(&worker, "ex", id, 0).status, 200);
    }
    let exported = export(&worker, "ex");
    assert_eq!(ids(&exported), [1, 2, 3]);
    assert_ne!(
        sha256(&worker.object(&key).unwrap()),
        sha256(&exported),
        "the base alone is older (no compaction ran)"
    );
    let (status, _, _) = worker.get_bytes("/export?user=nobody");
    assert_eq!(status, 404);
    // A move to the Durable Object copies the current database, not the older base.
    let moved = worker.request("POST", "/migrate?user=ex&to=durable_object");
    assert_eq!(moved.status, 200, "{}", moved.json);
    let counted = worker.post_json(
        "/do/query?user=ex",
        &json!({"sql": "SELECT count(*) FROM hits"}),
        &[],
    );
    assert_eq!(
        counted.json["results"][0]["rows"][0][0], 3,
        "{}",
        counted.json
    );
}

/// The spec's request on the default configuration and on the single layout: after `GET
/// /?user=a`, `a/database.sqlite` is the current database (a `/query` write made before it is
/// in the file) and carries a new, larger `db-version`, the one the report gives; the save
/// timing measured that write.
#[test]
fn spec_request_writes_the_current_database_in_both_layouts() {
    let (image, key) = seeded("a");
    for layout in ["incremental", "single"] {
        // The incremental run uses wrangler.toml's defaults: no LAYOUT var at all.
        let vars: &[(&str, &str)] = if layout == "single" {
            &[("ALLOW_ANONYMOUS", "true"), ("LAYOUT", "single")]
        } else {
            &[("ALLOW_ANONYMOUS", "true")]
        };
        let worker = LocalWorker::start_with_vars(&[(&key, &image)], vars);
        let version = |w: &LocalWorker| -> u64 {
            w.object_metadata(&key, "db-version")
                .expect("database.sqlite has a db-version")
                .parse()
                .unwrap()
        };
        let first = worker.get("/?user=a");
        assert_eq!(first.status, 200, "{layout}: {}", first.json);
        let v1 = version(&worker);
        assert_eq!(
            first.json["db_info"]["db_version"],
            v1.to_string(),
            "{layout}"
        );
        let inserted = insert(&worker, "a", 1, 7);
        assert_eq!(inserted.status, 200, "{layout}: {}", inserted.json);
        assert_eq!(inserted.json["storage"]["layout"], layout);
        let second = worker.get("/?user=a");
        assert_eq!(second.status, 200, "{layout}: {}", second.json);
        let v2 = version(&worker);
        assert!(v2 > v1, "{layout}: db-version {v1} -> {v2}");
        assert_eq!(
            second.json["db_info"]["db_version"],
            v2.to_string(),
            "{layout}"
        );
        let stored = worker.object(&key).unwrap();
        assert_eq!(
            ids(&stored),
            [1],
            "{layout}: the /query write is in the file"
        );
        assert_eq!(
            stored,
            export(&worker, "a"),
            "{layout}: the file is the current database"
        );
        assert_eq!(
            second.json["db_info"]["size_bytes"],
            stored.len(),
            "{layout}"
        );
        let save = &second.json["timing_breakdown"]["save"];
        assert!(
            save["upload_ms"].as_f64().unwrap() > 0.0,
            "{layout}: {save}"
        );
        assert_ne!(second.json["delay_analysis"]["save"]["status"], "not_run");
        if layout == "incremental" {
            assert_eq!(
                second.json["storage"]["deltas_pending"], 0,
                "{}",
                second.json
            );
            let m = manifest(&worker, "a");
            assert_eq!(m["deltas"], json!([]), "{m}");
        }
    }
}
