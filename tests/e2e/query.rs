//! The query routes against the real runtime: `POST /query`, the libSQL protocol with the
//! published `@libsql/client`, per-user tokens, the guard rails, concurrent writers, and the
//! object-store contract run against local R2.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};
use workers_sqlite_poc::fixtures;

use crate::harness::{LocalWorker, now_s, row_counts, sha256, token};

fn count(bytes: &[u8], sql: &str) -> i64 {
    workers_sqlite_poc::testing::open(bytes)
        .query_row(sql, [], |r| r.get(0))
        .unwrap()
}

/// Insert, then select, through `POST /query`: the write is saved (the stored object has the
/// row), the answer is the usual report plus `results`, and every value type round-trips in
/// the documented encoding.
#[test]
fn insert_then_select() {
    let demo = fixtures::demo_database().unwrap();
    let worker = LocalWorker::start(&[("a/database.sqlite", &demo)]);
    let insert = worker.post_json(
        "/query?user=a",
        &json!([
            {"sql": "CREATE TABLE vals(i, big, r, t, b, n)"},
            {"sql": "INSERT INTO vals VALUES (?, ?, ?, ?, ?, ?)",
             "params": [42, {"integer": "9007199254740993"}, 1.5, "héllo", {"blob": "AAH+/w=="}, null]}
        ]),
        &[],
    );
    assert_eq!(insert.status, 200, "{}", insert.json);
    assert_eq!(insert.json["db_info"]["saved"], true);
    assert_eq!(insert.json["results"][1]["changes"], 1);
    assert!(insert.json["delay_analysis"]["save"]["ms"].is_u64());
    let stored = worker.object("a/database.sqlite").unwrap();
    assert_eq!(count(&stored, "SELECT count(*) FROM vals"), 1);

    let select = worker.post_json("/query?user=a", &json!({"sql": "SELECT * FROM vals"}), &[]);
    assert_eq!(select.status, 200, "{}", select.json);
    assert_eq!(
        select.json["results"][0]["rows"],
        json!([[42, {"integer": "9007199254740993"}, 1.5, "héllo", {"blob": "AAH+/w=="}, null]])
    );
    assert_eq!(
        select.json["results"][0]["columns"],
        json!(["i", "big", "r", "t", "b", "n"])
    );
    // A read changes nothing, so nothing is written: the object is the one the insert stored.
    assert_eq!(select.json["db_info"]["saved"], false);
    assert_eq!(select.json["delay_analysis"]["save"]["status"], "not_run");
    assert_eq!(worker.object("a/database.sqlite").unwrap(), stored);
    // The spec's GET keeps its behaviour.
    let get = worker.get("/?user=a");
    assert!(
        get.json["db_info"]["tables"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "vals")
    );
}

/// A batch that fails part-way answers 400 with the failing statement's index, and the stored
/// object is byte-identical.
#[test]
fn failing_batch_leaves_the_object_byte_identical() {
    let demo = fixtures::demo_database().unwrap();
    let worker = LocalWorker::start(&[("a/database.sqlite", &demo)]);
    let before = sha256(&worker.object("a/database.sqlite").unwrap());
    let answer = worker.post_json(
        "/query?user=a",
        &json!([{"sql": "DELETE FROM clip_tags"}, {"sql": "INSERT INTO nope VALUES (1)"}]),
        &[],
    );
    assert_eq!(answer.status, 400, "{}", answer.json);
    assert_eq!(answer.json["error"]["code"], "sql_error");
    assert_eq!(answer.json["error"]["statement"], 1);
    assert_eq!(sha256(&worker.object("a/database.sqlite").unwrap()), before);
    let bad = worker.send("POST", "/query?user=a", &[], b"not json");
    assert_eq!(
        (bad.status, bad.json["error"]["code"].as_str()),
        (400, Some("invalid_request"))
    );
}

