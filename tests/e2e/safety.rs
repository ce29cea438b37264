//! Data safety against the real runtime: bad stored objects, oversize objects, access
//! control, concurrent writers and a bounded mixed load. Every case checks the stored bytes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use workers_sqlite_poc::fixtures;
use workers_sqlite_poc::testing::apply_sql;

use crate::harness::{LocalWorker, row_counts, sha256};

fn noise(len: usize, seed: u64) -> Vec<u8> {
    workers_sqlite_poc::testing::Rng::new(seed).bytes(len)
}

/// Damaged objects of every kind the issue lists, keyed by user id.
fn damaged_objects() -> Vec<(&'static str, Vec<u8>)> {
    let valid = fixtures::sized_database(64 * 1024, 3).unwrap();
    let mut wrong_magic = valid.clone();
    wrong_magic[..16].copy_from_slice(b"SQLite format 4\0");
    let mut bad_page_size = valid.clone();
    // 65536-byte pages cannot tile a 64 KiB + a few pages file.
    bad_page_size[16..18].copy_from_slice(&1u16.to_be_bytes());
    let mut more_pages = valid.clone();
    let claimed = u32::from_be_bytes(more_pages[28..32].try_into().unwrap()) * 2;
    more_pages[28..32].copy_from_slice(&claimed.to_be_bytes());
    // An encrypted-looking file: the header survives but every page's content is ciphertext.
    let mut encrypted = valid.clone();
    for (b, k) in encrypted[100..].iter_mut().zip(noise(valid.len(), 11)) {
        *b ^= k;
    }
    vec![
        ("random-bytes", noise(8192, 5)),
        ("truncated-half", valid[..valid.len() / 2].to_vec()),
        ("header-only", valid[..100].to_vec()),
        ("zero-bytes", Vec::new()),
        ("wrong-magic", wrong_magic),
        ("page-size-mismatch", bad_page_size),
        ("claims-more-pages", more_pages),
        ("encrypted-pages", encrypted),
    ]
}

fn key(user: &str) -> String {
    format!("{user}/database.sqlite")
}

/// Each damaged object is answered 422 `corrupt_database`, and is byte-for-byte unchanged.
#[test]
fn damaged_objects_are_refused_and_left_unchanged() {
    let objects = damaged_objects();
    let seeds: Vec<(String, &[u8])> = objects
        .iter()
        .map(|(u, b)| (key(u), b.as_slice()))
        .collect();
    let seeds: Vec<(&str, &[u8])> = seeds.iter().map(|(k, b)| (k.as_str(), *b)).collect();
    let worker = LocalWorker::start(&seeds);
    for (user, bytes) in &objects {
        let answer = worker.get(&format!("/?user={user}"));
        assert_eq!(answer.status, 422, "{user}: {}", answer.json);
        assert_eq!(answer.json["error"]["code"], "corrupt_database", "{user}");
        assert!(
            answer.json["error"]["message"]
                .as_str()
                .unwrap()
                .contains("unchanged")
        );
        let after = worker.object(&key(user)).expect("object still exists");
        assert_eq!(sha256(&after), sha256(bytes), "{user} was modified");
    }
    // The isolate is still healthy afterwards.
    assert_eq!(worker.get("/?user=healthy").status, 200);
}

/// A WAL-mode header loads; what is stored back is rollback mode with every row.
#[test]
fn wal_mode_database_loads_and_is_stored_in_rollback_mode() {
    let mut wal = fixtures::demo_database().unwrap();
    wal[18] = 2;
    wal[19] = 2;
    let worker = LocalWorker::start(&[("waluser/database.sqlite", &wal)]);
    let answer = worker.get("/?user=waluser");
    assert_eq!(answer.status, 200, "{}", answer.json);
    assert_eq!(answer.json["db_info"]["converted_from_wal"], true);
    let stored = worker.object("waluser/database.sqlite").unwrap();
    assert_eq!((stored[18], stored[19]), (1, 1));
    assert_eq!(
        row_counts(&stored),
        row_counts(&fixtures::demo_database().unwrap())
    );
}

