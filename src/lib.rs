//! A Cloudflare Worker that keeps each user's SQLite database as one object in R2, loads it into
//! an in-memory SQLite per request, runs the app's queries on it, writes it back when it
//! changed, and reports the delays the user felt.
//!
//! Module map. Everything but `runtime` is plain Rust that host tests drive:
//! - [`request`]: route table, user ids, save modes.
//! - [`auth`]: the admin token and signed per-user tokens.
//! - [`config`]: vars and secrets, parsed and checked.
//! - [`pipeline`]: orchestrates the R2 route's steps (load → query → save → report), re-runs.
//! - [`admission`]: memory admission across an isolate's concurrent requests (wait, then 503).
//! - [`queue`]: the isolate's write queue per user and group commit.
//! - [`work`]: what `/query` runs: one transaction.
//! - [`exec`]: the one executor, its guard rails, and the result builder each wire format
//!   implements ([`exec::ResultBuilder`]: [`exec::D1Result`], [`hrana::HranaResult`]).
//! - [`hrana`]: the libSQL remote protocol (Hrana over HTTP, JSON).
//! - [`hrana_ws`]: Hrana over WebSocket (`hrana2`, `hrana3`): a session per socket, messages in, messages and jobs out.
//! - [`stream`]: Hrana streams across requests, carried by their batons.
//! - [`encoding`]: lossless JSON for SQLite values, base64, `/query` bodies.
//! - [`storage`]: everything about how a database is kept in R2, both layouts:
//!   - [`storage::keys`]: object keys, metadata keys, the `db-version` rule;
//!   - [`storage::store`]: the object-store seam, [`storage::MemoryStore`], and its failure
//!     contract as one test body for every backend ([`storage::store::contract`]);
//!   - [`storage::backoff`]: [`storage::RetryPolicy`], how often and how long storage retries;
//!   - [`storage::retry`]: retries after 429/5xx, conditional puts resolved by `write-id`;
//!   - [`storage::cache`]: the version cache of open databases, keyed by object and state;
//!   - [`storage::manifest`], [`storage::delta`]: the incremental layout's data and format;
//!   - [`storage::load`], [`storage::adopt`]: loading either layout, deciding the adoption of
//!     an outside file (a load never writes);
//!   - [`storage::loaded`]: what a load hands on ([`storage::Loaded`], [`storage::Adoption`])
//!     and the way a loaded copy goes back to the cache;
//!   - [`storage::save`]: the save step in either layout (an adoption committed with it);
//!   - [`storage::commit`], [`storage::compact`], [`storage::sweep`]: a delta commit,
//!     compaction (fold, retire, a move's freeze), the sweep of orphans;
//!   - [`storage::moves`]: a move's reads and writes of the R2 object.
//! - [`vfs`]: the memory VFS that holds every image and records the pages each write touches.
//! - [`context`]: what a request runs with (store, clock, settings in force).
//! - [`sqlite`]: SQLite initialise, load an image, create, list tables, export.
//! - [`header`]: validation of the 100-byte SQLite header.
//! - [`import`]: the copy into a Durable Object (and back out), over [`import::SqlTarget`].
//! - [`upload`]: a client's whole SQLite file becoming the current database (`PUT /import`).
//! - [`migrate`]: moving a user between R2 and their Durable Object, with nothing lost.
//! - [`clock`]: the time seam.
//! - [`delay`]: the spec's thresholds, bands and rounding.
//! - [`report`]: the response JSON of both routes.
//! - [`alerts`]: carrying out each band's action (log lines, the user warning).
//! - [`trend`]: per-user recent sync times and recommendations.
//! - [`error`]: the one error type and its HTTP mapping.
//! - `fixtures` (feature `testing`): deterministic demo and benchmark databases.
//! - `testing` (feature `testing`): shared test support (seeded RNG, step clock, the hook
//!   store and its hooks).
//! - `runtime` (wasm32 only): the only code that touches the Workers runtime.

pub mod admission;
pub mod alerts;
pub mod auth;
pub mod clock;
pub mod config;
pub mod context;
pub mod delay;
pub mod encoding;
pub mod error;
pub mod exec;
#[cfg(any(test, feature = "testing"))]
pub mod fixtures;
pub mod header;
pub mod hrana;
pub mod hrana_ws;
pub mod import;
pub mod migrate;
pub mod pipeline;
pub mod queue;
pub mod report;
pub mod request;
pub mod sqlite;
pub mod storage;
pub mod stream;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod trend;
pub mod upload;
pub mod vfs;
pub mod work;

#[cfg(all(target_family = "wasm", target_os = "unknown"))]
mod runtime;
