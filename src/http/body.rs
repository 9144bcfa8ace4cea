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

/// [`read_capped`] for any HTTP body (e.g. an answer read through kube's client with `send`).
pub async fn read_capped_body<B>(body: B, max: usize) -> Result<Vec<u8>, BodyError>
where
    B: axum::body::HttpBody<Data = axum::body::Bytes>,
    B::Error: std::fmt::Display,
{
    if body.size_hint().lower() > max as u64 {
        return Err(BodyError::TooLarge(max));
    }
    let mut body = std::pin::pin!(body);
    let mut read = Vec::new();
    while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        let frame = frame.map_err(|e| BodyError::Transport(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if read.len() + data.len() > max {
                return Err(BodyError::TooLarge(max));
            }
            read.extend_from_slice(&data);
        }
    }
    Ok(read)
}
