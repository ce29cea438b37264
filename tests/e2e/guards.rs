//! The guard rails between requests in the real runtime: memory bombs leave wasm memory within
//! the per-request budget and the isolate serving others, a cached connection carries no
//! state into the next request, and a database over `MAX_DB_BYTES` cannot grow but is never
//! locked out.

use serde_json::{Value, json};
use workers_sqlite_poc::exec::DEFAULT_MAX_RESULT_BYTES;
use workers_sqlite_poc::fixtures;
use workers_sqlite_poc::sqlite::SQLITE_HEAP_MAX_BYTES;
use workers_sqlite_poc::testing::{memory_bombs, open};

use crate::harness::LocalWorker;

const MIB: u64 = 1024 * 1024;

fn wasm_memory(answer: &Value) -> u64 {
    answer["report"]["memory"]["wasm_memory_bytes"]
        .as_u64()
        .or_else(|| answer["memory"]["wasm_memory_bytes"].as_u64())
        .unwrap_or_else(|| panic!("no memory in {answer}"))
}

fn hrana(sql: &str) -> Value {
    json!({"requests": [{"type": "execute", "stmt": {"sql": sql}}, {"type": "close"}]})
}

/// Each memory bomb, as `/query` and as a libSQL pipeline, in one isolate: after every one,
/// wasm memory (which never shrinks, so this is the peak so far) stays within what the first
/// ordinary request used plus one request's budget (SQLite's heap limit, the result at its
/// charged size, slack), and another user is still served.
#[test]
fn memory_bombs_stay_within_the_budget_and_others_are_served() {
    let worker = LocalWorker::start(&[]);
    let other = |tag: &str| {
        let answer = worker.post_json("/query?user=other", &json!({"sql": "SELECT 1"}), &[]);
        assert_eq!(answer.status, 200, "after {tag}: {}", answer.json);
        wasm_memory(&answer.json)
    };
    let baseline = other("nothing");
    let budget = baseline + SQLITE_HEAP_MAX_BYTES + 3 * DEFAULT_MAX_RESULT_BYTES + 4 * MIB;
    let bombs = memory_bombs();
    let mut seen = Vec::new();
    for sql in &bombs {
        let answer = worker.post_json("/query?user=bomber", &json!({"sql": sql}), &[]);
        assert!(
            answer.status == 200 || (400..500).contains(&answer.status),
            "{sql}: {} {}",
            answer.status,
            answer.json
        );
        let after_query = other(sql);
        let answer = worker.post_json("/db/bomber/v2/pipeline", &hrana(sql), &[]);
        assert!(
            answer.status == 200 || (400..500).contains(&answer.status),
            "{sql}: {} {}",
            answer.status,
            answer.json
        );
        let after_hrana = other(sql);
        seen.push(format!("{after_query:>10} {after_hrana:>10}  {sql:.70}"));
        assert!(
            after_hrana <= budget,
            "{sql}: wasm memory {after_hrana} > budget {budget}\n{}",
            seen.join("\n")
        );
    }
    eprintln!("baseline {baseline}, budget {budget}\n{}", seen.join("\n"));
}

/// State set on a cached connection in one request is gone in the next, in the real runtime's
/// version cache: TEMP tables and triggers, `PRAGMA query_only`, `last_insert_rowid`; a temp
/// blob does not stay parked in the isolate.
#[test]
fn cached_connections_carry_nothing_into_the_next_request() {
    let worker = LocalWorker::start(&[]);
    let post = |body: Value| {
        let answer = worker.post_json("/query?user=iso", &body, &[]);
        assert_eq!(answer.status, 200, "{body}: {}", answer.json);
        answer.json
    };
    post(json!({"sql": "CREATE TABLE t(id INTEGER PRIMARY KEY, v)"}));
    post(json!({"sql": "INSERT INTO t(v) VALUES (1)"}));
    post(json!([
        {"sql": "CREATE TEMP TABLE parked(b)"},
        {"sql": "INSERT INTO parked VALUES (zeroblob(4000000))"},
        {"sql": "CREATE TEMP TRIGGER eat AFTER INSERT ON t BEGIN DELETE FROM t; END"},
        {"sql": "PRAGMA query_only = 1"}
    ]));
    let next = post(json!([
        {"sql": "SELECT count(*) FROM temp.sqlite_master"},
        {"sql": "PRAGMA query_only"},
        {"sql": "SELECT 1"}
    ]));
    assert_eq!(next["cache"]["status"], "hit", "{next}");
    assert_eq!(next["results"][0]["rows"][0][0], 0, "{next}");
    assert_eq!(next["results"][1]["rows"][0][0], 0, "{next}");
    assert_eq!(next["results"][2]["last_insert_rowid"], 0, "{next}");
    assert_eq!(next["results"][2]["changes"], 0, "{next}");
    let insert = post(json!({"sql": "INSERT INTO t(v) VALUES (2)"}));
    assert_eq!(insert["results"][0]["changes"], 1);
    let count = post(json!({"sql": "SELECT count(*) FROM t"}));
    assert_eq!(
        count["results"][0]["rows"][0][0], 2,
        "a trigger survived: {count}"
    );
}

