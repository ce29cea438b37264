//! The libSQL remote protocol (Hrana over HTTP, JSON encoding, versions 2 and 3), as the
//! published `@libsql/client` speaks it: a thin encoder around the one executor.
//!
//! The worker is stateless: every pipeline request runs against the database as loaded for
//! that request and is saved (if it changed) before the answer. So:
//! - the answer's `baton` is always `null`, and a request that sends a baton (continuing a
//!   stream) is refused;
//! - a transaction must begin and end within one pipeline request (as `batch()` does). One
//!   left open at the end is rolled back, and every result from the request that opened it
//!   on is replaced by an error (`TRANSACTION_NOT_SUPPORTED`): interactive transactions
//!   (`client.transaction()`) need a stream that outlives the request;
//! - `store_sql` ids live for the rest of the same request only;
//! - cursors (`/v3/cursor`) are not served (404).

use std::collections::HashMap;

use rusqlite::types::Value;
use serde::Deserialize;
use serde_json::{Value as Json, json};

use crate::encoding::{base64_decode, base64_encode};
use crate::error::Error;
use crate::exec::{Executor, Statement, StatementResult, sqlite_code_name};

/// The code of the error given to results of an interactive transaction.
pub const TRANSACTION_NOT_SUPPORTED: &str = "TRANSACTION_NOT_SUPPORTED";

/// A pipeline request body.
#[derive(Debug, Deserialize)]
pub struct PipelineRequest {
    /// A stream to continue; this server never hands one out.
    #[serde(default)]
    pub baton: Option<String>,
    /// The stream requests, in order.
    pub requests: Vec<StreamRequest>,
}

/// One request of a pipeline.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamRequest {
    /// End the stream.
    Close,
    /// Run one statement.
    Execute {
        /// The statement.
        stmt: HranaStmt,
    },
    /// Run steps with conditions.
    Batch {
        /// The steps.
        batch: HranaBatch,
    },
    /// Run several statements in one SQL text, without results.
    Sequence {
        /// The SQL text.
        #[serde(default)]
        sql: Option<String>,
        /// Or a stored SQL text.
        #[serde(default)]
        sql_id: Option<i32>,
    },
    /// Describe a statement without running it.
    Describe {
        /// The SQL text.
        #[serde(default)]
        sql: Option<String>,
        /// Or a stored SQL text.
        #[serde(default)]
        sql_id: Option<i32>,
    },
    /// Store a SQL text under an id.
    StoreSql {
        /// The id.
        sql_id: i32,
        /// The SQL text.
        sql: String,
    },
    /// Forget a stored SQL text.
    CloseSql {
        /// The id.
        sql_id: i32,
    },
    /// Whether no transaction is open.
    GetAutocommit,
}

/// A statement in the protocol's shape.
#[derive(Debug, Clone, Deserialize)]
pub struct HranaStmt {
    /// The SQL text.
    #[serde(default)]
    pub sql: Option<String>,
    /// Or a stored SQL text.
    #[serde(default)]
    pub sql_id: Option<i32>,
    /// Positional arguments.
    #[serde(default)]
    pub args: Vec<HranaValue>,
    /// Named arguments.
    #[serde(default)]
    pub named_args: Vec<NamedArg>,
    /// Whether to return rows.
    #[serde(default = "yes")]
    pub want_rows: bool,
}

fn yes() -> bool {
    true
}

/// A named argument.
#[derive(Debug, Clone, Deserialize)]
pub struct NamedArg {
    /// `:name`, `@name` or `$name`.
    pub name: String,
    /// Its value.
    pub value: HranaValue,
}

/// A value in the protocol's JSON shape.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HranaValue {
    /// NULL.
    Null,
    /// An integer, as a decimal string.
    Integer {
        /// The digits.
        value: String,
    },
    /// A real.
    Float {
        /// The number.
        value: f64,
    },
    /// Text.
    Text {
        /// The string.
        value: String,
    },
    /// A blob.
    Blob {
        /// Its bytes, base64.
        base64: String,
    },
}

/// Batch steps.
#[derive(Debug, Clone, Deserialize)]
pub struct HranaBatch {
    /// In order.
    pub steps: Vec<BatchStep>,
}

/// One batch step.
#[derive(Debug, Clone, Deserialize)]
pub struct BatchStep {
    /// Run only if this holds.
    #[serde(default)]
    pub condition: Option<BatchCond>,
    /// The statement.
    pub stmt: HranaStmt,
}

