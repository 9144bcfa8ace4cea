//! Schedule windows and freezes: when a rollout may raise the canary's traffic. Pure: the time is
//! always passed in.
//!
//! A window opens at each fire time of a standard 5-field crontab expression, read in the window's
//! IANA time zone, and stays open for `duration`. Several windows are OR-ed; a freeze overrides them.
//! Daylight saving: a fire time in a spring-forward gap (02:30 on a day 02:00-03:00 does not exist)
//! fires as late as the gap is long (03:30 local time, the RFC 5545 / Temporal rule); a fire time in a
//! fall-back hour fires once, at its first occurrence. Windows last `duration` of real time.

use std::time::Duration;

use jiff::civil::{Date, DateTime, Time};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, Zoned};

use crate::resources::FieldError;
use crate::resources::schedule::{Schedule, Window};

/// Why the schedule is closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    Window,
    Freeze { until: Timestamp, reason: Option<String> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WindowState {
    Open,
    /// `next_open` is in the time zone of the window that opens then (UTC when a freeze ends inside a
    /// window-less schedule).
    Closed {
        next_open: Option<Zoned>,
        why: Why,
    },
}

/// The longest window.
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 86_400);
/// How far ahead an opening is looked for: every valid expression fires within it (Feb 29 included).
const HORIZON_DAYS: i32 = 8 * 366 + 2;

/// A parsed 5-field crontab expression: one bit per allowed value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    /// Vixie cron: when both day fields are restricted a day matches either; otherwise both.
    days_any: bool,
    weekdays_any: bool,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