/// Over MAX_DB_BYTES: 413 with advice, nothing downloaded into SQLite, nothing written.
#[test]
fn oversize_database_is_refused() {
    let big = fixtures::sized_database(100 * 1024, 4).unwrap();
    let worker = LocalWorker::start_with_vars(
        &[("big/database.sqlite", &big)],
        &[("ALLOW_ANONYMOUS", "true"), ("MAX_DB_BYTES", "65536")],
    );
    let answer = worker.get("/?user=big");
    assert_eq!(answer.status, 413, "{}", answer.json);
    assert_eq!(answer.json["error"]["code"], "database_too_large");
    let message = answer.json["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("archive") && message.contains("Durable Object"),
        "{message}"
    );
    assert_eq!(
        sha256(&worker.object("big/database.sqlite").unwrap()),
        sha256(&big)
    );
    // A small database still works under the same limit.
    assert_eq!(worker.get("/?user=small").status, 200);
}

/// With AUTH_TOKEN set, only the right bearer token gets through; with nothing configured the
/// worker refuses everything and says how to configure it.
#[test]
fn access_control_is_secure_by_default() {
    let token = "e2e-token-4b1d";
    let worker = LocalWorker::start_with_vars(&[], &[("AUTH_TOKEN", token)]);
    let none = worker.get("/?user=a");
    assert_eq!(none.status, 401, "{}", none.json);
    assert_eq!(none.json["error"]["code"], "unauthorized");
    let wrong = worker.request_with(
        "GET",
        "/?user=a",
        &[("Authorization", "Bearer e2e-token-4b1e")],
    );
    assert_eq!(wrong.status, 401);
    assert!(
        worker.object("a/database.sqlite").is_none(),
        "refused requests wrote"
    );
    let right = worker.request_with(
        "GET",
        "/?user=a",
        &[("Authorization", &format!("Bearer {token}"))],
    );
    assert_eq!(right.status, 200, "{}", right.json);
    drop(worker);

    let unconfigured = LocalWorker::start_with_vars(&[], &[]);
    let answer = unconfigured.get("/?user=a");
    assert_eq!(answer.status, 503, "{}", answer.json);
    assert_eq!(answer.json["error"]["code"], "auth_not_configured");
    let message = answer.json["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("AUTH_TOKEN") && message.contains("ALLOW_ANONYMOUS"),
        "{message}"
    );
    assert!(unconfigured.object("a/database.sqlite").is_none());
}

/// Concurrent requests run while another writer keeps adding tables to the same object
/// (through wrangler dev's local explorer API, which writes the running instance's R2 as an
/// outside writer would). Conditional puts mean no request ever writes back a copy that
/// predates a writer's change: every table the writer added is present at the end, and
/// requests answer only 200 or 503 (lost every race until the retry deadline).
#[test]
fn concurrent_writer_changes_are_never_lost() {
    let demo = fixtures::demo_database().unwrap();
    let worker = LocalWorker::start(&[("shared/database.sqlite", &demo)]);
    let done = AtomicBool::new(false);
    let statuses = Mutex::new(BTreeMap::<u16, u32>::new());
    let rounds = 6;

    std::thread::scope(|scope| {
        // Stops the clients even if the writer below panics, so the scope can end.
        let _stop = StopOnDrop(&done);
        for _ in 0..4 {
            scope.spawn(|| {
                let deadline = Instant::now() + Duration::from_secs(120);
                while !done.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let status = worker.get("/?user=shared").status;
                    *statuses.lock().unwrap().entry(status).or_default() += 1;
                }
            });
        }
        for round in 0..rounds {
            let next = apply_sql(
                &worker.object("shared/database.sqlite").unwrap(),
                &format!(
                    "CREATE TABLE writer_{round}(x); INSERT INTO writer_{round} VALUES ({round});"
                ),
            );
            worker.put_object("shared/database.sqlite", &next);
        }
        // Let the clients run over the last write too.
        std::thread::sleep(Duration::from_millis(500));
    });

    let statuses = statuses.into_inner().unwrap();
    eprintln!("concurrent writer: request statuses {statuses:?}");
    assert!(
        statuses.keys().all(|s| *s == 200 || *s == 503),
        "{statuses:?}"
    );
    assert!(statuses.get(&200).copied().unwrap_or(0) > 0, "{statuses:?}");
    let stored = worker.object("shared/database.sqlite").unwrap();
    let tables: Vec<String> = row_counts(&stored).into_iter().map(|(t, _)| t).collect();
    for round in 0..rounds {
        assert!(
            tables.contains(&format!("writer_{round}")),
            "writer_{round} lost: {tables:?}"
        );
    }
}

