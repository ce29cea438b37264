//! The one executor: runs the client's statements on an open database with the guard rails
//! on, for every protocol. Rows stream into a [`ResultBuilder`], one per wire format (as in
//! sqld's `query_result_builder.rs`): [`D1Result`] builds `POST /query`'s D1-shaped
//! [`StatementResult`], `hrana::HranaResult` the libSQL protocol's `StmtResult`.
//!
//! Guard rails, enforced here once:
//! - an authorizer refuses what would escape the user's database or change how it is stored
//!   (ATTACH/DETACH, `VACUUM INTO`, `PRAGMA writable_schema`, journal-mode and locking-mode
//!   changes, `PRAGMA schema_version` writes, `load_extension`), and transaction control where
//!   the executor owns the transaction;
//! - a progress handler interrupts the request past its budget of SQLite virtual-machine steps,
//!   counted across all its statements (a CPU budget that works on deployed Workers, whose clock
//!   stands still during computation);
//! - SQLite's own limits bound what one step can do: the longest string or blob
//!   ([`MAX_VALUE_BYTES`]) and the longest LIKE/GLOB pattern ([`MAX_LIKE_PATTERN_BYTES`]);
//! - the result is counted by what it costs in memory (payload plus a measured cost per value
//!   and per row for the format being built, [`ResultBuilder::VALUE_COST_BYTES`]) while rows
//!   are read, across the request, before each row reaches the builder: the cap is checked
//!   here once, for every format.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::limits::Limit;
use rusqlite::types::Value;
use serde::{Deserialize, Serialize};

use crate::error::{Corruption, Error};

/// Default most statements per request (`MAX_STATEMENTS`): above the batches of a few
/// thousand statements libSQL clients send; the CPU and result budgets do the protecting.
pub const DEFAULT_MAX_STATEMENTS: usize = 5000;
/// Default largest result per request (`MAX_RESULT_BYTES`): well inside the isolate's memory
/// next to a database at `MAX_DB_BYTES`.
pub const DEFAULT_MAX_RESULT_BYTES: u64 = 8 * 1024 * 1024;
/// Default CPU budget per request (`QUERY_MAX_STEPS`), in SQLite virtual-machine steps,
/// counted across all of a request's statements: sized so that a request spending all of it
/// delays another user's request in the same isolate by less than a second, measured in local
/// workerd on a loaded machine (`cargo bench --features e2e --bench neighbour`); about 0.05 s
/// natively on a quiet one (58,000 steps per ms, `cargo bench --bench sqlite_ops`). A scan of
/// a few hundred thousand rows fits.
pub const DEFAULT_QUERY_MAX_STEPS: u64 = 3_000_000;
/// Longest string or blob SQLite may build or read (`SQLITE_LIMIT_LENGTH`): one value of a
/// request can never take more memory than this (D1 allows 2 MB).
pub const MAX_VALUE_BYTES: i32 = 4 * 1024 * 1024;
/// Longest LIKE or GLOB pattern (`SQLITE_LIMIT_LIKE_PATTERN_LENGTH`, SQLite's default 50,000):
/// one LIKE is a single VM step whose cost grows with the pattern's wildcards times the text,
/// so the step budget cannot see it; with this limit one over the longest text stays near
/// 100 ms (`cargo bench --bench sqlite_ops`, "worst single LIKE").
pub const MAX_LIKE_PATTERN_BYTES: i32 = 64;
/// Bytes charged against the result cap for each value beyond its payload, when the answer is
/// `/query`'s JSON: the `Value` in its row, its `serde_json` form and its text.
pub const QUERY_VALUE_COST_BYTES: u64 = 64;
/// The same for the libSQL protocol, whose encoder builds a JSON object per value.
pub const HRANA_VALUE_COST_BYTES: u64 = 640;
/// Bytes charged for each row beyond its values (the row's vectors in both encodings).
const ROW_COST_BYTES: u64 = 64;
/// Text and blob payloads are charged this many times over: the value, its JSON form (base64
/// for blobs) and the answer's text (where escapes can make text up to six times longer).
const PAYLOAD_FACTOR: u64 = 3;

/// How often (in VM steps) the progress handler runs; the budget is counted in these units.
const PROGRESS_EVERY_STEPS: u64 = 10_000;

/// One statement of a request, with its parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    /// The SQL text: exactly one statement.
    pub sql: String,
    /// Positional parameters (`?`, `?NNN`), in order.
    pub args: Vec<Value>,
    /// Named parameters (`:name`, `@name`, `$name`); the prefix may be left out.
    pub named_args: Vec<(String, Value)>,
}

impl Statement {
    /// Whether the statement's first keyword makes it a write (`INSERT`, `UPDATE`, `DELETE`,
    /// `REPLACE`, `CREATE`, `DROP`, `ALTER`), after any comments; anything else (a read, a
    /// `WITH`, a `PRAGMA`, a transaction statement) is not known to write.
    #[must_use]
    pub fn writes(&self) -> bool {
        const WRITES: [&str; 7] = [
            "INSERT", "UPDATE", "DELETE", "REPLACE", "CREATE", "DROP", "ALTER",
        ];
        let word: String = skip_comments(&self.sql)
            .chars()
            .take_while(char::is_ascii_alphabetic)
            .collect();
        WRITES.iter().any(|w| w.eq_ignore_ascii_case(&word))
    }

    /// A statement without parameters.
    #[must_use]
    pub fn new(sql: impl Into<String>) -> Self {
        Self {
            sql: sql.into(),
            args: Vec::new(),
            named_args: Vec::new(),
        }
    }
}

