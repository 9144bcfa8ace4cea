//! `canaryd status`: a kubectl-like table, or with `--watch` a live view with a weight bar per version.

use std::fmt::Write as _;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, ListParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};

use crate::cron as schedule;
use crate::error::Result;
use crate::resources::policy::RolloutPolicy;
use crate::resources::schedule::ScheduleStatus;

const BAR: usize = 30;

fn row(p: &RolloutPolicy) -> [String; 8] {
    let st = p.status.clone().unwrap_or_default();
    let step = match st.step {
        Some(s) => format!("{}/{}", (s as usize + 1).min(p.spec.steps.len()), p.spec.steps.len()),
        None => "-".into(),
    };
    [
        p.namespace().unwrap_or_default(),
        p.name_any(),
        st.phase.to_string(),
        st.stable
            .map(|s| s.subset)
            .unwrap_or_else(|| p.spec.stable.subset.clone()),
        st.canary.map(|c| c.subset).unwrap_or_else(|| "-".into()),
        format!("{}/{}", st.stable_weight, st.canary_weight),
        step,
        st.message.unwrap_or_default(),
    ]
}

/// The table, aligned like kubectl's.
pub fn table(policies: &[RolloutPolicy]) -> String {
    let header = [
        "NAMESPACE",
        "NAME",
        "PHASE",
        "STABLE",
        "CANARY",
        "WEIGHTS",
        "STEP",
        "MESSAGE",
    ]
    .map(String::from);
    let rows: Vec<[String; 8]> = std::iter::once(header).chain(policies.iter().map(row)).collect();
    let mut widths = [0usize; 8];
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        let _ = writeln!(out, "{}", line.join("   ").trim_end());
    }
    out
}

/// "OutsideWindow: next opening 2026-11-27T09:00:00+01:00 (Europe/Berlin) = 2026-11-27T08:00:00Z".
fn schedule_hold(h: &ScheduleStatus) -> String {
    let next = match h.next_open {
        Some(at) => {
            let tz = h
                .time_zone
                .as_deref()
                .and_then(|z| jiff::tz::TimeZone::get(z).ok())
                .unwrap_or(jiff::tz::TimeZone::UTC);
            format!("next opening {} = {at}", schedule::show(&at.to_zoned(tz)))
        }
        None => "no opening in the next 8 years".into(),
    };
    let frozen = match (&h.frozen_until, &h.freeze_reason) {
        (Some(until), Some(r)) => format!(" (frozen until {until}: {r})"),
        (Some(until), None) => format!(" (frozen until {until})"),
        _ => String::new(),
    };
    format!("{}{frozen}: {next}", h.hold.as_str())
}

fn bar(weight: u8) -> String {
    let filled = usize::from(weight) * BAR / 100;
    format!("[{}{}] {weight:>3}%", "#".repeat(filled), "-".repeat(BAR - filled))
}

/// The live view of one policy.
pub fn detail(p: &RolloutPolicy) -> String {
    let st = p.status.clone().unwrap_or_default();
    let stable = st.stable.clone().unwrap_or_else(|| p.spec.stable.clone());
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}/{}  phase: {}",
        p.namespace().unwrap_or_default(),
        p.name_any(),
        st.phase
    );
    let _ = writeln!(out, "  stable {:<8} {}", stable.subset, bar(st.stable_weight));
    if let Some(c) = &st.canary {
        let _ = writeln!(out, "  canary {:<8} {}", c.subset, bar(st.canary_weight));
    }
    if let Some(step) = st.step {
        let _ = writeln!(
            out,
            "  step   {}/{}",
            (step as usize + 1).min(p.spec.steps.len()),
            p.spec.steps.len()
        );
    }
    if let Some(a) = &st.pending_approval {
        let _ = writeln!(out, "  waits  {a}");
    }
    // What a bot or a script pins, so that a late command does not pass a later gate.
    if let (Some(c), Some(step)) = (&st.canary, st.step) {
        let _ = writeln!(out, "  pin    --canary {} --step {step}", c.template_hash);
    }
    if let Some(h) = &st.schedule {
        let _ = writeln!(out, "  hold   {}", schedule_hold(h));
    }
    if let Some(g) = &st.gate {
        let answer = g.last_answer.as_deref().unwrap_or("no answer yet");
        let _ = writeln!(
            out,
            "  gate   {} webhook {} since {}: {answer}",
            g.type_, g.hook, g.since
        );
    }
    if let Some(m) = &st.message {
        let _ = writeln!(out, "  last   {m}");
    }
    if let Some(a) = &st.analysis {
        let verdict = a.verdict.map(|v| v.as_str()).unwrap_or("-");
        let _ = writeln!(
            out,
            "  analysis {verdict} (failed {} / inconclusive {} / errors {} in a row)",
            a.failures, a.inconclusive, a.errors
        );
        for m in &a.metrics {
            let value = m.value.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into());
            let stable = m.stable_value.map(|v| format!(" (stable {v:.2})")).unwrap_or_default();
            let _ = writeln!(
                out,
                "    {:<16} {:<12} {value}{stable}  [{}] over {}",
                m.name,
                m.verdict.as_str(),
                m.threshold,
                m.window
            );
        }
    }
    out
}

fn api(client: &Client, namespace: Option<&str>) -> Api<RolloutPolicy> {
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

pub async fn show(client: &Client, namespace: Option<&str>, name: Option<&str>) -> Result<String> {
    let api = api(client, namespace);
    let policies = match name {
        Some(n) => vec![api.get(n).await?],
        None => api.list(&ListParams::default()).await?.items,
    };
    Ok(table(&policies))
}

/// Redraw the view at every change until interrupted (or `limit` elapses, for scripts and the demo).
pub async fn watch(
    client: &Client,
    namespace: Option<&str>,
    name: Option<&str>,
    limit: Option<Duration>,
) -> Result<()> {
    let api = api(client, namespace);
    let mut config = watcher::Config::default();
    if let Some(n) = name {
        config = config.fields(&format!("metadata.name={n}"));
    }
    let deadline = limit.map(|l| tokio::time::Instant::now() + l);
    let mut stream = std::pin::pin!(watcher(api, config).default_backoff().applied_objects());
    let mut last = String::new();
    loop {
        let next = match deadline {
            Some(d) => match tokio::time::timeout_at(d, stream.next()).await {
                Ok(n) => n,
                Err(_) => return Ok(()),
            },
            None => stream.next().await,
        };
        let Some(item) = next else { return Ok(()) };
        let policy = match item {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "watch error");
                continue;
            }
        };
        let view = detail(&policy);
        if view != last {
            println!("{view}");
            last = view;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::schedule::HoldReason;

    #[test]
    fn the_hold_names_the_next_opening_in_its_zone() {
        let h = ScheduleStatus {
            hold: HoldReason::Frozen,
            next_open: Some("2027-01-04T08:00:00Z".parse().unwrap()),
            time_zone: Some("Europe/Berlin".into()),
            frozen_until: Some("2027-01-04T00:00:00Z".parse().unwrap()),
            freeze_reason: Some("year-end freeze".into()),
        };
        assert_eq!(
            schedule_hold(&h),
            "Frozen (frozen until 2027-01-04T00:00:00Z: year-end freeze): next opening \
             2027-01-04T09:00:00+01:00 (Europe/Berlin) = 2027-01-04T08:00:00Z"
        );
    }
}
