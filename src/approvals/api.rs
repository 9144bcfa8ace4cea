//! The approvals listener (`--approvals-listen`): the HTTP approval API for bots and CI and Slack's
//! interactivity endpoint, on their own port so that only these go through an Ingress (/metrics
//! stays on the internal one). Both replicas serve it: a request only becomes a RolloutCommand,
//! which the leader admits and carries out like one from the CLI (src/controller/commands.rs).
//!
//! The API authenticates a bearer token with a TokenReview and authorizes with a
//! SubjectAccessReview for what the CLI needs for the same command (`create rolloutcommands` in the
//! namespace), so one RBAC rule governs the CLI, the API and who may be allow-listed. The command
//! names the caller in `spec.onBehalfOf` (admission allows that field from the daemon only).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use jiff::Timestamp;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, UserInfo};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde_json::json;
use tracing::{info, warn};

use crate::approvals::slack::{self as interactivity, Click, Unverified};
use crate::cache::slim::Decoded;
use crate::resources::command::{CommandKind, Outcome, RolloutCommand, RolloutCommandSpec, RolloutCommandStatus};
use crate::resources::policy::RolloutPolicy;
use crate::resources::target::{NotificationTarget, SlackTarget};
use crate::secrets::secret_value;

/// Larger bodies get 413: a Slack payload or an API call is a few KiB.
pub const BODY_LIMIT: usize = 64 * 1024;
/// Whole-request bound (reading the body included): a slow client cannot hold a worker.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the API waits for the leader's outcome before answering `pending`.
pub const OUTCOME_WAIT: Duration = Duration::from_secs(5);
/// How long an answer to a Slack click waits for the outcome (posted to `response_url` later).
const SLACK_OUTCOME_WAIT: Duration = Duration::from_secs(10);
/// Slack Web API and `response_url` calls.
const SLACK_TIMEOUT: Duration = Duration::from_secs(3);
const FIELD_MANAGER: &str = "canaryd-approvals";
/// Refused commands of one click's gate occurrence that a fresh click may follow (a bound on the
/// objects a clicker can create).
const MAX_REFUSED_CLICKS: u32 = 8;

/// What the listener needs: the daemon's client and who it is (`spec.requestedBy` of its commands).
#[derive(Clone)]
pub struct Approvals {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    http: reqwest::Client,
    identity: String,
    /// The namespace the daemon watches (None: all); commands elsewhere would never be handled.
    namespace: Option<String>,
    secrets_namespace: String,
}

impl Approvals {
    pub fn new(
        client: Client,
        identity: String,
        namespace: Option<String>,
        secrets_namespace: String,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(SLACK_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                http,
                identity,
                namespace,
                secrets_namespace,
            }),
        })
    }
}

pub fn router(approvals: Approvals) -> Router {
    Router::new()
        .route(
            "/api/v1/namespaces/{ns}/rolloutpolicies/{name}/{command}",
            post(api_command),
        )
        .route("/slack/interactivity", post(slack_interactivity))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn(deadline))
        .with_state(approvals)
}

/// Request headers must arrive within this (a connection-level bound; the body is within
/// [`REQUEST_TIMEOUT`]).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more are closed at accept.
pub const MAX_CONNECTIONS: usize = 256;

/// Largest `usergroups.users.list` answer read: Slack's user ids are ~11 bytes, so this holds far
/// more than [`MAX_GROUP_MEMBERS`]; whatever answers at the target's API address is bounded.
const GROUP_ANSWER_LIMIT: usize = 1024 * 1024;
/// Most members of one Slack user group that an approvers' check reads.
const MAX_GROUP_MEMBERS: usize = 20_000;

/// Serves `app` over HTTP/1.1 with [`HEADER_TIMEOUT`] and [`MAX_CONNECTIONS`] (`axum::serve` sets
/// no header timeout, so a client sending its headers slowly would hold a connection for ever).
pub async fn serve(listener: tokio::net::TcpListener, app: Router) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!(error = %e, "approvals listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            continue; // dropping the stream closes it
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let served = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "approvals connection ended");
            }
            drop(permit);
        });
    }
}

