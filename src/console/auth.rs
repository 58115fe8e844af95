//! Logging in to the console: the operator types the console token once;
//! the answer is a session cookie (`HttpOnly`, `SameSite=Strict`,
//! `Path=/console`, `Secure` behind HTTPS) holding an expiry and an
//! HMAC-SHA256 of it keyed by the token. Nothing is kept on the server:
//! every instance sharing the token accepts the cookie, and changing the
//! token ends every session.
//!
//! The only forms are login and logout; both refuse a request whose
//! `Origin` (or, without one, `Sec-Fetch-Site`) is another site, so no page
//! elsewhere can log an operator in or out. Nothing in the console writes.

use super::Console;
use super::i18n::Lang;
use axum::http::{HeaderMap, HeaderValue, header};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::time::Duration;

/// The session cookie's name.
pub const COOKIE: &str = "m2pool_console";
/// The language cookie's name.
pub const LANG_COOKIE: &str = "m2pool_lang";
/// How long a session lasts.
pub const SESSION: Duration = Duration::from_secs(12 * 3600);

/// The MAC of a session ending at `expires` (unix seconds).
fn mac(token: &str, expires: u64) -> String {
    // An HMAC takes a key of any length: `new_from_slice` cannot fail.
    let mut m = match Hmac::<Sha256>::new_from_slice(token.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    m.update(b"m2pool-console-session|");
    m.update(expires.to_string().as_bytes());
    hex::encode(m.finalize().into_bytes())
}

/// A session cookie value ending at `expires`.
pub fn session_value(token: &str, expires: u64) -> String {
    format!("{expires}.{}", mac(token, expires))
}

/// Whether `value` is a session of `token` still valid at `now`.
pub fn valid(token: &str, value: &str, now: u64) -> bool {
    let Some((expires, given)) = value.split_once('.') else {
        return false;
    };
    let Ok(expires) = expires.parse::<u64>() else {
        return false;
    };
    let want = mac(token, expires);
    let same: bool = subtle::ConstantTimeEq::ct_eq(given.as_bytes(), want.as_bytes()).into();
    same && now < expires
}

/// The value of cookie `name` in `headers`.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Unix seconds now.
pub fn now_secs() -> u64 {
    u64::try_from(crate::clock::now_ms() / 1000).unwrap_or(0)
}

/// Whether the request holds a valid session.
pub fn signed_in(console: &Console, headers: &HeaderMap) -> bool {
    cookie(headers, COOKIE).is_some_and(|v| valid(console.token.expose(), v, now_secs()))
}

/// The reader's language: `?lang=`, then the cookie, then the browser's.
pub fn lang(headers: &HeaderMap, asked: Option<&str>) -> Lang {
    asked
        .and_then(Lang::parse)
        .or_else(|| cookie(headers, LANG_COOKIE).and_then(Lang::parse))
        .unwrap_or_else(|| {
            Lang::from_accept(
                headers
                    .get(header::ACCEPT_LANGUAGE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or(""),
            )
        })
}

/// Whether a form post comes from the console's own pages: its `Origin`
/// names this host, or without one, the browser says same-origin.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let fetch_site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    match headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .filter(|o| *o != "null")
    {
        Some(origin) => {
            let bare = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"));
            bare.is_some() && bare == host
        }
        // `Origin: null` (an opaque origin) is trusted only when the
        // browser vouches for the request's site.
        None if headers.get(header::ORIGIN).is_some() => fetch_site == Some("same-origin"),
        None => fetch_site.is_none_or(|s| s == "same-origin" || s == "none"),
    }
}

/// Whether the request reached us over HTTPS (through a proxy that says so).
fn https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"))
}

/// The `Set-Cookie` of a new session (or, `value` `None`, of its end).
pub fn set_cookie(headers: &HeaderMap, value: Option<&str>) -> HeaderValue {
    let secure = if https(headers) { "; Secure" } else { "" };
    let text = match value {
        Some(v) => format!(
            "{COOKIE}={v}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            SESSION.as_secs()
        ),
        None => format!("{COOKIE}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    };
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_valid_for_its_token_until_it_ends() {
        let v = session_value("operator-console-token", 1_000);
        assert!(valid("operator-console-token", &v, 999));
        assert!(!valid("operator-console-token", &v, 1_000), "ended");
        assert!(!valid("another-console-token!", &v, 999), "other token");
        let (_, mac) = v.split_once('.').expect("dot");
        assert!(
            !valid("operator-console-token", &format!("9999999999.{mac}"), 999),
            "a later expiry with the old MAC"
        );
        assert!(!valid("operator-console-token", "garbage", 1));
        assert!(!valid("operator-console-token", "", 1));
    }

    #[test]
    fn cookies_origins_and_languages() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; m2pool_console=x.y; m2pool_lang=zh"),
        );
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:9100"));
        assert_eq!(cookie(&h, COOKIE), Some("x.y"));
        assert_eq!(lang(&h, None), Lang::Zh);
        assert_eq!(lang(&h, Some("en")), Lang::En);
        assert!(
            same_origin(&h),
            "a browser without Origin on a top-level form"
        );
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:9100"),
        );
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(!same_origin(&h));
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(!same_origin(&h), "an opaque origin alone");
        h.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert!(same_origin(&h), "an opaque origin the browser vouches for");
        h.remove(header::ORIGIN);
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(!same_origin(&h));
        let set = set_cookie(&h, Some("v"));
        let set = set.to_str().expect("ascii");
        assert!(
            set.contains("HttpOnly") && set.contains("SameSite=Strict") && !set.contains("Secure")
        );
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert!(
            set_cookie(&h, None)
                .to_str()
                .expect("ascii")
                .ends_with("Max-Age=0; Secure")
        );
    }
}
