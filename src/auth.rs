//! Access control: the admin bearer token (`AUTH_TOKEN`, every user) and per-user tokens
//! signed with `TOKEN_SECRET` (HMAC-SHA256, one user, an expiry); secure unless told otherwise.
//!
//! A per-user token is `u1.<user>.<expiry, Unix seconds>.<base64url signature>`, where the
//! signature is HMAC-SHA256 over `u1.<user>.<expiry>`. User ids cannot contain dots, so the
//! parts are unambiguous.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::Config;
use crate::encoding::{base64_decode, base64_encode};
use crate::error::Error;
use crate::request::UserId;

const TOKEN_VERSION: &str = "u1";

/// Who a request acts as, once its token is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// The `AUTH_TOKEN` holder: every user.
    Admin,
    /// A per-user token's user: that user only.
    User(String),
    /// No token, with `ALLOW_ANONYMOUS=true`: every user (local development).
    Anonymous,
}

impl Identity {
    /// Whether this identity may open `user`'s database: 403 otherwise.
    pub fn may_open(&self, user: &UserId) -> Result<(), Error> {
        match self {
            Self::User(own) if own != user.as_str() => Err(Error::Forbidden {
                reason: format!(
                    "this token opens user {own}'s database, not user {}'s",
                    user.as_str()
                ),
            }),
            _ => Ok(()),
        }
    }
}

fn unauthorized(reason: &str) -> Error {
    Error::Unauthorized {
        reason: reason.to_owned(),
    }
}

fn signature(secret: &str, payload: &str) -> Hmac<Sha256> {
    // HMAC takes keys of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(payload.as_bytes());
    mac
}

/// Mints a token for `user` valid until `expires_s` (Unix seconds).
#[must_use]
pub fn mint(secret: &str, user: &UserId, expires_s: u64) -> String {
    let payload = format!("{TOKEN_VERSION}.{}.{expires_s}", user.as_str());
    let sig = signature(secret, &payload).finalize().into_bytes();
    format!("{payload}.{}", signature_text(&sig))
}

