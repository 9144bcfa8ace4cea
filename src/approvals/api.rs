//! The approval API: `POST /api/v1/namespaces/{ns}/rolloutpolicies/{name}/{command}` for bots and
//! CI. The caller's bearer token is authenticated with a TokenReview and authorized with a
//! SubjectAccessReview for what the CLI needs for the same command (`create rolloutcommands` in
//! the namespace; see auth.rs), so one RBAC rule governs the CLI, the API and who may be
//! allow-listed. A caller may pin the `canary` and `step` it means (JSON body): a call that arrives
//! after the rollout moved on is refused with 409 and the current values, and does nothing.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::authentication::v1::UserInfo;
use kube::ResourceExt;
use serde::{Deserialize, Serialize};
use tracing::info;

use super::auth::{Access, Refused};
use super::create::{Binding, Created, Naming};
use super::listener::Approvals;
use crate::resources::command::{CommandKind, MAX_HASH, Outcome, RolloutCommandStatus};
use crate::resources::policy::RolloutPolicy;

/// How long the API waits for the leader's outcome before answering `pending`.
pub const OUTCOME_WAIT: Duration = Duration::from_secs(5);

/// The API's answer: what became of the request.
#[derive(Serialize, Debug, Default)]
pub struct Answer {
    /// acted | nothing-to-approve | refused | pending | bad-request | unauthorized |
    /// too-many-failures | forbidden | not-found | error
    pub result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// The rollout's canary and step now, when a pin did not match them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current: Option<Current>,
}

/// `status.canary.templateHash` and `status.step` of the policy (null when there is none).
#[derive(Serialize, Deserialize, Debug, Default, Clone, PartialEq, Eq)]
pub struct Current {
    pub canary: Option<String>,
    pub step: Option<u32>,
}

impl std::fmt::Display for Current {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let canary = self.canary.as_deref().unwrap_or("none");
        match self.step {
            Some(step) => write!(f, "canary {canary} step {step}"),
            None => write!(f, "canary {canary}, no step"),
        }
    }
}

/// The request's body: which rollout and step the caller means. Both optional; an empty body pins
/// nothing (the command binds to whatever is current when it arrives).
#[derive(Deserialize, Debug, Default, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Pin {
    #[serde(default)]
    pub canary: Option<String>,
    #[serde(default)]
    pub step: Option<u32>,
}

fn answer(code: StatusCode, a: Answer) -> Response {
    (code, axum::Json(a)).into_response()
}

fn fail(code: StatusCode, result: &'static str, message: impl Into<String>) -> Response {
    answer(
        code,
        Answer {
            result,
            message: message.into(),
            ..Default::default()
        },
    )
}

fn kind_of(segment: &str) -> Option<CommandKind> {
    CommandKind::ALL.into_iter().find(|k| k.as_str() == segment)
}

/// The refusals that mean the gate the caller meant is not there (any more).
fn nothing_to_approve(reason: &str) -> bool {
    matches!(reason, "NoRollout" | "WrongCanary" | "WrongStep" | "Expired")
}

/// The pin of a request body (empty: none).
pub fn parse_pin(body: &[u8]) -> Result<Pin, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Pin::default());
    }
    let pin: Pin = serde_json::from_slice(body).map_err(|e| format!("the body: {e}"))?;
    if pin.canary.as_ref().is_some_and(|c| c.is_empty() || c.len() > MAX_HASH) {
        return Err(format!("canary: 1 to {MAX_HASH} characters"));
    }
    Ok(pin)
}

/// Does the pin match the rollout now? If not, the refusal's reason.
pub fn pin_mismatch(pin: &Pin, current: &Current) -> Option<&'static str> {
    if current.canary.is_none() && (pin.canary.is_some() || pin.step.is_some()) {
        return Some("NoRollout");
    }
    if pin.canary.is_some() && pin.canary != current.canary {
        return Some("WrongCanary");
    }
    if pin.step.is_some() && pin.step != current.step {
        return Some("WrongStep");
    }
    None
}

