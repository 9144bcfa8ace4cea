//! The Slack targets' signing secrets and bot tokens, held in memory: NotificationTargets from
//! the daemon's cache, Secrets of the daemon's own namespace from a watch of that namespace only.
//! So checking a click's signature reads nothing from the API server: a forged request costs an
//! HMAC per Slack target, and a rotated Secret is used as soon as the watch delivers it.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::reflector::{self, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tracing::warn;

use crate::cache::WatchBackoff;
use crate::cache::slim::Decoded;
use crate::resources::policy::SecretKeyRef;
use crate::resources::target::{NotificationTarget, SlackTarget};

/// How long a request waits for the first lists after a start before answering 503.
const READY_WAIT: Duration = Duration::from_secs(2);

/// A Slack target with its signing secret.
#[derive(Clone)]
pub struct Known {
    pub name: String,
    pub slack: SlackTarget,
    pub secret: String,
}

/// The stores the Slack handler reads.
#[derive(Clone)]
pub struct SlackKeys {
    targets: Store<Decoded<NotificationTarget>>,
    secrets: Store<Secret>,
    namespace: String,
}

/// The caches have not had their first list yet (or cannot: see the daemon's log).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the Slack targets and their Secrets are not loaded yet")]
pub struct NotReady;

impl SlackKeys {
    /// Watch the Secrets of `namespace`; `targets` is the daemon's NotificationTarget cache.
    pub fn start(client: &Client, namespace: &str, targets: Store<Decoded<NotificationTarget>>) -> Self {
        let writer = Writer::new(());
        let secrets = writer.as_reader();
        let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let watch = watcher(api, watcher::Config::default().any_semantic())
            .modify(slim)
            .backoff(WatchBackoff::default());
        let stream = reflector::reflector(writer, watch).touched_objects();
        tokio::spawn(stream.for_each(|event| {
            if let Err(e) = event {
                warn!(error = %e, "the approvals listener's Secret watch failed; retrying");
            }
            futures::future::ready(())
        }));
        Self {
            targets,
            secrets,
            namespace: namespace.into(),
        }
    }

    /// From stores filled elsewhere (tests); `secrets` holds those of `namespace`.
    pub fn from_stores(targets: Store<Decoded<NotificationTarget>>, secrets: Store<Secret>, namespace: &str) -> Self {
        Self {
            targets,
            secrets,
            namespace: namespace.into(),
        }
    }

    /// Every Slack target with a non-empty signing secret. One bad target never hides the others.
    pub async fn known(&self) -> Result<Vec<Known>, NotReady> {
        let ready =
            async { self.targets.wait_until_ready().await.is_ok() && self.secrets.wait_until_ready().await.is_ok() };
        if !tokio::time::timeout(READY_WAIT, ready).await.unwrap_or(false) {
            return Err(NotReady);
        }
        let mut known = Vec::new();
        for t in self.targets.state() {
            let Decoded::Ok(t) = t.as_ref() else { continue };
            let Some(slack) = t.spec.slack.as_ref() else { continue };
            let Some(r) = slack.signing_secret.as_ref() else {
                continue;
            };
            match self.value(r) {
                Some(secret) if !secret.is_empty() => known.push(Known {
                    name: t.name_any(),
                    slack: slack.clone(),
                    secret,
                }),
                _ => warn!(target = %t.name_any(), secret = %r.name, key = %r.key, "no signing secret at this key"),
            }
        }
        Ok(known)
    }

    /// The value at `r` in a Secret of the daemon's namespace, if there is one.
    pub fn value(&self, r: &SecretKeyRef) -> Option<String> {
        let secret = self
            .secrets
            .get(&reflector::ObjectRef::new(&r.name).within(&self.namespace))?;
        let bytes = secret.data.as_ref()?.get(&r.key)?;
        String::from_utf8(bytes.0.clone()).ok()
    }
}

/// Keep only the data: annotations may hold a copy (kubectl's last-applied-configuration).
fn slim(secret: &mut Secret) {
    let m = &mut secret.metadata;
    m.annotations = None;
    m.labels = None;
    m.managed_fields = None;
    m.owner_references = None;
    secret.string_data = None;
}