/// What one statement returned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatementResult {
    /// Column names, in order.
    pub columns: Vec<String>,
    /// Each column's declared type (`sqlite3_column_decltype`), `None` for expressions. The
    /// libSQL protocol carries them; the `/query` shape does not.
    #[serde(skip, default)]
    pub decltypes: Vec<Option<String>>,
    /// Rows, each with one value per column.
    #[serde(
        serialize_with = "crate::encoding::serialize_rows",
        deserialize_with = "crate::encoding::deserialize_rows"
    )]
    pub rows: Vec<Vec<Value>>,
    /// Rows inserted, updated or deleted by this statement (not counting triggers).
    pub changes: u64,
    /// The connection's last inserted rowid after this statement.
    #[serde(
        serialize_with = "crate::encoding::serialize_integer",
        deserialize_with = "crate::encoding::deserialize_integer"
    )]
    pub last_insert_rowid: i64,
}

/// The guard-rail limits of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most statements in one request.
    pub max_statements: usize,
    /// Largest total result, in bytes of memory: three times the text and blob bytes, plus
    /// the format's cost per value ([`ResultBuilder::VALUE_COST_BYTES`]) and a fixed cost per
    /// row.
    pub max_result_bytes: u64,
    /// Most SQLite virtual-machine steps the whole request may take.
    pub max_steps: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_statements: DEFAULT_MAX_STATEMENTS,
            max_result_bytes: DEFAULT_MAX_RESULT_BYTES,
            max_steps: DEFAULT_QUERY_MAX_STEPS,
        }
    }
}

/// Who owns transaction control while statements run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transactions {
    /// The executor wraps the whole request in one transaction; the client may not begin,
    /// commit or roll back (savepoints are fine).
    Executor,
    /// The client sends BEGIN/COMMIT itself (the libSQL protocol).
    Client,
}

#[derive(Debug, Default)]
struct GuardState {
    refusal: Mutex<Option<String>>,
    ticks: AtomicU64,
    over_budget: AtomicBool,
    /// Set while a plain `VACUUM` runs: it attaches a temporary database internally.
    vacuum: AtomicBool,
    client_transactions: AtomicBool,
    /// A `BEGIN TRANSACTION READONLY` is open (`query_only` is on until it ends).
    read_only: AtomicBool,
    /// The executor's own SQL is running: nothing is refused.
    own: AtomicBool,
}

/// An open database with the guard rails installed; dropping it removes them, so a cached
/// connection serves the next request clean.
pub struct Executor<'c> {
    conn: &'c mut Connection,
    limits: Limits,
    state: Arc<GuardState>,
    result_bytes: u64,
}

impl std::fmt::Debug for Executor<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("limits", &self.limits)
            .field("result_bytes", &self.result_bytes)
            .finish_non_exhaustive()
    }
}

fn refusal(action: &AuthAction<'_>) -> Option<String> {
    const LOCKED_PRAGMAS: &[&str] = &[
        "writable_schema",
        "journal_mode",
        "locking_mode",
        "schema_version",
    ];
    // Settings of the whole isolate (every user's requests), the size cap itself, and where
    // temporary data lives (SQLite's heap, under its limit).
    const WORKER_PRAGMAS: &[&str] = &[
        "hard_heap_limit",
        "soft_heap_limit",
        "max_page_count",
        "temp_store",
    ];
    match action {
        AuthAction::Attach { .. } => Some(
            "ATTACH would reach outside this user's database (and VACUUM INTO writes a copy elsewhere)"
                .into(),
        ),
        AuthAction::Detach { .. } => Some("DETACH is not allowed".into()),
        AuthAction::Pragma {
            pragma_name,
            pragma_value: Some(_),
        } if LOCKED_PRAGMAS
            .iter()
            .any(|p| p.eq_ignore_ascii_case(pragma_name)) =>
        {
            Some(format!(
                "PRAGMA {pragma_name} would change how the database is stored"
            ))
        }
        AuthAction::Pragma {
            pragma_name,
            pragma_value: Some(_),
        } if WORKER_PRAGMAS
            .iter()
            .any(|p| p.eq_ignore_ascii_case(pragma_name)) =>
        {
            Some(format!(
                "PRAGMA {pragma_name} is a limit the worker sets for every request; it cannot \
                 be changed"
            ))
        }
        AuthAction::Function { function_name } if function_name.eq_ignore_ascii_case("load_extension") => {
            Some("loading extensions is not allowed".into())
        }
        _ => None,
    }
}

/// Whether `sql` is `BEGIN TRANSACTION READONLY` (any case, optional `;`).
fn is_begin_read_only(sql: &str) -> bool {
    let words: Vec<&str> = sql
        .trim()
        .trim_end_matches(';')
        .split_ascii_whitespace()
        .collect();
    matches!(&words[..], [b, t, r] if b.eq_ignore_ascii_case("begin")
        && t.eq_ignore_ascii_case("transaction")
        && r.eq_ignore_ascii_case("readonly"))
}

/// The first keyword of `sql` and whether the statement contains `INTO` (for VACUUM INTO).
fn vacuum_kind(sql: &str) -> Option<bool> {
    let mut words = sql
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty());
    let first = words.next()?;
    first
        .eq_ignore_ascii_case("vacuum")
        .then(|| words.any(|w| w.eq_ignore_ascii_case("into")))
}

