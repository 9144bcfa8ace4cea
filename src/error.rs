//! The library's error type, with a bounded category for metric labels.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("VirtualService {vs}: {message}")]
    Mesh { vs: String, message: String },
    #[error("status of {0} changed concurrently; re-reading")]
    Conflict(String),
    #[error("encoding: {0}")]
    Json(#[from] serde_json::Error),
    #[error("YAML: {0}")]
    Yaml(String),
    #[error("object has no {0}")]
    MissingField(&'static str),
    #[error("{0}")]
    Secret(String),
    #[error(transparent)]
    Scale(#[from] crate::scale::hpa::ScaleError),
    #[error("leader election: {0}")]
    Lease(String),
    #[error("{0}")]
    Cache(String),
    /// The renew deadline of the Lease passed: this replica must not write.
    #[error("not the leader (the lease was not renewed within the renew deadline); write skipped")]
    NotLeader,
    /// A side effect the API refused; reported in status and an Event.
    #[error("{0}")]
    Action(String),
}

impl Error {
    /// A small fixed set of values, safe as a metric label.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.code == 409 => "conflict",
            Error::Kube(kube::Error::Api(s)) if s.code == 403 => "forbidden",
            Error::Kube(_) => "kube",
            Error::Mesh { .. } => "mesh",
            Error::Conflict(_) => "conflict",
            Error::Json(_) | Error::Yaml(_) => "encoding",
            Error::MissingField(_) => "invalid_object",
            Error::Secret(_) => "secret",
            Error::Scale(e) => e.category(),
            Error::Lease(_) => "lease",
            Error::Cache(_) => "cache",
            Error::NotLeader => "not_leader",
            Error::Action(_) => "action_failed",
        }
    }
}

impl From<crate::fence::NotLeader> for Error {
    fn from(_: crate::fence::NotLeader) -> Self {
        Error::NotLeader
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
