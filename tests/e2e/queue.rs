//! The write queue in the real `workerd`: many concurrent writes for one user in one isolate
//! are all acknowledged and all stored, through `@libsql/client` and through `/query`.

use super::harness::{LocalWorker, Under};

/// 20 inserts for one user at once (`Promise.all`), through the published `@libsql/client`
/// and then through plain `/query`, in both layouts, on local R2 and under the `spec` model
/// (latency, one write per second per key, transient 5xx): none is refused, every one is
/// stored once, and the write queue grouped them (fewer commits than writes).
#[test]
fn twenty_concurrent_inserts_are_all_acknowledged_and_stored() {
    for (model, layout) in [
        (None, "incremental"),
        (None, "single"),
        (Some("spec"), "incremental"),
        (Some("spec"), "single"),
    ] {
        let vars = [("ALLOW_ANONYMOUS", "true"), ("LAYOUT", layout)];
        let worker = match model {
            None => LocalWorker::start_with_vars(&[], &vars),
            Some(model) => LocalWorker::start_under(&Under::model(model), &[], &vars),
        };
        let layout = format!("{layout} under {}", model.unwrap_or("local R2"));
        let seen = worker.run_json(
            &format!("{layout}: concurrent writes"),
            "node",
            &[
                "tests/e2e/concurrent_writes.mjs",
                &worker.base,
                "many",
                "20",
            ],
        );
        eprintln!("{layout}: {seen}");
        let grouped = seen["query"]["group_sizes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|g| g.as_u64().is_some_and(|g| g > 1))
            .count();
        assert!(
            grouped > 0,
            "{layout}: no write was committed in a group: {seen}"
        );
        if model.is_some() {
            let stats = worker.model_stats();
            eprintln!("{layout}: {stats}");
            assert!(stats["delayed_calls"].as_u64().unwrap() > 0, "{stats}");
        }
    }
}
