//! Notifications: every transition in a policy's `status.history` goes to the NotificationTargets
//! its `spec.notifications` names (Slack, Teams, a JSON webhook).
//!
//! Driven by durable state: a leader-only background task compares each policy's history with
//! `status.notifications` (how far each target was told) and sends what is missing, recording the
//! progress after each transition. A crash repeats at most the transition in flight; a restart
//! resumes. A failing target is retried with capped exponential backoff; it never touches the
//! reconcile (its own task, bounded timeouts). Credentials never reach logs, status or Events: only
//! the target's name is said.

pub mod delivery;
mod failure;
pub mod message;
pub mod progress;
pub mod slack;
pub mod teams;
pub mod webhook;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Secret as KubeSecret};
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use tracing::{debug, info};

use crate::cache::slim::{Decoded, SlimPolicy};
use crate::fence::LeaderGuard;
use crate::metrics::Metrics;
use crate::resources::policy::{
    Notification, NotificationStatus, Phase, RolloutPolicy, RolloutPolicySpec, SecretKeyRef, Transition,
};
use crate::resources::reason::Reason;
use crate::resources::target::NotificationTarget;
pub use delivery::{BACKOFF_CAP, Http, NotifyError, REQUEST_TIMEOUT, backoff};
use message::Message;
pub use progress::{advance, pending};

/// How often the policies are looked at for transitions not yet sent.
const TICK: Duration = Duration::from_secs(1);
/// Policies handled at once: one slow receiver must not hold the others' notifications.
const CONCURRENCY: usize = 16;

