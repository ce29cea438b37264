//! End-to-end tests against the real `workerd` (via `wrangler dev`) and its local R2.
//!
//! Run with `make e2e` (needs `make setup` and the release bundle). Each test starts its own
//! worker with a private persisted R2 directory and stops it when done.

mod clients;
mod guards;
mod harness;
mod incremental;
mod memory;
mod migrate;
mod model;
mod query;
mod queue;
mod safety;
mod soak;
mod websocket;

use harness::{LocalWorker, row_counts};
use serde_json::Value;
use workers_sqlite_poc::fixtures;

/// Asserts every field of the spec's contract (and our additions) is present with its type.
fn assert_contract(json: &Value) {
    let num = |path: &str| {
        let v = json
            .pointer(path)
            .unwrap_or_else(|| panic!("missing {path} in {json}"));
        assert!(v.is_number(), "{path} is not a number in {json}");
        v.as_f64().unwrap()
    };
    assert_eq!(json["success"], true, "{json}");
    assert!(json["cold_start"].is_boolean(), "{json}");
    for phase in ["load", "save"] {
        let ms = json
            .pointer(&format!("/delay_analysis/{phase}/ms"))
            .unwrap();
        assert!(
            ms.is_u64(),
            "delay_analysis.{phase}.ms must be a whole number: {json}"
        );
        for field in ["status", "action"] {
            assert!(json["delay_analysis"][phase][field].is_string(), "{json}");
        }
    }
    for t in ["optimal_ms", "acceptable_ms", "warning_ms", "critical_ms"] {
        num(&format!("/delay_analysis/thresholds/{t}"));
    }
    for f in ["total_ms", "wasm_init_ms", "download_ms", "parse_ms"] {
        assert!(num(&format!("/timing_breakdown/load/{f}")) >= 0.0);
    }
    num("/timing_breakdown/query_ms");
    for f in ["total_ms", "serialize_ms", "upload_ms"] {
        assert!(num(&format!("/timing_breakdown/save/{f}")) >= 0.0);
    }
    let size_bytes = num("/db_info/size_bytes");
    let size_kb = num("/db_info/size_kb");
    assert_eq!(
        size_kb,
        (size_bytes / 1024.0 * 100.0).round() / 100.0,
        "{json}"
    );
    assert!(json["db_info"]["tables"].is_array(), "{json}");
    assert!(
        json["db_info"]["db_version"].is_string() || json["db_info"]["saved"] == false,
        "{json}"
    );
    assert!(json["cache"]["status"].is_string(), "{json}");
    assert!(json["clock"]["unmeasured"].is_array(), "{json}");
}

fn tables(json: &Value) -> Vec<String> {
    serde_json::from_value(json["db_info"]["tables"].clone()).unwrap()
}

fn version(json: &Value, field: &str) -> Option<u64> {
    json["db_info"][field]
        .as_str()
        .map(|v| v.parse().expect("numeric db-version"))
}

/// The spec's main scenario: user `a` has a database; the worker lists its tables, writes it
/// back with a new db-version, and the stored object still opens with every row.
#[test]
fn existing_database_round_trips_through_r2() {
    let demo = fixtures::demo_database().unwrap();
    let worker = LocalWorker::start(&[("a/database.sqlite", &demo)]);

    let first = worker.get("/?user=a");
    assert_eq!(first.status, 200, "{}", first.json);
    assert_contract(&first.json);
    assert_eq!(first.json["cold_start"], true);
    assert_eq!(tables(&first.json), ["projects", "raw_clips", "clip_tags"]);
    assert_eq!(first.json["db_info"]["size_bytes"], demo.len());
    assert_eq!(first.json["db_info"]["new_database"], false);

    let stored = worker
        .object("a/database.sqlite")
        .expect("object still exists");
    assert_eq!(row_counts(&stored), row_counts(&demo));

    // The version written is the one the next request reads back from R2's metadata.
    let second = worker.get("/?user=a");
    assert_eq!(second.json["cold_start"], false);
    assert_eq!(
        version(&second.json, "loaded_db_version"),
        version(&first.json, "db_version")
    );
}

/// A user with no object gets a new empty database, which is created in R2 and loads next time.
#[test]
fn missing_user_creates_an_empty_database() {
    let worker = LocalWorker::start(&[]);
    assert!(worker.object("newcomer/database.sqlite").is_none());

    let first = worker.get("/?user=newcomer");
    assert_eq!(first.status, 200, "{}", first.json);
    assert_contract(&first.json);
    assert_eq!(first.json["db_info"]["new_database"], true);
    assert!(tables(&first.json).is_empty());
    assert!(first.json["db_info"]["loaded_db_version"].is_null());

    let stored = worker
        .object("newcomer/database.sqlite")
        .expect("object was created");
    assert!(row_counts(&stored).is_empty());

    let second = worker.get("/?user=newcomer");
    assert_eq!(second.json["db_info"]["new_database"], false);

    // No user parameter means the spec's default user, `test`.
    let default_user = worker.get("/");
    assert_eq!(default_user.status, 200);
    assert!(worker.object("test/database.sqlite").is_some());
}

