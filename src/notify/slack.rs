//! Slack: with a bot token, one message per rollout (`chat.postMessage`), updated in place
//! (`chat.update`) with every transition also replied in its thread; with an incoming-webhook URL
//! only, a new message per transition.

use serde_json::{Value, json};

use super::message::{Message, bar, number};
use super::{Http, NotifyError, Secret};
use crate::approvals::button::{ABORT_ACTION, PROMOTE_ACTION};
use crate::resources::policy::{SlackMessage, Verdict};

/// Slack's control characters in data: `&`, `<`, `>` as entities, so that no value (a threshold
/// `<= 500`, a message) is read as a link or mention. Markup canaryd builds itself is not passed here.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The top-level `text`: Slack's notification and screen-reader fallback for the blocks.
pub fn fallback(m: &Message) -> String {
    escape(&format!("{}: {} ({}): {}", m.title(), m.phase, m.reason, m.text))
}

/// Block Kit blocks of a rollout's message: `buttons_for` names the target when the message may
/// carry the Approve / Abort buttons.
pub fn blocks(m: &Message, buttons_for: Option<&str>) -> Value {
    let e = escape;
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": truncate(&e(&format!("{}: {}", m.title(), m.phase)), 150)}}),
        json!({"type": "section", "fields": [
            {"type": "mrkdwn", "text": format!("*Service*\n{}", e(&m.service))},
            {"type": "mrkdwn", "text": format!("*Phase*\n{} ({})", m.phase, e(&m.reason))},
            {"type": "mrkdwn", "text": format!("*Stable*\n`{}`", e(m.stable_subset()))},
            {"type": "mrkdwn", "text": format!("*Canary*\n`{}`", e(m.canary_subset()))},
            {"type": "mrkdwn", "text": format!("*Weights* ({} → {})\n`{}`", e(m.stable_subset()), e(m.canary_subset()), bar(m.canary_weight))},
            {"type": "mrkdwn", "text": format!("*Step*\n{}", m.step_text().unwrap_or_else(|| "-".into()))},
        ]}),
        json!({"type": "section", "text": {"type": "mrkdwn", "text": truncate(&e(&m.text), 2900)}}),
    ];
    if !m.analysis.is_empty() {
        let lines: Vec<String> = m
            .analysis
            .iter()
            .map(|r| {
                let value = r.value.map(number).unwrap_or_else(|| "-".into());
                let line = format!("`{}` {value} (threshold {}, window {})", r.name, r.threshold, r.window);
                format!("{} {}", verdict_mark(r.verdict), e(&line))
            })
            .collect();
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": truncate(&format!("*Analysis*\n{}", lines.join("\n")), 2900)}}));
    }
    let failed = m.failed_metrics();
    if !failed.is_empty() {
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": truncate(&format!("*Rolled back on*\n{}", e(&failed.join("\n"))), 2900)}}));
    }
    if let Some((value, approve)) = buttons_for.and_then(|t| m.buttons(t)) {
        let value = value.encode();
        let mut elements = Vec::new();
        if approve {
            elements.push(
                json!({"type": "button", "action_id": PROMOTE_ACTION, "style": "primary",
                "text": {"type": "plain_text", "text": "Approve"}, "value": value}),
            );
        }
        elements.push(json!({"type": "button", "action_id": ABORT_ACTION, "style": "danger",
            "text": {"type": "plain_text", "text": "Abort"}, "value": value}));
        blocks.push(json!({"type": "actions", "block_id": "canaryd", "elements": elements}));
    }
    blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": format!("canaryd · {}", m.at)}]}));
    Value::Array(blocks)
}

fn verdict_mark(v: Verdict) -> &'static str {
    match v {
        Verdict::Pass => "✅",
        Verdict::Fail => "❌",
        Verdict::Inconclusive => "❔",
        Verdict::Error => "⚠️",
    }
}

/// At most `max` characters; an escaped entity is never cut in half.
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    if let Some(amp) = out.rfind('&')
        && !out[amp..].contains(';')
    {
        out.truncate(amp);
    }
    out.push('…');
    out
}

/// Whether `m` starts a new message rather than updating `current`: it belongs to another rollout
/// (also when the transitions between were filtered out). Without the rollout's start on either
/// side (history capped, or a message recorded before starts were), a start transition decides.
pub fn starts_message(m: &Message, current: &SlackMessage) -> bool {
    let rollout = m.rollout.map(|t| t.to_string());
    match (rollout, &current.rollout) {
        (Some(this), Some(that)) => this != *that,
        _ => matches!(m.reason.as_str(), "RolloutStarted" | "CanaryChanged"),
    }
}