pub(super) async fn api_command(
    State(app): State<Approvals>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((ns, name, command)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(kind) = kind_of(&command) else {
        return fail(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("unknown command {command:?}: promote, promote-full, abort, pause, resume or retry"),
        );
    };
    let user = match app.caller(&headers, peer, &ns).await {
        Ok(user) => user,
        Err(response) => return response,
    };
    let username = user.username.clone().unwrap_or_default();
    let pin = match parse_pin(&body) {
        Ok(pin) => pin,
        Err(e) => return fail(StatusCode::BAD_REQUEST, "bad-request", e),
    };
    if let Some(message) = app.unwatched(&ns) {
        return fail(StatusCode::NOT_FOUND, "not-found", message);
    }
    let policy = match app.policy(&ns, &name).await {
        Ok(Some(p)) => p,
        Ok(None) => {
            return fail(
                StatusCode::NOT_FOUND,
                "not-found",
                format!("no RolloutPolicy {ns}/{name}"),
            );
        }
        Err(e) => {
            let message = format!("reading RolloutPolicy {ns}/{name}: {e}");
            return fail(StatusCode::BAD_GATEWAY, "error", message);
        }
    };
    let bound = match bind(&policy, kind, &pin, username.clone()) {
        Ok(b) => b,
        Err(response) => return *response,
    };
    let named = Naming::Generate(format!("{name}-{}-", kind.as_str()));
    let created = match app.create(&policy, &bound, named).await {
        Ok(Created::New(name)) => name,
        Ok(Created::Exists(c)) => c.name_any(), // a generated name: cannot happen
        Err(e) => {
            return fail(
                StatusCode::BAD_GATEWAY,
                "error",
                format!("creating the RolloutCommand: {e}"),
            );
        }
    };
    info!(user = %username, %ns, policy = %name, command = kind.as_str(), rolloutcommand = %created, "approval API: command created");
    let outcome = app.wait_outcome(&ns, &created, OUTCOME_WAIT).await;
    let by = format!("{username} via {}", app.inner.identity);
    outcome_answer(&ns, created, by, outcome)
}

/// The command for the rollout as it is now, if the caller's pin names it.
fn bind(policy: &RolloutPolicy, kind: CommandKind, pin: &Pin, on_behalf_of: String) -> Result<Binding, Box<Response>> {
    let status = policy.status.clone().unwrap_or_default();
    let current = Current {
        canary: status.canary.as_ref().map(|c| c.template_hash.clone()),
        step: status.step,
    };
    let ns = policy.namespace().unwrap_or_default();
    let name = policy.name_any();
    let refused = |reason: &str, message: String| {
        let a = Answer {
            result: "nothing-to-approve",
            reason: Some(reason.into()),
            message,
            current: Some(current.clone()),
            ..Default::default()
        };
        Box::new(answer(StatusCode::CONFLICT, a))
    };
    if let Some(reason) = pin_mismatch(pin, &current) {
        let message = format!(
            "RolloutPolicy {ns}/{name} is now at {current}, not at the one the call names ({reason}); nothing done"
        );
        return Err(refused(reason, message));
    }
    let Some(canary) = current.canary.clone() else {
        let message = format!(
            "RolloutPolicy {ns}/{name}: no rollout in progress, nothing to {}",
            kind.as_str()
        );
        return Err(refused("NoRollout", message));
    };
    Ok(Binding {
        kind,
        canary,
        step: current.step,
        on_behalf_of,
    })
}

fn outcome_answer(ns: &str, created: String, by: String, outcome: Option<RolloutCommandStatus>) -> Response {
    let Some(s) = outcome else {
        let message = format!("RolloutCommand {ns}/{created} created; canaryd has not handled it yet (see its status)");
        let a = Answer {
            result: "pending",
            message,
            command: Some(created),
            by: Some(by),
            ..Default::default()
        };
        return answer(StatusCode::ACCEPTED, a);
    };
    let (code, result) = match s.outcome {
        Outcome::Acted => (StatusCode::OK, "acted"),
        Outcome::Refused if nothing_to_approve(&s.reason) => (StatusCode::CONFLICT, "nothing-to-approve"),
        Outcome::Refused => (StatusCode::CONFLICT, "refused"),
    };
    let a = Answer {
        result,
        command: Some(created),
        reason: Some(s.reason),
        message: s.message,
        by: Some(by),
        current: None,
    };
    answer(code, a)
}

impl Approvals {
    /// The authenticated user of the request, if they may create RolloutCommands in `ns`.
    async fn caller(&self, headers: &HeaderMap, peer: SocketAddr, ns: &str) -> Result<UserInfo, Response> {
        let auth = &self.inner.auth;
        let user = auth.authenticate(headers, peer.ip()).await.map_err(refusal)?;
        let who = user.username.clone().unwrap_or_default();
        match auth.authorize(&user, ns).await.map_err(refusal)? {
            Access::Allowed => Ok(user),
            Access::Denied(why) => {
                info!(user = %who, %ns, "approval API: forbidden");
                let message = format!("{who} may not create rolloutcommands in namespace {ns} (as the CLI would need)");
                let a = Answer {
                    result: "forbidden",
                    reason: Some(why),
                    message,
                    ..Default::default()
                };
                Err(answer(StatusCode::FORBIDDEN, a))
            }
        }
    }
}

fn refusal(r: Refused) -> Response {
    let message = r.to_string();
    match r {
        Refused::NoToken | Refused::BadToken => fail(StatusCode::UNAUTHORIZED, "unauthorized", message),
        Refused::TooManyFailures(wait) => {
            let mut response = fail(StatusCode::TOO_MANY_REQUESTS, "too-many-failures", message);
            if let Ok(v) = HeaderValue::from_str(&wait.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
            response
        }
        Refused::Unavailable(_) => fail(StatusCode::SERVICE_UNAVAILABLE, "error", message),
    }
}

#[cfg(test)]
#[path = "api_tests.rs"]
pub(crate) mod tests;