impl<'c> Executor<'c> {
    /// Installs the guard rails on `conn`.
    pub fn new(
        conn: &'c mut Connection,
        limits: Limits,
        transactions: Transactions,
    ) -> Result<Self, Error> {
        // Per connection, and a cached copy is reopened for every request, so these hold for
        // this request whatever an earlier one did.
        conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)?;
        conn.set_limit(
            Limit::SQLITE_LIMIT_LIKE_PATTERN_LENGTH,
            MAX_LIKE_PATTERN_BYTES,
        )?;
        let state = Arc::new(GuardState::default());
        state
            .client_transactions
            .store(transactions == Transactions::Client, Ordering::Relaxed);
        let auth_state = Arc::clone(&state);
        conn.authorizer(Some(move |ctx: AuthContext<'_>| {
            if auth_state.own.load(Ordering::Relaxed)
                || matches!(ctx.action, AuthAction::Attach { filename: "" })
                    && auth_state.vacuum.load(Ordering::Relaxed)
            {
                return Authorization::Allow;
            }
            let reason = match ctx.action {
                AuthAction::Transaction { .. }
                    if !auth_state.client_transactions.load(Ordering::Relaxed) =>
                {
                    Some(
                        "BEGIN, COMMIT and ROLLBACK are not allowed: the whole request already \
                         runs as one transaction (SAVEPOINT works)"
                            .into(),
                    )
                }
                AuthAction::Pragma {
                    pragma_name,
                    pragma_value: Some(_),
                } if pragma_name.eq_ignore_ascii_case("query_only")
                    && auth_state.read_only.load(Ordering::Relaxed) =>
                {
                    Some("a read-only transaction stays read-only until it ends".into())
                }
                ref action => refusal(action),
            };
            match reason {
                Some(reason) => {
                    if let Ok(mut slot) = auth_state.refusal.lock() {
                        slot.get_or_insert(reason);
                    }
                    Authorization::Deny
                }
                None => Authorization::Allow,
            }
        }))?;
        let progress_state = Arc::clone(&state);
        let max_ticks = limits.max_steps / PROGRESS_EVERY_STEPS;
        conn.progress_handler(
            i32::try_from(PROGRESS_EVERY_STEPS).unwrap_or(i32::MAX),
            Some(move || {
                let ticks = progress_state.ticks.fetch_add(1, Ordering::Relaxed) + 1;
                let over = ticks > max_ticks;
                if over {
                    progress_state.over_budget.store(true, Ordering::Relaxed);
                }
                over
            }),
        )?;
        Ok(Self {
            conn,
            limits,
            state,
            result_bytes: 0,
        })
    }

    /// The connection, for work outside the guard rails' accounting (BEGIN/COMMIT of the
    /// executor's own transaction, listing tables).
    pub fn conn(&mut self) -> &mut Connection {
        self.conn
    }

    /// Runs the executor's own SQL (its transaction control), bypassing the client rules.
    pub fn run_own(&mut self, sql: &str) -> Result<(), Error> {
        let client = self.state.client_transactions.swap(true, Ordering::Relaxed);
        let result = self.conn.execute_batch(sql);
        self.state
            .client_transactions
            .store(client, Ordering::Relaxed);
        Ok(result?)
    }

    /// Prepares the guard state for a statement. The step count is not reset: the budget is
    /// the request's, so many statements cannot each spend a whole one.
    fn begin_statement(&self, sql: &str) {
        if let Ok(mut slot) = self.state.refusal.lock() {
            *slot = None;
        }
        self.state
            .vacuum
            .store(vacuum_kind(sql) == Some(false), Ordering::Relaxed);
    }

    /// Runs statement `index` of the request, building its result with `builder` (its rows
    /// only if `want_rows`).
    pub fn execute<R: ResultBuilder>(
        &mut self,
        index: usize,
        stmt: &Statement,
        want_rows: bool,
        builder: R,
    ) -> Result<R::Output, Error> {
        self.begin_statement(&stmt.sql);
        let mut backend = SqliteBackend {
            conn: &*self.conn,
            state: &self.state,
        };
        let result = run_statement(
            &mut backend,
            &self.limits,
            &mut self.result_bytes,
            index,
            stmt,
            want_rows,
            builder,
        );
        self.track_read_only(&stmt.sql, result.is_ok())?;
        result
    }

    /// Keeps `PRAGMA query_only` on from a successful `BEGIN TRANSACTION READONLY` until the
    /// transaction ends. SQLite reads `READONLY` there as the transaction's name; libSQL
    /// clients open read batches and read transactions with it and expect writes refused
    /// (`SQLITE_READONLY`), as sqld does.
    fn track_read_only(&mut self, sql: &str, ran: bool) -> Result<(), Error> {
        let was = self.state.read_only.load(Ordering::Relaxed);
        let now = if ran && is_begin_read_only(sql) {
            true
        } else {
            was && !self.conn.is_autocommit()
        };
        if now != was {
            self.state.own.store(true, Ordering::Relaxed);
            let result = self.conn.pragma_update(None, "query_only", now);
            self.state.own.store(false, Ordering::Relaxed);
            result?;
            self.state.read_only.store(now, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Runs a string of several statements without results (the libSQL `sequence`).
    pub fn execute_sequence(&mut self, index: usize, sql: &str) -> Result<(), Error> {
        if vacuum_kind(sql) == Some(true) {
            return Err(Error::StatementNotAllowed {
                statement: index,
                reason: "VACUUM INTO writes a copy of the database elsewhere".into(),
            });
        }
        self.begin_statement(sql);
        let result = self.conn.execute_batch(sql);
        self.track_read_only("", result.is_ok())?;
        let limits = self.limits;
        result.map_err(|e| {
            let guard = SqliteBackend {
                conn: &*self.conn,
                state: &self.state,
            }
            .guard();
            sqlite_error(index, guard, &limits, sqlite_code_name(&e), sql_message(&e))
        })
    }

    /// Whether no transaction is open.
    #[must_use]
    pub fn is_autocommit(&self) -> bool {
        self.conn.is_autocommit()
    }

    /// The connection's last inserted rowid.
    #[must_use]
    pub fn last_insert_rowid(&self) -> i64 {
        self.conn.last_insert_rowid()
    }

    /// Sets what `last_insert_rowid()` reports until the next insert: a libSQL stream starts
    /// at 0, as a fresh connection does, whichever request used the cached connection last.
    pub fn set_last_insert_rowid(&mut self, rowid: i64) {
        // SAFETY: the handle is this open connection's, used on this thread only, and the
        // call only sets an integer SQLite keeps per connection.
        unsafe { rusqlite::ffi::sqlite3_set_last_insert_rowid(self.conn.handle(), rowid) };
    }

    /// The guard-rail limits in force.
    #[must_use]
    pub fn limits(&self) -> Limits {
        self.limits
    }
}

impl Drop for Executor<'_> {
    fn drop(&mut self) {
        // Removing hooks cannot fail in practice; a cached connection keeps them otherwise,
        // which would only make later requests stricter.
        let _ = self
            .conn
            .authorizer(None::<fn(AuthContext<'_>) -> Authorization>);
        let _ = self.conn.progress_handler(0, None::<fn() -> bool>);
        if self.state.read_only.load(Ordering::Relaxed) {
            let _ = self.conn.pragma_update(None, "query_only", false);
        }
    }
}

/// How a statement failed in a [`Backend`], before [`sqlite_error`] maps it.
#[derive(Debug)]
pub enum Failure {
    /// SQLite refused or failed the statement.
    Sqlite {
        /// SQLite's primary result code name (`SQLITE_CONSTRAINT`, ...), when known.
        code: Option<&'static str>,
        /// SQLite's message.
        message: String,
    },
    /// Already what the client should see (a parameter that cannot be bound, the result cap,
    /// a number the backend cannot carry exactly).
    Request(Error),
}

/// What the guard rails saw while a statement ran, for mapping its failure.
#[derive(Debug, Default)]
pub struct Guard {
    /// The authorizer's reason, if it refused something.
    pub refusal: Option<String>,
    /// The step budget ran out.
    pub over_budget: bool,
    /// The database's size cap (SQLITE_FULL means a write reached it), where the worker set
    /// one.
    pub size_cap_bytes: Option<u64>,
    /// SQLite runs under the worker's heap limit (SQLITE_NOMEM means a statement reached it).
    pub heap_limited: bool,
}

/// A statement's column names and declared types (`None` for expressions, or where the
/// backend cannot tell).
pub type Columns = (Vec<String>, Vec<Option<String>>);

/// Where a backend hands a statement's rows, so the result cap holds while they are read: a
/// row and each of its values are charged before the values are copied out of the database.
pub trait RowSink {
    /// Charges a new row.
    fn row(&mut self) -> Result<(), Error>;
    /// Charges one of its values, looked at where it lies.
    fn value(&mut self, value: rusqlite::types::ValueRef<'_>) -> Result<(), Error>;
    /// Hands the charged row's values on.
    fn keep(&mut self, row: Vec<Value>);
}

/// Builds one statement's result in a wire format while the executor reads its rows, as
/// sqld's `QueryResultBuilder` does. Each format has one: [`D1Result`] (`/query` and the
/// Durable Object route) and `hrana::HranaResult` (the libSQL protocol). A builder only
/// encodes: every row it gets has been charged against the request's result cap already
/// ([`run_statement`]).
pub trait ResultBuilder {
    /// The statement's result in this format.
    type Output;
    /// What one value costs in memory beyond its payload in this format (its share of the
    /// row's vector and of the encoded JSON), charged against the result cap.
    const VALUE_COST_BYTES: u64;
    /// Takes a row's values.
    fn row(&mut self, values: Vec<Value>);
    /// Ends the statement: its column names and declared types, the rows it changed and the
    /// connection's last inserted rowid.
    fn finish(self, columns: Columns, changes: u64, last_insert_rowid: i64) -> Self::Output;
}

/// The D1 shape's builder: the rows of a [`StatementResult`].
#[derive(Debug, Default)]
pub struct D1Result {
    rows: Vec<Vec<Value>>,
}

impl ResultBuilder for D1Result {
    type Output = StatementResult;
    const VALUE_COST_BYTES: u64 = QUERY_VALUE_COST_BYTES;

    fn row(&mut self, values: Vec<Value>) {
        self.rows.push(values);
    }

    fn finish(
        self,
        (columns, decltypes): Columns,
        changes: u64,
        last_insert_rowid: i64,
    ) -> StatementResult {
        StatementResult {
            columns,
            decltypes,
            rows: self.rows,
            changes,
            last_insert_rowid,
        }
    }
}

/// A statement's rows on their way to `builder`, each charged first against `limits` into
/// `used` (the request's result size so far).
struct Charged<'a, R> {
    used: &'a mut u64,
    limits: &'a Limits,
    builder: R,
}

impl<R: ResultBuilder> RowSink for Charged<'_, R> {
    fn row(&mut self) -> Result<(), Error> {
        add(self.used, self.limits.max_result_bytes, ROW_COST_BYTES)
    }
    fn value(&mut self, value: rusqlite::types::ValueRef<'_>) -> Result<(), Error> {
        let cost = R::VALUE_COST_BYTES + payload_cost(value);
        add(self.used, self.limits.max_result_bytes, cost)
    }
    fn keep(&mut self, row: Vec<Value>) {
        self.builder.row(row);
    }
}

/// A database the executor runs statements on: a rusqlite connection (the R2 route) or the
/// Durable Object's SQL storage. Everything else (the statement rules, the result cap,
/// `changes`, the step budget's error, how a failure maps to an answer) is the executor's,
/// the same for both ([`run_statement`]).
pub trait Backend {
    /// Prepares `stmt`, binds its parameters and runs it to its end, handing each row to
    /// `rows` (read only when `want_rows`); returns the column names and declared types. A
    /// step budget that runs out stops the statement with a failure, and [`Backend::guard`]
    /// says so.
    fn run(
        &mut self,
        index: usize,
        stmt: &Statement,
        want_rows: bool,
        rows: &mut dyn RowSink,
    ) -> Result<Columns, Failure>;
    /// The connection's (total changes, changes by the last statement, last inserted rowid).
    fn counters(&mut self) -> Result<[i64; 3], Error>;
    /// What the guard rails saw during the last statement.
    fn guard(&mut self) -> Guard;
}

/// Runs statement `index` of a request on `backend` under `limits`, streaming its rows into
/// `builder` and counting them into `result_bytes` (the request's): the one place where a
/// statement's rules, result cap, `changes` and errors are decided, whichever database runs
/// it and whichever format it is answered in.
pub fn run_statement<B: Backend + ?Sized, R: ResultBuilder>(
    backend: &mut B,
    limits: &Limits,
    result_bytes: &mut u64,
    index: usize,
    stmt: &Statement,
    want_rows: bool,
    builder: R,
) -> Result<R::Output, Error> {
    if vacuum_kind(&stmt.sql) == Some(true) {
        return Err(Error::StatementNotAllowed {
            statement: index,
            reason: "VACUUM INTO writes a copy of the database elsewhere".into(),
        });
    }
    let [total_before, _, _] = backend.counters()?;
    let mut rows = Charged {
        used: result_bytes,
        limits,
        builder,
    };
    let ran = backend.run(index, stmt, want_rows, &mut rows);
    let columns = match ran {
        Ok(columns) => columns,
        Err(Failure::Request(e)) => return Err(e),
        Err(Failure::Sqlite { code, message }) => {
            return Err(sqlite_error(index, backend.guard(), limits, code, message));
        }
    };
    let [total, changes, last_insert_rowid] = backend.counters()?;
    // `changes()` is stale after statements that change nothing (DDL, SELECT).
    let changes = if total == total_before {
        0
    } else {
        u64::try_from(changes).unwrap_or(0)
    };
    Ok(rows.builder.finish(columns, changes, last_insert_rowid))
}

/// The one mapping of a SQLite failure of statement `index` to what the client sees, for
/// every backend: a guard rail's refusal, the step budget, a damaged database, SQLite out of
/// memory, an authorizer the worker does not own (the Durable Object's), or the statement's
/// own error.
#[must_use]
pub fn sqlite_error(
    index: usize,
    guard: Guard,
    limits: &Limits,
    code: Option<&'static str>,
    message: String,
) -> Error {
    if let Some(reason) = guard.refusal {
        return Error::StatementNotAllowed {
            statement: index,
            reason,
        };
    }
    if guard.over_budget {
        return Error::CpuBudgetExceeded {
            statement: index,
            max_steps: limits.max_steps,
        };
    }
    match code {
        Some("SQLITE_CORRUPT" | "SQLITE_NOTADB") => {
            Error::CorruptDatabase(Corruption::Contents(message))
        }
        // The worker's heap limit for SQLite (`sqlite::SQLITE_HEAP_MAX_BYTES`) was reached.
        Some("SQLITE_NOMEM") if guard.heap_limited => Error::MemoryBudgetExceeded {
            statement: index,
            max_bytes: crate::sqlite::SQLITE_HEAP_MAX_BYTES,
        },
        Some("SQLITE_NOMEM") => Error::Internal {
            detail: format!("sqlite: {message}"),
        },
        // The page cap `sqlite::cap_size` set at load.
        Some("SQLITE_FULL") if guard.size_cap_bytes.is_some() => Error::DatabaseFull {
            statement: Some(index),
            max_bytes: guard.size_cap_bytes.unwrap_or(0),
        },
        Some("SQLITE_AUTH") => Error::StatementNotAllowed {
            statement: index,
            reason: format!("the database refused it: {message}"),
        },
        _ => Error::SqlError {
            statement: index,
            message,
            sqlite_code: code,
        },
    }
}

/// A rusqlite connection with the guard rails' state, as a [`Backend`].
struct SqliteBackend<'a> {
    conn: &'a Connection,
    state: &'a GuardState,
}

fn sqlite_failure(e: &rusqlite::Error) -> Failure {
    Failure::Sqlite {
        code: sqlite_code_name(e),
        message: sql_message(e),
    }
}

impl Backend for SqliteBackend<'_> {
    fn run(
        &mut self,
        index: usize,
        stmt: &Statement,
        want_rows: bool,
        sink: &mut dyn RowSink,
    ) -> Result<Columns, Failure> {
        let mut prepared = self
            .conn
            .prepare(&stmt.sql)
            .map_err(|e| sqlite_failure(&e))?;
        bind(&mut prepared, index, stmt).map_err(Failure::Request)?;
        let (columns, decltypes): Columns = prepared
            .columns()
            .map(|c| (c.name().to_owned(), c.decl_type().map(str::to_owned)))
            .unzip();
        let ncols = columns.len();
        let mut rows = prepared.raw_query();
        while let Some(r) = rows.next().map_err(|e| sqlite_failure(&e))? {
            if !want_rows {
                continue;
            }
            sink.row().map_err(Failure::Request)?;
            let mut values = Vec::with_capacity(ncols);
            for i in 0..ncols {
                // Charged before it is copied out of SQLite (a borrowed look first), so a huge
                // result stops early instead of filling memory.
                let look = r.get_ref(i).map_err(|e| sqlite_failure(&e))?;
                sink.value(look).map_err(Failure::Request)?;
                values.push(r.get::<_, Value>(i).map_err(|e| sqlite_failure(&e))?);
            }
            sink.keep(values);
        }
        Ok((columns, decltypes))
    }

    fn counters(&mut self) -> Result<[i64; 3], Error> {
        Ok([
            i64::try_from(self.conn.total_changes()).unwrap_or(i64::MAX),
            i64::try_from(self.conn.changes()).unwrap_or(i64::MAX),
            self.conn.last_insert_rowid(),
        ])
    }

    fn guard(&mut self) -> Guard {
        Guard {
            refusal: self.state.refusal.lock().ok().and_then(|mut r| r.take()),
            over_budget: self.state.over_budget.load(Ordering::Relaxed),
            size_cap_bytes: crate::sqlite::size_cap(self.conn),
            heap_limited: true,
        }
    }
}