/// A bot: Web API base URL, token, channel, and whether its messages carry buttons.
pub struct Bot<'a> {
    pub api_url: &'a str,
    pub token: &'a Secret,
    pub channel: &'a str,
    /// The target's name, for the buttons' value; None: no buttons (no signing secret).
    pub buttons_for: Option<&'a str>,
}

impl Bot<'_> {
    /// Send one transition: a new message for a new rollout, else update the rollout's message and
    /// reply in its thread. Returns the message the next transitions update.
    pub async fn send(
        &self,
        http: &Http,
        m: &Message,
        current: Option<&SlackMessage>,
    ) -> Result<SlackMessage, NotifyError> {
        let text = fallback(m);
        let blocks = blocks(m, self.buttons_for);
        let rollout = m.rollout.map(|t| t.to_string());
        match current.filter(|c| !starts_message(m, c)) {
            None => {
                let body = json!({"channel": self.channel, "text": text, "blocks": blocks});
                let answer = self.call(http, "chat.postMessage", &body).await?;
                let channel = answer.get("channel").and_then(Value::as_str);
                let ts = answer.get("ts").and_then(Value::as_str);
                match (channel, ts) {
                    (Some(channel), Some(ts)) => Ok(SlackMessage {
                        channel: channel.into(),
                        ts: ts.into(),
                        rollout,
                    }),
                    _ => Err(NotifyError::Slack(
                        "chat.postMessage answered without channel or ts".into(),
                    )),
                }
            }
            Some(msg) => {
                let update = json!({"channel": msg.channel, "ts": msg.ts, "text": text, "blocks": blocks});
                match self.call(http, "chat.update", &update).await {
                    Ok(_) => {}
                    // Someone deleted the rollout's message: start a new one rather than retry forever.
                    Err(NotifyError::Slack(e)) if e.ends_with("message_not_found") => {
                        return Box::pin(self.send(http, m, None)).await;
                    }
                    Err(e) => return Err(e),
                }
                let reply = json!({"channel": msg.channel, "thread_ts": msg.ts,
                    "text": escape(&format!("{} ({}): {}", m.phase, m.reason, m.text))});
                self.call(http, "chat.postMessage", &reply).await?;
                Ok(SlackMessage {
                    rollout: rollout.or_else(|| msg.rollout.clone()),
                    ..msg.clone()
                })
            }
        }
    }

    /// One Web API call: HTTP 200 with `"ok": true`, or the `error` Slack names.
    async fn call(&self, http: &Http, method: &str, body: &Value) -> Result<Value, NotifyError> {
        let url = format!("{}/{method}", self.api_url.trim_end_matches('/'));
        let answer = http.post_json(&url, Some(self.token), body).await?;
        let parsed: Value = serde_json::from_slice(&answer)
            .map_err(|_| NotifyError::Slack(format!("{method}: the answer is not JSON")))?;
        if parsed.get("ok").and_then(Value::as_bool) == Some(true) {
            Ok(parsed)
        } else {
            let error = parsed.get("error").and_then(Value::as_str).unwrap_or("no error given");
            Err(NotifyError::Slack(format!("{method}: {}", truncate(error, 100))))
        }
    }
}

