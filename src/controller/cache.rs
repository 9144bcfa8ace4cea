//! Reflector caches of the objects a reconcile reads, so that observing a policy costs no API call:
//! one watch per kind serves every policy. Writes still read fresh (they carry a resourceVersion).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::channel::mpsc::UnboundedSender;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::analysis::engine::Key;
use crate::error::{Error, Result};
use crate::gates::commands::RolloutCommand;
use crate::gates::target::NotificationTarget;
use crate::http::Health;
use crate::policy::provider::MetricProvider;

use super::slim::{self, SlimDeployment, SlimDestinationRule, SlimService, SlimVirtualService};

/// How often the daemon says why its caches have not filled yet (RBAC, missing CRD).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct Caches {
    pub services: Store<SlimService>,
    pub deployments: Store<SlimDeployment>,
    pub hpas: Store<HorizontalPodAutoscaler>,
    /// VirtualServices and DestinationRules of every namespace: policies may name other namespaces.
    pub virtual_services: Store<SlimVirtualService>,
    pub destination_rules: Store<SlimDestinationRule>,
    /// RolloutCommands (of `namespace`, or everywhere) and the cluster's MetricProviders.
    pub commands: Store<RolloutCommand>,
    pub providers: Store<MetricProvider>,
    /// The cluster's NotificationTargets (read by the notifier).
    pub targets: Store<NotificationTarget>,
    /// Namespaces' metadata: their labels say which platform objects their policies may use.
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    /// True once every store had its first list. (A store's own readiness wakes only one waiter.)
    synced: tokio::sync::watch::Receiver<bool>,
}

/// Retries of a failed watch: 0.5 s doubling up to 5 s, so that a failing watch keeps saying so
/// (see [`crate::http::WATCH_RETRY_GAP`]).
#[derive(Debug, Default)]
pub struct WatchBackoff {
    next: Option<Duration>,
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.next.unwrap_or(Duration::from_millis(500));
        self.next = Some((delay * 2).min(Duration::from_secs(5)));
        Some(delay)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = None;
    }
}

