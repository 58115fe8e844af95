//! Webhook settings in `http_config.webhooks` (docs/architecture.md,
//! "Webhooks"), and the rule every `notify_url` must pass: http or https,
//! no credentials, and no private, loopback or link-local target unless
//! `allow_private` says so (server-side request forgery: a business
//! system's request must not make the gateway call into its own network).

use super::{ConfigError, invalid};
use crate::msg::Kind;
use serde::Deserialize;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// Longest `notify_url` accepted.
pub const MAX_URL: usize = 2048;

/// `http_config.webhooks` as written.
#[derive(Debug, Default, Deserialize)]
pub(super) struct RawWebhooks {
    urls: Option<HashMap<String, String>>,
    retry_secs: Option<Vec<f64>>,
    retry_for_secs: Option<f64>,
    timeout_secs: Option<f64>,
    allow_private: Option<bool>,
    concurrency: Option<usize>,
    per_host: Option<usize>,
}

/// How answers are POSTed to `notify_url`s.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Where answers of a kind go when the request gave no `notify_url`
    /// (`urls: {"topup": …}`).
    pub urls: HashMap<Kind, url::Url>,
    /// Wait after the 1st, 2nd, … failed attempt; the last repeats.
    pub retry: Vec<Duration>,
    /// A delivery still failing this long after its first attempt is dead.
    pub retry_for: Duration,
    /// One attempt's limit, connection to answer.
    pub timeout: Duration,
    /// Private, loopback and link-local targets allowed (tests, a gateway
    /// and its business systems on one private network).
    pub allow_private: bool,
    /// Attempts in flight at once.
    pub concurrency: usize,
    /// Attempts in flight to one host: a slow one cannot take every slot.
    pub per_host: usize,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            urls: HashMap::new(),
            retry: [15, 30, 60, 300, 900, 3600]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
            retry_for: Duration::from_secs(24 * 3600),
            timeout: Duration::from_secs(10),
            allow_private: false,
            concurrency: 64,
            per_host: 8,
        }
    }
}

/// Reads `http_config.webhooks`; absent, the defaults.
pub(super) fn webhooks(raw: Option<RawWebhooks>) -> Result<WebhookConfig, ConfigError> {
    let d = WebhookConfig::default();
    let Some(raw) = raw else {
        return Ok(d);
    };
    let secs = |key: &str, v: f64| -> Result<Duration, ConfigError> {
        Duration::try_from_secs_f64(v)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| invalid(key, "must be a positive number of seconds"))
    };
    let retry = match raw.retry_secs {
        None => d.retry,
        Some(list) if list.is_empty() => {
            return Err(invalid(
                "http_config.webhooks.retry_secs",
                "must list at least one wait",
            ));
        }
        Some(list) => list
            .into_iter()
            .map(|v| secs("http_config.webhooks.retry_secs", v))
            .collect::<Result<_, _>>()?,
    };
    let allow_private = raw.allow_private.unwrap_or(false);
    let mut urls = HashMap::new();
    for (kind, text) in raw.urls.unwrap_or_default() {
        let key = format!("http_config.webhooks.urls.{kind}");
        let k = Kind::parse(&kind)
            .ok_or_else(|| invalid(&key, "names no request kind (topup, withdraw, pay, remove)"))?;
        urls.insert(
            k,
            check_url(&text, allow_private).map_err(|e| invalid(&key, e))?,
        );
    }
    let count = |key: &str, v: Option<usize>, default: usize| match v {
        None => Ok(default),
        Some(0) => Err(invalid(key, "must be at least 1")),
        Some(n) => Ok(n),
    };
    Ok(WebhookConfig {
        urls,
        retry,
        retry_for: match raw.retry_for_secs {
            None => d.retry_for,
            Some(v) => secs("http_config.webhooks.retry_for_secs", v)?,
        },
        timeout: match raw.timeout_secs {
            None => d.timeout,
            Some(v) => secs("http_config.webhooks.timeout_secs", v)?,
        },
        allow_private,
        concurrency: count(
            "http_config.webhooks.concurrency",
            raw.concurrency,
            d.concurrency,
        )?,
        per_host: count("http_config.webhooks.per_host", raw.per_host, d.per_host)?,
    })
}

