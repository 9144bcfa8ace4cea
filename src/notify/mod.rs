//! Notifications: every transition in a policy's `status.history` goes to the NotificationTargets
//! its `spec.notifications` names (Slack, Teams, a JSON webhook).
//!
//! Driven by durable state: a leader-only background task compares each policy's history with
//! `status.notifications` (how far each target was told) and sends what is missing, recording the
//! progress after each transition. A crash repeats at most the transition in flight; a restart
//! resumes. A failing target is retried with capped exponential backoff; it never touches the
//! reconcile (its own task, bounded timeouts). Credentials never reach logs, status or Events: only
//! the target's name is said.

pub mod message;
pub mod slack;
pub mod teams;
pub mod webhook;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Secret as KubeSecret};
use kube::api::{Api, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};
use tracing::{debug, info, warn};

use crate::cache::slim::{Decoded, SlimPolicy};
use crate::fence::LeaderGuard;
use crate::resources::policy::{
    Notification, NotificationStatus, Phase, RolloutPolicy, RolloutPolicySpec, SecretKeyRef, Transition,
};
use crate::resources::target::NotificationTarget;
use message::Message;

/// One request to a receiver may take this long, connecting included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the policies are looked at for transitions not yet sent.
const TICK: Duration = Duration::from_secs(1);
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_CAP: Duration = Duration::from_secs(60);
/// Policies handled at once: one slow receiver must not hold the others' notifications.
const CONCURRENCY: usize = 16;
const ANSWER_LIMIT: usize = 64 * 1024;

/// Status reasons a transition can have (besides the phase names, which `events` also accepts).
pub const REASONS: &[&str] = &[
    "RolloutStarted",
    "CanaryChanged",
    "WeightChanged",
    "WaitingForCanary",
    "WaitingForAnalysis",
    "StableNotReady",
    "Pausing",
    "Paused",
    "WaitingForApproval",
    "Promoted",
    "CanaryRemoved",
    "NoCanary",
    "AnalysisFailed",
    "ProviderErrors",
    "Inconclusive",
    "CanaryUnavailable",
    "ProgressDeadlineExceeded",
    "CapacityUnavailable",
    "Aborted",
    "InvalidSpec",
    "CanaryDeploymentNotFound",
    "ServiceNotFound",
    "ServiceSelectsNoPods",
    "DeploymentNotFound",
    "DestinationRuleNotFound",
    "DestinationRuleInWrongNamespace",
    "DestinationRuleHostMismatch",
    "SubsetNotFound",
    "SubsetSelectsNoPods",
    "VirtualServiceNotFound",
    "HpaNotFound",
    "AmbiguousHpa",
];

/// An event name `spec.notifications[].events` accepts: a phase or a transition reason.
pub fn known_event(name: &str) -> bool {
    Phase::ALL.iter().any(|p| p.as_str() == name) || REASONS.contains(&name)
}

/// What can be checked without a cluster: event names, and each target named once.
pub fn validate_notifications(spec: &RolloutPolicySpec) -> Vec<String> {
    let mut errors = Vec::new();
    let mut seen = HashSet::new();
    for (i, n) in spec.notifications.iter().enumerate() {
        if !seen.insert(n.target.as_str()) {
            errors.push(format!("spec.notifications[{i}].target: {:?} is named twice", n.target));
        }
        for (j, e) in n.events.iter().enumerate() {
            if !known_event(e) {
                errors.push(format!(
                    "spec.notifications[{i}].events[{j}]: unknown event {e:?} (a phase such as RolledBack, or a reason such as WaitingForApproval)"
                ));
            }
        }
    }
    errors
}

/// Whether `n` wants transition `t`: not muted, and no filter, or its reason or phase is listed.
pub fn wants(n: &Notification, t: &Transition) -> bool {
    !t.muted && (n.events.is_empty() || n.events.iter().any(|e| *e == t.reason || e == t.phase.as_str()))
}

/// How many transitions before `history[i]` share its instant.
fn nth_at_that_time(history: &[Transition], i: usize) -> u32 {
    history[..i].iter().filter(|t| t.at == history[i].at).count() as u32
}

