//! Access control: a bearer token, compared in constant time; secure unless told otherwise.

use crate::config::Config;
use crate::error::Error;

/// Decides whether a request with this `Authorization` header may proceed.
///
/// - With `AUTH_TOKEN` set, a request must carry `Bearer <token>`, unless
///   `ALLOW_ANONYMOUS=true` and it carries no `Authorization` header at all.
/// - Without a token, only `ALLOW_ANONYMOUS=true` lets requests through; otherwise the worker
///   refuses everything with 503 and says how to configure it.
pub fn authorize(config: &Config, authorization: Option<&str>) -> Result<(), Error> {
    let Some(token) = config.auth_token.as_deref() else {
        return if config.allow_anonymous {
            Ok(())
        } else {
            Err(Error::AuthNotConfigured)
        };
    };
    match authorization {
        None if config.allow_anonymous => Ok(()),
        None => Err(Error::Unauthorized {
            reason: "missing Authorization header; send \"Authorization: Bearer <token>\"",
        }),
        Some(header) => {
            let presented = header
                .strip_prefix("Bearer ")
                .or_else(|| header.strip_prefix("bearer "))
                .map(str::trim);
            match presented {
                Some(p) if constant_time_eq(p.as_bytes(), token.as_bytes()) => Ok(()),
                Some(_) => Err(Error::Unauthorized {
                    reason: "the bearer token is not valid",
                }),
                None => Err(Error::Unauthorized {
                    reason: "the Authorization header must be \"Bearer <token>\"",
                }),
            }
        }
    }
}

/// Compares without stopping at the first difference, so timing does not reveal a prefix.
/// (Only the token's length can be learned, which a length-256 random token makes moot.)
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    #[cfg(all(target_family = "wasm", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn config(token: Option<&str>, anonymous: bool) -> Config {
        Config {
            auth_token: token.map(str::to_owned),
            allow_anonymous: anonymous,
            ..Config::default()
        }
    }

    /// Secure by default: no token and no opt-in refuses everything with 503.
    #[test]
    fn unconfigured_refuses() {
        let err = authorize(&config(None, false), Some("Bearer x")).unwrap_err();
        assert_eq!(err.status(), 503);
        assert_eq!(err.code(), "auth_not_configured");
        assert!(authorize(&config(None, true), None).is_ok());
    }

    /// With a token, only the exact bearer token passes.
    #[test]
    fn token_is_required_and_checked() {
        let c = config(Some("s3cret-token"), false);
        assert!(authorize(&c, Some("Bearer s3cret-token")).is_ok());
        for bad in [
            None,
            Some("Bearer s3cret-tokem"),
            Some("Bearer s3cret"),
            Some("s3cret-token"),
            Some("Basic abc"),
            Some("Bearer "),
        ] {
            let err = authorize(&c, bad).unwrap_err();
            assert_eq!(err.status(), 401, "{bad:?}");
            assert_eq!(err.code(), "unauthorized");
        }
    }

    /// ALLOW_ANONYMOUS with a token: no header passes, a wrong header still fails.
    #[test]
    fn anonymous_with_token() {
        let c = config(Some("t"), true);
        assert!(authorize(&c, None).is_ok());
        assert!(authorize(&c, Some("Bearer t")).is_ok());
        assert_eq!(authorize(&c, Some("Bearer u")).unwrap_err().status(), 401);
    }

    /// The comparison is exact.
    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(constant_time_eq(b"", b""));
    }
}