/// What a value costs in memory beyond `per_value` (its share of the vectors and JSON nodes):
/// its payload [`PAYLOAD_FACTOR`] times, plus twice what JSON escapes add to text (the
/// answer's buffer may hold twice its length while it grows).
fn payload_cost(value: rusqlite::types::ValueRef<'_>) -> u64 {
    use rusqlite::types::ValueRef;
    match value {
        ValueRef::Text(b) => {
            let escapes: u64 = b
                .iter()
                .map(|&c| match c {
                    b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 1,
                    0..0x20 => 5,
                    _ => 0,
                })
                .sum();
            PAYLOAD_FACTOR * b.len() as u64 + 2 * escapes
        }
        ValueRef::Blob(b) => PAYLOAD_FACTOR * b.len() as u64,
        _ => 0,
    }
}

/// Adds `bytes` to the request's result size; refuses past `max_bytes`.
fn add(used: &mut u64, max_bytes: u64, bytes: u64) -> Result<(), Error> {
    *used = used.saturating_add(bytes);
    if *used > max_bytes {
        return Err(Error::ResultTooLarge { max_bytes });
    }
    // The isolate's memory admission, for the request running now (`admission::charging`).
    crate::admission::charge_result(*used)
}

/// SQLite's primary result code names, by code.
pub const SQLITE_CODE_NAMES: [&str; 27] = [
    "SQLITE_OK",
    "SQLITE_ERROR",
    "SQLITE_INTERNAL",
    "SQLITE_PERM",
    "SQLITE_ABORT",
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_NOMEM",
    "SQLITE_READONLY",
    "SQLITE_INTERRUPT",
    "SQLITE_IOERR",
    "SQLITE_CORRUPT",
    "SQLITE_NOTFOUND",
    "SQLITE_FULL",
    "SQLITE_CANTOPEN",
    "SQLITE_PROTOCOL",
    "SQLITE_EMPTY",
    "SQLITE_SCHEMA",
    "SQLITE_TOOBIG",
    "SQLITE_CONSTRAINT",
    "SQLITE_MISMATCH",
    "SQLITE_MISUSE",
    "SQLITE_NOLFS",
    "SQLITE_AUTH",
    "SQLITE_FORMAT",
    "SQLITE_RANGE",
    "SQLITE_NOTADB",
];

