//! Wall-clock time as the stores keep it: milliseconds since the Unix epoch.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Year, month, day, hour, minute and second (UTC) of `secs` since the
/// Unix epoch (Howard Hinnant's civil-from-days algorithm).
pub fn civil(secs: u64) -> [i64; 6] {
    let (days, rem) = ((secs / 86_400) as i64, (secs % 86_400) as i64);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    [y, m, d, rem / 3600, rem % 3600 / 60, rem % 60]
}

/// `2006-01-02T15:04:05Z` of `ms` since the Unix epoch.
pub fn iso_utc(ms: i64) -> String {
    let [y, m, d, h, mi, s] = civil(u64::try_from(ms / 1000).unwrap_or(0));
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

#[cfg(test)]
mod tests {
    #[test]
    fn civil_dates() {
        assert_eq!(super::iso_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::iso_utc(951_825_600_000), "2000-02-29T12:00:00Z");
        assert_eq!(super::iso_utc(1_796_299_199_999), "2026-12-03T11:59:59Z");
    }
}
