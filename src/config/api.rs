//! The HTTP API's settings in `http_config` (docs/architecture.md, "HTTP
//! API"): `api` turns `/v1` on next to `/healthz` and `/metrics`;
//! `api_token_file` (or the environment's `M2POOL_API_TOKEN`) holds the
//! token that reads and the stream need. Requests themselves are signed
//! like the queues' and need no token.

use super::{ConfigError, invalid};
use crate::secret::Secret;
use std::path::PathBuf;

/// The environment variable that may hold the API token.
pub const TOKEN_ENV: &str = "M2POOL_API_TOKEN";

/// Shortest token accepted: a guessable token would open every read.
const MIN_TOKEN_LEN: usize = 16;

/// The HTTP API, when `http_config.api` is true.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// What reads and the stream must present (`Authorization: Bearer …`);
    /// `None`: they are refused, requests still taken.
    pub token: Option<Secret<String>>,
}

/// Reads the API settings: `api` (default false), `api_token_file`, and
/// `M2POOL_API_TOKEN` when there is no file. `listening` says whether
/// `http_config.listen` is set; the API is served there.
pub(super) fn api(
    on: Option<bool>,
    token_file: Option<PathBuf>,
    listening: bool,
) -> Result<Option<ApiConfig>, ConfigError> {
    if !on.unwrap_or(false) {
        return Ok(None);
    }
    if !listening {
        return Err(invalid(
            "http_config.api",
            "the API is served on http_config.listen, which is not set",
        ));
    }
    let token = token(token_file, "http_config.api_token_file", TOKEN_ENV)?;
    Ok(Some(ApiConfig { token }))
}

/// The environment variable that may hold the console token.
pub const CONSOLE_TOKEN_ENV: &str = "M2POOL_CONSOLE_TOKEN";

/// The operator console's token: `http_config.console_token_file`, else
/// `M2POOL_CONSOLE_TOKEN`; `None` leaves the console off. It is served on
/// `http_config.listen`, and may not be the API token (an integration's
/// token must not open the console).
pub(super) fn console_token(
    file: Option<PathBuf>,
    listening: bool,
    api: Option<&ApiConfig>,
) -> Result<Option<Secret<String>>, ConfigError> {
    let key = "http_config.console_token_file";
    let Some(t) = token(file, key, CONSOLE_TOKEN_ENV)? else {
        return Ok(None);
    };
    if !listening {
        return Err(invalid(
            key,
            "the console is served on http_config.listen, which is not set",
        ));
    }
    if api
        .and_then(|a| a.token.as_ref())
        .is_some_and(|a| a.expose() == t.expose())
    {
        return Err(invalid(
            key,
            "the console token must differ from the API token",
        ));
    }
    Ok(Some(t))
}

/// A token from `file` (config key `key`), else from the environment's
/// `env`; `None` when neither is set.
fn token(
    file: Option<PathBuf>,
    key: &str,
    env: &str,
) -> Result<Option<Secret<String>>, ConfigError> {
    match file {
        Some(path) => {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))?;
            Ok(Some(checked(text, key)?))
        }
        None => match std::env::var(env) {
            Ok(text) => Ok(Some(checked(text, env)?)),
            Err(_) => Ok(None),
        },
    }
}

/// The token in `text`, trimmed, if long enough.
fn checked(text: String, key: &str) -> Result<Secret<String>, ConfigError> {
    let token = text.trim().to_owned();
    let mut text = text;
    zeroize::Zeroize::zeroize(&mut text);
    if token.len() < MIN_TOKEN_LEN || token.chars().any(|c| c.is_whitespace()) {
        return Err(invalid(
            key,
            format!("the token must be at least {MIN_TOKEN_LEN} characters, without spaces"),
        ));
    }
    Ok(Secret::new(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_by_default_needs_listen_and_a_long_token() {
        assert!(api(None, None, true).expect("off").is_none());
        assert!(api(Some(false), None, false).expect("off").is_none());
        let no_listen = api(Some(true), None, false);
        assert!(
            matches!(no_listen, Err(ConfigError::Invalid { ref key, .. }) if key == "http_config.api")
        );
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("token");
        std::fs::write(&file, "0123456789abcdef-token\n").expect("write");
        let on = api(Some(true), Some(file.clone()), true)
            .expect("valid")
            .expect("on");
        assert_eq!(
            on.token.as_ref().map(|t| t.expose().as_str()),
            Some("0123456789abcdef-token")
        );
        assert!(
            !format!("{on:?}").contains("0123456789abcdef"),
            "never printed"
        );
        std::fs::write(&file, "short").expect("write");
        let short = api(Some(true), Some(file), true);
        assert!(
            matches!(short, Err(ConfigError::Invalid { ref key, .. }) if key == "http_config.api_token_file")
        );
        let missing = api(Some(true), Some(dir.path().join("none")), true);
        assert!(matches!(missing, Err(ConfigError::Invalid { .. })));
    }

    #[test]
    fn the_console_token_needs_listen_and_differs_from_the_api_token() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("console");
        std::fs::write(&file, "operator-console-token\n").expect("write");
        let t = console_token(Some(file.clone()), true, None)
            .expect("valid")
            .expect("on");
        assert_eq!(t.expose(), "operator-console-token");
        let key_of = |r: Result<Option<Secret<String>>, ConfigError>| match r {
            Err(ConfigError::Invalid { key, reason }) => (key, reason),
            other => panic!("accepted: {other:?}"),
        };
        let (key, _) = key_of(console_token(Some(file.clone()), false, None));
        assert_eq!(key, "http_config.console_token_file");
        let same = ApiConfig {
            token: Some(Secret::new("operator-console-token".to_owned())),
        };
        let (_, message) = key_of(console_token(Some(file.clone()), true, Some(&same)));
        assert!(message.contains("differ"), "{message}");
        std::fs::write(&file, "short").expect("write");
        key_of(console_token(Some(file), true, None));
    }
}
