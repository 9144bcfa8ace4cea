//! Failure reporting: a failed delivery is counted (`canaryd_notification_failures_total`),
//! recorded (`status.notifications[].lastError`), said in a Warning Event on the policy, and either
//! retried after a backoff or, when permanent, parked until the target or its Secret changes.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ObjectReference, Secret as KubeSecret};
use kube::api::Api;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use tracing::warn;

use super::delivery::{Retry, next_try};
use super::{Notifier, NotifyError, TargetKey};
use crate::metrics::TargetKindLabels;
use crate::resources::policy::{RolloutPolicy, SecretKeyRef};
use crate::resources::target::NotificationTarget;

/// `lastError` is at most this long (the CRD's maxLength).
pub const LAST_ERROR_MAX: usize = 512;
/// How often a parked target's Secrets are looked at for a change (the target itself is watched).
const PARKED_CHECK: Duration = Duration::from_secs(60);
/// Transient failures in a row before a Warning Event says so (a blip is only logged).
const TRANSIENT_EVENT_AFTER: u32 = 3;

/// A target whose last delivery failed for good: what it and its Secrets were then.
pub struct Parked {
    pub target_version: Option<String>,
    fingerprint: String,
    pub check_at: Instant,
}

/// The Secrets a target's deliveries read.
fn secret_refs(target: &NotificationTarget) -> Vec<&SecretKeyRef> {
    let spec = &target.spec;
    let slack = spec
        .slack
        .iter()
        .flat_map(|s| [s.bot_token.as_ref(), s.webhook_url.as_ref()]);
    let other = [
        spec.teams.as_ref().map(|t| &t.url),
        spec.webhook.as_ref().map(|w| &w.url),
    ];
    slack.chain(other).flatten().collect()
}

impl Notifier {
    /// A delivery to `key`'s target failed: count it, decide the next try, record and say it.
    pub(super) async fn failed(
        &self,
        api: &Api<RolloutPolicy>,
        policy: &RolloutPolicy,
        key: &TargetKey,
        e: &NotifyError,
    ) {
        let (ns, name, target) = key;
        let retry = e.retry();
        let labels = TargetKindLabels {
            target: target.clone(),
            kind: retry.label(),
        };
        self.metrics.notification_failures.get_or_create(&labels).inc();
        let (next, say) = match retry {
            Retry::Permanent => {
                self.park(key).await;
                ("not retried until the target or its Secret changes".to_string(), true)
            }
            _ => {
                let mut state = self.state();
                let slot = state.backoff.entry(key.clone()).or_insert((0, Instant::now()));
                slot.0 = slot.0.saturating_add(1);
                let delay = next_try(slot.0, retry);
                slot.1 = Instant::now() + delay;
                (format!("retrying in {delay:?}"), slot.0 == TRANSIENT_EVENT_AFTER)
            }
        };
        warn!(policy = %name, namespace = %ns, target = %target, error = %e, kind = retry.label(), "notification failed; {next}");
        let error = super::slack::truncate(&e.to_string(), LAST_ERROR_MAX);
        if let Err(super::Stop::Failed(e)) = self
            .update_entry(api, name, target, |entry| entry.last_error = Some(error))
            .await
        {
            warn!(policy = %name, namespace = %ns, error = %e, "could not record the notification error");
        }
        if say {
            let note = format!("NotificationTarget {target:?}: {e}; {next}");
            self.warning(policy, target, "NotificationFailed", note).await;
        }
    }

    /// No more tries of `key` until its target or one of its Secrets changes.
    async fn park(&self, key: &TargetKey) {
        let target = self.target(&key.2);
        let fingerprint = match &target {
            Some(t) => self.fingerprint(t).await,
            None => String::new(),
        };
        let mut state = self.state();
        state.backoff.remove(key);
        state.parked.insert(
            key.clone(),
            Parked {
                target_version: target.and_then(|t| t.resource_version()),
                fingerprint,
                check_at: Instant::now() + PARKED_CHECK,
            },
        );
    }

    /// Is `key` parked, with its target and Secrets as they were when it failed? Reads the
    /// Secrets' metadata (at most once a minute per parked target: see `has_work`).
    pub(super) async fn still_parked(&self, key: &TargetKey, target: &NotificationTarget) -> bool {
        let Some(was) = self.state().parked.get(key).map(|p| p.fingerprint.clone()) else {
            return false;
        };
        let now = self.fingerprint(target).await;
        let mut state = self.state();
        if now == was {
            if let Some(p) = state.parked.get_mut(key) {
                p.check_at = Instant::now() + PARKED_CHECK;
            }
            return true;
        }
        state.parked.remove(key);
        false
    }

    /// The resourceVersions of the target and of the Secrets it reads.
    async fn fingerprint(&self, target: &NotificationTarget) -> String {
        let secrets: Api<KubeSecret> = Api::namespaced(self.client.clone(), &self.secrets_namespace);
        let mut out = target.resource_version().unwrap_or_default();
        for r in secret_refs(target) {
            let version = match secrets.get_metadata_opt(&r.name).await {
                Ok(Some(meta)) => meta.resource_version().unwrap_or_default(),
                Ok(None) => "absent".into(),
                Err(_) => "unread".into(),
            };
            out.push_str(&format!(" {}={version}", r.name));
        }
        out
    }

    /// A Warning Event on the policy, once per daemon run and problem.
    pub(super) async fn report(&self, policy: &RolloutPolicy, key: &TargetKey, reason: &str, message: String) {
        if !self.state().reported.insert(key.clone()) {
            return;
        }
        self.warning(policy, &key.2, reason, message).await;
    }

    /// A Warning Event on the policy (while leading), naming the target, never its credentials.
    /// The target is the Event's related object: one Event (series) per target, not one for all.
    async fn warning(&self, policy: &RolloutPolicy, target: &str, reason: &str, message: String) {
        warn!(policy = %policy.name_any(), "{message}");
        if !self.leader.may_write() {
            return;
        }
        let related = ObjectReference {
            api_version: Some(NotificationTarget::api_version(&()).into_owned()),
            kind: Some(NotificationTarget::kind(&()).into_owned()),
            name: Some(target.to_string()),
            ..Default::default()
        };
        let event = Event {
            type_: EventType::Warning,
            reason: reason.into(),
            note: Some(message),
            action: "Notify".into(),
            secondary: Some(related),
        };
        if let Err(e) = self.recorder.publish(&event, &policy.object_ref(&())).await {
            warn!(error = %e, "could not publish event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secrets_a_target_reads() {
        let target: NotificationTarget = serde_json::from_value(serde_json::json!({
            "apiVersion": "canaryd.io/v1alpha1", "kind": "NotificationTarget", "metadata": {"name": "t"},
            "spec": {"slack": {"botToken": {"name": "bot", "key": "token"}, "channel": "C1",
                "signingSecret": {"name": "signing", "key": "s"}}}
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<&str> = secret_refs(&target).iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["bot"]);
    }
}