/// Indices of the transitions of `history` not yet handled for a target. A target never told
/// anything starts with the current rollout (from its last start), or with the newest transition.
pub fn pending(history: &[Transition], entry: Option<&NotificationStatus>) -> Vec<usize> {
    match entry.and_then(|e| e.sent_until.map(|at| (at, e.sent_at_that_time))) {
        Some((until, count)) => (0..history.len())
            .filter(|&i| {
                let t = &history[i];
                t.at > until || (t.at == until && nth_at_that_time(history, i) >= count)
            })
            .collect(),
        None => {
            let start = history
                .iter()
                .rposition(|t| matches!(t.reason.as_str(), "RolloutStarted" | "CanaryChanged"))
                .unwrap_or(history.len().saturating_sub(1));
            (start..history.len()).collect()
        }
    }
}

/// Record `history[i]` as handled.
pub fn advance(entry: &mut NotificationStatus, history: &[Transition], i: usize) {
    let t = &history[i];
    entry.sent_until = Some(t.at);
    entry.sent_at_that_time = nth_at_that_time(history, i) + 1;
}

/// A credential read from a Secret: never printed.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Why a notification was not delivered. No variant holds a URL or a credential.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("answered HTTP {0}")]
    Status(u16),
    #[error("Slack refused: {0}")]
    Slack(String),
    #[error("{0}")]
    Target(String),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

/// The HTTP client of every channel: rustls, bounded timeouts, no redirects (a redirect could carry
/// a credential-bearing request elsewhere).
pub struct Http {
    client: reqwest::Client,
    timeout: Duration,
}

impl Http {
    pub fn new(timeout: Duration) -> Result<Self, NotifyError> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("canaryd/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(timeout)
            .timeout(timeout)
            .build()
            .map_err(|e| NotifyError::Unreachable(chain(&e.without_url())))?;
        Ok(Http { client, timeout })
    }

    /// POST `body` as JSON; the answer's body when the status is 2xx.
    pub async fn post_json(&self, url: &str, bearer: Option<&Secret>, body: &Value) -> Result<Vec<u8>, NotifyError> {
        let url = reqwest::Url::parse(url).map_err(|_| NotifyError::Target("the URL is not valid".into()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(NotifyError::Target("the URL must be http or https".into()));
        }
        let mut request = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json; charset=utf-8")
            .body(body.to_string());
        if let Some(token) = bearer {
            request = request.bearer_auth(token.expose());
        }
        let mut response = request.send().await.map_err(|e| self.transport(e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(NotifyError::Status(status.as_u16()));
        }
        let mut answer = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.transport(e))? {
            if answer.len() + chunk.len() > ANSWER_LIMIT {
                break;
            }
            answer.extend_from_slice(&chunk);
        }
        Ok(answer)
    }

    fn transport(&self, e: reqwest::Error) -> NotifyError {
        if e.is_timeout() {
            NotifyError::Timeout(self.timeout)
        } else {
            // The URL may embed a credential (webhook URLs do): never in the text.
            NotifyError::Unreachable(chain(&e.without_url()))
        }
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

/// A target with its credentials read.
#[derive(Debug)]
pub enum Channel {
    SlackBot {
        api_url: String,
        token: Secret,
        channel: String,
        /// A signing secret is set: the messages carry the Approve / Abort buttons.
        buttons: bool,
    },
    SlackWebhook {
        url: Secret,
    },
    Teams {
        url: Secret,
    },
    Webhook {
        url: Secret,
    },
}

impl Channel {
    /// The target's channel, reading its Secrets in the daemon's namespace.
    pub async fn resolve(secrets: &Api<KubeSecret>, target: &NotificationTarget) -> Result<Self, NotifyError> {
        let spec = &target.spec;
        if let Some(slack) = &spec.slack {
            if let Some(token) = &slack.bot_token {
                let channel = slack
                    .channel
                    .clone()
                    .filter(|c| !c.is_empty())
                    .ok_or_else(|| NotifyError::Target("spec.slack.channel is required with botToken".into()))?;
                return Ok(Channel::SlackBot {
                    api_url: slack.api_url.clone(),
                    token: secret_value(secrets, token).await?,
                    channel,
                    buttons: slack.signing_secret.is_some(),
                });
            }
            if let Some(url) = &slack.webhook_url {
                return Ok(Channel::SlackWebhook {
                    url: secret_value(secrets, url).await?,
                });
            }
            return Err(NotifyError::Target("spec.slack needs botToken or webhookUrl".into()));
        }
        if let Some(teams) = &spec.teams {
            return Ok(Channel::Teams {
                url: secret_value(secrets, &teams.url).await?,
            });
        }
        if let Some(hook) = &spec.webhook {
            return Ok(Channel::Webhook {
                url: secret_value(secrets, &hook.url).await?,
            });
        }
        Err(NotifyError::Target("no slack, teams or webhook".into()))
    }

    /// Send one transition; `entry.slack` follows the rollout's Slack message.
    async fn send(
        &self,
        http: &Http,
        target: &str,
        m: &Message,
        entry: &mut NotificationStatus,
    ) -> Result<(), NotifyError> {
        match self {
            Channel::SlackBot {
                api_url,
                token,
                channel,
                buttons,
            } => {
                let bot = slack::Bot {
                    api_url,
                    token,
                    channel,
                    buttons_for: buttons.then_some(target),
                };
                let new_rollout = matches!(m.reason.as_str(), "RolloutStarted" | "CanaryChanged");
                let current = if new_rollout { None } else { entry.slack.as_ref() };
                entry.slack = Some(bot.send(http, m, current).await?);
                Ok(())
            }
            Channel::SlackWebhook { url } => slack::post_webhook(http, url, m).await,
            Channel::Teams { url } => teams::post(http, url, m).await,
            Channel::Webhook { url } => webhook::post(http, url, m).await,
        }
    }
}

async fn secret_value(secrets: &Api<KubeSecret>, r: &SecretKeyRef) -> Result<Secret, NotifyError> {
    let missing = || NotifyError::Target(format!("Secret {} has no key {:?}", r.name, r.key));
    let secret = match secrets.get_opt(&r.name).await? {
        Some(s) => s,
        None => return Err(NotifyError::Target(format!("Secret {} not found", r.name))),
    };
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&r.key))
        .map(|b| b.0.clone())
        .ok_or_else(missing)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| NotifyError::Target(format!("Secret {} key {:?} is not UTF-8", r.name, r.key)))?;
    Ok(Secret(text.trim().to_string()))
}

