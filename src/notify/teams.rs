//! Microsoft Teams: an Adaptive Card (1.4) in a message POSTed to the channel's webhook URL.

use serde_json::{Value, json};

use super::message::{Message, bar, number};
use super::{Http, NotifyError, Secret};

pub fn card(m: &Message) -> Value {
    let mut facts = vec![
        json!({"title": "Service", "value": m.service}),
        json!({"title": "Phase", "value": format!("{} ({})", m.phase, m.reason)}),
        json!({"title": "Stable", "value": m.stable_subset()}),
        json!({"title": "Canary", "value": m.canary_subset()}),
        json!({"title": "Weights", "value": bar(m.canary_weight)}),
    ];
    if let Some(step) = m.step_text() {
        facts.push(json!({"title": "Step", "value": step}));
    }
    let mut body = vec![
        json!({"type": "TextBlock", "size": "Medium", "weight": "Bolder", "wrap": true,
            "text": format!("{}: {}", m.title(), m.phase)}),
        json!({"type": "FactSet", "facts": facts}),
        json!({"type": "TextBlock", "wrap": true, "text": m.text}),
    ];
    if !m.analysis.is_empty() {
        let facts: Vec<Value> = m
            .analysis
            .iter()
            .map(|r| {
                let value = r.value.map(number).unwrap_or_else(|| "-".into());
                json!({"title": r.name, "value": format!("{} {value} (threshold {}, window {})", r.verdict.as_str(), r.threshold, r.window)})
            })
            .collect();
        body.push(json!({"type": "TextBlock", "weight": "Bolder", "text": "Analysis"}));
        body.push(json!({"type": "FactSet", "facts": facts}));
    }
    let failed = m.failed_metrics();
    if !failed.is_empty() {
        body.push(json!({"type": "TextBlock", "wrap": true, "color": "Attention",
            "text": format!("Rolled back on: {}", failed.join("; "))}));
    }
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": body,
            }
        }]
    })
}

pub async fn post(http: &Http, url: &Secret, m: &Message) -> Result<(), NotifyError> {
    http.post_json(url.expose(), None, &card(m)).await.map(|_| ())
}