/// Sets the flag when dropped, including during a panic.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// 500 requests at concurrency 8, mixing valid, missing, corrupt and invalid users: no 5xx,
/// corrupt objects unchanged, and the worker still answers afterwards.
#[test]
fn bounded_mixed_load() {
    let demo = fixtures::demo_database().unwrap();
    let corrupt = damaged_objects();
    let mut seeds: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| (key(&format!("valid{i}")), demo.clone()))
        .collect();
    seeds.extend(corrupt.iter().map(|(u, b)| (key(u), b.clone())));
    let seed_refs: Vec<(&str, &[u8])> = seeds
        .iter()
        .map(|(k, b)| (k.as_str(), b.as_slice()))
        .collect();
    let worker = Arc::new(LocalWorker::start(&seed_refs));

    let total = 500;
    let concurrency = 8;
    let statuses = Arc::new(Mutex::new(BTreeMap::<(String, u16), u32>::new()));
    let started = Instant::now();
    let threads: Vec<_> = (0..concurrency)
        .map(|t| {
            let (worker, statuses) = (worker.clone(), statuses.clone());
            let corrupt_users: Vec<&'static str> = corrupt.iter().map(|(u, _)| *u).collect();
            std::thread::spawn(move || {
                for i in (t..total).step_by(concurrency) {
                    let (kind, path) = match i % 4 {
                        // Every fourth request, cycling through the four valid users.
                        0 => ("valid", format!("/?user=valid{}", (i / 4) % 4)),
                        1 => ("missing", format!("/?user=new-{i}")),
                        2 => (
                            "corrupt",
                            format!("/?user={}", corrupt_users[i % corrupt_users.len()]),
                        ),
                        _ => ("invalid", format!("/?user=..%2F{i}")),
                    };
                    let status = worker.get(&path).status;
                    *statuses
                        .lock()
                        .unwrap()
                        .entry((kind.to_owned(), status))
                        .or_default() += 1;
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let elapsed = started.elapsed();
    let statuses = statuses.lock().unwrap().clone();
    eprintln!("mixed load: {total} requests, concurrency {concurrency}, {elapsed:?}: {statuses:?}");

    let count: u32 = statuses.values().sum();
    assert_eq!(count as usize, total);
    for ((kind, status), n) in &statuses {
        let expected = match kind.as_str() {
            // One isolate: its write queue commits concurrent writes together, never refusing.
            "valid" => *status == 200,
            "missing" => *status == 200,
            "corrupt" => *status == 422,
            _ => *status == 400,
        };
        assert!(expected, "{n} {kind} requests answered {status}");
    }
    for (user, bytes) in &corrupt {
        assert_eq!(
            sha256(&worker.object(&key(user)).unwrap()),
            sha256(bytes),
            "{user} changed"
        );
    }
    for i in 0..4 {
        let stored = worker.object(&key(&format!("valid{i}"))).unwrap();
        assert_eq!(row_counts(&stored), row_counts(&demo));
    }
    assert_eq!(worker.get("/?user=valid0").status, 200);
}