/// A batch step's condition.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BatchCond {
    /// Step `step` ran and succeeded.
    Ok {
        /// An earlier step.
        step: usize,
    },
    /// Step `step` ran and failed.
    Error {
        /// An earlier step.
        step: usize,
    },
    /// Negation.
    Not {
        /// The condition.
        cond: Box<BatchCond>,
    },
    /// All hold.
    And {
        /// The conditions.
        conds: Vec<BatchCond>,
    },
    /// One holds.
    Or {
        /// The conditions.
        conds: Vec<BatchCond>,
    },
    /// No transaction is open.
    IsAutocommit,
}

fn value_in(v: &HranaValue) -> Result<Value, String> {
    Ok(match v {
        HranaValue::Null => Value::Null,
        HranaValue::Integer { value } => Value::Integer(
            value
                .parse()
                .map_err(|_| format!("{value:?} is not a 64-bit integer"))?,
        ),
        HranaValue::Float { value } => Value::Real(*value),
        HranaValue::Text { value } => Value::Text(value.clone()),
        HranaValue::Blob { base64 } => Value::Blob(base64_decode(base64)?),
    })
}

/// A value in the protocol's JSON shape.
#[must_use]
pub fn value_out(v: &Value) -> Json {
    match v {
        Value::Null => json!({"type": "null"}),
        Value::Integer(n) => json!({"type": "integer", "value": n.to_string()}),
        Value::Real(f) => json!({"type": "float", "value": f}),
        Value::Text(s) => json!({"type": "text", "value": s}),
        Value::Blob(b) => json!({"type": "blob", "base64": base64_encode(b)}),
    }
}

fn stmt_result(r: &StatementResult) -> Json {
    json!({
        "cols": r.columns.iter().map(|c| json!({"name": c, "decltype": null})).collect::<Vec<_>>(),
        "rows": r.rows.iter().map(|row| row.iter().map(value_out).collect::<Vec<_>>()).collect::<Vec<_>>(),
        "affected_row_count": r.changes,
        "last_insert_rowid": r.last_insert_rowid.to_string(),
    })
}

/// A protocol error object: `{"message", "code"}`.
#[must_use]
pub fn error_json(e: &Error) -> Json {
    let code = match e {
        Error::SqlError {
            sqlite_code: Some(code),
            ..
        } => (*code).to_owned(),
        other => other.code().to_ascii_uppercase(),
    };
    let message = match e {
        Error::SqlError { message, .. } => message.clone(),
        other => other.body().error.message,
    };
    json!({"message": message, "code": code})
}

/// Errors that stop the whole pipeline (the guard rails): nothing of it is saved.
fn is_guard_rail(e: &Error) -> bool {
    matches!(
        e,
        Error::StatementNotAllowed { .. }
            | Error::CpuBudgetExceeded { .. }
            | Error::MemoryBudgetExceeded { .. }
            | Error::DatabaseFull { .. }
            | Error::ResultTooLarge { .. }
            | Error::CorruptDatabase(_)
            | Error::Internal { .. }
    )
}

/// Parses a pipeline body; refuses batons and counts statements against the limit.
///
/// # Errors
/// [`Error::InvalidRequest`] or [`Error::TooManyStatements`].
pub fn parse(body: &[u8], max_statements: usize) -> Result<Vec<StreamRequest>, Error> {
    let request: PipelineRequest =
        serde_json::from_slice(body).map_err(|e| Error::InvalidRequest {
            reason: format!("not a libSQL pipeline request: {e}"),
        })?;
    if request.baton.is_some() {
        return Err(Error::InvalidRequest {
            reason: "this server keeps no streams between requests, so there is no baton to \
                     continue; interactive transactions are not supported (use batch())"
                .into(),
        });
    }
    let count: usize = request
        .requests
        .iter()
        .map(|r| match r {
            // A describe prepares its statement: it costs like one.
            StreamRequest::Execute { .. }
            | StreamRequest::Sequence { .. }
            | StreamRequest::Describe { .. } => 1,
            StreamRequest::Batch { batch } => batch.steps.len(),
            _ => 0,
        })
        .sum();
    if count > max_statements {
        return Err(Error::TooManyStatements {
            count,
            max: max_statements,
        });
    }
    Ok(request.requests)
}

/// Runs a pipeline's requests on one database and returns the `results` array.
pub struct Runner<'e, 'c> {
    exec: &'e mut Executor<'c>,
    stored: HashMap<i32, String>,
    /// Statement index across the whole pipeline, for guard-rail errors.
    next_index: usize,
}

