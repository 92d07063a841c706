//! Instants and local days.
//!
//! An instant is kept as microseconds since the Unix epoch (the Avro
//! `timestamp-micros` logical type); the offset a producer wrote in its RFC 3339
//! text is presentation only and is not kept. Days and hours are those of the
//! city, Asia/Shanghai, which has been UTC+8 without daylight saving since 1991.
//!
//! SPEC §3.1: an instant outside years 0001–9999 is a malformed field. The
//! years are those of the city's calendar (UTC+8), because that is how every
//! instant is spelled downstream: a view's day (`YYYY-MM-DD`, written to the
//! view store and parsed back), its hour, and the RFC 3339 text of the JSON
//! form (in `+08:00`). Within [`Timestamp::MIN`]..=[`Timestamp::MAX`] all
//! three have a four-digit year and read back; outside it, the day of
//! year 10000 would be written as `10000-01-01`, which no reader parses.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::format_description::well_known::Rfc3339;

/// The city's offset from UTC, in seconds.
pub const LOCAL_OFFSET_SECS: i64 = 8 * 3600;

const MICROS_PER_SEC: i64 = 1_000_000;
const SECS_PER_DAY: i64 = 86_400;

/// An instant, in microseconds since 1970-01-01T00:00:00Z.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The first instant SPEC can name: 0001-01-01T00:00:00+08:00.
    pub const MIN: Timestamp = Timestamp(-62_135_625_600 * MICROS_PER_SEC);
    /// The last instant SPEC can name: 9999-12-31T23:59:59.999999+08:00.
    pub const MAX: Timestamp = Timestamp(253_402_272_000 * MICROS_PER_SEC - 1);

    /// What is wrong with an instant outside [`Self::MIN`]..=[`Self::MAX`], as a
    /// phrase following a field name.
    pub const OUT_OF_RANGE: &'static str = "must be an instant in years 0001–9999 of the city's \
        calendar (0001-01-01T00:00:00+08:00 to 9999-12-31T23:59:59.999999+08:00)";

    /// Whether SPEC can name this instant (SPEC §3.1: years 0001–9999): only
    /// such instants may reach a view, so their day and hour read back.
    pub fn is_in_range(self) -> bool {
        (Self::MIN..=Self::MAX).contains(&self)
    }

    /// This instant if it is in range, else [`Self::OUT_OF_RANGE`].
    pub fn check_range(self) -> Result<Self, &'static str> {
        if self.is_in_range() { Ok(self) } else { Err(Self::OUT_OF_RANGE) }
    }

    /// From milliseconds since the epoch (Kafka record timestamps); saturating,
    /// so an absurd value stays out of range instead of wrapping into it.
    pub fn from_millis(ms: i64) -> Self {
        Timestamp(ms.saturating_mul(1000))
    }

    /// From whole seconds since the epoch.
    pub fn from_secs(s: i64) -> Self {
        Timestamp(s.saturating_mul(MICROS_PER_SEC))
    }

    /// Microseconds since the epoch.
    pub const fn micros(self) -> i64 {
        self.0
    }

    /// Milliseconds since the epoch, rounded towards minus infinity.
    pub fn millis(self) -> i64 {
        self.0.div_euclid(1000)
    }

    /// This instant shifted by a number of seconds.
    pub fn plus_secs(self, secs: i64) -> Self {
        Timestamp(self.0.saturating_add(secs.saturating_mul(MICROS_PER_SEC)))
    }

    /// The local (UTC+8) day this instant falls on.
    pub fn local_day(self) -> Day {
        let local_secs = self.0.div_euclid(MICROS_PER_SEC) + LOCAL_OFFSET_SECS;
        Day(local_secs.div_euclid(SECS_PER_DAY) as i32)
    }

    /// The local (UTC+8) hour of the day, 0–23.
    pub fn local_hour(self) -> u8 {
        let local_secs = self.0.div_euclid(MICROS_PER_SEC) + LOCAL_OFFSET_SECS;
        (local_secs.rem_euclid(SECS_PER_DAY) / 3600) as u8
    }

    /// Parses RFC 3339 text with an offset, e.g. `2022-04-09T08:15:00+08:00`.
    /// Digits past the microsecond are dropped. An instant outside
    /// [`Self::MIN`]..=[`Self::MAX`] is refused, although its text may say
    /// year 0000 or 9999 in another offset (`9999-12-31T20:00:00Z` is
    /// 10000-01-01 in the city).
    pub fn parse_rfc3339(s: &str) -> Result<Self, &'static str> {
        let dt = time::OffsetDateTime::parse(s, &Rfc3339).map_err(
            |_| "must be an RFC 3339 timestamp with an offset, e.g. 2022-04-09T08:15:00+08:00",
        )?;
        let nanos = dt.unix_timestamp_nanos();
        let micros = nanos.div_euclid(1000);
        i64::try_from(micros).map(Timestamp).map_err(|_| Self::OUT_OF_RANGE)?.check_range()
    }

    /// RFC 3339 text in the city's offset, e.g. `2022-04-09T08:15:00+08:00`;
    /// fractional seconds appear only when there are any.
    pub fn to_rfc3339(self) -> String {
        let local_secs = self.0.div_euclid(MICROS_PER_SEC) + LOCAL_OFFSET_SECS;
        let micros = self.0.rem_euclid(MICROS_PER_SEC);
        let day = Day(local_secs.div_euclid(SECS_PER_DAY) as i32);
        let sod = local_secs.rem_euclid(SECS_PER_DAY);
        let (y, m, d) = day.civil();
        let (hh, mm, ss) = (sod / 3600, sod / 60 % 60, sod % 60);
        if micros == 0 {
            format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}+08:00")
        } else {
            format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{micros:06}+08:00")
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

/// A local (UTC+8) calendar day, as days since 1970-01-01. Shown as `YYYY-MM-DD`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day(pub i32);

impl Day {
    /// The day from its calendar date; `None` for an impossible date.
    pub fn from_civil(y: i32, m: u32, d: u32) -> Option<Self> {
        if !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
            return None;
        }
        // Howard Hinnant's days_from_civil.
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy as i32;
        Some(Day(era * 146_097 + doe - 719_468))
    }

    /// The calendar date (year, month, day).
    pub fn civil(self) -> (i32, u32, u32) {
        // Howard Hinnant's civil_from_days.
        let z = self.0 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let y = yoe + era * 400;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        (if m <= 2 { y + 1 } else { y }, m, d)
    }

    /// The local midnight that starts this day.
    pub fn start(self) -> Timestamp {
        Timestamp::from_secs(i64::from(self.0) * SECS_PER_DAY - LOCAL_OFFSET_SECS)
    }

    /// Parses `YYYY-MM-DD`.
    pub fn parse(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
            return None;
        }
        let y: i32 = s[0..4].parse().ok()?;
        let m: u32 = s[5..7].parse().ok()?;
        let d: u32 = s[8..10].parse().ok()?;
        Day::from_civil(y, m, d)
    }
}

