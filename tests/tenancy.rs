//! Tenancy of the platform's objects, against the real API server with deploy/'s RBAC: a
//! MetricProvider, a NotificationTarget and a webhook-token Secret serve only the namespaces their
//! selectors select, and a policy that is `Invalid` makes no query and calls no hook (counted at
//! loopback servers).

mod fixture;
mod support;

use std::time::Duration;

use anyhow::Result;
use canaryd::resources::policy::{Phase, RolloutPolicy};
use fixture::{ensure, seed, start_daemon};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use support::standin::{EMPTY_VECTOR, StandIn, ok_json};

const T: Duration = Duration::from_secs(30);
const POLICY: &str = "istio-test";
const VS: &str = "istio-test-vs";
const SYSTEM_NS: &str = "canaryd-system";

fn phase(p: &RolloutPolicy) -> Phase {
    p.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

fn ready_reason(p: &RolloutPolicy) -> String {
    let conditions = p.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
    let ready = conditions.into_iter().find(|c| c.type_ == "Ready");
    ready.map(|c| format!("{}/{}", c.status, c.reason)).unwrap_or_default()
}

fn message(p: &RolloutPolicy) -> String {
    p.status.as_ref().and_then(|s| s.message.clone()).unwrap_or_default()
}

/// Analysis every second from `source` (a provider or a plain address); empty answers are
/// inconclusive and tolerated, so the queries go on for the whole test.
fn analysis(source: &str, interval: &str) -> String {
    format!(
        "  analysis:\n    interval: {interval}\n    inconclusiveLimit: 1000\n    onProviderError: {{after: 1000, action: pause}}\n\
         {source}    metrics:\n      - {{name: success-rate, template: istio-request-success-rate, min: 99, window: 10s}}\n"
    )
}

async fn label_namespace(ns: &str, key: &str, value: &str) -> Result<()> {
    let api: Api<Namespace> = Api::all(support::client().await?);
    let patch = json!({"metadata": {"labels": {key: value}}});
    api.patch(ns, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_objects_serve_only_the_namespaces_they_select() -> Result<()> {
    let prom = StandIn::start(ok_json(EMPTY_VECTOR))?;
    let receiver = StandIn::start(ok_json("{}"))?;
    let admin = support::client().await?;
    fixture::daemon_kubeconfig().await?; // deploy/'s RBAC, and canaryd-system
    let seed = seed("tn-sel").await?;
    let (token, hook_token) = ("provider-token-0461", "hook-token-0462");
    let url = receiver.url();
    // Each selects the namespaces labelled tenancy-test=a, in its own way; the seed's has no such label.
    support::apply_yaml(
        &admin,
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: tn-platform, namespace: {SYSTEM_NS}}}\n\
             stringData: {{token: {token}, notify: '{url}/notify'}}\n---\n\
             apiVersion: canaryd.io/v1alpha1\nkind: MetricProvider\nmetadata: {{name: tn-prom}}\n\
             spec: {{address: {}, auth: {{bearerTokenSecret: {{name: tn-platform, key: token}}}},\n\
             \x20 namespaceSelector: {{matchLabels: {{tenancy-test: a}}}}}}\n---\n\
             apiVersion: canaryd.io/v1alpha1\nkind: NotificationTarget\nmetadata: {{name: tn-notify}}\n\
             spec: {{webhook: {{url: {{name: tn-platform, key: notify}}}},\n\
             \x20 namespaceSelector: {{matchExpressions: [{{key: tenancy-test, operator: In, values: [a]}}]}}}}\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata:\n  name: tn-hook-token\n  namespace: {SYSTEM_NS}\n  \
             annotations: {{canaryd.io/webhook-urls: '{url}/', canaryd.io/webhook-namespaces: 'tenancy-test in (a)'}}\n\
             stringData: {{token: {hook_token}}}\n",
            prom.url()
        ),
    )
    .await?;
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        let policy = seed.policy_yaml()
            + &analysis("    provider: tn-prom\n", "1s")
            + "  notifications:\n    - target: tn-notify\n"
            + &format!(
                "  webhooks:\n    - {{name: start, type: confirm-rollout, url: '{url}/hook', interval: 1s,\n       \
                 bearerTokenSecret: {{name: tn-hook-token, key: token}}}}\n"
            );
        seed.apply(&policy).await?;
        let p = seed
            .wait_policy(POLICY, "Invalid", T, |p| phase(p) == Phase::Invalid)
            .await?;
        let (message, ns) = (message(&p), format!("{:?}", seed.ns));
        for named in [
            "spec.analysis.provider: MetricProvider \"tn-prom\"",
            "spec.notifications[0].target: NotificationTarget \"tn-notify\"",
            "spec.webhooks[0].bearerTokenSecret: bearer token Secret canaryd-system/tn-hook-token",
            ns.as_str(),
        ] {
            ensure(message.contains(named), format!("{named} not in: {message}"))?;
        }
        ensure(
            ready_reason(&p) == "False/ProviderNotAllowed",
            format!("Ready: {}", ready_reason(&p)),
        )?;
        // Time for any query, notification or hook call to go out: none does.
        tokio::time::sleep(Duration::from_secs(5)).await;
        ensure(prom.requests().is_empty(), format!("queries: {:?}", prom.requests()))?;
        ensure(
            receiver.requests().is_empty(),
            format!("calls: {:?}", receiver.requests()),
        )?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 100)], T).await?;

        // The platform selects the namespace: the same policy goes on, each credential to its own.
        label_namespace(&seed.ns, "tenancy-test", "a").await?;
        support::wait_until(
            "a hook call, a notification and queries",
            Duration::from_secs(60),
            async || {
                let all = !receiver.to("/hook").is_empty()
                    && !receiver.to("/notify").is_empty()
                    && prom.requests().len() >= 2;
                Ok(all.then_some(()))
            },
        )
        .await?;
        let auth = |s: &StandIn, prefix: &str| -> Vec<Option<String>> {
            s.to(prefix)
                .into_iter()
                .map(|(_, _, h)| h.get("authorization").cloned())
                .collect()
        };
        let (hook_bearer, prom_bearer) = (format!("Bearer {hook_token}"), format!("Bearer {token}"));
        ensure(
            auth(&receiver, "/hook")
                .iter()
                .all(|a| a.as_ref() == Some(&hook_bearer)),
            format!("hook: {:?}", auth(&receiver, "/hook")),
        )?;
        ensure(
            auth(&prom, "/").iter().all(|a| a.as_ref() == Some(&prom_bearer)),
            format!("provider: {:?}", auth(&prom, "/")),
        )?;
        // The daemon reads Namespaces (list, watch) and nothing more of them.
        let config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(fixture::daemon_kubeconfig().await?)?,
            &Default::default(),
        )
        .await?;
        let namespaces: Api<Namespace> = Api::all(kube::Client::try_from(config)?);
        namespaces.list(&Default::default()).await?;
        let labelled = json!({"metadata": {"labels": {"tenancy-test": "a"}}});
        for (what, denied) in [
            ("get", namespaces.get(&seed.ns).await.err()),
            (
                "patch",
                namespaces
                    .patch(&seed.ns, &PatchParams::default(), &Patch::Merge(&labelled))
                    .await
                    .err(),
            ),
        ] {
            ensure(
                matches!(denied, Some(kube::Error::Api(ref s)) if s.code == 403),
                format!("the daemon may {what} a Namespace: {denied:?}"),
            )?;
        }
        Ok(())
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_policy_makes_no_queries_and_calls_no_hooks() -> Result<()> {
    let prom = StandIn::start(ok_json(EMPTY_VECTOR))?;
    // A rollback hook that keeps saying no (a 2xx would roll back).
    let receiver = StandIn::start("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n".into())?;
    let seed = seed("tn-inv").await?;
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        let plain = format!("    prometheus: {{address: {}}}\n", prom.url());
        // The API server refuses an interval under a second (0 s would be a query every tick).
        for interval in ["0s", "500ms", "0m 0s"] {
            let refused = seed.apply(&(seed.policy_yaml() + &analysis(&plain, interval))).await;
            ensure(
                refused
                    .as_ref()
                    .is_err_and(|e| format!("{e:#}").contains("at least 1s")),
                format!("interval {interval}: {refused:?}"),
            )?;
        }
        let hook = format!(
            "  webhooks:\n    - {{name: stop, type: rollback, url: '{}/stop', interval: 1s}}\n",
            receiver.url()
        );
        seed.apply(&(seed.policy_yaml() + &analysis(&plain, "1s") + &hook))
            .await?;
        support::wait_until("queries and rollback-hook calls", T, async || {
            Ok((prom.requests().len() >= 3 && receiver.to("/stop").len() >= 2).then_some(()))
        })
        .await?;
        // A spec the daemon refuses (a window under 1 s passes the schema): Invalid, and silent.
        let api: Api<RolloutPolicy> = Api::namespaced(seed.client.clone(), &seed.ns);
        let patch: json_patch::Patch = serde_json::from_value(json!([
            {"op": "add", "path": "/spec/analysis/metrics/0/window", "value": "500ms"}
        ]))?;
        api.patch(POLICY, &PatchParams::default(), &Patch::Json::<()>(patch))
            .await?;
        let p = seed
            .wait_policy(POLICY, "Invalid", T, |p| phase(p) == Phase::Invalid)
            .await?;
        ensure(message(&p).contains("spec.analysis.metrics[0].window"), message(&p))?;
        tokio::time::sleep(Duration::from_secs(2)).await; // a call in flight lands
        let before = (prom.requests().len(), receiver.requests().len());
        tokio::time::sleep(Duration::from_secs(6)).await;
        let after = (prom.requests().len(), receiver.requests().len());
        ensure(
            before == after,
            format!("(queries, hook calls) went from {before:?} to {after:?} while Invalid"),
        )?;
        Ok(())
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))
}
