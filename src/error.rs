//! The one error type, and the one place it becomes an HTTP status and JSON body.

use serde::Serialize;

use crate::header::HeaderProblem;
use crate::store::StoreError;

/// Everything that can stop a request.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The `user` query parameter is not a valid user id.
    InvalidUser {
        /// What is wrong with it, safe to show the client.
        reason: String,
    },
    /// No route matches the path.
    NotFound {
        /// The path that was asked for.
        path: String,
    },
    /// The path exists but not for this method.
    MethodNotAllowed {
        /// The method that was used.
        method: String,
        /// The methods the path accepts, for the `Allow` header.
        allow: &'static str,
    },
    /// A query parameter other than `user` has a value the worker does not accept.
    InvalidParameter {
        /// The parameter.
        name: &'static str,
        /// What is wrong, safe to show.
        reason: String,
    },
    /// No valid bearer token was presented.
    Unauthorized {
        /// What was wrong, safe to show.
        reason: &'static str,
    },
    /// No `AUTH_TOKEN` is configured and anonymous access is not enabled.
    AuthNotConfigured,
    /// A var or secret has a value the worker cannot use.
    Misconfigured {
        /// Which setting and why; logged, not shown.
        detail: String,
    },
    /// The stored database is larger than `MAX_DB_BYTES`; nothing was downloaded.
    TooLarge {
        /// The object's size.
        size_bytes: u64,
        /// The limit in force.
        max_bytes: u64,
    },
    /// The stored object failed header validation.
    CorruptHeader(HeaderProblem),
    /// SQLite rejected the stored object's contents.
    CorruptDatabase {
        /// SQLite's message, safe to show (it describes the user's own data).
        detail: String,
    },
    /// The object changed in the store between our read and our write; nothing was written.
    Conflict,
    /// The object store failed.
    Storage(StoreError),
    /// SQLite failed on a database it had accepted (out of memory, internal error).
    Sqlite(rusqlite::Error),
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        Self::Storage(e)
    }
}

impl From<HeaderProblem> for Error {
    fn from(p: HeaderProblem) -> Self {
        Self::CorruptHeader(p)
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::InvalidUser { reason } => write!(f, "invalid user: {reason}"),
            Self::InvalidParameter { name, reason } => write!(f, "invalid {name}: {reason}"),
            Self::NotFound { path } => write!(f, "no route for {path}"),
            Self::MethodNotAllowed { method, allow } => {
                write!(f, "method {method} not allowed (allowed: {allow})")
            }
            Self::CorruptHeader(p) => write!(f, "corrupt database: {p}"),
            Self::CorruptDatabase { detail } => write!(f, "corrupt database: {detail}"),
            Self::Conflict => write!(f, "the database changed while this request ran"),
            Self::Unauthorized { reason } => write!(f, "unauthorized: {reason}"),
            Self::AuthNotConfigured => write!(
                f,
                "access control is not configured: set the AUTH_TOKEN secret \
                 (`npx wrangler secret put AUTH_TOKEN`), or set the var ALLOW_ANONYMOUS=true \
                 to serve without authentication"
            ),
            Self::Misconfigured { detail } => write!(f, "misconfigured: {detail}"),
            Self::TooLarge {
                size_bytes,
                max_bytes,
            } => write!(
                f,
                "the database is {size_bytes} bytes, over this worker's limit of {max_bytes} \
                 bytes (MAX_DB_BYTES); archive old data to shrink it, or migrate this user to \
                 a Durable Object"
            ),
            Self::Storage(e) => write!(f, "{e}"),
            Self::Sqlite(e) => write!(f, "sqlite: {e}"),
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
}

impl Error {
    /// HTTP status for this error.
    #[must_use]
    pub fn status(&self) -> u16 {
        match self {
            Self::InvalidUser { .. } | Self::InvalidParameter { .. } => 400,
            Self::Unauthorized { .. } => 401,
            Self::NotFound { .. } => 404,
            Self::MethodNotAllowed { .. } => 405,
            Self::Conflict => 409,
            Self::TooLarge { .. } => 413,
            Self::CorruptHeader(_) | Self::CorruptDatabase { .. } => 422,
            Self::Sqlite(_) | Self::Misconfigured { .. } => 500,
            Self::Storage(_) => 502,
            Self::AuthNotConfigured => 503,
        }
    }

    /// Stable machine-readable code.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidUser { .. } => "invalid_user",
            Self::InvalidParameter { .. } => "invalid_parameter",
            Self::NotFound { .. } => "not_found",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::CorruptHeader(_) | Self::CorruptDatabase { .. } => "corrupt_database",
            Self::Conflict => "conflict",
            Self::Unauthorized { .. } => "unauthorized",
            Self::AuthNotConfigured => "auth_not_configured",
            Self::Misconfigured { .. } => "misconfigured",
            Self::TooLarge { .. } => "database_too_large",
            Self::Storage(_) => "storage_error",
            Self::Sqlite(_) => "internal_error",
        }
    }

    /// The response body. 5xx bodies carry a fixed message; the detail goes to the log only.
    #[must_use]
    pub fn body(&self) -> ErrorBody {
        let message = match self {
            Self::Storage(_) => {
                "the object store failed; nothing was written; try again".to_owned()
            }
            Self::Sqlite(_) => "internal error; nothing was written".to_owned(),
            Self::Misconfigured { .. } => {
                "the worker is misconfigured; its log names the setting".to_owned()
            }
            Self::Conflict => "the database was changed by another request while this one ran; \
                               nothing was written; retry the request"
                .to_owned(),
            Self::CorruptHeader(_) | Self::CorruptDatabase { .. } => format!(
                "{self}; the stored object was left unchanged; restore it from a backup or delete it"
            ),
            other => other.to_string(),
        };
        ErrorBody {
            success: false,
            error: ErrorDetail {
                code: self.code(),
                message,
                retryable: matches!(self, Self::Conflict | Self::Storage(_)),
            },
        }
    }

    /// True for errors whose detail must be logged because the client does not see it.
    #[must_use]
    pub fn is_internal(&self) -> bool {
        self.status() >= 500 && !matches!(self, Self::AuthNotConfigured)
    }
}

#[cfg(test)]
mod tests {
    #[cfg(all(target_family = "wasm", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    /// A 5xx body never leaks the internal message.
    #[test]
    fn server_errors_hide_details() {
        let e = Error::Storage(StoreError {
            operation: "put",
            detail: "secret internal stack".into(),
        });
        let body = serde_json::to_string(&e.body()).unwrap();
        assert!(!body.contains("secret"), "{body}");
        assert_eq!(e.status(), 502);
        assert!(e.body().error.retryable);
    }

    /// A 4xx body says exactly what was wrong.
    #[test]
    fn client_errors_explain() {
        let e = Error::CorruptHeader(HeaderProblem::BadMagic);
        assert_eq!(e.status(), 422);
        assert_eq!(e.code(), "corrupt_database");
        assert!(e.body().error.message.contains("magic"));
    }
}