/// The name of SQLite's primary result code, as the libSQL protocol reports it.
#[must_use]
pub fn sqlite_code_name(e: &rusqlite::Error) -> Option<&'static str> {
    let error = match e {
        rusqlite::Error::SqlInputError { error, .. } => error,
        other => other.sqlite_error()?,
    };
    let code = error.extended_code & 0xff;
    SQLITE_CODE_NAMES.get(usize::try_from(code).ok()?).copied()
}

/// SQLite's own message, without rusqlite's wrapping where it adds nothing.
fn sql_message(e: &rusqlite::Error) -> String {
    match e {
        rusqlite::Error::SqliteFailure(_, Some(msg))
        | rusqlite::Error::SqlInputError { msg, .. } => msg.clone(),
        rusqlite::Error::MultipleStatement => {
            "the SQL holds more than one statement; send each as its own entry".into()
        }
        other => other.to_string(),
    }
}

fn bind(
    prepared: &mut rusqlite::Statement<'_>,
    index: usize,
    stmt: &Statement,
) -> Result<(), Error> {
    let expected = prepared.parameter_count();
    let bad = |message: String| Error::SqlError {
        statement: index,
        message,
        sqlite_code: Some("SQLITE_RANGE"),
    };
    if stmt.args.len() > expected {
        return Err(bad(format!(
            "{} positional parameters given, the statement has {expected}",
            stmt.args.len()
        )));
    }
    for (i, value) in stmt.args.iter().enumerate() {
        prepared
            .raw_bind_parameter(i + 1, value)
            .map_err(|e| bad(sql_message(&e)))?;
    }
    for (name, value) in &stmt.named_args {
        let found = if name.starts_with([':', '@', '$']) {
            prepared.parameter_index(name)
        } else {
            [":", "@", "$"]
                .iter()
                .map(|p| prepared.parameter_index(&format!("{p}{name}")))
                .find(|r| !matches!(r, Ok(None)))
                .unwrap_or(Ok(None))
        }
        .map_err(|e| bad(sql_message(&e)))?;
        let Some(i) = found else {
            return Err(bad(format!(
                "the statement has no parameter named {name:?}"
            )));
        };
        prepared
            .raw_bind_parameter(i, value)
            .map_err(|e| bad(sql_message(&e)))?;
    }
    Ok(())
}

