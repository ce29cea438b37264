//! Moving a user between R2 and their Durable Object under load: writes that arrive during a
//! move are refused with a retryable error or land, never lost; every response says which
//! route served it; the round trip R2 → Durable Object → R2 keeps every row.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::json;
use workers_sqlite_poc::fixtures;
use workers_sqlite_poc::testing::{open, row_counts};

use crate::harness::{Answer, LocalWorker, sha256};

/// Three clients insert into one user while the user moves to their Durable Object and back.
/// Every acknowledged insert is in the final R2 object exactly once, the demo tables keep
/// every row, and requests were answered by both routes.
#[test]
fn migration_under_concurrent_writes_loses_nothing() {
    migrate_under_writes("single");
}

/// The same with the incremental layout: the move first folds the user's deltas into one
/// frozen object, and writes that commit meanwhile are folded too or refused, never lost.
#[test]
fn migration_of_an_incremental_user_under_concurrent_writes_loses_nothing() {
    migrate_under_writes("incremental");
}

fn migrate_under_writes(layout: &str) {
    let demo = fixtures::demo_database().unwrap();
    let worker = LocalWorker::start_with_vars(
        &[("mover/database.sqlite", &demo)],
        &[("ALLOW_ANONYMOUS", "true"), ("LAYOUT", layout)],
    );
    let created = worker.post_json(
        "/query?user=mover",
        &json!({"sql": "CREATE TABLE hits(id INTEGER PRIMARY KEY, client INTEGER)"}),
        &[],
    );
    assert_eq!(created.status, 200, "{}", created.json);
    let acknowledged = Mutex::new(Vec::<i64>::new());
    let routes = Mutex::new(BTreeMap::<String, u32>::new());
    let statuses = Mutex::new(BTreeMap::<u16, u32>::new());
    let (to_do, to_r2) = std::thread::scope(|scope| {
        for client in 0..3i64 {
            let (worker, acknowledged, routes, statuses) =
                (&worker, &acknowledged, &routes, &statuses);
            scope.spawn(move || {
                for n in 0..30 {
                    let id = client * 1000 + n;
                    for _ in 0..100 {
                        let answer = worker.post_json(
                            "/query?user=mover",
                            &json!({"sql": "INSERT INTO hits VALUES (?, ?)", "params": [id, client]}),
                            &[],
                        );
                        *statuses.lock().unwrap().entry(answer.status).or_default() += 1;
                        if answer.status == 200 {
                            acknowledged.lock().unwrap().push(id);
                            let route = answer.json["route"].as_str().unwrap().to_owned();
                            *routes.lock().unwrap().entry(route).or_default() += 1;
                            break;
                        }
                        assert_eq!(answer.json["error"]["retryable"], true, "{}", answer.json);
                        std::thread::sleep(Duration::from_millis(30));
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_millis(400));
        let to_do = worker.request("POST", "/migrate?user=mover&to=durable_object");
        std::thread::sleep(Duration::from_millis(800));
        let to_r2 = worker.request("POST", "/migrate?user=mover&to=r2");
        (to_do, to_r2)
    });
    eprintln!("move to the Durable Object: {}", to_do.json);
    eprintln!("move back to R2: {}", to_r2.json);
    eprintln!(
        "writers: statuses {:?}, served by {:?}",
        statuses.lock().unwrap(),
        routes.lock().unwrap()
    );
    assert_eq!(to_do.status, 200, "{}", to_do.json);
    assert_eq!(to_do.json["moved"]["route"], "durable_object");
    assert!(
        to_do.json["moved"]["r2_object"]["age_ms"].is_u64(),
        "{}",
        to_do.json
    );
    assert_eq!(to_r2.status, 200, "{}", to_r2.json);
    assert_eq!(to_r2.json["route"], "r2");

    let mut acknowledged = acknowledged.into_inner().unwrap();
    acknowledged.sort_unstable();
    assert_eq!(acknowledged.len(), 90, "every insert eventually succeeded");
    // The current database whatever the layout (incremental writers after the move back
    // add deltas again).
    let (status, _, stored) = worker.get_bytes("/export?user=mover");
    assert_eq!(status, 200);
    let conn = open(&stored);
    let ids: Vec<i64> = conn
        .prepare("SELECT id FROM hits ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        ids, acknowledged,
        "an acknowledged insert was lost or doubled"
    );
    let before = row_counts(&demo);
    let after = row_counts(&stored);
    assert_eq!(
        &after[..before.len()],
        &before[..],
        "the round trip lost rows"
    );
    let routes = routes.into_inner().unwrap();
    assert!(routes.get("r2").copied().unwrap_or(0) > 0, "{routes:?}");
    // Back on R2: the spec's request is served there again.
    assert_eq!(worker.get("/?user=mover").json["route"], "r2");
}

/// While a user lives in their Durable Object, the spec's request and `/query` are served
/// there (the response says so), the libSQL endpoint says why it is not, and the R2 object is
/// kept as it was at the move.
#[test]
fn a_moved_user_is_served_by_the_durable_object() {
    let demo = fixtures::demo_database().unwrap();
    let worker = LocalWorker::start(&[("m/database.sqlite", &demo)]);
    let moved = worker.request("POST", "/migrate?user=m&to=durable_object");
    assert_eq!(moved.status, 200, "{}", moved.json);
    let get = worker.get("/?user=m");
    assert_eq!(get.status, 200, "{}", get.json);
    assert_eq!(get.json["route"], "durable_object");
    let insert = worker.post_json("/query?user=m", &json!({"sql": "INSERT INTO projects(name, created_at, settings) VALUES ('in the object', 0, '{}')"}), &[]);
    assert_eq!(insert.status, 200, "{}", insert.json);
    assert_eq!(insert.json["route"], "durable_object");
    assert_eq!(
        worker.object("m/database.sqlite").unwrap(),
        demo,
        "R2 kept the object as it was"
    );
    let hrana = worker.post_json(
        "/db/m/v2/pipeline",
        &json!({"requests": [{"type": "execute", "stmt": {"sql": "SELECT 1"}}]}),
        &[],
    );
    assert_eq!(hrana.status, 409, "{}", hrana.json);
    assert_eq!(hrana.json["error"]["code"], "served_by_durable_object");
    // Refusals leave the stored object byte-identical.
    let again = worker.request("POST", "/migrate?user=m&to=durable_object");
    assert_eq!(again.status, 409);
    let bad_target = worker.request("POST", "/migrate?user=m&to=elsewhere");
    assert_eq!(bad_target.status, 400);
    assert_eq!(
        sha256(&worker.object("m/database.sqlite").unwrap()),
        sha256(&demo)
    );
    let back = worker.request("POST", "/do/export?user=m");
    assert_eq!(back.status, 200, "{}", back.json);
    let stored = worker.object("m/database.sqlite").unwrap();
    let projects: i64 = open(&stored)
        .query_row(
            "SELECT count(*) FROM projects WHERE name = 'in the object'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(projects, 1, "the write made in the object came back to R2");
    let bad = worker.request("POST", "/migrate?user=m&to=elsewhere");
    assert_eq!(
        (bad.status, bad.json["error"]["code"].as_str()),
        (400, Some("invalid_parameter"))
    );
    let never = worker.request("POST", "/do/export?user=never-imported");
    assert_eq!(never.status, 404, "{}", never.json);
}

/// `AUTO_MIGRATE=true`: once a user's trend recommends `migrate_to_durable_object` (here the
/// thresholds are set so low that every sync is critical), their next request moves them and
/// is served by the Durable Object; with the var off (the default) nothing moves.
#[test]
fn auto_migrate_moves_a_user_whose_trend_says_so() {
    let demo = fixtures::demo_database().unwrap();
    let low = [
        ("SYNC_TIME_OPTIMAL_MS", "0"),
        ("SYNC_TIME_ACCEPTABLE_MS", "1"),
        ("SYNC_TIME_WARNING_MS", "2"),
        ("SYNC_TIME_CRITICAL_MS", "3"),
    ];
    let mut on = vec![("ALLOW_ANONYMOUS", "true"), ("AUTO_MIGRATE", "true")];
    on.extend(low);
    let worker = LocalWorker::start_with_vars(&[("auto/database.sqlite", &demo)], &on);
    let mut routes = Vec::new();
    for _ in 0..5 {
        let answer = worker.get("/?user=auto");
        assert_eq!(answer.status, 200, "{}", answer.json);
        routes.push(answer.json["route"].as_str().unwrap().to_owned());
    }
    eprintln!("AUTO_MIGRATE routes: {routes:?}");
    assert_eq!(routes[0], "r2");
    assert_eq!(routes.last().unwrap(), "durable_object", "{routes:?}");
    let stored = worker.object("auto/database.sqlite").unwrap();
    assert_eq!(
        row_counts(&stored),
        row_counts(&demo),
        "the R2 object is kept"
    );

    let mut off = vec![("ALLOW_ANONYMOUS", "true")];
    off.extend(low);
    let worker = LocalWorker::start_with_vars(&[("auto/database.sqlite", &demo)], &off);
    for _ in 0..5 {
        assert_eq!(worker.get("/?user=auto").json["route"], "r2");
    }
}

/// A user whose database has no tables yet moves to their Durable Object and back like any
/// other: the object knows it holds the user by its import, not by finding tables.
#[test]
fn an_empty_database_moves_and_comes_back() {
    let worker = LocalWorker::start(&[]);
    assert_eq!(worker.get("/?user=empty").status, 200);
    let moved = worker.request("POST", "/migrate?user=empty&to=durable_object");
    assert_eq!(moved.status, 200, "{}", moved.json);
    let there = worker.get("/?user=empty");
    assert_eq!(there.status, 200, "{}", there.json);
    assert_eq!(there.json["route"], "durable_object");
    assert_eq!(there.json["db_info"]["tables"], json!([]));
    let back = worker.request("POST", "/migrate?user=empty&to=r2");
    assert_eq!(back.status, 200, "{}", back.json);
    assert_eq!(worker.get("/?user=empty").json["route"], "r2");
    assert_eq!(
        worker.get("/do?user=never-imported").status,
        404,
        "a user never imported is still not found there"
    );
}

/// Every step of a move is checked against where the user is, on the real Durable Object and
/// R2 (one worker, one user per case):
/// 1. moved there, written there, moved back, written in R2 (`after-back`): a second move
///    back is refused and the write stays;
/// 2. an import of a user who lives in the object is refused and the object's write stays;
/// 3. an import with nothing frozen is refused, so the R2 writes that follow stay, and the
///    export after them is refused (no false outside replacement).
#[test]
fn moves_are_checked_at_every_step() {
    let demo = fixtures::demo_database().unwrap();
    let worker = LocalWorker::start(&[
        ("one/database.sqlite", &demo),
        ("two/database.sqlite", &demo),
        ("three/database.sqlite", &demo),
    ]);
    let q = |user: &str, sql: &str| {
        let answer = worker.post_json(&format!("/query?user={user}"), &json!({"sql": sql}), &[]);
        assert_eq!(answer.status, 200, "{user}: {sql}: {}", answer.json);
        answer
    };
    let rows = |user: &str| -> Vec<String> {
        let (status, _, bytes) = worker.get_bytes(&format!("/export?user={user}"));
        assert_eq!(status, 200);
        open(&bytes)
            .prepare("SELECT v FROM t ORDER BY rowid")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let refused = |answer: &Answer, status: u16, code: &str| {
        assert_eq!(
            (answer.status, answer.json["error"]["code"].as_str()),
            (status, Some(code)),
            "{}",
            answer.json
        );
    };
    for user in ["one", "two", "three"] {
        q(user, "CREATE TABLE t(v TEXT)");
        q(user, "INSERT INTO t VALUES ('first')");
    }

    // 1.
    let moved = worker.request("POST", "/migrate?user=one&to=durable_object");
    assert_eq!(moved.status, 200, "{}", moved.json);
    let there = q("one", "INSERT INTO t VALUES ('in the object')");
    assert_eq!(there.json["route"], "durable_object");
    let back = worker.request("POST", "/migrate?user=one&to=r2");
    assert_eq!(back.status, 200, "{}", back.json);
    let after = q("one", "INSERT INTO t VALUES ('after-back')");
    assert_eq!(after.json["route"], "r2");
    let stored = worker.object("one/database.sqlite");
    refused(
        &worker.request("POST", "/migrate?user=one&to=r2"),
        409,
        "move_out_of_order",
    );
    refused(
        &worker.request("POST", "/do/export?user=one"),
        409,
        "move_out_of_order",
    );
    assert_eq!(worker.object("one/database.sqlite"), stored, "R2 untouched");
    assert_eq!(rows("one"), ["first", "in the object", "after-back"]);

    // 2.
    let moved = worker.request("POST", "/migrate?user=two&to=durable_object");
    assert_eq!(moved.status, 200, "{}", moved.json);
    q("two", "INSERT INTO t VALUES ('kept in the object')");
    refused(
        &worker.request("POST", "/do/import?user=two"),
        409,
        "move_out_of_order",
    );
    let read = q("two", "SELECT v FROM t ORDER BY rowid");
    assert_eq!(read.json["route"], "durable_object");
    assert_eq!(
        read.json["results"][0]["rows"],
        json!([["first"], ["kept in the object"]])
    );

    // 3.
    refused(
        &worker.request("POST", "/do/import?user=three"),
        409,
        "move_out_of_order",
    );
    for v in ["r2 write 1", "r2 write 2"] {
        let w = q("three", &format!("INSERT INTO t VALUES ('{v}')"));
        assert_eq!(w.json["route"], "r2");
    }
    refused(
        &worker.request("POST", "/do/export?user=three"),
        404,
        "user_not_found",
    );
    let sync = worker.get("/?user=three");
    assert_eq!(sync.status, 200, "{}", sync.json);
    assert!(
        sync.json["storage"]["outside_replacement"].is_null(),
        "{}",
        sync.json
    );
    assert_eq!(rows("three"), ["first", "r2 write 1", "r2 write 2"]);
}

/// A move carries every table, rowid and typed value, or is refused:
/// 4. a table the object cannot take (`_cf_mine`, a name Durable Object storage reserves) is
///    refused with the list and the R2 object left as it was; `allow_loss=true` moves the rest
///    and names what it dropped; the README's `notes.big` (beyond 2^53) moves exactly;
/// 5. a rowid table without an INTEGER PRIMARY KEY keeps rowid 3, a REAL 3.0 stays REAL;
/// 6. the object's route refuses integers it cannot carry exactly, as parameters and as
///    results (`INSERT INTO n VALUES (9007199254740993)` then `SELECT` is a 4xx, never
///    9007199254740992.0), and the way back stores them exactly.
#[test]
fn moves_carry_every_value_or_refuse() {
    let image = workers_sqlite_poc::testing::apply_sql(
        &fixtures::demo_database().unwrap(),
        "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT, big INTEGER);
         INSERT INTO notes(body, big) VALUES ('first clip reviewed', 9007199254740993);
         CREATE TABLE _cf_mine(x); INSERT INTO _cf_mine VALUES ('mine');
         CREATE TABLE kept(x); INSERT INTO kept VALUES ('a'), ('b'), ('c');
         DELETE FROM kept WHERE x <> 'c';
         CREATE TABLE r(v); INSERT INTO r VALUES (3.0), (3);",
    );
    let worker = LocalWorker::start(&[("four/database.sqlite", &image)]);
    let q = |body: serde_json::Value| worker.post_json("/query?user=four", &body, &[]);

    // 4.
    let refused = worker.request("POST", "/migrate?user=four&to=durable_object");
    assert_eq!(refused.status, 422, "{}", refused.json);
    assert_eq!(refused.json["error"]["code"], "would_lose_data");
    let lost = refused.json["error"]["lost"].as_array().unwrap();
    assert_eq!(lost.len(), 1, "{}", refused.json);
    assert!(
        lost[0].as_str().unwrap().starts_with("_cf_mine"),
        "{lost:?}"
    );
    assert_eq!(
        sha256(&worker.object("four/database.sqlite").unwrap()),
        sha256(&image),
        "the source is left as it was"
    );
    assert_eq!(worker.get("/?user=four&save=never").json["route"], "r2");
    let moved = worker.request(
        "POST",
        "/migrate?user=four&to=durable_object&allow_loss=true",
    );
    assert_eq!(moved.status, 200, "{}", moved.json);
    let dropped = &moved.json["moved"]["import"]["dropped"];
    assert_eq!(dropped.as_array().unwrap().len(), 1, "{dropped}");
    assert!(
        dropped[0].as_str().unwrap().starts_with("_cf_mine"),
        "{dropped}"
    );

    // 5.
    let kept = q(json!([
        {"sql": "SELECT rowid, x FROM kept"},
        {"sql": "SELECT typeof(v) FROM r ORDER BY rowid"},
    ]));
    assert_eq!(kept.status, 200, "{}", kept.json);
    assert_eq!(kept.json["route"], "durable_object");
    assert_eq!(kept.json["results"][0]["rows"], json!([[3, "c"]]));
    assert_eq!(
        kept.json["results"][1]["rows"],
        json!([["real"], ["integer"]])
    );

    // 6.
    let inexact = |answer: Answer| {
        assert_eq!(answer.status, 422, "{}", answer.json);
        assert_eq!(
            answer.json["error"]["code"], "inexact_number",
            "{}",
            answer.json
        );
    };
    inexact(q(json!({"sql": "SELECT big FROM notes"})));
    let exact = q(json!({"sql": "SELECT CAST(big AS TEXT) FROM notes"}));
    assert_eq!(
        exact.json["results"][0]["rows"],
        json!([["9007199254740993"]])
    );
    let created = q(json!([
        {"sql": "CREATE TABLE n(v)"},
        {"sql": "INSERT INTO n VALUES (9007199254740993)"},
    ]));
    assert_eq!(created.status, 200, "{}", created.json);
    inexact(q(json!({"sql": "SELECT v FROM n"})));
    inexact(q(
        json!({"sql": "SELECT ?", "params": [{"integer": "9007199254740995"}]}),
    ));

    let back = worker.request("POST", "/migrate?user=four&to=r2");
    assert_eq!(back.status, 200, "{}", back.json);
    let (status, _, stored) = worker.get_bytes("/export?user=four");
    assert_eq!(status, 200);
    let conn = open(&stored);
    let text = |sql: &str| -> String { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(
        text("SELECT typeof(big) || ' ' || big FROM notes"),
        "integer 9007199254740993"
    );
    assert_eq!(
        text("SELECT typeof(v) || ' ' || v FROM n"),
        "integer 9007199254740993"
    );
    assert_eq!(text("SELECT rowid || ' ' || x FROM kept"), "3 c");
    assert_eq!(
        text("SELECT group_concat(typeof(v) || ' ' || quote(v), ', ') FROM r"),
        "real 3.0, integer 3"
    );
    let cf: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = '_cf_mine'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(cf, 0, "dropped as the answer said");
}
