//! The work the query routes do on an open database, through the one executor: the client's
//! statements as one transaction (`POST /query`), or a libSQL pipeline.

use rusqlite::Connection;
use serde_json::Value as Json;

use crate::error::Error;
use crate::exec::{Executor, Limits, Statement, StatementResult, Transactions, run_transaction};
use crate::hrana::{Runner, StreamRequest};
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
}

/// A libSQL pipeline: requests run in order, transactions under the client's control.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// The stream requests.
    pub requests: Vec<StreamRequest>,
    /// The guard rails.
    pub limits: Limits,
}

impl Work for Pipeline {
    type Output = Vec<Json>;

    fn run(&mut self, conn: &mut Connection) -> Result<Self::Output, Error> {
        let mut exec = Executor::new(conn, self.limits, Transactions::Client)?;
        Runner::new(&mut exec).run(&self.requests)
    }
}