/// Runs `statements` as one transaction: all of them or none. The first failing statement
/// rolls everything back and is the error.
pub fn run_transaction(
    exec: &mut Executor<'_>,
    statements: &[Statement],
) -> Result<Vec<StatementResult>, Error> {
    if statements.len() > exec.limits().max_statements {
        return Err(Error::TooManyStatements {
            count: statements.len(),
            max: exec.limits().max_statements,
        });
    }
    exec.run_own("BEGIN IMMEDIATE")?;
    let mut results = Vec::with_capacity(statements.len());
    for (i, stmt) in statements.iter().enumerate() {
        match exec.execute(i, stmt, true, D1Result::default()) {
            Ok(r) => results.push(r),
            Err(e) => {
                // Rolling back a transaction SQLite already ended (it does on some errors)
                // fails harmlessly.
                if !exec.is_autocommit() {
                    exec.run_own("ROLLBACK")?;
                }
                return Err(e);
            }
        }
    }
    exec.run_own("COMMIT")?;
    Ok(results)
}

/// `sql` after its leading whitespace and comments (`-- ...` lines, `/* ... */` blocks).
fn skip_comments(mut sql: &str) -> &str {
    loop {
        sql = sql.trim_start();
        if let Some(rest) = sql.strip_prefix("--") {
            sql = rest.split_once('\n').map_or("", |(_, after)| after);
        } else if let Some(rest) = sql.strip_prefix("/*") {
            sql = rest.split_once("*/").map_or("", |(_, after)| after);
        } else {
            return sql;
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(all(target_family = "wasm", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::sqlite;

    /// A statement is known to write by its first keyword, comments skipped; anything else
    /// (reads, `WITH`, `PRAGMA`, transaction control) is not.
    #[test]
    fn a_statement_is_known_to_write_by_its_first_keyword() {
        for sql in [
            "INSERT INTO t VALUES (1)",
            "  insert or replace into t values (1)",
            "-- a note\n/* and a block */ UPDATE t SET n = 1",
            "delete from t",
            "REPLACE INTO t VALUES (1)",
            "CREATE TABLE u(x)",
            "drop table u",
            "ALTER TABLE t ADD c",
        ] {
            assert!(Statement::new(sql).writes(), "{sql}");
        }
        for sql in [
            "SELECT 1",
            "WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x",
            "PRAGMA user_version = 3",
            "BEGIN",
            "-- INSERT\nSELECT 1",
            "/* unterminated INSERT",
            "INSERTED",
            "",
        ] {
            assert!(!Statement::new(sql).writes(), "{sql}");
        }
    }

    fn db() -> Connection {
        let conn = sqlite::create().unwrap();
        conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
            .unwrap();
        conn
    }

    fn stmt(sql: &str, args: Vec<Value>) -> Statement {
        Statement {
            sql: sql.into(),
            args,
            named_args: vec![],
        }
    }

    fn run(conn: &mut Connection, statements: &[Statement]) -> Result<Vec<StatementResult>, Error> {
        let mut exec = Executor::new(conn, Limits::default(), Transactions::Executor)?;
        run_transaction(&mut exec, statements)
    }

    fn count(conn: &Connection) -> i64 {
        conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    /// Every SQLite value type goes in through parameters and comes back out unchanged.
    #[test]
    fn values_round_trip() {
        let mut conn = db();
        let values = vec![
            Value::Null,
            Value::Integer(i64::MAX),
            Value::Integer(-9_007_199_254_740_993),
            Value::Real(0.1),
            Value::Real(3.0),
            Value::Text("héllo \u{0} world".into()),
            Value::Blob(vec![0, 255, 1, 2]),
        ];
        let inserts: Vec<Statement> = values
            .iter()
            .map(|v| stmt("INSERT INTO t(v) VALUES (?)", vec![v.clone()]))
            .collect();
        let results = run(&mut conn, &inserts).unwrap();
        assert_eq!(results[0].changes, 1);
        assert_eq!(results[6].last_insert_rowid, 7);
        let out = run(&mut conn, &[stmt("SELECT v FROM t ORDER BY id", vec![])]).unwrap();
        assert_eq!(out[0].columns, ["v"]);
        let got: Vec<Value> = out[0].rows.iter().map(|r| r[0].clone()).collect();
        assert_eq!(got, values);
    }

    /// Named parameters bind with or without their prefix; a wrong name is the client's error.
    #[test]
    fn named_parameters() {
        let mut conn = db();
        let s = Statement {
            sql: "INSERT INTO t(id, v) VALUES (:id, @v)".into(),
            args: vec![],
            named_args: vec![
                ("id".into(), Value::Integer(5)),
                ("@v".into(), Value::Text("x".into())),
            ],
        };
        run(&mut conn, &[s]).unwrap();
        let bad = Statement {
            sql: "SELECT :a".into(),
            args: vec![],
            named_args: vec![("b".into(), Value::Null)],
        };
        let err = run(&mut conn, &[bad]).unwrap_err();
        assert_eq!(err.code(), "sql_error");
    }

    /// A failing statement rolls back the whole request, and is named by its index.
    #[test]
    fn all_or_nothing() {
        let mut conn = db();
        let err = run(
            &mut conn,
            &[
                stmt("INSERT INTO t(v) VALUES (1)", vec![]),
                stmt("INSERT INTO t(v) VALUES (2)", vec![]),
                stmt("INSERT INTO nope VALUES (3)", vec![]),
            ],
        )
        .unwrap_err();
        assert!(
            matches!(err, Error::SqlError { statement: 2, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("no such table"), "{err}");
        assert_eq!(count(&conn), 0);
        assert!(conn.is_autocommit());
    }

    /// Each guard rail refuses with its own code, and nothing of the request survives.
    #[test]
    fn guard_rails_refuse() {
        let cases = [
            ("ATTACH 'other.db' AS o", "statement_not_allowed"),
            ("DETACH main", "statement_not_allowed"),
            ("VACUUM INTO 'copy.db'", "statement_not_allowed"),
            ("PRAGMA writable_schema = ON", "statement_not_allowed"),
            ("PRAGMA journal_mode = WAL", "statement_not_allowed"),
            ("PRAGMA schema_version = 99", "statement_not_allowed"),
            ("SELECT load_extension('x')", "statement_not_allowed"),
            (
                "PRAGMA hard_heap_limit = 1000000000",
                "statement_not_allowed",
            ),
            ("PRAGMA soft_heap_limit = 1", "statement_not_allowed"),
            (
                "PRAGMA max_page_count = 1000000000",
                "statement_not_allowed",
            ),
            ("PRAGMA temp_store = FILE", "statement_not_allowed"),
            ("COMMIT", "statement_not_allowed"),
            ("BEGIN", "statement_not_allowed"),
            (
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
                "cpu_budget_exceeded",
            ),
        ];
        for (sql, code) in cases {
            let mut conn = db();
            let err = run(
                &mut conn,
                &[
                    stmt("INSERT INTO t(v) VALUES (1)", vec![]),
                    stmt(sql, vec![]),
                ],
            )
            .unwrap_err();
            // The Worker's SQLite is built without extension loading: there the function does
            // not exist at all, which refuses it just as well.
            let code = if cfg!(target_family = "wasm") && sql.contains("load_extension") {
                "sql_error"
            } else {
                code
            };
            assert_eq!(err.code(), code, "{sql}: {err}");
            assert!(err.status() >= 400 && err.status() < 500, "{sql}");
            assert_eq!(count(&conn), 0, "{sql}");
        }
        // Reading what is refused to write, plain VACUUM and savepoints are fine.
        let mut conn = db();
        run(
            &mut conn,
            &[
                stmt("PRAGMA journal_mode", vec![]),
                stmt("SAVEPOINT s", vec![]),
                stmt("INSERT INTO t(v) VALUES (1)", vec![]),
                stmt("RELEASE s", vec![]),
            ],
        )
        .unwrap();
        run(&mut conn, &[stmt("VACUUM", vec![])]).unwrap_err(); // VACUUM cannot run inside a transaction
        let mut exec = Executor::new(&mut conn, Limits::default(), Transactions::Client).unwrap();
        exec.execute(0, &stmt("VACUUM", vec![]), false, D1Result::default())
            .unwrap();
        drop(exec);
        assert_eq!(count(&conn), 1);
    }

    /// The statement and result caps are request errors with their own codes.
    #[test]
    fn caps() {
        let mut conn = db();
        let limits = Limits {
            max_statements: 2,
            max_result_bytes: 1000,
            max_steps: 1_000_000,
        };
        let mut exec = Executor::new(&mut conn, limits, Transactions::Executor).unwrap();
        let three = vec![stmt("SELECT 1", vec![]); 3];
        assert_eq!(
            run_transaction(&mut exec, &three).unwrap_err().code(),
            "too_many_statements"
        );
        let big = stmt("SELECT zeroblob(2000)", vec![]);
        assert_eq!(
            run_transaction(&mut exec, &[big]).unwrap_err().code(),
            "result_too_large"
        );
        drop(exec);
        // Hooks are removed afterwards: the connection is unrestricted for the worker itself.
        conn.execute_batch("PRAGMA journal_mode = MEMORY").unwrap();
    }

    /// The step budget is the request's: statements that each stay well inside it still
    /// trip it together, and the statement that crossed it is named.
    #[test]
    fn step_budget_is_per_request() {
        let count_to = |n: u32| {
            stmt(
                &format!(
                    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {n}) \
                     SELECT count(*) FROM c"
                ),
                vec![],
            )
        };
        let limits = Limits {
            max_steps: 2_000_000,
            ..Limits::default()
        };
        // One such statement alone fits.
        let mut conn = db();
        let mut exec = Executor::new(&mut conn, limits, Transactions::Executor).unwrap();
        run_transaction(&mut exec, &[count_to(100_000)]).unwrap();
        drop(exec);
        let mut exec = Executor::new(&mut conn, limits, Transactions::Executor).unwrap();
        let err = run_transaction(&mut exec, &vec![count_to(100_000); 10]).unwrap_err();
        assert!(
            matches!(err, Error::CpuBudgetExceeded { statement, .. } if statement > 0 && statement < 10),
            "{err:?}"
        );
    }

    /// SQLite's own limits stop memory bombs at the first step that would build a value
    /// past [`MAX_VALUE_BYTES`], and a LIKE pattern past [`MAX_LIKE_PATTERN_BYTES`], before
    /// they take the memory or the time; a refused request changes nothing. (Bombs that reach
    /// the heap limit are in `tests/memory_budget.rs`, a process of their own: the limit is
    /// process-wide.)
    #[test]
    fn values_and_patterns_are_bounded() {
        let bombs = [
            "SELECT zeroblob(100000000)",
            "SELECT length(randomblob(100000000))",
            "SELECT length(printf('%.*c', 100000000, 'x'))",
            "SELECT length(replace(hex(zeroblob(2097152)), '0', 'ab'))",
            "INSERT INTO t(v) VALUES (zeroblob(40000000))",
        ];
        for sql in bombs {
            let mut conn = db();
            let err = run(&mut conn, &[stmt(sql, vec![])]).unwrap_err();
            assert_eq!(err.code(), "sql_error", "{sql}: {err}");
            assert!(err.to_string().contains("too big"), "{sql}: {err}");
            assert_eq!(count(&conn), 0);
        }
        let mut conn = db();
        let long = format!("SELECT 'abc' LIKE '{}'", "%a".repeat(40));
        let err = run(&mut conn, &[stmt(&long, vec![])]).unwrap_err();
        assert!(err.to_string().contains("pattern too complex"), "{err}");
        let short = format!("SELECT 'abc' LIKE '{}'", "%a".repeat(32));
        run(&mut conn, &[stmt(&short, vec![])]).unwrap();
    }

    /// A write past the size cap set at load fails with 413 `database_full`, and the whole
    /// request is rolled back.
    #[test]
    fn growth_past_the_cap_is_database_full() {
        let mut conn = db();
        sqlite::cap_size(&conn, 64 * 1024).unwrap();
        let err = run(
            &mut conn,
            &[
                stmt("INSERT INTO t(v) VALUES (1)", vec![]),
                stmt("INSERT INTO t(v) VALUES (zeroblob(100000))", vec![]),
            ],
        )
        .unwrap_err();
        assert_eq!((err.status(), err.code()), (413, "database_full"), "{err}");
        assert!(err.to_string().contains("65536 bytes"), "{err}");
        assert_eq!(count(&conn), 0);
    }

    /// Results are charged by what they cost, not only by payload: many empty values trip
    /// the cap long before their payload would.
    #[test]
    fn many_small_values_are_charged() {
        let mut conn = db();
        let limits = Limits {
            max_result_bytes: 1024 * 1024,
            ..Limits::default()
        };
        let mut exec = Executor::new(&mut conn, limits, Transactions::Executor).unwrap();
        let nulls = stmt(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100000) \
             SELECT NULL FROM c",
            vec![],
        );
        assert_eq!(
            run_transaction(&mut exec, &[nulls]).unwrap_err().code(),
            "result_too_large"
        );
    }
}
