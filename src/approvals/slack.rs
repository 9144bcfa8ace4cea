//! Slack's interactivity endpoint: a click on an Approve / Abort button becomes a RolloutCommand.
//!
//! Nothing in a request is trusted before its signature verifies (Slack's scheme: `v0=` + hex
//! HMAC-SHA256 of `v0:{timestamp}:{raw body}` with the app's signing secret, timestamp within five
//! minutes). The secret is the one of the NotificationTarget the button names; since that name is
//! itself in the signed body, every Slack target's secret is tried and the verifying one must be it.

use std::collections::BTreeMap;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::resources::command::CommandKind;
use crate::resources::policy::RolloutPolicy;
use crate::resources::target::SlackTarget;

/// Slack's replay window: a request whose timestamp is further from now, either way, is refused.
pub const MAX_SKEW: Duration = Duration::from_secs(5 * 60);

pub use super::button::{ABORT_ACTION, ButtonValue, PROMOTE_ACTION};

/// Why a request is not from Slack. Displayed to the caller as one word, nothing more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unverified {
    #[error("signature")]
    Signature,
    #[error("timestamp")]
    Timestamp,
}

/// The signature headers of a request whose timestamp is fresh; checked before any secret is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    timestamp: String,
    mac: Vec<u8>,
}

/// Is the timestamp (seconds since the epoch) within [`MAX_SKEW`] of `now`, and is there a
/// well-formed `v0=` signature?
pub fn precheck(timestamp: Option<&str>, signature: Option<&str>, now: i64) -> Result<Signed, Unverified> {
    let ts = timestamp.ok_or(Unverified::Timestamp)?.trim();
    let at: i64 = ts.parse().map_err(|_| Unverified::Timestamp)?;
    let skew = i64::try_from(MAX_SKEW.as_secs()).unwrap_or(i64::MAX);
    if (now - at).abs() > skew {
        return Err(Unverified::Timestamp);
    }
    let mac = signature
        .and_then(|s| s.strip_prefix("v0="))
        .and_then(|h| hex::decode(h).ok())
        .ok_or(Unverified::Signature)?;
    Ok(Signed {
        timestamp: ts.to_string(),
        mac,
    })
}

/// The indexes of `secrets` whose HMAC of `v0:{timestamp}:{body}` is the signature. Every secret is
/// checked, each in constant time.
pub fn matching(signed: &Signed, secrets: &[&[u8]], body: &[u8]) -> Result<Vec<usize>, Unverified> {
    let matching: Vec<usize> = secrets
        .iter()
        .enumerate()
        .filter(|(_, secret)| {
            let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
                return false;
            };
            mac.update(b"v0:");
            mac.update(signed.timestamp.as_bytes());
            mac.update(b":");
            mac.update(body);
            mac.verify_slice(&signed.mac).is_ok()
        })
        .map(|(i, _)| i)
        .collect();
    if matching.is_empty() {
        return Err(Unverified::Signature);
    }
    Ok(matching)
}

/// [`precheck`] then [`matching`].
pub fn verify(
    secrets: &[&[u8]],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<Vec<usize>, Unverified> {
    matching(&precheck(timestamp, signature, now)?, secrets, body)
}

/// Why a payload is not a canaryd button click.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("the body has no payload field")]
    NoPayload,
    #[error("payload: {0}")]
    Json(String),
    #[error("payload type {0:?} is not block_actions")]
    NotBlockActions(String),
    #[error("no action in the payload")]
    NoAction,
    #[error("action {0:?} is not a canaryd button")]
    UnknownAction(String),
    #[error("button value: {0}")]
    Value(String),
}

#[derive(Deserialize, Debug)]
struct RawPayload {
    #[serde(rename = "type")]
    kind: String,
    user: RawUser,
    #[serde(default)]
    actions: Vec<RawAction>,
    #[serde(default)]
    response_url: Option<String>,
    #[serde(default)]
    container: Option<RawContainer>,
}

#[derive(Deserialize, Debug)]
struct RawUser {
    id: String,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize, Debug)]
