//! Drives the Rust `libsql` crate's remote mode (`Builder::new_remote`) against the worker as
//! an app would, and prints one JSON line with what it saw.
//!
//! `rust-client session URL TOKEN`: execute, every value type read back, a batch of three
//! statements, a failing transactional batch, `transaction()` committed and rolled back.
//! Exits non-zero on the first expectation that fails.
//!
//! `rust-client probe URL TOKEN`: one `SELECT 1`; prints `{"ok": true}` or `{"error": "..."}`
//! with the crate's error text (it carries the HTTP status), so a refused token can be checked.

use libsql::{Builder, Connection, Value};
use serde_json::{Value as Json, json};

type Fallible<T> = Result<T, Box<dyn std::error::Error>>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Fallible<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, mode, url, token] = args.as_slice() else {
        return Err("usage: rust-client session|probe URL TOKEN".into());
    };
    let db = Builder::new_remote(url.clone(), token.clone())
        .connector(hyper::client::HttpConnector::new())
        .build()
        .await?;
    let conn = db.connect()?;
    let seen = match mode.as_str() {
        "session" => session(&conn).await?,
        "probe" => match conn.execute("SELECT 1", ()).await {
            Ok(_) => json!({"ok": true}),
            Err(e) => json!({"error": e.to_string()}),
        },
        other => return Err(format!("unknown mode {other:?}").into()),
    };
    println!("{seen}");
    Ok(())
}

/// A value as JSON that keeps its SQLite type (an integer past 2^53 stays exact).
fn typed(value: &Value) -> Json {
    match value {
        Value::Null => json!({"null": null}),
        Value::Integer(i) => json!({"integer": i.to_string()}),
        Value::Real(r) => json!({"real": r}),
        Value::Text(t) => json!({"text": t}),
        Value::Blob(b) => json!({"blob": b}),
    }
}

fn check(ok: bool, what: impl std::fmt::Display) -> Fallible<()> {
    if ok {
        Ok(())
    } else {
        Err(format!("expectation failed: {what}").into())
    }
}

async fn count(conn: &Connection) -> Fallible<i64> {
    let mut rows = conn.query("SELECT count(*) FROM vals", ()).await?;
    let row = rows.next().await?.ok_or("count(*) returned no row")?;
    Ok(row.get::<i64>(0)?)
}

async fn session(conn: &Connection) -> Fallible<Json> {
    let mut seen = serde_json::Map::new();
    conn.execute(
        "CREATE TABLE vals (id INTEGER PRIMARY KEY, i INTEGER, r REAL, t TEXT, b BLOB, n)",
        (),
    )
    .await?;
    let sent = [
        Value::Integer(9_007_199_254_740_993),
        Value::Real(-1.5e300),
        Value::Text("héllo ☃ \u{0}".to_owned()),
        Value::Blob(vec![0, 1, 0xfe, 0xff]),
        Value::Null,
    ];
    let changed = conn
        .execute(
            "INSERT INTO vals (i, r, t, b, n) VALUES (?1, ?2, ?3, ?4, ?5)",
            sent.to_vec(),
        )
        .await?;
    check(changed == 1, format!("INSERT changed {changed} rows"))?;
    seen.insert("last_insert_rowid".into(), conn.last_insert_rowid().into());

    let mut rows = conn
        .query("SELECT i, r, t, b, n FROM vals WHERE id = ?1", [1])
        .await?;
    let columns: Vec<Json> = (0..rows.column_count())
        .map(|i| rows.column_name(i).into())
        .collect();
    let row = rows.next().await?.ok_or("the inserted row is missing")?;
    let values: Vec<Value> = (0..5).map(|i| row.get_value(i)).collect::<Result<_, _>>()?;
    check(
        values == sent,
        format!("read back {values:?}, sent {sent:?}"),
    )?;
    check(rows.next().await?.is_none(), "one row only")?;
    seen.insert("columns".into(), columns.into());
    seen.insert("values".into(), values.iter().map(typed).collect());

    // The crate asks for no rows in a batch (`want_rows: false`): its statements are checked
    // by their step results and by reading afterwards.
    let mut batch = conn
        .execute_batch(
            "INSERT INTO vals (i) VALUES (10); INSERT INTO vals (i) VALUES (11);
             UPDATE vals SET t = 'batched' WHERE i IN (10, 11);",
        )
        .await?;
    let mut steps = 0;
    while let Some(result) = batch.next_stmt_row() {
        check(result.is_some(), format!("batch step {steps} did not run"))?;
        steps += 1;
    }
    check(steps == 3, format!("{steps} batch step results"))?;
    let mut rows = conn
        .query("SELECT count(*) FROM vals WHERE t = 'batched'", ())
        .await?;
    let batched = rows.next().await?.ok_or("no count row")?.get::<i64>(0)?;
    check(batched == 2, format!("{batched} rows batched"))?;
    let batch_count = count(conn).await?;
    check(
        batch_count == 3,
        format!("{batch_count} rows after the batch"),
    )?;
    seen.insert("batch_count".into(), batch_count.into());

    let failed = conn
        .execute_transactional_batch(
            "INSERT INTO vals (i) VALUES (12); INSERT INTO missing VALUES (1);",
        )
        .await;
    check(
        failed.is_err(),
        "a failing transactional batch was accepted",
    )?;
    check(
        count(conn).await? == 3,
        "a failed transactional batch left a row",
    )?;
    seen.insert(
        "failed_batch".into(),
        failed.err().map(|e| e.to_string()).into(),
    );

    let tx = conn.transaction().await?;
    tx.execute("INSERT INTO vals (i) VALUES (20)", ()).await?;
    tx.execute("INSERT INTO vals (i) VALUES (21)", ()).await?;
    let inside = count(&tx).await?;
    check(inside == 5, format!("the transaction sees {inside} rows"))?;
    tx.commit().await?;
    let committed = count(conn).await?;
    check(committed == 5, format!("{committed} rows after commit"))?;
    seen.insert("committed_count".into(), committed.into());

    let tx = conn.transaction().await?;
    tx.execute("DELETE FROM vals", ()).await?;
    check(
        count(&tx).await? == 0,
        "the DELETE is seen inside its transaction",
    )?;
    tx.rollback().await?;
    let after = count(conn).await?;
    check(after == 5, format!("{after} rows after rollback"))?;
    seen.insert("after_rollback_count".into(), after.into());
    Ok(seen.into())
}