/// Keep a reflector store of `api` filled for the daemon's lifetime; every watch item (also the
/// lists and relists that touch no object) reports to `health` under `kind`.
/// `slim` trims each object before the store holds it (see [`super::slim`]).
fn spawn<K>(api: Api<K>, dyntype: K::DynamicType, kind: &'static str, health: Arc<Health>, slim: fn(&mut K)) -> Store<K>
where
    K: Resource + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
{
    spawn_notifying(api, dyntype, kind, health, slim, |_| {})
}

/// Like [`spawn`], calling `notify` with every object touched, after the store holds it.
fn spawn_notifying<K>(
    api: Api<K>,
    dyntype: K::DynamicType,
    kind: &'static str,
    health: Arc<Health>,
    slim: fn(&mut K),
    notify: impl Fn(&K) + Send + 'static,
) -> Store<K>
where
    K: Resource + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
{
    let writer = Writer::new(dyntype);
    let reader = writer.as_reader();
    let watch = watcher(api, watcher::Config::default().any_semantic())
        .modify(slim)
        .backoff(WatchBackoff::default())
        .inspect(move |item| health.watch_item(kind, item));
    let stream = reflector::reflector(writer, watch).touched_objects();
    tokio::spawn(stream.for_each(move |event| {
        match event {
            Ok(object) => notify(&object),
            Err(e) => tracing::warn!(error = %e, "cache watch error; retrying"),
        }
        futures::future::ready(())
    }));
    reader
}

impl Caches {
    /// Start the watches (policy-side kinds in `namespace`, or everywhere); [`Caches::ready`] waits
    /// for their first list. A RolloutCommand's policy is sent to `wake` once the cache holds the command.
    pub fn start(client: &Client, namespace: Option<&str>, health: &Arc<Health>, wake: UnboundedSender<Key>) -> Self {
        fn api<K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>>(
            client: &Client,
            namespace: Option<&str>,
        ) -> Api<K> {
            match namespace {
                Some(ns) => Api::namespaced(client.clone(), ns),
                None => Api::all(client.clone()),
            }
        }
        let h = || health.clone();
        let (synced_tx, synced) = tokio::sync::watch::channel(false);
        let caches = Caches {
            services: spawn(api::<SlimService>(client, namespace), (), "services", h(), |_| {}),
            deployments: spawn(api::<SlimDeployment>(client, namespace), (), "deployments", h(), |_| {}),
            hpas: spawn(
                api::<HorizontalPodAutoscaler>(client, namespace),
                (),
                "horizontalpodautoscalers",
                h(),
                slim::hpa,
            ),
            virtual_services: spawn(Api::all(client.clone()), (), "virtualservices", h(), |_| {}),
            destination_rules: spawn(Api::all(client.clone()), (), "destinationrules", h(), |_| {}),
            commands: spawn_notifying(
                api::<RolloutCommand>(client, namespace),
                (),
                "rolloutcommands",
                h(),
                |c| slim::meta(&mut c.metadata),
                move |c: &RolloutCommand| {
                    let _ = wake.unbounded_send((c.namespace().unwrap_or_default(), c.spec.policy.clone()));
                },
            ),
            providers: spawn(Api::all(client.clone()), (), "metricproviders", h(), |p| {
                slim::meta(&mut p.metadata)
            }),
            targets: spawn(Api::all(client.clone()), (), "notificationtargets", h(), |t| {
                slim::meta(&mut t.metadata)
            }),
            // Metadata only (list/watch on namespaces): their labels are all that is read.
            namespaces: spawn(Api::all(client.clone()), (), "namespaces", h(), |n| {
                slim::meta(&mut n.metadata);
                n.metadata.annotations = None;
            }),
            synced,
        };
        tokio::spawn(caches.clone().announce_sync(synced_tx, health.clone()));
        caches
    }

    /// The only waiter on the stores' readiness: tells `health` and every [`Caches::ready`].
    async fn announce_sync(self, synced: tokio::sync::watch::Sender<bool>, health: Arc<Health>) {
        let ready = async {
            self.services.wait_until_ready().await?;
            self.deployments.wait_until_ready().await?;
            self.hpas.wait_until_ready().await?;
            self.virtual_services.wait_until_ready().await?;
            self.commands.wait_until_ready().await?;
            self.providers.wait_until_ready().await?;
            self.targets.wait_until_ready().await?;
            self.namespaces.wait_until_ready().await?;
            self.destination_rules.wait_until_ready().await
        };
        tokio::pin!(ready);
        loop {
            match tokio::time::timeout(READY_TIMEOUT, &mut ready).await {
                Ok(Ok(())) => {
                    tracing::info!("object caches synced");
                    health.set_synced();
                    let _ = synced.send(true);
                    return;
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "object caches stopped");
                    return;
                }
                Err(_) => tracing::error!(
                    "the object caches did not fill within {READY_TIMEOUT:?}: check RBAC (list/watch) and that Istio's CRDs are installed; still waiting"
                ),
            }
        }
    }

    /// Wait until every store had its first list.
    pub async fn ready(&self) -> Result<()> {
        let mut synced = self.synced.clone();
        synced
            .wait_for(|s| *s)
            .await
            .map(|_| ())
            .map_err(|_| Error::Cache("the object caches stopped before they synced".into()))
    }

    /// The cached Service, as the type a reconcile reads.
    pub fn service(&self, ns: &str, name: &str) -> Option<Arc<Service>> {
        let s = self.services.get(&ObjectRef::new(name).within(ns))?;
        Some(Arc::new(s.to_service()))
    }

    /// The cached Deployment, as the type a reconcile reads.
    pub fn deployment(&self, ns: &str, name: &str) -> Option<Arc<Deployment>> {
        let d = self.deployments.get(&ObjectRef::new(name).within(ns))?;
        Some(Arc::new(d.to_deployment()))
    }

    pub fn provider(&self, name: &str) -> Option<Arc<MetricProvider>> {
        self.providers.get(&ObjectRef::new(name))
    }

    /// A namespace's labels; None while the namespace is not in the cache.
    pub fn namespace_labels(&self, ns: &str) -> Option<BTreeMap<String, String>> {
        let n = self.namespaces.get(&ObjectRef::new(ns))?;
        Some(n.metadata.labels.clone().unwrap_or_default())
    }

    pub fn virtual_service(&self, ns: &str, name: &str) -> Option<Arc<SlimVirtualService>> {
        self.virtual_services.get(&ObjectRef::new(name).within(ns))
    }

    pub fn destination_rule(&self, ns: &str, name: &str) -> Option<Arc<SlimDestinationRule>> {
        self.destination_rules.get(&ObjectRef::new(name).within(ns))
    }
}