type PolicyKey = (String, String);
/// (namespace, policy, target).
type TargetKey = (String, String, String);

#[derive(Default)]
struct State {
    /// One task per policy and target at a time; a slow target holds up no other.
    in_flight: HashSet<TargetKey>,
    /// Failures in a row and when to try again, per policy and target.
    backoff: HashMap<TargetKey, (u32, Instant)>,
    /// Problems already reported (an Event each), per policy and target: once per daemon run.
    reported: HashSet<TargetKey>,
    /// Writes of one policy's `status.notifications`, one at a time.
    writes: HashMap<PolicyKey, Arc<tokio::sync::Mutex<()>>>,
}

/// What the notifier needs from the daemon.
pub struct Notifier {
    pub client: Client,
    /// The controller's RolloutPolicy cache (untyped: an undecodable policy is skipped).
    pub policies: Store<SlimPolicy>,
    pub targets: Store<Decoded<NotificationTarget>>,
    /// Namespaces' labels: which targets a policy's namespace may use.
    pub namespaces: Store<Decoded<PartialObjectMeta<Namespace>>>,
    pub secrets_namespace: String,
    pub leader: LeaderGuard,
    pub recorder: Recorder,
    pub http: Http,
    state: Mutex<State>,
    permits: tokio::sync::Semaphore,
}

