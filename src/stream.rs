//! Hrana streams over HTTP (batons) with no state on the server: the baton carries the stream.
//!
//! A baton holds the SQL texts the stream stored and, while a transaction is open, every
//! request since its `BEGIN` together with a digest of the results they gave. The next call,
//! on any isolate, loads the newest database, replays those requests and checks they give the
//! same results, then runs the new ones. The open transaction is rolled back at the end of
//! every call (nothing of it is ever saved before its `COMMIT`), and a call that commits saves
//! through the layout's usual conditional put, re-running (replay included) if another writer
//! saved first.
//!
//! So isolation is serializable and optimistic: a transaction whose replay no longer matches
//! (another writer changed something it read, or it read something that differs on every run,
//! such as `random()`) fails with [`Error::TransactionConflict`] with nothing of it written;
//! one whose replay matches commits after the other writer, exactly as if it had run then.
//! An abandoned stream holds nothing anywhere: it never blocks a writer, and its baton stops
//! being accepted [`STREAM_IDLE_TIMEOUT_MS`] after its last call.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};
use sha2::{Digest, Sha256};

use crate::encoding::{base64_decode, base64_encode};
use crate::error::Error;
use crate::exec::{Executor, Limits, Transactions};
use crate::hrana::{HranaBatch, Runner, StreamRequest, statement_count};
use crate::pipeline::Work;

/// A stream whose baton is not used for this long is gone (its transaction never committed).
pub const STREAM_IDLE_TIMEOUT_MS: u64 = 60_000;

/// One request of a stream as it ran: a pipeline request, or a batch run as a cursor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// Run as a `v3/cursor` batch (its result is the cursor's entries).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cursor: bool,
    /// The request.
    pub request: StreamRequest,
}

/// What a baton carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamState {
    /// The user whose database the stream is on.
    pub user: String,
    /// Counts the stream's calls, so that no two batons are alike.
    pub seq: u64,
    /// After this (epoch ms) the baton is refused.
    pub expires_ms: u64,
    /// The SQL texts stored on the stream when the open transaction began (now, if none is).
    pub sqls: BTreeMap<i32, String>,
    /// The stream's `last_insert_rowid` when the open transaction began (now, if none is).
    #[serde(default)]
    pub rowid: i64,
    /// The wall time (epoch ms) of the call that began the open transaction: SQLite's `'now'`
    /// reads it in every later call of the transaction, so replays see the time they saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub began_ms: Option<u64>,
    /// The requests since the open transaction began, replayed by the next call.
    pub replay: Vec<Step>,
    /// SHA-256 (hex) of the results they gave, which the replay must reproduce.
    pub digest: String,
}

impl StreamState {
    /// Whether a transaction is open (its requests are replayed by the next call).
    #[must_use]
    pub fn in_transaction(&self) -> bool {
        !self.replay.is_empty()
    }

    /// The stream with its open transaction rolled back: the SQL texts and last rowid it had
    /// when the transaction began, nothing to replay.
    #[must_use]
    pub fn rolled_back(self) -> Self {
        Self {
            began_ms: None,
            replay: Vec::new(),
            digest: digest([]),
            ..self
        }
    }
}

type HmacSha256 = Hmac<Sha256>;

/// The key batons are signed with: derived from `TOKEN_SECRET`, else `AUTH_TOKEN`. With
/// neither (anonymous local use) batons are only checksummed, which is no weaker: a baton only
/// names SQL its holder may send anyway, on a database the path and token already open.
#[must_use]
pub fn baton_key(token_secret: Option<&str>, auth_token: Option<&str>) -> Vec<u8> {
    let secret = token_secret.or(auth_token).unwrap_or("");
    format!("hrana-baton\n{secret}").into_bytes()
}

fn mac(key: &[u8], payload: &str) -> HmacSha256 {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(payload.as_bytes());
    mac
}

/// The baton for `state`: its JSON in base64, a dot, and an HMAC-SHA256 of that in base64.
#[must_use]
pub fn seal(state: &StreamState, key: &[u8]) -> String {
    let payload = base64_encode(&serde_json::to_vec(state).expect("a stream state serializes"));
    let tag = base64_encode(&mac(key, &payload).finalize().into_bytes());
    format!("{payload}.{tag}")
}

