//! A cron schedule (`minute hour day-of-month month day-of-week`, UTC), as backup jobs take it:
//! each field `*`, a number, a range `a-b`, a step `*/n` or `a-b/n`, or a list of those
//! separated by commas; day of week 0-7 (0 and 7 are Sunday). As in cron, when both days are
//! restricted a time matches either.

use crate::ValidationError;

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    days_any: bool,
    weekdays_any: bool,
}

fn field(text: &str, name: &str, lo: u32, hi: u32) -> Result<(u64, bool), ValidationError> {
    let bad = |why: &str| ValidationError::new("schedule", format!("{name} {text:?}: {why}"));
    let mut bits = 0u64;
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => (r, s.parse::<u32>().map_err(|_| bad("the step after / must be a number"))?),
            None => (item, 1),
        };
        if step == 0 {
            return Err(bad("a step of 0"));
        }
        let (a, b) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            let a = a.parse::<u32>().map_err(|_| bad("not a number"))?;
            let b = b.parse::<u32>().map_err(|_| bad("not a number"))?;
            (a, b)
        } else {
            let a = range.parse::<u32>().map_err(|_| bad("not a number"))?;
            (a, if item.contains('/') { hi } else { a })
        };
        if a < lo || b > hi || a > b {
            return Err(bad(&format!("must be within {lo}-{hi}")));
        }
        let mut v = a;
        while v <= b {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok((bits, text == "*"))
}

impl Schedule {
    pub fn parse(text: &str) -> Result<Schedule, ValidationError> {
        let f: Vec<&str> = text.split_whitespace().collect();
        if f.len() != 5 {
            return Err(ValidationError::new(
                "schedule",
                format!("{text:?}: five fields (minute hour day-of-month month day-of-week), e.g. \"*/15 * * * *\""),
            ));
        }
        let (minutes, _) = field(f[0], "minute", 0, 59)?;
        let (hours, _) = field(f[1], "hour", 0, 23)?;
        let (days, days_any) = field(f[2], "day of month", 1, 31)?;
        let (months, _) = field(f[3], "month", 1, 12)?;
        let (mut weekdays, weekdays_any) = field(f[4], "day of week", 0, 7)?;
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1;
        }
        Ok(Schedule {
            minutes,
            hours: hours as u32,
            days: days as u32,
            months: months as u16,
            weekdays: (weekdays & 0x7f) as u8,
            days_any,
            weekdays_any,
        })
    }

    fn day_matches(&self, day: i64) -> bool {
        let (_, m, d) = civil(day);
        if self.months & (1 << m) == 0 {
            return false;
        }
        let wd = (day + 4).rem_euclid(7) as u32; // 1970-01-01 was a Thursday (4).
        let dom = self.days & (1 << d) != 0;
        let dow = self.weekdays & (1 << wd) != 0;
        match (self.days_any, self.weekdays_any) {
            (true, true) => true,
            (true, false) => dow,
            (false, true) => dom,
            (false, false) => dom || dow,
        }
    }

    /// The first time the schedule names strictly after `after_ms` (ms since the epoch), to
    /// the minute; `None` when none comes within five years (e.g. 31 February).
    pub fn next_after(&self, after_ms: u64) -> Option<u64> {
        let start_min = after_ms / 60_000 + 1;
        let first = (start_min / 1440) as i64;
        for day in first..first + 366 * 5 {
            if !self.day_matches(day) {
                continue;
            }
            let from = if day == first { (start_min % 1440) as u32 } else { 0 };
            for m in from..1440 {
                let (h, mi) = (m / 60, m % 60);
                if self.hours & (1 << h) != 0 && self.minutes & (1 << mi) != 0 {
                    return Some((day as u64 * 1440 + u64::from(m)) * 60_000);
                }
            }
        }
        None
    }
}

/// Days since 1970-01-01 to (year, month, day).
fn civil(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-12-07 06:50:12 UTC, a Monday.
    const NOW: u64 = 1_796_626_212_000;
    const MIN: u64 = 60_000;

    fn next(s: &str) -> u64 {
        Schedule::parse(s).unwrap().next_after(NOW).unwrap()
    }

    #[test]
    fn next_times_are_cron_s() {
        let at_0650 = NOW - 12_000;
        assert_eq!(next("* * * * *"), at_0650 + MIN);
        assert_eq!(next("*/15 * * * *"), at_0650 + 10 * MIN);
        assert_eq!(next("0 3 * * *"), at_0650 + (20 * 60 + 10) * MIN);
        assert_eq!(next("30 6 * * 1-5"), at_0650 + (24 * 60 - 20) * MIN, "Tuesday 06:30");
        assert_eq!(next("0 0 * * 0"), at_0650 + (6 * 24 * 60 - 6 * 60 - 50) * MIN, "Sunday midnight");
        assert_eq!(next("0 0 * * 7"), next("0 0 * * 0"));
        assert_eq!(next("0 0 1 1 *"), 1_798_761_600_000, "2027-01-01");
        // Either day matches when both are restricted: the 8th (Tuesday) comes before a Sunday.
        assert_eq!(next("0 0 8 * 0"), at_0650 + (17 * 60 + 10) * MIN);
        assert_eq!(Schedule::parse("0 0 31 2 *").unwrap().next_after(NOW), None);
        assert_eq!(next("5,10 8-9/1 * * *"), at_0650 + (70 + 5) * MIN);
    }

    #[test]
    fn bad_schedules_say_which_field_and_why() {
        for (s, want) in [
            ("* * * *", "five fields"),
            ("60 * * * *", "minute"),
            ("* 24 * * *", "hour"),
            ("* * 0 * *", "day of month"),
            ("* * * 13 *", "month"),
            ("* * * * 8", "day of week"),
            ("*/0 * * * *", "step of 0"),
            ("a * * * *", "not a number"),
            ("5-1 * * * *", "within"),
        ] {
            let e = Schedule::parse(s).unwrap_err();
            assert_eq!(e.field, "schedule");
            assert!(e.rule.contains(want), "{s}: {}", e.rule);
        }
    }
}
