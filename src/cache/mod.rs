//! Reflector caches of the objects a reconcile reads, so that observing a policy costs no API call:
//! one watch per kind serves every policy. Writes still read fresh (they carry a resourceVersion).

pub mod rejected;
pub mod slim;

use std::collections::BTreeMap;
use std::fmt::Debug;
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

use crate::error::{Error, Result};
use crate::health::Health;
use crate::prometheus::engine::Key;
use crate::resources::command::RolloutCommand;
use crate::resources::provider::MetricProvider;
use crate::resources::target::NotificationTarget;

use crate::metrics::Metrics;
use rejected::Rejections;
use slim::{Decoded, SlimDeployment, SlimDestinationRule, SlimService, SlimVirtualService};

/// How often the daemon says why its caches have not filled yet (RBAC, missing CRD).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct Caches {
    pub services: Store<Decoded<SlimService>>,
    pub deployments: Store<Decoded<SlimDeployment>>,
    pub hpas: Store<Decoded<HorizontalPodAutoscaler>>,
    /// VirtualServices and DestinationRules of every namespace: policies may name other namespaces.
    pub virtual_services: Store<Decoded<SlimVirtualService>>,
    pub destination_rules: Store<Decoded<SlimDestinationRule>>,
    /// RolloutCommands (of `namespace`, or everywhere) and the cluster's MetricProviders.
    pub commands: Store<Decoded<RolloutCommand>>,
    pub providers: Store<Decoded<MetricProvider>>,
    /// The cluster's NotificationTargets (read by the notifier).
    pub targets: Store<Decoded<NotificationTarget>>,
    /// Namespaces' metadata: their labels say which platform objects their policies may use.
    pub namespaces: Store<Decoded<PartialObjectMeta<Namespace>>>,
    /// The objects of every store that could not be decoded (held there as rejected).
    pub rejections: Arc<Rejections>,
    /// True once every store had its first list. (A store's own readiness wakes only one waiter.)
    synced: tokio::sync::watch::Receiver<bool>,
}

/// Retries of a failed watch: 0.5 s doubling up to 5 s, so that a failing watch keeps saying so
/// (see [`crate::health::WATCH_RETRY_GAP`]).
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

/// What every watch reports to: its health, and the objects it rejects.
#[derive(Clone)]
struct Report {
    health: Arc<Health>,
    rejections: Arc<Rejections>,
}

/// Keep a reflector store of `api` filled for the daemon's lifetime; every watch item (also the
/// lists and relists that touch no object) reports to `health` under `kind`. Each object decodes
/// on its own: one that does not, or fails `check`, is held as [`Decoded::Rejected`] and reported.
/// `slim` trims each object before the store holds it (see [`super::slim`]).
fn spawn<K>(api: Api<Decoded<K>>, kind: &'static str, report: Report, slim: fn(&mut K)) -> Store<Decoded<K>>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    spawn_notifying(api, kind, report, slim, |_| Ok(()), |_| {})
}

