//! Slack's interactivity endpoint, `POST /slack/interactivity`: a click on Approve / Abort. The
//! request is verified from memory (signature against the cached signing secrets, payload) and
//! answered at once, within Slack's 3 seconds whatever the API server or Slack's group lookup
//! take; the click is then carried out (policy, approvers, RolloutCommand, the leader's outcome)
//! and what became of it goes to the click's `response_url` as an ephemeral message.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use kube::ResourceExt;
use serde_json::json;
use std::time::Duration;
use tracing::{info, warn};

use super::create::{Binding, Created, Naming};

use super::keys::Known;
use super::listener::Approvals;
use crate::approvals::slack::{self as interactivity, Click, Unverified};
use crate::resources::command::{Outcome, RolloutCommand};
use crate::resources::policy::RolloutPolicy;

/// How long a click's outcome is waited for before saying it is not handled yet.
const SLACK_OUTCOME_WAIT: Duration = Duration::from_secs(10);
/// Largest `usergroups.users.list` answer read: Slack's user ids are ~11 bytes, so this holds far
/// more than [`MAX_GROUP_MEMBERS`]; whatever answers at the target's API address is bounded.
const GROUP_ANSWER_LIMIT: usize = 1024 * 1024;
/// Most members of one Slack user group that an approvers' check reads.
const MAX_GROUP_MEMBERS: usize = 20_000;
/// Refused commands of one click's gate occurrence that a fresh click may follow (a bound on the
/// objects a clicker can create).
const MAX_REFUSED_CLICKS: u32 = 8;

/// 200 for every click Slack signed, at once; then the click is carried out in the background.
/// Unsigned, badly signed or stale requests get 401 and nothing else; none reads anything from
/// the API server.
pub(super) async fn slack_interactivity(State(app): State<Approvals>, headers: HeaderMap, body: Bytes) -> Response {
    let (target, click) = match app.verify(&headers, &body).await {
        Ok(verified) => verified,
        Err(response) => return response,
    };
    let Ok(permit) = app.inner.clicks.clone().try_acquire_owned() else {
        warn!("Slack interactivity: too many clicks in flight; refusing one");
        return (StatusCode::SERVICE_UNAVAILABLE, "busy\n").into_response();
    };
    tokio::spawn(async move {
        let text = app.carry_out(&target, &click).await;
        app.post_answer(&target.slack.api_url, &click, &text).await;
        drop(permit);
    });
    StatusCode::OK.into_response()
}

fn unverified(why: Unverified) -> Response {
    (StatusCode::UNAUTHORIZED, format!("{why}\n")).into_response()
}