/// Opens a baton sent for `user` at `now_ms`.
///
/// # Errors
/// [`Error::InvalidRequest`] for a baton this worker did not issue, one issued for another
/// user, or one that expired.
pub fn open(baton: &str, key: &[u8], user: &str, now_ms: u64) -> Result<StreamState, Error> {
    let bad = |reason: &str| Error::InvalidRequest {
        reason: format!("baton refused: {reason}"),
    };
    let (payload, tag) = baton
        .split_once('.')
        .ok_or_else(|| bad("not a baton this server issued"))?;
    let tag = base64_decode(tag).map_err(|_| bad("not a baton this server issued"))?;
    mac(key, payload)
        .verify_slice(&tag)
        .map_err(|_| bad("its signature does not match (not issued by this server)"))?;
    let state: StreamState = base64_decode(payload)
        .ok()
        .and_then(|json| serde_json::from_slice(&json).ok())
        .ok_or_else(|| bad("not a baton this server issued"))?;
    if state.user != user {
        return Err(bad("it belongs to a stream on another database"));
    }
    if now_ms > state.expires_ms {
        return Err(bad(&format!(
            "the stream expired (unused for more than {} s); its open transaction, if any, was \
             rolled back and nothing of it was written",
            STREAM_IDLE_TIMEOUT_MS / 1000
        )));
    }
    Ok(state)
}

