//! Delivery: the HTTP client of every channel, what a failure means for the next try (permanent,
//! transient, or rate-limited for a while) and the capped backoff of transient failures.

use std::time::Duration;

use serde_json::Value;

/// One request to a receiver may take this long, connecting included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
pub const BACKOFF_CAP: Duration = Duration::from_secs(60);
/// A receiver's `Retry-After` is honoured up to this long (it is the receiver's word, not ours).
const RETRY_AFTER_CAP: Duration = Duration::from_secs(15 * 60);
const ANSWER_LIMIT: usize = 64 * 1024;

/// Slack's errors that the same request will meet again until someone changes the app, the token,
/// the channel or the message (chat.postMessage and chat.update). Anything else is tried again.
const SLACK_PERMANENT: &[&str] = &[
    "invalid_auth",
    "not_authed",
    "account_inactive",
    "token_revoked",
    "token_expired",
    "no_permission",
    "missing_scope",
    "not_allowed_token_type",
    "access_denied",
    "ekm_access_denied",
    "team_access_not_granted",
    "org_login_required",
    "enterprise_is_restricted",
    "channel_not_found",
    "not_in_channel",
    "is_archived",
    "restricted_action",
    "restricted_action_read_only_channel",
    "restricted_action_thread_only_channel",
    "restricted_action_non_threadable_channel",
    "msg_too_long",
    "no_text",
    "too_many_attachments",
    "invalid_blocks",
    "invalid_blocks_format",
    "invalid_arguments",
    "invalid_charset",
    "cant_update_message",
    "edit_window_closed",
];

/// Why a notification was not delivered. No variant holds a URL or a credential.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("answered HTTP {0}")]
    Status(u16),
    #[error("rate-limited (HTTP 429)")]
    RateLimited(Option<Duration>),
    #[error("Slack refused: {0}")]
    Slack(String),
    /// The answer could not be read within its cap.
    #[error("{0}")]
    Answer(String),
    #[error("{0}")]
    Target(String),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

/// When to try a failed delivery again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Not until the target or its Secret changes: the same request would fail the same way.
    Permanent,
    /// After the capped backoff.
    Transient,
    /// Not before the receiver's `Retry-After`.
    After(Duration),
}

impl Retry {
    /// The `kind` label of `canaryd_notification_failures_total`.
    pub fn label(self) -> &'static str {
        match self {
            Retry::Permanent => "permanent",
            Retry::Transient => "transient",
            Retry::After(_) => "rate_limited",
        }
    }
}

impl NotifyError {
    pub fn retry(&self) -> Retry {
        match self {
            NotifyError::RateLimited(Some(after)) => Retry::After(*after),
            // A 4xx is the request's fault (a wrong or revoked URL, a refused payload); 408 and
            // 429 say "later", 5xx is the receiver's trouble.
            NotifyError::Status(408 | 429) | NotifyError::RateLimited(None) => Retry::Transient,
            NotifyError::Status(300..=499) => Retry::Permanent,
            NotifyError::Slack(e) => {
                let code = e.rsplit(": ").next().unwrap_or(e);
                if SLACK_PERMANENT.contains(&code) {
                    Retry::Permanent
                } else {
                    Retry::Transient
                }
            }
            // The target's own configuration (a missing Secret or key, a bad URL).
            NotifyError::Target(_) => Retry::Permanent,
            _ => Retry::Transient,
        }
    }
}

/// 1 s, 2 s, 4 s … up to a minute.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    (BACKOFF_FIRST * 2u32.pow(exp)).min(BACKOFF_CAP)
}

/// The wait before try `failures + 1`: the backoff, or longer when the receiver said so.
pub fn next_try(failures: u32, retry: Retry) -> Duration {
    match retry {
        Retry::After(after) => after.max(BACKOFF_FIRST),
        _ => backoff(failures),
    }
}

/// `Retry-After` in seconds (the HTTP-date form is not used by Slack), capped.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    crate::http::client::retry_after(headers, RETRY_AFTER_CAP)
}

/// The HTTP client of every channel: rustls, bounded timeouts, no redirects (a redirect could carry
/// a credential-bearing request elsewhere).
pub struct Http {
    client: reqwest::Client,
    timeout: Duration,
}