impl<'e, 'c> Runner<'e, 'c> {
    /// A runner over an executor with client-controlled transactions.
    pub fn new(exec: &'e mut Executor<'c>) -> Self {
        Self {
            exec,
            stored: HashMap::new(),
            next_index: 0,
        }
    }

    fn sql_of(&self, sql: Option<&String>, sql_id: Option<i32>) -> Result<String, Error> {
        match (sql, sql_id) {
            (Some(sql), None) => Ok(sql.clone()),
            (None, Some(id)) => {
                self.stored
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| Error::InvalidRequest {
                        reason: format!("sql_id {id} was not stored in this request"),
                    })
            }
            _ => Err(Error::InvalidRequest {
                reason: "a statement needs exactly one of sql and sql_id".into(),
            }),
        }
    }

    fn statement(&self, s: &HranaStmt) -> Result<Statement, Error> {
        let bad = |reason: String| Error::InvalidRequest { reason };
        Ok(Statement {
            sql: self.sql_of(s.sql.as_ref(), s.sql_id)?,
            args: s
                .args
                .iter()
                .map(value_in)
                .collect::<Result<_, _>>()
                .map_err(bad)?,
            named_args: s
                .named_args
                .iter()
                .map(|a| value_in(&a.value).map(|v| (a.name.clone(), v)))
                .collect::<Result<_, _>>()
                .map_err(bad)?,
        })
    }

    fn execute(&mut self, s: &HranaStmt) -> Result<StatementResult, Error> {
        let index = self.next_index;
        self.next_index += 1;
        let stmt = self.statement(s)?;
        self.exec.execute(index, &stmt, s.want_rows)
    }

    fn cond(&self, c: &BatchCond, outcomes: &[Option<bool>]) -> bool {
        match c {
            BatchCond::Ok { step } => outcomes.get(*step).copied().flatten() == Some(true),
            BatchCond::Error { step } => outcomes.get(*step).copied().flatten() == Some(false),
            BatchCond::Not { cond } => !self.cond(cond, outcomes),
            BatchCond::And { conds } => conds.iter().all(|c| self.cond(c, outcomes)),
            BatchCond::Or { conds } => conds.iter().any(|c| self.cond(c, outcomes)),
            BatchCond::IsAutocommit => self.exec.is_autocommit(),
        }
    }

    fn batch(&mut self, batch: &HranaBatch) -> Result<Json, Error> {
        let mut outcomes: Vec<Option<bool>> = Vec::with_capacity(batch.steps.len());
        let mut results = Vec::with_capacity(batch.steps.len());
        let mut errors = Vec::with_capacity(batch.steps.len());
        for step in &batch.steps {
            if let Some(cond) = &step.condition
                && !self.cond(cond, &outcomes)
            {
                outcomes.push(None);
                results.push(Json::Null);
                errors.push(Json::Null);
                continue;
            }
            match self.execute(&step.stmt) {
                Ok(r) => {
                    outcomes.push(Some(true));
                    results.push(stmt_result(&r));
                    errors.push(Json::Null);
                }
                Err(e) if is_guard_rail(&e) => return Err(e),
                Err(e) => {
                    outcomes.push(Some(false));
                    results.push(Json::Null);
                    errors.push(error_json(&e));
                }
            }
        }
        Ok(json!({"step_results": results, "step_errors": errors}))
    }

    fn describe(&mut self, sql: &str) -> Result<Json, Error> {
        let conn = self.exec.conn();
        let stmt = conn.prepare(sql).map_err(|e| Error::SqlError {
            statement: self.next_index,
            message: e.to_string(),
            sqlite_code: sqlite_code_name(&e),
        })?;
        let params: Vec<Json> = (1..=stmt.parameter_count())
            .map(|i| json!({"name": stmt.parameter_name(i)}))
            .collect();
        let cols: Vec<Json> = stmt
            .column_names()
            .map(|name| json!({"name": name, "decltype": null}))
            .collect();
        Ok(json!({
            "params": params,
            "cols": cols,
            "is_explain": stmt.is_explain() > 0,
            "is_readonly": stmt.readonly(),
        }))
    }

    fn one(&mut self, request: &StreamRequest) -> Result<Json, Error> {
        Ok(match request {
            StreamRequest::Close => json!({"type": "close"}),
            StreamRequest::Execute { stmt } => {
                json!({"type": "execute", "result": stmt_result(&self.execute(stmt)?)})
            }
            StreamRequest::Batch { batch } => {
                json!({"type": "batch", "result": self.batch(batch)?})
            }
            StreamRequest::Sequence { sql, sql_id } => {
                let sql = self.sql_of(sql.as_ref(), *sql_id)?;
                let index = self.next_index;
                self.next_index += 1;
                self.exec.execute_sequence(index, &sql)?;
                json!({"type": "sequence"})
            }
            StreamRequest::Describe { sql, sql_id } => {
                let sql = self.sql_of(sql.as_ref(), *sql_id)?;
                json!({"type": "describe", "result": self.describe(&sql)?})
            }
            StreamRequest::StoreSql { sql_id, sql } => {
                self.stored.insert(*sql_id, sql.clone());
                json!({"type": "store_sql"})
            }
            StreamRequest::CloseSql { sql_id } => {
                self.stored.remove(sql_id);
                json!({"type": "close_sql"})
            }
            StreamRequest::GetAutocommit => {
                json!({"type": "get_autocommit", "is_autocommit": self.exec.is_autocommit()})
            }
        })
    }

    /// Runs every request and returns the `results` array. A guard rail stops the whole
    /// pipeline with its error; any other failure is that request's error result.
    pub fn run(&mut self, requests: &[StreamRequest]) -> Result<Vec<Json>, Error> {
        let mut results = Vec::with_capacity(requests.len());
        // The request after which a transaction stayed open, if one did.
        let mut opened_at = None;
        for (i, request) in requests.iter().enumerate() {
            let was_autocommit = self.exec.is_autocommit();
            let result = match self.one(request) {
                Ok(response) => json!({"type": "ok", "response": response}),
                Err(e) if is_guard_rail(&e) => return Err(e),
                Err(e) => json!({"type": "error", "error": error_json(&e)}),
            };
            results.push(result);
            match (was_autocommit, self.exec.is_autocommit()) {
                (true, false) => opened_at = Some(i),
                (_, true) => opened_at = None,
                _ => {}
            }
        }
        if let Some(first) = opened_at.or((!self.exec.is_autocommit()).then_some(0)) {
            self.exec.run_own("ROLLBACK")?;
            let error = json!({
                "message": "interactive transactions are not supported: this worker keeps no \
                            stream open between HTTP requests, so the transaction was rolled \
                            back; send it as one batch() instead",
                "code": TRANSACTION_NOT_SUPPORTED,
            });
            for result in &mut results[first..] {
                *result = json!({"type": "error", "error": error.clone()});
            }
        }
        Ok(results)
    }
}