struct RawAction {
    action_id: String,
    #[serde(default)]
    value: Option<String>,
}

#[derive(Deserialize, Debug)]
struct RawContainer {
    #[serde(default)]
    message_ts: Option<String>,
}

/// A verified click on a canaryd button.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Click {
    pub user_id: String,
    pub user_name: Option<String>,
    pub kind: CommandKind,
    pub value: ButtonValue,
    pub response_url: Option<String>,
    pub message_ts: Option<String>,
}

impl Click {
    /// `spec.onBehalfOf` of the command: `slack:U123 (name)`.
    pub fn person(&self) -> String {
        match &self.user_name {
            Some(name) => format!("slack:{} ({name})", self.user_id),
            None => format!("slack:{}", self.user_id),
        }
    }

    /// The command's name: the same click on the same gate occurrence always gives the same name,
    /// so a double click or a replayed request meets the first command (AlreadyExists). `nth` > 0
    /// names a fresh try after the first ones were refused (expired, or during a failover).
    pub fn command_name(&self, nth: u32) -> String {
        let v = &self.value;
        let step = v.step.to_string();
        let mut h = Sha256::new();
        for part in [&v.ns, &v.policy, &v.canary, &step, self.kind.as_str()] {
            h.update(part.as_bytes());
            h.update([0u8]);
        }
        // Without an occurrence (older messages) the name is the one those messages always had.
        if let Some(at) = v.at {
            h.update(at.to_string().as_bytes());
            h.update([0u8]);
        }
        let digest = hex::encode(&h.finalize()[..8]);
        let policy: String = v.policy.chars().take(40).collect();
        let again = if nth > 0 { format!("-{nth}") } else { String::new() };
        format!(
            "{}-slack-{}-{digest}{again}",
            policy.trim_end_matches(['-', '.']),
            self.kind.as_str()
        )
    }
}

/// Parses an `application/x-www-form-urlencoded` body with `payload=<json>`.
pub fn parse_body(body: &[u8]) -> Result<Click, PayloadError> {
    let form: BTreeMap<String, String> =
        serde_urlencoded::from_bytes(body).map_err(|e| PayloadError::Json(e.to_string()))?;
    let payload = form.get("payload").ok_or(PayloadError::NoPayload)?;
    parse_payload(payload)
}

pub fn parse_payload(payload: &str) -> Result<Click, PayloadError> {
    let raw: RawPayload = serde_json::from_str(payload).map_err(|e| PayloadError::Json(e.to_string()))?;
    if raw.kind != "block_actions" {
        return Err(PayloadError::NotBlockActions(raw.kind));
    }
    let action = raw.actions.first().ok_or(PayloadError::NoAction)?;
    let kind = match action.action_id.as_str() {
        PROMOTE_ACTION => CommandKind::Promote,
        ABORT_ACTION => CommandKind::Abort,
        other => return Err(PayloadError::UnknownAction(other.into())),
    };
    let value = parse_value(action.value.as_deref().unwrap_or_default())?;
    Ok(Click {
        user_id: raw.user.id,
        user_name: raw.user.username.or(raw.user.name),
        kind,
        value,
        response_url: raw.response_url,
        message_ts: raw.container.and_then(|c| c.message_ts),
    })
}

pub fn parse_value(value: &str) -> Result<ButtonValue, PayloadError> {
    let v: ButtonValue = serde_json::from_str(value).map_err(|e| PayloadError::Value(e.to_string()))?;
    for (field, text) in [
        ("ns", &v.ns),
        ("policy", &v.policy),
        ("canary", &v.canary),
        ("target", &v.target),
    ] {
        if text.is_empty() {
            return Err(PayloadError::Value(format!("{field} is empty")));
        }
    }
    Ok(v)
}

/// Is `user` allowed by the target's list or the policy's approvers for that target? (Groups need
/// a call to Slack: see [`group_members_url`].)
pub fn listed(user: &str, target_name: &str, target: &SlackTarget, policy: &RolloutPolicy) -> bool {
    target.allowed_users.iter().any(|u| u == user)
        || policy
            .spec
            .notifications
            .iter()
            .filter(|n| n.target == target_name)
            .any(|n| n.approvers.iter().any(|u| u == user))
}

