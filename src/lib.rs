//! A Cloudflare Worker that keeps each user's SQLite database as one object in R2, loads it into
//! an in-memory SQLite per request, runs the app's queries on it, writes it back when it
//! changed, and reports the delays the user felt.
//!
//! Module map. Everything but `runtime` is plain Rust that host tests drive:
//! - [`request`]: route table, user ids, save modes.
//! - [`auth`]: the admin token and signed per-user tokens.
//! - [`config`]: vars and secrets, parsed and checked.
//! - [`pipeline`]: the R2 route's steps (load → query → save → report) and retries.
//! - [`queue`]: the isolate's write queue per user and group commit.
//! - [`work`]: what `/query` runs: one transaction.
//! - [`exec`]: the one executor and its guard rails.
//! - [`hrana`]: the libSQL remote protocol (Hrana over HTTP, JSON).
//! - [`stream`]: Hrana streams across requests, carried by their batons.
//! - [`encoding`]: lossless JSON for SQLite values, base64, `/query` bodies.
//! - [`layout`]: the storage layouts' steps: load either layout, commit, compact, fold, sweep.
//! - [`manifest`]: the incremental layout's data (manifest, policy, what a load found).
//! - [`delta`]: the delta object format (changed pages, checksum, verify, apply).
//! - [`vfs`]: the memory VFS that holds every image and records the pages each write touches.
//! - [`context`]: what a request runs with (store, clock, settings), retries, conditional puts.
//! - [`cache`]: the version cache of open databases, keyed by object and entity tag.
//! - [`sqlite`]: SQLite initialise, load an image, create, list tables, export.
//! - [`header`]: validation of the 100-byte SQLite header.
//! - [`import`]: the copy into a Durable Object (and back out), over [`import::SqlTarget`].
//! - [`upload`]: a client's whole SQLite file becoming the current database (`PUT /import`).
//! - [`migrate`]: moving a user between R2 and their Durable Object, with nothing lost.
//! - [`store`]: the object-store seam, [`store::MemoryStore`], and its failure contract as one
//!   test body for every backend ([`store::contract`]).
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

pub mod alerts;
pub mod auth;
pub mod cache;
pub mod clock;
pub mod config;
pub mod context;
pub mod delay;
pub mod delta;
pub mod encoding;
pub mod error;
pub mod exec;
#[cfg(any(test, feature = "testing"))]
pub mod fixtures;
pub mod header;
pub mod hrana;
pub mod import;
pub mod layout;
pub mod manifest;
pub mod migrate;
pub mod pipeline;
pub mod queue;
pub mod report;
pub mod request;
pub mod sqlite;
pub mod store;
pub mod stream;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod trend;
pub mod upload;
pub mod vfs;
pub mod work;

#[cfg(all(target_family = "wasm", target_os = "unknown"))]
mod runtime;
