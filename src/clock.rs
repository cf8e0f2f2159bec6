//! UTC calendar arithmetic and the three timestamp formats the tool writes, without a time crate.
//!
//! Invariants: pure functions of a millisecond count since the Unix epoch (a clock set before the
//! epoch reads as the epoch); times after [`MAX_UNIX_MILLIS`], the last millisecond of the year
//! 9999, are clamped to it so that the year keeps four digits; every formatter writes a
//! fixed-width field. Digits are written by hand because the server formats a timestamp for every
//! request and `format!` would allocate each time.

use std::time::{SystemTime, UNIX_EPOCH};

/// The last representable instant, `9999-12-31T23:59:59.999Z`. Later times are clamped to it:
/// the formats have a four-digit year, and a clamped timestamp is better than a ragged one.
pub const MAX_UNIX_MILLIS: u64 = 253_402_300_799_999;

const MILLIS_PER_SECOND: u64 = 1_000;
const MILLIS_PER_DAY: u64 = 86_400_000;
/// Days in a 400-year Gregorian cycle; the calendar repeats exactly after it.
const DAYS_PER_ERA: u64 = 146_097;
/// Days from 0000-03-01 (the start of the shifted calendar below) to 1970-01-01.
const DAYS_FROM_YEAR_ZERO_MARCH_TO_EPOCH: u64 = 719_468;

const WEEKDAY_NAMES: [&[u8; 3]; 7] = [b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun"];
const MONTH_NAMES: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// A broken-down UTC time, millisecond precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtcTime {
    pub year: u32,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
    pub millisecond: u16,
    /// 0 = Monday … 6 = Sunday.
    pub weekday: u8,
}

/// Milliseconds since the Unix epoch now (0 if the clock is before 1970).
pub fn now_unix_millis() -> u64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        // u128 -> u64 only overflows some 584 million years from now; saturate rather than wrap.
        Ok(elapsed) => u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
        Err(_) => 0,
    }
}

/// Year, month (1-12) and day (1-31) of the given day number since 1970-01-01.
///
/// The calendar is shifted to start on 1 March, so that the leap day is the last day of the
/// shifted year and month lengths follow a fixed five-month pattern (31 30 31 30 31) that
/// `(153 * m + 2) / 5` reproduces. Years are grouped into 400-year eras of exactly
/// [`DAYS_PER_ERA`] days, so only the position inside one era needs the leap rules.
fn civil_from_days(days_since_epoch: u64) -> (u32, u8, u8) {
    let days = days_since_epoch + DAYS_FROM_YEAR_ZERO_MARCH_TO_EPOCH;
    let era = days / DAYS_PER_ERA;
    let day_of_era = days % DAYS_PER_ERA;
    // Subtract one day per 4 years, add one back per 100, subtract one for the era's last day,
    // and the remainder divides evenly into 365-day years.
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153; // 0 = March … 11 = February
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    // January and February belong to the next civil year.
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    (year as u32, month as u8, day as u8)
}

/// Day number since 1970-01-01 of a civil date at or after the epoch; the inverse of
/// [`civil_from_days`]. Saturates instead of panicking: dates before the epoch give 0, and
/// out-of-range fields (which only a hand-built [`UtcTime`] can hold) give a wrong but finite day.
#[cfg(test)]
fn days_from_civil(year: u32, month: u8, day: u8) -> u64 {
    let shifted_year = u64::from(year).saturating_sub(u64::from(month <= 2));
    let era = shifted_year / 400;
    let year_of_era = shifted_year % 400;
    let shifted_month = if month > 2 {
        u64::from(month) - 3
    } else {
        u64::from(month) + 9
    };
    let day_of_year = ((153 * shifted_month + 2) / 5 + u64::from(day)).saturating_sub(1);
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    (era * DAYS_PER_ERA + day_of_era).saturating_sub(DAYS_FROM_YEAR_ZERO_MARCH_TO_EPOCH)
}