/// SHA-256 (hex) of a sequence of results.
fn digest<'a>(results: impl IntoIterator<Item = &'a Json>) -> String {
    let mut hasher = Sha256::new();
    for r in results {
        hasher.update(r.to_string().as_bytes());
        hasher.update(b"\n");
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What one call on a stream runs.
#[derive(Debug, Clone)]
pub enum Call {
    /// `v2/pipeline`, `v3/pipeline` (and v1, as a pipeline of one request and a close).
    Pipeline(Vec<StreamRequest>),
    /// `v3/cursor`.
    Cursor(HranaBatch),
}

/// One call on a stream: replays the baton's open transaction, then runs the call.
#[derive(Debug, Clone)]
pub struct Stream {
    /// The user (for the next baton).
    pub user: String,
    /// The stream so far; `None` opens a new one.
    pub state: Option<StreamState>,
    /// What to run.
    pub call: Call,
    /// The guard rails: `max_statements` counts the replayed statements too.
    pub limits: Limits,
    /// The wall clock now, for the next baton's expiry.
    pub now_ms: u64,
}

/// What a call produced.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamOutput {
    /// The pipeline's `StreamResult`s, or the cursor's entries.
    pub results: Vec<Json>,
    /// The stream after the call; `None` when it was closed.
    pub next: Option<StreamState>,
}

/// The result of a request after the stream was closed.
fn closed_error() -> Json {
    json!({"type": "error", "error": {
        "message": "the stream was closed by an earlier request of this pipeline",
        "code": "STREAM_CLOSED",
    }})
}

fn run_step(runner: &mut Runner<'_, '_>, step: &Step) -> Result<Json, Error> {
    match (&step.request, step.cursor) {
        (StreamRequest::Batch { batch }, true) => Ok(Json::Array(runner.cursor(batch)?)),
        (request, _) => runner.request(request),
    }
}

/// Where the open transaction began, and the stream's stored SQL texts and last rowid just
/// before it.
struct Tracker {
    began_at: Option<usize>,
    sqls_at_begin: BTreeMap<i32, String>,
    rowid_at_begin: i64,
}

impl Tracker {
    fn run(&mut self, runner: &mut Runner<'_, '_>, i: usize, step: &Step) -> Result<Json, Error> {
        let before = runner
            .is_autocommit()
            .then(|| (runner.stored().clone(), runner.last_insert_rowid()));
        let result = run_step(runner, step)?;
        if runner.is_autocommit() {
            self.began_at = None;
        } else if let Some((sqls, rowid)) = before {
            self.began_at = Some(i);
            self.sqls_at_begin = sqls;
            self.rowid_at_begin = rowid;
        }
        Ok(result)
    }
}

impl Work for Stream {
    type Output = StreamOutput;

    fn run(&mut self, conn: &mut Connection) -> Result<StreamOutput, Error> {
        let (sqls, rowid, replay, expected, seq) = match &self.state {
            Some(s) => (
                s.sqls.clone(),
                s.rowid,
                s.replay.clone(),
                s.digest.clone(),
                s.seq + 1,
            ),
            None => (BTreeMap::new(), 0, Vec::new(), digest([]), 0),
        };
        let new: Vec<Step> = match &self.call {
            Call::Pipeline(requests) => requests
                .iter()
                .map(|r| Step {
                    cursor: false,
                    request: r.clone(),
                })
                .collect(),
            Call::Cursor(batch) => vec![Step {
                cursor: true,
                request: StreamRequest::Batch {
                    batch: batch.clone(),
                },
            }],
        };
        let requests = |steps: &[Step]| steps.iter().map(|s| s.request.clone()).collect::<Vec<_>>();
        let count = statement_count(&requests(&replay)) + statement_count(&requests(&new));
        if count > self.limits.max_statements {
            return Err(Error::TooManyStatements {
                count,
                max: self.limits.max_statements,
            });
        }
        let now_ms = self
            .state
            .as_ref()
            .and_then(|s| s.began_ms)
            .unwrap_or(self.now_ms);
        let _now = crate::vfs::pin_now(now_ms);
        let mut exec = Executor::new(conn, self.limits, Transactions::Client)?;
        let mut runner = Runner::new(&mut exec, sqls.clone());
        runner.set_last_insert_rowid(rowid);
        let tracker = Tracker {
            began_at: None,
            sqls_at_begin: sqls,
            rowid_at_begin: rowid,
        };
        let result = self.steps(&mut runner, tracker, replay, &expected, new, (seq, now_ms));
        // The open transaction lives in the baton; the database goes back as committed (a
        // failed call leaves nothing of its transaction either).
        runner.rollback()?;
        result
    }
}

impl Stream {
    fn steps(
        &self,
        runner: &mut Runner<'_, '_>,
        mut tracker: Tracker,
        replay: Vec<Step>,
        expected: &str,
        new: Vec<Step>,
        (seq, now_ms): (u64, u64),
    ) -> Result<StreamOutput, Error> {
        let mut all = Vec::with_capacity(replay.len() + new.len());
        for (i, step) in replay.iter().enumerate() {
            all.push(tracker.run(runner, i, step)?);
        }
        if digest(&all) != expected {
            return Err(Error::TransactionConflict);
        }
        let mut closed = false;
        let mut results = Vec::with_capacity(new.len());
        for step in &new {
            if closed {
                results.push(closed_error());
                continue;
            }
            let result = tracker.run(runner, all.len(), step)?;
            closed = matches!(step.request, StreamRequest::Close) && result["type"] == "ok";
            all.push(result.clone());
            results.push(result);
        }
        let mut steps = replay;
        steps.extend(new);
        let next = if closed {
            None
        } else if runner.is_autocommit() {
            Some(StreamState {
                user: self.user.clone(),
                seq,
                expires_ms: self.now_ms + STREAM_IDLE_TIMEOUT_MS,
                sqls: runner.stored().clone(),
                rowid: runner.last_insert_rowid(),
                began_ms: None,
                replay: Vec::new(),
                digest: digest([]),
            })
        } else {
            let from = tracker.began_at.unwrap_or(0);
            Some(StreamState {
                user: self.user.clone(),
                seq,
                expires_ms: self.now_ms + STREAM_IDLE_TIMEOUT_MS,
                sqls: tracker.sqls_at_begin,
                rowid: tracker.rowid_at_begin,
                // Every statement of this call ran at this time, the replayed ones included.
                began_ms: Some(now_ms),
                digest: digest(&all[from..]),
                replay: steps.split_off(from),
            })
        };
        Ok(StreamOutput {
            results: if matches!(self.call, Call::Cursor(_)) {
                match results.pop() {
                    Some(Json::Array(entries)) => entries,
                    _ => Vec::new(),
                }
            } else {
                results
            },
            next,
        })
    }
}

#[cfg(test)]
mod tests {
    #[cfg(all(target_family = "wasm", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::sqlite;

    const KEY: &[u8] = b"test key";

    fn requests(body: Json) -> Vec<StreamRequest> {
        serde_json::from_value(body).unwrap()
    }

    fn exec(sql: &str) -> Json {
        json!({"type": "execute", "stmt": {"sql": sql}})
    }

    /// One call on the stream `baton` (a new one if `None`) at `now_ms`, as the worker makes
    /// it: the baton opened, the work run, the next baton sealed.
    fn call(
        conn: &mut Connection,
        baton: Option<&str>,
        body: Json,
        now_ms: u64,
    ) -> Result<(Vec<Json>, Option<String>), Error> {
        let state = baton.map(|b| open(b, KEY, "u", now_ms)).transpose()?;
        let mut work = Stream {
            user: "u".into(),
            state,
            call: Call::Pipeline(requests(body)),
            limits: Limits::default(),
            now_ms,
        };
        let out = work.run(conn)?;
        Ok((out.results, out.next.map(|s| seal(&s, KEY))))
    }

    fn count(conn: &Connection) -> i64 {
        conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    fn value(result: &Json) -> &Json {
        &result["response"]["result"]["rows"][0][0]["value"]
    }

    /// An interactive transaction over three HTTP calls: each call sees the transaction's own
    /// writes, nothing is stored until COMMIT, and the commit stores all of it.
    #[test]
    fn transaction_across_calls() {
        let mut conn = sqlite::create().unwrap();
        conn.execute_batch("CREATE TABLE t(x)").unwrap();
        let (r, baton) = call(
            &mut conn,
            None,
            json!([exec("BEGIN"), exec("INSERT INTO t VALUES (1)")]),
            0,
        )
        .unwrap();
        assert_eq!(r[1]["type"], "ok");
        assert_eq!(count(&conn), 0, "nothing stored before COMMIT");
        let (r, baton) = call(
            &mut conn,
            baton.as_deref(),
            json!([exec("INSERT INTO t VALUES (2)"), exec("SELECT count(*) FROM t"), {"type": "get_autocommit"}]),
            1000,
        )
        .unwrap();
        assert_eq!(value(&r[1]), "2");
        assert_eq!(r[2]["response"]["is_autocommit"], false);
        assert_eq!(count(&conn), 0);
        let (r, baton) = call(
            &mut conn,
            baton.as_deref(),
            json!([exec("COMMIT"), {"type": "close"}]),
            2000,
        )
        .unwrap();
        assert_eq!(r[0]["type"], "ok", "{r:?}");
        assert_eq!(baton, None, "closed");
        assert_eq!(count(&conn), 2);
    }

    /// ROLLBACK, a close with the transaction open, and an abandoned stream all leave the
    /// database as it was; the abandoned stream's baton is refused after the idle timeout.
    #[test]
    fn rollback_close_and_abandon_store_nothing() {
        let mut conn = sqlite::create().unwrap();
        conn.execute_batch("CREATE TABLE t(x)").unwrap();
        let before = sqlite::export(&mut conn).unwrap().to_vec();
        for ending in [json!([exec("ROLLBACK")]), json!([{"type": "close"}])] {
            let (_, baton) = call(
                &mut conn,
                None,
                json!([exec("BEGIN"), exec("INSERT INTO t VALUES (1)")]),
                0,
            )
            .unwrap();
            call(&mut conn, baton.as_deref(), ending, 10).unwrap();
            assert_eq!(sqlite::export(&mut conn).unwrap().to_vec(), before);
        }
        let (_, abandoned) = call(
            &mut conn,
            None,
            json!([exec("BEGIN"), exec("INSERT INTO t VALUES (1)")]),
            0,
        )
        .unwrap();
        // Meanwhile another writer is not blocked.
        conn.execute_batch("INSERT INTO t VALUES (9)").unwrap();
        let err = call(
            &mut conn,
            abandoned.as_deref(),
            json!([exec("COMMIT")]),
            STREAM_IDLE_TIMEOUT_MS + 1,
        )
        .unwrap_err();
        assert_eq!(err.code(), "invalid_request");
        assert!(err.to_string().contains("expired"), "{err}");
        assert_eq!(count(&conn), 1);
    }

    /// Another writer's commit between two calls: a transaction that read what it changed
    /// fails with `transaction_conflict` and stores nothing; one whose reads it left alone
    /// continues and commits after it (serializable, optimistic).
    #[test]
    fn concurrent_writer_between_calls() {
        let mut conn = sqlite::create().unwrap();
        conn.execute_batch("CREATE TABLE t(x); CREATE TABLE other(y); CREATE TABLE third(z)")
            .unwrap();
        let (_, reader) = call(
            &mut conn,
            None,
            json!([
                exec("BEGIN"),
                exec("SELECT count(*) FROM t"),
                exec("INSERT INTO t VALUES (1)")
            ]),
            0,
        )
        .unwrap();
        let (_, blind) = call(
            &mut conn,
            None,
            json!([
                exec("BEGIN"),
                exec("SELECT count(*) FROM t"),
                exec("INSERT INTO other VALUES (1)")
            ]),
            0,
        )
        .unwrap();
        conn.execute_batch("INSERT INTO third VALUES (2)").unwrap();
        let (r, _) = call(&mut conn, blind.as_deref(), json!([exec("COMMIT")]), 5).unwrap();
        assert_eq!(r[0]["type"], "ok");
        let both: i64 = conn
            .query_row(
                "SELECT (SELECT count(*) FROM other) + (SELECT count(*) FROM third)",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(both, 2);
        conn.execute_batch("INSERT INTO t VALUES (5)").unwrap();
        let before = sqlite::export(&mut conn).unwrap().to_vec();
        let err = call(&mut conn, reader.as_deref(), json!([exec("COMMIT")]), 5).unwrap_err();
        assert_eq!((err.status(), err.code()), (409, "transaction_conflict"));
        assert_eq!(sqlite::export(&mut conn).unwrap().to_vec(), before);
        assert!(conn.is_autocommit());
    }

    /// Batons are bound to their user and signature; a stored SQL text and a cursor work
    /// across calls; every baton differs from the one before.
    #[test]
    fn batons() {
        let mut conn = sqlite::create().unwrap();
        conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (7)")
            .unwrap();
        let (_, baton) = call(
            &mut conn,
            None,
            json!([{"type": "store_sql", "sql_id": 3, "sql": "SELECT x FROM t"}]),
            0,
        )
        .unwrap();
        let baton = baton.unwrap();
        let (r, next) = call(
            &mut conn,
            Some(&baton),
            json!([{"type": "execute", "stmt": {"sql_id": 3}}]),
            1,
        )
        .unwrap();
        assert_eq!(value(&r[0]), "7");
        assert_ne!(next.as_deref(), Some(baton.as_str()));
        let state = open(&baton, KEY, "u", 1).unwrap();
        let mut work = Stream {
            user: "u".into(),
            state: Some(state),
            call: Call::Cursor(
                serde_json::from_value(json!({"steps": [
                    {"stmt": {"sql_id": 3}}, {"stmt": {"sql": "SELECT nope"}}
                ]}))
                .unwrap(),
            ),
            limits: Limits::default(),
            now_ms: 1,
        };
        let entries = work.run(&mut conn).unwrap().results;
        let kinds: Vec<&Json> = entries.iter().map(|e| &e["type"]).collect();
        assert_eq!(kinds, ["step_begin", "row", "step_end", "step_error"]);
        assert_eq!(entries[1]["row"][0]["value"], "7");
        assert_eq!(entries[3]["step"], 1);
        let other_user = open(&baton, KEY, "v", 1).unwrap_err();
        assert!(other_user.to_string().contains("another database"));
        let forged = open(&baton, b"other key", "u", 1).unwrap_err();
        assert!(forged.to_string().contains("signature"));
        let (payload, _) = baton.split_once('.').unwrap();
        assert_eq!(
            open(payload, KEY, "u", 1).unwrap_err().code(),
            "invalid_request"
        );
    }

    /// The statement limit counts the replayed statements too, so a transaction cannot grow
    /// past it one call at a time.
    #[test]
    fn limit_counts_the_transaction() {
        let mut conn = sqlite::create().unwrap();
        conn.execute_batch("CREATE TABLE t(x)").unwrap();
        let limits = Limits {
            max_statements: 3,
            ..Limits::default()
        };
        let mut baton = None;
        let mut last = Ok(());
        for (i, body) in [
            json!([exec("BEGIN")]),
            json!([exec("SELECT 1")]),
            json!([exec("SELECT 2")]),
            json!([exec("SELECT 3")]),
        ]
        .into_iter()
        .enumerate()
        {
            let state = baton.as_deref().map(|b| open(b, KEY, "u", 0).unwrap());
            let mut work = Stream {
                user: "u".into(),
                state,
                call: Call::Pipeline(requests(body)),
                limits,
                now_ms: 0,
            };
            match work.run(&mut conn) {
                Ok(out) => baton = out.next.map(|s| seal(&s, KEY)),
                Err(e) => {
                    assert_eq!(i, 3);
                    last = Err(e);
                }
            }
        }
        assert_eq!(last.unwrap_err().code(), "too_many_statements");
    }

    /// SQLite's current time inside an interactive transaction is the time of the call that
    /// began it, in every later call too, so a replay gives what the client saw; a new
    /// transaction reads the clock again.
    #[test]
    fn time_is_pinned_for_the_transaction() {
        let mut conn = sqlite::create().unwrap();
        let (r, baton) = call(
            &mut conn,
            None,
            json!([
                exec("BEGIN"),
                exec("SELECT unixepoch('now', 'subsec') * 1000")
            ]),
            1_700_000_000_000,
        )
        .unwrap();
        assert_eq!(value(&r[1]), 1_700_000_000_000.0);
        let (r, baton) = call(
            &mut conn,
            baton.as_deref(),
            json!([exec("SELECT CAST(unixepoch() AS TEXT)"), exec("COMMIT")]),
            1_700_000_050_000,
        )
        .unwrap();
        assert_eq!(value(&r[0]), "1700000000");
        let (r, _) = call(
            &mut conn,
            baton.as_deref(),
            json!([exec("SELECT CAST(unixepoch() AS TEXT)")]),
            1_700_000_051_000,
        )
        .unwrap();
        assert_eq!(value(&r[0]), "1700000051");
    }
}
