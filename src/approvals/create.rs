//! The RolloutCommand the listener creates for a person it authenticated and authorized (an API
//! caller, a Slack user), and the leader's outcome of it. The command names the person in
//! `spec.onBehalfOf` (admission allows that field from the daemon only).

use std::time::Duration;

use kube::ResourceExt;
use kube::api::{Api, ObjectMeta, PostParams};

use super::listener::Approvals;
use crate::resources::command::{CommandKind, RolloutCommand, RolloutCommandSpec, RolloutCommandStatus};
use crate::resources::policy::RolloutPolicy;

const FIELD_MANAGER: &str = "canaryd-approvals";

/// What a command is bound to and for whom.
pub(super) struct Binding {
    pub kind: CommandKind,
    pub canary: String,
    pub step: Option<u32>,
    pub on_behalf_of: String,
}

pub(super) enum Naming {
    /// The same request always gives the same name (Slack: a repeat meets the first command).
    Fixed(String),
    Generate(String),
}

pub(super) enum Created {
    New(String),
    Exists(Box<RolloutCommand>),
}

impl Approvals {
    /// Create the command for `policy`, owned by it (it goes when the policy goes).
    pub(super) async fn create(
        &self,
        policy: &RolloutPolicy,
        b: &Binding,
        naming: Naming,
    ) -> Result<Created, kube::Error> {
        let ns = policy.namespace().unwrap_or_default();
        let owner = crate::approvals::admission::owned_by(policy);
        let (name, generate_name) = match &naming {
            Naming::Fixed(n) => (Some(n.clone()), None),
            Naming::Generate(prefix) => (None, Some(prefix.clone())),
        };
        let command = RolloutCommand {
            metadata: ObjectMeta {
                name,
                generate_name,
                namespace: Some(ns.clone()),
                owner_references: Some(vec![owner]),
                ..Default::default()
            },
            spec: RolloutCommandSpec {
                policy: policy.name_any(),
                command: b.kind,
                canary: b.canary.clone(),
                step: b.step,
                requested_by: self.inner.identity.clone(),
                on_behalf_of: Some(b.on_behalf_of.clone()),
            },
            status: None,
        };
        let api: Api<RolloutCommand> = Api::namespaced(self.inner.client.clone(), &ns);
        let pp = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        match api.create(&pp, &command).await {
            Ok(c) => Ok(Created::New(c.name_any())),
            Err(kube::Error::Api(s)) if s.code == 409 => match &naming {
                Naming::Fixed(n) => Ok(Created::Exists(Box::new(api.get(n).await?))),
                Naming::Generate(_) => Err(kube::Error::Api(s)),
            },
            Err(e) => Err(e),
        }
    }

    /// The leader's outcome of command `name`, if it comes within `wait`.
    pub(super) async fn wait_outcome(&self, ns: &str, name: &str, wait: Duration) -> Option<RolloutCommandStatus> {
        let api: Api<RolloutCommand> = Api::namespaced(self.inner.client.clone(), ns);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Ok(Some(c)) = api.get_opt(name).await
                && c.status.is_some()
            {
                return c.status;
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The policy `ns/name`: Ok(None) if there is none.
    pub(super) async fn policy(&self, ns: &str, name: &str) -> Result<Option<RolloutPolicy>, kube::Error> {
        Api::<RolloutPolicy>::namespaced(self.inner.client.clone(), ns)
            .get_opt(name)
            .await
    }
}
