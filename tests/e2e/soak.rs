//! The soak: many mixed requests at once over users of 0.25–2.7 MB in one isolate. Shared by
//! the bounded e2e tests in `memory.rs` and by `benches/soak.rs` (the 2,000-request run).
//!
//! Every answer is 200, or 503 with `Retry-After` (counted); the wasm memory every report
//! gives stays under the isolate's budget; every acknowledged write is stored and every
//! refused one is not.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};
use workers_sqlite_poc::fixtures;

use crate::harness::LocalWorker;

/// Users in the soak.
pub const USERS: usize = 20;

/// What a soak saw.
#[derive(Debug, Default)]
pub struct Soak {
    /// Requests by (kind, status).
    pub statuses: BTreeMap<(String, u16), u32>,
    /// 503s that carried `Retry-After`, by error code.
    pub retry_after: BTreeMap<String, u32>,
    /// Answers that were neither 200 nor a 503 with `Retry-After`: (kind, status, body).
    pub unexpected: Vec<(String, u16, String)>,
    /// The largest `memory.wasm_memory_bytes` any report gave.
    pub max_wasm_memory_bytes: u64,
    /// The largest `memory.admission.isolate.peak_reserved_bytes` any report gave.
    pub peak_reserved_bytes: u64,
    /// The admission capacity the reports gave.
    pub capacity_bytes: u64,
    /// Reports whose request waited for memory.
    pub waited: u32,
    /// Write ids acknowledged (200), per user.
    pub acknowledged: BTreeMap<String, BTreeSet<String>>,
    /// Write ids refused, per user.
    pub refused: BTreeMap<String, BTreeSet<String>>,
    /// Requests that got no HTTP answer from the worker, or one that is not its JSON (counted in
    /// `unexpected`). The harness talks to the worker's workerd directly, past wrangler's dev
    /// proxy, whose answers these used to be (`harness::LocalWorker::bypass_proxy`).
    pub transport_failures: u32,
    /// Wall time of the run.
    pub elapsed_ms: u128,
    /// workerd's resident memory before and after (KiB).
    pub rss_kib: (u64, u64),
}

/// The users' names and seeded databases: sizes spread evenly over 0.25–2.7 MB.
pub fn users() -> Vec<(String, Vec<u8>)> {
    (0..USERS)
        .map(|i| {
            let size = 250_000 + i * (2_700_000 - 250_000) / (USERS - 1);
            (
                format!("soak{i}"),
                fixtures::sized_database(size, 100 + i as u64).unwrap(),
            )
        })
        .collect()
}

/// Starts a worker (default layout and limits, plus `vars`) seeded with [`users`], reached past
/// wrangler's dev proxy ([`LocalWorker::past_proxy`]).
pub fn start(vars: &[(&str, &str)]) -> LocalWorker {
    let users = users();
    let keys: Vec<(String, &[u8])> = users
        .iter()
        .map(|(u, b)| (format!("{u}/database.sqlite"), b.as_slice()))
        .collect();
    let seeds: Vec<(&str, &[u8])> = keys.iter().map(|(k, b)| (k.as_str(), *b)).collect();
    let mut all = vec![("ALLOW_ANONYMOUS", "true")];
    all.extend_from_slice(vars);
    LocalWorker::start_with_vars(&seeds, &all).past_proxy()
}

/// Runs `total` mixed requests at `concurrency` against `worker`, cycling through the users:
/// the spec's request, `/query` reads (a whole table) and writes (one row with a unique id),
/// a libSQL pipeline write, and an export.
pub fn run(worker: &LocalWorker, total: usize, concurrency: usize) -> Soak {
    let soak = Mutex::new(Soak {
        rss_kib: (worker.runtime_memory_kib().1, 0),
        ..Soak::default()
    });
    let next = AtomicUsize::new(0);
    let started = std::time::Instant::now();
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        std::thread::scope(|scope| {
            for _ in 0..concurrency {
                scope.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= total {
                            return;
                        }
                        one(worker, i, &soak);
                    }
                });
            }
        });
    }));
    if let Err(panic) = ran {
        // What wrangler itself said (reloads, crashes), without the worker's own lines.
        let log = worker.log();
        let said = worker_log_lines(&log);
        eprintln!("wrangler's own log lines:\n{}", said.join("\n"));
        std::panic::resume_unwind(panic);
    }
    let mut soak = soak.into_inner().unwrap();
    soak.elapsed_ms = started.elapsed().as_millis();
    soak.rss_kib.1 = worker.runtime_memory_kib().1;
    soak
}

