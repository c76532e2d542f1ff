//! Business hours: an endpoint that only answers during opening hours shows
//! as away (or offline) outside them, in the time zone the admin names.

use jiff::civil::{Time, Weekday};
use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// Opening hours as written in the configuration.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// An IANA time zone, e.g. `Europe/Berlin`.
    pub timezone: String,
    /// Open days: `mon` … `sun`.
    pub days: Vec<String>,
    /// Opening time, `HH:MM`.
    pub open: String,
    /// Closing time, `HH:MM` (after `open`; overnight hours are two entries' worth of trouble we do not take).
    pub close: String,
    /// What watchers see when closed: `away` or `offline` (default), or a number.
    #[serde(default)]
    pub closed_availability: Option<String>,
}

/// Why a schedule cannot be used; the text names the field and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// Unknown time zone.
    #[error("unknown time zone {0:?}: use an IANA name such as \"Europe/Berlin\" or \"UTC\"")]
    TimeZone(String),
    /// A day that is not `mon` … `sun`.
    #[error("unknown day {0:?}: use mon, tue, wed, thu, fri, sat, sun")]
    Day(String),
    /// A time that is not `HH:MM`.
    #[error("time {0:?} is not HH:MM (24-hour)")]
    Time(String),
    /// Close not after open.
    #[error("close {close:?} must be later than open {open:?}")]
    Order {
        /// Opening.
        open: String,
        /// Closing.
        close: String,
    },
    /// Unknown availability name.
    #[error("closed_availability {0:?}: use away, offline, busy, or a number")]
    Availability(String),
}

/// A validated schedule.
#[derive(Clone, Debug)]
pub struct Schedule {
    zone: TimeZone,
    days: Vec<Weekday>,
    open: Time,
    close: Time,
    /// What watchers see when closed.
    pub closed_availability: porchlight_presence::Availability,
}

fn weekday(name: &str) -> Option<Weekday> {
    Some(match name.to_ascii_lowercase().as_str() {
        "mon" | "monday" => Weekday::Monday,
        "tue" | "tuesday" => Weekday::Tuesday,
        "wed" | "wednesday" => Weekday::Wednesday,
        "thu" | "thursday" => Weekday::Thursday,
        "fri" | "friday" => Weekday::Friday,
        "sat" | "saturday" => Weekday::Saturday,
        "sun" | "sunday" => Weekday::Sunday,
        _ => return None,
    })
}

fn time(text: &str) -> Result<Time, ScheduleError> {
    let bad = || ScheduleError::Time(text.to_owned());
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    let (h, m): (i8, i8) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    Time::new(h, m, 0, 0).map_err(|_| bad())
}

impl Schedule {
    /// Validates a configured schedule.
    pub fn new(config: &ScheduleConfig) -> Result<Schedule, ScheduleError> {
        let zone = TimeZone::get(&config.timezone)
            .map_err(|_| ScheduleError::TimeZone(config.timezone.clone()))?;
        let days = config
            .days
            .iter()
            .map(|d| weekday(d).ok_or_else(|| ScheduleError::Day(d.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        let (open, close) = (time(&config.open)?, time(&config.close)?);
        if close <= open {
            return Err(ScheduleError::Order {
                open: config.open.clone(),
                close: config.close.clone(),
            });
        }
        let closed_availability = match &config.closed_availability {
            None => porchlight_presence::Availability::OFFLINE,
            Some(name) => porchlight_presence::Availability::from_name(name)
                .ok_or_else(|| ScheduleError::Availability(name.clone()))?,
        };
        Ok(Schedule {
            zone,
            days,
            open,
            close,
            closed_availability,
        })
    }

    /// Whether the endpoint is open at `at`.
    pub fn is_open(&self, at: Timestamp) -> bool {
        let local = at.to_zoned(self.zone.clone());
        let t = local.time();
        self.days.contains(&local.weekday()) && t >= self.open && t < self.close
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(tz: &str) -> ScheduleConfig {
        ScheduleConfig {
            timezone: tz.into(),
            days: ["mon", "tue", "wed", "thu", "fri"]
                .map(String::from)
                .to_vec(),
            open: "08:00".into(),
            close: "18:00".into(),
            closed_availability: Some("away".into()),
        }
    }

    #[test]
    fn opening_hours_in_the_named_zone() {
        let s = Schedule::new(&config("Europe/Berlin")).unwrap();
        // 2026-11-24 is a Tuesday; Berlin is UTC+1 in November.
        let at = |text: &str| text.parse::<Timestamp>().unwrap();
        assert!(s.is_open(at("2026-11-24T07:30:00Z"))); // 08:30 local
        assert!(!s.is_open(at("2026-11-24T06:30:00Z"))); // 07:30 local
        assert!(!s.is_open(at("2026-11-24T17:00:00Z"))); // 18:00 local
        assert!(!s.is_open(at("2026-11-28T10:00:00Z"))); // Saturday
        assert_eq!(
            s.closed_availability,
            porchlight_presence::Availability::AWAY
        );
    }

    #[test]
    fn bad_schedules_say_what_to_fix() {
        let err = |c: ScheduleConfig| Schedule::new(&c).unwrap_err().to_string();
        assert!(err(config("Mars/Olympus")).contains("IANA"));
        let mut c = config("UTC");
        c.days.push("funday".into());
        assert!(err(c).contains("mon, tue"));
        let mut c = config("UTC");
        c.close = "07:00".into();
        assert!(err(c).contains("later than open"));
        let mut c = config("UTC");
        c.open = "8am".into();
        assert!(err(c).contains("HH:MM"));
    }
}
