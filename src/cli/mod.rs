//! The user-facing commands. They talk to the Kubernetes API with the user's kubeconfig, so RBAC
//! decides who may. Steering a rollout creates a RolloutCommand (an approver needs only `create`
//! on rolloutcommands, never a write to the policy, whose spec Git owns).

mod platform;
pub mod status;
pub mod validate;

use std::time::Duration;

use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};

use crate::approvals::api::{Current, Pin, pin_mismatch};
use crate::resources::command::{CommandKind, RolloutCommand, RolloutCommandSpec, RolloutCommandStatus};
use crate::resources::policy::RolloutPolicy;

pub const FIELD_MANAGER: &str = "canaryd-cli";

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("RolloutPolicy {0}: no rollout in progress, nothing to {1}")]
    NoRollout(String, &'static str),
    #[error("the API server did not say who you are (SelfSubjectReview); a command records its requester")]
    NoIdentity,
    #[error("RolloutPolicy {0} is now at {1}, not at the one given ({2}); nothing sent")]
    Moved(String, Current, &'static str),
}

/// The requester's identity as the API server sees it; None when not allowed.
pub async fn whoami(client: &Client) -> Option<String> {
    let api: Api<SelfSubjectReview> = Api::all(client.clone());
    let review = api
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .ok()?;
    review.status?.user_info?.username
}

/// Create a RolloutCommand bound to the policy's current canary and step, if `pin` names them;
/// returns its name and what it is bound to. It belongs to the policy (ownerReference), so it goes
/// when the policy goes.
pub async fn send(
    client: &Client,
    namespace: &str,
    name: &str,
    kind: CommandKind,
    pin: &Pin,
) -> Result<(String, Current), CliError> {
    let policy = Api::<RolloutPolicy>::namespaced(client.clone(), namespace)
        .get(name)
        .await?;
    let status = policy.status.clone().unwrap_or_default();
    let current = Current {
        canary: status.canary.as_ref().map(|c| c.template_hash.clone()),
        step: status.step,
    };
    if let Some(reason) = pin_mismatch(pin, &current) {
        return Err(CliError::Moved(format!("{namespace}/{name}"), current, reason));
    }
    let canary = status
        .canary
        .as_ref()
        .ok_or_else(|| CliError::NoRollout(format!("{namespace}/{name}"), kind.as_str()))?;
    let requested_by = whoami(client).await.ok_or(CliError::NoIdentity)?;
    let owner = crate::approvals::admission::owned_by(&policy);
    let command = RolloutCommand {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}-{}-", kind.as_str())),
            namespace: Some(namespace.into()),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: RolloutCommandSpec {
            policy: name.into(),
            command: kind,
            canary: canary.template_hash.clone(),
            step: status.step,
            requested_by,
            on_behalf_of: None,
        },
        status: None,
    };
    let api: Api<RolloutCommand> = Api::namespaced(client.clone(), namespace);
    let pp = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    Ok((api.create(&pp, &command).await?.name_any(), current))
}

/// Wait until the daemon has written the command's outcome.
pub async fn wait_handled(
    client: &Client,
    namespace: &str,
    command: &str,
    timeout: Duration,
) -> Result<Option<RolloutCommandStatus>, CliError> {
    let api: Api<RolloutCommand> = Api::namespaced(client.clone(), namespace);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(status) = api.get(command).await?.status {
            return Ok(Some(status));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
