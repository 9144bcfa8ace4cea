//! Reading an HTTP answer's body with a byte cap: whatever answers (a Prometheus, Slack, a tenant's
//! URL) can make the daemon hold at most `max` bytes of it. A leaf module for every HTTP client.

/// The body was longer than the cap (announced or read); reading stopped there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("the answer is larger than {0} bytes")]
    TooLarge(usize),
    #[error("{0}")]
    Transport(String),
}

/// The body, or [`BodyError::TooLarge`] as soon as it passes `max` bytes; a transport error is
/// handed to `transport` so each client keeps its own wording (timeouts, redaction).
pub async fn read_capped<E>(
    mut response: reqwest::Response,
    max: usize,
    transport: impl Fn(reqwest::Error) -> E,
) -> Result<Vec<u8>, Result<BodyError, E>> {
    if response.content_length().is_some_and(|n| n > max as u64) {
        return Err(Ok(BodyError::TooLarge(max)));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| Err(transport(e)))? {
        if body.len() + chunk.len() > max {
            return Err(Ok(BodyError::TooLarge(max)));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