fn worker_log_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| {
            !l.trim().is_empty()
                && !l.contains("wrangler:info")
                && !l.contains("\"event\"")
                && !l.contains("\"action\"")
                && !l.contains("Environment Variable")
        })
        .collect()
}

fn one(worker: &LocalWorker, i: usize, soak: &Mutex<Soak>) {
    let user = format!("soak{}", i % USERS);
    let id = format!("w{i}");
    // An answer that is not ours (not JSON, or no answer at all) panics in
    // the harness: it is counted as unexpected, and the run goes on.
    let sent =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| send(worker, i, &user, &id)));
    let (kind, status, retry_after, body, write) = match sent {
        Ok(answer) => answer,
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            let mut s = soak.lock().unwrap();
            s.transport_failures += 1;
            s.unexpected.push(("transport".to_owned(), 0, what));
            // Its write may or may not have been stored: it is in neither list.
            return;
        }
    };
    record(soak, &user, kind, status, retry_after, &body, write);
}

type Sent = (&'static str, u16, Option<String>, Value, Option<String>);

fn send(worker: &LocalWorker, i: usize, user: &str, id: &str) -> Sent {
    let id = id.to_owned();
    match i % 5 {
        0 => {
            let a = worker.get(&format!("/?user={user}"));
            ("sync", a.status, a.retry_after, a.json, None)
        }
        1 => {
            let a = worker.post_json(
                &format!("/query?user={user}"),
                &json!({"sql": "SELECT * FROM raw_clips LIMIT 50"}),
                &[],
            );
            ("query_read", a.status, a.retry_after, a.json, None)
        }
        2 => {
            let a = worker.post_json(
                &format!("/query?user={user}"),
                &json!([
                    {"sql": "CREATE TABLE IF NOT EXISTS soak(id TEXT PRIMARY KEY)"},
                    {"sql": "INSERT INTO soak(id) VALUES (?)", "params": [id]},
                ]),
                &[],
            );
            ("query_write", a.status, a.retry_after, a.json, Some(id))
        }
        3 => {
            let body = json!({"requests": [
                {"type": "execute", "stmt": {"sql": "CREATE TABLE IF NOT EXISTS soak(id TEXT PRIMARY KEY)"}},
                {"type": "execute", "stmt": {"sql": "INSERT INTO soak(id) VALUES (?)", "args": [{"type": "text", "value": id}]}},
                {"type": "close"},
            ]});
            let a = worker.post_json(&format!("/db/{user}/v2/pipeline"), &body, &[]);
            // A statement error inside a pipeline is a 200 with an error result.
            let failed = a.json["results"]
                .as_array()
                .is_some_and(|r| r.iter().any(|x| x["type"] == "error"));
            let status = if a.status == 200 && failed {
                299
            } else {
                a.status
            };
            ("pipeline_write", status, a.retry_after, a.json, Some(id))
        }
        _ => {
            let (status, _, _) = worker.get_bytes(&format!("/export?user={user}"));
            ("export", status, None, Value::Null, None)
        }
    }
}

fn record(
    soak: &Mutex<Soak>,
    user: &str,
    kind: &str,
    status: u16,
    retry_after: Option<String>,
    body: &Value,
    write: Option<String>,
) {
    let user = user.to_owned();
    let mut s = soak.lock().unwrap();
    *s.statuses.entry((kind.to_owned(), status)).or_default() += 1;
    let report = if kind == "pipeline_write" {
        &body["report"]
    } else {
        body
    };
    if let Some(m) = report["memory"]["wasm_memory_bytes"].as_u64() {
        s.max_wasm_memory_bytes = s.max_wasm_memory_bytes.max(m);
    }
    let admission = &report["memory"]["admission"];
    if let Some(p) = admission["isolate"]["peak_reserved_bytes"].as_u64() {
        s.peak_reserved_bytes = s.peak_reserved_bytes.max(p);
    }
    if let Some(c) = admission["isolate"]["capacity_bytes"].as_u64() {
        s.capacity_bytes = c;
    }
    if admission["waited_ms"].as_f64().is_some_and(|w| w > 0.0) {
        s.waited += 1;
    }
    match status {
        200 => {
            if let Some(id) = write {
                s.acknowledged.entry(user).or_default().insert(id);
            }
        }
        503 if retry_after.is_some() => {
            let code = body["error"]["code"].as_str().unwrap_or("?").to_owned();
            *s.retry_after.entry(code).or_default() += 1;
            if let Some(id) = write {
                s.refused.entry(user).or_default().insert(id);
            }
        }
        _ => s
            .unexpected
            .push((kind.to_owned(), status, body.to_string())),
    }
}

/// The ids in each user's `soak` table, as the worker exports it.
pub fn stored_ids(worker: &LocalWorker) -> BTreeMap<String, BTreeSet<String>> {
    (0..USERS)
        .map(|i| {
            let user = format!("soak{i}");
            let (status, _, bytes) = worker.get_bytes(&format!("/export?user={user}"));
            assert_eq!(status, 200, "export {user}");
            let ids = workers_sqlite_poc::testing::open(&bytes)
                .prepare("SELECT id FROM soak")
                .and_then(|mut s| {
                    s.query_map([], |r| r.get::<_, String>(0))?
                        .collect::<Result<BTreeSet<_>, _>>()
                })
                .unwrap_or_default();
            (user, ids)
        })
        .collect()
}

/// Checks what every soak must show; returns a one-line summary.
pub fn check(worker: &LocalWorker, soak: &Soak, budget: u64) -> String {
    let line = summary(soak, budget);
    assert!(
        soak.unexpected.is_empty(),
        "answers other than 200 or 503 with Retry-After: {:?}",
        &soak.unexpected[..soak.unexpected.len().min(5)]
    );
    assert!(
        soak.max_wasm_memory_bytes > 0,
        "no report gave the wasm memory"
    );
    assert!(
        soak.max_wasm_memory_bytes < budget,
        "wasm memory {} reached the budget {budget}",
        soak.max_wasm_memory_bytes
    );
    let stored = stored_ids(worker);
    for (user, ids) in &soak.acknowledged {
        let missing: Vec<_> = ids.difference(&stored[user]).collect();
        assert!(
            missing.is_empty(),
            "{user}: acknowledged writes lost: {missing:?}"
        );
    }
    for (user, ids) in &soak.refused {
        let kept: Vec<_> = ids.intersection(&stored[user]).collect();
        assert!(kept.is_empty(), "{user}: refused writes stored: {kept:?}");
    }
    format!("{line}; every acknowledged write stored, no refused one")
}

/// What a soak saw, in one line (no checks).
pub fn summary(soak: &Soak, budget: u64) -> String {
    let acknowledged: usize = soak.acknowledged.values().map(BTreeSet::len).sum();
    format!(
        "{} requests in {} ms: {:?}; 503 with Retry-After: {:?}; transport failures: {}; max \
         wasm memory {} (budget {budget}); admission peak {} of {}; {} waited; \
         {acknowledged} writes acknowledged; workerd RSS {} -> {} KiB",
        soak.statuses.values().sum::<u32>() + soak.transport_failures,
        soak.elapsed_ms,
        soak.statuses,
        soak.retry_after,
        soak.transport_failures,
        soak.max_wasm_memory_bytes,
        soak.peak_reserved_bytes,
        soak.capacity_bytes,
        soak.waited,
        soak.rss_kib.0,
        soak.rss_kib.1,
    )
}