/// `00` to `99`: a pair is one table load instead of a division and a remainder by 10.
const DIGIT_PAIRS: [[u8; 2]; 100] = {
    let mut pairs = [[0u8; 2]; 100];
    let mut value = 0;
    while value < 100 {
        pairs[value] = [b'0' + (value / 10) as u8, b'0' + (value % 10) as u8];
        value += 1;
    }
    pairs
};

/// The two low decimal digits of `value`. Fixed-width fields are written pair by pair: one
/// division per two digits, and no loop, since the server formats several times per request
/// (and the balance page's numbers, `chaos::push_padded_digits`, the same way).
/// Higher digits are dropped, which the clamping to [`MAX_UNIX_MILLIS`] makes unreachable.
pub fn two_digits(value: u32) -> [u8; 2] {
    DIGIT_PAIRS[(value % 100) as usize]
}

/// Appends text that is ASCII by construction (every formatter here writes only digits and
/// punctuation); anything else would be a bug and is left out rather than mangled.
fn push_ascii(out: &mut String, bytes: &[u8]) {
    debug_assert!(bytes.is_ascii());
    if let Ok(text) = std::str::from_utf8(bytes) {
        out.push_str(text);
    }
}

impl UtcTime {
    /// Breaks a millisecond count down; values after [`MAX_UNIX_MILLIS`] are clamped to it.
    pub fn from_unix_millis(unix_millis: u64) -> UtcTime {
        let unix_millis = unix_millis.min(MAX_UNIX_MILLIS);
        let days = unix_millis / MILLIS_PER_DAY;
        let millis_of_day = unix_millis % MILLIS_PER_DAY;
        let (year, month, day) = civil_from_days(days);
        let seconds_of_day = millis_of_day / MILLIS_PER_SECOND;
        UtcTime {
            year,
            month,
            day,
            hour: (seconds_of_day / 3600) as u8,
            minute: (seconds_of_day / 60 % 60) as u8,
            second: (seconds_of_day % 60) as u8,
            millisecond: (millis_of_day % MILLIS_PER_SECOND) as u16,
            // 1970-01-01 was a Thursday (3 when Monday is 0).
            weekday: ((days + 3) % 7) as u8,
        }
    }

    /// Milliseconds since the epoch; the inverse of [`UtcTime::from_unix_millis`] for any value
    /// it produced; clamped to [`MAX_UNIX_MILLIS`]. Never panics, even on a hand-built value with
    /// nonsense fields.
    #[cfg(test)]
    pub fn to_unix_millis(self) -> u64 {
        let days = days_from_civil(self.year, self.month, self.day);
        let seconds =
            u64::from(self.hour) * 3600 + u64::from(self.minute) * 60 + u64::from(self.second);
        let millis = days
            .saturating_mul(MILLIS_PER_DAY)
            .saturating_add(seconds * MILLIS_PER_SECOND + u64::from(self.millisecond));
        millis.min(MAX_UNIX_MILLIS)
    }

    /// `YYYY-MM-DD`, then `separator`, then `hh:mm:ss`, then `fraction_mark` and milliseconds.
    fn date_time_bytes(&self, separator: u8, fraction_mark: u8) -> [u8; 23] {
        let [y0, y1] = two_digits(self.year / 100);
        let [y2, y3] = two_digits(self.year);
        let [mo0, mo1] = two_digits(u32::from(self.month));
        let [d0, d1] = two_digits(u32::from(self.day));
        let [h0, h1] = two_digits(u32::from(self.hour));
        let [mi0, mi1] = two_digits(u32::from(self.minute));
        let [s0, s1] = two_digits(u32::from(self.second));
        let millisecond = u32::from(self.millisecond);
        let [ms1, ms2] = two_digits(millisecond);
        let ms0 = b'0' + (millisecond / 100 % 10) as u8;
        [
            y0,
            y1,
            y2,
            y3,
            b'-',
            mo0,
            mo1,
            b'-',
            d0,
            d1,
            separator,
            h0,
            h1,
            b':',
            mi0,
            mi1,
            b':',
            s0,
            s1,
            fraction_mark,
            ms0,
            ms1,
            ms2,
        ]
    }