#[cfg(test)]
mod tests {
    #[cfg(all(target_family = "wasm", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::exec::{Limits, Transactions};
    use crate::sqlite;

    fn run(conn: &mut rusqlite::Connection, body: Json) -> Result<Vec<Json>, Error> {
        let requests = parse(body.to_string().as_bytes(), 100)?;
        let mut exec = Executor::new(conn, Limits::default(), Transactions::Client)?;
        Runner::new(&mut exec).run(&requests)
    }

    fn exec_req(sql: &str, args: Json) -> Json {
        json!({"type": "execute", "stmt": {"sql": sql, "args": args, "want_rows": true}})
    }

    /// Every protocol value type round-trips through a table.
    #[test]
    fn execute_round_trips_values() {
        let mut conn = sqlite::create().unwrap();
        let values = json!([
            {"type": "null"},
            {"type": "integer", "value": "9223372036854775807"},
            {"type": "float", "value": 1.5},
            {"type": "text", "value": "héllo"},
            {"type": "blob", "base64": "AAEC/w=="}
        ]);
        let results = run(
            &mut conn,
            json!({"requests": [
                exec_req("CREATE TABLE t(a, b, c, d, e)", json!([])),
                exec_req("INSERT INTO t VALUES (?, ?, ?, ?, ?)", values.clone()),
                exec_req("SELECT * FROM t", json!([])),
                {"type": "close"}
            ]}),
        )
        .unwrap();
        assert_eq!(results[1]["response"]["result"]["affected_row_count"], 1);
        assert_eq!(results[1]["response"]["result"]["last_insert_rowid"], "1");
        let row = &results[2]["response"]["result"]["rows"][0];
        assert_eq!(row, &values);
        assert_eq!(results[3]["response"]["type"], "close");
    }

