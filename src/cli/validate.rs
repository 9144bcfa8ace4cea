//! `canaryd validate FILE|DIR`: server-free lint of RolloutPolicies for GitOps CI. Unknown fields are
//! errors, as with `kubectl apply --validate=strict`: a typo there would silently drop a setting.

use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::Deserialize;
use serde_json::Value;

use crate::cron::{next_openings, show};
use crate::policy::validate::validate_spec;
use crate::resources::policy::RolloutPolicySpec;

const TOP_LEVEL: [&str; 5] = ["apiVersion", "kind", "metadata", "spec", "status"];

/// The problems of one file (empty: valid).
#[derive(Debug)]
pub struct FileReport {
    pub path: PathBuf,
    pub policies: usize,
    pub errors: Vec<String>,
    /// The next openings of each schedule window of the valid policies.
    pub openings: Vec<String>,
}

/// Every `.yaml`/`.yml` under `path` (or `path` itself), in a stable order.
pub fn validate_path(path: &Path, now: Timestamp) -> std::io::Result<Vec<FileReport>> {
    let mut files = Vec::new();
    collect(path, &mut files)?;
    files.sort();
    files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f)?;
            let (policies, errors) = validate_text(&text);
            let openings = if errors.is_empty() {
                openings(&text, now)
            } else {
                Vec::new()
            };
            Ok(FileReport {
                path: f,
                policies,
                errors,
                openings,
            })
        })
        .collect()
}

fn collect(path: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if path.is_dir() {
        for entry in std::fs::read_dir(path)? {
            collect(&entry?.path(), out)?;
        }
    } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") || out.is_empty() && path.is_file() {
        out.push(path.to_path_buf());
    }
    Ok(())
}

/// Validate every RolloutPolicy document in a (multi-document) YAML text, and the namespace
/// selectors of MetricProviders, NotificationTargets and webhook-token Secrets; other kinds are skipped.
pub fn validate_text(text: &str) -> (usize, Vec<String>) {
    let docs: Vec<Value> = match serde_saphyr::from_multiple(text) {
        Ok(docs) => docs,
        Err(e) => return (0, vec![format!("not valid YAML: {e}")]),
    };
    let mut errors = Vec::new();
    let mut policies = 0;
    for (i, doc) in docs.iter().enumerate() {
        if let Some(platform) = super::platform::validate(doc) {
            errors.extend(platform);
            continue;
        }
        if doc.get("kind").and_then(Value::as_str) != Some("RolloutPolicy") {
            continue;
        }
        policies += 1;
        let name = doc.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
        let prefix = if name.is_empty() {
            format!("document {}", i + 1)
        } else {
            format!("RolloutPolicy {name}")
        };
        errors.extend(validate_policy(doc).into_iter().map(|e| format!("{prefix}: {e}")));
    }
    (policies, errors)
}

/// How many openings `canaryd validate` shows per window.
pub const OPENINGS: usize = 3;

/// For each schedule window of each RolloutPolicy in a valid text: its next openings after `now`, in
/// the window's time zone and in UTC.
pub fn openings(text: &str, now: Timestamp) -> Vec<String> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).unwrap_or_default();
    let mut out = Vec::new();
    for doc in docs
        .iter()
        .filter(|d| d.get("kind").and_then(Value::as_str) == Some("RolloutPolicy"))
    {
        let name = doc.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
        let Some(spec) = doc.get("spec").and_then(|s| RolloutPolicySpec::deserialize(s).ok()) else {
            continue;
        };
        for (i, w) in spec.schedule.iter().flat_map(|s| s.windows.iter()).enumerate() {
            out.push(format!(
                "RolloutPolicy {name}: spec.schedule.windows[{i}] {:?} for {} ({}) opens next at:",
                w.cron,
                humantime::format_duration(w.duration),
                w.time_zone
            ));
            match next_openings(w, now, OPENINGS) {
                Ok(at) => out.extend(at.iter().map(|z| format!("  {} = {}", show(z), z.timestamp()))),
                Err(e) => out.push(format!("  {e}")),
            }
        }
    }
    out
}

