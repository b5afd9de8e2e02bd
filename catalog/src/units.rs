//! Sizes, durations and times as cairn shows and parses them.
//!
//! Parsing is exact: numbers are read as decimals (never through `f64`) and the result is
//! rounded down, so `"1.5GiB"` is exactly 1.5 × 2³⁰ bytes and `"0.001ms"` is one microsecond.
//! Printing follows alpenhorn for sizes (`"46.52 GiB"`, four significant digits, for people)
//! and a compact form for durations (`"1h30m"`) that parses back to the same value.
//! Times are UTC, computed here from the unix timestamp (no calendar crate).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A size or duration that could not be parsed; the message quotes the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("invalid size {input:?}: {reason}")]
    Size { input: String, reason: String },
    #[error("invalid duration {input:?}: {reason}")]
    Duration { input: String, reason: String },
}

const SIZE_UNITS_HELP: &str = "use B, kB, MB, GB, TB, PB, KiB, MiB, GiB, TiB, PiB";
const DURATION_UNITS_HELP: &str = "use ns, us, ms, s, m, h, d, w";

/// Fractions longer than this are refused: they cannot be written on purpose, and the limit keeps
/// the exact arithmetic inside `u128`.
const MAX_FRACTION_DIGITS: usize = 18;

const KIB: u64 = 1 << 10;

/// A decimal number as written: `int.frac`, with `frac_digits` digits after the point.
#[derive(Debug, PartialEq, Eq)]
struct Decimal {
    int: u128,
    frac: u128,
    frac_digits: u32,
}

impl Decimal {
    /// `self × unit`, rounded down; `None` on overflow.
    fn times(&self, unit: u128) -> Option<u128> {
        let whole = self.int.checked_mul(unit)?;
        // frac < 10^18 and unit < 2^60 (a week in ns, an EiB), so this product fits in u128.
        let part = self.frac.checked_mul(unit)? / 10u128.pow(self.frac_digits);
        whole.checked_add(part)
    }
}

/// Splits a leading decimal number off `s`. Returns the number and the rest, or a reason.
fn take_decimal(s: &str) -> Result<(Decimal, &str), String> {
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, rest) = s.split_at(end);
    let (int_text, frac_text) = number.split_once('.').unwrap_or((number, ""));
    if frac_text.contains('.') {
        return Err(format!("malformed number {number:?}"));
    }
    if int_text.is_empty() && frac_text.is_empty() {
        return Err(match s.chars().next() {
            _ if !number.is_empty() => format!("malformed number {number:?}"),
            Some(c) if !c.is_alphabetic() => format!("unexpected {c:?}"),
            _ => "expected a number".to_owned(),
        });
    }
    if frac_text.len() > MAX_FRACTION_DIGITS {
        return Err(format!(
            "too many decimal places in {number:?} (at most {MAX_FRACTION_DIGITS})"
        ));
    }
    let parse = |digits: &str| -> Result<u128, String> {
        if digits.is_empty() {
            Ok(0)
        } else {
            digits
                .parse()
                .map_err(|_| format!("number {number:?} is too large"))
        }
    };
    let decimal = Decimal {
        int: parse(int_text)?,
        frac: parse(frac_text)?,
        frac_digits: frac_text.len() as u32,
    };
    Ok((decimal, rest))
}

/// Bytes in one `unit` of size (case-insensitive); `None` if unknown.
fn size_unit(unit: &str) -> Option<u64> {
    let bytes = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "m" | "mb" => 1000u64.pow(2),
        "g" | "gb" => 1000u64.pow(3),
        "t" | "tb" => 1000u64.pow(4),
        "p" | "pb" => 1000u64.pow(5),
        "e" | "eb" => 1000u64.pow(6),
        "kib" => KIB,
        "mib" => KIB.pow(2),
        "gib" => KIB.pow(3),
        "tib" => KIB.pow(4),
        "pib" => KIB.pow(5),
        "eib" => KIB.pow(6),
        _ => return None,
    };
    Some(bytes)
}

