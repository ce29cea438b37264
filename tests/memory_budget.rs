//! Memory bombs against a whole request, with every allocation counted: the Rust heap through a
//! counting global allocator, SQLite's heap through its own high-water mark. A request may
//! never take more than the per-request part of the memory budget (SQLite's heap limit, the
//! result at its charged size, a little slack), whatever its SQL.
//!
//! One test in a process of its own: SQLite's heap limit and the allocator are process-wide.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::json;
use workers_sqlite_poc::exec::{DEFAULT_MAX_RESULT_BYTES, Limits, Statement};
use workers_sqlite_poc::pipeline::{Context, serve};
use workers_sqlite_poc::request::{SaveMode, UserId};
use workers_sqlite_poc::sqlite::SQLITE_HEAP_MAX_BYTES;
use workers_sqlite_poc::storage::MemoryStore;
use workers_sqlite_poc::stream::{Call, Stream};
use workers_sqlite_poc::testing::{StepClock, memory_bombs};
use workers_sqlite_poc::work::Transaction;
use workers_sqlite_poc::{hrana, sqlite};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const MIB: u64 = 1024 * 1024;

/// Peak extra memory (Rust heap + SQLite heap) while `f` runs.
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let base = CURRENT.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    // SAFETY: reads and resets a counter.
    let sqlite_base = unsafe { rusqlite::ffi::sqlite3_memory_used() };
    // SAFETY: as above.
    unsafe { rusqlite::ffi::sqlite3_memory_highwater(1) };
    let out = f();
    let rust = PEAK.load(Ordering::Relaxed).saturating_sub(base) as u64;
    // SAFETY: as above.
    let sqlite = unsafe { rusqlite::ffi::sqlite3_memory_highwater(0) } - sqlite_base;
    (out, rust + u64::try_from(sqlite).unwrap_or(0))
}

/// Each bomb of the review, and a few more, as `/query` and as a libSQL pipeline: answered
/// (200 within the caps, or a 4xx naming the cap), never more than the per-request budget of
/// memory; afterwards, an ordinary request is served.
#[test]
fn no_request_takes_more_than_its_memory_budget() {
    sqlite::initialize().unwrap();
    let store = MemoryStore::new();
    let clock = StepClock::stepping(1.0);
    let ctx = Context::new(&store, &clock);
    let user = UserId::parse(Some("bomber")).unwrap();
    let bombs = memory_bombs();
    let budget = SQLITE_HEAP_MAX_BYTES + 3 * DEFAULT_MAX_RESULT_BYTES + 2 * MIB;
    let mut report = Vec::new();
    for sql in &bombs {
        let (outcome, used) = peak_of(|| {
            let mut work = Transaction {
                statements: vec![Statement::new(sql.clone())],
                limits: Limits::default(),
            };
            block(serve(&ctx, &user, SaveMode::Auto, &mut work))
                .map(|(report, results)| serde_json::to_vec(&(report, results)).unwrap().len())
        });
        report.push(format!(
            "/query {used:>10} B  {sql:.60}  {:?}",
            outcome.as_ref().err().map(|e| e.code())
        ));
        assert!(used <= budget, "/query {sql}: {used} bytes > {budget}");
        let (outcome, used) = peak_of(|| {
            let body = json!({"requests": [{"type": "execute", "stmt": {"sql": sql}}]});
            let mut work = Stream {
                user: user.as_str().to_owned(),
                state: None,
                call: Call::Pipeline(
                    hrana::parse(body.to_string().as_bytes(), 100)
                        .unwrap()
                        .requests,
                ),
                limits: Limits::default(),
                now_ms: 0,
            };
            block(serve(&ctx, &user, SaveMode::Auto, &mut work))
                .map(|(report, out)| serde_json::to_vec(&(report, out.results)).unwrap().len())
        });
        report.push(format!(
            "hrana  {used:>10} B  {sql:.60}  {:?}",
            outcome.as_ref().err().map(|e| e.code())
        ));
        assert!(used <= budget, "hrana {sql}: {used} bytes > {budget}");
        if let Err(e) = outcome {
            assert!((400..500).contains(&e.status()), "{sql}: {e}");
        }
    }
    println!("{}", report.join("\n"));
    let mut work = Transaction {
        statements: vec![Statement::new("SELECT 1")],
        limits: Limits::default(),
    };
    block(serve(&ctx, &user, SaveMode::Auto, &mut work)).unwrap();
}

fn block<T>(f: impl std::future::Future<Output = T>) -> T {
    pollster::block_on(f)
}
