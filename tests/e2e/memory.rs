//! One image in memory, in the real runtime: bodies stream into SQLite's buffer and uploads
//! stream out in chunks, so concurrent requests of different sizes in one isolate never see a
//! torn or detached buffer, and a 20 MiB database stays in the version cache by default.

use serde_json::json;
use workers_sqlite_poc::fixtures;
use workers_sqlite_poc::testing::{open, row_counts};

use workers_sqlite_poc::config::Config;

use crate::harness::LocalWorker;

/// With the default vars (wrangler.toml), a 20 MiB database is kept open between requests:
/// the second request is a version-cache hit that downloads nothing.
#[test]
fn twenty_mib_database_is_a_cache_hit_by_default() {
    let big = fixtures::sized_database(20 * 1024 * 1024, 20).unwrap();
    let worker = LocalWorker::start(&[("big/database.sqlite", &big)]);
    let first = worker.get("/?user=big&save=auto");
    assert_eq!(first.status, 200, "{}", first.json);
    assert_eq!(first.json["cache"]["status"], "miss");
    let second = worker.get("/?user=big&save=auto");
    assert_eq!(
        second.json["cache"]["status"], "hit",
        "{}",
        second.json["cache"]
    );
    assert_eq!(second.json["db_info"]["size_bytes"], big.len());
}

/// Requests for databases of 1, 4 and 12 MiB run at once in one isolate, each reading and
/// writing its own database several times while the others grow wasm memory. Every answer is
/// right, and every stored object is a valid database holding exactly its own writes.
#[test]
fn concurrent_requests_of_different_sizes_share_an_isolate_safely() {
    let sizes_mib = [1usize, 4, 12];
    let images: Vec<Vec<u8>> = sizes_mib
        .iter()
        .map(|mib| fixtures::sized_database(mib * 1024 * 1024, *mib as u64).unwrap())
        .collect();
    let keys: Vec<String> = sizes_mib
        .iter()
        .map(|mib| format!("size{mib}/database.sqlite"))
        .collect();
    let seeds: Vec<(&str, &[u8])> = keys
        .iter()
        .zip(&images)
        .map(|(k, b)| (k.as_str(), b.as_slice()))
        .collect();
    // Cache off, so every request streams its whole database in and out.
    let worker = LocalWorker::start_with_vars(
        &seeds,
        &[("ALLOW_ANONYMOUS", "true"), ("CACHE_MAX_BYTES", "0")],
    );
    let rounds = 4;
    std::thread::scope(|scope| {
        for (i, mib) in sizes_mib.iter().enumerate() {
            let (worker, image) = (&worker, &images[i]);
            scope.spawn(move || {
                let user = format!("size{mib}");
                for round in 0..rounds {
                    let answer = worker.post_json(
                        &format!("/query?user={user}"),
                        &json!([
                            {"sql": "CREATE TABLE IF NOT EXISTS marks(round, size)"},
                            {"sql": "INSERT INTO marks VALUES (?, ?)", "params": [round, mib]},
                            {"sql": "SELECT count(*) FROM raw_clips"}
                        ]),
                        &[],
                    );
                    assert_eq!(answer.status, 200, "{user}: {}", answer.json);
                    let clips = open(image)
                        .query_row("SELECT count(*) FROM raw_clips", [], |r| r.get::<_, i64>(0))
                        .unwrap();
                    assert_eq!(answer.json["results"][2]["rows"][0][0], clips, "{user}");
                }
            });
        }
    });
    for (i, mib) in sizes_mib.iter().enumerate() {
        // The default, incremental layout: the whole database is what `/export` returns.
        let (status, _, stored) = worker.get_bytes(&format!("/export?user=size{mib}"));
        assert_eq!(status, 200, "{mib} MiB export");
        let conn = open(&stored);
        let ok: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok", "{mib} MiB");
        let marks: Vec<(i64, i64)> = conn
            .prepare("SELECT round, size FROM marks ORDER BY round")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let expected: Vec<(i64, i64)> = (0..rounds).map(|r| (r, *mib as i64)).collect();
        assert_eq!(marks, expected, "{mib} MiB holds exactly its own writes");
        let before = row_counts(&images[i]);
        let after = row_counts(&stored);
        assert_eq!(&after[..before.len()], &before[..], "{mib} MiB lost rows");
    }
}

