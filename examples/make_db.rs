//! Writes a deterministic SQLite database to a file, for seeding local R2.
//!
//! `cargo run --example make_db -- demo OUT` writes the demo database for user `a`;
//! `cargo run --example make_db -- sized BYTES SEED OUT` writes one of at least BYTES bytes.

use std::process::ExitCode;

use workers_sqlite_poc::fixtures;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["demo", out] => fixtures::demo_database().map(|b| (b, *out)),
        ["sized", bytes, seed, out] => match (bytes.parse(), seed.parse()) {
            (Ok(bytes), Ok(seed)) => fixtures::sized_database(bytes, seed).map(|b| (b, *out)),
            _ => {
                eprintln!("error: BYTES and SEED must be whole numbers");
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!("usage: make_db demo OUT | make_db sized BYTES SEED OUT");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok((bytes, out)) => match std::fs::write(out, &bytes) {
            Ok(()) => {
                println!("wrote {} bytes to {out}", bytes.len());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: cannot write {out}: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
