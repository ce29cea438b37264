//! Hrana over WebSocket: the protocol session driven by messages, its jobs run through the
//! write queue and commit path over the store seam (both layouts), as the runtime runs them.

#[cfg(all(target_family = "wasm", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

use serde_json::{Value as Json, json};
use workers_sqlite_poc::auth;
use workers_sqlite_poc::config::Config;
use workers_sqlite_poc::exec::{Limits, Statement};
use workers_sqlite_poc::hrana_ws::{
    self, Job, MAX_IN_FLIGHT, MAX_QUEUED, MAX_STORED_SQL, MAX_STREAMS, Out, Session, close_code,
};
use workers_sqlite_poc::pipeline::Context;
use workers_sqlite_poc::queue::{self, WriteQueues};
use workers_sqlite_poc::request::{SaveMode, UserId};
use workers_sqlite_poc::storage::Layout;
use workers_sqlite_poc::storage::MemoryStore;
use workers_sqlite_poc::stream::STREAM_IDLE_TIMEOUT_MS;
use workers_sqlite_poc::testing::StepClock;
use workers_sqlite_poc::work::Transaction;

const LAYOUTS: [Layout; 2] = [Layout::Single, Layout::Incremental];
const SECRET: &str = "token secret";
const ADMIN: &str = "admin token";
const NOW_MS: u64 = 1_700_000_000_000;

fn user(id: &str) -> UserId {
    UserId::parse(Some(id)).unwrap()
}

/// One isolate: a store, a clock, the write queues.
struct World {
    store: MemoryStore,
    clock: StepClock,
    queues: WriteQueues,
    layout: Layout,
}

impl World {
    fn new(layout: Layout) -> Self {
        Self {
            store: MemoryStore::new(),
            clock: StepClock::frozen(),
            queues: WriteQueues::new(),
            layout,
        }
    }

    fn ctx(&self) -> Context<'_, MemoryStore, StepClock> {
        Context {
            layout: self.layout,
            ..Context::new(&self.store, &self.clock)
        }
    }

    /// Runs `/query`'s transaction for user `a` through the same queue (another writer).
    fn query(&self, sqls: &[&str]) -> Vec<Vec<rusqlite::types::Value>> {
        let work = Transaction {
            statements: sqls.iter().map(|s| Statement::new(*s)).collect(),
            limits: Limits::default(),
        };
        let (_, results) = pollster::block_on(queue::serve(
            &self.ctx(),
            &self.queues,
            &user("a"),
            SaveMode::Auto,
            work,
        ))
        .unwrap();
        results.into_iter().flat_map(|r| r.rows).collect()
    }

    fn count(&self) -> i64 {
        match self.query(&["SELECT count(*) FROM t"])[0][0] {
            rusqlite::types::Value::Integer(n) => n,
            ref other => panic!("{other:?}"),
        }
    }

    /// Every stored object, for byte-identical checks.
    fn snapshot(&self) -> Vec<(String, Vec<u8>)> {
        self.store
            .keys()
            .into_iter()
            .map(|k| {
                let bytes = self.store.bytes(&k).unwrap_or_default();
                (k, bytes)
            })
            .collect()
    }
}

/// One socket: the session, what it sent, the jobs it asked for (run when the test says).
struct Conn<'w> {
    world: &'w World,
    session: Session,
    now_ms: u64,
    next_id: i32,
    sent: Vec<Json>,
    jobs: Vec<Job>,
    closed: Option<(u16, String)>,
}

fn config() -> Config {
    Config {
        auth_token: Some(ADMIN.into()),
        token_secret: Some(SECRET.into()),
        ..Config::default()
    }
}

impl<'w> Conn<'w> {
    fn open(world: &'w World, config: Config, version: u8) -> Self {
        Self {
            world,
            session: Session::new(config, user("a"), version),
            now_ms: NOW_MS,
            next_id: 0,
            sent: Vec::new(),
            jobs: Vec::new(),
            closed: None,
        }
    }