async fn deadline(request: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "timed out\n").into_response(),
    }
}

/// The API's answer: what became of the request.
#[derive(Serialize, Debug, Default)]
pub struct Answer {
    /// acted | nothing-to-approve | refused | pending | unauthorized | forbidden | not-found | error
    pub result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
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

async fn api_command(
    State(app): State<Approvals>,
    Path((ns, name, command)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let Some(kind) = kind_of(&command) else {
        return fail(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("unknown command {command:?}: promote, promote-full, abort, pause, resume or retry"),
        );
    };
    let user = match app.authenticate(&headers).await {
        Ok(user) => user,
        Err(response) => return response,
    };
    let username = user.username.clone().unwrap_or_default();
    if let Err(response) = app.authorize(&user, &ns).await {
        info!(user = %username, %ns, policy = %name, command = kind.as_str(), "approval API: forbidden");
        return response;
    }
    if let Some(watched) = &app.inner.namespace
        && watched != &ns
    {
        return fail(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("this canaryd watches namespace {watched} only"),
        );
    }
    let policies: Api<RolloutPolicy> = Api::namespaced(app.inner.client.clone(), &ns);
    let policy = match policies.get_opt(&name).await {
        Ok(Some(p)) => p,
        Ok(None) => {
            return fail(
                StatusCode::NOT_FOUND,
                "not-found",
                format!("no RolloutPolicy {ns}/{name}"),
            );
        }
        Err(e) => {
            return fail(
                StatusCode::BAD_GATEWAY,
                "error",
                format!("reading RolloutPolicy {ns}/{name}: {e}"),
            );
        }
    };
    let status = policy.status.clone().unwrap_or_default();
    let Some(canary) = status.canary.as_ref() else {
        return answer(
            StatusCode::CONFLICT,
            Answer {
                result: "nothing-to-approve",
                reason: Some("NoRollout".into()),
                message: format!(
                    "RolloutPolicy {ns}/{name}: no rollout in progress, nothing to {}",
                    kind.as_str()
                ),
                ..Default::default()
            },
        );
    };
    let bound = Binding {
        kind,
        canary: canary.template_hash.clone(),
        step: status.step,
        on_behalf_of: username.clone(),
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
    let by = Some(format!("{username} via {}", app.inner.identity));
    match outcome {
        Some(s) => {
            let (code, result) = match s.outcome {
                Outcome::Acted => (StatusCode::OK, "acted"),
                Outcome::Refused if nothing_to_approve(&s.reason) => (StatusCode::CONFLICT, "nothing-to-approve"),
                Outcome::Refused => (StatusCode::CONFLICT, "refused"),
            };
            answer(
                code,
                Answer {
                    result,
                    command: Some(created),
                    reason: Some(s.reason),
                    message: s.message,
                    by,
                },
            )
        }
        None => answer(
            StatusCode::ACCEPTED,
            Answer {
                result: "pending",
                message: format!(
                    "RolloutCommand {ns}/{created} created; canaryd has not handled it yet (see its status)"
                ),
                command: Some(created),
                by,
                ..Default::default()
            },
        ),
    }
}

impl Approvals {
    /// TokenReview of the bearer token: who is calling. The token is never logged.
    async fn authenticate(&self, headers: &HeaderMap) -> Result<UserInfo, Response> {
        let unauthorized = |m: &str| fail(StatusCode::UNAUTHORIZED, "unauthorized", m);
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| unauthorized("a Kubernetes bearer token is required (Authorization: Bearer …)"))?;
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                ..Default::default()
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.inner.client.clone());
        let reviewed = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| fail(StatusCode::BAD_GATEWAY, "error", format!("TokenReview failed: {e}")))?;
        match reviewed.status {
            Some(s) if s.authenticated == Some(true) => match s.user {
                Some(user) if user.username.as_deref().is_some_and(|u| !u.is_empty()) => Ok(user),
                _ => Err(unauthorized("the token is not valid")),
            },
            _ => Err(unauthorized("the token is not valid")),
        }
    }

