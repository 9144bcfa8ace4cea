//! `spec.schedule` (windows and freezes) and `status.schedule` of a RolloutPolicy. The cron and
//! window logic over them is `crate::cron`.

use std::time::Duration;

use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::reason::Reason;

/// When traffic may rise. No windows: always, except during a freeze.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Schedule {
    /// Traffic rises only while one of these is open.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub windows: Vec<Window>,
    /// Traffic never rises during these, whatever the windows say.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub freezes: Vec<Freeze>,
}

/// Open at each fire time of `cron` for `duration`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Window {
    /// Standard 5-field crontab (minute hour day-of-month month day-of-week; Sunday is 0 or 7), e.g.
    /// "0 9-16 * * 1-5", or @hourly, @daily, @weekly, @monthly, @yearly.
    #[schemars(length(min = 1, max = 128))]
    pub cron: String,
    /// How long the window stays open after each fire time (at most 7 days).
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "crate::resources::schema::duration")]
    pub duration: Duration,
    /// IANA time zone the expression is read in, e.g. Europe/Berlin. Default UTC.
    #[serde(default = "utc")]
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: String,
}

fn utc() -> String {
    "UTC".into()
}

/// No traffic increase from `from` (inclusive) to `to` (exclusive).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.to > self.from",
    "message": "a freeze's to must be after its from"
}]))]
pub struct Freeze {
    /// RFC 3339, e.g. 2026-12-20T00:00:00Z.
    #[schemars(schema_with = "date_time")]
    pub from: Timestamp,
    #[schemars(schema_with = "date_time")]
    pub to: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub reason: Option<String>,
}

fn date_time(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "string", "format": "date-time"})
}

/// Why traffic may not rise now.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum HoldReason {
    /// No window is open.
    OutsideWindow,
    /// A freeze is in force.
    Frozen,
}

impl HoldReason {
    pub fn as_str(self) -> &'static str {
        self.reason().as_str()
    }

    /// The transition reason of the hold.
    pub fn reason(self) -> Reason {
        match self {
            HoldReason::OutsideWindow => Reason::OutsideWindow,
            HoldReason::Frozen => Reason::Frozen,
        }
    }
}

/// `status.schedule`: present while the schedule holds the rollout.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleStatus {
    pub hold: HoldReason,
    /// When traffic may rise again; absent when no window opens in the next 8 years.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub next_open: Option<Timestamp>,
    /// The time zone `nextOpen` is shown in (the window's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// The end of the freeze in force (with freezes that overlap it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub frozen_until: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freeze_reason: Option<String>,
}