/// A signature as tokens spell it: unpadded base64url.
fn signature_text(sig: &[u8]) -> String {
    base64_encode(sig)
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

/// Checks a per-user token: the user it names, or 401 if it is malformed, forged or expired.
fn verify(secret: &str, token: &str, now_s: u64) -> Result<String, Error> {
    let (payload, sig) = token
        .rsplit_once('.')
        .ok_or_else(|| unauthorized("the bearer token is not valid"))?;
    let mut parts = payload.split('.');
    let (Some(TOKEN_VERSION), Some(user), Some(expires), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(unauthorized("the bearer token is not valid"));
    };
    let decoded = base64_decode(sig).map_err(|_| unauthorized("the bearer token is not valid"))?;
    // Only the one spelling `mint` produces: base64 leaves unused bits in the last character,
    // and padding, `+`/`/` are other spellings of the same bytes.
    if signature_text(&decoded) != sig {
        return Err(unauthorized("the bearer token is not valid"));
    }
    let sig = decoded;
    // `verify_slice` compares in constant time.
    signature(secret, payload)
        .verify_slice(&sig)
        .map_err(|_| unauthorized("the bearer token is not valid"))?;
    let expires: u64 = expires
        .parse()
        .map_err(|_| unauthorized("the bearer token is not valid"))?;
    if now_s >= expires {
        return Err(unauthorized("the token has expired; mint a new one"));
    }
    Ok(user.to_owned())
}

/// Decides who a request with this `Authorization` header acts as.
///
/// - `Bearer <AUTH_TOKEN>` is the admin.
/// - `Bearer <per-user token>` (when `TOKEN_SECRET` is set) is that user, until it expires.
/// - No header passes only with `ALLOW_ANONYMOUS=true`.
/// - With neither `AUTH_TOKEN` nor `TOKEN_SECRET`, and anonymous access off, every request is
///   refused with 503, saying how to configure the worker.
pub fn authenticate(
    config: &Config,
    authorization: Option<&str>,
    now_s: u64,
) -> Result<Identity, Error> {
    let admin = config.auth_token.as_deref();
    let secret = config.token_secret.as_deref();
    if admin.is_none() && secret.is_none() {
        return if config.allow_anonymous {
            Ok(Identity::Anonymous)
        } else {
            Err(Error::AuthNotConfigured)
        };
    }
    let Some(header) = authorization else {
        return if config.allow_anonymous {
            Ok(Identity::Anonymous)
        } else {
            Err(unauthorized(
                "missing Authorization header; send \"Authorization: Bearer <token>\"",
            ))
        };
    };
    let presented = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .map(str::trim)
        .ok_or_else(|| unauthorized("the Authorization header must be \"Bearer <token>\""))?;
    if let Some(token) = admin
        && constant_time_eq(presented.as_bytes(), token.as_bytes())
    {
        return Ok(Identity::Admin);
    }
    match secret {
        Some(secret) if presented.starts_with(TOKEN_VERSION) => {
            verify(secret, presented, now_s).map(Identity::User)
        }
        _ => Err(unauthorized("the bearer token is not valid")),
    }
}

/// Compares without stopping at the first difference, so timing does not reveal a prefix.
/// (Only the token's length can be learned, which a long random token makes moot.)
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

    const NOW: u64 = 1_700_000_000;

    fn config(token: Option<&str>, secret: Option<&str>, anonymous: bool) -> Config {
        Config {
            auth_token: token.map(str::to_owned),
            token_secret: secret.map(str::to_owned),
            allow_anonymous: anonymous,
            ..Config::default()
        }
    }

    fn user(id: &str) -> UserId {
        UserId::parse(Some(id)).unwrap()
    }

    fn bearer(token: &str) -> String {
        format!("Bearer {token}")
    }

    /// Secure by default: nothing configured and no opt-in refuses everything with 503.
    #[test]
    fn unconfigured_refuses() {
        let err = authenticate(&config(None, None, false), Some("Bearer x"), NOW).unwrap_err();
        assert_eq!(err.status(), 503);
        assert_eq!(err.code(), "auth_not_configured");
        assert_eq!(
            authenticate(&config(None, None, true), None, NOW).unwrap(),
            Identity::Anonymous
        );
    }

    /// With an admin token, only the exact bearer token passes.
    #[test]
    fn admin_token_is_required_and_checked() {
        let c = config(Some("s3cret-token"), None, false);
        assert_eq!(
            authenticate(&c, Some("Bearer s3cret-token"), NOW).unwrap(),
            Identity::Admin
        );
        for bad in [
            None,
            Some("Bearer s3cret-tokem"),
            Some("Bearer s3cret"),
            Some("s3cret-token"),
            Some("Basic abc"),
            Some("Bearer "),
        ] {
            let err = authenticate(&c, bad, NOW).unwrap_err();
            assert_eq!(err.status(), 401, "{bad:?}");
            assert_eq!(err.code(), "unauthorized");
        }
    }

    /// ALLOW_ANONYMOUS with a token: no header passes, a wrong header still fails.
    #[test]
    fn anonymous_with_token() {
        let c = config(Some("t"), None, true);
        assert_eq!(authenticate(&c, None, NOW).unwrap(), Identity::Anonymous);
        assert_eq!(
            authenticate(&c, Some("Bearer t"), NOW).unwrap(),
            Identity::Admin
        );
        let err = authenticate(&c, Some("Bearer u"), NOW).unwrap_err();
        assert_eq!(err.status(), 401);
    }

    /// A per-user token opens its user's database until it expires, and no other; a tampered
    /// or expired one is 401, another user's database 403.
    #[test]
    fn per_user_tokens() {
        let c = config(Some("admin"), Some("token-secret"), false);
        let token = mint("token-secret", &user("a"), NOW + 60);
        let who = authenticate(&c, Some(&bearer(&token)), NOW).unwrap();
        assert_eq!(who, Identity::User("a".into()));
        assert!(who.may_open(&user("a")).is_ok());
        let err = who.may_open(&user("b")).unwrap_err();
        assert_eq!((err.status(), err.code()), (403, "forbidden"));

        let expired = authenticate(&c, Some(&bearer(&token)), NOW + 60).unwrap_err();
        assert_eq!(expired.status(), 401);
        assert!(expired.to_string().contains("expired"));

        let other_user = token.replacen(".a.", ".b.", 1);
        let longer = token.replacen(&format!(".{}.", NOW + 60), &format!(".{}.", NOW + 6000), 1);
        let mut flipped = token.clone().into_bytes();
        let last = flipped.len() - 2;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        let wrong_secret = mint("other-secret", &user("a"), NOW + 60);
        for bad in [
            other_user,
            longer,
            flipped,
            wrong_secret,
            "u1.a".into(),
            "u1.a.x.y".into(),
        ] {
            let err = authenticate(&c, Some(&bearer(&bad)), NOW).unwrap_err();
            assert_eq!(err.status(), 401, "{bad}");
        }
        // Without TOKEN_SECRET, per-user tokens are not accepted at all.
        let no_secret = config(Some("admin"), None, false);
        assert_eq!(
            authenticate(&no_secret, Some(&bearer(&token)), NOW)
                .unwrap_err()
                .status(),
            401
        );
        // The admin may open anyone.
        assert!(Identity::Admin.may_open(&user("b")).is_ok());
    }

    /// The comparison is exact.
    /// A token is accepted only as minted: other spellings of the same signature bytes (the
    /// last character's unused bits set, padding, the standard alphabet) are refused.
    #[test]
    fn only_the_canonical_spelling_is_accepted() {
        let c = config(Some("admin"), Some("token-secret"), false);
        let token = mint("token-secret", &user("a"), NOW + 60);
        assert!(authenticate(&c, Some(&format!("Bearer {token}")), NOW).is_ok());
        let (head, last) = token.split_at(token.len() - 1);
        let pos = ALPHABET.find(last).unwrap();
        // 32 signature bytes = 43 characters: the last one carries 4 bits and 2 unused ones.
        assert_eq!(pos & 3, 0, "{token}");
        let mut spellings: Vec<String> = (1..4)
            .map(|unused| format!("{head}{}", &ALPHABET[pos + unused..=pos + unused]))
            .collect();
        spellings.push(format!("{token}="));
        if let Some(i) = token.rfind(['-', '_']) {
            let standard = if &token[i..=i] == "-" { "+" } else { "/" };
            spellings.push(format!("{}{standard}{}", &token[..i], &token[i + 1..]));
        }
        for spelling in spellings {
            assert_eq!(
                crate::encoding::base64_decode(spelling.rsplit_once('.').unwrap().1).unwrap(),
                crate::encoding::base64_decode(token.rsplit_once('.').unwrap().1).unwrap(),
                "{spelling} must decode to the same bytes for this test to mean anything"
            );
            let err = authenticate(&c, Some(&format!("Bearer {spelling}")), NOW).unwrap_err();
            assert_eq!(err.status(), 401, "{spelling}");
        }
    }

    const ALPHABET: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(constant_time_eq(b"", b""));
    }
}
