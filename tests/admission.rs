//! Memory admission over the store and clock seams: concurrent requests of one isolate share
//! a capacity; one that would push past it waits while others hold the memory, and is refused
//! 503 `memory_busy` with nothing written when it does not come free in time. Downloads are
//! charged before their bytes are read, results while they are built.

#[cfg(all(target_family = "wasm", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

use std::future::Future;
use std::pin::pin;
use std::rc::Rc;
use std::task::{Context as TaskContext, Poll, Waker};

use rusqlite::types::Value;
use workers_sqlite_poc::admission::{Admitted, Gate, MAX_WAIT_MS, image_bytes};
use workers_sqlite_poc::clock::Clock;
use workers_sqlite_poc::error::Error;
use workers_sqlite_poc::exec::{Limits, Statement};
use workers_sqlite_poc::pipeline::Context;
use workers_sqlite_poc::queue::{self, WriteQueues};
use workers_sqlite_poc::request::{SaveMode, UserId};
use workers_sqlite_poc::storage::Layout;
use workers_sqlite_poc::storage::MemoryStore;
use workers_sqlite_poc::testing::StepClock;
use workers_sqlite_poc::work::Transaction;

fn poll_once<F: Future>(f: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    f.poll(&mut TaskContext::from_waker(Waker::noop()))
}

fn user() -> UserId {
    UserId::parse(Some("mem")).unwrap()
}

fn transaction(sql: &str, args: Vec<Value>) -> Transaction {
    Transaction {
        statements: vec![Statement {
            args,
            ..Statement::new(sql)
        }],
        limits: Limits::default(),
    }
}

/// One request alone is admitted whatever it needs: the capacity is sized for the largest.
#[test]
fn a_request_alone_is_always_admitted() {
    let gate = Rc::new(Gate::new(1000));
    let clock = StepClock::yielding();
    let r = pollster::block_on(gate.admit(5000, 0, &clock, 1)).unwrap();
    assert_eq!(r.held(), 5000);
    assert_eq!(gate.stats().reserved_bytes, 5000);
    drop(r);
    assert_eq!(gate.stats().reserved_bytes, 0);
    assert_eq!(gate.stats().requests, 0);
    assert_eq!(gate.stats().peak_reserved_bytes, 5000);
}

/// While others hold the memory a request needs, it waits; it is admitted once they let go,
/// and its report says how long it waited.
#[test]
fn a_request_waits_while_others_hold_the_memory() {
    let gate = Rc::new(Gate::new(1000));
    let clock = StepClock::yielding();
    let first = pollster::block_on(gate.admit(800, 0, &clock, 1)).unwrap();
    let mut second = pin!(gate.admit(300, 0, &clock, 2));
    for _ in 0..5 {
        assert!(
            poll_once(second.as_mut()).is_pending(),
            "admitted past capacity"
        );
    }
    assert_eq!(gate.stats().reserved_bytes, 800);
    drop(first);
    let Poll::Ready(Ok(second)) = poll_once(second.as_mut()) else {
        panic!("not admitted after the memory came free");
    };
    let a = second.admission();
    assert!(a.waited_ms > 0.0, "{a:?}");
    assert_eq!(a.reserved_bytes, 300);
    assert_eq!(a.isolate.waited, 1);
    assert_eq!(a.isolate.refused, 0);
}