/// Parses a size: `"50GiB"`, `"10 GB"`, `"1.5TiB"`, `"4096"`, `"512 kB"`.
///
/// Units are case-insensitive: `B`; SI `kB`/`k`, `MB`/`M`, `GB`/`G`, `TB`/`T`, `PB`/`P`, `EB`
/// (powers of 1000); IEC `KiB`, `MiB`, `GiB`, `TiB`, `PiB`, `EiB` (powers of 1024). A bare number
/// is bytes. Fractions are allowed and the result is rounded down to whole bytes.
pub fn parse_size(s: &str) -> Result<u64, UnitError> {
    let error = |reason: String| UnitError::Size {
        input: s.to_owned(),
        reason,
    };
    let text = s.trim();
    if text.is_empty() {
        return Err(error("empty".to_owned()));
    }
    if text.starts_with('-') {
        return Err(error("must not be negative".to_owned()));
    }
    let (number, rest) = take_decimal(text).map_err(error)?;
    let unit = rest.trim_start();
    let unit_bytes = size_unit(unit)
        .ok_or_else(|| error(format!("unknown unit {unit:?} ({SIZE_UNITS_HELP})")))?;
    number
        .times(u128::from(unit_bytes))
        .and_then(|bytes| u64::try_from(bytes).ok())
        .ok_or_else(|| error(format!("too large (at most {} bytes)", u64::MAX)))
}

/// IEC units as alpenhorn prints them (note the lowercase `k`).
const SIZE_DISPLAY_UNITS: [&str; 7] = ["B", "kiB", "MiB", "GiB", "TiB", "PiB", "EiB"];

/// Formats a size for people, as alpenhorn does: `"52 B"` below 1024 bytes, else four
/// significant digits and an IEC unit: `"4.000 kiB"`, `"46.52 GiB"`, `"1023 kiB"`.
///
/// This rounds; use [`format_size_exact`] where the value must survive a round trip.
pub fn format_size(bytes: u64) -> String {
    if bytes < KIB {
        return format!("{bytes} B");
    }
    let mut unit = 0;
    let mut value = bytes as f64;
    while value >= 1024.0 && unit + 1 < SIZE_DISPLAY_UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    loop {
        let text = four_significant_digits(value);
        // 1023.6 kiB rounds to "1024"; say "1.000 MiB" instead.
        if text.parse::<u64>().is_ok_and(|n| n >= 1024) && unit + 1 < SIZE_DISPLAY_UNITS.len() {
            value /= 1024.0;
            unit += 1;
            continue;
        }
        return format!("{text} {}", SIZE_DISPLAY_UNITS[unit]);
    }
}

/// `value` (≥ 0) with four significant digits, keeping at least the integer part:
/// 4 → "4.000", 46.5197 → "46.52", 9.9996 → "10.00", 1023.4 → "1023".
fn four_significant_digits(value: f64) -> String {
    for decimals in (1..=3).rev() {
        let text = format!("{value:.decimals$}");
        let int_digits = text.find('.').unwrap_or(text.len());
        if int_digits + decimals <= 4 {
            return text;
        }
    }
    format!("{value:.0}")
}

/// Formats a size exactly and compactly, with the largest unit that divides it: `"50GiB"`,
/// `"10GB"`, `"4095B"`. [`parse_size`] reads it back to the same number.
pub fn format_size_exact(bytes: u64) -> String {
    const UNITS: [(&str, u64); 12] = [
        ("EiB", KIB.pow(6)),
        ("EB", 1000u64.pow(6)),
        ("PiB", KIB.pow(5)),
        ("PB", 1000u64.pow(5)),
        ("TiB", KIB.pow(4)),
        ("TB", 1000u64.pow(4)),
        ("GiB", KIB.pow(3)),
        ("GB", 1000u64.pow(3)),
        ("MiB", KIB.pow(2)),
        ("MB", 1000u64.pow(2)),
        ("KiB", KIB),
        ("kB", 1000),
    ];
    UNITS
        .iter()
        .find(|(_, size)| bytes != 0 && bytes.is_multiple_of(*size))
        .map_or_else(
            || format!("{bytes}B"),
            |(name, size)| format!("{}{name}", bytes / size),
        )
}

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Nanoseconds in one `unit` of duration (case-insensitive); `None` if unknown.
fn duration_unit(unit: &str) -> Option<u128> {
    let nanos = match unit.to_ascii_lowercase().as_str() {
        "ns" => 1,
        "us" => 1_000,
        "ms" => 1_000_000,
        "s" => NANOS_PER_SEC,
        "m" | "min" => 60 * NANOS_PER_SEC,
        "h" => 3600 * NANOS_PER_SEC,
        "d" => 86_400 * NANOS_PER_SEC,
        "w" => 7 * 86_400 * NANOS_PER_SEC,
        _ => return None,
    };
    Some(nanos)
}

