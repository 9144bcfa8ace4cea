//! Objects the caches skip because the daemon cannot decode them: each is logged and counted
//! (`canaryd_objects_rejected_total{kind}`) when it arrives, and gets one Warning Event (a rejected
//! RolloutCommand also the outcome `Refused`) from the leader. Kept per object until it is fixed
//! or deleted, so the memory follows the rejected objects that exist.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use tracing::warn;

use super::slim::Rejected;
use crate::fence::LeaderGuard;
use crate::metrics::Metrics;
use crate::resources::command::RolloutCommand;

/// How often the leader looks for rejections it has not reported yet.
const REPORT_EVERY: Duration = Duration::from_secs(2);

/// (plural, namespace, name).
type Key = (&'static str, String, String);

#[derive(Debug)]
struct Entry {
    reference: ObjectReference,
    reason: String,
    reported: bool,
}

pub struct Rejections {
    metrics: Arc<Metrics>,
    entries: Mutex<BTreeMap<Key, Entry>>,
}

impl Rejections {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            entries: Mutex::default(),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, BTreeMap<Key, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A rejected object arrived (listed or changed). A relist of one already known says nothing.
    pub fn rejected(&self, plural: &'static str, api_version: &str, kind: &str, r: &Rejected) {
        let m = &r.metadata;
        let key = (
            plural,
            m.namespace.clone().unwrap_or_default(),
            m.name.clone().unwrap_or_default(),
        );
        let mut entries = self.entries();
        if entries.get(&key).is_some_and(|e| e.reference.uid == m.uid) {
            return;
        }
        warn!(kind = plural, namespace = %key.1, name = %key.2, reason = %r.reason,
              "object rejected: it cannot be decoded and is ignored until it is fixed");
        self.metrics.rejected(plural);
        let reference = ObjectReference {
            api_version: Some(api_version.into()),
            kind: Some(kind.into()),
            name: m.name.clone(),
            namespace: m.namespace.clone(),
            uid: m.uid.clone(),
            ..ObjectReference::default()
        };
        entries.insert(
            key,
            Entry {
                reference,
                reason: r.reason.clone(),
                reported: false,
            },
        );
    }

    /// The object decodes now, or is gone.
    pub fn cleared(&self, plural: &'static str, namespace: Option<&str>, name: &str) {
        let mut entries = self.entries();
        if entries.is_empty() {
            return; // the common case: nothing to look up for every object that decodes
        }
        entries.remove(&(plural, namespace.unwrap_or_default().to_string(), name.to_string()));
    }

    fn unreported(&self) -> Vec<(Key, ObjectReference, String)> {
        self.entries()
            .iter()
            .filter(|(_, e)| !e.reported)
            .map(|(k, e)| (k.clone(), e.reference.clone(), e.reason.clone()))
            .collect()
    }

    fn mark_reported(&self, key: &Key, uid: &Option<String>) {
        if let Some(e) = self.entries().get_mut(key)
            && e.reference.uid == *uid
        {
            e.reported = true;
        }
    }

    /// While this replica leads: one Warning Event per rejected object, and `Refused` on a
    /// rejected command, so that its author sees why it does nothing. Runs for the daemon's life.
    pub async fn report(self: Arc<Self>, client: Client, recorder: Recorder, leader: LeaderGuard) {
        let mut tick = tokio::time::interval(REPORT_EVERY);
        loop {
            tick.tick().await;
            for (key, reference, reason) in self.unreported() {
                if !leader.may_write() {
                    break;
                }
                let note = format!(
                    "canaryd cannot use this {}: {reason}; it is ignored until fixed",
                    reference.kind.as_deref().unwrap_or("object")
                );
                if key.0 == "rolloutcommands"
                    && let Err(e) = refuse_command(&client, &key.1, &key.2, &note).await
                {
                    warn!(error = %e, name = %key.2, "could not refuse a rejected command");
                }
                let event = Event {
                    type_: EventType::Warning,
                    reason: "Rejected".into(),
                    note: Some(note),
                    action: "Decode".into(),
                    secondary: None,
                };
                if let Err(e) = recorder.publish(&event, &reference).await {
                    warn!(error = %e, name = %key.2, "could not publish event");
                }
                // Once per object and daemon run, like every report: a failure is logged, not retried.
                self.mark_reported(&key, &reference.uid);
            }
        }
    }
}

/// Outcome `Refused`, reason `Undecodable`: a merge patch of the status, which needs no decoded spec.
async fn refuse_command(client: &Client, ns: &str, name: &str, note: &str) -> kube::Result<()> {
    let status = serde_json::json!({"status": {
        "outcome": "Refused", "reason": "Undecodable", "message": note, "at": Timestamp::now().to_string(),
    }});
    let patch = Patch::Merge(status);
    // The answer is the same undecodable object: read it as metadata only.
    let api = Api::<super::slim::Decoded<RolloutCommand>>::namespaced(client.clone(), ns);
    api.patch_status(name, &PatchParams::default(), &patch)
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn rejected(uid: &str, rv: &str) -> Rejected {
        Rejected {
            metadata: ObjectMeta {
                name: Some("c".into()),
                namespace: Some("t".into()),
                uid: Some(uid.into()),
                resource_version: Some(rv.into()),
                ..ObjectMeta::default()
            },
            reason: "bad".into(),
        }
    }

    fn count(m: &Metrics) -> String {
        m.encode()
            .lines()
            .find(|l| l.starts_with("canaryd_objects_rejected_total{kind=\"rolloutcommands\"}"))
            .unwrap_or_default()
            .to_string()
    }

    #[test]
    fn each_rejected_object_counts_once_until_it_is_replaced() {
        let metrics = Arc::new(Metrics::default());
        let r = Rejections::new(metrics.clone());
        let add = |uid, rv| {
            r.rejected(
                "rolloutcommands",
                "canaryd.io/v1alpha1",
                "RolloutCommand",
                &rejected(uid, rv),
            )
        };
        add("u1", "1");
        add("u1", "2"); // relisted, or its status written: the same object
        assert!(count(&metrics).ends_with(" 1"), "{}", count(&metrics));
        assert_eq!(r.unreported().len(), 1);
        r.mark_reported(&("rolloutcommands", "t".into(), "c".into()), &Some("u1".into()));
        assert!(r.unreported().is_empty());
        add("u2", "3"); // deleted and created again under the same name
        assert!(count(&metrics).ends_with(" 2"), "{}", count(&metrics));
        r.cleared("rolloutcommands", Some("t"), "c");
        assert!(r.unreported().is_empty() && r.entries().is_empty());
    }
}
