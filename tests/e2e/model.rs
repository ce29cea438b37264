//! The worker under the R2 model (tests/model/): the model injects what its file says and the
//! worker's answers stay true; two isolates each keep their own memory; many writers over two
//! isolates lose nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::json;

use super::harness::{LocalWorker, MODEL_CONFIG, Under};

/// The model's wrangler config is the project's, plus the model's two vars and its build step:
/// the worker under test is configured exactly as the one deployed.
#[test]
fn the_model_config_is_the_project_config() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let bindings = |text: &str| {
        let (_, rest) = text.split_once("[[r2_buckets]]").expect("an R2 binding");
        rest.lines()
            .filter(|l| !l.starts_with("R2_MODEL") && !l.starts_with("MODEL_ISOLATES"))
            .filter(|l| !l.starts_with("# The model") && !l.starts_with("# How many copies"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let project = std::fs::read_to_string(root.join("wrangler.toml")).unwrap();
    let model = std::fs::read_to_string(root.join(MODEL_CONFIG)).unwrap();
    assert_eq!(bindings(&model), bindings(&project));
    assert!(model.contains("\nmain = \"entry.mjs\"\n"));
}

/// One user's ids stored in table `w`.
fn stored_ids(worker: &LocalWorker, user: &str) -> BTreeSet<String> {
    let answer = worker.post_json(
        &format!("/query?user={user}"),
        &json!({"sql": "SELECT id FROM w"}),
        &[],
    );
    assert_eq!(answer.status, 200, "{:?}", answer.json);
    answer.json["results"][0]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_str().unwrap().to_owned())
        .collect()
}

/// How one write was answered.
#[derive(Debug)]
enum Outcome {
    /// 200: acknowledged.
    Stored,
    /// 503 with nothing written (its `Retry-After`).
    Refused(Option<String>),
    /// 503 whose write may or may not have been stored (R2 failed mid-write, unreadable).
    Unknown,
}

fn write(worker: &LocalWorker, user: &str, id: &str, isolate: Option<&str>) -> Outcome {
    let headers: Vec<(&str, &str)> = isolate
        .map(|i| ("X-Model-Isolate", i))
        .into_iter()
        .collect();
    let answer = worker.post_json(
        &format!("/query?user={user}"),
        &json!({"sql": "INSERT INTO w (id) VALUES (?)", "params": [id]}),
        &headers,
    );
    match answer.status {
        200 => Outcome::Stored,
        503 if answer.json["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("could not find out")) =>
        {
            Outcome::Unknown
        }
        503 => Outcome::Refused(answer.retry_after),
        other => panic!("{id}: status {other}: {}", answer.json),
    }
}

/// Every acknowledged id is stored, every refused one is not, and nothing else is there.
fn check_stored(outcomes: &BTreeMap<String, Outcome>, stored: &BTreeSet<String>) {
    for (id, outcome) in outcomes {
        match outcome {
            Outcome::Stored => assert!(stored.contains(id), "acknowledged {id} is lost"),
            Outcome::Refused(_) => assert!(!stored.contains(id), "refused {id} is stored"),
            Outcome::Unknown => {}
        }
    }
    for id in stored {
        assert!(outcomes.contains_key(id), "{id} was never written");
    }
}

/// Under `spec` with two isolates, in both layouts: each isolate keeps its own version cache
/// (a read on the other one misses), the Durable Object hop is paid, writes from both
/// isolates at once run into R2's per-key write rate (429s counted) and, with the transient
/// 5xx rate raised, into failures before and after a call did its work; every acknowledged
/// write is stored once and every refused one is not, each refusal with `Retry-After`.
#[test]
fn the_spec_model_delays_refuses_and_fails_and_nothing_is_lost() {
    for layout in ["incremental", "single"] {
        let worker = LocalWorker::start_under(
            &Under::model("spec").isolates(2),
            &[],
            &[("ALLOW_ANONYMOUS", "true"), ("LAYOUT", layout)],
        );
        let create = worker.post_json(
            "/query?user=u",
            &json!({"sql": "CREATE TABLE w (id TEXT PRIMARY KEY)"}),
            &[("X-Model-Isolate", "0")],
        );
        assert_eq!(create.status, 200, "{layout}: {:?}", create.json);
        assert_eq!(create.isolate.as_deref(), Some("0"));

        // Each copy has its own memory: the one that wrote has the database cached, the other
        // has nothing cached until it loads it itself.
        let read = |isolate: &str| {
            worker.post_json(
                "/query?user=u",
                &json!({"sql": "SELECT count(*) FROM w"}),
                &[("X-Model-Isolate", isolate)],
            )
        };
        let (first, other, again) = (read("0"), read("1"), read("1"));
        assert_eq!(
            first.json["cache"]["status"], "hit",
            "{layout}: {}",
            first.json
        );
        assert_eq!(
            other.json["cache"]["status"], "miss",
            "{layout}: {}",
            other.json
        );
        assert_eq!(other.isolate.as_deref(), Some("1"));
        assert_eq!(
            again.json["cache"]["status"], "hit",
            "{layout}: {}",
            again.json
        );

        let before = worker.model_stats();
        assert!(before["delayed_calls"].as_u64().unwrap() > 0, "{before}");
        assert!(before["delay_ms_total"].as_f64().unwrap() > 0.0, "{before}");

        // Writers on both isolates at once; faults raised so that a short run sees them (at
        // 5 % the single layout's ~50 calls of the burst saw none in about one run of 12;
        // at 15 %, about one in 2,500).
        worker.send("POST", "/__model/faults?rate=0.15", &[], b"");
        let outcomes: BTreeMap<String, Outcome> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..24)
                .map(|k| {
                    let worker = &worker;
                    s.spawn(move || {
                        let id = format!("{layout}-{k}");
                        let isolate = if k % 2 == 0 { "0" } else { "1" };
                        let outcome = write(worker, "u", &id, Some(isolate));
                        (id, outcome)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        worker.send("POST", "/__model/faults?rate=0", &[], b"");
        let stats = worker.model_stats();
        eprintln!("{layout}: {outcomes:?}\n{stats}");
        assert!(
            stats["rate_limited"].as_u64().unwrap() > 0,
            "{layout}: no 429: {stats}"
        );
        let transient = &stats["transient"];
        assert!(
            transient["before"].as_u64().unwrap() + transient["lost_answer"].as_u64().unwrap() > 0,
            "{layout}: no 5xx injected: {stats}"
        );
        for (id, outcome) in &outcomes {
            if let Outcome::Refused(retry_after) = outcome {
                assert!(
                    retry_after.is_some(),
                    "{layout}: {id} refused without Retry-After"
                );
            }
        }
        let acknowledged = outcomes
            .values()
            .filter(|o| matches!(o, Outcome::Stored))
            .count();
        assert!(
            acknowledged > 0,
            "{layout}: nothing acknowledged: {outcomes:?}"
        );
        check_stored(&outcomes, &stored_ids(&worker, "u"));

        // The Durable Object route pays the model's round trip. A move right after the burst
        // may meet the manifest's write second still taken: 503 with Retry-After, nothing
        // moved, and a client that waits as told gets through.
        let mut moved = worker.request("POST", "/migrate?user=u&to=durable_object");
        for _ in 0..5 {
            if moved.status != 503 {
                break;
            }
            let wait: u64 = moved
                .retry_after
                .as_deref()
                .expect("Retry-After")
                .parse()
                .unwrap();
            std::thread::sleep(Duration::from_secs(wait));
            moved = worker.request("POST", "/migrate?user=u&to=durable_object");
        }
        assert_eq!(moved.status, 200, "{layout}: {:?}", moved.json);
        // Seen here under the model once in a few runs: a read right after the move's 200
        // answered 503 `migrating` (with Retry-After) for a moment; a client waits as told.
        let mut served = read("0");
        for _ in 0..10 {
            if served.status != 503 {
                break;
            }
            assert!(served.retry_after.is_some(), "{layout}: {}", served.json);
            eprintln!("{layout}: a read after the move: {}", served.json);
            std::thread::sleep(Duration::from_millis(500));
            served = read("0");
        }
        assert_eq!(
            served.json["route"], "durable_object",
            "{layout}: {}",
            served.json
        );
        let after = worker.model_stats();
        assert!(after["do_hops"].as_u64().unwrap() > 0, "{layout}: {after}");
        assert_eq!(after["do_hop_ms"], 20);
    }
}

/// 64 writers for one user over two isolates for 30 s under `spec`, in the incremental layout
/// (the default): no acknowledged write is lost, nothing refused is stored, at most 1 % are
/// refused, each refusal with `Retry-After`, and R2's
/// per-key limit did refuse writes (the model's 429s) while both isolates served.
#[test]
fn sixty_four_writers_over_two_isolates_lose_nothing_under_spec() {
    const WRITERS: usize = 64;
    const RUN: Duration = Duration::from_secs(30);
    let worker = LocalWorker::start_under(
        &Under::model("spec").isolates(2),
        &[],
        &[("ALLOW_ANONYMOUS", "true")],
    );
    let create = worker.post_json(
        "/query?user=many",
        &json!({"sql": "CREATE TABLE w (id TEXT PRIMARY KEY)"}),
        &[],
    );
    assert_eq!(create.status, 200, "{:?}", create.json);
    let start = Instant::now();
    let per_writer: Vec<Vec<(String, Outcome)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..WRITERS)
            .map(|w| {
                let worker = &worker;
                s.spawn(move || {
                    let mut done = Vec::new();
                    let mut seq = 0;
                    while start.elapsed() < RUN {
                        let id = format!("{w}-{seq}");
                        let outcome = write(worker, "many", &id, None);
                        done.push((id, outcome));
                        seq += 1;
                    }
                    done
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let elapsed = start.elapsed();
    let outcomes: BTreeMap<String, Outcome> = per_writer.into_iter().flatten().collect();
    let count = |f: fn(&Outcome) -> bool| outcomes.values().filter(|o| f(o)).count();
    let acknowledged = count(|o| matches!(o, Outcome::Stored));
    let refused = count(|o| matches!(o, Outcome::Refused(_)));
    let unknown = count(|o| matches!(o, Outcome::Unknown));
    let stats = worker.model_stats();
    let summary = json!({
        "writes": outcomes.len(), "acknowledged": acknowledged, "refused": refused,
        "unknown": unknown, "seconds": elapsed.as_secs_f64(),
        "acknowledged_per_s": acknowledged as f64 / elapsed.as_secs_f64(), "model": stats,
    });
    eprintln!("{summary}");
    check_stored(&outcomes, &stored_ids(&worker, "many"));
    for (id, outcome) in &outcomes {
        if let Outcome::Refused(retry_after) = outcome {
            assert!(retry_after.is_some(), "{id} refused without Retry-After");
        }
    }
    assert!(acknowledged > 0, "{summary}");
    // Refused: 503 with nothing written. An unknown outcome (an injected 5xx the worker could
    // not resolve) is counted and printed, not bounded: one such commit answers its whole
    // group (30-60 writes) so, and check_stored holds either way.
    assert!(
        refused * 100 <= outcomes.len(),
        "more than 1 % refused: {summary}"
    );
    assert!(
        stats["rate_limited"].as_u64().unwrap() > 0,
        "no 429 injected: {summary}"
    );
    let served = stats["served_by_isolate"].as_array().unwrap();
    assert!(served.iter().all(|n| n.as_u64().unwrap() > 0), "{summary}");
}