    /// A session past a hello with the admin token.
    fn ready(world: &'w World) -> Self {
        let mut conn = Self::open(world, config(), 3);
        conn.text(&json!({"type": "hello", "jwt": ADMIN}).to_string());
        assert_eq!(conn.sent.pop().unwrap(), json!({"type": "hello_ok"}));
        conn
    }

    fn absorb(&mut self, outs: Vec<Out>) {
        for out in outs {
            match out {
                Out::Send(msg) => self.sent.push(msg),
                Out::Run(job) => self.jobs.push(*job),
                Out::Close { code, reason } => self.closed = Some((code, reason)),
            }
        }
    }

    fn text(&mut self, text: &str) {
        let outs = self.session.receive(text, self.now_ms);
        self.absorb(outs);
    }

    /// Sends a request; returns its id. Nothing runs until `run` or `answer`.
    fn send(&mut self, request: Json) -> i32 {
        let id = self.next_id;
        self.next_id += 1;
        self.text(&json!({"type": "request", "request_id": id, "request": request}).to_string());
        id
    }

    /// Runs the oldest job asked for through the write queue and hands its outcome back.
    fn run_one(&mut self) {
        let job = self.jobs.remove(0);
        let outcome = pollster::block_on(queue::serve(
            &self.world.ctx(),
            &self.world.queues,
            &user("a"),
            SaveMode::Auto,
            job.work,
        ))
        .map(|(_, output)| output);
        let outs = self.session.complete(job.id, outcome, self.now_ms);
        self.absorb(outs);
    }

    fn run(&mut self) {
        while !self.jobs.is_empty() {
            self.run_one();
        }
    }

    fn find(&self, id: i32) -> Option<&Json> {
        self.sent.iter().find(|m| m["request_id"] == id)
    }

    /// Runs everything, then the answer to request `id`.
    fn answer(&mut self, id: i32) -> Json {
        self.run();
        self.find(id)
            .cloned()
            .unwrap_or_else(|| panic!("no answer to {id} in {:?}", self.sent))
    }

    /// The `response` of a `response_ok`.
    fn ok(&mut self, request: Json) -> Json {
        let id = self.send(request);
        let answer = self.answer(id);
        assert_eq!(answer["type"], "response_ok", "{answer}");
        answer["response"].clone()
    }

    /// The `error` of a `response_error`.
    fn error(&mut self, request: Json) -> Json {
        let id = self.send(request);
        let answer = self.answer(id);
        assert_eq!(answer["type"], "response_error", "{answer}");
        answer["error"].clone()
    }

    fn exec(&mut self, stream: i32, sql: &str) -> Json {
        self.ok(json!({"type": "execute", "stream_id": stream, "stmt": {"sql": sql}}))
    }
}

fn value(execute: &Json) -> Json {
    execute["result"]["rows"][0][0]["value"].clone()
}