fn validate_policy(doc: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    if let Some(map) = doc.as_object() {
        for key in map.keys().filter(|k| !TOP_LEVEL.contains(&k.as_str())) {
            errors.push(format!("{key}: unknown field"));
        }
    }
    match doc.get("apiVersion").and_then(Value::as_str) {
        Some("canaryd.io/v1alpha1") => {}
        other => errors.push(format!("apiVersion: {other:?} is not canaryd.io/v1alpha1")),
    }
    if doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        errors.push("metadata.name: required".into());
    }
    let Some(spec) = doc.get("spec") else {
        errors.push("spec: required".into());
        return errors;
    };
    match serde_path_to_error::deserialize::<_, RolloutPolicySpec>(spec) {
        Err(e) => {
            let path = e.path().to_string();
            let field = if path == "." {
                "spec".to_string()
            } else {
                format!("spec.{path}")
            };
            errors.push(format!("{field}: {}", e.inner()));
        }
        Ok(spec) => {
            errors.extend(validate_spec(&spec).into_iter().map(|e| e.to_string()));
            // Checked here only: at run time a bad notification entry is reported, never stops a rollout.
            errors.extend(crate::notify::validate_notifications(&spec));
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
apiVersion: canaryd.io/v1alpha1
kind: RolloutPolicy
metadata: {name: app}
spec:
  service: app
  virtualServices: [{name: app}]
  destinationRule: app
  stable: {subset: v1, deployment: app-v1}
  canary: {subset: v2, deployment: app-v2}
  steps: [{weight: 10}, {pause: {duration: 5m}}, {weight: 100}]
"#;

    #[test]
    fn table() {
        let mut cases: Vec<(String, Option<&str>)> = vec![
            (GOOD.to_string(), None),
            (
                GOOD.replace("{weight: 10}", "{weigth: 10}"),
                Some("spec.steps[0].weigth: unknown field `weigth`, expected `weight` or `pause`"),
            ),
            (
                GOOD.replace("duration: 5m", "duration: 5 fortnights"),
                Some("spec.steps[1].pause.duration"),
            ),
            (
                GOOD.replace("{weight: 100}", "{weight: 90}"),
                Some("spec.steps[2].weight"),
            ),
            (
                GOOD.replace("destinationRule: app", "destinationrule: app"),
                Some("unknown field `destinationrule`"),
            ),
            (
                GOOD.replace("kind: RolloutPolicy", "kind: RolloutPolicy\nextra: 1"),
                Some("extra: unknown field"),
            ),
            (
                GOOD.replace("{weight: 10}", "{weight: ten}"),
                Some("spec.steps[0].weight"),
            ),
            (
                format!("{GOOD}  notifications: [{{target: team, events: [RolledBack, WaitingForApproval]}}]\n"),
                None,
            ),
            (
                format!("{GOOD}  notifications: [{{target: team, events: [Promoted, RoledBack]}}]\n"),
                Some("spec.notifications[0].events[1]: unknown event \"RoledBack\""),
            ),
        ];
        let schedule =
            "\n  schedule:\n    windows: [{cron: \"0 9-16 * * 1-5\", duration: 1h, timeZone: Europe/Berlin}]\n";
        let scheduled = format!("{GOOD}{schedule}");
        cases.extend([
            (scheduled.clone(), None),
            (
                scheduled.replace("0 9-16 * * 1-5", "0 9-16 * *"),
                Some("spec.schedule.windows[0].cron: \"0 9-16 * *\" has 4 fields"),
            ),
            (
                scheduled.replace("0 9-16", "61 9-16"),
                Some("spec.schedule.windows[0].cron: minute \"61\" is not a number within 0-59"),
            ),
            (
                scheduled.replace("Europe/Berlin", "Europe/Berln"),
                Some("spec.schedule.windows[0].timeZone: \"Europe/Berln\" is not a known IANA time zone"),
            ),
            (
                scheduled.replace("duration: 1h", "duration: 8d"),
                Some("spec.schedule.windows[0].duration"),
            ),
            (
                format!(
                    "{GOOD}\n  schedule:\n    freezes: [{{from: 2026-12-20T00:00:00Z, to: 2026-12-19T00:00:00Z}}]\n"
                ),
                Some("spec.schedule.freezes[0].to"),
            ),
            (
                format!("{GOOD}\n  schedule:\n    freezes: [{{from: 2026-12-20, to: 2026-12-21T00:00:00Z}}]\n"),
                Some("spec.schedule.freezes[0].from"),
            ),
        ]);
        for (text, want) in cases {
            let (n, errors) = validate_text(&text);
            assert_eq!(n, 1);
            match want {
                None => assert!(errors.is_empty(), "{errors:?}"),
                Some(w) => assert!(errors.iter().any(|e| e.contains(w)), "want {w:?} in {errors:?}"),
            }
        }
    }

    #[test]
    fn openings_of_each_window_in_its_zone_and_utc() {
        let text = format!(
            "{GOOD}\n  schedule:\n    windows:\n      - {{cron: \"0 9-16 * * 1-5\", duration: 1h, timeZone: Europe/Berlin}}\n      - {{cron: \"30 2 * * *\", duration: 1h}}\n"
        );
        // Friday 2026-11-27 16:30 CET: the 16:00 window has opened; the next is Monday's.
        let now: Timestamp = "2026-11-27T15:30:00Z".parse().unwrap();
        assert_eq!(
            openings(&text, now),
            [
                "RolloutPolicy app: spec.schedule.windows[0] \"0 9-16 * * 1-5\" for 1h (Europe/Berlin) opens next at:",
                "  2026-11-30T09:00:00+01:00 (Europe/Berlin) = 2026-11-30T08:00:00Z",
                "  2026-11-30T10:00:00+01:00 (Europe/Berlin) = 2026-11-30T09:00:00Z",
                "  2026-11-30T11:00:00+01:00 (Europe/Berlin) = 2026-11-30T10:00:00Z",
                "RolloutPolicy app: spec.schedule.windows[1] \"30 2 * * *\" for 1h (UTC) opens next at:",
                "  2026-11-28T02:30:00+00:00 (UTC) = 2026-11-28T02:30:00Z",
                "  2026-11-29T02:30:00+00:00 (UTC) = 2026-11-29T02:30:00Z",
                "  2026-11-30T02:30:00+00:00 (UTC) = 2026-11-30T02:30:00Z",
            ]
        );
    }
}