/// Like [`spawn`], calling `notify` with every decoded object touched, after the store holds it.
fn spawn_notifying<K>(
    api: Api<Decoded<K>>,
    kind: &'static str,
    report: Report,
    slim: fn(&mut K),
    check: fn(&K) -> std::result::Result<(), String>,
    notify: impl Fn(&K) + Send + 'static,
) -> Store<Decoded<K>>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    let writer = Writer::new(());
    let reader = writer.as_reader();
    let Report { health, rejections } = report;
    let watch = watcher(api, watcher::Config::default().any_semantic())
        .modify(move |d: &mut Decoded<K>| {
            d.check(check);
            if let Decoded::Ok(k) = d {
                slim(k);
            }
        })
        .backoff(WatchBackoff::default())
        .inspect(move |item| {
            health.watch_item(kind, item);
            if let Ok(event) = item {
                note_rejections(&rejections, kind, event);
            }
        });
    let stream = reflector::reflector(writer, watch).touched_objects();
    tokio::spawn(stream.for_each(move |event| {
        match event {
            Ok(object) => {
                if let Decoded::Ok(k) = &object {
                    notify(k);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cache watch error; retrying"),
        }
        futures::future::ready(())
    }));
    reader
}

fn note_rejections<K: Resource<DynamicType = ()>>(
    rejections: &Rejections,
    kind: &'static str,
    event: &watcher::Event<Decoded<K>>,
) {
    match event {
        watcher::Event::Apply(d) | watcher::Event::InitApply(d) => match d {
            Decoded::Rejected(r) => rejections.rejected(kind, &K::api_version(&()), &K::kind(&()), r),
            Decoded::Ok(k) => rejections.cleared(kind, k.meta().namespace.as_deref(), &k.name_any()),
        },
        watcher::Event::Delete(d) => rejections.cleared(kind, d.meta().namespace.as_deref(), &d.name_any()),
        watcher::Event::Init | watcher::Event::InitDone => {}
    }
}

impl Caches {
    /// Start the watches (policy-side kinds in `namespace`, or everywhere); [`Caches::ready`] waits
    /// for their first list. A RolloutCommand's policy is sent to `wake` once the cache holds the command.
    pub fn start(
        client: &Client,
        namespace: Option<&str>,
        health: &Arc<Health>,
        metrics: Arc<Metrics>,
        wake: UnboundedSender<Key>,
    ) -> Self {
        fn api<K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>>(
            client: &Client,
            namespace: Option<&str>,
        ) -> Api<Decoded<K>> {
            match namespace {
                Some(ns) => Api::namespaced(client.clone(), ns),
                None => Api::all(client.clone()),
            }
        }
        let rejections = Arc::new(Rejections::new(metrics));
        let r = || Report {
            health: health.clone(),
            rejections: rejections.clone(),
        };
        let (synced_tx, synced) = tokio::sync::watch::channel(false);
        let caches = Caches {
            services: spawn(api::<SlimService>(client, namespace), "services", r(), |_| {}),
            deployments: spawn(api::<SlimDeployment>(client, namespace), "deployments", r(), |_| {}),
            hpas: spawn(
                api::<HorizontalPodAutoscaler>(client, namespace),
                "horizontalpodautoscalers",
                r(),
                slim::hpa,
            ),
            virtual_services: spawn(Api::all(client.clone()), "virtualservices", r(), |_| {}),
            destination_rules: spawn(Api::all(client.clone()), "destinationrules", r(), |_| {}),
            commands: spawn_notifying(
                api::<RolloutCommand>(client, namespace),
                "rolloutcommands",
                r(),
                |c| slim::meta(&mut c.metadata),
                |c| c.spec.check(),
                move |c: &RolloutCommand| {
                    let _ = wake.unbounded_send((c.namespace().unwrap_or_default(), c.spec.policy.clone()));
                },
            ),
            providers: spawn(Api::all(client.clone()), "metricproviders", r(), |p| {
                slim::meta(&mut p.metadata)
            }),
            targets: spawn(Api::all(client.clone()), "notificationtargets", r(), |t| {
                slim::meta(&mut t.metadata)
            }),
            // Metadata only (list/watch on namespaces): their labels are all that is read.
            namespaces: spawn(Api::all(client.clone()), "namespaces", r(), |n| {
                slim::meta(&mut n.metadata);
                n.metadata.annotations = None;
            }),
            rejections: rejections.clone(),
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
        Some(Arc::new(s.ok()?.to_service()))
    }

    /// The cached Deployment, as the type a reconcile reads.
    pub fn deployment(&self, ns: &str, name: &str) -> Option<Arc<Deployment>> {
        let d = self.deployments.get(&ObjectRef::new(name).within(ns))?;
        Some(Arc::new(d.ok()?.to_deployment()))
    }

    /// The MetricProvider, or why it is unusable: missing, or rejected (with the reason).
    pub fn provider(&self, name: &str) -> std::result::Result<Arc<MetricProvider>, Option<String>> {
        match self.providers.get(&ObjectRef::new(name)).as_deref() {
            Some(Decoded::Ok(p)) => Ok(Arc::new(p.clone())),
            Some(Decoded::Rejected(r)) => Err(Some(r.reason.clone())),
            None => Err(None),
        }
    }

    /// A namespace's labels; None while the namespace is not in the cache.
    pub fn namespace_labels(&self, ns: &str) -> Option<BTreeMap<String, String>> {
        let n = ok(self.namespaces.get(&ObjectRef::new(ns))?)?;
        Some(n.metadata.labels.clone().unwrap_or_default())
    }

    pub fn virtual_service(&self, ns: &str, name: &str) -> Option<Arc<SlimVirtualService>> {
        ok(self.virtual_services.get(&ObjectRef::new(name).within(ns))?)
    }

    pub fn destination_rule(&self, ns: &str, name: &str) -> Option<Arc<SlimDestinationRule>> {
        ok(self.destination_rules.get(&ObjectRef::new(name).within(ns))?)
    }
}

/// The decoded object; a rejected one is absent to every reader.
pub fn ok<K: Clone>(d: Arc<Decoded<K>>) -> Option<Arc<K>> {
    match Arc::unwrap_or_clone(d) {
        Decoded::Ok(k) => Some(Arc::new(k)),
        Decoded::Rejected(_) => None,
    }
}