/// Parses a duration: `"10s"`, `"7d"`, `"1h30m"`, `"500ms"`, `"2w"`, `"90 min"`, `"1.5h"`.
///
/// A duration is one or more parts, each a number and a unit: `ms`, `s`, `m`/`min`, `h`, `d`,
/// `w` (also `us`, `ns`), case-insensitive, whitespace allowed between parts. Every number needs
/// a unit: `"10"` is an error, not ten seconds.
pub fn parse_duration(s: &str) -> Result<Duration, UnitError> {
    let error = |reason: String| UnitError::Duration {
        input: s.to_owned(),
        reason,
    };
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(error("empty".to_owned()));
    }
    if rest.starts_with('-') {
        return Err(error("must not be negative".to_owned()));
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let (number, after) = take_decimal(rest).map_err(error)?;
        let after = after.trim_start();
        let unit_len = after
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        if unit.is_empty() {
            let reason = match after.chars().next() {
                None => "missing unit (e.g. 10s, 5m, 7d)".to_owned(),
                Some(c) => format!("unexpected {c:?} ({DURATION_UNITS_HELP})"),
            };
            return Err(error(reason));
        }
        let unit_nanos = duration_unit(unit)
            .ok_or_else(|| error(format!("unknown unit {unit:?} ({DURATION_UNITS_HELP})")))?;
        total = number
            .times(unit_nanos)
            .and_then(|nanos| total.checked_add(nanos))
            .ok_or_else(|| error("too large".to_owned()))?;
        rest = after.trim_start();
    }
    let secs = u64::try_from(total / NANOS_PER_SEC).map_err(|_| error("too large".to_owned()))?;
    Ok(Duration::new(secs, (total % NANOS_PER_SEC) as u32))
}

/// Formats a duration compactly so that [`parse_duration`] reads back the same value:
/// `"7d"`, `"1h30m"`, `"10s"`, `"500ms"`, `"0s"`.
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_owned();
    }
    let secs = d.as_secs();
    let nanos = d.subsec_nanos();
    let parts = [
        (secs / 86_400, "d"),
        (secs % 86_400 / 3600, "h"),
        (secs % 3600 / 60, "m"),
        (secs % 60, "s"),
        (u64::from(nanos / 1_000_000), "ms"),
        (u64::from(nanos / 1_000 % 1_000), "us"),
        (u64::from(nanos % 1_000), "ns"),
    ];
    parts
        .iter()
        .filter(|(n, _)| *n != 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect()
}

/// The current time in unix seconds (negative if the clock is before 1970).
pub fn now() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

/// A UTC calendar time split from a unix timestamp.
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    weekday: u32,
    hour: u32,
    minute: u32,
    second: u32,
}

impl Civil {
    fn from_unix(ts: i64) -> Self {
        let days = ts.div_euclid(86_400);
        let secs = ts.rem_euclid(86_400) as u32;
        let (year, month, day) = civil_from_days(days);
        Civil {
            year,
            month,
            day,
            // 1970-01-01 was a Thursday (4, counting Sunday as 0).
            weekday: (days + 4).rem_euclid(7) as u32,
            hour: secs / 3600,
            minute: secs % 3600 / 60,
            second: secs % 60,
        }
    }
}

/// Year, month (1–12) and day (1–31) of `days` since 1970-01-01 in the proleptic Gregorian
/// calendar. Howard Hinnant's `civil_from_days`, which counts in 400-year eras starting on
/// 1 March so that the leap day falls at the end of each year.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097); // [0, 146096]
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153; // [0, 11], 0 = March
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = (if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    }) as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

const WEEKDAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Formats a unix timestamp as alpenhorn does: `"Fri Feb 21 23:07:08 2025 UTC"` (the day of the
/// month is not padded: `"Wed May 7 21:00:55 2025 UTC"`).
pub fn format_time(ts: i64) -> String {
    let t = Civil::from_unix(ts);
    format!(
        "{} {} {} {:02}:{:02}:{:02} {} UTC",
        WEEKDAYS[t.weekday as usize],
        MONTHS[t.month as usize - 1],
        t.day,
        t.hour,
        t.minute,
        t.second,
        t.year
    )
}

/// Formats a unix timestamp for tables: `"2025-02-26 22:54:14"` (UTC).
pub fn format_time_short(ts: i64) -> String {
    let t = Civil::from_unix(ts);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

/// A size in bytes for config files: written `"50GiB"` (see [`parse_size`]) or as a
/// non-negative integer number of bytes. Displays as [`format_size`]; serializes exactly
/// ([`format_size_exact`]) so that a written-out config reads back unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_size(self.0))
    }
}

impl std::str::FromStr for ByteSize {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<Self, UnitError> {
        parse_size(s).map(ByteSize)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format_size_exact(self.0))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ByteSizeVisitor;

        impl Visitor<'_> for ByteSizeVisitor {
            type Value = ByteSize;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"50GiB\" or a number of bytes")
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<ByteSize, E> {
                parse_size(s).map(ByteSize).map_err(E::custom)
            }

            fn visit_u64<E: de::Error>(self, n: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(n))
            }

            fn visit_i64<E: de::Error>(self, n: i64) -> Result<ByteSize, E> {
                u64::try_from(n).map(ByteSize).map_err(|_| {
                    E::custom(UnitError::Size {
                        input: n.to_string(),
                        reason: "must not be negative".to_owned(),
                    })
                })
            }
        }

        deserializer.deserialize_any(ByteSizeVisitor)
    }
}

/// A duration for config files, written `"10s"`, `"7d"`, `"1h30m"` (see [`parse_duration`]).
/// Displays and serializes as [`format_duration`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration(pub Duration);

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

impl std::str::FromStr for HumanDuration {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<Self, UnitError> {
        parse_duration(s).map(HumanDuration)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct HumanDurationVisitor;

        impl Visitor<'_> for HumanDurationVisitor {
            type Value = HumanDuration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"10s\", \"5m\" or \"7d\"")
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<HumanDuration, E> {
                parse_duration(s).map(HumanDuration).map_err(E::custom)
            }

            // A bare number gets the same "missing unit" message as the string "10" would.
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<HumanDuration, E> {
                self.visit_str(&n.to_string())
            }

            fn visit_i64<E: de::Error>(self, n: i64) -> Result<HumanDuration, E> {
                self.visit_str(&n.to_string())
            }