/// An incoming webhook: a new message per transition, no buttons (it cannot be updated).
pub async fn post_webhook(http: &Http, url: &Secret, m: &Message) -> Result<(), NotifyError> {
    let body = json!({"text": fallback(m), "blocks": blocks(m, None)});
    http.post_json(url.expose(), None, &body).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::approvals::button::ButtonValue;
    use crate::resources::policy::{MetricResult, Phase, VersionRef};

    fn message(phase: Phase) -> Message {
        Message {
            namespace: "dev".into(),
            policy: "app".into(),
            service: "app".into(),
            at: jiff::Timestamp::UNIX_EPOCH,
            phase,
            reason: "WaitingForApproval".into(),
            text: "canary v2 at 50%".into(),
            step: Some(3),
            steps: 5,
            canary_weight: 50,
            stable: Some(VersionRef {
                subset: "v1".into(),
                deployment: "app-v1".into(),
            }),
            canary: Some(VersionRef {
                subset: "v2".into(),
                deployment: "app-v2".into(),
            }),
            canary_hash: Some("abc".into()),
            analysis: vec![MetricResult {
                name: "success-rate".into(),
                verdict: Verdict::Fail,
                value: Some(95.0),
                stable_value: None,
                threshold: ">= 99".into(),
                window: "1m".into(),
                message: String::new(),
                at: jiff::Timestamp::UNIX_EPOCH,
            }],
            id: "x".into(),
            gate_at: jiff::Timestamp::from_second(1_700_000_000).unwrap_or(jiff::Timestamp::UNIX_EPOCH),
            rollout: None,
        }
    }

    fn actions(blocks: &Value) -> Vec<Value> {
        blocks
            .as_array()
            .into_iter()
            .flatten()
            .filter(|b| b["type"] == "actions")
            .flat_map(|b| b["elements"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    #[test]
    fn waiting_for_approval_carries_both_buttons_bound_to_the_rollout() {
        let b = blocks(&message(Phase::WaitingForApproval), Some("team"));
        let buttons = actions(&b);
        assert_eq!(buttons.len(), 2, "{b}");
        assert_eq!(buttons[0]["action_id"], "canaryd:promote");
        assert_eq!(buttons[0]["style"], "primary");
        assert_eq!(buttons[1]["action_id"], "canaryd:abort");
        assert_eq!(buttons[1]["style"], "danger");
        let value = ButtonValue::decode(buttons[0]["value"].as_str().unwrap_or_default());
        assert_eq!(
            value.ok(),
            Some(ButtonValue {
                ns: "dev".into(),
                policy: "app".into(),
                canary: "abc".into(),
                step: 3,
                target: "team".into(),
                at: Some(1_700_000_000_000),
            })
        );
        assert!(b.to_string().contains("▓▓▓▓▓░░░░░ 50%"), "{b}");
    }

    #[test]
    fn abort_alone_while_progressing_none_after_or_without_a_signing_secret() {
        assert_eq!(actions(&blocks(&message(Phase::Progressing), Some("t"))).len(), 1);
        assert!(actions(&blocks(&message(Phase::Succeeded), Some("t"))).is_empty());
        assert!(actions(&blocks(&message(Phase::WaitingForApproval), None)).is_empty());
    }

    type Calls = std::sync::Arc<std::sync::Mutex<Vec<(String, Value)>>>;

    /// A Slack Web API stand-in on loopback: `message_not_found` for chat.update of ts "gone".
    async fn stand() -> (String, Calls) {
        use axum::extract::{Path, State};
        let calls = Calls::default();
        let app = axum::Router::new()
            .route(
                "/api/{method}",
                axum::routing::post(
                    |State(calls): State<Calls>, Path(method): Path<String>, body: axum::Json<Value>| async move {
                        let body = body.0;
                        let answer = if method == "chat.update" && body["ts"] == "gone" {
                            json!({"ok": false, "error": "message_not_found"})
                        } else {
                            json!({"ok": true, "channel": "C9", "ts": format!("1.{}", calls.lock().map(|c| c.len()).unwrap_or(0))})
                        };
                        if let Ok(mut c) = calls.lock() {
                            c.push((method, body));
                        }
                        axum::Json(answer)
                    },
                ),
            )
            .with_state(calls.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let base = format!("http://{}/api", listener.local_addr().unwrap_or_else(|e| panic!("{e}")));
        tokio::spawn(async move { axum::serve(listener, app).await });
        (base, calls)
    }

    fn methods(calls: &Calls) -> Vec<String> {
        calls
            .lock()
            .map(|c| c.iter().map(|(m, _)| m.clone()).collect())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn a_new_rollout_posts_a_new_message_later_transitions_update_it_and_reply_in_its_thread() {
        let (base, calls) = stand().await;
        let http = Http::new(std::time::Duration::from_secs(2)).unwrap_or_else(|e| panic!("{e}"));
        let token = Secret::new("xoxb-t".into());
        let channel = super::super::Channel::SlackBot {
            api_url: base,
            token,
            channel: "C9".into(),
            buttons: false,
        };
        let mut entry = crate::resources::policy::NotificationStatus::default();
        let mut m = message(Phase::Progressing);
        m.reason = "RolloutStarted".into();
        let sent = channel.send(&http, "t", &m, &mut entry).await;
        assert!(sent.is_ok(), "{sent:?}");
        let first = entry.slack.clone();
        assert_eq!(first.as_ref().map(|s| s.channel.as_str()), Some("C9"));
        m.reason = "WeightChanged".into();
        assert!(channel.send(&http, "t", &m, &mut entry).await.is_ok());
        assert_eq!(entry.slack, first, "later transitions keep the message");
        assert_eq!(methods(&calls), ["chat.postMessage", "chat.update", "chat.postMessage"]);
        let reply = calls.lock().map(|c| c[2].1.clone()).unwrap_or_default();
        assert_eq!(reply["thread_ts"], json!(first.as_ref().map(|s| s.ts.clone())));
        // The next rollout: a new message.
        m.reason = "RolloutStarted".into();
        assert!(channel.send(&http, "t", &m, &mut entry).await.is_ok());
        assert_ne!(entry.slack, first);
        assert_eq!(methods(&calls).len(), 4);
        // A deleted message is replaced, not retried forever.
        entry.slack = Some(SlackMessage {
            channel: "C9".into(),
            ts: "gone".into(),
            rollout: None,
        });
        m.reason = "Promoted".into();
        assert!(channel.send(&http, "t", &m, &mut entry).await.is_ok());
        assert_ne!(entry.slack.as_ref().map(|s| s.ts.as_str()), Some("gone"));
        assert_eq!(methods(&calls)[4..], ["chat.update", "chat.postMessage"]);
    }

    #[tokio::test]
    async fn ok_false_is_a_failure_naming_slacks_error() {
        let (base, _) = stand().await;
        let http = Http::new(std::time::Duration::from_secs(2)).unwrap_or_else(|e| panic!("{e}"));
        let token = Secret::new("xoxb-t".into());
        let bot = Bot {
            api_url: &base,
            token: &token,
            channel: "C9",
            buttons_for: None,
        };
        let e = bot.call(&http, "chat.update", &json!({"ts": "gone"})).await.err();
        assert_eq!(
            e.map(|e| e.to_string()).as_deref(),
            Some("Slack refused: chat.update: message_not_found")
        );
    }

    #[test]
    fn a_rollback_says_which_metric_failed_and_by_how_much() {
        let b = blocks(&message(Phase::RolledBack), Some("t")).to_string();
        assert!(
            b.contains("success-rate = 95 (threshold &gt;= 99, off by 4, window 1m)"),
            "{b}"
        );
        let progressing = blocks(&message(Phase::Progressing), Some("t")).to_string();
        assert!(!progressing.contains("Rolled back on"), "{progressing}");
    }

    #[test]
    fn data_is_escaped_in_every_text_and_entities_are_not_cut() {
        let mut m = message(Phase::RolledBack);
        m.policy = "a&b".into();
        m.text = "p99 <= 500 & <https://evil.example|click>".into();
        m.analysis[0].threshold = "<= 500".into();
        m.analysis[0].value = Some(900.0);
        m.canary = Some(VersionRef {
            subset: "v2<b>".into(),
            deployment: "d".into(),
        });
        let b = blocks(&m, Some("t"));
        let mut texts = vec![fallback(&m)];
        for block in b.as_array().into_iter().flatten() {
            for text in [&block["text"]["text"], &block["elements"][0]["text"]] {
                texts.extend(text.as_str().map(str::to_string));
            }
            for f in block["fields"].as_array().into_iter().flatten() {
                texts.extend(f["text"].as_str().map(str::to_string));
            }
        }
        for t in &texts {
            assert!(!t.contains('<') && !t.contains('>'), "raw markup in {t:?}");
            assert!(
                !t.replace("&amp;", "")
                    .replace("&lt;", "")
                    .replace("&gt;", "")
                    .contains('&'),
                "{t:?}"
            );
        }
        let all = texts.join("\n");
        assert!(
            all.contains("p99 &lt;= 500 &amp; &lt;https://evil.example|click&gt;"),
            "{all}"
        );
        assert!(all.contains("threshold &lt;= 500"), "{all}");
        assert!(all.contains("`v2&lt;b&gt;`"), "{all}");
        assert!(all.contains("dev/a&amp;b"), "{all}");
        assert_eq!(escape("a & b <c> &amp;"), "a &amp; b &lt;c&gt; &amp;amp;");
        // Truncating never leaves half an entity.
        assert_eq!(truncate(&escape("ab&c"), 5), "ab…");
        assert_eq!(truncate(&escape("ab&cdef"), 9), "ab&amp;c…");
    }

    #[test]
    fn a_message_belongs_to_its_rollout_whatever_was_filtered_out_between() {
        let at = |s| jiff::Timestamp::from_second(s).ok();
        let current = SlackMessage {
            channel: "C9".into(),
            ts: "1.0".into(),
            rollout: at(100).map(|t| t.to_string()),
        };
        let mut m = message(Phase::WaitingForApproval);
        m.rollout = at(100);
        assert!(!starts_message(&m, &current), "the same rollout updates its message");
        m.rollout = at(200);
        assert!(
            starts_message(&m, &current),
            "another rollout, RolloutStarted filtered out"
        );
        // Without a start on either side, a start transition decides (as before).
        m.rollout = None;
        assert!(!starts_message(&m, &current));
        m.reason = "RolloutStarted".into();
        assert!(starts_message(&m, &current));
    }
}