impl Notifier {
    pub fn new(
        client: Client,
        policies: Store<SlimPolicy>,
        (targets, namespaces): (
            Store<Decoded<NotificationTarget>>,
            Store<Decoded<PartialObjectMeta<Namespace>>>,
        ),
        secrets_namespace: String,
        leader: LeaderGuard,
        recorder: Recorder,
    ) -> Result<Self, NotifyError> {
        Ok(Notifier {
            client,
            policies,
            targets,
            namespaces,
            secrets_namespace,
            leader,
            recorder,
            http: Http::new(REQUEST_TIMEOUT)?,
            state: Mutex::new(State::default()),
            permits: tokio::sync::Semaphore::new(CONCURRENCY),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Look at every policy each tick, for as long as the daemon runs; write only while leading.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !self.leader.may_write() {
                continue;
            }
            let mut present: HashSet<PolicyKey> = HashSet::new();
            for obj in self.policies.state() {
                if !obj.notifies() {
                    continue;
                }
                let Ok(policy) = crate::cache::slim::decode(&obj) else {
                    continue;
                };
                let ns = policy.namespace().unwrap_or_default();
                let name = policy.name_any();
                present.insert((ns.clone(), name.clone()));
                let mut seen = HashSet::new();
                for n in &policy.spec.notifications {
                    if !seen.insert(n.target.as_str()) || !self.has_work(&policy, n) {
                        continue;
                    }
                    let key = (ns.clone(), name.clone(), n.target.clone());
                    if !self.state().in_flight.insert(key.clone()) {
                        continue;
                    }
                    let this = self.clone();
                    tokio::spawn(async move {
                        if let Ok(_permit) = this.permits.acquire().await {
                            this.handle(&key).await;
                        }
                        this.state().in_flight.remove(&key);
                    });
                }
            }
            // Forget policies that are gone or no longer notify.
            let mut state = self.state();
            let kept = |(ns, name, _): &TargetKey| present.contains(&(ns.clone(), name.clone()));
            state.backoff.retain(|k, _| kept(k));
            state.reported.retain(kept);
            state.writes.retain(|k, _| present.contains(k));
        }
    }

    /// The target is due and has a transition to send, or a problem not yet reported.
    fn has_work(&self, policy: &RolloutPolicy, n: &Notification) -> bool {
        let key = (
            policy.namespace().unwrap_or_default(),
            policy.name_any(),
            n.target.clone(),
        );
        let status = policy.status.clone().unwrap_or_default();
        let state = self.state();
        let due = state.backoff.get(&key).is_none_or(|(_, at)| *at <= Instant::now());
        let entry = status.notifications.iter().find(|e| e.target == n.target);
        let unreported = !state.reported.contains(&key)
            && (self.target(&n.target).is_none() || n.events.iter().any(|e| !known_event(e)));
        unreported || (due && !pending(&status.history, entry).is_empty())
    }

    /// Why namespace `ns` may not use `target` (None: it may).
    fn refusal(&self, target: &NotificationTarget, name: &str, ns: &str) -> Option<String> {
        let labels = self
            .namespaces
            .get(&ObjectRef::new(ns))
            .and_then(crate::cache::ok)
            .map(|n| n.metadata.labels.clone().unwrap_or_default());
        let access = crate::resources::selector::access(target.spec.namespace_selector.as_ref(), labels.as_ref());
        access.refusal(&format!("NotificationTarget {name:?} (spec.namespaceSelector)"), ns)
    }

    fn target(&self, name: &str) -> Option<Arc<NotificationTarget>> {
        crate::cache::ok(self.targets.get(&ObjectRef::new(name))?)
    }

    /// Send what one target of one policy misses, reading the policy fresh (the cache may not show
    /// our own last write yet, and a repeat is what this must avoid).
    async fn handle(&self, key: &TargetKey) {
        let (ns, name, target) = key;
        let api: Api<RolloutPolicy> = Api::namespaced(self.client.clone(), ns);
        let policy = match api.get_opt(name).await {
            Ok(Some(p)) => p,
            Ok(None) => return,
            Err(e) => {
                debug!(policy = %name, namespace = %ns, error = %e, "notifier: could not read the policy");
                return;
            }
        };
        let Some((i, n)) = policy
            .spec
            .notifications
            .iter()
            .enumerate()
            .find(|(_, n)| n.target == *target)
        else {
            return;
        };
        if let Err(Stop::Failed(e)) = self.notify_target(&api, &policy, i, n).await {
            self.failed(key, &e);
        }
    }

    /// Send the transitions target `n` misses, in order, recording each.
    async fn notify_target(
        &self,
        api: &Api<RolloutPolicy>,
        policy: &RolloutPolicy,
        i: usize,
        n: &Notification,
    ) -> Result<(), Stop> {
        let ns = policy.namespace().unwrap_or_default();
        let name = policy.name_any();
        let key = (ns.clone(), name.clone(), n.target.clone());
        let Some(target) = self.target(&n.target) else {
            let why = match self.targets.get(&ObjectRef::new(&n.target)).as_deref() {
                Some(Decoded::Rejected(r)) => format!("is rejected (cannot be decoded: {})", r.reason),
                _ => "not found".into(),
            };
            let message = format!(
                "spec.notifications[{i}].target: NotificationTarget {:?} {why}; the rollout goes on without it",
                n.target
            );
            self.report(policy, &key, "NotificationTargetNotFound", message).await;
            return Ok(());
        };
        if let Some(why) = self.refusal(&target, &n.target, &ns) {
            // Nothing is sent, and nothing recorded: the policy is Invalid for it (see tenancy).
            let message = format!("spec.notifications[{i}].target: {why}");
            self.report(policy, &key, "NotificationTargetNotAllowed", message).await;
            return Ok(());
        }
        if let Some(e) = n.events.iter().find(|e| !known_event(e)) {
            let message = format!("spec.notifications[{i}].events: unknown event {e:?}; it matches no transition");
            self.report(policy, &key, "NotificationEventUnknown", message).await;
        }
        let due = self
            .state()
            .backoff
            .get(&key)
            .is_none_or(|(_, at)| *at <= Instant::now());
        let status = policy.status.clone().unwrap_or_default();
        let entry = status.notifications.iter().find(|e| e.target == n.target);
        let todo = pending(&status.history, entry);
        if !due || todo.is_empty() {
            return Ok(());
        }
        let mut entry = entry.cloned().unwrap_or_else(|| NotificationStatus {
            target: n.target.clone(),
            ..Default::default()
        });
        let wanted = todo.iter().any(|&j| wants(n, &status.history[j]));
        let channel = if wanted {
            let secrets: Api<KubeSecret> = Api::namespaced(self.client.clone(), &self.secrets_namespace);
            Some(Channel::resolve(&secrets, &target).await.map_err(Stop::Failed)?)
        } else {
            None
        };
        let mut unwritten = false;
        for j in todo {
            let t = &status.history[j];
            if let (true, Some(channel)) = (wants(n, t), &channel) {
                if !self.leader.may_write() {
                    return Err(Stop::NotLeader);
                }
                let m = Message::new(policy, t, nth_at_that_time(&status.history, j));
                channel
                    .send(&self.http, &n.target, &m, &mut entry)
                    .await
                    .map_err(Stop::Failed)?;
                info!(policy = %name, namespace = %ns, target = %n.target, reason = %t.reason, "notification sent");
                advance(&mut entry, &status.history, j);
                self.record(api, &name, &entry).await?;
                unwritten = false;
            } else {
                advance(&mut entry, &status.history, j);
                unwritten = true;
            }
        }
        if unwritten {
            self.record(api, &name, &entry).await?;
        }
        self.state().backoff.remove(&key);
        Ok(())
    }

    /// Write one target's progress into `status.notifications` (only the notifier writes it; the
    /// planner carries it over). Other targets of the policy write too: one at a time, each into
    /// the list as it is now.
    async fn record(&self, api: &Api<RolloutPolicy>, name: &str, entry: &NotificationStatus) -> Result<(), Stop> {
        let ns = api.namespace().unwrap_or_default().to_string();
        let lock = self.state().writes.entry((ns, name.to_string())).or_default().clone();
        let _one_at_a_time = lock.lock().await;
        let failed = |e| Stop::Failed(NotifyError::Kube(e));
        let Some(policy) = api.get_opt(name).await.map_err(failed)? else {
            return Ok(());
        };
        if !self.leader.may_write() {
            return Err(Stop::NotLeader);
        }
        let mut list = policy.status.map(|s| s.notifications).unwrap_or_default();
        match list.iter_mut().find(|e| e.target == entry.target) {
            Some(e) => *e = entry.clone(),
            None => list.push(entry.clone()),
        }
        // Targets no longer named are dropped.
        list.retain(|e| policy.spec.notifications.iter().any(|n| n.target == e.target));
        let patch = json!({"status": {"notifications": list}});
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(failed)?;
        Ok(())
    }

    /// Back off this target of this policy; say why, naming the target only.
    fn failed(&self, key: &TargetKey, e: &NotifyError) {
        let mut state = self.state();
        let slot = state.backoff.entry(key.clone()).or_insert((0, Instant::now()));
        slot.0 = slot.0.saturating_add(1);
        let delay = backoff(slot.0);
        slot.1 = Instant::now() + delay;
        let (ns, name, target) = key;
        warn!(policy = %name, namespace = %ns, target = %target, error = %e, retry_in = ?delay, "notification failed");
    }

    /// A Warning Event on the policy, once per daemon run.
    async fn report(&self, policy: &RolloutPolicy, key: &TargetKey, reason: &str, message: String) {
        if !self.state().reported.insert(key.clone()) {
            return;
        }
        warn!(policy = %policy.name_any(), target = %key.2, "{message}");
        if !self.leader.may_write() {
            return;
        }
        let event = Event {
            type_: EventType::Warning,
            reason: reason.into(),
            note: Some(message),
            action: "Notify".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &policy.object_ref(&())).await {
            warn!(error = %e, "could not publish event");
        }
    }
}

enum Stop {
    NotLeader,
    Failed(NotifyError),
}

/// 1 s, 2 s, 4 s … up to a minute.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    (BACKOFF_FIRST * 2u32.pow(exp)).min(BACKOFF_CAP)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::Timestamp;