/// Ten sequential requests (the spec's `for i in {1..10}` loop): each reads what the previous
/// one wrote, versions strictly increase, only the first is a cold start, rows survive.
#[test]
fn ten_sequential_requests() {
    let demo = fixtures::demo_database().unwrap();
    let worker = LocalWorker::start(&[("a/database.sqlite", &demo)]);
    let mut previous: Option<u64> = None;
    for i in 0..10 {
        let answer = worker.get("/?user=a");
        assert_eq!(answer.status, 200, "request {i}: {}", answer.json);
        assert_contract(&answer.json);
        assert_eq!(answer.json["cold_start"], i == 0, "request {i}");
        let written = version(&answer.json, "db_version").unwrap();
        if let Some(prev) = previous {
            assert_eq!(
                version(&answer.json, "loaded_db_version"),
                Some(prev),
                "request {i}"
            );
            assert!(written > prev, "request {i}: {written} <= {prev}");
        }
        previous = Some(written);
        let trend = &answer.json["trend"];
        assert_eq!(trend["window"], 10);
        assert_eq!(trend["samples_ms"].as_array().unwrap().len(), i + 1);
        assert_eq!(trend["recommendation"], "none");
    }
    let stored = worker.object("a/database.sqlite").unwrap();
    assert_eq!(row_counts(&stored), row_counts(&demo));
}

/// Requests that are not the documented route are JSON errors that touch no object.
#[test]
fn bad_requests_are_json_errors() {
    let worker = LocalWorker::start(&[]);
    let cases = [
        ("GET", "/?user=", 400, "invalid_user"),
        ("GET", "/?user=..%2Fx", 400, "invalid_user"),
        ("GET", "/?user=a%2Fb", 400, "invalid_user"),
        ("GET", "/?user=a%00b", 400, "invalid_user"),
        (
            "GET",
            &format!("/?user={}", "x".repeat(2000)),
            400,
            "invalid_user",
        ),
        ("GET", "/elsewhere?user=a", 404, "not_found"),
        ("POST", "/?user=a", 405, "method_not_allowed"),
        ("DELETE", "/?user=a", 405, "method_not_allowed"),
    ];
    for (method, path, status, code) in cases {
        let answer = worker.request(method, path);
        assert_eq!(answer.status, status, "{method} {path}: {}", answer.json);
        assert_eq!(answer.json["success"], false);
        assert_eq!(answer.json["error"]["code"], code, "{method} {path}");
        if status == 405 {
            assert_eq!(answer.allow.as_deref(), Some("GET"));
        }
    }
    for key in [
        "a/database.sqlite",
        "x/database.sqlite",
        "test/database.sqlite",
    ] {
        assert!(
            worker.object(key).is_none(),
            "{key} was created by a refused request"
        );
    }
}

/// The smoke script, as a user would run it against a deployed worker, passes locally.
#[test]
fn smoke_script_passes() {
    let demo = fixtures::demo_database().unwrap();
    let worker = LocalWorker::start(&[("a/database.sqlite", &demo)]);
    let output = std::process::Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/smoke.sh"))
        .arg(&worker.base)
        .env("SMOKE_USER", "a")
        .env("EXPECT_TABLES", "projects raw_clips clip_tags")
        .output()
        .expect("run smoke.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "smoke failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("0 failed"), "{stdout}");
}

/// The version cache in the real runtime: R2's conditional get confirms an unchanged object
/// without sending it (hit); an outside write is noticed (stale) and its change is served.
#[test]
fn version_cache_uses_conditional_gets() {
    let demo = fixtures::demo_database().unwrap();
    let worker = LocalWorker::start(&[("a/database.sqlite", &demo)]);
    assert_eq!(worker.get("/?user=a").json["cache"]["status"], "miss");
    let hit = worker.get("/?user=a");
    assert_eq!(hit.json["cache"]["status"], "hit", "{}", hit.json);
    assert_eq!(tables(&hit.json), ["projects", "raw_clips", "clip_tags"]);

    let changed = workers_sqlite_poc::testing::apply_sql(
        &worker.object("a/database.sqlite").unwrap(),
        "CREATE TABLE added_elsewhere(x)",
    );
    worker.put_object("a/database.sqlite", &changed);

    let stale = worker.get("/?user=a");
    assert_eq!(stale.json["cache"]["status"], "stale", "{}", stale.json);
    assert!(tables(&stale.json).contains(&"added_elsewhere".to_owned()));
    assert_eq!(worker.get("/?user=a").json["cache"]["status"], "hit");
}