fn days_in_month(y: i32, m: u32) -> u32 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, m, d) = self.civil();
        write!(f, "{y:04}-{m:02}-{d:02}")
    }
}

impl Serialize for Day {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Day {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Day::parse(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("`{s}` is not a YYYY-MM-DD date")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_day_and_hour_follow_utc_plus_8() {
        let t = Timestamp::parse_rfc3339("2022-04-09T23:59:59+08:00").unwrap();
        assert_eq!(t.local_day().to_string(), "2022-04-09");
        assert_eq!(t.local_hour(), 23);
        let t = t.plus_secs(1);
        assert_eq!(t.local_day().to_string(), "2022-04-10");
        assert_eq!(t.local_hour(), 0);
        // The same instant written in UTC lands on the same local day.
        let u = Timestamp::parse_rfc3339("2022-04-09T16:00:00Z").unwrap();
        assert_eq!(u, t);
    }

    #[test]
    fn rfc3339_round_trips_in_local_offset() {
        for s in [
            "2022-04-09T08:15:00+08:00",
            "1969-12-31T23:59:59.250000+08:00",
            "2099-01-01T00:00:00+08:00",
        ] {
            let t = Timestamp::parse_rfc3339(s).unwrap();
            assert_eq!(t.to_rfc3339(), s);
        }
        assert!(Timestamp::parse_rfc3339("2022-04-09 08:15:00").is_err());
        assert!(Timestamp::parse_rfc3339("2022-04-09T08:15:00").is_err());
    }

    #[test]
    fn the_range_is_years_0001_to_9999_in_the_city() {
        assert_eq!(Timestamp::MIN.to_rfc3339(), "0001-01-01T00:00:00+08:00");
        assert_eq!(Timestamp::MAX.to_rfc3339(), "9999-12-31T23:59:59.999999+08:00");
        assert_eq!(Timestamp::MIN.local_day(), Day::from_civil(1, 1, 1).unwrap());
        assert_eq!(Timestamp::MAX.local_day(), Day::from_civil(9999, 12, 31).unwrap());
        assert_eq!(Timestamp::MIN, Day::from_civil(1, 1, 1).unwrap().start());
        assert_eq!(Timestamp(Timestamp::MAX.0 + 1), Day::from_civil(10_000, 1, 1).unwrap().start());
        for t in [Timestamp::MIN, Timestamp::MAX] {
            assert!(t.is_in_range());
            assert_eq!(Timestamp::parse_rfc3339(&t.to_rfc3339()), Ok(t));
            assert_eq!(Day::parse(&t.local_day().to_string()), Some(t.local_day()));
        }
        // The instant of the report: year 10000 in UTC, and so in the city.
        for t in [
            253_402_300_800_000_000,
            Timestamp::MAX.0 + 1,
            Timestamp::MIN.0 - 1,
            i64::MIN,
            i64::MAX,
        ] {
            assert!(!Timestamp(t).is_in_range(), "{t}");
            assert_eq!(Timestamp(t).check_range(), Err(Timestamp::OUT_OF_RANGE));
        }
        // Text the parser reads but the city's calendar cannot name.
        for s in ["9999-12-31T16:00:00Z", "0000-12-31T15:59:59.999999Z", "0000-01-01T00:00:00Z"] {
            assert_eq!(Timestamp::parse_rfc3339(s), Err(Timestamp::OUT_OF_RANGE), "{s}");
        }
        // A text saying year 0000 or 9999 in another offset, that the city can name.
        assert_eq!(Timestamp::parse_rfc3339("0000-12-31T16:00:00Z"), Ok(Timestamp::MIN));
        assert_eq!(Timestamp::parse_rfc3339("9999-12-31T15:59:59.999999Z"), Ok(Timestamp::MAX));
    }

    #[test]
    fn civil_dates_round_trip() {
        for day in (-800_000..800_000).step_by(997) {
            let d = Day(day);
            let (y, m, dd) = d.civil();
            assert_eq!(Day::from_civil(y, m, dd), Some(d));
        }
        assert_eq!(Day::parse("2022-04-09").unwrap().to_string(), "2022-04-09");
        assert_eq!(Day::parse("2022-02-30"), None);
        assert_eq!(Day::parse("1970-01-01"), Some(Day(0)));
        assert_eq!(Day(0).start(), Timestamp::from_secs(-8 * 3600));
    }
}