impl Cron {
    pub fn parse(expr: &str) -> Result<Cron, String> {
        let expr = expr.trim();
        let expanded = match expr.to_ascii_lowercase().as_str() {
            "@hourly" => "0 * * * *",
            "@daily" | "@midnight" => "0 0 * * *",
            "@weekly" => "0 0 * * 0",
            "@monthly" => "0 0 1 * *",
            "@yearly" | "@annually" => "0 0 1 1 *",
            s if s.starts_with('@') => return Err(format!("unknown macro {expr:?}")),
            _ => expr,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let [minute, hour, day, month, weekday] = fields[..] else {
            return Err(format!(
                "{expr:?} has {} fields; want 5 (minute hour day-of-month month day-of-week)",
                fields.len()
            ));
        };
        let weekdays = field(weekday, "day-of-week", 0, 7, &WEEKDAYS)?;
        // 7 is Sunday too.
        let weekdays = (weekdays & 0x7f) | u64::from(weekdays & 0x80 != 0);
        let cron = Cron {
            minutes: field(minute, "minute", 0, 59, &[])?,
            hours: field(hour, "hour", 0, 23, &[])? as u32,
            days: field(day, "day-of-month", 1, 31, &[])? as u32,
            months: field(month, "month", 1, 12, &MONTHS)? as u16,
            weekdays: weekdays as u8,
            days_any: day.starts_with('*'),
            weekdays_any: weekday.starts_with('*'),
        };
        if !cron.can_fire() {
            return Err(format!("{expr:?} names no day that exists"));
        }
        Ok(cron)
    }

    /// Some month in the set has one of the days in the set (Feb 29 counts).
    fn can_fire(&self) -> bool {
        if !self.days_any && !self.weekdays_any {
            return true; // either day field matches
        }
        const LONGEST: [u32; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
        (1..=12).any(|m| self.months & (1 << m) != 0 && (1..=LONGEST[m - 1]).any(|d| self.days & (1 << d) != 0))
    }

    fn matches_day(&self, date: Date) -> bool {
        if self.months & (1 << date.month()) == 0 {
            return false;
        }
        let day = self.days & (1 << date.day()) != 0;
        let weekday = self.weekdays & (1 << date.weekday().to_sunday_zero_offset()) != 0;
        if self.days_any || self.weekdays_any {
            day && weekday
        } else {
            day || weekday
        }
    }

    /// The instants this expression fires on one local date, unsorted (see the module doc for DST).
    fn fires_on(&self, date: Date, tz: &TimeZone, out: &mut Vec<Timestamp>) {
        if !self.matches_day(date) {
            return;
        }
        for hour in (0i8..24).filter(|h| self.hours & (1u32 << h) != 0) {
            for minute in (0i8..60).filter(|m| self.minutes & (1u64 << m) != 0) {
                let Ok(time) = Time::new(hour, minute, 0, 0) else {
                    continue;
                };
                if let Ok(ts) = tz.to_ambiguous_timestamp(DateTime::from_parts(date, time)).compatible() {
                    out.push(ts);
                }
            }
        }
    }

    /// Fire times in `[from, to]`, sorted.
    pub fn fires_between(&self, tz: &TimeZone, from: Timestamp, to: Timestamp) -> Vec<Timestamp> {
        let mut out = Vec::new();
        let (Some(mut date), Some(last)) = (local_date(from, tz, -1), local_date(to, tz, 1)) else {
            return out;
        };
        while date <= last {
            self.fires_on(date, tz, &mut out);
            let Ok(next) = date.tomorrow() else { break };
            date = next;
        }
        out.retain(|t| *t >= from && *t <= to);
        out.sort();
        out.dedup();
        out
    }

    /// The first fire time strictly after `after`, within the horizon.
    pub fn next_after(&self, tz: &TimeZone, after: Timestamp) -> Option<Timestamp> {
        let mut date = local_date(after, tz, -1)?;
        let mut found: Option<Timestamp> = None;
        let mut extra = 0;
        for _ in 0..HORIZON_DAYS {
            let mut fires = Vec::new();
            self.fires_on(date, tz, &mut fires);
            if let Some(first) = fires.into_iter().filter(|t| *t > after).min() {
                found = Some(found.map_or(first, |f| f.min(first)));
            }
            // A DST shift can move a fire time past the next day's start: look one day further.
            if found.is_some() {
                extra += 1;
                if extra > 1 {
                    break;
                }
            }
            date = date.tomorrow().ok()?;
        }
        found
    }
}

/// The local date of `t` in `tz`, moved by `days`.
fn local_date(t: Timestamp, tz: &TimeZone, days: i64) -> Option<Date> {
    t.to_zoned(tz.clone())
        .date()
        .checked_add(jiff::Span::new().days(days))
        .ok()
}

/// One crontab field as a bit set over `min..=max`: `*`, `a`, `a-b`, each optionally `/step`, in a
/// comma-separated list; `names` are accepted for the values from `min` on (jan.., sun..).
fn field(text: &str, what: &str, min: u32, max: u32, names: &[&str]) -> Result<u64, String> {
    let value = |s: &str| -> Result<u32, String> {
        let lower = s.to_ascii_lowercase();
        if let Some(i) = names.iter().position(|n| *n == lower) {
            return Ok(min + i as u32);
        }
        match s.parse::<u32>() {
            Ok(v) if (min..=max).contains(&v) => Ok(v),
            _ => Err(format!("{what} {s:?} is not a number within {min}-{max}")),
        }
    };
    let mut bits = 0u64;
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => match s.parse::<u32>() {
                Ok(s) if s >= 1 && s <= max => (r, s),
                _ => return Err(format!("{what} step {s:?} is not a number within 1-{max}")),
            },
            None => (item, 1),
        };
        let (lo, hi) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let v = value(range)?;
            // `a/step` runs from a to the end, as in Vixie cron.
            (v, if item.contains('/') { max } else { v })
        };
        if lo > hi {
            return Err(format!("{what} range {range:?} runs backwards"));
        }
        for v in (lo..=hi).step_by(step as usize) {
            bits |= 1 << v;
        }
    }
    Ok(bits)
}

/// A window ready to evaluate.
struct Compiled {
    cron: Cron,
    tz: TimeZone,
    duration: SignedDuration,
}

/// The problems of `spec.schedule`, each naming its field.
pub fn validate(schedule: &Schedule) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for (i, w) in schedule.windows.iter().enumerate() {
        let field = format!("spec.schedule.windows[{i}]");
        if let Err(message) = Cron::parse(&w.cron) {
            errors.push(FieldError {
                field: format!("{field}.cron"),
                message,
            });
        }
        if TimeZone::get(&w.time_zone).is_err() {
            errors.push(FieldError {
                field: format!("{field}.timeZone"),
                message: format!("{:?} is not a known IANA time zone", w.time_zone),
            });
        }
        if w.duration.is_zero() || w.duration > MAX_DURATION {
            errors.push(FieldError {
                field: format!("{field}.duration"),
                message: format!(
                    "{} is not within 1s-{}",
                    humantime::format_duration(w.duration),
                    humantime::format_duration(MAX_DURATION)
                ),
            });
        } else if w.duration < Duration::from_secs(1) {
            errors.push(FieldError {
                field: format!("{field}.duration"),
                message: "must be at least 1s".into(),
            });
        }
    }
    for (i, f) in schedule.freezes.iter().enumerate() {
        if f.to <= f.from {
            errors.push(FieldError {
                field: format!("spec.schedule.freezes[{i}].to"),
                message: format!("{} is not after from ({})", f.to, f.from),
            });
        }
    }
    errors
}

