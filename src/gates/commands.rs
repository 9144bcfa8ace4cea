//! People steer a rollout by setting annotations on the policy (never its spec, which Git owns).
//! Each command carries a fresh id; the daemon acts on an id once and records it in status.

use std::collections::BTreeMap;

pub const COMMAND: &str = "canaryd.io/command";
pub const COMMAND_ID: &str = "canaryd.io/command-id";
pub const COMMAND_BY: &str = "canaryd.io/command-by";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandKind {
    /// Pass the current pause or approval gate.
    Promote,
    /// Go to 100 % now, skipping the remaining steps.
    PromoteFull,
    /// Traffic to stable now; the rollout stays `Aborted` until retried.
    Abort,
    Pause,
    Resume,
    /// Start a rolled-back or aborted canary again from the first step.
    Retry,
}

impl CommandKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CommandKind::Promote => "promote",
            CommandKind::PromoteFull => "promote-full",
            CommandKind::Abort => "abort",
            CommandKind::Pause => "pause",
            CommandKind::Resume => "resume",
            CommandKind::Retry => "retry",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            CommandKind::Promote,
            CommandKind::PromoteFull,
            CommandKind::Abort,
            CommandKind::Pause,
            CommandKind::Resume,
            CommandKind::Retry,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub id: String,
    pub kind: CommandKind,
    /// The identity the API server reported for the requester, when the CLI could learn it.
    pub by: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CommandError {
    #[error("annotation {COMMAND}={0:?} is not a command (promote, promote-full, abort, pause, resume, retry)")]
    Unknown(String),
    #[error("annotation {COMMAND} is set without {COMMAND_ID}")]
    MissingId,
}

/// The command in the annotations, if any. An unknown command is an error, never ignored silently.
pub fn from_annotations(annotations: &BTreeMap<String, String>) -> Result<Option<Command>, CommandError> {
    let Some(kind) = annotations.get(COMMAND) else {
        return Ok(None);
    };
    let kind = CommandKind::parse(kind).ok_or_else(|| CommandError::Unknown(kind.clone()))?;
    let id = annotations
        .get(COMMAND_ID)
        .filter(|id| !id.is_empty())
        .ok_or(CommandError::MissingId)?;
    Ok(Some(Command {
        id: id.clone(),
        kind,
        by: annotations.get(COMMAND_BY).cloned(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn parses_commands() {
        assert_eq!(from_annotations(&ann(&[])), Ok(None));
        assert_eq!(
            from_annotations(&ann(&[(COMMAND, "promote"), (COMMAND_ID, "1"), (COMMAND_BY, "alice")])),
            Ok(Some(Command {
                id: "1".into(),
                kind: CommandKind::Promote,
                by: Some("alice".into())
            }))
        );
        assert_eq!(
            from_annotations(&ann(&[(COMMAND, "promte"), (COMMAND_ID, "1")])),
            Err(CommandError::Unknown("promte".into()))
        );
        assert_eq!(
            from_annotations(&ann(&[(COMMAND, "abort")])),
            Err(CommandError::MissingId)
        );
    }
}