/// With `MAX_DB_BYTES` at 1 MiB: writes that would pass it are refused with 413 before
/// anything is stored; a database stored over it (by an outside writer) is served, exported,
/// shrunk by deletes and VACUUM, and moved to the Durable Object and back.
#[test]
fn size_limit_refuses_growth_but_never_locks_out() {
    let over = fixtures::sized_database(1100 * 1024, 8).unwrap();
    let worker = LocalWorker::start_with_vars(
        &[("over/database.sqlite", &over)],
        &[
            ("ALLOW_ANONYMOUS", "true"),
            ("LAYOUT", "single"),
            ("MAX_DB_BYTES", "1048576"),
        ],
    );
    let post =
        |user: &str, body: Value| worker.post_json(&format!("/query?user={user}"), &body, &[]);
    assert_eq!(
        post("grow", json!({"sql": "CREATE TABLE t(b)"})).status,
        200
    );
    let before = worker.object("grow/database.sqlite").unwrap();
    let refused = post(
        "grow",
        json!([0, 1, 2, 3].map(|_| json!({"sql": "INSERT INTO t VALUES (zeroblob(300000))"}))),
    );
    assert_eq!(refused.status, 413, "{}", refused.json);
    assert_eq!(refused.json["error"]["code"], "database_full");
    let refused = post(
        "grow",
        json!({"sql": "INSERT INTO t VALUES (zeroblob(40000000))"}),
    );
    assert_eq!(refused.status, 400, "{}", refused.json);
    assert_eq!(worker.object("grow/database.sqlite").unwrap(), before);

    // Over the limit already: readable, exportable, not growable, shrinkable.
    let read = post("over", json!({"sql": "SELECT count(*) FROM raw_clips"}));
    assert_eq!(read.status, 200, "{}", read.json);
    let (status, _, exported) = worker.get_bytes("/export?user=over");
    assert_eq!((status, exported.len()), (200, over.len()));
    let grow = post(
        "over",
        json!({"sql": "CREATE TABLE more AS SELECT * FROM raw_clips"}),
    );
    assert_eq!(grow.status, 413, "{}", grow.json);
    let shrink = post(
        "over",
        json!([
            {"sql": "DELETE FROM clip_tags WHERE clip_id % 2 = 0"},
            {"sql": "DELETE FROM raw_clips WHERE id % 2 = 0"}
        ]),
    );
    assert_eq!(shrink.status, 200, "{}", shrink.json);
    let vacuum = worker.post_json("/db/over/v2/pipeline", &hrana("VACUUM"), &[]);
    assert_eq!(vacuum.status, 200, "{}", vacuum.json);
    assert_eq!(vacuum.json["results"][0]["type"], "ok", "{}", vacuum.json);
    let shrunk = worker.object("over/database.sqlite").unwrap();
    assert!(shrunk.len() < 1024 * 1024, "{} bytes", shrunk.len());
    let ok: String = open(&shrunk)
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");

    // A second user over the limit moves to the Durable Object and back.
    worker.put_object("mover/database.sqlite", &over);
    let there = worker.request("POST", "/migrate?user=mover&to=durable_object");
    assert_eq!(there.status, 200, "{}", there.json);
    let back = worker.request("POST", "/migrate?user=mover&to=r2");
    assert_eq!(back.status, 200, "{}", back.json);
    let read = post("mover", json!({"sql": "SELECT count(*) FROM raw_clips"}));
    assert_eq!(read.status, 200, "{}", read.json);
}