/// hello authenticates as the Authorization header does over HTTP: the admin token, a
/// per-user token for this user; another user's token, a tampered or expired one, or none are
/// refused with hello_error and the socket closed; a request before hello closes it; a token
/// that expires while the socket is open refuses the next request until a new hello.
#[test]
fn hello_authenticates_like_http() {
    let world = World::new(Layout::Single);
    let exp = NOW_MS / 1000 + 60;
    let own = auth::mint(SECRET, &user("a"), exp);
    let other = auth::mint(SECRET, &user("b"), exp);
    let expired = auth::mint(SECRET, &user("a"), NOW_MS / 1000 - 1);
    for (jwt, expect) in [
        (Some(ADMIN.to_owned()), None),
        (Some(own.clone()), None),
        (Some(other), Some("FORBIDDEN")),
        (Some(expired), Some("UNAUTHORIZED")),
        (Some(format!("{own}x")), Some("UNAUTHORIZED")),
        (Some("wrong".into()), Some("UNAUTHORIZED")),
        (None, Some("UNAUTHORIZED")),
    ] {
        let mut conn = Conn::open(&world, config(), 3);
        conn.text(&json!({"type": "hello", "jwt": jwt}).to_string());
        match expect {
            None => {
                assert_eq!(conn.sent, [json!({"type": "hello_ok"})]);
                assert!(conn.closed.is_none());
            }
            Some(code) => {
                assert_eq!(conn.sent[0]["type"], "hello_error", "{jwt:?}");
                assert_eq!(conn.sent[0]["error"]["code"], code, "{jwt:?}");
                let (close, reason) = conn.closed.clone().unwrap();
                assert_eq!(close, close_code::POLICY);
                assert!(!reason.is_empty());
                // Nothing more is answered or run on a refused socket.
                conn.send(json!({"type": "open_stream", "stream_id": 1}));
                assert_eq!(conn.sent.len(), 1);
                assert!(conn.jobs.is_empty());
            }
        }
    }
    let none = {
        let mut conn = Conn::open(&world, config(), 3);
        conn.text(r#"{"type":"hello"}"#);
        conn.sent[0]["error"]["message"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert!(none.contains("no jwt"), "{none}");

    let mut early = Conn::open(&world, config(), 3);
    early.send(json!({"type": "open_stream", "stream_id": 1}));
    assert_eq!(early.closed.as_ref().unwrap().0, close_code::PROTOCOL);
    assert!(early.closed.as_ref().unwrap().1.contains("before hello"));

    // Anonymous only where the config allows it.
    let anonymous = Config {
        allow_anonymous: true,
        ..Config::default()
    };
    let mut conn = Conn::open(&world, anonymous, 3);
    conn.text(r#"{"type":"hello","jwt":null}"#);
    assert_eq!(conn.sent, [json!({"type": "hello_ok"})]);

    let mut conn = Conn::open(&world, config(), 3);
    conn.text(&json!({"type": "hello", "jwt": own}).to_string());
    conn.ok(json!({"type": "open_stream", "stream_id": 1}));
    conn.now_ms = (exp + 1) * 1000;
    let e = conn.error(json!({"type": "open_stream", "stream_id": 2}));
    assert_eq!(e["code"], "UNAUTHORIZED");
    assert!(
        e["message"].as_str().unwrap().contains("hello again"),
        "{e}"
    );
    let fresh = auth::mint(SECRET, &user("a"), exp + 3600);
    conn.text(&json!({"type": "hello", "jwt": fresh}).to_string());
    assert_eq!(conn.sent.last().unwrap(), &json!({"type": "hello_ok"}));
    conn.ok(json!({"type": "open_stream", "stream_id": 2}));
}

/// Every request type, answered in the protocol's shapes; statements run on the executor
/// (declared types, rowids, conditions); stored SQL texts belong to the connection and work
/// on every stream; a write is committed before it is acknowledged.
#[test]
fn requests_answer_in_the_protocols_shapes() {
    for layout in LAYOUTS {
        let world = World::new(layout);
        let mut conn = Conn::ready(&world);
        assert_eq!(
            conn.ok(json!({"type": "open_stream", "stream_id": 1})),
            json!({"type": "open_stream"})
        );
        conn.ok(json!({"type": "sequence", "stream_id": 1,
            "sql": "CREATE TABLE t(x INTEGER, y TEXT); INSERT INTO t VALUES (1, 'a')"}));
        assert_eq!(world.count(), 1, "the sequence was committed when answered");
        let r = conn.ok(json!({"type": "execute", "stream_id": 1, "stmt": {
            "sql": "INSERT INTO t VALUES (?, :y)", "args": [{"type": "integer", "value": "2"}],
            "named_args": [{"name": ":y", "value": {"type": "text", "value": "b"}}]}}));
        assert_eq!(r["type"], "execute");
        assert_eq!(r["result"]["affected_row_count"], 1);
        assert_eq!(r["result"]["last_insert_rowid"], "2");
        assert_eq!(world.count(), 2);
        let r = conn.exec(1, "SELECT x, y FROM t ORDER BY x");
        assert_eq!(
            r["result"]["cols"][0],
            json!({"name": "x", "decltype": "INTEGER"})
        );
        assert_eq!(
            r["result"]["rows"][1][1],
            json!({"type": "text", "value": "b"})
        );

        assert_eq!(
            conn.ok(json!({"type": "store_sql", "sql_id": 7, "sql": "SELECT count(*) FROM t"})),
            json!({"type": "store_sql"})
        );
        conn.ok(json!({"type": "open_stream", "stream_id": 2}));
        let r = conn.ok(json!({"type": "execute", "stream_id": 2, "stmt": {"sql_id": 7}}));
        assert_eq!(value(&r), "2");
        let r = conn.ok(json!({"type": "batch", "stream_id": 2, "batch": {"steps": [
            {"stmt": {"sql": "SELECT nope"}},
            {"stmt": {"sql_id": 7}, "condition": {"type": "error", "step": 0}},
            {"stmt": {"sql": "SELECT 1"}, "condition": {"type": "ok", "step": 0}},
        ]}}));
        assert_eq!(r["type"], "batch");
        assert_eq!(r["result"]["step_errors"][0]["code"], "SQLITE_ERROR");
        assert_eq!(r["result"]["step_results"][1]["rows"][0][0]["value"], "2");
        assert_eq!(r["result"]["step_results"][2], Json::Null);
        let d = conn.ok(json!({"type": "describe", "stream_id": 2, "sql_id": 7}));
        assert_eq!(d["result"]["is_readonly"], true);
        assert_eq!(
            conn.ok(json!({"type": "get_autocommit", "stream_id": 2})),
            json!({"type": "get_autocommit", "is_autocommit": true})
        );
        assert_eq!(
            conn.ok(json!({"type": "close_sql", "sql_id": 7})),
            json!({"type": "close_sql"})
        );
        let e = conn.error(json!({"type": "execute", "stream_id": 2, "stmt": {"sql_id": 7}}));
        assert!(e["message"].as_str().unwrap().contains("sql_id 7"), "{e}");
        let e =
            conn.error(json!({"type": "execute", "stream_id": 2, "stmt": {"sql": "SELECT nope"}}));
        assert_eq!(e["code"], "SQLITE_ERROR");
        assert_eq!(
            conn.ok(json!({"type": "close_stream", "stream_id": 2})),
            json!({"type": "close_stream"})
        );
        let e = conn.error(json!({"type": "execute", "stream_id": 2, "stmt": {"sql": "SELECT 1"}}));
        assert!(e["message"].as_str().unwrap().contains("not open"), "{e}");
        let e = conn.error(json!({"type": "frobnicate", "stream_id": 1}));
        assert_eq!(e["code"], "INVALID_REQUEST");
        assert!(conn.closed.is_none());
    }
}

/// An interactive transaction across requests: nothing is stored before COMMIT, the
/// transaction sees its own writes, COMMIT stores all of it; ROLLBACK and a close with the
/// transaction open leave every stored object byte-identical.
#[test]
fn transactions_commit_or_leave_nothing() {
    for layout in LAYOUTS {
        let world = World::new(layout);
        world.query(&["CREATE TABLE t(x)"]);
        let mut conn = Conn::ready(&world);
        conn.ok(json!({"type": "open_stream", "stream_id": 1}));
        conn.exec(1, "BEGIN");
        conn.exec(1, "INSERT INTO t VALUES (1)");
        conn.exec(1, "INSERT INTO t VALUES (2)");
        assert_eq!(value(&conn.exec(1, "SELECT count(*) FROM t")), "2");
        assert_eq!(world.count(), 0, "nothing stored before COMMIT");
        assert_eq!(
            conn.ok(json!({"type": "get_autocommit", "stream_id": 1}))["is_autocommit"],
            false
        );
        conn.exec(1, "COMMIT");
        assert_eq!(world.count(), 2);
        assert_eq!(
            conn.ok(json!({"type": "get_autocommit", "stream_id": 1}))["is_autocommit"],
            true
        );

        for ending in ["rollback", "close"] {
            let before = world.snapshot();
            conn.ok(json!({"type": "open_stream", "stream_id": 5}));
            conn.exec(5, "BEGIN");
            conn.exec(5, "INSERT INTO t VALUES (3)");
            if ending == "rollback" {
                conn.exec(5, "ROLLBACK");
            }
            conn.ok(json!({"type": "close_stream", "stream_id": 5}));
            assert_eq!(world.snapshot(), before, "{ending}");
        }
        assert_eq!(world.count(), 2);
    }
}

/// Two connections' transactions race: the one committing first wins; the other, whose reads
/// the winner changed, fails with TRANSACTION_CONFLICT at its COMMIT, nothing of it stored,
/// and its stream goes on in autocommit. A transaction whose reads were left alone commits
/// after the other writer. An outside /query writer in between counts the same.
#[test]
fn a_commit_that_lost_a_race_fails_with_nothing_applied() {
    for layout in LAYOUTS {
        let world = World::new(layout);
        world.query(&["CREATE TABLE t(x)", "CREATE TABLE other(y)"]);
        let mut a = Conn::ready(&world);
        let mut b = Conn::ready(&world);
        let mut c = Conn::ready(&world);
        for (conn, table) in [(&mut a, "t"), (&mut b, "t"), (&mut c, "other")] {
            conn.ok(json!({"type": "open_stream", "stream_id": 1}));
            conn.exec(1, "BEGIN");
            conn.exec(1, &format!("SELECT count(*) FROM {table}"));
            conn.exec(1, &format!("INSERT INTO {table} VALUES (1)"));
        }
        a.exec(1, "COMMIT");
        world.query(&["INSERT INTO t VALUES (9)"]);
        let before = world.snapshot();
        let e = b.error(json!({"type": "execute", "stream_id": 1, "stmt": {"sql": "COMMIT"}}));
        assert_eq!(e["code"], "TRANSACTION_CONFLICT", "{e}");
        assert_eq!(world.snapshot(), before, "nothing of the loser stored");
        assert_eq!(
            b.ok(json!({"type": "get_autocommit", "stream_id": 1}))["is_autocommit"],
            true
        );
        assert_eq!(value(&b.exec(1, "SELECT count(*) FROM t")), "2");
        c.exec(1, "COMMIT");
        assert_eq!(world.query(&["SELECT count(*) FROM other"])[0][0], 1.into());
        assert_eq!(world.count(), 2);
    }
}

/// A stream whose transaction is unused for the stated timeout is rolled back: it never
/// blocked another writer meanwhile, its next request is refused saying so, nothing of it is
/// stored, and close_stream still works. An idle stream without a transaction stays usable.
#[test]
fn an_abandoned_transaction_is_released_after_the_timeout() {
    let world = World::new(Layout::Incremental);
    world.query(&["CREATE TABLE t(x)"]);
    let mut conn = Conn::ready(&world);
    conn.ok(json!({"type": "open_stream", "stream_id": 1}));
    conn.ok(json!({"type": "open_stream", "stream_id": 2}));
    conn.exec(1, "BEGIN");
    conn.exec(1, "INSERT INTO t VALUES (1)");
    world.query(&["INSERT INTO t VALUES (2)"]);
    assert_eq!(world.count(), 1, "another writer was not blocked");
    conn.now_ms += STREAM_IDLE_TIMEOUT_MS / 2;
    conn.exec(2, "SELECT 1");
    conn.now_ms += STREAM_IDLE_TIMEOUT_MS / 2 + 1_000;
    let before = world.snapshot();
    let e = conn.error(json!({"type": "execute", "stream_id": 1, "stmt": {"sql": "COMMIT"}}));
    assert!(e["message"].as_str().unwrap().contains("expired"), "{e}");
    assert_eq!(world.snapshot(), before);
    assert_eq!(world.count(), 1);
    conn.exec(2, "SELECT 1");
    conn.ok(json!({"type": "close_stream", "stream_id": 1}));
    // The runtime's timer releases it without any message too.
    conn.ok(json!({"type": "open_stream", "stream_id": 3}));
    conn.exec(3, "BEGIN");
    conn.session
        .expire(conn.now_ms + STREAM_IDLE_TIMEOUT_MS + 1);
    conn.now_ms += STREAM_IDLE_TIMEOUT_MS + 1;
    let e = conn.error(json!({"type": "get_autocommit", "stream_id": 3}));
    assert!(e["message"].as_str().unwrap().contains("expired"), "{e}");
}

/// A stream's requests run one after another, in order, even when the client pipelines
/// them; different streams' run side by side, at most MAX_IN_FLIGHT at a time, the rest
/// waiting their turn and all answered.
#[test]
fn streams_run_in_order_and_side_by_side() {
    let world = World::new(Layout::Single);
    world.query(&["CREATE TABLE t(x)"]);
    let mut conn = Conn::ready(&world);
    conn.ok(json!({"type": "open_stream", "stream_id": 1}));
    let ids: Vec<i32> = (0..5)
        .map(|i| {
            conn.send(json!({"type": "execute", "stream_id": 1,
                "stmt": {"sql": format!("INSERT INTO t VALUES ({i})")}}))
        })
        .collect();
    let last = conn.send(json!({"type": "execute", "stream_id": 1,
        "stmt": {"sql": "SELECT group_concat(x) FROM t"}}));
    assert_eq!(conn.jobs.len(), 1, "one request of a stream at a time");
    conn.run();
    for id in ids {
        assert_eq!(conn.find(id).unwrap()["type"], "response_ok");
    }
    assert_eq!(value(&conn.find(last).unwrap()["response"]), "0,1,2,3,4");

    let n = MAX_IN_FLIGHT as i32 * 3;
    let mut waiting = Vec::new();
    for s in 10..10 + n {
        conn.ok(json!({"type": "open_stream", "stream_id": s}));
    }
    for s in 10..10 + n {
        waiting.push(conn.send(json!({"type": "execute", "stream_id": s,
            "stmt": {"sql": format!("INSERT INTO t VALUES ({s})")}})));
        waiting.push(conn.send(json!({"type": "close_stream", "stream_id": s})));
    }
    assert_eq!(conn.jobs.len(), MAX_IN_FLIGHT);
    assert_eq!(conn.session.running(), MAX_IN_FLIGHT);
    conn.run();
    for id in waiting {
        assert_eq!(conn.find(id).unwrap()["type"], "response_ok", "{id}");
    }
    assert_eq!(world.count(), 5 + i64::from(n));
}

/// hrana3's cursors: the batch runs as one job; fetch_cursor pages its entries (asked for
/// before the batch ran, too), says when it is done; close_cursor forgets it. hrana2 refuses
/// the v3 requests with a clear error.
#[test]
fn cursors_page_their_entries() {
    let world = World::new(Layout::Single);
    world.query(&["CREATE TABLE t(x)", "INSERT INTO t VALUES (1), (2), (3)"]);
    let mut conn = Conn::ready(&world);
    conn.ok(json!({"type": "open_stream", "stream_id": 1}));
    let open = conn.send(json!({"type": "open_cursor", "stream_id": 1, "cursor_id": 4,
        "batch": {"steps": [{"stmt": {"sql": "SELECT x FROM t"}}, {"stmt": {"sql": "SELECT nope"}}]}}));
    let first = conn.send(json!({"type": "fetch_cursor", "cursor_id": 4, "max_count": 2}));
    assert_eq!(
        conn.answer(open)["response"],
        json!({"type": "open_cursor"})
    );
    let page = conn.find(first).unwrap()["response"].clone();
    assert_eq!(page["entries"][0]["type"], "step_begin");
    assert_eq!(page["entries"][1]["row"][0]["value"], "1");
    assert_eq!(page["done"], false);
    let rest = conn.ok(json!({"type": "fetch_cursor", "cursor_id": 4, "max_count": 100}));
    let kinds: Vec<&Json> = rest["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["type"])
        .collect();
    assert_eq!(kinds, ["row", "row", "step_end", "step_error"]);
    assert_eq!(rest["done"], true);
    conn.ok(json!({"type": "close_cursor", "cursor_id": 4}));
    let e = conn.error(json!({"type": "fetch_cursor", "cursor_id": 4, "max_count": 1}));
    assert!(e["message"].as_str().unwrap().contains("not open"));

    let mut v2 = Conn::open(&world, config(), 2);
    v2.text(&json!({"type": "hello", "jwt": ADMIN}).to_string());
    v2.ok(json!({"type": "open_stream", "stream_id": 1}));
    for request in [
        json!({"type": "get_autocommit", "stream_id": 1}),
        json!({"type": "open_cursor", "stream_id": 1, "cursor_id": 1, "batch": {"steps": []}}),
    ] {
        let e = v2.error(request);
        assert!(e["message"].as_str().unwrap().contains("hrana3"), "{e}");
    }
    assert_eq!(value(&v2.exec(1, "SELECT count(*) FROM t")), "3");
}

/// The guard rails of every request hold over WebSocket: MAX_STATEMENTS counts a whole
/// transaction's statements, the step budget stops a statement and rolls the transaction
/// back (saying so), with nothing stored.
#[test]
fn guard_rails_hold() {
    let world = World::new(Layout::Single);
    world.query(&["CREATE TABLE t(x)"]);
    let limits = Limits {
        max_statements: 4,
        max_steps: 100_000,
        ..Limits::default()
    };
    let mut conn = Conn::open(&world, Config { limits, ..config() }, 3);
    conn.text(&json!({"type": "hello", "jwt": ADMIN}).to_string());
    conn.ok(json!({"type": "open_stream", "stream_id": 1}));
    conn.exec(1, "BEGIN");
    conn.exec(1, "INSERT INTO t VALUES (1)");
    conn.exec(1, "INSERT INTO t VALUES (2)");
    conn.exec(1, "INSERT INTO t VALUES (3)");
    let before = world.snapshot();
    let e = conn.error(json!({"type": "execute", "stream_id": 1, "stmt": {"sql": "COMMIT"}}));
    assert_eq!(e["code"], "TOO_MANY_STATEMENTS", "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("rolled back with it"),
        "{e}"
    );
    assert_eq!(world.snapshot(), before);
    assert_eq!(
        conn.ok(json!({"type": "get_autocommit", "stream_id": 1}))["is_autocommit"],
        true
    );
    let e = conn.error(json!({"type": "execute", "stream_id": 1, "stmt": {"sql":
        "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c) SELECT count(*) FROM c"}}));
    assert_eq!(e["code"], "CPU_BUDGET_EXCEEDED", "{e}");
    let e =
        conn.error(json!({"type": "execute", "stream_id": 1, "stmt": {"sql": "ATTACH 'x' AS y"}}));
    assert_eq!(e["code"], "STATEMENT_NOT_ALLOWED", "{e}");
    assert_eq!(world.snapshot(), before);
    assert_eq!(world.count(), 0);
}

/// A hostile client cannot grow what a connection holds without bound: a message over
/// MAX_REQUEST_BYTES closes the socket (1009); streams, stored SQL texts and queued requests
/// are capped by count, and what they hold together (with open transactions) by bytes, each
/// refusal a clear error; a transaction grown past MAX_REQUEST_BYTES is rolled back; binary
/// and non-Hrana messages close the socket.
#[test]
fn a_connection_holds_bounded_memory() {
    let world = World::new(Layout::Single);
    world.query(&["CREATE TABLE t(x)"]);
    let small = Config {
        max_request_bytes: 4096,
        ..config()
    };
    let mut conn = Conn::open(&world, small.clone(), 3);
    conn.text(&json!({"type": "hello", "jwt": ADMIN}).to_string());

    for s in 0..MAX_STREAMS as i32 {
        conn.ok(json!({"type": "open_stream", "stream_id": s}));
    }
    let e = conn.error(json!({"type": "open_stream", "stream_id": 9999}));
    assert!(
        e["message"].as_str().unwrap().contains("streams are open"),
        "{e}"
    );
    let e = conn.error(json!({"type": "open_stream", "stream_id": 0}));
    assert!(
        e["message"].as_str().unwrap().contains("already open"),
        "{e}"
    );

    // Stored SQL: by count, then by bytes (small texts first, so the count cap is reached).
    for i in 0..MAX_STORED_SQL as i32 {
        conn.ok(json!({"type": "store_sql", "sql_id": i, "sql": "SELECT 1"}));
    }
    let e = conn.error(json!({"type": "store_sql", "sql_id": -1, "sql": "SELECT 1"}));
    assert!(e["message"].as_str().unwrap().contains("close_sql"), "{e}");
    for i in 0..MAX_STORED_SQL as i32 {
        conn.ok(json!({"type": "close_sql", "sql_id": i}));
    }
    let big = format!("SELECT '{}'", "x".repeat(3000));
    let mut refused = None;
    for i in 0..100 {
        let id = conn.send(json!({"type": "store_sql", "sql_id": i, "sql": big}));
        if conn.answer(id)["type"] == "response_error" {
            refused = Some(i);
            break;
        }
    }
    let refused = refused.expect("the byte budget refuses at some point");
    assert_eq!(refused, 5, "4 x MAX_REQUEST_BYTES of stored text");
    assert!(
        conn.sent.last().unwrap()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("budget")
    );
    for i in 0..refused {
        conn.ok(json!({"type": "close_sql", "sql_id": i}));
    }

    // Queued requests: by count (without running any).
    conn.ok(json!({"type": "close_stream", "stream_id": 1}));
    let mut errors = 0;
    for _ in 0..MAX_QUEUED + 10 {
        conn.send(json!({"type": "get_autocommit", "stream_id": 0}));
        conn.send(json!({"type": "execute", "stream_id": 0, "stmt": {"sql": "SELECT 1"}}));
    }
    for m in &conn.sent {
        if m["type"] == "response_error"
            && m["error"]["message"].as_str().unwrap().contains("waiting")
        {
            errors += 1;
        }
    }
    assert!(errors > 0);
    conn.run();

    // An open transaction grown past MAX_REQUEST_BYTES is rolled back, nothing stored.
    let before = world.snapshot();
    conn.exec(2, "BEGIN");
    let insert = format!("INSERT INTO t VALUES ('{}')", "y".repeat(1500));
    conn.exec(2, &insert);
    conn.exec(2, &insert);
    let e = conn.error(json!({"type": "execute", "stream_id": 2, "stmt": {"sql": insert}}));
    assert!(
        e["message"].as_str().unwrap().contains("rolled back"),
        "{e}"
    );
    assert_eq!(
        conn.ok(json!({"type": "get_autocommit", "stream_id": 2}))["is_autocommit"],
        true
    );
    assert_eq!(world.snapshot(), before);

    // Too big a message, a binary one, a non-Hrana one: the socket closes.
    let mut big = Conn::open(&world, small.clone(), 3);
    big.text(&json!({"type": "hello", "jwt": ADMIN, "pad": "z".repeat(5000)}).to_string());
    assert_eq!(big.closed.unwrap().0, close_code::TOO_BIG);
    let mut binary = Conn::ready(&world);
    let outs = binary.session.receive_binary();
    binary.absorb(outs);
    assert_eq!(binary.closed.unwrap().0, close_code::UNSUPPORTED_DATA);
    for text in [
        "[1]",
        "not json",
        r#"{"type":"request"}"#,
        r#"{"type":"bye"}"#,
    ] {
        let mut conn = Conn::ready(&world);
        conn.text(text);
        assert_eq!(
            conn.closed.as_ref().unwrap().0,
            close_code::PROTOCOL,
            "{text}"
        );
    }
}

/// The subprotocols offered: hrana3 preferred, hrana2 accepted, anything else refused naming
/// what was offered.
#[test]
fn subprotocols() {
    assert_eq!(
        hrana_ws::negotiate(Some("hrana3-protobuf, hrana3, hrana2, hrana1")).unwrap(),
        ("hrana3", 3)
    );
    assert_eq!(hrana_ws::negotiate(Some("hrana2")).unwrap(), ("hrana2", 2));
    let e = hrana_ws::negotiate(Some("hrana1")).unwrap_err();
    assert_eq!(e.status(), 400);
    assert!(e.to_string().contains("hrana1"), "{e}");
    assert!(
        hrana_ws::negotiate(None)
            .unwrap_err()
            .to_string()
            .contains("none")
    );
}
