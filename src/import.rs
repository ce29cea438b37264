//! Copying a SQLite database into a Durable Object's SQL storage: the plan (which objects to
//! create, which tables cannot be copied and why), row batches within the Durable Object
//! limits, and the import itself (drop, create, skip, copy, verify) over a small
//! [`SqlTarget`] trait, so host and wasm32 tests drive it against a rusqlite target and the
//! Durable Object file only adapts its storage API.

use rusqlite::Connection;
use rusqlite::types::Value;
use serde::Serialize;

use crate::error::Error;

/// Durable Object SQL allows at most 100 bound parameters per statement.
pub const MAX_BOUND_PARAMS: usize = 100;
/// Durable Object SQL statements may be at most 100 KB; batches stay well below.
pub const MAX_STATEMENT_BYTES: usize = 90 * 1024;
/// Largest integer a JS number (the Durable Object SQL API's value type) holds exactly.
pub const MAX_SAFE_INTEGER: i64 = crate::encoding::MAX_SAFE_INTEGER;

/// Whether a table belongs to the storage rather than the user: SQLite's own (`sqlite_`),
/// Durable Object storage's (`_cf_`), and the one local workerd (Miniflare) keeps in every
/// object (`__miniflare_`). An import neither drops nor lists them.
#[must_use]
pub fn is_reserved(name: &str) -> bool {
    name.starts_with("sqlite_") || name.starts_with("_cf_") || name.starts_with("__miniflare")
}

/// Where an import writes: a SQL database with the few operations the import needs.
pub trait SqlTarget {
    /// Runs one statement without parameters; `Err` carries the target's message.
    fn exec(&self, sql: &str) -> Result<(), String>;
    /// Runs one statement with positional parameters.
    fn exec_with(&self, sql: &str, params: Vec<Value>) -> Result<(), String>;
    /// Runs a query and hands each row to `each`, in order.
    fn query(
        &self,
        sql: &str,
        each: &mut dyn FnMut(Vec<Value>) -> Result<(), Error>,
    ) -> Result<(), Error>;
    /// The database's size in bytes.
    fn size_bytes(&self) -> u64;
    /// Whether the target hosts virtual tables of `module` (lower case). Durable Object
    /// SQLite hosts fts5 only; it refuses rtree, geopoly, fts3 and fts4.
    fn hosts_module(&self, module: &str) -> bool;
}

/// A rusqlite connection as an import target: what host and wasm32 tests import into.
#[derive(Debug)]
pub struct ConnectionTarget<'a>(pub &'a Connection);

impl SqlTarget for ConnectionTarget<'_> {
    fn exec(&self, sql: &str) -> Result<(), String> {
        self.0.execute_batch(sql).map_err(|e| e.to_string())
    }

    fn exec_with(&self, sql: &str, params: Vec<Value>) -> Result<(), String> {
        self.0
            .execute(sql, rusqlite::params_from_iter(params))
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn query(
        &self,
        sql: &str,
        each: &mut dyn FnMut(Vec<Value>) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let mut stmt = self.0.prepare(sql)?;
        let n = stmt.column_count();
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            each((0..n).map(|i| row.get(i)).collect::<Result<_, _>>()?)?;
        }
        Ok(())
    }

    fn size_bytes(&self) -> u64 {
        self.0
            .query_row(
                "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_or(0, |n| u64::try_from(n).unwrap_or(0))
    }

    fn hosts_module(&self, _module: &str) -> bool {
        // Whatever this SQLite was built with; a module it lacks fails its CREATE, which the
        // import reports.
        true
    }
}

/// An AUTOINCREMENT counter's outcome in an import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CounterReport {
    /// The table.
    pub table: String,
    /// Its counter in the source (`sqlite_sequence.seq`): the largest id ever handed out,
    /// which can be above the largest id still present.
    pub seq: i64,
    /// Whether the target now holds the same counter.
    pub kept: bool,
    /// Why not, if not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A table's outcome in an import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableReport {
    /// Table name.
    pub name: String,
    /// Rows in the source.
    pub rows_source: i64,
    /// Rows in the target after the copy.
    pub rows_copied: i64,
    /// The copy holds exactly the source's content: the same rows, rowids and typed values
    /// (equal [`TableDigest`]s).
    pub verified: bool,
    /// The source's content digest (SHA-256 over rowids and typed values, storage order).
    pub sha256: String,
    /// How the copy differs, if it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mismatch: Option<String>,
}

impl TableReport {
    /// The outcome of copying `name` whose source holds `want` and whose copy holds `got`.
    #[must_use]
    pub fn compare(name: &str, want: &TableDigest, got: &TableDigest) -> Self {
        let verified = want == got;
        Self {
            name: name.to_owned(),
            rows_source: want.rows,
            rows_copied: got.rows,
            verified,
            sha256: want.sha256.clone(),
            mismatch: (!verified).then(|| {
                format!(
                    "content differs: {} rows with sha256 {} in the source, {} rows with sha256 {} in the copy",
                    want.rows, want.sha256, got.rows, got.sha256
                )
            }),
        }
    }
}

/// What an import did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImportReport {
    /// Every table copied, with its verification.
    pub tables: Vec<TableReport>,
    /// Indexes, views and triggers created.
    pub created: Vec<String>,
    /// What was not copied, with reasons.
    pub skipped: Vec<Skipped>,
    /// AUTOINCREMENT counters, and whether each was kept.
    pub counters: Vec<CounterReport>,
    /// True if every copied table verified.
    pub verified: bool,
    /// The target's size after the import.
    pub target_size_bytes: u64,
}

fn target_error(context: &str) -> impl Fn(String) -> Error + '_ {
    move |detail| Error::Internal {
        detail: format!("import target, {context}: {detail}"),
    }
}

fn target_names(target: &impl SqlTarget, sql: &str) -> Result<Vec<String>, Error> {
    let mut names = Vec::new();
    target.query(sql, &mut |row| {
        if let Some(Value::Text(name)) = row.into_iter().next() {
            names.push(name);
        }
        Ok(())
    })?;
    Ok(names)
}

/// Removes what an earlier import created, so re-importing replaces instead of duplicating.
fn clear(target: &impl SqlTarget) -> Result<(), Error> {
    for kind in ["trigger", "view"] {
        for name in target_names(
            target,
            &format!("SELECT name FROM sqlite_master WHERE type = '{kind}'"),
        )? {
            target
                .exec(&format!("DROP {kind} IF EXISTS {}", quote(&name)))
                .map_err(target_error("drop old object"))?;
        }
    }
    let tables = target_names(
        target,
        "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY rowid",
    )?;
    // Children (created later) before the parents they reference.
    for name in tables.into_iter().rev() {
        if !is_reserved(&name) {
            target
                .exec(&format!("DROP TABLE IF EXISTS {}", quote(&name)))
                .map_err(target_error("drop old table"))?;
        }
    }
    Ok(())
}

/// What an export did: every table with its row count on both sides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExportReport {
    /// Tables written into the image, with their rows in the source and in the image.
    pub tables: Vec<TableReport>,
    /// Indexes, views and triggers created in the image.
    pub created: Vec<String>,
    /// AUTOINCREMENT counters carried over.
    pub counters: Vec<CounterReport>,
    /// True if every table holds the same content in the image as in the source (equal
    /// digests) and every counter was kept.
    pub verified: bool,
}