    /// SubjectAccessReview: may `user` create RolloutCommands in `ns`, as the CLI does?
    async fn authorize(&self, user: &UserInfo, ns: &str) -> Result<(), Response> {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username.clone(),
                uid: user.uid.clone(),
                groups: user.groups.clone(),
                extra: user.extra.clone(),
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(ns.into()),
                    verb: Some("create".into()),
                    group: Some(RolloutCommand::group(&()).into_owned()),
                    resource: Some(RolloutCommand::plural(&()).into_owned()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let api: Api<SubjectAccessReview> = Api::all(self.inner.client.clone());
        let reviewed = api.create(&PostParams::default(), &review).await.map_err(|e| {
            fail(
                StatusCode::BAD_GATEWAY,
                "error",
                format!("SubjectAccessReview failed: {e}"),
            )
        })?;
        let status = reviewed.status.unwrap_or_default();
        if status.allowed {
            return Ok(());
        }
        let who = user.username.clone().unwrap_or_default();
        let why = status
            .reason
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| "no RBAC rule allows it".into());
        Err(answer(
            StatusCode::FORBIDDEN,
            Answer {
                result: "forbidden",
                reason: Some(why),
                message: format!("{who} may not create rolloutcommands in namespace {ns} (as the CLI would need)"),
                ..Default::default()
            },
        ))
    }

    /// Create the command for `policy`, owned by it (it goes when the policy goes).
    async fn create(&self, policy: &RolloutPolicy, b: &Binding, naming: Naming) -> Result<Created, kube::Error> {
        let ns = policy.namespace().unwrap_or_default();
        let owner = crate::approvals::admission::owned_by(policy);
        let (name, generate_name) = match &naming {
            Naming::Fixed(n) => (Some(n.clone()), None),
            Naming::Generate(prefix) => (None, Some(prefix.clone())),
        };
        let command = RolloutCommand {
            metadata: ObjectMeta {
                name,
                generate_name,
                namespace: Some(ns.clone()),
                owner_references: Some(vec![owner]),
                ..Default::default()
            },
            spec: RolloutCommandSpec {
                policy: policy.name_any(),
                command: b.kind,
                canary: b.canary.clone(),
                step: b.step,
                requested_by: self.inner.identity.clone(),
                on_behalf_of: Some(b.on_behalf_of.clone()),
            },
            status: None,
        };
        let api: Api<RolloutCommand> = Api::namespaced(self.inner.client.clone(), &ns);
        let pp = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        match api.create(&pp, &command).await {
            Ok(c) => Ok(Created::New(c.name_any())),
            Err(kube::Error::Api(s)) if s.code == 409 => match &naming {
                Naming::Fixed(n) => Ok(Created::Exists(Box::new(api.get(n).await?))),
                Naming::Generate(_) => Err(kube::Error::Api(s)),
            },
            Err(e) => Err(e),
        }
    }

