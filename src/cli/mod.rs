//! The user-facing commands. They talk to the Kubernetes API with the user's kubeconfig, so RBAC
//! decides who may; they never edit `spec` (Git owns it), only annotations.

pub mod status;
pub mod validate;

use std::time::Duration;

use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::error::Result;
use crate::gates::commands::{COMMAND, COMMAND_BY, COMMAND_ID, CommandKind};
use crate::policy::types::RolloutPolicy;

pub const FIELD_MANAGER: &str = "canaryd-cli";

/// The requester's identity as the API server sees it, for the Event; None when not allowed.
pub async fn whoami(client: &Client) -> Option<String> {
    let api: Api<SelfSubjectReview> = Api::all(client.clone());
    let review = api
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .ok()?;
    review.status?.user_info?.username
}

fn command_id() -> String {
    let nanos = jiff::Timestamp::now().as_nanosecond();
    format!("{nanos:x}-{:x}", std::process::id())
}

/// Set the command annotations; returns the command id.
pub async fn send(client: &Client, namespace: &str, name: &str, kind: CommandKind) -> Result<String> {
    let id = command_id();
    let by = whoami(client).await;
    let api: Api<RolloutPolicy> = Api::namespaced(client.clone(), namespace);
    let patch = json!({"metadata": {"annotations": {
        COMMAND: kind.as_str(),
        COMMAND_ID: id,
        COMMAND_BY: by,
    }}});
    api.patch(name, &PatchParams::apply(FIELD_MANAGER), &Patch::Merge(patch))
        .await?;
    Ok(id)
}

/// Wait until the daemon has handled command `id`; returns the policy's message then.
pub async fn wait_handled(
    client: &Client,
    namespace: &str,
    name: &str,
    id: &str,
    timeout: Duration,
) -> Result<Option<String>> {
    let api: Api<RolloutPolicy> = Api::namespaced(client.clone(), namespace);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let policy = api.get(name).await?;
        if let Some(status) = policy.status
            && status.last_command_id.as_deref() == Some(id)
        {
            return Ok(Some(format!(
                "{}: {}",
                status.phase,
                status.message.unwrap_or_default()
            )));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