fn source_rows(source: &impl SqlTarget, sql: &str) -> Result<Vec<Vec<Value>>, Error> {
    let mut rows = Vec::new();
    source.query(sql, &mut |row| {
        rows.push(row);
        Ok(())
    })?;
    Ok(rows)
}

fn text(v: &Value) -> Option<&str> {
    match v {
        Value::Text(t) => Some(t),
        _ => None,
    }
}

/// Copies a database reachable only through SQL (a Durable Object) into `dest`, a new
/// in-memory SQLite, so it can be stored as one file: the reverse of [`run`]. Tables (full-text
/// tables through their module, with rowids) first, then indexes, views and triggers, then
/// AUTOINCREMENT counters. Every value is read exactly (integers as text, types alongside),
/// and each table is verified by content: its digest in the image equals its digest as read.
pub fn export_into(source: &impl SqlTarget, dest: &Connection) -> Result<ExportReport, Error> {
    let objects = source_rows(
        source,
        "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY rowid",
    )?;
    let vtabs: Vec<(String, Option<(String, Content)>)> = objects
        .iter()
        .filter_map(|o| {
            let (name, sql) = (text(&o[1])?, text(&o[2])?);
            sql.trim_start()
                .to_ascii_uppercase()
                .starts_with("CREATE VIRTUAL TABLE")
                .then(|| (name.to_owned(), virtual_module(sql)))
        })
        .collect();
    let mut tables = Vec::new();
    let mut later = Vec::new();
    let mut rebuilds = Vec::new();
    for o in &objects {
        let (Some(kind), Some(name), Some(sql)) = (text(&o[0]), text(&o[1]), text(&o[2])) else {
            continue;
        };
        if is_reserved(name)
            || vtabs
                .iter()
                .any(|(v, _)| name != v && name.starts_with(&format!("{v}_")))
        {
            continue;
        }
        if kind != "table" {
            later.push((name.to_owned(), sql.to_owned()));
            continue;
        }
        let module = vtabs
            .iter()
            .find(|(v, _)| v == name)
            .and_then(|(_, m)| m.clone());
        if matches!(&module, Some((m, Content::External)) if m.starts_with("fts")) {
            rebuilds.push((name.to_owned(), sql.to_owned()));
            continue;
        }
        dest.execute_batch(sql)?;
        let full_text = module.as_ref().is_some_and(|(m, _)| m.starts_with("fts"));
        let (columns, order_by) = if full_text {
            let mut columns = vec!["rowid".to_owned()];
            let info = format!(
                "SELECT name, hidden FROM pragma_table_xinfo({})",
                literal(name)
            );
            for row in source_rows(source, &info)? {
                if let (Some(col), Some(Value::Integer(0))) = (text(&row[0]), row.get(1)) {
                    columns.push(col.to_owned());
                }
            }
            (columns, "ORDER BY rowid".to_owned())
        } else {
            (
                copy_columns(source, name, sql)?,
                storage_order(source, name, sql)?,
            )
        };
        let insert = format!(
            "INSERT INTO {} ({}) VALUES ({})",
            quote(name),
            column_list(&columns),
            vec!["?"; columns.len()].join(", ")
        );
        let mut stmt = dest.prepare(&insert)?;
        let want = read_exact(source, name, &columns, &order_by, &mut |row| {
            stmt.execute(rusqlite::params_from_iter(row))?;
            Ok(())
        })?;
        let got = digest(&ConnectionTarget(dest), name, &columns, &order_by)?;
        tables.push(TableReport::compare(name, &want, &got));
    }
    let mut created = Vec::new();
    for (name, sql) in later.iter().chain(&rebuilds) {
        dest.execute_batch(sql)?;
        if rebuilds.iter().any(|(r, _)| r == name) {
            dest.execute_batch(&format!(
                "INSERT INTO {}({}) VALUES ('rebuild')",
                quote(name),
                quote(name)
            ))?;
        }
        created.push(name.clone());
    }
    let mut counters = Vec::new();
    let has_sequence = objects
        .iter()
        .any(|o| text(&o[1]) == Some("sqlite_sequence"));
    if has_sequence {
        for row in source_rows(
            source,
            "SELECT name, CAST(seq AS TEXT) FROM sqlite_sequence",
        )? {
            if let (Some(table), Some(seq)) = (text(&row[0]), text(&row[1])) {
                let seq = seq.parse().map_err(|_| Error::Internal {
                    detail: format!("sqlite_sequence holds {seq:?} for {table}"),
                })?;
                counters.push(keep_counter(&ConnectionTarget(dest), table, seq)?);
            }
        }
    }
    Ok(ExportReport {
        verified: tables.iter().all(|t| t.verified) && counters.iter().all(|c| c.kept),
        tables,
        created,
        counters,
    })
}

/// Sets `table`'s AUTOINCREMENT counter in the target to `seq` and reads it back.
fn keep_counter(target: &impl SqlTarget, table: &str, seq: i64) -> Result<CounterReport, Error> {
    let name = Value::Text(table.to_owned());
    let written = target
        .exec_with(
            "DELETE FROM sqlite_sequence WHERE name = ?",
            vec![name.clone()],
        )
        .and_then(|()| {
            target.exec_with(
                "INSERT INTO sqlite_sequence(name, seq) VALUES (?, CAST(? AS INTEGER))",
                vec![name, Value::Text(seq.to_string())],
            )
        });
    let mut stored = None;
    if written.is_ok() {
        target.query(
            &format!(
                "SELECT CAST(seq AS TEXT) FROM sqlite_sequence WHERE name = {}",
                literal(table)
            ),
            &mut |row| {
                if let Some(Value::Text(n)) = row.first() {
                    stored = n.parse::<i64>().ok();
                }
                Ok(())
            },
        )?;
    }
    let reason = match (&written, stored) {
        (Err(e), _) => Some(format!("the target refused to set it: {e}")),
        (Ok(()), Some(n)) if n == seq => None,
        (Ok(()), other) => Some(format!("read back {other:?} instead of {seq}")),
    };
    Ok(CounterReport {
        table: table.to_owned(),
        seq,
        kept: reason.is_none(),
        reason,
    })
}

/// What a copy into `target` would lose, as far as the plan shows before anything is
/// written: names the target reserves, tables of modules it does not host, and contentless
/// full-text indexes (no text to copy them from).
fn predicted_losses(plan: &ImportPlan, target: &impl SqlTarget) -> Vec<Skipped> {
    let mut lost: Vec<Skipped> = plan.skipped.iter().filter(|s| s.lost).cloned().collect();
    let modules = plan
        .tables
        .iter()
        .filter_map(|t| Some((&t.name, t.module.as_ref()?)))
        .chain(plan.rebuilds.iter().map(|(name, module, _)| (name, module)));
    for (name, module) in modules {
        if !target.hosts_module(module) {
            lost.push(Skipped {
                name: name.clone(),
                kind: "table".into(),
                reason: unhosted_consequence(module),
                lost: true,
            });
        }
    }
    for (name, module, _) in &plan.contentless {
        lost.push(if target.hosts_module(module) {
            contentless(name, None)
        } else {
            Skipped {
                name: name.clone(),
                kind: "table".into(),
                reason: unhosted_consequence(module),
                lost: true,
            }
        });
    }
    lost
}

fn contentless(name: &str, refused: Option<String>) -> Skipped {
    Skipped {
        name: name.to_owned(),
        kind: "table".into(),
        reason: refused.unwrap_or_else(|| {
            "contentless full-text index: it stores no text to copy, so it was created empty; \
             re-insert its documents to index them again"
                .into()
        }),
        lost: true,
    }
}