/// Slack's `usergroups.users.list` for one group, at the target's API base URL.
pub fn group_members_url(api_url: &str) -> String {
    format!("{}/usergroups.users.list", api_url.trim_end_matches('/'))
}

/// Where answers may be posted: Slack's hooks host, or the target's own API host (a stand-in). The
/// URL comes from a verified request, but the daemon posts nowhere else.
pub fn response_url_allowed(url: &str, api_url: &str) -> bool {
    let origin = |u: &str| -> Option<String> {
        let u = reqwest::Url::parse(u).ok()?;
        Some(format!(
            "{}://{}:{}",
            u.scheme(),
            u.host_str()?,
            u.port_or_known_default()?
        ))
    };
    match origin(url) {
        Some(o) => o == "https://hooks.slack.com:443" || origin(api_url).is_some_and(|a| a == o),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &str, ts: &str, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("v0:{ts}:").as_bytes());
        mac.update(body);
        format!("v0={}", hex::encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn slack_documented_example_verifies() {
        // The example of Slack's "Verifying requests from Slack".
        let secret = b"8f742231b10e8888abcd99yyyzzz85a5";
        let body = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        let sig = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";
        assert_eq!(
            verify(&[secret], Some("1531420618"), Some(sig), body, 1531420618 + 10),
            Ok(vec![0])
        );
    }

    /// (name, timestamp, signature, body, verifying secrets or why not).
    type Case<'a> = (
        &'a str,
        Option<String>,
        Option<String>,
        &'a [u8],
        Result<Vec<usize>, Unverified>,
    );

    #[test]
    fn signature_table() {
        let now = 1_700_000_000;
        let ts = now.to_string();
        let body = b"payload=%7B%7D";
        let good = sign("s3cret", &ts, body);
        let secrets: [&[u8]; 3] = [b"other", b"s3cret", b"s3cret"];
        let at = |skew: i64| (now + skew).to_string();
        let cases: Vec<Case> = vec![
            (
                "good, two targets share the app",
                Some(ts.clone()),
                Some(good.clone()),
                body,
                Ok(vec![1, 2]),
            ),
            ("no signature", Some(ts.clone()), None, body, Err(Unverified::Signature)),
            (
                "no timestamp",
                None,
                Some(good.clone()),
                body,
                Err(Unverified::Timestamp),
            ),
            (
                "not hex",
                Some(ts.clone()),
                Some("v0=zz".into()),
                body,
                Err(Unverified::Signature),
            ),
            (
                "no v0 prefix",
                Some(ts.clone()),
                Some(good.trim_start_matches("v0=").into()),
                body,
                Err(Unverified::Signature),
            ),
            (
                "other body",
                Some(ts.clone()),
                Some(good.clone()),
                b"payload=%7B%7D ",
                Err(Unverified::Signature),
            ),
            (
                "wrong secret",
                Some(ts.clone()),
                Some(sign("guess", &ts, body)),
                body,
                Err(Unverified::Signature),
            ),
            (
                "signed for another timestamp",
                Some(at(-1)),
                Some(good.clone()),
                body,
                Err(Unverified::Signature),
            ),
            (
                "5 minutes old",
                Some(at(-300)),
                Some(sign("s3cret", &at(-300), body)),
                body,
                Ok(vec![1, 2]),
            ),
            (
                "6 minutes old",
                Some(at(-360)),
                Some(sign("s3cret", &at(-360), body)),
                body,
                Err(Unverified::Timestamp),
            ),
            (
                "6 minutes ahead",
                Some(at(360)),
                Some(sign("s3cret", &at(360), body)),
                body,
                Err(Unverified::Timestamp),
            ),
        ];
        for (name, ts, sig, body, want) in cases {
            assert_eq!(
                verify(&secrets, ts.as_deref(), sig.as_deref(), body, now),
                want,
                "{name}"
            );
        }
    }

    fn payload(action: &str, value: &str) -> String {
        serde_json::json!({
            "type": "block_actions",
            "user": {"id": "U1", "username": "alice", "name": "alice", "team_id": "T1"},
            "api_app_id": "A1",
            "container": {"type": "message", "message_ts": "1.2", "channel_id": "C1"},
            "response_url": "https://hooks.slack.com/actions/T1/1/x",
            "actions": [{"action_id": action, "block_id": "b", "value": value, "type": "button"}]
        })
        .to_string()
    }

    const VALUE: &str = r#"{"ns":"dev","policy":"app","canary":"abc","step":1,"target":"team"}"#;

    #[test]
    fn clicks_parse_from_the_form_body() {
        let body = serde_urlencoded::to_string([("payload", payload(PROMOTE_ACTION, VALUE))]).unwrap();
        let click = parse_body(body.as_bytes()).unwrap();
        assert_eq!(click.kind, CommandKind::Promote);
        assert_eq!(click.person(), "slack:U1 (alice)");
        assert_eq!(click.message_ts.as_deref(), Some("1.2"));
        assert_eq!(
            click.value,
            ButtonValue {
                ns: "dev".into(),
                policy: "app".into(),
                canary: "abc".into(),
                step: 1,
                target: "team".into(),
                at: None,
            }
        );
        let abort = parse_payload(&payload(ABORT_ACTION, VALUE)).unwrap();
        assert_eq!(abort.kind, CommandKind::Abort);
        // Same click, same name; another action, step, canary or gate occurrence, another name.
        assert_eq!(
            click.command_name(0),
            parse_body(body.as_bytes()).unwrap().command_name(0)
        );
        assert_ne!(click.command_name(0), abort.command_name(0));
        let mut other = click.clone();
        other.value.step = 3;
        assert_ne!(click.command_name(0), other.command_name(0));
        assert!(click.command_name(0).starts_with("app-slack-promote-"));
        let mut first = click.clone();
        first.value.at = Some(1_700_000_000_000);
        let mut again = first.clone();
        again.value.at = Some(1_700_000_100_000);
        assert_ne!(first.command_name(0), again.command_name(0));
        assert_ne!(first.command_name(0), click.command_name(0));
        assert_eq!(first.command_name(1), format!("{}-1", first.command_name(0)));
    }

    #[test]
    fn bad_payloads_say_what_is_wrong() {
        let cases = [
            (payload("other", VALUE), "is not a canaryd button"),
            (payload(PROMOTE_ACTION, r#"{"ns":"dev"}"#), "missing field"),
            (
                payload(
                    PROMOTE_ACTION,
                    r#"{"ns":"dev","policy":"app","canary":"abc","step":1,"target":"t","x":1}"#,
                ),
                "unknown field",
            ),
            (
                payload(
                    PROMOTE_ACTION,
                    r#"{"ns":"","policy":"app","canary":"abc","step":1,"target":"t"}"#,
                ),
                "ns is empty",
            ),
            (
                payload(PROMOTE_ACTION, VALUE).replace("block_actions", "view_submission"),
                "not block_actions",
            ),
            ("{".into(), "payload"),
        ];
        for (p, want) in cases {
            let err = parse_payload(&p).unwrap_err().to_string();
            assert!(err.contains(want), "{err} should contain {want}");
        }
        assert_eq!(parse_body(b"token=x"), Err(PayloadError::NoPayload));
    }

    #[test]
    fn answers_go_only_to_slack_or_the_targets_api_host() {
        let api = "https://slack.com/api";
        assert!(response_url_allowed("https://hooks.slack.com/actions/T1/2/x", api));
        assert!(!response_url_allowed("http://hooks.slack.com/actions/T1/2/x", api));
        assert!(!response_url_allowed("https://evil.example/actions", api));
        assert!(response_url_allowed(
            "http://127.0.0.1:9/respond/1",
            "http://127.0.0.1:9/api"
        ));
        assert!(!response_url_allowed(
            "http://127.0.0.1:10/respond/1",
            "http://127.0.0.1:9/api"
        ));
    }
}