    /// RFC 3339, e.g. `2024-10-23T23:55:31.705Z`: always 24 bytes, three fractional digits.
    pub fn write_rfc3339(&self, out: &mut String) {
        push_ascii(out, &self.rfc3339_bytes());
    }

    /// The same RFC 3339 text as [`UtcTime::write_rfc3339`] as a fixed array, for writers that
    /// append bytes and must not allocate: always 24 bytes.
    pub fn rfc3339_bytes(&self) -> [u8; 24] {
        let mut text = [b'Z'; 24];
        text[..23].copy_from_slice(&self.date_time_bytes(b'T', b'.'));
        text
    }

    /// The original tool's log style, e.g. `2024-10-23 23:55:31,705`: always 23 bytes.
    pub fn write_log_style(&self, out: &mut String) {
        push_ascii(out, &self.date_time_bytes(b' ', b','));
    }

    /// IMF-fixdate for the `Date` header (RFC 9110 §5.6.7), e.g. `Wed, 23 Oct 2024 23:55:31 GMT`;
    /// always 29 bytes.
    pub fn http_date(&self) -> [u8; 29] {
        let mut date = *b"Thu, 01 Jan 1970 00:00:00 GMT";
        date[0..3].copy_from_slice(WEEKDAY_NAMES[usize::from(self.weekday % 7)]);
        date[5..7].copy_from_slice(&two_digits(u32::from(self.day)));
        date[8..11].copy_from_slice(MONTH_NAMES[usize::from(self.month.clamp(1, 12) - 1)]);
        date[12..14].copy_from_slice(&two_digits(self.year / 100));
        date[14..16].copy_from_slice(&two_digits(self.year));
        date[17..19].copy_from_slice(&two_digits(u32::from(self.hour)));
        date[20..22].copy_from_slice(&two_digits(u32::from(self.minute)));
        date[23..25].copy_from_slice(&two_digits(u32::from(self.second)));
        date
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rfc3339(unix_millis: u64) -> String {
        let mut out = String::new();
        UtcTime::from_unix_millis(unix_millis).write_rfc3339(&mut out);
        out
    }

    fn log_style(unix_millis: u64) -> String {
        let mut out = String::new();
        UtcTime::from_unix_millis(unix_millis).write_log_style(&mut out);
        out
    }

    fn http_date(unix_millis: u64) -> String {
        String::from_utf8(UtcTime::from_unix_millis(unix_millis).http_date().to_vec()).unwrap()
    }

    /// Reference values from GNU `date -u -d @SECONDS` (`+%Y-%m-%dT%H:%M:%S`, `+%a, %d %b %Y
    /// %H:%M:%S GMT`, `+%u`), with the milliseconds appended by hand.
    const DATE_COMMAND_VECTORS: [(u64, &str, &str, u8); 13] = [
        (
            0,
            "1970-01-01T00:00:00.000Z",
            "Thu, 01 Jan 1970 00:00:00 GMT",
            4,
        ),
        (
            951_782_400_000,
            "2000-02-29T00:00:00.000Z",
            "Tue, 29 Feb 2000 00:00:00 GMT",
            2,
        ),
        (
            1_729_727_731_705,
            "2024-10-23T23:55:31.705Z",
            "Wed, 23 Oct 2024 23:55:31 GMT",
            3,
        ),
        (
            2_147_483_647_000,
            "2038-01-19T03:14:07.000Z",
            "Tue, 19 Jan 2038 03:14:07 GMT",
            2,
        ),
        (
            2_147_483_648_000,
            "2038-01-19T03:14:08.000Z",
            "Tue, 19 Jan 2038 03:14:08 GMT",
            2,
        ),
        (
            4_107_542_400_000,
            "2100-03-01T00:00:00.000Z",
            "Mon, 01 Mar 2100 00:00:00 GMT",
            1,
        ),
        (
            4_107_542_399_999,
            "2100-02-28T23:59:59.999Z",
            "Sun, 28 Feb 2100 23:59:59 GMT",
            7,
        ),
        (
            253_402_300_799_999,
            "9999-12-31T23:59:59.999Z",
            "Fri, 31 Dec 9999 23:59:59 GMT",
            5,
        ),
        (
            1_234_567_890_123,
            "2009-02-13T23:31:30.123Z",
            "Fri, 13 Feb 2009 23:31:30 GMT",
            5,
        ),
        (
            1_700_000_000_000,
            "2023-11-14T22:13:20.000Z",
            "Tue, 14 Nov 2023 22:13:20 GMT",
            2,
        ),
        (
            946_684_799_999,
            "1999-12-31T23:59:59.999Z",
            "Fri, 31 Dec 1999 23:59:59 GMT",
            5,
        ),
        (
            68_256_000_000,
            "1972-03-01T00:00:00.000Z",
            "Wed, 01 Mar 1972 00:00:00 GMT",
            3,
        ),
        (
            3_000_000_000_000,
            "2065-01-24T05:20:00.000Z",
            "Sat, 24 Jan 2065 05:20:00 GMT",
            6,
        ),
    ];

    #[test]
    fn matches_the_date_command() {
        for (unix_millis, expected_rfc3339, expected_http, iso_weekday) in DATE_COMMAND_VECTORS {
            assert_eq!(rfc3339(unix_millis), expected_rfc3339, "{unix_millis}");
            assert_eq!(http_date(unix_millis), expected_http, "{unix_millis}");
            // `date +%u` counts Monday as 1.
            let time = UtcTime::from_unix_millis(unix_millis);
            assert_eq!(time.weekday + 1, iso_weekday, "{unix_millis}");
            assert_eq!(time.to_unix_millis(), unix_millis);
        }
    }

    #[test]
    fn breaks_down_the_owner_example() {
        let time = UtcTime::from_unix_millis(1_729_727_731_705);
        let expected = UtcTime {
            year: 2024,
            month: 10,
            day: 23,
            hour: 23,
            minute: 55,
            second: 31,
            millisecond: 705,
            weekday: 2,
        };
        assert_eq!(time, expected);
        assert_eq!(log_style(1_729_727_731_705), "2024-10-23 23:55:31,705");
    }

    #[test]
    fn leap_days_exist_only_in_leap_years() {
        // (year, has a 29 February)
        let cases = [(1972, true), (2000, true), (2023, false), (2024, true)];
        for (year, leap) in cases {
            let february_28 = days_from_civil(year, 2, 28) * MILLIS_PER_DAY;
            let next = UtcTime::from_unix_millis(february_28 + MILLIS_PER_DAY);
            let expected = if leap { (2, 29) } else { (3, 1) };
            assert_eq!((next.month, next.day), expected, "year {year}");
        }
        // 2100 is divisible by 100 but not 400: no 29 February.
        let february_28_2100 = days_from_civil(2100, 2, 28) * MILLIS_PER_DAY;
        let next = UtcTime::from_unix_millis(february_28_2100 + MILLIS_PER_DAY);
        assert_eq!((next.year, next.month, next.day), (2100, 3, 1));
    }

    #[test]
    fn clamps_after_the_year_9999() {
        for unix_millis in [
            MAX_UNIX_MILLIS,
            MAX_UNIX_MILLIS + 1,
            10u64.pow(15),
            u64::MAX,
        ] {
            assert_eq!(rfc3339(unix_millis), "9999-12-31T23:59:59.999Z");
            assert_eq!(log_style(unix_millis), "9999-12-31 23:59:59,999");
            assert_eq!(http_date(unix_millis), "Fri, 31 Dec 9999 23:59:59 GMT");
        }
        assert_eq!(
            MAX_UNIX_MILLIS,
            (days_from_civil(10_000, 1, 1)) * MILLIS_PER_DAY - 1
        );
    }

    #[test]
    fn every_format_has_a_fixed_width() {
        let mut unix_millis = 0u64;
        while unix_millis < MAX_UNIX_MILLIS {
            assert_eq!(rfc3339(unix_millis).len(), 24);
            assert_eq!(log_style(unix_millis).len(), 23);
            assert_eq!(http_date(unix_millis).len(), 29);
            // The digits agree with std's formatting of the same fields.
            let t = UtcTime::from_unix_millis(unix_millis);
            let fields = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                t.year, t.month, t.day, t.hour, t.minute, t.second, t.millisecond
            );
            assert_eq!(rfc3339(unix_millis), fields);
            let http = &http_date(unix_millis)[5..];
            let expected_http = format!(
                "{:02} {} {:04} {:02}:{:02}:{:02} GMT",
                t.day,
                String::from_utf8_lossy(MONTH_NAMES[usize::from(t.month - 1)]),
                t.year,
                t.hour,
                t.minute,
                t.second
            );
            assert_eq!(http, expected_http);
            unix_millis = unix_millis * 3 + 7;
        }
    }

