//! Who calls the approval API and may they: a bearer token's TokenReview and the user's
//! SubjectAccessReview, cached briefly as the API server's own webhook authenticator caches them,
//! read with a byte cap, and failures throttled per source address, so that requests with bad
//! tokens cost the API server (almost) nothing.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{self, HeaderMap, header};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, UserInfo};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::http::body::BodyError;
use crate::resources::command::RolloutCommand;

/// How long an accepted token or an allowed review is believed.
pub const ALLOWED_TTL: Duration = Duration::from_secs(10);
/// How long a refused token or a denied review is believed (shorter: a new RoleBinding or token
/// works soon).
pub const DENIED_TTL: Duration = Duration::from_secs(3);
/// Entries per cache; when full of live entries, new results are not cached.
pub const CACHE_ENTRIES: usize = 4096;
/// Largest TokenReview or SubjectAccessReview answer read (a real one is a few KiB).
pub const REVIEW_ANSWER_LIMIT: usize = 256 * 1024;
/// Authentication failures one source address may have per [`FAILURE_WINDOW`]; then 429 until it ends.
pub const MAX_FAILURES: u32 = 10;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Source addresses tracked; beyond, every new address shares one budget.
pub const TRACKED_SOURCES: usize = 4096;

/// Why a request is not let through.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("a Kubernetes bearer token is required (Authorization: Bearer …)")]
    NoToken,
    #[error("the token is not valid")]
    BadToken,
    #[error("too many authentication failures from this address; try again within {0}s")]
    TooManyFailures(u64),
    /// The review could not be made (the API server, or its answer): nobody is let in.
    #[error("{0}")]
    Unavailable(String),
}

/// What a SubjectAccessReview said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    Allowed,
    Denied(String),
}

/// Results by key, each until its expiry; at most [`CACHE_ENTRIES`].
struct TtlCache<K, V> {
    entries: HashMap<K, (V, Instant)>,
}

impl<K: Hash + Eq, V: Clone> TtlCache<K, V> {
    fn new() -> Self {
        Self {
            entries: HashMap::new(),
        }
    }

    fn get(&self, key: &K, now: Instant) -> Option<V> {
        self.entries
            .get(key)
            .filter(|(_, until)| *until > now)
            .map(|(v, _)| v.clone())
    }

    fn put(&mut self, key: K, value: V, ttl: Duration, now: Instant) {
        if self.entries.len() >= CACHE_ENTRIES {
            self.entries.retain(|_, (_, until)| *until > now);
        }
        if self.entries.len() < CACHE_ENTRIES {
            self.entries.insert(key, (value, now + ttl));
        }
    }
}

/// Failures per source address in fixed windows; `None` is the shared budget of the untracked.
struct Failures {
    by_source: HashMap<Option<IpAddr>, (u32, Instant)>,
}

impl Failures {
    fn key(&self, source: IpAddr) -> Option<IpAddr> {
        // An IPv6 client usually holds a whole /64: count it as one.
        let source = match source {
            IpAddr::V6(v6) => {
                let s = v6.segments();
                IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
            }
            v4 => v4,
        };
        let known = self.by_source.contains_key(&Some(source));
        (known || self.by_source.len() < TRACKED_SOURCES).then_some(source)
    }

    /// Seconds until `source` may try again, if it is over its budget.
    fn throttled(&mut self, source: IpAddr, now: Instant) -> Option<u64> {
        let key = self.key(source);
        let (count, since) = self.by_source.get(&key)?;
        let ends = *since + FAILURE_WINDOW;
        if ends <= now {
            self.by_source.remove(&key);
            return None;
        }
        (*count >= MAX_FAILURES).then(|| (ends - now).as_secs().max(1))
    }

    fn failed(&mut self, source: IpAddr, now: Instant) {
        if self.by_source.len() >= TRACKED_SOURCES {
            self.by_source.retain(|_, (_, since)| *since + FAILURE_WINDOW > now);
        }
        let key = self.key(source);
        let entry = self.by_source.entry(key).or_insert((0, now));
        if entry.1 + FAILURE_WINDOW <= now {
            *entry = (0, now);
        }
        entry.0 = entry.0.saturating_add(1);
    }
}

/// The approval API's authentication and authorization.
pub struct Auth {
    client: Client,
    tokens: Mutex<TtlCache<[u8; 32], Option<UserInfo>>>,
    access: Mutex<TtlCache<[u8; 32], Access>>,
    failures: Mutex<Failures>,
}

fn digest(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    h.finalize().into()
}