/// The objects a report lists as lost, as `name (kind): reason`, for [`Error::WouldLoseData`].
#[must_use]
pub fn describe_losses(skipped: &[Skipped]) -> Vec<String> {
    skipped
        .iter()
        .filter(|s| s.lost)
        .map(|s| format!("{} ({}): {}", s.name, s.kind, s.reason))
        .collect()
}

/// Copies `source` into `target`, replacing an earlier import: drops what is there, creates
/// each table the target can host, copies its rows (rowids included) in bounded batches,
/// verifies each table by content (its [`TableDigest`] read back from the target equals the
/// source's), then creates indexes, views and triggers and sets AUTOINCREMENT counters.
///
/// Unless `allow_loss`, a copy that would lose anything (a table the target cannot host, a
/// name it reserves, an object it refuses) is refused with the list: before anything is
/// written when the plan shows it, else after the copy (the caller then must not switch to
/// the target). With `allow_loss` the report's `skipped` names what was dropped (`lost`).
pub fn run(
    source: &Connection,
    target: &impl SqlTarget,
    allow_loss: bool,
) -> Result<ImportReport, Error> {
    let plan = plan(source)?;
    let predicted = predicted_losses(&plan, target);
    if !allow_loss && !predicted.is_empty() {
        return Err(Error::WouldLoseData {
            lost: describe_losses(&predicted),
        });
    }
    // Foreign keys are checked at commit, so tables can be dropped and filled in schema order
    // whatever their references.
    target
        .exec("PRAGMA defer_foreign_keys = ON")
        .map_err(target_error("defer foreign keys"))?;
    clear(target)?;
    let mut skipped = plan.skipped.clone();
    let mut tables = Vec::new();
    let source_db = ConnectionTarget(source);
    for table in &plan.tables {
        if let Some(module) = &table.module
            && !target.hosts_module(module)
        {
            skipped.push(Skipped {
                name: table.name.clone(),
                kind: "table".into(),
                reason: unhosted_consequence(module),
                lost: true,
            });
            continue;
        }
        if let Err(e) = target.exec(&table.create_sql) {
            skipped.push(Skipped {
                name: table.name.clone(),
                kind: "table".into(),
                reason: format!("the target refused its CREATE statement: {e}"),
                lost: true,
            });
            continue;
        }
        for_each_batch(source, table, |batch| {
            target
                .exec_with(&batch.sql, batch.values)
                .map_err(target_error("insert rows"))
        })?;
        let want = digest(&source_db, &table.name, &table.columns, &table.order_by)?;
        let got = digest(target, &table.name, &table.columns, &table.order_by)?;
        tables.push(TableReport::compare(&table.name, &want, &got));
    }
    let mut created = Vec::new();
    for (kind, name, create) in &plan.others {
        match target.exec(create) {
            Ok(()) => created.push(name.clone()),
            Err(e) => skipped.push(Skipped {
                name: name.clone(),
                kind: kind.clone(),
                reason: format!("the target refused its CREATE statement: {e}"),
                lost: true,
            }),
        }
    }
    for (name, module, create) in &plan.rebuilds {
        let outcome = if target.hosts_module(module) {
            target.exec(create).and_then(|()| {
                target.exec(&format!(
                    "INSERT INTO {}({}) VALUES ('rebuild')",
                    quote(name),
                    quote(name)
                ))
            })
        } else {
            Err(unhosted_consequence(module))
        };
        match outcome {
            Ok(()) => created.push(name.clone()),
            Err(e) => skipped.push(Skipped {
                name: name.clone(),
                kind: "table".into(),
                reason: format!("full-text index over another table could not be rebuilt: {e}"),
                lost: true,
            }),
        }
    }
    for (name, module, create) in &plan.contentless {
        skipped.push(if !target.hosts_module(module) {
            Skipped {
                name: name.clone(),
                kind: "table".into(),
                reason: unhosted_consequence(module),
                lost: true,
            }
        } else if let Err(e) = target.exec(create) {
            contentless(
                name,
                Some(format!("the target refused its CREATE statement: {e}")),
            )
        } else {
            contentless(name, None)
        });
    }
    let copied: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    let counters = plan
        .sequences
        .iter()
        .filter(|(table, _)| copied.contains(&table.as_str()))
        .map(|(table, seq)| keep_counter(target, table, *seq))
        .collect::<Result<Vec<_>, _>>()?;
    if !allow_loss && skipped.iter().any(|s| s.lost) {
        return Err(Error::WouldLoseData {
            lost: describe_losses(&skipped),
        });
    }
    Ok(ImportReport {
        verified: tables.iter().all(|t| t.verified) && counters.iter().all(|c| c.kept),
        tables,
        created,
        skipped,
        counters,
        target_size_bytes: target.size_bytes(),
    })
}

/// A table to create and fill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablePlan {
    /// Table name.
    pub name: String,
    /// Its `CREATE TABLE` statement, as stored in `sqlite_master`.
    pub create_sql: String,
    /// Insertable columns (generated and hidden columns excluded), in order.
    pub columns: Vec<String>,
    /// `ORDER BY` clause giving the table's storage order (rowid, or the primary key of a
    /// `WITHOUT ROWID` table), so copy and verification never depend on the query planner.
    pub order_by: String,
    /// For a virtual table, its module (lower case); its rows are copied through the module.
    pub module: Option<String>,
}

/// Something that will not be copied, reported instead of silently skipped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// Object name.
    pub name: String,
    /// `table`, `index`, `view` or `trigger`.
    pub kind: String,
    /// Why it is not copied.
    pub reason: String,
    /// Whether data goes missing with it. False for what the target rebuilds by itself (a
    /// full-text table's shadow tables, SQLite's statistics): a move refuses anything true
    /// here unless told `allow_loss`.
    pub lost: bool,
}

/// Everything an import will do, in order.
#[derive(Debug, Clone, Default)]
pub struct ImportPlan {
    /// Ordinary tables, in `sqlite_master` order.
    pub tables: Vec<TablePlan>,
    /// Indexes, views and triggers to create after the rows: (kind, name, sql).
    pub others: Vec<(String, String, String)>,
    /// What is left out, with reasons.
    pub skipped: Vec<Skipped>,
    /// Full-text tables whose content lives in another table: created after the rows, then
    /// rebuilt from that table: (name, module, sql).
    pub rebuilds: Vec<(String, String, String)>,
    /// Full-text tables that store no content: created, empty (nothing to copy them from).
    pub contentless: Vec<(String, String, String)>,
    /// AUTOINCREMENT counters of the source: (table, seq).
    pub sequences: Vec<(String, i64)>,
}

/// How a full-text table keeps its text (its `content=` option).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Content {
    /// In its own shadow table: the rows can be read and copied.
    Own,
    /// In another table (`content=other`): rebuilt from that table.
    External,
    /// Nowhere (`content=''`): only the index exists.
    None,
}

/// The module of a `CREATE VIRTUAL TABLE` statement, lower case, and where a full-text table
/// keeps its text.
fn virtual_module(sql: &str) -> Option<(String, Content)> {
    let upper = sql.to_ascii_uppercase();
    let at = upper.find(" USING ")? + " USING ".len();
    let rest = sql[at..].trim_start();
    let module: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect::<String>()
        .to_ascii_lowercase();
    let args = rest[module.len()..].to_ascii_lowercase().replace(' ', "");
    let content = match args.find("content=") {
        Some(i) => {
            let value = &args[i + "content=".len()..];
            if value.starts_with("''") || value.starts_with("\"\"") {
                Content::None
            } else {
                Content::External
            }
        }
        None => Content::Own,
    };
    Some((module, content))
}

