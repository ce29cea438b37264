//! The libSQL remote protocol (Hrana over HTTP, JSON encoding: v2 and v3 pipelines, the v3
//! cursor, and v1's `execute` and `batch`), as the published clients speak it: a thin encoder
//! around the one executor. Streams that outlive a request (batons) are `stream`'s.

use std::collections::BTreeMap;

use rusqlite::types::Value;
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};

use crate::encoding::{base64_decode, base64_encode};
use crate::error::Error;
use crate::exec::{
    Columns, Executor, HRANA_VALUE_COST_BYTES, ResultBuilder, Statement, sqlite_code_name,
};

/// A pipeline request body.
#[derive(Debug, Deserialize)]
pub struct PipelineRequest {
    /// The stream to continue (`None`: open a new one).
    #[serde(default)]
    pub baton: Option<String>,
    /// The stream requests, in order.
    pub requests: Vec<StreamRequest>,
}

/// A cursor request body (`v3/cursor`).
#[derive(Debug, Deserialize)]
pub struct CursorRequest {
    /// The stream to continue (`None`: open a new one).
    #[serde(default)]
    pub baton: Option<String>,
    /// The batch whose entries are streamed.
    pub batch: HranaBatch,
}

/// One request of a pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedArg {
    /// `:name`, `@name` or `$name`.
    pub name: String,
    /// Its value.
    pub value: HranaValue,
}

/// A value in the protocol's JSON shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HranaBatch {
    /// In order.
    pub steps: Vec<BatchStep>,
}

/// One batch step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchStep {
    /// Run only if this holds.
    #[serde(default)]
    pub condition: Option<BatchCond>,
    /// The statement.
    pub stmt: HranaStmt,
}

/// A batch step's condition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

/// A value in the protocol's JSON shape (text moves in, not copied).
#[must_use]
pub fn value_out(v: Value) -> Json {
    match v {
        Value::Null => json!({"type": "null"}),
        Value::Integer(n) => json!({"type": "integer", "value": n.to_string()}),
        Value::Real(f) => json!({"type": "float", "value": f}),
        Value::Text(s) => json!({"type": "text", "value": s}),
        Value::Blob(b) => json!({"type": "blob", "base64": base64_encode(&b)}),
    }
}

/// The protocol's builder: a statement's `StmtResult`, its rows encoded as the executor
/// reads them (the D1 shape's is `exec::D1Result`).
#[derive(Debug, Default)]
pub struct HranaResult {
    rows: Vec<Json>,
}

impl ResultBuilder for HranaResult {
    type Output = Json;
    const VALUE_COST_BYTES: u64 = HRANA_VALUE_COST_BYTES;

    fn row(&mut self, values: Vec<Value>) {
        self.rows
            .push(Json::Array(values.into_iter().map(value_out).collect()));
    }

    fn finish(self, (columns, decltypes): Columns, changes: u64, last_insert_rowid: i64) -> Json {
        let cols: Vec<Json> = columns
            .into_iter()
            // A backend that cannot tell declared types may give fewer than the columns.
            .zip(decltypes.into_iter().chain(std::iter::repeat(None)))
            .map(|(name, decltype)| json!({"name": name, "decltype": decltype}))
            .collect();
        json!({
            "cols": cols,
            "rows": self.rows,
            "affected_row_count": changes,
            "last_insert_rowid": last_insert_rowid.to_string(),
        })
    }
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

/// Statements a stream request runs, for `MAX_STATEMENTS`.
#[must_use]
pub fn statement_count(requests: &[StreamRequest]) -> usize {
    requests
        .iter()
        .map(|r| match r {
            // A describe prepares its statement: it costs like one.
            StreamRequest::Execute { .. }
            | StreamRequest::Sequence { .. }
            | StreamRequest::Describe { .. } => 1,
            StreamRequest::Batch { batch } => batch.steps.len(),
            _ => 0,
        })
        .sum()
}

fn too_many(count: usize, max_statements: usize) -> Result<(), Error> {
    if count > max_statements {
        return Err(Error::TooManyStatements {
            count,
            max: max_statements,
        });
    }
    Ok(())
}

fn from_json<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, Error> {
    serde_json::from_slice(body).map_err(|e| Error::InvalidRequest {
        reason: format!("not a libSQL {what}: {e}"),
    })
}

/// Parses a pipeline body and counts its statements against the limit.
///
/// # Errors
/// [`Error::InvalidRequest`] or [`Error::TooManyStatements`].
pub fn parse(body: &[u8], max_statements: usize) -> Result<PipelineRequest, Error> {
    let request: PipelineRequest = from_json(body, "pipeline request")?;
    too_many(statement_count(&request.requests), max_statements)?;
    Ok(request)
}

/// Parses a `v3/cursor` body and counts its statements against the limit.
///
/// # Errors
/// [`Error::InvalidRequest`] or [`Error::TooManyStatements`].
pub fn parse_cursor(body: &[u8], max_statements: usize) -> Result<CursorRequest, Error> {
    let request: CursorRequest = from_json(body, "cursor request")?;
    too_many(request.batch.steps.len(), max_statements)?;
    Ok(request)
}

/// Parses a Hrana v1 body (`{"stmt"}` for `v1/execute`, `{"batch"}` for `v1/batch`) into the
/// one stream request it stands for.
///
/// # Errors
/// [`Error::InvalidRequest`] or [`Error::TooManyStatements`].
pub fn parse_v1(body: &[u8], batch: bool, max_statements: usize) -> Result<StreamRequest, Error> {
    #[derive(Deserialize)]
    struct Execute {
        stmt: HranaStmt,
    }
    #[derive(Deserialize)]
    struct Batch {
        batch: HranaBatch,
    }
    let request = if batch {
        let Batch { batch } = from_json(body, "v1 batch request")?;
        StreamRequest::Batch { batch }
    } else {
        let Execute { stmt } = from_json(body, "v1 execute request")?;
        StreamRequest::Execute { stmt }
    };
    too_many(
        statement_count(std::slice::from_ref(&request)),
        max_statements,
    )?;
    Ok(request)
}

/// Runs a stream's requests on one database.
pub struct Runner<'e, 'c> {
    exec: &'e mut Executor<'c>,
    stored: BTreeMap<i32, String>,
    /// Statement index across the whole pipeline, for guard-rail errors.
    next_index: usize,
}

impl<'e, 'c> Runner<'e, 'c> {
    /// A runner over an executor with client-controlled transactions, with the SQL texts
    /// the stream has stored so far.
    pub fn new(exec: &'e mut Executor<'c>, stored: BTreeMap<i32, String>) -> Self {
        Self {
            exec,
            stored,
            next_index: 0,
        }
    }

