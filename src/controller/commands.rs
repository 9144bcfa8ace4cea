//! RolloutCommands: which one a policy's reconcile hands to the planner, and the outcome written back
//! to each. A command's effect and its uid reach the policy status together (`lastCommandId`); the
//! command's own status follows, so a crash in between is repaired by the next reconcile and the
//! command never acts twice. Commands that may not act are refused before the planner sees them.

use std::sync::Arc;

use jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use tracing::warn;

use super::Context;
use crate::approvals::admission::admit;
use crate::error::{Error, Result};
use crate::resources::command::{Command, Outcome, RolloutCommand, RolloutCommandStatus};
use crate::resources::policy::{RolloutPolicy, RolloutPolicyStatus};

/// A command admitted for this reconcile.
pub struct Admitted {
    pub command: Command,
    name: String,
}

/// The commands of `policy` without an outcome, oldest first.
fn pending(ctx: &Context, policy: &RolloutPolicy) -> Vec<Arc<RolloutCommand>> {
    let ns = policy.namespace();
    let name = policy.name_any();
    let mut pending: Vec<Arc<RolloutCommand>> = ctx
        .caches
        .commands
        .state()
        .into_iter()
        .filter(|d| {
            d.ok()
                .is_some_and(|c| c.namespace() == ns && c.spec.policy == name && c.status.is_none())
        })
        .filter_map(crate::cache::ok)
        .collect();
    pending.sort_by_key(|c| (c.creation_timestamp().map(|t| t.0), c.name_any()));
    pending
}

/// The next command that may act on `policy`. The others get `Refused` and an Event saying why.
pub async fn next(ctx: &Context, policy: &RolloutPolicy) -> Result<Option<Admitted>> {
    let status = policy.status.clone().unwrap_or_default();
    let api: Api<RolloutCommand> = Api::namespaced(ctx.client.clone(), &policy.namespace().unwrap_or_default());
    for cached in pending(ctx, policy) {
        // The cache may not show an outcome written a moment ago: read it fresh.
        let Some(cmd) = api.get_opt(&cached.name_any()).await? else {
            continue;
        };
        if cmd.status.is_some() {
            continue;
        }
        let uid = cmd.uid().unwrap_or_default();
        if status.last_command_id.as_deref() == Some(uid.as_str()) {
            // It acted before a crash; only its outcome is missing.
            ctx.leader.check()?;
            record(&api, &cmd, Outcome::Acted, "Acted", acted_message(&status)).await?;
            continue;
        }
        // Without a creation time it cannot be placed in time: treat it as expired.
        let created = cmd.creation_timestamp().map_or(Timestamp::UNIX_EPOCH, |t| t.0);
        match admit(&cmd.spec, created, &status, Timestamp::now(), ctx.options.command_ttl) {
            Ok(()) => {
                return Ok(Some(Admitted {
                    command: Command {
                        id: uid,
                        kind: cmd.spec.command,
                        by: Some(cmd.spec.by()),
                    },
                    name: cmd.name_any(),
                }));
            }
            Err(refusal) => {
                ctx.leader.check()?;
                record(&api, &cmd, Outcome::Refused, refusal.reason(), refusal.to_string()).await?;
                let note = format!(
                    "{} by {} ({}) refused: {}: {refusal}",
                    cmd.spec.command.as_str(),
                    cmd.spec.by(),
                    cmd.name_any(),
                    refusal.reason()
                );
                publish(ctx, policy, &cmd, note).await;
            }
        }
    }
    Ok(None)
}

/// After the policy status is written: the admitted command's outcome, if the planner handled it.
pub async fn finish(
    ctx: &Context,
    policy: &RolloutPolicy,
    admitted: &Admitted,
    status: &RolloutPolicyStatus,
) -> Result<()> {
    if status.last_command_id.as_deref() != Some(admitted.command.id.as_str()) {
        return Ok(()); // not handled yet: still pending, admitted again next time
    }
    ctx.leader.check()?;
    let api: Api<RolloutCommand> = Api::namespaced(ctx.client.clone(), &policy.namespace().unwrap_or_default());
    let Some(cmd) = api.get_opt(&admitted.name).await? else {
        return Ok(());
    };
    if cmd.status.is_none() {
        record(&api, &cmd, Outcome::Acted, "Acted", acted_message(status)).await?;
    }
    Ok(())
}

fn acted_message(status: &RolloutPolicyStatus) -> String {
    format!("{}: {}", status.phase, status.message.as_deref().unwrap_or_default())
}

/// Write the outcome once, guarded by the command's resourceVersion.
async fn record(
    api: &Api<RolloutCommand>,
    cmd: &RolloutCommand,
    outcome: Outcome,
    reason: &str,
    message: String,
) -> Result<()> {
    let mut updated = cmd.clone();
    updated.status = Some(RolloutCommandStatus {
        outcome,
        reason: reason.into(),
        message,
        at: Timestamp::now(),
    });
    match api
        .replace_status(&cmd.name_any(), &PostParams::default(), &updated)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Err(Error::Conflict(cmd.name_any())),
        Err(e) => Err(e.into()),
    }
}

/// Best effort, like every Event: a lost Event must not hold up the rollout. The command is the
/// Event's `related` object, so that each refusal gets its own Event, not a count on the last one.
async fn publish(ctx: &Context, policy: &RolloutPolicy, cmd: &RolloutCommand, note: String) {
    if !ctx.leader.may_write() {
        return;
    }
    let event = Event {
        type_: EventType::Warning,
        reason: "CommandRefused".into(),
        note: Some(note),
        action: "Command".into(),
        secondary: Some(cmd.object_ref(&())),
    };
    if let Err(e) = ctx.recorder.publish(&event, &policy.object_ref(&())).await {
        warn!(error = %e, "could not publish event");
    }
}
