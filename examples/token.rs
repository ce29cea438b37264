//! Prints a per-user token: `TOKEN_SECRET=... cargo run --example token -- USER [TTL_SECONDS]`
//! (or `make token USER=a TTL=3600`). The worker must have the same `TOKEN_SECRET` secret.

use std::process::ExitCode;

use workers_sqlite_poc::auth;
use workers_sqlite_poc::request::UserId;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(user) = args.first() else {
        eprintln!("usage: TOKEN_SECRET=... token USER [TTL_SECONDS]");
        return ExitCode::from(2);
    };
    let user = match UserId::parse(Some(user)) {
        Ok(user) => user,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let Ok(ttl) = args.get(1).map_or(Ok(3600), |t| t.parse::<u64>()) else {
        eprintln!("error: TTL must be a whole number of seconds");
        return ExitCode::from(2);
    };
    let secret = match std::env::var("TOKEN_SECRET") {
        Ok(s) if !s.is_empty() => s,
        _ => {
            eprintln!(
                "error: set TOKEN_SECRET to the worker's secret (npx wrangler secret put TOKEN_SECRET)"
            );
            return ExitCode::from(2);
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    println!("{}", auth::mint(&secret, &user, now + ttl));
    ExitCode::SUCCESS
}
