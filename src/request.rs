//! Request parsing: the route table and the user id, checked before any object is touched.

use crate::error::Error;

/// The user asked for when the request names none (as in the spec).
pub const DEFAULT_USER: &str = "test";
/// Longest accepted user id.
pub const MAX_USER_LEN: usize = 64;

/// A user id that is safe to use as an object-key prefix: `^[A-Za-z0-9_-]{1,64}$`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserId(String);

impl UserId {
    /// Validates a decoded `user` query value; `None` (parameter absent) means [`DEFAULT_USER`].
    pub fn parse(raw: Option<&str>) -> Result<Self, Error> {
        let Some(raw) = raw else {
            return Ok(Self(DEFAULT_USER.to_owned()));
        };
        let invalid = |reason: String| Err(Error::InvalidUser { reason });
        if raw.is_empty() {
            return invalid("the user parameter is empty".into());
        }
        if raw.len() > MAX_USER_LEN {
            return invalid(format!(
                "the user id is {} bytes long; at most {MAX_USER_LEN} are allowed",
                raw.len()
            ));
        }
        if let Some(bad) = raw
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
        {
            return invalid(format!(
                "the user id contains {bad:?}; only letters A-Z a-z, digits, '_' and '-' are allowed"
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The id itself.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether a request writes the database back (`save` query parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SaveMode {
    /// Always write back, as the spec does (default).
    #[default]
    Always,
    /// Write back only if the database changed during the request.
    Auto,
    /// Never write back.
    Never,
}

impl SaveMode {
    /// Parses the `save` parameter; absent means [`SaveMode::Always`].
    pub fn parse(raw: Option<&str>) -> Result<Self, Error> {
        match raw {
            None | Some("always") => Ok(Self::Always),
            Some("auto") => Ok(Self::Auto),
            Some("never") => Ok(Self::Never),
            Some(other) => Err(Error::InvalidParameter {
                name: "save",
                reason: format!("{other:?} is not one of always, auto, never"),
            }),
        }
    }
}

/// Parses a yes/no query parameter (`allow_loss`): `true` or `false`, absent means `false`.
pub fn parse_flag(name: &'static str, raw: Option<&str>) -> Result<bool, Error> {
    match raw {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(Error::InvalidParameter {
            name,
            reason: format!("{other:?} is not true or false"),
        }),
    }
}

/// The first value of query parameter `name` in `url`, decoded as a form value (`+` is a
/// space, `%XX` a byte); `None` if absent. Invalid UTF-8 after decoding is replaced, so it
/// fails the user-id rule rather than the parser.
#[must_use]
pub fn query_param(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    let query = query.split_once('#').map_or(query, |(q, _)| q);
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (decode_component(key) == name).then(|| decode_component(value))
    })
}

fn decode_component(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /?user=ID`: load, list tables, save, report (the spec's request).
    Sync,
    /// `POST /query?user=ID`: run the body's statements as one transaction.
    Query,
    /// `POST /db/<user>/v2/pipeline` (or `v3`): the libSQL remote protocol (Hrana over HTTP).
    HranaPipeline {
        /// The user named in the path, not yet validated.
        user: String,
    },
    /// `GET /db/<user>/v2` (or `v3`): the protocol version check; 200 with no body.
    HranaVersion,
    /// `POST /db/<user>/v3/cursor`: one batch, its entries streamed as lines of JSON.
    HranaCursor {
        /// The user named in the path, not yet validated.
        user: String,
    },
    /// `POST /db/<user>/v1/execute` or `/v1/batch`: Hrana v1 over HTTP.
    HranaV1 {
        /// The user named in the path, not yet validated.
        user: String,
        /// `batch` rather than `execute`.
        batch: bool,
    },
    /// `GET /db/<user>/` (or `/db/<user>`) upgraded to a WebSocket: Hrana over WebSocket
    /// (`hrana2`, `hrana3`).
    HranaWebSocket {
        /// The user named in the path, not yet validated.
        user: String,
    },
    /// sqld's replication endpoints (embedded replicas): answered 501.
    Replication,
    /// `POST /do/import?user=ID`: copy the user's R2 database into their Durable Object.
    DoImport,
    /// `GET /do?user=ID`: list the user's tables from their Durable Object.
    DoTables,
    /// `POST /do/query?user=ID`: the `/query` body, run in the user's Durable Object.
    DoQuery,
    /// `POST /do/export?user=ID`: write the Durable Object's database back to R2.
    DoExport,
    /// `POST /migrate?user=ID&to=durable_object|r2`: move the user.
    Migrate,
    /// `GET /export?user=ID`: the current complete SQLite file, whatever the layout.
    Export,
    /// `PUT /import?user=ID`: a whole SQLite file, conditional, becomes the current database.
    Upload,
    /// `POST /__self-test/store`: the object-store contract against the real binding (only
    /// with `SELF_TEST=true`).
    SelfTest,
}

/// Paths of the Durable Object's own routes (worker → object, never exposed).
pub mod durable_paths {
    /// Copy the user's R2 database in.
    pub const IMPORT: &str = "/import";
    /// List tables.
    pub const TABLES: &str = "/tables";
    /// Run a `/query` body as one transaction.
    pub const QUERY: &str = "/query";
    /// Export into R2 as one SQLite file, and hand the user back to R2.
    pub const EXPORT: &str = "/export";
}

/// Maps method and path to a route, or to the 404/405 the client should see.
pub fn route(method: &str, path: &str) -> Result<Route, Error> {
    let (route, allow) = match path {
        "/" => (Route::Sync, "GET"),
        "/query" => (Route::Query, "POST"),
        "/do" => (Route::DoTables, "GET"),
        "/do/import" => (Route::DoImport, "POST"),
        "/do/query" => (Route::DoQuery, "POST"),
        "/do/export" => (Route::DoExport, "POST"),
        "/migrate" => (Route::Migrate, "POST"),
        "/export" => (Route::Export, "GET"),
        "/import" => (Route::Upload, "PUT"),
        "/__self-test/store" => (Route::SelfTest, "POST"),
        other => match hrana_path(other) {
            Some(HranaPath::Pipeline(user)) => (Route::HranaPipeline { user }, "POST"),
            Some(HranaPath::Cursor(user)) => (Route::HranaCursor { user }, "POST"),
            Some(HranaPath::V1 { user, batch }) => (Route::HranaV1 { user, batch }, "POST"),
            Some(HranaPath::Version) => (Route::HranaVersion, "GET"),
            Some(HranaPath::WebSocket(user)) => (Route::HranaWebSocket { user }, "GET"),
            Some(HranaPath::Replication) => return Err(Error::ReplicationNotSupported),
            None => {
                return Err(Error::NotFound {
                    path: other.to_owned(),
                });
            }
        },
    };
    if method == allow {
        Ok(route)
    } else {
        Err(Error::MethodNotAllowed {
            method: method.to_owned(),
            allow,
        })
    }
}

/// What a path under `/db/<user>/` asks for.
enum HranaPath {
    Version,
    Pipeline(String),
    Cursor(String),
    V1 { user: String, batch: bool },
    WebSocket(String),
    Replication,
}

/// `/db/<user>/` itself (the WebSocket clients connect to), or followed by `v1`, `v2`, `v3`
/// (version checks), `v2/pipeline`, `v3/pipeline`, `v3/cursor`, `v1/execute`, `v1/batch`, or
/// one of sqld's replication paths. `/db/<user>` is the WebSocket too (a `ws://` URL without
/// its trailing slash).
fn hrana_path(path: &str) -> Option<HranaPath> {
    let rest = path.strip_prefix("/db/")?;
    let Some((user, tail)) = rest.split_once('/') else {
        return (!rest.is_empty()).then(|| HranaPath::WebSocket(rest.to_owned()));
    };
    let user = user.to_owned();
    Some(match tail {
        "" => HranaPath::WebSocket(user),
        "v1" | "v2" | "v3" => HranaPath::Version,
        "v2/pipeline" | "v3/pipeline" => HranaPath::Pipeline(user),
        "v3/cursor" => HranaPath::Cursor(user),
        "v1/execute" => HranaPath::V1 { user, batch: false },
        "v1/batch" => HranaPath::V1 { user, batch: true },
        // The embedded replica client appends `/info`, `/wal_log...` to a URL that already
        // ends in a slash: `/db/<user>//info`.
        t if is_replication(t.trim_start_matches('/')) => HranaPath::Replication,
        _ => return None,
    })
}

/// One of sqld's replication paths (embedded replicas), relative to `/db/<user>/`.
fn is_replication(tail: &str) -> bool {
    tail == "info"
        || ["wal_log.", "proxy.", "sync/", "export/"]
            .iter()
            .any(|p| tail.starts_with(p))
}

#[cfg(test)]
mod tests {
    #[cfg(all(target_family = "wasm", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    /// Query parameters decode as browsers and `url` do: `+` is a space, `%XX` a byte, the
    /// first occurrence wins, a fragment is not part of the query.
    #[test]
    fn query_params() {
        let url = "https://w.dev/?user=a%2Fb&save=auto&user=second&x=a+b%20c&bad=%zz&end=%4";
        assert_eq!(query_param(url, "user").as_deref(), Some("a/b"));
        assert_eq!(query_param(url, "save").as_deref(), Some("auto"));
        assert_eq!(query_param(url, "x").as_deref(), Some("a b c"));
        assert_eq!(query_param(url, "bad").as_deref(), Some("%zz"));
        assert_eq!(query_param(url, "end").as_deref(), Some("%4"));
        assert_eq!(query_param(url, "missing"), None);
        assert_eq!(query_param("https://w.dev/", "user"), None);
        assert_eq!(
            query_param("https://w.dev/?user=a#user=b", "user").as_deref(),
            Some("a")
        );
        assert_eq!(
            query_param("https://w.dev/?user", "user").as_deref(),
            Some("")
        );
        assert_eq!(
            query_param("https://w.dev/?user=%00x", "user").as_deref(),
            Some("\0x")
        );
        assert_eq!(
            query_param("https://w.dev/?user=%C3%A9", "user").as_deref(),
            Some("é")
        );
    }

    /// Absent means the spec's default user; valid ids map to their key.
    #[test]
    fn accepts_valid_ids() {
        assert_eq!(UserId::parse(None).unwrap().as_str(), "test");
        let id = UserId::parse(Some("user_A-9")).unwrap();
        assert_eq!(id.db_key(), "user_A-9/database.sqlite");
        assert!(UserId::parse(Some(&"x".repeat(64))).is_ok());
    }

    /// Anything that could escape the user's prefix or is not an id is refused.
    #[test]
    fn rejects_unsafe_ids() {
        let long = "x".repeat(65);
        let huge = "y".repeat(2000);
        for bad in [
            "", "../x", "a/b", "a b", "a\u{0}b", "a\nb", "é", ".", "..", &long, &huge,
        ] {
            let err = UserId::parse(Some(bad)).unwrap_err();
            assert_eq!(err.status(), 400, "{bad:?}");
            assert_eq!(err.code(), "invalid_user");
        }
    }

    /// The save parameter takes exactly its three values.
    #[test]
    fn save_modes() {
        assert_eq!(SaveMode::parse(None).unwrap(), SaveMode::Always);
        assert_eq!(SaveMode::parse(Some("auto")).unwrap(), SaveMode::Auto);
        assert_eq!(SaveMode::parse(Some("never")).unwrap(), SaveMode::Never);
        let err = SaveMode::parse(Some("sometimes")).unwrap_err();
        assert_eq!((err.status(), err.code()), (400, "invalid_parameter"));
    }

    /// Each route answers its one method; other paths are 404 and other methods 405. The
    /// libSQL client's probe of `v3-protobuf` is a 404, so it falls back to JSON.
    #[test]
    fn routes() {
        assert_eq!(route("GET", "/").unwrap(), Route::Sync);
        assert_eq!(route("POST", "/").unwrap_err().status(), 405);
        assert_eq!(route("GET", "/x").unwrap_err().status(), 404);
        assert_eq!(route("POST", "/query").unwrap(), Route::Query);
        assert_eq!(route("GET", "/query").unwrap_err().status(), 405);
        assert_eq!(route("GET", "/do").unwrap(), Route::DoTables);
        assert_eq!(route("POST", "/do/import").unwrap(), Route::DoImport);
        assert_eq!(route("GET", "/do/import").unwrap_err().status(), 405);
        assert_eq!(
            route("POST", "/db/a/v2/pipeline").unwrap(),
            Route::HranaPipeline { user: "a".into() }
        );
        assert_eq!(
            route("POST", "/db/a/v3/pipeline").unwrap(),
            Route::HranaPipeline { user: "a".into() }
        );
        assert_eq!(route("GET", "/db/a/v2").unwrap(), Route::HranaVersion);
        // The WebSocket clients connect to the URL's own path, with or without its slash.
        for path in ["/db/a/", "/db/a"] {
            assert_eq!(
                route("GET", path).unwrap(),
                Route::HranaWebSocket { user: "a".into() }
            );
            assert_eq!(route("POST", path).unwrap_err().status(), 405);
        }
        assert_eq!(route("GET", "/db/").unwrap_err().status(), 404);
        assert_eq!(route("PUT", "/import").unwrap(), Route::Upload);
        assert_eq!(route("POST", "/import").unwrap_err().status(), 405);
        assert_eq!(route("GET", "/db/a/v3-protobuf").unwrap_err().status(), 404);
        assert_eq!(
            route("POST", "/db/a/v3-protobuf/pipeline")
                .unwrap_err()
                .status(),
            404
        );
        assert_eq!(
            route("POST", "/db/a/v3/cursor").unwrap(),
            Route::HranaCursor { user: "a".into() }
        );
        assert_eq!(
            route("POST", "/db/a/v1/batch").unwrap(),
            Route::HranaV1 {
                user: "a".into(),
                batch: true
            }
        );
        for replication in [
            "/db/a/info",
            "/db/a/sync/1/0/10",
            "/db/a/export/1",
            "/db/a/wal_log.ReplicationLog/Hello",
            // As the embedded replica client sends them, from a URL with its trailing slash.
            "/db/a//info",
            "/db/a//wal_log.ReplicationLog/Hello",
        ] {
            let err = route("POST", replication).unwrap_err();
            assert_eq!(
                (err.status(), err.code()),
                (501, "replication_not_supported")
            );
            assert!(err.to_string().contains("embedded replica"), "{err}");
        }
        // A client URL without its trailing slash drops the user from the path: the 404 says so.
        let err = route("POST", "/db/v2/pipeline").unwrap_err();
        assert_eq!(err.status(), 404);
        assert!(err.to_string().contains("trailing slash"), "{err}");
    }
}
