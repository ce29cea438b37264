//! The one error type, and the one place it becomes an HTTP status and JSON body.
//!
//! Each variant's name is its `error.code` in snake case, so the code a client sees names the
//! variant that produced it.

use serde::Serialize;

use crate::header::HeaderProblem;
use crate::storage::StoreError;

/// Everything that can stop a request.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Error {
    /// The `user` query parameter (or path segment) is not a valid user id.
    InvalidUser {
        /// What is wrong with it, safe to show the client.
        reason: String,
    },
    /// A query parameter other than `user` has a value the worker does not accept.
    InvalidParameter {
        /// The parameter.
        name: &'static str,
        /// What is wrong, safe to show.
        reason: String,
    },
    /// The request body is not what the route accepts.
    InvalidRequest {
        /// What is wrong, safe to show.
        reason: String,
    },
    /// sqld's replication protocol (embedded replicas), which this worker does not serve.
    ReplicationNotSupported,
    /// A plain request where only a WebSocket upgrade is served (`/db/<user>/`).
    UpgradeRequired {
        /// What the client must send, safe to show.
        reason: String,
    },
    /// No route matches the path.
    NotFound {
        /// The path that was asked for.
        path: String,
    },
    /// The user has no data where the route looks for it.
    UserNotFound {
        /// The user.
        user: String,
        /// Where the route looked (`R2` or `the Durable Object`).
        place: &'static str,
    },
    /// The path exists but not for this method.
    MethodNotAllowed {
        /// The method that was used.
        method: String,
        /// The methods the path accepts, for the `Allow` header.
        allow: &'static str,
    },
    /// No valid bearer token was presented.
    Unauthorized {
        /// What was wrong, safe to show.
        reason: String,
    },
    /// A valid token that does not open this user's database.
    Forbidden {
        /// What was wrong, safe to show.
        reason: String,
    },
    /// No `AUTH_TOKEN` is configured and anonymous access is not enabled.
    AuthNotConfigured,
    /// A var or secret has a value the worker cannot use.
    Misconfigured {
        /// Which setting and why; logged, not shown.
        detail: String,
    },
    /// The request body is larger than `MAX_REQUEST_BYTES`.
    RequestTooLarge {
        /// The body's size.
        size_bytes: u64,
        /// The limit in force.
        max_bytes: u64,
    },
    /// The request holds more statements than `MAX_STATEMENTS`.
    TooManyStatements {
        /// Statements in the request.
        count: usize,
        /// The limit in force.
        max: usize,
    },
    /// The results would be larger than `MAX_RESULT_BYTES`.
    ResultTooLarge {
        /// The limit in force.
        max_bytes: u64,
    },
    /// A statement ran past the `QUERY_MAX_STEPS` budget and was interrupted.
    CpuBudgetExceeded {
        /// Index of the statement in the request.
        statement: usize,
        /// The budget in force, in SQLite virtual-machine steps.
        max_steps: u64,
    },
    /// A statement needed more memory than SQLite may use in this isolate
    /// (`sqlite::SQLITE_HEAP_MAX_BYTES`) and was stopped.
    MemoryBudgetExceeded {
        /// Index of the statement in the request.
        statement: usize,
        /// The limit in force.
        max_bytes: u64,
    },
    /// The isolate's other requests hold the memory this one needs (`admission`), and it did
    /// not come free in time; nothing was written. Retry after `Retry-After`.
    MemoryBusy {
        /// Bytes the request needed next.
        needed_bytes: u64,
        /// Bytes the isolate's other requests held.
        in_use_bytes: u64,
        /// What requests may hold together.
        capacity_bytes: u64,
    },
    /// A write would make the database larger than `MAX_DB_BYTES`; nothing was stored.
    DatabaseFull {
        /// Index of the statement that would have grown it, when one statement did.
        statement: Option<usize>,
        /// The limit in force (a database stored before the limit keeps its own size).
        max_bytes: u64,
    },
    /// A statement would escape the user's database or change how it is stored.
    StatementNotAllowed {
        /// Index of the statement in the request.
        statement: usize,
        /// What it tried, safe to show.
        reason: String,
    },
    /// A statement of the request failed (syntax, constraint, missing table, ...).
    SqlError {
        /// Index of the statement in the request.
        statement: usize,
        /// SQLite's message.
        message: String,
        /// SQLite's primary result code name (`SQLITE_CONSTRAINT`, ...), when SQLite failed.
        sqlite_code: Option<&'static str>,
    },
    /// The stored database is larger than `MAX_DB_BYTES`; nothing was downloaded.
    DatabaseTooLarge {
        /// The object's size.
        size_bytes: u64,
        /// The limit in force.
        max_bytes: u64,
    },
    /// The stored object is not a database SQLite can open.
    CorruptDatabase(Corruption),
    /// The object kept changing in the store between our read and our write, every time the
    /// request ran until the retry deadline; nothing was written (503, `Retry-After`).
    Conflict {
        /// How many times the request ran before giving up.
        attempts: u32,
    },
    /// A libSQL stream's open transaction no longer gives the results it gave (another
    /// writer changed what it read); it was rolled back, nothing of it written.
    TransactionConflict,
    /// The user's database is being moved between R2 and their Durable Object; nothing was
    /// written.
    Migrating,
    /// `PUT /import` with a file that is not a database the worker would load; nothing was
    /// written.
    InvalidUpload {
        /// What is wrong with the file, safe to show.
        reason: String,
    },
    /// `PUT /import` while the user is being moved: the file cannot replace a database in
    /// transit; nothing was written.
    MoveInProgress,
    /// `PUT /import` without `If-Match` or `If-None-Match: *`, or with a form not accepted.
    PreconditionRequired {
        /// What to send, safe to show.
        reason: String,
    },
    /// `PUT /import` whose `If-Match` / `If-None-Match: *` does not name the stored version;
    /// nothing was written.
    VersionMismatch {
        /// What is stored, safe to show.
        reason: String,
    },
    /// The user is served by their Durable Object (the worker forwards the request there;
    /// routes it cannot forward answer this).
    ServedByDurableObject,
    /// A step of a move that does not fit where the user is now (an import of a user who is
    /// not frozen for a move, an export of a user who does not live in the object, a second
    /// move in the same direction); nothing was written.
    MoveOutOfOrder {
        /// Where the user is and what to do instead, safe to show.
        reason: String,
    },
    /// A move would not carry everything across; nothing was switched and the source is as
    /// it was. `allow_loss=true` moves anyway and names what was dropped.
    WouldLoseData {
        /// Each object that would be lost, with why (`name (kind): reason`).
        lost: Vec<String>,
    },
    /// A number the Durable Object route cannot carry exactly (its SQL API passes JS
    /// numbers): an integer beyond ±(2^53 − 1) as a parameter, or a result at or beyond 2^53
    /// that may be a rounded integer. Nothing was written.
    InexactNumber {
        /// Index of the statement in the request.
        statement: usize,
        /// What and how to get it exactly, safe to show.
        reason: String,
    },
    /// The object store failed (after retries, for the failures that are worth retrying).
    StorageUnavailable(StoreError),
    /// The runtime, a binding, a Durable Object or SQLite failed on something the client
    /// could not have caused.
    Internal {
        /// What failed; logged, not shown.
        detail: String,
    },
}