/// `save=never` and `save=auto` leave the stored object byte-for-byte alone; a bad value is 400.
#[test]
fn save_modes_in_the_runtime() {
    let demo = fixtures::demo_database().unwrap();
    let worker = LocalWorker::start(&[("a/database.sqlite", &demo)]);
    for mode in ["never", "auto"] {
        let answer = worker.get(&format!("/?user=a&save={mode}"));
        assert_eq!(answer.status, 200, "{}", answer.json);
        assert_eq!(answer.json["db_info"]["saved"], false);
        assert_eq!(answer.json["db_info"]["save_mode"], mode);
        assert_eq!(
            worker.object("a/database.sqlite").unwrap(),
            demo,
            "save={mode} wrote"
        );
    }
    let bad = worker.get("/?user=a&save=sometimes");
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json["error"]["code"], "invalid_parameter");
    let always = worker.get("/?user=a&save=always");
    assert_eq!(always.json["db_info"]["saved"], true);
}

/// Thresholds come from wrangler vars and the JSON echoes the ones in force.
#[test]
fn thresholds_are_configurable() {
    let worker = LocalWorker::start_with_vars(
        &[],
        &[
            ("ALLOW_ANONYMOUS", "true"),
            ("SYNC_TIME_OPTIMAL_MS", "1"),
            ("SYNC_TIME_ACCEPTABLE_MS", "2"),
            ("SYNC_TIME_WARNING_MS", "3"),
            ("SYNC_TIME_CRITICAL_MS", "4"),
            ("SYNC_TIME_WINDOW", "5"),
        ],
    );
    let answer = worker.get("/?user=a");
    assert_eq!(answer.status, 200, "{}", answer.json);
    assert_eq!(
        answer.json["delay_analysis"]["thresholds"],
        serde_json::json!({"optimal_ms": 1, "acceptable_ms": 2, "warning_ms": 3, "critical_ms": 4})
    );
    assert_eq!(answer.json["trend"]["window"], 5);
    let bad = LocalWorker::start_with_vars(
        &[],
        &[("ALLOW_ANONYMOUS", "true"), ("SYNC_TIME_WARNING_MS", "1")],
    );
    let answer = bad.get("/?user=a");
    assert_eq!(answer.status, 500);
    assert_eq!(answer.json["error"]["code"], "misconfigured");
}

/// The Durable Object alternative: moving a realistic database there copies every row of
/// every ordinary table and verifies each table by content (rowids and typed values), moving
/// it there again after a move back replaces rather than duplicates, and `GET /do` lists the
/// same tables as the R2 route did.
#[test]
fn durable_object_import_round_trips_every_row() {
    let realistic = fixtures::sized_database(300 * 1024, 21).unwrap();
    let worker = LocalWorker::start(&[("a/database.sqlite", &realistic)]);
    let expected = row_counts(&realistic);
    let from_r2 = worker.get("/?user=a");
    assert_eq!(from_r2.json["route"], "r2");
    let mut digests = Vec::new();
    for attempt in 0..2 {
        let moved = worker.request("POST", "/migrate?user=a&to=durable_object");
        assert_eq!(moved.status, 200, "attempt {attempt}: {}", moved.json);
        let import = &moved.json["moved"]["import"];
        assert_eq!(import["success"], true);
        let copied = import["tables"].as_array().unwrap();
        assert_eq!(copied.len(), expected.len());
        for ((name, rows), report) in expected.iter().zip(copied) {
            assert_eq!(report["name"], name.as_str());
            assert_eq!(report["rows_source"], *rows);
            assert_eq!(report["rows_copied"], *rows, "attempt {attempt}: {report}");
            assert_eq!(report["verified"], true, "{report}");
        }
        digests.push(import["tables"].clone());
        assert_eq!(
            import["created"],
            serde_json::json!(["raw_clips_project", "clip_tags_tag"])
        );
        assert_eq!(import["skipped"], serde_json::json!([]));
        let from_do = worker.get("/do?user=a");
        assert_eq!(from_do.status, 200, "{}", from_do.json);
        assert_eq!(from_do.json["route"], "durable_object");
        assert_eq!(tables(&from_do.json), tables(&from_r2.json));
        assert!(from_do.json["delay_analysis"]["load"]["ms"].is_u64());
        assert!(from_do.json["timing_breakdown"]["query_ms"].is_number());
        // The same report model: the save that does not exist there is not graded, and the
        // object's CPU-only query is listed when the clock cannot see it.
        assert_eq!(from_do.json["delay_analysis"]["save"]["status"], "not_run");
        assert!(from_do.json["clock"]["unmeasured"].is_array());
        assert!(from_do.json["not_applicable"].is_array());
        let back = worker.request("POST", "/migrate?user=a&to=r2");
        assert_eq!(back.status, 200, "{}", back.json);
        // The way back verified the same content the way there did, table by table.
        for (there, back) in import["tables"]
            .as_array()
            .unwrap()
            .iter()
            .zip(back.json["tables"].as_array().unwrap())
        {
            assert_eq!(there["sha256"], back["sha256"], "{there} / {back}");
        }
    }
    assert_eq!(
        digests[0], digests[1],
        "the second move copied the same content"
    );
    assert_eq!(
        row_counts(&worker.object("a/database.sqlite").unwrap()),
        expected
    );

    let missing = worker.request("POST", "/migrate?user=nobody&to=durable_object");
    assert_eq!(
        (missing.status, missing.json["error"]["code"].as_str()),
        (404, Some("user_not_found"))
    );
    let never = worker.get("/do?user=never-imported");
    assert_eq!(never.status, 404, "{}", never.json);
    assert_eq!(never.json["error"]["code"], "user_not_found");
    assert_eq!(worker.get("/do/import?user=a").status, 405);
}

