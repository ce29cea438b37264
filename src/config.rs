//! Settings from `wrangler.toml` vars and secrets, parsed and checked in one place.

use crate::delay::Thresholds;
use crate::error::Error;

/// Default largest database the worker will load: see README "Limits" for the measurement.
pub const DEFAULT_MAX_DB_BYTES: u64 = 32 * 1024 * 1024;

/// Default budget of the version cache: see README "Limits" for why.
pub const DEFAULT_CACHE_MAX_BYTES: u64 = 16 * 1024 * 1024;

/// Everything a request needs to know about how the worker is configured.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Bearer token clients must present (`AUTH_TOKEN` secret); `None` if not configured.
    pub auth_token: Option<String>,
    /// `ALLOW_ANONYMOUS=true`: serve requests without a token (local development).
    pub allow_anonymous: bool,
    /// `MAX_DB_BYTES`: objects larger than this are refused with 413 before download.
    pub max_db_bytes: u64,
    /// `CACHE_MAX_BYTES`: budget of the version cache; 0 turns it off.
    pub cache_max_bytes: u64,
    /// Delay thresholds in force.
    pub thresholds: Thresholds,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            auth_token: None,
            allow_anonymous: false,
            max_db_bytes: DEFAULT_MAX_DB_BYTES,
            cache_max_bytes: DEFAULT_CACHE_MAX_BYTES,
            thresholds: Thresholds::default(),
        }
    }
}

impl Config {
    /// Reads settings through `lookup` (var or secret name → value); unset means default.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let misconfigured = |name: &str, value: &str, expected: &str| Error::Misconfigured {
            detail: format!("{name}={value:?} is not {expected}"),
        };
        let mut config = Self {
            auth_token: lookup("AUTH_TOKEN").filter(|t| !t.is_empty()),
            ..Self::default()
        };
        if let Some(v) = lookup("ALLOW_ANONYMOUS") {
            config.allow_anonymous = match v.trim() {
                "true" | "1" => true,
                "false" | "0" | "" => false,
                _ => return Err(misconfigured("ALLOW_ANONYMOUS", &v, "true or false")),
            };
        }
        if let Some(v) = lookup("MAX_DB_BYTES") {
            config.max_db_bytes = v.trim().parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                misconfigured("MAX_DB_BYTES", &v, "a positive whole number of bytes")
            })?;
        }
        if let Some(v) = lookup("CACHE_MAX_BYTES") {
            config.cache_max_bytes = v
                .trim()
                .parse()
                .map_err(|_| misconfigured("CACHE_MAX_BYTES", &v, "a whole number of bytes"))?;
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    #[cfg(all(target_family = "wasm", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn lookup(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    /// Nothing set: secure and spec defaults.
    #[test]
    fn defaults() {
        let c = Config::from_lookup(lookup(&[])).unwrap();
        assert_eq!(c, Config::default());
        assert!(!c.allow_anonymous);
        assert!(c.auth_token.is_none());
    }

    /// Values are parsed; an empty token counts as unset.
    #[test]
    fn parses_values() {
        let c = Config::from_lookup(lookup(&[
            ("AUTH_TOKEN", "s3cret"),
            ("ALLOW_ANONYMOUS", "true"),
            ("MAX_DB_BYTES", "1048576"),
            ("CACHE_MAX_BYTES", "0"),
        ]))
        .unwrap();
        assert_eq!(c.cache_max_bytes, 0);
        assert_eq!(c.auth_token.as_deref(), Some("s3cret"));
        assert!(c.allow_anonymous);
        assert_eq!(c.max_db_bytes, 1_048_576);
        assert!(
            Config::from_lookup(lookup(&[("AUTH_TOKEN", "")]))
                .unwrap()
                .auth_token
                .is_none()
        );
    }

    /// A typo in a setting is an error, not a silent default.
    #[test]
    fn rejects_bad_values() {
        for pairs in [
            &[("ALLOW_ANONYMOUS", "yes please")][..],
            &[("MAX_DB_BYTES", "32MB")][..],
            &[("MAX_DB_BYTES", "0")][..],
            &[("CACHE_MAX_BYTES", "-1")][..],
        ] {
            let err = Config::from_lookup(lookup(pairs)).unwrap_err();
            assert_eq!(err.code(), "misconfigured");
        }
    }
}
