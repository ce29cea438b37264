//! The work `POST /query` does on an open database, through the one executor: the client's
//! statements as one transaction (the libSQL routes' work is `stream::Stream`).

use rusqlite::Connection;
use rusqlite::types::Value;
use serde_json::Value as Json;

use crate::encoding::from_json;
use crate::error::Error;
use crate::exec::{Executor, Limits, Statement, StatementResult, Transactions, run_transaction};
use crate::pipeline::Work;

/// `POST /query`: every statement in one transaction, all or nothing.
#[derive(Debug, Clone)]
pub struct Transaction {
    /// The statements, in order.
    pub statements: Vec<Statement>,
    /// The guard rails.
    pub limits: Limits,
}

impl Work for Transaction {
    type Output = Vec<StatementResult>;

    fn run(&mut self, conn: &mut Connection) -> Result<Self::Output, Error> {
        let mut exec = Executor::new(conn, self.limits, Transactions::Executor)?;
        run_transaction(&mut exec, &self.statements)
    }

    fn writes(&self) -> bool {
        self.statements.iter().any(Statement::writes)
    }
}

/// Positional and named parameters of one statement.
type Params = (Vec<Value>, Vec<(String, Value)>);

/// Parses a `params` array (positional) or object (named) of `/query`.
fn params_from_json(statement: usize, params: Option<&Json>) -> Result<Params, Error> {
    let bad = |reason: String| Error::InvalidRequest {
        reason: format!("statement {statement}: {reason}"),
    };
    match params {
        None | Some(Json::Null) => Ok((vec![], vec![])),
        Some(Json::Array(values)) => Ok((
            values
                .iter()
                .enumerate()
                .map(|(i, v)| from_json(v).map_err(|e| bad(format!("parameter {i}: {e}"))))
                .collect::<Result<_, _>>()?,
            vec![],
        )),
        Some(Json::Object(named)) => Ok((
            vec![],
            named
                .iter()
                .map(|(k, v)| {
                    from_json(v)
                        .map(|v| (k.clone(), v))
                        .map_err(|e| bad(format!("parameter {k:?}: {e}")))
                })
                .collect::<Result<_, _>>()?,
        )),
        Some(_) => Err(bad(
            "params must be an array (positional) or an object (named)".into(),
        )),
    }
}

/// The body of `POST /query` (on either route): one statement or an array of them, D1's
/// shape, at most `max_statements` of them.
///
/// # Errors
/// [`Error::InvalidRequest`] saying what is wrong, or [`Error::TooManyStatements`].
pub fn parse_query_body(body: &[u8], max_statements: usize) -> Result<Vec<Statement>, Error> {
    let json: Json = serde_json::from_slice(body).map_err(|e| Error::InvalidRequest {
        reason: format!("the body is not JSON: {e}"),
    })?;
    let items = match json {
        Json::Array(items) => items,
        single @ Json::Object(_) => vec![single],
        _ => {
            return Err(Error::InvalidRequest {
                reason: r#"the body must be {"sql": "...", "params": [...]} or an array of those"#
                    .into(),
            });
        }
    };
    if items.is_empty() {
        return Err(Error::InvalidRequest {
            reason: "the batch holds no statements".into(),
        });
    }
    if items.len() > max_statements {
        return Err(Error::TooManyStatements {
            count: items.len(),
            max: max_statements,
        });
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let sql =
                item.get("sql")
                    .and_then(Json::as_str)
                    .ok_or_else(|| Error::InvalidRequest {
                        reason: format!("statement {i} has no \"sql\" string"),
                    })?;
            let (args, named_args) = params_from_json(i, item.get("params"))?;
            Ok(Statement {
                sql: sql.to_owned(),
                args,
                named_args,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[cfg(all(target_family = "wasm", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    /// Bodies in D1's shape parse; malformed ones say what is wrong.
    #[test]
    fn query_bodies() {
        let one = parse_query_body(br#"{"sql": "SELECT ?", "params": [1]}"#, 100).unwrap();
        assert_eq!(one[0].args, [Value::Integer(1)]);
        let many = parse_query_body(
            br#"[{"sql": "SELECT 1"}, {"sql": "SELECT :a", "params": {"a": {"blob": "AAE="}}}]"#,
            100,
        )
        .unwrap();
        let err =
            parse_query_body(br#"[{"sql": "SELECT 1"}, {"sql": "SELECT 2"}]"#, 1).unwrap_err();
        assert_eq!((err.status(), err.code()), (413, "too_many_statements"));
        assert_eq!(
            many[1].named_args,
            [("a".to_owned(), Value::Blob(vec![0, 1]))]
        );
        for bad in [
            &b"nope"[..],
            b"[]",
            b"3",
            br#"{"params": []}"#,
            br#"{"sql": "x", "params": [[1]]}"#,
            br#"{"sql": "x", "params": [{"integer": "1.5"}]}"#,
        ] {
            let err = parse_query_body(bad, 100).unwrap_err();
            assert_eq!(
                err.code(),
                "invalid_request",
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