/// Real-world-shaped files through the real Durable Object: full-text notes (own content,
/// external content rebuilt, contentless reported), AUTOINCREMENT counters after deleted top
/// rows, blobs, `WITHOUT ROWID`, generated columns, views and triggers, and a GeoPackage whose
/// rtree index the object cannot host (reported with module and consequence; rows kept).
#[test]
fn durable_object_imports_real_world_files() {
    let files = fixtures::real_world().unwrap();
    let seeds: Vec<(String, &[u8])> = files
        .iter()
        .map(|(name, bytes)| {
            (
                format!("{}/database.sqlite", name.replace('_', "-")),
                bytes.as_slice(),
            )
        })
        .collect();
    let seeds: Vec<(&str, &[u8])> = seeds.iter().map(|(k, b)| (k.as_str(), *b)).collect();
    let worker = LocalWorker::start(&seeds);
    for (name, _) in &files {
        let user = name.replace('_', "-");
        let on_r2 = worker.get(&format!("/?user={user}&save=never"));
        assert_eq!(on_r2.status, 200, "{name}: {}", on_r2.json);
        let moved = worker.request(
            "POST",
            &format!("/migrate?user={user}&to=durable_object&allow_loss=true"),
        );
        eprintln!("{name}: {}", moved.json);
        assert_eq!(moved.status, 200, "{name}: {}", moved.json);
        let import = &moved.json["moved"]["import"];
        assert_eq!(import["success"], true, "{name}");
        let skipped = import["skipped"].as_array().unwrap();
        let reason = |table: &str| {
            skipped
                .iter()
                .find(|s| s["name"] == table)
                .map(|s| s["reason"].as_str().unwrap().to_owned())
        };
        match *name {
            "fts5_notes" => {
                assert!(
                    import["created"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|c| c == "clips_fts")
                );
                assert!(reason("tags_index").unwrap().contains("contentless"));
                // allow_loss named what it dropped.
                assert!(
                    import["dropped"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|d| d.as_str().unwrap().starts_with("tags_index")),
                    "{import}"
                );
            }
            "autoincrement" => {
                let counters = import["counters"].as_array().unwrap();
                assert_eq!(counters.len(), 1, "{import}");
                assert_eq!(counters[0]["seq"], 10);
                // Kept, or reported exactly with the reason the object gave.
                assert!(
                    counters[0]["kept"] == true || counters[0]["reason"].is_string(),
                    "{import}"
                );
            }
            "geopackage" => {
                let why = reason("rtree_features_geom").unwrap();
                assert!(
                    why.contains("module rtree") && why.contains("kept"),
                    "{why}"
                );
            }
            _ => {}
        }
        // The spec's `tables` are the same list on both routes, but for a virtual table whose
        // module the object does not have (and its shadow tables), which the import reports.
        let on_do = worker.get(&format!("/do?user={user}"));
        assert_eq!(on_do.status, 200, "{name}: {}", on_do.json);
        let not_hosted = |t: &str| {
            skipped.iter().any(|s| {
                let n = s["name"].as_str().unwrap();
                s["reason"]
                    .as_str()
                    .unwrap()
                    .contains("not available in the target")
                    && (t == n || t.starts_with(&format!("{n}_")))
            })
        };
        let expected: Vec<String> = tables(&on_r2.json)
            .into_iter()
            .filter(|t| !not_hosted(t))
            .collect();
        assert_eq!(tables(&on_do.json), expected, "{name}: {import}");
    }
}