    /// The leader's outcome of command `name`, if it comes within `wait`.
    async fn wait_outcome(&self, ns: &str, name: &str, wait: Duration) -> Option<RolloutCommandStatus> {
        let api: Api<RolloutCommand> = Api::namespaced(self.inner.client.clone(), ns);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Ok(Some(c)) = api.get_opt(name).await
                && c.status.is_some()
            {
                return c.status;
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// What a command is bound to and for whom.
struct Binding {
    kind: CommandKind,
    canary: String,
    step: Option<u32>,
    on_behalf_of: String,
}

enum Naming {
    /// The same request always gives the same name (Slack: a repeat meets the first command).
    Fixed(String),
    Generate(String),
}

enum Created {
    New(String),
    Exists(Box<RolloutCommand>),
}

// ---- Slack ----------------------------------------------------------------------------------------

/// A Slack target with its signing secret, read for one request.
struct Known {
    name: String,
    slack: SlackTarget,
    secret: String,
}

/// Answers 200 at once for everything Slack signed (Slack wants an answer within 3 s); what
/// happened goes to the click's `response_url` as an ephemeral message. Unsigned, badly signed or
/// stale requests get 401 and nothing else.
async fn slack_interactivity(State(app): State<Approvals>, headers: HeaderMap, body: Bytes) -> Response {
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    // Stale or unsigned requests cost no API call.
    let signed = match interactivity::precheck(
        header("x-slack-request-timestamp"),
        header("x-slack-signature"),
        Timestamp::now().as_second(),
    ) {
        Ok(s) => s,
        Err(why) => return unverified(why),
    };
    let known = match app.slack_targets().await {
        Ok(k) => k,
        Err(e) => {
            warn!(error = %e, "Slack interactivity: cannot read the Slack targets");
            return (StatusCode::SERVICE_UNAVAILABLE, "unavailable\n").into_response();
        }
    };
    let secrets: Vec<&[u8]> = known.iter().map(|k| k.secret.as_bytes()).collect();
    let matching = match interactivity::matching(&signed, &secrets, &body) {
        Ok(m) => m,
        Err(why) => return unverified(why),
    };
    let click = match interactivity::parse_body(&body) {
        Ok(c) => c,
        Err(e) => {
            info!(error = %e, "Slack interactivity: not a canaryd click");
            return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response();
        }
    };
    // The button names its target; the signature must be that target's.
    let Some(target) = matching
        .iter()
        .filter_map(|&i| known.get(i))
        .find(|k| k.name == click.value.target)
    else {
        return unverified(Unverified::Signature);
    };
    let text = app.handle_click(target, &click).await;
    if let Some(text) = text {
        app.respond_later(target, &click, text);
    }
    StatusCode::OK.into_response()
}

fn unverified(why: Unverified) -> Response {
    (StatusCode::UNAUTHORIZED, format!("{why}\n")).into_response()
}

impl Approvals {
    /// Slack NotificationTargets with a readable signing secret. One bad target never hides the others.
    async fn slack_targets(&self) -> Result<Vec<Known>, kube::Error> {
        // Decoded one by one: a target that cannot be decoded is skipped, not every target.
        let targets: Api<Decoded<NotificationTarget>> = Api::all(self.inner.client.clone());
        let secrets: Api<Secret> = Api::namespaced(self.inner.client.clone(), &self.inner.secrets_namespace);
        let mut known = Vec::new();
        for t in targets.list(&Default::default()).await?.items {
            let Decoded::Ok(t) = t else { continue };
            let name = t.name_any();
            let Some(slack) = t.spec.slack else { continue };
            let Some(r) = slack.signing_secret.as_ref() else {
                continue;
            };
            match secret_value(&secrets, r).await {
                Ok(secret) if !secret.is_empty() => known.push(Known { name, slack, secret }),
                Ok(_) => warn!(target = %name, "the signing secret is empty"),
                Err(e) => warn!(target = %name, error = %e, "cannot read the signing secret"),
            }
        }
        Ok(known)
    }

    /// Act on a verified click; returns the text to answer (None: the answer follows later).
    async fn handle_click(&self, target: &Known, click: &Click) -> Option<String> {
        let v = &click.value;
        let what = format!("{} of {}/{}", click.kind.as_str(), v.ns, v.policy);
        if let Some(watched) = &self.inner.namespace
            && watched != &v.ns
        {
            return Some(format!("Nothing done: this canaryd watches namespace {watched} only."));
        }
        let policies: Api<RolloutPolicy> = Api::namespaced(self.inner.client.clone(), &v.ns);
        let policy = match policies.get_opt(&v.policy).await {
            Ok(Some(p)) => p,
            Ok(None) => {
                return Some(format!(
                    "Nothing done: there is no RolloutPolicy {}/{}.",
                    v.ns, v.policy
                ));
            }
            Err(e) => {
                warn!(error = %e, "Slack interactivity: cannot read the policy");
                return Some(format!(
                    "Nothing done: cannot read RolloutPolicy {}/{} now; try again.",
                    v.ns, v.policy
                ));
            }
        };
        // A target only speaks for the policies that send to it.
        if !policy.spec.notifications.iter().any(|n| n.target == target.name) {
            return Some(format!(
                "Nothing done: RolloutPolicy {}/{} does not name NotificationTarget {}.",
                v.ns, v.policy, target.name
            ));
        }
        if !self.allowed(target, click, &policy).await {
            info!(user = %click.person(), action = %what, "Slack click refused: not an approver");
            return Some(format!(
                "You are not allowed to {what}: ask a platform admin to add you."
            ));
        }
        let bound = Binding {
            kind: click.kind,
            canary: v.canary.clone(),
            step: Some(v.step),
            on_behalf_of: click.person(),
        };
        match self.create_for_click(&policy, &bound, click).await {
            Ok(Created::New(name)) => {
                info!(user = %click.person(), action = %what, rolloutcommand = %name, "Slack click: command created");
                self.answer_outcome_later(target, click, name);
                None
            }
            Ok(Created::Exists(first)) => Some(already_handled(&what, &first)),
            Err(e) => {
                warn!(error = %e, "Slack interactivity: cannot create the command");
                Some(format!("Nothing done: could not record the {what} ({e}); try again."))
            }
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
        let secrets: Api<Secret> = Api::namespaced(self.inner.client.clone(), &self.inner.secrets_namespace);
        let token = match secret_value(&secrets, token_ref).await {
            Ok(t) => t,
            Err(e) => {
                warn!(target = %target.name, error = %e, "cannot read the bot token");
                return false;
            }
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

    /// Wait for the leader's outcome, then answer the click with it.
    fn answer_outcome_later(&self, target: &Known, click: &Click, command: String) {
        let app = self.clone();
        let api_url = target.slack.api_url.clone();
        let click = click.clone();
        tokio::spawn(async move {
            let what = format!("{} of {}/{}", click.kind.as_str(), click.value.ns, click.value.policy);
            let text = match app.wait_outcome(&click.value.ns, &command, SLACK_OUTCOME_WAIT).await {
                Some(s) if s.outcome == Outcome::Acted => {
                    format!("Done: {what} by <@{}>: {}", click.user_id, s.message)
                }
                Some(s) => format!("Nothing done: {what}: {} ({})", s.message, s.reason),
                None => format!("Requested: {what} (RolloutCommand {command}); canaryd has not handled it yet."),
            };
            app.post_answer(&api_url, &click, &text).await;
        });
    }

    fn respond_later(&self, target: &Known, click: &Click, text: String) {
        let app = self.clone();
        let api_url = target.slack.api_url.clone();
        let click = click.clone();
        tokio::spawn(async move { app.post_answer(&api_url, &click, &text).await });
    }

    /// An ephemeral message to the clicking user, leaving the original message as it is.
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
mod tests {
    use super::*;

    #[test]
    fn every_cli_command_has_its_path() {
        for segment in ["promote", "promote-full", "abort", "pause", "resume", "retry"] {
            assert_eq!(kind_of(segment).map(CommandKind::as_str), Some(segment));
        }
        assert_eq!(kind_of("delete"), None);
        assert_eq!(kind_of("Promote"), None);
    }

    #[test]
    fn stale_gates_are_nothing_to_approve() {
        for reason in ["NoRollout", "WrongCanary", "WrongStep", "Expired"] {
            assert!(nothing_to_approve(reason), "{reason}");
        }
        assert!(!nothing_to_approve("PolicyInvalid"));
    }
}