    /// A batch the way `@libsql/client` sends it: BEGIN, statements each conditional on the
    /// previous, COMMIT, and ROLLBACK if the commit did not succeed. A failing statement
    /// skips the rest and rolls back.
    #[test]
    fn batch_with_conditions() {
        let mut conn = sqlite::create().unwrap();
        conn.execute_batch("CREATE TABLE t(x UNIQUE)").unwrap();
        let batch = |second: &str| {
            json!({"requests": [{"type": "batch", "batch": {"steps": [
                {"stmt": {"sql": "BEGIN DEFERRED"}},
                {"condition": {"type": "ok", "step": 0}, "stmt": {"sql": "INSERT INTO t VALUES (1)"}},
                {"condition": {"type": "ok", "step": 1}, "stmt": {"sql": second}},
                {"condition": {"type": "ok", "step": 2}, "stmt": {"sql": "COMMIT"}},
                {"condition": {"type": "not", "cond": {"type": "ok", "step": 3}}, "stmt": {"sql": "ROLLBACK"}}
            ]}}, {"type": "close"}]})
        };
        let failed = run(&mut conn, batch("INSERT INTO t VALUES (1)")).unwrap();
        let result = &failed[0]["response"]["result"];
        assert!(
            result["step_errors"][2]["message"]
                .as_str()
                .unwrap()
                .contains("UNIQUE"),
            "{result}"
        );
        assert_eq!(result["step_errors"][2]["code"], "SQLITE_CONSTRAINT");
        assert!(result["step_results"][3].is_null() && result["step_errors"][3].is_null());
        assert!(!result["step_results"][4].is_null());
        let n: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
        let ok = run(&mut conn, batch("INSERT INTO t VALUES (2)")).unwrap();
        assert!(
            ok[0]["response"]["result"]["step_errors"]
                .as_array()
                .unwrap()
                .iter()
                .all(Json::is_null)
        );
        let n: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2);
    }

    /// A transaction left open at the end of the pipeline is rolled back and reported as
    /// unsupported, from the request that opened it on; earlier requests keep their results.
    #[test]
    fn interactive_transactions_are_refused() {
        let mut conn = sqlite::create().unwrap();
        let results = run(
            &mut conn,
            json!({"requests": [
                exec_req("CREATE TABLE t(x)", json!([])),
                exec_req("BEGIN", json!([])),
                exec_req("INSERT INTO t VALUES (1)", json!([])),
                {"type": "get_autocommit"}
            ]}),
        )
        .unwrap();
        assert_eq!(results[0]["type"], "ok");
        for r in &results[1..] {
            assert_eq!(r["error"]["code"], TRANSACTION_NOT_SUPPORTED, "{r}");
        }
        assert!(conn.is_autocommit());
        let n: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
        let err = parse(br#"{"baton": "abc", "requests": []}"#, 100).unwrap_err();
        assert_eq!(err.code(), "invalid_request");
    }

    /// sequence, describe, store_sql/close_sql and get_autocommit answer in the protocol's
    /// shapes; a SQL error is that request's error, not the pipeline's; a guard rail stops it.
    #[test]
    fn other_requests() {
        let mut conn = sqlite::create().unwrap();
        let results = run(
            &mut conn,
            json!({"requests": [
                {"type": "sequence", "sql": "CREATE TABLE t(x); INSERT INTO t VALUES (1);"},
                {"type": "store_sql", "sql_id": 1, "sql": "SELECT x FROM t WHERE x = :x"},
                {"type": "describe", "sql_id": 1},
                {"type": "execute", "stmt": {"sql_id": 1, "named_args": [{"name": ":x", "value": {"type": "integer", "value": "1"}}]}},
                {"type": "close_sql", "sql_id": 1},
                {"type": "execute", "stmt": {"sql_id": 1}},
                exec_req("SELECT nope", json!([])),
                {"type": "get_autocommit"}
            ]}),
        )
        .unwrap();
        assert_eq!(results[0]["response"]["type"], "sequence");
        let d = &results[2]["response"]["result"];
        assert_eq!(d["params"][0]["name"], ":x");
        assert_eq!(d["is_readonly"], true);
        assert_eq!(results[3]["response"]["result"]["rows"][0][0]["value"], "1");
        assert_eq!(results[5]["type"], "error");
        assert_eq!(results[6]["error"]["code"], "SQLITE_ERROR");
        assert_eq!(results[7]["response"]["is_autocommit"], true);
        let err = run(
            &mut conn,
            json!({"requests": [exec_req("ATTACH 'x' AS y", json!([]))]}),
        )
        .unwrap_err();
        assert_eq!(err.code(), "statement_not_allowed");
        let err = parse(
            json!({"requests": [exec_req("SELECT 1", json!([])), exec_req("SELECT 1", json!([]))]})
                .to_string()
                .as_bytes(),
            1,
        )
        .unwrap_err();
        assert_eq!(err.code(), "too_many_statements");
    }
}