    #[test]
    fn agrees_with_a_day_by_day_count_until_the_year_10000() {
        const MONTH_LENGTHS: [u8; 12] = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
        let is_leap = |year: u32| {
            year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400))
        };
        let (mut year, mut month, mut day) = (1970u32, 1u8, 1u8);
        let mut days = 0u64;
        while year < 10_000 {
            // Vary the time of day so hours, minutes and milliseconds get exercised too.
            let millis_of_day = days.wrapping_mul(2_654_435_761) % MILLIS_PER_DAY;
            let unix_millis = days * MILLIS_PER_DAY + millis_of_day;
            let time = UtcTime::from_unix_millis(unix_millis);
            assert_eq!((time.year, time.month, time.day), (year, month, day));
            assert_eq!(u64::from(time.weekday), (days + 3) % 7);
            assert_eq!(time.to_unix_millis(), unix_millis);
            assert_eq!(days_from_civil(year, month, day), days);

            let month_length = if month == 2 && is_leap(year) {
                29
            } else {
                MONTH_LENGTHS[usize::from(month - 1)]
            };
            day += 1;
            if day > month_length {
                day = 1;
                month += 1;
                if month > 12 {
                    month = 1;
                    year += 1;
                }
            }
            days += 1;
        }
        assert_eq!(days * MILLIS_PER_DAY - 1, MAX_UNIX_MILLIS);
    }

    #[test]
    fn nonsense_fields_never_panic() {
        let nonsense = [
            (0, 1, 1, 0, 0, 0, 0),
            (1969, 12, 31, 23, 59, 59, 999),
            (0, 0, 0, 0, 0, 0, 0),
            (u32::MAX, 255, 255, 255, 255, 255, u16::MAX),
        ];
        for (year, month, day, hour, minute, second, millisecond) in nonsense {
            let time = UtcTime {
                year,
                month,
                day,
                hour,
                minute,
                second,
                millisecond,
                weekday: 200,
            };
            assert!(time.to_unix_millis() <= MAX_UNIX_MILLIS);
            let mut text = String::new();
            time.write_rfc3339(&mut text);
            time.write_log_style(&mut text);
            assert_eq!(text.len(), 24 + 23);
            assert_eq!(time.http_date().len(), 29);
        }
        let before_epoch = UtcTime::from_unix_millis(0);
        let year_1969 = UtcTime {
            year: 1969,
            ..before_epoch
        };
        assert_eq!(year_1969.to_unix_millis(), 0);
    }

    #[test]
    fn now_is_after_this_code_was_written() {
        // 2024-10-23: any working clock is later.
        assert!(now_unix_millis() > 1_729_727_731_705);
    }
}