/// Checks a `notify_url`: an absolute http(s) URL of at most [`MAX_URL`]
/// bytes, without user or password, whose host (when it is an address or
/// `localhost`) is public unless `allow_private`. A host name is checked
/// again on every delivery, against what it resolves to.
pub fn check_url(text: &str, allow_private: bool) -> Result<url::Url, String> {
    if text.len() > MAX_URL {
        return Err(format!("is longer than {MAX_URL} bytes"));
    }
    let url = url::Url::parse(text).map_err(|e| format!("is not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("must be http or https, not `{}`", url.scheme()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry a user name or password".to_owned());
    }
    let forbidden = match url.host() {
        None => return Err("has no host".to_owned()),
        Some(url::Host::Ipv4(ip)) => !public(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => !public(IpAddr::V6(ip)),
        Some(url::Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
    };
    if forbidden && !allow_private {
        return Err(
            "points to a private, loopback or link-local address, which this gateway does not call"
                .to_owned(),
        );
    }
    Ok(url)
}

/// Whether `ip` is a public unicast address: not loopback, private,
/// link-local, shared (CGNAT), multicast, reserved or unspecified, nor an
/// IPv6 form of one of these.
pub fn public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(v6) {
                return public_v4(v4);
            }
            let s = v6.segments();
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
                || (s[0] == 0x2001 && s[1] == 0x0db8)) // documentation
        }
    }
}

fn public_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || o[0] == 0
        || o[0] >= 240
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // shared, 100.64/10
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || (o[0] == 198 && (o[1] & 0xfe) == 18)) // benchmarking, 198.18/15
}

/// The IPv4 address inside an IPv4-mapped, IPv4-compatible or NAT64 IPv6
/// address.
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(tail),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(tail),
        [0, 0, 0, 0, 0, 0, _, _] if !v6.is_loopback() && !v6.is_unspecified() => Some(tail),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_http_targets_pass_unless_private_is_allowed() {
        for ok in [
            "https://shop.example.com/notify",
            "http://93.184.216.34:8080/cb",
            "https://8.8.8.8/x?order=1",
            "https://[2606:4700::1111]/hook",
        ] {
            assert!(check_url(ok, false).is_ok(), "{ok} is allowed");
        }
        for (bad, why) in [
            ("ftp://example.com/x", "http or https"),
            ("file:///etc/passwd", "http or https"),
            ("not a url", "not a URL"),
            ("https://user:pw@example.com/", "user name"),
            ("http://127.0.0.1:9100/metrics", "private"),
            ("http://localhost/", "private"),
            ("http://api.localhost./", "private"),
            ("http://10.1.2.3/", "private"),
            ("http://172.20.0.1/", "private"),
            ("http://192.168.1.1/", "private"),
            ("http://169.254.169.254/latest/meta-data", "private"),
            ("http://100.64.0.1/", "private"),
            ("http://0.0.0.0/", "private"),
            ("http://[::1]/", "private"),
            ("http://[fe80::1]/", "private"),
            ("http://[fd00::1]/", "private"),
            ("http://[::ffff:127.0.0.1]/", "private"),
            ("http://[64:ff9b::a00:1]/", "private"),
            ("http://2130706433/", "private"), // 127.0.0.1 as one number
        ] {
            let err = check_url(bad, false).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL));
        assert!(check_url(&long, false).is_err());
        assert!(check_url("http://127.0.0.1:9/x", true).is_ok());
        assert!(
            check_url("ftp://127.0.0.1/", true).is_err(),
            "scheme still checked"
        );
    }

    #[test]
    fn defaults_follow_the_documented_schedule_and_bad_values_are_named() {
        let d = webhooks(None).expect("defaults");
        let secs: Vec<u64> = d.retry.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [15, 30, 60, 300, 900, 3600]);
        assert_eq!(d.retry_for, Duration::from_secs(86_400));
        assert!(!d.allow_private);
        let raw: RawWebhooks = serde_json::from_str(
            r#"{"urls": {"pay": "http://127.0.0.1:1/p"}, "retry_secs": [0.2, 0.5],
                "retry_for_secs": 2, "allow_private": true}"#,
        )
        .expect("json");
        let c = webhooks(Some(raw)).expect("valid");
        assert_eq!(
            c.retry,
            [Duration::from_millis(200), Duration::from_millis(500)]
        );
        assert_eq!(c.urls[&Kind::Pay].as_str(), "http://127.0.0.1:1/p");
        for (json, key) in [
            (r#"{"urls": {"pay": "http://127.0.0.1/"}}"#, "urls.pay"),
            (
                r#"{"urls": {"refund": "https://a.example/"}}"#,
                "urls.refund",
            ),
            (r#"{"retry_secs": []}"#, "retry_secs"),
            (r#"{"retry_secs": [-1]}"#, "retry_secs"),
            (r#"{"timeout_secs": 0}"#, "timeout_secs"),
            (r#"{"per_host": 0}"#, "per_host"),
        ] {
            let raw: RawWebhooks = serde_json::from_str(json).expect("json");
            match webhooks(Some(raw)) {
                Err(ConfigError::Invalid { key: k, .. }) => assert!(k.ends_with(key), "{k}"),
                other => panic!("{json}: {other:?}"),
            }
        }
    }
}
