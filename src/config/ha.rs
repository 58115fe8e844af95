//! `ha_config`: how instances sharing one message store elect the active one
//! (docs/architecture.md, "High availability").

use super::{ConfigError, invalid};
use serde::Deserialize;
use std::time::Duration;

/// Default of `ha_config.lease_secs`.
pub const DEFAULT_LEASE_SECS: u64 = 10;

/// The `ha_config` section as read.
#[derive(Debug, Default, Deserialize)]
pub(super) struct RawHa {
    pub lease_secs: Option<u64>,
    pub instance_id: Option<String>,
}

/// The lease settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseConfig {
    /// How long the lease lasts without renewal (`lease_secs`, default 10,
    /// at least 2): a standby takes over this long after the active
    /// instance stopped renewing. Renewed every third of it.
    pub length: Duration,
    /// This instance's name in the lease (`instance_id`; default
    /// `<host name>-<process id>`). Two running instances must not share one.
    pub instance: String,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            length: Duration::from_secs(DEFAULT_LEASE_SECS),
            instance: default_instance(),
        }
    }
}

/// `<host name>-<process id>`.
fn default_instance() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "m2pool".to_owned());
    format!("{host}-{}", std::process::id())
}

pub(super) fn lease(raw: Option<RawHa>) -> Result<LeaseConfig, ConfigError> {
    let raw = raw.unwrap_or_default();
    let secs = raw.lease_secs.unwrap_or(DEFAULT_LEASE_SECS);
    if secs < 2 {
        return Err(invalid(
            "ha_config.lease_secs",
            format!("{secs} is too short: the lease is renewed every third of it; use 2 or more"),
        ));
    }
    let instance = match raw.instance_id.map(|s| s.trim().to_owned()) {
        None => default_instance(),
        Some(s) if s.is_empty() || s.len() > 200 => {
            return Err(invalid(
                "ha_config.instance_id",
                "must be 1 to 200 characters (or left out for <host name>-<process id>)",
            ));
        }
        Some(s) => s,
    };
    Ok(LeaseConfig {
        length: Duration::from_secs(secs),
        instance,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_limits() {
        let d = lease(None).expect("defaults");
        assert_eq!(d.length, Duration::from_secs(10));
        assert!(
            d.instance.ends_with(&format!("-{}", std::process::id())),
            "{}",
            d.instance
        );
        let set = lease(Some(RawHa {
            lease_secs: Some(4),
            instance_id: Some(" a ".into()),
        }))
        .expect("set");
        assert_eq!((set.length.as_secs(), set.instance.as_str()), (4, "a"));
        let short = lease(Some(RawHa {
            lease_secs: Some(1),
            instance_id: None,
        }));
        assert!(
            matches!(short, Err(ConfigError::Invalid { ref key, .. }) if key == "ha_config.lease_secs")
        );
        let blank = lease(Some(RawHa {
            lease_secs: None,
            instance_id: Some("  ".into()),
        }));
        assert!(
            matches!(blank, Err(ConfigError::Invalid { ref key, .. }) if key == "ha_config.instance_id")
        );
    }
}
