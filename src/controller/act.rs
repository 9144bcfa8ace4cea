//! Act: carry out the planner's side effects, then write status. Each write is optimistic.

use kube::api::{Api, PostParams};
use kube::runtime::events::{Event, EventType as KubeEventType};
use kube::{Resource, ResourceExt};
use tracing::{info, warn};

use super::Context;
use super::observe::vs_refs;
use crate::error::{Error, Result};
use crate::mesh::istio::{WriteOutcome, set_weights};
use crate::plan::{Action, EventType};
use crate::policy::types::{RolloutPolicy, RolloutPolicyStatus};

/// Events are best effort: a lost Event must not stop traffic from moving back to stable.
pub async fn carry_out(policy: &RolloutPolicy, ctx: &Context, actions: &[Action]) -> Result<()> {
    let ns = policy.namespace().unwrap_or_default();
    let fqdn = policy.spec.service_fqdn(&ns);
    for action in actions {
        ctx.leader.check()?;
        match action {
            Action::SetWeights {
                stable,
                canary,
                canary_weight,
            } => {
                for (vs_ns, name, routes) in vs_refs(policy) {
                    crate::failpoint!("before-weights", canary_weight);
                    let outcome = set_weights(
                        &ctx.client,
                        &vs_ns,
                        &name,
                        &fqdn,
                        routes.as_deref(),
                        stable,
                        canary.as_deref(),
                        *canary_weight,
                    )
                    .await?;
                    crate::failpoint!("after-weights", canary_weight);
                    if outcome == WriteOutcome::Written {
                        info!(vs = %format!("{vs_ns}/{name}"), stable = %stable, canary = ?canary, canary_weight, "weights set");
                        ctx.metrics.weight_changes.inc();
                    }
                }
            }
            Action::SetHpaBounds { hpa, bounds } => {
                crate::failpoint!(
                    "before-hpa-bounds",
                    format!("{hpa}/{}", bounds.min_replicas.unwrap_or(1))
                );
                if crate::scale::hpa::set_bounds(&ctx.client, &ns, hpa, *bounds).await? == WriteOutcome::Written {
                    info!(hpa = %hpa, min = ?bounds.min_replicas, max = bounds.max_replicas, "HPA bounds set");
                }
                crate::failpoint!(
                    "after-hpa-bounds",
                    format!("{hpa}/{}", bounds.min_replicas.unwrap_or(1))
                );
            }
            Action::SetReplicas { deployment, replicas } => {
                crate::failpoint!("before-replicas", format!("{deployment}/{replicas}"));
                if crate::scale::hpa::set_replicas(&ctx.client, &ns, deployment, *replicas).await?
                    == WriteOutcome::Written
                {
                    info!(deployment = %deployment, replicas, "replicas set");
                }
                crate::failpoint!("after-replicas", format!("{deployment}/{replicas}"));
            }
            Action::Event { type_, reason, message } => {
                let event = Event {
                    type_: match type_ {
                        EventType::Normal => KubeEventType::Normal,
                        EventType::Warning => KubeEventType::Warning,
                    },
                    reason: reason.clone(),
                    note: Some(truncate(message, 1000)),
                    action: "Reconcile".into(),
                    secondary: None,
                };
                info!(reason = %reason, "{message}");
                crate::failpoint!("before-event", reason);
                if let Err(e) = ctx.recorder.publish(&event, &policy.object_ref(&())).await {
                    warn!(error = %e, reason = %reason, "could not publish event");
                }
                crate::failpoint!("after-event", reason);
            }
        }
    }
    Ok(())
}

/// Replace the status subresource, conditional on the resourceVersion we read: a concurrent change
/// (a command, a spec edit) makes this fail, and the next reconcile starts from the fresh object.
pub async fn write_status(policy: &RolloutPolicy, ctx: &Context, status: &RolloutPolicyStatus) -> Result<()> {
    ctx.leader.check()?;
    let ns = policy.namespace().unwrap_or_default();
    let api: Api<RolloutPolicy> = Api::namespaced(ctx.client.clone(), &ns);
    let mut updated = policy.clone();
    updated.metadata.managed_fields = None;
    updated.status = Some(status.clone());
    crate::failpoint!(
        "before-status",
        format!("{}/{}", status.phase.as_str(), status.canary_weight)
    );
    match api
        .replace_status(&policy.name_any(), &PostParams::default(), &updated)
        .await
    {
        Ok(_) => {
            crate::failpoint!(
                "after-status",
                format!("{}/{}", status.phase.as_str(), status.canary_weight)
            );
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Err(Error::Conflict(policy.name_any())),
        Err(e) => Err(e.into()),
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