/// Why a stored object was refused.
#[derive(Debug, Clone)]
pub enum Corruption {
    /// The 100-byte header is wrong.
    Header(HeaderProblem),
    /// SQLite found the contents malformed.
    Contents(String),
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e.kind {
            crate::storage::store::StoreErrorKind::MemoryBusy {
                needed_bytes,
                in_use_bytes,
                capacity_bytes,
            } => Self::MemoryBusy {
                needed_bytes,
                in_use_bytes,
                capacity_bytes,
            },
            _ => Self::StorageUnavailable(e),
        }
    }
}

impl From<HeaderProblem> for Error {
    fn from(p: HeaderProblem) -> Self {
        Self::CorruptDatabase(Corruption::Header(p))
    }
}

/// SQLite failing on a database it had accepted (out of memory, internal error) is internal;
/// code that runs the client's SQL maps its errors to [`Error::SqlError`] explicitly.
impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Self::Internal {
            detail: format!("sqlite: {e}"),
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::InvalidUser { reason } => write!(f, "invalid user: {reason}"),
            Self::InvalidParameter { name, reason } => write!(f, "invalid {name}: {reason}"),
            Self::InvalidRequest { reason } => write!(f, "invalid request: {reason}"),
            Self::UpgradeRequired { reason } => write!(f, "upgrade required: {reason}"),
            Self::NotFound { path } if path.starts_with("/db/") => write!(
                f,
                "no route for {path}; libSQL clients need the URL http(s)://HOST/db/<user>/ with \
                 its trailing slash (without it they post to /db/v2/pipeline, dropping the user)"
            ),
            Self::NotFound { path } => write!(f, "no route for {path}"),
            Self::TransactionConflict => write!(
                f,
                "another writer changed what this transaction read since it began (or it read \
                 something that differs on every run, such as random()): it was rolled back \
                 and nothing of it was written; run the transaction again"
            ),
            Self::ReplicationNotSupported => write!(
                f,
                "embedded replicas (sqld's replication protocol: sync, info, export, \
                 wal_log) are not served; open the database remotely (an http:// URL, no syncUrl)"
            ),
            Self::UserNotFound { user, place } => {
                write!(f, "user {user} has no database in {place}")
            }
            Self::MethodNotAllowed { method, allow } => {
                write!(f, "method {method} not allowed (allowed: {allow})")
            }
            Self::Unauthorized { reason } => write!(f, "unauthorized: {reason}"),
            Self::Forbidden { reason } => write!(f, "forbidden: {reason}"),
            Self::AuthNotConfigured => write!(
                f,
                "access control is not configured: set the AUTH_TOKEN secret \
                 (`npx wrangler secret put AUTH_TOKEN`), or set the var ALLOW_ANONYMOUS=true \
                 to serve without authentication"
            ),
            Self::Misconfigured { detail } => write!(f, "misconfigured: {detail}"),
            Self::RequestTooLarge {
                size_bytes,
                max_bytes,
            } => write!(
                f,
                "the request body is {size_bytes} bytes, over the limit of {max_bytes} \
                 (MAX_REQUEST_BYTES); split it into several requests"
            ),
            Self::TooManyStatements { count, max } => write!(
                f,
                "the request holds {count} statements, over the limit of {max} \
                 (MAX_STATEMENTS); split it into several requests"
            ),
            Self::ResultTooLarge { max_bytes } => write!(
                f,
                "the results are larger than {max_bytes} bytes (MAX_RESULT_BYTES); \
                 select fewer rows or columns (LIMIT / OFFSET)"
            ),
            Self::CpuBudgetExceeded {
                statement,
                max_steps,
            } => write!(
                f,
                "statement {statement} ran past the request's budget of {max_steps} SQLite \
                 steps (QUERY_MAX_STEPS, counted across all its statements) and was interrupted"
            ),
            Self::MemoryBudgetExceeded {
                statement,
                max_bytes,
            } => write!(
                f,
                "statement {statement} needed more than the {max_bytes} bytes of memory SQLite \
                 may use here (sorts, temp tables and values being built count); work on fewer \
                 rows at a time"
            ),
            Self::MemoryBusy {
                needed_bytes,
                in_use_bytes,
                capacity_bytes,
            } => write!(
                f,
                "this worker instance is busy: the request needs {needed_bytes} more bytes of \
                 memory and the requests it is serving hold {in_use_bytes} of the \
                 {capacity_bytes} they may share; nothing was written; retry after Retry-After"
            ),
            Self::DatabaseFull {
                statement,
                max_bytes,
            } => {
                if let Some(statement) = statement {
                    write!(f, "statement {statement} ")?;
                } else {
                    write!(f, "the request ")?;
                }
                write!(
                    f,
                    "would make the database larger than {max_bytes} bytes (MAX_DB_BYTES); \
                     delete rows and VACUUM to make room, or migrate this user to a Durable \
                     Object"
                )
            }
            Self::StatementNotAllowed { statement, reason } => {
                write!(f, "statement {statement} is not allowed: {reason}")
            }
            Self::SqlError {
                statement, message, ..
            } => {
                write!(f, "statement {statement} failed: {message}")
            }
            Self::DatabaseTooLarge {
                size_bytes,
                max_bytes,
            } => write!(
                f,
                "the database is {size_bytes} bytes, over this worker's limit of {max_bytes} \
                 bytes (MAX_DB_BYTES); archive old data to shrink it, or migrate this user to \
                 a Durable Object"
            ),
            Self::CorruptDatabase(Corruption::Header(p)) => write!(f, "corrupt database: {p}"),
            Self::CorruptDatabase(Corruption::Contents(detail)) => {
                write!(f, "corrupt database: {detail}")
            }
            Self::Conflict { attempts } => write!(
                f,
                "the database was changed by other requests each of the {attempts} times this \
                 one ran"
            ),
            Self::Migrating => write!(
                f,
                "this user's database is being moved between R2 and a Durable Object; nothing \
                 was written; retry in a moment"
            ),
            Self::ServedByDurableObject => write!(
                f,
                "this user's database lives in a Durable Object: use POST /query or GET / \
                 (forwarded there); the libSQL endpoint and PUT /import need the R2 route \
                 (POST /migrate?to=r2)"
            ),
            Self::InvalidUpload { reason } => write!(
                f,
                "the uploaded file is not a SQLite database this worker will store: {reason}; \
                 nothing was written"
            ),
            Self::MoveInProgress => write!(
                f,
                "this user's database is being moved between R2 and a Durable Object, so a \
                 file cannot replace it now; nothing was written; retry once the move is done"
            ),
            Self::PreconditionRequired { reason } => {
                write!(f, "the upload must be conditional: {reason}")
            }
            Self::VersionMismatch { reason } => write!(
                f,
                "{reason}; nothing was written; pull the current database (GET /export), \
                 merge, and upload again"
            ),
            Self::MoveOutOfOrder { reason } => write!(f, "{reason}"),
            Self::WouldLoseData { lost } => write!(
                f,
                "the move would lose {}: {}; nothing was moved (add allow_loss=true to move \
                 without them)",
                lost.len(),
                lost.join("; ")
            ),
            Self::InexactNumber { statement, reason } => {
                write!(f, "statement {statement}: {reason}")
            }
            Self::StorageUnavailable(e) => write!(f, "{e}"),
            Self::Internal { detail } => write!(f, "internal: {detail}"),
        }
    }
}