/// What a target that does not host `module` loses, for the report.
fn unhosted_consequence(module: &str) -> String {
    match module {
        "rtree" | "rtree_i32" => "spatial index not available in the target (module rtree); the geometry rows it indexes are kept in their own table, so spatial queries must scan them".into(),
        "geopoly" => "polygon index not available in the target (module geopoly); its shapes are not copied".into(),
        "fts3" | "fts4" => format!("full-text table not available in the target (module {module}); its text is not copied: recreate it with fts5, which the target hosts"),
        other => format!("virtual table module {other} is not available in the target; not copied"),
    }
}

/// Quoted, comma-separated column names.
fn column_list(columns: &[String]) -> String {
    columns
        .iter()
        .map(|c| quote(c))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Quotes an identifier for SQL.
#[must_use]
pub fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Reads the schema and decides what can be copied.
pub fn plan(conn: &Connection) -> Result<ImportPlan, Error> {
    let rows: Vec<(String, String, Option<String>)> = {
        let mut stmt = conn.prepare("SELECT type, name, sql FROM sqlite_master ORDER BY rowid")?;
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?
    };
    let virtual_tables: Vec<(String, String)> = rows
        .iter()
        .filter(|(kind, _, _)| kind == "table")
        .filter_map(|(_, name, sql)| {
            let sql = sql.as_deref()?;
            sql.trim_start()
                .to_ascii_uppercase()
                .starts_with("CREATE VIRTUAL TABLE")
                .then(|| virtual_module(sql).map(|(m, _)| (name.clone(), m)))?
        })
        .collect();
    let mut plan = ImportPlan::default();
    for (kind, name, sql) in rows {
        let skip = |reason: String, lost: bool| Skipped {
            name: name.clone(),
            kind: kind.clone(),
            reason,
            lost,
        };
        if name == "sqlite_sequence" {
            // Its rows become `counters`: the target keeps its own table, set from these.
            let mut stmt = conn.prepare("SELECT name, seq FROM sqlite_sequence ORDER BY rowid")?;
            plan.sequences = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            continue;
        }
        if name.starts_with("sqlite_") {
            if kind == "table" {
                plan.skipped.push(skip(
                    "SQLite statistics table; ANALYZE in the target rebuilds it".into(),
                    false,
                ));
            }
            continue;
        }
        if is_reserved(&name) {
            plan.skipped
                .push(skip("name reserved by Durable Object storage".into(), true));
            continue;
        }
        let Some(sql) = sql else {
            continue; // automatic indexes (UNIQUE / PRIMARY KEY) come with their table
        };
        if let Some((owner, module)) = virtual_tables
            .iter()
            .find(|(v, _)| name != *v && name.starts_with(&format!("{v}_")))
        {
            plan.skipped.push(skip(
                format!(
                    "shadow table of virtual table {owner} (module {module}); the module rebuilds it"
                ),
                false,
            ));
            continue;
        }
        if let Some((_, module)) = virtual_tables.iter().find(|(v, _)| *v == name) {
            let content = virtual_module(&sql).map_or(Content::Own, |(_, c)| c);
            let full_text = module.starts_with("fts");
            match content {
                Content::External if full_text => {
                    plan.rebuilds.push((name, module.clone(), sql));
                }
                Content::None if full_text => {
                    plan.contentless.push((name, module.clone(), sql));
                }
                _ => {
                    // Full-text rowids are what the app's other tables refer to: copy them.
                    let mut columns = if full_text {
                        vec!["rowid".to_owned()]
                    } else {
                        vec![]
                    };
                    match visible_columns(conn, &name) {
                        Ok(visible) => columns.extend(visible),
                        // This SQLite lacks the module (the Worker's build has no rtree), so
                        // the table cannot be read here: what the target loses is the same.
                        Err(_) => {
                            plan.skipped.push(skip(unhosted_consequence(module), true));
                            continue;
                        }
                    }
                    plan.tables.push(TablePlan {
                        name,
                        create_sql: sql,
                        columns,
                        order_by: "ORDER BY rowid".into(),
                        module: Some(module.clone()),
                    });
                }
            }
            continue;
        }
        if kind == "table" {
            let columns = copy_columns(&ConnectionTarget(conn), &name, &sql)?;
            let order_by = storage_order(&ConnectionTarget(conn), &name, &sql)?;
            plan.tables.push(TablePlan {
                name,
                create_sql: sql,
                columns,
                order_by,
                module: None,
            });
        } else {
            plan.others.push((kind, name, sql));
        }
    }
    Ok(plan)
}

/// A virtual table's declared columns (`pragma_table_info` leaves out its hidden ones).
fn visible_columns(conn: &Connection, table: &str) -> Result<Vec<String>, Error> {
    let mut stmt = conn.prepare("SELECT name FROM pragma_table_info(?1)")?;
    let cols = stmt
        .query_map([table], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(cols)
}

/// One multi-row `INSERT` and its bound values.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// `INSERT INTO t (cols) VALUES (?, ..), (?, ..)`.
    pub sql: String,
    /// Values, row after row.
    pub values: Vec<Value>,
    /// Rows in this batch.
    pub rows: usize,
}

/// Streams the rows of `table`, in storage order, as batches within the limits: only one
/// batch is in memory at a time. Stops at the first error `f` returns.
pub fn for_each_batch<E: From<Error>>(
    conn: &Connection,
    table: &TablePlan,
    mut f: impl FnMut(Batch) -> Result<(), E>,
) -> Result<(), E> {
    let ncols = table.columns.len().max(1);
    let rows_per_batch = (MAX_BOUND_PARAMS / ncols).max(1);
    let col_list = column_list(&table.columns);
    let mut stmt = conn.prepare(&select_columns(table)).map_err(Error::from)?;
    let mut rows = stmt.query([]).map_err(Error::from)?;
    let head = format!("INSERT INTO {} ({col_list}) VALUES ", quote(&table.name));
    let (mut sql, mut values, mut count) = (head.clone(), Vec::new(), 0);
    while let Some(row) = rows.next().map_err(Error::from)? {
        sql.push_str(if count == 0 { "(" } else { ", (" });
        for i in 0..table.columns.len() {
            let (placeholder, v) = exact_param(row.get(i).map_err(Error::from)?);
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(placeholder);
            values.push(v);
        }
        sql.push(')');
        count += 1;
        let bytes = sql.len()
            + values
                .iter()
                .map(|v| match v {
                    Value::Text(s) => s.len(),
                    Value::Blob(b) => b.len(),
                    _ => 8,
                })
                .sum::<usize>();
        if count == rows_per_batch || bytes >= MAX_STATEMENT_BYTES {
            f(Batch {
                sql: std::mem::replace(&mut sql, head.clone()),
                values: std::mem::take(&mut values),
                rows: count,
            })?;
            count = 0;
        }
    }
    if count > 0 {
        f(Batch {
            sql,
            values,
            rows: count,
        })?;
    }
    Ok(())
}

/// A value as a parameter no target can round or retype, and its placeholder: an integer goes
/// as its decimal text through `CAST(? AS INTEGER)` (the Durable Object binds every number as
/// a double, so 9007199254740993 would arrive rounded, and 3 as the REAL 3.0); everything
/// else as itself (a double carries a REAL exactly).
fn exact_param(v: Value) -> (&'static str, Value) {
    match v {
        Value::Integer(n) => ("CAST(? AS INTEGER)", Value::Text(n.to_string())),
        other => ("?", other),
    }
}

/// Whether a `CREATE TABLE` statement makes a table without rowids.
fn is_without_rowid(create_sql: &str) -> bool {
    create_sql
        .to_ascii_uppercase()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .contains("WITHOUT ROWID")
}

/// A string as a SQL literal.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The columns a copy of `table` carries, read through `db`: its rowid first, unless an
/// INTEGER PRIMARY KEY column already is the rowid, so rowids survive the copy and whatever
/// refers to them stays true; then every stored column (generated columns are computed
/// again, hidden ones belong to a module).
pub fn copy_columns(
    db: &impl SqlTarget,
    table: &str,
    create_sql: &str,
) -> Result<Vec<String>, Error> {
    let info = source_rows(
        db,
        &format!(
            "SELECT name, type, pk, hidden FROM pragma_table_xinfo({})",
            literal(table)
        ),
    )?;
    let (mut names, mut keys) = (Vec::new(), Vec::new());
    for row in &info {
        let (Some(name), Some(kind)) = (text(&row[0]), text(&row[1])) else {
            continue;
        };
        if matches!(row.get(2), Some(Value::Integer(n)) if *n > 0) {
            keys.push(kind.to_owned());
        }
        if matches!(row.get(3), Some(Value::Integer(0))) {
            names.push(name.to_owned());
        }
    }
    let integer_key = keys.len() == 1 && keys[0].eq_ignore_ascii_case("integer");
    if !is_without_rowid(create_sql) && !integer_key {
        // A column may take the name `rowid`; SQLite then still answers to the other two.
        if let Some(alias) = ["rowid", "_rowid_", "oid"]
            .into_iter()
            .find(|a| !names.iter().any(|n| n.eq_ignore_ascii_case(a)))
        {
            names.insert(0, alias.to_owned());
        }
    }
    Ok(names)
}

/// `ORDER BY` giving `table`'s storage order (rowid, or the primary key of a `WITHOUT ROWID`
/// table), so copies and digests never depend on the query planner.
fn storage_order(db: &impl SqlTarget, table: &str, create_sql: &str) -> Result<String, Error> {
    if !is_without_rowid(create_sql) {
        return Ok("ORDER BY rowid".into());
    }
    let pk = target_names(
        db,
        &format!(
            "SELECT name FROM pragma_table_info({}) WHERE pk > 0 ORDER BY pk",
            literal(table)
        ),
    )?;
    Ok(format!("ORDER BY {}", column_list(&pk)))
}

/// The `SELECT` that reads `columns` of `table` with their types: each column as `typeof`
/// and its value, integers as decimal text. Through a Durable Object (JS numbers) an integer
/// beyond 2^53 would round and a REAL 3.0 would read as the integer 3; this way every value
/// reads back exactly, on every target, and the same SQL serves copies and digests.
fn typed_select(table: &str, columns: &[String], order_by: &str) -> String {
    let list = columns
        .iter()
        .map(|c| {
            let q = quote(c);
            format!(
                "typeof({q}), CASE typeof({q}) WHEN 'integer' THEN CAST({q} AS TEXT) ELSE {q} END"
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!("SELECT {list} FROM {} {order_by}", quote(table))
}

/// The values of one row read with [`typed_select`].
fn decode_typed(row: Vec<Value>) -> Result<Vec<Value>, Error> {
    let bad = |what: String| Error::Internal {
        detail: format!("typed read: {what}"),
    };
    let mut out = Vec::with_capacity(row.len() / 2);
    let mut it = row.into_iter();
    while let (Some(kind), Some(value)) = (it.next(), it.next()) {
        let Value::Text(kind) = kind else {
            return Err(bad(format!("typeof gave {kind:?}")));
        };
        out.push(match (kind.as_str(), value) {
            ("null", _) => Value::Null,
            ("integer", Value::Text(t)) => {
                Value::Integer(t.parse().map_err(|_| bad(format!("integer {t:?}")))?)
            }
            ("integer", Value::Integer(n)) => Value::Integer(n),
            ("real", Value::Real(f)) => Value::Real(f),
            // A JS number holding a whole REAL reads as an integer; typeof says what it is.
            #[allow(clippy::cast_precision_loss)]
            ("real", Value::Integer(n)) => Value::Real(n as f64),
            ("text", v @ Value::Text(_)) | ("blob", v @ Value::Blob(_)) => v,
            (kind, v) => return Err(bad(format!("{kind} value read as {v:?}"))),
        });
    }
    Ok(out)
}

/// What a table holds, by content: its rows and a SHA-256 over every value of every row in
/// storage order, typed (an INTEGER 3 and a REAL 3.0 differ, rowids included).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableDigest {
    /// Rows.
    pub rows: i64,
    /// Lower-case hex SHA-256.
    pub sha256: String,
}

/// A running [`TableDigest`].
#[derive(Default)]
struct Digester {
    hash: sha2::Sha256,
    rows: i64,
}

impl Digester {
    fn add(&mut self, row: &[Value]) {
        use sha2::Digest as _;
        self.rows += 1;
        for v in row {
            let (tag, bytes): (u8, std::borrow::Cow<'_, [u8]>) = match v {
                Value::Null => (0, (&[][..]).into()),
                Value::Integer(n) => (1, n.to_be_bytes().to_vec().into()),
                Value::Real(f) => (2, f.to_bits().to_be_bytes().to_vec().into()),
                Value::Text(t) => (3, t.as_bytes().into()),
                Value::Blob(b) => (4, b.as_slice().into()),
            };
            self.hash.update([tag]);
            self.hash.update((bytes.len() as u64).to_be_bytes());
            self.hash.update(&bytes);
        }
        self.hash.update([0xff]);
    }

    fn finish(self) -> TableDigest {
        use sha2::Digest as _;
        let sha256 = self
            .hash
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        TableDigest {
            rows: self.rows,
            sha256,
        }
    }
}

/// Reads `columns` of `table` through `db` exactly (see [`typed_select`]) and hands each row
/// to `each`, in storage order; returns the table's digest.
fn read_exact(
    db: &impl SqlTarget,
    table: &str,
    columns: &[String],
    order_by: &str,
    each: &mut dyn FnMut(&[Value]) -> Result<(), Error>,
) -> Result<TableDigest, Error> {
    let mut digest = Digester::default();
    db.query(&typed_select(table, columns, order_by), &mut |row| {
        let row = decode_typed(row)?;
        digest.add(&row);
        each(&row)
    })?;
    Ok(digest.finish())
}

/// The digest of `columns` of `table` as `db` holds them: computed the same way whatever the
/// database, so a copy and its source compare by content.
pub fn digest(
    db: &impl SqlTarget,
    table: &str,
    columns: &[String],
    order_by: &str,
) -> Result<TableDigest, Error> {
    read_exact(db, table, columns, order_by, &mut |_| Ok(()))
}

/// The `SELECT` that reads a planned table's insertable columns in storage order.
#[must_use]
pub fn select_columns(table: &TablePlan) -> String {
    let cols = column_list(&table.columns);
    format!(
        "SELECT {cols} FROM {} {}",
        quote(&table.name),
        table.order_by
    )
}

#[cfg(test)]
mod tests {
    #[cfg(all(target_family = "wasm", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use std::rc::Rc;

    use super::*;
    use crate::{fixtures, sqlite};

    use rusqlite::types::Value;

    fn demo() -> Connection {
        let body: Rc<[u8]> = fixtures::demo_database().unwrap().into();
        sqlite::load(&body).unwrap().conn
    }

    /// Ordinary tables are planned in order, indexes after them, nothing skipped.
    #[test]
    fn plans_ordinary_schema() {
        let p = plan(&demo()).unwrap();
        let names: Vec<&str> = p.tables.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["projects", "raw_clips", "clip_tags"]);
        assert_eq!(
            p.tables[0].columns,
            ["id", "name", "created_at", "settings"]
        );
        let others: Vec<&str> = p.others.iter().map(|o| o.1.as_str()).collect();
        assert_eq!(others, ["raw_clips_project", "clip_tags_tag"]);
        assert!(p.skipped.is_empty(), "{:?}", p.skipped);
    }

    /// Virtual tables and their shadow tables, generated columns and SQLite's own tables are
    /// reported, not copied.
    #[test]
    fn reports_what_it_cannot_copy() {
        let conn = demo();
        conn.execute_batch(
            "CREATE VIRTUAL TABLE notes USING fts5(body);
             INSERT INTO notes VALUES ('hello');
             CREATE TABLE seq(id INTEGER PRIMARY KEY AUTOINCREMENT, x, doubled AS (x * 2));
             INSERT INTO seq(x) VALUES (1);",
        )
        .unwrap();
        let p = plan(&conn).unwrap();
        let skipped: Vec<&str> = p.skipped.iter().map(|s| s.name.as_str()).collect();
        assert!(skipped.contains(&"notes_data"), "{skipped:?}");
        assert!(
            !skipped.contains(&"notes"),
            "fts5 tables are copied: {skipped:?}"
        );
        assert_eq!(p.sequences, [("seq".to_owned(), 1)]);
        let notes = p.tables.iter().find(|t| t.name == "notes").unwrap();
        assert_eq!(notes.columns, ["rowid", "body"]);
        assert_eq!(notes.module.as_deref(), Some("fts5"));
        let seq = p.tables.iter().find(|t| t.name == "seq").unwrap();
        assert_eq!(seq.columns, ["id", "x"]);
        assert_eq!(seq.order_by, "ORDER BY rowid");
        let tags = plan(&demo())
            .unwrap()
            .tables
            .into_iter()
            .find(|t| t.name == "clip_tags")
            .unwrap();
        assert_eq!(tags.order_by, r#"ORDER BY "clip_id", "tag""#);
    }

    /// Batches cover every row exactly once and never exceed 100 bound parameters.
    #[test]
    fn batches_respect_limits() {
        let conn = demo();
        let p = plan(&conn).unwrap();
        for table in &p.tables {
            let total: i64 = conn
                .query_row(
                    &format!("SELECT count(*) FROM {}", quote(&table.name)),
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            let mut batches = Vec::new();
            for_each_batch::<Error>(&conn, table, |b| {
                batches.push(b);
                Ok(())
            })
            .unwrap();
            assert_eq!(batches.iter().map(|b| b.rows).sum::<usize>() as i64, total);
            for b in &batches {
                assert!(b.values.len() <= MAX_BOUND_PARAMS);
                assert_eq!(b.values.len(), b.rows * table.columns.len());
                assert_eq!(b.sql.matches('?').count(), b.values.len());
            }
        }
    }

    /// A digest is typed and covers rowids: an INTEGER 3 and a REAL 3.0 differ, and so do two
    /// tables whose only difference is a rowid.
    #[test]
    fn digests_are_typed_and_cover_rowids() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE i(v); INSERT INTO i VALUES (3);
             CREATE TABLE r(v); INSERT INTO r VALUES (3.0);
             CREATE TABLE a(v); INSERT INTO a VALUES ('x');
             CREATE TABLE b(v); INSERT INTO b VALUES ('y'); INSERT INTO b VALUES ('x');
             DELETE FROM b WHERE v = 'y';",
        )
        .unwrap();
        let db = ConnectionTarget(&conn);
        let of = |t: &str| {
            let sql = format!("CREATE TABLE {t}(v)");
            let columns = copy_columns(&db, t, &sql).unwrap();
            digest(&db, t, &columns, "ORDER BY rowid").unwrap()
        };
        assert_ne!(of("i").sha256, of("r").sha256);
        assert_eq!(of("a").rows, of("b").rows);
        assert_ne!(of("a").sha256, of("b").sha256, "rowid 1 vs rowid 2");
        assert_eq!(
            copy_columns(&db, "a", "CREATE TABLE a(v)").unwrap(),
            ["rowid", "v"]
        );
    }

    fn import_into(source: &Connection, target: &impl SqlTarget) -> ImportReport {
        run(source, target, false).unwrap()
    }

    fn import_lossy(source: &Connection, target: &impl SqlTarget) -> ImportReport {
        run(source, target, true).unwrap()
    }

    /// The whole import into a real SQLite target: every table copied and verified, indexes
    /// created, and a second import replaces the first instead of duplicating it.
    #[test]
    fn imports_and_reimports() {
        let source = demo();
        let target_conn = sqlite::create().unwrap();
        let target = ConnectionTarget(&target_conn);
        let first = import_into(&source, &target);
        assert!(first.verified, "{first:?}");
        assert_eq!(first.tables.len(), 3);
        assert_eq!(first.created, ["raw_clips_project", "clip_tags_tag"]);
        let again = import_into(&source, &target);
        assert!(again.verified);
        for (a, b) in first.tables.iter().zip(&again.tables) {
            assert_eq!(a.rows_copied, b.rows_copied);
            assert_eq!(b.rows_copied, b.rows_source);
        }
        assert!(again.target_size_bytes > 0);
    }

    /// A target that changes a value on the way in is caught: the table is not verified and
    /// the report names the row and column. (This is the test that fails if the read-back
    /// comparison is removed or weakened.)
    #[test]
    fn verification_catches_a_lossy_target() {
        let source = demo();
        let target_conn = sqlite::create().unwrap();
        let lossy = DoubleTarget {
            alter_text: Some("Project 2"),
            ..DoubleTarget::new(ConnectionTarget(&target_conn))
        };
        let report = import_into(&source, &lossy);
        assert!(!report.verified, "{report:?}");
        let projects = report.tables.iter().find(|t| t.name == "projects").unwrap();
        assert!(!projects.verified);
        let mismatch = projects.mismatch.as_deref().unwrap();
        assert!(mismatch.contains("content differs"), "{mismatch}");
        assert!(
            report
                .tables
                .iter()
                .filter(|t| t.name != "projects")
                .all(|t| t.verified)
        );
    }

    /// Through a target that passes every number as a JS number (the Durable Object binds
    /// them as doubles and reads them back as numbers), integers beyond 2^53 are copied exactly
    /// (as text, cast back to INTEGER), REALs stay REAL and rowids stay what they were, there
    /// and back: the README's `notes.big` moves like any other table.
    #[test]
    fn js_number_targets_keep_integers_reals_and_rowids() {
        let source = Connection::open_in_memory().unwrap();
        source
            .execute_batch(
                "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT, big INTEGER);
                 INSERT INTO notes(body, big) VALUES ('first', 9007199254740993);
                 CREATE TABLE n(v); INSERT INTO n VALUES (3.0), (3), (-9223372036854775808);
                 CREATE TABLE kept(x); INSERT INTO kept VALUES ('a'), ('b'), ('c');
                 DELETE FROM kept WHERE x IN ('a', 'b');",
            )
            .unwrap();
        let middle = sqlite::create().unwrap();
        let js = DoubleTarget::durable_object(ConnectionTarget(&middle));
        let report = import_into(&source, &js);
        assert!(report.verified, "{report:?}");
        assert!(report.skipped.is_empty(), "{:?}", report.skipped);
        let typed = |c: &Connection, sql: &str| -> Vec<(String, String)> {
            c.prepare(sql)
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        let values = "SELECT typeof(v), CAST(v AS TEXT) FROM n ORDER BY rowid";
        assert_eq!(typed(&middle, values), typed(&source, values));
        let rowid = "SELECT CAST(rowid AS TEXT), x FROM kept";
        assert_eq!(typed(&middle, rowid), [("3".to_owned(), "c".to_owned())]);
        let mut back = sqlite::create().unwrap();
        let exported = export_into(&js, &back).unwrap();
        assert!(exported.verified, "{exported:?}");
        let image = sqlite::export(&mut back).unwrap().to_vec();
        let reloaded = sqlite::load(&image).unwrap().conn;
        assert_eq!(typed(&reloaded, values), typed(&source, values));
        assert_eq!(typed(&reloaded, rowid), [("3".to_owned(), "c".to_owned())]);
        let big = "SELECT typeof(big), CAST(big AS TEXT) FROM notes";
        assert_eq!(
            typed(&reloaded, big),
            [("integer".to_owned(), "9007199254740993".to_owned())]
        );
        for t in &exported.tables {
            let source_table = report.tables.iter().find(|s| s.name == t.name).unwrap();
            assert_eq!(t.sha256, source_table.sha256, "{}", t.name);
        }
    }

    /// A copy that would lose a table is refused with the list, before anything is written;
    /// `allow_loss` copies the rest and marks what was dropped.
    #[test]
    fn a_copy_that_would_lose_data_is_refused() {
        let source = demo();
        source
            .execute_batch("CREATE TABLE _cf_mine(x); INSERT INTO _cf_mine VALUES (1);")
            .unwrap();
        let target_conn = sqlite::create().unwrap();
        target_conn
            .execute_batch("CREATE TABLE before(x); INSERT INTO before VALUES (1);")
            .unwrap();
        let err = run(&source, &ConnectionTarget(&target_conn), false).unwrap_err();
        assert_eq!((err.status(), err.code()), (422, "would_lose_data"));
        assert!(err.to_string().contains("_cf_mine"), "{err}");
        let before: i64 = target_conn
            .query_row("SELECT count(*) FROM before", [], |r| r.get(0))
            .unwrap();
        assert_eq!(before, 1, "a refused copy writes nothing");
        let report = import_lossy(&source, &ConnectionTarget(&target_conn));
        let dropped = report
            .skipped
            .iter()
            .find(|s| s.name == "_cf_mine")
            .unwrap();
        assert!(dropped.lost);
        assert_eq!(describe_losses(&report.skipped).len(), 1);
        // A table whose CREATE the target refuses is only found while copying: refused too.
        let refusing = DoubleTarget {
            refuse: Some("CREATE TABLE clip_tags"),
            ..DoubleTarget::new(ConnectionTarget(&target_conn))
        };
        let err = run(&demo(), &refusing, false).unwrap_err();
        assert_eq!(err.code(), "would_lose_data", "{err:?}");
        assert!(err.to_string().contains("clip_tags"), "{err}");
    }

    /// What cannot be copied is reported, never silently dropped: shadow tables (their module
    /// rebuilds them), names the Durable Object reserves, and tables whose CREATE the target
    /// refuses.
    #[test]
    fn skipped_tables_are_reported() {
        let source = demo();
        source
            .execute_batch(
                "CREATE VIRTUAL TABLE notes USING fts5(body);
                 INSERT INTO notes VALUES ('hello');
                 CREATE TABLE seq(id INTEGER PRIMARY KEY AUTOINCREMENT, x);
                 INSERT INTO seq(x) VALUES (1);
                 CREATE TABLE _cf_mine(x);
                 CREATE TABLE refused(x);",
            )
            .unwrap();
        let target_conn = sqlite::create().unwrap();
        let refusing = DoubleTarget {
            refuse: Some("CREATE TABLE refused"),
            ..DoubleTarget::new(ConnectionTarget(&target_conn))
        };
        let report = import_lossy(&source, &refusing);
        let skipped: Vec<(&str, &str)> = report
            .skipped
            .iter()
            .map(|s| (s.name.as_str(), s.reason.as_str()))
            .collect();
        for name in ["notes_data", "_cf_mine", "refused"] {
            assert!(
                skipped.iter().any(|(n, _)| *n == name),
                "{name}: {skipped:?}"
            );
        }
        assert!(report.verified);
        assert!(
            report
                .tables
                .iter()
                .any(|t| t.name == "seq" && t.rows_copied == 1)
        );
        assert!(!report.tables.iter().any(|t| t.name == "refused"));
        // The full-text table itself is copied through its module, with its rows, and the
        // AUTOINCREMENT counter comes along.
        assert!(
            report
                .tables
                .iter()
                .any(|t| t.name == "notes" && t.rows_copied == 1 && t.verified)
        );
        assert_eq!(report.counters.len(), 1);
        assert!(report.counters[0].kept, "{:?}", report.counters);
    }

    fn one_value(conn: &Connection, sql: &str) -> Value {
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    /// Real-world-shaped files imported into a real SQLite target: every table verified,
    /// full-text search answers the same in the copy, AUTOINCREMENT counters survive deleted
    /// top rows, generated columns, views and triggers work, and what is lost is reported.
    #[test]
    fn real_world_files_import_losslessly() {
        for (name, bytes) in fixtures::real_world().unwrap() {
            let source = sqlite::load(&bytes).unwrap().conn;
            let target_conn = sqlite::create().unwrap();
            let report = import_lossy(&source, &ConnectionTarget(&target_conn));
            assert!(report.verified, "{name}: {report:?}");
            assert!(
                report.counters.iter().all(|c| c.kept),
                "{name}: {:?}",
                report.counters
            );
            let same = |sql: &str| {
                assert_eq!(
                    one_value(&source, sql),
                    one_value(&target_conn, sql),
                    "{name}: {sql}"
                )
            };
            match name {
                "fts5_notes" => {
                    same(
                        "SELECT group_concat(rowid) FROM notes WHERE notes MATCH 'keeper OR corner'",
                    );
                    same(
                        "SELECT group_concat(rowid) FROM clips_fts WHERE clips_fts MATCH 'winner'",
                    );
                    let contentless = report
                        .skipped
                        .iter()
                        .find(|s| s.name == "tags_index")
                        .unwrap();
                    assert!(
                        contentless.reason.contains("contentless"),
                        "{contentless:?}"
                    );
                }
                "autoincrement" => {
                    same("SELECT seq FROM sqlite_sequence WHERE name = 'events'");
                    target_conn
                        .execute("INSERT INTO events(what) VALUES ('next')", [])
                        .unwrap();
                    assert_eq!(
                        one_value(&target_conn, "SELECT max(id) FROM events"),
                        Value::Integer(11)
                    );
                }
                "mixed" => {
                    same("SELECT group_concat(kb || label, ',') FROM media");
                    same("SELECT group_concat(clip) FROM good");
                    target_conn
                        .execute("INSERT INTO ratings VALUES (3, 'cy', 2)", [])
                        .unwrap();
                    assert_eq!(
                        one_value(&target_conn, "SELECT what FROM audit"),
                        Value::Text("rated 3".into())
                    );
                    assert_eq!(report.created.len(), 2, "{:?}", report.created);
                }
                "geopackage" => {
                    same("SELECT group_concat(id) FROM rtree_features_geom WHERE minx >= 15");
                }
                other => panic!("unexpected fixture {other}"),
            }
        }
    }

    /// Import then export: every real-world file comes back as an image with the same rows,
    /// the same full-text answers and the same AUTOINCREMENT counters (what a move to a
    /// Durable Object and back does, with the object played by a SQLite connection).
    #[test]
    fn export_reverses_import() {
        for (name, bytes) in fixtures::real_world().unwrap() {
            let source = sqlite::load(&bytes).unwrap().conn;
            let middle = sqlite::create().unwrap();
            assert!(import_lossy(&source, &ConnectionTarget(&middle)).verified);
            let mut back = sqlite::create().unwrap();
            let report = export_into(&ConnectionTarget(&middle), &back).unwrap();
            assert!(report.verified, "{name}: {report:?}");
            let image = sqlite::export(&mut back).unwrap().to_vec();
            let reloaded = sqlite::load(&image).unwrap().conn;
            let ok: String = reloaded
                .query_row("PRAGMA integrity_check", [], |r| r.get(0))
                .unwrap();
            assert_eq!(ok, "ok", "{name}");
            for table in crate::sqlite::list_tables(&source).unwrap() {
                // Shadow tables differ by design, and the contentless index is reported empty.
                let internal = ["notes_", "clips_fts", "tags_index", "rtree_"];
                if is_reserved(&table) || internal.iter().any(|p| table.starts_with(p)) {
                    continue;
                }
                let sql = format!("SELECT count(*) FROM {}", quote(&table));
                assert_eq!(
                    one_value(&source, &sql),
                    one_value(&reloaded, &sql),
                    "{name}.{table}"
                );
            }
            if name == "fts5_notes" {
                let q =
                    "SELECT group_concat(rowid) FROM notes WHERE notes MATCH 'keeper OR corner'";
                assert_eq!(one_value(&source, q), one_value(&reloaded, q));
                let q = "SELECT group_concat(rowid) FROM clips_fts WHERE clips_fts MATCH 'winner'";
                assert_eq!(one_value(&source, q), one_value(&reloaded, q));
            }
            if name == "autoincrement" {
                let q = "SELECT seq FROM sqlite_sequence WHERE name = 'events'";
                assert_eq!(one_value(&source, q), one_value(&reloaded, q));
            }
        }
    }

    /// The same files into a target that hosts only fts5 and passes JS numbers, as a Durable
    /// Object does: full-text tables come across; an rtree index is reported with its module
    /// and consequence while the geometry rows it indexes are kept.
    #[test]
    fn durable_object_like_target_reports_unhostable_modules() {
        for (name, bytes) in fixtures::real_world().unwrap() {
            let source = sqlite::load(&bytes).unwrap().conn;
            let target_conn = sqlite::create().unwrap();
            let report = import_lossy(
                &source,
                &DoubleTarget::durable_object(ConnectionTarget(&target_conn)),
            );
            assert!(report.verified, "{name}: {report:?}");
            if name == "fts5_notes" {
                assert!(
                    report
                        .tables
                        .iter()
                        .any(|t| t.name == "notes" && t.verified)
                );
                assert!(report.created.contains(&"clips_fts".to_owned()));
            }
            if name == "geopackage" {
                let rtree = report
                    .skipped
                    .iter()
                    .find(|s| s.name == "rtree_features_geom")
                    .unwrap();
                assert!(rtree.reason.contains("module rtree"), "{rtree:?}");
                assert!(
                    rtree.reason.contains("geometry rows it indexes are kept"),
                    "{rtree:?}"
                );
                assert!(
                    report
                        .tables
                        .iter()
                        .any(|t| t.name == "features" && t.rows_copied == 2)
                );
            }
        }
    }

    // ---- A test double of the Durable Object target ----

    /// An import target wrapping a real one, with the Durable Object's ways switched on one
    /// by one: numbers as JS numbers, hosting only fts5, refusing some statements, and (as a
    /// fault) altering text on the way in.
    #[derive(Debug)]
    pub struct DoubleTarget<T> {
        inner: T,
        /// Numbers go as JS numbers do through workerd: every number parameter is bound as a
        /// double, and every number read back is a JS number (an integer when it is a safe
        /// one, so a REAL 3.0 reads as 3 and 9007199254740993 as 9007199254740992.0).
        js_numbers: bool,
        /// Hosts only fts5, as Durable Object SQLite does.
        only_fts5: bool,
        /// Statements starting with this are refused ("not authorized").
        refuse: Option<&'static str>,
        /// Text values starting with this are altered on the way in.
        alter_text: Option<&'static str>,
    }

    impl<T> DoubleTarget<T> {
        /// A faithful wrapper; switch behaviours on with the fields below.
        pub fn new(inner: T) -> Self {
            Self {
                inner,
                js_numbers: false,
                only_fts5: false,
                refuse: None,
                alter_text: None,
            }
        }

        /// As the Durable Object: JS numbers, fts5 only.
        pub fn durable_object(inner: T) -> Self {
            Self {
                js_numbers: true,
                only_fts5: true,
                ..Self::new(inner)
            }
        }
    }

    /// A value as a JS number would carry it back.
    #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
    fn as_js_number(v: Value) -> Value {
        let safe = |f: f64| f.fract() == 0.0 && f.abs() <= MAX_SAFE_INTEGER as f64;
        match v {
            Value::Integer(n) if safe(n as f64) => Value::Integer(n),
            Value::Integer(n) => Value::Real(n as f64),
            Value::Real(f) if safe(f) => Value::Integer(f as i64),
            other => other,
        }
    }

    impl<T: SqlTarget> SqlTarget for DoubleTarget<T> {
        fn exec(&self, sql: &str) -> Result<(), String> {
            if self.refuse.is_some_and(|r| sql.starts_with(r)) {
                return Err("not authorized".into());
            }
            self.inner.exec(sql)
        }
        #[allow(clippy::cast_precision_loss)]
        fn exec_with(&self, sql: &str, params: Vec<Value>) -> Result<(), String> {
            if self.refuse.is_some_and(|r| sql.starts_with(r)) {
                return Err("not authorized".into());
            }
            let params = params
                .into_iter()
                .map(|v| match v {
                    Value::Integer(n) if self.js_numbers => Value::Real(n as f64),
                    Value::Text(t) if self.alter_text.is_some_and(|m| t.starts_with(m)) => {
                        Value::Text(format!("{t}!"))
                    }
                    other => other,
                })
                .collect();
            self.inner.exec_with(sql, params)
        }
        fn query(
            &self,
            sql: &str,
            each: &mut dyn FnMut(Vec<Value>) -> Result<(), Error>,
        ) -> Result<(), Error> {
            if !self.js_numbers {
                return self.inner.query(sql, each);
            }
            self.inner.query(sql, &mut |row| {
                each(row.into_iter().map(as_js_number).collect())
            })
        }
        fn size_bytes(&self) -> u64 {
            self.inner.size_bytes()
        }
        fn hosts_module(&self, module: &str) -> bool {
            (!self.only_fts5 || module == "fts5") && self.inner.hosts_module(module)
        }
    }
}
