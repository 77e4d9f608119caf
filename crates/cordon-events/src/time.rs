//! RFC 3339 timestamps for events: UTC, always nine fractional digits, `Z` suffix
//! (`2026-11-27T05:01:02.123456789Z`). Fixed width, so timestamps of years 0–9999
//! sort as strings. Written here instead of pulling in a date crate: the only thing
//! needed is converting days since the epoch to a civil date.

use std::time::{SystemTime, UNIX_EPOCH};

/// Formats `time` as an RFC 3339 UTC timestamp with nanoseconds.
pub fn format_timestamp(time: SystemTime) -> String {
    let (secs, nanos) = match time.duration_since(UNIX_EPOCH) {
        Ok(after) => (
            i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
            after.subsec_nanos(),
        ),
        Err(before) => {
            let before = before.duration();
            let secs = i64::try_from(before.as_secs()).map_or(i64::MIN, |s| -s);
            match before.subsec_nanos() {
                0 => (secs, 0),
                n => (secs.saturating_sub(1), 1_000_000_000 - n),
            }
        }
    };
    format_unix_timestamp(secs, nanos)
}

/// Formats `secs` seconds (negative: before 1970) plus `nanos` (clamped to
/// 999 999 999) after the Unix epoch as an RFC 3339 UTC timestamp.
pub fn format_unix_timestamp(secs: i64, nanos: u32) -> String {
    let days = secs.div_euclid(86_400);
    let second_of_day = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60,
        nanos.min(999_999_999),
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar.
/// Howard Hinnant's `civil_from_days`: shift the epoch to 0000-03-01 so the leap day
/// ends each year, then split into 400-year eras of exactly 146 097 days.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097); // [0, 146096]
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365; // [0, 399]
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100); // [0, 365]
    let month_from_march = (5 * day_of_year + 2) / 153; // [0, 11]
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1; // [1, 31]
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    // Both fit: month is in 1..=12 and day in 1..=31 by construction.
    (year, month as u32, day as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn known_instants() {
        let cases = [
            (0, 0, "1970-01-01T00:00:00.000000000Z"),
            (951_782_400, 0, "2000-02-29T00:00:00.000000000Z"),
            (951_868_800, 0, "2000-03-01T00:00:00.000000000Z"),
            // 1900 is not a leap year: Feb 28 is followed by Mar 1.
            (-2_203_977_600, 0, "1900-02-28T00:00:00.000000000Z"),
            (-2_203_891_200, 0, "1900-03-01T00:00:00.000000000Z"),
            (-1, 0, "1969-12-31T23:59:59.000000000Z"),
            (1_234_567_890, 5, "2009-02-13T23:31:30.000000005Z"),
            (1_795_755_662, 123_456_789, "2026-11-27T05:01:02.123456789Z"),
            (4_107_542_399, 999_999_999, "2100-02-28T23:59:59.999999999Z"),
            (253_402_300_799, 0, "9999-12-31T23:59:59.000000000Z"),
        ];
        for (secs, nanos, want) in cases {
            assert_eq!(format_unix_timestamp(secs, nanos), want, "secs={secs}");
        }
    }

    #[test]
    fn system_time_before_and_after_epoch() {
        let after = UNIX_EPOCH + Duration::new(951_782_400, 42);
        assert_eq!(format_timestamp(after), "2000-02-29T00:00:00.000000042Z");
        let before = UNIX_EPOCH - Duration::new(0, 1);
        assert_eq!(format_timestamp(before), "1969-12-31T23:59:59.999999999Z");
    }

    #[test]
    fn every_day_across_four_centuries_advances_by_one() {
        // Walk 1600-01-01 .. 2400-01-01 day by day: each date must be the successor
        // of the previous one, which catches any leap-year or month-length mistake.
        let days_in = |y: i64, m: u32| match m {
            2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        let start = -135_140; // 1600-01-01
        let mut prev = civil_from_days(start);
        assert_eq!(prev, (1600, 1, 1));
        for d in start + 1..start + 292_194 {
            let (y, m, day) = civil_from_days(d);
            let (py, pm, pd) = prev;
            let expected = if pd < days_in(py, pm) {
                (py, pm, pd + 1)
            } else if pm < 12 {
                (py, pm + 1, 1)
            } else {
                (py + 1, 1, 1)
            };
            assert_eq!((y, m, day), expected, "day {d}");
            prev = (y, m, day);
        }
        assert_eq!(prev, (2399, 12, 31));
    }
}