impl std::error::Error for Error {}

/// The JSON body of every error response.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    /// Always `false`.
    pub success: bool,
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The `error` object: a stable machine-readable code and a message for people.
#[derive(Debug, Serialize)]
pub struct ErrorDetail {
    /// Stable code; see README "Errors".
    pub code: &'static str,
    /// Human-readable explanation; never internal details on a 5xx.
    pub message: String,
    /// Whether repeating the same request may succeed.
    pub retryable: bool,
    /// Index (from 0) of the statement that failed, for errors about one statement.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub statement: Option<usize>,
    /// SQLite's result code name, for a statement SQLite refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sqlite_code: Option<&'static str>,
    /// What a refused move would have lost, one `name (kind): reason` each.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost: Option<Vec<String>>,
}

impl Error {
    /// HTTP status for this error.
    #[must_use]
    pub fn status(&self) -> u16 {
        match self {
            Self::InvalidUser { .. }
            | Self::InvalidParameter { .. }
            | Self::InvalidRequest { .. }
            | Self::SqlError { .. } => 400,
            Self::Unauthorized { .. } => 401,
            Self::Forbidden { .. } | Self::StatementNotAllowed { .. } => 403,
            Self::NotFound { .. } | Self::UserNotFound { .. } => 404,
            Self::MethodNotAllowed { .. } => 405,
            Self::UpgradeRequired { .. } => 426,
            Self::ReplicationNotSupported => 501,
            Self::TransactionConflict
            | Self::ServedByDurableObject
            | Self::MoveInProgress
            | Self::MoveOutOfOrder { .. } => 409,
            Self::VersionMismatch { .. } => 412,
            Self::PreconditionRequired { .. } => 428,
            Self::RequestTooLarge { .. }
            | Self::TooManyStatements { .. }
            | Self::DatabaseTooLarge { .. }
            | Self::DatabaseFull { .. } => 413,
            Self::CorruptDatabase(_)
            | Self::InvalidUpload { .. }
            | Self::ResultTooLarge { .. }
            | Self::CpuBudgetExceeded { .. }
            | Self::MemoryBudgetExceeded { .. }
            | Self::WouldLoseData { .. }
            | Self::InexactNumber { .. } => 422,
            Self::Internal { .. } | Self::Misconfigured { .. } => 500,
            Self::AuthNotConfigured
            | Self::StorageUnavailable(_)
            | Self::Migrating
            | Self::MemoryBusy { .. }
            | Self::Conflict { .. } => 503,
        }
    }

