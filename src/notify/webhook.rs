//! The generic JSON webhook: one POST per transition, with the payload documented in
//! docs/notifications.md (`Generic JSON webhook`).

use serde_json::{Value, json};

use super::message::Message;
use super::{Http, NotifyError, Secret};

pub fn payload(m: &Message) -> Value {
    let version = |v: &Option<crate::resources::policy::VersionRef>| {
        v.as_ref()
            .map(|v| json!({"subset": v.subset, "deployment": v.deployment}))
            .unwrap_or(Value::Null)
    };
    let analysis: Vec<Value> = m
        .analysis
        .iter()
        .map(|r| {
            json!({
                "metric": r.name,
                "verdict": r.verdict.as_str(),
                "value": r.value,
                "stableValue": r.stable_value,
                "threshold": r.threshold,
                "window": r.window,
            })
        })
        .collect();
    json!({
        "id": m.id,
        "name": m.policy,
        "namespace": m.namespace,
        "service": m.service,
        "phase": m.phase.as_str(),
        "reason": m.reason,
        "message": m.text,
        "step": m.step,
        "steps": m.steps,
        "weights": {"stable": 100 - m.canary_weight.min(100), "canary": m.canary_weight},
        "stable": version(&m.stable),
        "canary": version(&m.canary),
        "canaryTemplateHash": m.canary_hash,
        "analysis": analysis,
        "failedMetrics": m.failed_metrics(),
        "time": m.at.to_string(),
    })
}

pub async fn post(http: &Http, url: &Secret, m: &Message) -> Result<(), NotifyError> {
    http.post_json(url.expose(), None, &payload(m)).await.map(|_| ())
}
