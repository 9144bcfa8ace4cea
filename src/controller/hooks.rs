//! What the controller adds to the planner's webhook calls: the policy's name and namespace and the
//! versions' `version` labels, which the pure planner does not know.

use std::collections::BTreeMap;

use kube::ResourceExt;

use crate::gates::webhook::{HookCall, PayloadVersion};
use crate::plan::Plan;
use crate::policy::types::RolloutPolicy;

/// The plan's wanted and fire-and-forget calls, addressed to this policy.
pub fn addressed(
    policy: &RolloutPolicy,
    versions: &BTreeMap<String, String>,
    plan: &mut Plan,
) -> (Vec<HookCall>, Vec<HookCall>) {
    let fill = |mut call: HookCall| {
        call.payload.name = policy.name_any();
        call.payload.namespace = policy.namespace().unwrap_or_default();
        let label = |v: &mut PayloadVersion| {
            if let Some(version) = versions.get(&v.deployment) {
                v.version = version.clone();
            }
        };
        label(&mut call.payload.stable);
        if let Some(c) = call.payload.canary.as_mut() {
            label(c);
        }
        call
    };
    let wanted = std::mem::take(&mut plan.hooks).into_iter().map(fill).collect();
    let fire = std::mem::take(&mut plan.fire).into_iter().map(fill).collect();
    (wanted, fire)
}