/// The default configuration: 400 mixed requests at concurrency 16.
#[test]
fn soak_keeps_wasm_memory_under_the_budget() {
    let worker = crate::soak::start(&[]);
    let soak = crate::soak::run(&worker, 400, 16);
    let line = crate::soak::check(&worker, &soak, Config::default().memory_budget_bytes());
    eprintln!("soak: {line}");
    assert_eq!(
        soak.capacity_bytes,
        Config::default().admission_capacity_bytes()
    );
}

/// A small capacity (MAX_DB_BYTES 4 MiB, MAX_RESULT_BYTES 1 MiB: about 11 MB for all
/// requests' images, results and bodies together): 16 requests at once over 0.25–2.7 MB
/// databases cannot all hold their memory, so some wait, the gate never holds more than
/// its capacity, every answer is still 200 or a counted 503 with Retry-After, and wasm memory
/// stays under this configuration's budget (61 MB).
#[test]
fn requests_wait_for_memory_when_the_capacity_is_small() {
    let vars = [("MAX_DB_BYTES", "4194304"), ("MAX_RESULT_BYTES", "1048576")];
    let worker = crate::soak::start(&vars);
    let soak = crate::soak::run(&worker, 300, 16);
    let config = Config::from_lookup(|name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    })
    .unwrap();
    let line = crate::soak::check(&worker, &soak, config.memory_budget_bytes());
    eprintln!("soak (small capacity): {line}");
    assert_eq!(soak.capacity_bytes, config.admission_capacity_bytes());
    assert!(
        soak.waited > 0,
        "nobody waited: the gate did nothing. {line}"
    );
    assert!(
        soak.peak_reserved_bytes <= soak.capacity_bytes,
        "held {} past the capacity {}",
        soak.peak_reserved_bytes,
        soak.capacity_bytes
    );
}

/// Exports streamed out while writes commit, 600 at concurrency 16: each export's image goes
/// back to the cache when its last chunk is copied out, so wasm memory levels off. (The image
/// used to wait for the stream's last write and close, which may never settle once the
/// response is done: 86, 129, 166 MB after 200, 400, 600 requests.)
#[test]
fn exports_beside_writes_leave_nothing_behind() {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    let worker = crate::soak::start(&[]);
    let max = AtomicU64::new(0);
    let next = AtomicUsize::new(0);
    let mut marks = Vec::new();
    for round in 1..=3 {
        std::thread::scope(|scope| {
            for _ in 0..16 {
                scope.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= round * 200 {
                            return;
                        }
                        let user = format!("soak{}", i % crate::soak::USERS);
                        if i.is_multiple_of(2) {
                            let (status, _, _) = worker.get_bytes(&format!("/export?user={user}"));
                            assert_eq!(status, 200, "export {user}");
                        } else {
                            let answer = worker.post_json(
                                &format!("/query?user={user}"),
                                &json!([
                                    {"sql": "CREATE TABLE IF NOT EXISTS soak(id TEXT PRIMARY KEY)"},
                                    {"sql": "INSERT INTO soak(id) VALUES (?)", "params": [format!("e{i}")]},
                                ]),
                                &[],
                            );
                            assert_eq!(answer.status, 200, "{}", answer.json);
                            let m = answer.json["memory"]["wasm_memory_bytes"].as_u64().unwrap();
                            max.fetch_max(m, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        marks.push(max.load(Ordering::Relaxed));
    }
    eprintln!("wasm memory after 200, 400, 600 requests: {marks:?}");
    assert!(
        marks[2] <= marks[0] + 16 * 1024 * 1024,
        "wasm memory kept growing: {marks:?}"
    );
}
