//! The published clients, unchanged, against the real runtime in its default (incremental)
//! layout: the official `@libsql/client` test suite (vendored in `official/`), the Rust
//! `libsql` crate in remote mode (`tests/rust-client`), and per-user tokens honoured by every
//! client family.

use std::path::Path;
use std::process::Command;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use workers_sqlite_poc::auth;
use workers_sqlite_poc::request::UserId;

use crate::harness::LocalWorker;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A per-user token for `user`, signed with `secret`, valid until `expires_s`.
fn token(secret: &str, user: &str, expires_s: u64) -> String {
    auth::mint(secret, &UserId::parse(Some(user)).unwrap(), expires_s)
}

/// What one run of the official suite reported: each test's full name and its status
/// (`passed`, `failed`, `pending` for a skip), and the failures' messages.
struct SuiteRun {
    tests: Vec<(String, String)>,
    failure_messages: Vec<(String, String)>,
}

impl SuiteRun {
    fn named(&self, status: &str) -> Vec<&str> {
        self.tests
            .iter()
            .filter(|(_, s)| s == status)
            .map(|(name, _)| name.as_str())
            .collect()
    }

    fn status_of(&self, name: &str) -> Option<&str> {
        self.tests
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.as_str())
    }
}

/// Runs the vendored official `@libsql/client` suite (`tests/e2e/official/`) with jest against
/// `scheme://127.0.0.1:PORT/db/<user>/` as sqld (`SERVER=sqld`), with a per-user token as its
/// `AUTH_TOKEN`, and reads jest's JSON report. `scheme` is the URL scheme the client picks its
/// transport by (`http`, `ws`).
fn run_official_suite(worker: &LocalWorker, scheme: &str, user: &str, token: &str) -> SuiteRun {
    let address = worker.base.trim_start_matches("http://");
    let url = format!("{scheme}://{address}/db/{user}/");
    let report = root().join("target").join(format!(
        "official-suite-{scheme}-{}.json",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&report);
    let output = Command::new(root().join("node_modules/.bin/jest"))
        .current_dir(root())
        .args([
            "--config",
            "tests/e2e/official/jest.config.cjs",
            "--runInBand",
            "--ci",
        ])
        .arg("--json")
        .arg("--outputFile")
        .arg(&report)
        .env("URL", &url)
        .env("SERVER", "sqld")
        .env("AUTH_TOKEN", token)
        .output()
        .expect("run jest (make setup installs node_modules)");
    let text = std::fs::read_to_string(&report).unwrap_or_else(|e| {
        panic!(
            "jest wrote no report ({e}):\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let _ = std::fs::remove_file(&report);
    let json: Value = serde_json::from_str(&text).expect("jest's JSON report");
    let mut run = SuiteRun {
        tests: Vec::new(),
        failure_messages: Vec::new(),
    };
    for file in json["testResults"].as_array().expect("testResults") {
        assert!(
            file["assertionResults"]
                .as_array()
                .is_some_and(|a| !a.is_empty()),
            "the suite did not run: {}",
            file["message"]
        );
        for test in file["assertionResults"].as_array().unwrap() {
            let name = test["fullName"].as_str().unwrap().to_owned();
            let status = test["status"].as_str().unwrap().to_owned();
            if status == "failed" {
                let messages = test["failureMessages"].to_string();
                run.failure_messages.push((name.clone(), messages));
            }
            run.tests.push((name, status));
        }
    }
    run
}

/// Runs the official suite over `scheme` against a fresh worker in the default layout and
/// checks the outcome: every test that reaches the server passes except the embedded replica
/// test (sqld's replication protocol, out of scope, which must fail on the worker's own
/// refusal), and "statements are executed in a transaction" (100 concurrent write batches on
/// one client) passes. Prints the counts.
fn official_suite_passes(scheme: &str) {
    let secret = "e2e-official-secret";
    let worker = LocalWorker::start_with_vars(&[], &[("TOKEN_SECRET", secret)]);
    let user = "official";
    let started = Instant::now();
    let run = run_official_suite(&worker, scheme, user, &token(secret, user, now_s() + 3600));
    let (passed, failed, skipped) = (
        run.named("passed"),
        run.named("failed"),
        run.named("pending"),
    );
    eprintln!(
        "official @libsql/client suite over {scheme}: {} passed, {} failed, {} skipped ({} tests, {:.0?})",
        passed.len(),
        failed.len(),
        skipped.len(),
        run.tests.len(),
        started.elapsed()
    );
    for (name, messages) in &run.failure_messages {
        eprintln!("  failed: {name}: {}", &messages[..messages.len().min(600)]);
    }
    assert_eq!(
        failed,
        ["embedded replica test"],
        "only the embedded replica test may fail:\n{}",
        worker.log_tail()
    );
    // The native client only reports its handshake giving up; the worker's log shows that it
    // answered each replication call with its own refusal.
    let handshake = format!("/db/{user}//wal_log.ReplicationLog/Hello 501");
    assert!(
        worker.log().contains(&handshake),
        "the embedded replica's handshake must get 501 replication_not_supported:\n{}",
        worker.log_tail()
    );
    assert_eq!(
        run.status_of("batch() statements are executed in a transaction"),
        Some("passed")
    );
    // The suite's own gates, by `SERVER=sqld` and the URL: Hrana 3 only batch and transaction
    // features, the Python test servers' dropped connections, local `file:` URLs, and the
    // custom `fetch` of the http transport. None of them is a test of this server.
    let mut expected_skips = vec![
        "batch() ROLLBACK statement stops execution of batch",
        "transaction() ROLLBACK statement stops execution of transaction",
        "transaction() OR ROLLBACK statement stops execution of transaction",
        "transaction() OR ROLLBACK as the first statement stops execution of transaction",
        "network errors WebSocket close in execute()",
        "network errors WebSocket close in transaction()",
        "network errors WebSocket close in batch()",
        "network errors TCP close in execute()",
        "network errors TCP close in transaction()",
        "network errors TCP close in batch()",
        "raw error codes",
    ];
    if scheme != "http" {
        expected_skips.push("custom fetch");
    }
    expected_skips.sort_unstable();
    let mut skipped = skipped;
    skipped.sort_unstable();
    assert_eq!(skipped, expected_skips);
    assert_eq!(passed.len() + failed.len() + skipped.len(), run.tests.len());
}

/// The official `@libsql/client` test suite (tag v0.17.4, `official/README.md`) over
/// `http://`, run against the worker by the published client of the same version, 0.17.4.
#[test]
fn official_client_suite_over_http() {
    official_suite_passes("http");
}
