//! What both entry points (the worker's `fetch` and the Durable Object's) share: JSON
//! responses for reports and errors, reading the config, query parameters and bodies.

use worker::{Env, Request, Response};

use crate::config::Config;
use crate::error::Error;
use crate::request::UserId;

/// A runtime or binding failure: 500 `internal`, detail logged.
pub(crate) fn internal(e: worker::Error) -> Error {
    Error::Internal {
        detail: format!("runtime: {e}"),
    }
}

/// Vars and secrets of this worker (or Durable Object) environment.
pub(crate) fn load_config(env: &Env) -> Result<Config, Error> {
    Config::from_lookup(|name| {
        env.secret(name)
            .map(|s| s.to_string())
            .or_else(|_| env.var(name).map(|v| v.to_string()))
            .ok()
    })
}

/// The first value of query parameter `name`, percent-decoded (parsed in the core rather than
/// with `Request::url`, whose URL parser and its Unicode tables weigh about 100 KB of wasm).
pub(crate) fn query_param(req: &Request, name: &str) -> Result<Option<String>, Error> {
    Ok(crate::request::query_param(&req.inner().url(), name))
}

/// A yes/no query parameter (see [`crate::request::parse_flag`]).
pub(crate) fn flag_param(req: &Request, name: &'static str) -> Result<bool, Error> {
    crate::request::parse_flag(name, query_param(req, name)?.as_deref())
}

/// The validated `user` parameter (absent means the default user).
pub(crate) fn user_of(req: &Request) -> Result<UserId, Error> {
    UserId::parse(query_param(req, "user")?.as_deref())
}

/// The request body, refused with 413 past `max_bytes` (by its declared length when there is
/// one, before reading it).
pub(crate) async fn body(req: &mut Request, max_bytes: u64) -> Result<Vec<u8>, Error> {
    let declared = req
        .headers()
        .get("Content-Length")
        .map_err(internal)?
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(size_bytes) = declared.filter(|n| *n > max_bytes) {
        return Err(Error::RequestTooLarge {
            size_bytes,
            max_bytes,
        });
    }
    let bytes = req.bytes().await.map_err(internal)?;
    if bytes.len() as u64 > max_bytes {
        return Err(Error::RequestTooLarge {
            size_bytes: bytes.len() as u64,
            max_bytes,
        });
    }
    Ok(bytes)
}

/// A JSON response that no cache keeps.
pub(crate) fn json_response<T: serde::Serialize>(body: &T, status: u16) -> Result<Response, Error> {
    let mut response = Response::from_json(body)
        .map_err(internal)?
        .with_status(status);
    response
        .headers_mut()
        .set("Cache-Control", "no-store")
        .map_err(internal)?;
    Ok(response)
}

/// Which shape an error body takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorShape {
    /// `{"success": false, "error": {...}}`.
    Plain,
    /// The same, plus the libSQL protocol's top-level `message` and `code`, which
    /// `@libsql/client` reads from non-2xx answers.
    Hrana,
}

/// The error's JSON answer, with `Allow`, `WWW-Authenticate` or `Retry-After` where they
/// apply; internal details go to the log only.
pub(crate) fn error_response(error: &Error, shape: ErrorShape) -> worker::Result<Response> {
    if error.is_internal() {
        worker::console_error!(
            "{}",
            serde_json::json!({"level": "error", "code": error.code(), "detail": error.to_string()})
        );
    }
    if let Error::MemoryBusy { .. } = error {
        worker::console_warn!(
            "{}",
            serde_json::json!({"event": "memory_admission", "outcome": "refused", "detail": error.to_string()})
        );
    }
    let mut body = serde_json::to_value(error.body())?;
    if shape == ErrorShape::Hrana
        && let (Some(obj), serde_json::Value::Object(hrana)) =
            (body.as_object_mut(), crate::hrana::error_json(error))
    {
        obj.extend(hrana);
    }
    let mut response = Response::from_json(&body)?.with_status(error.status());
    let headers = response.headers_mut();
    headers.set("Cache-Control", "no-store")?;
    match error {
        Error::MethodNotAllowed { allow, .. } => headers.set("Allow", allow)?,
        Error::Unauthorized { .. } => headers.set("WWW-Authenticate", "Bearer")?,
        _ => {}
    }
    if let Some(seconds) = error.retry_after_s() {
        headers.set("Retry-After", &seconds.to_string())?;
    }
    Ok(response)
}
