//! A whole SQLite file sent by a client (`PUT /import?user=ID`) becoming the user's current
//! database: validated as a load validates, conditional on the version it replaces, and
//! committed as a write in the user's layout, so no layout ever sees an outside replacement.
//!
//! The file is opened in the page-recording VFS with every page marked written, then handed
//! to [`pipeline::save`] in place of the loaded copy: the single layout stores it whole
//! (`If-Match` the object read, or create-only), the incremental layout commits it as one
//! delta holding every page (the manifest's conditional put is the commit point, as for any
//! write), which passes the compaction threshold, so compaction then makes it the new base.
//!
//! Invariants: nothing is read from the store before the file passed validation; nothing is
//! written unless the stored version is the one the client named; a lost race with another
//! writer is refused, never written over (the client has not seen the other write). A lost
//! race with a compaction, which changes the objects but keeps the `db-version`, is tried
//! again on the new state.

use crate::clock::Clock;
use crate::context::Context;
use crate::error::{Corruption, Error};
use crate::pipeline::{self, Queried, Saved, Steps};
use crate::report::Report;
use crate::request::{SaveMode, UserId};
use crate::sqlite;
use crate::storage::ObjectStore;
use crate::storage::Stored;

/// Which stored state a client's file may replace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// `If-Match: "<db-version>"`: only the database at exactly this version (`0` names a
    /// database stored without one: written by something other than this worker).
    IfMatch(u64),
    /// `If-None-Match: *`: only if the user has no database yet.
    CreateOnly,
}

impl Precondition {
    /// Reads the request's `If-Match` / `If-None-Match` values. One of them is required: an
    /// unconditional upload could overwrite a write the client has not seen.
    pub fn parse(if_match: Option<&str>, if_none_match: Option<&str>) -> Result<Self, Error> {
        match (if_match.map(str::trim), if_none_match.map(str::trim)) {
            (Some(_), Some(_)) => Err(required(
                "send either If-Match (the db-version this file replaces) or If-None-Match: * \
                 (create only), not both",
            )),
            (Some("*"), None) => Err(required(
                "If-Match: * would replace whatever is stored; name the db-version this file \
                 replaces (the X-Db-Version header of GET /export)",
            )),
            (Some(tag), None) => parse_version(tag).map(Self::IfMatch).ok_or_else(|| {
                Error::InvalidRequest {
                    reason: format!(
                        "If-Match {tag:?} is not a db-version (a whole number, optionally quoted)"
                    ),
                }
            }),
            (None, Some("*")) => Ok(Self::CreateOnly),
            (None, Some(other)) => Err(required(&format!(
                "If-None-Match {other:?}: the only form accepted here is * (create only)"
            ))),
            (None, None) => Err(required(
                "send If-Match with the db-version this file replaces (the X-Db-Version header \
                 of GET /export), or If-None-Match: * to create the database",
            )),
        }
    }

    /// Whether the stored state `stored` at `version` is the one this precondition names;
    /// otherwise the 412 that says what is stored.
    fn check(self, stored: &Stored, version: Option<u64>) -> Result<(), Error> {
        let current = (!matches!(stored, Stored::New)).then(|| version_token(version));
        let mismatch = |reason: String| Err(Error::VersionMismatch { reason });
        match (self, current) {
            (Self::IfMatch(v), Some(c)) if c == v.to_string() => Ok(()),
            (Self::IfMatch(v), Some(c)) => mismatch(format!(
                "If-Match names db-version {v}, but the stored database is at db-version {c}: \
                 another write landed since this file was read"
            )),
            (Self::IfMatch(v), None) => mismatch(format!(
                "If-Match names db-version {v}, but no database is stored for this user; send \
                 If-None-Match: * to create it"
            )),
            (Self::CreateOnly, None) => Ok(()),
            (Self::CreateOnly, Some(c)) => mismatch(format!(
                "If-None-Match: * asks to create the database, but one is stored at db-version \
                 {c}"
            )),
        }
    }
}

fn required(reason: &str) -> Error {
    Error::PreconditionRequired {
        reason: reason.to_owned(),
    }
}

/// A db-version from a header value: digits, optionally in double quotes (an entity tag).
fn parse_version(tag: &str) -> Option<u64> {
    let bare = tag
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(tag);
    (!bare.is_empty() && bare.bytes().all(|b| b.is_ascii_digit()))
        .then(|| bare.parse().ok())
        .flatten()
}

/// The version token clients see (`X-Db-Version`) and send back: the `db-version`, or `0`
/// for a database stored without one.
#[must_use]
pub fn version_token(version: Option<u64>) -> String {
    version.unwrap_or(0).to_string()
}

/// `GET /export` with `If-None-Match`: true when the tag names the current version, so the
/// answer is 304 without a body. A tag that is not a version never matches.
#[must_use]
pub fn not_modified(if_none_match: Option<&str>, version: Option<u64>) -> bool {
    if_none_match
        .and_then(|t| parse_version(t.trim()))
        .is_some_and(|v| v.to_string() == version_token(version))
}

/// A body over `MAX_DB_BYTES` is the same refusal as a stored object over it: 413
/// `database_too_large`. Other errors pass through.
#[must_use]
pub fn body_error(e: Error) -> Error {
    match e {
        Error::RequestTooLarge {
            size_bytes,
            max_bytes,
        } => Error::DatabaseTooLarge {
            size_bytes,
            max_bytes,
        },
        other => other,
    }
}