impl Http {
    pub fn new(timeout: Duration) -> Result<Self, NotifyError> {
        let client = crate::http::client::builder(timeout)
            .timeout(timeout)
            .build()
            .map_err(|e| NotifyError::Unreachable(chain(&e.without_url())))?;
        Ok(Http { client, timeout })
    }

    /// POST `body` as JSON; the answer's body when the status is 2xx.
    pub async fn post_json(
        &self,
        url: &str,
        bearer: Option<&super::Secret>,
        body: &Value,
    ) -> Result<Vec<u8>, NotifyError> {
        let url = reqwest::Url::parse(url).map_err(|_| NotifyError::Target("the URL is not valid".into()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(NotifyError::Target("the URL must be http or https".into()));
        }
        let mut request = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json; charset=utf-8")
            .body(body.to_string());
        if let Some(token) = bearer {
            request = request.bearer_auth(token.expose());
        }
        let response = request.send().await.map_err(|e| self.transport(e))?;
        let status = response.status();
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(NotifyError::RateLimited(retry_after(response.headers())));
        }
        if !status.is_success() {
            return Err(NotifyError::Status(status.as_u16()));
        }
        crate::http::body::read_capped(response, ANSWER_LIMIT, |e| self.transport(e))
            .await
            .map_err(|e| e.map_or_else(|transport| transport, |capped| NotifyError::Answer(capped.to_string())))
    }

    fn transport(&self, e: reqwest::Error) -> NotifyError {
        if e.is_timeout() {
            NotifyError::Timeout(self.timeout)
        } else {
            // The URL may embed a credential (webhook URLs do): never in the text.
            NotifyError::Unreachable(chain(&e.without_url()))
        }
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(4), Duration::from_secs(8));
        assert_eq!(backoff(40), BACKOFF_CAP);
    }

    #[test]
    fn what_a_failure_means_for_the_next_try() {
        use NotifyError::*;
        let slack = |e: &str| Slack(format!("chat.postMessage: {e}"));
        let cases: Vec<(NotifyError, Retry)> = vec![
            (slack("channel_not_found"), Retry::Permanent),
            (slack("invalid_auth"), Retry::Permanent),
            (slack("not_in_channel"), Retry::Permanent),
            (slack("is_archived"), Retry::Permanent),
            (slack("msg_too_long"), Retry::Permanent),
            (slack("account_inactive"), Retry::Permanent),
            (slack("token_revoked"), Retry::Permanent),
            (slack("internal_error"), Retry::Transient),
            (slack("ratelimited"), Retry::Transient),
            (Slack("chat.update: the answer is not JSON".into()), Retry::Transient),
            // Teams and webhooks: 4xx other than 408 / 429 permanent, 5xx transient.
            (Status(400), Retry::Permanent),
            (Status(404), Retry::Permanent),
            (Status(410), Retry::Permanent),
            (Status(408), Retry::Transient),
            (Status(429), Retry::Transient),
            (Status(500), Retry::Transient),
            (Status(503), Retry::Transient),
            (
                RateLimited(Some(Duration::from_secs(2))),
                Retry::After(Duration::from_secs(2)),
            ),
            (RateLimited(None), Retry::Transient),
            (Target("Secret s not found".into()), Retry::Permanent),
            (Timeout(Duration::from_secs(5)), Retry::Transient),
            (Unreachable("connection refused".into()), Retry::Transient),
        ];
        for (e, want) in cases {
            assert_eq!(e.retry(), want, "{e}");
        }
        assert_eq!(
            next_try(1, Retry::After(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
        assert_eq!(next_try(1, Retry::After(Duration::ZERO)), BACKOFF_FIRST);
        assert_eq!(next_try(3, Retry::Transient), Duration::from_secs(4));
    }

    #[test]
    fn retry_after_is_read_in_seconds_and_capped() {
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(
            reqwest::header::RETRY_AFTER,
            reqwest::header::HeaderValue::from_static("2"),
        );
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert(
            reqwest::header::RETRY_AFTER,
            reqwest::header::HeaderValue::from_static("99999999"),
        );
        assert_eq!(retry_after(&h), Some(RETRY_AFTER_CAP));
        h.insert(
            reqwest::header::RETRY_AFTER,
            reqwest::header::HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), None);
    }
}