impl Approvals {
    /// The click, and the target whose signing secret signed it (the one its button names).
    async fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<(Known, Click), Response> {
        let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
        let signed = interactivity::precheck(
            header("x-slack-request-timestamp"),
            header("x-slack-signature"),
            Timestamp::now().as_second(),
        )
        .map_err(unverified)?;
        let known = self.inner.keys.known().await.map_err(|e| {
            warn!(error = %e, "Slack interactivity: not ready");
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable\n").into_response()
        })?;
        let secrets: Vec<&[u8]> = known.iter().map(|k| k.secret.as_bytes()).collect();
        let matching = interactivity::matching(&signed, &secrets, body).map_err(unverified)?;
        let click = interactivity::parse_body(body).map_err(|e| {
            info!(error = %e, "Slack interactivity: not a canaryd click");
            (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response()
        })?;
        // The button names its target; the signature must be that target's.
        let target = matching
            .iter()
            .filter_map(|&i| known.get(i))
            .find(|k| k.name == click.value.target)
            .ok_or_else(|| unverified(Unverified::Signature))?;
        Ok((target.clone(), click))
    }

    /// Carry out a verified click; returns what to tell the user.
    async fn carry_out(&self, target: &Known, click: &Click) -> String {
        let v = &click.value;
        let what = format!("{} of {}/{}", click.kind.as_str(), v.ns, v.policy);
        if let Some(message) = self.unwatched(&v.ns) {
            return format!("Nothing done: {message}.");
        }
        let policy = match self.policy(&v.ns, &v.policy).await {
            Ok(Some(p)) => p,
            Ok(None) => return format!("Nothing done: there is no RolloutPolicy {}/{}.", v.ns, v.policy),
            Err(e) => {
                warn!(error = %e, "Slack interactivity: cannot read the policy");
                return format!(
                    "Nothing done: cannot read RolloutPolicy {}/{} now; try again.",
                    v.ns, v.policy
                );
            }
        };
        // A target only speaks for the policies that send to it.
        if !policy.spec.notifications.iter().any(|n| n.target == target.name) {
            return format!(
                "Nothing done: RolloutPolicy {}/{} does not name NotificationTarget {}.",
                v.ns, v.policy, target.name
            );
        }
        if !self.allowed(target, click, &policy).await {
            info!(user = %click.person(), action = %what, "Slack click refused: not an approver");
            return format!("You are not allowed to {what}: ask a platform admin to add you.");
        }
        let bound = Binding {
            kind: click.kind,
            canary: v.canary.clone(),
            step: Some(v.step),
            on_behalf_of: click.person(),
        };
        let name = match self.create_for_click(&policy, &bound, click).await {
            Ok(Created::New(name)) => name,
            Ok(Created::Exists(first)) => return already_handled(&what, &first),
            Err(e) => {
                warn!(error = %e, "Slack interactivity: cannot create the command");
                return format!("Nothing done: could not record the {what} ({e}); try again.");
            }
        };
        info!(user = %click.person(), action = %what, rolloutcommand = %name, "Slack click: command created");
        match self.wait_outcome(&v.ns, &name, SLACK_OUTCOME_WAIT).await {
            Some(s) if s.outcome == Outcome::Acted => format!("Done: {what} by <@{}>: {}", click.user_id, s.message),
            Some(s) => format!("Nothing done: {what}: {} ({})", s.message, s.reason),
            None => format!("Requested: {what} (RolloutCommand {name}); canaryd has not handled it yet."),
        }
    }

    /// The click's command: the first of its gate occurrence, or the one it repeats. A refused one
    /// (expired, or refused during a failover) does not stand in the way of a fresh click.
    async fn create_for_click(
        &self,
        policy: &RolloutPolicy,
        bound: &Binding,
        click: &Click,
    ) -> Result<Created, kube::Error> {
        let mut nth = 0;
        loop {
            let created = self
                .create(policy, bound, Naming::Fixed(click.command_name(nth)))
                .await?;
            match created {
                Created::Exists(first)
                    if nth < MAX_REFUSED_CLICKS
                        && first.status.as_ref().is_some_and(|s| s.outcome == Outcome::Refused) =>
                {
                    nth += 1
                }
                other => return Ok(other),
            }
        }
    }

    /// Listed in the target or the policy, or a member of one of the target's Slack user groups.
    async fn allowed(&self, target: &Known, click: &Click, policy: &RolloutPolicy) -> bool {
        if interactivity::listed(&click.user_id, &target.name, &target.slack, policy) {
            return true;
        }
        if target.slack.allowed_groups.is_empty() {
            return false;
        }
        let Some(token_ref) = target.slack.bot_token.as_ref() else {
            warn!(target = %target.name, "allowedGroups need a bot token to read the groups");
            return false;
        };
        let Some(token) = self.inner.keys.value(token_ref) else {
            warn!(target = %target.name, secret = %token_ref.name, "no bot token at this key");
            return false;
        };
        for group in &target.slack.allowed_groups {
            match self.group_members(&target.slack.api_url, &token, group).await {
                Ok(members) if members.iter().any(|m| m == &click.user_id) => return true,
                Ok(_) => {}
                Err(e) => warn!(target = %target.name, %group, error = %e, "usergroups.users.list failed"),
            }
        }
        false
    }

    async fn group_members(&self, api_url: &str, token: &str, group: &str) -> Result<Vec<String>, String> {
        #[derive(serde::Deserialize)]
        struct Members {
            ok: bool,
            #[serde(default)]
            users: Vec<String>,
            #[serde(default)]
            error: Option<String>,
        }
        let response = self
            .inner
            .http
            .get(interactivity::group_members_url(api_url))
            .query(&[("usergroup", group)])
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        let body = crate::http::body::read_capped(response, GROUP_ANSWER_LIMIT, |e| e.without_url().to_string())
            .await
            .map_err(|e| e.map_or_else(|transport| transport, |too_large| too_large.to_string()))?;
        let members: Members = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        if members.users.len() > MAX_GROUP_MEMBERS {
            return Err(format!("the group has more than {MAX_GROUP_MEMBERS} members"));
        }
        if members.ok {
            Ok(members.users)
        } else {
            Err(members.error.unwrap_or_else(|| "not ok".into()))
        }
    }

    /// An ephemeral message to the clicking user at the click's `response_url` (Slack's protocol:
    /// POST JSON with `text`), leaving the original message as it is.
    async fn post_answer(&self, api_url: &str, click: &Click, text: &str) {
        let Some(url) = click.response_url.as_deref() else {
            return;
        };
        if !interactivity::response_url_allowed(url, api_url) {
            warn!("Slack interactivity: response_url is neither Slack's nor the target's API host; not answering");
            return;
        }
        let body = json!({"response_type": "ephemeral", "replace_original": false, "text": text});
        match self.inner.http.post(url).json(&body).send().await {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => warn!(status = %r.status(), "Slack refused the answer"),
            Err(e) => warn!(error = %e.without_url(), "cannot answer Slack"),
        }
    }
}

/// The answer to a click that met an existing command: who gave it, when, and what became of it.
fn already_handled(what: &str, first: &RolloutCommand) -> String {
    let by = first
        .spec
        .on_behalf_of
        .clone()
        .unwrap_or_else(|| first.spec.requested_by.clone());
    let at = first
        .creation_timestamp()
        .map(|t| t.0.to_string())
        .unwrap_or_else(|| "an unknown time".into());
    let outcome = match &first.status {
        Some(s) if s.outcome == Outcome::Acted => format!("it acted: {}", s.message),
        Some(s) => format!("it did nothing: {} ({})", s.message, s.reason),
        None => "canaryd has not handled it yet".into(),
    };
    format!("Nothing done: this {what} was already handled by {by} at {at}; {outcome}.")
}

#[cfg(test)]
#[path = "click_tests.rs"]
mod tests;