/// Checks `bytes` as a load checks a stored object (size limit, header, schema) and runs
/// `PRAGMA quick_check`; returns it open (the buffer taken over, not copied), with every page
/// marked written. A file that fails is 422 `invalid_upload` saying why (413 over the limit).
pub fn validate(bytes: Vec<u8>, max_db_bytes: u64) -> Result<rusqlite::Connection, Error> {
    if bytes.len() as u64 > max_db_bytes {
        return Err(Error::DatabaseTooLarge {
            size_bytes: bytes.len() as u64,
            max_bytes: max_db_bytes,
        });
    }
    check_file(bytes).map_err(|e| match e {
        Error::CorruptDatabase(c) => Error::InvalidUpload {
            reason: about_the_file(&match c {
                Corruption::Header(p) => p.to_string(),
                Corruption::Contents(detail) => detail,
            }),
        },
        other => other,
    })
}

/// The load's wording is about "the stored object"; here it is the client's file.
fn about_the_file(reason: &str) -> String {
    reason
        .replace("the stored object", "the file")
        .replace("the object's", "the file's")
        .replace("the object holds", "the file holds")
}

fn check_file(bytes: Vec<u8>) -> Result<rusqlite::Connection, Error> {
    if bytes.is_empty() {
        return Err(crate::header::HeaderProblem::Empty.into());
    }
    let mut conn = sqlite::open(sqlite::Image::from_vec(bytes))?.conn;
    let verdict: Result<Vec<String>, rusqlite::Error> =
        conn.prepare("PRAGMA quick_check(5)").and_then(|mut stmt| {
            stmt.query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()
        });
    match verdict {
        Ok(lines) if lines == ["ok"] => {}
        Ok(lines) => {
            return Err(Error::CorruptDatabase(Corruption::Contents(format!(
                "quick_check: {}",
                lines.join("; ")
            ))));
        }
        Err(e) => {
            return Err(Error::CorruptDatabase(Corruption::Contents(format!(
                "quick_check: {e}"
            ))));
        }
    }
    if !sqlite::mark_all_changed(&mut conn) {
        return Err(Error::Internal {
            detail: "the uploaded image is not in the page VFS".into(),
        });
    }
    Ok(conn)
}

/// Sets the header's change counter (and the version-valid-for number beside it) to `next`:
/// readers holding a cached copy notice a change only when the counter moved.
fn set_change_counter(image: &mut [u8], next: u32) {
    image[24..28].copy_from_slice(&next.to_be_bytes());
    image[92..96].copy_from_slice(&next.to_be_bytes());
}

/// Validates `bytes` and, if the stored database is the one `precondition` names, makes it
/// the user's current database in their layout; returns the report of the save (its
/// `db_info.db_version` is the new version). Every refusal writes nothing.
pub async fn replace<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
    bytes: Vec<u8>,
    precondition: Precondition,
) -> Result<Report, Error> {
    let clock = ctx.clock;
    let validate_start = clock.now_ms();
    let mut conn = validate(bytes, ctx.max_db_bytes)?;
    let validate_ms = clock.now_ms() - validate_start;
    let mut attempts = 0;
    let start = ctx.clock.now_ms();
    loop {
        attempts += 1;
        let mut loaded = match pipeline::load(ctx, user).await {
            Err(Error::Migrating) => return Err(Error::MoveInProgress),
            other => other?,
        };
        if let Err(e) = precondition.check(&loaded.stored, loaded.version) {
            crate::storage::loaded::keep_loaded(ctx.cache, user, loaded);
            return Err(e);
        }
        // Past the current counter (and never equal to it), whatever the file says.
        let next = loaded.change_counter.wrapping_add(1).max(1);
        sqlite::patch(&mut conn, |image| set_change_counter(image, next));
        // The stored copy is no longer needed: the file takes its place.
        drop(std::mem::replace(&mut loaded.conn, conn));
        let tables = sqlite::list_tables(&loaded.conn)?;
        let mut queried = Queried {
            loaded,
            output: (),
            tables,
            changed: true,
            query_ms: validate_ms,
        };
        let version_read = queried.loaded.version;
        // `Auto` on a change: the layout's own write (a delta in the incremental layout);
        // `Always` would fold the file into database.sqlite, as the spec's request does.
        let saved = pipeline::save(ctx, user, &mut queried, SaveMode::Auto).await?;
        if saved == Saved::Conflict {
            // Something changed the stored objects since the load: a write (the next load
            // finds a new version and refuses), or a compaction, which keeps the version,
            // so the file still replaces what the client named: try again on the new state.
            // Without a db-version (stored from outside) two states cannot be told apart.
            let wait = ctx
                .retry
                .rerun_wait_ms(attempts, ctx.clock.now_ms() - start);
            if let (Some(wait), true) = (wait, version_read.is_some()) {
                conn = queried.loaded.conn;
                ctx.clock.sleep(wait).await;
                continue;
            }
            return Err(Error::VersionMismatch {
                reason: format!(
                    "another writer changed the stored database while this file was being \
                     stored ({attempts} attempts)"
                ),
            });
        }
        let report = pipeline::report(
            ctx,
            &Steps {
                queried: &queried,
                saved: &saved,
                mode: SaveMode::Always,
                attempts,
            },
        );
        if let Saved::Written {
            stored, version, ..
        } = saved
        {
            let mut loaded = queried.loaded;
            (loaded.stored, loaded.version) = (stored, Some(version));
            crate::storage::loaded::keep_loaded(ctx.cache, user, loaded);
        }
        return Ok(report);
    }
}
