//! Reflector caches of the objects a reconcile reads, so that observing a policy costs no API call:
//! one watch per kind serves every policy. Writes still read fresh (they carry a resourceVersion).

use std::fmt::Debug;
use std::hash::Hash;
use std::time::Duration;

use futures::StreamExt;
use futures::channel::mpsc::UnboundedSender;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::analysis::engine::Key;
use crate::error::{Error, Result};
use crate::gates::commands::RolloutCommand;
use crate::mesh::istio::{destination_rule_resource, virtual_service_resource};
use crate::policy::provider::MetricProvider;

/// How long the first list of every kind may take before the daemon gives up (RBAC, missing CRD).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct Caches {
    pub services: Store<Service>,
    pub deployments: Store<Deployment>,
    pub hpas: Store<HorizontalPodAutoscaler>,
    /// VirtualServices and DestinationRules of every namespace: policies may name other namespaces.
    pub virtual_services: Store<DynamicObject>,
    pub destination_rules: Store<DynamicObject>,
    /// RolloutCommands (of `namespace`, or everywhere) and the cluster's MetricProviders.
    pub commands: Store<RolloutCommand>,
    pub providers: Store<MetricProvider>,
    vs_resource: ApiResource,
    dr_resource: ApiResource,
}

/// Keep a reflector store of `api` filled for the daemon's lifetime.
fn spawn<K>(api: Api<K>, dyntype: K::DynamicType) -> Store<K>
where
    K: Resource + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
{
    spawn_notifying(api, dyntype, |_| {})
}

/// Like [`spawn`], calling `notify` with every object touched, after the store holds it.
fn spawn_notifying<K>(api: Api<K>, dyntype: K::DynamicType, notify: impl Fn(&K) + Send + 'static) -> Store<K>
where
    K: Resource + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
{
    let writer = Writer::new(dyntype);
    let reader = writer.as_reader();
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default().any_semantic()))
        .default_backoff()
        .touched_objects();
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
    /// Start the watches (policy-side kinds in `namespace`, or everywhere) and wait for their first list.
    /// A RolloutCommand's policy is sent to `wake` once the cache holds the command.
    pub async fn start(client: &Client, namespace: Option<&str>, wake: UnboundedSender<Key>) -> Result<Self> {
        fn api<K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>>(
            client: &Client,
            namespace: Option<&str>,
        ) -> Api<K> {
            match namespace {
                Some(ns) => Api::namespaced(client.clone(), ns),
                None => Api::all(client.clone()),
            }
        }
        let vs_resource = virtual_service_resource();
        let dr_resource = destination_rule_resource();
        let caches = Caches {
            services: spawn(api::<Service>(client, namespace), ()),
            deployments: spawn(api::<Deployment>(client, namespace), ()),
            hpas: spawn(api::<HorizontalPodAutoscaler>(client, namespace), ()),
            virtual_services: spawn(Api::all_with(client.clone(), &vs_resource), vs_resource.clone()),
            destination_rules: spawn(Api::all_with(client.clone(), &dr_resource), dr_resource.clone()),
            commands: spawn_notifying(
                api::<RolloutCommand>(client, namespace),
                (),
                move |c: &RolloutCommand| {
                    let _ = wake.unbounded_send((c.namespace().unwrap_or_default(), c.spec.policy.clone()));
                },
            ),
            providers: spawn(Api::all(client.clone()), ()),
            vs_resource,
            dr_resource,
        };
        let ready = async {
            caches.services.wait_until_ready().await?;
            caches.deployments.wait_until_ready().await?;
            caches.hpas.wait_until_ready().await?;
            caches.virtual_services.wait_until_ready().await?;
            caches.commands.wait_until_ready().await?;
            caches.providers.wait_until_ready().await?;
            caches.destination_rules.wait_until_ready().await
        };
        match tokio::time::timeout(READY_TIMEOUT, ready).await {
            Ok(Ok(())) => Ok(caches),
            _ => Err(Error::Cache(format!(
                "the object caches did not fill within {READY_TIMEOUT:?}: check RBAC (list/watch) and that Istio's CRDs are installed"
            ))),
        }
    }

    pub fn service(&self, ns: &str, name: &str) -> Option<std::sync::Arc<Service>> {
        self.services.get(&ObjectRef::new(name).within(ns))
    }

    pub fn deployment(&self, ns: &str, name: &str) -> Option<std::sync::Arc<Deployment>> {
        self.deployments.get(&ObjectRef::new(name).within(ns))
    }

    pub fn provider(&self, name: &str) -> Option<std::sync::Arc<MetricProvider>> {
        self.providers.get(&ObjectRef::new(name))
    }

    pub fn virtual_service(&self, ns: &str, name: &str) -> Option<std::sync::Arc<DynamicObject>> {
        self.virtual_services
            .get(&ObjectRef::new_with(name, self.vs_resource.clone()).within(ns))
    }

    pub fn destination_rule(&self, ns: &str, name: &str) -> Option<std::sync::Arc<DynamicObject>> {
        self.destination_rules
            .get(&ObjectRef::new_with(name, self.dr_resource.clone()).within(ns))
    }
}