            fn visit_f64<E: de::Error>(self, n: f64) -> Result<HumanDuration, E> {
                self.visit_str(&n.to_string())
            }
        }

        deserializer.deserialize_any(HumanDurationVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use test_case::test_case;

    const GIB: u64 = 1 << 30;

    #[test_case("50GiB", 50 * GIB)]
    #[test_case("10 GB", 10_000_000_000)]
    #[test_case("1.5TiB", 3 << 39)]
    #[test_case("4096", 4096)]
    #[test_case("4096B", 4096)]
    #[test_case("512 kB", 512_000)]
    #[test_case("512KB", 512_000)]
    #[test_case("2k", 2000)]
    #[test_case("3M", 3_000_000)]
    #[test_case("1g", 1_000_000_000)]
    #[test_case("1T", 1_000_000_000_000)]
    #[test_case("1P", 1_000_000_000_000_000)]
    #[test_case("1kib", 1024)]
    #[test_case("4.000 kiB", 4096)]
    #[test_case("1MiB", 1 << 20)]
    #[test_case("1PiB", 1 << 50)]
    #[test_case("0.5B", 0; "fraction of a byte rounds down")]
    #[test_case("1.9999B", 1; "rounds down")]
    #[test_case("0.1KiB", 102; "102.4 rounds down")]
    #[test_case(".5KiB", 512)]
    #[test_case("5.GB", 5_000_000_000)]
    #[test_case("  7 MB  ", 7_000_000; "surrounding whitespace")]
    #[test_case("0", 0)]
    #[test_case("18446744073709551615", u64::MAX)]
    fn parse_size_accepts(input: &str, expected: u64) {
        assert_eq!(parse_size(input), Ok(expected));
    }

    #[test_case("12XB", r#"invalid size "12XB": unknown unit "XB" (use B, kB, MB, GB, TB, PB, KiB, MiB, GiB, TiB, PiB)"#)]
    #[test_case("", r#"invalid size "": empty"#)]
    #[test_case("   ", r#"invalid size "   ": empty"#)]
    #[test_case("-5GiB", r#"invalid size "-5GiB": must not be negative"#)]
    #[test_case("GiB", r#"invalid size "GiB": expected a number"#)]
    #[test_case("1.2.3GB", r#"invalid size "1.2.3GB": malformed number "1.2.3""#)]
    #[test_case(".GB", r#"invalid size ".GB": malformed number ".""#)]
    #[test_case("16EiB", r#"invalid size "16EiB": too large (at most 18446744073709551615 bytes)"#; "one past u64 max")]
    #[test_case(
        "17EiB",
        r#"invalid size "17EiB": too large (at most 18446744073709551615 bytes)"#
    )]
    #[test_case(
        "18446744073709551616",
        r#"invalid size "18446744073709551616": too large (at most 18446744073709551615 bytes)"#
    )]
    #[test_case("99999999999999999999999999999999999999999", r#"invalid size "99999999999999999999999999999999999999999": number "99999999999999999999999999999999999999999" is too large"#)]
    #[test_case("5 G B", r#"invalid size "5 G B": unknown unit "G B" (use B, kB, MB, GB, TB, PB, KiB, MiB, GiB, TiB, PiB)"#)]
    #[test_case("0.0000000000000000001B", r#"invalid size "0.0000000000000000001B": too many decimal places in "0.0000000000000000001" (at most 18)"#)]
    fn parse_size_rejects(input: &str, message: &str) {
        assert_eq!(parse_size(input).unwrap_err().to_string(), message);
    }

    #[test_case(0, "0 B")]
    #[test_case(52, "52 B")]
    #[test_case(1023, "1023 B")]
    #[test_case(1024, "1.000 kiB")]
    #[test_case(4096, "4.000 kiB")]
    #[test_case(10 * 1024, "10.00 kiB")]
    #[test_case(1023 * 1024, "1023 kiB")]
    #[test_case(1024 * 1024 - 1, "1.000 MiB"; "rounding up to 1024 kiB moves to MiB")]
    #[test_case(10 * 1024 * 1024 - 1, "10.00 MiB"; "rounding up to 10 keeps four digits")]
    #[test_case(50 * GIB, "50.00 GiB")]
    #[test_case(49_950_000_000, "46.52 GiB")]
    #[test_case(3 << 39, "1.500 TiB")]
    #[test_case(1 << 50, "1.000 PiB")]
    #[test_case(u64::MAX, "16.00 EiB")]
    fn format_size_examples(bytes: u64, expected: &str) {
        assert_eq!(format_size(bytes), expected);
    }

    #[test_case(0, "0B")]
    #[test_case(4095, "4095B")]
    #[test_case(4096, "4KiB")]
    #[test_case(50 * GIB, "50GiB")]
    #[test_case(10_000_000_000, "10GB")]
    #[test_case(49_950_000_000, "49950MB")]
    #[test_case(u64::MAX, "18446744073709551615B")]
    fn format_size_exact_examples(bytes: u64, expected: &str) {
        assert_eq!(format_size_exact(bytes), expected);
    }

    #[test_case("10s", Duration::from_secs(10))]
    #[test_case("7d", Duration::from_secs(7 * 86_400))]
    #[test_case("1h30m", Duration::from_secs(5400))]
    #[test_case("1h 30m", Duration::from_secs(5400))]
    #[test_case("500ms", Duration::from_millis(500))]
    #[test_case("2w", Duration::from_secs(14 * 86_400))]
    #[test_case("90 min", Duration::from_secs(5400))]
    #[test_case("1.5h", Duration::from_secs(5400))]
    #[test_case("0.001ms", Duration::from_micros(1))]
    #[test_case("1m1s1ms1us1ns", Duration::new(61, 1_001_001))]
    #[test_case("10S", Duration::from_secs(10); "case-insensitive")]
    #[test_case(" 5 m ", Duration::from_secs(300))]
    #[test_case("0s", Duration::ZERO)]
    fn parse_duration_accepts(input: &str, expected: Duration) {
        assert_eq!(parse_duration(input), Ok(expected));
    }

    #[test_case("10", r#"invalid duration "10": missing unit (e.g. 10s, 5m, 7d)"#)]
    #[test_case("1h30", r#"invalid duration "1h30": missing unit (e.g. 10s, 5m, 7d)"#)]
    #[test_case("", r#"invalid duration "": empty"#)]
    #[test_case("-5s", r#"invalid duration "-5s": must not be negative"#)]
    #[test_case(
        "5x",
        r#"invalid duration "5x": unknown unit "x" (use ns, us, ms, s, m, h, d, w)"#
    )]
    #[test_case(
        "5 years",
        r#"invalid duration "5 years": unknown unit "years" (use ns, us, ms, s, m, h, d, w)"#
    )]
    #[test_case("h", r#"invalid duration "h": expected a number"#)]
    #[test_case("5s,", r#"invalid duration "5s,": unexpected ','"#)]
    #[test_case(
        "5,s",
        r#"invalid duration "5,s": unexpected ',' (use ns, us, ms, s, m, h, d, w)"#
    )]
    #[test_case(
        "99999999999999999999999w",
        r#"invalid duration "99999999999999999999999w": too large"#
    )]
    fn parse_duration_rejects(input: &str, message: &str) {
        assert_eq!(parse_duration(input).unwrap_err().to_string(), message);
    }

    #[test_case(Duration::ZERO, "0s")]
    #[test_case(Duration::from_secs(7 * 86_400), "7d")]
    #[test_case(Duration::from_secs(5400), "1h30m")]
    #[test_case(Duration::from_secs(10), "10s")]
    #[test_case(Duration::from_millis(500), "500ms")]
    #[test_case(Duration::from_millis(1500), "1s500ms")]
    #[test_case(Duration::new(86_400 + 1, 1), "1d1s1ns")]
    fn format_duration_examples(d: Duration, expected: &str) {
        assert_eq!(format_duration(d), expected);
    }

    // Expected values from `date -u -d @N`.
    #[test_case(0, "Thu Jan 1 00:00:00 1970 UTC", "1970-01-01 00:00:00")]
    #[test_case(1_740_179_228, "Fri Feb 21 23:07:08 2025 UTC", "2025-02-21 23:07:08")]
    #[test_case(1_746_651_655, "Wed May 7 21:00:55 2025 UTC", "2025-05-07 21:00:55")]
    #[test_case(1_740_610_454, "Wed Feb 26 22:54:14 2025 UTC", "2025-02-26 22:54:14")]
    #[test_case(951_782_400, "Tue Feb 29 00:00:00 2000 UTC", "2000-02-29 00:00:00")]
    #[test_case(4_107_542_399, "Sun Feb 28 23:59:59 2100 UTC", "2100-02-28 23:59:59")]
    #[test_case(4_107_542_400, "Mon Mar 1 00:00:00 2100 UTC", "2100-03-01 00:00:00")]
    #[test_case(-1, "Wed Dec 31 23:59:59 1969 UTC", "1969-12-31 23:59:59")]
    #[test_case(-14_182_940, "Sun Jul 20 20:17:40 1969 UTC", "1969-07-20 20:17:40")]
    fn format_time_examples(ts: i64, long: &str, short: &str) {
        assert_eq!(format_time(ts), long);
        assert_eq!(format_time_short(ts), short);
    }

    #[test]
    fn format_time_extremes_do_not_panic() {
        for ts in [i64::MIN, i64::MIN + 1, i64::MAX] {
            assert!(format_time(ts).ends_with(" UTC"));
            format_time_short(ts);
        }
    }

    #[test]
    fn now_is_after_2025() {
        assert!(now() > 1_735_689_600);
    }

    #[derive(Debug, Deserialize, Serialize, PartialEq)]
    struct Units {
        size: ByteSize,
        interval: HumanDuration,
    }

    #[test]
    fn newtypes_deserialize_from_strings_and_integers() {
        let parsed: Units = toml::from_str("size = \"50GiB\"\ninterval = \"1h30m\"").unwrap();
        assert_eq!(
            parsed,
            Units {
                size: ByteSize(50 * GIB),
                interval: HumanDuration(Duration::from_secs(5400))
            }
        );
        let parsed: Units = toml::from_str("size = 4096\ninterval = \"10s\"").unwrap();
        assert_eq!(parsed.size, ByteSize(4096));
        assert_eq!(parsed.size.to_string(), "4.000 kiB");
        assert_eq!(parsed.interval.to_string(), "10s");
    }

    #[test_case(
        "size = \"12XB\"\ninterval = \"1s\"",
        r#"invalid size "12XB": unknown unit "XB""#
    )]
    #[test_case(
        "size = -1\ninterval = \"1s\"",
        r#"invalid size "-1": must not be negative"#
    )]
    #[test_case(
        "size = 1\ninterval = \"5x\"",
        r#"invalid duration "5x": unknown unit "x""#
    )]
    #[test_case("size = 1\ninterval = 10", r#"invalid duration "10": missing unit"#)]
    #[test_case("size = 1\ninterval = true", "a duration such as")]
    fn newtype_errors_carry_the_parse_error(toml_text: &str, expected: &str) {
        let error = toml::from_str::<Units>(toml_text).unwrap_err().to_string();
        assert!(
            error.contains(expected),
            "{error:?} should contain {expected:?}"
        );
    }

    #[test]
    fn newtypes_serialize_exactly() {
        let units = Units {
            size: ByteSize(49_950_000_000),
            interval: HumanDuration(Duration::new(1, 5)),
        };
        let table = toml::Table::try_from(&units).unwrap();
        assert_eq!(table["size"].as_str(), Some("49950MB"));
        assert_eq!(table["interval"].as_str(), Some("1s5ns"));
        assert_eq!(table.try_into::<Units>().unwrap(), units);
    }

    proptest! {
        #[test]
        fn size_exact_round_trips(bytes in any::<u64>()) {
            prop_assert_eq!(parse_size(&format_size_exact(bytes)), Ok(bytes));
        }

        /// The display form is rounded to four significant digits; reading it back lands within
        /// that rounding.
        #[test]
        fn size_display_parses_back_close(bytes in any::<u64>()) {
            let text = format_size(bytes);
            let back = parse_size(&text);
            if bytes < 1024 {
                prop_assert_eq!(back, Ok(bytes));
            } else if let Ok(back) = back {
                let error = (back as f64 - bytes as f64).abs() / bytes as f64;
                prop_assert!(error < 1e-3, "{} -> {:?} -> {}", bytes, text, back);
            } else {
                // Only "16.00 EiB" (2^64, just past u64::MAX) cannot be read back.
                prop_assert_eq!(text, "16.00 EiB");
            }
        }

        #[test]
        fn duration_round_trips(secs in any::<u64>(), nanos in 0u32..1_000_000_000) {
            let d = Duration::new(secs, nanos);
            prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }

        #[test]
        fn duration_round_trips_whole_seconds(secs in 0u64..10_000_000) {
            let d = Duration::from_secs(secs);
            prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }

        #[test]
        fn parsers_never_panic(s in "\\PC{0,24}") {
            let _ = parse_size(&s);
            let _ = parse_duration(&s);
        }

        #[test]
        fn short_and_long_times_agree(ts in 0i64..300_000_000_000) {
            let long = format_time(ts);
            let fields: Vec<&str> = long.split(' ').collect();
            let [_, month, day, time, year, "UTC"] = fields[..] else {
                panic!("unexpected shape {long:?}");
            };
            let month = MONTHS.iter().position(|m| *m == month).unwrap() + 1;
            let day: u32 = day.parse().unwrap();
            let short = format!("{year:0>4}-{month:02}-{day:02} {time}");
            prop_assert_eq!(short, format_time_short(ts));
        }

        /// Checks `civil_from_days` against its inverse (Hinnant's `days_from_civil`) and the
        /// weekday against the day before.
        #[test]
        fn civil_from_days_inverts(days in -1_000_000_000i64..1_000_000_000) {
            let (year, month, day) = civil_from_days(days);
            prop_assert!((1..=12).contains(&month) && (1..=31).contains(&day));
            let y = if month <= 2 { year - 1 } else { year };
            let era = y.div_euclid(400);
            let year_of_era = y.rem_euclid(400);
            let m = i64::from(month);
            let day_of_year = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
            let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
            prop_assert_eq!(era * 146_097 + day_of_era - 719_468, days);
            let today = Civil::from_unix(days * 86_400).weekday;
            let yesterday = Civil::from_unix((days - 1) * 86_400).weekday;
            prop_assert_eq!(today, (yesterday + 1) % 7);
        }
    }
}