impl Auth {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            tokens: Mutex::new(TtlCache::new()),
            access: Mutex::new(TtlCache::new()),
            failures: Mutex::new(Failures {
                by_source: HashMap::new(),
            }),
        }
    }

    /// Who holds the bearer token of `headers` (TokenReview, cached). The token is never logged.
    pub async fn authenticate(&self, headers: &HeaderMap, source: IpAddr) -> Result<UserInfo, Refused> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(Refused::NoToken)?;
        let key = digest(&[token.as_bytes()]);
        let now = Instant::now();
        let cached = self.tokens.lock().ok().and_then(|c| c.get(&key, now));
        let user = match cached {
            Some(user) => user,
            None => {
                if let Some(wait) = self.failures.lock().ok().and_then(|mut f| f.throttled(source, now)) {
                    return Err(Refused::TooManyFailures(wait));
                }
                let user = self.review_token(token).await?;
                let ttl = if user.is_some() { ALLOWED_TTL } else { DENIED_TTL };
                if let Ok(mut c) = self.tokens.lock() {
                    c.put(key, user.clone(), ttl, Instant::now());
                }
                user
            }
        };
        user.ok_or_else(|| {
            if let Ok(mut f) = self.failures.lock() {
                f.failed(source, Instant::now());
            }
            Refused::BadToken
        })
    }

    async fn review_token(&self, token: &str) -> Result<Option<UserInfo>, Refused> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                ..Default::default()
            },
            ..Default::default()
        };
        let reviewed: TokenReview = post_review(&self.client, "authentication.k8s.io", "tokenreviews", &review)
            .await
            .map_err(|e| Refused::Unavailable(format!("TokenReview failed: {e}")))?;
        Ok(match reviewed.status {
            Some(s) if s.authenticated == Some(true) => {
                s.user.filter(|u| u.username.as_deref().is_some_and(|n| !n.is_empty()))
            }
            _ => None,
        })
    }

    /// May `user` create RolloutCommands in `ns`, as the CLI does? (SubjectAccessReview, cached.)
    pub async fn authorize(&self, user: &UserInfo, ns: &str) -> Result<Access, Refused> {
        let key = digest(&[
            serde_json::to_string(user).unwrap_or_default().as_bytes(),
            ns.as_bytes(),
        ]);
        let now = Instant::now();
        if let Some(access) = self.access.lock().ok().and_then(|c| c.get(&key, now)) {
            return Ok(access);
        }
        let access = self.review_access(user, ns).await?;
        let ttl = if access == Access::Allowed {
            ALLOWED_TTL
        } else {
            DENIED_TTL
        };
        if let Ok(mut c) = self.access.lock() {
            c.put(key, access.clone(), ttl, Instant::now());
        }
        Ok(access)
    }

    async fn review_access(&self, user: &UserInfo, ns: &str) -> Result<Access, Refused> {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username.clone(),
                uid: user.uid.clone(),
                groups: user.groups.clone(),
                extra: user.extra.clone(),
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(ns.into()),
                    verb: Some("create".into()),
                    group: Some(RolloutCommand::group(&()).into_owned()),
                    resource: Some(RolloutCommand::plural(&()).into_owned()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let reviewed: SubjectAccessReview =
            post_review(&self.client, "authorization.k8s.io", "subjectaccessreviews", &review)
                .await
                .map_err(|e| Refused::Unavailable(format!("SubjectAccessReview failed: {e}")))?;
        let status = reviewed.status.unwrap_or_default();
        if status.allowed {
            return Ok(Access::Allowed);
        }
        let why = status
            .reason
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| "no RBAC rule allows it".into());
        Ok(Access::Denied(why))
    }
}

/// POST a review and read its answer with a byte cap (kube's typed `create` reads any length).
async fn post_review<T: Serialize, R: DeserializeOwned>(
    client: &Client,
    group: &str,
    plural: &str,
    review: &T,
) -> Result<R, BodyError> {
    let body = serde_json::to_vec(review).map_err(|e| BodyError::Transport(e.to_string()))?;
    let request = http::Request::post(format!("/apis/{group}/v1/{plural}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(kube::client::Body::from(body))
        .map_err(|e| BodyError::Transport(e.to_string()))?;
    let response = client
        .send(request)
        .await
        .map_err(|e| BodyError::Transport(e.to_string()))?;
    let status = response.status();
    let read = crate::http::body::read_capped_body(response.into_body(), REVIEW_ANSWER_LIMIT).await?;
    if !status.is_success() {
        return Err(BodyError::Transport(format!("the API server answered {status}")));
    }
    serde_json::from_slice(&read).map_err(|e| BodyError::Transport(format!("the answer: {e}")))
}

#[cfg(test)]
#[path = "auth_tests.rs"]
mod tests;