    /// The SQL texts stored on the stream now.
    #[must_use]
    pub fn stored(&self) -> &BTreeMap<i32, String> {
        &self.stored
    }

    /// Whether no transaction is open.
    #[must_use]
    pub fn is_autocommit(&self) -> bool {
        self.exec.is_autocommit()
    }

    /// The connection's last inserted rowid.
    #[must_use]
    pub fn last_insert_rowid(&self) -> i64 {
        self.exec.last_insert_rowid()
    }

    /// Sets the connection's last inserted rowid (a stream's, restored).
    pub fn set_last_insert_rowid(&mut self, rowid: i64) {
        self.exec.set_last_insert_rowid(rowid);
    }

    /// Rolls back an open transaction (the stream's state lives in its baton, not here).
    pub fn rollback(&mut self) -> Result<(), Error> {
        if !self.exec.is_autocommit() {
            self.exec.run_own("ROLLBACK")?;
        }
        Ok(())
    }

    fn sql_of(&self, sql: Option<&String>, sql_id: Option<i32>) -> Result<String, Error> {
        match (sql, sql_id) {
            (Some(sql), None) => Ok(sql.clone()),
            (None, Some(id)) => {
                self.stored
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| Error::InvalidRequest {
                        reason: format!("sql_id {id} was not stored on this stream"),
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

    /// Runs a statement into its `StmtResult`.
    fn execute(&mut self, s: &HranaStmt) -> Result<Json, Error> {
        let index = self.next_index;
        self.next_index += 1;
        let stmt = self.statement(s)?;
        self.exec
            .execute(index, &stmt, s.want_rows, HranaResult::default())
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
                    results.push(r);
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
            .columns()
            .map(|c| json!({"name": c.name(), "decltype": c.decl_type()}))
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
                json!({"type": "execute", "result": self.execute(stmt)?})
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

    /// Runs one request and returns its `StreamResult` (`ok` or `error`). A guard rail
    /// stops the whole stream call with its error instead.
    pub fn request(&mut self, request: &StreamRequest) -> Result<Json, Error> {
        Ok(match self.one(request) {
            Ok(response) => json!({"type": "ok", "response": response}),
            Err(e) if is_guard_rail(&e) => return Err(e),
            Err(e) => json!({"type": "error", "error": error_json(&e)}),
        })
    }

    /// Runs a batch as a cursor and returns its entries: `step_begin`, `row`s and `step_end`
    /// per executed step, `step_error` for a failed one. A guard rail stops it with its error.
    pub fn cursor(&mut self, batch: &HranaBatch) -> Result<Vec<Json>, Error> {
        let mut outcomes: Vec<Option<bool>> = Vec::with_capacity(batch.steps.len());
        let mut entries = Vec::new();
        for (step, s) in batch.steps.iter().enumerate() {
            if let Some(cond) = &s.condition
                && !self.cond(cond, &outcomes)
            {
                outcomes.push(None);
                continue;
            }
            match self.execute(&s.stmt) {
                Ok(result) => {
                    outcomes.push(Some(true));
                    entries
                        .push(json!({"type": "step_begin", "step": step, "cols": result["cols"]}));
                    if let Json::Array(rows) = &result["rows"] {
                        entries.extend(rows.iter().map(|row| json!({"type": "row", "row": row})));
                    }
                    entries.push(json!({
                        "type": "step_end",
                        "affected_row_count": result["affected_row_count"],
                        "last_insert_rowid": result["last_insert_rowid"],
                    }));
                }
                Err(e) if is_guard_rail(&e) => return Err(e),
                Err(e) => {
                    outcomes.push(Some(false));
                    entries
                        .push(json!({"type": "step_error", "step": step, "error": error_json(&e)}));
                }
            }
        }
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    #[cfg(all(target_family = "wasm", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::exec::Limits;
    use crate::pipeline::Work;
    use crate::sqlite;
    use crate::stream::{Call, Stream};

    /// Runs a pipeline body on a new stream.
    fn run(conn: &mut rusqlite::Connection, body: Json) -> Result<Vec<Json>, Error> {
        let request = parse(body.to_string().as_bytes(), 100)?;
        let mut work = Stream {
            user: "u".into(),
            state: None,
            call: Call::Pipeline(request.requests),
            limits: Limits::default(),
            now_ms: 0,
        };
        Ok(work.run(conn)?.results)
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

    /// Results carry each column's declared type (null for an expression), in execute,
    /// batch, cursor and describe alike.
    #[test]
    fn decltypes() {
        let mut conn = sqlite::create().unwrap();
        conn.execute_batch("CREATE TABLE t(i INTEGER, s TEXT, d DATETIME, n)")
            .unwrap();
        let results = run(
            &mut conn,
            json!({"requests": [
                exec_req("SELECT i, s, d, n, 1 + 1 AS e FROM t", json!([])),
                {"type": "describe", "sql": "SELECT s, d FROM t"}
            ]}),
        )
        .unwrap();
        let cols = &results[0]["response"]["result"]["cols"];
        let types: Vec<&Json> = (0..5).map(|i| &cols[i]["decltype"]).collect();
        assert_eq!(
            types,
            [
                &json!("INTEGER"),
                &json!("TEXT"),
                &json!("DATETIME"),
                &Json::Null,
                &Json::Null
            ]
        );
        assert_eq!(
            results[1]["response"]["result"]["cols"][1]["decltype"],
            "DATETIME"
        );
    }

    /// A read batch as `@libsql/client` sends it (`BEGIN TRANSACTION READONLY`, which SQLite
    /// reads as a transaction named READONLY) refuses writes with `SQLITE_READONLY`, as sqld
    /// does, and stores nothing; after it ends, writes work again.
    #[test]
    fn read_batch_refuses_writes() {
        let mut conn = sqlite::create().unwrap();
        conn.execute_batch("CREATE TABLE t(x)").unwrap();
        let read_batch = |sql: &str| {
            json!({"requests": [{"type": "batch", "batch": {"steps": [
                {"stmt": {"sql": "BEGIN TRANSACTION READONLY"}},
                {"condition": {"type": "ok", "step": 0}, "stmt": {"sql": sql}},
                {"condition": {"type": "ok", "step": 1}, "stmt": {"sql": "COMMIT"}},
                {"condition": {"type": "not", "cond": {"type": "ok", "step": 2}}, "stmt": {"sql": "ROLLBACK"}}
            ]}}, {"type": "close"}]})
        };
        let refused = run(&mut conn, read_batch("INSERT INTO t VALUES (1)")).unwrap();
        let result = &refused[0]["response"]["result"];
        assert_eq!(
            result["step_errors"][1]["code"], "SQLITE_READONLY",
            "{result}"
        );
        let read = run(&mut conn, read_batch("SELECT count(*) FROM t")).unwrap();
        assert_eq!(
            read[0]["response"]["result"]["step_results"][1]["rows"][0][0]["value"],
            "0"
        );
        // The client cannot switch it off inside, and it does not outlive the transaction.
        let escape = run(&mut conn, read_batch("PRAGMA query_only = 0"));
        assert_eq!(escape.unwrap_err().code(), "statement_not_allowed");
        run(
            &mut conn,
            json!({"requests": [exec_req("INSERT INTO t VALUES (2)", json!([]))]}),
        )
        .unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
        let query_only: bool = conn
            .query_row("PRAGMA query_only", [], |r| r.get(0))
            .unwrap();
        assert!(!query_only);
    }

    /// v1 bodies are one request each; a cursor body is a batch; limits count their steps.
    #[test]
    fn v1_and_cursor_bodies() {
        let execute = parse_v1(br#"{"stmt": {"sql": "SELECT 1"}}"#, false, 10).unwrap();
        assert!(matches!(execute, StreamRequest::Execute { .. }));
        let batch = parse_v1(
            br#"{"batch": {"steps": [{"stmt": {"sql": "SELECT 1"}}, {"stmt": {"sql": "SELECT 2"}}]}}"#,
            true,
            10,
        )
        .unwrap();
        assert!(matches!(batch, StreamRequest::Batch { .. }));
        let err = parse_v1(br#"{"stmt": {"sql": "SELECT 1"}}"#, true, 10).unwrap_err();
        assert_eq!(err.code(), "invalid_request");
        let err = parse_cursor(
            br#"{"baton": null, "batch": {"steps": [{"stmt": {"sql": "SELECT 1"}}, {"stmt": {"sql": "SELECT 2"}}]}}"#,
            1,
        )
        .unwrap_err();
        assert_eq!(err.code(), "too_many_statements");
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