/// An event name `spec.notifications[].events` accepts: a phase or a transition reason.
pub fn known_event(name: &str) -> bool {
    Phase::ALL.iter().any(|p| p.as_str() == name) || Reason::from_name(name).is_some()
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
                entry.slack = Some(bot.send(http, m, entry.slack.as_ref()).await?);
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
    // The one reader of a key: `data`, or `stringData` not yet folded by the API server.
    let bytes = crate::secrets::secret_bytes(&secret, &r.key).ok_or_else(missing)?;
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
    /// Targets whose last delivery failed for good, per policy and target.
    parked: HashMap<TargetKey, failure::Parked>,
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
    pub metrics: Arc<Metrics>,
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
        (recorder, metrics): (Recorder, Arc<Metrics>),
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
            metrics,
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
            state.parked.retain(|k, _| kept(k));
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
        let version = self.target(&n.target).and_then(|t| t.resource_version());
        let state = self.state();
        let now = Instant::now();
        // A parked target waits for a change: of itself (watched) or of a Secret (looked at now and then).
        let parked = state
            .parked
            .get(&key)
            .is_some_and(|p| p.check_at > now && p.target_version == version);
        let due = !parked && state.backoff.get(&key).is_none_or(|(_, at)| *at <= now);
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
            self.failed(&api, &policy, key, &e).await;
        }
    }

    /// The target `n` names, if it exists and the policy's namespace may use it; reports what is
    /// wrong with it otherwise (a Warning Event once).
    async fn usable_target(
        &self,
        policy: &RolloutPolicy,
        key: &TargetKey,
        i: usize,
        n: &Notification,
    ) -> Option<Arc<NotificationTarget>> {
        let Some(target) = self.target(&n.target) else {
            let why = match self.targets.get(&ObjectRef::new(&n.target)).as_deref() {
                Some(Decoded::Rejected(r)) => format!("is rejected (cannot be decoded: {})", r.reason),
                _ => "not found".into(),
            };
            let message = format!(
                "spec.notifications[{i}].target: NotificationTarget {:?} {why}; the rollout goes on without it",
                n.target
            );
            self.report(policy, key, "NotificationTargetNotFound", message).await;
            return None;
        };
        if let Some(why) = self.refusal(&target, &n.target, &key.0) {
            // Nothing is sent, and nothing recorded: the policy is Invalid for it (see tenancy).
            let message = format!("spec.notifications[{i}].target: {why}");
            self.report(policy, key, "NotificationTargetNotAllowed", message).await;
            return None;
        }
        if let Some(e) = n.events.iter().find(|e| !known_event(e)) {
            let message = format!("spec.notifications[{i}].events: unknown event {e:?}; it matches no transition");
            self.report(policy, key, "NotificationEventUnknown", message).await;
        }
        Some(target)
    }

    /// Send the transitions target `n` misses, in order, recording each.
    async fn notify_target(
        &self,
        api: &Api<RolloutPolicy>,
        policy: &RolloutPolicy,
        i: usize,
        n: &Notification,
    ) -> Result<(), Stop> {
        let key = (
            policy.namespace().unwrap_or_default(),
            policy.name_any(),
            n.target.clone(),
        );
        let Some(target) = self.usable_target(policy, &key, i, n).await else {
            return Ok(());
        };
        let due = self
            .state()
            .backoff
            .get(&key)
            .is_none_or(|(_, at)| *at <= Instant::now());
        let status = policy.status.clone().unwrap_or_default();
        let entry = status.notifications.iter().find(|e| e.target == n.target);
        let todo = pending(&status.history, entry);
        if !due || todo.is_empty() || self.still_parked(&key, &target).await {
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
        self.send_all(api, policy, n, (&todo, channel.as_ref()), &mut entry)
            .await?;
        self.state().backoff.remove(&key);
        Ok(())
    }

    /// Send (or pass over, per `events`) transitions `todo`, recording the progress after each sent.
    async fn send_all(
        &self,
        api: &Api<RolloutPolicy>,
        policy: &RolloutPolicy,
        n: &Notification,
        (todo, channel): (&[usize], Option<&Channel>),
        entry: &mut NotificationStatus,
    ) -> Result<(), Stop> {
        let name = policy.name_any();
        let history = policy.status.as_ref().map(|s| s.history.as_slice()).unwrap_or_default();
        let mut unwritten = false;
        for &j in todo {
            let t = &history[j];
            if let (true, Some(channel)) = (wants(n, t), channel) {
                if !self.leader.may_write() {
                    return Err(Stop::NotLeader);
                }
                let m = Message::new(policy, history, j);
                channel
                    .send(&self.http, &n.target, &m, entry)
                    .await
                    .map_err(Stop::Failed)?;
                info!(policy = %name, target = %n.target, reason = %t.reason, "notification sent");
                entry.last_error = None;
                advance(entry, history, j);
                self.record(api, &name, entry).await?;
                unwritten = false;
            } else {
                advance(entry, history, j);
                unwritten = true;
            }
        }
        if unwritten {
            self.record(api, &name, entry).await?;
        }
        Ok(())
    }
}

enum Stop {
    NotLeader,
    Failed(NotifyError),
}

#[cfg(test)]
mod tests {
    use super::progress::tests::t;
    use super::*;
    use serde_json::json;

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

    /// `events: [Frozen]` (and every other reason, and every phase) is accepted: the filter's list
    /// is the planner's enum, not a copy that can miss some.
    #[test]
    fn every_reason_and_phase_is_an_accepted_event() {
        let names = Reason::ALL
            .iter()
            .map(|r| r.as_str())
            .chain(Phase::ALL.iter().map(|p| p.as_str()));
        for name in names {
            let spec: RolloutPolicySpec = serde_json::from_value(json!({
                "service": "a", "virtualServices": [{"name": "a"}], "destinationRule": "a",
                "stable": {"subset": "v1", "deployment": "a"}, "steps": [{"weight": 100}],
                "notifications": [{"target": "slack", "events": [name]}],
            }))
            .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(validate_notifications(&spec), Vec::<String>::new(), "{name}");
        }
        for name in [
            "Frozen",
            "OutsideWindow",
            "WaitingForWebhook",
            "WebhookFailed",
            "WebhookRollback",
        ] {
            assert!(known_event(name), "{name}");
        }
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