/// Windows that cannot be evaluated (refused by [`validate`]) never open: the safe direction.
fn compile(schedule: &Schedule) -> Vec<Compiled> {
    schedule
        .windows
        .iter()
        .filter_map(|w| {
            Some(Compiled {
                cron: Cron::parse(&w.cron).ok()?,
                tz: TimeZone::get(&w.time_zone).ok()?,
                duration: SignedDuration::try_from(w.duration).ok()?,
            })
        })
        .collect()
}

fn plus(t: Timestamp, d: SignedDuration) -> Timestamp {
    t.checked_add(d).unwrap_or(Timestamp::MAX)
}

fn minus(t: Timestamp, d: SignedDuration) -> Timestamp {
    t.checked_sub(d).unwrap_or(Timestamp::MIN)
}

impl Compiled {
    fn open_at(&self, t: Timestamp) -> bool {
        let fires = self.cron.fires_between(&self.tz, minus(t, self.duration), t);
        fires.last().is_some_and(|f| t < plus(*f, self.duration))
    }
}

/// No window at all means always open.
fn windows_open(windows: &[Compiled], schedule: &Schedule, t: Timestamp) -> bool {
    if schedule.windows.is_empty() {
        return true;
    }
    windows.iter().any(|w| w.open_at(t))
}

/// The freeze in force at `t` and the end of the run of freezes overlapping it.
fn frozen(schedule: &Schedule, t: Timestamp) -> Option<(Timestamp, Option<String>)> {
    let first = schedule.freezes.iter().find(|f| f.from <= t && t < f.to)?;
    let mut until = first.to;
    while let Some(later) = schedule
        .freezes
        .iter()
        .filter(|f| f.from <= until && until < f.to)
        .map(|f| f.to)
        .max()
    {
        until = later;
    }
    Some((until, first.reason.clone()))
}

/// Whether traffic may rise at `now`, and if not, why and when it may next.
pub fn window_state(schedule: &Schedule, now: Timestamp) -> WindowState {
    let windows = compile(schedule);
    let freeze = frozen(schedule, now);
    if freeze.is_none() && windows_open(&windows, schedule, now) {
        return WindowState::Open;
    }
    let why = match freeze {
        Some((until, reason)) => Why::Freeze { until, reason },
        None => Why::Window,
    };
    WindowState::Closed {
        next_open: next_open(&windows, schedule, now),
        why,
    }
}

/// The earliest instant after `now` at which traffic may rise: a window's fire time outside any
/// freeze, or the end of a freeze inside an open window.
fn next_open(windows: &[Compiled], schedule: &Schedule, now: Timestamp) -> Option<Zoned> {
    let utc = TimeZone::UTC;
    let mut t = now;
    // Each turn passes one freeze or one fire time inside a freeze.
    for _ in 0..1000 {
        if let Some((until, _)) = frozen(schedule, t) {
            t = until;
            if windows_open(windows, schedule, t) && frozen(schedule, t).is_none() {
                let tz = windows
                    .iter()
                    .find(|w| w.open_at(t))
                    .map_or(utc.clone(), |w| w.tz.clone());
                return Some(t.to_zoned(tz));
            }
            continue;
        }
        let (at, tz) = windows
            .iter()
            .filter_map(|w| w.cron.next_after(&w.tz, t).map(|at| (at, &w.tz)))
            .min_by_key(|(at, _)| *at)?;
        if frozen(schedule, at).is_none() {
            return Some(at.to_zoned(tz.clone()));
        }
        t = at;
    }
    None
}

/// The next `n` opening times of one window after `now`, ignoring freezes (for `canaryd validate`).
pub fn next_openings(window: &Window, now: Timestamp, n: usize) -> Result<Vec<Zoned>, String> {
    let cron = Cron::parse(&window.cron)?;
    let tz = TimeZone::get(&window.time_zone).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(n);
    let mut t = now;
    while out.len() < n {
        let Some(at) = cron.next_after(&tz, t) else { break };
        out.push(at.to_zoned(tz.clone()));
        t = at;
    }
    Ok(out)
}

/// "2026-11-27T09:00:00+01:00 (Europe/Berlin)".
pub fn show(z: &Zoned) -> String {
    format!(
        "{} ({})",
        z.strftime("%Y-%m-%dT%H:%M:%S%:z"),
        z.time_zone().iana_name().unwrap_or("UTC")
    )
}

#[cfg(test)]
#[path = "cron_tests.rs"]
mod tests;