    fn t(secs: i64, reason: &str) -> Transition {
        Transition {
            at: Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH),
            phase: Phase::Progressing,
            step: Some(0),
            canary_weight: 0,
            reason: reason.into(),
            message: String::new(),
            muted: false,
        }
    }

    #[test]
    fn the_cursor_resumes_after_the_last_handled_transition_also_within_one_instant() {
        let history = vec![
            t(1, "NoCanary"),
            t(5, "RolloutStarted"),
            t(5, "WeightChanged"),
            t(6, "Pausing"),
        ];
        // Never told: the current rollout, from its start.
        assert_eq!(pending(&history, None), vec![1, 2, 3]);
        let mut entry = NotificationStatus::default();
        advance(&mut entry, &history, 1);
        assert_eq!(pending(&history, Some(&entry)), vec![2, 3]);
        advance(&mut entry, &history, 2);
        assert_eq!(pending(&history, Some(&entry)), vec![3]);
        advance(&mut entry, &history, 3);
        assert!(pending(&history, Some(&entry)).is_empty());
        // History is capped: older entries dropping out do not move the cursor.
        assert!(pending(&history[2..], Some(&entry)).is_empty());
        let mut more = history.clone();
        more.push(t(9, "WaitingForApproval"));
        assert_eq!(pending(&more, Some(&entry)), vec![4]);
        // No rollout started in the history: only the newest.
        assert_eq!(pending(&[t(1, "NoCanary"), t(2, "InvalidSpec")], None), vec![1]);
    }

    #[test]
    fn a_muted_transition_goes_to_no_target() {
        let mut wait = t(1, "WaitingForWebhook");
        let all: Notification =
            serde_json::from_value(serde_json::json!({"target": "x"})).unwrap_or_else(|e| panic!("{e}"));
        let listed: Notification =
            serde_json::from_value(serde_json::json!({"target": "x", "events": ["WaitingForWebhook"]}))
                .unwrap_or_else(|e| panic!("{e}"));
        assert!(wants(&all, &wait) && wants(&listed, &wait));
        wait.muted = true;
        assert!(!wants(&all, &wait) && !wants(&listed, &wait));
    }

    #[test]
    fn events_filter_by_reason_or_phase() {
        let n = |events: &[&str]| Notification {
            target: "t".into(),
            events: events.iter().map(|s| s.to_string()).collect(),
            approvers: vec![],
        };
        let started = t(1, "RolloutStarted");
        assert!(wants(&n(&[]), &started));
        assert!(wants(&n(&["RolloutStarted"]), &started));
        assert!(wants(&n(&["Progressing"]), &started));
        assert!(!wants(&n(&["RolledBack"]), &started));
    }

    #[test]
    fn validation_names_the_field_of_an_unknown_event_or_a_repeated_target() {
        let mut spec: RolloutPolicySpec = serde_json::from_value(json!({
            "service": "a", "virtualServices": [{"name": "a"}], "destinationRule": "a",
            "stable": {"subset": "v1", "deployment": "a"}, "steps": [{"weight": 100}],
            "notifications": [{"target": "slack", "events": ["RolledBack", "WaitingForApproval", "RolledBak"]}],
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let errors = validate_notifications(&spec);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("spec.notifications[0].events[2]: unknown event \"RolledBak\""));
        spec.notifications.push(spec.notifications[0].clone());
        assert!(validate_notifications(&spec).iter().any(|e| e.contains("named twice")));
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(4), Duration::from_secs(8));
        assert_eq!(backoff(40), BACKOFF_CAP);
    }

    #[test]
    fn credentials_are_redacted_in_debug() {
        let channel = Channel::SlackBot {
            api_url: "https://slack.com/api".into(),
            token: Secret::new("xoxb-very-secret".into()),
            channel: "C1".into(),
            buttons: true,
        };
        let hook = Channel::Webhook {
            url: Secret::new("https://hooks.example/T0/B0/tok3n".into()),
        };
        let text = format!("{channel:?} {hook:?}");
        assert!(!text.contains("very-secret") && !text.contains("tok3n"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
    }
}
