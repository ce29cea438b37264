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
    /// Whether integers beyond 2^53 survive the trip (the Durable Object API passes JS
    /// numbers, so they do not there).
    fn exact_integers(&self) -> bool;
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

    fn exact_integers(&self) -> bool {
        true
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
    /// Every row read back equals its source row, value by value.
    pub verified: bool,
    /// The first difference found, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mismatch: Option<String>,
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

fn target_count(target: &impl SqlTarget, table: &str) -> Result<i64, Error> {
    let mut n = 0;
    target.query(
        &format!("SELECT count(*) FROM {}", quote(table)),
        &mut |row| {
            if let Some(Value::Integer(c)) = row.first() {
                n = *c;
            }
            Ok(())
        },
    )?;
    Ok(n)
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

/// Reads `table` back from the target and compares it with the source row by row (both
/// scans follow the table's storage order); the first difference, if any.
fn first_mismatch(
    source: &Connection,
    target: &impl SqlTarget,
    table: &TablePlan,
) -> Result<Option<String>, Error> {
    let select = select_columns(table);
    let mut stmt = source.prepare(&select)?;
    let mut rows = stmt.query([])?;
    let mut index = 0;
    let mut mismatch = None;
    target.query(&select, &mut |copied| {
        if mismatch.is_some() {
            return Ok(());
        }
        let Some(row) = rows.next()? else {
            mismatch = Some(format!("row {index}: extra row in the copy"));
            return Ok(());
        };
        for (i, value) in copied.iter().enumerate() {
            let original: Value = row.get(i)?;
            if !same_value(&original, value) {
                mismatch = Some(format!(
                    "row {index}, column {}: {original:?} became {value:?}",
                    table.columns[i]
                ));
                return Ok(());
            }
        }
        index += 1;
        Ok(())
    })?;
    if mismatch.is_none() && rows.next()?.is_some() {
        mismatch = Some(format!("row {index}: missing from the copy"));
    }
    Ok(mismatch)
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
    /// True if every table has as many rows in the image as in the source.
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
/// AUTOINCREMENT counters; each table's rows are counted on both sides.
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
        let mut columns: Vec<String> = if full_text {
            vec!["rowid".into()]
        } else {
            vec![]
        };
        let info = format!(
            "SELECT name, hidden FROM pragma_table_xinfo('{}')",
            name.replace('\'', "''")
        );
        for row in source_rows(source, &info)? {
            if let (Some(col), Some(Value::Integer(0))) = (text(&row[0]), row.get(1)) {
                columns.push(col.to_owned());
            }
        }
        let list = column_list(&columns);
        let insert = format!(
            "INSERT INTO {} ({list}) VALUES ({})",
            quote(name),
            vec!["?"; columns.len()].join(", ")
        );
        let mut stmt = dest.prepare(&insert)?;
        let mut rows_source = 0;
        source.query(&format!("SELECT {list} FROM {}", quote(name)), &mut |row| {
            rows_source += 1;
            stmt.execute(rusqlite::params_from_iter(row))?;
            Ok(())
        })?;
        let rows_copied: i64 =
            dest.query_row(&format!("SELECT count(*) FROM {}", quote(name)), [], |r| {
                r.get(0)
            })?;
        let verified = rows_copied == rows_source;
        tables.push(TableReport {
            name: name.to_owned(),
            rows_source,
            rows_copied,
            verified,
            mismatch: (!verified)
                .then(|| format!("{rows_copied} rows in the image, {rows_source} in the source")),
        });
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
        for row in source_rows(source, "SELECT name, seq FROM sqlite_sequence")? {
            if let (Some(table), Some(Value::Integer(seq))) = (text(&row[0]), row.get(1)) {
                counters.push(keep_counter(&ConnectionTarget(dest), table, *seq)?);
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
                "INSERT INTO sqlite_sequence(name, seq) VALUES (?, ?)",
                vec![name, Value::Integer(seq)],
            )
        });
    let mut stored = None;
    if written.is_ok() {
        target.query(
            &format!(
                "SELECT seq FROM sqlite_sequence WHERE name = '{}'",
                table.replace('\'', "''")
            ),
            &mut |row| {
                if let Some(Value::Integer(n)) = row.first() {
                    stored = Some(*n);
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

/// Copies `source` into `target`, replacing an earlier import: drops what is there, creates
/// each table the target can host, copies its rows in bounded batches, reads every row back
/// and compares it, then creates indexes, views and triggers. Everything not copied is in
/// the report's `skipped`, with the reason.
pub fn run(source: &Connection, target: &impl SqlTarget) -> Result<ImportReport, Error> {
    let plan = plan(source)?;
    // Foreign keys are checked at commit, so tables can be dropped and filled in schema order
    // whatever their references.
    target
        .exec("PRAGMA defer_foreign_keys = ON")
        .map_err(target_error("defer foreign keys"))?;
    clear(target)?;
    let mut skipped = plan.skipped.clone();
    let mut tables = Vec::new();
    for table in &plan.tables {
        let rows_source: i64 = source.query_row(
            &format!("SELECT count(*) FROM {}", quote(&table.name)),
            [],
            |r| r.get(0),
        )?;
        // Checked before the table is created, so a table that cannot be copied leaves
        // nothing behind.
        if !target.exact_integers()
            && let Some(column) = unsafe_integer_column(source, table)?
        {
            skipped.push(Skipped {
                name: table.name.clone(),
                kind: "table".into(),
                reason: format!(
                    "column {column} holds an integer beyond 2^53, which the Durable Object API cannot pass exactly"
                ),
            });
            continue;
        }
        if let Some(module) = &table.module
            && !target.hosts_module(module)
        {
            skipped.push(Skipped {
                name: table.name.clone(),
                kind: "table".into(),
                reason: unhosted_consequence(module),
            });
            continue;
        }
        if let Err(e) = target.exec(&table.create_sql) {
            skipped.push(Skipped {
                name: table.name.clone(),
                kind: "table".into(),
                reason: format!("the target refused its CREATE statement: {e}"),
            });
            continue;
        }
        for_each_batch(source, table, |batch| {
            target
                .exec_with(&batch.sql, batch.values)
                .map_err(target_error("insert rows"))
        })?;
        let rows_copied = target_count(target, &table.name)?;
        let mismatch = if rows_copied == rows_source {
            first_mismatch(source, target, table)?
        } else {
            Some(format!(
                "{rows_copied} rows copied, {rows_source} in the source"
            ))
        };
        tables.push(TableReport {
            name: table.name.clone(),
            rows_source,
            rows_copied,
            verified: mismatch.is_none(),
            mismatch,
        });
    }
    let mut created = Vec::new();
    for (kind, name, create) in &plan.others {
        match target.exec(create) {
            Ok(()) => created.push(name.clone()),
            Err(e) => skipped.push(Skipped {
                name: name.clone(),
                kind: kind.clone(),
                reason: format!("the target refused its CREATE statement: {e}"),
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
            }),
        }
    }
    for (name, module, create) in &plan.contentless {
        let reason = if !target.hosts_module(module) {
            unhosted_consequence(module)
        } else if let Err(e) = target.exec(create) {
            format!("the target refused its CREATE statement: {e}")
        } else {
            "contentless full-text index: it stores no text to copy, so it was created empty; \
             re-insert its documents to index them again"
                .into()
        };
        skipped.push(Skipped {
            name: name.clone(),
            kind: "table".into(),
            reason,
        });
    }
    let copied: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    let counters = plan
        .sequences
        .iter()
        .filter(|(table, _)| copied.contains(&table.as_str()))
        .map(|(table, seq)| keep_counter(target, table, *seq))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ImportReport {
        verified: tables.iter().all(|t| t.verified),
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
        let skip = |reason: String| Skipped {
            name: name.clone(),
            kind: kind.clone(),
            reason,
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
                ));
            }
            continue;
        }
        if is_reserved(&name) {
            plan.skipped
                .push(skip("name reserved by Durable Object storage".into()));
            continue;
        }
        let Some(sql) = sql else {
            continue; // automatic indexes (UNIQUE / PRIMARY KEY) come with their table
        };
        if let Some((owner, module)) = virtual_tables
            .iter()
            .find(|(v, _)| name != *v && name.starts_with(&format!("{v}_")))
        {
            plan.skipped.push(skip(format!(
                "shadow table of virtual table {owner} (module {module}); the module rebuilds it"
            )));
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
                            plan.skipped.push(skip(unhosted_consequence(module)));
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
            let columns = insertable_columns(conn, &name)?;
            let order_by = storage_order(conn, &name, &sql)?;
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

fn storage_order(conn: &Connection, table: &str, create_sql: &str) -> Result<String, Error> {
    let without_rowid = create_sql
        .to_ascii_uppercase()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .contains("WITHOUT ROWID");
    if !without_rowid {
        return Ok("ORDER BY rowid".into());
    }
    let mut stmt =
        conn.prepare("SELECT name FROM pragma_table_info(?1) WHERE pk > 0 ORDER BY pk")?;
    let pk = stmt
        .query_map([table], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(format!("ORDER BY {}", column_list(&pk)))
}

fn insertable_columns(conn: &Connection, table: &str) -> Result<Vec<String>, Error> {
    let mut stmt = conn.prepare("SELECT name, hidden FROM pragma_table_xinfo(?1)")?;
    let cols = stmt
        .query_map([table], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    // hidden: 0 ordinary, 1 hidden (virtual tables), 2/3 generated columns.
    Ok(cols
        .into_iter()
        .filter(|(_, hidden)| *hidden == 0)
        .map(|(n, _)| n)
        .collect())
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

/// The first column of `table` holding an integer outside ±(2^53 − 1), which the Durable
/// Object API (JS numbers) would silently round; checked with SQL, without reading rows out.
pub fn unsafe_integer_column(
    conn: &Connection,
    table: &TablePlan,
) -> Result<Option<String>, Error> {
    for column in &table.columns {
        let q = quote(column);
        let found: bool = conn
            .query_row(
                &format!(
                    "SELECT EXISTS (SELECT 1 FROM {} WHERE typeof({q}) = 'integer' AND ({q} > ?1 OR {q} < -?1))",
                    quote(&table.name)
                ),
                [MAX_SAFE_INTEGER],
                |r| r.get(0),
            )
            ?;
        if found {
            return Ok(Some(column.clone()));
        }
    }
    Ok(None)
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
    let placeholders = format!("({})", vec!["?"; ncols].join(", "));
    let make = |values: Vec<Value>, count: usize| Batch {
        sql: format!(
            "INSERT INTO {} ({col_list}) VALUES {}",
            quote(&table.name),
            vec![placeholders.as_str(); count].join(", ")
        ),
        values,
        rows: count,
    };
    let mut values: Vec<Value> = Vec::new();
    let (mut count, mut bytes) = (0, 0);
    while let Some(row) = rows.next().map_err(Error::from)? {
        for i in 0..table.columns.len() {
            let v: Value = row.get(i).map_err(Error::from)?;
            bytes += match &v {
                Value::Text(s) => s.len(),
                Value::Blob(b) => b.len(),
                _ => 8,
            };
            values.push(v);
        }
        count += 1;
        if count == rows_per_batch || bytes >= MAX_STATEMENT_BYTES {
            f(make(std::mem::take(&mut values), count))?;
            (count, bytes) = (0, 0);
        }
    }
    if count > 0 {
        f(make(values, count))?;
    }
    Ok(())
}

/// Whether a value read back from the Durable Object equals the source value. The SQL API
/// passes numbers as JS numbers, so a REAL holding a whole number comes back as an integer;
/// numbers compare by value, everything else exactly.
#[must_use]
pub fn same_value(source: &Value, copied: &Value) -> bool {
    match (source, copied) {
        (Value::Integer(a), Value::Integer(b)) => a == b,
        (Value::Real(a), Value::Real(b)) => a == b,
        (Value::Real(a), Value::Integer(b)) | (Value::Integer(b), Value::Real(a)) => {
            *a == *b as f64
        }
        (a, b) => a == b,
    }
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

    /// Numbers compare by value across INTEGER/REAL; text and blobs exactly.
    #[test]
    fn value_comparison() {
        assert!(same_value(&Value::Real(3.0), &Value::Integer(3)));
        assert!(!same_value(&Value::Real(3.5), &Value::Integer(3)));
        assert!(same_value(
            &Value::Blob(vec![1, 2]),
            &Value::Blob(vec![1, 2])
        ));
        assert!(!same_value(&Value::Text("1".into()), &Value::Integer(1)));
        assert!(!same_value(&Value::Null, &Value::Text(String::new())));
    }

    fn import_into(source: &Connection, target: &impl SqlTarget) -> ImportReport {
        run(source, target).unwrap()
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
        assert!(mismatch.contains("row 1, column name"), "{mismatch}");
        assert!(
            report
                .tables
                .iter()
                .filter(|t| t.name != "projects")
                .all(|t| t.verified)
        );
    }

    /// A target that passes numbers as JS numbers: a table with an integer beyond 2^53 is
    /// skipped with its reason rather than copied wrong; where integers are exact it is copied.
    #[test]
    fn unsafe_integers_are_skipped_on_js_number_targets() {
        let source = Connection::open_in_memory().unwrap();
        source
            .execute_batch("CREATE TABLE big(n INTEGER); INSERT INTO big VALUES (9007199254740993); CREATE TABLE small(n); INSERT INTO small VALUES (42);")
            .unwrap();
        let target_conn = sqlite::create().unwrap();
        let js = DoubleTarget::durable_object(ConnectionTarget(&target_conn));
        let report = import_into(&source, &js);
        assert!(report.verified);
        assert_eq!(report.skipped.len(), 1, "{:?}", report.skipped);
        assert_eq!(report.skipped[0].name, "big");
        assert!(report.skipped[0].reason.contains("2^53"));
        assert_eq!(
            report
                .tables
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>(),
            ["small"]
        );
        // Without the check the copy would be wrong, and verification would say so.
        let exact_conn = sqlite::create().unwrap();
        let report = import_into(&source, &ConnectionTarget(&exact_conn));
        assert!(report.verified && report.skipped.is_empty(), "{report:?}");
        let lying = DoubleTarget {
            js_numbers: true,
            ..DoubleTarget::new(ConnectionTarget(&target_conn))
        };
        let report = import_into(&source, &lying);
        assert!(!report.verified, "{report:?}");
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
        let report = import_into(&source, &refusing);
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
            let report = import_into(&source, &ConnectionTarget(&target_conn));
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
            assert!(import_into(&source, &ConnectionTarget(&middle)).verified);
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
            let report = import_into(
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

    /// Integers a JS number cannot hold exactly stop the table's copy with a reason.
    #[test]
    fn unsafe_integers_are_refused() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE big(n INTEGER); INSERT INTO big VALUES (9007199254740993);",
        )
        .unwrap();
        let p = plan(&conn).unwrap();
        assert_eq!(
            unsafe_integer_column(&conn, &p.tables[0])
                .unwrap()
                .as_deref(),
            Some("n")
        );
        conn.execute_batch("UPDATE big SET n = 9007199254740991")
            .unwrap();
        assert_eq!(unsafe_integer_column(&conn, &p.tables[0]).unwrap(), None);
        let demo = demo();
        for t in plan(&demo).unwrap().tables {
            assert_eq!(unsafe_integer_column(&demo, &t).unwrap(), None);
        }
    }

    // ---- A test double of the Durable Object target ----

    /// An import target wrapping a real one, with the Durable Object's ways switched on one
    /// by one: passing integers as JS numbers (`f64`), hosting only fts5, refusing some
    /// statements, and (as a fault) altering text on the way in.
    #[derive(Debug)]
    pub struct DoubleTarget<T> {
        inner: T,
        /// Integers go through `f64`, as JS numbers do: beyond 2^53 they lose precision.
        js_numbers: bool,
        /// What `exact_integers` claims (a lying target shows what verification catches).
        claims_exact: bool,
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
                claims_exact: true,
                only_fts5: false,
                refuse: None,
                alter_text: None,
            }
        }

        /// As the Durable Object: JS numbers, honest about them, fts5 only.
        pub fn durable_object(inner: T) -> Self {
            Self {
                js_numbers: true,
                claims_exact: false,
                only_fts5: true,
                ..Self::new(inner)
            }
        }
    }

    impl<T: SqlTarget> SqlTarget for DoubleTarget<T> {
        fn exec(&self, sql: &str) -> Result<(), String> {
            if self.refuse.is_some_and(|r| sql.starts_with(r)) {
                return Err("not authorized".into());
            }
            self.inner.exec(sql)
        }
        fn exec_with(&self, sql: &str, params: Vec<Value>) -> Result<(), String> {
            let params = params
                .into_iter()
                .map(|v| match v {
                    // A whole number comes back from a JS number as an integer.
                    Value::Integer(n) if self.js_numbers => Value::Integer(n as f64 as i64),
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
            self.inner.query(sql, each)
        }
        fn size_bytes(&self) -> u64 {
            self.inner.size_bytes()
        }
        fn exact_integers(&self) -> bool {
            self.claims_exact && self.inner.exact_integers()
        }
        fn hosts_module(&self, module: &str) -> bool {
            (!self.only_fts5 || module == "fts5") && self.inner.hosts_module(module)
        }
    }
}