/// Four clients insert into one user's database at once, retrying what the worker says is
/// retryable: every acknowledged insert is in the stored database at the end, exactly once.
#[test]
fn concurrent_writers_lose_no_acknowledged_insert() {
    let worker = LocalWorker::start(&[]);
    let created = worker.post_json(
        "/query?user=shared",
        &json!({"sql": "CREATE TABLE hits(id INTEGER PRIMARY KEY, client)"}),
        &[],
    );
    assert_eq!(created.status, 200, "{}", created.json);
    let acknowledged = AtomicU64::new(0);
    let statuses = Mutex::new(std::collections::BTreeMap::<u16, u32>::new());
    std::thread::scope(|scope| {
        for client in 0..4 {
            let (worker, acknowledged, statuses) = (&worker, &acknowledged, &statuses);
            scope.spawn(move || {
                for n in 0..12 {
                    let id = client * 1000 + n;
                    for _attempt in 0..20 {
                        let answer = worker.post_json(
                            "/query?user=shared",
                            &json!({"sql": "INSERT INTO hits VALUES (?, ?)", "params": [id, client]}),
                            &[],
                        );
                        *statuses.lock().unwrap().entry(answer.status).or_default() += 1;
                        if answer.status == 200 {
                            acknowledged.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        assert_eq!(answer.json["error"]["retryable"], true, "{}", answer.json);
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                }
            });
        }
    });
    eprintln!(
        "concurrent writers: statuses {:?}",
        statuses.lock().unwrap()
    );
    let stored = worker.object("shared/database.sqlite").unwrap();
    let acknowledged = acknowledged.load(Ordering::Relaxed);
    assert_eq!(acknowledged, 48, "some inserts never succeeded");
    assert_eq!(
        count(&stored, "SELECT count(*) FROM hits") as u64,
        acknowledged
    );
}

/// Per-user tokens: a user's token opens that user's database only (403 elsewhere); a
/// tampered or expired one is 401; the admin token opens any; the libSQL endpoint takes the
/// same token.
#[test]
fn token_scoping() {
    let secret = "e2e-token-secret";
    let worker = LocalWorker::start_with_vars(
        &[],
        &[("AUTH_TOKEN", "e2e-admin"), ("TOKEN_SECRET", secret)],
    );
    let now = now_s();
    let token_a = token(secret, "a", now + 600);
    let bearer = |t: &str| format!("Bearer {t}");
    let select = json!({"sql": "SELECT 1"});
    let own = worker.post_json(
        "/query?user=a",
        &select,
        &[("Authorization", &bearer(&token_a))],
    );
    assert_eq!(own.status, 200, "{}", own.json);
    let other = worker.post_json(
        "/query?user=b",
        &select,
        &[("Authorization", &bearer(&token_a))],
    );
    assert_eq!(
        (other.status, other.json["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    let other_get = worker.request_with("GET", "/?user=b", &[("Authorization", &bearer(&token_a))]);
    assert_eq!(other_get.status, 403);
    let expired = token(secret, "a", now - 1);
    let answer = worker.post_json(
        "/query?user=a",
        &select,
        &[("Authorization", &bearer(&expired))],
    );
    assert_eq!(answer.status, 401, "{}", answer.json);
    assert!(
        answer.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired")
    );
    let forged = token("wrong-secret", "a", now + 600);
    let answer = worker.post_json(
        "/query?user=a",
        &select,
        &[("Authorization", &bearer(&forged))],
    );
    assert_eq!(answer.status, 401);
    let admin = worker.post_json(
        "/query?user=b",
        &select,
        &[("Authorization", "Bearer e2e-admin")],
    );
    assert_eq!(admin.status, 200, "{}", admin.json);
    let pipeline =
        json!({"requests": [{"type": "execute", "stmt": {"sql": "SELECT 1"}}, {"type": "close"}]});
    let hrana = worker.post_json(
        "/db/a/v2/pipeline",
        &pipeline,
        &[("Authorization", &bearer(&token_a))],
    );
    assert_eq!(hrana.status, 200, "{}", hrana.json);
    let hrana_other = worker.post_json(
        "/db/b/v2/pipeline",
        &pipeline,
        &[("Authorization", &bearer(&token_a))],
    );
    assert_eq!(hrana_other.status, 403);
    // The libSQL client reads a top-level message from error answers.
    assert!(
        hrana_other.json["message"]
            .as_str()
            .unwrap()
            .contains("user a")
    );
    assert!(
        worker.object("b/database.sqlite").is_none(),
        "a refused request wrote"
    );
}

/// Each guard rail is its own 4xx JSON error, and the stored object stays byte-identical.
#[test]
fn guard_rails() {
    let demo = fixtures::demo_database().unwrap();
    let worker = LocalWorker::start_with_vars(
        &[("a/database.sqlite", &demo)],
        &[
            ("ALLOW_ANONYMOUS", "true"),
            ("QUERY_MAX_STEPS", "2000000"),
            ("MAX_REQUEST_BYTES", "4096"),
            ("MAX_STATEMENTS", "5"),
            ("MAX_RESULT_BYTES", "20000"),
        ],
    );
    let before = sha256(&worker.object("a/database.sqlite").unwrap());
    let delete_then = |sql: &str| json!([{"sql": "DELETE FROM clip_tags"}, {"sql": sql}]);
    let cases = [
        (
            delete_then("ATTACH 'other.db' AS other"),
            403,
            "statement_not_allowed",
        ),
        (delete_then("DETACH main"), 403, "statement_not_allowed"),
        (
            delete_then("VACUUM INTO 'copy.db'"),
            403,
            "statement_not_allowed",
        ),
        (
            delete_then("PRAGMA writable_schema = ON"),
            403,
            "statement_not_allowed",
        ),
        (
            delete_then("PRAGMA journal_mode = WAL"),
            403,
            "statement_not_allowed",
        ),
        (
            delete_then(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT max(x) FROM c",
            ),
            422,
            "cpu_budget_exceeded",
        ),
        (
            delete_then("SELECT zeroblob(30000)"),
            422,
            "result_too_large",
        ),
        (
            json!(vec![json!({"sql": "DELETE FROM clip_tags"}); 6]),
            413,
            "too_many_statements",
        ),
        (
            json!({"sql": format!("SELECT '{}'", "x".repeat(5000))}),
            413,
            "request_too_large",
        ),
    ];
    for (body, status, code) in cases {
        let answer = worker.post_json("/query?user=a", &body, &[]);
        assert_eq!(answer.status, status, "{code}: {}", answer.json);
        assert_eq!(answer.json["error"]["code"], code, "{}", answer.json);
        assert_eq!(
            sha256(&worker.object("a/database.sqlite").unwrap()),
            before,
            "{code}"
        );
    }
    // The Worker's SQLite is built without extension loading, so the function does not exist
    // there (natively the authorizer refuses it: see the unit tests); either way, nothing runs.
    let answer = worker.post_json(
        "/query?user=a",
        &delete_then("SELECT load_extension('x')"),
        &[],
    );
    assert_eq!(answer.status, 400, "{}", answer.json);
    assert!(
        answer.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no such function")
    );
    assert_eq!(sha256(&worker.object("a/database.sqlite").unwrap()), before);
}

/// The published `@libsql/client`, unchanged, against the libSQL endpoint: execute, batch,
/// every value type, a failing batch, an SQL error, column types, a read batch that refuses
/// writes, and interactive transactions committed and rolled back across requests. Its
/// writes are in the stored database afterwards (the default, incremental layout: read back
/// through `/export` with the same token).
#[test]
fn libsql_client_works_unchanged() {
    let secret = "e2e-libsql-secret";
    let worker = LocalWorker::start_with_vars(&[], &[("TOKEN_SECRET", secret)]);
    let now = now_s();
    let lib_token = token(secret, "lib", now + 600);
    // The client's protocol probe must not find a protobuf endpoint.
    assert_eq!(worker.get("/db/lib/v3-protobuf").status, 404);
    let seen = worker.run_json(
        "@libsql/client session",
        "node",
        &[
            "tests/e2e/libsql_client.mjs",
            &format!("{}/db/lib/", worker.base),
            &lib_token,
        ],
    );
    eprintln!("@libsql/client session: {seen}");
    assert_eq!(seen["values"]["big"], "9007199254740993");
    assert_eq!(seen["transaction"], "committed 3");
    assert_eq!(seen["read_batch"]["code"], "SQLITE_READONLY");
    let bearer = format!("Bearer {lib_token}");
    let (status, _, stored) =
        worker.get_bytes_with("/export?user=lib", &[("Authorization", &bearer)]);
    assert_eq!(status, 200);
    assert_eq!(row_counts(&stored), [("vals".to_owned(), 6)]);
}

/// drizzle-orm and kysely (`@libsql/kysely-libsql`) sessions over the published client:
/// schema, CRUD, a relational query, `db.transaction` committed and rolled back; the Python
/// clients (`libsql-client` 0.3.1 over Hrana v1, `libsql` over the cursor with its implicit
/// transactions committed and rolled back), every value type through both. Then Hrana
/// v1 (`/v1/execute`, `/v1/batch`, as `libsql-client` 0.3.1 sends them), sqld's replication
/// paths (501), the trailing-slash hint, and per-user tokens on every libSQL endpoint: 403
/// on another user's database, 401 when expired.
#[test]
fn orm_sessions_and_every_libsql_endpoint() {
    let secret = "e2e-orm-secret";
    let worker = LocalWorker::start_with_vars(&[], &[("TOKEN_SECRET", secret)]);
    let now = now_s();
    let mint = |user: &str, expires: u64| format!("Bearer {}", token(secret, user, expires));
    let orm_token = token(secret, "orm", now + 600);
    let seen = worker.run_json(
        "drizzle/kysely session",
        "node",
        &[
            "tests/e2e/orm_clients.mjs",
            &format!("{}/db/orm/", worker.base),
            &orm_token,
        ],
    );
    eprintln!("drizzle/kysely session: {seen}");
    assert_eq!(seen["kysely_pets"], json!(["Tommy", "Kit"]));

    let python = concat!(env!("CARGO_MANIFEST_DIR"), "/target/venv/bin/python");
    let py_token = token(secret, "py", now + 600);
    let seen = worker.run_json(
        "Python session",
        python,
        &[
            "tests/e2e/python_clients.py",
            &format!("{}/db/py/", worker.base),
            &py_token,
        ],
    );
    eprintln!("Python session: {seen}");
    assert_eq!(seen["libsql_committed"], 5);

    let own = mint("orm", now + 600);
    let v1 = |path: &str, body: Value, auth: &str| {
        worker.send(
            "POST",
            path,
            &[
                ("Authorization", auth),
                ("Content-Type", "application/json"),
            ],
            body.to_string().as_bytes(),
        )
    };
    let execute = json!({"stmt": {"sql": "SELECT name FROM authors WHERE id = ?",
                                   "args": [{"type": "integer", "value": "1"}]}});
    let answer = v1("/db/orm/v1/execute", execute.clone(), &own);
    assert_eq!(answer.status, 200, "{}", answer.json);
    assert_eq!(answer.json["result"]["rows"][0][0]["value"], "Ada");
    assert_eq!(answer.json["result"]["cols"][0]["decltype"], "TEXT");
    let batch = json!({"batch": {"steps": [
        {"stmt": {"sql": "INSERT INTO authors(name) VALUES ('v1')"}},
        {"condition": {"type": "ok", "step": 0}, "stmt": {"sql": "SELECT count(*) FROM authors"}}
    ]}});
    let answer = v1("/db/orm/v1/batch", batch, &own);
    assert_eq!(answer.status, 200, "{}", answer.json);
    assert_eq!(
        answer.json["result"]["step_results"][1]["rows"][0][0]["value"],
        "3"
    );
    let failed = v1(
        "/db/orm/v1/execute",
        json!({"stmt": {"sql": "SELECT nope"}}),
        &own,
    );
    assert_eq!(failed.status, 400);
    assert_eq!(failed.json["code"], "SQLITE_ERROR", "{}", failed.json);

    for path in [
        "/db/orm/v2/pipeline",
        "/db/orm/v3/pipeline",
        "/db/orm/v3/cursor",
        "/db/orm/v1/execute",
        "/db/orm/v1/batch",
    ] {
        let other = v1(path, execute.clone(), &mint("someone_else", now + 600));
        assert_eq!(other.status, 403, "{path}: {}", other.json);
        let expired = v1(path, execute.clone(), &mint("orm", now - 1));
        assert_eq!(expired.status, 401, "{path}: {}", expired.json);
    }
    let replica = v1("/db/orm/info", json!({}), &own);
    assert_eq!(replica.status, 501);
    assert_eq!(replica.json["code"], "REPLICATION_NOT_SUPPORTED");
    let no_slash = v1("/db/v2/pipeline", json!({"requests": []}), &own);
    assert_eq!(no_slash.status, 404);
    assert!(
        no_slash.json["message"]
            .as_str()
            .unwrap()
            .contains("trailing slash"),
        "{}",
        no_slash.json
    );
}

/// The `ObjectStore` contract body that unit tests run against the memory store, run here
/// against local R2 through the real binding.
#[test]
fn object_store_contract_holds_for_local_r2() {
    let worker =
        LocalWorker::start_with_vars(&[], &[("ALLOW_ANONYMOUS", "true"), ("SELF_TEST", "true")]);
    let answer = worker.request("POST", "/__self-test/store");
    assert_eq!(answer.status, 200, "{}", answer.json);
    assert_eq!(answer.json["success"], true, "{}", answer.json);
    let off = LocalWorker::start(&[]);
    assert_eq!(off.request("POST", "/__self-test/store").status, 404);
}

/// The same `/query` bodies on both routes: `POST /query` (a user in R2) and `POST /do/query`
/// (a user moved to their Durable Object) answer with the same results encoding and report
/// shape; each request is one transaction in the object too (a failing statement rolls back
/// the ones before it), and the object's refusals are the same guard-rail errors.
#[test]
fn both_query_routes_answer_alike() {
    let demo = fixtures::demo_database().unwrap();
    // A step budget of 5M (a tenth of the default) keeps the runaway statement below short.
    let worker = LocalWorker::start_with_vars(
        &[("a/database.sqlite", &demo), ("b/database.sqlite", &demo)],
        &[
            ("ALLOW_ANONYMOUS", "true"),
            ("LAYOUT", "single"),
            ("QUERY_MAX_STEPS", "5000000"),
        ],
    );
    // User b lives in their Durable Object; a stays in R2.
    let moved = worker.request("POST", "/migrate?user=b&to=durable_object");
    assert_eq!(moved.status, 200, "{}", moved.json);
    let write = json!([
        {"sql": "CREATE TABLE IF NOT EXISTS notes(id INTEGER PRIMARY KEY, body TEXT, data BLOB, score REAL)"},
        {"sql": "INSERT INTO notes(body, data, score) VALUES (?, ?, ?)", "params": ["first", {"blob": "AAEC"}, 2.5]},
    ]);
    let read = json!([
        {"sql": "SELECT id, body, data, score FROM notes ORDER BY id"},
        {"sql": "SELECT count(*) AS n FROM raw_clips"},
    ]);
    let mut answers = Vec::new();
    for (route, user) in [("/query", "a"), ("/do/query", "b")] {
        let w = worker.post_json(&format!("{route}?user={user}"), &write, &[]);
        assert_eq!(w.status, 200, "{route}: {}", w.json);
        assert_eq!(w.json["results"][1]["changes"], 1, "{route}: {}", w.json);
        assert_eq!(w.json["results"][1]["last_insert_rowid"], 1, "{route}");
        let r = worker.post_json(&format!("{route}?user={user}"), &read, &[]);
        assert_eq!(r.status, 200, "{route}: {}", r.json);
        for field in [
            "success",
            "delay_analysis",
            "timing_breakdown",
            "db_info",
            "clock",
        ] {
            assert!(r.json.get(field).is_some(), "{route} lacks {field}");
        }
        answers.push((r.json["route"].clone(), r.json["results"].clone()));
    }
    assert_eq!(answers[0].0, "r2");
    assert_eq!(answers[1].0, "durable_object");
    assert_eq!(
        answers[0].1, answers[1].1,
        "the two routes answered differently"
    );

    // All or nothing in the object too.
    let failing = json!([
        {"sql": "INSERT INTO notes(body) VALUES ('lost')"},
        {"sql": "INSERT INTO no_such_table VALUES (1)"},
    ]);
    let answer = worker.post_json("/do/query?user=b", &failing, &[]);
    assert_eq!(answer.status, 400, "{}", answer.json);
    assert_eq!(answer.json["error"]["code"], "sql_error");
    assert_eq!(answer.json["error"]["statement"], 1);
    let count = worker.post_json(
        "/do/query?user=b",
        &json!({"sql": "SELECT count(*) FROM notes"}),
        &[],
    );
    assert_eq!(
        count.json["results"][0]["rows"],
        json!([[1]]),
        "{}",
        count.json
    );

    // One executor: a runaway statement is stopped with the same error on both routes (the
    // object counts its budget in rows read, as its cursor reports them), and a constraint
    // failure maps to the same code.
    let runaway = json!({"sql": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 6000000) SELECT count(*) FROM c"});
    let unique = json!([
        {"sql": "CREATE TABLE IF NOT EXISTS u(k INTEGER PRIMARY KEY)"},
        {"sql": "INSERT INTO u VALUES (1), (1)"},
    ]);
    for (route, user) in [("/query", "a"), ("/do/query", "b")] {
        let answer = worker.post_json(&format!("{route}?user={user}"), &runaway, &[]);
        assert_eq!(
            (answer.status, answer.json["error"]["code"].as_str()),
            (422, Some("cpu_budget_exceeded")),
            "{route}: {}",
            answer.json
        );
        assert_eq!(answer.json["error"]["statement"], 0, "{route}");
        let answer = worker.post_json(&format!("{route}?user={user}"), &unique, &[]);
        assert_eq!(answer.status, 400, "{route}: {}", answer.json);
        assert_eq!(
            answer.json["error"]["sqlite_code"], "SQLITE_CONSTRAINT",
            "{route}: {}",
            answer.json
        );
    }

    let attach = worker.post_json("/do/query?user=b", &json!({"sql": "ATTACH 'x' AS y"}), &[]);
    assert_eq!(attach.status, 403, "{}", attach.json);
    assert_eq!(attach.json["error"]["code"], "statement_not_allowed");
    let big = worker.post_json(
        "/do/query?user=b",
        &json!({"sql": "SELECT ?", "params": [{"integer": "9007199254740993"}]}),
        &[],
    );
    assert_eq!(big.status, 422, "{}", big.json);
    assert_eq!(big.json["error"]["code"], "inexact_number");
    assert!(
        big.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("2^53")
    );
}