/// A request that waited MAX_WAIT_MS is refused 503 `memory_busy` with Retry-After, holding
/// nothing afterwards.
#[test]
fn a_request_that_cannot_get_memory_in_time_is_refused_holding_nothing() {
    let gate = Rc::new(Gate::new(1000));
    let clock = StepClock::yielding();
    let _first = pollster::block_on(gate.admit(800, 0, &clock, 1)).unwrap();
    let err = pollster::block_on(gate.admit(300, 0, &clock, 2)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::MemoryBusy {
                needed_bytes: 300,
                in_use_bytes: 800,
                capacity_bytes: 1000
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.status(), 503);
    assert_eq!(err.code(), "memory_busy");
    assert_eq!(err.retry_after_s(), Some(1));
    assert!(err.body().error.retryable);
    assert!(
        clock.now_ms() >= MAX_WAIT_MS,
        "gave up early: {}",
        clock.now_ms()
    );
    assert_eq!(gate.stats().reserved_bytes, 800);
    assert_eq!(gate.stats().requests, 1);
    assert_eq!(gate.stats().refused, 1);
}

/// A download is charged before its body is read: with the memory held elsewhere, the load
/// waits, then the request is refused with nothing written; once the memory is free the same
/// request is served and its reservation holds the image.
#[test]
fn downloads_are_admitted_before_their_bytes_are_read() {
    for layout in [Layout::Single, Layout::Incremental] {
        let store = MemoryStore::new();
        let clock = StepClock::yielding();
        let seed = Context {
            layout,
            ..Context::new(&store, &clock)
        };
        pollster::block_on(queue::serve(
            &seed,
            &WriteQueues::new(),
            &user(),
            SaveMode::Auto,
            transaction(
                "CREATE TABLE t AS WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c \
                 WHERE i < 20000) SELECT i, randomblob(50) AS b FROM c",
                vec![],
            ),
        ))
        .unwrap();
        let before = store.keys();
        let puts = store.put_count();

        let gate = Rc::new(Gate::new(2 << 20));
        let hog = pollster::block_on(gate.admit(2 << 20, 0, &clock, 1)).unwrap();
        let memory = pollster::block_on(gate.admit(0, 0, &clock, 2)).unwrap();
        let admitted = Admitted::new(store, Rc::clone(&memory), &clock);
        let store = &admitted.inner;
        let ctx = Context {
            layout,
            memory: Some(&memory),
            ..Context::new(&admitted, &clock)
        };
        let insert = transaction("INSERT INTO t(i) VALUES (?)", vec![Value::Integer(-1)]);
        let err = pollster::block_on(queue::serve(
            &ctx,
            &WriteQueues::new(),
            &user(),
            SaveMode::Auto,
            insert.clone(),
        ))
        .unwrap_err();
        assert!(
            matches!(err, Error::MemoryBusy { .. }),
            "{layout:?}: {err:?}"
        );
        assert_eq!(store.keys(), before, "{layout:?}: a refused request wrote");
        assert_eq!(store.put_count(), puts, "{layout:?}");
        assert!(
            memory.held() == 0,
            "{layout:?}: the refused download is still charged"
        );

        drop(hog);
        let (report, _) = pollster::block_on(queue::serve(
            &ctx,
            &WriteQueues::new(),
            &user(),
            SaveMode::Auto,
            insert,
        ))
        .unwrap();
        let size = report.db_info.size_bytes;
        assert!(
            memory.held() >= image_bytes(size / 2),
            "{layout:?}: {} < {size}",
            memory.held()
        );
    }
}

/// A result is charged while it is built: past what the other requests leave free it is
/// refused at once (a statement cannot wait halfway), the request rolls back and nothing is
/// written; alone, the same query is answered.
#[test]
fn results_are_charged_while_they_are_built() {
    let store = MemoryStore::new();
    let clock = StepClock::yielding();
    let gate = Rc::new(Gate::new(4 << 20));
    let hog = pollster::block_on(gate.admit(3 << 20, 0, &clock, 1)).unwrap();
    let memory = pollster::block_on(gate.admit(0, 0, &clock, 2)).unwrap();
    let admitted = Admitted::new(store, Rc::clone(&memory), &clock);
    let store = &admitted.inner;
    let ctx = Context {
        memory: Some(&memory),
        ..Context::new(&admitted, &clock)
    };
    // About 2 MB of result, and a write that must not be stored with it.
    let big = Transaction {
        statements: vec![
            Statement::new("CREATE TABLE w(x)"),
            Statement::new(
                "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 2000) \
                 SELECT i, hex(zeroblob(500)) FROM c",
            ),
        ],
        limits: Limits::default(),
    };
    let err = pollster::block_on(queue::serve(
        &ctx,
        &WriteQueues::new(),
        &user(),
        SaveMode::Auto,
        big.clone(),
    ))
    .unwrap_err();
    assert!(matches!(err, Error::MemoryBusy { .. }), "{err:?}");
    assert!(
        store.keys().is_empty(),
        "a refused request wrote: {:?}",
        store.keys()
    );
    drop(hog);
    let (_, results) = pollster::block_on(queue::serve(
        &ctx,
        &WriteQueues::new(),
        &user(),
        SaveMode::Auto,
        big,
    ))
    .unwrap();
    assert_eq!(results[1].rows.len(), 2000);
    assert!(
        memory.held() >= 2_000_000,
        "result not charged: {}",
        memory.held()
    );
}
