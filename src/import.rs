//! Planning a copy of a SQLite database into a Durable Object's SQL storage: which objects to
//! create, which tables cannot be copied and why, and row batches that respect the Durable
//! Object limits on bound parameters and statement size.

use rusqlite::Connection;
use rusqlite::types::Value;
use serde::Serialize;

use crate::error::Error;

/// Durable Object SQL allows at most 100 bound parameters per statement.
pub const MAX_BOUND_PARAMS: usize = 100;
/// Durable Object SQL statements may be at most 100 KB; batches stay well below.
pub const MAX_STATEMENT_BYTES: usize = 90 * 1024;
/// Largest integer a JS number (the Durable Object SQL API's value type) holds exactly.
pub const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

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
        let mut stmt = conn
            .prepare("SELECT type, name, sql FROM sqlite_master ORDER BY rowid")
            .map_err(Error::Sqlite)?;
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(Error::Sqlite)?
            .collect::<Result<_, _>>()
            .map_err(Error::Sqlite)?
    };
    let virtual_tables: Vec<String> = rows
        .iter()
        .filter(|(kind, _, sql)| {
            kind == "table"
                && sql.as_deref().is_some_and(|s| {
                    s.trim_start()
                        .to_ascii_uppercase()
                        .starts_with("CREATE VIRTUAL TABLE")
                })
        })
        .map(|(_, name, _)| name.clone())
        .collect();
    let mut plan = ImportPlan::default();
    for (kind, name, sql) in rows {
        let skip = |reason: String| Skipped {
            name: name.clone(),
            kind: kind.clone(),
            reason,
        };
        if name.starts_with("sqlite_") {
            // sqlite_sequence and sqlite_stat* are SQLite's own; the target maintains its own.
            if kind == "table" {
                plan.skipped.push(skip(
                    "internal SQLite table; the target maintains its own".into(),
                ));
            }
            continue;
        }
        if name.starts_with("_cf_") {
            plan.skipped
                .push(skip("name reserved by Durable Object storage".into()));
            continue;
        }
        let Some(sql) = sql else {
            continue; // automatic indexes (UNIQUE / PRIMARY KEY) come with their table
        };
        if virtual_tables.contains(&name) {
            plan.skipped.push(skip(
                "virtual table: its module and content cannot be copied row by row".into(),
            ));
            continue;
        }
        if let Some(owner) = virtual_tables
            .iter()
            .find(|v| name.starts_with(&format!("{v}_")))
        {
            plan.skipped
                .push(skip(format!("shadow table of virtual table {owner}")));
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
            });
        } else {
            plan.others.push((kind, name, sql));
        }
    }
    Ok(plan)
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
    let mut stmt = conn
        .prepare("SELECT name FROM pragma_table_info(?1) WHERE pk > 0 ORDER BY pk")
        .map_err(Error::Sqlite)?;
    let pk = stmt
        .query_map([table], |r| r.get::<_, String>(0))
        .map_err(Error::Sqlite)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(Error::Sqlite)?;
    Ok(format!("ORDER BY {}", column_list(&pk)))
}

fn insertable_columns(conn: &Connection, table: &str) -> Result<Vec<String>, Error> {
    let mut stmt = conn
        .prepare("SELECT name, hidden FROM pragma_table_xinfo(?1)")
        .map_err(Error::Sqlite)?;
    let cols = stmt
        .query_map([table], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })
        .map_err(Error::Sqlite)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(Error::Sqlite)?;
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
            .map_err(Error::Sqlite)?;
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
    let mut stmt = conn
        .prepare(&select_columns(table))
        .map_err(Error::Sqlite)?;
    let mut rows = stmt.query([]).map_err(Error::Sqlite)?;
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
    while let Some(row) = rows.next().map_err(Error::Sqlite)? {
        for i in 0..table.columns.len() {
            let v: Value = row.get(i).map_err(Error::Sqlite)?;
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
        assert!(skipped.contains(&"notes"), "{skipped:?}");
        assert!(skipped.contains(&"notes_data"), "{skipped:?}");
        assert!(skipped.contains(&"sqlite_sequence"), "{skipped:?}");
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
}