    /// Stable machine-readable code: the variant's name in snake case.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidUser { .. } => "invalid_user",
            Self::InvalidParameter { .. } => "invalid_parameter",
            Self::InvalidRequest { .. } => "invalid_request",
            Self::NotFound { .. } => "not_found",
            Self::ReplicationNotSupported => "replication_not_supported",
            Self::UpgradeRequired { .. } => "upgrade_required",
            Self::UserNotFound { .. } => "user_not_found",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::Unauthorized { .. } => "unauthorized",
            Self::Forbidden { .. } => "forbidden",
            Self::AuthNotConfigured => "auth_not_configured",
            Self::Misconfigured { .. } => "misconfigured",
            Self::RequestTooLarge { .. } => "request_too_large",
            Self::TooManyStatements { .. } => "too_many_statements",
            Self::ResultTooLarge { .. } => "result_too_large",
            Self::CpuBudgetExceeded { .. } => "cpu_budget_exceeded",
            Self::MemoryBudgetExceeded { .. } => "memory_budget_exceeded",
            Self::DatabaseFull { .. } => "database_full",
            Self::MemoryBusy { .. } => "memory_busy",
            Self::StatementNotAllowed { .. } => "statement_not_allowed",
            Self::SqlError { .. } => "sql_error",
            Self::DatabaseTooLarge { .. } => "database_too_large",
            Self::CorruptDatabase(_) => "corrupt_database",
            Self::Conflict { .. } => "conflict",
            Self::TransactionConflict => "transaction_conflict",
            Self::StorageUnavailable(_) => "storage_unavailable",
            Self::Migrating => "migrating",
            Self::ServedByDurableObject => "served_by_durable_object",
            Self::InvalidUpload { .. } => "invalid_upload",
            Self::MoveInProgress => "move_in_progress",
            Self::PreconditionRequired { .. } => "precondition_required",
            Self::VersionMismatch { .. } => "version_mismatch",
            Self::MoveOutOfOrder { .. } => "move_out_of_order",
            Self::WouldLoseData { .. } => "would_lose_data",
            Self::InexactNumber { .. } => "inexact_number",
            Self::Internal { .. } => "internal",
        }
    }

    /// Seconds a client should wait before retrying, for the `Retry-After` header.
    #[must_use]
    pub fn retry_after_s(&self) -> Option<u32> {
        match self {
            Self::StorageUnavailable(_) => Some(2),
            Self::Conflict { .. }
            | Self::Migrating
            | Self::MoveInProgress
            | Self::MemoryBusy { .. } => Some(1),
            _ => None,
        }
    }

    /// Whether this error leaves the stored database exactly as it was before the request.
    /// False only when a write reached the store and its outcome could not be established.
    #[must_use]
    pub fn nothing_written(&self) -> bool {
        !matches!(self, Self::StorageUnavailable(e) if e.write_outcome_unknown)
    }

    /// The response body. 5xx bodies carry a fixed message; the detail goes to the log only.
    #[must_use]
    pub fn body(&self) -> ErrorBody {
        let message = match self {
            Self::StorageUnavailable(e) if e.write_outcome_unknown => {
                "the object store failed while this request's write was in flight, and the \
                 worker could not find out whether it was stored; read the data back before \
                 repeating a write that must not happen twice"
                    .to_owned()
            }
            Self::StorageUnavailable(_) => {
                "the object store is unavailable; nothing was written; try again".to_owned()
            }
            Self::Internal { .. } => {
                "internal error; the worker's log has the detail; try again".to_owned()
            }
            Self::Misconfigured { .. } => {
                "the worker is misconfigured; its log names the setting".to_owned()
            }
            Self::Conflict { .. } => format!("{self}; nothing was written; retry the request"),
            Self::CorruptDatabase(_) => format!(
                "{self}; the stored object was left unchanged; restore it from a backup or delete it"
            ),
            Self::SqlError { .. }
            | Self::StatementNotAllowed { .. }
            | Self::CpuBudgetExceeded { .. }
            | Self::MemoryBudgetExceeded { .. }
            | Self::DatabaseFull { .. }
            | Self::InexactNumber { .. }
            | Self::ResultTooLarge { .. } => {
                format!("{self}; the whole request was rolled back and nothing was written")
            }
            other => other.to_string(),
        };
        let statement = match self {
            Self::SqlError { statement, .. }
            | Self::StatementNotAllowed { statement, .. }
            | Self::CpuBudgetExceeded { statement, .. }
            | Self::MemoryBudgetExceeded { statement, .. }
            | Self::InexactNumber { statement, .. }
            | Self::DatabaseFull {
                statement: Some(statement),
                ..
            } => Some(*statement),
            _ => None,
        };
        ErrorBody {
            success: false,
            error: ErrorDetail {
                code: self.code(),
                message,
                retryable: matches!(
                    self,
                    Self::Conflict { .. }
                        | Self::TransactionConflict
                        | Self::StorageUnavailable(_)
                        | Self::Internal { .. }
                        | Self::Migrating
                        | Self::MoveInProgress
                        | Self::MemoryBusy { .. }
                ),
                statement,
                sqlite_code: match self {
                    Self::SqlError { sqlite_code, .. } => *sqlite_code,
                    _ => None,
                },
                lost: match self {
                    Self::WouldLoseData { lost } => Some(lost.clone()),
                    _ => None,
                },
            },
        }
    }

    /// The error a Durable Object answered with (`status`, its JSON `body`), for a route
    /// that passes it on: a move's own refusals keep their code and detail, anything else is
    /// internal (logged with the answer).
    #[must_use]
    pub fn from_object(status: u16, body: &serde_json::Value) -> Self {
        let error = &body["error"];
        let message = error["message"].as_str().unwrap_or_default().to_owned();
        match error["code"].as_str() {
            Some("would_lose_data") => Self::WouldLoseData {
                lost: error["lost"]
                    .as_array()
                    .map(|l| {
                        l.iter()
                            .filter_map(|v| v.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default(),
            },
            Some("move_out_of_order") => Self::MoveOutOfOrder { reason: message },
            Some("migrating") => Self::Migrating,
            _ => Self::Internal {
                detail: format!("the Durable Object answered {status}: {body}"),
            },
        }
    }

    /// True for errors whose detail must be logged because the client does not see it.
    #[must_use]
    pub fn is_internal(&self) -> bool {
        self.status() >= 500
            && !matches!(
                self,
                Self::AuthNotConfigured
                    | Self::Migrating
                    | Self::ReplicationNotSupported
                    | Self::MemoryBusy { .. }
            )
    }
}

#[cfg(test)]
mod tests {
    #[cfg(all(target_family = "wasm", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::storage::StoreErrorKind;

    fn store_error(unknown: bool) -> Error {
        Error::StorageUnavailable(StoreError {
            operation: "put",
            kind: StoreErrorKind::Transient,
            detail: "secret internal stack".into(),
            write_outcome_unknown: unknown,
        })
    }

    /// A 5xx body never leaks the internal message, and says "nothing was written" only when
    /// that is known.
    #[test]
    fn server_errors_hide_details() {
        let e = store_error(false);
        let body = serde_json::to_string(&e.body()).unwrap();
        assert!(!body.contains("secret"), "{body}");
        assert!(body.contains("nothing was written"), "{body}");
        assert_eq!(e.status(), 503);
        assert_eq!(e.retry_after_s(), Some(2));
        assert!(e.body().error.retryable);
        let unknown = store_error(true);
        let body = serde_json::to_string(&unknown.body()).unwrap();
        assert!(!body.contains("nothing was written"), "{body}");
        assert!(!unknown.nothing_written());
        let internal = Error::Internal {
            detail: "binding USER_DB missing".into(),
        };
        assert_eq!((internal.status(), internal.code()), (500, "internal"));
        assert!(
            !serde_json::to_string(&internal.body())
                .unwrap()
                .contains("USER_DB")
        );
    }

    /// A 4xx body says exactly what was wrong.
    #[test]
    fn client_errors_explain() {
        let e = Error::from(HeaderProblem::BadMagic);
        assert_eq!(e.status(), 422);
        assert_eq!(e.code(), "corrupt_database");
        assert!(e.body().error.message.contains("magic"));
        let missing = Error::UserNotFound {
            user: "a".into(),
            place: "the Durable Object",
        };
        assert_eq!((missing.status(), missing.code()), (404, "user_not_found"));
        assert!(missing.body().error.message.contains("Durable Object"));
        let sql = Error::SqlError {
            statement: 2,
            message: "no such table: x".into(),
            sqlite_code: Some("SQLITE_ERROR"),
        };
        assert_eq!(sql.body().error.statement, Some(2));
        assert!(sql.body().error.message.contains("rolled back"));
    }
}
